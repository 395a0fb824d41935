//! `machine.install.diskSelector`: the install disk picked by what it is
//! rather than by its name, as upstream picks it.
//!
//! Every qualifier given must match: `size` (`4GB`, `>= 1TB`, `< 2TiB`,
//! go-humanize units), `model`, `serial`, `modalias`, `uuid`, `wwid` and
//! `busPath` as `*` patterns, `type` (`ssd`, `hdd`, `nvme`, `sd`). As
//! upstream, only disks on a bus are candidates (not device-mapper or
//! loop devices), never a read-only disk or a CD drive, and `name` is
//! refused. The first match in name order is the install disk.

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::validate::Issues;

/// How a size compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOp {
    /// `==` (or no operator).
    Eq,
    /// `>=`.
    Ge,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `<`.
    Lt,
}

/// A disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Not rotational.
    Ssd,
    /// Rotational.
    Hdd,
    /// On the NVMe transport.
    Nvme,
    /// An SD or MMC card.
    Sd,
}

/// A parsed `diskSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskSelector {
    /// `size`: the comparison and the size in bytes.
    pub size: Option<(SizeOp, u64)>,
    /// `model`.
    pub model: Option<String>,
    /// `serial`.
    pub serial: Option<String>,
    /// `modalias`.
    pub modalias: Option<String>,
    /// `uuid`.
    pub uuid: Option<String>,
    /// `wwid`.
    pub wwid: Option<String>,
    /// `type`.
    pub disk_type: Option<DiskType>,
    /// `busPath`.
    pub bus_path: Option<String>,
}

/// What a selector looks at in a disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFacts<'a> {
    /// Size in bytes.
    pub size: u64,
    /// Model.
    pub model: &'a str,
    /// Serial number.
    pub serial: &'a str,
    /// Module alias.
    pub modalias: &'a str,
    /// UUID (NVMe namespaces).
    pub uuid: &'a str,
    /// World wide identifier.
    pub wwid: &'a str,
    /// How it is attached (`virtio`, `nvme`, `mmc`, `scsi`, ...); empty when
    /// on no bus (device-mapper, loop).
    pub transport: &'a str,
    /// Path below `/sys/devices` (`/pci0000:00/0000:00:05.0/virtio2`).
    pub bus_path: &'a str,
    /// Spinning.
    pub rotational: bool,
    /// Read-only.
    pub readonly: bool,
    /// A CD/DVD drive.
    pub cdrom: bool,
}

