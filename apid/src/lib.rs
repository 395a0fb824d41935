//! apid: the mTLS front door of a node.
//!
//! Every call enters on TCP :50000. apid authenticates the caller by client
//! certificate (or, in maintenance mode, lets everyone in as `os:reader`),
//! takes the caller's roles from the certificate's Organization values,
//! checks the method against the role table from `api` before anything is
//! forwarded, and routes the call (see [`director`]): to this node's daemon
//! on a connection routerd chose and handed over ([`local`]), one to one to
//! another node's apid (bytes untouched), or one to many with
//! each reply tagged with its node ([`inject`]). apid never decodes a
//! message; it moves HTTP/2 frames and trailers.
#![forbid(unsafe_code)]

pub mod cli;
pub mod director;
pub mod inject;
pub mod limit;
pub mod local;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::roles::{Role, RoleSet};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use machinery::h2::{Body, H2Client, RecvBody, boxed, full, grpc_frame, status_response};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::director::{Route, RouteError};
use crate::inject::{Framer, declared_len, inject_unary, metadata_bytes};
use crate::limit::Refusal;
use crate::tls::TlsState;

/// Largest message apid moves (upstream's limit).
pub const MAX_MESSAGE: usize = api::MAX_MESSAGE_SIZE;

/// How apid runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen.
    pub listen: SocketAddr,
    /// routerd's socket.
    pub routerd: PathBuf,
    /// Directory with the API credentials.
    pub credentials: PathBuf,
    /// Names and addresses that mean this node.
    pub self_names: Vec<String>,
    /// Port of other nodes' apid when a target names none.
    pub peer_port: u16,
}

/// The caller, as its certificate says.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Roles from the certificate's Organization values.
    pub roles: RoleSet,
    /// Remote address.
    pub addr: Option<SocketAddr>,
}

/// Roles from a DER certificate's subject Organization values.
#[must_use]
pub fn roles_of(der: &[u8]) -> RoleSet {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return RoleSet::EMPTY;
    };
    RoleSet::from_names(
        cert.subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok()),
    )
}

/// The front door.
#[derive(Debug, Clone)]
pub struct Apid {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    local: local::Local,
    tls: watch::Receiver<TlsState>,
    remotes: Mutex<(u64, HashMap<String, H2Client>)>,
}

fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `d`: at most 8 digits, as gRPC over HTTP/2
/// allows, in the finest unit that holds it.
fn grpc_timeout_value(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    if d.as_micros() <= MAX {
        format!("{}u", d.as_micros())
    } else if d.as_millis() <= MAX {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", u128::from(d.as_secs()).min(MAX))
    }
}

/// Runs `work` until `deadline`, if there is one; past it, the status
/// `late` makes.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    work: impl Future<Output = Result<T, tonic::Status>>,
    late: impl FnOnce() -> tonic::Status,
) -> Result<T, tonic::Status> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .unwrap_or_else(|_| Err(late())),
        None => work.await,
    }
}

/// Passes on what is left of the caller's deadline as `grpc-timeout`, so
/// the next hop gives up when the caller does; DeadlineExceeded when
/// nothing is left.
fn pass_deadline(
    headers: &mut HeaderMap,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), tonic::Status> {
    let Some(at) = deadline else {
        return Ok(());
    };
    let left = at.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return Err(tonic::Status::deadline_exceeded("deadline exceeded"));
    }
    if let Ok(value) = HeaderValue::try_from(grpc_timeout_value(left)) {
        headers.insert("grpc-timeout", value);
    }
    Ok(())
}

fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The status a response carries in its headers (trailers-only) or
/// trailers, if any.
fn status_of(headers: &HeaderMap) -> Option<tonic::Status> {
    headers
        .contains_key("grpc-status")
        .then(|| tonic::Status::from_header_map(headers))
        .flatten()
}

fn trailers_ok() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

