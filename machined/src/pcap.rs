//! PacketCapture: the packets of one interface, streamed as a pcap file.
//!
//! The socket is an `AF_PACKET` raw socket made with no protocol, so it
//! receives nothing until it is bound. The caller's classic BPF program is
//! attached and promiscuous membership added first; only then is the socket
//! bound to the interface for every protocol, so no packet the filter
//! refuses is ever queued. On a loopback interface outgoing packets are
//! ignored: each one comes back as incoming, and would show twice.
//!
//! Packets are written in the classic pcap format (microsecond timestamps,
//! taken as each packet is read) and sent in chunks: everything queued goes
//! out at once, up to [`CHUNK`] bytes, so a busy link costs few messages and
//! a quiet one still streams packet by packet. Promiscuous membership ends
//! with the socket, so a capture leaves the interface as it found it
//! however the capture ends.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Snap length when the request gives none (upstream's default frame size).
pub const DEFAULT_SNAP_LEN: u32 = 4096;
/// Largest snap length (tcpdump's).
pub const MAX_SNAP_LEN: u32 = 262_144;
/// Longest program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_FILTER: usize = 4096;
/// Bytes gathered before a chunk is sent.
pub const CHUNK: usize = 64 * 1024;

/// pcap link types (tcpdump's `-y EN10MB` and `-y RAW`).
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
/// `ARPHRD_*` values in `/sys/class/net/<link>/type`.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_NONE: u16 = 0xfffe;

/// One classic BPF instruction, as `tcpdump -dd` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    /// Operation.
    pub code: u16,
    /// Jump if true.
    pub jt: u8,
    /// Jump if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The link.
    pub interface: String,
    /// Also packets not addressed to this host.
    pub promiscuous: bool,
    /// Bytes kept of each packet.
    pub snap_len: u32,
    /// Packets kept (empty: every packet).
    pub filter: Vec<Instruction>,
}

/// Why a capture cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// No such link.
    #[error("interface {0:?} not found")]
    NotFound(String),
    /// Not a link name.
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// A link whose frames pcap cannot describe here.
    #[error("unsupported link type {arphrd} of interface {interface:?}")]
    UnsupportedLink {
        /// The link.
        interface: String,
        /// Its `ARPHRD_*` type.
        arphrd: u16,
    },
    /// Snap length out of range.
    #[error("snap length {0} is larger than {MAX_SNAP_LEN}")]
    SnapLen(u32),
    /// An instruction field out of range.
    #[error("BPF instruction {index}: {field} {value} does not fit")]
    BadInstruction {
        /// Its position.
        index: usize,
        /// The field.
        field: &'static str,
        /// The value given.
        value: u32,
    },
    /// Too many instructions.
    #[error("BPF filter of {0} instructions is longer than {MAX_FILTER}")]
    FilterTooLong(usize),
    /// The kernel's verifier refused the program.
    #[error("the kernel refused the BPF filter: {0}")]
    FilterRefused(io::Error),
    /// machined may not open packet sockets (container mode without
    /// `CAP_NET_RAW`).
    #[error("capturing on {interface:?} needs CAP_NET_RAW, which machined lacks here")]
    NotPermitted {
        /// The link.
        interface: String,
    },
    /// Anything else the socket refused.
    #[error("{op} on {interface:?}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The link.
        interface: String,
        /// The cause.
        source: io::Error,
    },
}

impl Capture {
    /// The capture a wire request asks for; a snap length of 0 means
    /// [`DEFAULT_SNAP_LEN`].
    ///
    /// # Errors
    /// A snap length or an instruction out of range, or too long a filter.
    pub fn from_wire(req: api::machine::PacketCaptureRequest) -> Result<Capture, PcapError> {
        let snap_len = match req.snap_len {
            0 => DEFAULT_SNAP_LEN,
            n if n > MAX_SNAP_LEN => return Err(PcapError::SnapLen(n)),
            n => n,
        };
        if req.bpf_filter.len() > MAX_FILTER {
            return Err(PcapError::FilterTooLong(req.bpf_filter.len()));
        }
        let filter = req
            .bpf_filter
            .iter()
            .enumerate()
            .map(|(index, i)| {
                let bad = |field, value| PcapError::BadInstruction {
                    index,
                    field,
                    value,
                };
                Ok(Instruction {
                    code: u16::try_from(i.op).map_err(|_| bad("op", i.op))?,
                    jt: u8::try_from(i.jt).map_err(|_| bad("jt", i.jt))?,
                    jf: u8::try_from(i.jf).map_err(|_| bad("jf", i.jf))?,
                    k: i.k,
                })
            })
            .collect::<Result<_, PcapError>>()?;
        Ok(Capture {
            interface: req.interface,
            promiscuous: req.promiscuous,
            snap_len,
            filter,
        })
    }
}

