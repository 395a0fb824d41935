//! The service supervisor.
//!
//! A service is a process with an id, dependencies (services that must be
//! "up" first), conditions (named readiness signals), an optional health
//! check, a restart policy with exponential backoff, and a grace period
//! between SIGTERM and SIGKILL. Each service is driven by one owned task that
//! publishes its [`ServiceStatus`] on a watch channel; dependents wait on
//! those channels, never by polling. States, their names and the last 64
//! events per service follow upstream Talos.
//!
//! Processes are started through the [`Reaper`] in a process group of their
//! own, so stopping a service signals everything it started, and its
//! orphans are reaped like any other. stdout and stderr go, through one pipe,
//! into the service's [`LogBuffer`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{join_all, select_all};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::logbuf::{LogBuffer, LogRegistry};
use crate::reaper::{ExitStatus, Reaper};

/// Events kept per service, as upstream.
pub const EVENTS_KEPT: usize = 64;

/// What to do when the process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    Forever,
    /// Never restart.
    Once,
    /// Restart until it exits with status 0.
    UntilSuccess,
}

/// Delay before a restart: `initial`, doubling per consecutive failure up to
/// `max`. A run that lasted at least `max` resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1-based).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// How a service shows it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A unix socket accepts a connection.
    UnixSocket(PathBuf),
    /// A TCP address accepts a connection.
    Tcp(SocketAddr),
}

/// A health check and its timing (upstream defaults: 1 s, 5 s, 500 ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// What to check.
    pub check: HealthCheck,
    /// Delay after start before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// Time a single check may take.
    pub timeout: Duration,
    /// Time between checks until the first success.
    pub startup_retry: Duration,
    /// Where the service may report that it is ready (systemd's
    /// `NOTIFY_SOCKET` protocol, `READY=1`): a datagram socket machined
    /// binds there before the start. A report makes the check run at once,
    /// so the startup checks can be sparse: polling a socket every 25 ms
    /// costs the CPU a starting node needs for the services themselves.
    pub notify: Option<PathBuf>,
}

impl HealthSpec {
    /// A check with upstream's default timing.
    #[must_use]
    pub fn new(check: HealthCheck) -> Self {
        HealthSpec {
            check,
            initial_delay: Duration::from_secs(1),
            period: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            startup_retry: STARTUP_RETRY,
            notify: None,
        }
    }
}

/// A named readiness signal a service waits for (e.g. "time sync").
#[derive(Debug, Clone)]
pub struct Condition {
    /// Shown while waiting.
    pub description: String,
    /// `true` once met.
    pub ready: watch::Receiver<bool>,
}

/// Everything the supervisor needs to run one service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service id, also its log id.
    pub id: String,
    /// The program to run.
    pub program: PathBuf,
    /// The name it is started as (`argv[0]`), if not `program`: the
    /// daemons machined's own executable carries are chosen by it.
    pub arg0: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Services that must be up first.
    pub depends_on: Vec<String>,
    /// Conditions that must be met first.
    pub conditions: Vec<Condition>,
    /// Health check, if any.
    pub health: Option<HealthSpec>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Restart backoff.
    pub backoff: Backoff,
    /// Time between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Directories created (and stale sockets in them removed) before start.
    pub socket_dirs: Vec<PathBuf>,
    /// Whether ServiceStop and ServiceRestart through the API are allowed
    /// (not for the services the API itself travels through).
    pub api_stoppable: bool,
    /// The control group the service runs in, made as it starts and
    /// killed whole when it ends (metal; see [`crate::cgroups`]).
    pub cgroup: Option<PathBuf>,
}

impl ServiceSpec {
    /// A service running `program args...`, restarted forever, no
    /// dependencies, 10 s grace.
    pub fn new(
        id: impl Into<String>,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ServiceSpec {
            id: id.into(),
            program: program.into(),
            arg0: None,
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            depends_on: Vec::new(),
            conditions: Vec::new(),
            health: None,
            restart: RestartPolicy::Forever,
            backoff: Backoff::default(),
            stop_grace: Duration::from_secs(10),
            socket_dirs: Vec::new(),
            api_stoppable: true,
            cgroup: None,
        }
    }

