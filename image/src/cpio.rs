//! The newc ("070701") cpio format the kernel unpacks as an initramfs,
//! written by hand so every byte is ours and reproducible.
//!
//! Each entry is a 110-byte ASCII header (magic + 13 fields of 8 hex
//! digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
//! rdevmajor, rdevminor, namesize, check), the NUL-terminated name padded
//! to 4 bytes, then the data padded to 4 bytes. `TRAILER!!!` ends the
//! archive.
//!
//! Reproducibility: entries are sorted by path (a parent always sorts
//! before its children, since it is a prefix of them), inode numbers are
//! 1, 2, 3... in that order, uid and gid are 0, every mtime is the one
//! given (`SOURCE_DATE_EPOCH`), and the archive is padded to 512 bytes
//! as the kernel's own `gen_init_cpio` does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

/// File type bits of a directory.
pub const S_IFDIR: u32 = 0o040_000;
/// File type bits of a regular file.
pub const S_IFREG: u32 = 0o100_000;
/// File type bits of a character device.
pub const S_IFCHR: u32 = 0o020_000;
/// Mask of the file type bits.
pub const S_IFMT: u32 = 0o170_000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A character device node.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the archive root, no leading `/` (`lib/modules/x.ko`).
    pub path: String,
    /// Permission bits (`0o755`); the type bits come from `kind`.
    pub mode: u32,
    /// What it is.
    pub kind: Kind,
}

impl Entry {
    /// A directory.
    #[must_use]
    pub fn dir(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            kind: Kind::Dir,
        }
    }

    /// A regular file.
    #[must_use]
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            kind: Kind::File(data),
        }
    }

    /// A character device node.
    #[must_use]
    pub fn char_device(path: &str, mode: u32, major: u32, minor: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            kind: Kind::CharDevice { major, minor },
        }
    }

    fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::CharDevice { .. } => S_IFCHR,
        }
    }
}

/// Writing or reading an archive failed.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An entry cannot be put into an archive as given.
    #[error("cpio entry `{path}`: {reason}")]
    BadEntry {
        /// The entry's path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two entries have the same path.
    #[error("cpio entry `{path}` appears twice")]
    Duplicate {
        /// The path.
        path: String,
    },
    /// An entry's parent directory is not in the archive (the kernel does
    /// not create parents).
    #[error("cpio entry `{path}` has no directory entry for its parent `{parent}`")]
    MissingParent {
        /// The entry.
        path: String,
        /// The missing parent.
        parent: String,
    },
    /// A value does not fit newc's 32-bit fields.
    #[error("cpio entry `{path}`: {field} {value} does not fit newc's 32-bit field")]
    TooLarge {
        /// The entry (or `*` for the archive-wide mtime).
        path: String,
        /// Which field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// Writing the archive failed.
    #[error("writing the cpio archive: {0}")]
    Write(#[source] io::Error),
    /// The archive being read is malformed.
    #[error("reading the cpio archive at byte {offset}: {reason}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

fn validate(entries: &[Entry]) -> Result<(), CpioError> {
    let mut seen = BTreeSet::new();
    let dirs: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| e.path.as_str())
        .collect();
    for e in entries {
        let bad = |reason| CpioError::BadEntry {
            path: e.path.clone(),
            reason,
        };
        if e.path.is_empty() {
            return Err(bad("empty path"));
        }
        if e.path.starts_with('/') {
            return Err(bad("path must be relative (no leading `/`)"));
        }
        if e.path == TRAILER {
            return Err(bad("path is the trailer's name"));
        }
        if e.path.contains('\0') {
            return Err(bad("path contains NUL"));
        }
        if e.path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("path has an empty, `.` or `..` component"));
        }
        if e.mode & !0o7777 != 0 {
            return Err(bad(
                "mode has bits beyond 0o7777 (type bits come from the kind)",
            ));
        }
        if !seen.insert(e.path.as_str()) {
            return Err(CpioError::Duplicate {
                path: e.path.clone(),
            });
        }
        if let Some((parent, _)) = e.path.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(CpioError::MissingParent {
                path: e.path.clone(),
                parent: parent.to_owned(),
            });
        }
    }
    Ok(())
}

fn field(path: &str, name: &'static str, value: u64) -> Result<u32, CpioError> {
    u32::try_from(value).map_err(|_| CpioError::TooLarge {
        path: path.to_owned(),
        field: name,
        value,
    })
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The header fields in newc order.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
    namesize: u32,
}

