//! The node's sockets, from the kernel's tables in `/proc/net` (the
//! `Netstat` call).
//!
//! `/proc/net/{tcp,udp,udplite,raw}{,6}` share one line format: slot,
//! local and remote address (hex, each 32-bit word in host byte order) and
//! port, state, queues, timer, retransmits, uid, timeout and inode, then
//! the reference count and the kernel address of the socket. Which process
//! holds a socket is found by its inode among the `socket:[inode]` links in
//! `/proc/<pid>/fd`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// A socket table in `/proc/net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `tcp`
    Tcp,
    /// `tcp6`
    Tcp6,
    /// `udp`
    Udp,
    /// `udp6`
    Udp6,
    /// `udplite`
    UdpLite,
    /// `udplite6`
    UdpLite6,
    /// `raw`
    Raw,
    /// `raw6`
    Raw6,
}

impl Proto {
    /// Every table, in upstream's order.
    pub const ALL: [Proto; 8] = [
        Proto::Tcp,
        Proto::Tcp6,
        Proto::Udp,
        Proto::Udp6,
        Proto::UdpLite,
        Proto::UdpLite6,
        Proto::Raw,
        Proto::Raw6,
    ];

    /// The table's file name, which is also the protocol's name on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
            Proto::UdpLite => "udplite",
            Proto::UdpLite6 => "udplite6",
            Proto::Raw => "raw",
            Proto::Raw6 => "raw6",
        }
    }

    fn v6(self) -> bool {
        matches!(
            self,
            Proto::Tcp6 | Proto::Udp6 | Proto::UdpLite6 | Proto::Raw6
        )
    }
}

/// Which sockets to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every socket.
    All,
    /// Sockets with a peer.
    Connected,
    /// Sockets without a remote address or port: listening TCP, bound UDP
    /// and raw sockets.
    Listening,
}

/// One socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// Its table.
    pub proto: Proto,
    /// Local address and port (for raw sockets, the protocol number).
    pub local: SocketAddr,
    /// Remote address and port; unspecified and 0 without a peer.
    pub remote: SocketAddr,
    /// The kernel's state number (TCP's numbering; 10 is LISTEN).
    pub state: u32,
    /// Bytes waiting to be sent.
    pub tx_queue: u64,
    /// Bytes waiting to be read.
    pub rx_queue: u64,
    /// Which timer runs (0 none, 1 retransmit, 2 keepalive, 3 time-wait, 4 probe).
    pub timer: u32,
    /// Jiffies until it fires.
    pub timer_when: u64,
    /// Unanswered retransmits or probes.
    pub retransmits: u64,
    /// The owner's user id.
    pub uid: u32,
    /// Unanswered zero-window probes.
    pub timeout: u64,
    /// The socket's inode.
    pub inode: u64,
    /// References to the socket.
    pub refs: u64,
    /// The socket's kernel address (0 unless the reader may see it).
    pub pointer: u64,
}

impl Socket {
    /// Whether the socket has a peer: a remote address and port
    /// (upstream's test).
    #[must_use]
    pub fn connected(&self) -> bool {
        self.remote.port() != 0 && !self.remote.ip().is_unspecified()
    }

    /// Whether it has neither a remote address nor port: listening TCP,
    /// bound UDP and raw sockets (upstream's test).
    #[must_use]
    pub fn listening(&self) -> bool {
        self.remote.port() == 0 && self.remote.ip().is_unspecified()
    }
}

/// Why the tables could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetstatError {
    /// A table could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The table.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not in the kernel's format.
    #[error("{}: line {line}: {reason}", .path.display())]
    Format {
        /// The table.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The sockets of `protos` in the tables under `proc_net` that pass
/// `filter`. A table the kernel does not have (no IPv6, no UDP-Lite) is
/// empty.
///
/// # Errors
/// A table cannot be read or has a line this parser does not understand.
pub fn sockets(
    proc_net: &Path,
    protos: &[Proto],
    filter: Filter,
) -> Result<Vec<Socket>, NetstatError> {
    let mut out = Vec::new();
    for &proto in protos {
        let path = proc_net.join(proto.name());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(NetstatError::Read { path, source }),
        };
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let socket = parse_line(proto, line).map_err(|reason| NetstatError::Format {
                path: path.clone(),
                line: i + 1,
                reason,
            })?;
            let keep = match filter {
                Filter::All => true,
                Filter::Connected => socket.connected(),
                Filter::Listening => socket.listening(),
            };
            if keep {
                out.push(socket);
            }
        }
    }
    Ok(out)
}

