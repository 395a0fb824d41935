//! The daemons machined runs as services: those its executable carries
//! ([`crate::daemons::CARRIED`]), in that order.

use std::time::Duration;

use crate::node::{Mode, Node};
use crate::supervisor::{HealthCheck, HealthSpec, RestartPolicy, ServiceSpec};

/// The service specs for this node.
#[must_use]
pub fn daemon_specs(node: &Node) -> Vec<ServiceSpec> {
    let control_plane = node
        .config
        .current()
        .is_some_and(|c| c.machine_type().is_control_plane());
    let root = node.options.root.display().to_string();
    let mode = node.mode().as_str();
    // On metal each daemon gets its own control group (crate::cgroups),
    // when boot mounted the hierarchy.
    let cgroups = (node.mode() == Mode::Metal
        && crate::cgroups::is_unified(std::path::Path::new(crate::cgroups::ROOT)))
    .then(|| std::path::Path::new(crate::cgroups::ROOT).join(crate::cgroups::SYSTEM));
    // machine.env, as upstream gives it to every service; read at boot.
    let env = node.config.current().map(|c| c.env()).unwrap_or_default();
    let mut specs = Vec::new();
    for &(daemon, _) in crate::daemons::CARRIED {
        if daemon == "trustd" && !control_plane {
            continue;
        }
        let args = ["--mode", mode, "--root", root.as_str()];
        let spec = match &node.options.bin_dir {
            Some(dir) => {
                let program = dir.join(daemon);
                if !program.exists() {
                    tracing::warn!(daemon, path = %program.display(), "daemon binary missing; not starting it");
                    continue;
                }
                ServiceSpec::new(daemon, program, args)
            }
            None => ServiceSpec::new(daemon, crate::daemons::OWN_EXECUTABLE, args).arg0(daemon),
        };
        let socket_dir = node.paths.socket_dir(daemon);
        let spec = match &cgroups {
            Some(system) => spec.cgroup(system.join(daemon)),
            None => spec,
        };
        let mut spec = env
            .iter()
            .fold(spec, |spec, (k, v)| spec.env(k, v))
            .restart(RestartPolicy::Forever)
            .backoff(Duration::from_millis(500), Duration::from_secs(30))
            .stop_grace(Duration::from_secs(10))
            .socket_dir(&socket_dir);
        let health = match daemon {
            "apid" => {
                let listen = node
                    .options
                    .apid_listen
                    .unwrap_or_else(|| ([0, 0, 0, 0], machinery::constants::APID_PORT).into());
                spec.args.extend([
                    "--listen".to_owned(),
                    listen.to_string(),
                    "--names".to_owned(),
                    node.hostname(),
                ]);
                // No dependency on routerd: apid connects to it per call
                // (lazily, reconnecting), so both start at once and the
                // node answers a process start sooner; a call in the
                // moment before routerd listens gets Unavailable.
                spec.api_stoppable = false;
                let check = if listen.ip().is_unspecified() {
                    ([127, 0, 0, 1], listen.port()).into()
                } else {
                    listen
                };
                HealthCheck::Tcp(check)
            }
            "trustd" => {
                let listen = node
                    .options
                    .trustd_listen
                    .unwrap_or_else(|| ([0, 0, 0, 0], machinery::constants::TRUSTD_PORT).into());
                spec.args
                    .extend(["--listen".to_owned(), listen.to_string()]);
                let check = if listen.ip().is_unspecified() {
                    ([127, 0, 0, 1], listen.port()).into()
                } else {
                    listen
                };
                HealthCheck::Tcp(check)
            }
            "routerd" => {
                spec.api_stoppable = false;
                HealthCheck::UnixSocket(node.paths.socket(daemon))
            }
            _ => HealthCheck::UnixSocket(node.paths.socket(daemon)),
        };
        let mut health = HealthSpec::new(health);
        health.initial_delay = Duration::from_millis(10);
        // Each of our daemons reports when it listens
        // (machinery::daemon::notify_ready): then a sparse startup poll is
        // only the fallback.
        health.notify = Some(
            node.paths
                .socket_dir("machined")
                .join("notify")
                .join(format!("{daemon}.sock")),
        );
        health.startup_retry = Duration::from_millis(250);
        health.period = if node.mode() == Mode::Container {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        specs.push(spec.health(health));
    }
    specs
}
