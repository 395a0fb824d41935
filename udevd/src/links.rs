//! The `/dev/disk/by-*` links.
//!
//! Computing them is pure ([`links_for`]: device facts in, links out) and
//! follows udev's `60-persistent-storage.rules` with what sysfs and the
//! probe can tell:
//!
//! | directory | name | from |
//! |---|---|---|
//! | `by-id` | `virtio-<serial>` | virtio-blk `serial` |
//! | `by-id` | `nvme-<model>_<serial>`, `nvme-<wwid>` | NVMe `model`, `serial`, `wwid` |
//! | `by-id` | `ata-<model>_<serial>` | ATA disks (SCSI vendor `ATA`) |
//! | `by-id` | `scsi-3<naa>`, `scsi-2<eui>`, `scsi-1<t10>`, `scsi-S<vendor><model><serial>` | other SCSI disks: `wwid`, else VPD page 0x80 |
//! | `by-id` | `wwn-0x<naa>` | SCSI/ATA `wwid` of NAA type |
//! | `by-id` | `mmc-<name>_<serial>` | MMC card `name`, `serial` |
//! | `by-uuid` | filesystem UUID | superblock |
//! | `by-label` | filesystem label | superblock (not for LUKS) |
//! | `by-partuuid` | GPT unique partition GUID | GPT entry |
//! | `by-partlabel` | GPT partition name | GPT entry |
//!
//! A partition's `by-id` names are its disk's with `-part<N>`. In `by-id`
//! names whitespace runs become one `_` and other unsafe characters `_` (as
//! udev's `ata_id`/`scsi_id` do); the other directories use blkid's
//! encoding (`\x20` for a space, `\x2f` for `/`). Every link is relative:
//! `../../vda1`.
//!
//! Applying them ([`apply`]) makes the directories, replaces each link
//! atomically (a symlink under a temporary name, then `rename`) and removes
//! the links no device claims any more. When two devices claim one name the
//! first in kernel-name order keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::probe::{self, Fs};
use crate::sysfs::{self, BlockDevice, SysfsError, Transport};

/// The directories under `/dev/disk` that udevd owns.
pub const DIRS: [&str; 5] = [
    "by-id",
    "by-uuid",
    "by-label",
    "by-partuuid",
    "by-partlabel",
];

/// One link: `path` relative to `/dev/disk`, pointing at `target`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// E.g. `by-uuid/1234-ABCD`.
    pub path: String,
    /// E.g. `../../vda1`.
    pub target: String,
}

impl Link {
    fn new(path: String, name: &str) -> Link {
        Link {
            path,
            target: format!("../../{name}"),
        }
    }
}

/// What the `by-id` names of a disk (and its partitions) are made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskIds {
    /// How the disk is attached.
    pub transport: Transport,
    /// SCSI vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// World wide id as sysfs prints it (`naa.…`, `eui.…`, `t10.…`).
    pub wwid: String,
    /// MMC card name.
    pub card_name: String,
}

impl DiskIds {
    /// The identifiers of a disk from sysfs.
    #[must_use]
    pub fn of(dev: &BlockDevice) -> DiskIds {
        DiskIds {
            transport: dev.transport,
            vendor: dev.vendor.clone(),
            model: dev.model.clone(),
            serial: dev.serial.clone(),
            wwid: dev.wwid.clone(),
            card_name: dev.card_name.clone(),
        }
    }
}

/// Everything the links of one device node are computed from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceFacts {
    /// Kernel name of the node, e.g. `vda1`.
    pub name: String,
    /// Partition number, for a partition.
    pub partition: Option<u32>,
    /// The (whole) disk's identifiers.
    pub ids: DiskIds,
    /// The filesystem on the node.
    pub fs: Option<Fs>,
    /// The GPT unique partition GUID.
    pub part_uuid: Option<String>,
    /// The GPT partition name.
    pub part_label: Option<String>,
}

