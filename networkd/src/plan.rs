//! Desired state and the plan that gets the kernel there.
//!
//! [`desired`] combines the machine config ([`Settings`]), the kernel
//! arguments ([`KernelArgs`]), the DHCP leases held and the links that exist
//! ([`Observed`]) into a [`Desired`] state per link; [`plan`] compares it
//! with what the kernel has and lists the [`Action`]s to take. Both are pure
//! functions: the reconcile loop re-runs them after every burst of netlink
//! events, so a plan only has to add what is missing. Removal is explicit
//! and owned: only what networkd itself put there is ever deleted, the
//! addresses and routes of a lease it held ([`lease_removal`]), and the
//! static ones, the links it made (VLANs, dummies, bonds, bridges) and
//! the bond and bridge memberships that a config it ran with asked for and the current one no
//! longer does ([`removals`], from what it [`Owned`]).
//!
//! Which links are managed:
//!
//! | link | managed | DHCP |
//! |---|---|---|
//! | ignored (`talos.network.interface.ignore=`, `ignore: true`) | never | no |
//! | loopback | brought up | no |
//! | in `machine.network.interfaces` (not a bond member or bridge port) | yes | `dhcp: true` only |
//! | named by `ip=...:<device>:...` | yes | autoconf `dhcp`/`on`/`any` |
//! | other physical links (no link kind, not enslaved) | yes | yes, unless `ip=off`/`none` |
//! | other virtual links (veth, bridge, ...) | no | no |
//!
//! A long-form `ip=` naming no device applies to the first physical link.
//! The machine config wins over `ip=` for a link it names.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::cmdline::{Autoconf, KernelArgs};
use crate::dhcp::Lease;
use crate::settings::{BondSettings, BridgeSettings, DEFAULT_ROUTE_METRIC, Settings, network_of};
use crate::state::{AF_INET, AF_INET6, Link, Observed, RT_TABLE_MAIN, Route};

/// `RTPROT_BOOT`: routes from the kernel command line.
pub const RTPROT_BOOT: u8 = 3;
/// `RTPROT_STATIC`: routes from the machine config.
pub const RTPROT_STATIC: u8 = 4;
/// `RTPROT_DHCP`: routes from a DHCP lease.
pub const RTPROT_DHCP: u8 = 16;

/// Address lifetimes, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Valid lifetime.
    pub valid: u32,
    /// Preferred lifetime.
    pub preferred: u32,
}

impl Lifetime {
    /// Lifetimes for a lease with `remaining` time left.
    #[must_use]
    pub fn remaining(remaining: Duration) -> Lifetime {
        let secs = u32::try_from(remaining.as_secs())
            .unwrap_or(u32::MAX - 1)
            .max(1);
        Lifetime {
            valid: secs,
            preferred: secs,
        }
    }
}

/// An address a link should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredAddress {
    /// The address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Lifetimes; `None`: permanent.
    pub lifetime: Option<Lifetime>,
    /// Where it comes from.
    pub origin: Origin,
}

/// Where a desired address or route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The machine config.
    Static,
    /// An `ip=` kernel argument.
    Cmdline,
    /// A DHCP lease.
    Dhcp,
}

impl Origin {
    /// The route protocol (`rtm_protocol`) for routes of this origin.
    #[must_use]
    pub fn protocol(self) -> u8 {
        match self {
            Origin::Static => RTPROT_STATIC,
            Origin::Cmdline => RTPROT_BOOT,
            Origin::Dhcp => RTPROT_DHCP,
        }
    }
}

/// A route a link should have (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRoute {
    /// Destination network (unspecified for the default route).
    pub destination: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop; `None`: on-link.
    pub gateway: Option<IpAddr>,
    /// Metric.
    pub metric: u32,
    /// Route MTU.
    pub mtu: Option<u32>,
    /// Preferred source.
    pub source: Option<IpAddr>,
    /// Where it comes from.
    pub origin: Origin,
}

impl DesiredRoute {
    /// `AF_INET` or `AF_INET6`.
    #[must_use]
    pub fn family(&self) -> u8 {
        if self.destination.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        }
    }

    /// Whether the kernel's `route` on link `index` is this route.
    #[must_use]
    pub fn matches(&self, index: u32, route: &Route) -> bool {
        let unspecified = if self.destination.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        route.table == RT_TABLE_MAIN
            && route.family == self.family()
            && route.destination_len == self.prefix
            && route.destination.unwrap_or(unspecified) == self.destination
            && route.gateway == self.gateway
            && route.oif == Some(index)
            && route.metric == self.metric
    }

    fn default_via(gateway: IpAddr, origin: Origin) -> DesiredRoute {
        DesiredRoute {
            destination: if gateway.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            },
            prefix: 0,
            gateway: Some(gateway),
            metric: DEFAULT_ROUTE_METRIC,
            mtu: None,
            source: None,
            origin,
        }
    }
}

/// What one managed link should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLink {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU, when set.
    pub mtu: Option<u32>,
    /// Addresses.
    pub addresses: Vec<DesiredAddress>,
    /// Routes.
    pub routes: Vec<DesiredRoute>,
    /// Whether a DHCP client runs on it.
    pub dhcp: bool,
    /// The metric of its lease's routes.
    pub dhcp_metric: u32,
    /// Its MAC (DHCP needs one).
    pub mac: Option<[u8; 6]>,
}

/// The desired state: every managed link (all of them up), and the links
/// to create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Managed links, by index.
    pub links: Vec<DesiredLink>,
    /// [`Action::CreateVlan`]s for the configured VLANs that do not exist
    /// yet and whose parent does, and [`Action::CreateDummy`]s.
    pub create: Vec<Action>,
    /// What the config asks for and cannot be done (logged).
    pub problems: Vec<String>,
    /// Links that are, or are to be, members of a configured bond or
    /// ports of a configured bridge: not managed themselves (their bond
    /// or bridge is).
    pub members: Vec<String>,
    /// Every link the config asks networkd to make, by name, with its
    /// kind (`vlan`, `dummy`, `bond`, `bridge`), whether it exists yet or not, and
    /// ignored or not: what networkd may delete once the config drops it.
    pub made: BTreeMap<String, &'static str>,
    /// Member link name → its bond's or bridge's name, for
    /// [`Desired::members`].
    pub member_of: BTreeMap<String, String>,
    /// The links that exist and that the config or the kernel arguments
    /// say to leave alone: never released from a bond or bridge, nor
    /// deleted.
    pub left_alone: Vec<String>,
    /// The configured WireGuard links that exist, with what they are to
    /// be set to.
    pub wireguards: Vec<(String, crate::wireguard::Spec)>,
}

impl Desired {
    /// The desired link named `name`.
    #[must_use]
    pub fn link(&self, name: &str) -> Option<&DesiredLink> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// A change to make through netlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a bond.
    CreateBond {
        /// Its name.
        name: String,
        /// Its settings.
        bond: BondSettings,
    },
    /// Create a bridge.
    CreateBridge {
        /// Its name.
        name: String,
        /// Its settings.
        bridge: BridgeSettings,
    },
    /// Make link `index` a member of the bond or a port of the bridge
    /// `controller_index` (a bond's member is taken down first, as the
    /// kernel wants; a bridge port is brought up after).
    Enslave {
        /// The member's index.
        index: u32,
        /// The member's name.
        name: String,
        /// The bond's or bridge's index.
        controller_index: u32,
        /// The bond's or bridge's name.
        controller: String,
        /// Take the link down in the same request (bonds).
        down: bool,
    },
    /// Take link `index` out of the bond or bridge it is in.
    Release {
        /// The member's index.
        index: u32,
        /// The member's name.
        name: String,
        /// The bond's or bridge's name.
        controller: String,
    },
    /// Delete a link networkd made (its addresses and routes go with it;
    /// a bond's members are released by the kernel).
    DeleteLink {
        /// Its index.
        index: u32,
        /// Its name.
        name: String,
        /// Its kind (`vlan`, `dummy`, `bond`, `bridge`).
        kind: &'static str,
    },
    /// Create a dummy link.
    CreateDummy {
        /// Its name.
        name: String,
    },
    /// Create a WireGuard link (its keys and peers are set once it exists:
    /// [`Desired::wireguards`]).
    CreateWireguard {
        /// Its name.
        name: String,
    },
    /// Create a VLAN link on `parent_index`.
    CreateVlan {
        /// The new link's name (`<parent>.<vid>`).
        name: String,
        /// The parent's index.
        parent_index: u32,
        /// The parent's name.
        parent: String,
        /// The VLAN id.
        vid: u16,
    },
    /// Bring the link up.
    SetUp {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
    },
    /// Set the link MTU.
    SetMtu {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
        /// The MTU.
        mtu: u32,
    },
    /// Add (or with `replace`, add or update) an address.
    AddAddress {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
        /// The address.
        address: DesiredAddress,
        /// Update an existing address (its lifetimes).
        replace: bool,
    },
    /// Remove an address.
    DelAddress {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
        /// The address.
        address: IpAddr,
        /// Its prefix length.
        prefix: u8,
    },
    /// Add (or with `replace`, add or update) a route.
    AddRoute {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
        /// The route.
        route: DesiredRoute,
        /// Update an existing route.
        replace: bool,
    },
    /// Remove a route.
    DelRoute {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
        /// The route.
        route: DesiredRoute,
    },
}

