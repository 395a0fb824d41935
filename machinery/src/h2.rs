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
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

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

/// `uri`'s path (and query) under `scheme` and `authority`; `uri` itself
/// if they make no URI.
#[must_use]
pub fn with_authority(uri: &http::Uri, scheme: &str, authority: &str) -> http::Uri {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| uri.clone())
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
        source: h2::Error,
    },
}

/// A stream any connector yields.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;
type ConnectFn = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// A keep-alive PING goes out this long after the last one was answered,
/// so a peer that vanished without closing is noticed during long streams.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered this long ends the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// What a request may send before the flow-control window is waited for:
/// a unary message goes out whole, in the same write as its HEADERS.
const SEND_AHEAD: usize = 1024 * 1024;

/// One made connection.
#[derive(Clone)]
struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    /// Set when the connection task ends.
    closed: Arc<AtomicBool>,
}

/// One lazily made, multiplexed HTTP/2 connection to a backend.
///
/// It speaks HTTP/2 with the `h2` crate directly rather than through
/// hyper's client, which hands every request body to a task of its own
/// that waits for the new stream's flow-control window: the HEADERS and
/// the DATA of even a one-message call then leave in two writes, each
/// waking the peer. Here what the body has ready is queued with the
/// HEADERS, and only a body that is still streaming gets a task.
#[derive(Clone)]
pub struct H2Client {
    target: Arc<str>,
    connect: ConnectFn,
    connection: Arc<tokio::sync::Mutex<Option<Connection>>>,
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
            connection: Arc::default(),
        }
    }

    /// A client for a unix socket.
    #[must_use]
    pub fn unix(path: std::path::PathBuf) -> H2Client {
        let target = path.display().to_string();
        H2Client::new(target, move || {
            let path = path.clone();
            async move { crate::uds::Stream::connect(path).await }
        })
    }

    /// The backend's name.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    fn http_error(&self, source: h2::Error) -> ClientError {
        ClientError::Http {
            target: self.target.to_string(),
            source,
        }
    }

    async fn connection(&self) -> Result<Connection, ClientError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.closed.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let io = (self.connect)()
            .await
            .map_err(|source| ClientError::Connect {
                target: self.target.to_string(),
                source,
            })?;
        let (sender, mut connection) = h2::client::Builder::new()
            // As hyper's client: no server push, at most 100 streams until
            // the server's SETTINGS say otherwise, and a 1 MiB send buffer
            // per stream (as much as SEND_AHEAD queues).
            .enable_push(false)
            .initial_max_send_streams(100)
            .max_send_buffer_size(SEND_AHEAD)
            .initial_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| self.http_error(e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let target = Arc::clone(&self.target);
        let done = Arc::clone(&closed);
        tokio::spawn(async move {
            let result = match ping {
                Some(ping) => {
                    tokio::select! {
                        r = &mut connection => r,
                        lost = keep_alive(ping) => Err(lost),
                    }
                }
                None => connection.await,
            };
            done.store(true, Ordering::Release);
            if let Err(e) = result {
                tracing::debug!(target = %target, error = %e, "backend connection closed");
            }
        });
        let made = Connection { sender, closed };
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Sends a request and returns the response head with its streaming body.
    ///
    /// # Errors
    /// The backend cannot be reached or the exchange fails.
    pub async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        let (mut parts, body) = request.into_parts();
        strip_connection_headers(&mut parts.headers);
        if parts.uri.scheme().is_none() || parts.uri.authority().is_none() {
            // HTTP/2 needs :scheme and :authority; a backend on a socket
            // has no name of its own.
            parts.uri = with_authority(&parts.uri, "http", "localhost");
        }
        let end = body.is_end_stream();
        let mut sender = self.ready().await?;
        let (response, stream) = match sender
            .sender
            .send_request(http::Request::from_parts(parts, ()), end)
        {
            Ok(sent) => sent,
            Err(e) => {
                self.forget_closed(&sender.closed).await;
                return Err(self.http_error(e));
            }
        };
        // Dropped with the response (or its body): tells a body still
        // streaming that nobody waits for the answer any more.
        let (cancel, cancelled) = oneshot::channel();
        if !end && let Some((body, stream)) = send_ready(body, stream) {
            tokio::spawn(send_rest(body, stream, cancelled));
        }
        let response = response.await.map_err(|e| self.http_error(e))?;
        Ok(response.map(|recv| RecvBody {
            recv,
            data_done: false,
            done: false,
            _cancel: cancel,
        }))
    }

    /// A connection ready for a new stream. One the peer has sent GOAWAY
    /// on (or that broke) refuses new streams while its open ones drain:
    /// it is forgotten and a new one made, once, as no stream was opened.
    async fn ready(&self) -> Result<Ready, ClientError> {
        let mut retried = false;
        loop {
            let connection = self.connection().await?;
            match connection.sender.clone().ready().await {
                Ok(sender) => {
                    return Ok(Ready {
                        sender,
                        closed: connection.closed,
                    });
                }
                Err(e) => {
                    self.forget_closed(&connection.closed).await;
                    if retried {
                        return Err(self.http_error(e));
                    }
                    tracing::debug!(target = %self.target, error = %e, "connection refuses new streams; making another");
                    retried = true;
                }
            }
        }
    }

    /// Forgets the cached connection if it is still the one `closed` marks.
    async fn forget_closed(&self, closed: &Arc<AtomicBool>) {
        let mut slot = self.connection.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.closed, closed))
        {
            *slot = None;
        }
    }

    /// Drops the cached connection (e.g. after the peer's identity changed).
    pub async fn reset(&self) {
        *self.connection.lock().await = None;
    }
}

