//! API benchmarks. Run: `cargo bench -p bench` (release build; prints
//! figures). Every scenario runs in this one process, side by side, so the
//! ratios compare like with like on a noisy machine.
//!
//! - unary Version: direct to machined's socket, through routerd, through
//!   apid (mTLS), apid → apid (`node`), fan-out (`nodes`) to 1, 8, 32 nodes;
//! - ServiceList latency on machined's socket with 6 services;
//! - Logs follow throughput over machined's socket and through apid;
//! - machined's RSS at idle with its services up (real binaries);
//! - the floor: raw round trips through 0, 1 and 2 relay processes with
//!   no protocol, what any two proxies pay here just to wake each other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use api::machine::machine_service_client::MachineServiceClient;
use bench::{Samples, Usage};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

type Client = MachineServiceClient<Channel>;

/// Calls per scenario per turn of an interleaved run: a few milliseconds.
const TURN: usize = 25;

/// The local path through apid: routerd routes the package once and hands
/// apid a connection to machined (see `machinery::handoff`).
const APID_LOCAL: &str = "through apid (mTLS) -> machined";

/// Calls made before a scenario's `n` timed ones, to warm connections
/// and caches.
fn warm_ups(n: usize) -> usize {
    (n / 10).max(20)
}

/// One scenario of an [`interleaved`] run.
struct Scenario<'a> {
    client: Client,
    make: Box<dyn Fn() -> tonic::Request<()> + 'a>,
    /// Calls per turn.
    block: usize,
    /// Timed calls in all.
    total: usize,
    samples: Samples,
    /// What each watched process used during this scenario's turns.
    usage: Vec<Usage>,
}

impl<'a> Scenario<'a> {
    fn new(
        client: &Client,
        total: usize,
        block: usize,
        make: impl Fn() -> tonic::Request<()> + 'a,
    ) -> Scenario<'a> {
        Scenario {
            client: client.clone(),
            make: Box::new(make),
            block,
            total,
            samples: Samples::default(),
            usage: Vec::new(),
        }
    }
}

