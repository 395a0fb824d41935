//! Golden bytes: our generated code encodes exactly what upstream's field
//! numbers and types say, byte for byte, and decodes those bytes back.
//!
//! The expected bytes are built by hand from the wire rules (tag = field << 3
//! | wire type; varints; length-delimited submessages), not by prost, so a
//! renumbered or retyped field in a `.proto` fails here even if the snapshot
//! were regenerated carelessly.

use api::common::{Data, Metadata};
use api::google::rpc::Status;
use api::machine::{
    FeaturesInfo, MemInfo, Memory, MemoryResponse, PlatformInfo, ServiceEvent, ServiceEvents,
    ServiceHealth, ServiceInfo, ServiceList, ServiceListResponse, Version, VersionInfo,
    VersionResponse,
};
use prost::Message;

// === hand encoder ===

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn key(field: u64, wire_type: u64) -> Vec<u8> {
    varint(field << 3 | wire_type)
}

/// Wire type 0.
fn uint(field: u64, v: u64) -> Vec<u8> {
    [key(field, 0), varint(v)].concat()
}

/// Wire type 2.
fn bytes(field: u64, b: &[u8]) -> Vec<u8> {
    [key(field, 2), varint(b.len() as u64), b.to_vec()].concat()
}

fn string(field: u64, s: &str) -> Vec<u8> {
    bytes(field, s.as_bytes())
}

fn message(field: u64, parts: &[Vec<u8>]) -> Vec<u8> {
    bytes(field, &parts.concat())
}

fn assert_golden<M: Message + Default + PartialEq + std::fmt::Debug>(value: &M, expected: &[u8]) {
    assert_eq!(
        value.encode_to_vec(),
        expected,
        "encoding differs from the upstream wire"
    );
    assert_eq!(
        &M::decode(expected).expect("golden bytes decode"),
        value,
        "decoding differs"
    );
}

// === tests ===

#[test]
fn version() {
    let value = VersionResponse {
        messages: vec![Version {
            metadata: None,
            version: Some(VersionInfo {
                tag: "v0.1.0".into(),
                sha: "abc123".into(),
                built: "2026-11-25T00:00:00Z".into(),
                go_version: "rustc 1.95.0".into(),
                os: "linux".into(),
                arch: "amd64".into(),
            }),
            platform: Some(PlatformInfo {
                name: "container".into(),
                mode: "container".into(),
            }),
            features: Some(FeaturesInfo { rbac: true }),
        }],
    };
    // VersionResponse.messages = 1 { Version.version = 2 {...}, platform = 3, features = 4 }
    let expected = message(
        1,
        &[
            message(
                2,
                &[
                    string(1, "v0.1.0"),
                    string(2, "abc123"),
                    string(3, "2026-11-25T00:00:00Z"),
                    string(4, "rustc 1.95.0"),
                    string(5, "linux"),
                    string(6, "amd64"),
                ],
            ),
            message(3, &[string(1, "container"), string(2, "container")]),
            message(4, &[uint(1, 1)]),
        ],
    );
    assert_golden(&value, &expected);
}

#[test]
fn service_list() {
    let ts = prost_types::Timestamp {
        seconds: 1_764_000_000,
        nanos: 5,
    };
    let value = ServiceListResponse {
        messages: vec![ServiceList {
            metadata: None,
            services: vec![ServiceInfo {
                id: "apid".into(),
                state: "Running".into(),
                events: Some(ServiceEvents {
                    events: vec![ServiceEvent {
                        msg: "Health check successful".into(),
                        state: "Running".into(),
                        ts: Some(ts),
                    }],
                }),
                health: Some(ServiceHealth {
                    unknown: false,
                    healthy: true,
                    last_message: "ok".into(),
                    last_change: Some(ts),
                }),
            }],
        }],
    };
    let timestamp = [uint(1, 1_764_000_000), uint(2, 5)];
    let expected = message(
        1,
        &[message(
            2,
            &[
                string(1, "apid"),
                string(2, "Running"),
                message(
                    3,
                    &[message(
                        1,
                        &[
                            string(1, "Health check successful"),
                            string(2, "Running"),
                            message(3, &timestamp),
                        ],
                    )],
                ),
                // unknown = false is the default and is not encoded.
                message(4, &[uint(2, 1), string(3, "ok"), message(4, &timestamp)]),
            ],
        )],
    );
    assert_golden(&value, &expected);
}

