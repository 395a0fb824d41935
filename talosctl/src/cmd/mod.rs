//! The commands, one module per group, and the dispatcher.

pub mod apply;
pub mod cgroups;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod files;
pub mod generate;
pub mod get;
pub mod lifecycle;
pub mod logs;
pub mod machineconfig;
pub mod patch;
pub mod pcap;
pub mod rotate;
pub mod services;
pub mod support;
pub mod system;
pub mod version;

use std::path::Path;

use anyhow::{Context as _, anyhow};
use clap::CommandFactory as _;

use crate::cli::{AbsentCommand, Cli, Command, CompletionArgs};
use crate::client;

/// Runs the parsed command line.
///
/// # Errors
/// Whatever stops the command, as a message for the operator.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::ApplyConfig(args) => apply::run(&global, args).await,
        Command::Cgroups(args) => cgroups::run(&global, &args).await,
        Command::Cluster(args) => {
            let path = client::talosconfig_path(&global);
            crate::cluster::run(args, &path).await
        }
        Command::Completion(args) => completion(&args),
        Command::Config(args) => config::run(&global, args).await,
        Command::Copy(args) => files::copy(&global, args).await,
        Command::Disks => system::disks(&global).await,
        Command::Wipe(args) => system::wipe(&global, args).await,
        Command::Dashboard(args) => dashboard::run(&global, &args).await,
        Command::Dmesg(args) => logs::dmesg(&global, &args).await,
        Command::Events(args) => events::run(&global, args).await,
        Command::Gen(args) => generate::run(args),
        Command::Health(args) => lifecycle::health(&global, args).await,
        Command::Interfaces => system::interfaces(&global).await,
        Command::List(args) => files::list(&global, args).await,
        Command::Logs(args) => logs::logs(&global, args).await,
        Command::Memory(args) => system::memory(&global, &args).await,
        Command::MachineConfig(args) => machineconfig::run(args),
        Command::Meta(args) => lifecycle::meta(&global, args).await,
        Command::Get(args) => get::get(&global, args).await,
        Command::Patch(args) => patch::patch(&global, args).await,
        Command::Edit(args) => patch::edit(&global, args).await,
        Command::Mounts => system::mounts(&global).await,
        Command::Netstat(args) => system::netstat(&global, &args).await,
        Command::Pcap(args) => pcap::run(&global, args).await,
        Command::Support(args) => support::run(&global, args).await,
        Command::Processes(args) => system::processes(&global, &args).await,
        Command::Read(args) => files::read(&global, args).await,
        Command::Reboot(args) => lifecycle::reboot(&global, &args).await,
        Command::Reset(args) => lifecycle::reset(&global, args).await,
        Command::Rollback => lifecycle::rollback(&global).await,
        Command::RotateCa(args) => rotate::run(&global, &args).await,
        Command::Routes => system::routes(&global).await,
        Command::Service(args) => services::run(&global, args).await,
        Command::Shutdown(args) => lifecycle::shutdown(&global, &args).await,
        Command::Time(args) => system::time(&global, args).await,
        Command::Upgrade(args) => lifecycle::upgrade(&global, args).await,
        Command::Usage(args) => files::usage(&global, args).await,
        Command::Validate(args) => machineconfig::validate(&args),
        Command::Version(args) => version::run(&global, &args).await,
        Command::Absent(command) => Err(anyhow!(absent(&command))),
    }
}

/// Why an upstream command is not here, and what to use instead.
fn absent(command: &AbsentCommand) -> String {
    const ETCD: &str = "this OS runs no etcd or Kubernetes";
    const CRI: &str = "this OS runs no containerd or Kubernetes";
    let (name, why) = match command {
        AbsentCommand::Bootstrap(_) => (
            "bootstrap",
            format!("{ETCD}, so there is nothing to bootstrap: a node is up once its config is applied (`talosctl health` checks the cluster)"),
        ),
        AbsentCommand::Conformance(_) => ("conformance", ETCD.to_owned()),
        AbsentCommand::Containers(_) => (
            "containers",
            format!("{CRI}: the node's own services are processes (`talosctl services`, `talosctl processes`)"),
        ),
        AbsentCommand::ConvertK8s(_) => ("convert-k8s", ETCD.to_owned()),
        AbsentCommand::Crashdump(_) => (
            "crashdump",
            "it is gone upstream too: `talosctl support` gathers the node's state".to_owned(),
        ),
        AbsentCommand::Debug(_) => (
            "debug",
            format!("{CRI}, so no debug container can be started"),
        ),
        AbsentCommand::Drain(_) => ("drain", ETCD.to_owned()),
        AbsentCommand::Etcd(_) => ("etcd", ETCD.to_owned()),
        AbsentCommand::Image(_) => (
            "image",
            format!("{CRI}: installer images are pulled by `talosctl upgrade --image`"),
        ),
        AbsentCommand::Inject(_) => ("inject", ETCD.to_owned()),
        AbsentCommand::Inspect(_) => (
            "inspect",
            "the node's controller dependency graph is not served: `talosctl get` reads the resources".to_owned(),
        ),
        AbsentCommand::Kubeconfig(_) => ("kubeconfig", format!("{ETCD}, so there is no kubeconfig to fetch")),
        AbsentCommand::Restart(_) => (
            "restart",
            format!("{CRI}: restart a service with `talosctl service <id> restart`"),
        ),
        AbsentCommand::Stats(_) => (
            "stats",
            format!("{CRI}: `talosctl processes` and `talosctl cgroups` show the node's use"),
        ),
        AbsentCommand::UpgradeK8s(_) => ("upgrade-k8s", ETCD.to_owned()),
    };
    format!("talosctl {name} is not available: {why}")
}

fn completion(args: &CompletionArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::aot::generate(args.shell, &mut command, "talosctl", &mut script);
    crate::output::out_bytes(&script)
}

/// A config patch argument: `@path` reads the file, anything else is the
/// patch itself (YAML or JSON).
///
/// # Errors
/// The file cannot be read.
pub fn load_patch(argument: &str) -> anyhow::Result<String> {
    match argument.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(Path::new(path))
            .with_context(|| format!("reading config patch {path}")),
        None if argument.trim().is_empty() => Err(anyhow!("config patch is empty")),
        None => Ok(argument.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_file_patches() {
        assert_eq!(
            load_patch("machine: {install: {disk: /dev/vda}}").expect("inline"),
            "machine: {install: {disk: /dev/vda}}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("patch.yaml");
        std::fs::write(&path, "cluster: {}\n").expect("write");
        assert_eq!(
            load_patch(&format!("@{}", path.display())).expect("file"),
            "cluster: {}\n"
        );
        assert!(load_patch("@/nonexistent/patch.yaml").is_err());
        assert!(load_patch("  ").is_err());
    }
}
