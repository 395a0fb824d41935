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
//!
//! The groups get upstream's reservations and limits ([`limits_for`]):
//! `system` and the API's daemons are protected from memory reclaim up to a
//! size (`memory.min`, `memory.low`) and weighted for CPU (`cpu.weight`,
//! from upstream's millicores), apid, routerd and trustd may not grow past
//! 128 MiB (`memory.max`), and those daemons never swap. A runaway
//! workload, or a runaway daemon, cannot starve the API that would stop it.

use std::io;
use std::path::{Path, PathBuf};

/// Where the unified hierarchy is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The group under the root that holds one group per service.
pub const SYSTEM: &str = "system";

/// The controllers handed down to the services' groups, when the kernel
/// has them.
pub const CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

const MIB: u64 = 1024 * 1024;

/// A group's reservations and limits (upstream's values; `None` leaves the
/// kernel's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// `memory.min`: memory never reclaimed from the group.
    pub min: Option<u64>,
    /// `memory.low`: memory reclaimed only under pressure from elsewhere.
    pub low: Option<u64>,
    /// `memory.max`: the group's hard limit.
    pub max: Option<u64>,
    /// `memory.swap.max` (where the kernel counts swap).
    pub swap_max: Option<u64>,
    /// CPU share as upstream's millicores, turned into `cpu.weight`.
    pub millicores: Option<u64>,
}

/// The limits of the group `name` (`system`, or a service's id under it):
/// upstream's for `system`, apid, trustd and udevd; routerd, on the API's
/// path, gets apid's.
#[must_use]
pub fn limits_for(name: &str) -> Limits {
    let reserved = |min: u64| Limits {
        min: Some(min),
        low: Some(min * 2),
        swap_max: Some(0),
        ..Limits::default()
    };
    match name {
        SYSTEM => Limits {
            swap_max: None,
            millicores: Some(1500),
            ..reserved(96 * MIB)
        },
        "apid" | "routerd" => Limits {
            max: Some(128 * MIB),
            millicores: Some(500),
            ..reserved(16 * MIB)
        },
        "trustd" => Limits {
            max: Some(128 * MIB),
            millicores: Some(250),
            ..reserved(8 * MIB)
        },
        "udevd" => Limits {
            millicores: Some(250),
            ..reserved(8 * MIB)
        },
        _ => Limits::default(),
    }
}

/// `cpu.weight` for `millicores` on a machine of `cores` CPUs, as upstream
/// (and the kubelet) compute it: capped at the CPUs there are, turned into
/// cgroup v1 shares, then mapped onto v2's 1 to 10000.
#[must_use]
pub fn cpu_weight(millicores: u64, cores: u64) -> u64 {
    let requested = millicores.min(cores.max(1) * 1000);
    let shares = (requested * 1024 / 1000).max(2);
    (shares - 2) * 9999 / 262_142 + 1
}

/// Writes `limits` into the group `dir`. An interface file the kernel does
/// not offer (a controller not enabled, no swap accounting) is passed over.
///
/// # Errors
/// The kernel refused a value.
pub fn apply_limits(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let values = [
        ("memory.min", limits.min),
        ("memory.low", limits.low),
        ("memory.max", limits.max),
        ("memory.swap.max", limits.swap_max),
        (
            "cpu.weight",
            limits.millicores.map(|m| cpu_weight(m, cores)),
        ),
    ];
    for (file, value) in values {
        let Some(value) = value else { continue };
        let path = dir.join(file);
        // Never created: only the kernel's own files are written.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.to_string().as_bytes()));
        match written {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.map_err(at("writing", &path))?,
        }
    }
    Ok(())
}

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
/// `root` and of `root/system`, and makes `root/system` with its
/// [`limits_for`]. Returns the services' parent group.
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
    apply_limits(&system, &limits_for(SYSTEM))?;
    Ok(system)
}

/// Makes the child of `cmd` join the group `dir` before it runs its
/// program: the group's `cgroup.procs` is opened here, and the child
/// writes `0` (itself) to it between fork and exec. Nothing the service
/// does happens outside its group, and no other process can be moved by
/// mistake, as a pid written after the fork could already be reused. A
/// child that cannot join runs on in machined's group. The group gets the
/// [`limits_for`] its name first.
///
/// # Errors
/// The group cannot be made or its `cgroup.procs` opened.
#[allow(unsafe_code)]
pub fn join_at_exec(cmd: &mut std::process::Command, dir: &Path) -> Result<(), CgroupError> {
    use std::os::unix::process::CommandExt as _;

    std::fs::create_dir_all(dir).map_err(at("creating", dir))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    apply_limits(dir, &limits_for(name))?;
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
        assert!(crate::reaper::run_to_end(&mut cmd).success());
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
    fn cpu_weights_as_upstream() {
        // 1000 millicores are 1024 shares: weight 39 (the kubelet's too).
        assert_eq!(cpu_weight(1000, 4), 39);
        assert_eq!(cpu_weight(500, 4), 20);
        assert_eq!(cpu_weight(250, 4), 10);
        // Capped at the CPUs there are.
        assert_eq!(cpu_weight(1500, 1), cpu_weight(1000, 1));
        assert_eq!(cpu_weight(1500, 2), 59);
        assert_eq!(cpu_weight(0, 2), 1, "the least weight");
    }

    #[test]
    fn limits_are_written_only_where_the_kernel_offers_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let group = dir.path();
        for f in ["memory.min", "memory.low", "memory.max", "cpu.weight"] {
            std::fs::write(group.join(f), "").expect("interface file");
        }
        apply_limits(group, &limits_for("apid")).expect("apply");
        let read = |f: &str| std::fs::read_to_string(group.join(f)).expect("read");
        assert_eq!(read("memory.min"), (16 * MIB).to_string());
        assert_eq!(read("memory.low"), (32 * MIB).to_string());
        assert_eq!(read("memory.max"), (128 * MIB).to_string());
        assert!(
            read("cpu.weight")
                .parse::<u64>()
                .is_ok_and(|w| (1..=20).contains(&w))
        );
        assert!(
            !group.join("memory.swap.max").exists(),
            "no swap accounting here: the file is not made up"
        );
        assert_eq!(limits_for("networkd"), Limits::default());
        assert_eq!(limits_for(SYSTEM).max, None, "system has no hard limit");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = prepare(dir.path()).expect_err("no hierarchy");
        assert!(e.to_string().starts_with("reading "), "{e}");
        assert!(e.to_string().contains("cgroup.controllers"), "{e}");
    }
}
