//! The machine config: one YAML stream that says what a node is.
//!
//! # Background
//!
//! A Talos machine config is a YAML stream. Exactly one document has
//! `version: v1alpha1` and holds `machine` (this node) and `cluster` (what all
//! nodes share); since upstream v1.5 further documents carry
//! `apiVersion: v1alpha1` and `kind: <Kind>` (`HostnameConfig`,
//! `KubeClusterConfig`, ...). `talosctl gen config` writes both shapes, and
//! this module loads what it writes.
//!
//! # Design
//!
//! Loading has two stages, as user input should:
//!
//! 1. [`decode`] splits the stream, sorts the documents and maps the v1alpha1
//!    one onto the serde types in [`v1alpha1`], which reject unknown keys.
//!    Errors carry the field path (`machine.network.interfacez`) and, for
//!    syntax errors, the line and column.
//! 2. [`MachineConfig::from_documents`] checks the rules (token shape, CA
//!    present and decodable, https endpoint, absolute file paths, CIDRs, ...)
//!    and returns every problem at once as [`ConfigError::Validation`].
//!
//! [`parse`] does both. Consumers read the validated [`MachineConfig`]
//! through accessors; it keeps the raw documents, so [`MachineConfig::to_yaml`]
//! writes back what was loaded. [`load`] and [`save_atomic`] move it to and
//! from `<state dir>/config.yaml` ([`persist_path`]).
//!
//! # Limitations
//!
//! - `apiVersion`/`kind` documents are kept as raw YAML. Those read are
//!   `HostnameConfig`, `ResolverConfig`, `StaticHostConfig` and
//!   `TimeSyncConfig` (typed, in `documents`), `KmsgLogConfig`, and the
//!   `endpoint` of `KubeClusterConfig`, used when
//!   `cluster.controlPlane.endpoint` is absent (upstream v1.14 moved it there).
//!   Other kinds load and are not applied.
//! - Kubernetes-only sections (API server flags, admission plugins, CNI,
//!   registries, disk encryption, ...) are raw YAML: they round-trip, but keys
//!   inside them are not checked, except the credentials and TLS settings of
//!   `machine.registries.config` the node pulls installer images with.
//! - Booleans must be YAML 1.2 `true`/`false`; Go's YAML decoder also takes
//!   `yes`/`no`, which load here as strings and are rejected.
//! - [`MachineConfig::to_yaml`] writes the v1alpha1 document first, drops
//!   comments and explicit `null`s, and writes file permissions in decimal.
//! - `Debug` output redacts tokens and keys held in typed fields, but not
//!   secrets inside raw sections (encryption passphrases). Registry
//!   credentials are read into [`RegistryAccess`], whose `Debug` redacts the
//!   password.
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//!
//! use machinery::config;
//!
//! let path = config::persist_path(Path::new("/system/state"));
//! match config::load(&path) {
//!     Ok(cfg) => println!("{} node of {:?}", cfg.machine_type(), cfg.cluster_name()),
//!     Err(err) => eprintln!("{err}"),
//! }
//! ```

pub mod annotate;
mod disk_selector;
mod documents;
mod error;
mod registries;
mod unapplied;
pub mod v1alpha1;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_path_to_error::Segment;
use serde_yaml_ng::Value;

pub use disk_selector::{DiskFacts, DiskSelector, DiskType, SizeOp};
pub use documents::{
    AutoHostname, DocumentSettings, HOSTNAME_CONFIG, KMSG_LOG_CONFIG, RESOLVER_CONFIG,
    STATIC_HOST_CONFIG, TIME_SYNC_CONFIG, TRUSTED_ROOTS_CONFIG, TimeSync, WATCHDOG_TIMER_CONFIG,
    host_name_problem, is_device_server,
};
pub use error::{ConfigError, ValidationIssue, ValidationIssues};
pub use registries::{Registries, RegistryAccess, RegistryCredentials, RegistryMirror};
pub use validate::{parse_cidr, parse_go_duration};

/// The only `version` (and `apiVersion`) this module understands.
pub const V1ALPHA1: &str = "v1alpha1";

/// File name of the persisted config inside the state directory.
pub const CONFIG_FILE_NAME: &str = "config.yaml";

/// NTP server used when `machine.time.servers` is empty (as upstream).
pub const DEFAULT_TIME_SERVER: &str = "time.cloudflare.com";