impl DiskSelector {
    /// Whether `disk` is one the selector picks.
    #[must_use]
    pub fn matches(&self, disk: &DiskFacts<'_>) -> bool {
        let pattern = |pattern: &Option<String>, value: &str| {
            pattern
                .as_deref()
                .is_none_or(|p| crate::glob::matches(p, value))
        };
        let size = self.size.is_none_or(|(op, want)| match op {
            SizeOp::Eq => disk.size == want,
            SizeOp::Ge => disk.size >= want,
            SizeOp::Le => disk.size <= want,
            SizeOp::Gt => disk.size > want,
            SizeOp::Lt => disk.size < want,
        });
        let disk_type = self.disk_type.is_none_or(|t| match t {
            DiskType::Nvme => disk.transport == "nvme",
            DiskType::Sd => disk.transport == "mmc",
            DiskType::Hdd => disk.rotational,
            DiskType::Ssd => !disk.rotational,
        });
        size && disk_type
            && !disk.transport.is_empty()
            && !disk.readonly
            && !disk.cdrom
            && pattern(&self.model, disk.model)
            && pattern(&self.serial, disk.serial)
            && pattern(&self.modalias, disk.modalias)
            && pattern(&self.uuid, disk.uuid)
            && pattern(&self.wwid, disk.wwid)
            && pattern(&self.bus_path, disk.bus_path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    size: Option<Value>,
    name: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    modalias: Option<String>,
    uuid: Option<String>,
    wwid: Option<String>,
    #[serde(rename = "type")]
    disk_type: Option<String>,
    bus_path: Option<String>,
}

const BASE: &str = "machine.install.diskSelector";

/// Parses a size condition: an optional operator, then a size.
fn size(text: &str) -> Result<(SizeOp, u64), String> {
    let text = text.trim();
    let (op, rest) = [
        (">=", SizeOp::Ge),
        ("<=", SizeOp::Le),
        ("==", SizeOp::Eq),
        (">", SizeOp::Gt),
        ("<", SizeOp::Lt),
    ]
    .into_iter()
    .find_map(|(prefix, op)| text.strip_prefix(prefix).map(|rest| (op, rest)))
    .unwrap_or((SizeOp::Eq, text));
    crate::humanize::parse_bytes(rest).map(|bytes| (op, bytes)).ok_or_else(|| {
        format!("{text:?} is not a size condition such as 4GB or \">= 1TB\" ([>=|<=|>|<|==]<size>[units])")
    })
}

/// Reads `machine.install.diskSelector`; problems go to `issues` and
/// leave it out.
pub(super) fn read(value: &Value, issues: &mut Issues) -> Option<DiskSelector> {
    if value.is_null() {
        return None;
    }
    let raw: Raw = match serde_path_to_error::deserialize(value.clone()) {
        Ok(raw) => raw,
        Err(err) => {
            let path = super::render_path(&err.path().iter().cloned().collect::<Vec<_>>());
            let at = if path.is_empty() {
                BASE.to_owned()
            } else {
                format!("{BASE}.{path}")
            };
            issues.push(at, err.inner().to_string());
            return None;
        }
    };
    let mut ok = true;
    let mut problem = |field: &str, reason: String| {
        issues.push(format!("{BASE}.{field}"), reason);
        ok = false;
    };
    let text = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if text(raw.name).is_some() {
        problem(
            "name",
            "a selector on the name is not supported (set machine.install.disk instead)".into(),
        );
    }
    let size = match &raw.size {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_u64().map(|bytes| (SizeOp::Eq, bytes)).or_else(|| {
            problem("size", format!("{n} is not a size in bytes"));
            None
        }),
        Some(Value::String(s)) => size(s).map_err(|e| problem("size", e)).ok(),
        Some(_) => {
            problem("size", "must be a size condition such as \">= 1TB\"".into());
            None
        }
    };
    let disk_type = match text(raw.disk_type).as_deref() {
        None => None,
        Some("ssd") => Some(DiskType::Ssd),
        Some("hdd") => Some(DiskType::Hdd),
        Some("nvme") => Some(DiskType::Nvme),
        Some("sd") => Some(DiskType::Sd),
        Some(other) => {
            problem("type", format!("{other:?} is not ssd, hdd, nvme or sd"));
            None
        }
    };
    let selector = DiskSelector {
        size,
        model: text(raw.model),
        serial: text(raw.serial),
        modalias: text(raw.modalias),
        uuid: text(raw.uuid),
        wwid: text(raw.wwid),
        disk_type,
        bus_path: text(raw.bus_path),
    };
    ok.then_some(selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (Option<DiskSelector>, Vec<String>) {
        let value: Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let mut issues = Issues::default();
        let selector = read(&value, &mut issues);
        (selector, issues.paths())
    }

    const VIRTIO: DiskFacts<'static> = DiskFacts {
        size: 10_000_000_000,
        model: "",
        serial: "abc123",
        modalias: "virtio:d00000002v00001AF4",
        uuid: "",
        wwid: "",
        transport: "virtio",
        bus_path: "/pci0000:00/0000:00:05.0/virtio2",
        rotational: true,
        readonly: false,
        cdrom: false,
    };

    #[test]
    fn qualifiers_must_all_match() {
        let (s, issues) =
            parse("size: '>= 8GB'\nbusPath: /pci0000:00/*\nserial: abc*\ntype: hdd\n");
        assert!(issues.is_empty(), "{issues:?}");
        let s = s.expect("selector");
        assert_eq!(s.size, Some((SizeOp::Ge, 8_000_000_000)));
        assert!(s.matches(&VIRTIO));
        assert!(!s.matches(&DiskFacts {
            size: 7_000_000_000,
            ..VIRTIO
        }));
        assert!(!s.matches(&DiskFacts {
            serial: "xyz",
            ..VIRTIO
        }));
        assert!(!s.matches(&DiskFacts {
            rotational: false,
            ..VIRTIO
        }));
        // Never a read-only disk, a CD drive, or one on no bus.
        assert!(!s.matches(&DiskFacts {
            readonly: true,
            ..VIRTIO
        }));
        assert!(!s.matches(&DiskFacts {
            cdrom: true,
            ..VIRTIO
        }));
        assert!(!s.matches(&DiskFacts {
            transport: "",
            ..VIRTIO
        }));
        // An empty selector takes any real disk.
        let (any, _) = parse("{}");
        assert!(any.expect("selector").matches(&VIRTIO));
    }

    #[test]
    fn sizes_and_types() {
        for (text, op, bytes) in [
            ("4GB", SizeOp::Eq, 4_000_000_000),
            ("== 4GiB", SizeOp::Eq, 4 << 30),
            ("<=2TB", SizeOp::Le, 2_000_000_000_000),
            ("> 1 TiB", SizeOp::Gt, 1 << 40),
            ("<100M", SizeOp::Lt, 100_000_000),
        ] {
            assert_eq!(size(text), Ok((op, bytes)), "{text}");
        }
        let (s, _) = parse("size: 10000000000\n");
        assert!(s.expect("bytes").matches(&VIRTIO));
        let nvme = DiskFacts {
            transport: "nvme",
            rotational: false,
            ..VIRTIO
        };
        let sd = DiskFacts {
            transport: "mmc",
            rotational: false,
            ..VIRTIO
        };
        for (kind, picks) in [
            ("nvme", [false, true, false]),
            ("sd", [false, false, true]),
            ("ssd", [false, true, true]),
            ("hdd", [true, false, false]),
        ] {
            let (s, _) = parse(&format!("type: {kind}\n"));
            let s = s.expect("selector");
            assert_eq!(
                [s.matches(&VIRTIO), s.matches(&nvme), s.matches(&sd)],
                picks,
                "{kind}"
            );
        }
    }

    #[test]
    fn problems_are_named() {
        let (s, issues) = parse("size: lots\ntype: floppy\nname: sda\n");
        assert!(s.is_none());
        assert_eq!(
            issues,
            [
                "machine.install.diskSelector.name",
                "machine.install.diskSelector.size",
                "machine.install.diskSelector.type",
            ]
        );
        let (s, issues) = parse("modell: x\n");
        assert!(s.is_none());
        assert_eq!(issues, ["machine.install.diskSelector.modell"]);
    }
}