/// A link as the capture sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Its pcap link type.
    pub pcap_type: u32,
    /// A loopback link (each packet passes twice).
    pub loopback: bool,
}

/// What `interface` is, from its `ARPHRD_*` type under `sys_class_net`
/// (`/sys/class/net`): Ethernet frames for Ethernet and loopback links, raw
/// IP for links without a link-layer header (WireGuard, tun).
///
/// # Errors
/// A bad name, no such link, or a link type pcap cannot describe here.
pub fn link(sys_class_net: &Path, interface: &str) -> Result<Link, PcapError> {
    if interface.is_empty()
        || interface.len() > 15
        || interface.contains(['/', '\0'])
        || interface == "."
        || interface == ".."
    {
        return Err(PcapError::BadName(interface.to_owned()));
    }
    let path = sys_class_net.join(interface).join("type");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PcapError::NotFound(interface.to_owned()));
        }
        Err(source) => {
            return Err(PcapError::Io {
                op: "reading the link type",
                interface: interface.to_owned(),
                source,
            });
        }
    };
    let arphrd: u16 = text.trim().parse().map_err(|_| PcapError::Io {
        op: "reading the link type",
        interface: interface.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{:?}", text.trim())),
    })?;
    let pcap_type = match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => LINKTYPE_ETHERNET,
        ARPHRD_NONE => LINKTYPE_RAW,
        _ => {
            return Err(PcapError::UnsupportedLink {
                interface: interface.to_owned(),
                arphrd,
            });
        }
    };
    Ok(Link {
        pcap_type,
        loopback: arphrd == ARPHRD_LOOPBACK,
    })
}

/// The pcap file header (classic format, microsecond timestamps).
#[must_use]
pub fn file_header(snap_len: u32, link_type: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay 0.
    h[16..20].copy_from_slice(&snap_len.to_le_bytes());
    h[20..24].copy_from_slice(&link_type.to_le_bytes());
    h
}

/// Appends one packet record: `data` as captured, `original` the length
/// it had on the wire.
pub fn push_record(out: &mut Vec<u8>, at: SystemTime, data: &[u8], original: usize) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&secs.to_le_bytes());
    out.extend_from_slice(&since.subsec_micros().to_le_bytes());
    out.extend_from_slice(&len(data.len()).to_le_bytes());
    out.extend_from_slice(&len(original).to_le_bytes());
    out.extend_from_slice(data);
}

/// Opens the capture and streams the pcap file: the header, then packets
/// until the receiver is dropped or the socket fails (the error is then the
/// last item).
///
/// # Errors
/// The link is missing or unsupported, the filter is refused, or machined
/// may not capture.
pub fn start(
    capture: Capture,
    sys_class_net: &Path,
) -> Result<mpsc::Receiver<Result<Bytes, PcapError>>, PcapError> {
    let link = link(sys_class_net, &capture.interface)?;
    let socket = open(&capture, link.loopback)?;
    let (tx, rx) = mpsc::channel(16);
    let name = capture.interface.clone();
    // Owned by its channel: it ends when the caller goes away.
    tokio::spawn(async move {
        let mut out = Vec::with_capacity(CHUNK);
        out.extend_from_slice(&file_header(capture.snap_len, link.pcap_type));
        let result = tokio::select! {
            r = pump(&socket, capture.snap_len, &tx, &mut out) => r,
            () = tx.closed() => Ok(()),
        };
        if let Err(source) = result {
            let _ = tx
                .send(Err(PcapError::Io {
                    op: "capturing",
                    interface: name,
                    source,
                }))
                .await;
        }
    });
    Ok(rx)
}

