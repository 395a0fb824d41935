//! The node's API credentials, kept in step with the machine config.
//!
//! - No config: the maintenance marker for apid, nothing else.
//! - Control plane (the config holds the OS CA key): machined issues apid's
//!   server certificate (24 h, renewed at half life; SANs = the node's
//!   addresses, hostname, `machine.certSANs` and the host of
//!   `cluster.controlPlane.endpoint`, which workers reach trustd by), the
//!   node's forwarding client certificate (`os:impersonator`), and trustd's
//!   credentials.
//! - Worker: asks trustd on the host of `cluster.controlPlane.endpoint`
//!   (token in metadata, CSR without any Organization; every address the
//!   name resolves to is tried) for a server certificate, 10 s an attempt,
//!   with retries; the reply is checked (for this key, from a trusted CA,
//!   for servers) before it is written. Workers get no client certificate,
//!   so they never forward.
//! - Issued again at half life, when the node's addresses change, and when
//!   the clock is first synced or jumps (timed's marker and epoch): a
//!   certificate made while the clock was wrong (a board without a
//!   real-time clock boots in 1970) would otherwise be refused until its
//!   renewal.
//!
//! apid's `ca.crt` is every CA the config trusts (`machine.ca`, then
//! `machine.acceptedCAs`), so a CA can be rotated without a moment in which
//! the old or the new one is refused.
//!
//! Files are written atomically into `/system/secrets/<component>` (mode
//! 0600 for keys); apid and trustd pick changes up without a restart.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use machinery::config::MachineConfig;
use machinery::constants::{api_credentials as api_files, trustd_credentials as trustd_files};
use machinery::pki::{self, CertificateAndKey};

use crate::node::Node;

/// Errors keeping credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Issuing failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// trustd could not be reached or refused.
    #[error("requesting a certificate from trustd: {0}")]
    Trustd(String),
    /// The config's CA is unusable.
    #[error("the machine config's CA: {0}")]
    Ca(String),
    /// The blocking task making the maintenance key failed.
    #[error("making the maintenance key: {0}")]
    MaintenanceKey(String),
}

fn write_atomic(dir: &Path, name: &str, data: &[u8], secret: bool) -> Result<(), CredentialsError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(|source| CredentialsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    // Readers (apid, trustd) must never see half a key.
    machinery::fsutil::write_atomic(&dir.join(name), data, if secret { 0o600 } else { 0o644 })
        .map_err(|e| CredentialsError::Write {
            path: e.path,
            source: e.source,
        })
}

fn remove(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(name));
}

