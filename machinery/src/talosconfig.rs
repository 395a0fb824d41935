//! The talosctl client configuration (`talosconfig`).
//!
//! # Format
//!
//! Upstream's YAML, so files move freely between the two implementations:
//!
//! ```yaml
//! context: prod
//! contexts:
//!     prod:
//!         endpoints: [10.5.0.2, "[fd00::2]:50000"]
//!         nodes: [10.5.0.3]
//!         ca: <base64 of the OS CA certificate PEM>
//!         crt: <base64 of the client certificate PEM>
//!         key: <base64 of the client key PEM>
//! ```
//!
//! `endpoints` is always written (upstream does, as `[]` when empty); the
//! other fields only when set. Upstream-only keys load and are written back:
//! `auth` (basic or siderov1, kept raw), `cluster`, `proxy-url`, and any key
//! this module does not know. The deprecated `target` is appended to
//! `endpoints` on load, as upstream does.
//!
//! # Where it lives
//!
//! [`resolve_path`]: `--talosconfig` if given; else the first existing of
//! `$TALOSCONFIG`, `$TALOS_HOME/config`, `~/.talos/config` and the read-only
//! in-pod `/var/run/secrets/talos.dev/config`; if none exists, the first
//! writable candidate (so `$TALOSCONFIG` when set, else `~/.talos/config`).
//! [`save`](TalosConfig::save) writes mode 0600 in a 0700 directory,
//! atomically.
//!
//! # Limitations
//!
//! - `auth` is kept raw: this implementation does not speak Omni's siderov1
//!   or basic auth.
//! - YAML comments are not preserved by load/save.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml_ng::Value;

use crate::base64;
use crate::config::v1alpha1::Secret;
use crate::constants::APID_PORT;
use crate::pki::CertificateAndKey;

/// The file name inside `~/.talos` and `$TALOS_HOME`.
pub const FILE_NAME: &str = "config";

/// The directory under the home directory.
pub const TALOS_DIR: &str = ".talos";

/// Environment variable naming the talosconfig file.
pub const ENV_TALOSCONFIG: &str = "TALOSCONFIG";

/// Environment variable naming the Talos home directory.
pub const ENV_TALOS_HOME: &str = "TALOS_HOME";

/// The read-only talosconfig mounted into pods granted Talos API access.
pub const IN_POD_PATH: &str = "/var/run/secrets/talos.dev/config";

