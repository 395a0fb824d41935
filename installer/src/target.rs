//! A disk to install onto, as byte ranges: a block device on the node
//! (`/dev/vda`) or a sparse image file on the build host
//! (`metal-amd64.raw`). The install code sees no difference.
//!
//! [`Disk`] reads and writes at offsets and zeroes ranges the cheap way
//! (`fallocate`: a hole in a file, a write-zeroes command on a device);
//! [`Partition`] is one range of it, a stream for `fatfs` and a
//! [`RangeWriter`] for [`crate::sparse::apply`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;

/// Bytes of zeros written at a time when the kernel cannot zero a range
/// itself.
const ZERO_CHUNK: usize = 1024 * 1024;

/// A disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A system call on the disk failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done, with the byte range when there is one.
        operation: String,
        /// The device or image file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A range reaches past the end of the disk.
    #[error(
        "{operation} {path}: bytes {offset}..{end} are past the end of the disk ({size} bytes)"
    )]
    OutOfRange {
        /// What was being done.
        operation: &'static str,
        /// The device or image file.
        path: PathBuf,
        /// The range's start.
        offset: u64,
        /// The range's end (exclusive).
        end: u64,
        /// The disk's size.
        size: u64,
    },
}

/// A block device or an image file, open for reading and writing.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    block_device: bool,
    sector_size: u64,
}

/// The size of the file or device `file`: seeking to the end works for
/// both (a block device's metadata length is 0) and needs no ioctl.
fn size_of(file: &File) -> io::Result<u64> {
    let end = rustix::fs::seek(file, rustix::fs::SeekFrom::End(0))?;
    rustix::fs::seek(file, rustix::fs::SeekFrom::Start(0))?;
    Ok(end)
}

/// The size in bytes of the block device or file at `path`, opened read
/// only: what machined passes to [`crate::xfs::grow_to_fill`].
///
/// # Errors
/// [`TargetError::Io`] naming `path`.
pub fn device_size(path: &Path) -> Result<u64, TargetError> {
    let file = File::open(path).map_err(|source| TargetError::Io {
        operation: "opening".to_owned(),
        path: path.to_path_buf(),
        source,
    })?;
    size_of(&file).map_err(|source| TargetError::Io {
        operation: "finding the size of".to_owned(),
        path: path.to_path_buf(),
        source,
    })
}

/// A [`TargetError::Io`] maker for `operation` on `path`.
fn io_err(operation: &str, path: &Path) -> impl FnOnce(std::io::Error) -> TargetError + use<> {
    let path = path.to_path_buf();
    let operation = operation.to_owned();
    move |source| TargetError::Io {
        operation,
        path,
        source,
    }
}

