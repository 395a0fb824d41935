//! `SystemInformations`: the machine's SMBIOS system information, read
//! from the firmware's table as upstream's hardware controller reads it.
//!
//! Background: the SMBIOS "System Information" structure (type 1) names
//! the machine's maker, model and serial number and carries its UUID;
//! `talosctl get systeminformation` is how an operator identifies a
//! machine. Linux exposes the raw table at `/sys/firmware/dmi/tables/DMI`
//! and its entry point beside it, which says the SMBIOS version (the UUID's
//! byte order depends on it).

use std::path::Path;

use api::talos::resource::definitions::hardware::SystemInformationSpec;

/// What SMBIOS type 1 says, as upstream's spec carries it, read from the
/// table under `sysfs` (`/sys`); `None` when the firmware has no table (no
/// SMBIOS, as on some virtual machines) or the table no type 1.
///
/// # Errors
/// The table exists but cannot be read.
pub fn read(sysfs: &Path) -> std::io::Result<Option<SystemInformationSpec>> {
    let tables = sysfs.join("firmware/dmi/tables");
    let table = match std::fs::read(tables.join("DMI")) {
        Ok(table) => table,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let entry = std::fs::read(tables.join("smbios_entry_point")).unwrap_or_default();
    Ok(parse(&entry, &table))
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

/// The last type 1 structure of `table`, if any; the version `entry` (the
/// entry point) announces decides the UUID's byte order.
fn parse(entry: &[u8], table: &[u8]) -> Option<SystemInformationSpec> {
    let mut found = None;
    let mut at = 0;
    while at + 4 <= table.len() {
        let kind = table[at];
        let length = usize::from(table[at + 1]);
        if length < 4 || at + length > table.len() {
            break;
        }
        let formatted = &table[at..at + length];
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
        let strings: Vec<&[u8]> = table[at + length..end].split(|b| *b == 0).collect();
        if kind == 1 {
            found = Some(system(version(entry), formatted, &strings));
        }
        if kind == 127 {
            break;
        }
        at = end + 2;
    }
    found
}

fn system(version: Option<(u8, u8)>, formatted: &[u8], strings: &[&[u8]]) -> SystemInformationSpec {
    let byte = |offset: usize| formatted.get(offset).copied().unwrap_or(0);
    let text = |offset: usize| {
        let index = usize::from(byte(offset));
        let value = index
            .checked_sub(1)
            .and_then(|i| strings.get(i))
            .map(|s| String::from_utf8_lossy(s).trim().to_owned())
            .unwrap_or_default();
        if value.eq_ignore_ascii_case("to be filled by o.e.m.") {
            String::new()
        } else {
            value
        }
    };
    let uuid = formatted
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
        manufacturer: text(0x04),
        product_name: text(0x05),
        version: text(0x06),
        serial_number: text(0x07),
        uuid,
        wake_up_type: wake_up_type(byte(0x18)).to_owned(),
        sku_number: text(0x19),
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

    #[test]
    fn a_table_without_type_one_or_cut_short_gives_none() {
        assert_eq!(parse(b"", &[127, 4, 0, 0, 0, 0]), None);
        assert_eq!(parse(b"", &[1, 27, 0]), None);
        assert_eq!(parse(b"", &[]), None);
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("no table"), None);
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
