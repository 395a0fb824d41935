//! The kernel modules the image carries, in load order, and finding them in
//! a `lib/modules/<version>` tree.
//!
//! [`MODULES`] is the one place the list lives. machined does not know it:
//! it loads whatever the initramfs's `/modules.order` lists, in that order,
//! with `finit_module` (no `modprobe`, no `modules.dep`, so no `depmod`).
//!
//! File names vary: `crc32c-generic.ko` and `crc32c_generic.ko` are the same
//! module (the kernel treats `-` and `_` alike), and newer kernels ship
//! `.ko.xz` (6.12; the kernel decompresses them itself) where 6.1 ships
//! `.ko` (and cannot decompress). A module the kernel has built in (listed
//! in `modules.builtin`) is skipped instead of missed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

/// The modules of a Debian 6.1 kernel the image needs, in load order:
/// virtio transport, entropy, network and block; squashfs over loop for the root;
/// overlay; xfs (with its crc helpers) for STATE and EPHEMERAL; vfat for
/// the EFI system partition. No ext4: nothing of ours uses it, and every
/// module costs boot time (xfs alone takes over a second to load under
/// TCG).
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    // Entropy from the host: without it the first getrandom() waits about
    // a second for the pool under emulation.
    "virtio_rng",
    "failover",
    "net_failover",
    "virtio_net",
    // VLAN links (`vlans` in the machine config): 802.1Q and what it
    // needs. Module loading is locked after boot, so they cannot wait
    // until a config asks for a VLAN.
    "llc",
    "stp",
    "garp",
    "mrp",
    "8021q",
    // Dummy links (`dummy: true`), bonds (`bond`; bonding needs tls), and
    // bridges (`bridge`; with llc and stp above).
    "dummy",
    "tls",
    "bonding",
    "bridge",
    // WireGuard links (`wireguard`) and the crypto and UDP tunnel code
    // they need, in dependency order.
    "libcurve25519_generic",
    "curve25519_x86_64",
    "udp_tunnel",
    "ip6_udp_tunnel",
    "libchacha",
    "chacha_x86_64",
    "poly1305_x86_64",
    "libchacha20poly1305",
    "wireguard",
    "virtio_blk",
    "squashfs",
    "loop",
    "overlay",
    "crc32c_generic",
    "libcrc32c",
    "xfs",
    "fat",
    "vfat",
    "nls_cp437",
    // vfat's default iocharset (ascii) and its UTF-8 names: without them
    // mounting the ESP fails with EINVAL.
    "nls_ascii",
    "nls_utf8",
    // Hardware watchdogs (`WatchdogTimerConfig`): the core and the
    // driver of the one QEMU emulates (Intel 6300ESB).
    "watchdog",
    "i6300esb",
    // The ACPI power button (a hypervisor's or cloud's "shut down") as an
    // input device machined reads.
    "evdev",
    "button",
];

/// Module file extensions we accept, longest first.
const EXTENSIONS: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// The NIC driver, 802.1Q, dummy links, bonding, bridges and WireGuard: apid does not need them to answer on
/// loopback. They go to `/modules.network`, which machined loads as it
/// starts networkd (once apid is up), or at once when a disk carries one
/// of its filesystems.
pub const NETWORK: &[&str] = &[
    "failover",
    "net_failover",
    "virtio_net",
    "llc",
    "stp",
    "garp",
    "mrp",
    "8021q",
    "dummy",
    "tls",
    "bonding",
    "bridge",
    "libcurve25519_generic",
    "curve25519_x86_64",
    "udp_tunnel",
    "ip6_udp_tunnel",
    "libchacha",
    "chacha_x86_64",
    "poly1305_x86_64",
    "libchacha20poly1305",
    "wireguard",
];

/// What only disk filesystems need: xfs (STATE, EPHEMERAL), vfat (the
/// ESP), overlay and their helpers; the watchdog drivers, which only a
/// config arms; and the power button, which nothing needs at boot. They go to `/modules.deferred`, which
/// machined loads at once when a disk carries one of its filesystems, and
/// otherwise (a node without a disk yet, in maintenance mode) after the
/// network modules, at a low CPU priority: xfs alone takes about 1.5 s to
/// load under emulation, time a first boot's daemons and its DHCP lease
/// need not wait for.
pub const DEFERRED: &[&str] = &[
    "overlay",
    "crc32c_generic",
    "libcrc32c",
    "xfs",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "watchdog",
    "i6300esb",
    "evdev",
    "button",
];

