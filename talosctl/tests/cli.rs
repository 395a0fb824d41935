//! The real talosctl binary against real local clusters (process
//! provisioner: container-mode machined, routerd, apid, trustd on loopback
//! addresses). Needs every binary built: `cargo build --workspace --bins`
//! (scripts/test does it first).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, ok, patch_live, run, run_env, talosctl};
use std::time::{Duration, SystemTime};

fn require_binaries() {
    let dir = talosctl().parent().expect("dir").to_path_buf();
    for b in ["machined", "routerd", "apid", "trustd"] {
        assert!(
            dir.join(b).exists(),
            "{b} is not built: run `cargo build --workspace --bins` (scripts/test does)"
        );
    }
}

/// [`run`] with `EDITOR` set (for `talosctl edit`).
fn run_with_editor(talosconfig: &Path, editor: &Path, args: &[&str]) -> Run {
    run_env(talosconfig, args, &[("EDITOR", editor)])
}

/// `get hostname` shows one row: the node's hostname at that version.
fn assert_hostname_row(talosconfig: &Path, node: &str, version: &str, hostname: &str) {
    let table = ok(talosconfig, &["get", "hostname"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    node,
                    "network",
                    "HostnameStatus",
                    "hostname",
                    version,
                    hostname
                ]),
        "{table}"
    );
    // The same through a JSONPath template, as upstream's `-o jsonpath=`.
    let picked = ok(
        talosconfig,
        &["get", "hostname", "-o", "jsonpath={.spec.hostname}"],
    );
    assert_eq!(picked, format!("{hostname}\n"));
    // range and recursive descent, read as upstream reads them.
    let picked = ok(
        talosconfig,
        &[
            "get",
            "hostname",
            "-o",
            "jsonpath={range .metadata}{.id}{end}{..hostname}",
        ],
    );
    assert_eq!(picked, format!("hostname\n{hostname}\n"));
    let r = run(
        talosconfig,
        &["get", "hostname", "-o", "jsonpath={.spec.nosuchfield}"],
    );
    assert_ne!(r.code, 0);
    assert!(r.err.contains("nosuchfield is not found"), "{}", r.err);
    let r = run(talosconfig, &["get", "hostname", "-o", "xml"]);
    assert!(
        r.err.contains("output format \"xml\" is not supported"),
        "{}",
        r.err
    );
}

