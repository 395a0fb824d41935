//! The `v1alpha1` machine config document, exactly as it is written in YAML.
//!
//! These types are the *input* shape: every field is optional so a document
//! round-trips without invented defaults, and every struct rejects keys it
//! does not know. Nothing here is checked beyond its YAML type; the rules
//! live in validation, which turns a [`Config`] into a
//! [`MachineConfig`](super::MachineConfig).
//!
//! Parts that only matter to Kubernetes components we do not drive yet
//! (API server flags, admission plugins, registries, disk encryption, ...)
//! are kept as raw [`Value`]s: they load and are written back unchanged, but
//! keys inside them are not checked.
//!
//! Key spellings follow upstream Talos (`certSANs`, `acceptedCAs`,
//! `clusterDNS`, `hostDNS`, `localAPIServerPort`, ...), which is why several
//! fields carry an explicit `rename`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_yaml_ng::Value;

/// A string-to-string map (`sysctls`, `env`, `nodeLabels`, `extraArgs`, ...).
///
/// Values may be written as any YAML scalar (`somaxconn: 65535`,
/// `rotate-server-certificates: true`); they are kept as their text, as
/// upstream does.
pub type StringMap = BTreeMap<String, String>;

// === Secret ===

/// A string that must not show up in logs: tokens, keys, shared secrets.
///
/// Serializes as the plain string; `Debug` prints `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is the empty string (how workers write `key: ""`).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(\"\")")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

// === FileMode ===

/// File permission bits of a `machine.files` entry.
///
/// Accepts an integer (`420`, `0o644`, `0x1a4`) or an octal literal that the
/// YAML 1.2 parser left as a string (`0644`). Serializes as a plain integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FileMode(pub u32);

impl Serialize for FileMode {
    fn serialize<S>(&self, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
    {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D>(deserializer: D) -> Result<Self, D::Error>
    where
        D: Deserializer<'de>,
    {
        deserializer.deserialize_any(FileModeVisitor)
    }
}

struct FileModeVisitor;

impl Visitor<'_> for FileModeVisitor {
    type Value = FileMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("file permissions as an integer such as 0o644 or 420")
    }

    fn visit_u64<E>(self, v: u64) -> Result<FileMode, E>
    where
        E: de::Error,
    {
        match u32::try_from(v) {
            Ok(mode) => Ok(FileMode(mode)),
            Err(_) => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_i64<E>(self, v: i64) -> Result<FileMode, E>
    where
        E: de::Error,
    {
        match u32::try_from(v) {
            Ok(mode) => Ok(FileMode(mode)),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<FileMode, E>
    where
        E: de::Error,
    {
        let digits = v
            .strip_prefix("0o")
            .or_else(|| v.strip_prefix("0O"))
            .or_else(|| v.strip_prefix('0'))
            .filter(|digits| {
                !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
            });
        match digits.and_then(|digits| u32::from_str_radix(digits, 8).ok()) {
            Some(mode) => Ok(FileMode(mode)),
            None => Err(E::invalid_value(Unexpected::Str(v), &self)),
        }
    }
}

// === Lenient scalars ===

/// Deserializers that accept what Go's YAML decoder accepts for strings.
mod lenient {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, Visitor};

    use super::StringMap;

    /// An optional map whose values may be any scalar, kept as text.
    pub(super) fn string_map<'de, D>(deserializer: D) -> Result<Option<StringMap>, D::Error>
    where
        D: Deserializer<'de>,
    {
        let raw = Option::<BTreeMap<String, ScalarString>>::deserialize(deserializer)?;
        Ok(raw.map(|map| map.into_iter().map(|(key, value)| (key, value.0)).collect()))
    }

    /// A scalar of any YAML type, as its text (`null` becomes "").
    struct ScalarString(String);

    impl<'de> Deserialize<'de> for ScalarString {
        fn deserialize<D>(deserializer: D) -> Result<Self, D::Error>
        where
            D: Deserializer<'de>,
        {
            deserializer.deserialize_any(ScalarStringVisitor)
        }
    }

    struct ScalarStringVisitor;

    impl Visitor<'_> for ScalarStringVisitor {
        type Value = ScalarString;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, number or boolean")
        }

        fn visit_str<E>(self, v: &str) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(v.to_owned()))
        }

