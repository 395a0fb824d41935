//! `metal-amd64.raw`: a ready-to-boot disk image in the installed layout
//! ([`crate::layout`]), made on the build host by the installer's own
//! code ([`installer::install::install`]) on a sparse image file: what a
//! node installing itself from maintenance mode writes, with GUIDs seeded
//! from `SOURCE_DATE_EPOCH` instead of random ones.
//!
//! The only host tool is `mkfs.xfs`, for the STATE and EPHEMERAL
//! templates ([`make_templates`], which the imager also puts into the
//! installer image); the ESP is made with `fatfs`, META and the GPT are
//! written directly.
//!
//! The boot entries are described in [`installer::entries`]; the names
//! below are re-exported from there for existing users.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use installer::files;
use installer::install::{self, InstallError, InstallInputs};
use installer::sparse::{self, SparseError};
use installer::target::{Disk, TargetError};

use crate::layout::{self, Plan};
use crate::tool::{self, ToolError};

pub use installer::entries::{
    BOOT_TRIES, KERNEL_ARGS, Slot, entry_file_name, loader_conf, loader_entry,
};

/// The disk image's file name.
pub const DISK_IMAGE: &str = "metal-amd64.raw";

/// Its default size: the smallest the layout allows, rounded up to 2 GiB.
pub const DEFAULT_DISK_SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// Debian's systemd-boot (package systemd-boot-efi).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The EPHEMERAL template's size: the smallest filesystem `mkfs.xfs`
/// makes. machined grows it to its partition at boot, so one template
/// fits every disk.
pub const EPHEMERAL_TEMPLATE_SIZE: u64 = 300 * 1024 * 1024;

