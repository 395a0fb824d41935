//! The GUID partition table's on-disk structures, read and written in one
//! place: headers and entries, their CRC-32s, and GUID text forms.
//!
//! Reading a table means trusting bytes from a disk, so [`Header::parse`]
//! checks what every reader here relies on (signature, header size, the
//! header's own CRC, that it sits where it says, an entry array of a sane
//! size) and [`Header::check_entries`] the entries' CRC. Callers choose
//! where to read from (the primary at LBA 1, the backup at the last LBA,
//! 512- or 4096-byte sectors) and what to do with a damaged copy.

use std::fmt::Write as _;

use crate::endian::{le32, le64};

/// The first eight bytes of every GPT header.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";

/// The header bytes this format defines (the rest of its sector is zero).
pub const HEADER_SIZE: usize = 92;

/// Revision 1.0, the only one in use.
pub const REVISION: u32 = 0x0001_0000;

/// The largest entry array read (the usual 128 entries of 128 bytes are
/// 16 KiB); a header asking for more is refused rather than believed.
pub const MAX_ENTRY_BYTES: u64 = 1 << 20;

/// The bytes of an entry this format defines (larger entries are zero
/// beyond them).
pub const ENTRY_SIZE: usize = 128;

/// UTF-16 code units in an entry's name.
pub const NAME_UNITS: usize = 36;

/// Why a header or entry array cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptError {
    /// The sector does not start with [`SIGNATURE`].
    #[error("no GPT header at LBA {lba}")]
    NoHeader {
        /// Where it was looked for.
        lba: u64,
    },
    /// The header's size field is out of range.
    #[error("the header at LBA {lba} gives its size as {size} bytes")]
    HeaderSize {
        /// The header's LBA.
        lba: u64,
        /// The size it gives.
        size: u32,
    },
    /// The header's own CRC does not match.
    #[error("the header at LBA {lba} fails its CRC")]
    HeaderCrc {
        /// The header's LBA.
        lba: u64,
    },
    /// The header says it is somewhere else (a copy out of place).
    #[error("the header at LBA {lba} names LBA {names} as its own")]
    Misplaced {
        /// Where it was read.
        lba: u64,
        /// Where it says it is.
        names: u64,
    },
    /// The entry array's count or entry size cannot be.
    #[error("the header at LBA {lba} gives {count} entries of {size} bytes")]
    Entries {
        /// The header's LBA.
        lba: u64,
        /// Its entry count.
        count: u32,
        /// Its entry size.
        size: u32,
    },
    /// The entry array's CRC does not match the header's.
    #[error("the entries of the header at LBA {lba} fail their CRC")]
    EntriesCrc {
        /// The header's LBA.
        lba: u64,
    },
}

/// A GPT header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Where this copy is.
    pub my_lba: u64,
    /// Where the other copy is.
    pub alternate_lba: u64,
    /// The first LBA a partition may use.
    pub first_usable_lba: u64,
    /// The last LBA a partition may use.
    pub last_usable_lba: u64,
    /// The disk's GUID, in on-disk byte order.
    pub disk_guid: [u8; 16],
    /// Where this copy's entry array starts.
    pub entries_lba: u64,
    /// Entries in the array.
    pub entry_count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// The CRC-32 of the whole entry array.
    pub entries_crc: u32,
}