fn write_header(out: &mut Vec<u8>, h: &Header) {
    out.extend_from_slice(MAGIC);
    let (uid, gid, devmajor, devminor, check) = (0, 0, 0, 0, 0);
    let fields: [u32; 13] = [
        h.ino,
        h.mode,
        uid,
        gid,
        h.nlink,
        h.mtime,
        h.filesize,
        devmajor,
        devminor,
        h.rdevmajor,
        h.rdevminor,
        h.namesize,
        check,
    ];
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    let len = HEADER_LEN + name.len() + 1;
    out.resize(out.len() + padding(len), 0);
}

/// Encodes `entries` as a newc archive, sorted by path, every mtime set to
/// `mtime`.
///
/// # Errors
/// A bad, duplicate or orphaned entry, or a value too large for newc.
pub fn encode(entries: &[Entry], mtime: u64) -> Result<Vec<u8>, CpioError> {
    validate(entries)?;
    let mtime = field("*", "mtime", mtime)?;
    // Byte order of paths; validate() made them unique.
    let sorted: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();

    let mut out = Vec::new();
    for (index, e) in sorted.values().enumerate() {
        let data: &[u8] = match &e.kind {
            Kind::File(data) => data,
            Kind::Dir | Kind::CharDevice { .. } => &[],
        };
        let (rdevmajor, rdevminor) = match e.kind {
            Kind::CharDevice { major, minor } => (major, minor),
            Kind::Dir | Kind::File(_) => (0, 0),
        };
        write_header(
            &mut out,
            &Header {
                ino: field(&e.path, "inode", index as u64 + 1)?,
                mode: e.type_bits() | e.mode,
                nlink: if e.kind == Kind::Dir { 2 } else { 1 },
                mtime,
                filesize: field(&e.path, "size", data.len() as u64)?,
                rdevmajor,
                rdevminor,
                namesize: field(&e.path, "name size", e.path.len() as u64 + 1)?,
            },
        );
        write_name(&mut out, &e.path);
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len()), 0);
    }
    write_header(
        &mut out,
        &Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rdevmajor: 0,
            rdevminor: 0,
            namesize: TRAILER.len() as u32 + 1,
        },
    );
    write_name(&mut out, TRAILER);
    let block = out.len().div_ceil(512) * 512;
    out.resize(block, 0);
    Ok(out)
}

/// Writes `entries` as a newc archive to `out` (see [`encode`]).
///
/// # Errors
/// As [`encode`], or the write fails.
pub fn write_newc<W: Write>(mut out: W, entries: &[Entry], mtime: u64) -> Result<(), CpioError> {
    let bytes = encode(entries, mtime)?;
    out.write_all(&bytes).map_err(CpioError::Write)?;
    out.flush().map_err(CpioError::Write)
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Path as stored.
    pub path: String,
    /// Inode number.
    pub ino: u32,
    /// Full mode, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time.
    pub mtime: u32,
    /// Device number of a device node.
    pub rdev: (u32, u32),
    /// Contents (empty for non-files).
    pub data: Vec<u8>,
}

