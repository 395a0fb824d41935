//! The rules a decoded config must satisfy, and the values they yield.
//!
//! [`check`] walks the whole document and collects every problem rather than
//! stopping at the first, so a user fixes a config in one round. On success
//! it hands back the values the rules already computed (the decoded CA, the
//! machine type, ...), which the validated
//! [`MachineConfig`](super::MachineConfig) keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use serde_yaml_ng::Value;

use super::error::ValidationIssue;
use super::registries::{self, Registries};
use super::v1alpha1::{
    BOND_MODES, BOND_XMIT_HASH_POLICIES, Cluster, Device, DeviceSelector, Machine, Network, Route,
    Secret,
};
use super::{Documents, MachineType, V1ALPHA1};
use crate::base64;

/// How a bootstrap/trustd token looks, for messages.
const TOKEN_SHAPE: &str =
    "`abcdef.0123456789abcdef` (6 and 16 characters of [a-z0-9] joined by a dot)";

/// Values computed while validating.
#[derive(Debug)]
pub(super) struct Derived {
    pub(super) machine_type: MachineType,
    pub(super) ca_crt_pem: Vec<u8>,
    pub(super) ca_key_pem: Option<Vec<u8>>,
    pub(super) accepted_cas_pem: Vec<Vec<u8>>,
    pub(super) control_plane_endpoint: String,
    pub(super) boot_timeout: Option<Duration>,
    pub(super) registries: Registries,
    pub(super) document_settings: super::DocumentSettings,
    pub(super) install_disk_selector: Option<super::DiskSelector>,
    pub(super) strict_issues: Vec<ValidationIssue>,
}

#[derive(Debug, Default)]
pub(super) struct Issues(Vec<ValidationIssue>);

impl Issues {
    /// The paths named, in order (for tests).
    #[cfg(test)]
    pub(super) fn paths(&self) -> Vec<String> {
        self.0.iter().map(|issue| issue.path.clone()).collect()
    }

