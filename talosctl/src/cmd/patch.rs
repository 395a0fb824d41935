//! `talosctl patch machineconfig` and `talosctl edit machineconfig`: change
//! a node's config in place.
//!
//! As upstream: each node's own config is read (the `MachineConfigs`
//! resource, so the caller needs os:admin), changed (patches, or a person in
//! an editor) and sent back with `ApplyConfiguration` in the chosen mode.
//! Nodes are handled one after another, each with its own config.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, anyhow, bail};
use api::machine::ApplyConfigurationRequest;
use prost::Message as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{ApplyFlags, ApplyMode, EditArgs, GlobalArgs, PatchArgs};
use crate::client::{self, CallError, Client, Options};
use crate::cmd::apply::request_mode;
use crate::cmd::get::{self, Kind};
use crate::output;

/// The only resource type these commands change.
const MACHINE_CONFIG: &str = "MachineConfigs.config.talos.dev";
/// Its id: the config in effect.
const ACTIVE_ID: &str = "v1alpha1";

/// How a changed config is applied.
pub(crate) struct Apply {
    mode: ApplyMode,
    dry_run: bool,
    try_timeout: prost_types::Duration,
}

impl Apply {
    fn new(flags: &ApplyFlags) -> anyhow::Result<Apply> {
        let timeout =
            output::parse_go_duration(&flags.timeout).map_err(|err| anyhow!("--timeout: {err}"))?;
        Ok(Apply {
            mode: flags.mode,
            dry_run: flags.dry_run,
            try_timeout: output::proto_duration(timeout),
        })
    }

    /// Applied live, never staged or rebooted for.
    pub(crate) fn no_reboot() -> Apply {
        Apply {
            mode: ApplyMode::NoReboot,
            dry_run: false,
            try_timeout: output::proto_duration(std::time::Duration::from_secs(60)),
        }
    }
}

/// Checks that `resource` (and `id`) name the machine config, as the node
/// defines its types.
async fn resolve(client: &Client, resource: &str, id: Option<&str>) -> anyhow::Result<Kind> {
    let definitions = get::definitions(client)
        .await
        .map_err(|err| client.call_error(err))?;
    let kind = get::resolve_kind(&definitions, resource)?;
    if kind.type_ != MACHINE_CONFIG {
        bail!(
            "{} cannot be changed: only the machine config ({MACHINE_CONFIG}) can",
            kind.type_
        );
    }
    if let Some(id) = id.filter(|id| *id != ACTIVE_ID) {
        bail!("{MACHINE_CONFIG}/{id}: only {ACTIVE_ID:?}, the config in effect, can be changed");
    }
    Ok(kind)
}

/// The config in effect on the node `client` targets, from `namespace`
/// (where the node defines the machine config).
pub(crate) async fn fetch(client: &Client, namespace: &str) -> anyhow::Result<String> {
    let resource = get::get_one(client, namespace, MACHINE_CONFIG, ACTIVE_ID)
        .await
        .map_err(|e| client.call_error(e))?;
    let node = client.default_node();
    let spec = resource
        .and_then(|r| r.spec)
        .ok_or_else(|| anyhow!("{node}: the node returned no machine config"))?;
    let config = api::resource::config::MachineConfigSpec::decode(spec.proto_spec.as_slice())
        .with_context(|| format!("{node}: decoding the machine config the node returned"))?;
    if config.yaml_marshalled.is_empty() {
        bail!("{node}: the node returned an empty machine config");
    }
    String::from_utf8(config.yaml_marshalled)
        .map_err(|_| anyhow!("{node}: the machine config is not UTF-8 text"))
}

/// Sends `data` to the node `client` targets; prints its warnings and
/// returns what it did.
pub(crate) async fn send(client: &Client, data: &str, how: &Apply) -> Result<String, CallError> {
    let request = ApplyConfigurationRequest {
        data: data.as_bytes().to_vec(),
        mode: request_mode(how.mode) as i32,
        dry_run: how.dry_run,
        try_mode_timeout: Some(how.try_timeout),
    };
    let response = client
        .try_call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).apply_configuration(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    if let Some((_, error)) = results.failed.into_iter().next() {
        return Err(CallError::Status(tonic::Status::unknown(error)));
    }
    let mut said = String::new();
    for (_, reply) in results.ok {
        for warning in &reply.warnings {
            output::warning(warning);
        }
        said.push_str(reply.mode_details.trim_end());
    }
    Ok(said)
}

