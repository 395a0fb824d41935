//! `talosctl gen config` and `talosctl gen secrets` (offline).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use machinery::generate::{GenOptions, generate};
use machinery::secrets::SecretsBundle;

use crate::cli::{GenArgs, GenCommand, GenConfigArgs, GenSecretsArgs};

/// Runs a `talosctl gen` subcommand.
///
/// # Errors
/// Generation or writing failed.
pub fn run(args: GenArgs) -> anyhow::Result<()> {
    match args.command {
        GenCommand::Config(args) => config(args),
        GenCommand::Secrets(args) => secrets(&args),
    }
}

/// `dir/name` as Go's `filepath.Join` prints it (`name` alone for `.`).
#[must_use]
pub fn join(dir: &Path, name: &str) -> PathBuf {
    if dir.as_os_str().is_empty() || dir == Path::new(".") {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

/// Writes `contents` to `path` with `mode` (the mode is set even when the
/// file existed).
///
/// # Errors
/// The file cannot be written.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        bail!(
            "{} already exists, use --force to overwrite",
            path.display()
        );
    }
    Ok(())
}

fn patched(yaml: String, patches: &[String]) -> anyhow::Result<String> {
    if patches.is_empty() {
        return Ok(yaml);
    }
    super::patch::patched_by_arguments(&yaml, patches)
}

fn config(args: GenConfigArgs) -> anyhow::Result<()> {
    let dir = args.output.clone();
    let files = [
        join(&dir, "controlplane.yaml"),
        join(&dir, "worker.yaml"),
        join(&dir, "talosconfig"),
    ];
    for file in &files {
        refuse_overwrite(file, args.force)?;
    }

    let bundle = match &args.with_secrets {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading secrets bundle {}", path.display()))?;
            SecretsBundle::from_yaml(&text).map_err(|err| anyhow!("{}: {err}", path.display()))?
        }
        None => {
            eprintln!("generating PKI and tokens");
            SecretsBundle::generate(SystemTime::now()).map_err(|err| anyhow!("{err}"))?
        }
    };

    let mut options = GenOptions::new(args.cluster_name.clone(), args.endpoint.clone());
    if let Some(disk) = args.install_disk {
        options.install_disk = disk;
    }
    if let Some(image) = args.install_image {
        options.install_image = image;
    }
    for path in &args.installer_key {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("--installer-key {}", path.display()))?;
        if !pem.contains("-----BEGIN PUBLIC KEY-----") {
            bail!(
                "--installer-key {}: not a PEM public key (-----BEGIN PUBLIC KEY-----)",
                path.display()
            );
        }
        options.installer_keys.push(pem);
    }
    if let Some(domain) = args.dns_domain {
        options.dns_domain = domain;
    }
    if let Some(version) = args.kubernetes_version {
        options.kubernetes_version = version;
    }
    options.additional_sans = args.additional_sans;

    let generated =
        generate(&bundle, &options, SystemTime::now()).map_err(|err| anyhow!("{err}"))?;
    let controlplane = patched(generated.controlplane_yaml, &args.config_patch)?;
    let controlplane = patched(controlplane, &args.config_patch_control_plane)?;
    let worker = patched(generated.worker_yaml, &args.config_patch)?;
    let worker = patched(worker, &args.config_patch_worker)?;
    let talosconfig = generated
        .talosconfig
        .to_yaml()
        .map_err(|err| anyhow!("{err}"))?;

    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let [controlplane_path, worker_path, talosconfig_path] = &files;
    write_file(controlplane_path, controlplane.as_bytes(), 0o644)?;
    eprintln!("Created {}", controlplane_path.display());
    write_file(worker_path, worker.as_bytes(), 0o644)?;
    eprintln!("Created {}", worker_path.display());
    write_file(talosconfig_path, talosconfig.as_bytes(), 0o600)?;
    eprintln!("Created {}", talosconfig_path.display());
    Ok(())
}

fn secrets(args: &GenSecretsArgs) -> anyhow::Result<()> {
    refuse_overwrite(&args.output_file, args.force)?;
    let bundle = SecretsBundle::generate(SystemTime::now()).map_err(|err| anyhow!("{err}"))?;
    let yaml = bundle.to_yaml().map_err(|err| anyhow!("{err}"))?;
    write_file(&args.output_file, yaml.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_like_go() {
        assert_eq!(
            join(Path::new("."), "worker.yaml"),
            PathBuf::from("worker.yaml")
        );
        assert_eq!(
            join(Path::new("out"), "worker.yaml"),
            PathBuf::from("out/worker.yaml")
        );
        assert_eq!(
            join(Path::new("out/"), "worker.yaml"),
            PathBuf::from("out/worker.yaml")
        );
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("talosconfig");
        assert!(refuse_overwrite(&path, false).is_ok());
        write_file(&path, b"x", 0o600).expect("write");
        let err = refuse_overwrite(&path, false).expect_err("exists");
        assert_eq!(
            err.to_string(),
            format!(
                "{} already exists, use --force to overwrite",
                path.display()
            )
        );
        assert!(refuse_overwrite(&path, true).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn writes_with_the_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_file(&path, b"a", 0o644).expect("write");
        write_file(&path, b"b", 0o600).expect("rewrite");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(path).expect("read"), b"b");
    }

    #[test]
    fn gen_config_writes_three_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let args = GenConfigArgs {
            cluster_name: "test".into(),
            endpoint: "https://10.5.0.2:6443".into(),
            output: out.clone(),
            with_secrets: None,
            config_patch: Vec::new(),
            config_patch_control_plane: Vec::new(),
            config_patch_worker: Vec::new(),
            install_disk: None,
            install_image: None,
            installer_key: Vec::new(),
            additional_sans: Vec::new(),
            dns_domain: None,
            kubernetes_version: None,
            force: false,
        };
        config(args).expect("generates");
        for name in ["controlplane.yaml", "worker.yaml", "talosconfig"] {
            assert!(out.join(name).exists(), "{name}");
        }
        let talosconfig = machinery::talosconfig::TalosConfig::load(&out.join("talosconfig"))
            .expect("talosconfig loads");
        assert_eq!(talosconfig.context, "test");
    }
}
