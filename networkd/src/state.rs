//! Observed state: the kernel's links, addresses and routes, as plain data.
//!
//! [`Observed`] is what a netlink dump returns ([`crate::netlink::snapshot`]),
//! converted from the `netlink-packet-route` messages into small structs
//! that the planner, the API and the tests can build and compare without a
//! kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVlan, LinkAttribute, LinkInfo, LinkMessage};

use crate::hardware::DeviceInfo;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

/// `IFF_UP`.
pub const IFF_UP: u32 = 1;
/// `IFF_BROADCAST`.
pub const IFF_BROADCAST: u32 = 1 << 1;
/// `IFF_LOOPBACK`.
pub const IFF_LOOPBACK: u32 = 1 << 3;
/// `IFF_POINTOPOINT`.
pub const IFF_POINTOPOINT: u32 = 1 << 4;
/// `IFF_RUNNING`.
pub const IFF_RUNNING: u32 = 1 << 6;
/// `IFF_MULTICAST`.
pub const IFF_MULTICAST: u32 = 1 << 12;
/// `IFF_LOWER_UP`: the link has carrier.
pub const IFF_LOWER_UP: u32 = 1 << 16;

/// `ARPHRD_ETHER`.
pub const ARPHRD_ETHER: u16 = 1;

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;

/// `RT_TABLE_MAIN`.
pub const RT_TABLE_MAIN: u32 = 254;

/// `RT_SCOPE_UNIVERSE`: a global address or route.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK`.
pub const RT_SCOPE_LINK: u8 = 253;
/// `RT_SCOPE_HOST`.
pub const RT_SCOPE_HOST: u8 = 254;

/// A network link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address (empty when the link has none).
    pub mac: Vec<u8>,
    /// `IFF_*` flags.
    pub flags: u32,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `dummy`...); `None` for a
    /// physical device.
    pub kind: Option<String>,
    /// The controller (bond or bridge) this link is enslaved to.
    pub controller: Option<u32>,
    /// `ARPHRD_*` link type.
    pub link_type: u16,
    /// `IFLA_LINK`: the link this one is stacked on (a VLAN's parent).
    pub parent: Option<u32>,
    /// The VLAN id of a VLAN link.
    pub vlan_id: Option<u16>,
    /// The permanent hardware address (empty when the kernel gives none).
    pub perm_mac: Vec<u8>,
    /// The device behind the link, from sysfs (filled by the reconcile
    /// loop when the config has a `deviceSelector`; empty otherwise).
    pub hardware: DeviceInfo,
}

impl Link {
    /// Administratively up.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// The loopback link.
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        self.flags & IFF_LOOPBACK != 0
    }

    /// A physical Ethernet device (no link kind, not enslaved): the links
    /// networkd manages without being told to.
    #[must_use]
    pub fn is_physical(&self) -> bool {
        self.kind.is_none()
            && !self.is_loopback()
            && self.link_type == ARPHRD_ETHER
            && self.controller.is_none()
    }

    /// Whether the kernel reports the device's permanent address.
    #[must_use]
    pub fn knows_perm_mac(&self) -> bool {
        self.perm_mac.iter().any(|b| *b != 0)
    }

    /// The hardware address as a 6-byte MAC, if it is one and not all zero.
    #[must_use]
    pub fn mac6(&self) -> Option<[u8; 6]> {
        let mac: [u8; 6] = self.mac.as_slice().try_into().ok()?;
        (mac != [0; 6]).then_some(mac)
    }

    /// The hardware address in colon-separated hex; empty when the link has
    /// none or it is all zero (as Go's `net.Interface` reports it).
    #[must_use]
    pub fn mac_string(&self) -> String {
        if self.mac.iter().all(|b| *b == 0) {
            return String::new();
        }
        hardware_addr_string(&self.mac)
    }

    /// Converts a netlink link message (`None` without a name).
    #[must_use]
    pub fn from_message(message: &LinkMessage) -> Option<Link> {
        let mut link = Link {
            index: message.header.index,
            flags: message.header.flags.bits(),
            link_type: u16::from(message.header.link_layer_type),
            ..Link::default()
        };
        let mut name = None;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(mac) => link.mac.clone_from(mac),
                LinkAttribute::Controller(index) if *index != 0 => link.controller = Some(*index),
                LinkAttribute::Link(index) if *index != 0 => link.parent = Some(*index),
                LinkAttribute::PermAddress(mac) => link.perm_mac.clone_from(mac),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::Vlan(vlan)) => {
                                link.vlan_id = vlan.iter().find_map(|v| match v {
                                    InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link.name = name?;
        Some(link)
    }
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// `RT_SCOPE_*`.
    pub scope: u8,
}

impl Address {
    /// `address/prefix`.
    #[must_use]
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }

    /// A global (not link- or host-scope) address.
    #[must_use]
    pub fn is_global(&self) -> bool {
        self.scope == RT_SCOPE_UNIVERSE && !is_link_local(self.address)
    }

    /// Converts a netlink address message (`None` without an address).
    #[must_use]
    pub fn from_message(message: &AddressMessage) -> Option<Address> {
        let mut local = None;
        let mut address = None;
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on
        // point-to-point links (and the only one IPv6 sends).
        Some(Address {
            index: message.header.index,
            address: local.or(address)?,
            prefix: message.header.prefix_len,
            scope: u8::from(message.header.scope),
        })
    }
}

