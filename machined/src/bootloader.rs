//! The boot slots, seen from the running node: systemd-boot's loader
//! entries on the EFI system partition (see the `image` crate's `disk`
//! module for how they are written).
//!
//! - `loader/entries/talos-A.conf`: slot A, known good.
//! - `talos-B+3.conf`: slot B on trial with 3 tries left; systemd-boot
//!   renames it at each try (`talos-B+2-1.conf`, ... `talos-B+0-3.conf`)
//!   and sorts an entry with no tries left last, so the other slot boots
//!   by itself after the third failure.
//! - `sort-key talos-0` marks the preferred slot, `talos-1` the other.
//!
//! [`confirm`] runs once the node is up: the slot that booted is good (its
//! counter goes) and preferred; if it is not the slot the last upgrade
//! installed, that upgrade failed and is reported. [`rollback`] makes the
//! other slot preferred. Both work on a directory (the mounted ESP), so
//! tests use a temporary one; [`with_esp`] mounts the partition for them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The ESP's filesystem label.
pub const ESP_LABEL: &str = "EFI";

/// Where machined mounts the ESP while it changes entries.
pub const ESP_MOUNT: &str = "/system/efi";

const ENTRIES: &str = "loader/entries";
const PREFERRED_KEY: &str = "talos-0";
const OTHER_KEY: &str = "talos-1";

/// Tries a slot gets after a rollback, as after an upgrade.
const ROLLBACK_TRIES: u32 = 3;

/// A boot slot's name ("A" or "B").
pub type Slot = char;

/// One loader entry of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its slot.
    pub slot: Slot,
    /// Its file name under `loader/entries`.
    pub file_name: String,
    /// Boot counting: tries left, when counted.
    pub tries_left: Option<u32>,
    /// Whether its sort key makes it the preferred slot.
    pub preferred: bool,
}

impl Entry {
    /// Whether systemd-boot gave up on it (no tries left).
    #[must_use]
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// Parses `talos-A.conf`, `talos-B+3.conf`, `talos-B+2-1.conf`: the slot
/// and the tries left. Other names are not ours.
#[must_use]
pub fn parse_entry_name(name: &str) -> Option<(Slot, Option<u32>)> {
    let stem = name.strip_prefix("talos-")?.strip_suffix(".conf")?;
    let mut chars = stem.chars();
    let slot = chars.next().filter(|c| matches!(c, 'A' | 'B'))?;
    let rest = chars.as_str();
    if rest.is_empty() {
        return Some((slot, None));
    }
    let counter = rest.strip_prefix('+')?;
    let left = counter.split('-').next()?;
    Some((slot, Some(left.parse().ok()?)))
}

/// What went wrong with the boot entries.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// There is no other slot to boot.
    #[error("no other installation to roll back to (only slot {booted} is installed)")]
    NoOtherSlot {
        /// The running slot.
        booted: Slot,
    },
    /// The other slot failed to boot (its tries ran out).
    #[error("slot {slot} failed to boot (no tries left): there is nothing good to roll back to")]
    FailedSlot {
        /// That slot.
        slot: Slot,
    },
    /// The ESP could not be found or mounted.
    #[error("the EFI system partition: {0}")]
    Esp(String),
}

