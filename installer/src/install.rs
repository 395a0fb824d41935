//! A whole disk in the installed layout ([`crate::layout`]), from the
//! files of a verified installer image. The same code makes
//! `metal-amd64.raw` on the build host (an image file) and installs
//! `/dev/vda` from maintenance mode on the node, where there are no tools:
//! the GPT, META, the xfs filesystems (from templates) and the vfat ESP
//! (`fatfs`) are all written here.
//!
//! # Order
//!
//! A crash midway must never leave a disk that boots something half
//! written, so the ESP, which makes the disk bootable, comes last:
//!
//! 1. the old tables (first and last MiB) and the whole ESP range are
//!    zeroed, so a previous install's loader cannot boot any more, and
//!    the new GPT is written;
//! 2. META: an empty store;
//! 3. STATE and EPHEMERAL from their templates; everything is synced;
//! 4. the ESP: formatted, systemd-boot, `loader.conf`, slot A's kernel
//!    and initramfs, synced; then, last, slot A's loader entry. Without
//!    the entry systemd-boot boots nothing (`auto-entries no`).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use machinery::endian::{le16, le32};

use crate::entries::{self, Slot};
use crate::files;
use crate::layout::{self, LayoutError, Plan};
use crate::sparse::{self, SparseError};
use crate::target::{Disk, TargetError};
use crate::xfs_uuid::{self, XfsUuidError};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The file next to the image's files that names what they are.
pub const IMAGE_INFO: &str = "image.json";

/// The ESP's volume label, as FAT stores it (11 bytes, space padded).
const ESP_VOLUME_LABEL: [u8; 11] = *b"EFI        ";

/// Installing failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// An input file could not be opened or read.
    #[error("{operation} {path}: {source}")]
    Input {
        /// What was being done.
        operation: &'static str,
        /// The input file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `image.json` is not what the installer image writes.
    #[error("{path}: {reason}")]
    ImageInfo {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The disk could not be opened, written or synced.
    #[error("{step}: {source}")]
    Disk {
        /// The install step.
        step: &'static str,
        /// The cause, naming the disk.
        source: TargetError,
    },
    /// The layout does not fit the disk, or the table could not be
    /// written.
    #[error("partitioning {path}: {source}")]
    Layout {
        /// The disk.
        path: PathBuf,
        /// The cause.
        source: LayoutError,
    },
    /// A filesystem template is unusable or could not be written.
    #[error("writing {partition} from {template}: {source}")]
    Template {
        /// The partition.
        partition: &'static str,
        /// The template file.
        template: PathBuf,
        /// The cause.
        source: SparseError,
    },
    /// A filesystem written from its template could not be given its
    /// own UUID.
    #[error("giving {partition} a new filesystem UUID: {source}")]
    Uuid {
        /// The partition.
        partition: &'static str,
        /// The cause.
        source: XfsUuidError,
    },
    /// Making or filling the ESP failed.
    #[error("writing the ESP on {disk}, {operation}: {source}")]
    Esp {
        /// The disk.
        disk: PathBuf,
        /// The step, with the file on the ESP.
        operation: String,
        /// The cause.
        source: io::Error,
    },
}

/// What goes on the disk: the files of an installer image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallInputs {
    /// The kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// systemd-boot's EFI binary.
    pub systemd_boot: PathBuf,
    /// The STATE filesystem template ([`crate::sparse`] encoding).
    pub state_template: PathBuf,
    /// The EPHEMERAL filesystem template, usually smaller than its
    /// partition (machined grows it at boot).
    pub ephemeral_template: PathBuf,
    /// The OS version (the loader entry's title and version).
    pub version: String,
    /// `None`: random GUIDs and new filesystem UUIDs for STATE and
    /// EPHEMERAL (a real install). `Some(seed)`: GUIDs derived from the
    /// seed and the templates' filesystem UUIDs kept, so the same inputs
    /// give the same bytes (the imager).
    pub guid_seed: Option<u64>,
}

impl InstallInputs {
    /// The inputs as named in an installer image's directory `from`
    /// ([`crate::files`]), with random GUIDs.
    #[must_use]
    pub fn from_dir(from: &Path, version: String) -> InstallInputs {
        InstallInputs {
            vmlinuz: from.join(files::VMLINUZ),
            initramfs: from.join(files::INITRAMFS),
            systemd_boot: from.join(files::SYSTEMD_BOOT),
            state_template: from.join(files::STATE_TEMPLATE),
            ephemeral_template: from.join(files::EPHEMERAL_TEMPLATE),
            version,
            guid_seed: None,
        }
    }
}

#[derive(serde::Deserialize)]
struct ImageInfo {
    version: String,
}