impl Header {
    /// Parses and checks the header in `sector`, read from `lba`: the
    /// signature, the header size (92 bytes to the sector's length), its
    /// CRC, that it names `lba` as its own, and an entry array of entries
    /// of at least 128 bytes, a multiple of 8, within [`MAX_ENTRY_BYTES`].
    ///
    /// # Errors
    /// [`GptError`] naming the first check that failed.
    pub fn parse(sector: &[u8], lba: u64) -> Result<Self, GptError> {
        if sector.len() < HEADER_SIZE || !sector.starts_with(SIGNATURE) {
            return Err(GptError::NoHeader { lba });
        }
        let size = le32(sector, 12);
        if !(HEADER_SIZE..=sector.len()).contains(&(size as usize)) {
            return Err(GptError::HeaderSize { lba, size });
        }
        if header_crc(sector, size as usize) != le32(sector, 16) {
            return Err(GptError::HeaderCrc { lba });
        }
        let names = le64(sector, 24);
        if names != lba {
            return Err(GptError::Misplaced { lba, names });
        }
        let (count, entry_size) = (le32(sector, 80), le32(sector, 84));
        if (entry_size as usize) < ENTRY_SIZE
            || !entry_size.is_multiple_of(8)
            || u64::from(count) * u64::from(entry_size) > MAX_ENTRY_BYTES
        {
            return Err(GptError::Entries {
                lba,
                count,
                size: entry_size,
            });
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&sector[56..72]);
        Ok(Self {
            my_lba: lba,
            alternate_lba: le64(sector, 32),
            first_usable_lba: le64(sector, 40),
            last_usable_lba: le64(sector, 48),
            disk_guid,
            entries_lba: le64(sector, 72),
            entry_count: count,
            entry_size,
            entries_crc: le32(sector, 88),
        })
    }

    /// The entry array's length in bytes (at most [`MAX_ENTRY_BYTES`] for a
    /// parsed header).
    #[must_use]
    pub fn entries_len(&self) -> usize {
        self.entry_count as usize * self.entry_size as usize
    }

    /// Checks `entries`, read from [`Header::entries_lba`], against the
    /// header's CRC.
    ///
    /// # Errors
    /// [`GptError::EntriesCrc`] when the length or the CRC differs.
    pub fn check_entries(&self, entries: &[u8]) -> Result<(), GptError> {
        if entries.len() != self.entries_len() || crc32(entries) != self.entries_crc {
            return Err(GptError::EntriesCrc { lba: self.my_lba });
        }
        Ok(())
    }

    /// The header's [`HEADER_SIZE`] bytes, revision 1.0, its CRC computed.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[..8].copy_from_slice(SIGNATURE);
        put(&mut h, 8, &REVISION.to_le_bytes());
        put(&mut h, 12, &(HEADER_SIZE as u32).to_le_bytes());
        // 16..20: the CRC, computed last with this field zero; 20..24
        // reserved.
        put(&mut h, 24, &self.my_lba.to_le_bytes());
        put(&mut h, 32, &self.alternate_lba.to_le_bytes());
        put(&mut h, 40, &self.first_usable_lba.to_le_bytes());
        put(&mut h, 48, &self.last_usable_lba.to_le_bytes());
        put(&mut h, 56, &self.disk_guid);
        put(&mut h, 72, &self.entries_lba.to_le_bytes());
        put(&mut h, 80, &self.entry_count.to_le_bytes());
        put(&mut h, 84, &self.entry_size.to_le_bytes());
        put(&mut h, 88, &self.entries_crc.to_le_bytes());
        let crc = crc32(&h);
        put(&mut h, 16, &crc.to_le_bytes());
        h
    }
}

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The partition type, in on-disk byte order.
    pub type_guid: [u8; 16],
    /// The partition's own GUID, in on-disk byte order.
    pub unique_guid: [u8; 16],
    /// Its first sector.
    pub first_lba: u64,
    /// Its last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// The name's UTF-16 code units, up to the first zero.
    pub name: Vec<u16>,
}