    pub(super) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ValidationIssue {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Checks every rule; returns the derived values or every problem found.
pub(super) fn check(documents: &Documents) -> Result<Derived, Vec<ValidationIssue>> {
    let mut issues = Issues::default();
    let config = &documents.v1alpha1;

    if config.version != V1ALPHA1 {
        issues.push(
            "version",
            format!("must be \"{V1ALPHA1}\", got {:?}", config.version),
        );
    }
    if config.persist == Some(false) {
        issues.push(
            "persist",
            "must not be false: the machine config is always persisted",
        );
    }

    let Some(machine) = config.machine.as_ref() else {
        issues.push("machine", "is required");
        return Err(issues.0);
    };

    let machine_type = check_machine_type(machine, &mut issues);
    check_machine_token(machine, &mut issues);
    let MachineCa {
        crt: ca_crt_pem,
        key: ca_key_pem,
        accepted: accepted_cas_pem,
    } = check_machine_ca(machine, machine_type, &mut issues);
    check_install(machine, &mut issues);
    check_trusted_keys(machine, &mut issues);
    // Rules added after configs were persisted: strict (see below).
    let mut strict = Issues::default();
    check_files(machine, &mut issues, &mut strict);
    check_env(machine, &mut strict);
    // networkd would pass over a name it cannot take for a generated one.
    if let Some(problem) = machine
        .network
        .as_ref()
        .and_then(|network| network.hostname.as_deref())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .and_then(super::documents::host_name_problem)
    {
        strict.push("machine.network.hostname", problem);
    }
    // Upstream encrypts STATE and EPHEMERAL as asked; a node that cannot
    // must not leave them in plain text while the config says otherwise.
    if machine
        .system_disk_encryption
        .as_ref()
        .is_some_and(super::unapplied::says_something)
    {
        strict.push(
            "machine.systemDiskEncryption",
            "disk encryption is not supported by this node: STATE and EPHEMERAL would stay \
             unencrypted (remove it to apply this config)",
        );
    }
    let document_settings = super::documents::read(documents, &mut strict);
    let install_disk_selector = machine
        .install
        .as_ref()
        .and_then(|install| install.disk_selector.as_ref())
        .and_then(|selector| super::disk_selector::read(selector, &mut strict));
    if let Some(network) = &machine.network {
        check_network(network, &mut issues);
    }
    let boot_timeout = check_time(machine, &mut issues);
    check_logging(machine, &mut issues);
    check_kernel_params(machine, &mut issues);
    check_features(machine, &mut issues);
    check_kubelet(machine, &mut issues);
    // Checked strictly only when a config is applied (see
    // `MachineConfig::strict_check`): configs persisted before these rules
    // existed must still load at boot.
    let (access, mut strict_issues) = registries::read(machine.registries.as_ref());
    strict_issues.extend(strict.0);
    let registries = Registries {
        mirrors: registries::read_mirrors(machine.registries.as_ref()),
        config: access,
        trusted_roots: document_settings.trusted_roots.clone(),
    };
    let control_plane_endpoint = check_cluster(
        config.cluster.as_ref(),
        documents,
        machine_type,
        &mut issues,
    );

    match (machine_type, ca_crt_pem, control_plane_endpoint) {
        (Some(machine_type), Some(ca_crt_pem), Some(control_plane_endpoint))
            if issues.0.is_empty() =>
        {
            Ok(Derived {
                machine_type,
                ca_crt_pem,
                ca_key_pem,
                accepted_cas_pem,
                control_plane_endpoint,
                boot_timeout,
                registries,
                document_settings,
                install_disk_selector,
                strict_issues,
            })
        }
        _ => {
            // Every `None` above comes with an issue; this only guards the invariant.
            if issues.0.is_empty() {
                issues.push("machine", "is invalid");
            }
            Err(issues.0)
        }
    }
}

// === machine ===

/// `machine.sysctls` and `machine.sysfs` keys name files under `/proc/sys`
/// and `/sys`: every dotted part must be a file name (no empty part, no
/// `..`), so that none can point elsewhere.
fn check_kernel_params(machine: &Machine, issues: &mut Issues) {
    for (field, map) in [("sysctls", &machine.sysctls), ("sysfs", &machine.sysfs)] {
        for key in map.iter().flat_map(BTreeMap::keys) {
            if super::kernel_param_parts(key, field == "sysctls").is_none() {
                issues.push(
                    format!("machine.{field}.{key}"),
                    "is not a kernel parameter name: dotted parts, none empty or \"..\"",
                );
            }
        }
    }
}

fn check_machine_type(machine: &Machine, issues: &mut Issues) -> Option<MachineType> {
    match machine.machine_type.as_deref() {
        Some("controlplane" | "init") => Some(MachineType::ControlPlane),
        Some("worker" | "join") => Some(MachineType::Worker),
        None | Some("") => {
            issues.push("machine.type", "is required (controlplane or worker)");
            None
        }
        Some(other) => {
            issues.push(
                "machine.type",
                format!("unknown machine type {other:?} (expected controlplane or worker)"),
            );
            None
        }
    }
}

fn check_machine_token(machine: &Machine, issues: &mut Issues) {
    match machine.token.as_ref().map(Secret::expose) {
        None | Some("") => issues.push("machine.token", "is required"),
        // The token itself is a secret: never echo it.
        Some(token) if !is_bootstrap_token(token) => {
            issues.push("machine.token", format!("must look like {TOKEN_SHAPE}"));
        }
        Some(_) => {}
    }
}

/// The decoded PEMs of `machine.ca` and `machine.acceptedCAs`.
struct MachineCa {
    crt: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    accepted: Vec<Vec<u8>>,
}

/// Checks `machine.ca` and `machine.acceptedCAs`; returns the decoded PEMs.
fn check_machine_ca(
    machine: &Machine,
    machine_type: Option<MachineType>,
    issues: &mut Issues,
) -> MachineCa {
    let ca = machine.ca.as_ref();

    let crt = ca
        .and_then(|ca| ca.crt.as_deref())
        .filter(|crt| !crt.is_empty());
    let crt_pem = match crt {
        None => {
            issues.push("machine.ca.crt", "is required");
            None
        }
        Some(crt) => decode_pem("machine.ca.crt", crt, issues),
    };

    let key = ca
        .and_then(|ca| ca.key.as_ref())
        .map(Secret::expose)
        .filter(|key| !key.is_empty());
    let key_pem = match (machine_type, key) {
        (Some(MachineType::Worker), Some(_)) => {
            issues.push(
                "machine.ca.key",
                "must be empty on worker nodes: only control plane nodes hold the Talos API CA key",
            );
            None
        }
        (Some(MachineType::ControlPlane), None) => {
            issues.push("machine.ca.key", "is required on control plane nodes");
            None
        }
        (_, Some(key)) => decode_pem("machine.ca.key", key, issues),
        (_, None) => None,
    };

    let mut accepted_pems = Vec::new();
    for (i, accepted) in machine.accepted_cas.iter().flatten().enumerate() {
        let path = format!("machine.acceptedCAs[{i}].crt");
        match accepted.crt.as_deref().filter(|crt| !crt.is_empty()) {
            None => issues.push(path, "is required"),
            Some(crt) => {
                // apid trusts these for client certificates: each must be
                // a certificate, not just any base64.
                let Some(pem) = decode_pem(&path, crt, issues) else {
                    continue;
                };
                if crate::pki::cert_info(&pem).is_err() {
                    issues.push(path, "is not a PEM certificate");
                    continue;
                }
                accepted_pems.push(pem);
            }
        }
    }

    MachineCa {
        crt: crt_pem,
        key: key_pem,
        accepted: accepted_pems,
    }
}

/// Decodes a base64 PEM field, recording an issue when it is not one.
fn decode_pem(path: &str, text: &str, issues: &mut Issues) -> Option<Vec<u8>> {
    match base64::decode(text) {
        Err(err) => {
            issues.push(path, format!("is not valid base64: {err}"));
            None
        }
        Ok(bytes) if !bytes.windows(11).any(|w| w == b"-----BEGIN ") => {
            issues.push(path, "does not hold a PEM block (-----BEGIN ...)");
            None
        }
        Ok(bytes) => Some(bytes),
    }
}

fn check_install(machine: &Machine, issues: &mut Issues) {
    let disk = machine
        .install
        .as_ref()
        .and_then(|install| install.disk.as_deref());
    if let Some(disk) = disk
        && !disk.is_empty()
        && disk.strip_prefix("/dev/").is_none_or(str::is_empty)
    {
        issues.push(
            "machine.install.disk",
            format!("{disk:?} is not a device path under /dev/"),
        );
    }
}

fn check_trusted_keys(machine: &Machine, issues: &mut Issues) {
    let keys = machine
        .install
        .as_ref()
        .and_then(|install| install.trusted_keys.as_deref())
        .unwrap_or_default();
    for (i, key) in keys.iter().enumerate() {
        if !key.contains("-----BEGIN PUBLIC KEY-----") {
            issues.push(
                format!("machine.install.trustedKeys[{i}]"),
                "is not a PEM public key (-----BEGIN PUBLIC KEY-----)",
            );
        }
    }
}

/// `machine.env` names and values must be what execve(2) can pass.
fn check_env(machine: &Machine, issues: &mut Issues) {
    for (name, value) in machine.env.iter().flatten() {
        if let Some(problem) = super::env_entry_problem(name, value) {
            issues.push(format!("machine.env.{name}"), problem);
        }
    }
}

fn check_files(machine: &Machine, issues: &mut Issues, strict: &mut Issues) {
    for (i, file) in machine.files.iter().flatten().enumerate() {
        let base = format!("machine.files[{i}]");
        match file.path.as_deref() {
            None | Some("") => issues.push(format!("{base}.path"), "is required"),
            Some(path) if !path.starts_with('/') => {
                issues.push(
                    format!("{base}.path"),
                    format!("{path:?} is not an absolute path"),
                );
            }
            Some(path) => match super::user_file_parts(path) {
                None => strict.push(
                    format!("{base}.path"),
                    format!("{path:?} must name a file, without `.` or `..` parts"),
                ),
                Some(parts) if super::UserFile::RESERVED.contains(&parts[0]) => strict.push(
                    format!("{base}.path"),
                    format!(
                        "{path:?} is under /{}, which the node itself manages",
                        parts[0]
                    ),
                ),
                Some(parts) => {
                    if !super::user_file_in_var(&parts) && file.op.as_deref() == Some("create") {
                        strict.push(
                            format!("{base}.op"),
                            format!(
                                "create is allowed under /var only ({path:?} is on the read-only root: use overwrite or append for an existing file)"
                            ),
                        );
                    }
                }
            },
        }
        match file.op.as_deref() {
            None | Some("") => issues.push(
                format!("{base}.op"),
                "is required (create, append or overwrite)",
            ),
            Some(op) if super::FileOp::parse(op).is_none() => {
                issues.push(
                    format!("{base}.op"),
                    format!("unknown operation {op:?} (expected create, append or overwrite)"),
                );
            }
            Some(_) => {}
        }
        if let Some(mode) = file.permissions
            && mode.0 > 0o7777
        {
            issues.push(
                format!("{base}.permissions"),
                format!("{:#o} has bits beyond 0o7777", mode.0),
            );
        }
    }
}

fn check_network(network: &Network, issues: &mut Issues) {
    for (i, nameserver) in network.nameservers.iter().flatten().enumerate() {
        if nameserver.parse::<IpAddr>().is_err() {
            issues.push(
                format!("machine.network.nameservers[{i}]"),
                format!("{nameserver:?} is not an IP address"),
            );
        }
    }

    for (i, host) in network.extra_host_entries.iter().flatten().enumerate() {
        let path = format!("machine.network.extraHostEntries[{i}].ip");
        match host.ip.as_deref() {
            None | Some("") => issues.push(path, "is required"),
            Some(ip) if ip.parse::<IpAddr>().is_err() => {
                issues.push(path, format!("{ip:?} is not an IP address"));
            }
            Some(_) => {}
        }
    }

    for (i, device) in network.interfaces.iter().flatten().enumerate() {
        check_device(&format!("machine.network.interfaces[{i}]"), device, issues);
    }
}

fn check_device(base: &str, device: &Device, issues: &mut Issues) {
    // Upstream skips ignored links entirely.
    if device.ignore == Some(true) {
        return;
    }

    let has_name = device
        .interface
        .as_deref()
        .is_some_and(|name| !name.is_empty());
    match (has_name, device.device_selector.is_some()) {
        (false, false) => issues.push(base, "either interface or deviceSelector must be set"),
        (true, true) => issues.push(base, "interface and deviceSelector are mutually exclusive"),
        _ => {}
    }
    if device
        .device_selector
        .as_ref()
        .is_some_and(DeviceSelector::is_empty)
    {
        issues.push(
            format!("{base}.deviceSelector"),
            "names no qualifier (busPath, hardwareAddr, permanentAddr, pciID, driver or physical)",
        );
    }
    if let Some(bond) = &device.bond {
        let path = format!("{base}.bond");
        if bond.interfaces.as_ref().is_none_or(Vec::is_empty)
            && bond.device_selectors.as_ref().is_none_or(Vec::is_empty)
        {
            issues.push(&path, "names no member: give interfaces or deviceSelectors");
        }
        if !has_name {
            issues.push(&path, "a bond needs a name (interface)");
        }
        for (what, value, allowed) in [
            ("mode", bond.mode.as_deref(), &BOND_MODES[..]),
            ("lacpRate", bond.lacp_rate.as_deref(), &["slow", "fast"][..]),
            (
                "xmitHashPolicy",
                bond.xmit_hash_policy.as_deref(),
                &BOND_XMIT_HASH_POLICIES[..],
            ),
        ] {
            if let Some(value) = value
                && !allowed.contains(&value)
            {
                issues.push(
                    format!("{path}.{what}"),
                    format!("{value:?} is not one of {}", allowed.join(", ")),
                );
            }
        }
        for (j, selector) in bond.device_selectors.iter().flatten().enumerate() {
            if selector.is_empty() {
                issues.push(format!("{path}.deviceSelectors[{j}]"), "names no qualifier");
            }
        }
    }
    // As upstream, only this combination is refused; what else a bridge
    // entry gets wrong networkd reports and leaves out.
    if device.bridge.is_some() && device.bond.is_some() {
        issues.push(base, "bond and bridge are mutually exclusive");
    }
    let mut vlan_ids = Vec::new();
    for (j, vlan) in device.vlans.iter().flatten().enumerate() {
        let path = format!("{base}.vlans[{j}]");
        match vlan.vlan_id {
            None => issues.push(format!("{path}.vlanId"), "is required"),
            Some(id) if !(1..=4094).contains(&id) => {
                issues.push(
                    format!("{path}.vlanId"),
                    format!("{id} is not from 1 to 4094"),
                );
            }
            Some(id) if vlan_ids.contains(&id) => {
                issues.push(format!("{path}.vlanId"), format!("{id} is given twice"));
            }
            Some(id) => vlan_ids.push(id),
        }
        for (k, address) in vlan.addresses.iter().flatten().enumerate() {
            if !is_ip_or_cidr(address) {
                issues.push(
                    format!("{path}.addresses[{k}]"),
                    format!("{address:?} is not an IP address or CIDR such as 192.168.1.10/24"),
                );
            }
        }
        for (k, route) in vlan.routes.iter().flatten().enumerate() {
            check_route(&format!("{path}.routes[{k}]"), route, issues);
        }
    }

    for (j, address) in device.addresses.iter().flatten().enumerate() {
        if !is_ip_or_cidr(address) {
            issues.push(
                format!("{base}.addresses[{j}]"),
                format!("{address:?} is not an IP address or CIDR such as 192.168.1.10/24"),
            );
        }
    }
    if let Some(cidr) = device.cidr.as_deref()
        && !cidr.is_empty()
        && !is_ip_or_cidr(cidr)
    {
        issues.push(
            format!("{base}.cidr"),
            format!("{cidr:?} is not an IP address or CIDR"),
        );
    }
    for (j, route) in device.routes.iter().flatten().enumerate() {
        check_route(&format!("{base}.routes[{j}]"), route, issues);
    }
}

fn check_route(path: &str, route: &Route, issues: &mut Issues) {
    let network = route.network.as_deref().unwrap_or_default();
    let gateway = route.gateway.as_deref().unwrap_or_default();
    if !network.is_empty() && parse_cidr(network).is_none() {
        issues.push(
            format!("{path}.network"),
            format!("{network:?} is not a CIDR such as 10.0.0.0/8"),
        );
    }
    if !gateway.is_empty() && gateway.parse::<IpAddr>().is_err() {
        issues.push(
            format!("{path}.gateway"),
            format!("{gateway:?} is not an IP address"),
        );
    }
    if network.is_empty() && gateway.is_empty() {
        issues.push(path, "either network or gateway must be set");
    }
    if let Some(source) = route.source.as_deref()
        && !source.is_empty()
        && source.parse::<IpAddr>().is_err()
    {
        issues.push(
            format!("{path}.source"),
            format!("{source:?} is not an IP address"),
        );
    }
}

/// Checks `machine.time`; returns the parsed boot timeout.
fn check_time(machine: &Machine, issues: &mut Issues) -> Option<Duration> {
    let time = machine.time.as_ref()?;
    for (i, server) in time.servers.iter().flatten().enumerate() {
        if server.trim().is_empty() {
            issues.push(format!("machine.time.servers[{i}]"), "must not be empty");
        }
    }
    duration_field(time.boot_timeout.as_deref()).unwrap_or_else(|reason| {
        issues.push("machine.time.bootTimeout", reason);
        None
    })
}

/// A duration field as Go writes durations (`2m30s`); `None` when empty.
pub(super) fn duration_field(text: Option<&str>) -> Result<Option<Duration>, String> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => parse_go_duration(text)
            .map(Some)
            .ok_or_else(|| format!("{text:?} is not a duration such as 2m30s")),
    }
}

