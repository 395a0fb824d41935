//! `talosctl gen config`: machine configs and a talosconfig from a secrets bundle.
//!
//! # What is generated
//!
//! The same documents upstream v1.10 writes without `--with-docs` and
//! `--with-examples`: one `version: v1alpha1` document per node type, with
//! the same keys in the same order.
//!
//! - `controlplane.yaml`: the OS CA with its key, the trustd token, kubelet,
//!   install, feature switches (RBAC, stable hostname, apid EKU check, disk
//!   quotas, KubePrism on 7445, host DNS forwarding), the
//!   exclude-from-external-load-balancers node label; and the whole cluster
//!   section: discovery identity, Kubernetes CAs and keys, encryption
//!   secret, API server (Pod Security admission, audit policy, cert SANs),
//!   controller manager, proxy, scheduler, discovery, etcd CA.
//! - `worker.yaml`: the OS and Kubernetes CA certificates with empty keys,
//!   the same machine settings (no node label), and only what workers need
//!   of the cluster section.
//! - a talosconfig: one context named after the cluster, the OS CA, an
//!   `os:admin` client certificate valid one year, and no endpoints.
//!
//! Both configs are checked with [`config::parse`] before they are returned.
//!
//! # Patches
//!
//! [`apply_patch`] applies `--config-patch` patches as JSON merge patches
//! (RFC 7386): mappings merge recursively, `null` deletes a key, scalars and
//! lists replace. Upstream's strategic merge differs in places (it appends
//! to some lists, e.g. `certSANs`, and merges network interfaces by name).
//! A patch that is a list is an RFC 6902 JSON patch (see [`crate::jsonpatch`]),
//! applied to the v1alpha1 document of a config that has only that one, as
//! upstream does. In a patch of several documents, each applies in turn: a
//! JSON patch after a document the patch adds meets a config of several
//! documents, and is refused.
//!
//! Generation creates a key pair (the admin certificate): CPU-bound, so
//! async callers should use `spawn_blocking`.

use std::fmt;
use std::time::SystemTime;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::config::v1alpha1::{
    CertificateAndKey as ConfigCertificateAndKey, Cluster, ClusterNetwork, Config, ControlPlane,
    Etcd, Features, HostDns, Install, Key, KubePrism, Kubelet, Machine, Network, Secret, StringMap,
};
use crate::config::{self, ConfigError, V1ALPHA1};
use crate::pki::{self, CLIENT_CERT_TTL, PkiError};
use crate::secrets::{EncryptionKind, SecretsBundle, SecretsError};
use crate::talosconfig::{Endpoint, TalosConfig};

/// Default install disk.
pub const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

/// Default installer image: this implementation's, at this version.
pub const DEFAULT_INSTALL_IMAGE: &str =
    concat!("ghcr.io/example/installer:v", env!("CARGO_PKG_VERSION"));

/// Default Kubernetes version.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.34.1";

/// Default Kubernetes DNS domain.
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";

/// Default pod CIDR.
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";

/// Default service CIDR.
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";

/// KubePrism's port.
pub const KUBE_PRISM_PORT: u16 = 7445;

/// Role of the generated talosconfig's client certificate.
pub const ADMIN_ROLE: &str = "os:admin";

/// Kubelet image repository (upstream's, tagged `v<kubernetes version>`).
pub const KUBELET_IMAGE: &str = "ghcr.io/siderolabs/kubelet";

/// Kubernetes control plane image repositories.
pub const KUBE_APISERVER_IMAGE: &str = "registry.k8s.io/kube-apiserver";
/// See [`KUBE_APISERVER_IMAGE`].
pub const KUBE_CONTROLLER_MANAGER_IMAGE: &str = "registry.k8s.io/kube-controller-manager";
/// See [`KUBE_APISERVER_IMAGE`].
pub const KUBE_PROXY_IMAGE: &str = "registry.k8s.io/kube-proxy";
/// See [`KUBE_APISERVER_IMAGE`].
pub const KUBE_SCHEDULER_IMAGE: &str = "registry.k8s.io/kube-scheduler";

