//! Files on the node: List, Read, Copy (tar.gz) and DiskUsage.
//!
//! The walks run on blocking threads and hand results over a bounded
//! channel, so a slow client throttles the walk instead of growing memory.
//! File modes are reported in Go's `os.FileMode` bit layout, which is what
//! talosctl decodes.

use std::fs::{self, Metadata};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunk size of Read and Copy streams.
pub const CHUNK: usize = 32 * 1024;

/// Go `os.FileMode` bits.
mod gomode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
}

/// Converts `lstat` metadata to Go's FileMode bits.
#[must_use]
pub fn go_file_mode(meta: &Metadata) -> u32 {
    let ft = meta.file_type();
    let raw = meta.permissions().mode();
    let mut mode = raw & 0o777;
    if ft.is_dir() {
        mode |= gomode::DIR;
    } else if ft.is_symlink() {
        mode |= gomode::SYMLINK;
    } else if ft.is_block_device() {
        mode |= gomode::DEVICE;
    } else if ft.is_char_device() {
        mode |= gomode::DEVICE | gomode::CHAR_DEVICE;
    } else if ft.is_fifo() {
        mode |= gomode::NAMED_PIPE;
    } else if ft.is_socket() {
        mode |= gomode::SOCKET;
    }
    if raw & 0o4000 != 0 {
        mode |= gomode::SETUID;
    }
    if raw & 0o2000 != 0 {
        mode |= gomode::SETGID;
    }
    if raw & 0o1000 != 0 {
        mode |= gomode::STICKY;
    }
    mode
}

/// Errors of file operations, named by what was asked.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path does not exist.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path.
        path: String,
    },
    /// The path must be absolute.
    #[error("{path}: path must be absolute")]
    NotAbsolute {
        /// The path.
        path: String,
    },
    /// Read wants a regular file.
    #[error("{path}: not a regular file")]
    NotRegular {
        /// The path.
        path: String,
    },
    /// Any other I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + use<'a> {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            FileError::NotFound {
                path: path.display().to_string(),
            }
        } else {
            FileError::Io {
                op,
                path: path.display().to_string(),
                source,
            }
        }
    }
}

fn absolute(path: &str) -> Result<PathBuf, FileError> {
    let p = PathBuf::from(if path.is_empty() { "/" } else { path });
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(FileError::NotAbsolute {
            path: path.to_owned(),
        })
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full path.
    pub name: String,
    /// Path relative to the listing root ("." for the root).
    pub relative_name: String,
    /// Size in bytes.
    pub size: i64,
    /// Go FileMode bits.
    pub mode: u32,
    /// Modification time, Unix seconds.
    pub modified: i64,
    /// A directory.
    pub is_dir: bool,
    /// Symlink target.
    pub link: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Error reading this entry, if any.
    pub error: String,
}

/// Which entry types a listing keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// Regular files (and anything not a directory or symlink).
    Regular,
    /// Directories.
    Directory,
    /// Symlinks.
    Symlink,
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// Root (absolute; empty = "/").
    pub root: String,
    /// Descend into directories.
    pub recurse: bool,
    /// Depth limit when recursing (0 = unlimited).
    pub depth: u32,
    /// Types to keep (empty = all).
    pub types: Vec<EntryType>,
}

fn entry(path: &Path, root: &Path) -> (Entry, Option<Metadata>) {
    let relative_name = match path.strip_prefix(root) {
        Ok(r) if r.as_os_str().is_empty() => ".".to_owned(),
        Ok(r) => r.display().to_string(),
        Err(_) => path.display().to_string(),
    };
    let mut e = Entry {
        name: path.display().to_string(),
        relative_name,
        size: 0,
        mode: 0,
        modified: 0,
        is_dir: false,
        link: String::new(),
        uid: 0,
        gid: 0,
        error: String::new(),
    };
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            e.size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
            e.mode = go_file_mode(&meta);
            e.modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            e.is_dir = meta.is_dir();
            e.uid = meta.uid();
            e.gid = meta.gid();
            if meta.file_type().is_symlink() {
                e.link = fs::read_link(path)
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
            }
            (e, Some(meta))
        }
        Err(err) => {
            e.error = err.to_string();
            (e, None)
        }
    }
}

fn type_of(meta: Option<&Metadata>) -> EntryType {
    match meta.map(Metadata::file_type) {
        Some(ft) if ft.is_dir() => EntryType::Directory,
        Some(ft) if ft.is_symlink() => EntryType::Symlink,
        _ => EntryType::Regular,
    }
}