fn check_logging(machine: &Machine, issues: &mut Issues) {
    let destinations = machine
        .logging
        .iter()
        .flat_map(|logging| logging.destinations.iter().flatten());
    for (i, destination) in destinations.enumerate() {
        let base = format!("machine.logging.destinations[{i}]");
        match destination.endpoint.as_deref() {
            None | Some("") => issues.push(format!("{base}.endpoint"), "is required"),
            Some(endpoint) => {
                if let Err(reason) = check_log_endpoint(endpoint) {
                    issues.push(format!("{base}.endpoint"), reason);
                }
            }
        }
        match destination.format.as_deref() {
            None | Some("") => issues.push(format!("{base}.format"), "is required (json_lines)"),
            Some("json_lines") => {}
            Some(other) => issues.push(
                format!("{base}.format"),
                format!("unknown format {other:?} (expected json_lines)"),
            ),
        }
    }
}

fn check_features(machine: &Machine, issues: &mut Issues) {
    let Some(features) = &machine.features else {
        return;
    };
    if let Some(host_dns) = &features.host_dns
        && host_dns.forward_kube_dns_to_host == Some(true)
        && host_dns.enabled != Some(true)
    {
        issues.push(
            "machine.features.hostDNS.forwardKubeDNSToHost",
            "requires machine.features.hostDNS.enabled to be true",
        );
    }
    if let Some(algorithm) = features.node_address_sort_algorithm.as_deref()
        && !algorithm.is_empty()
        && !["v1", "v2"].contains(&algorithm)
    {
        issues.push(
            "machine.features.nodeAddressSortAlgorithm",
            format!("unknown algorithm {algorithm:?} (expected v1 or v2)"),
        );
    }
}

