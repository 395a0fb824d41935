//! Builds the boot image and installer; installs and upgrades a disk.
//!
//! Not built yet: this crate holds its place in the workspace until its issue
//! (#7) lands. Its binary says so and exits with status 2.
#![forbid(unsafe_code)]

/// The message the placeholder binary prints.
#[must_use]
pub fn not_built_yet() -> String {
    format!(
        "imager {}: not built yet (tracked in issue #7)",
        machinery::constants::VERSION
    )
}
