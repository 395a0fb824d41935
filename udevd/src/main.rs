//! udevd: thin binary; the work is in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use udevd::{Mode, Options};

#[derive(Debug, Parser)]
#[command(
    name = "udevd",
    version,
    about = "Kernel uevents, coldplug and /dev/disk links; serves storage.StorageService"
)]
struct Args {
    /// metal (uevents, coldplug, /dev/disk links and the API) or container
    /// (the API only, reading sysfs and writing nothing).
    #[arg(long, value_parser = ["metal", "container"], default_value = "metal")]
    mode: String,
    /// Root of the node's paths (the API socket is under it).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Where sysfs is mounted.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Where devtmpfs is mounted; links are made under <dev>/disk.
    #[arg(long, default_value = "/dev")]
    dev: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mode = if args.mode == "container" {
        Mode::Container
    } else {
        Mode::Metal
    };
    let options = Options {
        mode,
        root: args.root,
        sysfs: args.sysfs,
        dev: args.dev,
    };
    machinery::daemon::run(
        "udevd",
        udevd::run(options, machinery::daemon::shutdown_signal()),
    )
}
