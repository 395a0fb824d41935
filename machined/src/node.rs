//! The node's runtime state, shared by the API and the lifecycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use machinery::constants::NodePaths;
use tokio::sync::watch;

use crate::configstore::ConfigStore;
use crate::events::{EventBus, MachineStage, Payload};
use crate::logbuf::LogRegistry;
use crate::supervisor::Supervisor;

/// How machined runs: PID 1 on a VM or hardware (metal), or an ordinary
/// process with a state directory (container: tests, `process` clusters).
pub use machinery::mode::Mode;

/// What the lifecycle is asked to do when machined winds down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Stop and exit (container) or power off (metal).
    Shutdown,
    /// Stop and reboot (metal).
    Reboot,
    /// A machine config arrived in maintenance mode: stop the services and
    /// start again from the config, in the same process (no reboot).
    Configured,
    /// Stop, wipe what the reset plan says ([`Node::take_reset_plan`]),
    /// then reboot or power off as it says (metal).
    Reset,
}

/// Node settings from the command line.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Metal or container.
    pub mode: Mode,
    /// Root of the node's paths (`/` on metal, the state directory otherwise).
    pub root: PathBuf,
    /// Hostname to report when the config sets none.
    pub hostname: Option<String>,
    /// Where the other daemons' own binaries are; `None` (the default):
    /// machined's own executable carries them (see [`crate::daemons`]).
    pub bin_dir: Option<PathBuf>,
    /// apid's listen address (container mode: one loopback address per node).
    pub apid_listen: Option<SocketAddr>,
    /// trustd's listen address.
    pub trustd_listen: Option<SocketAddr>,
}

/// Shared runtime state.
#[derive(Debug)]
pub struct Node {
    /// Settings.
    pub options: NodeOptions,
    /// Well-known paths.
    pub paths: NodePaths,
    /// Log buffers.
    pub logs: Arc<LogRegistry>,
    /// Events.
    pub events: Arc<EventBus>,
    /// Machine config.
    pub config: Arc<ConfigStore>,
    /// Services, once started.
    pub supervisor: OnceLock<Arc<Supervisor>>,
    /// Serializes lifecycle actions (reboot, shutdown, reset, upgrade).
    pub lifecycle: tokio::sync::Mutex<()>,
    /// When machined started.
    pub started: std::time::SystemTime,
    /// This run started without a config (maintenance mode). A config
    /// applied now ends the run: machined starts over from it, or
    /// installs and reboots.
    pub maintenance_run: bool,
    power: watch::Sender<Option<(PowerAction, String)>>,
    reset: std::sync::Mutex<Option<crate::reset::ResetPlan>>,
}

impl Node {
    /// Assembles the runtime state.
    #[must_use]
    pub fn new(options: NodeOptions, logs: Arc<LogRegistry>, config: Arc<ConfigStore>) -> Node {
        let paths = NodePaths::under(&options.root);
        let maintenance_run = config.current().is_none();
        Node {
            options,
            paths,
            logs,
            events: Arc::new(EventBus::new()),
            config,
            supervisor: OnceLock::new(),
            lifecycle: tokio::sync::Mutex::new(()),
            started: std::time::SystemTime::now(),
            maintenance_run,
            power: watch::channel(None).0,
            reset: std::sync::Mutex::new(None),
        }
    }

