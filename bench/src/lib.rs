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

    /// Sets the wall time the samples took (for calls/s).
    pub fn set_wall(&mut self, wall: Duration) {
        self.wall = wall;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_micros(i));
        }
        s.set_wall(Duration::from_millis(10));
        assert_eq!(s.quantile(0.5), Duration::from_micros(51));
        assert_eq!(s.quantile(0.99), Duration::from_micros(99));
        assert!((s.rate() - 10_000.0).abs() < 1e-6);
    }
}