// === MachineType ===

/// The role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineType {
    /// Runs etcd and the Kubernetes control plane (`controlplane`, legacy `init`).
    ControlPlane,
    /// Runs workloads only (`worker`, legacy `join`).
    Worker,
}

impl MachineType {
    /// The canonical config spelling.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ControlPlane => "controlplane",
            Self::Worker => "worker",
        }
    }

    /// Whether this node runs the control plane.
    #[must_use]
    pub fn is_control_plane(&self) -> bool {
        *self == Self::ControlPlane
    }
}

impl fmt::Display for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === Documents ===

/// An `apiVersion`/`kind` document, kept as raw YAML.
#[derive(Clone, PartialEq, Eq)]
pub struct ExtraDocument {
    position: usize,
    api_version: String,
    kind: String,
    value: Value,
}

impl ExtraDocument {
    /// 1-based position of the document in the stream it was decoded from.
    #[must_use]
    pub fn position(&self) -> usize {
        self.position
    }

    /// Its `apiVersion` (always `v1alpha1` today).
    #[must_use]
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Its `kind`, e.g. `HostnameConfig`.
    #[must_use]
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The whole document, `apiVersion` and `kind` included.
    #[must_use]
    pub fn value(&self) -> &Value {
        &self.value
    }
}

impl fmt::Debug for ExtraDocument {
    // The raw value may hold secrets (e.g. DiscoveryIdentityConfig), so it is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraDocument")
            .field("position", &self.position)
            .field("api_version", &self.api_version)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A decoded (not yet validated) config stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// The `version: v1alpha1` document.
    pub v1alpha1: v1alpha1::Config,
    /// Every `apiVersion`/`kind` document, in stream order.
    pub extra: Vec<ExtraDocument>,
}

/// Splits a YAML stream into its documents and decodes the v1alpha1 one.
///
/// Empty documents (a stray `---`) are skipped. Fails on YAML syntax errors,
/// on a document that is neither the v1alpha1 document nor an
/// `apiVersion`/`kind` document, on a missing or repeated v1alpha1 document,
/// on unsupported versions, and on schema errors (unknown keys, wrong types).
pub fn decode(bytes: &[u8]) -> Result<Documents, ConfigError> {
    let mut v1alpha1_doc: Option<(usize, Value)> = None;
    let mut extra = Vec::new();

    for (index, document) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
        let position = index + 1;
        // Stop at the first error: the parser repeats it for every later document.
        let value = Value::deserialize(document).map_err(|err| syntax_error(position, &err))?;
        if value.is_null() {
            continue;
        }
        let Some(mapping) = value.as_mapping() else {
            return Err(ConfigError::UnrecognizedDocument {
                document: position,
                reason: format!("expected a mapping, found {}", describe_kind(&value)),
            });
        };
        let version = mapping.get("version").cloned();
        let api_version = mapping.get("apiVersion").cloned();
        let kind = mapping.get("kind").cloned();

        if let Some(version) = version {
            if version.as_str() != Some(V1ALPHA1) {
                return Err(ConfigError::UnsupportedVersion {
                    document: position,
                    found: describe_scalar(&version),
                });
            }
            if let Some((first, _)) = &v1alpha1_doc {
                return Err(ConfigError::DuplicateV1Alpha1 {
                    first: *first,
                    second: position,
                });
            }
            v1alpha1_doc = Some((position, value));
            continue;
        }

        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            return Err(ConfigError::UnrecognizedDocument {
                document: position,
                reason: "has neither `version` nor both `apiVersion` and `kind`".to_owned(),
            });
        };
        let Some(kind) = kind.as_str().filter(|kind| !kind.is_empty()) else {
            return Err(ConfigError::UnrecognizedDocument {
                document: position,
                reason: "`kind` must be a non-empty string".to_owned(),
            });
        };
        if api_version.as_str() != Some(V1ALPHA1) {
            return Err(ConfigError::UnsupportedApiVersion {
                document: position,
                kind: kind.to_owned(),
                found: describe_scalar(&api_version),
            });
        }
        extra.push(ExtraDocument {
            position,
            api_version: V1ALPHA1.to_owned(),
            kind: kind.to_owned(),
            value,
        });
    }

    let Some((_, value)) = v1alpha1_doc else {
        return Err(ConfigError::MissingV1Alpha1);
    };
    let config = serde_path_to_error::deserialize(value).map_err(schema_error)?;
    Ok(Documents {
        v1alpha1: config,
        extra,
    })
}

