//! The read-only root: a staging directory made from nothing but our own
//! programs and a few files, packed by `mksquashfs`.
//!
//! What is in it: `/usr/bin/installer` (machined runs it to fetch and
//! verify installer images), the public keys of the trusted image signers under
//! `/usr/share/talos-rs/keys`, the CA bundle `/etc/ssl/certs/ca-certificates.crt`
//! (from the build host's ca-certificates), `/etc/os-release`, empty `/etc/hosts` and
//! `/etc/resolv.conf` (machined bind-mounts `/system/etc/...` over them),
//! an empty `/usr/etc/`, and empty mount points (`/dev /proc /sys /run /tmp
//! /system /var`). What is not: a shell, busybox, coreutils, or anything
//! else a person at a prompt would want. machined stays in the initramfs
//! as `/init`, and it carries the other daemons: it starts each by
//! executing itself under the daemon's name (see machined's `daemons`
//! module), so they are not in the root.
//!
//! Reproducible: every mode is set explicitly (the umask does not leak in),
//! `-all-root` owns everything by root, `-mkfs-time`/`-all-time` pin the
//! timestamps, xattrs of the build host are left out, and mksquashfs
//! (>= 4.4) orders its output reproducibly by default.
//! `SOURCE_DATE_EPOCH` is removed from mksquashfs's environment, because it
//! refuses to run with both it and the time options.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{self, ToolError};

/// Directories of the root, created empty (mount points and `/usr/etc`).
pub const ROOTFS_DIRS: &[&str] = &[
    "dev", "etc", "proc", "run", "sys", "system", "tmp", "usr", "usr/bin", "usr/etc", "var",
];

