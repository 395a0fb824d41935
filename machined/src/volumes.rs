//! `DiscoveredVolumes`: every block device and partition of the node and
//! what a probe finds on it.
//!
//! Background: upstream's discovery controller probes each block device
//! and each partition of a GPT it finds, and `talosctl get dv` is how an
//! operator sees a disk's partitions, their filesystems and labels. The
//! ids are the kernel's names (`vda`, `vda3`, `nvme0n1p1`), and the probe
//! names are upstream's (`gpt`, `xfs`, `vfat`, `luks`, `talosmeta`).
//!
//! The probe is udevd's own (GPT, ext, XFS, FAT, squashfs, LUKS) plus the
//! META partition's magic. A partition the GPT does not list (an MBR
//! disk's) is probed through its own node for a filesystem only; a device
//! or such a partition that cannot be read is left out, as are RAM disks
//! and empty loop devices. A read's probes are bounded at 10 s.
//!
//! Not read: a filesystem's block size and probed size, and the
//! filesystems upstream knows and udevd does not (swap, LVM, ZFS, btrfs,
//! ISO 9660, bluestore), which show an empty name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use api::talos::resource::definitions::block as block_pb;
use serde::Serialize;
use udevd::probe::{Fs, FsKind, Probe};
use udevd::sysfs::BlockDevice;

use crate::resources::{
    Item, ResourceError, blocking, device_mount, has_disc_in, is_zero, item, open_nonblocking,
    queue_sizes,
};

#[derive(Serialize)]
struct VolumeYaml<'a> {
    dev_path: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    device_path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    parent: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    parent_dev_path: &'a str,
    size: u64,
    pretty_size: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    sector_size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    io_size: u64,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uuid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    label: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    block_size: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    partition_uuid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    partition_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    partition_label: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    partition_index: u64,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
}

/// How long one read's probes may take: a device whose reads hang (a
/// dead network block device, a failing disk retrying) would otherwise
/// hold the type's lock, and every later read would wait behind it.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The volumes under `sysfs` (`/sys`), probed through `dev` (`/dev`).
///
/// # Errors
/// sysfs cannot be listed, the probes take too long, or an earlier read's
/// probes have not finished.
pub async fn discovered(sysfs: PathBuf, dev: PathBuf) -> Result<Vec<Item>, ResourceError> {
    discovered_specs(sysfs, dev)
        .await?
        .iter()
        .map(|(id, spec)| volume_item(id, spec))
        .collect()
}

/// The volumes under `sysfs`, probed through `dev`: id (the kernel's
/// name) and spec.
///
/// # Errors
/// As [`discovered`].
pub async fn discovered_specs(
    sysfs: PathBuf,
    dev: PathBuf,
) -> Result<Vec<(String, block_pb::DiscoveredVolumeSpec)>, ResourceError> {
    let read = |message: String| ResourceError::Read {
        what: "the block devices",
        message,
    };
    // One probe at a time: one given up on below (or whose caller left)
    // may still be reading, perhaps stuck on a device, and another would
    // only queue behind it (and fill the blocking pool).
    static PROBING: AtomicBool = AtomicBool::new(false);
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            PROBING.store(false, Ordering::Release);
        }
    }
    if PROBING.swap(true, Ordering::AcqRel) {
        return Err(read(
            "an earlier probe has not finished (a device may not be answering)".to_owned(),
        ));
    }
    // Cleared when the probe ends, or if it never runs.
    let done = Done;
    let probes = blocking("the block devices", move || {
        let _done = done;
        let devices = udevd::sysfs::block_devices(&sysfs).map_err(|e| read(e.to_string()))?;
        let mut out = Vec::new();
        for device in devices
            .iter()
            // RAM disks are not probed upstream; an empty device (a loop
            // device with nothing attached) has nothing to find.
            .filter(|d| !d.name.starts_with("ram") && (d.size > 0 || d.cdrom))
        {
            volumes_of(&sysfs, &dev, device, &mut out)?;
        }
        Ok(out)
    });
    tokio::time::timeout(PROBE_TIMEOUT, probes)
        .await
        .map_err(|_| read(format!("the probes took longer than {PROBE_TIMEOUT:?}")))??
}