/// Decodes and validates a config stream.
pub fn parse(bytes: &[u8]) -> Result<MachineConfig, ConfigError> {
    MachineConfig::from_documents(decode(bytes)?)
}

fn syntax_error(document: usize, err: &serde_yaml_ng::Error) -> ConfigError {
    let location = err.location();
    ConfigError::Syntax {
        document,
        line: location.as_ref().map(serde_yaml_ng::Location::line),
        column: location.as_ref().map(serde_yaml_ng::Location::column),
        message: err.to_string(),
    }
}

/// Turns a serde error with its path into the matching [`ConfigError`].
fn schema_error(err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> ConfigError {
    let segments: Vec<Segment> = err.path().iter().cloned().collect();
    let message = err.inner().to_string();

    if let Some(key) = unknown_field_name(&message) {
        // The path usually ends with the unknown key itself.
        let (parent, path) = match segments.split_last() {
            Some((Segment::Map { key: last }, parent)) if last == key => {
                (render_path(parent), render_path(&segments))
            }
            _ => {
                let parent = render_path(&segments);
                let path = if parent.is_empty() {
                    key.to_owned()
                } else {
                    format!("{parent}.{key}")
                };
                (parent, path)
            }
        };
        return ConfigError::UnknownKey {
            key: key.to_owned(),
            at: if parent.is_empty() {
                "top level".to_owned()
            } else {
                parent
            },
            path,
        };
    }

    let mut path = render_path(&segments);
    if path.is_empty() {
        path = "top level".to_owned();
    }
    if message.starts_with("invalid type: ") {
        ConfigError::WrongType { path, message }
    } else {
        ConfigError::InvalidField { path, message }
    }
}

/// The key named by serde's "unknown field `x`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// `machine.network.interfaces[0].addresses` from path segments ("" for the root).
pub(super) fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
            other => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&other.to_string());
            }
        }
    }
    out
}

fn describe_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn describe_scalar(value: &Value) -> String {
    match value.as_str() {
        Some(text) => text.to_owned(),
        None => serde_yaml_ng::to_string(value)
            .map(|text| text.trim_end().to_owned())
            .unwrap_or_else(|_| describe_kind(value).to_owned()),
    }
}

// === MachineConfig ===

/// A machine config that passed validation.
///
/// Read it through the accessors; the raw documents stay available through
/// [`MachineConfig::documents`] and are what [`MachineConfig::to_yaml`] writes.
#[derive(Clone, PartialEq, Eq)]
pub struct MachineConfig {
    documents: Documents,
    machine_type: MachineType,
    ca_crt_pem: Vec<u8>,
    ca_key_pem: Option<Vec<u8>>,
    accepted_cas_pem: Vec<Vec<u8>>,
    control_plane_endpoint: String,
    boot_timeout: Option<Duration>,
    registries: Registries,
    document_settings: DocumentSettings,
    install_disk_selector: Option<DiskSelector>,
    strict_issues: Vec<ValidationIssue>,
}

impl fmt::Debug for MachineConfig {
    // Summarises instead of dumping: the documents hold keys and tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineConfig")
            .field("machine_type", &self.machine_type)
            .field("hostname", &self.hostname())
            .field("cluster_name", &self.cluster_name())
            .field("control_plane_endpoint", &self.control_plane_endpoint)
            .field("extra_documents", &self.documents.extra)
            .finish_non_exhaustive()
    }
}

impl MachineConfig {
    /// Validates decoded documents.
    ///
    /// Fails with [`ConfigError::Validation`] listing every broken rule.
    pub fn from_documents(documents: Documents) -> Result<Self, ConfigError> {
        let derived = validate::check(&documents)
            .map_err(|issues| ConfigError::Validation(ValidationIssues(issues)))?;
        Ok(Self {
            documents,
            machine_type: derived.machine_type,
            ca_crt_pem: derived.ca_crt_pem,
            ca_key_pem: derived.ca_key_pem,
            accepted_cas_pem: derived.accepted_cas_pem,
            control_plane_endpoint: derived.control_plane_endpoint,
            boot_timeout: derived.boot_timeout,
            registries: derived.registries,
            document_settings: derived.document_settings,
            install_disk_selector: derived.install_disk_selector,
            strict_issues: derived.strict_issues,
        })
    }