/// Errors applying links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A `by-*` directory could not be created.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A link could not be made.
    #[error("linking {path} to {target}: {source}")]
    Link {
        /// The link.
        path: PathBuf,
        /// What it should point at.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A stale link could not be removed.
    #[error("removing stale link {path}: {source}")]
    Remove {
        /// The link.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Links made or repointed.
    pub created: usize,
    /// Stale links removed.
    pub removed: usize,
    /// What failed (the rest was still applied).
    pub errors: Vec<LinkError>,
}

/// The `by-id` names of a disk (without a `-part<N>` suffix).
#[must_use]
pub fn by_id_names(ids: &DiskIds) -> Vec<String> {
    let model = id_escape(&ids.model);
    let serial = id_escape(&ids.serial);
    let both = !model.is_empty() && !serial.is_empty();
    let mut names = Vec::new();
    match ids.transport {
        Transport::Virtio => {
            if !serial.is_empty() {
                names.push(format!("virtio-{serial}"));
            }
        }
        Transport::Nvme => {
            if both {
                names.push(format!("nvme-{model}_{serial}"));
            }
            let wwid = id_escape(&ids.wwid);
            if !wwid.is_empty() {
                names.push(format!("nvme-{wwid}"));
            }
        }
        Transport::Ata => {
            if both {
                names.push(format!("ata-{model}_{serial}"));
            }
        }
        Transport::Scsi => {
            if let Some(id) = scsi_serial(ids) {
                names.push(format!("scsi-{id}"));
            }
        }
        Transport::Mmc => {
            let card = id_escape(&ids.card_name);
            if !card.is_empty() && !serial.is_empty() {
                names.push(format!("mmc-{card}_{serial}"));
            }
        }
        Transport::Usb | Transport::Xen | Transport::Unknown => {}
    }
    if matches!(
        ids.transport,
        Transport::Ata | Transport::Scsi | Transport::Usb
    ) && let Some(naa) = ids.wwid.strip_prefix("naa.")
    {
        let naa = id_escape(naa).to_ascii_lowercase();
        if !naa.is_empty() {
            names.push(format!("wwn-0x{naa}"));
        }
    }
    names
}

/// `scsi_id`'s serial: from the device identification page (as sysfs
/// `wwid` shows it) by designator type, else `S` + vendor + model + the unit
/// serial number.
fn scsi_serial(ids: &DiskIds) -> Option<String> {
    let typed = [("naa.", '3'), ("eui.", '2'), ("t10.", '1')];
    for (prefix, kind) in typed {
        if let Some(rest) = ids.wwid.strip_prefix(prefix) {
            let rest = id_escape(rest);
            if !rest.is_empty() {
                return Some(format!("{kind}{rest}"));
            }
        }
    }
    if ids.serial.trim().is_empty() {
        return None;
    }
    Some(id_escape(&format!(
        "S{:<8}{:<16}{}",
        ids.vendor, ids.model, ids.serial
    )))
}

/// The links of one device node.
#[must_use]
pub fn links_for(facts: &DeviceFacts) -> Vec<Link> {
    let name = facts.name.as_str();
    let suffix = facts
        .partition
        .map(|n| format!("-part{n}"))
        .unwrap_or_default();
    let mut links: Vec<Link> = by_id_names(&facts.ids)
        .into_iter()
        .map(|id| Link::new(format!("by-id/{id}{suffix}"), name))
        .collect();
    let mut push = |dir: &str, value: &str| {
        let encoded = blkid_encode(value);
        if !encoded.is_empty() && encoded != "." && encoded != ".." && encoded.len() <= 255 {
            links.push(Link::new(format!("{dir}/{encoded}"), name));
        }
    };
    if let Some(fs) = &facts.fs {
        if fs.kind.has_uuid_link()
            && let Some(uuid) = &fs.uuid
        {
            push("by-uuid", uuid);
        }
        if fs.kind.has_label_link()
            && let Some(label) = &fs.label
        {
            push("by-label", label);
        }
    }
    if let Some(uuid) = &facts.part_uuid {
        push("by-partuuid", uuid);
    }
    if let Some(label) = &facts.part_label {
        push("by-partlabel", label);
    }
    links
}

/// A `by-id` component: trimmed, whitespace runs as one `_`, characters
/// outside `[0-9A-Za-z#+-.:=@_]` (ASCII) as `_`.
#[must_use]
pub fn id_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.trim().chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push('_');
            pending_space = false;
        }
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// blkid's encoding: characters outside `[0-9A-Za-z#+-.:=@_]` (ASCII) as
/// `\xNN`; non-ASCII (valid UTF-8) kept.
#[must_use]
pub fn blkid_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
    }
    out
}

