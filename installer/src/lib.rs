//! The installer: the signed installer image, fetching and verifying it,
//! writing a disk in the installed layout, and writing an upgrade into the
//! inactive boot slot.
//!
//! - [`sign`]: ed25519 keys (PKCS#8 / SPKI PEM) and signatures.
//! - [`oci`]: the installer image as an OCI image layout: writing one
//!   (imager), reading and verifying one (every blob's digest, the config
//!   blob's signature) before anything touches a disk.
//! - `fetch` (feature `fetch`): getting an image from an OCI registry
//!   (oci-client), an http(s) URL or a local path, into a layout
//!   directory; pushing a layout to a registry.
//! - [`layout`]: the GPT layout of an installed disk and its writer.
//! - [`entries`]: systemd-boot's loader configuration and our entries.
//! - [`sparse`]: the sparse encoding the filesystem templates travel in.
//! - [`target`]: a disk (block device or image file) and its partitions
//!   as byte ranges.
//! - [`install`]: a whole disk from a verified image: GPT, ESP (made with
//!   `fatfs`, the same code on the build host and in the node), slot A,
//!   META, STATE and EPHEMERAL from the xfs templates.
//! - [`upgrade`]: the inactive slot written from a verified image, its
//!   entry on trial with a boot counter.
//! - [`xfs`]: growing a mounted xfs filesystem to its partition.
//! - [`xfs_uuid`]: giving an installed xfs filesystem a UUID of its own.
//! - [`wipe`]: wiping a disk or partition, dropping a partition from a GPT.
#![deny(unsafe_code)]

pub mod entries;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod install;
pub mod layout;
pub mod oci;
pub mod sign;
pub mod sparse;
pub mod target;
pub mod upgrade;
pub mod wipe;
pub mod xfs;
pub mod xfs_uuid;

/// The file names inside an installer image (each a layer whose
/// `org.opencontainers.image.title` annotation is the name).
pub mod files {
    /// The installer binary (static).
    pub const INSTALLER: &str = "installer";
    /// The kernel.
    pub const VMLINUZ: &str = "vmlinuz";
    /// The initramfs (machined as `/init`, the modules, the root).
    pub const INITRAMFS: &str = "initramfs.xz";
    /// systemd-boot's EFI binary.
    pub const SYSTEMD_BOOT: &str = "systemd-bootx64.efi";
    /// The STATE filesystem template (sparse encoding, see `sparse`).
    pub const STATE_TEMPLATE: &str = "state.xfs.sparse";
    /// The EPHEMERAL filesystem template, grown to its partition at boot.
    pub const EPHEMERAL_TEMPLATE: &str = "ephemeral.xfs.sparse";
    /// Every file an installer image must carry.
    pub const ALL: [&str; 6] = [
        INSTALLER,
        VMLINUZ,
        INITRAMFS,
        SYSTEMD_BOOT,
        STATE_TEMPLATE,
        EPHEMERAL_TEMPLATE,
    ];
}