/// The version in `from/image.json` (`{"version": ..., ...}`), which the
/// installer image carries next to its files.
///
/// # Errors
/// [`InstallError::Input`] when it cannot be read,
/// [`InstallError::ImageInfo`] when it is not JSON with a non-empty
/// `version`.
pub fn image_version(from: &Path) -> Result<String, InstallError> {
    let path = from.join(IMAGE_INFO);
    let text = std::fs::read(&path).map_err(|source| InstallError::Input {
        operation: "reading",
        path: path.clone(),
        source,
    })?;
    let info: ImageInfo = serde_json::from_slice(&text).map_err(|e| InstallError::ImageInfo {
        path: path.clone(),
        reason: format!("not an image description: {e}"),
    })?;
    let version = info.version.trim();
    if version.is_empty() || version.contains(['\n', '\r']) {
        return Err(InstallError::ImageInfo {
            path,
            reason: format!("unusable version {:?}", info.version),
        });
    }
    Ok(version.to_owned())
}

/// How much of a partition must read as zeros for [`format_blank`] to
/// take it as blank: what a wipe clears (`crate::wipe::FAST_RANGE`).
pub const BLANK_PROBE: u64 = crate::wipe::FAST_RANGE;

/// Writes the filesystem `template` (one of an installer image's) onto
/// the partition `partition` (`STATE` or `EPHEMERAL`) at `device`, with a
/// UUID of its own, if the partition is blank: its first
/// [`BLANK_PROBE`] bytes all zero, as a wipe leaves them. Returns whether
/// it did; a partition holding anything is left alone.
///
/// For an installation whose STATE or EPHEMERAL was wiped (a reset): the
/// node formats them again at boot, as at install.
///
/// # Errors
/// The device cannot be opened (exclusively), read or written, or the
/// template is unusable. A failure while writing leaves the partition
/// partly written (not blank, so a later boot leaves it alone).
pub fn format_blank(
    device: &Path,
    partition: &'static str,
    template: &Path,
) -> Result<bool, InstallError> {
    let disk_err = |step| move |source| InstallError::Disk { step, source };
    let disk = Disk::open(device).map_err(disk_err("opening the partition"))?;
    let mut head = vec![0u8; usize::try_from(BLANK_PROBE.min(disk.size())).unwrap_or(0)];
    disk.read_at(&mut head, 0)
        .map_err(disk_err("reading the partition"))?;
    if head.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    let encoded = File::open(template).map_err(|source| InstallError::Input {
        operation: "opening the filesystem template",
        path: template.to_path_buf(),
        source,
    })?;
    let mut part = disk
        .partition(0, disk.size())
        .map_err(disk_err("opening the partition"))?;
    write_filesystem(&mut part, partition, encoded, template, true)?;
    disk.sync().map_err(disk_err("syncing the partition"))?;
    Ok(true)
}

/// Writes the sparse filesystem template `encoded` (read from
/// `template_path`) onto `part`, the partition named `partition`, and with
/// `own_uuid` gives the filesystem a new random UUID.
fn write_filesystem(
    part: &mut crate::target::Partition<'_>,
    partition: &'static str,
    encoded: impl Read,
    template_path: &Path,
    own_uuid: bool,
) -> Result<(), InstallError> {
    sparse::apply(BufReader::new(encoded), part).map_err(|source| InstallError::Template {
        partition,
        template: template_path.to_path_buf(),
        source,
    })?;
    if own_uuid {
        xfs_uuid::set_uuid(part, *uuid::Uuid::new_v4().as_bytes())
            .map_err(|source| InstallError::Uuid { partition, source })?;
    }
    Ok(())
}

/// Installs the installer image unpacked (and verified) in `from` onto
/// `disk` (a block device, or an image file of the disk's size): random
/// GUIDs, the version from `image.json`. `progress` gets one line per
/// step.
///
/// # Errors
/// As [`install`], and [`InstallError::Input`] /
/// [`InstallError::ImageInfo`] for `image.json`.
pub fn install_from_dir(
    from: &Path,
    disk: &Path,
    progress: &mut dyn FnMut(String),
) -> Result<(), InstallError> {
    let version = image_version(from)?;
    let inputs = InstallInputs::from_dir(from, version);
    let mut disk = Disk::open(disk).map_err(|source| InstallError::Disk {
        step: "opening the disk",
        source,
    })?;
    install(&mut disk, &inputs, progress).map(|_| ())
}

fn open_input(path: &Path) -> Result<File, InstallError> {
    File::open(path).map_err(|source| InstallError::Input {
        operation: "opening",
        path: path.to_path_buf(),
        source,
    })
}

