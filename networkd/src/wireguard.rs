//! WireGuard links: the config's `wireguard` section and the kernel's
//! generic netlink family that takes it.
//!
//! networkd makes the link (`wireguard` kind, through rtnetlink, like a
//! dummy) and then sets its private key, port, firewall mark and peers
//! with one `WG_CMD_SET_DEVICE` that replaces the peers, so a peer dropped
//! from the config goes. It sets them again whenever the config's section
//! changes or the link is made anew (a new index).
//!
//! The section, as upstream's `DeviceWireguardConfig`: `privateKey`
//! (base64, 32 bytes), `listenPort`, `firewallMark`, and `peers` with
//! `publicKey`, `endpoint` (`ip:port` or `host:port`, resolved each time
//! the link is set), `allowedIPs`
//! (CIDRs) and `persistentKeepaliveInterval` (a Go duration, whole
//! seconds).

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlMessage};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use serde_yaml_ng::Value;

/// A key: 32 bytes.
pub type Key = [u8; 32];

/// What one WireGuard link is set to.
#[derive(Clone, PartialEq, Eq)]
pub struct Spec {
    /// The link's private key.
    pub private_key: Key,
    /// The UDP port it listens on (the kernel picks one when absent).
    pub listen_port: Option<u16>,
    /// The mark of its packets.
    pub firewall_mark: Option<u32>,
    /// Its peers.
    pub peers: Vec<Peer>,
}

impl std::fmt::Debug for Spec {
    // The private key never goes to a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("private_key", &"<redacted>")
            .field("listen_port", &self.listen_port)
            .field("firewall_mark", &self.firewall_mark)
            .field("peers", &self.peers)
            .finish()
    }
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its public key.
    pub public_key: Key,
    /// Where to reach it first: `ip:port` or `host:port` (resolved when
    /// the link is set).
    pub endpoint: Option<String>,
    /// Seconds between keepalives (0: none).
    pub keepalive: u16,
    /// The addresses it may send from and that are sent to it.
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

fn key(text: Option<&str>, what: &str) -> Result<Key, String> {
    let text = text
        .filter(|t| !t.is_empty())
        .ok_or(format!("{what} is required"))?;
    let bytes = machinery::base64::decode(text).map_err(|_| format!("{what} is not base64"))?;
    <Key>::try_from(bytes.as_slice())
        .map_err(|_| format!("{what} is {} bytes, not 32", bytes.len()))
}

/// A keepalive interval, a Go duration (`25s`, `1m30s`, `0`), in the
/// whole seconds the kernel takes.
fn seconds(text: &str) -> Option<u16> {
    machinery::config::parse_go_duration(text).and_then(|d| u16::try_from(d.as_secs()).ok())
}

/// Checks that `endpoint` is `ip:port`, `[v6]:port` or `host:port`.
fn endpoint_shape(endpoint: &str) -> bool {
    if endpoint.parse::<SocketAddr>().is_ok() {
        return true;
    }
    endpoint.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && port.parse::<u16>().is_ok_and(|p| p != 0)
    })
}

