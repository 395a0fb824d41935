//! Identifiers read from a block device or image file: the GPT and the
//! filesystem superblocks (what blkid tells udev, without blkid).
//!
//! Recognised:
//! - GPT: the primary header at LBA 1 (512- or 4096-byte sectors), falling
//!   back to the backup header at the last LBA; both header and entry-array
//!   CRC-32s are checked. Gives the disk GUID and, per partition, its slot
//!   number, unique GUID, type GUID, name (UTF-16LE) and extent.
//! - ext2/3/4 (magic 0xEF53 at 1024+56), XFS (`XFSB`), FAT12/16/32,
//!   squashfs (`hsqs`, no UUID) and LUKS (UUID and, for LUKS2, label);
//! - btrfs (`_BHRfS_M` at 64 KiB + 64), ISO 9660 (`CD001` at 32 KiB + 1;
//!   the primary volume descriptor's label, no UUID), swap (`SWAPSPACE2`
//!   at the end of the first page, 4 to 64 KiB pages; UUID and label) and
//!   LVM2 physical volumes (`LABELONE` in one of the first four sectors;
//!   the PV UUID in LVM's 6-4-4-4-4-4-6 form).
//!
//! GPT GUIDs are printed in the usual mixed-endian form, filesystem UUIDs in
//! byte order, both lowercase; FAT volume ids as `XXXX-XXXX` in uppercase,
//! as blkid does.

use std::fs::File;
use std::io::{Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use machinery::endian::{le16, le32, le64};

use machinery::gpt;

/// Errors probing a device.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The device or image could not be opened.
    #[error("opening {path} to probe it: {source}")]
    Open {
        /// The device or image.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A read failed (other than running past the end).
    #[error("reading {len} bytes at offset {offset} of {path}: {source}")]
    Read {
        /// The device or image.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The cause.
        source: std::io::Error,
    },
}

/// A filesystem (or container) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2.
    Ext2,
    /// ext3 (ext2 with a journal).
    Ext3,
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
    /// FAT12/16/32.
    Vfat,
    /// squashfs.
    Squashfs,
    /// LUKS encrypted volume.
    Luks,
    /// btrfs.
    Btrfs,
    /// ISO 9660 (CD and DVD images).
    Iso9660,
    /// A swap area.
    Swap,
    /// An LVM2 physical volume.
    LvmPv,
}

impl FsKind {
    /// Every kind the probe knows.
    pub const ALL: [FsKind; 11] = [
        FsKind::Ext2,
        FsKind::Ext3,
        FsKind::Ext4,
        FsKind::Xfs,
        FsKind::Vfat,
        FsKind::Squashfs,
        FsKind::Luks,
        FsKind::Btrfs,
        FsKind::Iso9660,
        FsKind::Swap,
        FsKind::LvmPv,
    ];

    /// blkid's TYPE.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Vfat => "vfat",
            FsKind::Squashfs => "squashfs",
            FsKind::Luks => "crypto_LUKS",
            FsKind::Btrfs => "btrfs",
            FsKind::Iso9660 => "iso9660",
            FsKind::Swap => "swap",
            FsKind::LvmPv => "LVM2_member",
        }
    }

    /// Whether udev links it by label: its blkid usage is "filesystem" or
    /// "other" (swap), not "crypto" (LUKS) or "raid" (an LVM PV).
    #[must_use]
    pub const fn has_label_link(self) -> bool {
        !matches!(self, FsKind::Luks | FsKind::LvmPv)
    }

    /// Whether udev links it by UUID: every usage but "raid" (an LVM PV).
    #[must_use]
    pub const fn has_uuid_link(self) -> bool {
        !matches!(self, FsKind::LvmPv)
    }
}

/// A filesystem found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fs {
    /// Its type.
    pub kind: FsKind,
    /// UUID (or FAT volume id), when it has one.
    pub uuid: Option<String>,
    /// Label, when set.
    pub label: Option<String>,
}

