//! The DHCPv4 client state machine (RFC 2131 §4.4), without I/O.
//!
//! ```text
//!  start ──► Selecting ──OFFER──► Requesting ──ACK──► Bound
//!               ▲                     │ NAK / 4 tries    │ T1
//!               └─────────────────────┘                  ▼
//!               ▲                                     Renewing ──ACK──► Bound
//!               │ NAK / lease expired                    │ T2
//!               └──────────────────── Rebinding ◄────────┘
//!                                        └──ACK──► Bound
//! ```
//!
//! The caller feeds it received messages ([`Client::handle`]) and the
//! passing of time ([`Client::on_timeout`] once [`Client::deadline`] is
//! reached); it answers with [`Output`]s: messages to send and lease events
//! to apply. Time is always passed in, so tests drive it with a fake clock.
//!
//! - DISCOVER is retransmitted after 4, 8, 16, 32 then every 64 s; a
//!   REQUEST in Requesting four times, then the client starts over.
//! - At T1 (option 58, default half the lease) the client unicasts a
//!   REQUEST to its server; at T2 (option 59, default 7/8 of the lease) it
//!   broadcasts one to any server; in both states it retransmits after half
//!   the time left, at least 60 s apart (RFC 2131 §4.4.5). At the end of the
//!   lease the address is lost and discovery starts again.
//! - Requests before a lease set the broadcast flag: the client has no
//!   address yet to receive a unicast reply on.
//! - [`Client::release`] sends a RELEASE for a held lease.
//! - A lease time of `0xffffffff` is an infinite lease: no timers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};

use crate::cmdline::prefix_of_mask;

/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;

/// The lease time assumed when an ACK names none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// The shortest wait between renewal or rebinding retransmissions.
pub const MIN_RETRANSMIT: Duration = Duration::from_secs(60);
/// How many times a REQUEST is sent in Requesting before starting over.
pub const REQUEST_ATTEMPTS: u32 = 4;

/// The options the client asks for.
const REQUESTED: [OptionCode; 10] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::ClasslessStaticRoute,
];

/// What the client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started.
    Init,
    /// DISCOVER sent, waiting for an OFFER.
    Selecting,
    /// REQUEST for an offer sent, waiting for the ACK.
    Requesting,
    /// Holding a lease.
    Bound,
    /// Past T1: renewing with the leasing server.
    Renewing,
    /// Past T2: rebinding with any server.
    Rebinding,
    /// Released or stopped.
    Stopped,
}

/// The client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The link's MAC address (`chaddr`, client identifier).
    pub mac: [u8; 6],
    /// Sent as option 12 when set (the configured hostname).
    pub hostname: Option<String>,
    /// Renew no later than this after a lease is acquired, whatever T1 says
    /// (tests use it to see a renewal within seconds).
    pub renew_after: Option<Duration>,
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub address: Ipv4Addr,
    /// Its prefix length (option 1; classful when absent).
    pub prefix: u8,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// Routers (option 3).
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Hostname (option 12).
    pub hostname: Option<String>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Link MTU (option 26).
    pub mtu: Option<u16>,
    /// Classless static routes (option 121): destination, prefix, gateway
    /// (`0.0.0.0`: on-link).
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    /// Lease time; `None`: infinite.
    pub lease_time: Option<Duration>,
    /// T1, from `acquired`.
    pub t1: Option<Duration>,
    /// T2, from `acquired`.
    pub t2: Option<Duration>,
    /// When the ACK arrived.
    pub acquired: Instant,
}