        fn visit_string<E>(self, v: String) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(v))
        }

        fn visit_bool<E>(self, v: bool) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(v.to_string()))
        }

        fn visit_i64<E>(self, v: i64) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(v.to_string()))
        }

        fn visit_u64<E>(self, v: u64) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(v.to_string()))
        }

        fn visit_f64<E>(self, v: f64) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(v.to_string()))
        }

        fn visit_unit<E>(self) -> Result<ScalarString, E>
        where
            E: de::Error,
        {
            Ok(ScalarString(String::new()))
        }
    }
}

// === Document root ===

/// The whole `v1alpha1` document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Schema version; always `v1alpha1`.
    pub version: String,
    /// Copy service logs to the console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// Deprecated upstream; accepted, must not be `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist: Option<bool>,
    /// Machine-specific settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Cluster-wide settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

// === machine ===

/// `machine`: what this node is and how it is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Machine {
    /// `controlplane`, `worker`, or the legacy `init` / `join`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// The trustd token a node presents to get its certificate signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The Talos API CA (base64 PEM); workers carry only `crt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateAndKey>,
    /// Extra CAs whose certificates are accepted.
    #[serde(rename = "acceptedCAs", skip_serializing_if = "Option::is_none")]
    pub accepted_cas: Option<Vec<Certificate>>,
    /// Extra subject alternative names for the apid certificate.
    #[serde(rename = "certSANs", skip_serializing_if = "Option::is_none")]
    pub cert_sans: Option<Vec<String>>,
    /// Per-node control plane component switches (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<Value>,
    /// Kubelet settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<Kubelet>,
    /// Static pods (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<Value>,
    /// Host networking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Deprecated extra disk partitioning (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<Value>,
    /// Installation settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    /// Files written at boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<MachineFile>>,
    /// Environment for PID 1 and every service.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub env: Option<StringMap>,
    /// Time synchronisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Kernel sysctls (`net.ipv4.ip_forward: "1"`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub sysctls: Option<StringMap>,
    /// sysfs writes (`devices.system.cpu.cpu0.cpufreq.scaling_governor: performance`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub sysfs: Option<StringMap>,
    /// Image registry mirrors and credentials (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registries: Option<Value>,
    /// STATE/EPHEMERAL encryption (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_disk_encryption: Option<Value>,
    /// Feature switches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// udev rules (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udev: Option<Value>,
    /// Log shipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// Kernel modules (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Value>,
    /// Seccomp profiles (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp_profiles: Option<Value>,
    /// OCI runtime spec overrides for CRI containers (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_runtime_spec_overrides: Option<Value>,
    /// Kubernetes node labels.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub node_labels: Option<StringMap>,
    /// Kubernetes node annotations.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub node_annotations: Option<StringMap>,
    /// Kubernetes node taints (`key: value:Effect`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub node_taints: Option<StringMap>,
}

/// A base64 PEM certificate with an optional base64 PEM key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateAndKey {
    /// Certificate, base64 of PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crt: Option<String>,
    /// Private key, base64 of PEM (empty or absent on workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
}

/// A base64 PEM certificate on its own (`acceptedCAs` entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Certificate {
    /// Certificate, base64 of PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crt: Option<String>,
}

/// A base64 PEM private key on its own (`cluster.serviceAccount`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Key {
    /// Private key, base64 of PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
}