/// The CA bundle staged into the root, on the build host and in the root.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Building the root failed.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    /// A staging step failed.
    #[error("staging the root: {operation} {path}: {source}")]
    Stage {
        /// What we were doing.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The timestamp does not fit squashfs's 32-bit time.
    #[error("SOURCE_DATE_EPOCH {epoch} does not fit squashfs's 32-bit timestamps")]
    Epoch {
        /// The value.
        epoch: u64,
    },
    /// mksquashfs failed.
    #[error("{0}")]
    Tool(#[from] ToolError),
}

/// The `/etc/os-release` of an image of `version`.
#[must_use]
pub fn os_release(version: &str) -> String {
    format!(
        "NAME=\"Talos-rs\"\n\
         ID=talos-rs\n\
         VERSION=\"{version}\"\n\
         VERSION_ID={version}\n\
         PRETTY_NAME=\"Talos-rs ({version})\"\n"
    )
}

fn stage_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SquashfsError {
    let path = path.to_path_buf();
    move |source| SquashfsError::Stage {
        operation,
        path,
        source,
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SquashfsError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(stage_err("setting the mode of", path))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), SquashfsError> {
    fs::write(path, contents).map_err(stage_err("writing", path))?;
    set_mode(path, mode)
}

/// Fills `root` (an empty directory) with the root file system; returns the
/// programs it took from `bin_dir`: the tools
/// ([`machinery::constants::TOOLS`]: the installer). The daemons are not
/// taken: `/init` carries them. `trusted_keys` (name,
/// SPKI PEM) go to [`machinery::constants::TRUSTED_KEYS_DIR`]: the
/// installer images this root will install or upgrade to must be signed
/// by one of them.
///
/// # Errors
/// A file system operation failed.
pub fn stage(
    root: &Path,
    bin_dir: &Path,
    version: &str,
    trusted_keys: &[(String, Vec<u8>)],
    fs_templates: Option<(&Path, &Path)>,
) -> Result<Vec<String>, SquashfsError> {
    set_mode(root, 0o755)?;
    for dir in ROOTFS_DIRS {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(stage_err("creating", &path))?;
        set_mode(&path, 0o755)?;
    }
    write_file(
        &root.join("etc/os-release"),
        os_release(version).as_bytes(),
        0o644,
    )?;
    write_file(&root.join("etc/hosts"), b"", 0o644)?;
    // The CA bundle (Debian's ca-certificates, taken from the build host):
    // the installer checks registries' certificates against it. Without a
    // bundle an https pull cannot be verified, so the build refuses.
    let bundle = Path::new(CA_BUNDLE);
    let ca = fs::read(bundle).map_err(stage_err(
        "reading the CA bundle (package ca-certificates)",
        bundle,
    ))?;
    let certs = root.join("etc/ssl/certs");
    fs::create_dir_all(&certs).map_err(stage_err("creating", &certs))?;
    set_mode(&root.join("etc/ssl"), 0o755)?;
    set_mode(&certs, 0o755)?;
    write_file(&certs.join("ca-certificates.crt"), &ca, 0o644)?;
    write_file(&root.join("etc/resolv.conf"), b"", 0o644)?;

    let keys_dir = root_dir(root, machinery::constants::TRUSTED_KEYS_DIR)?;
    for (name, pem) in trusted_keys {
        write_file(&keys_dir.join(format!("{name}.pub")), pem, 0o644)?;
    }
    if let Some((state, ephemeral)) = fs_templates {
        let dir = root_dir(root, machinery::constants::FS_TEMPLATES_DIR)?;
        for (from, name) in [
            (state, installer::files::STATE_TEMPLATE),
            (ephemeral, installer::files::EPHEMERAL_TEMPLATE),
        ] {
            let bytes = fs::read(from).map_err(stage_err("reading", from))?;
            write_file(&dir.join(name), &bytes, 0o644)?;
        }
    }

    let mut programs = Vec::new();
    for &program in machinery::constants::TOOLS {
        let from = bin_dir.join(program);
        if !from.is_file() {
            continue;
        }
        let to = root.join("usr/bin").join(program);
        fs::copy(&from, &to).map_err(stage_err("copying", &from))?;
        set_mode(&to, 0o755)?;
        programs.push(program.to_owned());
    }
    Ok(programs)
}

/// Makes the directory the node sees at `path` (absolute) in the staged
/// `root`, it and every directory above it mode 0755; returns it.
fn root_dir(root: &Path, path: &str) -> Result<PathBuf, SquashfsError> {
    let made = root.join(path.strip_prefix('/').unwrap_or(path));
    fs::create_dir_all(&made).map_err(stage_err("creating", &made))?;
    let mut dir = made.as_path();
    while dir != root {
        set_mode(dir, 0o755)?;
        dir = dir.parent().unwrap_or(root);
    }
    Ok(made)
}

/// Packs `root` into the squashfs `out` (lz4, high compression, 32 KiB
/// blocks), every timestamp `epoch`. lz4, not zstd or xz: the guest
/// decompresses the blocks of a daemon's binary as it starts it, on the
/// one CPU that also starts everything else, and lz4 decodes several
/// times faster than zstd (which was itself several times faster than
/// xz). The root is about 30% larger, and the initramfs (zstd over the
/// whole archive) smaller, since lz4 leaves redundancy that zstd takes.
/// Blocks for as long as mksquashfs runs.
///
/// # Errors
/// `epoch` does not fit 32 bits, or mksquashfs fails.
pub fn mksquashfs(root: &Path, out: &Path, epoch: u64) -> Result<(), SquashfsError> {
    let epoch = u32::try_from(epoch)
        .map_err(|_| SquashfsError::Epoch { epoch })?
        .to_string();
    tool::run(
        "packing the root file system",
        Command::new("mksquashfs")
            .arg(root)
            .arg(out)
            .args(["-noappend", "-all-root", "-no-xattrs"])
            .args(["-comp", "lz4", "-Xhc", "-b", "32K"])
            .args(["-mkfs-time", epoch.as_str(), "-all-time", epoch.as_str()])
            .args(["-no-progress", "-quiet"])
            .env_remove("SOURCE_DATE_EPOCH"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_names_the_version() {
        let text = os_release("1.2.3");
        assert!(text.contains("VERSION_ID=1.2.3\n"), "{text}");
        assert!(text.starts_with("NAME="), "{text}");
    }

    #[test]
    fn stages_only_our_tools_with_fixed_modes() {
        let bins = tempfile::tempdir().expect("tempdir");
        for name in ["apid", "routerd", "machined", "installer", "sh", "busybox"] {
            fs::write(bins.path().join(name), name).expect("write");
            set_mode(&bins.path().join(name), 0o700).expect("chmod");
        }
        let root = tempfile::tempdir().expect("tempdir");
        let keys = [("release".to_owned(), b"PEM".to_vec())];
        let templates = tempfile::tempdir().expect("tempdir");
        let (state, ephemeral) = (templates.path().join("s"), templates.path().join("e"));
        fs::write(&state, "STATE template").expect("write");
        fs::write(&ephemeral, "EPHEMERAL template").expect("write");
        let programs = stage(
            root.path(),
            bins.path(),
            "0.1.0",
            &keys,
            Some((&state, &ephemeral)),
        )
        .expect("stages");
        assert_eq!(programs, ["installer"]);
        let dir = root.path().join("usr/share/talos-rs/templates");
        assert_eq!(
            fs::read(dir.join("state.xfs.sparse")).expect("STATE"),
            b"STATE template"
        );
        assert_eq!(
            fs::read(dir.join("ephemeral.xfs.sparse")).expect("EPHEMERAL"),
            b"EPHEMERAL template"
        );
        assert_eq!(
            fs::read(root.path().join("usr/share/talos-rs/keys/release.pub")).expect("key"),
            b"PEM"
        );
        let mode = |p: &str| {
            fs::metadata(root.path().join(p))
                .expect("exists")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("usr/bin/installer"), 0o755);
        assert_eq!(mode("usr/share/talos-rs/keys/release.pub"), 0o644);
        assert_eq!(mode("usr/share"), 0o755);
        assert_eq!(mode("etc/hosts"), 0o644);
        assert_eq!(mode("proc"), 0o755);
        assert_eq!(mode(""), 0o755);
        assert!(!root.path().join("usr/bin/sh").exists());
        assert!(!root.path().join("usr/bin/busybox").exists());
        // machined is /init, and carries the daemons.
        assert!(!root.path().join("usr/bin/machined").exists());
        assert!(!root.path().join("usr/bin/apid").exists());
        assert!(!root.path().join("usr/bin/routerd").exists());
        assert!(!root.path().join("bin").exists());
    }

    #[test]
    fn an_epoch_beyond_32_bits_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = mksquashfs(dir.path(), &dir.path().join("x"), 1 << 40).expect_err("too late");
        assert!(matches!(err, SquashfsError::Epoch { .. }), "{err}");
    }
}
