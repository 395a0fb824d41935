//! timed's command line and entry point, shared by the `timed` binary
//! and by machined, whose executable runs timed in the boot image
//! (see `machined::daemons`).

use std::path::PathBuf;
use std::process::ExitCode;

use machinery::cli::{self, Opt, Spec, value};

const SPEC: Spec = Spec {
    name: "timed",
    about: "Keeps the clock in sync with SNTP; serves time.TimeService",
    options: &[
        Opt::new(
            "mode",
            "MODE",
            "metal (timed sets the clock) or container (the host owns it) [default: metal]",
        ),
        cli::ROOT,
    ],
};

#[derive(Debug)]
struct Args {
    mode: crate::Mode,
    root: PathBuf,
}

impl Args {
    fn from_env() -> Args {
        let mut args = Args {
            mode: crate::Mode::Metal,
            root: PathBuf::from("/"),
        };
        SPEC.parse_env_or_exit(|option, v| {
            match option {
                "mode" => args.mode = value(v)?,
                "root" => args.root = v.into(),
                other => return Err(format!("no option --{other}")),
            }
            Ok(())
        });
        args
    }
}

/// Runs timed with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Args::from_env();
    let paths = machinery::constants::NodePaths::under(&args.root);
    machinery::daemon::run(
        "timed",
        crate::run(args.mode, &paths, machinery::daemon::shutdown_signal()),
    )
}