fn grpc_response(body: Body) -> http::Response<Body> {
    let mut r = http::Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

impl Apid {
    /// An apid with these options and TLS state.
    #[must_use]
    pub fn new(options: Options, tls: watch::Receiver<TlsState>) -> Apid {
        let local = local::Local::new(options.routerd.clone());
        Apid {
            inner: Arc::new(Inner {
                options,
                local,
                tls,
                remotes: Mutex::default(),
            }),
        }
    }

    /// Whether `target` names this node: one of its names or addresses,
    /// and, if the target gives a port, this apid's port.
    fn is_self(&self, target: &str) -> bool {
        let host = host_of(target);
        let port_matches = port_of(target).is_none_or(|p| p == self.inner.options.listen.port());
        port_matches && self.inner.options.self_names.iter().any(|n| n == host)
    }

    fn remote(&self, target: &str, state: &TlsState) -> Result<H2Client, tonic::Status> {
        let Some(config) = state.forward.clone() else {
            return Err(tonic::Status::permission_denied("no request forwarding"));
        };
        let mut remotes = self
            .inner
            .remotes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if remotes.0 != state.generation {
            // New credentials: connections made with the old ones go.
            *remotes = (state.generation, HashMap::new());
        }
        if let Some(c) = remotes.1.get(target) {
            return Ok(c.clone());
        }
        let addr = if target.parse::<SocketAddr>().is_ok()
            || (target.contains(':')
                && !target.starts_with('[')
                && target.matches(':').count() == 1)
        {
            target.to_owned()
        } else if target.contains(':') && !target.starts_with('[') {
            format!("[{target}]:{}", self.inner.options.peer_port)
        } else {
            format!("{target}:{}", self.inner.options.peer_port)
        };
        let host = host_of(target)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            tonic::Status::invalid_argument(format!("bad node name {target:?}: {e}"))
        })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let client = H2Client::new(target.to_owned(), move || {
            let addr = addr.clone();
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::net::TcpStream::connect(&addr),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {addr} timed out"),
                    )
                })??;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok(tls)
            }
        });
        remotes.1.insert(target.to_owned(), client.clone());
        Ok(client)
    }

    /// Handles one call from `peer`.
    pub async fn handle(
        &self,
        peer: &Peer,
        request: http::Request<Incoming>,
    ) -> http::Response<Body> {
        match self.route(peer, request).await {
            Ok(r) => r,
            Err(status) => status_response(&status),
        }
    }

    async fn route(
        &self,
        peer: &Peer,
        request: http::Request<Incoming>,
    ) -> Result<http::Response<Body>, tonic::Status> {
        let arrived = tokio::time::Instant::now();
        let state = self.inner.tls.borrow().clone();
        let path = request.uri().path().to_owned();
        let (mut parts, body) = request.into_parts();

        // Roles: from the certificate; from `talos-role` only when the peer
        // may impersonate (another node's apid). Upstream advisory
        // GHSA-rjwj-368c-f82r: never trust the header from anyone else.
        let roles = if state.maintenance {
            RoleSet::of(&[Role::Reader])
        } else if peer.roles.contains(Role::Impersonator)
            && parts.headers.contains_key("talos-role")
        {
            RoleSet::from_names(
                header_values(&parts.headers, "talos-role")
                    .iter()
                    .map(String::as_str),
            )
        } else {
            peer.roles
        };
        if !api::roles::is_allowed(&path, roles, state.maintenance) {
            tracing::debug!(%path, ?roles, "denied");
            return Err(tonic::Status::permission_denied("not authorized"));
        }
        parts.headers.remove("talos-role");
        for name in roles.names() {
            parts
                .headers
                .append("talos-role", HeaderValue::from_static(name));
        }

        let route = director::decide(
            &path,
            &parts.headers,
            state.maintenance,
            state.forward.is_some(),
            |t| self.is_self(t),
        )
        .map_err(|e| match e {
            RouteError::SeveralNodes | RouteError::NotFanOut(_) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            RouteError::NoForwarding => tonic::Status::permission_denied(e.to_string()),
        })?;
        let timeout = grpc_timeout(&parts.headers);
        let deadline = timeout.map(|d| arrived + d);
        match route {
            Route::Local => {
                // The daemon's connection is handed over per package: a
                // service or method the contracts do not have is answered
                // here, in grpc-go's words, as upstream's backend would.
                if let Some(why) = api::methods::unknown(&path) {
                    return Err(tonic::Status::unimplemented(why));
                }
                let (body, refusal) = request_body(&path, body, deadline).await?;
                pass_deadline(&mut parts.headers, deadline)?;
                // Reaching routerd (a routing request, a connect) counts
                // against the caller's deadline too.
                let send = within(
                    deadline,
                    self.send_local(http::Request::from_parts(parts, body)),
                    || tonic::Status::deadline_exceeded("deadline exceeded"),
                );
                refusal.answer(send).await
            }
            Route::One(target) => {
                let client = self.remote(&target, &state)?;
                let (body, refusal) = request_body(&path, body, deadline).await?;
                pass_deadline(&mut parts.headers, deadline)?;
                let request = forwarded(parts, body, &target);
                let send = async {
                    client
                        .send(request)
                        .await
                        .map(|r| r.map(boxed))
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))
                };
                let send = within(deadline, send, || {
                    tonic::Status::deadline_exceeded(format!("{target}: deadline exceeded"))
                });
                refusal.answer(send).await
            }
            Route::Many(targets) => {
                // Answer inside the caller's deadline: a target that has not
                // finished shortly before it becomes an error entry.
                let budget = timeout
                    .map(|d| arrived + d.saturating_sub((d / 10).min(Duration::from_millis(200))));
                Ok(self
                    .fan_out(&state, &path, parts, body, targets, budget)
                    .await)
            }
        }
    }

    async fn send_local(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, tonic::Status> {
        self.inner.local.send(request).await.map(|r| r.map(boxed))
    }

    async fn call_target(
        &self,
        state: &TlsState,
        target: &str,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<http::Response<RecvBody>, tonic::Status> {
        if self.is_self(target) {
            let mut parts = parts.clone();
            parts.headers.remove("node");
            parts.headers.remove("nodes");
            return self
                .inner
                .local
                .send(http::Request::from_parts(parts, body))
                .await;
        }
        let client = self.remote(target, state)?;
        client
            .send(forwarded(parts.clone(), body, target))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }

    /// One to many: the request goes to every target; unary replies are
    /// tagged and concatenated in arrival order, stream messages tagged and
    /// interleaved. A failing target becomes an error entry; the call
    /// itself succeeds, unless a client message is over the limit, which
    /// fails the whole call as upstream's does.
    async fn fan_out(
        &self,
        state: &TlsState,
        path: &str,
        mut parts: http::request::Parts,
        body: Incoming,
        targets: Vec<String>,
        deadline: Option<tokio::time::Instant>,
    ) -> http::Response<Body> {
        let method = api::methods::lookup(path);
        let server_streaming =
            method.map_or_else(|| path.ends_with("Stream"), |m| m.server_streaming);
        let client_streaming = method.is_some_and(|m| m.client_streaming);

        // The request: one buffered body replayed to every target, or, for
        // client streams, every client message broadcast as it arrives.
        let (bodies, refusal) = if client_streaming {
            let (body, refusal) = limit::checked(body);
            (broadcast(body, targets.len()), refusal)
        } else {
            match read_whole(body, deadline).await {
                Ok(whole) => (
                    targets.iter().map(|_| whole.body()).collect(),
                    Refusal::none(),
                ),
                Err(status) => return status_response(&status),
            }
        };
        if let Err(status) = pass_deadline(&mut parts.headers, deadline) {
            return status_response(&status);
        }
        let answer =
            self.fan_out_answer(state, &parts, targets, bodies, server_streaming, deadline);
        refusal
            .answer(async { Ok(answer.await) })
            .await
            .unwrap_or_else(|status| status_response(&status))
    }

    /// The answers of a fan-out once every target has its request body.
    async fn fan_out_answer(
        &self,
        state: &TlsState,
        parts: &http::request::Parts,
        targets: Vec<String>,
        bodies: Vec<Body>,
        server_streaming: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> http::Response<Body> {
        if server_streaming {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, machinery::h2::BoxError>>(32);
            let mut tasks = FuturesUnordered::new();
            for (target, body) in targets.into_iter().zip(bodies) {
                let this = self.clone();
                let state = state.clone();
                let parts = parts.clone();
                let tx = tx.clone();
                tasks.push(tokio::spawn(async move {
                    let run = this.stream_target(&state, &target, &parts, body, &tx);
                    let result = within(deadline, run, || {
                        tonic::Status::deadline_exceeded("deadline exceeded")
                    })
                    .await;
                    if let Err(status) = result {
                        let frame = grpc_frame(&metadata_bytes(
                            &target,
                            Some((status.message(), status.code())),
                        ));
                        let _ = tx.send(Ok(Frame::data(frame))).await;
                    }
                }));
            }
            tokio::spawn(async move {
                while tasks.next().await.is_some() {}
                let _ = tx.send(Ok(Frame::trailers(trailers_ok()))).await;
            });
            return grpc_response(boxed(StreamBody::new(ReceiverStream::new(rx))));
        }

        let mut calls = FuturesUnordered::new();
        for (target, body) in targets.into_iter().zip(bodies) {
            let this = self.clone();
            let state = state.clone();
            let parts = parts.clone();
            calls.push(async move {
                let run = this.unary_target(&state, &target, &parts, body);
                let result = within(deadline, run, || {
                    tonic::Status::deadline_exceeded("deadline exceeded")
                })
                .await;
                match result {
                    Ok(bytes) => bytes,
                    Err(status) => inject_unary(
                        &[],
                        &metadata_bytes(&target, Some((status.message(), status.code()))),
                    )
                    .unwrap_or_default(),
                }
            });
        }
        let mut joined = Vec::new();
        while let Some(part) = calls.next().await {
            joined.extend_from_slice(&part);
        }
        let frames = vec![
            Ok::<_, machinery::h2::BoxError>(Frame::data(grpc_frame(&joined))),
            Ok(Frame::trailers(trailers_ok())),
        ];
        grpc_response(boxed(StreamBody::new(futures_util::stream::iter(frames))))
    }

    async fn unary_target(
        &self,
        state: &TlsState,
        target: &str,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Vec<u8>, tonic::Status> {
        let response = self.call_target(state, target, parts, body).await?;
        if let Some(status) = status_of(response.headers())
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        let collected = http_body_util::Limited::new(response.into_body(), MAX_MESSAGE + 5)
            .collect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("reading the reply: {e}")))?;
        if let Some(trailers) = collected.trailers()
            && let Some(status) = status_of(trailers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        let mut framer = Framer::default();
        framer.push(&collected.to_bytes());
        let message = framer
            .next_message(MAX_MESSAGE)
            .map_err(|e| tonic::Status::resource_exhausted(e.to_string()))?
            .ok_or_else(|| tonic::Status::internal("empty reply"))?;
        inject_unary(&message.payload, &metadata_bytes(target, None))
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }

    async fn stream_target(
        &self,
        state: &TlsState,
        target: &str,
        parts: &http::request::Parts,
        body: Body,
        tx: &mpsc::Sender<Result<Frame<Bytes>, machinery::h2::BoxError>>,
    ) -> Result<(), tonic::Status> {
        let response = self.call_target(state, target, parts, body).await?;
        if let Some(status) = status_of(response.headers())
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        let tag = metadata_bytes(target, None);
        let mut body = response.into_body();
        let mut framer = Framer::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            match frame.into_data() {
                Ok(data) => {
                    framer.push(&data);
                    while let Some(message) = framer
                        .next_message(MAX_MESSAGE)
                        .map_err(|e| tonic::Status::resource_exhausted(e.to_string()))?
                    {
                        let mut payload = message.payload.to_vec();
                        payload.extend_from_slice(&tag);
                        if tx
                            .send(Ok(Frame::data(grpc_frame(&payload))))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref()
                        && let Some(status) = status_of(trailers)
                        && status.code() != tonic::Code::Ok
                    {
                        return Err(status);
                    }
                }
            }
        }
        Ok(())
    }

    /// Accepts connections on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let builder = machinery::h2::server_builder();
        tokio::pin!(shutdown);
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept");
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let state = this.inner.tls.borrow().clone();
                let Some(server) = state.server.clone() else {
                    tracing::info!(%addr, "no API credentials yet: refusing the connection");
                    return;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(server);
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
                let roles = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| roles_of(c))
                    .unwrap_or_default();
                let peer = Arc::new(Peer {
                    roles,
                    addr: Some(addr),
                });
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    let peer = Arc::clone(&peer);
                    async move { Ok::<_, Infallible>(this.handle(&peer, req).await) }
                });
                if let Err(e) = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%addr, error = %e, "connection ended");
                }
            });
        }
    }
}