/// `machine.kubelet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kubelet {
    /// Kubelet image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Cluster DNS server addresses.
    #[serde(rename = "clusterDNS", skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<Vec<String>>,
    /// Extra kubelet flags.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub extra_args: Option<StringMap>,
    /// Extra mounts into the kubelet container (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_mounts: Option<Value>,
    /// KubeletConfiguration overrides (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_config: Option<Value>,
    /// Credential provider configuration (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_provider_config: Option<Value>,
    /// Use the runtime's default seccomp profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_runtime_seccomp_profile_enabled: Option<bool>,
    /// Register the node under its FQDN.
    #[serde(rename = "registerWithFQDN", skip_serializing_if = "Option::is_none")]
    pub register_with_fqdn: Option<bool>,
    /// How the kubelet picks its node IP.
    #[serde(rename = "nodeIP", skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<KubeletNodeIp>,
    /// Run the kubelet standalone (static pods only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_node_registration: Option<bool>,
    /// Ignore `/etc/kubernetes/manifests`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_manifests_directory: Option<bool>,
}

/// `machine.kubelet.nodeIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletNodeIp {
    /// Subnets (or addresses) to pick the node IP from; `!` excludes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_subnets: Option<Vec<String>>,
}

/// `machine.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Static hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Link configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Device>>,
    /// DNS servers (IP addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
    /// DNS search domains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_domains: Option<Vec<String>>,
    /// Extra `/etc/hosts` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_host_entries: Option<Vec<ExtraHost>>,
    /// KubeSpan (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubespan: Option<Value>,
    /// Do not derive a search domain from the hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_search_domain: Option<bool>,
}

/// One entry of `machine.network.interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    /// Link name (exclusive with `deviceSelector`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Links selected by their hardware (exclusive with `interface`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_selector: Option<DeviceSelector>,
    /// Static addresses, CIDR or bare IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// Legacy single address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Static routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    /// Make this link a bond of other links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bond: Option<Bond>,
    /// Make this link a bridge of other links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Bridge>,
    /// Make this link a port of a bridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_port: Option<BridgePort>,
    /// VLANs on this link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlans: Option<Vec<Vlan>>,
    /// Link MTU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Run DHCP on this link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// Leave this link alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore: Option<bool>,
    /// Create a dummy link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dummy: Option<bool>,
    /// DHCP client options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
    /// WireGuard settings (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Value>,
    /// Shared virtual IP (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<Value>,
}

/// `deviceSelector`: every link whose hardware matches all the qualifiers
/// given. All but `physical` may hold `*` wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceSelector {
    /// The device's bus address (`0000:00:03.0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_path: Option<String>,
    /// The link's hardware address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
    /// The link's permanent hardware address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permanent_addr: Option<String>,
    /// The PCI vendor and device ids (`1af4:1000`).
    #[serde(rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    /// The kernel driver (`virtio_net`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Physical links only (no bonds, VLANs, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical: Option<bool>,
}

impl DeviceSelector {
    /// Whether no qualifier is given (such a selector matches nothing).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        [
            &self.bus_path,
            &self.hardware_addr,
            &self.permanent_addr,
            &self.pci_id,
            &self.driver,
        ]
        .iter()
        .all(|q| q.as_deref().is_none_or(str::is_empty))
            && self.physical.is_none()
    }
}

/// `bond`: the entry's link is a bond of `interfaces` and the links
/// `deviceSelectors` pick. Settings beyond these are kept as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bond {
    /// Member links by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Member links by their hardware.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_selectors: Option<Vec<DeviceSelector>>,
    /// `balance-rr` (the kernel's default), `active-backup`,
    /// `balance-xor`, `broadcast`, `802.3ad`, `balance-tlb` or
    /// `balance-alb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Link monitoring interval, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miimon: Option<u32>,
    /// Delay before a member that came up is used, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updelay: Option<u32>,
    /// Delay before a member that went down is dropped, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downdelay: Option<u32>,
    /// 802.3ad LACPDU rate: `slow` or `fast`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lacp_rate: Option<String>,
    /// `layer2`, `layer3+4`, `layer2+3`, `encap2+3` or `encap3+4`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xmit_hash_policy: Option<String>,
    /// Upstream's other bond settings, as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `dhcpOptions`: how the link's DHCP clients run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DhcpOptions {
    /// The metric of the routes a lease gives (upstream's default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_metric: Option<u32>,
    /// Run DHCPv4 (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<bool>,
    /// Run DHCPv6 (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<bool>,
    /// The DHCPv6 DUID, as hex bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duidv6: Option<String>,
}

