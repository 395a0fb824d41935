//! `talosctl gen ...` (offline): configs, secrets bundles, and the PKI
//! pieces an operator hands out by hand (`ca`, `key`, `csr`, `crt`,
//! `keypair`), written as upstream names them, mode 0600.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, anyhow, bail};
use machinery::config::annotate::{Annotations, annotate};
use machinery::generate::{GenOptions, generate};
use machinery::secrets::SecretsBundle;

use crate::cli::{
    GenArgs, GenCaArgs, GenCommand, GenConfigArgs, GenCrtArgs, GenCsrArgs, GenKeyArgs,
    GenKeypairArgs, GenOutputType, GenSecretsArgs,
};

/// Runs a `talosctl gen` subcommand.
///
/// # Errors
/// Generation or writing failed.
pub fn run(args: GenArgs) -> anyhow::Result<()> {
    match args.command {
        GenCommand::Ca(args) => ca(&args),
        GenCommand::Config(args) => config(args),
        GenCommand::Crt(args) => crt(&args),
        GenCommand::Csr(args) => csr(&args),
        GenCommand::Key(args) => key(&args),
        GenCommand::Keypair(args) => keypair(&args),
        GenCommand::Secrets(args) => secrets(&args),
    }
}

/// Refuses role names the API does not know, naming them all.
///
/// # Errors
/// Some role is unknown.
pub fn check_roles(roles: &[String]) -> anyhow::Result<()> {
    let unknown: Vec<&str> = roles
        .iter()
        .filter(|r| api::roles::Role::parse(r).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        bail!("unknown roles: {}", unknown.join(", "));
    }
    Ok(())
}

fn hours(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n.saturating_mul(3600))
}

