//! Keys, certificates and tokens of the Talos API PKI.
//!
//! # Background
//!
//! Every node trusts one OS certificate authority (`machine.ca`). Clients
//! (talosctl) present a certificate it signed whose Subject Organization
//! values are their roles (`os:admin`, `os:reader`, ...), with extended key
//! usage exactly `ClientAuth`. Nodes serve a short-lived certificate (24 h,
//! renewed at half life) with extended key usage `ServerAuth`; control plane
//! nodes sign their own, workers ask trustd, which signs their certificate
//! request after dropping any Organization from it (CVE-2022-36103: a CSR
//! must not choose its own roles).
//!
//! Upstream defaults carried over: Ed25519 keys, CA subject `O=talos`, CA
//! lifetime 10 years (87600 h), client certificates 1 year (8760 h), server
//! certificates 24 h, random 128-bit serial numbers. The Kubernetes and etcd
//! CAs of a secrets bundle use ECDSA P-256, as upstream.
//!
//! # Key encoding
//!
//! Keys are written the way upstream writes them, so files move freely
//! between the two implementations: Ed25519 keys as PKCS#8 under the label
//! `ED25519 PRIVATE KEY`, ECDSA keys as SEC1 under `EC PRIVATE KEY`.
//! [`load_key_pair`] reads those and plain PKCS#8 (`PRIVATE KEY`). Note that
//! rustls' PEM reader does not know the `ED25519 PRIVATE KEY` label: pass
//! keys through [`to_pkcs8_pem`] before handing them to rustls.
//!
//! # Design
//!
//! Certificates are built with rcgen and then finished here: rcgen's
//! distinguished names hold one value per attribute type, but a client
//! certificate needs one Organization per role, and an issued certificate's
//! issuer name should be the CA's subject byte for byte (whatever encoding
//! the CA used). So the issuer (and, for client certificates, the subject)
//! is replaced in the to-be-signed part, which is then signed again with the
//! CA key. Parsing and inspection use x509-parser ([`cert_info`]).
//!
//! Key generation and signing are CPU-bound (microseconds for Ed25519, still
//! blocking): async callers should run them under `spawn_blocking`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PublicKeyData, SanType,
    SerialNumber, SigningKey,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::base64;

/// Lifetime of generated CAs (upstream `CAValidityTime`, 87600 h).
pub const CA_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);

/// Default lifetime of client certificates (upstream
/// `TalosAPIDefaultCertificateValidityDuration`, 8760 h).
pub const CLIENT_CERT_TTL: Duration = Duration::from_secs(8_760 * 3600);

/// Lifetime of node server certificates (24 h; renewed at half life, see [`renew_at`]).
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far before its issuer's "now" a certificate starts. A node's clock
/// may run a little ahead of its clients' (a guest reads its RTC to the
/// second), and a certificate issued a moment ago must not read as "not
/// valid yet" on the machine that checks it. The end stays "now" plus
/// the lifetime asked for.
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(5 * 60);

/// Subject Organization of the OS CA.
pub const OS_CA_ORGANIZATION: &str = "talos";

/// PEM label of upstream's Ed25519 private keys (PKCS#8 inside).
pub const ED25519_KEY_LABEL: &str = "ED25519 PRIVATE KEY";

/// PEM label of SEC1 ECDSA private keys.
pub const EC_KEY_LABEL: &str = "EC PRIVATE KEY";

/// PEM label of PKCS#8 private keys.
pub const PKCS8_KEY_LABEL: &str = "PRIVATE KEY";

/// The characters of trustd and bootstrap tokens.
const TOKEN_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

// === errors ===

/// A PKI operation failed; says which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {reason}")]
pub struct PkiError {
    operation: String,
    reason: String,
}

impl PkiError {
    fn new(operation: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            reason: reason.into(),
        }
    }

    /// What was being done, e.g. "issuing client certificate for roles [os:admin]".
    #[must_use]
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// Why it failed.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

// === types ===

/// A PEM certificate and its PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateAndKey {
    /// The certificate, PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PEM (see the module docs for the labels).
    pub key_pem: String,
}

impl fmt::Debug for CertificateAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The key types this module generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// Ed25519 (the Talos API PKI).
    Ed25519,
    /// ECDSA on P-256 with SHA-256 (Kubernetes and etcd CAs, service account key).
    EcdsaP256,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::Ed25519 => &PKCS_ED25519,
            Self::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// The public key type of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublicKeyAlgorithm {
    /// Ed25519.
    Ed25519,
    /// ECDSA (any curve).
    Ecdsa,
    /// RSA.
    Rsa,
    /// Something else, by OID.
    Other(String),
}

/// One extended key usage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtKeyUsage {
    /// anyExtendedKeyUsage.
    Any,
    /// TLS server.
    ServerAuth,
    /// TLS client.
    ClientAuth,
    /// Code signing.
    CodeSigning,
    /// E-mail protection.
    EmailProtection,
    /// Time stamping.
    TimeStamping,
    /// OCSP signing.
    OcspSigning,
    /// Something else, by OID.
    Other(String),
}

/// What a certificate says, as far as Talos cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject Organization values, in order (the roles of a client certificate).
    pub organizations: Vec<String>,
    /// Subject Common Name, if any.
    pub common_name: Option<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// Extended key usages (known ones in the order of [`ExtKeyUsage`], then
    /// other OIDs; empty when the extension is absent).
    pub ext_key_usages: Vec<ExtKeyUsage>,
    /// Key usage includes digitalSignature.
    pub digital_signature: bool,
    /// Key usage includes keyCertSign.
    pub key_cert_sign: bool,
    /// IP address SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// DNS name SANs.
    pub dns_names: Vec<String>,
    /// The subject public key type.
    pub public_key_algorithm: PublicKeyAlgorithm,
    /// Serial number, hex with colons.
    pub serial: String,
}

impl CertInfo {
    /// Extended key usage includes ClientAuth.
    #[must_use]
    pub fn client_auth(&self) -> bool {
        self.ext_key_usages.contains(&ExtKeyUsage::ClientAuth)
    }

    /// Extended key usage includes ServerAuth.
    #[must_use]
    pub fn server_auth(&self) -> bool {
        self.ext_key_usages.contains(&ExtKeyUsage::ServerAuth)
    }

    /// Extended key usage is exactly `[ClientAuth]` (what apid demands of client certificates).
    #[must_use]
    pub fn ext_key_usage_is_exactly_client_auth(&self) -> bool {
        self.ext_key_usages == [ExtKeyUsage::ClientAuth]
    }