/// A template, opened, with the length of the image it holds.
fn open_template(
    partition: &'static str,
    path: &Path,
    partition_bytes: u64,
) -> Result<File, InstallError> {
    let template_err = |source| InstallError::Template {
        partition,
        template: path.to_path_buf(),
        source,
    };
    let mut file = open_input(path)?;
    let total = sparse::total_len(BufReader::new(&file)).map_err(template_err)?;
    if total > partition_bytes {
        return Err(template_err(SparseError::TooLarge {
            total,
            range: partition_bytes,
        }));
    }
    file.rewind().map_err(|source| InstallError::Input {
        operation: "rewinding",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file)
}

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// Writes the installed layout onto `disk`: partition table, META, STATE
/// and EPHEMERAL from their templates, and the ESP with systemd-boot and
/// `inputs`' kernel and initramfs as slot A, preferred and known good.
/// Everything on the disk is lost. Every input is opened (and the
/// templates' sizes checked) before the disk is touched. Blocks; returns
/// the partition plan.
///
/// # Errors
/// [`InstallError`] naming the step and the file or disk. Once writing
/// has begun, the disk is left unbootable (the ESP comes last) but not in
/// its old state.
pub fn install(
    disk: &mut Disk,
    inputs: &InstallInputs,
    progress: &mut dyn FnMut(String),
) -> Result<Plan, InstallError> {
    let path = disk.path().to_path_buf();
    let layout_err = |source| InstallError::Layout {
        path: path.clone(),
        source,
    };
    let plan = match inputs.guid_seed {
        Some(seed) => layout::plan(disk.size(), &mut layout::seeded_guids(seed)),
        None => layout::plan(disk.size(), &mut layout::random_guid),
    }
    .map_err(layout_err)?;
    let place = |name: &str| {
        layout::partition_offset(&plan, name)
            .unwrap_or_else(|| unreachable!("{name} is in layout::LAYOUT"))
    };
    let (esp_at, esp_len) = place(layout::EFI);
    let (meta_at, meta_len) = place(layout::META);
    let (state_at, state_len) = place(layout::STATE);
    let (ephemeral_at, ephemeral_len) = place(layout::EPHEMERAL);

    // Everything is read from handles opened now: a missing or oversized
    // input fails before the disk is touched.
    let vmlinuz = open_input(&inputs.vmlinuz)?;
    let initramfs = open_input(&inputs.initramfs)?;
    let systemd_boot = open_input(&inputs.systemd_boot)?;
    let state = open_template(layout::STATE, &inputs.state_template, state_len)?;
    let ephemeral = open_template(layout::EPHEMERAL, &inputs.ephemeral_template, ephemeral_len)?;

    // 1. Tables.
    progress(format!(
        "partitioning {} ({})",
        path.display(),
        human(disk.size())
    ));
    let disk_err = |step| move |source| InstallError::Disk { step, source };
    let size = disk.size();
    disk.zero_range(0, MIB.min(size))
        .map_err(disk_err("clearing the old partition table"))?;
    disk.zero_range(size - MIB.min(size), MIB.min(size))
        .map_err(disk_err("clearing the old backup partition table"))?;
    // The whole ESP: an old install's loader must not boot with the new
    // partitions half written, and the new one starts from zeros.
    disk.zero_range(esp_at, esp_len)
        .map_err(disk_err("clearing the ESP"))?;
    layout::write_gpt_to(disk, &plan).map_err(layout_err)?;
    if let Err(e) = disk.reread_partitions() {
        // The install writes by offset on the whole disk and does not
        // need the partitions' device nodes; the next boot sees the table.
        progress(format!(
            "the kernel keeps the old partition table until reboot: {e}"
        ));
    }

    // 2. META.
    progress("writing META".to_owned());
    disk.zero_range(meta_at, meta_len)
        .map_err(disk_err("clearing META"))?;
    disk.write_at(&machinery::meta::Adv::new().encode_partition(), meta_at)
        .map_err(disk_err("writing META"))?;

    // 3. STATE and EPHEMERAL.
    for (name, template, template_path, at, len) in [
        (
            layout::STATE,
            state,
            &inputs.state_template,
            state_at,
            state_len,
        ),
        (
            layout::EPHEMERAL,
            ephemeral,
            &inputs.ephemeral_template,
            ephemeral_at,
            ephemeral_len,
        ),
    ] {
        progress(format!("writing {name} ({})", human(len)));
        let mut part = disk
            .partition(at, len)
            .map_err(disk_err("opening a partition"))?;
        // Every template carries the same UUID; a real install makes it
        // this node's own, as upstream's format at install time does. The
        // imager's seeded disk image keeps the template's, reproducibly.
        write_filesystem(
            &mut part,
            name,
            template,
            template_path,
            inputs.guid_seed.is_none(),
        )?;
    }
    disk.sync().map_err(disk_err("syncing the filesystems"))?;

    // 4. The ESP, its entry last.
    progress(format!("writing the ESP (slot {})", Slot::A));
    let esp_guid = plan.partitions[0].unique_guid;
    write_esp(
        disk,
        esp_at,
        esp_len,
        u32::from_le_bytes([esp_guid[0], esp_guid[1], esp_guid[2], esp_guid[3]]),
        EspFiles {
            systemd_boot,
            vmlinuz,
            initramfs,
            version: &inputs.version,
        },
    )?;
    disk.sync().map_err(disk_err("syncing the ESP"))?;
    progress(format!(
        "installed {} as slot {} on {}",
        inputs.version,
        Slot::A,
        path.display()
    ));
    Ok(plan)
}

struct EspFiles<'a> {
    systemd_boot: File,
    vmlinuz: File,
    initramfs: File,
    version: &'a str,
}

/// The timestamp of every file on the ESP: the DOS epoch, 1980-01-01
/// 00:00, a valid date (fatfs without a clock gives month and day 0,
/// which `fsck.fat` rejects), and the same on every build.
#[derive(Debug)]
struct DosEpoch;

impl fatfs::TimeProvider for DosEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static DOS_EPOCH: DosEpoch = DosEpoch;

