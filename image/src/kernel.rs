//! The kernel: Debian's `linux-image-*-amd64` package, or a vmlinuz and a
//! modules tree given on the command line.
//!
//! From Debian: `apt-cache depends linux-image-amd64` names the current
//! ABI package (`linux-image-6.1.0-NN-amd64`), `apt-cache show` its
//! version; the `.deb` is fetched once with `apt-get download` into the
//! cache directory (`_out/cache/`) and reused while the version stands;
//! `dpkg-deb -x` unpacks it into a scratch directory, which holds
//! `boot/vmlinuz-<version>` and `lib/modules/<version>/`.
//! `depmod` is not needed: machined loads modules itself, in a fixed order.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::tool::{self, ToolError};

/// The Debian metapackage that always depends on the current kernel.
pub const DEFAULT_META_PACKAGE: &str = "linux-image-amd64";

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Debian's package, resolved through `meta_package`, with the `.deb`
    /// cached in `cache_dir`.
    Debian {
        /// The metapackage (`linux-image-amd64`).
        meta_package: String,
        /// Where downloaded `.deb` files are kept.
        cache_dir: PathBuf,
    },
    /// Given files.
    Files {
        /// The kernel image.
        vmlinuz: PathBuf,
        /// A `lib/modules/<version>` tree; its last component is the
        /// kernel version.
        modules_dir: PathBuf,
    },
}

/// A kernel ready to be put into an image.
#[derive(Debug)]
pub struct Kernel {
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Its `lib/modules/<version>` tree.
    pub modules_dir: PathBuf,
    /// The kernel release (`6.1.0-48-amd64`).
    pub version: String,
    /// The Debian package and version it came from
    /// (`linux-image-6.1.0-48-amd64 6.1.172-1`), if any.
    pub package: Option<String>,
    /// Keeps the unpacked package alive while the kernel is used.
    _unpacked: Option<TempDir>,
}

/// Preparing the kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An external tool failed.
    #[error("{0}")]
    Tool(#[from] ToolError),
    /// `apt-cache depends` named no kernel package.
    #[error(
        "resolving {meta}: `apt-cache depends {meta}` names no linux-image package (run `apt-get update`?); it said: {output}"
    )]
    Resolve {
        /// The metapackage.
        meta: String,
        /// What apt-cache printed.
        output: String,
    },
    /// `apt-cache show` gave no version.
    #[error("resolving the version of {package}: `apt-cache show` gave none; it said: {output}")]
    Version {
        /// The package.
        package: String,
        /// What apt-cache printed.
        output: String,
    },
    /// `apt-get download` did not leave the expected file.
    #[error("downloading {package}: `apt-get download` did not produce {path}")]
    Download {
        /// The package.
        package: String,
        /// The file expected.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The unpacked package has not exactly one `boot/vmlinuz-*`.
    #[error("finding the kernel image in {dir}: expected one boot/vmlinuz-*, found {found:?}")]
    Vmlinuz {
        /// The unpacked package.
        dir: PathBuf,
        /// What was there.
        found: Vec<String>,
    },
    /// No modules tree for the kernel's version.
    #[error("finding the modules of kernel {version}: no lib/modules/{version} under {dir}")]
    ModulesTree {
        /// The unpacked package.
        dir: PathBuf,
        /// The kernel version.
        version: String,
    },
    /// A given path is not what it should be.
    #[error("using {path} as {what}: {problem}")]
    Given {
        /// The path.
        path: PathBuf,
        /// What it was given as.
        what: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Prepares the kernel from `source`, unpacking a package under `scratch`.
///
/// # Errors
/// [`KernelError`] naming the step and its inputs.
pub fn prepare(source: &KernelSource, scratch: &Path) -> Result<Kernel, KernelError> {
    match source {
        KernelSource::Files {
            vmlinuz,
            modules_dir,
        } => from_files(vmlinuz, modules_dir),
        KernelSource::Debian {
            meta_package,
            cache_dir,
        } => from_debian(meta_package, cache_dir, scratch),
    }
}

fn from_files(vmlinuz: &Path, modules_dir: &Path) -> Result<Kernel, KernelError> {
    if !vmlinuz.is_file() {
        return Err(KernelError::Given {
            path: vmlinuz.to_path_buf(),
            what: "the kernel image",
            problem: "not a file",
        });
    }
    if !modules_dir.is_dir() {
        return Err(KernelError::Given {
            path: modules_dir.to_path_buf(),
            what: "the modules tree",
            problem: "not a directory (want lib/modules/<version>)",
        });
    }
    let version = modules_dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| KernelError::Given {
            path: modules_dir.to_path_buf(),
            what: "the modules tree",
            problem: "its last component (the kernel version) is not a UTF-8 name",
        })?
        .to_owned();
    Ok(Kernel {
        vmlinuz: vmlinuz.to_path_buf(),
        modules_dir: modules_dir.to_path_buf(),
        version,
        package: None,
        _unpacked: None,
    })
}

/// The package `apt-cache depends <meta>` names (`linux-image-6.1.0-48-amd64`).
#[must_use]
pub fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|line| {
            line.strip_prefix('|')
                .unwrap_or(line)
                .strip_prefix("Depends:")
        })
        .map(str::trim)
        .find(|pkg| pkg.starts_with("linux-image-") && !pkg.contains('<'))
        .map(str::to_owned)
}