/// `--namespace`: the machine config, the one resource here that can be
/// patched or edited, is in `config`.
fn config_namespace(namespace: Option<&str>) -> anyhow::Result<()> {
    match namespace {
        None | Some("config") => Ok(()),
        Some(other) => bail!(
            "--namespace {other}: the machine config, the only resource that can be changed, is in namespace config"
        ),
    }
}

/// Applies the patch arguments (`@file` or inline, see
/// [`super::load_patch`]) in order to `config`.
///
/// # Errors
/// A patch cannot be read or does not apply.
pub fn patched_by_arguments(config: &str, arguments: &[String]) -> anyhow::Result<String> {
    let patches = arguments
        .iter()
        .map(|argument| super::load_patch(argument))
        .collect::<anyhow::Result<Vec<_>>>()?;
    patched(config, &patches)
}

/// Applies `patches` (their text, already loaded) in order to `config`.
///
/// # Errors
/// A patch does not apply, or the result is no valid config.
pub fn patched(config: &str, patches: &[String]) -> anyhow::Result<String> {
    let mut text = config.to_owned();
    for patch in patches {
        text = machinery::generate::apply_patch(&text, patch).map_err(|err| anyhow!("{err}"))?;
    }
    Ok(text)
}

/// Whether two configs say the same: equal once parsed and written back
/// (a patch rewrites the text even when it changes nothing), or equal as
/// text when either does not parse.
#[must_use]
pub fn same_config(a: &str, b: &str) -> bool {
    let written = |text: &str| {
        machinery::config::parse(text.as_bytes())
            .ok()
            .and_then(|c| c.to_yaml().ok())
    };
    match (written(a), written(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// What to print once a node took the config: the node's own words, after
/// a line naming it unless this was a dry run.
fn done(verb: &str, node: &str, said: &str, dry_run: bool) -> String {
    let mut text = String::new();
    if !dry_run {
        text.push_str(&format!(
            "{verb} {MACHINE_CONFIG}/{ACTIVE_ID} at the node {node}\n"
        ));
    }
    if !said.is_empty() {
        text.push_str(said);
        text.push('\n');
    }
    text
}

/// Runs `talosctl patch machineconfig`.
///
/// # Errors
/// No patch, the type is not the machine config, a patch does not apply,
/// or a call failed (nodes after a failed one are still patched).
pub async fn patch(global: &GlobalArgs, args: PatchArgs) -> anyhow::Result<()> {
    config_namespace(args.namespace.as_deref())?;
    let mut arguments = args.patches.clone();
    arguments.extend(args.patch_file.iter().map(|f| format!("@{}", f.display())));
    if arguments.is_empty() {
        bail!("no patches given: use --patch (-p) PATCH or --patch @FILE");
    }
    // Patches are read once, before any node is touched.
    let patches = arguments
        .iter()
        .map(|p| super::load_patch(p))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let how = Apply::new(&args.apply)?;
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let first = nodes.first().ok_or_else(|| anyhow!("no node to patch"))?;
    let kind = resolve(first, &args.resource, args.id.as_deref()).await?;
    let mut failed = Vec::new();
    for node_client in &nodes {
        let node = node_client.default_node().to_owned();
        let result = async {
            let config = fetch(node_client, &kind.namespace).await?;
            let data = patched(&config, &patches)?;
            if same_config(&config, &data) {
                return Ok("Apply was skipped: no changes detected.\n".to_owned());
            }
            let said = send(node_client, &data, &how)
                .await
                .map_err(|e| node_client.call_error(e))?;
            Ok::<_, anyhow::Error>(done("patched", &node, &said, how.dry_run))
        }
        .await;
        match result {
            Ok(text) => output::out(&text)?,
            Err(err) => failed.push((node, format!("{err:#}"))),
        }
    }
    client::report(&failed)
}

/// What a person sees first in the editor.
fn edit_header(node: &str, errors: &[String]) -> String {
    let mut text = format!(
        "# Editing {MACHINE_CONFIG}/{ACTIVE_ID} at node {node}.\n\
         # Lines beginning with '#' are ignored; an empty file cancels the edit.\n\
         # Saving applies the config; if it is refused, the file is reopened\n\
         # with the reason.\n"
    );
    for error in errors {
        for line in error.lines() {
            text.push_str("# ERROR: ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The config a person left in the editor: without the comment lines we
/// added at the top (exactly those when untouched, else every leading
/// comment line).
fn without_header(text: &str, header: &str) -> String {
    if let Some(rest) = text.strip_prefix(header) {
        return rest.to_owned();
    }
    text.lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Whether a config holds nothing but blank and comment lines.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// Whether the editor is running: interrupts are then the editor's.
static EDITOR_RUNNING: AtomicBool = AtomicBool::new(false);

/// Sets [`EDITOR_RUNNING`] for as long as it lives.
struct EditorRunning;

impl EditorRunning {
    fn start() -> EditorRunning {
        EDITOR_RUNNING.store(true, Ordering::SeqCst);
        EditorRunning
    }
}

impl Drop for EditorRunning {
    fn drop(&mut self) {
        EDITOR_RUNNING.store(false, Ordering::SeqCst);
    }
}

/// Runs the editor on `path` and waits for it.
async fn run_editor(path: &Path) -> anyhow::Result<()> {
    let editor = ["TALOS_EDITOR", "EDITOR", "VISUAL"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned());
    let mut words = editor.split_whitespace();
    let program = words
        .next()
        .ok_or_else(|| anyhow!("the editor command is empty"))?;
    let _running = EditorRunning::start();
    let status = tokio::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .await
        .with_context(|| format!("starting the editor {editor:?} (set TALOS_EDITOR or EDITOR)"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status})");
    }
    Ok(())
}

/// Runs `talosctl edit machineconfig`.
///
/// # Errors
/// The type is not the machine config, the editor failed, or a call
/// failed.
pub async fn edit(global: &GlobalArgs, args: EditArgs) -> anyhow::Result<()> {
    config_namespace(args.namespace.as_deref())?;
    let how = Apply::new(&args.apply)?;
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let first = nodes.first().ok_or_else(|| anyhow!("no node to edit"))?;
    let kind = resolve(first, &args.resource, args.id.as_deref()).await?;
    // Interrupts while the editor runs are the editor's (talosctl outlives
    // them); any other interrupt ends the edit, and with it the private
    // copy of the config.
    let mut interrupt =
        signal(SignalKind::interrupt()).context("taking over interrupts for the editor")?;
    let mut quit = signal(SignalKind::quit()).context("taking over SIGQUIT for the editor")?;
    for node_client in &nodes {
        let node = node_client.default_node().to_owned();
        let work = async {
            let original = fetch(node_client, &kind.namespace).await?;
            edit_node(node_client, &node, &original, &how).await
        };
        tokio::pin!(work);
        loop {
            // Signals first: one that came with the editor's exit is
            // judged while the editor still counts as running.
            tokio::select! {
                biased;
                _ = interrupt.recv() => {}
                _ = quit.recv() => {}
                done = &mut work => {
                    done?;
                    break;
                }
            }
            if !EDITOR_RUNNING.load(Ordering::SeqCst) {
                bail!("{node}: interrupted (an edit already sent may have been applied)");
            }
        }
    }
    Ok(())
}

/// One node's edit loop: edit, apply, and when the node refuses, edit
/// again with the reason shown, until the config is taken or left as it
/// was. When the edit ends without being applied, the person's changes
/// are kept in the private file and its path is printed.
async fn edit_node(client: &Client, node: &str, original: &str, how: &Apply) -> anyhow::Result<()> {
    // The config holds the cluster's keys: a private directory and file.
    let dir = tempfile::Builder::new()
        .prefix("talosctl-edit-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("creating a temporary directory for the editor")?;
    let path = dir.path().join("machineconfig.yaml");
    let mut errors: Vec<String> = Vec::new();
    let mut current = original.to_owned();
    // Hands the person's changes back when they cannot be applied.
    let keep = |dir: tempfile::TempDir, why: anyhow::Error| -> anyhow::Error {
        let kept = dir.keep();
        anyhow!(
            "{why:#}\nA copy of your changes has been stored to {}",
            kept.join("machineconfig.yaml").display()
        )
    };
    loop {
        let header = edit_header(node, &errors);
        machinery::fsutil::write_atomic(&path, format!("{header}{current}").as_bytes(), 0o600)?;
        if let Err(err) = run_editor(&path).await {
            // Keep whatever the person changed before the editor failed.
            let left = std::fs::read_to_string(&path)
                .map(|t| without_header(&t, &header))
                .unwrap_or_default();
            return Err(if left == original {
                err
            } else {
                keep(dir, err)
            });
        }
        let edited = without_header(
            &std::fs::read_to_string(&path).context("reading the edited config back")?,
            &header,
        );
        if is_blank(&edited) {
            output::out("Apply was skipped: empty file.\n")?;
            return Ok(());
        }
        if edited == original {
            output::out("Apply was skipped: no changes detected.\n")?;
            return Ok(());
        }
        if edited == current {
            let why = anyhow!(
                "{node}: edit cancelled, no valid changes were saved: {}",
                errors.join("; ")
            );
            return Err(keep(dir, why));
        }
        match send(client, &edited, how).await {
            Ok(said) => return output::out(&done("edited", node, &said, how.dry_run)),
            Err(CallError::Status(status)) => {
                errors = vec![client::rpc_error_text(&status)];
                current = edited;
            }
            Err(err) => {
                // Write the edit back so that the kept copy has it.
                machinery::fsutil::write_atomic(&path, edited.as_bytes(), 0o600)?;
                return Err(keep(dir, client.call_error(err)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_apply_in_order() {
        let now = std::time::SystemTime::now();
        let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
        let config = machinery::generate::generate(
            &bundle,
            &machinery::generate::GenOptions::new("patch", "https://127.0.0.1:6443"),
            now,
        )
        .expect("configs")
        .worker_yaml;
        let out = patched(
            &config,
            &[
                "machine: {network: {hostname: b}}".to_owned(),
                "machine: {network: {hostname: c}}".to_owned(),
            ],
        )
        .expect("patched");
        assert!(out.contains("hostname: c"), "{out}");
        assert!(!same_config(&config, &out));
        // A patch that changes nothing rewrites the text, but says the same.
        let again =
            patched(&out, &["machine: {network: {hostname: c}}".to_owned()]).expect("patched");
        assert!(same_config(&out, &again));
        let err =
            patched(&config, &["machine: {networkz: {}}".to_owned()]).expect_err("unknown key");
        assert!(format!("{err:#}").contains("networkz"), "{err:#}");
    }

    #[test]
    fn the_header_is_stripped_and_errors_are_shown() {
        let header = edit_header("10.5.0.2", &["bad key\nsecond line".to_owned()]);
        assert!(
            header.contains("# ERROR: bad key\n# ERROR: second line\n"),
            "{header}"
        );
        let text = format!("{header}# a comment of the config\nversion: v1alpha1\nmachine: {{}}\n");
        assert_eq!(
            without_header(&text, &header),
            "# a comment of the config\nversion: v1alpha1\nmachine: {}\n"
        );
        // A header the person changed: every leading comment line goes.
        let text = "# mine\n# ERROR: old\nversion: v1alpha1\n";
        assert_eq!(without_header(text, &header), "version: v1alpha1\n");
        assert!(is_blank("# only\n\n  # comments\n"));
        assert!(!is_blank("# a\nversion: v1alpha1\n"));
    }
}
