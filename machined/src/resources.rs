//! The node's state as read-only COSI resources (`talosctl get`).
//!
//! Background: upstream Talos keeps its state in a COSI runtime of
//! controllers and resources and serves it through `cosi.resource.State`;
//! `talosctl get` resolves a type name against the `ResourceDefinitions` in
//! namespace `meta`, then lists or gets resources of that type. Nothing may be
//! written through the API.
//!
//! Design: this node has no controller runtime. Each resource type is a view
//! computed when it is read, from the same state the other calls report (the
//! config store, META, the supervisor, the event ring, and the kernel:
//! rtnetlink, sysfs, block devices, SMBIOS, `resolv.conf`). [`Resources`]
//! remembers what each resource looked like when last read, so that versions
//! count changes and `created`/`updated` are stable across calls; a change
//! that comes and goes between two reads is not counted. Watches poll, and
//! read at once when a node event announces a change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use api::cosi::resource::meta as meta_pb;
use api::talos::resource::definitions::{
    block as block_pb, enums as enums_pb, network as network_pb, runtime as runtime_pb,
    v1alpha1 as v1alpha1_pb,
};
use machinery::mode::Mode;
use serde::Serialize;

use crate::events::{MachineStage, MachineStatus};
use crate::netres;
use crate::node::Node;
use crate::supervisor::ServiceState;
use crate::volumes;

/// Namespace of the namespaces and resource definitions.
pub const NS_META: &str = "meta";
/// Namespace of the machine config.
pub const NS_CONFIG: &str = "config";
/// Namespace of runtime state.
pub const NS_RUNTIME: &str = "runtime";
/// Namespace of network state.
pub const NS_NETWORK: &str = "network";
/// Namespace of hardware facts.
pub const NS_HARDWARE: &str = "hardware";

/// Every namespace served, with upstream's descriptions.
pub const NAMESPACES: &[(&str, &str)] = &[
    (NS_CONFIG, "Talos node configuration."),
    (NS_HARDWARE, "Hardware resources."),
    (
        NS_META,
        "Metadata namespace which contains resource and namespace definitions.",
    ),
    (NS_NETWORK, "Networking resources."),
    (NS_RUNTIME, "Talos v1alpha1 subsystems glue resources."),
];

/// A resource type and how clients name and print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    /// Canonical type, `<Plural>.<suffix>`.
    pub type_: &'static str,
    /// Singular name, e.g. "MetaKey".
    pub display: &'static str,
    /// The namespace its resources live in.
    pub namespace: &'static str,
    /// Extra short names.
    pub aliases: &'static [&'static str],
    /// Extra table columns: (header, JSONPath into the spec).
    pub columns: &'static [(&'static str, &'static str)],
    /// Reading it needs os:admin.
    pub sensitive: bool,
    /// Only `aliases` name it (COSI's `SkipAutomaticAliases`): no derived
    /// singular, initials or plural, as upstream sets for a type whose
    /// initials another type already has.
    pub skip_automatic_aliases: bool,
}

