//! Growing a mounted xfs filesystem to fill its partition, as `xfs_growfs`
//! does, with the two ioctls it uses: the installer writes EPHEMERAL from
//! a small template (a few hundred MiB) whatever the disk's size, and
//! machined grows it at boot, in Rust, since the node has no xfsprogs.
//!
//! [`plan_growth`] decides (pure, tested); [`grow_to_fill`] asks the
//! kernel. The ioctls take the mounted filesystem's directory as their
//! file descriptor, and growing needs `CAP_SYS_ADMIN`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::ioctl::{Getter, Opcode, Setter, ioctl, opcode};

/// `struct xfs_fsop_geom` (version 5, 256 bytes), what
/// `XFS_IOC_FSGEOMETRY` fills in (xfsprogs `libxfs/xfs_fs.h`). Newer
/// kernels carve fields out of `reserved`; the ones read here never move.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Filesystem (data) block size in bytes.
    pub blocksize: u32,
    /// Realtime extent size.
    pub rtextsize: u32,
    /// Blocks per allocation group.
    pub agblocks: u32,
    /// Number of allocation groups.
    pub agcount: u32,
    /// Blocks in the log.
    pub logblocks: u32,
    /// Data sector size in bytes.
    pub sectsize: u32,
    /// Inode size in bytes.
    pub inodesize: u32,
    /// The most space inodes may take, in percent.
    pub imaxpct: u32,
    /// Blocks in the data section: the filesystem's size.
    pub datablocks: u64,
    /// Blocks in the realtime section.
    pub rtblocks: u64,
    /// Extents in the realtime section.
    pub rtextents: u64,
    /// The log's first block.
    pub logstart: u64,
    /// The filesystem UUID.
    pub uuid: [u8; 16],
    /// Stripe unit, blocks.
    pub sunit: u32,
    /// Stripe width, blocks.
    pub swidth: u32,
    /// Structure version.
    pub version: i32,
    /// Superblock feature flags.
    pub flags: u32,
    /// Log sector size in bytes.
    pub logsectsize: u32,
    /// Realtime sector size in bytes.
    pub rtsectsize: u32,
    /// Directory block size in bytes.
    pub dirblocksize: u32,
    /// Log stripe unit in bytes.
    pub logsunit: u32,
    /// Unhealthy metadata.
    pub sick: u32,
    /// Checked metadata.
    pub checked: u32,
    /// Reserved (and newer kernels' fields).
    pub reserved: [u64; 17],
}

impl Geometry {
    /// The data section's size in bytes.
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.datablocks * u64::from(self.blocksize)
    }
}

/// `struct xfs_growfs_data`, the argument of `XFS_IOC_FSGROWFSDATA`. The
/// C struct has 4 bytes of tail padding; they are spelled out so the
/// kernel copies no uninitialised bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowfsData {
    /// The new data section size, in filesystem blocks.
    pub newblocks: u64,
    /// The inode space limit, percent (pass the current one to keep it).
    pub imaxpct: u32,
    /// Tail padding, zero.
    pub pad: u32,
}

/// `XFS_IOC_FSGEOMETRY`: `_IOR('X', 126, struct xfs_fsop_geom)`.
pub const XFS_IOC_FSGEOMETRY: Opcode = opcode::read::<Geometry>(b'X', 126);

/// `XFS_IOC_FSGROWFSDATA`: `_IOW('X', 110, struct xfs_growfs_data)`.
pub const XFS_IOC_FSGROWFSDATA: Opcode = opcode::write::<GrowfsData>(b'X', 110);

/// The least growth worth doing: the smallest allocation group mkfs.xfs
/// makes (`XFS_MIN_AG_BYTES`, 16 MiB). Less would add an allocation group
/// too small to be useful (the kernel drops a tail under 64 blocks
/// anyway), and the check at every boot would keep finding a few sectors.
pub const MIN_GROWTH_BYTES: u64 = 16 * 1024 * 1024;

