//! rtnetlink I/O: dumps into [`Observed`] and [`Action`]s applied.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, CacheInfo};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBond, LinkBridge, LinkDummy, LinkUnspec, LinkVlan,
    LinkWireguard, MulticastGroup, RouteMessageBuilder,
};

use crate::plan::{Action, DesiredRoute};
use crate::state::{Address, Link, Observed, Route};

/// The multicast groups networkd listens to.
pub const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv6Route,
];

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct NetlinkError {
    /// What was being done (`dumping links`, `adding 10.0.0.5/24 to eth0`...).
    pub operation: String,
    /// The cause.
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    /// The errno the kernel answered with, if it did.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(message) => {
                let code = message.raw_code();
                (code != 0).then_some(code.abs())
            }
            _ => None,
        }
    }
}

fn failed(operation: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let operation = operation.into();
    move |source| NetlinkError { operation, source }
}

/// Dumps the links, addresses and routes (both families, all tables).
///
/// # Errors
/// A dump fails.
pub async fn snapshot(handle: Handle) -> Result<Observed, NetlinkError> {
    // One dump at a time on the shared netlink socket: the kernel answers a
    // second concurrent dump with EBUSY (the reconcile loop and the API both
    // take snapshots).
    static DUMPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = DUMPS.lock().await;
    let mut observed = Observed::default();

    let mut links = std::pin::pin!(handle.link().get().execute());
    while let Some(message) = links.try_next().await.map_err(failed("dumping links"))? {
        if let Some(link) = Link::from_message(&message) {
            observed.links.push(link);
        }
    }
    observed.links.sort_by_key(|l| l.index);

    let mut addresses = std::pin::pin!(handle.address().get().execute());
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(failed("dumping addresses"))?
    {
        if let Some(address) = Address::from_message(&message) {
            observed.addresses.push(address);
        }
    }

    for (family, request) in ["IPv4", "IPv6"].into_iter().zip(route_dump_requests()) {
        let mut routes = std::pin::pin!(handle.route().get(request).execute());
        while let Some(message) = routes
            .try_next()
            .await
            .map_err(failed(format!("dumping {family} routes")))?
        {
            observed.routes.push(Route::from_message(&message));
        }
    }
    Ok(observed)
}

/// Requests that dump every route of IPv4 and of IPv6, in every table.
/// The builder's main/static/unicast would filter the dump on a socket that
/// checks strictly; unspecified asks for all.
#[must_use]
pub fn route_dump_requests() -> [RouteMessage; 2] {
    [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ]
    .map(|mut request| {
        request.header.table = 0;
        request.header.protocol = RouteProtocol::Unspec;
        request.header.kind = RouteType::Unspec;
        request
    })
}

/// The netlink message for `route` on link `index`.
#[must_use]
pub fn route_message(index: u32, route: &DesiredRoute) -> RouteMessage {
    let mut message = match route.destination {
        IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    message.header.destination_prefix_length = route.prefix;
    message.header.protocol = RouteProtocol::from(route.origin.protocol());
    message.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if route.prefix > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.destination,
            )));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    if let Some(source) = route.source {
        message
            .attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(source)));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    message
        .attributes
        .push(RouteAttribute::Priority(route.metric));
    if let Some(mtu) = route.mtu {
        message
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    message
}

fn describe_route(route: &DesiredRoute) -> String {
    let mut text = format!("{}/{}", route.destination, route.prefix);
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    text.push_str(&format!(" metric {}", route.metric));
    text
}