/// A GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Slot number, from 1 (the kernel's partition number).
    pub index: u32,
    /// Unique partition GUID (PARTUUID).
    pub uuid: String,
    /// Partition name (PARTLABEL).
    pub label: String,
    /// Partition type GUID.
    pub type_guid: String,
    /// First LBA.
    pub start_lba: u64,
    /// Last LBA (inclusive).
    pub end_lba: u64,
    /// The filesystem at the partition's start, read through the whole
    /// device.
    pub fs: Option<Fs>,
}

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// The GPT disk GUID, when there is a GPT.
    pub pt_uuid: Option<String>,
    /// The logical sector size the GPT was found with.
    pub sector_size: u64,
    /// GPT partitions, by slot.
    pub partitions: Vec<Part>,
    /// A filesystem on the whole device (none when it holds a GPT).
    pub fs: Option<Fs>,
}

impl Probe {
    /// The partition in slot `index`.
    #[must_use]
    pub fn partition(&self, index: u32) -> Option<&Part> {
        self.partitions.iter().find(|p| p.index == index)
    }
}

/// Probes a device or image file for a GPT and filesystems.
///
/// # Errors
/// The file cannot be opened or read.
pub fn probe_path(path: &Path) -> Result<Probe, ProbeError> {
    let file = File::open(path).map_err(|source| ProbeError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    probe_file(&file, path)
}

/// Probes an open device or image; `path` names it in errors.
///
/// # Errors
/// A read fails.
pub fn probe_file(file: &File, path: &Path) -> Result<Probe, ProbeError> {
    let r = Reader { file, path };
    if let Some(gpt) = read_gpt(&r)? {
        let mut partitions = gpt.partitions;
        for p in &mut partitions {
            p.fs = probe_fs_at(&r, p.start_lba.saturating_mul(gpt.sector_size))?;
        }
        return Ok(Probe {
            pt_uuid: Some(gpt.disk_guid),
            sector_size: gpt.sector_size,
            partitions,
            fs: None,
        });
    }
    Ok(Probe {
        pt_uuid: None,
        sector_size: 512,
        partitions: Vec::new(),
        fs: probe_fs_at(&r, 0)?,
    })
}

/// Probes a device (typically a partition) for a filesystem only.
///
/// # Errors
/// The file cannot be opened or read.
pub fn probe_fs_path(path: &Path) -> Result<Option<Fs>, ProbeError> {
    let file = File::open(path).map_err(|source| ProbeError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    probe_fs_file(&file, path)
}

/// Probes an open device (typically a partition) for a filesystem only;
/// `path` names it in errors.
///
/// # Errors
/// A read fails.
pub fn probe_fs_file(file: &File, path: &Path) -> Result<Option<Fs>, ProbeError> {
    probe_fs_at(&Reader { file, path }, 0)
}

// === GUIDs ===

pub use machinery::gpt::{format_guid, format_uuid, parse_guid, parse_uuid};

// === reading ===

struct Reader<'a> {
    file: &'a File,
    path: &'a Path,
}

impl Reader<'_> {
    /// `len` bytes at `offset`, or `None` when the device ends first.
    fn read(&self, offset: u64, len: usize) -> Result<Option<Vec<u8>>, ProbeError> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let Some(at) = offset.checked_add(done as u64) else {
                return Ok(None);
            };
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => return Ok(None),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ProbeError::Read {
                        path: self.path.to_path_buf(),
                        offset,
                        len,
                        source,
                    });
                }
            }
        }
        Ok(Some(buf))
    }

    /// The size in bytes (seeking to the end also works for block devices,
    /// whose metadata says 0).
    fn size(&self) -> Option<u64> {
        let mut f = self.file;
        f.seek(SeekFrom::End(0)).ok()
    }
}

fn array16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

