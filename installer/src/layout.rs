//! The installed disk's partition layout, and a GPT writer for it.
//!
//! # Layout
//!
//! | # | name        | type       | size            | contents                          |
//! |---|-------------|------------|-----------------|-----------------------------------|
//! | 1 | `EFI`       | ESP        | 512 MiB         | vfat: systemd-boot, slots `A/` and `B/` |
//! | 2 | `META`      | Linux data | 1 MiB           | raw, `machinery::meta`            |
//! | 3 | `STATE`     | Linux data | 300 MiB         | xfs, the machine config           |
//! | 4 | `EPHEMERAL` | Linux data | the rest        | xfs, at least 512 MiB             |
//!
//! Two boot slots let an upgrade write the slot not running and roll back
//! by booting the other one. They are directories on the ESP, not
//! partitions: systemd-boot loads kernels only from the ESP (or one
//! XBOOTLDR partition), and its boot counting, which gives the automatic
//! rollback, works on the loader entries there. STATE is 300 MiB, not
//! upstream's 100 MiB, because mkfs.xfs refuses anything smaller.
//! Partitions start on 1 MiB boundaries (what every partitioning tool
//! does: it suits 4 KiB sectors, SSD erase blocks and RAID stripes alike).
//!
//! # GPT
//!
//! [`plan`] places the partitions; [`gpt_bytes`] renders the table
//! (protective MBR, primary header and entries at the start, backup
//! entries and header at the end), and [`write_gpt`] writes it. Pure
//! except for the write, so tests check the bytes; 512-byte logical
//! sectors only.

use std::path::{Path, PathBuf};

use machinery::endian::{le32, le64};
use machinery::gpt::{self, HEADER_SIZE, crc32, guid, header_crc};

use crate::target::{Disk, TargetError};

/// The logical sector size the layout is computed for.
pub const SECTOR_SIZE: u64 = 512;

const MIB: u64 = 1024 * 1024;

/// Partitions start on multiples of this.
pub const ALIGNMENT: u64 = MIB;

const ALIGNMENT_SECTORS: u64 = ALIGNMENT / SECTOR_SIZE;

/// Where the first partition starts: the first 1 MiB boundary after the
/// primary GPT.
pub const FIRST_PARTITION_LBA: u64 = ALIGNMENT_SECTORS;

/// Partition entries in each table: the standard 128, which fill 32 sectors.
const ENTRY_COUNT: usize = 128;

/// Bytes per partition entry.
const ENTRY_SIZE: usize = 128;

/// Bytes of the entries array.
const ENTRIES_BYTES: usize = ENTRY_COUNT * ENTRY_SIZE;

/// Sectors of the entries array.
const ENTRIES_SECTORS: u64 = ENTRIES_BYTES as u64 / SECTOR_SIZE;

/// The header's first usable LBA: after the MBR, the header and the
/// entries. Partitions themselves start at [`FIRST_PARTITION_LBA`]; the
/// gap is free space, as with every aligning tool.
const FIRST_USABLE_LBA: u64 = 2 + ENTRIES_SECTORS;

/// Sectors at the end of the disk the backup takes: entries, then header.
const BACKUP_SECTORS: u64 = ENTRIES_SECTORS + 1;

/// The EFI System Partition type, C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
pub const ESP_TYPE: [u8; 16] = guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");

/// The Linux filesystem data type, 0FC63DAF-8483-4772-8E79-3D69D8477DE4.
pub const LINUX_DATA_TYPE: [u8; 16] = guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// The EFI System Partition's name.
pub const EFI: &str = "EFI";
/// The META partition's name.
pub const META: &str = "META";
/// The STATE partition's name.
pub const STATE: &str = "STATE";
/// The EPHEMERAL partition's name.
pub const EPHEMERAL: &str = "EPHEMERAL";

/// The EFI System Partition's size: systemd-boot and both slots (each a
/// ~22 MB kernel and initramfs today), with room for them to grow.
pub const EFI_SIZE: u64 = 512 * MIB;
/// The META partition's size (its data takes the first 512 KiB).
pub const META_SIZE: u64 = MIB;
/// The STATE partition's size.
pub const STATE_SIZE: u64 = 300 * MIB;
/// The least EPHEMERAL may get; a smaller disk is refused.
pub const EPHEMERAL_MIN_SIZE: u64 = 512 * MIB;

/// One partition of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec {
    /// The GPT partition name (label).
    pub name: &'static str,
    /// The partition type GUID, in GPT on-disk byte order.
    pub type_guid: [u8; 16],
    /// Bytes, a multiple of [`ALIGNMENT`]; `None` for the rest of the disk
    /// (only the last partition).
    pub size: Option<u64>,
}

/// The installed disk's partitions, in order.
pub const LAYOUT: &[PartitionSpec] = &[
    PartitionSpec {
        name: EFI,
        type_guid: ESP_TYPE,
        size: Some(EFI_SIZE),
    },
    PartitionSpec {
        name: META,
        type_guid: LINUX_DATA_TYPE,
        size: Some(META_SIZE),
    },
    PartitionSpec {
        name: STATE,
        type_guid: LINUX_DATA_TYPE,
        size: Some(STATE_SIZE),
    },
    PartitionSpec {
        name: EPHEMERAL,
        type_guid: LINUX_DATA_TYPE,
        size: None,
    },
];

/// A placed partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition number (1-based; its entry is `index - 1`).
    pub index: u32,
    /// The GPT partition name.
    pub name: String,
    /// The type GUID, on-disk byte order.
    pub type_guid: [u8; 16],
    /// The partition's own GUID (PARTUUID), on-disk byte order.
    pub unique_guid: [u8; 16],
    /// The first sector.
    pub first_lba: u64,
    /// The last sector (inclusive, as GPT stores it).
    pub last_lba: u64,
}

impl Partition {
    /// The size in sectors.
    #[must_use]
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
}