/// The node's addresses and names for certificate SANs: loopback, apid's
/// listen address, what networkd reports, the hostname and `certSANs`.
fn sans(node: &Node, config: &MachineConfig) -> (Vec<IpAddr>, Vec<String>) {
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    if let Some(listen) = node.options.apid_listen
        && !listen.ip().is_unspecified()
    {
        ips.push(listen.ip());
    }
    // The addresses networkd reports (one per line); on metal these are the
    // node's real addresses. Read at each issue: renewals pick up changes.
    let reported = std::fs::read_to_string(node.paths.socket_dir("networkd").join("addresses"))
        .unwrap_or_default();
    ips.extend(
        reported
            .lines()
            .filter_map(|l| l.trim().parse::<IpAddr>().ok()),
    );
    let mut dns = vec![node.hostname(), "localhost".to_owned()];
    for san in config.cert_sans() {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    ips.sort();
    ips.dedup();
    dns.sort();
    dns.dedup();
    (ips, dns)
}

/// The key apid serves maintenance mode with, kept in the maintenance
/// marker: the one already there (a key printed once must stay the key for
/// this boot), else a new one. Returns its SPKI fingerprint, which the
/// operator pins with `apply-config --insecure --cert-fingerprint`.
fn maintenance_key(api: &Path) -> Result<pki::SpkiFingerprint, CredentialsError> {
    if let Ok(pem) = std::fs::read_to_string(api.join(api_files::MAINTENANCE))
        && let Ok(fingerprint) = pki::SpkiFingerprint::of_private_key(&pem)
    {
        return Ok(fingerprint);
    }
    let pem = pki::generate_private_key_pem(pki::KeyAlgorithm::Ed25519)?;
    let fingerprint = pki::SpkiFingerprint::of_private_key(&pem)?;
    write_atomic(api, api_files::MAINTENANCE, pem.as_bytes(), true)?;
    Ok(fingerprint)
}

fn os_ca(config: &MachineConfig) -> Option<CertificateAndKey> {
    let key = config.ca_key_pem()?;
    Some(CertificateAndKey {
        cert_pem: String::from_utf8_lossy(config.ca_crt_pem()).into_owned(),
        key_pem: String::from_utf8_lossy(key).into_owned(),
    })
}

/// Issues and writes a control plane's credentials; returns when they
/// should be renewed.
fn issue_control_plane(
    node: &Node,
    config: &MachineConfig,
    ca: &CertificateAndKey,
) -> Result<SystemTime, CredentialsError> {
    let now = SystemTime::now();
    let (mut ips, mut dns) = sans(node, config);
    // Workers reach trustd by the control plane endpoint's host (a name, a
    // shared address, a load balancer): each control plane answers to it.
    // (A name that is no DNS name, such as an IDN, is left out rather than
    // fail the whole issue.)
    if let Some(host) = endpoint_host(config.control_plane_endpoint()).filter(|host| {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    }) {
        match host.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.contains(&host) => dns.push(host),
            Err(_) => {}
        }
    }
    let server =
        pki::issue_server_cert(ca, &node.hostname(), &ips, &dns, pki::SERVER_CERT_TTL, now)?;
    let client = pki::issue_client_cert(
        ca,
        &["os:impersonator".to_owned()],
        pki::SERVER_CERT_TTL,
        now,
    )?;
    let api = node.paths.secrets_dir("api");
    write_atomic(&api, api_files::SERVER_KEY, server.key_pem.as_bytes(), true)?;
    write_atomic(
        &api,
        api_files::SERVER_CERT,
        server.cert_pem.as_bytes(),
        false,
    )?;
    write_atomic(&api, api_files::CLIENT_KEY, client.key_pem.as_bytes(), true)?;
    write_atomic(
        &api,
        api_files::CLIENT_CERT,
        client.cert_pem.as_bytes(),
        false,
    )?;
    // apid trusts the accepted CAs too (client certificates, and other
    // nodes' server certificates when forwarding); trustd signs with
    // `machine.ca` alone.
    write_atomic(&api, api_files::CA, &config.trusted_cas_pem(), false)?;
    remove(&api, api_files::MAINTENANCE);

    let trustd = node.paths.secrets_dir("trustd");
    write_atomic(
        &trustd,
        trustd_files::SERVER_KEY,
        server.key_pem.as_bytes(),
        true,
    )?;
    write_atomic(
        &trustd,
        trustd_files::SERVER_CERT,
        server.cert_pem.as_bytes(),
        false,
    )?;
    write_atomic(&trustd, trustd_files::CA_KEY, ca.key_pem.as_bytes(), true)?;
    write_atomic(
        &trustd,
        trustd_files::TOKEN,
        config.token().as_bytes(),
        true,
    )?;
    write_atomic(&trustd, trustd_files::CA, ca.cert_pem.as_bytes(), false)?;
    let info = pki::cert_info(server.cert_pem.as_bytes())?;
    Ok(pki::renew_at(info.not_before, info.not_after))
}

