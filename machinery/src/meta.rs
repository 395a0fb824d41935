//! The META partition's key/value store, in upstream Talos's "ADV" format
//! (siderolabs/go-adv `adv/talos`), so that a disk written by upstream
//! tools and one written by us read the same.
//!
//! # Format
//!
//! At offset 0 of the partition, one block of [`BLOCK_SIZE`] bytes written
//! twice (copy 1 at 0, copy 2 at [`BLOCK_SIZE`]). All integers big-endian:
//!
//! ```text
//! 0                 u32        MAGIC1
//! 4                 u32 tag, u32 size, size bytes of value   (repeated)
//!                   u32 0      end of the entries (if there is room)
//! BLOCK_SIZE - 36   [u8; 32]   SHA-256 of the block with these 32 bytes zero
//! BLOCK_SIZE - 4    u32        MAGIC2
//! ```
//!
//! A reader takes copy 1 if it is valid, else copy 2: the second copy is
//! what survives a crash in the middle of rewriting the first (see
//! [`Adv::write_to`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};

/// The size of one copy of the block.
pub const BLOCK_SIZE: usize = 256 * 1024;

/// The size of both copies: what [`read_from`] reads and
/// [`Adv::write_to`] writes at the start of the partition.
pub const PARTITION_DATA_SIZE: usize = 2 * BLOCK_SIZE;

/// The first four bytes of a block.
pub const MAGIC1: u32 = 0x5a4b_3c2d;

/// The last four bytes of a block.
pub const MAGIC2: u32 = 0xa5b4_c3d2;

/// Where the entries start: right after [`MAGIC1`].
const DATA_OFFSET: usize = 4;

/// Where the SHA-256 starts: 32 bytes of it, then [`MAGIC2`].
const CHECKSUM_OFFSET: usize = BLOCK_SIZE - 36;

/// Where [`MAGIC2`] starts.
const MAGIC2_OFFSET: usize = BLOCK_SIZE - 4;

/// Room for the entries (headers and values): the block less the magics
/// and the checksum. Upstream's `DataLength`.
pub const DATA_LENGTH: usize = CHECKSUM_OFFSET - DATA_OFFSET;

/// An entry's header: tag and size, one `u32` each.
const ENTRY_HEADER: usize = 8;

/// The tags upstream Talos assigns. The on-disk field is a `u32`, but
/// upstream's tags are `uint8` (for syslinux compatibility), and so are ours.
pub mod tag {
    /// Ends the entries; never holds a value.
    pub const END: u8 = 0;
    /// Reserved by upstream.
    pub const RESERVED1: u8 = 1;
    /// Reserved by upstream.
    pub const RESERVED2: u8 = 2;
    /// Reserved by upstream.
    pub const RESERVED3: u8 = 3;
    /// Reserved by upstream.
    pub const RESERVED4: u8 = 4;
    /// Reserved by upstream.
    pub const RESERVED5: u8 = 5;
    /// The upgrade in progress (what to roll back to).
    pub const UPGRADE: u8 = 6;
    /// The image reference of a staged upgrade.
    pub const STAGED_UPGRADE_IMAGE_REF: u8 = 7;
    /// The install options of a staged upgrade.
    pub const STAGED_UPGRADE_INSTALL_OPTIONS: u8 = 8;
    /// How the STATE partition is encrypted.
    pub const STATE_ENCRYPTION_CONFIG: u8 = 9;
    /// The network configuration a metal platform provides.
    pub const METAL_NETWORK_PLATFORM_CONFIG: u8 = 10;
    /// The code of the machine config download URL.
    pub const DOWNLOAD_URL_CODE: u8 = 11;
    /// Free for the user.
    pub const USER_RESERVED1: u8 = 12;
    /// Free for the user.
    pub const USER_RESERVED2: u8 = 13;
    /// Free for the user.
    pub const USER_RESERVED3: u8 = 14;
    /// A machine UUID to use instead of the SMBIOS one.
    pub const UUID_OVERRIDE: u8 = 15;
    /// A token unique to this machine.
    pub const UNIQUE_MACHINE_TOKEN: u8 = 16;
    /// The bootloader the disk image was built with.
    pub const DISK_IMAGE_BOOTLOADER: u8 = 17;
}