/// `processes --watch` without a terminal prints a table every second
/// until interrupted, then ends cleanly.
fn processes_watch(tc: &Path, cp: &str) {
    let once = ok(tc, &["-n", cp, "processes", "--sort", "cpu"]);
    let is_header = |l: &str| l.starts_with("NODE ") && l.ends_with("COMMAND");
    assert!(
        once.lines().next().is_some_and(is_header) && once.contains("machined"),
        "{once}"
    );
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(talosctl())
        .arg("--talosconfig")
        .arg(tc)
        .args(["-n", cp, "processes", "--watch"])
        .stdout(out.reopen().expect("reopen"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("talosctl runs");
    // Until three tables are out (a second apart), at most 20 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let tables = || {
        std::fs::read_to_string(out.path())
            .unwrap_or_default()
            .lines()
            .filter(|l| is_header(l))
            .count()
    };
    while tables() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .expect("interrupt");
    let status = child.wait().expect("exits");
    assert!(status.success(), "processes --watch ended with {status}");
    let printed = std::fs::read_to_string(out.path()).expect("output");
    assert!(tables() >= 3, "{printed}");
    assert!(printed.contains("machined"), "{printed}");
}

/// A talosconfig path that does not exist: for offline commands.
fn unused_tc(work: &tempfile::TempDir) -> PathBuf {
    work.path().join("unused")
}

/// The column titles of a table's first line (columns are three or more
/// spaces apart; titles may hold single spaces).
fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// `ok`, retried for up to 20 s while the command fails (a node taking up
/// a change).
fn eventually(talosconfig: &Path, args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = run(talosconfig, args);
        if r.code == 0 {
            return r.out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "talosctl {} still fails: {}",
            args.join(" "),
            r.err
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A cluster that is destroyed when the test ends, pass or fail.
struct Cluster {
    dir: tempfile::TempDir,
    name: String,
}

impl Cluster {
    fn create(name: &str, cidr: &str, workers: u32) -> Cluster {
        require_binaries();
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cluster {
            dir,
            name: name.to_owned(),
        };
        let r = run(
            &c.talosconfig(),
            &[
                "cluster",
                "create",
                "--provisioner",
                "process",
                "--name",
                name,
                "--controlplanes",
                "1",
                "--workers",
                &workers.to_string(),
                "--state",
                c.state().to_str().expect("utf8"),
                "--cidr",
                cidr,
            ],
        );
        if r.code != 0 {
            // The control plane's own log says why (kept, the cluster's
            // directory goes with the test).
            let log = std::fs::read_to_string(
                c.node_root(&format!("{name}-controlplane-1"))
                    .join("machined.log"),
            )
            .unwrap_or_default();
            panic!(
                "cluster create failed:\n{}\n{}\n--- machined.log of the control plane:\n{log}",
                r.out, r.err
            );
        }
        assert!(
            r.out.contains(&format!("{name}-controlplane-1")) && r.out.contains("next:"),
            "{}",
            r.out
        );
        assert!(r.err.contains("merging talosconfig into"), "{}", r.err);
        // As upstream's, create ends with the cluster's health checks, run
        // from the control plane over every node.
        for check in [
            "waiting for apid to be ready",
            "waiting for all nodes memory sizes",
            "waiting for all nodes disk sizes",
            "waiting for all nodes to finish boot sequence",
        ] {
            assert!(
                r.err.lines().any(|l| l == format!("{check}: OK")),
                "no {check:?} passed:\n{}",
                r.err
            );
        }
        c
    }

    fn talosconfig(&self) -> PathBuf {
        self.dir.path().join("talosconfig")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("clusters")
    }

    fn node_root(&self, node: &str) -> PathBuf {
        self.state().join(&self.name).join(node)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let r = run(
            &self.talosconfig(),
            &[
                "cluster",
                "destroy",
                "--name",
                &self.name,
                "--state",
                self.state().to_str().expect("utf8"),
            ],
        );
        if r.code != 0 && !std::thread::panicking() {
            panic!("cluster destroy failed: {}", r.err);
        }
    }
}

/// `talosctl pcap` on a process node's `lo`: the node's machined captures
/// datagrams this test sends, filtered by a program tcpdump compiled; the
/// file is read back by tcpdump, the decoded lines name the datagrams. A
/// node without `CAP_NET_RAW` (a test run without root) says so instead.
fn pcap(tc: &Path, cp: &str, w1: &str, work: &Path) {
    let r = run(tc, &["-n", &format!("{cp},{w1}"), "pcap", "-i", "lo"]);
    assert_ne!(r.code, 0);
    assert!(
        r.err
            .contains("command \"pcap\" is not supported with multiple nodes"),
        "{}",
        r.err
    );
    let r = run(tc, &["pcap", "-i", "lo", "--bpf-filter", "udp port 53"]);
    assert_ne!(r.code, 0);
    assert!(r.err.contains("as tcpdump -dd prints it"), "{}", r.err);
    if !rustix::process::geteuid().is_root() {
        let r = run(tc, &["pcap", "-i", "lo", "--duration", "1s"]);
        assert_ne!(r.code, 0);
        assert!(r.err.contains("needs CAP_NET_RAW"), "{}", r.err);
        return;
    }
    let r = run(tc, &["pcap", "-i", "nosuch0", "--duration", "2s"]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("interface \"nosuch0\" not found"),
        "{}",
        r.err
    );

    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let program = std::process::Command::new("tcpdump")
        .args(["-dd", "-y", "EN10MB", &format!("udp and dst port {port}")])
        .output()
        .expect("tcpdump (Debian package tcpdump; scripts/setup installs it)");
    assert!(program.status.success());
    let program = String::from_utf8(program.stdout).expect("utf8");
    // Datagrams every 50 ms while the captures run (bounded: 10 s at most).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            for _ in 0..200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let _ = socket.send_to(b"pcap-demo", ("127.0.0.1", port));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let file = work.join("lo.pcap");
    let file_arg = file.to_str().expect("utf8");
    let raw = run(
        tc,
        &[
            "pcap",
            "-i",
            "lo",
            "--bpf-filter",
            &program,
            "-o",
            file_arg,
            "--duration",
            "2s",
        ],
    );
    let decoded = run(
        tc,
        &[
            "tcpdump",
            "-i",
            "lo",
            "--bpf-filter",
            &program,
            "--duration",
            "2s",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    assert_eq!(raw.code, 0, "{}", raw.err);
    let read = std::process::Command::new("tcpdump")
        .args(["-nn", "-r", file_arg])
        .output()
        .expect("tcpdump -r");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let read = String::from_utf8_lossy(&read.stdout);
    let wanted = format!("> 127.0.0.1.{port}: UDP, length 9");
    assert!(read.lines().count() >= 5, "2 s at 20 datagrams/s:\n{read}");
    assert!(read.lines().all(|l| l.contains(&wanted)), "{read}");
    assert_eq!(decoded.code, 0, "{}", decoded.err);
    assert!(decoded.out.lines().count() >= 5, "{}", decoded.out);
    for line in decoded.out.lines() {
        let (time, rest) = line.split_once(' ').expect("time first");
        assert_eq!(time.len(), "00:00:00.000000".len(), "{line}");
        assert!(
            rest.starts_with("IP 127.0.0.1.") && rest.ends_with(&wanted),
            "{line}"
        );
    }
}

/// `gen key`, `gen csr`, `gen crt` with the cluster's OS CA: the
/// certificate made by hand is a working client certificate with exactly
/// the roles asked for. `gen ca` and `gen keypair` write upstream's files.
fn hand_made_client_certificate(c: &Cluster, cp: &str, work: &Path) {
    let dir = work.join("pki");
    std::fs::create_dir(&dir).expect("dir");
    let at = |name: &str| dir.join(name).to_str().expect("utf8").to_owned();
    let none = dir.join("no-talosconfig");
    let bundle = std::fs::read_to_string(c.state().join(&c.name).join("secrets.yaml"))
        .expect("the cluster's secrets");
    let os = machinery::secrets::SecretsBundle::from_yaml(&bundle)
        .and_then(|b| b.os_ca())
        .expect("OS CA");
    std::fs::write(at("os.crt"), &os.cert_pem).expect("write");
    std::fs::write(at("os.key"), &os.key_pem).expect("write");

    ok(&none, &["gen", "key", "--name", &at("reader")]);
    let key = std::fs::read_to_string(at("reader.key")).expect("key");
    assert!(
        key.starts_with("-----BEGIN ED25519 PRIVATE KEY-----"),
        "{key}"
    );
    let mode = std::fs::metadata(at("reader.key"))
        .expect("meta")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let r = run(&none, &["gen", "key", "--name", &at("reader")]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("already exists, use --force to overwrite"),
        "{}",
        r.err
    );
    assert_eq!(
        std::fs::read_to_string(at("reader.key")).expect("key"),
        key,
        "overwritten"
    );

    let csr = |ip: &str, roles: &str| {
        run(
            &none,
            &[
                "gen",
                "csr",
                "--key",
                &at("reader.key"),
                "--ip",
                ip,
                "--roles",
                roles,
            ],
        )
    };
    let r = csr(cp, "os:reader,os:bogus");
    assert_ne!(r.code, 0);
    assert!(r.err.contains("unknown roles: os:bogus"), "{}", r.err);
    let r = csr("10.5.0", "os:reader");
    assert!(r.err.contains("invalid IP: 10.5.0"), "{}", r.err);
    let r = csr(cp, "os:reader");
    assert_eq!(r.code, 0, "{}", r.err);
    ok(
        &none,
        &[
            "gen",
            "crt",
            "--ca",
            &at("os"),
            "--csr",
            &at("reader.csr"),
            "--name",
            &at("reader"),
            "--hours",
            "1",
        ],
    );

    // A talosconfig with the hand-made certificate: a reader.
    let reader = dir.join("reader-talosconfig");
    ok(
        &reader,
        &[
            "config",
            "add",
            "reader",
            "--ca",
            &at("os.crt"),
            "--crt",
            &at("reader.crt"),
            "--key",
            &at("reader.key"),
        ],
    );
    ok(&reader, &["config", "context", "reader"]);
    ok(&reader, &["config", "endpoint", cp]);
    ok(&reader, &["config", "node", cp]);
    let v = ok(&reader, &["version"]);
    assert!(v.contains(&format!("NODE:        {cp}")), "{v}");
    let r = run(&reader, &["reboot"]);
    assert_ne!(r.code, 0, "a reader rebooted the node");
    assert!(
        r.err.contains("PermissionDenied") && r.err.contains("not authorized"),
        "{}",
        r.err
    );

    // A CA made with a key the cluster does not trust is refused.
    ok(&none, &["gen", "ca", "--organization", &at("other")]);
    let hash = std::fs::read_to_string(at("other.sha256")).expect("hash");
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
    for f in ["other.crt", "other.key"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let r = run(&none, &["gen", "ca", "--organization", &at("rsa"), "--rsa"]);
    assert!(
        r.err.contains("RSA keys cannot be generated here"),
        "{}",
        r.err
    );
    ok(
        &none,
        &[
            "gen",
            "crt",
            "--ca",
            &at("other"),
            "--csr",
            &at("reader.csr"),
            "--name",
            &at("stranger"),
        ],
    );
    let stranger = dir.join("stranger-talosconfig");
    ok(
        &stranger,
        &[
            "config",
            "add",
            "stranger",
            "--ca",
            &at("os.crt"),
            "--crt",
            &at("stranger.crt"),
            "--key",
            &at("reader.key"),
        ],
    );
    ok(&stranger, &["config", "context", "stranger"]);
    ok(&stranger, &["config", "endpoint", cp]);
    let r = run(&stranger, &["-n", cp, "version"]);
    assert_ne!(r.code, 0, "a certificate from another CA was accepted");

    ok(
        &none,
        &[
            "gen",
            "keypair",
            "--organization",
            &at("pair"),
            "--ip",
            "10.5.0.9",
        ],
    );
    for f in ["pair.crt", "pair.key"] {
        assert!(dir.join(f).exists(), "{f}");
    }
}

/// `talosctl support` for two nodes: upstream's layout in the zip, each
/// service's log and state, the resources, and no secret of the machine
/// config; an existing file is not overwritten without a yes.
fn support_bundle(tc: &Path, cp: &str, w1: &str, work: &Path) {
    let bundle = work.join("support.zip");
    let bundle_arg = bundle.to_str().expect("utf8");
    let r = run(
        tc,
        &[
            "-n",
            &format!("{cp},{w1}"),
            "support",
            "-O",
            bundle_arg,
            "-w",
            "4",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.err
            .contains(&format!("Support bundle is written to {bundle_arg}")),
        "{}",
        r.err
    );
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&bundle).expect("open")).expect("zip");
    let mut read = |name: &str| -> String {
        let mut entry = zip
            .by_name(name)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", r.err));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).expect("utf8");
        text
    };
    for node in [cp, w1] {
        let summary = read(&format!("{node}/summary"));
        assert!(
            summary.starts_with("Client:\n\tTag:") && summary.contains("Server:\n\tTag:"),
            "{summary}"
        );
        let log = read(&format!("{node}/service-logs/apid.log"));
        assert!(!log.is_empty(), "apid's log of {node} is empty");
        let state = read(&format!("{node}/service-logs/apid.state"));
        assert!(
            state.contains("apid") && state.contains("Running"),
            "{state}"
        );
        assert!(!read(&format!("{node}/controller-runtime.log")).is_empty());
        assert!(read(&format!("{node}/processes")).contains("COMMAND"));
        assert!(read(&format!("{node}/mounts")).contains("MOUNTED ON"));
        assert!(read(&format!("{node}/io")).starts_with("NAME"));
        let hostname = read(&format!(
            "{node}/resources/hostnamestatuses.net.talos.dev.yaml"
        ));
        assert!(hostname.contains("HostnameStatus"), "{hostname}");
        let config = read(&format!(
            "{node}/resources/machineconfigs.config.talos.dev.yaml"
        ));
        assert!(config.contains("spec: <REDACTED>"), "{config}");
        assert!(
            !config.contains("BEGIN"),
            "a key leaked into the bundle:\n{config}"
        );
    }
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.expect("entry name").into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == &format!("{w1}/service-logs/networkd.log")),
        "{names:?}"
    );

    // An existing bundle is kept unless the operator says yes.
    let before = std::fs::read(&bundle).expect("read");
    let r = run(tc, &["-n", cp, "support", "-O", bundle_arg]);
    assert_ne!(r.code, 0);
    assert!(
        r.out.contains("already exists, overwrite? [y/N]"),
        "{}",
        r.out
    );
    assert!(r.err.contains("operation aborted"), "{}", r.err);
    assert_eq!(std::fs::read(&bundle).expect("read"), before);
}

/// `machine.logging.destinations`, applied live to a worker: its service
/// logs arrive at a TCP and a UDP listener as upstream's JSON lines, with
/// the destination's tags; dropped from the config, the TCP connection is
/// closed.
fn log_destinations(tc: &Path, w1: &str) {
    use std::io::BufRead as _;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    udp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let patch = format!(
        "machine: {{logging: {{destinations: [\
         {{endpoint: \"tcp://{}/\", format: json_lines, extraTags: {{cluster: cli-test}}}}, \
         {{endpoint: \"udp://{}/\", format: json_lines}}]}}}}",
        tcp.local_addr().expect("addr"),
        udp.local_addr().expect("addr")
    );
    patch_live(tc, w1, &patch);
    // Something for machined to log once the destinations are in place:
    // an apply.
    let mark_patch = |name: &str| {
        patch_live(
            tc,
            w1,
            &format!("machine: {{env: {{SHIPPING_MARK: {name}}}}}"),
        )
    };
    mark_patch("shipped-1");
    tcp.set_nonblocking(false).expect("blocking");
    let (stream, _) = {
        // accept() has no timeout: wait on a thread, bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        let listener = tcp.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = tx.send(listener.accept());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the node connects within 30 s")
            .expect("accept")
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let shipped = loop {
        assert!(std::time::Instant::now() < deadline, "no machined line");
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "closed early"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        for field in ["msg", "talos-level", "talos-service", "talos-time"] {
            assert!(v[field].is_string(), "{field} missing: {line}");
        }
        assert_eq!(v["cluster"], "cli-test", "{line}");
        if v["talos-service"] == "machined"
            && v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("applying a machine config"))
        {
            break v;
        }
    };
    assert_eq!(shipped["talos-level"], "info", "{shipped}");
    let mut datagram = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no machined datagram");
        let n = udp.recv(&mut datagram).expect("a datagram within 30 s");
        let v: serde_json::Value = serde_json::from_slice(&datagram[..n]).expect("JSON");
        assert!(v.get("cluster").is_none(), "{v}");
        if v["talos-service"] == "machined" {
            break;
        }
    }

    // Dropped: the connection closes.
    patch_live(tc, w1, "machine: {logging: {destinations: []}}");
    mark_patch("shipped-2");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "still connected");
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 {
            break;
        }
    }
}

