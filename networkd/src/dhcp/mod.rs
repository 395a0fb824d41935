//! The DHCPv4 client: a pure state machine ([`client`]) and its I/O
//! ([`io`]: one UDP socket and one task per link).

pub mod client;
pub mod io;

pub use client::{Client, Config, Destination, Lease, Output, State};
pub use io::{ClientLink, LeaseEvent, LeaseEventKind, run_client};
