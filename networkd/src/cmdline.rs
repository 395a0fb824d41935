//! The kernel arguments networkd reads: `ip=` and
//! `talos.network.interface.ignore=`.
//!
//! `ip=` follows the kernel's own syntax (Documentation/admin-guide/nfs/nfsroot.rst):
//!
//! ```text
//! ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//! ip=dhcp | ip=on | ip=any | ip=off | ip=none
//! ```
//!
//! Every field may be empty, trailing fields may be left out, IPv6 addresses
//! are written in brackets (`[fd00::5]`), and the netmask may also be given
//! as a prefix length. An empty `<autoconf>` means static when a client
//! address is given and DHCP otherwise. The argument may be repeated (one
//! per device).
//!
//! `talos.network.interface.ignore=<link>` may be repeated and takes a comma
//! separated list; an ignored link is never touched (no up, no address, no
//! DHCP), whatever the machine config or `ip=` say.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The kernel argument naming links to leave alone.
pub const IGNORE_ARG: &str = "talos.network.interface.ignore";

/// Reading the kernel command line failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the kernel command line from {path}: {source}")]
pub struct CmdlineError {
    /// The file read.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// How a link is configured automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoconf {
    /// No autoconfiguration: the static fields only (`off`, `none`, `static`).
    Off,
    /// DHCP (`dhcp`, `on`, `any`, `both`, `bootp`, `rarp`).
    Dhcp,
}

/// One `ip=<client-ip>:...` argument.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpConfig {
    /// The link's address.
    pub client: Option<IpAddr>,
    /// The boot server (kept, unused).
    pub server: Option<IpAddr>,
    /// The default gateway.
    pub gateway: Option<IpAddr>,
    /// The prefix length (from the netmask).
    pub prefix: Option<u8>,
    /// The node's hostname.
    pub hostname: Option<String>,
    /// The link; `None`: the first physical link.
    pub device: Option<String>,
    /// `None`: not given (static with a client address, DHCP without).
    pub autoconf: Option<Autoconf>,
    /// DNS servers (`dns0`, `dns1`).
    pub dns: Vec<IpAddr>,
    /// NTP server (kept, unused: timed reads the machine config).
    pub ntp: Option<IpAddr>,
}

impl IpConfig {
    /// The method in force: the one given, else static when a client
    /// address is given, else DHCP.
    #[must_use]
    pub fn method(&self) -> Autoconf {
        match self.autoconf {
            Some(method) => method,
            None if self.client.is_some() => Autoconf::Off,
            None => Autoconf::Dhcp,
        }
    }

    /// The client address with its prefix: the netmask's, else /24 for
    /// IPv4 (the kernel's classful guess is not worth copying) and /64 for
    /// IPv6.
    #[must_use]
    pub fn client_cidr(&self) -> Option<(IpAddr, u8)> {
        let client = self.client?;
        let prefix = self.prefix.unwrap_or(match client {
            IpAddr::V4(_) => 24,
            IpAddr::V6(_) => 64,
        });
        Some((client, prefix))
    }
}

/// One `ip=` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpArg {
    /// `ip=dhcp`, `ip=off`...: applies to every link without its own setting.
    Auto(Autoconf),
    /// The long form.
    Config(IpConfig),
}

/// The network settings found on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelArgs {
    /// Every `ip=` argument, in order.
    pub ip: Vec<IpArg>,
    /// Links to leave alone.
    pub ignore: BTreeSet<String>,
    /// Arguments that could not be parsed, with the reason (logged, ignored).
    pub problems: Vec<String>,
}

