//! `BlockDeviceWipe`: wiping disks and partitions no volume uses.
//!
//! As upstream, every device named in a request is checked before any is
//! wiped, so a request with one bad device changes nothing:
//! - it must be a block device the kernel lists (a disk or a partition of
//!   one), named as the kernel names it (`vdb`, `vdb1`);
//! - its disk must be neither read-only nor a CD drive;
//! - unless `skip_secondary_check`, no other block device may be built on
//!   it (RAID, LVM, device-mapper: its sysfs `holders`, or for a whole
//!   disk its partitions');
//! - unless `skip_volume_check`, no system volume may live on it: what is
//!   mounted on `/system/state` or `/var`, and the partitions named META,
//!   STATE and EPHEMERAL of the system disk (the disk a mounted volume is
//!   on, else the first with a META partition, as machined's SystemDisk,
//!   else the first with a STATE or EPHEMERAL one).
//!   A whole disk holding one of them is refused as well; a second disk
//!   with an old installation on it is not.
//!
//! Then each is opened exclusively, which the kernel refuses while a
//! filesystem on it (or, for a whole disk, on any of its partitions) is
//! mounted, whatever the volume check said, and wiped
//! ([`installer::wipe`]). `drop_partition` then removes a wiped partition
//! from its disk's GPT and from the kernel's view. After a whole disk is
//! wiped the kernel is asked to re-read it, so the partitions it no longer
//! has go from `/dev` and the links.

use std::path::PathBuf;

use installer::target::{Disk, TargetError};
use installer::wipe::Method;

use crate::probe;
use crate::sysfs::{self, SysfsError};

/// Where system volumes are mounted, and the volume each is.
pub const VOLUME_MOUNTS: [(&str, &str); 2] = [("/system/state", "STATE"), ("/var", "EPHEMERAL")];

/// Partition names that are system volumes on the system disk.
pub const VOLUME_PARTITIONS: [&str; 3] = ["META", "STATE", "EPHEMERAL"];

/// One device to wipe, as the request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipeRequest {
    /// The kernel's name (`vdb`, `vdb1`).
    pub device: String,
    /// How.
    pub method: Method,
    /// Do not refuse a device a system volume lives on.
    pub skip_volume_check: bool,
    /// Do not refuse a device another one is built on (RAID, LVM, dm).
    pub skip_secondary_check: bool,
    /// For a partition: also remove it from the partition table.
    pub drop_partition: bool,
}

/// Why a wipe was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    /// The name is not a kernel device name.
    #[error(
        "{0:?} is not a block device name (expected a kernel name such as \"sdb\" or \"sdb1\")"
    )]
    BadName(String),
    /// The method is not one the API defines.
    #[error("unsupported wipe method {0}")]
    UnknownMethod(i32),
    /// No such device.
    #[error("blockdevice {0:?} not found")]
    NotFound(String),
    /// The disk is read-only.
    #[error("blockdevice {0:?} is read-only")]
    ReadOnly(String),
    /// The disk is a CD drive.
    #[error("blockdevice {0:?} is a CD-ROM")]
    Cdrom(String),
    /// Another block device is built on it (its sysfs `holders`).
    #[error("blockdevice {device:?} is in use by {kind} {holder:?}")]
    Held {
        /// The device asked for.
        device: String,
        /// What holds it, in upstream's words: `disk` for a whole disk,
        /// `blockdevice` for a partition.
        kind: &'static str,
        /// A device holding it (or, for a disk, one of its partitions).
        holder: String,
    },
    /// A system volume lives on it.
    #[error("blockdevice {device:?} is in use by volume {volume:?}")]
    InUse {
        /// The device asked for.
        device: String,
        /// The volume.
        volume: String,
    },
    /// The kernel refused to hand it over: something has it open
    /// exclusively (a mount, a swap, a device-mapper table).
    #[error("blockdevice {0:?} is busy: a filesystem on it is mounted or it is held open")]
    Busy(String),
    /// Listing the block devices failed.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// Reading or writing the device failed.
    #[error("wiping blockdevice {device:?}: {source}")]
    Wipe {
        /// The device.
        device: String,
        /// The cause.
        source: installer::wipe::WipeError,
    },
}

/// The wire method, checked.
///
/// # Errors
/// [`WipeError::UnknownMethod`] for a value the API does not define.
pub fn method_of(value: i32) -> Result<Method, WipeError> {
    use api::storage::block_device_wipe_descriptor::Method as Wire;
    match Wire::try_from(value) {
        Ok(Wire::Fast) => Ok(Method::Fast),
        Ok(Wire::Zeroes) => Ok(Method::Zeroes),
        Err(_) => Err(WipeError::UnknownMethod(value)),
    }
}