/// Growing failed.
#[derive(Debug, thiserror::Error)]
pub enum XfsError {
    /// Opening the mountpoint or an ioctl on it failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The mountpoint.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The kernel reported a geometry that makes no sense (a zero block
    /// size): not an xfs filesystem after all.
    #[error("{path}: the filesystem reports a block size of 0")]
    BadGeometry {
        /// The mountpoint.
        path: PathBuf,
    },
}

/// The new data block count when a device of `device_bytes` has room for
/// at least [`MIN_GROWTH_BYTES`] more than the filesystem of `geometry`;
/// `None` otherwise (never shrinks).
#[must_use]
pub fn plan_growth(geometry: &Geometry, device_bytes: u64) -> Option<u64> {
    if geometry.blocksize == 0 {
        return None;
    }
    let newblocks = device_bytes / u64::from(geometry.blocksize);
    let extra = newblocks.checked_sub(geometry.datablocks)?;
    (extra * u64::from(geometry.blocksize) >= MIN_GROWTH_BYTES).then_some(newblocks)
}

fn open_mountpoint(mountpoint: &Path) -> Result<File, XfsError> {
    File::open(mountpoint).map_err(|source| XfsError::Io {
        operation: "opening the mountpoint",
        path: mountpoint.to_path_buf(),
        source,
    })
}

/// The geometry of the xfs filesystem mounted on `mountpoint`.
///
/// # Errors
/// [`XfsError::Io`]: not a mountpoint of xfs (`ENOTTY`), or no such path.
pub fn geometry(mountpoint: &Path) -> Result<Geometry, XfsError> {
    let dir = open_mountpoint(mountpoint)?;
    fs_geometry(&dir).map_err(|e| XfsError::Io {
        operation: "reading the xfs geometry (XFS_IOC_FSGEOMETRY) of",
        path: mountpoint.to_path_buf(),
        source: e.into(),
    })
}

#[allow(unsafe_code)]
fn fs_geometry(dir: &File) -> rustix::io::Result<Geometry> {
    // SAFETY: XFS_IOC_FSGEOMETRY writes exactly one `struct
    // xfs_fsop_geom` (256 bytes, the size encoded in the opcode) into the
    // buffer; `Geometry` has that C layout (checked by the tests) and any
    // bit pattern is a valid value of it. On another filesystem the ioctl
    // fails with ENOTTY and nothing is read.
    unsafe {
        let op = Getter::<XFS_IOC_FSGEOMETRY, Geometry>::new();
        ioctl(dir, op)
    }
}

#[allow(unsafe_code)]
fn fs_grow_data(dir: &File, arg: GrowfsData) -> rustix::io::Result<()> {
    // SAFETY: XFS_IOC_FSGROWFSDATA reads one `struct xfs_growfs_data` (16
    // bytes on 64-bit, the size encoded in the opcode) from the pointer
    // rustix passes, which points at `arg`, of that C layout with its
    // padding initialised; the kernel writes nothing back.
    unsafe {
        let op = Setter::<XFS_IOC_FSGROWFSDATA, GrowfsData>::new(arg);
        ioctl(dir, op)
    }
}