    /// Whether `at` lies within the validity period.
    #[must_use]
    pub fn is_valid_at(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

// === CAs ===

/// Generates the Talos OS CA: Ed25519, self-signed, `O=talos`, valid
/// [`CA_VALIDITY`] from `now`.
pub fn generate_os_ca(now: SystemTime) -> Result<CertificateAndKey, PkiError> {
    generate_ca(
        KeyAlgorithm::Ed25519,
        Some(OS_CA_ORGANIZATION),
        None,
        now,
        CA_VALIDITY,
    )
    .map_err(|err| PkiError::new("generating the Talos OS CA", err.reason))
}

/// Generates a self-signed CA as upstream does: basic constraints CA,
/// key usage digitalSignature and keyCertSign, extended key usage ServerAuth
/// and ClientAuth, subject made of the given Organization and Common Name.
pub fn generate_ca(
    algorithm: KeyAlgorithm,
    organization: Option<&str>,
    common_name: Option<&str>,
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateAndKey, PkiError> {
    let operation = format!(
        "generating {algorithm:?} CA (O={}, CN={})",
        organization.unwrap_or_default(),
        common_name.unwrap_or_default()
    );
    build_ca(algorithm, organization, common_name, &[], now, validity)
        .map_err(|reason| PkiError::new(operation, reason))
}

/// A self-signed Ed25519 key pair as `talosctl gen keypair` makes it: a CA
/// like [`generate_ca`], with the addresses `ips` as SANs.
pub fn generate_keypair(
    organization: &str,
    ips: &[IpAddr],
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateAndKey, PkiError> {
    build_ca(
        KeyAlgorithm::Ed25519,
        Some(organization),
        None,
        ips,
        now,
        validity,
    )
    .map_err(|reason| PkiError::new(format!("generating key pair (O={organization})"), reason))
}

fn build_ca(
    algorithm: KeyAlgorithm,
    organization: Option<&str>,
    common_name: Option<&str>,
    ips: &[IpAddr],
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateAndKey, String> {
    let key =
        KeyPair::generate_for(algorithm.rcgen()).map_err(|err| format!("generating key: {err}"))?;

    let mut params = CertificateParams::new(san_strings(ips, &[]))
        .map_err(|err| format!("invalid subject alternative name: {err}"))?;
    let mut subject = DistinguishedName::new();
    if let Some(organization) = organization {
        subject.push(DnType::OrganizationName, organization);
    }
    if let Some(common_name) = common_name {
        subject.push(DnType::CommonName, common_name);
    }
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, now, validity)?;
    params.serial_number = Some(random_serial()?);

    let cert = params
        .self_signed(&key)
        .map_err(|err| format!("signing: {err}"))?;
    let der: &[u8] = cert.der();
    Ok(CertificateAndKey {
        cert_pem: pem_encode("CERTIFICATE", der),
        key_pem: encode_private_key(&key)?,
    })
}

/// Generates a private key alone, PEM in upstream's encoding (the
/// Kubernetes service account key is an ECDSA P-256 `EC PRIVATE KEY`).
pub fn generate_private_key_pem(algorithm: KeyAlgorithm) -> Result<String, PkiError> {
    let operation = format!("generating {algorithm:?} private key");
    let key = KeyPair::generate_for(algorithm.rcgen())
        .map_err(|err| PkiError::new(operation.as_str(), err.to_string()))?;
    encode_private_key(&key).map_err(|reason| PkiError::new(operation, reason))
}

// === issuing ===

/// A CA ready to sign: its key and its subject, encoded as in its certificate.
struct LoadedCa {
    key: KeyPair,
    subject: Vec<u8>,
}

impl fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCa").finish_non_exhaustive()
    }
}

fn load_ca(ca: &CertificateAndKey) -> Result<LoadedCa, String> {
    let block = pem_decode(&ca.cert_pem).map_err(|err| format!("CA certificate: {err}"))?;
    if block.label != "CERTIFICATE" {
        return Err(format!(
            "CA certificate: expected a CERTIFICATE PEM block, found {:?}",
            block.label
        ));
    }
    let parts = CertParts::split(&block.der).map_err(|err| format!("CA certificate: {err}"))?;
    let key = load_key_pair(&ca.key_pem).map_err(|err| format!("CA key: {}", err.reason))?;
    if parts.public_key_bits()? != key.public_key_raw() {
        return Err("the CA key does not belong to the CA certificate".to_owned());
    }
    Ok(LoadedCa {
        key,
        subject: parts.subject().to_vec(),
    })
}

/// Issues a Talos API client certificate: Ed25519, one Subject Organization
/// per role (in the given order), no Common Name (as upstream), extended key
/// usage exactly ClientAuth, key usage digitalSignature, not a CA, valid
/// `ttl` from `now` (upstream default [`CLIENT_CERT_TTL`]).
pub fn issue_client_cert(
    ca: &CertificateAndKey,
    roles: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateAndKey, PkiError> {
    let operation = format!(
        "issuing client certificate for roles [{}]",
        roles.join(", ")
    );
    build_client_cert(ca, roles, ttl, now).map_err(|reason| PkiError::new(operation, reason))
}

fn build_client_cert(
    ca: &CertificateAndKey,
    roles: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateAndKey, String> {
    if let Some(index) = roles.iter().position(|role| role.trim().is_empty()) {
        return Err(format!("role #{} is empty", index + 1));
    }
    let ca = load_ca(ca)?;
    let key =
        KeyPair::generate_for(&PKCS_ED25519).map_err(|err| format!("generating key: {err}"))?;

    let mut params = leaf_params(Vec::new(), now, ttl)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

    let subject = encode_name(roles, None);
    let der = sign_leaf(&params, &key, &ca, Some(subject.as_slice()), None)?;
    Ok(CertificateAndKey {
        cert_pem: pem_encode("CERTIFICATE", &der),
        key_pem: encode_private_key(&key)?,
    })
}

/// Issues a node (apid/trustd) server certificate: Ed25519, Common Name
/// `common_name` (omitted when empty), SANs `ips` and `dns`, extended key
/// usage ServerAuth only, key usage digitalSignature, valid `ttl` from `now`
/// (upstream: [`SERVER_CERT_TTL`]).
pub fn issue_server_cert(
    ca: &CertificateAndKey,
    common_name: &str,
    ips: &[IpAddr],
    dns: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateAndKey, PkiError> {
    let operation = format!("issuing server certificate for {common_name:?}");
    build_server_cert(ca, common_name, ips, dns, ttl, now)
        .map_err(|reason| PkiError::new(operation, reason))
}

fn build_server_cert(
    ca: &CertificateAndKey,
    common_name: &str,
    ips: &[IpAddr],
    dns: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<CertificateAndKey, String> {
    let ca = load_ca(ca)?;
    let key =
        KeyPair::generate_for(&PKCS_ED25519).map_err(|err| format!("generating key: {err}"))?;

    let mut params = leaf_params(san_strings(ips, dns), now, ttl)?;
    if !common_name.is_empty() {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let der = sign_leaf(&params, &key, &ca, None, None)?;
    Ok(CertificateAndKey {
        cert_pem: pem_encode("CERTIFICATE", &der),
        key_pem: encode_private_key(&key)?,
    })
}

/// Signs a certificate signing request the way trustd does.
///
/// The request's signature is verified. Every Subject Organization is
/// dropped (CVE-2022-36103: roles live in O, and a node must not mint itself
/// a role-bearing certificate); the rest of the subject and the DNS and IP
/// SANs are kept (other kinds are dropped); whatever the request asks for, the result has key usage
/// digitalSignature, extended key usage ServerAuth only, and is not a CA.
/// Returns the certificate, PEM.
pub fn sign_csr(
    ca: &CertificateAndKey,
    csr_pem: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, PkiError> {
    build_from_csr(ca, csr_pem, ttl, now)
        .map_err(|reason| PkiError::new("signing certificate request", reason))
}

/// What a certificate request asks for, for trustd's log: its Common Name
/// and the Organization values (roles) it would like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrNames {
    /// Subject Common Name, if any.
    pub common_name: Option<String>,
    /// Subject Organization values, in order.
    pub organizations: Vec<String>,
}

/// Reads a certificate request and checks its signature, without signing
/// it: an error here is the request's fault.
pub fn csr_names(csr_pem: &str) -> Result<CsrNames, PkiError> {
    let parsed = parse_csr(csr_pem)
        .map_err(|reason| PkiError::new("reading certificate request", reason))?;
    Ok(CsrNames {
        common_name: parsed.common_name,
        organizations: parsed.organizations,
    })
}

/// A parsed certificate request: rcgen's view (signature checked, SANs),
/// the public key info verbatim, and the subject's Organization values and
/// Common Name (all of them, in order: rcgen keeps one value per type).
struct ParsedCsr {
    csr: CertificateSigningRequestParams,
    spki: Vec<u8>,
    organizations: Vec<String>,
    common_name: Option<String>,
}

fn parse_csr(csr_pem: &str) -> Result<ParsedCsr, String> {
    // rcgen checks the request's signature and reads its subject and SANs ...
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|err| format!("invalid request: {err}"))?;
    // ... and the public key info is copied from the request verbatim (rcgen
    // would re-encode it from the signature algorithm, which is not always the
    // key's: an ECDSA P-256 key may sign its request with SHA-512).
    let block = pem_decode(csr_pem).map_err(|err| format!("invalid request: {err}"))?;
    let (_, request) = X509CertificationRequest::from_der(&block.der)
        .map_err(|err| format!("invalid request: {err}"))?;
    let info = &request.certification_request_info;
    let spki = info.subject_pki.raw.to_vec();
    der::content_of(&spki, der::SEQUENCE)
        .map_err(|err| format!("invalid request public key: {err}"))?;
    let text = |v: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        v.as_str()
            .map(str::to_owned)
            .map_err(|err| format!("invalid request subject: {err}"))
    };
    let organizations = info
        .subject
        .iter_organization()
        .map(text)
        .collect::<Result<_, _>>()?;
    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .map(text)
        .transpose()?;
    Ok(ParsedCsr {
        csr,
        spki,
        organizations,
        common_name,
    })
}

fn build_from_csr(
    ca: &CertificateAndKey,
    csr_pem: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, String> {
    let ParsedCsr { csr, spki, .. } = parse_csr(csr_pem)?;
    let spki = spki.as_slice();
    let requested = csr.params;
    let mut params = leaf_params(Vec::new(), now, ttl)?;
    // DNS names and addresses only, as upstream's trustd copies: no URI,
    // email or other name a node's token could have signed.
    params.subject_alt_names = requested
        .subject_alt_names
        .into_iter()
        .filter(|san| matches!(san, SanType::DnsName(_) | SanType::IpAddress(_)))
        .collect();
    let mut subject = DistinguishedName::new();
    for (kind, value) in requested.distinguished_name.iter() {
        if *kind != DnType::OrganizationName {
            subject.push(kind.clone(), value.clone());
        }
    }
    params.distinguished_name = subject;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let ca = load_ca(ca)?;
    let der = sign_leaf(&params, &csr.public_key, &ca, None, Some(spki))?;
    let pem = pem_encode("CERTIFICATE", &der);

    // Defence in depth: the one property that matters here is checked on the result.
    let info = cert_info(pem.as_bytes()).map_err(|err| err.reason)?;
    if !info.organizations.is_empty() {
        return Err(
            "internal error: the signed certificate still carries an Organization".to_owned(),
        );
    }
    Ok(pem)
}

/// Signs a certificate signing request as `talosctl gen crt` does: an API
/// client certificate for whoever holds the CA key to hand out.
///
/// Unlike [`sign_csr`] (trustd, for nodes), the subject's Organization
/// values, which are the roles, and its Common Name are kept, all of them
/// and in order: the holder of the CA key decides the roles. The request's
/// SANs are kept; the result has key usage digitalSignature, extended key
/// usage exactly ClientAuth, and is not a CA, whatever the request asks.
pub fn sign_client_csr(
    ca: &CertificateAndKey,
    csr_pem: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, PkiError> {
    let build = || -> Result<String, String> {
        let ParsedCsr {
            csr,
            spki,
            organizations,
            common_name,
        } = parse_csr(csr_pem)?;
        let mut params = leaf_params(Vec::new(), now, ttl)?;
        params.subject_alt_names = csr.params.subject_alt_names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let subject = encode_name(&organizations, common_name.as_deref());
        let ca = load_ca(ca)?;
        let der = sign_leaf(&params, &csr.public_key, &ca, Some(&subject), Some(&spki))?;
        Ok(pem_encode("CERTIFICATE", &der))
    };
    build().map_err(|reason| PkiError::new("signing client certificate request", reason))
}

/// A certificate signing request for an existing key (`talosctl gen csr`):
/// one Subject Organization per role, in order, no Common Name, and the
/// addresses `ips` as SANs. The key is PEM: PKCS#8 Ed25519 or ECDSA, or
/// SEC1 ECDSA.
pub fn generate_csr_for_key(
    key_pem: &str,
    roles: &[String],
    ips: &[IpAddr],
) -> Result<String, PkiError> {
    let build = || -> Result<String, String> {
        let key = load_key_pair(key_pem).map_err(|err| err.reason)?;
        let mut params = CertificateParams::new(san_strings(ips, &[]))
            .map_err(|err| format!("invalid subject alternative name: {err}"))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|err| format!("signing request: {err}"))?;
        // rcgen keeps one value per name type: the subject, with every
        // role, is put in and the request signed again.
        let der = rewrite_csr_subject(csr.der(), &encode_name(roles, None), &key)?;
        Ok(pem_encode("CERTIFICATE REQUEST", &der))
    };
    build().map_err(|reason| {
        PkiError::new(
            format!(
                "generating certificate request for roles [{}]",
                roles.join(", ")
            ),
            reason,
        )
    })
}

/// Replaces the subject of a DER certificate request and signs it again
/// with `key`, whose algorithm the request already names.
fn rewrite_csr_subject(csr: &[u8], subject: &[u8], key: &KeyPair) -> Result<Vec<u8>, String> {
    let outer = der::elements(der::content_of(csr, der::SEQUENCE)?)?;
    let [info, algorithm, _signature] = outer.as_slice() else {
        return Err(format!(
            "malformed request: {} top-level parts instead of 3",
            outer.len()
        ));
    };
    let mut parts = der::elements(der::content_of(info, der::SEQUENCE)?)?;
    // version, subject, subjectPKInfo, attributes
    if parts.len() != 4 {
        return Err(format!(
            "malformed request: {} info parts instead of 4",
            parts.len()
        ));
    }
    parts[1] = subject;
    let info = der::tlv(der::SEQUENCE, &parts.concat());
    let signature = key.sign(&info).map_err(|err| format!("signing: {err}"))?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    let mut body = info;
    body.extend_from_slice(algorithm);
    der::write(der::BIT_STRING, &bits, &mut body);
    Ok(der::tlv(der::SEQUENCE, &body))
}

/// The hash upstream writes next to a CA (`<name>.sha256`): SHA-256 of the
/// certificate's public key info, as kubeadm pins it (`sha256:<hex>`).
pub fn spki_sha256(cert_pem: &str) -> Result<String, PkiError> {
    let hash = || -> Result<String, String> {
        let digest = cert_spki_digest(&pem_decode(cert_pem)?.der)?;
        let hex: String = digest.0.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    };
    hash().map_err(|reason| PkiError::new("hashing the certificate's public key", reason))
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo.
fn cert_spki_digest(cert_der: &[u8]) -> Result<SpkiFingerprint, String> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|err| format!("invalid certificate: {err}"))?;
    Ok(SpkiFingerprint::of_spki(cert.public_key().raw))
}

/// A server's SPKI fingerprint: SHA-256 of its SubjectPublicKeyInfo. A
/// node in maintenance mode has only a self-signed certificate, and this
/// is how an operator pins it (`apply-config --insecure
/// --cert-fingerprint`): it depends on the key alone, so a certificate
/// issued again for new addresses keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpkiFingerprint([u8; 32]);

impl SpkiFingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    #[must_use]
    pub fn of_spki(spki_der: &[u8]) -> SpkiFingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut bytes = [0_u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        SpkiFingerprint(bytes)
    }

    /// The fingerprint of a DER certificate's public key.
    ///
    /// # Errors
    /// The certificate cannot be parsed.
    pub fn of_certificate(cert_der: &[u8]) -> Result<SpkiFingerprint, PkiError> {
        cert_spki_digest(cert_der)
            .map_err(|reason| PkiError::new("fingerprinting a certificate", reason))
    }

    /// The fingerprint of the public half of a PEM private key.
    ///
    /// # Errors
    /// The key cannot be loaded.
    pub fn of_private_key(key_pem: &str) -> Result<SpkiFingerprint, PkiError> {
        Ok(SpkiFingerprint::of_spki(
            &rcgen::PublicKeyData::subject_public_key_info(&load_key_pair(key_pem)?),
        ))
    }

    /// Parses the form [`fmt::Display`] writes: standard base64 of the 32
    /// bytes, as upstream prints and takes it.
    ///
    /// # Errors
    /// Not base64, or not 32 bytes.
    pub fn parse(text: &str) -> Result<SpkiFingerprint, PkiError> {
        let operation = format!("parsing certificate fingerprint {text:?}");
        let bytes = base64::decode(text.trim().as_bytes()).map_err(|err| {
            PkiError::new(
                operation.as_str(),
                format!("expected base64 such as the node prints: {err}"),
            )
        })?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            PkiError::new(
                operation.as_str(),
                format!("a SHA-256 fingerprint is 32 bytes, this is {}", b.len()),
            )
        })?;
        Ok(SpkiFingerprint(bytes))
    }
}

impl fmt::Display for SpkiFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::encode(self.0))
    }
}

