//! Wiping a disk or a partition: the work behind storage's
//! `BlockDeviceWipe` and a node reset.
//!
//! - [`wipe`] with [`Method::Fast`] zeroes the first and the last MiB: where
//!   partition tables (the MBR, both GPT copies) and the superblocks of
//!   every filesystem probed here (xfs, ext4, FAT, btrfs, squashfs, swap,
//!   LUKS, ISO 9660) live, so nothing recognises the device afterwards.
//!   [`Method::Zeroes`] zeroes all of it, through the kernel's write-zeroes
//!   where the device has it.
//! - [`drop_partition`] removes one partition from a GPT (both copies,
//!   every CRC recomputed) and from the kernel's view of the disk.
//!
//! The callers open the device with [`Disk::open_any`], exclusively: the
//! kernel refuses while a filesystem on it (or, for a whole disk, on any of
//! its partitions) is mounted, so nothing live is wiped underneath.

use std::path::PathBuf;

use crate::layout::put_u32;
use crate::target::{Disk, TargetError};
use machinery::endian::le32;
use machinery::gpt;

/// How much a fast wipe zeroes at each end of the device.
pub const FAST_RANGE: u64 = 1024 * 1024;

/// How to wipe (upstream's `BlockDeviceWipeDescriptor.Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The first and last [`FAST_RANGE`] bytes: tables and signatures.
    Fast,
    /// Every byte.
    Zeroes,
}