/// Lists `req.root`: the root itself first, then its entries, depth first,
/// sorted by name within a directory.
///
/// # Errors
/// The root is not absolute or does not exist.
pub fn list(req: ListRequest) -> Result<mpsc::Receiver<Entry>, FileError> {
    let root = absolute(&req.root)?;
    fs::symlink_metadata(&root).map_err(io_err("listing", &root))?;
    let max_depth = if req.recurse {
        if req.depth == 0 { u32::MAX } else { req.depth }
    } else {
        1
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let mut stack = vec![(root.clone(), 0u32)];
        while let Some((path, depth)) = stack.pop() {
            let (e, meta) = entry(&path, &root);
            let keep = req.types.is_empty() || req.types.contains(&type_of(meta.as_ref()));
            let is_dir = meta.as_ref().is_some_and(Metadata::is_dir);
            if keep && tx.blocking_send(e).is_err() {
                return;
            }
            if is_dir && depth < max_depth {
                match fs::read_dir(&path) {
                    Ok(rd) => {
                        let mut children: Vec<PathBuf> = rd.flatten().map(|d| d.path()).collect();
                        children.sort();
                        stack.extend(children.into_iter().rev().map(|c| (c, depth + 1)));
                    }
                    Err(err) => {
                        let (mut e, _) = entry(&path, &root);
                        e.error = format!("reading directory: {err}");
                        if tx.blocking_send(e).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// Streams a regular file (or a /proc or /sys file) in chunks.
///
/// # Errors
/// Not absolute, missing, or not a regular file.
pub fn read(path: &str) -> Result<mpsc::Receiver<Result<Bytes, FileError>>, FileError> {
    let path = absolute(path)?;
    let meta = fs::metadata(&path).map_err(io_err("reading", &path))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.display().to_string(),
        });
    }
    let mut file = fs::File::open(&path).map_err(io_err("opening", &path))?;
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(FileError::Io {
                        op: "reading",
                        path: path.display().to_string(),
                        source: e,
                    }));
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// A `Write` that sends what it gets, in chunks, down a channel.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, FileError>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// Streams `root` as a tar.gz archive whose entries sit under the root's
/// own name. Regular files, directories and symlinks are archived; sockets,
/// devices and pipes are skipped.
///
/// # Errors
/// Not absolute or missing.
pub fn copy(root: &str) -> Result<mpsc::Receiver<Result<Bytes, FileError>>, FileError> {
    let root = absolute(root)?;
    fs::symlink_metadata(&root).map_err(io_err("copying", &root))?;
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        let base = root
            .file_name()
            .map_or_else(|| PathBuf::from("root"), PathBuf::from);
        let result =
            archive(&mut tar, &root, &base).and_then(|()| tar.into_inner()?.finish()?.flush());
        if let Err(e) = result
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            let _ = tx.blocking_send(Err(FileError::Io {
                op: "archiving",
                path: root.display().to_string(),
                source: e,
            }));
        }
    });
    Ok(rx)
}

fn archive<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        tar.append_dir(name, path)?;
        let mut children: Vec<_> = fs::read_dir(path)?.flatten().collect();
        children.sort_by_key(fs::DirEntry::file_name);
        for child in children {
            // A file that vanished mid-walk is not an error worth aborting for.
            match archive(tar, &child.path(), &name.join(child.file_name())) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    } else if ft.is_file() || ft.is_symlink() {
        tar.append_path_with_name(path, name)
    } else {
        Ok(())
    }
}

/// One DiskUsage result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Full path.
    pub name: String,
    /// Path relative to the requested path.
    pub relative_name: String,
    /// Bytes (apparent size, summed for directories).
    pub size: i64,
    /// Error, if this entry could not be read.
    pub error: String,
}

/// What DiskUsage measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRequest {
    /// Paths (empty = "/").
    pub paths: Vec<String>,
    /// Report files too, not only directories.
    pub all: bool,
    /// Report entries down to this depth (0 = only the paths themselves).
    pub depth: u32,
    /// >0: only entries at least this big; <0: only entries at most |threshold|.
    pub threshold: i64,
}