impl Entry {
    /// The entry in `e` (its first [`ENTRY_SIZE`] bytes), or `None` for an
    /// unused one (type all zero) or when `e` is shorter.
    #[must_use]
    pub fn parse(e: &[u8]) -> Option<Self> {
        let e = e.get(..ENTRY_SIZE)?;
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[..16]);
        if type_guid == [0u8; 16] {
            return None;
        }
        let mut unique_guid = [0u8; 16];
        unique_guid.copy_from_slice(&e[16..32]);
        let name = e[56..ENTRY_SIZE]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Some(Self {
            type_guid,
            unique_guid,
            first_lba: le64(e, 32),
            last_lba: le64(e, 40),
            attributes: le64(e, 48),
            name,
        })
    }

    /// The name, with malformed UTF-16 replaced.
    #[must_use]
    pub fn name_lossy(&self) -> String {
        char::decode_utf16(self.name.iter().copied())
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// The entry's [`ENTRY_SIZE`] bytes (a name longer than
    /// [`NAME_UNITS`] is cut).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; ENTRY_SIZE] {
        let mut e = [0u8; ENTRY_SIZE];
        put(&mut e, 0, &self.type_guid);
        put(&mut e, 16, &self.unique_guid);
        put(&mut e, 32, &self.first_lba.to_le_bytes());
        put(&mut e, 40, &self.last_lba.to_le_bytes());
        put(&mut e, 48, &self.attributes.to_le_bytes());
        for (k, unit) in self.name.iter().take(NAME_UNITS).enumerate() {
            put(&mut e, 56 + 2 * k, &unit.to_le_bytes());
        }
        e
    }
}

/// The used entries of an array of `entry_size`-byte entries, with their
/// 1-based slot numbers (the kernel's partition numbers).
pub fn entries(array: &[u8], entry_size: usize) -> impl Iterator<Item = (u32, Entry)> + '_ {
    array
        .chunks_exact(entry_size.max(ENTRY_SIZE))
        .enumerate()
        .filter_map(|(slot, e)| Some((u32::try_from(slot + 1).ok()?, Entry::parse(e)?)))
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

// === CRC-32 ===

const POLY: u32 = 0xEDB8_8320;

const TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// CRC-32 as GPT uses it (IEEE 802.3, reflected, initial value and final
/// xor `!0`, the same as zlib's), table driven: two checksums per table
/// do not call for a crate.
#[must_use]
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// The CRC of a header's first `size` bytes, taken with its CRC field
/// (16..20) zero, as the header stores it.
///
/// # Panics
/// `h` is shorter than `size`, or `size` than 20.
#[must_use]
pub fn header_crc(h: &[u8], size: usize) -> u32 {
    let mut copy = h[..size].to_vec();
    copy[16..20].fill(0);
    crc32(&copy)
}

// === GUIDs ===

/// On-disk position of each byte of a GUID's text order: the first three
/// fields are little-endian, the last two bytes in text order.
const MIXED: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

/// Parses a GUID's text form into on-disk byte order at compile time, for
/// constants (a malformed one fails the build).
///
/// # Panics
/// `text` is not 8-4-4-4-12 hex digits.
#[must_use]
pub const fn guid(text: &str) -> [u8; 16] {
    let Some(plain) = parse_uuid(text) else {
        panic!("a GUID is 8-4-4-4-12 hex digits");
    };
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = plain[MIXED[i]];
        i += 1;
    }
    out
}

/// Parses a GUID's text form into on-disk (mixed-endian) byte order.
#[must_use]
pub fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let plain = parse_uuid(text)?;
    Some(MIXED.map(|j| plain[j]))
}

