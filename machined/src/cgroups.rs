//! Control groups (v2) for the services, on metal.
//!
//! machined mounts the unified hierarchy at `/sys/fs/cgroup` as it boots
//! and, as upstream, gives each service its own group under `system`:
//! `/sys/fs/cgroup/system/<id>`. The kernel then counts each service's
//! memory, CPU, I/O and processes on its own (`talosctl read
//! /sys/fs/cgroup/system/apid/memory.current`), and a service that stops
//! takes everything it started with it, even processes that left its
//! process group: the whole group is killed (`cgroup.kill`).
//!
//! machined itself stays in the root group (a group with controllers
//! enabled for its children may hold no process). In container mode nothing
//! here runs: the host's groups are not ours to change.

use std::io;
use std::path::{Path, PathBuf};

/// Where the unified hierarchy is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The group under the root that holds one group per service.
pub const SYSTEM: &str = "system";

/// The controllers handed down to the services' groups, when the kernel
/// has them.
pub const CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

/// Errors preparing the hierarchy.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct CgroupError {
    /// What was done.
    pub op: &'static str,
    /// Where.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError { op, path, source }
}

/// Whether `root` is a cgroup v2 hierarchy.
#[must_use]
pub fn is_unified(root: &Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// Enables [`CONTROLLERS`] (those the kernel offers) for the children of
/// `root` and of `root/system`, and makes `root/system`. Returns the
/// services' parent group.
///
/// # Errors
/// A file of the hierarchy cannot be read or written.
pub fn prepare(root: &Path) -> Result<PathBuf, CgroupError> {
    let offered_path = root.join("cgroup.controllers");
    let offered = std::fs::read_to_string(&offered_path).map_err(at("reading", &offered_path))?;
    let enable: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    let system = root.join(SYSTEM);
    std::fs::create_dir_all(&system).map_err(at("creating", &system))?;
    if !enable.is_empty() {
        let line = enable.join(" ");
        for group in [root, system.as_path()] {
            let control = group.join("cgroup.subtree_control");
            std::fs::write(&control, &line).map_err(at("writing", &control))?;
        }
    }
    Ok(system)
}

/// Makes the child of `cmd` join the group `dir` before it runs its
/// program: the group's `cgroup.procs` is opened here, and the child
/// writes `0` (itself) to it between fork and exec. Nothing the service
/// does happens outside its group, and no other process can be moved by
/// mistake, as a pid written after the fork could already be reused. A
/// child that cannot join runs on in machined's group.
///
/// # Errors
/// The group cannot be made or its `cgroup.procs` opened.
#[allow(unsafe_code)]
pub fn join_at_exec(cmd: &mut std::process::Command, dir: &Path) -> Result<(), CgroupError> {
    use std::os::unix::process::CommandExt as _;

    std::fs::create_dir_all(dir).map_err(at("creating", dir))?;
    let procs = dir.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(at("opening", &procs))?;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one write(2) to a
    // descriptor opened before the fork (close-on-exec, so the program
    // never sees it) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let _ = rustix::io::write(&file, b"0");
            Ok(())
        });
    }
    Ok(())
}

/// Kills every process in the group `dir` (`cgroup.kill`, Linux 5.14). A
/// group that is gone has nothing to kill.
///
/// # Errors
/// The kernel refused.
pub fn kill(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.kill");
    match std::fs::write(&file, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(at("writing", &file)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_hands_down_what_the_kernel_offers() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        assert!(!is_unified(root));
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb\n",
        )
        .expect("controllers");
        assert!(is_unified(root));
        let system = prepare(root).expect("prepare");
        assert_eq!(system, root.join("system"));
        for group in [root, system.as_path()] {
            assert_eq!(
                std::fs::read_to_string(group.join("cgroup.subtree_control")).expect("control"),
                "+cpu +io +memory"
            );
        }
        // The child joins by writing 0 to cgroup.procs before its program
        // runs (a regular file here stands in for the kernel's).
        std::fs::create_dir_all(system.join("apid")).expect("group");
        std::fs::write(system.join("apid/cgroup.procs"), "").expect("procs");
        let mut cmd = std::process::Command::new("true");
        join_at_exec(&mut cmd, &system.join("apid")).expect("join");
        assert!(cmd.status().expect("true runs").success());
        assert_eq!(
            std::fs::read_to_string(system.join("apid/cgroup.procs")).expect("procs"),
            "0"
        );
        // A directory that is no group (no cgroup.procs) is refused.
        let e = join_at_exec(
            &mut std::process::Command::new("true"),
            &system.join("fake"),
        )
        .expect_err("no cgroup.procs");
        assert!(e.to_string().starts_with("opening "), "{e}");
        kill(&system.join("apid")).expect("kill");
        assert_eq!(
            std::fs::read_to_string(system.join("apid/cgroup.kill")).expect("kill"),
            "1"
        );
        kill(&system.join("gone/deeper")).expect("a missing group has nothing to kill");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = prepare(dir.path()).expect_err("no hierarchy");
        assert!(e.to_string().starts_with("reading "), "{e}");
        assert!(e.to_string().contains("cgroup.controllers"), "{e}");
    }
}
