//! trustd over real TLS on loopback: token checks, CSR validation, the
//! Organization stripping of CVE-2022-36103, and concurrent signing.

use std::collections::HashSet;

use api::securityapi::CertificateRequest;
use api::securityapi::security_service_client::SecurityServiceClient;
use machinery::pki::{self, ExtKeyUsage};
use tonic::transport::Channel;

type Client = SecurityServiceClient<Channel>;

/// A running trustd and a client for it.
struct Server {
    /// Holds the credentials for as long as the server runs.
    _dir: tempfile::TempDir,
    ca: String,
    token: String,
    client: Client,
    addr: std::net::SocketAddr,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, token) = trustd::testing::write_credentials(dir.path());
    let addr = trustd::testing::start(dir.path()).await;
    let config = machinery::grpc::client_tls_config(ca.as_bytes(), None).expect("client TLS");
    let channel =
        machinery::grpc::tls_channel(addr.to_string(), "127.0.0.1", config).expect("channel");
    Server {
        _dir: dir,
        ca,
        token,
        client: SecurityServiceClient::new(channel),
        addr,
    }
}

fn request(csr: &[u8], token: Option<&str>) -> tonic::Request<CertificateRequest> {
    let mut request = tonic::Request::new(CertificateRequest { csr: csr.to_vec() });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "token",
            tonic::metadata::MetadataValue::try_from(token).expect("ASCII token"),
        );
    }
    request
}