    /// The raw documents.
    #[must_use]
    pub fn documents(&self) -> &Documents {
        &self.documents
    }

    /// The raw v1alpha1 document.
    #[must_use]
    pub fn v1alpha1(&self) -> &v1alpha1::Config {
        &self.documents.v1alpha1
    }

    /// The `apiVersion`/`kind` documents, in stream order.
    #[must_use]
    pub fn extra_documents(&self) -> &[ExtraDocument] {
        &self.documents.extra
    }

    fn machine(&self) -> Option<&v1alpha1::Machine> {
        self.documents.v1alpha1.machine.as_ref()
    }

    fn cluster(&self) -> Option<&v1alpha1::Cluster> {
        self.documents.v1alpha1.cluster.as_ref()
    }

    /// Control plane or worker (`init` and `join` map onto these).
    #[must_use]
    pub fn machine_type(&self) -> MachineType {
        self.machine_type
    }

    /// `debug`: copy service logs to the console.
    #[must_use]
    pub fn debug(&self) -> bool {
        self.documents.v1alpha1.debug.unwrap_or(false)
    }

    /// `machine.token`: the trustd token.
    #[must_use]
    pub fn token(&self) -> &str {
        self.machine()
            .and_then(|machine| machine.token.as_ref())
            .map_or("", v1alpha1::Secret::expose)
    }

    /// `machine.ca.crt` as written (base64 of PEM).
    #[must_use]
    pub fn ca_crt_base64(&self) -> &str {
        self.machine()
            .and_then(|machine| machine.ca.as_ref())
            .and_then(|ca| ca.crt.as_deref())
            .unwrap_or_default()
    }

    /// `machine.ca.crt` decoded: the Talos API CA certificate, PEM.
    #[must_use]
    pub fn ca_crt_pem(&self) -> &[u8] {
        &self.ca_crt_pem
    }

    /// `machine.acceptedCAs` decoded: more CA certificates (PEM) the Talos
    /// API trusts besides `machine.ca`, as during a CA rotation.
    #[must_use]
    pub fn accepted_cas_pem(&self) -> &[Vec<u8>] {
        &self.accepted_cas_pem
    }

    /// Every CA certificate the Talos API trusts, as one PEM bundle:
    /// `machine.ca.crt` first, then `machine.acceptedCAs`. Client
    /// certificates and other nodes' server certificates must chain to one
    /// of them.
    #[must_use]
    pub fn trusted_cas_pem(&self) -> Vec<u8> {
        let mut bundle = Vec::new();
        for pem in std::iter::once(&self.ca_crt_pem).chain(&self.accepted_cas_pem) {
            bundle.extend_from_slice(pem);
            if !pem.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }
        bundle
    }

    /// `machine.ca.key` decoded (PEM); only control plane nodes have one.
    #[must_use]
    pub fn ca_key_pem(&self) -> Option<&[u8]> {
        self.ca_key_pem.as_deref()
    }

    /// `machine.certSANs`: extra names for the apid certificate.
    #[must_use]
    pub fn cert_sans(&self) -> &[String] {
        self.machine()
            .and_then(|machine| machine.cert_sans.as_deref())
            .unwrap_or_default()
    }

