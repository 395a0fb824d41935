//! networkd: links, addresses, routes, DHCP, hostname and resolvers;
//! serves `network.NetworkService`.
//!
//! # Background
//!
//! A node needs its links up and addressed before anything else on it can
//! talk: apid, trustd, etcd, the kubelet. Upstream Talos configures the
//! network from the machine config (`machine.network`), from the kernel
//! arguments (`ip=`, `talos.network.interface.ignore=`) and with DHCP on
//! every link left unconfigured.
//!
//! # Design
//!
//! A reconcile loop over typed state, with the decisions pure and the I/O
//! at the edges:
//!
//! - [`cmdline`]: parses `ip=` (the kernel's syntax) and
//!   `talos.network.interface.ignore=`.
//! - [`settings`]: `machine.network` as typed values; the live config
//!   (machined's copy) is re-read when its file changes.
//! - [`state`]: the observed links, addresses and routes, converted from
//!   rtnetlink messages.
//! - [`plan`]: the desired state per link and the pure
//!   `plan(desired, observed) -> Vec<Action>`.
//! - [`netlink`]: dumps and actions through rtnetlink.
//! - [`dhcp`]: the DHCPv4 client, a pure state machine
//!   ([`dhcp::client`]) and a task per link ([`dhcp::io`]).
//! - [`hostname`]: config, `ip=`, DHCP option 12, else a generated
//!   `talos-xxxxx`.
//! - [`hardware`]: a link's driver, bus address and PCI ids from sysfs,
//!   for `deviceSelector` (and machined's `LinkStatus`).
//! - [`files`]: `resolv.conf`, `hosts`, `hostname` and the node addresses,
//!   rendered purely and written atomically.
//! - [`reconcile`]: the event-driven loop (netlink multicast, no polling).
//! - [`server`]: the gRPC service on `/system/run/networkd/networkd.sock`.
//!
//! # Modes
//!
//! - **metal**: networkd owns the network: links up, MTUs, static
//!   addresses and routes, DHCP, `/system/etc/{resolv.conf,hosts,hostname}`,
//!   the kernel hostname (only when its root is `/`).
//! - **container**: the host owns the network. networkd reports (the API,
//!   the addresses file) and changes nothing: no link is touched, no DHCP
//!   runs, nothing is written outside `/system/run/networkd`.
//!
//! Either way networkd writes the node's addresses to
//! `/system/run/networkd/addresses` (one per line; machined reads it for
//! certificate SANs).
//!
//! # Limitations
//!
//! - IPv4 DHCP only (no DHCPv6; IPv6 router advertisements are the
//!   kernel's); static IPv6 addresses and routes work.
//! - VIPs and DHCPv6 in the machine config are reported and skipped;
//!   `deviceSelector`, VLANs, dummy links, bonds, bridges and WireGuard
//!   work, and the links made for them are deleted when the config drops
//!   them (while networkd runs: what it owns is kept in memory).
//! - The DHCP client uses a UDP socket, which needs reverse-path filtering
//!   off on the link until it has an address (see [`dhcp::io`]).
#![forbid(unsafe_code)]

pub mod cli;
pub mod cmdline;
pub mod dhcp;
pub mod files;
pub mod hardware;
pub mod hostname;
pub mod netlink;
pub mod plan;
pub mod reconcile;
pub mod server;
pub mod settings;
pub mod state;
pub mod wireguard;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::network::network_service_server::NetworkServiceServer;
use machinery::constants::NodePaths;
use tokio::net::UnixListener;
use tokio::sync::watch;

pub use cmdline::KernelArgs;
pub use reconcile::Reconciler;
pub use server::NetworkServer;

/// The daemon's name (and socket name).
pub const NAME: &str = "networkd";

/// Where the kernel command line is read from on a node.
pub const DEFAULT_CMDLINE: &str = "/proc/cmdline";

/// How the node runs: on metal networkd owns the network; in a container
/// the host does, and networkd only reports.
pub use machinery::mode::Mode;

/// Tunables; the defaults are a node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The kernel command line file (metal mode).
    pub cmdline: PathBuf,
    /// Renew DHCP leases no later than this after acquiring them (tests).
    pub dhcp_renew_after: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cmdline: PathBuf::from(DEFAULT_CMDLINE),
            dhcp_renew_after: None,
        }
    }
}