/// One module file chosen for the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module's name as in [`MODULES`].
    pub name: String,
    /// Where it was found.
    pub source: PathBuf,
    /// Its name in the initramfs: `name` plus the source's extension
    /// (`virtio_ring.ko`, `xfs.ko.xz`).
    pub file_name: String,
}

/// What [`select`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Module files, in load order.
    pub files: Vec<ModuleFile>,
    /// Wanted modules the kernel has built in (no file needed).
    pub builtin: Vec<String>,
}

impl Selection {
    /// The `/modules.order` text: one file name per line, in load order,
    /// without the [`NETWORK`] and [`DEFERRED`] ones.
    #[must_use]
    pub fn order_file(&self) -> String {
        self.list(|m| !NETWORK.contains(&m.name.as_str()) && !DEFERRED.contains(&m.name.as_str()))
    }

    /// The `/modules.network` text: the [`NETWORK`] modules, in load
    /// order.
    #[must_use]
    pub fn network_file(&self) -> String {
        self.list(|m| NETWORK.contains(&m.name.as_str()))
    }

    /// The `/modules.deferred` text: the [`DEFERRED`] modules, in load
    /// order.
    #[must_use]
    pub fn deferred_file(&self) -> String {
        self.list(|m| DEFERRED.contains(&m.name.as_str()))
    }

    fn list(&self, keep: impl Fn(&ModuleFile) -> bool) -> String {
        let mut text = String::new();
        for m in self.files.iter().filter(|m| keep(m)) {
            text.push_str(&m.file_name);
            text.push('\n');
        }
        text
    }
}

/// Finding the modules failed.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A directory of the modules tree could not be read.
    #[error("reading the modules tree at {path}: {source}")]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A wanted module is neither a file nor built in.
    #[error(
        "module `{name}` not found under {dir} (looked for {name}.ko[.xz|.zst|.gz], `-` or `_`) and not in modules.builtin"
    )]
    Missing {
        /// The module.
        name: String,
        /// The modules tree.
        dir: PathBuf,
    },
    /// A wanted module exists more than once.
    #[error("module `{name}` is ambiguous: {first} and {second}")]
    Ambiguous {
        /// The module.
        name: String,
        /// One file.
        first: PathBuf,
        /// Another.
        second: PathBuf,
    },
}

/// The module name as the kernel compares it: `-` and `_` alike.
#[must_use]
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Splits a module file name into its stem and extension
/// (`crc32c-generic.ko` → `("crc32c-generic", ".ko")`); `None` for files
/// that are not modules.
#[must_use]
pub fn split_file_name(file_name: &str) -> Option<(&str, &'static str)> {
    EXTENSIONS.iter().find_map(|ext| {
        file_name
            .strip_suffix(ext)
            .filter(|stem| !stem.is_empty())
            .map(|stem| (stem, *ext))
    })
}

/// Module files by normalized name: each file with its extension.
type Index = BTreeMap<String, Vec<(PathBuf, &'static str)>>;

/// Every module file under `dir`, by normalized name (symlinks such as
/// `build` and `source` are not followed).
fn index(dir: &Path) -> Result<Index, ModulesError> {
    let mut found = Index::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let read = |source: io::Error| ModulesError::Read {
            path: current.clone(),
            source,
        };
        let mut entries = std::fs::read_dir(&current)
            .map_err(read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let file_type = entry.file_type().map_err(read)?;
            let path = entry.path();
            if file_type.is_dir() {
                stack.push(path);
            } else if file_type.is_file()
                && let Some(name) = entry.file_name().to_str()
                && let Some((stem, ext)) = split_file_name(name)
            {
                found.entry(normalize(stem)).or_default().push((path, ext));
            }
        }
    }
    Ok(found)
}

/// The normalized names in `dir/modules.builtin` (empty if there is none).
fn builtin(dir: &Path) -> Result<BTreeSet<String>, ModulesError> {
    let path = dir.join("modules.builtin");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(ModulesError::Read { path, source }),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let file = line.trim().rsplit('/').next()?;
            split_file_name(file).map(|(stem, _)| normalize(stem))
        })
        .collect())
}

