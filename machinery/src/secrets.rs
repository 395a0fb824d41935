//! The cluster secrets bundle (`talosctl gen secrets`, `secrets.yaml`).
//!
//! Every secret a cluster's machine configs share: the discovery identity,
//! the Kubernetes bootstrap token and encryption-at-rest key, the trustd
//! token, and five CAs. Keeping the bundle lets configs be regenerated for the
//! same cluster (`gen config --with-secrets`).
//!
//! The YAML layout is upstream's, so bundles move between the two
//! implementations:
//!
//! ```yaml
//! cluster: {id: ..., secret: ...}
//! secrets: {bootstraptoken: ..., secretboxencryptionsecret: ...}
//! trustdinfo: {token: ...}
//! certs:
//!   etcd: {crt: <base64 PEM>, key: <base64 PEM>}
//!   k8s: {crt: ..., key: ...}
//!   k8saggregator: {crt: ..., key: ...}
//!   k8sserviceaccount: {key: ...}
//!   os: {crt: ..., key: ...}
//! ```
//!
//! Generated as upstream does: the OS CA is Ed25519 with `O=talos`; the
//! etcd (`O=etcd`), Kubernetes (`O=kubernetes`) and aggregator
//! (`CN=front-proxy`) CAs and the service account key are ECDSA P-256; CAs
//! are valid 10 years; the cluster ID is 32 random bytes in URL-safe base64,
//! the cluster secret and secretbox key 32 random bytes in standard base64.
//!
//! Generation is CPU-bound (key generation): async callers should use
//! `spawn_blocking`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::base64;
use crate::config::v1alpha1::Secret;
use crate::pki::{self, CA_VALIDITY, CertificateAndKey, KeyAlgorithm, PkiError};

/// Size of the random cluster ID and secret, in bytes (upstream 32).
pub const CLUSTER_SECRET_SIZE: usize = 32;

/// Size of the secretbox encryption key, in bytes.
pub const ENCRYPTION_SECRET_SIZE: usize = 32;

/// Why a secrets bundle could not be generated, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The text is not a secrets bundle (YAML syntax, unknown or missing keys, wrong types).
    #[error("secrets bundle: {0}")]
    Syntax(String),
    /// A field holds something unusable.
    #[error("secrets bundle: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `certs.os.crt`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating keys, certificates or random values failed.
    #[error("secrets bundle: {0}")]
    Generate(#[from] PkiError),
    /// Writing YAML failed.
    #[error("secrets bundle: writing YAML: {0}")]
    Serialize(String),
}

impl SecretsError {
    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The whole bundle, field for field as upstream writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsBundle {
    /// Discovery identity.
    pub cluster: ClusterSecrets,
    /// Kubernetes secrets.
    pub secrets: KubernetesSecrets,
    /// trustd credentials.
    pub trustdinfo: TrustdInfo,
    /// The CAs and the service account key.
    pub certs: Certs,
}

/// `cluster`: the identity nodes use to find each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecrets {
    /// Cluster ID (URL-safe base64 of 32 random bytes).
    pub id: String,
    /// Shared discovery secret (base64 of 32 random bytes).
    pub secret: Secret,
}

/// `secrets`: Kubernetes bootstrap and encryption-at-rest secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSecrets {
    /// Kubernetes bootstrap token (`abcdef.0123456789abcdef`).
    pub bootstraptoken: Secret,
    /// AES-CBC encryption key (pre-v1.3 bundles); exclusive with secretbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbcencryptionsecret: Option<Secret>,
    /// Secretbox encryption key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretboxencryptionsecret: Option<Secret>,
}

/// `trustdinfo`: what nodes present to trustd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustdInfo {
    /// The trustd token (`machine.token`).
    pub token: Secret,
}

/// `certs`: the CAs (base64 of PEM, as in the machine config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certs {
    /// etcd CA.
    pub etcd: EncodedCertificateAndKey,
    /// Kubernetes CA.
    pub k8s: EncodedCertificateAndKey,
    /// Kubernetes front-proxy (aggregator) CA.
    pub k8saggregator: EncodedCertificateAndKey,
    /// Kubernetes service account signing key.
    pub k8sserviceaccount: EncodedKey,
    /// Talos API (OS) CA.
    pub os: EncodedCertificateAndKey,
}

/// A certificate and key, each base64 of PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodedCertificateAndKey {
    /// Certificate, base64 of PEM.
    pub crt: String,
    /// Private key, base64 of PEM.
    pub key: Secret,
}