impl Disk {
    /// Opens `path`, a block device or a regular file, for reading and
    /// writing.
    ///
    /// # Errors
    /// [`TargetError::Io`] naming `path`.
    pub fn open(path: &Path) -> Result<Disk, TargetError> {
        let disk = Disk::open_any(path)?;
        if disk.sector_size != crate::layout::SECTOR_SIZE {
            return Err(TargetError::Io {
                operation: format!(
                    "using (its logical sectors are {} bytes; the layout needs 512)",
                    disk.sector_size
                ),
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::Unsupported),
            });
        }
        Ok(disk)
    }

    /// Opens `path` like [`Disk::open`], whatever its logical sector size
    /// (see [`Disk::sector_size`]): for work that does not write the
    /// installed layout, such as wiping.
    ///
    /// # Errors
    /// [`TargetError::Io`] naming `path`.
    pub fn open_any(path: &Path) -> Result<Disk, TargetError> {
        Disk::open_with(path, true)
    }

    /// Opens `path` like [`Disk::open_any`] but without claiming it: for
    /// editing the partition table of a disk while another of its
    /// partitions is mounted, as partitioning tools do.
    ///
    /// # Errors
    /// [`TargetError::Io`] naming `path`.
    pub fn open_shared(path: &Path) -> Result<Disk, TargetError> {
        Disk::open_with(path, false)
    }

    fn open_with(path: &Path, exclusive: bool) -> Result<Disk, TargetError> {
        let err = |operation: &str| io_err(operation, path);
        let block_device = std::fs::metadata(path)
            .map_err(err("opening"))?
            .file_type()
            .is_block_device();
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if block_device && exclusive {
            // O_EXCL on a block device: EBUSY while any of its partitions
            // is mounted or held, so a live filesystem is never written
            // over underneath.
            use std::os::unix::fs::OpenOptionsExt as _;
            options.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        }
        let file = options.open(path).map_err(|source| TargetError::Io {
            operation: if source.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                "opening (it is in use: a partition is mounted?)".to_owned()
            } else {
                "opening".to_owned()
            },
            path: path.to_path_buf(),
            source,
        })?;
        let sector_size = if block_device {
            let sector = rustix::fs::ioctl_blksszget(&file).map_err(|e| TargetError::Io {
                operation: "reading the sector size of".to_owned(),
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            u64::from(sector)
        } else {
            crate::layout::SECTOR_SIZE
        };
        let size = size_of(&file).map_err(err("finding the size of"))?;
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            size,
            block_device,
            sector_size,
        })
    }

    /// Creates (or replaces) a sparse image file of `size` bytes at `path`
    /// and opens it: the build host's disk.
    ///
    /// # Errors
    /// [`TargetError::Io`] naming `path`.
    pub fn create_image(path: &Path, size: u64) -> Result<Disk, TargetError> {
        let err = |operation: &str| io_err(operation, path);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("replacing")(e)),
        }
        let file = File::create(path).map_err(err("creating"))?;
        file.set_len(size).map_err(err("sizing"))?;
        drop(file);
        Disk::open(path)
    }

    /// The device or file path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this is a block device (not an image file).
    #[must_use]
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Bytes per logical sector: the device's, 512 for an image file.
    #[must_use]
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    fn io_err(&self, operation: String) -> impl FnOnce(io::Error) -> TargetError + use<> {
        let path = self.path.clone();
        move |source| TargetError::Io {
            operation,
            path,
            source,
        }
    }

    fn check_range(
        &self,
        operation: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<(), TargetError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            end => Err(TargetError::OutOfRange {
                operation,
                path: self.path.clone(),
                offset,
                end: end.unwrap_or(u64::MAX),
                size: self.size,
            }),
        }
    }

    /// Writes all of `buf` at byte `offset`.
    ///
    /// # Errors
    /// The range is past the end, or the write failed.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        self.check_range("writing", offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(self.io_err(format!("writing {} bytes at {offset} to", buf.len())))
    }

    /// Fills `buf` from byte `offset`.
    ///
    /// # Errors
    /// The range is past the end, or the read failed.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), TargetError> {
        self.check_range("reading", offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(self.io_err(format!("reading {} bytes at {offset} from", buf.len())))
    }

    /// Makes `len` bytes at `offset` read as zeros: a hole punched in an
    /// image file (it stays sparse), a zeroing command on a block device
    /// (write-zeroes or discard, which the kernel emulates with writes
    /// where the device has neither), zero buffers written as the last
    /// resort.
    ///
    /// # Errors
    /// The range is past the end, or every way of zeroing failed.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        self.check_range("zeroing", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = if self.block_device {
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
        } else {
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
        };
        match rustix::fs::fallocate(&self.file, mode, offset, len) {
            Ok(()) => return Ok(()),
            // Not supported here (a filesystem without holes, a device
            // range not aligned to its logical blocks): write zeros.
            Err(e)
                if e == rustix::io::Errno::OPNOTSUPP
                    || e == rustix::io::Errno::INVAL
                    || e == rustix::io::Errno::NOSYS => {}
            Err(e) => {
                return Err(self.io_err(format!("zeroing {len} bytes at {offset} of"))(
                    e.into(),
                ));
            }
        }
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `offset` only where that costs no writing of
    /// data: a hole in a file, a write-zeroes or discard with guaranteed
    /// zeros on a device that has one. Returns whether it did; `false`
    /// leaves the range as it was.
    ///
    /// For space a filesystem will initialise itself when it grows into
    /// it, where writing gigabytes of zeros would only cost time.
    ///
    /// # Errors
    /// The range is past the end, or the call failed for another reason
    /// than lack of support.
    pub fn zero_range_cheaply(&self, offset: u64, len: u64) -> Result<bool, TargetError> {
        self.check_range("zeroing", offset, len)?;
        if len == 0 {
            return Ok(true);
        }
        // On a block device, PUNCH_HOLE asks for zeroing without the
        // kernel's fallback of writing zero pages.
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, mode, offset, len) {
            Ok(()) => Ok(true),
            Err(e)
                if e == rustix::io::Errno::OPNOTSUPP
                    || e == rustix::io::Errno::INVAL
                    || e == rustix::io::Errno::NOSYS =>
            {
                Ok(false)
            }
            Err(e) => Err(self.io_err(format!("zeroing {len} bytes at {offset} of"))(
                e.into(),
            )),
        }
    }

    /// Flushes everything written to stable storage (`fsync`).
    ///
    /// # Errors
    /// [`TargetError::Io`] naming the disk.
    pub fn sync(&self) -> Result<(), TargetError> {
        self.file
            .sync_all()
            .map_err(self.io_err("syncing".to_owned()))
    }

    /// Asks the kernel to re-read the partition table (`BLKRRPART`), so
    /// the partitions' device nodes match what was just written. Nothing
    /// to do for an image file.
    ///
    /// # Errors
    /// The ioctl failed: typically `EBUSY` because a partition of the old
    /// table is mounted or open. The new table is on the disk regardless
    /// and takes effect at the next boot.
    pub fn reread_partitions(&self) -> Result<(), TargetError> {
        if !self.block_device {
            return Ok(());
        }
        blkrrpart(&self.file)
            .map_err(|e| self.io_err("re-reading the partition table of".to_owned())(e.into()))
    }

    /// Tells the kernel that partition `number` is gone from the table
    /// (`BLKPG_DEL_PARTITION`), so its device node goes without re-reading
    /// the whole table, which the kernel refuses while another partition of
    /// the disk is mounted. Nothing to do for an image file.
    ///
    /// # Errors
    /// The ioctl failed: `EBUSY` while the partition itself is open, `ENXIO`
    /// when the kernel has no such partition.
    pub fn forget_partition(&self, number: u32) -> Result<(), TargetError> {
        if !self.block_device {
            return Ok(());
        }
        let pno = i32::try_from(number).unwrap_or(i32::MAX);
        blkpg_del_partition(&self.file, pno).map_err(|e| {
            self.io_err(format!(
                "removing partition {number} from the kernel's view of"
            ))(e.into())
        })
    }

    /// The bytes `offset..offset + len` as a stream of their own.
    ///
    /// # Errors
    /// [`TargetError::OutOfRange`] when the range is past the end.
    pub fn partition(&self, offset: u64, len: u64) -> Result<Partition<'_>, TargetError> {
        self.check_range("opening a partition of", offset, len)?;
        Ok(Partition {
            disk: self,
            offset,
            len,
            pos: 0,
        })
    }
}

