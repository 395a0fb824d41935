//! The node's hostname.
//!
//! In order of precedence: `machine.network.hostname`, the hostname field of
//! an `ip=` kernel argument, DHCP option 12 of a lease, and last a generated
//! `talos-xxxxx` whose five characters are derived from a stable seed (the
//! MAC address of the node's first link), so that a node keeps its name
//! across reboots without any state. With a `HostnameConfig` of
//! `auto: off` none is generated: until a name comes from elsewhere the
//! node is `localhost`.
//!
//! A name may be a fully qualified one (`node1.example.com`): the first label
//! is the hostname, the rest the domain.

/// The prefix of generated names.
pub const GENERATED_PREFIX: &str = "talos-";

/// The hostname and domain in force, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname {
    /// The short name (first label).
    pub name: String,
    /// The domain, if the chosen name was qualified.
    pub domain: Option<String>,
    /// Where it came from.
    pub source: Source,
}

impl Hostname {
    /// `name.domain`, or `name`.
    #[must_use]
    pub fn fqdn(&self) -> String {
        match &self.domain {
            Some(domain) => format!("{}.{domain}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Where a hostname came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `machine.network.hostname`.
    Config,
    /// An `ip=` kernel argument.
    Cmdline,
    /// DHCP option 12.
    Dhcp,
    /// Generated from the seed.
    Generated,
    /// None: generation is off and no other source named the node.
    Unnamed,
}

/// The name of a node nothing named.
pub const UNNAMED: &str = "localhost";

/// Whether `name` is a valid hostname (machinery's rule, which configs
/// are checked against).
#[must_use]
pub fn is_valid(name: &str) -> bool {
    machinery::config::host_name_problem(name).is_none()
}

/// 64-bit FNV-1a: small, stable across versions and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The generated name for `seed`: `talos-` and five characters of
/// `[a-z0-9]`.
#[must_use]
pub fn generated(seed: &[u8]) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut hash = fnv1a(seed);
    let mut out = String::from(GENERATED_PREFIX);
    for _ in 0..5 {
        out.push(char::from(ALPHABET[(hash % 36) as usize]));
        hash /= 36;
    }
    out
}

fn split(name: &str, source: Source) -> Hostname {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match name.split_once('.') {
        Some((short, domain)) => Hostname {
            name: short.to_owned(),
            domain: Some(domain.to_owned()),
            source,
        },
        None => Hostname {
            name,
            domain: None,
            source,
        },
    }
}

/// Chooses the hostname. Candidates that are not valid names are skipped.
/// `dhcp_domain` (DHCP option 15) completes a short name that has no
/// domain. Without a `seed` no name is generated.
#[must_use]
pub fn choose(
    config: Option<&str>,
    cmdline: Option<&str>,
    dhcp: Option<&str>,
    dhcp_domain: Option<&str>,
    seed: Option<&[u8]>,
) -> Hostname {
    let candidates = [
        (config, Source::Config),
        (cmdline, Source::Cmdline),
        (dhcp, Source::Dhcp),
    ];
    let mut chosen = candidates
        .into_iter()
        .find_map(|(name, source)| {
            let name = name?.trim();
            is_valid(name).then(|| split(name.strip_suffix('.').unwrap_or(name), source))
        })
        .unwrap_or_else(|| match seed {
            Some(seed) => Hostname {
                name: generated(seed),
                domain: None,
                source: Source::Generated,
            },
            None => Hostname {
                name: UNNAMED.to_owned(),
                domain: None,
                source: Source::Unnamed,
            },
        });
    if chosen.domain.is_none()
        && let Some(domain) = dhcp_domain.map(str::trim).filter(|d| is_valid(d))
    {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        chosen.domain = Some(domain.to_ascii_lowercase());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn generated_names_are_stable_and_well_formed() {
        let name = generated(&MAC);
        assert_eq!(name, generated(&MAC));
        assert!(name.starts_with("talos-"), "{name}");
        assert_eq!(name.len(), "talos-".len() + 5);
        assert!(is_valid(&name), "{name}");
        assert!(
            name["talos-".len()..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let other = generated(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x57]);
        assert_ne!(name, other);
        // Pinned: a change would rename every node on upgrade.
        assert_eq!(name, "talos-d48cg");
        assert_eq!(generated(b""), "talos-fe74e");
    }

    #[test]
    fn precedence() {
        let h = choose(Some("cfg"), Some("cmd"), Some("dhcp"), None, Some(&MAC));
        assert_eq!((h.name.as_str(), h.source), ("cfg", Source::Config));
        let h = choose(None, Some("cmd"), Some("dhcp"), None, Some(&MAC));
        assert_eq!((h.name.as_str(), h.source), ("cmd", Source::Cmdline));
        let h = choose(None, None, Some("dhcp"), None, Some(&MAC));
        assert_eq!((h.name.as_str(), h.source), ("dhcp", Source::Dhcp));
        let h = choose(None, None, None, None, Some(&MAC));
        assert_eq!(h.source, Source::Generated);
        assert_eq!(h.name, generated(&MAC));
        // Invalid candidates are skipped.
        let h = choose(Some("bad_name"), Some(""), Some("-x"), None, Some(&MAC));
        assert_eq!(h.source, Source::Generated);
    }

    #[test]
    fn qualified_names_and_domains() {
        let h = choose(
            Some("Node1.Example.COM."),
            None,
            None,
            Some("lan"),
            Some(&MAC),
        );
        assert_eq!(h.name, "node1");
        assert_eq!(h.domain.as_deref(), Some("example.com"));
        assert_eq!(h.fqdn(), "node1.example.com");
        let h = choose(None, None, Some("node2"), Some("lan"), Some(&MAC));
        assert_eq!(h.fqdn(), "node2.lan");
        let h = choose(None, None, None, None, Some(&MAC));
        assert_eq!(h.fqdn(), h.name);
    }

    #[test]
    fn validity() {
        assert!(is_valid("a"));
        assert!(is_valid("node-1.example.com"));
        assert!(!is_valid(""));
        assert!(!is_valid("a..b"));
        assert!(!is_valid("-a"));
        assert!(!is_valid("a-"));
        assert!(!is_valid("a b"));
        assert!(!is_valid(&"a".repeat(64)));
    }
}
