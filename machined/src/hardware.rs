//! The hardware resources: `SystemInformations`, `Processors` and
//! `MemoryModules`, read from the firmware's SMBIOS table as upstream's
//! hardware controller reads it.
//!
//! Background: SMBIOS structures describe the machine as its firmware
//! sees it. Type 1 ("System Information") names the machine's maker, model
//! and serial number and carries its UUID; `talosctl get
//! systeminformation` is how an operator identifies a machine. Type 4
//! describes each processor socket and type 17 each memory slot (`talosctl
//! get cpus`, `get ram`). Linux exposes the raw table at
//! `/sys/firmware/dmi/tables/DMI` and its entry point beside it, which says
//! the SMBIOS version (the UUID's byte order depends on it).

use std::path::Path;

use api::talos::resource::definitions::hardware::{
    MemoryModuleSpec, ProcessorSpec, SystemInformationSpec,
};

/// The firmware's SMBIOS table and its entry point.
#[derive(Debug, Clone, Default)]
pub struct Smbios {
    entry: Vec<u8>,
    table: Vec<u8>,
}

impl Smbios {
    /// The table under `sysfs` (`/sys`); `None` when the firmware has none
    /// (no SMBIOS, as on some virtual machines and boards).
    ///
    /// # Errors
    /// The table exists but cannot be read.
    pub fn read(sysfs: &Path) -> std::io::Result<Option<Smbios>> {
        let tables = sysfs.join("firmware/dmi/tables");
        let table = match std::fs::read(tables.join("DMI")) {
            Ok(table) => table,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let entry = std::fs::read(tables.join("smbios_entry_point")).unwrap_or_default();
        Ok(Some(Smbios { entry, table }))
    }

    /// What the last type 1 structure says, as upstream's spec carries it;
    /// `None` without one.
    #[must_use]
    pub fn system_information(&self) -> Option<SystemInformationSpec> {
        parse(&self.entry, &self.table)
    }

    /// One processor socket per type 4 structure, by id: the socket's name
    /// with dashes for spaces (`CPU-0`), as upstream. A socket the firmware
    /// reports empty gets an empty spec, as upstream.
    #[must_use]
    pub fn processors(&self) -> Vec<(String, ProcessorSpec)> {
        by_id(
            structures(&self.table).iter().filter(|s| s.kind == 4),
            "processor",
            processor,
        )
    }

    /// One memory slot per type 17 structure, by id: the slot's device
    /// locator with dashes for spaces (`DIMM-0`), as upstream. An empty slot
    /// or one of unknown size gets an empty spec, as upstream. A table
    /// without memory devices gives one `UNKNOWN` module of the kernel's
    /// total, which `mem_total_mib` is asked for only then, as upstream.
    #[must_use]
    pub fn memory_modules(
        &self,
        mem_total_mib: impl FnOnce() -> Option<u64>,
    ) -> Vec<(String, MemoryModuleSpec)> {
        let modules = by_id(
            structures(&self.table).iter().filter(|s| s.kind == 17),
            "memory",
            memory_module,
        );
        if !modules.is_empty() {
            return modules;
        }
        vec![(
            "UNKNOWN".to_owned(),
            MemoryModuleSpec {
                size: mem_total_mib()
                    .map(|mib| u32::try_from(mib).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                manufacturer: "UNKNOWN".to_owned(),
                ..MemoryModuleSpec::default()
            },
        )]
    }
}

/// Specs keyed as upstream keys them: the structure's `name` string with
/// dashes for spaces; a later structure with the same id replaces the
/// earlier one, as upstream's. A structure without a name (which upstream
/// would key as "") is kept as `{fallback}-N`, N counting from 1 in table
/// order, so nothing the firmware lists is lost.
fn by_id<'a, T>(
    found: impl Iterator<Item = &'a Structure<'a>>,
    fallback: &str,
    convert: fn(&Structure<'_>) -> (String, T),
) -> Vec<(String, T)> {
    let mut out: Vec<(String, T)> = Vec::new();
    for (n, s) in found.enumerate() {
        let (name, spec) = convert(s);
        let id = if name.is_empty() {
            format!("{fallback}-{}", n + 1)
        } else {
            name.replace(' ', "-")
        };
        match out.iter_mut().find(|(existing, _)| *existing == id) {
            Some(slot) => slot.1 = spec,
            None => out.push((id, spec)),
        }
    }
    out
}

/// Type 4. Upstream fills the spec only when the socket is populated
/// (status bit 6). Where the one-byte core and thread counts say 0xFF
/// ("see the 16-bit count", SMBIOS 3.0), the 16-bit counts are read, which
/// upstream's parser does not (it would show 255).
fn processor(s: &Structure<'_>) -> (String, ProcessorSpec) {
    let socket = s.text(0x04);
    let status = s.byte(0x18);
    if status & 0x40 == 0 {
        return (socket, ProcessorSpec::default());
    }
    let count = |byte: usize, word: usize| match s.byte(byte) {
        0xFF => s.word(word).map_or(0xFF, u32::from),
        n => u32::from(n),
    };
    let spec = ProcessorSpec {
        socket: socket.clone(),
        manufacturer: s.text(0x07),
        product_name: s.text(0x10),
        max_speed: s.word(0x14).map_or(0, u32::from),
        boot_speed: s.word(0x16).map_or(0, u32::from),
        status: u32::from(status),
        serial_number: s.text(0x20),
        asset_tag: s.text(0x21),
        part_number: s.text(0x22),
        core_count: count(0x23, 0x2A),
        core_enabled: count(0x24, 0x2C),
        thread_count: count(0x25, 0x2E),
    };
    (socket, spec)
}

/// Type 17. Upstream fills the spec only for a slot of known size.
fn memory_module(s: &Structure<'_>) -> (String, MemoryModuleSpec) {
    let locator = s.text(0x10);
    let raw = s.word(0x0C).unwrap_or(0);
    let size = match raw {
        0 | 0xFFFF => return (locator, MemoryModuleSpec::default()),
        // The size is in the extended field (MiB, 31 bits). Upstream's
        // parser keeps only its low 16 bits, so 64 GiB and more wrap there.
        0x7FFF => s.dword(0x1C).map_or(0, |e| e & 0x7FFF_FFFF),
        // Bit 15 set: KiB, not MiB (small modules), rounded up so a filled
        // slot never reads as empty. Upstream reads the word as MiB
        // regardless.
        n if n & 0x8000 != 0 => u32::from(n & 0x7FFF).div_ceil(1024),
        n => u32::from(n),
    };
    let spec = MemoryModuleSpec {
        size,
        device_locator: locator.clone(),
        bank_locator: s.text(0x11),
        speed: s.word(0x15).map_or(0, u32::from),
        manufacturer: s.text(0x17),
        serial_number: s.text(0x18),
        asset_tag: s.text(0x19),
        product_name: s.text(0x1A),
    };
    (locator, spec)
}

/// The SMBIOS version an entry point announces (`_SM3_` or `_SM_`);
/// none for another or a missing one.
fn version(entry: &[u8]) -> Option<(u8, u8)> {
    if entry.starts_with(b"_SM3_") && entry.len() > 8 {
        Some((entry[7], entry[8]))
    } else if entry.starts_with(b"_SM_") && entry.len() > 7 {
        Some((entry[6], entry[7]))
    } else {
        None
    }
}

/// One SMBIOS structure: its type, its formatted area (header included,
/// so offsets are the specification's) and its strings.
struct Structure<'a> {
    kind: u8,
    formatted: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, offset: usize) -> u8 {
        self.formatted.get(offset).copied().unwrap_or(0)
    }

