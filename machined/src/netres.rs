//! The network resources `AddressStatuses`, `LinkStatuses` and
//! `RouteStatuses`: the kernel's links, addresses and routes, dumped over
//! rtnetlink when they are read.
//!
//! Background: upstream's status controllers copy each netlink dump into
//! one resource per link, address and route, and `talosctl get addresses`,
//! `links` and `routes` are how an operator looks at a node's network.
//! The ids, the YAML keys and the strings each number is printed as are
//! upstream's (`eth0/10.5.0.2/24`, `inet4/10.5.0.1//1024`, `inet4`,
//! `UP,BROADCAST,RUNNING`), and so are the protobuf specs, which upstream's
//! talosctl decodes instead of the YAML.
//!
//! Not read (left at upstream's defaults for a link without ethtool): the
//! port (`Other`), driver and firmware versions, the PCI database's vendor
//! and product names, bond and WireGuard settings.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use api::common::{NetIp, NetIpPrefix};
use api::talos::resource::definitions::network as pb;
use futures_util::TryStreamExt as _;
use networkd::state::{AF_INET6, IFF_UP, RT_TABLE_MAIN, hardware_addr_string, route_ip};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoBridge, InfoData, InfoMacVlan, InfoVlan, InfoVrf, LinkAttribute, LinkInfo, LinkMessage,
    Prop,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteMetric};
use serde::Serialize;

use networkd::hardware::device_info;

use crate::resources::{Item, ResourceError, is_zero, item};

/// What one read dumped from the kernel.
#[derive(Debug, Default)]
pub(crate) struct Dump {
    /// Every link.
    pub(crate) links: Vec<LinkMessage>,
    /// Every address (when asked for).
    pub(crate) addresses: Vec<AddressMessage>,
    /// Every route of both families in every table (when asked for).
    pub(crate) routes: Vec<RouteMessage>,
}

/// What to dump besides the links (which name everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Links only.
    Links,
    /// Links and addresses.
    Addresses,
    /// Links and routes.
    Routes,
    /// Links, addresses and routes.
    AddressesAndRoutes,
}

fn failed(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> ResourceError {
    move |e| ResourceError::Read {
        what,
        message: e.to_string(),
    }
}

/// How long one read's dumps may take: a stuck read would hold its type's
/// lock, and every later read of the type would wait behind it.
const DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Dumps the kernel's links, and the addresses or routes, on a netlink
/// socket of this read's own. Its connection is polled here rather than
/// spawned, so the socket closes when the read ends and nothing outlives
/// it.
///
/// # Errors
/// The socket cannot be opened, a dump fails or takes too long.
pub(crate) async fn dump(want: Want) -> Result<Dump, ResourceError> {
    tokio::time::timeout(DUMP_TIMEOUT, dump_now(want))
        .await
        .map_err(|_| ResourceError::Read {
            what: "the network state",
            message: format!("netlink did not answer within {DUMP_TIMEOUT:?}"),
        })?
}

async fn dump_now(want: Want) -> Result<Dump, ResourceError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| ResourceError::Read {
        what: "the network state (netlink socket)",
        message: e.to_string(),
    })?;
    let read = async {
        let mut dump = Dump {
            links: handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(failed("the links"))?,
            ..Dump::default()
        };
        if matches!(want, Want::Addresses | Want::AddressesAndRoutes) {
            dump.addresses = handle
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(failed("the addresses"))?;
        }
        if matches!(want, Want::Routes | Want::AddressesAndRoutes) {
            for request in networkd::netlink::route_dump_requests() {
                let routes: Vec<RouteMessage> = handle
                    .route()
                    .get(request)
                    .execute()
                    .try_collect()
                    .await
                    .map_err(failed("the routes"))?;
                dump.routes.extend(routes);
            }
        }
        Ok(dump)
    };
    tokio::select! {
        result = read => result,
        () = connection => Err(ResourceError::Read {
            what: "the network state",
            message: "the netlink connection ended".to_owned(),
        }),
    }
}

/// Link index → name.
fn names(links: &[LinkMessage]) -> HashMap<u32, String> {
    links
        .iter()
        .filter_map(|l| Some((l.header.index, link_name(l)?)))
        .collect()
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

// ---------------------------------------------------------------------------
// Addresses

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AddressYaml<'a> {
    address: String,
    link_index: u32,
    link_name: &'a str,
    family: String,
    scope: String,
    flags: String,
    priority: u32,
}

/// `AddressStatuses`, one per address, id `<link>/<address>/<prefix>`.
///
/// # Errors
/// A spec cannot be written.
pub(crate) fn addresses(dump: &Dump) -> Result<Vec<Item>, ResourceError> {
    let names = names(&dump.links);
    let mut out = Vec::new();
    for message in &dump.addresses {
        let mut spec = pb::AddressStatusSpec {
            link_index: message.header.index,
            family: i32::from(u8::from(message.header.family)),
            scope: i32::from(u8::from(message.header.scope)),
            ..pb::AddressStatusSpec::default()
        };
        let mut address = None;
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Local(ip) => spec.local = Some(net_ip(*ip)),
                AddressAttribute::Broadcast(ip) => spec.broadcast = Some(net_ip((*ip).into())),
                AddressAttribute::Anycast(ip) => spec.anycast = Some(net_ip((*ip).into())),
                AddressAttribute::Multicast(ip) => spec.multicast = Some(net_ip((*ip).into())),
                AddressAttribute::Flags(flags) => spec.flags = flags.bits(),
                AddressAttribute::RoutePriority(priority) => spec.priority = *priority,
                _ => {}
            }
        }
        // IFA_ADDRESS, as upstream (on a point-to-point link, the peer).
        let Some(address) = address else { continue };
        let prefix = message.header.prefix_len;
        spec.address = Some(net_prefix(address, prefix));
        let link = names
            .get(&message.header.index)
            .cloned()
            .unwrap_or_default();
        spec.link_name.clone_from(&link);
        let cidr = format!("{address}/{prefix}");
        out.push(item(
            format!("{link}/{cidr}"),
            // local, broadcast, anycast and multicast are in the protobuf
            // only: upstream's YAML always leaves them out.
            &AddressYaml {
                address: cidr,
                link_index: spec.link_index,
                link_name: &link,
                family: family(u8::from(message.header.family)),
                scope: scope(u8::from(message.header.scope)),
                flags: flag_names(spec.flags, ADDRESS_FLAGS),
                priority: spec.priority,
            },
            &spec,
        )?);
    }
    Ok(last_of_each_id(out))
}

