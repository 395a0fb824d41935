//! The clock timed corrects, behind a trait so the reconcile loop can be
//! tested without touching the host clock.
//!
//! - [`SystemClock`] (metal): steps with `clock_settime(CLOCK_REALTIME)`
//!   (rustix, safe) and slews through the kernel PLL with `adjtimex`
//!   (`ADJ_OFFSET` with `STA_PLL`, as systemd-timesyncd does). rustix has no
//!   `adjtimex`, so that one call is a small `unsafe` libc block in the
//!   private `sys` module.
//! - [`ReadOnlyClock`] (container): the host owns the clock; it only logs
//!   what it would do.
//! - [`FakeClock`] (tests): records every step and slew.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// A signed clock correction in nanoseconds: how far the reference clock is
/// ahead of the local one (negative: the local clock is ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    nanos: i64,
}

impl Offset {
    /// No correction.
    pub const ZERO: Offset = Offset { nanos: 0 };

    /// An offset of `nanos` nanoseconds.
    #[must_use]
    pub const fn from_nanos(nanos: i64) -> Offset {
        Offset { nanos }
    }

    /// An offset of `millis` milliseconds (saturating).
    #[must_use]
    pub const fn from_millis(millis: i64) -> Offset {
        Offset {
            nanos: millis.saturating_mul(1_000_000),
        }
    }

    /// An offset of `secs` seconds (saturating).
    #[must_use]
    pub const fn from_secs(secs: i64) -> Offset {
        Offset {
            nanos: secs.saturating_mul(1_000_000_000),
        }
    }

    /// The offset that takes `from` to `to` (`to - from`), saturating at
    /// about ±292 years.
    #[must_use]
    pub fn between(from: SystemTime, to: SystemTime) -> Offset {
        match to.duration_since(from) {
            Ok(ahead) => Offset::from_nanos(i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX)),
            Err(behind) => Offset::from_nanos(
                i64::try_from(behind.duration().as_nanos()).map_or(i64::MIN, |n| -n),
            ),
        }
    }

    /// The offset in nanoseconds.
    #[must_use]
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// The size of the offset, without its sign.
    #[must_use]
    pub const fn magnitude(self) -> Duration {
        Duration::from_nanos(self.nanos.unsigned_abs())
    }

    /// Whether the local clock is ahead of the reference.
    #[must_use]
    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// `time` moved by this offset (unchanged if that would overflow).
    #[must_use]
    pub fn apply(self, time: SystemTime) -> SystemTime {
        let by = self.magnitude();
        let moved = if self.is_negative() {
            time.checked_sub(by)
        } else {
            time.checked_add(by)
        };
        moved.unwrap_or(time)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { '-' } else { '+' };
        let abs = self.nanos.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:06}s",
            abs / 1_000_000_000,
            (abs % 1_000_000_000) / 1_000
        )
    }
}

/// Errors changing the clock.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// `clock_settime` failed.
    #[error("stepping the clock by {offset}: {source}")]
    Step {
        /// The requested step.
        offset: Offset,
        /// The cause (EPERM without CAP_SYS_TIME).
        source: std::io::Error,
    },
    /// The stepped time does not fit a `timespec`.
    #[error("stepping the clock by {offset}: the resulting time is out of range")]
    OutOfRange {
        /// The requested step.
        offset: Offset,
    },
    /// `adjtimex` failed.
    #[error("slewing the clock by {offset}: {source}")]
    Slew {
        /// The requested slew.
        offset: Offset,
        /// The cause (EPERM without CAP_SYS_TIME).
        source: std::io::Error,
    },
}

/// A leap second a server announces for the end of the day (its leap
/// indicator), which the kernel then inserts or deletes at midnight UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Leap {
    /// None announced (LI 0).
    #[default]
    None,
    /// The last minute of the day has 61 seconds (LI 1).
    Insert,
    /// The last minute of the day has 59 seconds (LI 2).
    Delete,
}

impl Leap {
    /// From an NTP leap indicator (3, unsynchronized, is never passed on:
    /// such replies are refused).
    #[must_use]
    pub fn from_indicator(li: u8) -> Leap {
        match li {
            1 => Leap::Insert,
            2 => Leap::Delete,
            _ => Leap::None,
        }
    }
}

