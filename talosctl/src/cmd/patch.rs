//! `talosctl patch machineconfig` and `talosctl edit machineconfig`: change
//! a node's config in place.
//!
//! As upstream: each node's own config is read (the `MachineConfigs`
//! resource, so the caller needs os:admin), changed (patches, or a person in
//! an editor) and sent back with `ApplyConfiguration` in the chosen mode.
//! Nodes are handled one after another, each with its own config.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use api::cosi::resource as pb;
use api::machine::ApplyConfigurationRequest;
use prost::Message as _;

use crate::cli::{ApplyMode, EditArgs, GlobalArgs, PatchArgs};
use crate::client::{self, CallError, Client, Options};
use crate::cmd::apply::request_mode;
use crate::cmd::get::{self, Kind};
use crate::output;

/// The only resource type these commands change.
const MACHINE_CONFIG: &str = "MachineConfigs.config.talos.dev";
/// Its id: the config in effect.
const ACTIVE_ID: &str = "v1alpha1";

/// How a changed config is applied.
struct Apply {
    mode: ApplyMode,
    dry_run: bool,
    try_timeout: prost_types::Duration,
}

impl Apply {
    fn new(mode: ApplyMode, dry_run: bool, timeout: &str) -> anyhow::Result<Apply> {
        let timeout =
            output::parse_go_duration(timeout).map_err(|err| anyhow!("--timeout: {err}"))?;
        Ok(Apply {
            mode,
            dry_run,
            try_timeout: output::proto_duration(timeout),
        })
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

/// The config in effect on the node `client` targets.
async fn fetch(client: &Client, kind: &Kind) -> Result<Vec<u8>, CallError> {
    let reply = client
        .try_call(|channel| {
            let request = client.request(pb::GetRequest {
                namespace: kind.namespace.clone(),
                r#type: kind.type_.clone(),
                id: ACTIVE_ID.to_owned(),
                options: None,
            });
            async move { get::state(channel).get(request).await }
        })
        .await?;
    let spec = reply.resource.and_then(|r| r.spec).unwrap_or_default();
    let config = api::resource::config::MachineConfigSpec::decode(spec.proto_spec.as_slice())
        .map_err(|e| CallError::Status(tonic::Status::internal(format!("machine config: {e}"))))?;
    Ok(config.yaml_marshalled)
}

/// Sends `data` to the node `client` targets; prints its warnings and what
/// it did.
async fn send(client: &Client, data: Vec<u8>, how: &Apply) -> Result<String, CallError> {
    let request = ApplyConfigurationRequest {
        data,
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

/// Applies `patches` in order to `config`.
///
/// # Errors
/// The config is not text, or a patch does not apply.
pub fn patched(config: &[u8], patches: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut text = String::from_utf8(config.to_vec())
        .map_err(|_| anyhow!("the node's machine config is not UTF-8 text"))?;
    for patch in patches {
        let patch = super::load_patch(patch)?;
        text = machinery::generate::apply_patch(&text, &patch).map_err(|err| anyhow!("{err}"))?;
    }
    Ok(text.into_bytes())
}

/// Runs `talosctl patch machineconfig`.
///
/// # Errors
/// No patch, the type is not the machine config, a patch does not apply,
/// or a call failed (nodes after a failed one are still patched).
pub async fn patch(global: &GlobalArgs, args: PatchArgs) -> anyhow::Result<()> {
    if args.patches.is_empty() {
        bail!("no patches given: use --patch (-p) PATCH or --patch @FILE");
    }
    // Patches are read once, before any node is touched.
    let patches = args
        .patches
        .iter()
        .map(|p| super::load_patch(p))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let how = Apply::new(args.mode, args.dry_run, &args.timeout)?;
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let first = nodes.first().ok_or_else(|| anyhow!("no node to patch"))?;
    let kind = resolve(first, &args.resource, args.id.as_deref()).await?;
    let mut failed = Vec::new();
    for node_client in &nodes {
        let node = node_client.default_node().to_owned();
        let result = async {
            let config = fetch(node_client, &kind)
                .await
                .map_err(|e| node_client.call_error(e))?;
            let data = patched(&config, &patches)?;
            send(node_client, data, &how)
                .await
                .map_err(|e| node_client.call_error(e))
        }
        .await;
        match result {
            Ok(said) => {
                let mut text = format!("patched {MACHINE_CONFIG}/{ACTIVE_ID} at the node {node}\n");
                if !said.is_empty() {
                    text.push_str(&said);
                    text.push('\n');
                }
                output::out(&text)?;
            }
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

/// Runs the editor on `path` and waits for it.
fn run_editor(path: &Path) -> anyhow::Result<()> {
    let editor = ["TALOS_EDITOR", "EDITOR", "VISUAL"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned());
    let mut words = editor.split_whitespace();
    let program = words
        .next()
        .ok_or_else(|| anyhow!("the editor command is empty"))?;
    let status = std::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .with_context(|| format!("starting the editor {editor:?} (set TALOS_EDITOR or EDITOR)"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}); nothing was applied");
    }
    Ok(())
}

/// Runs `talosctl edit machineconfig`.
///
/// # Errors
/// The type is not the machine config, the editor failed, or a call
/// failed.
pub async fn edit(global: &GlobalArgs, args: EditArgs) -> anyhow::Result<()> {
    let how = Apply::new(args.mode, args.dry_run, &args.timeout)?;
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let first = nodes.first().ok_or_else(|| anyhow!("no node to edit"))?;
    let kind = resolve(first, &args.resource, args.id.as_deref()).await?;
    for node_client in &nodes {
        let node = node_client.default_node().to_owned();
        let config = fetch(node_client, &kind)
            .await
            .map_err(|e| node_client.call_error(e))?;
        let original = String::from_utf8(config)
            .map_err(|_| anyhow!("{node}: the machine config is not UTF-8 text"))?;
        edit_node(node_client, &node, &original, &how).await?;
    }
    Ok(())
}

/// One node's edit loop: edit, apply, and on a refusal edit again with the
/// reason shown, until the config is accepted or left unchanged.
async fn edit_node(client: &Client, node: &str, original: &str, how: &Apply) -> anyhow::Result<()> {
    // The config holds the cluster's keys: a private directory and file.
    let dir = tempfile::Builder::new()
        .prefix("talosctl-edit-")
        .tempdir()
        .context("creating a temporary directory for the editor")?;
    let path = dir.path().join("machineconfig.yaml");
    let mut errors: Vec<String> = Vec::new();
    let mut current = original.to_owned();
    loop {
        let header = edit_header(node, &errors);
        let shown = format!("{header}{current}");
        machinery::fsutil::write_atomic(&path, shown.as_bytes(), 0o600)?;
        run_editor(&path)?;
        let edited = without_header(
            &std::fs::read_to_string(&path).context("reading the edited config back")?,
            &header,
        );
        if edited.trim().is_empty() {
            output::out("Edit cancelled: the file was emptied.\n")?;
            return Ok(());
        }
        if edited == current {
            if errors.is_empty() {
                output::out("Apply was skipped: no changes detected.\n")?;
                return Ok(());
            }
            bail!(
                "{node}: edit cancelled, no valid changes were saved: {}",
                errors.join("; ")
            );
        }
        match send(client, edited.clone().into_bytes(), how).await {
            Ok(said) => {
                let mut text = format!("edited {MACHINE_CONFIG}/{ACTIVE_ID} at the node {node}\n");
                if !said.is_empty() {
                    text.push_str(&said);
                    text.push('\n');
                }
                return output::out(&text);
            }
            Err(CallError::Status(status)) if status.code() == tonic::Code::InvalidArgument => {
                errors = vec![client::rpc_error_text(&status)];
                current = edited;
            }
            Err(err) => return Err(client.call_error(err)),
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
            config.as_bytes(),
            &[
                "machine: {network: {hostname: b}}".to_owned(),
                "machine: {network: {hostname: c}}".to_owned(),
            ],
        )
        .expect("patched");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("hostname: c"), "{text}");
        let err = patched(config.as_bytes(), &["machine: {networkz: {}}".to_owned()])
            .expect_err("unknown key");
        assert!(format!("{err:#}").contains("networkz"), "{err:#}");
        let err = patched(b"\xff", &[]).expect_err("binary");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
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
    }
}
