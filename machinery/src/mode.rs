//! How a node runs, for machined and every daemon: on a machine of its
//! own (`metal`), or as ordinary processes beside a host that owns the
//! hardware, the network and the clock (`container`). machined passes it
//! to each daemon as `--mode`.

use std::fmt;
use std::str::FromStr;

/// How the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// machined is PID 1 on a VM or hardware; the daemons own what they
    /// manage (links, the clock, `/dev/disk`).
    #[default]
    Metal,
    /// Ordinary processes with a state directory (tests, `process`
    /// clusters): the host owns the hardware, the network and the clock,
    /// and the daemons only report on them.
    Container,
}

impl Mode {
    /// Its name: upstream's platform mode, and the value of `--mode`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Metal => "metal",
            Mode::Container => "container",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "metal" => Ok(Mode::Metal),
            "container" => Ok(Mode::Container),
            other => Err(format!(
                "unknown mode {other:?} (expected \"metal\" or \"container\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for mode in [Mode::Metal, Mode::Container] {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(Mode::default(), Mode::Metal);
        let err = "Metal".parse::<Mode>().expect_err("names are lower case");
        assert!(
            err.contains("\"Metal\"") && err.contains("\"container\""),
            "{err}"
        );
    }
}