/// One table line.
fn parse_line(proto: Proto, line: &str) -> Result<Socket, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 12 {
        return Err(format!("{} fields, expected at least 12", fields.len()));
    }
    let hex = |text: &str, what: &str| {
        u64::from_str_radix(text, 16).map_err(|_| format!("{what} {text:?} is not hex"))
    };
    let dec = |text: &str, what: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("{what} {text:?} is not a number"))
    };
    let local = parse_addr(fields[1], proto.v6())?;
    let remote = parse_addr(fields[2], proto.v6())?;
    let (tx, rx) = pair(fields[4], "queues")?;
    let (timer, when) = pair(fields[5], "timer")?;
    let small = |v: u64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} too large"));
    Ok(Socket {
        proto,
        local,
        remote,
        state: small(hex(fields[3], "state")?, "state")?,
        tx_queue: hex(tx, "tx_queue")?,
        rx_queue: hex(rx, "rx_queue")?,
        timer: small(hex(timer, "timer")?, "timer")?,
        timer_when: hex(when, "timer expiry")?,
        retransmits: hex(fields[6], "retransmits")?,
        uid: small(dec(fields[7], "uid")?, "uid")?,
        timeout: dec(fields[8], "timeout")?,
        inode: dec(fields[9], "inode")?,
        refs: dec(fields[10], "reference count")?,
        pointer: hex(fields[11], "socket address")?,
    })
}

/// `A:B` split at the colon.
fn pair<'a>(text: &'a str, what: &str) -> Result<(&'a str, &'a str), String> {
    text.split_once(':')
        .ok_or_else(|| format!("{what} {text:?} has no ':'"))
}

/// `0100007F:1F90` (or 32 hex digits for IPv6): each 32-bit word of the
/// address in host byte order, then the port.
/// An address as upstream's netstat gives it (Go's `net.IP.String()`): an
/// IPv4-mapped IPv6 address as the IPv4 address it maps.
#[must_use]
pub fn shown_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn parse_addr(text: &str, v6: bool) -> Result<SocketAddr, String> {
    let (addr, port) = text
        .split_once(':')
        .ok_or_else(|| format!("address {text:?} has no ':'"))?;
    let port = u16::from_str_radix(port, 16).map_err(|_| format!("port {port:?} is not hex"))?;
    let words = |count: usize| -> Result<Vec<[u8; 4]>, String> {
        if addr.len() != count * 8 {
            return Err(format!("address {addr:?} is not {} hex digits", count * 8));
        }
        (0..count)
            .map(|i| {
                u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16)
                    .map(u32::to_ne_bytes)
                    .map_err(|_| format!("address {addr:?} is not hex"))
            })
            .collect()
    };
    let ip = if v6 {
        let mut octets = [0u8; 16];
        for (i, word) in words(4)?.into_iter().enumerate() {
            octets[i * 4..i * 4 + 4].copy_from_slice(&word);
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        IpAddr::V4(Ipv4Addr::from(words(1)?[0]))
    };
    Ok(SocketAddr::new(ip, port))
}

