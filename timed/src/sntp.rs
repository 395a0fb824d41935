//! A minimal SNTP v4 client (RFC 4330; on-wire protocol of RFC 5905).
//!
//! One query is one 48-byte client packet (LI 0, VN 4, mode 3) whose
//! transmit timestamp is the local send time t1; the server answers with its
//! receive time t2 and transmit time t3, and echoes t1 as the originate
//! timestamp, which is how replies are matched to requests. With t4 the local
//! receive time:
//!
//! ```text
//! offset     = ((t2 - t1) + (t3 - t4)) / 2
//! round trip = (t4 - t1) - (t3 - t2)
//! ```
//!
//! t4 is t1 plus a monotonic elapsed time, so a clock step during a query
//! cannot distort the result. The request's transmit field carries a random
//! cookie rather than t1 (t1 is kept locally): the server echoes it, and an
//! off-path sender cannot guess it (nor learn the node's clock from the
//! request). A packet that does not echo it is ignored, whatever it is.
//! As upstream's client checks them, replies are rejected from an
//! unsynchronized server (leap indicator 3, stratum 0 "kiss-o'-death" or
//! 16), with a root distance (root delay / 2 + root dispersion) over 16 s,
//! a reference time over 36 hours old or after its transmit time, or a
//! receive time after its transmit time.
//!
//! Written by hand rather than with the sntpc crate: the protocol part is
//! ~100 lines, needs no runtime adapter crate, and is unit-tested here byte
//! for byte.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;

use crate::clock::{Leap, Offset};

/// The NTP port, used when a server is named without one.
pub const DEFAULT_PORT: u16 = 123;

/// The size of an NTP header without extensions.
pub const PACKET_LEN: usize = 48;

/// The largest root distance a usable server may have (RFC 5905 MAXDISP).
pub const MAX_ROOT_DISTANCE: Duration = Duration::from_secs(16);

/// The oldest a server's reference time may be (RFC 5905's longest poll,
/// 2^17 s, about 36 hours): older, its clock is not fresh.
pub const MAX_REFERENCE_AGE: Duration = Duration::from_secs(1 << 17);

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// An NTP timestamp: seconds since 1900 (modulo 2^32) and a binary fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NtpTimestamp {
    /// Whole seconds since the start of the NTP era.
    pub seconds: u32,
    /// Fraction of a second in units of 2^-32 s.
    pub fraction: u32,
}

/// Nanoseconds since the Unix epoch (negative before it).
fn unix_nanos(time: SystemTime) -> i128 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// The time `nanos` nanoseconds after the Unix epoch.
fn from_unix_nanos(nanos: i128) -> SystemTime {
    let magnitude = Duration::new(
        u64::try_from((nanos.unsigned_abs() / 1_000_000_000).min(u128::from(u64::MAX)))
            .unwrap_or(u64::MAX),
        (nanos.unsigned_abs() % 1_000_000_000) as u32,
    );
    let time = if nanos < 0 {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    };
    time.unwrap_or(SystemTime::UNIX_EPOCH)
}

impl NtpTimestamp {
    /// The NTP timestamp of `time` (era folded in: 2036 wraps to 0).
    #[must_use]
    pub fn from_system_time(time: SystemTime) -> NtpTimestamp {
        let ntp_nanos = unix_nanos(time) + i128::from(NTP_UNIX_OFFSET) * NANOS_PER_SEC;
        let seconds = ntp_nanos.div_euclid(NANOS_PER_SEC);
        let sub = ntp_nanos.rem_euclid(NANOS_PER_SEC);
        NtpTimestamp {
            seconds: seconds.rem_euclid(1 << 32) as u32,
            fraction: ((sub << 32) / NANOS_PER_SEC) as u32,
        }
    }

    /// The time this timestamp stands for, reading it in the era that puts
    /// it between 1968 and 2104 (RFC 4330 §3: a clear top bit means the
    /// 2036 era).
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        let mut ntp_seconds = i64::from(self.seconds);
        if self.seconds & 0x8000_0000 == 0 {
            ntp_seconds += 1 << 32;
        }
        let unix_seconds = ntp_seconds - NTP_UNIX_OFFSET;
        let nanos = (i128::from(self.fraction) * NANOS_PER_SEC) >> 32;
        from_unix_nanos(i128::from(unix_seconds) * NANOS_PER_SEC + nanos)
    }

    /// The 8 wire bytes (big-endian seconds, then fraction).
    #[must_use]
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.seconds.to_be_bytes());
        out[4..].copy_from_slice(&self.fraction.to_be_bytes());
        out
    }

    /// Reads 8 wire bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 8]) -> NtpTimestamp {
        NtpTimestamp {
            seconds: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            fraction: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// Whether every bit is zero ("not set" on the wire).
    #[must_use]
    pub fn is_zero(self) -> bool {
        self.seconds == 0 && self.fraction == 0
    }
}