/// The links every block device under `sysfs` should have, probing the
/// device nodes under `dev` (a partition's own node when it can be read,
/// else its disk's view of it). Devices that cannot be probed get their
/// `by-id` links only.
///
/// # Errors
/// `<sysfs>/block` cannot be listed.
pub fn collect(sysfs: &Path, dev: &Path) -> Result<Vec<Link>, SysfsError> {
    let mut all = Vec::new();
    for disk in sysfs::block_devices(sysfs)? {
        if !sysfs::gets_links(&disk.name) || disk.size == 0 {
            continue;
        }
        let probe = match probe::probe_path(&dev.join(&disk.name)) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(device = %disk.name, error = %e, "probe failed");
                None
            }
        };
        let ids = DiskIds::of(&disk);
        all.extend(links_for(&DeviceFacts {
            name: disk.name.clone(),
            partition: None,
            ids: ids.clone(),
            fs: probe.as_ref().and_then(|p| p.fs.clone()),
            part_uuid: None,
            part_label: None,
        }));
        for part in &disk.partitions {
            let entry = probe.as_ref().and_then(|p| p.partition(part.number));
            let fs = match probe::probe_fs_path(&dev.join(&part.name)) {
                Ok(fs) => fs,
                Err(_) => entry.and_then(|e| e.fs.clone()),
            };
            all.extend(links_for(&DeviceFacts {
                name: part.name.clone(),
                partition: Some(part.number),
                ids: ids.clone(),
                fs,
                part_uuid: entry.map(|e| e.uuid.clone()),
                part_label: entry.map(|e| e.label.clone()),
            }));
        }
    }
    let mut seen = BTreeSet::new();
    all.retain(|l| seen.insert(l.path.clone()));
    Ok(all)
}

/// Makes `disk_dir` (`/dev/disk`) hold exactly `links` in the directories
/// of [`DIRS`]: missing or wrong links are (re)made atomically, symlinks
/// nobody claims are removed; other files are left alone.
pub fn apply(disk_dir: &Path, links: &[Link]) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
    for l in links {
        wanted.entry(l.path.as_str()).or_insert(l.target.as_str());
    }
    for dir in DIRS {
        let path = disk_dir.join(dir);
        if let Err(source) = std::fs::create_dir_all(&path) {
            report.errors.push(LinkError::CreateDir { path, source });
        }
    }
    for (&path, &target) in &wanted {
        let full = disk_dir.join(path);
        if std::fs::read_link(&full).is_ok_and(|t| t == Path::new(target)) {
            continue;
        }
        match replace_link(&full, target) {
            Ok(()) => report.created += 1,
            Err(source) => report.errors.push(LinkError::Link {
                path: full,
                target: target.to_owned(),
                source,
            }),
        }
    }
    for dir in DIRS {
        let Ok(entries) = std::fs::read_dir(disk_dir.join(dir)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if wanted.contains_key(rel.as_str()) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => report.removed += 1,
                Err(source) => report.errors.push(LinkError::Remove { path, source }),
            }
        }
    }
    report
}

