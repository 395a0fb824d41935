//! The command-line client of the node API.
//!
//! Not built yet: this crate holds its place in the workspace until its issue
//! (#5) lands. Its binary says so and exits with status 2.
#![forbid(unsafe_code)]

/// The message the placeholder binary prints.
#[must_use]
pub fn not_built_yet() -> String {
    format!(
        "talosctl {}: not built yet (tracked in issue #5)",
        machinery::constants::VERSION
    )
}
