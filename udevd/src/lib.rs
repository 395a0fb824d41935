//! udevd: kernel uevents, coldplug and the `/dev/disk/by-*` links; serves
//! `storage.StorageService`.
//!
//! # Background
//!
//! Device nodes come from devtmpfs: the kernel creates `/dev/vda1` itself.
//! What it does not create are the stable names that machine configs and
//! the installer use (`/dev/disk/by-label/STATE`,
//! `/dev/disk/by-id/virtio-<serial>`...). Upstream Talos runs systemd-udevd
//! with its stock rules plus blkid for that; udevd does the part Talos
//! needs with no external tool, reading sysfs, the GPT and the filesystem
//! superblocks itself.
//!
//! # Design
//!
//! - [`sysfs`]: block devices and their attributes from a sysfs root (a
//!   parameter, so tests lay out a fake tree in a temporary directory).
//! - [`probe`]: GPT (both copies, CRC-checked) and ext2/3/4, XFS, FAT,
//!   squashfs and LUKS superblocks, read with `pread` from a device or an
//!   image file.
//! - [`links`]: the `by-id`, `by-uuid`, `by-label`, `by-partuuid` and
//!   `by-partlabel` links, computed purely from those facts, then applied
//!   atomically (symlink under a temporary name, `rename`), pruning links no
//!   device claims.
//! - [`uevent`]: the `NETLINK_KOBJECT_UEVENT` listener (a thread of its own
//!   feeding a channel), the message parser and coldplug.
//! - [`server`]: `storage.StorageService`: Disks, and BlockDeviceWipe
//!   through [`wipe`] (refused in container mode).
//!
//! On metal [`run`] opens the uevent socket, binds the API socket, then (in
//! [`watch`]) coldplugs, computes every link once and recomputes them after
//! each burst of block-device events. In container mode it only serves the
//! API from `/sys` and writes nothing anywhere but its own socket.
//!
//! # Limitations
//!
//! - No rules engine, no module loading from `MODALIAS`, no firmware
//!   loading, no `by-path` or `by-diskseq` links.
//! - `by-id` names are derived from sysfs attributes, not from ATA IDENTIFY
//!   or SCSI INQUIRY ioctls: ATA models are the 16-character SCSI ones, and
//!   USB disks get no `by-id` name.
//! - Only GPT is read, not MBR partition tables; device-mapper devices get
//!   no links.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), udevd::RunError> {
//! let options = udevd::Options {
//!     mode: udevd::Mode::Container,
//!     root: "/var/lib/node-1".into(),
//!     sysfs: "/sys".into(),
//!     dev: "/dev".into(),
//! };
//! udevd::run(options, std::future::pending()).await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod cli;
pub mod links;
pub mod probe;
pub mod server;
pub mod sysfs;
pub mod testing;
pub mod uevent;
pub mod wipe;

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::storage::storage_service_server::StorageServiceServer;
use tokio::net::UnixListener;

pub use server::StorageApi;
use uevent::Events;

/// How udevd runs: on metal, uevents, coldplug, links and the API;
/// beside a container-mode node, the API only, read-only.
pub use machinery::mode::Mode;

/// What [`run`] needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Metal or container.
    pub mode: Mode,
    /// Root of the node's paths (the API socket is under it).
    pub root: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sysfs: PathBuf,
    /// Where devtmpfs is mounted (`/dev`); links go to `<dev>/disk`.
    pub dev: PathBuf,
}

/// Errors running udevd.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The API socket could not be bound.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The uevent socket could not be opened (metal).
    #[error("listening for kernel uevents: {0}")]
    Events(#[source] uevent::UEventError),
    /// The uevent thread could not be started (metal).
    #[error("starting the uevent thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("serving storage.StorageService on {path}: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// How long a burst of uevents may settle before links are recomputed.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Runs udevd until `shutdown` resolves: on metal listens to uevents,
/// coldplugs and maintains `<dev>/disk`; in both modes serves the API on
/// `<root>/system/run/udevd/udevd.sock` (removed on the way out).
///
/// # Errors
/// The uevent socket (metal) or the API socket cannot be set up, or the
/// server fails.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let paths = machinery::constants::NodePaths::under(&options.root);
    let socket = paths.socket("udevd");
    let events = match options.mode {
        Mode::Metal => Some(
            uevent::UEventSocket::open()
                .map_err(RunError::Events)?
                .spawn()
                .map_err(RunError::Thread)?,
        ),
        Mode::Container => None,
    };
    let listener = bind(&socket)?;
    let watcher = events
        .map(|events| tokio::spawn(watch(events, options.sysfs.clone(), options.dev.clone())));
    tracing::info!(
        socket = %socket.display(),
        mode = options.mode.as_str(),
        sysfs = %options.sysfs.display(),
        "udevd {} serving",
        machinery::constants::VERSION
    );
    machinery::daemon::notify_ready();
    let service = StorageApi::new(options.mode, options.sysfs, options.dev);
    let served = serve(service, listener, shutdown).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let _ = std::fs::remove_file(&socket);
    served.map_err(|source| RunError::Serve {
        path: socket,
        source,
    })
}