/// Which of the two copies a read used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvCopy {
    /// The copy at offset 0.
    First,
    /// The copy at offset [`BLOCK_SIZE`]: the first was bad.
    Second,
}

impl AdvCopy {
    /// The copy's byte offset in the partition.
    #[must_use]
    pub fn offset(self) -> usize {
        match self {
            AdvCopy::First => 0,
            AdvCopy::Second => BLOCK_SIZE,
        }
    }
}

impl fmt::Display for AdvCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdvCopy::First => f.write_str("copy 1"),
            AdvCopy::Second => f.write_str("copy 2"),
        }
    }
}

/// What went wrong with META.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Tag 0 marks the end of the entries, so it cannot hold a value.
    #[error("META: tag 0 marks the end of the entries and cannot hold a value")]
    ReservedTag,
    /// A value would not fit in the block.
    #[error(
        "META: a {size}-byte value for tag {tag} does not fit: the entries would take {needed} bytes of the {available} available"
    )]
    TooBig {
        /// The tag being set.
        tag: u8,
        /// The value's size.
        size: usize,
        /// What all entries (8-byte headers and values) would take.
        needed: usize,
        /// [`DATA_LENGTH`].
        available: usize,
    },
    /// A block is not [`BLOCK_SIZE`] bytes.
    #[error("META block: {found} bytes, expected {expected}")]
    Length {
        /// Its length.
        found: usize,
        /// [`BLOCK_SIZE`].
        expected: usize,
    },
    /// The partition data is shorter than the two copies.
    #[error(
        "META partition data: {found} bytes, shorter than the {needed} bytes of its two copies"
    )]
    Short {
        /// Its length.
        found: usize,
        /// [`PARTITION_DATA_SIZE`].
        needed: usize,
    },
    /// A magic number is wrong: this is not an ADV block.
    #[error("META block: magic at offset {offset} is {found:#010x}, expected {expected:#010x}")]
    Magic {
        /// Where in the block.
        offset: usize,
        /// What is there.
        found: u32,
        /// [`MAGIC1`] or [`MAGIC2`].
        expected: u32,
    },
    /// The SHA-256 does not match the block.
    #[error("META block: checksum mismatch: stored {stored}, computed {computed}")]
    Checksum {
        /// The stored SHA-256, hex.
        stored: String,
        /// The SHA-256 of the block, hex.
        computed: String,
    },
    /// The checksum matches but the entries make no sense.
    #[error("META block: corrupt entry at offset {offset}: {reason}")]
    Corrupt {
        /// The entry's offset in the block.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Both copies are all zeroes: the partition was never written, and the
    /// caller may initialise it.
    #[error("META: blank (all zeroes), never initialised")]
    Blank,
    /// Neither copy is valid.
    #[error("META: no valid copy: copy 1: {first}; copy 2: {second}")]
    BothBad {
        /// Why copy 1 was rejected.
        first: Box<MetaError>,
        /// Why copy 2 was rejected.
        second: Box<MetaError>,
    },
    /// Reading or writing the device failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// The device or file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MetaError + use<> {
    let path = path.to_path_buf();
    move |source| MetaError::Io {
        operation,
        path,
        source,
    }
}

/// The key/value store: tag to value. Always fits in one block: [`Adv::set`]
/// refuses what would not, and a decoded block fits by construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adv {
    tags: BTreeMap<u8, Vec<u8>>,
}

impl Adv {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `tag`, if set.
    #[must_use]
    pub fn get(&self, tag: u8) -> Option<&[u8]> {
        self.tags.get(&tag).map(Vec::as_slice)
    }

    /// Sets `tag` to `value`, replacing any previous value.
    ///
    /// # Errors
    /// [`MetaError::ReservedTag`] for tag 0; [`MetaError::TooBig`] when the
    /// entries (8 bytes of header each, plus the values) would not fit in
    /// [`DATA_LENGTH`]. The store is unchanged on error.
    pub fn set(&mut self, tag: u8, value: impl Into<Vec<u8>>) -> Result<(), MetaError> {
        if tag == tag::END {
            return Err(MetaError::ReservedTag);
        }
        let value = value.into();
        let replaced = self
            .tags
            .get(&tag)
            .map_or(0, |old| ENTRY_HEADER + old.len());
        let needed = self.encoded_len() - replaced + ENTRY_HEADER + value.len();
        if needed > DATA_LENGTH {
            return Err(MetaError::TooBig {
                tag,
                size: value.len(),
                needed,
                available: DATA_LENGTH,
            });
        }
        self.tags.insert(tag, value);
        Ok(())
    }