/// Errors running networkd.
#[derive(Debug, thiserror::Error)]
pub enum NetworkdError {
    /// The rtnetlink socket could not be opened.
    #[error("opening the rtnetlink socket: {0}")]
    Netlink(#[source] std::io::Error),
    /// The socket could not be bound.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving network.NetworkService: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds the unix socket at `path`: creates its directory and removes a
/// stale socket first.
///
/// # Errors
/// The socket cannot be bound.
pub fn bind(path: &Path) -> Result<UnixListener, NetworkdError> {
    machinery::daemon::bind_unix(path).map_err(|source| NetworkdError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serves `service` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server fails.
pub async fn serve(
    service: NetworkServer,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetworkdError> {
    tonic::transport::Server::builder()
        .add_service(NetworkServiceServer::new(service))
        .serve_with_incoming_shutdown(machinery::uds::incoming(listener), shutdown)
        .await?;
    Ok(())
}

/// Runs networkd for the node at `paths` with the default [`Options`]
/// until `shutdown` resolves.
///
/// # Errors
/// The rtnetlink socket cannot be opened, the API socket cannot be bound,
/// or the server fails.
pub async fn run(
    mode: Mode,
    paths: &NodePaths,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetworkdError> {
    run_with(mode, paths, Options::default(), shutdown).await
}

/// [`run`] with `options`.
///
/// Subscribes to rtnetlink events, binds `networkd.sock`, then serves the
/// API and runs the reconcile loop until `shutdown` resolves (or the server
/// fails); DHCP leases are released on the way out.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    mode: Mode,
    paths: &NodePaths,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetworkdError> {
    // Subscribed before the first dump, so that no change is missed.
    let (connection, handle, messages) =
        rtnetlink::new_multicast_connection(&netlink::GROUPS).map_err(NetworkdError::Netlink)?;
    tokio::spawn(connection);

    let socket = paths.socket(NAME);
    let listener = bind(&socket)?;
    let kernel = match mode {
        Mode::Metal => match KernelArgs::read(&options.cmdline) {
            Ok(kernel) => kernel,
            Err(e) => {
                tracing::warn!(error = %e, "going on without kernel arguments");
                KernelArgs::default()
            }
        },
        Mode::Container => KernelArgs::default(),
    };
    for problem in &kernel.problems {
        tracing::warn!("ignoring the kernel argument {problem}");
    }
    tracing::info!(
        socket = %socket.display(),
        mode = mode.as_str(),
        ignored = ?kernel.ignore,
        "networkd serving"
    );
    machinery::daemon::notify_ready();

    let reconciler = Reconciler::new(mode, paths.clone(), handle.clone(), options, kernel);
    let server = NetworkServer::new(handle);
    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = async {
        let mut stopped = stop_rx.clone();
        let result = serve(server, listener, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
        // Whatever ended the server ends the rest.
        let _ = stop_tx.send(true);
        result
    };
    let reconciling = reconciler.run(messages, stop_rx.clone());
    let signalling = async {
        let mut stopped = stop_rx.clone();
        tokio::select! {
            () = shutdown => {
                tracing::info!("networkd stopping");
                let _ = stop_tx.send(true);
            }
            _ = stopped.wait_for(|stop| *stop) => {}
        }
    };
    let (result, (), ()) = tokio::join!(serving, reconciling, signalling);
    let _ = std::fs::remove_file(&socket);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn modes() {
        assert_eq!("metal".parse::<Mode>(), Ok(Mode::Metal));
        assert_eq!("container".parse::<Mode>(), Ok(Mode::Container));
        assert!("cloud".parse::<Mode>().is_err());
        assert_eq!(Mode::Container.as_str(), "container");
        assert_eq!(Options::default().cmdline, Path::new("/proc/cmdline"));
    }

    /// Container mode needs no privilege: the API answers from the test
    /// process's own network namespace, and only the socket directory is
    /// written.
    #[tokio::test]
    async fn container_mode_serves_the_kernel_view_and_writes_only_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = NodePaths::under(dir.path());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let socket = paths.socket(NAME);
        let client = async {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() {
                assert!(Instant::now() < deadline, "no socket");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let channel = machinery::grpc::unix_channel(&socket)
                .await
                .expect("connect");
            let mut client =
                api::network::network_service_client::NetworkServiceClient::new(channel);
            let interfaces = client
                .interfaces(())
                .await
                .expect("interfaces")
                .into_inner();
            assert_eq!(interfaces.messages.len(), 1);
            let lo = interfaces.messages[0]
                .interfaces
                .iter()
                .find(|i| i.name == "lo")
                .expect("every namespace has lo");
            assert!(lo.flags & server::GO_FLAG_LOOPBACK != 0, "{lo:?}");
            let routes = client.routes(()).await.expect("routes").into_inner();
            assert_eq!(routes.messages.len(), 1);
            // The addresses file appears, in the socket directory.
            let addresses = files::addresses_path(&paths);
            while !addresses.exists() {
                assert!(Instant::now() < deadline, "no addresses file");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(client);
            stop.send(()).expect("running");
        };
        let daemon = run_with(Mode::Container, &paths, Options::default(), async {
            let _ = stopped.await;
        });
        let (result, ()) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(daemon, client)
        })
        .await
        .expect("stops in time");
        result.expect("no error");
        assert!(!socket.exists());
        // Nothing but the socket directory was created.
        let top: Vec<String> = std::fs::read_dir(dir.path().join("system"))
            .expect("system")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(top, vec!["run"]);
        assert!(!files::resolv_conf_path(&paths).exists());
    }
}
