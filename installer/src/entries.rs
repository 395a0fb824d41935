//! systemd-boot's loader configuration and our loader entries: what
//! [`crate::install`] writes for slot A and [`crate::upgrade`] for the
//! slot on trial. machined's `bootloader` module reads and settles them on
//! the running node.
//!
//! systemd-boot picks the first entry in its sort order; entries whose
//! boot counter ran out sort last. So the slot to boot gets the lower
//! `sort-key`, and a slot on trial (after an upgrade) has a counter in its
//! file name (`talos-B+3.conf`): the firmware loader counts down at each
//! try, and when none is left the other slot boots by itself. The
//! installed slot A is known good and has no counter. `editor no`: nobody
//! at the console can change the kernel command line (the KSPP arguments
//! stay).

/// The kernel arguments of every boot entry: the serial console, the
/// KSPP hardening arguments machined insists on, and `panic=10`: a kernel
/// panic (say, a broken initramfs) reboots after 10 s instead of hanging,
/// so systemd-boot's boot counting can fall back to the other slot. `gpt`:
/// a primary partition table that fails its checks (a rewrite interrupted
/// half-way, see [`crate::layout::grow_to_disk`]) makes Linux read the
/// backup at the disk's end instead of finding no partitions at all.
pub const KERNEL_ARGS: &str = "console=ttyS0 init_on_alloc=1 init_on_free=1 slab_nomerge pti=on panic=10 gpt talos.platform=metal";

/// Tries a slot on trial gets before systemd-boot gives up on it.
pub const BOOT_TRIES: u32 = 3;

/// The ESP's filesystem label: machined finds the ESP by it.
pub const ESP_LABEL: &str = "EFI";

/// The removable-media loader path, which firmware boots without any EFI
/// variable set (a fresh disk has none).
pub const BOOT_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";

/// systemd-boot's own configuration file on the ESP.
pub const LOADER_CONF: &str = "loader/loader.conf";

/// The directory of loader entries on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";

/// The sort key of the slot booted first.
pub const PREFERRED_SORT_KEY: &str = "talos-0";

/// The sort key of the other slot.
pub const OTHER_SORT_KEY: &str = "talos-1";

/// A boot slot: a directory on the ESP holding a kernel and an initramfs,
/// and one loader entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// Its name as the character machined passes around (`talos.slot=`).
    #[must_use]
    pub const fn as_char(self) -> char {
        match self {
            Slot::A => 'A',
            Slot::B => 'B',
        }
    }

    /// The slot called `c`, if any.
    #[must_use]
    pub const fn from_char(c: char) -> Option<Slot> {
        match c {
            'A' => Some(Slot::A),
            'B' => Some(Slot::B),
            _ => None,
        }
    }

    /// The other slot: the one an upgrade writes.
    #[must_use]
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The kernel's path on the ESP, relative (`A/vmlinuz`).
    #[must_use]
    pub fn kernel_path(self) -> String {
        format!("{}/{}", self.as_str(), crate::files::VMLINUZ)
    }

    /// The initramfs's path on the ESP, relative (`A/initramfs.xz`).
    #[must_use]
    pub fn initramfs_path(self) -> String {
        format!("{}/{}", self.as_str(), crate::files::INITRAMFS)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    let key = if preferred {
        PREFERRED_SORT_KEY
    } else {
        OTHER_SORT_KEY
    };
    format!(
        "title Talos-rs {version} (slot {s})\nsort-key {key}\nversion {version}\nlinux /{kernel}\ninitrd /{initrd}\noptions {KERNEL_ARGS} talos.slot={s}\n",
        kernel = slot.kernel_path(),
        initrd = slot.initramfs_path(),
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

/// Whether `name` (a file in [`ENTRIES_DIR`]) belongs to `slot`: its entry
/// under any boot-counter name systemd-boot may have given it
/// (`talos-B.conf`, `talos-B+3.conf`, `talos-B+2-1.conf`) or a temporary
/// file left by an interrupted rewrite (`talos-B.tmp`, `talos-B+3.tmp`).
#[must_use]
pub fn belongs_to(name: &str, slot: Slot) -> bool {
    let Some(rest) = name
        .strip_prefix("talos-")
        .and_then(|r| r.strip_prefix(slot.as_str()))
    else {
        return false;
    };
    rest.starts_with('.') || rest.starts_with('+')
}

/// `text` (a loader entry) with its `sort-key` line replaced by `key` (or
/// one added when it had none).
#[must_use]
pub fn with_sort_key(text: &str, key: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| l.split_whitespace().next() != Some("sort-key"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("sort-key {key}\n"));
    out
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
        assert!(a.starts_with("title Talos-rs 0.1.0 (slot A)\n"), "{a}");
        let b = loader_entry(Slot::B, "0.2.0", false);
        assert!(b.contains("sort-key talos-1\n"), "{b}");
        assert!(b.contains("linux /B/vmlinuz\n"), "{b}");
        assert!(b.contains("version 0.2.0\n"), "{b}");
        assert_eq!(entry_file_name(Slot::B, Some(3)), "talos-B+3.conf");
        assert_eq!(entry_file_name(Slot::A, None), "talos-A.conf");
        assert!(loader_conf().contains("editor no\n"));
        assert!(loader_conf().contains("timeout 0\n"));
    }

    #[test]
    fn slots() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
        assert_eq!(Slot::from_char('B'), Some(Slot::B));
        assert_eq!(Slot::from_char('a'), None);
        assert_eq!(Slot::from_char('C'), None);
        for s in [Slot::A, Slot::B] {
            assert_eq!(Slot::from_char(s.as_char()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(Slot::B.kernel_path(), "B/vmlinuz");
        assert_eq!(Slot::A.initramfs_path(), "A/initramfs.xz");
    }

    #[test]
    fn entry_names_by_slot() {
        for name in [
            "talos-B.conf",
            "talos-B+3.conf",
            "talos-B+2-1.conf",
            "talos-B+0-3.conf",
            "talos-B.tmp",
        ] {
            assert!(belongs_to(name, Slot::B), "{name}");
            assert!(!belongs_to(name, Slot::A), "{name}");
        }
        for name in [
            "talos-A.conf",
            "talos-Bx.conf",
            "other-B.conf",
            "talos-.conf",
        ] {
            assert!(!belongs_to(name, Slot::B), "{name}");
        }
    }

    #[test]
    fn sort_key_rewrite_replaces_the_line() {
        let a = loader_entry(Slot::A, "1.0", true);
        let demoted = with_sort_key(&a, OTHER_SORT_KEY);
        assert!(demoted.contains("sort-key talos-1\n"), "{demoted}");
        assert!(!demoted.contains("talos-0"), "{demoted}");
        assert_eq!(demoted.matches("sort-key").count(), 1);
        // Everything else is kept.
        for line in a.lines().filter(|l| !l.starts_with("sort-key")) {
            assert!(demoted.contains(line), "{line} lost: {demoted}");
        }
        let added = with_sort_key("title x\n", PREFERRED_SORT_KEY);
        assert_eq!(added, "title x\nsort-key talos-0\n");
    }
}
