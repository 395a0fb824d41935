//! `cluster.ClusterService/HealthCheck`, what `talosctl health` asks: the
//! node the call reaches checks the cluster's nodes and streams its
//! progress, as upstream's server does (`waiting for <check>: ...`, then
//! each new error, then `OK`).
//!
//! The checks are upstream's that need neither etcd nor Kubernetes, in
//! upstream's order and words:
//!
//! 1. `apid to be ready`: every node answers Version through its apid;
//! 2. `all nodes memory sizes`: every node not in a container has at
//!    least [`MINIMUM_MEMORY_MIB`] of `MemTotal`;
//! 3. `all nodes disk sizes`: every node not in a container has an
//!    EPHEMERAL volume of at least the install layout's minimum;
//! 4. `all nodes to finish boot sequence`: every node's MachineStatus is
//!    at the `running` stage and ready.
//!
//! A failing check is tried again 5 s after each try until it passes,
//! once more at the request's `wait_timeout`, and then the whole check
//! gives up (DeadlineExceeded, naming the check and its last error).
//!
//! Nodes are named by IP address (with apid's port at most: names and
//! other ports are refused, so that a caller cannot make the node dial
//! anything else), 256 at most, and 4 checks run at once at most. They are
//! reached at `<address>:50000` over mTLS with this node's client
//! certificate (`os:impersonator`, which only control plane
//! nodes hold), asking as `os:reader`: the same path apid forwards on.
//! Without `--control-plane-nodes` and `--worker-nodes` (upstream learns
//! the nodes from Kubernetes, which this node does not run) only this
//! node is checked, over its own socket.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use api::cluster::cluster_service_server::ClusterService;
use api::cluster::{HealthCheckProgress, HealthCheckRequest};
use api::cosi::resource::GetRequest;
use api::cosi::resource::state_client::StateClient;
use api::machine::machine_service_client::MachineServiceClient;
use api::talos::resource::definitions::{block as block_pb, runtime as runtime_pb};
use futures_util::Stream;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::events::MachineStage;
use crate::node::Node;
use crate::resources::{MACHINE_STATUS, NS_RUNTIME, VOLUME_STATUS};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The least `MemTotal` a node needs, in MiB: 512 MiB of RAM less what
/// the kernel keeps for itself (150 MiB, as upstream counts it). This
/// node OS runs no Kubernetes, so upstream's minimums (1.7 GiB for a
/// control plane) are not its own.
pub const MINIMUM_MEMORY_MIB: u64 = 512 - 150;

/// apid's port on every node.
const API_PORT: u16 = machinery::constants::APID_PORT;

/// How long the whole check goes on when the request does not say
/// (talosctl's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(20 * 60);

/// How often a failing check is tried again (upstream's interval).
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// How long one call to one node may take.
const CALL_WITHIN: Duration = Duration::from_secs(5);

/// The ClusterService.
#[derive(Debug)]
pub struct ClusterApi {
    node: Arc<Node>,
}

impl ClusterApi {
    /// Serves the checks of `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> ClusterApi {
        ClusterApi { node }
    }
}

/// A node to check and the way to it.
#[derive(Debug, Clone)]
struct Target {
    /// As the request named it (or "this node").
    name: String,
    /// How it is reached.
    reach: Reach,
}

/// How a target is reached.
#[derive(Debug, Clone)]
enum Reach {
    /// This node's own socket.
    Local(Channel),
    /// Another node's apid, over mTLS with this node's client certificate.
    /// The channel is made at the first try that can make it: the
    /// credentials are read then, and again at the next try when they
    /// could not be used (they may be being written, or not issued yet).
    Remote {
        addr: SocketAddr,
        secrets: std::path::PathBuf,
        channel: Arc<std::sync::Mutex<Option<Channel>>>,
    },
}

impl Target {
    /// Through another node's apid (else this node's own socket).
    fn is_remote(&self) -> bool {
        matches!(self.reach, Reach::Remote { .. })
    }

