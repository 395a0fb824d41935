//! `metal-amd64.raw`: a ready-to-boot disk image in the installed layout
//! ([`crate::layout`]), made on the build host.
//!
//! - `EFI` (vfat, made with `mkfs.vfat` and filled with mtools: the host
//!   kernel has no vfat, so nothing is mounted): systemd-boot as the
//!   removable-media loader `EFI/BOOT/BOOTX64.EFI`, `loader/loader.conf`,
//!   slot A's `A/vmlinuz` and `A/initramfs.xz` and its loader entry.
//! - `META`: an empty store in upstream's ADV format (both copies).
//! - `STATE` and `EPHEMERAL`: empty xfs filesystems with those labels
//!   (`mkfs.xfs` on a scratch file, copied in).
//!
//! The image file is sparse: only blocks that hold data are written.
//!
//! # Boot entries
//!
//! systemd-boot picks the first entry in its sort order; entries whose
//! boot counter ran out sort last. So the slot to boot gets the lower
//! `sort-key`, and a slot on trial (after an upgrade) has a counter in its
//! file name (`talos-B+3.conf`): the firmware loader counts down at each
//! try, and when none is left the other slot boots by itself. The
//! installed slot A is known good and has no counter. `editor no`: nobody
//! at the console can change the kernel command line (the KSPP arguments
//! stay).

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::layout::{self, LayoutError, Plan};
use crate::tool::{self, ToolError};

/// The disk image's file name.
pub const DISK_IMAGE: &str = "metal-amd64.raw";

/// Its default size: the smallest the layout allows, rounded up to 2 GiB.
pub const DEFAULT_DISK_SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// Debian's systemd-boot (package systemd-boot-efi).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The kernel arguments of every boot entry: the serial console, the
/// KSPP hardening arguments machined insists on, and `panic=10`: a kernel
/// panic (say, a broken initramfs) reboots after 10 s instead of hanging,
/// so systemd-boot's boot counting can fall back to the other slot.
pub const KERNEL_ARGS: &str = "console=ttyS0 init_on_alloc=1 init_on_free=1 slab_nomerge pti=on panic=10 talos.platform=metal";

/// Tries a slot on trial gets before systemd-boot gives up on it.
pub const BOOT_TRIES: u32 = 3;

/// A boot slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// Its name, also its directory on the ESP.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

/// `loader/loader.conf`.
#[must_use]
pub fn loader_conf() -> String {
    // No menu wait, no editing, no entries made up by the loader itself.
    "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n".to_owned()
}

/// The loader entry of `slot` holding `version`; `preferred` gives it the
/// lower sort key (booted first).
#[must_use]
pub fn loader_entry(slot: Slot, version: &str, preferred: bool) -> String {
    let s = slot.as_str();
    let key = if preferred { "talos-0" } else { "talos-1" };
    format!(
        "title Talos-rs {version} (slot {s})\nsort-key {key}\nversion {version}\nlinux /{s}/vmlinuz\ninitrd /{s}/initramfs.xz\noptions {KERNEL_ARGS} talos.slot={s}\n"
    )
}

/// The entry's file name: `talos-A.conf`, or with a boot counter
/// (`talos-B+3.conf`) for a slot on trial.
#[must_use]
pub fn entry_file_name(slot: Slot, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("talos-{}+{n}.conf", slot.as_str()),
        None => format!("talos-{}.conf", slot.as_str()),
    }
}