/// A clock timed can read and correct.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// Jumps the clock by `by` at once.
    ///
    /// # Errors
    /// The clock cannot be set.
    fn step(&self, by: Offset) -> Result<(), ClockError>;

    /// Corrects the clock by `by` gradually (the clock keeps running
    /// forward, a little faster or slower), and arms (or disarms) the
    /// kernel for the `leap` second announced.
    ///
    /// # Errors
    /// The clock cannot be adjusted.
    fn slew(&self, by: Offset, leap: Leap) -> Result<(), ClockError>;

    /// Whether this clock never changes (container mode): the sync loop
    /// then reports time as synced from the start, since the host owns it.
    fn is_read_only(&self) -> bool {
        false
    }
}

/// The kernel's realtime clock (metal mode). Needs CAP_SYS_TIME.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    time_constant: i32,
}

impl SystemClock {
    /// The PLL time constant used for slews: systemd-timesyncd's
    /// `log2(poll interval in seconds) - 4`, i.e. 4 for the 5 minute poll.
    pub const DEFAULT_TIME_CONSTANT: i32 = 4;

    /// The system clock with the default PLL time constant.
    #[must_use]
    pub const fn new() -> SystemClock {
        SystemClock {
            time_constant: Self::DEFAULT_TIME_CONSTANT,
        }
    }