/// The host of `cluster.controlPlane.endpoint`, without the brackets of an
/// IPv6 address.
fn endpoint_host(control_plane_endpoint: &str) -> Option<String> {
    let authority = control_plane_endpoint
        .split_once("://")
        .map_or(control_plane_endpoint, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split_once(']').map(|(h, _)| h)?
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h,
            _ => authority,
        }
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// trustd's address for a worker, `host:port`: the control plane
/// endpoint's host on `port`.
fn trustd_endpoint(control_plane_endpoint: &str, port: u16) -> Option<(String, String)> {
    let host = endpoint_host(control_plane_endpoint)?;
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some((address, host))
}

/// How long one request to trustd may take, connecting included.
const ATTEMPT: Duration = Duration::from_secs(10);

/// Asks trustd for a worker's server certificate and writes it.
async fn request_worker(
    node: &Node,
    config: &MachineConfig,
    trustd_port: Option<u16>,
) -> Result<SystemTime, CredentialsError> {
    let (ips, dns) = sans(node, config);
    let hostname = node.hostname();
    let (csr, key) = tokio::task::spawn_blocking(move || pki::generate_csr(&hostname, &ips, &dns))
        .await
        .map_err(|e| CredentialsError::Trustd(e.to_string()))??;
    // A control plane's trustd may still present a certificate from an
    // accepted CA while a CA rotation is under way.
    let ca_pem = config.trusted_cas_pem();
    let tls = machinery::grpc::client_tls_config(&ca_pem, None)
        .map_err(|e| CredentialsError::Ca(e.to_string()))?;
    let mut last = String::from("no trustd endpoint: cluster.controlPlane.endpoint has no host");
    // Every address the host resolves to, each with an attempt of its own
    // (a dead control plane behind a round-robin name must not take every
    // attempt); the certificate is checked against the host's name.
    let mut attempts: Vec<(String, String)> = Vec::new();
    if let Some((endpoint, host)) = trustd_endpoint(
        config.control_plane_endpoint(),
        trustd_port.unwrap_or(machinery::constants::TRUSTD_PORT),
    ) {
        match tokio::time::timeout(ATTEMPT, tokio::net::lookup_host(endpoint.as_str())).await {
            Ok(Ok(addresses)) => {
                for address in addresses {
                    let address = address.to_string();
                    if !attempts.iter().any(|(a, _)| *a == address) {
                        attempts.push((address, host.clone()));
                    }
                }
            }
            Ok(Err(e)) => last = format!("{endpoint}: resolving {host}: {e}"),
            Err(_) => last = format!("{endpoint}: resolving {host}: no answer within {ATTEMPT:?}"),
        }
    }
    for (endpoint, host) in &attempts {
        let channel = match machinery::grpc::tls_channel(endpoint.clone(), host, Arc::clone(&tls)) {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut client =
            api::securityapi::security_service_client::SecurityServiceClient::new(channel);
        let mut request = tonic::Request::new(api::securityapi::CertificateRequest {
            csr: csr.clone().into_bytes(),
        });
        request.set_timeout(ATTEMPT);
        if let Ok(token) = tonic::metadata::MetadataValue::try_from(config.token()) {
            request.metadata_mut().insert("token", token);
        }
        // The call's deadline does not cover connecting: this does.
        let reply = match tokio::time::timeout(ATTEMPT, client.certificate(request)).await {
            Ok(reply) => reply,
            Err(_) => {
                last = format!("{endpoint}: no answer within {ATTEMPT:?}");
                continue;
            }
        };
        match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                // Nothing replaces the node's key pair unless it is sound.
                let info = pki::check_issued(&reply.crt, &key, &ca_pem).map_err(|e| {
                    CredentialsError::Trustd(format!("{endpoint} answered with {e}"))
                })?;
                // A control plane whose clock is not right yet signs for
                // the wrong time; once a server has set this node's clock,
                // such a certificate is refused and asked for again. (Time
                // counted as synced otherwise, sync off or bootTimeout
                // passed, says nothing of this clock: then it is taken.)
                let now = SystemTime::now();
                if timed::synced_by_a_server(&node.paths) && !info.is_valid_at(now) {
                    let unix = |t: SystemTime| {
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    };
                    last = format!(
                        "{endpoint} issued a certificate that is not valid now (from unix time {} to {}): its clock may be wrong",
                        unix(info.not_before),
                        unix(info.not_after)
                    );
                    continue;
                }
                let api = node.paths.secrets_dir("api");
                write_atomic(&api, api_files::SERVER_KEY, key.as_bytes(), true)?;
                write_atomic(&api, api_files::SERVER_CERT, &reply.crt, false)?;
                // Workers never forward: no client certificate.
                remove(&api, api_files::CLIENT_CERT);
                remove(&api, api_files::CLIENT_KEY);
                write_atomic(&api, api_files::CA, &ca_pem, false)?;
                remove(&api, api_files::MAINTENANCE);
                tracing::info!(trustd = %endpoint, "worker API certificate issued by trustd");
                return Ok(pki::renew_at(info.not_before, info.not_after));
            }
            Err(status) => last = format!("{endpoint}: {}", status.message()),
        }
    }
    Err(CredentialsError::Trustd(last))
}

