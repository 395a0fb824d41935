//! trustd's command line and entry point, shared by the `trustd` binary
//! and by machined, whose executable runs trustd in the boot image
//! (see `machined::daemons`).

use std::net::SocketAddr;
use std::process::ExitCode;

use machinery::cli::{self, Common, Opt, Spec, value};

const SPEC: Spec = Spec {
    name: "trustd",
    about: "Signs worker certificate requests",
    options: &[
        cli::MODE,
        cli::ROOT,
        Opt::new(
            "listen",
            "LISTEN",
            "Listen address [default: 0.0.0.0:50001]",
        ),
    ],
};

#[derive(Debug)]
struct Args {
    common: Common,
    listen: SocketAddr,
}

impl Args {
    fn from_env() -> Args {
        let mut args = Args {
            common: Common::default(),
            listen: ([0, 0, 0, 0], machinery::constants::TRUSTD_PORT).into(),
        };
        SPEC.parse_env_or_exit(|option, v| {
            match option {
                "listen" => args.listen = value(v)?,
                other => args.common.set(other, v)?,
            }
            Ok(())
        });
        args
    }
}

/// Runs trustd with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Args::from_env();
    let dir = machinery::constants::NodePaths::under(&args.common.root).secrets_dir("trustd");
    machinery::daemon::run("trustd", async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", args.listen))?;
        tracing::info!(listen = %args.listen, mode = %args.common.mode, "trustd serving");
        machinery::daemon::notify_ready();
        tokio::select! {
            () = crate::serve(dir, listener) => {}
            () = machinery::daemon::shutdown_signal() => {}
        }
        Ok::<(), String>(())
    })
}
