//! routerd in front of real backends on unix sockets: the machined API
//! (served in-process), and a raw HTTP/2 echo backend that checks frames and
//! trailers pass untouched in every streaming shape.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::machine::machine_service_client::MachineServiceClient;
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use machinery::constants::NodePaths;
use machinery::h2::{Body, H2Client, boxed, grpc_frame};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

struct Node {
    _dir: tempfile::TempDir,
    paths: NodePaths,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = NodePaths::under(dir.path());
    Node { _dir: dir, paths }
}

async fn start_machined(paths: &NodePaths) {
    let options = machined::node::NodeOptions {
        mode: machined::node::Mode::Container,
        root: paths.root().to_path_buf(),
        hostname: Some("routed".into()),
        bin_dir: Some(PathBuf::from("/nonexistent")),
        apid_listen: None,
        trustd_listen: None,
    };
    let logs = Arc::new(machined::logbuf::LogRegistry::new(1024 * 1024, None));
    logs.get_or_create("machined")
        .append(b"hello from machined\n");
    let config = Arc::new(
        machined::configstore::ConfigStore::load(paths.root().join("none.yaml")).expect("config"),
    );
    let node = Arc::new(machined::node::Node::new(options, logs, config));
    let socket = paths.socket("machined");
    std::fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind machined");
    tokio::spawn(machined::run::serve_api(
        node,
        listener,
        std::future::pending(),
    ));
}