/// Generates an Ed25519 key and a certificate signing request for it
/// (Common Name `common_name` unless empty, SANs `ips` and `dns`), as a
/// worker does before asking trustd. Returns `(csr_pem, key_pem)`.
pub fn generate_csr(
    common_name: &str,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<(String, String), PkiError> {
    let operation = format!("generating certificate request for {common_name:?}");
    build_csr(common_name, ips, dns).map_err(|reason| PkiError::new(operation, reason))
}

fn build_csr(
    common_name: &str,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<(String, String), String> {
    let key =
        KeyPair::generate_for(&PKCS_ED25519).map_err(|err| format!("generating key: {err}"))?;
    let mut params = CertificateParams::new(san_strings(ips, dns))
        .map_err(|err| format!("invalid subject alternative name: {err}"))?;
    let mut subject = DistinguishedName::new();
    if !common_name.is_empty() {
        subject.push(DnType::CommonName, common_name);
    }
    params.distinguished_name = subject;
    let csr = params
        .serialize_request(&key)
        .map_err(|err| format!("signing request: {err}"))?;
    let der: &[u8] = csr.der();
    Ok((
        pem_encode("CERTIFICATE REQUEST", der),
        encode_private_key(&key)?,
    ))
}

/// When a certificate valid from `not_before` to `not_after` should be
/// renewed: at half its lifetime (upstream renews 24 h certificates every 12 h).
#[must_use]
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    match not_after.duration_since(not_before) {
        Ok(lifetime) => not_before.checked_add(lifetime / 2).unwrap_or(not_after),
        Err(_) => not_before,
    }
}

fn san_strings(ips: &[IpAddr], dns: &[String]) -> Vec<String> {
    ips.iter()
        .map(ToString::to_string)
        .chain(dns.iter().cloned())
        .collect()
}

/// Parameters shared by every issued leaf certificate.
fn leaf_params(
    subject_alt_names: Vec<String>,
    now: SystemTime,
    ttl: Duration,
) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(subject_alt_names)
        .map_err(|err| format!("invalid subject alternative name: {err}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = Vec::new();
    params.use_authority_key_identifier_extension = false;
    set_validity(&mut params, now, ttl)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(), String> {
    let end = now
        .checked_add(lifetime)
        .ok_or_else(|| format!("validity of {lifetime:?} overflows the clock"))?;
    let start = now.checked_sub(NOT_BEFORE_SKEW).unwrap_or(now);
    params.not_before = offset_date_time(start)?;
    params.not_after = offset_date_time(end)?;
    Ok(())
}

fn offset_date_time(at: SystemTime) -> Result<OffsetDateTime, String> {
    let seconds = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs())
            .ok()
            .map(|seconds| -seconds),
    };
    seconds
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok())
        .ok_or_else(|| format!("time {at:?} cannot be written into a certificate"))
}

fn system_time_from_unix(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    let time = if seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    time.unwrap_or(UNIX_EPOCH)
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| format!("reading random bytes: {err}"))?;
    // Positive, and a full 16 bytes long.
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Has rcgen build and sign the certificate, then puts the CA's subject in
/// as issuer (and `subject` as subject, `spki` as public key info, when
/// given) and signs again.
fn sign_leaf(
    params: &CertificateParams,
    public_key: &impl PublicKeyData,
    ca: &LoadedCa,
    subject: Option<&[u8]>,
    spki: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    // The issuer name written here is a placeholder: it is replaced below.
    let issuer = Issuer::new(CertificateParams::default(), &ca.key);
    let cert = params
        .signed_by(public_key, &issuer)
        .map_err(|err| format!("signing: {err}"))?;
    let der: &[u8] = cert.der();
    rewrite_names(der, &ca.subject, subject, spki, &ca.key)
}