/// The address and routes a lease gives, at `now`, its routes with
/// `metric` (`dhcpOptions.routeMetric`, else [`DEFAULT_ROUTE_METRIC`]).
#[must_use]
pub fn lease_config(
    lease: &Lease,
    now: Instant,
    metric: u32,
) -> (DesiredAddress, Vec<DesiredRoute>) {
    let address = DesiredAddress {
        address: IpAddr::V4(lease.address),
        prefix: lease.prefix,
        lifetime: lease.remaining(now).map(Lifetime::remaining),
        origin: Origin::Dhcp,
    };
    let own_network = network_of(IpAddr::V4(lease.address), lease.prefix);
    let mut routes = Vec::new();
    if lease.routes.is_empty() {
        // Option 3: the first router is the default gateway. One outside
        // the leased network is first made reachable with a host route.
        if let Some(router) = lease.routers.first() {
            let router = IpAddr::V4(*router);
            if network_of(router, lease.prefix) != own_network {
                routes.push(DesiredRoute {
                    destination: router,
                    prefix: 32,
                    gateway: None,
                    metric,
                    mtu: None,
                    source: None,
                    origin: Origin::Dhcp,
                });
            }
            routes.push(DesiredRoute {
                metric,
                ..DesiredRoute::default_via(router, Origin::Dhcp)
            });
        }
    } else {
        // Option 121 replaces option 3 (RFC 3442).
        for (destination, prefix, gateway) in &lease.routes {
            routes.push(DesiredRoute {
                destination: network_of(IpAddr::V4(*destination), *prefix),
                prefix: *prefix,
                gateway: (!gateway.is_unspecified()).then_some(IpAddr::V4(*gateway)),
                metric,
                mtu: None,
                source: None,
                origin: Origin::Dhcp,
            });
        }
    }
    (address, routes)
}

/// The actions that (re)apply a lease on link `index`, refreshing the
/// address lifetimes: run on every bind and renewal.
#[must_use]
pub fn lease_actions(
    index: u32,
    name: &str,
    lease: &Lease,
    now: Instant,
    metric: u32,
) -> Vec<Action> {
    let (address, routes) = lease_config(lease, now, metric);
    let mut actions = vec![Action::AddAddress {
        index,
        name: name.to_owned(),
        address,
        replace: true,
    }];
    actions.extend(routes.into_iter().map(|route| Action::AddRoute {
        index,
        name: name.to_owned(),
        route,
        replace: true,
    }));
    actions
}

/// The actions that remove a lease's routes and address from link `index`.
#[must_use]
pub fn lease_removal(index: u32, name: &str, lease: &Lease, metric: u32) -> Vec<Action> {
    let (address, routes) = lease_config(lease, lease.acquired, metric);
    let mut actions: Vec<Action> = routes
        .into_iter()
        .rev()
        .map(|route| Action::DelRoute {
            index,
            name: name.to_owned(),
            route,
        })
        .collect();
    actions.push(Action::DelAddress {
        index,
        name: name.to_owned(),
        address: address.address,
        prefix: address.prefix,
    });
    actions
}

fn is_managed(link: &Link, configured: bool) -> bool {
    link.is_loopback() || link.is_physical() || configured
}

/// The desired state of every managed link that exists.
#[must_use]
pub fn desired(
    settings: &Settings,
    kernel: &KernelArgs,
    observed: &Observed,
    leases: &BTreeMap<String, Lease>,
    now: Instant,
) -> Desired {
    let first_physical = observed.first_physical().map(|l| l.index);
    let global = kernel.global();
    let resolved = settings.resolve(&observed.links);
    let mut problems = resolved.problems.clone();
    let mut create = Vec::new();
    let made: BTreeMap<String, &'static str> = resolved
        .vlans
        .iter()
        .map(|v| (v.name.clone(), "vlan"))
        .chain(resolved.dummies.iter().map(|n| (n.clone(), "dummy")))
        .chain(
            resolved
                .wireguards
                .iter()
                .map(|(n, _)| (n.clone(), "wireguard")),
        )
        .chain(resolved.bonds.iter().map(|(n, _, _)| (n.clone(), "bond")))
        .chain(
            resolved
                .bridges
                .iter()
                .map(|(n, _, _)| (n.clone(), "bridge")),
        )
        .collect();
    let left_alone = observed
        .links
        .iter()
        .filter(|l| kernel.ignores(&l.name) || resolved.ignores(&l.name))
        .map(|l| l.name.clone())
        .collect();
    let mut member_of = BTreeMap::new();
    for vlan in &resolved.vlans {
        let ignored = |name: &str| kernel.ignores(name) || resolved.ignores(name);
        if ignored(&vlan.parent)
            || ignored(&vlan.name)
            || observed.links.iter().any(|l| l.name == vlan.name)
        {
            continue;
        }
        if let Some(parent) = observed.links.iter().find(|l| l.name == vlan.parent) {
            create.push(Action::CreateVlan {
                name: vlan.name.clone(),
                parent_index: parent.index,
                parent: parent.name.clone(),
                vid: vlan.vid,
            });
        }
    }
    let mut members = Vec::new();
    // Bonds, then bridges: a controller link made for the config, and the
    // links that are its members (ports).
    let controllers = resolved
        .bonds
        .iter()
        .map(|(name, bond, wanted)| {
            let make = Action::CreateBond {
                name: name.clone(),
                bond: bond.clone(),
            };
            (name, "bond", make, wanted)
        })
        .chain(resolved.bridges.iter().map(|(name, bridge, wanted)| {
            let make = Action::CreateBridge {
                name: name.clone(),
                bridge: bridge.clone(),
            };
            (name, "bridge", make, wanted)
        }));
    for (name, kind, make, wanted) in controllers {
        if kernel.ignores(name) || resolved.ignores(name) {
            continue;
        }
        let wanted: Vec<&String> = wanted
            .iter()
            .filter(|m| !kernel.ignores(m) && !resolved.ignores(m))
            .collect();
        let controller = observed.links.iter().find(|l| &l.name == name);
        if let Some(l) = controller
            && l.kind.as_deref() != Some(kind)
        {
            problems.push(format!(
                "{name} exists and is not a {kind}: its members are left as they are"
            ));
            continue;
        }
        // The members are the bond's (bridge's) from now on: no DHCP of
        // their own, even while it is being made (a lease there would only
        // be torn down again). Their static config goes to it once they
        // are in it (see `removals`).
        members.extend(wanted.iter().map(|m| (*m).clone()));
        member_of.extend(wanted.iter().map(|m| ((*m).clone(), name.clone())));
        let Some(controller) = controller else {
            create.push(make);
            continue;
        };
        for member in wanted {
            let Some(link) = observed.links.iter().find(|l| &l.name == member) else {
                continue;
            };
            if link.controller != Some(controller.index) {
                // A bond wants its members down as they join; a bridge
                // takes a port as it is.
                create.push(Action::Enslave {
                    index: link.index,
                    name: link.name.clone(),
                    controller_index: controller.index,
                    controller: controller.name.clone(),
                    down: kind == "bond",
                });
            } else if kind == "bridge" && !link.is_up() {
                // The kernel brings a bond's members up itself, but leaves
                // a bridge's port as it was: one that is down forwards
                // nothing.
                create.push(Action::SetUp {
                    index: link.index,
                    name: link.name.clone(),
                });
            }
        }
    }
    for name in &resolved.dummies {
        if !kernel.ignores(name)
            && !resolved.ignores(name)
            && !observed.links.iter().any(|l| &l.name == name)
        {
            create.push(Action::CreateDummy { name: name.clone() });
        }
    }
    let mut wireguards = Vec::new();
    for (name, spec) in &resolved.wireguards {
        if kernel.ignores(name) || resolved.ignores(name) {
            continue;
        }
        if let Some(link) = observed.links.iter().find(|l| &l.name == name) {
            if link.kind.as_deref() == Some("wireguard") {
                wireguards.push((name.clone(), spec.clone()));
            } else {
                problems.push(format!(
                    "{name} exists and is not a WireGuard link; its wireguard settings wait until it is gone"
                ));
            }
        } else {
            create.push(Action::CreateWireguard { name: name.clone() });
        }
    }
    let mut links: Vec<&Link> = observed.links.iter().collect();
    links.sort_by_key(|l| l.index);
    let mut out = Vec::new();
    for link in links {
        if kernel.ignores(&link.name)
            || resolved.ignores(&link.name)
            || members.contains(&link.name)
        {
            continue;
        }
        let mut want = DesiredLink {
            index: link.index,
            name: link.name.clone(),
            mtu: None,
            addresses: Vec::new(),
            routes: Vec::new(),
            dhcp: false,
            dhcp_metric: DEFAULT_ROUTE_METRIC,
            mac: link.mac6(),
        };
        if link.is_loopback() {
            want.mac = None;
            out.push(want);
            continue;
        }
        let device = resolved.devices.get(&link.name);
        let ip = kernel.config_for(&link.name, first_physical == Some(link.index));
        if !is_managed(link, device.is_some() || ip.is_some()) {
            continue;
        }
        match (device, ip) {
            (Some(device), _) => {
                want.mtu = device.mtu;
                want.dhcp = device.dhcp.unwrap_or(false);
                want.dhcp_metric = device.dhcp_route_metric.unwrap_or(DEFAULT_ROUTE_METRIC);
                want.addresses = device
                    .addresses
                    .iter()
                    .map(|(address, prefix)| DesiredAddress {
                        address: *address,
                        prefix: *prefix,
                        lifetime: None,
                        origin: Origin::Static,
                    })
                    .collect();
                want.routes = device
                    .routes
                    .iter()
                    .map(|r| DesiredRoute {
                        destination: r.destination,
                        prefix: r.prefix,
                        gateway: r.gateway,
                        metric: r.metric,
                        mtu: r.mtu,
                        source: r.source,
                        origin: Origin::Static,
                    })
                    .collect();
            }
            (None, Some(ip)) => {
                want.dhcp = ip.method() == Autoconf::Dhcp;
                if !want.dhcp {
                    if let Some((address, prefix)) = ip.client_cidr() {
                        want.addresses.push(DesiredAddress {
                            address,
                            prefix,
                            lifetime: None,
                            origin: Origin::Cmdline,
                        });
                    }
                    if let Some(gateway) = ip.gateway {
                        want.routes
                            .push(DesiredRoute::default_via(gateway, Origin::Cmdline));
                    }
                }
            }
            (None, None) => {
                want.dhcp = link.is_physical() && global != Some(Autoconf::Off);
            }
        }
        if want.dhcp
            && let Some(lease) = leases.get(&link.name)
        {
            let (address, routes) = lease_config(lease, now, want.dhcp_metric);
            want.addresses.push(address);
            want.routes.extend(routes);
            if want.mtu.is_none() {
                want.mtu = lease.mtu.map(u32::from);
            }
        }
        out.push(want);
    }
    Desired {
        links: out,
        create,
        problems,
        members,
        made,
        member_of,
        left_alone,
        wireguards,
    }
}

