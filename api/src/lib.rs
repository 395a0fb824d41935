//! The node API contracts.
//!
//! Background: every component of the node speaks gRPC, and existing Talos
//! clients must be able to talk to us. The `.proto` files in `proto/` are our
//! own text with upstream Talos's packages, services, method names and field
//! numbers (see `docs/src/api.md`).
//!
//! Design: the contracts are compiled at build time with protox and
//! tonic-prost-build (no `protoc` binary). Besides the generated code the crate
//! exports
//! - [`FILE_DESCRIPTOR_SET`], the compiled descriptors (gRPC reflection, the
//!   compatibility guard),
//! - [`METHODS`], every RPC with its streaming shape, derived from the
//!   descriptors by the build script,
//! - [`roles`], the method → role table that apid enforces,
//! - [`compat`], the wire-compatibility guard against the committed snapshot.
//!
//! Each contract states its version in its first line
//! (`// contract-version: <package> <semver>`); [`CONTRACT_VERSIONS`] mirrors
//! them and a test keeps the two in step.
#![forbid(unsafe_code)]
#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
// The lint relaxations above cover generated code only; our own modules
// re-enable everything below.

pub mod common {
    //! `common`: Metadata, Data, Empty and the envelopes shared by all contracts.
    tonic::include_proto!("common");
}

pub mod google {
    //! Google types that are not prost well-known types.
    pub mod rpc {
        //! `google.rpc.Status`, carried in `common.Metadata.status`.
        tonic::include_proto!("google.rpc");
    }
}

pub mod machine {
    //! `machine`: MachineService and LifecycleService.
    tonic::include_proto!("machine");
}

pub mod time {
    //! `time`: TimeService (served by timed).
    tonic::include_proto!("time");
}

pub mod securityapi {
    //! `securityapi`: SecurityService (served by trustd on :50001).
    tonic::include_proto!("securityapi");
}

pub mod storage {
    //! `storage`: StorageService (served by udevd).
    tonic::include_proto!("storage");
}

pub mod cluster {
    //! `cluster`: ClusterService (served by machined).
    tonic::include_proto!("cluster");
}

pub mod network {
    //! `network`: NetworkService (served by networkd).
    tonic::include_proto!("network");
}

pub mod cosi {
    //! The COSI resource API (`cosi.resource.State`, served read-only by
    //! machined) and the specs of COSI's own `meta` resources.
    pub mod resource {
        //! `cosi.resource`: State, Resource, Metadata.
        tonic::include_proto!("cosi.resource");

        pub mod meta {
            //! `cosi.resource.meta`: NamespaceSpec, ResourceDefinitionSpec.
            tonic::include_proto!("cosi.resource.meta");
        }
    }
}

pub mod resource {
    //! `resource.*`: protobuf forms of resource specs kept from upstream's
    //! older layout.
    pub mod config {
        //! `resource.config`: MachineConfigSpec.
        tonic::include_proto!("resource.config");
    }
}

pub mod talos {
    //! `talos.resource.definitions.*`: protobuf forms of the resource specs
    //! (what `talosctl get` decodes from `proto_spec`).
    pub mod resource {
        //! Resource spec packages.
        pub mod definitions {
            //! One module per upstream package.
            pub mod block {
                //! `talos.resource.definitions.block`.
                tonic::include_proto!("talos.resource.definitions.block");
            }
            pub mod hardware {
                //! `talos.resource.definitions.hardware`.
                tonic::include_proto!("talos.resource.definitions.hardware");
            }
            pub mod enums {
                //! `talos.resource.definitions.enums`.
                tonic::include_proto!("talos.resource.definitions.enums");
            }
            pub mod runtime {
                //! `talos.resource.definitions.runtime`.
                tonic::include_proto!("talos.resource.definitions.runtime");
            }
            pub mod network {
                //! `talos.resource.definitions.network`.
                tonic::include_proto!("talos.resource.definitions.network");
            }
            pub mod time {
                //! `talos.resource.definitions.time`.
                tonic::include_proto!("talos.resource.definitions.time");
            }
            pub mod v1alpha1 {
                //! `talos.resource.definitions.v1alpha1`.
                tonic::include_proto!("talos.resource.definitions.v1alpha1");
            }
        }
    }
}

#[deny(clippy::all, missing_debug_implementations)]
pub mod compat;
#[deny(clippy::all, missing_debug_implementations)]
pub mod methods;
#[deny(clippy::all, missing_debug_implementations)]
pub mod roles;

pub use methods::{METHODS, MethodInfo};

/// The compiled descriptors of every contract and of everything they import.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Largest gRPC message any component sends or accepts (upstream's limit).
pub const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// The version of each contract file, as its first line states it.
pub const CONTRACT_VERSIONS: &[(&str, &str)] = &[
    ("common/common.proto", "1.0.0"),
    ("machine/machine.proto", "1.0.0"),
    ("machine/lifecycle.proto", "1.0.0"),
    ("time/time.proto", "1.0.0"),
    ("security/security.proto", "1.0.0"),
    ("storage/storage.proto", "1.0.0"),
    ("cluster/cluster.proto", "1.0.0"),
    ("network/network.proto", "1.0.0"),
    ("cosi/resource.proto", "1.0.0"),
    ("cosi/state.proto", "1.0.0"),
    ("cosi/meta.proto", "1.0.0"),
    ("resource/config/config.proto", "1.0.0"),
    ("resource/definitions/enums/enums.proto", "1.4.0"),
    ("resource/definitions/runtime/runtime.proto", "1.4.0"),
    ("resource/definitions/network/network.proto", "1.3.0"),
    ("resource/definitions/time/time.proto", "1.1.0"),
    ("resource/definitions/v1alpha1/v1alpha1.proto", "1.0.0"),
    ("resource/definitions/block/block.proto", "1.3.0"),
    ("resource/definitions/hardware/hardware.proto", "1.2.0"),
];

/// Decodes [`FILE_DESCRIPTOR_SET`].
///
/// # Panics
/// Never in practice: the bytes were produced by the build script from the
/// same prost version; a failure means a corrupted build.
#[must_use]
pub fn descriptor_set() -> prost_types::FileDescriptorSet {
    use prost::Message as _;
    prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("descriptor set written by build.rs decodes")
}
