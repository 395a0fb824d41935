//! The network settings of the machine config (`machine.network`), as typed
//! values.
//!
//! The config's own validation (machinery) already rejected malformed
//! addresses and routes; what remains here is turning strings into
//! addresses, filling defaults, and noting what networkd does not support
//! (VIPs, DHCPv6), and reading the `wireguard` section ([`crate::wireguard`]).
//!
//! An entry names its link (`interface`) or selects links by their
//! hardware (`deviceSelector`, [`Selector`]); [`Settings::resolve`] puts
//! the settings on the links that exist, and adds the VLAN links
//! (`<link>.<vlanId>`) of each entry.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustix::fs::inotify;
use tokio::sync::mpsc;

use machinery::config::MachineConfig;
use machinery::config::v1alpha1::{
    BOND_MODES, BOND_XMIT_HASH_POLICIES, Bond, Bridge, Device, DeviceSelector, DhcpOptions,
    Network, Route,
};

use crate::state::{Link, hardware_addr_string};

/// The metric of routes that do not name one (upstream's default).
pub const DEFAULT_ROUTE_METRIC: u32 = 1024;

/// A static route of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// Destination network.
    pub destination: IpAddr,
    /// Destination prefix length (0 for the default route).
    pub prefix: u8,
    /// Next hop; `None`: on-link.
    pub gateway: Option<IpAddr>,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// Metric.
    pub metric: u32,
    /// Route MTU.
    pub mtu: Option<u32>,
}

/// `deviceSelector`: the qualifiers given, all of which a link must match.
/// Each but `physical` is a pattern where `*` stands for any run of
/// characters; hex values match in either case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// `busPath`.
    pub bus_path: Option<String>,
    /// `hardwareAddr`.
    pub hardware_addr: Option<String>,
    /// `permanentAddr`.
    pub permanent_addr: Option<String>,
    /// `pciID`.
    pub pci_id: Option<String>,
    /// `driver`.
    pub driver: Option<String>,
    /// `physical`.
    pub physical: Option<bool>,
}

/// Whether `text` matches `pattern` ([`machinery::glob`]), ignoring ASCII
/// case: addresses are hex, written either way.
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    machinery::glob::matches(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

impl Selector {
    fn from_config(selector: &DeviceSelector) -> Selector {
        let text = |v: &Option<String>| non_empty(v.as_deref()).map(str::to_owned);
        Selector {
            bus_path: text(&selector.bus_path),
            hardware_addr: text(&selector.hardware_addr),
            permanent_addr: text(&selector.permanent_addr),
            pci_id: text(&selector.pci_id),
            driver: text(&selector.driver),
            physical: selector.physical,
        }
    }

    /// Whether `link` matches every qualifier. A selector without any
    /// matches nothing, and none matches the VLANs, bonds, bridges and
    /// dummy links networkd makes: a VLAN, a bond or a bridge carries its
    /// parent's, member's or port's MAC, and would be selected again, on
    /// and on. A link in a bond is
    /// matched on `hardwareAddr` by its permanent address when the kernel
    /// knows one: a bond gives its members its own MAC.
    #[must_use]
    pub fn matches(&self, link: &Link) -> bool {
        if matches!(
            link.kind.as_deref(),
            Some("vlan" | "bond" | "bridge" | "dummy" | "wireguard")
        ) {
            return false;
        }
        let hw = &link.hardware;
        let mac = |bytes: &[u8]| {
            if bytes.iter().all(|b| *b == 0) {
                String::new()
            } else {
                hardware_addr_string(bytes)
            }
        };
        let checks = [
            (&self.bus_path, hw.bus_path.clone()),
            (
                &self.hardware_addr,
                if link.controller.is_some() && link.knows_perm_mac() {
                    mac(&link.perm_mac)
                } else {
                    mac(&link.mac)
                },
            ),
            (&self.permanent_addr, mac(&link.perm_mac)),
            (&self.pci_id, hw.pci_id.clone()),
            (&self.driver, hw.driver.clone()),
        ];
        let mut any = self.physical.is_some();
        for (pattern, value) in checks {
            if let Some(pattern) = pattern {
                any = true;
                if !glob_match(pattern, &value) {
                    return false;
                }
            }
        }
        // A device's nature, not its state: a NIC in a bond is still one
        // (`Link::is_physical` says whether networkd manages it unasked).
        let device = link.kind.is_none()
            && !link.is_loopback()
            && link.link_type == crate::state::ARPHRD_ETHER;
        if let Some(physical) = self.physical
            && physical != device
        {
            return false;
        }
        any
    }
}

/// A bond's settings, as the kernel numbers them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BondSettings {
    /// `IFLA_BOND_MODE` (0 balance-rr ... 6 balance-alb).
    pub mode: u8,
    /// `miimon`, ms.
    pub miimon: Option<u32>,
    /// `updelay`, ms.
    pub updelay: Option<u32>,
    /// `downdelay`, ms.
    pub downdelay: Option<u32>,
    /// 0 slow, 1 fast.
    pub lacp_rate: Option<u8>,
    /// 0 layer2 ... 4 encap3+4.
    pub xmit_hash_policy: Option<u8>,
    /// Members by name.
    pub members: Vec<String>,
    /// Members by their hardware.
    pub member_selectors: Vec<Selector>,
}

impl BondSettings {
    fn from_config(bond: &Bond, path: &str, problems: &mut Vec<String>) -> BondSettings {
        let index = |value: Option<&str>, names: &[&str]| {
            value
                .and_then(|v| names.iter().position(|n| *n == v))
                .and_then(|i| u8::try_from(i).ok())
        };
        for key in bond.other.keys() {
            problems.push(format!(
                "{path}.{key}: not supported by networkd and ignored"
            ));
        }
        BondSettings {
            mode: index(bond.mode.as_deref(), &BOND_MODES).unwrap_or(0),
            miimon: bond.miimon,
            updelay: bond.updelay,
            downdelay: bond.downdelay,
            lacp_rate: index(bond.lacp_rate.as_deref(), &["slow", "fast"]),
            xmit_hash_policy: index(bond.xmit_hash_policy.as_deref(), &BOND_XMIT_HASH_POLICIES),
            members: bond
                .interfaces
                .iter()
                .flatten()
                .filter_map(|n| non_empty(Some(n.as_str())).map(str::to_owned))
                .collect(),
            member_selectors: bond
                .device_selectors
                .iter()
                .flatten()
                .map(Selector::from_config)
                .collect(),
        }
    }
}

