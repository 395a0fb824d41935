//! `talosctl rotate-ca`: replaces the Talos API CA across a cluster, as
//! upstream does, without a reboot and without a moment in which either CA
//! is refused:
//!
//! 1. a new CA and an `os:admin` client certificate from it are made;
//! 2. every node accepts the new CA (`machine.acceptedCAs`);
//! 3. every node issues from the new CA (`machine.ca`, with its key on
//!    control planes) and still accepts the old one;
//! 4. the old CA is removed from every node.
//!
//! Each step is checked with Version on every node, with the client that
//! must work from then on: the current talosconfig, then the new client
//! certificate with the old CA as the server CA, then the new
//! talosconfig. Configs are changed live (`no-reboot`), control planes
//! first, as upstream; a node whose config is not of the type it was given
//! as is refused before it is changed.
//!
//! This OS runs no Kubernetes: the nodes are given with flags, and there is
//! no Kubernetes CA to rotate.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use machinery::base64;
use machinery::config::v1alpha1::{self, Certificate, CertificateAndKey, Secret};
use machinery::config::{MachineConfig, MachineType};
use machinery::pki;
use machinery::talosconfig::{Context, TalosConfig};

use crate::cli::{GlobalArgs, RotateCaArgs};
use crate::client::{self, CallError, Client};
use crate::cmd::patch::{self, Apply};

/// Where the node defines the machine config.
const CONFIG_NAMESPACE: &str = "config";

/// How long a node may take to answer with the credentials of a step.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `talosctl rotate-ca`.
///
/// # Errors
/// No control plane node given, the talosconfig is unusable, or a step
/// failed (the steps before it stay done: the message names the node).
pub async fn run(global: &GlobalArgs, args: &RotateCaArgs) -> anyhow::Result<()> {
    if args.talos {
        let topology = Topology::from_args(args)?;
        let mut rotation = Rotation::start(global, args, topology)?;
        rotation.run().await.context("error rotating Talos CA")?;
        if args.dry_run {
            println!(
                "> Dry-run mode enabled, no changes were made to the cluster, re-run with `--dry-run=false` to apply the changes."
            );
        }
    }
    if args.kubernetes {
        println!(
            "> Kubernetes CA rotation skipped: these nodes run no Kubernetes, there is no Kubernetes CA to rotate."
        );
    }
    Ok(())
}

/// The nodes, by type, from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topology {
    control_planes: Vec<String>,
    workers: Vec<String>,
}

impl Topology {
    fn from_args(args: &RotateCaArgs) -> anyhow::Result<Topology> {
        let clean = |list: &mut dyn Iterator<Item = &String>| {
            let mut out: Vec<String> = Vec::new();
            for node in list.map(|n| n.trim()).filter(|n| !n.is_empty()) {
                if !out.iter().any(|n| n == node) {
                    out.push(node.to_owned());
                }
            }
            out
        };
        let control_planes = clean(
            &mut args
                .init_node
                .iter()
                .chain(&args.cluster.control_plane_nodes),
        );
        let workers = clean(&mut args.cluster.worker_nodes.iter());
        if control_planes.is_empty() {
            bail!(
                "no control plane nodes: name them with --control-plane-nodes (and the workers with --worker-nodes); this OS runs no Kubernetes to discover them from"
            );
        }
        if let Some(both) = workers.iter().find(|w| control_planes.contains(w)) {
            bail!("{both} is given both as a control plane node and as a worker node");
        }
        Ok(Topology {
            control_planes,
            workers,
        })
    }

    /// Every node with its type, control planes first.
    fn nodes(&self) -> impl Iterator<Item = (&str, MachineType)> {
        let cps = self
            .control_planes
            .iter()
            .map(|n| (n.as_str(), MachineType::ControlPlane));
        let workers = self
            .workers
            .iter()
            .map(|n| (n.as_str(), MachineType::Worker));
        cps.chain(workers)
    }
}

/// Go's `%q` of a list of strings: `["a" "b"]`.
fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// Prints a CA as upstream's YAML of a certificate and key, indented.
fn print_ca(title: &str, crt_pem: &[u8], key_pem: &[u8]) {
    println!("> {title}:");
    println!("  crt: {}", base64::encode(crt_pem));
    println!("  key: {}", base64::encode(key_pem));
}

/// Credentials a step's checks and changes use.
struct Credentials {
    context_name: String,
    context: Context,
}

impl Credentials {
    fn client(&self, node: &str) -> anyhow::Result<Client> {
        Client::for_context(&self.context_name, &self.context, vec![node.to_owned()])
    }
}

/// What a config change does to `machine`.
enum Change {
    AcceptNew,
    Swap,
    DropOld,
}