/// Removes the maintenance marker: apid leaves maintenance mode (for mTLS
/// once credentials are there, for nothing until then).
pub fn clear_maintenance_marker(node: &Node) {
    remove(&node.paths.secrets_dir("api"), api_files::MAINTENANCE);
}

/// What the certificate depends on besides the config, as files other
/// daemons write.
struct Watched {
    /// networkd's addresses, one per line.
    addresses: PathBuf,
    /// timed's "synced" marker.
    synced: PathBuf,
    /// timed's count of clock jumps.
    epoch: PathBuf,
}

/// What [`Watched`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    addresses: Vec<u8>,
    synced: bool,
    epoch: Vec<u8>,
}

impl Watched {
    fn of(node: &Node) -> Watched {
        Watched {
            addresses: node.paths.socket_dir("networkd").join("addresses"),
            synced: timed::marker_path(&node.paths),
            epoch: timed::epoch_path(&node.paths),
        }
    }

    fn read(&self) -> Seen {
        Seen {
            addresses: std::fs::read(&self.addresses).unwrap_or_default(),
            synced: self.synced.exists(),
            epoch: std::fs::read(&self.epoch).unwrap_or_default(),
        }
    }
}

impl Seen {
    /// What changed since `before`, said for the log.
    fn changed_since(&self, before: &Seen) -> Option<&'static str> {
        if self.addresses != before.addresses {
            Some("node addresses changed")
        } else if self.synced && !before.synced {
            Some("the clock is synced")
        } else if self.epoch != before.epoch {
            Some("the clock jumped")
        } else {
            None
        }
    }
}