/// A CSR for `worker-1` whose subject asks for the `os:admin` role.
fn greedy_csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["worker-1".to_owned()]).expect("params");
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, "worker-1");
    subject.push(rcgen::DnType::OrganizationName, "os:admin");
    params.distinguished_name = subject;
    params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("CSR PEM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_with_a_good_token_and_strips_organizations() {
    let mut server = start().await;
    let csr = greedy_csr();
    // The request really does ask for a role.
    let asked = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("parse CSR");
    assert!(
        asked
            .params
            .distinguished_name
            .get(&rcgen::DnType::OrganizationName)
            .is_some()
    );

    let token = server.token.clone();
    let reply = server
        .client
        .certificate(request(csr.as_bytes(), Some(token.as_str())))
        .await
        .expect("signing with the right token")
        .into_inner();

    assert_eq!(reply.ca, server.ca.as_bytes());
    let crt = String::from_utf8(reply.crt).expect("PEM text");
    assert!(crt.starts_with("-----BEGIN CERTIFICATE-----"), "{crt}");
    pki::verify_signed_by(crt.as_bytes(), server.ca.as_bytes()).expect("chains to the CA");

    let info = pki::cert_info(crt.as_bytes()).expect("parse certificate");
    assert!(info.organizations.is_empty(), "{:?}", info.organizations);
    assert_eq!(info.ext_key_usages, [ExtKeyUsage::ServerAuth]);
    assert!(info.digital_signature);
    assert!(!info.is_ca);
    assert_eq!(info.common_name.as_deref(), Some("worker-1"));
    assert_eq!(info.dns_names, ["worker-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_missing_and_wrong_tokens() {
    let mut server = start().await;
    let (csr, _key) = pki::generate_csr("worker-1", &[], &[]).expect("CSR");

    let missing = server
        .client
        .certificate(request(csr.as_bytes(), None))
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing:?}");

    let wrong = server
        .client
        .certificate(request(csr.as_bytes(), Some("abcdef.0123456789abcdee")))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_garbage_csr() {
    let mut server = start().await;
    let token = server.token.clone();
    let status = server
        .client
        .certificate(request(b"not a csr", Some(token.as_str())))
        .await
        .expect_err("garbage CSR");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_100_requests_in_parallel() {
    const N: usize = 100;
    let server = start().await;
    let csrs = tokio::task::spawn_blocking(|| {
        (0..N)
            .map(|i| {
                pki::generate_csr(&format!("worker-{i}"), &[], &[])
                    .expect("CSR")
                    .0
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("generating CSRs");

    let tasks: Vec<_> = csrs
        .into_iter()
        .map(|csr| {
            let mut client = server.client.clone();
            let token = server.token.clone();
            tokio::spawn(async move {
                client
                    .certificate(request(csr.as_bytes(), Some(token.as_str())))
                    .await
                    .map(|reply| reply.into_inner().crt)
            })
        })
        .collect();

    let mut serials = HashSet::new();
    for task in tasks {
        let crt = task.await.expect("task").expect("signing");
        pki::verify_signed_by(&crt, server.ca.as_bytes()).expect("chains to the CA");
        let info = pki::cert_info(&crt).expect("parse certificate");
        assert!(
            serials.insert(info.serial.clone()),
            "repeated serial {}",
            info.serial
        );
    }
    assert_eq!(serials.len(), N);
}

/// The token is checked on the headers, before the body is read: a
/// request larger than any limit without the token is refused as
/// unauthenticated, and with the token, a request over 64 KiB is refused
/// before it is parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_before_the_body_is_read() {
    let mut server = start().await;
    let big = vec![b'x'; 5 * 1024 * 1024];
    let status = server
        .client
        .certificate(request(&big, None))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = server
        .client
        .certificate(request(&big, Some("abcdef.0123456789abcdee")))
        .await
        .expect_err("wrong token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let token = server.token.clone();
    let status = server
        .client
        .certificate(request(&vec![b'x'; 100 * 1024], Some(token.as_str())))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}

/// Without a token on the node every caller is refused, with nothing said
/// about the node's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_on_the_node_refuses_everyone() {
    let mut server = start().await;
    let (csr, _key) = pki::generate_csr("worker-1", &[], &[]).expect("CSR");
    let token_file = server
        ._dir
        .path()
        .join(machinery::constants::trustd_credentials::TOKEN);
    std::fs::write(&token_file, "").expect("empty token");
    let token = server.token.clone();
    let status = server
        .client
        .certificate(request(csr.as_bytes(), Some(token.as_str())))
        .await
        .expect_err("empty token on the node");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    std::fs::remove_file(&token_file).expect("remove token");
    let status = server
        .client
        .certificate(request(csr.as_bytes(), Some(token.as_str())))
        .await
        .expect_err("no token file");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "trustd is not ready");
}

/// A good request trustd cannot sign (its CA key is not the CA's) is
/// trustd's failure, Internal, not the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_failure_is_internal() {
    let mut server = start().await;
    let other = pki::generate_os_ca(std::time::SystemTime::now()).expect("another CA");
    std::fs::write(
        server
            ._dir
            .path()
            .join(machinery::constants::trustd_credentials::CA_KEY),
        other.key_pem,
    )
    .expect("write key");
    let (csr, _key) = pki::generate_csr("worker-1", &[], &[]).expect("CSR");
    let token = server.token.clone();
    let status = server
        .client
        .certificate(request(csr.as_bytes(), Some(token.as_str())))
        .await
        .expect_err("mismatched CA key");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status.message().starts_with("failed to sign CSR: "),
        "{status:?}"
    );
    let status = server
        .client
        .certificate(request(b"not a csr", Some(token.as_str())))
        .await
        .expect_err("garbage");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("failed to parse CSR: "),
        "{status:?}"
    );
}

/// A connection that never finishes its TLS handshake is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let _ = trustd::testing::write_credentials(dir.path());
    let addr = trustd::testing::start(dir.path()).await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), idle.read(&mut buf))
        .await
        .expect("closed by trustd well within 30 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// One address cannot take every connection: past MAX_PER_PEER open ones
/// (here idle, mid-handshake), its next is closed at once; once they go,
/// it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let mut server = start().await;
    let mut idle = Vec::new();
    for _ in 0..trustd::MAX_PER_PEER {
        idle.push(
            tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("connect"),
        );
    }
    // Let trustd accept them all.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (csr, _key) = pki::generate_csr("worker-1", &[], &[]).expect("CSR");
    let token = server.token.clone();
    let refused = server
        .client
        .certificate(request(csr.as_bytes(), Some(token.as_str())))
        .await
        .expect_err("one connection too many");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    drop(idle);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server
        .client
        .certificate(request(csr.as_bytes(), Some(token.as_str())))
        .await
        .expect("served again");
}
