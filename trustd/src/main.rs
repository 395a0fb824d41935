//! trustd: thin binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "trustd", version, about = "Signs worker certificate requests")]
struct Args {
    /// metal or container.
    #[arg(long, default_value = "metal")]
    mode: String,
    /// Root of the node's paths.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:50001")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = machinery::constants::NodePaths::under(&args.root).secrets_dir("trustd");
    machinery::daemon::run("trustd", async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", args.listen))?;
        tracing::info!(listen = %args.listen, mode = %args.mode, "trustd serving");
        machinery::daemon::notify_ready();
        tokio::select! {
            () = trustd::serve(dir, listener) => {}
            () = machinery::daemon::shutdown_signal() => {}
        }
        Ok::<(), String>(())
    })
}