/// A bridge's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeSettings {
    /// Spanning tree on.
    pub stp: bool,
    /// VLAN filtering on.
    pub vlan_filtering: bool,
    /// Ports by name (`bridge.interfaces`; the entries whose
    /// `bridgePort.master` names the bridge join them in
    /// [`Settings::resolve`]).
    pub members: Vec<String>,
}

impl BridgeSettings {
    fn from_config(bridge: &Bridge, path: &str, problems: &mut Vec<String>) -> BridgeSettings {
        for key in bridge.other.keys() {
            problems.push(format!(
                "{path}.{key}: not supported by networkd and ignored"
            ));
        }
        BridgeSettings {
            stp: bridge.stp.as_ref().and_then(|s| s.enabled) == Some(true),
            vlan_filtering: bridge.vlan.as_ref().and_then(|v| v.vlan_filtering) == Some(true),
            members: bridge
                .interfaces
                .iter()
                .flatten()
                .filter_map(|n| non_empty(Some(n.as_str())).map(str::to_owned))
                .collect(),
        }
    }
}

/// One `machine.network.interfaces` entry, or one VLAN of one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSettings {
    /// Link name; empty when the entry selects its links ([`Self::selector`])
    /// or is a VLAN (named after the link it sits on).
    pub name: String,
    /// `deviceSelector`.
    pub selector: Option<Selector>,
    /// VLANs on the link(s), by id.
    pub vlans: Vec<(u16, DeviceSettings)>,
    /// `dummy: true`: networkd creates the (named) link.
    pub dummy: bool,
    /// `wireguard`: networkd creates the (named) link and sets its keys
    /// and peers.
    pub wireguard: Option<crate::wireguard::Spec>,
    /// `bond`: networkd creates the (named) link as a bond of its members.
    pub bond: Option<BondSettings>,
    /// `bridge`: networkd creates the (named) link as a bridge of its
    /// ports.
    pub bridge: Option<BridgeSettings>,
    /// `bridgePort.master`: the link(s) are ports of that bridge.
    pub bridge_port: Option<String>,
    /// Static addresses.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Static routes.
    pub routes: Vec<RouteSettings>,
    /// Link MTU.
    pub mtu: Option<u32>,
    /// `dhcp` as written, off when `dhcpOptions.ipv4` is false.
    pub dhcp: Option<bool>,
    /// `dhcpOptions.routeMetric`: the metric of the lease's routes.
    pub dhcp_route_metric: Option<u32>,
    /// `ignore: true`.
    pub ignore: bool,
}

/// An `extraHostEntries` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The address.
    pub ip: IpAddr,
    /// Its names.
    pub aliases: Vec<String>,
}

/// `machine.network`, typed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// `hostname`.
    pub hostname: Option<String>,
    /// `nameservers`.
    pub nameservers: Vec<IpAddr>,
    /// `searchDomains`.
    pub search_domains: Vec<String>,
    /// `disableSearchDomain`: no search domain from the hostname's domain.
    pub disable_search_domain: bool,
    /// A `HostnameConfig`'s `auto: off`: no generated name.
    pub auto_hostname_off: bool,
    /// `extraHostEntries`.
    pub extra_hosts: Vec<HostEntry>,
    /// `interfaces` with an `interface` name.
    pub devices: Vec<DeviceSettings>,
    /// What was skipped, and why (logged).
    pub problems: Vec<String>,
}

/// Parses `address` or `address/prefix`; a bare address is a host address.
fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let text = text.trim();
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip.parse::<IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?)),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    (prefix <= max).then_some((ip, prefix))
}

/// Zeroes the host bits of `ip` beyond `prefix`.
#[must_use]
pub fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

