//! Fixed-width integers at byte offsets of on-disk and on-wire structures
//! (GPT, superblocks, xfs inodes, pcap records).
//!
//! The plain readers panic when `b` is shorter than `at` plus the width:
//! their callers have checked the structure's length first, and reading
//! past it is a bug. [`array`] is the checked form, for bytes that come
//! from elsewhere (packets).

/// `N` bytes at `at`, or `None` when `b` is too short.
#[must_use]
pub fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn exact<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    match array(b, at) {
        Some(a) => a,
        None => panic!("reading {N} bytes at {at} of a {}-byte buffer", b.len()),
    }
}

/// Little-endian `u16` at `at`.
///
/// # Panics
/// `b` is too short.
#[must_use]
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(exact(b, at))
}

/// Little-endian `u32` at `at`.
///
/// # Panics
/// `b` is too short.
#[must_use]
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(exact(b, at))
}

/// Little-endian `u64` at `at`.
///
/// # Panics
/// `b` is too short.
#[must_use]
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(exact(b, at))
}

/// Big-endian `u16` at `at`.
///
/// # Panics
/// `b` is too short.
#[must_use]
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(exact(b, at))
}

/// Big-endian `u32` at `at`.
///
/// # Panics
/// `b` is too short.
#[must_use]
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(exact(b, at))
}

/// Big-endian `u64` at `at`.
///
/// # Panics
/// `b` is too short.
#[must_use]
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(exact(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_orders_and_bounds() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le16(&b, 1), 0x0302);
        assert_eq!(be16(&b, 1), 0x0203);
        assert_eq!(le32(&b, 0), 0x0403_0201);
        assert_eq!(be32(&b, 0), 0x0102_0304);
        assert_eq!(le64(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(be64(&b, 1), 0x0203_0405_0607_0809);
        assert_eq!(array::<2>(&b, 7), Some([8, 9]));
        assert_eq!(array::<2>(&b, 8), None);
        assert_eq!(array::<2>(&b, usize::MAX), None);
    }

    #[test]
    #[should_panic(expected = "reading 4 bytes at 6 of a 9-byte buffer")]
    fn short_reads_are_bugs() {
        let _ = le32(&[0u8; 9], 6);
    }
}