/// The device and its partitions.
fn volumes_of(
    sysfs: &Path,
    dev: &Path,
    device: &BlockDevice,
    out: &mut Vec<(String, block_pb::DiscoveredVolumeSpec)>,
) -> Result<(), ResourceError> {
    let node = dev.join(&device.name);
    let file = open_nonblocking(&node);
    // A CD drive without a disc is listed unprobed (size 0, as the Disks
    // say), as upstream; any other device that cannot be read is left
    // out, with its partitions, as upstream drops a device whose probe
    // fails.
    let probe = match &file {
        Ok(f) if device.cdrom && !has_disc_in(f) => None,
        Ok(f) => match udevd::probe::probe_file(f, &node) {
            Ok(probe) => Some(probe),
            Err(e) => {
                tracing::debug!(device = %device.name, error = %e, "not probed");
                return Ok(());
            }
        },
        Err(_) if device.cdrom => None,
        Err(e) => {
            tracing::debug!(device = %device.name, error = %e, "not opened");
            return Ok(());
        }
    };
    let size = if probe.is_none() { 0 } else { device.size };
    let (sector_size, io_size) = queue_sizes(sysfs, &device.name);
    let device_path = std::fs::canonicalize(sysfs.join("block").join(&device.name))
        .map(|p| p.display().to_string())
        .unwrap_or_default();

    let mut disk = block_pb::DiscoveredVolumeSpec {
        dev_path: node.display().to_string(),
        r#type: "disk".to_owned(),
        device_path: device_path.clone(),
        size,
        pretty_size: machinery::humanize::bytes(size),
        sector_size,
        io_size,
        ..block_pb::DiscoveredVolumeSpec::default()
    };
    match (&probe, &file) {
        (
            Some(Probe {
                pt_uuid: Some(guid),
                sector_size,
                ..
            }),
            _,
        ) => {
            "gpt".clone_into(&mut disk.name);
            disk.uuid.clone_from(guid);
            disk.block_size = u32::try_from(*sector_size).unwrap_or_default();
        }
        // META before a filesystem signature, as for partitions below.
        (Some(_), Ok(f)) if is_meta(f, 0, device.size) => {
            "talosmeta".clone_into(&mut disk.name);
        }
        (Some(Probe { fs: Some(fs), .. }), _) => found(&mut disk, fs),
        _ => {}
    }
    out.push((device.name.clone(), disk));

    for partition in &device.partitions {
        let part_node = dev.join(&partition.name);
        let offset = partition.start.saturating_mul(512);
        let mut spec = block_pb::DiscoveredVolumeSpec {
            dev_path: part_node.display().to_string(),
            r#type: "partition".to_owned(),
            device_path: format!("{device_path}/{}", partition.name),
            parent: device.name.clone(),
            parent_dev_path: node.display().to_string(),
            size: partition.size,
            pretty_size: machinery::humanize::bytes(partition.size),
            sector_size,
            io_size,
            offset,
            ..block_pb::DiscoveredVolumeSpec::default()
        };
        // The GPT's entry for this partition: the same slot starting where
        // the kernel says (a hybrid MBR or a table rewritten since the
        // kernel read it can number partitions otherwise).
        let entry = probe.as_ref().and_then(|p| {
            p.partition(partition.number)
                .filter(|e| e.start_lba.saturating_mul(p.sector_size) == offset)
        });
        let fs = match entry {
            Some(entry) => {
                spec.partition_uuid.clone_from(&entry.uuid);
                spec.partition_type.clone_from(&entry.type_guid);
                spec.partition_label.clone_from(&entry.label);
                spec.partition_index = u64::from(entry.index);
                entry.fs.clone()
            }
            // Not in the GPT (an MBR disk): the partition's own probe; one
            // that fails is left out, as upstream.
            None => match open_nonblocking(&part_node)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    udevd::probe::probe_fs_file(&f, &part_node).map_err(|e| e.to_string())
                }) {
                Ok(fs) => fs,
                Err(e) => {
                    tracing::debug!(partition = %partition.name, error = %e, "not probed");
                    continue;
                }
            },
        };
        // META first (read inside the whole device): its values are
        // written by users and could carry another kind's signature.
        match (&fs, &file) {
            (_, Ok(f)) if is_meta(f, offset, partition.size) => {
                "talosmeta".clone_into(&mut spec.name);
            }
            (Some(fs), _) => found(&mut spec, fs),
            _ => {}
        }
        out.push((partition.name.clone(), spec));
    }
    Ok(())
}

/// The name upstream's probe gives a kind.
fn probe_name(kind: FsKind) -> &'static str {
    match kind {
        // One name for ext2, ext3 and ext4, as upstream's probe has.
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => "extfs",
        FsKind::Luks => "luks",
        FsKind::LvmPv => "lvm2-pv",
        kind => kind.as_str(),
    }
}

