//! The machine config: loading what `talosctl gen config` writes, and every
//! way a config can be wrong.
//!
//! The templates below follow the key layout of upstream `talosctl gen config`
//! (v1.10-era `controlplane.yaml` and `worker.yaml`, 4-space indents, inline
//! comments); every value is made up for these tests.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use machinery::base64;
use machinery::config::v1alpha1::FileMode;
use machinery::config::{self, ConfigError, FileOp, MachineConfig, MachineType, UserFile};

// === fixtures ===

const CONTROLPLANE: &str = r#"version: v1alpha1 # schema of this document
debug: false # service logs on the console
persist: true
# This node.
machine:
    type: controlplane # controlplane or worker
    token: 7x1a2b.0123456789abcdef # presented to trustd
    # Talos API CA, base64 of PEM.
    ca:
        crt: @OS_CRT@
        key: @OS_KEY@
    # Extra names for the apid certificate.
    certSANs: []
    #   - 10.0.0.10

    # Kubelet settings.
    kubelet:
        image: ghcr.io/siderolabs/kubelet:v1.33.1 # kubelet image
        defaultRuntimeSeccompProfileEnabled: true # runtime default seccomp profile
        disableManifestsDirectory: true # no /etc/kubernetes/manifests
    # Host networking.
    network: {}
    # # Static hostname.
    # hostname: worker-1

    # Installation.
    install:
        disk: /dev/sda # install disk
        image: ghcr.io/siderolabs/installer:v1.10.3 # installer image
        wipe: false # wipe before install
    # Feature switches.
    features:
        rbac: true # role-based API access
        stableHostname: true # stable default hostname
        apidCheckExtKeyUsage: true # check client EKU in apid
        diskQuotaSupport: true # XFS project quotas
        # Local API server load balancer.
        kubePrism:
            enabled: true # run it
            port: 7445 # its port
        # Host DNS cache.
        hostDNS:
            enabled: true # run it
            forwardKubeDNSToHost: true # CoreDNS forwards to it
    # Kubernetes node labels.
    nodeLabels:
        node.kubernetes.io/exclude-from-external-load-balancers: ""
# The cluster.
cluster:
    id: @CLUSTER_ID@ # cluster identity
    secret: @CLUSTER_SECRET@ # shared discovery secret
    # Kubernetes API location.
    controlPlane:
        endpoint: https://10.5.0.2:6443 # canonical API URL
    clusterName: rusty # cluster name
    # Pod and service networking.
    network:
        dnsDomain: cluster.local # DNS domain
        # Pod CIDRs.
        podSubnets:
            - 10.244.0.0/16
        # Service CIDRs.
        serviceSubnets:
            - 10.96.0.0/12
    token: abcdef.0123456789abcdef # bootstrap token
    secretboxEncryptionSecret: @SECRETBOX@ # secrets at rest
    # Kubernetes CA.
    ca:
        crt: @K8S_CRT@
        key: @K8S_KEY@
    # Front-proxy CA.
    aggregatorCA:
        crt: @AGG_CRT@
        key: @AGG_KEY@
    # Service account signing key.
    serviceAccount:
        key: @SA_KEY@
    # kube-apiserver.
    apiServer:
        image: registry.k8s.io/kube-apiserver:v1.33.1 # image
        # Extra SANs.
        certSANs:
            - 10.5.0.2
        disablePodSecurityPolicy: true # legacy switch
        # Admission plugins.
        admissionControl:
            - name: PodSecurity # plugin name
              # Plugin configuration.
              configuration:
                apiVersion: pod-security.admission.config.k8s.io/v1alpha1
                defaults:
                    audit: restricted
                    audit-version: latest
                    enforce: baseline
                    enforce-version: latest
                    warn: restricted
                    warn-version: latest
                exemptions:
                    namespaces:
                        - kube-system
                    runtimeClasses: []
                    usernames: []
                kind: PodSecurityConfiguration
        # Audit policy.
        auditPolicy:
            apiVersion: audit.k8s.io/v1
            kind: Policy
            rules:
                - level: Metadata
    # kube-controller-manager.
    controllerManager:
        image: registry.k8s.io/kube-controller-manager:v1.33.1 # image
    # kube-proxy.
    proxy:
        image: registry.k8s.io/kube-proxy:v1.33.1 # image
    # kube-scheduler.
    scheduler:
        image: registry.k8s.io/kube-scheduler:v1.33.1 # image
    # Member discovery.
    discovery:
        enabled: true # discover members
        # Discovery registries.
        registries:
            # Through the Kubernetes API.
            kubernetes:
                disabled: true # off
            # Through the discovery service.
            service: {}
    # etcd.
    etcd:
        # etcd CA.
        ca:
            crt: @ETCD_CRT@
            key: @ETCD_KEY@
    extraManifests: []
    inlineManifests: []
    # # Run workloads on control plane nodes.
    # allowSchedulingOnControlPlanes: true
"#;

const WORKER: &str = r#"version: v1alpha1 # schema of this document
debug: false # service logs on the console
persist: true
# This node.
machine:
    type: worker # controlplane or worker
    token: 7x1a2b.0123456789abcdef # presented to trustd
    # Talos API CA, base64 of PEM.
    ca:
        crt: @OS_CRT@
        key: ""
    # Extra names for the apid certificate.
    certSANs: []
    # Kubelet settings.
    kubelet:
        image: ghcr.io/siderolabs/kubelet:v1.33.1 # kubelet image
        defaultRuntimeSeccompProfileEnabled: true # runtime default seccomp profile
        disableManifestsDirectory: true # no /etc/kubernetes/manifests
    # Host networking.
    network: {}
    # Installation.
    install:
        disk: /dev/sda # install disk
        image: ghcr.io/siderolabs/installer:v1.10.3 # installer image
        wipe: false # wipe before install
    # Feature switches.
    features:
        rbac: true # role-based API access
        stableHostname: true # stable default hostname
        apidCheckExtKeyUsage: true # check client EKU in apid
        diskQuotaSupport: true # XFS project quotas
        # Local API server load balancer.
        kubePrism:
            enabled: true # run it
            port: 7445 # its port
        # Host DNS cache.
        hostDNS:
            enabled: true # run it
            forwardKubeDNSToHost: true # CoreDNS forwards to it
# The cluster.
cluster:
    id: @CLUSTER_ID@ # cluster identity
    secret: @CLUSTER_SECRET@ # shared discovery secret
    # Kubernetes API location.
    controlPlane:
        endpoint: https://10.5.0.2:6443 # canonical API URL
    clusterName: rusty # cluster name
    # Pod and service networking.
    network:
        dnsDomain: cluster.local # DNS domain
        # Pod CIDRs.
        podSubnets:
            - 10.244.0.0/16
        # Service CIDRs.
        serviceSubnets:
            - 10.96.0.0/12
    token: abcdef.0123456789abcdef # bootstrap token
    # Kubernetes CA.
    ca:
        crt: @K8S_CRT@
        key: ""
    # Member discovery.
    discovery:
        enabled: true # discover members
        # Discovery registries.
        registries:
            # Through the Kubernetes API.
            kubernetes:
                disabled: true # off
            # Through the discovery service.
            service: {}
"#;

/// A worker in the newer (v1.14-era) multi-document shape: the cluster
/// endpoint lives in a `KubeClusterConfig` document.
const WORKER_MULTIDOC: &str = r#"version: v1alpha1
debug: false
persist: true
machine:
    type: worker
    token: 7x1a2b.0123456789abcdef
    ca:
        crt: @OS_CRT@
        key: ""
    certSANs: []
    kubelet:
        image: ghcr.io/siderolabs/kubelet:v1.34.0
        defaultRuntimeSeccompProfileEnabled: true
        disableManifestsDirectory: true
    features:
        diskQuotaSupport: true
        kubePrism:
            enabled: true
            port: 7445
