//! trustd's command line and entry point, shared by the `trustd` binary
//! and by machined, whose executable runs trustd in the boot image
//! (see `machined::daemons`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use machinery::cli::{self, Opt, Spec, value};

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
    mode: machinery::mode::Mode,
    root: PathBuf,
    listen: SocketAddr,
}

impl Args {
    fn from_env() -> Args {
        let mut args = Args {
            mode: machinery::mode::Mode::Metal,
            root: PathBuf::from("/"),
            listen: ([0, 0, 0, 0], machinery::constants::TRUSTD_PORT).into(),
        };
        SPEC.parse_env_or_exit(|option, v| {
            match option {
                "mode" => args.mode = value(v)?,
                "root" => args.root = v.into(),
                "listen" => args.listen = value(v)?,
                other => return Err(format!("no option --{other}")),
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
    let dir = machinery::constants::NodePaths::under(&args.root).secrets_dir("trustd");
    machinery::daemon::run("trustd", async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", args.listen))?;
        tracing::info!(listen = %args.listen, mode = %args.mode, "trustd serving");
        machinery::daemon::notify_ready();
        tokio::select! {
            () = crate::serve(dir, listener) => {}
            () = machinery::daemon::shutdown_signal() => {}
        }
        Ok::<(), String>(())
    })
}
