//! Builds the boot image: `vmlinuz`, `initramfs.xz` (machined as `/init`,
//! the kernel modules in load order, and `rootfs.sqsh`), and
//! `manifest.json`; then the signed installer image (`installer/`) and
//! the disk image (`metal-amd64.raw`).
//!
//! # Design
//!
//! - [`kernel`]: Debian's `linux-image-*-amd64` (downloaded once, cached)
//!   or a given vmlinuz and modules tree.
//! - [`modules`]: the one list of modules the image carries, in load
//!   order, and finding each in the modules tree.
//! - [`squashfs`]: the read-only root, staged only from the `installer`,
//!   the trusted signing keys and the CA bundle, and packed with
//!   `mksquashfs` (`/init`, machined, carries the daemons).
//! - [`cpio`]: the initramfs archive (newc), written here.
//! - [`manifest`]: versions and SHA-256 of every artifact.
//! - [`layout`]: the installed disk's partitions (EFI with the two boot
//!   slots, META, STATE, EPHEMERAL) and the GPT that describes them
//!   (re-exported from the `installer` crate).
//! - [`disk`]: `metal-amd64.raw`, a bootable disk in that layout
//!   (systemd-boot, slot A), written by the installer's own install code
//!   onto an image file; and the xfs templates it installs from.
//! - [`installer_image`]: `installer/`, the OCI image layout nodes install
//!   and upgrade from, signed with the release key (made on the first
//!   build), whose public half goes into the root.
//! - [`build`]: the orchestration, driven by [`build::BuildInputs`] so
//!   tests can pass fake inputs.
//!
//! # Reproducibility
//!
//! The same inputs give the same bytes: sorted entries, fixed inode numbers,
//! uid/gid 0, every timestamp `SOURCE_DATE_EPOCH` (default 0), modes set
//! explicitly, no build-host paths or xattrs, single-threaded zstd. "The
//! same inputs" includes the versions of `mksquashfs` and libzstd, the signing key
//! (its public half is in the root) and the build host's CA bundle.
//!
//! # Limitations
//!
//! Needs `mksquashfs` (squashfs-tools >= 4.4), the build
//! host's CA bundle (ca-certificates, copied into the root), and for the
//! Debian kernel `apt-get`, `apt-cache` and `dpkg-deb`. The installer and
//! disk images need `mkfs.xfs` (xfsprogs, for the STATE and EPHEMERAL
//! templates) and Debian's systemd-boot-efi; the ESP is made in Rust
//! (`fatfs`). The xfs templates carry mkfs.xfs's creation time, so disk
//! images built at different times differ in those bytes, and so do
//! installer images (their templates, config, signature and manifest
//! digest).
//!
//! # Example
//!
//! `scripts/image` does this (machined, then the installer on its own
//! so that cargo does not unify its features into machined's):
//!
//! ```text
//! cargo build --profile image --target x86_64-unknown-linux-musl -p machined
//! cargo build --profile image --target x86_64-unknown-linux-musl -p installer
//! imager build --output _out
//! ```
#![forbid(unsafe_code)]

pub mod build;
pub mod cpio;
pub mod disk;
pub mod installer_image;
pub mod kernel;
pub use installer::layout;
pub mod manifest;
pub mod modules;
pub mod squashfs;
pub mod tool;