impl DeviceSettings {
    fn from_device(index: usize, device: &Device, problems: &mut Vec<String>) -> Option<Self> {
        let path = format!("machine.network.interfaces[{index}]");
        let name = non_empty(device.interface.as_deref());
        let selector = device.device_selector.as_ref().map(Selector::from_config);
        let label = name.map_or_else(|| "deviceSelector".to_owned(), str::to_owned);
        if name.is_none() && selector.is_none() {
            problems.push(format!(
                "{path}: neither interface nor deviceSelector; the entry is skipped"
            ));
            return None;
        }
        if device.vip.is_some() {
            problems.push(format!(
                "{path} ({label}): vip is not supported by networkd and is ignored"
            ));
        }
        let wireguard = match (&device.wireguard, name) {
            (None, _) => None,
            (Some(_), None) => {
                problems.push(format!(
                    "{path}: a WireGuard link needs a name (interface), not a deviceSelector; wireguard is ignored"
                ));
                None
            }
            (Some(_), Some(_)) if device.dummy == Some(true) => {
                problems.push(format!(
                    "{path} ({label}): both dummy and wireguard; wireguard is ignored"
                ));
                None
            }
            (Some(section), Some(_)) => match crate::wireguard::parse(section) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    problems.push(format!(
                        "{path} ({label}): wireguard.{e}; wireguard is ignored"
                    ));
                    None
                }
            },
        };
        let mut settings = DeviceSettings {
            name: name.map(str::to_owned).unwrap_or_default(),
            selector: if name.is_some() { None } else { selector },
            mtu: device.mtu,
            dhcp: device.dhcp,
            ignore: device.ignore == Some(true),
            dummy: device.dummy == Some(true),
            wireguard,
            ..DeviceSettings::default()
        };
        settings.dhcp_options(
            &format!("{path} ({label})"),
            device.dhcp_options.as_ref(),
            problems,
        );
        if let Some(bond) = &device.bond {
            if name.is_some() {
                settings.bond = Some(BondSettings::from_config(
                    bond,
                    &format!("{path}.bond"),
                    problems,
                ));
            } else {
                problems.push(format!(
                    "{path}: a bond needs a name (interface), not a deviceSelector; bond is ignored"
                ));
            }
        }
        if let Some(bridge) = &device.bridge {
            if name.is_some() {
                settings.bridge = Some(BridgeSettings::from_config(
                    bridge,
                    &format!("{path}.bridge"),
                    problems,
                ));
            } else {
                problems.push(format!(
                    "{path}: a bridge needs a name (interface), not a deviceSelector; bridge is ignored"
                ));
            }
        }
        settings.bridge_port = device
            .bridge_port
            .as_ref()
            .and_then(|p| non_empty(p.master.as_deref()))
            .map(str::to_owned);
        if device.bridge_port.is_some() && settings.bridge_port.is_none() {
            problems.push(format!(
                "{path} ({label}): bridgePort names no master; it is ignored"
            ));
        }
        if settings.bridge.is_some() && settings.bridge_port.take().is_some() {
            problems.push(format!(
                "{path} ({label}): a bridge cannot be a port of another bridge; bridgePort is ignored"
            ));
        }
        if settings.dummy && name.is_none() {
            problems.push(format!(
                "{path}: a dummy link needs a name (interface), not a deviceSelector; dummy is ignored"
            ));
            settings.dummy = false;
        }
        let addresses = device
            .addresses
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(non_empty(device.cidr.as_deref()));
        settings.add_network(&path, addresses, device.routes.iter().flatten(), problems);
        for (j, vlan) in device.vlans.iter().flatten().enumerate() {
            let vlan_path = format!("{path}.vlans[{j}]");
            let Some(id) = vlan.vlan_id.filter(|id| (1..=4094).contains(id)) else {
                problems.push(format!(
                    "{vlan_path}: no usable vlanId; the VLAN is skipped"
                ));
                continue;
            };
            if vlan.vip.is_some() {
                problems.push(format!(
                    "{vlan_path} ({label}.{id}): vip is not supported by networkd and is ignored"
                ));
            }
            let mut vlan_settings = DeviceSettings {
                mtu: vlan.mtu,
                dhcp: vlan.dhcp,
                ..DeviceSettings::default()
            };
            vlan_settings.dhcp_options(
                &format!("{vlan_path} ({label}.{id})"),
                vlan.dhcp_options.as_ref(),
                problems,
            );
            vlan_settings.add_network(
                &vlan_path,
                vlan.addresses.iter().flatten().map(String::as_str),
                vlan.routes.iter().flatten(),
                problems,
            );
            settings.vlans.push((id, vlan_settings));
        }
        Some(settings)
    }

    /// Takes `dhcpOptions`: the route metric, and DHCPv4 off when `ipv4`
    /// is false. DHCPv6 is not supported: asking for it is reported.
    fn dhcp_options(
        &mut self,
        label: &str,
        options: Option<&DhcpOptions>,
        problems: &mut Vec<String>,
    ) {
        let Some(options) = options else {
            return;
        };
        self.dhcp_route_metric = options.route_metric.filter(|m| *m != 0);
        if options.ipv4 == Some(false) {
            self.dhcp = Some(false);
        }
        if options.ipv6 == Some(true) || options.duidv6.is_some() {
            problems.push(format!(
                "{label}: dhcpOptions: DHCPv6 is not supported by networkd and is ignored"
            ));
        }
    }

    /// Adds the static addresses and routes of an entry (or of a VLAN).
    fn add_network<'a>(
        &mut self,
        path: &str,
        addresses: impl Iterator<Item = &'a str>,
        routes: impl Iterator<Item = &'a Route>,
        problems: &mut Vec<String>,
    ) {
        let settings = self;
        for address in addresses {
            match parse_cidr(address) {
                Some(cidr) if !settings.addresses.contains(&cidr) => settings.addresses.push(cidr),
                Some(_) => {}
                None => problems.push(format!("{path}: address {address:?} is not usable")),
            }
        }
        for (j, route) in routes.enumerate() {
            let gateway =
                non_empty(route.gateway.as_deref()).and_then(|g| g.parse::<IpAddr>().ok());
            let (destination, prefix) = match non_empty(route.network.as_deref()) {
                Some(network) => match parse_cidr(network) {
                    Some((ip, prefix)) => (network_of(ip, prefix), prefix),
                    None => {
                        problems.push(format!(
                            "{path}.routes[{j}]: network {network:?} is not usable"
                        ));
                        continue;
                    }
                },
                // No network: the default route of the gateway's family.
                None => match gateway {
                    Some(IpAddr::V6(_)) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                    _ => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                },
            };
            if gateway.is_some_and(|g| g.is_ipv4() != destination.is_ipv4()) {
                problems.push(format!(
                    "{path}.routes[{j}]: the gateway and the network are of different families"
                ));
                continue;
            }
            settings.routes.push(RouteSettings {
                destination,
                prefix,
                gateway,
                source: non_empty(route.source.as_deref()).and_then(|s| s.parse().ok()),
                metric: route
                    .metric
                    .filter(|m| *m != 0)
                    .unwrap_or(DEFAULT_ROUTE_METRIC),
                mtu: route.mtu.filter(|m| *m != 0),
            });
        }
    }
}

/// Linux's longest link name (`IFNAMSIZ` less the NUL).
const MAX_LINK_NAME: usize = 15;

/// A VLAN link the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanLink {
    /// `<parent>.<vid>`.
    pub name: String,
    /// The link it sits on.
    pub parent: String,
    /// Its VLAN id.
    pub vid: u16,
}

