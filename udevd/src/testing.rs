//! Builders for fake sysfs trees and disk images.
//!
//! The unit and integration tests lay out what the kernel would show (a
//! sysfs tree in a temporary directory, a disk as an image file with a GPT
//! and filesystem superblocks written byte by byte) and run the real code
//! over it. Nothing here is used by the daemon itself.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use machinery::gpt;

use crate::probe;

/// A disk to lay out in a fake sysfs tree.
#[derive(Debug, Clone, Default)]
pub struct FakeDisk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// The parent device below `devices/`, e.g.
    /// `pci0000:00/0000:00:05.0/virtio2`; empty for a virtual device (no
    /// `device` link, laid out under `devices/virtual/block`).
    pub device_path: String,
    /// The disk's directory sits directly in its parent device's (NVMe)
    /// rather than in its `block/` subdirectory.
    pub flat: bool,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// `queue/rotational`.
    pub rotational: bool,
    /// `ro`.
    pub readonly: bool,
    /// More attribute files of the disk: (relative path, content).
    pub attrs: Vec<(String, String)>,
    /// Attribute files of the parent device (`device/<path>`).
    pub device_attrs: Vec<(String, String)>,
    /// The parent device's `vpd_pg80` (binary).
    pub device_vpd_pg80: Option<Vec<u8>>,
    /// Partitions: (name, number, start sector, size in sectors).
    pub partitions: Vec<(String, u32, u64, u64)>,
}

/// A CD drive `name` (`sr0`) on an ATA host, as QEMU's IDE CD-ROM shows
/// in sysfs (the kernel gives a drive a size with or without a disc).
#[must_use]
pub fn cd_drive(name: &str) -> FakeDisk {
    FakeDisk {
        name: name.into(),
        device_path: format!("pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:{name}"),
        sectors: 2_097_151,
        ..FakeDisk::default()
    }
}

/// Lays `disk` out under `sysfs` as the kernel does: its directory below
/// `devices/`, with `size`, `ro`, `queue/rotational`, `uevent`, the
/// `subsystem` and `device` links and one subdirectory per partition, and
/// the `block/<name>` link to it.
///
/// # Errors
/// A file or link cannot be created.
pub fn write_fake_disk(sysfs: &Path, disk: &FakeDisk) -> io::Result<()> {
    let parent = if disk.device_path.is_empty() {
        "virtual".to_owned()
    } else {
        disk.device_path.clone()
    };
    let rel_dir = if disk.flat {
        format!("devices/{parent}/{}", disk.name)
    } else {
        format!("devices/{parent}/block/{}", disk.name)
    };
    let dir = sysfs.join(&rel_dir);
    std::fs::create_dir_all(sysfs.join("class/block"))?;
    std::fs::create_dir_all(sysfs.join("block"))?;
    write(&dir.join("size"), &format!("{}\n", disk.sectors))?;
    write(&dir.join("ro"), flag(disk.readonly))?;
    write(&dir.join("queue/rotational"), flag(disk.rotational))?;
    write(&dir.join("uevent"), "")?;
    std::os::unix::fs::symlink(
        format!("{}class/block", up(&rel_dir)),
        dir.join("subsystem"),
    )?;
    if !disk.device_path.is_empty() {
        let parent_dir = sysfs.join("devices").join(&parent);
        std::os::unix::fs::symlink(if disk.flat { ".." } else { "../.." }, dir.join("device"))?;
        write(&parent_dir.join("uevent"), "")?;
        for (name, content) in &disk.device_attrs {
            write(&parent_dir.join(name), content)?;
        }
        if let Some(page) = &disk.device_vpd_pg80 {
            std::fs::write(parent_dir.join("vpd_pg80"), page)?;
        }
    }
    for (name, content) in &disk.attrs {
        write(&dir.join(name), content)?;
    }
    for (name, number, start, sectors) in &disk.partitions {
        let pdir = dir.join(name);
        write(&pdir.join("partition"), &format!("{number}\n"))?;
        write(&pdir.join("start"), &format!("{start}\n"))?;
        write(&pdir.join("size"), &format!("{sectors}\n"))?;
        write(&pdir.join("ro"), flag(disk.readonly))?;
        write(&pdir.join("uevent"), "")?;
        std::os::unix::fs::symlink(
            format!("{}class/block", up(&format!("{rel_dir}/{name}"))),
            pdir.join("subsystem"),
        )?;
    }
    std::os::unix::fs::symlink(
        format!("../{rel_dir}"),
        sysfs.join("block").join(&disk.name),
    )
}

fn flag(on: bool) -> &'static str {
    if on { "1\n" } else { "0\n" }
}

/// `../` once per component of `rel`.
fn up(rel: &str) -> String {
    "../".repeat(rel.split('/').count())
}

fn write(path: &Path, content: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, content)
}