    /// `machine.logging.destinations`: each endpoint (`tcp://host:port/`,
    /// `udp://...`) with its extra tags.
    #[must_use]
    pub fn log_destinations(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.machine()
            .and_then(|machine| machine.logging.as_ref())
            .and_then(|logging| logging.destinations.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d.endpoint.clone().filter(|e| !e.is_empty())?,
                    d.extra_tags.clone().unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// The `url` of every `KmsgLogConfig` document: where the kernel's log
    /// goes (`tcp://host:port/` or `udp://...`). Documents the strict check
    /// refuses are left out.
    #[must_use]
    pub fn kmsg_log_urls(&self) -> &[String] {
        &self.document_settings.kmsg_log_urls
    }

    /// `machine.sysctls`: kernel parameters under `/proc/sys`, by sysctl
    /// key (`net.ipv4.ip_forward`).
    #[must_use]
    pub fn sysctls(&self) -> BTreeMap<String, String> {
        self.machine()
            .and_then(|machine| machine.sysctls.clone())
            .unwrap_or_default()
    }

    /// `machine.sysfs`: kernel parameters under `/sys`, by dotted path.
    #[must_use]
    pub fn sysfs(&self) -> BTreeMap<String, String> {
        self.machine()
            .and_then(|machine| machine.sysfs.clone())
            .unwrap_or_default()
    }

    /// `machine.env`: the environment of every service and of the
    /// installer (proxies: `https_proxy`, `http_proxy`, `no_proxy`).
    #[must_use]
    pub fn env(&self) -> BTreeMap<String, String> {
        // Names execve(2) could not pass are left out (the strict check
        // refuses them; a persisted config may still hold one).
        self.machine()
            .and_then(|machine| machine.env.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, value)| env_entry_problem(name, value).is_none())
            .collect()
    }

    /// `machine.files`, as the node writes them at boot. Validation has
    /// checked every entry, so none is dropped here.
    #[must_use]
    pub fn user_files(&self) -> Vec<UserFile> {
        self.machine()
            .and_then(|machine| machine.files.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some(UserFile {
                    path: f.path.clone().filter(|p| p.starts_with('/'))?,
                    content: f.content.clone().unwrap_or_default(),
                    mode: f.permissions.map_or(UserFile::DEFAULT_MODE, |m| m.0),
                    op: FileOp::parse(f.op.as_deref()?)?,
                })
            })
            .collect()
    }

    /// The static hostname: `machine.network.hostname` or a
    /// `HostnameConfig`'s `hostname`, when set and non-empty.
    #[must_use]
    pub fn hostname(&self) -> Option<&str> {
        self.machine()
            .and_then(|machine| machine.network.as_ref())
            .and_then(|network| network.hostname.as_deref())
            .map(str::trim)
            .filter(|hostname| !hostname.is_empty())
            .or(self.document_settings.hostname.as_deref())
    }

    /// How the node names itself without a static hostname, when a
    /// `HostnameConfig` says.
    #[must_use]
    pub fn auto_hostname(&self) -> Option<AutoHostname> {
        self.document_settings.auto_hostname
    }

    /// What this config sets that the node accepts and does not apply,
    /// one sentence each naming the field (Kubernetes settings aside):
    /// an apply's warnings.
    #[must_use]
    pub fn not_applied(&self) -> Vec<String> {
        unapplied::not_applied(self)
    }

    /// What the `HostnameConfig`, `ResolverConfig`, `StaticHostConfig` and
    /// `TimeSyncConfig` documents say (those that passed their checks).
    #[must_use]
    pub fn document_settings(&self) -> &DocumentSettings {
        &self.document_settings
    }

    /// `machine.install.diskSelector`, when set (and valid): what picks the
    /// install disk when `machine.install.disk` is not set.
    #[must_use]
    pub fn install_disk_selector(&self) -> Option<&DiskSelector> {
        self.install_disk_selector.as_ref()
    }

    /// `machine.install.disk`, when set and non-empty (a `/dev/...` path).
    #[must_use]
    pub fn install_disk(&self) -> Option<&str> {
        self.machine()
            .and_then(|machine| machine.install.as_ref())
            .and_then(|install| install.disk.as_deref())
            .filter(|disk| !disk.is_empty())
    }

    /// `machine.install.trustedKeys`: extra installer image signing keys
    /// (PEM), empty when none.
    #[must_use]
    pub fn install_trusted_keys(&self) -> &[String] {
        self.machine()
            .and_then(|machine| machine.install.as_ref())
            .and_then(|install| install.trusted_keys.as_deref())
            .unwrap_or_default()
    }

    /// `machine.install.image`, when set and non-empty.
    #[must_use]
    pub fn install_image(&self) -> Option<&str> {
        self.machine()
            .and_then(|machine| machine.install.as_ref())
            .and_then(|install| install.image.as_deref())
            .filter(|image| !image.is_empty())
    }