/// Parses a UUID's text form (8-4-4-4-12 hex digits, either case) into its
/// bytes in text order.
#[must_use]
pub const fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    const fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = text.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < 36 {
        if i == 8 || i == 13 || i == 18 || i == 23 {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (nibble(b[i]), nibble(b[i + 1])) else {
            return None;
        };
        out[n] = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    Some(out)
}

/// A GUID in on-disk byte order as text, lowercase (as blkid and
/// `/dev/disk/by-partuuid` show it).
#[must_use]
pub fn format_guid(g: &[u8; 16]) -> String {
    format_uuid(&MIXED.map(|j| g[j]))
}

/// A UUID stored in text order (ext4, XFS) as text, lowercase.
#[must_use]
pub fn format_uuid(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

    #[test]
    fn crc32_check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn guid_text_forms() {
        const G: [u8; 16] = guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            &G[..4],
            &[0x28, 0x73, 0x2A, 0xC1],
            "first field little-endian"
        );
        assert_eq!(&G[8..], &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
        assert_eq!(parse_guid(ESP), Some(G));
        assert_eq!(format_guid(&G), ESP);
        let u = parse_uuid("11223344-5566-7788-99aa-bbccddeeff00").unwrap();
        assert_eq!(u[0], 0x11);
        assert_eq!(format_uuid(&u), "11223344-5566-7788-99aa-bbccddeeff00");
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_eq!(parse_uuid("112233445-566-7788-99aa-bbccddeeff00"), None);
        assert_eq!(parse_uuid("1122334g-5566-7788-99aa-bbccddeeff00"), None);
    }

    fn sample() -> (Header, Vec<u8>) {
        let mut array = vec![0u8; 128 * ENTRY_SIZE];
        let entry = Entry {
            type_guid: guid(ESP),
            unique_guid: [7; 16],
            first_lba: 2048,
            last_lba: 4095,
            attributes: 1 << 60,
            name: "EFI".encode_utf16().collect(),
        };
        array[ENTRY_SIZE..2 * ENTRY_SIZE].copy_from_slice(&entry.to_bytes());
        let header = Header {
            my_lba: 1,
            alternate_lba: 9999,
            first_usable_lba: 34,
            last_usable_lba: 9966,
            disk_guid: [9; 16],
            entries_lba: 2,
            entry_count: 128,
            entry_size: ENTRY_SIZE as u32,
            entries_crc: crc32(&array),
        };
        (header, array)
    }

    #[test]
    fn a_written_header_and_entries_read_back() {
        let (header, array) = sample();
        let mut sector = vec![0u8; 512];
        sector[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
        let parsed = Header::parse(&sector, 1).unwrap();
        assert_eq!(parsed, header);
        parsed.check_entries(&array).unwrap();
        let used: Vec<_> = entries(&array, parsed.entry_size as usize).collect();
        assert_eq!(used.len(), 1);
        let (slot, e) = &used[0];
        assert_eq!(*slot, 2, "slots count from one, unused ones too");
        assert_eq!(e.name_lossy(), "EFI");
        assert_eq!(
            (e.first_lba, e.last_lba, e.attributes),
            (2048, 4095, 1 << 60)
        );
        assert_eq!(Entry::parse(&e.to_bytes()).as_ref(), Some(e));
        assert_eq!(Entry::parse(&e.to_bytes()[..100]), None, "too short");
    }

    #[test]
    fn damaged_or_misplaced_headers_are_refused() {
        let (header, array) = sample();
        let mut sector = vec![0u8; 512];
        sector[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
        assert_eq!(
            Header::parse(&[0u8; 512], 1),
            Err(GptError::NoHeader { lba: 1 })
        );
        assert_eq!(
            Header::parse(&sector, 7),
            Err(GptError::Misplaced { lba: 7, names: 1 })
        );
        let mut flipped = sector.clone();
        flipped[60] ^= 1;
        assert_eq!(
            Header::parse(&flipped, 1),
            Err(GptError::HeaderCrc { lba: 1 })
        );
        let mut huge = header.clone();
        huge.entry_count = 1 << 20;
        let mut s = vec![0u8; 512];
        s[..HEADER_SIZE].copy_from_slice(&huge.to_bytes());
        assert!(matches!(
            Header::parse(&s, 1),
            Err(GptError::Entries {
                count: 1_048_576,
                ..
            })
        ));
        let mut short = sector.clone();
        short[12..16].copy_from_slice(&91u32.to_le_bytes());
        assert!(matches!(
            Header::parse(&short, 1),
            Err(GptError::HeaderSize { size: 91, .. })
        ));
        let mut bad = array.clone();
        bad[200] ^= 1;
        assert_eq!(
            header.check_entries(&bad),
            Err(GptError::EntriesCrc { lba: 1 })
        );
        assert!(header.check_entries(&array[..512]).is_err());
    }
}
