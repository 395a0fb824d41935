//! Helpers for the benchmarks: timing samples and their summary.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Latency samples of one scenario.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    durations: Vec<Duration>,
    wall: Duration,
}

impl Samples {
    /// Records one call.
    pub fn push(&mut self, d: Duration) {
        self.durations.push(d);
    }

    /// How many calls are recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.durations.len()
    }

    /// Whether no call is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.durations.is_empty()
    }

    /// Sets the wall time the samples took (for calls/s).
    pub fn set_wall(&mut self, wall: Duration) {
        self.wall = wall;
    }

    /// Adds wall time (for samples taken in several stretches).
    pub fn add_wall(&mut self, wall: Duration) {
        self.wall += wall;
    }

    /// The `q` quantile (0..=1).
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.durations.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// How much higher this median is than `base`'s, in µs.
    #[must_use]
    pub fn p50_over_us(&self, base: &Samples) -> f64 {
        (self.quantile(0.5).as_secs_f64() - base.quantile(0.5).as_secs_f64()) * 1e6
    }

    /// Calls per second over the wall time.
    #[must_use]
    pub fn rate(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.durations.len() as f64 / self.wall.as_secs_f64()
        }
    }

    /// One report line.
    #[must_use]
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<44} n={:<6} p50={:>8.1}µs  p99={:>8.1}µs  {:>9.0} calls/s",
            self.durations.len(),
            self.quantile(0.5).as_secs_f64() * 1e6,
            self.quantile(0.99).as_secs_f64() * 1e6,
            self.rate()
        )
    }
}

/// What a process has used so far, over all its threads: CPU time and
/// context switches (from `/proc/PID/task/*/schedstat` and `status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Time on a CPU, in nanoseconds.
    pub cpu_ns: u64,
    /// Voluntary and involuntary context switches.
    pub switches: u64,
}

impl Usage {
    /// The usage of process `pid` (zero if it is gone).
    #[must_use]
    pub fn of(pid: u32) -> Usage {
        let mut total = Usage::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return total;
        };
        for task in tasks.flatten() {
            let path = task.path();
            if let Ok(s) = std::fs::read_to_string(path.join("schedstat")) {
                total.cpu_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(path.join("status")) {
                total.switches += switches_in_status(&s);
            }
        }
        total
    }

    /// Adds what was used between `earlier` and `later` (for usage
    /// gathered in several stretches).
    pub fn add_since(&mut self, later: &Usage, earlier: &Usage) {
        self.cpu_ns += later.cpu_ns.saturating_sub(earlier.cpu_ns);
        self.switches += later.switches.saturating_sub(earlier.switches);
    }

    /// What was used between `earlier` and `self`, per call of `calls`:
    /// (CPU µs, context switches).
    #[must_use]
    pub fn per_call_since(&self, earlier: &Usage, calls: usize) -> (f64, f64) {
        let n = calls.max(1) as f64;
        (
            self.cpu_ns.saturating_sub(earlier.cpu_ns) as f64 / 1e3 / n,
            self.switches.saturating_sub(earlier.switches) as f64 / n,
        )
    }
}

/// The sum of `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches`
/// in a `/proc/.../status` text.
fn switches_in_status(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process_grows_with_work() {
        // Spins until 20 ms of CPU time show (or 10 s pass, on a machine
        // too busy to give this thread 20 ms).
        let before = Usage::of(std::process::id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0_u64;
        let cpu_us = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let (cpu_us, _) = Usage::of(std::process::id()).per_call_since(&before, 1);
            if cpu_us >= 20_000.0 || std::time::Instant::now() > deadline {
                break cpu_us;
            }
        };
        assert!(
            cpu_us >= 20_000.0,
            "10 s of spinning counted as {cpu_us} µs"
        );
        assert_eq!(Usage::of(u32::MAX), Usage::default());
    }

    #[test]
    fn switches_are_summed() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(switches_in_status(status), 15);
        let mut total = Usage::default();
        let (a, b, c) = (
            Usage {
                cpu_ns: 1_000,
                switches: 1,
            },
            Usage {
                cpu_ns: 4_000,
                switches: 3,
            },
            Usage {
                cpu_ns: 10_000,
                switches: 4,
            },
        );
        total.add_since(&b, &a);
        total.add_since(&c, &b);
        assert_eq!(
            total,
            Usage {
                cpu_ns: 9_000,
                switches: 3
            }
        );
        assert_eq!(total.per_call_since(&Usage::default(), 3), (3.0, 1.0));
    }

    #[test]
    fn quantiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_micros(i));
        }
        s.set_wall(Duration::from_millis(4));
        s.add_wall(Duration::from_millis(6));
        assert_eq!(s.quantile(0.5), Duration::from_micros(51));
        assert_eq!(s.quantile(0.99), Duration::from_micros(99));
        assert!((s.rate() - 10_000.0).abs() < 1e-6);
        let mut base = Samples::default();
        base.push(Duration::from_micros(1));
        assert!((s.p50_over_us(&base) - 50.0).abs() < 1e-6);
    }
}
