//! Real binaries end to end, no root: container-mode machined starts
//! routerd, apid and trustd; a control plane issues its own credentials, a
//! worker gets its certificate from the control plane's trustd, and calls go
//! through apid over mTLS. (`cargo build --workspace --bins` first;
//! scripts/test does.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use api::machine::machine_service_client::MachineServiceClient;

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_machined"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

fn require_binaries() {
    for b in ["machined", "routerd", "apid", "trustd"] {
        assert!(
            bin_dir().join(b).exists(),
            "{b} is not built: run `cargo build --workspace --bins` (scripts/test does)"
        );
    }
}

struct Node {
    child: Child,
    root: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(root: &Path, name: &str, ip: &str, config: Option<&str>) -> Node {
    if let Some(config) = config {
        let state = root.join("system/state");
        std::fs::create_dir_all(&state).expect("mkdir");
        std::fs::write(machinery::config::persist_path(&state), config).expect("config");
    }
    let log = std::fs::File::create(root.join("machined.log")).expect("log");
    let child = Command::new(bin_dir().join("machined"))
        .args(["--mode", "container", "--root"])
        .arg(root)
        .args([
            "--hostname",
            name,
            "--apid-listen",
            &format!("{ip}:50000"),
            "--trustd-listen",
            &format!("{ip}:50001"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("machined starts");
    Node {
        child,
        root: root.to_path_buf(),
    }
}

fn tls(ctx: &machinery::talosconfig::Context) -> Arc<rustls::ClientConfig> {
    machinery::grpc::client_tls_config(
        &ctx.ca_pem().expect("ca"),
        Some((&ctx.crt_pem().expect("crt"), &ctx.key_pem().expect("key"))),
    )
    .expect("tls")
}

async fn wait_for_version(
    client: &mut MachineServiceClient<tonic::transport::Channel>,
    what: &str,
    node: &Node,
) -> api::machine::Version {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut req = tonic::Request::new(());
        req.set_timeout(Duration::from_secs(5));
        match client.version(req).await {
            Ok(r) => return r.into_inner().messages.remove(0),
            Err(status) => {
                if Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(node.root.join("machined.log")).unwrap_or_default();
                    panic!("{what} never answered: {status}\n--- machined.log ---\n{log}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn control_plane_and_worker_over_mtls() {
    require_binaries();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cp_ip, worker_ip) = ("127.7.0.2", "127.7.0.3");
    let now = SystemTime::now();
    let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
    let opts = machinery::generate::GenOptions::new("e2e", format!("https://{cp_ip}:6443"));
    let generated = machinery::generate::generate(&bundle, &opts, now).expect("configs");
    let ctx = generated
        .talosconfig
        .contexts
        .get("e2e")
        .expect("context")
        .clone();
    let config = tls(&ctx);
    // An NTP server where nothing listens: timed's Time answers at once,
    // Unavailable naming it.
    let ntp = "127.7.0.2:9";
    let cp_yaml = machinery::generate::apply_patch(
        &generated.controlplane_yaml,
        &format!(
            "machine:\n  time:\n    servers:\n      - {ntp}\n  \
             env:\n    TALOS_E2E_ENV: from-the-config\n  \
             files:\n    - path: /var/etc/e2e/motd\n      op: create\n      \
             permissions: 0o640\n      content: written at boot\n"
        ),
    )
    .expect("patch");

    let cp = start(&dir.path().join("cp"), "e2e-cp-1", cp_ip, Some(&cp_yaml));
    let worker = start(
        &dir.path().join("worker"),
        "e2e-worker-1",
        worker_ip,
        Some(&generated.worker_yaml),
    );

    let mut cp_client = MachineServiceClient::new(
        machinery::grpc::tls_channel(format!("{cp_ip}:50000"), cp_ip, Arc::clone(&config))
            .expect("channel"),
    );
    let v = wait_for_version(&mut cp_client, "the control plane", &cp).await;
    assert_eq!(v.platform.expect("platform").mode, "container");
    assert!(v.features.expect("config loaded: features").rbac);

    let mut worker_client = MachineServiceClient::new(
        machinery::grpc::tls_channel(format!("{worker_ip}:50000"), worker_ip, Arc::clone(&config))
            .expect("channel"),
    );
    wait_for_version(
        &mut worker_client,
        "the worker (certificate from trustd)",
        &worker,
    )
    .await;
    let info = machinery::pki::cert_info(
        &std::fs::read(worker.root.join("system/secrets/api/server.crt")).expect("worker cert"),
    )
    .expect("parse");
    assert!(
        info.organizations.is_empty(),
        "trustd must strip organizations: {:?}",
        info.organizations
    );
    assert!(
        !worker.root.join("system/secrets/api/client.crt").exists(),
        "workers get no client certificate"
    );

    // Services on the control plane, through apid → routerd → machined.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = cp_client
            .service_list(())
            .await
            .expect("services")
            .into_inner();
        let services: Vec<(String, String, bool)> = list.messages[0]
            .services
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    s.state.clone(),
                    s.health.as_ref().is_some_and(|h| h.healthy),
                )
            })
            .collect();
        let ids: Vec<&str> = services.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            ids,
            [
                "apid", "machined", "networkd", "routerd", "timed", "trustd", "udevd"
            ]
        );
        if services.iter().all(|s| s.1 == "Running" && s.2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "services never all healthy: {services:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Without --bin-dir, machined runs the daemons from its own executable,
    // each named after its daemon (argv[0] and the process name).
    let machined_exe = std::fs::canonicalize(bin_dir().join("machined")).expect("machined");
    let mut carried = Vec::new();
    for (pid, comm) in testkit::children_of(cp.child.id()) {
        // A PID gone since the scan (a restart) leaves its daemon missing
        // from the list below, which then fails.
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        assert_eq!(
            exe, machined_exe,
            "{comm} (PID {pid}) runs another executable"
        );
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        assert_eq!(
            argv0,
            comm.as_bytes(),
            "PID {pid}: argv[0] against the process name"
        );
        carried.push(comm);
    }
    // machine.env reaches every service; machine.files under the root.
    let mut with_env = 0;
    for (pid, comm) in testkit::children_of(cp.child.id()) {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        with_env += 1;
        assert!(
            environ
                .split(|&b| b == 0)
                .any(|kv| kv == b"TALOS_E2E_ENV=from-the-config"),
            "{comm} (PID {pid}) lacks machine.env"
        );
    }
    assert!(with_env >= 6, "only {with_env} services checked");
    let motd = cp.root.join("var/etc/e2e/motd");
    assert_eq!(
        std::fs::read_to_string(&motd).expect("machine.files written"),
        "written at boot"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&motd).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
    carried.sort();
    assert_eq!(
        carried,
        ["apid", "networkd", "routerd", "timed", "trustd", "udevd"]
    );

    // storage.* is routed to udevd: the host's disks, read from /sys.
    let channel =
        machinery::grpc::tls_channel(format!("{cp_ip}:50000"), cp_ip, Arc::clone(&config))
            .expect("channel");
    let disks = api::storage::storage_service_client::StorageServiceClient::new(channel)
        .disks(())
        .await
        .expect("disks via udevd")
        .into_inner();
    let expected = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    !(n.starts_with("loop")
                        || n.starts_with("ram")
                        || n.starts_with("zram")
                        || n.starts_with("dm-"))
                        && std::fs::read_to_string(e.path().join("size"))
                            .is_ok_and(|s| s.trim() != "0")
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(disks.messages[0].disks.len(), expected, "{disks:?}");

    // The control plane forwards to the worker (node metadata).
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("node", worker_ip.parse().expect("ascii"));
    let host = cp_client
        .hostname(req)
        .await
        .expect("forwarded")
        .into_inner();
    assert_eq!(host.messages[0].hostname, "e2e-worker-1");
    // The worker does not forward.
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("node", cp_ip.parse().expect("ascii"));
    let err = worker_client
        .hostname(req)
        .await
        .expect_err("workers do not forward");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // timed follows the live config: a `try` apply reaches it and is
    // reverted in it; a `staged` one does not reach it.
    let channel =
        machinery::grpc::tls_channel(format!("{cp_ip}:50000"), cp_ip, Arc::clone(&config))
            .expect("channel");
    let mut time = api::time::time_service_client::TimeServiceClient::new(channel);
    let mut time_answer = async || {
        let mut req = tonic::Request::new(());
        req.set_timeout(Duration::from_secs(10));
        match time.time(req).await {
            Ok(r) => panic!("an answer from {ntp}: {r:?}"),
            Err(status) => (status.code(), status.message().to_owned()),
        }
    };
    let syncing = |(code, message): (tonic::Code, String)| {
        code == tonic::Code::Unavailable && message.contains(ntp)
    };
    // Another server (where nothing listens either): `Time` asks the
    // first configured one, so its answer names the config timed reads.
    let other_ntp = "127.7.0.2:7";
    let disabled = machinery::generate::apply_patch(
        &cp_yaml,
        &format!("machine:\n  time:\n    disabled: true\n    servers:\n      - {other_ntp}\n"),
    )
    .expect("patch");
    let apply = |mode: api::machine::apply_configuration_request::Mode, timeout| {
        api::machine::ApplyConfigurationRequest {
            data: disabled.clone().into_bytes(),
            mode: mode as i32,
            dry_run: false,
            try_mode_timeout: timeout,
        }
    };
    use api::machine::apply_configuration_request::Mode;
    let answer = time_answer().await;
    assert!(syncing(answer.clone()), "{answer:?}");
    cp_client
        .apply_configuration(apply(
            Mode::Try,
            Some(prost_types::Duration {
                seconds: 4,
                nanos: 0,
            }),
        ))
        .await
        .expect("try");
    let answer = time_answer().await;
    assert_eq!(answer.0, tonic::Code::Unavailable, "{answer:?}");
    assert!(answer.1.contains(other_ntp), "{answer:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let answer = time_answer().await;
    assert!(
        syncing(answer.clone()),
        "the try was not reverted in timed: {answer:?}"
    );
    cp_client
        .apply_configuration(apply(Mode::Staged, None))
        .await
        .expect("staged");
    let answer = time_answer().await;
    assert!(
        syncing(answer.clone()),
        "a staged config reached timed: {answer:?}"
    );

    drop(worker);
    drop(cp);
    // machined stopped its services: nothing of this test is left running.
    std::thread::sleep(Duration::from_millis(200));
    let root = dir.path().as_os_str().as_encoded_bytes().to_vec();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let mentions = cmdline.windows(root.len()).any(|w| w == root.as_slice());
            assert!(
                !mentions,
                "left running: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            );
        }
    }
}