fn check_kubelet(machine: &Machine, issues: &mut Issues) {
    let subnets = machine
        .kubelet
        .iter()
        .filter_map(|kubelet| kubelet.node_ip.as_ref())
        .flat_map(|node_ip| node_ip.valid_subnets.iter().flatten());
    for (i, subnet) in subnets.enumerate() {
        let bare = subnet.strip_prefix('!').unwrap_or(subnet);
        if !is_ip_or_cidr(bare) {
            issues.push(
                format!("machine.kubelet.nodeIP.validSubnets[{i}]"),
                format!("{subnet:?} is not a subnet or address"),
            );
        }
    }
}

// === cluster ===

/// Checks `cluster`; returns the control plane endpoint.
fn check_cluster(
    cluster: Option<&Cluster>,
    documents: &Documents,
    machine_type: Option<MachineType>,
    issues: &mut Issues,
) -> Option<String> {
    let Some(cluster) = cluster else {
        issues.push("cluster", "is required");
        return None;
    };

    if let Some(token) = cluster.token.as_ref().map(Secret::expose)
        && !token.is_empty()
        && !is_bootstrap_token(token)
    {
        issues.push("cluster.token", format!("must look like {TOKEN_SHAPE}"));
    }

    let has_cluster_ca_key = cluster
        .ca
        .as_ref()
        .and_then(|ca| ca.key.as_ref())
        .is_some_and(|key| !key.is_empty());
    if machine_type == Some(MachineType::Worker) && has_cluster_ca_key {
        issues.push(
            "cluster.ca.key",
            "must be empty on worker nodes: only control plane nodes hold the Kubernetes CA key",
        );
    }

    if let Some(network) = &cluster.network {
        let lists = [
            ("cluster.network.podSubnets", &network.pod_subnets),
            ("cluster.network.serviceSubnets", &network.service_subnets),
        ];
        for (field, subnets) in lists {
            for (i, subnet) in subnets.iter().flatten().enumerate() {
                if parse_cidr(subnet).is_none() {
                    issues.push(
                        format!("{field}[{i}]"),
                        format!("{subnet:?} is not a CIDR such as 10.244.0.0/16"),
                    );
                }
            }
        }
    }

    let mut manifest_names = BTreeSet::new();
    for (i, manifest) in cluster.inline_manifests.iter().flatten().enumerate() {
        let path = format!("cluster.inlineManifests[{i}].name");
        match manifest.name.as_deref().map(str::trim) {
            None | Some("") => issues.push(path, "is required"),
            Some(name) => {
                if !manifest_names.insert(name) {
                    issues.push(path, format!("{name:?} is used by an earlier manifest"));
                }
            }
        }
    }

    // Since v1.14 upstream moves the endpoint into a KubeClusterConfig document.
    let endpoint = cluster
        .control_plane
        .as_ref()
        .and_then(|control_plane| control_plane.endpoint.as_deref())
        .filter(|endpoint| !endpoint.is_empty())
        .map(|endpoint| ("cluster.controlPlane.endpoint", endpoint))
        .or_else(|| {
            kube_cluster_endpoint(documents)
                .map(|endpoint| ("KubeClusterConfig.endpoint", endpoint))
        });
    match endpoint {
        None => {
            issues.push("cluster.controlPlane.endpoint", "is required");
            None
        }
        Some((path, endpoint)) => match check_https_url(endpoint) {
            Ok(()) => Some(endpoint.to_owned()),
            Err(reason) => {
                issues.push(path, reason);
                None
            }
        },
    }
}