/// Where a FAT32 volume's directory clusters are.
struct Fat32Geometry {
    data_start: u64,
    cluster_bytes: u64,
    root_cluster: u32,
}

impl Fat32Geometry {
    fn read(volume: &mut (impl Read + Seek)) -> io::Result<Fat32Geometry> {
        let mut boot = [0u8; 512];
        volume.seek(SeekFrom::Start(0))?;
        volume.read_exact(&mut boot)?;
        let bytes_per_sector = u64::from(le16(&boot, 11));
        let cluster_bytes = bytes_per_sector * u64::from(boot[13]);
        let fat_sectors = u64::from(le32(&boot, 36));
        let root_cluster = le32(&boot, 44);
        if cluster_bytes == 0 || fat_sectors == 0 || root_cluster < 2 {
            return Err(invalid("not a FAT32 boot sector"));
        }
        let data_start =
            (u64::from(le16(&boot, 14)) + u64::from(boot[16]) * fat_sectors) * bytes_per_sector;
        Ok(Fat32Geometry {
            data_start,
            cluster_bytes,
            root_cluster,
        })
    }

    fn cluster_at(&self, cluster: u32) -> u64 {
        self.data_start + u64::from(cluster - 2) * self.cluster_bytes
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
const LONG_NAME: u8 = 0x0F;
const DELETED: u8 = 0xE5;

/// Puts the directories of a fresh FAT32 volume made by fatfs 0.3 into
/// the shape the FAT specification (and `fsck.fat`) wants, which fatfs
/// misses in two ways:
///
/// - it gives `.` and `..` long-name entries, so they sit in slots 1 and
///   3 instead of 0 and 1: the long-name entries are marked deleted and
///   `.` and `..` moved up;
/// - the `..` of a directory in the root points at the root's cluster
///   instead of 0.
///
/// Only each directory's first cluster is looked at: run it right after
/// the directories are made, while each holds a few entries.
fn normalize_directories(volume: &mut (impl Read + Write + Seek)) -> io::Result<()> {
    let geometry = Fat32Geometry::read(volume)?;
    let mut cluster =
        vec![0u8; usize::try_from(geometry.cluster_bytes).map_err(|_| invalid("cluster size"))?];
    // (directory cluster, whether its parent is the root); the root first.
    let mut todo = vec![(geometry.root_cluster, None::<bool>)];
    while let Some((dir, parent_is_root)) = todo.pop() {
        let at = geometry.cluster_at(dir);
        volume.seek(SeekFrom::Start(at))?;
        volume.read_exact(&mut cluster)?;
        if let Some(parent_is_root) = parent_is_root {
            let slot = |i: usize| &cluster[i * 32..(i + 1) * 32];
            if slot(0)[11] == LONG_NAME
                && &slot(1)[..11] == DOT
                && slot(2)[11] == LONG_NAME
                && &slot(3)[..11] == DOTDOT
            {
                let (dot, dotdot) = (slot(1).to_vec(), slot(3).to_vec());
                cluster[..32].copy_from_slice(&dot);
                cluster[32..64].copy_from_slice(&dotdot);
                cluster[64] = DELETED;
                cluster[96] = DELETED;
            }
            if &cluster[..11] != DOT || &cluster[32..43] != DOTDOT {
                return Err(invalid("a directory that does not start with `.` and `..`"));
            }
            if parent_is_root {
                cluster[32 + 20..32 + 22].fill(0);
                cluster[32 + 26..32 + 28].fill(0);
            }
            volume.seek(SeekFrom::Start(at))?;
            volume.write_all(&cluster)?;
        }
        for entry in cluster.chunks_exact(32) {
            match entry[0] {
                0 => break,
                DELETED => continue,
                _ => {}
            }
            let attributes = entry[11];
            // Long-name parts and the volume label are no directories.
            if attributes == LONG_NAME || attributes & 0x08 != 0 || attributes & 0x10 == 0 {
                continue;
            }
            if &entry[..11] == DOT || &entry[..11] == DOTDOT {
                continue;
            }
            let child = (u32::from(le16(entry, 20)) << 16) | u32::from(le16(entry, 26));
            if child < 2 {
                return Err(invalid("a directory without a cluster"));
            }
            todo.push((child, Some(parent_is_root.is_none())));
        }
    }
    volume.flush()
}

/// Formats the ESP at `at` (FAT32, label `EFI`) and fills it; the loader
/// entry is written only once everything else is on the disk.
fn write_esp(
    disk: &Disk,
    at: u64,
    len: u64,
    volume_id: u32,
    files: EspFiles<'_>,
) -> Result<(), InstallError> {
    let esp_err = |operation: &str| {
        let disk = disk.path().to_path_buf();
        let operation = operation.to_owned();
        move |source| InstallError::Esp {
            disk,
            operation,
            source,
        }
    };
    let part = |step| {
        disk.partition(at, len)
            .map_err(|source| InstallError::Disk { step, source })
    };
    fatfs::format_volume(
        part("formatting the ESP")?,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_label(ESP_VOLUME_LABEL)
            .volume_id(volume_id),
    )
    .map_err(esp_err("formatting FAT32"))?;
    let mount = |step| {
        FileSystem::new(part(step)?, FsOptions::new().time_provider(&DOS_EPOCH))
            .map_err(esp_err("opening the new filesystem"))
    };
    let fs = mount("opening the ESP")?;
    for dir in ["EFI", "EFI/BOOT", "loader", entries::ENTRIES_DIR, "A", "B"] {
        fs.root_dir()
            .create_dir(dir)
            .map_err(esp_err(&format!("creating {dir}")))?;
    }
    fs.unmount().map_err(esp_err("unmounting"))?;
    normalize_directories(&mut part("fixing the ESP's directories")?)
        .map_err(esp_err("fixing the directories' `.` and `..` entries"))?;
    let fs = mount("opening the ESP")?;
    let root = fs.root_dir();
    let copy = |from: File, to: &str| -> Result<(), InstallError> {
        let mut out = root
            .create_file(to)
            .map_err(esp_err(&format!("creating {to}")))?;
        io::copy(&mut BufReader::with_capacity(1024 * 1024, from), &mut out)
            .map_err(esp_err(&format!("copying {to}")))?;
        out.flush().map_err(esp_err(&format!("writing {to}")))
    };
    let write = |text: String, to: &str| -> Result<(), InstallError> {
        let mut out = root
            .create_file(to)
            .map_err(esp_err(&format!("creating {to}")))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(esp_err(&format!("writing {to}")))
    };
    copy(files.systemd_boot, entries::BOOT_LOADER)?;
    write(entries::loader_conf(), entries::LOADER_CONF)?;
    copy(files.vmlinuz, &Slot::A.kernel_path())?;
    copy(files.initramfs, &Slot::A.initramfs_path())?;
    // fatfs writes through: everything above is in the disk's page cache;
    // make it durable before the entry that makes it bootable.
    disk.sync().map_err(|source| InstallError::Disk {
        step: "syncing the ESP",
        source,
    })?;
    write(
        entries::loader_entry(Slot::A, files.version, true),
        &format!(
            "{}/{}",
            entries::ENTRIES_DIR,
            entries::entry_file_name(Slot::A, None)
        ),
    )?;
    drop(root);
    fs.unmount().map_err(esp_err("unmounting"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_range(disk: &Disk, at: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let mut buf = vec![0u8; len];
        disk.read_at(&mut buf, at)?;
        Ok(buf)
    }

    /// Whether the image file `a` and `b` hold the same bytes (reads both).
    fn same_bytes(a: &Path, b: &Path) -> bool {
        let (Ok(fa), Ok(fb)) = (File::open(a), File::open(b)) else {
            return false;
        };
        let mut ra = BufReader::with_capacity(4 * 1024 * 1024, fa);
        let mut rb = BufReader::with_capacity(4 * 1024 * 1024, fb);
        let mut xa = vec![0u8; 1024 * 1024];
        let mut xb = vec![0u8; 1024 * 1024];
        loop {
            let na = read_full(&mut ra, &mut xa);
            let nb = read_full(&mut rb, &mut xb);
            if na != nb || xa[..na] != xb[..nb] {
                return false;
            }
            if na == 0 {
                return true;
            }
        }
    }

    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    }

    struct Fixture {
        dir: tempfile::TempDir,
        inputs: InstallInputs,
        state_image: Vec<u8>,
        ephemeral_image: Vec<u8>,
    }

    /// A fake "filesystem image": `len` bytes, zero but for the
    /// superblocks and a log record of a small xfs (all the install reads
    /// and changes of it), and a few bytes further on.
    fn fake_image(len: usize, uuid: [u8; 16]) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut fs = xfs_uuid::testing::image(2, 64, uuid);
        let unmount = xfs_uuid::testing::unmount_data(512, 0);
        xfs_uuid::testing::put_record(&mut fs, 0, uuid, &unmount, false);
        v[..fs.len()].copy_from_slice(&fs);
        v[len / 2..len / 2 + 4].copy_from_slice(b"half");
        v[len - 3..].copy_from_slice(b"end");
        v
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("image");
        std::fs::create_dir(&from).expect("mkdir");
        std::fs::write(from.join(files::VMLINUZ), b"MZ fake kernel".repeat(5000)).expect("w");
        std::fs::write(
            from.join(files::INITRAMFS),
            b"fake initramfs\n".repeat(3000),
        )
        .expect("w");
        std::fs::write(from.join(files::SYSTEMD_BOOT), b"MZ fake systemd-boot").expect("w");
        std::fs::write(
            from.join(IMAGE_INFO),
            br#"{"version": "v9.8.7", "manifest_digest": "sha256:abc"}"#,
        )
        .expect("w");
        let state_image = fake_image(3 * 1024 * 1024 + 17, [0x57; 16]);
        let ephemeral_image = fake_image(2 * 1024 * 1024, [0xe9; 16]);
        for (name, bytes) in [
            (files::STATE_TEMPLATE, &state_image),
            (files::EPHEMERAL_TEMPLATE, &ephemeral_image),
        ] {
            let raw = dir.path().join(format!("{name}.raw"));
            std::fs::write(&raw, bytes).expect("w");
            sparse::encode(&raw, &from.join(name)).expect("encode");
        }
        let inputs = InstallInputs::from_dir(&from, "v9.8.7".to_owned());
        Fixture {
            dir,
            inputs,
            state_image,
            ephemeral_image,
        }
    }

    #[test]
    fn a_blank_partition_is_formatted_and_one_holding_anything_is_not() {
        let f = fixture();
        let template = f.dir.path().join("image").join(files::STATE_TEMPLATE);
        let len = f.state_image.len() as u64 + 4096;
        let part = image_file(f.dir.path(), "state.part", len);
        assert!(format_blank(&part, layout::STATE, &template).expect("format"));
        let written = std::fs::read(&part).expect("read");
        // The template, with a UUID of its own.
        assert_ne!(written[32..48], [0x57; 16]);
        assert_eq!(
            &written[f.state_image.len() - 3..f.state_image.len()],
            b"end"
        );
        let before = written.clone();
        // Not blank now: left alone.
        assert!(!format_blank(&part, layout::STATE, &template).expect("second"));
        assert!(std::fs::read(&part).expect("read") == before);
        // One byte anywhere in the first MiB is enough to leave it alone.
        let other = image_file(f.dir.path(), "other.part", len);
        Disk::open(&other)
            .expect("open")
            .write_at(&[1], BLANK_PROBE - 1)
            .expect("write");
        assert!(!format_blank(&other, layout::STATE, &template).expect("not blank"));
        // A template larger than the partition is refused.
        let small = image_file(f.dir.path(), "small.part", 2 * 1024 * 1024);
        let err = format_blank(&small, layout::STATE, &template).expect_err("too small");
        assert!(matches!(err, InstallError::Template { .. }), "{err}");
    }

    fn image_file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let path = dir.join(name);
        Disk::create_image(&path, size).expect("image file");
        path
    }

    fn read_fat_file(fs: &FileSystem<crate::target::Partition<'_>>, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        fs.root_dir()
            .open_file(path)
            .unwrap_or_else(|e| panic!("{path} on the ESP: {e}"))
            .read_to_end(&mut out)
            .expect("read");
        out
    }

    fn utf16_name(entry: &[u8]) -> String {
        let units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        String::from_utf16(&units).expect("UTF-16")
    }

    #[test]
    fn installs_into_an_image_file_and_reads_back() {
        let f = fixture();
        let path = image_file(f.dir.path(), "disk.raw", 2 * GIB);
        // Leftovers of an earlier life: they must be gone.
        let old = Disk::open(&path).expect("open");
        old.write_at(b"old data", 10).expect("w");
        old.write_at(b"old backup", 2 * GIB - 100).expect("w");
        drop(old);

        let mut lines = Vec::new();
        install_from_dir(&f.dir.path().join("image"), &path, &mut |l| lines.push(l))
            .expect("install");
        assert!(
            lines[0].starts_with(&format!("partitioning {} (2.0 GiB)", path.display())),
            "{lines:?}"
        );
        for want in [
            "writing META",
            "writing STATE",
            "writing EPHEMERAL",
            "writing the ESP (slot A)",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "{want}: {lines:?}"
            );
        }
        assert!(lines.last().expect("lines").contains("v9.8.7"), "{lines:?}");

        let disk = Disk::open(&path).expect("open");
        // The GPT: the names and places the layout planned, with the
        // disk's size; the MBR and the old backup are overwritten.
        let primary = read_range(&disk, 0, 34 * 512).expect("read");
        assert_eq!(&primary[512..520], b"EFI PART");
        assert_eq!(primary[510..512], [0x55, 0xAA]);
        assert_eq!(&primary[10..18], &[0u8; 8], "old data gone");
        let names: Vec<String> = (0..4)
            .map(|i| utf16_name(&primary[1024 + i * 128..1024 + (i + 1) * 128]))
            .collect();
        assert_eq!(names, ["EFI", "META", "STATE", "EPHEMERAL"]);
        let backup = read_range(&disk, 2 * GIB - 512, 512).expect("read");
        assert_eq!(&backup[..8], b"EFI PART");
        // Re-planning with the partitions' own GUIDs gives the same table:
        // the offsets are the layout's.
        let mut guids = vec![primary[512 + 56..512 + 72].try_into().expect("16")];
        for i in 0..4 {
            let e = 1024 + i * 128;
            guids.push(primary[e + 16..e + 32].try_into().expect("16"));
        }
        let mut it = guids.into_iter();
        let plan = layout::plan(2 * GIB, &mut || it.next().expect("guid")).expect("plan");
        let (want_primary, want_backup) = layout::gpt_bytes(&plan);
        assert_eq!(primary, want_primary);
        let got_backup = read_range(&disk, 2 * GIB - 33 * 512, 33 * 512).expect("read");
        assert_eq!(got_backup, want_backup);

        // META: an empty store in both copies.
        let (meta_at, meta_len) = layout::partition_offset(&plan, layout::META).expect("META");
        let meta = read_range(&disk, meta_at, meta_len as usize).expect("read");
        let (adv, _copy) = machinery::meta::decode_partition(&meta).expect("META decodes");
        assert!(adv.is_empty());

        // STATE and EPHEMERAL start with their templates' bytes, but for
        // a new filesystem UUID each: given back the template's, they are
        // the template again.
        let mut new_uuids = Vec::new();
        for (name, image) in [
            (layout::STATE, &f.state_image),
            (layout::EPHEMERAL, &f.ephemeral_image),
        ] {
            let (at, _) = layout::partition_offset(&plan, name).expect(name);
            let mut got = std::io::Cursor::new(read_range(&disk, at, image.len()).expect("read"));
            let template_uuid: [u8; 16] = image[32..48].try_into().expect("16");
            let change = xfs_uuid::set_uuid(&mut got, template_uuid).expect(name);
            assert_ne!(change.old, template_uuid, "{name} has a new UUID");
            assert_eq!((change.superblocks, change.log_records), (2, 1), "{name}");
            assert!(got.into_inner() == *image, "{name} holds its template");
            new_uuids.push(change.old);
        }
        assert_ne!(new_uuids[0], new_uuids[1]);

        // The ESP, read back with fatfs.
        let (esp_at, esp_len) = layout::partition_offset(&plan, layout::EFI).expect("EFI");
        let fs = FileSystem::new(
            disk.partition(esp_at, esp_len).expect("partition"),
            FsOptions::new(),
        )
        .expect("a FAT filesystem");
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_label(), "EFI");
        let input = |p: &PathBuf| std::fs::read(p).expect("input");
        assert_eq!(
            read_fat_file(&fs, "EFI/BOOT/BOOTX64.EFI"),
            input(&f.inputs.systemd_boot)
        );
        assert_eq!(read_fat_file(&fs, "A/vmlinuz"), input(&f.inputs.vmlinuz));
        assert_eq!(
            read_fat_file(&fs, "A/initramfs.xz"),
            input(&f.inputs.initramfs)
        );
        let conf = String::from_utf8(read_fat_file(&fs, "loader/loader.conf")).expect("utf8");
        assert_eq!(conf, entries::loader_conf());
        let entry =
            String::from_utf8(read_fat_file(&fs, "loader/entries/talos-A.conf")).expect("utf8");
        assert!(entry.contains("talos.slot=A"), "{entry}");
        assert!(entry.contains("sort-key talos-0"), "{entry}");
        assert!(entry.contains("version v9.8.7"), "{entry}");
        let listed: Vec<String> = fs
            .root_dir()
            .open_dir(entries::ENTRIES_DIR)
            .expect("entries")
            .iter()
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "." && n != "..")
            .collect();
        assert_eq!(listed, ["talos-A.conf"]);
        // Slot B is there, empty, for the first upgrade.
        let b: Vec<String> = fs
            .root_dir()
            .open_dir("B")
            .expect("B")
            .iter()
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "." && n != "..")
            .collect();
        assert!(b.is_empty(), "{b:?}");
        assert!(
            !fs.read_status_flags().expect("flags").dirty(),
            "unmounted cleanly"
        );
        drop(fs);

        // Every directory starts with `.` and `..` (no long names), and
        // `..` of a directory in the root is cluster 0.
        let mut esp = disk.partition(esp_at, esp_len).expect("partition");
        let geometry = Fat32Geometry::read(&mut esp).expect("FAT32");
        let read_dir = |cluster: u32| {
            read_range(&disk, esp_at + geometry.cluster_at(cluster), 4096).expect("read")
        };
        let cluster_of = |e: &[u8]| (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26));
        let find = |dir: &[u8], name: &[u8; 11]| {
            dir.chunks_exact(32)
                .find(|e| &e[..11] == name && e[11] & 0x10 != 0)
                .map(cluster_of)
                .unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(name)))
        };
        let root = read_dir(geometry.root_cluster);
        // The label is in the root directory too (attribute 0x08).
        assert_eq!(&root[..12], b"EFI        \x08");
        for name in [
            b"EFI        ",
            b"LOADER     ",
            b"A          ",
            b"B          ",
        ] {
            let dir = read_dir(find(&root, name));
            assert_eq!(&dir[..11], DOT, "{}", String::from_utf8_lossy(name));
            assert_eq!(&dir[32..43], DOTDOT, "{}", String::from_utf8_lossy(name));
            assert_eq!(cluster_of(&dir[32..64]), 0, "`..` of a top directory");
        }
        let efi_cluster = find(&root, b"EFI        ");
        let boot = read_dir(find(&read_dir(efi_cluster), b"BOOT       "));
        assert_eq!(&boot[..11], DOT);
        assert_eq!(cluster_of(&boot[32..64]), efi_cluster, "`..` of EFI/BOOT");
    }

    #[test]
    fn seeded_installs_are_reproducible_and_random_ones_differ() {
        let f = fixture();
        let size = layout::minimum_disk_bytes().next_multiple_of(MIB);
        let mut plans = Vec::new();
        let mut paths = Vec::new();
        for (name, seed) in [("a.raw", Some(5)), ("b.raw", Some(5)), ("c.raw", None)] {
            let path = image_file(f.dir.path(), name, size);
            let mut disk = Disk::open(&path).expect("open");
            let inputs = InstallInputs {
                guid_seed: seed,
                ..f.inputs.clone()
            };
            plans.push(install(&mut disk, &inputs, &mut |_| {}).expect("install"));
            paths.push(path);
        }
        assert_eq!(plans[0], plans[1]);
        assert_ne!(plans[0].disk_guid, plans[2].disk_guid);
        assert!(same_bytes(&paths[0], &paths[1]), "same seed, same bytes");
        assert!(!same_bytes(&paths[0], &paths[2]));
        // A seeded install keeps the template's filesystem UUID.
        let disk = Disk::open(&paths[0]).expect("open");
        let (at, _) = layout::partition_offset(&plans[0], layout::STATE).expect("STATE");
        let state = read_range(&disk, at, f.state_image.len()).expect("read");
        assert!(state == f.state_image, "STATE is its template");
    }

    #[test]
    fn refuses_before_touching_the_disk() {
        let f = fixture();
        let path = image_file(f.dir.path(), "disk.raw", 2 * GIB);
        let disk = Disk::open(&path).expect("open");
        disk.write_at(b"precious", 0).expect("w");
        drop(disk);
        let check_untouched = || {
            let disk = Disk::open(&path).expect("open");
            assert_eq!(read_range(&disk, 0, 8).expect("read"), b"precious");
        };

        // A missing input.
        let inputs = InstallInputs {
            initramfs: f.dir.path().join("nope.xz"),
            ..f.inputs.clone()
        };
        let err = install(&mut Disk::open(&path).expect("open"), &inputs, &mut |_| {})
            .expect_err("missing input");
        assert!(err.to_string().contains("nope.xz"), "{err}");
        check_untouched();

        // A template larger than its partition.
        let big = f.dir.path().join("big.raw");
        File::create(&big)
            .and_then(|file| file.set_len(layout::STATE_SIZE + 1))
            .expect("big");
        let big_sparse = f.dir.path().join("big.sparse");
        sparse::encode(&big, &big_sparse).expect("encode");
        let inputs = InstallInputs {
            state_template: big_sparse.clone(),
            ..f.inputs.clone()
        };
        let err = install(&mut Disk::open(&path).expect("open"), &inputs, &mut |_| {})
            .expect_err("too big");
        assert!(
            matches!(
                err,
                InstallError::Template {
                    partition: "STATE",
                    source: SparseError::TooLarge { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("big.sparse"), "{err}");
        check_untouched();

        // Not a template at all.
        let inputs = InstallInputs {
            ephemeral_template: f.inputs.vmlinuz.clone(),
            ..f.inputs.clone()
        };
        let err = install(&mut Disk::open(&path).expect("open"), &inputs, &mut |_| {})
            .expect_err("not a template");
        assert!(matches!(err, InstallError::Template { .. }), "{err}");
        check_untouched();

        // A disk too small for the layout.
        let small = image_file(f.dir.path(), "small.raw", GIB);
        let err = install(
            &mut Disk::open(&small).expect("open"),
            &f.inputs,
            &mut |_| {},
        )
        .expect_err("too small");
        assert!(matches!(err, InstallError::Layout { .. }), "{err}");
        assert!(err.to_string().contains("small.raw"), "{err}");
    }

    #[test]
    fn image_json_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = image_version(dir.path()).expect_err("missing");
        assert!(err.to_string().contains("image.json"), "{err}");
        std::fs::write(dir.path().join(IMAGE_INFO), "{}").expect("w");
        let err = image_version(dir.path()).expect_err("no version");
        assert!(matches!(err, InstallError::ImageInfo { .. }), "{err}");
        std::fs::write(dir.path().join(IMAGE_INFO), r#"{"version": "a\nb"}"#).expect("w");
        assert!(image_version(dir.path()).is_err());
        std::fs::write(dir.path().join(IMAGE_INFO), r#"{"version": " 1.2.3 "}"#).expect("w");
        assert_eq!(image_version(dir.path()).expect("version"), "1.2.3");

        // install_from_dir refuses before opening the disk.
        let err = install_from_dir(dir.path(), &dir.path().join("disk"), &mut |_| {})
            .expect_err("no inputs");
        assert!(err.to_string().contains("disk"), "{err}");
    }

    #[test]
    fn reinstalling_replaces_the_old_install() {
        let f = fixture();
        let path = image_file(f.dir.path(), "disk.raw", 2 * GIB);
        let mut disk = Disk::open(&path).expect("open");
        install(&mut disk, &f.inputs, &mut |_| {}).expect("first");
        let inputs = InstallInputs {
            version: "v10".to_owned(),
            ..f.inputs.clone()
        };
        let plan = install(&mut disk, &inputs, &mut |_| {}).expect("second");
        let (esp_at, esp_len) = layout::partition_offset(&plan, layout::EFI).expect("EFI");
        let mut part = disk.partition(esp_at, esp_len).expect("partition");
        part.rewind().expect("rewind");
        let fs = FileSystem::new(part, FsOptions::new()).expect("fat");
        let entry =
            String::from_utf8(read_fat_file(&fs, "loader/entries/talos-A.conf")).expect("utf8");
        assert!(entry.contains("version v10\n"), "{entry}");
    }
}