/// `bridge`: the entry's link is a bridge with `interfaces` (and the
/// entries whose `bridgePort.master` names it) as its ports. Settings
/// beyond these are kept as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bridge {
    /// Port links by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Spanning tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stp: Option<BridgeStp>,
    /// VLAN filtering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<BridgeVlan>,
    /// Upstream's other bridge settings, as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `bridge.stp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BridgeStp {
    /// Run the kernel's spanning tree protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `bridge.vlan`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BridgeVlan {
    /// Filter frames by VLAN on the ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan_filtering: Option<bool>,
}

/// `bridgePort`: the entry's links are ports of the bridge `master`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BridgePort {
    /// The bridge's link name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// Bond modes by name, as the kernel numbers them.
pub const BOND_MODES: [&str; 7] = [
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
];

/// Transmit hash policies by name, as the kernel numbers them.
pub const BOND_XMIT_HASH_POLICIES: [&str; 5] =
    ["layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4"];

/// One entry of a link's `vlans`: the link `<parent>.<vlanId>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Vlan {
    /// The VLAN id, 1 to 4094.
    #[serde(rename = "vlanId", skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Static addresses, CIDR or bare IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// Static routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    /// Run DHCP on the VLAN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// The VLAN link's MTU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Shared virtual IP (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<Value>,
    /// DHCP client options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

/// A static route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// Destination CIDR (empty means the default route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Next hop (empty means a link-scope route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Preferred source address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Route metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// Route MTU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An `/etc/hosts` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraHost {
    /// The address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Names for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
}

/// `machine.install`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Install {
    /// Install disk, a `/dev/...` path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Pick the disk by attributes (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_selector: Option<Value>,
    /// Extra kernel arguments (deprecated upstream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_kernel_args: Option<Vec<String>>,
    /// Installer image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// System extensions (deprecated upstream; kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// Deprecated and ignored upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<bool>,
    /// Wipe the disk before installing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wipe: Option<bool>,
    /// Public keys (ed25519, SubjectPublicKeyInfo PEM) whose installer
    /// images this node also trusts, besides the keys in its image. Ours:
    /// upstream has no image signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<Vec<String>>,
    /// Mark the MBR partition active for legacy BIOS.
    #[serde(rename = "legacyBIOSSupport", skip_serializing_if = "Option::is_none")]
    pub legacy_bios_support: Option<bool>,
    /// GRUB takes its command line from the UKI.
    #[serde(rename = "grubUseUKICmdline", skip_serializing_if = "Option::is_none")]
    pub grub_use_uki_cmdline: Option<bool>,
}

/// One entry of `machine.files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineFile {
    /// File contents (plain text, not base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Permission bits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<FileMode>,
    /// Absolute path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `create`, `append` or `overwrite`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
}

/// `machine.time`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Time {
    /// Turn time sync off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// NTP servers (or PTP device paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// How long boot waits for sync, as a Go duration (`2m30s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_timeout: Option<String>,
}

/// `machine.logging`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Logging {
    /// Where service logs are sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<LoggingDestination>>,
}

/// One log destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoggingDestination {
    /// `tcp://host:port` or `udp://host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Always `json_lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Extra fields added to every message.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub extra_tags: Option<StringMap>,
}

/// `machine.features`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Features {
    /// Role-based access to the Talos API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rbac: Option<bool>,
    /// Derive a stable default hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_hostname: Option<bool>,
    /// Talos API access from pods (kept raw).
    #[serde(
        rename = "kubernetesTalosAPIAccess",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes_talos_api_access: Option<Value>,
    /// apid checks client certificate extended key usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apid_check_ext_key_usage: Option<bool>,
    /// XFS project quotas on EPHEMERAL and user volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_quota_support: Option<bool>,
    /// Older (v1.8-v1.9) address-sorting switch, still written by those versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_prefix_preference: Option<bool>,
    /// Local load balancer in front of the API servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_prism: Option<KubePrism>,
    /// Host DNS caching resolver.
    #[serde(rename = "hostDNS", skip_serializing_if = "Option::is_none")]
    pub host_dns: Option<HostDns>,
    /// Image cache (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_cache: Option<Value>,
    /// `v1` or `v2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_address_sort_algorithm: Option<String>,
}