cluster:
    token: abcdef.0123456789abcdef
---
apiVersion: v1alpha1
kind: DiscoveryServiceConfig
name: default
endpoint: https://discovery.example.com/
---
apiVersion: v1alpha1
kind: ResolverConfig
hostDNS:
    enabled: true
    forwardKubeDNSToHost: true
---
apiVersion: v1alpha1
kind: VolumeConfig
name: EPHEMERAL
mount:
    secure: true
---
apiVersion: v1alpha1
kind: HostnameConfig
auto: stable
---
apiVersion: v1alpha1
kind: KubeClusterConfig
clusterName: rusty
endpoint: https://10.5.0.2:6443
---
apiVersion: v1alpha1
kind: KubeNetworkConfig
dnsDomain: cluster.local
podSubnets:
    - 10.244.0.0/16
serviceSubnets:
    - 10.96.0.0/12
"#;

fn pem(label: &str, body: &str) -> String {
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

fn os_ca_pem() -> String {
    pem("CERTIFICATE", "VGFsb3MgQVBJIENBIGZvciB0ZXN0cw==")
}

fn fill(template: &str) -> String {
    let replacements = [
        ("@OS_CRT@", base64::encode(os_ca_pem())),
        (
            "@OS_KEY@",
            base64::encode(pem("ED25519 PRIVATE KEY", "VGFsb3MgQVBJIENBIGtleQ==")),
        ),
        (
            "@K8S_CRT@",
            base64::encode(pem("CERTIFICATE", "S3ViZXJuZXRlcyBDQQ==")),
        ),
        (
            "@K8S_KEY@",
            base64::encode(pem("EC PRIVATE KEY", "S3ViZXJuZXRlcyBDQSBrZXk=")),
        ),
        (
            "@AGG_CRT@",
            base64::encode(pem("CERTIFICATE", "QWdncmVnYXRvciBDQQ==")),
        ),
        (
            "@AGG_KEY@",
            base64::encode(pem("EC PRIVATE KEY", "QWdncmVnYXRvciBrZXk=")),
        ),
        (
            "@SA_KEY@",
            base64::encode(pem("EC PRIVATE KEY", "U2VydmljZSBhY2NvdW50")),
        ),
        (
            "@ETCD_CRT@",
            base64::encode(pem("CERTIFICATE", "ZXRjZCBDQQ==")),
        ),
        (
            "@ETCD_KEY@",
            base64::encode(pem("EC PRIVATE KEY", "ZXRjZCBDQSBrZXk=")),
        ),
        ("@CLUSTER_ID@", base64::encode([7u8; 32])),
        ("@CLUSTER_SECRET@", base64::encode([9u8; 32])),
        ("@SECRETBOX@", base64::encode([11u8; 32])),
    ];
    let mut out = template.to_owned();
    for (placeholder, value) in replacements {
        out = out.replace(placeholder, &value);
    }
    out
}

fn controlplane_yaml() -> String {
    fill(CONTROLPLANE)
}

fn worker_yaml() -> String {
    fill(WORKER)
}

/// Replaces `from` (which must occur) with `to`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replace(from, to)
}

fn parse(text: &str) -> Result<MachineConfig, ConfigError> {
    config::parse(text.as_bytes())
}