    /// The system clock with PLL time constant `time_constant` (0..=10).
    #[must_use]
    pub fn with_time_constant(time_constant: i32) -> SystemClock {
        SystemClock {
            time_constant: time_constant.clamp(0, 10),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

const NANOS_PER_SEC: i128 = 1_000_000_000;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn step(&self, by: Offset) -> Result<(), ClockError> {
        use rustix::time::{ClockId, Timespec};
        let now = rustix::time::clock_gettime(ClockId::Realtime);
        let target = i128::from(now.tv_sec) * NANOS_PER_SEC
            + now.tv_nsec as i128
            + i128::from(by.as_nanos());
        let tv_sec = i64::try_from(target.div_euclid(NANOS_PER_SEC))
            .map_err(|_| ClockError::OutOfRange { offset: by })?;
        let tv_nsec = target.rem_euclid(NANOS_PER_SEC) as rustix::time::Nsecs;
        rustix::time::clock_settime(ClockId::Realtime, Timespec { tv_sec, tv_nsec }).map_err(
            |errno| ClockError::Step {
                offset: by,
                source: std::io::Error::from(errno),
            },
        )
    }

    fn slew(&self, by: Offset, leap: Leap) -> Result<(), ClockError> {
        sys::pll_offset(by.as_nanos(), self.time_constant, leap)
            .map_err(|source| ClockError::Slew { offset: by, source })
    }
}

/// The kernel clock discipline's state, as `adjtimex(2)` reads it
/// (upstream's AdjtimeStatus).
#[derive(Debug, Clone, PartialEq)]
pub struct Adjtime {
    /// The PLL's remaining offset (signed).
    pub offset: Offset,
    /// The clock's speed against nominal: 1 + the frequency offset.
    pub frequency_adjustment_ratio: f64,
    /// The maximum error.
    pub max_error: Duration,
    /// The estimated error.
    pub est_error: Duration,
    /// The status bits set, by name (`STA_PLL | STA_NANO`, as upstream).
    pub status: String,
    /// The PLL time constant.
    pub constant: i64,
    /// Whether the kernel counts the clock as synchronized (no
    /// `STA_UNSYNC`).
    pub sync_status: bool,
    /// The clock state (`TIME_OK`, `TIME_ERROR`, ...).
    pub state: String,
}

/// The status bits of `struct timex`, by name.
const STATUS_BITS: [(i32, &str); 16] = [
    (0x0001, "STA_PLL"),
    (0x0002, "STA_PPSFREQ"),
    (0x0004, "STA_PPSTIME"),
    (0x0008, "STA_FLL"),
    (0x0010, "STA_INS"),
    (0x0020, "STA_DEL"),
    (0x0040, "STA_UNSYNC"),
    (0x0080, "STA_FREQHOLD"),
    (0x0100, "STA_PPSSIGNAL"),
    (0x0200, "STA_PPSJITTER"),
    (0x0400, "STA_PPSWANDER"),
    (0x0800, "STA_PPSERROR"),
    (0x1000, "STA_CLOCKERR"),
    (0x2000, "STA_NANO"),
    (0x4000, "STA_MODE"),
    (0x8000, "STA_CLK"),
];

/// `adjtimex`'s return value by name.
fn state_name(state: i32) -> String {
    match state {
        0 => "TIME_OK".to_owned(),
        1 => "TIME_INS".to_owned(),
        2 => "TIME_DEL".to_owned(),
        3 => "TIME_OOP".to_owned(),
        4 => "TIME_WAIT".to_owned(),
        5 => "TIME_ERROR".to_owned(),
        _ => "TIME_UNKNOWN".to_owned(),
    }
}

impl Adjtime {
    /// From the raw fields: `offset` in nanoseconds with `STA_NANO`, else
    /// microseconds; `freq` in ppm with a 16-bit fraction; the errors in
    /// microseconds.
    #[must_use]
    pub fn from_raw(raw: RawTimex) -> Adjtime {
        const STA_UNSYNC: i32 = 0x0040;
        const STA_NANO: i32 = 0x2000;
        let offset_nanos = if raw.status & STA_NANO != 0 {
            raw.offset
        } else {
            raw.offset.saturating_mul(1000)
        };
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        #[allow(clippy::cast_precision_loss)]
        let ppm = raw.freq as f64 / 65536.0;
        Adjtime {
            offset: Offset::from_nanos(offset_nanos),
            frequency_adjustment_ratio: 1.0 + ppm / 1e6,
            max_error: micros(raw.max_error),
            est_error: micros(raw.est_error),
            status: STATUS_BITS
                .iter()
                .filter(|(bit, _)| raw.status & bit != 0)
                .map(|(_, name)| *name)
                .collect::<Vec<_>>()
                .join(" | "),
            constant: raw.constant,
            sync_status: raw.status & STA_UNSYNC == 0,
            state: state_name(raw.state),
        }
    }

    /// Reads the kernel's state (changing nothing: any process may).
    ///
    /// # Errors
    /// `adjtimex` failed.
    pub fn read() -> std::io::Result<Adjtime> {
        sys::read().map(Adjtime::from_raw)
    }
}

/// The fields of `struct timex` that [`Adjtime`] is made of, and
/// `adjtimex`'s return value (`state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawTimex {
    /// `offset`.
    pub offset: i64,
    /// `freq`.
    pub freq: i64,
    /// `maxerror`.
    pub max_error: i64,
    /// `esterror`.
    pub est_error: i64,
    /// `status`.
    pub status: i32,
    /// `constant`.
    pub constant: i64,
    /// The return value.
    pub state: i32,
}

/// The `adjtimex(2)` calls timed makes: rustix does not wrap it.
#[allow(unsafe_code)]
mod sys {
    /// The kernel PLL accepts at most ±0.5 s per update (MAXPHASE).
    const MAX_PHASE_NANOS: i64 = 500_000_000;

