//! What several components share.
//!
//! - [`constants`]: the node's well-known paths and ports;
//! - [`config`]: the machine config schema, validation and persistence;
//! - [`pki`], [`secrets`]: certificates, keys, tokens and the secrets bundle;
//! - [`talosconfig`]: the client configuration;
//! - [`generate`]: what `talosctl gen config` writes;
//! - [`grpc`], [`h2`]: gRPC channels and the HTTP/2 plumbing of the proxies;
//! - [`uds`]: unix-socket streams without spurious write wake-ups;
//! - [`base64`]: the codec certificates in configs need;
//! - [`gpt`]: GUID partition tables, their CRCs and GUID text forms;
//! - [`cli`]: the daemons' command lines;
//! - [`mode`]: metal or container, for machined and every daemon;
//! - [`meta`]: the META partition's key/value store (upstream Talos's ADV
//!   format), where upgrades record what to roll back to.
#![deny(unsafe_code)]

pub mod base64;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod constants;
pub mod daemon;
pub mod endian;
pub mod fsutil;
pub mod generate;
pub mod glob;
pub mod gpt;
pub mod grpc;
pub mod h2;
pub mod handoff;
pub mod humanize;
pub mod jsonpatch;
pub mod meta;
pub mod mode;
pub mod pki;
pub mod secrets;
pub mod talosconfig;
pub mod uds;
