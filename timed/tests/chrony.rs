//! timed against a real NTP server: chronyd, serving our own clock on
//! localhost (`local stratum 8`, `-x`: it never touches the clock), and the
//! real TimeService on a unix socket.
//!
//! chronyd comes from the Debian package chrony (`scripts/setup` installs
//! it). Without it these tests fail: they do not skip.

use std::fs::File;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use api::time::TimeRequest;
use api::time::time_service_client::TimeServiceClient;
use machinery::constants::NodePaths;
use timed::{Sntp, TimeConfig, TimeServer};
use tonic::Code;
use tonic::transport::Channel;

/// A chronyd child process, killed on drop.
struct Chronyd {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chronyd {
    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

fn find_chronyd() -> PathBuf {
    if let Some(path) = std::env::var_os("CHRONYD") {
        return PathBuf::from(path);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chronyd"))
                .collect()
        })
        .unwrap_or_default();
    candidates.extend(
        [
            "/usr/sbin/chronyd",
            "/sbin/chronyd",
            "/usr/local/sbin/chronyd",
        ]
        .map(PathBuf::from),
    );
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chronyd is not installed (looked in PATH, /usr/sbin, /sbin and /usr/local/sbin): \
                 run scripts/setup, which installs the Debian package chrony"
            )
        })
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("binding a probe socket")
        .local_addr()
        .expect("probe address")
        .port()
}

/// Starts chronyd in the foreground serving our own clock on a free port.
fn start_chronyd() -> Chronyd {
    let exe = find_chronyd();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let conf = dir.path().join("chrony.conf");
    let d = dir.path().display();
    std::fs::write(
        &conf,
        format!(
            "port {port}\n\
             bindaddress 127.0.0.1\n\
             allow 127.0.0.1\n\
             local stratum 8\n\
             cmdport 0\n\
             bindcmdaddress /\n\
             driftfile {d}/chrony.drift\n\
             pidfile {d}/chronyd.pid\n"
        ),
    )
    .expect("writing chrony.conf");
    let log = dir.path().join("chronyd.log");
    let stderr = File::create(&log).expect("creating the log");
    let stdout = stderr.try_clone().expect("log handle");
    let mut command = Command::new(&exe);
    // -d: foreground, log to stderr; -x: never touch the clock; -4: IPv4
    // only; -u root: no privilege drop (the temp dir is ours).
    command
        .args(["-d", "-x", "-4", "-u", "root", "-f"])
        .arg(&conf);
    if !rustix::process::geteuid().is_root() {
        // chronyd refuses to start as non-root without -U.
        command.arg("-U");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
    Chronyd {
        child,
        port,
        log,
        _dir: dir,
    }
}

/// Queries chronyd until it answers (up to 10 s): it may need a moment to
/// bind and to activate its local reference.
async fn first_sample(chronyd: &mut Chronyd) -> timed::Sample {
    let server = chronyd.server();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = chronyd.child.try_wait().expect("polling chronyd") {
            panic!(
                "chronyd exited early ({status}); its log:\n{}",
                chronyd.log_text()
            );
        }
        match timed::sntp::query(&server, Duration::from_millis(500)).await {
            Ok(sample) => return sample,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for chronyd: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "chronyd at {server} did not answer within 10 s: {e}\nits log:\n{}",
                chronyd.log_text()
            ),
        }
    }
}

/// The real TimeService on a unix socket in a temp node root.
struct Timed {
    _dir: tempfile::TempDir,
    client: TimeServiceClient<Channel>,
}

async fn start_timed(config: TimeConfig) -> Timed {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = NodePaths::under(dir.path()).socket("timed");
    let listener = timed::bind(&socket).expect("binding timed.sock");
    let service = TimeServer::new(Sntp, Arc::new(config));
    tokio::spawn(timed::serve(service, listener, std::future::pending()));
    let channel = machinery::grpc::unix_channel(&socket)
        .await
        .expect("connecting to timed.sock");
    Timed {
        _dir: dir,
        client: TimeServiceClient::new(channel),
    }
}

fn seconds_between(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> f64 {
    (b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9
}

#[tokio::test]
async fn a_sample_from_chronyd_shows_our_own_clock() {
    let mut chronyd = start_chronyd();
    let sample = first_sample(&mut chronyd).await;
    assert_eq!(sample.server, chronyd.server());
    assert_eq!(sample.address.to_string(), chronyd.server());
    assert!(
        sample.offset.magnitude() < Duration::from_secs(1),
        "chronyd serves our own clock, yet the offset is {}",
        sample.offset
    );
    assert!(sample.round_trip < Duration::from_secs(1), "{sample:?}");
    assert!((1..=15).contains(&sample.stratum), "{sample:?}");
    let now = SystemTime::now();
    assert!(
        timed::Offset::between(sample.local_time, now).magnitude() < Duration::from_secs(2),
        "{sample:?}"
    );
}

#[tokio::test]
async fn time_check_through_grpc_against_chronyd() {
    let mut chronyd = start_chronyd();
    first_sample(&mut chronyd).await;
    let server = chronyd.server();
    let mut node = start_timed(TimeConfig::with_servers([server.clone()])).await;

    let reply = node
        .client
        .time_check(TimeRequest {
            server: server.clone(),
        })
        .await
        .expect("TimeCheck against chronyd")
        .into_inner();
    assert_eq!(reply.messages.len(), 1);
    let time = &reply.messages[0];
    assert_eq!(time.server, server);
    let local = time.localtime.as_ref().expect("localtime");
    let remote = time.remotetime.as_ref().expect("remotetime");
    let apart = seconds_between(local, remote);
    assert!(
        apart.abs() < 2.0,
        "local {local:?} and remote {remote:?} are {apart} s apart"
    );
    let now = prost_types::Timestamp::from(SystemTime::now());
    assert!(seconds_between(local, &now).abs() < 2.0);

    // Time (no server named) uses the first configured one.
    let reply = node
        .client
        .time(())
        .await
        .expect("Time against chronyd")
        .into_inner();
    assert_eq!(reply.messages[0].server, server);
    assert!(reply.messages[0].remotetime.is_some());
}

#[tokio::test]
async fn time_check_against_a_closed_port_fails_fast() {
    // This one needs no chronyd; it sits here with its siblings.
    let mut node = start_timed(TimeConfig::disabled()).await;
    let server = format!("127.0.0.1:{}", free_udp_port());
    let mut request = tonic::Request::new(TimeRequest {
        server: server.clone(),
    });
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let status = node
        .client
        .time_check(request)
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(status.message().contains(&server), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn time_check_against_a_silent_server_meets_the_deadline() {
    let mut node = start_timed(TimeConfig::disabled()).await;
    // Bound, so no ICMP error comes back, but never answered.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let server = silent.local_addr().expect("addr").to_string();
    let mut request = tonic::Request::new(TimeRequest {
        server: server.clone(),
    });
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let status = node
        .client
        .time_check(request)
        .await
        .expect_err("no answer");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains(&server), "{status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    drop(silent);
}

#[tokio::test]
async fn time_check_without_a_server_is_invalid() {
    let mut node = start_timed(TimeConfig::defaults()).await;
    let status = node
        .client
        .time_check(TimeRequest {
            server: String::new(),
        })
        .await
        .expect_err("empty server");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "server is required");
}