/// `BLKRRPART`, `_IO(0x12, 95)`.
pub const BLKRRPART: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 95);

#[allow(unsafe_code)]
fn blkrrpart(file: &File) -> rustix::io::Result<()> {
    // SAFETY: BLKRRPART takes no argument (the pointer passed is null and
    // the kernel does not read it); it acts on the open block device only.
    unsafe {
        let op = rustix::ioctl::NoArg::<BLKRRPART>::new();
        rustix::ioctl::ioctl(file, op)
    }
}

/// `BLKPG`, `_IO(0x12, 105)`.
pub const BLKPG: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 105);

/// `BLKPG_DEL_PARTITION`, the operation of a `BLKPG` call.
const BLKPG_DEL_PARTITION: i32 = 2;

/// `struct blkpg_partition` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

// The kernel's sizes on x86_64 (and every LP64 ABI).
const _: () = assert!(std::mem::size_of::<BlkpgPartition>() == 152);
const _: () = assert!(std::mem::size_of::<BlkpgIoctlArg>() == 24);

#[allow(unsafe_code)]
fn blkpg_del_partition(file: &File, pno: i32) -> rustix::io::Result<()> {
    let mut partition = BlkpgPartition {
        start: 0,
        length: 0,
        pno,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_DEL_PARTITION,
        flags: 0,
        datalen: i32::try_from(std::mem::size_of::<BlkpgPartition>()).unwrap_or(i32::MAX),
        data: &raw mut partition,
    };
    // SAFETY: BLKPG reads a `struct blkpg_ioctl_arg` through the pointer
    // `Setter` passes (to `arg`, which it owns for the call), and through
    // `arg.data` a `struct blkpg_partition` of `datalen` bytes: both are
    // `repr(C)` with the kernel's layout (sizes asserted above), and
    // `partition` outlives the call. For a delete the kernel writes
    // nothing back.
    unsafe {
        let op = rustix::ioctl::Setter::<BLKPG, BlkpgIoctlArg>::new(arg);
        rustix::ioctl::ioctl(file, op)
    }
}