/// Reads packets into `out` and sends it whenever the socket has no more
/// queued or `out` holds a chunk.
async fn pump(
    socket: &AsyncFd<OwnedFd>,
    snap_len: u32,
    tx: &mpsc::Sender<Result<Bytes, PcapError>>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut buf = vec![0u8; usize::try_from(snap_len).unwrap_or(usize::MAX)];
    // The header goes out at once: the caller knows the capture runs.
    if tx.send(Ok(Bytes::from(std::mem::take(out)))).await.is_err() {
        return Ok(());
    }
    loop {
        let mut guard = socket.readable().await?;
        loop {
            match guard.try_io(|fd| {
                rustix::net::recv(fd.get_ref(), &mut buf[..], RecvFlags::TRUNC)
                    .map_err(io::Error::from)
            }) {
                Ok(Ok((kept, original))) => {
                    push_record(out, SystemTime::now(), &buf[..kept], original);
                    if out.len() >= CHUNK {
                        break;
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => break,
            }
        }
        if !out.is_empty() {
            let chunk = Bytes::from(std::mem::replace(out, Vec::with_capacity(CHUNK)));
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The packet socket: filter and membership set before it is bound.
fn open(capture: &Capture, loopback: bool) -> Result<AsyncFd<OwnedFd>, PcapError> {
    let interface = &capture.interface;
    let io_err = |op| {
        move |e: io::Error| match e.kind() {
            io::ErrorKind::PermissionDenied => PcapError::NotPermitted {
                interface: interface.clone(),
            },
            _ => PcapError::Io {
                op,
                interface: interface.clone(),
                source: e,
            },
        }
    };
    // No protocol: nothing is queued until bind names one.
    let fd = rustix::net::socket_with(
        AddressFamily::PACKET,
        SocketType::RAW,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_err("opening a packet socket")(e.into()))?;
    if !capture.filter.is_empty() {
        let program: Vec<socket2::SockFilter> = capture
            .filter
            .iter()
            .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        socket2::SockRef::from(&fd)
            .attach_filter(&program)
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidInput => PcapError::FilterRefused(e),
                _ => io_err("attaching the BPF filter")(e),
            })?;
    }
    let index = rustix::net::netdevice::name_to_index(fd.as_fd(), interface).map_err(|e| {
        if e == rustix::io::Errno::NODEV {
            PcapError::NotFound(interface.clone())
        } else {
            io_err("finding the link")(e.into())
        }
    })?;
    let index = i32::try_from(index).map_err(|_| PcapError::NotFound(interface.clone()))?;
    if loopback {
        sys::ignore_outgoing(&fd).map_err(io_err("ignoring outgoing packets"))?;
    }
    if capture.promiscuous {
        sys::add_promiscuous(&fd, index).map_err(io_err("entering promiscuous mode"))?;
    }
    sys::bind_all(&fd, index).map_err(io_err("binding the packet socket"))?;
    sys::register(fd).map_err(io_err("registering the packet socket"))
}

/// The packet socket options rustix and socket2 have no wrappers for.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd as _, OwnedFd};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// `ETH_P_ALL` in network byte order, as `sll_protocol` wants it.
    const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

    fn setsockopt<T>(
        fd: &OwnedFd,
        level: libc::c_int,
        name: libc::c_int,
        value: &T,
    ) -> io::Result<()> {
        let len = libc::socklen_t::try_from(size_of::<T>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `value` points to a live, initialized `T` of `len` bytes
        // for the length of the call, and the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(value).cast(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Registers the socket with the runtime's reactor, for reading only.
    pub(super) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: the AsyncFd owns `fd`, whose `as_raw_fd` is always the
        // same descriptor, open until the AsyncFd drops it.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    }

    /// `PACKET_IGNORE_OUTGOING` (Linux 4.20).
    pub(super) fn ignore_outgoing(fd: &OwnedFd) -> io::Result<()> {
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32)
    }

    /// `PACKET_ADD_MEMBERSHIP` with `PACKET_MR_PROMISC`: dropped with the
    /// socket, unlike setting `IFF_PROMISC` on the link.
    pub(super) fn add_promiscuous(fd: &OwnedFd, index: i32) -> io::Result<()> {
        let mreq = libc::packet_mreq {
            mr_ifindex: index,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
    }

    /// Binds to link `index`, every protocol.
    pub(super) fn bind_all(fd: &OwnedFd, index: i32) -> io::Result<()> {
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_ALL_BE,
            sll_ifindex: index,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `addr` is a live, initialized `sockaddr_ll` of `len`
        // bytes for the length of the call; the kernel only reads it.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::machine::{BpfInstruction, PacketCaptureRequest};

    fn req(snap_len: u32, filter: Vec<BpfInstruction>) -> PacketCaptureRequest {
        PacketCaptureRequest {
            interface: "eth0".into(),
            promiscuous: true,
            snap_len,
            bpf_filter: filter,
        }
    }

    #[test]
    fn from_wire_defaults_and_checks() {
        let c = Capture::from_wire(req(0, vec![])).expect("capture");
        assert_eq!(c.snap_len, DEFAULT_SNAP_LEN);
        assert!(c.promiscuous);
        let one = BpfInstruction {
            op: 0x6,
            jt: 0,
            jf: 0,
            k: 0x40000,
        };
        let c = Capture::from_wire(req(1500, vec![one])).expect("capture");
        assert_eq!(
            c.filter,
            vec![Instruction {
                code: 6,
                jt: 0,
                jf: 0,
                k: 0x40000
            }]
        );
        assert!(matches!(
            Capture::from_wire(req(MAX_SNAP_LEN + 1, vec![])),
            Err(PcapError::SnapLen(_))
        ));
        let bad = BpfInstruction { jf: 256, ..one };
        let e = Capture::from_wire(req(0, vec![one, bad])).expect_err("jf 256");
        assert_eq!(e.to_string(), "BPF instruction 1: jf 256 does not fit");
        let e = Capture::from_wire(req(0, vec![one; MAX_FILTER + 1])).expect_err("long");
        assert!(matches!(e, PcapError::FilterTooLong(4097)));
    }

    #[test]
    fn link_types_from_sysfs() {
        let dir = tempfile::tempdir().expect("tmp");
        for (name, t) in [
            ("eth0", "1\n"),
            ("lo", "772\n"),
            ("wg0", "65534\n"),
            ("ib0", "32\n"),
        ] {
            std::fs::create_dir(dir.path().join(name)).expect("dir");
            std::fs::write(dir.path().join(name).join("type"), t).expect("type");
        }
        let l = |name| link(dir.path(), name).map(|l| (l.pcap_type, l.loopback));
        assert_eq!(l("eth0").expect("eth0"), (LINKTYPE_ETHERNET, false));
        assert_eq!(l("lo").expect("lo"), (LINKTYPE_ETHERNET, true));
        assert_eq!(l("wg0").expect("wg0"), (LINKTYPE_RAW, false));
        assert_eq!(
            link(dir.path(), "ib0").expect_err("ib0").to_string(),
            "unsupported link type 32 of interface \"ib0\""
        );
        assert!(matches!(
            link(dir.path(), "eth9"),
            Err(PcapError::NotFound(_))
        ));
        for bad in ["", "../etc", ".", "a-name-far-too-long"] {
            assert!(
                matches!(link(dir.path(), bad), Err(PcapError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pcap_layout() {
        let h = file_header(4096, LINKTYPE_RAW);
        assert_eq!(&h[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 2);
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), 4);
        assert_eq!(u32::from_le_bytes(h[16..20].try_into().expect("4")), 4096);
        assert_eq!(u32::from_le_bytes(h[20..24].try_into().expect("4")), 101);
        let mut out = Vec::new();
        let at = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        push_record(&mut out, at, b"abc", 60);
        let word = |i: usize| u32::from_le_bytes(out[i..i + 4].try_into().expect("4"));
        assert_eq!(word(0), 1_700_000_000);
        assert_eq!(word(4), 123_456);
        assert_eq!(word(8), 3);
        assert_eq!(word(12), 60);
        assert_eq!(&out[16..], b"abc");
    }
}
