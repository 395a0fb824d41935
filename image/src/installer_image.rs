//! The installer image: `<output>/installer/`, an OCI image layout signed
//! with the release key (see the `installer` crate's `oci` module for the
//! format). It carries the `installer` binary, the kernel, the initramfs,
//! systemd-boot and the two xfs templates: everything a node needs to
//! install itself to a disk or to upgrade, and nothing it must trust
//! before the signature checks out.
//!
//! # The signing key
//!
//! An ed25519 key in PKCS#8 PEM (`--signing-key`, by default
//! `<output>/keys/installer-signing.pem`, made on the first build when
//! missing, mode 0600). Its public key is written into the image's root
//! (`/usr/share/talos-rs/keys/release.pub`): nodes built from this output
//! install and upgrade only to images signed with it (or with a key added
//! by `--trust-key`). Keep the key: an image signed with another key will
//! not upgrade nodes built with this one. Signatures are deterministic, so
//! the same inputs and key give a byte-identical layout.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use installer::files;
use installer::install::InstallInputs;
use installer::oci::{self, OciError};
use installer::sign::{SignError, SigningKey};

/// The layout directory's name in the output directory.
pub const INSTALLER_DIR: &str = "installer";

/// The default signing key, relative to the output directory.
pub const DEFAULT_SIGNING_KEY: &str = "keys/installer-signing.pem";

/// Building the installer image failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallerImageError {
    /// The signing key could not be read or made.
    #[error("the signing key {path}: {source}")]
    Key {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: SignError,
    },
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
    /// An input is missing.
    #[error("{name} for the installer image: {path} does not exist")]
    Missing {
        /// Which input.
        name: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Writing the layout failed.
    #[error("writing the installer image: {0}")]
    Layout(#[from] OciError),
}

fn io_err(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> InstallerImageError + use<> {
    let path = path.to_path_buf();
    move |source| InstallerImageError::Io {
        operation,
        path,
        source,
    }
}

/// Loads the signing key at `path`, or makes one there (mode 0600, the
/// public key beside it as `.pub`) when there is none. Returns the key and
/// whether it was made now.
///
/// # Errors
/// The key cannot be read, parsed or written.
pub fn load_or_generate_key(path: &Path) -> Result<(SigningKey, bool), InstallerImageError> {
    let key_err = |source| InstallerImageError::Key {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Ok((SigningKey::load(path).map_err(key_err)?, false));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    let pem = SigningKey::generate().map_err(key_err)?;
    let key = SigningKey::from_pem(pem.as_bytes(), &path.display().to_string()).map_err(key_err)?;
    machinery::fsutil::write_atomic(path, pem.as_bytes(), 0o600).map_err(|e| {
        InstallerImageError::Io {
            operation: "writing",
            path: path.to_path_buf(),
            source: io::Error::other(e.to_string()),
        }
    })?;
    let public = path.with_extension("pub");
    fs::write(&public, key.public_key_pem()).map_err(io_err("writing", &public))?;
    Ok((key, true))
}

/// Writes the installer image into `<output>/installer`, replacing what
/// was there only once the new layout is complete: the `installer` binary
/// (static) and the files of `inputs`, what an install writes to a disk
/// (its `guid_seed` is not carried: a node chooses its GUIDs as it
/// installs). Returns the manifest digest.
///
/// # Errors
/// A missing input, a file operation or the layout writer failed.
pub fn build_installer_image(
    output: &Path,
    installer: &Path,
    inputs: &InstallInputs,
    key: &SigningKey,
) -> Result<oci::Digest, InstallerImageError> {
    let sources: [(&'static str, &Path); 6] = [
        (files::INSTALLER, installer),
        (files::VMLINUZ, &inputs.vmlinuz),
        (files::INITRAMFS, &inputs.initramfs),
        (files::SYSTEMD_BOOT, &inputs.systemd_boot),
        (files::STATE_TEMPLATE, &inputs.state_template),
        (files::EPHEMERAL_TEMPLATE, &inputs.ephemeral_template),
    ];
    for (name, path) in sources {
        if !path.is_file() {
            return Err(InstallerImageError::Missing {
                name,
                path: path.to_path_buf(),
            });
        }
    }
    let tmp = output.join(format!(".{INSTALLER_DIR}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let digest = oci::write_layout(&tmp, &inputs.version, &sources, key)?;
    make_readable(&tmp)?;
    let target = output.join(INSTALLER_DIR);
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target).map_err(io_err("moving into place", &target))?;
    Ok(digest)
}

/// Modes independent of the umask (reproducible trees, readable by the
/// registry and the tests).
fn make_readable(dir: &Path) -> Result<(), InstallerImageError> {
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(io_err("inspecting", &path))?
            .is_dir();
        let mode = if is_dir { 0o755 } else { 0o644 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &path))?;
        if is_dir {
            make_readable(&path)?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_made_once_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/signing.pem");
        let (first, made) = load_or_generate_key(&path).expect("made");
        assert!(made);
        let mode = fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_to_string(path.with_extension("pub")).expect("pub"),
            first.public_key_pem()
        );
        let (second, made) = load_or_generate_key(&path).expect("loaded");
        assert!(!made);
        assert_eq!(first.public_key(), second.public_key());
    }

    #[test]
    fn the_image_is_written_whole_and_verifies_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = |name: &str| {
            let p = dir.path().join(format!("in-{name}"));
            fs::write(&p, format!("contents of {name}")).expect("write");
            p
        };
        let installer = input("installer");
        let inputs = InstallInputs {
            vmlinuz: input("vmlinuz"),
            initramfs: input("initramfs"),
            systemd_boot: input("efi"),
            state_template: input("state"),
            ephemeral_template: input("ephemeral"),
            version: "1.2.3".into(),
            guid_seed: None,
        };
        let (key, _) = load_or_generate_key(&dir.path().join("k.pem")).expect("key");
        let out = dir.path().join("out");
        fs::create_dir_all(&out).expect("mkdir");
        build_installer_image(&out, &installer, &inputs, &key).expect("built");
        let trusted = installer::sign::TrustedKeys::from_pem(key.public_key_pem().as_bytes(), "k")
            .expect("trusted");
        let verified = oci::verify_layout(&out.join(INSTALLER_DIR), &trusted).expect("verifies");
        assert_eq!(verified.version, "1.2.3");
        assert!(!out.join(format!(".{INSTALLER_DIR}.tmp")).exists());

        let mut missing = inputs.clone();
        missing.vmlinuz = dir.path().join("nope");
        let err =
            build_installer_image(&out, &installer, &missing, &key).expect_err("missing input");
        assert!(err.to_string().contains("vmlinuz"), "{err}");
        // The earlier image is still there.
        oci::verify_layout(&out.join(INSTALLER_DIR), &trusted).expect("still verifies");
    }
}