    /// Hands `offset_nanos` to the kernel PLL (`ADJ_OFFSET` in nanoseconds
    /// with `STA_PLL`), which then slews the clock gradually. Setting the
    /// status also clears `STA_UNSYNC`, and zero max/estimated errors mark
    /// the clock as synchronized (the kernel's 11-minute RTC sync). `leap`
    /// sets `STA_INS` or `STA_DEL` (and clears the other), as upstream does
    /// from the server's leap indicator.
    pub(super) fn pll_offset(
        offset_nanos: i64,
        time_constant: i32,
        leap: super::Leap,
    ) -> std::io::Result<()> {
        let clamped = offset_nanos.clamp(-MAX_PHASE_NANOS, MAX_PHASE_NANOS);
        // ±5e8 always fits an i32, so the conversion below never fails.
        let offset = i32::try_from(clamped).unwrap_or(0);
        // SAFETY: `libc::timex` is a plain C struct made only of integers
        // (and a `timeval` of integers) and padding, for which all-zero bytes
        // are a valid value.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_STATUS
            | libc::ADJ_NANO
            | libc::ADJ_OFFSET
            | libc::ADJ_TIMECONST
            | libc::ADJ_MAXERROR
            | libc::ADJ_ESTERROR;
        tx.status = libc::STA_PLL
            | match leap {
                super::Leap::None => 0,
                super::Leap::Insert => libc::STA_INS,
                super::Leap::Delete => libc::STA_DEL,
            };
        tx.offset = offset.into();
        tx.constant = time_constant.into();
        tx.maxerror = 0;
        tx.esterror = 0;
        // SAFETY: `tx` is a valid, fully initialized `timex` that outlives
        // the call; adjtimex only reads and writes that struct.
        let rc = unsafe { libc::adjtimex(&mut tx) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads the clock discipline's state: `modes` 0 changes nothing.
    pub(super) fn read() -> std::io::Result<super::RawTimex> {
        // SAFETY: as above, all-zero bytes are a valid `timex`.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = 0;
        // SAFETY: `tx` is a valid `timex` that outlives the call; with
        // `modes` 0 adjtimex only writes the struct.
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(super::RawTimex {
            offset: tx.offset,
            freq: tx.freq,
            max_error: tx.maxerror,
            est_error: tx.esterror,
            status: tx.status,
            constant: tx.constant,
            state,
        })
    }
}

/// Container mode: the host owns the clock. Never changes it; logs what it
/// would have done.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOnlyClock;

impl Clock for ReadOnlyClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn step(&self, by: Offset) -> Result<(), ClockError> {
        tracing::info!(offset = %by, "container mode: would step the clock (the host owns it)");
        Ok(())
    }

    fn slew(&self, by: Offset, leap: Leap) -> Result<(), ClockError> {
        tracing::info!(offset = %by, ?leap, "container mode: would slew the clock (the host owns it)");
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        true
    }
}

/// A clock for tests: records steps and slews; `now()` is the real time
/// moved by every step so far. Can be told to fail like a process without
/// CAP_SYS_TIME.
#[derive(Debug, Default)]
pub struct FakeClock {
    state: Mutex<FakeClockState>,
}

#[derive(Debug, Default)]
struct FakeClockState {
    stepped: Offset,
    steps: Vec<Offset>,
    slews: Vec<Offset>,
    leaps: Vec<Leap>,
    fail: bool,
}

impl FakeClock {
    /// A fake clock that accepts every change.
    #[must_use]
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The steps made, in order.
    #[must_use]
    pub fn steps(&self) -> Vec<Offset> {
        self.state().steps.clone()
    }

    /// The slews made, in order.
    #[must_use]
    pub fn slews(&self) -> Vec<Offset> {
        self.state().slews.clone()
    }

    /// The leap second armed with each slew, in order.
    #[must_use]
    pub fn leaps(&self) -> Vec<Leap> {
        self.state().leaps.clone()
    }