    /// A request to this target, with its role when it goes over the
    /// network.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(CALL_WITHIN);
        if self.is_remote() {
            request.metadata_mut().insert(
                "talos-role",
                tonic::metadata::MetadataValue::from_static("os:reader"),
            );
        }
        request
    }

    fn channel(&self) -> Result<Channel, String> {
        match &self.reach {
            Reach::Local(channel) => Ok(channel.clone()),
            Reach::Remote {
                addr,
                secrets,
                channel,
            } => {
                let mut made = channel
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(channel) = made.as_ref() {
                    return Ok(channel.clone());
                }
                let config = client_tls(secrets)?;
                let fresh =
                    machinery::grpc::tls_channel(addr.to_string(), &addr.ip().to_string(), config)
                        .map_err(|e| e.to_string())?;
                *made = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }

    async fn version(&self) -> Result<api::machine::Version, String> {
        let mut client = MachineServiceClient::new(self.channel()?);
        let reply = bounded(client.version(self.request(()))).await?;
        reply
            .messages
            .into_iter()
            .next()
            .ok_or_else(|| "Version answered nothing".to_owned())
    }

    async fn mem_total_kib(&self) -> Result<u64, String> {
        let mut client = MachineServiceClient::new(self.channel()?);
        let reply = bounded(client.memory(self.request(()))).await?;
        reply
            .messages
            .into_iter()
            .next()
            .and_then(|m| m.meminfo)
            .map(|m| m.memtotal)
            .ok_or_else(|| "Memory answered nothing".to_owned())
    }

    /// The proto spec of one resource.
    async fn resource(&self, type_: &str, id: &str) -> Result<Vec<u8>, String> {
        let mut client = StateClient::new(self.channel()?);
        let reply = bounded(client.get(self.request(GetRequest {
            namespace: NS_RUNTIME.to_owned(),
            r#type: type_.to_owned(),
            id: id.to_owned(),
            options: None,
        })))
        .await?;
        Ok(reply
            .resource
            .and_then(|r| r.spec)
            .map(|s| s.proto_spec)
            .unwrap_or_default())
    }
}

/// A call's reply within [`CALL_WITHIN`] (the channel's connecting too),
/// or what went wrong.
async fn bounded<T>(call: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_WITHIN, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {CALL_WITHIN:?}")),
    }
}

/// The most nodes one check names: a bound on what one caller makes
/// this node dial.
pub const MAX_NODES: usize = 256;

/// The most checks running at once on a node.
const MAX_CHECKS: usize = 4;

/// Checks running now (bounded by [`MAX_CHECKS`]).
static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CHECKS);

/// apid's address on a node the request names: an IP address, bare or
/// with apid's port. Names and other ports are refused, so that a caller
/// cannot make the node dial anything but other nodes' apid.
fn api_address(node: &str) -> Result<SocketAddr, String> {
    let addr = match node.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == API_PORT => addr,
        Ok(addr) => {
            return Err(format!(
                "{node}: only apid's port {API_PORT} is checked, not {}",
                addr.port()
            ));
        }
        Err(_) => {
            let bare = node
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(node);
            let ip = bare.parse::<IpAddr>().map_err(|_| {
                format!("{node}: not an IP address (nodes are named by address, as upstream)")
            })?;
            SocketAddr::new(ip, API_PORT)
        }
    };
    Ok(addr)
}

/// The nodes a request names, each with its channel, once each; this node
/// alone (over its socket) when it names none.
///
/// # Errors
/// A node that is not an IP address (with apid's port at most), or more
/// than [`MAX_NODES`] of them: InvalidArgument.
fn targets(node: &Node, request: &HealthCheckRequest) -> Result<Vec<Target>, Status> {
    let info = request.cluster_info.clone().unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let mut named: Vec<(String, SocketAddr)> = Vec::new();
    for name in info
        .control_plane_nodes
        .iter()
        .chain(&info.worker_nodes)
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        let addr = api_address(name).map_err(Status::invalid_argument)?;
        if seen.insert(addr) {
            named.push((name.to_owned(), addr));
        }
    }
    if named.len() > MAX_NODES {
        return Err(Status::invalid_argument(format!(
            "{} nodes named; one check takes {MAX_NODES} at most",
            named.len()
        )));
    }
    if named.is_empty() {
        return Ok(vec![Target {
            name: "this node".to_owned(),
            reach: Reach::Local(machinery::grpc::unix_channel_lazy(
                &node.paths.socket("machined"),
            )),
        }]);
    }
    let secrets = node.paths.secrets_dir("api");
    Ok(named
        .into_iter()
        .map(|(name, addr)| Target {
            name,
            reach: Reach::Remote {
                addr,
                secrets: secrets.clone(),
                channel: Arc::new(std::sync::Mutex::new(None)),
            },
        })
        .collect())
}

