//! The documents upstream Talos added beside v1alpha1 that this node
//! applies: `HostnameConfig`, `ResolverConfig`, `StaticHostConfig` and
//! `TimeSyncConfig` (what `machine.network` and `machine.time` also say),
//! `KmsgLogConfig` (where the kernel's log goes), `TrustedRootsConfig`
//! (CAs trusted beside the image's bundle) and `WatchdogTimerConfig` (a
//! hardware watchdog to arm).
//!
//! Each is decoded strictly (an unknown key is an error, as upstream's
//! decoder has it), checked by upstream's rules, and checked against the
//! v1alpha1 document: saying the same thing in both places is refused, as
//! upstream refuses it. These are rules newer than the configs nodes
//! have persisted, so their problems are strict issues (refused when a
//! config is applied); a persisted config whose document breaks one loads
//! without that document, and v1alpha1 says what it says.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::v1alpha1::Machine;
use super::validate::{Issues, check_log_endpoint, duration_field};
use super::{Documents, ExtraDocument};

/// The kind that names the node.
pub const HOSTNAME_CONFIG: &str = "HostnameConfig";
/// The kind that sets the resolvers and search domains.
pub const RESOLVER_CONFIG: &str = "ResolverConfig";
/// The kind that adds a line to `/etc/hosts`.
pub const STATIC_HOST_CONFIG: &str = "StaticHostConfig";
/// The kind that sets time synchronization.
pub const TIME_SYNC_CONFIG: &str = "TimeSyncConfig";
/// The kind that says where the kernel's log goes.
pub const KMSG_LOG_CONFIG: &str = "KmsgLogConfig";
/// The kind that adds trusted CA certificates.
pub const TRUSTED_ROOTS_CONFIG: &str = "TrustedRootsConfig";
/// The kind that arms a hardware watchdog.
pub const WATCHDOG_TIMER_CONFIG: &str = "WatchdogTimerConfig";

/// A watchdog's timeout when the document gives none (upstream's).
pub const DEFAULT_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest watchdog timeout taken (upstream's).
pub const MIN_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(10);

/// How a node without a static hostname names itself (`HostnameConfig`'s
/// `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoHostname {
    /// A name of its own, the same at every boot.
    Stable,
    /// None: only a name from elsewhere (DHCP, `ip=`) is taken.
    Off,
}

/// Time synchronization as a `TimeSyncConfig` sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeSync {
    /// `enabled: false`.
    pub disabled: bool,
    /// `bootTimeout`.
    pub boot_timeout: Option<Duration>,
    /// `ntp.servers`, or `ptp.devices`.
    pub servers: Vec<String>,
}

