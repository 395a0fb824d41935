//! `talosctl cluster create|show|destroy`: local clusters.
//!
//! The `process` provisioner runs every node as container-mode machined
//! processes (machined starts routerd, apid and trustd itself) bound to its
//! own loopback address, `127.5.0.2`, `127.5.0.3`, ... by default, with no
//! root needed. State lives under `~/.talos/clusters/<name>`: one directory
//! per node (its root) and `cluster.yaml` describing the cluster. The new
//! context is merged into the talosconfig.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use machinery::talosconfig::TalosConfig;
use serde::{Deserialize, Serialize};

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
}

/// `cluster create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Provisioner: process (container-mode nodes on loopback addresses).
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
    /// How long to wait for every node to answer.
    #[arg(long, default_value = "60s", value_parser = humantime_secs)]
    pub wait_timeout: Duration,
}

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
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterState {
    name: String,
    provisioner: String,
    nodes: Vec<NodeState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeState {
    name: String,
    role: String,
    ip: String,
    pid: u32,
    root: PathBuf,
}

fn state_root(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
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
    if args.provisioner != "process" {
        bail!(
            "provisioner {:?} is not available: use --provisioner process",
            args.provisioner
        );
    }
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

    eprintln!("generating PKI and tokens");
    let (bundle, generated) = tokio::task::spawn_blocking({
        let name = args.name.clone();
        move || -> anyhow::Result<_> {
            let now = SystemTime::now();
            let bundle = machinery::secrets::SecretsBundle::generate(now)?;
            let opts =
                machinery::generate::GenOptions::new(name, format!("https://{endpoint_ip}:6443"));
            let generated = machinery::generate::generate(&bundle, &opts, now)?;
            Ok((bundle, generated))
        }
    })
    .await??;
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
        });
        // The child is not waited for: it is a long-lived daemon, reparented
        // to init when this command exits.
        drop(child);
    }
    let state = ClusterState {
        name: args.name.clone(),
        provisioner: args.provisioner.clone(),
        nodes,
    };
    std::fs::write(dir.join("cluster.yaml"), serde_yaml_ng::to_string(&state)?)?;

    let mut context_config = generated.talosconfig.clone();
    if let Some(ctx) = context_config.contexts.get_mut(&args.name) {
        ctx.endpoints = vec![endpoint_ip.to_string()];
        ctx.nodes = vec![endpoint_ip.to_string()];
    }
    eprintln!("waiting for {} nodes to answer", state.nodes.len());
    wait_ready(&context_config, &args.name, &state, args.wait_timeout).await?;

    let mut talosconfig = match TalosConfig::load(talosconfig_path) {
        Ok(c) => c,
        Err(e) if e.is_not_found() => TalosConfig::default(),
        Err(e) => return Err(e.into()),
    };
    eprintln!("merging talosconfig into {}", talosconfig_path.display());
    for (from, to) in talosconfig.merge(context_config) {
        eprintln!("renamed talosconfig context {from:?} -> {to:?}");
    }
    talosconfig.save(talosconfig_path)?;
    let context = talosconfig.context.clone();

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

/// Waits until every node answers Version through its apid over mTLS.
async fn wait_ready(
    config: &TalosConfig,
    context: &str,
    state: &ClusterState,
    timeout: Duration,
) -> anyhow::Result<()> {
    let ctx = config
        .contexts
        .get(context)
        .context("generated talosconfig has no context")?;
    let tls = machinery::grpc::client_tls_config(
        &ctx.ca_pem()?,
        Some((&ctx.crt_pem()?, &ctx.key_pem()?)),
    )?;
    let deadline = Instant::now() + timeout;
    for node in &state.nodes {
        let channel =
            machinery::grpc::tls_channel(format!("{}:50000", node.ip), &node.ip, Arc::clone(&tls))?;
        let mut client = api::machine::machine_service_client::MachineServiceClient::new(channel);
        let mut last: String;
        loop {
            let mut req = tonic::Request::new(());
            req.set_timeout(Duration::from_secs(5));
            match client.version(req).await {
                Ok(_) => {
                    eprintln!("  {} ({}) is up", node.name, node.ip);
                    break;
                }
                Err(status) => last = status.message().to_owned(),
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} ({}) did not answer within {timeout:?}: {last}; see {}",
                    node.name,
                    node.ip,
                    node.root.join("machined.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
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

fn alive(pid: u32) -> bool {
    // A zombie is not alive; /proc/<pid>/stat says Z for it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn print_cluster(state: &ClusterState) {
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
    println!("{:<w$}   {:<12}   {:<15}   STATE", "NAME", "TYPE", "IP");
    for n in &state.nodes {
        let st = if alive(n.pid) { "running" } else { "stopped" };
        println!("{:<w$}   {:<12}   {:<15}   {st}", n.name, n.role, n.ip);
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
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == needle.as_slice())
            && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

fn signal(pid: u32, sig: &str) {
    // kill(1) keeps this file free of unsafe code; ESRCH is fine.
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn destroy(args: &NameArgs) -> anyhow::Result<()> {
    let (dir, state) = load_state(args)?;
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
    fn durations() {
        assert_eq!(humantime_secs("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(humantime_secs("2m"), Ok(Duration::from_secs(120)));
        assert!(humantime_secs("soon").is_err());
    }
}
