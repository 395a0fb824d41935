//! `talosctl apply-config` (alias `apply`).
//!
//! Prints, per node, the reply's warnings as `WARNING: ...` on stderr and
//! its mode details (e.g. `Applied configuration without a reboot`) on
//! stdout, as upstream does.

use anyhow::{Context as _, anyhow, bail};
use api::machine::{ApplyConfigurationRequest, apply_configuration_request};

use crate::cli::{ApplyArgs, ApplyMode, GlobalArgs};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output;

/// The request mode for `--mode`.
#[must_use]
#[allow(deprecated)] // REBOOT is deprecated upstream but still accepted.
pub fn request_mode(mode: ApplyMode) -> apply_configuration_request::Mode {
    match mode {
        ApplyMode::Auto => apply_configuration_request::Mode::Auto,
        ApplyMode::NoReboot => apply_configuration_request::Mode::NoReboot,
        ApplyMode::Reboot => apply_configuration_request::Mode::Reboot,
        ApplyMode::Staged => apply_configuration_request::Mode::Staged,
        ApplyMode::Try => apply_configuration_request::Mode::Try,
    }
}

/// The config to send: the file, with `--config-patch` patches applied.
///
/// # Errors
/// The file cannot be read, is empty, or a patch does not apply.
pub fn load_config(file: &std::path::Path, patches: &[String]) -> anyhow::Result<Vec<u8>> {
    let data = std::fs::read(file).with_context(|| {
        format!(
            "failed to read configuration from {:?}",
            file.display().to_string()
        )
    })?;
    if data.is_empty() {
        bail!("no configuration data read");
    }
    if patches.is_empty() {
        return Ok(data);
    }
    let text = String::from_utf8(data)
        .map_err(|_| anyhow!("configuration {} is not UTF-8 text", file.display()))?;
    Ok(super::patch::patched_by_arguments(&text, patches)?.into_bytes())
}

/// Runs `talosctl apply-config`.
///
/// # Errors
/// The config cannot be loaded, the client setup or the call failed, or a
/// node failed.
pub async fn run(global: &GlobalArgs, args: ApplyArgs) -> anyhow::Result<()> {
    // Upstream takes `apply config` and `apply machineconfig` too.
    if let Some(what) = &args.what
        && !what.eq_ignore_ascii_case("config")
        && !what.eq_ignore_ascii_case("machineconfig")
    {
        bail!("unknown positional argument {what}");
    }
    let Some(file) = &args.file else {
        bail!("no filename supplied for configuration");
    };
    let data = load_config(file, &args.patches)?;
    let try_timeout = output::parse_go_duration(&args.apply.timeout)
        .map_err(|err| anyhow!("--timeout: {err}"))?;
    let cert_fingerprints = args
        .cert_fingerprints
        .iter()
        .map(|text| {
            machinery::pki::SpkiFingerprint::parse(text)
                .map_err(|err| anyhow!("--cert-fingerprint: {err}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !cert_fingerprints.is_empty() && !args.insecure {
        eprintln!(
            "warning: --cert-fingerprint applies to --insecure (maintenance mode) only; the talosconfig's CA verifies this node"
        );
    }
    let client = Client::connect(
        global,
        Options {
            insecure: args.insecure,
            nodes: NodePolicy::Required,
            cert_fingerprints,
        },
    )?;
    let request = ApplyConfigurationRequest {
        data,
        mode: request_mode(args.apply.mode) as i32,
        dry_run: args.apply.dry_run,
        try_mode_timeout: Some(output::proto_duration(try_timeout)),
    };
    let response = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).apply_configuration(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let prefix = client.multiple_nodes();
    let mut text = String::new();
    for (node, reply) in &results.ok {
        for warning in &reply.warnings {
            if prefix {
                output::warning(&format!("{node}: {warning}"));
            } else {
                output::warning(warning);
            }
        }
        if !reply.mode_details.is_empty() {
            if prefix {
                text.push_str(node);
                text.push_str(": ");
            }
            text.push_str(&reply.mode_details);
            if !reply.mode_details.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    output::out(&text)?;
    client::report(&results.failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(request_mode(ApplyMode::Auto) as i32, 1);
        assert_eq!(request_mode(ApplyMode::NoReboot) as i32, 2);
        assert_eq!(request_mode(ApplyMode::Staged) as i32, 3);
        assert_eq!(request_mode(ApplyMode::Try) as i32, 4);
        assert_eq!(request_mode(ApplyMode::Reboot) as i32, 0);
    }

    #[test]
    fn missing_and_empty_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.yaml");
        let err = load_config(&missing, &[]).expect_err("missing");
        assert!(
            format!("{err:#}").starts_with("failed to read configuration from"),
            "{err:#}"
        );
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "").expect("write");
        let err = load_config(&empty, &[]).expect_err("empty");
        assert_eq!(err.to_string(), "no configuration data read");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "version: v1alpha1\n").expect("write");
        assert_eq!(
            load_config(&config, &[]).expect("reads"),
            b"version: v1alpha1\n"
        );
    }
}
