//! routerd: routes each gRPC call by its service to the daemon serving it.
//!
//! An HTTP/2 server on a unix socket. For every request it takes the service
//! from `:path`, looks up the backend in [`route`] and forwards the request
//! (headers, body frames, trailers) over a multiplexed HTTP/2 connection to
//! that backend's socket, streaming both ways without decoding anything:
//! unary, server-, client- and bidirectional streaming calls all pass the
//! same way. An unknown service gets Unimplemented naming it; a backend that
//! is down gets Unavailable naming the backend. routerd itself serves gRPC
//! server reflection (v1 and v1alpha) for every contract.
//!
//! A client may instead ask to be routed once per package (apid does, for
//! every call it serves locally): routerd then hands it a connection to the
//! package's backend and leaves the data path ([`machinery::handoff`]).
#![forbid(unsafe_code)]

pub mod cli;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use machinery::constants::NodePaths;
use machinery::h2::{Body, H2Client, boxed, status_response};
use machinery::handoff;
use tokio::net::UnixListener;
use tower::ServiceExt as _;

/// The daemons routerd forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// machine.*, cluster.*, cosi.resource.* (the node's resources)
    Machined,
    /// time.*
    Timed,
    /// network.*
    Networkd,
    /// storage.*
    Udevd,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 4] = [
        Backend::Machined,
        Backend::Timed,
        Backend::Networkd,
        Backend::Udevd,
    ];

    /// The daemon's name (and socket name).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Machined => "machined",
            Backend::Timed => "timed",
            Backend::Networkd => "networkd",
            Backend::Udevd => "udevd",
        }
    }
}

/// The route table: the backend of a gRPC package.
#[must_use]
pub fn route(package: &str) -> Option<Backend> {
    match package {
        "machine" | "cluster" | "cosi.resource" => Some(Backend::Machined),
        "time" => Some(Backend::Timed),
        "network" => Some(Backend::Networkd),
        "storage" => Some(Backend::Udevd),
        _ => None,
    }
}

/// Packages that are deliberately not routed here (served on their own port).
pub const NOT_ROUTED: &[&str] = &["securityapi"];

type ReflectionService = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// The two reflection services, built from the descriptor set.
struct Reflection {
    v1: ReflectionService,
    v1alpha: ReflectionService,
}

impl Reflection {
    fn build() -> Result<Reflection, RouterError> {
        let v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        Ok(Reflection {
            v1: tower::util::BoxCloneSyncService::new(v1),
            v1alpha: tower::util::BoxCloneSyncService::new(v1alpha),
        })
    }
}

/// The router.
#[derive(Clone)]
pub struct Router {
    backends: Arc<HashMap<Backend, H2Client>>,
    /// The backends' sockets, for connections handed to routing clients.
    sockets: Arc<HashMap<Backend, std::path::PathBuf>>,
    /// Built on the first reflection call: decoding the whole descriptor
    /// set twice took routerd seconds at boot under emulation, on the path
    /// every other call waits for. Built on a blocking thread, so calls
    /// and routing requests keep moving on routerd's one thread meanwhile.
    reflection: Arc<tokio::sync::OnceCell<Result<Reflection, String>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Errors building the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The descriptor set could not be loaded for reflection.
    #[error("building gRPC reflection from the API descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The socket could not be bound.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Router {
    /// A router forwarding to the backend sockets under `paths`.
    ///
    /// # Errors
    /// None today: a descriptor set reflection cannot load is answered
    /// with `Internal` on the first reflection call instead.
    pub fn new(paths: &NodePaths) -> Result<Router, RouterError> {
        let sockets: HashMap<Backend, std::path::PathBuf> = Backend::ALL
            .iter()
            .map(|b| (*b, paths.socket(b.name())))
            .collect();
        let backends = sockets
            .iter()
            .map(|(b, path)| (*b, H2Client::unix(path.clone())))
            .collect();
        Ok(Router {
            backends: Arc::new(backends),
            sockets: Arc::new(sockets),
            reflection: Arc::default(),
        })
    }

    /// Handles one call.
    pub async fn handle(
        &self,
        request: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Body> {
        let path = request.uri().path().to_owned();
        let Some(service) = api::methods::service_of(&path) else {
            return status_response(&tonic::Status::unimplemented(format!(
                "malformed gRPC method path {path:?}"
            )));
        };
        if is_reflection(service) {
            let reflection = self
                .reflection
                .get_or_init(|| async {
                    tokio::task::spawn_blocking(|| Reflection::build().map_err(|e| e.to_string()))
                        .await
                        .unwrap_or_else(|e| Err(format!("building reflection: {e}")))
                })
                .await;
            let svc = match reflection {
                Ok(r) if service.ends_with("v1.ServerReflection") => r.v1.clone(),
                Ok(r) => r.v1alpha.clone(),
                Err(e) => return status_response(&tonic::Status::internal(e.clone())),
            };
            let request = request.map(tonic::body::Body::new);
            let Ok(response) = svc.oneshot(request).await;
            return response.map(boxed);
        }
        let package = api::methods::package_of(&path).unwrap_or_default();
        let Some(backend) = route(package) else {
            return status_response(&unknown_service(service));
        };
        let client = &self.backends[&backend];
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, boxed(body));
        match client.send(request).await {
            Ok(response) => response.map(boxed),
            Err(e) => {
                tracing::warn!(backend = backend.name(), error = %e, "backend unavailable");
                status_response(&tonic::Status::unavailable(format!(
                    "backend {} unavailable: {e}",
                    backend.name()
                )))
            }
        }
    }

