//! Routing across nodes: `node` (one to one), `nodes` (fan-out with
//! metadata), failures as entries, streams through another node.

use std::time::Duration;

use api::machine::machine_service_client::MachineServiceClient;
use testkit::{Pki, client_config, start_node};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

async fn admin(pki: &Pki, addr: std::net::SocketAddr) -> MachineServiceClient<Channel> {
    let config = client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"])));
    let channel =
        machinery::grpc::tls_channel(addr.to_string(), "127.0.0.1", config).expect("channel");
    MachineServiceClient::new(channel)
}

fn with_nodes<T>(msg: T, key: &'static str, nodes: &[String]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for n in nodes {
        req.metadata_mut()
            .append(key, MetadataValue::try_from(n.as_str()).expect("ascii"));
    }
    req
}

#[tokio::test]
async fn fan_out_tags_replies_and_reports_dead_nodes() {
    let pki = Pki::new();
    let a = start_node(
        "node-a",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let b = start_node(
        "node-b",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    // A node that is not there: a port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut client = admin(&pki, a.addr).await;
    let targets = vec![a.addr.to_string(), b.addr.to_string(), dead.to_string()];

    let reply = client
        .hostname(with_nodes((), "nodes", &targets))
        .await
        .expect("fan-out succeeds")
        .into_inner();
    assert_eq!(reply.messages.len(), 3);
    let mut seen: Vec<(String, String, String)> = reply
        .messages
        .iter()
        .map(|m| {
            let md = m.metadata.clone().expect("every entry is tagged");
            (md.hostname, m.hostname.clone(), md.error)
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (a.addr.to_string(), "node-a".to_owned(), String::new()),
        (b.addr.to_string(), "node-b".to_owned(), String::new()),
    ];
    expected.sort();
    let errors: Vec<&(String, String, String)> = seen.iter().filter(|s| !s.2.is_empty()).collect();
    assert_eq!(errors.len(), 1, "{seen:?}");
    assert_eq!(
        errors[0].0,
        dead.to_string(),
        "the error names the dead node"
    );
    let ok: Vec<(String, String, String)> =
        seen.iter().filter(|s| s.2.is_empty()).cloned().collect();
    assert_eq!(ok, expected);
}

#[tokio::test]
async fn one_to_one_and_streams_through_another_node() {
    let pki = Pki::new();
    let a = start_node(
        "node-a",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let b = start_node(
        "node-b",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let mut client = admin(&pki, a.addr).await;

    let reply = client
        .hostname(with_nodes((), "node", &[b.addr.to_string()]))
        .await
        .expect("one to one")
        .into_inner();
    assert_eq!(reply.messages[0].hostname, "node-b");
    assert!(
        reply.messages[0].metadata.is_none(),
        "one to one leaves bytes untouched"
    );

    // A server stream from B, through A, tagged when fanned out.
    let req = api::machine::LogsRequest {
        namespace: "system".into(),
        id: "ticker".into(),
        driver: 0,
        follow: false,
        tail_lines: -1,
    };
    let mut stream = client
        .logs(with_nodes(req.clone(), "node", &[b.addr.to_string()]))
        .await
        .expect("logs")
        .into_inner();
    let chunk = stream.message().await.expect("ok").expect("chunk");
    assert_eq!(&chunk.bytes[..], b"hello from node-b\n");

    let mut stream = client
        .logs(with_nodes(
            req,
            "nodes",
            &[a.addr.to_string(), b.addr.to_string()],
        ))
        .await
        .expect("logs")
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("ok")
    {
        got.push((
            chunk.metadata.expect("tagged").hostname,
            String::from_utf8_lossy(&chunk.bytes).into_owned(),
        ));
    }
    got.sort();
    let mut expected = vec![
        (a.addr.to_string(), "hello from node-a\n".to_owned()),
        (b.addr.to_string(), "hello from node-b\n".to_owned()),
    ];
    expected.sort();
    assert_eq!(got, expected);

    // Several `node` values: invalid.
    let err = client
        .hostname(with_nodes(
            (),
            "node",
            &[a.addr.to_string(), b.addr.to_string()],
        ))
        .await
        .expect_err("two nodes");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn workers_refuse_to_forward() {
    let pki = Pki::new();
    let worker = start_node(
        "worker-1",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, true)),
    )
    .await;
    let other = start_node(
        "cp-1",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let mut client = admin(&pki, worker.addr).await;
    let err = client
        .hostname(with_nodes((), "node", &[other.addr.to_string()]))
        .await
        .expect_err("no forwarding");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "no request forwarding");
    // Naming itself is fine.
    let reply = client
        .hostname(with_nodes((), "node", &["worker-1".to_owned()]))
        .await
        .expect("self");
    assert_eq!(reply.into_inner().messages[0].hostname, "worker-1");
}

#[tokio::test]
async fn a_slow_node_does_not_hold_the_others_past_the_deadline() {
    let pki = Pki::new();
    let a = start_node(
        "node-a",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    // A "node" that accepts TCP and then never answers the TLS handshake.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow_addr = slow.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = slow.accept().await {
            held.push(s);
        }
    });
    let mut client = admin(&pki, a.addr).await;
    let mut req = with_nodes((), "nodes", &[a.addr.to_string(), slow_addr.to_string()]);
    req.set_timeout(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let reply = client
        .hostname(req)
        .await
        .expect("answers before the deadline")
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let hosts: Vec<(String, bool)> = reply
        .messages
        .iter()
        .map(|m| {
            let md = m.metadata.clone().expect("tagged");
            (md.hostname, md.error.is_empty())
        })
        .collect();
    assert!(hosts.contains(&(a.addr.to_string(), true)), "{hosts:?}");
    assert!(hosts.contains(&(slow_addr.to_string(), false)), "{hosts:?}");
}

/// One node (machined, routerd and apid in this process) and an admin's
/// channel to its apid.
async fn local_node_as_admin() -> (testkit::Node, Channel) {
    let pki = Pki::new();
    let node = start_node(
        "local",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let config = client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"])));
    let channel =
        machinery::grpc::tls_channel(node.addr.to_string(), "127.0.0.1", config).expect("channel");
    (node, channel)
}

/// A TimeService answering with `server` as the server's name.
struct FakeTimed {
    server: &'static str,
}

#[tonic::async_trait]
impl api::time::time_service_server::TimeService for FakeTimed {
    async fn time(
        &self,
        _: tonic::Request<()>,
    ) -> Result<tonic::Response<api::time::TimeResponse>, tonic::Status> {
        Ok(tonic::Response::new(api::time::TimeResponse {
            messages: vec![api::time::Time {
                server: self.server.to_owned(),
                ..Default::default()
            }],
        }))
    }

    async fn time_check(
        &self,
        _: tonic::Request<api::time::TimeRequest>,
    ) -> Result<tonic::Response<api::time::TimeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

/// Serves a [`FakeTimed`] at `socket` on a runtime of its own, as a daemon
/// would; stopping it ends that runtime and so closes every connection, as
/// a daemon's exit does.
struct FakeTimedDaemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeTimedDaemon {
    fn start(socket: &std::path::Path, server: &'static str) -> FakeTimedDaemon {
        let socket = socket.to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = machinery::daemon::bind_unix(&socket).expect("bind timed");
                ready_tx.send(()).expect("ready");
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(api::time::time_service_server::TimeServiceServer::new(
                            FakeTimed { server },
                        ))
                        .serve_with_incoming(machinery::uds::incoming(listener)),
                );
                let _ = stopped.await;
            });
        });
        ready_rx.recv().expect("fake timed listening");
        FakeTimedDaemon {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("fake timed thread");
        }
    }
}

