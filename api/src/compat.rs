//! The wire-compatibility guard.
//!
//! Existing Talos clients address us by package, service, method name and
//! field number. [`entries`] flattens a descriptor set into a map of every
//! such fact (`field machine.Version.version = 2 optional message .machine.VersionInfo`);
//! the committed `api/descriptor.snapshot` holds that map as it was last
//! reviewed. [`check`] accepts additions and rejects any entry of the snapshot
//! that is gone or different: a renumbered or retyped field, a removed field,
//! message, enum value, method or service, a changed streaming shape, a
//! renamed package.
//!
//! Updating the snapshot is deliberate: `cargo run -p api --example snapshot -- --write`,
//! and the diff of `api/descriptor.snapshot` is reviewed with the change.

use std::collections::BTreeMap;
use std::fmt;

use prost_types::field_descriptor_proto::Label;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

/// Path of the committed snapshot, relative to the `api` crate.
pub const SNAPSHOT_FILE: &str = "descriptor.snapshot";

/// Flattened wire facts: key → value.
pub type Entries = BTreeMap<String, String>;

/// Files whose wire is not ours to guard (protobuf's well-known types).
fn is_foreign(file: &str) -> bool {
    file.starts_with("google/protobuf/")
}

/// Flattens the wire facts of every contract in `fds`.
#[must_use]
pub fn entries(fds: &FileDescriptorSet) -> Entries {
    let mut out = Entries::new();
    for file in fds.file.iter().filter(|f| !is_foreign(f.name())) {
        let package = file.package();
        out.insert(
            format!("file {}", file.name()),
            format!("package {package}"),
        );
        for message in &file.message_type {
            message_entries(&mut out, package, message);
        }
        for e in &file.enum_type {
            enum_entries(&mut out, package, e);
        }
        for service in &file.service {
            let service_name = format!("{package}.{}", service.name());
            out.insert(format!("service {service_name}"), String::new());
            for m in &service.method {
                let mut shape = format!("{} -> {}", m.input_type(), m.output_type());
                if m.client_streaming() {
                    shape.push_str(" client-streaming");
                }
                if m.server_streaming() {
                    shape.push_str(" server-streaming");
                }
                out.insert(format!("method /{service_name}/{}", m.name()), shape);
            }
        }
    }
    out
}

fn message_entries(out: &mut Entries, scope: &str, message: &DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    out.insert(format!("message {name}"), String::new());
    for field in &message.field {
        let label = match field.label() {
            Label::Repeated => "repeated",
            Label::Required => "required",
            Label::Optional => "optional",
        };
        let ty = field.r#type().as_str_name();
        let ty = ty.trim_start_matches("TYPE_").to_ascii_lowercase();
        let mut value = format!("{} {label} {ty}", field.number());
        if !field.type_name().is_empty() {
            value.push(' ');
            value.push_str(field.type_name());
        }
        out.insert(format!("field {name}.{}", field.name()), value);
    }
    for nested in &message.nested_type {
        message_entries(out, &name, nested);
    }
    for e in &message.enum_type {
        enum_entries(out, &name, e);
    }
}

fn enum_entries(out: &mut Entries, scope: &str, e: &EnumDescriptorProto) {
    let name = format!("{scope}.{}", e.name());
    out.insert(format!("enum {name}"), String::new());
    for value in &e.value {
        out.insert(
            format!("value {name}.{}", value.name()),
            value.number().to_string(),
        );
    }
}

/// Renders entries in the snapshot's text form: one `key = value` per line, sorted.
#[must_use]
pub fn render(entries: &Entries) -> String {
    let mut s = String::from(
        "# Wire snapshot of the node API contracts. Generated; review every change.\n\
         # Regenerate: cargo run -p api --example snapshot -- --write\n",
    );
    for (k, v) in entries {
        s.push_str(k);
        s.push_str(" = ");
        s.push_str(v);
        s.push('\n');
    }
    s
}

/// Parses the snapshot's text form.
///
/// # Errors
/// A line that is neither a comment nor `key = value`.
pub fn parse(text: &str) -> Result<Entries, SnapshotParseError> {
    let mut out = Entries::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(" = ").ok_or_else(|| SnapshotParseError {
            line: i + 1,
            text: line.to_owned(),
        })?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// A malformed snapshot line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line as found.
    pub text: String,
}

impl fmt::Display for SnapshotParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parsing the API snapshot: line {} is not `key = value`: {:?}",
            self.line, self.text
        )
    }
}

impl std::error::Error for SnapshotParseError {}

/// One way the contracts broke the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breakage {
    /// Something the snapshot has is gone (removed or renamed).
    Removed {
        /// The snapshot key.
        key: String,
    },
    /// Something kept its name but changed its wire meaning.
    Changed {
        /// The snapshot key.
        key: String,
        /// What the snapshot says.
        was: String,
        /// What the contracts say now.
        now: String,
    },
}

impl fmt::Display for Breakage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breakage::Removed { key } => write!(f, "removed: {key}"),
            Breakage::Changed { key, was, now } => {
                write!(f, "changed: {key}: was `{was}`, now `{now}`")
            }
        }
    }
}

/// Compares the current contracts against the snapshot. Additions pass.
///
/// # Errors
/// Every entry of `snapshot` that `current` lacks or contradicts.
pub fn check(snapshot: &Entries, current: &Entries) -> Result<(), Vec<Breakage>> {
    let breakages: Vec<Breakage> = snapshot
        .iter()
        .filter_map(|(key, was)| match current.get(key) {
            None => Some(Breakage::Removed { key: key.clone() }),
            Some(now) if now != was => Some(Breakage::Changed {
                key: key.clone(),
                was: was.clone(),
                now: now.clone(),
            }),
            Some(_) => None,
        })
        .collect();
    if breakages.is_empty() {
        Ok(())
    } else {
        Err(breakages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_parse_round_trip() {
        let e = entries(&crate::descriptor_set());
        assert!(e.len() > 500, "suspiciously few entries: {}", e.len());
        assert_eq!(parse(&render(&e)).expect("parses"), e);
    }

    #[test]
    fn parse_rejects_garbage() {
        let err = parse("# ok\nfield x = 1\nnot a pair\n").expect_err("garbage");
        assert_eq!(err.line, 3);
    }

    #[test]
    fn check_accepts_additions_only() {
        let mut old = Entries::new();
        old.insert("field a.B.c".into(), "1 optional string".into());
        let mut new = old.clone();
        new.insert("field a.B.d".into(), "2 optional string".into());
        assert_eq!(check(&old, &new), Ok(()));
        assert_eq!(
            check(&new, &old),
            Err(vec![Breakage::Removed {
                key: "field a.B.d".into()
            }])
        );
    }
}
