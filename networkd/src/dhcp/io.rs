//! The DHCP client's I/O: one UDP socket and one task per link.
//!
//! The socket is bound to `0.0.0.0:68` and to the link with
//! `SO_BINDTODEVICE` (so one socket per link can share the port, and a
//! broadcast leaves through the right link although it has no address yet),
//! with `SO_BROADCAST`. Requests made without an address set the broadcast
//! flag, so the server broadcasts its replies too.
//!
//! Limitation: until the link has an address, the kernel accepts the
//! server's broadcast replies only when reverse-path filtering
//! (`net.ipv4.conf.{all,<link>}.rp_filter`) is off for that link, as it
//! is by default; a raw (`AF_PACKET`) socket would not need that.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::Message;
use dhcproto::{Decodable, Encodable};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::client::{CLIENT_PORT, Client, Config, Destination, Lease, Output, SERVER_PORT};

/// The smallest DHCP message some servers accept (BOOTP's 300 bytes).
const MIN_MESSAGE: usize = 300;

/// How long to wait before retrying a socket that could not be opened.
const SOCKET_RETRY: Duration = Duration::from_secs(5);

/// A lease event of one link, sent to the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    /// The link's name.
    pub link: String,
    /// The link's index.
    pub index: u32,
    /// The client's number ([`ClientLink::client`]).
    pub client: u64,
    /// What happened.
    pub kind: LeaseEventKind,
    /// The lease.
    pub lease: Lease,
}

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEventKind {
    /// A new lease.
    Bound,
    /// The lease was extended.
    Renewed,
    /// The lease ended.
    Lost,
}

/// The link a client runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLink {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Which client this is: a client restarted on the same link (a new
    /// MAC or route metric) gets a new number, so the events of the one
    /// it replaced are told apart.
    pub client: u64,
}

/// Opens the client socket for link `name`.
///
/// # Errors
/// The socket cannot be created, bound to the link (`CAP_NET_RAW`) or to
/// port 68 (`CAP_NET_BIND_SERVICE`, or another client holds it).
pub fn open_socket(name: &str) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(name.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        CLIENT_PORT,
    )))?;
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

/// The wire form of `message`, padded to [`MIN_MESSAGE`] bytes.
///
/// # Errors
/// The message cannot be encoded.
pub fn encode(message: &Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut bytes = message.to_vec()?;
    if bytes.len() < MIN_MESSAGE {
        bytes.resize(MIN_MESSAGE, 0);
    }
    Ok(bytes)
}

async fn send(socket: &UdpSocket, link: &ClientLink, message: &Message, to: Destination) {
    let bytes = match encode(message) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(link = %link.name, error = %e, "encoding a DHCP message");
            return;
        }
    };
    let ip = match to {
        Destination::Broadcast => Ipv4Addr::BROADCAST,
        Destination::Unicast(ip) => ip,
    };
    let target = SocketAddr::V4(SocketAddrV4::new(ip, SERVER_PORT));
    let kind = message
        .opts()
        .msg_type()
        .map_or_else(|| "?".to_owned(), |t| format!("{t:?}"));
    match socket.send_to(&bytes, target).await {
        Ok(_) => tracing::debug!(link = %link.name, %target, kind, "sent DHCP message"),
        Err(e) => tracing::debug!(
            link = %link.name, %target, kind, error = %e,
            "sending a DHCP message (retried on the next timeout)"
        ),
    }
}

/// Reports lease outputs to the reconciler; returns the messages to send.
fn report(
    link: &ClientLink,
    outputs: Vec<Output>,
    events: &mpsc::UnboundedSender<LeaseEvent>,
) -> Vec<(Message, Destination)> {
    let mut sends = Vec::new();
    for output in outputs {
        let (kind, lease) = match output {
            Output::Send { message, to } => {
                sends.push((message, to));
                continue;
            }
            Output::Bound(lease) => (LeaseEventKind::Bound, lease),
            Output::Renewed(lease) => (LeaseEventKind::Renewed, lease),
            Output::Lost(lease) | Output::Released(lease) => (LeaseEventKind::Lost, lease),
        };
        let _ = events.send(LeaseEvent {
            link: link.name.clone(),
            index: link.index,
            client: link.client,
            kind,
            lease,
        });
    }
    sends
}

