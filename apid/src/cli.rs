//! apid's command line and entry point, shared by the `apid` binary
//! and by machined, whose executable runs apid in the boot image
//! (see `machined::daemons`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use machinery::cli::{self, Common, Opt, Spec, value};

const SPEC: Spec = Spec {
    name: "apid",
    about: "The node's mTLS API front door",
    options: &[
        cli::MODE,
        cli::ROOT,
        Opt::new(
            "listen",
            "LISTEN",
            "Listen address [default: 0.0.0.0:50000]",
        ),
        Opt::new(
            "names",
            "NAMES",
            "Names and addresses of this node (comma-separated; repeatable); the listen address and the kernel hostname are always included",
        ),
    ],
};

#[derive(Debug)]
struct Args {
    common: Common,
    listen: SocketAddr,
    names: Vec<String>,
}

impl Args {
    fn from_env() -> Args {
        let mut args = Args {
            common: Common::default(),
            listen: ([0, 0, 0, 0], machinery::constants::APID_PORT).into(),
            names: Vec::new(),
        };
        SPEC.parse_env_or_exit(|option, v| {
            match option {
                "listen" => args.listen = value(v)?,
                "names" => args
                    .names
                    .extend(v.split(',').filter(|n| !n.is_empty()).map(str::to_owned)),
                other => args.common.set(other, v)?,
            }
            Ok(())
        });
        args
    }
}

/// Runs apid with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Args::from_env();
    let paths = machinery::constants::NodePaths::under(&args.common.root);
    let mut names = args.names.clone();
    names.push(args.listen.ip().to_string());
    names.push(args.listen.to_string());
    names.push(rustix_hostname());
    names.push("localhost".into());
    let options = crate::Options {
        listen: args.listen,
        routerd: paths.socket("routerd"),
        credentials: paths.secrets_dir("api"),
        self_names: names.clone(),
        peer_port: machinery::constants::APID_PORT,
    };
    machinery::daemon::run("apid", async {
        let tls =
            crate::tls::Reloader::start(options.credentials.clone(), names, Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", options.listen))?;
        tracing::info!(listen = %options.listen, maintenance = tls.borrow().maintenance, mode = %args.common.mode, "apid serving");
        machinery::daemon::notify_ready();
        crate::Apid::new(options, tls)
            .serve(listener, machinery::daemon::shutdown_signal())
            .await;
        Ok::<(), String>(())
    })
}

fn rustix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