/// Building the disk image or the templates failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A template could not be encoded.
    #[error("encoding a filesystem template: {0}")]
    Sparse(#[from] SparseError),
    /// A template's inode times could not be set.
    #[error("setting the inode times of {template}: {reason}")]
    Stamp {
        /// The raw filesystem.
        template: PathBuf,
        /// Why.
        reason: String,
    },
    /// The image file could not be created.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Installing onto the image file failed.
    #[error(transparent)]
    Install(#[from] InstallError),
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError + use<> {
    let path = path.to_path_buf();
    move |source| DiskError::Io {
        operation,
        path,
        source,
    }
}

/// `mkfs.*` lives in sbin, which a non-root PATH may lack.
fn mkfs(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The UUID of the filesystem labelled `label`, derived from `seed`
/// (SHA-256, shaped as a version-4 UUID): reproducible, and different per
/// label and seed.
fn seeded_uuid(seed: u64, label: &str) -> uuid::Uuid {
    let mut input = b"talos-rs xfs template ".to_vec();
    input.extend_from_slice(&seed.to_le_bytes());
    input.extend_from_slice(label.as_bytes());
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// Makes an empty xfs filesystem of `size` bytes labelled `label` and
/// encodes it as a template at `template`.
fn make_template(
    scratch: &Path,
    label: &str,
    size: u64,
    seed: u64,
    template: &Path,
) -> Result<(), DiskError> {
    let raw = scratch.join(format!("{label}.xfs"));
    let _ = fs::remove_file(&raw);
    let f = File::create(&raw).map_err(io_err("creating", &raw))?;
    f.set_len(size).map_err(io_err("sizing", &raw))?;
    drop(f);
    tool::run(
        "making an xfs filesystem template",
        Command::new(mkfs("mkfs.xfs"))
            .args(["-q", "-f", "-L", label, "-m"])
            .arg(format!("uuid={}", seeded_uuid(seed, label)))
            .arg(&raw),
    )?;
    // mkfs.xfs stamps the time it ran into its inodes; the seed (the
    // build's SOURCE_DATE_EPOCH) instead, so the same inputs give the same
    // template.
    let seconds = i64::try_from(seed).map_err(|_| DiskError::Stamp {
        template: raw.clone(),
        reason: format!("the time {seed} is out of range"),
    })?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&raw)
        .map_err(io_err("opening", &raw))?;
    installer::xfs_uuid::set_inode_times(&mut f, seconds).map_err(|e| DiskError::Stamp {
        template: raw.clone(),
        reason: e.to_string(),
    })?;
    drop(f);
    sparse::encode(&raw, template)?;
    fs::remove_file(&raw).map_err(io_err("removing", &raw))
}

/// Makes the STATE and EPHEMERAL filesystem templates in `scratch` (an
/// existing directory), named as in an installer image
/// ([`installer::files`]): empty xfs filesystems made with `mkfs.xfs`,
/// STATE of its partition's size, EPHEMERAL of
/// [`EPHEMERAL_TEMPLATE_SIZE`], in the [`installer::sparse`] encoding.
/// Their UUIDs derive from `seed`. Returns their paths (STATE, EPHEMERAL).
///
/// mkfs.xfs stamps the current time into its inodes; they get `seed` as
/// their time instead, so templates made from the same seed are the same
/// bytes.
///
/// # Errors
/// `mkfs.xfs` is missing or failed, or a file operation failed.
pub fn make_templates(scratch: &Path, seed: u64) -> Result<(PathBuf, PathBuf), DiskError> {
    let state = scratch.join(files::STATE_TEMPLATE);
    let ephemeral = scratch.join(files::EPHEMERAL_TEMPLATE);
    make_template(scratch, layout::STATE, layout::STATE_SIZE, seed, &state)?;
    make_template(
        scratch,
        layout::EPHEMERAL,
        EPHEMERAL_TEMPLATE_SIZE,
        seed,
        &ephemeral,
    )?;
    Ok((state, ephemeral))
}

/// Builds the disk image at `out` (replacing it):
/// [`installer::install::install`] of `inputs` onto a sparse file of
/// `size` bytes, as a node installs itself. Give `inputs` a `guid_seed`
/// so the same inputs give the same table and identifiers, and the
/// templates of [`make_templates`] (the installer image carries the same
/// files). Returns the partition plan.
///
/// # Errors
/// A file operation or the install failed; `out` may be left half-written
/// (and unbootable).
pub fn build_disk_image(out: &Path, size: u64, inputs: &InstallInputs) -> Result<Plan, DiskError> {
    let mut disk = Disk::create_image(out, size)?;
    let plan = install::install(&mut disk, inputs, &mut |_| {})?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt as _;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_entry_names_are_the_installers() {
        // Re-exported, not copies: the node and the image agree.
        assert_eq!(KERNEL_ARGS, installer::entries::KERNEL_ARGS);
        assert_eq!(BOOT_TRIES, 3);
        assert_eq!(entry_file_name(Slot::B, Some(BOOT_TRIES)), "talos-B+3.conf");
        let a = loader_entry(Slot::A, "0.1.0", true);
        assert!(a.contains("sort-key talos-0\n"), "{a}");
        assert!(a.contains(KERNEL_ARGS), "{a}");
        assert!(loader_conf().contains("editor no\n"));
    }

    #[test]
    fn seeded_uuids_are_reproducible_per_seed_and_label() {
        let a = seeded_uuid(1, "STATE");
        assert_eq!(a, seeded_uuid(1, "STATE"));
        assert_ne!(a, seeded_uuid(2, "STATE"));
        assert_ne!(a, seeded_uuid(1, "EPHEMERAL"));
        assert_eq!(a.get_version_num(), 4);
    }

    fn tool_path(name: &str, package: &str) -> PathBuf {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("`{name}` is missing: this test needs the Debian package `{package}`; scripts/setup installs it")
            })
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{cmd:?} failed: {text}");
        text
    }

    /// Copies `len` bytes at `at` of `from` into a new sparse file `to`.
    fn extract_sparse(from: &Path, at: u64, len: u64, to: &Path) {
        let src = File::open(from).expect("open");
        let dst = File::create(to).expect("create");
        dst.set_len(len).expect("size");
        let mut buf = vec![0u8; MIB as usize];
        for off in (0..len).step_by(MIB as usize) {
            src.read_exact_at(&mut buf, at + off).expect("read");
            if buf.iter().any(|&b| b != 0) {
                dst.write_all_at(&buf, off).expect("write");
            }
        }
    }

    /// The xfs superblock at `at` of `disk`: its label and size in bytes.
    fn xfs_superblock(disk: &File, at: u64) -> (String, u64) {
        let mut sb = [0u8; 512];
        disk.read_exact_at(&mut sb, at).expect("read");
        assert_eq!(&sb[..4], b"XFSB", "xfs magic at {at}");
        let blocksize = u32::from_be_bytes(sb[4..8].try_into().expect("4"));
        let dblocks = u64::from_be_bytes(sb[8..16].try_into().expect("8"));
        let label = String::from_utf8_lossy(&sb[108..120])
            .trim_end_matches('\0')
            .to_owned();
        (label, dblocks * u64::from(blocksize))
    }

    #[test]
    fn builds_a_disk_in_the_installed_layout() {
        tool_path("mkfs.xfs", "xfsprogs");
        let mdir = tool_path("mdir", "mtools");
        let mtype = tool_path("mtype", "mtools");
        let sgdisk = tool_path("sgdisk", "gdisk");

        let dir = tempfile::tempdir().expect("tempdir");
        let vmlinuz = dir.path().join("vmlinuz");
        let initramfs = dir.path().join("initramfs.xz");
        let boot = dir.path().join("systemd-bootx64.efi");
        fs::write(&vmlinuz, b"fake kernel ".repeat(10_000)).expect("w");
        fs::write(&initramfs, b"fake initramfs").expect("w");
        fs::write(&boot, b"MZ fake loader").expect("w");
        let out = dir.path().join(DISK_IMAGE);
        fs::write(&out, b"an old file in the way").expect("w");
        let (state_template, ephemeral_template) =
            make_templates(dir.path(), 42).expect("templates");
        let inputs = InstallInputs {
            vmlinuz: vmlinuz.clone(),
            initramfs,
            systemd_boot: boot,
            state_template,
            ephemeral_template,
            version: "v1.2.3".to_owned(),
            guid_seed: Some(42),
        };
        let plan = build_disk_image(&out, DEFAULT_DISK_SIZE, &inputs).expect("disk image");
        assert_eq!(fs::metadata(&out).expect("stat").len(), DEFAULT_DISK_SIZE);
        // The same seed gives the same table.
        assert_eq!(
            plan,
            layout::plan(DEFAULT_DISK_SIZE, &mut layout::seeded_guids(42)).expect("plan")
        );

        let verify = run(Command::new(&sgdisk).arg("--verify").arg(&out));
        assert!(verify.contains("No problems found"), "{verify}");

        // The ESP, read with mtools.
        let (esp_at, _) = layout::partition_offset(&plan, layout::EFI).expect("EFI");
        let image = format!("{}@@{esp_at}", out.display());
        let mtools = |tool: &Path, path: &str| {
            run(Command::new(tool)
                .arg("-i")
                .arg(&image)
                .arg(path)
                .env("MTOOLS_SKIP_CHECK", "1"))
        };
        let root = mtools(&mdir, "::/");
        assert!(root.contains("Volume in drive : is EFI"), "{root}");
        let entries = mtools(&mdir, "::/loader/entries");
        assert!(entries.contains("talos-A.conf"), "{entries}");
        let entry = mtools(&mtype, "::/loader/entries/talos-A.conf");
        assert!(entry.contains("talos.slot=A"), "{entry}");
        assert!(entry.contains("sort-key talos-0"), "{entry}");
        assert!(entry.contains("version v1.2.3"), "{entry}");
        assert_eq!(mtools(&mtype, "::/EFI/BOOT/BOOTX64.EFI"), "MZ fake loader");
        let kernel = mtools(&mdir, "::/A");
        assert!(kernel.contains("120000"), "the kernel's size: {kernel}");

        // fsck.fat finds nothing to repair (it needs the ESP on its own).
        let esp = dir.path().join("esp.img");
        extract_sparse(&out, esp_at, layout::EFI_SIZE, &esp);
        let fsck = tool_path("fsck.fat", "dosfstools");
        let report = run(Command::new(&fsck).arg("-n").arg(&esp));
        assert!(!report.contains("Auto-renaming"), "{report}");

        // STATE and EPHEMERAL: xfs with their labels; EPHEMERAL the
        // template's size, to be grown at boot.
        let disk = File::open(&out).expect("open");
        let (state_at, state_len) = layout::partition_offset(&plan, layout::STATE).expect("STATE");
        assert_eq!(
            xfs_superblock(&disk, state_at),
            ("STATE".to_owned(), state_len)
        );
        let (eph_at, eph_len) =
            layout::partition_offset(&plan, layout::EPHEMERAL).expect("EPHEMERAL");
        let (label, bytes) = xfs_superblock(&disk, eph_at);
        assert_eq!(label, "EPHEMERAL");
        assert_eq!(bytes, EPHEMERAL_TEMPLATE_SIZE);
        assert!(eph_len > bytes);

        // META: an empty store.
        let (meta_at, meta_len) = layout::partition_offset(&plan, layout::META).expect("META");
        let mut meta = vec![0u8; meta_len as usize];
        disk.read_exact_at(&mut meta, meta_at).expect("read");
        let (adv, _) = machinery::meta::decode_partition(&meta).expect("META decodes");
        assert!(adv.is_empty());

        // The image stays sparse: far less allocated than its size.
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&out).expect("stat")) * 512;
        assert!(allocated < 200 * MIB, "{allocated} bytes allocated");
    }

    #[test]
    fn templates_fit_their_partitions() {
        tool_path("mkfs.xfs", "xfsprogs");
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, ephemeral) = make_templates(dir.path(), 7).expect("templates");
        assert_eq!(state, dir.path().join("state.xfs.sparse"));
        assert_eq!(ephemeral, dir.path().join("ephemeral.xfs.sparse"));
        let total = |p: &Path| sparse::total_len(File::open(p).expect("open")).expect("header");
        assert_eq!(total(&state), layout::STATE_SIZE);
        assert_eq!(total(&ephemeral), EPHEMERAL_TEMPLATE_SIZE);
        // Small to ship: an empty filesystem is mostly zeros.
        for p in [&state, &ephemeral] {
            let len = fs::metadata(p).expect("stat").len();
            assert!(len < 4 * MIB, "{}: {len} bytes", p.display());
        }
        // Only the templates are left in the scratch directory.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ephemeral.xfs.sparse", "state.xfs.sparse"]);
    }

    #[test]
    fn templates_made_apart_from_one_seed_are_the_same_bytes() {
        tool_path("mkfs.xfs", "xfsprogs");
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let first = make_templates(a.path(), 1_700_000_000).expect("templates");
        // mkfs.xfs would stamp a later second into the second pair.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = make_templates(b.path(), 1_700_000_000).expect("templates");
        for (x, y) in [(&first.0, &second.0), (&first.1, &second.1)] {
            assert!(
                fs::read(x).expect("read") == fs::read(y).expect("read"),
                "{} differs",
                x.display()
            );
        }
    }
}