/// Node label upstream sets on control plane nodes.
const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// What `gen config` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Cluster name (also the talosconfig context name).
    pub cluster_name: String,
    /// Kubernetes API URL, e.g. `https://10.5.0.2:6443`.
    pub endpoint: String,
    /// Install disk (`/dev/...`); empty leaves it out.
    pub install_disk: String,
    /// Installer image; empty leaves it out.
    pub install_image: String,
    /// Extra installer image signing keys (PEM) the nodes trust.
    pub installer_keys: Vec<String>,
    /// Extra SANs for the API server and apid certificates.
    pub additional_sans: Vec<String>,
    /// Kubernetes DNS domain.
    pub dns_domain: String,
    /// Kubernetes version (a leading `v` is dropped).
    pub kubernetes_version: String,
}

impl GenOptions {
    /// Options with every default filled in.
    #[must_use]
    pub fn new(cluster_name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            endpoint: endpoint.into(),
            install_disk: DEFAULT_INSTALL_DISK.to_owned(),
            install_image: DEFAULT_INSTALL_IMAGE.to_owned(),
            installer_keys: Vec::new(),
            additional_sans: Vec::new(),
            dns_domain: DEFAULT_DNS_DOMAIN.to_owned(),
            kubernetes_version: DEFAULT_KUBERNETES_VERSION.to_owned(),
        }
    }
}

/// The generated files.
#[derive(Clone)]
pub struct Generated {
    /// `controlplane.yaml`.
    pub controlplane_yaml: String,
    /// `worker.yaml`.
    pub worker_yaml: String,
    /// `talosconfig`.
    pub talosconfig: TalosConfig,
}

impl fmt::Debug for Generated {
    // The configs carry every cluster secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field(
                "controlplane_yaml",
                &format_args!("<{} bytes>", self.controlplane_yaml.len()),
            )
            .field(
                "worker_yaml",
                &format_args!("<{} bytes>", self.worker_yaml.len()),
            )
            .field("talosconfig", &self.talosconfig)
            .finish()
    }
}

