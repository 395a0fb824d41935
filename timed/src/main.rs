//! timed: thin binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "timed",
    version,
    about = "Keeps the clock in sync with SNTP; serves time.TimeService"
)]
struct Args {
    /// metal (timed sets the clock) or container (the host owns it).
    #[arg(long, default_value = "metal")]
    mode: timed::Mode,
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("timed: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths = machinery::constants::NodePaths::under(&args.root);
    let result = runtime.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut term), Err(_)) => {
                    term.recv().await;
                }
                _ => std::future::pending::<()>().await,
            }
            tracing::info!("timed stopping");
        };
        timed::run(args.mode, &paths, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("timed: {e}");
            ExitCode::FAILURE
        }
    }
}
