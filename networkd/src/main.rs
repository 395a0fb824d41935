//! networkd: thin binary; the work is in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "networkd",
    version,
    about = "Links, addresses, routes, DHCP, hostname and resolvers; serves network.NetworkService"
)]
struct Args {
    /// metal (networkd configures the network) or container (the host
    /// owns it: networkd only reports).
    #[arg(long, default_value = "metal")]
    mode: networkd::Mode,
    /// Root of the node's paths.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The kernel command line to read `ip=` and
    /// `talos.network.interface.ignore=` from (tests).
    #[arg(long, default_value = networkd::DEFAULT_CMDLINE, hide = true)]
    cmdline_file: PathBuf,
    /// Renew DHCP leases at most this many seconds after acquiring them,
    /// whatever their T1 (tests).
    #[arg(long, value_name = "SECONDS", hide = true)]
    dhcp_renew_after: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let paths = machinery::constants::NodePaths::under(&args.root);
    let options = networkd::Options {
        cmdline: args.cmdline_file,
        dhcp_renew_after: args.dhcp_renew_after.map(Duration::from_secs),
    };
    machinery::daemon::run(
        networkd::NAME,
        networkd::run_with(
            args.mode,
            &paths,
            options,
            machinery::daemon::shutdown_signal(),
        ),
    )
}