impl ReadEntry {
    /// The file type bits.
    #[must_use]
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    /// The permission bits.
    #[must_use]
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// Parses a newc archive (up to its trailer). For tests and inspection.
///
/// # Errors
/// [`CpioError::Malformed`] with the offset of the problem.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<ReadEntry>, CpioError> {
    let malformed = |offset: usize, reason: String| CpioError::Malformed { offset, reason };
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let header = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or_else(|| malformed(offset, "truncated header".into()))?;
        if &header[..6] != MAGIC {
            return Err(malformed(offset, "bad magic (not newc 070701)".into()));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let start = 6 + i * 8;
            let text = std::str::from_utf8(&header[start..start + 8])
                .map_err(|_| malformed(offset + start, "header field is not ASCII".into()))?;
            *f = u32::from_str_radix(text, 16)
                .map_err(|_| malformed(offset + start, format!("bad hex field {text:?}")))?;
        }
        let [
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            _devmajor,
            _devminor,
            rdevmajor,
            rdevminor,
            namesize,
            _check,
        ] = fields;
        let name_start = offset + HEADER_LEN;
        let name_len = namesize as usize;
        if name_len == 0 {
            return Err(malformed(offset, "zero name size".into()));
        }
        let name = bytes
            .get(name_start..name_start + name_len)
            .ok_or_else(|| malformed(name_start, "truncated name".into()))?;
        let (last, name) = name
            .split_last()
            .ok_or_else(|| malformed(name_start, "empty name".into()))?;
        if *last != 0 {
            return Err(malformed(name_start, "name is not NUL-terminated".into()));
        }
        let path = String::from_utf8(name.to_vec())
            .map_err(|_| malformed(name_start, "name is not UTF-8".into()))?;
        let data_start = name_start + name_len + padding(HEADER_LEN + name_len);
        let data_len = filesize as usize;
        let data = bytes
            .get(data_start..data_start + data_len)
            .ok_or_else(|| malformed(data_start, format!("truncated data of `{path}`")))?;
        offset = data_start + data_len + padding(data_len);
        if path == TRAILER {
            return Ok(entries);
        }
        entries.push(ReadEntry {
            path,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            rdev: (rdevmajor, rdevminor),
            data: data.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("init", 0o755, b"#!init".to_vec()),
            Entry::dir("lib/modules", 0o755),
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry::dir("lib", 0o755),
            Entry::dir("dev", 0o755),
            Entry::file("lib/modules/a.ko", 0o644, vec![1, 2, 3, 4, 5]),
            Entry::file("empty", 0o644, Vec::new()),
        ]
    }

    #[test]
    fn round_trips_sorted_with_fixed_metadata() {
        let bytes = encode(&sample(), 1_700_000_000).expect("encodes");
        assert_eq!(bytes.len() % 512, 0);
        let read = read_newc(&bytes).expect("parses");
        let paths: Vec<&str> = read.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "empty",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/a.ko"
            ]
        );
        for (i, e) in read.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000));
        }
        assert_eq!(read[0].file_type(), S_IFDIR);
        assert_eq!(read[0].nlink, 2);
        assert_eq!(read[1].file_type(), S_IFCHR);
        assert_eq!(read[1].rdev, (5, 1));
        assert_eq!(read[1].permissions(), 0o600);
        assert_eq!(read[3].mode, S_IFREG | 0o755);
        assert_eq!(read[3].data, b"#!init");
        assert_eq!(read[6].data, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(
            encode(&sample(), 0).expect("encodes"),
            encode(&reversed, 0).expect("encodes")
        );
    }

    #[test]
    fn header_layout_matches_gen_init_cpio() {
        let bytes = encode(&[Entry::file("a", 0o644, b"xy".to_vec())], 0).expect("encodes");
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).expect("ascii");
        assert_eq!(
            header,
            "070701\
             00000001\
             000081A4\
             00000000\
             00000000\
             00000001\
             00000000\
             00000002\
             00000000\
             00000000\
             00000000\
             00000000\
             00000002\
             00000000"
        );
        // Name "a\0" ends at 112: already aligned; the data follows.
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 2], b"a\0");
        assert_eq!(&bytes[112..114], b"xy");
        assert_eq!(&bytes[114..116], [0, 0]);
        assert_eq!(&bytes[116..122], MAGIC);
    }

    #[test]
    fn rejects_what_the_kernel_would_mishandle() {
        let err = encode(&[Entry::file("lib/x.ko", 0o644, Vec::new())], 0).expect_err("orphan");
        assert!(matches!(err, CpioError::MissingParent { .. }), "{err}");
        let err = encode(
            &[Entry::dir("a", 0o755), Entry::file("a", 0o644, Vec::new())],
            0,
        )
        .expect_err("duplicate");
        assert!(matches!(err, CpioError::Duplicate { .. }), "{err}");
        for bad in ["/init", "a//b", "a/../b", "", "./a"] {
            assert!(
                encode(&[Entry::file(bad, 0o644, Vec::new())], 0).is_err(),
                "{bad:?}"
            );
        }
        assert!(encode(&[Entry::file("a", 0o100_644, Vec::new())], 0).is_err());
        assert!(matches!(
            encode(&[], u64::from(u32::MAX) + 1).expect_err("mtime"),
            CpioError::TooLarge { .. }
        ));
    }

    #[test]
    fn reader_rejects_garbage() {
        assert!(read_newc(b"hello").is_err());
        let mut bytes = encode(&sample(), 0).expect("encodes");
        bytes[0] = b'1';
        assert!(read_newc(&bytes).is_err());
    }
}