struct Rotation {
    dry_run: bool,
    /// Where the new talosconfig goes.
    output: std::path::PathBuf,
    topology: Topology,
    endpoints: Vec<String>,
    current: Credentials,
    /// The current CA certificate (PEM), read from the first control plane.
    current_ca: Vec<u8>,
    new_ca: pki::CertificateAndKey,
    /// The new client certificate, old CA as the server CA.
    intermediate: Credentials,
    /// The new client certificate and the new CA.
    new: Credentials,
}

impl Rotation {
    fn start(
        global: &GlobalArgs,
        args: &RotateCaArgs,
        topology: Topology,
    ) -> anyhow::Result<Rotation> {
        let path = client::talosconfig_path(global);
        let talosconfig = client::load_talosconfig(&path)?;
        let (name, context) = talosconfig
            .current(global.context.as_deref())
            .map_err(|err| anyhow!("{err}"))?;
        let mut context = context.clone();
        if !global.endpoints.is_empty() {
            context.endpoints.clone_from(&global.endpoints);
        }
        let endpoints = context.endpoints.clone();
        if endpoints.is_empty() {
            bail!(
                "no endpoints are set for talosconfig context {name:?}: use --endpoints or \"talosctl config endpoint <address>\""
            );
        }
        let now = SystemTime::now();
        let new_ca =
            pki::generate_os_ca(now).map_err(|e| anyhow!("error generating new Talos CA: {e}"))?;
        let admin = pki::issue_client_cert(
            &new_ca,
            &[api::roles::Role::Admin.as_str().to_owned()],
            pki::CLIENT_CERT_TTL,
            now,
        )
        .map_err(|e| anyhow!("error generating new talosconfig: {e}"))?;
        let credentials = |ca_pem: &str| Credentials {
            context_name: name.to_owned(),
            context: Context::new(endpoints.clone(), ca_pem, &admin),
        };
        Ok(Rotation {
            dry_run: args.dry_run,
            output: args.output.clone(),
            topology,
            current: Credentials {
                context_name: name.to_owned(),
                context,
            },
            current_ca: Vec::new(),
            // Its server CA is the current one, filled in once read.
            intermediate: credentials(""),
            new: credentials(&new_ca.cert_pem),
            new_ca,
            endpoints,
        })
    }

    fn new_talosconfig(&self) -> TalosConfig {
        TalosConfig {
            context: self.new.context_name.clone(),
            contexts: std::collections::BTreeMap::from([(
                self.new.context_name.clone(),
                self.new.context.clone(),
            )]),
            extra: std::collections::BTreeMap::new(),
        }
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        println!(
            "> Starting Talos API PKI rotation, dry-run mode {}...",
            self.dry_run
        );
        println!("> Using config context: {:?}", self.current.context_name);
        println!(
            "> Using Talos API endpoints: {}",
            go_quoted(&self.endpoints)
        );
        println!("> Cluster topology:");
        println!(
            "  - control plane nodes: {}",
            go_quoted(&self.topology.control_planes)
        );
        println!("  - worker nodes: {}", go_quoted(&self.topology.workers));

        self.fetch_current_ca().await?;
        print_ca(
            "New Talos CA",
            self.new_ca.cert_pem.as_bytes(),
            self.new_ca.key_pem.as_bytes(),
        );
        // The intermediate client trusts the servers' current CA.
        self.intermediate.context.ca = base64::encode(&self.current_ca);
        println!("> Generating new talosconfig:");
        println!(
            "{}",
            self.new_talosconfig()
                .to_yaml()
                .map_err(|e| anyhow!("{e}"))?
        );

        self.verify(&self.current, "existing PKI").await?;
        println!("> Adding new Talos CA as accepted...");
        self.patch_all(&self.current, &Change::AcceptNew).await?;
        self.verify(&self.intermediate, "new client cert, but old server CA")
            .await?;
        // From the swap on, the old talosconfig stops working: the new one
        // is on disk before it starts, not only at the end.
        if !self.dry_run {
            println!(
                "> Writing new talosconfig to {:?}",
                self.output.display().to_string()
            );
            self.new_talosconfig()
                .save(&self.output)
                .map_err(|e| anyhow!("{e}"))?;
        }
        println!("> Making new Talos CA the issuing CA, old Talos CA the accepted CA...");
        // Each node serves a certificate from the new CA as soon as it is
        // swapped, one after another: the client trusts both meanwhile.
        let mut swapping = Credentials {
            context_name: self.intermediate.context_name.clone(),
            context: self.intermediate.context.clone(),
        };
        let mut both = self.current_ca.clone();
        if !both.ends_with(b"\n") {
            both.push(b'\n');
        }
        both.extend_from_slice(self.new_ca.cert_pem.as_bytes());
        swapping.context.ca = base64::encode(&both);
        self.patch_all(&swapping, &Change::Swap).await?;
        self.verify(&self.new, "new PKI").await?;
        println!("> Removing old Talos CA from the accepted CAs...");
        self.patch_all(&self.new, &Change::DropOld).await?;
        self.verify(&self.new, "new PKI").await
    }

