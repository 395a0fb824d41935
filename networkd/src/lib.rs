//! Links, addresses, routes, DHCP, hostname and resolvers; serves network.NetworkService.
//!
//! Not built yet: this crate holds its place in the workspace until its issue
//! (#6) lands. Its binary says so and exits with status 2.
#![forbid(unsafe_code)]

/// The message the placeholder binary prints.
#[must_use]
pub fn not_built_yet() -> String {
    format!(
        "networkd {}: not built yet (tracked in issue #6)",
        machinery::constants::VERSION
    )
}