fn parse_ip(text: &str) -> anyhow::Result<std::net::IpAddr> {
    text.parse().map_err(|_| anyhow!("invalid IP: {text}"))
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Writes each `(path, contents)` as a secret, after checking that none
/// exists (unless `force`), so a refusal leaves nothing half written.
fn write_secrets(files: &[(PathBuf, &[u8])], force: bool) -> anyhow::Result<()> {
    for (path, _) in files {
        refuse_overwrite(path, force)?;
    }
    for (path, contents) in files {
        write_file(path, contents, 0o600)?;
    }
    Ok(())
}

fn ca(args: &GenCaArgs) -> anyhow::Result<()> {
    if args.rsa {
        bail!(
            "--rsa: RSA keys cannot be generated here (the crypto library makes only Ed25519 \
             and ECDSA keys); leave it out for an Ed25519 CA"
        );
    }
    let ca = machinery::pki::generate_ca(
        machinery::pki::KeyAlgorithm::Ed25519,
        Some(&args.organization),
        None,
        SystemTime::now(),
        hours(args.hours),
    )?;
    let hash = machinery::pki::spki_sha256(&ca.cert_pem)?;
    let base = &args.organization;
    write_secrets(
        &[
            (PathBuf::from(format!("{base}.crt")), ca.cert_pem.as_bytes()),
            (PathBuf::from(format!("{base}.sha256")), hash.as_bytes()),
            (PathBuf::from(format!("{base}.key")), ca.key_pem.as_bytes()),
        ],
        args.force,
    )
}

fn key(args: &GenKeyArgs) -> anyhow::Result<()> {
    let key = machinery::pki::generate_private_key_pem(machinery::pki::KeyAlgorithm::Ed25519)?;
    write_secrets(
        &[(PathBuf::from(format!("{}.key", args.name)), key.as_bytes())],
        args.force,
    )
}

fn csr(args: &GenCsrArgs) -> anyhow::Result<()> {
    let key = read(&args.key, "key")?;
    let ip = parse_ip(&args.ip)?;
    check_roles(&args.roles)?;
    let csr = machinery::pki::generate_csr_for_key(&key, &args.roles, &[ip])?;
    // Next to the key, as upstream writes it (and overwrites it).
    write_file(&args.key.with_extension("csr"), csr.as_bytes(), 0o600)
}

fn crt(args: &GenCrtArgs) -> anyhow::Result<()> {
    let ca = machinery::pki::CertificateAndKey {
        cert_pem: read(Path::new(&format!("{}.crt", args.ca)), "CA certificate")?,
        key_pem: read(Path::new(&format!("{}.key", args.ca)), "CA key")?,
    };
    let csr = read(&args.csr, "CSR")?;
    let cert = machinery::pki::sign_client_csr(&ca, &csr, hours(args.hours), SystemTime::now())?;
    write_secrets(
        &[(PathBuf::from(format!("{}.crt", args.name)), cert.as_bytes())],
        args.force,
    )
}

fn keypair(args: &GenKeypairArgs) -> anyhow::Result<()> {
    let ips = match &args.ip {
        Some(ip) => vec![parse_ip(ip)?],
        None => Vec::new(),
    };
    let pair = machinery::pki::generate_keypair(
        &args.organization,
        &ips,
        SystemTime::now(),
        machinery::pki::SERVER_CERT_TTL,
    )?;
    let base = &args.organization;
    write_secrets(
        &[
            (
                PathBuf::from(format!("{base}.crt")),
                pair.cert_pem.as_bytes(),
            ),
            (
                PathBuf::from(format!("{base}.key")),
                pair.key_pem.as_bytes(),
            ),
        ],
        args.force,
    )
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

/// Where each output type goes: a file, or stdout (`None`).
fn destinations(
    output: &Path,
    types: &[GenOutputType],
) -> anyhow::Result<Vec<(GenOutputType, Option<PathBuf>)>> {
    let mut types = types.to_vec();
    let mut seen = Vec::new();
    types.retain(|t| {
        let first = !seen.contains(t);
        seen.push(*t);
        first
    });
    if types.is_empty() {
        bail!("--output-types: name at least one of controlplane, worker, talosconfig");
    }
    let stdout = output == Path::new("-");
    if types.len() > 1 {
        if stdout {
            bail!("can't use stdout output with multiple output types");
        }
        return Ok(types
            .into_iter()
            .map(|t| (t, Some(join(output, t.file_name()))))
            .collect());
    }
    let only = types[0];
    Ok(vec![(
        only,
        if stdout {
            None
        } else if output.is_dir() || output.as_os_str().is_empty() {
            Some(join(output, only.file_name()))
        } else {
            Some(output.to_path_buf())
        },
    )])
}

/// `--registry-mirror host=url` as a patch of `machine.registries.mirrors`
/// (mirrors of one host in the order given).
fn registry_mirror_patch(mirrors: &[String]) -> anyhow::Result<Option<String>> {
    if mirrors.is_empty() {
        return Ok(None);
    }
    let mut hosts: Vec<(String, Vec<String>)> = Vec::new();
    for mirror in mirrors {
        let Some((host, url)) = mirror
            .split_once('=')
            .filter(|(h, u)| !h.is_empty() && !u.is_empty())
        else {
            bail!("--registry-mirror {mirror:?}: expected <registry host>=<mirror URL>");
        };
        match hosts.iter_mut().find(|(h, _)| h == host) {
            Some((_, urls)) => urls.push(url.to_owned()),
            None => hosts.push((host.to_owned(), vec![url.to_owned()])),
        }
    }
    let mut map = serde_yaml_ng::Mapping::new();
    for (host, urls) in hosts {
        let mut endpoints = serde_yaml_ng::Mapping::new();
        endpoints.insert("endpoints".into(), urls.into());
        map.insert(host.into(), endpoints.into());
    }
    let mut registries = serde_yaml_ng::Mapping::new();
    registries.insert("mirrors".into(), map.into());
    let mut machine = serde_yaml_ng::Mapping::new();
    machine.insert("registries".into(), registries.into());
    let mut root = serde_yaml_ng::Mapping::new();
    root.insert("machine".into(), machine.into());
    Ok(Some(serde_yaml_ng::to_string(&root)?))
}

/// `--talos-version`: `v1.12`, `v1.12.0`, `1.12`...
fn check_talos_version(version: &str) -> anyhow::Result<()> {
    let digits = version.strip_prefix('v').unwrap_or(version);
    let parts: Vec<&str> = digits.split(['.', '-']).collect();
    let numeric = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    if parts.len() < 2 || !parts[..2].iter().all(numeric) {
        bail!("--talos-version {version:?}: expected a version such as v1.12");
    }
    Ok(())
}

/// `--with-cluster-discovery` and `--with-kubespan` as one patch, when
/// they differ from what the generator writes (discovery on, KubeSpan
/// off). KubeSpan needs discovery, as upstream: with it, discovery stays.
fn feature_patch(discovery: bool, kubespan: bool) -> Option<String> {
    let mut root = serde_yaml_ng::Mapping::new();
    if !discovery && !kubespan {
        root.insert(
            "cluster".into(),
            serde_yaml_ng::from_str("discovery: {enabled: false}").ok()?,
        );
    }
    if kubespan {
        root.insert(
            "machine".into(),
            serde_yaml_ng::from_str("network: {kubespan: {enabled: true}}").ok()?,
        );
    }
    if root.is_empty() {
        return None;
    }
    serde_yaml_ng::to_string(&root).ok()
}

pub(crate) fn config(mut args: GenConfigArgs) -> anyhow::Result<()> {
    let outputs = destinations(&args.output, &args.output_types)?;
    for (_, file) in &outputs {
        if let Some(file) = file {
            refuse_overwrite(file, args.force)?;
        }
    }
    if args.config_version != "v1alpha1" {
        bail!(
            "--version {:?}: unsupported config version (only v1alpha1)",
            args.config_version
        );
    }
    if let Some(version) = &args.talos_version {
        check_talos_version(version)?;
        eprintln!(
            "note: --talos-version {version}: configs are generated for this talosctl's own release"
        );
    }
    // First, so that a --config-patch can still change what they set.
    let mut first = Vec::new();
    if let Some(patch) = registry_mirror_patch(&args.registry_mirror)? {
        first.push(patch);
    }
    if args.with_kubespan && !args.with_cluster_discovery {
        bail!("--with-kubespan needs cluster discovery: drop --with-cluster-discovery=false");
    }
    if !args.persist {
        bail!(
            "--persist=false: the machine config is always persisted (the node keeps it on STATE)"
        );
    }
    first.extend(feature_patch(
        args.with_cluster_discovery,
        args.with_kubespan,
    ));
    args.config_patch.splice(0..0, first);

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
    let comments = Annotations {
        docs: args.with_docs,
        examples: args.with_examples,
    };
    let controlplane = annotate(&controlplane, comments);
    let worker = annotate(&worker, comments);
    let talosconfig = generated
        .talosconfig
        .to_yaml()
        .map_err(|err| anyhow!("{err}"))?;

    for (kind, file) in outputs {
        let (contents, mode) = match kind {
            GenOutputType::Controlplane => (&controlplane, 0o644),
            GenOutputType::Worker => (&worker, 0o644),
            GenOutputType::Talosconfig => (&talosconfig, 0o600),
        };
        let Some(file) = file else {
            crate::output::out(contents)?;
            continue;
        };
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_file(&file, contents.as_bytes(), mode)?;
        eprintln!("Created {}", file.display());
    }
    Ok(())
}

fn secrets(args: &GenSecretsArgs) -> anyhow::Result<()> {
    let stdout = args.output_file.as_os_str() == "-";
    if !stdout {
        refuse_overwrite(&args.output_file, args.force)?;
    }
    let bundle = match &args.from_controlplane_config {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the control plane config {}", path.display()))?;
            let config = machinery::config::parse(&bytes)
                .map_err(|err| anyhow!("{}: {err}", path.display()))?;
            SecretsBundle::from_config(&config)
                .map_err(|err| anyhow!("{}: {err}", path.display()))?
        }
        None => SecretsBundle::generate(SystemTime::now()).map_err(|err| anyhow!("{err}"))?,
    };
    let yaml = bundle.to_yaml().map_err(|err| anyhow!("{err}"))?;
    if stdout {
        return crate::output::out(&yaml);
    }
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
    fn output_types_pick_files_or_stdout() {
        use GenOutputType::{Controlplane, Talosconfig, Worker};
        let dir = tempfile::tempdir().expect("tempdir");
        let all = destinations(dir.path(), &[Controlplane, Worker, Talosconfig]).expect("all");
        assert_eq!(
            all,
            [
                (Controlplane, Some(dir.path().join("controlplane.yaml"))),
                (Worker, Some(dir.path().join("worker.yaml"))),
                (Talosconfig, Some(dir.path().join("talosconfig"))),
            ]
        );
        // One type: into a directory by its name, else to the path given,
        // or to stdout.
        assert_eq!(
            destinations(dir.path(), &[Talosconfig, Talosconfig]).expect("dir"),
            [(Talosconfig, Some(dir.path().join("talosconfig")))]
        );
        let file = dir.path().join("cp.yaml");
        assert_eq!(
            destinations(&file, &[Controlplane]).expect("file"),
            [(Controlplane, Some(file.clone()))]
        );
        assert_eq!(
            destinations(Path::new("-"), &[Worker]).expect("stdout"),
            [(Worker, None)]
        );
        let err = destinations(Path::new("-"), &[Worker, Talosconfig]).expect_err("two");
        assert!(err.to_string().contains("multiple output types"), "{err}");
    }

    #[test]
    fn feature_flags_become_a_patch() {
        assert_eq!(feature_patch(true, false), None);
        let value = |patch: Option<String>| -> serde_yaml_ng::Value {
            serde_yaml_ng::from_str(&patch.expect("a patch")).expect("yaml")
        };
        let off = value(feature_patch(false, false));
        assert_eq!(
            off["cluster"]["discovery"]["enabled"],
            serde_yaml_ng::Value::Bool(false)
        );
        // KubeSpan keeps discovery on, whatever the other flag says.
        let kubespan = value(feature_patch(false, true));
        assert_eq!(
            kubespan["machine"]["network"]["kubespan"]["enabled"],
            serde_yaml_ng::Value::Bool(true)
        );
        assert!(kubespan.get("cluster").is_none(), "{kubespan:?}");
        for good in ["v1.12", "1.12", "v1.12.0", "v1.13.0-alpha.1"] {
            check_talos_version(good).expect(good);
        }
        for bad in ["latest", "v1", "vx.y", ""] {
            let err = check_talos_version(bad).expect_err(bad).to_string();
            assert!(err.contains("--talos-version"), "{err}");
        }
    }

    #[test]
    fn registry_mirrors_become_a_patch() {
        assert_eq!(registry_mirror_patch(&[]).expect("none"), None);
        let patch = registry_mirror_patch(&[
            "docker.io=http://10.5.0.1:5000".into(),
            "ghcr.io=https://mirror.example".into(),
            "docker.io=https://second.example".into(),
        ])
        .expect("patch")
        .expect("some");
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&patch).expect("yaml");
        let mirrors = &value["machine"]["registries"]["mirrors"];
        assert_eq!(
            mirrors["docker.io"]["endpoints"],
            serde_yaml_ng::Value::from(vec!["http://10.5.0.1:5000", "https://second.example"])
        );
        assert_eq!(
            mirrors["ghcr.io"]["endpoints"],
            serde_yaml_ng::Value::from(vec!["https://mirror.example"])
        );
        let err = registry_mirror_patch(&["docker.io".into()]).expect_err("no url");
        assert!(
            err.to_string().contains("<registry host>=<mirror URL>"),
            "{err}"
        );
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
            output_types: vec![
                GenOutputType::Controlplane,
                GenOutputType::Worker,
                GenOutputType::Talosconfig,
            ],
            registry_mirror: Vec::new(),
            with_cluster_discovery: true,
            with_kubespan: false,
            persist: true,
            with_docs: true,
            with_examples: true,
            talos_version: None,
            config_version: "v1alpha1".into(),
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