/// The `endpoint` of a `KubeClusterConfig` document, if there is one.
fn kube_cluster_endpoint(documents: &Documents) -> Option<&str> {
    documents
        .extra
        .iter()
        .find(|document| document.kind() == "KubeClusterConfig")
        .and_then(|document| document.value().get("endpoint"))
        .and_then(Value::as_str)
        .filter(|endpoint| !endpoint.is_empty())
}

// === value checks ===

/// Whether `text` is shaped like a Kubernetes bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub(super) fn is_bootstrap_token(text: &str) -> bool {
    let Some((id, secret)) = text.split_once('.') else {
        return false;
    };
    id.len() == 6
        && secret.len() == 16
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Parses `address/prefix` strictly (the prefix is required and in range).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((address, prefix))
}

/// Whether `text` is a CIDR or a bare IP address (upstream accepts both for addresses).
pub(super) fn is_ip_or_cidr(text: &str) -> bool {
    if text.contains('/') {
        parse_cidr(text).is_some()
    } else {
        text.parse::<IpAddr>().is_ok()
    }
}

/// Checks an `https://host[:port][/path]` URL.
pub(super) fn check_https_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!("{url:?} must be an https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    check_host_port(authority, false).map_err(|reason| format!("{url:?} {reason}"))
}

/// Checks a `tcp://host:port` or `udp://host:port` log endpoint.
pub(super) fn check_log_endpoint(url: &str) -> Result<(), String> {
    let Some((_, authority)) = super::log_endpoint(url) else {
        return Err(format!("{url:?} must be a tcp:// or udp:// URL"));
    };
    check_host_port(authority, true).map_err(|reason| format!("{url:?} {reason}"))
}