/// `Namespaces.meta.cosi.dev`.
pub const NAMESPACE: Definition = Definition {
    type_: "Namespaces.meta.cosi.dev",
    display: "Namespace",
    namespace: NS_META,
    aliases: &["ns"],
    columns: &[],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `ResourceDefinitions.meta.cosi.dev`.
pub const RESOURCE_DEFINITION: Definition = Definition {
    type_: "ResourceDefinitions.meta.cosi.dev",
    display: "ResourceDefinition",
    namespace: NS_META,
    aliases: &[],
    columns: &[],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `MachineConfigs.config.talos.dev`: the config in effect (id `v1alpha1`).
pub const MACHINE_CONFIG: Definition = Definition {
    type_: "MachineConfigs.config.talos.dev",
    display: "MachineConfig",
    namespace: NS_CONFIG,
    aliases: &[],
    columns: &[],
    sensitive: true,
    skip_automatic_aliases: false,
};
/// `MachineTypes.config.talos.dev` (id `machine-type`).
pub const MACHINE_TYPE: Definition = Definition {
    type_: "MachineTypes.config.talos.dev",
    display: "MachineType",
    namespace: NS_CONFIG,
    aliases: &[],
    columns: &[("Type", "{@}")],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `MetaKeys.runtime.talos.dev`: one per key of the META partition.
pub const META_KEY: Definition = Definition {
    type_: "MetaKeys.runtime.talos.dev",
    display: "MetaKey",
    namespace: NS_RUNTIME,
    aliases: &["meta"],
    columns: &[("Value", "{.value}")],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `KernelCmdlines.runtime.talos.dev` (id `cmdline`).
pub const KERNEL_CMDLINE: Definition = Definition {
    type_: "KernelCmdlines.runtime.talos.dev",
    display: "KernelCmdline",
    namespace: NS_RUNTIME,
    aliases: &["cmdline"],
    columns: &[("Cmdline", "{.cmdline}")],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `SecurityStates.talos.dev` (id `securitystate`): Secure Boot, UKI,
/// SELinux, FIPS and module signing, as the firmware and kernel say.
pub const SECURITY_STATE: Definition = Definition {
    type_: "SecurityStates.talos.dev",
    display: "SecurityState",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[
        ("SecureBoot", "{.secureBoot}"),
        ("UKISigningKeyFingerprint", "{.ukiSigningKeyFingerprint}"),
        ("PCRSigningKeyFingerprint", "{.pcrSigningKeyFingerprint}"),
        ("SELinuxState", "{.selinuxState}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `KernelParamStatuses.runtime.talos.dev`: each kernel parameter set
/// (`proc.sys.<sysctl>`, `sys.<sysfs key>`).
pub const KERNEL_PARAM_STATUS: Definition = Definition {
    type_: "KernelParamStatuses.runtime.talos.dev",
    display: "KernelParamStatus",
    namespace: NS_RUNTIME,
    aliases: &["sysctls", "kernelparameters", "kernelparams"],
    columns: &[
        ("Current", "{.current}"),
        ("Default", "{.default}"),
        ("Unsupported", "{.unsupported}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `MachineStatuses.runtime.talos.dev` (id `machine`).
pub const MACHINE_STATUS: Definition = Definition {
    type_: "MachineStatuses.runtime.talos.dev",
    display: "MachineStatus",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[("Stage", "{.stage}"), ("Ready", "{.status.ready}")],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `Services.v1alpha1.talos.dev`: one per supervised service.
pub const SERVICE: Definition = Definition {
    type_: "Services.v1alpha1.talos.dev",
    display: "Service",
    namespace: NS_RUNTIME,
    aliases: &["svc"],
    columns: &[
        ("Running", "{.running}"),
        ("Healthy", "{.healthy}"),
        ("Health Unknown", "{.unknown}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};
/// `HostnameStatuses.net.talos.dev` (id `hostname`).
pub const HOSTNAME_STATUS: Definition = Definition {
    type_: "HostnameStatuses.net.talos.dev",
    display: "HostnameStatus",
    namespace: NS_NETWORK,
    aliases: &["hostname"],
    columns: &[("Hostname", "{.hostname}"), ("Domainname", "{.domainname}")],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `NetworkStatuses.net.talos.dev` (id `status`): how far networking is
/// set up.
pub const NETWORK_STATUS: Definition = Definition {
    type_: "NetworkStatuses.net.talos.dev",
    display: "NetworkStatus",
    namespace: NS_NETWORK,
    // Its initials would be "ns", the namespaces' alias: named instead.
    aliases: &[
        "networkstatus",
        "networkstatuses",
        "netstatus",
        "netstatuses",
    ],
    columns: &[
        ("Address", "{.addressReady}"),
        ("Connectivity", "{.connectivityReady}"),
        ("Hostname", "{.hostnameReady}"),
        ("Etc", "{.etcFilesReady}"),
    ],
    sensitive: false,
    skip_automatic_aliases: true,
};

/// `AdjtimeStatuses.v1alpha1.talos.dev` (id `node`): the kernel clock
/// discipline's state.
pub const ADJTIME_STATUS: Definition = Definition {
    type_: "AdjtimeStatuses.v1alpha1.talos.dev",
    display: "AdjtimeStatus",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[
        ("Offset", "{.offset}"),
        ("EstError", "{.estError}"),
        ("MaxError", "{.maxError}"),
        ("Status", "{.status}"),
        ("Sync", "{.syncStatus}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `TimeStatuses.v1alpha1.talos.dev` (id `node`): whether the clock is
/// synced.
pub const TIME_STATUS: Definition = Definition {
    type_: "TimeStatuses.v1alpha1.talos.dev",
    display: "TimeStatus",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[("Synced", "{.synced}")],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `Disks.block.talos.dev`: one per whole disk (`vda`, `nvme0n1`...).
pub const DISK: Definition = Definition {
    type_: "Disks.block.talos.dev",
    display: "Disk",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[
        ("Size", "{.pretty_size}"),
        ("Read Only", "{.readonly}"),
        ("Transport", "{.transport}"),
        ("Rotational", "{.rotational}"),
        ("WWID", "{.wwid}"),
        ("Model", "{.model}"),
        ("Serial", "{.serial}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `AddressStatuses.net.talos.dev`: one per address on a link.
pub const ADDRESS_STATUS: Definition = Definition {
    type_: "AddressStatuses.net.talos.dev",
    display: "AddressStatus",
    namespace: NS_NETWORK,
    aliases: &["address", "addresses"],
    columns: &[("Address", "{.address}"), ("Link", "{.linkName}")],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `LinkStatuses.net.talos.dev`: one per link, id its name.
pub const LINK_STATUS: Definition = Definition {
    type_: "LinkStatuses.net.talos.dev",
    display: "LinkStatus",
    namespace: NS_NETWORK,
    aliases: &["link", "links"],
    columns: &[
        ("Alias", "{.alias}"),
        ("Type", "{.type}"),
        ("Kind", "{.kind}"),
        ("Hw Addr", "{.hardwareAddr}"),
        ("Oper State", "{.operationalState}"),
        ("Link State", "{.linkState}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `RouteStatuses.net.talos.dev`: one per route of every table.
pub const ROUTE_STATUS: Definition = Definition {
    type_: "RouteStatuses.net.talos.dev",
    display: "RouteStatus",
    namespace: NS_NETWORK,
    aliases: &["route", "routes"],
    columns: &[
        ("Destination", "{.dst}"),
        ("Gateway", "{.gateway}"),
        ("Link", "{.outLinkName}"),
        ("Metric", "{.priority}"),
        ("Table", "{.table}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `NodeAddresses.net.talos.dev`: `current`, `routed`, `accumulative` and
/// `default`.
pub const NODE_ADDRESS: Definition = Definition {
    type_: "NodeAddresses.net.talos.dev",
    display: "NodeAddress",
    namespace: NS_NETWORK,
    aliases: &[],
    columns: &[
        ("Addresses", "{.addresses}"),
        ("SortAlgorithm", "{.sortAlgorithm}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `ResolverStatuses.net.talos.dev` (id `resolvers`).
pub const RESOLVER_STATUS: Definition = Definition {
    type_: "ResolverStatuses.net.talos.dev",
    display: "ResolverStatus",
    namespace: NS_NETWORK,
    aliases: &["resolvers"],
    columns: &[
        ("Resolvers", "{.dnsServers}"),
        ("Search Domains", "{.searchDomains}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `TimeServerStatuses.net.talos.dev` (id `timeservers`).
pub const TIME_SERVER_STATUS: Definition = Definition {
    type_: "TimeServerStatuses.net.talos.dev",
    display: "TimeServerStatus",
    namespace: NS_NETWORK,
    aliases: &["timeserver", "timeservers"],
    columns: &[("Timeservers", "{.timeServers}")],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `DiscoveredVolumes.block.talos.dev`: each block device and partition
/// and what a probe found on it.
pub const DISCOVERED_VOLUME: Definition = Definition {
    type_: "DiscoveredVolumes.block.talos.dev",
    display: "DiscoveredVolume",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[
        ("Type", "{.type}"),
        ("Size", "{.pretty_size}"),
        ("Discovered", "{.name}"),
        ("Label", "{.label}"),
        ("PartitionLabel", "{.partition_label}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `VolumeStatuses.block.talos.dev`: META, STATE and EPHEMERAL, where
/// they are and whether they are ready.
pub const VOLUME_STATUS: Definition = Definition {
    type_: "VolumeStatuses.block.talos.dev",
    display: "VolumeStatus",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[
        ("Type", "{.type}"),
        ("Phase", "{.phase}"),
        ("Location", "{.location}"),
        ("Size", "{.prettySize}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `BlockDevices.block.talos.dev`: every block device the kernel lists
/// (`vda`, `vda1`, `loop0`...).
pub const BLOCK_DEVICE: Definition = Definition {
    type_: "BlockDevices.block.talos.dev",
    display: "BlockDevice",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[("Type", "{.type}"), ("PartitionName", "{.partitionName}")],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `SystemDisks.block.talos.dev` (id `system-disk`): the disk holding
/// META.
pub const SYSTEM_DISK: Definition = Definition {
    type_: "SystemDisks.block.talos.dev",
    display: "SystemDisk",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[("Disk", "{.diskID}")],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `SystemInformations.hardware.talos.dev` (id `systeminformation`).
pub const SYSTEM_INFORMATION: Definition = Definition {
    type_: "SystemInformations.hardware.talos.dev",
    display: "SystemInformation",
    namespace: NS_HARDWARE,
    aliases: &["systeminformation"],
    columns: &[
        ("Manufacturer", "{.manufacturer}"),
        ("ProductName", "{.productName}"),
        ("Version", "{.version}"),
        ("SerialNumber", "{.serialnumber}"),
        ("UUID", "{.uuid}"),
        ("WakeUpType", "{.wakeUpType}"),
        ("SKUNumber", "{.skuNumber}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `Processors.hardware.talos.dev`: one per processor socket (SMBIOS type 4).
pub const PROCESSOR: Definition = Definition {
    type_: "Processors.hardware.talos.dev",
    display: "Processor",
    namespace: NS_HARDWARE,
    aliases: &["cpus", "cpu"],
    columns: &[
        ("Manufacturer", "{.manufacturer}"),
        ("Model", "{.productName}"),
        ("Cores", "{.coreCount}"),
        ("Threads", "{.threadCount}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `MemoryModules.hardware.talos.dev`: one per memory slot (SMBIOS type 17).
pub const MEMORY_MODULE: Definition = Definition {
    type_: "MemoryModules.hardware.talos.dev",
    display: "MemoryModule",
    namespace: NS_HARDWARE,
    aliases: &["memorymodules", "ram"],
    columns: &[
        ("Manufacturer", "{.manufacturer}"),
        ("Model", "{.productName}"),
        ("SizeMiB", "{.sizeMiB}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `PCIDevices.hardware.talos.dev`: one per PCI device, by bus address.
pub const PCI_DEVICE: Definition = Definition {
    type_: "PCIDevices.hardware.talos.dev",
    display: "PCIDevice",
    namespace: NS_HARDWARE,
    aliases: &["devices", "device"],
    columns: &[
        ("Class", "{.class}"),
        ("Subclass", "{.subclass}"),
        ("Vendor", "{.vendor}"),
        ("Product", "{.product}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// `MountStatuses.runtime.talos.dev`: the filesystems Talos mounts, by
/// label. Only `mounts` names it: its initials are MachineStatus's.
pub const MOUNT_STATUS: Definition = Definition {
    type_: "MountStatuses.runtime.talos.dev",
    display: "MountStatus",
    namespace: NS_RUNTIME,
    aliases: &["mounts"],
    columns: &[
        ("Source", "{.source}"),
        ("Target", "{.target}"),
        ("Filesystem Type", "{.filesystemType}"),
    ],
    sensitive: false,
    skip_automatic_aliases: true,
};

/// `PlatformMetadatas.talos.dev` (id `platformmetadata`): what the node
/// runs on.
pub const PLATFORM_METADATA: Definition = Definition {
    type_: "PlatformMetadatas.talos.dev",
    display: "PlatformMetadata",
    namespace: NS_RUNTIME,
    aliases: &[],
    columns: &[
        ("Platform", "{.platform}"),
        ("Type", "{.instanceType}"),
        ("Region", "{.region}"),
        ("Zone", "{.zone}"),
    ],
    sensitive: false,
    skip_automatic_aliases: false,
};

/// Every type served.
pub const DEFINITIONS: &[Definition] = &[
    NAMESPACE,
    RESOURCE_DEFINITION,
    MACHINE_CONFIG,
    MACHINE_TYPE,
    META_KEY,
    KERNEL_CMDLINE,
    KERNEL_PARAM_STATUS,
    SECURITY_STATE,
    MACHINE_STATUS,
    SERVICE,
    HOSTNAME_STATUS,
    NETWORK_STATUS,
    TIME_STATUS,
    ADJTIME_STATUS,
    DISK,
    ADDRESS_STATUS,
    LINK_STATUS,
    ROUTE_STATUS,
    NODE_ADDRESS,
    RESOLVER_STATUS,
    TIME_SERVER_STATUS,
    BLOCK_DEVICE,
    DISCOVERED_VOLUME,
    VOLUME_STATUS,
    SYSTEM_DISK,
    SYSTEM_INFORMATION,
    PROCESSOR,
    MEMORY_MODULE,
    PCI_DEVICE,
    MOUNT_STATUS,
    PLATFORM_METADATA,
];

impl Definition {
    /// The definition of `type_` (the canonical name in any case).
    #[must_use]
    pub fn of(type_: &str) -> Option<&'static Definition> {
        // Any case, as upstream looks definitions up by the lowercase type.
        DEFINITIONS
            .iter()
            .find(|d| d.type_.eq_ignore_ascii_case(type_))
    }

    /// The short names a person types: the extra aliases, the lowercase
    /// singular, and the capitals' initials ("MetaKey" → "mk", "mks"), as
    /// COSI derives them.
    #[must_use]
    pub fn short_aliases(&self) -> Vec<String> {
        let mut out: Vec<String> = self.aliases.iter().map(|a| (*a).to_owned()).collect();
        if self.skip_automatic_aliases {
            return out;
        }
        out.push(self.display.to_lowercase());
        let plural = self.plural();
        let initials: String = plural.chars().filter(char::is_ascii_uppercase).collect();
        if initials.len() > 1 {
            out.push(initials.to_lowercase());
            if !initials.ends_with('S') {
                out.push(format!("{}s", initials.to_lowercase()));
            }
        }
        out
    }

    /// Every name the type answers to: the lowercase plural, the plural
    /// with each leading part of the suffix ("metakeys.runtime",
    /// "metakeys.runtime.talos"), then the short names.
    #[must_use]
    pub fn all_aliases(&self) -> Vec<String> {
        if self.skip_automatic_aliases {
            return self.short_aliases();
        }
        let plural = self.plural().to_lowercase();
        let mut out = vec![plural.clone()];
        let suffix: Vec<&str> = self.suffix().split('.').collect();
        for i in 1..suffix.len() {
            out.push(format!("{plural}.{}", suffix[..i].join(".")));
        }
        out.extend(self.short_aliases());
        out
    }

    fn plural(&self) -> &'static str {
        self.type_.split_once('.').map_or(self.type_, |(p, _)| p)
    }

    fn suffix(&self) -> &'static str {
        self.type_.split_once('.').map_or("", |(_, s)| s)
    }
}

/// One resource as it is now, before version bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its id.
    pub id: String,
    /// The spec as YAML.
    pub yaml: String,
    /// The spec as upstream's protobuf message.
    pub proto: Vec<u8>,
}

/// One resource with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Namespace.
    pub namespace: &'static str,
    /// Type.
    pub type_: &'static str,
    /// Id.
    pub id: String,
    /// Changes seen, starting at 1.
    pub version: u64,
    /// First seen.
    pub created: SystemTime,
    /// Last changed.
    pub updated: SystemTime,
    /// The spec as YAML.
    pub yaml: String,
    /// The spec as protobuf.
    pub proto: Vec<u8>,
}

/// Why a resource read failed.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Create, Update, Destroy and Teardown: state is the node's own.
    #[error("write access is not allowed")]
    ReadOnly,
    /// No such namespace.
    #[error("namespace {0:?} is not supported")]
    UnknownNamespace(String),
    /// No such type.
    #[error("resource type {0:?} is not supported")]
    UnknownType(String),
    /// No resource with that id.
    #[error("resource {type_}({namespace}/{id}@undefined) doesn't exist")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Type.
        type_: String,
        /// Id.
        id: String,
    },
    /// A sensitive type read without os:admin.
    #[error("not authorized")]
    NotAuthorized,
    /// A bad id query.
    #[error("invalid id query {query:?}: {message}")]
    BadQuery {
        /// The regular expression.
        query: String,
        /// Why.
        message: String,
    },
    /// Producing the resource failed.
    #[error("reading {what}: {message}")]
    Read {
        /// What was read.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
}

/// What was last seen of one resource.
#[derive(Debug, Clone)]
struct Seen {
    version: u64,
    created: SystemTime,
    updated: SystemTime,
    yaml: String,
}

/// The resource views of one node and their version bookkeeping.
#[derive(Debug)]
pub struct Resources {
    node: Arc<Node>,
    seen: Mutex<HashMap<(&'static str, String), Seen>>,
    /// One per type, held from computing a view to recording it, so an
    /// older view is never recorded after a newer one (which would count a
    /// change back); types do not wait for each other.
    reading: HashMap<&'static str, tokio::sync::Mutex<()>>,
    /// What NodeAddresses keeps between reads.
    node_addresses: Mutex<netres::NodeAddressMemory>,
}

impl Resources {
    /// Views of `node`.
    #[must_use]
    pub fn new(node: Arc<Node>) -> Resources {
        Resources {
            node,
            seen: Mutex::new(HashMap::new()),
            reading: DEFINITIONS
                .iter()
                .map(|d| (d.type_, tokio::sync::Mutex::new(())))
                .collect(),
            node_addresses: Mutex::new(netres::NodeAddressMemory::default()),
        }
    }

    /// The node's events from now on: most changes of state the views show
    /// are announced by one.
    #[must_use]
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<crate::events::Event> {
        self.node.events.subscribe()
    }

    /// Checks that `type_` in `namespace` may be read by a caller who is
    /// (or is not) an admin, in upstream's order, and returns the type's
    /// definition.
    ///
    /// # Errors
    /// Unknown type, a sensitive type without os:admin, unknown namespace.
    pub fn resolve(
        namespace: &str,
        type_: &str,
        admin: bool,
    ) -> Result<&'static Definition, ResourceError> {
        let def =
            Definition::of(type_).ok_or_else(|| ResourceError::UnknownType(type_.to_owned()))?;
        if def.sensitive && !admin {
            return Err(ResourceError::NotAuthorized);
        }
        if !NAMESPACES.iter().any(|(n, _)| *n == namespace) {
            return Err(ResourceError::UnknownNamespace(namespace.to_owned()));
        }
        Ok(def)
    }

    /// Every resource of `def` in `namespace` (none outside the type's own
    /// namespace), ordered by id.
    ///
    /// # Errors
    /// Producing the view failed (e.g. META unreadable).
    pub async fn list(
        &self,
        namespace: &str,
        def: &'static Definition,
    ) -> Result<Vec<Resource>, ResourceError> {
        if namespace != def.namespace {
            return Ok(Vec::new());
        }
        let _reading = self.lock(def).await;
        let items = self.items(def).await?;
        Ok(self.track(def, items, None))
    }

    /// The resource `id` of `def` in `namespace`.
    ///
    /// # Errors
    /// [`ResourceError::NotFound`], or producing the view failed.
    pub async fn get(
        &self,
        namespace: &str,
        def: &'static Definition,
        id: &str,
    ) -> Result<Resource, ResourceError> {
        let not_found = || ResourceError::NotFound {
            namespace: namespace.to_owned(),
            type_: def.type_.to_owned(),
            id: id.to_owned(),
        };
        if namespace != def.namespace {
            return Err(not_found());
        }
        let _reading = self.lock(def).await;
        let items: Vec<Item> = self
            .items(def)
            .await?
            .into_iter()
            .filter(|i| i.id == id)
            .collect();
        self.track(def, items, Some(id)).pop().ok_or_else(not_found)
    }

    /// Serialises the reads of one type.
    async fn lock(&self, def: &'static Definition) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.reading.get(def.type_) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    /// Gives `items` their versions; forgets resources that are gone
    /// (all of the type's, or only `only`).
    fn track(
        &self,
        def: &'static Definition,
        mut items: Vec<Item>,
        only: Option<&str>,
    ) -> Vec<Resource> {
        items.sort_by(|a, b| a.id.cmp(&b.id));
        let now = SystemTime::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.retain(|(type_, id), _| {
            *type_ != def.type_
                || only.is_some_and(|o| o != id)
                || items.iter().any(|i| &i.id == id)
        });
        items
            .into_iter()
            .map(|item| {
                let entry = seen
                    .entry((def.type_, item.id.clone()))
                    .or_insert_with(|| Seen {
                        version: 1,
                        created: now,
                        updated: now,
                        yaml: item.yaml.clone(),
                    });
                if entry.yaml != item.yaml {
                    entry.version += 1;
                    entry.updated = now;
                    entry.yaml.clone_from(&item.yaml);
                }
                Resource {
                    namespace: def.namespace,
                    type_: def.type_,
                    id: item.id,
                    version: entry.version,
                    created: entry.created,
                    updated: entry.updated,
                    yaml: item.yaml,
                    proto: item.proto,
                }
            })
            .collect()
    }

    /// The resources of `def` as they are now.
    async fn items(&self, def: &'static Definition) -> Result<Vec<Item>, ResourceError> {
        match def.type_ {
            t if t == NAMESPACE.type_ => NAMESPACES
                .iter()
                .map(|(id, description)| {
                    item(
                        *id,
                        &NamespaceYaml { description },
                        &meta_pb::NamespaceSpec {
                            description: (*description).to_owned(),
                        },
                    )
                })
                .collect(),
            t if t == RESOURCE_DEFINITION.type_ => {
                DEFINITIONS.iter().map(definition_item).collect()
            }
            t if t == MACHINE_CONFIG.type_ => self.machine_config(),
            t if t == MACHINE_TYPE.type_ => self.machine_type(),
            t if t == META_KEY.type_ => meta_keys().await,
            t if t == KERNEL_CMDLINE.type_ => kernel_cmdline().await,
            t if t == SECURITY_STATE.type_ => security_state(self.node.mode()).await,
            t if t == KERNEL_PARAM_STATUS.type_ => self.kernel_params(),
            t if t == MACHINE_STATUS.type_ => self.machine_status(),
            t if t == SERVICE.type_ => self.services(),
            t if t == HOSTNAME_STATUS.type_ => self.hostname_status(),
            t if t == NETWORK_STATUS.type_ => self.network_status().await,
            t if t == TIME_STATUS.type_ => self.time_status().await,
            t if t == ADJTIME_STATUS.type_ => adjtime_status().await,
            t if t == DISK.type_ => disks(PathBuf::from("/sys")).await,
            t if t == ADDRESS_STATUS.type_ => {
                netres::addresses(&netres::dump(netres::Want::Addresses).await?)
            }
            t if t == LINK_STATUS.type_ => {
                let dump = netres::dump(netres::Want::Links).await?;
                blocking("the links' sysfs details", move || {
                    netres::links(&dump, Path::new("/sys"))
                })
                .await?
            }
            t if t == ROUTE_STATUS.type_ => {
                netres::routes(&netres::dump(netres::Want::Routes).await?)
            }
            t if t == NODE_ADDRESS.type_ => {
                let dump = netres::dump(netres::Want::Addresses).await?;
                let mut memory = self
                    .node_addresses
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                netres::node_addresses(&dump, &mut memory)
            }
            t if t == RESOLVER_STATUS.type_ => self.resolver_status().await,
            t if t == TIME_SERVER_STATUS.type_ => self.time_server_status().await,
            // As upstream, a container-mode node has no block devices or
            // mounts of its own (the host's are neither probed nor shown).
            t if [
                BLOCK_DEVICE,
                DISCOVERED_VOLUME,
                VOLUME_STATUS,
                SYSTEM_DISK,
                MOUNT_STATUS,
            ]
            .iter()
            .any(|d| d.type_ == t) =>
            {
                match self.node.mode() {
                    Mode::Container => Ok(Vec::new()),
                    Mode::Metal => storage_items(t).await,
                }
            }
            t if t == SYSTEM_INFORMATION.type_ => self.system_information().await,
            t if t == PROCESSOR.type_ => self.processors().await,
            t if t == MEMORY_MODULE.type_ => self.memory_modules().await,
            t if t == PCI_DEVICE.type_ => self.pci_devices().await,
            t if t == PLATFORM_METADATA.type_ => self.platform_metadata().await,
            other => Err(ResourceError::UnknownType(other.to_owned())),
        }
    }

    /// The kernel parameters machined set; none in container mode.
    fn kernel_params(&self) -> Result<Vec<Item>, ResourceError> {
        if self.node.mode() == Mode::Container {
            return Ok(Vec::new());
        }
        crate::kernelparams::KernelParams::node()
            .statuses()
            .iter()
            .map(|(id, status)| {
                item(
                    id.as_str(),
                    &KernelParamYaml {
                        current: &status.current,
                        default: &status.default,
                        unsupported: status.unsupported,
                    },
                    &api::talos::resource::definitions::runtime::KernelParamStatusSpec {
                        current: status.current.clone(),
                        default: status.default.clone(),
                        unsupported: status.unsupported,
                    },
                )
            })
            .collect()
    }

    fn machine_config(&self) -> Result<Vec<Item>, ResourceError> {
        let Some(config) = self.node.config.current() else {
            return Ok(Vec::new());
        };
        let yaml = config.to_yaml().map_err(|e| ResourceError::Read {
            what: "the machine config",
            message: e.to_string(),
        })?;
        // As upstream, the YAML spec is the config document itself (its
        // "raw YAML"), not a YAML encoding of it.
        let proto = api::resource::config::MachineConfigSpec {
            yaml_marshalled: yaml.clone().into_bytes(),
        };
        Ok(vec![Item {
            id: "v1alpha1".into(),
            yaml,
            proto: prost::Message::encode_to_vec(&proto),
        }])
    }

    fn machine_type(&self) -> Result<Vec<Item>, ResourceError> {
        use api::resource::config::MachineType as Pb;
        use machinery::config::MachineType;
        let (name, number) = match self.node.config.current().map(|c| c.machine_type()) {
            None => ("unknown", Pb::Unknown),
            Some(MachineType::ControlPlane) => ("controlplane", Pb::ControlPlane),
            Some(MachineType::Worker) => ("worker", Pb::Worker),
        };
        Ok(vec![item(
            "machine-type",
            &name,
            &api::resource::config::MachineTypeSpec {
                machine_type: number.into(),
            },
        )?])
    }

    fn machine_status(&self) -> Result<Vec<Item>, ResourceError> {
        let MachineStatus {
            stage,
            ready,
            unmet,
        } = self
            .node
            .events
            .last_machine_status()
            .unwrap_or(MachineStatus {
                stage: MachineStage::Booting,
                ready: false,
                unmet: Vec::new(),
            });
        let yaml = MachineStatusYaml {
            stage: stage_name(stage),
            status: MachineStatusStatusYaml {
                ready,
                unmet_conditions: unmet
                    .iter()
                    .map(|(name, reason)| UnmetYaml { name, reason })
                    .collect(),
            },
        };
        let proto = runtime_pb::MachineStatusSpec {
            stage: stage.number(),
            status: Some(runtime_pb::MachineStatusStatus {
                ready,
                unmet_conditions: unmet
                    .iter()
                    .map(|(name, reason)| runtime_pb::UnmetCondition {
                        name: name.clone(),
                        reason: reason.clone(),
                    })
                    .collect(),
            }),
        };
        Ok(vec![item("machine", &yaml, &proto)?])
    }

    fn services(&self) -> Result<Vec<Item>, ResourceError> {
        // machined itself is a service too, as ServiceList reports it.
        let mut rows = vec![("machined".to_owned(), true, true, false)];
        if let Some(supervisor) = self.node.supervisor.get() {
            rows.extend(supervisor.list().into_iter().map(|s| {
                (
                    s.id,
                    s.state == ServiceState::Running,
                    s.health.healthy,
                    s.health.unknown,
                )
            }));
        }
        rows.into_iter()
            .map(|(id, running, healthy, unknown)| {
                item(
                    id,
                    &ServiceYaml {
                        running,
                        healthy,
                        unknown,
                    },
                    &v1alpha1_pb::ServiceSpec {
                        running,
                        healthy,
                        unknown,
                    },
                )
            })
            .collect()
    }

    /// The resolvers the node's programs use: networkd's `resolv.conf` on
    /// metal (bound over `/etc/resolv.conf`), the host's in container mode;
    /// none before networkd has written it.
    async fn resolver_status(&self) -> Result<Vec<Item>, ResourceError> {
        let path = match self.node.mode() {
            Mode::Metal => networkd::files::resolv_conf_path(&self.node.paths),
            Mode::Container => PathBuf::from("/etc/resolv.conf"),
        };
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ResourceError::Read {
                    what: "resolv.conf",
                    message: format!("{}: {e}", path.display()),
                });
            }
        };
        let (servers, search) = networkd::files::parse_resolv_conf(&text);
        Ok(vec![item(
            "resolvers",
            &ResolverYaml {
                dns_servers: servers.iter().map(|(text, _)| text.as_str()).collect(),
                search_domains: &search,
            },
            &network_pb::ResolverStatusSpec {
                dns_servers: servers.iter().map(|(_, ip)| netres::net_ip(*ip)).collect(),
                search_domains: search.clone(),
            },
        )?])
    }

    /// The firmware's SMBIOS table; none in container mode (the host's
    /// hardware), as upstream, or on a machine without one.
    async fn smbios(&self) -> Result<Option<crate::hardware::Smbios>, ResourceError> {
        if self.node.mode() == Mode::Container {
            return Ok(None);
        }
        blocking("SMBIOS", || {
            crate::hardware::Smbios::read(Path::new("/sys"))
        })
        .await?
        .map_err(|e| ResourceError::Read {
            what: "SMBIOS (/sys/firmware/dmi/tables)",
            message: e.to_string(),
        })
    }

    /// SMBIOS type 1, with META's UUID override, when set, in place of
    /// the UUID, as upstream; none without SMBIOS or in container mode.
    async fn system_information_spec(
        &self,
    ) -> Result<
        Option<api::talos::resource::definitions::hardware::SystemInformationSpec>,
        ResourceError,
    > {
        let Some(mut info) = self
            .smbios()
            .await?
            .and_then(|smbios| smbios.system_information())
        else {
            return Ok(None);
        };
        let uuid_override = blocking("META's UUID override", || {
            crate::install::read_meta(machinery::meta::tag::UUID_OVERRIDE)
        })
        .await?;
        if let Some(uuid) = uuid_override.filter(|u| !u.is_empty()) {
            info.uuid = uuid;
        }
        Ok(Some(info))
    }

    /// SMBIOS type 1.
    async fn system_information(&self) -> Result<Vec<Item>, ResourceError> {
        let Some(info) = self.system_information_spec().await? else {
            return Ok(Vec::new());
        };
        Ok(vec![item(
            "systeminformation",
            &SystemInformationYaml {
                manufacturer: &info.manufacturer,
                product_name: &info.product_name,
                version: &info.version,
                serialnumber: &info.serial_number,
                uuid: &info.uuid,
                wake_up_type: &info.wake_up_type,
                sku_number: &info.sku_number,
            },
            &info,
        )?])
    }

    /// What the node runs on, as upstream's platforms say: on metal the
    /// platform, the first `talos.hostname=` kernel argument and the SMBIOS UUID
    /// (META's override wins) as the instance id; in container mode the
    /// platform, the node's hostname and `TALOSSKU` as the instance type.
    async fn platform_metadata(&self) -> Result<Vec<Item>, ResourceError> {
        let mut spec = runtime_pb::PlatformMetadataSpec::default();
        match self.node.mode() {
            Mode::Container => {
                "container".clone_into(&mut spec.platform);
                spec.hostname = self.node.hostname();
                spec.instance_type = std::env::var("TALOSSKU").unwrap_or_default();
            }
            Mode::Metal => {
                "metal".clone_into(&mut spec.platform);
                let cmdline = tokio::fs::read_to_string("/proc/cmdline")
                    .await
                    .map_err(|e| ResourceError::Read {
                        what: "/proc/cmdline",
                        message: e.to_string(),
                    })?;
                spec.hostname = cmdline_value(&cmdline, "talos.hostname").unwrap_or_default();
                if let Some(info) = self.system_information_spec().await? {
                    spec.instance_id = info.uuid;
                }
            }
        }
        Ok(vec![item(
            "platformmetadata",
            &PlatformMetadataYaml {
                platform: &spec.platform,
                hostname: &spec.hostname,
                instance_type: &spec.instance_type,
                instance_id: &spec.instance_id,
            },
            &spec,
        )?])
    }

    /// SMBIOS type 4, one per socket.
    async fn processors(&self) -> Result<Vec<Item>, ResourceError> {
        let Some(smbios) = self.smbios().await? else {
            return Ok(Vec::new());
        };
        smbios
            .processors()
            .iter()
            .map(|(id, p)| {
                item(
                    id.as_str(),
                    &ProcessorYaml {
                        socket: &p.socket,
                        manufacturer: &p.manufacturer,
                        product_name: &p.product_name,
                        max_speed_mhz: p.max_speed,
                        boot_speed_mhz: p.boot_speed,
                        status: p.status,
                        serial_number: &p.serial_number,
                        asset_tag: &p.asset_tag,
                        part_number: &p.part_number,
                        core_count: p.core_count,
                        core_enabled: p.core_enabled,
                        thread_count: p.thread_count,
                    },
                    p,
                )
            })
            .collect()
    }

    /// One per PCI device; none in container mode (the host's hardware).
    async fn pci_devices(&self) -> Result<Vec<Item>, ResourceError> {
        if self.node.mode() == Mode::Container {
            return Ok(Vec::new());
        }
        let devices = blocking("PCI devices", || crate::pci::devices(Path::new("/sys")))
            .await?
            .map_err(|e| ResourceError::Read {
                what: "PCI devices (/sys/bus/pci/devices)",
                message: e.to_string(),
            })?;
        devices
            .iter()
            .map(|(id, d)| {
                item(
                    id.as_str(),
                    &PciDeviceYaml {
                        class: &d.class,
                        subclass: &d.subclass,
                        vendor: &d.vendor,
                        product: &d.product,
                        class_id: &d.class_id,
                        subclass_id: &d.subclass_id,
                        vendor_id: &d.vendor_id,
                        product_id: &d.product_id,
                        driver: &d.driver,
                    },
                    d,
                )
            })
            .collect()
    }

    /// SMBIOS type 17, one per slot; the kernel's total as one `UNKNOWN`
    /// module when the table lists none, as upstream.
    async fn memory_modules(&self) -> Result<Vec<Item>, ResourceError> {
        let Some(smbios) = self.smbios().await? else {
            return Ok(Vec::new());
        };
        // procfs gives bytes; read only for a table without memory devices.
        let total = || {
            crate::stats::meminfo()
                .ok()
                .map(|m| m.mem_total / (1024 * 1024))
        };
        smbios
            .memory_modules(total)
            .iter()
            .map(|(id, m)| {
                item(
                    id.as_str(),
                    &MemoryModuleYaml {
                        size_mib: m.size,
                        device_locator: &m.device_locator,
                        bank_locator: &m.bank_locator,
                        speed: m.speed,
                        manufacturer: &m.manufacturer,
                        serial_number: &m.serial_number,
                        asset_tag: &m.asset_tag,
                        product_name: &m.product_name,
                    },
                    m,
                )
            })
            .collect()
    }

    /// The servers timed asks, from the same live config it reads.
    async fn time_server_status(&self) -> Result<Vec<Item>, ResourceError> {
        let source = timed::LiveConfig::for_node(&self.node.paths);
        let config = blocking("the time servers", move || {
            timed::ConfigSource::time_config(&source)
        })
        .await?;
        Ok(vec![item(
            "timeservers",
            &TimeServerYaml {
                time_servers: &config.servers,
            },
            &network_pb::TimeServerStatusSpec {
                ntp_servers: config.servers.clone(),
                use_nts: false,
            },
        )?])
    }

    /// How far networking is set up, as upstream's NetworkStatus says it:
    /// a node address on a link that is up, a default route, the hostname
    /// (networkd's file on metal), `/etc/hosts` and `resolv.conf`
    /// (networkd's on metal, the host's in a container).
    async fn network_status(&self) -> Result<Vec<Item>, ResourceError> {
        // One dump: the links once, then addresses and routes.
        let network = netres::dump(netres::Want::AddressesAndRoutes).await?;
        let (hostname, etc) = match self.node.mode() {
            Mode::Metal => (
                Some(networkd::files::hostname_path(&self.node.paths)),
                [
                    networkd::files::hosts_path(&self.node.paths),
                    networkd::files::resolv_conf_path(&self.node.paths),
                ],
            ),
            Mode::Container => (
                None,
                [
                    PathBuf::from("/etc/hosts"),
                    PathBuf::from("/etc/resolv.conf"),
                ],
            ),
        };
        let node_named = !self.node.hostname().is_empty();
        let (hostname_ready, etc_files_ready) = blocking("the network files", move || {
            let written = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
            (
                hostname.as_deref().map_or(node_named, written),
                etc.iter().all(|p| p.exists()),
            )
        })
        .await?;
        let spec = network_pb::StatusSpec {
            address_ready: netres::address_ready(&network),
            connectivity_ready: netres::connectivity_ready(&network),
            hostname_ready,
            etc_files_ready,
        };
        Ok(vec![item(
            "status",
            &NetworkStatusYaml {
                address_ready: spec.address_ready,
                connectivity_ready: spec.connectivity_ready,
                hostname_ready: spec.hostname_ready,
                etc_files_ready: spec.etc_files_ready,
            },
            &spec,
        )?])
    }

    /// Whether timed synced the clock (its marker), how often the clock
    /// jumped by more than 15 minutes (its epoch file), and whether the
    /// config turns sync off.
    async fn time_status(&self) -> Result<Vec<Item>, ResourceError> {
        let marker = timed::marker_path(&self.node.paths);
        let epoch_file = timed::epoch_path(&self.node.paths);
        let (synced, epoch) = blocking("the time status", move || {
            let epoch = match std::fs::read_to_string(&epoch_file) {
                Ok(text) if text.trim().is_empty() => 0,
                Ok(text) => text
                    .trim()
                    .parse::<i64>()
                    .map_err(|e| ResourceError::Read {
                        what: "the time epoch",
                        message: format!("{}: {e}", epoch_file.display()),
                    })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => {
                    return Err(ResourceError::Read {
                        what: "the time epoch",
                        message: format!("{}: {e}", epoch_file.display()),
                    });
                }
            };
            Ok((marker.exists(), epoch))
        })
        .await??;
        // As upstream: in container mode the host owns the clock.
        let sync_disabled = self.node.options.mode == Mode::Container
            || self
                .node
                .config
                .current()
                .is_some_and(|c| c.time_disabled());
        Ok(vec![item(
            "node",
            &TimeStatusYaml {
                synced,
                epoch,
                sync_disabled,
            },
            &api::talos::resource::definitions::time::StatusSpec {
                synced,
                epoch,
                sync_disabled,
            },
        )?])
    }

    fn hostname_status(&self) -> Result<Vec<Item>, ResourceError> {
        let fqdn = self.node.hostname();
        let (hostname, domainname) = fqdn.split_once('.').unwrap_or((&fqdn, ""));
        Ok(vec![item(
            "hostname",
            &HostnameYaml {
                hostname,
                domainname,
            },
            &network_pb::HostnameStatusSpec {
                hostname: hostname.to_owned(),
                domainname: domainname.to_owned(),
            },
        )?])
    }
}

/// The name of a stage as upstream prints it.
#[must_use]
pub fn stage_name(stage: MachineStage) -> &'static str {
    match stage {
        MachineStage::Booting => "booting",
        MachineStage::Installing => "installing",
        MachineStage::Maintenance => "maintenance",
        MachineStage::Running => "running",
        MachineStage::Rebooting => "rebooting",
        MachineStage::ShuttingDown => "shutting down",
        MachineStage::Resetting => "resetting",
        MachineStage::Upgrading => "upgrading",
    }
}

/// Runs `work`, which blocks (file or device reads), off the runtime's
/// thread; a task that dies is a read of `what` that failed.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ResourceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ResourceError::Read {
            what,
            message: e.to_string(),
        })
}

/// Whether a value is its type's zero: the YAML leaves it out, as
/// upstream's `omitempty`.
pub(crate) fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Opens a device to read it without blocking: a CD drive is not made to
/// close its tray or wait for a disc.
pub(crate) fn open_nonblocking(node: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
        .open(node)
}

/// The fields of the top mount on `target` in a `/proc/self/mounts` text
/// (source, target, type, options, then two numbers), if its source is a
/// block device: whatever else might cover the target is not a volume.
/// Spaces in a field are escaped, so splitting on whitespace is exact.
pub(crate) fn device_mount<'a>(mounts: &'a str, target: &str) -> Option<Vec<&'a str>> {
    mounts
        .lines()
        .rev()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[1] == target && f[0].starts_with("/dev/"))
}

/// The block-device and mount types of a metal node, from `/sys`, `/dev`
/// and `/proc/self/mounts`.
async fn storage_items(type_: &str) -> Result<Vec<Item>, ResourceError> {
    let sys = || PathBuf::from("/sys");
    let dev = || PathBuf::from("/dev");
    match type_ {
        t if t == BLOCK_DEVICE.type_ => {
            blocking("the block devices in sysfs", move || block_devices(&sys())).await?
        }
        t if t == DISCOVERED_VOLUME.type_ => volumes::discovered(sys(), dev()).await,
        t if t == VOLUME_STATUS.type_ => volumes::volume_statuses(
            &volumes::discovered_specs(sys(), dev()).await?,
            &read_mounts().await?,
        ),
        t if t == SYSTEM_DISK.type_ => {
            volumes::system_disk(&volumes::discovered_specs(sys(), dev()).await?)
        }
        t if t == MOUNT_STATUS.type_ => mount_statuses(&read_mounts().await?),
        other => Err(ResourceError::UnknownType(other.to_owned())),
    }
}

/// Every block device under `<sysfs>/class/block`, from its `uevent`
/// (numbers, type, partition name and number), its sysfs path, its disk
/// (a partition's parent directory) and `slaves`. Upstream bumps
/// `generation` on every change event; nothing here tracks them, so it
/// is left out. Blocks.
fn block_devices(sysfs: &Path) -> Result<Vec<Item>, ResourceError> {
    let class = sysfs.join("class/block");
    let entries = match std::fs::read_dir(&class) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ResourceError::Read {
                what: "the block devices in sysfs",
                message: format!("{}: {e}", class.display()),
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let link = class.join(&name);
        // A device that went away between the listing and the read is
        // left out.
        let Ok(uevent) = std::fs::read_to_string(link.join("uevent")) else {
            continue;
        };
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let number = |key: &str| field(key).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        // Gone meanwhile: left out too.
        let Ok(path) = link.canonicalize() else {
            continue;
        };
        let type_ = field("DEVTYPE").unwrap_or_default();
        let parent = if type_ == "partition" {
            path.parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned()
        } else {
            String::new()
        };
        let mut secondaries: Vec<String> = std::fs::read_dir(link.join("slaves"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        secondaries.sort();
        let spec = block_pb::DeviceSpec {
            r#type: type_,
            major: number("MAJOR"),
            minor: number("MINOR"),
            partition_name: field("PARTNAME").unwrap_or_default(),
            partition_number: number("PARTN"),
            generation: 0,
            device_path: path.to_string_lossy().into_owned(),
            parent,
            secondaries,
        };
        out.push(item(
            &name,
            &BlockDeviceYaml {
                type_: &spec.r#type,
                major: spec.major,
                minor: spec.minor,
                partition_name: &spec.partition_name,
                partition_number: spec.partition_number,
                device_path: &spec.device_path,
                parent: &spec.parent,
                secondaries: &spec.secondaries,
            },
            &spec,
        )?);
    }
    Ok(out)
}

/// The kernel clock discipline's state (`adjtimex(2)`, read only): the
/// host's in container mode, as the clock is.
async fn adjtime_status() -> Result<Vec<Item>, ResourceError> {
    let adjtime = blocking("the clock's state", timed::clock::Adjtime::read)
        .await?
        .map_err(|e| ResourceError::Read {
            what: "the clock's state (adjtimex)",
            message: e.to_string(),
        })?;
    let duration = |d: std::time::Duration| prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or_default(),
    };
    let offset_nanos = adjtime.offset.as_nanos();
    let spec = api::talos::resource::definitions::time::AdjtimeStatusSpec {
        offset: Some(prost_types::Duration {
            seconds: offset_nanos / 1_000_000_000,
            nanos: i32::try_from(offset_nanos % 1_000_000_000).unwrap_or_default(),
        }),
        frequency_adjustment_ratio: adjtime.frequency_adjustment_ratio,
        max_error: Some(duration(adjtime.max_error)),
        est_error: Some(duration(adjtime.est_error)),
        status: adjtime.status.clone(),
        constant: adjtime.constant,
        sync_status: adjtime.sync_status,
        state: adjtime.state.clone(),
    };
    let go = |d: std::time::Duration| {
        machinery::humanize::go_duration(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
    };
    Ok(vec![item(
        "node",
        &AdjtimeYaml {
            offset: machinery::humanize::go_duration(i128::from(offset_nanos)),
            frequency_adjustment_ratio: adjtime.frequency_adjustment_ratio,
            max_error: go(adjtime.max_error),
            est_error: go(adjtime.est_error),
            status: &adjtime.status,
            constant: adjtime.constant,
            sync_status: adjtime.sync_status,
            state: &adjtime.state,
        },
        &spec,
    )?])
}

/// `/proc/self/mounts`, read without blocking the runtime.
pub(crate) async fn read_mounts() -> Result<String, ResourceError> {
    tokio::fs::read_to_string("/proc/self/mounts")
        .await
        .map_err(|e| ResourceError::Read {
            what: "/proc/self/mounts",
            message: e.to_string(),
        })
}

/// The filesystems Talos mounts (STATE on its state directory, EPHEMERAL on
/// `/var`), as a `/proc/self/mounts` text shows them, by label as upstream.
/// The top mount of each target counts. Upstream leaves `options` empty;
/// here they are the mount's.
fn mount_statuses(mounts: &str) -> Result<Vec<Item>, ResourceError> {
    let ours = [
        (crate::boot::STATE_LABEL, crate::boot::STATE_MOUNT),
        (crate::boot::EPHEMERAL_LABEL, crate::boot::EPHEMERAL_MOUNT),
    ];
    let mut found = Vec::new();
    for (label, target) in ours {
        let Some(fields) = device_mount(mounts, target) else {
            continue;
        };
        let spec = api::talos::resource::definitions::runtime::MountStatusSpec {
            source: fields[0].to_owned(),
            target: target.to_owned(),
            filesystem_type: fields[2].to_owned(),
            options: fields[3].split(',').map(str::to_owned).collect(),
            encrypted: false,
            encryption_providers: Vec::new(),
        };
        found.push(item(
            label,
            &MountStatusYaml {
                source: &spec.source,
                target: &spec.target,
                filesystem_type: &spec.filesystem_type,
                options: &spec.options,
                encrypted: spec.encrypted,
                encryption_providers: &spec.encryption_providers,
            },
            &spec,
        )?);
    }
    Ok(found)
}

pub(crate) fn item(
    id: impl Into<String>,
    yaml: &impl Serialize,
    proto: &impl prost::Message,
) -> Result<Item, ResourceError> {
    Ok(Item {
        id: id.into(),
        yaml: serde_yaml_ng::to_string(yaml).map_err(|e| ResourceError::Read {
            what: "a resource spec",
            message: e.to_string(),
        })?,
        proto: proto.encode_to_vec(),
    })
}

fn definition_item(def: &Definition) -> Result<Item, ResourceError> {
    let aliases = def.short_aliases();
    let all_aliases = def.all_aliases();
    let columns: Vec<ColumnYaml<'_>> = def
        .columns
        .iter()
        .map(|(name, json_path)| ColumnYaml { name, json_path })
        .collect();
    let yaml = DefinitionYaml {
        type_: def.type_,
        display_type: def.display,
        default_namespace: def.namespace,
        aliases: &aliases,
        all_aliases: &all_aliases,
        print_columns: &columns,
        sensitivity: def.sensitive.then_some("sensitive"),
    };
    let proto = meta_pb::ResourceDefinitionSpec {
        resource_type: def.type_.to_owned(),
        display_type: def.display.to_owned(),
        default_namespace: def.namespace.to_owned(),
        aliases: aliases.clone(),
        all_aliases: all_aliases.clone(),
        print_columns: def
            .columns
            .iter()
            .map(
                |(name, json_path)| meta_pb::resource_definition_spec::PrintColumn {
                    name: (*name).to_owned(),
                    json_path: (*json_path).to_owned(),
                },
            )
            .collect(),
        sensitivity: if def.sensitive {
            meta_pb::resource_definition_spec::Sensitivity::Sensitive
        } else {
            meta_pb::resource_definition_spec::Sensitivity::NonSensitive
        }
        .into(),
    };
    item(def.type_.to_lowercase(), &yaml, &proto)
}

/// The keys of the META partition; none on a node without one.
async fn meta_keys() -> Result<Vec<Item>, ResourceError> {
    let keys = blocking("META", crate::install::read_meta_keys)
        .await?
        .map_err(|e| ResourceError::Read {
            what: "META",
            message: e.to_string(),
        })?;
    keys.into_iter()
        .map(|(tag, value)| {
            let value = String::from_utf8_lossy(&value).into_owned();
            item(
                meta_key_id(tag),
                &MetaKeyYaml { value: &value },
                &runtime_pb::MetaKeySpec {
                    value: value.clone(),
                },
            )
        })
        .collect()
}

/// The disks under `<sysfs>/block`, as udevd's Disks API lists them
/// (no loop, RAM or device-mapper devices); a CD drive without a disc
/// has size 0 (the kernel reports a made-up size for it). Blocks on sysfs
/// and drive reads: runs on the blocking pool.
async fn disks(sysfs: PathBuf) -> Result<Vec<Item>, ResourceError> {
    disks_with(sysfs, PathBuf::from("/dev")).await
}

async fn disks_with(sysfs: PathBuf, dev: PathBuf) -> Result<Vec<Item>, ResourceError> {
    let read = |e: String| ResourceError::Read {
        what: "the disks in sysfs",
        message: e,
    };
    blocking("the disks in sysfs", move || {
        let devices = udevd::sysfs::disks(&sysfs).map_err(|e| read(e.to_string()))?;
        devices
            .iter()
            .filter(|d| d.size > 0 || d.cdrom)
            .map(|d| {
                let size = if d.cdrom && !has_disc(&dev.join(&d.name)) {
                    0
                } else {
                    d.size
                };
                disk_item(&sysfs, d, size, symlinks(&dev, &d.name))
            })
            .collect()
    })
    .await?
}

/// Whether a CD drive holds a disc: its first sector can be read (an
/// empty drive answers "no medium").
fn has_disc(node: &Path) -> bool {
    open_nonblocking(node).is_ok_and(|drive| has_disc_in(&drive))
}

/// Whether an open CD drive holds a disc: its first sector reads.
pub(crate) fn has_disc_in(drive: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut sector = [0u8; 2048];
    drive.read_at(&mut sector, 0).is_ok_and(|n| n > 0)
}

/// The links under `<dev>/disk/by-*` that lead to `<dev>/<name>`, sorted
/// (`/dev/disk/by-id/virtio-...`, `/dev/disk/by-path/...`): the names an
/// install disk can be chosen by.
fn symlinks(dev: &Path, name: &str) -> Vec<String> {
    let Ok(target) = dev.join(name).canonicalize() else {
        return Vec::new();
    };
    let Ok(kinds) = std::fs::read_dir(dev.join("disk")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = kinds
        .filter_map(Result::ok)
        .filter_map(|kind| std::fs::read_dir(kind.path()).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|link| link.path())
        .filter(|link| link.is_symlink() && link.canonicalize().is_ok_and(|t| t == target))
        .map(|link| link.display().to_string())
        .collect();
    out.sort();
    out
}

/// A disk's logical sector size and I/O size, as upstream chooses them:
/// the optimal I/O size, else the minimum, else the sector size (only
/// powers of two count); 512 when sysfs says nothing.
pub(crate) fn queue_sizes(sysfs: &Path, name: &str) -> (u64, u64) {
    let queue = sysfs.join("block").join(name).join("queue");
    let number = |file: &str| {
        std::fs::read_to_string(queue.join(file))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let sector_size = Some(number("logical_block_size"))
        .filter(|n| *n > 0)
        .unwrap_or(512);
    let io_size = ["optimal_io_size", "minimum_io_size"]
        .into_iter()
        .map(number)
        .find(|n| n.is_power_of_two())
        .unwrap_or(sector_size);
    (sector_size, io_size)
}

fn disk_item(
    sysfs: &Path,
    dev: &udevd::sysfs::BlockDevice,
    size: u64,
    symlinks: Vec<String>,
) -> Result<Item, ResourceError> {
    let (sector_size, io_size) = queue_sizes(sysfs, &dev.name);
    let spec = block_pb::DiskSpec {
        size,
        io_size,
        sector_size,
        readonly: dev.readonly,
        model: dev.model.clone(),
        serial: dev.serial.clone(),
        modalias: dev.modalias.clone(),
        wwid: dev.wwid.clone(),
        bus_path: dev.bus_path.clone(),
        sub_system: dev.subsystem.clone(),
        transport: transport_name(sysfs, dev).to_owned(),
        rotational: dev.rotational,
        cdrom: dev.cdrom,
        dev_path: format!("/dev/{}", dev.name),
        pretty_size: machinery::humanize::bytes(size),
        secondary_disks: Vec::new(),
        uuid: dev.uuid.clone(),
        symlinks,
    };
    let yaml = DiskYaml {
        dev_path: &spec.dev_path,
        size: spec.size,
        pretty_size: &spec.pretty_size,
        io_size: spec.io_size,
        sector_size: spec.sector_size,
        readonly: spec.readonly,
        cdrom: spec.cdrom,
        model: &spec.model,
        serial: &spec.serial,
        modalias: &spec.modalias,
        wwid: &spec.wwid,
        uuid: &spec.uuid,
        bus_path: &spec.bus_path,
        sub_system: &spec.sub_system,
        transport: &spec.transport,
        rotational: spec.rotational,
        symlinks: &spec.symlinks,
    };
    item(dev.name.clone(), &yaml, &spec)
}

/// How a disk is attached, in upstream's words: by name for NVMe, virtio
/// and MMC; for SCSI-attached disks by the host's transport class (`sas`,
/// `fc`, `iscsi`), else by its driver (`ahci` → `sata`, other libata
/// drivers → `ata`, `virtio_scsi` → `virtio`); `usb` below a USB port;
/// empty when unknown.
pub(crate) fn transport_name(sysfs: &Path, dev: &udevd::sysfs::BlockDevice) -> &'static str {
    use udevd::sysfs::Transport;
    match dev.transport {
        Transport::Nvme => "nvme",
        Transport::Virtio => "virtio",
        Transport::Mmc => "mmc",
        Transport::Usb => "usb",
        Transport::Ata | Transport::Scsi => {
            let host = scsi_host(sysfs, &dev.name);
            let class = |class: &str| {
                host.as_ref()
                    .and_then(|h| h.file_name())
                    .is_some_and(|name| sysfs.join("class").join(class).join(name).exists())
            };
            if class("sas_host") {
                return "sas";
            }
            if class("fc_host") {
                return "fc";
            }
            if class("iscsi_host") {
                return "iscsi";
            }
            let driver = host
                .and_then(|host| {
                    let name = host.file_name()?.to_owned();
                    std::fs::read_to_string(host.join("scsi_host").join(name).join("proc_name"))
                        .ok()
                })
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            match driver.as_str() {
                "ahci" | "sata" => "sata",
                "virtio_scsi" => "virtio",
                d if d.contains("ata") => "ata",
                _ => "",
            }
        }
        Transport::Xen | Transport::Unknown => "",
    }
}

/// The SCSI host a disk hangs off (`.../hostN`, resolved).
fn scsi_host(sysfs: &Path, name: &str) -> Option<std::path::PathBuf> {
    let device = sysfs
        .join("block")
        .join(name)
        .join("device")
        .canonicalize()
        .ok()?;
    device
        .ancestors()
        .find(|a| {
            a.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("host"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(Path::to_path_buf)
}

/// A META key's resource id, as upstream writes it: `0x0a`.
#[must_use]
pub fn meta_key_id(tag: u8) -> String {
    format!("0x{tag:02x}")
}

/// The value of the first `key=value` argument of a kernel command line,
/// as upstream's platforms read `talos.hostname` (its first value).
fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

async fn kernel_cmdline() -> Result<Vec<Item>, ResourceError> {
    let cmdline = tokio::fs::read_to_string("/proc/cmdline")
        .await
        .map_err(|e| ResourceError::Read {
            what: "/proc/cmdline",
            message: e.to_string(),
        })?;
    let cmdline = cmdline.trim_end();
    Ok(vec![item(
        "cmdline",
        &CmdlineYaml { cmdline },
        &runtime_pb::KernelCmdlineSpec {
            cmdline: cmdline.to_owned(),
        },
    )?])
}

/// The EFI global variables' vendor GUID.
const EFI_GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// The vendor GUID of systemd-boot's and systemd-stub's variables.
const SYSTEMD_STUB: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// A string variable of systemd-boot or systemd-stub: UTF-16LE after the
/// 4 bytes of attributes, up to the first NUL.
fn efi_string(efivars: &Path, name: &str) -> Option<String> {
    let raw = std::fs::read(efivars.join(format!("{name}-{SYSTEMD_STUB}"))).ok()?;
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    // As upstream's decoder: a broken unit reads as U+FFFD, not as absent.
    Some(String::from_utf16_lossy(&units))
}

/// Whether a Talos UKI booted, as upstream tells: systemd-boot's default
/// entry is one of its `Talos-` entries or, with no default entry (a disk
/// image the installer never ran on), the image systemd-stub started is.
fn booted_with_talos_uki(efivars: &Path) -> bool {
    let default_entry = efi_string(efivars, "LoaderEntryDefault").unwrap_or_default();
    if !default_entry.is_empty() {
        return default_entry.starts_with("Talos-");
    }
    efi_string(efivars, "StubImageIdentifier").is_some_and(|image| {
        image
            .rsplit(['\\', '/'])
            .next()
            .is_some_and(|name| name.starts_with("Talos-"))
    })
}

/// What the firmware and the kernel say about the node's security, read
/// from `sys` (`/sys`) and `proc` (`/proc`).
fn read_security_state(sys: &Path, proc: &Path) -> runtime_pb::SecurityStateSpec {
    let efivars = sys.join("firmware/efi/efivars");
    // An EFI variable file: 4 bytes of attributes, then the value.
    let set = |name: &str| {
        std::fs::read(efivars.join(format!("{name}-{EFI_GLOBAL}")))
            .is_ok_and(|v| v.get(4) == Some(&1))
    };
    // In setup mode the firmware takes any key: nothing is enforced yet.
    let secure_boot = set("SecureBoot") && !set("SetupMode");
    let booted_with_uki = booted_with_talos_uki(&efivars);
    let read = |path: PathBuf| std::fs::read_to_string(path).map(|v| v.trim().to_owned());
    let se_linux_state = match read(sys.join("fs/selinux/enforce")).as_deref() {
        Ok("1") => enums_pb::RuntimeSeLinuxState::SeLinuxStateEnforcing,
        Ok(_) => enums_pb::RuntimeSeLinuxState::SeLinuxStatePermissive,
        Err(_) => enums_pb::RuntimeSeLinuxState::SeLinuxStateDisabled,
    };
    let fips_state = match read(proc.join("sys/crypto/fips_enabled")).as_deref() {
        Ok("1") => enums_pb::RuntimeFipsState::FipsStateEnabled,
        _ => enums_pb::RuntimeFipsState::FipsStateDisabled,
    };
    let module_signature_enforced =
        read(sys.join("module/module/parameters/sig_enforce")).is_ok_and(|v| v == "Y");
    runtime_pb::SecurityStateSpec {
        secure_boot,
        // This image signs neither its kernel as a UKI nor a PCR policy.
        uki_signing_key_fingerprint: String::new(),
        pcr_signing_key_fingerprint: String::new(),
        se_linux_state: se_linux_state as i32,
        booted_with_uki,
        fips_state: fips_state as i32,
        module_signature_enforced,
    }
}

/// The node's security state. In container mode only FIPS is reported, as
/// upstream does: the firmware and the rest of the kernel are the host's.
async fn security_state(mode: Mode) -> Result<Vec<Item>, ResourceError> {
    let mut spec = blocking("the security state", || {
        read_security_state(Path::new("/sys"), Path::new("/proc"))
    })
    .await?;
    if mode == Mode::Container {
        spec = runtime_pb::SecurityStateSpec {
            fips_state: spec.fips_state,
            ..Default::default()
        };
    }
    Ok(vec![item(
        "securitystate",
        &SecurityStateYaml::of(&spec),
        &spec,
    )?])
}

// === YAML shapes of the specs (upstream's field names) ===

#[derive(Serialize)]
struct NamespaceYaml<'a> {
    description: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DefinitionYaml<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    display_type: &'a str,
    default_namespace: &'a str,
    aliases: &'a [String],
    all_aliases: &'a [String],
    print_columns: &'a [ColumnYaml<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    sensitivity: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ColumnYaml<'a> {
    name: &'a str,
    json_path: &'a str,
}

#[derive(Serialize)]
struct MetaKeyYaml<'a> {
    value: &'a str,
}

#[derive(Serialize)]
struct CmdlineYaml<'a> {
    cmdline: &'a str,
}

#[derive(Serialize)]
struct MachineStatusYaml<'a> {
    stage: &'a str,
    status: MachineStatusStatusYaml<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineStatusStatusYaml<'a> {
    ready: bool,
    unmet_conditions: Vec<UnmetYaml<'a>>,
}

#[derive(Serialize)]
struct UnmetYaml<'a> {
    name: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct ServiceYaml {
    running: bool,
    healthy: bool,
    unknown: bool,
}

/// Upstream's field names, snake case for this type; the identity and
/// size fields are always written, the rest only when set.
#[derive(Serialize)]
struct DiskYaml<'a> {
    dev_path: &'a str,
    size: u64,
    pretty_size: &'a str,
    io_size: u64,
    sector_size: u64,
    readonly: bool,
    cdrom: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    model: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    serial: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    modalias: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    wwid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uuid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    bus_path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    sub_system: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    transport: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rotational: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    symlinks: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SystemInformationYaml<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    manufacturer: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    product_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    // Upstream's key is all lowercase.
    #[serde(skip_serializing_if = "str::is_empty")]
    serialnumber: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uuid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    wake_up_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    sku_number: &'a str,
}

/// Upstream's keys, all omitted when empty; the fields no platform here
/// fills (region, zone, provider id, spot, DNS names, tags) are left out.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlatformMetadataYaml<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    platform: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    hostname: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    instance_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    instance_id: &'a str,
}

/// Upstream's keys: only `encryptionProviders` is omitted when empty.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MountStatusYaml<'a> {
    source: &'a str,
    target: &'a str,
    filesystem_type: &'a str,
    options: &'a [String],
    encrypted: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    encryption_providers: &'a [String],
}

/// Upstream's keys, every one always there.
#[derive(Serialize)]
struct KernelParamYaml<'a> {
    current: &'a str,
    default: &'a str,
    unsupported: bool,
}

/// Upstream's keys (snake case here, as upstream's tags are): names and
/// the driver omitted when empty, the ids always there.
#[derive(Serialize)]
struct PciDeviceYaml<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    class: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subclass: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    vendor: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    product: &'a str,
    class_id: &'a str,
    subclass_id: &'a str,
    vendor_id: &'a str,
    product_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    driver: &'a str,
}

/// Upstream's keys; every field omitted when empty or zero, as upstream.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessorYaml<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    socket: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    manufacturer: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    product_name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    max_speed_mhz: u32,
    #[serde(skip_serializing_if = "is_zero")]
    boot_speed_mhz: u32,
    #[serde(skip_serializing_if = "is_zero")]
    status: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    serial_number: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    asset_tag: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    part_number: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    core_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    core_enabled: u32,
    #[serde(skip_serializing_if = "is_zero")]
    thread_count: u32,
}

/// Upstream's keys; every field omitted when empty or zero, as upstream.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemoryModuleYaml<'a> {
    #[serde(rename = "sizeMiB", skip_serializing_if = "is_zero")]
    size_mib: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    device_locator: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    bank_locator: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    speed: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    manufacturer: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    serial_number: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    asset_tag: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    product_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResolverYaml<'a> {
    dns_servers: Vec<&'a str>,
    search_domains: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TimeServerYaml<'a> {
    time_servers: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockDeviceYaml<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    major: i64,
    minor: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    partition_name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    partition_number: i64,
    device_path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    parent: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    secondaries: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NetworkStatusYaml {
    address_ready: bool,
    connectivity_ready: bool,
    hostname_ready: bool,
    etc_files_ready: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdjtimeYaml<'a> {
    offset: String,
    #[serde(serialize_with = "go_float")]
    frequency_adjustment_ratio: f64,
    max_error: String,
    est_error: String,
    status: &'a str,
    constant: i64,
    sync_status: bool,
    state: &'a str,
}

/// A float as Go's YAML writes it where it matters here: a whole number
/// without a fraction (`1`, not `1.0`).
fn go_float<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact
    if value.fract() == 0.0 && value.abs() < EXACT {
        // Exact by the check above.
        #[allow(clippy::cast_possible_truncation)]
        return serializer.serialize_i64(*value as i64);
    }
    serializer.serialize_f64(*value)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityStateYaml<'a> {
    secure_boot: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    uki_signing_key_fingerprint: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pcr_signing_key_fingerprint: &'a str,
    #[serde(rename = "selinuxState", skip_serializing_if = "Option::is_none")]
    se_linux_state: Option<&'static str>,
    #[serde(rename = "bootedWithUKI", skip_serializing_if = "is_zero")]
    booted_with_uki: bool,
    #[serde(rename = "fipsState", skip_serializing_if = "Option::is_none")]
    fips_state: Option<&'static str>,
    #[serde(skip_serializing_if = "is_zero")]
    module_signature_enforced: bool,
}

impl SecurityStateYaml<'_> {
    /// Upstream's words for the states; the zero states are left out.
    fn of(spec: &runtime_pb::SecurityStateSpec) -> SecurityStateYaml<'_> {
        use enums_pb::{RuntimeFipsState as Fips, RuntimeSeLinuxState as SeLinux};
        SecurityStateYaml {
            secure_boot: spec.secure_boot,
            uki_signing_key_fingerprint: &spec.uki_signing_key_fingerprint,
            pcr_signing_key_fingerprint: &spec.pcr_signing_key_fingerprint,
            se_linux_state: match SeLinux::try_from(spec.se_linux_state) {
                Ok(SeLinux::SeLinuxStatePermissive) => Some("enabled, permissive"),
                Ok(SeLinux::SeLinuxStateEnforcing) => Some("enabled, enforcing"),
                _ => None,
            },
            booted_with_uki: spec.booted_with_uki,
            fips_state: match Fips::try_from(spec.fips_state) {
                Ok(Fips::FipsStateEnabled) => Some("enabled"),
                Ok(Fips::FipsStateStrict) => Some("strict"),
                _ => None,
            },
            module_signature_enforced: spec.module_signature_enforced,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TimeStatusYaml {
    synced: bool,
    epoch: i64,
    sync_disabled: bool,
}

#[derive(Serialize)]
struct HostnameYaml<'a> {
    hostname: &'a str,
    domainname: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn security_state_from_firmware_and_kernel_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let (sys, proc) = (root.path().join("sys"), root.path().join("proc"));
        let none = read_security_state(&sys, &proc);
        assert_eq!(none, runtime_pb::SecurityStateSpec::default());
        let yaml = serde_yaml_ng::to_string(&SecurityStateYaml::of(&none)).expect("yaml");
        assert_eq!(yaml, "secureBoot: false\n");

        let efivars = sys.join("firmware/efi/efivars");
        std::fs::create_dir_all(&efivars).expect("mkdir");
        std::fs::write(
            efivars.join(format!("SecureBoot-{EFI_GLOBAL}")),
            [6, 0, 0, 0, 1],
        )
        .expect("var");
        std::fs::write(
            efivars.join(format!("StubImageIdentifier-{SYSTEMD_STUB}")),
            utf16_var("\\EFI\\Linux\\Talos-A.efi"),
        )
        .expect("var");
        std::fs::create_dir_all(sys.join("fs/selinux")).expect("mkdir");
        std::fs::write(sys.join("fs/selinux/enforce"), "0").expect("enforce");
        std::fs::create_dir_all(sys.join("module/module/parameters")).expect("mkdir");
        std::fs::write(sys.join("module/module/parameters/sig_enforce"), "Y\n").expect("sig");
        std::fs::create_dir_all(proc.join("sys/crypto")).expect("mkdir");
        std::fs::write(proc.join("sys/crypto/fips_enabled"), "1\n").expect("fips");
        let all = read_security_state(&sys, &proc);
        assert!(all.secure_boot && all.booted_with_uki && all.module_signature_enforced);
        let yaml = serde_yaml_ng::to_string(&SecurityStateYaml::of(&all)).expect("yaml");
        assert_eq!(
            yaml,
            "secureBoot: true\nselinuxState: enabled, permissive\nbootedWithUKI: true\nfipsState: enabled\nmoduleSignatureEnforced: true\n"
        );
        // On, but in setup mode: nothing enforced.
        std::fs::write(
            efivars.join(format!("SetupMode-{EFI_GLOBAL}")),
            [6, 0, 0, 0, 1],
        )
        .expect("var");
        assert!(!read_security_state(&sys, &proc).secure_boot);
        std::fs::write(
            efivars.join(format!("SetupMode-{EFI_GLOBAL}")),
            [6, 0, 0, 0, 0],
        )
        .expect("var");
        assert!(read_security_state(&sys, &proc).secure_boot);
        // Secure Boot present but off.
        std::fs::write(
            efivars.join(format!("SecureBoot-{EFI_GLOBAL}")),
            [6, 0, 0, 0, 0],
        )
        .expect("var");
        assert!(!read_security_state(&sys, &proc).secure_boot);
    }

    /// An EFI string variable: attributes, then UTF-16LE with a NUL.
    fn utf16_var(value: &str) -> Vec<u8> {
        let mut raw = vec![6, 0, 0, 0];
        for unit in value.encode_utf16().chain([0]) {
            raw.extend_from_slice(&unit.to_le_bytes());
        }
        raw
    }

    #[test]
    fn a_talos_uki_is_told_by_its_entry_or_its_image_name() {
        let root = tempfile::tempdir().expect("tempdir");
        let efivars = root.path();
        let set = |name: &str, value: &str| {
            std::fs::write(
                efivars.join(format!("{name}-{SYSTEMD_STUB}")),
                utf16_var(value),
            )
            .expect("var");
        };
        assert!(!booted_with_talos_uki(efivars), "no variables: no UKI");
        set("StubInfo", "systemd-stub 257");
        assert!(
            !booted_with_talos_uki(efivars),
            "another distribution's UKI is not Talos's"
        );
        set("StubImageIdentifier", "\\EFI\\Linux\\arch-linux.efi");
        assert!(!booted_with_talos_uki(efivars));
        set("StubImageIdentifier", "\\EFI\\Linux\\Talos-v1.11.0.efi");
        assert!(
            booted_with_talos_uki(efivars),
            "the stub's image is Talos's"
        );
        // systemd-boot's default entry decides when there is one.
        set("LoaderEntryDefault", "arch.conf");
        assert!(!booted_with_talos_uki(efivars));
        set("LoaderEntryDefault", "Talos-v1.11.0.efi");
        assert!(booted_with_talos_uki(efivars));
    }

    #[test]
    fn a_whole_frequency_ratio_is_written_as_go_writes_it() {
        let yaml = |ratio: f64| {
            serde_yaml_ng::to_string(&AdjtimeYaml {
                offset: "0s".into(),
                frequency_adjustment_ratio: ratio,
                max_error: "0s".into(),
                est_error: "0s".into(),
                status: "STA_UNSYNC",
                constant: 0,
                sync_status: false,
                state: "TIME_ERROR",
            })
            .expect("yaml")
        };
        assert!(
            yaml(1.0).contains("frequencyAdjustmentRatio: 1\n"),
            "{}",
            yaml(1.0)
        );
        assert!(
            yaml(1.000_012_3).contains("frequencyAdjustmentRatio: 1.0000123\n"),
            "{}",
            yaml(1.000_012_3)
        );
    }

    #[test]
    fn block_devices_from_sysfs() {
        use prost::Message as _;
        let sys = tempfile::tempdir().expect("tempdir");
        let devices = sys
            .path()
            .join("devices/pci0000:00/0000:00:05.0/virtio2/block");
        let dev = |dir: &Path, uevent: &str| {
            std::fs::create_dir_all(dir).expect("mkdir");
            std::fs::write(dir.join("uevent"), uevent).expect("uevent");
        };
        let vda = devices.join("vda");
        dev(
            &vda,
            "MAJOR=253\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\nDISKSEQ=9\n",
        );
        let vda1 = vda.join("vda1");
        dev(
            &vda1,
            "MAJOR=253\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=EFI\n",
        );
        let dm = sys.path().join("devices/virtual/block/dm-0");
        dev(&dm, "MAJOR=252\nMINOR=0\nDEVNAME=dm-0\nDEVTYPE=disk\n");
        std::fs::create_dir_all(dm.join("slaves")).expect("slaves");
        std::os::unix::fs::symlink(&vda1, dm.join("slaves/vda1")).expect("slave");
        let class = sys.path().join("class/block");
        std::fs::create_dir_all(&class).expect("class");
        for (name, target) in [("vda", &vda), ("vda1", &vda1), ("dm-0", &dm)] {
            std::os::unix::fs::symlink(target, class.join(name)).expect("link");
        }
        let items = block_devices(sys.path()).expect("read");
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["dm-0", "vda", "vda1"]);
        let spec =
            |i: usize| block_pb::DeviceSpec::decode(items[i].proto.as_slice()).expect("spec");
        let partition = spec(2);
        assert_eq!(
            (
                partition.r#type.as_str(),
                partition.major,
                partition.minor,
                partition.partition_name.as_str(),
                partition.partition_number,
                partition.parent.as_str()
            ),
            ("partition", 253, 1, "EFI", 1, "vda")
        );
        assert_eq!(
            partition.device_path,
            vda1.canonicalize().expect("path").to_string_lossy()
        );
        assert_eq!(spec(1).parent, "", "a disk has no parent");
        assert_eq!(spec(0).secondaries, ["vda1"]);
        assert!(
            items[2].yaml.contains("partitionName: EFI"),
            "{}",
            items[2].yaml
        );
        assert!(
            items[0].yaml.contains("secondaries:\n- vda1"),
            "{}",
            items[0].yaml
        );
        // No sysfs block class: none.
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(block_devices(empty.path()).expect("none").is_empty());
    }

    #[test]
    fn names_and_given_aliases_are_unique() {
        // talosctl refuses a name that two definitions answer to. Derived
        // initials may collide, as upstream's do ("rs": routes and
        // resolvers); names and the aliases given here must not.
        let mut seen: std::collections::BTreeMap<String, &str> = std::collections::BTreeMap::new();
        for def in DEFINITIONS {
            let mut names: Vec<String> = def.aliases.iter().map(|a| (*a).to_owned()).collect();
            names.push(def.display.to_lowercase());
            names.push(def.type_.to_lowercase());
            names.sort();
            names.dedup();
            for name in names {
                if let Some(other) = seen.insert(name.clone(), def.type_) {
                    panic!("{name:?} names both {other} and {}", def.type_);
                }
            }
        }
        // "ns" stays the namespaces'.
        let ns: Vec<&str> = DEFINITIONS
            .iter()
            .filter(|d| d.all_aliases().iter().any(|a| a == "ns"))
            .map(|d| d.type_)
            .collect();
        assert_eq!(ns, [NAMESPACE.type_]);
        assert_eq!(TIME_STATUS.short_aliases(), ["timestatus", "ts"]);
    }

    #[test]
    fn aliases_are_derived_as_cosi_derives_them() {
        assert_eq!(MACHINE_STATUS.short_aliases(), ["machinestatus", "ms"]);
        assert_eq!(SERVICE.short_aliases(), ["svc", "service"]);
        assert_eq!(
            RESOURCE_DEFINITION.all_aliases(),
            [
                "resourcedefinitions",
                "resourcedefinitions.meta",
                "resourcedefinitions.meta.cosi",
                "resourcedefinition",
                "rd",
                "rds"
            ]
        );
    }

    #[test]
    fn kernel_arguments_read_as_the_kernel_reads_them() {
        let cmdline =
            "console=ttyS0 talos.hostname=first talos.platform=metal talos.hostname=node-1\n";
        assert_eq!(
            cmdline_value(cmdline, "talos.hostname").as_deref(),
            Some("first")
        );
        assert_eq!(
            cmdline_value(cmdline, "talos.platform").as_deref(),
            Some("metal")
        );
        assert_eq!(cmdline_value(cmdline, "talos.config"), None);
        assert_eq!(
            PLATFORM_METADATA.short_aliases(),
            ["platformmetadata", "pm", "pms"]
        );
    }

    #[test]
    fn mounts_is_the_only_name_of_mount_statuses() {
        assert_eq!(MOUNT_STATUS.short_aliases(), ["mounts"]);
        assert_eq!(MOUNT_STATUS.all_aliases(), ["mounts"]);
        // So "ms" stays MachineStatus's alone.
        let ms: Vec<&str> = DEFINITIONS
            .iter()
            .filter(|d| d.all_aliases().iter().any(|a| a == "ms"))
            .map(|d| d.type_)
            .collect();
        assert_eq!(ms, [MACHINE_STATUS.type_]);
    }

    #[test]
    fn mount_statuses_are_talos_own_mounts_by_label() {
        let mounts = "\
/dev/loop0 / squashfs ro,relatime,errors=continue 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda3 /system/state xfs rw,nosuid,nodev,noexec,relatime,attr2,inode64 0 0
tmpfs /var tmpfs rw,nosuid,nodev 0 0
/dev/vda4 /var xfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda4 /var/lib xfs rw,relatime 0 0
tmpfs /var/run tmpfs rw 0 0
";
        let items = mount_statuses(mounts).expect("mounts");
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["STATE", "EPHEMERAL"]);
        assert_eq!(
            items[0].yaml,
            "source: /dev/vda3\ntarget: /system/state\nfilesystemType: xfs\noptions:\n- rw\n- nosuid\n- nodev\n- noexec\n- relatime\n- attr2\n- inode64\nencrypted: false\n"
        );
        // The top mount of /var counts, not the one it covers.
        let var = api::talos::resource::definitions::runtime::MountStatusSpec::decode(
            items[1].proto.as_slice(),
        )
        .expect("spec");
        assert_eq!(
            (var.source.as_str(), var.filesystem_type.as_str()),
            ("/dev/vda4", "xfs")
        );
        assert_eq!(var.options, ["rw", "nosuid", "nodev", "noexec", "relatime"]);
        // Something not a block device over the target is not the volume.
        let covered = mount_statuses(&format!("{mounts}overlay /system/state overlay rw 0 0\n"))
            .expect("mounts");
        assert_eq!(covered[0].id, "STATE");
        assert!(covered[0].yaml.starts_with("source: /dev/vda3\n"));
        // A node without its disk (maintenance mode) has none.
        assert!(
            mount_statuses("proc /proc proc rw 0 0\n")
                .expect("mounts")
                .is_empty()
        );
    }

    #[test]
    fn every_definition_is_well_formed_and_in_a_served_namespace() {
        for def in DEFINITIONS {
            assert!(
                NAMESPACES.iter().any(|(n, _)| *n == def.namespace),
                "{}",
                def.type_
            );
            assert_eq!(Definition::of(def.type_), Some(def));
            assert_eq!(Definition::of(&def.type_.to_uppercase()), Some(def));
            assert!(def.plural().starts_with(def.display), "{}", def.type_);
            assert!(def.plural().ends_with('s'), "{}", def.type_);
            assert!(!def.suffix().is_empty(), "{}", def.type_);
        }
    }

    #[test]
    fn reads_are_checked_in_upstreams_order() {
        let err = Resources::resolve("nowhere", "Nope.x.dev", true).expect_err("type first");
        assert!(matches!(err, ResourceError::UnknownType(_)), "{err:?}");
        let err = Resources::resolve("nowhere", MACHINE_CONFIG.type_, false)
            .expect_err("sensitive before namespace");
        assert!(matches!(err, ResourceError::NotAuthorized), "{err:?}");
        let err = Resources::resolve("nowhere", MACHINE_CONFIG.type_, true).expect_err("namespace");
        assert!(matches!(err, ResourceError::UnknownNamespace(_)), "{err:?}");
        assert_eq!(
            Resources::resolve("config", MACHINE_CONFIG.type_, true).expect("admin"),
            &MACHINE_CONFIG
        );
    }

    #[tokio::test]
    async fn disks_are_read_from_sysfs_in_upstreams_shape() {
        use udevd::testing::{FakeDisk, write_fake_disk};
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path();
        write_fake_disk(
            sys,
            &FakeDisk {
                name: "vda".into(),
                device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
                sectors: 20_971_520,
                attrs: vec![
                    ("serial".into(), "disk-one\n".into()),
                    ("queue/logical_block_size".into(), "512\n".into()),
                    ("queue/minimum_io_size".into(), "4096\n".into()),
                ],
                ..FakeDisk::default()
            },
        )
        .expect("vda");
        let ata = "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0";
        write_fake_disk(
            sys,
            &FakeDisk {
                name: "sda".into(),
                device_path: ata.into(),
                sectors: 1000,
                rotational: true,
                device_attrs: vec![
                    ("vendor".into(), "ATA     \n".into()),
                    ("model".into(), "QEMU HARDDISK   \n".into()),
                ],
                ..FakeDisk::default()
            },
        )
        .expect("sda");
        let host = sys.join("devices/pci0000:00/0000:00:1f.2/ata1/host0/scsi_host/host0");
        std::fs::create_dir_all(&host).expect("host");
        std::fs::write(host.join("proc_name"), "ahci\n").expect("proc_name");
        // Loop devices and empty drives are no disks.
        write_fake_disk(
            sys,
            &FakeDisk {
                name: "loop0".into(),
                sectors: 8,
                ..FakeDisk::default()
            },
        )
        .expect("loop0");

        // Two CD drives; the kernel gives both a size, only sr1 holds a disc.
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).expect("dev");
        for name in ["sr0", "sr1"] {
            write_fake_disk(sys, &udevd::testing::cd_drive(name)).expect("cd");
        }
        std::fs::write(dev.join("sr1"), vec![1u8; 4096]).expect("disc");
        // udevd's links to vda, and one that leads nowhere.
        std::fs::write(dev.join("vda"), b"").expect("vda node");
        let by_id = dev.join("disk/by-id");
        let by_path = dev.join("disk/by-path");
        std::fs::create_dir_all(&by_id).expect("by-id");
        std::fs::create_dir_all(&by_path).expect("by-path");
        std::os::unix::fs::symlink("../../vda", by_id.join("virtio-disk-one")).expect("link");
        std::os::unix::fs::symlink("../../vda", by_path.join("pci-0000:00:05.0")).expect("link");
        std::os::unix::fs::symlink("../../gone", by_id.join("virtio-gone")).expect("link");

        let items = disks_with(sys.to_path_buf(), dev.clone())
            .await
            .expect("disks");
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["sda", "sr0", "sr1", "vda"]);
        let cd = |i: usize| block_pb::DiskSpec::decode(items[i].proto.as_slice()).expect("proto");
        assert!(cd(1).cdrom);
        assert_eq!(
            (cd(1).size, cd(1).pretty_size.as_str()),
            (0, "0 B"),
            "no disc"
        );
        assert_eq!(cd(2).size, 2_097_151 * 512, "a disc");
        let vda = &items[3];
        assert!(
            vda.yaml.starts_with(
                "dev_path: /dev/vda\nsize: 10737418240\npretty_size: 11 GB\nio_size: 4096\n\
                 sector_size: 512\nreadonly: false\ncdrom: false\nserial: disk-one\n\
                 bus_path: /pci0000:00/0000:00:05.0/virtio2\nsub_system: /sys/class/block\n\
                 transport: virtio\nsymlinks:\n"
            ),
            "{}",
            vda.yaml
        );
        let spec = block_pb::DiskSpec::decode(vda.proto.as_slice()).expect("proto");
        assert_eq!(
            spec.symlinks,
            [
                dev.join("disk/by-id/virtio-disk-one").display().to_string(),
                dev.join("disk/by-path/pci-0000:00:05.0")
                    .display()
                    .to_string(),
            ]
        );
        assert!(cd(2).symlinks.is_empty());
        assert_eq!(spec.size, 10_737_418_240);
        assert_eq!(spec.dev_path, "/dev/vda");
        assert_eq!(spec.transport, "virtio");
        let sda = block_pb::DiskSpec::decode(items[0].proto.as_slice()).expect("proto");
        assert_eq!(sda.transport, "sata", "ahci is sata");
        assert!(sda.rotational);
        assert_eq!((sda.sector_size, sda.io_size), (512, 512), "the defaults");
        assert_eq!(sda.model, "QEMU HARDDISK");
        assert!(items[0].yaml.contains("rotational: true\n"));
    }

    /// A disk behind a SAS, FC or iSCSI host says so, whatever the host's
    /// driver (a SATA disk behind a SAS HBA is on SAS).
    #[test]
    fn scsi_transports_from_the_host_class() {
        use udevd::testing::{FakeDisk, write_fake_disk};
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path();
        for (name, host, class) in [
            ("sda", 3, Some("sas_host")),
            ("sdb", 4, Some("fc_host")),
            ("sdc", 5, Some("iscsi_host")),
            ("sdd", 6, None),
        ] {
            write_fake_disk(
                sys,
                &FakeDisk {
                    name: name.into(),
                    device_path: format!(
                        "pci0000:00/0000:00:1{host}.0/host{host}/target{host}:0:0/{host}:0:0:0"
                    ),
                    sectors: 1000,
                    device_attrs: vec![("vendor".into(), "ATA     \n".into())],
                    ..FakeDisk::default()
                },
            )
            .expect("disk");
            let scsi_host = sys.join(format!(
                "devices/pci0000:00/0000:00:1{host}.0/host{host}/scsi_host/host{host}"
            ));
            std::fs::create_dir_all(&scsi_host).expect("scsi_host");
            std::fs::write(scsi_host.join("proc_name"), "mpt3sas\n").expect("proc_name");
            if let Some(class) = class {
                std::fs::create_dir_all(sys.join("class").join(class).join(format!("host{host}")))
                    .expect("class");
            }
        }
        let disks = udevd::sysfs::disks(sys).expect("disks");
        let transports: Vec<&str> = disks.iter().map(|d| transport_name(sys, d)).collect();
        assert_eq!(transports, ["sas", "fc", "iscsi", ""]);
    }

    #[test]
    fn meta_key_ids_are_upstreams() {
        assert_eq!(meta_key_id(0x0a), "0x0a");
        assert_eq!(meta_key_id(255), "0xff");
        assert_eq!(stage_name(MachineStage::ShuttingDown), "shutting down");
    }
}
