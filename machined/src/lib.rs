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
pub mod configstore;
pub mod credentials;
pub mod daemons;
pub mod events;
pub mod files;
pub mod install;
pub mod kmsg;
pub mod logbuf;
pub mod netstat;
pub mod node;
pub mod reaper;
pub mod run;
pub mod server;
pub mod services;
pub mod stats;
pub mod supervisor;