/// What a filesystem probe found, named as upstream names it.
fn found(spec: &mut block_pb::DiscoveredVolumeSpec, fs: &Fs) {
    spec.name = probe_name(fs.kind).to_owned();
    if fs.kind == FsKind::LvmPv {
        // Upstream shows a physical volume's UUID as its label.
        spec.label = fs.uuid.clone().unwrap_or_default();
    } else {
        spec.uuid = fs.uuid.clone().unwrap_or_default();
        spec.label = fs.label.clone().unwrap_or_default();
    }
}

/// Whether a META store starts at `offset` of `file` (within `size`
/// bytes), as upstream's `talosmeta` probe decides: the first magic at
/// the start, and the closing magic of either copy (the second copy is
/// what survives a torn write of the first).
fn is_meta(file: &std::fs::File, offset: u64, size: u64) -> bool {
    use std::os::unix::fs::FileExt as _;
    let block = machinery::meta::BLOCK_SIZE as u64;
    let word = |at: u64| {
        let mut bytes = [0u8; 4];
        file.read_exact_at(&mut bytes, at)
            .ok()
            .map(|()| u32::from_be_bytes(bytes))
    };
    let at = |n: u64| offset.checked_add(n);
    let copy_ends = |copy: u64| {
        size >= copy + block
            && at(copy).is_some_and(|a| word(a) == Some(machinery::meta::MAGIC1))
            && at(copy + block - 4).is_some_and(|a| word(a) == Some(machinery::meta::MAGIC2))
    };
    word(offset) == Some(machinery::meta::MAGIC1) && (copy_ends(0) || copy_ends(block))
}

fn volume_item(id: &str, spec: &block_pb::DiscoveredVolumeSpec) -> Result<Item, ResourceError> {
    let yaml = VolumeYaml {
        dev_path: &spec.dev_path,
        type_: &spec.r#type,
        device_path: &spec.device_path,
        parent: &spec.parent,
        parent_dev_path: &spec.parent_dev_path,
        size: spec.size,
        pretty_size: &spec.pretty_size,
        sector_size: spec.sector_size,
        io_size: spec.io_size,
        name: &spec.name,
        uuid: &spec.uuid,
        label: &spec.label,
        block_size: spec.block_size,
        partition_uuid: &spec.partition_uuid,
        partition_type: &spec.partition_type,
        partition_label: &spec.partition_label,
        partition_index: spec.partition_index,
        offset: spec.offset,
    };
    item(id, &yaml, spec)
}

/// One of the node's volumes as upstream's `VolumeStatus` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeStatusYaml<'a> {
    phase: &'static str,
    #[serde(rename = "type")]
    type_: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    location: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    mount_location: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    partition_index: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    parent_location: &'a str,
    #[serde(rename = "uuid", skip_serializing_if = "str::is_empty")]
    uuid: &'a str,
    #[serde(rename = "partitionUUID", skip_serializing_if = "str::is_empty")]
    partition_uuid: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    pretty_size: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    filesystem: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mount_spec: Option<MountSpecYaml<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MountSpecYaml<'a> {
    target_path: &'a str,
    selinux_label: &'a str,
    project_quota_support: bool,
}

/// The node's volumes, as upstream's `VolumeStatuses` (ids `META`,
/// `STATE`, `EPHEMERAL`), from the discovered volumes and the mounts
/// table (`/proc/self/mounts`):
///
/// - STATE and EPHEMERAL are `ready` when a device is mounted on their
///   target, `located` when a filesystem with their label is there but
///   not mounted, and `missing` when none is;
/// - META is `ready` where the partition labelled META is (as upstream
///   locates it), or else a META store is found; it is never mounted.
///
/// Nothing is encrypted and no SELinux label is applied, so those fields
/// stay empty.
///
/// # Errors
/// A spec cannot be written.
pub fn volume_statuses(
    discovered: &[(String, block_pb::DiscoveredVolumeSpec)],
    mounts: &str,
) -> Result<Vec<Item>, ResourceError> {
    volume_status_specs(discovered, mounts)
        .iter()
        .map(|(id, spec)| volume_status_item(id, spec))
        .collect()
}

