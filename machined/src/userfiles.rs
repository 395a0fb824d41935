//! `machine.files`: files the config has the node write at boot, as
//! upstream's `WriteUserFiles` task does.
//!
//! - `create` writes a file under `/var` (the only writable place on the
//!   node's disk), making its directories; validation refuses it elsewhere.
//! - `overwrite` replaces an existing regular file's contents, and `append`
//!   adds to them after a newline.
//! - Outside `/var` the root is read-only: the new contents are written to
//!   the same path under `/var` (`/etc/motd` → `/var/etc/motd`) and
//!   bind-mounted read-only over the original. The original is what
//!   `append` adds to at every boot, so appending does not pile up; under
//!   `/var` an appended file grows at every boot, as upstream's.
//!
//! - Nothing is written through a symbolic link (on the way or the file
//!   itself), and nothing under `/system`, `/proc`, `/sys` or `/dev`. The
//!   mode is set on the open file before the contents go in.
//!
//! Files are written once per boot, before the services start: on a live
//! config change machined only says that the change waits for the next
//! boot. Each entry is written on its own, so one bad entry does not stop
//! the others.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use machinery::config::{FileOp, UserFile};

/// Why an entry could not be written. Every variant names the entry's path.
#[derive(Debug, thiserror::Error)]
pub enum UserFileError {
    /// The path has no file name or climbs (validation refuses these).
    #[error("machine.files {path:?}: not a path to a file")]
    BadPath {
        /// The entry's path.
        path: String,
    },
    /// Under a directory the node manages itself (`/system`, `/proc`, ...).
    #[error("machine.files {path:?}: /{top} is the node's own; no entry may write there")]
    Reserved {
        /// The entry's path.
        path: String,
        /// The top directory.
        top: String,
    },
    /// A symbolic link on the way to where the contents go: writing
    /// through it could land anywhere.
    #[error("machine.files {path:?}: {} is a symbolic link", at.display())]
    Symlink {
        /// The entry's path.
        path: String,
        /// The link.
        at: PathBuf,
    },
    /// `create` outside `/var`.
    #[error("machine.files {path:?}: create is allowed under /var only")]
    CreateOutsideVar {
        /// The entry's path.
        path: String,
    },
    /// `overwrite` or `append` of something that is not a regular file.
    #[error("machine.files {path:?}: {op} needs an existing regular file: {why}")]
    NotAFile {
        /// The entry's path.
        path: String,
        /// `overwrite` or `append`.
        op: &'static str,
        /// What is there instead.
        why: String,
    },
    /// Outside `/var` without a way to bind-mount (container mode).
    #[error(
        "machine.files {path:?}: outside /var a file is replaced by a bind mount, which a node in container mode does not make"
    )]
    NoBind {
        /// The entry's path.
        path: String,
    },
    /// A filesystem operation failed.
    #[error("machine.files {path:?}: {what} {}: {source}", at.display())]
    Io {
        /// The entry's path.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The path it was done to.
        at: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// Where an entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The path the contents were written to.
    pub at: PathBuf,
    /// Whether they are bind-mounted over the entry's path.
    pub bound: bool,
}

/// Makes `from` appear read-only at `to`.
pub type Bind<'a> = &'a dyn Fn(&Path, &Path) -> io::Result<()>;