fn server_id(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn classful_prefix(address: Ipv4Addr) -> u8 {
    match address.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

fn seconds(message: &Message, code: OptionCode) -> Option<u32> {
    match message.opts().get(code) {
        Some(
            DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
        ) => Some(*s),
        _ => None,
    }
}

impl Lease {
    /// When the lease ends (`None`: never).
    #[must_use]
    pub fn expires_at(&self) -> Option<Instant> {
        self.lease_time.map(|d| self.acquired + d)
    }

    /// When to start renewing (T1).
    #[must_use]
    pub fn renew_at(&self) -> Option<Instant> {
        self.t1.map(|d| self.acquired + d)
    }

    /// When to start rebinding (T2).
    #[must_use]
    pub fn rebind_at(&self) -> Option<Instant> {
        self.t2.map(|d| self.acquired + d)
    }

    /// The time left at `now` (`None`: infinite).
    #[must_use]
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.expires_at()
            .map(|end| end.saturating_duration_since(now))
    }

    /// The lease an ACK grants, received at `now`. `server` is the server
    /// the client asked when the ACK does not name one.
    #[must_use]
    pub fn from_ack(
        message: &Message,
        server: Option<Ipv4Addr>,
        now: Instant,
        renew_after: Option<Duration>,
    ) -> Option<Lease> {
        let address = message.yiaddr();
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return None;
        }
        let server = server_id(message).or(server)?;
        let opts = message.opts();
        let prefix = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => prefix_of_mask(*mask),
            _ => None,
        }
        .filter(|p| *p > 0)
        .unwrap_or_else(|| classful_prefix(address));
        let lease_secs = seconds(message, OptionCode::AddressLeaseTime);
        let (lease_time, t1, t2) = if lease_secs == Some(u32::MAX) {
            (None, None, None)
        } else {
            let lease =
                lease_secs.map_or(DEFAULT_LEASE, |s| Duration::from_secs(u64::from(s.max(1))));
            let mut t2 = seconds(message, OptionCode::Rebinding)
                .map_or(lease * 7 / 8, |s| Duration::from_secs(u64::from(s)));
            if t2.is_zero() || t2 > lease {
                t2 = lease * 7 / 8;
            }
            let mut t1 = seconds(message, OptionCode::Renewal)
                .map_or(lease / 2, |s| Duration::from_secs(u64::from(s)));
            if t1.is_zero() || t1 > t2 {
                t1 = (lease / 2).min(t2);
            }
            if let Some(cap) = renew_after {
                t1 = t1.min(cap);
            }
            (Some(lease), Some(t1), Some(t2))
        };
        let list = |code| match opts.get(code) {
            Some(DhcpOption::Router(ips) | DhcpOption::DomainNameServer(ips)) => ips.clone(),
            _ => Vec::new(),
        };
        let text = |code| match opts.get(code) {
            Some(DhcpOption::Hostname(s) | DhcpOption::DomainName(s)) => {
                let s = s.trim_matches(char::from(0)).trim();
                (!s.is_empty()).then(|| s.to_owned())
            }
            _ => None,
        };
        let routes = match opts.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(routes)) => routes
                .iter()
                .map(|(net, gateway)| (net.network(), net.prefix_len(), *gateway))
                .collect(),
            _ => Vec::new(),
        };
        let mtu = match opts.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(mtu)) if *mtu >= 68 => Some(*mtu),
            _ => None,
        };
        Some(Lease {
            address,
            prefix,
            server,
            routers: list(OptionCode::Router),
            dns: list(OptionCode::DomainNameServer),
            hostname: text(OptionCode::Hostname),
            domain: text(OptionCode::DomainName),
            mtu,
            routes,
            lease_time,
            t1,
            t2,
            acquired: now,
        })
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `255.255.255.255:67`.
    Broadcast,
    /// A server, port 67.
    Unicast(Ipv4Addr),
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to `to`.
    Send {
        /// The message.
        message: Message,
        /// Where.
        to: Destination,
    },
    /// A new lease: configure its address and routes.
    Bound(Lease),
    /// The held lease was extended (same address): refresh lifetimes.
    Renewed(Lease),
    /// The lease ended (expired or refused): stop using its address.
    Lost(Lease),
    /// The lease was given back ([`Client::release`]): stop using it.
    Released(Lease),
}

/// The retransmission delay after `attempt` earlier tries: 4 s doubling,
/// capped at 64 s.
#[must_use]
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(4u64 << attempt.min(4))
}

/// When to retransmit in Renewing/Rebinding: after half the time left until
/// `until`, at least [`MIN_RETRANSMIT`] later, but not after `until`.
fn retransmit_at(now: Instant, until: Instant) -> Instant {
    let left = until.saturating_duration_since(now);
    now + (left / 2).max(MIN_RETRANSMIT).min(left)
}

/// A DHCPv4 client for one link.
#[derive(Debug)]
pub struct Client {
    config: Config,
    state: State,
    xid: u32,
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
    lease: Option<Lease>,
    deadline: Option<Instant>,
    attempts: u32,
    started: Option<Instant>,
}