/// Why a talosconfig could not be found, read, written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TalosConfigError {
    /// There is no file at the path.
    #[error("talosconfig not found at {}", path.display())]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("talosconfig: {operation} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating directory", ...).
        operation: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not a talosconfig.
    #[error("talosconfig {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field path when known.
        message: String,
    },
    /// Writing YAML failed.
    #[error("talosconfig: writing YAML: {0}")]
    Serialize(String),
    /// The selected context does not exist.
    #[error("talosconfig: context {name:?} is not defined (known contexts: {known})")]
    UnknownContext {
        /// The context asked for.
        name: String,
        /// The defined ones, comma-separated, or "none".
        known: String,
    },
    /// No context is selected.
    #[error(
        "talosconfig: no current context; select one with `talosctl config context <name>` or --context"
    )]
    NoCurrentContext,
    /// A context field is unusable.
    #[error("talosconfig: {field}: {reason}")]
    InvalidField {
        /// The field (`ca`, `crt`, `key`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoint cannot be parsed.
    #[error("talosconfig: endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as written.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TalosConfigError {
    /// Whether the file does not exist (the CLI suggests `talosctl gen config`
    /// or `--talosconfig`).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// Reads `null` as the type's default (Go writes and reads nil slices and maps that way).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TalosConfig {
    /// The current context.
    #[serde(default, deserialize_with = "null_as_default")]
    pub context: String,
    /// Every context, by name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub contexts: BTreeMap<String, Context>,
    /// Top-level keys this implementation does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One context: where to connect and with which credentials.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// Deprecated single endpoint; moved into `endpoints` on load.
    #[serde(default, skip_serializing, deserialize_with = "null_as_default")]
    target: String,
    /// apid endpoints: `host`, `host:port`, `[v6]:port`; `http://` means plaintext.
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<String>,
    /// Default target nodes.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub nodes: Vec<String>,
    /// OS CA certificate, base64 of PEM.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ca: String,
    /// Client certificate, base64 of PEM.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub crt: String,
    /// Client key, base64 of PEM.
    #[serde(
        default,
        skip_serializing_if = "Secret::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub key: Secret,
    /// Upstream's `auth` (basic or siderov1), kept raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Value>,
    /// Cluster name for proxy endpoints (Omni).
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cluster: String,
    /// Proxy URL (`socks5://`, `http://`, `https://` or `direct`).
    #[serde(
        rename = "proxy-url",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub proxy_url: String,
    /// Keys this implementation does not know, kept for round trips.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl fmt::Debug for Context {
    // The key and any auth credentials stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .field("has_ca", &!self.ca.is_empty())
            .field("has_crt", &!self.crt.is_empty())
            .field("key", &self.key)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("cluster", &self.cluster)
            .field("proxy_url", &self.proxy_url)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A parsed apid endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP address (IPv6 without brackets); also the TLS server name.
    pub host: String,
    /// Port (default [`APID_PORT`]).
    pub port: u16,
    /// `http://` was given: talk plain gRPC (behind a TLS-terminating proxy).
    pub plaintext: bool,
}

impl Endpoint {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 address,
    /// each optionally prefixed with `https://` or `http://` (plaintext) and
    /// followed by a path, which is ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (rest, plaintext) = if let Some(rest) = text.strip_prefix("http://") {
            (rest, true)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (rest, false)
        } else if text.contains("://") {
            return Err(
                "unsupported scheme (use host[:port], https://... or http://...)".to_owned(),
            );
        } else {
            (text, false)
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err("must not carry user information".to_owned());
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, tail) = bracketed
                .split_once(']')
                .ok_or("unterminated IPv6 literal")?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{host:?} is not an IPv6 address"));
            }
            let port = if tail.is_empty() {
                None
            } else {
                Some(
                    tail.strip_prefix(':')
                        .ok_or("unexpected characters after the IPv6 literal")?,
                )
            };
            (host, port)
        } else if authority.parse::<Ipv6Addr>().is_ok() {
            (authority, None)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("has no host".to_owned());
        }
        let port = match port {
            None => APID_PORT,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("port {port:?} is not 1-65535"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            plaintext,
        })
    }

    /// `host:port`, with IPv6 hosts in brackets.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.plaintext {
            f.write_str("http://")?;
        }
        f.write_str(&self.authority())
    }
}

impl Context {
    /// A context for `endpoints` with the given CA and client credentials.
    #[must_use]
    pub fn new(endpoints: Vec<String>, ca_crt_pem: &str, client: &CertificateAndKey) -> Self {
        Self {
            endpoints,
            ca: base64::encode(ca_crt_pem),
            crt: base64::encode(&client.cert_pem),
            key: Secret::new(base64::encode(&client.key_pem)),
            ..Self::default()
        }
    }

    /// The OS CA certificate, PEM.
    pub fn ca_pem(&self) -> Result<Vec<u8>, TalosConfigError> {
        decode_field("ca", &self.ca)
    }

    /// The client certificate, PEM.
    pub fn crt_pem(&self) -> Result<Vec<u8>, TalosConfigError> {
        decode_field("crt", &self.crt)
    }

    /// The client key, PEM (upstream labels Ed25519 keys `ED25519 PRIVATE
    /// KEY`; see [`crate::pki::to_pkcs8_pem`] before handing it to rustls).
    pub fn key_pem(&self) -> Result<Vec<u8>, TalosConfigError> {
        decode_field("key", self.key.expose())
    }