    /// Reads the issuing CA from the first control plane's config.
    async fn fetch_current_ca(&mut self) -> anyhow::Result<()> {
        let first = &self.topology.control_planes[0];
        let client = self.current.client(first)?;
        let text = patch::fetch(&client, CONFIG_NAMESPACE)
            .await
            .with_context(|| format!("error fetching existing Talos CA from {first}"))?;
        let config = machinery::config::parse(text.as_bytes())
            .map_err(|e| anyhow!("{first}: the machine config does not load: {e}"))?;
        let Some(key) = config.ca_key_pem() else {
            bail!("{first} holds no Talos CA key: it is not a control plane node");
        };
        print_ca("Current Talos CA", config.ca_crt_pem(), key);
        self.current_ca = config.ca_crt_pem().to_vec();
        Ok(())
    }

    /// Version on every node with `credentials`, retried while the nodes
    /// take up the last change.
    async fn verify(&self, credentials: &Credentials, label: &str) -> anyhow::Result<()> {
        println!("> Verifying connectivity with {label}:");
        for (node, _) in self.topology.nodes() {
            if self.dry_run {
                println!("  - {node}: OK (dry-run)");
                continue;
            }
            let client = credentials.client(node)?;
            let deadline = Instant::now() + VERIFY_TIMEOUT;
            let tag = loop {
                match client
                    .try_call(|channel| {
                        let request = client.request(());
                        async move { client::machine(channel).version(request).await }
                    })
                    .await
                {
                    Ok(reply) => {
                        break reply
                            .messages
                            .first()
                            .and_then(|m| m.version.as_ref())
                            .map(|v| v.tag.clone())
                            .unwrap_or_default();
                    }
                    Err(err) if retryable(&err) && Instant::now() < deadline => {
                        eprintln!("retrying error: {}", describe(&err));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(err) => {
                        return Err(client
                            .call_error(err)
                            .context(format!("error calling version API on node {node}")));
                    }
                }
            };
            println!("  - {node}: OK (version {tag})");
        }
        Ok(())
    }

    /// Changes every node's config with `credentials`, control planes first.
    async fn patch_all(&self, credentials: &Credentials, change: &Change) -> anyhow::Result<()> {
        for (node, machine_type) in self.topology.nodes() {
            if self.dry_run {
                println!("  - {node}: skipped (dry-run)");
                continue;
            }
            let client = credentials.client(node)?;
            let text = patch::fetch(&client, CONFIG_NAMESPACE)
                .await
                .with_context(|| format!("error patching node {node}"))?;
            let changed = self
                .changed(&text, machine_type, change)
                .with_context(|| format!("error patching node {node}"))?;
            patch::send(&client, &changed, &Apply::no_reboot())
                .await
                .map_err(|e| client.call_error(e))
                .with_context(|| format!("error patching node {node}"))?;
            println!("  - {node}: OK");
        }
        Ok(())
    }

    /// `text` with `change` made, checked as a whole config.
    fn changed(
        &self,
        text: &str,
        expected: MachineType,
        change: &Change,
    ) -> anyhow::Result<String> {
        let config = machinery::config::parse(text.as_bytes())
            .map_err(|e| anyhow!("the machine config does not load: {e}"))?;
        if config.machine_type() != expected {
            bail!(
                "its machine config is of type {}, but it was given as a {} node",
                type_name(config.machine_type()),
                type_name(expected)
            );
        }
        let mut documents = config.documents().clone();
        let machine = documents
            .v1alpha1
            .machine
            .as_mut()
            .ok_or_else(|| anyhow!("the machine config has no machine section"))?;
        let new_crt = base64::encode(&self.new_ca.cert_pem);
        let current_crt = base64::encode(&self.current_ca);
        match change {
            Change::AcceptNew => accept(machine, &new_crt),
            Change::Swap => {
                accept(machine, &current_crt);
                drop_accepted(machine, &new_crt);
                machine.ca = Some(CertificateAndKey {
                    crt: Some(new_crt),
                    key: (expected == MachineType::ControlPlane)
                        .then(|| Secret::new(base64::encode(&self.new_ca.key_pem))),
                });
            }
            Change::DropOld => drop_accepted(machine, &current_crt),
        }
        MachineConfig::from_documents(documents)
            .and_then(|c| c.to_yaml())
            .map_err(|e| anyhow!("the changed machine config: {e}"))
    }
}

fn type_name(t: MachineType) -> &'static str {
    match t {
        MachineType::ControlPlane => "controlplane",
        MachineType::Worker => "worker",
    }
}