impl EncodedCertificateAndKey {
    /// Encodes PEM certificate and key.
    #[must_use]
    pub fn encode(pem: &CertificateAndKey) -> Self {
        Self {
            crt: base64::encode(&pem.cert_pem),
            key: Secret::new(base64::encode(&pem.key_pem)),
        }
    }

    /// Decodes into PEM; `field` names this entry in errors (`certs.os`).
    pub fn decode(&self, field: &str) -> Result<CertificateAndKey, SecretsError> {
        Ok(CertificateAndKey {
            cert_pem: decode_pem(&format!("{field}.crt"), &self.crt)?,
            key_pem: decode_pem(&format!("{field}.key"), self.key.expose())?,
        })
    }
}

/// A private key alone, base64 of PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodedKey {
    /// Private key, base64 of PEM.
    pub key: Secret,
}

/// Decodes a base64 PEM field into PEM text.
fn decode_pem(field: &str, text: &str) -> Result<String, SecretsError> {
    if text.is_empty() {
        return Err(SecretsError::invalid(field, "is empty"));
    }
    let bytes = base64::decode(text)
        .map_err(|err| SecretsError::invalid(field, format!("is not valid base64: {err}")))?;
    let pem = String::from_utf8(bytes)
        .map_err(|_| SecretsError::invalid(field, "does not decode to PEM text"))?;
    if !pem.contains("-----BEGIN ") {
        return Err(SecretsError::invalid(
            field,
            "does not hold a PEM block (-----BEGIN ...)",
        ));
    }
    Ok(pem)
}

impl SecretsBundle {
    /// Generates a fresh bundle; CAs are valid from `now` for ten years.
    pub fn generate(now: SystemTime) -> Result<Self, SecretsError> {
        let os = pki::generate_os_ca(now)?;
        let etcd = pki::generate_ca(
            KeyAlgorithm::EcdsaP256,
            Some("etcd"),
            None,
            now,
            CA_VALIDITY,
        )?;
        let k8s = pki::generate_ca(
            KeyAlgorithm::EcdsaP256,
            Some("kubernetes"),
            None,
            now,
            CA_VALIDITY,
        )?;
        let aggregator = pki::generate_ca(
            KeyAlgorithm::EcdsaP256,
            None,
            Some("front-proxy"),
            now,
            CA_VALIDITY,
        )?;
        let service_account = pki::generate_private_key_pem(KeyAlgorithm::EcdsaP256)?;

        // Upstream encodes the cluster ID with the URL-safe alphabet (padded).
        let cluster_id = base64::encode(pki::random_bytes(CLUSTER_SECRET_SIZE)?)
            .replace('+', "-")
            .replace('/', "_");

        Ok(Self {
            cluster: ClusterSecrets {
                id: cluster_id,
                secret: Secret::new(pki::random_secret(CLUSTER_SECRET_SIZE)?),
            },
            secrets: KubernetesSecrets {
                bootstraptoken: Secret::new(pki::generate_token()?),
                aescbcencryptionsecret: None,
                secretboxencryptionsecret: Some(Secret::new(pki::random_secret(
                    ENCRYPTION_SECRET_SIZE,
                )?)),
            },
            trustdinfo: TrustdInfo {
                token: Secret::new(pki::generate_token()?),
            },
            certs: Certs {
                etcd: EncodedCertificateAndKey::encode(&etcd),
                k8s: EncodedCertificateAndKey::encode(&k8s),
                k8saggregator: EncodedCertificateAndKey::encode(&aggregator),
                k8sserviceaccount: EncodedKey {
                    key: Secret::new(base64::encode(service_account.as_bytes())),
                },
                os: EncodedCertificateAndKey::encode(&os),
            },
        })
    }