/// The specs of [`volume_statuses`], by id (`META`, `STATE`, `EPHEMERAL`).
#[must_use]
pub fn volume_status_specs(
    discovered: &[(String, block_pb::DiscoveredVolumeSpec)],
    mounts: &str,
) -> Vec<(&'static str, block_pb::VolumeStatusSpec)> {
    use api::talos::resource::definitions::enums::{
        BlockFilesystemType as Fs, BlockVolumePhase as Phase, BlockVolumeType as Type,
    };
    let mounted_from = |target: &str| device_mount(mounts, target).map(|f| f[0].to_owned());
    let meta = meta_volume(discovered);
    let mut out = Vec::new();
    for (id, target) in [
        (installer::layout::META, None),
        (crate::boot::STATE_LABEL, Some(crate::boot::STATE_MOUNT)),
        (
            crate::boot::EPHEMERAL_LABEL,
            Some(crate::boot::EPHEMERAL_MOUNT),
        ),
    ] {
        let (phase, volume) = match target {
            None => (Phase::VolumePhaseReady, meta.map(|(_, v)| v.clone())),
            Some(target) => match mounted_from(target) {
                Some(source) => (
                    Phase::VolumePhaseReady,
                    discovered
                        .iter()
                        .map(|(_, v)| v)
                        .find(|v| v.dev_path == source)
                        .cloned()
                        // Mounted, though its device was not probed: where
                        // it is, at least.
                        .or_else(|| {
                            Some(block_pb::DiscoveredVolumeSpec {
                                dev_path: source,
                                ..block_pb::DiscoveredVolumeSpec::default()
                            })
                        }),
                ),
                // What boot would mount: the first by name with the label,
                // of a kind the image mounts (boot::find_labelled).
                None => (
                    Phase::VolumePhaseLocated,
                    discovered
                        .iter()
                        .filter(|(_, v)| {
                            v.label == id
                                && FsKind::ALL.iter().any(|&k| {
                                    crate::boot::image_mounts(k) && probe_name(k) == v.name
                                })
                        })
                        .min_by(|(a, _), (b, _)| a.cmp(b))
                        .map(|(_, v)| v.clone()),
                ),
            },
        };
        let mut spec = block_pb::VolumeStatusSpec {
            phase: Phase::VolumePhaseMissing as i32,
            r#type: Type::VolumeTypePartition as i32,
            mount_spec: target.map(|t| block_pb::MountSpec {
                target_path: t.to_owned(),
                ..block_pb::MountSpec::default()
            }),
            ..block_pb::VolumeStatusSpec::default()
        };
        if let Some(v) = &volume {
            spec.phase = phase as i32;
            if v.r#type == "disk" {
                spec.r#type = Type::VolumeTypeDisk as i32;
            }
            spec.location.clone_from(&v.dev_path);
            spec.mount_location.clone_from(&v.dev_path);
            spec.parent_location.clone_from(&v.parent_dev_path);
            spec.partition_index = i64::try_from(v.partition_index).unwrap_or_default();
            spec.partition_uuid.clone_from(&v.partition_uuid);
            spec.uuid.clone_from(&v.uuid);
            spec.size = v.size;
            spec.pretty_size.clone_from(&v.pretty_size);
            spec.filesystem = match v.name.as_str() {
                "xfs" => Fs::FilesystemTypeXfs,
                "vfat" => Fs::FilesystemTypeVfat,
                "extfs" => Fs::FilesystemTypeExt4,
                "iso9660" => Fs::FilesystemTypeIso9660,
                "swap" => Fs::FilesystemTypeSwap,
                _ => Fs::FilesystemTypeNone,
            } as i32;
        }
        out.push((id, spec));
    }
    out
}

/// The META volume: the partition labelled META, as upstream locates it,
/// else a device whose probe found a META store.
fn meta_volume(
    discovered: &[(String, block_pb::DiscoveredVolumeSpec)],
) -> Option<&(String, block_pb::DiscoveredVolumeSpec)> {
    discovered
        .iter()
        .find(|(_, v)| v.partition_label == installer::layout::META)
        .or_else(|| discovered.iter().find(|(_, v)| v.name == "talosmeta"))
}

/// The spec of [`system_disk`], if there is a system disk.
#[must_use]
pub fn system_disk_spec(
    discovered: &[(String, block_pb::DiscoveredVolumeSpec)],
) -> Option<block_pb::SystemDiskSpec> {
    discovered
        .iter()
        .find(|(_, v)| v.partition_label == installer::layout::META && !v.parent.is_empty())
        .map(|(_, meta)| block_pb::SystemDiskSpec {
            disk_id: meta.parent.clone(),
            dev_path: meta.parent_dev_path.clone(),
        })
}