/// A backend that answers every call by echoing each request body frame
/// back as soon as it arrives, then trailers with grpc-status 0 and a
/// custom trailer carrying the request's `x-probe` header.
async fn start_echo(socket: PathBuf) {
    std::fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind echo");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let probe = req
                            .headers()
                            .get("x-probe")
                            .cloned()
                            .unwrap_or(http::HeaderValue::from_static("none"));
                        let mut body = req.into_body();
                        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
                        tokio::spawn(async move {
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Ok(data) = frame.into_data()
                                    && tx.send(Ok(Frame::data(data))).await.is_err()
                                {
                                    return;
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            trailers.insert("x-probe-echo", probe);
                            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                        });
                        let mut resp =
                            http::Response::new(StreamBody::new(ReceiverStream::new(rx)));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = machinery::h2::server_builder()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn start_router(paths: &NodePaths) -> PathBuf {
    let router = routerd::Router::new(paths).expect("router");
    let socket = paths.socket("routerd");
    let listener = routerd::bind(&socket).expect("bind routerd");
    tokio::spawn(router.serve(listener, std::future::pending()));
    socket
}

#[tokio::test]
async fn machine_calls_route_to_machined() {
    let n = node();
    start_machined(&n.paths).await;
    let socket = start_router(&n.paths).await;
    let mut client = MachineServiceClient::new(
        machinery::grpc::unix_channel(&socket)
            .await
            .expect("connect"),
    );
    let host = client
        .hostname(())
        .await
        .expect("hostname through routerd")
        .into_inner();
    assert_eq!(host.messages[0].hostname, "routed");
    // A server stream passes too.
    let req = api::machine::LogsRequest {
        namespace: "system".into(),
        id: "machined".into(),
        driver: 0,
        follow: false,
        tail_lines: -1,
    };
    let mut logs = client.logs(req).await.expect("logs").into_inner();
    let first = logs.message().await.expect("chunk").expect("some");
    assert_eq!(&first.bytes[..], b"hello from machined\n");
    // Errors from the backend keep their code and message.
    let err = client
        .read(api::machine::ReadRequest {
            path: "/no/such/file".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn unknown_service_and_dead_backend() {
    let n = node();
    let socket = start_router(&n.paths).await;
    let channel = machinery::grpc::unix_channel(&socket)
        .await
        .expect("connect");
    let mut machine = MachineServiceClient::new(channel.clone());
    let err = machine
        .version(())
        .await
        .expect_err("machined is not running");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("backend machined unavailable"),
        "{}",
        err.message()
    );

    let client = H2Client::unix(socket);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/inspect.InspectService/ControllerRuntimeDependencies")
        .header("content-type", "application/grpc")
        .body(boxed(http_body_util::Full::new(grpc_frame(b""))))
        .expect("request");
    let resp = client.send(req).await.expect("answered");
    assert_eq!(resp.headers()["grpc-status"], "12");
    assert_eq!(
        resp.headers()["grpc-message"],
        "unknown%20service%20inspect.InspectService"
    );
}

/// Sends frames one at a time and waits for each echo before the next: only
/// a proxy that streams both ways at once gets through this.
#[tokio::test]
async fn bidirectional_and_client_streams_pass_untouched() {
    let n = node();
    start_echo(n.paths.socket("timed")).await;
    let socket = start_router(&n.paths).await;
    let client = H2Client::unix(socket);

    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, machinery::h2::BoxError>>(4);
    let body: Body = boxed(StreamBody::new(ReceiverStream::new(rx)));
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/time.TimeService/SomeBidiCall")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-probe", "abc123")
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.send(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for i in 0..5u8 {
        // Arbitrary bytes, including a frame that is not valid protobuf.
        let payload: Vec<u8> = (0..(1000 * usize::from(i) + 3))
            .map(|j| (j as u8) ^ i)
            .collect();
        let frame = grpc_frame(&payload);
        tx.send(Ok(Frame::data(frame.clone()))).await.expect("send");
        let mut got = Vec::new();
        while got.len() < frame.len() {
            let f = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("echo in time")
                .expect("frame")
                .expect("ok");
            got.extend_from_slice(&f.into_data().expect("data"));
        }
        assert_eq!(got, frame, "frame {i} changed on the way");
    }
    drop(tx);
    let trailers = loop {
        let f = body.frame().await.expect("trailers").expect("ok");
        if let Ok(t) = f.into_trailers() {
            break t;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-probe-echo"], "abc123",
        "request headers reach the backend, trailers come back"
    );
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let n = node();
    let socket = start_router(&n.paths).await;
    let mut client = ServerReflectionClient::new(
        machinery::grpc::unix_channel(&socket)
            .await
            .expect("connect"),
    );
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream.next().await.expect("one").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let mut expected: Vec<String> = api::methods::services()
        .into_iter()
        .map(str::to_owned)
        .collect();
    // Reflection lists itself too.
    expected.push("grpc.reflection.v1.ServerReflection".to_owned());
    expected.sort();
    assert_eq!(names, expected);

    // v1alpha too (older grpcurl and friends).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    let mut alpha = AlphaClient::new(
        machinery::grpc::unix_channel(&socket)
            .await
            .expect("connect"),
    );
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha")
        .into_inner();
    assert!(stream.next().await.expect("one").is_ok());
}

/// A tonic channel over one connection already made.
async fn channel_over(stream: machinery::uds::Stream) -> tonic::transport::Channel {
    let slot = Arc::new(std::sync::Mutex::new(Some(stream)));
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let stream = slot.lock().expect("slot").take();
            async move {
                stream
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the one connection is used"))
            }
        }))
        .await
        .expect("channel")
}

/// Routing by connection: routerd hands over a connection to the backend
/// and is out of the path; its refusals carry the codes and words of a
/// forwarded call; reflection stays with routerd.
#[tokio::test]
async fn routing_requests_hand_over_backend_connections() {
    use machinery::handoff::{self, HandoffError, Routed};

    let n = node();
    start_machined(&n.paths).await;
    let router = routerd::Router::new(&n.paths).expect("router");
    let socket = n.paths.socket("routerd");
    let listener = routerd::bind(&socket).expect("bind routerd");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(router.serve(listener, async {
        let _ = stopped.await;
    }));

    let Routed::Backend(handed) = handoff::request(&socket, "machine.MachineService")
        .await
        .expect("routed")
    else {
        panic!("machine calls go to a backend connection");
    };
    // The handed connection is machined's own: it keeps working once
    // routerd is gone.
    stop.send(()).expect("stop routerd");
    serving.await.expect("routerd stopped");
    std::fs::remove_file(&socket).expect("remove routerd's socket");
    let mut client = MachineServiceClient::new(channel_over(handed).await);
    let host = client
        .hostname(())
        .await
        .expect("hostname on the handed connection")
        .into_inner();
    assert_eq!(host.messages[0].hostname, "routed");

    let socket = start_router(&n.paths).await;
    match handoff::request(&socket, "inspect.InspectService").await {
        Err(HandoffError::Refused { code, message }) => {
            assert_eq!(Code::from(code), Code::Unimplemented);
            assert_eq!(message, "unknown service inspect.InspectService");
        }
        other => panic!("expected Unimplemented, got {other:?}"),
    }
    match handoff::request(&socket, "time.TimeService").await {
        Err(HandoffError::Refused { code, message }) => {
            assert_eq!(Code::from(code), Code::Unavailable);
            assert!(
                message.starts_with("backend timed unavailable: connecting to "),
                "{message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let Routed::Router(own) = handoff::request(&socket, "grpc.reflection.v1.ServerReflection")
        .await
        .expect("routed")
    else {
        panic!("reflection is routerd's own");
    };
    let mut reflection = ServerReflectionClient::new(channel_over(own).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection on routerd's connection")
        .into_inner();
    assert!(stream.next().await.expect("one").is_ok());
}

/// Shutdown drains: routerd on a runtime of its own, as the daemon runs
/// it (the runtime ends when `serve` returns), stopped while a stream is
/// open; the stream still ends cleanly, with its trailers.
#[tokio::test]
async fn a_stream_open_at_shutdown_ends_cleanly() {
    let n = node();
    start_echo(n.paths.socket("timed")).await;
    let router = routerd::Router::new(&n.paths).expect("router");
    let socket = n.paths.socket("routerd");
    let (listening_tx, listening_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bind_at = socket.clone();
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = routerd::bind(&bind_at).expect("bind routerd");
            listening_tx.send(()).expect("listening");
            router
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        // As the daemon: the runtime goes as soon as serve returns.
        drop(rt);
    });
    listening_rx.recv().expect("routerd listens");
    let client = H2Client::unix(socket);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, machinery::h2::BoxError>>(4);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://localhost/time.TimeService/SomeBidiCall")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(boxed(StreamBody::new(ReceiverStream::new(rx))))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.send(req))
        .await
        .expect("in time")
        .expect("response");
    let mut body = resp.into_body();
    let mut echo = async |frame: Bytes| {
        tx.send(Ok(Frame::data(frame.clone()))).await.expect("send");
        let got = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("echo in time")
            .expect("frame")
            .expect("ok");
        assert_eq!(got.into_data().expect("data"), frame);
    };
    echo(grpc_frame(b"before")).await;
    stop.send(()).expect("routerd running");
    // Open streams go on after the GOAWAY.
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo(grpc_frame(b"after")).await;
    drop(tx);
    let trailers = loop {
        let f = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("trailers in time")
            .expect("trailers")
            .expect("ok");
        if let Ok(t) = f.into_trailers() {
            break t;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");
    tokio::task::spawn_blocking(move || daemon.join().expect("routerd's thread"))
        .await
        .expect("joined");
}