fn io_err(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> BootloaderError + use<> {
    let path = path.to_path_buf();
    move |source| BootloaderError::Io {
        operation,
        path,
        source,
    }
}

/// Our entries on the ESP mounted at `esp`, by slot.
///
/// # Errors
/// The entries directory cannot be read.
pub fn list(esp: &Path) -> Result<Vec<Entry>, BootloaderError> {
    let dir = esp.join(ENTRIES);
    let mut entries = Vec::new();
    for item in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
        let item = item.map_err(io_err("listing", &dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let Some((slot, tries_left)) = parse_entry_name(&name) else {
            continue;
        };
        let text = fs::read_to_string(item.path()).map_err(io_err("reading", &item.path()))?;
        let preferred = text
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["sort-key", PREFERRED_KEY]);
        entries.push(Entry {
            slot,
            file_name: name,
            tries_left,
            preferred,
        });
    }
    entries.sort_by_key(|e| e.slot);
    Ok(entries)
}

/// `text` (a loader entry) with its `sort-key` line replaced by `key`.
fn with_sort_key(text: &str, key: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("sort-key"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("sort-key {key}\n"));
    out
}

/// Rewrites `entry` as `slot`'s uncounted, known-good entry with the sort
/// key for `preferred`; the file is replaced by rename (vfat has no
/// atomic replace across names, but the rename of a complete file is the
/// safest step it has).
fn settle(esp: &Path, entry: &Entry, preferred: bool) -> Result<(), BootloaderError> {
    rewrite(esp, entry, preferred, None)
}

/// [`settle`], or with `tries` a boot counter (the slot on trial).
fn rewrite(
    esp: &Path,
    entry: &Entry,
    preferred: bool,
    tries: Option<u32>,
) -> Result<(), BootloaderError> {
    let dir = esp.join(ENTRIES);
    let from = dir.join(&entry.file_name);
    let text = fs::read_to_string(&from).map_err(io_err("reading", &from))?;
    let key = if preferred { PREFERRED_KEY } else { OTHER_KEY };
    let out = with_sort_key(&text, key);
    let to = match tries {
        Some(n) => dir.join(format!("talos-{}+{n}.conf", entry.slot)),
        None => dir.join(format!("talos-{}.conf", entry.slot)),
    };
    let tmp = dir.join(format!("talos-{}.tmp", entry.slot));
    fs::write(&tmp, out).map_err(io_err("writing", &tmp))?;
    let file = fs::File::open(&tmp).map_err(io_err("opening", &tmp))?;
    file.sync_all().map_err(io_err("syncing", &tmp))?;
    // The new name first, then the old one goes: a power cut in between
    // leaves two entries of the slot, never none.
    fs::rename(&tmp, &to).map_err(io_err("renaming", &tmp))?;
    if from != to {
        fs::remove_file(&from).map_err(io_err("removing", &from))?;
    }
    sync_dir(&dir)
}

/// Makes the directory's entries (renames, removals) durable.
/// Replaces the entry at `path` with `text`: a synced temporary file
/// renamed over it, then the directory synced.
fn replace(path: &Path, text: &str) -> Result<(), BootloaderError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io_err("writing", &tmp))?;
    fs::File::open(&tmp)
        .and_then(|file| file.sync_all())
        .map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming", &tmp))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), BootloaderError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// What [`confirm`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The booted slot was already the known-good preferred one.
    Unchanged,
    /// The booted slot was on trial and is now confirmed.
    Confirmed(Slot),
    /// The preferred slot failed its tries and the node came back on
    /// `running`; `failed` is no longer preferred.
    RolledBack {
        /// The slot that did not come up.
        failed: Slot,
        /// The slot running now.
        running: Slot,
    },
}

/// The node came up on `booted`: make it the known-good preferred slot.
///
/// # Errors
/// The entries cannot be read or rewritten.
pub fn confirm(esp: &Path, booted: Slot) -> Result<Confirmation, BootloaderError> {
    let entries = list(esp)?;
    let Some(mine) = entries.iter().find(|e| e.slot == booted) else {
        // Booted from something that is not ours (kernel given directly):
        // nothing to confirm.
        return Ok(Confirmation::Unchanged);
    };
    let other = entries.iter().find(|e| e.slot != booted);
    // The other slot preferred and on trial with tries left: an upgrade
    // (or rollback) written since this boot, waiting for the next one.
    // Ours is good (its counter goes), but the pending slot stays first.
    if let Some(o) = other
        && o.preferred
        && o.tries_left.is_some_and(|n| n > 0)
    {
        if mine.tries_left.is_some() {
            settle(esp, mine, false)?;
            return Ok(Confirmation::Confirmed(booted));
        }
        return Ok(Confirmation::Unchanged);
    }
    if mine.tries_left.is_none() && mine.preferred {
        return Ok(Confirmation::Unchanged);
    }
    let result = match other {
        Some(o) if o.preferred && o.is_bad() => Confirmation::RolledBack {
            failed: o.slot,
            running: booted,
        },
        _ if mine.tries_left.is_some() => Confirmation::Confirmed(booted),
        _ => Confirmation::Unchanged,
    };
    settle(esp, mine, true)?;
    if let Some(o) = other
        && o.preferred
    {
        // Keep the failed or older slot bootable by hand, but never first.
        let refreshed = list(esp)?;
        if let Some(o) = refreshed.iter().find(|e| e.slot == o.slot) {
            let path = esp.join(ENTRIES).join(&o.file_name);
            let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            // Replaced whole, under the same name: a power cut leaves the
            // old entry or the new one, never a cut one (it is the
            // fallback).
            replace(&path, &with_sort_key(&text, OTHER_KEY))?;
        }
    }
    Ok(result)
}