    /// Starts the program as `name` (its `argv[0]`).
    #[must_use]
    pub fn arg0(mut self, name: impl Into<String>) -> Self {
        self.arg0 = Some(name.into());
        self
    }

    /// Adds dependencies.
    #[must_use]
    pub fn depends_on(mut self, ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.depends_on.extend(ids.into_iter().map(Into::into));
        self
    }

    /// Sets the health check.
    #[must_use]
    pub fn health(mut self, health: HealthSpec) -> Self {
        self.health = Some(health);
        self
    }

    /// Sets the restart policy.
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Sets the backoff.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }

    /// Sets the SIGTERM → SIGKILL grace period.
    #[must_use]
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Adds a condition.
    #[must_use]
    pub fn condition(
        mut self,
        description: impl Into<String>,
        ready: watch::Receiver<bool>,
    ) -> Self {
        self.conditions.push(Condition {
            description: description.into(),
            ready,
        });
        self
    }

    /// Runs the service in the control group `dir`.
    #[must_use]
    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    /// Adds a directory made (and cleared of stale sockets) before start.
    #[must_use]
    pub fn socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dirs.push(dir.into());
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Upstream's service states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceState {
    /// Registered, not started.
    Initialized,
    /// Running its pre-start steps.
    Preparing,
    /// Waiting for dependencies or conditions.
    Waiting,
    /// The process runs.
    Running,
    /// Being stopped.
    Stopping,
    /// Ended and will not be restarted (or stopped on request).
    Finished,
    /// Ended with an error.
    Failed,
    /// Not run on this node.
    Skipped,
    /// The process is being started.
    Starting,
}

impl ServiceState {
    /// Upstream's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceState::Initialized => "Initialized",
            ServiceState::Preparing => "Preparing",
            ServiceState::Waiting => "Waiting",
            ServiceState::Running => "Running",
            ServiceState::Stopping => "Stopping",
            ServiceState::Finished => "Finished",
            ServiceState::Failed => "Failed",
            ServiceState::Skipped => "Skipped",
            ServiceState::Starting => "Starting",
        }
    }

    /// Upstream's enum number (machine.ServiceStateEvent.Action).
    #[must_use]
    pub const fn number(self) -> i32 {
        match self {
            ServiceState::Initialized => 0,
            ServiceState::Preparing => 1,
            ServiceState::Waiting => 2,
            ServiceState::Running => 3,
            ServiceState::Stopping => 4,
            ServiceState::Finished => 5,
            ServiceState::Failed => 6,
            ServiceState::Skipped => 7,
            ServiceState::Starting => 8,
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a service's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEvent {
    /// What happened.
    pub msg: String,
    /// The state it led to.
    pub state: ServiceState,
    /// When.
    pub ts: SystemTime,
}

/// Health as last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// No check has run (or there is none).
    pub unknown: bool,
    /// The last check passed.
    pub healthy: bool,
    /// The last check's message.
    pub last_message: String,
    /// When health last changed.
    pub last_change: Option<SystemTime>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            unknown: true,
            healthy: false,
            last_message: String::new(),
            last_change: None,
        }
    }
}

/// A service as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Service id.
    pub id: String,
    /// Current state.
    pub state: ServiceState,
    /// The last [`EVENTS_KEPT`] events, oldest first.
    pub events: VecDeque<ServiceEvent>,
    /// Health.
    pub health: Health,
    /// Whether the service has a health check at all.
    pub has_health_check: bool,
    /// pid of the running process.
    pub pid: Option<u32>,
    /// How many times the process was started.
    pub starts: u32,
}

impl ServiceStatus {
    /// "Up": running, and healthy if it has a health check.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.state == ServiceState::Running && (!self.has_health_check || self.health.healthy)
    }
}

/// Told of every state and health change (feeds the Events API).
pub type Observer = Arc<dyn Fn(&ServiceStatus, &str) + Send + Sync>;

