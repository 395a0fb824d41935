//! Standard base64 (RFC 4648 §4: `A-Z a-z 0-9 + /`, `=` padding).
//!
//! The machine config carries certificates and keys as base64 of PEM, so a
//! codec is needed everywhere the config is read; this one is small enough
//! to own rather than depend on.
//!
//! Decoding matches Go's `base64.StdEncoding`, which wrote the configs we
//! read: padding is required, `\r` and `\n` anywhere are skipped, and the
//! unused low bits of the last symbol are not checked. The URL-safe alphabet
//! and unpadded input are rejected.

/// The 64 symbols, in value order.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why some text is not standard base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A byte outside the alphabet.
    #[error("invalid base64 byte 0x{byte:02x} at offset {offset}")]
    InvalidByte {
        /// Offset of the byte in the input.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// `=` where padding cannot be, or data after padding.
    #[error("misplaced base64 padding at offset {offset}")]
    InvalidPadding {
        /// Offset of the offending byte in the input.
        offset: usize,
    },
    /// The input does not end on a 4-symbol boundary.
    #[error("base64 input of {symbols} symbols is not a multiple of 4")]
    InvalidLength {
        /// Number of symbols (line breaks excluded).
        symbols: usize,
    },
}

/// Encodes `input` as padded standard base64.
#[must_use]
pub fn encode(input: impl AsRef<[u8]>) -> String {
    let input = input.as_ref();
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let group = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        out.push(symbol(group >> 18));
        out.push(symbol(group >> 12));
        out.push(if chunk.len() > 1 {
            symbol(group >> 6)
        } else {
            '='
        });
        out.push(if chunk.len() > 2 { symbol(group) } else { '=' });
    }
    out
}

/// Decodes padded standard base64, skipping line breaks.
pub fn decode(input: impl AsRef<[u8]>) -> Result<Vec<u8>, DecodeError> {
    let input = input.as_ref();
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut quad = [0u8; 4];
    let mut filled = 0usize;
    let mut padding = 0usize;
    let mut symbols = 0usize;

    for (offset, &byte) in input.iter().enumerate() {
        if byte == b'\r' || byte == b'\n' {
            continue;
        }
        symbols += 1;
        if byte == b'=' {
            // Padding may only fill the last one or two places of a group.
            if filled < 2 {
                return Err(DecodeError::InvalidPadding { offset });
            }
            padding += 1;
            quad[filled] = 0;
        } else {
            if padding > 0 {
                return Err(DecodeError::InvalidPadding { offset });
            }
            quad[filled] = value_of(byte).ok_or(DecodeError::InvalidByte { offset, byte })?;
        }
        filled += 1;

        if filled == 4 {
            let group = (u32::from(quad[0]) << 18)
                | (u32::from(quad[1]) << 12)
                | (u32::from(quad[2]) << 6)
                | u32::from(quad[3]);
            let bytes = [(group >> 16) as u8, (group >> 8) as u8, group as u8];
            out.extend_from_slice(&bytes[..3 - padding]);
            filled = 0;
        }
    }

    if filled != 0 {
        return Err(DecodeError::InvalidLength { symbols });
    }
    Ok(out)
}

/// The symbol for the low six bits of `bits`.
fn symbol(bits: u32) -> char {
    char::from(ALPHABET[(bits & 0x3f) as usize])
}

/// The six-bit value of an alphabet byte.
fn value_of(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 §10 test vectors.
    const VECTORS: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc4648_vectors_encode() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain), encoded, "encoding {plain:?}");
        }
    }

    #[test]
    fn rfc4648_vectors_decode() {
        for (plain, encoded) in VECTORS {
            assert_eq!(
                decode(encoded).expect("valid vector"),
                plain.as_bytes(),
                "decoding {encoded:?}"
            );
        }
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        for len in 0..all.len() {
            let data = &all[..len];
            assert_eq!(decode(encode(data)).expect("own output"), data);
        }
        assert!(encode(&all).contains('+'));
        assert!(encode(&all).contains('/'));
    }

    #[test]
    fn line_breaks_are_skipped() {
        assert_eq!(decode("Zm9v\nYmFy\r\n").expect("wrapped"), b"foobar");
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            decode("Zm9v!"),
            Err(DecodeError::InvalidByte {
                offset: 4,
                byte: b'!'
            })
        );
        assert_eq!(
            decode("Zm 9v"),
            Err(DecodeError::InvalidByte {
                offset: 2,
                byte: b' '
            })
        );
        // URL-safe alphabet.
        assert!(matches!(
            decode("a-_b"),
            Err(DecodeError::InvalidByte { offset: 1, .. })
        ));
        assert_eq!(
            decode("Zm9"),
            Err(DecodeError::InvalidLength { symbols: 3 })
        );
        assert_eq!(decode("Zg"), Err(DecodeError::InvalidLength { symbols: 2 }));
        assert_eq!(
            decode("Zm9vYg="),
            Err(DecodeError::InvalidLength { symbols: 7 })
        );
        assert_eq!(
            decode("Z==="),
            Err(DecodeError::InvalidPadding { offset: 1 })
        );
        assert_eq!(
            decode("===="),
            Err(DecodeError::InvalidPadding { offset: 0 })
        );
        assert_eq!(
            decode("Zg=a"),
            Err(DecodeError::InvalidPadding { offset: 3 })
        );
        assert_eq!(
            decode("Zg==Zg=="),
            Err(DecodeError::InvalidPadding { offset: 4 })
        );
    }

    #[test]
    fn errors_read_well() {
        let err = decode("Zm9v!").expect_err("garbage");
        assert_eq!(err.to_string(), "invalid base64 byte 0x21 at offset 4");
    }
}
