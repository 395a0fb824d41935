//! Supervisor tests with real short-lived processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machined::logbuf::LogRegistry;
use machined::supervisor::{
    HealthCheck, HealthSpec, Observer, RestartPolicy, ServiceSpec, ServiceState, ServiceStatus,
    Supervisor,
};

type Seen = Arc<Mutex<Vec<(String, ServiceState, String, Instant)>>>;

fn recorder() -> (Observer, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let observer: Observer = Arc::new(move |st: &ServiceStatus, msg: &str| {
        s.lock()
            .expect("lock")
            .push((st.id.clone(), st.state, msg.to_owned(), Instant::now()));
    });
    (observer, seen)
}

fn sh(id: &str, script: &str) -> ServiceSpec {
    ServiceSpec::new(id, "/bin/sh", ["-c", script])
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn logs() -> Arc<LogRegistry> {
    Arc::new(LogRegistry::new(64 * 1024, None))
}

fn pid_alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still have one.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn health_gated_dependency_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("db.sock");
    let listen = "import socket,sys,time; time.sleep(0.6); s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(60)";
    let db = ServiceSpec::new(
        "db",
        "python3",
        ["-c", listen, sock.to_str().expect("utf8")],
    )
    .health(HealthSpec {
        check: HealthCheck::UnixSocket(sock.clone()),
        initial_delay: Duration::from_millis(50),
        period: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        startup_retry: Duration::from_millis(25),
        notify: None,
    });
    let app = sh("app", "exec sleep 60").depends_on(["db"]);
    let (observer, seen) = recorder();
    let sup = Supervisor::new(vec![app, db], &logs(), Some(observer)).expect("valid");
    sup.start_all().await;

    // While db is running but not yet healthy, app waits and says why.
    wait_for("db running", Duration::from_secs(10), || {
        sup.status("db")
            .is_some_and(|s| s.state == ServiceState::Running)
    })
    .await;
    let app_status = sup.status("app").expect("app");
    assert_eq!(app_status.state, ServiceState::Waiting, "{app_status:?}");
    assert_eq!(
        app_status.events.back().expect("event").msg,
        "Waiting for service \"db\" to be \"up\""
    );

    wait_for("app running", Duration::from_secs(10), || {
        sup.status("app")
            .is_some_and(|s| s.state == ServiceState::Running)
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    let db_healthy = seen
        .iter()
        .find(|(id, _, msg, _)| id == "db" && msg == "Health check successful")
        .expect("db healthy event")
        .3;
    let app_running = seen
        .iter()
        .find(|(id, st, _, _)| id == "app" && *st == ServiceState::Running)
        .expect("app running")
        .3;
    assert!(
        app_running >= db_healthy,
        "app started before its dependency was healthy"
    );
    assert!(sup.status("db").expect("db").is_up());

    sup.stop_all().await;
    let states: Vec<ServiceState> = sup.list().iter().map(|s| s.state).collect();
    assert_eq!(states, [ServiceState::Finished, ServiceState::Finished]);
}

#[tokio::test]
async fn a_readiness_report_runs_the_health_check_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("db.sock");
    let notify = dir.path().join("notify").join("db.sock");
    // Listens after a while, then reports READY=1 to $NOTIFY_SOCKET, as
    // machinery::daemon::notify_ready does.
    let listen = "import os,socket,sys,time; time.sleep(0.3); s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); n=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(60)";
    let db = ServiceSpec::new(
        "db",
        "python3",
        ["-c", listen, sock.to_str().expect("utf8")],
    )
    .health(HealthSpec {
        check: HealthCheck::UnixSocket(sock.clone()),
        initial_delay: Duration::from_millis(10),
        period: Duration::from_secs(600),
        timeout: Duration::from_millis(200),
        // Without the report the second check would come only after 10
        // minutes: being up within the wait below shows the report did it.
        startup_retry: Duration::from_secs(600),
        notify: Some(notify.clone()),
    });
    let (observer, seen) = recorder();
    let sup = Supervisor::new(vec![db], &logs(), Some(observer)).expect("valid");
    sup.start_all().await;
    wait_for("db up", Duration::from_secs(20), || {
        sup.status("db").is_some_and(|s| s.is_up())
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.iter()
            .any(|(id, _, msg, _)| id == "db" && msg.starts_with("Health check failed")),
        "the first check ran before the service listened: {seen:?}"
    );
    assert!(
        notify.exists(),
        "the readiness socket is where the spec says"
    );
    sup.stop_all().await;
}

#[tokio::test]
async fn stop_all_goes_in_reverse_dependency_order() {
    let (observer, seen) = recorder();
    let specs = vec![
        sh("base", "exec sleep 60"),
        sh("middle", "exec sleep 60").depends_on(["base"]),
        sh("top", "exec sleep 60").depends_on(["middle"]),
        sh("side", "exec sleep 60").depends_on(["base"]),
    ];
    let sup = Supervisor::new(specs, &logs(), Some(observer)).expect("valid");
    sup.start_all().await;
    wait_for("all running", Duration::from_secs(10), || {
        sup.list().iter().all(|s| s.state == ServiceState::Running)
    })
    .await;
    let started: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, st, _, _)| *st == ServiceState::Running)
        .map(|(id, ..)| id.clone())
        .collect();
    let pos = |id: &str, v: &[String]| v.iter().position(|x| x == id).expect("present");
    assert!(pos("base", &started) < pos("middle", &started));
    assert!(pos("middle", &started) < pos("top", &started));
    assert!(pos("base", &started) < pos("side", &started));

    sup.stop_all().await;
    let stopped: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, st, msg, _)| *st == ServiceState::Finished && msg == "Service stopped")
        .map(|(id, ..)| id.clone())
        .collect();
    assert_eq!(stopped.len(), 4, "{stopped:?}");
    assert_eq!(stopped[0], "top");
    assert_eq!(stopped[3], "base");
    assert!(pos("middle", &stopped) < pos("base", &stopped));
    assert!(pos("side", &stopped) < pos("base", &stopped));
}

