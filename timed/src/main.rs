//! timed: thin binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "timed",
    version,
    about = "Keeps the clock in sync with SNTP; serves time.TimeService"
)]
struct Args {
    /// metal (timed sets the clock) or container (the host owns it).
    #[arg(long, default_value = "metal")]
    mode: timed::Mode,
    /// Root of the node's paths.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let paths = machinery::constants::NodePaths::under(&args.root);
    machinery::daemon::run(
        "timed",
        timed::run(args.mode, &paths, machinery::daemon::shutdown_signal()),
    )
}