/// Replaces the issuer (and optionally the subject and the public key info)
/// of a certificate and signs the result with `signer`, whose algorithm the
/// certificate already names.
fn rewrite_names(
    cert: &[u8],
    issuer: &[u8],
    subject: Option<&[u8]>,
    spki: Option<&[u8]>,
    signer: &KeyPair,
) -> Result<Vec<u8>, String> {
    let parts = CertParts::split(cert)?;
    let mut tbs_content = Vec::with_capacity(cert.len() + 256);
    for (index, element) in parts.tbs.iter().enumerate() {
        let element: &[u8] = element;
        let replacement = if index == parts.issuer_index {
            Some(issuer)
        } else if index == parts.subject_index {
            subject
        } else if index == parts.spki_index {
            spki
        } else {
            None
        };
        tbs_content.extend_from_slice(replacement.unwrap_or(element));
    }
    let tbs = der::tlv(der::SEQUENCE, &tbs_content);
    let signature = signer.sign(&tbs).map_err(|err| format!("signing: {err}"))?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);

    let mut body = tbs;
    body.extend_from_slice(parts.signature_algorithm);
    der::write(der::BIT_STRING, &bits, &mut body);
    Ok(der::tlv(der::SEQUENCE, &body))
}

/// The pieces of a DER certificate this module touches.
#[derive(Debug)]
struct CertParts<'a> {
    tbs: Vec<&'a [u8]>,
    signature_algorithm: &'a [u8],
    issuer_index: usize,
    subject_index: usize,
    spki_index: usize,
}

impl<'a> CertParts<'a> {
    fn split(cert: &'a [u8]) -> Result<Self, String> {
        let outer: Vec<&'a [u8]> = der::elements(der::content_of(cert, der::SEQUENCE)?)?;
        if outer.len() != 3 {
            return Err(format!(
                "malformed certificate: {} top-level parts instead of 3",
                outer.len()
            ));
        }
        let (tbs, signature_algorithm): (&'a [u8], &'a [u8]) = (outer[0], outer[1]);
        let tbs: Vec<&'a [u8]> = der::elements(der::content_of(tbs, der::SEQUENCE)?)?;
        // The version field is optional (absent means v1).
        let offset =
            usize::from(tbs.first().and_then(|element| element.first()) == Some(&der::CONTEXT_0));
        let parts = Self {
            tbs,
            signature_algorithm,
            issuer_index: offset + 2,
            subject_index: offset + 4,
            spki_index: offset + 5,
        };
        for index in [parts.issuer_index, parts.subject_index, parts.spki_index] {
            match parts.tbs.get(index).and_then(|element| element.first()) {
                Some(&der::SEQUENCE) => {}
                _ => return Err("malformed certificate: unexpected to-be-signed layout".to_owned()),
            }
        }
        Ok(parts)
    }

    fn subject(&self) -> &'a [u8] {
        self.tbs
            .get(self.subject_index)
            .copied()
            .unwrap_or_default()
    }

    /// The public key bits of the SubjectPublicKeyInfo.
    fn public_key_bits(&self) -> Result<&'a [u8], String> {
        let spki = self.tbs.get(self.spki_index).copied().unwrap_or_default();
        let fields = der::elements(der::content_of(spki, der::SEQUENCE)?)?;
        let bit_string: &'a [u8] = fields
            .get(1)
            .copied()
            .ok_or("malformed certificate: public key info without key")?;
        let bits = der::content_of(bit_string, der::BIT_STRING)?;
        match bits.split_first() {
            Some((0, key)) => Ok(key),
            _ => Err("malformed certificate: unexpected public key encoding".to_owned()),
        }
    }
}

/// DER encoding of a Name: one RDN per Organization, then the Common Name.
fn encode_name(organizations: &[String], common_name: Option<&str>) -> Vec<u8> {
    const OID_ORGANIZATION: [u8; 5] = [der::OID, 3, 0x55, 0x04, 0x0a];
    const OID_COMMON_NAME: [u8; 5] = [der::OID, 3, 0x55, 0x04, 0x03];

    fn push_rdn(out: &mut Vec<u8>, oid: &[u8], value: &str) {
        let mut attribute = oid.to_vec();
        der::write(der::UTF8_STRING, value.as_bytes(), &mut attribute);
        let attribute = der::tlv(der::SEQUENCE, &attribute);
        der::write(der::SET, &attribute, out);
    }

    let mut rdns = Vec::new();
    for organization in organizations {
        push_rdn(&mut rdns, &OID_ORGANIZATION, organization);
    }
    if let Some(common_name) = common_name {
        push_rdn(&mut rdns, &OID_COMMON_NAME, common_name);
    }
    der::tlv(der::SEQUENCE, &rdns)
}

// === keys ===

/// Loads a private key from PEM: PKCS#8 under any `... PRIVATE KEY` label
/// (`PRIVATE KEY`, `ED25519 PRIVATE KEY`), or SEC1 `EC PRIVATE KEY`.
/// Ed25519 and ECDSA P-256/P-384 are supported; RSA only as PKCS#8.
pub fn load_key_pair(pem: &str) -> Result<KeyPair, PkiError> {
    let operation = "loading private key";
    let pkcs8 = pkcs8_der(pem).map_err(|reason| PkiError::new(operation, reason))?;
    KeyPair::try_from(pkcs8.as_slice())
        .map_err(|err| PkiError::new(operation, format!("unsupported or invalid key: {err}")))
}

/// Re-encodes a private key as PKCS#8 under the label `PRIVATE KEY`, which
/// every PEM reader (rustls included) understands.
pub fn to_pkcs8_pem(pem: &str) -> Result<String, PkiError> {
    let pkcs8 = pkcs8_der(pem).map_err(|reason| PkiError::new("converting private key", reason))?;
    Ok(pem_encode(PKCS8_KEY_LABEL, &pkcs8))
}

fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
    let block = pem_decode(pem)?;
    match block.label.as_str() {
        EC_KEY_LABEL => sec1_to_pkcs8(&block.der),
        "RSA PRIVATE KEY" => {
            Err("PKCS#1 RSA keys are not supported; convert the key to PKCS#8".to_owned())
        }
        label if label.ends_with("PRIVATE KEY") && !label.contains("ENCRYPTED") => {
            Ok(ed25519_pkcs8_v1(&block.der))
        }
        label => Err(format!(
            "expected an unencrypted private key PEM block, found {label:?}"
        )),
    }
}

/// Writes a key in upstream's encoding (see the module docs).
fn encode_private_key(key: &KeyPair) -> Result<String, String> {
    let pkcs8 = key.serialized_der();
    let algorithm = key.algorithm();
    if algorithm == &PKCS_ED25519 {
        Ok(pem_encode(ED25519_KEY_LABEL, &ed25519_pkcs8_v1(pkcs8)))
    } else if algorithm == &PKCS_ECDSA_P256_SHA256 || algorithm == &PKCS_ECDSA_P384_SHA384 {
        Ok(pem_encode(EC_KEY_LABEL, &pkcs8_ec_to_sec1(pkcs8)?))
    } else {
        Ok(pem_encode(PKCS8_KEY_LABEL, pkcs8))
    }
}

/// `id-Ed25519` (1.3.101.112), encoded.
const OID_ED25519: [u8; 5] = [der::OID, 3, 0x2b, 0x65, 0x70];

/// Re-encodes an Ed25519 PKCS#8 v2 key (RFC 5958, with the public key, as
/// ring writes it) as v1 (RFC 5208: version 0, no public key), which is what
/// Go, OpenSSL and BoringSSL read; anything else is returned unchanged.
fn ed25519_pkcs8_v1(pkcs8: &[u8]) -> Vec<u8> {
    let v1 = || -> Result<Option<Vec<u8>>, String> {
        let parts = der::elements(der::content_of(pkcs8, der::SEQUENCE)?)?;
        let [_version, algorithm, private, ..] = parts.as_slice() else {
            return Ok(None);
        };
        if der::content_of(algorithm, der::SEQUENCE)? != OID_ED25519 || parts.len() == 3 {
            return Ok(None);
        }
        let version0 = der::tlv(der::INTEGER, &[0]);
        Ok(Some(der::tlv(
            der::SEQUENCE,
            &[version0.as_slice(), algorithm, private].concat(),
        )))
    };
    v1().ok().flatten().unwrap_or_else(|| pkcs8.to_vec())
}

