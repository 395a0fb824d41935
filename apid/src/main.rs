//! apid: thin binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "apid", version, about = "The node's mTLS API front door")]
struct Args {
    /// metal or container.
    #[arg(long, default_value = "metal")]
    mode: String,
    /// Root of the node's paths.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:50000")]
    listen: SocketAddr,
    /// Names and addresses of this node (comma-separated); the listen
    /// address and the kernel hostname are always included.
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let paths = machinery::constants::NodePaths::under(&args.root);
    let mut names = args.names.clone();
    names.push(args.listen.ip().to_string());
    names.push(args.listen.to_string());
    names.push(rustix_hostname());
    names.push("localhost".into());
    let options = apid::Options {
        listen: args.listen,
        routerd: paths.socket("routerd"),
        credentials: paths.secrets_dir("api"),
        self_names: names.clone(),
        peer_port: machinery::constants::APID_PORT,
    };
    machinery::daemon::run("apid", async {
        let tls =
            apid::tls::Reloader::start(options.credentials.clone(), names, Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", options.listen))?;
        tracing::info!(listen = %options.listen, maintenance = tls.borrow().maintenance, mode = %args.mode, "apid serving");
        machinery::daemon::notify_ready();
        apid::Apid::new(options, tls)
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
