//! The daemons machined's own executable carries.
//!
//! In the boot image, `/init` (machined) is the only daemon executable: the
//! other daemons are linked into it, and a process runs the one it was
//! started as (`argv[0]`), as upstream Talos's init does for apid and
//! trustd. machined starts a daemon by executing [`OWN_EXECUTABLE`] with
//! the daemon's name as `argv[0]`, in either mode, unless `--bin-dir`
//! names a directory of separate binaries.
//!
//! Why: what the daemons share (tokio, hyper, h2, tonic, prost, rustls,
//! std) is then in the image once instead of seven times, and a daemon
//! starts on pages that are already in memory (the initramfs is unpacked
//! into RAM) and, under QEMU's software emulation, on code already
//! translated for machined. The squashfs no longer holds the daemons; it
//! keeps the installer and the files the daemons read.
//!
//! Each daemon still has its own crate and binary, which `--bin-dir` runs
//! (the `process` provisioner of `talosctl cluster create` passes it) and
//! the daemons' own tests start.

use std::ffi::{CString, OsStr};
use std::path::Path;
use std::process::ExitCode;

/// What machined executes to start a daemon it carries: itself, through
/// the kernel's link, which works after the root switch has hidden
/// `/init` from every path.
pub const OWN_EXECUTABLE: &str = "/proc/self/exe";

/// A daemon's entry point: parses the process's command line, then runs.
pub type Entry = fn() -> ExitCode;

/// The daemons this executable carries, by the name they are started as,
/// in the order machined starts them (see [`crate::services`]): a daemon
/// machined runs is one it carries, so started as its name this
/// executable never runs as another machined.
pub const CARRIED: &[(&str, Entry)] = &[
    ("udevd", udevd::cli::main),
    ("networkd", networkd::cli::main),
    ("timed", timed::cli::main),
    ("routerd", routerd::cli::main),
    ("apid", apid::cli::main),
    ("trustd", trustd::cli::main),
];

/// The daemon a process started as `argv0` runs (its file name is what
/// counts) and its entry point, or `None` for machined itself.
#[must_use]
pub fn carried(argv0: &OsStr) -> Option<(&'static str, Entry)> {
    let name = Path::new(argv0).file_name()?;
    CARRIED
        .iter()
        .find(|(daemon, _)| OsStr::new(daemon) == name)
        .copied()
}

/// Runs the daemon this process was started as, if machined carries it:
/// `Some(its exit status)`; `None` for machined itself.
#[must_use]
pub fn run_if_carried() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    let (daemon, entry) = carried(&argv0)?;
    // Executed as /proc/self/exe, the kernel names the process "exe";
    // `ps`, /proc/PID/comm and `talosctl processes` should say which
    // daemon it is. Best effort: a wrong name stops nothing.
    if let Ok(name) = CString::new(daemon) {
        let _ = rustix::thread::set_name(&name);
    }
    Some(entry())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_by_the_file_name_of_argv0() {
        for (argv0, expected) in [
            ("apid", "apid"),
            ("/usr/bin/routerd", "routerd"),
            ("trustd", "trustd"),
            ("networkd", "networkd"),
        ] {
            let found = carried(OsStr::new(argv0)).map(|(daemon, _)| daemon);
            assert_eq!(found, Some(expected), "{argv0}");
        }
        // machined itself, as PID 1 and otherwise.
        for argv0 in ["/init", "machined", "/usr/bin/machined", "", "apid-x", "/"] {
            assert!(carried(OsStr::new(argv0)).is_none(), "{argv0:?}");
        }
    }
}