/// `id-ecPublicKey` (1.2.840.10045.2.1), encoded.
const OID_EC_PUBLIC_KEY: [u8; 9] = [der::OID, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Unwraps a PKCS#8 ECDSA key into SEC1 `ECPrivateKey`, adding the curve
/// parameters, which Go's SEC1 parser needs.
fn pkcs8_ec_to_sec1(pkcs8: &[u8]) -> Result<Vec<u8>, String> {
    let malformed = || "malformed PKCS#8 ECDSA key".to_owned();
    let outer = der::elements(der::content_of(pkcs8, der::SEQUENCE)?)?;
    let algorithm = der::elements(der::content_of(
        outer.get(1).ok_or_else(malformed)?,
        der::SEQUENCE,
    )?)?;
    let curve = *algorithm.get(1).ok_or_else(malformed)?;
    if curve.first() != Some(&der::OID) {
        return Err(malformed());
    }
    let inner = der::content_of(outer.get(2).ok_or_else(malformed)?, der::OCTET_STRING)?;
    let fields = der::elements(der::content_of(inner, der::SEQUENCE)?)?;
    let (Some(version), Some(private_key)) = (fields.first(), fields.get(1)) else {
        return Err(malformed());
    };

    let mut body = Vec::with_capacity(inner.len() + curve.len() + 2);
    body.extend_from_slice(version);
    body.extend_from_slice(private_key);
    let optional = fields.get(2..).unwrap_or_default();
    if !optional
        .iter()
        .any(|field| field.first() == Some(&der::CONTEXT_0))
    {
        der::write(der::CONTEXT_0, curve, &mut body);
    }
    for field in optional {
        body.extend_from_slice(field);
    }
    Ok(der::tlv(der::SEQUENCE, &body))
}

/// Wraps a SEC1 `ECPrivateKey` (with curve parameters) into PKCS#8.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, String> {
    let fields = der::elements(der::content_of(sec1, der::SEQUENCE)?)?;
    let parameters = fields
        .iter()
        .find(|field| field.first() == Some(&der::CONTEXT_0))
        .ok_or("EC private key without curve parameters")?;
    let curve = der::content_of(parameters, der::CONTEXT_0)?;

    let mut algorithm = OID_EC_PUBLIC_KEY.to_vec();
    algorithm.extend_from_slice(curve);
    let mut body = vec![der::INTEGER, 1, 0];
    der::write(der::SEQUENCE, &algorithm, &mut body);
    der::write(der::OCTET_STRING, sec1, &mut body);
    Ok(der::tlv(der::SEQUENCE, &body))
}

// === inspection ===

/// Reads the first certificate of a PEM text.
pub fn cert_info(pem: &[u8]) -> Result<CertInfo, PkiError> {
    let operation = "reading certificate";
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|err| PkiError::new(operation, format!("not PEM: {err}")))?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::new(
            operation,
            format!("expected a CERTIFICATE PEM block, found {:?}", block.label),
        ));
    }
    let cert = block
        .parse_x509()
        .map_err(|err| PkiError::new(operation, format!("invalid certificate: {err}")))?;
    info_of(&cert).map_err(|reason| PkiError::new(operation, reason))
}

fn info_of(cert: &X509Certificate<'_>) -> Result<CertInfo, String> {
    let subject = cert.subject();
    let organizations = subject
        .iter_organization()
        .map(|attribute| attribute.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("subject organization: {err}"))?;
    let common_name = subject
        .iter_common_name()
        .next()
        .map(|attribute| attribute.as_str().map(str::to_owned))
        .transpose()
        .map_err(|err| format!("subject common name: {err}"))?;

    let mut ext_key_usages = Vec::new();
    let eku = cert
        .extended_key_usage()
        .map_err(|err| format!("extended key usage: {err}"))?;
    if let Some(eku) = eku {
        let usage = eku.value;
        let flags = [
            (usage.any, ExtKeyUsage::Any),
            (usage.server_auth, ExtKeyUsage::ServerAuth),
            (usage.client_auth, ExtKeyUsage::ClientAuth),
            (usage.code_signing, ExtKeyUsage::CodeSigning),
            (usage.email_protection, ExtKeyUsage::EmailProtection),
            (usage.time_stamping, ExtKeyUsage::TimeStamping),
            (usage.ocsp_signing, ExtKeyUsage::OcspSigning),
        ];
        for (present, kind) in flags {
            if present {
                ext_key_usages.push(kind);
            }
        }
        for oid in &usage.other {
            ext_key_usages.push(ExtKeyUsage::Other(oid.to_id_string()));
        }
    }

    let key_usage = cert
        .key_usage()
        .map_err(|err| format!("key usage: {err}"))?;
    let (digital_signature, key_cert_sign) = key_usage.map_or((false, false), |usage| {
        (usage.value.digital_signature(), usage.value.key_cert_sign())
    });

    let mut ip_addresses = Vec::new();
    let mut dns_names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|err| format!("subject alternative name: {err}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(String::from(*dns)),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::V4(Ipv4Addr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::V6(Ipv6Addr::from(v6)));
                    } else {
                        return Err(format!("IP address SAN of {} bytes", bytes.len()));
                    }
                }
                _ => {}
            }
        }
    }

    let public_key_algorithm = match cert
        .public_key()
        .algorithm
        .algorithm
        .to_id_string()
        .as_str()
    {
        "1.3.101.112" => PublicKeyAlgorithm::Ed25519,
        "1.2.840.10045.2.1" => PublicKeyAlgorithm::Ecdsa,
        "1.2.840.113549.1.1.1" => PublicKeyAlgorithm::Rsa,
        other => PublicKeyAlgorithm::Other(other.to_owned()),
    };

    let validity = cert.validity();
    Ok(CertInfo {
        organizations,
        common_name,
        not_before: system_time_from_unix(validity.not_before.timestamp()),
        not_after: system_time_from_unix(validity.not_after.timestamp()),
        is_ca: cert.is_ca(),
        ext_key_usages,
        digital_signature,
        key_cert_sign,
        ip_addresses,
        dns_names,
        public_key_algorithm,
        serial: cert.raw_serial_as_string(),
    })
}

/// Checks that the first certificate in `cert_pem` was signed by the first
/// certificate in `ca_pem`: its issuer name is the CA's subject and its
/// signature verifies with the CA's key. Validity periods are not checked.
pub fn verify_signed_by(cert_pem: &[u8], ca_pem: &[u8]) -> Result<(), PkiError> {
    let operation = "verifying certificate signature";
    let fail = |reason: String| PkiError::new(operation, reason);

    let (_, cert_block) = x509_parser::pem::parse_x509_pem(cert_pem)
        .map_err(|err| fail(format!("certificate is not PEM: {err}")))?;
    let cert = cert_block
        .parse_x509()
        .map_err(|err| fail(format!("invalid certificate: {err}")))?;
    let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca_pem)
        .map_err(|err| fail(format!("CA certificate is not PEM: {err}")))?;
    let ca = ca_block
        .parse_x509()
        .map_err(|err| fail(format!("invalid CA certificate: {err}")))?;

    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(fail(format!(
            "issuer {} is not the CA's subject {}",
            cert.issuer(),
            ca.subject()
        )));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|err| fail(format!("signature does not verify with the CA key: {err}")))
}

/// Checks a server certificate issued for `key_pem` (a worker's, from
/// trustd) before it is used: it parses, it is for that key, it is signed
/// by one of the CAs of the PEM bundle `cas_pem`, and it is for servers.
/// Returns what it says.
pub fn check_issued(cert_pem: &[u8], key_pem: &str, cas_pem: &[u8]) -> Result<CertInfo, PkiError> {
    let operation = "checking the issued certificate";
    let info = cert_info(cert_pem)?;
    let text = std::str::from_utf8(cert_pem)
        .map_err(|_| PkiError::new(operation, "the certificate is not PEM text"))?;
    let der = pem_decode(text)
        .map_err(|reason| PkiError::new(operation, reason))?
        .der;
    if SpkiFingerprint::of_certificate(&der)? != SpkiFingerprint::of_private_key(key_pem)? {
        return Err(PkiError::new(
            operation,
            "it is for another key than the one the request was made with",
        ));
    }
    if !info.server_auth() {
        return Err(PkiError::new(
            operation,
            "its extended key usage does not include ServerAuth",
        ));
    }
    let mut last = PkiError::new(operation, "no CA to check it against");
    for block in x509_parser::pem::Pem::iter_from_buffer(cas_pem) {
        let Ok(block) = block else { break };
        match verify_signed_by(
            cert_pem,
            pem_encode("CERTIFICATE", &block.contents).as_bytes(),
        ) {
            Ok(()) => return Ok(info),
            Err(e) => last = e,
        }
    }
    Err(last)
}

// === random ===
// === random ===

/// A token in upstream's trustd/bootstrap format: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn generate_token() -> Result<String, PkiError> {
    let mut token = String::with_capacity(23);
    push_token_chars(6, &mut token)?;
    token.push('.');
    push_token_chars(16, &mut token)?;
    Ok(token)
}

fn push_token_chars(count: usize, out: &mut String) -> Result<(), PkiError> {
    // 252 = 7 * 36: rejecting bytes above it keeps every character equally likely.
    const LIMIT: u8 = 252;
    let mut produced = 0;
    let mut buffer = [0u8; 32];
    while produced < count {
        getrandom::fill(&mut buffer).map_err(|err| {
            PkiError::new("generating token", format!("reading random bytes: {err}"))
        })?;
        for &byte in &buffer {
            if produced == count {
                break;
            }
            if byte < LIMIT {
                out.push(char::from(TOKEN_ALPHABET[usize::from(byte % 36)]));
                produced += 1;
            }
        }
    }
    Ok(())
}

/// `len` random bytes from the operating system.
pub fn random_bytes(len: usize) -> Result<Vec<u8>, PkiError> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map_err(|err| PkiError::new("generating random bytes", err.to_string()))?;
    Ok(bytes)
}

/// `len` random bytes, standard base64 (cluster secret, secretbox key, ...).
pub fn random_secret(len: usize) -> Result<String, PkiError> {
    Ok(base64::encode(random_bytes(len)?))
}

// === PEM ===