#[tokio::test]
async fn kill_9_is_restarted_with_backoff() {
    let spec =
        sh("victim", "exec sleep 60").backoff(Duration::from_millis(300), Duration::from_secs(5));
    let sup = Supervisor::new(vec![spec], &logs(), None).expect("valid");
    sup.start_all().await;
    wait_for("running", Duration::from_secs(10), || {
        sup.status("victim").is_some_and(|s| s.pid.is_some())
    })
    .await;
    let first = sup.status("victim").and_then(|s| s.pid).expect("pid");

    let killed_at = Instant::now();
    // Not `Command::status()`: in this process the reaper owns waitpid and
    // would take the exit status of a `kill` child.
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(first).expect("pid")).expect("nonzero pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
    wait_for("restarted", Duration::from_secs(10), || {
        sup.status("victim")
            .is_some_and(|s| s.pid.is_some_and(|p| p != first))
    })
    .await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(300),
        "restarted before the backoff"
    );
    let st = sup.status("victim").expect("status");
    assert_eq!(st.starts, 2);
    let msgs: Vec<&str> = st.events.iter().map(|e| e.msg.as_str()).collect();
    assert!(
        msgs.contains(&"Process exited with killed by signal 9"),
        "{msgs:?}"
    );
    assert!(msgs.contains(&"Restarting in 300ms"), "{msgs:?}");
    assert!(!pid_alive(first), "the killed process was not reaped");
    sup.stop_all().await;
}

#[tokio::test]
async fn crash_loop_stays_bounded() {
    let spec =
        sh("crasher", "exit 3").backoff(Duration::from_millis(50), Duration::from_millis(400));
    let sup = Supervisor::new(vec![spec], &logs(), None).expect("valid");
    sup.start_all().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = sup.status("crasher").expect("status");
    // Delays 50+100+200+400+400+... ms: at most 8 starts fit in 2 s.
    assert!((3..=8).contains(&st.starts), "starts = {}", st.starts);
    assert!(
        st.events.iter().any(|e| e.msg == "Restarting in 400ms"),
        "the backoff never reached its cap"
    );
    assert!(st.events.len() <= machined::supervisor::EVENTS_KEPT);
    sup.stop_all().await;
    assert_eq!(
        sup.status("crasher").expect("status").state,
        ServiceState::Finished
    );
}