impl Client {
    /// A client in [`State::Init`]; `xid_seed` seeds the transaction IDs
    /// (random in production, fixed in tests).
    #[must_use]
    pub fn new(config: Config, xid_seed: u32) -> Client {
        Client {
            config,
            state: State::Init,
            xid: xid_seed,
            offer: None,
            lease: None,
            deadline: None,
            attempts: 0,
            started: None,
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The lease held, if any.
    #[must_use]
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// When [`Client::on_timeout`] must be called next (`None`: only
    /// messages can move the client on).
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The current transaction ID.
    #[must_use]
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// A new transaction ID (a fixed LCG step: distinct, deterministic).
    fn next_xid(&mut self) {
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12_345);
    }

    fn message(
        &self,
        kind: MessageType,
        ciaddr: Ipv4Addr,
        requested: Option<(Ipv4Addr, Ipv4Addr)>,
        now: Instant,
    ) -> Message {
        let mut message = Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.config.mac,
        );
        message.set_opcode(Opcode::BootRequest);
        message.set_htype(HType::Eth);
        if ciaddr.is_unspecified() {
            message.set_flags(Flags::new(0).set_broadcast());
        }
        let secs = self.started.map_or(0, |started| {
            now.saturating_duration_since(started).as_secs()
        });
        message.set_secs(u16::try_from(secs).unwrap_or(u16::MAX));
        let opts = message.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.config.mac);
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        if let Some((address, server)) = requested {
            opts.insert(DhcpOption::RequestedIpAddress(address));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
        if kind != MessageType::Release {
            opts.insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
            opts.insert(DhcpOption::MaxMessageSize(1500));
            if let Some(hostname) = &self.config.hostname {
                opts.insert(DhcpOption::Hostname(hostname.clone()));
            }
        }
        message
    }

