//! The mTLS front door on :50000; authorizes and routes calls.
//!
//! Not built yet: this crate holds its place in the workspace until its issue
//! (#4) lands. Its binary says so and exits with status 2.
#![forbid(unsafe_code)]

/// The message the placeholder binary prints.
#[must_use]
pub fn not_built_yet() -> String {
    format!(
        "apid {}: not built yet (tracked in issue #4)",
        machinery::constants::VERSION
    )
}
