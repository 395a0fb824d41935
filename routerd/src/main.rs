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
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    // One thread: a proxy on a small node answers faster without cross-thread
    // wake-ups (measured by `cargo bench -p bench`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routerd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths = machinery::constants::NodePaths::under(&args.root);
    let result = runtime.block_on(async {
        let router = routerd::Router::new(&paths)?;
        let socket = paths.socket("routerd");
        let listener = routerd::bind(&socket)?;
        tracing::info!(socket = %socket.display(), mode = %args.mode, "routerd serving");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        router.serve(listener, shutdown).await;
        Ok::<(), routerd::RouterError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routerd: {e}");
            ExitCode::FAILURE
        }
    }
}