/// Applies one action.
///
/// # Errors
/// The kernel refuses it. Adding what already exists (`EEXIST`) and
/// removing what is already gone (`ESRCH`, `EADDRNOTAVAIL`, `ENODEV`)
/// count as success.
#[allow(clippy::field_reassign_with_default)] // CacheInfo is non-exhaustive.
pub async fn apply(handle: &Handle, action: &Action) -> Result<(), NetlinkError> {
    let result = match action {
        Action::CreateBond { name, bond } => {
            use rtnetlink::packet_route::link::{BondLacpRate, BondMode, BondXmitHashPolicy};
            let mut builder = LinkBond::new(name).mode(BondMode::from(bond.mode));
            if let Some(v) = bond.miimon {
                builder = builder.miimon(v);
            }
            if let Some(v) = bond.updelay {
                builder = builder.updelay(v);
            }
            if let Some(v) = bond.downdelay {
                builder = builder.downdelay(v);
            }
            if let Some(v) = bond.lacp_rate {
                builder = builder.ad_lacp_rate(BondLacpRate::from(v));
            }
            if let Some(v) = bond.xmit_hash_policy {
                builder = builder.xmit_hash_policy(BondXmitHashPolicy::from(v));
            }
            handle
                .link()
                .add(builder.build())
                .execute()
                .await
                .map_err(failed(format!("creating the bond {name}")))
        }
        Action::CreateBridge { name, bridge } => {
            use rtnetlink::packet_route::link::BridgeStpState;
            let stp = if bridge.stp {
                BridgeStpState::KernelStp
            } else {
                BridgeStpState::Disabled
            };
            let mut builder = LinkBridge::new(name).stp_state(stp);
            // Only when asked: off is the kernel's default, and a kernel
            // built without VLAN filtering refuses the attribute at all.
            if bridge.vlan_filtering {
                builder = builder.vlan_filtering(true);
            }
            handle
                .link()
                .add(builder.build())
                .execute()
                .await
                .map_err(failed(format!("creating the bridge {name}")))
        }
        Action::Enslave {
            index,
            name,
            controller_index,
            controller,
            down,
        } => {
            let mut message = LinkUnspec::new_with_index(*index);
            if *down {
                message = message.down();
            }
            handle
                .link()
                .set(message.controller(*controller_index).build())
                .execute()
                .await
                .map_err(failed(format!("adding {name} to {controller}")))
        }
        Action::Release {
            index,
            name,
            controller,
        } => handle
            .link()
            .set(LinkUnspec::new_with_index(*index).nocontroller().build())
            .execute()
            .await
            .map_err(failed(format!("taking {name} out of {controller}"))),
        Action::DeleteLink { index, name, kind } => handle
            .link()
            .del(*index)
            .execute()
            .await
            .map_err(failed(format!("deleting the {kind} link {name}"))),
        Action::CreateWireguard { name } => handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(failed(format!("creating the WireGuard link {name}"))),
        Action::CreateDummy { name } => handle
            .link()
            .add(LinkDummy::new(name).build())
            .execute()
            .await
            .map_err(failed(format!("creating the dummy link {name}"))),
        Action::CreateVlan {
            name,
            parent_index,
            parent,
            vid,
        } => handle
            .link()
            .add(LinkVlan::new(name, *parent_index, *vid).build())
            .execute()
            .await
            .map_err(failed(format!(
                "creating the VLAN link {name} ({parent}, id {vid})"
            ))),
        Action::SetUp { index, name } => handle
            .link()
            .set(LinkUnspec::new_with_index(*index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing {name} up"))),
        Action::SetMtu { index, name, mtu } => handle
            .link()
            .set(LinkUnspec::new_with_index(*index).mtu(*mtu).build())
            .execute()
            .await
            .map_err(failed(format!("setting the MTU of {name} to {mtu}"))),
        Action::AddAddress {
            index,
            name,
            address,
            replace,
        } => {
            let mut request = handle
                .address()
                .add(*index, address.address, address.prefix);
            if *replace {
                request = request.replace();
            }
            if let Some(lifetime) = address.lifetime {
                let mut info = CacheInfo::default();
                info.ifa_valid = lifetime.valid;
                info.ifa_preferred = lifetime.preferred;
                request
                    .message_mut()
                    .attributes
                    .push(AddressAttribute::CacheInfo(info));
            }
            request.execute().await.map_err(failed(format!(
                "adding {}/{} to {name}",
                address.address, address.prefix
            )))
        }
        Action::DelAddress {
            index,
            name,
            address,
            prefix,
        } => {
            let message = match address {
                IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(*index)
                    .address(*v4, *prefix)
                    .build(),
                IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
                    .index(*index)
                    .address(*v6, *prefix)
                    .build(),
            };
            handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(failed(format!("removing {address}/{prefix} from {name}")))
        }
        Action::AddRoute {
            index,
            name,
            route,
            replace,
        } => {
            let mut request = handle.route().add(route_message(*index, route));
            if *replace {
                request = request.replace();
            }
            request.execute().await.map_err(failed(format!(
                "adding the route {} on {name}",
                describe_route(route)
            )))
        }
        Action::DelRoute { index, name, route } => handle
            .route()
            .del(route_message(*index, route))
            .execute()
            .await
            .map_err(failed(format!(
                "removing the route {} from {name}",
                describe_route(route)
            ))),
    };
    match result {
        Err(e) if tolerated(action, e.errno()) => {
            tracing::debug!(error = %e, "nothing to do");
            Ok(())
        }
        other => other,
    }
}

/// Whether `errno` means the action's goal already holds.
fn tolerated(action: &Action, errno: Option<i32>) -> bool {
    const ENODEV: i32 = 19;
    const EEXIST: i32 = 17;
    const ESRCH: i32 = 3;
    const EADDRNOTAVAIL: i32 = 99;
    matches!(
        (action, errno),
        (
            Action::AddAddress { .. } | Action::AddRoute { .. },
            Some(EEXIST)
        ) | (
            Action::DelAddress { .. } | Action::DelRoute { .. },
            Some(ESRCH | EADDRNOTAVAIL | ENODEV)
        ) | (Action::DeleteLink { .. }, Some(ENODEV))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Origin;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn route_messages() {
        let route = DesiredRoute {
            destination: ip("0.0.0.0"),
            prefix: 0,
            gateway: Some(ip("10.99.7.1")),
            metric: 1024,
            mtu: Some(1400),
            source: None,
            origin: Origin::Dhcp,
        };
        let message = route_message(3, &route);
        assert_eq!(u8::from(message.header.protocol), 16);
        assert_eq!(message.header.scope, RouteScope::Universe);
        assert_eq!(message.header.destination_prefix_length, 0);
        assert!(
            !message
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_))),
            "a default route names no destination"
        );
        assert!(message.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(message.attributes.contains(&RouteAttribute::Priority(1024)));
        // It reads back as the route it describes.
        let read = Route::from_message(&message);
        assert!(route.matches(3, &read), "{read:?}");
        assert_eq!(read.mtu, Some(1400));

        let on_link = DesiredRoute {
            destination: ip("fd00::"),
            prefix: 64,
            gateway: None,
            metric: 1024,
            mtu: None,
            source: Some(ip("fd00::5")),
            origin: Origin::Static,
        };
        let message = route_message(2, &on_link);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert_eq!(u8::from(message.header.protocol), 4);
        let read = Route::from_message(&message);
        assert!(on_link.matches(2, &read), "{read:?}");
        assert_eq!(read.source, Some(ip("fd00::5")));
        assert_eq!(
            describe_route(&route),
            "0.0.0.0/0 via 10.99.7.1 metric 1024"
        );
    }

    #[test]
    fn tolerated_errors() {
        let add = Action::SetUp {
            index: 1,
            name: "lo".into(),
        };
        assert!(!tolerated(&add, Some(17)));
        let del = Action::DelAddress {
            index: 1,
            name: "eth0".into(),
            address: ip("10.0.0.5"),
            prefix: 24,
        };
        assert!(tolerated(&del, Some(99)));
        assert!(!tolerated(&del, Some(1)));
        assert!(!tolerated(&del, None));
    }
}