/// Runs a DHCP client on `link` until `stop` fires (or its sender is
/// dropped); then releases the lease it holds and returns it, so the
/// caller can remove its address.
pub async fn run_client(
    link: ClientLink,
    config: Config,
    xid_seed: u32,
    events: mpsc::UnboundedSender<LeaseEvent>,
    mut stop: oneshot::Receiver<()>,
) -> Option<Lease> {
    let socket = loop {
        match open_socket(&link.name) {
            Ok(socket) => break socket,
            Err(e) => {
                tracing::warn!(
                    link = %link.name, error = %e,
                    "opening the DHCP client socket (udp 0.0.0.0:68 bound to the link); retrying"
                );
                tokio::select! {
                    _ = &mut stop => return None,
                    () = tokio::time::sleep(SOCKET_RETRY) => {}
                }
            }
        }
    };
    tracing::info!(link = %link.name, "DHCP client started");
    let mut client = Client::new(config, xid_seed);
    let mut outputs = client.start(Instant::now());
    let mut buf = vec![0u8; 1500];
    loop {
        for (message, to) in report(&link, std::mem::take(&mut outputs), &events) {
            send(&socket, &link, &message, to).await;
        }
        let deadline = client.deadline();
        let timer = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = &mut stop => {
                let outputs = client.release(Instant::now());
                let released = outputs.iter().find_map(|o| match o {
                    Output::Released(lease) => Some(lease.clone()),
                    _ => None,
                });
                for output in outputs {
                    if let Output::Send { message, to } = output {
                        send(&socket, &link, &message, to).await;
                    }
                }
                if let Some(lease) = &released {
                    tracing::info!(link = %link.name, address = %lease.address, "DHCP lease released");
                }
                return released;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => match Message::from_bytes(&buf[..n]) {
                    Ok(message) => outputs = client.handle(&message, Instant::now()),
                    Err(e) => tracing::debug!(link = %link.name, %from, error = %e, "ignoring a malformed DHCP message"),
                },
                Err(e) => {
                    tracing::debug!(link = %link.name, error = %e, "receiving on the DHCP socket");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            () = timer => outputs = client.on_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_to_the_bootp_minimum() {
        let mut client = Client::new(
            Config {
                mac: [2, 0, 0, 0, 0, 1],
                hostname: None,
                renew_after: None,
            },
            7,
        );
        let outputs = client.start(Instant::now());
        let Some(Output::Send { message, .. }) = outputs.first() else {
            panic!("a DISCOVER");
        };
        let bytes = encode(message).expect("encode");
        assert_eq!(bytes.len(), MIN_MESSAGE);
        let decoded = Message::from_bytes(&bytes).expect("decode");
        assert_eq!(decoded.xid(), message.xid());
        assert_eq!(decoded.opts().msg_type(), message.opts().msg_type());
    }

    #[test]
    fn lease_outputs_become_events_and_sends_are_returned() {
        let t = Instant::now();
        let link = ClientLink {
            index: 4,
            name: "eth0".into(),
            client: 1,
        };
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 0, 5),
            prefix: 24,
            server: Ipv4Addr::new(10, 0, 0, 1),
            routers: vec![],
            dns: vec![],
            hostname: None,
            domain: None,
            mtu: None,
            routes: vec![],
            lease_time: None,
            t1: None,
            t2: None,
            acquired: t,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sends = report(
            &link,
            vec![
                Output::Bound(lease.clone()),
                Output::Send {
                    message: Message::default(),
                    to: Destination::Broadcast,
                },
                Output::Released(lease.clone()),
            ],
            &tx,
        );
        assert_eq!(sends.len(), 1);
        let first = rx.try_recv().expect("bound");
        assert_eq!(first.kind, LeaseEventKind::Bound);
        assert_eq!(first.index, 4);
        assert_eq!(first.link, "eth0");
        assert_eq!(rx.try_recv().expect("lost").kind, LeaseEventKind::Lost);
        assert!(rx.try_recv().is_err());
    }
}
