//! `talosctl cluster create|show|destroy`: local clusters.
//!
//! The `process` provisioner runs every node as container-mode machined
//! processes (machined starts routerd, apid and trustd itself) bound to its
//! own loopback address, `127.5.0.2`, `127.5.0.3`, ... by default, with no
//! root needed. State lives under `~/.talos/clusters/<name>`: one directory
//! per node (its root) and `cluster.yaml` describing the cluster. The new
//! context is merged into the talosconfig.
//!
//! The `qemu` provisioner (see [`crate::qemu`]) boots the image `imager
//! build` makes in QEMU virtual machines instead; it shares the state
//! layout, config generation, talosconfig merging and the readiness wait
//! with `process`. `cluster.yaml` records which provisioner made a cluster,
//! so `show` and `destroy` need no flag for it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use machinery::talosconfig::TalosConfig;
use serde::{Deserialize, Serialize};

use crate::cmd::lifecycle::HealthEnd;

/// `talosctl cluster ...`
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Creates a local cluster.
    Create(CreateArgs),
    /// Shows a local cluster.
    Show(NameArgs),
    /// Destroys a local cluster.
    Destroy(NameArgs),
    /// Runs the inter-node network hub of a qemu cluster (started by
    /// `cluster create --provisioner qemu`, not by hand).
    #[command(hide = true)]
    Hub(crate::qemu::HubArgs),
}

/// `cluster create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Provisioner: process (container-mode nodes on loopback addresses) or
    /// qemu (virtual machines booting the image of --image-dir).
    #[arg(long, default_value = "process")]
    pub provisioner: String,
    /// Cluster name.
    #[arg(long, default_value = "talos-default")]
    pub name: String,
    /// Number of control plane nodes.
    #[arg(long, default_value_t = 1)]
    pub controlplanes: u32,
    /// Number of worker nodes.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// State directory (default ~/.talos/clusters).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Loopback network the nodes take addresses from (first node: .2).
    #[arg(long, default_value = "127.5.0.0/24")]
    pub cidr: String,
    /// Directory holding machined and the other daemons (default: beside talosctl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// How long to wait for the nodes to answer, per phase (qemu: boot, then
    /// ready after the config is applied) [default: 60s for process, 600s
    /// for qemu].
    #[arg(long, value_parser = humantime_secs)]
    pub wait_timeout: Option<Duration>,
    /// qemu: directory holding vmlinuz, initramfs.xz and manifest.json (built
    /// with `imager build` when missing and imager is beside talosctl).
    #[arg(long, default_value = "_out")]
    pub image_dir: PathBuf,
    /// qemu: memory of each node, in MiB.
    #[arg(long, default_value_t = 768)]
    pub memory: u32,
    /// qemu: virtual CPUs of each node.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// qemu: boot the nodes and leave them in maintenance mode; apply
    /// <cluster dir>/<node>.yaml with apply-config --insecure.
    #[arg(long)]
    pub skip_apply: bool,
    /// wait for the cluster to be ready before returning: every node
    /// answering (qemu: with every service healthy), then (process) the
    /// cluster's health checks, run from the first control plane as
    /// `talosctl health` runs them
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub wait: bool,
}

/// `--wait-timeout` of the process provisioner when not given.
const PROCESS_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one readiness probe (an RPC) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 60s or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration like 60s or 2m")),
    }
}

/// A cluster name and state directory.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// Cluster name.
    #[arg(long, default_value = "talos-default")]
    pub name: String,
    /// State directory (default ~/.talos/clusters).
    #[arg(long)]
    pub state: Option<PathBuf>,
}

/// What `cluster.yaml` records.
///
/// Fields added after the first version are optional with serde defaults,
/// so files written by older talosctl still parse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterState {
    /// Cluster name (also the talosconfig context name).
    pub(crate) name: String,
    /// `process` or `qemu`.
    pub(crate) provisioner: String,
    /// The nodes, control planes first.
    pub(crate) nodes: Vec<NodeState>,
    /// qemu: pid of the inter-node network hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hub_pid: Option<u32>,
    /// qemu: the boot image directory the nodes were started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) image_dir: Option<PathBuf>,
}