/// Whether `ip` is link-local (169.254/16, fe80::/10).
#[must_use]
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Routing table.
    pub table: u32,
    /// Destination; `None` for the default route.
    pub destination: Option<IpAddr>,
    /// Destination prefix length.
    pub destination_len: u8,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Priority (metric).
    pub metric: u32,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    /// `RTPROT_*`.
    pub protocol: u8,
    /// `RTM_F_*` / `RTNH_F_*` flags.
    pub flags: u32,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// `RTN_*` route type.
    pub kind: u8,
    /// `RTAX_MTU`, if set.
    pub mtu: Option<u32>,
}

impl Route {
    /// The destination in CIDR notation (`0.0.0.0/0` or `::/0` for a
    /// default route).
    #[must_use]
    pub fn destination_cidr(&self) -> String {
        let destination = self.destination.unwrap_or(if self.family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        format!("{destination}/{}", self.destination_len)
    }

    /// Converts a netlink route message.
    #[must_use]
    pub fn from_message(message: &RouteMessage) -> Route {
        let header = &message.header;
        let mut route = Route {
            family: u8::from(header.address_family),
            table: u32::from(header.table),
            destination_len: header.destination_prefix_length,
            scope: u8::from(header.scope),
            protocol: u8::from(header.protocol),
            flags: header.flags.bits(),
            kind: u8::from(header.kind),
            ..Route::default()
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(a) => route.destination = route_ip(a),
                RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => route.source = route_ip(a),
                RouteAttribute::Oif(index) => route.oif = Some(*index),
                RouteAttribute::Priority(metric) => route.metric = *metric,
                RouteAttribute::Table(table) => route.table = *table,
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let rtnetlink::packet_route::route::RouteMetric::Mtu(mtu) = metric {
                            route.mtu = Some(*mtu);
                        }
                    }
                }
                _ => {}
            }
        }
        route
    }
}

/// A hardware address in colon-separated lowercase hex (`52:54:00:12:34:56`),
/// whatever its length; empty for none.
#[must_use]
pub fn hardware_addr_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The IP address in a route attribute.
#[must_use]
pub fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Everything networkd knows about the kernel's network state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Links, by index.
    pub links: Vec<Link>,
    /// Addresses.
    pub addresses: Vec<Address>,
    /// Routes (all tables, both families).
    pub routes: Vec<Route>,
}