#[test]
fn memory_all_48_fields_in_meminfo_order() {
    // Field n holds value 1000 + n, so a swapped pair of numbers shows up.
    let v = |n: u64| 1000 + n;
    let meminfo = MemInfo {
        memtotal: v(1),
        memfree: v(2),
        memavailable: v(3),
        buffers: v(4),
        cached: v(5),
        swapcached: v(6),
        active: v(7),
        inactive: v(8),
        activeanon: v(9),
        inactiveanon: v(10),
        activefile: v(11),
        inactivefile: v(12),
        unevictable: v(13),
        mlocked: v(14),
        swaptotal: v(15),
        swapfree: v(16),
        dirty: v(17),
        writeback: v(18),
        anonpages: v(19),
        mapped: v(20),
        shmem: v(21),
        slab: v(22),
        sreclaimable: v(23),
        sunreclaim: v(24),
        kernelstack: v(25),
        pagetables: v(26),
        nfsunstable: v(27),
        bounce: v(28),
        writebacktmp: v(29),
        commitlimit: v(30),
        committedas: v(31),
        vmalloctotal: v(32),
        vmallocused: v(33),
        vmallocchunk: v(34),
        hardwarecorrupted: v(35),
        anonhugepages: v(36),
        shmemhugepages: v(37),
        shmempmdmapped: v(38),
        cmatotal: v(39),
        cmafree: v(40),
        hugepagestotal: v(41),
        hugepagesfree: v(42),
        hugepagesrsvd: v(43),
        hugepagessurp: v(44),
        hugepagesize: v(45),
        directmap4k: v(46),
        directmap2m: v(47),
        directmap1g: v(48),
    };
    let value = MemoryResponse {
        messages: vec![Memory {
            metadata: None,
            meminfo: Some(meminfo),
        }],
    };
    let fields: Vec<Vec<u8>> = (1..=48).map(|n| uint(n, v(n))).collect();
    let expected = message(1, &[message(2, &fields)]);
    // Fields 16 and up take two-byte keys: check one explicitly.
    assert!(
        expected.windows(4).any(|w| w == [0x80, 0x01, 0xf8, 0x07]),
        "field 16: key 0x80 0x01, value 1016"
    );
    assert_golden(&value, &expected);
}

#[test]
fn logs_data_chunk() {
    let value = Data {
        metadata: None,
        bytes: bytes::Bytes::from_static(b"machined: started\n"),
    };
    assert_golden(&value, &bytes(2, b"machined: started\n"));
}

#[test]
fn metadata_with_hostname_error_and_status() {
    let value = Metadata {
        hostname: "10.5.0.3".into(),
        error: "rpc error: code = Unavailable desc = connection refused".into(),
        status: Some(Status {
            code: 14,
            message: "connection refused".into(),
            details: vec![],
        }),
    };
    let expected = [
        string(1, "10.5.0.3"),
        string(2, "rpc error: code = Unavailable desc = connection refused"),
        message(3, &[uint(1, 14), string(2, "connection refused")]),
    ]
    .concat();
    assert_golden(&value, &expected);

    // A Data chunk tagged by a proxy: metadata rides in field 1.
    let tagged = Data {
        metadata: Some(value),
        bytes: bytes::Bytes::from_static(b"x"),
    };
    assert_golden(&tagged, &[bytes(1, &expected), bytes(2, b"x")].concat());
}

#[test]
fn concatenated_envelopes_are_the_union() {
    // The fan-out proxy relies on this: N one-element replies concatenated
    // byte-wise decode as one reply with N elements.
    let one = |host: &str| VersionResponse {
        messages: vec![Version {
            metadata: Some(Metadata {
                hostname: host.into(),
                ..Metadata::default()
            }),
            ..Version::default()
        }],
    };
    let joined = [one("a").encode_to_vec(), one("b").encode_to_vec()].concat();
    let decoded = VersionResponse::decode(&joined[..]).expect("decodes");
    let hosts: Vec<&str> = decoded
        .messages
        .iter()
        .map(|m| m.metadata.as_ref().map_or("", |md| &md.hostname[..]))
        .collect();
    assert_eq!(hosts, ["a", "b"]);
}

