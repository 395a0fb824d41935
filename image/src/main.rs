//! `imager`: builds the boot image. Thin binary: all logic lives in the
//! library.
//!
//! Exit codes: 0 built, 1 the build failed, 2 bad usage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use image::build::{self, BuildInputs};
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
    /// Where machined and the daemons (static musl builds) are.
    #[arg(long, default_value = build::DEFAULT_BIN_DIR)]
    bin_dir: PathBuf,
    /// Timestamp of every file in the image.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
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
    match build::build(&inputs) {
        Ok(manifest) => {
            println!(
                "imager: built {} (kernel {}) into {}",
                manifest.version,
                manifest.kernel_version,
                inputs.output.display()
            );
            for (name, artifact) in &manifest.artifacts {
                println!(
                    "  {name:<14} {} {:>10} bytes",
                    artifact.sha256, artifact.size
                );
            }
            if args.no_disk {
                return ExitCode::SUCCESS;
            }
            let disk = inputs.output.join(image::disk::DISK_IMAGE);
            let disk_inputs = image::disk::DiskInputs {
                vmlinuz: inputs.output.join(build::VMLINUZ),
                initramfs: inputs.output.join(build::INITRAMFS),
                systemd_boot: args.systemd_boot,
                version: manifest.version.clone(),
                size: args.disk_size,
                seed: args.source_date_epoch,
            };
            match image::disk::build_disk_image(&disk, &disk_inputs) {
                Ok(_) => {
                    println!(
                        "  {:<14} {} bytes (sparse): EFI with slot A, META, STATE, EPHEMERAL",
                        image::disk::DISK_IMAGE,
                        args.disk_size
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("imager: building {}: {e}", disk.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("imager: {e}");
            ExitCode::FAILURE
        }
    }
}