/// Runs the scenarios in turns of `block` calls each, round after round,
/// until each has made its `total` timed calls. The noise of this machine
/// comes and goes over seconds, so scenarios run one after another compare
/// whatever each happened to meet; in turns of a few milliseconds every
/// scenario meets the same. The `watched` processes' CPU time and context
/// switches are summed over each scenario's own turns (warm-ups excluded).
async fn interleaved(scenarios: &mut [Scenario<'_>], watched: &[u32]) {
    for s in scenarios.iter_mut() {
        for _ in 0..warm_ups(s.total) {
            s.client.version((s.make)()).await.expect("warm-up call");
        }
        s.usage = vec![Usage::default(); watched.len()];
    }
    loop {
        let mut busy = false;
        for s in scenarios.iter_mut() {
            let turn = s.total.saturating_sub(s.samples.len()).min(s.block);
            if turn == 0 {
                continue;
            }
            busy = true;
            let before: Vec<Usage> = watched.iter().map(|&pid| Usage::of(pid)).collect();
            let start = Instant::now();
            for _ in 0..turn {
                let t = Instant::now();
                s.client.version((s.make)()).await.expect("call");
                s.samples.push(t.elapsed());
            }
            s.samples.add_wall(start.elapsed());
            for ((used, &pid), before) in s.usage.iter_mut().zip(watched).zip(&before) {
                used.add_since(&Usage::of(pid), before);
            }
        }
        if !busy {
            return;
        }
    }
}

fn with(key: &'static str, values: &[String]) -> tonic::Request<()> {
    let mut r = tonic::Request::new(());
    for v in values {
        r.metadata_mut()
            .append(key, MetadataValue::try_from(v.as_str()).expect("ascii"));
    }
    r
}

async fn admin(pki: &testkit::Pki, addr: SocketAddr) -> Client {
    let config = testkit::client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"])));
    MachineServiceClient::new(
        machinery::grpc::tls_channel(addr.to_string(), "127.0.0.1", config).expect("channel"),
    )
}

/// The parts that run in this process over 33 in-process nodes: Version
/// latency, fan-out and Logs follow.
async fn in_process() {
    let pki = testkit::Pki::new();
    // A and B for the Version paths, 32 more targets only for fan-out.
    let count: u8 = if only("fanout") { 33 } else { 2 };
    let mut nodes = Vec::new();
    for i in 0..count {
        let addr: SocketAddr = format!("127.9.{}.{}:0", i / 200, 2 + i % 200)
            .parse()
            .expect("addr");
        nodes.push(testkit::start_node(&format!("bench-{i}"), addr, Some((&pki, false))).await);
    }
    let a = &nodes[0];
    let direct = MachineServiceClient::new(
        machinery::grpc::unix_channel(&a.paths.socket("machined"))
            .await
            .expect("machined"),
    );
    let router = MachineServiceClient::new(
        machinery::grpc::unix_channel(&a.paths.socket("routerd"))
            .await
            .expect("routerd"),
    );
    let apid = admin(&pki, a.addr).await;
    if only("versions") {
        versions(&nodes, &direct, &router, &apid).await;
    }
    if only("fanout") {
        fan_out(&nodes, &apid).await;
    }
    if only("logs") {
        logs_follow(a, &direct, &apid).await;
    }
}

/// Unary Version on node A: direct, through routerd, through apid, and
/// apid → apid (`node` = B).
async fn versions(nodes: &[testkit::Node], direct: &Client, router: &Client, apid: &Client) {
    println!("== unary Version, all in this process (sequential calls) ==");
    let n = calls();
    let b = nodes[1].addr.to_string();
    let mut runs = [
        Scenario::new(direct, n, TURN, || tonic::Request::new(())),
        Scenario::new(router, n, TURN, || tonic::Request::new(())),
        Scenario::new(apid, n, TURN, || tonic::Request::new(())),
        Scenario::new(apid, n, TURN, || with("node", std::slice::from_ref(&b))),
    ];
    interleaved(&mut runs, &[]).await;
    let [d, r, l, o] = runs.map(|s| s.samples);
    println!("{}", d.line("direct to machined (UDS)"));
    println!("{}", r.line("through routerd (UDS, relayed)"));
    println!("{}", l.line(APID_LOCAL));
    println!("{}", o.line("apid -> apid (node=B, mTLS both hops)"));
    println!(
        "apid local hop adds {:.1}µs p50 over direct (goal <= 150µs); routerd's relay adds {:.1}µs",
        l.p50_over_us(&d),
        r.p50_over_us(&d)
    );
}

/// Fan-out (`nodes`) from node A's apid to 1, 8 and 32 of the others.
async fn fan_out(nodes: &[testkit::Node], apid: &Client) {
    println!("== fan-out (nodes=...) through apid A ==");
    let counts = [1usize, 8, 32];
    let targets: Vec<Vec<String>> = counts
        .iter()
        .map(|&count| {
            nodes[1..=count]
                .iter()
                .map(|n| n.addr.to_string())
                .collect()
        })
        .collect();
    // Turns of about 10 ms each: 32 nodes take about 4 times one node's call.
    let mut runs: Vec<Scenario<'_>> = counts
        .iter()
        .zip(&targets)
        .map(|(&count, targets)| {
            let (total, turn) = if count == 32 { (400, 5) } else { (1500, 20) };
            Scenario::new(apid, total, turn, move || with("nodes", targets))
        })
        .collect();
    interleaved(&mut runs, &[std::process::id()]).await;
    for (count, run) in counts.iter().zip(&runs) {
        let (cpu, switches) = run.usage[0].per_call_since(&Usage::default(), run.total);
        println!(
            "{}",
            run.samples.line(&format!("fan-out to {count} node(s)"))
        );
        println!(
            "  CPU of this process (all 33 nodes and the client) per call: {cpu:.0}µs, {switches:.1} context switches"
        );
    }
    let ratio =
        runs[2].samples.quantile(0.5).as_secs_f64() / runs[0].samples.quantile(0.5).as_secs_f64();
    println!("fan-out 32 / fan-out 1 p50 ratio: {ratio:.2}x (goal <= 3x)");
}

/// Logs follow throughput over node A's machined socket and through apid.
async fn logs_follow(a: &testkit::Node, direct: &Client, apid: &Client) {
    println!("== Logs follow throughput ==");
    for (name, mut client) in [
        ("over machined's socket", direct.clone()),
        ("through apid (mTLS)", apid.clone()),
    ] {
        let log = a.machine.logs.get_or_create("flood");
        let chunk = vec![b'x'; 64 * 1024];
        let req = api::machine::LogsRequest {
            namespace: "system".into(),
            id: "flood".into(),
            driver: 0,
            follow: true,
            tail_lines: 0,
        };
        let mut stream = client.logs(req).await.expect("logs").into_inner();
        let producer = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                log.append(&chunk);
                tokio::task::yield_now().await;
            }
        });
        let start = Instant::now();
        let mut bytes = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Ok(Ok(Some(d))) => bytes += d.bytes.len(),
                _ => break,
            }
        }
        producer.await.expect("producer");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "Logs follow {name:<28} {:>8.1} MB/s ({} MB in {secs:.1}s)",
            bytes as f64 / secs / 1e6,
            bytes / 1_000_000
        );
    }
}