    /// Makes every later step and slew fail with EPERM (`true`) or succeed.
    pub fn set_failing(&self, fail: bool) {
        self.state().fail = fail;
    }
}

fn eperm() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::PermissionDenied)
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        self.state().stepped.apply(SystemTime::now())
    }

    fn step(&self, by: Offset) -> Result<(), ClockError> {
        let mut state = self.state();
        if state.fail {
            return Err(ClockError::Step {
                offset: by,
                source: eperm(),
            });
        }
        state.stepped = Offset::from_nanos(state.stepped.as_nanos().saturating_add(by.as_nanos()));
        state.steps.push(by);
        Ok(())
    }

    fn slew(&self, by: Offset, leap: Leap) -> Result<(), ClockError> {
        let mut state = self.state();
        if state.fail {
            return Err(ClockError::Slew {
                offset: by,
                source: eperm(),
            });
        }
        state.slews.push(by);
        state.leaps.push(leap);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjtime_fields_as_the_kernel_means_them() {
        // STA_PLL|STA_NANO, offset in ns, +12.5 ppm, errors in us.
        let a = Adjtime::from_raw(RawTimex {
            offset: 1_500_000,
            freq: 125 * 65536 / 10,
            max_error: 16_000,
            est_error: 500,
            status: 0x2001,
            constant: 7,
            state: 0,
        });
        assert_eq!(a.offset, Offset::from_nanos(1_500_000));
        assert!((a.frequency_adjustment_ratio - 1.000_012_5).abs() < 1e-12);
        assert_eq!(a.max_error, Duration::from_millis(16));
        assert_eq!(a.est_error, Duration::from_micros(500));
        assert_eq!(a.status, "STA_PLL | STA_NANO");
        assert_eq!(a.constant, 7);
        assert!(a.sync_status);
        assert_eq!(a.state, "TIME_OK");
        // Microseconds without STA_NANO; unsynchronized; TIME_ERROR.
        let b = Adjtime::from_raw(RawTimex {
            offset: -3,
            status: 0x0040,
            state: 5,
            ..RawTimex::default()
        });
        assert_eq!(b.offset, Offset::from_nanos(-3000));
        assert!(!b.sync_status);
        assert_eq!(
            (b.status.as_str(), b.state.as_str()),
            ("STA_UNSYNC", "TIME_ERROR")
        );
        assert!((b.frequency_adjustment_ratio - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn adjtime_reads_on_this_machine() {
        // Reading changes nothing and needs no privilege.
        let a = Adjtime::read().expect("adjtimex");
        assert!(a.state.starts_with("TIME_"), "{a:?}");
        assert!(
            a.frequency_adjustment_ratio > 0.99 && a.frequency_adjustment_ratio < 1.01,
            "{a:?}"
        );
    }

    #[test]
    fn offsets() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = t + Duration::from_millis(1500);
        assert_eq!(Offset::between(t, later), Offset::from_millis(1500));
        assert_eq!(Offset::between(later, t), Offset::from_millis(-1500));
        assert_eq!(Offset::from_millis(-1500).apply(later), t);
        assert_eq!(Offset::from_millis(1500).apply(t), later);
        assert_eq!(
            Offset::from_millis(-1500).magnitude(),
            Duration::from_millis(1500)
        );
        assert!(Offset::from_nanos(-1).is_negative());
        assert!(!Offset::ZERO.is_negative());
        assert_eq!(Offset::from_secs(2), Offset::from_nanos(2_000_000_000));
    }

    #[test]
    fn offsets_display_with_sign_and_microseconds() {
        assert_eq!(Offset::from_nanos(12_345_678).to_string(), "+0.012345s");
        assert_eq!(Offset::from_millis(-2500).to_string(), "-2.500000s");
        assert_eq!(Offset::ZERO.to_string(), "+0.000000s");
    }

    #[test]
    fn the_fake_clock_records_and_can_fail() {
        let clock = FakeClock::new();
        let before = clock.now();
        clock.step(Offset::from_secs(3600)).expect("step");
        clock
            .slew(Offset::from_millis(5), Leap::None)
            .expect("slew");
        assert_eq!(clock.steps(), vec![Offset::from_secs(3600)]);
        assert_eq!(clock.slews(), vec![Offset::from_millis(5)]);
        assert!(clock.now() >= before + Duration::from_secs(3600));
        clock.set_failing(true);
        let err = clock.step(Offset::from_secs(1)).expect_err("fails");
        assert!(
            err.to_string().contains("stepping the clock by +1.000000s"),
            "{err}"
        );
        assert!(clock.slew(Offset::from_secs(1), Leap::None).is_err());
        assert_eq!(clock.steps().len(), 1);
        assert!(!clock.is_read_only());
    }

    #[test]
    fn the_read_only_clock_changes_nothing() {
        let clock = ReadOnlyClock;
        assert!(clock.is_read_only());
        clock.step(Offset::from_secs(100)).expect("step is a no-op");
        clock
            .slew(Offset::from_millis(1), Leap::Insert)
            .expect("slew is a no-op");
    }

    #[test]
    fn time_constants_are_clamped() {
        assert_eq!(SystemClock::with_time_constant(-3).time_constant, 0);
        assert_eq!(SystemClock::with_time_constant(42).time_constant, 10);
        assert_eq!(SystemClock::new().time_constant, 4);
    }
}