    /// The bundle a control plane's config was generated from (upstream's
    /// `gen secrets --from-controlplane-config`): what rebuilds a lost
    /// `secrets.yaml`. Checked as [`SecretsBundle::validate`] checks.
    ///
    /// # Errors
    /// The config is a worker's (its CAs carry no keys), or a value is
    /// missing or unusable, named by its bundle field.
    pub fn from_config(config: &crate::config::MachineConfig) -> Result<Self, SecretsError> {
        use crate::config::v1alpha1::CertificateAndKey as Pair;
        if !config.machine_type().is_control_plane() {
            return Err(SecretsError::invalid(
                "certs",
                "the config is not a control plane's: a worker's CAs carry no keys",
            ));
        }
        let doc = config.v1alpha1();
        let machine = doc.machine.as_ref();
        let cluster = doc.cluster.as_ref();
        let secret =
            |value: Option<&Secret>| Secret::new(value.map(Secret::expose).unwrap_or_default());
        let pair = |value: Option<&Pair>| EncodedCertificateAndKey {
            crt: value.and_then(|p| p.crt.clone()).unwrap_or_default(),
            key: secret(value.and_then(|p| p.key.as_ref())),
        };
        let present = |value: Option<&Secret>| {
            value
                .filter(|v| !v.expose().is_empty())
                .map(|v| Secret::new(v.expose()))
        };
        let bundle = Self {
            cluster: ClusterSecrets {
                id: cluster.and_then(|c| c.id.clone()).unwrap_or_default(),
                secret: secret(cluster.and_then(|c| c.secret.as_ref())),
            },
            secrets: KubernetesSecrets {
                bootstraptoken: secret(cluster.and_then(|c| c.token.as_ref())),
                aescbcencryptionsecret: present(
                    cluster.and_then(|c| c.aescbc_encryption_secret.as_ref()),
                ),
                secretboxencryptionsecret: present(
                    cluster.and_then(|c| c.secretbox_encryption_secret.as_ref()),
                ),
            },
            trustdinfo: TrustdInfo {
                token: secret(machine.and_then(|m| m.token.as_ref())),
            },
            certs: Certs {
                etcd: pair(
                    cluster
                        .and_then(|c| c.etcd.as_ref())
                        .and_then(|e| e.ca.as_ref()),
                ),
                k8s: pair(cluster.and_then(|c| c.ca.as_ref())),
                k8saggregator: pair(cluster.and_then(|c| c.aggregator_ca.as_ref())),
                k8sserviceaccount: EncodedKey {
                    key: secret(
                        cluster
                            .and_then(|c| c.service_account.as_ref())
                            .and_then(|k| k.key.as_ref()),
                    ),
                },
                os: pair(machine.and_then(|m| m.ca.as_ref())),
            },
        };
        bundle.validate()?;
        Ok(bundle)
    }

    /// Reads a bundle and checks it (see [`SecretsBundle::validate`]).
    pub fn from_yaml(text: &str) -> Result<Self, SecretsError> {
        if text.trim().is_empty() {
            return Err(SecretsError::Syntax("the file is empty".to_owned()));
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let bundle: Self = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let message = err.inner().to_string();
            if path == "." || path.is_empty() {
                SecretsError::Syntax(message)
            } else {
                SecretsError::Syntax(format!("{path}: {message}"))
            }
        })?;
        bundle.validate()?;
        Ok(bundle)
    }

    /// Writes the bundle as YAML.
    pub fn to_yaml(&self) -> Result<String, SecretsError> {
        serde_yaml_ng::to_string(self).map_err(|err| SecretsError::Serialize(err.to_string()))
    }

    /// Checks what upstream checks: every value present, exactly one
    /// encryption secret, certificates and keys decodable PEM.
    pub fn validate(&self) -> Result<(), SecretsError> {
        if self.cluster.id.is_empty() {
            return Err(SecretsError::invalid("cluster.id", "is required"));
        }
        if self.cluster.secret.is_empty() {
            return Err(SecretsError::invalid("cluster.secret", "is required"));
        }
        if self.secrets.bootstraptoken.is_empty() {
            return Err(SecretsError::invalid(
                "secrets.bootstraptoken",
                "is required",
            ));
        }
        let present =
            |secret: &Option<Secret>| secret.as_ref().is_some_and(|secret| !secret.is_empty());
        match (
            present(&self.secrets.secretboxencryptionsecret),
            present(&self.secrets.aescbcencryptionsecret),
        ) {
            (false, false) => {
                return Err(SecretsError::invalid(
                    "secrets",
                    "one of secretboxencryptionsecret and aescbcencryptionsecret is required",
                ));
            }
            (true, true) => {
                return Err(SecretsError::invalid(
                    "secrets",
                    "only one of secretboxencryptionsecret and aescbcencryptionsecret is allowed",
                ));
            }
            _ => {}
        }
        if self.trustdinfo.token.is_empty() {
            return Err(SecretsError::invalid("trustdinfo.token", "is required"));
        }

        for (field, pair) in [
            ("certs.etcd", &self.certs.etcd),
            ("certs.k8s", &self.certs.k8s),
            ("certs.k8saggregator", &self.certs.k8saggregator),
            ("certs.os", &self.certs.os),
        ] {
            let pem = pair.decode(field)?;
            pki::cert_info(pem.cert_pem.as_bytes())
                .map_err(|err| SecretsError::invalid(&format!("{field}.crt"), err.reason()))?;
        }
        decode_pem(
            "certs.k8sserviceaccount.key",
            self.certs.k8sserviceaccount.key.expose(),
        )?;
        // The OS CA key is the one this implementation signs with: it must load.
        let os = self.os_ca()?;
        pki::load_key_pair(&os.key_pem)
            .map_err(|err| SecretsError::invalid("certs.os.key", err.reason()))?;
        Ok(())
    }

    /// The Talos API (OS) CA, PEM.
    pub fn os_ca(&self) -> Result<CertificateAndKey, SecretsError> {
        self.certs.os.decode("certs.os")
    }

    /// The secretbox key, else the AES-CBC key, with which kind it is.
    #[must_use]
    pub fn encryption_secret(&self) -> Option<(EncryptionKind, &Secret)> {
        let secretbox = self
            .secrets
            .secretboxencryptionsecret
            .as_ref()
            .filter(|secret| !secret.is_empty());
        if let Some(secret) = secretbox {
            return Some((EncryptionKind::Secretbox, secret));
        }
        self.secrets
            .aescbcencryptionsecret
            .as_ref()
            .filter(|secret| !secret.is_empty())
            .map(|secret| (EncryptionKind::AesCbc, secret))
    }
}

