//! Rendering what talosctl prints, the way upstream (Go) talosctl does:
//! tables aligned like Go's `text/tabwriter` (padding 3), Go's
//! `os.FileMode.String()`, Go's `time.Duration.String()` and
//! `time.Time.String()`, and go-humanize's byte sizes and relative times.
//! Also the JSON/YAML rendering of `-o json|yaml` views and stdout writing
//! that reports a closed pipe as an error instead of panicking.

use std::fmt;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The error returned after per-node failures were already printed: the
/// process exits 1 without printing anything more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one or more nodes failed")
    }
}

impl std::error::Error for Reported {}

/// Writes text to stdout.
///
/// # Errors
/// Stdout is closed or full.
pub fn out(text: &str) -> anyhow::Result<()> {
    out_bytes(text.as_bytes())
}

/// Writes bytes to stdout and flushes.
///
/// # Errors
/// Stdout is closed or full (a closed pipe is `io::ErrorKind::BrokenPipe`,
/// which `main` treats as success).
pub fn out_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// Prints upstream's `WARNING: ...` line on stderr.
pub fn warning(message: &str) {
    eprintln!("WARNING: {message}");
}

// === tables ===

/// Default padding between columns (upstream: `tabwriter.NewWriter(os.Stdout, 0, 0, 3, ' ', 0)`).
pub const PADDING: usize = 3;

/// A table rendered like Go's tabwriter: every cell but the last of a row is
/// padded to the widest cell of its column plus the padding; the last cell
/// is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
    padding: usize,
}

impl Table {
    /// A table with a header row and the default padding.
    #[must_use]
    pub fn new(header: &[&str]) -> Self {
        Self::with_padding(header, PADDING)
    }

    /// A table with a header row and `padding` spaces between columns.
    #[must_use]
    pub fn with_padding(header: &[&str], padding: usize) -> Self {
        let mut table = Self::headerless(padding);
        if !header.is_empty() {
            table
                .rows
                .push(header.iter().map(|cell| (*cell).to_owned()).collect());
        }
        table
    }

    /// A table without a header row.
    #[must_use]
    pub fn headerless(padding: usize) -> Self {
        Self {
            rows: Vec::new(),
            padding,
        }
    }

    /// Adds a row.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The number of rows, header included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rendered text, one line per row.
    #[must_use]
    pub fn render(&self) -> String {
        render_rows(&self.rows, self.padding)
    }