/// One node of `cluster.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeState {
    /// `<cluster>-controlplane-<n>` or `<cluster>-worker-<n>`.
    pub(crate) name: String,
    /// `controlplane` or `worker`.
    pub(crate) role: String,
    /// process: its loopback address; qemu: its inter-node address.
    pub(crate) ip: String,
    /// process: machined's pid; qemu: QEMU's pid.
    pub(crate) pid: u32,
    /// The node's directory.
    pub(crate) root: PathBuf,
    /// qemu: the host port forwarded to the node's apid (127.0.0.1:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) api_port: Option<u16>,
    /// qemu: the file the node's serial console is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) console: Option<PathBuf>,
}

/// `~/.talos/clusters`, or `--state`.
pub(crate) fn state_root(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --state")?;
    Ok(PathBuf::from(home).join(".talos/clusters"))
}

/// Runs a cluster subcommand. `talosconfig` is the resolved talosconfig path
/// the new context is merged into.
///
/// # Errors
/// Whatever stops the command, with a message for the operator.
pub async fn run(args: ClusterArgs, talosconfig: &Path) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Create(a) => create(a, talosconfig).await,
        ClusterCommand::Show(a) => show(&a),
        ClusterCommand::Destroy(a) => destroy(&a),
        ClusterCommand::Hub(a) => crate::qemu::hub(&a),
    }
}

fn addresses(cidr: &str, count: u32) -> anyhow::Result<Vec<Ipv4Addr>> {
    let (base, prefix) = cidr
        .split_once('/')
        .context("--cidr must look like 127.5.0.0/24")?;
    let base: Ipv4Addr = base
        .parse()
        .with_context(|| format!("--cidr {cidr}: bad address"))?;
    let prefix: u32 = prefix
        .parse()
        .with_context(|| format!("--cidr {cidr}: bad prefix"))?;
    if !base.is_loopback() {
        bail!("--cidr {cidr}: the process provisioner only uses loopback addresses (127.0.0.0/8)");
    }
    let size = 1u64 << (32 - prefix.min(32));
    if u64::from(count) + 2 > size {
        bail!(
            "--cidr {cidr} has room for {} nodes, not {count}",
            size.saturating_sub(2)
        );
    }
    Ok((0..count)
        .map(|i| Ipv4Addr::from(u32::from(base) + 2 + i))
        .collect())
}

async fn create(args: CreateArgs, talosconfig_path: &Path) -> anyhow::Result<()> {
    match args.provisioner.as_str() {
        "process" => create_process(args, talosconfig_path).await,
        "qemu" => crate::qemu::create(&args, talosconfig_path).await,
        other => bail!(
            "provisioner {other:?} is not available: use --provisioner process or --provisioner qemu"
        ),
    }
}

/// Generates a secrets bundle and the controlplane/worker configs and the
/// talosconfig of cluster `name` whose Kubernetes API is `endpoint`.
pub(crate) async fn generate_configs(
    name: &str,
    endpoint: String,
) -> anyhow::Result<(
    machinery::secrets::SecretsBundle,
    machinery::generate::Generated,
)> {
    eprintln!("generating PKI and tokens");
    // Key generation is CPU-bound: off the async thread.
    tokio::task::spawn_blocking({
        let name = name.to_owned();
        move || -> anyhow::Result<_> {
            let now = SystemTime::now();
            let bundle = machinery::secrets::SecretsBundle::generate(now)?;
            let opts = machinery::generate::GenOptions::new(name, endpoint);
            let generated = machinery::generate::generate(&bundle, &opts, now)?;
            Ok((bundle, generated))
        }
    })
    .await?
}

