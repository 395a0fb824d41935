//! The machine API over its unix socket, served in-process by the real
//! server with real services (short shell scripts) behind it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::machine::machine_service_client::MachineServiceClient;
use api::machine::{self as pb};
use machined::configstore::ConfigStore;
use machined::logbuf::LogRegistry;
use machined::node::{Mode, Node, NodeOptions};
use machined::supervisor::{RestartPolicy, ServiceSpec, Supervisor};
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    _dir: tempfile::TempDir,
    root: PathBuf,
    node: Arc<Node>,
    client: MachineServiceClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(services: Vec<ServiceSpec>, ring: usize) -> Harness {
    start_in(tempfile::tempdir().expect("tempdir"), services, ring).await
}

/// What machined does after a config is applied in maintenance mode:
/// stop, and start again (a new node over the same root) from it.
async fn restart(mut h: Harness, services: Vec<ServiceSpec>) -> Harness {
    let dir = std::mem::replace(&mut h._dir, tempfile::tempdir().expect("tempdir"));
    let socket = h.root.join("machined.sock");
    drop(h);
    let _ = std::fs::remove_file(socket);
    start_in(dir, services, 64 * 1024).await
}

async fn start_in(dir: tempfile::TempDir, services: Vec<ServiceSpec>, ring: usize) -> Harness {
    let root = dir.path().to_path_buf();
    let options = NodeOptions {
        mode: Mode::Container,
        root: root.clone(),
        hostname: Some("node-1".into()),
        bin_dir: Some(PathBuf::from("/nonexistent")),
        apid_listen: None,
        trustd_listen: None,
    };
    let logs = Arc::new(LogRegistry::new(ring, Some(root.clone())));
    let config = Arc::new(
        ConfigStore::load(root.join("config.yaml"))
            .expect("no config yet")
            .with_live_copy(root.join("live/config.yaml"))
            .expect("live copy"),
    );
    let node = Arc::new(Node::new(options, logs, config));
    let supervisor = Arc::new(Supervisor::new(services, &node.logs, None).expect("services"));
    node.supervisor
        .set(Arc::clone(&supervisor))
        .expect("set once");
    supervisor.start_all().await;
    let socket = root.join("machined.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(machined::run::serve_api(
        Arc::clone(&node),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = machinery::grpc::unix_channel(&socket)
        .await
        .expect("connect");
    Harness {
        _dir: dir,
        root,
        node,
        client: MachineServiceClient::new(channel),
        stop: Some(stop),
    }
}

/// A service `worker` that runs and does nothing.
fn sleeping_worker() -> ServiceSpec {
    ServiceSpec::new("worker", "/bin/sh", ["-c", "exec sleep 60"])
}

async fn collect_data(
    mut stream: tonic::Streaming<api::common::Data>,
    until: impl Fn(&[u8]) -> bool,
    timeout: Duration,
) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !until(&out) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(d))) => out.extend_from_slice(&d.bytes),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("stream failed: {status}"),
            Err(_) => break,
        }
    }
    out
}

fn lines(n: usize) -> String {
    format!("i=1; while [ $i -le {n} ]; do echo \"line $i\"; i=$((i+1)); done; exec sleep 60")
}

#[tokio::test]
async fn version_hostname_and_services() {
    let mut h = start(vec![sleeping_worker()], 64 * 1024).await;
    let v = h.client.version(()).await.expect("version").into_inner();
    let v = &v.messages[0];
    assert!(v.metadata.is_none(), "a node leaves metadata empty");
    assert_eq!(
        v.version.as_ref().expect("version").tag,
        format!("v{}", machinery::constants::VERSION)
    );
    assert_eq!(v.platform.as_ref().expect("platform").mode, "container");
    assert!(v.features.is_none(), "no config: maintenance, no features");

    let host = h.client.hostname(()).await.expect("hostname").into_inner();
    assert_eq!(host.messages[0].hostname, "node-1");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = h
            .client
            .service_list(())
            .await
            .expect("services")
            .into_inner();
        let ids: Vec<&str> = list.messages[0]
            .services
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["machined", "worker"]);
        let worker = &list.messages[0].services[1];
        if worker.state == "Running" {
            assert!(worker.events.as_ref().is_some_and(|e| {
                e.events
                    .iter()
                    .any(|e| e.msg.starts_with("Started process (PID "))
            }));
            break;
        }
        assert!(Instant::now() < deadline, "worker never ran: {worker:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let resp = h
        .client
        .service_restart(pb::ServiceRestartRequest {
            id: "worker".into(),
        })
        .await
        .expect("restart");
    assert_eq!(
        resp.into_inner().messages[0].resp,
        "Service \"worker\" restarted"
    );
    let err = h
        .client
        .service_stop(pb::ServiceStopRequest { id: "nope".into() })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "service \"nope\" not found");
    let ids = h
        .client
        .logs_containers(())
        .await
        .expect("ids")
        .into_inner();
    assert!(ids.messages[0].ids.contains(&"worker".to_owned()));
    drop(h.node.supervisor.get().map(|s| s.list()));
}

