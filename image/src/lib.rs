//! Builds the boot image: `vmlinuz`, `initramfs.xz` (machined as `/init`,
//! the kernel modules in load order, and `rootfs.sqsh`), and
//! `manifest.json`; later, the installer and disk images.
//!
//! # Design
//!
//! - [`kernel`]: Debian's `linux-image-*-amd64` (downloaded once, cached)
//!   or a given vmlinuz and modules tree.
//! - [`modules`]: the one list of modules the image carries, in load
//!   order, and finding each in the modules tree.
//! - [`squashfs`]: the read-only root, staged from our own daemons only
//!   and packed with `mksquashfs`.
//! - [`cpio`]: the initramfs archive (newc), written here.
//! - [`manifest`]: versions and SHA-256 of every artifact.
//! - [`layout`]: the installed disk's partitions (EFI with the two boot
//!   slots, META, STATE, EPHEMERAL) and the GPT that describes them.
//! - [`disk`]: `metal-amd64.raw`, a bootable disk in that layout
//!   (systemd-boot, slot A), made with host tools.
//! - [`build`]: the orchestration, driven by [`build::BuildInputs`] so
//!   tests can pass fake inputs.
//!
//! # Reproducibility
//!
//! The same inputs give the same bytes: sorted entries, fixed inode numbers,
//! uid/gid 0, every timestamp `SOURCE_DATE_EPOCH` (default 0), modes set
//! explicitly, no build-host paths or xattrs, single-threaded xz. "The same
//! inputs" includes the versions of `mksquashfs` and `xz`.
//!
//! # Limitations
//!
//! Needs `mksquashfs` (squashfs-tools >= 4.4), `xz` (xz-utils), and for the
//! Debian kernel `apt-get`, `apt-cache` and `dpkg-deb`. The disk image needs
//! `mkfs.vfat` (dosfstools), mtools, `mkfs.xfs` (xfsprogs) and Debian's
//! systemd-boot-efi. The installer image is not built yet.
//!
//! # Example
//!
//! ```text
//! cargo build --release --target x86_64-unknown-linux-musl --bins
//! imager build --output _out
//! ```
#![forbid(unsafe_code)]

pub mod build;
pub mod cpio;
pub mod disk;
pub mod kernel;
pub mod layout;
pub mod manifest;
pub mod modules;
pub mod squashfs;
pub mod tool;