/// Where everything goes on one disk: the input of [`gpt_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The disk GUID, on-disk byte order.
    pub disk_guid: [u8; 16],
    /// Bytes per sector; always [`SECTOR_SIZE`].
    pub sector_size: u64,
    /// The disk's size in sectors (a partial last sector is not counted).
    pub total_sectors: u64,
    /// The partitions, in [`LAYOUT`] order; `partitions[i].index == i + 1`.
    pub partitions: Vec<Partition>,
}

/// A layout could not be planned or written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The disk cannot hold the layout.
    #[error(
        "the disk is too small: {disk_bytes} bytes, the install layout needs at least {minimum} bytes ({minimum_mib} MiB: EFI, META, STATE and 512 MiB of EPHEMERAL)"
    )]
    TooSmall {
        /// The disk's size.
        disk_bytes: u64,
        /// [`minimum_disk_bytes`].
        minimum: u64,
        /// The same, in MiB rounded up.
        minimum_mib: u64,
    },
    /// The device is not the size the plan was made for, so the backup
    /// table would land in the wrong place.
    #[error(
        "{path} is {device_bytes} bytes but the partition plan is for {plan_bytes} bytes: plan for this device's size"
    )]
    SizeMismatch {
        /// The device or image file.
        path: PathBuf,
        /// Its size.
        device_bytes: u64,
        /// `total_sectors * SECTOR_SIZE`.
        plan_bytes: u64,
    },
    /// The table on a disk is not one [`gpt_bytes`] renders, so rewriting
    /// it could lose something: it is left as it is.
    #[error("{path}: {reason}: not the partition table the installer writes, left as it is")]
    NotOurs {
        /// The device or image file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The table describes a larger disk than the device is.
    #[error(
        "{path} is {device_bytes} bytes but its partition table is for {table_bytes} bytes: the disk shrank, left as it is"
    )]
    Shrunk {
        /// The device or image file.
        path: PathBuf,
        /// Its size.
        device_bytes: u64,
        /// The size the table's backup header places the disk's end at.
        table_bytes: u64,
    },
    /// Opening, reading, writing or syncing the disk failed.
    #[error("writing the partition table: {0}")]
    Target(#[from] TargetError),
}

/// A GUID in on-disk byte order, as text in upper case (as `sgdisk` prints
/// it; `blkid` and `/dev/disk/by-partuuid` use lower case).
#[must_use]
pub fn format_guid(g: &[u8; 16]) -> String {
    gpt::format_guid(g).to_ascii_uppercase()
}

/// A random (version 4) GUID in on-disk byte order: the GUID source real
/// callers pass to [`plan`].
#[must_use]
pub fn random_guid() -> [u8; 16] {
    uuid::Uuid::new_v4().to_bytes_le()
}

/// GUIDs derived from `seed` (SHA-256 of seed and a counter, shaped as
/// version-4 GUIDs in on-disk byte order): the GUID source of
/// reproducible images, where the same inputs must give the same table,
/// without sharing GUIDs across differently seeded disks.
pub fn seeded_guids(seed: u64) -> impl FnMut() -> [u8; 16] {
    let mut n = 0u64;
    move || {
        n += 1;
        let mut input = seed.to_le_bytes().to_vec();
        input.extend_from_slice(&n.to_le_bytes());
        let d = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut g = [0u8; 16];
        g.copy_from_slice(&d.as_ref()[..16]);
        // Version 4, RFC 4122 variant, in GPT's mixed-endian byte order.
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        g
    }
}

/// The smallest disk [`plan`] accepts: every fixed-size partition, aligned,
/// plus [`EPHEMERAL_MIN_SIZE`] and the backup table.
#[must_use]
pub fn minimum_disk_bytes() -> u64 {
    let mut next = FIRST_PARTITION_LBA;
    for spec in LAYOUT {
        next = next.next_multiple_of(ALIGNMENT_SECTORS)
            + spec.size.unwrap_or(EPHEMERAL_MIN_SIZE) / SECTOR_SIZE;
    }
    // `next` is one past the last partition, which may end on the last
    // usable LBA, right before the backup table.
    (next + BACKUP_SECTORS) * SECTOR_SIZE
}

/// Places [`LAYOUT`] on a disk of `disk_bytes`: each partition starts on a
/// 1 MiB boundary right after the previous one; the last takes the rest of
/// the disk up to the last 1 MiB boundary before the backup table.
///
/// `guids` gives the disk GUID, then each partition's in order (in
/// on-disk byte order): [`random_guid`] for a real install; tests pass a
/// counter, and the plan is then deterministic.
///
/// # Errors
/// [`LayoutError::TooSmall`] naming the disk's size and the minimum.
pub fn plan(disk_bytes: u64, guids: &mut impl FnMut() -> [u8; 16]) -> Result<Plan, LayoutError> {
    let minimum = minimum_disk_bytes();
    if disk_bytes < minimum {
        return Err(LayoutError::TooSmall {
            disk_bytes,
            minimum,
            minimum_mib: minimum.div_ceil(MIB),
        });
    }
    let total_sectors = disk_bytes / SECTOR_SIZE;
    let rest_end = rest_end(total_sectors);
    let disk_guid = guids();
    let mut partitions = Vec::with_capacity(LAYOUT.len());
    let mut next = FIRST_PARTITION_LBA;
    for (i, spec) in LAYOUT.iter().enumerate() {
        let first_lba = next.next_multiple_of(ALIGNMENT_SECTORS);
        // The size check above guarantees the fixed partitions fit and
        // leave EPHEMERAL its minimum (`minimum_disk_bytes` ends on an
        // aligned boundary plus the backup table, so aligning `rest_end`
        // down loses nothing at the minimum).
        let last_lba = match spec.size {
            Some(bytes) => first_lba + bytes / SECTOR_SIZE - 1,
            None => rest_end - 1,
        };
        partitions.push(Partition {
            index: i as u32 + 1,
            name: spec.name.to_owned(),
            type_guid: spec.type_guid,
            unique_guid: guids(),
            first_lba,
            last_lba,
        });
        next = last_lba + 1;
    }
    Ok(Plan {
        disk_guid,
        sector_size: SECTOR_SIZE,
        total_sectors,
        partitions,
    })
}