impl Observed {
    /// The link named `name`.
    #[must_use]
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The link with index `index`.
    #[must_use]
    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// The addresses on link `index`.
    pub fn addresses_of(&self, index: u32) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(move |a| a.index == index)
    }

    /// The physical link with the lowest index.
    #[must_use]
    pub fn first_physical(&self) -> Option<&Link> {
        self.links
            .iter()
            .filter(|l| l.is_physical())
            .min_by_key(|l| l.index)
    }

    /// The seed for a generated hostname: the MAC of the first physical
    /// link, else of the first link that has one, else nothing.
    #[must_use]
    pub fn hostname_seed(&self) -> Vec<u8> {
        let mut links: Vec<&Link> = self.links.iter().collect();
        links.sort_by_key(|l| (!l.is_physical(), l.index));
        links
            .into_iter()
            .filter(|l| !l.is_loopback())
            .find_map(Link::mac6)
            .map(|mac| mac.to_vec())
            .unwrap_or_default()
    }

    /// The node's addresses: the global addresses of every link but
    /// loopback, ordered by link index then address.
    #[must_use]
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<(u32, IpAddr)> = self
            .addresses
            .iter()
            .filter(|a| a.is_global())
            .filter(|a| {
                self.link_by_index(a.index)
                    .is_some_and(|link| !link.is_loopback())
            })
            .map(|a| (a.index, a.address))
            .collect();
        out.sort();
        out.dedup();
        out.into_iter().map(|(_, ip)| ip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::address::AddressScope;
    use rtnetlink::packet_route::link::{InfoKind, LinkFlags};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn links_from_messages() {
        let mut message = LinkMessage::default();
        message.header.index = 3;
        message.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        message
            .attributes
            .push(LinkAttribute::IfName("veth0".into()));
        message.attributes.push(LinkAttribute::Mtu(1500));
        message
            .attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        let link = Link::from_message(&message).expect("named");
        assert_eq!(link.index, 3);
        assert_eq!(link.name, "veth0");
        assert_eq!(link.mtu, 1500);
        assert!(link.is_up());
        assert!(!link.is_loopback());
        assert_eq!(link.kind.as_deref(), Some("veth"));
        assert_eq!(link.mac_string(), "02:00:00:00:00:01");
        assert_eq!(link.mac6(), Some([2, 0, 0, 0, 0, 1]));
        assert!(!link.is_physical());
        assert!(Link::from_message(&LinkMessage::default()).is_none());
    }

    #[test]
    fn physical_links() {
        let eth = Link {
            index: 2,
            name: "eth0".into(),
            link_type: ARPHRD_ETHER,
            mac: vec![2, 0, 0, 0, 0, 2],
            ..Link::default()
        };
        assert!(eth.is_physical());
        let enslaved = Link {
            controller: Some(5),
            ..eth.clone()
        };
        assert!(!enslaved.is_physical());
        let lo = Link {
            index: 1,
            name: "lo".into(),
            flags: IFF_LOOPBACK | IFF_UP,
            mac: vec![0; 6],
            link_type: 772,
            ..Link::default()
        };
        assert!(!lo.is_physical());
        assert_eq!(lo.mac_string(), "");
        assert_eq!(lo.mac6(), None);
    }

    #[test]
    fn addresses_from_messages() {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.index = 2;
        message.header.prefix_len = 24;
        message.header.scope = AddressScope::Universe;
        message
            .attributes
            .push(AddressAttribute::Address(ip("10.0.0.9")));
        message
            .attributes
            .push(AddressAttribute::Local(ip("10.0.0.5")));
        let address = Address::from_message(&message).expect("address");
        assert_eq!(address.address, ip("10.0.0.5"));
        assert_eq!(address.cidr(), "10.0.0.5/24");
        assert!(address.is_global());
        assert!(Address::from_message(&AddressMessage::default()).is_none());
        let link_local = Address {
            index: 2,
            address: ip("fe80::1"),
            prefix: 64,
            scope: RT_SCOPE_UNIVERSE,
        };
        assert!(!link_local.is_global());
    }

    #[test]
    fn routes_from_messages() {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = 254;
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                "10.0.0.1".parse().expect("ip"),
            )));
        message.attributes.push(RouteAttribute::Oif(2));
        message.attributes.push(RouteAttribute::Priority(1024));
        let route = Route::from_message(&message);
        assert_eq!(route.family, AF_INET);
        assert_eq!(route.table, RT_TABLE_MAIN);
        assert_eq!(route.destination, None);
        assert_eq!(route.destination_cidr(), "0.0.0.0/0");
        assert_eq!(route.gateway, Some(ip("10.0.0.1")));
        assert_eq!(route.oif, Some(2));
        assert_eq!(route.metric, 1024);
        let v6 = Route {
            family: AF_INET6,
            ..Route::default()
        };
        assert_eq!(v6.destination_cidr(), "::/0");
    }

    #[test]
    fn node_addresses_and_seed() {
        let observed = Observed {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    flags: IFF_LOOPBACK,
                    ..Link::default()
                },
                Link {
                    index: 3,
                    name: "veth0".into(),
                    kind: Some("veth".into()),
                    mac: vec![2, 0, 0, 0, 0, 3],
                    link_type: ARPHRD_ETHER,
                    ..Link::default()
                },
                Link {
                    index: 2,
                    name: "eth0".into(),
                    mac: vec![2, 0, 0, 0, 0, 2],
                    link_type: ARPHRD_ETHER,
                    ..Link::default()
                },
            ],
            addresses: vec![
                Address {
                    index: 1,
                    address: ip("127.0.0.1"),
                    prefix: 8,
                    scope: RT_SCOPE_HOST,
                },
                Address {
                    index: 3,
                    address: ip("10.0.0.7"),
                    prefix: 24,
                    scope: RT_SCOPE_UNIVERSE,
                },
                Address {
                    index: 2,
                    address: ip("fe80::1"),
                    prefix: 64,
                    scope: RT_SCOPE_LINK,
                },
                Address {
                    index: 2,
                    address: ip("192.168.1.2"),
                    prefix: 24,
                    scope: RT_SCOPE_UNIVERSE,
                },
            ],
            routes: vec![],
        };
        assert_eq!(
            observed.node_addresses(),
            vec![ip("192.168.1.2"), ip("10.0.0.7")]
        );
        assert_eq!(observed.hostname_seed(), vec![2, 0, 0, 0, 0, 2]);
        assert_eq!(observed.first_physical().map(|l| l.index), Some(2));
        assert_eq!(observed.link("veth0").map(|l| l.index), Some(3));
        assert_eq!(observed.addresses_of(2).count(), 2);
        assert!(Observed::default().hostname_seed().is_empty());
    }
}