/// Writes `cluster.yaml` into the cluster directory `dir`.
pub(crate) fn save_state(dir: &Path, state: &ClusterState) -> anyhow::Result<()> {
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(state)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Merges `config` into the talosconfig at `path` (created when missing)
/// and returns the name of the new context (renamed on a clash).
pub(crate) fn merge_talosconfig(path: &Path, config: TalosConfig) -> anyhow::Result<String> {
    let mut talosconfig = match TalosConfig::load(path) {
        Ok(c) => c,
        Err(e) if e.is_not_found() => TalosConfig::default(),
        Err(e) => return Err(e.into()),
    };
    eprintln!("merging talosconfig into {}", path.display());
    for (from, to) in talosconfig.merge(config) {
        eprintln!("renamed talosconfig context {from:?} -> {to:?}");
    }
    talosconfig.save(path)?;
    Ok(talosconfig.context.clone())
}

async fn create_process(args: CreateArgs, talosconfig_path: &Path) -> anyhow::Result<()> {
    if args.controlplanes == 0 {
        bail!("a cluster needs at least one control plane (--controlplanes)");
    }
    let dir = state_root(args.state.as_deref())?.join(&args.name);
    if dir.join("cluster.yaml").exists() {
        bail!(
            "cluster {:?} already exists at {}: run \"talosctl cluster destroy --name {}\" first",
            args.name,
            dir.display(),
            args.name
        );
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("talosctl has no directory")?
            .to_path_buf(),
    };
    let machined = bin_dir.join("machined");
    if !machined.exists() {
        bail!(
            "machined not found at {}: build it (cargo build --workspace --bins) or pass --bin-dir",
            machined.display()
        );
    }
    let ips = addresses(&args.cidr, args.controlplanes + args.workers)?;
    let endpoint_ip = ips[0];

    let (bundle, generated) =
        generate_configs(&args.name, format!("https://{endpoint_ip}:6443")).await?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("secrets.yaml"), bundle.to_yaml()?)?;

    let mut nodes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let i = u32::try_from(i)?;
        let (role, n) = if i < args.controlplanes {
            ("controlplane", i + 1)
        } else {
            ("worker", i - args.controlplanes + 1)
        };
        let name = format!("{}-{role}-{n}", args.name);
        let root = dir.join(&name);
        let base = if role == "controlplane" {
            &generated.controlplane_yaml
        } else {
            &generated.worker_yaml
        };
        let config = machinery::generate::apply_patch(
            base,
            &format!("machine:\n  network:\n    hostname: {name}\n"),
        )?;
        let state = root.join("system/state");
        std::fs::create_dir_all(&state)?;
        std::fs::write(machinery::config::persist_path(&state), config)?;
        let log = std::fs::File::create(root.join("machined.log"))?;
        let mut cmd = Command::new(&machined);
        cmd.args(["--mode", "container", "--root"])
            .arg(&root)
            .args([
                "--hostname",
                &name,
                "--apid-listen",
                &format!("{ip}:50000"),
                "--trustd-listen",
                &format!("{ip}:50001"),
                "--bin-dir",
            ])
            .arg(&bin_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session: the node outlives this command.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", machined.display()))?;
        nodes.push(NodeState {
            name,
            role: role.to_owned(),
            ip: ip.to_string(),
            pid: child.id(),
            root,
            api_port: None,
            console: None,
        });
        // The child is not waited for: it is a long-lived daemon, reparented
        // to init when this command exits.
        drop(child);
    }
    let state = ClusterState {
        name: args.name.clone(),
        provisioner: args.provisioner.clone(),
        nodes,
        hub_pid: None,
        image_dir: None,
    };
    save_state(&dir, &state)?;

    let mut context_config = generated.talosconfig.clone();
    if let Some(ctx) = context_config.contexts.get_mut(&args.name) {
        ctx.endpoints = vec![endpoint_ip.to_string()];
        ctx.nodes = vec![endpoint_ip.to_string()];
    }
    // Merged first, as upstream: a cluster that does not come up can still
    // be reached to see why.
    let context = merge_talosconfig(talosconfig_path, context_config.clone())?;
    let targets: Vec<ReadyTarget> = state
        .nodes
        .iter()
        .map(|node| ReadyTarget {
            name: node.name.clone(),
            addr: format!("{}:50000", node.ip),
            server_name: node.ip.clone(),
            log: node.root.join("machined.log"),
            pid: None,
            node: None,
        })
        .collect();
    if args.wait {
        // --wait-timeout bounds each phase: the nodes answering, then the
        // health checks.
        let timeout = args.wait_timeout.unwrap_or(PROCESS_WAIT_TIMEOUT);
        eprintln!("waiting for {} nodes to answer", state.nodes.len());
        wait_ready(&context_config, &args.name, &targets, timeout, false)
            .await
            .map_err(|err| err.context(crate::qemu::destroy_hint(&args.name)))?;
        check_health(
            &context_config,
            &args.name,
            (&targets[0].addr, &targets[0].server_name),
            &state.nodes,
            timeout,
        )
        .await
        .map_err(|err| err.context(crate::qemu::destroy_hint(&args.name)))?;
    }

    print_cluster(&state);
    println!();
    println!("next:");
    println!("  talosctl --context {context} version");
    println!(
        "  talosctl --context {context} -n {} services",
        state
            .nodes
            .iter()
            .map(|n| n.ip.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("  talosctl cluster destroy --name {}", args.name);
    Ok(())
}

/// One node [`wait_ready`] waits for: where its apid answers and where to
/// look when it does not.
#[derive(Debug, Clone)]
pub(crate) struct ReadyTarget {
    /// Node name, for messages.
    pub(crate) name: String,
    /// `host:port` to connect to.
    pub(crate) addr: String,
    /// The name the server certificate must carry (an IP address).
    pub(crate) server_name: String,
    /// The log the operator should read when the node does not answer.
    pub(crate) log: PathBuf,
    /// The process running the node: when it is gone, waiting is pointless.
    pub(crate) pid: Option<u32>,
    /// The node's own address as the written context names it (`-n`),
    /// when it differs from `addr`: ready also means a call to it through
    /// `addr` works (its API certificate covers that address).
    pub(crate) node: Option<String>,
}

/// The status as one line: its message and the causes tonic attached (a
/// transport error says little without them).
pub(crate) fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = std::error::Error::source(err);
    }
    text
}

