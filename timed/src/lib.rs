//! timed: keeps the node clock in sync with SNTP and serves `time.TimeService`.
//!
//! Background: a node boots with whatever the RTC says, possibly 1970, and
//! mTLS fails with "certificate not yet valid" until the clock is right.
//! timed sets it from the NTP servers in the machine config
//! (`machine.time.servers`, default `time.cloudflare.com`) and tells the rest
//! of the node when time is synced.
//!
//! Design: a library of small parts with a thin binary.
//! - [`sntp`]: a minimal SNTP v4 client (one query → one [`sntp::Sample`]),
//!   behind the [`sntp::TimeSource`] trait.
//! - [`clock`]: the [`clock::Clock`] trait; [`clock::SystemClock`] steps
//!   and slews the kernel clock (metal), [`clock::ReadOnlyClock`] never
//!   touches it (container mode: the host owns the clock).
//! - [`sync`]: the reconcile loop and its pure decision ([`sync::decide`]:
//!   step above 128 ms, else slew) with fail-over across servers and
//!   bounded exponential backoff; publishes "time synced".
//! - [`server`]: the gRPC `TimeService` on `/system/run/timed/timed.sock`.
//! - [`config`]: the time settings, re-read from the live machine config
//!   on every use.
//!
//! The only `unsafe` is the one `adjtimex(2)` call in `clock` (rustix has
//! no wrapper for it), allowed on that private module alone.
#![deny(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod server;
pub mod sntp;
pub mod sync;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::time::time_service_server::TimeServiceServer;
use machinery::constants::NodePaths;
use tokio::net::UnixListener;

pub use clock::{Clock, ClockError, FakeClock, Offset, ReadOnlyClock, SystemClock};
pub use config::{ConfigSource, LiveConfig, TimeConfig};
pub use server::TimeServer;
pub use sntp::{Sample, Sntp, SntpError, TimeSource};
pub use sync::{Action, SyncOptions, Syncer, decide};

/// The daemon's name (and socket name).
pub const NAME: &str = "timed";

/// How the node runs: on metal timed owns the kernel clock; in a
/// container the host does, and timed measures and serves, never sets.
pub use machinery::mode::Mode;

/// The clock timed corrects in `mode`.
#[must_use]
pub fn clock_for(mode: Mode) -> Arc<dyn Clock> {
    match mode {
        Mode::Metal => Arc::new(SystemClock::new()),
        Mode::Container => Arc::new(ReadOnlyClock),
    }
}

