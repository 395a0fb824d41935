//! A client in another language: Python grpcio, with stubs generated from
//! our `.proto` files, calls Version through apid over mTLS. We are plain
//! gRPC. (scripts/setup installs grpcio and grpcio-tools.)
//!
//! grpcio's TLS (BoringSSL) does not offer Ed25519 signatures in the
//! handshake, so this node runs on ECDSA P-256 credentials, which apid
//! serves as well as Ed25519 ones. (Upstream Talos's default Ed25519
//! certificates have the same limit with grpcio.)

use std::process::Command;

use machinery::constants::api_credentials as files;
use testkit::start_node;

fn ecdsa_ca() -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "talos");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.clone().self_signed(&key).expect("ca").pem();
    (params, key, pem)
}

fn ecdsa_leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    sans: Vec<String>,
    org: Option<&str>,
    eku: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(sans).expect("params");
    if let Some(o) = org {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o);
    }
    params.extended_key_usages = vec![eku];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    (
        params.signed_by(&key, issuer).expect("sign").pem(),
        key.serialize_pem(),
    )
}

const CLIENT: &str = r#"
import sys
import grpc
sys.path.insert(0, sys.argv[1])
from machine import machine_pb2, machine_pb2_grpc
from google.protobuf import empty_pb2

target = sys.argv[5]
ca, crt, key = [open(p, "rb").read() for p in sys.argv[2:5]]
creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=crt)
with grpc.secure_channel(target, creds) as channel:
    stub = machine_pb2_grpc.MachineServiceStub(channel)
    reply = stub.Version(empty_pb2.Empty(), timeout=10)
    v = reply.messages[0]
    print(v.version.tag, v.platform.mode)
    try:
        next(stub.Read(machine_pb2.ReadRequest(path="/etc/hostname"), timeout=10))
    except grpc.RpcError as e:
        print(e.code().name)
"#;

#[tokio::test]
async fn python_grpcio_calls_version_through_apid() {
    let node = start_node("py-node", "127.0.0.1:0".parse().expect("addr"), None).await;
    let (ca_params, ca_key, ca_pem) = ecdsa_ca();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let (server_crt, server_key) = ecdsa_leaf(
        &issuer,
        vec!["127.0.0.1".into()],
        None,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_crt, client_key) = ecdsa_leaf(
        &issuer,
        vec![],
        Some("os:reader"),
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let secrets = node.paths.secrets_dir("api");
    std::fs::write(secrets.join(files::SERVER_CERT), &server_crt).expect("write");
    std::fs::write(secrets.join(files::SERVER_KEY), &server_key).expect("write");
    std::fs::write(secrets.join(files::CA), &ca_pem).expect("write");
    std::fs::remove_file(secrets.join(files::MAINTENANCE)).expect("leave maintenance");
    // apid polls its credentials every 200 ms in these tests.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;

    let work = tempfile::tempdir().expect("tempdir");
    let stubs = work.path().join("stubs");
    std::fs::create_dir_all(&stubs).expect("mkdir");
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/proto");
    let protos = [
        "common/common.proto",
        "machine/machine.proto",
        "google/rpc/status.proto",
    ];
    let out = Command::new("python3")
        .args([
            "-m",
            "grpc_tools.protoc",
            &format!("-I{proto_root}"),
            &format!("--python_out={}", stubs.display()),
            &format!("--grpc_python_out={}", stubs.display()),
        ])
        .args(protos)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "generating Python stubs failed (is grpcio-tools installed? scripts/setup installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A reader: Version is allowed, Read (admin only) is not.
    let files = [
        ("ca.crt", ca_pem.clone()),
        ("client.crt", client_crt),
        ("client.key", client_key),
    ];
    for (name, text) in &files {
        std::fs::write(work.path().join(name), text).expect("write");
    }
    let script = work.path().join("client.py");
    std::fs::write(&script, CLIENT).expect("script");
    let addr = node.addr.to_string();
    let output = tokio::task::spawn_blocking({
        let work = work.path().to_path_buf();
        move || {
            Command::new("python3")
                .arg(&script)
                .arg(&stubs)
                .arg(work.join("ca.crt"))
                .arg(work.join("client.crt"))
                .arg(work.join("client.key"))
                .arg(addr)
                .output()
                .expect("python3 runs")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("v{} container", machinery::constants::VERSION).as_str(),
            "PERMISSION_DENIED"
        ]
    );
}
