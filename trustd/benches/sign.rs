//! trustd signing benchmark. Run: `cargo bench -p trustd --bench sign`.
//!
//! One trustd on loopback (real TLS, credentials read from disk per call, as
//! in production), one client connection. Measures the p50 latency of
//! sequential signings and the throughput with 16 requests in flight. The
//! CSRs are generated beforehand, so only trustd's work (and the round
//! trip) is timed. Without `--bench` (e.g. `cargo test --benches`) it does
//! nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::securityapi::CertificateRequest;
use api::securityapi::security_service_client::SecurityServiceClient;
use tonic::transport::Channel;

type Client = SecurityServiceClient<Channel>;

const CSRS: usize = 400;
const SEQUENTIAL: usize = 200;
const IN_FLIGHT: usize = 16;

async fn sign(client: &mut Client, csr: &str, token: &str) {
    let mut request = tonic::Request::new(CertificateRequest {
        csr: csr.as_bytes().to_vec(),
    });
    request.metadata_mut().insert(
        "token",
        tonic::metadata::MetadataValue::try_from(token).expect("ASCII token"),
    );
    let reply = client.certificate(request).await.expect("signing");
    assert!(!reply.into_inner().crt.is_empty(), "empty certificate");
}

async fn run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, token) = trustd::testing::write_credentials(dir.path());
    let addr = trustd::testing::start(dir.path()).await;
    let config = machinery::grpc::client_tls_config(ca.as_bytes(), None).expect("client TLS");
    let mut client = SecurityServiceClient::new(
        machinery::grpc::tls_channel(addr.to_string(), "127.0.0.1", config).expect("channel"),
    );

    let csrs: Arc<Vec<String>> = Arc::new(
        tokio::task::spawn_blocking(|| {
            (0..CSRS)
                .map(|i| {
                    machinery::pki::generate_csr(&format!("worker-{i}"), &[], &[])
                        .expect("CSR")
                        .0
                })
                .collect::<Vec<String>>()
        })
        .await
        .expect("generating CSRs"),
    );

    // Warm-up: connect and handshake outside the measurement.
    for csr in csrs.iter().take(10) {
        sign(&mut client, csr, &token).await;
    }

    let mut latencies: Vec<Duration> = Vec::with_capacity(SEQUENTIAL);
    for csr in csrs.iter().take(SEQUENTIAL) {
        let start = Instant::now();
        sign(&mut client, csr, &token).await;
        latencies.push(start.elapsed());
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    println!(
        "trustd sequential: p50 = {:.3} ms ({SEQUENTIAL} calls)",
        p50.as_secs_f64() * 1e3
    );

    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let mut client = client.clone();
            let csrs = Arc::clone(&csrs);
            let next = Arc::clone(&next);
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(csr) = csrs.get(i) else { break };
                    sign(&mut client, csr, &token).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let wall = start.elapsed();
    println!(
        "trustd parallel ({IN_FLIGHT} in flight): {:.0} signings/s ({CSRS} calls in {:.3} s)",
        CSRS as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}