/// The host part of a target (`10.0.0.1:50000` → `10.0.0.1`).
fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => target,
    }
}

/// The port of a target, if it names one.
fn port_of(target: &str) -> Option<u16> {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split_once("]:").and_then(|(_, p)| p.parse().ok());
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => p.parse().ok(),
        _ => None,
    }
}

/// A request body read whole.
struct Whole {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Whole {
    /// The body to send: the data, then the trailers if there were any.
    fn body(&self) -> Body {
        match &self.trailers {
            None => full(self.data.clone()),
            Some(trailers) => boxed(StreamBody::new(futures_util::stream::iter([
                Ok::<_, machinery::h2::BoxError>(Frame::data(self.data.clone())),
                Ok(Frame::trailers(trailers.clone())),
            ]))),
        }
    }
}

/// Reads a request body whole, within the call's `deadline`: one gRPC
/// message of at most [`MAX_MESSAGE`] bytes. A larger one is refused as
/// upstream's gRPC server refuses it (ResourceExhausted, grpc-go's words),
/// as soon as its length prefix says so.
async fn read_whole(
    mut body: Incoming,
    deadline: Option<tokio::time::Instant>,
) -> Result<Whole, tonic::Status> {
    let read = async move {
        // The usual message comes in one DATA frame and is kept as it came;
        // a message in several frames is gathered here.
        let mut first: Option<Bytes> = None;
        let mut data = bytes::BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                tonic::Status::invalid_argument(format!("reading the request: {e}"))
            })?;
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if data.is_empty()
                && first.is_none()
                && declared_len(&chunk).is_some_and(|n| n <= MAX_MESSAGE && n + 5 == chunk.len())
            {
                first = Some(chunk);
                continue;
            }
            if let Some(kept) = first.take() {
                data.extend_from_slice(&kept);
            }
            let known = data.len() >= 5;
            data.extend_from_slice(&chunk);
            let declared = declared_len(&data).unwrap_or(0);
            if declared > MAX_MESSAGE || data.len() > MAX_MESSAGE + 5 {
                return Err(limit::too_large(declared.max(data.len().saturating_sub(5))));
            }
            if !known && data.len() >= 5 {
                // Room for the message at once rather than by doublings,
                // but only as much as a few frames bring: a length prefix
                // alone commits no memory.
                data.reserve((declared + 5).saturating_sub(data.len()).min(1024 * 1024));
            }
        }
        Ok(Whole {
            data: first.unwrap_or_else(|| data.freeze()),
            trailers,
        })
    };
    within(deadline, read, || {
        tonic::Status::deadline_exceeded("deadline exceeded reading the request")
    })
    .await
}

