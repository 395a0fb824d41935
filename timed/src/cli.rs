//! timed's command line and entry point, shared by the `timed` binary
//! and by machined, whose executable runs timed in the boot image
//! (see `machined::daemons`).

use std::process::ExitCode;

use machinery::cli::{self, Common, Opt, Spec};

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

/// Runs timed with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Common::from_env(&SPEC);
    let paths = machinery::constants::NodePaths::under(&args.root);
    machinery::daemon::run(
        "timed",
        crate::run(args.mode, &paths, machinery::daemon::shutdown_signal()),
    )
}