fn parse_ok(text: &str) -> MachineConfig {
    match parse(text) {
        Ok(cfg) => cfg,
        Err(err) => panic!("config should load, got: {err}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be rejected")
}

/// Asserts a validation error that mentions every path in `paths`.
fn assert_issues(err: &ConfigError, paths: &[&str]) {
    let Some(issues) = err.validation_issues() else {
        panic!("expected a validation error, got: {err}");
    };
    for path in paths {
        assert!(issues.mentions(path), "no issue at {path}; got: {err}");
    }
}

fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "machinery-config-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

// === what gen config writes ===

#[test]
fn generated_controlplane_config_loads() {
    let cfg = parse_ok(&controlplane_yaml());
    assert_eq!(cfg.machine_type(), MachineType::ControlPlane);
    assert!(cfg.machine_type().is_control_plane());
    assert_eq!(cfg.machine_type().to_string(), "controlplane");
    assert_eq!(cfg.token(), "7x1a2b.0123456789abcdef");
    assert_eq!(cfg.control_plane_endpoint(), "https://10.5.0.2:6443");
    assert_eq!(cfg.cluster_name(), Some("rusty"));
    assert_eq!(cfg.install_disk(), Some("/dev/sda"));
    assert_eq!(
        cfg.install_image(),
        Some("ghcr.io/siderolabs/installer:v1.10.3")
    );
    assert_eq!(cfg.hostname(), None);
    assert!(cfg.cert_sans().is_empty());
    assert!(!cfg.debug());
    assert_eq!(cfg.time_servers(), ["time.cloudflare.com"]);
    assert_eq!(cfg.time_boot_timeout(), None);
    assert_eq!(cfg.ca_crt_pem(), os_ca_pem().as_bytes());
    assert_eq!(cfg.ca_crt_base64(), base64::encode(os_ca_pem()));
    let key = cfg.ca_key_pem().expect("control plane has the CA key");
    assert!(key.starts_with(b"-----BEGIN ED25519 PRIVATE KEY-----"));
    assert!(cfg.extra_documents().is_empty());

    let machine = cfg.v1alpha1().machine.as_ref().expect("machine");
    let features = machine.features.as_ref().expect("features");
    assert_eq!(
        features.kube_prism.as_ref().and_then(|k| k.port),
        Some(7445)
    );
    assert_eq!(
        machine
            .node_labels
            .as_ref()
            .and_then(|labels| labels.get("node.kubernetes.io/exclude-from-external-load-balancers"))
            .map(String::as_str),
        Some("")
    );
    let cluster = cfg.v1alpha1().cluster.as_ref().expect("cluster");
    assert!(cluster.api_server.is_some());
    assert_eq!(cluster.extra_manifests.as_deref(), Some(&[][..]));
}

#[test]
fn generated_worker_config_loads() {
    let cfg = parse_ok(&worker_yaml());
    assert_eq!(cfg.machine_type(), MachineType::Worker);
    assert!(!cfg.machine_type().is_control_plane());
    assert_eq!(cfg.ca_key_pem(), None);
    assert_eq!(cfg.ca_crt_pem(), os_ca_pem().as_bytes());
    assert_eq!(cfg.control_plane_endpoint(), "https://10.5.0.2:6443");
    assert_eq!(cfg.cluster_name(), Some("rusty"));
}

/// `machine.acceptedCAs` must hold certificates; the API trusts them
/// after `machine.ca`, in one bundle.
#[test]
fn accepted_cas_are_certificates_trusted_after_the_ca() {
    let other = machinery::pki::generate_os_ca(std::time::SystemTime::now()).expect("CA");
    let with_accepted = |crt: &str| {
        let yaml = worker_yaml();
        let at = yaml.find("\n    ca:\n").expect("machine.ca in the fixture");
        let mut out = yaml.clone();
        out.insert_str(at, &format!("\n    acceptedCAs:\n        - crt: {crt}"));
        out
    };
    let cfg = parse_ok(&with_accepted(&base64::encode(&other.cert_pem)));
    assert_eq!(cfg.accepted_cas_pem(), [other.cert_pem.as_bytes().to_vec()]);
    let bundle = String::from_utf8(cfg.trusted_cas_pem()).expect("PEM text");
    assert_eq!(bundle, format!("{}{}", os_ca_pem(), other.cert_pem));
    // Without accepted CAs the bundle is the CA alone.
    assert_eq!(
        parse_ok(&worker_yaml()).trusted_cas_pem(),
        os_ca_pem().as_bytes()
    );

    let err = parse_err(&with_accepted(&base64::encode(pem("CERTIFICATE", "Zm9v"))));
    assert_issues(&err, &["machine.acceptedCAs[0].crt"]);
    assert!(
        err.to_string().contains("is not a PEM certificate"),
        "{err}"
    );
}

/// The worker fixture with `entries` (YAML list items, indented) as
/// `machine.network.interfaces`.
fn with_interfaces(entries: &str) -> String {
    edit(
        &worker_yaml(),
        "    network: {}\n",
        &format!("    network:\n        interfaces:\n{entries}"),
    )
}

/// Bonds and VLANs in `machine.network.interfaces`: known settings typed,
/// the rest of upstream's bond settings kept; bad values refused by path.
#[test]
fn bonds_and_vlans_are_checked() {
    let cfg = parse_ok(&with_interfaces(
        "            - interface: bond0\n              addresses: [10.0.0.5/24]\n              bond:\n                  mode: 802.3ad\n                  lacpRate: fast\n                  xmitHashPolicy: layer3+4\n                  miimon: 100\n                  deviceSelectors:\n                      - permanentAddr: \"00:11:*\"\n                  adActorSysPrio: 65535\n              vlans:\n                  - vlanId: 10\n                    dhcp: true\n",
    ));
    let network = cfg
        .v1alpha1()
        .machine
        .as_ref()
        .and_then(|m| m.network.as_ref())
        .expect("network");
    let bond = network.interfaces.as_ref().expect("interfaces")[0]
        .bond
        .as_ref()
        .expect("bond");
    assert_eq!(bond.mode.as_deref(), Some("802.3ad"));
    assert_eq!(bond.miimon, Some(100));
    assert!(bond.other.contains_key("adActorSysPrio"), "{bond:?}");

    let err = parse_err(&with_interfaces(
        "            - interface: bond0\n              bond:\n                  mode: round-robin\n                  interfaces: [eth0]\n              vlans:\n                  - vlanId: 4095\n",
    ));
    assert_issues(
        &err,
        &[
            "machine.network.interfaces[0].bond.mode",
            "machine.network.interfaces[0].vlans[0].vlanId",
        ],
    );
    let err = parse_err(&with_interfaces(
        "            - interface: bond0\n              bond:\n                  mode: active-backup\n",
    ));
    assert!(err.to_string().contains("names no member"), "{err}");
}

/// Bridges and bridge ports (and `dhcpOptions`): typed, upstream's other
/// bridge settings kept; as upstream, a bond and a bridge in one entry is
/// refused by path, and the rest (an empty or self-naming `bridgePort`, a
/// bridge that is also a port) is left to networkd to report.
#[test]
fn bridges_and_bridge_ports_are_checked() {
    let cfg = parse_ok(&with_interfaces(
        "            - interface: br0\n              addresses: [10.0.0.5/24]\n              dhcpOptions:\n                  routeMetric: 512\n                  ipv4: true\n              bridge:\n                  interfaces: [eth0]\n                  stp:\n                      enabled: true\n                  vlan:\n                      vlanFiltering: false\n                  multicastSnooping: true\n            - interface: eth1\n              bridgePort:\n                  master: br0\n",
    ));
    let interfaces = cfg
        .v1alpha1()
        .machine
        .as_ref()
        .and_then(|m| m.network.as_ref())
        .and_then(|n| n.interfaces.as_ref())
        .expect("interfaces");
    let bridge = interfaces[0].bridge.as_ref().expect("bridge");
    assert_eq!(bridge.interfaces.as_deref(), Some(&["eth0".to_owned()][..]));
    assert_eq!(bridge.stp.as_ref().and_then(|s| s.enabled), Some(true));
    assert_eq!(
        bridge.vlan.as_ref().and_then(|v| v.vlan_filtering),
        Some(false)
    );
    assert!(bridge.other.contains_key("multicastSnooping"), "{bridge:?}");
    let options = interfaces[0].dhcp_options.as_ref().expect("dhcpOptions");
    assert_eq!(
        (options.route_metric, options.ipv4),
        (Some(512), Some(true))
    );
    assert_eq!(
        interfaces[1]
            .bridge_port
            .as_ref()
            .and_then(|p| p.master.as_deref()),
        Some("br0")
    );

    let err = parse_err(&with_interfaces(
        "            - interface: br0\n              bond:\n                  interfaces: [eth0]\n              bridge:\n                  interfaces: [eth1]\n            - interface: eth2\n              bridgePort: {}\n            - interface: br1\n              bridge: {}\n              bridgePort:\n                  master: br1\n",
    ));
    assert_issues(&err, &["machine.network.interfaces[0]"]);
    assert!(
        err.to_string()
            .contains("bond and bridge are mutually exclusive"),
        "{err}"
    );
}

#[test]
fn multi_document_worker_loads() {
    let cfg = parse_ok(&fill(WORKER_MULTIDOC));
    assert_eq!(cfg.machine_type(), MachineType::Worker);
    // No cluster.controlPlane: the endpoint comes from KubeClusterConfig.
    assert_eq!(cfg.control_plane_endpoint(), "https://10.5.0.2:6443");
    let kinds: Vec<&str> = cfg.extra_documents().iter().map(|d| d.kind()).collect();
    assert_eq!(
        kinds,
        [
            "DiscoveryServiceConfig",
            "ResolverConfig",
            "VolumeConfig",
            "HostnameConfig",
            "KubeClusterConfig",
            "KubeNetworkConfig",
        ]
    );
    assert_eq!(cfg.extra_documents()[0].position(), 2);
    assert_eq!(cfg.extra_documents()[0].api_version(), "v1alpha1");
}

#[test]
fn legacy_machine_types_map_onto_current_ones() {
    let init = parse_ok(&edit(
        &controlplane_yaml(),
        "type: controlplane",
        "type: init",
    ));
    assert_eq!(init.machine_type(), MachineType::ControlPlane);
    let join = parse_ok(&edit(&worker_yaml(), "type: worker", "type: join"));
    assert_eq!(join.machine_type(), MachineType::Worker);
}

#[test]
fn older_feature_keys_still_load() {
    // v1.8/v1.9 wrote this switch; it must not break loading those configs.
    let text = edit(
        &controlplane_yaml(),
        "        rbac: true # role-based API access\n",
        "        rbac: true\n        longPrefixPreference: true\n",
    );
    parse_ok(&text);
}

#[test]
fn typed_sections_are_read() {
    let text = edit(
        &controlplane_yaml(),
        "    certSANs: []\n",
        "    certSANs:\n        - 10.5.0.2\n        - cp1.example.com\n",
    );
    let text = edit(
        &text,
        "    network: {}\n",
        concat!(
            "    network:\n",
            "        hostname: cp1\n",
            "        nameservers:\n",
            "            - 1.1.1.1\n",
            "            - 2606:4700:4700::1111\n",
            "        interfaces:\n",
            "            - interface: eth0\n",
            "              addresses:\n",
            "                  - 10.5.0.2/24\n",
            "                  - 10.5.0.3\n",
            "              routes:\n",
            "                  - network: 0.0.0.0/0\n",
            "                    gateway: 10.5.0.1\n",
            "                    metric: 1024\n",
            "              mtu: 1500\n",
            "              dhcp: false\n",
            "              vip:\n",
            "                  ip: 10.5.0.10\n",
            "            - deviceSelector:\n",
            "                  hardwareAddr: \"00:11:22:*\"\n",
            "              dhcp: true\n",
            "        extraHostEntries:\n",
            "            - ip: 10.5.0.20\n",
            "              aliases:\n",
            "                  - registry.local\n",
        ),
    );
    let text = edit(
        &text,
        "        disableManifestsDirectory: true # no /etc/kubernetes/manifests\n",
        concat!(
            "        disableManifestsDirectory: true\n",
            "        extraArgs:\n",
            "            rotate-server-certificates: true\n",
            "            max-pods: 250\n",
        ),
    );
    let text = edit(
        &text,
        "    features:\n",
        concat!(
            "    sysctls:\n",
            "        net.core.somaxconn: 65535\n",
            "        net.ipv4.ip_forward: \"1\"\n",
            "    env:\n",
            "        https_proxy: http://proxy.example.com:3128\n",
            "    time:\n",
            "        servers:\n",
            "            - 0.pool.ntp.org\n",
            "            - /dev/ptp0\n",
            "        bootTimeout: 2m30s\n",
            "    logging:\n",
            "        destinations:\n",
            "            - endpoint: udp://127.0.0.1:12345/\n",
            "              format: json_lines\n",
            "              extraTags:\n",
            "                  node: cp1\n",
            "    features:\n",
        ),
    );

    let cfg = parse_ok(&text);
    assert_eq!(cfg.hostname(), Some("cp1"));
    assert_eq!(cfg.cert_sans(), ["10.5.0.2", "cp1.example.com"]);
    assert_eq!(cfg.time_servers(), ["0.pool.ntp.org", "/dev/ptp0"]);
    assert_eq!(cfg.time_boot_timeout(), Some(Duration::from_secs(150)));

    let machine = cfg.v1alpha1().machine.as_ref().expect("machine");
    let sysctls = machine.sysctls.as_ref().expect("sysctls");
    // Scalars of any type are kept as their text, as upstream does.
    assert_eq!(sysctls["net.core.somaxconn"], "65535");
    assert_eq!(sysctls["net.ipv4.ip_forward"], "1");
    assert_eq!(cfg.sysctls(), sysctls.clone());
    assert!(cfg.sysfs().is_empty());
    // A key that would name a file outside /proc/sys is refused.
    let err = parse_err(&edit(
        &text,
        "        net.core.somaxconn: 65535\n",
        "        net.core.somaxconn: 65535\n        net...x: 1\n",
    ));
    assert_issues(&err, &["machine.sysctls.net...x"]);
    let kubelet = machine.kubelet.as_ref().expect("kubelet");
    let extra_args = kubelet.extra_args.as_ref().expect("extraArgs");
    assert_eq!(extra_args["rotate-server-certificates"], "true");
    assert_eq!(extra_args["max-pods"], "250");
    let interfaces = machine
        .network
        .as_ref()
        .and_then(|network| network.interfaces.as_ref())
        .expect("interfaces");
    assert_eq!(interfaces.len(), 2);
    assert_eq!(interfaces[0].mtu, Some(1500));
    assert!(interfaces[1].device_selector.is_some());
}

#[test]
fn time_sync_can_be_disabled() {
    let text = edit(
        &controlplane_yaml(),
        "    features:\n",
        "    time:\n        disabled: true\n        servers:\n            - 0.pool.ntp.org\n    features:\n",
    );
    let cfg = parse_ok(&text);
    assert!(cfg.time_disabled());
    assert!(cfg.time_servers().is_empty());
    // Still the servers upstream lists and asks in a `Time` call.
    assert_eq!(cfg.configured_time_servers(), ["0.pool.ntp.org"]);
}

#[test]
fn file_permissions_accept_octal_and_decimal() {
    for (written, expected) in [
        ("0o644", 0o644),
        ("0644", 0o644),
        ("420", 0o644),
        ("0o755", 0o755),
        ("0x1ed", 0o755),
    ] {
        let text = edit(
            &controlplane_yaml(),
            "    features:\n",
            &format!(
                "    files:\n        - content: hello\n          permissions: {written}\n          path: /var/etc/motd\n          op: create\n    features:\n"
            ),
        );
        let cfg = parse_ok(&text);
        let files = cfg
            .v1alpha1()
            .machine
            .as_ref()
            .and_then(|m| m.files.as_ref());
        let file = files.and_then(|files| files.first()).expect("one file");
        assert_eq!(file.permissions, Some(FileMode(expected)), "{written}");

        // Written back as a plain integer, which loads to the same mode.
        let again = parse_ok(&cfg.to_yaml().expect("serializes"));
        assert_eq!(again, cfg, "{written}");
    }
}

// === schema errors ===

#[test]
fn unknown_key_names_its_path() {
    let text = edit(
        &controlplane_yaml(),
        "    network: {}\n",
        "    network:\n        interfacez: []\n",
    );
    let err = parse_err(&text);
    assert_eq!(
        err.to_string(),
        r#"machine config: unknown key "interfacez" at machine.network"#
    );
    match &err {
        ConfigError::UnknownKey { key, at, path } => {
            assert_eq!(key, "interfacez");
            assert_eq!(at, "machine.network");
            assert_eq!(path, "machine.network.interfacez");
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn unknown_key_inside_a_list_names_the_element() {
    let text = edit(
        &controlplane_yaml(),
        "    network: {}\n",
        "    network:\n        interfaces:\n            - interface: eth0\n              adresses:\n                  - 10.0.0.2/24\n",
    );
    let err = parse_err(&text);
    assert_eq!(
        err.to_string(),
        r#"machine config: unknown key "adresses" at machine.network.interfaces[0]"#
    );
}

#[test]
fn unknown_top_level_key() {
    let text = edit(
        &controlplane_yaml(),
        "persist: true\n",
        "persist: true\ndebugg: true\n",
    );
    let err = parse_err(&text);
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, at, .. } if key == "debugg" && at == "top level"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_path_and_expectation() {
    let text = edit(&controlplane_yaml(), "wipe: false", "wipe: \"yes\"");
    let err = parse_err(&text);
    assert_eq!(
        err.to_string(),
        r#"machine config: machine.install.wipe: invalid type: string "yes", expected a boolean"#
    );
    assert!(
        matches!(&err, ConfigError::WrongType { path, .. } if path == "machine.install.wipe"),
        "{err}"
    );

    // YAML 1.2: an unquoted yes is a string too (Go's decoder would take it).
    let text = edit(&controlplane_yaml(), "wipe: false", "wipe: yes");
    assert!(matches!(parse_err(&text), ConfigError::WrongType { .. }));
}

#[test]
fn wrong_type_deep_in_a_section() {
    let text = edit(&controlplane_yaml(), "port: 7445", "port: [7445]");
    let err = parse_err(&text);
    assert!(
        matches!(&err, ConfigError::WrongType { path, .. } if path == "machine.features.kubePrism.port"),
        "{err}"
    );

    let text = edit(&controlplane_yaml(), "port: 7445", "port: 74450");
    let err = parse_err(&text);
    assert!(
        matches!(&err, ConfigError::InvalidField { path, .. } if path == "machine.features.kubePrism.port"),
        "{err}"
    );
}

#[test]
fn garbage_permissions_are_rejected() {
    let text = edit(
        &controlplane_yaml(),
        "    features:\n",
        "    files:\n        - content: hello\n          permissions: rw-r--r--\n          path: /var/etc/motd\n          op: create\n    features:\n",
    );
    let err = parse_err(&text);
    assert!(
        matches!(&err, ConfigError::InvalidField { path, .. } if path == "machine.files[0].permissions"),
        "{err}"
    );
}

// === stream errors ===

#[test]
fn bad_yaml_is_a_syntax_error_with_position() {
    let err = parse_err("version: v1alpha1\nmachine: {type: worker\n");
    match &err {
        ConfigError::Syntax { document, line, .. } => {
            assert_eq!(*document, 1);
            assert!(line.is_some(), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("machine config: YAML syntax error in document 1: "),
        "{err}"
    );

    let err = parse_err("version: v1alpha1\nmachine:\n\ttype: worker\n");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn missing_v1alpha1_document() {
    let err = parse_err("apiVersion: v1alpha1\nkind: HostnameConfig\nauto: stable\n");
    assert!(matches!(err, ConfigError::MissingV1Alpha1), "{err}");
    assert!(matches!(parse_err(""), ConfigError::MissingV1Alpha1));
    assert!(matches!(
        parse_err("---\n---\n"),
        ConfigError::MissingV1Alpha1
    ));
}

#[test]
fn duplicate_v1alpha1_document() {
    let cp = controlplane_yaml();
    let err = parse_err(&format!("{cp}---\n{cp}"));
    assert!(
        matches!(
            err,
            ConfigError::DuplicateV1Alpha1 {
                first: 1,
                second: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_version() {
    let err = parse_err(&edit(
        &controlplane_yaml(),
        "version: v1alpha1",
        "version: v1alpha2",
    ));
    assert!(
        matches!(&err, ConfigError::UnsupportedVersion { document: 1, found } if found == "v1alpha2"),
        "{err}"
    );
    assert!(err.to_string().contains("unsupported version \"v1alpha2\""));

    let text = format!(
        "{}---\napiVersion: v1beta7\nkind: HostnameConfig\nauto: stable\n",
        controlplane_yaml()
    );
    assert!(matches!(
        parse_err(&text),
        ConfigError::UnsupportedApiVersion { document: 2, .. }
    ));
}

#[test]
fn document_without_version_or_kind_is_named() {
    let text = format!("{}---\nfoo: bar\n", controlplane_yaml());
    let err = parse_err(&text);
    assert!(
        matches!(err, ConfigError::UnrecognizedDocument { document: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("document 2"), "{err}");

    let text = format!("{}---\n- just\n- a list\n", controlplane_yaml());
    assert!(matches!(
        parse_err(&text),
        ConfigError::UnrecognizedDocument { document: 2, .. }
    ));
}

#[test]
fn extra_kind_documents_are_kept() {
    let text = format!(
        "{}---\napiVersion: v1alpha1\nkind: HostnameConfig\nauto: stable\n---\n---\napiVersion: v1alpha1\nkind: ResolverConfig\nnameservers:\n    - address: 1.1.1.1\n",
        controlplane_yaml()
    );
    let cfg = parse_ok(&text);
    let kinds: Vec<&str> = cfg.extra_documents().iter().map(|d| d.kind()).collect();
    assert_eq!(kinds, ["HostnameConfig", "ResolverConfig"]);
    // The empty document between them still counts for positions.
    assert_eq!(cfg.extra_documents()[1].position(), 4);

    let yaml = cfg.to_yaml().expect("serializes");
    assert!(yaml.contains("kind: HostnameConfig"));
    assert!(yaml.contains("kind: ResolverConfig"));
    let again = parse_ok(&yaml);
    assert_eq!(again.v1alpha1(), cfg.v1alpha1());
    let again_kinds: Vec<&str> = again.extra_documents().iter().map(|d| d.kind()).collect();
    assert_eq!(again_kinds, kinds);
    assert_eq!(
        again.extra_documents()[1].value(),
        cfg.extra_documents()[1].value()
    );
}

// === validation ===

#[test]
fn invalid_token_is_rejected_without_echoing_it() {
    let text = edit(
        &controlplane_yaml(),
        "token: 7x1a2b.0123456789abcdef",
        "token: Not-A-Token",
    );
    let err = parse_err(&text);
    assert_issues(&err, &["machine.token"]);
    assert!(!err.to_string().contains("Not-A-Token"), "{err}");

    let text = edit(
        &controlplane_yaml(),
        "    token: 7x1a2b.0123456789abcdef # presented to trustd\n",
        "",
    );
    assert_issues(&parse_err(&text), &["machine.token"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = edit(
        &controlplane_yaml(),
        "endpoint: https://10.5.0.2:6443",
        "endpoint: http://10.5.0.2:6443",
    );
    let text = edit(&text, "disk: /dev/sda", "disk: sda");
    let text = edit(
        &text,
        "    network: {}\n",
        "    network:\n        interfaces:\n            - interface: eth0\n              addresses:\n                  - 10.0.0.300/24\n              routes:\n                  - metric: 5\n",
    );
    let err = parse_err(&text);
    assert_issues(
        &err,
        &[
            "cluster.controlPlane.endpoint",
            "machine.install.disk",
            "machine.network.interfaces[0].addresses[0]",
            "machine.network.interfaces[0].routes[0]",
        ],
    );
    assert!(
        err.to_string().starts_with("machine config: 4 problems: "),
        "{err}"
    );
}

#[test]
fn file_rules() {
    let text = edit(
        &controlplane_yaml(),
        "    features:\n",
        "    files:\n        - content: hello\n          permissions: 0o644\n          path: etc/motd\n          op: replace\n    features:\n",
    );
    assert_issues(
        &parse_err(&text),
        &["machine.files[0].path", "machine.files[0].op"],
    );

    // Creating is for /var only; a path names its file without climbing.
    let file = |path: &str, op: &str| {
        edit(
            &controlplane_yaml(),
            "    features:\n",
            &format!(
                "    files:\n        - content: hello\n          path: {path}\n          op: {op}\n    features:\n"
            ),
        )
    };
    // These rules came later: a persisted config breaking one still
    // loads (the node refuses the entry when it writes the files), and
    // the strict check an apply runs refuses it.
    let strict_err = |text: &str| parse_ok(text).strict_check().expect_err("strict");
    let err = strict_err(&file("/etc/motd", "create"));
    assert_issues(&err, &["machine.files[0].op"]);
    assert!(err.to_string().contains("under /var only"), "{err}");
    for bad in [
        "/var/../etc/motd",
        "/",
        "/var/./x",
        "/system/state/config.yaml",
        "/proc/x",
    ] {
        assert_issues(
            &strict_err(&file(bad, "overwrite")),
            &["machine.files[0].path"],
        );
    }

    let cfg = parse_ok(&file("/etc/motd", "append"));
    let files = cfg.user_files();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].op, FileOp::Append);
    assert_eq!(files[0].mode, UserFile::DEFAULT_MODE);
    assert!(!files[0].in_var());
    let cfg = parse_ok(&file("/var/etc/motd", "create"));
    assert!(cfg.user_files()[0].in_var());
}

#[test]
fn env_rules() {
    let with_env = |env: &str| {
        edit(
            &controlplane_yaml(),
            "    features:\n",
            &format!("    env:\n{env}    features:\n"),
        )
    };
    let cfg = parse_ok(&with_env(
        "        https_proxy: http://proxy.example:3128\n        no_proxy: 10.0.0.0/8\n",
    ));
    assert_eq!(
        cfg.env().into_iter().collect::<Vec<_>>(),
        [
            (
                "https_proxy".to_owned(),
                "http://proxy.example:3128".to_owned()
            ),
            ("no_proxy".to_owned(), "10.0.0.0/8".to_owned()),
        ]
    );
    let bad = parse_ok(&with_env(
        "        \"A=B\": x\n        NUL: \"a\\0b\"\n        OK: y\n",
    ));
    assert_issues(
        &bad.strict_check().expect_err("strict"),
        &["machine.env.A=B", "machine.env.NUL"],
    );
    // Loaded from disk, only what can be passed on is.
    assert_eq!(bad.env().into_keys().collect::<Vec<_>>(), ["OK"]);
}

#[test]
fn kmsg_log_configs() {
    let with_docs = |docs: &str| format!("{}---\n{docs}", controlplane_yaml());
    let doc = |name: &str, url: &str| {
        format!("apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: {name}\nurl: {url}\n")
    };
    let cfg = parse_ok(&with_docs(&format!(
        "{}---\n{}",
        doc("remote", "tcp://10.0.2.2:5044/"),
        doc("other", "udp://[fd00::1]:514/")
    )));
    cfg.strict_check().expect("good documents");
    assert_eq!(
        cfg.kmsg_log_urls(),
        ["tcp://10.0.2.2:5044/", "udp://[fd00::1]:514/"]
    );
    assert!(parse_ok(&controlplane_yaml()).kmsg_log_urls().is_empty());

    // Refused when applied.
    let bad = parse_ok(&with_docs(&format!(
        "{}---\n{}---\n{}---\n{}---\n{}",
        doc("fine", "udp://10.0.2.2:516/"),
        doc("remote", "http://10.0.2.2:5044/"),
        doc("remote", "tcp://10.0.2.2/"),
        "apiVersion: v1alpha1\nkind: KmsgLogConfig\nurl: udp://10.0.2.2:514/\n",
        "apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: typo\nurl: udp://10.0.2.2:515/\nurll: x\n"
    )));
    assert_issues(
        &bad.strict_check().expect_err("strict"),
        &[
            "KmsgLogConfig(remote).url",
            "KmsgLogConfig(remote).name",
            "KmsgLogConfig(remote).url",
            "KmsgLogConfig().name",
            "KmsgLogConfig(typo).urll",
        ],
    );
    // Loaded from disk, a document with a problem ships nothing.
    assert_eq!(bad.kmsg_log_urls(), ["udp://10.0.2.2:516/"]);
}

#[test]
fn document_settings() {
    let with_docs = |base: &str, docs: &[&str]| {
        let mut text = base.to_owned();
        for doc in docs {
            text.push_str("---\napiVersion: v1alpha1\n");
            text.push_str(doc);
        }
        text
    };
    let cfg = parse_ok(&with_docs(
        &controlplane_yaml(),
        &[
            "kind: HostnameConfig\nhostname: node-7.example.org\n",
            "kind: ResolverConfig\nnameservers:\n  - address: 10.0.0.53\n    protocol: Do53\nsearchDomains:\n  domains: [corp.example]\n  disableDefault: true\n",
            "kind: StaticHostConfig\nname: 10.0.0.9\nhostnames: [db, db.corp.example]\n",
            "kind: StaticHostConfig\nname: fd00::9\nhostnames: [db6]\n",
            "kind: TimeSyncConfig\nbootTimeout: 1m\nntp:\n  servers: [pool.ntp.org]\n",
        ],
    ));
    cfg.strict_check().expect("good documents");
    assert_eq!(cfg.hostname(), Some("node-7.example.org"));
    assert_eq!(cfg.auto_hostname(), None);
    let docs = cfg.document_settings();
    assert_eq!(
        docs.nameservers,
        Some(vec!["10.0.0.53".parse().expect("ip")])
    );
    assert_eq!(docs.search_domains, Some(vec!["corp.example".to_owned()]));
    assert!(docs.disable_search_domain);
    assert_eq!(
        docs.static_hosts,
        [
            (
                "10.0.0.9".parse().expect("ip"),
                vec!["db".to_owned(), "db.corp.example".to_owned()]
            ),
            ("fd00::9".parse().expect("ip"), vec!["db6".to_owned()]),
        ]
    );
    assert_eq!(cfg.time_servers(), ["pool.ntp.org"]);
    assert_eq!(cfg.time_boot_timeout(), Some(Duration::from_secs(60)));
    assert!(!cfg.time_disabled());
    let off = parse_ok(&with_docs(
        &edit(
            &controlplane_yaml(),
            "stableHostname: true",
            "stableHostname: false",
        ),
        &[
            "kind: HostnameConfig\nauto: off\n",
            "kind: TimeSyncConfig\nenabled: false\n",
        ],
    ));
    off.strict_check().expect("auto: off");
    assert_eq!(off.auto_hostname(), Some(config::AutoHostname::Off));
    assert!(off.time_disabled() && off.time_servers().is_empty());

    // Upstream's rules, each problem named.
    let bad = parse_ok(&with_docs(
        &controlplane_yaml(),
        &[
            "kind: HostnameConfig\nauto: sometimes\n",
            "kind: HostnameConfig\nhostname: again\n",
            "kind: ResolverConfig\nnameservers:\n  - address: nope\n  - address: 1.1.1.1\n    protocol: DoT\n    tlsServerName: one.one.one.one\n",
            "kind: StaticHostConfig\nname: not-an-ip\nhostnames: []\n",
            "kind: StaticHostConfig\nname: 10.0.0.9\nhostnames: [a]\n",
            "kind: StaticHostConfig\nname: 10.0.0.9\nhostnames: [b]\n",
            "kind: TimeSyncConfig\nbootTimeout: soon\nntp:\n  servers: [/dev/ptp0]\nptp:\n  devices: [ptp0]\n",
        ],
    ));
    assert_issues(
        &bad.strict_check().expect_err("strict"),
        &[
            "HostnameConfig.auto",
            "HostnameConfig",
            "ResolverConfig.nameservers[0].address",
            "ResolverConfig.nameservers[1].protocol",
            "ResolverConfig.nameservers[1].tlsServerName",
            "StaticHostConfig(not-an-ip).name",
            "StaticHostConfig(not-an-ip).hostnames",
            "StaticHostConfig(10.0.0.9).name",
            "TimeSyncConfig",
            "TimeSyncConfig.bootTimeout",
            "TimeSyncConfig.ntp.servers[0]",
            "TimeSyncConfig.ptp.devices[0]",
        ],
    );
    // Loaded from disk, the broken documents say nothing.
    assert_eq!(bad.hostname(), None);
    assert_eq!(bad.document_settings().nameservers, None);
    assert_eq!(bad.document_settings().static_hosts.len(), 1);
    assert_eq!(bad.time_servers(), ["time.cloudflare.com"]);

    // Said twice, in v1alpha1 and in a document: refused; v1alpha1 holds.
    let twice = parse_ok(&with_docs(
        &edit(
            &controlplane_yaml(),
            "    network: {}\n",
            "    network:\n        hostname: cp1\n        nameservers: [1.1.1.1]\n    time:\n        servers: [time.example]\n",
        ),
        &[
            "kind: HostnameConfig\nauto: stable\n",
            "kind: ResolverConfig\nnameservers:\n  - address: 8.8.8.8\nhostDNS:\n  enabled: true\n",
            "kind: TimeSyncConfig\nntp:\n  servers: [pool.ntp.org]\n",
        ],
    ));
    let err = twice.strict_check().expect_err("strict");
    assert_issues(
        &err,
        &[
            "HostnameConfig",
            "HostnameConfig.auto",
            "ResolverConfig",
            "ResolverConfig.hostDNS",
            "TimeSyncConfig",
        ],
    );
    assert_eq!(twice.hostname(), Some("cp1"));
    assert_eq!(twice.time_servers(), ["time.example"]);
    assert_eq!(twice.document_settings().nameservers, None);

    // Decoded strictly: an unknown key is named.
    // A name the node could not take is refused, not swapped for another.
    let bad_name = parse_ok(&with_docs(
        &controlplane_yaml(),
        &["kind: HostnameConfig\nhostname: bad_name.example\n"],
    ));
    assert_issues(
        &bad_name.strict_check().expect_err("strict"),
        &["HostnameConfig.hostname"],
    );
    let typo = parse_ok(&with_docs(
        &controlplane_yaml(),
        &["kind: HostnameConfig\nhostnmae: x\n"],
    ));
    let err = typo.strict_check().expect_err("strict");
    assert_issues(&err, &["HostnameConfig.hostnmae"]);
    assert!(
        err.to_string().contains("unknown field `hostnmae`"),
        "{err}"
    );
}

#[test]
fn trusted_roots_documents() {
    let doc = |name: &str, certificates: &str| {
        let indented: String = certificates
            .lines()
            .map(|line| format!("  {line}\n"))
            .collect();
        format!(
            "---\napiVersion: v1alpha1\nkind: TrustedRootsConfig\nname: {name}\ncertificates: |\n{indented}"
        )
    };
    let ca = machinery::pki::generate_os_ca(std::time::SystemTime::now())
        .expect("a CA")
        .cert_pem;
    let two = format!("{ca}{ca}");
    let cfg = parse_ok(&format!(
        "{}{}{}",
        controlplane_yaml(),
        doc("corp", &ca),
        doc("more", &two)
    ));
    cfg.strict_check().expect("good documents");
    let roots = &cfg.registries().trusted_roots;
    assert_eq!(roots.len(), 2);
    assert!(roots[0].contains("-----BEGIN CERTIFICATE-----"));
    assert!(cfg.not_applied().is_empty(), "{:?}", cfg.not_applied());

    let key = pem("PRIVATE KEY", "a2V5");
    let garbled = pem("CERTIFICATE", "bm90IGEgY2VydGlmaWNhdGU=");
    let bad = parse_ok(&format!(
        "{}{}{}{}{}",
        controlplane_yaml(),
        doc("corp", &ca),
        doc("corp", &ca),
        doc("key", &key),
        doc("garbled", &garbled)
    ));
    assert_issues(
        &bad.strict_check().expect_err("strict"),
        &[
            "TrustedRootsConfig(corp).name",
            "TrustedRootsConfig(key).certificates",
            "TrustedRootsConfig(garbled).certificates",
        ],
    );
    // Loaded from disk, only the good document counts.
    assert_eq!(bad.registries().trusted_roots.len(), 1);
}

#[test]
fn watchdog_timer_documents() {
    let with = |doc: &str| {
        parse_ok(&format!(
            "{}---\napiVersion: v1alpha1\nkind: WatchdogTimerConfig\n{doc}",
            controlplane_yaml()
        ))
    };
    let cfg = with("device: /dev/watchdog0\n");
    cfg.strict_check().expect("good");
    assert_eq!(
        cfg.document_settings().watchdog,
        Some(("/dev/watchdog0".to_owned(), Duration::from_secs(60))),
        "upstream's default timeout"
    );
    assert_eq!(
        with("device: /dev/watchdog0\ntimeout: 0s\n")
            .document_settings()
            .watchdog,
        Some(("/dev/watchdog0".to_owned(), Duration::from_secs(60))),
        "zero is the default, as upstream's"
    );
    let cfg = with("device: /dev/watchdog1\ntimeout: 2m\n");
    assert_eq!(
        cfg.document_settings().watchdog,
        Some(("/dev/watchdog1".to_owned(), Duration::from_secs(120)))
    );
    for (doc, path) in [
        ("timeout: 1m\n", "WatchdogTimerConfig.device"),
        ("device: /tmp/wd\n", "WatchdogTimerConfig.device"),
        (
            "device: /dev/watchdog0\ntimeout: 5s\n",
            "WatchdogTimerConfig.timeout",
        ),
        (
            "device: /dev/watchdog0\ntimeout: soon\n",
            "WatchdogTimerConfig.timeout",
        ),
    ] {
        let cfg = with(doc);
        assert_issues(&cfg.strict_check().expect_err(doc), &[path]);
        assert_eq!(cfg.document_settings().watchdog, None, "{doc}");
    }
}

#[test]
fn what_is_not_applied_is_said() {
    assert!(parse_ok(&controlplane_yaml()).not_applied().is_empty());
    let text = edit(
        &edit(
            &controlplane_yaml(),
            "    network: {}\n",
            "    network:\n        kubespan:\n            enabled: true\n    time:\n        servers: [/dev/ptp0]\n    disks:\n        - device: /dev/sdb\n          partitions:\n            - mountpoint: /var/mnt/extra\n    kernel:\n        modules:\n            - name: br_netfilter\n    udev:\n        rules: [\"SUBSYSTEM==\\\"net\\\"\"]\n",
        ),
        "        rbac: true",
        "        rbac: false",
    );
    let text = edit(
        &text,
        "        wipe: false",
        "        wipe: true\n        extraKernelArgs: [console=tty0]",
    );
    let text = format!(
        "{text}---\napiVersion: v1alpha1\nkind: NetworkRuleConfig\nname: a\n---\napiVersion: v1alpha1\nkind: NetworkRuleConfig\nname: b\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: n1\n"
    );
    let cfg = parse_ok(&text);
    let said: Vec<&str> = cfg
        .not_applied()
        .iter()
        .map(|w| w.split(':').next().unwrap_or(""))
        .map(|field| match field {
            "machine.disks" => "disks",
            "machine.kernel.modules" => "modules",
            "machine.udev.rules" => "udev",
            "machine.install.extraKernelArgs" => "args",
            "machine.install.wipe" => "wipe",
            "machine.time.servers" => "ptp",
            "machine.network.kubespan" => "kubespan",
            "machine.features.rbac" => "rbac",
            "NetworkRuleConfig" => "kind",
            _ => "other",
        })
        .collect();
    assert_eq!(
        said,
        [
            "disks", "modules", "udev", "args", "wipe", "ptp", "kubespan", "rbac", "kind"
        ]
    );

    // Disk encryption the node cannot do is refused, not ignored.
    let encrypted = edit(
        &controlplane_yaml(),
        "    network: {}\n",
        "    network: {}\n    systemDiskEncryption:\n        ephemeral:\n            provider: luks2\n            keys:\n                - nodeID: {}\n                  slot: 0\n",
    );
    assert_issues(
        &parse_ok(&encrypted).strict_check().expect_err("strict"),
        &["machine.systemDiskEncryption"],
    );
}

#[test]
fn time_rules() {
    let text = edit(
        &controlplane_yaml(),
        "    features:\n",
        "    time:\n        servers:\n            - \"\"\n        bootTimeout: 2 minutes\n    features:\n",
    );
    assert_issues(
        &parse_err(&text),
        &["machine.time.servers[0]", "machine.time.bootTimeout"],
    );
}

#[test]
fn ca_rules() {
    // Missing certificate.
    let text = fill(&CONTROLPLANE.replace("crt: @OS_CRT@", "crt: \"\""));
    assert_issues(&parse_err(&text), &["machine.ca.crt"]);

    // Not base64.
    let text = fill(&CONTROLPLANE.replace("crt: @OS_CRT@", "crt: not*base64"));
    assert_issues(&parse_err(&text), &["machine.ca.crt"]);

    // Base64, but not PEM.
    let text = fill(&CONTROLPLANE.replace("crt: @OS_CRT@", "crt: aGVsbG8="));
    assert_issues(&parse_err(&text), &["machine.ca.crt"]);

    // A control plane needs the key.
    let text = fill(&CONTROLPLANE.replace("key: @OS_KEY@", "key: \"\""));
    assert_issues(&parse_err(&text), &["machine.ca.key"]);

    // A worker must not carry it.
    let text = fill(&WORKER.replace(
        "        crt: @OS_CRT@\n        key: \"\"",
        "        crt: @OS_CRT@\n        key: @OS_KEY@",
    ));
    assert_issues(&parse_err(&text), &["machine.ca.key"]);
}

#[test]
fn cluster_rules() {
    let text = edit(
        &controlplane_yaml(),
        "    controlPlane:\n        endpoint: https://10.5.0.2:6443 # canonical API URL\n",
        "",
    );
    assert_issues(&parse_err(&text), &["cluster.controlPlane.endpoint"]);

    let text = edit(&controlplane_yaml(), "- 10.96.0.0/12", "- 10.96.0.0");
    assert_issues(&parse_err(&text), &["cluster.network.serviceSubnets[0]"]);

    let text = edit(&controlplane_yaml(), "persist: true", "persist: false");
    assert_issues(&parse_err(&text), &["persist"]);
}

// === output and persistence ===

#[test]
fn to_yaml_round_trips() {
    let cfg = parse_ok(&controlplane_yaml());
    let yaml = cfg.to_yaml().expect("serializes");
    assert!(yaml.starts_with("version: v1alpha1\n"), "{yaml}");
    assert_eq!(parse_ok(&yaml), cfg);
}

#[test]
fn debug_output_redacts_secrets() {
    let cfg = parse_ok(&controlplane_yaml());
    let summary = format!("{cfg:?}");
    assert!(!summary.contains("7x1a2b"), "{summary}");

    let full = format!("{:?}", cfg.documents());
    assert!(full.contains("<redacted>"));
    assert!(!full.contains("7x1a2b.0123456789abcdef"));
    assert!(!full.contains("abcdef.0123456789abcdef"));
    let os_key = base64::encode(pem("ED25519 PRIVATE KEY", "VGFsb3MgQVBJIENBIGtleQ=="));
    assert!(!full.contains(&os_key));
}

#[test]
fn save_and_load_round_trip() {
    let dir = temp_dir("roundtrip");
    let path = config::persist_path(&dir);
    assert_eq!(path, dir.join("config.yaml"));

    let text = format!(
        "{}---\napiVersion: v1alpha1\nkind: HostnameConfig\nauto: stable\n",
        controlplane_yaml()
    );
    let cfg = parse_ok(&text);
    config::save_atomic(&path, &cfg).expect("first save");
    let loaded = config::load(&path).expect("load");
    assert_eq!(loaded, cfg);

    // Overwriting works and leaves no temporary files behind.
    config::save_atomic(&path, &loaded).expect("second save");
    let names: Vec<String> = fs::read_dir(&dir)
        .expect("list dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["config.yaml"]);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = path.metadata().expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the config holds keys");
    }

    fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn load_errors_name_the_file() {
    let dir = temp_dir("errors");
    let path = dir.join("nope.yaml");

    let err = config::load(&path).expect_err("missing file");
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    fs::write(&path, "version: v1alpha1\nmachine:\n    typo: 1\n").expect("write fixture");
    let err = config::load(&path).expect_err("bad contents");
    let expected = format!(
        "{}: machine config: unknown key \"typo\" at machine",
        path.display()
    );
    assert_eq!(err.to_string(), expected);

    fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn base64_round_trips_through_the_public_api() {
    let data = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
    assert_eq!(
        base64::decode(base64::encode(data)).expect("own output"),
        data
    );
    assert!(base64::decode("not base64!").is_err());
}

#[test]
fn self_declared_http_registries_and_installer_keys_are_read() {
    let text = edit(
        &controlplane_yaml(),
        "        wipe: false # wipe before install\n",
        "        wipe: false # wipe before install\n        trustedKeys:\n            - |\n              -----BEGIN PUBLIC KEY-----\n              MCowBQYDK2VwAyEA\n              -----END PUBLIC KEY-----\n    registries:\n        mirrors:\n            10.0.2.2:5000:\n                endpoints: [\"http://10.0.2.2:5000\"]\n            docker.io:\n                endpoints: [\"https://mirror.example\"]\n            ghcr.io:\n                endpoints: [\"http://elsewhere:5000\"]\n",
    );
    let cfg = parse_ok(&text);
    // A registry that names itself over http: the installer reads that
    // from the mirrors it is handed.
    assert_eq!(
        cfg.registries().mirrors["10.0.2.2:5000"].endpoints,
        ["http://10.0.2.2:5000"]
    );
    assert_eq!(cfg.install_trusted_keys().len(), 1);
    assert!(cfg.install_trusted_keys()[0].starts_with("-----BEGIN PUBLIC KEY-----"));

    let bad = edit(
        &text,
        "-----BEGIN PUBLIC KEY-----\n              MCow",
        "not a key\n              MCow",
    );
    assert_issues(&parse_err(&bad), &["machine.install.trustedKeys[0]"]);
    assert!(parse_ok(&controlplane_yaml()).registries().is_empty());
}

#[test]
fn registry_credentials_and_ca_are_read_and_checked() {
    let ca = base64::encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let section = format!(
        "        wipe: false # wipe before install\n    registries:\n        config:\n            \
         10.0.2.2:5000:\n                auth:\n                    username: talos\n                    \
         password: hunter2\n                tls:\n                    ca: {ca}\n"
    );
    let text = edit(
        &controlplane_yaml(),
        "        wipe: false # wipe before install\n",
        &section,
    );
    let cfg = parse_ok(&text);
    let access = &cfg.registry_access()["10.0.2.2:5000"];
    let auth = access.auth.as_ref().expect("credentials");
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("talos", "hunter2")
    );
    assert!(access.ca_pem.as_deref().is_some_and(|p| p.contains("MIIB")));
    // The section round-trips as written.
    assert!(cfg.to_yaml().expect("yaml").contains("hunter2"));
    assert!(parse_ok(&controlplane_yaml()).registry_access().is_empty());

    assert!(cfg.strict_check().is_ok());

    // A CA that is no PEM and a password without a user: such a config
    // still loads (one persisted before these checks must boot), without
    // the bad parts, but the strict check an apply runs refuses it, naming
    // both fields.
    let bad = edit(&text, &ca, &base64::encode("not a certificate"));
    let bad = edit(&bad, "username: talos", "identityToken: tok");
    let loaded = parse_ok(&bad);
    let access = &loaded.registry_access()["10.0.2.2:5000"];
    assert!(
        access.auth.is_none() && access.ca_pem.is_none(),
        "{access:?}"
    );
    assert_issues(
        &loaded.strict_check().expect_err("strict"),
        &[
            "machine.registries.config.10.0.2.2:5000.auth.username",
            "machine.registries.config.10.0.2.2:5000.tls.ca",
        ],
    );
}

#[test]
fn host_names_follow_one_rule() {
    // The reason of the one issue at `path`.
    let reason = |err: &ConfigError, path: &str| -> String {
        assert_issues(err, &[path]);
        let issues = err.validation_issues().expect("validation issues");
        issues
            .as_slice()
            .iter()
            .find(|issue| issue.path == path)
            .map(|issue| issue.reason.clone())
            .expect("the issue")
    };
    let long_label = "a".repeat(64);
    for (name, needle) in [
        ("-node", "letters, digits and inner hyphens"),
        ("node_1", "letters, digits and inner hyphens"),
        ("a..b", "label \"\" is not 1 to 63 characters"),
        (long_label.as_str(), "is not 1 to 63 characters"),
    ] {
        // machine.network.hostname: strictly (a persisted config loads).
        let v1 = parse_ok(&edit(
            &controlplane_yaml(),
            "    network: {}\n",
            &format!("    network:\n        hostname: {name}\n"),
        ));
        let err = v1.strict_check().expect_err(name);
        let said = reason(&err, "machine.network.hostname");
        assert!(said.contains(needle), "{name}: {said}");
        // A HostnameConfig: the same rule and words.
        let doc = parse_ok(&format!(
            "{}---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: {name}\n",
            controlplane_yaml()
        ));
        let err = doc.strict_check().expect_err(name);
        let said = reason(&err, "HostnameConfig.hostname");
        assert!(said.contains(needle), "{name}: {said}");
    }
    let at_most = format!("{}.{}", "a".repeat(63), "b".repeat(63));
    let good = parse_ok(&edit(
        &controlplane_yaml(),
        "    network: {}\n",
        &format!("    network:\n        hostname: {at_most}.\n"),
    ));
    good.strict_check()
        .expect("two 63-character labels and a final dot");
    assert_eq!(config::host_name_problem(&"a.".repeat(127)), None);
    // One final dot, not two.
    assert!(config::host_name_problem("node..").is_some());
    let too_long = format!("{}aa", "a.".repeat(127));
    assert!(
        config::host_name_problem(&too_long)
            .is_some_and(|p| p.contains("is 256 characters long (253 at most)")),
        "{too_long}"
    );
}