/// Serves `storage.StorageService` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server fails.
pub async fn serve(
    service: StorageApi,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = StorageServiceServer::new(service)
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(api::MAX_MESSAGE_SIZE);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(machinery::uds::incoming(listener), shutdown)
        .await
}

/// Binds the API socket (creating its directory, removing a stale socket),
/// readable and writable by its owner only.
///
/// # Errors
/// The socket cannot be bound.
pub fn bind(path: &Path) -> Result<UnixListener, RunError> {
    machinery::daemon::bind_unix(path).map_err(|source| RunError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// The metal event loop: coldplugs `sysfs`, computes the links under
/// `<dev>/disk` once, then recomputes them after each burst of block-device
/// events from `events` (and after lost events). Ends when `events` closes.
pub async fn watch(mut events: Events, sysfs: PathBuf, dev: PathBuf) {
    let root = sysfs.clone();
    match tokio::task::spawn_blocking(move || uevent::coldplug(&root)).await {
        Ok(Ok(report)) => {
            tracing::info!(
                triggered = report.triggered,
                failed = report.failed.len(),
                "coldplug done"
            );
            for (path, e) in &report.failed {
                tracing::debug!(uevent = %path.display(), error = %e, "coldplug write failed");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "coldplug"),
        Err(e) => tracing::warn!(error = %e, "coldplug task"),
    }
    resync(&sysfs, &dev).await;
    while let Some(item) = events.recv().await {
        match item {
            Ok(event) if event.is_block() => tracing::debug!(
                action = event.action.as_str(),
                devpath = %event.devpath,
                "block device event"
            ),
            Ok(_) => continue,
            Err(e) => tracing::warn!(error = %e, "uevents lost; rescanning"),
        }
        // Let the burst settle (coldplug, a partition table rewrite): one
        // rescan covers all of it.
        let deadline = tokio::time::Instant::now() + SETTLE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, events.recv()).await {}
        resync(&sysfs, &dev).await;
    }
}

async fn resync(sysfs: &Path, dev: &Path) {
    let (sysfs, dev) = (sysfs.to_path_buf(), dev.to_path_buf());
    match tokio::task::spawn_blocking(move || links::sync(&sysfs, &dev)).await {
        Ok(Ok(report)) => {
            if report.created + report.removed > 0 {
                tracing::info!(
                    created = report.created,
                    removed = report.removed,
                    "updated /dev/disk links"
                );
            }
            for e in &report.errors {
                tracing::warn!(error = %e, "/dev/disk link");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "rescanning block devices"),
        Err(e) => tracing::warn!(error = %e, "rescan task"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDisk, sample_sysfs_partitions, write_fake_disk, write_sample_image};

    const CHANGE_VDA: &[u8] = b"change@/devices/pci0000:00/0000:00:05.0/virtio2/block/vda\0\
ACTION=change\0\
DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vda\0\
SUBSYSTEM=block\0\
DEVNAME=vda\0\
DEVTYPE=disk\0\
SEQNUM=3000\0";

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what}: not within 4 s");
    }

    #[tokio::test]
    async fn watch_coldplugs_then_follows_block_events() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        write_fake_disk(
            &sys,
            &FakeDisk {
                name: "vda".into(),
                device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
                sectors: crate::testing::SAMPLE_SECTORS,
                attrs: vec![("serial".into(), "disk-one\n".into())],
                partitions: sample_sysfs_partitions("vda"),
                ..FakeDisk::default()
            },
        )
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(watch(rx, sys.clone(), dev.clone()));

        // Coldplug, then the first scan: the node cannot be read yet, so
        // by-id links only.
        wait_for("by-id link", || {
            dev.join("disk/by-id/virtio-disk-one").is_symlink()
        })
        .await;
        let uevent_file = sys.join("devices/pci0000:00/0000:00:05.0/virtio2/block/vda/uevent");
        assert_eq!(std::fs::read_to_string(uevent_file).unwrap(), "add");
        assert!(!dev.join("disk/by-partlabel/STATE").is_symlink());

        // The disk gets its partition table: a change event brings the rest.
        write_sample_image(&dev.join("vda")).unwrap();
        tx.send(Ok(uevent::parse(CHANGE_VDA).unwrap()))
            .await
            .unwrap();
        wait_for("by-partlabel link", || {
            dev.join("disk/by-partlabel/STATE").is_symlink()
        })
        .await;
        assert_eq!(
            std::fs::read_link(dev.join("disk/by-label/my\\x20data\\x2f1")).unwrap(),
            Path::new("../../vda4")
        );

        // The disk goes away: every link goes with it.
        std::fs::remove_file(sys.join("block/vda")).unwrap();
        tx.send(Ok(uevent::parse(CHANGE_VDA).unwrap()))
            .await
            .unwrap();
        wait_for("links removed", || {
            !dev.join("disk/by-id/virtio-disk-one").is_symlink()
        })
        .await;
        let left: Vec<_> = links::DIRS
            .iter()
            .flat_map(|d| std::fs::read_dir(dev.join("disk").join(d)).unwrap())
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // The channel closes: the loop ends.
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn mode_names() {
        assert_eq!(Mode::Metal.as_str(), "metal");
        assert_eq!(Mode::Container.as_str(), "container");
    }
}
