//! trustd: signs workers' certificate requests on control planes.
//!
//! Serves `securityapi.SecurityService/Certificate` on TCP :50001 with
//! server-only TLS. A caller proves membership with the machine token in the
//! `token` metadata, compared in constant time. The CSR is signed with the
//! OS CA after every Organization is stripped from its subject
//! (CVE-2022-36103: a worker's token must never yield a role-bearing
//! certificate), with key usage DigitalSignature and extended key usage
//! ServerAuth only.
//!
//! Credentials (CA, CA key, server certificate, token) are read from the
//! node's secrets directory for every connection and call, so rotation
//! needs no restart.
//!
//! Nothing is read or decoded for a caller before its token is checked
//! (on the request's headers: the body is only read for a good token, and
//! is at most 64 KiB). A connection has 10 s for its TLS handshake and
//! lives at most 30 s (a worker makes one call); at most
//! [`MAX_CONNECTIONS`] are open at once, [`MAX_PER_PEER`] from one
//! address, and a failed accept (no file descriptors left) backs off. Every call is logged with its caller's
//! address, what it asked for and what was issued.
#![forbid(unsafe_code)]

pub mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::securityapi::security_service_server::{SecurityService, SecurityServiceServer};
use api::securityapi::{CertificateRequest, CertificateResponse};
use machinery::constants::trustd_credentials as files;
use machinery::pki::{self, CertificateAndKey};
use rustls_pki_types::pem::PemObject as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status};

/// Connections open at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one address: a worker needs one, and one
/// caller must not take every slot.
pub const MAX_PER_PEER: usize = 8;
/// How long a caller has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay open: a worker makes one call.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// The largest request: a CSR is under 2 KiB.
const MAX_REQUEST: usize = 64 * 1024;

/// Errors loading trustd's credentials.
#[derive(Debug, thiserror::Error)]
pub enum TrustdError {
    /// A file is missing or unreadable.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS material does not load.
    #[error("building trustd's TLS config: {0}")]
    Tls(String),
}

/// What trustd signs with.
#[derive(Clone)]
pub struct Credentials {
    /// The OS CA and its key.
    pub ca: CertificateAndKey,
    /// The machine token.
    pub token: String,
    /// trustd's own server certificate (PEM).
    pub server_cert: String,
    /// Its key (PEM).
    pub server_key: String,
}

impl std::fmt::Debug for Credentials {
    /// Keys and the token are left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ca", &self.ca)
            .field("server_cert", &self.server_cert)
            .finish_non_exhaustive()
    }
}

fn read(dir: &Path, name: &str) -> Result<String, TrustdError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| TrustdError::Read { path, source })
}

impl Credentials {
    /// Loads the credentials from `dir`.
    ///
    /// # Errors
    /// A file is missing or unreadable.
    pub fn load(dir: &Path) -> Result<Credentials, TrustdError> {
        Ok(Credentials {
            ca: CertificateAndKey {
                cert_pem: read(dir, files::CA)?,
                key_pem: read(dir, files::CA_KEY)?,
            },
            token: read(dir, files::TOKEN)?.trim().to_owned(),
            server_cert: read(dir, files::SERVER_CERT)?,
            server_key: read(dir, files::SERVER_KEY)?,
        })
    }