/// Which encryption-at-rest provider a bundle's key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionKind {
    /// `cluster.secretboxEncryptionSecret`.
    Secretbox,
    /// `cluster.aescbcEncryptionSecret`.
    AesCbc,
}

#[cfg(test)]
mod tests {

    /// A lost secrets.yaml comes back from a control plane's config: the
    /// same bundle, field for field. A worker's config has no CA keys.
    #[test]
    fn the_bundle_comes_back_from_a_control_planes_config() {
        let bundle = SecretsBundle::generate(SystemTime::now()).expect("bundle");
        let options = crate::generate::GenOptions::new("demo", "https://10.5.0.2:6443");
        let generated =
            crate::generate::generate(&bundle, &options, SystemTime::now()).expect("configs");
        let controlplane =
            crate::config::parse(generated.controlplane_yaml.as_bytes()).expect("controlplane");
        assert_eq!(
            SecretsBundle::from_config(&controlplane).expect("rebuilt"),
            bundle
        );
        let worker = crate::config::parse(generated.worker_yaml.as_bytes()).expect("worker");
        let err = SecretsBundle::from_config(&worker).expect_err("a worker's");
        assert!(err.to_string().contains("not a control plane's"), "{err}");
    }
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::pki::PublicKeyAlgorithm;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn bundle() -> SecretsBundle {
        SecretsBundle::generate(now()).expect("generate bundle")
    }

