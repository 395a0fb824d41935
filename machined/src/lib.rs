//! PID 1 and service supervisor; serves machine.MachineService.
//!
//! Not built yet: this crate holds its place in the workspace until its issue
//! (#3) lands. Its binary says so and exits with status 2.
#![forbid(unsafe_code)]

/// The message the placeholder binary prints.
#[must_use]
pub fn not_built_yet() -> String {
    format!(
        "machined {}: not built yet (tracked in issue #3)",
        machinery::constants::VERSION
    )
}