    /// Writes the table to stdout.
    ///
    /// # Errors
    /// Stdout is closed.
    pub fn print(&self) -> anyhow::Result<()> {
        out(&self.render())
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// Renders rows like Go's tabwriter (see [`Table`]).
#[must_use]
pub fn render_rows(rows: &[Vec<String>], padding: usize) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        let padded = row.len().saturating_sub(1);
        for (index, cell) in row.iter().take(padded).enumerate() {
            if widths.len() <= index {
                widths.resize(index + 1, 0);
            }
            widths[index] = widths[index].max(width(cell));
        }
    }
    let mut text = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (index, cell) in row.iter().enumerate() {
            text.push_str(cell);
            if index < last {
                let pad = widths[index] + padding - width(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        text.push('\n');
    }
    text
}

/// A table printed row by row as rows arrive (streams that never end, like
/// `events`): a column is as wide as its widest cell so far.
#[derive(Debug, Clone)]
pub struct StreamTable {
    widths: Vec<usize>,
    padding: usize,
}

impl StreamTable {
    /// A streaming table with `padding` spaces between columns.
    #[must_use]
    pub fn new(padding: usize) -> Self {
        Self {
            widths: Vec::new(),
            padding,
        }
    }

    /// The line for `cells` (with the newline), widening columns as needed.
    pub fn line(&mut self, cells: &[String]) -> String {
        let last = cells.len().saturating_sub(1);
        for (index, cell) in cells.iter().take(last).enumerate() {
            if self.widths.len() <= index {
                self.widths.resize(index + 1, 0);
            }
            self.widths[index] = self.widths[index].max(width(cell));
        }
        let mut text = String::new();
        for (index, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if index < last {
                text.push_str(&" ".repeat(self.widths[index] + self.padding - width(cell)));
            }
        }
        text.push('\n');
        text
    }
}

// === Go FileMode ===

/// Go's `os.FileMode(mode).String()`: type letters (`dalTLDpSugct?`, in bit
/// order from bit 31 down), `-` if none, then `rwxrwxrwx` permissions.
#[must_use]
pub fn go_file_mode(mode: u32) -> String {
    const TYPES: &str = "dalTLDpSugct?";
    const RWX: &str = "rwxrwxrwx";
    let mut text = String::new();
    for (index, letter) in TYPES.chars().enumerate() {
        if mode & (1 << (31 - index)) != 0 {
            text.push(letter);
        }
    }
    if text.is_empty() {
        text.push('-');
    }
    for (index, letter) in RWX.chars().enumerate() {
        if mode & (1 << (8 - index)) != 0 {
            text.push(letter);
        } else {
            text.push('-');
        }
    }
    text
}

// === sizes ===

pub use machinery::humanize::{bytes as humanize_bytes, ibytes as humanize_ibytes};

// === durations ===

/// Go's `time.Duration.String()` for a whole number of seconds:
/// `0s`, `45s`, `1m5s`, `2h0m3s`, `-5s`.
#[must_use]
pub fn go_duration(seconds: i64) -> String {
    machinery::humanize::go_duration(i128::from(seconds) * 1_000_000_000)
}

/// Go's `time.Duration.String` for a whole number of microseconds:
/// `999µs`, `1.5ms`, `1m1.25s`.
#[must_use]
pub fn go_duration_micros(us: u64) -> String {
    machinery::humanize::go_duration(i128::from(us) * 1_000)
}

/// `now - ts` rounded to the second (Go's `time.Since(ts).Round(time.Second)`),
/// as [`go_duration`].
#[must_use]
pub fn since_rounded(ts: &prost_types::Timestamp, now: SystemTime) -> String {
    let now_nanos = unix_nanos(now);
    let ts_nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let diff = now_nanos - ts_nanos;
    let rounded = if diff >= 0 {
        (diff + 500_000_000) / 1_000_000_000
    } else {
        (diff - 500_000_000) / 1_000_000_000
    };
    go_duration(i64::try_from(rounded).unwrap_or(i64::MAX))
}

fn unix_nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal
/// numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, e.g. `1m`,
/// `8760h`, `1h30m`, `1.5s`. Negative durations are refused.
///
/// # Errors
/// The text is not such a duration.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}");
    let mut rest = text.trim();
    if let Some(stripped) = rest.strip_prefix('+') {
        rest = stripped;
    }
    if rest.starts_with('-') {
        return Err(format!("invalid duration {text:?}: must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(invalid());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("invalid duration {text:?}: missing unit")),
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        total_nanos += number * scale;
    }
    if !total_nanos.is_finite() || total_nanos > 1e19 {
        return Err(invalid());
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let nanos = total_nanos.round() as u64;
    Ok(Duration::from_nanos(nanos))
}

/// A std duration as a protobuf duration.
#[must_use]
pub fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// go-humanize's `RelTime(a, b, albl, blbl)`: how far `a` is from `b`,
/// e.g. `1 year from now`, `3 days ago`.
#[must_use]
pub fn rel_time(a: SystemTime, b: SystemTime, a_label: &str, b_label: &str) -> String {
    const SECOND: i128 = 1_000_000_000;
    const MINUTE: i128 = 60 * SECOND;
    const HOUR: i128 = 60 * MINUTE;
    const DAY: i128 = 24 * HOUR;
    const WEEK: i128 = 7 * DAY;
    const MONTH: i128 = 30 * DAY;
    const YEAR: i128 = 12 * MONTH;
    const LONG_TIME: i128 = 37 * YEAR;

    let (a_nanos, b_nanos) = (unix_nanos(a), unix_nanos(b));
    let (label, diff) = if a_nanos > b_nanos {
        (b_label, a_nanos - b_nanos)
    } else {
        (a_label, b_nanos - a_nanos)
    };
    // (below, format, divisor): the first row whose bound exceeds diff wins;
    // a divisor of 0 means the format has no number.
    let magnitudes: [(i128, &str, i128); 16] = [
        (SECOND, "now", 0),
        (2 * SECOND, "1 second", 0),
        (MINUTE, "seconds", SECOND),
        (2 * MINUTE, "1 minute", 0),
        (HOUR, "minutes", MINUTE),
        (2 * HOUR, "1 hour", 0),
        (DAY, "hours", HOUR),
        (2 * DAY, "1 day", 0),
        (WEEK, "days", DAY),
        (2 * WEEK, "1 week", 0),
        (MONTH, "weeks", WEEK),
        (2 * MONTH, "1 month", 0),
        (YEAR, "months", MONTH),
        (18 * MONTH, "1 year", 0),
        (2 * YEAR, "2 years", 0),
        (LONG_TIME, "years", YEAR),
    ];
    for (bound, unit, divisor) in magnitudes {
        if diff < bound {
            if unit == "now" {
                return "now".to_owned();
            }
            if divisor == 0 {
                return format!("{unit} {label}");
            }
            return format!("{} {unit} {label}", diff / divisor);
        }
    }
    format!("a long while {label}")
}

// === timestamps ===

fn utc(seconds: i64, nanos: u32) -> Option<time::OffsetDateTime> {
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(total).ok()
}

fn system_utc(at: SystemTime) -> Option<time::OffsetDateTime> {
    let nanos = unix_nanos(at);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

fn month_abbrev(month: time::Month) -> &'static str {
    match month {
        time::Month::January => "Jan",
        time::Month::February => "Feb",
        time::Month::March => "Mar",
        time::Month::April => "Apr",
        time::Month::May => "May",
        time::Month::June => "Jun",
        time::Month::July => "Jul",
        time::Month::August => "Aug",
        time::Month::September => "Sep",
        time::Month::October => "Oct",
        time::Month::November => "Nov",
        time::Month::December => "Dec",
    }
}

/// Go's `time.Time.String()` in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC`
/// (the fraction without trailing zeros, left out when zero).
#[must_use]
pub fn go_time_string(seconds: i64, nanos: i32) -> String {
    let nanos = u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    let Some(at) = utc(seconds, nanos) else {
        return format!("@{seconds}");
    };
    let mut fraction = String::new();
    if nanos != 0 {
        fraction = format!(".{nanos:09}");
        while fraction.ends_with('0') {
            fraction.pop();
        }
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{fraction} +0000 UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// [`go_time_string`] of a protobuf timestamp (`0001-01-01 ...` style
/// placeholder when absent, as Go prints the zero time).
#[must_use]
pub fn timestamp_string(ts: Option<&prost_types::Timestamp>) -> String {
    match ts {
        Some(ts) => go_time_string(ts.seconds, ts.nanos),
        None => "0001-01-01 00:00:00 +0000 UTC".to_owned(),
    }
}

/// [`go_time_string`] of a system time.
#[must_use]
pub fn system_time_string(at: SystemTime) -> String {
    let nanos = unix_nanos(at);
    let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    let rest = i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0);
    go_time_string(seconds, rest)
}

/// RFC 3339 in UTC with second precision: `2027-11-25T10:00:00Z`.
#[must_use]
pub fn rfc3339(at: SystemTime) -> String {
    match system_utc(at) {
        Some(at) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        None => format!("{at:?}"),
    }
}

/// The date in UTC: `2027-11-25` (Go's `Format("2006-01-02")`).
#[must_use]
pub fn ymd(at: SystemTime) -> String {
    match system_utc(at) {
        Some(at) => format!(
            "{:04}-{:02}-{:02}",
            at.year(),
            u8::from(at.month()),
            at.day()
        ),
        None => format!("{at:?}"),
    }
}

/// The `LASTMOD` column of `list -l` (UTC): `Jan _2 15:04:05` when less than
/// six months old, `Jan _2 2006 15:04` otherwise.
#[must_use]
pub fn ls_time(modified: i64, now: SystemTime) -> String {
    const SIX_MONTHS: i128 = 6 * 30 * 24 * 3600;
    let Some(at) = utc(modified, 0) else {
        return modified.to_string();
    };
    let age = unix_nanos(now) / 1_000_000_000 - i128::from(modified);
    if age < SIX_MONTHS {
        format!(
            "{} {:>2} {:02}:{:02}:{:02}",
            month_abbrev(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    } else {
        format!(
            "{} {:>2} {:04} {:02}:{:02}",
            month_abbrev(at.month()),
            at.day(),
            at.year(),
            at.hour(),
            at.minute()
        )
    }
}

/// A protobuf timestamp as a system time.
#[must_use]
pub fn timestamp_to_system(ts: &prost_types::Timestamp) -> SystemTime {
    let nanos = u32::try_from(ts.nanos.clamp(0, 999_999_999)).unwrap_or(0);
    if ts.seconds >= 0 {
        UNIX_EPOCH + Duration::new(ts.seconds.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.seconds.unsigned_abs())
            + Duration::from_nanos(u64::from(nanos))
    }
}

// === JSON and YAML ===

/// Compact JSON of a serializable view.
///
/// # Errors
/// The view cannot be represented as JSON (never for the views here).
pub fn to_json<T: Serialize>(view: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string(view)?)
}

/// Indented JSON (two spaces, as Go's `SetIndent("", "  ")`).
///
/// # Errors
/// As [`to_json`].
pub fn to_json_pretty<T: Serialize>(view: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(view)?)
}

/// JSON indented by four spaces, as upstream's encoder writes resources
/// and JSONPath results.
///
/// # Errors
/// The value cannot be serialized.
pub fn to_json_indent4<T: Serialize>(view: &T) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    view.serialize(&mut ser)?;
    Ok(String::from_utf8(buf)?)
}

/// YAML of a serializable view.
///
/// # Errors
/// As [`to_json`].
pub fn to_yaml<T: Serialize>(view: &T) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(view)?)
}

/// Prints views in `format`: JSON one object per line, YAML documents
/// separated by `---`.
///
/// # Errors
/// Stdout is closed.
pub fn print_views<T: Serialize>(
    views: &[T],
    format: crate::cli::OutputFormat,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for (index, view) in views.iter().enumerate() {
        match format {
            crate::cli::OutputFormat::Yaml => {
                if index > 0 {
                    text.push_str("---\n");
                }
                text.push_str(&to_yaml(view)?);
            }
            crate::cli::OutputFormat::Json | crate::cli::OutputFormat::Text => {
                text.push_str(&to_json(view)?);
                text.push('\n');
            }
        }
    }
    out(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_modes_like_go() {
        assert_eq!(go_file_mode(0o644), "-rw-r--r--");
        assert_eq!(go_file_mode((1 << 31) | 0o755), "drwxr-xr-x");
        assert_eq!(go_file_mode((1 << 27) | 0o777), "Lrwxrwxrwx");
        // Character device: ModeDevice | ModeCharDevice.
        assert_eq!(go_file_mode((1 << 26) | (1 << 21) | 0o666), "Dcrw-rw-rw-");
        assert_eq!(go_file_mode((1 << 26) | 0o660), "Drw-rw----");
        assert_eq!(go_file_mode((1 << 25) | 0o600), "prw-------");
        assert_eq!(go_file_mode((1 << 24) | 0o777), "Srwxrwxrwx");
        assert_eq!(go_file_mode((1 << 23) | 0o755), "urwxr-xr-x");
        assert_eq!(go_file_mode((1 << 31) | (1 << 20) | 0o777), "dtrwxrwxrwx");
        assert_eq!(go_file_mode(0), "----------");
    }

    #[test]
    fn table_pads_like_tabwriter() {
        let mut table = Table::new(&["NODE", "SERVICE", "STATE"]);
        table.push(vec!["10.5.0.2".into(), "apid".into(), "Running".into()]);
        table.push(vec![
            "10.5.0.2".into(),
            "containerd".into(),
            "Running".into(),
        ]);
        assert_eq!(
            table.render(),
            // Go's tabwriter with padding 3: widest cell + 3 spaces.
            "NODE       SERVICE      STATE\n\
             10.5.0.2   apid         Running\n\
             10.5.0.2   containerd   Running\n"
        );
    }

    #[test]
    fn table_last_cell_is_not_padded_and_empty_cells_align() {
        let mut table = Table::new(&["CURRENT", "NAME", "ENDPOINTS", "NODES"]);
        table.push(vec![
            "*".into(),
            "a".into(),
            "1.2.3.4".into(),
            String::new(),
        ]);
        table.push(vec![String::new(), "bb".into(), String::new(), "n".into()]);
        assert_eq!(
            table.render(),
            "CURRENT   NAME   ENDPOINTS   NODES\n\
             *         a      1.2.3.4     \n\
             \x20         bb                 n\n"
        );
    }

    #[test]
    fn stream_table_grows() {
        let mut table = StreamTable::new(3);
        assert_eq!(table.line(&["A".into(), "B".into()]), "A   B\n");
        assert_eq!(table.line(&["long".into(), "x".into()]), "long   x\n");
        assert_eq!(table.line(&["s".into(), "y".into()]), "s      y\n");
    }

    #[test]
    fn go_durations_of_microseconds() {
        for (us, want) in [
            (0, "0s"),
            (999, "999µs"),
            (1_500, "1.5ms"),
            (2_000_000, "2s"),
            (61_250_000, "1m1.25s"),
            (3_723_000_001, "1h2m3.000001s"),
        ] {
            assert_eq!(go_duration_micros(us), want);
        }
        // Whole seconds as go_duration prints them.
        assert_eq!(go_duration_micros(3_600_000_000), go_duration(3600));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(5), "5s");
        assert_eq!(go_duration(65), "1m5s");
        assert_eq!(go_duration(120), "2m0s");
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(3723), "1h2m3s");
        assert_eq!(go_duration(-5), "-5s");
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(
            parse_go_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn since_rounds_to_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let ts = prost_types::Timestamp {
            seconds: 934,
            nanos: 400_000_000,
        };
        assert_eq!(since_rounded(&ts, now), "1m6s");
    }

    #[test]
    fn relative_times_like_humanize() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let year = now + Duration::from_secs(8760 * 3600);
        assert_eq!(rel_time(year, now, "ago", "from now"), "1 year from now");
        let days = now - Duration::from_secs(3 * 86400);
        assert_eq!(rel_time(days, now, "ago", "from now"), "3 days ago");
        assert_eq!(rel_time(now, now, "ago", "from now"), "now");
        let ten_years = now + Duration::from_secs(87600 * 3600);
        assert_eq!(
            rel_time(ten_years, now, "ago", "from now"),
            "10 years from now"
        );
    }

    #[test]
    fn time_strings() {
        assert_eq!(go_time_string(0, 0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time_string(1_700_000_000, 120_000_000),
            "2023-11-14 22:13:20.12 +0000 UTC"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            ymd(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14"
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(ls_time(1_699_000_000, now), "Nov  3 08:26:40");
        assert_eq!(ls_time(1_600_000_000, now), "Sep 13 2020 12:26");
    }

    #[test]
    fn json_rendering() {
        #[derive(Serialize)]
        struct View {
            name: String,
            count: u64,
            ratio: f64,
            tags: Vec<String>,
            ok: bool,
        }
        let view = View {
            name: "a\"b".into(),
            count: 3,
            ratio: 0.5,
            tags: vec!["x".into()],
            ok: true,
        };
        assert_eq!(
            to_json(&view).expect("json"),
            r#"{"name":"a\"b","count":3,"ratio":0.5,"tags":["x"],"ok":true}"#
        );
        assert_eq!(
            to_json_pretty(&view).expect("json"),
            "{\n  \"name\": \"a\\\"b\",\n  \"count\": 3,\n  \"ratio\": 0.5,\n  \"tags\": [\n    \"x\"\n  ],\n  \"ok\": true\n}"
        );
    }
}
