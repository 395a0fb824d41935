//! Start-up and shutdown of machined.
//!
//! Container mode: an ordinary process with a state directory; SIGTERM or
//! SIGINT stop the services and exit. Metal mode: PID 1; the boot sequence
//! (mounts, modules, switch root) runs before this and belongs to the image
//! work; here machined serves, supervises and finally syncs and reboots or
//! powers off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::machine::machine_service_server::MachineServiceServer;
use tokio::net::UnixListener;

use crate::configstore::ConfigStore;
use crate::events::{MachineStage, Payload};
use crate::logbuf::{DEFAULT_CAPACITY, LogRegistry};
use crate::node::{Mode, Node, NodeOptions, PowerAction};
use crate::server::MachineApi;
use crate::supervisor::{Observer, ServiceStatus, Supervisor};

/// What can stop machined from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A directory could not be made.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The API socket could not be bound.
    #[error("binding the API socket {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The persisted config is broken.
    #[error(transparent)]
    Config(#[from] machinery::config::ConfigError),
    /// The live copy of the config could not be written.
    #[error(transparent)]
    LiveConfig(#[from] crate::configstore::ApplyError),
    /// Services are misdefined.
    #[error(transparent)]
    Services(#[from] crate::supervisor::SupervisorError),
    /// A signal handler could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// Subreaper could not be set.
    #[error("becoming a child subreaper: {0}")]
    Subreaper(std::io::Error),
}

fn mkdir(path: PathBuf) -> Result<PathBuf, RunError> {
    std::fs::create_dir_all(&path).map_err(|source| RunError::Dir {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Sets up logging into machined's own log buffer (and stderr); returns the
/// registry. Call once, before anything logs.
#[must_use]
pub fn init_logging(options: &NodeOptions) -> Arc<LogRegistry> {
    let log_dir = match options.mode {
        Mode::Container => mkdir(options.root.join("var/log")).ok(),
        // On metal, /var is the EPHEMERAL partition, mounted by the boot
        // sequence before this runs; without it /var is on the read-only
        // root, the mkdir fails, and logs stay in memory only.
        Mode::Metal => mkdir(options.root.join("var/log")).ok(),
    };
    let logs = Arc::new(LogRegistry::new(DEFAULT_CAPACITY, log_dir));
    crate::logbuf::set_node_logs(Arc::clone(&logs));
    let writer = crate::logbuf::TeeWriter::new(logs.get_or_create("machined"));
    let filter = tracing_subscriber::EnvFilter::try_from_env("MACHINED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
    logs
}

/// Runs machined until a power action or a signal; returns the action.
///
/// # Errors
/// Start-up failures (directories, socket, config, services).
pub async fn run(
    options: NodeOptions,
    logs: Arc<LogRegistry>,
    signals: &Signals,
) -> Result<PowerAction, RunError> {
    if options.mode == Mode::Container {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| RunError::Subreaper(e.into()))?;
    }
    // The reaper must run before the first spawn.
    let _ = crate::reaper::Reaper::global();

    let paths = machinery::constants::NodePaths::under(&options.root);
    let state = mkdir(paths.state_dir())?;
    let config = Arc::new(
        ConfigStore::load(machinery::config::persist_path(&state))?
            .with_live_copy(paths.live_config())?,
    );
    let node = Arc::new(Node::new(options, logs, config));
    node.events.publish(
        Payload::MachineStatus {
            stage: MachineStage::Booting,
            ready: false,
            unmet: Vec::new(),
        },
        "",
    );
    tracing::info!(mode = node.mode().as_str(), root = %node.options.root.display(), "machined {} starting", machinery::constants::VERSION);

    let socket = paths.socket("machined");
    let listener = machinery::daemon::bind_unix(&socket).map_err(|source| RunError::Bind {
        path: socket.clone(),
        source,
    })?;
    tracing::info!(socket = %socket.display(), "serving the machine API");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve_api(Arc::clone(&node), listener, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    // A marker left by a maintenance run must not put the configured
    // node's apid in maintenance mode until the credentials are issued.
    if !node.maintenance_run {
        crate::credentials::clear_maintenance_marker(&node);
    }
    // Credentials before services: apid and trustd read them at start.
    let credentials = tokio::spawn(crate::credentials::maintain(Arc::clone(&node), None));
    // Service logs to the config's destinations, from boot on, and to
    // those a config change names from then on. The shipper is the
    // process's: it goes on across the restart from an applied config.
    // With `debug: true` on metal, the console too, as upstream's.
    let log_shipping = tokio::spawn(ship_logs(
        Arc::clone(&node),
        crate::logship::Shipper::node(&node.logs),
        "log destinations changed",
        |node: &Node| {
            let Some(config) = node.config.current() else {
                return Vec::new();
            };
            let mut destinations: Vec<crate::logship::Destination> = config
                .log_destinations()
                .into_iter()
                .filter_map(|(endpoint, tags)| crate::logship::Destination::parse(&endpoint, tags))
                .collect();
            if config.debug() && node.mode() == Mode::Metal {
                destinations.push(crate::logship::Destination::console(crate::boot::CONSOLE));
            }
            destinations
        },
    ));
    // The kernel's log to the KmsgLogConfig documents' URLs and
    // talos.logging.kernel=, on metal (in a container the kernel is the
    // host's), followed from boot and on every config change.
    let kernel_logs = (node.mode() == Mode::Metal).then(|| {
        let cmdline = crate::boot::read_cmdline();
        let from_cmdline = crate::boot::last_kernel_arg(&cmdline, "talos.logging.kernel")
            .flatten()
            .map(str::to_owned);
        tokio::spawn(ship_logs(
            Arc::clone(&node),
            crate::logship::Shipper::kernel(),
            "kernel log destinations changed",
            move |node: &Node| {
                let urls = node
                    .config
                    .current()
                    .map(|c| c.kmsg_log_urls().to_vec())
                    .unwrap_or_default();
                let mut found: Vec<crate::logship::Destination> = Vec::new();
                for url in from_cmdline.iter().chain(urls.iter()) {
                    if let Some(d) = crate::logship::Destination::parse(url, BTreeMap::new())
                        && !found.contains(&d)
                    {
                        found.push(d);
                    }
                }
                found
            },
        ))
    });
    // Kernel parameters before services too, and again on every config
    // change; on metal only (in a container the kernel is the host's).
    // A WatchdogTimerConfig's hardware watchdog, armed and fed, on metal.
    let watchdog =
        (node.mode() == Mode::Metal).then(|| tokio::spawn(keep_watchdog(Arc::clone(&node))));
    let kernel_params = if node.mode() == Mode::Metal {
        // Subscribed first, so that no change is missed.
        let mut configs = node.config.subscribe();
        apply_kernel_params(&node).await;
        let node = Arc::clone(&node);
        Some(tokio::spawn(async move {
            while configs.changed().await.is_ok() {
                apply_kernel_params(&node).await;
            }
        }))
    } else {
        None
    };

    // machine.files, once per boot, before the services read them; a
    // later change waits for the next boot, and says so.
    let user_files = {
        let mut configs = node.config.subscribe();
        let written = write_user_files(&node).await;
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            while configs.changed().await.is_ok() {
                let now = node
                    .config
                    .current()
                    .map(|c| c.user_files())
                    .unwrap_or_default();
                if written.as_ref().is_some_and(|w| *w != now) {
                    tracing::warn!("machine.files changed: the files are written at the next boot");
                }
            }
        })
    };

    let events = Arc::clone(&node.events);
    let metal = node.mode() == Mode::Metal;
    let observer: Observer = Arc::new(move |status, msg| {
        // On metal, service transitions also go to the kernel log (and so
        // the console and dmesg, with the boot clock), as upstream's do.
        if metal {
            crate::boot::kmsg_log(&format!(
                "service[{}]({}): {msg}",
                status.id,
                status.state.as_str()
            ));
        }
        events.publish(
            Payload::ServiceState {
                service: status.id.clone(),
                state: status.state,
                message: msg.to_owned(),
                health: status.health.clone(),
            },
            "",
        );
    });
    let supervisor = Arc::new(Supervisor::new(
        crate::services::daemon_specs(&node),
        &node.logs,
        Some(observer),
    )?);
    let _ = node.supervisor.set(Arc::clone(&supervisor));
    // On metal, what the first call needs starts first; the rest, and the
    // network and filesystem modules a first boot left for later, once
    // apid is up.
    let modules = if node.mode() == Mode::Metal {
        for id in FIRST_WAVE {
            let _ = supervisor.start(id).await;
        }
        let supervisor = Arc::clone(&supervisor);
        Some(tokio::spawn(async move {
            // Woken by apid's status changes, not by polling: on a booting
            // node every poll takes CPU from the services starting.
            let apid_up = async {
                match supervisor.subscribe("apid") {
                    Some(mut apid) => {
                        let _ = apid.wait_for(ServiceStatus::is_up).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let _ = tokio::time::timeout(SECOND_WAVE_WITHIN, apid_up).await;
            // The node's addresses first, as a remote caller waits for
            // them: networkd, and the NIC driver (networkd takes the link
            // up when it appears); then the filesystems' modules, at a low
            // priority so that they do not slow the lease and the rest.
            let _ = supervisor.start("networkd").await;
            let modules = tokio::task::spawn_blocking(|| {
                crate::boot::load_network_modules();
                crate::boot::finish_modules_in_background()
            });
            supervisor.start_all().await;
            let _ = modules.await;
        }))
    } else {
        supervisor.start_all().await;
        None
    };
    let stage = if node.in_maintenance() {
        MachineStage::Maintenance
    } else {
        MachineStage::Running
    };
    node.events.publish(
        Payload::MachineStatus {
            stage,
            ready: true,
            unmet: Vec::new(),
        },
        "",
    );
    tracing::info!(maintenance = node.in_maintenance(), "machined ready");
    // Up on an installed disk: the slot that booted is good (boot counting
    // stops), and a failed upgrade that brought us back is reported.
    let confirm_slot = (node.mode() == Mode::Metal && !node.in_maintenance())
        .then(|| crate::bootloader::booted_slot(&crate::boot::read_cmdline()))
        .flatten()
        .map(|slot| {
            let supervisor = Arc::clone(&supervisor);
            let node = Arc::clone(&node);
            tokio::spawn(async move { confirm_when_up(&node, &supervisor, slot).await })
        });
    // Leaving maintenance mode: once a config is applied, start over from
    // it (the right services for the machine type, the daemons reading the
    // config at start). The pause lets the ApplyConfiguration reply travel
    // back through apid before apid stops.
    let leave_maintenance = node.maintenance_run.then(|| {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let mut configs = node.config.subscribe();
            if configs.wait_for(Option::is_some).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if install_from_maintenance(&node).await {
                    node.request_power(PowerAction::Reboot);
                    return;
                }
                tracing::info!(
                    "machine config applied in maintenance mode: starting the services from it"
                );
                node.request_power(PowerAction::Configured);
            }
        })
    });

    let (action, actor) = wait_for_stop(&node, signals).await;
    if !actor.is_empty() {
        // Asked through the API: let the reply travel back through routerd
        // and apid before they stop.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A reboot, shutdown or reset asked for meanwhile takes over from a
    // restart from the applied config (and names the sequence).
    let (action, actor) = node.carried_out(action, actor);
    tracing::info!(?action, actor, "stopping services");
    node.events.publish(
        Payload::Sequence {
            sequence: if action == PowerAction::Reset {
                "reset"
            } else {
                "shutdown"
            }
            .into(),
            start: true,
            error: None,
        },
        &actor,
    );
    // Nothing may start services while they stop: the second wave goes
    // first.
    if let Some(task) = &modules {
        task.abort();
    }
    // Each service is bounded (TERM, grace, KILL, a last wait); this bounds
    // the whole, whatever goes wrong, so the node always goes down.
    if tokio::time::timeout(STOP_ALL_LIMIT, supervisor.stop_all())
        .await
        .is_err()
    {
        tracing::error!(
            limit = ?STOP_ALL_LIMIT,
            "the services did not all stop in time; going on without them"
        );
    }
    supervisor.shutdown();
    // The services' last lines and the kernel's go out before the
    // machine goes down; a destination that is down costs this much at
    // most. (The shippers go on across a restart from an applied config.)
    let (services_sent, kernel_sent) = if action == PowerAction::Configured {
        (true, true)
    } else {
        tokio::join!(
            crate::logship::Shipper::node(&node.logs).drain(LOG_DRAIN),
            crate::logship::Shipper::kernel().drain(LOG_DRAIN)
        )
    };
    if !(services_sent && kernel_sent) {
        tracing::warn!(
            within_ms = LOG_DRAIN.as_millis(),
            "log lines left unsent at shutdown: a destination did not take them"
        );
    }
    credentials.abort();
    log_shipping.abort();
    user_files.abort();
    if let Some(task) = kernel_logs {
        task.abort();
    }
    // Stopping it disarms the watchdog (the magic close): a reboot must not
    // be cut short by it.
    if let Some(task) = watchdog {
        task.abort();
    }
    if let Some(task) = kernel_params {
        task.abort();
    }
    if let Some(task) = leave_maintenance {
        task.abort();
    }
    if let Some(task) = confirm_slot {
        task.abort();
    }
    if let Some(task) = modules {
        task.abort();
    }
    let _ = stop_tx.send(true);
    let mut server = server;
    if tokio::time::timeout(Duration::from_secs(5), &mut server)
        .await
        .is_err()
    {
        // A call still running past this point must not be answered as if
        // it had been heard: a power request it makes now would be lost.
        server.abort();
    }
    let _ = std::fs::remove_file(&socket);
    // A reboot, shutdown or reset asked for while the services stopped
    // for a restart from the applied config takes over from it, a
    // signal's (or the power button's) too.
    if let Some(asked) = signals.pending() {
        node.try_request_power(asked);
    }
    let (action, _) = node.carried_out(action, actor);
    if action == PowerAction::Reset {
        return Ok(reset(&node).await);
    }
    Ok(action)
}

/// How often arming a watchdog is tried again: its driver may load after
/// the config is read (the deferred modules).
const WATCHDOG_RETRY: Duration = Duration::from_secs(5);

/// Keeps the watchdog the config's `WatchdogTimerConfig` names armed and
/// fed: armed when the config names one, disarmed when it no longer does,
/// and armed anew when the device or timeout change.
async fn keep_watchdog(node: Arc<Node>) {
    // Subscribed before the first read, so that no change is missed.
    let mut configs = node.config.subscribe();
    let mut armed: Option<crate::watchdog::Armed> = None;
    let mut current: Option<(String, Duration)> = None;
    // A failure is warned about once per configured watchdog.
    let mut warned = false;
    loop {
        let wanted = node
            .config
            .current()
            .and_then(|config| config.document_settings().watchdog.clone());
        if wanted != current {
            if armed.take().is_some() {
                tracing::info!("watchdog disarmed");
                crate::boot::kmsg_log("watchdog disarmed");
            }
            current = wanted;
            warned = false;
        }
        if armed.is_none()
            && let Some((device, timeout)) = &current
        {
            let (device, timeout) = (device.clone(), *timeout);
            match tokio::task::spawn_blocking(move || crate::watchdog::arm(&device, timeout)).await
            {
                Ok(Ok(watchdog)) => {
                    let line = format!(
                        "watchdog {} armed: timeout {:?}, fed every {:?}",
                        watchdog.device(),
                        watchdog.timeout(),
                        watchdog.feed_interval()
                    );
                    tracing::info!("{line}");
                    crate::boot::kmsg_log(&line);
                    watchdog.heartbeat();
                    armed = Some(watchdog);
                }
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "watchdog not armed; trying again every 5 s");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "watchdog not armed"),
                Err(e) => tracing::warn!(error = %e, "watchdog not armed; trying again"),
            }
        }
        let retry = armed.is_none() && current.is_some();
        // While armed, this loop is the runtime's heartbeat: the feeder
        // stops feeding when it goes quiet.
        let beat = armed
            .as_ref()
            .map_or(WATCHDOG_RETRY, crate::watchdog::Armed::feed_interval);
        tokio::select! {
            changed = configs.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(WATCHDOG_RETRY), if retry => {}
            () = tokio::time::sleep(beat), if armed.is_some() => {
                if let Some(watchdog) = &armed {
                    watchdog.heartbeat();
                }
            }
        }
    }
}

/// How long shutdown waits for the log shippers to send what they hold.
const LOG_DRAIN: Duration = Duration::from_secs(1);

/// The longest the services may take to stop, all together.
const STOP_ALL_LIMIT: Duration = Duration::from_secs(60);

/// Keeps `shipper` sending to what `destinations` reads from the config:
/// from boot, then on every change (`what` is logged). The shipper is the
/// process's: it goes on across the restart from an applied config.
async fn ship_logs(
    node: Arc<Node>,
    shipper: &'static crate::logship::Shipper,
    what: &'static str,
    destinations: impl Fn(&Node) -> Vec<crate::logship::Destination>,
) {
    // Subscribed before the first read, so that no change is missed.
    let mut configs = node.config.subscribe();
    let mut current = destinations(&node);
    shipper.set(&current, true);
    while configs.changed().await.is_ok() {
        let next = destinations(&node);
        if next != current {
            tracing::info!(destinations = next.len(), "{what}");
            shipper.set(&next, false);
            current = next;
        }
    }
}

/// Writes the config's `machine.files`, the first time this process runs
/// with a config (at boot, or once an apply ends maintenance mode). Returns
/// the entries this boot's files came from, if the config has been seen.
async fn write_user_files(node: &Node) -> Option<Vec<machinery::config::UserFile>> {
    static WRITTEN: std::sync::Mutex<Option<Vec<machinery::config::UserFile>>> =
        std::sync::Mutex::new(None);
    let config = node.config.current()?;
    let files = {
        let mut written = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(files) = written.as_ref() {
            return Some(files.clone());
        }
        let files = config.user_files();
        *written = Some(files.clone());
        files
    };
    if files.is_empty() {
        return Some(files);
    }
    let root = node.options.root.clone();
    let metal = node.mode() == Mode::Metal;
    let entries = files.clone();
    let results = tokio::task::spawn_blocking(move || {
        let bind: Option<crate::userfiles::Bind<'_>> =
            metal.then_some(&crate::userfiles::bind_read_only);
        crate::userfiles::write_all(&root, &entries, bind)
    })
    .await;
    match results {
        Ok(results) => {
            for (file, result) in files.iter().zip(results) {
                match result {
                    Ok(w) => tracing::info!(
                        path = file.path,
                        op = file.op.as_str(),
                        at = %w.at.display(),
                        bound = w.bound,
                        "machine file written"
                    ),
                    Err(e) => tracing::error!("{e}"),
                }
            }
        }
        Err(e) => tracing::error!("writing machine.files: {e}"),
    }
    Some(files)
}

/// Applies the defaults and the kernel parameters of the config as it is
/// now. A parameter that cannot be set is logged; the rest are set.
async fn apply_kernel_params(node: &Node) {
    let (sysctls, sysfs) = node
        .config
        .current()
        .map(|c| (c.sysctls(), c.sysfs()))
        .unwrap_or_default();
    let desired = crate::kernelparams::desired(&sysctls, &sysfs);
    let problems = tokio::task::spawn_blocking(move || {
        crate::kernelparams::KernelParams::node().apply(&desired)
    })
    .await
    .unwrap_or_else(|e| vec![format!("the kernel parameter task: {e}")]);
    for problem in problems {
        tracing::warn!("kernel parameter: {problem}");
    }
}

/// A reset's wiping, once everything else has stopped; then the power
/// action its plan asks for. A plan that cannot be carried out whole is
/// reported, and the node still goes down as asked.
async fn reset(node: &Arc<Node>) -> PowerAction {
    let Some(plan) = node.take_reset_plan() else {
        return PowerAction::Reboot;
    };
    let then = if plan.reboot {
        PowerAction::Reboot
    } else {
        PowerAction::Shutdown
    };
    let logs = Arc::clone(&node.logs);
    let metal = node.mode() == Mode::Metal;
    let work = tokio::task::spawn_blocking(move || {
        crate::reset::execute(&plan, &logs, &|line| reset_report(metal, false, line))
    });
    // Bounded: an unmount or a write stuck on a dead disk must not keep
    // the node from going down.
    match tokio::time::timeout(RESET_WITHIN, work).await {
        Ok(Ok(true)) => {}
        Ok(_) => reset_report(metal, true, "reset: not every target was wiped"),
        Err(_) => reset_report(
            metal,
            true,
            &format!(
                "reset: not done within {} s; going down regardless",
                RESET_WITHIN.as_secs()
            ),
        ),
    }
    then
}

/// The most a reset's wiping may take before the node goes down anyway
/// (fast wipes take well under a second each).
const RESET_WITHIN: Duration = Duration::from_secs(120);

/// One line of a reset's account: machined's log (an error when it is a
/// `problem`) and, on metal, the console.
fn reset_report(metal: bool, problem: bool, line: &str) {
    if problem {
        tracing::error!("{line}");
    } else {
        tracing::info!("{line}");
    }
    if metal {
        crate::boot::kmsg_log(line);
    }
}

/// Services started first on metal: what a call needs to reach machined.
/// Under emulation on one CPU every process start slows the others, so
/// networkd (the heaviest start of all, and loopback needs it not:
/// machined brings up `lo` itself) waits for apid, then starts first of
/// the rest.
const FIRST_WAVE: &[&str] = &["apid", "routerd"];

/// The others start once apid is up, or after this long at the latest.
const SECOND_WAVE_WITHIN: Duration = Duration::from_secs(3);

/// A metal node that did not boot from an installed disk and got a
/// config naming `machine.install.disk` (or a `diskSelector` that picks
/// one) installs itself there (from `machine.install.image`). Returns whether it did (and so should reboot
/// into the disk); on failure the node goes on from memory, and the
/// reason is in the log, the console and the events.
async fn install_from_maintenance(node: &Arc<Node>) -> bool {
    if node.mode() != Mode::Metal
        || crate::bootloader::booted_slot(&crate::boot::read_cmdline()).is_some()
    {
        return false;
    }
    let Some(config) = node.config.current() else {
        return false;
    };
    // The selector first, as upstream: a generated config keeps its
    // default `disk` beside a selector patched in. It picks the disk as
    // the install's first step, so that its failure is the install's.
    let target = match (config.install_disk_selector(), config.install_disk()) {
        (Some(selector), _) => crate::install::InstallDisk::Selected(selector.clone()),
        (None, Some(disk)) => crate::install::InstallDisk::Named(disk.to_owned()),
        (None, None) => return false,
    };
    let image = config.install_image().unwrap_or_default().to_owned();
    let Ok(_guard) = node.lifecycle.try_lock() else {
        return false;
    };
    let bytes = match node.config.persisted_bytes().await {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "install: reading the machine config");
            crate::boot::kmsg_log(&format!("install: reading the machine config: {e}"));
            return false;
        }
    };
    node.events.publish(
        Payload::Sequence {
            sequence: "install".into(),
            start: true,
            error: None,
        },
        "",
    );
    let settings = crate::install::FetchSettings::from_config(Some(&config));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let console = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            crate::boot::kmsg_log(&format!("install: {line}"));
        }
    });
    let result = tokio::task::spawn_blocking(move || {
        let disk = target.resolve(std::path::Path::new("/sys"), &tx)?;
        crate::install::install(&image, &disk, &bytes, &settings, &tx)
    })
    .await
    .unwrap_or_else(|e| {
        Err(crate::install::InstallError::Step {
            step: "install task",
            message: e.to_string(),
        })
    });
    let _ = console.await;
    let error = result.as_ref().err().map(ToString::to_string);
    if let Some(e) = &error {
        tracing::error!(error = %e, "install failed: going on from memory");
        crate::boot::kmsg_log(&format!("install failed: {e}"));
    }
    node.events.publish(
        Payload::Sequence {
            sequence: "install".into(),
            start: false,
            error,
        },
        "",
    );
    result.is_ok()
}