async fn service_list() {
    println!("== ServiceList on machined's socket, 6 services ==");
    let dir = tempfile_dir();
    let options = machined::node::NodeOptions {
        mode: machined::node::Mode::Container,
        root: dir.clone(),
        hostname: Some("bench".into()),
        bin_dir: Some(PathBuf::from("/nonexistent")),
        apid_listen: None,
        trustd_listen: None,
    };
    let logs = Arc::new(machined::logbuf::LogRegistry::new(1024 * 1024, None));
    let config =
        Arc::new(machined::configstore::ConfigStore::load(dir.join("none.yaml")).expect("config"));
    let node = Arc::new(machined::node::Node::new(options, logs, config));
    let specs = (0..6)
        .map(|i| machined::supervisor::ServiceSpec::new(format!("svc-{i}"), "/bin/sleep", ["600"]))
        .collect();
    let sup =
        Arc::new(machined::supervisor::Supervisor::new(specs, &node.logs, None).expect("services"));
    let _ = node.supervisor.set(Arc::clone(&sup));
    sup.start_all().await;
    let socket = dir.join("machined.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    tokio::spawn(machined::run::serve_api(
        Arc::clone(&node),
        listener,
        std::future::pending(),
    ));
    let mut client = MachineServiceClient::new(
        machinery::grpc::unix_channel(&socket)
            .await
            .expect("connect"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..200 {
        client.service_list(()).await.expect("warm-up");
    }
    let mut s = Samples::default();
    let start = Instant::now();
    for _ in 0..3000 {
        let t = Instant::now();
        client.service_list(()).await.expect("call");
        s.push(t.elapsed());
    }
    s.set_wall(start.elapsed());
    println!("{}", s.line("ServiceList (7 entries incl. machined)"));
    sup.stop_all().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// A field of `/proc/PID/<file>` in kB (`VmRSS:` of `status`, `Pss:` of
/// `smaps_rollup`), or 0.
fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// Resident set and proportional set (shared pages divided among the
/// processes that map them: what the node really spends) of a process.
fn rss_pss_kib(pid: u32) -> (u64, u64) {
    (
        proc_kib(pid, "status", "VmRSS:"),
        proc_kib(pid, "smaps_rollup", "Pss:"),
    )
}

async fn memory() {
    println!("== memory at idle (real binaries, container mode, control plane) ==");
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.parent()).map(PathBuf::from))
        .expect("target dir");
    if !bin.join("machined").exists() {
        println!(
            "skipped: build the release binaries first (cargo build --release --workspace --bins)"
        );
        return;
    }
    // Side by side: the daemons run from machined's own executable (the
    // default, as in the boot image), then from their separate binaries
    // (--bin-dir).
    let carried = memory_of_node(&bin, None).await;
    let separate = memory_of_node(&bin, Some(&bin)).await;
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12}",
        "process", "RSS carried", "PSS carried", "RSS separate", "PSS separate"
    );
    let mut names: Vec<&String> = carried.iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let find = |rows: &[(String, (u64, u64))], name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map_or((0, 0), |&(_, v)| v)
    };
    let mut totals = [0_u64; 4];
    for name in names {
        let (cr, cp) = find(&carried, name);
        let (sr, sp) = find(&separate, name);
        for (t, v) in totals.iter_mut().zip([cr, cp, sr, sp]) {
            *t += v;
        }
        println!("{name:<10} {cr:>8} KiB {cp:>8} KiB {sr:>8} KiB {sp:>8} KiB");
    }
    let [cr, cp, sr, sp] = totals;
    println!(
        "{:<10} {cr:>8} KiB {cp:>8} KiB {sr:>8} KiB {sp:>8} KiB",
        "total"
    );
}

