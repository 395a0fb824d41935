//! What every daemon's thin `main` does: log to stderr (machined collects
//! it into the service's log), run one async body on a single-threaded
//! runtime, stop on SIGTERM or SIGINT, and turn an error into one line and
//! a failure exit status.

use std::fmt::Display;
use std::process::ExitCode;

/// Runs `body` as daemon `name`. One thread: the daemons are small, and on
/// a small node cross-thread wake-ups cost more than they give.
pub fn run<F, E>(name: &str, body: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let _ = tracing_subscriber_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tracing_subscriber_init() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init()
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be set).
pub async fn shutdown_signal() {
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
        (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
            one.recv().await;
        }
        (Err(_), Err(_)) => std::future::pending::<()>().await,
    }
    tracing::info!("stopping");
}

/// Binds a daemon's unix socket at `path`: creates its directory and
/// removes a stale socket first, so a restart never finds the old one.
///
/// # Errors
/// The socket cannot be bound.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path)
}