/// A filesystem superblock to write into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeFs {
    /// ext4 (extents feature set).
    Ext4 {
        /// UUID text.
        uuid: String,
        /// Label (up to 16 bytes).
        label: String,
    },
    /// XFS.
    Xfs {
        /// UUID text.
        uuid: String,
        /// Label (up to 12 bytes).
        label: String,
    },
    /// FAT32.
    Vfat {
        /// Volume id.
        id: u32,
        /// Label (up to 11 bytes).
        label: String,
    },
    /// FAT16.
    Fat16 {
        /// Volume id.
        id: u32,
        /// Label (up to 11 bytes).
        label: String,
    },
    /// squashfs (magic only).
    Squashfs,
    /// LUKS2 header.
    Luks2 {
        /// UUID text.
        uuid: String,
        /// Label (up to 48 bytes).
        label: String,
    },
}

/// A GPT partition to write into an image.
#[derive(Debug, Clone)]
pub struct ImagePart {
    /// Partition type GUID.
    pub type_guid: String,
    /// Unique partition GUID.
    pub uuid: String,
    /// Partition name.
    pub label: String,
    /// First LBA.
    pub start_lba: u64,
    /// Last LBA (inclusive).
    pub end_lba: u64,
    /// A filesystem to write at its start.
    pub fs: Option<FakeFs>,
}

/// Entries in the GPT partition array.
const ENTRIES: u32 = 128;
/// Bytes per GPT entry.
const ENTRY_SIZE: u32 = 128;
const SECTOR: u64 = 512;

fn bad_input(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

fn guid(s: &str) -> io::Result<[u8; 16]> {
    probe::parse_guid(s).ok_or_else(|| bad_input(&format!("not a GUID: {s:?}")))
}

fn uuid(s: &str) -> io::Result<[u8; 16]> {
    probe::parse_uuid(s).ok_or_else(|| bad_input(&format!("not a UUID: {s:?}")))
}

/// Writes a disk image of `total_sectors` 512-byte sectors at `path`: a
/// protective MBR, the primary GPT (header at LBA 1, 128 entries from LBA
/// 2), the backup GPT at the end, and each partition's filesystem.
///
/// # Errors
/// The image cannot be written, or a GUID does not parse.
pub fn write_gpt_image(
    path: &Path,
    total_sectors: u64,
    disk_guid: &str,
    parts: &[ImagePart],
) -> io::Result<()> {
    let entry_bytes = (ENTRIES * ENTRY_SIZE) as usize;
    let entry_sectors = entry_bytes as u64 / SECTOR;
    if total_sectors < 2 * entry_sectors + 4 {
        return Err(bad_input("image too small for a GPT"));
    }
    let file = File::create(path)?;
    file.set_len(total_sectors * SECTOR)?;

    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0xEE;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    let covered = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&covered.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.write_all_at(&mbr, 0)?;

    let mut entries = vec![0u8; entry_bytes];
    for (e, p) in entries.chunks_exact_mut(ENTRY_SIZE as usize).zip(parts) {
        let entry = gpt::Entry {
            type_guid: guid(&p.type_guid)?,
            unique_guid: guid(&p.uuid)?,
            first_lba: p.start_lba,
            last_lba: p.end_lba,
            attributes: 0,
            name: p.label.encode_utf16().collect(),
        };
        e.copy_from_slice(&entry.to_bytes());
        if let Some(fs) = &p.fs {
            write_fs(&file, p.start_lba * SECTOR, fs)?;
        }
    }
    let last = total_sectors - 1;
    let backup_entries = last - entry_sectors;
    let primary = gpt::Header {
        my_lba: 1,
        alternate_lba: last,
        first_usable_lba: 2 + entry_sectors,
        last_usable_lba: last - entry_sectors - 1,
        disk_guid: guid(disk_guid)?,
        entries_lba: 2,
        entry_count: ENTRIES,
        entry_size: ENTRY_SIZE,
        entries_crc: gpt::crc32(&entries),
    };
    let backup = gpt::Header {
        my_lba: last,
        alternate_lba: 1,
        entries_lba: backup_entries,
        ..primary.clone()
    };
    file.write_all_at(&entries, 2 * SECTOR)?;
    file.write_all_at(&primary.to_bytes(), SECTOR)?;
    file.write_all_at(&entries, backup_entries * SECTOR)?;
    file.write_all_at(&backup.to_bytes(), last * SECTOR)?;
    Ok(())
}

/// `text` as `len` bytes, cut or padded with `fill`.
fn padded(text: &str, len: usize, fill: u8) -> Vec<u8> {
    let mut b: Vec<u8> = text.bytes().take(len).collect();
    b.resize(len, fill);
    b
}

/// Writes the superblock of `fs` into `file` for a filesystem starting at
/// byte `offset`.
///
/// # Errors
/// The write fails, or a UUID does not parse.
pub fn write_fs(file: &File, offset: u64, fs: &FakeFs) -> io::Result<()> {
    match fs {
        FakeFs::Ext4 { uuid: id, label } => {
            let mut sb = [0u8; 1024];
            sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
            // INCOMPAT_EXTENTS
            sb[0x60..0x64].copy_from_slice(&0x40u32.to_le_bytes());
            sb[104..120].copy_from_slice(&uuid(id)?);
            sb[120..136].copy_from_slice(&padded(label, 16, 0));
            file.write_all_at(&sb, offset + 1024)
        }
        FakeFs::Xfs { uuid: id, label } => {
            let mut sb = [0u8; 512];
            sb[0..4].copy_from_slice(b"XFSB");
            sb[32..48].copy_from_slice(&uuid(id)?);
            sb[108..120].copy_from_slice(&padded(label, 12, 0));
            file.write_all_at(&sb, offset)
        }
        FakeFs::Vfat { id, label } => {
            let mut b = fat_boot_sector();
            b[66] = 0x29;
            b[67..71].copy_from_slice(&id.to_le_bytes());
            b[71..82].copy_from_slice(&padded(label, 11, b' '));
            b[82..90].copy_from_slice(b"FAT32   ");
            file.write_all_at(&b, offset)
        }
        FakeFs::Fat16 { id, label } => {
            let mut b = fat_boot_sector();
            b[38] = 0x29;
            b[39..43].copy_from_slice(&id.to_le_bytes());
            b[43..54].copy_from_slice(&padded(label, 11, b' '));
            b[54..62].copy_from_slice(b"FAT16   ");
            file.write_all_at(&b, offset)
        }
        FakeFs::Squashfs => file.write_all_at(b"hsqs", offset),
        FakeFs::Luks2 { uuid: id, label } => {
            uuid(id)?;
            let mut b = [0u8; 512];
            b[0..6].copy_from_slice(b"LUKS\xba\xbe");
            b[6..8].copy_from_slice(&2u16.to_be_bytes());
            b[24..72].copy_from_slice(&padded(label, 48, 0));
            b[168..208].copy_from_slice(&padded(id, 40, 0));
            file.write_all_at(&b, offset)
        }
    }
}

fn fat_boot_sector() -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"mkfs.fat");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = 1;
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The Linux data partition type.
pub const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
/// The EFI system partition type.
pub const EFI_SYSTEM: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The disk GUID of [`write_sample_image`]'s image.
pub const SAMPLE_DISK_GUID: &str = "5c6f1d2e-1111-4222-8333-444455556666";
/// The size of [`write_sample_image`]'s image, in 512-byte sectors (8 MiB).
pub const SAMPLE_SECTORS: u64 = 16384;