/// Writes one entry under `root` (the node's `/`). `bind` is how a file
/// outside `/var` is put in place; `None` refuses such entries.
///
/// # Errors
///
/// [`UserFileError`] naming the entry and the step that failed.
pub fn write(
    root: &Path,
    file: &UserFile,
    bind: Option<Bind<'_>>,
) -> Result<Written, UserFileError> {
    let path = || file.path.clone();
    let io_err = |what: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |source| UserFileError::Io {
            path: file.path.clone(),
            what,
            at,
            source,
        }
    };
    let parts = machinery::config::user_file_parts(&file.path)
        .ok_or_else(|| UserFileError::BadPath { path: path() })?;
    if UserFile::RESERVED.contains(&parts[0]) {
        return Err(UserFileError::Reserved {
            path: path(),
            top: parts[0].to_owned(),
        });
    }
    let host: PathBuf = parts
        .iter()
        .fold(root.to_path_buf(), |p, part| p.join(part));
    let in_var = machinery::config::user_file_in_var(&parts);
    if file.op == FileOp::Create && !in_var {
        return Err(UserFileError::CreateOutsideVar { path: path() });
    }
    if !in_var && bind.is_none() {
        return Err(UserFileError::NoBind { path: path() });
    }
    let content = match file.op {
        FileOp::Create => file.content.clone(),
        FileOp::Overwrite | FileOp::Append => {
            let not_a_file = |why: String| UserFileError::NotAFile {
                path: path(),
                op: file.op.as_str(),
                why,
            };
            match fs::metadata(&host) {
                Ok(meta) if meta.is_file() => {}
                Ok(meta) => return Err(not_a_file(format!("{:?}", meta.file_type()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(not_a_file("it does not exist".into()));
                }
                Err(e) => return Err(io_err("reading", &host)(e)),
            }
            if file.op == FileOp::Append {
                let old = fs::read_to_string(&host).map_err(io_err("reading", &host))?;
                format!("{old}\n{}", file.content)
            } else {
                file.content.clone()
            }
        }
    };
    let target_parts: Vec<&str> = if in_var {
        parts.clone()
    } else {
        std::iter::once("var")
            .chain(parts.iter().copied())
            .collect()
    };
    // Nothing on the way may be a link (a planted `/var/etc` → `/system`
    // would take the write, or the bind mount, elsewhere).
    let mut at = root.to_path_buf();
    for part in &target_parts {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UserFileError::Symlink { path: path(), at });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(io_err("looking at", &at)(e)),
        }
    }
    let target: PathBuf = target_parts
        .iter()
        .fold(root.to_path_buf(), |p, part| p.join(part));
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(io_err("making the directory", dir))?;
    }
    write_file(&target, content.as_bytes(), file.mode).map_err(io_err("writing", &target))?;
    let bound = !in_var;
    if bound && let Some(bind) = bind {
        bind(&target, &host).map_err(io_err("bind-mounting over", &host))?;
        self::bound()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(host);
    }
    Ok(Written { at: target, bound })
}

/// Writes `content` to `path` with `mode`, never through a link: the
/// mode is set (on the open file, whatever the umask) before the contents
/// go in, so contents meant for root alone are never readable by others.
fn write_file(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.set_len(0)?;
    file.write_all(content)?;
    file.sync_all()
}

/// The paths files were bind-mounted over this boot: a reset unmounts
/// them before `/var`, whose filesystem they keep in use.
pub fn bound() -> &'static Mutex<Vec<PathBuf>> {
    static BOUND: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    &BOUND
}

/// A read-only bind mount of `from` over `to`, as on metal.
///
/// # Errors
///
/// The mount(2) failure.
pub fn bind_read_only(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::mount::{MountFlags, mount_bind, mount_remount};
    mount_bind(from, to)?;
    // A bind mount takes its flags only from a remount of it.
    let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
    if let Err(e) = mount_remount(to, flags, "") {
        let _ = rustix::mount::unmount(to, rustix::mount::UnmountFlags::DETACH);
        return Err(e.into());
    }
    Ok(())
}