/// Local calls go to the backend routerd names for their package, on a
/// connection routerd hands over: routerd's refusal comes through with its
/// code and words, and a backend that restarts is found again.
#[tokio::test]
async fn local_calls_follow_routerd_across_a_backend_restart() {
    use api::time::time_service_client::TimeServiceClient;

    let (node, channel) = local_node_as_admin().await;
    let mut time = TimeServiceClient::new(channel);

    let err = time.time(()).await.expect_err("timed is not running");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .starts_with("backend timed unavailable: connecting to "),
        "{}",
        err.message()
    );

    let socket = node.paths.socket("timed");
    let first = FakeTimedDaemon::start(&socket, "first");
    let reply = time.time(()).await.expect("time through apid").into_inner();
    assert_eq!(reply.messages[0].server, "first");

    first.stop();
    // apid's connection task sees the backend's end of the connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = FakeTimedDaemon::start(&socket, "second");
    let reply = time
        .time(())
        .await
        .expect("time after timed restarted")
        .into_inner();
    assert_eq!(reply.messages[0].server, "second");
    second.stop();
}

/// Through apid, what routerd routes by connection keeps routerd's answers:
/// an unknown service is Unimplemented naming it (and routes nothing), and
/// reflection is served by routerd itself on the connection it keeps.
#[tokio::test]
async fn unknown_services_and_reflection_through_apid() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (_node, channel) = local_node_as_admin().await;

    for _ in 0..2 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let err = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static("/inspect.InspectService/Nothing"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such service");
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        assert_eq!(err.message(), "unknown service inspect.InspectService");
    }
    // In a package this node serves: a service or a method the contracts
    // do not have, named in grpc-go's words (not tonic's empty message).
    for (path, words) in [
        (
            "/machine.NopeService/Version",
            "unknown service machine.NopeService",
        ),
        (
            "/machine.MachineService/Nope",
            "unknown method Nope for service machine.MachineService",
        ),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let err = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        assert_eq!(err.message(), words);
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection through apid")
        .into_inner();
    let reply = stream.message().await.expect("reply").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected {reply:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "machine.MachineService"),
        "{list:?}"
    );
}