/// What the documents that passed their checks say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentSettings {
    /// `HostnameConfig.hostname`.
    pub hostname: Option<String>,
    /// `HostnameConfig.auto`.
    pub auto_hostname: Option<AutoHostname>,
    /// `ResolverConfig.nameservers`.
    pub nameservers: Option<Vec<IpAddr>>,
    /// `ResolverConfig.searchDomains.domains`.
    pub search_domains: Option<Vec<String>>,
    /// `ResolverConfig.searchDomains.disableDefault`.
    pub disable_search_domain: bool,
    /// Every `StaticHostConfig`: an address and its names.
    pub static_hosts: Vec<(IpAddr, Vec<String>)>,
    /// `TimeSyncConfig`.
    pub time: Option<TimeSync>,
    /// The `url` of every `KmsgLogConfig`.
    pub kmsg_log_urls: Vec<String>,
    /// The `certificates` (PEM) of every `TrustedRootsConfig`.
    pub trusted_roots: Vec<String>,
    /// `WatchdogTimerConfig`: the device and its timeout.
    pub watchdog: Option<(String, Duration)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostnameDoc {
    auto: Option<String>,
    hostname: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResolverDoc {
    nameservers: Option<Vec<NameserverDoc>>,
    search_domains: Option<SearchDomainsDoc>,
    // Accepted as `machine.features.hostDNS` is: there is no host DNS
    // resolver on this node.
    #[serde(rename = "hostDNS")]
    host_dns: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NameserverDoc {
    address: Option<String>,
    protocol: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchDomainsDoc {
    domains: Option<Vec<String>>,
    disable_default: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticHostDoc {
    name: Option<String>,
    hostnames: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeSyncDoc {
    enabled: Option<bool>,
    boot_timeout: Option<String>,
    ntp: Option<NtpDoc>,
    ptp: Option<PtpDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KmsgLogDoc {
    // Read (and checked) by `named`, before decoding.
    #[serde(rename = "name")]
    _name: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedRootsDoc {
    // Read (and checked) by `named`, before decoding.
    #[serde(rename = "name")]
    _name: Option<String>,
    certificates: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchdogDoc {
    device: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NtpDoc {
    servers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PtpDoc {
    devices: Option<Vec<String>>,
}

/// Where PTP devices are.
const PTP_DEVICE_PREFIX: &str = "/dev/";

/// Whether a time server is named by a device path (upstream lists PTP
/// devices, `/dev/ptp0`, among the time servers) rather than a host.
#[must_use]
pub fn is_device_server(server: &str) -> bool {
    server.trim().starts_with('/')
}

/// A path under `/dev/` that does not climb out of it.
fn is_dev_path(path: &str) -> bool {
    path.starts_with(PTP_DEVICE_PREFIX) && !path.contains("/../")
}

/// Problems of one document, named under `base` (`HostnameConfig`,
/// `StaticHostConfig(10.5.0.2)`).
struct Problems<'a> {
    base: String,
    issues: &'a mut Issues,
    any: bool,
}

impl Problems<'_> {
    fn push(&mut self, field: &str, reason: impl Into<String>) {
        let path = if field.is_empty() {
            self.base.clone()
        } else {
            format!("{}.{field}", self.base)
        };
        self.issues.push(path, reason);
        self.any = true;
    }
}

/// The document's fields as `T`, `apiVersion` and `kind` aside; an
/// unknown key or a wrong type is a problem.
fn typed<T: DeserializeOwned>(document: &ExtraDocument, problems: &mut Problems<'_>) -> Option<T> {
    let mut value = document.value().clone();
    if let Some(mapping) = value.as_mapping_mut() {
        mapping.remove("apiVersion");
        mapping.remove("kind");
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(typed) => Some(typed),
        Err(err) => {
            let path = super::render_path(&err.path().iter().cloned().collect::<Vec<_>>());
            problems.push(&path, err.inner().to_string());
            None
        }
    }
}

/// Reads and checks the documents; problems go to `issues` and leave the
/// document out.
pub(super) fn read(documents: &Documents, issues: &mut Issues) -> DocumentSettings {
    let machine = documents.v1alpha1.machine.as_ref();
    let mut out = DocumentSettings::default();
    let mut seen = BTreeSet::new();
    let mut static_names = BTreeSet::new();
    let mut kmsg_names = BTreeSet::new();
    let mut roots_names = BTreeSet::new();
    for document in &documents.extra {
        let kind = document.kind();
        let singleton = [
            HOSTNAME_CONFIG,
            RESOLVER_CONFIG,
            TIME_SYNC_CONFIG,
            WATCHDOG_TIMER_CONFIG,
        ]
        .contains(&kind);
        let mut problems = Problems {
            base: kind.to_owned(),
            issues,
            any: false,
        };
        if singleton && !seen.insert(kind) {
            problems.push("", "appears more than once (one such document a config)");
            continue;
        }
        match kind {
            HOSTNAME_CONFIG => {
                if let Some(doc) = typed::<HostnameDoc>(document, &mut problems)
                    && let Some((hostname, auto)) = hostname(&doc, machine, &mut problems)
                    && !problems.any
                {
                    out.hostname = hostname;
                    out.auto_hostname = auto;
                }
            }
            RESOLVER_CONFIG => {
                if let Some(doc) = typed::<ResolverDoc>(document, &mut problems) {
                    let resolver = resolver(&doc, machine, &mut problems);
                    if !problems.any {
                        (
                            out.nameservers,
                            out.search_domains,
                            out.disable_search_domain,
                        ) = resolver;
                    }
                }
            }
            STATIC_HOST_CONFIG => {
                named(document, &mut static_names, &mut problems);
                if let Some(doc) = typed::<StaticHostDoc>(document, &mut problems) {
                    let entry = static_host(&doc, &mut problems);
                    if let Some(entry) = entry
                        && !problems.any
                    {
                        out.static_hosts.push(entry);
                    }
                }
            }
            KMSG_LOG_CONFIG => {
                named(document, &mut kmsg_names, &mut problems);
                if let Some(doc) = typed::<KmsgLogDoc>(document, &mut problems) {
                    match doc.url.as_deref() {
                        None | Some("") => problems.push("url", "is required"),
                        Some(url) => match check_log_endpoint(url) {
                            Ok(()) if !problems.any => out.kmsg_log_urls.push(url.to_owned()),
                            Ok(()) => {}
                            Err(reason) => problems.push("url", reason),
                        },
                    }
                }
            }
            TRUSTED_ROOTS_CONFIG => {
                named(document, &mut roots_names, &mut problems);
                if let Some(doc) = typed::<TrustedRootsDoc>(document, &mut problems) {
                    let pem = doc.certificates.unwrap_or_default();
                    if let Err(reason) = check_certificates(&pem) {
                        problems.push("certificates", reason);
                    }
                    if !problems.any {
                        out.trusted_roots.push(pem);
                    }
                }
            }
            WATCHDOG_TIMER_CONFIG => {
                if let Some(doc) = typed::<WatchdogDoc>(document, &mut problems) {
                    let device = doc.device.as_deref().map(str::trim).unwrap_or("");
                    if device.is_empty() {
                        problems.push("device", "is required (e.g. /dev/watchdog0)");
                    } else if !is_dev_path(device) {
                        problems.push("device", format!("{device:?} is not a device under /dev/"));
                    }
                    // Zero means the default, as upstream's.
                    let timeout = duration_field(doc.timeout.as_deref())
                        .unwrap_or_else(|reason| {
                            problems.push("timeout", reason);
                            None
                        })
                        .filter(|t| !t.is_zero())
                        .unwrap_or(DEFAULT_WATCHDOG_TIMEOUT);
                    if timeout < MIN_WATCHDOG_TIMEOUT {
                        problems.push(
                            "timeout",
                            format!("is {timeout:?}; the least is {MIN_WATCHDOG_TIMEOUT:?}"),
                        );
                    }
                    if !problems.any {
                        out.watchdog = Some((device.to_owned(), timeout));
                    }
                }
            }
            TIME_SYNC_CONFIG => {
                if let Some(doc) = typed::<TimeSyncDoc>(document, &mut problems) {
                    let time = time_sync(&doc, machine, &mut problems);
                    if !problems.any {
                        out.time = Some(time);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The document's `name`, required and unique among its kind's (`names`):
/// read before decoding, so that every problem is placed under
/// `Kind(name)`.
fn named(document: &ExtraDocument, names: &mut BTreeSet<String>, problems: &mut Problems<'_>) {
    let kind = document.kind();
    let name = document
        .value()
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_owned();
    problems.base = format!("{kind}({name})");
    if name.is_empty() {
        problems.push("name", "is required");
    } else if !names.insert(name) {
        problems.push("name", format!("is used by another {kind}"));
    }
}

/// One or more PEM certificates, each a readable X.509 certificate.
fn check_certificates(pem: &str) -> Result<(), String> {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        count += 1;
        let block = block.map_err(|e| format!("certificate {count} is not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "block {count} is a {:?}, not a CERTIFICATE",
                block.label
            ));
        }
        block
            .parse_x509()
            .map_err(|e| format!("certificate {count} is not an X.509 certificate: {e}"))?;
    }
    if count == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(())
}

type HostnameSettings = (Option<String>, Option<AutoHostname>);

/// Why `name` cannot be a node's host name, if it cannot: dot-separated
/// labels of 1 to 63 letters, digits and inner hyphens, 253 characters
/// at most (a final dot aside). Stricter than upstream's length checks: a
/// name the node could not take is refused, not replaced by a generated
/// one. The one rule for configs and for networkd.
#[must_use]
pub fn host_name_problem(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Some("is empty".to_owned());
    }
    if name.len() > 253 {
        return Some(format!("is {} characters long (253 at most)", name.len()));
    }
    if let Some(label) = name.split('.').find(|l| l.is_empty() || l.len() > 63) {
        return Some(format!(
            "{name:?} is not a host name: label {label:?} is not 1 to 63 characters"
        ));
    }
    let valid = name.split('.').all(|label| {
        label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    (!valid).then(|| {
        format!("{name:?} is not a host name (letters, digits and inner hyphens, dot-separated)")
    })
}

fn hostname(
    doc: &HostnameDoc,
    machine: Option<&Machine>,
    problems: &mut Problems<'_>,
) -> Option<HostnameSettings> {
    let name = doc.hostname.as_deref().map(str::trim).unwrap_or("");
    let auto = match doc.auto.as_deref() {
        None => None,
        Some("stable") => Some(AutoHostname::Stable),
        Some("off") => Some(AutoHostname::Off),
        Some(other) => {
            problems.push("auto", format!("{other:?} is not stable or off"));
            return None;
        }
    };
    if auto.is_none() && name.is_empty() {
        problems.push("", "either auto or hostname must be set");
    }
    if auto == Some(AutoHostname::Stable) && !name.is_empty() {
        problems.push(
            "",
            "auto and hostname cannot be set together (auto: off with a hostname)",
        );
    }
    if !name.is_empty()
        && let Some(problem) = host_name_problem(name)
    {
        problems.push("hostname", problem);
    }
    let network = machine.and_then(|m| m.network.as_ref());
    if network
        .and_then(|n| n.hostname.as_deref())
        .is_some_and(|h| !h.is_empty())
    {
        problems.push(
            "",
            "the hostname is already set in machine.network.hostname",
        );
    }
    // A static name beside machine.features.stableHostname says nothing
    // twice (the static name wins); a second way to generate one does.
    let stable = machine
        .and_then(|m| m.features.as_ref())
        .and_then(|f| f.stable_hostname)
        == Some(true);
    if stable && auto.is_some() {
        problems.push(
            "auto",
            "the automatic hostname is already set by machine.features.stableHostname",
        );
    }
    Some(((!name.is_empty()).then(|| name.to_owned()), auto))
}

type ResolverSettings = (Option<Vec<IpAddr>>, Option<Vec<String>>, bool);

fn resolver(
    doc: &ResolverDoc,
    machine: Option<&Machine>,
    problems: &mut Problems<'_>,
) -> ResolverSettings {
    let mut nameservers = Vec::new();
    for (i, ns) in doc.nameservers.iter().flatten().enumerate() {
        let field = format!("nameservers[{i}]");
        match ns.address.as_deref().map(str::trim) {
            None | Some("") => problems.push(&format!("{field}.address"), "is required"),
            Some(text) => match text.parse::<IpAddr>() {
                Ok(ip) => nameservers.push(ip),
                Err(_) => problems.push(
                    &format!("{field}.address"),
                    format!("{text:?} is not an IP address"),
                ),
            },
        }
        match ns.protocol.as_deref() {
            None | Some("" | "Do53") => {}
            // Plain DNS instead of the encrypted DNS asked for would be a
            // downgrade nobody sees: refused.
            Some(protocol @ ("DoT" | "DoH")) => problems.push(
                &format!("{field}.protocol"),
                format!("{protocol} is not supported: this node resolves with plain DNS (Do53)"),
            ),
            Some(other) => problems.push(
                &format!("{field}.protocol"),
                format!("{other:?} is not Do53, DoT or DoH"),
            ),
        }
        if ns.tls_server_name.as_deref().is_some_and(|n| !n.is_empty()) {
            problems.push(
                &format!("{field}.tlsServerName"),
                "must be empty when the protocol is Do53",
            );
        }
    }
    let search = doc.search_domains.as_ref();
    let domains: Option<Vec<String>> = search.and_then(|s| s.domains.as_ref()).map(|domains| {
        domains
            .iter()
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect()
    });
    let disable_default = search.and_then(|s| s.disable_default) == Some(true);

    // As upstream: a v1alpha1 resolver setting refuses the document
    // whole, whatever it says.
    let network = machine.and_then(|m| m.network.as_ref());
    if network.is_some_and(|n| n.search_domains.is_some()) {
        problems.push("", "machine.network.searchDomains is already set");
    }
    if network.is_some_and(|n| n.nameservers.is_some()) {
        problems.push("", "machine.network.nameservers is already set");
    }
    if network.and_then(|n| n.disable_search_domain) == Some(true) {
        problems.push("", "machine.network.disableSearchDomain is already set");
    }
    if doc.host_dns.is_some()
        && machine
            .and_then(|m| m.features.as_ref())
            .is_some_and(|f| f.host_dns.is_some())
    {
        problems.push("hostDNS", "machine.features.hostDNS is already set");
    }
    (
        doc.nameservers.is_some().then_some(nameservers),
        domains,
        disable_default,
    )
}

fn static_host(doc: &StaticHostDoc, problems: &mut Problems<'_>) -> Option<(IpAddr, Vec<String>)> {
    // A missing name is reported by `named`.
    let ip = match doc.name.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => text.parse::<IpAddr>().ok().or_else(|| {
            problems.push("name", format!("{text:?} is not an IP address"));
            None
        }),
    };
    let names: Vec<String> = doc
        .hostnames
        .iter()
        .flatten()
        .map(|n| n.trim().to_owned())
        .collect();
    if names.is_empty() {
        problems.push("hostnames", "at least one is required");
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() || name.contains(char::is_whitespace) {
            problems.push(
                &format!("hostnames[{i}]"),
                format!("{name:?} is not a host name"),
            );
        }
    }
    Some((ip?, names))
}

fn time_sync(
    doc: &TimeSyncDoc,
    machine: Option<&Machine>,
    problems: &mut Problems<'_>,
) -> TimeSync {
    let boot_timeout = duration_field(doc.boot_timeout.as_deref()).unwrap_or_else(|reason| {
        problems.push("bootTimeout", reason);
        None
    });
    if doc.ntp.is_some() && doc.ptp.is_some() {
        problems.push("", "only one of ntp and ptp can be set");
    }
    let mut servers = Vec::new();
    for (i, server) in doc
        .ntp
        .iter()
        .flat_map(|n| n.servers.iter().flatten())
        .enumerate()
    {
        let server = server.trim();
        if server.is_empty() {
            problems.push(&format!("ntp.servers[{i}]"), "must not be empty");
        } else if server.starts_with(PTP_DEVICE_PREFIX) {
            problems.push(
                &format!("ntp.servers[{i}]"),
                format!("{server:?} is a PTP device: it belongs under ptp.devices"),
            );
        }
        servers.push(server.to_owned());
    }
    for (i, device) in doc
        .ptp
        .iter()
        .flat_map(|p| p.devices.iter().flatten())
        .enumerate()
    {
        let device = device.trim();
        if !is_dev_path(device) {
            problems.push(
                &format!("ptp.devices[{i}]"),
                format!("{device:?} is not a device under {PTP_DEVICE_PREFIX}"),
            );
        }
        servers.push(device.to_owned());
    }
    if let Some(time) = machine.and_then(|m| m.time.as_ref()) {
        if time.disabled == Some(true) {
            problems.push("", "time sync is already disabled in machine.time.disabled");
        }
        if time.servers.as_ref().is_some_and(|s| !s.is_empty()) {
            problems.push(
                "",
                "the time servers are already set in machine.time.servers",
            );
        }
        if time.boot_timeout.as_ref().is_some_and(|t| !t.is_empty()) {
            problems.push(
                "",
                "the boot timeout is already set in machine.time.bootTimeout",
            );
        }
    }
    TimeSync {
        disabled: doc.enabled == Some(false),
        boot_timeout,
        servers,
    }
}
