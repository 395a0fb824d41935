//! The reconcile loop.
//!
//! networkd subscribes to the rtnetlink multicast groups (links, IPv4/IPv6
//! addresses and routes) before it first reads the kernel's state, so no
//! change is missed. Each event marks the state stale; after a short quiet
//! period ([`DEBOUNCE`]) that gathers a burst of events, the loop re-reads
//! a full snapshot ([`crate::netlink::snapshot`]), computes the desired
//! state and the plan ([`crate::plan`]), applies it, starts or stops DHCP
//! clients, and rewrites the files that changed ([`crate::files`]). Reading
//! a snapshot rather than patching a cached state from each event means a
//! lost event (netlink drops them when its socket buffer overflows) heals
//! on the next one. Nothing is polled: without events or DHCP timers the
//! loop sleeps.
//!
//! DHCP clients run as tasks of their own ([`crate::dhcp::io`]) and report
//! lease events on a channel; the loop applies a new or renewed lease at
//! once (refreshing the address lifetimes) and removes the address and
//! routes of a lost or released one.
//!
//! In container mode the loop only observes: it keeps the addresses file up
//! to date and changes nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use machinery::constants::NodePaths;
use rtnetlink::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cmdline::KernelArgs;
use crate::dhcp::{self, ClientLink, Lease, LeaseEvent, LeaseEventKind};
use crate::plan::{self, Action, Desired};
use crate::settings::{ConfigFile, ConfigWatch};
use crate::state::Observed;
use crate::{Mode, Options, files, hostname, netlink};

/// How long the loop waits for a burst of netlink events to end before it
/// re-reads the state.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How many times in a row the loop looks again after changes of its own.
const MAX_FOLLOW_UPS: u32 = 3;

/// How long a WireGuard link that could not be set waits for the next try.
pub const WIREGUARD_RETRY: Duration = Duration::from_secs(10);

/// How long a stopping DHCP client may take to send its RELEASE.
const CLIENT_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A running DHCP client.
#[derive(Debug)]
struct RunningClient {
    index: u32,
    /// Its number, carried by its events.
    number: u64,
    /// The metric of its lease's routes.
    metric: u32,
    /// The MAC it runs with.
    mac: [u8; 6],
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<Lease>>,
}

impl RunningClient {
    /// Stops the client; returns the lease it released.
    async fn stop(self, name: &str) -> Option<Lease> {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        match tokio::time::timeout(CLIENT_STOP_TIMEOUT, self.task).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(e)) => {
                tracing::warn!(link = name, error = %e, "the DHCP client task failed");
                None
            }
            Err(_) => {
                // Not left running beside its successor.
                abort.abort();
                tracing::warn!(link = name, "the DHCP client did not stop in time");
                None
            }
        }
    }
}

/// The reconcile loop's state.
#[derive(Debug)]
pub struct Reconciler {
    mode: Mode,
    paths: NodePaths,
    handle: Handle,
    options: Options,
    kernel: KernelArgs,
    config: ConfigFile,
    leases: BTreeMap<String, Lease>,
    clients: BTreeMap<String, RunningClient>,
    events_tx: mpsc::UnboundedSender<LeaseEvent>,
    events_rx: mpsc::UnboundedReceiver<LeaseEvent>,
    kernel_hostname: Option<String>,
    node_addresses: Option<Vec<IpAddr>>,
    /// The problems of the settings on these links last logged, so each
    /// is logged once.
    problems: Vec<String>,
    /// The static addresses and routes networkd last wanted, which it
    /// takes away when the config drops them.
    owned: plan::Owned,
    /// The number the next DHCP client gets.
    next_client: u64,
    /// What each WireGuard link was last set to, with its index then (a
    /// link made anew is set again).
    wireguard: BTreeMap<String, (u32, crate::wireguard::Spec)>,
    /// When to try again a WireGuard link that could not be set (an
    /// endpoint that did not resolve, say), network events or not.
    wireguard_retry: Option<tokio::time::Instant>,
}