/// The client request carrying `transmit` (t1) as its transmit timestamp.
#[must_use]
pub fn request(transmit: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut packet = [0u8; PACKET_LEN];
    // LI 0 (no warning), VN 4, mode 3 (client).
    packet[0] = 0x23;
    packet[40..48].copy_from_slice(&transmit.to_bytes());
    packet
}

/// The fields of a server reply timed uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Leap indicator (3: the server is unsynchronized).
    pub leap: u8,
    /// Protocol version.
    pub version: u8,
    /// Association mode (4: server).
    pub mode: u8,
    /// The server's stratum (1: primary reference; 0: kiss-o'-death).
    pub stratum: u8,
    /// Reference identifier (the kiss code when the stratum is 0).
    pub reference_id: [u8; 4],
    /// Round-trip delay to the server's reference clock.
    pub root_delay: Duration,
    /// The server's dispersion relative to its reference clock.
    pub root_dispersion: Duration,
    /// When the server's clock was last set or corrected.
    pub reference: NtpTimestamp,
    /// Our transmit timestamp, echoed.
    pub originate: NtpTimestamp,
    /// When the server received the request (t2).
    pub receive: NtpTimestamp,
    /// When the server sent the reply (t3).
    pub transmit: NtpTimestamp,
}

/// Why a reply is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Fewer than 48 bytes.
    #[error("the reply is {0} bytes, shorter than an NTP header (48 bytes)")]
    TooShort(usize),
    /// Not a server reply.
    #[error("the reply has mode {0}, not 4 (server)")]
    Mode(u8),
    /// The originate timestamp is not our transmit timestamp: the packet
    /// does not answer this request (late, duplicated or forged).
    #[error("the reply does not answer our request (originate timestamp mismatch)")]
    Mismatch,
    /// Unknown protocol version.
    #[error("the reply has protocol version {0}, not 1 to 4")]
    Version(u8),
    /// Stratum 0: the server refuses service (e.g. RATE, DENY).
    #[error("the server sent a kiss-o'-death ({0})")]
    KissOfDeath(String),
    /// Leap indicator 3: the server's clock is not synchronized.
    #[error("the server's clock is not synchronized (leap indicator 3)")]
    Unsynchronized,
    /// Stratum 16 or more: unsynchronized or invalid.
    #[error("the server reports stratum {0}, which is not synchronized")]
    Stratum(u8),
    /// The server left its receive or transmit timestamp empty.
    #[error("the reply has no receive or transmit timestamp")]
    MissingTimestamp,
    /// The server received the request after it sent the reply.
    #[error("the server's clock ticked backwards (receive time after transmit time)")]
    Backwards,
    /// The server's clock was last set after it sent the reply.
    #[error("the reply's reference time is after its transmit time")]
    ReferenceAfterTransmit,
    /// The server's clock has not been corrected for too long.
    #[error("the server's clock is not fresh (last set {0:?} before it answered)")]
    Stale(Duration),
    /// The server is too far from its reference clock.
    #[error("the server's root distance is {0:?}, over 16 s")]
    RootDistance(Duration),
}

/// A 32-bit NTP short format (16.16 fixed point seconds), as a duration;
/// a negative root delay counts as zero.
fn short_at(buf: &[u8], at: usize) -> Duration {
    let raw = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let raw = if at == 4 && raw & 0x8000_0000 != 0 {
        0
    } else {
        raw
    };
    Duration::from_nanos((u64::from(raw) * 1_000_000_000) >> 16)
}

fn timestamp_at(buf: &[u8], at: usize) -> NtpTimestamp {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    NtpTimestamp::from_bytes(bytes)
}