impl KernelArgs {
    /// Parses a kernel command line.
    #[must_use]
    pub fn parse(cmdline: &str) -> KernelArgs {
        let mut args = KernelArgs::default();
        for word in split_words(cmdline) {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "ip" => match parse_ip(value) {
                    Ok(arg) => args.ip.push(arg),
                    Err(reason) => args.problems.push(format!("ip={value}: {reason}")),
                },
                IGNORE_ARG => {
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        args.ignore.insert(name.to_owned());
                    }
                }
                _ => {}
            }
        }
        args
    }

    /// Reads and parses the command line at `path` (`/proc/cmdline` on a node).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read(path: &Path) -> Result<KernelArgs, CmdlineError> {
        let text = std::fs::read_to_string(path).map_err(|source| CmdlineError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(KernelArgs::parse(&text))
    }

    /// Whether `link` is ignored.
    #[must_use]
    pub fn ignores(&self, link: &str) -> bool {
        self.ignore.contains(link)
    }

    /// The last short-form `ip=` (`dhcp`, `off`...), if any.
    #[must_use]
    pub fn global(&self) -> Option<Autoconf> {
        self.ip.iter().rev().find_map(|arg| match arg {
            IpArg::Auto(method) => Some(*method),
            IpArg::Config(_) => None,
        })
    }

    /// The long-form `ip=` for `link`: the last one naming it, else (when
    /// `first_physical` says `link` is the node's first physical link) the
    /// last one naming no device.
    #[must_use]
    pub fn config_for(&self, link: &str, first_physical: bool) -> Option<&IpConfig> {
        let configs = || {
            self.ip.iter().rev().filter_map(|arg| match arg {
                IpArg::Config(config) => Some(config),
                IpArg::Auto(_) => None,
            })
        };
        configs()
            .find(|c| c.device.as_deref() == Some(link))
            .or_else(|| {
                if first_physical {
                    configs().find(|c| c.device.is_none())
                } else {
                    None
                }
            })
    }

    /// The hostname given by an `ip=` argument, if any (the last one).
    #[must_use]
    pub fn hostname(&self) -> Option<&str> {
        self.ip.iter().rev().find_map(|arg| match arg {
            IpArg::Config(config) => config.hostname.as_deref(),
            IpArg::Auto(_) => None,
        })
    }

    /// The DNS servers given by `ip=` arguments, in order, without repeats.
    #[must_use]
    pub fn dns(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for arg in &self.ip {
            if let IpArg::Config(config) = arg {
                for server in &config.dns {
                    if !out.contains(server) {
                        out.push(*server);
                    }
                }
            }
        }
        out
    }
}

/// Splits a command line into words; double quotes group words with spaces
/// (and are dropped), as the kernel does.
fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

fn parse_autoconf(value: &str) -> Result<Autoconf, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" | "none" | "static" => Ok(Autoconf::Off),
        "on" | "any" | "dhcp" | "both" | "bootp" | "rarp" | "dhcp4" => Ok(Autoconf::Dhcp),
        other => Err(format!(
            "unknown autoconf method {other:?} (expected off, none, dhcp, on or any)"
        )),
    }
}

/// Splits `ip=` fields on colons outside brackets.
fn split_fields(value: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in value.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced ']'".to_owned())?;
            }
            ':' if depth == 0 => {
                fields.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '['".to_owned());
    }
    fields.push(&value[start..]);
    Ok(fields)
}

fn parse_addr(field: &str, what: &str) -> Result<Option<IpAddr>, String> {
    let field = field.trim();
    if field.is_empty() {
        return Ok(None);
    }
    let bare = field
        .strip_prefix('[')
        .and_then(|f| f.strip_suffix(']'))
        .unwrap_or(field);
    bare.parse::<IpAddr>()
        .map(Some)
        .map_err(|_| format!("{what} {field:?} is not an IP address"))
}

/// The prefix length of a netmask (`255.255.255.0`) or a bare prefix (`24`).
fn parse_netmask(field: &str) -> Result<Option<u8>, String> {
    let field = field.trim();
    if field.is_empty() {
        return Ok(None);
    }
    if let Ok(prefix) = field.parse::<u8>() {
        if prefix <= 128 {
            return Ok(Some(prefix));
        }
        return Err(format!("netmask {field:?} is out of range"));
    }
    let mask: Ipv4Addr = field
        .parse()
        .map_err(|_| format!("netmask {field:?} is neither a dotted mask nor a prefix length"))?;
    prefix_of_mask(mask)
        .map(Some)
        .ok_or_else(|| format!("netmask {field:?} is not contiguous"))
}

