//! `network.NetworkService`: the kernel's links and routes.
//!
//! Each call reads a fresh netlink dump, so the answer is what the kernel
//! has at that moment (in container mode: the container's view). The
//! envelope holds one element with `metadata` unset; apid fills it in when
//! proxying.
//!
//! Wire details kept from upstream (v0.13, which answered from Go's
//! `net.Interfaces()` and a route dump):
//! - `Interface.flags` carries Go's `net.Flags` bit set (up 1, broadcast 2,
//!   loopback 4, point-to-point 8, multicast 16) in the `InterfaceFlags`
//!   field, as upstream cast it; proto3 enums are open, so clients decode
//!   any value.
//! - `hardwareaddr` is empty for an all-zero address (loopback).
//! - Routes of every table and both families are listed; `family` and
//!   `protocol` carry the kernel's numbers (`AF_*`, `RTPROT_*`), unknown
//!   ones included.
//! - `destination` is a CIDR (`0.0.0.0/0` for a default route); `gateway`
//!   a bare address, empty for on-link routes; `source` the preferred
//!   source as a host prefix (`10.0.0.5/32`), empty when unset.

use api::network::network_service_server::NetworkService;
use api::network::{
    Interface, Interfaces, InterfacesResponse, Route as ApiRoute, Routes, RoutesResponse,
};
use rtnetlink::Handle;
use tonic::{Request, Response, Status};

use crate::netlink;
use crate::state::{
    IFF_BROADCAST, IFF_LOOPBACK, IFF_MULTICAST, IFF_POINTOPOINT, IFF_UP, Link, Observed,
};

/// Go's `net.FlagUp`.
pub const GO_FLAG_UP: i32 = 1;
/// Go's `net.FlagBroadcast`.
pub const GO_FLAG_BROADCAST: i32 = 1 << 1;
/// Go's `net.FlagLoopback`.
pub const GO_FLAG_LOOPBACK: i32 = 1 << 2;
/// Go's `net.FlagPointToPoint`.
pub const GO_FLAG_POINT_TO_POINT: i32 = 1 << 3;
/// Go's `net.FlagMulticast`.
pub const GO_FLAG_MULTICAST: i32 = 1 << 4;

/// A link's flags as Go's `net.Flags`.
#[must_use]
pub fn go_flags(link: &Link) -> i32 {
    [
        (IFF_UP, GO_FLAG_UP),
        (IFF_BROADCAST, GO_FLAG_BROADCAST),
        (IFF_LOOPBACK, GO_FLAG_LOOPBACK),
        (IFF_POINTOPOINT, GO_FLAG_POINT_TO_POINT),
        (IFF_MULTICAST, GO_FLAG_MULTICAST),
    ]
    .into_iter()
    .filter(|(kernel, _)| link.flags & kernel != 0)
    .fold(0, |flags, (_, go)| flags | go)
}

/// The Interfaces reply for `observed`.
#[must_use]
pub fn interfaces_response(observed: &Observed) -> InterfacesResponse {
    let interfaces = observed
        .links
        .iter()
        .map(|link| Interface {
            index: link.index,
            mtu: link.mtu,
            name: link.name.clone(),
            hardwareaddr: link.mac_string(),
            flags: go_flags(link),
            ipaddress: observed
                .addresses_of(link.index)
                .map(|a| a.cidr())
                .collect(),
        })
        .collect();
    InterfacesResponse {
        messages: vec![Interfaces {
            metadata: None,
            interfaces,
        }],
    }
}

/// The Routes reply for `observed`.
#[must_use]
pub fn routes_response(observed: &Observed) -> RoutesResponse {
    let routes = observed
        .routes
        .iter()
        .map(|route| ApiRoute {
            interface: route
                .oif
                .and_then(|index| observed.link_by_index(index))
                .map(|link| link.name.clone())
                .unwrap_or_default(),
            destination: route.destination_cidr(),
            gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
            metric: route.metric,
            scope: u32::from(route.scope),
            source: route
                .source
                .map(|s| format!("{s}/{}", if s.is_ipv4() { 32 } else { 128 }))
                .unwrap_or_default(),
            family: i32::from(route.family),
            protocol: i32::from(route.protocol),
            flags: route.flags,
        })
        .collect();
    RoutesResponse {
        messages: vec![Routes {
            metadata: None,
            routes,
        }],
    }
}

