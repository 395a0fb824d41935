//! Lifecycle: `reboot`, `shutdown`, `reset`, `rollback`, `upgrade` (the
//! legacy MachineService API), `meta` (the META keys upgrades and boot
//! read) and `health` (ClusterService).
//!
//! `--wait` (on by default, as upstream) polls every node at once: a
//! reboot is over when the node answers with a new kernel boot ID or, when
//! the boot ID cannot be read (Read is for os:admin), when it answers
//! again after having been unreachable; for `reboot` and `upgrade`, as
//! upstream's, only once its MachineStatus then says it is running and
//! ready. A shutdown is over when the node stops answering. Progress goes
//! to stderr.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use api::machine::{
    MetaDeleteRequest, MetaWriteRequest, ReadRequest, RebootRequest, ResetPartitionSpec,
    ResetRequest, RollbackRequest, ShutdownRequest, UpgradeRequest, reboot_request, reset_request,
    upgrade_request,
};
use tokio::time::Instant;

use crate::cli::{
    GlobalArgs, HealthArgs, MetaArgs, MetaCommand, RebootArgs, RebootMode, ResetArgs, ShutdownArgs,
    UpgradeArgs, UpgradeRebootMode, WipeMode,
};
use crate::client::{self, BOOT_ID_PATH, Client, NodePolicy, Options};
use crate::output::{self, Table};

/// How long one liveness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between liveness probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

fn parse_timeout(flag: &str, text: &str) -> anyhow::Result<Duration> {
    output::parse_go_duration(text).map_err(|err| anyhow!("--{flag}: {err}"))
}

/// Whether the node answers Version (within the probe timeout).
async fn alive(client: &Client) -> bool {
    let probe = client.try_call(|channel| {
        let request = client.request(());
        async move { client::machine(channel).version(request).await }
    });
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
}

/// The node's kernel boot ID, if it can be read.
async fn read_boot_id(client: &Client) -> Option<String> {
    let mut stream = client
        .try_call(|channel| {
            let request = client.request(ReadRequest {
                path: BOOT_ID_PATH.to_owned(),
            });
            async move { client::machine(channel).read(request).await }
        })
        .await
        .ok()?;
    let mut bytes = Vec::new();
    while let Ok(Some(data)) = stream.message().await {
        if client::node_error(data.metadata.as_ref()).is_some() {
            return None;
        }
        bytes.extend_from_slice(&data.bytes);
    }
    let id = String::from_utf8_lossy(&bytes).trim().to_owned();
    (!id.is_empty()).then_some(id)
}

/// [`read_boot_id`] within the probe timeout.
async fn boot_id(client: &Client) -> Option<String> {
    tokio::time::timeout(PROBE_TIMEOUT, read_boot_id(client))
        .await
        .ok()
        .flatten()
}

/// The boot IDs of the targeted nodes before an action (`None` where
/// unreadable), one per node client.
async fn boot_ids(nodes: &[Client]) -> Vec<Option<String>> {
    let mut ids = Vec::with_capacity(nodes.len());
    for node in nodes {
        ids.push(boot_id(node).await);
    }
    ids
}