/// The prefix length of a contiguous IPv4 netmask.
#[must_use]
pub fn prefix_of_mask(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) == 0 {
        u8::try_from(ones).ok()
    } else {
        None
    }
}

fn parse_ip(value: &str) -> Result<IpArg, String> {
    if !value.contains(':') {
        return parse_autoconf(value).map(IpArg::Auto);
    }
    let fields = split_fields(value)?;
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let mut config = IpConfig {
        client: parse_addr(field(0), "client address")?,
        server: parse_addr(field(1), "server address")?,
        gateway: parse_addr(field(2), "gateway")?,
        prefix: parse_netmask(field(3))?,
        ..IpConfig::default()
    };
    let hostname = field(4).trim();
    if !hostname.is_empty() {
        config.hostname = Some(hostname.to_owned());
    }
    let device = field(5).trim();
    if !device.is_empty() {
        config.device = Some(device.to_owned());
    }
    let autoconf = field(6).trim();
    if !autoconf.is_empty() {
        config.autoconf = Some(parse_autoconf(autoconf)?);
    }
    for (i, what) in [(7, "dns0"), (8, "dns1")] {
        if let Some(server) = parse_addr(field(i), what)? {
            config.dns.push(server);
        }
    }
    config.ntp = parse_addr(field(9), "ntp0")?;
    if let (Some(client), Some(prefix)) = (config.client, config.prefix)
        && client.is_ipv4()
        && prefix > 32
    {
        return Err(format!("prefix /{prefix} is too long for {client}"));
    }
    Ok(IpArg::Config(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn every_field_of_the_long_form() {
        let args = KernelArgs::parse(
            "console=ttyS0 ip=10.0.0.5:10.0.0.2:10.0.0.1:255.255.255.0:node1:eth0:off:1.1.1.1:8.8.8.8:10.0.0.3 quiet",
        );
        assert!(args.problems.is_empty(), "{:?}", args.problems);
        assert_eq!(
            args.ip,
            vec![IpArg::Config(IpConfig {
                client: Some(ip("10.0.0.5")),
                server: Some(ip("10.0.0.2")),
                gateway: Some(ip("10.0.0.1")),
                prefix: Some(24),
                hostname: Some("node1".into()),
                device: Some("eth0".into()),
                autoconf: Some(Autoconf::Off),
                dns: vec![ip("1.1.1.1"), ip("8.8.8.8")],
                ntp: Some(ip("10.0.0.3")),
            })]
        );
        assert_eq!(args.hostname(), Some("node1"));
        assert_eq!(args.dns(), vec![ip("1.1.1.1"), ip("8.8.8.8")]);
        let config = args.config_for("eth0", false).expect("eth0");
        assert_eq!(config.method(), Autoconf::Off);
        assert_eq!(config.client_cidr(), Some((ip("10.0.0.5"), 24)));
        assert!(args.config_for("eth1", true).is_none());
    }

    #[test]
    fn short_forms() {
        assert_eq!(KernelArgs::parse("ip=dhcp").global(), Some(Autoconf::Dhcp));
        assert_eq!(KernelArgs::parse("ip=on").global(), Some(Autoconf::Dhcp));
        assert_eq!(KernelArgs::parse("ip=any").global(), Some(Autoconf::Dhcp));
        assert_eq!(KernelArgs::parse("ip=off").global(), Some(Autoconf::Off));
        assert_eq!(KernelArgs::parse("ip=none").global(), Some(Autoconf::Off));
        assert_eq!(
            KernelArgs::parse("ip=off ip=dhcp").global(),
            Some(Autoconf::Dhcp)
        );
        assert_eq!(KernelArgs::parse("quiet").global(), None);
        let bad = KernelArgs::parse("ip=bogus");
        assert!(bad.ip.is_empty());
        assert_eq!(bad.problems.len(), 1);
        assert!(bad.problems[0].contains("bogus"), "{:?}", bad.problems);
    }

    #[test]
    fn dhcp_on_one_device_and_defaults() {
        let args = KernelArgs::parse("ip=:::::eth1:dhcp");
        let config = args.config_for("eth1", false).expect("eth1");
        assert_eq!(config.method(), Autoconf::Dhcp);
        assert_eq!(config.client, None);
        // Autoconf left out: static with an address, DHCP without.
        let args = KernelArgs::parse("ip=192.168.1.9::192.168.1.1:255.255.0.0");
        let config = args.config_for("eth0", true).expect("first physical link");
        assert_eq!(config.method(), Autoconf::Off);
        assert_eq!(config.device, None);
        assert_eq!(config.client_cidr(), Some((ip("192.168.1.9"), 16)));
        assert!(args.config_for("eth0", false).is_none());
        let args = KernelArgs::parse("ip=::::node2");
        let config = args.config_for("eth0", true).expect("config");
        assert_eq!(config.method(), Autoconf::Dhcp);
        assert_eq!(args.hostname(), Some("node2"));
        // No prefix: /24.
        let args = KernelArgs::parse("ip=10.1.2.3:::::eth0:off");
        assert_eq!(
            args.config_for("eth0", false)
                .and_then(IpConfig::client_cidr),
            Some((ip("10.1.2.3"), 24))
        );
    }

    #[test]
    fn ipv6_in_brackets_and_prefix_lengths() {
        let args = KernelArgs::parse("ip=[fd00::5]::[fd00::1]:64::eth0:none:[fd00::53]");
        assert!(args.problems.is_empty(), "{:?}", args.problems);
        let config = args.config_for("eth0", false).expect("eth0");
        assert_eq!(config.client_cidr(), Some((ip("fd00::5"), 64)));
        assert_eq!(config.gateway, Some(ip("fd00::1")));
        assert_eq!(config.dns, vec![ip("fd00::53")]);
    }

    #[test]
    fn malformed_long_forms_are_reported() {
        for bad in [
            "ip=10.0.0.300:::::eth0:off",
            "ip=10.0.0.5:::255.0.255.0::eth0:off",
            "ip=10.0.0.5:::33::eth0:off",
            "ip=10.0.0.5::::::eth0:sometimes",
            "ip=[fd00::5:::::eth0",
        ] {
            let args = KernelArgs::parse(bad);
            assert!(args.ip.is_empty(), "{bad}: {:?}", args.ip);
            assert_eq!(args.problems.len(), 1, "{bad}");
        }
    }

    #[test]
    fn ignored_links() {
        let args = KernelArgs::parse(
            "talos.network.interface.ignore=eth1 talos.network.interface.ignore=eth2,eth3, talos.platform=metal",
        );
        assert!(args.ignores("eth1"));
        assert!(args.ignores("eth2"));
        assert!(args.ignores("eth3"));
        assert!(!args.ignores("eth0"));
        assert_eq!(args.ignore.len(), 3);
        assert!(KernelArgs::parse("").ignore.is_empty());
    }

    #[test]
    fn quotes_group_words() {
        let args = KernelArgs::parse("a=\"x y\" ip=\"dhcp\"\n");
        assert_eq!(args.global(), Some(Autoconf::Dhcp));
        assert_eq!(split_words(" a=\"x y\"  b "), vec!["a=x y", "b"]);
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of_mask(Ipv4Addr::new(255, 0, 255, 0)), None);
    }

    #[test]
    fn read_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmdline");
        let err = KernelArgs::read(&path).expect_err("missing");
        assert!(err.to_string().contains("cmdline"), "{err}");
        std::fs::write(&path, "ip=dhcp\n").expect("write");
        assert_eq!(
            KernelArgs::read(&path).expect("read").global(),
            Some(Autoconf::Dhcp)
        );
    }
}