/// Building the disk image failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The layout does not fit.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
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
    /// The META store could not be made.
    #[error("initialising META: {0}")]
    Meta(#[from] machinery::meta::MetaError),
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError + use<> {
    let path = path.to_path_buf();
    move |source| DiskError::Io {
        operation,
        path,
        source,
    }
}

/// What goes on the disk.
#[derive(Debug, Clone)]
pub struct DiskInputs {
    /// The kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// systemd-boot's EFI binary.
    pub systemd_boot: PathBuf,
    /// The OS version (loader entry titles).
    pub version: String,
    /// The image size in bytes.
    pub size: u64,
    /// Seeds the GPT GUIDs, so the same inputs give the same table.
    pub seed: u64,
}

/// GUIDs derived from `seed` (SHA-256 of seed and a counter, as version-4
/// style random GUIDs): reproducible tables without sharing GUIDs across
/// differently seeded disks.
fn seeded_guids(seed: u64) -> impl FnMut() -> [u8; 16] {
    let mut n = 0u64;
    move || {
        n += 1;
        let mut input = seed.to_le_bytes().to_vec();
        input.extend_from_slice(&n.to_le_bytes());
        let d = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut g = [0u8; 16];
        g.copy_from_slice(&d.as_ref()[..16]);
        // Version 4, RFC 4122 variant, in GPT's mixed-endian byte order.
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        g
    }
}

/// Builds the disk image at `out` (replacing it). Blocks while the tools
/// run. Returns the partition plan.
///
/// # Errors
/// A tool, a file operation or the layout failed; `out` may be left
/// half-written.
pub fn build_disk_image(out: &Path, inputs: &DiskInputs) -> Result<Plan, DiskError> {
    let plan = layout::plan(inputs.size, &mut seeded_guids(inputs.seed))?;
    let scratch = tempfile::tempdir().map_err(io_err("creating a scratch directory in", out))?;
    let _ = fs::remove_file(out);
    let file = File::create(out).map_err(io_err("creating", out))?;
    file.set_len(inputs.size).map_err(io_err("sizing", out))?;
    drop(file);
    layout::write_gpt(out, &plan)?;

    let offset = |name: &str| {
        layout::partition_offset(&plan, name).unwrap_or_else(|| unreachable!("{name} is in LAYOUT"))
    };

    // EFI.
    let (esp_at, esp_len) = offset(layout::EFI);
    let esp = scratch.path().join("esp.img");
    make_esp(&esp, esp_len, inputs, scratch.path())?;
    copy_sparse(&esp, out, esp_at)?;

    // META.
    let (meta_at, _) = offset(layout::META);
    let meta = machinery::meta::Adv::new().encode_partition();
    let disk = fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io_err("opening", out))?;
    disk.write_all_at(&meta, meta_at)
        .map_err(io_err("writing META into", out))?;
    drop(disk);

    // STATE and EPHEMERAL.
    for name in [layout::STATE, layout::EPHEMERAL] {
        let (at, len) = offset(name);
        let img = scratch.path().join(format!("{name}.img"));
        let f = File::create(&img).map_err(io_err("creating", &img))?;
        f.set_len(len).map_err(io_err("sizing", &img))?;
        drop(f);
        tool::run(
            "making an xfs filesystem",
            Command::new(mkfs("mkfs.xfs"))
                .args(["-q", "-f", "-L", name])
                .arg(&img),
        )?;
        copy_sparse(&img, out, at)?;
    }
    let disk = File::open(out).map_err(io_err("opening", out))?;
    disk.sync_all().map_err(io_err("syncing", out))?;
    Ok(plan)
}

