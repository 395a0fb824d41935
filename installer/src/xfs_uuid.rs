//! Giving an installed xfs filesystem a UUID of its own, offline, as
//! `xfs_admin -U` does on a v5 filesystem.
//!
//! The installer writes STATE and EPHEMERAL from templates made once at
//! image build time, so without this every node would carry the same two
//! filesystem UUIDs (upstream formats at install time, so each is new).
//! Two places hold the UUID the kernel checks:
//!
//! - every allocation group's superblock (`sb_uuid`), whose CRC covers
//!   it. The metadata blocks stamped with the old UUID keep it: it moves
//!   to `sb_meta_uuid`, with the `META_UUID` incompatible feature set,
//!   which the kernel has read since Linux 4.3;
//! - every log record header (`h_fs_uuid`): the kernel refuses to mount
//!   when the head record's UUID is not `sb_uuid`. A record whose CRC is
//!   set and right gets a new one; mkfs writes its records with a CRC of
//!   0, which the kernel accepts and which is kept.
//!
//! Only a v5 filesystem with an internal log and no realtime section is
//! changed, and only when its log is clean (its last record an unmount
//! record, as mkfs leaves it): replaying a dirty log would bring back
//! superblocks with the old UUID. Everything is read and checked (every
//! superblock's CRC, the log) before the first write.

use std::io::{self, Read, Seek, SeekFrom, Write};

use machinery::endian::{be16, be32, be64};

const SB_MAGIC: &[u8; 4] = b"XFSB";
const LOG_MAGIC: [u8; 4] = 0xFEED_BABE_u32.to_be_bytes();
/// `XFS_SB_FEAT_INCOMPAT_META_UUID`.
const INCOMPAT_META_UUID: u32 = 1 << 2;
/// The log's basic block (`BBSIZE`): record headers start on one.
const BB: u64 = 512;
/// `XLOG_HEADER_CYCLE_SIZE`: the data one header block describes.
const CYCLE_SIZE: u64 = 32 * 1024;
/// `sizeof(struct xlog_rec_header)` on 64-bit hosts: what the CRC covers
/// of the header (the last 4 bytes are padding, always zero on disk).
const REC_HEADER_CRC_LEN: usize = 328;
/// The same, as i386 hosts lay the struct out (no tail padding): a
/// record they wrote has its CRC over this many bytes.
const REC_HEADER_CRC_LEN_I386: usize = 324;
/// The largest iclog (`XLOG_MAX_RECORD_BSIZE`).
const MAX_ICLOG: u64 = 256 * 1024;
/// `XLOG_UNMOUNT_TRANS`, in a log operation header's flags.
const XLOG_UNMOUNT_TRANS: u8 = 0x20;
/// `XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR`.
const INCOMPAT_NEEDSREPAIR: u32 = 1 << 4;
/// `sizeof(struct xlog_rec_ext_header)`.
const EXT_HEADER_LEN: usize = 260;
/// How much of the log is read at a time while looking for headers.
const SCAN_CHUNK: u64 = 1024 * 1024;

// Superblock offsets (struct xfs_dsb), big-endian unless noted.
const SB_BLOCKSIZE: usize = 4;
const SB_RBLOCKS: usize = 16;
const SB_UUID: usize = 32;
const SB_LOGSTART: usize = 48;
const SB_AGBLOCKS: usize = 84;
const SB_AGCOUNT: usize = 88;
const SB_LOGBLOCKS: usize = 96;
const SB_VERSIONNUM: usize = 100;
const SB_SECTSIZE: usize = 102;
const SB_AGBLKLOG: usize = 124;
const SB_FEATURES_INCOMPAT: usize = 216;
/// Little-endian, as every xfs CRC.
const SB_CRC: usize = 224;
const SB_META_UUID: usize = 248;

// Log record header offsets (struct xlog_rec_header).
const LR_VERSION: usize = 8;
const LR_LEN: usize = 12;
const LR_LSN: usize = 16;
const LR_CRC: usize = 32;
const LR_NUM_LOGOPS: usize = 40;
const LR_FS_UUID: usize = 304;
const LR_SIZE: usize = 320;

static CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Setting the UUID failed.
#[derive(Debug, thiserror::Error)]
pub enum XfsUuidError {
    /// Reading or writing failed.
    #[error("{operation} at byte {offset}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where, from the filesystem's start.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// It is not a filesystem this can change.
    #[error("not a filesystem whose UUID can be set: {reason}")]
    Unsupported {
        /// What is wrong.
        reason: String,
    },
}