/// Text up to the first NUL, trimmed; `None` when empty.
fn c_string(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

// === GPT ===

struct Gpt {
    disk_guid: String,
    sector_size: u64,
    partitions: Vec<Part>,
}

fn read_gpt(r: &Reader<'_>) -> Result<Option<Gpt>, ProbeError> {
    for sector in [512u64, 4096] {
        if let Some(gpt) = read_gpt_header(r, sector, 1)? {
            return Ok(Some(gpt));
        }
    }
    // The primary copy is damaged: try the backup at the last LBA.
    let Some(size) = r.size() else {
        return Ok(None);
    };
    for sector in [512u64, 4096] {
        if size < 2 * sector {
            continue;
        }
        if let Some(gpt) = read_gpt_header(r, sector, size / sector - 1)? {
            return Ok(Some(gpt));
        }
    }
    Ok(None)
}

fn read_gpt_header(r: &Reader<'_>, sector: u64, lba: u64) -> Result<Option<Gpt>, ProbeError> {
    let Some(h) = r.read(lba * sector, 512)? else {
        return Ok(None);
    };
    let Ok(header) = gpt::Header::parse(&h, lba) else {
        return Ok(None);
    };
    // The entries' place comes from the disk: an absurd one is no table.
    let Some(at) = header.entries_lba.checked_mul(sector) else {
        return Ok(None);
    };
    let Some(entries) = r.read(at, header.entries_len())? else {
        return Ok(None);
    };
    if header.check_entries(&entries).is_err() {
        return Ok(None);
    }
    let partitions = gpt::entries(&entries, header.entry_size as usize)
        .map(|(index, e)| Part {
            index,
            uuid: format_guid(&e.unique_guid),
            label: e.name_lossy(),
            type_guid: format_guid(&e.type_guid),
            start_lba: e.first_lba,
            end_lba: e.last_lba,
            fs: None,
        })
        .collect();
    Ok(Some(Gpt {
        disk_guid: format_guid(&header.disk_guid),
        sector_size: sector,
        partitions,
    }))
}

// === filesystems ===

fn probe_fs_at(r: &Reader<'_>, offset: u64) -> Result<Option<Fs>, ProbeError> {
    let Some(head) = r.read(offset, 512)? else {
        return Ok(None);
    };
    if let Some(fs) = luks(&head) {
        return Ok(Some(fs));
    }
    if head.starts_with(b"XFSB") {
        return Ok(Some(Fs {
            kind: FsKind::Xfs,
            uuid: Some(format_uuid(&array16(&head, 32))),
            label: c_string(&head[108..120]),
        }));
    }
    if head.starts_with(b"hsqs") {
        return Ok(Some(Fs {
            kind: FsKind::Squashfs,
            uuid: None,
            label: None,
        }));
    }
    if let Some(sb) = r.read(offset + 1024, 1024)?
        && let Some(fs) = ext(&sb)
    {
        return Ok(Some(fs));
    }
    // FAT before the signatures read further in, as blkid and upstream
    // order them: a FAT volume's data may hold stale bytes there.
    if let Some(fs) = fat(&head) {
        return Ok(Some(fs));
    }
    if let Some(fs) = lvm_pv(r, offset)? {
        return Ok(Some(fs));
    }
    if let Some(sb) = r.read(offset + 0x10000, 0x1000)?
        && let Some(fs) = btrfs(&sb)
    {
        return Ok(Some(fs));
    }
    if let Some(fs) = swap(r, offset)? {
        return Ok(Some(fs));
    }
    iso9660(r, offset)
}

/// An LVM2 physical volume: the label header in one of the first four
/// sectors (`LABELONE`, the sector's own number at 8, the offset of its
/// content at 20, the type `LVM2 001` at 24); the content starts with the
/// PV UUID (32 characters), printed as LVM prints it, 6-4-4-4-4-4-6.
fn lvm_pv(r: &Reader<'_>, offset: u64) -> Result<Option<Fs>, ProbeError> {
    let Some(head) = r.read(offset, 2048)? else {
        return Ok(None);
    };
    for (number, sector) in (0u64..).zip(head.chunks_exact(512)) {
        if !sector.starts_with(b"LABELONE")
            || le64(sector, 8) != number
            || &sector[24..32] != b"LVM2 001"
        {
            continue;
        }
        let content = le32(sector, 20) as usize;
        let Some(id) = sector.get(content..content + 32) else {
            continue;
        };
        if id.iter().all(u8::is_ascii_alphanumeric) {
            let mut uuid = String::with_capacity(38);
            let mut at = 0;
            for (i, len) in [6, 4, 4, 4, 4, 4, 6].into_iter().enumerate() {
                if i > 0 {
                    uuid.push('-');
                }
                uuid.push_str(&String::from_utf8_lossy(&id[at..at + len]));
                at += len;
            }
            return Ok(Some(Fs {
                kind: FsKind::LvmPv,
                uuid: Some(uuid),
                label: None,
            }));
        }
    }
    Ok(None)
}

/// btrfs: the superblock at 64 KiB, its fsid (byte order) at 32 and label
/// (256 bytes) at 299.
fn btrfs(sb: &[u8]) -> Option<Fs> {
    if &sb[0x40..0x48] != b"_BHRfS_M" {
        return None;
    }
    Some(Fs {
        kind: FsKind::Btrfs,
        uuid: Some(format_uuid(&array16(sb, 0x20))),
        label: c_string(&sb[0x12B..0x22B]),
    })
}

/// A swap area: `SWAPSPACE2` in the last 10 bytes of its first page (4 to
/// 64 KiB) and a version-1 header at 1024 (version 1, a last page), which
/// holds the UUID (byte order) at 12 and the label at 28. The old
/// `SWAP-SPACE` format has neither.
fn swap(r: &Reader<'_>, offset: u64) -> Result<Option<Fs>, ProbeError> {
    for page in [4096u64, 8192, 16384, 32768, 65536] {
        let Some(magic) = r.read(offset + page - 10, 10)? else {
            return Ok(None);
        };
        if magic == b"SWAP-SPACE" {
            return Ok(Some(Fs {
                kind: FsKind::Swap,
                uuid: None,
                label: None,
            }));
        }
        if magic != b"SWAPSPACE2" {
            continue;
        }
        let Some(header) = r.read(offset + 1024, 44)? else {
            return Ok(None);
        };
        if le32(&header, 0) != 1 || le32(&header, 4) == 0 {
            return Ok(None);
        }
        let uuid = array16(&header, 12);
        return Ok(Some(Fs {
            kind: FsKind::Swap,
            uuid: (uuid != [0u8; 16]).then(|| format_uuid(&uuid)),
            label: c_string(&header[28..44]),
        }));
    }
    Ok(None)
}

/// ISO 9660: the volume descriptors from sector 16 (2 KiB sectors; each
/// `CD001`, version 1) up to the terminator (type 255), at most 16. The
/// label is the volume id (32 bytes at 40): a Joliet supplementary
/// descriptor's (type 2 with a UCS-2 escape sequence at 88, UTF-16BE)
/// when there is one, as upstream prefers it, else the primary's (type 1,
/// space-padded). blkid makes a UUID from the descriptor's dates; upstream's
/// probe gives none, nor does this one.
fn iso9660(r: &Reader<'_>, offset: u64) -> Result<Option<Fs>, ProbeError> {
    let mut primary = None;
    let mut joliet = None;
    for sector in 16..32u64 {
        let Some(d) = r.read(offset + sector * 2048, 2048)? else {
            break;
        };
        if &d[1..6] != b"CD001" || d[6] != 1 {
            break;
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(c_string(&d[40..72])),
            2 if joliet.is_none() && matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => {
                let units: Vec<u16> = d[40..72]
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                let text: String = char::decode_utf16(units)
                    .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect();
                let text = text.trim_end_matches(['\0', ' ']).trim().to_owned();
                joliet = Some((!text.is_empty()).then_some(text));
            }
            255 => break,
            _ => {}
        }
    }
    Ok(primary.map(|label| Fs {
        kind: FsKind::Iso9660,
        uuid: None,
        label: joliet.flatten().or(label),
    }))
}

fn ext(sb: &[u8]) -> Option<Fs> {
    if le16(sb, 56) != 0xEF53 {
        return None;
    }
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    // extents, 64bit, flex_bg
    const INCOMPAT_EXT4: u32 = 0x40 | 0x80 | 0x200;
    // huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum
    const RO_COMPAT_EXT4: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return None;
    }
    let kind = if incompat & INCOMPAT_EXT4 != 0 || ro_compat & RO_COMPAT_EXT4 != 0 {
        FsKind::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    };
    let uuid = array16(sb, 104);
    Some(Fs {
        kind,
        uuid: (uuid != [0u8; 16]).then(|| format_uuid(&uuid)),
        label: c_string(&sb[120..136]),
    })
}