/// `mkfs.*` lives in sbin, which a non-root PATH may lack.
fn mkfs(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn make_esp(esp: &Path, len: u64, inputs: &DiskInputs, scratch: &Path) -> Result<(), DiskError> {
    tool::run(
        "making the EFI system partition",
        Command::new(mkfs("mkfs.vfat"))
            .args(["-F", "32", "-n", "EFI", "-i", "54414c53", "-C"])
            .arg(esp)
            .arg((len / 1024).to_string()),
    )?;
    let mtools = |operation: &'static str, program: &str, args: &[&std::ffi::OsStr]| {
        tool::run(
            operation,
            Command::new(program)
                .arg("-i")
                .arg(esp)
                .args(args)
                .env("MTOOLS_SKIP_CHECK", "1"),
        )
    };
    for dir in [
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
        "::/A",
        "::/B",
    ] {
        mtools("making a directory on the ESP", "mmd", &[dir.as_ref()])?;
    }
    let conf = scratch.join("loader.conf");
    fs::write(&conf, loader_conf()).map_err(io_err("writing", &conf))?;
    let entry = scratch.join(entry_file_name(Slot::A, None));
    fs::write(&entry, loader_entry(Slot::A, &inputs.version, true))
        .map_err(io_err("writing", &entry))?;
    let entry_target = format!("::/loader/entries/{}", entry_file_name(Slot::A, None));
    let copies: [(&Path, &str); 5] = [
        (&inputs.systemd_boot, "::/EFI/BOOT/BOOTX64.EFI"),
        (&conf, "::/loader/loader.conf"),
        (&entry, &entry_target),
        (&inputs.vmlinuz, "::/A/vmlinuz"),
        (&inputs.initramfs, "::/A/initramfs.xz"),
    ];
    for (from, to) in copies {
        if !from.exists() {
            return Err(DiskError::Io {
                operation: "reading",
                path: from.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "missing"),
            });
        }
        mtools(
            "copying onto the ESP",
            "mcopy",
            &[from.as_os_str(), to.as_ref()],
        )?;
    }
    Ok(())
}

/// Copies `from` into `to` at byte `at`, skipping all-zero blocks (the
/// target is a fresh sparse file: they are zero already).
fn copy_sparse(from: &Path, to: &Path, at: u64) -> Result<(), DiskError> {
    const BLOCK: usize = 64 * 1024;
    let mut src = File::open(from).map_err(io_err("opening", from))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(io_err("opening", to))?;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = src
                .read(&mut buf[filled..])
                .map_err(io_err("reading", from))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..filled], at + pos)
                .map_err(io_err("writing into", to))?;
        }
        pos += filled as u64;
        if filled < BLOCK {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_boot_the_preferred_slot_with_the_hardening_arguments() {
        let a = loader_entry(Slot::A, "0.1.0", true);
        assert!(a.contains("sort-key talos-0\n"), "{a}");
        assert!(a.contains("linux /A/vmlinuz\n"), "{a}");
        assert!(a.contains("initrd /A/initramfs.xz\n"), "{a}");
        assert!(
            a.contains("init_on_alloc=1 init_on_free=1 slab_nomerge pti=on"),
            "{a}"
        );
        assert!(a.contains("talos.slot=A\n"), "{a}");
        let b = loader_entry(Slot::B, "0.2.0", false);
        assert!(b.contains("sort-key talos-1\n"), "{b}");
        assert_eq!(entry_file_name(Slot::B, Some(3)), "talos-B+3.conf");
        assert_eq!(entry_file_name(Slot::A, None), "talos-A.conf");
        assert!(loader_conf().contains("editor no\n"));
    }

    #[test]
    fn seeded_guids_are_reproducible_and_distinct() {
        let first: Vec<[u8; 16]> = {
            let mut g = seeded_guids(7);
            (0..5).map(|_| g()).collect()
        };
        let again: Vec<[u8; 16]> = {
            let mut g = seeded_guids(7);
            (0..5).map(|_| g()).collect()
        };
        assert_eq!(first, again);
        let other = seeded_guids(8)();
        assert_ne!(first[0], other);
        for g in &first {
            assert_eq!(g[7] >> 4, 4, "version 4");
        }
        let unique: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn sparse_copy_places_data_at_the_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let mut data = vec![0u8; 200 * 1024];
        data[70 * 1024] = 7;
        data[199 * 1024] = 9;
        fs::write(&src, &data).expect("write");
        let dst = dir.path().join("dst");
        File::create(&dst)
            .and_then(|f| f.set_len(1024 * 1024))
            .expect("dst");
        copy_sparse(&src, &dst, 4096).expect("copy");
        let out = fs::read(&dst).expect("read");
        assert_eq!(out[4096 + 70 * 1024], 7);
        assert_eq!(out[4096 + 199 * 1024], 9);
        assert_eq!(out.iter().filter(|&&b| b != 0).count(), 2);
    }
}