/// The PEM a base64 config field holds, for comparing certificates however
/// they were wrapped.
fn pem_of(field: Option<&str>) -> Option<Vec<u8>> {
    base64::decode(field?).ok()
}

/// Adds `crt` (base64 PEM) to `acceptedCAs` unless it is there.
fn accept(machine: &mut v1alpha1::Machine, crt: &str) {
    let wanted = pem_of(Some(crt));
    let accepted = machine.accepted_cas.get_or_insert_with(Vec::new);
    if !accepted.iter().any(|c| pem_of(c.crt.as_deref()) == wanted) {
        accepted.push(Certificate {
            crt: Some(crt.to_owned()),
        });
    }
}

/// Removes `crt` (base64 PEM) from `acceptedCAs`; an empty list goes.
fn drop_accepted(machine: &mut v1alpha1::Machine, crt: &str) {
    let unwanted = pem_of(Some(crt));
    if let Some(accepted) = machine.accepted_cas.as_mut() {
        accepted.retain(|c| pem_of(c.crt.as_deref()) != unwanted);
        if accepted.is_empty() {
            machine.accepted_cas = None;
        }
    }
}

/// Whether a failed check may pass once the nodes take up the change: the
/// node could not be reached, or refused the TLS handshake.
fn retryable(err: &CallError) -> bool {
    match err {
        CallError::Transport(_) => true,
        CallError::Status(status) => status.code() == tonic::Code::Unavailable,
    }
}

fn describe(err: &CallError) -> String {
    match err {
        CallError::Transport(message) => message.clone(),
        CallError::Status(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args(line: &[&str]) -> RotateCaArgs {
        let mut argv = vec!["talosctl", "rotate-ca"];
        argv.extend_from_slice(line);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cli::Command::RotateCa(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn flags_default_to_a_dry_run_of_both_rotations() {
        let a = args(&["--control-plane-nodes", "10.5.0.2"]);
        assert!(a.dry_run && a.talos && a.kubernetes);
        assert_eq!(a.output, std::path::PathBuf::from("talosconfig"));
        let a = args(&["--dry-run=false", "--kubernetes=false", "-o", "new"]);
        assert!(!a.dry_run && a.talos && !a.kubernetes);
    }

    #[test]
    fn topology_from_the_flags() {
        let t = Topology::from_args(&args(&[
            "--init-node",
            "10.5.0.2",
            "--control-plane-nodes",
            "10.5.0.3,10.5.0.2",
            "--worker-nodes",
            "10.5.0.4, 10.5.0.5",
        ]))
        .expect("topology");
        assert_eq!(t.control_planes, ["10.5.0.2", "10.5.0.3"]);
        assert_eq!(t.workers, ["10.5.0.4", "10.5.0.5"]);
        let order: Vec<_> = t.nodes().map(|(n, _)| n).collect();
        assert_eq!(order, ["10.5.0.2", "10.5.0.3", "10.5.0.4", "10.5.0.5"]);

        let err = Topology::from_args(&args(&["--worker-nodes", "10.5.0.4"])).unwrap_err();
        assert!(err.to_string().contains("--control-plane-nodes"), "{err}");
        let err = Topology::from_args(&args(&[
            "--control-plane-nodes",
            "10.5.0.2",
            "--worker-nodes",
            "10.5.0.2",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
    }

    #[test]
    fn go_quoted_lists() {
        assert_eq!(go_quoted(&[]), "[]");
        assert_eq!(
            go_quoted(&["172.20.0.2".into(), "172.20.0.3".into()]),
            "[\"172.20.0.2\" \"172.20.0.3\"]"
        );
    }

    #[test]
    fn accepted_cas_are_compared_as_certificates() {
        let mut machine = v1alpha1::Machine::default();
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        accept(&mut machine, &base64::encode(pem));
        accept(&mut machine, &base64::encode(pem));
        assert_eq!(machine.accepted_cas.as_ref().map(Vec::len), Some(1));
        accept(&mut machine, &base64::encode("other"));
        drop_accepted(&mut machine, &base64::encode(pem));
        assert_eq!(machine.accepted_cas.as_ref().map(Vec::len), Some(1));
        drop_accepted(&mut machine, &base64::encode("other"));
        assert_eq!(machine.accepted_cas, None, "an empty list goes");
    }
}