/// What `NodeAddresses` keeps between reads, as upstream's controller
/// keeps its resources: the default address (kept while it is still
/// current) and every address seen since machined started (accumulative,
/// by address).
#[derive(Debug, Default)]
pub(crate) struct NodeAddressMemory {
    default: Option<(IpAddr, u8)>,
    accumulative: Vec<(IpAddr, u8)>,
}

/// Whether the addresses of `link` count as current, as upstream decides:
/// its operational state is up or unknown, and a physical link (Ethernet
/// with no kind) also has its carrier.
fn counts_as_up(spec: &pb::LinkStatusSpec) -> bool {
    use api::talos::resource::definitions::enums::{
        NethelpersLinkType, NethelpersOperationalState,
    };
    let oper_up = spec.operational_state == NethelpersOperationalState::OperStateUnknown as i32
        || spec.operational_state == NethelpersOperationalState::OperStateUp as i32;
    let physical = spec.r#type == NethelpersLinkType::LinkEther as i32 && spec.kind.is_empty();
    oper_up && (!physical || spec.link_state)
}

/// The indexes of the links whose addresses count as current.
fn up_links(dump: &Dump) -> std::collections::HashSet<u32> {
    dump.links
        .iter()
        .filter_map(link_spec)
        .filter(|(_, spec, _)| counts_as_up(spec))
        .map(|(_, spec, _)| spec.index)
        .collect()
}

/// Every address NodeAddresses may list, with its link's name and index:
/// of global scope, neither loopback, multicast nor link-local.
fn node_ips(dump: &Dump) -> Vec<(String, u32, IpAddr, u8)> {
    const RT_SCOPE_LINK: u8 = 253;
    let names = names(&dump.links);
    let mut kept = Vec::new();
    for message in &dump.addresses {
        if u8::from(message.header.scope) >= RT_SCOPE_LINK {
            continue;
        }
        let Some(ip) = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        }) else {
            continue;
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if ip.is_loopback() || ip.is_multicast() || link_local {
            continue;
        }
        let link = names
            .get(&message.header.index)
            .cloned()
            .unwrap_or_default();
        kept.push((link, message.header.index, ip, message.header.prefix_len));
    }
    kept
}

/// NetworkStatus's `addressReady`: a link that is up holds an address
/// NodeAddresses counts (from a dump with addresses).
pub(crate) fn address_ready(dump: &Dump) -> bool {
    let up = up_links(dump);
    node_ips(dump)
        .iter()
        .any(|(_, index, _, _)| up.contains(index))
}

/// NetworkStatus's `connectivityReady`: a default route (of either
/// family, in any table, as upstream counts it) from a dump with routes.
pub(crate) fn connectivity_ready(dump: &Dump) -> bool {
    dump.routes.iter().any(|message| {
        message.header.destination_prefix_length == 0
            && message.header.kind == rtnetlink::packet_route::route::RouteType::Unicast
    })
}

