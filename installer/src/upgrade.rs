//! An upgrade: the slot not running is written from a verified installer
//! image, on the mounted ESP, and its loader entry put on trial.
//!
//! # Order
//!
//! Power may go at any moment; the old slot must still boot. So:
//!
//! 1. every loader entry of the target slot goes (synced): from now on
//!    nothing points at the files about to be replaced;
//! 2. the target slot's kernel and initramfs are written under temporary
//!    names, synced and renamed into place;
//! 3. its entry `talos-<T>+3.conf` appears (temporary name, sync, rename)
//!    with the preferred sort key and a boot counter;
//! 4. the running slot's entry gets the other sort key.
//!
//! The new slot then boots first, on trial: systemd-boot counts its tries
//! down and, with none left, boots the old slot by itself. machined's
//! `bootloader::confirm` settles the entries once the node is up. A crash
//! between 3 and 4 leaves two entries with the preferred key: either may
//! boot, both are whole.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use crate::entries::{self, BOOT_TRIES, OTHER_SORT_KEY, Slot};
use crate::files;
use crate::install::{self, InstallError};

/// Upgrading failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The booted slot is not `A` or `B`.
    #[error("the booted slot {0:?} is neither A nor B")]
    UnknownSlot(char),
    /// The image's description could not be read.
    #[error(transparent)]
    Image(#[from] InstallError),
    /// An input file could not be opened.
    #[error("opening {path}: {source}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `esp` is not an ESP we installed.
    #[error("{path} is not our ESP: it has no loader/entries directory")]
    NotOurEsp {
        /// The directory given as the ESP.
        path: PathBuf,
    },
    /// A file operation on the ESP failed.
    #[error("{operation} {path}: {source}")]
    Esp {
        /// What was being done.
        operation: &'static str,
        /// The file or directory on the ESP.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn esp_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UpgradeError + use<> {
    let path = path.to_path_buf();
    move |source| UpgradeError::Esp {
        operation,
        path,
        source,
    }
}

/// Writes the installer image unpacked (and verified) in `from` into the
/// slot other than `booted` ('A' or 'B') on the ESP mounted at `esp`, and
/// makes it boot next, on trial. Returns the slot written.
///
/// # Errors
/// [`UpgradeError`] naming the step and path. The running slot stays
/// bootable whatever failed.
pub fn upgrade_from_dir(
    from: &Path,
    esp: &Path,
    booted: char,
    progress: &mut dyn FnMut(String),
) -> Result<char, UpgradeError> {
    let slot = Slot::from_char(booted).ok_or(UpgradeError::UnknownSlot(booted))?;
    let version = install::image_version(from)?;
    upgrade(
        esp,
        slot,
        &from.join(files::VMLINUZ),
        &from.join(files::INITRAMFS),
        &version,
        progress,
    )
    .map(Slot::as_char)
}

/// Writes `vmlinuz` and `initramfs` as `version` into the slot other than
/// `booted` on the ESP mounted at `esp` (see the module documentation for
/// the order). Both inputs are opened before anything changes. Returns
/// the slot written.
///
/// # Errors
/// [`UpgradeError`] naming the step and path.
pub fn upgrade(
    esp: &Path,
    booted: Slot,
    vmlinuz: &Path,
    initramfs: &Path,
    version: &str,
    progress: &mut dyn FnMut(String),
) -> Result<Slot, UpgradeError> {
    let target = booted.other();
    let open = |path: &Path| {
        File::open(path).map_err(|source| UpgradeError::Input {
            path: path.to_path_buf(),
            source,
        })
    };
    let kernel = open(vmlinuz)?;
    let initrd = open(initramfs)?;
    let entries_dir = esp.join(entries::ENTRIES_DIR);
    if !entries_dir.is_dir() {
        return Err(UpgradeError::NotOurEsp {
            path: esp.to_path_buf(),
        });
    }

    // 1. Nothing may point at the target slot while it is rewritten.
    progress(format!("removing slot {target}'s boot entry"));
    for name in names_in(&entries_dir)? {
        if entries::belongs_to(&name, target) {
            let path = entries_dir.join(&name);
            fs::remove_file(&path).map_err(esp_err("removing", &path))?;
        }
    }
    sync_dir(&entries_dir)?;

    // 2. The files.
    progress(format!("writing slot {target}: kernel and initramfs"));
    let slot_dir = esp.join(target.as_str());
    fs::create_dir_all(&slot_dir).map_err(esp_err("creating", &slot_dir))?;
    copy_durably(kernel, &esp.join(target.kernel_path()))?;
    copy_durably(initrd, &esp.join(target.initramfs_path()))?;
    sync_dir(&slot_dir)?;

    // 3. The new entry, preferred, on trial.
    let entry = entries_dir.join(entries::entry_file_name(target, Some(BOOT_TRIES)));
    write_durably(&entry, &entries::loader_entry(target, version, true))?;
    sync_dir(&entries_dir)?;

    // 4. The running slot steps back.
    for name in names_in(&entries_dir)? {
        if entries::belongs_to(&name, booted) && name.ends_with(".conf") {
            let path = entries_dir.join(&name);
            let text = fs::read_to_string(&path).map_err(esp_err("reading", &path))?;
            write_durably(&path, &entries::with_sort_key(&text, OTHER_SORT_KEY))?;
        }
    }
    sync_dir(&entries_dir)?;
    progress(format!(
        "slot {target} holds {version} and boots next, on trial ({BOOT_TRIES} tries); slot {booted} is the fallback"
    ));
    Ok(target)
}

/// The file names in `dir`, sorted.
fn names_in(dir: &Path) -> Result<Vec<String>, UpgradeError> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).map_err(esp_err("listing", dir))? {
        let item = item.map_err(esp_err("listing", dir))?;
        names.push(item.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// `path` with `.tmp` appended to its file name: where a file is written
/// before it is renamed into place.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Copies `from` to `to` through a temporary file, synced before the
/// rename, so `to` is either the old file or the whole new one.
fn copy_durably(from: File, to: &Path) -> Result<(), UpgradeError> {
    let tmp = temporary(to);
    let mut out = File::create(&tmp).map_err(esp_err("creating", &tmp))?;
    io::copy(&mut BufReader::with_capacity(1024 * 1024, from), &mut out)
        .map_err(esp_err("writing", &tmp))?;
    out.sync_all().map_err(esp_err("syncing", &tmp))?;
    drop(out);
    fs::rename(&tmp, to).map_err(esp_err("renaming into place", to))
}

/// Writes `text` to `path` through a temporary file (see
/// [`copy_durably`]).
fn write_durably(path: &Path, text: &str) -> Result<(), UpgradeError> {
    let tmp = temporary(path);
    fs::write(&tmp, text).map_err(esp_err("writing", &tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(esp_err("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(esp_err("renaming into place", path))
}

/// Makes the directory's entries (removals, renames) durable: `fsync` on
/// the directory, then `syncfs` for what vfat keeps elsewhere (the FAT).
fn sync_dir(dir: &Path) -> Result<(), UpgradeError> {
    let d = File::open(dir).map_err(esp_err("opening", dir))?;
    d.sync_all().map_err(esp_err("syncing", dir))?;
    rustix::fs::syncfs(&d).map_err(|e| esp_err("syncing the filesystem of", dir)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_A: &[u8] = b"kernel of slot A";

    /// An ESP as the installer leaves it, plus a stale slot B from an
    /// earlier upgrade.
    fn esp_with_stale_b(dir: &Path) -> PathBuf {
        let esp = dir.join("esp");
        fs::create_dir_all(esp.join(entries::ENTRIES_DIR)).expect("mkdir");
        fs::create_dir_all(esp.join("A")).expect("mkdir");
        fs::create_dir_all(esp.join("B")).expect("mkdir");
        fs::write(esp.join("A/vmlinuz"), OLD_A).expect("w");
        fs::write(esp.join("A/initramfs.xz"), b"initramfs of slot A").expect("w");
        fs::write(esp.join("B/vmlinuz"), b"old B kernel").expect("w");
        fs::write(
            esp.join("loader/entries/talos-A.conf"),
            entries::loader_entry(Slot::A, "1.0", true),
        )
        .expect("w");
        fs::write(
            esp.join("loader/entries/talos-B.conf"),
            entries::loader_entry(Slot::B, "0.9", false),
        )
        .expect("w");
        esp
    }

    /// An unpacked installer image with a new kernel.
    fn image(dir: &Path) -> PathBuf {
        let from = dir.join("image");
        fs::create_dir_all(&from).expect("mkdir");
        fs::write(from.join(files::VMLINUZ), b"new kernel").expect("w");
        fs::write(from.join(files::INITRAMFS), b"new initramfs").expect("w");
        fs::write(
            from.join(install::IMAGE_INFO),
            r#"{"version": "2.0", "manifest_digest": "sha256:00"}"#,
        )
        .expect("w");
        from
    }

    fn entry_names(esp: &Path) -> Vec<String> {
        names_in(&esp.join(entries::ENTRIES_DIR)).expect("list")
    }

    fn read(path: PathBuf) -> String {
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn upgrade_from_a_puts_b_on_trial() {
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = esp_with_stale_b(dir.path());
        let from = image(dir.path());
        let mut lines = Vec::new();
        let written = upgrade_from_dir(&from, &esp, 'A', &mut |l| lines.push(l)).expect("upgrade");
        assert_eq!(written, 'B');
        assert_eq!(entry_names(&esp), ["talos-A.conf", "talos-B+3.conf"]);

        let a = read(esp.join("loader/entries/talos-A.conf"));
        assert!(a.contains("sort-key talos-1\n"), "{a}");
        assert!(!a.contains("talos-0"), "{a}");
        assert!(a.contains("talos.slot=A"), "{a}");
        assert!(a.contains("version 1.0\n"), "{a}");

        let b = read(esp.join("loader/entries/talos-B+3.conf"));
        assert!(b.contains("sort-key talos-0\n"), "{b}");
        assert!(b.contains("talos.slot=B"), "{b}");
        assert!(b.contains("linux /B/vmlinuz\n"), "{b}");
        assert!(b.contains("version 2.0\n"), "{b}");

        assert_eq!(fs::read(esp.join("B/vmlinuz")).expect("r"), b"new kernel");
        assert_eq!(
            fs::read(esp.join("B/initramfs.xz")).expect("r"),
            b"new initramfs"
        );
        // Slot A's files are untouched, and no temporary file is left.
        assert_eq!(fs::read(esp.join("A/vmlinuz")).expect("r"), OLD_A);
        assert_eq!(
            names_in(&esp.join("B")).expect("list"),
            ["initramfs.xz", "vmlinuz"]
        );
        assert!(
            lines.iter().any(|l| l.contains("slot B holds 2.0")),
            "{lines:?}"
        );
    }

    #[test]
    fn upgrade_from_b_writes_a_and_demotes_b_under_any_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = esp_with_stale_b(dir.path());
        let from = image(dir.path());
        // B is running, still counted (not yet confirmed).
        fs::remove_file(esp.join("loader/entries/talos-B.conf")).expect("rm");
        fs::write(
            esp.join("loader/entries/talos-B+2-1.conf"),
            entries::loader_entry(Slot::B, "1.5", true),
        )
        .expect("w");
        let written = upgrade(
            &esp,
            Slot::B,
            &from.join(files::VMLINUZ),
            &from.join(files::INITRAMFS),
            "2.0",
            &mut |_| {},
        )
        .expect("upgrade");
        assert_eq!(written, Slot::A);
        assert_eq!(entry_names(&esp), ["talos-A+3.conf", "talos-B+2-1.conf"]);
        let b = read(esp.join("loader/entries/talos-B+2-1.conf"));
        assert!(b.contains("sort-key talos-1\n"), "{b}");
        assert!(b.contains("version 1.5\n"), "{b}");
        let a = read(esp.join("loader/entries/talos-A+3.conf"));
        assert!(a.contains("sort-key talos-0\n"), "{a}");
        assert_eq!(fs::read(esp.join("A/vmlinuz")).expect("r"), b"new kernel");
    }

    #[test]
    fn the_stale_entry_is_gone_before_the_slot_is_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = esp_with_stale_b(dir.path());
        let from = image(dir.path());
        // Slot B's directory cannot be written (a file where it should
        // be): the kernel copy fails.
        fs::remove_dir_all(esp.join("B")).expect("rm");
        fs::write(esp.join("B"), b"in the way").expect("w");
        let err = upgrade_from_dir(&from, &esp, 'A', &mut |_| {}).expect_err("cannot write B");
        assert!(
            err.to_string()
                .contains(&esp.join("B").display().to_string()),
            "{err}"
        );
        // No entry points at B any more; A is still the preferred slot.
        assert_eq!(entry_names(&esp), ["talos-A.conf"]);
        let a = read(esp.join("loader/entries/talos-A.conf"));
        assert!(a.contains("sort-key talos-0\n"), "{a}");
        assert_eq!(fs::read(esp.join("A/vmlinuz")).expect("r"), OLD_A);
    }

    #[test]
    fn a_missing_input_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = esp_with_stale_b(dir.path());
        let from = image(dir.path());
        fs::remove_file(from.join(files::VMLINUZ)).expect("rm");
        let err = upgrade_from_dir(&from, &esp, 'A', &mut |_| {}).expect_err("no kernel");
        assert!(matches!(err, UpgradeError::Input { .. }), "{err}");
        assert!(err.to_string().contains("vmlinuz"), "{err}");
        // The old B stays available for a manual rollback.
        assert_eq!(entry_names(&esp), ["talos-A.conf", "talos-B.conf"]);
        assert_eq!(fs::read(esp.join("B/vmlinuz")).expect("r"), b"old B kernel");
    }

    #[test]
    fn refuses_unknown_slots_and_foreign_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = image(dir.path());
        let esp = esp_with_stale_b(dir.path());
        let err = upgrade_from_dir(&from, &esp, 'C', &mut |_| {}).expect_err("slot C");
        assert!(matches!(err, UpgradeError::UnknownSlot('C')), "{err}");
        let err = upgrade_from_dir(&from, dir.path(), 'A', &mut |_| {}).expect_err("not an ESP");
        assert!(matches!(err, UpgradeError::NotOurEsp { .. }), "{err}");
        fs::remove_file(from.join(install::IMAGE_INFO)).expect("rm");
        let err = upgrade_from_dir(&from, &esp, 'A', &mut |_| {}).expect_err("no image.json");
        assert!(err.to_string().contains("image.json"), "{err}");
        // Nothing was changed by any of these.
        assert_eq!(entry_names(&esp), ["talos-A.conf", "talos-B.conf"]);
    }
}
