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

#[cfg(test)]
mod tests {
    use super::*;

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