    /// Running mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.options.mode
    }

    /// No machine config: maintenance mode.
    #[must_use]
    pub fn in_maintenance(&self) -> bool {
        self.config.current().is_none()
    }

    /// The hostname: config, else the command line, else the kernel's.
    #[must_use]
    pub fn hostname(&self) -> String {
        if let Some(h) = self
            .config
            .current()
            .and_then(|c| c.hostname().map(str::to_owned))
        {
            return h;
        }
        if let Some(h) = &self.options.hostname {
            return h.clone();
        }
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    }

    /// Asks the lifecycle to power off or reboot, unless an action is
    /// already pending: the first one asked for is the one carried out.
    /// The exception is the restart from a config applied in maintenance
    /// mode ([`PowerAction::Configured`]): a reboot, shutdown or reset
    /// takes over from it, as upstream's sequences take over a running
    /// boot, so an operator's reboot in that moment is not refused.
    /// Returns the actor id that tags the resulting events, or `None`
    /// when another action was already pending.
    pub fn try_request_power(&self, action: PowerAction) -> Option<String> {
        let actor = uuid::Uuid::new_v4().to_string();
        let taken = self.power.send_if_modified(|pending| {
            let takes_over = matches!(pending, Some((PowerAction::Configured, _)))
                && action != PowerAction::Configured;
            if pending.is_some() && !takes_over {
                return false;
            }
            *pending = Some((action, actor.clone()));
            true
        });
        if !taken {
            return None;
        }
        let stage = match action {
            PowerAction::Reboot => MachineStage::Rebooting,
            PowerAction::Shutdown => MachineStage::ShuttingDown,
            PowerAction::Configured => MachineStage::Booting,
            PowerAction::Reset => MachineStage::Resetting,
        };
        self.events.publish(
            Payload::MachineStatus {
                stage,
                ready: false,
                unmet: Vec::new(),
            },
            &actor,
        );
        Some(actor)
    }

    /// [`Node::try_request_power`] for machined's own steps: when another
    /// action is already pending, that one goes on, and its actor id is
    /// returned.
    pub fn request_power(&self, action: PowerAction) -> String {
        self.try_request_power(action).unwrap_or_else(|| {
            self.power
                .borrow()
                .as_ref()
                .map(|(_, actor)| actor.clone())
                .unwrap_or_default()
        })
    }

    /// Whether a lifecycle action (reboot, shutdown, reset, or the restart
    /// from a config applied in maintenance mode) is pending: nothing else
    /// may start.
    #[must_use]
    pub fn going_down(&self) -> bool {
        self.power.borrow().is_some()
    }

    /// Whether a reboot, shutdown or reset is pending: one that a new
    /// power request cannot take over from.
    #[must_use]
    pub fn powering_down(&self) -> bool {
        self.power
            .borrow()
            .as_ref()
            .is_some_and(|(action, _)| *action != PowerAction::Configured)
    }

    /// The action pending now, which may have taken over from the one
    /// the lifecycle first woke for.
    #[must_use]
    pub fn pending_action(&self) -> Option<PowerAction> {
        self.power.borrow().as_ref().map(|(action, _)| *action)
    }

    /// The action to carry out, and its actor id: `action` as the
    /// lifecycle woke for it, or, when that is the restart from a config
    /// applied in maintenance mode, the reboot, shutdown or reset that has
    /// taken over from it since (see [`Node::try_request_power`]).
    #[must_use]
    pub fn carried_out(&self, action: PowerAction, actor: String) -> (PowerAction, String) {
        if action != PowerAction::Configured {
            return (action, actor);
        }
        match self.power.borrow().clone() {
            Some((pending, by)) if pending != PowerAction::Configured => (pending, by),
            _ => (action, actor),
        }
    }

    /// Asks for a reset by `plan`: the services stop, then the plan's
    /// targets are wiped. Returns the actor id, or `None` (and forgets the
    /// plan) when another power action was already pending.
    pub fn request_reset(&self, plan: crate::reset::ResetPlan) -> Option<String> {
        let mut slot = self
            .reset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The plan goes in before the action, so that whoever sees the
        // action finds it; refused, the pending reset's plan (if any) is
        // put back.
        let previous = slot.replace(plan);
        let actor = self.try_request_power(PowerAction::Reset);
        if actor.is_none() {
            *slot = previous;
        }
        actor
    }

    /// The plan of the reset asked for, once.
    pub fn take_reset_plan(&self) -> Option<crate::reset::ResetPlan> {
        self.reset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Waits for a power request.
    pub async fn power_requested(&self) -> (PowerAction, String) {
        let mut rx = self.power.subscribe();
        loop {
            if let Some(req) = rx.borrow_and_update().clone() {
                return req;
            }
            if rx.changed().await.is_err() {
                return (PowerAction::Shutdown, String::new());
            }
        }
    }
}