/// Writes every entry; returns what each came to, in order.
pub fn write_all(
    root: &Path,
    files: &[UserFile],
    bind: Option<Bind<'_>>,
) -> Vec<Result<Written, UserFileError>> {
    files.iter().map(|f| write(root, f, bind)).collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn entry(path: &str, op: FileOp, content: &str, mode: u32) -> UserFile {
        UserFile {
            path: path.into(),
            content: content.into(),
            mode,
            op,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn create_makes_directories_and_sets_the_mode() {
        let root = tempfile::tempdir().expect("tempdir");
        let w = write(
            root.path(),
            &entry("/var/etc/app/conf", FileOp::Create, "a=1\n", 0o600),
            None,
        )
        .expect("created");
        let at = root.path().join("var/etc/app/conf");
        assert_eq!(
            w,
            Written {
                at: at.clone(),
                bound: false
            }
        );
        assert_eq!(fs::read_to_string(&at).expect("read"), "a=1\n");
        assert_eq!(mode(&at), 0o600);
        // Again (the next boot): replaced, not refused.
        write(
            root.path(),
            &entry("/var/etc/app/conf", FileOp::Create, "a=2\n", 0o640),
            None,
        )
        .expect("created again");
        assert_eq!(fs::read_to_string(&at).expect("read"), "a=2\n");
        assert_eq!(mode(&at), 0o640);
    }

    #[test]
    fn overwrite_and_append_need_an_existing_regular_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let at = root.path().join("var/lib/x");
        let err = write(
            root.path(),
            &entry("/var/lib/x", FileOp::Append, "b", 0o644),
            None,
        )
        .expect_err("missing file");
        assert!(
            matches!(err, UserFileError::NotAFile { op: "append", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("\"/var/lib/x\""), "{err}");
        fs::create_dir_all(&at).expect("a directory");
        let err = write(
            root.path(),
            &entry("/var/lib/x", FileOp::Overwrite, "b", 0o644),
            None,
        )
        .expect_err("a directory");
        assert!(
            matches!(
                err,
                UserFileError::NotAFile {
                    op: "overwrite",
                    ..
                }
            ),
            "{err}"
        );
        fs::remove_dir(&at).expect("rmdir");

        fs::write(&at, "a").expect("seed");
        write(
            root.path(),
            &entry("/var/lib/x", FileOp::Append, "b", 0o644),
            None,
        )
        .expect("appended");
        assert_eq!(fs::read_to_string(&at).expect("read"), "a\nb");
        write(
            root.path(),
            &entry("/var/lib/x", FileOp::Overwrite, "c", 0o444),
            None,
        )
        .expect("overwritten");
        assert_eq!(fs::read_to_string(&at).expect("read"), "c");
        assert_eq!(mode(&at), 0o444);
    }

    #[test]
    fn outside_var_the_contents_go_under_var_and_are_bound_over_the_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let original = root.path().join("etc/ssl/bundle.crt");
        fs::create_dir_all(original.parent().expect("parent")).expect("mkdir");
        fs::write(&original, "CA1").expect("seed");
        let binds = RefCell::new(Vec::new());
        let bind = |from: &Path, to: &Path| -> io::Result<()> {
            binds
                .borrow_mut()
                .push((from.to_path_buf(), to.to_path_buf()));
            Ok(())
        };
        let results = write_all(
            root.path(),
            &[
                entry("/etc/ssl/bundle.crt", FileOp::Append, "CA2", 0o644),
                entry("/etc/missing", FileOp::Overwrite, "x", 0o644),
                entry("/etc/new", FileOp::Create, "x", 0o644),
            ],
            Some(&bind),
        );
        let copy = root.path().join("var/etc/ssl/bundle.crt");
        assert_eq!(
            results[0].as_ref().expect("appended"),
            &Written {
                at: copy.clone(),
                bound: true
            }
        );
        // The original is left as it is: the next boot appends to it again.
        assert_eq!(fs::read_to_string(&original).expect("read"), "CA1");
        assert_eq!(fs::read_to_string(&copy).expect("read"), "CA1\nCA2");
        assert_eq!(*binds.borrow(), vec![(copy, original.clone())]);
        assert!(bound().lock().expect("lock").contains(&original));
        // One bad entry does not stop the others, and each names itself.
        assert!(matches!(results[1], Err(UserFileError::NotAFile { .. })));
        assert!(matches!(
            results[2],
            Err(UserFileError::CreateOutsideVar { .. })
        ));

        // Without a bind mount (container mode) such an entry is refused
        // before anything is written.
        let other = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(other.path().join("etc")).expect("mkdir");
        fs::write(other.path().join("etc/motd"), "hi").expect("seed");
        let err = write(
            other.path(),
            &entry("/etc/motd", FileOp::Overwrite, "x", 0o644),
            None,
        )
        .expect_err("no bind");
        assert!(matches!(err, UserFileError::NoBind { .. }), "{err}");
        assert!(!other.path().join("var").exists());
    }

    #[test]
    fn links_on_the_way_and_the_nodes_own_directories_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("var")).expect("mkdir");
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("var/etc")).expect("link");
        let err = write(
            root.path(),
            &entry("/var/etc/conf", FileOp::Create, "x", 0o644),
            None,
        )
        .expect_err("through a link");
        assert!(matches!(err, UserFileError::Symlink { .. }), "{err}");
        assert!(!elsewhere.path().join("conf").exists());
        // The file itself a link: not followed either.
        fs::create_dir_all(root.path().join("var/lib")).expect("mkdir");
        std::os::unix::fs::symlink(elsewhere.path().join("t"), root.path().join("var/lib/f"))
            .expect("link");
        let err = write(
            root.path(),
            &entry("/var/lib/f", FileOp::Create, "x", 0o644),
            None,
        )
        .expect_err("a link");
        assert!(matches!(err, UserFileError::Symlink { .. }), "{err}");
        assert!(!elsewhere.path().join("t").exists());

        let err = write(
            root.path(),
            &entry("/system/state/config.yaml", FileOp::Overwrite, "x", 0o644),
            None,
        )
        .expect_err("reserved");
        assert!(matches!(err, UserFileError::Reserved { .. }), "{err}");
    }

    #[test]
    fn a_failed_bind_is_reported() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        fs::write(root.path().join("etc/motd"), "hi").expect("seed");
        let bind = |_: &Path, _: &Path| -> io::Result<()> { Err(io::Error::from_raw_os_error(1)) };
        let err = write(
            root.path(),
            &entry("/etc/motd", FileOp::Overwrite, "x", 0o644),
            Some(&bind),
        )
        .expect_err("bind fails");
        assert!(
            matches!(
                &err,
                UserFileError::Io {
                    what: "bind-mounting over",
                    ..
                }
            ),
            "{err}"
        );
    }
}
