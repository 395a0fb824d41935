//! `manifest.json`: what an image was built from and the SHA-256 of each
//! artifact. Its own bytes are reproducible too: fields in a fixed order,
//! artifacts sorted by name, no paths of the build host.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name in the output directory.
pub const FILE_NAME: &str = "manifest.json";

/// One artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What an image is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The OS version.
    pub version: String,
    /// The timestamp every file carries.
    pub source_date_epoch: u64,
    /// The kernel release.
    pub kernel_version: String,
    /// The Debian package the kernel came from, if any.
    pub kernel_package: Option<String>,
    /// Module files in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Wanted modules the kernel has built in.
    pub builtin_modules: Vec<String>,
    /// Programs in the root's `/usr/bin` (the installer: `/init`, machined,
    /// carries the daemons).
    pub rootfs_binaries: Vec<String>,
    /// Each artifact by file name.
    pub artifacts: BTreeMap<String, Artifact>,
}

/// Hashing or writing the manifest failed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// An artifact could not be read.
    #[error("hashing {path}: {source}")]
    Hash {
        /// The artifact.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The manifest could not be serialized.
    #[error("serializing the manifest: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Lowercase hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// SHA-256 and size of the file at `path`. Blocks on file I/O.
///
/// # Errors
/// The file cannot be read.
pub fn artifact(path: &Path) -> Result<Artifact, ManifestError> {
    let err = |source: io::Error| ManifestError::Hash {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Artifact {
        sha256: hex(ctx.finish().as_ref()),
        size,
    })
}

impl Manifest {
    /// The manifest as pretty JSON with a final newline.
    ///
    /// # Errors
    /// Serialization fails (it does not for this type).
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(ManifestError::Serialize)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_sha256sum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        let a = artifact(&path).expect("hashes");
        assert_eq!(
            a.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(a.size, 3);
    }

    #[test]
    fn json_is_stable_and_round_trips() {
        let m = Manifest {
            version: "0.1.0".into(),
            source_date_epoch: 0,
            kernel_version: "6.1.0-test".into(),
            kernel_package: None,
            modules: vec!["loop.ko".into()],
            builtin_modules: Vec::new(),
            rootfs_binaries: vec!["installer".into()],
            artifacts: BTreeMap::from([(
                "vmlinuz".to_owned(),
                Artifact {
                    sha256: "00".into(),
                    size: 1,
                },
            )]),
        };
        let a = m.to_json().expect("serializes");
        assert_eq!(a, m.to_json().expect("serializes"));
        let back: Manifest = serde_json::from_slice(&a).expect("parses");
        assert_eq!(back, m);
        assert!(a.ends_with(b"}\n"));
    }
}
