//! What several components share.
//!
//! Today: the node's well-known paths and ports ([`constants`]). The machine
//! config schema, talosconfig, PKI and gRPC client helpers join as the
//! components that need them land.
#![forbid(unsafe_code)]

pub mod constants;