/// The settings as they fall on the links that exist: by link name (VLAN
/// links included), and the VLAN links to have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// Link name → its settings (the last entry naming or selecting a link
    /// wins, as with names alone).
    pub devices: BTreeMap<String, DeviceSettings>,
    /// VLAN links, in config order.
    pub vlans: Vec<VlanLink>,
    /// Dummy links to have, by name.
    pub dummies: Vec<String>,
    /// WireGuard links to have: name and settings.
    pub wireguards: Vec<(String, crate::wireguard::Spec)>,
    /// Bonds to have: name, settings, and member links by name (those that
    /// exist or are named).
    pub bonds: Vec<(String, BondSettings, Vec<String>)>,
    /// Bridges to have: name, settings, and port links by name.
    pub bridges: Vec<(String, BridgeSettings, Vec<String>)>,
    /// What could not be done (logged).
    pub problems: Vec<String>,
}

impl Resolved {
    /// Whether the config says to leave `name` alone.
    #[must_use]
    pub fn ignores(&self, name: &str) -> bool {
        self.devices.get(name).is_some_and(|d| d.ignore)
    }
}

/// What `config` sets that the node accepts and does not do: machinery's
/// list, then what networkd leaves out of `machine.network`. One sentence
/// each, naming the field: an apply's warnings and `talosctl validate`'s.
#[must_use]
pub fn config_warnings(config: &MachineConfig) -> Vec<String> {
    let mut warnings = config.not_applied();
    warnings.extend(Settings::from_config(config).problems);
    warnings
}

impl Settings {
    /// The settings of `machine.network`.
    #[must_use]
    pub fn from_network(network: &Network) -> Settings {
        let mut settings = Settings {
            hostname: non_empty(network.hostname.as_deref()).map(str::to_owned),
            nameservers: network
                .nameservers
                .iter()
                .flatten()
                .filter_map(|n| n.trim().parse().ok())
                .collect(),
            search_domains: network
                .search_domains
                .iter()
                .flatten()
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect(),
            disable_search_domain: network.disable_search_domain == Some(true),
            ..Settings::default()
        };
        for host in network.extra_host_entries.iter().flatten() {
            if let Some(ip) = non_empty(host.ip.as_deref()).and_then(|ip| ip.parse().ok()) {
                settings.extra_hosts.push(HostEntry {
                    ip,
                    aliases: host.aliases.clone().unwrap_or_default(),
                });
            }
        }
        for (i, device) in network.interfaces.iter().flatten().enumerate() {
            if let Some(device) = DeviceSettings::from_device(i, device, &mut settings.problems) {
                settings.devices.push(device);
            }
        }
        settings
    }

    /// The settings of a machine config: `machine.network`, and what its
    /// `HostnameConfig`, `ResolverConfig` and `StaticHostConfig` documents
    /// add (validation saw to it that the two never say the same thing).
    #[must_use]
    pub fn from_config(config: &MachineConfig) -> Settings {
        let mut settings = config
            .v1alpha1()
            .machine
            .as_ref()
            .and_then(|machine| machine.network.as_ref())
            .map(Settings::from_network)
            .unwrap_or_default();
        // One merge of the two places a hostname is set: machinery's.
        settings.hostname = config.hostname().map(str::to_owned);
        settings.add_documents(config.document_settings());
        settings
    }

    fn add_documents(&mut self, documents: &machinery::config::DocumentSettings) {
        self.auto_hostname_off =
            documents.auto_hostname == Some(machinery::config::AutoHostname::Off);
        if let Some(nameservers) = &documents.nameservers
            && self.nameservers.is_empty()
        {
            self.nameservers.clone_from(nameservers);
        }
        if let Some(domains) = &documents.search_domains
            && self.search_domains.is_empty()
        {
            self.search_domains.clone_from(domains);
        }
        self.disable_search_domain |= documents.disable_search_domain;
        for (ip, names) in &documents.static_hosts {
            self.extra_hosts.push(HostEntry {
                ip: *ip,
                aliases: names.clone(),
            });
        }
    }

    /// Whether any entry, or any bond's members, are picked by a
    /// `deviceSelector` (which needs each link's sysfs details).
    #[must_use]
    pub fn has_selectors(&self) -> bool {
        self.devices.iter().any(|d| {
            d.selector.is_some()
                || d.bond
                    .as_ref()
                    .is_some_and(|b| !b.member_selectors.is_empty())
        })
    }

    /// The device settings that name link `name` (selectors aside: see
    /// [`Settings::resolve`]).
    #[must_use]
    pub fn device(&self, name: &str) -> Option<&DeviceSettings> {
        self.devices.iter().rev().find(|d| d.name == name)
    }