/// The last LBA a partition may use: right before the backup entries.
fn last_usable_lba(total_sectors: u64) -> u64 {
    total_sectors - BACKUP_SECTORS - 1
}

/// One past the last sector of the partition that takes the rest of a
/// disk of `total_sectors`. It ends on a 1 MiB boundary too, giving up
/// less than 1 MiB: encryption (LUKS on EPHEMERAL or STATE) and 4 KiB-sector
/// tools want whole aligned units, and `sgdisk --verify` cautions otherwise.
fn rest_end(total_sectors: u64) -> u64 {
    (last_usable_lba(total_sectors) + 1) / ALIGNMENT_SECTORS * ALIGNMENT_SECTORS
}

/// The byte offset and length of the partition called `name`.
#[must_use]
pub fn partition_offset(plan: &Plan, name: &str) -> Option<(u64, u64)> {
    plan.partitions.iter().find(|p| p.name == name).map(|p| {
        (
            p.first_lba * plan.sector_size,
            p.sectors() * plan.sector_size,
        )
    })
}

pub(crate) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// LBA 0: an MBR with one partition of type 0xEE over the whole disk, so
/// MBR-only tools see the disk as used rather than empty.
fn protective_mbr(total_sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let e = 446;
    // Not bootable; CHS start 0/0/2 (LBA 1); type 0xEE; CHS end maxed out.
    mbr[e + 1..e + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[e + 4] = 0xEE;
    mbr[e + 5..e + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    put_u32(&mut mbr, e + 8, 1);
    // The sectors after LBA 0, capped at what 32 bits hold (disks > 2 TiB).
    put_u32(
        &mut mbr,
        e + 12,
        u32::try_from(total_sectors - 1).unwrap_or(u32::MAX),
    );
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// The entries array: one entry per partition at `index - 1`, the rest
/// zero (unused).
fn entries(plan: &Plan) -> Vec<u8> {
    let mut out = vec![0u8; ENTRIES_BYTES];
    for (slot, p) in plan.partitions.iter().enumerate().take(ENTRY_COUNT) {
        let entry = gpt::Entry {
            type_guid: p.type_guid,
            unique_guid: p.unique_guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            attributes: 0,
            name: p.name.encode_utf16().collect(),
        };
        out[slot * ENTRY_SIZE..(slot + 1) * ENTRY_SIZE].copy_from_slice(&entry.to_bytes());
    }
    out
}

/// A GPT header: the 92 defined bytes (the rest of its sector is zero).
fn header(
    plan: &Plan,
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> [u8; HEADER_SIZE] {
    gpt::Header {
        my_lba,
        alternate_lba,
        first_usable_lba: FIRST_USABLE_LBA,
        last_usable_lba: last_usable_lba(plan.total_sectors),
        disk_guid: plan.disk_guid,
        entries_lba,
        entry_count: ENTRY_COUNT as u32,
        entry_size: ENTRY_SIZE as u32,
        entries_crc,
    }
    .to_bytes()
}

/// The GPT of `plan` (revision 1.0, 128 entries of 128 bytes, 512-byte
/// sectors), as two runs of bytes:
///
/// - the start of the disk, LBA 0 to 33: protective MBR, primary header,
///   entries;
/// - the end of the disk, to be written at LBA `total_sectors - 33`: the
///   backup entries, then the backup header (in the last sector).
#[must_use]
pub fn gpt_bytes(plan: &Plan) -> (Vec<u8>, Vec<u8>) {
    let ss = SECTOR_SIZE as usize;
    let entries = entries(plan);
    let entries_crc = crc32(&entries);
    let backup_header_lba = plan.total_sectors - 1;
    let backup_entries_lba = plan.total_sectors - BACKUP_SECTORS;

    let mut primary = vec![0u8; (2 + ENTRIES_SECTORS) as usize * ss];
    primary[..ss].copy_from_slice(&protective_mbr(plan.total_sectors));
    primary[ss..ss + HEADER_SIZE].copy_from_slice(&header(
        plan,
        1,
        backup_header_lba,
        2,
        entries_crc,
    ));
    primary[2 * ss..].copy_from_slice(&entries);

    let mut backup = vec![0u8; BACKUP_SECTORS as usize * ss];
    backup[..ENTRIES_BYTES].copy_from_slice(&entries);
    backup[ENTRIES_BYTES..ENTRIES_BYTES + HEADER_SIZE].copy_from_slice(&header(
        plan,
        backup_header_lba,
        1,
        backup_entries_lba,
        entries_crc,
    ));
    (primary, backup)
}

/// Writes the GPT of `plan` to `path`, a block device or an image file of
/// exactly the planned size (create it with `set_len` first), then syncs:
/// [`write_gpt_to`] on the opened disk.
///
/// # Errors
/// As [`write_gpt_to`], and [`LayoutError::Target`] when `path` cannot be
/// opened.
pub fn write_gpt(path: &Path, plan: &Plan) -> Result<(), LayoutError> {
    write_gpt_to(&Disk::open(path)?, plan)
}

/// Writes the GPT of `plan` to `disk`, which must be the planned size,
/// then syncs.
///
/// Only the table is written: the partitions' contents are untouched, and
/// on a block device the kernel learns of the new table only when asked to
/// re-read it ([`Disk::reread_partitions`]).
///
/// # Errors
/// [`LayoutError::SizeMismatch`] when the disk is not the planned size
/// (the backup table would land elsewhere than the header says);
/// [`LayoutError::Target`] naming the step and the disk.
pub fn write_gpt_to(disk: &Disk, plan: &Plan) -> Result<(), LayoutError> {
    let (primary, backup) = gpt_bytes(plan);
    let device_bytes = disk.size();
    if device_bytes / SECTOR_SIZE != plan.total_sectors {
        return Err(LayoutError::SizeMismatch {
            path: disk.path().to_path_buf(),
            device_bytes,
            plan_bytes: plan.total_sectors * SECTOR_SIZE,
        });
    }
    disk.write_at(&primary, 0)?;
    disk.write_at(&backup, (plan.total_sectors - BACKUP_SECTORS) * SECTOR_SIZE)?;
    disk.sync()?;
    Ok(())
}

/// The plan a header (its 92 bytes) and entries array describe, for a
/// disk of `total_sectors`; the caller checks that it renders back to the
/// same bytes. `Err` says why it cannot be one of ours.
fn plan_from(header: &[u8], entries: &[u8], total_sectors: u64) -> Result<Plan, String> {
    if !header.starts_with(gpt::SIGNATURE) {
        return Err("no GPT header".into());
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&header[56..72]);
    let mut partitions = Vec::new();
    // Ours are contiguous from the first slot: the first unused one ends them.
    for (slot, e) in entries.chunks_exact(ENTRY_SIZE).enumerate() {
        let Some(e) = gpt::Entry::parse(e) else {
            break;
        };
        let name = String::from_utf16(&e.name)
            .map_err(|_| format!("partition {} has a malformed name", slot + 1))?;
        if e.first_lba > e.last_lba {
            return Err(format!("partition {} ends before it starts", slot + 1));
        }
        partitions.push(Partition {
            index: slot as u32 + 1,
            name,
            type_guid: e.type_guid,
            unique_guid: e.unique_guid,
            first_lba: e.first_lba,
            last_lba: e.last_lba,
        });
    }
    Ok(Plan {
        disk_guid,
        sector_size: SECTOR_SIZE,
        total_sectors,
        partitions,
    })
}

/// LBA 0 to 33 of `disk` (protective MBR, primary header, entries), or
/// `None` when the disk is too small to hold a GPT.
fn read_start(disk: &Disk) -> Result<Option<Vec<u8>>, LayoutError> {
    if disk.size() < (2 + ENTRIES_SECTORS + BACKUP_SECTORS) * SECTOR_SIZE {
        return Ok(None);
    }
    let mut start = vec![0u8; ((2 + ENTRIES_SECTORS) * SECTOR_SIZE) as usize];
    disk.read_at(&mut start, 0)?;
    Ok(Some(start))
}

/// Whether a GPT header's own CRC matches (computed with its CRC field
/// zero).
fn header_crc_ok(h: &[u8]) -> bool {
    header_crc(h, HEADER_SIZE) == le32(h, 16)
}

/// Reads back a table [`write_gpt_to`] wrote: the plan it was rendered
/// from, with `total_sectors` the disk size the table was made for (its
/// backup header's sector plus one), which may be less than the device's.
///
/// Only the primary table is read, and only a table that renders back to
/// the same bytes is accepted (protective MBR, header and all 128 entries),
/// so that writing the plan again loses nothing.
///
/// # Errors
/// [`LayoutError::NotOurs`] naming what differs; [`LayoutError::Target`]
/// when the disk cannot be read.
pub fn read_gpt(disk: &Disk) -> Result<Plan, LayoutError> {
    let ss = SECTOR_SIZE as usize;
    let not_ours = |reason: String| LayoutError::NotOurs {
        path: disk.path().to_path_buf(),
        reason,
    };
    let Some(start) = read_start(disk)? else {
        return Err(not_ours("too small to hold a GPT".into()));
    };
    let h = &start[ss..ss + HEADER_SIZE];
    let alternate_lba = le64(h, 32);
    let total_sectors = match alternate_lba.checked_add(1) {
        Some(t) if alternate_lba >= 2 + ENTRIES_SECTORS + BACKUP_SECTORS => t,
        _ if !h.starts_with(gpt::SIGNATURE) => {
            return Err(not_ours("no GPT header at LBA 1".into()));
        }
        _ => {
            return Err(not_ours(format!(
                "the backup header's place, LBA {alternate_lba}, cannot be"
            )));
        }
    };
    let plan = plan_from(h, &start[2 * ss..], total_sectors)
        .map_err(|reason| not_ours(format!("{reason} at LBA 1")))?;
    // Everything else (revision, sizes, usable range, CRCs, attributes,
    // entries after the last partition) is checked by rendering the plan
    // again: any difference means the table is not ours to rewrite.
    if gpt_bytes(&plan).0 != start {
        return Err(not_ours(
            "the protective MBR, header or entries differ from what the installer writes".into(),
        ));
    }
    Ok(plan)
}

/// Writes the primary table again from the backup at the disk's end, when
/// the primary is damaged rather than absent or foreign (a GPT header
/// whose own CRC or whose entries' CRC does not match, as a write
/// interrupted half-way leaves it) and the backup is ours. Returns the
/// plan restored, or `None` when there was nothing to restore from.
fn restore_primary(disk: &Disk) -> Result<Option<Plan>, LayoutError> {
    let ss = SECTOR_SIZE as usize;
    let Some(start) = read_start(disk)? else {
        return Ok(None);
    };
    let h = &start[ss..ss + HEADER_SIZE];
    let damaged = h.starts_with(gpt::SIGNATURE)
        && (!header_crc_ok(h) || crc32(&start[2 * ss..]) != le32(h, 88));
    if !damaged {
        return Ok(None);
    }
    let Ok(plan) = read_backup(disk) else {
        return Ok(None);
    };
    disk.write_at(&gpt_bytes(&plan).0, 0)?;
    disk.sync()?;
    Ok(Some(plan))
}

/// The plan of the backup table at the end of `disk`, if it is one
/// [`write_gpt_to`] wrote for a disk of exactly this size.
fn read_backup(disk: &Disk) -> Result<Plan, LayoutError> {
    let ss = SECTOR_SIZE as usize;
    let total = disk.size() / SECTOR_SIZE;
    let mut end = vec![0u8; BACKUP_SECTORS as usize * ss];
    disk.read_at(&mut end, (total - BACKUP_SECTORS) * SECTOR_SIZE)?;
    let not_ours = |reason: String| LayoutError::NotOurs {
        path: disk.path().to_path_buf(),
        reason,
    };
    let plan = plan_from(
        &end[ENTRIES_BYTES..ENTRIES_BYTES + HEADER_SIZE],
        &end[..ENTRIES_BYTES],
        total,
    )
    .map_err(|reason| not_ours(format!("{reason} in the last sector")))?;
    if gpt_bytes(&plan).1 != end {
        return Err(not_ours(
            "the backup table differs from what the installer writes".into(),
        ));
    }
    Ok(plan)
}

/// What [`grow_to_disk`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Growth {
    /// The disk size in sectors the table was for, then is for.
    pub disk_sectors: (u64, u64),
    /// The last partition's name and its size in sectors before and after
    /// (the same when the disk grew by less than its alignment, or when
    /// the last partition is not the one that takes the rest).
    pub last_partition: Option<(String, u64, u64)>,
    /// The primary table was damaged (an earlier rewrite interrupted) and
    /// was written again from the backup at the disk's end; nothing else
    /// changed.
    pub primary_restored: bool,
}

/// Fits a table [`write_gpt_to`] wrote for a smaller disk to `disk`'s
/// whole size: the backup table moves to the disk's end and the last
/// partition, when it is the one that takes the rest ([`EPHEMERAL`]),
/// grows up to the last 1 MiB boundary before it, as [`plan`] would have
/// placed it. A disk image copied onto a larger disk is the case. Its
/// filesystem grows separately, once mounted.
///
/// In order: the new backup table is written and synced first, while the
/// old primary still names the old backup; then the primary (34 sectors);
/// then what is left of the old backup is zeroed. A write of the primary
/// interrupted half-way leaves it failing its CRCs, and Linux then reads
/// no partitions at all unless booted with `gpt` (the installed boot
/// entries pass it), with which it uses the backup at the disk's end. The
/// next call then writes the primary again from that backup. An interruption
/// before the old backup is zeroed leaves it inside the grown partition,
/// where the filesystem's growth overwrites it in time.
///
/// On a block device the kernel learns of the new partition size only when
/// asked ([`Disk::reread_partitions`]).
///
/// Returns `None` when the table already fits the disk.
///
/// # Errors
/// [`LayoutError::NotOurs`] or [`LayoutError::Shrunk`], with nothing
/// written; [`LayoutError::Target`] naming the step that failed.
pub fn grow_to_disk(disk: &Disk) -> Result<Option<Growth>, LayoutError> {
    let mut plan = match read_gpt(disk) {
        Ok(plan) => plan,
        Err(not_ours @ LayoutError::NotOurs { .. }) => {
            // Only a damaged primary is restored, never an absent (wiped)
            // or foreign one, and only from a backup of ours.
            let Some(plan) = restore_primary(disk)? else {
                return Err(not_ours);
            };
            return Ok(Some(Growth {
                disk_sectors: (plan.total_sectors, plan.total_sectors),
                last_partition: None,
                primary_restored: true,
            }));
        }
        Err(e) => return Err(e),
    };
    let old_total = plan.total_sectors;
    let total = disk.size() / SECTOR_SIZE;
    if old_total == total {
        return Ok(None);
    }
    if old_total > total {
        return Err(LayoutError::Shrunk {
            path: disk.path().to_path_buf(),
            device_bytes: disk.size(),
            table_bytes: old_total.saturating_mul(SECTOR_SIZE),
        });
    }
    plan.total_sectors = total;
    let takes_the_rest = LAYOUT.iter().find(|s| s.size.is_none()).map(|s| s.name);
    let last_partition = plan.partitions.last_mut().map(|p| {
        let before = p.sectors();
        if Some(p.name.as_str()) == takes_the_rest {
            p.last_lba = p.last_lba.max(rest_end(total) - 1);
        }
        (p.name.clone(), before, p.sectors())
    });
    let (primary, backup) = gpt_bytes(&plan);
    let new_backup_lba = total - BACKUP_SECTORS;
    disk.write_at(&backup, new_backup_lba * SECTOR_SIZE)?;
    disk.sync()?;
    disk.write_at(&primary, 0)?;
    disk.sync()?;
    // The old backup is past the old table's last usable sector; zero what
    // the new backup did not overwrite, so no stale header lingers.
    let old_backup_lba = old_total - BACKUP_SECTORS;
    let stale_end = old_total.min(new_backup_lba);
    if stale_end > old_backup_lba {
        let stale = vec![0u8; ((stale_end - old_backup_lba) * SECTOR_SIZE) as usize];
        disk.write_at(&stale, old_backup_lba * SECTOR_SIZE)?;
        disk.sync()?;
    }
    Ok(Some(Growth {
        disk_sectors: (old_total, total),
        last_partition,
        primary_restored: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt as _;
    use std::process::Command;

    const GIB: u64 = 1024 * MIB;

    /// A deterministic GUID source: 01 01 .., 02 02 .., ...
    fn counter() -> impl FnMut() -> [u8; 16] {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 16]
        }
    }

    #[test]
    fn guid_byte_order() {
        assert_eq!(
            ESP_TYPE,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(
            format_guid(&LINUX_DATA_TYPE),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(
            format_guid(&ESP_TYPE),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        // Version 4 sits in the high nibble of the third field, which is
        // little-endian on disk: byte 7.
        assert_eq!(random_guid()[7] >> 4, 4);
        assert_ne!(random_guid(), random_guid());
    }

    #[test]
    fn seeded_guids_are_reproducible_and_distinct() {
        let first: Vec<[u8; 16]> = {
            let mut g = seeded_guids(7);
            (0..5).map(|_| g()).collect()
        };
        let again: Vec<[u8; 16]> = {
            let mut g = seeded_guids(7);
            (0..5).map(|_| g()).collect()
        };
        assert_eq!(first, again);
        let other = seeded_guids(8)();
        assert_ne!(first[0], other);
        for g in &first {
            assert_eq!(g[7] >> 4, 4, "version 4");
            assert_eq!(g[8] >> 6, 0b10, "RFC 4122 variant");
        }
        let unique: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn only_the_last_spec_takes_the_rest() {
        let (last, fixed) = LAYOUT.split_last().expect("non-empty");
        assert_eq!(last.size, None);
        for spec in fixed {
            let size = spec.size.expect("fixed size");
            assert_eq!(size % ALIGNMENT, 0, "{}", spec.name);
        }
    }

    #[test]
    fn plan_for_four_gib() {
        let plan = plan(4 * GIB, &mut counter()).expect("plan");
        assert_eq!(plan.sector_size, 512);
        assert_eq!(plan.total_sectors, 4 * GIB / 512);
        assert_eq!(plan.disk_guid, [1; 16]);
        let names: Vec<&str> = plan.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["EFI", "META", "STATE", "EPHEMERAL"]);
        let last_usable = plan.total_sectors - 34;
        for (i, p) in plan.partitions.iter().enumerate() {
            assert_eq!(p.index as usize, i + 1);
            assert_eq!(p.unique_guid, [i as u8 + 2; 16], "{}", p.name);
            assert_eq!(p.first_lba % 2048, 0, "{} is not 1 MiB aligned", p.name);
            assert!(p.first_lba >= 2048 && p.last_lba <= last_usable, "{p:?}");
            assert!(p.first_lba <= p.last_lba, "{p:?}");
            assert_eq!(
                (p.last_lba + 1) % 2048,
                0,
                "{} does not end aligned",
                p.name
            );
            if let Some(spec_size) = LAYOUT[i].size {
                assert_eq!(p.sectors() * 512, spec_size, "{}", p.name);
            }
        }
        for pair in plan.partitions.windows(2) {
            assert!(pair[0].last_lba < pair[1].first_lba, "{pair:?} overlap");
            // Sizes are MiB multiples: no gaps either.
            assert_eq!(pair[0].last_lba + 1, pair[1].first_lba);
        }
        assert_eq!(plan.partitions[0].first_lba, 2048);
        assert_eq!(plan.partitions[0].type_guid, ESP_TYPE);
        assert_eq!(plan.partitions[1].type_guid, LINUX_DATA_TYPE);
        let ephemeral = &plan.partitions[3];
        // The rest, down to a 1 MiB boundary: 4 GiB less the backup
        // table's 33 sectors leaves 4095 whole MiB.
        assert_eq!(
            ephemeral.last_lba,
            4095 * 2048 - 1,
            "EPHEMERAL takes the rest"
        );
        assert!(last_usable - ephemeral.last_lba < 2048);
        assert_eq!(ephemeral.first_lba, 2048 * (1 + 512 + 1 + 300));
    }

    #[test]
    fn partition_offsets() {
        let plan = plan(4 * GIB, &mut counter()).expect("plan");
        assert_eq!(partition_offset(&plan, EFI), Some((MIB, 512 * MIB)));
        assert_eq!(partition_offset(&plan, META), Some(((1 + 512) * MIB, MIB)));
        assert_eq!(partition_offset(&plan, "nope"), None);
    }

    #[test]
    fn too_small_disks_are_refused() {
        let minimum = minimum_disk_bytes();
        // 1 MiB lead-in, 813 MiB of fixed partitions, 512 MiB, backup.
        assert_eq!(minimum, (1 + 813 + 512) * MIB + 33 * 512);

        let err = plan(minimum - 1, &mut counter()).expect_err("too small");
        assert!(
            matches!(err, LayoutError::TooSmall { disk_bytes, minimum: m, minimum_mib: 1327 } if disk_bytes == minimum - 1 && m == minimum),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&(minimum - 1).to_string()), "{text}");
        assert!(text.contains(&minimum.to_string()), "{text}");
        assert!(text.contains("1327 MiB"), "{text}");

        let plan = plan(minimum, &mut counter()).expect("exactly the minimum");
        assert_eq!(plan.partitions[3].sectors() * 512, EPHEMERAL_MIN_SIZE);
        assert!(plan.partitions[3].last_lba <= plan.total_sectors - 34);
        // One sector less would leave EPHEMERAL short once aligned: refused.
        assert!(super::plan(minimum - 512, &mut counter()).is_err());
    }

    #[test]
    fn gpt_bytes_are_a_valid_table() {
        let plan = plan(4 * GIB, &mut counter()).expect("plan");
        let total = plan.total_sectors;
        let (primary, backup) = gpt_bytes(&plan);
        assert_eq!(primary.len(), 34 * 512);
        assert_eq!(backup.len(), 33 * 512);

        // Protective MBR.
        assert_eq!(primary[510..512], [0x55, 0xAA]);
        assert_eq!(primary[446 + 4], 0xEE);
        assert_eq!(le32(&primary, 446 + 8), 1);
        assert_eq!(u64::from(le32(&primary, 446 + 12)), total - 1);
        // Only one MBR partition.
        assert!(primary[462..510].iter().all(|&b| b == 0));

        // Primary header.
        let h = &primary[512..1024];
        assert_eq!(&h[..8], b"EFI PART");
        assert_eq!(le32(h, 8), 0x0001_0000);
        assert_eq!(le32(h, 12), 92);
        assert!(header_crc_ok(h), "primary header CRC");
        assert!(h[HEADER_SIZE..].iter().all(|&b| b == 0));
        assert_eq!(le64(h, 24), 1);
        assert_eq!(le64(h, 32), total - 1);
        assert_eq!(le64(h, 40), 34);
        assert_eq!(le64(h, 48), total - 34);
        assert_eq!(h[56..72], [1; 16]);
        assert_eq!(le64(h, 72), 2);
        assert_eq!(le32(h, 80), 128);
        assert_eq!(le32(h, 84), 128);
        let entries = &primary[1024..];
        assert_eq!(crc32(entries), le32(h, 88), "entries CRC");

        // The first entry.
        let e = &entries[..128];
        assert_eq!(e[..16], ESP_TYPE);
        assert_eq!(e[16..32], [2; 16]);
        assert_eq!(le64(e, 32), 2048);
        assert_eq!(le64(e, 40), 2048 + 512 * 2048 - 1);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        assert_eq!(String::from_utf16(&units).expect("UTF-16"), "EFI");
        // Entries past the fourth are unused.
        assert!(entries[4 * 128..].iter().all(|&b| b == 0));

        // Backup: the same entries, then a header pointing back.
        assert_eq!(&backup[..16384], entries);
        let b = &backup[16384..];
        assert_eq!(&b[..8], b"EFI PART");
        assert!(header_crc_ok(b), "backup header CRC");
        assert_eq!(le64(b, 24), le64(h, 32), "backup my_lba");
        assert_eq!(le64(b, 32), le64(h, 24), "backup alternate_lba");
        assert_eq!(le64(b, 72), total - 33, "backup entries LBA");
        assert_eq!(le32(b, 88), le32(h, 88));
        assert_eq!(b[40..72], h[40..72], "same usable range and disk GUID");
    }

    #[test]
    fn write_gpt_into_a_file_and_refuse_a_wrong_size() {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        file.as_file().set_len(4 * GIB).expect("sparse file");
        let plan = plan(4 * GIB, &mut counter()).expect("plan");
        write_gpt(file.path(), &plan).expect("write");
        let (primary, backup) = gpt_bytes(&plan);
        let mut got = vec![0u8; primary.len()];
        file.as_file().read_exact_at(&mut got, 0).expect("read");
        assert_eq!(got, primary);
        let mut got = vec![0u8; backup.len()];
        file.as_file()
            .read_exact_at(&mut got, (plan.total_sectors - 33) * 512)
            .expect("read");
        assert_eq!(got, backup);
        assert_eq!(file.as_file().metadata().expect("stat").len(), 4 * GIB);

        let small = tempfile::NamedTempFile::new().expect("tempfile");
        small.as_file().set_len(2 * GIB).expect("sparse file");
        let err = write_gpt(small.path(), &plan).expect_err("wrong size");
        assert!(matches!(err, LayoutError::SizeMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&small.path().display().to_string()),
            "{err}"
        );

        let err = write_gpt(Path::new("/nonexistent/disk.raw"), &plan).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/disk.raw"), "{err}");
    }

    fn sgdisk() -> PathBuf {
        ["/usr/sbin/sgdisk", "/sbin/sgdisk", "/usr/bin/sgdisk"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("sgdisk is missing (looked in /usr/sbin, /sbin, /usr/bin): run scripts/setup, which installs gdisk")
            })
    }

    fn run(sgdisk: &Path, arg: &str, disk: &Path) -> String {
        let out = Command::new(sgdisk)
            .arg(arg)
            .arg(disk)
            .output()
            .expect("running sgdisk");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "sgdisk {arg} failed: {text}");
        text
    }

    /// A sparse image file of `bytes` with the table planned for `table_bytes`.
    fn image_with_table(table_bytes: u64, bytes: u64) -> (tempfile::NamedTempFile, Plan) {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        file.as_file().set_len(table_bytes).expect("sparse file");
        let plan = plan(table_bytes, &mut counter()).expect("plan");
        write_gpt(file.path(), &plan).expect("write");
        file.as_file().set_len(bytes).expect("resize");
        (file, plan)
    }

    fn read_at(file: &tempfile::NamedTempFile, offset: u64, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        file.as_file()
            .read_exact_at(&mut got, offset)
            .expect("read");
        got
    }

    #[test]
    fn a_table_reads_back_as_its_plan() {
        let (file, plan) = image_with_table(4 * GIB, 4 * GIB);
        let disk = Disk::open(file.path()).expect("open");
        assert_eq!(read_gpt(&disk).expect("read"), plan);
        assert_eq!(grow_to_disk(&disk).expect("grow"), None, "already fits");
    }

    #[test]
    fn a_table_grows_to_a_larger_disk() {
        let sgdisk = sgdisk();
        // 6 GiB and 5 sectors: the end is not aligned.
        let bytes = 6 * GIB + 5 * 512;
        let (file, old) = image_with_table(4 * GIB, bytes);
        let verify = run(&sgdisk, "--verify", file.path());
        assert!(!verify.contains("No problems found"), "{verify}");
        let state_at = old.partitions[2].first_lba * 512;
        file.as_file()
            .write_all_at(b"state contents", state_at)
            .expect("marker");

        let disk = Disk::open(file.path()).expect("open");
        let growth = grow_to_disk(&disk).expect("grow").expect("it grew");
        let total = bytes / 512;
        let old_ephemeral = old.partitions[3].sectors();
        // 6 GiB less the backup's 33 sectors, plus 5: 6143 whole MiB.
        let new_last = 6143 * 2048 - 1;
        assert_eq!(
            growth,
            Growth {
                disk_sectors: (4 * GIB / 512, total),
                last_partition: Some((
                    EPHEMERAL.to_owned(),
                    old_ephemeral,
                    new_last - old.partitions[3].first_lba + 1
                )),
                primary_restored: false,
            }
        );

        let new = read_gpt(&disk).expect("read back");
        assert_eq!(new.total_sectors, total);
        assert_eq!(new.disk_guid, old.disk_guid);
        assert_eq!(
            new.partitions[..3],
            old.partitions[..3],
            "only the last moves"
        );
        assert_eq!(new.partitions[3].first_lba, old.partitions[3].first_lba);
        assert_eq!(new.partitions[3].unique_guid, old.partitions[3].unique_guid);
        assert_eq!(new.partitions[3].last_lba, new_last);
        // The backup table at the new end; the old one is gone.
        let (_, backup) = gpt_bytes(&new);
        assert_eq!(read_at(&file, (total - 33) * 512, backup.len()), backup);
        let old_backup = read_at(&file, (old.total_sectors - 33) * 512, 33 * 512);
        assert!(old_backup.iter().all(|&b| b == 0), "stale backup left");
        assert_eq!(read_at(&file, state_at, 14), b"state contents");

        let verify = run(&sgdisk, "--verify", file.path());
        assert!(verify.contains("No problems found"), "{verify}");
        assert_eq!(grow_to_disk(&disk).expect("again"), None, "idempotent");
    }

    #[test]
    fn a_few_sectors_more_move_only_the_backup() {
        // Fewer sectors than the backup table takes: old and new overlap.
        let bytes = 4 * GIB + 10 * 512;
        let (file, old) = image_with_table(4 * GIB, bytes);
        let disk = Disk::open(file.path()).expect("open");
        let growth = grow_to_disk(&disk).expect("grow").expect("it moved");
        let size = old.partitions[3].sectors();
        assert_eq!(
            growth.last_partition,
            Some((EPHEMERAL.to_owned(), size, size))
        );
        let new = read_gpt(&disk).expect("read back");
        assert_eq!(new.partitions, old.partitions);
        let (_, backup) = gpt_bytes(&new);
        assert_eq!(
            read_at(&file, (bytes / 512 - 33) * 512, backup.len()),
            backup
        );
        assert!(
            read_at(&file, (old.total_sectors - 33) * 512, 10 * 512)
                .iter()
                .all(|&b| b == 0)
        );
        let verify = run(&sgdisk(), "--verify", file.path());
        assert!(verify.contains("No problems found"), "{verify}");
    }

    #[test]
    fn a_grow_interrupted_in_the_primary_is_finished_from_the_backup() {
        let bytes = 6 * GIB;
        let (file, old) = image_with_table(4 * GIB, bytes);
        // What grow_to_disk writes, cut short: the new backup at the end,
        // then of the primary only the entries, under the old header.
        let mut grown = old.clone();
        grown.total_sectors = bytes / 512;
        grown.partitions[3].last_lba = 6143 * 2048 - 1;
        let (primary, backup) = gpt_bytes(&grown);
        file.as_file()
            .write_all_at(&backup, bytes - 33 * 512)
            .expect("backup");
        file.as_file()
            .write_all_at(&primary[1024..], 1024)
            .expect("entries");
        let disk = Disk::open(file.path()).expect("open");
        assert!(matches!(read_gpt(&disk), Err(LayoutError::NotOurs { .. })));

        let growth = grow_to_disk(&disk).expect("restored").expect("it acted");
        assert!(growth.primary_restored);
        assert_eq!(growth.disk_sectors, (bytes / 512, bytes / 512));
        assert_eq!(read_gpt(&disk).expect("whole again"), grown);
        assert_eq!(read_at(&file, 0, primary.len()), primary);
        let verify = run(&sgdisk(), "--verify", file.path());
        assert!(verify.contains("No problems found"), "{verify}");
        assert_eq!(grow_to_disk(&disk).expect("again"), None);
    }

    #[test]
    fn a_wiped_primary_is_not_brought_back() {
        let bytes = 4 * GIB;
        let (file, _) = image_with_table(bytes, bytes);
        file.as_file()
            .write_all_at(&vec![0u8; 34 * 512], 0)
            .expect("wipe");
        let err = grow_to_disk(&Disk::open(file.path()).expect("open")).expect_err("wiped");
        assert!(matches!(err, LayoutError::NotOurs { .. }), "{err}");
        assert!(read_at(&file, 0, 34 * 512).iter().all(|&b| b == 0));
    }

    #[test]
    fn tables_not_ours_are_left_alone() {
        // No table at all.
        let blank = tempfile::NamedTempFile::new().expect("tempfile");
        blank.as_file().set_len(GIB).expect("sparse file");
        let err = grow_to_disk(&Disk::open(blank.path()).expect("open")).expect_err("blank");
        assert!(
            matches!(&err, LayoutError::NotOurs { reason, .. } if reason.contains("no GPT header")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&blank.path().display().to_string())
        );

        // One attribute bit set on a partition: rewriting would drop it.
        let bytes = 6 * GIB;
        let (file, old) = image_with_table(4 * GIB, bytes);
        let entry = 2 * 512 + 2 * 128;
        file.as_file()
            .write_all_at(&[1], entry + 48)
            .expect("attribute");
        let before = read_at(&file, 0, 34 * 512);
        let err = grow_to_disk(&Disk::open(file.path()).expect("open")).expect_err("changed");
        assert!(matches!(err, LayoutError::NotOurs { .. }), "{err}");
        assert_eq!(read_at(&file, 0, 34 * 512), before, "primary untouched");
        assert!(
            read_at(&file, bytes - 33 * 512, 33 * 512)
                .iter()
                .all(|&b| b == 0),
            "no backup written"
        );
        assert!(
            read_at(&file, (old.total_sectors - 1) * 512, 8).starts_with(b"EFI PART"),
            "old backup kept"
        );

        // A disk smaller than its table.
        let (small, _) = image_with_table(4 * GIB, 3 * GIB);
        let err = grow_to_disk(&Disk::open(small.path()).expect("open")).expect_err("shrunk");
        assert!(
            matches!(err, LayoutError::Shrunk { device_bytes, table_bytes, .. } if device_bytes == 3 * GIB && table_bytes == 4 * GIB),
            "{err}"
        );
    }

    #[test]
    fn sgdisk_accepts_the_table() {
        let sgdisk = sgdisk();
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        file.as_file().set_len(4 * GIB).expect("sparse file");
        let plan = plan(4 * GIB, &mut counter()).expect("plan");
        write_gpt(file.path(), &plan).expect("write");

        let verify = run(&sgdisk, "--verify", file.path());
        assert!(verify.contains("No problems found"), "{verify}");

        let print = run(&sgdisk, "--print", file.path());
        for (spec, code) in LAYOUT
            .iter()
            .zip(["EF00", "8300", "8300", "8300", "8300", "8300"])
        {
            let line = print
                .lines()
                .find(|l| l.split_whitespace().next_back() == Some(spec.name))
                .unwrap_or_else(|| panic!("no partition {} in:\n{print}", spec.name));
            assert!(line.contains(code), "{} is not {code}: {line}", spec.name);
        }
        assert!(
            print.contains(&format_guid(&plan.disk_guid)),
            "disk GUID: {print}"
        );
    }
}