/// `machine.features.kubePrism`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubePrism {
    /// Run the local load balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Its port (upstream default 7445).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `machine.features.hostDNS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostDns {
    /// Run the caching resolver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// CoreDNS forwards to the host resolver.
    #[serde(
        rename = "forwardKubeDNSToHost",
        skip_serializing_if = "Option::is_none"
    )]
    pub forward_kube_dns_to_host: Option<bool>,
    /// Resolve cluster member names locally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve_member_names: Option<bool>,
}

// === cluster ===

/// `cluster`: settings shared by every node of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// Cluster identity for discovery (base64 of 32 random bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Shared discovery secret (base64 of 32 random bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Where the Kubernetes API is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    /// Cluster name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Pod and service networking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<ClusterNetwork>,
    /// Kubernetes bootstrap token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Secret encryption at rest with AES-CBC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aescbc_encryption_secret: Option<Secret>,
    /// Secret encryption at rest with secretbox (wins over AES-CBC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secretbox_encryption_secret: Option<Secret>,
    /// Kubernetes CA (key only on control plane nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateAndKey>,
    /// Extra accepted Kubernetes CAs.
    #[serde(rename = "acceptedCAs", skip_serializing_if = "Option::is_none")]
    pub accepted_cas: Option<Vec<Certificate>>,
    /// Front-proxy CA.
    #[serde(rename = "aggregatorCA", skip_serializing_if = "Option::is_none")]
    pub aggregator_ca: Option<CertificateAndKey>,
    /// Service account signing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<Key>,
    /// kube-apiserver settings (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_server: Option<Value>,
    /// kube-controller-manager settings (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_manager: Option<Value>,
    /// kube-proxy settings (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Value>,
    /// kube-scheduler settings (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Value>,
    /// Cluster member discovery (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Value>,
    /// etcd settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
    /// CoreDNS settings (kept raw).
    #[serde(rename = "coreDNS", skip_serializing_if = "Option::is_none")]
    pub core_dns: Option<Value>,
    /// External cloud provider (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_cloud_provider: Option<Value>,
    /// URLs of extra manifests applied at bootstrap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_manifests: Option<Vec<String>>,
    /// HTTP headers used when fetching `extraManifests`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub extra_manifest_headers: Option<StringMap>,
    /// Manifests carried in the config itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_manifests: Option<Vec<InlineManifest>>,
    /// Admin kubeconfig settings (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_kubeconfig: Option<Value>,
    /// Deprecated spelling of `allowSchedulingOnControlPlanes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_scheduling_on_masters: Option<bool>,
    /// Let workloads run on control plane nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_scheduling_on_control_planes: Option<bool>,
}

/// `cluster.controlPlane`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlane {
    /// Canonical Kubernetes API URL (`https://...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Port the local API server listens on (upstream default 6443).
    #[serde(rename = "localAPIServerPort", skip_serializing_if = "Option::is_none")]
    pub local_api_server_port: Option<u16>,
}

/// `cluster.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetwork {
    /// CNI selection (kept raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni: Option<Value>,
    /// Kubernetes DNS domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// Pod CIDRs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_subnets: Option<Vec<String>>,
    /// Service CIDRs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_subnets: Option<Vec<String>>,
}

/// `cluster.etcd`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Etcd {
    /// etcd image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// etcd CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateAndKey>,
    /// Extra etcd flags.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::string_map"
    )]
    pub extra_args: Option<StringMap>,
    /// Deprecated single advertised subnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Subnets to pick the advertised address from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_subnets: Option<Vec<String>>,
    /// Subnets to listen on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_subnets: Option<Vec<String>>,
}

/// One entry of `cluster.inlineManifests`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InlineManifest {
    /// Unique name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Manifest YAML.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
}