/// `NodeAddresses`: `current` (the addresses of links that are up),
/// `routed` (the same here: upstream leaves out only its `external`
/// pseudo-link and SideroLink, which these nodes have neither of),
/// `accumulative` (every address seen, never dropped) and `default` (one
/// address, kept while it stays current). Addresses of link or host scope,
/// loopback, multicast and link-local ones are left out, as upstream; the
/// order is upstream's first algorithm (`v1`): by address, then prefix
/// length.
pub(crate) fn node_addresses(
    dump: &Dump,
    memory: &mut NodeAddressMemory,
) -> Result<Vec<Item>, ResourceError> {
    let up = up_links(dump);
    let mut kept = node_ips(dump);
    // Upstream walks them by link name, then address and prefix length.
    kept.sort_by(|a, b| (&a.0, a.2, a.3).cmp(&(&b.0, b.2, b.3)));
    let mut current: Vec<(IpAddr, u8)> = kept
        .iter()
        .filter(|(_, index, _, _)| up.contains(index))
        .map(|&(_, _, ip, bits)| (ip, bits))
        .collect();
    current.sort_unstable();
    current.dedup();
    for &(_, _, ip, bits) in &kept {
        if let Err(at) = memory
            .accumulative
            .binary_search_by(|(seen, _)| seen.cmp(&ip))
        {
            memory.accumulative.insert(at, (ip, bits));
        }
    }
    let candidate = kept.first().map(|&(_, _, ip, bits)| (ip, bits));
    if !memory.default.is_some_and(|d| current.contains(&d)) {
        memory.default = candidate;
    }
    let mut sets = vec![
        ("accumulative", memory.accumulative.clone()),
        ("current", current.clone()),
    ];
    if let Some(default) = memory.default {
        sets.push(("default", vec![default]));
    }
    sets.push(("routed", current));
    sets.into_iter()
        .map(|(id, addresses)| {
            let spec = pb::NodeAddressSpec {
                addresses: addresses
                    .iter()
                    .map(|&(ip, bits)| net_prefix(ip, bits))
                    .collect(),
                sort_algorithm: 0,
            };
            item(
                id,
                &NodeAddressYaml {
                    addresses: addresses
                        .iter()
                        .map(|(ip, bits)| format!("{ip}/{bits}"))
                        .collect(),
                    sort_algorithm: "v1",
                },
                &spec,
            )
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeAddressYaml {
    addresses: Vec<String>,
    sort_algorithm: &'static str,
}

/// One item per id, the last one dumped, as upstream's controllers
/// overwrite a resource: two links in one subnet each have a connected
/// route, and a point-to-point link's addresses may share their peer.
fn last_of_each_id(items: Vec<Item>) -> Vec<Item> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        match index.get(&item.id) {
            Some(&i) => out[i] = item,
            None => {
                index.insert(item.id.clone(), out.len());
                out.push(item);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Links

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkYaml<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    alias: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    alt_names: &'a [String],
    index: u32,
    #[serde(rename = "type")]
    type_: String,
    link_index: u32,
    flags: String,
    hardware_addr: String,
    permanent_addr: String,
    broadcast_addr: String,
    mtu: u32,
    queue_disc: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    master_index: u32,
    operational_state: String,
    kind: &'a str,
    slave_kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    bus_path: &'a str,
    #[serde(rename = "pciID", skip_serializing_if = "str::is_empty")]
    pci_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    driver: &'a str,
    #[serde(rename = "productID", skip_serializing_if = "str::is_empty")]
    product_id: &'a str,
    #[serde(rename = "vendorID", skip_serializing_if = "str::is_empty")]
    vendor_id: &'a str,
    link_state: bool,
    #[serde(rename = "speedMbit", skip_serializing_if = "is_zero")]
    speed_mbit: i64,
    port: &'static str,
    duplex: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan: Option<VlanYaml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    macvlan: Option<MacvlanYaml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge_master: Option<BridgeYaml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vrf_master: Option<VrfYaml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    veth: Option<VethYaml>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VlanYaml {
    #[serde(rename = "vlanID")]
    vlan_id: u32,
    vlan_protocol: String,
}

#[derive(Serialize)]
struct MacvlanYaml {
    mode: String,
}

#[derive(Serialize)]
struct BridgeYaml {
    #[serde(skip_serializing_if = "Option::is_none")]
    stp: Option<StpYaml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vlan: Option<BridgeVlanYaml>,
}

#[derive(Serialize)]
struct StpYaml {
    enabled: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BridgeVlanYaml {
    filtering_enabled: bool,
}

#[derive(Serialize)]
struct VrfYaml {
    table: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VethYaml {
    peer_name: String,
}

/// What netlink tells of one link: its name, its `LinkStatus` spec
/// without the sysfs details, and whether IFLA_LINK indexes another
/// namespace's links.
fn link_spec(message: &LinkMessage) -> Option<(String, pb::LinkStatusSpec, bool)> {
    let name = link_name(message)?;
    let mut spec = pb::LinkStatusSpec {
        index: message.header.index,
        r#type: i32::from(u16::from(message.header.link_layer_type)),
        flags: message.header.flags.bits(),
        // Upstream's default when ethtool gives no port.
        port: 255,
        ..pb::LinkStatusSpec::default()
    };
    let mut carrier = false;
    let mut other_namespace = false;
    let mut info_data = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfAlias(alias) => spec.alias.clone_from(alias),
            LinkAttribute::PropList(props) => {
                spec.alt_names = props
                    .iter()
                    .filter_map(|p| match p {
                        Prop::AltIfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .collect();
            }
            LinkAttribute::Address(a) => spec.hardware_addr.clone_from(a),
            LinkAttribute::PermAddress(a) => spec.permanent_addr.clone_from(a),
            LinkAttribute::Broadcast(a) => spec.broadcast_addr.clone_from(a),
            LinkAttribute::Link(index) => spec.link_index = *index,
            LinkAttribute::Qdisc(q) => spec.queue_disc.clone_from(q),
            LinkAttribute::Mtu(mtu) => spec.mtu = *mtu,
            LinkAttribute::Controller(index) => spec.master_index = *index,
            LinkAttribute::OperState(state) => {
                spec.operational_state = i32::from(u8::from(*state));
            }
            LinkAttribute::Carrier(c) => carrier = *c != 0,
            // IFLA_LINK then indexes another namespace's links.
            LinkAttribute::LinkNetNsId(_) => other_namespace = true,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => spec.kind = kind.to_string(),
                        LinkInfo::PortKind(kind) => spec.slave_kind = kind.to_string(),
                        LinkInfo::Data(data) => info_data = Some(data),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // Upstream asks ethtool's get_link, which is the carrier of a
    // running link for most drivers (a link whose driver has no
    // get_link, like WireGuard, is false there and may be true here).
    spec.link_state = spec.flags & IFF_UP != 0 && carrier;

    match info_data {
        Some(InfoData::Vlan(vlan)) => {
            let mut v = pb::VlanSpec::default();
            for attribute in vlan {
                match attribute {
                    InfoVlan::Id(id) => v.vid = u32::from(*id),
                    InfoVlan::Protocol(p) => v.protocol = i32::from(u16::from(*p)),
                    _ => {}
                }
            }
            spec.vlan = Some(v);
        }
        Some(InfoData::MacVlan(macvlan)) => {
            for attribute in macvlan {
                if let InfoMacVlan::Mode(mode) = attribute {
                    spec.mac_vlan = Some(pb::MacVlanSpec {
                        mode: i32::try_from(u32::from(*mode)).unwrap_or_default(),
                    });
                }
            }
        }
        Some(InfoData::Bridge(bridge)) => {
            // Upstream sends and prints only what is on: a bridge
            // without STP or VLAN filtering has no bridgeMaster.
            let mut b = pb::BridgeMasterSpec::default();
            for attribute in bridge {
                match attribute {
                    InfoBridge::StpState(state) if u32::from(*state) == 1 => {
                        b.stp = Some(pb::StpSpec { enabled: true });
                    }
                    InfoBridge::VlanFiltering(true) => {
                        b.vlan = Some(pb::BridgeVlanSpec {
                            filtering_enabled: true,
                        });
                    }
                    _ => {}
                }
            }
            if b.stp.is_some() || b.vlan.is_some() {
                spec.bridge_master = Some(b);
            }
        }
        Some(InfoData::Vrf(vrf)) => {
            for attribute in vrf {
                if let InfoVrf::TableId(table) = attribute {
                    // Go's uint32 on the wire: the bits, as an int32.
                    spec.vrf_master = Some(pb::VrfMasterSpec {
                        table: table.cast_signed(),
                    });
                }
            }
        }
        _ => {}
    }
    Some((name, spec, other_namespace))
}

/// `LinkStatuses`, one per link, id its name; device details from
/// `sysfs`.
///
/// # Errors
/// A spec cannot be written.
pub(crate) fn links(dump: &Dump, sysfs: &Path) -> Result<Vec<Item>, ResourceError> {
    let mut out: Vec<(String, pb::LinkStatusSpec, bool)> =
        dump.links.iter().filter_map(link_spec).collect();
    for (name, spec, _) in &mut out {
        let device = device_info(sysfs, name);
        spec.driver = device.driver;
        spec.bus_path = device.bus_path;
        spec.pciid = device.pci_id;
        spec.vendor_id = device.vendor_id;
        spec.product_id = device.product_id;
        spec.speed_megabits = device.speed;
        spec.duplex = i32::from(device.duplex);
    }

    // A veth's peer: the veth its IFLA_LINK names, when that one names it
    // back (within this namespace).
    let peers: Vec<Option<String>> = out
        .iter()
        .map(|(_, spec, elsewhere)| {
            (spec.kind == "veth" && spec.link_index != 0 && !elsewhere)
                .then(|| {
                    out.iter().find(|(_, other, other_elsewhere)| {
                        other.kind == "veth"
                            && !other_elsewhere
                            && other.index == spec.link_index
                            && other.link_index == spec.index
                    })
                })
                .flatten()
                .map(|(name, _, _)| name.clone())
        })
        .collect();
    for ((_, spec, _), peer) in out.iter_mut().zip(peers) {
        if let Some(peer_name) = peer {
            spec.veth = Some(pb::VethSpec { peer_name });
        }
    }

    out.iter()
        .map(|(name, spec, _)| link_item(name, spec))
        .collect()
}

fn link_item(name: &str, spec: &pb::LinkStatusSpec) -> Result<Item, ResourceError> {
    let yaml = LinkYaml {
        alias: &spec.alias,
        alt_names: &spec.alt_names,
        index: spec.index,
        type_: link_type(u16::try_from(spec.r#type).unwrap_or(u16::MAX)),
        link_index: spec.link_index,
        flags: flag_names(spec.flags, LINK_FLAGS),
        hardware_addr: hardware_addr_string(&spec.hardware_addr),
        permanent_addr: hardware_addr_string(&spec.permanent_addr),
        broadcast_addr: hardware_addr_string(&spec.broadcast_addr),
        mtu: spec.mtu,
        queue_disc: &spec.queue_disc,
        master_index: spec.master_index,
        operational_state: oper_state(spec.operational_state),
        kind: &spec.kind,
        slave_kind: &spec.slave_kind,
        bus_path: &spec.bus_path,
        pci_id: &spec.pciid,
        driver: &spec.driver,
        product_id: &spec.product_id,
        vendor_id: &spec.vendor_id,
        link_state: spec.link_state,
        speed_mbit: spec.speed_megabits,
        port: port(spec.port),
        duplex: duplex(spec.duplex),
        vlan: spec.vlan.as_ref().map(|v| VlanYaml {
            vlan_id: v.vid,
            vlan_protocol: match v.protocol {
                0x8100 => "802.1q".to_owned(),
                0x88a8 => "802.1ad".to_owned(),
                n => format!("VLANProtocol({n})"),
            },
        }),
        macvlan: spec.mac_vlan.as_ref().map(|m| MacvlanYaml {
            mode: match m.mode {
                1 => "private".to_owned(),
                2 => "vepa".to_owned(),
                4 => "bridge".to_owned(),
                8 => "passthru".to_owned(),
                16 => "source".to_owned(),
                n => format!("MacvlanMode({n})"),
            },
        }),
        bridge_master: spec.bridge_master.as_ref().map(|b| BridgeYaml {
            stp: b.stp.map(|s| StpYaml { enabled: s.enabled }),
            vlan: b.vlan.map(|v| BridgeVlanYaml {
                filtering_enabled: v.filtering_enabled,
            }),
        }),
        vrf_master: spec.vrf_master.as_ref().map(|v| VrfYaml {
            table: routing_table(v.table.cast_unsigned()),
        }),
        veth: spec.veth.as_ref().map(|v| VethYaml {
            peer_name: v.peer_name.clone(),
        }),
    };
    item(name, &yaml, spec)
}

// ---------------------------------------------------------------------------
// Routes

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteYaml<'a> {
    family: String,
    dst: String,
    src: String,
    gateway: String,
    #[serde(skip_serializing_if = "is_zero")]
    out_link_index: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    out_link_name: &'a str,
    table: String,
    priority: u32,
    scope: String,
    #[serde(rename = "type")]
    type_: String,
    flags: String,
    protocol: String,
    #[serde(skip_serializing_if = "is_zero")]
    mtu: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    next_hops: Vec<NextHopYaml<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NextHopYaml<'a> {
    gateway: String,
    out_link_name: &'a str,
    weight: u32,
}

/// `RouteStatuses`, one per route of every table, with upstream's ids:
/// `[<table>/][<link>/ for inet6]<family>/<gateway>/<destination>/<metric>`.
///
/// # Errors
/// A spec cannot be written.
pub(crate) fn routes(dump: &Dump) -> Result<Vec<Item>, ResourceError> {
    let names = names(&dump.links);
    let mut out = Vec::new();
    for message in &dump.routes {
        let header = &message.header;
        let family_number = u8::from(header.address_family);
        // The header's table byte, as upstream (tables above 255 show as
        // 252, RT_TABLE_COMPAT).
        let table = u32::from(header.table);
        let mut spec = pb::RouteStatusSpec {
            family: i32::from(family_number),
            table: i32::try_from(table).unwrap_or_default(),
            scope: i32::from(u8::from(header.scope)),
            r#type: i32::from(u8::from(header.kind)),
            flags: header.flags.bits(),
            protocol: i32::from(u8::from(header.protocol)),
            ..pb::RouteStatusSpec::default()
        };
        let (mut destination, mut gateway, mut source) = (None, None, None);
        // Each hop with its gateway as an address, for the YAML.
        let mut hops: Vec<(pb::RouteNextHop, Option<IpAddr>)> = Vec::new();
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(a) => destination = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => source = route_ip(a),
                RouteAttribute::Oif(index) => spec.out_link_index = *index,
                RouteAttribute::Priority(metric) => spec.priority = *metric,
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let RouteMetric::Mtu(mtu) = metric {
                            spec.mtu = *mtu;
                        }
                    }
                }
                RouteAttribute::MultiPath(next) => {
                    for hop in next {
                        let gateway = hop.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => route_ip(g),
                            _ => None,
                        });
                        hops.push((
                            pb::RouteNextHop {
                                gateway: gateway.map(net_ip),
                                out_link_name: names
                                    .get(&hop.interface_index)
                                    .cloned()
                                    .unwrap_or_default(),
                                weight: u32::from(hop.hops) + 1,
                            },
                            gateway,
                        ));
                    }
                }
                _ => {}
            }
        }
        spec.out_link_name = names.get(&spec.out_link_index).cloned().unwrap_or_default();
        // No RTA_DST is the zero prefix: an empty destination, as upstream
        // prints the default route.
        let dst = destination
            .map(|d| format!("{d}/{}", header.destination_prefix_length))
            .unwrap_or_default();
        spec.destination = destination.map(|d| net_prefix(d, header.destination_prefix_length));
        spec.gateway = gateway.map(net_ip);
        spec.source = source.map(net_ip);
        spec.next_hops = hops.iter().map(|(hop, _)| hop.clone()).collect();
        let gw = gateway.map(|g| g.to_string()).unwrap_or_default();

        let mut id = String::new();
        if table != RT_TABLE_MAIN {
            id.push_str(&format!("{}/", routing_table(table)));
        }
        if family_number == AF_INET6 {
            id.push_str(&format!("{}/", spec.out_link_name));
        }
        id.push_str(&format!(
            "{}/{gw}/{dst}/{}",
            family(family_number),
            spec.priority
        ));

        let yaml = RouteYaml {
            family: family(family_number),
            dst,
            src: source.map(|s| s.to_string()).unwrap_or_default(),
            gateway: gw,
            out_link_index: spec.out_link_index,
            out_link_name: &spec.out_link_name,
            table: routing_table(table),
            priority: spec.priority,
            scope: scope(u8::from(header.scope)),
            type_: route_type(u8::from(header.kind)),
            flags: route_flags(spec.flags),
            protocol: route_protocol(u8::from(header.protocol)),
            mtu: spec.mtu,
            next_hops: hops
                .iter()
                .map(|(hop, gateway)| NextHopYaml {
                    gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
                    out_link_name: &hop.out_link_name,
                    weight: hop.weight,
                })
                .collect(),
        };
        out.push(item(id, &yaml, &spec)?);
    }
    Ok(last_of_each_id(out))
}

// ---------------------------------------------------------------------------
// Wire and text forms, as upstream's nethelpers print them

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An address as upstream sends it: `common.NetIP` of its bytes.
pub(crate) fn net_ip(ip: IpAddr) -> NetIp {
    NetIp { ip: ip_bytes(ip) }
}

fn net_prefix(ip: IpAddr, length: u8) -> NetIpPrefix {
    NetIpPrefix {
        ip: ip_bytes(ip),
        prefix_length: i32::from(length),
    }
}

/// `inet4`, `inet6`, else `Family(N)`.
fn family(n: u8) -> String {
    match n {
        2 => "inet4".to_owned(),
        10 => "inet6".to_owned(),
        n => format!("Family({n})"),
    }
}

/// `global`, `site`, `link`, `host`, `nowhere`, else `Scope(N)`.
fn scope(n: u8) -> String {
    match n {
        0 => "global".to_owned(),
        200 => "site".to_owned(),
        253 => "link".to_owned(),
        254 => "host".to_owned(),
        255 => "nowhere".to_owned(),
        n => format!("Scope({n})"),
    }
}

/// `IFA_F_*` from bit 0 up.
const ADDRESS_FLAGS: &[&str] = &[
    "temporary",
    "nodad",
    "optimistic",
    "dadfailed",
    "homeaddress",
    "deprecated",
    "tentative",
    "permanent",
    "mngmtmpaddr",
    "noprefixroute",
    "mcautojoin",
    "stableprivacy",
];

/// `IFF_*` from bit 0 up.
const LINK_FLAGS: &[&str] = &[
    "UP",
    "BROADCAST",
    "DEBUG",
    "LOOPBACK",
    "POINTTOPOINT",
    "NOTRAILERS",
    "RUNNING",
    "NOARP",
    "PROMISC",
    "ALLMULTI",
    "MASTER",
    "SLAVE",
    "MULTICAST",
    "PORTSEL",
    "AUTOMEDIA",
    "DYNAMIC",
    "LOWER_UP",
    "DORMANT",
    "ECHO",
];

/// The names of the bits set in `bits`, lowest first, joined by commas;
/// bits without a name are left out.
fn flag_names(bits: u32, names: &[&str]) -> String {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

/// `RTM_F_*` (bits 8 to 15).
fn route_flags(bits: u32) -> String {
    const NAMES: &[&str] = &[
        "notify",
        "cloned",
        "equalize",
        "prefix",
        "lookup_table",
        "fib_match",
        "offload",
        "trap",
    ];
    flag_names(bits >> 8, NAMES)
}

fn oper_state(n: i32) -> String {
    match n {
        0 => "unknown".to_owned(),
        1 => "notPresent".to_owned(),
        2 => "down".to_owned(),
        3 => "lowerLayerDown".to_owned(),
        4 => "testing".to_owned(),
        5 => "dormant".to_owned(),
        6 => "up".to_owned(),
        n => format!("OperationalState({n})"),
    }
}

fn port(n: i32) -> &'static str {
    match n {
        0 => "TwistedPair",
        1 => "AUI",
        2 => "MII",
        3 => "Fibre",
        4 => "BNC",
        5 => "DirectAttach",
        239 => "None",
        _ => "Other",
    }
}

fn duplex(n: i32) -> &'static str {
    match n {
        0 => "Half",
        1 => "Full",
        _ => "Unknown",
    }
}

/// `RTN_*`, else `RouteType(N)`.
fn route_type(n: u8) -> String {
    const NAMES: &[&str] = &[
        "unspec",
        "unicast",
        "local",
        "broadcast",
        "anycast",
        "multicast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
        "xresolve",
    ];
    NAMES
        .get(usize::from(n))
        .map_or_else(|| format!("RouteType({n})"), |s| (*s).to_owned())
}

/// `RTPROT_*`, else `RouteProtocol(N)`.
fn route_protocol(n: u8) -> String {
    let name = match n {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        9 => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        17 => "mrtd",
        18 => "keepalived",
        42 => "babel",
        99 => "openr",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        192 => "eigrp",
        n => return format!("RouteProtocol({n})"),
    };
    name.to_owned()
}

/// `unspec`, `default`, `main`, `local`, else `RoutingTable(N)`.
fn routing_table(n: u32) -> String {
    match n {
        0 => "unspec".to_owned(),
        253 => "default".to_owned(),
        254 => "main".to_owned(),
        255 => "local".to_owned(),
        n => format!("RoutingTable({n})"),
    }
}

/// `ARPHRD_*` as upstream names them, else `LinkType(N)`. (The netlink
/// crate reads a type it does not know as `void`, so real links rarely
/// reach the fallback.)
fn link_type(n: u16) -> String {
    let name = match n {
        0 => "netrom",
        1 => "ether",
        2 => "eether",
        3 => "ax25",
        4 => "pronet",
        5 => "chaos",
        6 => "ieee802",
        7 => "arcnet",
        8 => "atalk",
        15 => "dlci",
        19 => "atm",
        23 => "metricom",
        24 => "ieee1394",
        27 => "eui64",
        32 => "infiniband",
        256 => "slip",
        257 => "cslip",
        258 => "slip6",
        259 => "cslip6",
        260 => "rsrvd",
        264 => "adapt",
        270 => "rose",
        271 => "x25",
        272 => "hwx25",
        280 => "can",
        512 => "ppp",
        513 => "cisco",
        516 => "lapb",
        517 => "ddcmp",
        518 => "rawhdlc",
        768 => "ipip",
        769 => "tunnel6",
        770 => "frad",
        771 => "skip",
        772 => "loopback",
        773 => "localtlk",
        774 => "fddi",
        775 => "bif",
        776 => "sit",
        777 => "ip/ddp",
        778 => "gre",
        779 => "pimreg",
        780 => "hippi",
        781 => "ash",
        782 => "econet",
        783 => "irda",
        784 => "fcpp",
        785 => "fcal",
        786 => "fcpl",
        787..=799 => return format!("fcfb_{}", n - 787),
        800 => "tr",
        801 => "ieee802.11",
        802 => "ieee802.11_prism",
        803 => "ieee802.11_radiotap",
        804 => "ieee802.15.4",
        805 => "ieee802.15.4_monitor",
        820 => "phonet",
        821 => "phonet_pipe",
        822 => "caif",
        823 => "ip6gre",
        824 => "netlink",
        825 => "6lowpan",
        65534 => "nohdr",
        65535 => "void",
        n => return format!("LinkType({n})"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use prost::Message as _;
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::address::AddressFlags;
    use rtnetlink::packet_route::link::{InfoKind, InfoPortKind};
    use rtnetlink::packet_route::route::{RouteAddress, RouteProtocol, RouteType};

    use super::*;

    fn yaml_of(item: &Item) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&item.yaml).expect("the YAML spec parses")
    }

    fn find<'a>(items: &'a [Item], id: &str) -> &'a Item {
        items.iter().find(|i| i.id == id).unwrap_or_else(|| {
            let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
            panic!("no {id} among {ids:?}")
        })
    }

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        link
    }

    #[test]
    fn an_address_is_encoded_with_upstreams_field_numbers() {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = 24;
        message.header.index = 2;
        message
            .attributes
            .push(AddressAttribute::Address("10.5.0.2".parse().unwrap()));
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                0x80,
            )));
        let dump = Dump {
            links: vec![link(2, "eth0")],
            addresses: vec![message],
            routes: Vec::new(),
        };
        let items = addresses(&dump).unwrap();
        assert_eq!(items[0].id, "eth0/10.5.0.2/24");
        // address{ip, prefix_length 24}, link_index 2, link_name, family 2,
        // flags 0x80; zeros are not sent.
        assert_eq!(
            items[0].proto,
            [
                0x0a, 0x08, 0x0a, 0x04, 10, 5, 0, 2, 0x10, 24, 0x30, 2, 0x3a, 4, b'e', b't', b'h',
                b'0', 0x40, 2, 0x50, 0x80, 0x01
            ]
        );
        assert_eq!(
            items[0].yaml,
            "address: 10.5.0.2/24\nlinkIndex: 2\nlinkName: eth0\nfamily: inet4\nscope: global\nflags: permanent\npriority: 0\n"
        );
    }

    #[test]
    fn links_count_as_up_by_upstreams_rule() {
        let spec = |state: i32, link_type: i32, kind: &str, link_state: bool| pb::LinkStatusSpec {
            operational_state: state,
            r#type: link_type,
            kind: kind.to_owned(),
            link_state,
            ..pb::LinkStatusSpec::default()
        };
        let (unknown, down, up) = (0, 2, 6);
        let (ether, loopback) = (1, 772);
        // Physical Ethernet needs its carrier too.
        assert!(counts_as_up(&spec(up, ether, "", true)));
        assert!(!counts_as_up(&spec(up, ether, "", false)));
        assert!(counts_as_up(&spec(unknown, ether, "", true)));
        assert!(!counts_as_up(&spec(down, ether, "", true)));
        // A link with a kind, or not Ethernet, only its operational state.
        assert!(counts_as_up(&spec(up, ether, "veth", false)));
        assert!(counts_as_up(&spec(unknown, loopback, "", false)));
        assert!(!counts_as_up(&spec(down, ether, "bridge", true)));
    }

    #[test]
    fn numbers_print_as_upstreams_strings() {
        assert_eq!(flag_names(0x280, ADDRESS_FLAGS), "permanent,noprefixroute");
        assert_eq!(flag_names(0, ADDRESS_FLAGS), "");
        assert_eq!(
            flag_names(0x11043, LINK_FLAGS),
            "UP,BROADCAST,RUNNING,MULTICAST,LOWER_UP"
        );
        // Bits without a name are left out.
        assert_eq!(flag_names(0x8000_0001, LINK_FLAGS), "UP");
        assert_eq!(route_flags(0x200 | 0x4000), "cloned,offload");
        assert_eq!(family(2), "inet4");
        assert_eq!(family(0), "Family(0)");
        assert_eq!(scope(253), "link");
        assert_eq!(scope(17), "Scope(17)");
        assert_eq!(routing_table(252), "RoutingTable(252)");
        assert_eq!(route_protocol(16), "dhcp");
        assert_eq!(route_protocol(5), "RouteProtocol(5)");
        assert_eq!(route_type(2), "local");
        assert_eq!(link_type(772), "loopback");
        assert_eq!(link_type(790), "fcfb_3");
        assert_eq!(link_type(9999), "LinkType(9999)");
        assert_eq!(oper_state(3), "lowerLayerDown");
        assert_eq!(
            hardware_addr_string(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            "52:54:00:12:34:56"
        );
        assert_eq!(hardware_addr_string(&[]), "");
    }

    #[test]
    fn route_ids_are_upstreams() {
        let route = |family: AddressFamily,
                     table: u8,
                     dst: Option<(&str, u8)>,
                     gateway: Option<&str>,
                     oif: u32,
                     metric: u32| {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            message.header.table = table;
            message.header.protocol = RouteProtocol::Static;
            message.header.kind = RouteType::Unicast;
            if let Some((dst, len)) = dst {
                message.header.destination_prefix_length = len;
                let ip: IpAddr = dst.parse().unwrap();
                message
                    .attributes
                    .push(RouteAttribute::Destination(RouteAddress::from(ip)));
            }
            if let Some(gateway) = gateway {
                let ip: IpAddr = gateway.parse().unwrap();
                message
                    .attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(ip)));
            }
            message.attributes.push(RouteAttribute::Oif(oif));
            message.attributes.push(RouteAttribute::Priority(metric));
            message
        };
        let dump = Dump {
            links: vec![link(2, "eth0"), link(3, "eth1")],
            addresses: Vec::new(),
            routes: vec![
                route(AddressFamily::Inet, 254, None, Some("10.5.0.1"), 2, 1024),
                route(AddressFamily::Inet, 255, Some(("10.5.0.2", 32)), None, 2, 0),
                route(
                    AddressFamily::Inet6,
                    254,
                    Some(("fd00::", 64)),
                    None,
                    2,
                    256,
                ),
                route(AddressFamily::Inet, 252, None, None, 0, 0),
                // Two links in one subnet: one id, the last route dumped.
                route(AddressFamily::Inet, 254, Some(("10.9.0.0", 24)), None, 2, 0),
                route(AddressFamily::Inet, 254, Some(("10.9.0.0", 24)), None, 3, 0),
            ],
        };
        let items = routes(&dump).unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "inet4/10.5.0.1//1024",
                "local/inet4//10.5.0.2/32/0",
                "eth0/inet6//fd00::/64/256",
                "RoutingTable(252)/inet4///0",
                "inet4//10.9.0.0/24/0",
            ]
        );
        assert_eq!(yaml_of(&items[4])["outLinkName"], "eth1");
        let default = yaml_of(&items[0]);
        assert_eq!(default["dst"], "");
        assert_eq!(default["gateway"], "10.5.0.1");
        assert_eq!(default["outLinkName"], "eth0");
        assert_eq!(default["table"], "main");
        assert_eq!(default["protocol"], "static");
        assert_eq!(default["priority"], 1024);
        let spec = pb::RouteStatusSpec::decode(items[0].proto.as_slice()).unwrap();
        assert_eq!(spec.destination, None);
        assert_eq!(spec.gateway.map(|g| g.ip), Some(vec![10, 5, 0, 1]));
        assert_eq!((spec.family, spec.table, spec.priority), (2, 254, 1024));
        // The table-less route has no link: no outLinkName key at all.
        assert!(yaml_of(&items[3]).get("outLinkName").is_none());
    }

    #[test]
    fn vlans_bridges_and_their_ports() {
        let mut eth0 = link(2, "eth0");
        eth0.header.link_layer_type = rtnetlink::packet_route::link::LinkLayerType::Ether;
        let mut vlan = link(3, "eth0.100");
        vlan.attributes.push(LinkAttribute::Link(2));
        vlan.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![
                InfoVlan::Id(100),
                InfoVlan::Protocol(rtnetlink::packet_route::link::VlanProtocol::Ieee8021Ad),
            ])),
        ]));
        let mut bridge = link(4, "br0");
        bridge.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::StpState(rtnetlink::packet_route::link::BridgeStpState::KernelStp),
                InfoBridge::VlanFiltering(false),
            ])),
        ]));
        let mut port = link(5, "eth1");
        port.attributes.push(LinkAttribute::Controller(4));
        port.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::PortKind(
                InfoPortKind::Bridge,
            )]));
        let dump = Dump {
            links: vec![eth0, vlan, bridge, port],
            ..Dump::default()
        };
        let nowhere = tempfile::tempdir().unwrap();
        let items = links(&dump, nowhere.path()).unwrap();
        let vlan = yaml_of(find(&items, "eth0.100"));
        assert_eq!(vlan["linkIndex"], 2);
        assert_eq!(vlan["vlan"]["vlanID"], 100);
        assert_eq!(vlan["vlan"]["vlanProtocol"], "802.1ad");
        let bridge = yaml_of(find(&items, "br0"));
        assert_eq!(bridge["kind"], "bridge");
        assert_eq!(bridge["bridgeMaster"]["stp"]["enabled"], true);
        // VLAN filtering off: left out, as upstream.
        assert!(bridge["bridgeMaster"].get("vlan").is_none(), "{bridge:?}");
        let port = yaml_of(find(&items, "eth1"));
        assert_eq!(port["masterIndex"], 4);
        assert_eq!(port["slaveKind"], "bridge");
        // Zero master index and kind-specific parts are left out.
        let eth0 = yaml_of(find(&items, "eth0"));
        assert!(eth0.get("masterIndex").is_none() && eth0.get("vlan").is_none());
        assert_eq!(eth0["kind"], "");
        assert_eq!(eth0["type"], "ether");
        let proto = pb::LinkStatusSpec::decode(find(&items, "br0").proto.as_slice()).unwrap();
        assert_eq!(
            proto.bridge_master.and_then(|b| b.stp).map(|s| s.enabled),
            Some(true)
        );
    }

    /// Runs `f` on a thread in a network namespace of its own, after
    /// running the `ip` commands there. Needs root and iproute2 (CI has
    /// both).
    #[allow(unsafe_code)]
    fn in_new_netns<T: Send + 'static>(
        commands: &'static [&'static str],
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            // SAFETY: only CLONE_NEWNET, on a thread of this test's own: no
            // file table or filesystem state is unshared.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("unshare(CLONE_NEWNET): run the tests as root, as CI does");
            for command in commands {
                // A child forked from this thread is in its namespace.
                // Through the reaper, which other tests of this binary
                // run: it would steal a plain `status()`.
                let status =
                    crate::reaper::run_to_end(Command::new("ip").args(command.split_whitespace()));
                assert!(status.success(), "ip {command}: {status}");
            }
            f()
        })
        .join()
        .expect("the namespace's thread")
    }

    fn read(want: Want) -> Dump {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(dump(want))
            .unwrap()
    }

    /// NodeAddresses over a real kernel's state, read three times as the
    /// addresses change: which addresses count, the order, the default
    /// kept while it stays current, and accumulative never dropping one.
    #[test]
    fn node_addresses_follow_upstreams_rules() {
        fn ip(args: &str) {
            let status =
                crate::reaper::run_to_end(Command::new("ip").args(args.split_whitespace()));
            assert!(status.success(), "ip {args}: {status}");
        }
        let reads = in_new_netns(
            &[
                "link set lo up",
                "link add a0 type veth peer name a1",
                "link set a0 up",
                "link set a1 up",
                "addr add 10.66.0.5/24 dev a0",
                "-6 addr add fd66::5/64 dev a0 nodad",
                // Left out: link-local, and link scope.
                "addr add 169.254.3.3/16 dev a0",
                "addr add 10.66.9.9/32 dev a0 scope link",
                // A link that is down: not current, but accumulated.
                "link add b0 type veth peer name b1",
                "addr add 10.55.0.1/24 dev b0",
            ],
            || {
                let mut memory = NodeAddressMemory::default();
                let mut reads = Vec::new();
                let read_now = |memory: &mut NodeAddressMemory| {
                    node_addresses(&read(Want::Addresses), memory).unwrap()
                };
                reads.push(read_now(&mut memory));
                // A lower address on the same link (another subnet: deleting
                // a primary address takes its subnet's secondaries with
                // it): the default stays.
                ip("addr add 10.60.0.1/24 dev a0");
                reads.push(read_now(&mut memory));
                // The default goes: the next one takes over; accumulative
                // keeps it.
                ip("addr del 10.66.0.5/24 dev a0");
                reads.push(read_now(&mut memory));
                reads
            },
        );
        let addresses = |items: &[Item], id: &str| -> Vec<String> {
            let doc = yaml_of(find(items, id));
            assert_eq!(doc["sortAlgorithm"], "v1");
            doc["addresses"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        let ids: Vec<&str> = reads[0].iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["accumulative", "current", "default", "routed"]);
        assert_eq!(
            addresses(&reads[0], "current"),
            ["10.66.0.5/24", "fd66::5/64"]
        );
        assert_eq!(
            addresses(&reads[0], "routed"),
            ["10.66.0.5/24", "fd66::5/64"]
        );
        assert_eq!(addresses(&reads[0], "default"), ["10.66.0.5/24"]);
        assert_eq!(
            addresses(&reads[0], "accumulative"),
            ["10.55.0.1/24", "10.66.0.5/24", "fd66::5/64"]
        );
        assert_eq!(
            addresses(&reads[1], "current"),
            ["10.60.0.1/24", "10.66.0.5/24", "fd66::5/64"]
        );
        assert_eq!(addresses(&reads[1], "default"), ["10.66.0.5/24"]);
        assert_eq!(
            addresses(&reads[2], "current"),
            ["10.60.0.1/24", "fd66::5/64"]
        );
        assert_eq!(addresses(&reads[2], "default"), ["10.60.0.1/24"]);
        assert_eq!(
            addresses(&reads[2], "accumulative"),
            ["10.55.0.1/24", "10.60.0.1/24", "10.66.0.5/24", "fd66::5/64"]
        );
        // The protobuf spec: upstream's NetIPPrefix, v1 as the default 0.
        let spec =
            pb::NodeAddressSpec::decode(find(&reads[2], "default").proto.as_slice()).unwrap();
        assert_eq!(
            spec.addresses,
            [NetIpPrefix {
                ip: vec![10, 60, 0, 1],
                prefix_length: 24
            }]
        );
        assert_eq!(spec.sort_algorithm, 0);
    }

    #[test]
    fn a_real_kernels_links_addresses_and_routes() {
        let (links, addresses, routes) = in_new_netns(
            &[
                "link set lo up",
                "link add v0 type veth peer name v1",
                // The kernels CI runs on may lack bridge and VLAN support;
                // those are read from built messages in the test above.
                "link add link v0 name m0 type macvlan mode bridge",
                "link set v0 alias uplink",
                "link set v0 up",
                "link set v1 up",
                "addr add 10.77.0.2/24 dev v0",
                "-6 addr add fd77::2/64 dev v0 nodad",
                "route add default via 10.77.0.1 dev v0 metric 1024",
                "route add 10.88.0.0/16 dev v0 table 1000",
                "-6 route add fd78::/64 via fd77::1 dev v0 metric 256",
            ],
            || {
                let with_addresses = read(Want::Addresses);
                // This process's /sys is the host namespace's: no device
                // details for these links, as for any virtual link.
                let no_sysfs = tempfile::tempdir().unwrap();
                (
                    links(&with_addresses, no_sysfs.path()).unwrap(),
                    addresses(&with_addresses).unwrap(),
                    routes(&read(Want::Routes)).unwrap(),
                )
            },
        );

        let lo = yaml_of(find(&links, "lo"));
        assert_eq!(lo["type"], "loopback");
        assert_eq!(lo["flags"], "UP,LOOPBACK,RUNNING,LOWER_UP");
        assert_eq!(lo["hardwareAddr"], "00:00:00:00:00:00");
        assert_eq!(lo["operationalState"], "unknown");
        assert_eq!(lo["linkState"], true);
        assert_eq!(lo["port"], "Other");
        assert_eq!(lo["duplex"], "Unknown");
        let v0 = yaml_of(find(&links, "v0"));
        assert_eq!(v0["kind"], "veth");
        assert_eq!(v0["alias"], "uplink");
        assert_eq!(v0["veth"]["peerName"], "v1");
        assert_eq!(v0["type"], "ether");
        assert_eq!(v0["linkState"], true);
        let v1 = yaml_of(find(&links, "v1"));
        assert_eq!(v1["veth"]["peerName"], "v0");
        let macvlan = yaml_of(find(&links, "m0"));
        assert_eq!(macvlan["kind"], "macvlan");
        assert_eq!(macvlan["linkIndex"], v0["index"]);
        assert_eq!(macvlan["macvlan"]["mode"], "bridge");
        assert_eq!(macvlan["operationalState"], "down");
        assert_eq!(macvlan["linkState"], false);
        // Kind-specific parts only for their kind.
        assert!(v0.get("macvlan").is_none() && macvlan.get("veth").is_none());
        let proto = pb::LinkStatusSpec::decode(find(&links, "m0").proto.as_slice()).unwrap();
        assert_eq!(proto.mac_vlan.map(|m| m.mode), Some(4));

        let address = yaml_of(find(&addresses, "v0/10.77.0.2/24"));
        assert_eq!(address["linkName"], "v0");
        assert_eq!(address["family"], "inet4");
        assert_eq!(address["scope"], "global");
        assert_eq!(address["flags"], "permanent");
        let v6 = yaml_of(find(&addresses, "v0/fd77::2/64"));
        assert_eq!(v6["family"], "inet6");
        assert_eq!(v6["flags"], "nodad,permanent");
        find(&addresses, "lo/127.0.0.1/8");
        let proto =
            pb::AddressStatusSpec::decode(find(&addresses, "v0/10.77.0.2/24").proto.as_slice())
                .unwrap();
        assert_eq!(proto.local.map(|l| l.ip), Some(vec![10, 77, 0, 2]));
        assert_eq!(proto.broadcast, None);

        let default = yaml_of(find(&routes, "inet4/10.77.0.1//1024"));
        assert_eq!(default["dst"], "");
        assert_eq!(default["outLinkName"], "v0");
        assert_eq!(default["protocol"], "boot");
        assert_eq!(default["type"], "unicast");
        let connected = yaml_of(find(&routes, "inet4//10.77.0.0/24/0"));
        assert_eq!(connected["src"], "10.77.0.2");
        assert_eq!(connected["scope"], "link");
        assert_eq!(connected["protocol"], "kernel");
        let local = yaml_of(find(&routes, "local/inet4//10.77.0.2/32/0"));
        assert_eq!(local["type"], "local");
        assert_eq!(local["scope"], "host");
        assert_eq!(local["table"], "local");
        // Tables above 255 are the header's 252, as upstream shows them.
        let other = yaml_of(find(&routes, "RoutingTable(252)/inet4//10.88.0.0/16/0"));
        assert_eq!(other["table"], "RoutingTable(252)");
        let v6 = yaml_of(find(&routes, "v0/inet6/fd77::1/fd78::/64/256"));
        assert_eq!(v6["gateway"], "fd77::1");
    }
}