    /// Answers a routing request (see [`machinery::handoff`]): a
    /// connection to the backend of `service`'s package, routerd itself for
    /// reflection, or the error a forwarded call would have had. Returns
    /// the stream when routerd goes on to serve HTTP/2 on it.
    async fn route_connection(
        &self,
        mut stream: tokio::net::UnixStream,
        service: &str,
    ) -> Option<tokio::net::UnixStream> {
        if is_reflection(service) {
            return match handoff::reply_self(&mut stream).await {
                Ok(()) => Some(stream),
                Err(e) => {
                    tracing::debug!(error = %e, "answering a routing request");
                    None
                }
            };
        }
        let package = api::methods::package_of_service(service).unwrap_or_default();
        let answer = match route(package) {
            None => Err(unknown_service(service)),
            Some(backend) => {
                let path = &self.sockets[&backend];
                match tokio::net::UnixStream::connect(path).await {
                    Ok(conn) => Ok(conn),
                    Err(e) => {
                        tracing::warn!(backend = backend.name(), error = %e, "backend unavailable");
                        Err(tonic::Status::unavailable(format!(
                            "backend {} unavailable: connecting to {}: {e}",
                            backend.name(),
                            path.display()
                        )))
                    }
                }
            }
        };
        let sent = match answer {
            Ok(conn) => handoff::reply_backend(&stream, &conn).await,
            Err(status) => {
                handoff::reply_error(&mut stream, i32::from(status.code()), status.message()).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "answering a routing request");
        }
        None
    }

    /// Serves on `listener` until `shutdown` resolves; connections then get
    /// a graceful HTTP/2 GOAWAY, and have [`DRAIN`] to finish what they
    /// carry before this returns. A connection that opens with a routing
    /// request is answered and, unless routerd serves the service itself,
    /// closed.
    pub async fn serve(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let builder = machinery::h2::server_builder();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Every connection's task, owned here: the drain waits for them.
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let mut stream = tokio::select! {
                // Finished connections are let go as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: pause rather than spin.
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let router = self.clone();
            let builder = builder.clone();
            let mut stop_rx = stop_rx.clone();
            connections.spawn(async move {
                let opening = tokio::select! {
                    opening = handoff::opening(&mut stream) => opening,
                    _ = stop_rx.changed() => return,
                };
                let stream = match opening {
                    Ok(handoff::Opening::Http2) => stream,
                    Ok(handoff::Opening::Route(service)) => {
                        match router.route_connection(stream, &service).await {
                            Some(stream) => stream,
                            None => return,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connection opening");
                        return;
                    }
                };
                let stream = match machinery::uds::Stream::from_tokio(stream) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "registering a connection");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.handle(req).await) }
                });
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { tracing::debug!(error = %e, "connection"); },
                    _ = stop_rx.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = connections.len(),
                "connections still open after the drain: closed"
            );
        }
        connections.abort_all();
    }
}

/// How long open connections have to finish at shutdown.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The answer for a service routerd has no backend for, relayed or routed.
fn unknown_service(service: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("unknown service {service}"))
}

/// Whether routerd serves `service` itself.
fn is_reflection(service: &str) -> bool {
    service == "grpc.reflection.v1.ServerReflection"
        || service == "grpc.reflection.v1alpha.ServerReflection"
}

/// Binds routerd's socket (removing a stale one).
///
/// # Errors
/// The socket cannot be bound.
pub fn bind(path: &std::path::Path) -> Result<UnixListener, RouterError> {
    machinery::daemon::bind_unix(path).map_err(|source| RouterError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_service_has_a_route_or_is_served_elsewhere() {
        for service in api::methods::services() {
            let package = api::methods::package_of_service(service).unwrap_or_default();
            assert!(
                route(package).is_some() || NOT_ROUTED.contains(&package),
                "{service} has no backend in routerd's table"
            );
        }
    }

    #[test]
    fn table() {
        assert_eq!(route("machine"), Some(Backend::Machined));
        assert_eq!(route("cluster"), Some(Backend::Machined));
        assert_eq!(route("time"), Some(Backend::Timed));
        assert_eq!(route("network"), Some(Backend::Networkd));
        assert_eq!(route("storage"), Some(Backend::Udevd));
        assert_eq!(route("cosi.resource"), Some(Backend::Machined));
        assert_eq!(route("inspect"), None);
        assert_eq!(route("securityapi"), None);
    }
}
