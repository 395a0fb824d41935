//! Kernel uevents: the netlink listener, the message parser and coldplug.
//!
//! The kernel multicasts one datagram per device event on
//! `NETLINK_KOBJECT_UEVENT`, group 1: a header `ACTION@DEVPATH`, then
//! `KEY=VALUE` fields, each NUL-terminated. Messages that libudev
//! re-broadcasts (group 2, starting `libudev\0`) and messages not sent by
//! the kernel (sender port id other than 0) are ignored.
//!
//! Coldplug asks the kernel to replay the `add` events of devices that
//! appeared before we listened, by writing `add` into every `uevent` file
//! under `/sys/devices` (what `udevadm trigger --action=add` does).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::netlink;

/// The kernel's multicast group for uevents.
const KERNEL_GROUP: u32 = 1;
/// Largest message we take (the kernel's own limit is 2 KiB of environment
/// plus the header).
const MAX_MESSAGE: usize = 16 * 1024;
/// Receive buffer asked for, so a coldplug burst does not overflow it.
const RECV_BUFFER: usize = 8 * 1024 * 1024;

/// What happened to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `add`
    Add,
    /// `remove`
    Remove,
    /// `change`
    Change,
    /// `move`
    Move,
    /// `online`
    Online,
    /// `offline`
    Offline,
    /// `bind`
    Bind,
    /// `unbind`
    Unbind,
    /// Anything else.
    Other(String),
}

impl Action {
    /// The action named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Action {
        match s {
            "add" => Action::Add,
            "remove" => Action::Remove,
            "change" => Action::Change,
            "move" => Action::Move,
            "online" => Action::Online,
            "offline" => Action::Offline,
            "bind" => Action::Bind,
            "unbind" => Action::Unbind,
            other => Action::Other(other.to_owned()),
        }
    }

    /// Its name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Change => "change",
            Action::Move => "move",
            Action::Online => "online",
            Action::Offline => "offline",
            Action::Bind => "bind",
            Action::Unbind => "unbind",
            Action::Other(s) => s,
        }
    }
}

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UEvent {
    /// `ACTION`.
    pub action: Action,
    /// `DEVPATH`, below `/sys`.
    pub devpath: String,
    /// `SUBSYSTEM`, e.g. `block`.
    pub subsystem: String,
    /// `DEVNAME`, e.g. `vda1`.
    pub devname: Option<String>,
    /// `DEVTYPE`, e.g. `disk` or `partition`.
    pub devtype: Option<String>,
    /// `SEQNUM`.
    pub seqnum: Option<u64>,
    /// Every field, these included.
    pub env: BTreeMap<String, String>,
}

impl UEvent {
    /// Whether it concerns a block device.
    #[must_use]
    pub fn is_block(&self) -> bool {
        self.subsystem == "block"
    }
}

/// Why a message is not a kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A libudev re-broadcast.
    #[error("uevent message from libudev, not the kernel")]
    Libudev,
    /// No `ACTION@DEVPATH` header.
    #[error("uevent message without an ACTION@DEVPATH header")]
    NoHeader,
    /// No `SUBSYSTEM` field.
    #[error("uevent {header:?} has no SUBSYSTEM")]
    NoSubsystem {
        /// The header.
        header: String,
    },
}

/// Parses one kernel uevent message.
///
/// # Errors
/// The message is a libudev one, or lacks the header or the subsystem.
pub fn parse(msg: &[u8]) -> Result<UEvent, ParseError> {
    if msg.starts_with(b"libudev\0") {
        return Err(ParseError::Libudev);
    }
    let mut fields = msg.split(|&b| b == 0).filter(|f| !f.is_empty());
    let header = String::from_utf8_lossy(fields.next().ok_or(ParseError::NoHeader)?).into_owned();
    let Some((header_action, header_devpath)) = header.split_once('@') else {
        return Err(ParseError::NoHeader);
    };
    let mut env = BTreeMap::new();
    for field in fields {
        let field = String::from_utf8_lossy(field);
        if let Some((key, value)) = field.split_once('=') {
            env.insert(key.to_owned(), value.to_owned());
        }
    }
    let Some(subsystem) = env.get("SUBSYSTEM").cloned() else {
        return Err(ParseError::NoSubsystem { header });
    };
    Ok(UEvent {
        action: Action::parse(env.get("ACTION").map_or(header_action, String::as_str)),
        devpath: env
            .get("DEVPATH")
            .map_or(header_devpath, String::as_str)
            .to_owned(),
        subsystem,
        devname: env.get("DEVNAME").cloned(),
        devtype: env.get("DEVTYPE").cloned(),
        seqnum: env.get("SEQNUM").and_then(|s| s.parse().ok()),
        env,
    })
}

