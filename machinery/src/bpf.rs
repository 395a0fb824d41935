//! Classic BPF programs as `tcpdump -dd` prints them: one instruction a
//! line, `{ 0x28, 0, 0, 0x0000000c },`. This is how upstream's `talosctl
//! pcap --bpf-filter` takes a filter (the node compiles nothing), and how
//! the tests compile one.

/// One instruction: opcode, jump offsets if true and if false, and the
/// constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    /// The opcode.
    pub op: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// The constant.
    pub k: u32,
}

/// A line that is not an instruction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not `{ ... }`.
    #[error(
        "parsing BPF instruction {line:?}: expected {{ op, jt, jf, k }} as tcpdump -dd prints it"
    )]
    Shape {
        /// The line.
        line: String,
    },
    /// Not four fields.
    #[error("parsing BPF instruction {line:?}: expected 4 fields, got {count}")]
    Fields {
        /// The line.
        line: String,
        /// How many there were.
        count: usize,
    },
    /// A field that is not a number.
    #[error("parsing BPF instruction {line:?}: {field} {text:?} is not a number")]
    NotANumber {
        /// The line.
        line: String,
        /// `op`, `jt`, `jf` or `k`.
        field: &'static str,
        /// What it held.
        text: String,
    },
    /// A field out of its range.
    #[error("parsing BPF instruction {line:?}: {field} {value} is larger than {max}")]
    TooLarge {
        /// The line.
        line: String,
        /// `op`, `jt` or `jf`.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest it may be.
        max: u64,
    },
}

/// Parses a program in `tcpdump -dd` format; blank lines are skipped.
///
/// # Errors
/// A line that is not four numbers (decimal or `0x` hex) in braces, or a
/// number out of its field's range.
pub fn parse_tcpdump_dd(text: &str) -> Result<Vec<Instruction>, ParseError> {
    let mut program = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let inner = line
            .trim_end_matches(',')
            .trim()
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .ok_or_else(|| ParseError::Shape {
                line: line.to_owned(),
            })?;
        let fields: Vec<&str> = inner.split(',').map(str::trim).collect();
        let [op, jt, jf, k] = fields[..] else {
            return Err(ParseError::Fields {
                line: line.to_owned(),
                count: fields.len(),
            });
        };
        let number = |field: &'static str, text: &str, max: u64| -> Result<u64, ParseError> {
            let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            }
            .map_err(|_| ParseError::NotANumber {
                line: line.to_owned(),
                field,
                text: text.to_owned(),
            })?;
            if value > max {
                return Err(ParseError::TooLarge {
                    line: line.to_owned(),
                    field,
                    value,
                    max,
                });
            }
            Ok(value)
        };
        // Each value is checked against its field's maximum just above.
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        program.push(Instruction {
            op: u16::try_from(number("op", op, u64::from(u16::MAX))?).unwrap_or(u16::MAX),
            jt: u8::try_from(number("jt", jt, u64::from(u8::MAX))?).unwrap_or(u8::MAX),
            jf: u8::try_from(number("jf", jf, u64::from(u8::MAX))?).unwrap_or(u8::MAX),
            k: narrow(number("k", k, u64::from(u32::MAX))?),
        });
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_dd_output_parses() {
        let text =
            "{ 0x28, 0, 0, 0x0000000c },\n{ 0x15, 0, 7, 0x00000800 },\n\n{ 6, 0, 0, 262144 },\n";
        let p = parse_tcpdump_dd(text).expect("parse");
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[1],
            Instruction {
                op: 0x15,
                jt: 0,
                jf: 7,
                k: 0x800
            }
        );
        assert_eq!((p[2].op, p[2].k), (6, 0x40000));
        assert!(parse_tcpdump_dd("  \n").expect("empty").is_empty());
        assert_eq!(
            parse_tcpdump_dd("{ 0xffffffff, 0, 0, 0xffffffff },"),
            Err(ParseError::TooLarge {
                line: "{ 0xffffffff, 0, 0, 0xffffffff },".into(),
                field: "op",
                value: 0xffff_ffff,
                max: 0xffff
            })
        );
        for (text, message) in [
            ("{ 0x28, 0, 0 },", "expected 4 fields, got 3"),
            ("udp port 53", "as tcpdump -dd prints it"),
            ("{ 0x28, 300, 0, 0 },", "jt 300 is larger than 255"),
            ("{ 0x28, x, 0, 0 },", "jt \"x\" is not a number"),
            (
                "{ 0x28, 0, 0, 0x100000000 },",
                "k 4294967296 is larger than 4294967295",
            ),
        ] {
            let e = parse_tcpdump_dd(text).expect_err(text).to_string();
            assert!(e.contains(message), "{text}: {e}");
        }
    }
}