/// Keeps the credentials in step with the config until the process ends.
/// `trustd_port` overrides trustd's port for workers (container mode).
///
/// Started in maintenance mode, it keeps apid in maintenance mode until
/// the services stop: a config applied then makes machined start over
/// from it (or install and reboot), and the next run issues the
/// credentials. Were they issued now, the running apid would take them up
/// and answer mTLS calls, and then be stopped under them.
pub async fn maintain(node: Arc<Node>, trustd_port: Option<u16>) {
    let mut configs = node.config.subscribe();
    let mut failures = 0u32;
    let watched = Watched::of(&node);
    loop {
        let config = configs.borrow_and_update().clone();
        // Remember what this issue saw, and issue again when it changes: an
        // address configured or leased after boot must be in the
        // certificate, and a certificate made before the clock was right
        // is not valid for the right time.
        let seen = watched.read();
        if node.maintenance_run && config.is_some() {
            // Nor does the maintenance API stay open meanwhile: without the
            // marker (and no credentials) apid takes no new connection and
            // no caller has a role (checked per call).
            tracing::info!("config applied in maintenance mode: credentials wait for the restart");
            clear_maintenance_marker(&node);
            return;
        }
        let next = match &config {
            None => {
                let api = node.paths.secrets_dir("api");
                let key = tokio::task::spawn_blocking(move || maintenance_key(&api))
                    .await
                    .unwrap_or_else(|e| Err(CredentialsError::MaintenanceKey(e.to_string())));
                match key {
                    Ok(fingerprint) => {
                        tracing::info!(
                            "maintenance mode: waiting for a machine config; server certificate fingerprint {fingerprint}"
                        );
                        tracing::info!(
                            "apply one, pinning this node: talosctl apply-config --insecure --nodes <node address> --cert-fingerprint '{fingerprint}' --file <config.yaml>"
                        );
                    }
                    Err(e) => tracing::error!(error = %e, "writing the maintenance marker"),
                }
                None
            }
            Some(config) => {
                let result = match os_ca(config) {
                    Some(ca) => {
                        let node = Arc::clone(&node);
                        let config = Arc::clone(config);
                        tokio::task::spawn_blocking(move || {
                            issue_control_plane(&node, &config, &ca)
                        })
                        .await
                        .unwrap_or_else(|e| Err(CredentialsError::Trustd(e.to_string())))
                    }
                    None => request_worker(&node, config, trustd_port).await,
                };
                match result {
                    Ok(renew) => {
                        failures = 0;
                        Some(
                            renew
                                .duration_since(SystemTime::now())
                                .unwrap_or(Duration::from_secs(60)),
                        )
                    }
                    Err(e) => {
                        failures += 1;
                        let retry = Duration::from_millis(500)
                            .saturating_mul(1 << failures.min(6))
                            .min(Duration::from_secs(30));
                        tracing::warn!(error = %e, ?retry, "API credentials not ready");
                        Some(retry)
                    }
                }
            }
        };
        let watch_inputs = config.is_some();
        tokio::select! {
            changed = configs.changed() => if changed.is_err() { return },
            () = async {
                match next {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
            // Small files read once a second: networkd and timed have no
            // change feed to subscribe to.
            what = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Some(what) = watched.read().changed_since(&seen) {
                        return what;
                    }
                }
            }, if watch_inputs => {
                tracing::info!("{what}: issuing the API certificate again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_maintenance_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = dir.path().join("api");
        let first = super::maintenance_key(&api).expect("key");
        let marker = api.join(super::api_files::MAINTENANCE);
        let pem = std::fs::read_to_string(&marker).expect("marker");
        assert_eq!(
            machinery::pki::SpkiFingerprint::of_private_key(&pem).expect("fingerprint"),
            first
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&marker)
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(super::maintenance_key(&api).expect("again"), first);
        // An empty marker (from an older machined) is replaced by a key.
        std::fs::write(&marker, "").expect("empty");
        assert_ne!(super::maintenance_key(&api).expect("new"), first);
    }

    #[test]
    fn trustd_endpoint_from_the_control_plane_endpoint() {
        let cases = [
            (
                "https://10.5.0.2:6443",
                Some(("10.5.0.2:50001", "10.5.0.2")),
            ),
            (
                "https://cp.example.com:6443/",
                Some(("cp.example.com:50001", "cp.example.com")),
            ),
            ("https://127.0.0.5", Some(("127.0.0.5:50001", "127.0.0.5"))),
            (
                "https://[fd00::1]:6443",
                Some(("[fd00::1]:50001", "fd00::1")),
            ),
            ("https://[fd00::1]", Some(("[fd00::1]:50001", "fd00::1"))),
            ("https://", None),
            ("https://[fd00::1", None),
            (
                "https://cp.example.com?x=1",
                Some(("cp.example.com:50001", "cp.example.com")),
            ),
        ];
        for (endpoint, expected) in cases {
            let got = super::trustd_endpoint(endpoint, 50001);
            assert_eq!(
                got.as_ref().map(|(a, h)| (a.as_str(), h.as_str())),
                expected,
                "{endpoint}"
            );
        }
    }

    /// A control plane's certificate answers to the endpoint's host, by
    /// which workers reach its trustd: a name or an address, IPv6 too.
    #[test]
    fn a_control_plane_answers_to_the_endpoint_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = crate::node::test_node(dir.path(), machinery::mode::Mode::Container);
        for (endpoint, dns, ip) in [
            ("https://cp.example.com:6443", Some("cp.example.com"), None),
            ("https://[fd00::10]:6443", None, Some("fd00::10")),
        ] {
            let yaml = crate::test_config::patched(&format!(
                "cluster:\n  controlPlane:\n    endpoint: {endpoint}\n"
            ));
            let config = machinery::config::parse(yaml.as_bytes()).expect("config");
            let ca = super::os_ca(&config).expect("a control plane's CA");
            super::issue_control_plane(&node, &config, &ca).expect("issue");
            for component in ["api", "trustd"] {
                let crt = std::fs::read(node.paths.secrets_dir(component).join("server.crt"))
                    .expect("server.crt");
                let info = machinery::pki::cert_info(&crt).expect("certificate");
                if let Some(dns) = dns {
                    assert!(
                        info.dns_names.iter().any(|d| d == dns),
                        "{:?}",
                        info.dns_names
                    );
                }
                if let Some(ip) = ip {
                    let ip: std::net::IpAddr = ip.parse().expect("ip");
                    assert!(info.ip_addresses.contains(&ip), "{:?}", info.ip_addresses);
                }
            }
        }
    }

    /// A worker whose clock is synced refuses a certificate from a control
    /// plane whose clock is not (and asks again later); unsynced, it cannot
    /// tell and takes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_refuses_a_certificate_for_the_wrong_time() {
        use machinery::constants::trustd_credentials as files;
        let dir = tempfile::tempdir().expect("tempdir");
        let node =
            crate::node::test_node(&dir.path().join("node"), machinery::mode::Mode::Container);
        let yaml = crate::test_config::patched("machine:\n  network:\n    hostname: w1\n");
        let config = machinery::config::parse(yaml.as_bytes()).expect("config");
        // A control plane's trustd with this cluster's CA and token.
        let ca = super::os_ca(&config).expect("CA");
        let trustd_dir = dir.path().join("trustd");
        std::fs::create_dir_all(&trustd_dir).expect("mkdir");
        let now = SystemTime::now();
        let server = machinery::pki::issue_server_cert(
            &ca,
            "cp",
            &[IpAddr::from([127, 0, 0, 1])],
            &[],
            machinery::pki::SERVER_CERT_TTL,
            now,
        )
        .expect("server certificate");
        for (name, contents) in [
            (files::CA, ca.cert_pem.as_str()),
            (files::CA_KEY, ca.key_pem.as_str()),
            (files::SERVER_CERT, server.cert_pem.as_str()),
            (files::SERVER_KEY, server.key_pem.as_str()),
            (files::TOKEN, config.token()),
        ] {
            std::fs::write(trustd_dir.join(name), contents).expect("write");
        }
        let in_1971 = SystemTime::UNIX_EPOCH + Duration::from_secs(365 * 86_400);
        let wrong =
            trustd::testing::start_signing_at(&trustd_dir, IpAddr::from([127, 0, 0, 1]), in_1971)
                .await;
        let right = trustd::testing::start_signing_at(
            &trustd_dir,
            IpAddr::from([127, 0, 0, 1]),
            now - Duration::from_secs(60),
        )
        .await;

        // Not synced: taken.
        super::request_worker(&node, &config, Some(wrong.port()))
            .await
            .expect("an unsynced worker cannot judge");
        // Synced: refused, saying why.
        let marker = timed::marker_path(&node.paths);
        std::fs::create_dir_all(marker.parent().expect("dir")).expect("mkdir");
        // Synced only because sync is off: the clock may be anything.
        std::fs::write(&marker, "time sync is disabled in the machine config\n").expect("marker");
        super::request_worker(&node, &config, Some(wrong.port()))
            .await
            .expect("no server set this clock: it cannot judge");
        std::fs::write(&marker, "synced with pool.ntp.org (offset 0.001s)\n").expect("marker");
        let err = super::request_worker(&node, &config, Some(wrong.port()))
            .await
            .expect_err("the wrong time");
        assert!(err.to_string().contains("not valid now"), "{err}");
        // A control plane with the right time is fine.
        super::request_worker(&node, &config, Some(right.port()))
            .await
            .expect("the right time");
    }

    #[test]
    fn the_clock_s_sync_and_jumps_call_for_a_new_certificate() {
        let seen = super::Seen {
            addresses: b"10.5.0.2\n".to_vec(),
            synced: false,
            epoch: Vec::new(),
        };
        assert_eq!(seen.changed_since(&seen), None);
        let synced = super::Seen {
            synced: true,
            ..seen.clone()
        };
        assert_eq!(synced.changed_since(&seen), Some("the clock is synced"));
        // The marker going away (timed restarting) is no reason.
        assert_eq!(seen.changed_since(&synced), None);
        let jumped = super::Seen {
            epoch: b"1".to_vec(),
            ..synced.clone()
        };
        assert_eq!(jumped.changed_since(&synced), Some("the clock jumped"));
        let moved = super::Seen {
            addresses: b"10.5.0.3\n".to_vec(),
            ..synced.clone()
        };
        assert_eq!(moved.changed_since(&synced), Some("node addresses changed"));
    }
}