    /// The rules a config must pass to be applied, on top of the ones
    /// [`parse`] enforces: rules added after configs were persisted without
    /// them, so a persisted config that breaks one still loads at boot (the
    /// offending parts unused) while a new one is refused. Today: the
    /// credentials and CA of `machine.registries.config`, the paths and
    /// operations of `machine.files` and the names of `machine.env`.
    ///
    /// # Errors
    /// [`ConfigError::Validation`] listing every problem.
    pub fn strict_check(&self) -> Result<(), ConfigError> {
        if self.strict_issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Validation(ValidationIssues(
                self.strict_issues.clone(),
            )))
        }
    }

    /// How to reach each registry named under `machine.registries.config`
    /// (credentials, CA, certificate checking), keyed by the name as
    /// written (`host` or `host:port`).
    #[must_use]
    pub fn registry_access(&self) -> &BTreeMap<String, RegistryAccess> {
        &self.registries.config
    }

    /// `machine.registries`: mirrors and per-host access, as the node pulls
    /// installer images with them.
    #[must_use]
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// Whether `machine.time.disabled` is set, or a `TimeSyncConfig` says
    /// `enabled: false`.
    #[must_use]
    pub fn time_disabled(&self) -> bool {
        self.machine()
            .and_then(|machine| machine.time.as_ref())
            .and_then(|time| time.disabled)
            .unwrap_or(false)
            || self
                .document_settings
                .time
                .as_ref()
                .is_some_and(|t| t.disabled)
    }

    /// The NTP servers to use: none when time sync is disabled, the
    /// configured ones otherwise, [`DEFAULT_TIME_SERVER`] when none are configured.
    #[must_use]
    pub fn time_servers(&self) -> Vec<String> {
        if self.time_disabled() {
            return Vec::new();
        }
        self.configured_time_servers()
    }

    /// The NTP servers the config names, whether sync is on or not, or
    /// [`DEFAULT_TIME_SERVER`] when it names none: what upstream's
    /// TimeServerStatus lists and its `Time` call asks.
    #[must_use]
    pub fn configured_time_servers(&self) -> Vec<String> {
        let configured = self
            .machine()
            .and_then(|machine| machine.time.as_ref())
            .and_then(|time| time.servers.as_deref())
            .filter(|servers| !servers.is_empty())
            .or(self
                .document_settings
                .time
                .as_ref()
                .map(|t| t.servers.as_slice()))
            .unwrap_or_default();
        if configured.is_empty() {
            vec![DEFAULT_TIME_SERVER.to_owned()]
        } else {
            configured.to_vec()
        }
    }

    /// `machine.time.bootTimeout` or a `TimeSyncConfig`'s `bootTimeout`:
    /// how long boot waits for time sync (`None`: forever).
    #[must_use]
    pub fn time_boot_timeout(&self) -> Option<Duration> {
        self.boot_timeout.or(self
            .document_settings
            .time
            .as_ref()
            .and_then(|t| t.boot_timeout))
    }

    /// `cluster.clusterName`, when set and non-empty.
    #[must_use]
    pub fn cluster_name(&self) -> Option<&str> {
        self.cluster()
            .and_then(|cluster| cluster.cluster_name.as_deref())
            .filter(|name| !name.is_empty())
    }

    /// The Kubernetes API URL (`cluster.controlPlane.endpoint`, or the
    /// `endpoint` of a `KubeClusterConfig` document).
    #[must_use]
    pub fn control_plane_endpoint(&self) -> &str {
        &self.control_plane_endpoint
    }

    /// Writes the config back as a YAML stream: the v1alpha1 document, then
    /// every `apiVersion`/`kind` document, separated by `---`.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        let serialize_error = |err: serde_yaml_ng::Error| ConfigError::Serialize {
            message: err.to_string(),
        };
        let mut out =
            serde_yaml_ng::to_string(&self.documents.v1alpha1).map_err(serialize_error)?;
        for document in &self.documents.extra {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&document.value).map_err(serialize_error)?);
        }
        Ok(out)
    }
}

/// The file names a kernel parameter key (`machine.sysctls`,
/// `machine.sysfs`) stands for, one per dotted part, under `/proc/sys`
/// for a sysctl or `/sys` for a sysfs key. A sysctl key is read as
/// sysctl(8) reads it: a slash in a part is a dot in the file name
/// (`net.ipv4.conf.eth0/100.rp_filter`). `None` when a part would name
/// anything but a file there (empty, `.`, `..`, a slash).
#[must_use]
pub fn kernel_param_parts(key: &str, sysctl: bool) -> Option<Vec<String>> {
    key.trim()
        .split('.')
        .map(|part| {
            let part = if sysctl {
                part.replace('/', ".")
            } else {
                part.to_owned()
            };
            let bad = part.is_empty() || part == "." || part == ".." || part.contains('/');
            (!bad).then_some(part)
        })
        .collect()
}