/// A connection's sender, ready for one new stream.
struct Ready {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Removes the headers HTTP/2 forbids (RFC 9113 §8.2.2), which h2
/// refuses rather than drops: connection-specific ones, and `te` other
/// than `trailers`.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
}

/// The reason to reset a stream with when its request body failed: the
/// HTTP/2 reason inside the error (a caller's own stream reset), else
/// INTERNAL_ERROR.
fn reset_reason(error: &BoxError) -> h2::Reason {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = cause {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        cause = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}

/// An error that resets a stream with the reason `error` carries (the
/// client's CANCEL stays CANCEL), for a body failed on another's behalf.
#[must_use]
pub fn reset_like(error: &BoxError) -> BoxError {
    Box::new(h2::Error::from(reset_reason(error)))
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`]; returns the error that
/// ends the connection when a ping fails or goes unanswered.
async fn keep_alive(mut ping: h2::PingPong) -> h2::Error {
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return e,
            Err(_) => return h2::Error::from(h2::Reason::PROTOCOL_ERROR),
        }
    }
}

/// Queues what `body` has ready now, up to [`SEND_AHEAD`] bytes, behind the
/// request's HEADERS. Returns the body and stream when more is to come.
fn send_ready(
    mut body: Body,
    mut stream: h2::SendStream<Bytes>,
) -> Option<(Body, h2::SendStream<Bytes>)> {
    let mut sent = 0;
    while sent < SEND_AHEAD {
        let Some(frame) = body.frame().now_or_never() else {
            return Some((body, stream));
        };
        let data = take_frame(frame, &mut stream)?;
        let end = body.is_end_stream();
        sent += data.len();
        if stream.send_data(data, end).is_err() {
            stream.send_reset(h2::Reason::INTERNAL_ERROR);
            return None;
        }
        if end {
            return None;
        }
    }
    Some((body, stream))
}

/// The data of one frame of a request body, for the caller to send; or
/// `None` once the stream has ended here: the body's end, its trailers,
/// or an error (the stream reset).
fn take_frame(
    frame: Option<Result<http_body::Frame<Bytes>, BoxError>>,
    stream: &mut h2::SendStream<Bytes>,
) -> Option<Bytes> {
    match frame {
        None => {
            let _ = stream.send_data(Bytes::new(), true);
            None
        }
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => Some(data),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers()
                    && stream.send_trailers(trailers).is_err()
                {
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                }
                None
            }
        },
        Some(Err(e)) => {
            tracing::debug!(error = %e, "request body failed; resetting the stream");
            stream.send_reset(reset_reason(&e));
            None
        }
    }
}

/// Sends the rest of a streaming request body as the peer's flow-control
/// window allows. Ends when the body does, when the peer resets the
/// stream, or when the caller has dropped the response.
async fn send_rest(
    mut body: Body,
    mut stream: h2::SendStream<Bytes>,
    mut cancelled: oneshot::Receiver<()>,
) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => Some(frame),
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
            _ = &mut cancelled => None,
        };
        let Some(frame) = frame else {
            stream.send_reset(h2::Reason::CANCEL);
            return;
        };
        let Some(mut data) = take_frame(frame, &mut stream) else {
            return;
        };
        let end = body.is_end_stream();
        let nothing = data.is_empty();
        // As much as the peer's window takes at a time: asking for the
        // whole chunk lets the window open in large steps rather than a
        // byte at a time.
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let Some(open) = window(&mut stream, &mut cancelled).await else {
                return;
            };
            let chunk = data.split_to(open.min(data.len()));
            if stream.send_data(chunk, end && data.is_empty()).is_err() {
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        }
        if end {
            if nothing {
                let _ = stream.send_data(Bytes::new(), true);
            }
            return;
        }
    }
}

/// Waits until `stream` may send: the open window, or `None` when the
/// stream is gone (reset by the peer, or reset here because the caller
/// went away).
async fn window(
    stream: &mut h2::SendStream<Bytes>,
    cancelled: &mut oneshot::Receiver<()>,
) -> Option<usize> {
    loop {
        let open = stream.capacity();
        if open > 0 {
            return Some(open);
        }
        let ready = tokio::select! {
            ready = std::future::poll_fn(|cx| {
                if stream.poll_reset(cx).is_ready() {
                    return Poll::Ready(false);
                }
                stream.poll_capacity(cx).map(|c| matches!(c, Some(Ok(_))))
            }) => Some(ready),
            _ = &mut *cancelled => None,
        };
        match ready {
            Some(true) => {}
            Some(false) => return None,
            None => {
                stream.send_reset(h2::Reason::CANCEL);
                return None;
            }
        }
    }
}

/// A response body received by [`H2Client`]: DATA, then trailers. Flow
/// control is released as data is taken, as hyper's body does.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
    _cancel: oneshot::Sender<()>,
}

impl fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBody")
            .field("data_done", &self.data_done)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Only fails for a stream already gone, which the next
                    // poll reports.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                // A reset with NO_ERROR ends the answer early without
                // failing it (RFC 9113 §8.1), as hyper's body reads it.
                Some(Err(e)) if e.is_reset() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = std::task::ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(t)) => Some(Ok(http_body::Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

/// An HTTP/2 server builder tuned like the client.
#[must_use]
pub fn server_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Keep-alive pings as the client's: a peer gone without closing (its
    // machine off) is noticed, and its streams and buffers freed.
    b.timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(1024 * 1024);
    b
}