/// Somewhere [`crate::sparse::apply`] can write: a fixed-size range of
/// bytes that can be zeroed.
pub trait RangeWriter {
    /// The range's length in bytes.
    fn len(&self) -> u64;

    /// Whether the range is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes all of `buf` at `offset` within the range.
    ///
    /// # Errors
    /// Past the end of the range, or the write failed.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeros, whatever it costs.
    ///
    /// # Errors
    /// Past the end of the range, or zeroing failed.
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeros if that is cheap (see
    /// [`Disk::zero_range_cheaply`]); returns whether it did.
    ///
    /// # Errors
    /// Past the end of the range, or zeroing failed.
    fn zero_cheaply(&mut self, offset: u64, len: u64) -> io::Result<bool>;
}

/// A range of a [`Disk`]: a partition. Offsets are relative to its start,
/// and nothing outside it can be read or written.
#[derive(Debug)]
pub struct Partition<'a> {
    disk: &'a Disk,
    offset: u64,
    len: u64,
    pos: u64,
}

impl Partition<'_> {
    /// Where it starts on the disk.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn inside(&self, offset: u64, len: u64) -> io::Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "bytes {offset}..+{len} are outside the partition at {} of {} bytes on {}",
                    self.offset,
                    self.len,
                    self.disk.path.display()
                ),
            )),
        }
    }
}

fn to_io(e: TargetError) -> io::Error {
    match e {
        TargetError::Io { source, .. } => source,
        other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
    }
}

impl RangeWriter for Partition<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = self.inside(offset, buf.len() as u64)?;
        self.disk.write_at(buf, at).map_err(to_io)
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let at = self.inside(offset, len)?;
        self.disk.zero_range(at, len).map_err(to_io)
    }

    fn zero_cheaply(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let at = self.inside(offset, len)?;
        self.disk.zero_range_cheaply(at, len).map_err(to_io)
    }
}

impl Read for Partition<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self
            .disk
            .file
            .read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Partition<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "the end of the partition at {} of {} bytes on {}",
                    self.offset,
                    self.len,
                    self.disk.path.display()
                ),
            ));
        }
        let n = self.disk.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Writes go straight to the file; syncing is the disk's business.
        Ok(())
    }
}

impl Seek for Partition<'_> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seeking before the start of the partition",
            )),
        }
    }
}

/// An in-memory range, for tests of code that writes a [`RangeWriter`].
impl RangeWriter for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| past_end())?;
        let end = start.checked_add(buf.len()).ok_or_else(past_end)?;
        self.get_mut(start..end)
            .ok_or_else(past_end)?
            .copy_from_slice(buf);
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| past_end())?;
        let len = usize::try_from(len).map_err(|_| past_end())?;
        let end = start.checked_add(len).ok_or_else(past_end)?;
        self.get_mut(start..end).ok_or_else(past_end)?.fill(0);
        Ok(())
    }

    fn zero_cheaply(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        self.zero(offset, len).map(|()| true)
    }
}