/// Reads the `wireguard` section of a config entry.
///
/// # Errors
/// What is wrong, naming the field.
pub fn parse(section: &Value) -> Result<Spec, String> {
    let text = |v: &Value, key: &str| -> Option<String> {
        v.get(key).and_then(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let number = |v: &Value, key: &str| -> Result<Option<u64>, String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or(format!("{key} is not a whole number")),
        }
    };
    let private_key = key(text(section, "privateKey").as_deref(), "privateKey")?;
    let listen_port = match number(section, "listenPort")? {
        None => None,
        Some(port) => {
            Some(u16::try_from(port).map_err(|_| format!("listenPort {port} is not a UDP port"))?)
        }
    };
    let firewall_mark = match number(section, "firewallMark")? {
        None => None,
        Some(mark) => {
            Some(u32::try_from(mark).map_err(|_| format!("firewallMark {mark} is too large"))?)
        }
    };
    let mut peers = Vec::new();
    let peers_list = match section.get("peers") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Sequence(list)) => list.as_slice(),
        Some(_) => return Err("peers is not a list".into()),
    };
    for (i, peer) in peers_list.iter().enumerate() {
        let at = format!("peers[{i}]");
        let public_key = key(
            text(peer, "publicKey").as_deref(),
            &format!("{at}.publicKey"),
        )?;
        let endpoint = match text(peer, "endpoint").filter(|e| !e.is_empty()) {
            None => None,
            Some(endpoint) if endpoint_shape(&endpoint) => Some(endpoint),
            Some(endpoint) => {
                return Err(format!(
                    "{at}.endpoint {endpoint:?} is not an address:port or host:port"
                ));
            }
        };
        let keepalive = match text(peer, "persistentKeepaliveInterval").as_deref() {
            None | Some("") => 0,
            Some(interval) => seconds(interval).ok_or(format!(
                "{at}.persistentKeepaliveInterval {interval:?} is not a duration of up to 65535 s"
            ))?,
        };
        let cidrs: Vec<&str> = match peer.get("allowedIPs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(list)) => list.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(format!("{at}.allowedIPs is not a list")),
        };
        let mut allowed_ips = Vec::new();
        for cidr in cidrs {
            allowed_ips.push(
                machinery::config::parse_cidr(cidr)
                    .ok_or(format!("{at}.allowedIPs: {cidr:?} is not a CIDR"))?,
            );
        }
        peers.push(Peer {
            public_key,
            endpoint,
            keepalive,
            allowed_ips,
        });
    }
    Ok(Spec {
        private_key,
        listen_port,
        firewall_mark,
        peers,
    })
}

/// The `WG_CMD_SET_DEVICE` message that sets `name` to `spec`, replacing
/// its peers.
#[must_use]
pub fn set_device_message(
    name: &str,
    spec: &Spec,
    endpoints: &[Option<SocketAddr>],
) -> WireguardMessage {
    let mut attributes = vec![
        WireguardAttribute::IfName(name.to_owned()),
        WireguardAttribute::PrivateKey(spec.private_key),
        WireguardAttribute::Fwmark(spec.firewall_mark.unwrap_or(0)),
        WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers),
    ];
    // Without one the kernel keeps the port it picked: sending 0 would
    // make it pick another on every change, and peers lose the node.
    if let Some(port) = spec.listen_port {
        attributes.push(WireguardAttribute::ListenPort(port));
    }
    let peers: Vec<WireguardPeer> = spec
        .peers
        .iter()
        .zip(endpoints.iter().chain(std::iter::repeat(&None)))
        .map(|(peer, endpoint)| {
            let mut attrs = vec![
                WireguardPeerAttribute::PublicKey(peer.public_key),
                WireguardPeerAttribute::PersistentKeepalive(peer.keepalive),
            ];
            if let Some(endpoint) = endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(*endpoint));
            }
            attrs.push(WireguardPeerAttribute::AllowedIps(
                peer.allowed_ips
                    .iter()
                    .map(|(ip, prefix)| {
                        WireguardAllowedIp(vec![
                            WireguardAllowedIpAttr::Family(if ip.is_ipv4() {
                                WireguardAddressFamily::Ipv4
                            } else {
                                WireguardAddressFamily::Ipv6
                            }),
                            WireguardAllowedIpAttr::IpAddr(*ip),
                            WireguardAllowedIpAttr::Cidr(*prefix),
                        ])
                    })
                    .collect(),
            ));
            WireguardPeer(attrs)
        })
        .collect();
    if !peers.is_empty() {
        attributes.push(WireguardAttribute::Peers(peers));
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

/// How long one peer's host name may take to resolve: the network loop
/// waits for it.
pub const RESOLVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The peers' endpoints as addresses, in `spec.peers` order: an `ip:port`
/// as it is, a `host:port` looked up (bounded by [`RESOLVE_WITHIN`]).
///
/// # Errors
/// A name that does not resolve in time, naming it.
pub async fn resolve_endpoints(spec: &Spec) -> io::Result<Vec<Option<SocketAddr>>> {
    let mut endpoints = Vec::new();
    for peer in &spec.peers {
        let Some(endpoint) = &peer.endpoint else {
            endpoints.push(None);
            continue;
        };
        if let Ok(address) = endpoint.parse::<SocketAddr>() {
            endpoints.push(Some(address));
            continue;
        }
        let found =
            tokio::time::timeout(RESOLVE_WITHIN, tokio::net::lookup_host(endpoint.as_str()))
                .await
                .map_err(|_| {
                    io::Error::other(format!(
                        "resolving {endpoint}: no answer within {} s",
                        RESOLVE_WITHIN.as_secs()
                    ))
                })?
                .map_err(|e| io::Error::other(format!("resolving {endpoint}: {e}")))?;
        let mut found: Vec<SocketAddr> = found.collect();
        // IPv4 first: a node without IPv6 routes still reaches the peer.
        found.sort_by_key(|a| a.is_ipv6());
        endpoints.push(Some(found.first().copied().ok_or_else(|| {
            io::Error::other(format!("{endpoint} resolves to nothing"))
        })?));
    }
    Ok(endpoints)
}

/// Sets the WireGuard link `name` to `spec`, its peers at `endpoints`
/// ([`resolve_endpoints`]); blocking: a generic netlink request and its
/// acknowledgement.
///
/// # Errors
/// The kernel has no WireGuard, or it refused the settings.
pub fn configure(name: &str, spec: &Spec, endpoints: &[Option<SocketAddr>]) -> io::Result<()> {
    use rtnetlink::sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_GENERIC};
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    // A reply that never comes must not hold the network loop.
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(5)),
    )?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    // The family's number, from the generic netlink controller.
    let ctrl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(
            WireguardMessage::family_name().to_owned(),
        )],
    });
    let replies = request(&socket, ctrl, 1).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) {
            io::Error::other("the kernel has no WireGuard (no wireguard netlink family)")
        } else {
            e
        }
    })?;
    let family = replies
        .iter()
        .flat_map(|m| m.payload.nlas.iter())
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| io::Error::other("the kernel names no wireguard family"))?;
    let mut message = GenlMessage::from_payload(set_device_message(name, spec, endpoints));
    message.set_resolved_family_id(family);
    request(&socket, message, 2).map(|_| ())
}