#[test]
fn cosi_resource_and_definition() {
    use api::cosi::resource::meta::ResourceDefinitionSpec;
    use api::cosi::resource::meta::resource_definition_spec::{PrintColumn, Sensitivity};
    use api::cosi::resource::{GetResponse, Metadata as CosiMetadata, Resource, Spec};

    let value = GetResponse {
        resource: Some(Resource {
            metadata: Some(CosiMetadata {
                namespace: "runtime".into(),
                r#type: "MetaKeys.runtime.talos.dev".into(),
                id: "0x0c".into(),
                version: "2".into(),
                owner: "machined".into(),
                phase: "running".into(),
                created: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                ..CosiMetadata::default()
            }),
            spec: Some(Spec {
                proto_spec: vec![0x0a, 0x01, b'x'],
                yaml_spec: "value: x\n".into(),
            }),
        }),
    };
    // GetResponse.resource = 1 { metadata = 1 {ns 1, type 2, id 3,
    // version 4, owner 5, phase 6, created 7 {seconds 1}}, spec = 2
    // {proto_spec 1, yaml_spec 2} }
    let expected = message(
        1,
        &[
            message(
                1,
                &[
                    string(1, "runtime"),
                    string(2, "MetaKeys.runtime.talos.dev"),
                    string(3, "0x0c"),
                    string(4, "2"),
                    string(5, "machined"),
                    string(6, "running"),
                    message(7, &[uint(1, 5)]),
                ],
            ),
            message(2, &[bytes(1, &[0x0a, 0x01, b'x']), string(2, "value: x\n")]),
        ],
    );
    assert_golden(&value, &expected);

    let value = ResourceDefinitionSpec {
        resource_type: "MachineConfigs.config.talos.dev".into(),
        display_type: "MachineConfig".into(),
        default_namespace: "config".into(),
        aliases: vec!["mc".into()],
        all_aliases: vec!["machineconfigs".into(), "mc".into()],
        print_columns: vec![PrintColumn {
            name: "Type".into(),
            json_path: "{@}".into(),
        }],
        sensitivity: Sensitivity::Sensitive.into(),
    };
    let expected = [
        string(1, "MachineConfigs.config.talos.dev"),
        string(2, "MachineConfig"),
        string(3, "config"),
        string(4, "mc"),
        string(5, "machineconfigs"),
        string(5, "mc"),
        message(6, &[string(1, "Type"), string(2, "{@}")]),
        uint(7, 1),
    ]
    .concat();
    assert_golden(&value, &expected);
}

#[test]
fn cosi_watch() {
    use api::cosi::resource::{
        Event, EventType, IdQuery, Metadata as CosiMetadata, Resource, WatchOptions, WatchRequest,
        WatchResponse,
    };

    let value = WatchRequest {
        namespace: "runtime".into(),
        r#type: "Services.v1alpha1.talos.dev".into(),
        id: Some("apid".into()),
        options: Some(WatchOptions {
            bootstrap_contents: true,
            tail_events: 2,
            id_query: Some(IdQuery {
                regexp: "^a".into(),
            }),
            aggregated: true,
        }),
        api_version: 1,
    };
    // namespace 1, type 2, id 3, options 4 {bootstrap_contents 1,
    // tail_events 2, id_query 4 {regexp 1}, aggregated 5}, api_version 5
    let expected = [
        string(1, "runtime"),
        string(2, "Services.v1alpha1.talos.dev"),
        string(3, "apid"),
        message(
            4,
            &[
                uint(1, 1),
                uint(2, 2),
                message(4, &[string(1, "^a")]),
                uint(5, 1),
            ],
        ),
        uint(5, 1),
    ]
    .concat();
    assert_golden(&value, &expected);

    let md = |id: &str| CosiMetadata {
        id: id.into(),
        ..CosiMetadata::default()
    };
    let value = WatchResponse {
        event: vec![Event {
            resource: Some(Resource {
                metadata: Some(md("new")),
                spec: None,
            }),
            event_type: EventType::Updated.into(),
            old: Some(Resource {
                metadata: Some(md("old")),
                spec: None,
            }),
            error: Some("e".into()),
        }],
    };
    // WatchResponse.event = 1 {resource 1, event_type 2, old 3, error 4}
    let expected = message(
        1,
        &[
            message(1, &[message(1, &[string(3, "new")])]),
            uint(2, 1),
            message(3, &[message(1, &[string(3, "old")])]),
            string(4, "e"),
        ],
    );
    assert_golden(&value, &expected);
    assert_eq!(EventType::Bootstrapped as i32, 3);
    assert_eq!(EventType::Errored as i32, 4);
}