/// One Version call to `addr` with `tls`, bounded by [`PROBE_TIMEOUT`].
///
/// A fresh channel per probe: a connection the node dropped while booting
/// (or rebooting) is not reused.
pub(crate) async fn probe_version(
    addr: &str,
    server_name: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let channel = machinery::grpc::tls_channel(addr.to_owned(), server_name, Arc::clone(tls))
        .map_err(|err| err.to_string())?;
    let mut client = crate::client::machine(channel);
    // tonic does not enforce the grpc-timeout header on the client side, and
    // a forwarded port may accept a connection nobody answers on.
    match tokio::time::timeout(PROBE_TIMEOUT, client.version(tonic::Request::new(()))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status_text(&status)),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// Version through `target.addr` with `node` metadata naming `node`.
async fn probe_version_via(
    target: &ReadyTarget,
    node: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let channel =
        machinery::grpc::tls_channel(target.addr.clone(), &target.server_name, Arc::clone(tls))
            .map_err(|err| err.to_string())?;
    let mut client = crate::client::machine(channel);
    let mut request = tonic::Request::new(());
    let value = node
        .parse()
        .map_err(|_| format!("{node:?} is not a valid metadata value"))?;
    request.metadata_mut().insert("node", value);
    match tokio::time::timeout(PROBE_TIMEOUT, client.version(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status_text(&status)),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// The services that are not `Running` and healthy, as `id (why)`.
pub(crate) fn unready_services(services: &[api::machine::ServiceInfo]) -> Vec<String> {
    services
        .iter()
        .filter_map(|service| {
            if service.state != "Running" {
                return Some(format!("{} ({})", service.id, service.state));
            }
            match &service.health {
                Some(health) if health.healthy => None,
                Some(health) if !health.last_message.is_empty() => Some(format!(
                    "{} (unhealthy: {})",
                    service.id, health.last_message
                )),
                _ => Some(format!("{} (not healthy yet)", service.id)),
            }
        })
        .collect()
}

/// One ServiceList call: the services that are not ready yet.
async fn probe_services(
    target: &ReadyTarget,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Vec<String>, String> {
    let channel =
        machinery::grpc::tls_channel(target.addr.clone(), &target.server_name, Arc::clone(tls))
            .map_err(|err| err.to_string())?;
    let mut client = crate::client::machine(channel);
    let reply =
        match tokio::time::timeout(PROBE_TIMEOUT, client.service_list(tonic::Request::new(())))
            .await
        {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(status_text(&status)),
            Err(_) => return Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
    let mut unready = Vec::new();
    let mut any = false;
    for list in &reply.messages {
        if let Some(err) = crate::client::node_error(list.metadata.as_ref()) {
            return Err(err);
        }
        any |= !list.services.is_empty();
        unready.extend(unready_services(&list.services));
    }
    if !any {
        return Err("no services reported yet".to_owned());
    }
    Ok(unready)
}

/// The mTLS client config of `context` in the generated `config`.
fn context_tls(config: &TalosConfig, context: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ctx = config
        .contexts
        .get(context)
        .context("generated talosconfig has no context")?;
    Ok(machinery::grpc::client_tls_config(
        &ctx.ca_pem()?,
        Some((&ctx.crt_pem()?, &ctx.key_pem()?)),
    )?)
}

/// Runs the cluster's health checks from the first control plane (at
/// `endpoint`: address and TLS server name), naming every node by its
/// address, and prints their progress as `talosctl health` does: upstream's
/// `cluster create` ends the same way. `timeout` bounds the checks.
pub(crate) async fn check_health(
    config: &TalosConfig,
    context: &str,
    endpoint: (&str, &str),
    nodes: &[NodeState],
    timeout: Duration,
) -> anyhow::Result<()> {
    let tls = context_tls(config, context)?;
    let (addr, server_name) = endpoint;
    let ips = |role: &str| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.ip.clone())
            .collect()
    };
    let request = api::cluster::HealthCheckRequest {
        wait_timeout: Some(crate::output::proto_duration(timeout)),
        cluster_info: Some(api::cluster::ClusterInfo {
            control_plane_nodes: ips("controlplane"),
            worker_nodes: ips("worker"),
            force_endpoint: String::new(),
        }),
    };
    let channel = machinery::grpc::tls_channel(addr.to_owned(), server_name, tls)?;
    let mut client = crate::client::cluster(channel);
    let run = async {
        let mut stream = client
            .health_check(request)
            .await
            .map_err(|status| anyhow!("health check: {}", status_text(&status)))?
            .into_inner();
        match crate::cmd::lifecycle::follow_health(&mut stream).await {
            Ok(()) => Ok(()),
            Err(HealthEnd::Node(error)) => bail!("health check: {error}"),
            Err(HealthEnd::Status(status)) => bail!("health check: {}", status_text(&status)),
        }
    };
    // The node ends the checks at `timeout`; this bounds a node that
    // stops answering altogether.
    tokio::time::timeout(timeout + Duration::from_secs(15), run)
        .await
        .map_err(|_| anyhow!("health check: no answer within {timeout:?}"))?
}

/// Waits until every target answers Version through its apid over mTLS
/// with the credentials of `context` in `config`; with `services`, also
/// until every service it lists is Running and healthy. `timeout` bounds
/// the whole wait.
pub(crate) async fn wait_ready(
    config: &TalosConfig,
    context: &str,
    targets: &[ReadyTarget],
    timeout: Duration,
    services: bool,
) -> anyhow::Result<()> {
    let tls = context_tls(config, context)?;
    let deadline = Instant::now() + timeout;
    let exited = |target: &ReadyTarget| -> anyhow::Result<()> {
        if let Some(pid) = target.pid
            && !alive(pid)
        {
            bail!(
                "node {} stopped (process {pid} exited); see {}",
                target.name,
                target.log.display()
            );
        }
        Ok(())
    };
    for target in targets {
        loop {
            exited(target)?;
            let last = match probe_version(&target.addr, &target.server_name, &tls).await {
                Ok(()) => {
                    eprintln!("  {} ({}) is up", target.name, target.addr);
                    break;
                }
                Err(err) => err,
            };
            if Instant::now() > deadline {
                bail!(
                    "node {} ({}) did not answer within {timeout:?}: {last}; see {}",
                    target.name,
                    target.addr,
                    target.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !services {
            continue;
        }
        loop {
            exited(target)?;
            let last = match probe_services(target, &tls).await {
                Ok(unready) if unready.is_empty() => match &target.node {
                    None => {
                        eprintln!("  {}: every service is running and healthy", target.name);
                        break;
                    }
                    // The node's certificate is issued again once its
                    // addresses are up: until then a call naming the
                    // address fails its TLS check.
                    Some(node) => match probe_version_via(target, node, &tls).await {
                        Ok(()) => {
                            eprintln!(
                                "  {}: every service is running and healthy; answers as {node}",
                                target.name
                            );
                            break;
                        }
                        Err(err) => format!("not answering as {node} yet: {err}"),
                    },
                },
                Ok(unready) => format!("not ready: {}", unready.join(", ")),
                Err(err) => err,
            };
            if Instant::now() > deadline {
                bail!(
                    "node {} ({}): services not ready within {timeout:?}: {last}; see {}",
                    target.name,
                    target.addr,
                    target.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

fn load_state(args: &NameArgs) -> anyhow::Result<(PathBuf, ClusterState)> {
    let dir = state_root(args.state.as_deref())?.join(&args.name);
    let path = dir.join("cluster.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("cluster {:?} not found (no {})", args.name, path.display())
        } else {
            anyhow::anyhow!("reading {}: {e}", path.display())
        }
    })?;
    Ok((
        dir,
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    // A zombie is not alive; /proc/<pid>/stat says Z for it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Prints the cluster table (with an ENDPOINT column when nodes have
/// forwarded API ports, i.e. for qemu).
pub(crate) fn print_cluster(state: &ClusterState) {
    println!("PROVISIONER   {}", state.provisioner);
    println!("NAME          {}", state.name);
    println!();
    let w = state
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let endpoints = state.nodes.iter().any(|n| n.api_port.is_some());
    if endpoints {
        println!(
            "{:<w$}   {:<12}   {:<15}   {:<15}   STATE",
            "NAME", "TYPE", "IP", "ENDPOINT"
        );
    } else {
        println!("{:<w$}   {:<12}   {:<15}   STATE", "NAME", "TYPE", "IP");
    }
    for n in &state.nodes {
        let st = if alive(n.pid) { "running" } else { "stopped" };
        if endpoints {
            let endpoint = n
                .api_port
                .map(|port| format!("127.0.0.1:{port}"))
                .unwrap_or_default();
            println!(
                "{:<w$}   {:<12}   {:<15}   {endpoint:<15}   {st}",
                n.name, n.role, n.ip
            );
        } else {
            println!("{:<w$}   {:<12}   {:<15}   {st}", n.name, n.role, n.ip);
        }
    }
}

fn show(args: &NameArgs) -> anyhow::Result<()> {
    let (_, state) = load_state(args)?;
    print_cluster(&state);
    Ok(())
}

/// Processes whose command line mentions `root` (a node's daemons).
fn processes_under(root: &Path) -> Vec<u32> {
    let needle = root.as_os_str().as_encoded_bytes().to_vec();
    pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == needle.as_slice())
            }) && alive(*pid)
        })
        .collect()
}

/// Every pid `/proc` lists now (none if it cannot be read).
pub(crate) fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Sends `sig` (`-TERM`, `-KILL`) to `pid`; a process already gone is fine.
pub(crate) fn signal(pid: u32, sig: &str) {
    // kill(1) keeps this file free of unsafe code; ESRCH is fine.
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn destroy(args: &NameArgs) -> anyhow::Result<()> {
    let (dir, state) = load_state(args)?;
    if state.provisioner == "qemu" {
        return crate::qemu::destroy(&dir, &state);
    }
    for node in &state.nodes {
        if alive(node.pid) {
            signal(node.pid, "-TERM");
        }
    }
    // machined stops its services on SIGTERM; give it time, then be sure.
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.nodes.iter().any(|n| alive(n.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in &state.nodes {
        for pid in processes_under(&node.root)
            .into_iter()
            .chain(alive(node.pid).then_some(node.pid))
        {
            signal(pid, "-KILL");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while state
        .nodes
        .iter()
        .any(|n| !processes_under(&n.root).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = state
        .nodes
        .iter()
        .flat_map(|n| processes_under(&n.root))
        .collect();
    if !left.is_empty() {
        bail!(
            "processes {left:?} of cluster {:?} are still running",
            state.name
        );
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("destroyed cluster {:?}", state.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_loopback_cidr() {
        let a = addresses("127.5.0.0/24", 3).expect("ok");
        assert_eq!(
            a,
            [
                Ipv4Addr::new(127, 5, 0, 2),
                Ipv4Addr::new(127, 5, 0, 3),
                Ipv4Addr::new(127, 5, 0, 4)
            ]
        );
        assert!(addresses("10.5.0.0/24", 1).is_err());
        assert!(addresses("127.5.0.0/30", 3).is_err());
        assert!(addresses("nonsense", 1).is_err());
    }

    #[test]
    fn old_cluster_files_still_parse() {
        let text = "name: demo\nprovisioner: process\nnodes:\n- name: demo-controlplane-1\n  role: controlplane\n  ip: 127.5.0.2\n  pid: 42\n  root: /tmp/demo/demo-controlplane-1\n";
        let state: ClusterState = serde_yaml_ng::from_str(text).expect("parse");
        assert_eq!(state.hub_pid, None);
        assert_eq!(state.image_dir, None);
        assert_eq!(state.nodes[0].api_port, None);
        assert_eq!(state.nodes[0].console, None);
        // And process clusters are written as before: no new keys.
        let again = serde_yaml_ng::to_string(&state).expect("serialize");
        assert!(
            !again.contains("api_port") && !again.contains("hub_pid"),
            "{again}"
        );
    }

    #[test]
    fn unready_services_names_what_is_missing() {
        use api::machine::{ServiceHealth, ServiceInfo};
        let service = |id: &str, state: &str, healthy: bool, message: &str| ServiceInfo {
            id: id.to_owned(),
            state: state.to_owned(),
            events: None,
            health: Some(ServiceHealth {
                unknown: false,
                healthy,
                last_message: message.to_owned(),
                last_change: None,
            }),
        };
        let list = [
            service("apid", "Running", true, ""),
            service("trustd", "Waiting", false, ""),
            service("routerd", "Running", false, "Health check failed: refused"),
            service("udevd", "Running", false, ""),
        ];
        assert_eq!(
            unready_services(&list),
            [
                "trustd (Waiting)",
                "routerd (unhealthy: Health check failed: refused)",
                "udevd (not healthy yet)"
            ]
        );
        assert!(unready_services(&list[..1]).is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(humantime_secs("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(humantime_secs("2m"), Ok(Duration::from_secs(120)));
        assert!(humantime_secs("soon").is_err());
    }
}
