//! TLS for apid: the server side (mTLS, or server-only in maintenance) and
//! the client side used to forward to other nodes.
//!
//! Credentials are read from the node's secrets directory; [`Reloader`]
//! re-reads them when they change and publishes new configs on a watch
//! channel. Each new handshake takes the latest config, so certificates
//! rotate without dropping open connections.
//!
//! Client certificates must chain to the OS CA and carry exactly one
//! extended key usage, ClientAuth (upstream enforces this since v1.12).
//! Ed25519 and ECDSA keys work; TLS 1.2 is the minimum.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use machinery::constants::api_credentials as files;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::watch;

/// Errors loading credentials or building TLS configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material.
    #[error("building the TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the client certificate verifier: {0}")]
    Verifier(String),
    /// The maintenance certificate could not be made.
    #[error("generating the maintenance certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// The key machined wrote for maintenance mode cannot be used.
    #[error("the maintenance key machined wrote: {0}")]
    MaintenanceKey(String),
}

/// The crypto provider (ring) every config uses.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // Upstream writes Ed25519 keys as `ED25519 PRIVATE KEY`; rustls reads PKCS#8.
    let pem = String::from_utf8_lossy(&read(path)?).into_owned();
    let pkcs8 = machinery::pki::to_pkcs8_pem(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(pkcs8.as_bytes()).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

/// The node's API credentials as found on disk.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// OS CA certificates (client certificates chain to these).
    pub ca: Vec<CertificateDer<'static>>,
    /// Server chain.
    pub server_chain: Vec<CertificateDer<'static>>,
    /// Server key.
    pub server_key: Arc<PrivateKeyDer<'static>>,
    /// Client chain and key for forwarding; absent on workers.
    pub client: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl Credentials {
    /// Loads credentials from `dir`; `Ok(None)` when the node has none yet
    /// (no CA: maintenance mode).
    ///
    /// # Errors
    /// Files present but unreadable or malformed.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, TlsError> {
        if !dir.join(files::CA).exists() {
            return Ok(None);
        }
        let client = if dir.join(files::CLIENT_CERT).exists() {
            Some((
                certs(&dir.join(files::CLIENT_CERT))?,
                Arc::new(key(&dir.join(files::CLIENT_KEY))?),
            ))
        } else {
            None
        };
        Ok(Some(Credentials {
            ca: certs(&dir.join(files::CA))?,
            server_chain: certs(&dir.join(files::SERVER_CERT))?,
            server_key: Arc::new(key(&dir.join(files::SERVER_KEY))?),
            client,
        }))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            roots.add(ca.clone())?;
        }
        Ok(Arc::new(roots))
    }
}

/// Accepts client certificates that chain to the OS CA (webpki, which
/// also checks validity times and that ClientAuth is present) and whose leaf
/// has no extended key usage but ClientAuth.
#[derive(Debug)]
struct ClientAuthOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

/// Whether a DER certificate's extended key usage is exactly ClientAuth.
#[must_use]
pub fn eku_is_exactly_client_auth(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = &eku.value;
            e.client_auth
                && !e.any
                && !e.server_auth
                && !e.code_signing
                && !e.email_protection
                && !e.time_stamping
                && !e.ocsp_signing
                && e.other.is_empty()
        }
        _ => false,
    }
}

impl ClientCertVerifier for ClientAuthOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !eku_is_exactly_client_auth(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(EkuError))),
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("client certificate is missing the client auth extended key usage, or has others")]
struct EkuError;

const ALPN_H2: &[u8] = b"h2";

