//! udevd's command line and entry point, shared by the `udevd` binary
//! and by machined, whose executable runs udevd in the boot image
//! (see `machined::daemons`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::Options;
use machinery::cli::{Common, Opt, Spec};

const SPEC: Spec = Spec {
    name: "udevd",
    about: "Kernel uevents, coldplug and /dev/disk links; serves storage.StorageService",
    options: &[
        Opt::new(
            "mode",
            "MODE",
            "metal (uevents, coldplug, /dev/disk links and the API) or container (the API only, reading sysfs and writing nothing) [default: metal]",
        ),
        Opt::new(
            "root",
            "ROOT",
            "Root of the node's paths (the API socket is under it) [default: /]",
        ),
        Opt::new("sysfs", "SYSFS", "Where sysfs is mounted [default: /sys]"),
        Opt::new(
            "dev",
            "DEV",
            "Where devtmpfs is mounted; links are made under <dev>/disk [default: /dev]",
        ),
    ],
};

#[derive(Debug)]
struct Args {
    common: Common,
    sysfs: PathBuf,
    dev: PathBuf,
}

impl Args {
    fn from_env() -> Args {
        let mut args = Args {
            common: Common::default(),
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        };
        SPEC.parse_env_or_exit(|option, v| {
            match option {
                "sysfs" => args.sysfs = v.into(),
                "dev" => args.dev = v.into(),
                other => args.common.set(other, v)?,
            }
            Ok(())
        });
        args
    }
}

/// Runs udevd with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Args::from_env();
    let options = Options {
        mode: args.common.mode,
        root: args.common.root,
        sysfs: args.sysfs,
        dev: args.dev,
    };
    machinery::daemon::run(
        "udevd",
        crate::run(options, machinery::daemon::shutdown_signal()),
    )
}