/// What to do to get from `observed` to `desired`: missing VLAN links,
/// MTUs and links up first, then missing addresses, then missing routes
/// (which may need those addresses). A VLAN link created is configured on
/// the next pass, once the kernel reports it.
#[must_use]
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Action> {
    let mut links = Vec::new();
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    for want in &desired.links {
        let Some(link) = observed.link_by_index(want.index) else {
            continue;
        };
        if let Some(mtu) = want.mtu
            && mtu != link.mtu
        {
            links.push(Action::SetMtu {
                index: want.index,
                name: want.name.clone(),
                mtu,
            });
        }
        if !link.is_up() {
            links.push(Action::SetUp {
                index: want.index,
                name: want.name.clone(),
            });
        }
        for address in &want.addresses {
            let present = observed
                .addresses_of(want.index)
                .any(|a| a.address == address.address && a.prefix == address.prefix);
            if !present {
                addresses.push(Action::AddAddress {
                    index: want.index,
                    name: want.name.clone(),
                    address: address.clone(),
                    replace: false,
                });
            }
        }
        for route in &want.routes {
            if !observed.routes.iter().any(|r| route.matches(want.index, r)) {
                routes.push(Action::AddRoute {
                    index: want.index,
                    name: want.name.clone(),
                    route: route.clone(),
                    replace: false,
                });
            }
        }
    }
    desired
        .create
        .iter()
        .cloned()
        .chain(links)
        .chain(addresses)
        .chain(routes)
        .collect()
}

/// The static addresses and routes (machine config and `ip=`) networkd
/// last wanted on each link, by link name, the links it was asked to make
/// and the bond memberships it was asked for: what it may take away again
/// when the config stops asking for it. Kept in memory: after a restart
/// networkd owns only what it is asked for from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// Link name → its static addresses and routes.
    pub links: BTreeMap<String, OwnedLink>,
    /// Links made for the config: name → kind.
    pub made: BTreeMap<String, &'static str>,
    /// Bond memberships asked for: member name → bond name.
    pub members: BTreeMap<String, String>,
}

/// The static addresses and routes of one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedLink {
    /// Addresses with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes.
    pub routes: Vec<DesiredRoute>,
}

impl Owned {
    /// What networkd owns after a pass: what `desired` asks for from the
    /// machine config (never what `ip=` or a lease gives), and what it
    /// owned on a bond member until the member is handed to its bond.
    /// Whether an address was there before the config asked for it does
    /// not matter: the config asked, so dropping it from the config takes
    /// it away, as upstream does (and a restarted networkd, which did not
    /// add what its predecessor added, still owns it).
    #[must_use]
    pub fn next(&self, desired: &Desired) -> Owned {
        let links = desired
            .links
            .iter()
            .map(|link| {
                let addresses = link
                    .addresses
                    .iter()
                    .filter(|a| a.origin == Origin::Static)
                    .map(|a| (a.address, a.prefix))
                    .collect();
                let routes = link
                    .routes
                    .iter()
                    .filter(|r| r.origin == Origin::Static)
                    .cloned()
                    .collect();
                (link.name.clone(), OwnedLink { addresses, routes })
            })
            .collect::<BTreeMap<_, _>>();
        let mut owned = Owned {
            links,
            made: desired.made.clone(),
            members: desired.member_of.clone(),
        };
        // A bond member is no longer managed, but what networkd gave it is
        // still its own until it is handed to the bond (see [`removals`]).
        for member in &desired.members {
            if let Some(before) = self.links.get(member) {
                owned
                    .links
                    .entry(member.clone())
                    .or_insert_with(|| before.clone());
            }
        }
        owned
    }
}

impl Owned {
    /// Keeps owning what `removals` takes away, until the kernel no
    /// longer has it.
    pub fn keep(&mut self, removals: &[Action]) {
        for action in removals {
            match action {
                Action::DelAddress {
                    name,
                    address,
                    prefix,
                    ..
                } => self
                    .links
                    .entry(name.clone())
                    .or_default()
                    .addresses
                    .push((*address, *prefix)),
                Action::DelRoute { name, route, .. } => self
                    .links
                    .entry(name.clone())
                    .or_default()
                    .routes
                    .push(route.clone()),
                Action::DeleteLink { name, kind, .. } => {
                    self.made.insert(name.clone(), kind);
                }
                Action::Release {
                    name, controller, ..
                } => {
                    self.members.insert(name.clone(), controller.clone());
                }
                _ => {}
            }
        }
    }
}

