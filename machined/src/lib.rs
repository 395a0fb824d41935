//! machined: PID 1 and the supervisor of every other daemon.
//!
//! Modules, each owning one thing: [`reaper`] (every `waitpid`),
//! [`supervisor`] (services), [`logbuf`] (log rings and files), [`events`]
//! (the Events stream), [`configstore`] (the machine config), [`files`] and
//! [`stats`] and [`kmsg`] (what the API reads), [`server`] (the
//! MachineService edge), [`node`] (shared state) and [`run`] (start-up and
//! shutdown).
#![deny(unsafe_code)]

pub mod boot;
pub mod bootloader;
pub mod cgroups;
pub mod configstore;
pub mod cosi;
pub mod credentials;
pub mod daemons;
pub mod events;
pub mod files;
pub mod hardware;
pub mod health;
pub mod install;
pub mod kernelparams;
pub mod kmsg;
pub mod logbuf;
pub mod logship;
pub mod netres;
pub mod netstat;
pub mod node;
pub mod pcap;
pub mod pci;
pub mod powerbutton;
pub mod reaper;
pub mod reset;
pub mod resources;
pub mod run;
pub mod server;
pub mod services;
pub mod stats;
pub mod supervisor;
pub mod userfiles;
pub mod volumes;
pub mod watchdog;

/// A generated config for unit tests.
#[cfg(test)]
mod test_config {
    /// A control plane config, generated once per test binary (keys take a
    /// while in a debug build), with `patch` applied.
    pub(crate) fn patched(patch: &str) -> String {
        static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let base = BASE.get_or_init(|| {
            let now = std::time::SystemTime::now();
            let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
            machinery::generate::generate(
                &bundle,
                &machinery::generate::GenOptions::new("test", "https://127.0.0.1:6443"),
                now,
            )
            .expect("configs")
            .controlplane_yaml
        });
        machinery::generate::apply_patch(base, patch).expect("patch")
    }
}