/// Checks `host`, `host:port`, `[v6]` or `[v6]:port`.
fn check_host_port(authority: &str, port_required: bool) -> Result<(), String> {
    if authority.contains('@') {
        return Err("must not carry user information".to_owned());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, tail)) = bracketed.split_once(']') else {
            return Err("has an unterminated IPv6 literal".to_owned());
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("has {host:?}, which is not an IPv6 address"));
        }
        if tail.is_empty() {
            (host, None)
        } else if let Some(port) = tail.strip_prefix(':') {
            (host, Some(port))
        } else {
            return Err("has unexpected characters after the IPv6 literal".to_owned());
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    match port {
        Some(port) if !is_port(port) => Err(format!("has port {port:?}, which is not 1-65535")),
        None if port_required => Err("needs a port".to_owned()),
        _ => Ok(()),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok_and(|port| port != 0)
}

/// Parses a Go `time.Duration` string (`300ms`, `1h30m`, `1.5s`, `0`).
///
/// Negative durations are rejected: nothing in the config can use one.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return None;
    }

    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }

        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };

        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        total = total.checked_add(whole.checked_mul(unit_nanos)?)?;

        if !frac_part.is_empty() {
            // 18 digits are below a nanosecond for every unit; the rest cannot matter.
            let digits = &frac_part[..frac_part.len().min(18)];
            let numerator: u128 = digits.parse().ok()?;
            let denominator = 10u128.pow(u32::try_from(digits.len()).ok()?);
            total = total.checked_add(numerator * unit_nanos / denominator)?;
        }

        rest = after;
    }
    u64::try_from(total).ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens() {
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        assert!(is_bootstrap_token("d8cw1a.eyvpi0xwxyarbfi2"));
        assert!(!is_bootstrap_token("ABCDEF.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcde.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef.0123456789abcde"));
        assert!(!is_bootstrap_token("abcdef0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef.0123456789abcde-"));
        assert!(!is_bootstrap_token(""));
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some(("10.0.0.0".parse::<IpAddr>().expect("ip"), 8))
        );
        assert!(parse_cidr("fd00::/64").is_some());
        assert!(parse_cidr("0.0.0.0/0").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("fd00::/129").is_none());
        assert!(parse_cidr("10.0.0.0/").is_none());
        assert!(parse_cidr("10.0.0.0/+8").is_none());
        assert!(parse_cidr("10.0.0.0").is_none());
        assert!(parse_cidr("10.0.0/8").is_none());
        assert!(is_ip_or_cidr("192.168.1.10"));
        assert!(is_ip_or_cidr("192.168.1.10/24"));
        assert!(!is_ip_or_cidr("192.168.1.300/24"));
        assert!(!is_ip_or_cidr("eth0"));
    }

    #[test]
    fn https_urls() {
        assert!(check_https_url("https://10.5.0.2:6443").is_ok());
        assert!(check_https_url("https://kube.example.com").is_ok());
        assert!(check_https_url("https://kube.example.com:443/").is_ok());
        assert!(check_https_url("https://[fd00::1]:6443").is_ok());
        assert!(check_https_url("http://10.5.0.2:6443").is_err());
        assert!(check_https_url("10.5.0.2:6443").is_err());
        assert!(check_https_url("https://").is_err());
        assert!(check_https_url("https://:6443").is_err());
        assert!(check_https_url("https://host:99999").is_err());
        assert!(check_https_url("https://host:").is_err());
        assert!(check_https_url("https://[fd00::1").is_err());
    }

    #[test]
    fn log_endpoints() {
        assert!(check_log_endpoint("udp://127.0.0.1:12345").is_ok());
        assert!(check_log_endpoint("tcp://logs.example.com:5044/").is_ok());
        assert!(check_log_endpoint("tcp://logs.example.com").is_err());
        assert!(check_log_endpoint("https://logs.example.com:443").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("2m30s"), Some(Duration::from_secs(150)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("+10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1us"), Some(Duration::from_micros(1)));
        assert_eq!(
            parse_go_duration("1\u{b5}s"),
            Some(Duration::from_micros(1))
        );
        assert_eq!(
            parse_go_duration("168h0m0s"),
            Some(Duration::from_secs(168 * 3600))
        );
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("1d"), None);
        assert_eq!(parse_go_duration("."), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("1.s"), Some(Duration::from_secs(1)));
    }
}