/// What to take away: the static routes, then addresses, networkd put on a
/// link that is still managed and that `desired` no longer asks for (a
/// config changed live), where the kernel still has them; then the bond
/// members no longer asked for, released from a bond that stays; then the
/// links it made that the config no longer names (VLANs first, bonds
/// last), where the kernel has them with the kind it made. A link no
/// longer managed (ignored now) is left as it is.
#[must_use]
pub fn removals(owned: &Owned, desired: &Desired, observed: &Observed) -> Vec<Action> {
    let mut routes = Vec::new();
    let mut addresses = Vec::new();
    for (name, link) in &owned.links {
        // A link that became a bond member gives its static config up to
        // the bond; one no longer managed otherwise (ignored) keeps it.
        let released = DesiredLink {
            index: 0,
            name: name.clone(),
            mtu: None,
            addresses: Vec::new(),
            routes: Vec::new(),
            dhcp: false,
            dhcp_metric: DEFAULT_ROUTE_METRIC,
            mac: None,
        };
        let want = match desired.link(name) {
            Some(want) => want,
            // Given up only once enslaved.
            None if desired.members.contains(name) => {
                match observed
                    .links
                    .iter()
                    .find(|l| &l.name == name && l.controller.is_some())
                {
                    Some(l) => &DesiredLink {
                        index: l.index,
                        ..released
                    },
                    None => continue,
                }
            }
            None => continue,
        };
        for route in &link.routes {
            let still = want.routes.iter().any(|r| {
                r.destination == route.destination
                    && r.prefix == route.prefix
                    && r.gateway == route.gateway
                    && r.metric == route.metric
            });
            if !still && observed.routes.iter().any(|r| route.matches(want.index, r)) {
                routes.push(Action::DelRoute {
                    index: want.index,
                    name: name.clone(),
                    route: route.clone(),
                });
            }
        }
        for (address, prefix) in &link.addresses {
            let still = want
                .addresses
                .iter()
                .any(|a| a.address == *address && a.prefix == *prefix);
            let present = observed
                .addresses_of(want.index)
                .any(|a| a.address == *address && a.prefix == *prefix);
            if !still && present {
                addresses.push(Action::DelAddress {
                    index: want.index,
                    name: name.clone(),
                    address: *address,
                    prefix: *prefix,
                });
            }
        }
    }
    let mut releases = Vec::new();
    for (member, controller) in &owned.members {
        if desired.member_of.get(member) == Some(controller)
            || desired.left_alone.contains(member)
            || desired.left_alone.contains(controller)
            || !desired.made.contains_key(controller)
        {
            // Still asked for, left alone (it or its bond or bridge), or
            // its bond or bridge goes (and the kernel releases its members
            // then).
            continue;
        }
        let controller_link = observed.links.iter().find(|l| {
            &l.name == controller && matches!(l.kind.as_deref(), Some("bond" | "bridge"))
        });
        if let Some(controller_link) = controller_link
            && let Some(link) = observed.links.iter().find(|l| &l.name == member)
            && link.controller == Some(controller_link.index)
        {
            releases.push(Action::Release {
                index: link.index,
                name: member.clone(),
                controller: controller.clone(),
            });
        }
    }
    let mut deletions: Vec<Action> = owned
        .made
        .iter()
        // Dropped, or asked for as another kind under the same name.
        .filter(|(name, kind)| {
            desired.made.get(*name) != Some(*kind) && !desired.left_alone.contains(*name)
        })
        .filter_map(|(name, kind)| {
            let link = observed
                .links
                .iter()
                .find(|l| &l.name == name && l.kind.as_deref() == Some(*kind))?;
            Some(Action::DeleteLink {
                index: link.index,
                name: name.clone(),
                kind,
            })
        })
        .collect();
    // A VLAN may sit on any of the others, and a bond may be a bridge's
    // port: VLANs go first, bonds last.
    deletions.sort_by_key(|a| match a {
        Action::DeleteLink { kind: "vlan", .. } => 0,
        Action::DeleteLink {
            kind: "dummy" | "wireguard",
            ..
        } => 1,
        Action::DeleteLink { kind: "bridge", .. } => 2,
        _ => 3,
    });
    routes
        .into_iter()
        .chain(addresses)
        .chain(releases)
        .chain(deletions)
        .collect()
}

/// What a running DHCP client runs with: a change to any of it restarts
/// the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningDhcp {
    /// Interface index.
    pub index: u32,
    /// The metric of its lease's routes.
    pub metric: u32,
    /// The MAC it identifies itself by.
    pub mac: [u8; 6],
}

/// A DHCP client to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpStart {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// The link's MAC.
    pub mac: [u8; 6],
    /// The metric of its lease's routes.
    pub metric: u32,
}