#[derive(Serialize)]
struct SystemDiskYaml<'a> {
    #[serde(rename = "diskID")]
    disk_id: &'a str,
    #[serde(rename = "devPath")]
    dev_path: &'a str,
}

/// `SystemDisk` (id `system-disk`): the disk holding the partition
/// labelled META, as upstream decides; none without one.
///
/// # Errors
/// A spec cannot be written.
pub fn system_disk(
    discovered: &[(String, block_pb::DiscoveredVolumeSpec)],
) -> Result<Vec<Item>, ResourceError> {
    let Some(spec) = system_disk_spec(discovered) else {
        return Ok(Vec::new());
    };
    let yaml = SystemDiskYaml {
        disk_id: &spec.disk_id,
        dev_path: &spec.dev_path,
    };
    Ok(vec![item("system-disk", &yaml, &spec)?])
}

fn volume_status_item(id: &str, spec: &block_pb::VolumeStatusSpec) -> Result<Item, ResourceError> {
    use api::talos::resource::definitions::enums::{
        BlockFilesystemType as Fs, BlockVolumePhase as Phase, BlockVolumeType as Type,
    };
    // Upstream's text for each value (its enums' line comments).
    let phase = match Phase::try_from(spec.phase).unwrap_or_default() {
        Phase::VolumePhaseWaiting => "waiting",
        Phase::VolumePhaseFailed => "failed",
        Phase::VolumePhaseMissing => "missing",
        Phase::VolumePhaseLocated => "located",
        Phase::VolumePhaseProvisioned => "provisioned",
        Phase::VolumePhasePrepared => "prepared",
        Phase::VolumePhaseReady => "ready",
        Phase::VolumePhaseClosed => "closed",
    };
    let type_ = match Type::try_from(spec.r#type).unwrap_or_default() {
        Type::VolumeTypePartition => "partition",
        Type::VolumeTypeDisk => "disk",
        Type::VolumeTypeTmpfs => "tmpfs",
        Type::VolumeTypeDirectory => "directory",
        Type::VolumeTypeSymlink => "symlink",
        Type::VolumeTypeOverlay => "overlay",
    };
    let filesystem = match Fs::try_from(spec.filesystem).unwrap_or_default() {
        Fs::FilesystemTypeNone => None,
        Fs::FilesystemTypeXfs => Some("xfs"),
        Fs::FilesystemTypeVfat => Some("vfat"),
        Fs::FilesystemTypeExt4 => Some("ext4"),
        Fs::FilesystemTypeIso9660 => Some("iso9660"),
        Fs::FilesystemTypeSwap => Some("swap"),
    };
    let yaml = VolumeStatusYaml {
        phase,
        type_,
        location: &spec.location,
        mount_location: &spec.mount_location,
        partition_index: spec.partition_index,
        parent_location: &spec.parent_location,
        uuid: &spec.uuid,
        partition_uuid: &spec.partition_uuid,
        size: spec.size,
        pretty_size: &spec.pretty_size,
        filesystem,
        mount_spec: spec.mount_spec.as_ref().map(|m| MountSpecYaml {
            target_path: &m.target_path,
            selinux_label: &m.selinux_label,
            project_quota_support: m.project_quota_support,
        }),
    };
    item(id, &yaml, spec)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use udevd::testing::{
        FakeDisk, SAMPLE_DISK_GUID, SAMPLE_SECTORS, sample_sysfs_partitions, write_fake_disk,
        write_sample_image,
    };

    use super::*;

    #[test]
    fn probed_kinds_are_named_as_upstream_names_them() {
        let named = |kind, uuid: Option<&str>, label: Option<&str>| {
            let mut spec = block_pb::DiscoveredVolumeSpec::default();
            found(
                &mut spec,
                &Fs {
                    kind,
                    uuid: uuid.map(str::to_owned),
                    label: label.map(str::to_owned),
                },
            );
            (spec.name, spec.uuid, spec.label)
        };
        for ext in [FsKind::Ext2, FsKind::Ext3, FsKind::Ext4] {
            assert_eq!(named(ext, None, None).0, "extfs");
        }
        assert_eq!(named(FsKind::Luks, None, None).0, "luks");
        assert_eq!(named(FsKind::Btrfs, None, None).0, "btrfs");
        assert_eq!(named(FsKind::Iso9660, None, None).0, "iso9660");
        assert_eq!(
            named(
                FsKind::Swap,
                Some("5a5a0000-1111-4222-8333-444455556666"),
                Some("s")
            ),
            (
                "swap".to_owned(),
                "5a5a0000-1111-4222-8333-444455556666".to_owned(),
                "s".to_owned()
            )
        );
        // A physical volume's UUID is shown as its label, as upstream.
        assert_eq!(
            named(
                FsKind::LvmPv,
                Some("Xq3h7A-bcDE-f012-3456-789a-bcde-fGHIJK"),
                None
            ),
            (
                "lvm2-pv".to_owned(),
                String::new(),
                "Xq3h7A-bcDE-f012-3456-789a-bcde-fGHIJK".to_owned()
            )
        );
    }

    fn yaml(items: &[Item], id: &str) -> serde_yaml_ng::Value {
        let item = items.iter().find(|i| i.id == id).unwrap_or_else(|| {
            let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
            panic!("no {id} among {ids:?}")
        });
        serde_yaml_ng::from_str(&item.yaml).expect("YAML")
    }

    #[tokio::test]
    async fn disks_and_partitions_are_probed_as_upstream_names_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).expect("dev");
        // vda: the sample GPT (EFI vfat, BOOT and STATE xfs, an ext4 data
        // partition) as the kernel lists it and as its node reads.
        write_fake_disk(
            &sys,
            &FakeDisk {
                name: "vda".into(),
                device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
                sectors: SAMPLE_SECTORS,
                partitions: sample_sysfs_partitions("vda"),
                ..FakeDisk::default()
            },
        )
        .expect("vda");
        write_sample_image(&dev.join("vda")).expect("image");
        // vdb: a META store (its first copy) on a whole device.
        write_fake_disk(
            &sys,
            &FakeDisk {
                name: "vdb".into(),
                device_path: "pci0000:00/0000:00:06.0/virtio3".into(),
                sectors: 2048,
                ..FakeDisk::default()
            },
        )
        .expect("vdb");
        let mut meta = machinery::meta::Adv::new();
        meta.set(0x0c, "kept").expect("set");
        std::fs::write(dev.join("vdb"), meta.encode_partition()).expect("meta");
        // An NVMe namespace (partitions named with a `p`) with the same
        // GPT; a CD drive without a disc, and one with a disc that holds
        // nothing known.
        write_fake_disk(
            &sys,
            &FakeDisk {
                name: "nvme0n1".into(),
                device_path: "pci0000:00/0000:00:07.0/nvme/nvme0".into(),
                flat: true,
                sectors: SAMPLE_SECTORS,
                partitions: sample_sysfs_partitions("nvme0n1"),
                ..FakeDisk::default()
            },
        )
        .expect("nvme0n1");
        write_sample_image(&dev.join("nvme0n1")).expect("image");
        for name in ["sr0", "sr1"] {
            write_fake_disk(&sys, &udevd::testing::cd_drive(name)).expect("cd");
        }
        std::fs::write(dev.join("sr0"), b"").expect("empty drive");
        std::fs::write(dev.join("sr1"), vec![1u8; 4096]).expect("disc");
        // A loop device with nothing attached and a RAM disk: not listed.
        for name in ["loop0", "ram0"] {
            write_fake_disk(
                &sys,
                &FakeDisk {
                    name: name.into(),
                    sectors: if name == "ram0" { 8192 } else { 0 },
                    ..FakeDisk::default()
                },
            )
            .expect("virtual");
        }

        let items = discovered(sys.clone(), dev.clone()).await.expect("volumes");
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "nvme0n1",
                "nvme0n1p1",
                "nvme0n1p2",
                "nvme0n1p3",
                "nvme0n1p4",
                "sr0",
                "sr1",
                "vda",
                "vda1",
                "vda2",
                "vda3",
                "vda4",
                "vdb"
            ]
        );
        let nvme = yaml(&items, "nvme0n1p3");
        assert_eq!(nvme["name"], "xfs");
        assert_eq!(nvme["parent"], "nvme0n1");
        assert_eq!(nvme["partition_index"], 3);
        let empty = yaml(&items, "sr0");
        assert_eq!(
            (empty["size"].as_u64(), empty["name"].as_str()),
            (Some(0), Some(""))
        );
        let disc = yaml(&items, "sr1");
        assert_eq!(disc["size"], 2_097_151 * 512);
        assert_eq!(disc["name"], "");

        let vda = yaml(&items, "vda");
        assert_eq!(vda["type"], "disk");
        assert_eq!(vda["name"], "gpt");
        assert_eq!(vda["uuid"], SAMPLE_DISK_GUID);
        assert_eq!(vda["size"], SAMPLE_SECTORS * 512);
        assert_eq!(vda["pretty_size"], "8.4 MB");
        assert_eq!(vda["dev_path"], dev.join("vda").display().to_string());
        assert!(
            vda["device_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("devices/pci0000:00/0000:00:05.0/virtio2/block/vda")),
            "{vda:?}"
        );
        assert!(vda.get("parent").is_none() && vda.get("offset").is_none());

        let efi = yaml(&items, "vda1");
        assert_eq!(efi["type"], "partition");
        assert_eq!(efi["name"], "vfat");
        assert_eq!(efi["label"], "EFI");
        assert_eq!(efi["uuid"], "1234-ABCD");
        assert_eq!(efi["partition_label"], "EFI");
        assert_eq!(efi["partition_type"], udevd::testing::EFI_SYSTEM);
        assert_eq!(
            efi["partition_uuid"],
            "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
        );
        assert_eq!(efi["partition_index"], 1);
        assert_eq!(efi["parent"], "vda");
        assert_eq!(efi["parent_dev_path"], vda["dev_path"]);
        assert_eq!(efi["offset"], 2048 * 512);
        assert_eq!(efi["size"], 2048 * 512);
        assert_eq!(efi["pretty_size"], "1.0 MB");
        assert_eq!(
            efi["device_path"].as_str(),
            vda["device_path"]
                .as_str()
                .map(|p| format!("{p}/vda1"))
                .as_deref()
        );
        let state = yaml(&items, "vda3");
        assert_eq!(state["name"], "xfs");
        assert_eq!(state["label"], "STATE");
        assert_eq!(state["uuid"], "5ea7e000-0000-4000-8000-000000000003");
        let data = yaml(&items, "vda4");
        // Upstream's probe names ext2, ext3 and ext4 alike.
        assert_eq!(data["name"], "extfs");
        assert_eq!(data["label"], "my data/1");
        assert_eq!(data["partition_label"], "data 1/é");

        assert_eq!(yaml(&items, "vdb")["name"], "talosmeta");

        // The protobuf spec carries upstream's field numbers.
        let item = items.iter().find(|i| i.id == "vda3").expect("vda3");
        let spec = block_pb::DiscoveredVolumeSpec::decode(item.proto.as_slice()).expect("decode");
        assert_eq!(
            (spec.name.as_str(), spec.partition_index, spec.offset),
            ("xfs", 3, 6144 * 512)
        );
    }

    #[test]
    fn volume_statuses_say_where_meta_state_and_ephemeral_are() {
        let volume = |id: &str, name: &str, label: &str, index: u64, size: u64| {
            (
                id.to_owned(),
                block_pb::DiscoveredVolumeSpec {
                    dev_path: format!("/dev/{id}"),
                    r#type: "partition".to_owned(),
                    parent_dev_path: "/dev/vda".to_owned(),
                    name: name.to_owned(),
                    uuid: if name == "xfs" {
                        format!("uuid-of-{id}")
                    } else {
                        String::new()
                    },
                    label: label.to_owned(),
                    partition_index: index,
                    partition_uuid: format!("guid-of-{id}"),
                    partition_label: label.to_owned(),
                    size,
                    pretty_size: machinery::humanize::bytes(size),
                    ..block_pb::DiscoveredVolumeSpec::default()
                },
            )
        };
        let discovered = [
            (
                "vda".to_owned(),
                block_pb::DiscoveredVolumeSpec {
                    dev_path: "/dev/vda".to_owned(),
                    r#type: "disk".to_owned(),
                    name: "gpt".to_owned(),
                    ..block_pb::DiscoveredVolumeSpec::default()
                },
            ),
            {
                let (id, mut meta) = volume("vda2", "talosmeta", "", 2, 1 << 20);
                meta.partition_label = "META".to_owned();
                meta.parent = "vda".to_owned();
                (id, meta)
            },
            volume("vda3", "xfs", "STATE", 3, 100 << 20),
            volume("vda4", "xfs", "EPHEMERAL", 4, 5 << 30),
        ];
        // STATE is mounted; EPHEMERAL is there but not (yet) mounted, and
        // something else covers /var.
        let mounts = "/dev/vda3 /system/state xfs rw,relatime 0 0\n\
                      tmpfs /var tmpfs rw 0 0\n";
        let items = volume_statuses(&discovered, mounts).expect("statuses");
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["META", "STATE", "EPHEMERAL"]);
        let yaml = |i: usize| -> serde_yaml_ng::Value {
            serde_yaml_ng::from_str(&items[i].yaml).expect("YAML")
        };
        assert_eq!(
            items[0].yaml,
            "phase: ready\ntype: partition\nlocation: /dev/vda2\nmountLocation: /dev/vda2\n\
             partitionIndex: 2\nparentLocation: /dev/vda\npartitionUUID: guid-of-vda2\n\
             size: 1048576\nprettySize: 1.0 MB\n"
        );
        assert_eq!(yaml(1)["phase"], "ready");
        assert_eq!(yaml(1)["uuid"], "uuid-of-vda3");
        assert_eq!(yaml(1)["filesystem"], "xfs");
        assert_eq!(yaml(1)["prettySize"], "105 MB");
        assert_eq!(yaml(1)["mountSpec"]["targetPath"], "/system/state");
        assert_eq!(yaml(2)["phase"], "located");
        assert_eq!(yaml(2)["location"], "/dev/vda4");
        assert_eq!(yaml(2)["mountSpec"]["targetPath"], "/var");

        // Upstream's field numbers and enum values.
        let state = block_pb::VolumeStatusSpec::decode(items[1].proto.as_slice()).expect("proto");
        assert_eq!(state.phase, 6);
        assert_eq!(state.r#type, 0);
        assert_eq!(state.filesystem, 1);
        assert_eq!(state.partition_index, 3);
        assert_eq!(state.size, 100 << 20);
        assert_eq!(state.location, "/dev/vda3");
        assert_eq!(state.parent_location, "/dev/vda");
        let ephemeral =
            block_pb::VolumeStatusSpec::decode(items[2].proto.as_slice()).expect("proto");
        assert_eq!(ephemeral.phase, 3);

        // Mounted from a device the probe did not list: ready, with its
        // location. Not mounted, the first by name of a mountable kind.
        let mut more = discovered.to_vec();
        more.push(volume("vdb1", "btrfs", "EPHEMERAL", 1, 1 << 30));
        more.push(volume("vdc1", "xfs", "EPHEMERAL", 1, 1 << 30));
        let items = volume_statuses(
            &more,
            "/dev/sdz9 /system/state xfs rw 0 0\n/dev/vda4 /mnt xfs rw 0 0\n",
        )
        .expect("statuses");
        let state = block_pb::VolumeStatusSpec::decode(items[1].proto.as_slice()).expect("proto");
        assert_eq!((state.phase, state.location.as_str()), (6, "/dev/sdz9"));
        let ephemeral =
            block_pb::VolumeStatusSpec::decode(items[2].proto.as_slice()).expect("proto");
        assert_eq!(
            (ephemeral.phase, ephemeral.location.as_str()),
            (3, "/dev/vda4")
        );
        more.swap(3, 5);
        let items = volume_statuses(&more[..5], "").expect("statuses");
        let ephemeral =
            block_pb::VolumeStatusSpec::decode(items[2].proto.as_slice()).expect("proto");
        assert_eq!(
            ephemeral.location, "/dev/vdc1",
            "btrfs is not mounted by boot"
        );

        // The system disk: the one holding META.
        let disk = system_disk(&discovered).expect("system disk");
        assert_eq!(disk.len(), 1);
        assert_eq!(disk[0].id, "system-disk");
        assert_eq!(disk[0].yaml, "diskID: vda\ndevPath: /dev/vda\n");
        let spec = block_pb::SystemDiskSpec::decode(disk[0].proto.as_slice()).expect("proto");
        assert_eq!(
            (spec.disk_id.as_str(), spec.dev_path.as_str()),
            ("vda", "/dev/vda")
        );
        assert!(system_disk(&discovered[..1]).expect("none").is_empty());

        // An empty machine: nothing found, every volume missing.
        let items = volume_statuses(&discovered[..1], "").expect("statuses");
        for item in &items {
            let spec = block_pb::VolumeStatusSpec::decode(item.proto.as_slice()).expect("proto");
            assert_eq!(spec.phase, 2, "{}", item.id);
            assert!(spec.location.is_empty());
            assert!(
                item.yaml.starts_with("phase: missing\ntype: partition\n"),
                "{}",
                item.yaml
            );
        }
    }
}