/// A node rooted at `dir` in `mode`, with the config store at
/// `dir/config.yaml` (none yet), for unit tests.
#[cfg(test)]
pub(crate) fn test_node(dir: &std::path::Path, mode: Mode) -> Node {
    let options = NodeOptions {
        mode,
        root: dir.to_path_buf(),
        hostname: None,
        bin_dir: Some(dir.join("no-binaries")),
        apid_listen: None,
        trustd_listen: None,
    };
    let config = ConfigStore::load(dir.join("config.yaml")).expect("config store");
    Node::new(
        options,
        Arc::new(LogRegistry::new(64 * 1024, None)),
        Arc::new(config),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &std::path::Path) -> Node {
        test_node(dir, Mode::Metal)
    }

    fn plan(reboot: bool) -> crate::reset::ResetPlan {
        crate::reset::ResetPlan {
            reboot,
            targets: Vec::new(),
        }
    }

    #[test]
    fn the_first_power_action_asked_for_is_the_one_carried_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node(dir.path());
        assert!(!node.going_down());
        let reset = node.request_reset(plan(true)).expect("the first action");
        assert!(node.going_down());
        // A second reset, a reboot, a shutdown: refused, the plan kept.
        assert_eq!(node.request_reset(plan(false)), None);
        assert_eq!(node.try_request_power(PowerAction::Reboot), None);
        assert_eq!(node.try_request_power(PowerAction::Shutdown), None);
        // machined's own steps get the pending action's actor.
        assert_eq!(node.request_power(PowerAction::Reboot), reset);
        assert_eq!(node.take_reset_plan(), Some(plan(true)));
        let pending = node.power.borrow().clone();
        assert_eq!(pending, Some((PowerAction::Reset, reset)));
    }

    #[test]
    fn a_reboot_shutdown_or_reset_takes_over_from_the_restart_after_maintenance() {
        let dir = tempfile::tempdir().expect("tempdir");
        for action in [
            PowerAction::Reboot,
            PowerAction::Shutdown,
            PowerAction::Reset,
        ] {
            let node = node(dir.path());
            let restart = node
                .try_request_power(PowerAction::Configured)
                .expect("the restart");
            assert!(node.going_down());
            assert!(!node.powering_down());
            // A second restart is refused, and machined's own step gets
            // the pending one's actor.
            assert_eq!(node.try_request_power(PowerAction::Configured), None);
            assert_eq!(node.request_power(PowerAction::Configured), restart);
            let taken = if action == PowerAction::Reset {
                node.request_reset(plan(false))
            } else {
                node.try_request_power(action)
            }
            .expect("takes over");
            assert_ne!(taken, restart);
            assert!(node.powering_down());
            assert_eq!(node.pending_action(), Some(action));
            // The lifecycle, woken for the restart, carries this out.
            assert_eq!(
                node.carried_out(PowerAction::Configured, restart.clone()),
                (action, taken.clone())
            );
            // One woken for anything else carries that out.
            assert_eq!(
                node.carried_out(PowerAction::Shutdown, String::new()),
                (PowerAction::Shutdown, String::new())
            );
            // Once taken over, it is the first action as ever: nothing
            // more takes over, a restart included.
            assert_eq!(node.try_request_power(PowerAction::Reboot), None);
            assert_eq!(node.try_request_power(PowerAction::Configured), None);
            assert_eq!(node.pending_action(), Some(action));
        }
    }

    #[test]
    fn a_reset_after_a_reboot_leaves_no_plan_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node(dir.path());
        node.try_request_power(PowerAction::Reboot).expect("reboot");
        assert_eq!(node.request_reset(plan(true)), None);
        assert_eq!(node.take_reset_plan(), None);
    }
}
