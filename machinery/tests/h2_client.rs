//! `machinery::h2::H2Client` against an HTTP/2 server over a real socket
//! pair: a unary request leaves in one write, a streaming body larger
//! than the flow-control windows arrives whole with its trailers, a
//! caller that drops the call or its answer resets a request still
//! streaming, and a connection the server sends GOAWAY on is replaced.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use machinery::h2::{Body, H2Client, boxed, full};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that keeps every write it passes on, one entry per call.
struct Recording {
    inner: tokio::net::UnixStream,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recording {
    fn keep(&self, bytes: Vec<u8>) {
        self.writes.lock().expect("writes").push(bytes);
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.keep(buf[..n].to_vec());
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.keep(all[..n].to_vec());
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the server saw of one request.
#[derive(Debug, Default)]
struct Seen {
    bytes: usize,
    chunks: usize,
    trailers: Option<http::HeaderMap>,
    reset: bool,
}

/// An HTTP/2 server on `io` that reads each request's body whole (when
/// `slow`, pausing after every 32 chunks, so the sender's window runs
/// out and must reopen), then answers 200 with a body giving the byte count and a
/// `grpc-status: 0` trailer. What it saw goes to `seen`.
fn serve(io: tokio::net::UnixStream, slow: bool, seen: Arc<Mutex<Vec<Seen>>>) {
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        while let Some(accepted) = conn.accept().await {
            let Ok((request, mut respond)) = accepted else {
                return;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut body = request.into_body();
                let mut got = Seen::default();
                while let Some(chunk) = body.data().await {
                    match chunk {
                        Ok(chunk) => {
                            got.bytes += chunk.len();
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.chunks += 1;
                            if slow && got.chunks % 32 == 0 {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                        Err(e) => {
                            got.reset = e.is_reset();
                            seen.lock().expect("seen").push(got);
                            return;
                        }
                    }
                }
                got.trailers = body.trailers().await.ok().flatten();
                let count = got.bytes;
                seen.lock().expect("seen").push(got);
                let response = http::Response::new(());
                let Ok(mut send) = respond.send_response(response, false) else {
                    return;
                };
                let _ = send.send_data(Bytes::from(count.to_string()), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            });
        }
    });
}

fn request(body: Body) -> http::Request<Body> {
    http::Request::builder()
        .method("POST")
        .uri("http://localhost/test.Echo/Count")
        .header("content-type", "application/grpc")
        .body(body)
        .expect("request")
}

/// The frames in `writes` (the client's bytes after the connection
/// preface): type, flags and stream of each, with the index of the write
/// its header was in.
fn frames(writes: &[Vec<u8>]) -> Vec<(u8, u8, u32, usize)> {
    let mut all = Vec::new();
    let mut starts = Vec::new();
    for w in writes {
        starts.push(all.len());
        all.extend_from_slice(w);
    }
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert!(
        all.starts_with(preface),
        "the connection preface comes first"
    );
    let mut at = preface.len();
    let mut out = Vec::new();
    while at + 9 <= all.len() {
        let len =
            usize::from(all[at]) << 16 | usize::from(all[at + 1]) << 8 | usize::from(all[at + 2]);
        let stream =
            u32::from_be_bytes([all[at + 5], all[at + 6], all[at + 7], all[at + 8]]) & 0x7fff_ffff;
        let write = starts.iter().rposition(|&s| s <= at).expect("a write");
        out.push((all[at + 3], all[at + 4], stream, write));
        at += 9 + len;
    }
    out
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;

#[tokio::test(flavor = "current_thread")]
async fn a_unary_request_leaves_in_one_write() {
    let (client_io, server_io) = tokio::net::UnixStream::pair().expect("pair");
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(server_io, false, Arc::clone(&seen));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let slot = Arc::new(Mutex::new(Some(Recording {
        inner: client_io,
        writes: Arc::clone(&writes),
    })));
    let client = H2Client::new("recorded", move || {
        let io = slot.lock().expect("slot").take();
        async move { io.ok_or_else(|| std::io::Error::other("one connection only")) }
    });

    let message = Bytes::from_static(b"\0\0\0\0\x05hello");
    let response = client
        .send(request(full(message.clone())))
        .await
        .expect("answer");
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await.expect("body");
    assert_eq!(
        body.trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(body.to_bytes(), message.len().to_string());

    let frames = frames(&writes.lock().expect("writes"));
    let headers = frames
        .iter()
        .find(|f| f.0 == HEADERS && f.2 == 1)
        .expect("the request's HEADERS");
    let data = frames
        .iter()
        .find(|f| f.0 == DATA && f.2 == 1)
        .expect("the request's DATA");
    assert_eq!(
        headers.1 & END_STREAM,
        0,
        "HEADERS leave the stream open for the message"
    );
    assert_eq!(
        data.1 & END_STREAM,
        END_STREAM,
        "the message ends the request"
    );
    assert_eq!(
        headers.3, data.3,
        "HEADERS and DATA of a one-message request leave in the same write: {frames:?}"
    );
}

/// A request body of `chunks` chunks of 64 KiB, sent as the receiver is
/// ready, ending with trailers.
/// The count is of the chunks the body has handed over so far.
fn streaming_body(
    chunks: usize,
) -> (
    Body,
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, machinery::h2::BoxError>>(2);
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&taken);
    let feeder = tokio::spawn(async move {
        for _ in 0..chunks {
            if tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(vec![
                    7_u8;
                    64 * 1024
                ]))))
                .await
                .is_err()
            {
                return;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-end", http::HeaderValue::from_static("yes"));
        let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    (boxed(body), feeder, taken)
}

fn socket_client(io: tokio::net::UnixStream) -> H2Client {
    let slot = Arc::new(Mutex::new(Some(io)));
    H2Client::new("pair", move || {
        let io = slot.lock().expect("slot").take();
        async move { io.ok_or_else(|| std::io::Error::other("one connection only")) }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_windows_arrives_whole_with_its_trailers() {
    let (client_io, server_io) = tokio::net::UnixStream::pair().expect("pair");
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(server_io, true, Arc::clone(&seen));
    let client = socket_client(client_io);
    // 12 MiB through the server's default 64 KiB windows, which close
    // and reopen many times, with pauses on the server's side.
    let (body, feeder, _) = streaming_body(192);
    let response = tokio::time::timeout(Duration::from_secs(60), client.send(request(body)))
        .await
        .expect("in time")
        .expect("answer");
    let body = response.into_body().collect().await.expect("body");
    assert_eq!(body.to_bytes(), (192 * 64 * 1024).to_string());
    feeder.await.expect("feeder");
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].bytes, 192 * 64 * 1024);
    assert_eq!(
        seen[0].trailers.as_ref().and_then(|t| t.get("x-end")),
        Some(&http::HeaderValue::from_static("yes")),
        "the request's trailers arrive"
    );
}

/// A request body that sends 5 bytes and then waits, with the sender that
/// keeps it waiting.
async fn first_then_waiting() -> (
    Body,
    tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, machinery::h2::BoxError>>,
) {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, machinery::h2::BoxError>>(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"first"))))
        .await
        .expect("first");
    let body = boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    (body, tx)
}

/// Waits (at most 10 s) until the server has seen its one request end, and
/// checks it was reset after `bytes` bytes.
async fn saw_reset_after(seen: &Mutex<Vec<Seen>>, bytes: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(got) = seen.lock().expect("seen").first() {
            assert!(got.reset, "the stream was reset, not ended: {got:?}");
            assert_eq!(got.bytes, bytes);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never saw the reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_call_resets_a_request_still_streaming() {
    let (client_io, server_io) = tokio::net::UnixStream::pair().expect("pair");
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(server_io, false, Arc::clone(&seen));
    let client = socket_client(client_io);
    // A body that sends one chunk and then waits: the server never answers.
    let (body, tx) = first_then_waiting().await;
    let call = tokio::time::timeout(Duration::from_millis(300), client.send(request(body))).await;
    assert!(call.is_err(), "no answer comes while the request streams");
    // The call is dropped with its timeout: the server sees the stream reset.
    saw_reset_after(&seen, 5).await;
    drop(tx);
}

/// A connection maker handing out `sockets` in turn.
fn sockets_client(sockets: Vec<tokio::net::UnixStream>) -> H2Client {
    let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(sockets)));
    H2Client::new("queue", move || {
        let io = queue.lock().expect("queue").pop_front();
        async move { io.ok_or_else(|| std::io::Error::other("no more connections")) }
    })
}

/// A server that answers its first call's HEADERS at once and keeps that
/// answer open, then says GOAWAY: the connection stays up, draining the
/// open call, and takes no new ones.
fn serve_then_go_away(io: tokio::net::UnixStream) {
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        let Some(Ok((_request, mut respond))) = conn.accept().await else {
            return;
        };
        let open = respond
            .send_response(http::Response::new(()), false)
            .expect("answer");
        conn.graceful_shutdown();
        while let Some(accepted) = conn.accept().await {
            drop(accepted);
        }
        drop(open);
    });
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_going_away_is_replaced_for_the_next_call() {
    let (first, first_server) = tokio::net::UnixStream::pair().expect("pair");
    let (second, second_server) = tokio::net::UnixStream::pair().expect("pair");
    serve_then_go_away(first_server);
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(second_server, false, Arc::clone(&seen));
    let client = sockets_client(vec![first, second]);

    let long = client
        .send(request(full(Bytes::from_static(b"\0\0\0\0\0"))))
        .await
        .expect("the first call is answered");
    // Let the GOAWAY arrive while the first answer is still open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        client.send(request(full(Bytes::from_static(b"\0\0\0\0\x02hi")))),
    )
    .await
    .expect("in time")
    .expect("the next call goes out on a new connection");
    let body = next.into_body().collect().await.expect("body");
    assert_eq!(body.to_bytes(), "7");
    assert_eq!(seen.lock().expect("seen").len(), 1);
    drop(long);
}

/// A server that answers each call's HEADERS before reading its body,
/// then reads the body and records how it ended.
fn serve_answering_first(io: tokio::net::UnixStream, seen: Arc<Mutex<Vec<Seen>>>) {
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let _open = respond.send_response(http::Response::new(()), false);
                let mut body = request.into_body();
                let mut got = Seen::default();
                while let Some(chunk) = body.data().await {
                    match chunk {
                        Ok(chunk) => got.bytes += chunk.len(),
                        Err(e) => {
                            got.reset = e.is_reset();
                            break;
                        }
                    }
                }
                seen.lock().expect("seen").push(got);
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_answer_resets_a_request_still_streaming() {
    let (client_io, server_io) = tokio::net::UnixStream::pair().expect("pair");
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve_answering_first(server_io, Arc::clone(&seen));
    let client = socket_client(client_io);
    let (body, tx) = first_then_waiting().await;
    let answer = client.send(request(body)).await.expect("answered");
    assert_eq!(answer.status(), http::StatusCode::OK);
    // The caller is done with the answer while its request still streams.
    drop(answer);
    saw_reset_after(&seen, 5).await;
    drop(tx);
}

/// A server that answers each call's HEADERS and never reads its body.
fn serve_not_reading(io: tokio::net::UnixStream) {
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        let mut held = Vec::new();
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            let open = respond.send_response(http::Response::new(()), false);
            held.push((request, open));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_holds_the_body_back() {
    let (client_io, server_io) = tokio::net::UnixStream::pair().expect("pair");
    serve_not_reading(server_io);
    let client = socket_client(client_io);
    let (body, feeder, taken) = streaming_body(192);
    let answer = client.send(request(body)).await.expect("answered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The peer's 64 KiB window, what is queued up front (at most 1 MiB)
    // and the channel's two: far from all 192 chunks (12 MiB).
    let n = taken.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..32).contains(&n),
        "the body is taken only as the peer's window allows: {n} chunks of 192 taken"
    );
    drop(answer);
    feeder.abort();
}