    fn send_discover(&self, now: Instant) -> Output {
        Output::Send {
            message: self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, None, now),
            to: Destination::Broadcast,
        }
    }

    fn send_request(&self, now: Instant) -> Vec<Output> {
        match (self.state, &self.lease, self.offer) {
            (State::Requesting, _, Some(offer)) => vec![Output::Send {
                message: self.message(
                    MessageType::Request,
                    Ipv4Addr::UNSPECIFIED,
                    Some(offer),
                    now,
                ),
                to: Destination::Broadcast,
            }],
            (State::Renewing, Some(lease), _) => vec![Output::Send {
                message: self.message(MessageType::Request, lease.address, None, now),
                to: Destination::Unicast(lease.server),
            }],
            (State::Rebinding, Some(lease), _) => vec![Output::Send {
                message: self.message(MessageType::Request, lease.address, None, now),
                to: Destination::Broadcast,
            }],
            _ => Vec::new(),
        }
    }

    /// Starts (or restarts) discovery: a DISCOVER, state Selecting.
    pub fn start(&mut self, now: Instant) -> Vec<Output> {
        self.state = State::Selecting;
        self.offer = None;
        self.attempts = 0;
        self.started = Some(now);
        self.next_xid();
        self.deadline = Some(now + backoff(0));
        vec![self.send_discover(now)]
    }

    fn bind(&mut self, lease: Lease) {
        self.state = State::Bound;
        self.deadline = lease.renew_at();
        self.offer = None;
        self.attempts = 0;
        self.started = None;
        self.lease = Some(lease);
    }

    /// Drops the lease (reporting it lost) and starts over.
    fn lose(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(lease) = self.lease.take() {
            out.push(Output::Lost(lease));
        }
        out.extend(self.start(now));
        out
    }

    /// Handles a message received on the client port.
    pub fn handle(&mut self, message: &Message, now: Instant) -> Vec<Output> {
        if message.opcode() != Opcode::BootReply
            || message.xid() != self.xid
            || message.chaddr().get(..6) != Some(&self.config.mac[..])
        {
            return Vec::new();
        }
        let Some(kind) = message.opts().msg_type() else {
            return Vec::new();
        };
        match (self.state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let address = message.yiaddr();
                let Some(server) = server_id(message) else {
                    return Vec::new();
                };
                if address.is_unspecified() {
                    return Vec::new();
                }
                self.offer = Some((address, server));
                self.state = State::Requesting;
                self.attempts = 0;
                self.deadline = Some(now + backoff(0));
                self.send_request(now)
            }
            (State::Requesting, MessageType::Ack) => {
                let Some((_, server)) = self.offer else {
                    return Vec::new();
                };
                if server_id(message).is_some_and(|id| id != server) {
                    return Vec::new();
                }
                match Lease::from_ack(message, Some(server), now, self.config.renew_after) {
                    Some(lease) => {
                        self.bind(lease.clone());
                        vec![Output::Bound(lease)]
                    }
                    None => Vec::new(),
                }
            }
            (State::Requesting, MessageType::Nak) => {
                let Some((_, server)) = self.offer else {
                    return Vec::new();
                };
                if server_id(message).is_some_and(|id| id != server) {
                    return Vec::new();
                }
                self.start(now)
            }
            (State::Renewing | State::Rebinding, MessageType::Ack) => {
                let Some(old) = self.lease.clone() else {
                    return Vec::new();
                };
                let Some(lease) =
                    Lease::from_ack(message, Some(old.server), now, self.config.renew_after)
                else {
                    return Vec::new();
                };
                if lease.address == old.address {
                    self.bind(lease.clone());
                    vec![Output::Renewed(lease)]
                } else {
                    self.bind(lease.clone());
                    vec![Output::Lost(old), Output::Bound(lease)]
                }
            }
            (State::Renewing | State::Rebinding, MessageType::Nak) => self.lose(now),
            _ => Vec::new(),
        }
    }

    /// Moves the client on at `now`: retransmissions, T1, T2, expiry.
    /// Nothing happens before [`Client::deadline`].
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Output> {
        match self.deadline {
            Some(deadline) if now >= deadline => {}
            _ => return Vec::new(),
        }
        match self.state {
            State::Init | State::Stopped => {
                self.deadline = None;
                Vec::new()
            }
            State::Selecting => {
                self.attempts += 1;
                self.deadline = Some(now + backoff(self.attempts));
                vec![self.send_discover(now)]
            }
            State::Requesting => {
                self.attempts += 1;
                if self.attempts >= REQUEST_ATTEMPTS {
                    return self.start(now);
                }
                self.deadline = Some(now + backoff(self.attempts));
                self.send_request(now)
            }
            State::Bound | State::Renewing | State::Rebinding => self.lease_timer(now),
        }
    }

    fn lease_timer(&mut self, now: Instant) -> Vec<Output> {
        let Some(lease) = self.lease.clone() else {
            return self.start(now);
        };
        if lease.expires_at().is_some_and(|end| now >= end) {
            return self.lose(now);
        }
        let renew_at = lease.renew_at();
        let rebind_at = lease.rebind_at();
        let end = lease.expires_at();
        if let (Some(rebind), Some(end)) = (rebind_at, end)
            && now >= rebind
        {
            if self.state != State::Rebinding {
                self.state = State::Rebinding;
                self.started = Some(now);
                self.next_xid();
            }
            self.deadline = Some(retransmit_at(now, end));
            return self.send_request(now);
        }
        if let (Some(renew), Some(rebind)) = (renew_at, rebind_at)
            && now >= renew
        {
            if self.state != State::Renewing {
                self.state = State::Renewing;
                self.started = Some(now);
                self.next_xid();
            }
            self.deadline = Some(retransmit_at(now, rebind));
            return self.send_request(now);
        }
        self.state = State::Bound;
        self.deadline = renew_at;
        Vec::new()
    }

    /// Gives the lease back: a RELEASE to its server. The client stops.
    pub fn release(&mut self, now: Instant) -> Vec<Output> {
        self.state = State::Stopped;
        self.deadline = None;
        self.offer = None;
        let Some(lease) = self.lease.take() else {
            return Vec::new();
        };
        self.next_xid();
        self.started = None;
        let mut message = self.message(
            MessageType::Release,
            lease.address,
            Some((lease.address, lease.server)),
            now,
        );
        // A RELEASE carries the server identifier but no requested address.
        message.opts_mut().remove(OptionCode::RequestedIpAddress);
        vec![
            Output::Send {
                message,
                to: Destination::Unicast(lease.server),
            },
            Output::Released(lease),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Encodable};

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 1);
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 55);

    fn client(renew_after: Option<Duration>) -> Client {
        Client::new(
            Config {
                mac: MAC,
                hostname: Some("node1".into()),
                renew_after,
            },
            42,
        )
    }

    /// A server reply to `request`, through the wire format.
    fn reply(
        request: &Message,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        lease: u32,
        extra: Vec<DhcpOption>,
    ) -> Message {
        let mut m = Message::new_with_id(
            request.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(SERVER));
        if kind != MessageType::Nak {
            opts.insert(DhcpOption::AddressLeaseTime(lease));
            opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            opts.insert(DhcpOption::Router(vec![SERVER]));
            opts.insert(DhcpOption::DomainNameServer(vec![SERVER]));
        }
        for option in extra {
            opts.insert(option);
        }
        Message::from_bytes(&m.to_vec().expect("encode")).expect("decode")
    }

    fn sent(outputs: &[Output]) -> (Message, Destination) {
        let sends: Vec<_> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { message, to } => Some((message.clone(), *to)),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), 1, "{outputs:?}");
        // What goes on the wire decodes to the same message.
        let (message, to) = sends.into_iter().next().expect("one");
        let decoded = Message::from_bytes(&message.to_vec().expect("encode")).expect("decode");
        assert_eq!(decoded.opts().msg_type(), message.opts().msg_type());
        (message, to)
    }

    fn option(message: &Message, code: OptionCode) -> Option<&DhcpOption> {
        message.opts().get(code)
    }

    /// Runs a client to Bound at `t` with a lease of `lease` seconds.
    fn bound(client: &mut Client, t: Instant, lease: u32, extra: Vec<DhcpOption>) -> Lease {
        let (discover, _) = sent(&client.start(t));
        let offer = reply(&discover, MessageType::Offer, ADDRESS, lease, vec![]);
        let (request, _) = sent(&client.handle(&offer, t));
        let ack = reply(&request, MessageType::Ack, ADDRESS, lease, extra);
        let outputs = client.handle(&ack, t);
        match outputs.as_slice() {
            [Output::Bound(lease)] => lease.clone(),
            other => panic!("expected Bound, got {other:?}"),
        }
    }

    #[test]
    fn discover_offer_request_ack() {
        let t0 = Instant::now();
        let mut c = client(None);
        assert_eq!(c.state(), State::Init);
        let (discover, to) = sent(&c.start(t0));
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(c.state(), State::Selecting);
        assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(discover.opcode(), Opcode::BootRequest);
        assert_eq!(&discover.chaddr()[..6], &MAC);
        assert!(discover.flags().broadcast());
        assert_eq!(
            option(&discover, OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![1, 2, 0, 0, 0, 0, 0x10]))
        );
        assert_eq!(
            option(&discover, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("node1".into()))
        );
        assert!(option(&discover, OptionCode::ParameterRequestList).is_some());
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(4)));

        // No offer: retransmitted with backoff.
        assert!(c.on_timeout(t0 + Duration::from_secs(3)).is_empty());
        let (again, _) = sent(&c.on_timeout(t0 + Duration::from_secs(4)));
        assert_eq!(again.xid(), discover.xid());
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(12)));

        let t1 = t0 + Duration::from_secs(5);
        let offer = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        let (request, to) = sent(&c.handle(&offer, t1));
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(c.state(), State::Requesting);
        assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(request.xid(), discover.xid());
        assert!(request.ciaddr().is_unspecified());
        assert_eq!(
            option(&request, OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDRESS))
        );
        assert_eq!(
            option(&request, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        // A second offer is ignored.
        assert!(c.handle(&offer, t1).is_empty());

        let ack = reply(
            &request,
            MessageType::Ack,
            ADDRESS,
            600,
            vec![
                DhcpOption::Hostname("dhcp-node".into()),
                DhcpOption::DomainName("lan".into()),
                DhcpOption::InterfaceMtu(1400),
            ],
        );
        let outputs = c.handle(&ack, t1);
        let [Output::Bound(lease)] = outputs.as_slice() else {
            panic!("expected Bound, got {outputs:?}");
        };
        assert_eq!(c.state(), State::Bound);
        assert_eq!(lease.address, ADDRESS);
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.routers, vec![SERVER]);
        assert_eq!(lease.dns, vec![SERVER]);
        assert_eq!(lease.hostname.as_deref(), Some("dhcp-node"));
        assert_eq!(lease.domain.as_deref(), Some("lan"));
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!(lease.lease_time, Some(Duration::from_secs(600)));
        assert_eq!(lease.t1, Some(Duration::from_secs(300)));
        assert_eq!(lease.t2, Some(Duration::from_secs(525)));
        assert_eq!(
            lease.remaining(t1 + Duration::from_secs(100)),
            Some(Duration::from_secs(500))
        );
        assert_eq!(c.lease(), Some(lease));
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(300)));
    }

    #[test]
    fn renewal_at_t1_and_rebinding_at_t2() {
        let t0 = Instant::now();
        let mut c = client(None);
        let lease = bound(&mut c, t0, 600, vec![]);
        let bound_xid = c.xid();
        // Nothing before T1.
        assert!(c.on_timeout(t0 + Duration::from_secs(299)).is_empty());
        assert_eq!(c.state(), State::Bound);

        // T1: unicast REQUEST to the server, from the leased address.
        let t1 = t0 + Duration::from_secs(300);
        let (renew, to) = sent(&c.on_timeout(t1));
        assert_eq!(c.state(), State::Renewing);
        assert_eq!(to, Destination::Unicast(SERVER));
        assert_eq!(renew.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(renew.ciaddr(), ADDRESS);
        assert!(!renew.flags().broadcast());
        assert!(option(&renew, OptionCode::RequestedIpAddress).is_none());
        assert!(option(&renew, OptionCode::ServerIdentifier).is_none());
        assert_ne!(renew.xid(), bound_xid);
        // Retransmit after half the time to T2 (225 s / 2).
        assert_eq!(c.deadline(), Some(t1 + Duration::from_millis(112_500)));
        let (again, _) = sent(&c.on_timeout(t1 + Duration::from_millis(112_500)));
        assert_eq!(again.xid(), renew.xid());
        assert_eq!(c.state(), State::Renewing);
        // Past the last retransmission the next deadline is T2 itself
        // (less than 60 s left).
        let t = t1 + Duration::from_millis(112_500);
        assert_eq!(c.deadline(), Some(t + Duration::from_secs(60)));
        let _ = sent(&c.on_timeout(t + Duration::from_secs(60)));
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(525)));

        // T2: broadcast REQUEST, still from the leased address.
        let t2 = t0 + Duration::from_secs(525);
        let (rebind, to) = sent(&c.on_timeout(t2));
        assert_eq!(c.state(), State::Rebinding);
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(rebind.ciaddr(), ADDRESS);
        assert_ne!(rebind.xid(), renew.xid());
        assert_eq!(c.deadline(), Some(t2 + Duration::from_secs(60)));

        // An ACK (from any server) renews the lease from now on.
        let t = t2 + Duration::from_secs(10);
        let ack = reply(&rebind, MessageType::Ack, ADDRESS, 600, vec![]);
        let outputs = c.handle(&ack, t);
        let [Output::Renewed(renewed)] = outputs.as_slice() else {
            panic!("expected Renewed, got {outputs:?}");
        };
        assert_eq!(renewed.address, lease.address);
        assert_eq!(renewed.acquired, t);
        assert_eq!(c.state(), State::Bound);
        assert_eq!(c.deadline(), Some(t + Duration::from_secs(300)));
    }

    #[test]
    fn an_ack_while_renewing_renews() {
        let t0 = Instant::now();
        let mut c = client(None);
        bound(&mut c, t0, 600, vec![]);
        let t1 = t0 + Duration::from_secs(300);
        let (renew, _) = sent(&c.on_timeout(t1));
        // A stale reply (old xid) is ignored.
        let mut stale = reply(&renew, MessageType::Ack, ADDRESS, 600, vec![]);
        stale.set_xid(renew.xid().wrapping_add(1));
        assert!(c.handle(&stale, t1).is_empty());
        let ack = reply(&renew, MessageType::Ack, ADDRESS, 600, vec![]);
        let outputs = c.handle(&ack, t1 + Duration::from_secs(1));
        assert!(
            matches!(outputs.as_slice(), [Output::Renewed(_)]),
            "{outputs:?}"
        );
        assert_eq!(c.state(), State::Bound);
    }

    #[test]
    fn a_new_address_on_renewal_replaces_the_old_one() {
        let t0 = Instant::now();
        let mut c = client(None);
        let old = bound(&mut c, t0, 600, vec![]);
        let t1 = t0 + Duration::from_secs(300);
        let (renew, _) = sent(&c.on_timeout(t1));
        let other = Ipv4Addr::new(10, 99, 7, 56);
        let ack = reply(&renew, MessageType::Ack, other, 600, vec![]);
        let outputs = c.handle(&ack, t1);
        match outputs.as_slice() {
            [Output::Lost(lost), Output::Bound(new)] => {
                assert_eq!(lost, &old);
                assert_eq!(new.address, other);
            }
            other => panic!("expected Lost then Bound, got {other:?}"),
        }
    }

    #[test]
    fn expiry_loses_the_lease_and_starts_over() {
        let t0 = Instant::now();
        let mut c = client(None);
        bound(&mut c, t0, 100, vec![]);
        // Walk the timers without answers until the lease ends.
        let mut now = t0;
        let mut lost = None;
        for _ in 0..20 {
            let Some(deadline) = c.deadline() else { break };
            now = deadline;
            let outputs = c.on_timeout(now);
            if let Some(Output::Lost(lease)) = outputs.first() {
                lost = Some(lease.clone());
                let (discover, to) = sent(&outputs);
                assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
                assert_eq!(to, Destination::Broadcast);
                break;
            }
        }
        let lost = lost.expect("the lease expires");
        assert_eq!(lost.address, ADDRESS);
        assert_eq!(now, t0 + Duration::from_secs(100));
        assert_eq!(c.state(), State::Selecting);
        assert!(c.lease().is_none());
    }

    #[test]
    fn a_nak_restarts_discovery() {
        let t0 = Instant::now();
        // NAK while requesting.
        let mut c = client(None);
        let (discover, _) = sent(&c.start(t0));
        let offer = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        let (request, _) = sent(&c.handle(&offer, t0));
        let nak = reply(&request, MessageType::Nak, Ipv4Addr::UNSPECIFIED, 0, vec![]);
        let (again, _) = sent(&c.handle(&nak, t0));
        assert_eq!(again.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(c.state(), State::Selecting);

        // NAK while renewing: the lease is lost.
        let mut c = client(None);
        bound(&mut c, t0, 600, vec![]);
        let (renew, _) = sent(&c.on_timeout(t0 + Duration::from_secs(300)));
        let nak = reply(&renew, MessageType::Nak, Ipv4Addr::UNSPECIFIED, 0, vec![]);
        let outputs = c.handle(&nak, t0 + Duration::from_secs(301));
        assert!(
            matches!(outputs.first(), Some(Output::Lost(_))),
            "{outputs:?}"
        );
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn requesting_gives_up_after_four_tries() {
        let t0 = Instant::now();
        let mut c = client(None);
        let (discover, _) = sent(&c.start(t0));
        let offer = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        let _ = sent(&c.handle(&offer, t0));
        for _ in 1..REQUEST_ATTEMPTS {
            let now = c.deadline().expect("deadline");
            let (request, _) = sent(&c.on_timeout(now));
            assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
        }
        let now = c.deadline().expect("deadline");
        let (discover, _) = sent(&c.on_timeout(now));
        assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn foreign_replies_are_ignored() {
        let t0 = Instant::now();
        let mut c = client(None);
        let (discover, _) = sent(&c.start(t0));
        let mut wrong_xid = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        wrong_xid.set_xid(discover.xid() ^ 1);
        assert!(c.handle(&wrong_xid, t0).is_empty());
        let mut wrong_mac = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        wrong_mac.set_chaddr(&[2, 0, 0, 0, 0, 0x11]);
        assert!(c.handle(&wrong_mac, t0).is_empty());
        let mut request = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        request.set_opcode(Opcode::BootRequest);
        assert!(c.handle(&request, t0).is_empty());
        let ack_first = reply(&discover, MessageType::Ack, ADDRESS, 600, vec![]);
        assert!(c.handle(&ack_first, t0).is_empty());
        let mut no_server = reply(&discover, MessageType::Offer, ADDRESS, 600, vec![]);
        no_server.opts_mut().remove(OptionCode::ServerIdentifier);
        assert!(c.handle(&no_server, t0).is_empty());
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn renew_after_caps_t1() {
        let t0 = Instant::now();
        let mut c = client(Some(Duration::from_secs(3)));
        let lease = bound(&mut c, t0, 120, vec![]);
        assert_eq!(lease.t1, Some(Duration::from_secs(3)));
        assert_eq!(lease.t2, Some(Duration::from_secs(105)));
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(3)));
        let (renew, to) = sent(&c.on_timeout(t0 + Duration::from_secs(3)));
        assert_eq!(to, Destination::Unicast(SERVER));
        let ack = reply(&renew, MessageType::Ack, ADDRESS, 120, vec![]);
        let t = t0 + Duration::from_secs(4);
        assert!(matches!(c.handle(&ack, t).as_slice(), [Output::Renewed(_)]));
        assert_eq!(c.deadline(), Some(t + Duration::from_secs(3)));
    }

    #[test]
    fn infinite_leases_have_no_timers() {
        let t0 = Instant::now();
        let mut c = client(None);
        let lease = bound(&mut c, t0, u32::MAX, vec![]);
        assert_eq!(lease.lease_time, None);
        assert_eq!(lease.expires_at(), None);
        assert_eq!(lease.remaining(t0), None);
        assert_eq!(c.deadline(), None);
        assert!(c.on_timeout(t0 + Duration::from_secs(1_000_000)).is_empty());
    }

    #[test]
    fn release_gives_the_lease_back() {
        let t0 = Instant::now();
        let mut c = client(None);
        let lease = bound(&mut c, t0, 600, vec![]);
        let outputs = c.release(t0 + Duration::from_secs(5));
        let (release, to) = sent(&outputs);
        assert_eq!(to, Destination::Unicast(SERVER));
        assert_eq!(release.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(release.ciaddr(), ADDRESS);
        assert_eq!(
            option(&release, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(option(&release, OptionCode::RequestedIpAddress).is_none());
        assert!(outputs.contains(&Output::Released(lease)));
        assert_eq!(c.state(), State::Stopped);
        assert_eq!(c.deadline(), None);
        // Nothing to release twice, and a stopped client stays stopped.
        assert!(c.release(t0).is_empty());
        assert!(c.on_timeout(t0 + Duration::from_secs(10_000)).is_empty());
        let mut idle = client(None);
        assert!(idle.release(t0).is_empty());
    }

    #[test]
    fn lease_options_and_defaults() {
        let t = Instant::now();
        let mut m = Message::new_with_id(
            1,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(172, 16, 3, 4),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        // No server identifier, mask or lease time: the fallback server,
        // the classful prefix, an hour.
        let lease = Lease::from_ack(&m, Some(SERVER), t, None).expect("lease");
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.prefix, 16);
        assert_eq!(lease.lease_time, Some(DEFAULT_LEASE));
        assert_eq!(lease.t1, Some(DEFAULT_LEASE / 2));
        assert_eq!(lease.t2, Some(DEFAULT_LEASE * 7 / 8));
        assert!(lease.routers.is_empty());
        assert!(
            Lease::from_ack(&m, None, t, None).is_none(),
            "no server at all"
        );

        // Explicit T1/T2; inconsistent ones are replaced.
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(1000));
        m.opts_mut().insert(DhcpOption::Renewal(100));
        m.opts_mut().insert(DhcpOption::Rebinding(200));
        let lease = Lease::from_ack(&m, Some(SERVER), t, None).expect("lease");
        assert_eq!(lease.t1, Some(Duration::from_secs(100)));
        assert_eq!(lease.t2, Some(Duration::from_secs(200)));
        m.opts_mut().insert(DhcpOption::Renewal(300));
        m.opts_mut().insert(DhcpOption::Rebinding(2000));
        let lease = Lease::from_ack(&m, Some(SERVER), t, None).expect("lease");
        assert_eq!(lease.t2, Some(Duration::from_secs(875)));
        assert_eq!(lease.t1, Some(Duration::from_secs(300)));

        // No address: no lease.
        let mut empty = m.clone();
        empty.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert!(Lease::from_ack(&empty, Some(SERVER), t, None).is_none());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let secs: Vec<u64> = (0..7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![4, 8, 16, 32, 64, 64, 64]);
    }
}