    /// Puts the entries on `links`: each named link (whether it exists or
    /// not yet), each link a selector matches, and under each of those its
    /// VLANs as links `<link>.<vid>`.
    #[must_use]
    pub fn resolve(&self, links: &[Link]) -> Resolved {
        let mut out = Resolved::default();
        for device in &self.devices {
            let names: Vec<String> = match &device.selector {
                None => vec![device.name.clone()],
                Some(selector) => links
                    .iter()
                    .filter(|l| selector.matches(l))
                    .map(|l| l.name.clone())
                    .collect(),
            };
            for name in names {
                for (vid, vlan) in &device.vlans {
                    let vlan_name = format!("{name}.{vid}");
                    if vlan_name.len() > MAX_LINK_NAME {
                        out.problems.push(format!(
                            "the VLAN link {vlan_name} would have a name longer than {MAX_LINK_NAME} characters; it is skipped"
                        ));
                        continue;
                    }
                    if !out.vlans.iter().any(|v| v.name == vlan_name) {
                        out.vlans.push(VlanLink {
                            name: vlan_name.clone(),
                            parent: name.clone(),
                            vid: *vid,
                        });
                    }
                    let mut settings = vlan.clone();
                    settings.name.clone_from(&vlan_name);
                    out.devices.insert(vlan_name, settings);
                }
                if device.dummy && !out.dummies.contains(&name) {
                    out.dummies.push(name.clone());
                }
                if let Some(spec) = &device.wireguard
                    && !out.wireguards.iter().any(|(n, _)| *n == name)
                {
                    out.wireguards.push((name.clone(), spec.clone()));
                }
                if let Some(bond) = &device.bond
                    && !out.bonds.iter().any(|(n, _, _)| *n == name)
                {
                    let mut members = bond.members.clone();
                    let bond_index = links.iter().find(|l| l.name == name).map(|l| l.index);
                    for link in links {
                        // What the selectors pick. A link in the bond whose
                        // MAC the bond changed, and whose own the kernel
                        // does not know, cannot be told apart: it stays
                        // (releasing it would give it its MAC back, and it
                        // would be picked again, on and on).
                        let in_bond = bond_index.is_some() && link.controller == bond_index;
                        let member = bond.member_selectors.iter().any(|s| s.matches(link))
                            || (in_bond
                                && !link.knows_perm_mac()
                                && !bond.member_selectors.is_empty());
                        if link.name != name && !members.contains(&link.name) && member {
                            members.push(link.name.clone());
                        }
                    }
                    // A link can be in one bond only: the first claims it.
                    members.retain(|member| {
                        let taken = out.bonds.iter().find(|(_, _, m)| m.contains(member));
                        if let Some((other, _, _)) = taken {
                            out.problems.push(format!(
                                "{member} is a member of the bond {other} already; it is not added to {name}"
                            ));
                        }
                        taken.is_none() && *member != name
                    });
                    out.bonds.push((name.clone(), bond.clone(), members));
                }
                if let Some(bridge) = &device.bridge
                    && !out.bridges.iter().any(|(n, _, _)| *n == name)
                {
                    out.bridges
                        .push((name.clone(), bridge.clone(), bridge.members.clone()));
                }
                let mut settings = device.clone();
                settings.name.clone_from(&name);
                settings.selector = None;
                settings.vlans.clear();
                out.devices.insert(name, settings);
            }
        }
        // Ports by `bridgePort`, then one controller per link: a bond's
        // members are its own, and the first bridge claims a port.
        let ports: Vec<(String, String)> = out
            .devices
            .iter()
            .filter_map(|(name, d)| Some((name.clone(), d.bridge_port.clone()?)))
            .collect();
        for (port, master) in ports {
            match out.bridges.iter_mut().find(|(n, _, _)| *n == master) {
                Some((_, _, members)) => {
                    if !members.contains(&port) {
                        members.push(port);
                    }
                }
                None => out.problems.push(format!(
                    "{port}: bridgePort names {master}, which is no configured bridge; it is left out"
                )),
            }
        }
        let mut claimed: Vec<(String, String)> = out
            .bonds
            .iter()
            .flat_map(|(bond, _, members)| members.iter().map(|m| (m.clone(), bond.clone())))
            .collect();
        let mut problems = Vec::new();
        for (name, _, members) in &mut out.bridges {
            members.retain(|member| {
                if let Some((_, other)) = claimed.iter().find(|(m, _)| m == member) {
                    problems.push(format!(
                        "{member} is a member of {other} already; it is not added to the bridge {name}"
                    ));
                    return false;
                }
                if member == name {
                    return false;
                }
                claimed.push((member.clone(), name.clone()));
                true
            });
        }
        out.problems.extend(problems);
        out
    }

    /// Whether the config says to leave `name` alone.
    #[must_use]
    pub fn ignores(&self, name: &str) -> bool {
        self.device(name).is_some_and(|d| d.ignore)
    }
}

/// The live machine config (machined's copy of the config it runs with,
/// `NodePaths::live_config`), re-read when the file changes.
///
/// networkd checks the file (one `stat`) each time it reconciles, and
/// reconciles as soon as the file is written or replaced ([`ConfigWatch`]),
/// so a config applied live takes effect at once, without a restart.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    /// Modification time, length, inode and change time: a replacement
    /// of the same length within one timestamp tick still has a new inode.
    stamp: Option<(SystemTime, u64, u64, i64, i64)>,
    settings: Settings,
}

impl ConfigFile {
    /// The config at `path` (not read yet: call [`ConfigFile::refresh`]).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> ConfigFile {
        ConfigFile {
            path: path.into(),
            stamp: None,
            settings: Settings::default(),
        }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings last read.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Re-reads the file if it changed since the last read. No file: empty
    /// settings (maintenance mode). A file that does not load: a warning,
    /// and empty settings. Returns whether the settings changed.
    pub fn refresh(&mut self) -> bool {
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
                m.ctime(),
                m.ctime_nsec(),
            )
        });
        if stamp == self.stamp {
            return false;
        }
        self.stamp = stamp;
        let settings = if stamp.is_none() {
            Settings::default()
        } else {
            match machinery::config::load(&self.path) {
                Ok(config) => Settings::from_config(&config),
                // Keep what runs: a config that does not load must not take
                // the network down (or away the addresses it gave).
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the machine config does not load; keeping the network settings in effect"
                    );
                    return false;
                }
            }
        };
        for problem in &settings.problems {
            tracing::warn!("{problem}");
        }
        let changed = settings != self.settings;
        self.settings = settings;
        changed
    }
}

/// Wakes networkd when the machine config file is written, replaced or
/// removed: inotify on its directory (machined replaces the file with a
/// rename at each apply), read by a thread of its own.
#[derive(Debug)]
pub struct ConfigWatch {
    changes: mpsc::Receiver<io::Result<()>>,
    inotify: Arc<OwnedFd>,
    watch: i32,
}