#[tokio::test]
async fn restart_policies() {
    let specs = vec![
        sh("once-fails", "exit 1").restart(RestartPolicy::Once),
        sh(
            "until-ok",
            "test -e \"$MARK\" && exit 0; touch \"$MARK\"; exit 1",
        )
        .restart(RestartPolicy::UntilSuccess)
        .backoff(Duration::from_millis(20), Duration::from_millis(20))
        .env(
            "MARK",
            tempfile::tempdir()
                .expect("dir")
                .keep()
                .join("mark")
                .to_string_lossy(),
        ),
    ];
    let sup = Supervisor::new(specs, &logs(), None).expect("valid");
    sup.start_all().await;
    wait_for("until-ok finished", Duration::from_secs(10), || {
        sup.status("until-ok")
            .is_some_and(|s| s.state == ServiceState::Finished)
    })
    .await;
    wait_for("once-fails failed", Duration::from_secs(10), || {
        sup.status("once-fails")
            .is_some_and(|s| s.state == ServiceState::Failed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sup.status("once-fails").expect("s").starts, 1);
    assert_eq!(sup.status("until-ok").expect("s").starts, 2);
}

#[tokio::test]
async fn sigterm_ignorer_is_killed_after_grace() {
    let spec = sh("stubborn", "trap '' TERM; while :; do sleep 0.05; done")
        .stop_grace(Duration::from_millis(700));
    let sup = Supervisor::new(vec![spec], &logs(), None).expect("valid");
    sup.start_all().await;
    wait_for("running", Duration::from_secs(10), || {
        sup.status("stubborn").is_some_and(|s| s.pid.is_some())
    })
    .await;
    let pid = sup.status("stubborn").and_then(|s| s.pid).expect("pid");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    sup.stop("stubborn").await.expect("stop");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "stopped after {took:?}: it should have ignored SIGTERM"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!pid_alive(pid));
    let st = sup.status("stubborn").expect("status");
    assert_eq!(st.state, ServiceState::Finished);
    // It stays stopped: no restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sup.status("stubborn").expect("status").starts, 1);
}

#[tokio::test]
async fn orphans_of_a_service_are_reaped() {
    // In container mode machined is a child subreaper; so is this test.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 0.3 & echo $! >> {0}; sleep 0.4 & echo $! >> {0}; exit 0",
        pids.display()
    );
    let spec = sh("parent", &script).restart(RestartPolicy::Once);
    let sup = Supervisor::new(vec![spec], &logs(), None).expect("valid");
    sup.start_all().await;
    wait_for("finished", Duration::from_secs(10), || {
        sup.status("parent")
            .is_some_and(|s| s.state == ServiceState::Finished)
    })
    .await;
    let orphans: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("pids")
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(orphans.len(), 2);
    wait_for("orphans reaped", Duration::from_secs(5), || {
        orphans.iter().all(|p| !pid_alive(*p))
    })
    .await;
    // And no zombie child stays under us. Tests in this binary run at the
    // same time and share the one reaper, so another test's service may be
    // caught between its exit and its reaping: a zombie is a defect only if
    // the reaper leaves it there.
    let zombies = zombie_children();
    let what = format!("these zombie children to be reaped: {zombies:?}");
    wait_for(&what, Duration::from_secs(5), || {
        let now = zombie_children();
        zombies.iter().all(|z| !now.contains(z))
    })
    .await;
}

/// This process's children that have exited and are not reaped yet, with
/// their `/proc/<pid>/stat` line.
fn zombie_children() -> Vec<(u32, String)> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == me {
            zombies.push((pid, stat));
        }
    }
    zombies
}

#[tokio::test]
async fn output_goes_to_the_log_buffer() {
    let registry = logs();
    let spec = sh("talker", "echo out; echo err >&2").restart(RestartPolicy::Once);
    let sup = Supervisor::new(vec![spec], &registry, None).expect("valid");
    sup.start_all().await;
    let log = registry.get("talker").expect("log id");
    wait_for("output", Duration::from_secs(10), || log.len() >= 8).await;
    let (text, _) = log.read(0, 1024);
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");
}

#[tokio::test]
async fn api_commands() {
    let mut spec = sh("pinned", "exec sleep 60");
    spec.api_stoppable = false;
    let sup =
        Supervisor::new(vec![spec, sh("free", "exec sleep 60")], &logs(), None).expect("valid");
    sup.start_all().await;
    wait_for("running", Duration::from_secs(10), || {
        sup.list().iter().all(|s| s.pid.is_some())
    })
    .await;
    assert_eq!(
        sup.stop("pinned").await.expect_err("refused").to_string(),
        "service \"pinned\" doesn't support stop via API"
    );
    assert_eq!(
        sup.stop("nope").await.expect_err("unknown").to_string(),
        "service \"nope\" not found"
    );
    let before = sup.status("free").and_then(|s| s.pid).expect("pid");
    sup.restart("free").await.expect("restart");
    wait_for("new pid", Duration::from_secs(10), || {
        sup.status("free")
            .and_then(|s| s.pid)
            .is_some_and(|p| p != before)
    })
    .await;
    sup.stop("free").await.expect("stop");
    assert_eq!(sup.status("free").expect("s").state, ServiceState::Finished);
    sup.start("free").await.expect("start");
    wait_for("running again", Duration::from_secs(10), || {
        sup.status("free")
            .is_some_and(|s| s.state == ServiceState::Running)
    })
    .await;
    sup.stop_all().await;
}