/// One PEM block.
#[derive(Debug)]
struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// Encodes DER as PEM: 64-column base64, LF line ends.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes the first PEM block of `text` (text before it is ignored).
fn pem_decode(text: &str) -> Result<PemBlock, String> {
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let Some(line) = lines.next() else {
            return Err("no PEM block (-----BEGIN ...-----) found".to_owned());
        };
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            break rest
                .strip_suffix("-----")
                .ok_or_else(|| format!("malformed PEM header {line:?}"))?
                .to_owned();
        }
    };
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    loop {
        let Some(line) = lines.next() else {
            return Err(format!("PEM block {label:?} has no end line"));
        };
        if line == end {
            break;
        }
        if line.contains(':') {
            return Err(format!(
                "PEM block {label:?} has headers (encrypted keys are not supported)"
            ));
        }
        body.push_str(line);
    }
    let der =
        base64::decode(body.as_bytes()).map_err(|err| format!("PEM block {label:?}: {err}"))?;
    Ok(PemBlock { label, der })
}

// === DER ===

/// The little DER this module reads and writes itself.
mod der {
    pub(super) const INTEGER: u8 = 0x02;
    pub(super) const BIT_STRING: u8 = 0x03;
    pub(super) const OCTET_STRING: u8 = 0x04;
    pub(super) const OID: u8 = 0x06;
    pub(super) const UTF8_STRING: u8 = 0x0c;
    pub(super) const SEQUENCE: u8 = 0x30;
    pub(super) const SET: u8 = 0x31;
    pub(super) const CONTEXT_0: u8 = 0xa0;

    /// An element split off the front: `(tag, content, whole element, rest)`.
    pub(super) type Split<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// The first element of `input`.
    pub(super) fn split(input: &[u8]) -> Result<Split<'_>, String> {
        let (&tag, after_tag) = input.split_first().ok_or("truncated DER: no tag")?;
        if tag & 0x1f == 0x1f {
            return Err("unsupported multi-byte DER tag".to_owned());
        }
        let (&first, after_first) = after_tag.split_first().ok_or("truncated DER: no length")?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err("unsupported DER length encoding".to_owned());
            }
            let bytes = after_first.get(..count).ok_or("truncated DER length")?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte));
            (len, 2 + count)
        };
        let total = header
            .checked_add(len)
            .filter(|total| *total <= input.len())
            .ok_or("truncated DER element")?;
        let content = input.get(header..total).ok_or("truncated DER element")?;
        let whole = input.get(..total).ok_or("truncated DER element")?;
        let rest = input.get(total..).unwrap_or_default();
        Ok((tag, content, whole, rest))
    }

    /// The content of `input`, which must be exactly one element tagged `tag`.
    pub(super) fn content_of(input: &[u8], tag: u8) -> Result<&[u8], String> {
        let (actual, content, _, rest) = split(input)?;
        if actual != tag {
            return Err(format!(
                "expected DER tag 0x{tag:02x}, found 0x{actual:02x}"
            ));
        }
        if !rest.is_empty() {
            return Err("trailing bytes after DER element".to_owned());
        }
        Ok(content)
    }

    /// The elements (each whole, header included) making up `content`.
    pub(super) fn elements(mut content: &[u8]) -> Result<Vec<&[u8]>, String> {
        let mut out = Vec::new();
        while !content.is_empty() {
            let (_, _, whole, rest) = split(content)?;
            out.push(whole);
            content = rest;
        }
        Ok(out)
    }

    /// Appends the element `tag`/`content` to `out`.
    pub(super) fn write(tag: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            // Short form: the length itself, which fits in seven bits.
            out.push(len as u8);
        } else {
            // Long form: 0x80 | byte count, then the big-endian length without leading zeros.
            let bytes = len.to_be_bytes();
            let significant: Vec<u8> = bytes
                .iter()
                .copied()
                .skip_while(|&byte| byte == 0)
                .collect();
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(&significant);
        }
        out.extend_from_slice(content);
    }

    /// The element `tag`/`content`.
    pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        write(tag, content, &mut out);
        out
    }
}