impl ConfigWatch {
    /// Watches for changes to the file at `path`.
    ///
    /// # Errors
    /// `path` names no file in a directory, inotify cannot watch the
    /// directory (it does not exist, no inotify...), or the thread cannot
    /// be started.
    pub fn spawn(path: &Path) -> io::Result<ConfigWatch> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file in a directory", path.display()),
            ));
        };
        let inotify = Arc::new(inotify::init(inotify::CreateFlags::CLOEXEC)?);
        let watch = inotify::add_watch(
            &*inotify,
            dir,
            inotify::WatchFlags::CLOSE_WRITE
                | inotify::WatchFlags::MOVED_TO
                | inotify::WatchFlags::MOVED_FROM
                | inotify::WatchFlags::DELETE
                | inotify::WatchFlags::DELETE_SELF
                | inotify::WatchFlags::MOVE_SELF,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("watching {}: {e}", dir.display())))?;
        let name = name.to_owned();
        let dir = dir.to_owned();
        // One pending wake-up is enough: each one re-reads the file.
        let (tx, changes) = mpsc::channel(1);
        let fd = Arc::clone(&inotify);
        std::thread::Builder::new()
            .name("config-watch".into())
            .spawn(move || watch_thread(&fd, &dir, &name, &tx))?;
        Ok(ConfigWatch {
            changes,
            inotify,
            watch,
        })
    }

    /// Waits until the file has changed (or the kernel dropped events, so
    /// it may have).
    ///
    /// # Errors
    /// The watch is over: the directory went away (removed, moved,
    /// unmounted) or reading the inotify descriptor failed.
    pub async fn changed(&mut self) -> io::Result<()> {
        self.changes
            .recv()
            .await
            .unwrap_or_else(|| Err(io::Error::other("the config watch thread ended")))
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        // The kernel answers with IN_IGNORED, which ends the thread.
        let _ = inotify::remove_watch(&*self.inotify, self.watch);
    }
}