    /// Removes `tag`; whether it was set.
    pub fn delete(&mut self, tag: u8) -> bool {
        self.tags.remove(&tag).is_some()
    }

    /// The tags and their values, in tag order.
    pub fn tags(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.tags
            .iter()
            .map(|(&tag, value)| (tag, value.as_slice()))
    }

    /// Whether no tag is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The bytes the entries take in the data area (headers and values).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.tags.values().map(|v| ENTRY_HEADER + v.len()).sum()
    }

    /// One block: exactly [`BLOCK_SIZE`] bytes. Entries are written in tag
    /// order, so the same store always gives the same bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_SIZE];
        block[..DATA_OFFSET].copy_from_slice(&MAGIC1.to_be_bytes());
        let mut at = DATA_OFFSET;
        // `set` and `decode_block` keep `encoded_len() <= DATA_LENGTH`, so
        // the entries end at or before CHECKSUM_OFFSET. The rest of the data
        // area stays zero, which reads as the END tag.
        for (&tag, value) in &self.tags {
            block[at..at + 4].copy_from_slice(&u32::from(tag).to_be_bytes());
            // Fits in u32: it is less than DATA_LENGTH.
            block[at + 4..at + 8].copy_from_slice(&(value.len() as u32).to_be_bytes());
            block[at + ENTRY_HEADER..at + ENTRY_HEADER + value.len()].copy_from_slice(value);
            at += ENTRY_HEADER + value.len();
        }
        block[MAGIC2_OFFSET..].copy_from_slice(&MAGIC2.to_be_bytes());
        // The checksum is computed with its own field zero (as it is now)
        // and the trailing magic in place.
        let sum = digest(&SHA256, &block);
        block[CHECKSUM_OFFSET..MAGIC2_OFFSET].copy_from_slice(sum.as_ref());
        block
    }

    /// Both copies, as written at the start of the partition:
    /// [`PARTITION_DATA_SIZE`] bytes.
    #[must_use]
    pub fn encode_partition(&self) -> Vec<u8> {
        let block = self.encode();
        let mut both = Vec::with_capacity(PARTITION_DATA_SIZE);
        both.extend_from_slice(&block);
        both.extend_from_slice(&block);
        both
    }

    /// Writes both copies at offset 0 of `path` (the META partition's
    /// device, or a file standing in for it), which must exist.
    ///
    /// Copy 1 is written and flushed to the device before copy 2 is
    /// touched, so a crash at any point leaves a valid copy: a crash while
    /// copy 1 is being written leaves copy 2 with the previous contents (and
    /// readers fall back to it); a crash while copy 2 is being written
    /// leaves copy 1 with the new contents (and readers take it first).
    /// Writing both before one flush would let the device reorder them and
    /// tear both.
    ///
    /// # Errors
    /// [`MetaError::Io`] naming the step and `path`.
    pub fn write_to(&self, path: &Path) -> Result<(), MetaError> {
        let block = self.encode();
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        file.write_all_at(&block, AdvCopy::First.offset() as u64)
            .map_err(io_err("writing META copy 1 to", path))?;
        file.sync_all()
            .map_err(io_err("syncing META copy 1 to", path))?;
        file.write_all_at(&block, AdvCopy::Second.offset() as u64)
            .map_err(io_err("writing META copy 2 to", path))?;
        file.sync_all()
            .map_err(io_err("syncing META copy 2 to", path))?;
        Ok(())
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Decodes one block.
///
/// # Errors
/// [`MetaError::Length`] unless `block` is [`BLOCK_SIZE`] bytes;
/// [`MetaError::Magic`] for either magic; [`MetaError::Checksum`];
/// [`MetaError::Corrupt`] for an entry that overruns the data area, a tag
/// above 255, or a tag that appears twice (upstream would keep the last;
/// a writer never repeats a tag, so a repeat means corruption).
pub fn decode_block(block: &[u8]) -> Result<Adv, MetaError> {
    if block.len() != BLOCK_SIZE {
        return Err(MetaError::Length {
            found: block.len(),
            expected: BLOCK_SIZE,
        });
    }
    for (offset, expected) in [(0, MAGIC1), (MAGIC2_OFFSET, MAGIC2)] {
        let found = be_u32(block, offset);
        if found != expected {
            return Err(MetaError::Magic {
                offset,
                found,
                expected,
            });
        }
    }
    let stored = &block[CHECKSUM_OFFSET..MAGIC2_OFFSET];
    let mut zeroed = block.to_vec();
    zeroed[CHECKSUM_OFFSET..MAGIC2_OFFSET].fill(0);
    let computed = digest(&SHA256, &zeroed);
    if computed.as_ref() != stored {
        return Err(MetaError::Checksum {
            stored: hex(stored),
            computed: hex(computed.as_ref()),
        });
    }

    let mut tags = BTreeMap::new();
    let mut at = DATA_OFFSET;
    // Fewer than 8 bytes left cannot hold an entry: upstream stops there
    // too (a full data area has no room for the END tag).
    while CHECKSUM_OFFSET - at >= ENTRY_HEADER {
        let raw_tag = be_u32(block, at);
        if raw_tag == u32::from(tag::END) {
            break;
        }
        let Ok(tag) = u8::try_from(raw_tag) else {
            return Err(MetaError::Corrupt {
                offset: at,
                reason: format!("tag {raw_tag} is out of range (tags are 1 to 255)"),
            });
        };
        let size = usize::try_from(be_u32(block, at + 4)).unwrap_or(usize::MAX);
        let value_at = at + ENTRY_HEADER;
        if size > CHECKSUM_OFFSET - value_at {
            return Err(MetaError::Corrupt {
                offset: at,
                reason: format!(
                    "the entry for tag {tag} with size {size} overruns the data area, which ends at offset {CHECKSUM_OFFSET}"
                ),
            });
        }
        if tags
            .insert(tag, block[value_at..value_at + size].to_vec())
            .is_some()
        {
            return Err(MetaError::Corrupt {
                offset: at,
                reason: format!("tag {tag} appears a second time"),
            });
        }
        at = value_at + size;
    }
    Ok(Adv { tags })
}

/// Decodes the start of the META partition (at least
/// [`PARTITION_DATA_SIZE`] bytes; the rest is ignored): copy 1 if it is
/// valid, else copy 2, and which one was used.
///
/// # Errors
/// [`MetaError::Short`]; [`MetaError::Blank`] when both copies are all
/// zeroes (a partition never written); [`MetaError::BothBad`] with both
/// reasons otherwise.
pub fn decode_partition(data: &[u8]) -> Result<(Adv, AdvCopy), MetaError> {
    if data.len() < PARTITION_DATA_SIZE {
        return Err(MetaError::Short {
            found: data.len(),
            needed: PARTITION_DATA_SIZE,
        });
    }
    let data = &data[..PARTITION_DATA_SIZE];
    if data.iter().all(|&b| b == 0) {
        return Err(MetaError::Blank);
    }
    let first = match decode_block(&data[..BLOCK_SIZE]) {
        Ok(adv) => return Ok((adv, AdvCopy::First)),
        Err(e) => e,
    };
    match decode_block(&data[BLOCK_SIZE..]) {
        Ok(adv) => Ok((adv, AdvCopy::Second)),
        Err(second) => Err(MetaError::BothBad {
            first: Box::new(first),
            second: Box::new(second),
        }),
    }
}

/// Reads and decodes the first [`PARTITION_DATA_SIZE`] bytes of `path` (the
/// META partition's device, or a file standing in for it).
///
/// # Errors
/// [`MetaError::Io`] naming `path` (including a device shorter than the
/// two copies); otherwise as [`decode_partition`], notably
/// [`MetaError::Blank`] for a partition never written.
pub fn read_from(path: &Path) -> Result<(Adv, AdvCopy), MetaError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut data = vec![0u8; PARTITION_DATA_SIZE];
    file.read_exact(&mut data)
        .map_err(io_err("reading the two META copies from", path))?;
    decode_partition(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Adv {
        let mut adv = Adv::new();
        adv.set(tag::UPGRADE, "A").expect("upgrade");
        adv.set(
            tag::STAGED_UPGRADE_IMAGE_REF,
            "ghcr.io/example/installer:v1",
        )
        .expect("image ref");
        adv.set(tag::UUID_OVERRIDE, vec![0u8, 1, 2, 255])
            .expect("uuid");
        adv.set(tag::USER_RESERVED1, "").expect("empty value");
        adv
    }

    /// Recomputes a hand-made block's checksum, so a test reaches the
    /// entry checks.
    fn seal(block: &mut [u8]) {
        block[CHECKSUM_OFFSET..MAGIC2_OFFSET].fill(0);
        let sum = digest(&SHA256, block);
        block[CHECKSUM_OFFSET..MAGIC2_OFFSET].copy_from_slice(sum.as_ref());
    }

    fn entry(block: &mut [u8], at: usize, tag: u32, size: u32, value: &[u8]) -> usize {
        block[at..at + 4].copy_from_slice(&tag.to_be_bytes());
        block[at + 4..at + 8].copy_from_slice(&size.to_be_bytes());
        block[at + 8..at + 8 + value.len()].copy_from_slice(value);
        at + 8 + value.len()
    }

    #[test]
    fn round_trip_with_several_tags() {
        let adv = sample();
        let block = adv.encode();
        assert_eq!(block.len(), BLOCK_SIZE);
        let back = decode_block(&block).expect("decode");
        assert_eq!(back, adv);
        assert_eq!(back.get(tag::UPGRADE), Some(&b"A"[..]));
        assert_eq!(back.get(tag::USER_RESERVED1), Some(&b""[..]));
        assert_eq!(back.get(tag::UNIQUE_MACHINE_TOKEN), None);
        let tags: Vec<u8> = back.tags().map(|(t, _)| t).collect();
        assert_eq!(
            tags,
            [
                tag::UPGRADE,
                tag::STAGED_UPGRADE_IMAGE_REF,
                tag::USER_RESERVED1,
                tag::UUID_OVERRIDE
            ]
        );

        let both = adv.encode_partition();
        assert_eq!(both.len(), PARTITION_DATA_SIZE);
        assert_eq!(&both[..BLOCK_SIZE], &both[BLOCK_SIZE..]);
        assert_eq!(
            decode_partition(&both).expect("partition"),
            (adv, AdvCopy::First)
        );
    }

    #[test]
    fn set_replaces_and_delete_removes() {
        let mut adv = sample();
        adv.set(tag::UPGRADE, "B").expect("replace");
        assert_eq!(adv.get(tag::UPGRADE), Some(&b"B"[..]));
        assert!(adv.delete(tag::UPGRADE));
        assert!(!adv.delete(tag::UPGRADE));
        assert_eq!(adv.get(tag::UPGRADE), None);
        assert_eq!(decode_block(&adv.encode()).expect("decode"), adv);
    }

    #[test]
    fn empty_adv_encodes_and_decodes() {
        let adv = Adv::new();
        assert!(adv.is_empty());
        let block = adv.encode();
        // Nothing but the magics and the checksum.
        assert!(block[DATA_OFFSET..CHECKSUM_OFFSET].iter().all(|&b| b == 0));
        let back = decode_block(&block).expect("decode");
        assert!(back.is_empty());
        assert_eq!(
            decode_partition(&adv.encode_partition()).expect("partition"),
            (Adv::new(), AdvCopy::First)
        );
    }

    #[test]
    fn golden_header_bytes() {
        let mut adv = Adv::new();
        adv.set(tag::UPGRADE, "A").expect("set");
        let block = adv.encode();
        assert_eq!(block[..4], [0x5a, 0x4b, 0x3c, 0x2d]);
        assert_eq!(
            block[4..13],
            [0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x01, 0x41]
        );
        // Then the END tag (zero) and zeroes up to the checksum.
        assert!(block[13..CHECKSUM_OFFSET].iter().all(|&b| b == 0));
        assert_eq!(block[BLOCK_SIZE - 4..], [0xa5, 0xb4, 0xc3, 0xd2]);
        // The stored checksum is the SHA-256 of the block with it zeroed.
        let mut zeroed = block.clone();
        zeroed[BLOCK_SIZE - 36..BLOCK_SIZE - 4].fill(0);
        assert_eq!(
            &block[BLOCK_SIZE - 36..BLOCK_SIZE - 4],
            digest(&SHA256, &zeroed).as_ref()
        );
    }

    #[test]
    fn the_checksum_covers_the_block() {
        let block = sample().encode();
        // A byte in the entries, one in the unused data area, one of the
        // checksum itself.
        for at in [10, 1000, CHECKSUM_OFFSET + 5] {
            let mut bad = block.clone();
            bad[at] ^= 0x01;
            let err = decode_block(&bad).expect_err("flipped byte");
            assert!(matches!(err, MetaError::Checksum { .. }), "at {at}: {err}");
            assert!(err.to_string().contains("checksum mismatch"), "{err}");
        }
    }

    #[test]
    fn bad_magics_and_length_are_named() {
        let block = sample().encode();
        let mut bad = block.clone();
        bad[0] = 0;
        let err = decode_block(&bad).expect_err("magic1");
        assert!(
            matches!(
                err,
                MetaError::Magic {
                    offset: 0,
                    found: 0x004b_3c2d,
                    expected: MAGIC1
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("0x5a4b3c2d"), "{err}");

        let mut bad = block.clone();
        bad[BLOCK_SIZE - 1] = 0;
        let err = decode_block(&bad).expect_err("magic2");
        assert!(
            matches!(
                err,
                MetaError::Magic {
                    offset: MAGIC2_OFFSET,
                    expected: MAGIC2,
                    ..
                }
            ),
            "{err}"
        );

        let err = decode_block(&block[..BLOCK_SIZE - 1]).expect_err("short");
        assert!(
            matches!(err, MetaError::Length { found, expected: BLOCK_SIZE } if found == BLOCK_SIZE - 1)
        );
    }

    #[test]
    fn an_overrunning_entry_is_corrupt() {
        let mut block = Adv::new().encode();
        entry(&mut block, DATA_OFFSET, 6, DATA_LENGTH as u32, b"");
        seal(&mut block);
        let err = decode_block(&block).expect_err("overrun");
        assert!(
            matches!(
                err,
                MetaError::Corrupt {
                    offset: DATA_OFFSET,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("overruns"), "{err}");

        // Exactly filling the data area is fine.
        let mut block = Adv::new().encode();
        let size = DATA_LENGTH - ENTRY_HEADER;
        entry(&mut block, DATA_OFFSET, 6, size as u32, &vec![7u8; size]);
        seal(&mut block);
        assert_eq!(
            decode_block(&block).expect("full").get(6).map(<[u8]>::len),
            Some(size)
        );
    }

    #[test]
    fn a_repeated_tag_is_corrupt() {
        let mut block = Adv::new().encode();
        let second = entry(&mut block, DATA_OFFSET, 6, 1, b"A");
        entry(&mut block, second, 6, 1, b"B");
        seal(&mut block);
        let err = decode_block(&block).expect_err("repeat");
        assert!(
            matches!(err, MetaError::Corrupt { offset, .. } if offset == second),
            "{err}"
        );
    }

    #[test]
    fn a_tag_above_255_is_corrupt() {
        let mut block = Adv::new().encode();
        entry(&mut block, DATA_OFFSET, 256, 0, b"");
        seal(&mut block);
        assert!(matches!(
            decode_block(&block),
            Err(MetaError::Corrupt {
                offset: DATA_OFFSET,
                ..
            })
        ));
    }

    #[test]
    fn falls_back_to_copy_two() {
        let adv = sample();
        let mut both = adv.encode_partition();
        both[20] ^= 0xff;
        assert_eq!(
            decode_partition(&both).expect("copy 2"),
            (adv.clone(), AdvCopy::Second)
        );

        // A crash early in rewriting copy 1 can leave it zeroed.
        let mut both = adv.encode_partition();
        both[..BLOCK_SIZE].fill(0);
        assert_eq!(
            decode_partition(&both).expect("copy 2"),
            (adv, AdvCopy::Second)
        );
    }

    #[test]
    fn both_copies_bad_names_both_reasons() {
        let mut both = sample().encode_partition();
        both[0] = 0;
        both[BLOCK_SIZE + 20] ^= 0xff;
        let err = decode_partition(&both).expect_err("both bad");
        let MetaError::BothBad { first, second } = &err else {
            panic!("expected BothBad, got {err}");
        };
        assert!(
            matches!(**first, MetaError::Magic { offset: 0, .. }),
            "{first}"
        );
        assert!(matches!(**second, MetaError::Checksum { .. }), "{second}");
        let text = err.to_string();
        assert!(text.contains("copy 1: META block: magic"), "{text}");
        assert!(
            text.contains("copy 2: META block: checksum mismatch"),
            "{text}"
        );
    }

    #[test]
    fn blank_and_short_partitions() {
        assert!(matches!(
            decode_partition(&vec![0u8; 1024 * 1024]),
            Err(MetaError::Blank)
        ));
        assert!(matches!(
            decode_partition(&vec![0u8; BLOCK_SIZE]),
            Err(MetaError::Short {
                found: BLOCK_SIZE,
                needed: PARTITION_DATA_SIZE
            })
        ));
        // Bytes after the two copies are ignored.
        let mut data = sample().encode_partition();
        data.extend_from_slice(&[0xff; 4096]);
        assert_eq!(decode_partition(&data).expect("decode").1, AdvCopy::First);
    }

    #[test]
    fn too_big_values_are_refused() {
        let mut adv = Adv::new();
        let err = adv
            .set(tag::UPGRADE, vec![0u8; DATA_LENGTH - ENTRY_HEADER + 1])
            .expect_err("one byte too many");
        assert!(
            matches!(err, MetaError::TooBig { tag: 6, needed, available: DATA_LENGTH, .. } if needed == DATA_LENGTH + 1),
            "{err}"
        );
        assert!(adv.is_empty(), "unchanged on error");

        // Exactly full is accepted and round-trips (no room for END).
        adv.set(tag::UPGRADE, vec![1u8; DATA_LENGTH - ENTRY_HEADER])
            .expect("exactly full");
        assert_eq!(adv.encoded_len(), DATA_LENGTH);
        assert_eq!(decode_block(&adv.encode()).expect("decode"), adv);
        // Then even an empty value does not fit: its header needs 8 bytes.
        assert!(matches!(
            adv.set(tag::STAGED_UPGRADE_IMAGE_REF, ""),
            Err(MetaError::TooBig { .. })
        ));
        // Replacing the value counts the old one as gone.
        adv.set(tag::UPGRADE, vec![2u8; DATA_LENGTH - ENTRY_HEADER])
            .expect("replace same size");
        adv.set(tag::UPGRADE, "small").expect("shrink");
        adv.set(tag::STAGED_UPGRADE_IMAGE_REF, "ref")
            .expect("room again");
    }

    #[test]
    fn tag_zero_is_refused() {
        let mut adv = Adv::new();
        assert!(matches!(
            adv.set(tag::END, "x"),
            Err(MetaError::ReservedTag)
        ));
        assert!(adv.is_empty());
    }

    #[test]
    fn write_to_and_read_from_a_file() {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        // The META partition is 1 MiB; never written, it reads as blank.
        file.as_file().set_len(1024 * 1024).expect("set_len");
        assert!(matches!(read_from(file.path()), Err(MetaError::Blank)));

        let adv = sample();
        adv.write_to(file.path()).expect("write");
        let (back, copy) = read_from(file.path()).expect("read");
        assert_eq!((back, copy), (adv.clone(), AdvCopy::First));
        let on_disk = std::fs::read(file.path()).expect("read back");
        assert_eq!(on_disk.len(), 1024 * 1024, "the partition did not grow");
        assert_eq!(on_disk[..PARTITION_DATA_SIZE], adv.encode_partition()[..]);
        assert!(on_disk[PARTITION_DATA_SIZE..].iter().all(|&b| b == 0));

        // Rewriting replaces the contents.
        let mut changed = adv;
        changed.delete(tag::UPGRADE);
        changed.write_to(file.path()).expect("rewrite");
        assert_eq!(read_from(file.path()).expect("read").0, changed);
    }

    #[test]
    fn io_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let err = read_from(&missing).expect_err("missing");
        assert!(matches!(err, MetaError::Io { .. }));
        assert!(err.to_string().contains("missing"), "{err}");
        let err = Adv::new().write_to(&missing).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");

        // Shorter than the two copies.
        let short = dir.path().join("short");
        std::fs::write(&short, vec![0u8; BLOCK_SIZE]).expect("write");
        let err = read_from(&short).expect_err("short");
        assert!(
            matches!(
                err,
                MetaError::Io {
                    operation: "reading the two META copies from",
                    ..
                }
            ),
            "{err}"
        );
    }
}