/// The file system types FAT12/16 boot sectors carry at byte 54.
const FAT16_TYPES: [&[u8]; 3] = [b"FAT12", b"FAT16", b"FAT     "];

fn fat(b: &[u8]) -> Option<Fs> {
    if b[510] != 0x55 || b[511] != 0xAA {
        return None;
    }
    let bytes_per_sector = le16(b, 11);
    if !(512..=4096).contains(&bytes_per_sector) || !bytes_per_sector.is_power_of_two() {
        return None;
    }
    let (id_at, label_at) = if b[82..].starts_with(b"FAT32   ") {
        (67, 71)
    } else if FAT16_TYPES.iter().any(|t| b[54..].starts_with(t)) {
        (39, 43)
    } else {
        return None;
    };
    let id = le32(b, id_at);
    let label = String::from_utf8_lossy(&b[label_at..label_at + 11])
        .trim_end_matches([' ', '\0'])
        .to_owned();
    Some(Fs {
        kind: FsKind::Vfat,
        uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)),
        label: (!label.is_empty() && label != "NO NAME").then_some(label),
    })
}

fn luks(b: &[u8]) -> Option<Fs> {
    if !b.starts_with(b"LUKS\xba\xbe") {
        return None;
    }
    let version = u16::from_be_bytes([b[6], b[7]]);
    Some(Fs {
        kind: FsKind::Luks,
        uuid: c_string(&b[168..208]),
        label: if version == 2 {
            c_string(&b[24..72])
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt as _;

    use super::*;
    use crate::testing::{
        EFI_SYSTEM, FakeFs, LINUX_DATA, SAMPLE_DISK_GUID, write_fs, write_sample_image,
    };

    const LINUX: &str = LINUX_DATA;

    #[test]
    fn all_lists_every_kind_once() {
        // A new kind fails to compile here until ALL has it.
        for kind in FsKind::ALL {
            match kind {
                FsKind::Ext2
                | FsKind::Ext3
                | FsKind::Ext4
                | FsKind::Xfs
                | FsKind::Vfat
                | FsKind::Squashfs
                | FsKind::Luks
                | FsKind::Btrfs
                | FsKind::Iso9660
                | FsKind::Swap
                | FsKind::LvmPv => {}
            }
        }
        let names: std::collections::HashSet<&str> =
            FsKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), FsKind::ALL.len());
    }
    const ESP: &str = EFI_SYSTEM;

    /// ISO 9660 descriptors: the Joliet volume id (UTF-16BE) wins over the
    /// primary's, as upstream; without Joliet the primary's; a boot
    /// record before the primary is skipped.
    #[test]
    fn an_iso9660_label_prefers_joliet() {
        let descriptor = |kind: u8, id: &[u8], escape: &[u8]| {
            let mut d = vec![0u8; 2048];
            d[0] = kind;
            d[1..6].copy_from_slice(b"CD001");
            d[6] = 1;
            d[40..40 + id.len()].copy_from_slice(id);
            d[88..88 + escape.len()].copy_from_slice(escape);
            d
        };
        let mut primary_id = [b' '; 32];
        primary_id[..7].copy_from_slice(b"PRIMARY");
        let joliet_id: Vec<u8> = "Joliet ünï"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cd.iso");
        let file = File::create(&path).expect("create");
        file.set_len(1 << 20).expect("size");
        file.write_all_at(&descriptor(0, b"", b""), 16 * 2048)
            .expect("boot record");
        file.write_all_at(&descriptor(1, &primary_id, b""), 17 * 2048)
            .expect("primary");
        file.write_all_at(&descriptor(255, b"", b""), 18 * 2048)
            .expect("terminator");
        let fs = probe_fs_path(&path).expect("probe").expect("an ISO");
        assert_eq!(
            (fs.kind, fs.label.as_deref()),
            (FsKind::Iso9660, Some("PRIMARY"))
        );
        assert_eq!(fs.uuid, None);
        file.write_all_at(&descriptor(2, &joliet_id, b"%/E"), 18 * 2048)
            .expect("joliet");
        file.write_all_at(&descriptor(255, b"", b""), 19 * 2048)
            .expect("terminator");
        let fs = probe_fs_path(&path).expect("probe").expect("an ISO");
        assert_eq!(fs.label.as_deref(), Some("Joliet ünï"));
        // A supplementary descriptor without Joliet's escape is not Joliet.
        file.write_all_at(&descriptor(2, &joliet_id, b"%/X"), 18 * 2048)
            .expect("other");
        let fs = probe_fs_path(&path).expect("probe").expect("an ISO");
        assert_eq!(fs.label.as_deref(), Some("PRIMARY"));
    }

    /// An LVM2 physical volume's label as `pvcreate` writes it: in the
    /// second sector, `LABELONE`, its sector number, CRC and content
    /// offset, the type `LVM2 001`, then the 32-character PV UUID.
    #[test]
    fn an_lvm2_physical_volume_reads_by_its_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pv.img");
        let file = File::create(&path).expect("create");
        file.set_len(4 << 20).expect("size");
        let mut label = Vec::new();
        label.extend_from_slice(b"LABELONE");
        label.extend_from_slice(&1u64.to_le_bytes());
        label.extend_from_slice(&0u32.to_le_bytes()); // CRC, not checked
        label.extend_from_slice(&32u32.to_le_bytes());
        label.extend_from_slice(b"LVM2 001");
        label.extend_from_slice(b"Xq3h7AbcDEf0123456789abcdefGHIJK");
        file.write_all_at(&label, 512).expect("label");
        let fs = probe_fs_path(&path).expect("probe").expect("a PV");
        assert_eq!(
            fs,
            Fs {
                kind: FsKind::LvmPv,
                uuid: Some("Xq3h7A-bcDE-f012-3456-789a-bcde-fGHIJK".to_owned()),
                label: None,
            }
        );
        assert_eq!(fs.kind.as_str(), "LVM2_member");
        // Its blkid usage is "raid": udev links it by neither.
        assert!(!fs.kind.has_uuid_link() && !fs.kind.has_label_link());
        // The same words with another type are not a PV.
        file.write_all_at(b"LVM1 001", 512 + 24).expect("type");
        assert_eq!(probe_fs_path(&path).expect("probe"), None);
    }

    #[test]
    fn gpt_image_and_the_filesystems_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        write_sample_image(&image).unwrap();

        let probe = probe_path(&image).unwrap();
        assert_eq!(probe.pt_uuid.as_deref(), Some(SAMPLE_DISK_GUID));
        assert_eq!(probe.sector_size, 512);
        assert_eq!(probe.fs, None);
        assert_eq!(
            probe.partitions,
            vec![
                Part {
                    index: 1,
                    uuid: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
                    label: "EFI".into(),
                    type_guid: ESP.into(),
                    start_lba: 2048,
                    end_lba: 4095,
                    fs: Some(Fs {
                        kind: FsKind::Vfat,
                        uuid: Some("1234-ABCD".into()),
                        label: Some("EFI".into()),
                    }),
                },
                Part {
                    index: 2,
                    uuid: "a0000000-0000-4000-8000-000000000002".into(),
                    label: "BOOT".into(),
                    type_guid: LINUX.into(),
                    start_lba: 4096,
                    end_lba: 6143,
                    fs: Some(Fs {
                        kind: FsKind::Xfs,
                        uuid: Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into()),
                        label: Some("BOOT".into()),
                    }),
                },
                Part {
                    index: 3,
                    uuid: "a0000000-0000-4000-8000-000000000003".into(),
                    label: "STATE".into(),
                    type_guid: LINUX.into(),
                    start_lba: 6144,
                    end_lba: 8191,
                    fs: Some(Fs {
                        kind: FsKind::Xfs,
                        uuid: Some("5ea7e000-0000-4000-8000-000000000003".into()),
                        label: Some("STATE".into()),
                    }),
                },
                Part {
                    index: 4,
                    uuid: "a0000000-0000-4000-8000-000000000004".into(),
                    label: "data 1/é".into(),
                    type_guid: LINUX.into(),
                    start_lba: 8192,
                    end_lba: 10239,
                    fs: Some(Fs {
                        kind: FsKind::Ext4,
                        uuid: Some("11223344-5566-7788-99aa-bbccddeeff00".into()),
                        label: Some("my data/1".into()),
                    }),
                },
            ]
        );
        assert_eq!(probe.partition(2).unwrap().label, "BOOT");
        assert!(probe.partition(5).is_none());
    }

    #[test]
    fn damaged_primary_header_falls_back_to_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        write_sample_image(&image).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        // Flip a byte of the primary header's disk GUID: its CRC no longer matches.
        f.write_all_at(&[0xFF], 512 + 60).unwrap();
        drop(f);
        let probe = probe_path(&image).unwrap();
        assert_eq!(probe.pt_uuid.as_deref(), Some(SAMPLE_DISK_GUID));
        assert_eq!(probe.partitions.len(), 4);
    }

    #[test]
    fn damaged_entries_mean_no_table() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        write_sample_image(&image).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        // Both entry arrays: their CRCs no longer match.
        f.write_all_at(&[0xFF], 2 * 512 + 60).unwrap();
        f.write_all_at(&[0xFF], (16383 - 32) * 512 + 60).unwrap();
        drop(f);
        let probe = probe_path(&image).unwrap();
        assert_eq!(probe.pt_uuid, None);
        assert!(probe.partitions.is_empty());
    }

    fn bare(fs: &FakeFs) -> Option<Fs> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let f = File::create(&image).unwrap();
        f.set_len(1 << 20).unwrap();
        write_fs(&f, 0, fs).unwrap();
        drop(f);
        let probe = probe_path(&image).unwrap();
        assert_eq!(probe.pt_uuid, None);
        assert_eq!(probe_fs_path(&image).unwrap(), probe.fs);
        probe.fs
    }

    #[test]
    fn bare_filesystems() {
        assert_eq!(
            bare(&FakeFs::Ext4 {
                uuid: "11223344-5566-7788-99aa-bbccddeeff00".into(),
                label: "EPHEMERAL".into(),
            }),
            Some(Fs {
                kind: FsKind::Ext4,
                uuid: Some("11223344-5566-7788-99aa-bbccddeeff00".into()),
                label: Some("EPHEMERAL".into()),
            })
        );
        assert_eq!(
            bare(&FakeFs::Xfs {
                uuid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
                label: String::new(),
            }),
            Some(Fs {
                kind: FsKind::Xfs,
                uuid: Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into()),
                label: None,
            })
        );
        assert_eq!(
            bare(&FakeFs::Fat16 {
                id: 0x0A0B_0C0D,
                label: "NO NAME".into(),
            }),
            Some(Fs {
                kind: FsKind::Vfat,
                uuid: Some("0A0B-0C0D".into()),
                label: None,
            })
        );
        assert_eq!(
            bare(&FakeFs::Squashfs),
            Some(Fs {
                kind: FsKind::Squashfs,
                uuid: None,
                label: None,
            })
        );
        assert_eq!(
            bare(&FakeFs::Luks2 {
                uuid: "5e1f0000-0000-4000-8000-00000000beef".into(),
                label: "STATE".into(),
            }),
            Some(Fs {
                kind: FsKind::Luks,
                uuid: Some("5e1f0000-0000-4000-8000-00000000beef".into()),
                label: Some("STATE".into()),
            })
        );
    }

    #[test]
    fn empty_and_short_files_hold_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.img");
        File::create(&empty).unwrap();
        assert_eq!(
            probe_path(&empty).unwrap(),
            Probe {
                sector_size: 512,
                ..Probe::default()
            }
        );
        let zeros = dir.path().join("zeros.img");
        File::create(&zeros).unwrap().set_len(1 << 16).unwrap();
        assert_eq!(probe_path(&zeros).unwrap().fs, None);
    }

    #[test]
    fn missing_file_error_names_it() {
        let err = probe_path(Path::new("/nonexistent/udevd-probe")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/udevd-probe"),
            "{err}"
        );
    }
}