/// The `Version:` of the first stanza of `apt-cache show`.
#[must_use]
pub fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The file name `apt-get download` gives a package (`:` of an epoch
/// becomes `%3a`).
#[must_use]
pub fn deb_file_name(package: &str, version: &str, arch: &str) -> String {
    format!("{package}_{}_{arch}.deb", version.replace(':', "%3a"))
}

fn from_debian(meta: &str, cache_dir: &Path, scratch: &Path) -> Result<Kernel, KernelError> {
    let depends = tool::run(
        "resolving the kernel package",
        Command::new("apt-cache").args(["depends", meta]),
    )?;
    let depends = String::from_utf8_lossy(&depends.stdout);
    let package = parse_depends(&depends).ok_or_else(|| KernelError::Resolve {
        meta: meta.to_owned(),
        output: depends.trim().to_owned(),
    })?;
    let show = tool::run(
        "resolving the kernel package version",
        Command::new("apt-cache").args(["show", "--no-all-versions", package.as_str()]),
    )?;
    let show = String::from_utf8_lossy(&show.stdout);
    let version = parse_version(&show).ok_or_else(|| KernelError::Version {
        package: package.clone(),
        output: show.trim().to_owned(),
    })?;

    std::fs::create_dir_all(cache_dir).map_err(|source| KernelError::Io {
        operation: "creating the cache directory",
        path: cache_dir.to_path_buf(),
        source,
    })?;
    let deb = cache_dir.join(deb_file_name(&package, &version, "amd64"));
    if !deb.is_file() {
        tool::run(
            "downloading the kernel package",
            Command::new("apt-get")
                .args(["download", "-q"])
                .arg(format!("{package}={version}"))
                .current_dir(cache_dir),
        )?;
        if !deb.is_file() {
            return Err(KernelError::Download { package, path: deb });
        }
    }

    let unpacked = tempfile::Builder::new()
        .prefix("kernel-")
        .tempdir_in(scratch)
        .map_err(|source| KernelError::Io {
            operation: "creating a directory to unpack the kernel in",
            path: scratch.to_path_buf(),
            source,
        })?;
    tool::run(
        "unpacking the kernel package",
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(unpacked.path()),
    )?;

    let boot = unpacked.path().join("boot");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&boot).map_err(|source| KernelError::Io {
        operation: "listing",
        path: boot.clone(),
        source,
    })? {
        let entry = entry.map_err(|source| KernelError::Io {
            operation: "listing",
            path: boot.clone(),
            source,
        })?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with("vmlinuz-")
        {
            found.push(name.to_owned());
        }
    }
    found.sort();
    if found.len() != 1 {
        return Err(KernelError::Vmlinuz {
            dir: unpacked.path().to_path_buf(),
            found,
        });
    }
    let name = &found[0];
    let version_of_kernel = name.strip_prefix("vmlinuz-").unwrap_or(name).to_owned();
    let vmlinuz = boot.join(name);
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| unpacked.path().join(base).join(&version_of_kernel))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| KernelError::ModulesTree {
            dir: unpacked.path().to_path_buf(),
            version: version_of_kernel.clone(),
        })?;
    Ok(Kernel {
        vmlinuz,
        modules_dir,
        version: version_of_kernel,
        package: Some(format!("{package} {version}")),
        _unpacked: Some(unpacked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_abi_package_from_apt_cache_depends() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-48-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-48-amd64")
        );
        let alternatives = "linux-image-amd64\n |Depends: <linux-image-virtual>\n  Depends: linux-image-6.12.9+bpo-amd64\n";
        assert_eq!(
            parse_depends(alternatives).as_deref(),
            Some("linux-image-6.12.9+bpo-amd64")
        );
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }

    #[test]
    fn reads_the_version_and_names_the_deb() {
        let show = "Package: linux-image-6.1.0-48-amd64\nSource: linux-signed-amd64 (6.1.172+1)\nVersion: 6.1.172-1\nArchitecture: amd64\n";
        assert_eq!(parse_version(show).as_deref(), Some("6.1.172-1"));
        assert_eq!(parse_version("Package: x\n"), None);
        assert_eq!(
            deb_file_name("linux-image-6.1.0-48-amd64", "6.1.172-1", "amd64"),
            "linux-image-6.1.0-48-amd64_6.1.172-1_amd64.deb"
        );
        assert_eq!(
            deb_file_name("squashfs-tools", "1:4.5.1-1", "amd64"),
            "squashfs-tools_1%3a4.5.1-1_amd64.deb"
        );
    }

    #[test]
    fn given_files_take_the_version_from_the_modules_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vmlinuz = dir.path().join("vmlinuz");
        std::fs::write(&vmlinuz, b"kernel").expect("write");
        let modules = dir.path().join("lib/modules/6.1.0-test-amd64");
        std::fs::create_dir_all(&modules).expect("mkdir");
        let k = prepare(
            &KernelSource::Files {
                vmlinuz: vmlinuz.clone(),
                modules_dir: modules.clone(),
            },
            dir.path(),
        )
        .expect("prepares");
        assert_eq!(k.version, "6.1.0-test-amd64");
        assert_eq!(k.vmlinuz, vmlinuz);
        assert!(k.package.is_none());
        let err = prepare(
            &KernelSource::Files {
                vmlinuz: modules.clone(),
                modules_dir: modules,
            },
            dir.path(),
        )
        .expect_err("a directory is no kernel");
        assert!(matches!(err, KernelError::Given { .. }), "{err}");
    }
}