/// Which DHCP clients to start and which (by link name) to stop, given the
/// clients `running`. A link that was re-created under the same name (new
/// index), whose route metric changed, or whose MAC changed (a new bond or
/// bridge takes its first member's) gets its client restarted: its lease
/// goes, and a new one comes under the link's identity, with the metric.
#[must_use]
pub fn dhcp_changes(
    desired: &Desired,
    running: &BTreeMap<String, RunningDhcp>,
) -> (Vec<DhcpStart>, Vec<String>) {
    let wanted: BTreeMap<&str, RunningDhcp> = desired
        .links
        .iter()
        .filter(|l| l.dhcp)
        .filter_map(|l| {
            l.mac.map(|mac| {
                (
                    l.name.as_str(),
                    RunningDhcp {
                        index: l.index,
                        metric: l.dhcp_metric,
                        mac,
                    },
                )
            })
        })
        .collect();
    let stop = running
        .iter()
        .filter(|(name, running)| wanted.get(name.as_str()) != Some(*running))
        .map(|(name, _)| name.clone())
        .collect();
    let start = wanted
        .iter()
        .filter(|(name, want)| running.get(**name) != Some(*want))
        .map(|(name, want)| DhcpStart {
            index: want.index,
            name: (*name).to_owned(),
            mac: want.mac,
            metric: want.metric,
        })
        .collect();
    (start, stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DeviceSettings, RouteSettings};
    use crate::state::{ARPHRD_ETHER, Address, IFF_LOOPBACK, IFF_UP, RT_SCOPE_UNIVERSE};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// The desired state without kernel arguments or leases.
    fn plain(settings: &Settings, observed: &Observed) -> Desired {
        desired(
            settings,
            &KernelArgs::default(),
            observed,
            &BTreeMap::new(),
            Instant::now(),
        )
    }

    fn link(index: u32, name: &str, kind: Option<&str>, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mtu: 1500,
            mac: vec![2, 0, 0, 0, 0, u8::try_from(index).expect("small")],
            flags: if up { IFF_UP } else { 0 },
            kind: kind.map(str::to_owned),
            link_type: ARPHRD_ETHER,
            ..Link::default()
        }
    }

    fn observed() -> Observed {
        Observed {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    mtu: 65536,
                    flags: IFF_LOOPBACK,
                    link_type: 772,
                    ..Link::default()
                },
                link(2, "eth0", None, true),
                link(3, "eth1", None, false),
                link(4, "veth0", Some("veth"), false),
                link(5, "ign0", Some("dummy"), false),
            ],
            addresses: vec![],
            routes: vec![],
        }
    }

    fn lease(now: Instant) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 99, 7, 55),
            prefix: 24,
            server: Ipv4Addr::new(10, 99, 7, 1),
            routers: vec![Ipv4Addr::new(10, 99, 7, 1)],
            dns: vec![Ipv4Addr::new(10, 99, 7, 1)],
            hostname: None,
            domain: None,
            mtu: Some(1450),
            routes: vec![],
            lease_time: Some(Duration::from_secs(120)),
            t1: Some(Duration::from_secs(60)),
            t2: Some(Duration::from_secs(105)),
            acquired: now,
        }
    }

    fn static_settings() -> Settings {
        Settings {
            devices: vec![DeviceSettings {
                name: "eth0".into(),
                addresses: vec![(ip("10.99.8.5"), 24)],
                routes: vec![RouteSettings {
                    destination: ip("10.99.9.0"),
                    prefix: 24,
                    gateway: Some(ip("10.99.8.1")),
                    source: None,
                    metric: 1024,
                    mtu: None,
                }],
                mtu: Some(1400),
                ..DeviceSettings::default()
            }],
            ..Settings::default()
        }
    }

    /// A bond is created, its members (by name and by selector) enslaved,
    /// then the bond is configured; a member runs no DHCP and gives up the
    /// static address it had.
    #[test]
    fn bonds_are_created_their_members_enslaved() {
        use crate::settings::Selector;
        let mut observed = observed();
        observed.links[2].perm_mac = vec![2, 0, 0, 0, 0, 0x33];
        let bonded = Settings {
            devices: vec![DeviceSettings {
                name: "bond0".into(),
                addresses: vec![(ip("10.60.0.5"), 24)],
                bond: Some(BondSettings {
                    mode: 1,
                    miimon: Some(100),
                    members: vec!["eth0".into()],
                    member_selectors: vec![Selector {
                        permanent_addr: Some("02:00:00:00:00:33".into()),
                        // Still true of a NIC once it is in the bond.
                        physical: Some(true),
                        ..Selector::default()
                    }],
                    ..BondSettings::default()
                }),
                ..DeviceSettings::default()
            }],
            ..Settings::default()
        };
        let d = plain(&bonded, &observed);
        assert!(
            matches!(&d.create[..], [Action::CreateBond { name, bond }] if name == "bond0" && bond.mode == 1)
        );
        // The members are the bond's at once: no DHCP of their own.
        assert_eq!(d.members, ["eth0", "eth1"]);
        assert!(d.link("eth0").is_none() && d.link("eth1").is_none());
        // A link of that name that is no bond gets no members.
        let mut impostor = observed.clone();
        impostor.links.push(link(9, "bond0", Some("dummy"), false));
        let d = plain(&bonded, &impostor);
        assert!(
            d.create.is_empty() && d.members.is_empty(),
            "{:?}",
            d.create
        );
        assert!(
            d.problems.iter().any(|p| p.contains("is not a bond")),
            "{:?}",
            d.problems
        );

        let mut bond = link(9, "bond0", Some("bond"), false);
        bond.mac = vec![2, 0, 0, 0, 0, 2];
        observed.links.push(bond);
        let d = plain(&bonded, &observed);
        let enslaved: Vec<&str> = d
            .create
            .iter()
            .filter_map(|a| match a {
                Action::Enslave {
                    name,
                    controller_index: 9,
                    ..
                } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(enslaved, ["eth0", "eth1"]);
        assert_eq!(d.members, ["eth0", "eth1"]);
        assert!(
            d.link("eth0").is_none() && d.link("eth1").is_none(),
            "members are not managed once the bond exists: no DHCP"
        );
        assert_eq!(
            d.link("bond0").expect("bond0").addresses[0].address,
            ip("10.60.0.5")
        );

        // Enslaved: nothing more to do for the members.
        for i in [1, 2] {
            observed.links[i].controller = Some(9);
        }
        let d = plain(&bonded, &observed);
        assert!(d.create.is_empty(), "{:?}", d.create);
        // Still members once in the bond, though the selector's `physical`
        // and the MAC may read differently now.
        assert_eq!(d.members, ["eth0", "eth1"]);

        // eth0's static address from before the bond is still owned after
        // the pass that enslaves it, and taken away once it is a member.
        let before = plain(&static_settings(), &observed);
        let owned = Owned::default().next(&before);
        observed.addresses.push(Address {
            index: 2,
            address: ip("10.99.8.5"),
            prefix: 24,
            scope: RT_SCOPE_UNIVERSE,
        });
        // A pass with eth0 a member: no longer managed, still owned.
        let owned = owned.next(&d);
        assert!(owned.links.contains_key("eth0"));
        assert_eq!(
            removals(&owned, &d, &observed),
            vec![Action::DelAddress {
                index: 2,
                name: "eth0".into(),
                address: ip("10.99.8.5"),
                prefix: 24,
            }]
        );
    }

    /// The settings of `made_links_dropped_from_the_config_are_deleted`: a
    /// VLAN on eth0, a dummy, and a bond of eth1 (and eth0 with `both`).
    fn made_settings(both: bool) -> Settings {
        let mut members = vec!["eth1".to_owned()];
        if both {
            members.insert(0, "eth0".into());
        }
        Settings {
            devices: vec![
                DeviceSettings {
                    name: "eth0".into(),
                    vlans: vec![(5, DeviceSettings::default())],
                    ..DeviceSettings::default()
                },
                DeviceSettings {
                    name: "dummy0".into(),
                    dummy: true,
                    ..DeviceSettings::default()
                },
                DeviceSettings {
                    name: "bond0".into(),
                    bond: Some(BondSettings {
                        mode: 1,
                        members,
                        ..BondSettings::default()
                    }),
                    ..DeviceSettings::default()
                },
            ],
            ..Settings::default()
        }
    }

    /// The links made for a config (VLAN, dummy, bond) are deleted once a
    /// config drops them, VLANs first; a bond's members are left to the
    /// kernel then. Never a link of another kind under that name, nor one
    /// the config says to leave alone.
    #[test]
    fn made_links_dropped_from_the_config_are_deleted() {
        let mut observed = observed();
        let made = plain;
        let first = made(&made_settings(false), &observed);
        assert_eq!(
            first
                .made
                .iter()
                .map(|(n, k)| (n.as_str(), *k))
                .collect::<Vec<_>>(),
            [("bond0", "bond"), ("dummy0", "dummy"), ("eth0.5", "vlan")]
        );
        let owned = Owned::default().next(&first);
        // Made as asked, eth1 in the bond.
        let mut bond = link(10, "bond0", Some("bond"), true);
        bond.mac = vec![2, 0, 0, 0, 0, 3];
        let mut vlan = link(12, "eth0.5", Some("vlan"), true);
        vlan.parent = Some(2);
        observed
            .links
            .extend([bond, link(11, "dummy0", Some("dummy"), true), vlan]);
        observed.links[2].controller = Some(10);
        let same = made(&made_settings(false), &observed);
        let owned = owned.next(&same);
        assert!(removals(&owned, &same, &observed).is_empty());

        // The config drops all three.
        let dropped = made(&static_settings(), &observed);
        assert!(dropped.made.is_empty());
        let actions = removals(&owned, &dropped, &observed);
        assert_eq!(
            actions,
            [
                Action::DeleteLink {
                    index: 12,
                    name: "eth0.5".into(),
                    kind: "vlan"
                },
                Action::DeleteLink {
                    index: 11,
                    name: "dummy0".into(),
                    kind: "dummy"
                },
                Action::DeleteLink {
                    index: 10,
                    name: "bond0".into(),
                    kind: "bond"
                },
            ]
        );
        // Still owned until the kernel has them no more.
        let mut kept = owned.next(&dropped);
        kept.keep(&actions);
        assert_eq!(kept.made.len(), 3);
        assert_eq!(removals(&kept, &dropped, &observed), actions);
        let mut gone = observed.clone();
        gone.links.retain(|l| l.index < 10);
        gone.links[2].controller = None;
        assert!(removals(&kept, &dropped, &gone).is_empty());
        assert!(owned.next(&made(&static_settings(), &gone)).made.is_empty());

        // Asked for as another kind under the same name: the old one goes
        // (and the new one is made on a later pass).
        let mut rekinded = made_settings(false);
        rekinded.devices[1].dummy = false;
        rekinded.devices[1].bridge = Some(BridgeSettings::default());
        let actions = removals(&owned, &made(&rekinded, &observed), &observed);
        assert!(
            actions.contains(&Action::DeleteLink {
                index: 11,
                name: "dummy0".into(),
                kind: "dummy"
            }),
            "{actions:?}"
        );
        // A link of another kind under a made name is not ours to delete,
        // nor one the config now says to leave alone.
        let mut other = observed.clone();
        other.links[6].kind = Some("veth".into());
        let actions = removals(&owned, &dropped, &other);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::DeleteLink { name, .. } if name == "dummy0")),
            "{actions:?}"
        );
        let mut ignoring = static_settings();
        ignoring.devices.push(DeviceSettings {
            name: "dummy0".into(),
            ignore: true,
            ..DeviceSettings::default()
        });
        let actions = removals(&owned, &made(&ignoring, &observed), &observed);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::DeleteLink { name, .. } if name == "dummy0")),
            "{actions:?}"
        );
    }

    /// A member the config takes out of a bond that stays is released,
    /// and is then a link like any other.
    #[test]
    fn a_member_dropped_from_a_bond_is_released() {
        let mut observed = observed();
        let mut bond = link(10, "bond0", Some("bond"), true);
        bond.mac = vec![2, 0, 0, 0, 0, 2];
        observed.links.push(bond);
        observed.links[1].controller = Some(10);
        observed.links[2].controller = Some(10);
        let pass = plain;
        let both = pass(&made_settings(true), &observed);
        assert_eq!(
            both.member_of.get("eth0").map(String::as_str),
            Some("bond0")
        );
        let owned = Owned::default().next(&both);
        assert!(removals(&owned, &both, &observed).is_empty());

        let one = pass(&made_settings(false), &observed);
        assert_eq!(
            removals(&owned, &one, &observed),
            [Action::Release {
                index: 2,
                name: "eth0".into(),
                controller: "bond0".into()
            }]
        );
        // Left alone when the config says so.
        let mut ignoring = made_settings(false);
        ignoring.devices.push(DeviceSettings {
            name: "eth0".into(),
            ignore: true,
            ..DeviceSettings::default()
        });
        assert!(removals(&owned, &pass(&ignoring, &observed), &observed).is_empty());
        // So is every member of a bond the config now ignores.
        let mut ignoring_bond = made_settings(false);
        ignoring_bond.devices.push(DeviceSettings {
            name: "bond0".into(),
            ignore: true,
            ..DeviceSettings::default()
        });
        assert!(removals(&owned, &pass(&ignoring_bond, &observed), &observed).is_empty());
        // Released: nothing more to do, and eth0 is managed again, as its
        // own config entry says; eth1 is still the bond's.
        observed.links[1].controller = None;
        let after = pass(&made_settings(false), &observed);
        let owned = owned.next(&after);
        assert!(removals(&owned, &after, &observed).is_empty());
        assert!(!owned.members.contains_key("eth0"));
        assert!(after.link("eth0").is_some());
        assert_eq!(after.members, ["eth1"]);
        // Unnamed in the config, it runs DHCP, as any physical link.
        let after = pass(&made_settings(false), &{
            let mut o = observed.clone();
            o.links[1].name = "eth9".into();
            o
        });
        assert!(after.link("eth9").is_some_and(|l| l.dhcp));
    }

    /// A bridge is created; its ports (by `interfaces` and by
    /// `bridgePort`) join it as they are, without being taken down, and a
    /// port in it that is down is brought up. A port has no DHCP of its
    /// own, and a link a bond has is not a bridge's too.
    #[test]
    fn bridges_are_created_their_ports_added_and_up() {
        let mut observed = observed();
        let settings = Settings {
            devices: vec![
                DeviceSettings {
                    name: "br0".into(),
                    dhcp: Some(true),
                    bridge: Some(BridgeSettings {
                        stp: true,
                        vlan_filtering: false,
                        members: vec!["eth0".into()],
                    }),
                    ..DeviceSettings::default()
                },
                DeviceSettings {
                    name: "eth1".into(),
                    bridge_port: Some("br0".into()),
                    ..DeviceSettings::default()
                },
            ],
            ..Settings::default()
        };
        let pass = |observed: &Observed| plain(&settings, observed);
        let d = pass(&observed);
        assert!(
            matches!(&d.create[..], [Action::CreateBridge { name, bridge }] if name == "br0" && bridge.stp)
        );
        assert_eq!(d.members, ["eth0", "eth1"]);
        assert_eq!(d.made.get("br0"), Some(&"bridge"));
        assert!(d.link("eth0").is_none() && d.link("eth1").is_none());

        let mut bridge = link(9, "br0", Some("bridge"), true);
        bridge.mac = vec![2, 0, 0, 0, 0, 9];
        observed.links.push(bridge);
        let d = pass(&observed);
        assert_eq!(
            d.create,
            [
                Action::Enslave {
                    index: 2,
                    name: "eth0".into(),
                    controller_index: 9,
                    controller: "br0".into(),
                    down: false,
                },
                Action::Enslave {
                    index: 3,
                    name: "eth1".into(),
                    controller_index: 9,
                    controller: "br0".into(),
                    down: false,
                },
            ]
        );
        assert!(d.link("br0").is_some_and(|l| l.dhcp));
        // In the bridge: eth1, down, is brought up; nothing more for eth0.
        observed.links[1].controller = Some(9);
        observed.links[2].controller = Some(9);
        let d = pass(&observed);
        assert_eq!(
            d.create,
            [Action::SetUp {
                index: 3,
                name: "eth1".into()
            }]
        );
        assert_eq!(d.member_of.get("eth1").map(String::as_str), Some("br0"));

        // A bond's member is not a bridge's port as well.
        let mut both = settings.clone();
        both.devices.push(DeviceSettings {
            name: "bond0".into(),
            bond: Some(BondSettings {
                members: vec!["eth0".into()],
                ..BondSettings::default()
            }),
            ..DeviceSettings::default()
        });
        let d = plain(&both, &observed);
        assert_eq!(d.member_of.get("eth0").map(String::as_str), Some("bond0"));
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains("eth0 is a member of bond0 already")),
            "{:?}",
            d.problems
        );
        // A bridgePort naming no configured bridge is reported.
        let mut stray = settings.clone();
        stray.devices[1].bridge_port = Some("br9".into());
        let d = plain(&stray, &observed);
        assert_eq!(d.members, ["eth0"]);
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains("br9, which is no configured bridge")),
            "{:?}",
            d.problems
        );
    }

    /// A bridge over a bond, dropped: the bridge goes before the bond.
    #[test]
    fn a_bridge_goes_before_the_bond_it_sits_on() {
        let mut observed = observed();
        let settings = Settings {
            devices: vec![
                DeviceSettings {
                    name: "bond0".into(),
                    bond: Some(BondSettings {
                        members: vec!["eth0".into()],
                        ..BondSettings::default()
                    }),
                    bridge_port: Some("br0".into()),
                    ..DeviceSettings::default()
                },
                DeviceSettings {
                    name: "br0".into(),
                    bridge: Some(BridgeSettings::default()),
                    ..DeviceSettings::default()
                },
            ],
            ..Settings::default()
        };
        let mut bond = link(9, "bond0", Some("bond"), true);
        bond.controller = Some(10);
        observed
            .links
            .extend([bond, link(10, "br0", Some("bridge"), true)]);
        observed.links[1].controller = Some(9);
        let before = plain(&settings, &observed);
        assert_eq!(
            before.member_of.get("bond0").map(String::as_str),
            Some("br0")
        );
        assert!(before.create.is_empty(), "{:?}", before.create);
        let owned = Owned::default().next(&before);
        let after = plain(&Settings::default(), &observed);
        let actions = removals(&owned, &after, &observed);
        let deleted: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteLink { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["br0", "bond0"]);
    }

    /// A dummy link is created, then addressed like any configured link.
    #[test]
    fn dummy_links_are_created_then_configured() {
        let settings = Settings {
            devices: vec![DeviceSettings {
                name: "dummy0".into(),
                dummy: true,
                addresses: vec![(ip("10.200.0.1"), 32)],
                ..DeviceSettings::default()
            }],
            ..Settings::default()
        };
        let mut observed = observed();
        let d = plain(&settings, &observed);
        assert_eq!(
            plan(&d, &observed).first(),
            Some(&Action::CreateDummy {
                name: "dummy0".into()
            })
        );
        observed.links.push(link(9, "dummy0", Some("dummy"), false));
        let d = plain(&settings, &observed);
        assert!(d.create.is_empty());
        let dummy = d.link("dummy0").expect("managed once it exists");
        assert!(!dummy.dhcp);
        assert_eq!(dummy.addresses[0].address, ip("10.200.0.1"));
    }

    #[test]
    fn wireguard_links_are_created_set_and_deleted() {
        let spec = crate::wireguard::Spec {
            private_key: [7; 32],
            listen_port: Some(51820),
            firewall_mark: None,
            peers: Vec::new(),
        };
        let settings = Settings {
            devices: vec![DeviceSettings {
                name: "wg0".into(),
                wireguard: Some(spec.clone()),
                addresses: vec![(ip("10.6.0.1"), 24)],
                ..DeviceSettings::default()
            }],
            ..Settings::default()
        };
        let mut observed = observed();
        let d = plain(&settings, &observed);
        assert_eq!(d.create, [Action::CreateWireguard { name: "wg0".into() }]);
        assert!(d.wireguards.is_empty(), "set once it exists");
        assert_eq!(d.made.get("wg0"), Some(&"wireguard"));
        observed
            .links
            .push(link(9, "wg0", Some("wireguard"), false));
        let d = plain(&settings, &observed);
        assert!(d.create.is_empty());
        assert_eq!(d.wireguards, [("wg0".to_owned(), spec)]);
        assert_eq!(
            d.link("wg0").expect("managed").addresses[0].address,
            ip("10.6.0.1")
        );
        // No selector picks it.
        let selector = crate::settings::Selector {
            driver: Some(String::new()),
            physical: Some(false),
            ..crate::settings::Selector::default()
        };
        assert!(!selector.matches(&observed.links[observed.links.len() - 1]));
        // A link of another kind under the name: reported, not set.
        let mut other = observed.clone();
        other.links.retain(|l| l.name != "wg0");
        other.links.push(link(9, "wg0", Some("dummy"), false));
        let conflict = plain(&settings, &other);
        assert!(conflict.wireguards.is_empty());
        assert!(
            conflict
                .problems
                .iter()
                .any(|p| p.contains("wg0 exists and is not a WireGuard link")),
            "{:?}",
            conflict.problems
        );
        // Dropped from the config: deleted.
        let owned = Owned::default().next(&d);
        let dropped = plain(&Settings::default(), &observed);
        assert!(
            removals(&owned, &dropped, &observed).contains(&Action::DeleteLink {
                index: 9,
                name: "wg0".into(),
                kind: "wireguard",
            })
        );
    }

    /// An address or route dropped from the config is taken away; one the
    /// config never gave (a lease's, someone else's) is not.
    #[test]
    fn static_config_dropped_live_is_removed() {
        let mut observed = observed();
        let settings = static_settings();
        let before = plain(&settings, &observed);
        let owned = Owned::default().next(&before);
        assert_eq!(owned.links["eth0"].addresses, vec![(ip("10.99.8.5"), 24)]);
        assert_eq!(owned.links["eth0"].routes.len(), 1);
        // The kernel has what was asked, and an address of someone else's.
        for (address, prefix) in [("10.99.8.5", 24), ("192.0.2.9", 32)] {
            observed.addresses.push(Address {
                index: 2,
                address: ip(address),
                prefix,
                scope: RT_SCOPE_UNIVERSE,
            });
        }
        observed.routes.push(Route {
            family: AF_INET,
            table: RT_TABLE_MAIN,
            destination: Some(ip("10.99.9.0")),
            destination_len: 24,
            gateway: Some(ip("10.99.8.1")),
            oif: Some(2),
            metric: 1024,
            ..Route::default()
        });
        assert!(
            removals(&owned, &before, &observed).is_empty(),
            "nothing dropped yet"
        );

        // The config moves eth0 to another address, without the route.
        let mut moved = settings.clone();
        moved.devices[0].addresses = vec![(ip("10.99.8.6"), 24)];
        moved.devices[0].routes.clear();
        let after = plain(&moved, &observed);
        let actions = removals(&owned, &after, &observed);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(
            matches!(&actions[0], Action::DelRoute { index: 2, route, .. } if route.destination == ip("10.99.9.0"))
        );
        assert_eq!(
            actions[1],
            Action::DelAddress {
                index: 2,
                name: "eth0".into(),
                address: ip("10.99.8.5"),
                prefix: 24,
            }
        );
        // Ignored now: left alone.
        let mut ignored = settings.clone();
        ignored.devices[0].ignore = true;
        let after = plain(&ignored, &observed);
        assert!(removals(&owned, &after, &observed).is_empty());
    }

    /// eth1 selected by its driver gets an address and a VLAN with its
    /// own; the VLAN link is created first, and configured once it exists.
    #[test]
    fn selected_links_and_their_vlans() {
        use crate::settings::Selector;
        let mut observed = observed();
        observed.links[2].hardware.driver = "e1000".into();
        observed.links[2].hardware.bus_path = "0000:00:04.0".into();
        let vlan = DeviceSettings {
            addresses: vec![(ip("10.50.0.5"), 24)],
            ..DeviceSettings::default()
        };
        let settings = Settings {
            devices: vec![DeviceSettings {
                selector: Some(Selector {
                    driver: Some("e1000*".into()),
                    bus_path: Some("0000:00:*".into()),
                    ..Selector::default()
                }),
                addresses: vec![(ip("10.40.0.5"), 24)],
                vlans: vec![(50, vlan)],
                ..DeviceSettings::default()
            }],
            ..Settings::default()
        };
        let d = plain(&settings, &observed);
        let eth1 = d.link("eth1").expect("eth1");
        assert_eq!(eth1.addresses[0].address, ip("10.40.0.5"));
        assert!(!eth1.dhcp, "a configured link runs DHCP only when told");
        assert!(d.link("eth0").expect("eth0").dhcp, "eth0 is not selected");
        let create = Action::CreateVlan {
            name: "eth1.50".into(),
            parent_index: 3,
            parent: "eth1".into(),
            vid: 50,
        };
        let actions = plan(&d, &observed);
        assert_eq!(actions.first(), Some(&create), "{actions:?}");
        assert!(actions.contains(&Action::AddAddress {
            index: 3,
            name: "eth1".into(),
            address: DesiredAddress {
                address: ip("10.40.0.5"),
                prefix: 24,
                lifetime: None,
                origin: Origin::Static,
            },
            replace: false,
        }));

        // Once the kernel has it: up and addressed, not created again.
        let mut vlan_link = link(9, "eth1.50", Some("vlan"), false);
        vlan_link.parent = Some(3);
        vlan_link.vlan_id = Some(50);
        observed.links.push(vlan_link);
        let d = plain(&settings, &observed);
        assert!(d.create.is_empty());
        let actions = plan(&d, &observed);
        assert!(actions.contains(&Action::SetUp {
            index: 9,
            name: "eth1.50".into()
        }));
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::AddAddress { index: 9, address, .. } if address.address == ip("10.50.0.5")
        )));

        // A selector matching nothing configures nothing and makes no VLAN.
        let mut none = settings.clone();
        none.devices[0].selector = Some(Selector {
            driver: Some("ixgbe".into()),
            ..Selector::default()
        });
        let d = plain(&none, &observed);
        assert!(d.create.is_empty());
        assert!(d.link("eth1").expect("eth1").dhcp, "back to the default");
        // An ignored parent gets no VLAN.
        let mut ignored = Settings::default();
        ignored.devices.push(DeviceSettings {
            name: "eth0".into(),
            ignore: true,
            vlans: vec![(7, DeviceSettings::default())],
            ..DeviceSettings::default()
        });
        let d = plain(&ignored, &observed);
        assert!(d.create.is_empty());
    }

    #[test]
    fn defaults_manage_loopback_and_physical_links_with_dhcp() {
        let d = plain(&Settings::default(), &observed());
        let names: Vec<&str> = d.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["lo", "eth0", "eth1"]);
        assert!(!d.link("lo").expect("lo").dhcp);
        assert!(d.link("eth0").expect("eth0").dhcp);
        assert!(d.link("eth1").expect("eth1").dhcp);
        let actions = plan(&d, &observed());
        assert_eq!(
            actions,
            vec![
                Action::SetUp {
                    index: 1,
                    name: "lo".into()
                },
                Action::SetUp {
                    index: 3,
                    name: "eth1".into()
                },
            ]
        );
        let (start, stop) = dhcp_changes(&d, &BTreeMap::new());
        assert_eq!(
            start.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["eth0", "eth1"]
        );
        assert_eq!(start[0].mac, [2, 0, 0, 0, 0, 2]);
        assert!(stop.is_empty());
    }

    #[test]
    fn ignored_links_are_left_alone() {
        let now = Instant::now();
        let kernel = KernelArgs::parse(
            "talos.network.interface.ignore=eth1 talos.network.interface.ignore=ign0 \
             ip=10.99.6.5:::255.255.255.0::ign0:off",
        );
        let mut settings = static_settings();
        settings.devices.push(DeviceSettings {
            name: "ign0".into(),
            addresses: vec![(ip("10.99.6.5"), 24)],
            ..DeviceSettings::default()
        });
        let d = desired(&settings, &kernel, &observed(), &BTreeMap::new(), now);
        assert!(d.link("eth1").is_none());
        assert!(d.link("ign0").is_none());
        let actions = plan(&d, &observed());
        assert!(
            actions.iter().all(|a| !matches!(a,
                Action::SetUp { name, .. } | Action::SetMtu { name, .. }
                | Action::AddAddress { name, .. } | Action::AddRoute { name, .. }
                if name == "eth1" || name == "ign0")),
            "{actions:?}"
        );
        // ignore: true in the config too.
        let mut settings = Settings::default();
        settings.devices.push(DeviceSettings {
            name: "eth0".into(),
            ignore: true,
            ..DeviceSettings::default()
        });
        let d = plain(&settings, &observed());
        assert!(d.link("eth0").is_none());
    }

    #[test]
    fn static_config_plans_mtu_up_addresses_then_routes() {
        let mut obs = observed();
        obs.links[1].flags = 0; // eth0 down
        let d = plain(&static_settings(), &obs);
        let eth0 = d.link("eth0").expect("eth0");
        assert!(!eth0.dhcp, "a configured link runs DHCP only when told");
        let actions: Vec<Action> = plan(&d, &obs)
            .into_iter()
            .filter(|a| !matches!(a, Action::SetUp { name, .. } if name != "eth0"))
            .collect();
        assert_eq!(
            actions,
            vec![
                Action::SetMtu {
                    index: 2,
                    name: "eth0".into(),
                    mtu: 1400
                },
                Action::SetUp {
                    index: 2,
                    name: "eth0".into()
                },
                Action::AddAddress {
                    index: 2,
                    name: "eth0".into(),
                    address: DesiredAddress {
                        address: ip("10.99.8.5"),
                        prefix: 24,
                        lifetime: None,
                        origin: Origin::Static,
                    },
                    replace: false
                },
                Action::AddRoute {
                    index: 2,
                    name: "eth0".into(),
                    route: DesiredRoute {
                        destination: ip("10.99.9.0"),
                        prefix: 24,
                        gateway: Some(ip("10.99.8.1")),
                        metric: 1024,
                        mtu: None,
                        source: None,
                        origin: Origin::Static
                    },
                    replace: false
                },
            ]
        );

        // Once the kernel has it all, nothing is left to do for eth0.
        obs.links[1].flags = IFF_UP;
        obs.links[1].mtu = 1400;
        obs.addresses.push(Address {
            index: 2,
            address: ip("10.99.8.5"),
            prefix: 24,
            scope: RT_SCOPE_UNIVERSE,
        });
        obs.routes.push(Route {
            family: AF_INET,
            table: RT_TABLE_MAIN,
            destination: Some(ip("10.99.9.0")),
            destination_len: 24,
            gateway: Some(ip("10.99.8.1")),
            oif: Some(2),
            metric: 1024,
            protocol: RTPROT_STATIC,
            ..Route::default()
        });
        let left = plan(&d, &obs);
        assert!(
            left.iter().all(|a| !matches!(a,
                Action::SetUp { name, .. } | Action::SetMtu { name, .. }
                | Action::AddAddress { name, .. } | Action::AddRoute { name, .. }
                if name == "eth0")),
            "{left:?}"
        );
        // The same route with another metric or gateway does not count.
        obs.routes[0].metric = 100;
        assert!(
            plan(&d, &obs)
                .iter()
                .any(|a| matches!(a, Action::AddRoute { .. }))
        );
    }

    #[test]
    fn kernel_ip_arguments() {
        let now = Instant::now();
        // Static on a named virtual link: it becomes managed, no DHCP.
        let kernel = KernelArgs::parse("ip=10.0.0.5::10.0.0.1:255.255.255.0::veth0:off:1.1.1.1");
        let d = desired(
            &Settings::default(),
            &kernel,
            &observed(),
            &BTreeMap::new(),
            now,
        );
        let veth = d.link("veth0").expect("veth0 is managed");
        assert!(!veth.dhcp);
        assert_eq!(
            veth.addresses,
            vec![DesiredAddress {
                address: ip("10.0.0.5"),
                prefix: 24,
                lifetime: None,
                origin: Origin::Cmdline,
            }]
        );
        assert_eq!(veth.routes.len(), 1);
        assert_eq!(veth.routes[0].destination, ip("0.0.0.0"));
        assert_eq!(veth.routes[0].prefix, 0);
        assert_eq!(veth.routes[0].gateway, Some(ip("10.0.0.1")));
        assert_eq!(veth.routes[0].origin, Origin::Cmdline);
        // Physical links keep their default.
        assert!(d.link("eth0").expect("eth0").dhcp);

        // DHCP on a named virtual link.
        let kernel = KernelArgs::parse("ip=:::::veth0:dhcp");
        let d = desired(
            &Settings::default(),
            &kernel,
            &observed(),
            &BTreeMap::new(),
            now,
        );
        assert!(d.link("veth0").expect("veth0").dhcp);

        // ip=off: no DHCP by default.
        let kernel = KernelArgs::parse("ip=off");
        let d = desired(
            &Settings::default(),
            &kernel,
            &observed(),
            &BTreeMap::new(),
            now,
        );
        assert!(!d.link("eth0").expect("eth0").dhcp);

        // No device: the first physical link.
        let kernel = KernelArgs::parse("ip=192.168.1.9:::255.255.255.0");
        let d = desired(
            &Settings::default(),
            &kernel,
            &observed(),
            &BTreeMap::new(),
            now,
        );
        assert_eq!(d.link("eth0").expect("eth0").addresses.len(), 1);
        assert!(d.link("eth1").expect("eth1").addresses.is_empty());

        // The machine config wins over ip= for a link it names.
        let kernel = KernelArgs::parse("ip=10.0.0.5:::255.255.255.0::eth0:off");
        let d = desired(
            &static_settings(),
            &kernel,
            &observed(),
            &BTreeMap::new(),
            now,
        );
        assert_eq!(
            d.link("eth0").expect("eth0").addresses[0].address,
            ip("10.99.8.5")
        );
    }

    #[test]
    fn leases_add_addresses_with_lifetimes_and_routes() {
        let now = Instant::now();
        let mut leases = BTreeMap::new();
        leases.insert("eth0".to_owned(), lease(now));
        // Configured for static only: the lease is not used.
        leases.insert("veth0".to_owned(), lease(now));
        let later = now + Duration::from_secs(20);
        let d = desired(
            &Settings::default(),
            &KernelArgs::default(),
            &observed(),
            &leases,
            later,
        );
        let eth0 = d.link("eth0").expect("eth0");
        assert_eq!(
            eth0.addresses,
            vec![DesiredAddress {
                address: ip("10.99.7.55"),
                prefix: 24,
                lifetime: Some(Lifetime {
                    valid: 100,
                    preferred: 100
                }),
                origin: Origin::Dhcp,
            }]
        );
        assert_eq!(
            eth0.routes,
            vec![DesiredRoute::default_via(ip("10.99.7.1"), Origin::Dhcp)]
        );
        assert_eq!(eth0.routes[0].origin.protocol(), RTPROT_DHCP);
        assert_eq!(eth0.mtu, Some(1450));
        assert!(d.link("veth0").is_none());
    }

    #[test]
    fn lease_actions_and_removal() {
        let now = Instant::now();
        let mut l = lease(now);
        let actions = lease_actions(2, "eth0", &l, now, DEFAULT_ROUTE_METRIC);
        assert_eq!(actions.len(), 2);
        assert!(
            matches!(&actions[0], Action::AddAddress { replace: true, address, .. }
            if address.lifetime == Some(Lifetime { valid: 120, preferred: 120 }))
        );
        assert!(
            matches!(&actions[1], Action::AddRoute { replace: true, route, .. }
            if route.gateway == Some(ip("10.99.7.1")) && route.prefix == 0)
        );
        let removal = lease_removal(2, "eth0", &l, DEFAULT_ROUTE_METRIC);
        assert!(matches!(&removal[0], Action::DelRoute { route, .. } if route.prefix == 0));
        assert_eq!(
            removal[1],
            Action::DelAddress {
                index: 2,
                name: "eth0".into(),
                address: ip("10.99.7.55"),
                prefix: 24
            }
        );

        // A router outside the leased network gets a host route first.
        l.prefix = 32;
        let (_, routes) = lease_config(&l, now, 512);
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().all(|r| r.metric == 512), "{routes:?}");
        assert_eq!(routes[0].destination, ip("10.99.7.1"));
        assert_eq!(routes[0].prefix, 32);
        assert_eq!(routes[0].gateway, None);
        assert_eq!(routes[1].prefix, 0);

        // Classless static routes replace the router option.
        l.prefix = 24;
        l.routes = vec![
            (Ipv4Addr::new(10, 50, 0, 9), 16, Ipv4Addr::new(10, 99, 7, 2)),
            (Ipv4Addr::new(10, 60, 0, 0), 24, Ipv4Addr::UNSPECIFIED),
        ];
        let (_, routes) = lease_config(&l, now, 512);
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().all(|r| r.metric == 512), "{routes:?}");
        assert_eq!(routes[0].destination, ip("10.50.0.0"));
        assert_eq!(routes[0].gateway, Some(ip("10.99.7.2")));
        assert_eq!(routes[1].gateway, None);

        // An infinite lease: a permanent address.
        l.lease_time = None;
        let (address, _) = lease_config(&l, now, DEFAULT_ROUTE_METRIC);
        assert_eq!(address.lifetime, None);
    }

    #[test]
    fn dhcp_clients_follow_the_desired_links() {
        let d = plain(&Settings::default(), &observed());
        // A client as the test links run one: the MAC ends in the index.
        let client = |index: u32, metric: u32| RunningDhcp {
            index,
            metric,
            mac: [2, 0, 0, 0, 0, u8::try_from(index).expect("small")],
        };
        let mut running = BTreeMap::new();
        running.insert("eth0".to_owned(), client(2, DEFAULT_ROUTE_METRIC));
        running.insert("eth1".to_owned(), client(9, DEFAULT_ROUTE_METRIC)); // re-created: new index
        running.insert("gone0".to_owned(), client(7, DEFAULT_ROUTE_METRIC));
        let (start, stop) = dhcp_changes(&d, &running);
        assert_eq!(
            start
                .iter()
                .map(|s| (s.name.as_str(), s.index))
                .collect::<Vec<_>>(),
            vec![("eth1", 3)]
        );
        assert_eq!(stop, vec!["eth1".to_owned(), "gone0".to_owned()]);
        // A new MAC (a bond or bridge that took its first member's): the
        // client restarts under it.
        let mut renamed = running.clone();
        renamed.get_mut("eth0").expect("eth0").mac = [2, 0, 0, 0, 0, 0x99];
        let (start, stop) = dhcp_changes(&d, &renamed);
        assert!(stop.contains(&"eth0".to_owned()), "{stop:?}");
        assert!(
            start
                .iter()
                .any(|s| s.name == "eth0" && s.mac == [2, 0, 0, 0, 0, 2]),
            "{start:?}"
        );

        // dhcpOptions: eth0's routes get metric 512 (its client restarts
        // for it); with ipv4 false, no DHCPv4 client at all.
        let with_options = |options: machinery::config::v1alpha1::DhcpOptions| {
            let network = machinery::config::v1alpha1::Network {
                interfaces: Some(vec![machinery::config::v1alpha1::Device {
                    interface: Some("eth0".into()),
                    dhcp: Some(true),
                    dhcp_options: Some(options),
                    ..Default::default()
                }]),
                ..Default::default()
            };
            plain(&Settings::from_network(&network), &observed())
        };
        let d = with_options(machinery::config::v1alpha1::DhcpOptions {
            route_metric: Some(512),
            ..Default::default()
        });
        assert_eq!(
            d.link("eth0").map(|l| (l.dhcp, l.dhcp_metric)),
            Some((true, 512))
        );
        let running = BTreeMap::from([("eth0".to_owned(), client(2, DEFAULT_ROUTE_METRIC))]);
        let (start, stop) = dhcp_changes(&d, &running);
        assert_eq!(stop, ["eth0"]);
        assert!(
            start
                .iter()
                .any(|s| s.name == "eth0" && s.index == 2 && s.metric == 512),
            "{start:?}"
        );
        let running = BTreeMap::from([("eth0".to_owned(), client(2, 512))]);
        let (start, stop) = dhcp_changes(&d, &running);
        assert!(
            !start.iter().any(|s| s.name == "eth0") && stop.is_empty(),
            "{start:?} {stop:?}"
        );
        let d = with_options(machinery::config::v1alpha1::DhcpOptions {
            ipv4: Some(false),
            ..Default::default()
        });
        assert_eq!(d.link("eth0").map(|l| l.dhcp), Some(false));
    }

    #[test]
    fn lifetimes() {
        assert_eq!(Lifetime::remaining(Duration::from_millis(10)).valid, 1);
        assert_eq!(Lifetime::remaining(Duration::from_secs(90)).preferred, 90);
        assert_eq!(
            Lifetime::remaining(Duration::from_secs(u64::MAX / 2)).valid,
            u32::MAX - 1
        );
    }
}