/// The NetworkService, answering from netlink dumps made through `handle`.
#[derive(Debug, Clone)]
pub struct NetworkServer {
    handle: Handle,
}

impl NetworkServer {
    /// A service reading through `handle` (its connection must be running).
    #[must_use]
    pub fn new(handle: Handle) -> NetworkServer {
        NetworkServer { handle }
    }

    async fn observed(&self) -> Result<Observed, Status> {
        netlink::snapshot(self.handle.clone())
            .await
            .map_err(|e| Status::unavailable(format!("reading the kernel's network state: {e}")))
    }
}

#[tonic::async_trait]
impl NetworkService for NetworkServer {
    async fn routes(&self, _request: Request<()>) -> Result<Response<RoutesResponse>, Status> {
        let observed = self.observed().await?;
        Ok(Response::new(routes_response(&observed)))
    }

    async fn interfaces(
        &self,
        _request: Request<()>,
    ) -> Result<Response<InterfacesResponse>, Status> {
        let observed = self.observed().await?;
        Ok(Response::new(interfaces_response(&observed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AF_INET, ARPHRD_ETHER, Address, RT_SCOPE_HOST, RT_SCOPE_UNIVERSE, Route};
    use api::network::{AddressFamily, InterfaceFlags, RouteProtocol};

    fn observed() -> Observed {
        Observed {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    mtu: 65536,
                    mac: vec![0; 6],
                    flags: IFF_UP | IFF_LOOPBACK,
                    link_type: 772,
                    ..Link::default()
                },
                Link {
                    index: 2,
                    name: "eth0".into(),
                    mtu: 1500,
                    mac: vec![0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    flags: IFF_UP | IFF_BROADCAST | IFF_MULTICAST,
                    link_type: ARPHRD_ETHER,
                    ..Link::default()
                },
            ],
            addresses: vec![
                Address {
                    index: 1,
                    address: "127.0.0.1".parse().expect("ip"),
                    prefix: 8,
                    scope: RT_SCOPE_HOST,
                },
                Address {
                    index: 2,
                    address: "10.0.0.5".parse().expect("ip"),
                    prefix: 24,
                    scope: RT_SCOPE_UNIVERSE,
                },
            ],
            routes: vec![Route {
                family: AF_INET,
                table: 254,
                gateway: Some("10.0.0.1".parse().expect("ip")),
                oif: Some(2),
                metric: 1024,
                protocol: 16,
                source: Some("10.0.0.5".parse().expect("ip")),
                ..Route::default()
            }],
        }
    }

    #[test]
    fn interfaces_on_the_wire() {
        let reply = interfaces_response(&observed());
        assert_eq!(reply.messages.len(), 1);
        assert!(reply.messages[0].metadata.is_none());
        let interfaces = &reply.messages[0].interfaces;
        assert_eq!(interfaces.len(), 2);
        let lo = &interfaces[0];
        assert_eq!(lo.name, "lo");
        assert_eq!(lo.hardwareaddr, "");
        assert_eq!(lo.flags, GO_FLAG_UP | GO_FLAG_LOOPBACK);
        assert_eq!(lo.ipaddress, vec!["127.0.0.1/8"]);
        let eth0 = &interfaces[1];
        assert_eq!(eth0.index, 2);
        assert_eq!(eth0.mtu, 1500);
        assert_eq!(eth0.hardwareaddr, "52:54:00:12:34:56");
        assert_eq!(
            eth0.flags,
            GO_FLAG_UP | GO_FLAG_BROADCAST | GO_FLAG_MULTICAST
        );
        assert_eq!(eth0.ipaddress, vec!["10.0.0.5/24"]);
        // Up alone is also the enum's FLAG_UP.
        assert_eq!(GO_FLAG_UP, InterfaceFlags::FlagUp as i32);
    }

    #[test]
    fn routes_on_the_wire() {
        let reply = routes_response(&observed());
        let routes = &reply.messages[0].routes;
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(route.interface, "eth0");
        assert_eq!(route.destination, "0.0.0.0/0");
        assert_eq!(route.gateway, "10.0.0.1");
        assert_eq!(route.metric, 1024);
        assert_eq!(route.source, "10.0.0.5/32");
        assert_eq!(route.family, AddressFamily::AfInet as i32);
        assert_eq!(route.protocol, RouteProtocol::RtprotDhcp as i32);
        assert_eq!(route.scope, 0);
    }
}