impl Reconciler {
    /// A loop for the node at `paths`, acting through `handle` (whose
    /// connection must be running), with the kernel arguments `kernel`.
    #[must_use]
    pub fn new(
        mode: Mode,
        paths: NodePaths,
        handle: Handle,
        options: Options,
        kernel: KernelArgs,
    ) -> Reconciler {
        let config = ConfigFile::new(paths.live_config());
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Reconciler {
            mode,
            paths,
            handle,
            options,
            kernel,
            config,
            leases: BTreeMap::new(),
            clients: BTreeMap::new(),
            events_tx,
            events_rx,
            kernel_hostname: None,
            node_addresses: None,
            problems: Vec::new(),
            owned: plan::Owned::default(),
            next_client: 1,
            wireguard: BTreeMap::new(),
            wireguard_retry: None,
        }
    }

    /// Runs until `stop` turns true (or its sender is dropped), following
    /// the netlink `events`; then stops the DHCP clients, releasing their
    /// leases.
    pub async fn run<S>(mut self, mut events: S, mut stop: watch::Receiver<bool>)
    where
        S: Stream + Unpin,
    {
        let mut netlink_open = true;
        // After changes of its own, the loop looks again once things
        // settle: the kernel may report them to the socket that made them
        // as replies rather than as events.
        let mut follow_up: Option<tokio::time::Instant> = None;
        let mut follow_ups = 0u32;
        // Watched before the first read, so that no change is missed. Only
        // on metal: in a container networkd reads no config.
        let mut watch = match self.mode {
            Mode::Metal => match ConfigWatch::spawn(self.config.path()) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!(error = %e, "not watching the machine config: a change applies at the next network event");
                    None
                }
            },
            Mode::Container => None,
        };
        let mut changed = self.sync().await;
        loop {
            if changed && follow_ups < MAX_FOLLOW_UPS {
                follow_ups += 1;
                follow_up = Some(tokio::time::Instant::now() + DEBOUNCE);
            } else if !changed {
                follow_ups = 0;
                follow_up = None;
            }
            changed = false;
            if *stop.borrow() {
                break;
            }
            let follow_up_at = follow_up;
            let follow_up_timer = async move {
                match follow_up_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let retry_at = self.wireguard_retry;
            let retry_timer = async move {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                event = events.next(), if netlink_open => {
                    if event.is_none() {
                        tracing::warn!("the netlink event socket closed; network changes are no longer followed");
                        netlink_open = false;
                        continue;
                    }
                    // Gather the rest of the burst.
                    let quiet_until = tokio::time::Instant::now() + DEBOUNCE;
                    loop {
                        match tokio::time::timeout_at(quiet_until, events.next()).await {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                netlink_open = false;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    changed = self.sync().await;
                }
                Some(event) = self.events_rx.recv() => {
                    self.on_lease(event).await;
                    changed = self.sync().await;
                }
                result = async {
                    match watch.as_mut() {
                        Some(watch) => watch.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match result {
                        Ok(()) => {
                            tracing::info!(path = %self.config.path().display(), "the machine config changed");
                            changed = self.sync().await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "watching the machine config stopped: a change applies at the next network event");
                            watch = None;
                        }
                    }
                }
                () = follow_up_timer => {
                    follow_up = None;
                    changed = self.sync().await;
                }
                () = retry_timer => {
                    self.wireguard_retry = None;
                    changed = self.sync().await;
                }
                result = stop.changed() => {
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// Reads the state and reconciles once; returns whether it changed
    /// anything in the kernel.
    pub async fn sync(&mut self) -> bool {
        let mut observed = match netlink::snapshot(self.handle.clone()).await {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!(error = %e, "reading the network state");
                return false;
            }
        };
        let mut changed = false;
        if self.mode == Mode::Metal {
            self.config.refresh();
            // Selectors match on what sysfs says of each device: read only
            // when the config has one, not on every snapshot (the API's
            // included).
            if self.config.settings().has_selectors() {
                for link in &mut observed.links {
                    link.hardware =
                        crate::hardware::device_info(std::path::Path::new("/sys"), &link.name);
                }
            }
            let desired = plan::desired(
                self.config.settings(),
                &self.kernel,
                &observed,
                &self.leases,
                Instant::now(),
            );
            // The settings' own problems are logged as the file is read;
            // these depend on the links too.
            if desired.problems != self.problems {
                for problem in desired
                    .problems
                    .iter()
                    .filter(|p| !self.problems.contains(p))
                {
                    tracing::warn!("{problem}");
                }
                self.problems.clone_from(&desired.problems);
            }
            // What the config no longer asks for goes first: a moved
            // address must not leave its old one, or its routes, behind.
            let removals = plan::removals(&self.owned, &desired, &observed);
            let mut actions = removals.clone();
            actions.extend(plan::plan(&desired, &observed));
            let applied = self.apply_all(&actions).await;
            changed = !applied.is_empty();
            self.configure_wireguard(&desired, &observed).await;
            // Still owned until the kernel no longer has them: a removal
            // that failed is tried again on the next pass.
            self.owned = self.owned.next(&desired);
            self.owned.keep(&removals);
            self.manage_dhcp(&desired).await;
            self.write_node_files(&observed);
        }
        self.write_addresses(&observed);
        changed
    }

    /// Sets each configured WireGuard link that exists to its settings
    /// when they changed or the link is new (one that fails is tried again
    /// after [`WIREGUARD_RETRY`]).
    async fn configure_wireguard(&mut self, desired: &Desired, observed: &Observed) {
        self.wireguard
            .retain(|name, _| desired.wireguards.iter().any(|(n, _)| n == name));
        for (name, spec) in &desired.wireguards {
            let Some(link) = observed
                .links
                .iter()
                .find(|l| &l.name == name && l.kind.as_deref() == Some("wireguard"))
            else {
                continue;
            };
            let want = (link.index, spec.clone());
            if self.wireguard.get(name) == Some(&want) {
                continue;
            }
            tracing::info!(
                peers = spec.peers.len(),
                "setting the keys and peers of the WireGuard link {name}"
            );
            let set = match crate::wireguard::resolve_endpoints(spec).await {
                Ok(endpoints) => {
                    let (link_name, settings) = (name.clone(), spec.clone());
                    tokio::task::spawn_blocking(move || {
                        crate::wireguard::configure(&link_name, &settings, &endpoints)
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                }
                Err(e) => Err(e),
            };
            match set {
                Ok(()) => {
                    self.wireguard.insert(name.clone(), want);
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "setting the WireGuard link {name} failed (tried again in {} s)",
                        WIREGUARD_RETRY.as_secs()
                    );
                    self.wireguard_retry = Some(tokio::time::Instant::now() + WIREGUARD_RETRY);
                }
            }
        }
    }

    /// Applies `actions` in order; returns those that succeeded.
    async fn apply_all(&self, actions: &[Action]) -> Vec<Action> {
        let mut applied = Vec::new();
        for action in actions {
            tracing::info!("{}", describe(action));
            match netlink::apply(&self.handle, action).await {
                Ok(()) => applied.push(action.clone()),
                Err(e) => tracing::warn!(
                    error = %e,
                    "network change failed (retried on the next network event)"
                ),
            }
        }
        applied
    }

    async fn manage_dhcp(&mut self, desired: &Desired) {
        let running: BTreeMap<String, plan::RunningDhcp> = self
            .clients
            .iter()
            .map(|(name, client)| {
                (
                    name.clone(),
                    plan::RunningDhcp {
                        index: client.index,
                        metric: client.metric,
                        mac: client.mac,
                    },
                )
            })
            .collect();
        let (start, stop) = plan::dhcp_changes(desired, &running);
        for name in stop {
            self.stop_client(&name).await;
        }
        for client in start {
            let config = dhcp::Config {
                mac: client.mac,
                hostname: self.config.settings().hostname.clone(),
                renew_after: self.options.dhcp_renew_after,
            };
            let seed = getrandom::u32().unwrap_or_else(|_| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                nanos ^ client.index.rotate_left(16) ^ std::process::id()
            });
            let (stop_tx, stop_rx) = oneshot::channel();
            let task = tokio::spawn(dhcp::run_client(
                ClientLink {
                    index: client.index,
                    name: client.name.clone(),
                    client: self.next_client,
                },
                config,
                seed,
                self.events_tx.clone(),
                stop_rx,
            ));
            self.clients.insert(
                client.name,
                RunningClient {
                    index: client.index,
                    number: self.next_client,
                    metric: client.metric,
                    mac: client.mac,
                    stop: stop_tx,
                    task,
                },
            );
            self.next_client += 1;
        }
    }

    /// Stops the client on `name` and removes its lease from the link.
    async fn stop_client(&mut self, name: &str) {
        let Some(client) = self.clients.remove(name) else {
            return;
        };
        let (index, metric) = (client.index, client.metric);
        let released = client.stop(name).await;
        let held = self.leases.remove(name);
        if let Some(lease) = released.or(held) {
            self.apply_all(&plan::lease_removal(index, name, &lease, metric))
                .await;
        }
    }

    async fn on_lease(&mut self, event: LeaseEvent) {
        // Events of a client that was stopped or replaced are stale.
        let metric = match self.clients.get(&event.link) {
            Some(client) if client.index == event.index && client.number == event.client => {
                client.metric
            }
            _ => return,
        };
        let lease = &event.lease;
        let link = event.link.as_str();
        let routers: Vec<String> = lease.routers.iter().map(ToString::to_string).collect();
        let dns: Vec<String> = lease.dns.iter().map(ToString::to_string).collect();
        let lease_secs = lease.lease_time.map(|d| d.as_secs());
        let renew_secs = lease.t1.map(|d| d.as_secs());
        match event.kind {
            LeaseEventKind::Bound => {
                tracing::info!(
                    link,
                    address = %format!("{}/{}", lease.address, lease.prefix),
                    server = %lease.server,
                    ?routers,
                    ?dns,
                    lease_secs,
                    renew_secs,
                    "DHCP lease acquired"
                );
            }
            LeaseEventKind::Renewed => {
                tracing::info!(
                    link,
                    address = %lease.address,
                    lease_secs,
                    renew_secs,
                    "DHCP lease renewed"
                );
            }
            LeaseEventKind::Lost => {
                tracing::info!(link, address = %lease.address, "DHCP lease lost");
            }
        }
        match event.kind {
            LeaseEventKind::Bound | LeaseEventKind::Renewed => {
                self.leases.insert(event.link.clone(), event.lease.clone());
                let actions =
                    plan::lease_actions(event.index, link, &event.lease, Instant::now(), metric);
                self.apply_all(&actions).await;
            }
            LeaseEventKind::Lost => {
                self.leases.remove(link);
                self.apply_all(&plan::lease_removal(
                    event.index,
                    link,
                    &event.lease,
                    metric,
                ))
                .await;
            }
        }
    }

    /// Stops every DHCP client, releasing and removing its lease.
    async fn shutdown(&mut self) {
        let names: Vec<String> = self.clients.keys().cloned().collect();
        for name in names {
            self.stop_client(&name).await;
        }
    }

    fn write(&self, path: &Path, contents: &str, what: &str) -> bool {
        // resolv.conf and hosts are bind-mounted over /etc on metal: they
        // must keep their inode.
        let bound = *path == files::resolv_conf_path(&self.paths)
            || *path == files::hosts_path(&self.paths);
        let result = if bound {
            files::write_in_place(path, contents)
        } else {
            files::write_atomic(path, contents)
        };
        match result {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "writing {what}");
                false
            }
        }
    }

    fn write_node_files(&mut self, observed: &Observed) {
        let settings = self.config.settings();
        let dhcp_hostname = self.leases.values().find_map(|l| l.hostname.as_deref());
        let dhcp_domain = self.leases.values().find_map(|l| l.domain.as_deref());
        let seed = observed.hostname_seed();
        let name = hostname::choose(
            settings.hostname.as_deref(),
            self.kernel.hostname(),
            dhcp_hostname,
            dhcp_domain,
            (!settings.auto_hostname_off).then_some(seed.as_slice()),
        );

        let nameservers = if settings.nameservers.is_empty() {
            let mut servers = self.kernel.dns();
            for lease in self.leases.values() {
                for server in &lease.dns {
                    let server = IpAddr::V4(*server);
                    if !servers.contains(&server) {
                        servers.push(server);
                    }
                }
            }
            if servers.is_empty() {
                files::DEFAULT_RESOLVERS.to_vec()
            } else {
                servers
            }
        } else {
            settings.nameservers.clone()
        };
        let search: Vec<String> = if settings.disable_search_domain {
            settings.search_domains.clone()
        } else if settings.search_domains.is_empty() {
            name.domain.iter().cloned().collect()
        } else {
            settings.search_domains.clone()
        };
        let resolv = files::resolv_conf(&nameservers, &search);
        if self.write(
            &files::resolv_conf_path(&self.paths),
            &resolv,
            "resolv.conf",
        ) {
            tracing::info!(?nameservers, ?search, "resolvers updated");
        }
        let hosts = files::hosts(
            &name.name,
            &name.fqdn(),
            observed.node_addresses().into_iter().next(),
            &settings.extra_hosts,
        );
        self.write(&files::hosts_path(&self.paths), &hosts, "the hosts file");
        if self.write(
            &files::hostname_path(&self.paths),
            &format!("{}\n", name.name),
            "the hostname file",
        ) {
            tracing::info!(hostname = %name.fqdn(), source = ?name.source, "hostname");
        }
        // Only a node rooted at / owns the kernel hostname: a metal run
        // under another root (a test) must not rename the machine it runs on.
        if self.paths.root() == Path::new("/")
            && self.kernel_hostname.as_deref() != Some(name.name.as_str())
        {
            match rustix::system::sethostname(name.name.as_bytes()) {
                Ok(()) => self.kernel_hostname = Some(name.name.clone()),
                Err(e) => {
                    tracing::warn!(hostname = %name.name, error = %e, "setting the kernel hostname")
                }
            }
        }
    }

    fn write_addresses(&mut self, observed: &Observed) {
        let addresses = observed.node_addresses();
        let path = files::addresses_path(&self.paths);
        self.write(&path, &files::addresses(&addresses), "the node addresses");
        if self.node_addresses.as_ref() != Some(&addresses) {
            tracing::info!(?addresses, "node addresses");
            self.node_addresses = Some(addresses);
        }
    }
}

/// A log line for an action.
#[must_use]
pub fn describe(action: &Action) -> String {
    match action {
        Action::CreateBond { name, bond } => format!(
            "creating the bond {name} ({})",
            machinery::config::v1alpha1::BOND_MODES
                .get(usize::from(bond.mode))
                .unwrap_or(&"mode unknown")
        ),
        Action::CreateBridge { name, bridge } => format!(
            "creating the bridge {name} (STP {}, VLAN filtering {})",
            if bridge.stp { "on" } else { "off" },
            if bridge.vlan_filtering { "on" } else { "off" }
        ),
        Action::Enslave {
            name, controller, ..
        } => format!("adding {name} to {controller}"),
        Action::CreateDummy { name } => format!("creating the dummy link {name}"),
        Action::CreateWireguard { name } => format!("creating the WireGuard link {name}"),
        Action::Release {
            name, controller, ..
        } => format!("taking {name} out of {controller} (no longer configured)"),
        Action::DeleteLink { name, kind, .. } => {
            format!("deleting the {kind} link {name} (no longer configured)")
        }
        Action::CreateVlan {
            name, parent, vid, ..
        } => format!("creating the VLAN link {name} (id {vid} on {parent})"),
        Action::SetUp { name, .. } => format!("bringing {name} up"),
        Action::SetMtu { name, mtu, .. } => format!("setting the MTU of {name} to {mtu}"),
        Action::AddAddress {
            name,
            address,
            replace,
            ..
        } => {
            let verb = if *replace { "refreshing" } else { "adding" };
            match address.lifetime {
                Some(lifetime) => format!(
                    "{verb} {}/{} on {name} (valid {} s)",
                    address.address, address.prefix, lifetime.valid
                ),
                None => format!("{verb} {}/{} on {name}", address.address, address.prefix),
            }
        }
        Action::DelAddress {
            name,
            address,
            prefix,
            ..
        } => format!("removing {address}/{prefix} from {name}"),
        Action::AddRoute { name, route, .. } => match route.gateway {
            Some(gateway) => format!(
                "adding the route {}/{} via {gateway} on {name}",
                route.destination, route.prefix
            ),
            None => format!(
                "adding the on-link route {}/{} on {name}",
                route.destination, route.prefix
            ),
        },
        Action::DelRoute { name, route, .. } => format!(
            "removing the route {}/{} from {name}",
            route.destination, route.prefix
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{DesiredAddress, Lifetime};

    #[test]
    fn actions_read_well_in_the_log() {
        let add = Action::AddAddress {
            index: 2,
            name: "eth0".into(),
            address: DesiredAddress {
                address: "10.0.0.5".parse().expect("ip"),
                prefix: 24,
                lifetime: Some(Lifetime {
                    valid: 120,
                    preferred: 120,
                }),
                origin: crate::plan::Origin::Dhcp,
            },
            replace: true,
        };
        assert_eq!(
            describe(&add),
            "refreshing 10.0.0.5/24 on eth0 (valid 120 s)"
        );
        assert_eq!(
            describe(&Action::SetMtu {
                index: 2,
                name: "eth0".into(),
                mtu: 1400
            }),
            "setting the MTU of eth0 to 1400"
        );
    }
}