    /// A little-endian word; `None` past the structure's end (an older
    /// SMBIOS version's shorter structure).
    fn word(&self, offset: usize) -> Option<u16> {
        let b = self.formatted.get(offset..offset + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn dword(&self, offset: usize) -> Option<u32> {
        let b = self.formatted.get(offset..offset + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The string a byte at `offset` names (1-based; 0 is none), trimmed;
    /// "To Be Filled By O.E.M." reads as empty, as upstream.
    fn text(&self, offset: usize) -> String {
        let value = usize::from(self.byte(offset))
            .checked_sub(1)
            .and_then(|i| self.strings.get(i))
            .map(|s| String::from_utf8_lossy(s).trim().to_owned())
            .unwrap_or_default();
        if value.eq_ignore_ascii_case("to be filled by o.e.m.") {
            String::new()
        } else {
            value
        }
    }
}

/// The structures of `table` in order, up to the end marker (type 127) or
/// the first malformed one.
fn structures(table: &[u8]) -> Vec<Structure<'_>> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + 4 <= table.len() {
        let kind = table[at];
        let length = usize::from(table[at + 1]);
        if length < 4 || at + length > table.len() {
            break;
        }
        // The strings follow, each NUL-terminated, the set ended by a
        // second NUL.
        let mut end = at + length;
        loop {
            // A table cut short ends the strings where it ends.
            if end + 1 >= table.len() {
                end = table.len();
                break;
            }
            if table[end] == 0 && table[end + 1] == 0 {
                break;
            }
            end += 1;
        }
        if kind == 127 {
            break;
        }
        found.push(Structure {
            kind,
            formatted: &table[at..at + length],
            strings: table[at + length..end].split(|b| *b == 0).collect(),
        });
        at = end + 2;
    }
    found
}

/// The last type 1 structure of `table`, if any; the version `entry` (the
/// entry point) announces decides the UUID's byte order.
fn parse(entry: &[u8], table: &[u8]) -> Option<SystemInformationSpec> {
    structures(table)
        .iter()
        .rfind(|s| s.kind == 1)
        .map(|s| system(version(entry), s))
}

fn system(version: Option<(u8, u8)>, s: &Structure<'_>) -> SystemInformationSpec {
    let uuid = s
        .formatted
        .get(8..24)
        .and_then(|raw| <[u8; 16]>::try_from(raw).ok())
        .map(|b| {
            // From 2.6 the first three fields are little-endian, as
            // dmidecode and the kernel read them (a GPT GUID's order); a
            // version not announced is taken to be a current one.
            if version.is_none_or(|v| v >= (2, 6)) {
                udevd::probe::format_guid(&b)
            } else {
                udevd::probe::format_uuid(&b)
            }
        })
        .unwrap_or_default();
    SystemInformationSpec {
        manufacturer: s.text(0x04),
        product_name: s.text(0x05),
        version: s.text(0x06),
        serial_number: s.text(0x07),
        uuid,
        wake_up_type: wake_up_type(s.byte(0x18)).to_owned(),
        sku_number: s.text(0x19),
    }
}

fn wake_up_type(n: u8) -> &'static str {
    match n {
        0 => "Reserved",
        1 => "Other",
        2 => "Unknown",
        3 => "APM Timer",
        4 => "Modem Ring",
        5 => "LAN Remote",
        6 => "Power Switch",
        7 => "PCI PME#",
        8 => "AC Power Restored",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type 1 structure as QEMU writes it, then a type 127 end marker.
    fn table() -> Vec<u8> {
        let mut t = vec![1u8, 27, 0x00, 0x01, 1, 2, 3, 0];
        t.extend_from_slice(&[
            0x04, 0x33, 0x2c, 0xd4, 0x2d, 0x5d, 0xf2, 0x48, 0x98, 0xcf, 0x7c, 0xf6, 0x00, 0xc8,
            0xe8, 0x8d,
        ]);
        t.extend_from_slice(&[6, 4, 0]);
        t.extend_from_slice(
            b"QEMU\0Standard PC (Q35 + ICH9, 2009)\0pc-q35-9.1\0To Be Filled By O.E.M.\0\0",
        );
        t.extend_from_slice(&[127, 4, 0x01, 0x00, 0, 0]);
        t
    }

    #[test]
    fn type_one_reads_as_upstream_prints_it() {
        let info = parse(b"_SM3_\x00\x18\x03\x00", &table()).expect("type 1");
        assert_eq!(
            info,
            SystemInformationSpec {
                manufacturer: "QEMU".to_owned(),
                product_name: "Standard PC (Q35 + ICH9, 2009)".to_owned(),
                version: "pc-q35-9.1".to_owned(),
                serial_number: String::new(),
                uuid: "d42c3304-5d2d-48f2-98cf-7cf600c8e88d".to_owned(),
                wake_up_type: "Power Switch".to_owned(),
                // "To Be Filled By O.E.M." means nothing.
                sku_number: String::new(),
            }
        );
        // Before 2.6 the UUID's bytes are taken as they are.
        let old = parse(b"_SM_\x00\x00\x02\x05", &table()).expect("type 1");
        assert_eq!(old.uuid, "04332cd4-2d5d-f248-98cf-7cf600c8e88d");
    }

    /// A type 4 structure laid out as SMBIOS 3.0 (and QEMU) writes it:
    /// strings "CPU 0"-style socket, maker and version, `status` and the
    /// one-byte counts, then the 16-bit counts.
    fn type4(strings: &[&str], status: u8, counts: [u8; 3], counts2: [u16; 3]) -> Vec<u8> {
        let mut t = vec![4u8, 0x30, 0x00, 0x04];
        t.extend_from_slice(&[1, 3, 0xFE, 2]); // socket, type, family, maker
        t.extend_from_slice(&[0; 8]); // processor id
        t.extend_from_slice(&[3, 0]); // version, voltage
        t.extend_from_slice(&0u16.to_le_bytes()); // external clock
        t.extend_from_slice(&2000u16.to_le_bytes()); // max speed
        t.extend_from_slice(&1800u16.to_le_bytes()); // current speed
        t.extend_from_slice(&[status, 1]); // status, upgrade
        t.extend_from_slice(&[0xFF; 6]); // cache handles
        t.extend_from_slice(&[0, 0, 4]); // serial, asset tag, part number
        t.extend_from_slice(&counts);
        t.extend_from_slice(&2u16.to_le_bytes()); // characteristics
        t.extend_from_slice(&0xFEu16.to_le_bytes()); // family 2
        for c in counts2 {
            t.extend_from_slice(&c.to_le_bytes());
        }
        assert_eq!(t.len(), 0x30);
        for s in strings {
            t.extend_from_slice(s.as_bytes());
            t.push(0);
        }
        t.push(0);
        t
    }

    /// A type 17 structure (SMBIOS 3.2 length): `size` at 0x0C, the
    /// extended size at 0x1C, speed 3200 MT/s.
    fn type17(strings: &[&str], size: u16, extended: u32) -> Vec<u8> {
        let mut t = vec![17u8, 0x28, 0x00, 0x11];
        t.extend_from_slice(&0x1000u16.to_le_bytes()); // array handle
        t.extend_from_slice(&0xFFFEu16.to_le_bytes()); // error handle
        t.extend_from_slice(&64u16.to_le_bytes()); // total width
        t.extend_from_slice(&64u16.to_le_bytes()); // data width
        t.extend_from_slice(&size.to_le_bytes());
        t.extend_from_slice(&[0x09, 0, 1, 2, 0x1A]); // form, set, locators, type
        t.extend_from_slice(&0x80u16.to_le_bytes()); // type detail
        t.extend_from_slice(&3200u16.to_le_bytes()); // speed
        t.extend_from_slice(&[3, 4, 0, 5, 0]); // maker, serial, asset, part, attributes
        t.extend_from_slice(&extended.to_le_bytes());
        t.extend_from_slice(&3200u16.to_le_bytes()); // configured speed
        t.extend_from_slice(&[0; 6]); // voltages
        assert_eq!(t.len(), 0x28);
        for s in strings {
            t.extend_from_slice(s.as_bytes());
            t.push(0);
        }
        t.push(0);
        t
    }

    /// [`table`]'s type 1 structure without the end marker.
    fn type1() -> Vec<u8> {
        let t = table();
        t[..t.len() - 6].to_vec()
    }

    fn smbios(parts: &[Vec<u8>]) -> Smbios {
        let mut table: Vec<u8> = parts.concat();
        table.extend_from_slice(&[127, 4, 0xFF, 0xFE, 0, 0]);
        Smbios {
            entry: b"_SM3_\x00\x18\x03\x00".to_vec(),
            table,
        }
    }

    #[test]
    fn processors_read_as_upstream_shows_them() {
        let table = smbios(&[
            type1(),
            type4(
                &["CPU 0", "QEMU", "pc-q35-9.1", "P-1"],
                0x41,
                [4, 4, 8],
                [0; 3],
            ),
            // A socket the firmware reports empty: listed, with nothing in it.
            type4(
                &["CPU 1", "QEMU", "pc-q35-9.1", "P-1"],
                0x00,
                [4, 4, 8],
                [0; 3],
            ),
            // More than 254 cores: the one-byte counts say "see the 16-bit ones".
            type4(
                &["CPU 2", "Big", "Many", "P-2"],
                0x41,
                [0xFF; 3],
                [288, 280, 576],
            ),
            // No name: kept under a name of its own.
            type4(&["", "QEMU", "pc", "P"], 0x41, [1, 1, 1], [0; 3]),
        ]);
        let cpus = table.processors();
        let ids: Vec<&str> = cpus.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["CPU-0", "CPU-1", "CPU-2", "processor-4"]);
        assert_eq!(
            cpus[0].1,
            ProcessorSpec {
                socket: "CPU 0".to_owned(),
                manufacturer: "QEMU".to_owned(),
                product_name: "pc-q35-9.1".to_owned(),
                max_speed: 2000,
                boot_speed: 1800,
                status: 0x41,
                serial_number: String::new(),
                asset_tag: String::new(),
                part_number: "P-1".to_owned(),
                core_count: 4,
                core_enabled: 4,
                thread_count: 8,
            }
        );
        assert_eq!(cpus[1].1, ProcessorSpec::default());
        assert_eq!(
            (
                cpus[2].1.core_count,
                cpus[2].1.core_enabled,
                cpus[2].1.thread_count
            ),
            (288, 280, 576)
        );
        // The same socket named twice: the later one, once, as upstream.
        let twice = smbios(&[
            type4(&["CPU 0", "First", "v", "p"], 0x41, [1, 1, 1], [0; 3]),
            type4(&["CPU 0", "Second", "v", "p"], 0x41, [2, 2, 2], [0; 3]),
        ]);
        let cpus = twice.processors();
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0].1.manufacturer, "Second");
        // An SMBIOS 2.x structure without the count bytes reads them as 0.
        let mut short = type4(&["CPU 0", "Old", "v", "p"], 0x41, [9, 9, 9], [0; 3]);
        short.drain(0x23..0x30);
        short[1] = 0x23;
        let cpus = smbios(&[short]).processors();
        assert_eq!(cpus[0].1.manufacturer, "Old");
        assert_eq!(cpus[0].1.core_count, 0);
    }

    #[test]
    fn memory_modules_read_as_upstream_shows_them() {
        let table = smbios(&[
            type1(),
            type17(&["DIMM 0", "BANK 0", "Acme", "SN1", "PN-1"], 1024, 0),
            // Empty slot: listed, with nothing in it (its maker, serial and
            // part strings are absent).
            type17(&["DIMM 1", "BANK 1"], 0, 0),
            // 128 GiB: the size is in the extended field.
            type17(
                &["DIMM 2", "BANK 2", "Acme", "SN3", "PN-3"],
                0x7FFF,
                131_072,
            ),
            // Bit 15: KiB (16384 KiB).
            type17(
                &["DIMM 3", "BANK 3", "Acme", "SN4", "PN-4"],
                0x8000 | 0x4000,
                0,
            ),
            // 512 KiB: rounded up to 1 MiB, not shown as an empty slot.
            type17(
                &["DIMM 4", "BANK 4", "Acme", "SN5", "PN-5"],
                0x8000 | 512,
                0,
            ),
        ]);
        let ram = table.memory_modules(|| panic!("the total is not needed"));
        let ids: Vec<&str> = ram.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["DIMM-0", "DIMM-1", "DIMM-2", "DIMM-3", "DIMM-4"]);
        assert_eq!(
            ram[0].1,
            MemoryModuleSpec {
                size: 1024,
                device_locator: "DIMM 0".to_owned(),
                bank_locator: "BANK 0".to_owned(),
                speed: 3200,
                manufacturer: "Acme".to_owned(),
                serial_number: "SN1".to_owned(),
                asset_tag: String::new(),
                product_name: "PN-1".to_owned(),
            }
        );
        assert_eq!(ram[1].1, MemoryModuleSpec::default());
        assert_eq!(ram[2].1.size, 131_072);
        assert_eq!(ram[3].1.size, 16);
        assert_eq!(ram[4].1.size, 1);
        // No memory devices in the table: the kernel's total, as upstream.
        let none = smbios(&[type1()]).memory_modules(|| Some(2048));
        assert_eq!(
            none,
            [(
                "UNKNOWN".to_owned(),
                MemoryModuleSpec {
                    size: 2048,
                    manufacturer: "UNKNOWN".to_owned(),
                    ..MemoryModuleSpec::default()
                }
            )]
        );
    }

    #[test]
    fn a_table_without_type_one_or_cut_short_gives_none() {
        assert_eq!(parse(b"", &[127, 4, 0, 0, 0, 0]), None);
        assert_eq!(parse(b"", &[1, 27, 0]), None);
        assert_eq!(parse(b"", &[]), None);
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Smbios::read(dir.path()).expect("no table").is_none());
        // Cut short or malformed: no panic, and nothing made up.
        let whole = table();
        for end in 0..whole.len() {
            let _ = parse(b"", &whole[..end]);
        }
        // A structure cut off in its UUID: the strings it names are gone too.
        let cut = parse(b"", &whole[..20]);
        assert_eq!(cut, None);
        // Strings without their final terminator still read.
        let mut open_ended = whole[..whole.len() - 7].to_vec();
        open_ended.truncate(open_ended.len() - 1);
        let info = parse(b"", &open_ended).expect("type 1");
        assert_eq!(info.manufacturer, "QEMU");
        assert_eq!(info.version, "pc-q35-9.1");
        // No entry point: the UUID is read as a current SMBIOS writes it.
        assert_eq!(info.uuid, "d42c3304-5d2d-48f2-98cf-7cf600c8e88d");
    }
}