/// What upstream's apid answers for a message over 32 MiB: grpc-go refuses
/// it with ResourceExhausted and its proxy wraps that as Internal.
fn over_the_limit(declared: usize) -> String {
    format!(
        "failed proxying s2c: rpc error: code = ResourceExhausted desc = grpc: received message \
         larger than max ({declared} vs. 33554432)"
    )
}

/// A one-message call larger than the 32 MiB limit is refused by apid
/// itself, with upstream's code and words, before anything reaches the
/// backend; one at the limit goes through to it.
#[tokio::test]
async fn a_message_over_the_limit_is_refused_at_the_door() {
    let (node, channel) = local_node_as_admin().await;
    let mut machine = MachineServiceClient::new(channel);
    let too_big = api::machine::ApplyConfigurationRequest {
        data: vec![b'#'; apid::MAX_MESSAGE + 1],
        dry_run: true,
        ..Default::default()
    };
    let declared = prost::Message::encoded_len(&too_big);
    let err = machine
        .apply_configuration(too_big)
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert_eq!(err.message(), over_the_limit(declared));

    // At the limit exactly the backend answers: not a config, but not
    // refused for its size.
    let mut fits = api::machine::ApplyConfigurationRequest {
        data: Vec::new(),
        dry_run: true,
        ..Default::default()
    };
    // The data field adds its tag (1 byte) and its length (4 bytes).
    let overhead = prost::Message::encoded_len(&fits) + 5;
    fits.data = vec![b'#'; apid::MAX_MESSAGE - overhead];
    assert_eq!(prost::Message::encoded_len(&fits), apid::MAX_MESSAGE);
    let err = machine
        .apply_configuration(fits)
        .await
        .expect_err("no config in it");
    assert_ne!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    drop(node);
}

/// A message over the limit inside a client stream fails the call where it
/// begins, for this node, for another node and fanned out, as upstream's
/// apid fails it; the backend's own limit (4 MiB for reflection) is never
/// reached. Messages before it pass as usual.
#[tokio::test]
async fn a_client_stream_message_over_the_limit_fails_the_call() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let pki = Pki::new();
    let a = start_node(
        "node-a",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let b = start_node(
        "node-b",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let config = client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"])));
    let channel = machinery::grpc::tls_channel(a.addr.to_string(), "127.0.0.1", config.clone())
        .expect("channel");

    let list = |host: String| ServerReflectionRequest {
        host,
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let huge = list("h".repeat(apid::MAX_MESSAGE));
    let declared = prost::Message::encoded_len(&huge);
    for node in [None, Some(b.addr.to_string())] {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(list(String::new())).await.expect("queued");
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(node) = &node {
            request.metadata_mut().insert(
                "node",
                MetadataValue::try_from(node.as_str()).expect("ascii"),
            );
        }
        let mut reflection = ServerReflectionClient::new(channel.clone());
        let mut stream = reflection
            .server_reflection_info(request)
            .await
            .expect("reflection")
            .into_inner();
        let first = stream.message().await.expect("first reply").expect("one");
        assert!(first.message_response.is_some(), "{node:?}: {first:?}");

        tx.send(huge.clone()).await.expect("queued");
        let err = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("answered")
            .expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::Internal, "{node:?}: {err:?}");
        assert_eq!(err.message(), over_the_limit(declared), "{node:?}");
    }

    // The first message of an EtcdRecover upload declares more than the
    // limit and comes with the call's HEADERS: for this node, for another
    // node, and fanned out.
    let client = testkit::raw_client(a.addr, config);
    let (here, there) = (a.addr.to_string(), b.addr.to_string());
    let routes: [&[(&str, &str)]; 3] = [
        &[],
        &[("node", there.as_str())],
        &[("nodes", here.as_str()), ("nodes", there.as_str())],
    ];
    for route in routes {
        let status = too_large_upload(&client, a.addr, route).await;
        assert_eq!(
            status.code(),
            tonic::Code::Internal,
            "{route:?}: {status:?}"
        );
        assert_eq!(
            status.message(),
            over_the_limit(apid::MAX_MESSAGE + 1),
            "{route:?}"
        );
    }
}

/// An EtcdRecover upload whose first DATA frame, sent with the HEADERS,
/// declares a message one byte over the limit; the status it is answered.
async fn too_large_upload(
    client: &machinery::h2::H2Client,
    addr: std::net::SocketAddr,
    route: &[(&str, &str)],
) -> tonic::Status {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(
        &u32::try_from(apid::MAX_MESSAGE + 1)
            .expect("u32")
            .to_be_bytes(),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, machinery::h2::BoxError>,
    >(1);
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(prefix))))
        .await
        .expect("queued");
    let body = machinery::h2::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("https://{addr}/machine.MachineService/EtcdRecover"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in route {
        request = request.header(*name, *value);
    }
    let request = request.body(body).expect("request");
    let answer = tokio::time::timeout(Duration::from_secs(10), client.send(request))
        .await
        .expect("answered within 10 s")
        .expect("an answer");
    let status = match tonic::Status::from_header_map(answer.headers()) {
        Some(status) => status,
        None => {
            let collected = http_body_util::BodyExt::collect(answer.into_body())
                .await
                .expect("the answer");
            tonic::Status::from_header_map(collected.trailers().expect("trailers"))
                .expect("a gRPC status")
        }
    };
    drop(tx);
    status
}

