//! Which NTP servers to use, from the machine config.
//!
//! The live config (machined's copy of the config it runs with, a `try`
//! apply's included) is read again on every sync and every API call, so an
//! applied config takes effect without restarting timed.

use std::fmt;
use std::path::{Path, PathBuf};

use machinery::config::{DEFAULT_TIME_SERVER, MachineConfig};
use machinery::constants::NodePaths;

/// The time settings timed acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeConfig {
    /// `machine.time.disabled`: timed leaves the clock alone.
    pub disabled: bool,
    /// The servers, in order of preference (the config's, whether sync is
    /// on or not: `Time` asks the first one either way).
    pub servers: Vec<String>,
    /// `bootTimeout`: time counts as synced once the node has been up this
    /// long without a server answering (`None`: only a server's answer).
    pub boot_timeout: Option<std::time::Duration>,
}

impl TimeConfig {
    /// The settings of a node without a machine config (maintenance mode):
    /// the default server, as upstream.
    #[must_use]
    pub fn defaults() -> TimeConfig {
        TimeConfig::with_servers([DEFAULT_TIME_SERVER])
    }

    /// Sync enabled with `servers`.
    #[must_use]
    pub fn with_servers<I, S>(servers: I) -> TimeConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TimeConfig {
            disabled: false,
            servers: servers.into_iter().map(Into::into).collect(),
            boot_timeout: None,
        }
    }

    /// Sync disabled, no server named (the default one is listed).
    #[must_use]
    pub fn disabled() -> TimeConfig {
        TimeConfig {
            disabled: true,
            ..TimeConfig::defaults()
        }
    }

    /// The settings in a machine config.
    #[must_use]
    pub fn from_machine_config(config: &MachineConfig) -> TimeConfig {
        TimeConfig {
            disabled: config.time_disabled(),
            servers: config.configured_time_servers(),
            // 0 is no timeout, as upstream.
            boot_timeout: config.time_boot_timeout().filter(|t| !t.is_zero()),
        }
    }
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig::defaults()
    }
}

/// Where the time settings come from (read on every use).
pub trait ConfigSource: Send + Sync + fmt::Debug {
    /// The current settings.
    fn time_config(&self) -> TimeConfig;
}

/// Fixed settings (tests, tools).
impl ConfigSource for TimeConfig {
    fn time_config(&self) -> TimeConfig {
        self.clone()
    }
}

/// The node's live machine config: machined's copy of the config it runs
/// with ([`NodePaths::live_config`]), a `try` apply's while it lasts.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    path: PathBuf,
}

impl LiveConfig {
    /// The config at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> LiveConfig {
        LiveConfig { path: path.into() }
    }

    /// The node's live config.
    #[must_use]
    pub fn for_node(paths: &NodePaths) -> LiveConfig {
        LiveConfig::new(paths.live_config())
    }

    /// The file read.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ConfigSource for LiveConfig {
    /// No file yet (maintenance mode): the default server. A file that
    /// does not load (machined validates before writing it, so this should
    /// not happen): a warning and the default server, so the clock still
    /// gets set.
    fn time_config(&self) -> TimeConfig {
        if !self.path.exists() {
            return TimeConfig::defaults();
        }
        match machinery::config::load(&self.path) {
            Ok(config) => TimeConfig::from_machine_config(&config),
            Err(e) => {
                tracing::warn!(error = %e, "using the default NTP server");
                TimeConfig::defaults()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_config_the_default_server_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = LiveConfig::for_node(&NodePaths::under(dir.path()));
        assert_eq!(
            source.path(),
            dir.path().join("system/run/config/config.yaml").as_path()
        );
        assert_eq!(
            source.time_config(),
            TimeConfig::with_servers(["time.cloudflare.com"])
        );
    }

    #[test]
    fn an_unreadable_config_falls_back_to_the_default_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "not: [valid").expect("write");
        assert_eq!(LiveConfig::new(&path).time_config(), TimeConfig::defaults());
    }

    #[test]
    fn fixed_settings() {
        assert!(TimeConfig::disabled().time_config().disabled);
        assert_eq!(
            TimeConfig::with_servers(["a", "b"]).time_config().servers,
            vec!["a", "b"]
        );
    }
}