/// A wipe or a partition removal that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    /// Reading, writing or syncing the device failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The partition table cannot be edited as asked.
    #[error("{path}: {reason}")]
    Table {
        /// The disk.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Wipes `disk` (a whole disk or one partition) by `method`, then syncs.
///
/// # Errors
/// [`TargetError`] when zeroing or syncing fails.
pub fn wipe(disk: &Disk, method: Method) -> Result<(), TargetError> {
    let size = disk.size();
    match method {
        Method::Zeroes => disk.zero_range(0, size)?,
        Method::Fast => {
            let head = size.min(FAST_RANGE);
            disk.zero_range(0, head)?;
            let tail = size.saturating_sub(FAST_RANGE).max(head);
            disk.zero_range(tail, size - tail)?;
        }
    }
    disk.sync()
}

/// One GPT copy as read: its header sector (kept whole, so fields this
/// code does not know survive the rewrite), the header parsed, and its
/// entries.
struct GptCopy {
    sector: Vec<u8>,
    header: gpt::Header,
    entries: Vec<u8>,
}

/// Removes partition `number` (1-based, as the kernel numbers them) from
/// the GPT of `disk`: its entry is zeroed in both copies and their CRCs
/// recomputed; then the kernel forgets the partition. The partition's
/// contents are not touched.
///
/// Both copies must be whole (header and entries CRCs right) and agree on
/// the entry, or nothing is written.
///
/// # Errors
/// [`WipeError::Table`] when the disk has no sound GPT or no such
/// partition; [`WipeError::Target`] when reading, writing or telling the
/// kernel fails.
pub fn drop_partition(disk: &Disk, number: u32) -> Result<(), WipeError> {
    let table_err = |reason: String| WipeError::Table {
        path: disk.path().to_path_buf(),
        reason,
    };
    let primary = read_copy(disk, 1).map_err(|r| table_err(format!("primary GPT: {r}")))?;
    let backup = read_copy(disk, primary.header.alternate_lba)
        .map_err(|r| table_err(format!("backup GPT: {r}")))?;
    let count = primary.header.entry_count;
    let entry_size = primary.header.entry_size as usize;
    if number == 0 || number > count {
        return Err(table_err(format!(
            "the table has no partition {number} (it has {count} entries)"
        )));
    }
    let at = (number as usize - 1) * entry_size;
    let entry = &primary.entries[at..at + entry_size];
    if entry[..16] == [0u8; 16] {
        return Err(table_err(format!("partition {number} is not in the table")));
    }
    if backup.entries.get(at..at + entry_size) != Some(entry) {
        return Err(table_err(format!(
            "the primary and backup tables differ on partition {number}"
        )));
    }
    let ss = disk.sector_size();
    // The backup first: until the primary is written, the kernel and
    // firmware (which read the primary) still see the old table, whole.
    for mut copy in [backup, primary] {
        copy.entries[at..at + entry_size].fill(0);
        let entries_crc = gpt::crc32(&copy.entries);
        let header_size = le32(&copy.sector, 12) as usize;
        put_u32(&mut copy.sector, 88, entries_crc);
        let crc = gpt::header_crc(&copy.sector, header_size);
        put_u32(&mut copy.sector, 16, crc);
        disk.write_at(&copy.entries, copy.header.entries_lba * ss)?;
        disk.write_at(&copy.sector, copy.header.my_lba * ss)?;
        disk.sync()?;
    }
    match disk.forget_partition(number) {
        Ok(()) => Ok(()),
        // The kernel had not seen it (a table written since the last
        // re-read): nothing to forget.
        Err(TargetError::Io { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads and checks the GPT header at `lba` and its entries.
fn read_copy(disk: &Disk, lba: u64) -> Result<GptCopy, String> {
    let ss = disk.sector_size();
    let sectors = disk.size() / ss;
    if lba == 0 || lba >= sectors {
        return Err(format!(
            "header LBA {lba} is outside the disk ({sectors} sectors)"
        ));
    }
    let mut sector = vec![0u8; usize::try_from(ss).map_err(|e| e.to_string())?];
    disk.read_at(&mut sector, lba * ss)
        .map_err(|e| e.to_string())?;
    let header = gpt::Header::parse(&sector, lba).map_err(|e| e.to_string())?;
    let bytes = header.entries_len();
    if header
        .entries_lba
        .checked_mul(ss)
        .and_then(|start| start.checked_add(bytes as u64))
        .is_none_or(|end| end > disk.size())
    {
        return Err(format!(
            "the entries of the header at LBA {lba} are outside the disk"
        ));
    }
    let mut entries = vec![0u8; bytes];
    disk.read_at(&mut entries, header.entries_lba * ss)
        .map_err(|e| e.to_string())?;
    header.check_entries(&entries).map_err(|e| e.to_string())?;
    Ok(GptCopy {
        sector,
        header,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    const MIB: u64 = 1024 * 1024;

    /// An image file with the installed layout (4 partitions).
    fn laid_out(dir: &std::path::Path) -> Disk {
        let path = dir.join("disk.raw");
        let size = layout::minimum_disk_bytes() + 64 * MIB;
        let disk = Disk::create_image(&path, size).expect("image");
        let plan = layout::plan(size, &mut layout::seeded_guids(7)).expect("plan");
        layout::write_gpt_to(&disk, &plan).expect("gpt");
        disk
    }

    fn read(disk: &Disk, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        disk.read_at(&mut buf, offset).expect("read");
        buf
    }

    #[test]
    fn fast_wipe_zeroes_both_ends_and_nothing_between() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("part.raw");
        let disk = Disk::create_image(&path, 8 * MIB).expect("image");
        for at in [0, 512, MIB - 1, 4 * MIB, 7 * MIB, 8 * MIB - 1] {
            disk.write_at(&[0xa5], at).expect("write");
        }
        wipe(&disk, Method::Fast).expect("wipe");
        for at in [0, 512, MIB - 1, 7 * MIB, 8 * MIB - 1] {
            assert_eq!(read(&disk, at, 1), [0], "byte {at}");
        }
        assert_eq!(read(&disk, 4 * MIB, 1), [0xa5], "the middle is kept");
    }

    #[test]
    fn fast_wipe_of_a_small_device_zeroes_all_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small.raw");
        let disk = Disk::create_image(&path, MIB + 4096).expect("image");
        disk.write_at(&[1u8; 4096], MIB).expect("write");
        disk.write_at(&[1u8; 512], 0).expect("write");
        wipe(&disk, Method::Fast).expect("wipe");
        assert!(
            read(&disk, 0, (MIB + 4096) as usize)
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn zeroes_wipe_zeroes_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("z.raw");
        let disk = Disk::create_image(&path, 5 * MIB).expect("image");
        disk.write_at(&[7u8; 4096], 2 * MIB + 100).expect("write");
        wipe(&disk, Method::Zeroes).expect("wipe");
        assert!(read(&disk, 0, (5 * MIB) as usize).iter().all(|&b| b == 0));
    }

    #[test]
    fn dropping_a_partition_clears_its_entry_in_both_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = laid_out(dir.path());
        let before_primary = read_copy(&disk, 1).expect("primary");
        drop_partition(&disk, 3).expect("drop STATE");
        let primary = read_copy(&disk, 1).expect("primary still sound");
        let backup = read_copy(&disk, primary.header.alternate_lba).expect("backup still sound");
        let entry = |c: &GptCopy, n: usize| c.entries[(n - 1) * 128..n * 128].to_vec();
        assert!(entry(&primary, 3).iter().all(|&b| b == 0));
        assert!(entry(&backup, 3).iter().all(|&b| b == 0));
        for n in [1, 2, 4] {
            assert_eq!(entry(&primary, n), entry(&before_primary, n), "entry {n}");
            assert_eq!(entry(&backup, n), entry(&before_primary, n), "entry {n}");
        }
        // Gone now: a second drop is refused and writes nothing.
        let err = drop_partition(&disk, 3).expect_err("already gone");
        assert!(
            err.to_string().contains("partition 3 is not in the table"),
            "{err}"
        );
        let err = drop_partition(&disk, 129).expect_err("past the entries");
        assert!(err.to_string().contains("has no partition 129"), "{err}");
        assert!(drop_partition(&disk, 0).is_err());
    }

    #[test]
    fn a_damaged_backup_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = laid_out(dir.path());
        let primary = read_copy(&disk, 1).expect("primary");
        let alternate = primary.header.alternate_lba;
        // One flipped byte in the backup's entries.
        let at = read_copy(&disk, alternate)
            .expect("backup")
            .header
            .entries_lba
            * 512
            + 200;
        let byte = read(&disk, at, 1)[0];
        disk.write_at(&[byte ^ 0xff], at).expect("damage");
        let err = drop_partition(&disk, 2).expect_err("damaged backup");
        assert!(err.to_string().contains("backup GPT"), "{err}");
        assert_eq!(
            read_copy(&disk, 1).expect("primary").entries,
            primary.entries
        );
    }

    #[test]
    fn a_disk_without_a_table_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Disk::create_image(&dir.path().join("blank.raw"), 4 * MIB).expect("image");
        let err = drop_partition(&disk, 1).expect_err("no table");
        assert!(err.to_string().contains("no GPT header at LBA 1"), "{err}");
    }
}
