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

/// Moves process `pid` into the group `dir`, making the group first.
///
/// # Errors
/// The group cannot be made or the process moved.
pub fn place(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(at("creating", dir))?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(at("writing", &procs))
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
        place(&system.join("apid"), 42).expect("place");
        assert_eq!(
            std::fs::read_to_string(system.join("apid/cgroup.procs")).expect("procs"),
            "42"
        );
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