/// A Talos-like layout: EFI (FAT32), BOOT (XFS), STATE (XFS) and a data
/// partition whose names need escaping (ext4 labelled `my data/1`).
#[must_use]
pub fn sample_parts() -> Vec<ImagePart> {
    vec![
        ImagePart {
            type_guid: EFI_SYSTEM.into(),
            uuid: "3F2504E0-4F89-41D3-9A0C-0305E82C3301".into(),
            label: "EFI".into(),
            start_lba: 2048,
            end_lba: 4095,
            fs: Some(FakeFs::Vfat {
                id: 0x1234_ABCD,
                label: "EFI".into(),
            }),
        },
        ImagePart {
            type_guid: LINUX_DATA.into(),
            uuid: "a0000000-0000-4000-8000-000000000002".into(),
            label: "BOOT".into(),
            start_lba: 4096,
            end_lba: 6143,
            fs: Some(FakeFs::Xfs {
                uuid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
                label: "BOOT".into(),
            }),
        },
        ImagePart {
            type_guid: LINUX_DATA.into(),
            uuid: "a0000000-0000-4000-8000-000000000003".into(),
            label: "STATE".into(),
            start_lba: 6144,
            end_lba: 8191,
            fs: Some(FakeFs::Xfs {
                uuid: "5ea7e000-0000-4000-8000-000000000003".into(),
                label: "STATE".into(),
            }),
        },
        ImagePart {
            type_guid: LINUX_DATA.into(),
            uuid: "a0000000-0000-4000-8000-000000000004".into(),
            label: "data 1/é".into(),
            start_lba: 8192,
            end_lba: 10239,
            fs: Some(FakeFs::Ext4 {
                uuid: "11223344-5566-7788-99aa-bbccddeeff00".into(),
                label: "my data/1".into(),
            }),
        },
    ]
}

/// Writes the [`sample_parts`] image at `path`.
///
/// # Errors
/// The image cannot be written.
pub fn write_sample_image(path: &Path) -> io::Result<()> {
    write_gpt_image(path, SAMPLE_SECTORS, SAMPLE_DISK_GUID, &sample_parts())
}

/// The sysfs partitions of [`sample_parts`] for a disk named `disk`
/// (`vda1`...; `nvme0n1p1`... when the name ends in a digit).
#[must_use]
pub fn sample_sysfs_partitions(disk: &str) -> Vec<(String, u32, u64, u64)> {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    sample_parts()
        .iter()
        .zip(1u32..)
        .map(|(p, n)| {
            (
                format!("{disk}{sep}{n}"),
                n,
                p.start_lba,
                p.end_lba - p.start_lba + 1,
            )
        })
        .collect()
}