/// What [`set_uuid`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidChange {
    /// The UUID before.
    pub old: [u8; 16],
    /// The superblocks rewritten (one per allocation group).
    pub superblocks: u32,
    /// The log record headers rewritten.
    pub log_records: u64,
}

/// The fields of the primary superblock this needs.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    blocksize: u64,
    agblocks: u64,
    agcount: u32,
    agblklog: u64,
    logstart: u64,
    logblocks: u64,
    sectsize: usize,
    uuid: [u8; 16],
}

fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[at..at + 16]);
    u
}

fn unsupported(reason: impl Into<String>) -> XfsUuidError {
    XfsUuidError::Unsupported {
        reason: reason.into(),
    }
}

fn read_at<D: Read + Seek>(
    dev: &mut D,
    offset: u64,
    buf: &mut [u8],
    operation: &'static str,
) -> Result<(), XfsUuidError> {
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.read_exact(buf))
        .map_err(|source| XfsUuidError::Io {
            operation,
            offset,
            source,
        })
}

fn write_at<D: Write + Seek>(
    dev: &mut D,
    offset: u64,
    buf: &[u8],
    operation: &'static str,
) -> Result<(), XfsUuidError> {
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.write_all(buf))
        .map_err(|source| XfsUuidError::Io {
            operation,
            offset,
            source,
        })
}

/// The CRC of `buf` with its 4-byte CRC field at `crc_at` taken as zero,
/// as xfs computes every metadata checksum.
fn crc_without_field(buf: &[u8], crc_at: usize) -> crc::Digest<'static, u32> {
    let mut digest = CASTAGNOLI.digest();
    digest.update(&buf[..crc_at]);
    digest.update(&[0; 4]);
    digest.update(&buf[crc_at + 4..]);
    digest
}

/// Whether the CRC stored at `at` is `buf`'s.
fn crc_ok(buf: &[u8], at: usize) -> bool {
    crc_without_field(buf, at).finalize() == stored_crc(buf, at)
}