/// Starts a control plane (container mode) with the daemons from
/// `bin_dir`, or from machined itself if `None`; after 4 s, the RSS and PSS
/// of machined and each of its children, by process name.
async fn memory_of_node(
    bin: &std::path::Path,
    bin_dir: Option<&std::path::Path>,
) -> Vec<(String, (u64, u64))> {
    let dir = tempfile_dir();
    let now = SystemTime::now();
    let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
    let generated = machinery::generate::generate(
        &bundle,
        &machinery::generate::GenOptions::new("bench", "https://127.9.9.2:6443"),
        now,
    )
    .expect("config");
    let state = dir.join("system/state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(
        machinery::config::persist_path(&state),
        &generated.controlplane_yaml,
    )
    .expect("config");
    let mut command = std::process::Command::new(bin.join("machined"));
    command
        .args(["--mode", "container", "--root"])
        .arg(&dir)
        .args([
            "--hostname",
            "bench",
            "--apid-listen",
            "127.9.9.2:50000",
            "--trustd-listen",
            "127.9.9.2:50001",
        ]);
    if let Some(d) = bin_dir {
        command.arg("--bin-dir").arg(d);
    }
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("machined");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let me = child.id();
    let mut rows = vec![("machined".to_owned(), rss_pss_kib(me))];
    for (pid, name) in testkit::children_of(me) {
        rows.push((name, rss_pss_kib(pid)));
    }
    terminate(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// SIGTERM, then waits (at most 20 s) until the process is gone. Not
/// `Child::wait`: once a supervisor ran in this process, its reaper owns
/// waitpid and may have reaped the child already.
fn terminate(child: &mut std::process::Child) {
    let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        if stat.map_or(true, |s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real node: container-mode machined (which starts routerd, apid and
/// trustd) from the release binaries.
struct RealNode {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for RealNode {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_real(bin: &std::path::Path, yaml: &str, name: &str, ip: &str) -> RealNode {
    let dir = tempfile_dir();
    let state = dir.join("system/state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(machinery::config::persist_path(&state), yaml).expect("config");
    let child = std::process::Command::new(bin.join("machined"))
        .args(["--mode", "container", "--root"])
        .arg(&dir)
        .args([
            "--hostname",
            name,
            "--apid-listen",
            &format!("{ip}:50000"),
            "--trustd-listen",
            &format!("{ip}:50001"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("machined");
    RealNode { child, dir }
}

fn release_bins() -> Option<PathBuf> {
    // BENCH_BIN_DIR measures other builds of the daemons, such as the
    // image's static musl ones.
    if let Some(dir) = std::env::var_os("BENCH_BIN_DIR") {
        let bin = PathBuf::from(dir);
        assert!(
            bin.join("machined").exists(),
            "BENCH_BIN_DIR={}: no machined there",
            bin.display()
        );
        return Some(bin);
    }
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.parent()).map(PathBuf::from))?;
    bin.join("machined").exists().then_some(bin)
}

async fn latency_real() {
    println!("== unary Version, real daemons (separate processes, as deployed) ==");
    let Some(bin) = release_bins() else {
        println!(
            "skipped: build the release binaries first (cargo build --release --workspace --bins)"
        );
        return;
    };
    let now = SystemTime::now();
    let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
    let generated = machinery::generate::generate(
        &bundle,
        &machinery::generate::GenOptions::new("bench", "https://127.9.8.2:6443"),
        now,
    )
    .expect("config");
    let a = start_real(&bin, &generated.controlplane_yaml, "real-a", "127.9.8.2");
    let _b = start_real(&bin, &generated.controlplane_yaml, "real-b", "127.9.8.3");
    let ctx = generated
        .talosconfig
        .contexts
        .get("bench")
        .expect("context");
    let config = client_tls(ctx);
    let mut apid = MachineServiceClient::new(
        machinery::grpc::tls_channel("127.9.8.2:50000".into(), "127.9.8.2", config)
            .expect("channel"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while apid.version(()).await.is_err() {
        assert!(Instant::now() < deadline, "real node never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paths = machinery::constants::NodePaths::under(&a.dir);
    let direct = MachineServiceClient::new(
        machinery::grpc::unix_channel(&paths.socket("machined"))
            .await
            .expect("machined"),
    );
    let router = MachineServiceClient::new(
        machinery::grpc::unix_channel(&paths.socket("routerd"))
            .await
            .expect("routerd"),
    );
    let n = calls();
    // Node A's processes, and this one (the client), whose CPU time and
    // context switches per call show where a hop's time goes.
    let mut watched = vec![("machined".to_owned(), a.child.id())];
    watched.extend(
        testkit::children_of(a.child.id())
            .into_iter()
            .filter(|(_, name)| name == "routerd" || name == "apid")
            .map(|(pid, name)| (name, pid)),
    );
    watched.push(("client".to_owned(), std::process::id()));
    let pids: Vec<u32> = watched.iter().map(|&(_, pid)| pid).collect();
    let b = "127.9.8.3".to_owned();
    let mut runs = [
        Scenario::new(&direct, n, TURN, || tonic::Request::new(())),
        Scenario::new(&router, n, TURN, || tonic::Request::new(())),
        Scenario::new(&apid, n, TURN, || tonic::Request::new(())),
        Scenario::new(&apid, n, TURN, || with("node", std::slice::from_ref(&b))),
    ];
    interleaved(&mut runs, &pids).await;
    println!("{}", runs[0].samples.line("direct to machined (UDS)"));
    println!("{}", runs[1].samples.line("through routerd (UDS, relayed)"));
    println!("{}", runs[2].samples.line(APID_LOCAL));
    println!(
        "{}",
        runs[3]
            .samples
            .line("apid -> apid (node=B, mTLS both hops)")
    );
    for (scenario, run) in ["direct", "routerd", "apid"].iter().zip(&runs) {
        let parts: Vec<String> = watched
            .iter()
            .zip(&run.usage)
            .map(|((name, _), used)| {
                let (cpu, switches) = used.per_call_since(&Usage::default(), run.total);
                format!("{name} {cpu:.0}µs/{switches:.1}")
            })
            .collect();
        println!(
            "  per call, {scenario:<8} CPU/context switches: {}",
            parts.join(", ")
        );
    }
    println!(
        "apid local hop adds {:.1}µs p50 over direct (goal <= 150µs); routerd's relay adds {:.1}µs",
        runs[2].samples.p50_over_us(&runs[0].samples),
        runs[1].samples.p50_over_us(&runs[0].samples)
    );
}

/// `--raw-hop SOCKET [UPSTREAM]`: this executable as one hop of
/// [`relay_floor`], a process with a current-thread runtime like a daemon.
/// Each connection echoes what it reads or, with `UPSTREAM`, relays each
/// message there and the answer back. No protocol. Runs until killed.
fn raw_hop(socket: PathBuf, upstream: Option<PathBuf>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Gone with the benchmark, however it ends.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        while let Ok((conn, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut conn = machinery::uds::Stream::from_tokio(conn).expect("register");
                let mut up = match &upstream {
                    Some(path) => Some(machinery::uds::Stream::connect(path).await.expect("up")),
                    None => None,
                };
                let mut buf = vec![0_u8; 4096];
                loop {
                    let n = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if let Some(up) = up.as_mut() {
                        up.write_all(&buf[..n]).await.expect("relay request");
                        let m = match up.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(m) => m,
                        };
                        conn.write_all(&buf[..m]).await.expect("answer");
                    } else {
                        conn.write_all(&buf[..n]).await.expect("echo");
                    }
                }
            });
        }
    });
}

/// A child process stopped (see [`terminate`]) when dropped.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// The floor under the proxies' cost on this machine: 100-byte messages
/// to an echo server directly, through one relay and through two, each a
/// process of its own with a current-thread runtime like a daemon, over
/// the node's unix-socket streams, with no HTTP/2, TLS or gRPC. What the
/// relays add is what any two proxy processes pay here to wake each other.
async fn relay_floor() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    println!("== the floor: raw 100-byte round trips through 0, 1, 2 relay processes ==");
    let dir = tempfile_dir();
    let exe = std::env::current_exe().expect("own executable");
    let mut hops = Vec::new();
    for (socket, upstream) in [
        ("echo.sock", None),
        ("relay1.sock", Some("echo.sock")),
        ("relay2.sock", Some("relay1.sock")),
    ] {
        let mut command = std::process::Command::new(&exe);
        command.arg("--raw-hop").arg(dir.join(socket));
        if let Some(up) = upstream {
            command.arg(dir.join(up));
        }
        hops.push(StopOnDrop(command.spawn().expect("raw hop")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join(socket).exists() {
            assert!(Instant::now() < deadline, "{socket} never appeared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let n = calls();
    let mut results = Vec::new();
    for (name, socket) in [
        ("echo directly", "echo.sock"),
        ("through one relay", "relay1.sock"),
        ("through two relays", "relay2.sock"),
    ] {
        let mut conn = machinery::uds::Stream::connect(dir.join(socket))
            .await
            .expect("connect");
        let message = [7_u8; 100];
        let mut answer = [0_u8; 100];
        for _ in 0..warm_ups(n) {
            conn.write_all(&message).await.expect("warm-up write");
            conn.read_exact(&mut answer).await.expect("warm-up read");
        }
        let mut s = Samples::default();
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            conn.write_all(&message).await.expect("write");
            conn.read_exact(&mut answer).await.expect("read");
            s.push(t.elapsed());
        }
        s.set_wall(start.elapsed());
        println!("{}", s.line(name));
        results.push(s);
    }
    println!(
        "two relays add {:.1}µs p50 (one adds {:.1}µs): wake-ups alone, without HTTP/2 or TLS",
        results[2].p50_over_us(&results[0]),
        results[1].p50_over_us(&results[0])
    );
    drop(hops);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The parts of [`in_process`], which `BENCH_ONLY=inproc` runs together.
const IN_PROCESS: [&str; 3] = ["versions", "fanout", "logs"];

/// Whether to run `part`: every part runs unless `BENCH_ONLY` names one
/// (`real`, `inproc`, `versions`, `fanout`, `logs`, `services`, `memory`),
/// for profiling.
fn only(part: &str) -> bool {
    let chosen = std::env::var("BENCH_ONLY").unwrap_or_default();
    chosen.is_empty() || chosen == part || (chosen == "inproc" && IN_PROCESS.contains(&part))
}

/// Calls per scenario: 3000, or `BENCH_CALLS`.
fn calls() -> usize {
    std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn client_tls(ctx: &machinery::talosconfig::Context) -> Arc<rustls::ClientConfig> {
    machinery::grpc::client_tls_config(
        &ctx.ca_pem().expect("ca"),
        Some((&ctx.crt_pem().expect("crt"), &ctx.key_pem().expect("key"))),
    )
    .expect("tls")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--raw-hop") {
        raw_hop(
            PathBuf::from(args.get(2).expect("--raw-hop SOCKET [UPSTREAM]")),
            args.get(3).map(PathBuf::from),
        );
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // special: run only when benchmarking.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if only("real") {
            latency_real().await;
            relay_floor().await;
        }
        if IN_PROCESS.iter().any(|part| only(part)) {
            in_process().await;
        }
        if only("services") {
            service_list().await;
        }
        if only("memory") {
            memory().await;
        }
    });
}