/// Makes the slot other than `booted` the preferred one (uncounted: an
/// operator chose it). Returns that slot.
///
/// # Errors
/// There is no other slot, or the entries cannot be rewritten.
pub fn rollback(esp: &Path, booted: Slot) -> Result<Slot, BootloaderError> {
    let entries = list(esp)?;
    let Some(other) = entries.iter().find(|e| e.slot != booted) else {
        return Err(BootloaderError::NoOtherSlot { booted });
    };
    let kernel = esp.join(other.slot.to_string()).join("vmlinuz");
    if !kernel.exists() {
        return Err(BootloaderError::NoOtherSlot { booted });
    }
    if other.is_bad() {
        return Err(BootloaderError::FailedSlot { slot: other.slot });
    }
    // On trial: if it does not come up, this slot boots again by itself.
    rewrite(esp, other, true, Some(ROLLBACK_TRIES))?;
    if let Some(mine) = entries.iter().find(|e| e.slot == booted) {
        settle(esp, mine, false)?;
    }
    Ok(other.slot)
}

/// Mounts the ESP (the vfat filesystem labelled [`ESP_LABEL`]) on
/// [`ESP_MOUNT`], runs `f` on it, syncs and unmounts, whatever `f` did.
/// The ESP stays unmounted otherwise: a power cut cannot catch it dirty.
/// Blocks; metal only.
///
/// # Errors
/// No ESP, a failed mount, or `f`'s error.
pub fn with_esp<T>(
    f: impl FnOnce(&Path) -> Result<T, BootloaderError>,
) -> Result<T, BootloaderError> {
    use rustix::mount::{UnmountFlags, unmount};
    let target = Path::new(ESP_MOUNT);
    crate::boot::mount_labelled(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        ESP_LABEL,
        target,
    )
    .map_err(|e| BootloaderError::Esp(e.to_string()))?
    .ok_or_else(|| BootloaderError::Esp(format!("no filesystem labelled {ESP_LABEL}")))?;
    let result = f(target);
    rustix::fs::sync();
    if let Err(e) = unmount(target, UnmountFlags::empty()) {
        tracing::warn!(error = %e, "unmounting the ESP");
    }
    result
}