/// Errors of the uevent socket.
#[derive(Debug, thiserror::Error)]
pub enum UEventError {
    /// The socket could not be created.
    #[error("opening the kernel uevent netlink socket: {0}")]
    Open(#[source] std::io::Error),
    /// The socket could not join the kernel's group.
    #[error("binding the kernel uevent netlink socket to group 1: {0}")]
    Bind(#[source] std::io::Error),
    /// Receiving failed (`ENOBUFS`: events were lost).
    #[error("receiving a kernel uevent: {0}")]
    Receive(#[source] std::io::Error),
}

/// The stream of uevents (or receive errors) from [`UEventSocket::spawn`].
pub type Events = tokio::sync::mpsc::Receiver<Result<UEvent, UEventError>>;

/// A blocking `NETLINK_KOBJECT_UEVENT` socket joined to the kernel's group.
#[derive(Debug)]
pub struct UEventSocket {
    fd: OwnedFd,
}

impl UEventSocket {
    /// Opens the socket.
    ///
    /// # Errors
    /// The socket cannot be created or bound (not Linux, or no permission).
    pub fn open() -> Result<UEventSocket, UEventError> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::KOBJECT_UEVENT),
        )
        .map_err(|e| UEventError::Open(e.into()))?;
        // Beyond rmem_max when privileged, else as much as allowed.
        if sockopt::set_socket_recv_buffer_size_force(&fd, RECV_BUFFER).is_err() {
            let _ = sockopt::set_socket_recv_buffer_size(&fd, RECV_BUFFER);
        }
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, KERNEL_GROUP))
            .map_err(|e| UEventError::Bind(e.into()))?;
        Ok(UEventSocket { fd })
    }

    /// Blocks until the next kernel uevent.
    ///
    /// # Errors
    /// Receiving fails; `ENOBUFS` means events were dropped and the caller
    /// should rescan.
    pub fn recv(&self) -> Result<UEvent, UEventError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (len, full_len, from) = match rustix::net::recvfrom(
                &self.fd,
                &mut buf[..],
                rustix::net::RecvFlags::empty(),
            ) {
                Ok(received) => received,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(UEventError::Receive(e.into())),
            };
            let from_kernel = from
                .and_then(|a| netlink::SocketAddrNetlink::try_from(a).ok())
                .is_some_and(|a| a.pid() == 0);
            if !from_kernel {
                continue;
            }
            if full_len > len {
                tracing::warn!(size = full_len, "dropping a truncated uevent");
                continue;
            }
            match parse(&buf[..len]) {
                Ok(event) => return Ok(event),
                Err(e) => tracing::debug!(error = %e, "ignoring a uevent"),
            }
        }
    }

    /// Moves the socket to a thread of its own that forwards every event
    /// (or receive error) to the returned channel; the thread ends when the
    /// channel is dropped and the next event arrives.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn spawn(self) -> std::io::Result<Events> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // Detached: it lives as long as the process (or the channel).
        let _ = std::thread::Builder::new()
            .name("uevents".into())
            .spawn(move || {
                loop {
                    let item = self.recv();
                    let failed = item.is_err();
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                    if failed {
                        // Do not spin on a broken socket.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            })?;
        Ok(rx)
    }
}

/// Errors of coldplug.
#[derive(Debug, thiserror::Error)]
pub enum ColdplugError {
    /// `<sysfs>/devices` could not be listed.
    #[error("listing {path} for coldplug: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What [`coldplug`] did.
#[derive(Debug, Default)]
pub struct ColdplugReport {
    /// `uevent` files written.
    pub triggered: usize,
    /// `uevent` files that could not be written, and why.
    pub failed: Vec<(PathBuf, std::io::Error)>,
}

/// Writes `add` into every `uevent` file under `<sysfs>/devices`, parents
/// before children, never following symlinks (sysfs is full of them, and of
/// cycles).
///
/// # Errors
/// `<sysfs>/devices` cannot be listed.
pub fn coldplug(sysfs: &Path) -> Result<ColdplugReport, ColdplugError> {
    let root = sysfs.join("devices");
    if let Err(source) = std::fs::read_dir(&root) {
        return Err(ColdplugError::List { path: root, source });
    }
    let mut report = ColdplugReport::default();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut subdirs = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                subdirs.push(entry.path());
            } else if kind.is_file() && entry.file_name() == "uevent" {
                let path = entry.path();
                match trigger(&path) {
                    Ok(()) => report.triggered += 1,
                    Err(e) => report.failed.push((path, e)),
                }
            }
        }
        subdirs.sort();
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(report)
}

fn trigger(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(b"add")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDisk, sample_sysfs_partitions, write_fake_disk};

    const ADD_VDA1: &[u8] = b"add@/devices/pci0000:00/0000:00:05.0/virtio2/block/vda/vda1\0\
ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vda/vda1\0\
SUBSYSTEM=block\0\
MAJOR=253\0\
MINOR=1\0\
DEVNAME=vda1\0\
DEVTYPE=partition\0\
DISKSEQ=9\0\
PARTN=1\0\
SEQNUM=2045\0";

    #[test]
    fn parses_a_kernel_message() {
        let ev = parse(ADD_VDA1).unwrap();
        assert_eq!(ev.action, Action::Add);
        assert_eq!(
            ev.devpath,
            "/devices/pci0000:00/0000:00:05.0/virtio2/block/vda/vda1"
        );
        assert_eq!(ev.subsystem, "block");
        assert!(ev.is_block());
        assert_eq!(ev.devname.as_deref(), Some("vda1"));
        assert_eq!(ev.devtype.as_deref(), Some("partition"));
        assert_eq!(ev.seqnum, Some(2045));
        assert_eq!(ev.env.len(), 10);
        assert_eq!(ev.env["PARTN"], "1");
        assert_eq!(ev.env["MAJOR"], "253");
    }

    #[test]
    fn header_only_fields_and_odd_actions() {
        // No ACTION/DEVPATH fields: the header gives them. Values may hold '='.
        let ev = parse(b"offline@/devices/system/cpu/cpu1\0SUBSYSTEM=cpu\0X=a=b\0").unwrap();
        assert_eq!(ev.action, Action::Offline);
        assert_eq!(ev.devpath, "/devices/system/cpu/cpu1");
        assert_eq!(ev.subsystem, "cpu");
        assert!(!ev.is_block());
        assert_eq!(ev.env["X"], "a=b");
        assert_eq!(ev.devname, None);
        assert_eq!(ev.seqnum, None);

        let ev = parse(b"weird@/devices/x\0ACTION=weird\0SUBSYSTEM=foo\0").unwrap();
        assert_eq!(ev.action, Action::Other("weird".into()));
        assert_eq!(ev.action.as_str(), "weird");
        assert_eq!(Action::parse("remove").as_str(), "remove");
    }

    #[test]
    fn rejects_what_is_not_a_kernel_uevent() {
        assert_eq!(
            parse(b"libudev\0\xfe\xed\xca\xfe rest"),
            Err(ParseError::Libudev)
        );
        assert_eq!(parse(b""), Err(ParseError::NoHeader));
        assert_eq!(parse(b"no header here\0A=b\0"), Err(ParseError::NoHeader));
        assert_eq!(
            parse(b"add@/devices/x\0ACTION=add\0"),
            Err(ParseError::NoSubsystem {
                header: "add@/devices/x".into()
            })
        );
    }

    #[test]
    fn coldplug_writes_add_into_every_uevent_file() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        write_fake_disk(
            sys,
            &FakeDisk {
                name: "vda".into(),
                device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
                sectors: 100,
                partitions: sample_sysfs_partitions("vda"),
                ..FakeDisk::default()
            },
        )
        .unwrap();
        // A uevent file reachable only through a symlink is not ours to
        // write (sysfs links point all over, in cycles).
        std::fs::create_dir_all(sys.join("elsewhere")).unwrap();
        std::fs::write(sys.join("elsewhere/uevent"), "").unwrap();
        std::fs::create_dir_all(sys.join("devices/virtual")).unwrap();
        std::os::unix::fs::symlink("../../elsewhere", sys.join("devices/virtual/link")).unwrap();

        let report = coldplug(sys).unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        // The virtio device, the disk and its four partitions.
        assert_eq!(report.triggered, 6);
        let base = sys.join("devices/pci0000:00/0000:00:05.0/virtio2");
        for file in [
            base.join("uevent"),
            base.join("block/vda/uevent"),
            base.join("block/vda/vda1/uevent"),
            base.join("block/vda/vda4/uevent"),
        ] {
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                "add",
                "{}",
                file.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(sys.join("elsewhere/uevent")).unwrap(),
            ""
        );
    }

    #[test]
    fn coldplug_without_devices_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = coldplug(dir.path()).unwrap_err();
        assert!(err.to_string().contains("devices"), "{err}");
    }
}