/// What `talosctl dashboard` shows of a worker, read through the control
/// plane as the dashboard reads it, and drawn; without a terminal the
/// command says it needs one.
fn dashboard(tc: &Path, w1: &str) {
    let global = talosctl::cli::GlobalArgs {
        endpoints: Vec::new(),
        nodes: vec![w1.to_owned()],
        talosconfig: Some(tc.to_path_buf()),
        context: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (first, second, samples) = runtime.block_on(async {
        let client =
            talosctl::client::Client::connect(&global, talosctl::client::Options::default())
                .expect("client");
        let first = talosctl::cmd::dashboard::fetch(&client).await;
        let sample = talosctl::cmd::dashboard::fetch_monitor(&client).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        (
            first,
            talosctl::cmd::dashboard::fetch(&client).await,
            (
                sample,
                talosctl::cmd::dashboard::fetch_monitor(&client).await,
            ),
        )
    });
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(second.node, w1);
    assert!(
        !second.hostname.is_empty() && second.version.starts_with('v'),
        "{second:?}"
    );
    assert_eq!(second.mode, "container");
    assert!(second.uptime.is_some_and(|u| u.as_secs() > 0), "{second:?}");
    let (used, total) = second.memory.expect("memory");
    assert!(used > 0 && used <= total, "{used} of {total}");
    assert!(second.load.is_some());
    assert!(
        second.addresses.iter().any(|(_, a)| a.starts_with("127.")),
        "{:?}",
        second.addresses
    );
    assert!(
        second
            .services
            .iter()
            .any(|(id, state, _)| id == "apid" && state == "Running"),
        "{:?}",
        second.services
    );
    assert!(!second.log.is_empty());
    let cpu = second
        .cpu_percent(first.cpu)
        .expect("a CPU share between two reads");
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    // The monitor: the node's processes (its machined among them) with a
    // CPU share each between the two samples, and its links' counters.
    let (before, now) = samples;
    assert!(now.errors.is_empty(), "{:?}", now.errors);
    let rates = now.rates(Some(&before));
    assert!(
        rates
            .processes
            .iter()
            .any(|(p, cpu)| p.command.contains("machined") && cpu.is_some_and(|c| c >= 0.0)),
        "{:?}",
        rates.processes
    );
    assert!(!rates.links.is_empty(), "{rates:?}");

    let r = run(tc, &["-n", w1, "dashboard"]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("the dashboard needs a terminal"),
        "{}",
        r.err
    );
}

/// Upstream's gen config flags that scripts pass: accepted, and what they
/// change shows in the config and in validate's warnings.
fn gen_config_upstream_flags(work: &Path) {
    let none = work.join("unused");
    let file = work.join("kubespan.yaml");
    let r = run(
        &none,
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-docs=false",
            "--with-examples=false",
            "--with-kubespan",
            "--talos-version",
            "v1.12",
            "-t",
            "controlplane",
            "-o",
            file.to_str().expect("utf8"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let config = std::fs::read_to_string(&file).expect("written");
    assert!(
        config.contains("kubespan:\n      enabled: true"),
        "{config}"
    );
    assert!(
        !config.lines().any(|l| l.trim_start().starts_with('#')),
        "no comments asked for: {config}"
    );
    let v = run(
        &none,
        &[
            "validate",
            "--config",
            file.to_str().expect("utf8"),
            "--mode",
            "metal",
        ],
    );
    assert!(
        format!("{}{}", v.out, v.err).contains("machine.network.kubespan: not applied"),
        "{}{}",
        v.out,
        v.err
    );
    let off = ok(
        &none,
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-cluster-discovery=false",
            "-t",
            "worker",
            "-o",
            "-",
        ],
    );
    // Comments by default, as upstream: what each field does, and
    // commented examples.
    assert!(
        off.contains("discovery:\n    # Whether discovery is used.\n    enabled: false"),
        "{off}"
    );
    // A JSON patch (RFC 6902), as upstream's guides write them.
    let json_patched = ok(
        &none,
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-docs=false",
            "--with-examples=false",
            "--config-patch",
            r#"[{"op": "add", "path": "/machine/network/hostname", "value": "jp-1"}]"#,
            "-t",
            "worker",
            "-o",
            "-",
        ],
    );
    assert!(
        json_patched.contains("  network:\n    hostname: jp-1\n"),
        "{json_patched}"
    );
    assert!(
        off.contains("  network: {}\n\n    # # A static hostname.\n    # hostname: node-1\n"),
        "{off}"
    );
    for (args, refusal) in [
        (&["--persist=false"][..], "--persist=false"),
        (&["--version", "v1alpha2"][..], "unsupported config version"),
        (&["--talos-version", "latest"][..], "--talos-version"),
        (
            &["--with-kubespan", "--with-cluster-discovery=false"][..],
            "needs cluster discovery",
        ),
        // A bool flag takes its value after `=` only, as upstream's.
        (&["--persist", "false"][..], "unexpected argument"),
    ] {
        let mut argv = vec![
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "-o",
            "-",
            "-t",
            "worker",
        ];
        argv.extend_from_slice(args);
        let r = run(&none, &argv);
        assert!(
            r.code != 0 && r.err.contains(refusal),
            "{args:?}: {}",
            r.err
        );
    }
}

/// Upstream's commands and flags for what this OS does not run say so,
/// before any node is contacted; upstream's other spellings are taken.
fn upstream_spellings(work: &Path) {
    let none = work.join("unused");
    for (args, said) in [
        (
            &["bootstrap", "-n", "10.5.0.2"][..],
            "talosctl bootstrap is not available: this OS runs no etcd or Kubernetes, so there is nothing to bootstrap",
        ),
        (
            &["etcd", "members"][..],
            "talosctl etcd is not available: this OS runs no etcd or Kubernetes",
        ),
        (
            &["bootstrap", "--help"][..],
            "talosctl bootstrap is not available",
        ),
        (&["containers", "-k"][..], "`talosctl services`"),
        (
            &["restart", "kubelet"][..],
            "`talosctl service <id> restart`",
        ),
        (&["kubeconfig", "."][..], "no kubeconfig to fetch"),
        (
            &["logs", "-k", "kube-apiserver"][..],
            "-k/--kubernetes: this OS runs no containerd or Kubernetes",
        ),
        (&["health", "--server=false"][..], "--server=false"),
        (&["health", "--run-e2e"][..], "--run-e2e"),
        (
            &["apply", "nodes", "-f", "x.yaml"][..],
            "unknown positional argument nodes",
        ),
        (
            &["patch", "mc", "--namespace", "network", "-p", "{}"][..],
            "--namespace network",
        ),
    ] {
        let r = run(&none, args);
        assert!(r.code != 0 && r.err.contains(said), "{args:?}: {}", r.err);
    }
    // The suggestion for a typo still works.
    let r = run(&none, &["verison"]);
    assert!(r.err.contains("'version'"), "{}", r.err);
    // `machineconfig gen` is `gen config`; `-f` overwrites, as upstream.
    let out = work.join("mcgen");
    for _ in 0..2 {
        ok(
            &none,
            &[
                "mc",
                "gen",
                "demo",
                "https://10.5.0.2:6443",
                "-o",
                out.to_str().expect("utf8"),
                "-f",
            ],
        );
    }
    assert!(out.join("worker.yaml").exists());
    // A lost secrets.yaml comes back from a control plane's config.
    let bundle = work.join("bundle.yaml");
    ok(
        &none,
        &["gen", "secrets", "-o", bundle.to_str().expect("utf8")],
    );
    let from = work.join("from-bundle");
    ok(
        &none,
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-secrets",
            bundle.to_str().expect("utf8"),
            "-o",
            from.to_str().expect("utf8"),
        ],
    );
    let cp = from.join("controlplane.yaml");
    let rebuilt = ok(
        &none,
        &[
            "gen",
            "secrets",
            "--from-controlplane-config",
            cp.to_str().expect("utf8"),
            "-o",
            "-",
        ],
    );
    let yaml = |text: &str| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).expect("yaml");
    assert_eq!(
        yaml(&rebuilt),
        yaml(&std::fs::read_to_string(&bundle).expect("bundle"))
    );
    let worker = from.join("worker.yaml");
    let r = run(
        &none,
        &[
            "gen",
            "secrets",
            "--from-controlplane-config",
            worker.to_str().expect("utf8"),
            "-o",
            "-",
        ],
    );
    assert!(
        r.code != 0 && r.err.contains("not a control plane's"),
        "{}",
        r.err
    );
    let secrets = work.join("again.yaml");
    for _ in 0..2 {
        ok(
            &none,
            &[
                "gen",
                "secrets",
                "-o",
                secrets.to_str().expect("utf8"),
                "-f",
            ],
        );
    }
}