fn watch_thread(fd: &OwnedFd, dir: &Path, name: &OsStr, tx: &mpsc::Sender<io::Result<()>>) {
    let gone = inotify::ReadFlags::IGNORED
        | inotify::ReadFlags::UNMOUNT
        | inotify::ReadFlags::DELETE_SELF
        | inotify::ReadFlags::MOVE_SELF;
    let mut buf = vec![MaybeUninit::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    loop {
        if tx.is_closed() {
            return;
        }
        match reader.next() {
            Ok(event) if event.events().intersects(gone) => {
                // Look once more (the file may have gone with it), then
                // stop: the watch no longer sees the directory the path
                // names.
                let _ = tx.try_send(Ok(()));
                let _ = tx.blocking_send(Err(io::Error::other(format!(
                    "{} was removed, moved or unmounted",
                    dir.display()
                ))));
                return;
            }
            Ok(event) => {
                let hit = event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW)
                    || event
                        .file_name()
                        .is_some_and(|n| n.to_bytes() == name.as_bytes());
                if hit {
                    let _ = tx.try_send(Ok(()));
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e.into()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinery::config::v1alpha1::{ExtraHost, Route, Vlan};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn network() -> Network {
        Network {
            hostname: Some("node1".into()),
            nameservers: Some(vec!["10.0.0.53".into(), " 1.1.1.1 ".into()]),
            search_domains: Some(vec!["example.com".into(), String::new()]),
            extra_host_entries: Some(vec![ExtraHost {
                ip: Some("10.0.0.9".into()),
                aliases: Some(vec!["db".into()]),
            }]),
            interfaces: Some(vec![
                Device {
                    interface: Some("eth0".into()),
                    addresses: Some(vec!["10.0.0.5/24".into(), "10.0.1.5".into()]),
                    cidr: Some("10.0.0.5/24".into()),
                    mtu: Some(9000),
                    routes: Some(vec![
                        Route {
                            network: Some("192.168.0.7/16".into()),
                            gateway: Some("10.0.0.1".into()),
                            metric: Some(100),
                            ..Route::default()
                        },
                        Route {
                            gateway: Some("10.0.0.1".into()),
                            mtu: Some(1400),
                            ..Route::default()
                        },
                        Route {
                            network: Some("fd00::/64".into()),
                            gateway: Some("10.0.0.1".into()),
                            ..Route::default()
                        },
                    ]),
                    ..Device::default()
                },
                Device {
                    interface: Some("eth1".into()),
                    ignore: Some(true),
                    ..Device::default()
                },
                Device {
                    device_selector: Some(DeviceSelector {
                        hardware_addr: Some("02:00:00:00:00:*".into()),
                        physical: Some(true),
                        ..DeviceSelector::default()
                    }),
                    dhcp: Some(true),
                    vlans: Some(vec![
                        Vlan {
                            vlan_id: Some(100),
                            addresses: Some(vec!["10.100.0.5/24".into()]),
                            mtu: Some(1400),
                            ..Vlan::default()
                        },
                        Vlan {
                            vlan_id: Some(0),
                            ..Vlan::default()
                        },
                    ]),
                    ..Device::default()
                },
            ]),
            ..Network::default()
        }
    }

    /// What the config's validation leaves to networkd, as upstream's
    /// does: a `bridgePort` without a master, or on a bridge, is reported
    /// and left out; DHCPv6 options are reported.
    #[test]
    fn bridge_ports_networkd_cannot_use_are_reported() {
        use machinery::config::v1alpha1::{BridgePort, DhcpOptions};
        let entry = |name: &str, bridge: bool, master: Option<&str>| Device {
            interface: Some(name.into()),
            bridge: bridge.then(Bridge::default),
            bridge_port: Some(BridgePort {
                master: master.map(str::to_owned),
            }),
            ..Device::default()
        };
        let mut v6 = entry("eth2", false, Some("br0"));
        v6.dhcp_options = Some(DhcpOptions {
            ipv6: Some(true),
            ..DhcpOptions::default()
        });
        let network = Network {
            interfaces: Some(vec![
                entry("br0", true, Some("br1")),
                entry("eth1", false, None),
                v6,
            ]),
            ..Network::default()
        };
        let settings = Settings::from_network(&network);
        assert_eq!(
            settings.device("br0").and_then(|d| d.bridge_port.clone()),
            None
        );
        assert_eq!(
            settings.device("eth1").and_then(|d| d.bridge_port.clone()),
            None
        );
        assert_eq!(
            settings.device("eth2").and_then(|d| d.bridge_port.clone()),
            Some("br0".into())
        );
        for problem in [
            "a bridge cannot be a port of another bridge",
            "bridgePort names no master",
            "DHCPv6 is not supported",
        ] {
            assert!(
                settings.problems.iter().any(|p| p.contains(problem)),
                "{problem}: {:?}",
                settings.problems
            );
        }
        let resolved = settings.resolve(&[]);
        assert_eq!(resolved.bridges[0].2, ["eth2"]);
    }

    #[test]
    fn typed_settings() {
        let settings = Settings::from_network(&network());
        assert_eq!(settings.hostname.as_deref(), Some("node1"));
        assert_eq!(settings.nameservers, vec![ip("10.0.0.53"), ip("1.1.1.1")]);
        assert_eq!(settings.search_domains, vec!["example.com"]);
        assert_eq!(
            settings.extra_hosts,
            vec![HostEntry {
                ip: ip("10.0.0.9"),
                aliases: vec!["db".into()]
            }]
        );
        assert_eq!(settings.devices.len(), 3);
        let eth0 = settings.device("eth0").expect("eth0");
        assert_eq!(
            eth0.addresses,
            vec![(ip("10.0.0.5"), 24), (ip("10.0.1.5"), 32)]
        );
        assert_eq!(eth0.mtu, Some(9000));
        assert_eq!(eth0.dhcp, None);
        assert_eq!(
            eth0.routes,
            vec![
                RouteSettings {
                    destination: ip("192.168.0.0"),
                    prefix: 16,
                    gateway: Some(ip("10.0.0.1")),
                    source: None,
                    metric: 100,
                    mtu: None,
                },
                RouteSettings {
                    destination: ip("0.0.0.0"),
                    prefix: 0,
                    gateway: Some(ip("10.0.0.1")),
                    source: None,
                    metric: DEFAULT_ROUTE_METRIC,
                    mtu: Some(1400),
                },
            ]
        );
        assert!(settings.ignores("eth1"));
        assert!(!settings.ignores("eth0"));
        assert!(!settings.ignores("eth2"));
        // The mixed-family route and the VLAN without an id are reported.
        assert_eq!(settings.problems.len(), 2, "{:?}", settings.problems);
        assert!(
            settings
                .problems
                .iter()
                .any(|p| p.contains("vlans[1]: no usable vlanId"))
        );
        let selected = &settings.devices[2];
        assert_eq!(selected.name, "");
        assert_eq!(selected.vlans.len(), 1);
        assert_eq!(selected.vlans[0].0, 100);
        assert_eq!(selected.vlans[0].1.addresses, vec![(ip("10.100.0.5"), 24)]);

        // On links: the selector picks the physical links with that MAC
        // prefix, and each gets its VLAN.
        let link = |index: u32, name: &str, kind: Option<&str>| Link {
            index,
            name: name.into(),
            mac: vec![2, 0, 0, 0, 0, u8::try_from(index).expect("small")],
            kind: kind.map(str::to_owned),
            link_type: crate::state::ARPHRD_ETHER,
            ..Link::default()
        };
        let links = [
            link(2, "eth0", None),
            link(3, "eth2", None),
            link(4, "veth9", Some("veth")),
        ];
        let resolved = settings.resolve(&links);
        let names: Vec<&str> = resolved.devices.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["eth0", "eth0.100", "eth1", "eth2", "eth2.100"],
            "the veth is not physical; eth1 is named, though absent"
        );
        assert_eq!(resolved.devices["eth2"].dhcp, Some(true));
        // The last entry wins: eth0 is named first, then selected.
        assert_eq!(resolved.devices["eth0"].dhcp, Some(true));
        assert_eq!(resolved.devices["eth2.100"].mtu, Some(1400));
        assert_eq!(
            resolved.vlans,
            [
                VlanLink {
                    name: "eth0.100".into(),
                    parent: "eth0".into(),
                    vid: 100
                },
                VlanLink {
                    name: "eth2.100".into(),
                    parent: "eth2".into(),
                    vid: 100
                }
            ]
        );
        assert!(resolved.ignores("eth1"));
    }

    #[test]
    fn selectors_match_every_qualifier_given() {
        assert!(glob_match("00:11:*", "00:11:22:33:44:55"));
        assert!(glob_match("*:55", "00:11:22:33:44:55"));
        assert!(glob_match("0000:00:*.0", "0000:00:03.0"));
        assert!(glob_match("VIRTIO*", "virtio_net"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("00:11", "00:11:22"));
        assert!(glob_match("*", ""));
        let mut link = Link {
            name: "eth0".into(),
            mac: vec![0x00, 0x11, 0x22, 0x33, 0x44, 0x55],
            perm_mac: vec![0x00, 0x11, 0x22, 0x33, 0x44, 0x66],
            link_type: crate::state::ARPHRD_ETHER,
            ..Link::default()
        };
        link.hardware.driver = "virtio_net".into();
        link.hardware.pci_id = "1AF4:1000".into();
        let sel = |f: fn(&mut Selector)| {
            let mut s = Selector::default();
            f(&mut s);
            s
        };
        assert!(sel(|s| s.hardware_addr = Some("00:11:22:*".into())).matches(&link));
        assert!(sel(|s| s.permanent_addr = Some("*:66".into())).matches(&link));
        assert!(!sel(|s| s.permanent_addr = Some("*:55".into())).matches(&link));
        assert!(sel(|s| s.pci_id = Some("1af4:*".into())).matches(&link));
        assert!(sel(|s| s.physical = Some(true)).matches(&link));
        assert!(!sel(|s| s.physical = Some(false)).matches(&link));
        // All must match; a pattern with text fails on what the link
        // lacks (as upstream, `*` alone matches nothing too).
        assert!(
            !sel(|s| {
                s.driver = Some("virtio_net".into());
                s.bus_path = Some("0000:*".into());
            })
            .matches(&link)
        );
        assert!(
            sel(|s| {
                s.driver = Some("virtio_net".into());
                s.bus_path = Some("*".into());
            })
            .matches(&link)
        );
        assert!(
            !Selector::default().matches(&link),
            "no qualifier, no match"
        );
        // Never the links networkd makes, though they carry the MAC.
        let mut vlan = link.clone();
        vlan.kind = Some("vlan".into());
        assert!(!sel(|s| s.hardware_addr = Some("00:11:22:*".into())).matches(&vlan));
        let mut bridge = link.clone();
        bridge.kind = Some("bridge".into());
        assert!(!sel(|s| s.hardware_addr = Some("00:11:22:*".into())).matches(&bridge));

        // In a bond, which gave it its own MAC, a link is matched by the
        // address it has of its own.
        let mut member = link.clone();
        member.controller = Some(9);
        member.mac = vec![0x02, 0, 0, 0, 0, 0x09];
        assert!(sel(|s| s.hardware_addr = Some("00:11:22:33:44:66".into())).matches(&member));
        assert!(!sel(|s| s.hardware_addr = Some("02:*".into())).matches(&member));
        // Without one it cannot be told apart: a bond with selectors keeps
        // it, one with names alone does not.
        member.perm_mac.clear();
        let bond0 = Link {
            index: 9,
            name: "bond0".into(),
            kind: Some("bond".into()),
            link_type: crate::state::ARPHRD_ETHER,
            ..Link::default()
        };
        let bonded = |selectors: Vec<Selector>| Settings {
            devices: vec![DeviceSettings {
                name: "bond0".into(),
                bond: Some(BondSettings {
                    members: vec!["eth7".into()],
                    member_selectors: selectors,
                    ..BondSettings::default()
                }),
                ..DeviceSettings::default()
            }],
            ..Settings::default()
        };
        let links = [bond0, member];
        let by_mac = sel(|s| s.hardware_addr = Some("00:11:22:*".into()));
        assert_eq!(
            bonded(vec![by_mac]).resolve(&links).bonds[0].2,
            ["eth7", "eth0"]
        );
        assert_eq!(bonded(Vec::new()).resolve(&links).bonds[0].2, ["eth7"]);

        // A link is a member of one bond only.
        let bond = |name: &str| DeviceSettings {
            name: name.into(),
            bond: Some(BondSettings {
                members: vec!["eth0".into()],
                ..BondSettings::default()
            }),
            ..DeviceSettings::default()
        };
        let settings = Settings {
            devices: vec![bond("bond0"), bond("bond1")],
            ..Settings::default()
        };
        let resolved = settings.resolve(std::slice::from_ref(&link));
        assert_eq!(resolved.bonds[0].2, ["eth0"]);
        assert!(resolved.bonds[1].2.is_empty());
        assert!(
            resolved
                .problems
                .iter()
                .any(|p| p.contains("member of the bond bond0 already")),
            "{:?}",
            resolved.problems
        );
    }

    #[test]
    fn networks() {
        assert_eq!(network_of(ip("10.1.2.3"), 8), ip("10.0.0.0"));
        assert_eq!(network_of(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(network_of(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(network_of(ip("fd00::1:2"), 64), ip("fd00::"));
        assert_eq!(parse_cidr("fd00::5"), Some((ip("fd00::5"), 128)));
        assert_eq!(parse_cidr("10.0.0.1/33"), None);
        assert_eq!(parse_cidr("nope"), None);
    }

    #[test]
    fn the_config_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        let mut file = ConfigFile::new(&path);
        assert_eq!(file.path(), path.as_path());
        assert!(!file.refresh(), "no file: empty settings, unchanged");
        assert_eq!(file.settings(), &Settings::default());
        std::fs::write(&path, "not: [a config").expect("write");
        assert!(!file.refresh(), "a broken file gives empty settings");
        assert!(!file.refresh());
    }

    #[tokio::test]
    async fn the_watch_wakes_for_the_config_file_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        let mut watch = ConfigWatch::spawn(&path).expect("watch");
        let soon = std::time::Duration::from_secs(5);
        let quiet = std::time::Duration::from_millis(300);

        // Another file in the directory: no wake-up.
        std::fs::write(dir.path().join("other.yaml"), "x").expect("other file");
        assert!(
            tokio::time::timeout(quiet, watch.changed()).await.is_err(),
            "woken by another file"
        );
        // Replaced by a rename, as machined writes it.
        std::fs::write(dir.path().join("config.yaml.tmp"), "a: 1\n").expect("temp file");
        std::fs::rename(dir.path().join("config.yaml.tmp"), &path).expect("rename");
        tokio::time::timeout(soon, watch.changed())
            .await
            .expect("woken by the rename")
            .expect("watch still running");
        // Written in place.
        std::fs::write(&path, "a: 2\n").expect("write");
        tokio::time::timeout(soon, watch.changed())
            .await
            .expect("woken by the write")
            .expect("watch still running");
        // Removed.
        std::fs::remove_file(&path).expect("remove");
        tokio::time::timeout(soon, watch.changed())
            .await
            .expect("woken by the removal")
            .expect("watch still running");
    }

    #[tokio::test]
    async fn the_watch_ends_when_its_directory_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state dir");
        let mut watch = ConfigWatch::spawn(&state.join("config.yaml")).expect("watch");
        std::fs::remove_dir(&state).expect("remove the directory");
        let soon = std::time::Duration::from_secs(5);
        tokio::time::timeout(soon, watch.changed())
            .await
            .expect("a last look")
            .expect("a last look, not yet the end");
        let end = tokio::time::timeout(soon, watch.changed())
            .await
            .expect("the end")
            .expect_err("the watch is over");
        assert!(
            end.to_string().contains("was removed, moved or unmounted"),
            "{end}"
        );
    }

    #[test]
    fn a_watch_on_a_missing_directory_is_refused() {
        let e = ConfigWatch::spawn(Path::new("/nonexistent/dir/config.yaml"))
            .expect_err("no directory");
        assert!(e.to_string().contains("/nonexistent/dir"), "{e}");
    }
}