/// Waits until `node` has rebooted (see the module docs) or `deadline`
/// passes. With the boot ID from before, only a new boot ID counts: a
/// probe that fails while the node drains, or while the endpoint in front
/// of it reboots, is no reboot. Without it (Read is for os:admin only),
/// being seen down and answering again counts.
async fn wait_one_reboot(
    node: &Client,
    before: Option<&str>,
    ready: bool,
    deadline: Instant,
) -> anyhow::Result<()> {
    let name = node.default_node().to_owned();
    eprintln!("{name}: waiting for the node to reboot");
    let mut seen_down = false;
    loop {
        if Instant::now() >= deadline {
            bail!("{name}: timed out waiting for the node to reboot");
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
        if !alive(node).await {
            if !seen_down {
                eprintln!("{name}: node is down");
            }
            seen_down = true;
            continue;
        }
        let rebooted = match (before, boot_id(node).await) {
            (Some(before), Some(now)) => before != now,
            _ => seen_down,
        };
        if rebooted {
            eprintln!("{name}: node is back up");
            if !ready {
                return Ok(());
            }
            return wait_ready(node, &name, deadline).await;
        }
    }
}

/// Where the node's boot stands, as its MachineStatus says.
enum Boot {
    /// Its stage, whether it is ready, and what it still waits for.
    Status(String, bool, Vec<String>),
    /// The node serves no MachineStatus (NotFound or Unimplemented).
    Unknown,
    /// It could not be asked right now.
    Unreachable,
}

async fn machine_status(node: &Client) -> Boot {
    let read = super::get::get_one(
        node,
        "runtime",
        "MachineStatuses.runtime.talos.dev",
        "machine",
    );
    let resource = match tokio::time::timeout(PROBE_TIMEOUT, read).await {
        Ok(Ok(Some(resource))) => resource,
        Ok(Ok(None)) => return Boot::Unknown,
        Ok(Err(client::CallError::Status(status)))
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::Unimplemented
            ) =>
        {
            return Boot::Unknown;
        }
        _ => return Boot::Unreachable,
    };
    let Some(spec) = resource
        .spec
        .and_then(|s| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&s.yaml_spec).ok())
    else {
        return Boot::Unknown;
    };
    let Some(stage) = spec.get("stage").and_then(serde_yaml_ng::Value::as_str) else {
        return Boot::Unknown;
    };
    let status = spec.get("status");
    let ready = status
        .and_then(|s| s.get("ready"))
        .and_then(serde_yaml_ng::Value::as_bool)
        .unwrap_or(false);
    let unmet = status
        .and_then(|s| s.get("unmetConditions"))
        .and_then(serde_yaml_ng::Value::as_sequence)
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c.get("name").and_then(serde_yaml_ng::Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Boot::Status(stage.to_owned(), ready, unmet)
}

