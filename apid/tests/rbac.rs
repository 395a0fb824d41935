//! The role matrix and certificate checks, through a real apid over mTLS.

use std::time::{Duration, SystemTime};

use api::roles::{Role, RoleSet};
use machinery::pki;
use testkit::{Pki, client_config, raw_call, raw_client, start_node};

#[tokio::test]
async fn every_machine_method_by_role() {
    let pki = Pki::new();
    let node = start_node(
        "cp-1",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    /// (name, effective roles, extra headers, certificate roles)
    type Identity = (
        &'static str,
        RoleSet,
        Vec<(&'static str, &'static str)>,
        Vec<&'static str>,
    );
    let identities: Vec<Identity> = vec![
        (
            "admin",
            RoleSet::of(&[Role::Admin]),
            vec![],
            vec!["os:admin"],
        ),
        (
            "operator",
            RoleSet::of(&[Role::Operator]),
            vec![],
            vec!["os:operator"],
        ),
        (
            "reader",
            RoleSet::of(&[Role::Reader]),
            vec![],
            vec!["os:reader"],
        ),
        ("no role", RoleSet::EMPTY, vec![], vec![]),
        // GHSA-rjwj-368c-f82r: a role-less certificate plus an injected header.
        (
            "injected talos-role",
            RoleSet::EMPTY,
            vec![("talos-role", "os:admin")],
            vec![],
        ),
    ];
    let methods: Vec<&str> = api::METHODS
        .iter()
        .map(|m| m.path)
        .filter(|p| p.starts_with("/machine.MachineService/"))
        .collect();
    assert!(methods.len() >= 54);
    let mut checked = 0;
    for (name, roles, extra, cert_roles) in &identities {
        let cert = pki.client(cert_roles);
        let client = raw_client(node.addr, client_config(&pki.ca.cert_pem, Some(&cert)));
        for path in &methods {
            let code = raw_call(&client, path, extra)
                .await
                .unwrap_or_else(|e| panic!("{name} {path}: {e}"));
            let denied = code == tonic::Code::PermissionDenied as i32;
            let expected_allowed = api::roles::is_allowed(path, *roles, false);
            assert_eq!(
                !denied, expected_allowed,
                "{name} calling {path}: got status {code}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, methods.len() * identities.len());
}

#[tokio::test]
async fn bad_certificates_are_refused() {
    let pki = Pki::new();
    let node = start_node(
        "cp-1",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&pki, false)),
    )
    .await;
    let version = "/machine.MachineService/Version";

    // A good admin certificate gets through (the control).
    let good = raw_client(
        node.addr,
        client_config(&pki.ca.cert_pem, Some(&pki.client(&["os:admin"]))),
    );
    assert_eq!(raw_call(&good, version, &[]).await, Ok(0));

    let other = Pki::new();
    let expired = pki::issue_client_cert(
        &pki.ca,
        &["os:admin".into()],
        Duration::from_secs(3600),
        SystemTime::now() - Duration::from_secs(86_400 * 2),
    )
    .expect("expired cert");
    let server_auth_only = pki::issue_server_cert(
        &pki.ca,
        "sneaky",
        &[],
        &[],
        Duration::from_secs(3600),
        SystemTime::now(),
    )
    .expect("server cert");
    let cases = [
        (
            "no client certificate",
            client_config(&pki.ca.cert_pem, None),
        ),
        (
            "certificate from another CA",
            client_config(&pki.ca.cert_pem, Some(&other.client(&["os:admin"]))),
        ),
        (
            "expired certificate",
            client_config(&pki.ca.cert_pem, Some(&expired)),
        ),
        (
            "ServerAuth-only certificate",
            client_config(&pki.ca.cert_pem, Some(&server_auth_only)),
        ),
    ];
    for (what, config) in cases {
        let client = raw_client(node.addr, config);
        let result = raw_call(&client, version, &[]).await;
        assert!(result.is_err(), "{what} was let in: {result:?}");
    }
}

#[tokio::test]
async fn maintenance_mode_everyone_reads_and_may_apply() {
    let node = start_node("fresh", "127.0.0.1:0".parse().expect("addr"), None).await;
    // No credentials: server-only TLS with a self-signed certificate. The
    // client cannot verify it (as talosctl --insecure does not).
    let config = insecure_client();
    let client = raw_client(node.addr, config);
    assert_eq!(
        raw_call(&client, "/machine.MachineService/Version", &[]).await,
        Ok(0)
    );
    // Apply is allowed (it fails on the empty config, not on access).
    assert_eq!(
        raw_call(&client, "/machine.MachineService/ApplyConfiguration", &[]).await,
        Ok(tonic::Code::InvalidArgument as i32)
    );
    // Admin-only methods are not.
    assert_eq!(
        raw_call(&client, "/machine.MachineService/Read", &[]).await,
        Ok(tonic::Code::PermissionDenied as i32)
    );
    // No forwarding in maintenance: a node header is served locally.
    assert_eq!(
        raw_call(
            &client,
            "/machine.MachineService/Hostname",
            &[("node", "10.255.255.1")]
        )
        .await,
        Ok(0)
    );
}

fn insecure_client() -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAny;
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            apid::tls::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(apid::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

#[tokio::test]
async fn certificates_hot_reload_without_dropping_connections() {
    let first = Pki::new();
    let node = start_node(
        "cp-1",
        "127.0.0.1:0".parse().expect("addr"),
        Some((&first, false)),
    )
    .await;
    let version = "/machine.MachineService/Version";
    let old = raw_client(
        node.addr,
        client_config(&first.ca.cert_pem, Some(&first.client(&["os:admin"]))),
    );
    assert_eq!(raw_call(&old, version, &[]).await, Ok(0));

    // Rotate to a new CA and server certificate.
    let second = Pki::new();
    second.write_credentials(&node.paths.secrets_dir("api"), false, node.addr.ip());
    let new = raw_client(
        node.addr,
        client_config(&second.ca.cert_pem, Some(&second.client(&["os:admin"]))),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while raw_call(&new, version, &[]).await != Ok(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "new credentials never took effect"
        );
        new.reset().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the rotation still works...
    assert_eq!(
        raw_call(&old, version, &[]).await,
        Ok(0),
        "open connection dropped by the reload"
    );
    // ...but a new connection with the old CA is refused.
    let stale = raw_client(
        node.addr,
        client_config(&first.ca.cert_pem, Some(&first.client(&["os:admin"]))),
    );
    assert!(raw_call(&stale, version, &[]).await.is_err());
}