/// The mTLS server config for `creds`.
///
/// # Errors
/// Malformed material.
pub fn server_config(creds: &Credentials) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(creds.roots()?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(ClientAuthOnly { inner });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.server_chain.clone(), creds.server_key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session tickets, as upstream: every connection authenticates.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The maintenance-mode server config: a self-signed certificate for
/// `names`, no client certificate asked for. The key is `key_pem` when
/// given (machined's, whose fingerprint it printed on the console for the
/// operator to pin), else a fresh one.
///
/// # Errors
/// The key cannot be loaded, or certificate generation failed.
pub fn maintenance_config(
    names: &[String],
    key_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let key = match key_pem {
        Some(pem) => machinery::pki::load_key_pair(pem)
            .map_err(|e| TlsError::MaintenanceKey(e.to_string()))?,
        None => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| TlsError::Verifier(e.to_owned()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client config for forwarding to other nodes' apid, if this node
/// has a client certificate.
///
/// # Errors
/// Malformed material.
pub fn forward_config(creds: &Credentials) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let Some((chain, key)) = &creds.client else {
        return Ok(None);
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(creds.roots()?)
        .with_client_auth_cert(chain.clone(), key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// What apid serves with right now.
#[derive(Debug, Clone)]
pub struct TlsState {
    /// The server config for new handshakes; `None` while the node has a
    /// config but no credentials yet (connections are refused meanwhile).
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// Maintenance: no client certificates, everyone os:reader, no forwarding.
    pub maintenance: bool,
    /// Client config for forwarding (None: this node cannot forward).
    pub forward: Option<Arc<rustls::ClientConfig>>,
    /// Bumped on every change (forwarding connections are remade).
    pub generation: u64,
}

/// The maintenance key machined wrote into the marker, if it wrote one.
/// Only an empty marker means "no key" (apid then makes its own); a marker
/// that cannot be read is an error, so that apid never serves a key other
/// than the one machined printed.
fn maintenance_key(dir: &Path) -> Result<Option<String>, TlsError> {
    let path = dir.join(files::MAINTENANCE);
    let pem = std::fs::read_to_string(&path)
        .map_err(|e| TlsError::MaintenanceKey(format!("reading {}: {e}", path.display())))?;
    Ok((!pem.trim().is_empty()).then_some(pem))
}

/// Builds the state for what is in `dir` now: credentials → mTLS; no
/// credentials but the maintenance marker → maintenance; neither → not
/// ready.
///
/// # Errors
/// Malformed credentials.
pub fn load_state(dir: &Path, names: &[String], generation: u64) -> Result<TlsState, TlsError> {
    match Credentials::load(dir)? {
        Some(creds) => Ok(TlsState {
            server: Some(server_config(&creds)?),
            maintenance: false,
            forward: forward_config(&creds)?,
            generation,
        }),
        None if dir.join(files::MAINTENANCE).exists() => Ok(TlsState {
            server: Some(maintenance_config(names, maintenance_key(dir)?.as_deref())?),
            maintenance: true,
            forward: None,
            generation,
        }),
        None => Ok(TlsState {
            server: None,
            maintenance: false,
            forward: None,
            generation,
        }),
    }
}

fn fingerprint(dir: &Path) -> Vec<Option<(SystemTime, u64)>> {
    [
        // The marker too: apid may start before machined writes it.
        files::MAINTENANCE,
        files::CA,
        files::SERVER_CERT,
        files::SERVER_KEY,
        files::CLIENT_CERT,
        files::CLIENT_KEY,
    ]
    .iter()
    .map(|f| {
        std::fs::metadata(dir.join(f))
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    })
    .collect()
}

/// Watches the credentials directory and publishes a new [`TlsState`] when
/// the files change. A change that does not load (half-written files) is
/// retried on the next tick and the old state stays in force meanwhile.
#[derive(Debug)]
pub struct Reloader;

impl Reloader {
    /// Loads now and starts watching `dir` every `period`.
    ///
    /// # Errors
    /// The initial load fails.
    pub fn start(
        dir: PathBuf,
        names: Vec<String>,
        period: Duration,
    ) -> Result<watch::Receiver<TlsState>, TlsError> {
        let mut seen = fingerprint(&dir);
        let (tx, rx) = watch::channel(load_state(&dir, &names, 0)?);
        tokio::spawn(async move {
            let mut generation = 0;
            loop {
                tokio::time::sleep(period).await;
                if tx.is_closed() {
                    return;
                }
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                match load_state(&dir, &names, generation + 1) {
                    Ok(state) => {
                        generation += 1;
                        seen = now;
                        tracing::info!(
                            maintenance = state.maintenance,
                            generation,
                            "API credentials reloaded"
                        );
                        tx.send_replace(state);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "new API credentials do not load yet; keeping the current ones")
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// apid may start before machined has written anything: it serves
    /// nothing then, and takes up the maintenance marker once it appears.
    #[tokio::test]
    async fn a_maintenance_marker_written_after_the_start_is_taken_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = Reloader::start(
            dir.path().to_path_buf(),
            vec!["node".to_owned()],
            Duration::from_millis(20),
        )
        .expect("start");
        assert!(state.borrow().server.is_none());
        assert!(!state.borrow().maintenance);
        std::fs::write(dir.path().join(files::MAINTENANCE), "").expect("marker");
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| s.maintenance && s.server.is_some()),
        )
        .await
        .expect("the marker was not taken up")
        .expect("reloader alive");
    }
}