/// This node's client TLS config for reaching other nodes' apid: apid's
/// own forwarding config, from the same credentials (in `secrets`).
fn client_tls(secrets: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let no_certificate = || {
        "this node has no client certificate to reach other nodes with (only control plane \
         nodes do): run the check through a control plane node (-n)"
            .to_owned()
    };
    let credentials = apid::tls::Credentials::load(secrets)
        .map_err(|e| e.to_string())?
        .ok_or_else(no_certificate)?;
    apid::tls::forward_config(&credentials)
        .map_err(|e| e.to_string())?
        .ok_or_else(no_certificate)
}

/// Ok, or every problem as one message, as upstream lists them.
fn joined(problems: Vec<String>) -> Result<(), String> {
    match problems.len() {
        0 => Ok(()),
        1 => Err(format!("1 error occurred:\n\t* {}", problems[0])),
        n => Err(format!(
            "{n} errors occurred:\n\t* {}",
            problems.join("\n\t* ")
        )),
    }
}

/// One check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    ApidReady,
    MemorySizes,
    DiskSizes,
    Booted,
}

impl Check {
    const ALL: [Check; 4] = [
        Check::ApidReady,
        Check::MemorySizes,
        Check::DiskSizes,
        Check::Booted,
    ];

    /// Upstream's name for it.
    fn name(self) -> &'static str {
        match self {
            Check::ApidReady => "apid to be ready",
            Check::MemorySizes => "all nodes memory sizes",
            Check::DiskSizes => "all nodes disk sizes",
            Check::Booted => "all nodes to finish boot sequence",
        }
    }

    async fn run(self, targets: &[Target]) -> Result<(), String> {
        match self {
            Check::ApidReady => {
                let answers = each(targets, |t| async move { t.version().await.map(|_| ()) }).await;
                joined(answers)
            }
            Check::MemorySizes => {
                let (machines, mut problems) = not_in_containers(targets).await;
                problems.extend(
                    each(&machines, |t| async move {
                        let total_mib = t.mem_total_kib().await? / 1024;
                        if total_mib < MINIMUM_MEMORY_MIB {
                            return Err(format!(
                                "does not meet memory requirements: expected at least \
                                 {MINIMUM_MEMORY_MIB} MiB, actual {total_mib} MiB"
                            ));
                        }
                        Ok(())
                    })
                    .await,
                );
                joined(problems)
            }
            Check::DiskSizes => {
                let (machines, mut problems) = not_in_containers(targets).await;
                problems.extend(
                    each(&machines, |t| async move {
                        let spec = t.resource(VOLUME_STATUS.type_, "EPHEMERAL").await?;
                        let status = block_pb::VolumeStatusSpec::decode(spec.as_slice())
                            .map_err(|e| format!("VolumeStatus EPHEMERAL: {e}"))?;
                        ephemeral_problem(&status)
                    })
                    .await,
                );
                joined(problems)
            }
            Check::Booted => {
                let answers = each(targets, |t| async move {
                    let spec = t.resource(MACHINE_STATUS.type_, "machine").await?;
                    let status = runtime_pb::MachineStatusSpec::decode(spec.as_slice())
                        .map_err(|e| format!("MachineStatus: {e}"))?;
                    boot_problem(&status)
                })
                .await;
                joined(answers)
            }
        }
    }
}

/// What is wrong with an EPHEMERAL volume for the checks, if anything.
fn ephemeral_problem(status: &block_pb::VolumeStatusSpec) -> Result<(), String> {
    let minimum = installer::layout::EPHEMERAL_MIN_SIZE;
    if status.location.is_empty() {
        return Err("has no EPHEMERAL partition (not installed?)".to_owned());
    }
    // A volume mounted before it was probed has no size in its status:
    // unknown, not small.
    if status.size != 0 && status.size < minimum {
        return Err(format!(
            "ephemeral partition {:?} is too small, expected at least {} MiB, actual {} MiB",
            status.location,
            minimum / (1024 * 1024),
            status.size / (1024 * 1024)
        ));
    }
    Ok(())
}

/// What keeps a node from having finished booting, if anything.
fn boot_problem(status: &runtime_pb::MachineStatusSpec) -> Result<(), String> {
    let stage = MachineStage::from_number(status.stage);
    let ready = status.status.as_ref().is_some_and(|s| s.ready);
    if stage == Some(MachineStage::Running) && ready {
        return Ok(());
    }
    let stage = stage.map_or("unknown", crate::resources::stage_name);
    let unmet: Vec<String> = status
        .status
        .iter()
        .flat_map(|s| &s.unmet_conditions)
        .map(|c| format!("{}: {}", c.name, c.reason))
        .collect();
    Err(if unmet.is_empty() {
        format!("stage {stage}, ready: {ready}")
    } else {
        format!("stage {stage}, not ready ({})", unmet.join("; "))
    })
}