/// One `machine.files` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFile {
    /// Absolute path on the node.
    pub path: String,
    /// Contents (for `append`, what is added after a newline).
    pub content: String,
    /// Permission bits.
    pub mode: u32,
    /// How the file is written.
    pub op: FileOp,
}

impl UserFile {
    /// Permission bits when the entry sets none.
    pub const DEFAULT_MODE: u32 = 0o644;

    /// Top directories no entry may write under: the node's own state
    /// and secrets, and the kernel's filesystems.
    pub const RESERVED: [&'static str; 4] = ["system", "proc", "sys", "dev"];

    /// Whether the path lies under `/var`, the only place a file may be
    /// created (elsewhere the root is read-only).
    #[must_use]
    pub fn in_var(&self) -> bool {
        user_file_parts(&self.path).is_some_and(|parts| user_file_in_var(&parts))
    }
}

/// Whether the parts of a `machine.files` path ([`user_file_parts`])
/// name something under `/var`.
#[must_use]
pub fn user_file_in_var(parts: &[&str]) -> bool {
    parts.len() > 1 && parts[0] == "var"
}

/// What makes a `machine.env` entry one execve(2) cannot pass, if
/// anything: an empty name, or `=` or NUL in it, or NUL in the value.
#[must_use]
pub fn env_entry_problem(name: &str, value: &str) -> Option<&'static str> {
    if name.is_empty() || name.contains(['=', '\0']) {
        Some("is not an environment variable name (empty, or with `=` or NUL)")
    } else if value.contains('\0') {
        Some("has a NUL character in its value")
    } else {
        None
    }
}

/// How a `machine.files` entry is written, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Write the file, whether or not it exists (under `/var` only).
    Create,
    /// Add to an existing regular file, after a newline.
    Append,
    /// Replace an existing regular file's contents.
    Overwrite,
}

impl FileOp {
    /// The config's spelling: `create`, `append` or `overwrite`.
    #[must_use]
    pub fn parse(op: &str) -> Option<FileOp> {
        match op {
            "create" => Some(FileOp::Create),
            "append" => Some(FileOp::Append),
            "overwrite" => Some(FileOp::Overwrite),
            _ => None,
        }
    }

    /// The config's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Create => "create",
            FileOp::Append => "append",
            FileOp::Overwrite => "overwrite",
        }
    }
}

/// The components of an absolute `machine.files` path, or `None` when
/// it is not absolute or a component is `.` or `..` (a path must name
/// where it writes, not climb out of `/var`).
#[must_use]
pub fn user_file_parts(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    (!parts.is_empty() && !parts.iter().any(|p| *p == "." || *p == "..")).then_some(parts)
}

/// A `machine.logging.destinations` endpoint split: whether it is UDP
/// (else TCP), and its authority (`host:port`), without the path, query
/// or fragment. `None` for a scheme other than `tcp://` or `udp://`.
#[must_use]
pub fn log_endpoint(url: &str) -> Option<(bool, &str)> {
    let (udp, rest) = match url.strip_prefix("udp://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("tcp://")?),
    };
    Some((udp, rest.split(['/', '?', '#']).next().unwrap_or_default()))
}

// === Persistence ===

/// Where the persisted config lives: `<state_dir>/config.yaml`.
#[must_use]
pub fn persist_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CONFIG_FILE_NAME)
}

/// Reads and validates a config file.
///
/// I/O errors and content errors both name `path`.
pub fn load(path: &Path) -> Result<MachineConfig, ConfigError> {
    let bytes = fs::read(path).map_err(|source| ConfigError::Io {
        operation: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes).map_err(|err| ConfigError::InFile {
        path: path.to_path_buf(),
        source: Box::new(err),
    })
}

/// Writes `config` to `path` so that a crash leaves the old file or the new
/// one, never a mix.
///
/// The file is created with mode 0600: it holds the node's keys.
pub fn save_atomic(path: &Path, config: &MachineConfig) -> Result<(), ConfigError> {
    let yaml = config.to_yaml()?;

    if path.file_name().is_none() {
        return Err(ConfigError::Io {
            operation: "saving to",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        });
    }
    Ok(crate::fsutil::write_atomic(path, yaml.as_bytes(), 0o600)?)
}
