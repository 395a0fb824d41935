//! machined: PID 1 and the supervisor of every other daemon.
#![forbid(unsafe_code)]

pub mod logbuf;
pub mod reaper;
pub mod supervisor;