/// Decodes and checks a reply to the request that carried `sent`.
///
/// # Errors
/// The packet is not a usable answer to that request.
pub fn parse_reply(buf: &[u8], sent: NtpTimestamp) -> Result<Reply, ReplyError> {
    if buf.len() < PACKET_LEN {
        return Err(ReplyError::TooShort(buf.len()));
    }
    let reply = Reply {
        leap: buf[0] >> 6,
        version: (buf[0] >> 3) & 0x7,
        mode: buf[0] & 0x7,
        stratum: buf[1],
        root_delay: short_at(buf, 4),
        root_dispersion: short_at(buf, 8),
        reference_id: [buf[12], buf[13], buf[14], buf[15]],
        reference: timestamp_at(buf, 16),
        originate: timestamp_at(buf, 24),
        receive: timestamp_at(buf, 32),
        transmit: timestamp_at(buf, 40),
    };
    // First: whatever does not answer this request is not looked at.
    if reply.originate != sent {
        return Err(ReplyError::Mismatch);
    }
    if reply.mode != 4 {
        return Err(ReplyError::Mode(reply.mode));
    }
    if !(1..=4).contains(&reply.version) {
        return Err(ReplyError::Version(reply.version));
    }
    if reply.stratum == 0 {
        let code: String = reply
            .reference_id
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() {
                    char::from(b)
                } else {
                    '?'
                }
            })
            .collect();
        return Err(ReplyError::KissOfDeath(code));
    }
    if reply.leap == 3 {
        return Err(ReplyError::Unsynchronized);
    }
    if reply.stratum > 15 {
        return Err(ReplyError::Stratum(reply.stratum));
    }
    if reply.receive.is_zero() || reply.transmit.is_zero() {
        return Err(ReplyError::MissingTimestamp);
    }
    let (receive, transmit, reference) = (
        reply.receive.to_system_time(),
        reply.transmit.to_system_time(),
        reply.reference.to_system_time(),
    );
    if receive > transmit {
        return Err(ReplyError::Backwards);
    }
    match transmit.duration_since(reference) {
        Err(_) => return Err(ReplyError::ReferenceAfterTransmit),
        Ok(age) if age > MAX_REFERENCE_AGE => return Err(ReplyError::Stale(age)),
        Ok(_) => {}
    }
    let distance = reply.root_delay / 2 + reply.root_dispersion;
    if distance > MAX_ROOT_DISTANCE {
        return Err(ReplyError::RootDistance(distance));
    }
    Ok(reply)
}

/// One measurement against one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The server as named (host or host:port).
    pub server: String,
    /// The address that answered.
    pub address: SocketAddr,
    /// The local clock when the reply arrived (t4).
    pub local_time: SystemTime,
    /// The server's clock at that same moment: `local_time + offset`.
    pub remote_time: SystemTime,
    /// How far the server's clock is ahead of ours.
    pub offset: Offset,
    /// Network round trip, without the server's processing time.
    pub round_trip: Duration,
    /// The server's stratum.
    pub stratum: u8,
    /// The leap second the server announces for the end of the day.
    pub leap: Leap,
}

/// Computes the sample from the four timestamps: t1 = `sent_at`, t4 =
/// `sent_at + elapsed`, t2/t3 from `reply`.
#[must_use]
pub fn sample_from(
    server: &str,
    address: SocketAddr,
    sent_at: SystemTime,
    elapsed: Duration,
    reply: &Reply,
) -> Sample {
    let t1 = unix_nanos(sent_at);
    let t4 = t1 + elapsed.as_nanos() as i128;
    let t2 = unix_nanos(reply.receive.to_system_time());
    let t3 = unix_nanos(reply.transmit.to_system_time());
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let round_trip = ((t4 - t1) - (t3 - t2)).max(0);
    let offset = Offset::from_nanos(i64::try_from(offset).unwrap_or(if offset < 0 {
        i64::MIN
    } else {
        i64::MAX
    }));
    let local_time = from_unix_nanos(t4);
    Sample {
        server: server.to_owned(),
        address,
        local_time,
        remote_time: offset.apply(local_time),
        offset,
        round_trip: Duration::from_nanos(u64::try_from(round_trip).unwrap_or(u64::MAX)),
        stratum: reply.stratum,
        leap: Leap::from_indicator(reply.leap),
    }
}

/// Errors querying a server. Every message names the server.
#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    /// The server string is not `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
    #[error("querying NTP server {server:?}: invalid address: {reason}")]
    BadServer {
        /// The server as named.
        server: String,
        /// What is wrong.
        reason: String,
    },
    /// The name does not resolve.
    #[error("querying NTP server {server}: resolving the name: {source}")]
    Resolve {
        /// The server as named.
        server: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The name resolves to nothing.
    #[error("querying NTP server {server}: the name resolves to no address")]
    NoAddress {
        /// The server as named.
        server: String,
    },
    /// A socket operation failed (e.g. connection refused: nothing listens).
    #[error("querying NTP server {server} ({address}): {source}")]
    Io {
        /// The server as named.
        server: String,
        /// The address tried.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No usable answer in time.
    #[error("querying NTP server {server}: no answer within {timeout:?}")]
    Timeout {
        /// The server as named.
        server: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// Two samples taken one after the other disagree by more than the
    /// step threshold: the clock is not stepped on either.
    #[error(
        "querying NTP server {server}: two samples disagree ({first}, then {second}); the clock is not stepped"
    )]
    Inconsistent {
        /// The server as named.
        server: String,
        /// The first offset.
        first: Offset,
        /// The second.
        second: Offset,
    },
    /// The server answered with something unusable.
    #[error("querying NTP server {server} ({address}): {source}")]
    BadReply {
        /// The server as named.
        server: String,
        /// The address that answered.
        address: SocketAddr,
        /// What is wrong with the reply.
        source: ReplyError,
    },
}