/// Sends `payload` and reads replies up to the acknowledgement.
fn request<F>(
    socket: &rtnetlink::sys::Socket,
    payload: GenlMessage<F>,
    sequence: u32,
) -> io::Result<Vec<GenlMessage<F>>>
where
    GenlMessage<F>: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut replies = Vec::new();
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < bytes.len() {
            let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(&bytes[at..])
                .map_err(|e| io::Error::other(format!("a netlink reply: {e}")))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::InnerMessage(m) => replies.push(m),
                _ => {}
            }
            if length == 0 {
                break;
            }
            at += (length + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("yaml")
    }

    const KEY_A: &str = "cIPTLqvMlpUvGMHAE9Hh2tNTlcGFeuSTT0iN1SlaxlY=";
    const KEY_B: &str = "6KPhmLr0YEE1B0vbahyDXIyBpDgiVrzKcT8j6SXr5Ek=";

    #[test]
    fn the_section_as_upstream_writes_it() {
        let spec = parse(&yaml(&format!(
            "privateKey: {KEY_A}\nlistenPort: 51820\nfirewallMark: 1\npeers:\n  - publicKey: {KEY_B}\n    endpoint: 10.5.0.3:51820\n    persistentKeepaliveInterval: 25s\n    allowedIPs: [10.6.0.2/32, fd00::/64]\n"
        )))
        .expect("parses");
        assert_eq!(spec.listen_port, Some(51820));
        assert_eq!(spec.firewall_mark, Some(1));
        assert_eq!(spec.peers.len(), 1);
        let peer = &spec.peers[0];
        assert_eq!(peer.endpoint.as_deref(), Some("10.5.0.3:51820"));
        assert_eq!(peer.keepalive, 25);
        assert_eq!(
            peer.allowed_ips,
            [
                ("10.6.0.2".parse().expect("ip"), 32),
                ("fd00::".parse().expect("ip"), 64)
            ]
        );
        assert!(!format!("{spec:?}").contains(&format!("{:?}", spec.private_key)));

        // What the kernel gets: the peers replaced, each with its key,
        // endpoint, keepalive and allowed IPs.
        let message = set_device_message(
            "wg0",
            &spec,
            &[Some("10.5.0.3:51820".parse().expect("addr"))],
        );
        assert_eq!(message.cmd, WireguardCmd::SetDevice);
        assert!(
            message
                .attributes
                .contains(&WireguardAttribute::IfName("wg0".into()))
        );
        assert!(message.attributes.contains(&WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers
        )));
        assert!(
            message
                .attributes
                .contains(&WireguardAttribute::ListenPort(51820))
        );
        let Some(WireguardAttribute::Peers(peers)) = message
            .attributes
            .iter()
            .find(|a| matches!(a, WireguardAttribute::Peers(_)))
        else {
            panic!("no peers: {message:?}");
        };
        assert!(
            peers[0]
                .0
                .contains(&WireguardPeerAttribute::PersistentKeepalive(25))
        );
        assert!(peers[0].0.contains(&WireguardPeerAttribute::Endpoint(
            "10.5.0.3:51820".parse().expect("addr")
        )));
    }

    #[test]
    fn mistakes_name_their_field() {
        for (text, needle) in [
            ("listenPort: 1\n", "privateKey is required"),
            ("privateKey: nope!\n", "privateKey is not base64"),
            ("privateKey: aGVsbG8=\n", "privateKey is 5 bytes, not 32"),
            (
                &format!("privateKey: {KEY_A}\nlistenPort: 70000\n"),
                "listenPort 70000",
            ),
            (
                &format!(
                    "privateKey: {KEY_A}\npeers:\n  - publicKey: {KEY_B}\n    endpoint: vpn example:1\n"
                ),
                "peers[0].endpoint",
            ),
            (
                &format!(
                    "privateKey: {KEY_A}\npeers:\n  - publicKey: {KEY_B}\n    allowedIPs: [10.0.0.0/33]\n"
                ),
                "peers[0].allowedIPs",
            ),
            (
                &format!("privateKey: {KEY_A}\npeers:\n  - endpoint: 10.0.0.1:1\n"),
                "peers[0].publicKey is required",
            ),
        ] {
            let err = parse(&yaml(text)).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn endpoints_resolve_or_say_which_did_not() {
        let peer = |endpoint: Option<&str>| Peer {
            public_key: [2; 32],
            endpoint: endpoint.map(str::to_owned),
            keepalive: 0,
            allowed_ips: Vec::new(),
        };
        let spec = |peers| Spec {
            private_key: [1; 32],
            listen_port: None,
            firewall_mark: None,
            peers,
        };
        let found = resolve_endpoints(&spec(vec![
            peer(Some("10.5.0.3:51820")),
            peer(None),
            peer(Some("localhost:51821")),
        ]))
        .await
        .expect("resolves");
        assert_eq!(found[0], Some("10.5.0.3:51820".parse().expect("addr")));
        assert_eq!(found[1], None);
        let local = found[2].expect("localhost");
        assert!(local.ip().is_loopback() && local.port() == 51821, "{local}");
        let err = resolve_endpoints(&spec(vec![peer(Some("no-such-host.invalid:1"))]))
            .await
            .expect_err("does not resolve");
        assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    }

    #[test]
    fn keepalive_durations() {
        assert_eq!(seconds("25s"), Some(25));
        assert_eq!(seconds("1m30s"), Some(90));
        assert_eq!(seconds("0"), Some(0));
        assert_eq!(seconds("1h"), Some(3600));
        assert_eq!(seconds("1500ms"), Some(1));
        assert_eq!(seconds("10"), None);
        assert_eq!(seconds("2d"), None);
        assert_eq!(seconds("20h"), None);
        assert_eq!(seconds("1193047h"), None);
        assert_eq!(seconds("99999999999999999999h"), None);
        assert!(endpoint_shape("vpn.example.com:51820"));
        assert!(endpoint_shape("[fd00::1]:51820"));
        assert!(!endpoint_shape("vpn.example.com"));
        assert!(!endpoint_shape("vpn.example.com:0"));
        // Without a listenPort the kernel keeps the one it picked.
        let spec = Spec {
            private_key: [1; 32],
            listen_port: None,
            firewall_mark: None,
            peers: Vec::new(),
        };
        assert!(
            !set_device_message("wg0", &spec, &[])
                .attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::ListenPort(_)))
        );
    }
}