/// Measures disk usage like `du`, streaming one result per reported entry,
/// children before their parent.
///
/// # Errors
/// A path that is not absolute.
pub fn disk_usage(req: UsageRequest) -> Result<mpsc::Receiver<Usage>, FileError> {
    let paths: Vec<PathBuf> = if req.paths.is_empty() {
        vec![PathBuf::from("/")]
    } else {
        req.paths
            .iter()
            .map(|p| absolute(p))
            .collect::<Result<_, _>>()?
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        for root in paths {
            if du(&root, &root, 0, &req, &tx).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Returns the total size of `path`; Err only when the client went away.
fn du(
    path: &Path,
    root: &Path,
    depth: u32,
    req: &UsageRequest,
    tx: &mpsc::Sender<Usage>,
) -> Result<i64, ()> {
    let relative = match path.strip_prefix(root) {
        Ok(r) if r.as_os_str().is_empty() => ".".to_owned(),
        Ok(r) => r.display().to_string(),
        Err(_) => path.display().to_string(),
    };
    let mut usage = Usage {
        name: path.display().to_string(),
        relative_name: relative,
        size: 0,
        error: String::new(),
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            usage.error = e.to_string();
            return tx.blocking_send(usage).map(|()| 0).map_err(drop);
        }
    };
    let mut size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
    if meta.is_dir() {
        match fs::read_dir(path) {
            Ok(rd) => {
                let mut children: Vec<PathBuf> = rd.flatten().map(|d| d.path()).collect();
                children.sort();
                for child in children {
                    size = size.saturating_add(du(&child, root, depth + 1, req, tx)?);
                }
            }
            Err(e) => usage.error = format!("reading directory: {e}"),
        }
    }
    usage.size = size;
    let reported = depth <= req.depth && (meta.is_dir() || req.all || depth == 0);
    let passes = match req.threshold {
        t if t > 0 => size >= t,
        t if t < 0 => size <= -t,
        _ => true,
    };
    if reported && passes {
        tx.blocking_send(usage).map_err(drop)?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect<T>(mut rx: mpsc::Receiver<T>) -> Vec<T> {
        let mut v = Vec::new();
        while let Some(x) = rx.recv().await {
            v.push(x);
        }
        v
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("a/b")).expect("mkdir");
        fs::write(d.path().join("a/b/f.txt"), "hello").expect("write");
        fs::write(d.path().join("top.txt"), "0123456789").expect("write");
        std::os::unix::fs::symlink("top.txt", d.path().join("link")).expect("symlink");
        d
    }

    #[tokio::test]
    async fn list_shallow_and_recursive() {
        let d = tree();
        let root = d.path().display().to_string();
        let shallow = collect(
            list(ListRequest {
                root: root.clone(),
                recurse: false,
                depth: 0,
                types: vec![],
            })
            .expect("list"),
        )
        .await;
        let names: Vec<&str> = shallow.iter().map(|e| e.relative_name.as_str()).collect();
        assert_eq!(names, [".", "a", "link", "top.txt"]);
        assert!(shallow[0].is_dir && shallow[0].mode & gomode::DIR != 0);
        assert_eq!(shallow[2].link, "top.txt");
        assert!(shallow[2].mode & gomode::SYMLINK != 0);
        assert_eq!(shallow[3].size, 10);

        let deep = collect(
            list(ListRequest {
                root: root.clone(),
                recurse: true,
                depth: 0,
                types: vec![EntryType::Regular],
            })
            .expect("list"),
        )
        .await;
        let names: Vec<&str> = deep.iter().map(|e| e.relative_name.as_str()).collect();
        assert_eq!(names, ["a/b/f.txt", "top.txt"]);

        let err = list(ListRequest {
            root: format!("{root}/missing"),
            recurse: false,
            depth: 0,
            types: vec![],
        })
        .expect_err("missing");
        assert!(matches!(err, FileError::NotFound { .. }), "{err}");
        assert!(matches!(
            list(ListRequest {
                root: "rel".into(),
                recurse: false,
                depth: 0,
                types: vec![]
            }),
            Err(FileError::NotAbsolute { .. })
        ));
    }

    #[tokio::test]
    async fn read_files_and_refuse_directories() {
        let d = tree();
        let chunks =
            collect(read(&d.path().join("top.txt").display().to_string()).expect("read")).await;
        let data: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.expect("chunk").to_vec())
            .collect();
        assert_eq!(data, b"0123456789");
        assert!(matches!(
            read(&d.path().display().to_string()),
            Err(FileError::NotRegular { .. })
        ));
        // /proc files report size 0 but have content.
        let boot_id = collect(read("/proc/sys/kernel/random/boot_id").expect("read")).await;
        assert_eq!(
            boot_id
                .into_iter()
                .map(|c| c.expect("chunk").len())
                .sum::<usize>(),
            37
        );
    }

    #[tokio::test]
    async fn copy_is_a_tar_gz_of_the_tree() {
        let d = tree();
        let chunks = collect(copy(&d.path().join("a").display().to_string()).expect("copy")).await;
        let data: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.expect("chunk").to_vec())
            .collect();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
        let mut names = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name.ends_with("f.txt") {
                let mut s = String::new();
                entry.read_to_string(&mut s).expect("read");
                assert_eq!(s, "hello");
            }
            names.push(name);
        }
        assert_eq!(names, ["a", "a/b", "a/b/f.txt"]);
    }

    #[tokio::test]
    async fn disk_usage_sums_children() {
        let d = tree();
        let root = d.path().display().to_string();
        let all = collect(
            disk_usage(UsageRequest {
                paths: vec![root.clone()],
                all: true,
                depth: 5,
                threshold: 0,
            })
            .expect("du"),
        )
        .await;
        let f = all
            .iter()
            .find(|u| u.relative_name == "a/b/f.txt")
            .expect("file");
        assert_eq!(f.size, 5);
        let a = all.iter().find(|u| u.relative_name == "a").expect("dir a");
        let b = all
            .iter()
            .find(|u| u.relative_name == "a/b")
            .expect("dir b");
        assert!(a.size >= b.size + 5);
        let only_root = collect(
            disk_usage(UsageRequest {
                paths: vec![root],
                all: false,
                depth: 0,
                threshold: 0,
            })
            .expect("du"),
        )
        .await;
        assert_eq!(only_root.len(), 1);
        assert_eq!(only_root[0].relative_name, ".");
    }
}