/// Points `link` at `target` without a moment where it is missing: a new
/// symlink under a temporary name, renamed over the old one.
fn replace_link(link: &Path, target: &str) -> std::io::Result<()> {
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.udevd-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Recomputes every link from `sysfs` and the nodes under `dev`, and applies
/// them to `<dev>/disk`.
///
/// # Errors
/// `<sysfs>/block` cannot be listed (nothing is changed then).
pub fn sync(sysfs: &Path, dev: &Path) -> Result<ApplyReport, SysfsError> {
    let links = collect(sysfs, dev)?;
    Ok(apply(&dev.join("disk"), &links))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FsKind;
    use crate::testing::{FakeDisk, sample_sysfs_partitions, write_fake_disk, write_sample_image};

    fn link(path: &str, target: &str) -> Link {
        Link {
            path: path.into(),
            target: target.into(),
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(blkid_encode("my data/1"), "my\\x20data\\x2f1");
        assert_eq!(blkid_encode("a\\b"), "a\\x5cb");
        assert_eq!(blkid_encode("été-1.2_x"), "été-1.2_x");
        assert_eq!(id_escape("  QEMU   HARDDISK  "), "QEMU_HARDDISK");
        assert_eq!(id_escape("a/b*c"), "a_b_c");
    }

    #[test]
    fn by_id_per_bus() {
        let virtio = DiskIds {
            transport: Transport::Virtio,
            serial: "disk one".into(),
            ..DiskIds::default()
        };
        assert_eq!(by_id_names(&virtio), ["virtio-disk_one"]);

        let nvme = DiskIds {
            transport: Transport::Nvme,
            model: "QEMU NVMe Ctrl".into(),
            serial: "deadbeef".into(),
            wwid: "eui.0011223344556677".into(),
            ..DiskIds::default()
        };
        assert_eq!(
            by_id_names(&nvme),
            ["nvme-QEMU_NVMe_Ctrl_deadbeef", "nvme-eui.0011223344556677"]
        );

        let ata = DiskIds {
            transport: Transport::Ata,
            vendor: "ATA".into(),
            model: "QEMU HARDDISK".into(),
            serial: "QM00001".into(),
            wwid: "naa.5000C500A1B2C3D4".into(),
            ..DiskIds::default()
        };
        assert_eq!(
            by_id_names(&ata),
            ["ata-QEMU_HARDDISK_QM00001", "wwn-0x5000c500a1b2c3d4"]
        );

        let scsi = DiskIds {
            transport: Transport::Scsi,
            vendor: "QEMU".into(),
            model: "QEMU HARDDISK".into(),
            serial: "abc".into(),
            ..DiskIds::default()
        };
        assert_eq!(by_id_names(&scsi), ["scsi-SQEMU_QEMU_HARDDISK_abc"]);
        let scsi_t10 = DiskIds {
            wwid: "t10.ATA     QEMU HARDDISK   QM00001".into(),
            ..scsi
        };
        assert_eq!(by_id_names(&scsi_t10), ["scsi-1ATA_QEMU_HARDDISK_QM00001"]);

        let mmc = DiskIds {
            transport: Transport::Mmc,
            card_name: "SD32G".into(),
            serial: "0x1234abcd".into(),
            ..DiskIds::default()
        };
        assert_eq!(by_id_names(&mmc), ["mmc-SD32G_0x1234abcd"]);

        assert!(by_id_names(&DiskIds::default()).is_empty());
        assert!(
            by_id_names(&DiskIds {
                transport: Transport::Virtio,
                ..DiskIds::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn partition_links_with_escaping() {
        let facts = DeviceFacts {
            name: "vda4".into(),
            partition: Some(4),
            ids: DiskIds {
                transport: Transport::Virtio,
                serial: "disk-one".into(),
                ..DiskIds::default()
            },
            fs: Some(Fs {
                kind: FsKind::Ext4,
                uuid: Some("11223344-5566-7788-99aa-bbccddeeff00".into()),
                label: Some("my data/1".into()),
            }),
            part_uuid: Some("a0000000-0000-4000-8000-000000000004".into()),
            part_label: Some("data 1/é".into()),
        };
        assert_eq!(
            links_for(&facts),
            [
                link("by-id/virtio-disk-one-part4", "../../vda4"),
                link("by-uuid/11223344-5566-7788-99aa-bbccddeeff00", "../../vda4"),
                link("by-label/my\\x20data\\x2f1", "../../vda4"),
                link(
                    "by-partuuid/a0000000-0000-4000-8000-000000000004",
                    "../../vda4"
                ),
                link("by-partlabel/data\\x201\\x2fé", "../../vda4"),
            ]
        );
    }

    #[test]
    fn luks_gets_a_uuid_link_but_no_label_link() {
        let facts = DeviceFacts {
            name: "sda2".into(),
            partition: Some(2),
            fs: Some(Fs {
                kind: FsKind::Luks,
                uuid: Some("5e1f0000-0000-4000-8000-00000000beef".into()),
                label: Some("STATE".into()),
            }),
            ..DeviceFacts::default()
        };
        assert_eq!(
            links_for(&facts),
            [link(
                "by-uuid/5e1f0000-0000-4000-8000-00000000beef",
                "../../sda2"
            )]
        );
    }

    /// A fake sysfs with a virtio disk `vda` whose node is the sample image,
    /// and an empty loop device.
    fn node() -> (tempfile::TempDir, PathBuf, PathBuf) {
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
        write_fake_disk(
            &sys,
            &FakeDisk {
                name: "loop0".into(),
                sectors: 0,
                ..FakeDisk::default()
            },
        )
        .unwrap();
        write_sample_image(&dev.join("vda")).unwrap();
        (dir, sys, dev)
    }

    #[test]
    fn collects_links_from_sysfs_and_the_probed_image() {
        let (_dir, sys, dev) = node();
        let links = collect(&sys, &dev).unwrap();
        let expected = [
            link("by-id/virtio-disk-one", "../../vda"),
            link("by-id/virtio-disk-one-part1", "../../vda1"),
            link("by-uuid/1234-ABCD", "../../vda1"),
            link("by-label/EFI", "../../vda1"),
            link(
                "by-partuuid/3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                "../../vda1",
            ),
            link("by-partlabel/EFI", "../../vda1"),
            link("by-id/virtio-disk-one-part2", "../../vda2"),
            link("by-uuid/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "../../vda2"),
            link("by-label/BOOT", "../../vda2"),
            link(
                "by-partuuid/a0000000-0000-4000-8000-000000000002",
                "../../vda2",
            ),
            link("by-partlabel/BOOT", "../../vda2"),
            link("by-id/virtio-disk-one-part3", "../../vda3"),
            link("by-uuid/5ea7e000-0000-4000-8000-000000000003", "../../vda3"),
            link("by-label/STATE", "../../vda3"),
            link(
                "by-partuuid/a0000000-0000-4000-8000-000000000003",
                "../../vda3",
            ),
            link("by-partlabel/STATE", "../../vda3"),
            link("by-id/virtio-disk-one-part4", "../../vda4"),
            link("by-uuid/11223344-5566-7788-99aa-bbccddeeff00", "../../vda4"),
            link("by-label/my\\x20data\\x2f1", "../../vda4"),
            link(
                "by-partuuid/a0000000-0000-4000-8000-000000000004",
                "../../vda4",
            ),
            link("by-partlabel/data\\x201\\x2fé", "../../vda4"),
        ];
        assert_eq!(links, expected);
    }

    #[test]
    fn apply_makes_replaces_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let first = [
            link("by-label/EFI", "../../vda1"),
            link("by-uuid/1234-ABCD", "../../vda1"),
            link("by-id/virtio-x", "../../vda"),
        ];
        let report = apply(&disk, &first);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!((report.created, report.removed), (3, 0));
        for d in DIRS {
            assert!(disk.join(d).is_dir(), "{d}");
        }
        assert_eq!(
            std::fs::read_link(disk.join("by-label/EFI")).unwrap(),
            Path::new("../../vda1")
        );

        // Unchanged: nothing to do.
        let report = apply(&disk, &first);
        assert_eq!((report.created, report.removed), (0, 0));

        // A file that is not a link is never touched.
        std::fs::write(disk.join("by-id/README"), "mine").unwrap();
        // The label moved to vdb1, the uuid went away.
        let second = [
            link("by-label/EFI", "../../vdb1"),
            link("by-id/virtio-x", "../../vda"),
        ];
        let report = apply(&disk, &second);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!((report.created, report.removed), (1, 1));
        assert_eq!(
            std::fs::read_link(disk.join("by-label/EFI")).unwrap(),
            Path::new("../../vdb1")
        );
        assert!(
            std::fs::symlink_metadata(disk.join("by-uuid/1234-ABCD")).is_err(),
            "stale link left behind"
        );
        assert!(disk.join("by-id/README").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(disk.join("by-label"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("EFI")]);
    }

    #[test]
    fn sync_applies_collected_links_under_dev_disk() {
        let (_dir, sys, dev) = node();
        let report = sync(&sys, &dev).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.created, 21);
        assert_eq!(
            std::fs::read_link(dev.join("disk/by-label/my\\x20data\\x2f1")).unwrap(),
            Path::new("../../vda4")
        );
        assert_eq!(
            std::fs::read_link(dev.join("disk/by-partlabel/STATE")).unwrap(),
            Path::new("../../vda3")
        );
        // The disk's node goes away: only its by-id links remain, and its
        // partitions' (from sysfs) by-id links.
        std::fs::remove_file(dev.join("vda")).unwrap();
        let report = sync(&sys, &dev).unwrap();
        assert_eq!(report.created, 0);
        assert_eq!(report.removed, 16);
        assert!(dev.join("disk/by-id/virtio-disk-one-part4").is_symlink());
    }
}
