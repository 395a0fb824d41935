//! What a config sets that this node accepts and does not apply: said
//! back to whoever applies it (the reply's warnings), so that nothing is
//! dropped unseen. Kubernetes settings are left out: this node runs no
//! Kubernetes, and every generated config carries them.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use super::documents::{
    HOSTNAME_CONFIG, KMSG_LOG_CONFIG, RESOLVER_CONFIG, STATIC_HOST_CONFIG, TIME_SYNC_CONFIG,
    TRUSTED_ROOTS_CONFIG, WATCHDOG_TIMER_CONFIG, is_device_server,
};
use super::{Documents, MachineConfig};

/// Kinds read, in part or whole.
const READ_KINDS: [&str; 8] = [
    HOSTNAME_CONFIG,
    RESOLVER_CONFIG,
    STATIC_HOST_CONFIG,
    TIME_SYNC_CONFIG,
    KMSG_LOG_CONFIG,
    TRUSTED_ROOTS_CONFIG,
    WATCHDOG_TIMER_CONFIG,
    // Its endpoint (see `validate::check_cluster`).
    "KubeClusterConfig",
];

/// Whether a raw value says anything: not null, not an empty sequence or
/// mapping.
pub(super) fn says_something(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Sequence(items) => !items.is_empty(),
        Value::Mapping(map) => map.values().any(says_something),
        _ => true,
    }
}

pub(super) fn not_applied(config: &MachineConfig) -> Vec<String> {
    let mut out = Vec::new();
    let documents: &Documents = config.documents();
    if let Some(machine) = config.machine() {
        let raw = |value: Option<&Value>, key: &str| {
            value.and_then(|v| v.get(key)).is_some_and(says_something)
        };
        if machine.disks.as_ref().is_some_and(says_something) {
            out.push(
                "machine.disks: user disks are not partitioned, formatted or mounted by this node"
                    .to_owned(),
            );
        }
        if raw(machine.kernel.as_ref(), "modules") {
            out.push(
                "machine.kernel.modules: not loaded (the image loads its own modules and locks \
                 module loading after boot)"
                    .to_owned(),
            );
        }
        if raw(machine.udev.as_ref(), "rules") {
            out.push("machine.udev.rules: not applied (udevd has no rules engine)".to_owned());
        }
        if machine
            .install
            .as_ref()
            .and_then(|install| install.extra_kernel_args.as_ref())
            .is_some_and(|args| !args.is_empty())
        {
            out.push(
                "machine.install.extraKernelArgs: not used (the boot entry's arguments are the \
                 image's)"
                    .to_owned(),
            );
        }
        if machine
            .install
            .as_ref()
            .is_some_and(|install| install.wipe == Some(true))
        {
            out.push(
                "machine.install.wipe: the disk is not zeroed first (installing writes a new \
                 partition table and every partition)"
                    .to_owned(),
            );
        }
        if machine
            .time
            .as_ref()
            .and_then(|t| t.servers.as_ref())
            .is_some_and(|servers| servers.iter().any(|s| is_device_server(s)))
        {
            out.push(
                "machine.time.servers: PTP devices are not used (time is synced over NTP only)"
                    .to_owned(),
            );
        }
        if machine
            .network
            .as_ref()
            .and_then(|n| n.kubespan.as_ref())
            .and_then(|k| k.get("enabled"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            out.push(
                "machine.network.kubespan: not applied (this node builds no KubeSpan mesh)"
                    .to_owned(),
            );
        }
        if machine.features.as_ref().and_then(|f| f.rbac) == Some(false) {
            out.push(
                "machine.features.rbac: false is not honoured: roles from certificates are always \
                 enforced"
                    .to_owned(),
            );
        }
    }
    if config
        .document_settings()
        .time
        .as_ref()
        .is_some_and(|t| t.servers.iter().any(|s| is_device_server(s)))
    {
        out.push("TimeSyncConfig.ptp.devices: not used (time is synced over NTP only)".to_owned());
    }
    let kinds: BTreeSet<&str> = documents
        .extra
        .iter()
        .map(super::ExtraDocument::kind)
        .filter(|kind| !READ_KINDS.contains(kind))
        .collect();
    for kind in kinds {
        out.push(format!(
            "{kind}: documents of this kind are kept and not applied by this node"
        ));
    }
    out
}