/// What can go wrong when defining or commanding services.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SupervisorError {
    /// Two services share an id.
    #[error("service {id:?} is defined twice")]
    DuplicateService {
        /// The id.
        id: String,
    },
    /// A dependency names no service.
    #[error("service {service:?} depends on {dependency:?}, which is not a service")]
    UnknownDependency {
        /// The dependent.
        service: String,
        /// The missing dependency.
        dependency: String,
    },
    /// Dependencies form a cycle.
    #[error("services {ids:?} depend on each other in a cycle")]
    DependencyCycle {
        /// The services in or behind the cycle.
        ids: Vec<String>,
    },
    /// No service has this id.
    #[error("service {id:?} not found")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The action is refused for this service.
    #[error("service {id:?} doesn't support {action} via API")]
    NotAllowed {
        /// The service.
        id: String,
        /// start, stop or restart.
        action: &'static str,
    },
    /// The service's task has ended (the supervisor is shutting down).
    #[error("service {id:?} is shutting down")]
    ShuttingDown {
        /// The service.
        id: String,
    },
}

#[derive(Debug)]
enum Cmd {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Handle {
    spec: Arc<ServiceSpec>,
    status: watch::Receiver<ServiceStatus>,
    cmd: mpsc::Sender<Cmd>,
    task: JoinHandle<()>,
}

/// The supervisor of a node's services.
pub struct Supervisor {
    services: BTreeMap<String, Handle>,
    /// Dependency depth per service (0 = no dependencies).
    depth: HashMap<String, usize>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Supervisor {
    /// Validates the services and starts one task per service; nothing runs
    /// until [`Supervisor::start_all`] or [`Supervisor::start`].
    ///
    /// # Errors
    /// Duplicate ids, unknown dependencies, dependency cycles.
    pub fn new(
        specs: Vec<ServiceSpec>,
        logs: &Arc<LogRegistry>,
        observer: Option<Observer>,
    ) -> Result<Supervisor, SupervisorError> {
        let depth = dependency_depths(&specs)?;
        let mut statuses: HashMap<String, watch::Receiver<ServiceStatus>> = HashMap::new();
        let mut senders = Vec::new();
        for spec in &specs {
            let (tx, rx) = watch::channel(ServiceStatus {
                id: spec.id.clone(),
                state: ServiceState::Initialized,
                events: VecDeque::new(),
                health: Health::default(),
                has_health_check: spec.health.is_some(),
                pid: None,
                starts: 0,
            });
            statuses.insert(spec.id.clone(), rx);
            senders.push(tx);
        }
        let mut services = BTreeMap::new();
        for (spec, status_tx) in specs.into_iter().zip(senders) {
            let spec = Arc::new(spec);
            let deps = spec
                .depends_on
                .iter()
                .map(|d| (d.clone(), statuses[d].clone()))
                .collect();
            let (cmd_tx, cmd_rx) = mpsc::channel(8);
            let runner = Runner {
                spec: Arc::clone(&spec),
                status: status_tx,
                log: logs.get_or_create(&spec.id),
                deps,
                cmd: cmd_rx,
                observer: observer.clone(),
                failures: 0,
            };
            let span = tracing::info_span!("service", id = %spec.id);
            let task = tokio::spawn(runner.run().instrument(span));
            services.insert(
                spec.id.clone(),
                Handle {
                    status: statuses[&spec.id].clone(),
                    spec,
                    cmd: cmd_tx,
                    task,
                },
            );
        }
        Ok(Supervisor { services, depth })
    }

    /// Asks every service to start (each waits for its dependencies).
    pub async fn start_all(&self) {
        for id in self.services.keys() {
            // Fails only while shutting down, when starting is moot.
            let _ = self.command(id, Cmd::Start).await;
        }
    }

    /// The status of every service, sorted by id.
    #[must_use]
    pub fn list(&self) -> Vec<ServiceStatus> {
        self.services
            .values()
            .map(|h| h.status.borrow().clone())
            .collect()
    }

    /// One service's status.
    #[must_use]
    pub fn status(&self, id: &str) -> Option<ServiceStatus> {
        self.services.get(id).map(|h| h.status.borrow().clone())
    }

    /// A watch on one service's status.
    #[must_use]
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<ServiceStatus>> {
        self.services.get(id).map(|h| h.status.clone())
    }

    /// Starts a service (returns once requested).
    ///
    /// # Errors
    /// Unknown service, or shutting down.
    pub async fn start(&self, id: &str) -> Result<(), SupervisorError> {
        self.command(id, Cmd::Start).await
    }

    /// Stops a service: returns once its process has ended.
    ///
    /// # Errors
    /// Unknown service, refused for it, or shutting down.
    pub async fn stop(&self, id: &str) -> Result<(), SupervisorError> {
        let handle = self.handle(id)?;
        if !handle.spec.api_stoppable {
            return Err(SupervisorError::NotAllowed {
                id: id.to_owned(),
                action: "stop",
            });
        }
        self.command(id, Cmd::Stop).await
    }

    /// Restarts a service: returns once the old process has ended and a new
    /// start is under way.
    ///
    /// # Errors
    /// Unknown service, or shutting down.
    pub async fn restart(&self, id: &str) -> Result<(), SupervisorError> {
        // The reply to this very call travels through those services.
        if !self.handle(id)?.spec.api_stoppable {
            return Err(SupervisorError::NotAllowed {
                id: id.to_owned(),
                action: "restart",
            });
        }
        self.command(id, Cmd::Restart).await
    }

    /// Stops every service in reverse dependency order: dependents first,
    /// services of one level concurrently. Then ends the service tasks.
    pub async fn stop_all(&self) {
        let max_depth = self.depth.values().copied().max().unwrap_or(0);
        for level in (0..=max_depth).rev() {
            let ids: Vec<&String> = self
                .services
                .keys()
                .filter(|id| self.depth[*id] == level)
                .collect();
            join_all(ids.into_iter().map(|id| self.command(id, Cmd::Stop))).await;
        }
    }

    /// Ends every service task (after [`Supervisor::stop_all`]).
    pub fn shutdown(&self) {
        for handle in self.services.values() {
            handle.task.abort();
        }
    }

    fn handle(&self, id: &str) -> Result<&Handle, SupervisorError> {
        self.services
            .get(id)
            .ok_or_else(|| SupervisorError::NotFound { id: id.to_owned() })
    }

    async fn command(
        &self,
        id: &str,
        make: fn(oneshot::Sender<()>) -> Cmd,
    ) -> Result<(), SupervisorError> {
        let handle = self.handle(id)?;
        let (tx, rx) = oneshot::channel();
        let gone = || SupervisorError::ShuttingDown { id: id.to_owned() };
        handle.cmd.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// Depth of every service in the dependency graph, checking it on the way.
fn dependency_depths(specs: &[ServiceSpec]) -> Result<HashMap<String, usize>, SupervisorError> {
    let mut by_id: HashMap<&str, &ServiceSpec> = HashMap::new();
    for spec in specs {
        if by_id.insert(&spec.id, spec).is_some() {
            return Err(SupervisorError::DuplicateService {
                id: spec.id.clone(),
            });
        }
    }
    for spec in specs {
        for dep in &spec.depends_on {
            if !by_id.contains_key(dep.as_str()) {
                return Err(SupervisorError::UnknownDependency {
                    service: spec.id.clone(),
                    dependency: dep.clone(),
                });
            }
        }
    }
    // Kahn's algorithm: a service's depth is one more than its deepest dependency.
    let mut depth: HashMap<String, usize> = HashMap::new();
    let mut remaining: Vec<&ServiceSpec> = specs.iter().collect();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|spec| {
            let deps: Option<Vec<usize>> = spec
                .depends_on
                .iter()
                .map(|d| depth.get(d).copied())
                .collect();
            match deps {
                Some(d) => {
                    depth.insert(spec.id.clone(), d.into_iter().max().map_or(0, |m| m + 1));
                    false
                }
                None => true,
            }
        });
        if remaining.len() == before {
            let mut ids: Vec<String> = remaining.iter().map(|s| s.id.clone()).collect();
            ids.sort();
            return Err(SupervisorError::DependencyCycle { ids });
        }
    }
    Ok(depth)
}

/// How one run of the process ended.
enum RunEnd {
    /// It exited by itself.
    Exited(ExitStatus, Duration),
    /// It was stopped on request; the ack is sent once done.
    Stopped(oneshot::Sender<()>),
    /// It was stopped to be started again.
    Restart(oneshot::Sender<()>),
    /// It could not be started.
    SpawnFailed(String),
}

/// The task that owns one service.
struct Runner {
    spec: Arc<ServiceSpec>,
    status: watch::Sender<ServiceStatus>,
    log: Arc<LogBuffer>,
    deps: Vec<(String, watch::Receiver<ServiceStatus>)>,
    cmd: mpsc::Receiver<Cmd>,
    observer: Option<Observer>,
    failures: u32,
}

impl Runner {
    fn set(&self, state: ServiceState, msg: impl Into<String>) {
        let msg = msg.into();
        self.status.send_modify(|s| {
            s.state = state;
            if s.events.len() == EVENTS_KEPT {
                s.events.pop_front();
            }
            s.events.push_back(ServiceEvent {
                msg: msg.clone(),
                state,
                ts: SystemTime::now(),
            });
            if state != ServiceState::Running {
                s.pid = None;
                s.health = Health::default();
            }
        });
        tracing::info!(state = %state, "{msg}");
        if let Some(observer) = &self.observer {
            observer(&self.status.borrow(), &msg);
        }
    }