/// Stores `buf`'s CRC in its field at `at` (little-endian, as xfs does).
fn set_crc(buf: &mut [u8], at: usize) {
    let crc = crc_without_field(buf, at).finalize();
    buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

fn flush<D: Write>(dev: &mut D) -> Result<(), XfsUuidError> {
    dev.flush().map_err(|source| XfsUuidError::Io {
        operation: "flushing",
        offset: 0,
        source,
    })
}

fn stored_crc(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn superblock_crc_ok(sb: &[u8]) -> bool {
    crc_ok(sb, SB_CRC)
}

fn geometry(sb: &[u8]) -> Result<Geometry, XfsUuidError> {
    if &sb[..4] != SB_MAGIC {
        return Err(unsupported("no xfs superblock (magic XFSB)"));
    }
    let version = be16(sb, SB_VERSIONNUM) & 0xf;
    if version != 5 {
        return Err(unsupported(format!(
            "superblock version {version}; only version 5 (CRC) filesystems are supported"
        )));
    }
    let g = Geometry {
        blocksize: u64::from(be32(sb, SB_BLOCKSIZE)),
        agblocks: u64::from(be32(sb, SB_AGBLOCKS)),
        agcount: be32(sb, SB_AGCOUNT),
        agblklog: u64::from(sb[SB_AGBLKLOG]),
        logstart: be64(sb, SB_LOGSTART),
        logblocks: u64::from(be32(sb, SB_LOGBLOCKS)),
        sectsize: usize::from(be16(sb, SB_SECTSIZE)),
        uuid: uuid_at(sb, SB_UUID),
    };
    if !(512..=32768).contains(&g.sectsize) || !g.sectsize.is_power_of_two() {
        return Err(unsupported(format!("sector size {}", g.sectsize)));
    }
    if !(512..=65536).contains(&g.blocksize) || g.agblocks == 0 || g.agcount == 0 {
        return Err(unsupported(format!(
            "geometry: block size {}, {} blocks per group, {} groups",
            g.blocksize, g.agblocks, g.agcount
        )));
    }
    if !(1..=31).contains(&g.agblklog) || g.agblocks > 1u64 << g.agblklog {
        return Err(unsupported(format!(
            "{} blocks per group with agblklog {}",
            g.agblocks, g.agblklog
        )));
    }
    if g.logstart == 0 {
        return Err(unsupported("the log is on another device"));
    }
    if g.logblocks == 0 || g.logstart >> g.agblklog >= u64::from(g.agcount) {
        return Err(unsupported(format!(
            "a log of {} blocks at block {}",
            g.logblocks, g.logstart
        )));
    }
    let incompat = be32(sb, SB_FEATURES_INCOMPAT);
    if incompat & INCOMPAT_NEEDSREPAIR != 0 {
        return Err(unsupported("it is marked as needing xfs_repair"));
    }
    if be64(sb, SB_RBLOCKS) != 0 {
        // The realtime superblock holds sb_uuid too; none is changed here.
        return Err(unsupported("it has a realtime section"));
    }
    Ok(g)
}

impl Geometry {
    /// The byte offset of allocation group `ag`.
    fn ag_offset(&self, ag: u64) -> Result<u64, XfsUuidError> {
        ag.checked_mul(self.agblocks)
            .and_then(|b| b.checked_mul(self.blocksize))
            .ok_or_else(|| unsupported(format!("allocation group {ag} lies beyond 2^64 bytes")))
    }

    /// The byte offset of filesystem block `fsb` (`XFS_FSB_TO_DADDR`:
    /// the group number sits above `agblklog` bits).
    fn fsb_offset(&self, fsb: u64) -> Result<u64, XfsUuidError> {
        let ag = fsb >> self.agblklog;
        let block = fsb & ((1u64 << self.agblklog) - 1);
        self.ag_offset(ag)?
            .checked_add(block * self.blocksize)
            .ok_or_else(|| unsupported(format!("block {fsb} lies beyond 2^64 bytes")))
    }

    fn log_bytes(&self) -> u64 {
        self.logblocks * self.blocksize
    }
}

/// Sets the UUID of the xfs filesystem on `dev` (its first byte is the
/// filesystem's) to `uuid`, as `xfs_admin -U` does: every superblock and
/// every log record header. Checks every superblock before writing any.
///
/// # Errors
/// [`XfsUuidError::Unsupported`] when `dev` holds no version 5 xfs with an
/// internal log, a superblock's CRC is wrong or the log is dirty (nothing
/// is written then); [`XfsUuidError::Io`] when reading or writing failed.
pub fn set_uuid<D: Read + Write + Seek>(
    dev: &mut D,
    uuid: [u8; 16],
) -> Result<UuidChange, XfsUuidError> {
    let mut first = [0u8; 512];
    read_at(dev, 0, &mut first, "reading the superblock")?;
    let g = geometry(&first)?;

    // Every superblock, checked before any is written.
    // Not sized by agcount: that is not trusted before the CRCs are.
    let mut superblocks = Vec::new();
    for ag in 0..u64::from(g.agcount) {
        let at = g.ag_offset(ag)?;
        let mut sb = vec![0u8; g.sectsize];
        read_at(dev, at, &mut sb, "reading a superblock")?;
        if &sb[..4] != SB_MAGIC || !superblock_crc_ok(&sb) {
            return Err(unsupported(format!(
                "the superblock of allocation group {ag} (byte {at}) is damaged (magic or CRC)"
            )));
        }
        superblocks.push((at, sb));
    }

    // The metadata keeps the UUID it was stamped with: the one in
    // sb_meta_uuid when the feature is already on, else the old sb_uuid.
    let incompat = be32(&first, SB_FEATURES_INCOMPAT);
    let meta_uuid = if incompat & INCOMPAT_META_UUID != 0 {
        uuid_at(&first, SB_META_UUID)
    } else {
        g.uuid
    };

    // Everything is read and planned before the first write, so a
    // refusal or a read error leaves the filesystem as it was.
    let log_start = g.fsb_offset(g.logstart)?;
    let log_plan = plan_log(dev, &g, log_start, uuid)?;
    for rewrite in &log_plan {
        write_at(
            dev,
            log_start + rewrite.at,
            &rewrite.bytes,
            "writing a log record header",
        )?;
    }
    let log_records = log_plan.len() as u64;

    for (at, sb) in &mut superblocks {
        let mut flags = be32(sb, SB_FEATURES_INCOMPAT);
        if uuid == meta_uuid {
            flags &= !INCOMPAT_META_UUID;
        } else {
            flags |= INCOMPAT_META_UUID;
        }
        sb[SB_FEATURES_INCOMPAT..SB_FEATURES_INCOMPAT + 4].copy_from_slice(&flags.to_be_bytes());
        sb[SB_UUID..SB_UUID + 16].copy_from_slice(&uuid);
        // With the feature off the field is unused; mkfs leaves it zero.
        let meta_field = if uuid == meta_uuid {
            [0; 16]
        } else {
            meta_uuid
        };
        sb[SB_META_UUID..SB_META_UUID + 16].copy_from_slice(&meta_field);
        set_crc(sb, SB_CRC);
        write_at(dev, *at, sb, "writing a superblock")?;
    }
    flush(dev)?;
    Ok(UuidChange {
        old: g.uuid,
        superblocks: g.agcount,
        log_records,
    })
}

/// One log record header to rewrite: where it is (bytes into the log)
/// and its new bytes.
struct HeaderRewrite {
    at: u64,
    bytes: Vec<u8>,
}

/// Plans the new bytes of every log record header that carries the old
/// UUID, reading only; refuses a log that is not clean.
fn plan_log<D: Read + Seek>(
    dev: &mut D,
    g: &Geometry,
    log_start: u64,
    uuid: [u8; 16],
) -> Result<Vec<HeaderRewrite>, XfsUuidError> {
    let len = g.log_bytes();
    let mut plan = Vec::new();
    // The record with the highest LSN is the log's head.
    let mut head: Option<(u64, u64, Vec<u8>)> = None;
    let mut chunk = vec![0u8; SCAN_CHUNK as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(SCAN_CHUNK);
        let chunk = &mut chunk[..n as usize];
        read_at(dev, log_start + pos, chunk, "reading the log")?;
        for bb in 0..n / BB {
            let header = &chunk[(bb * BB) as usize..((bb + 1) * BB) as usize];
            if header[..4] != LOG_MAGIC || uuid_at(header, LR_FS_UUID) != g.uuid {
                continue;
            }
            let at = pos + bb * BB;
            let lsn = be64(header, LR_LSN);
            if head.as_ref().is_none_or(|(best, _, _)| lsn > *best) {
                head = Some((lsn, at, header.to_vec()));
            }
            let mut bytes = header.to_vec();
            bytes[LR_FS_UUID..LR_FS_UUID + 16].copy_from_slice(&uuid);
            let old_crc = stored_crc(header, LR_CRC);
            // mkfs leaves a record's CRC 0, which means unset; a record
            // whose CRC is wrong (torn, or not a record) must stay wrong,
            // or the kernel would take it for a good one.
            if old_crc != 0
                && let Some(tail) = record_tail(dev, g, log_start, at, header)?
            {
                for covered in [REC_HEADER_CRC_LEN, REC_HEADER_CRC_LEN_I386] {
                    if record_crc(&header[..covered], &tail) == old_crc {
                        let crc = record_crc(&bytes[..covered], &tail);
                        bytes[LR_CRC..LR_CRC + 4].copy_from_slice(&crc.to_le_bytes());
                        break;
                    }
                }
            }
            plan.push(HeaderRewrite { at, bytes });
        }
        pos += n;
    }
    let Some((_, head_at, head)) = head else {
        return Err(unsupported("no log record carries the filesystem's UUID"));
    };
    if !is_unmount_record(dev, g, log_start, head_at, &head)? {
        return Err(unsupported(
            "the log is dirty (its last record is not an unmount record): mount it once, or run xfs_repair",
        ));
    }
    Ok(plan)
}

fn record_crc(header: &[u8], tail: &[u8]) -> u32 {
    let mut digest = crc_without_field(header, LR_CRC);
    digest.update(tail);
    digest.finalize()
}

/// Reads `buf.len()` bytes of the log from `offset` on: the log is a
/// ring, so a record that runs past its end goes on at its start.
fn read_log_wrapped<D: Read + Seek>(
    dev: &mut D,
    g: &Geometry,
    log_start: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), XfsUuidError> {
    let log_len = g.log_bytes();
    let mut done = 0;
    while done < buf.len() {
        let at = (offset + done as u64) % log_len;
        let n = ((log_len - at) as usize).min(buf.len() - done);
        read_at(
            dev,
            log_start + at,
            &mut buf[done..done + n],
            "reading a log record",
        )?;
        done += n;
    }
    Ok(())
}

/// The header blocks of a record (`xlog_logrec_hblks`): version 2 records
/// of an iclog above 32 KiB have one per 32 KiB.
fn header_blocks(header: &[u8]) -> u64 {
    let iclog_size = u64::from(be32(header, LR_SIZE));
    if be32(header, LR_VERSION) & 2 != 0 && iclog_size > CYCLE_SIZE {
        iclog_size.div_ceil(CYCLE_SIZE)
    } else {
        1
    }
}

/// The data length of a record whose lengths are sane, as the kernel
/// judges them (`xlog_valid_rec_header`): some data, no more than its
/// iclog, and an iclog of at most 256 KiB.
fn data_len(header: &[u8]) -> Option<u64> {
    let data_len = u64::from(be32(header, LR_LEN));
    let iclog_size = u64::from(be32(header, LR_SIZE));
    (data_len > 0 && data_len <= iclog_size.max(CYCLE_SIZE) && iclog_size <= MAX_ICLOG)
        .then_some(data_len)
}

/// What a record's CRC covers after its header: the extended headers
/// (one per 32 KiB of data after the first) and the data. `None` for a
/// record whose lengths are not sane.
fn record_tail<D: Read + Seek>(
    dev: &mut D,
    g: &Geometry,
    log_start: u64,
    header_at: u64,
    header: &[u8],
) -> Result<Option<Vec<u8>>, XfsUuidError> {
    let Some(data_len) = data_len(header) else {
        return Ok(None);
    };
    let mut tail = Vec::new();
    if be32(header, LR_VERSION) & 2 != 0 {
        for i in 1..data_len.div_ceil(CYCLE_SIZE) {
            let mut ext = [0u8; EXT_HEADER_LEN];
            read_log_wrapped(dev, g, log_start, header_at + i * BB, &mut ext)?;
            tail.extend_from_slice(&ext);
        }
    }
    let mut data = vec![0u8; data_len as usize];
    read_log_wrapped(
        dev,
        g,
        log_start,
        header_at + header_blocks(header) * BB,
        &mut data,
    )?;
    tail.extend_from_slice(&data);
    Ok(Some(tail))
}

/// Whether the record at `header_at` is an unmount record: one operation
/// whose header carries `XLOG_UNMOUNT_TRANS`, as a clean log ends.
fn is_unmount_record<D: Read + Seek>(
    dev: &mut D,
    g: &Geometry,
    log_start: u64,
    header_at: u64,
    header: &[u8],
) -> Result<bool, XfsUuidError> {
    if be32(header, LR_NUM_LOGOPS) != 1 || data_len(header).is_none() {
        return Ok(false);
    }
    // struct xlog_op_header: tid, len, clientid, then flags.
    let mut op = [0u8; 12];
    read_log_wrapped(
        dev,
        g,
        log_start,
        header_at + header_blocks(header) * BB,
        &mut op,
    )?;
    Ok(op[9] & XLOG_UNMOUNT_TRANS != 0)
}

// Superblock fields for [`set_inode_times`].
const SB_ROOTINO: usize = 56;
const SB_RBMINO: usize = 64;
const SB_RSUMINO: usize = 72;
const SB_INODESIZE: usize = 104;
const SB_INOPBLOG: usize = 123;

// Inode core offsets (struct xfs_dinode, version 3).
const DI_MAGIC: &[u8; 2] = b"IN";
const DI_VERSION: usize = 4;
const DI_ATIME: usize = 32;
const DI_MTIME: usize = 40;
const DI_CTIME: usize = 48;
const DI_CRC: usize = 100;
const DI_FLAGS2: usize = 120;
const DI_CRTIME: usize = 144;
const DI_INO: usize = 152;
/// `XFS_DIFLAG2_BIGTIME`: the inode's times are one 64-bit count of
/// nanoseconds from 1901-12-13 (2^31 s before the Unix epoch).
const DIFLAG2_BIGTIME: u64 = 1 << 3;
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// Sets the access, modification, change and creation times of the inodes
/// `mkfs.xfs` makes (the root directory, the realtime bitmap and summary)
/// to `seconds` after the Unix epoch, recomputing each inode's CRC. They
/// carry the time mkfs ran, the only bytes in which two filesystems made
/// with the same options and UUID differ; set to `SOURCE_DATE_EPOCH`,
/// the same inputs make the same bytes. Returns how many inodes were set.
///
/// # Errors
/// [`XfsUuidError::Unsupported`] when it is not a version 5 xfs, an inode
/// is not where the superblock says or fails its CRC (nothing is written
/// then), or `seconds` cannot be stored; [`XfsUuidError::Io`] when reading
/// or writing fails.
pub fn set_inode_times<D: Read + Write + Seek>(
    dev: &mut D,
    seconds: i64,
) -> Result<u32, XfsUuidError> {
    let mut first = [0u8; 512];
    read_at(dev, 0, &mut first, "reading the superblock")?;
    let g = geometry(&first)?;
    // The CRC covers the whole sector.
    let mut sb = vec![0u8; g.sectsize];
    read_at(dev, 0, &mut sb, "reading the superblock")?;
    if !superblock_crc_ok(&sb) {
        return Err(unsupported("the superblock fails its CRC"));
    }
    let inodesize = usize::from(be16(&sb, SB_INODESIZE));
    let inopblog = u64::from(sb[SB_INOPBLOG]);
    if !(256..=2048).contains(&inodesize)
        || inopblog > 8
        || (inodesize as u64) << inopblog != g.blocksize
    {
        return Err(unsupported(format!(
            "inodes of {inodesize} bytes, {} per block",
            1u64 << inopblog.min(63)
        )));
    }
    let mut inodes = Vec::new();
    for field in [SB_ROOTINO, SB_RBMINO, SB_RSUMINO] {
        let ino = be64(&sb, field);
        let agino_bits = g.agblklog + inopblog;
        let ag = ino >> agino_bits;
        let agino = ino & ((1u64 << agino_bits) - 1);
        let offset = g
            .ag_offset(ag)?
            .checked_add(
                ((agino >> inopblog) * g.blocksize)
                    + (agino & ((1 << inopblog) - 1)) * inodesize as u64,
            )
            .ok_or_else(|| unsupported(format!("inode {ino} lies beyond 2^64 bytes")))?;
        let mut inode = vec![0u8; inodesize];
        read_at(dev, offset, &mut inode, "reading an inode")?;
        if &inode[..2] != DI_MAGIC || inode[DI_VERSION] != 3 || be64(&inode, DI_INO) != ino {
            return Err(unsupported(format!("inode {ino} is not a version 3 inode")));
        }
        if !crc_ok(&inode, DI_CRC) {
            return Err(unsupported(format!("inode {ino} fails its CRC")));
        }
        inodes.push((offset, inode));
    }
    for (offset, inode) in &mut inodes {
        let stamp = if be64(inode, DI_FLAGS2) & DIFLAG2_BIGTIME != 0 {
            seconds
                .checked_add(BIGTIME_EPOCH_OFFSET)
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| s.checked_mul(1_000_000_000))
                .ok_or_else(|| unsupported(format!("the time {seconds} s")))?
                .to_be_bytes()
        } else {
            let s = i32::try_from(seconds)
                .map_err(|_| unsupported(format!("the time {seconds} s before bigtime")))?;
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&s.to_be_bytes());
            b
        };
        for at in [DI_ATIME, DI_MTIME, DI_CTIME, DI_CRTIME] {
            inode[at..at + 8].copy_from_slice(&stamp);
        }
        set_crc(inode, DI_CRC);
        write_at(dev, *offset, inode, "writing an inode")?;
    }
    flush(dev)?;
    Ok(u32::try_from(inodes.len()).unwrap_or(u32::MAX))
}

