//! CRC-32 (IEEE 802.3, the polynomial GPT uses), table driven.
//!
//! Small enough to keep here rather than pull in a crate for two checksums
//! per disk.

const POLY: u32 = 0xEDB8_8320;

const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
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

/// The CRC-32 of `data` (reflected, initial value and final xor `!0`).
#[must_use]
pub fn ieee(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        assert_eq!(ieee(b""), 0);
        assert_eq!(ieee(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            ieee(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }
}
