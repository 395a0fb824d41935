//! `imager`: builds the boot image. Thin binary: all logic lives in the
//! library.
//!
//! Exit codes: 0 built, 1 the build failed, 2 bad usage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use image::build::{self, BuildInputs};
use image::installer_image;
use image::kernel::KernelSource;

#[derive(Debug, Parser)]
#[command(name = "imager", version, about = "Builds the boot image")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build vmlinuz, initramfs.xz, rootfs.sqsh and manifest.json.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Output directory (the Debian kernel package is cached in its `cache/`).
    #[arg(long, default_value = "_out")]
    output: PathBuf,
    /// A kernel image to use instead of Debian's package (needs --modules).
    #[arg(long, requires = "modules")]
    kernel: Option<PathBuf>,
    /// The lib/modules/<version> tree that goes with --kernel.
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
    /// The Debian metapackage that names the kernel package.
    #[arg(long, default_value = image::kernel::DEFAULT_META_PACKAGE, conflicts_with = "kernel")]
    kernel_package: String,
    /// Where machined (which carries the other daemons) and the installer
    /// (static musl builds) are.
    #[arg(long, default_value = build::DEFAULT_BIN_DIR)]
    bin_dir: PathBuf,
    /// Timestamp of every file in the image.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    /// The version written into the image (default: this build's).
    #[arg(long)]
    version: Option<String>,
    /// The ed25519 key (PKCS#8 PEM) that signs the installer image; made
    /// when missing. Default: <output>/keys/installer-signing.pem.
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// More public keys (SPKI PEM) the image trusts for upgrades.
    #[arg(long)]
    trust_key: Vec<PathBuf>,
    /// Skip the disk image (metal-amd64.raw).
    #[arg(long)]
    no_disk: bool,
    /// Size of the disk image in bytes (sparse).
    #[arg(long, default_value_t = image::disk::DEFAULT_DISK_SIZE)]
    disk_size: u64,
    /// systemd-boot's EFI binary for the disk image.
    #[arg(long, default_value = image::disk::SYSTEMD_BOOT)]
    systemd_boot: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cmd::Build(args) = cli.command;
    match build_all(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imager: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_all(args: BuildArgs) -> anyhow::Result<()> {
    let mut inputs =
        BuildInputs::with_debian_kernel(args.output, args.bin_dir, args.source_date_epoch);
    match (args.kernel, args.modules) {
        (Some(vmlinuz), Some(modules_dir)) => {
            inputs.kernel = KernelSource::Files {
                vmlinuz,
                modules_dir,
            };
        }
        _ => {
            if let KernelSource::Debian { meta_package, .. } = &mut inputs.kernel {
                *meta_package = args.kernel_package;
            }
        }
    }
    if let Some(version) = args.version {
        inputs.version = version;
    }
    let output = inputs.output.clone();

    // The release key: its public half goes into the root, the private
    // half signs the installer image.
    let key_path = args
        .signing_key
        .unwrap_or_else(|| output.join(installer_image::DEFAULT_SIGNING_KEY));
    let (key, made) = installer_image::load_or_generate_key(&key_path)?;
    if made {
        println!(
            "imager: made a new installer signing key {} ({}): keep it, nodes built from this output install and upgrade only to images it signs",
            key_path.display(),
            key.fingerprint()
        );
    }
    inputs
        .trusted_keys
        .push(("release".to_owned(), key.public_key_pem().into_bytes()));
    for (i, path) in args.trust_key.iter().enumerate() {
        let pem = std::fs::read(path).with_context(|| format!("--trust-key {}", path.display()))?;
        installer::sign::TrustedKeys::from_pem(&pem, &path.display().to_string())
            .with_context(|| format!("--trust-key {}", path.display()))?;
        inputs.trusted_keys.push((format!("extra-{i}"), pem));
    }

    // The filesystem templates first: the root carries them as well as
    // the installer image.
    let scratch = tempfile::Builder::new()
        .prefix(".imager-")
        .tempdir_in(&output)
        .context("a scratch directory")?;
    let (state_template, ephemeral_template) =
        image::disk::make_templates(scratch.path(), args.source_date_epoch)?;
    inputs.fs_templates = Some((state_template.clone(), ephemeral_template.clone()));

    let manifest = build::build(&inputs)?;
    println!(
        "imager: built {} (kernel {}) into {}",
        manifest.version,
        manifest.kernel_version,
        output.display()
    );
    for (name, artifact) in &manifest.artifacts {
        println!(
            "  {name:<14} {} {:>10} bytes",
            artifact.sha256, artifact.size
        );
    }

    // The installer image.
    // What an install writes: the installer image carries these files, and
    // the disk image is an install of them (with GUIDs seeded, so the same
    // inputs give the same disk).
    let install = installer::install::InstallInputs {
        vmlinuz: output.join(build::VMLINUZ),
        initramfs: output.join(build::INITRAMFS),
        systemd_boot: args.systemd_boot.clone(),
        state_template,
        ephemeral_template,
        version: manifest.version.clone(),
        guid_seed: Some(args.source_date_epoch),
    };
    let digest = installer_image::build_installer_image(
        &output,
        &inputs.bin_dir.join(installer::files::INSTALLER),
        &install,
        &key,
    )?;
    println!(
        "  {:<14} {digest} (OCI image layout, signed by {})",
        format!("{}/", installer_image::INSTALLER_DIR),
        key.fingerprint()
    );
    if args.no_disk {
        return Ok(());
    }

    // The disk image, written by the installer's own code.
    let disk = output.join(image::disk::DISK_IMAGE);
    image::disk::build_disk_image(&disk, args.disk_size, &install)
        .with_context(|| format!("building {}", disk.display()))?;
    println!(
        "  {:<14} {} bytes (sparse): EFI with slot A, META, STATE, EPHEMERAL",
        image::disk::DISK_IMAGE,
        args.disk_size
    );
    Ok(())
}