    /// The server-only TLS config.
    ///
    /// # Errors
    /// Malformed material.
    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, TrustdError> {
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrustdError::Tls(e.to_string()))?;
        let key =
            pki::to_pkcs8_pem(&self.server_key).map_err(|e| TrustdError::Tls(e.to_string()))?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| TrustdError::Tls(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TrustdError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TrustdError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Compares tokens in constant time: both are hashed first, so neither the
/// content nor the length leaks through timing.
#[must_use]
pub fn token_matches(given: &str, expected: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0 && !expected.is_empty()
}

/// The SecurityService.
#[derive(Debug, Clone)]
pub struct Trustd {
    dir: PathBuf,
    /// Signs as if the clock said this (tests: a node whose clock is
    /// wrong); `None`: the clock.
    signing_time: Option<SystemTime>,
}

impl Trustd {
    /// Serves with the credentials in `dir`.
    #[must_use]
    pub fn new(dir: PathBuf) -> Trustd {
        Trustd {
            dir,
            signing_time: None,
        }
    }
}

/// The caller's address, for the log.
fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// Checks the caller's token on the request's headers, before its body is
/// read: a caller without the token gets nothing else from trustd.
fn check_token(dir: &Path, request: &Request<()>) -> Result<(), Status> {
    let given = request
        .metadata()
        .get("token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let refuse = |message: &str| {
        tracing::warn!(peer = %peer(request), "certificate request refused: {message}");
        Err(Status::unauthenticated(message.to_owned()))
    };
    if given.is_empty() {
        return refuse("missing token");
    }
    let expected = match read(dir, files::TOKEN) {
        Ok(token) => token,
        Err(e) => {
            // The detail stays in the node's log.
            tracing::warn!(error = %e, "certificate request refused: no token to compare with");
            return Err(Status::unavailable("trustd is not ready"));
        }
    };
    if !token_matches(given, expected.trim()) {
        return refuse("invalid token");
    }
    Ok(())
}

#[tonic::async_trait]
impl SecurityService for Trustd {
    /// The token was checked by [`service`]'s interceptor.
    async fn certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let peer = peer(&request);
        let creds = Credentials::load(&self.dir).map_err(|e| {
            tracing::warn!(%peer, error = %e, "certificate request failed: credentials");
            Status::unavailable("trustd is not ready")
        })?;
        let csr = String::from_utf8(request.into_inner().csr)
            .map_err(|_| Status::invalid_argument("failed to decode CSR: not PEM text"))?;
        let ca = creds.ca.clone();
        let signing_time = self.signing_time.unwrap_or_else(SystemTime::now);
        // Parsing and signing are CPU work: off the async runtime.
        let signed = tokio::task::spawn_blocking(move || {
            let asked = pki::csr_names(&csr)
                .map_err(|e| Status::invalid_argument(format!("failed to parse CSR: {e}")))?;
            pki::sign_csr(&ca, &csr, pki::SERVER_CERT_TTL, signing_time)
                .map(|crt| (asked, crt))
                .map_err(|e| Status::internal(format!("failed to sign CSR: {e}")))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (asked, crt) = signed.inspect_err(|status| {
            tracing::warn!(%peer, error = %status.message(), "certificate request failed");
        })?;
        let issued = pki::cert_info(crt.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(
            %peer,
            subject = ?asked.common_name,
            dns = ?issued.dns_names,
            ips = ?issued.ip_addresses,
            refused_organizations = ?asked.organizations,
            serial = %issued.serial,
            not_after = ?issued.not_after,
            "issued a server certificate"
        );
        Ok(Response::new(CertificateResponse {
            ca: creds.ca.cert_pem.into_bytes(),
            crt: crt.into_bytes(),
        }))
    }
}

/// The interceptor of [`service`]: the token checked against `dir`'s.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    dir: PathBuf,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        check_token(&self.dir, &request)?;
        Ok(request)
    }
}

/// The SecurityService for the credentials in `dir`: the token checked
/// before the body is read, requests of at most 64 KiB.
#[must_use]
pub fn service(dir: PathBuf) -> InterceptedService<SecurityServiceServer<Trustd>, TokenCheck> {
    wrap(Trustd::new(dir))
}

fn wrap(trustd: Trustd) -> InterceptedService<SecurityServiceServer<Trustd>, TokenCheck> {
    let dir = trustd.dir.clone();
    let server = SecurityServiceServer::new(trustd).max_decoding_message_size(MAX_REQUEST);
    InterceptedService::new(server, TokenCheck { dir })
}

/// Accepts TLS connections on `listener` and serves the SecurityService.
pub async fn serve(dir: PathBuf, listener: tokio::net::TcpListener) {
    serve_trustd(Trustd::new(dir), listener).await;
}

async fn serve_trustd(trustd: Trustd, listener: tokio::net::TcpListener) {
    let dir = trustd.dir.clone();
    let routes = tonic::service::Routes::new(wrap(trustd));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let peers: Peers = Arc::default();
    let local = listener.local_addr().ok();
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to
                // close rather than spin.
                tracing::warn!(error = %e, ?backoff, "accepting a connection");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(peer_slot) = PeerSlot::take(&peers, addr.ip()) else {
            tracing::debug!(%addr, "refusing a connection: too many from this address");
            continue;
        };
        // Small replies: without this, Nagle and delayed ACKs add ~40 ms.
        let _ = tcp.set_nodelay(true);
        let dir = dir.clone();
        let routes = routes.clone();
        tokio::spawn(async move {
            let _peer_slot = peer_slot;
            connection(dir, routes, tcp, addr, local, slot).await;
        });
    }
}

/// Open connections by caller address.
type Peers = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One of [`MAX_PER_PEER`] connections of an address, given back on drop.
struct PeerSlot {
    peers: Peers,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, unless it has [`MAX_PER_PEER`] already.
    fn take(peers: &Peers, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut open = peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(ip).or_default();
        if *count >= MAX_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(peers),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One caller's connection, bounded in time; `slot` is given back when it
/// ends.
async fn connection(
    dir: PathBuf,
    routes: tonic::service::Routes,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    local: Option<SocketAddr>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _slot = slot;
    let config = match Credentials::load(&dir).and_then(|c| c.tls_config()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "refusing connection");
            return;
        }
    };
    let tls = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "TLS handshake timed out");
            return;
        }
    };
    // The caller's address, for the handler's log (`Request::remote_addr`).
    let info = TcpConnectInfo {
        local_addr: local,
        remote_addr: Some(addr),
    };
    let service = tower::ServiceExt::map_request(routes, move |mut request: http::Request<_>| {
        request.extensions_mut().insert(info.clone());
        request
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let served = machinery::h2::server_builder()
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    if tokio::time::timeout(CONNECTION_LIFETIME, served)
        .await
        .is_err()
    {
        tracing::debug!(%addr, "connection closed: open too long");
    }
}

/// Helpers for trustd's integration tests and benchmarks (not used by the
/// daemon): throwaway credentials in a directory, and a server on an
/// ephemeral loopback port. They panic on failure, as test code does.
pub mod testing {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::path::Path;
    use std::time::SystemTime;

    use machinery::constants::trustd_credentials as files;
    use machinery::pki;

    /// The machine token [`write_credentials`] writes.
    pub const TOKEN: &str = "abcdef.0123456789abcdef";

    /// Writes a fresh OS CA and its key, a server certificate for
    /// 127.0.0.1 issued by that CA and its key, and [`TOKEN`] into `dir`.
    /// Returns `(ca_pem, token)`.
    ///
    /// # Panics
    /// Generating the material or writing a file fails.
    #[must_use]
    pub fn write_credentials(dir: &Path) -> (String, String) {
        let now = SystemTime::now();
        let ca = pki::generate_os_ca(now).expect("generating the OS CA");
        let server = pki::issue_server_cert(
            &ca,
            "trustd",
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            &[],
            pki::SERVER_CERT_TTL,
            now,
        )
        .expect("issuing trustd's server certificate");
        for (name, contents) in [
            (files::CA, ca.cert_pem.as_str()),
            (files::CA_KEY, ca.key_pem.as_str()),
            (files::SERVER_CERT, server.cert_pem.as_str()),
            (files::SERVER_KEY, server.key_pem.as_str()),
            (files::TOKEN, TOKEN),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        (ca.cert_pem, TOKEN.to_owned())
    }

    /// Binds 127.0.0.1 on an ephemeral port and spawns [`super::serve`]
    /// with the credentials in `dir` on the current tokio runtime (the
    /// server lives as long as the runtime). Returns the bound address.
    ///
    /// # Panics
    /// Binding fails, or there is no tokio runtime.
    pub async fn start(dir: &Path) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(super::serve(dir.to_path_buf(), listener));
        addr
    }

    /// As [`start`], on `ip`, signing as if the clock said `at`: a control
    /// plane whose clock is wrong.
    ///
    /// # Panics
    /// Binding fails, or there is no tokio runtime.
    pub async fn start_signing_at(dir: &Path, ip: IpAddr, at: SystemTime) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("binding an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let trustd = super::Trustd {
            dir: dir.to_path_buf(),
            signing_time: Some(at),
        };
        tokio::spawn(super::serve_trustd(trustd, listener));
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(token_matches(
            "abcdef.0123456789abcdef",
            "abcdef.0123456789abcdef"
        ));
        assert!(!token_matches(
            "abcdef.0123456789abcdee",
            "abcdef.0123456789abcdef"
        ));
        assert!(!token_matches("", "abcdef.0123456789abcdef"));
        assert!(!token_matches("", ""));
    }
}