/// What the checks read of the node, once per request: its block
/// devices, its mount table, and (when a volume check first needs it) its
/// system disk with that disk's probe.
struct Node {
    devices: Vec<sysfs::BlockDevice>,
    mounts: String,
    system_disk: std::cell::OnceCell<Option<(String, probe::Probe)>>,
}

/// A device found: a whole disk or a partition of one.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    /// The disk, and the partition's number, for a partition.
    parent: Option<(String, u32)>,
}

/// The devices of one node: where sysfs, device nodes and the mount table
/// are.
#[derive(Debug, Clone)]
pub struct Wiper {
    /// The sysfs root.
    pub sysfs: PathBuf,
    /// Where the device nodes are.
    pub dev: PathBuf,
    /// The mount table to read (`/proc/self/mounts`).
    pub mounts: PathBuf,
}

impl Wiper {
    /// Checks every request, then wipes each device in turn (blocking).
    ///
    /// # Errors
    /// The first refusal, before anything is written; or the first wipe
    /// that failed (the devices before it are wiped).
    pub fn wipe_all(&self, requests: &[WipeRequest]) -> Result<(), WipeError> {
        let node = self.read_node()?;
        let mut targets = Vec::with_capacity(requests.len());
        for request in requests {
            targets.push(self.check(&node, request)?);
        }
        for (request, target) in requests.iter().zip(&targets) {
            self.wipe(request, target)?;
        }
        Ok(())
    }

    fn read_node(&self) -> Result<Node, WipeError> {
        let devices = sysfs::block_devices(&self.sysfs)?;
        let mounts = std::fs::read_to_string(&self.mounts).unwrap_or_default();
        Ok(Node {
            devices,
            mounts,
            system_disk: std::cell::OnceCell::new(),
        })
    }