fn past_end() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "past the end of the range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn image_file_reads_writes_and_refuses_past_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.raw");
        let disk = Disk::create_image(&path, 8 * MIB).expect("create");
        assert_eq!(disk.size(), 8 * MIB);
        assert!(!disk.is_block_device());
        assert_eq!(disk.path(), path);
        disk.write_at(b"hello", MIB - 2).expect("write");
        let mut got = [0u8; 5];
        disk.read_at(&mut got, MIB - 2).expect("read");
        assert_eq!(&got, b"hello");

        let err = disk.write_at(b"xy", 8 * MIB - 1).expect_err("past the end");
        assert!(matches!(err, TargetError::OutOfRange { size, .. } if size == 8 * MIB));
        assert!(err.to_string().contains("disk.raw"), "{err}");
        // The file did not grow.
        assert_eq!(fs_len(&path), 8 * MIB);
        assert!(disk.read_at(&mut got, u64::MAX - 1).is_err());

        // Opening again finds the size by seeking.
        let again = Disk::open(&path).expect("open");
        assert_eq!(again.size(), 8 * MIB);
        assert_eq!(device_size(&path).expect("size"), 8 * MIB);
        // Re-reading a table is a no-op on files.
        again.reread_partitions().expect("no-op");
        again.sync().expect("sync");

        let err = Disk::open(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("opening"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    fn fs_len(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").len()
    }

    #[test]
    fn zeroing_punches_holes_in_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.raw");
        let disk = Disk::create_image(&path, 4 * MIB).expect("create");
        disk.write_at(&vec![0xAB; 3 * MIB as usize], 0)
            .expect("write");
        let blocks_before = std::fs::metadata(&path).expect("stat").blocks();
        disk.zero_range(4096, 2 * MIB).expect("zero");
        let mut got = vec![0u8; 3 * MIB as usize];
        disk.read_at(&mut got, 0).expect("read");
        assert!(got[..4096].iter().all(|&b| b == 0xAB));
        assert!(got[4096..4096 + 2 * MIB as usize].iter().all(|&b| b == 0));
        assert!(got[4096 + 2 * MIB as usize..].iter().all(|&b| b == 0xAB));
        let blocks_after = std::fs::metadata(&path).expect("stat").blocks();
        assert!(
            blocks_after < blocks_before,
            "a hole was punched: {blocks_before} -> {blocks_after} blocks"
        );
        assert_eq!(fs_len(&path), 4 * MIB, "the size is kept");

        assert!(disk.zero_range_cheaply(0, 4096).expect("cheap"));
        disk.read_at(&mut got[..4096], 0).expect("read");
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert!(disk.zero_range(MIB, 4 * MIB).is_err(), "past the end");
    }

    #[test]
    fn a_partition_is_a_bounded_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.raw");
        let disk = Disk::create_image(&path, 4 * MIB).expect("create");
        let mut part = disk.partition(MIB, MIB).expect("partition");
        assert_eq!(part.offset(), MIB);
        assert_eq!(Partition::len(&part), MIB);
        assert_eq!(part.seek(SeekFrom::End(-3)).expect("seek"), MIB - 3);
        // Only three bytes fit before the end.
        assert_eq!(part.write(b"abcdef").expect("write"), 3);
        assert_eq!(
            part.write(b"x").expect_err("full").kind(),
            io::ErrorKind::WriteZero
        );
        part.seek(SeekFrom::Start(MIB - 3)).expect("seek");
        let mut buf = [0u8; 8];
        assert_eq!(part.read(&mut buf).expect("read"), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(part.read(&mut buf).expect("eof"), 0);
        assert!(part.seek(SeekFrom::Current(-(2 * MIB as i64))).is_err());

        RangeWriter::write_at(&mut part, b"zz", 10).expect("write_at");
        assert!(RangeWriter::write_at(&mut part, b"zz", MIB - 1).is_err());
        let mut got = [0u8; 2];
        disk.read_at(&mut got, MIB + 10).expect("read");
        assert_eq!(&got, b"zz");
        part.zero(10, 2).expect("zero");
        disk.read_at(&mut got, MIB + 10).expect("read");
        assert_eq!(got, [0, 0]);
        assert!(part.zero(MIB - 1, 2).is_err());

        assert!(disk.partition(3 * MIB, 2 * MIB).is_err());
    }

    #[test]
    fn ioctl_number() {
        assert_eq!(BLKRRPART, 0x125F);
    }

    #[test]
    fn vec_range_writer() {
        let mut v = vec![1u8; 16];
        RangeWriter::write_at(&mut v, b"ab", 14).expect("fits");
        assert!(RangeWriter::write_at(&mut v, b"abc", 14).is_err());
        v.zero(0, 4).expect("zero");
        assert_eq!(&v[..5], &[0, 0, 0, 0, 1]);
        assert!(v.zero(15, 2).is_err());
        assert_eq!(RangeWriter::len(&v), 16);
    }
}