#[tokio::test]
async fn logs_tail_and_follow() {
    let ticker = "i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done";
    let services = vec![
        ServiceSpec::new("talker", "/bin/sh", ["-c", &lines(100)]),
        ServiceSpec::new("ticker", "/bin/sh", ["-c", ticker]),
    ];
    let mut h = start(services, 64 * 1024).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // tail_lines = N gives exactly the last N lines.
    let req = pb::LogsRequest {
        namespace: "system".into(),
        id: "talker".into(),
        driver: 0,
        follow: false,
        tail_lines: 5,
    };
    let out = collect_data(
        h.client.logs(req).await.expect("logs").into_inner(),
        |_| false,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "line 96\nline 97\nline 98\nline 99\nline 100\n"
    );

    // tail_lines < 0: everything.
    let req = pb::LogsRequest {
        namespace: "system".into(),
        id: "talker".into(),
        driver: 0,
        follow: false,
        tail_lines: -1,
    };
    let out = collect_data(
        h.client.logs(req).await.expect("logs").into_inner(),
        |_| false,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out).lines().count(), 100);

    // follow: live lines keep arriving after the tail.
    let req = pb::LogsRequest {
        namespace: "system".into(),
        id: "ticker".into(),
        driver: 0,
        follow: true,
        tail_lines: 1,
    };
    let stream = h.client.logs(req).await.expect("logs").into_inner();
    let started = Instant::now();
    let out = collect_data(
        stream,
        |b| String::from_utf8_lossy(b).lines().count() >= 6,
        Duration::from_secs(10),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    let ticks: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.len() >= 6, "follow stalled: {text:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "lines out of order: {ticks:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the lines came from the past, not live"
    );

    let err = h
        .client
        .logs(pb::LogsRequest {
            namespace: "system".into(),
            id: "ghost".into(),
            driver: 0,
            follow: false,
            tail_lines: -1,
        })
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn log_ring_bound_holds_under_a_flood_and_files_persist() {
    // ~2.9 MB of output into a 64 KiB ring.
    let flood = "i=0; while [ $i -lt 40000 ]; do echo \"flood line number $i of the test, padded to be long\"; i=$((i+1)); done; echo END; exec sleep 60";
    let mut h = start(
        vec![ServiceSpec::new("flood", "/bin/sh", ["-c", flood]).restart(RestartPolicy::Once)],
        64 * 1024,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = pb::LogsRequest {
            namespace: "system".into(),
            id: "flood".into(),
            driver: 0,
            follow: false,
            tail_lines: -1,
        };
        let out = collect_data(
            h.client.logs(req).await.expect("logs").into_inner(),
            |_| false,
            Duration::from_secs(10),
        )
        .await;
        assert!(
            out.len() <= 64 * 1024,
            "ring exceeded its bound: {}",
            out.len()
        );
        if out.ends_with(b"END\n") {
            assert!(out.len() > 60 * 1024, "ring should be full: {}", out.len());
            break;
        }
        assert!(Instant::now() < deadline, "flood never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The file keeps everything (below the 5 MiB rotation size).
    let file = std::fs::read_to_string(h.root.join("flood.log")).expect("log file");
    assert_eq!(file.lines().count(), 40001);
}

#[tokio::test]
async fn files_read_list_and_errors() {
    let mut h = start(Vec::new(), 64 * 1024).await;
    let out = collect_data(
        h.client
            .read(pb::ReadRequest {
                path: "/proc/sys/kernel/random/boot_id".into(),
            })
            .await
            .expect("read")
            .into_inner(),
        |_| false,
        Duration::from_secs(5),
    )
    .await;
    let expected = std::fs::read("/proc/sys/kernel/random/boot_id").expect("boot id");
    assert_eq!(out, expected);
    let err = h
        .client
        .read(pb::ReadRequest {
            path: "/definitely/not/here".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .client
        .read(pb::ReadRequest {
            path: "/proc".into(),
        })
        .await
        .expect_err("directory");
    assert_eq!(err.code(), Code::InvalidArgument);

    std::fs::write(h.root.join("hello.txt"), "hi").expect("write");
    let mut stream = h
        .client
        .list(pb::ListRequest {
            root: h.root.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let mut names = Vec::new();
    while let Some(info) = stream.message().await.expect("entry") {
        names.push(info.relative_name);
    }
    assert!(
        names.contains(&".".to_owned()) && names.contains(&"hello.txt".to_owned()),
        "{names:?}"
    );

    let mem = h.client.memory(()).await.expect("memory").into_inner();
    let meminfo = mem.messages[0].meminfo.as_ref().expect("meminfo");
    assert!(meminfo.memtotal > 0 && meminfo.memtotal >= meminfo.memfree);
    let procs = h
        .client
        .processes(())
        .await
        .expect("processes")
        .into_inner();
    assert!(
        procs.messages[0]
            .processes
            .iter()
            .any(|p| p.pid == std::process::id() as i32)
    );

    // Disk and link counters: every line of the kernel's tables, and the
    // totals their sums, as upstream's.
    let disks = h
        .client
        .disk_stats(())
        .await
        .expect("disk stats")
        .into_inner();
    let disks = &disks.messages[0];
    let kernel: Vec<String> = std::fs::read_to_string("/proc/diskstats")
        .expect("diskstats")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    let names: Vec<String> = disks.devices.iter().map(|d| d.name.clone()).collect();
    assert_eq!(names, kernel);
    let total = disks.total.as_ref().expect("total");
    assert_eq!(
        total.read_sectors,
        disks.devices.iter().map(|d| d.read_sectors).sum::<u64>()
    );
    let links = h
        .client
        .network_device_stats(())
        .await
        .expect("network device stats")
        .into_inner();
    let links = &links.messages[0];
    let lo = links
        .devices
        .iter()
        .find(|d| d.name == "lo")
        .expect("lo in /proc/net/dev");
    assert!(lo.rx_packets > 0 && lo.rx_bytes > 0, "{lo:?}");
    let total = links.total.as_ref().expect("total");
    assert_eq!(total.name, "total");
    assert!(total.rx_bytes >= lo.rx_bytes);
    let freq = h
        .client
        .cpu_freq_stats(())
        .await
        .expect("cpu freq stats")
        .into_inner();
    assert_eq!(freq.messages.len(), 1);
}

#[tokio::test]
async fn container_mode_refuses_power_actions() {
    let mut h = start(Vec::new(), 64 * 1024).await;
    let err = h
        .client
        .reboot(pb::RebootRequest::default())
        .await
        .expect_err("reboot");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "reboot is not supported in container mode");
    let err = h
        .client
        .shutdown(pb::ShutdownRequest::default())
        .await
        .expect_err("shutdown");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = h
        .client
        .etcd_member_list(pb::EtcdMemberListRequest::default())
        .await
        .expect_err("etcd");
    assert_eq!(err.code(), Code::Unimplemented);
}

fn generated() -> machinery::generate::Generated {
    let now = std::time::SystemTime::now();
    let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
    machinery::generate::generate(
        &bundle,
        &machinery::generate::GenOptions::new("apply", "https://127.0.0.1:6443"),
        now,
    )
    .expect("configs")
}

fn with_hostname(yaml: &str, hostname: &str) -> String {
    machinery::generate::apply_patch(
        yaml,
        &format!("machine:\n  network:\n    hostname: {hostname}\n"),
    )
    .expect("patch")
}

fn apply(
    data: &str,
    mode: pb::apply_configuration_request::Mode,
    dry_run: bool,
    try_timeout: Option<Duration>,
) -> pb::ApplyConfigurationRequest {
    pb::ApplyConfigurationRequest {
        data: data.as_bytes().to_vec(),
        mode: mode as i32,
        dry_run,
        try_mode_timeout: try_timeout
            .map(|d| prost_types::Duration::try_from(d).expect("duration")),
    }
}

async fn hostname(h: &mut Harness) -> String {
    h.client
        .hostname(())
        .await
        .expect("hostname")
        .into_inner()
        .messages
        .remove(0)
        .hostname
}

#[tokio::test]
async fn apply_configuration_modes_and_refusals() {
    use pb::apply_configuration_request::Mode;
    let mut h = start(Vec::new(), 64 * 1024).await;
    let persisted = h.root.join("config.yaml");
    // What networkd and timed read: the live config.
    let live = h.root.join("live/config.yaml");
    let live_now = || std::fs::read_to_string(&live).expect("live copy");
    assert!(
        h.root.join("live").is_dir() && !live.exists(),
        "no config yet"
    );
    let base = generated().controlplane_yaml;

    // Maintenance → first config, applied live and persisted.
    let good = with_hostname(&base, "first");
    let reply = h
        .client
        .apply_configuration(apply(&good, Mode::Auto, false, None))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(reply.messages[0].mode, Mode::NoReboot as i32);
    assert_eq!(
        reply.messages[0].mode_details,
        "Applied configuration without a reboot"
    );
    // A generated config sets nothing this node leaves undone.
    assert!(
        reply.messages[0].warnings.is_empty(),
        "{:?}",
        reply.messages[0].warnings
    );
    assert_eq!(hostname(&mut h).await, "first");
    let on_disk = std::fs::read_to_string(&persisted).expect("persisted");
    assert!(on_disk.contains("hostname: first"));
    assert_eq!(live_now(), on_disk);

    // Until machined has started over from it, no other config is taken.
    let err = h
        .client
        .apply_configuration(apply(&good, Mode::Auto, false, None))
        .await
        .expect_err("a second apply in the maintenance run");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("starting from it"), "{err:?}");
    let mut h = restart(h, Vec::new()).await;
    assert_eq!(hostname(&mut h).await, "first");

    // Refusals: each names the problem, and nothing changes.
    let bad_yaml = "version: v1alpha1\nmachine: [unclosed";
    let unknown_key = base.replace("  network:", "  networkz:");
    let wrong_type = with_hostname(&base, "x").replace("hostname: x", "hostname: [1, 2]");
    let encrypted = machinery::generate::apply_patch(
        &base,
        "machine:\n  systemDiskEncryption:\n    state:\n      provider: luks2\n      keys:\n        - nodeID: {}\n          slot: 0\n",
    )
    .expect("patch");
    for (what, data, needle) in [
        ("bad YAML", bad_yaml.to_owned(), "machine config"),
        ("unknown key", unknown_key, "networkz"),
        ("wrong type", wrong_type, "machine.network.hostname"),
        ("disk encryption", encrypted, "machine.systemDiskEncryption"),
    ] {
        let err = h
            .client
            .apply_configuration(apply(&data, Mode::NoReboot, false, None))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{what}: {:?} does not name {needle:?}",
            err.message()
        );
        assert_eq!(
            hostname(&mut h).await,
            "first",
            "{what} changed the running config"
        );
        assert_eq!(
            std::fs::read_to_string(&persisted).expect("persisted"),
            on_disk,
            "{what} changed the persisted config"
        );
        assert_eq!(live_now(), on_disk, "{what} changed the live config");
    }

    // Dry run: a diff, no change.
    let second = with_hostname(&base, "second");
    let reply = h
        .client
        .apply_configuration(apply(&second, Mode::NoReboot, true, None))
        .await
        .expect("dry run")
        .into_inner();
    let details = &reply.messages[0].mode_details;
    assert!(
        details.contains("-    hostname: first") && details.contains("+    hostname: second"),
        "{details}"
    );
    assert_eq!(hostname(&mut h).await, "first");

    // What the node will not do is said back (a dry run too), from
    // machinery's list and networkd's.
    let unapplied = machinery::generate::apply_patch(
        &second,
        "machine:\n  kernel:\n    modules:\n      - name: br_netfilter\n  network:\n    interfaces:\n      - interface: eth0\n        vip:\n          ip: 10.5.0.100\n",
    )
    .expect("patch");
    let reply = h
        .client
        .apply_configuration(apply(&unapplied, Mode::NoReboot, true, None))
        .await
        .expect("dry run")
        .into_inner();
    let warnings = &reply.messages[0].warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("machine.kernel.modules: not loaded")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("(eth0): vip is not supported")),
        "{warnings:?}"
    );

    // Staged: persisted for the next boot, not live.
    h.client
        .apply_configuration(apply(&second, Mode::Staged, false, None))
        .await
        .expect("staged");
    assert_eq!(hostname(&mut h).await, "first");
    assert!(
        std::fs::read_to_string(&persisted)
            .expect("persisted")
            .contains("hostname: second")
    );
    assert_eq!(live_now(), on_disk, "staged reached the daemons");
    h.client
        .apply_configuration(apply(&good, Mode::NoReboot, false, None))
        .await
        .expect("back to first");

    // Try: live at once, reverted after its timeout.
    let trial = with_hostname(&base, "trial");
    let reply = h
        .client
        .apply_configuration(apply(
            &trial,
            Mode::Try,
            false,
            Some(Duration::from_secs(1)),
        ))
        .await
        .expect("try")
        .into_inner();
    assert_eq!(reply.messages[0].mode, Mode::Try as i32);
    assert_eq!(hostname(&mut h).await, "trial");
    assert!(
        !std::fs::read_to_string(&persisted)
            .expect("persisted")
            .contains("trial"),
        "try mode must not persist"
    );
    assert!(
        live_now().contains("hostname: trial"),
        "try did not reach the daemons"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(hostname(&mut h).await, "first", "try mode did not revert");
    assert_eq!(live_now(), on_disk, "the daemons' copy did not revert");

    // A machine type change is refused.
    let worker = with_hostname(&generated().worker_yaml, "w");
    let err = h
        .client
        .apply_configuration(apply(&worker, Mode::NoReboot, false, None))
        .await
        .expect_err("type change");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("machine type"), "{}", err.message());
}

#[tokio::test]
async fn generate_client_configuration_issues_a_working_identity() {
    use pb::apply_configuration_request::Mode;
    let mut h = start(Vec::new(), 64 * 1024).await;
    let req = pb::GenerateClientConfigurationRequest {
        roles: vec!["os:reader".into()],
        crt_ttl: None,
    };
    let err = h
        .client
        .generate_client_configuration(req.clone())
        .await
        .expect_err("no config yet");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let base = generated().controlplane_yaml;
    h.client
        .apply_configuration(apply(&base, Mode::NoReboot, false, None))
        .await
        .expect("apply");
    let reply = h
        .client
        .generate_client_configuration(req)
        .await
        .expect("generated")
        .into_inner()
        .messages
        .remove(0);
    let info = machinery::pki::cert_info(&reply.crt).expect("cert");
    assert_eq!(info.organizations, ["os:reader"]);
    assert!(info.ext_key_usage_is_exactly_client_auth());
    machinery::pki::verify_signed_by(&reply.crt, &reply.ca).expect("signed by the OS CA");
    let ttl = info.not_after.duration_since(info.not_before).expect("ttl");
    assert!(
        ttl >= Duration::from_secs(8_700 * 3600),
        "default TTL is a year: {ttl:?}"
    );
    let talosconfig = machinery::talosconfig::TalosConfig::from_yaml(
        std::str::from_utf8(&reply.talosconfig).expect("utf8"),
        std::path::Path::new("generated"),
    )
    .expect("talosconfig parses");
    assert_eq!(talosconfig.context, "apply");

    let bad = pb::GenerateClientConfigurationRequest {
        roles: vec!["os:superuser".into()],
        crt_ttl: None,
    };
    let err = h
        .client
        .generate_client_configuration(bad)
        .await
        .expect_err("unknown role");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn dmesg_reads_the_kernel_log_in_upstream_format() {
    let mut h = start(Vec::new(), 64 * 1024).await;
    match h
        .client
        .dmesg(pb::DmesgRequest {
            follow: false,
            tail: false,
        })
        .await
    {
        Ok(stream) => {
            let out = collect_data(
                stream.into_inner(),
                |b| b.len() > 4096,
                Duration::from_secs(10),
            )
            .await;
            let text = String::from_utf8_lossy(&out);
            let first = text
                .lines()
                .next()
                .expect("the kernel has logged something");
            // `<facility>: <priority, right-aligned to 7>: [<RFC 3339 time>]: <text>`
            let parts: Vec<&str> = first.splitn(3, ": ").collect();
            assert_eq!(parts.len(), 3, "{first}");
            assert_eq!(parts[1].len(), 7, "priority right-aligned to 7: {first}");
            assert!(
                parts[2].starts_with('[') && parts[2].contains("]: "),
                "{first}"
            );
        }
        // Without CAP_SYSLOG the kernel refuses; the API says so plainly.
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("/dev/kmsg"));
        }
    }
}

#[test]
fn the_version_comes_from_our_os_release_only() {
    let ours = "NAME=\"Talos-rs\"\nID=talos-rs\nVERSION=\"0.1.0-v2\"\nVERSION_ID=0.1.0-v2\n";
    assert_eq!(
        machined::server::image_version(ours).as_deref(),
        Some("0.1.0-v2")
    );
    let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n";
    assert_eq!(machined::server::image_version(debian), None);
    assert_eq!(machined::server::image_version("ID=talos-rs\n"), None);
}

// === COSI resources ===

mod cosi {
    use super::*;
    use api::cosi::resource::state_client::StateClient;
    use api::cosi::resource::{self as cosi_pb, EventType};
    use prost::Message as _;

    fn get(namespace: &str, type_: &str, id: &str) -> cosi_pb::GetRequest {
        cosi_pb::GetRequest {
            namespace: namespace.into(),
            r#type: type_.into(),
            id: id.into(),
            options: None,
        }
    }

    fn with_role<T>(message: T, role: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("talos-role", role.parse().expect("ascii"));
        request
    }

    async fn list(
        state: &mut StateClient<Channel>,
        namespace: &str,
        type_: &str,
        id_regexp: &str,
    ) -> Result<Vec<cosi_pb::Resource>, tonic::Status> {
        let mut stream = state
            .list(cosi_pb::ListRequest {
                namespace: namespace.into(),
                r#type: type_.into(),
                options: Some(cosi_pb::ListOptions {
                    id_query: Some(cosi_pb::IdQuery {
                        regexp: id_regexp.into(),
                    }),
                }),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(reply) = stream.message().await? {
            out.extend(reply.resource);
        }
        Ok(out)
    }

    fn id(r: &cosi_pb::Resource) -> &str {
        &r.metadata.as_ref().expect("metadata").id
    }

    fn version(r: &cosi_pb::Resource) -> &str {
        &r.metadata.as_ref().expect("metadata").version
    }

    fn yaml(r: &cosi_pb::Resource) -> &str {
        &r.spec.as_ref().expect("spec").yaml_spec
    }

    /// The machine config resource, read as a local caller.
    async fn current_config(state: &mut StateClient<Channel>) -> cosi_pb::Resource {
        state
            .get(get("config", MC, "v1alpha1"))
            .await
            .expect("machine config")
            .into_inner()
            .resource
            .expect("resource")
    }

    const MC: &str = "MachineConfigs.config.talos.dev";
    const SVC: &str = "Services.v1alpha1.talos.dev";

    #[tokio::test]
    async fn resources_are_read_only_versioned_role_checked_and_watched() {
        use pb::apply_configuration_request::Mode;
        let mut h = start(vec![sleeping_worker()], 64 * 1024).await;
        let channel = machinery::grpc::unix_channel(&h.root.join("machined.sock"))
            .await
            .expect("connect");
        let mut state = StateClient::new(channel);

        // The definitions clients resolve names against, in upstream's
        // shape (proto spec and YAML spec agree).
        let defs = list(&mut state, "meta", "ResourceDefinitions.meta.cosi.dev", "")
            .await
            .expect("definitions");
        let meta_keys = defs
            .iter()
            .find(|d| id(d) == "metakeys.runtime.talos.dev")
            .expect("MetaKeys defined");
        let spec = api::cosi::resource::meta::ResourceDefinitionSpec::decode(
            meta_keys.spec.as_ref().expect("spec").proto_spec.as_slice(),
        )
        .expect("proto spec");
        assert_eq!(spec.resource_type, "MetaKeys.runtime.talos.dev");
        assert_eq!(spec.display_type, "MetaKey");
        assert_eq!(spec.default_namespace, "runtime");
        assert_eq!(spec.aliases, ["meta", "metakey", "mk", "mks"]);
        assert_eq!(
            spec.all_aliases,
            [
                "metakeys",
                "metakeys.runtime",
                "metakeys.runtime.talos",
                "meta",
                "metakey",
                "mk",
                "mks"
            ]
        );
        assert_eq!(spec.print_columns[0].json_path, "{.value}");
        assert!(yaml(meta_keys).contains("defaultNamespace: runtime"));
        let mc_def = defs
            .iter()
            .find(|d| id(d) == "machineconfigs.config.talos.dev")
            .expect("MachineConfigs defined");
        assert!(yaml(mc_def).contains("sensitivity: sensitive"));
        let namespaces: Vec<String> = list(&mut state, "meta", "Namespaces.meta.cosi.dev", "")
            .await
            .expect("namespaces")
            .iter()
            .map(|r| id(r).to_owned())
            .collect();
        assert_eq!(
            namespaces,
            ["config", "hardware", "meta", "network", "runtime"]
        );

        // No config yet: no MachineConfig, and the error is upstream's.
        let err = state
            .get(get("config", MC, "v1alpha1"))
            .await
            .expect_err("no config yet");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            err.message(),
            "resource MachineConfigs.config.talos.dev(config/v1alpha1@undefined) doesn't exist"
        );

        // A config applied: the resource holds it, version 1.
        let base = generated().controlplane_yaml;
        h.client
            .apply_configuration(apply(
                &with_hostname(&base, "first"),
                Mode::Auto,
                false,
                None,
            ))
            .await
            .expect("apply");
        // machined starts over from a config applied in maintenance mode.
        let mut h = restart(h, vec![sleeping_worker()]).await;
        let mut state = StateClient::new(
            machinery::grpc::unix_channel(&h.root.join("machined.sock"))
                .await
                .expect("connect"),
        );
        let first = current_config(&mut state).await;
        assert_eq!(version(&first), "1");
        let proto = api::resource::config::MachineConfigSpec::decode(
            first.spec.as_ref().expect("spec").proto_spec.as_slice(),
        )
        .expect("proto spec");
        let text = String::from_utf8(proto.yaml_marshalled).expect("utf8");
        assert!(text.contains("hostname: first"), "{text}");
        // The YAML spec is that same document.
        assert_eq!(yaml(&first), text);

        // Sensitive: only os:admin through apid; a local caller (no
        // talos-role) is root on the node.
        let err = state
            .get(with_role(get("config", MC, "v1alpha1"), "os:reader"))
            .await
            .expect_err("reader");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "not authorized");
        let err = state
            .list(with_role(
                cosi_pb::ListRequest {
                    namespace: "config".into(),
                    r#type: MC.into(),
                    options: None,
                },
                "os:operator",
            ))
            .await
            .expect_err("operator lists");
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = state
            .watch(with_role(
                cosi_pb::WatchRequest {
                    namespace: "config".into(),
                    r#type: MC.into(),
                    id: Some("v1alpha1".into()),
                    options: None,
                    api_version: 1,
                },
                "os:reader",
            ))
            .await
            .expect_err("reader watches");
        assert_eq!(err.code(), Code::PermissionDenied);
        state
            .get(with_role(get("config", MC, "v1alpha1"), "os:admin"))
            .await
            .expect("admin reads the config");
        let host = state
            .get(with_role(
                get("network", "HostnameStatuses.net.talos.dev", "hostname"),
                "os:reader",
            ))
            .await
            .expect("readers read the hostname")
            .into_inner()
            .resource
            .expect("resource");
        assert_eq!(yaml(&host), "hostname: first\ndomainname: ''\n");

        // Another config: the version counts the change; created stays.
        h.client
            .apply_configuration(apply(
                &with_hostname(&base, "second"),
                Mode::NoReboot,
                false,
                None,
            ))
            .await
            .expect("apply");
        let second = current_config(&mut state).await;
        assert_eq!(version(&second), "2");
        let (m1, m2) = (
            first.metadata.as_ref().expect("md"),
            second.metadata.as_ref().expect("md"),
        );
        assert_eq!(m1.created, m2.created);
        assert!(yaml(&second).contains("hostname: second"));
        let again = current_config(&mut state).await;
        assert_eq!(version(&again), "2", "unchanged: same version");

        // Refusals, each with upstream's code.
        let err = state
            .get(get("cluster", "Members.cluster.talos.dev", "x"))
            .await
            .expect_err("unknown type");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "resource type \"Members.cluster.talos.dev\" is not supported"
        );
        let err = state
            .get(get("secrets", SVC, "worker"))
            .await
            .expect_err("unknown namespace");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "namespace \"secrets\" is not supported");
        let err = state
            .get(get("network", SVC, "worker"))
            .await
            .expect_err("not in that namespace");
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            list(&mut state, "network", SVC, "")
                .await
                .expect("list")
                .is_empty()
        );
        let err = state
            .create(cosi_pb::CreateRequest {
                resource: Some(first.clone()),
                options: None,
            })
            .await
            .expect_err("writes");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "write access is not allowed");
        let err = list(&mut state, "runtime", SVC, "(unclosed")
            .await
            .expect_err("bad regexp");
        assert_eq!(err.code(), Code::InvalidArgument);

        // Services, filtered by id.
        let services: Vec<String> = list(&mut state, "runtime", SVC, "")
            .await
            .expect("services")
            .iter()
            .map(|r| id(r).to_owned())
            .collect();
        assert_eq!(services, ["machined", "worker"]);
        let only = list(&mut state, "runtime", SVC, "^work")
            .await
            .expect("services");
        assert_eq!(only.len(), 1);
        assert_eq!(
            yaml(&only[0]),
            "running: true\nhealthy: false\nunknown: true\n"
        );

        // Watch: a ready signal, the contents, BOOTSTRAPPED, then the
        // change a stopped service makes.
        let err = state
            .watch(cosi_pb::WatchRequest {
                namespace: "runtime".into(),
                r#type: SVC.into(),
                id: Some("worker".into()),
                options: Some(cosi_pb::WatchOptions {
                    bootstrap_contents: true,
                    ..Default::default()
                }),
                api_version: 1,
            })
            .await
            .expect_err("bootstrap of one resource");
        assert_eq!(err.code(), Code::Unimplemented);
        let err = state
            .watch(cosi_pb::WatchRequest {
                namespace: "runtime".into(),
                r#type: SVC.into(),
                id: None,
                options: Some(cosi_pb::WatchOptions {
                    tail_events: 5,
                    ..Default::default()
                }),
                api_version: 1,
            })
            .await
            .expect_err("history");
        assert_eq!(err.code(), Code::Unimplemented);
        // One resource: its state comes first, DESTROYED when it is absent.
        for (which, expect) in [
            ("worker", EventType::Created),
            ("nope", EventType::Destroyed),
        ] {
            let mut one = state
                .watch(cosi_pb::WatchRequest {
                    namespace: "runtime".into(),
                    r#type: SVC.into(),
                    id: Some(which.into()),
                    options: None,
                    api_version: 1,
                })
                .await
                .expect("watch one")
                .into_inner();
            let ready = one.message().await.expect("stream").expect("open");
            assert!(ready.event.is_empty());
            let first = one.message().await.expect("stream").expect("open");
            assert_eq!(first.event.len(), 1);
            assert_eq!(first.event[0].event_type(), expect, "{which}");
            assert_eq!(
                id(first.event[0].resource.as_ref().expect("resource")),
                which
            );
        }
        let mut watch = state
            .watch(cosi_pb::WatchRequest {
                namespace: "runtime".into(),
                r#type: SVC.into(),
                id: None,
                options: Some(cosi_pb::WatchOptions {
                    bootstrap_contents: true,
                    ..Default::default()
                }),
                api_version: 1,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), watch.message())
                .await
                .expect("an event in time")
                .expect("stream")
                .expect("open")
                .event
        };
        assert!(next().await.is_empty(), "the ready signal comes first");
        let mut seen = Vec::new();
        loop {
            let events = next().await;
            assert_eq!(events.len(), 1, "one event per response: {events:?}");
            let e = &events[0];
            if e.event_type() == EventType::Bootstrapped {
                assert_eq!(id(e.resource.as_ref().expect("tombstone")), "");
                break;
            }
            assert_eq!(e.event_type(), EventType::Created);
            seen.push(id(e.resource.as_ref().expect("resource")).to_owned());
        }
        assert_eq!(seen, ["machined", "worker"]);
        h.client
            .service_stop(pb::ServiceStopRequest {
                id: "worker".into(),
            })
            .await
            .expect("stop");
        let event = loop {
            let events = next().await;
            if let Some(e) = events.into_iter().next() {
                break e;
            }
        };
        assert_eq!(event.event_type(), EventType::Updated);
        let now = event.resource.as_ref().expect("resource");
        assert_eq!(id(now), "worker");
        assert!(yaml(now).starts_with("running: false\n"), "{}", yaml(now));
        assert!(yaml(event.old.as_ref().expect("old")).starts_with("running: true\n"));
        assert_eq!(version(now), "2");
    }
}