/// Waits, after a reboot, until the node says it is running and ready,
/// printing what it still waits for whenever that changes. A node that
/// serves no MachineStatus (an older node) is taken as up, and says so.
async fn wait_ready(node: &Client, name: &str, deadline: Instant) -> anyhow::Result<()> {
    let mut last: Option<(String, Vec<String>)> = None;
    loop {
        match machine_status(node).await {
            Boot::Status(stage, true, _) if stage == "running" => {
                eprintln!("{name}: node is ready");
                return Ok(());
            }
            Boot::Status(stage, _, unmet) => {
                let now = (stage, unmet);
                if last.as_ref() != Some(&now) {
                    let waiting = if now.1.is_empty() {
                        String::new()
                    } else {
                        format!(", waiting for {}", now.1.join(", "))
                    };
                    eprintln!("{name}: stage {}{waiting}", now.0);
                    last = Some(now);
                }
            }
            Boot::Unknown => {
                eprintln!("{name}: the node reports no machine status; taken as up");
                return Ok(());
            }
            Boot::Unreachable => {}
        }
        if Instant::now() >= deadline {
            bail!("{name}: timed out waiting for the node to be ready");
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Waits until every node has rebooted, all at once (a node that went down
/// and came back while another was watched is not missed), within one
/// `timeout` for all. Every node that did not is named.
async fn wait_for_reboot(
    nodes: &[Client],
    before: &[Option<String>],
    ready: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let waits = nodes
        .iter()
        .zip(before)
        .map(|(node, before)| wait_one_reboot(node, before.as_deref(), ready, deadline));
    joined(futures_util::future::join_all(waits).await)
}

/// Waits until every node stops answering, all at once, within `timeout`.
async fn wait_for_down(nodes: &[Client], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let waits = nodes.iter().map(|node| async move {
        let name = node.default_node().to_owned();
        eprintln!("{name}: waiting for the node to go down");
        loop {
            if Instant::now() >= deadline {
                bail!("{name}: timed out waiting for the node to go down");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
            if !alive(node).await {
                eprintln!("{name}: node is down");
                return Ok(());
            }
        }
    });
    joined(futures_util::future::join_all(waits).await)
}

/// One error naming every failure, or Ok.
fn joined(results: Vec<anyhow::Result<()>>) -> anyhow::Result<()> {
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("\n"))
    }
}

/// Ends an action: the nodes that refused it are reported whatever the
/// wait for the others said, then the wait's error, if any, is the result.
fn finish(waited: anyhow::Result<()>, failed: &[(String, String)]) -> anyhow::Result<()> {
    let reported = client::report(failed);
    waited.and(reported)
}

/// The per-node clients of the nodes that accepted an action.
fn accepted(client: &Client, ok_nodes: &[String]) -> Vec<Client> {
    client
        .per_node()
        .into_iter()
        .filter(|node| ok_nodes.iter().any(|ok| ok == node.default_node()))
        .collect()
}

/// Runs `talosctl reboot`.
///
/// # Errors
/// The client setup or the call failed, a node failed, or waiting timed out.
pub async fn reboot(global: &GlobalArgs, args: &RebootArgs) -> anyhow::Result<()> {
    let timeout = parse_timeout("timeout", &args.timeout)?;
    let client = Client::connect(global, Options::default())?;
    let mode = match args.mode {
        RebootMode::Default => reboot_request::Mode::Default,
        RebootMode::Powercycle => reboot_request::Mode::Powercycle,
        RebootMode::Force => reboot_request::Mode::Force,
    };
    let nodes = client.per_node();
    let before = if args.wait {
        boot_ids(&nodes).await
    } else {
        Vec::new()
    };
    let request = RebootRequest { mode: mode as i32 };
    let response = client
        .call(|channel| {
            let request = client.request(request);
            async move { client::machine(channel).reboot(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let waited = if args.wait {
        let ok: Vec<String> = results.ok.iter().map(|(node, _)| node.clone()).collect();
        let (waiting, before): (Vec<Client>, Vec<Option<String>>) = nodes
            .into_iter()
            .zip(before)
            .filter(|(node, _)| ok.iter().any(|name| name == node.default_node()))
            .unzip();
        wait_for_reboot(&waiting, &before, true, timeout).await
    } else {
        Ok(())
    };
    finish(waited, &results.failed)
}

/// Runs `talosctl shutdown`.
///
/// # Errors
/// The client setup or the call failed, a node failed, or waiting timed out.
pub async fn shutdown(global: &GlobalArgs, args: &ShutdownArgs) -> anyhow::Result<()> {
    let timeout = parse_timeout("timeout", &args.timeout)?;
    let client = Client::connect(global, Options::default())?;
    let request = ShutdownRequest { force: args.force };
    let response = client
        .call(|channel| {
            let request = client.request(request);
            async move { client::machine(channel).shutdown(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let waited = if args.wait {
        let ok: Vec<String> = results.ok.iter().map(|(node, _)| node.clone()).collect();
        wait_for_down(&accepted(&client, &ok), timeout).await
    } else {
        Ok(())
    };
    finish(waited, &results.failed)
}

/// Whether a reset by these flags wipes the node's config: STATE named,
/// or the whole system disk. Such a node comes back (if it reboots) in
/// maintenance mode, where the mTLS probes of `--wait` cannot reach it.
#[must_use]
pub fn reset_loses_config(args: &ResetArgs) -> bool {
    if args.system_labels_to_wipe.is_empty() {
        args.wipe_mode != WipeMode::UserDisks
    } else {
        args.system_labels_to_wipe.iter().any(|l| l == "STATE")
    }
}

/// The reset request for the flags.
#[must_use]
pub fn build_reset_request(args: &ResetArgs) -> ResetRequest {
    let mode = match args.wipe_mode {
        WipeMode::All => reset_request::WipeMode::All,
        WipeMode::SystemDisk => reset_request::WipeMode::SystemDisk,
        WipeMode::UserDisks => reset_request::WipeMode::UserDisks,
    };
    ResetRequest {
        graceful: args.graceful,
        reboot: args.reboot,
        system_partitions_to_wipe: args
            .system_labels_to_wipe
            .iter()
            .map(|label| ResetPartitionSpec {
                label: label.clone(),
                wipe: true,
            })
            .collect(),
        user_disks_to_wipe: args.user_disks_to_wipe.clone(),
        mode: mode as i32,
    }
}

/// Runs `talosctl reset`.
///
/// # Errors
/// The client setup or the call failed, a node failed, or waiting timed out.
pub async fn reset(global: &GlobalArgs, args: ResetArgs) -> anyhow::Result<()> {
    let timeout = parse_timeout("timeout", &args.timeout)?;
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let before = if args.wait && args.reboot {
        boot_ids(&nodes).await
    } else {
        Vec::new()
    };
    let request = build_reset_request(&args);
    let response = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).reset(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let waited = if args.wait {
        let ok: Vec<String> = results.ok.iter().map(|(node, _)| node.clone()).collect();
        if args.reboot && reset_loses_config(&args) {
            // It comes back without its config: down is as far as this
            // client's certificate can follow it.
            let down = wait_for_down(&accepted(&client, &ok), timeout).await;
            if down.is_ok() {
                for node in &ok {
                    eprintln!(
                        "{node}: reset; it comes back in maintenance mode, without its config \
                         (talosctl -n {node} version --insecure)"
                    );
                }
            }
            down
        } else if args.reboot {
            let (waiting, before): (Vec<Client>, Vec<Option<String>>) = nodes
                .into_iter()
                .zip(before)
                .filter(|(node, _)| ok.iter().any(|name| name == node.default_node()))
                .unzip();
            wait_for_reboot(&waiting, &before, false, timeout).await
        } else {
            wait_for_down(&accepted(&client, &ok), timeout).await
        }
    } else {
        Ok(())
    };
    finish(waited, &results.failed)
}

/// Runs `talosctl rollback`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn rollback(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = client
        .call(|channel| {
            let request = client.request(RollbackRequest {});
            async move { client::machine(channel).rollback(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    client::report(&results.failed)
}

/// A META key as `talosctl meta` takes it, 0 to 255: decimal, with a 0x,
/// 0o or 0b prefix, or octal after a bare leading 0.
fn parse_meta_key(text: &str) -> anyhow::Result<u32> {
    let lower = text.to_ascii_lowercase();
    // Go's ParseUint(s, 0, 8): a prefix picks the base, a bare leading 0
    // means octal, and there is no sign.
    let (digits, radix) = match lower.get(..2) {
        Some("0x") => (&lower[2..], 16),
        Some("0o") => (&lower[2..], 8),
        Some("0b") => (&lower[2..], 2),
        _ if lower.len() > 1 && lower.starts_with('0') => (&lower[1..], 8),
        _ => (lower.as_str(), 10),
    };
    // from_str_radix would take a sign.
    let unsigned = digits.chars().all(|c| c.is_ascii_alphanumeric());
    unsigned
        .then(|| u8::from_str_radix(digits, radix).ok())
        .flatten()
        .map(u32::from)
        .ok_or_else(|| {
            anyhow!(
                "META key {text:?}: expected a number from 0 to 255 (decimal, or hex like 0x0c)"
            )
        })
}

/// Runs `talosctl meta write|delete`.
///
/// # Errors
/// A bad key, the client setup or the call failed, or a node failed.
pub async fn meta(global: &GlobalArgs, args: MetaArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let failed = match args.command {
        MetaCommand::Write { key, value } => {
            let key = parse_meta_key(&key)?;
            let value = value.into_bytes();
            let response = client
                .call(|channel| {
                    let request = client.request(MetaWriteRequest {
                        key,
                        value: value.clone(),
                    });
                    async move { client::machine(channel).meta_write(request).await }
                })
                .await?;
            client.split(response.messages).failed
        }
        MetaCommand::Delete { key } => {
            let key = parse_meta_key(&key)?;
            let response = client
                .call(|channel| {
                    let request = client.request(MetaDeleteRequest { key });
                    async move { client::machine(channel).meta_delete(request).await }
                })
                .await?;
            client.split(response.messages).failed
        }
    };
    client::report(&failed)
}

/// The slot a node booted (`talos.slot=` in its `/proc/cmdline`), if it
/// can be read.
async fn booted_slot(client: &Client) -> Option<String> {
    let mut stream = client
        .try_call(|channel| {
            let request = client.request(ReadRequest {
                path: "/proc/cmdline".to_owned(),
            });
            async move { client::machine(channel).read(request).await }
        })
        .await
        .ok()?;
    let mut bytes = Vec::new();
    while let Ok(Some(data)) = stream.message().await {
        bytes.extend_from_slice(&data.bytes);
    }
    String::from_utf8_lossy(&bytes)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("talos.slot=").map(str::to_owned))
}

/// The version tag a node reports.
async fn version_tag(client: &Client) -> Option<String> {
    let reply = client
        .try_call(|channel| {
            let request = client.request(());
            async move { client::machine(channel).version(request).await }
        })
        .await
        .ok()?;
    reply
        .messages
        .into_iter()
        .next()
        .and_then(|m| m.version)
        .map(|v| v.tag)
}

/// Streams one node's LifecycleService.Upgrade: progress on a spinner
/// (plain lines when stderr is not a terminal). `Ok(None)` when the node
/// does not serve it (an older node: use the legacy call).
async fn lifecycle_upgrade(node: &Client, image: &str) -> anyhow::Result<Option<()>> {
    use api::machine::lifecycle_service_install_progress::Response as P;
    let name = node.default_node().to_owned();
    let request = api::machine::LifecycleServiceUpgradeRequest {
        containerd: None,
        source: Some(api::machine::InstallArtifactsSource {
            image_name: image.to_owned(),
        }),
    };
    let stream = node
        .try_call(|channel| {
            let request = node.request(request.clone());
            async move { client::lifecycle(channel).upgrade(request).await }
        })
        .await;
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(client::CallError::Status(status)) if status.code() == tonic::Code::Unimplemented => {
            return Ok(None);
        }
        Err(e) => return Err(node.call_error(e)),
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix}: {wide_msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_prefix(name.clone());
    bar.enable_steady_tick(Duration::from_millis(120));
    let plain = bar.is_hidden();
    let mut last = String::new();
    let code = loop {
        match stream.message().await {
            Ok(Some(reply)) => match reply.progress.and_then(|p| p.response) {
                Some(P::Message(line)) => {
                    if plain {
                        eprintln!("{name}: {line}");
                    } else {
                        bar.println(format!("{name}: {line}"));
                    }
                    bar.set_message(line.clone());
                    last = line;
                }
                Some(P::ExitCode(code)) => break code,
                None => {}
            },
            Ok(None) => {
                bar.finish_and_clear();
                bail!("{name}: the upgrade stream ended without an exit code (last: {last})");
            }
            Err(status) => {
                bar.finish_and_clear();
                return Err(node.status_error(&status));
            }
        }
    };
    bar.finish_and_clear();
    if code != 0 {
        let last = last.strip_prefix("error: ").unwrap_or(&last);
        bail!("{name}: upgrade failed (exit code {code}): {last}");
    }
    Ok(Some(()))
}

/// Runs `talosctl upgrade`: LifecycleService.Upgrade with its progress,
/// then Reboot, as upstream v1.13+; the legacy MachineService.Upgrade for
/// `--stage`, `--preserve`, `--force`, or a node that lacks the new API.
/// With `--wait`, waits for each node to come back and checks that it
/// runs the other slot: a node back on its old slot had its upgrade fail
/// to boot, and that is an error.
///
/// # Errors
/// The client setup or a call failed, a node failed, or waiting timed out.
pub async fn upgrade(global: &GlobalArgs, args: UpgradeArgs) -> anyhow::Result<()> {
    let timeout = parse_timeout("timeout", &args.timeout)?;
    let client = Client::connect(global, Options::default())?;
    if args.stage || args.preserve || args.force {
        return legacy_upgrade(&client, args, timeout).await;
    }
    let nodes = client.per_node();
    let mut upgraded = Vec::new();
    let mut legacy = Vec::new();
    let mut failures = Vec::new();
    for node in nodes {
        let slot = booted_slot(&node).await;
        let boot = boot_id(&node).await;
        match lifecycle_upgrade(&node, &args.image).await {
            Ok(Some(())) => upgraded.push((node, slot, boot)),
            // Only the nodes that do not know the new call take the old
            // one: the others' slots are written already.
            Ok(None) => legacy.push(node.default_node().to_owned()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let mut rebooting = Vec::new();
    for (node, slot, boot) in upgraded {
        let name = node.default_node().to_owned();
        let response = node
            .call(|channel| {
                let request = node.request(RebootRequest { mode: 0 });
                async move { client::machine(channel).reboot(request).await }
            })
            .await;
        match response {
            Ok(_) => {
                eprintln!("{name}: rebooting into the new slot");
                rebooting.push((node, slot, boot));
            }
            // Not rebooting: nothing to wait for.
            Err(e) => failures.push(e.to_string()),
        }
    }
    // After those reboots, so that waiting for the legacy nodes does not
    // keep the others on their old slot.
    if let Some(legacy) = client.only(&legacy)
        && let Err(e) = legacy_upgrade(&legacy, args.clone(), timeout).await
    {
        failures.push(e.to_string());
    }
    if args.wait {
        // All nodes at once, within one timeout; a node that times out is
        // one failure among the others.
        let deadline = Instant::now() + timeout;
        let waits = rebooting.iter().map(|(node, slot, boot)| async move {
            let name = node.default_node().to_owned();
            wait_one_reboot(node, boot.as_deref(), true, deadline).await?;
            let now = tokio::time::timeout(PROBE_TIMEOUT, booted_slot(node))
                .await
                .ok()
                .flatten();
            let tag = tokio::time::timeout(PROBE_TIMEOUT, version_tag(node))
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            if now.is_some() && now == *slot {
                bail!(
                    "{name}: the upgrade did not boot: the node came back on its old slot {} ({tag}); see `talosctl events`",
                    now.unwrap_or_default()
                );
            }
            println!(
                "{name}: upgraded: running {tag} from slot {}",
                now.unwrap_or_else(|| "?".into())
            );
            Ok(())
        });
        if let Err(e) = joined(futures_util::future::join_all(waits).await) {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("\n"))
    }
}

/// `talosctl upgrade` through the legacy MachineService.Upgrade.
// MachineService.Upgrade is deprecated upstream (removal in v1.18) but is
// what older nodes and the staged flow speak.
#[allow(deprecated)]
async fn legacy_upgrade(
    client: &Client,
    args: UpgradeArgs,
    timeout: Duration,
) -> anyhow::Result<()> {
    let nodes = client.per_node();
    let before = if args.wait {
        boot_ids(&nodes).await
    } else {
        Vec::new()
    };
    let reboot_mode = match args.reboot_mode {
        UpgradeRebootMode::Default => upgrade_request::RebootMode::Default,
        UpgradeRebootMode::Powercycle => upgrade_request::RebootMode::Powercycle,
    };
    let request = UpgradeRequest {
        image: args.image,
        preserve: args.preserve,
        stage: args.stage,
        force: args.force,
        reboot_mode: reboot_mode as i32,
    };
    let response = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).upgrade(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let started = output::system_time_string(SystemTime::now());
    let mut table = Table::new(&["NODE", "ACK", "STARTED"]);
    for (node, reply) in &results.ok {
        table.push(vec![node.clone(), reply.ack.clone(), started.clone()]);
    }
    table.print()?;
    if args.wait && args.stage {
        // A staged upgrade waits for a reboot someone else asks for.
        for (node, _) in &results.ok {
            eprintln!("{node}: upgrade staged: it is applied at the next reboot");
        }
        return client::report(&results.failed);
    }
    let waited = if args.wait {
        let ok: Vec<String> = results.ok.iter().map(|(node, _)| node.clone()).collect();
        let (waiting, before): (Vec<Client>, Vec<Option<String>>) = nodes
            .into_iter()
            .zip(before)
            .filter(|(node, _)| ok.iter().any(|name| name == node.default_node()))
            .unzip();
        wait_for_reboot(&waiting, &before, true, timeout).await
    } else {
        Ok(())
    };
    finish(waited, &results.failed)
}

/// Runs `talosctl health` (the check runs on the node, which reports its
/// progress; each message is printed on stderr).
///
/// # Errors
/// The client setup or the call failed, or the check failed.
pub async fn health(global: &GlobalArgs, args: HealthArgs) -> anyhow::Result<()> {
    if !args.server {
        bail!(
            "--server=false: the client-side checks are upstream's Kubernetes checks, and this OS runs no Kubernetes; the node runs the checks (the default)"
        );
    }
    if args.run_e2e {
        bail!("--run-e2e: the e2e tests are Kubernetes', and this OS runs no Kubernetes");
    }
    let mut control_plane_nodes = args.cluster.control_plane_nodes;
    control_plane_nodes.extend(args.init_node);
    let wait_timeout = parse_timeout("wait-timeout", &args.wait_timeout)?;
    let client = Client::connect(global, Options::nodes(NodePolicy::Optional("health")))?;
    let request = api::cluster::HealthCheckRequest {
        wait_timeout: Some(output::proto_duration(wait_timeout)),
        cluster_info: Some(api::cluster::ClusterInfo {
            control_plane_nodes,
            worker_nodes: args.cluster.worker_nodes,
            force_endpoint: args.cluster.k8s_endpoint.unwrap_or_default(),
        }),
    };
    let mut stream = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::cluster(channel).health_check(request).await }
        })
        .await?;
    match follow_health(&mut stream).await {
        Ok(()) => Ok(()),
        Err(HealthEnd::Node(error)) => bail!("healthcheck error: {error}"),
        Err(HealthEnd::Status(status)) => Err(client.status_error(&status)),
    }
}

/// How a health check's progress stream ended other than with success.
pub(crate) enum HealthEnd {
    /// The node reported an error in a progress message.
    Node(String),
    /// The call failed.
    Status(tonic::Status),
}

/// Prints each progress message of a HealthCheck stream on stderr until
/// the stream ends.
pub(crate) async fn follow_health(
    stream: &mut tonic::Streaming<api::cluster::HealthCheckProgress>,
) -> Result<(), HealthEnd> {
    loop {
        match stream.message().await {
            Ok(Some(progress)) => {
                if let Some(error) = client::node_error(progress.metadata.as_ref()) {
                    return Err(HealthEnd::Node(error));
                }
                eprintln!("{}", progress.message);
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(HealthEnd::Status(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_keys_parse_like_upstream() {
        for (text, key) in [
            ("10", 10),
            ("0x0c", 12),
            ("0XFF", 255),
            ("0o17", 15),
            ("0b11", 3),
            ("012", 10),
            ("0", 0),
        ] {
            assert_eq!(parse_meta_key(text).expect(text), key, "{text}");
        }
        for bad in ["256", "0x100", "-1", "+5", "", "0x", "twelve", "09"] {
            let err = parse_meta_key(bad).expect_err(bad).to_string();
            assert!(err.contains("from 0 to 255"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_wait_that_fails_keeps_the_refusals_and_its_own_error() {
        let failed = vec![("10.5.0.3".to_owned(), "permission denied".to_owned())];
        let err = finish(Err(anyhow!("10.5.0.2: timed out")), &failed).expect_err("failed");
        assert_eq!(err.to_string(), "10.5.0.2: timed out");
        assert!(finish(Ok(()), &failed).is_err());
        assert!(finish(Ok(()), &[]).is_ok());
    }

    #[test]
    fn resets_that_wipe_the_config_are_known() {
        let args = |labels: &[&str], mode| ResetArgs {
            graceful: true,
            reboot: true,
            system_labels_to_wipe: labels.iter().map(|&l| l.to_owned()).collect(),
            user_disks_to_wipe: Vec::new(),
            wipe_mode: mode,
            wait: true,
            timeout: "30m".into(),
        };
        assert!(reset_loses_config(&args(&[], WipeMode::All)));
        assert!(reset_loses_config(&args(&[], WipeMode::SystemDisk)));
        assert!(!reset_loses_config(&args(&[], WipeMode::UserDisks)));
        assert!(reset_loses_config(&args(
            &["STATE", "EPHEMERAL"],
            WipeMode::All
        )));
        assert!(!reset_loses_config(&args(&["EPHEMERAL"], WipeMode::All)));
    }

    #[test]
    fn reset_flags_to_request() {
        let args = ResetArgs {
            graceful: false,
            reboot: true,
            system_labels_to_wipe: vec!["STATE".into(), "EPHEMERAL".into()],
            user_disks_to_wipe: vec!["/dev/sdb".into()],
            wipe_mode: WipeMode::SystemDisk,
            wait: false,
            timeout: "30m".into(),
        };
        let request = build_reset_request(&args);
        assert!(!request.graceful);
        assert!(request.reboot);
        assert_eq!(request.mode, reset_request::WipeMode::SystemDisk as i32);
        assert_eq!(
            request
                .system_partitions_to_wipe
                .iter()
                .map(|spec| (spec.label.as_str(), spec.wipe))
                .collect::<Vec<_>>(),
            [("STATE", true), ("EPHEMERAL", true)]
        );
        assert_eq!(request.user_disks_to_wipe, ["/dev/sdb"]);
    }
}
