//! gRPC client plumbing shared by the daemons, talosctl and the tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors connecting to a gRPC server.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {target}: {source}")]
pub struct ConnectError {
    /// What was dialled.
    pub target: String,
    /// The cause.
    pub source: tonic::transport::Error,
}

/// A channel to a gRPC server on a unix socket that connects on first use
/// (and reconnects after the server restarts).
#[must_use]
pub fn unix_channel_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_path_buf()))
}

/// Connects to a gRPC server on a unix socket.
///
/// # Errors
/// The socket does not answer.
pub async fn unix_channel(path: &Path) -> Result<Channel, ConnectError> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
        .map_err(|source| ConnectError {
            target: path.display().to_string(),
            source,
        })
}

fn endpoint() -> Endpoint {
    // The authority is a placeholder: the connector ignores it.
    Endpoint::from_static("http://localhost")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future: Send,
> + Clone {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(TokioIo::new)
        }
    })
}

/// A channel to `addr` over TLS with `config` (ALPN h2 is set here),
/// verifying the server as `server_name`. Connects on first use.
///
/// # Errors
/// `server_name` is not a valid DNS name or IP address.
pub fn tls_channel(
    addr: String,
    server_name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Channel, InvalidServerName> {
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|_| InvalidServerName(server_name.to_owned()))?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let service = tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        let name = name.clone();
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint().connect_with_connector_lazy(service))
}

/// A server name that is neither a DNS name nor an IP address.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid server name (a DNS name or an IP address)")]
pub struct InvalidServerName(pub String);
