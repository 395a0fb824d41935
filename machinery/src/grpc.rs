//! gRPC client plumbing shared by the daemons, talosctl and the tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors connecting to a gRPC server.
#[derive(Debug, thiserror::Error)]
#[error("connecting to {target}: {source}")]
pub struct ConnectError {
    /// What was dialled.
    pub target: String,
    /// The cause.
    pub source: tonic::transport::Error,
}

/// A channel to a gRPC server on a unix socket that connects on first use
/// (and reconnects after the server restarts).
#[must_use]
pub fn unix_channel_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.to_path_buf()))
}

/// Connects to a gRPC server on a unix socket.
///
/// # Errors
/// The socket does not answer.
pub async fn unix_channel(path: &Path) -> Result<Channel, ConnectError> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
        .map_err(|source| ConnectError {
            target: path.display().to_string(),
            source,
        })
}

fn endpoint() -> Endpoint {
    // The authority is a placeholder: the connector ignores it.
    Endpoint::from_static("http://localhost")
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<crate::uds::Stream>,
    Error = std::io::Error,
    Future: Send,
> + Clone {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { crate::uds::Stream::connect(path).await.map(TokioIo::new) }
    })
}

/// A channel to `addr` over TLS with `config` (ALPN h2 is set here),
/// verifying the server as `server_name`. Connects on first use.
///
/// # Errors
/// `server_name` is not a valid DNS name or IP address.
pub fn tls_channel(
    addr: String,
    server_name: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Channel, InvalidServerName> {
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|_| InvalidServerName(server_name.to_owned()))?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let service = tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        let name = name.clone();
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint().connect_with_connector_lazy(service))
}

/// A server name that is neither a DNS name nor an IP address.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid server name (a DNS name or an IP address)")]
pub struct InvalidServerName(pub String);

/// Which part of the TLS material was unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA certificates.
    #[error("ca: {0}")]
    Ca(String),
    /// The client certificate.
    #[error("crt: {0}")]
    Crt(String),
    /// The client key.
    #[error("key: {0}")]
    Key(String),
    /// rustls refused the combination.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// A client TLS config trusting only the CA certificates in `ca_pem`,
/// presenting `client` (certificate PEM, key PEM in any label upstream
/// writes) when given. ALPN h2 is set by [`tls_channel`].
///
/// # Errors
/// Malformed or mismatched material, naming which part.
pub fn client_tls_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsConfigError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsConfigError::Ca(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsConfigError::Ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::Ca("no certificate in it".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsConfigError::Setup(e.to_string()))?
    .with_root_certificates(roots);
    let config = match client {
        Some((crt, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(crt)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsConfigError::Crt(e.to_string()))?;
            let key = crate::pki::to_pkcs8_pem(&String::from_utf8_lossy(key))
                .map_err(|e| TlsConfigError::Key(e.to_string()))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| TlsConfigError::Key(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsConfigError::Setup(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(std::sync::Arc::new(config))
}
