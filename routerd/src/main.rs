//! routerd: thin binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "routerd",
    version,
    about = "Routes node API calls to the daemon serving them"
)]
struct Args {
    /// metal or container (accepted for symmetry; routerd behaves the same).
    #[arg(long, default_value = "metal")]
    mode: String,
    /// Root of the node's paths.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let paths = machinery::constants::NodePaths::under(&args.root);
    machinery::daemon::run("routerd", async {
        let router = routerd::Router::new(&paths)?;
        let socket = paths.socket("routerd");
        let listener = routerd::bind(&socket)?;
        tracing::info!(socket = %socket.display(), mode = %args.mode, "routerd serving");
        machinery::daemon::notify_ready();
        router
            .serve(listener, machinery::daemon::shutdown_signal())
            .await;
        Ok::<(), routerd::RouterError>(())
    })
}