/// Runs `check` on every target at once; the failures, each naming its
/// node.
async fn each<'a, F, Fut>(targets: &'a [Target], check: F) -> Vec<String>
where
    F: Fn(&'a Target) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    futures_util::future::join_all(targets.iter().map(|t| {
        let answer = check(t);
        async move { answer.await.err().map(|e| format!("{}: {e}", t.name)) }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// The targets not running in a container (memory and disks are the
/// host's there, as upstream skips them), and the failures to tell.
async fn not_in_containers(targets: &[Target]) -> (Vec<Target>, Vec<String>) {
    let versions = futures_util::future::join_all(
        targets
            .iter()
            .map(|t| async move { (t, t.version().await) }),
    )
    .await;
    let mut machines = Vec::new();
    let mut problems = Vec::new();
    for (target, version) in versions {
        match version {
            Ok(v) if v.platform.as_ref().is_some_and(|p| p.mode == "container") => {}
            Ok(_) => machines.push(target.clone()),
            Err(e) => problems.push(format!("{}: {e}", target.name)),
        }
    }
    (machines, problems)
}

/// Runs the checks in order until all pass or `deadline`, saying each
/// change on `tx`.
async fn run_checks(
    targets: Vec<Target>,
    deadline: Instant,
    tx: mpsc::Sender<Result<HealthCheckProgress, Status>>,
    _running: tokio::sync::SemaphorePermit<'static>,
) {
    // A caller that stops reading holds no check past its deadline.
    let say = |message: String| {
        let tx = tx.clone();
        async move {
            let progress = Ok(HealthCheckProgress {
                metadata: None,
                message,
            });
            tokio::time::timeout_at(deadline, tx.send(progress))
                .await
                .is_ok_and(|sent| sent.is_ok())
        }
    };
    if targets.iter().any(|t| !t.is_remote())
        && !say("checking this node only: no --control-plane-nodes or --worker-nodes given".into())
            .await
    {
        return;
    }
    for check in Check::ALL {
        let name = check.name();
        if !say(format!("waiting for {name}: ...")).await {
            return;
        }
        let mut last: Option<String> = None;
        loop {
            // A try gets its calls' time even at the deadline: the last
            // one is a real try.
            let within = deadline.max(Instant::now() + 2 * CALL_WITHIN);
            let outcome = tokio::select! {
                outcome = tokio::time::timeout_at(within, check.run(&targets)) => outcome.ok(),
                () = tx.closed() => return,
            };
            match outcome {
                Some(Ok(())) => {
                    if !say(format!("waiting for {name}: OK")).await {
                        return;
                    }
                    break;
                }
                Some(Err(problem)) if last.as_deref() != Some(problem.as_str()) => {
                    if !say(format!("waiting for {name}: {problem}")).await {
                        return;
                    }
                    last = Some(problem);
                }
                Some(Err(_)) | None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                let why = last.unwrap_or_else(|| "no answer".to_owned());
                let failed = Err(Status::deadline_exceeded(format!(
                    "{name}: not passed within the wait timeout: {why}"
                )));
                // Best effort: the caller may have stopped reading.
                let _ = tokio::time::timeout(CALL_WITHIN, tx.send(failed)).await;
                return;
            }
            // The next try, or the last one at the deadline.
            tokio::select! {
                () = tokio::time::sleep_until((now + RETRY_EVERY).min(deadline)) => {}
                () = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn health_check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Stream_<HealthCheckProgress>>, Status> {
        let request = request.into_inner();
        let wait = match request.wait_timeout {
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Status::invalid_argument(
                    "wait_timeout: a negative duration",
                ));
            }
            Some(d) if d.seconds > 0 || d.nanos > 0 => Duration::new(
                u64::try_from(d.seconds).unwrap_or_default(),
                u32::try_from(d.nanos).unwrap_or_default(),
            ),
            _ => DEFAULT_WAIT,
        };
        if self.node.in_maintenance() {
            return Err(Status::failed_precondition(
                "the node is in maintenance mode (no machine config): there is nothing to check \
                 yet",
            ));
        }
        let targets = targets(&self.node, &request)?;
        let running = RUNNING.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_CHECKS} health checks are running on this node already"
            ))
        })?;
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + DEFAULT_WAIT);
        let (tx, rx) = mpsc::channel(16);
        // The health-check task is the stream's: it ends when the caller
        // goes away (`tx.closed()`), at the deadline, or when all checks
        // passed; its permit goes with it.
        tokio::spawn(run_checks(targets, deadline, tx, running));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_addresses_on_apids_port() {
        let ok = |n: &str| api_address(n).expect(n).to_string();
        assert_eq!(ok("10.5.0.2"), "10.5.0.2:50000");
        assert_eq!(ok("127.0.0.3:50000"), "127.0.0.3:50000");
        assert_eq!(ok("fd00::2"), "[fd00::2]:50000");
        assert_eq!(ok("[fd00::2]"), "[fd00::2]:50000");
        assert_eq!(ok("[fd00::2]:50000"), "[fd00::2]:50000");
        for (bad, why) in [
            ("10.5.0.2:22", "only apid's port 50000"),
            ("cp1.example", "not an IP address"),
            ("fe80::1%eth0", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let err = api_address(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// Credentials caught half written (the client key of a new issue
    /// beside the certificate of the old one) fail that try only: the next
    /// try reads them again. Before, the first failure stood for the whole
    /// check, until its deadline.
    #[tokio::test]
    async fn a_remote_target_reads_the_credentials_again_until_they_work() {
        let pki = testkit::Pki::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("api");
        pki.write_credentials(&secrets, false, IpAddr::from([127, 0, 0, 1]));
        let other = pki.client(&["os:impersonator"]);
        std::fs::write(secrets.join("client.key"), &other.key_pem).expect("a key of another issue");
        let target = Target {
            name: "127.0.0.1".to_owned(),
            reach: Reach::Remote {
                addr: "127.0.0.1:50000".parse().expect("addr"),
                secrets: secrets.clone(),
                channel: Arc::new(std::sync::Mutex::new(None)),
            },
        };
        let err = target.channel().expect_err("the pair does not match");
        assert!(err.contains("KeyMismatch"), "{err}");
        std::fs::write(secrets.join("client.crt"), &other.cert_pem).expect("its certificate");
        target
            .channel()
            .expect("read again, and the pair matches now");
    }

    #[test]
    fn problems_are_listed_as_upstream_lists_them() {
        assert_eq!(joined(Vec::new()), Ok(()));
        assert_eq!(
            joined(vec!["a: down".into()]),
            Err("1 error occurred:\n\t* a: down".into())
        );
        assert_eq!(
            joined(vec!["a: down".into(), "b: slow".into()]),
            Err("2 errors occurred:\n\t* a: down\n\t* b: slow".into())
        );
    }

    #[test]
    fn boot_and_disk_rules() {
        let running_ready = runtime_pb::MachineStatusSpec {
            stage: MachineStage::Running.number(),
            status: Some(runtime_pb::MachineStatusStatus {
                ready: true,
                unmet_conditions: Vec::new(),
            }),
        };
        assert_eq!(boot_problem(&running_ready), Ok(()));
        let booting = runtime_pb::MachineStatusSpec {
            stage: MachineStage::Booting.number(),
            status: Some(runtime_pb::MachineStatusStatus {
                ready: false,
                unmet_conditions: vec![runtime_pb::UnmetCondition {
                    name: "services".into(),
                    reason: "trustd not healthy".into(),
                }],
            }),
        };
        assert_eq!(
            boot_problem(&booting),
            Err("stage booting, not ready (services: trustd not healthy)".into())
        );
        let missing = block_pb::VolumeStatusSpec::default();
        assert!(ephemeral_problem(&missing).is_err_and(|e| e.contains("no EPHEMERAL")));
        let small = block_pb::VolumeStatusSpec {
            location: "/dev/vda4".into(),
            size: 100 * 1024 * 1024,
            ..block_pb::VolumeStatusSpec::default()
        };
        assert!(
            ephemeral_problem(&small)
                .is_err_and(|e| e.contains("expected at least 512 MiB, actual 100 MiB")),
        );
        let fine = block_pb::VolumeStatusSpec {
            location: "/dev/vda4".into(),
            size: 2 << 30,
            ..block_pb::VolumeStatusSpec::default()
        };
        assert_eq!(ephemeral_problem(&fine), Ok(()));
    }
}
