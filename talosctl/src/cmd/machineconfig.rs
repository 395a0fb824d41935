//! Offline config work: `talosctl validate` and `talosctl machineconfig
//! patch`. Neither talks to a node.

use std::path::Path;

use anyhow::{Context as _, bail};
use machinery::config::{self, MachineConfig};

use crate::cli::{MachineConfigArgs, MachineConfigCommand, ValidateArgs, ValidateMode};
use crate::output;

/// Reads a config file and checks it as a node checks a config it is
/// given; the error names the file.
fn load(path: &Path) -> anyhow::Result<MachineConfig> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    check(&data).with_context(|| path.display().to_string())
}

/// Parses a config and runs the checks an apply adds.
fn check(data: &[u8]) -> Result<MachineConfig, config::ConfigError> {
    let config = config::parse(data)?;
    config.strict_check()?;
    Ok(config)
}

/// The rules a mode adds to the config's own: a metal node installs itself
/// to a disk, so its config must name one or give a `diskSelector`.
fn check_mode(config: &MachineConfig, mode: ValidateMode) -> Result<(), String> {
    match mode {
        ValidateMode::Metal
            if config.install_disk().is_none() && config.install_disk_selector().is_none() =>
        {
            Err(
                "machine.install.disk: install instructions are required in \"metal\" mode"
                    .to_owned(),
            )
        }
        _ => Ok(()),
    }
}

/// Runs `talosctl validate`: prints `<file> is valid for <mode> mode`, or
/// fails with every problem found. What the config sets that a node
/// accepts and does not apply is printed as warnings, as an apply's reply
/// gives them.
///
/// # Errors
/// The file cannot be read or the config is not valid for the mode.
pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let config = load(&args.config)?;
    if let Err(problem) = check_mode(&config, args.mode) {
        bail!("{}: {problem}", args.config.display());
    }
    let warnings = networkd::settings::config_warnings(&config);
    for warning in &warnings {
        output::warning(warning);
    }
    if args.strict && !warnings.is_empty() {
        bail!(
            "{}: {} warning(s), and --strict treats them as errors",
            args.config.display(),
            warnings.len()
        );
    }
    output::out(&format!(
        "{} is valid for {} mode\n",
        args.config.display(),
        args.mode.as_str()
    ))
}

/// Runs `talosctl machineconfig`.
///
/// # Errors
/// See the subcommands.
pub fn run(args: MachineConfigArgs) -> anyhow::Result<()> {
    match args.command {
        MachineConfigCommand::Gen(args) => super::generate::config(args),
        MachineConfigCommand::Patch {
            file,
            patches,
            output,
        } => patch(&file, &patches, output.as_deref()),
    }
}

/// `machineconfig patch`: the file with the patches applied in order,
/// checked as a whole, to stdout or a file (mode 0600: configs hold keys).
fn patch(file: &Path, patches: &[String], output: Option<&Path>) -> anyhow::Result<()> {
    if patches.is_empty() {
        bail!("no patches given: use --patch (-p) PATCH or --patch @FILE");
    }
    let data = super::apply::load_config(file, patches)?;
    check(&data).with_context(|| format!("{} once patched", file.display()))?;
    match output {
        None => output::out_bytes(&data),
        Some(path) => Ok(machinery::fsutil::write_atomic(path, &data, 0o600)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> (tempfile::TempDir, std::path::PathBuf) {
        let now = std::time::SystemTime::now();
        let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
        let configs = machinery::generate::generate(
            &bundle,
            &machinery::generate::GenOptions::new("mc", "https://127.0.0.1:6443"),
            now,
        )
        .expect("configs");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.yaml");
        std::fs::write(&path, configs.worker_yaml).expect("write");
        (dir, path)
    }

    #[test]
    fn metal_wants_an_install_disk() {
        let (dir, path) = generated();
        let config = load(&path).expect("valid");
        for mode in [
            ValidateMode::Metal,
            ValidateMode::Cloud,
            ValidateMode::Container,
        ] {
            assert_eq!(check_mode(&config, mode), Ok(()), "{mode:?}");
        }
        let out = dir.path().join("no-disk.yaml");
        patch(
            &path,
            &["machine: {install: {disk: ''}}".to_owned()],
            Some(&out),
        )
        .expect("patched");
        let config = load(&out).expect("valid");
        let err = check_mode(&config, ValidateMode::Metal).expect_err("metal");
        assert!(err.contains("required in \"metal\" mode"), "{err}");
        assert_eq!(check_mode(&config, ValidateMode::Container), Ok(()));
        // A selector instead of a disk will do.
        let selected = dir.path().join("selector.yaml");
        patch(
            &out,
            &["machine: {install: {diskSelector: {size: '>= 8GB'}}}".to_owned()],
            Some(&selected),
        )
        .expect("patched");
        let config = load(&selected).expect("valid");
        assert_eq!(check_mode(&config, ValidateMode::Metal), Ok(()));
    }

    #[test]
    fn patches_apply_in_order_and_a_bad_result_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;

        let (dir, path) = generated();
        let out = dir.path().join("out.yaml");
        let patches = [
            "machine: {network: {hostname: first}}".to_owned(),
            "machine: {network: {hostname: second}}".to_owned(),
        ];
        patch(&path, &patches, Some(&out)).expect("patched");
        let config = load(&out).expect("valid");
        assert_eq!(config.hostname(), Some("second"));
        let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A patch that breaks the config: refused, the output untouched.
        let before = std::fs::read(&out).expect("read");
        let err = patch(&path, &["machine: {type: toaster}".to_owned()], Some(&out))
            .expect_err("invalid");
        assert!(format!("{err:#}").contains("machine.type"), "{err:#}");
        assert_eq!(std::fs::read(&out).expect("read"), before);
        assert!(patch(&path, &[], None).is_err());
    }
}