/// The process (pid and name) holding each socket inode, from the
/// `socket:[N]` links in `/proc/<pid>/fd`. Processes that exit meanwhile,
/// or whose descriptors cannot be read, are skipped.
#[must_use]
pub fn socket_owners(proc: &Path) -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return owners;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut name = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let name = name.get_or_insert_with(|| {
                std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim_end().to_owned())
                    .unwrap_or_default()
            });
            owners.entry(inode).or_insert_with(|| (pid, name.clone()));
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_read_as_upstream_gives_them() {
        let ip = |s: &str| super::shown_ip(s.parse().expect("ip"));
        assert_eq!(ip("::ffff:10.5.0.1"), "10.5.0.1");
        assert_eq!(ip("::"), "::");
        assert_eq!(ip("fd00::2"), "fd00::2");
        assert_eq!(ip("0.0.0.0"), "0.0.0.0");
    }

    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0200007F:D431 01 0000001A:00000003 02:0000048F 00000002  1000        0 4343 3 ffff8f0e3c6a1d00 20 4 30 10 -1
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1234: 00000000000000000000000001000000:0202 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   102        0 777 2 0000000000000000 0
 1235: B80D0120000000000000000001000000:0035 B80D0120000000000000000002000000:C001 01 00000000:00000000 00:00000000 00000000     0        0 778 2 0000000000000000 0
";

    fn tables() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tcp"), TCP).expect("tcp");
        std::fs::write(dir.path().join("udp6"), UDP6).expect("udp6");
        dir
    }

    #[test]
    fn lines_parse_into_every_field() {
        let dir = tables();
        let all = sockets(dir.path(), &Proto::ALL, Filter::All).expect("parsed");
        assert_eq!(all.len(), 4);
        let conn = &all[1];
        assert_eq!(conn.proto, Proto::Tcp);
        assert_eq!(conn.local, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(conn.remote, "127.0.0.2:54321".parse().unwrap());
        assert_eq!((conn.state, conn.tx_queue, conn.rx_queue), (1, 0x1a, 3));
        assert_eq!(
            (conn.timer, conn.timer_when, conn.retransmits),
            (2, 0x48f, 2)
        );
        assert_eq!(
            (conn.uid, conn.timeout, conn.inode, conn.refs),
            (1000, 0, 4343, 3)
        );
        assert_eq!(conn.pointer, 0xffff_8f0e_3c6a_1d00);
        let udp = &all[2];
        assert_eq!(udp.proto, Proto::Udp6);
        assert_eq!(udp.local, "[::1]:514".parse().unwrap());
        assert_eq!((udp.state, udp.uid, udp.inode, udp.refs), (7, 102, 777, 2));
        // Every 32-bit word in host order, and the words in address order.
        let doc = &all[3];
        assert_eq!(doc.local, "[2001:db8::1]:53".parse().unwrap());
        assert_eq!(doc.remote, "[2001:db8::2]:49153".parse().unwrap());
    }

    #[test]
    fn filters_and_families() {
        let dir = tables();
        let listening = sockets(dir.path(), &Proto::ALL, Filter::Listening).expect("parsed");
        let inodes: Vec<u64> = listening.iter().map(|s| s.inode).collect();
        assert_eq!(inodes, [4242, 777]);
        let connected = sockets(dir.path(), &Proto::ALL, Filter::Connected).expect("parsed");
        let inodes: Vec<u64> = connected.iter().map(|s| s.inode).collect();
        assert_eq!(inodes, [4343, 778]);
        // Only the tables asked for; a table the kernel lacks is empty.
        let v6 = sockets(dir.path(), &[Proto::Udp6, Proto::Raw6], Filter::All).expect("parsed");
        assert_eq!(v6.len(), 2);
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("udp"),
            "header\n   0: 0100007F:zz 00000000:0000 07 0:0 0:0 0 0 0 1 2 0\n",
        )
        .expect("udp");
        let err = sockets(dir.path(), &[Proto::Udp], Filter::All).expect_err("bad");
        let text = err.to_string();
        assert!(
            text.contains("udp: line 2: port \"zz\" is not hex"),
            "{text}"
        );
    }

    #[test]
    fn this_process_owns_its_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let found =
            sockets(Path::new("/proc/net"), &[Proto::Tcp], Filter::Listening).expect("host tables");
        let ours = found
            .iter()
            .find(|s| s.local.port() == port && s.local.ip().is_loopback())
            .expect("our listener is in /proc/net/tcp");
        assert_eq!(ours.state, 10);
        let owners = socket_owners(Path::new("/proc"));
        let (pid, _) = owners.get(&ours.inode).expect("an owner");
        assert_eq!(*pid, std::process::id());
    }
}