/// The body to send on: the one message of a call whose client sends one
/// is read first, so it leaves with the call's HEADERS in one write (a
/// client that writes them apart would otherwise have them forwarded
/// apart, each waking the backend); a client stream, or a method the
/// table does not know, is forwarded as it comes.
async fn request_body(
    path: &str,
    body: Incoming,
    deadline: Option<tokio::time::Instant>,
) -> Result<(Body, Refusal), tonic::Status> {
    if api::methods::lookup(path).is_some_and(|m| !m.client_streaming) {
        let whole = read_whole(body, deadline).await?;
        Ok((whole.body(), Refusal::none()))
    } else {
        let (body, refusal) = limit::checked(body);
        Ok((boxed(body), refusal))
    }
}

/// The request as forwarded to another node's apid.
fn forwarded(mut parts: http::request::Parts, body: Body, target: &str) -> http::Request<Body> {
    let from = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    parts.headers.remove("node");
    parts.headers.remove("nodes");
    parts.headers.remove("proxyfrom");
    if let Ok(v) = HeaderValue::from_str(&from) {
        parts.headers.insert("proxyfrom", v);
    }
    parts.uri = machinery::h2::with_authority(&parts.uri, "https", target);
    http::Request::from_parts(parts, body)
}

/// Splits a client stream so every target gets every message. A stream
/// that fails (reset by the client, or a message over the limit) fails
/// every target's, so none of them takes what came as the whole stream.
fn broadcast<B>(mut body: B, n: usize) -> Vec<Body>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<machinery::h2::BoxError> + Send,
{
    let mut senders = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, machinery::h2::BoxError>>(16);
        senders.push(tx);
        bodies.push(boxed(StreamBody::new(ReceiverStream::new(rx))));
    }
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(e) => {
                    let e: machinery::h2::BoxError = e.into();
                    for tx in &senders {
                        let _ = tx.send(Err(machinery::h2::reset_like(&e))).await;
                    }
                    return;
                }
            };
            for tx in &senders {
                // A target that went away no longer listens: fine.
                let _ = tx.send(Ok(Frame::data(data.clone()))).await;
            }
        }
    });
    bodies
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client stream that fails part way fails every target's stream
    /// after what came before, rather than ending it as if complete.
    #[tokio::test]
    async fn a_failed_client_stream_fails_every_copy() {
        // The client's reason (CANCEL here) is what every target's stream
        // is reset with.
        let frames: Vec<Result<Frame<Bytes>, machinery::h2::BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"first"))),
            Err(Box::new(h2::Error::from(h2::Reason::CANCEL))),
            Ok(Frame::data(Bytes::from_static(b"never"))),
        ];
        for copy in broadcast(StreamBody::new(futures_util::stream::iter(frames)), 3) {
            let mut copy = copy;
            let first = copy.frame().await.expect("a frame").expect("data");
            assert_eq!(first.into_data().expect("data"), "first");
            let failed = copy.frame().await.expect("a frame").expect_err("failed");
            let reason = failed
                .downcast_ref::<h2::Error>()
                .and_then(h2::Error::reason);
            assert_eq!(reason, Some(h2::Reason::CANCEL), "{failed}");
            assert!(copy.frame().await.is_none());
        }
    }

    #[test]
    fn a_deadline_passed_on_reads_back_as_itself() {
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(300),
            Duration::from_secs(99),
            Duration::from_secs(100_000),
            Duration::from_secs(400_000_000),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                "grpc-timeout",
                HeaderValue::try_from(grpc_timeout_value(d)).expect("value"),
            );
            let back = grpc_timeout(&h).expect("parses");
            let digits = grpc_timeout_value(d).len() - 1;
            assert!(digits <= 8, "{d:?}: {digits} digits");
            let want = d.min(Duration::from_secs(99_999_999));
            assert!(
                back <= want && want - back < Duration::from_secs(1),
                "{d:?} came back as {back:?}"
            );
        }
        let mut h = HeaderMap::new();
        let past = tokio::time::Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            pass_deadline(&mut h, Some(past))
                .expect_err("nothing left")
                .code(),
            tonic::Code::DeadlineExceeded
        );
        pass_deadline(
            &mut h,
            Some(tokio::time::Instant::now() + Duration::from_secs(5)),
        )
        .expect("time left");
        let left = grpc_timeout(&h).expect("set");
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_secs(4),
            "{left:?}"
        );
    }

    #[test]
    fn timeouts_parse() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static("1500m"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(1500)));
        h.insert("grpc-timeout", HeaderValue::from_static("3S"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", HeaderValue::from_static("x"));
        assert_eq!(grpc_timeout(&h), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("10.0.0.1:50000"), "10.0.0.1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("[::1]:50000"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("node-a"), "node-a");
        assert_eq!(port_of("10.0.0.1:50000"), Some(50000));
        assert_eq!(port_of("[::1]:50001"), Some(50001));
        assert_eq!(port_of("::1"), None);
        assert_eq!(port_of("node-a"), None);
    }
}