/// Grows the xfs filesystem mounted on `mountpoint` to fill a device of
/// `device_bytes` (its partition's size, [`crate::target::device_size`]),
/// when [`plan_growth`] says it is worth it. Returns the data section's
/// size before and after, or `None` when nothing was done. Blocks while
/// the kernel writes the new allocation groups' headers (quick: a few
/// sectors per group).
///
/// # Errors
/// [`XfsError`] naming the mountpoint and the ioctl.
pub fn grow_to_fill(mountpoint: &Path, device_bytes: u64) -> Result<Option<(u64, u64)>, XfsError> {
    let dir = open_mountpoint(mountpoint)?;
    let io = |operation| {
        move |e: rustix::io::Errno| XfsError::Io {
            operation,
            path: mountpoint.to_path_buf(),
            source: e.into(),
        }
    };
    let before =
        fs_geometry(&dir).map_err(io("reading the xfs geometry (XFS_IOC_FSGEOMETRY) of"))?;
    if before.blocksize == 0 {
        return Err(XfsError::BadGeometry {
            path: mountpoint.to_path_buf(),
        });
    }
    let Some(newblocks) = plan_growth(&before, device_bytes) else {
        return Ok(None);
    };
    fs_grow_data(
        &dir,
        GrowfsData {
            newblocks,
            imaxpct: before.imaxpct,
            pad: 0,
        },
    )
    .map_err(io("growing the xfs filesystem (XFS_IOC_FSGROWFSDATA) on"))?;
    let after =
        fs_geometry(&dir).map_err(io("reading the xfs geometry (XFS_IOC_FSGEOMETRY) of"))?;
    Ok(Some((before.data_bytes(), after.data_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    const MIB: u64 = 1024 * 1024;

    fn geometry_of(blocksize: u32, datablocks: u64) -> Geometry {
        Geometry {
            blocksize,
            rtextsize: 1,
            agblocks: 19200,
            agcount: 4,
            logblocks: 2560,
            sectsize: 512,
            inodesize: 512,
            imaxpct: 25,
            datablocks,
            rtblocks: 0,
            rtextents: 0,
            logstart: 0,
            uuid: [0; 16],
            sunit: 0,
            swidth: 0,
            version: 5,
            flags: 0,
            logsectsize: 512,
            rtsectsize: 512,
            dirblocksize: 4096,
            logsunit: 1,
            sick: 0,
            checked: 0,
            reserved: [0; 17],
        }
    }

    #[test]
    fn struct_layouts_match_the_c_headers() {
        assert_eq!(size_of::<Geometry>(), 256);
        assert_eq!(offset_of!(Geometry, imaxpct), 28);
        assert_eq!(offset_of!(Geometry, datablocks), 32);
        assert_eq!(offset_of!(Geometry, uuid), 64);
        assert_eq!(offset_of!(Geometry, logsunit), 108);
        assert_eq!(offset_of!(Geometry, reserved), 120);
        assert_eq!(size_of::<GrowfsData>(), 16);
        assert_eq!(offset_of!(GrowfsData, imaxpct), 8);
    }

    #[test]
    fn ioctl_numbers() {
        // _IOR: direction 2 in bits 30-31, size in 16-29, 'X' = 0x58.
        assert_eq!(XFS_IOC_FSGEOMETRY, 0x8100_587E);
        // _IOW: direction 1.
        assert_eq!(XFS_IOC_FSGROWFSDATA, 0x4010_586E);
    }

    #[test]
    fn grows_only_by_a_worthwhile_amount() {
        // A 300 MiB template in a 20 GiB partition.
        let g = geometry_of(4096, 300 * MIB / 4096);
        assert_eq!(g.data_bytes(), 300 * MIB);
        let device = 20 * 1024 * MIB;
        assert_eq!(plan_growth(&g, device), Some(device / 4096));
        // A partial block at the end is not used.
        assert_eq!(plan_growth(&g, device + 1000), Some(device / 4096));
        // Exactly the threshold grows; a block less does not.
        let at = 300 * MIB + MIN_GROWTH_BYTES;
        assert_eq!(plan_growth(&g, at), Some(at / 4096));
        assert_eq!(plan_growth(&g, at - 4096), None);
        // Already the partition's size, or a smaller device: nothing.
        assert_eq!(plan_growth(&g, 300 * MIB), None);
        assert_eq!(plan_growth(&g, 100 * MIB), None);
        // A zero block size never divides.
        assert_eq!(plan_growth(&geometry_of(0, 0), device), None);
    }

    #[test]
    fn not_xfs_is_an_error_naming_the_path() {
        // procfs is never xfs: the ioctl is unknown there.
        let err = geometry(Path::new("/proc")).expect_err("not xfs");
        assert!(err.to_string().contains("XFS_IOC_FSGEOMETRY"), "{err}");
        assert!(err.to_string().contains("/proc"), "{err}");
        let err = grow_to_fill(Path::new("/proc"), 1 << 30).expect_err("not xfs");
        assert!(matches!(err, XfsError::Io { .. }), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = grow_to_fill(&dir.path().join("missing"), 1 << 30).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