/// The slot the kernel command line says was booted (`talos.slot=`).
#[must_use]
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("talos.slot="))
        .next_back()
        .and_then(|v| v.chars().next())
        .filter(|c| matches!(c, 'A' | 'B'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp_with(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join(ENTRIES)).expect("mkdir");
        for (name, key) in entries {
            let (slot, _) = parse_entry_name(name).expect("ours");
            fs::write(
                dir.path().join(ENTRIES).join(name),
                format!("title Talos-rs (slot {slot})\nsort-key {key}\nlinux /{slot}/vmlinuz\n"),
            )
            .expect("write");
            fs::create_dir_all(dir.path().join(slot.to_string())).expect("mkdir");
            fs::write(dir.path().join(format!("{slot}/vmlinuz")), "k").expect("write");
        }
        dir
    }

    fn names(esp: &Path) -> Vec<(String, bool)> {
        list(esp)
            .expect("list")
            .into_iter()
            .map(|e| (e.file_name, e.preferred))
            .collect()
    }

    #[test]
    fn entry_names() {
        assert_eq!(parse_entry_name("talos-A.conf"), Some(('A', None)));
        assert_eq!(parse_entry_name("talos-B+3.conf"), Some(('B', Some(3))));
        assert_eq!(parse_entry_name("talos-B+2-1.conf"), Some(('B', Some(2))));
        assert_eq!(parse_entry_name("talos-B+0-3.conf"), Some(('B', Some(0))));
        assert_eq!(parse_entry_name("talos-C.conf"), None);
        assert_eq!(parse_entry_name("other.conf"), None);
        assert_eq!(
            booted_slot("console=ttyS0 talos.slot=B init_on_free=1"),
            Some('B')
        );
        assert_eq!(booted_slot("console=ttyS0"), None);
    }

    #[test]
    fn a_slot_on_trial_is_confirmed_when_it_comes_up() {
        let esp = esp_with(&[("talos-A.conf", "talos-1"), ("talos-B+2-1.conf", "talos-0")]);
        assert_eq!(
            confirm(esp.path(), 'B').expect("confirm"),
            Confirmation::Confirmed('B')
        );
        assert_eq!(
            names(esp.path()),
            [
                ("talos-A.conf".to_owned(), false),
                ("talos-B.conf".to_owned(), true)
            ]
        );
        // Again: nothing to do.
        assert_eq!(
            confirm(esp.path(), 'B').expect("confirm"),
            Confirmation::Unchanged
        );
    }

    #[test]
    fn a_failed_upgrade_is_reported_and_demoted() {
        // B was installed and preferred, used up its tries; A booted.
        let esp = esp_with(&[("talos-A.conf", "talos-1"), ("talos-B+0-3.conf", "talos-0")]);
        assert_eq!(
            confirm(esp.path(), 'A').expect("confirm"),
            Confirmation::RolledBack {
                failed: 'B',
                running: 'A'
            }
        );
        assert_eq!(
            names(esp.path()),
            [
                ("talos-A.conf".to_owned(), true),
                ("talos-B+0-3.conf".to_owned(), false)
            ]
        );
    }

    #[test]
    fn a_pending_upgrade_is_left_alone_by_the_running_slot() {
        // Upgraded from A while A was up; A's confirmation comes after.
        let esp = esp_with(&[("talos-A.conf", "talos-1"), ("talos-B+3.conf", "talos-0")]);
        assert_eq!(
            confirm(esp.path(), 'A').expect("confirm"),
            Confirmation::Unchanged
        );
        assert_eq!(
            names(esp.path()),
            [
                ("talos-A.conf".to_owned(), false),
                ("talos-B+3.conf".to_owned(), true)
            ]
        );
        // The same while A itself is still on trial: only A's counter goes.
        let esp = esp_with(&[
            ("talos-A+2-1.conf", "talos-1"),
            ("talos-B+3.conf", "talos-0"),
        ]);
        assert_eq!(
            confirm(esp.path(), 'A').expect("confirm"),
            Confirmation::Confirmed('A')
        );
        assert_eq!(
            names(esp.path()),
            [
                ("talos-A.conf".to_owned(), false),
                ("talos-B+3.conf".to_owned(), true)
            ]
        );
    }

    #[test]
    fn rollback_prefers_the_other_slot_and_needs_one() {
        let esp = esp_with(&[("talos-A.conf", "talos-1"), ("talos-B.conf", "talos-0")]);
        assert_eq!(rollback(esp.path(), 'B').expect("rollback"), 'A');
        // A is preferred and on trial; B stays as the fallback.
        assert_eq!(
            names(esp.path()),
            [
                ("talos-A+3.conf".to_owned(), true),
                ("talos-B.conf".to_owned(), false)
            ]
        );
        // A came up: confirmed, B kept as the other slot.
        assert_eq!(
            confirm(esp.path(), 'A').expect("confirm"),
            Confirmation::Confirmed('A')
        );
        assert_eq!(
            names(esp.path()),
            [
                ("talos-A.conf".to_owned(), true),
                ("talos-B.conf".to_owned(), false)
            ]
        );
        // A slot that failed its tries is no rollback target.
        let failed = esp_with(&[("talos-A.conf", "talos-0"), ("talos-B+0-3.conf", "talos-1")]);
        let err = rollback(failed.path(), 'A').expect_err("failed slot");
        assert!(
            matches!(err, BootloaderError::FailedSlot { slot: 'B' }),
            "{err}"
        );
        let single = esp_with(&[("talos-A.conf", "talos-0")]);
        let err = rollback(single.path(), 'A').expect_err("no other slot");
        assert!(
            matches!(err, BootloaderError::NoOtherSlot { booted: 'A' }),
            "{err}"
        );
        assert!(err.to_string().contains("no other installation"), "{err}");
    }
}
