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
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let dir = machinery::constants::NodePaths::under(&args.root).secrets_dir("trustd");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trustd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => {
                tracing::info!(listen = %args.listen, mode = %args.mode, "trustd serving");
                trustd::serve(dir, listener).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("trustd: binding {}: {e}", args.listen);
                ExitCode::FAILURE
            }
        }
    })
}