/// Minimal xfs shapes for tests: superblocks and log records, no more.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A minimal v5 superblock of `agcount` groups of `agblocks` 4 KiB
    /// blocks, with a 16-block log in group 0 at block 8.
    pub(crate) fn image(agcount: u32, agblocks: u32, uuid: [u8; 16]) -> Vec<u8> {
        let blocksize = 4096u32;
        let mut img = vec![0u8; (agcount * agblocks * blocksize) as usize];
        for ag in 0..agcount {
            let at = (ag * agblocks * blocksize) as usize;
            let sb = &mut img[at..at + 512];
            sb[..4].copy_from_slice(SB_MAGIC);
            sb[SB_BLOCKSIZE..SB_BLOCKSIZE + 4].copy_from_slice(&blocksize.to_be_bytes());
            sb[SB_UUID..SB_UUID + 16].copy_from_slice(&uuid);
            sb[SB_LOGSTART..SB_LOGSTART + 8].copy_from_slice(&8u64.to_be_bytes());
            sb[SB_AGBLOCKS..SB_AGBLOCKS + 4].copy_from_slice(&agblocks.to_be_bytes());
            sb[SB_AGCOUNT..SB_AGCOUNT + 4].copy_from_slice(&agcount.to_be_bytes());
            sb[SB_LOGBLOCKS..SB_LOGBLOCKS + 4].copy_from_slice(&16u32.to_be_bytes());
            sb[SB_VERSIONNUM..SB_VERSIONNUM + 2].copy_from_slice(&0xb4a5u16.to_be_bytes());
            sb[SB_SECTSIZE..SB_SECTSIZE + 2].copy_from_slice(&512u16.to_be_bytes());
            sb[SB_AGBLKLOG] = 6;
            set_crc(sb, SB_CRC);
        }
        img
    }

    /// `len` bytes of record data filled with `fill`, whose first
    /// operation header says unmount.
    pub(crate) fn unmount_data(len: usize, fill: u8) -> Vec<u8> {
        let mut data = vec![fill; len];
        data[9] = XLOG_UNMOUNT_TRANS;
        data
    }

    /// A version 2 log record at `at` (bytes into the log) with `data`;
    /// a later `at` is a later LSN.
    pub(crate) fn put_record(
        img: &mut [u8],
        at: usize,
        uuid: [u8; 16],
        data: &[u8],
        with_crc: bool,
    ) {
        let log = 8 * 4096;
        let h = &mut img[log + at..log + at + 512];
        h[..4].copy_from_slice(&LOG_MAGIC);
        h[4..8].copy_from_slice(&1u32.to_be_bytes());
        h[LR_VERSION..LR_VERSION + 4].copy_from_slice(&2u32.to_be_bytes());
        h[LR_LEN..LR_LEN + 4].copy_from_slice(&(data.len() as u32).to_be_bytes());
        h[LR_FS_UUID..LR_FS_UUID + 16].copy_from_slice(&uuid);
        h[LR_SIZE..LR_SIZE + 4].copy_from_slice(&32768u32.to_be_bytes());
        // LSN: cycle 1, this block; one operation.
        let lsn = (1u64 << 32) | (at as u64 / 512);
        h[LR_LSN..LR_LSN + 8].copy_from_slice(&lsn.to_be_bytes());
        h[LR_NUM_LOGOPS..LR_NUM_LOGOPS + 4].copy_from_slice(&1u32.to_be_bytes());
        let d = log + at + 512;
        img[d..d + data.len()].copy_from_slice(data);
        if with_crc {
            let h = &img[log + at..log + at + 512];
            let mut digest = crc_without_field(&h[..REC_HEADER_CRC_LEN], LR_CRC);
            digest.update(data);
            let crc = digest.finalize();
            img[log + at + LR_CRC..log + at + LR_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{image, put_record, unmount_data};
    use super::*;
    use std::io::Cursor;

    #[test]
    fn every_superblock_and_log_header_gets_the_new_uuid() {
        let old = [0x11; 16];
        let new = [0x22; 16];
        let mut img = image(3, 64, old);
        // As mkfs writes it: no CRC.
        put_record(&mut img, 0, old, &unmount_data(512, 0), false);
        // A torn record: its CRC is wrong and must stay wrong.
        put_record(&mut img, 1024, old, &unmount_data(512, 9), true);
        img[8 * 4096 + 1024 + 512] ^= 0xff;
        let torn_crc = stored_crc(&img[8 * 4096 + 1024..], LR_CRC);
        // The head: a kernel's unmount record, with its CRC.
        let head_data = unmount_data(1024, 7);
        put_record(&mut img, 4096, old, &head_data, true);

        let mut dev = Cursor::new(img);
        let change = set_uuid(&mut dev, new).expect("set_uuid");
        assert_eq!(
            change,
            UuidChange {
                old,
                superblocks: 3,
                log_records: 3
            }
        );
        let img = dev.into_inner();
        for ag in 0..3 {
            let sb = &img[ag * 64 * 4096..ag * 64 * 4096 + 512];
            assert_eq!(uuid_at(sb, SB_UUID), new, "group {ag}");
            assert_eq!(uuid_at(sb, SB_META_UUID), old, "group {ag}");
            assert_eq!(
                be32(sb, SB_FEATURES_INCOMPAT) & INCOMPAT_META_UUID,
                INCOMPAT_META_UUID
            );
            assert!(superblock_crc_ok(sb), "group {ag}");
        }
        let log = 8 * 4096;
        let h0 = &img[log..log + 512];
        assert_eq!(uuid_at(h0, LR_FS_UUID), new);
        assert_eq!(stored_crc(h0, LR_CRC), 0, "mkfs's unset CRC stays unset");
        let h1 = &img[log + 4096..log + 4096 + 512];
        assert_eq!(uuid_at(h1, LR_FS_UUID), new);
        assert_eq!(
            stored_crc(h1, LR_CRC),
            record_crc(&h1[..REC_HEADER_CRC_LEN], &head_data),
            "the CRC follows"
        );
        let h2 = &img[log + 1024..log + 1024 + 512];
        assert_eq!(uuid_at(h2, LR_FS_UUID), new);
        assert_eq!(stored_crc(h2, LR_CRC), torn_crc);

        // Again, back to the first UUID: the metadata's own, so the
        // feature goes off.
        let mut dev = Cursor::new(img);
        let change = set_uuid(&mut dev, old).expect("set_uuid back");
        assert_eq!(change.old, new);
        let img = dev.into_inner();
        assert_eq!(uuid_at(&img, SB_UUID), old);
        assert_eq!(be32(&img, SB_FEATURES_INCOMPAT) & INCOMPAT_META_UUID, 0);
        assert_eq!(uuid_at(&img, SB_META_UUID), [0; 16], "as mkfs leaves it");
        assert!(superblock_crc_ok(&img[..512]));
    }

    /// A record Linux 6.18 wrote (an unmount record, read off a loop
    /// mount): the CRC computed here is the kernel's.
    #[test]
    fn the_record_crc_is_the_kernels() {
        let hex = "feedbabe000000010000000200000200000000010000000c00000001\
                   0000000a5eec01e80000000a00000001f296fb5d";
        let mut header = [0u8; 512];
        for (i, byte) in header[..48].iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
        }
        header[300..304].copy_from_slice(&1u32.to_be_bytes());
        header[LR_FS_UUID..LR_FS_UUID + 16].copy_from_slice(&[
            0x98, 0x8d, 0x75, 0xb0, 0x17, 0xb0, 0x41, 0xe1, 0x92, 0x9e, 0x89, 0xcd, 0x78, 0x78,
            0x3d, 0x93,
        ]);
        header[LR_SIZE..LR_SIZE + 4].copy_from_slice(&32768u32.to_be_bytes());
        let mut data = [0u8; 512];
        for (at, byte) in [(3, 1), (8, 0xaa), (9, 0x20), (12, 0x6e), (13, 0x55)] {
            data[at] = byte;
        }
        assert_eq!(stored_crc(&header, LR_CRC), 0xe801_ec5e);
        assert_eq!(
            record_crc(&header[..REC_HEADER_CRC_LEN], &data),
            0xe801_ec5e
        );
        assert_eq!(data_len(&header), Some(512));
        assert_eq!(header_blocks(&header), 1);

        // As the log's head it reads as clean.
        let mut log = vec![0u8; 16 * 4096];
        log[..512].copy_from_slice(&header);
        log[512..1024].copy_from_slice(&data);
        let g = Geometry {
            blocksize: 4096,
            agblocks: 64,
            agcount: 1,
            agblklog: 6,
            logstart: 0,
            logblocks: 16,
            sectsize: 512,
            uuid: uuid_at(&header, LR_FS_UUID),
        };
        assert!(is_unmount_record(&mut Cursor::new(log), &g, 0, 0, &header).expect("read"));
    }

    #[test]
    fn refuses_what_it_cannot_change_and_writes_nothing() {
        let old = [0x11; 16];
        let mut img = image(2, 64, old);
        // A damaged secondary superblock.
        img[64 * 4096 + 200] ^= 1;
        let before = img.clone();
        let mut dev = Cursor::new(img);
        let err = set_uuid(&mut dev, [0x22; 16]).expect_err("damaged");
        assert!(err.to_string().contains("allocation group 1"), "{err}");
        assert_eq!(dev.into_inner(), before, "nothing written");

        let mut v4 = image(1, 64, old);
        v4[SB_VERSIONNUM..SB_VERSIONNUM + 2].copy_from_slice(&0x34a4u16.to_be_bytes());
        let err = set_uuid(&mut Cursor::new(v4), [0x22; 16]).expect_err("v4");
        assert!(err.to_string().contains("version 4"), "{err}");

        let err = set_uuid(&mut Cursor::new(vec![0u8; 4096]), [0x22; 16]).expect_err("zeros");
        assert!(err.to_string().contains("no xfs superblock"), "{err}");

        // A dirty log: its last record is a transaction, not an unmount.
        let mut dirty = image(1, 64, old);
        put_record(&mut dirty, 0, old, &unmount_data(512, 0), false);
        put_record(&mut dirty, 1024, old, &[0u8; 512], true);
        let before = dirty.clone();
        let mut dev = Cursor::new(dirty);
        let err = set_uuid(&mut dev, [0x22; 16]).expect_err("dirty");
        assert!(err.to_string().contains("the log is dirty"), "{err}");
        assert_eq!(dev.into_inner(), before, "nothing written");

        // Needs repair.
        let mut broken = image(1, 64, old);
        put_record(&mut broken, 0, old, &unmount_data(512, 0), false);
        broken[SB_FEATURES_INCOMPAT + 3] |= 1 << 4;
        let crc = crc_without_field(&broken[..512], SB_CRC).finalize();
        broken[SB_CRC..SB_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        let err = set_uuid(&mut Cursor::new(broken), [0x22; 16]).expect_err("needs repair");
        assert!(err.to_string().contains("xfs_repair"), "{err}");
    }
}