#[cfg(test)]
mod ed25519_encoding_tests {
    use super::*;

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_and_still_load() {
        let ca = generate_os_ca(SystemTime::now()).expect("ca");
        let der = pkcs8_der(&ca.key_pem).expect("der");
        // SEQUENCE(0x2e) { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING(32) } }
        assert_eq!(der.len(), 48);
        assert_eq!(
            &der[..16],
            &[
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20
            ]
        );
        // rcgen/ring and rustls still read it.
        load_key_pair(&ca.key_pem).expect("loads");
        let pkcs8 = to_pkcs8_pem(&ca.key_pem).expect("pkcs8");
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
        issue_client_cert(
            &ca,
            &["os:admin".to_owned()],
            CLIENT_CERT_TTL,
            SystemTime::now(),
        )
        .expect("signs with it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        // A fixed, second-aligned instant (certificates have second precision).
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn os_ca() -> CertificateAndKey {
        generate_os_ca(now()).expect("generate OS CA")
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    /// A SEC1 P-256 key as `openssl ecparam -genkey -name prime256v1 -noout` writes it.
    const OPENSSL_EC_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIAEjJfFg3d7YfbQVEmXmoEUuBYIfpCEn/dqJbEHMIyIAoAoGCCqGSM49
AwEHoUQDQgAE+Sv2sUMn1nlcjRl7gQbyX7SrZajTmCv0cz3OqyhJ7vM0DdO3/073
KWee+sWYVEhwTabarSQs/MGIJ2+gcCXkDA==
-----END EC PRIVATE KEY-----
";
    /// Its public key (uncompressed point), hex.
    const OPENSSL_EC_PUBLIC: &str = "04f92bf6b14327d6795c8d197b8106f25fb4ab65a8d3982bf4733dceab2849eef3340dd3b7ff4ef729679efac5985448704da6daad242cfcc188276fa07025e40c";

    /// An Ed25519 PKCS#8 key from `openssl genpkey -algorithm ed25519`.
    const OPENSSL_ED25519_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDWf8itjTGglKxCc0gr7VNEiqXXmYN4wq28soc/rZRvN
-----END PRIVATE KEY-----
";
    const OPENSSL_ED25519_PUBLIC: &str =
        "937e2a80c51c15c70dcc0fd00addeb778400526af7d8bcd834af018ee0b64edf";

    fn hex(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len() * 2);
        for byte in bytes {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    #[test]
    fn os_ca_is_a_self_signed_ed25519_talos_ca_for_ten_years() {
        let ca = os_ca();
        let info = cert_info(ca.cert_pem.as_bytes()).expect("parse CA");
        assert_eq!(info.organizations, ["talos"]);
        assert_eq!(info.common_name, None);
        assert!(info.is_ca);
        assert!(info.key_cert_sign);
        assert!(info.digital_signature);
        assert_eq!(info.public_key_algorithm, PublicKeyAlgorithm::Ed25519);
        assert_eq!(
            info.ext_key_usages,
            [ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth]
        );
        assert_eq!(info.not_before, now() - NOT_BEFORE_SKEW);
        assert_eq!(info.not_after, now() + CA_VALIDITY);
        assert_eq!(CA_VALIDITY.as_secs(), 10 * 8760 * 3600);
        verify_signed_by(ca.cert_pem.as_bytes(), ca.cert_pem.as_bytes()).expect("self-signed");
        assert!(
            ca.key_pem
                .starts_with("-----BEGIN ED25519 PRIVATE KEY-----\n")
        );
        load_key_pair(&ca.key_pem).expect("key loads back");
    }

    #[test]
    fn debug_redacts_the_key() {
        let ca = os_ca();
        let shown = format!("{ca:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("PRIVATE KEY"));
    }

    #[test]
    fn client_cert_carries_roles_and_only_client_auth() {
        let ca = os_ca();
        let client = issue_client_cert(
            &ca,
            &roles(&["os:admin", "os:reader"]),
            CLIENT_CERT_TTL,
            now(),
        )
        .expect("issue client cert");
        let info = cert_info(client.cert_pem.as_bytes()).expect("parse client cert");
        assert_eq!(info.organizations, ["os:admin", "os:reader"]);
        assert!(info.ext_key_usage_is_exactly_client_auth());
        assert!(info.client_auth());
        assert!(!info.server_auth());
        assert!(!info.is_ca);
        assert!(info.digital_signature);
        assert!(!info.key_cert_sign);
        assert_eq!(info.public_key_algorithm, PublicKeyAlgorithm::Ed25519);
        assert_eq!(info.not_before, now() - NOT_BEFORE_SKEW);
        assert_eq!(info.not_after, now() + Duration::from_secs(8760 * 3600));
        assert!(info.is_valid_at(now() + Duration::from_secs(3600)));
        verify_signed_by(client.cert_pem.as_bytes(), ca.cert_pem.as_bytes())
            .expect("chains to the CA");

        let other = generate_os_ca(now()).expect("second CA");
        let err = verify_signed_by(client.cert_pem.as_bytes(), other.cert_pem.as_bytes())
            .expect_err("not signed by another CA");
        assert!(
            err.to_string()
                .starts_with("verifying certificate signature")
        );

        assert!(
            client
                .key_pem
                .starts_with("-----BEGIN ED25519 PRIVATE KEY-----")
        );
        let key = load_key_pair(&client.key_pem).expect("client key loads");
        assert_eq!(key.algorithm(), &PKCS_ED25519);
    }

    #[test]
    fn gen_csr_and_crt_keep_every_role_and_only_client_auth() {
        let ca = os_ca();
        let key = generate_private_key_pem(KeyAlgorithm::Ed25519).expect("key");
        let ip: IpAddr = "10.5.0.9".parse().expect("ip");
        let wanted = roles(&["os:operator", "os:etcd:backup"]);
        let csr = generate_csr_for_key(&key, &wanted, &[ip]).expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        // The re-signed request verifies (rcgen checks its signature).
        let parsed = parse_csr(&csr).expect("parses and verifies");
        assert_eq!(parsed.organizations, wanted);
        assert_eq!(parsed.common_name, None);

        let cert = sign_client_csr(&ca, &csr, Duration::from_secs(24 * 3600), now()).expect("crt");
        let info = cert_info(cert.as_bytes()).expect("info");
        assert_eq!(info.organizations, wanted);
        assert!(info.ext_key_usage_is_exactly_client_auth());
        assert!(!info.is_ca && info.digital_signature && !info.key_cert_sign);
        assert_eq!(info.ip_addresses, [ip]);
        assert_eq!(info.not_after, now() + Duration::from_secs(24 * 3600));
        verify_signed_by(cert.as_bytes(), ca.cert_pem.as_bytes()).expect("chains to the CA");
        // The certificate is for the request's key.
        let public = load_key_pair(&key).expect("key").public_key_raw().to_vec();
        let block = pem_decode(&cert).expect("pem");
        let (_, parsed) = X509Certificate::from_der(&block.der).expect("der");
        assert_eq!(parsed.public_key().subject_public_key.data.as_ref(), public);

        // trustd's signing of the same request drops the roles.
        let node = sign_csr(&ca, &csr, SERVER_CERT_TTL, now()).expect("node");
        assert!(
            cert_info(node.as_bytes())
                .expect("info")
                .organizations
                .is_empty()
        );

        let err =
            sign_client_csr(&ca, "not a request", SERVER_CERT_TTL, now()).expect_err("garbage");
        assert!(
            err.to_string()
                .starts_with("signing client certificate request"),
            "{err}"
        );
        let err = generate_csr_for_key("nope", &wanted, &[]).expect_err("bad key");
        assert!(
            err.to_string().contains("[os:operator, os:etcd:backup]"),
            "{err}"
        );
    }

    #[test]
    fn keypair_and_spki_hash() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let pair = generate_keypair("demo", &[ip], now(), SERVER_CERT_TTL).expect("pair");
        let info = cert_info(pair.cert_pem.as_bytes()).expect("info");
        assert_eq!(info.organizations, ["demo"]);
        assert!(info.is_ca);
        assert_eq!(info.ip_addresses, [ip]);
        assert_eq!(info.not_after, now() + SERVER_CERT_TTL);
        // An Ed25519 public key info is a fixed prefix and the key.
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(load_key_pair(&pair.key_pem).expect("key").public_key_raw());
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            spki_sha256(&pair.cert_pem).expect("hash"),
            format!("sha256:{hex}")
        );
    }

    #[test]
    fn client_cert_serials_differ() {
        let ca = os_ca();
        let admin = roles(&["os:admin"]);
        let first = issue_client_cert(&ca, &admin, CLIENT_CERT_TTL, now()).expect("first");
        let second = issue_client_cert(&ca, &admin, CLIENT_CERT_TTL, now()).expect("second");
        let first = cert_info(first.cert_pem.as_bytes()).expect("parse");
        let second = cert_info(second.cert_pem.as_bytes()).expect("parse");
        assert_ne!(first.serial, second.serial);
    }

    #[test]
    fn client_cert_errors_name_the_roles() {
        let ca = os_ca();
        let err = issue_client_cert(&ca, &roles(&["os:admin", " "]), CLIENT_CERT_TTL, now())
            .expect_err("empty role");
        assert_eq!(
            err.operation(),
            "issuing client certificate for roles [os:admin,  ]"
        );
        assert!(err.reason().contains("role #2 is empty"), "{err}");

        let mismatched = CertificateAndKey {
            cert_pem: ca.cert_pem.clone(),
            key_pem: os_ca().key_pem,
        };
        let err = issue_client_cert(&mismatched, &roles(&["os:reader"]), CLIENT_CERT_TTL, now())
            .expect_err("foreign key");
        assert!(err.to_string().contains("does not belong"), "{err}");

        let garbage = CertificateAndKey {
            cert_pem: "not a certificate".to_owned(),
            key_pem: ca.key_pem.clone(),
        };
        let err = issue_client_cert(&garbage, &roles(&["os:reader"]), CLIENT_CERT_TTL, now())
            .expect_err("no PEM");
        assert!(err.to_string().contains("CA certificate"), "{err}");
    }

    /// Known answer: a certificate and its key made with OpenSSL, whose
    /// SPKI SHA-256 OpenSSL printed in base64 (`openssl x509 -pubkey |
    /// openssl pkey -pubin -outform der | openssl dgst -sha256 -binary |
    /// base64`).
    #[test]
    fn spki_fingerprints_match_openssl() {
        const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBQDCB86ADAgECAhQd3t9ndk1g0zEm7bswHNGS1fs+6TAFBgMrZXAwFjEUMBIG
A1UEAwwLa2F0LmV4YW1wbGUwHhcNMjYxMTI4MTk0MjE2WhcNMzYxMTI1MTk0MjE2
WjAWMRQwEgYDVQQDDAtrYXQuZXhhbXBsZTAqMAUGAytlcAMhAG0M3MEEQNXFICnx
Kyc160HutjfnY9X3nkM2csZeKy/Vo1MwUTAdBgNVHQ4EFgQU+vOaLK7yny1iTyVz
4i8TZYjzMD4wHwYDVR0jBBgwFoAU+vOaLK7yny1iTyVz4i8TZYjzMD4wDwYDVR0T
AQH/BAUwAwEB/zAFBgMrZXADQQAiDbZ+BIyQcA8caoVw1oG5+J8OcPQIc+aRAeL3
uN1S0UsJNhqa2YvDDTZimdIVNv8BrPUWdTQDAf5Y731bSzQF
-----END CERTIFICATE-----
";
        const KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDGgKfkI/GmY6UtdXAUQLLthhMXETj3dDNMGaMYZBSiI
-----END PRIVATE KEY-----
";
        const EXPECTED: &str = "xJtXDlqkzWq1Fw+KwlbyeggEtGd9HbkXxdDdUTvHgQ0=";
        let der = pem_decode(CERT).expect("pem").der;
        let from_cert = SpkiFingerprint::of_certificate(&der).expect("certificate");
        assert_eq!(from_cert.to_string(), EXPECTED);
        assert_eq!(
            SpkiFingerprint::of_private_key(KEY).expect("key"),
            from_cert
        );
        assert_eq!(SpkiFingerprint::parse(EXPECTED).expect("parses"), from_cert);

        let other = generate_private_key_pem(KeyAlgorithm::Ed25519).expect("key");
        assert_ne!(
            SpkiFingerprint::of_private_key(&other).expect("fingerprint"),
            from_cert
        );
        for bad in ["not base64!", "c2hvcnQ=", ""] {
            let err = SpkiFingerprint::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("fingerprint"), "{bad}: {err}");
        }
    }

    #[test]
    fn server_cert_has_sans_and_only_server_auth() {
        let ca = os_ca();
        let ips: Vec<IpAddr> = vec![
            "10.5.0.2".parse().expect("ip"),
            "fd00::2".parse().expect("ip"),
        ];
        let dns = vec!["cp-1".to_owned(), "cp-1.example.com".to_owned()];
        let server = issue_server_cert(&ca, "cp-1.example.com", &ips, &dns, SERVER_CERT_TTL, now())
            .expect("issue server cert");
        let info = cert_info(server.cert_pem.as_bytes()).expect("parse");
        assert_eq!(info.common_name.as_deref(), Some("cp-1.example.com"));
        assert!(info.organizations.is_empty());
        assert_eq!(info.ip_addresses, ips);
        assert_eq!(info.dns_names, dns);
        assert_eq!(info.ext_key_usages, [ExtKeyUsage::ServerAuth]);
        assert!(info.digital_signature);
        assert!(!info.is_ca);
        assert_eq!(info.not_after, now() + Duration::from_secs(24 * 3600));
        verify_signed_by(server.cert_pem.as_bytes(), ca.cert_pem.as_bytes()).expect("chains");
        assert_eq!(
            renew_at(info.not_before, info.not_after),
            now() + Duration::from_secs(12 * 3600) - NOT_BEFORE_SKEW / 2
        );
        assert_eq!(info.not_before, now() - NOT_BEFORE_SKEW);
    }

    #[test]
    fn renew_at_is_half_life() {
        let start = now();
        assert_eq!(
            renew_at(start, start + Duration::from_secs(100)),
            start + Duration::from_secs(50)
        );
        // A backwards validity renews immediately.
        assert_eq!(renew_at(start, start - Duration::from_secs(1)), start);
    }

    /// A CSR as a malicious node would send it: asking for os:admin, a CA,
    /// and client authentication.
    fn greedy_csr() -> (String, KeyPair) {
        let key = KeyPair::generate_for(&PKCS_ED25519).expect("key");
        let mut params = CertificateParams::new(vec!["10.5.0.3".to_owned(), "worker-1".to_owned()])
            .expect("params");
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "os:admin");
        subject.push(DnType::CommonName, "worker-1");
        params.distinguished_name = subject;
        // Names a node has no use for, which a token must not get signed.
        params.subject_alt_names.extend([
            SanType::URI(
                rcgen::string::Ia5String::try_from("spiffe://cluster/admin").expect("uri"),
            ),
            SanType::Rfc822Name(
                rcgen::string::Ia5String::try_from("admin@example.com").expect("email"),
            ),
        ]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let csr = params.serialize_request(&key).expect("csr");
        let der: &[u8] = csr.der();
        (pem_encode("CERTIFICATE REQUEST", der), key)
    }

    #[test]
    fn an_issued_certificate_is_checked_before_use() {
        let ca = os_ca();
        let other = generate_os_ca(now()).expect("another CA");
        let bundle = format!("{}{}", other.cert_pem, ca.cert_pem);
        let (csr, key) = generate_csr("worker-1", &[], &[]).expect("csr");
        let cert = sign_csr(&ca, &csr, SERVER_CERT_TTL, now()).expect("sign");
        // Signed by the second CA of the bundle: accepted.
        let info = check_issued(cert.as_bytes(), &key, bundle.as_bytes()).expect("good");
        assert_eq!(info.common_name.as_deref(), Some("worker-1"));
        // Not by a CA it trusts.
        let err = check_issued(cert.as_bytes(), &key, other.cert_pem.as_bytes()).expect_err("ca");
        assert!(err.to_string().contains("signature"), "{err}");
        // For another key.
        let (_, other_key) = generate_csr("worker-1", &[], &[]).expect("csr");
        let err = check_issued(cert.as_bytes(), &other_key, bundle.as_bytes()).expect_err("key");
        assert!(err.to_string().contains("another key"), "{err}");
        // A client certificate is not a server's.
        let client = issue_client_cert(&ca, &["os:reader".to_owned()], SERVER_CERT_TTL, now())
            .expect("client");
        let err = check_issued(
            client.cert_pem.as_bytes(),
            &client.key_pem,
            bundle.as_bytes(),
        )
        .expect_err("client");
        assert!(err.to_string().contains("ServerAuth"), "{err}");
        // Not a certificate at all.
        assert!(check_issued(b"", &key, bundle.as_bytes()).is_err());
    }

    #[test]
    fn sign_csr_strips_organizations_and_forces_server_auth() {
        let ca = os_ca();
        let (csr, key) = greedy_csr();
        let cert = sign_csr(&ca, &csr, SERVER_CERT_TTL, now()).expect("sign");
        let info = cert_info(cert.as_bytes()).expect("parse");
        assert!(info.organizations.is_empty(), "{:?}", info.organizations);
        assert_eq!(info.common_name.as_deref(), Some("worker-1"));
        assert_eq!(info.ext_key_usages, [ExtKeyUsage::ServerAuth]);
        assert!(!info.is_ca);
        assert!(info.digital_signature);
        assert!(!info.key_cert_sign);
        assert_eq!(
            info.ip_addresses,
            ["10.5.0.3".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(info.dns_names, ["worker-1"]);
        // The URI and the email address asked for are not there.
        let (_, block) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).expect("pem");
        let parsed = block.parse_x509().expect("x509");
        let sans = parsed
            .subject_alternative_name()
            .expect("SAN extension")
            .expect("SANs")
            .value
            .general_names
            .len();
        assert_eq!(sans, 2, "only the DNS name and the address");
        assert_eq!(info.not_after, now() + SERVER_CERT_TTL);
        verify_signed_by(cert.as_bytes(), ca.cert_pem.as_bytes()).expect("chains");

        // The certificate is for the key that signed the request.
        let block = pem_decode(&cert).expect("pem");
        let parts = CertParts::split(&block.der).expect("parts");
        assert_eq!(parts.public_key_bits().expect("key"), key.public_key_raw());
    }

    #[test]
    fn sign_csr_rejects_a_tampered_request() {
        let ca = os_ca();
        let (csr, _) = greedy_csr();
        let mut block = pem_decode(&csr).expect("pem");
        if let Some(last) = block.der.last_mut() {
            *last ^= 0x01;
        }
        let tampered = pem_encode("CERTIFICATE REQUEST", &block.der);
        let err = sign_csr(&ca, &tampered, SERVER_CERT_TTL, now()).expect_err("bad signature");
        assert_eq!(err.operation(), "signing certificate request");
        assert!(err.reason().starts_with("invalid request"), "{err}");

        let err = sign_csr(&ca, "garbage", SERVER_CERT_TTL, now()).expect_err("garbage");
        assert!(err.reason().starts_with("invalid request"), "{err}");
    }

    #[test]
    fn generated_csr_round_trips_through_trustd_signing() {
        let ca = os_ca();
        let ips = ["172.20.0.5".parse::<IpAddr>().expect("ip")];
        let dns = ["worker-2".to_owned()];
        let (csr, key_pem) = generate_csr("worker-2", &ips, &dns).expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        let cert = sign_csr(&ca, &csr, SERVER_CERT_TTL, now()).expect("sign");
        let info = cert_info(cert.as_bytes()).expect("parse");
        assert_eq!(info.common_name.as_deref(), Some("worker-2"));
        assert_eq!(info.ip_addresses, ips);
        assert_eq!(info.dns_names, dns);

        let key = load_key_pair(&key_pem).expect("key");
        let block = pem_decode(&cert).expect("pem");
        let parts = CertParts::split(&block.der).expect("parts");
        assert_eq!(parts.public_key_bits().expect("bits"), key.public_key_raw());
    }

    #[test]
    fn tokens_have_upstream_shape() {
        for _ in 0..50 {
            let token = generate_token().expect("token");
            let (id, secret) = token.split_once('.').expect("dot");
            assert_eq!(id.len(), 6, "{token}");
            assert_eq!(secret.len(), 16, "{token}");
            assert!(
                id.bytes()
                    .chain(secret.bytes())
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{token}"
            );
        }
        assert_ne!(generate_token().expect("a"), generate_token().expect("b"));
    }

    #[test]
    fn random_secrets_are_base64_of_the_asked_length() {
        let secret = random_secret(32).expect("secret");
        assert_eq!(base64::decode(&secret).expect("base64").len(), 32);
        assert_ne!(secret, random_secret(32).expect("another"));
    }

    #[test]
    fn openssl_keys_load() {
        let ec = load_key_pair(OPENSSL_EC_KEY).expect("SEC1 key");
        assert_eq!(ec.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert_eq!(hex(ec.public_key_raw()), OPENSSL_EC_PUBLIC);

        let ed = load_key_pair(OPENSSL_ED25519_KEY).expect("PKCS#8 key");
        assert_eq!(ed.algorithm(), &PKCS_ED25519);
        assert_eq!(hex(ed.public_key_raw()), OPENSSL_ED25519_PUBLIC);

        // Upstream's label for the same bytes.
        let relabelled = OPENSSL_ED25519_KEY.replace("PRIVATE KEY", "ED25519 PRIVATE KEY");
        let ed = load_key_pair(&relabelled).expect("upstream label");
        assert_eq!(hex(ed.public_key_raw()), OPENSSL_ED25519_PUBLIC);

        let pkcs8 = to_pkcs8_pem(OPENSSL_EC_KEY).expect("convert");
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let ec = load_key_pair(&pkcs8).expect("converted key");
        assert_eq!(hex(ec.public_key_raw()), OPENSSL_EC_PUBLIC);
    }

    #[test]
    fn ecdsa_keys_are_written_as_sec1_with_curve_parameters() {
        let pem = generate_private_key_pem(KeyAlgorithm::EcdsaP256).expect("key");
        assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"), "{pem}");
        let block = pem_decode(&pem).expect("pem");
        let fields = der::elements(der::content_of(&block.der, der::SEQUENCE).expect("seq"))
            .expect("fields");
        let tags: Vec<u8> = fields
            .iter()
            .filter_map(|field| field.first().copied())
            .collect();
        assert_eq!(
            tags,
            [der::INTEGER, der::OCTET_STRING, der::CONTEXT_0, 0xa1]
        );
        // P-256 named curve.
        assert_eq!(
            der::content_of(fields[2], der::CONTEXT_0).expect("params"),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        let key = load_key_pair(&pem).expect("loads back");
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn unsupported_keys_are_rejected_with_a_reason() {
        let rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let err = load_key_pair(rsa).expect_err("PKCS#1");
        assert!(err.reason().contains("PKCS#1"), "{err}");
        let cert = os_ca().cert_pem;
        let err = load_key_pair(&cert).expect_err("a certificate");
        assert!(err.reason().contains("CERTIFICATE"), "{err}");
        let err = load_key_pair("").expect_err("empty");
        assert!(err.reason().contains("no PEM block"), "{err}");
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536] {
            let content = vec![0x5a; len];
            let element = der::tlv(der::OCTET_STRING, &content);
            assert_eq!(
                der::content_of(&element, der::OCTET_STRING).expect("parse"),
                content.as_slice()
            );
        }
        assert!(der::content_of(&[0x30, 0x05, 0x00], der::SEQUENCE).is_err());
        assert!(der::content_of(&[0x30, 0x00, 0x00], der::SEQUENCE).is_err());
    }

    #[test]
    fn ca_subject_is_copied_byte_for_byte_into_issued_certs() {
        let ca = os_ca();
        let client =
            issue_client_cert(&ca, &roles(&["os:admin"]), CLIENT_CERT_TTL, now()).expect("client");
        let ca_block = pem_decode(&ca.cert_pem).expect("ca pem");
        let ca_parts = CertParts::split(&ca_block.der).expect("ca parts");
        let block = pem_decode(&client.cert_pem).expect("pem");
        let parts = CertParts::split(&block.der).expect("parts");
        assert_eq!(parts.tbs[parts.issuer_index], ca_parts.subject());
    }
}
