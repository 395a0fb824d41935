//! Sizes as people read them, in go-humanize's format: what upstream
//! prints (`talosctl` columns, the `pretty_size` of a disk).

/// go-humanize's `Bytes`: SI units (`kB`, `MB`, ...), one decimal below 10.
#[must_use]
pub fn bytes(size: u64) -> String {
    humanate(size, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB", "EB"])
}

/// go-humanize's `IBytes`: IEC units (`KiB`, `MiB`, ...).
#[must_use]
pub fn ibytes(size: u64) -> String {
    humanate(
        size,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
    )
}

/// go-humanize's `ParseBytes`: a number (decimals and thousands commas
/// allowed), then an optional unit, SI (`kB`, `MB`, `G`) or IEC (`KiB`,
/// `Mi`), any case, spaces between allowed. `None` for anything else.
#[must_use]
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(text.len());
    let number: f64 = text[..digits].replace(',', "").parse().ok()?;
    let unit = text[digits..].trim().to_ascii_lowercase();
    // `k`/`kb` are powers of 1000, `ki`/`kib` of 1024; so for m, g, t, p, e.
    let multiplier: u64 = if unit.is_empty() || unit == "b" {
        1
    } else {
        let (base, prefix) = match unit.strip_suffix("ib").or_else(|| unit.strip_suffix('i')) {
            Some(prefix) => (1024u64, prefix),
            None => (1000, unit.strip_suffix('b').unwrap_or(&unit)),
        };
        let exponent = ["k", "m", "g", "t", "p", "e"]
            .iter()
            .position(|p| *p == prefix)?;
        base.pow(u32::try_from(exponent).ok()? + 1)
    };
    let bytes = number * multiplier as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn humanate(size: u64, base: f64, units: &[&str]) -> String {
    if size < 10 {
        return format!("{size} B");
    }
    let value = size as f64;
    let exponent = (value.ln() / base.ln()).floor();
    let index = (exponent as usize).min(units.len() - 1);
    let scaled = (value / base.powi(index as i32) * 10.0 + 0.5).floor() / 10.0;
    if scaled < 10.0 {
        format!("{scaled:.1} {}", units[index])
    } else {
        format!("{scaled:.0} {}", units[index])
    }
}

/// Go's `time.Duration.String()` of `nanos` nanoseconds: `0s`, `500ns`,
/// `1.5µs`, `2.25ms`, `45s`, `1m5.5s`, `2h0m3s`, `-5s`.
#[must_use]
pub fn go_duration(nanos: i128) -> String {
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000_000_000;
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let body = if n < US {
        format!("{n}ns")
    } else if n < MS {
        format!("{}{}µs", n / US, decimals(n % US, 3))
    } else if n < S {
        format!("{}{}ms", n / MS, decimals(n % MS, 6))
    } else {
        let total = n / S;
        let fraction = decimals(n % S, 9);
        let (hours, minutes, secs) = (total / 3600, (total % 3600) / 60, total % 60);
        if hours > 0 {
            format!("{hours}h{minutes}m{secs}{fraction}s")
        } else if minutes > 0 {
            format!("{minutes}m{secs}{fraction}s")
        } else {
            format!("{secs}{fraction}s")
        }
    };
    format!("{sign}{body}")
}

/// `.ddd` of `value` written with `digits` digits, trailing zeros
/// dropped; empty for zero.
fn decimals(value: u128, digits: usize) -> String {
    let text = format!("{value:0digits$}");
    let text = text.trim_end_matches('0');
    if text.is_empty() {
        String::new()
    } else {
        format!(".{text}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn go_durations_to_the_nanosecond() {
        for (nanos, text) in [
            (0, "0s"),
            (500, "500ns"),
            (1_500, "1.5µs"),
            (2_250_000, "2.25ms"),
            (45_000_000_000, "45s"),
            (65_500_000_000, "1m5.5s"),
            (7_203_000_000_000, "2h0m3s"),
            (-5_000_000_000, "-5s"),
            (1_000_000_001, "1.000000001s"),
            (-1_500, "-1.5µs"),
        ] {
            assert_eq!(super::go_duration(nanos), text, "{nanos}");
        }
    }

    use super::*;

    #[test]
    fn parses_as_go_humanize() {
        assert_eq!(parse_bytes("4GB"), Some(4_000_000_000));
        assert_eq!(parse_bytes(" 4 GiB "), Some(4 << 30));
        assert_eq!(parse_bytes("1.5tb"), Some(1_500_000_000_000));
        assert_eq!(parse_bytes("512110190592"), Some(512_110_190_592));
        assert_eq!(parse_bytes("1,000 k"), Some(1_000_000));
        assert_eq!(parse_bytes("10Mi"), Some(10 << 20));
        assert_eq!(parse_bytes("12 apples"), None);
        assert_eq!(parse_bytes("GB"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn humanized_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(9), "9 B");
        assert_eq!(bytes(1000), "1.0 kB");
        assert_eq!(bytes(82_854_982), "83 MB");
        assert_eq!(bytes(1_500_000_000), "1.5 GB");
        assert_eq!(bytes(10_737_418_240), "11 GB");
        assert_eq!(ibytes(1024), "1.0 KiB");
    }
}
