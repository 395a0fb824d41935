//! Durable file writes, shared by everything that persists or publishes a
//! file (machine config, talosconfig, credentials, resolv.conf...).

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A step of [`write_atomic`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {}: {source}", path.display())]
pub struct WriteError {
    /// The step.
    pub operation: &'static str,
    /// The file it was about.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

fn step(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError + use<> {
    let path = path.to_path_buf();
    move |source| WriteError {
        operation,
        path,
        source,
    }
}

/// Replaces `path` with `bytes` (file mode `mode`) so that a crash leaves
/// either the old file or the new one, never a mix:
///
/// 1. write a temporary file in the same directory (`rename` is atomic only
///    within one filesystem) and `fsync` it, so its contents are on disk
///    before any name points at it;
/// 2. `rename` it over `path`: readers see the old file or the new one;
/// 3. `fsync` the directory, so the rename itself survives a power loss.
///
/// The directory must exist. This blocks (fsync).
///
/// # Errors
/// The step that failed, with its path; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(step("creating temporary file", &temp))?;
        file.write_all(bytes)
            .map_err(step("writing temporary file", &temp))?;
        file.sync_all()
            .map_err(step("syncing temporary file", &temp))?;
        drop(file);
        fs::rename(&temp, path).map_err(step("renaming into place", path))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(step("syncing directory", &dir))
    })();
    if result.is_err() {
        // Best effort: leave no half-written temporary behind.
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_the_file_with_its_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("f");
        fs::write(&path, "old").expect("write");
        write_atomic(&path, b"new", 0o600).expect("atomic write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(&dir).expect("dir").count(),
            1,
            "a temporary was left behind"
        );
        let err = write_atomic(&dir.join("missing/f"), b"x", 0o600).expect_err("no directory");
        assert_eq!(err.operation, "creating temporary file");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
