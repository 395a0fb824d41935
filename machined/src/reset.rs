//! Reset: wiping the node's disks, then rebooting or powering off, as
//! upstream's `Reset`.
//!
//! [`plan`] checks a request against what the node has, before anything
//! stops, with upstream's rules:
//! - no `system_partitions_to_wipe` and a mode other than `USER_DISKS`: the
//!   whole system disk is wiped (and any other disk a volume is on), so
//!   the machine boots from elsewhere (an ISO, PXE) into maintenance mode,
//!   ready to be installed again;
//! - with them: each names a volume (`META`, `STATE`, `EPHEMERAL`) that
//!   must be located; those marked `wipe` are wiped. Wiping STATE and
//!   EPHEMERAL leaves the installation bootable but without its config,
//!   so it comes back in maintenance mode;
//! - `user_disks_to_wipe` (device paths) with a mode other than
//!   `SYSTEM_DISK`: each must be a disk the node has, writable, and not the
//!   system disk.
//!
//! The messages are upstream's. Upstream answers all of these with
//! `Unknown` (plain errors); here each has the code that says what is
//! wrong. Upstream goes on without a system disk (wiping nothing of it);
//! here a whole reset of a node without one is refused.
//!
//! The wiping itself happens in [`execute`] once the services have
//! stopped: log files are closed, `/var` and the state directory are
//! unmounted, and each target gets a fast wipe ([`installer::wipe`]),
//! opened exclusively so nothing mounted is wiped underneath.
//! `graceful` changes nothing here: there is no etcd member to leave.

use std::path::{Path, PathBuf};

use crate::server::ApiError;

/// Which disks a reset may wipe (upstream's `ResetRequest.WipeMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeMode {
    /// The system disk and the user disks named.
    All,
    /// The system disk only.
    SystemDisk,
    /// The user disks named only.
    UserDisks,
}

/// A reset request, checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRequest {
    /// Reboot afterwards (else power off).
    pub reboot: bool,
    /// Which disks may be wiped.
    pub mode: WipeMode,
    /// System volumes by label, and whether to wipe each.
    pub system_partitions: Vec<(String, bool)>,
    /// Device paths of user disks to wipe (`/dev/sdb`).
    pub user_disks: Vec<String>,
}

impl ResetRequest {
    /// The domain request from the wire one.
    ///
    /// # Errors
    /// [`ApiError::InvalidArgument`] for a mode the API does not define.
    pub fn from_wire(request: &api::machine::ResetRequest) -> Result<ResetRequest, ApiError> {
        use api::machine::reset_request::WipeMode as Wire;
        let mode = match Wire::try_from(request.mode) {
            Ok(Wire::All) => WipeMode::All,
            Ok(Wire::SystemDisk) => WipeMode::SystemDisk,
            Ok(Wire::UserDisks) => WipeMode::UserDisks,
            Err(_) => {
                return Err(ApiError::InvalidArgument(format!(
                    "unknown wipe mode {}",
                    request.mode
                )));
            }
        };
        Ok(ResetRequest {
            reboot: request.reboot,
            mode,
            system_partitions: request
                .system_partitions_to_wipe
                .iter()
                .map(|s| (s.label.clone(), s.wipe))
                .collect(),
            user_disks: request.user_disks_to_wipe.clone(),
        })
    }
}

/// What the node has, as a reset needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The system disk's device path (`/dev/vda`), if there is one.
    pub system_disk: Option<String>,
    /// Each volume (`META`, `STATE`, `EPHEMERAL`), its location (a device
    /// path; empty when it is missing) and the disk it is on (empty when
    /// it is missing or a whole disk).
    pub volumes: Vec<(String, String, String)>,
    /// Each disk's device path and whether it is read-only.
    pub disks: Vec<(String, bool)>,
}

/// One device to wipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipeTarget {
    /// What it is, for the log (`the system disk`, `volume STATE`...).
    pub what: String,
    /// The device.
    pub device: PathBuf,
}

