//! `imager build`: kernel → modules → root file system → initramfs →
//! manifest, into one output directory.
//!
//! Everything is first made in a scratch directory inside the output
//! directory and renamed into place at the end, so a failed build leaves
//! the previous artifacts alone (and the scratch directory is removed).

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::cpio::{self, CpioError, Entry};
use crate::kernel::{self, KernelError, KernelSource};
use crate::manifest::{self, Manifest, ManifestError};
use crate::modules::{self, ModulesError, Selection};
use crate::squashfs::{self, SquashfsError};

/// The kernel image in the output directory.
pub const VMLINUZ: &str = "vmlinuz";
/// The compressed initramfs in the output directory.
pub const INITRAMFS: &str = "initramfs.xz";
/// The root file system in the output directory (and in the initramfs).
pub const ROOTFS: &str = "rootfs.sqsh";
/// The binary that becomes `/init`.
pub const INIT_BINARY: &str = "machined";
/// Where modules live in the initramfs (machined's boot reads them there).
pub const INITRAMFS_MODULES_DIR: &str = "lib/modules";
/// The load order file in the initramfs.
pub const INITRAMFS_MODULES_ORDER: &str = "modules.order";
/// The NIC driver, loaded as networkd starts (see [`modules::NETWORK`]).
pub const INITRAMFS_MODULES_NETWORK: &str = "modules.network";
/// The modules loaded later (see [`modules::DEFERRED`]), in load order.
pub const INITRAMFS_MODULES_DEFERRED: &str = "modules.deferred";
/// Where the binary directory is by default (relative to the workspace).
pub const DEFAULT_BIN_DIR: &str = "target/x86_64-unknown-linux-musl/image";

/// Directories of the initramfs that are mount points for machined's early
/// mounts and its switch to the squashfs root.
const INITRAMFS_DIRS: &[&str] = &["newroot", "proc", "run", "sys", "system", "tmp"];

/// What a build is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInputs {
    /// The output directory.
    pub output: PathBuf,
    /// Where the kernel comes from.
    pub kernel: KernelSource,
    /// Where `machined` (which carries the other daemons) and the
    /// `installer` (static musl builds) are.
    pub bin_dir: PathBuf,
    /// The timestamp every file carries (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// The OS version written into the image.
    pub version: String,
    /// Public keys (name, SPKI PEM) of the installer image signers the
    /// image trusts for installs and upgrades.
    pub trusted_keys: Vec<(String, Vec<u8>)>,
    /// The STATE and EPHEMERAL filesystem templates
    /// ([`crate::disk::make_templates`]) the root carries, so a node can
    /// format a blank STATE or EPHEMERAL again; none when `None`.
    pub fs_templates: Option<(PathBuf, PathBuf)>,
}

impl BuildInputs {
    /// Inputs with Debian's kernel, cached under `<output>/cache`.
    #[must_use]
    pub fn with_debian_kernel(output: PathBuf, bin_dir: PathBuf, source_date_epoch: u64) -> Self {
        Self {
            kernel: KernelSource::Debian {
                meta_package: kernel::DEFAULT_META_PACKAGE.to_owned(),
                cache_dir: output.join("cache"),
            },
            output,
            bin_dir,
            source_date_epoch,
            version: machinery::constants::VERSION.to_owned(),
            trusted_keys: Vec::new(),
            fs_templates: None,
        }
    }
}