#[test]
fn gen_config_cluster_and_everyday_commands() {
    // gen config, offline.
    let work = tempfile::tempdir().expect("tempdir");
    gen_config_upstream_flags(work.path());
    upstream_spellings(work.path());
    let out_dir = work.path().join("gen");
    let r = run(
        &work.path().join("unused"),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--output-dir",
            out_dir.to_str().expect("utf8"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let said = format!("{}{}", r.out, r.err);
    for f in ["controlplane.yaml", "worker.yaml", "talosconfig"] {
        assert!(out_dir.join(f).exists(), "{f} missing");
        assert!(
            said.contains(&format!("Created {}", out_dir.join(f).display())),
            "{said}"
        );
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(out_dir.join("talosconfig"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    machinery::config::parse(&std::fs::read(out_dir.join("controlplane.yaml")).expect("read"))
        .expect("generated config is valid");
    // One output type to stdout, from the same secrets: upstream's
    // `-t talosconfig -o -`; registry mirrors as upstream's flag sets them.
    let secrets = work.path().join("secrets.yaml");
    ok(
        &unused_tc(&work),
        &["gen", "secrets", "-o", secrets.to_str().expect("utf8")],
    );
    let r = run(
        &unused_tc(&work),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--with-secrets",
            secrets.to_str().expect("utf8"),
            "-t",
            "talosconfig",
            "-o",
            "-",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.contains("context: demo") && r.out.contains("ca: "),
        "{}",
        r.out
    );
    let mirrored = work.path().join("mirrored.yaml");
    let r = run(
        &unused_tc(&work),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--output-types",
            "controlplane",
            "-o",
            mirrored.to_str().expect("utf8"),
            "--registry-mirror",
            "docker.io=http://10.5.0.1:5000",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let text = std::fs::read_to_string(&mirrored).expect("one file at the path given");
    let mirrored = machinery::config::parse(text.as_bytes()).expect("valid");
    assert!(
        mirrored
            .registries()
            .mirrors
            .get("docker.io")
            .is_some_and(|m| m.endpoints == ["http://10.5.0.1:5000"]),
        "{text}"
    );
    let r = run(
        &unused_tc(&work),
        &["gen", "config", "demo", "https://10.5.0.2:6443", "-o", "-"],
    );
    assert_ne!(r.code, 0);
    assert!(r.err.contains("multiple output types"), "{}", r.err);
    // Offline: validate, and patch then validate the result.
    let unused = work.path().join("unused");
    let cp = out_dir.join("controlplane.yaml");
    let cp = cp.to_str().expect("utf8");
    let said = run(&unused, &["validate", "-c", cp, "-m", "metal"]);
    assert_eq!(said.code, 0, "{}", said.err);
    assert_eq!(said.out.trim(), format!("{cp} is valid for metal mode"));
    assert!(!said.err.contains("WARNING"), "{}", said.err);
    let patched = work.path().join("patched.yaml");
    let patched = patched.to_str().expect("utf8");
    ok(
        &unused,
        &[
            "mc",
            "patch",
            cp,
            "-p",
            "machine: {install: {disk: ''}, kernel: {modules: [{name: br_netfilter}]}, network: {interfaces: [{interface: eth0, vip: {ip: 10.5.0.100}}]}}",
            "-o",
            patched,
        ],
    );
    let r = run(
        &unused,
        &["validate", "--config", patched, "--mode", "metal"],
    );
    assert_ne!(
        r.code, 0,
        "a config without a disk is valid for metal: {}",
        r.out
    );
    assert!(r.err.contains("required in \"metal\" mode"), "{}", r.err);
    // Valid, with what a node would not do said.
    let r = run(&unused, &["validate", "-c", patched, "-m", "container"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.err
            .contains("WARNING: machine.kernel.modules: not loaded"),
        "{}",
        r.err
    );
    // networkd's too, as an apply's reply says them.
    assert!(
        r.err.contains("(eth0): vip is not supported by networkd"),
        "{}",
        r.err
    );
    let r = run(
        &unused,
        &["validate", "-c", patched, "-m", "container", "--strict"],
    );
    assert_ne!(r.code, 0, "--strict passed a warning: {}", r.err);
    assert!(
        r.err.contains("--strict treats them as errors"),
        "{}",
        r.err
    );
    let again = run(
        &work.path().join("unused"),
        &[
            "gen",
            "config",
            "demo",
            "https://10.5.0.2:6443",
            "--output-dir",
            out_dir.to_str().expect("utf8"),
        ],
    );
    assert_ne!(again.code, 0, "overwrote without --force");
    assert!(again.err.contains("already exists"), "{}", again.err);

    let c = Cluster::create("cli", "127.6.1.0/24", 2);
    let tc = c.talosconfig();
    let (cp, w1, w2) = ("127.6.1.2", "127.6.1.3", "127.6.1.4");

    let v = ok(&tc, &["version"]);
    assert!(
        v.contains("Client:")
            && v.contains("Server:")
            && v.contains(&format!("NODE:        {cp}"))
            && v.contains("Enabled:     RBAC"),
        "{v}"
    );

    // Three nodes through the control plane (issue #4): an entry each.
    let nodes = format!("{cp},{w1},{w2}");
    let v = ok(&tc, &["-e", cp, "-n", &nodes, "version"]);
    for n in [cp, w1, w2] {
        assert!(
            v.contains(&format!("NODE:        {n}")),
            "{n} missing:\n{v}"
        );
    }

    let s = ok(&tc, &["-n", &nodes, "services"]);
    assert!(s.starts_with("NODE"), "{s}");
    for line in [
        format!("{cp}   apid"),
        format!("{cp}   trustd"),
        format!("{w1}   apid"),
        format!("{w2}   routerd"),
    ] {
        assert!(
            s.lines()
                .any(|l| l.starts_with(&line) && l.contains("Running")),
            "{line} missing:\n{s}"
        );
    }
    assert!(
        !s.lines().any(|l| l.starts_with(w1) && l.contains("trustd")),
        "workers run no trustd:\n{s}"
    );

    let logs = ok(&tc, &["logs", "machined", "--tail", "5"]);
    assert_eq!(logs.lines().count(), 5, "{logs}");
    // Each line names its node, one node or several, as upstream's.
    assert!(
        logs.lines().all(|l| l.starts_with(&format!("{cp}: "))),
        "{logs}"
    );
    let m = ok(&tc, &["memory"]);
    assert!(
        m.starts_with("NODE")
            && m.contains("TOTAL")
            && m.lines().nth(1).is_some_and(|l| l.starts_with(cp)),
        "{m}"
    );
    processes_watch(&tc, cp);

    // netstat: apid's listener with its process; this very call's
    // connection among the connected sockets, and not among the listening.
    let apid = format!("{cp}:50000");
    let listening = ok(&tc, &["netstat", "-l", "-t", "-4", "-p"]);
    let line = listening
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(apid.as_str()))
        .unwrap_or_else(|| panic!("no listener on {apid}:\n{listening}"));
    assert!(line.contains("LISTEN"), "{line}");
    let program = line.split_whitespace().last().expect("a last column");
    assert!(
        program
            .split_once('/')
            .is_some_and(|(pid, _)| pid.parse::<u32>().is_ok()),
        "{line}"
    );
    assert!(!listening.contains("ESTABLISHED"), "{listening}");
    let connected = ok(&tc, &["netstat", "-t", "-4"]);
    assert!(
        connected.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(4) == Some(&apid.as_str()) && cols.get(6) == Some(&"ESTABLISHED")
        }),
        "{connected}"
    );
    assert!(!connected.contains("LISTEN"), "{connected}");

    pcap(&tc, cp, w1, work.path());
    hand_made_client_certificate(&c, cp, work.path());
    support_bundle(&tc, cp, w1, work.path());
    dashboard(&tc, w1);
    log_destinations(&tc, w1);

    // get: resources through apid, one node after another, resolved by
    // alias; the config's version counts the apply below.
    let rd = ok(&tc, &["get", "rd"]);
    assert!(
        rd.starts_with("NODE") && rd.contains("metakeys.runtime.talos.dev"),
        "{rd}"
    );
    // The host's disks, whatever they are, under upstream's columns.
    let disks = ok(&tc, &["get", "disks"]);
    assert_eq!(
        header(&disks),
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "SIZE",
            "READ ONLY",
            "TRANSPORT",
            "ROTATIONAL",
            "WWID",
            "MODEL",
            "SERIAL"
        ],
        "{disks}"
    );
    // The host's disks are not a container-mode node's to wipe: refused
    // before anything is touched, with the node's reason.
    let r = run(&tc, &["wipe", "disk", "/dev/vdb"]);
    assert_ne!(r.code, 0, "wipe in container mode: {}", r.out);
    assert!(
        r.err.contains("not supported in container mode") && r.err.contains("FailedPrecondition"),
        "{}",
        r.err
    );
    // The host's network (container-mode nodes share it): loopback's
    // address, link and local route, by upstream's aliases and columns.
    let addresses = ok(&tc, &["get", "addresses"]);
    assert_eq!(
        header(&addresses),
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "ADDRESS",
            "LINK"
        ],
        "{addresses}"
    );
    assert!(
        addresses.lines().any(|l| l.split_whitespace().eq([
            cp,
            "network",
            "AddressStatus",
            "lo/127.0.0.1/8",
            "1",
            "127.0.0.1/8",
            "lo"
        ])),
        "{addresses}"
    );
    let links = ok(&tc, &["get", "links", "lo", "-o", "yaml"]);
    assert!(
        links.contains("  type: loopback\n") && links.contains("  operationalState: unknown\n"),
        "{links}"
    );
    // "rs" is both RouteStatus's and ResolverStatus's initials, as
    // upstream: ambiguous, so refused.
    let r = run(&tc, &["get", "rs"]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(r.err.contains("ambiguous"), "{}", r.err);
    let routes = ok(&tc, &["get", "routes"]);
    assert!(
        routes.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(3) == Some(&"local/inet4//127.0.0.1/32/0")
                && cols[5..] == ["127.0.0.1/32", "lo", "0", "local"]
        }),
        "{routes}"
    );
    // The servers timed asks (the config names none: the default) and the
    // resolvers the host gives the nodes (container mode).
    let timeservers = ok(&tc, &["get", "timeservers"]);
    assert!(
        timeservers.lines().any(|l| l.split_whitespace().eq([
            cp,
            "network",
            "TimeServerStatus",
            "timeservers",
            "1",
            "[\"time.cloudflare.com\"]"
        ])),
        "{timeservers}"
    );
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(host) => {
            let servers: Vec<String> = host
                .lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next() == Some("nameserver"))
                        .then(|| words.next())
                        .flatten()
                })
                .filter_map(|w| {
                    // As upstream prints an address: canonical, an IPv6
                    // zone kept.
                    let (address, zone) = w.split_once('%').unwrap_or((w, ""));
                    match address.parse::<std::net::IpAddr>().ok()? {
                        ip @ std::net::IpAddr::V6(_) if !zone.is_empty() => {
                            Some(format!("{ip}%{zone}"))
                        }
                        ip if zone.is_empty() => Some(ip.to_string()),
                        _ => None,
                    }
                })
                .collect();
            let resolvers = ok(&tc, &["get", "resolvers", "resolvers", "-o", "yaml"]);
            let doc: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&resolvers).expect("the resolvers as YAML");
            let listed: Vec<&str> = doc["spec"]["dnsServers"]
                .as_sequence()
                .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            assert_eq!(listed, servers, "{resolvers}");
        }
        // No file: no resource.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let r = run(&tc, &["get", "resolvers", "resolvers"]);
            assert!(r.err.contains("NotFound"), "{}", r.err);
        }
        Err(e) => panic!("reading the host's /etc/resolv.conf: {e}"),
    }
    // The hardware types and mounts resolve by upstream's aliases and show
    // upstream's columns; a container-mode node lists none (the host's
    // hardware and mounts are not its own), as upstream. Their content is
    // checked on a booted node (tests/qemu.rs) and in machined's units.
    for (alias, columns) in [
        ("cpus", &["MANUFACTURER", "MODEL", "CORES", "THREADS"][..]),
        ("ram", &["MANUFACTURER", "MODEL", "SIZEMIB"][..]),
        // And the node's own mounts (none in container mode).
        ("mounts", &["SOURCE", "TARGET", "FILESYSTEM TYPE"][..]),
        // And its volumes (none in container mode).
        ("volumestatus", &["TYPE", "PHASE", "LOCATION", "SIZE"][..]),
        ("systemdisk", &["DISK"][..]),
    ] {
        let table = ok(&tc, &["get", alias]);
        assert_eq!(header(&table)[5..], *columns, "{alias}: {table}");
        assert_eq!(table.lines().count(), 1, "{alias}: {table}");
    }
    // What the node runs on: a container, named as the node is.
    let platform = ok(&tc, &["get", "platformmetadata", "-o", "yaml"]);
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&platform).expect("the platform metadata as YAML");
    assert_eq!(doc["spec"]["platform"], "container", "{platform}");
    assert_eq!(doc["spec"]["hostname"], "cli-controlplane-1", "{platform}");
    assert!(doc["spec"].get("instanceId").is_none(), "{platform}");
    // NodeAddresses, from the network namespace the nodes share with the
    // host: the sets are there, in upstream's order, loopback left out.
    let node_addresses = ok(&tc, &["get", "nodeaddresses"]);
    assert_eq!(
        header(&node_addresses)[5..],
        ["ADDRESSES", "SORTALGORITHM"],
        "{node_addresses}"
    );
    for id in ["accumulative", "current", "routed"] {
        assert!(
            node_addresses.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1..4) == Some(&["network", "NodeAddress", id][..])
                    && cols.last() == Some(&"v1")
                    && !l.contains("127.0.0.1/")
            }),
            "{id}: {node_addresses}"
        );
    }
    let svc = ok(&tc, &["-n", &format!("{cp},{w1}"), "get", "svc"]);
    assert_eq!(
        header(&svc),
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "RUNNING",
            "HEALTHY",
            "HEALTH UNKNOWN"
        ],
        "{svc}"
    );
    for node in [cp, w1] {
        assert!(
            svc.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.starts_with(&[node, "runtime", "Service", "apid"])
                    && cols.get(5) == Some(&"true")
            }),
            "{node} apid missing:\n{svc}"
        );
    }
    let before = ok(&tc, &["get", "machineconfig", "v1alpha1", "-o", "yaml"]);
    assert!(
        before.starts_with(&format!("node: {cp}\nmetadata:\n"))
            && before.contains("  version: 1\n"),
        "{before}"
    );
    assert_hostname_row(&tc, cp, "1", "cli-controlplane-1");
    let r = run(&tc, &["get", "members"]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("resource \"members\" is not registered"),
        "{}",
        r.err
    );

    let root = c.node_root("cli-controlplane-1");
    let listing = ok(&tc, &["list", root.to_str().expect("utf8")]);
    assert!(
        listing.lines().any(|l| l == "system") && listing.lines().any(|l| l == "machined.log"),
        "{listing}"
    );
    let boot_id = ok(&tc, &["read", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(
        boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id")
    );

    // apply-config: a changed config persists; a bad one is refused and
    // changes nothing.
    let config_path = root.join("system/state/config.yaml");
    let current = std::fs::read_to_string(&config_path).expect("config");
    let edited = work.path().join("edited.yaml");
    std::fs::write(
        &edited,
        current.replace("hostname: cli-controlplane-1", "hostname: renamed-cp"),
    )
    .expect("write");
    let r = run(
        &tc,
        &[
            "apply-config",
            "-f",
            edited.to_str().expect("utf8"),
            "--mode",
            "no-reboot",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.contains("Applied configuration without a reboot")
            || r.err.contains("Applied configuration without a reboot"),
        "{}{}",
        r.out,
        r.err
    );
    assert!(
        std::fs::read_to_string(&config_path)
            .expect("config")
            .contains("hostname: renamed-cp")
    );
    let after = ok(&tc, &["get", "mc", "v1alpha1", "-o", "json"]);
    let after: serde_json::Value = serde_json::from_str(&after).expect("one JSON object");
    assert_eq!(after["metadata"]["version"], 2, "{after}");
    assert_eq!(
        after["spec"]["machine"]["network"]["hostname"], "renamed-cp",
        "{after}"
    );
    assert_hostname_row(&tc, cp, "2", "renamed-cp");
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, current.replace("  network:", "  networkz:")).expect("write");
    let r = run(&tc, &["apply-config", "-f", bad.to_str().expect("utf8")]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("unknown key") && r.err.contains("networkz"),
        "{}",
        r.err
    );
    assert!(
        std::fs::read_to_string(&config_path)
            .expect("config")
            .contains("hostname: renamed-cp"),
        "the bad config changed the node"
    );

    // patch and edit: the node's own config, changed and applied.
    let said = ok(
        &tc,
        &[
            "patch",
            "mc",
            "-p",
            "machine: {network: {hostname: patched-cp}}",
            "--mode",
            "no-reboot",
        ],
    );
    assert_eq!(
        said,
        format!(
            "patched MachineConfigs.config.talos.dev/v1alpha1 at the node {cp}\n\
             Applied configuration without a reboot\n"
        )
    );
    let on_disk = || std::fs::read_to_string(&config_path).expect("config");
    assert!(on_disk().contains("hostname: patched-cp"));
    // A patch that changes nothing is not applied; a dry run only says
    // what would happen.
    let said = ok(
        &tc,
        &[
            "patch",
            "mc",
            "-p",
            "machine: {network: {hostname: patched-cp}}",
        ],
    );
    assert_eq!(said, "Apply was skipped: no changes detected.\n");
    let said = ok(
        &tc,
        &[
            "patch",
            "mc",
            "-p",
            "machine: {network: {hostname: dry-cp}}",
            "--dry-run",
        ],
    );
    assert!(
        said.starts_with("Dry run summary:\n") && said.contains("+    hostname: dry-cp"),
        "{said}"
    );
    let r = run(&tc, &["patch", "mc", "-p", "machine: {networkz: {}}"]);
    assert_ne!(r.code, 0);
    assert!(r.err.contains("networkz"), "{}", r.err);
    let r = run(&tc, &["patch", "svc", "-p", "running: false"]);
    assert_ne!(r.code, 0);
    assert!(r.err.contains("only the machine config"), "{}", r.err);
    assert!(
        on_disk().contains("hostname: patched-cp"),
        "a refused patch changed the node"
    );

    let editor = work.path().join("editor.sh");
    let script = |body: &str| {
        std::fs::write(&editor, format!("#!/bin/sh\n{body}\n")).expect("editor");
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    script("exit 0");
    let r = run_with_editor(&tc, &editor, &["edit", "mc"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out, "Apply was skipped: no changes detected.\n");
    script("sed -i 's/hostname: patched-cp/hostname: edited-cp/' \"$1\"");
    let r = run_with_editor(
        &tc,
        &editor,
        &["edit", "machineconfig", "--mode", "no-reboot"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.starts_with(&format!(
            "edited MachineConfigs.config.talos.dev/v1alpha1 at the node {cp}\n"
        )),
        "{}",
        r.out
    );
    assert!(on_disk().contains("hostname: edited-cp"));
    // The config is edited in a private file in a private directory, gone
    // afterwards.
    let seen = work.path().join("seen");
    script(&format!(
        "stat -c '%a' \"$1\" \"$(dirname \"$1\")\" > {seen}; echo \"$1\" >> {seen}; : > \"$1\"",
        seen = seen.display()
    ));
    let r = run_with_editor(&tc, &editor, &["edit", "mc"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out, "Apply was skipped: empty file.\n");
    let seen = std::fs::read_to_string(&seen).expect("the editor ran");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[..2], ["600", "700"], "{seen}");
    assert!(!Path::new(lines[2]).exists(), "{} left behind", lines[2]);
    // An editor that fails after a change: nothing is applied, and the
    // change is kept for the person.
    script("sed -i 's/hostname: edited-cp/hostname: lost-cp/' \"$1\"; exit 3");
    let r = run_with_editor(&tc, &editor, &["edit", "mc"]);
    assert_ne!(r.code, 0, "{}", r.out);
    let kept = r
        .err
        .lines()
        .find_map(|l| l.split_once("A copy of your changes has been stored to "))
        .map(|(_, path)| PathBuf::from(path.trim()))
        .unwrap_or_else(|| panic!("no copy named:\n{}", r.err));
    assert!(
        std::fs::read_to_string(&kept)
            .expect("the copy")
            .contains("hostname: lost-cp")
    );
    std::fs::remove_dir_all(kept.parent().expect("dir")).expect("clean up");
    assert!(on_disk().contains("hostname: edited-cp"));
    // A refused edit is reopened with the reason; leaving it as it is
    // cancels, and the node keeps its config.
    script(
        "grep -q '^# ERROR: .*networkz' \"$1\" && exit 0\n\
         sed -i 's/^  network:/  networkz:/' \"$1\"",
    );
    let r = run_with_editor(&tc, &editor, &["edit", "mc"]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(
        r.err.contains("no valid changes were saved") && r.err.contains("networkz"),
        "{}",
        r.err
    );
    if let Some((_, path)) = r
        .err
        .split_once("A copy of your changes has been stored to ")
    {
        let kept = PathBuf::from(path.trim());
        std::fs::remove_dir_all(kept.parent().expect("dir")).expect("clean up");
    } else {
        panic!("the refused edit was not kept:\n{}", r.err);
    }
    assert!(on_disk().contains("hostname: edited-cp"));

    let info = ok(&tc, &["config", "info"]);
    assert!(
        info.contains("Current context:     cli") && info.contains("Roles:               os:admin"),
        "{info}"
    );

    // Last: they change the cluster's CAs.
    accepted_cas(&tc, cp, work.path());
    rotate_ca(&tc, cp, &[w1, w2], work.path());
}

/// `machine.acceptedCAs`: a client certificate from another CA (made by
/// [`hand_made_client_certificate`]) works once its CA is accepted, live,
/// and no longer once it is removed.
fn accepted_cas(tc: &Path, cp: &str, work: &Path) {
    let dir = work.join("pki");
    let stranger = dir.join("stranger-talosconfig");
    assert_ne!(run(&stranger, &["-n", cp, "version"]).code, 0);
    let other = std::fs::read(dir.join("other.crt")).expect("other.crt");
    let accept = format!(
        "machine: {{acceptedCAs: [{{crt: {}}}]}}",
        machinery::base64::encode(&other)
    );
    ok(
        tc,
        &[
            "-n",
            cp,
            "patch",
            "mc",
            "--mode",
            "no-reboot",
            "-p",
            &accept,
        ],
    );
    let v = eventually(&stranger, &["-n", cp, "version"]);
    assert!(v.contains(&format!("NODE:        {cp}")), "{v}");
    ok(
        tc,
        &[
            "-n",
            cp,
            "patch",
            "mc",
            "--mode",
            "no-reboot",
            "-p",
            "machine: {acceptedCAs: null}",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run(&stranger, &["-n", cp, "version"]).code == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the CA is still accepted once removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `rotate-ca`: a dry run changes nothing; the rotation leaves every node
/// issuing from the new CA and refusing the old talosconfig, and the new
/// talosconfig reaches every node.
fn rotate_ca(tc: &Path, cp: &str, workers: &[&str], work: &Path) {
    let workers_flag = workers.join(",");
    let new = work.join("rotated-talosconfig");
    let new_flag = new.to_str().expect("utf8");
    let topology = ["--control-plane-nodes", cp, "--worker-nodes", &workers_flag];
    let config_of = |talosconfig: &Path, node: &str| {
        ok(
            talosconfig,
            &["-n", node, "get", "mc", "v1alpha1", "-o", "yaml"],
        )
    };
    let before = config_of(tc, cp);

    let r = run(tc, &["rotate-ca", "--control-plane-nodes", workers[0]]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(
        r.err
            .contains(&format!("{} holds no Talos CA key", workers[0])),
        "{}",
        r.err
    );
    let r = run(tc, &["rotate-ca"]);
    assert!(r.err.contains("--control-plane-nodes"), "{}", r.err);

    let mut dry = vec!["rotate-ca", "-o", new_flag];
    dry.extend_from_slice(&topology);
    let said = ok(tc, &dry);
    assert!(
        said.starts_with(
            "> Starting Talos API PKI rotation, dry-run mode true...
"
        ),
        "{said}"
    );
    assert!(
        said.contains(&format!("  - control plane nodes: [\"{cp}\"]\n"))
            && said.contains(&format!("  - {cp}: skipped (dry-run)"))
            && said.contains(&format!("  - {}: OK (dry-run)", workers[1]))
            && said.contains("> Dry-run mode enabled, no changes were made to the cluster")
            && said.contains("> Kubernetes CA rotation skipped"),
        "{said}"
    );
    assert!(!new.exists(), "a dry run wrote a talosconfig");
    assert_eq!(config_of(tc, cp), before, "a dry run changed the node");

    let mut real = vec![
        "rotate-ca",
        "--dry-run=false",
        "--kubernetes=false",
        "-o",
        new_flag,
    ];
    real.extend_from_slice(&topology);
    let said = ok(tc, &real);
    let steps = [
        "> Verifying connectivity with existing PKI:",
        "> Adding new Talos CA as accepted...",
        "> Verifying connectivity with new client cert, but old server CA:",
        &format!("> Writing new talosconfig to \"{new_flag}\""),
        "> Making new Talos CA the issuing CA, old Talos CA the accepted CA...",
        "> Verifying connectivity with new PKI:",
        "> Removing old Talos CA from the accepted CAs...",
        "> Verifying connectivity with new PKI:",
    ];
    let mut rest = said.as_str();
    for step in steps {
        let at = rest
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order:\n{said}"));
        rest = &rest[at + step.len()..];
    }
    for node in std::iter::once(cp).chain(workers.iter().copied()) {
        assert_eq!(
            said.matches(&format!("  - {node}: OK (version v")).count(),
            4,
            "{node} not checked after every step:\n{said}"
        );
    }
    assert!(!said.contains("Kubernetes"), "{said}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&new)
            .expect("the new talosconfig")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The old talosconfig is refused; the new one reaches every node.
    let r = run(tc, &["-n", cp, "version"]);
    assert_ne!(r.code, 0, "the old CA still works:\n{}", r.out);
    let all = format!("{cp},{workers_flag}");
    let v = ok(&new, &["-n", &all, "version"]);
    for node in std::iter::once(cp).chain(workers.iter().copied()) {
        assert!(v.contains(&format!("NODE:        {node}")), "{v}");
    }
    // Every node issues from the new CA, only control planes hold its key,
    // and no CA is left accepted besides it.
    let new_ca = machinery::talosconfig::TalosConfig::load(&new)
        .expect("load")
        .contexts
        .into_values()
        .next()
        .expect("one context")
        .ca;
    let new_key = said
        .split("> New Talos CA:\n")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .and_then(|line| line.trim().strip_prefix("key: "))
        .unwrap_or_else(|| panic!("the new CA's key is not printed:\n{said}"))
        .to_owned();
    let cp_config = config_of(&new, cp);
    assert!(
        cp_config.contains(&format!("key: {new_key}")),
        "{cp_config}"
    );
    assert!(cp_config.contains(&format!("crt: {new_ca}")), "{cp_config}");
    assert!(!cp_config.contains("acceptedCAs"), "{cp_config}");
    let worker_config = config_of(&new, workers[0]);
    assert!(
        worker_config.contains(&format!("crt: {new_ca}")),
        "{worker_config}"
    );
    assert!(!worker_config.contains("acceptedCAs"), "{worker_config}");
    assert!(!worker_config.contains(&new_key), "{worker_config}");
}

#[test]
fn a_stopped_node_is_reported_and_streams_pass_through_the_endpoint() {
    let c = Cluster::create("stop", "127.6.2.0/24", 2);
    let tc = c.talosconfig();
    let (cp, w1, w2) = ("127.6.2.2", "127.6.2.3", "127.6.2.4");

    // logs -f from a worker, through the control plane.
    let mut child = Command::new(talosctl())
        .arg("--talosconfig")
        .arg(&tc)
        .args(["-e", cp, "-n", w1, "logs", "machined", "-f", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("talosctl logs -f");
    std::thread::sleep(Duration::from_millis(1500));
    // Make the worker log something new: a dry-run apply.
    let config = c
        .node_root("stop-worker-1")
        .join("system/state/config.yaml");
    ok(
        &tc,
        &[
            "-n",
            w1,
            "apply-config",
            "--dry-run",
            "-f",
            config.to_str().expect("utf8"),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().count() >= 2 && text.contains("applying a machine config"),
        "follow did not stream live lines:\n{text}"
    );

    // health: the control plane checks every node through its apid, in
    // upstream's order and words (container nodes: memory and disks are
    // the host's, skipped as upstream skips them).
    let cluster_nodes = [
        "--control-plane-nodes",
        cp,
        "--worker-nodes",
        &format!("{w1},{w2}"),
    ];
    let mut health = vec!["-e", cp, "-n", cp, "health", "--wait-timeout", "1m"];
    health.extend(cluster_nodes);
    let r = run(&tc, &health);
    assert_eq!(r.code, 0, "{}", r.err);
    let oks: Vec<&str> = r.err.lines().filter(|l| l.ends_with(": OK")).collect();
    assert_eq!(
        oks,
        [
            "waiting for apid to be ready: OK",
            "waiting for all nodes memory sizes: OK",
            "waiting for all nodes disk sizes: OK",
            "waiting for all nodes to finish boot sequence: OK",
        ],
        "{}",
        r.err
    );
    // Without the lists, the node the call reaches checks itself.
    let r = run(&tc, &["-e", cp, "-n", w1, "health", "--wait-timeout", "1m"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.err.starts_with("checking this node only"), "{}", r.err);
    assert!(
        r.err
            .contains("waiting for all nodes to finish boot sequence: OK"),
        "{}",
        r.err
    );
    // Nodes are addresses on apid's port: nothing else is dialled.
    for (node, why) in [
        ("db.example", "not an IP address"),
        ("127.6.2.3:22", "only apid's port 50000"),
    ] {
        let r = run(
            &tc,
            &[
                "-n",
                cp,
                "health",
                "--control-plane-nodes",
                node,
                "--wait-timeout",
                "5s",
            ],
        );
        assert_ne!(r.code, 0, "{node}: {}", r.err);
        assert!(r.err.contains(why), "{node}: {}", r.err);
    }
    // A worker holds no client certificate: it cannot reach the others.
    let mut from_worker = vec!["-e", cp, "-n", w1, "health", "--wait-timeout", "3s"];
    from_worker.extend(cluster_nodes);
    let r = run(&tc, &from_worker);
    assert_ne!(r.code, 0, "{}", r.err);
    assert!(r.err.contains("no client certificate"), "{}", r.err);

    // TimeStatus: a container node's clock is the host's, synced from
    // the start and not synced by the node (upstream says syncDisabled in
    // container mode); NetworkStatus with upstream's fields.
    let time = ok(&tc, &["-n", w1, "get", "timestatus", "-o", "yaml"]);
    assert!(
        time.contains("id: node")
            && time.contains("synced: true")
            && time.contains("epoch: 0")
            && time.contains("syncDisabled: true"),
        "{time}"
    );
    // AdjtimeStatus: the kernel's clock discipline (the host's here).
    let adjtime = ok(&tc, &["-n", w1, "get", "adjtimestatus", "-o", "yaml"]);
    assert!(
        adjtime.contains("id: node")
            && adjtime.contains("state: TIME_")
            && adjtime.contains("frequencyAdjustmentRatio: ")
            && adjtime.contains("maxError: ")
            && adjtime.contains("constant: "),
        "{adjtime}"
    );
    // SecurityState of a container-mode node.
    let table = ok(&tc, &["-n", w1, "get", "securitystate"]);
    assert_eq!(
        header(&table),
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "SECUREBOOT",
            "UKISIGNINGKEYFINGERPRINT",
            "PCRSIGNINGKEYFINGERPRINT",
            "SELINUXSTATE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        row.len() >= 6
            && row[..4] == [w1, "runtime", "SecurityState", "securitystate"]
            // Container mode reports FIPS only, as upstream.
            && row[5] == "false",
        "{table}"
    );
    let table = ok(&tc, &["-n", w1, "get", "networkstatus"]);
    assert_eq!(
        header(&table),
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "ADDRESS",
            "CONNECTIVITY",
            "HOSTNAME",
            "ETC"
        ],
        "{table}"
    );
    let status = ok(&tc, &["-n", w1, "get", "networkstatus", "-o", "yaml"]);
    // The host's network decides the other three here; each is a bool.
    assert!(status.contains("id: status"), "{status}");
    assert!(status.contains("hostnameReady: true"), "{status}");
    for field in ["addressReady", "connectivityReady", "etcFilesReady"] {
        assert!(
            status.contains(&format!("{field}: true"))
                || status.contains(&format!("{field}: false")),
            "{field}: {status}"
        );
    }

    // Stop worker 2's machined: two answers and one error naming it.
    let state = std::fs::read_to_string(c.state().join("stop/cluster.yaml")).expect("state");
    let pid = state
        .split("name: stop-worker-2")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("pid: ")))
        .expect("pid")
        .to_owned();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = run(
        &tc,
        &["-e", cp, "-n", &format!("{cp},{w1},{w2}"), "version"],
    );
    assert_ne!(r.code, 0, "a failed node must fail the command");
    assert!(
        r.out.contains(&format!("NODE:        {cp}"))
            && r.out.contains(&format!("NODE:        {w1}")),
        "{}",
        r.out
    );
    assert!(!r.out.contains(&format!("NODE:        {w2}")));
    let errors: Vec<&str> = r.err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", r.err);
    assert!(errors[0].contains(w2), "{}", errors[0]);

    // health names the stopped node and fails at the wait timeout.
    let mut health = vec!["-e", cp, "-n", cp, "health", "--wait-timeout", "4s"];
    health.extend(cluster_nodes);
    let started = std::time::Instant::now();
    let r = run(&tc, &health);
    assert_ne!(r.code, 0, "{}", r.err);
    assert!(
        r.err
            .contains("waiting for apid to be ready: 1 error occurred:")
            && r.err.contains(&format!("* {w2}: ")),
        "{}",
        r.err
    );
    assert!(
        r.err.contains("not passed within the wait timeout"),
        "{}",
        r.err
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn bad_input_gets_one_actionable_line() {
    let c = Cluster::create("bad", "127.6.3.0/24", 0);
    let tc = c.talosconfig();
    let one_line = |r: &Run, needle: &str| {
        assert_ne!(r.code, 0, "{needle}: exit status 0");
        let errors: Vec<&str> = r.err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{needle}: {}", r.err);
        assert!(
            errors[0].contains(needle),
            "expected {needle:?} in {:?}",
            errors[0]
        );
    };
    let missing = c.dir.path().join("nope/config");
    one_line(&run(&missing, &["version"]), "talosconfig not found");
    one_line(&run(&tc, &["--context", "ghost", "version"]), "\"ghost\"");
    one_line(&run(&tc, &["-e", "127.6.3.99", "version"]), "127.6.3.99");
    // META: a key that is no byte is refused before any call; a node in
    // container mode has no META partition to write.
    one_line(&run(&tc, &["meta", "write", "0x100", "v"]), "from 0 to 255");
    one_line(
        &run(&tc, &["meta", "write", "0x0c", "v"]),
        "META is not supported in container mode",
    );

    // A talosconfig from another cluster: the server is not trusted.
    let work = tempfile::tempdir().expect("tempdir");
    let other = work.path().join("other");
    ok(
        &work.path().join("x"),
        &[
            "gen",
            "config",
            "other",
            "https://127.6.3.2:6443",
            "--output-dir",
            other.to_str().expect("utf8"),
        ],
    );
    let other_tc = other.join("talosconfig");
    one_line(
        &run(
            &other_tc,
            &["-e", "127.6.3.2", "-n", "127.6.3.2", "version"],
        ),
        "unknown authority",
    );

    // An expired client certificate, in a context of this cluster's CA.
    let config = machinery::talosconfig::TalosConfig::load(&tc).expect("load");
    let ctx = config.contexts.get("bad").expect("context").clone();
    let ca = machinery::pki::CertificateAndKey {
        cert_pem: String::from_utf8(ctx.ca_pem().expect("ca")).expect("utf8"),
        key_pem: std::fs::read_to_string(c.state().join("bad/secrets.yaml"))
            .map(|s| {
                let bundle = machinery::secrets::SecretsBundle::from_yaml(&s).expect("bundle");
                bundle.os_ca().expect("os ca").key_pem
            })
            .expect("secrets"),
    };
    let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
    let expired = machinery::pki::issue_client_cert(
        &ca,
        &["os:admin".into()],
        Duration::from_secs(86_400),
        old,
    )
    .expect("cert");
    let mut expired_config =
        machinery::talosconfig::TalosConfig::new_for("expired", &ca.cert_pem, &expired);
    if let Some(x) = expired_config.contexts.get_mut("expired") {
        x.endpoints = vec!["127.6.3.2".into()];
        x.nodes = vec!["127.6.3.2".into()];
    }
    let expired_tc = work.path().join("expired");
    expired_config.save(&expired_tc).expect("save");
    one_line(&run(&expired_tc, &["version"]), "expired");
}

#[test]
fn talosconfig_merge_and_upstream_format() {
    let c = Cluster::create("merge", "127.6.4.0/24", 0);
    let tc = c.talosconfig();
    let config = machinery::talosconfig::TalosConfig::load(&tc).expect("load");
    let ctx = config.contexts.get("merge").expect("context");
    let b64 = |b: Vec<u8>| machinery::base64::encode(b);

    // A talosconfig written by hand in upstream's documented format.
    let upstream = format!(
        "context: handmade\ncontexts:\n    handmade:\n        endpoints:\n            - 127.6.4.2\n        nodes:\n            - 127.6.4.2\n        ca: {}\n        crt: {}\n        key: {}\n",
        b64(ctx.ca_pem().expect("ca")),
        b64(ctx.crt_pem().expect("crt")),
        b64(ctx.key_pem().expect("key"))
    );
    let work = tempfile::tempdir().expect("tempdir");
    let handmade = work.path().join("handmade");
    std::fs::write(&handmade, &upstream).expect("write");
    let v = ok(&handmade, &["version"]);
    assert!(v.contains("NODE:        127.6.4.2"), "{v}");

    // Merge it twice into the cluster's talosconfig: the second one is renamed.
    let r = run(&tc, &["config", "merge", handmade.to_str().expect("utf8")]);
    assert_eq!(r.code, 0, "{}", r.err);
    let r = run(&tc, &["config", "merge", handmade.to_str().expect("utf8")]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.err.contains("\"handmade\" -> \"handmade-1\""),
        "{}",
        r.err
    );
    let contexts = ok(&tc, &["config", "contexts"]);
    for name in ["merge", "handmade", "handmade-1"] {
        assert!(contexts.contains(name), "{contexts}");
    }
    assert!(
        contexts
            .lines()
            .any(|l| l.starts_with('*') && l.contains("handmade-1")),
        "{contexts}"
    );
    ok(&tc, &["config", "context", "merge"]);
    assert!(
        ok(&tc, &["config", "contexts"])
            .lines()
            .any(|l| l.starts_with('*') && l.contains("merge"))
    );
}

/// A machined process, stopped (and reaped) when dropped.
struct Machined(std::process::Child);

impl Drop for Machined {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.0),
            rustix::process::Signal::TERM,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node without a config serves maintenance mode with a key machined
/// made and prints that key's fingerprint with the command that pins it;
/// `apply-config --insecure --cert-fingerprint` then reaches only a node
/// with that key.
#[test]
fn a_maintenance_node_is_pinned_by_the_fingerprint_it_prints() {
    require_binaries();
    let work = tempfile::tempdir().expect("tempdir");
    let none = unused_tc(&work);
    let ip = "127.77.3.2";
    let log = work.path().join("machined.log");
    let _node = Machined(
        Command::new(talosctl().parent().expect("dir").join("machined"))
            .args(["--mode", "container", "--root"])
            .arg(work.path().join("node"))
            .args([
                "--hostname",
                "maint",
                "--apid-listen",
                &format!("{ip}:50000"),
                "--trustd-listen",
                &format!("{ip}:50001"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("machined starts"),
    );

    // What the console shows: the fingerprint, and the command using it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let fingerprint = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split("--cert-fingerprint '").nth(1)
            && let Some((fingerprint, _)) = rest.split_once('\'')
        {
            assert!(
                text.contains(&format!(
                    "maintenance mode: waiting for a machine config; server certificate fingerprint {fingerprint}"
                )),
                "{text}"
            );
            break fingerprint.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "machined printed no fingerprint:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    machinery::pki::SpkiFingerprint::parse(&fingerprint).expect("a fingerprint");

    let gen_dir = work.path().join("gen");
    ok(
        &none,
        &[
            "gen",
            "config",
            "maint",
            &format!("https://{ip}:6443"),
            "--output-dir",
            gen_dir.to_str().expect("utf8"),
        ],
    );
    let config = gen_dir.join("controlplane.yaml");
    let apply = |pins: &str| {
        run(
            &none,
            &[
                "-n",
                ip,
                "apply-config",
                "--insecure",
                "--cert-fingerprint",
                pins,
                "-f",
                config.to_str().expect("utf8"),
                "--dry-run",
            ],
        )
    };
    // apid takes up the marker within a second or so of machined's line.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while run(&none, &["-n", ip, "version", "--insecure"]).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the maintenance API never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Another key: refused before anything is sent, naming both keys.
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let refused = apply(other);
    assert_ne!(refused.code, 0, "{}", refused.out);
    assert!(
        refused
            .err
            .contains("leaf peer certificate doesn't match the provided fingerprints"),
        "{}",
        refused.err
    );
    assert!(
        refused.err.contains(other) && refused.err.contains(&fingerprint),
        "{}",
        refused.err
    );
    // Not a fingerprint at all.
    let bad = apply("not-base64!");
    assert_ne!(bad.code, 0);
    assert!(bad.err.contains("--cert-fingerprint"), "{}", bad.err);
    // Among the pins: the call goes through.
    let pinned = apply(&format!("{other},{fingerprint}"));
    assert_eq!(pinned.code, 0, "{}{}", pinned.out, pinned.err);
    assert!(
        format!("{}{}", pinned.out, pinned.err).contains("Dry run summary"),
        "{}{}",
        pinned.out,
        pinned.err
    );
}