/// A checked reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetPlan {
    /// Reboot afterwards (else power off).
    pub reboot: bool,
    /// What to wipe, in order.
    pub targets: Vec<WipeTarget>,
}

/// Checks `request` against `facts`.
///
/// # Errors
/// [`ApiError::InvalidArgument`] for a request that contradicts itself or
/// names the system disk as a user disk, [`ApiError::NotFound`] for a
/// volume or disk the node does not have, [`ApiError::FailedPrecondition`]
/// for a volume that is not located, a read-only disk, or a whole-disk
/// reset of a node without a system disk.
pub fn plan(request: &ResetRequest, facts: &Facts) -> Result<ResetPlan, ApiError> {
    // Upstream's order of checks: the user disks first; they are wiped
    // after the system's.
    let mut user_targets = Vec::new();
    if !request.user_disks.is_empty() {
        if request.mode == WipeMode::SystemDisk {
            return Err(ApiError::InvalidArgument(
                "reset failed: invalid input, wipe mode SYSTEM_DISK doesn't support UserDisksToWipe parameter".into(),
            ));
        }
        for device in &request.user_disks {
            let Some((_, readonly)) = facts.disks.iter().find(|(path, _)| path == device) else {
                return Err(ApiError::NotFound(format!(
                    "reset user disk failed: device {device} wasn't found"
                )));
            };
            if *readonly {
                return Err(ApiError::FailedPrecondition(format!(
                    "reset user disk failed: device {device} is readonly"
                )));
            }
            if facts.system_disk.as_deref() == Some(device.as_str()) {
                return Err(ApiError::InvalidArgument(format!(
                    "reset user disk failed: device {device} is the system disk"
                )));
            }
            user_targets.push(WipeTarget {
                what: "user disk".into(),
                device: PathBuf::from(device),
            });
        }
    }
    let mut targets: Vec<WipeTarget> = Vec::new();
    if !request.system_partitions.is_empty() {
        if request.mode == WipeMode::UserDisks {
            return Err(ApiError::InvalidArgument(
                "reset failed: invalid input, wipe mode USER_DISKS doesn't support SystemPartitionsToWipe parameter".into(),
            ));
        }
        for (label, wipe) in &request.system_partitions {
            let Some((_, location, _)) = facts.volumes.iter().find(|(id, ..)| id == label) else {
                return Err(ApiError::NotFound(format!(
                    "failed to get volume status with label {label:?}: no such volume (known: {})",
                    facts
                        .volumes
                        .iter()
                        .map(|(id, ..)| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if location.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "failed to reset: volume {label:?} is not located"
                )));
            }
            if *wipe {
                targets.push(WipeTarget {
                    what: format!("volume {label}"),
                    device: PathBuf::from(location),
                });
            }
        }
    } else if request.mode != WipeMode::UserDisks {
        let Some(disk) = &facts.system_disk else {
            return Err(ApiError::FailedPrecondition(
                "reset needs an installed system disk; this node has none".into(),
            ));
        };
        // The system disk, and any other disk a volume lives on (as
        // upstream's system disk paths): a STATE left on another disk
        // would bring the old config back.
        let mut disks = vec![disk.clone()];
        for (_, _, parent) in &facts.volumes {
            if !parent.is_empty() && !disks.contains(parent) {
                disks.push(parent.clone());
            }
        }
        for (i, disk) in disks.into_iter().enumerate() {
            targets.push(WipeTarget {
                what: if i == 0 {
                    "the system disk".into()
                } else {
                    "a disk holding a volume".into()
                },
                device: PathBuf::from(disk),
            });
        }
    }
    for target in user_targets {
        if !targets.iter().any(|t| t.device == target.device) {
            targets.push(target);
        }
    }
    Ok(ResetPlan {
        reboot: request.reboot,
        targets,
    })
}

/// Where a reset unmounts: the node's filesystems on disk.
pub const UNMOUNT: [&str; 2] = [crate::boot::EPHEMERAL_MOUNT, crate::boot::STATE_MOUNT];

/// The mount points at or below any of `tops` in a `/proc/self/mounts`
/// text, deepest (latest) first: the order they can be unmounted in.
#[must_use]
pub fn mounts_below(mounts: &str, tops: &[&str]) -> Vec<String> {
    let mut found: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|at| {
            tops.iter()
                .any(|top| *at == *top || at.strip_prefix(top).is_some_and(|r| r.starts_with('/')))
        })
        .map(str::to_owned)
        .collect();
    found.reverse();
    found
}