    fn check(&self, node: &Node, request: &WipeRequest) -> Result<Target, WipeError> {
        let name = request.device.as_str();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(WipeError::BadName(name.to_owned()));
        }
        let (disk, target) = node
            .devices
            .iter()
            .find_map(|d| {
                if d.name == name {
                    return Some((
                        d,
                        Target {
                            name: name.to_owned(),
                            parent: None,
                        },
                    ));
                }
                d.partitions.iter().find(|p| p.name == name).map(|p| {
                    (
                        d,
                        Target {
                            name: name.to_owned(),
                            parent: Some((d.name.clone(), p.number)),
                        },
                    )
                })
            })
            .ok_or_else(|| WipeError::NotFound(name.to_owned()))?;
        if disk.readonly {
            return Err(WipeError::ReadOnly(name.to_owned()));
        }
        if disk.cdrom {
            return Err(WipeError::Cdrom(name.to_owned()));
        }
        if !request.skip_secondary_check
            && let Some(holder) = self.holder_of(disk, &target)
        {
            return Err(WipeError::Held {
                device: name.to_owned(),
                kind: if target.parent.is_some() {
                    "blockdevice"
                } else {
                    "disk"
                },
                holder,
            });
        }
        if !request.skip_volume_check
            && let Some(volume) = self.volume_on(node, disk, &target)
        {
            return Err(WipeError::InUse {
                device: name.to_owned(),
                volume,
            });
        }
        Ok(target)
    }

    /// A device built on `target` (of `disk`): the first entry of its
    /// sysfs `holders`, or for a whole disk of any of its partitions'.
    fn holder_of(&self, disk: &sysfs::BlockDevice, target: &Target) -> Option<String> {
        let dir = self.sysfs.join("block").join(&disk.name);
        let dirs: Vec<PathBuf> = match &target.parent {
            Some(_) => vec![dir.join(&target.name)],
            None => std::iter::once(dir.clone())
                .chain(disk.partitions.iter().map(|p| dir.join(&p.name)))
                .collect(),
        };
        dirs.iter().find_map(|d| {
            let mut holders: Vec<String> = std::fs::read_dir(d.join("holders"))
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            holders.sort();
            holders.into_iter().next()
        })
    }

    /// The system disk and its probe: the disk a mounted volume is on,
    /// else the first (by name) with a partition named META, as machined's
    /// SystemDisk, else the first with one named STATE or EPHEMERAL (as
    /// the Disks call marks it).
    fn system_disk(
        &self,
        devices: &[sysfs::BlockDevice],
        mounts: &str,
    ) -> Option<(String, probe::Probe)> {
        let probe = |d: &sysfs::BlockDevice| {
            probe::probe_path(&self.dev.join(&d.name))
                .ok()
                .map(|p| (d.name.clone(), p))
        };
        for (at, _) in VOLUME_MOUNTS {
            let Some(source) = mount_source(mounts, at) else {
                continue;
            };
            if let Some(d) = devices
                .iter()
                .find(|d| d.name == source || d.partitions.iter().any(|p| p.name == source))
            {
                return probe(d);
            }
        }
        let probed: Vec<(String, probe::Probe)> = devices
            .iter()
            .filter(|d| !d.partitions.is_empty())
            .filter_map(probe)
            .collect();
        let meta = probed
            .iter()
            .position(|(_, p)| p.partitions.iter().any(|x| x.label == "META"));
        let named = || {
            probed
                .iter()
                .position(|(_, p)| crate::server::holds_system_partition(p))
        };
        meta.or_else(named).and_then(|i| probed.into_iter().nth(i))
    }

    /// The system volume living on `target` (of `disk`), if any.
    fn volume_on(&self, node: &Node, disk: &sysfs::BlockDevice, target: &Target) -> Option<String> {
        // The device's own partitions, or the partition itself.
        let covered: Vec<&str> = match &target.parent {
            Some(_) => vec![target.name.as_str()],
            None => std::iter::once(disk.name.as_str())
                .chain(disk.partitions.iter().map(|p| p.name.as_str()))
                .collect(),
        };
        for (at, volume) in VOLUME_MOUNTS {
            if mount_source(&node.mounts, at).is_some_and(|source| covered.contains(&source)) {
                return Some(volume.to_owned());
            }
        }
        let (system_disk, probed) = node
            .system_disk
            .get_or_init(|| self.system_disk(&node.devices, &node.mounts))
            .as_ref()?;
        if *system_disk != disk.name {
            return None;
        }
        probed
            .partitions
            .iter()
            .filter(|p| VOLUME_PARTITIONS.contains(&p.label.as_str()))
            .find(|p| match &target.parent {
                Some((_, number)) => p.index == *number,
                None => true,
            })
            .map(|p| p.label.clone())
    }

    fn wipe(&self, request: &WipeRequest, target: &Target) -> Result<(), WipeError> {
        let failed = |source: installer::wipe::WipeError| WipeError::Wipe {
            device: target.name.clone(),
            source,
        };
        // The disk locked for the whole of it, as udev's convention has
        // it: another wipe of the same disk (editing the same table) waits.
        let disk_name = target.parent.as_ref().map_or(&target.name, |(d, _)| d);
        let lock_path = self.dev.join(disk_name);
        let lock = std::fs::File::open(&lock_path).map_err(|source| {
            failed(installer::wipe::WipeError::Target(TargetError::Io {
                operation: "opening to lock".into(),
                path: lock_path.clone(),
                source,
            }))
        })?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            failed(installer::wipe::WipeError::Target(TargetError::Io {
                operation: "locking".into(),
                path: lock_path.clone(),
                source: e.into(),
            }))
        })?;
        let device = Disk::open_any(&self.dev.join(&target.name)).map_err(|e| match e {
            TargetError::Io { ref source, .. }
                if source.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) =>
            {
                WipeError::Busy(target.name.clone())
            }
            e => failed(e.into()),
        })?;
        tracing::info!(device = %target.name, method = ?request.method, "wiping");
        installer::wipe::wipe(&device, request.method).map_err(|e| failed(e.into()))?;
        drop(device);
        match &target.parent {
            Some((disk, number)) if request.drop_partition => {
                let disk = Disk::open_shared(&self.dev.join(disk)).map_err(|e| failed(e.into()))?;
                installer::wipe::drop_partition(&disk, *number).map_err(failed)?;
                tracing::info!(device = %target.name, number, "partition dropped");
            }
            Some(_) => {}
            None => {
                // Its old partitions are gone from the disk: the kernel
                // lets go of them too (it refuses while one is open).
                if let Ok(disk) = Disk::open_shared(&self.dev.join(&target.name))
                    && let Err(e) = disk.reread_partitions()
                {
                    tracing::warn!(device = %target.name, error = %e, "after the wipe");
                }
            }
        }
        drop(lock);
        Ok(())
    }
}

/// The device name (`vda3`) mounted on `at` in a `/proc/self/mounts` text:
/// the top mount's, when it is a device under `/dev`.
fn mount_source<'a>(mounts: &'a str, at: &str) -> Option<&'a str> {
    mounts
        .lines()
        .rev()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 2 && f[1] == at)
        .and_then(|f| f[0].strip_prefix("/dev/"))
        .map(|dev| dev.rsplit('/').next().unwrap_or(dev))
}
