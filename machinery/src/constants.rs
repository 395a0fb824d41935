//! Well-known paths, ports and names of a node.
//!
//! Paths are node paths (on metal, `/system` is a tmpfs); in container mode
//! every path is re-rooted under the node's state directory with
//! [`NodePaths::under`].

use std::path::{Path, PathBuf};

/// apid's TCP port (mTLS, the only door into a node).
pub const APID_PORT: u16 = 50000;
/// trustd's TCP port (server-only TLS plus the machine token).
pub const TRUSTD_PORT: u16 = 50001;

/// The version string every component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// File names of the API credentials in [`NodePaths::secrets_dir`]`("api")`.
pub mod api_credentials {
    /// The OS CA certificate (PEM): client certificates must chain to it.
    pub const CA: &str = "ca.crt";
    /// apid's server certificate (PEM).
    pub const SERVER_CERT: &str = "server.crt";
    /// apid's server key (PEM).
    pub const SERVER_KEY: &str = "server.key";
    /// The node's client certificate for forwarding (`os:impersonator`).
    pub const CLIENT_CERT: &str = "client.crt";
    /// The node's client key.
    pub const CLIENT_KEY: &str = "client.key";
    /// Present while the node has no machine config: apid serves
    /// maintenance mode (self-signed, everyone `os:reader`).
    pub const MAINTENANCE: &str = "maintenance";
}

/// File names of trustd's credentials in [`NodePaths::secrets_dir`]`("trustd")`.
pub mod trustd_credentials {
    /// The OS CA certificate.
    pub const CA: &str = "ca.crt";
    /// The OS CA key (trustd signs with it).
    pub const CA_KEY: &str = "ca.key";
    /// trustd's server certificate.
    pub const SERVER_CERT: &str = "server.crt";
    /// trustd's server key.
    pub const SERVER_KEY: &str = "server.key";
    /// The machine token workers present.
    pub const TOKEN: &str = "token";
}

/// Programs in the root's `/usr/bin`, run by machined on demand (the
/// daemons are not there: machined's executable carries them).
pub const TOOLS: &[&str] = &["installer"];

/// Where the root keeps the public keys whose installer images it trusts
/// (`*.pub`, SubjectPublicKeyInfo PEM, written by imager).
pub const TRUSTED_KEYS_DIR: &str = "/usr/share/talos-rs/keys";

/// Where the root keeps the STATE and EPHEMERAL filesystem templates
/// (`installer::files` names them): machined formats a blank STATE or
/// EPHEMERAL partition of its installation from them, as after a reset.
pub const FS_TEMPLATES_DIR: &str = "/usr/share/talos-rs/templates";

/// Where a node keeps its runtime files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    root: PathBuf,
}

impl NodePaths {
    /// The paths of a metal node (rooted at `/`).
    #[must_use]
    pub fn metal() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }

    /// The paths of a container-mode node whose state directory is `root`.
    #[must_use]
    pub fn under(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root every path hangs from.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `/system/run`: sockets and runtime state, recreated every boot.
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("system/run")
    }

    /// The directory holding a daemon's socket (`/system/run/<daemon>`).
    #[must_use]
    pub fn socket_dir(&self, daemon: &str) -> PathBuf {
        self.run_dir().join(daemon)
    }

    /// A daemon's unix socket (`/system/run/<daemon>/<daemon>.sock`).
    #[must_use]
    pub fn socket(&self, daemon: &str) -> PathBuf {
        self.socket_dir(daemon).join(format!("{daemon}.sock"))
    }

    /// `/system/run/config/config.yaml`: machined's copy of the live machine
    /// config (a `try` apply's while it lasts; not a `staged` one), what
    /// networkd and timed read. Absent in maintenance mode.
    #[must_use]
    pub fn live_config(&self) -> PathBuf {
        self.run_dir()
            .join("config")
            .join(crate::config::CONFIG_FILE_NAME)
    }

    /// `/system/state`: the persisted machine config (the STATE partition).
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("system/state")
    }

    /// `/system/secrets/<component>`: credentials handed to a daemon
    /// (tmpfs on metal; never persisted).
    #[must_use]
    pub fn secrets_dir(&self, component: &str) -> PathBuf {
        self.root.join("system/secrets").join(component)
    }

    /// `/var/log`: persisted service logs (the EPHEMERAL partition).
    #[must_use]
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("var/log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metal_paths_match_the_architecture() {
        let p = NodePaths::metal();
        assert_eq!(
            p.socket("machined"),
            Path::new("/system/run/machined/machined.sock")
        );
        assert_eq!(
            p.socket("routerd"),
            Path::new("/system/run/routerd/routerd.sock")
        );
        assert_eq!(p.state_dir(), Path::new("/system/state"));
        assert_eq!(p.log_dir(), Path::new("/var/log"));
    }

    #[test]
    fn container_paths_are_rerooted() {
        let p = NodePaths::under("/tmp/node1");
        assert_eq!(
            p.socket("apid"),
            Path::new("/tmp/node1/system/run/apid/apid.sock")
        );
        assert_eq!(p.log_dir(), Path::new("/tmp/node1/var/log"));
    }
}