impl SntpError {
    /// The server the error is about, as named.
    #[must_use]
    pub fn server(&self) -> &str {
        match self {
            SntpError::BadServer { server, .. }
            | SntpError::Resolve { server, .. }
            | SntpError::NoAddress { server }
            | SntpError::Io { server, .. }
            | SntpError::Timeout { server, .. }
            | SntpError::Inconsistent { server, .. }
            | SntpError::BadReply { server, .. } => server,
        }
    }

    /// Whether the server did not answer in time.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, SntpError::Timeout { .. })
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{port:?} is not a port number (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` (or a bare IPv6
/// address) into host and port, defaulting the port to 123.
///
/// # Errors
/// Empty host, malformed brackets or port.
pub fn split_host_port(server: &str) -> Result<(&str, u16), String> {
    let server = server.trim();
    if server.is_empty() {
        return Err("the server is empty".to_owned());
    }
    // Upstream lists PTP devices (`/dev/ptp0`) among the time servers.
    // Not a host name: no DNS query for it.
    if machinery::config::is_device_server(server) {
        return Err(
            "a PTP device: this node syncs time over NTP only (name an NTP server)".to_owned(),
        );
    }
    let (host, port) = if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("missing ']' after an IPv6 address")?;
        if after.is_empty() {
            (host, DEFAULT_PORT)
        } else {
            let port = after
                .strip_prefix(':')
                .ok_or("expected ':port' after ']'")?;
            (host, parse_port(port)?)
        }
    } else {
        match server.rsplit_once(':') {
            // More than one colon: a bare IPv6 address.
            Some((host, _)) if host.contains(':') => (server, DEFAULT_PORT),
            Some((host, port)) => (host, parse_port(port)?),
            None => (server, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".to_owned());
    }
    Ok((host, port))
}

/// Queries `server` (host or host:port, default port 123) once, giving up
/// after `timeout` in all (resolution included). A name with several
/// addresses is tried address by address, each with a share of the time
/// left.
///
/// # Errors
/// See [`SntpError`].
pub async fn query(server: &str, timeout: Duration) -> Result<Sample, SntpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || SntpError::Timeout {
        server: server.to_owned(),
        timeout,
    };
    let (host, port) = split_host_port(server).map_err(|reason| SntpError::BadServer {
        server: server.to_owned(),
        reason,
    })?;
    let addresses: Vec<SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(source)) => {
                return Err(SntpError::Resolve {
                    server: server.to_owned(),
                    source,
                });
            }
            Ok(Ok(addresses)) => addresses.collect(),
        };
    if addresses.is_empty() {
        return Err(SntpError::NoAddress {
            server: server.to_owned(),
        });
    }
    let count = addresses.len();
    let mut last = None;
    for (index, address) in addresses.into_iter().enumerate() {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let share = (deadline - now) / u32::try_from(count - index).unwrap_or(1);
        match exchange(server, address, now + share, timeout).await {
            Ok(sample) => return Ok(sample),
            Err(e) => {
                tracing::debug!(error = %e, "NTP address failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(timed_out))
}

/// A random transmit timestamp for a request: the server echoes it.
fn cookie() -> NtpTimestamp {
    let bytes = machinery::pki::random_bytes(8)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        // No randomness at all: the clock, as plain SNTP sends.
        .unwrap_or_else(|| NtpTimestamp::from_system_time(SystemTime::now()).to_bytes());
    NtpTimestamp::from_bytes(bytes)
}

/// One request/reply with `address`, until `deadline`.
async fn exchange(
    server: &str,
    address: SocketAddr,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Sample, SntpError> {
    let io = |source: std::io::Error| SntpError::Io {
        server: server.to_owned(),
        address,
        source,
    };
    let local: SocketAddr = if address.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(address).await.map_err(io)?;
    let transmit = cookie();
    let sent_at = SystemTime::now();
    let started = Instant::now();
    socket.send(&request(transmit)).await.map_err(io)?;
    let mut buf = [0u8; 1024];
    loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => {
                return Err(SntpError::Timeout {
                    server: server.to_owned(),
                    timeout,
                });
            }
            Ok(Err(source)) => return Err(io(source)),
            Ok(Ok(len)) => len,
        };
        let elapsed = started.elapsed();
        match parse_reply(&buf[..len], transmit) {
            Ok(reply) => return Ok(sample_from(server, address, sent_at, elapsed, &reply)),
            // Not an answer to this request: keep waiting for the real one.
            Err(ReplyError::Mismatch) => {}
            Err(source) => {
                return Err(SntpError::BadReply {
                    server: server.to_owned(),
                    address,
                    source,
                });
            }
        }
    }
}

/// Where samples come from: SNTP on the network, or a script in tests.
pub trait TimeSource: Send + Sync {
    /// Queries `server`, giving up after `timeout`.
    fn query(
        &self,
        server: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Sample, SntpError>> + Send;
}

/// The network: [`query`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Sntp;

impl TimeSource for Sntp {
    fn query(
        &self,
        server: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Sample, SntpError>> + Send {
        query(server, timeout)
    }
}

impl<T: TimeSource> TimeSource for Arc<T> {
    fn query(
        &self,
        server: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Sample, SntpError>> + Send {
        T::query(self, server, timeout)
    }
}

/// One scripted answer of a [`FakeSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeAnswer {
    /// The server answers, its clock `Offset` ahead of ours.
    Offset(Offset),
    /// As `Offset`, announcing a leap second.
    Leap(Offset, crate::clock::Leap),
    /// Connection refused.
    Unreachable,
    /// No answer in time.
    Timeout,
}

/// A scripted time source for tests: answers per server in order; the last
/// answer repeats; a server without a script is unreachable. Records every
/// query.
#[derive(Debug, Default)]
pub struct FakeSource {
    state: Mutex<FakeSourceState>,
}

#[derive(Debug, Default)]
struct FakeSourceState {
    script: std::collections::HashMap<String, std::collections::VecDeque<FakeAnswer>>,
    queries: Vec<String>,
}

impl FakeSource {
    /// A source where every server is unreachable until scripted.
    #[must_use]
    pub fn new() -> FakeSource {
        FakeSource::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeSourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `answer` to `server`'s script.
    pub fn push(&self, server: &str, answer: FakeAnswer) {
        self.state()
            .script
            .entry(server.to_owned())
            .or_default()
            .push_back(answer);
    }

    /// The servers queried so far, in order.
    #[must_use]
    pub fn queries(&self) -> Vec<String> {
        self.state().queries.clone()
    }

    fn answer(&self, server: &str, timeout: Duration) -> Result<Sample, SntpError> {
        let mut state = self.state();
        state.queries.push(server.to_owned());
        let answer = match state.script.get_mut(server) {
            Some(script) if script.len() > 1 => script.pop_front(),
            Some(script) => script.front().copied(),
            None => None,
        };
        let address = SocketAddr::from(([192, 0, 2, 1], DEFAULT_PORT));
        match answer {
            Some(FakeAnswer::Offset(offset)) => {
                Ok(fake_sample(server, address, offset, Leap::None))
            }
            Some(FakeAnswer::Leap(offset, leap)) => Ok(fake_sample(server, address, offset, leap)),
            Some(FakeAnswer::Timeout) => Err(SntpError::Timeout {
                server: server.to_owned(),
                timeout,
            }),
            Some(FakeAnswer::Unreachable) | None => Err(SntpError::Io {
                server: server.to_owned(),
                address,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            }),
        }
    }
}

/// What a [`FakeSource`] answers for `server`: its clock `offset` ahead.
fn fake_sample(server: &str, address: SocketAddr, offset: Offset, leap: Leap) -> Sample {
    let local_time = SystemTime::now();
    Sample {
        server: server.to_owned(),
        address,
        local_time,
        remote_time: offset.apply(local_time),
        offset,
        round_trip: Duration::from_millis(1),
        stratum: 2,
        leap,
    }
}

impl TimeSource for FakeSource {
    fn query(
        &self,
        server: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Sample, SntpError>> + Send {
        std::future::ready(self.answer(server, timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(unix_secs, nanos)
    }

    fn close(a: SystemTime, b: SystemTime, within: Duration) -> bool {
        Offset::between(a, b).magnitude() <= within
    }

    #[test]
    fn timestamps_round_trip() {
        for time in [
            at(1_700_000_000, 123_456_789),
            // After the 2036 era rollover.
            at(2_208_988_800 + 1_000, 500_000_000),
            at(0, 0),
        ] {
            let ntp = NtpTimestamp::from_system_time(time);
            let back = NtpTimestamp::from_bytes(ntp.to_bytes()).to_system_time();
            assert!(
                close(time, back, Duration::from_nanos(2)),
                "{time:?} → {back:?}"
            );
        }
    }

    #[test]
    fn timestamps_match_the_ntp_epoch() {
        let epoch = NtpTimestamp::from_system_time(SystemTime::UNIX_EPOCH);
        assert_eq!(
            epoch,
            NtpTimestamp {
                seconds: 2_208_988_800,
                fraction: 0
            }
        );
        let half = NtpTimestamp::from_system_time(at(0, 500_000_000));
        assert_eq!(half.fraction, 0x8000_0000);
        // 2036-02-07T06:28:16Z is second 0 of era 1.
        let rollover = NtpTimestamp::from_system_time(at(2_085_978_496, 0));
        assert_eq!(rollover.seconds, 0);
        assert_eq!(rollover.to_system_time(), at(2_085_978_496, 0));
        assert_eq!(
            NtpTimestamp::from_bytes([0x83, 0xAA, 0x7E, 0x80, 0x80, 0, 0, 0]),
            NtpTimestamp {
                seconds: 2_208_988_800,
                fraction: 0x8000_0000
            }
        );
    }

    #[test]
    fn the_request_is_a_v4_client_packet() {
        let t1 = NtpTimestamp {
            seconds: 0x0102_0304,
            fraction: 0x0506_0708,
        };
        let packet = request(t1);
        assert_eq!(packet.len(), 48);
        assert_eq!(packet[0], 0x23, "LI 0, VN 4, mode 3");
        assert_eq!(&packet[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(packet[1..40].iter().all(|&b| b == 0));
    }

    /// A server reply to `sent`, with receive/transmit times `t2`/`t3`.
    fn reply_packet(
        first: u8,
        stratum: u8,
        sent: NtpTimestamp,
        t2: SystemTime,
        t3: SystemTime,
    ) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = first;
        p[1] = stratum;
        // Root delay 1/16 s, dispersion 1/32 s; set a minute before.
        p[4..8].copy_from_slice(&0x0000_1000_u32.to_be_bytes());
        p[8..12].copy_from_slice(&0x0000_0800_u32.to_be_bytes());
        p[12..16].copy_from_slice(b"GPS\0");
        let reference = t2.checked_sub(Duration::from_secs(60)).expect("reference");
        p[16..24].copy_from_slice(&NtpTimestamp::from_system_time(reference).to_bytes());
        p[24..32].copy_from_slice(&sent.to_bytes());
        p[32..40].copy_from_slice(&NtpTimestamp::from_system_time(t2).to_bytes());
        p[40..48].copy_from_slice(&NtpTimestamp::from_system_time(t3).to_bytes());
        p
    }

    const SERVER_V4: u8 = 0x24; // LI 0, VN 4, mode 4

    #[test]
    fn replies_are_checked() {
        let t1 = at(1_700_000_000, 0);
        let sent = NtpTimestamp::from_system_time(t1);
        let t2 = at(1_700_000_001, 0);
        let good = reply_packet(SERVER_V4, 2, sent, t2, t2);
        let reply = parse_reply(&good, sent).expect("valid");
        assert_eq!(reply.stratum, 2);
        assert_eq!(reply.mode, 4);
        assert_eq!(reply.version, 4);
        assert_eq!(reply.reference_id, *b"GPS\0");

        assert_eq!(
            parse_reply(&good[..47], sent),
            Err(ReplyError::TooShort(47))
        );
        let other = NtpTimestamp::from_system_time(at(1_600_000_000, 0));
        assert_eq!(parse_reply(&good, other), Err(ReplyError::Mismatch));
        let client = reply_packet(0x23, 2, sent, t2, t2);
        assert_eq!(parse_reply(&client, sent), Err(ReplyError::Mode(3)));
        let v7 = reply_packet(0x3c, 2, sent, t2, t2);
        assert_eq!(parse_reply(&v7, sent), Err(ReplyError::Version(7)));
        let mut kod = reply_packet(SERVER_V4, 0, sent, t2, t2);
        kod[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            parse_reply(&kod, sent),
            Err(ReplyError::KissOfDeath("RATE".into()))
        );
        let alarm = reply_packet(0xe4, 2, sent, t2, t2);
        assert_eq!(parse_reply(&alarm, sent), Err(ReplyError::Unsynchronized));
        let s16 = reply_packet(SERVER_V4, 16, sent, t2, t2);
        assert_eq!(parse_reply(&s16, sent), Err(ReplyError::Stratum(16)));
        let mut empty = good.clone();
        empty[40..48].fill(0);
        assert_eq!(parse_reply(&empty, sent), Err(ReplyError::MissingTimestamp));
        // NTPv3 servers are fine.
        let v3 = reply_packet(0x1c, 3, sent, t2, t2);
        assert!(parse_reply(&v3, sent).is_ok());
        assert_eq!(reply.root_delay, Duration::from_nanos(62_500_000));
        assert_eq!(reply.root_dispersion, Duration::from_nanos(31_250_000));
        // A packet that does not echo the request is ignored before
        // anything else is looked at, a client packet included.
        assert_eq!(parse_reply(&client, other), Err(ReplyError::Mismatch));
        // As upstream's client checks: the server's clock ran backwards ...
        let backwards = reply_packet(SERVER_V4, 2, sent, t2, at(1_700_000_000, 0));
        assert_eq!(parse_reply(&backwards, sent), Err(ReplyError::Backwards));
        // ... was set after it answered, or not for two days ...
        let mut future = good.clone();
        future[16..24]
            .copy_from_slice(&NtpTimestamp::from_system_time(at(1_700_000_100, 0)).to_bytes());
        assert_eq!(
            parse_reply(&future, sent),
            Err(ReplyError::ReferenceAfterTransmit)
        );
        let mut unset = good.clone();
        unset[16..24].fill(0);
        assert_eq!(
            parse_reply(&unset, sent),
            Err(ReplyError::ReferenceAfterTransmit)
        );
        let mut stale = good.clone();
        stale[16..24]
            .copy_from_slice(&NtpTimestamp::from_system_time(at(1_699_800_000, 0)).to_bytes());
        assert_eq!(
            parse_reply(&stale, sent),
            Err(ReplyError::Stale(Duration::from_secs(200_001)))
        );
        // ... or is too far from its reference.
        let mut far = good.clone();
        far[4..8].copy_from_slice(&0x0010_0000_u32.to_be_bytes());
        far[8..12].copy_from_slice(&0x0008_0001_u32.to_be_bytes());
        assert!(matches!(
            parse_reply(&far, sent),
            Err(ReplyError::RootDistance(_))
        ));
        let mut negative_delay = good.clone();
        negative_delay[4..8].copy_from_slice(&0xFFFF_0000_u32.to_be_bytes());
        assert_eq!(
            parse_reply(&negative_delay, sent).map(|r| r.root_delay),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn offset_and_round_trip_follow_the_standard_formula() {
        // Server 1 s ahead; 10 ms each way; 1 ms inside the server.
        let t1 = at(1_700_000_000, 0);
        let t2 = at(1_700_000_001, 10_000_000);
        let t3 = at(1_700_000_001, 11_000_000);
        let elapsed = Duration::from_millis(21);
        let sent = NtpTimestamp::from_system_time(t1);
        let reply = parse_reply(&reply_packet(SERVER_V4, 1, sent, t2, t3), sent).expect("reply");
        let address = SocketAddr::from(([127, 0, 0, 1], 123));
        let sample = sample_from("ntp.example", address, t1, elapsed, &reply);
        assert_eq!(sample.server, "ntp.example");
        assert_eq!(sample.address, address);
        assert_eq!(sample.stratum, 1);
        assert_eq!(sample.leap, Leap::None);
        // A leap second announced (LI 1: insert, LI 2: delete) is passed on.
        for (first, leap) in [(0x64, Leap::Insert), (0xa4, Leap::Delete)] {
            let announcing =
                parse_reply(&reply_packet(first, 1, sent, t2, t3), sent).expect("reply");
            assert_eq!(
                sample_from("ntp.example", address, t1, elapsed, &announcing).leap,
                leap
            );
        }
        // ((t2-t1) + (t3-t4)) / 2 = (1.010 + 0.990) / 2 = 1.000 s
        assert!(
            (sample.offset.as_nanos() - 1_000_000_000).abs() < 10,
            "{}",
            sample.offset
        );
        // (t4-t1) - (t3-t2) = 0.021 - 0.001 = 0.020 s
        assert!(
            sample.round_trip.abs_diff(Duration::from_millis(20)) < Duration::from_nanos(10),
            "{:?}",
            sample.round_trip
        );
        assert_eq!(sample.local_time, t1 + elapsed);
        assert!(close(
            sample.remote_time,
            t1 + elapsed + Duration::from_secs(1),
            Duration::from_nanos(10)
        ));
    }

    #[test]
    fn negative_offsets() {
        // Server 2 s behind, instant network.
        let t1 = at(1_700_000_010, 0);
        let t2 = at(1_700_000_008, 0);
        let sent = NtpTimestamp::from_system_time(t1);
        let reply = parse_reply(&reply_packet(SERVER_V4, 1, sent, t2, t2), sent).expect("reply");
        let sample = sample_from(
            "s",
            SocketAddr::from(([127, 0, 0, 1], 123)),
            t1,
            Duration::ZERO,
            &reply,
        );
        assert!(
            (sample.offset.as_nanos() + 2_000_000_000).abs() < 10,
            "{}",
            sample.offset
        );
        assert_eq!(sample.round_trip, Duration::ZERO);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("time.cloudflare.com"),
            Ok(("time.cloudflare.com", 123))
        );
        assert_eq!(split_host_port("127.0.0.1:1123"), Ok(("127.0.0.1", 1123)));
        assert_eq!(split_host_port("[::1]:1123"), Ok(("::1", 1123)));
        assert_eq!(split_host_port("[::1]"), Ok(("::1", 123)));
        assert_eq!(split_host_port("fe80::1"), Ok(("fe80::1", 123)));
        assert_eq!(split_host_port(" pool.ntp.org "), Ok(("pool.ntp.org", 123)));
        assert!(split_host_port("").is_err());
        assert!(split_host_port(":123").is_err());
        assert!(split_host_port("host:0").is_err());
        assert!(split_host_port("host:http").is_err());
        assert!(split_host_port("[::1").is_err());
        assert!(split_host_port("[::1]123").is_err());
    }

    /// A one-shot NTP responder on localhost whose clock is `ahead` of ours.
    async fn responder(ahead: Offset) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                if len < 48 {
                    continue;
                }
                let mut originate = [0u8; 8];
                originate.copy_from_slice(&buf[40..48]);
                let now = ahead.apply(SystemTime::now());
                let reply =
                    reply_packet(SERVER_V4, 3, NtpTimestamp::from_bytes(originate), now, now);
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn query_against_a_local_responder() {
        let address = responder(Offset::from_secs(3)).await;
        let server = address.to_string();
        let sample = query(&server, Duration::from_secs(2))
            .await
            .expect("answer");
        assert_eq!(sample.server, server);
        assert_eq!(sample.address, address);
        assert_eq!(sample.stratum, 3);
        let error = (sample.offset.as_nanos() - 3_000_000_000).abs();
        assert!(error < 50_000_000, "offset {}", sample.offset);
        assert!(sample.round_trip < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error_naming_the_server() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let server = format!("127.0.0.1:{port}");
        let started = Instant::now();
        let err = query(&server, Duration::from_secs(1))
            .await
            .expect_err("nothing listens");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.server(), server);
        assert!(err.to_string().contains(&server), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let server = silent.local_addr().expect("addr").to_string();
        let started = Instant::now();
        let err = query(&server, Duration::from_millis(300))
            .await
            .expect_err("no answer");
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(290));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(silent);
    }

    #[tokio::test]
    async fn bad_server_strings_are_rejected_before_any_io() {
        let err = query("host:notaport", Duration::from_secs(1))
            .await
            .expect_err("bad");
        assert!(matches!(err, SntpError::BadServer { .. }), "{err}");
        let err = query("/dev/ptp0", Duration::from_secs(1))
            .await
            .expect_err("a PTP device");
        assert!(
            matches!(err, SntpError::BadServer { .. }) && err.to_string().contains("PTP device"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_fake_source_follows_its_script() {
        let source = FakeSource::new();
        source.push("a", FakeAnswer::Timeout);
        source.push("a", FakeAnswer::Offset(Offset::from_millis(7)));
        let t = Duration::from_secs(1);
        assert!(
            source
                .query("a", t)
                .await
                .expect_err("timeout")
                .is_timeout()
        );
        assert_eq!(
            source.query("a", t).await.expect("answer").offset,
            Offset::from_millis(7)
        );
        // The last answer repeats.
        assert!(source.query("a", t).await.is_ok());
        assert!(source.query("b", t).await.is_err());
        assert_eq!(source.queries(), vec!["a", "a", "a", "b"]);
    }
}