    async fn run(mut self) {
        let mut wanted = false;
        loop {
            if !wanted {
                match self.cmd.recv().await {
                    None => return,
                    Some(Cmd::Start(ack)) | Some(Cmd::Restart(ack)) => {
                        wanted = true;
                        self.failures = 0;
                        let _ = ack.send(());
                    }
                    // Already stopped.
                    Some(Cmd::Stop(ack)) => {
                        let _ = ack.send(());
                    }
                }
                continue;
            }

            match self.wait_until_ready().await {
                Ok(()) => {}
                Err(Interrupted::Stop(ack)) => {
                    wanted = false;
                    self.set(ServiceState::Finished, "Service stopped while waiting");
                    let _ = ack.send(());
                    continue;
                }
                Err(Interrupted::Closed) => return,
            }

            self.set(ServiceState::Preparing, "Running pre state");
            if let Err(e) = self.prepare() {
                self.set(ServiceState::Failed, format!("Failed to prepare: {e}"));
                if !self.backoff_or_stop(&mut wanted).await {
                    return;
                }
                continue;
            }

            match self.run_once().await {
                RunEnd::Stopped(ack) => {
                    wanted = false;
                    self.set(ServiceState::Finished, "Service stopped");
                    let _ = ack.send(());
                }
                RunEnd::Restart(ack) => {
                    self.failures = 0;
                    self.set(ServiceState::Finished, "Service stopped for restart");
                    let _ = ack.send(());
                }
                RunEnd::SpawnFailed(e) => {
                    let program = self.spec.program.display();
                    let what = match &self.spec.arg0 {
                        Some(name) => format!("{name} ({program})"),
                        None => program.to_string(),
                    };
                    self.set(ServiceState::Failed, format!("Failed to start {what}: {e}"));
                    if !self.backoff_or_stop(&mut wanted).await {
                        return;
                    }
                }
                RunEnd::Exited(status, ran_for) => {
                    if ran_for >= self.spec.backoff.max {
                        self.failures = 0;
                    }
                    let done = match self.spec.restart {
                        RestartPolicy::Once => true,
                        RestartPolicy::UntilSuccess => status.success(),
                        RestartPolicy::Forever => false,
                    };
                    let state = if status.success() {
                        ServiceState::Finished
                    } else {
                        ServiceState::Failed
                    };
                    if done {
                        wanted = false;
                        let msg = if status.success() {
                            "Service finished successfully".to_owned()
                        } else {
                            format!("Process exited with {status}")
                        };
                        self.set(state, msg);
                    } else {
                        self.set(state, format!("Process exited with {status}"));
                        if !self.backoff_or_stop(&mut wanted).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Waits out the restart backoff. A Stop during it stops the service, a
    /// Start or Restart cuts it short. Returns false when the supervisor is gone.
    async fn backoff_or_stop(&mut self, wanted: &mut bool) -> bool {
        self.failures += 1;
        let delay = self.spec.backoff.delay(self.failures);
        self.set(ServiceState::Waiting, format!("Restarting in {delay:?}"));
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            cmd = self.cmd.recv() => match cmd {
                None => false,
                Some(Cmd::Stop(ack)) => {
                    *wanted = false;
                    self.set(ServiceState::Finished, "Service stopped");
                    let _ = ack.send(());
                    true
                }
                Some(Cmd::Start(ack)) | Some(Cmd::Restart(ack)) => {
                    self.failures = 0;
                    let _ = ack.send(());
                    true
                }
            },
        }
    }

    async fn wait_until_ready(&mut self) -> Result<(), Interrupted> {
        let mut conditions: Vec<Condition> = self.spec.conditions.clone();
        let mut last_msg = String::new();
        loop {
            let mut unmet: Vec<String> = Vec::new();
            for (id, rx) in &mut self.deps {
                if !rx.borrow_and_update().is_up() {
                    unmet.push(format!("service {id:?} to be \"up\""));
                }
            }
            for c in &mut conditions {
                if !*c.ready.borrow_and_update() {
                    unmet.push(c.description.clone());
                }
            }
            if unmet.is_empty() {
                return Ok(());
            }
            let msg = format!("Waiting for {}", unmet.join(", "));
            if msg != last_msg {
                self.set(ServiceState::Waiting, msg.clone());
                last_msg = msg;
            }
            let mut changes: Vec<std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>> =
                Vec::new();
            for (_, rx) in &mut self.deps {
                changes.push(Box::pin(async move { rx.changed().await.is_ok() }));
            }
            for c in &mut conditions {
                changes.push(Box::pin(async move { c.ready.changed().await.is_ok() }));
            }
            tokio::select! {
                (alive, _, _) = select_all(changes) => {
                    if !alive {
                        // A dependency's task or a condition's owner is gone:
                        // it will never change again.
                        return Err(Interrupted::Closed);
                    }
                }
                cmd = self.cmd.recv() => match cmd {
                    None => return Err(Interrupted::Closed),
                    Some(Cmd::Stop(ack)) => return Err(Interrupted::Stop(ack)),
                    Some(Cmd::Start(ack)) | Some(Cmd::Restart(ack)) => { let _ = ack.send(()); }
                },
            }
        }
    }

    /// Creates socket directories and removes stale sockets, so the daemon
    /// can bind at once and nobody connects to a dead socket.
    fn prepare(&self) -> std::io::Result<()> {
        for dir in &self.spec.socket_dirs {
            // The owner's only: a caller on a daemon's socket is trusted.
            machinery::daemon::owner_only_dir(dir)?;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_type()?.is_socket() {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    async fn run_once(&mut self) -> RunEnd {
        self.set(ServiceState::Starting, "Starting process");
        // Bound before the start, so an early report is not lost. Without
        // it the service still becomes healthy, by the checks alone.
        let ready = self
            .spec
            .health
            .as_ref()
            .and_then(|h| h.notify.clone())
            .and_then(|path| match machinery::daemon::bind_unix_datagram(&path) {
                Ok(socket) => Some((path, socket)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "readiness socket");
                    None
                }
            });
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return RunEnd::SpawnFailed(format!("creating the log pipe: {e}")),
        };
        let spawned = {
            let stderr = match writer.try_clone() {
                Ok(w) => w,
                Err(e) => return RunEnd::SpawnFailed(format!("creating the log pipe: {e}")),
            };
            let mut cmd = Command::new(&self.spec.program);
            if let Some(name) = &self.spec.arg0 {
                cmd.arg0(name);
            }
            // The spec's (machine.env's) first: machined's own variable
            // below wins over one of the same name.
            cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
            match &ready {
                Some((path, _)) => cmd.env("NOTIFY_SOCKET", path),
                // Not one inherited from whoever started machined.
                None => cmd.env_remove("NOTIFY_SOCKET"),
            };
            cmd.args(&self.spec.args)
                .stdin(Stdio::null())
                .stdout(Stdio::from(writer))
                .stderr(Stdio::from(stderr))
                .process_group(0);
            if let Some(dir) = &self.spec.cgroup
                && let Err(e) = crate::cgroups::join_at_exec(&mut cmd, dir)
            {
                tracing::warn!(error = %e, "control group; the service runs in machined's");
            }
            // `cmd` (and with it our copies of the pipe's write end) is
            // dropped at the end of this block, so the pump sees EOF once the
            // service and everything it started are gone.
            Reaper::global().spawn(&mut cmd)
        };
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => return RunEnd::SpawnFailed(e.to_string()),
        };
        let started = Instant::now();
        let pid = spawned.pid;
        let mut exit = spawned.exit;
        drop(spawned.child);
        let pump =
            tokio::spawn(pump_logs(OwnedFd::from(reader), Arc::clone(&self.log)).in_current_span());
        self.status.send_modify(|s| {
            s.pid = Some(pid);
            s.starts += 1;
        });
        self.set(
            ServiceState::Running,
            format!("Started process (PID {pid})"),
        );
        if let Some(pid_) = self.status.borrow().pid {
            debug_assert_eq!(pid_, pid);
        }
        let health = self.spec.health.clone().map(|mut h| {
            if h.notify.is_some() && ready.is_none() {
                // No report can come: poll as often as without one.
                h.startup_retry = h.startup_retry.min(STARTUP_RETRY);
            }
            let status = self.status.clone();
            let observer = self.observer.clone();
            let ready = ready.map(|(_, socket)| socket);
            tokio::spawn(health_loop(h, status, observer, ready).in_current_span())
        });

        let end = loop {
            tokio::select! {
                status = &mut exit => {
                    let status = status.unwrap_or(ExitStatus::Exited(-1));
                    break RunEnd::Exited(status, started.elapsed());
                }
                cmd = self.cmd.recv() => match cmd {
                    Some(Cmd::Start(ack)) => { let _ = ack.send(()); }
                    Some(Cmd::Stop(ack)) => {
                        self.terminate(pid, &mut exit).await;
                        break RunEnd::Stopped(ack);
                    }
                    Some(Cmd::Restart(ack)) => {
                        self.terminate(pid, &mut exit).await;
                        break RunEnd::Restart(ack);
                    }
                    None => {
                        self.terminate(pid, &mut exit).await;
                        break RunEnd::Stopped(oneshot::channel().0);
                    }
                },
            }
        };
        if let Some(h) = health {
            h.abort();
        }
        // Whatever the service left behind goes with it, even processes
        // that left its process group.
        if let Some(dir) = &self.spec.cgroup
            && let Err(e) = crate::cgroups::kill(dir)
        {
            tracing::warn!(error = %e, "killing what is left in the control group");
        }
        // The pump ends by itself at EOF; orphans that keep the pipe open keep
        // it alive, which is right: their output is still the service's.
        drop(pump);
        end
    }

    /// SIGTERM to the process group, SIGKILL after the grace period.
    async fn terminate(&self, pid: u32, exit: &mut oneshot::Receiver<ExitStatus>) {
        self.set(ServiceState::Stopping, "Stopping");
        signal_group(pid, Signal::TERM);
        if tokio::time::timeout(self.spec.stop_grace, &mut *exit)
            .await
            .is_err()
        {
            tracing::warn!(pid, grace = ?self.spec.stop_grace, "did not stop on SIGTERM; sending SIGKILL");
            signal_group(pid, Signal::KILL);
            // A process in uninterruptible sleep (a dead disk) outlives even
            // SIGKILL: the node must still go down.
            if tokio::time::timeout(KILL_WAIT, &mut *exit).await.is_err() {
                tracing::error!(pid, wait = ?KILL_WAIT, "did not die on SIGKILL (stuck in the kernel?); leaving it");
            }
        }
        // Whatever else is left in the group (children that ignored TERM).
        signal_group(pid, Signal::KILL);
    }
}

/// How long a service may take to die after SIGKILL before it is given up
/// on.
const KILL_WAIT: Duration = Duration::from_secs(5);

enum Interrupted {
    Stop(oneshot::Sender<()>),
    Closed,
}

fn signal_group(pid: u32, signal: Signal) {
    let Some(pgid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    // ESRCH: the group is already gone, which is what we want.
    let _ = kill_process_group(pgid, signal);
}

async fn pump_logs(reader: OwnedFd, log: Arc<LogBuffer>) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "log pipe");
            return;
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.append(&buf[..n]),
        }
    }
}

/// How often a health check is retried before its first success, by
/// default.
const STARTUP_RETRY: Duration = Duration::from_millis(25);

async fn health_loop(
    spec: HealthSpec,
    status: watch::Sender<ServiceStatus>,
    observer: Option<Observer>,
    ready: Option<tokio::net::UnixDatagram>,
) {
    tokio::time::sleep(spec.initial_delay).await;
    // Until the first success the check is retried every `startup_retry`,
    // and at once when the service reports it is ready: dependents wait
    // for "up", so a service that starts listening just after a check must
    // not cost them a whole period.
    let mut starting = true;
    loop {
        let result = tokio::time::timeout(spec.timeout, check(&spec.check)).await;
        let (healthy, message) = match result {
            Ok(Ok(())) => (true, "Health check successful".to_owned()),
            Ok(Err(e)) => (false, format!("Health check failed: {e}")),
            Err(_) => (
                false,
                format!("Health check failed: timed out after {:?}", spec.timeout),
            ),
        };
        let mut changed = false;
        status.send_if_modified(|s| {
            if s.state != ServiceState::Running {
                return false;
            }
            changed = s.health.unknown || s.health.healthy != healthy;
            if changed {
                s.health = Health {
                    unknown: false,
                    healthy,
                    last_message: message.clone(),
                    last_change: Some(SystemTime::now()),
                };
                if s.events.len() == EVENTS_KEPT {
                    s.events.pop_front();
                }
                s.events.push_back(ServiceEvent {
                    msg: message.clone(),
                    state: s.state,
                    ts: SystemTime::now(),
                });
            } else {
                s.health.last_message.clone_from(&message);
            }
            changed
        });
        if changed {
            tracing::info!(healthy, "{message}");
            if let Some(observer) = &observer {
                observer(&status.borrow(), &message);
            }
        }
        starting &= !healthy;
        if !starting {
            tokio::time::sleep(spec.period).await;
            continue;
        }
        let retry = tokio::time::sleep(spec.startup_retry.min(spec.period));
        match &ready {
            Some(socket) => {
                let mut buf = [0u8; 256];
                tokio::pin!(retry);
                tokio::select! {
                    () = &mut retry => {}
                    // Any datagram: READY=1 or not, checking costs little.
                    // A socket that fails leaves the timer.
                    received = socket.recv(&mut buf) => if received.is_err() {
                        retry.await;
                    },
                }
            }
            None => retry.await,
        }
    }
}

async fn check(check: &HealthCheck) -> std::io::Result<()> {
    match check {
        HealthCheck::UnixSocket(path) => tokio::net::UnixStream::connect(path).await.map(drop),
        HealthCheck::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.map(drop),
    }
}

use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::process::CommandExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn graph_errors_are_named() {
        let s = |id: &str, deps: &[&str]| {
            ServiceSpec::new(id, "true", Vec::<String>::new()).depends_on(deps.iter().copied())
        };
        assert_eq!(
            dependency_depths(&[s("a", &["zz"])]),
            Err(SupervisorError::UnknownDependency {
                service: "a".into(),
                dependency: "zz".into()
            })
        );
        assert_eq!(
            dependency_depths(&[s("a", &[]), s("a", &[])]),
            Err(SupervisorError::DuplicateService { id: "a".into() })
        );
        assert_eq!(
            dependency_depths(&[s("a", &["b"]), s("b", &["c"]), s("c", &["a"]), s("d", &[])]),
            Err(SupervisorError::DependencyCycle {
                ids: vec!["a".into(), "b".into(), "c".into()]
            })
        );
        let d = dependency_depths(&[
            s("api", &["router", "net"]),
            s("router", &["net"]),
            s("net", &[]),
        ])
        .expect("dag");
        assert_eq!((d["net"], d["router"], d["api"]), (0, 1, 2));
    }
}