    /// Whether the context holds a client certificate and key.
    #[must_use]
    pub fn has_client_cert(&self) -> bool {
        !self.crt.is_empty() && !self.key.is_empty()
    }

    /// The endpoints, parsed.
    pub fn parsed_endpoints(&self) -> Result<Vec<Endpoint>, TalosConfigError> {
        self.endpoints
            .iter()
            .map(|endpoint| {
                Endpoint::parse(endpoint).map_err(|reason| TalosConfigError::InvalidEndpoint {
                    endpoint: endpoint.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// The endpoints as `host:port` (default port 50000, IPv6 in brackets),
    /// `http://` kept in front of plaintext ones.
    pub fn endpoints_with_port(&self) -> Result<Vec<String>, TalosConfigError> {
        Ok(self
            .parsed_endpoints()?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// Moves the deprecated `target` into `endpoints`.
    fn upgrade(&mut self) {
        if !self.target.is_empty() {
            let target = std::mem::take(&mut self.target);
            self.endpoints.push(target);
        }
    }
}

fn decode_field(field: &'static str, text: &str) -> Result<Vec<u8>, TalosConfigError> {
    if text.is_empty() {
        return Err(TalosConfigError::InvalidField {
            field,
            reason: "is not set".to_owned(),
        });
    }
    let bytes = base64::decode(text).map_err(|err| TalosConfigError::InvalidField {
        field,
        reason: format!("is not valid base64: {err}"),
    })?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(TalosConfigError::InvalidField {
            field,
            reason: "does not hold a PEM block".to_owned(),
        });
    }
    Ok(bytes)
}

impl TalosConfig {
    /// A config with one context named after the cluster, as `gen config`
    /// writes it: the OS CA, the client certificate, and no endpoints (set
    /// them with `talosctl config endpoint`).
    #[must_use]
    pub fn new_for(cluster_name: &str, ca_crt_pem: &str, client: &CertificateAndKey) -> Self {
        let mut contexts = BTreeMap::new();
        contexts.insert(
            cluster_name.to_owned(),
            Context::new(Vec::new(), ca_crt_pem, client),
        );
        Self {
            context: cluster_name.to_owned(),
            contexts,
            extra: BTreeMap::new(),
        }
    }

    /// Parses talosconfig YAML; `path` only names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, TalosConfigError> {
        let parse_error = |message: String| TalosConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        if text.trim().is_empty() {
            // Upstream treats an empty file as an empty config.
            return Ok(Self::default());
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Self = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let at = err.path().to_string();
            let message = err.inner().to_string();
            if at == "." || at.is_empty() {
                parse_error(message)
            } else {
                parse_error(format!("{at}: {message}"))
            }
        })?;
        for context in config.contexts.values_mut() {
            context.upgrade();
        }
        Ok(config)
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> Result<String, TalosConfigError> {
        serde_yaml_ng::to_string(self).map_err(|err| TalosConfigError::Serialize(err.to_string()))
    }

    /// Reads a talosconfig file. A missing file is
    /// [`TalosConfigError::NotFound`]; every error names the path.
    pub fn load(path: &Path) -> Result<Self, TalosConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(TalosConfigError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(TalosConfigError::Io {
                    operation: "reading",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::from_yaml(&text, path)
    }

    /// Writes the file atomically (temporary file, fsync, rename), mode 0600;
    /// a missing directory is created with mode 0700.
    pub fn save(&self, path: &Path) -> Result<(), TalosConfigError> {
        let yaml = self.to_yaml()?;

        if path.file_name().is_none() {
            return Err(TalosConfigError::Io {
                operation: "saving to",
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
            });
        }
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder
                .create(&dir)
                .map_err(io_error("creating directory", &dir))?;
        }

        crate::fsutil::write_atomic(path, yaml.as_bytes(), 0o600).map_err(|e| {
            TalosConfigError::Io {
                operation: e.operation,
                path: e.path,
                source: e.source,
            }
        })
    }

    /// Adds every context of `other`. A name already taken is renamed
    /// `<name>-1`, `<name>-2`, ...; the current context becomes `other`'s
    /// current one (under its possibly new name). Returns the renames as
    /// `(from, to)`.
    ///
    /// Unlike upstream, an `other` whose current context names none of its
    /// contexts leaves the current context unchanged rather than clearing it.
    pub fn merge(&mut self, other: TalosConfig) -> Vec<(String, String)> {
        let mut renames = Vec::new();
        let mut mapped = BTreeMap::new();
        for (name, context) in other.contexts {
            let mut merged = name.clone();
            let mut suffix = 1u64;
            while self.contexts.contains_key(&merged) {
                merged = format!("{name}-{suffix}");
                suffix += 1;
            }
            if merged != name {
                renames.push((name.clone(), merged.clone()));
            }
            self.contexts.insert(merged.clone(), context);
            mapped.insert(name, merged);
        }
        if let Some(current) = mapped.get(&other.context) {
            self.context = current.clone();
        }
        renames
    }

    /// The context to use: `override_name` (from `--context`) if given and
    /// non-empty, else the current one.
    pub fn current(
        &self,
        override_name: Option<&str>,
    ) -> Result<(&str, &Context), TalosConfigError> {
        let name = override_name
            .filter(|name| !name.is_empty())
            .unwrap_or(self.context.as_str());
        if name.is_empty() {
            return Err(TalosConfigError::NoCurrentContext);
        }
        self.contexts
            .get_key_value(name)
            .map(|(name, context)| (name.as_str(), context))
            .ok_or_else(|| TalosConfigError::UnknownContext {
                name: name.to_owned(),
                known: if self.contexts.is_empty() {
                    "none".to_owned()
                } else {
                    self.contexts
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }
}

/// Maps an I/O error to [`TalosConfigError::Io`] for `operation` on `path`.
fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TalosConfigError {
    let path = path.to_path_buf();
    move |source| TalosConfigError::Io {
        operation,
        path,
        source,
    }
}

/// Where the talosconfig is (see the module docs for the order).
///
/// Pure apart from checking which candidates exist; pass the environment in
/// (`std::env::var_os("TALOSCONFIG")`, `std::env::var_os("TALOS_HOME")`,
/// the home directory) or use [`resolve_path_from_env`]. Empty variables
/// count as unset.
#[must_use]
pub fn resolve_path(
    flag: Option<&Path>,
    env_talosconfig: Option<OsString>,
    env_talos_home: Option<OsString>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(flag) = flag.filter(|flag| !flag.as_os_str().is_empty()) {
        return flag.to_path_buf();
    }

    // (path, writable)
    let mut candidates: Vec<(PathBuf, bool)> = Vec::new();
    if let Some(path) = env_talosconfig.filter(|value| !value.is_empty()) {
        candidates.push((PathBuf::from(path), true));
    }
    if let Some(dir) = env_talos_home.filter(|value| !value.is_empty()) {
        candidates.push((PathBuf::from(dir).join(FILE_NAME), true));
    }
    if let Some(home) = home.filter(|home| !home.as_os_str().is_empty()) {
        candidates.push((home.join(TALOS_DIR).join(FILE_NAME), true));
    }
    candidates.push((PathBuf::from(IN_POD_PATH), false));

    if let Some((path, _)) = candidates.iter().find(|(path, _)| path.exists()) {
        return path.clone();
    }
    candidates
        .into_iter()
        .find(|(_, writable)| *writable)
        .map_or_else(
            || PathBuf::from(TALOS_DIR).join(FILE_NAME),
            |(path, _)| path,
        )
}

/// [`resolve_path`] with the process environment (`$HOME` as home directory).
#[must_use]
pub fn resolve_path_from_env(flag: Option<&Path>) -> PathBuf {
    resolve_path(
        flag,
        std::env::var_os(ENV_TALOSCONFIG),
        std::env::var_os(ENV_TALOS_HOME),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "machinery-talosconfig-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn pem(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    fn b64_pem(label: &str, body: &str) -> String {
        base64::encode(pem(label, body))
    }

    /// A talosconfig as upstream talosctl writes it (4-space indents), with
    /// an Omni context and a legacy `target` context.
    fn upstream_file() -> String {
        format!(
            "context: prod
contexts:
    legacy:
        target: 192.168.1.10
        ca: {ca}
    omni:
        endpoints:
            - https://omni.example.com
        auth:
            siderov1:
                identity: someone@example.com
        cluster: homelab
    prod:
        endpoints:
            - 10.5.0.2
            - '[fd00::2]:50001'
            - http://proxy.example.com:8080
        nodes:
            - 10.5.0.3
            - 10.5.0.4
        ca: {ca}
        crt: {crt}
        key: {key}
        proxy-url: socks5://127.0.0.1:1080
",
            ca = b64_pem("CERTIFICATE", "Q0E="),
            crt = b64_pem("CERTIFICATE", "Y2xpZW50"),
            key = b64_pem("ED25519 PRIVATE KEY", "a2V5"),
        )
    }

    fn parse(text: &str) -> TalosConfig {
        TalosConfig::from_yaml(text, Path::new("test")).expect("parse talosconfig")
    }

    #[test]
    fn upstream_file_loads() {
        let dir = temp_dir("upstream");
        let path = dir.join("talosconfig");
        fs::write(&path, upstream_file()).expect("write");
        let config = TalosConfig::load(&path).expect("load");

        assert_eq!(config.context, "prod");
        assert_eq!(
            config.contexts.keys().collect::<Vec<_>>(),
            ["legacy", "omni", "prod"]
        );
        let (name, prod) = config.current(None).expect("current");
        assert_eq!(name, "prod");
        assert_eq!(prod.nodes, ["10.5.0.3", "10.5.0.4"]);
        assert_eq!(
            prod.ca_pem().expect("ca"),
            pem("CERTIFICATE", "Q0E=").as_bytes()
        );
        assert_eq!(
            prod.crt_pem().expect("crt"),
            pem("CERTIFICATE", "Y2xpZW50").as_bytes()
        );
        assert_eq!(
            prod.key_pem().expect("key"),
            pem("ED25519 PRIVATE KEY", "a2V5").as_bytes()
        );
        assert!(prod.has_client_cert());
        assert_eq!(prod.proxy_url, "socks5://127.0.0.1:1080");
        assert_eq!(
            prod.endpoints_with_port().expect("endpoints"),
            [
                "10.5.0.2:50000",
                "[fd00::2]:50001",
                "http://proxy.example.com:8080"
            ]
        );

        let omni = &config.contexts["omni"];
        assert_eq!(omni.cluster, "homelab");
        assert!(omni.auth.is_some());
        assert!(!omni.has_client_cert());
        assert_eq!(
            omni.endpoints_with_port().expect("endpoints"),
            ["omni.example.com:50000"]
        );

        let legacy = &config.contexts["legacy"];
        assert_eq!(legacy.endpoints, ["192.168.1.10"]);
        let err = legacy.crt_pem().expect_err("no crt");
        assert!(err.to_string().contains("crt: is not set"), "{err}");

        // Writing it back keeps the upstream keys.
        let yaml = config.to_yaml().expect("yaml");
        assert!(yaml.contains("siderov1"), "{yaml}");
        assert!(yaml.contains("proxy-url:"), "{yaml}");
        assert!(yaml.contains("socks5://127.0.0.1:1080"), "{yaml}");
        assert!(!yaml.contains("target"), "{yaml}");
        assert_eq!(parse(&yaml), config);
    }

    #[test]
    fn unknown_keys_survive_a_round_trip() {
        let config = parse(
            "context: a\ncontexts:\n  a:\n    endpoints: []\n    futureKey: 7\nfutureTop: x\n",
        );
        assert!(config.contexts["a"].extra.contains_key("futureKey"));
        assert!(config.extra.contains_key("futureTop"));
        let again = parse(&config.to_yaml().expect("yaml"));
        assert_eq!(again, config);
    }

    #[test]
    fn empty_and_null_sections_load() {
        assert_eq!(parse(""), TalosConfig::default());
        let config = parse("context: \"\"\ncontexts: {}\n");
        assert!(config.contexts.is_empty());
        let config = parse("context: x\ncontexts:\n  x:\n    endpoints:\n    nodes:\n");
        assert!(config.contexts["x"].endpoints.is_empty());
        assert!(matches!(
            config.current(Some("y")),
            Err(TalosConfigError::UnknownContext { .. })
        ));
    }

    #[test]
    fn parse_errors_name_path_and_field() {
        let err = TalosConfig::from_yaml(
            "context: a\ncontexts:\n  a:\n    endpoints: 5\n",
            Path::new("/tmp/tc"),
        )
        .expect_err("bad type");
        let message = err.to_string();
        assert!(message.contains("/tmp/tc"), "{message}");
        assert!(message.contains("contexts.a.endpoints"), "{message}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = temp_dir("missing");
        let path = dir.join("nope");
        let err = TalosConfig::load(&path).expect_err("missing");
        assert!(err.is_not_found());
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn current_context_errors_list_known_contexts() {
        let config = parse(&upstream_file());
        let (name, _) = config.current(Some("omni")).expect("override");
        assert_eq!(name, "omni");
        let err = config.current(Some("staging")).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "talosconfig: context \"staging\" is not defined (known contexts: legacy, omni, prod)"
        );
        let err = TalosConfig::default().current(None).expect_err("none");
        assert!(matches!(err, TalosConfigError::NoCurrentContext));
    }

    fn single(name: &str, endpoint: &str) -> TalosConfig {
        let mut config = TalosConfig {
            context: name.to_owned(),
            ..TalosConfig::default()
        };
        config.contexts.insert(
            name.to_owned(),
            Context {
                endpoints: vec![endpoint.to_owned()],
                ..Context::default()
            },
        );
        config
    }

    #[test]
    fn merge_renames_clashes_and_switches_context() {
        let mut config = single("dev", "10.0.0.1");
        config
            .contexts
            .insert("prod".to_owned(), Context::default());

        let renames = config.merge(single("dev", "10.0.0.2"));
        assert_eq!(renames, [("dev".to_owned(), "dev-1".to_owned())]);
        assert_eq!(config.context, "dev-1");
        assert_eq!(config.contexts["dev-1"].endpoints, ["10.0.0.2"]);
        assert_eq!(config.contexts["dev"].endpoints, ["10.0.0.1"]);

        let renames = config.merge(single("dev", "10.0.0.3"));
        assert_eq!(renames, [("dev".to_owned(), "dev-2".to_owned())]);
        assert_eq!(config.context, "dev-2");

        let renames = config.merge(single("new", "10.0.0.4"));
        assert!(renames.is_empty());
        assert_eq!(config.context, "new");
        assert_eq!(config.contexts.len(), 5);
    }

    #[test]
    fn resolve_path_order() {
        let dir = temp_dir("resolve");
        let env_file = dir.join("env-talosconfig");
        let talos_home = dir.join("talos-home");
        let home = dir.join("home");
        let home_file = home.join(".talos").join("config");
        let home_config = talos_home.join("config");

        // The flag always wins.
        let flag = dir.join("flag");
        assert_eq!(
            resolve_path(
                Some(&flag),
                Some(env_file.clone().into()),
                None,
                Some(home.clone())
            ),
            flag
        );

        // Nothing exists: the first writable candidate.
        assert_eq!(
            resolve_path(
                None,
                Some(env_file.clone().into()),
                Some(talos_home.clone().into()),
                Some(home.clone())
            ),
            env_file
        );
        assert_eq!(
            resolve_path(
                None,
                None,
                Some(talos_home.clone().into()),
                Some(home.clone())
            ),
            home_config
        );
        assert_eq!(
            resolve_path(None, None, None, Some(home.clone())),
            home_file
        );
        // Empty variables count as unset.
        assert_eq!(
            resolve_path(None, Some(OsString::new()), None, Some(home.clone())),
            home_file
        );

        // The first existing one wins over earlier missing ones.
        fs::create_dir_all(home_file.parent().expect("parent")).expect("mkdir");
        fs::write(&home_file, "").expect("write");
        assert_eq!(
            resolve_path(
                None,
                Some(env_file.clone().into()),
                Some(talos_home.clone().into()),
                Some(home.clone())
            ),
            home_file
        );
        fs::create_dir_all(&talos_home).expect("mkdir");
        fs::write(&home_config, "").expect("write");
        assert_eq!(
            resolve_path(
                None,
                Some(env_file.clone().into()),
                Some(talos_home.clone().into()),
                Some(home.clone())
            ),
            home_config
        );
        fs::write(&env_file, "").expect("write");
        assert_eq!(
            resolve_path(
                None,
                Some(env_file.clone().into()),
                Some(talos_home.into()),
                Some(home)
            ),
            env_file
        );
    }

    #[test]
    fn save_is_private_and_round_trips() {
        let dir = temp_dir("save");
        let path = dir.join("nested").join("config");
        let config = parse(&upstream_file());
        config.save(&path).expect("save");
        config.save(&path).expect("overwrite");
        assert_eq!(TalosConfig::load(&path).expect("load"), config);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file_mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(file_mode, 0o600);
            let dir_mode = fs::metadata(path.parent().expect("parent"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dir_mode, 0o700);
        }
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn endpoints_parse() {
        let cases = [
            ("10.5.0.2", "10.5.0.2", 50000, false),
            ("10.5.0.2:50001", "10.5.0.2", 50001, false),
            ("node.example.com", "node.example.com", 50000, false),
            ("node.example.com:443", "node.example.com", 443, false),
            ("::1", "::1", 50000, false),
            ("[::1]", "::1", 50000, false),
            ("[fd00::2]:50001", "fd00::2", 50001, false),
            ("https://node.example.com", "node.example.com", 50000, false),
            (
                "https://node.example.com:8443/",
                "node.example.com",
                8443,
                false,
            ),
            ("http://proxy:8080", "proxy", 8080, true),
        ];
        for (text, host, port, plaintext) in cases {
            let endpoint = Endpoint::parse(text).expect(text);
            assert_eq!(endpoint.host, host, "{text}");
            assert_eq!(endpoint.port, port, "{text}");
            assert_eq!(endpoint.plaintext, plaintext, "{text}");
        }
        assert_eq!(
            Endpoint::parse("::1").expect("v6").to_string(),
            "[::1]:50000"
        );
        for bad in [
            "",
            ":50000",
            "host:0",
            "host:99999",
            "[::1",
            "[zz]:1",
            "ftp://x",
            "host:",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn new_for_has_no_endpoints_and_debug_hides_the_key() {
        let client = CertificateAndKey {
            cert_pem: pem("CERTIFICATE", "Y2xpZW50"),
            key_pem: pem("ED25519 PRIVATE KEY", "c2VjcmV0"),
        };
        let config = TalosConfig::new_for("demo", &pem("CERTIFICATE", "Q0E="), &client);
        assert_eq!(config.context, "demo");
        let (_, context) = config.current(None).expect("current");
        assert!(context.endpoints.is_empty());
        assert_eq!(context.key_pem().expect("key"), client.key_pem.as_bytes());
        let yaml = config.to_yaml().expect("yaml");
        assert!(yaml.contains("endpoints: []"), "{yaml}");
        assert!(!format!("{config:?}").contains(context.key.expose()));
    }
}