/// A build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The kernel could not be prepared.
    #[error("preparing the kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The modules could not be found.
    #[error("selecting kernel modules: {0}")]
    Modules(#[from] ModulesError),
    /// The root file system could not be built.
    #[error("building the root file system: {0}")]
    Rootfs(#[from] SquashfsError),
    /// The initramfs archive could not be made.
    #[error("building the initramfs: {0}")]
    Cpio(#[from] CpioError),
    /// The initramfs could not be compressed.
    #[error("compressing the initramfs {path}: {source}")]
    Compress {
        /// The compressed file being written.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest could not be made.
    #[error("writing the manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// There is no machined to be `/init`.
    #[error(
        "the init binary {path} is missing: build machined for x86_64-unknown-linux-musl first (or pass --bin-dir)"
    )]
    MissingInit {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io {
        operation,
        path,
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(io_err("reading", path))
}

/// The initramfs's entries: `/init`, the modules and their order, the root
/// image, and the mount points machined uses before it switches root.
///
/// `/dev/console` is there although machined mounts devtmpfs: the kernel
/// opens it as init's stdin/stdout/stderr *before* `/init` runs, and a Rust
/// program started without fds 0–2 (and no `/dev/null` to put there)
/// aborts before `main`. Debian kernels carry a built-in initramfs with
/// this node already; ours does not rely on that.
#[must_use]
pub fn initramfs_entries(
    init: Vec<u8>,
    modules: &[(String, Vec<u8>)],
    order: &str,
    network: &str,
    deferred: &str,
    rootfs: Vec<u8>,
) -> Vec<Entry> {
    let mut entries = vec![
        Entry::dir("dev", 0o755),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::file("init", 0o755, init),
        Entry::dir("lib", 0o755),
        Entry::dir(INITRAMFS_MODULES_DIR, 0o755),
        Entry::file(INITRAMFS_MODULES_ORDER, 0o644, order.as_bytes().to_vec()),
        Entry::file(
            INITRAMFS_MODULES_NETWORK,
            0o644,
            network.as_bytes().to_vec(),
        ),
        Entry::file(
            INITRAMFS_MODULES_DEFERRED,
            0o644,
            deferred.as_bytes().to_vec(),
        ),
        Entry::file(ROOTFS, 0o644, rootfs),
    ];
    entries.extend(INITRAMFS_DIRS.iter().map(|d| Entry::dir(d, 0o755)));
    entries.extend(modules.iter().map(|(name, data)| {
        Entry::file(
            &format!("{INITRAMFS_MODULES_DIR}/{name}"),
            0o644,
            data.clone(),
        )
    }));
    entries
}

/// zstd level of the initramfs: the smallest output the kernel's decoder
/// still unpacks with an 8 MiB window.
const INITRAMFS_ZSTD_LEVEL: i32 = 19;

/// Compresses the cpio `archive` into `output` the way the kernel unpacks it fastest:
/// one zstd frame with a checksum, one thread (deterministic output). Not
/// xz, though the file keeps upstream's historical name `initramfs.xz`
/// (upstream Talos made the same switch in v1.8): the kernel unpacks the
/// initramfs before `/init` runs, and under emulation its xz decoder took
/// seconds longer than zstd's for an archive of the same size.
fn compress_initramfs(archive: &[u8], output: &Path) -> Result<(), BuildError> {
    let compress_err = |source| BuildError::Compress {
        path: output.to_path_buf(),
        source,
    };
    let file = File::create(output).map_err(io_err("creating", output))?;
    let mut encoder = zstd::stream::Encoder::new(io::BufWriter::new(file), INITRAMFS_ZSTD_LEVEL)
        .map_err(compress_err)?;
    encoder.include_checksum(true).map_err(compress_err)?;
    encoder.write_all(archive).map_err(compress_err)?;
    encoder
        .finish()
        .and_then(|mut writer| writer.flush())
        .map_err(compress_err)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

fn module_contents(selection: &Selection) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    selection
        .files
        .iter()
        .map(|m| read(&m.source).map(|data| (m.file_name.clone(), data)))
        .collect()
}

/// Builds `vmlinuz`, `rootfs.sqsh`, `initramfs.xz` and `manifest.json` into
/// `inputs.output`. Blocks for the whole build (downloads, mksquashfs, zstd).
///
/// # Errors
/// [`BuildError`] naming the step that failed.
pub fn build(inputs: &BuildInputs) -> Result<Manifest, BuildError> {
    let out = &inputs.output;
    let epoch = inputs.source_date_epoch;
    fs::create_dir_all(out).map_err(io_err("creating the output directory", out))?;
    let scratch = tempfile::Builder::new()
        .prefix(".imager-")
        .tempdir_in(out)
        .map_err(io_err("creating a scratch directory in", out))?;
    let scratch_dir = scratch.path();

    // The cheap check first: no download for a build that cannot finish.
    let init_path = inputs.bin_dir.join(INIT_BINARY);
    if !init_path.is_file() {
        return Err(BuildError::MissingInit { path: init_path });
    }
    let kernel = kernel::prepare(&inputs.kernel, scratch_dir)?;
    let selection = modules::select(&kernel.modules_dir, modules::MODULES)?;

    // The root file system.
    let root = scratch_dir.join("rootfs");
    fs::create_dir(&root).map_err(io_err("creating", &root))?;
    let programs = squashfs::stage(
        &root,
        &inputs.bin_dir,
        &inputs.version,
        &inputs.trusted_keys,
        inputs
            .fs_templates
            .as_ref()
            .map(|(s, e)| (s.as_path(), e.as_path())),
    )?;
    let rootfs = scratch_dir.join(ROOTFS);
    squashfs::mksquashfs(&root, &rootfs, epoch)?;

    // The initramfs.
    let entries = initramfs_entries(
        read(&init_path)?,
        &module_contents(&selection)?,
        &selection.order_file(),
        &selection.network_file(),
        &selection.deferred_file(),
        read(&rootfs)?,
    );
    let archive = cpio::encode(&entries, epoch)?;
    drop(entries);
    let initramfs = scratch_dir.join(INITRAMFS);
    // Compressed in process, straight from memory: no uncompressed copy
    // goes to disk.
    compress_initramfs(&archive, &initramfs)?;
    drop(archive);

    // The kernel.
    let vmlinuz = scratch_dir.join(VMLINUZ);
    fs::copy(&kernel.vmlinuz, &vmlinuz).map_err(io_err("copying", &kernel.vmlinuz))?;

    // Into place, then the manifest over what is in place.
    let mut artifacts = std::collections::BTreeMap::new();
    for name in [VMLINUZ, INITRAMFS, ROOTFS] {
        let from = scratch_dir.join(name);
        let to = out.join(name);
        set_mode(&from, 0o644)?;
        fs::rename(&from, &to).map_err(io_err("moving into place", &to))?;
        artifacts.insert(name.to_owned(), manifest::artifact(&to)?);
    }
    let manifest = Manifest {
        version: inputs.version.clone(),
        source_date_epoch: epoch,
        kernel_version: kernel.version.clone(),
        kernel_package: kernel.package.clone(),
        modules: selection
            .files
            .iter()
            .map(|m| m.file_name.clone())
            .collect(),
        builtin_modules: selection.builtin.clone(),
        rootfs_binaries: programs,
        artifacts,
    };
    let manifest_tmp = scratch_dir.join(manifest::FILE_NAME);
    fs::write(&manifest_tmp, manifest.to_json()?).map_err(io_err("writing", &manifest_tmp))?;
    set_mode(&manifest_tmp, 0o644)?;
    let manifest_path = out.join(manifest::FILE_NAME);
    fs::rename(&manifest_tmp, &manifest_path)
        .map_err(io_err("moving into place", &manifest_path))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_has_init_console_modules_and_mount_points() {
        let entries = initramfs_entries(
            b"init".to_vec(),
            &[("loop.ko".to_owned(), b"ko".to_vec())],
            "loop.ko\n",
            "virtio_net.ko\n",
            "xfs.ko\n",
            b"sqsh".to_vec(),
        );
        let bytes = cpio::encode(&entries, 0).expect("a valid archive");
        let read = cpio::read_newc(&bytes).expect("parses");
        let paths: Vec<&str> = read.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "dev/console",
            "init",
            "lib/modules/loop.ko",
            "modules.order",
            "modules.network",
            "modules.deferred",
            "newroot",
            "proc",
            "rootfs.sqsh",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        let console = read
            .iter()
            .find(|e| e.path == "dev/console")
            .expect("console");
        assert_eq!(console.file_type(), cpio::S_IFCHR);
        assert_eq!(console.rdev, (5, 1));
    }
}