/// Errors running timed.
#[derive(Debug, thiserror::Error)]
pub enum TimedError {
    /// The socket could not be bound.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving time.TimeService: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The "time synced" marker file: `<root>/system/run/timed/synced`.
#[must_use]
pub fn marker_path(paths: &NodePaths) -> PathBuf {
    paths.socket_dir(NAME).join("synced")
}

/// Whether the marker says a server's answer synced the clock (not sync
/// being off, `bootTimeout` passing, or a container's host clock): only
/// then is the clock known to be right.
#[must_use]
pub fn synced_by_a_server(paths: &NodePaths) -> bool {
    std::fs::read_to_string(marker_path(paths))
        .is_ok_and(|reason| reason.starts_with(sync::SYNCED_BY_SERVER))
}

/// How many times timed stepped the clock by more than 15 minutes this
/// boot (`<root>/system/run/timed/epoch`; absent: 0).
#[must_use]
pub fn epoch_path(paths: &NodePaths) -> PathBuf {
    paths.socket_dir(NAME).join(sync::EPOCH_FILE)
}

/// Binds the unix socket at `path`: creates its directory and removes a
/// stale socket first.
///
/// # Errors
/// The socket cannot be bound.
pub fn bind(path: &Path) -> Result<UnixListener, TimedError> {
    machinery::daemon::bind_unix(path).map_err(|source| TimedError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serves `service` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server fails.
pub async fn serve<S: TimeSource + 'static>(
    service: TimeServer<S>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TimedError> {
    tonic::transport::Server::builder()
        .add_service(TimeServiceServer::new(service))
        .serve_with_incoming_shutdown(machinery::uds::incoming(listener), shutdown)
        .await?;
    Ok(())
}

/// Runs timed for the node at `paths`: binds `timed.sock`, then serves the
/// TimeService and runs the sync loop with the live machine config
/// until `shutdown` resolves.
///
/// # Errors
/// The socket cannot be bound, or the server fails.
pub async fn run(
    mode: Mode,
    paths: &NodePaths,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TimedError> {
    let config = Arc::new(LiveConfig::for_node(paths));
    run_with(mode, paths, config, SyncOptions::default(), shutdown).await
}

/// [`run`] with the settings from `config` and the loop tuned by `options`
/// (its marker is always the node's [`marker_path`]).
///
/// # Errors
/// The socket cannot be bound, or the server fails.
pub async fn run_with(
    mode: Mode,
    paths: &NodePaths,
    config: Arc<dyn ConfigSource>,
    options: SyncOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TimedError> {
    let socket = paths.socket(NAME);
    let listener = bind(&socket)?;
    let options = SyncOptions {
        marker: Some(marker_path(paths)),
        ..options
    };
    let syncer = Syncer::new(clock_for(mode), Sntp, config.clone(), options);
    tracing::info!(
        socket = %socket.display(),
        mode = mode.as_str(),
        servers = ?config.time_config().servers,
        "timed serving"
    );
    machinery::daemon::notify_ready();
    let result = if mode == Mode::Container {
        // The host owns the clock, and a container-mode node (tests, local
        // clusters) sends nothing to the network unasked: no sync loop.
        // Time and TimeCheck still query on request.
        if let Err(e) = std::fs::write(marker_path(paths), b"") {
            tracing::warn!(error = %e, "writing the time-synced marker");
        }
        drop(syncer);
        serve(TimeServer::new(Sntp, config), listener, shutdown).await
    } else {
        tokio::select! {
            result = serve(TimeServer::new(Sntp, config), listener, shutdown) => result,
            () = syncer.run(std::future::pending()) => Ok(()),
        }
    };
    let _ = std::fs::remove_file(&socket);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!("metal".parse::<Mode>(), Ok(Mode::Metal));
        assert_eq!("container".parse::<Mode>(), Ok(Mode::Container));
        assert!("cloud".parse::<Mode>().is_err());
        assert_eq!(Mode::Container.as_str(), "container");
        assert!(clock_for(Mode::Container).is_read_only());
        assert!(!clock_for(Mode::Metal).is_read_only());
    }

    #[test]
    fn paths() {
        let paths = NodePaths::under("/tmp/node");
        assert_eq!(
            marker_path(&paths),
            Path::new("/tmp/node/system/run/timed/synced")
        );
        assert_eq!(
            paths.socket(NAME),
            Path::new("/tmp/node/system/run/timed/timed.sock")
        );
    }

    #[tokio::test]
    async fn run_serves_on_the_node_socket_and_stops() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = NodePaths::under(dir.path());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let paths = paths.clone();
            tokio::spawn(async move {
                // Sync disabled, and a server on loopback where nothing
                // listens: no network needed.
                run_with(
                    Mode::Container,
                    &paths,
                    Arc::new(TimeConfig {
                        disabled: true,
                        ..TimeConfig::with_servers(["127.0.0.1:9"])
                    }),
                    SyncOptions::default(),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            })
        };
        let socket = paths.socket(NAME);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no socket");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let channel = machinery::grpc::unix_channel(&socket)
            .await
            .expect("connect");
        let mut client = api::time::time_service_client::TimeServiceClient::new(channel);
        let status = client
            .time_check(api::time::TimeRequest {
                server: String::new(),
            })
            .await
            .expect_err("empty server");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // Sync disabled: Time still asks the configured server.
        let status = client.time(()).await.expect_err("nothing listens");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("127.0.0.1:9"), "{status:?}");
        drop(client);
        // Container mode: synced at once.
        let marker = marker_path(&paths);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "no marker");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).expect("running");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("no panic")
            .expect("no error");
        assert!(!socket.exists());
    }
}
