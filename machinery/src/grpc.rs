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
