//! The wire-compatibility guard against the committed snapshot, and proof
//! that it rejects the breakages it exists for.

use api::compat::{Breakage, Entries, SNAPSHOT_FILE, check, entries, parse};
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

fn snapshot() -> Entries {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SNAPSHOT_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse(&text).expect("snapshot parses")
}

fn file_mut<'a>(fds: &'a mut FileDescriptorSet, name: &str) -> &'a mut FileDescriptorProto {
    fds.file
        .iter_mut()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{name} in descriptor set"))
}

fn message_mut<'a>(file: &'a mut FileDescriptorProto, name: &str) -> &'a mut DescriptorProto {
    file.message_type
        .iter_mut()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("message {name}"))
}

fn breakages_after(mutate: impl FnOnce(&mut FileDescriptorSet)) -> Vec<Breakage> {
    let mut fds = api::descriptor_set();
    mutate(&mut fds);
    check(&snapshot(), &entries(&fds)).expect_err("the guard must reject this change")
}

#[test]
fn current_contracts_match_the_committed_snapshot() {
    if let Err(breakages) = check(&snapshot(), &entries(&api::descriptor_set())) {
        let list: Vec<String> = breakages.iter().map(ToString::to_string).collect();
        panic!(
            "the contracts break wire compatibility with the reviewed snapshot:\n  {}\n\
             (if this is deliberate, regenerate with `cargo run -p api --example snapshot -- --write` and have it reviewed)",
            list.join("\n  ")
        );
    }
}

#[test]
fn snapshot_is_complete_so_nothing_escapes_the_guard() {
    // Additions pass `check`, so a stale snapshot would leave new fields
    // unguarded: the committed snapshot must equal the current contracts.
    let current = entries(&api::descriptor_set());
    let missing: Vec<&String> = current
        .keys()
        .filter(|k| !snapshot().contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "contracts have entries the snapshot lacks; run `cargo run -p api --example snapshot -- --write`: {missing:?}"
    );
}

#[test]
fn renumbered_field_is_rejected() {
    let breakages = breakages_after(|fds| {
        let version = message_mut(file_mut(fds, "machine/machine.proto"), "Version");
        let field = version
            .field
            .iter_mut()
            .find(|f| f.name() == "version")
            .expect("field version");
        field.number = Some(12);
    });
    assert_eq!(
        breakages,
        vec![Breakage::Changed {
            key: "field machine.Version.version".into(),
            was: "2 optional message .machine.VersionInfo".into(),
            now: "12 optional message .machine.VersionInfo".into(),
        }]
    );
}

#[test]
fn retyped_field_is_rejected() {
    let breakages = breakages_after(|fds| {
        let data = message_mut(file_mut(fds, "common/common.proto"), "Data");
        let field = data
            .field
            .iter_mut()
            .find(|f| f.name() == "bytes")
            .expect("field bytes");
        field.set_type(Type::String);
    });
    assert!(
        matches!(&breakages[..], [Breakage::Changed { key, .. }] if key == "field common.Data.bytes"),
        "{breakages:?}"
    );
}

#[test]
fn removed_field_is_rejected() {
    let breakages = breakages_after(|fds| {
        let metadata = message_mut(file_mut(fds, "common/common.proto"), "Metadata");
        metadata.field.retain(|f| f.name() != "hostname");
    });
    assert_eq!(
        breakages,
        vec![Breakage::Removed {
            key: "field common.Metadata.hostname".into()
        }]
    );
}

#[test]
fn removed_method_is_rejected() {
    let breakages = breakages_after(|fds| {
        let file = file_mut(fds, "machine/machine.proto");
        let service = file
            .service
            .iter_mut()
            .find(|s| s.name() == "MachineService")
            .expect("service");
        service.method.retain(|m| m.name() != "Version");
    });
    assert_eq!(
        breakages,
        vec![Breakage::Removed {
            key: "method /machine.MachineService/Version".into()
        }]
    );
}

#[test]
fn streaming_shape_change_is_rejected() {
    let breakages = breakages_after(|fds| {
        let file = file_mut(fds, "machine/machine.proto");
        let service = file
            .service
            .iter_mut()
            .find(|s| s.name() == "MachineService")
            .expect("service");
        let logs = service
            .method
            .iter_mut()
            .find(|m| m.name() == "Logs")
            .expect("Logs");
        logs.server_streaming = Some(false);
    });
    assert!(
        matches!(&breakages[..], [Breakage::Changed { key, .. }] if key == "method /machine.MachineService/Logs"),
        "{breakages:?}"
    );
}

#[test]
fn renamed_package_is_rejected() {
    let breakages = breakages_after(|fds| {
        file_mut(fds, "time/time.proto").package = Some("clock".into());
    });
    assert!(breakages.contains(&Breakage::Changed {
        key: "file time/time.proto".into(),
        was: "package time".into(),
        now: "package clock".into(),
    }));
    assert!(breakages.contains(&Breakage::Removed {
        key: "service time.TimeService".into()
    }));
}

#[test]
fn additions_are_allowed() {
    let mut fds = api::descriptor_set();
    let version = message_mut(file_mut(&mut fds, "machine/machine.proto"), "Version");
    let mut extra = version.field[0].clone();
    extra.name = Some("added_later".into());
    extra.number = Some(99);
    version.field.push(extra);
    assert_eq!(check(&snapshot(), &entries(&fds)), Ok(()));
}
