//! What several components share.
//!
//! Today: the node's well-known paths and ports ([`constants`]), the machine
//! config schema with its validation and persistence ([`config`]), and the
//! base64 codec the config's certificates need ([`base64`]). talosconfig, PKI
//! and gRPC client helpers join as the components that need them land.
#![forbid(unsafe_code)]

pub mod base64;
pub mod config;
pub mod constants;
pub mod grpc;
pub mod h2;