/// A client that sends a one-message call's HEADERS and then stalls is
/// answered DeadlineExceeded when its `grpc-timeout` runs out: apid does
/// not wait for the message longer than the caller would, whether the
/// call is for this node or fans out.
#[tokio::test]
async fn a_stalled_request_ends_at_its_deadline() {
    let pki = Pki::new();
    let node = start_node(
        "stalled",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let config = client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"])));
    let client = testkit::raw_client(node.addr, config);
    for fan_out in [false, true] {
        stalled_call(&client, &node, fan_out).await;
    }
}

/// A raw HTTP/2 Version call to `node`'s apid with `grpc-timeout`
/// `timeout`, to give a body.
fn version_call(node: &testkit::Node, timeout: &str) -> http::request::Builder {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://{}/machine.MachineService/Version",
            node.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
}

/// One call that stalls after its HEADERS, to this node or fanned out.
async fn stalled_call(client: &machinery::h2::H2Client, node: &testkit::Node, fan_out: bool) {
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, machinery::h2::BoxError>,
    >(1);
    let body = machinery::h2::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let mut request = version_call(node, "300m");
    if fan_out {
        request = request.header("nodes", node.addr.to_string());
    }
    let request = request.body(body).expect("request");
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), client.send(request))
        .await
        .expect("answered within 10 s")
        .expect("an answer");
    let waited = started.elapsed();
    let status = tonic::Status::from_header_map(answer.headers()).expect("a gRPC status");
    assert_eq!(
        status.code(),
        tonic::Code::DeadlineExceeded,
        "fan-out {fan_out}: {status:?}"
    );
    assert_eq!(status.message(), "deadline exceeded reading the request");
    // Fan-out answers a little before the deadline (270 ms of 300), inside
    // the caller's.
    assert!(
        waited >= Duration::from_millis(250),
        "fan-out {fan_out}: answered only when the deadline ran out: {waited:?}"
    );
    drop(tx);
}

/// Reaching routerd counts against the caller's deadline: a routerd that
/// takes the routing request and never answers ends the call when its
/// `grpc-timeout` runs out, not after apid's own routing timeout (10 s).
#[tokio::test]
async fn a_silent_router_ends_the_call_at_its_deadline() {
    let pki = Pki::new();
    let node = start_node(
        "silent-router",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    // In routerd's place, before apid asked it anything: a socket that
    // accepts and never says a word.
    let socket = node.paths.socket("routerd");
    std::fs::remove_file(&socket).expect("remove routerd's socket");
    let silent = tokio::net::UnixListener::bind(&socket).expect("bind");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    // A raw HTTP/2 call: tonic's client would cancel at the deadline on
    // this side first, and apid's answer is what is tested.
    let config = client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"])));
    let client = testkit::raw_client(node.addr, config);
    // An empty Version request: one message of length 0.
    let body = machinery::h2::boxed(http_body_util::Full::new(bytes::Bytes::from_static(&[
        0, 0, 0, 0, 0,
    ])));
    let request = version_call(&node, "1S").body(body).expect("request");
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(30), client.send(request))
        .await
        .expect("answered within 30 s")
        .expect("an answer");
    let status = tonic::Status::from_header_map(answer.headers()).expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    held.abort();
}