/// Finds each of `wanted` under `dir` (a `lib/modules/<version>` tree).
///
/// # Errors
/// The tree cannot be read, or a module is missing (and not built in) or
/// found twice.
pub fn select(dir: &Path, wanted: &[&str]) -> Result<Selection, ModulesError> {
    let found = index(dir)?;
    let builtin = builtin(dir)?;
    let mut selection = Selection::default();
    for &name in wanted {
        let key = normalize(name);
        match found.get(&key).map(Vec::as_slice) {
            Some([(source, ext)]) => selection.files.push(ModuleFile {
                name: name.to_owned(),
                source: source.clone(),
                file_name: format!("{key}{ext}"),
            }),
            Some([(first, _), (second, _), ..]) => {
                return Err(ModulesError::Ambiguous {
                    name: name.to_owned(),
                    first: first.clone(),
                    second: second.clone(),
                });
            }
            Some([]) | None if builtin.contains(&key) => selection.builtin.push(name.to_owned()),
            Some([]) | None => {
                return Err(ModulesError::Missing {
                    name: name.to_owned(),
                    dir: dir.to_path_buf(),
                });
            }
        }
    }
    Ok(selection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_module_file_names() {
        assert_eq!(split_file_name("xfs.ko"), Some(("xfs", ".ko")));
        assert_eq!(split_file_name("xfs.ko.xz"), Some(("xfs", ".ko.xz")));
        assert_eq!(
            split_file_name("crc32c-generic.ko"),
            Some(("crc32c-generic", ".ko"))
        );
        assert_eq!(split_file_name("modules.order"), None);
        assert_eq!(split_file_name(".ko"), None);
    }

    #[test]
    fn the_list_has_no_duplicates_and_loop_comes_before_nothing_it_needs() {
        let unique: BTreeSet<String> = MODULES.iter().map(|m| normalize(m)).collect();
        assert_eq!(unique.len(), MODULES.len());
        let pos = |m: &str| MODULES.iter().position(|x| *x == m).expect("listed");
        assert!(pos("virtio_ring") < pos("virtio_net"));
        assert!(pos("virtio") < pos("virtio_blk"));
        assert!(pos("crc32c_generic") < pos("libcrc32c"));
        assert!(pos("libcrc32c") < pos("xfs"));
        assert!(pos("virtio_pci") < pos("virtio_rng"));
        assert!(pos("fat") < pos("vfat"));
        assert!(pos("llc") < pos("stp") && pos("stp") < pos("garp"));
        assert!(pos("garp") < pos("8021q") && pos("mrp") < pos("8021q"));
        assert!(pos("stp") < pos("bridge"));
        for network in NETWORK {
            assert!(MODULES.contains(network), "{network}");
        }
    }

    #[test]
    fn selects_variants_skips_builtin_and_reports_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&kernel).expect("mkdir");
        std::fs::write(kernel.join("virtio_ring.ko"), b"a").expect("write");
        std::fs::write(kernel.join("crc32c-generic.ko"), b"b").expect("write");
        std::fs::write(kernel.join("virtio_net.ko"), b"n").expect("write");
        std::fs::write(kernel.join("xfs.ko.xz"), b"c").expect("write");
        std::fs::write(kernel.join("unwanted.ko"), b"d").expect("write");
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("/nonexistent/build", dir.path().join("build"))
            .expect("symlink");

        let s = select(
            dir.path(),
            &[
                "virtio_ring",
                "virtio",
                "virtio_net",
                "crc32c_generic",
                "xfs",
            ],
        )
        .expect("selects");
        let names: Vec<&str> = s.files.iter().map(|m| m.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring.ko",
                "virtio_net.ko",
                "crc32c_generic.ko",
                "xfs.ko.xz"
            ]
        );
        assert_eq!(s.builtin, ["virtio"]);
        assert_eq!(s.files[2].source, kernel.join("crc32c-generic.ko"));
        assert_eq!(s.order_file(), "virtio_ring.ko\n");
        assert_eq!(s.network_file(), "virtio_net.ko\n");
        assert_eq!(s.deferred_file(), "crc32c_generic.ko\nxfs.ko.xz\n");

        let err = select(dir.path(), &["ext4"]).expect_err("missing");
        assert!(matches!(err, ModulesError::Missing { .. }), "{err}");

        std::fs::create_dir_all(dir.path().join("updates")).expect("mkdir");
        std::fs::write(dir.path().join("updates/xfs.ko"), b"e").expect("write");
        let err = select(dir.path(), &["xfs"]).expect_err("ambiguous");
        assert!(matches!(err, ModulesError::Ambiguous { .. }), "{err}");
    }
}
