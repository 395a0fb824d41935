//! HTTP/2 plumbing for the gRPC proxies (routerd, apid).
//!
//! The proxies never decode messages: they move HTTP/2 requests, bodies
//! (gRPC frames) and trailers between connections. This module holds what
//! both need: one body type, gRPC error responses, and [`H2Client`], one
//! multiplexed HTTP/2 connection per backend, made on first use and
//! remade when it breaks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the proxies hand around.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
#[must_use]
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of one chunk.
#[must_use]
pub fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A trailers-only gRPC response carrying `status` (HTTP 200, grpc-status
/// and grpc-message in the headers), as gRPC servers answer errors.
#[must_use]
pub fn status_response(status: &tonic::Status) -> http::Response<Body> {
    let mut response = http::Response::new(empty());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    // add_header only fails for messages that cannot be a header value even
    // percent-encoded, which tonic's encoding rules out.
    let _ = status.add_header(response.headers_mut());
    response
}

/// Frames a protobuf message as one gRPC message (uncompressed).
#[must_use]
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// Errors reaching a backend.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// The backend.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// HTTP/2 failed.
    #[error("{target}: {source}")]
    Http {
        /// The backend.
        target: String,
        /// The cause.
        source: hyper::Error,
    },
}

/// A stream any connector yields.
pub trait Io: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static> Io for T {}

type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;
type ConnectFn = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// One lazily made, multiplexed HTTP/2 connection to a backend.
#[derive(Clone)]
pub struct H2Client {
    target: Arc<str>,
    connect: ConnectFn,
    sender: Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>,
}

impl fmt::Debug for H2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Client")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl H2Client {
    /// A client that connects with `connect`; `target` names it in errors.
    pub fn new<F, Fut, S>(target: impl Into<String>, connect: F) -> H2Client
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send + 'static,
        S: Io,
    {
        let connect: ConnectFn = Arc::new(move || {
            let fut = connect();
            Box::pin(async move { fut.await.map(|s| Box::new(s) as Box<dyn Io>) })
        });
        H2Client {
            target: Arc::from(target.into()),
            connect,
            sender: Arc::default(),
        }
    }

    /// A client for a unix socket.
    #[must_use]
    pub fn unix(path: std::path::PathBuf) -> H2Client {
        let target = path.display().to_string();
        H2Client::new(target, move || {
            let path = path.clone();
            async move { crate::uds::Stream::connect(path).await.map(TokioIo::new) }
        })
    }

    /// The backend's name.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn sender(&self) -> Result<SendRequest<Body>, ClientError> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let io = (self.connect)()
            .await
            .map_err(|source| ClientError::Connect {
                target: self.target.to_string(),
                source,
            })?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
        let (sender, conn) = builder
            .handshake(io)
            .await
            .map_err(|source| ClientError::Http {
                target: self.target.to_string(),
                source,
            })?;
        let target = Arc::clone(&self.target);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target = %target, error = %e, "backend connection closed");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Sends a request and returns the response head with its streaming body.
    ///
    /// # Errors
    /// The backend cannot be reached or the exchange fails.
    pub async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(|source| ClientError::Http {
            target: self.target.to_string(),
            source,
        })?;
        sender
            .send_request(request)
            .await
            .map_err(|source| ClientError::Http {
                target: self.target.to_string(),
                source,
            })
    }

    /// Drops the cached connection (e.g. after the peer's identity changed).
    pub async fn reset(&self) {
        *self.sender.lock().await = None;
    }
}

/// An HTTP/2 server builder tuned like the client.
#[must_use]
pub fn server_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(1024 * 1024);
    b
}
