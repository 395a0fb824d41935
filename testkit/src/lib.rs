//! Test and benchmark harness: a node in-process (machined's API, routerd
//! and apid on real sockets), credentials from machinery's PKI, and TLS
//! clients. Used by the integration tests and the benchmarks.
#![forbid(unsafe_code)]
#![allow(
    missing_debug_implementations,
    clippy::missing_panics_doc,
    reason = "test harness"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use machinery::constants::{NodePaths, api_credentials as files};
use machinery::h2::{H2Client, boxed, grpc_frame};
use machinery::pki::{self, CertificateAndKey};

pub struct Pki {
    pub ca: CertificateAndKey,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// A fresh OS CA.
    pub fn new() -> Pki {
        Pki {
            ca: pki::generate_os_ca(SystemTime::now()).expect("CA"),
        }
    }

    pub fn client(&self, roles: &[&str]) -> CertificateAndKey {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        pki::issue_client_cert(&self.ca, &roles, pki::CLIENT_CERT_TTL, SystemTime::now())
            .expect("client cert")
    }

    /// A server certificate for 127.0.0.1, localhost and `ip`.
    pub fn server(&self, ip: std::net::IpAddr) -> CertificateAndKey {
        let ips = [std::net::IpAddr::from([127, 0, 0, 1]), ip];
        pki::issue_server_cert(
            &self.ca,
            "node",
            &ips,
            &["localhost".into()],
            pki::SERVER_CERT_TTL,
            SystemTime::now(),
        )
        .expect("server cert")
    }

    /// Writes a node's API credentials (server cert, and a forwarding client
    /// cert unless `worker`).
    pub fn write_credentials(&self, dir: &std::path::Path, worker: bool, ip: std::net::IpAddr) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let server = self.server(ip);
        let write = |name: &str, text: &str| {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, dir.join(name)).expect("rename");
        };
        if !worker {
            let client = self.client(&["os:impersonator"]);
            write(files::CLIENT_CERT, &client.cert_pem);
            write(files::CLIENT_KEY, &client.key_pem);
        }
        write(files::SERVER_CERT, &server.cert_pem);
        write(files::SERVER_KEY, &server.key_pem);
        write(files::CA, &self.ca.cert_pem);
    }
}

pub fn client_config(
    ca_pem: &str,
    client: Option<&CertificateAndKey>,
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(apid::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = pki::to_pkcs8_pem(&c.key_pem).expect("pkcs8");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A raw HTTP/2 client over TLS: for matrix tests that only look at the
/// status a call gets.
pub fn raw_client(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> H2Client {
    let connector = tokio_rustls::TlsConnector::from(config);
    H2Client::new(addr.to_string(), move || {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector
                .connect(
                    rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name"),
                    tcp,
                )
                .await?;
            Ok(tls)
        }
    })
}

/// Calls `path` with an empty request message and returns the gRPC status
/// code in the response head (0 when the call was let through and the
/// answer streams or completes without a head status), or Err when the
/// connection itself was refused.
pub async fn raw_call(
    client: &H2Client,
    path: &str,
    extra: &[(&'static str, &'static str)],
) -> Result<i32, String> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req
        .body(boxed(http_body_util::Full::new(grpc_frame(b""))))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.send(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if let Some(code) = resp.headers().get("grpc-status") {
        return Ok(code
            .to_str()
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1));
    }
    // Let through: a real answer is streaming back. That is all we need.
    Ok(0)
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub paths: NodePaths,
    pub addr: SocketAddr,
    /// machined's runtime state (log buffers, events, config).
    pub machine: Arc<machined::node::Node>,
}

/// machined's API + routerd + apid for one node, apid on `listen`
/// (port 0: any), credentials in the node's secrets dir if `pki` is given.
pub async fn start_node(hostname: &str, listen: SocketAddr, pki: Option<(&Pki, bool)>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = NodePaths::under(dir.path());
    let options = machined::node::NodeOptions {
        mode: machined::node::Mode::Container,
        root: dir.path().to_path_buf(),
        hostname: Some(hostname.into()),
        bin_dir: Some(PathBuf::from("/nonexistent")),
        apid_listen: None,
        trustd_listen: None,
    };
    let logs = Arc::new(machined::logbuf::LogRegistry::new(1024 * 1024, None));
    let log = logs.get_or_create("ticker");
    log.append(format!("hello from {hostname}\n").as_bytes());
    let config = Arc::new(
        machined::configstore::ConfigStore::load(dir.path().join("none.yaml")).expect("config"),
    );
    let node = Arc::new(machined::node::Node::new(options, logs, config));
    std::fs::create_dir_all(paths.socket_dir("machined")).expect("mkdir");
    let listener = tokio::net::UnixListener::bind(paths.socket("machined")).expect("bind machined");
    tokio::spawn(machined::run::serve_api(
        Arc::clone(&node),
        listener,
        std::future::pending(),
    ));
    let router = routerd::Router::new(&paths).expect("router");
    let rl = routerd::bind(&paths.socket("routerd")).expect("bind routerd");
    tokio::spawn(router.serve(rl, std::future::pending()));

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind apid");
    let addr = listener.local_addr().expect("addr");
    match pki {
        Some((pki, worker)) => pki.write_credentials(&paths.secrets_dir("api"), worker, addr.ip()),
        None => {
            std::fs::create_dir_all(paths.secrets_dir("api")).expect("mkdir");
            std::fs::write(
                paths
                    .secrets_dir("api")
                    .join(machinery::constants::api_credentials::MAINTENANCE),
                "",
            )
            .expect("marker");
        }
    }
    let names = vec![hostname.to_owned(), addr.ip().to_string(), addr.to_string()];
    let tls = apid::tls::Reloader::start(
        paths.secrets_dir("api"),
        names.clone(),
        Duration::from_millis(200),
    )
    .expect("tls");
    let options = apid::Options {
        listen: addr,
        routerd: paths.socket("routerd"),
        credentials: paths.secrets_dir("api"),
        self_names: names,
        peer_port: addr.port(),
    };
    tokio::spawn(apid::Apid::new(options, tls).serve(listener, std::future::pending()));
    Node {
        dir,
        paths,
        addr,
        machine: node,
    }
}

pub fn bytes_of(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The running children of `parent`: PID and process name (the `comm` of
/// `/proc/PID/stat`), from a scan of `/proc`.
#[must_use]
pub fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (comm) STATE PPID ...": comm may hold spaces and parens.
        let (Some((head, _)), Some((_, rest))) = (stat.split_once(" ("), stat.rsplit_once(") "))
        else {
            continue;
        };
        let comm = &stat[head.len() + 2..stat.len() - rest.len() - 2];
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push((pid, comm.to_owned()));
        }
    }
    children
}