/// Why configs could not be generated or patched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenError {
    /// An option is unusable.
    #[error("gen config: {option}: {reason}")]
    InvalidOption {
        /// The option (`cluster name`, `endpoint`, ...).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The secrets bundle is unusable.
    #[error("gen config: {0}")]
    Secrets(#[from] SecretsError),
    /// Issuing the admin certificate failed.
    #[error("gen config: {0}")]
    Pki(#[from] PkiError),
    /// Writing YAML failed.
    #[error("gen config: writing {what}: {message}")]
    Serialize {
        /// Which document.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
    /// A generated config does not validate (a bug in this module).
    #[error("gen config: the generated {which} config is invalid (this is a bug): {source}")]
    InvalidOutput {
        /// `controlplane` or `worker`.
        which: &'static str,
        /// The validation error.
        #[source]
        source: ConfigError,
    },
    /// A patch cannot be applied.
    #[error("config patch: {0}")]
    Patch(String),
    /// The patched config does not validate.
    #[error("config patch: the patched config is invalid: {0}")]
    PatchedInvalid(#[source] ConfigError),
}

/// Generates `controlplane.yaml`, `worker.yaml` and a talosconfig.
pub fn generate(
    bundle: &SecretsBundle,
    opts: &GenOptions,
    now: SystemTime,
) -> Result<Generated, GenError> {
    let input = Input::new(bundle, opts)?;

    let controlplane = Config {
        version: V1ALPHA1.to_owned(),
        debug: Some(false),
        persist: Some(true),
        machine: Some(input.machine(true)),
        cluster: Some(input.controlplane_cluster()),
    };
    let worker = Config {
        version: V1ALPHA1.to_owned(),
        debug: Some(false),
        persist: Some(true),
        machine: Some(input.machine(false)),
        cluster: Some(input.worker_cluster()),
    };
    let controlplane_yaml = to_yaml("controlplane config", &controlplane)?;
    let worker_yaml = to_yaml("worker config", &worker)?;
    config::parse(controlplane_yaml.as_bytes()).map_err(|source| GenError::InvalidOutput {
        which: "controlplane",
        source,
    })?;
    config::parse(worker_yaml.as_bytes()).map_err(|source| GenError::InvalidOutput {
        which: "worker",
        source,
    })?;

    let os_ca = bundle.os_ca()?;
    let admin = pki::issue_client_cert(&os_ca, &[ADMIN_ROLE.to_owned()], CLIENT_CERT_TTL, now)?;
    let talosconfig = TalosConfig::new_for(&opts.cluster_name, &os_ca.cert_pem, &admin);

    Ok(Generated {
        controlplane_yaml,
        worker_yaml,
        talosconfig,
    })
}

fn to_yaml<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, GenError> {
    serde_yaml_ng::to_string(value).map_err(|err| GenError::Serialize {
        what,
        message: err.to_string(),
    })
}

/// Checked options plus the bundle, ready to be written out.
#[derive(Debug)]
struct Input<'a> {
    bundle: &'a SecretsBundle,
    opts: &'a GenOptions,
    kubernetes_version: String,
    api_server_sans: Vec<String>,
}

impl<'a> Input<'a> {
    fn new(bundle: &'a SecretsBundle, opts: &'a GenOptions) -> Result<Self, GenError> {
        let invalid =
            |option: &'static str, reason: String| GenError::InvalidOption { option, reason };

        let name = opts.cluster_name.as_str();
        if name.is_empty() {
            return Err(invalid("cluster name", "is empty".to_owned()));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "cluster name",
                format!("{name:?} must not contain whitespace"),
            ));
        }

        let endpoint = opts.endpoint.as_str();
        if !endpoint.starts_with("https://") {
            let hint = if endpoint.contains("://") {
                String::new()
            } else {
                format!(" (did you mean \"https://{endpoint}:6443\"?)")
            };
            return Err(invalid(
                "endpoint",
                format!("{endpoint:?} must be an https:// URL{hint}"),
            ));
        }
        let host = Endpoint::parse(endpoint)
            .map_err(|reason| invalid("endpoint", format!("{endpoint:?}: {reason}")))?
            .host;

        let version = opts
            .kubernetes_version
            .trim()
            .trim_start_matches('v')
            .to_owned();
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        {
            return Err(invalid(
                "kubernetes version",
                format!(
                    "{:?} is not a version such as 1.34.1",
                    opts.kubernetes_version
                ),
            ));
        }

        if !opts.install_disk.is_empty()
            && opts
                .install_disk
                .strip_prefix("/dev/")
                .is_none_or(str::is_empty)
        {
            return Err(invalid(
                "install disk",
                format!("{:?} is not a device path under /dev/", opts.install_disk),
            ));
        }
        if opts.dns_domain.is_empty() {
            return Err(invalid("dns domain", "is empty".to_owned()));
        }

        bundle.validate()?;

        // The endpoint's host first, then the extra SANs, without repeats.
        let mut api_server_sans = vec![host];
        for san in &opts.additional_sans {
            if !api_server_sans.contains(san) {
                api_server_sans.push(san.clone());
            }
        }

        Ok(Self {
            bundle,
            opts,
            kubernetes_version: version,
            api_server_sans,
        })
    }

    fn image(&self, repository: &str) -> String {
        format!("{repository}:v{}", self.kubernetes_version)
    }

    fn machine(&self, control_plane: bool) -> Machine {
        let certs = &self.bundle.certs;
        let ca_key = if control_plane {
            certs.os.key.clone()
        } else {
            Secret::new("")
        };
        let node_labels: Option<StringMap> = control_plane
            .then(|| std::iter::once((EXCLUDE_FROM_LB_LABEL.to_owned(), String::new())).collect());
        Machine {
            machine_type: Some(
                if control_plane {
                    "controlplane"
                } else {
                    "worker"
                }
                .to_owned(),
            ),
            token: Some(self.bundle.trustdinfo.token.clone()),
            ca: Some(ConfigCertificateAndKey {
                crt: Some(certs.os.crt.clone()),
                key: Some(ca_key),
            }),
            cert_sans: Some(self.opts.additional_sans.clone()),
            kubelet: Some(Kubelet {
                image: Some(self.image(KUBELET_IMAGE)),
                default_runtime_seccomp_profile_enabled: Some(true),
                disable_manifests_directory: Some(true),
                ..Kubelet::default()
            }),
            network: Some(Network::default()),
            install: Some(Install {
                disk: non_empty(&self.opts.install_disk),
                image: non_empty(&self.opts.install_image),
                trusted_keys: (!self.opts.installer_keys.is_empty())
                    .then(|| self.opts.installer_keys.clone()),
                wipe: Some(false),
                ..Install::default()
            }),
            features: Some(Features {
                rbac: Some(true),
                stable_hostname: Some(true),
                apid_check_ext_key_usage: Some(true),
                disk_quota_support: Some(true),
                kube_prism: Some(KubePrism {
                    enabled: Some(true),
                    port: Some(KUBE_PRISM_PORT),
                }),
                host_dns: Some(HostDns {
                    enabled: Some(true),
                    forward_kube_dns_to_host: Some(true),
                    ..HostDns::default()
                }),
                ..Features::default()
            }),
            node_labels,
            ..Machine::default()
        }
    }

    fn cluster_network(&self) -> ClusterNetwork {
        ClusterNetwork {
            cni: None,
            dns_domain: Some(self.opts.dns_domain.clone()),
            pod_subnets: Some(vec![DEFAULT_POD_SUBNET.to_owned()]),
            service_subnets: Some(vec![DEFAULT_SERVICE_SUBNET.to_owned()]),
        }
    }

    fn control_plane(&self) -> ControlPlane {
        ControlPlane {
            endpoint: Some(self.opts.endpoint.clone()),
            local_api_server_port: None,
        }
    }

    fn controlplane_cluster(&self) -> Cluster {
        let bundle = self.bundle;
        let certs = &bundle.certs;
        let (secretbox, aescbc) = match bundle.encryption_secret() {
            Some((EncryptionKind::Secretbox, secret)) => (Some(secret.clone()), None),
            Some((EncryptionKind::AesCbc, secret)) => (None, Some(secret.clone())),
            None => (None, None),
        };
        Cluster {
            id: Some(bundle.cluster.id.clone()),
            secret: Some(bundle.cluster.secret.clone()),
            control_plane: Some(self.control_plane()),
            cluster_name: Some(self.opts.cluster_name.clone()),
            network: Some(self.cluster_network()),
            token: Some(bundle.secrets.bootstraptoken.clone()),
            aescbc_encryption_secret: aescbc,
            secretbox_encryption_secret: secretbox,
            ca: Some(ConfigCertificateAndKey {
                crt: Some(certs.k8s.crt.clone()),
                key: Some(certs.k8s.key.clone()),
            }),
            aggregator_ca: Some(ConfigCertificateAndKey {
                crt: Some(certs.k8saggregator.crt.clone()),
                key: Some(certs.k8saggregator.key.clone()),
            }),
            service_account: Some(Key {
                key: Some(certs.k8sserviceaccount.key.clone()),
            }),
            api_server: Some(self.api_server()),
            controller_manager: Some(image_only(self.image(KUBE_CONTROLLER_MANAGER_IMAGE))),
            proxy: Some(image_only(self.image(KUBE_PROXY_IMAGE))),
            scheduler: Some(image_only(self.image(KUBE_SCHEDULER_IMAGE))),
            discovery: Some(discovery()),
            etcd: Some(Etcd {
                ca: Some(ConfigCertificateAndKey {
                    crt: Some(certs.etcd.crt.clone()),
                    key: Some(certs.etcd.key.clone()),
                }),
                ..Etcd::default()
            }),
            extra_manifests: Some(Vec::new()),
            inline_manifests: Some(Vec::new()),
            ..Cluster::default()
        }
    }

    fn worker_cluster(&self) -> Cluster {
        let bundle = self.bundle;
        Cluster {
            id: Some(bundle.cluster.id.clone()),
            secret: Some(bundle.cluster.secret.clone()),
            control_plane: Some(self.control_plane()),
            cluster_name: Some(self.opts.cluster_name.clone()),
            network: Some(self.cluster_network()),
            token: Some(bundle.secrets.bootstraptoken.clone()),
            ca: Some(ConfigCertificateAndKey {
                crt: Some(bundle.certs.k8s.crt.clone()),
                key: Some(Secret::new("")),
            }),
            discovery: Some(discovery()),
            ..Cluster::default()
        }
    }

    fn api_server(&self) -> Value {
        let pod_security = map([
            (
                "apiVersion",
                string("pod-security.admission.config.k8s.io/v1alpha1"),
            ),
            (
                "defaults",
                map([
                    ("audit", string("restricted")),
                    ("audit-version", string("latest")),
                    ("enforce", string("baseline")),
                    ("enforce-version", string("latest")),
                    ("warn", string("restricted")),
                    ("warn-version", string("latest")),
                ]),
            ),
            (
                "exemptions",
                map([
                    ("namespaces", Value::Sequence(vec![string("kube-system")])),
                    ("runtimeClasses", Value::Sequence(Vec::new())),
                    ("usernames", Value::Sequence(Vec::new())),
                ]),
            ),
            ("kind", string("PodSecurityConfiguration")),
        ]);
        let audit_policy = map([
            ("apiVersion", string("audit.k8s.io/v1")),
            ("kind", string("Policy")),
            (
                "rules",
                Value::Sequence(vec![map([("level", string("Metadata"))])]),
            ),
        ]);
        map([
            ("image", string(&self.image(KUBE_APISERVER_IMAGE))),
            (
                "certSANs",
                Value::Sequence(
                    self.api_server_sans
                        .iter()
                        .map(|san| Value::String(san.clone()))
                        .collect(),
                ),
            ),
            ("disablePodSecurityPolicy", Value::Bool(true)),
            (
                "admissionControl",
                Value::Sequence(vec![map([
                    ("name", string("PodSecurity")),
                    ("configuration", pod_security),
                ])]),
            ),
            ("auditPolicy", audit_policy),
        ])
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn string(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    let mut mapping = Mapping::with_capacity(N);
    for (key, value) in entries {
        mapping.insert(string(key), value);
    }
    Value::Mapping(mapping)
}

fn image_only(image: String) -> Value {
    map([("image", Value::String(image))])
}

fn discovery() -> Value {
    map([
        ("enabled", Value::Bool(true)),
        (
            "registries",
            map([
                ("kubernetes", map([("disabled", Value::Bool(true))])),
                ("service", Value::Mapping(Mapping::new())),
            ]),
        ),
    ])
}

// === patches ===

/// Applies a config patch (`--config-patch`) to a config stream and checks
/// the result with [`config::parse`].
///
/// `patch` is YAML or JSON, possibly several `---`-separated documents. A
/// document with `apiVersion` and `kind` patches the config document of the
/// same kind (and `name`, when the patch has one), or is appended when there
/// is none; any other document patches the v1alpha1 document. Merging
/// follows RFC 7386; a document that is a list is a JSON patch (RFC 6902)
/// for a config of one document (see the module docs).
pub fn apply_patch(yaml: &str, patch: &str) -> Result<String, GenError> {
    let mut documents =
        split_documents(yaml).map_err(|err| GenError::Patch(format!("the config: {err}")))?;
    let patches =
        split_documents(patch).map_err(|err| GenError::Patch(format!("the patch: {err}")))?;
    if patches.is_empty() {
        return Err(GenError::Patch("the patch is empty".to_owned()));
    }

    for (index, patch) in patches.into_iter().enumerate() {
        let position = index + 1;
        if patch.is_sequence() {
            // Upstream's words: a list of operations cannot say which
            // document it is for.
            let [document] = documents.as_mut_slice() else {
                return Err(GenError::Patch(
                    "JSON6902 patches are not supported for multi-document machine configuration"
                        .to_owned(),
                ));
            };
            crate::jsonpatch::apply(document, &patch)
                .map_err(|err| GenError::Patch(format!("patch document {position}: {err}")))?;
            continue;
        }
        let Value::Mapping(patch_map) = &patch else {
            return Err(GenError::Patch(format!(
                "patch document {position} is not a mapping or a list"
            )));
        };

        let kind = patch_map
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let target = match kind.as_deref() {
            Some(kind) if patch_map.contains_key("apiVersion") => {
                let name = patch_map.get("name").and_then(Value::as_str);
                documents.iter().position(|document| {
                    document.get("kind").and_then(Value::as_str) == Some(kind)
                        && name.is_none_or(|name| {
                            document.get("name").and_then(Value::as_str) == Some(name)
                        })
                })
            }
            _ => {
                let target = documents
                    .iter()
                    .position(|document| document.get("version").is_some());
                if target.is_none() {
                    return Err(GenError::Patch(format!(
                        "patch document {position} patches the v1alpha1 document, but the config has none"
                    )));
                }
                target
            }
        };

        match target {
            Some(target) => {
                if let Some(document) = documents.get_mut(target) {
                    merge_patch(document, patch);
                }
            }
            None => {
                let mut document = Value::Null;
                merge_patch(&mut document, patch);
                documents.push(document);
            }
        }
    }

    let mut out = String::new();
    for document in &documents {
        if !out.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("---\n");
        }
        out.push_str(&to_yaml("patched config", document)?);
    }
    config::parse(out.as_bytes()).map_err(GenError::PatchedInvalid)?;
    Ok(out)
}

/// The non-empty documents of a YAML stream.
fn split_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(document).map_err(|err| format!("document {}: {err}", index + 1))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// RFC 7386 MergePatch(target, patch), in place.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Mapping(patch) => {
            if !target.is_mapping() {
                *target = Value::Mapping(Mapping::new());
            }
            if let Value::Mapping(target) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        target.shift_remove(&key);
                    } else if let Some(existing) = target.get_mut(&key) {
                        merge_patch(existing, value);
                    } else {
                        let mut fresh = Value::Null;
                        merge_patch(&mut fresh, value);
                        target.insert(key, fresh);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::MachineType;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn bundle() -> SecretsBundle {
        SecretsBundle::generate(now()).expect("bundle")
    }

    fn options() -> GenOptions {
        let mut opts = GenOptions::new("demo", "https://10.5.0.2:6443");
        opts.additional_sans = vec!["10.5.0.100".to_owned(), "kube.example.com".to_owned()];
        opts
    }

    fn generated(bundle: &SecretsBundle) -> Generated {
        generate(bundle, &options(), now()).expect("generate")
    }

    #[test]
    fn controlplane_config_parses_and_holds_the_keys() {
        let bundle = bundle();
        let out = generated(&bundle);
        let cfg = config::parse(out.controlplane_yaml.as_bytes()).expect("controlplane parses");
        assert_eq!(cfg.machine_type(), MachineType::ControlPlane);
        assert_eq!(cfg.cluster_name(), Some("demo"));
        assert_eq!(cfg.control_plane_endpoint(), "https://10.5.0.2:6443");
        assert_eq!(cfg.install_disk(), Some(DEFAULT_INSTALL_DISK));
        assert_eq!(cfg.install_image(), Some(DEFAULT_INSTALL_IMAGE));
        assert_eq!(cfg.token(), bundle.trustdinfo.token.expose());
        assert_eq!(cfg.cert_sans(), ["10.5.0.100", "kube.example.com"]);
        let os = bundle.os_ca().expect("os ca");
        assert_eq!(cfg.ca_crt_pem(), os.cert_pem.as_bytes());
        assert_eq!(cfg.ca_key_pem(), Some(os.key_pem.as_bytes()));

        let yaml = &out.controlplane_yaml;
        for expected in [
            "version: v1alpha1",
            "persist: true",
            "image: ghcr.io/siderolabs/kubelet:v1.34.1",
            "image: registry.k8s.io/kube-apiserver:v1.34.1",
            "image: registry.k8s.io/kube-scheduler:v1.34.1",
            "apidCheckExtKeyUsage: true",
            "port: 7445",
            "forwardKubeDNSToHost: true",
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "dnsDomain: cluster.local",
            "10.244.0.0/16",
            "10.96.0.0/12",
            "PodSecurityConfiguration",
            "level: Metadata",
            "secretboxEncryptionSecret:",
            "aggregatorCA:",
            "serviceAccount:",
            "extraManifests: []",
            "inlineManifests: []",
            "network: {}",
        ] {
            assert!(yaml.contains(expected), "missing {expected:?} in\n{yaml}");
        }
        assert!(yaml.contains(bundle.certs.k8s.key.expose()));
        assert!(yaml.contains(bundle.certs.etcd.key.expose()));

        // The API server SANs: the endpoint host, then the extra SANs.
        let api_server = cfg
            .v1alpha1()
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.api_server.as_ref())
            .expect("apiServer");
        let sans: Vec<&str> = api_server
            .get("certSANs")
            .and_then(Value::as_sequence)
            .expect("certSANs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(sans, ["10.5.0.2", "10.5.0.100", "kube.example.com"]);
    }

    #[test]
    fn worker_config_parses_without_ca_keys() {
        let bundle = bundle();
        let out = generated(&bundle);
        let cfg = config::parse(out.worker_yaml.as_bytes()).expect("worker parses");
        assert_eq!(cfg.machine_type(), MachineType::Worker);
        assert_eq!(cfg.ca_key_pem(), None);
        assert_eq!(cfg.cluster_name(), Some("demo"));

        let yaml = &out.worker_yaml;
        for secret in [
            bundle.certs.os.key.expose(),
            bundle.certs.k8s.key.expose(),
            bundle.certs.k8saggregator.key.expose(),
            bundle.certs.k8sserviceaccount.key.expose(),
            bundle.certs.etcd.key.expose(),
        ] {
            assert!(!yaml.contains(secret), "worker config leaks a CA key");
        }
        assert!(!yaml.contains("exclude-from-external-load-balancers"));
        assert!(!yaml.contains("apiServer"));
        assert!(!yaml.contains("secretboxEncryptionSecret"));
        let cluster_ca = cfg
            .v1alpha1()
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.ca.as_ref())
            .expect("cluster.ca");
        assert_eq!(
            cluster_ca.crt.as_deref(),
            Some(bundle.certs.k8s.crt.as_str())
        );
        assert!(cluster_ca.key.as_ref().is_some_and(Secret::is_empty));
    }

    #[test]
    fn talosconfig_has_an_admin_cert_and_no_endpoints() {
        let bundle = bundle();
        let out = generated(&bundle);
        let (name, context) = out.talosconfig.current(None).expect("context");
        assert_eq!(name, "demo");
        assert!(context.endpoints.is_empty());
        let os = bundle.os_ca().expect("os ca");
        assert_eq!(context.ca_pem().expect("ca"), os.cert_pem.as_bytes());
        let crt = context.crt_pem().expect("crt");
        let info = pki::cert_info(&crt).expect("client cert");
        assert_eq!(info.organizations, [ADMIN_ROLE]);
        assert!(info.ext_key_usage_is_exactly_client_auth());
        assert_eq!(info.not_after, now() + CLIENT_CERT_TTL);
        pki::verify_signed_by(&crt, os.cert_pem.as_bytes()).expect("signed by the OS CA");
        let key = String::from_utf8(context.key_pem().expect("key")).expect("utf8");
        pki::load_key_pair(&key).expect("client key loads");
        assert!(!format!("{out:?}").contains(bundle.certs.os.key.expose()));
    }

    #[test]
    fn options_are_checked() {
        let bundle = bundle();
        type Case = (&'static str, fn(&mut GenOptions));
        let cases: [Case; 5] = [
            ("cluster name", |opts| opts.cluster_name.clear()),
            ("endpoint", |opts| opts.endpoint = "10.5.0.2".to_owned()),
            ("endpoint", |opts| {
                opts.endpoint = "http://10.5.0.2:6443".to_owned()
            }),
            ("kubernetes version", |opts| {
                opts.kubernetes_version = "v".to_owned()
            }),
            ("install disk", |opts| opts.install_disk = "sda".to_owned()),
        ];
        for (option, edit) in cases {
            let mut opts = options();
            edit(&mut opts);
            let err = generate(&bundle, &opts, now()).expect_err(option);
            assert!(
                matches!(&err, GenError::InvalidOption { option: got, .. } if *got == option),
                "{option}: {err}"
            );
        }
        let mut opts = options();
        opts.endpoint = "10.5.0.2".to_owned();
        let err = generate(&bundle, &opts, now()).expect_err("no scheme");
        assert!(err.to_string().contains("https://10.5.0.2:6443"), "{err}");

        let mut opts = options();
        opts.kubernetes_version = "v1.33.0".to_owned();
        let out = generate(&bundle, &opts, now()).expect("v prefix");
        assert!(out.controlplane_yaml.contains("kubelet:v1.33.0"));
        assert!(!out.controlplane_yaml.contains("vv1.33.0"));
    }

    #[test]
    fn patch_merges_and_deletes() {
        let bundle = bundle();
        let out = generated(&bundle);
        let patch = "machine:
  install:
    disk: /dev/vda
  network:
    hostname: cp-1
cluster:
  apiServer:
    auditPolicy: null
";
        let patched = apply_patch(&out.controlplane_yaml, patch).expect("patch");
        let cfg = config::parse(patched.as_bytes()).expect("parses");
        assert_eq!(cfg.install_disk(), Some("/dev/vda"));
        assert_eq!(cfg.hostname(), Some("cp-1"));
        // Untouched siblings stay.
        assert_eq!(cfg.install_image(), Some(DEFAULT_INSTALL_IMAGE));
        let api_server = cfg
            .v1alpha1()
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.api_server.as_ref())
            .expect("apiServer");
        assert!(api_server.get("auditPolicy").is_none());
        assert!(api_server.get("admissionControl").is_some());

        // JSON works too, and lists replace.
        let json = r#"{"machine": {"certSANs": ["1.2.3.4"]}}"#;
        let patched = apply_patch(&out.controlplane_yaml, json).expect("json patch");
        let cfg = config::parse(patched.as_bytes()).expect("parses");
        assert_eq!(cfg.cert_sans(), ["1.2.3.4"]);
    }

    #[test]
    fn patch_can_add_documents() {
        let bundle = bundle();
        let out = generated(&bundle);
        let patch = "apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: worker-7\n";
        let patched = apply_patch(&out.worker_yaml, patch).expect("patch");
        let cfg = config::parse(patched.as_bytes()).expect("parses");
        let kinds: Vec<&str> = cfg.extra_documents().iter().map(|doc| doc.kind()).collect();
        assert_eq!(kinds, ["HostnameConfig"]);

        // Patching it again merges into the same document.
        let again = apply_patch(
            &patched,
            "apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: worker-8\n",
        )
        .expect("second patch");
        let cfg = config::parse(again.as_bytes()).expect("parses");
        assert_eq!(cfg.extra_documents().len(), 1);
        assert_eq!(
            cfg.extra_documents()[0]
                .value()
                .get("hostname")
                .and_then(Value::as_str),
            Some("worker-8")
        );
    }

    #[test]
    fn bad_patches_are_rejected() {
        let bundle = bundle();
        let out = generated(&bundle);

        let err =
            apply_patch(&out.worker_yaml, "machine:\n  type: bogus\n").expect_err("invalid result");
        assert!(matches!(err, GenError::PatchedInvalid(_)), "{err}");
        assert!(err.to_string().contains("machine.type"), "{err}");

        // A JSON patch (RFC 6902), as upstream's guides write them; the
        // keys stay in their order.
        let patched = apply_patch(
            &out.worker_yaml,
            r#"[{"op": "replace", "path": "/machine/install/disk", "value": "/dev/vdb"},
                {"op": "add", "path": "/machine/network/hostname", "value": "w1"}]"#,
        )
        .expect("json6902");
        let parsed = crate::config::parse(patched.as_bytes()).expect("valid");
        assert_eq!(parsed.install_disk(), Some("/dev/vdb"));
        assert_eq!(parsed.hostname(), Some("w1"));
        let top: Vec<&str> = patched
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
            .collect();
        assert_eq!(
            top,
            [
                "version: v1alpha1",
                "debug: false",
                "persist: true",
                "machine:",
                "cluster:"
            ]
        );
        let err = apply_patch(
            &out.worker_yaml,
            r#"[{"op": "remove", "path": "/machine/nothing"}]"#,
        )
        .expect_err("nothing there");
        assert_eq!(
            err.to_string(),
            "config patch: patch document 1: JSON patch operation 1 (remove /machine/nothing): /machine/nothing does not exist"
        );
        // Upstream's refusal for a config of several documents.
        let multi = format!(
            "{}---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: h\n",
            out.worker_yaml
        );
        let err = apply_patch(
            &multi,
            r#"[{"op": "add", "path": "/debug", "value": true}]"#,
        )
        .expect_err("multi-document");
        assert!(
            err.to_string().contains(
                "JSON6902 patches are not supported for multi-document machine configuration"
            ),
            "{err}"
        );

        let err = apply_patch(&out.worker_yaml, "").expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");

        let err = apply_patch(&out.worker_yaml, "machine: [").expect_err("syntax");
        assert!(matches!(err, GenError::Patch(_)), "{err}");
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let cases = [
            ("{a: b}", "{a: c}", "{a: c}"),
            ("{a: b}", "{b: c}", "{a: b, b: c}"),
            ("{a: b}", "{a: null}", "{}"),
            ("{a: b, b: c}", "{a: null}", "{b: c}"),
            ("{a: [b]}", "{a: c}", "{a: c}"),
            ("{a: c}", "{a: [b]}", "{a: [b]}"),
            ("{a: {b: c}}", "{a: {b: d, c: null}}", "{a: {b: d}}"),
            ("{a: [{b: c}]}", "{a: [1]}", "{a: [1]}"),
            ("[a, b]", "[c, d]", "[c, d]"),
            ("{a: b}", "[c]", "[c]"),
            ("{e: null}", "{a: 1}", "{e: null, a: 1}"),
            ("[1, 2]", "{a: b, c: null}", "{a: b}"),
            ("{}", "{a: {bb: {ccc: null}}}", "{a: {bb: {}}}"),
        ];
        for (target, patch, expected) in cases {
            let mut target: Value = serde_yaml_ng::from_str(target).expect("target");
            let patch: Value = serde_yaml_ng::from_str(patch).expect("patch");
            let expected: Value = serde_yaml_ng::from_str(expected).expect("expected");
            merge_patch(&mut target, patch);
            assert_eq!(target, expected);
        }
    }
}
