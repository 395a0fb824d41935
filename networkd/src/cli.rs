//! networkd's command line and entry point, shared by the `networkd` binary
//! and by machined, whose executable runs networkd in the boot image
//! (see `machined::daemons`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use machinery::cli::{self, Common, Opt, Spec, value};

const SPEC: Spec = Spec {
    name: "networkd",
    about: "Links, addresses, routes, DHCP, hostname and resolvers; serves network.NetworkService",
    options: &[
        Opt::new(
            "mode",
            "MODE",
            "metal (networkd configures the network) or container (the host owns it: networkd only reports) [default: metal]",
        ),
        cli::ROOT,
        // The kernel command line to read `ip=` and
        // `talos.network.interface.ignore=` from (tests).
        Opt::hidden("cmdline-file", "FILE"),
        // Renew DHCP leases at most this many seconds after acquiring
        // them, whatever their T1 (tests).
        Opt::hidden("dhcp-renew-after", "SECONDS"),
    ],
};

#[derive(Debug)]
struct Args {
    common: Common,
    cmdline_file: PathBuf,
    dhcp_renew_after: Option<u64>,
}

impl Args {
    fn from_env() -> Args {
        let mut args = Args {
            common: Common::default(),
            cmdline_file: PathBuf::from(crate::DEFAULT_CMDLINE),
            dhcp_renew_after: None,
        };
        SPEC.parse_env_or_exit(|option, v| {
            match option {
                "cmdline-file" => args.cmdline_file = v.into(),
                "dhcp-renew-after" => args.dhcp_renew_after = Some(value(v)?),
                other => args.common.set(other, v)?,
            }
            Ok(())
        });
        args
    }
}

/// Runs networkd with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Args::from_env();
    let paths = machinery::constants::NodePaths::under(&args.common.root);
    let options = crate::Options {
        cmdline: args.cmdline_file,
        dhcp_renew_after: args.dhcp_renew_after.map(Duration::from_secs),
    };
    machinery::daemon::run(
        crate::NAME,
        crate::run_with(
            args.common.mode,
            &paths,
            options,
            machinery::daemon::shutdown_signal(),
        ),
    )
}