/// How long the services get to come up before the booted slot is left
/// unconfirmed (on trial, it falls back at its next boots).
const CONFIRM_WITHIN: Duration = Duration::from_secs(600);

/// Confirms the booted slot once every service is up (running, and
/// healthy where it has a health check): only a node that really works
/// makes its slot the known-good one.
async fn confirm_when_up(node: &Node, supervisor: &Supervisor, slot: crate::bootloader::Slot) {
    use crate::bootloader::Confirmation;
    let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
    while !supervisor
        .list()
        .iter()
        .all(crate::supervisor::ServiceStatus::is_up)
    {
        if tokio::time::Instant::now() > deadline {
            let message = format!(
                "boot slot {slot} not confirmed: the services did not all come up within {CONFIRM_WITHIN:?}"
            );
            tracing::warn!("{message}");
            crate::boot::kmsg_log(&message);
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Not while an upgrade or rollback rewrites the entries.
    let _guard = node.lifecycle.lock().await;
    let confirmed = tokio::task::spawn_blocking(move || {
        crate::bootloader::with_esp(|esp| crate::bootloader::confirm(esp, slot))
    })
    .await;
    let version = crate::server::version_tag();
    let (message, outcome, failed) = match confirmed {
        Ok(Ok(Confirmation::Unchanged)) => (None, None, false),
        Ok(Ok(Confirmation::Confirmed(s))) => (
            Some(format!("boot slot {s} confirmed")),
            Some(format!(
                "succeeded: slot {s} ({version}) came up and is the default"
            )),
            false,
        ),
        Ok(Ok(Confirmation::RolledBack { failed, running })) => {
            let text = format!(
                "the upgrade to slot {failed} did not come up; running slot {running} ({version}) again"
            );
            (Some(text.clone()), Some(format!("failed: {text}")), true)
        }
        Ok(Err(e)) => (
            Some(format!("confirming boot slot {slot}: {e}")),
            None,
            false,
        ),
        Err(e) => (
            Some(format!("confirming boot slot {slot}: {e}")),
            None,
            false,
        ),
    };
    if let Some(message) = &message {
        tracing::info!("{message}");
        crate::boot::kmsg_log(message);
    }
    if let Some(outcome) = outcome {
        // What happened survives reboots in META; the event tells whoever
        // watches now (talosctl events, talosctl upgrade --wait).
        let record = outcome.clone();
        let saved = tokio::task::spawn_blocking(move || {
            crate::install::update_meta(|adv| {
                adv.delete(crate::install::TAG_UPGRADE);
                adv.set(crate::install::TAG_UPGRADE_OUTCOME, record.into_bytes())
            })
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "recording the upgrade outcome in META");
        }
        node.events.publish(
            Payload::Sequence {
                sequence: "upgrade".into(),
                start: false,
                error: failed.then(|| outcome.clone()),
            },
            "",
        );
    }
}

/// Serves the machine API on `listener` until `shutdown` resolves.
pub async fn serve_api(
    node: Arc<Node>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let api = MachineServiceServer::new(MachineApi::new(Arc::clone(&node)))
        .max_decoding_message_size(api::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(api::MAX_MESSAGE_SIZE);
    let lifecycle = api::machine::lifecycle_service_server::LifecycleServiceServer::new(
        crate::server::LifecycleApi::new(Arc::clone(&node)),
    );
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(api)
        .add_service(lifecycle)
        .add_service(
            api::cluster::cluster_service_server::ClusterServiceServer::new(
                crate::health::ClusterApi::new(Arc::clone(&node)),
            ),
        )
        .add_service(
            api::cosi::resource::state_server::StateServer::new(crate::cosi::StateApi::new(
                Arc::clone(&node),
            ))
            .max_encoding_message_size(api::MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(machinery::uds::incoming(listener), shutdown)
        .await
    {
        tracing::error!(error = %e, "machine API server failed");
    }
}

/// The power actions signals ask for, watched for the life of the
/// process: a signal that arrives while services start, or between two
/// runs (the restart from a config applied in maintenance mode), is not
/// lost.
#[derive(Debug, Clone)]
pub struct Signals {
    asked: tokio::sync::watch::Receiver<Option<PowerAction>>,
}

impl Signals {
    /// Starts listening, on the current runtime: in container mode SIGTERM
    /// and SIGINT shut down; as PID 1 on metal, Ctrl-Alt-Del (SIGINT)
    /// reboots, SIGTERM is ignored, and the ACPI power button shuts down.
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    pub fn listen(mode: Mode) -> Result<Signals, RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
        let (tx, asked) = tokio::sync::watch::channel(None);
        let tx = Arc::new(tx);
        if mode == Mode::Metal && rustix::process::getpid().is_init() {
            let tx = Arc::clone(&tx);
            let watching = crate::powerbutton::watch(move || {
                tracing::info!("the power button was pressed: shutting down");
                ask(&tx, PowerAction::Shutdown);
            });
            if let Err(e) = watching {
                tracing::warn!(error = %e, "the power button is not watched");
            }
        }
        // The signal listener: lives as long as the runtime.
        tokio::spawn(async move {
            loop {
                let action = match mode {
                    Mode::Container => tokio::select! {
                        _ = term.recv() => PowerAction::Shutdown,
                        _ = int.recv() => PowerAction::Shutdown,
                    },
                    Mode::Metal => {
                        int.recv().await;
                        PowerAction::Reboot
                    }
                };
                tracing::info!(?action, "asked for by a signal");
                ask(&tx, action);
            }
        });
        Ok(Signals { asked })
    }

    /// The action a signal asked for, if one did.
    #[must_use]
    pub fn pending(&self) -> Option<PowerAction> {
        *self.asked.borrow()
    }

    /// Resolves with the action once a signal has asked for one.
    async fn asked(&self) -> PowerAction {
        let mut asked = self.asked.clone();
        loop {
            if let Some(action) = *asked.borrow_and_update() {
                return action;
            }
            if asked.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Asks for `action`, unless one was asked for already: the first is the
/// one carried out.
fn ask(tx: &tokio::sync::watch::Sender<Option<PowerAction>>, action: PowerAction) {
    tx.send_if_modified(|asked| asked.is_none().then(|| *asked = Some(action)).is_some());
}

/// Waits until a power action is asked for, by the API or a signal. A
/// signal's goes through the node's lifecycle as an API call's does
/// (refusing other actions, MachineStatus), so both end the same way.
async fn wait_for_stop(node: &Node, signals: &Signals) -> (PowerAction, String) {
    tokio::select! {
        req = node.power_requested() => return req,
        action = signals.asked() => {
            node.request_power(action);
        }
    }
    node.power_requested().await
}