    fn is_token(text: &str) -> bool {
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

    #[test]
    fn generated_bundle_has_upstream_shape() {
        let bundle = bundle();
        bundle.validate().expect("valid");
        assert!(is_token(bundle.trustdinfo.token.expose()));
        assert!(is_token(bundle.secrets.bootstraptoken.expose()));
        assert_eq!(bundle.cluster.id.len(), 44);
        assert!(!bundle.cluster.id.contains(['+', '/']));
        assert_eq!(
            base64::decode(bundle.cluster.secret.expose())
                .expect("b64")
                .len(),
            32
        );
        let (kind, key) = bundle.encryption_secret().expect("encryption secret");
        assert_eq!(kind, EncryptionKind::Secretbox);
        assert_eq!(base64::decode(key.expose()).expect("b64").len(), 32);

        let os = bundle.os_ca().expect("os ca");
        let info = pki::cert_info(os.cert_pem.as_bytes()).expect("os info");
        assert_eq!(info.organizations, ["talos"]);
        assert_eq!(info.public_key_algorithm, PublicKeyAlgorithm::Ed25519);
        assert!(info.is_ca);

        let expectations = [
            ("certs.etcd", &bundle.certs.etcd, Some("etcd"), None),
            ("certs.k8s", &bundle.certs.k8s, Some("kubernetes"), None),
            (
                "certs.k8saggregator",
                &bundle.certs.k8saggregator,
                None,
                Some("front-proxy"),
            ),
        ];
        for (field, pair, organization, common_name) in expectations {
            let pem = pair.decode(field).expect("decode");
            let info = pki::cert_info(pem.cert_pem.as_bytes()).expect("info");
            assert_eq!(
                info.public_key_algorithm,
                PublicKeyAlgorithm::Ecdsa,
                "{field}"
            );
            assert!(info.is_ca, "{field}");
            assert_eq!(
                info.organizations.first().map(String::as_str),
                organization,
                "{field}"
            );
            assert_eq!(info.common_name.as_deref(), common_name, "{field}");
            assert_eq!(info.not_after, now() + CA_VALIDITY, "{field}");
            assert!(
                pem.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"),
                "{field}"
            );
        }
        let sa = decode_pem(
            "certs.k8sserviceaccount.key",
            bundle.certs.k8sserviceaccount.key.expose(),
        )
        .expect("sa key");
        assert!(sa.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        pki::load_key_pair(&sa).expect("sa key loads");
    }

    #[test]
    fn yaml_round_trips_with_upstream_keys() {
        let bundle = bundle();
        let yaml = bundle.to_yaml().expect("yaml");
        for key in [
            "cluster:",
            "id:",
            "secret:",
            "secrets:",
            "bootstraptoken:",
            "secretboxencryptionsecret:",
            "trustdinfo:",
            "token:",
            "certs:",
            "etcd:",
            "k8s:",
            "k8saggregator:",
            "k8sserviceaccount:",
            "os:",
            "crt:",
            "key:",
        ] {
            assert!(yaml.contains(key), "missing {key} in\n{yaml}");
        }
        assert!(!yaml.contains("aescbcencryptionsecret"));
        let back = SecretsBundle::from_yaml(&yaml).expect("reads back");
        assert_eq!(back, bundle);
    }

    /// A bundle written the way upstream indents it (4 spaces).
    fn upstream_style(bundle: &SecretsBundle) -> String {
        format!(
            "cluster:\n    id: {}\n    secret: {}\nsecrets:\n    bootstraptoken: {}\n    secretboxencryptionsecret: {}\ntrustdinfo:\n    token: {}\ncerts:\n    etcd:\n        crt: {}\n        key: {}\n    k8s:\n        crt: {}\n        key: {}\n    k8saggregator:\n        crt: {}\n        key: {}\n    k8sserviceaccount:\n        key: {}\n    os:\n        crt: {}\n        key: {}\n",
            bundle.cluster.id,
            bundle.cluster.secret.expose(),
            bundle.secrets.bootstraptoken.expose(),
            bundle
                .secrets
                .secretboxencryptionsecret
                .as_ref()
                .map(Secret::expose)
                .unwrap_or_default(),
            bundle.trustdinfo.token.expose(),
            bundle.certs.etcd.crt,
            bundle.certs.etcd.key.expose(),
            bundle.certs.k8s.crt,
            bundle.certs.k8s.key.expose(),
            bundle.certs.k8saggregator.crt,
            bundle.certs.k8saggregator.key.expose(),
            bundle.certs.k8sserviceaccount.key.expose(),
            bundle.certs.os.crt,
            bundle.certs.os.key.expose(),
        )
    }

    #[test]
    fn upstream_layout_loads() {
        let bundle = bundle();
        let text = upstream_style(&bundle);
        assert_eq!(SecretsBundle::from_yaml(&text).expect("loads"), bundle);
    }

    #[test]
    fn errors_name_the_problem() {
        let bundle = bundle();
        let text = upstream_style(&bundle);

        let unknown = text.replace("trustdinfo:\n    token:", "trustdinfo:\n    tokenz:");
        let err = SecretsBundle::from_yaml(&unknown).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("trustdinfo"), "{message}");
        assert!(message.contains("tokenz"), "{message}");

        let missing = text.replace("    bootstraptoken: ", "    # bootstraptoken: ");
        let err = SecretsBundle::from_yaml(&missing).expect_err("missing key");
        assert!(err.to_string().contains("bootstraptoken"), "{err}");

        let broken = text.replace(&bundle.certs.os.crt, "not-base64!");
        let err = SecretsBundle::from_yaml(&broken).expect_err("bad base64");
        assert!(err.to_string().contains("certs.os.crt"), "{err}");
        assert!(err.to_string().contains("base64"), "{err}");

        let both = text.replace(
            "    secretboxencryptionsecret:",
            "    aescbcencryptionsecret: QUJD\n    secretboxencryptionsecret:",
        );
        let err = SecretsBundle::from_yaml(&both).expect_err("two encryption secrets");
        assert!(err.to_string().contains("only one of"), "{err}");

        let err = SecretsBundle::from_yaml("").expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");

        let err = SecretsBundle::from_yaml("cluster: [").expect_err("syntax");
        assert!(matches!(err, SecretsError::Syntax(_)), "{err}");
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let bundle = bundle();
        let shown = format!("{bundle:?}");
        assert!(!shown.contains(bundle.trustdinfo.token.expose()));
        assert!(!shown.contains(bundle.certs.os.key.expose()));
    }
}