/// Carries out `plan` (blocking) once the services have stopped: closes
/// the log files, unmounts the node's disk filesystems, wipes each
/// target. Every step is reported through `report` (the console); a
/// failure is reported and the rest goes on, so the node still goes down.
/// Returns whether every target was wiped.
pub fn execute(plan: &ResetPlan, logs: &crate::logbuf::LogRegistry, report: &dyn Fn(&str)) -> bool {
    logs.close_files();
    if !crate::boot::sync_bounded(crate::boot::SYNC_TIMEOUT) {
        report("reset: sync(2) did not finish within 10 s; going on");
    }
    // The machine.files bind mounts keep /var's filesystem in use.
    let bound = std::mem::take(
        &mut *crate::userfiles::bound()
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    for at in bound.iter().rev() {
        if let Err(e) = rustix::mount::unmount(at, rustix::mount::UnmountFlags::empty()) {
            report(&format!("reset: unmounting {}: {e}", at.display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for at in mounts_below(&mounts, &UNMOUNT) {
        if let Err(e) = rustix::mount::unmount(at.as_str(), rustix::mount::UnmountFlags::empty()) {
            report(&format!("reset: unmounting {at}: {e}"));
        }
    }
    let mut all = true;
    for target in &plan.targets {
        match wipe(&target.device) {
            Ok(()) => report(&format!(
                "reset: {} ({}) wiped",
                target.what,
                target.device.display()
            )),
            Err(e) => {
                all = false;
                report(&format!("reset: wiping {}: {e}", target.what));
            }
        }
    }
    all
}

fn wipe(device: &Path) -> Result<(), installer::target::TargetError> {
    let disk = installer::target::Disk::open_any(device)?;
    installer::wipe::wipe(&disk, installer::wipe::Method::Fast)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            system_disk: Some("/dev/vda".into()),
            volumes: vec![
                ("META".into(), "/dev/vda2".into(), "/dev/vda".into()),
                ("STATE".into(), "/dev/vda3".into(), "/dev/vda".into()),
                ("EPHEMERAL".into(), String::new(), String::new()),
            ],
            disks: vec![
                ("/dev/vda".into(), false),
                ("/dev/vdb".into(), false),
                ("/dev/sr0".into(), true),
            ],
        }
    }

    fn request(mode: WipeMode, labels: &[(&str, bool)], users: &[&str]) -> ResetRequest {
        ResetRequest {
            reboot: true,
            mode,
            system_partitions: labels.iter().map(|(l, w)| ((*l).to_owned(), *w)).collect(),
            user_disks: users.iter().map(|&u| u.to_owned()).collect(),
        }
    }

    fn devices(plan: &ResetPlan) -> Vec<&str> {
        plan.targets
            .iter()
            .map(|t| t.device.to_str().unwrap())
            .collect()
    }

    #[test]
    fn by_default_the_whole_system_disk_and_the_user_disks() {
        let p = plan(&request(WipeMode::All, &[], &["/dev/vdb"]), &facts()).unwrap();
        assert_eq!(devices(&p), ["/dev/vda", "/dev/vdb"]);
        assert_eq!(p.targets[0].what, "the system disk");
        // A volume on another disk: that disk goes too.
        let mut split = facts();
        split.volumes[1] = ("STATE".into(), "/dev/vdc1".into(), "/dev/vdc".into());
        let p = plan(&request(WipeMode::SystemDisk, &[], &[]), &split).unwrap();
        assert_eq!(devices(&p), ["/dev/vda", "/dev/vdc"]);
        assert_eq!(p.targets[1].what, "a disk holding a volume");
        assert!(p.reboot);
        let p = plan(&request(WipeMode::SystemDisk, &[], &[]), &facts()).unwrap();
        assert_eq!(devices(&p), ["/dev/vda"]);
        let p = plan(&request(WipeMode::UserDisks, &[], &["/dev/vdb"]), &facts()).unwrap();
        assert_eq!(devices(&p), ["/dev/vdb"]);
        // Nothing at all to wipe: still a reset (the node goes down).
        let p = plan(&request(WipeMode::UserDisks, &[], &[]), &facts()).unwrap();
        assert!(p.targets.is_empty());
    }

    #[test]
    fn labels_wipe_only_their_volumes() {
        let p = plan(
            &request(WipeMode::All, &[("STATE", true), ("META", false)], &[]),
            &facts(),
        )
        .unwrap();
        assert_eq!(devices(&p), ["/dev/vda3"]);
        assert_eq!(p.targets[0].what, "volume STATE");
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let cases: [(ResetRequest, &str, &str); 8] = [
            (
                request(WipeMode::UserDisks, &[("STATE", true)], &[]),
                "InvalidArgument",
                "wipe mode USER_DISKS doesn't support SystemPartitionsToWipe",
            ),
            (
                request(WipeMode::SystemDisk, &[], &["/dev/vdb"]),
                "InvalidArgument",
                "wipe mode SYSTEM_DISK doesn't support UserDisksToWipe",
            ),
            (
                request(WipeMode::All, &[("BOOT", true)], &[]),
                "NotFound",
                "volume status with label \"BOOT\"",
            ),
            (
                request(WipeMode::All, &[("EPHEMERAL", true)], &[]),
                "FailedPrecondition",
                "volume \"EPHEMERAL\" is not located",
            ),
            (
                request(WipeMode::All, &[], &["/dev/vdz"]),
                "NotFound",
                "device /dev/vdz wasn't found",
            ),
            (
                request(WipeMode::All, &[], &["/dev/sr0"]),
                "FailedPrecondition",
                "device /dev/sr0 is readonly",
            ),
            (
                request(WipeMode::UserDisks, &[], &["/dev/vda"]),
                "InvalidArgument",
                "device /dev/vda is the system disk",
            ),
            (
                request(WipeMode::All, &[], &[]),
                "FailedPrecondition",
                "reset needs an installed system disk",
            ),
        ];
        for (i, (req, code, text)) in cases.iter().enumerate() {
            let facts = if i == 7 {
                Facts {
                    system_disk: None,
                    ..facts()
                }
            } else {
                facts()
            };
            let err = plan(req, &facts).unwrap_err();
            let status = tonic::Status::from(err);
            assert_eq!(format!("{:?}", status.code()), *code, "case {i}");
            assert!(
                status.message().contains(text),
                "case {i}: {}",
                status.message()
            );
        }
    }

    #[test]
    fn unknown_modes_are_invalid() {
        let wire = api::machine::ResetRequest {
            mode: 9,
            ..Default::default()
        };
        let err = ResetRequest::from_wire(&wire).unwrap_err();
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
        let wire = api::machine::ResetRequest {
            reboot: true,
            mode: 2,
            system_partitions_to_wipe: vec![api::machine::ResetPartitionSpec {
                label: "STATE".into(),
                wipe: true,
            }],
            user_disks_to_wipe: vec!["/dev/vdb".into()],
            graceful: true,
        };
        assert_eq!(
            ResetRequest::from_wire(&wire).unwrap(),
            request(WipeMode::UserDisks, &[("STATE", true)], &["/dev/vdb"])
        );
    }

    #[test]
    fn unmounts_go_deepest_first_and_stay_below_their_tops() {
        let mounts = "/dev/vda3 /system/state xfs rw 0 0\n\
                      /dev/vda4 /var xfs rw 0 0\n\
                      tmpfs /var/run tmpfs rw 0 0\n\
                      tmpfs /variable tmpfs rw 0 0\n\
                      proc /proc proc rw 0 0\n";
        assert_eq!(
            mounts_below(mounts, &UNMOUNT),
            ["/var/run", "/var", "/system/state"]
        );
    }
}
