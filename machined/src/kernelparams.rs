//! Kernel parameters: the hardening defaults upstream sets (the Kernel
//! Self Protection Project's recommendations), then `machine.sysctls`
//! and `machine.sysfs` from the config, written to `/proc/sys` and `/sys`
//! at start and again whenever the config changes.
//!
//! Each parameter is named as upstream's `KernelParamStatus` names it:
//! `proc.sys.<sysctl>` or `sys.<sysfs key>`. A sysctl key is read as
//! sysctl(8) reads it: dots separate the path, and a slash stands for a
//! dot inside one part (`net.ipv4.conf.eth0/100.rp_filter`). The value a
//! parameter had before it was first changed is kept, and written back
//! when the config stops asking for it. A parameter the kernel does not
//! have is reported as unsupported, not an error: kernels differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Upstream's KSPP defaults, as sysctl keys and values. A config entry
/// for the same key wins.
pub const KSPP: &[(&str, &str)] = &[
    ("dev.tty.ldisc_autoload", "0"),
    ("dev.tty.legacy_tiocsti", "0"),
    ("fs.protected_symlinks", "1"),
    ("fs.protected_hardlinks", "1"),
    ("fs.protected_fifos", "2"),
    ("fs.protected_regular", "2"),
    ("fs.suid_dumpable", "0"),
    ("kernel.kptr_restrict", "2"),
    ("kernel.dmesg_restrict", "1"),
    ("kernel.perf_event_paranoid", "3"),
    ("kernel.randomize_va_space", "2"),
    ("kernel.yama.ptrace_scope", "2"),
    ("user.max_user_namespaces", "0"),
    ("kernel.unprivileged_bpf_disabled", "1"),
    ("net.core.bpf_jit_harden", "2"),
];

/// The prefix of sysctl ids.
pub const SYSCTL: &str = "proc.sys.";
/// The prefix of sysfs ids.
pub const SYSFS: &str = "sys.";

/// What the kernel has of one parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Its value now.
    pub current: String,
    /// Its value before it was first set.
    pub default: String,
    /// The kernel has no such parameter.
    pub unsupported: bool,
}

/// Every parameter to have, by id: the defaults, then the config's.
#[must_use]
pub fn desired(
    sysctls: &BTreeMap<String, String>,
    sysfs: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = KSPP
        .iter()
        .map(|(k, v)| (format!("{SYSCTL}{k}"), (*v).to_owned()))
        .collect();
    for (key, value) in sysctls {
        out.insert(format!("{SYSCTL}{}", key.trim()), value.trim().to_owned());
    }
    for (key, value) in sysfs {
        out.insert(format!("{SYSFS}{}", key.trim()), value.trim().to_owned());
    }
    out
}

/// The file of parameter `id` under `root`; `None` for an id that names
/// no file safely (an empty part, `..`, or neither prefix).
#[must_use]
pub fn path_of(root: &Path, id: &str) -> Option<PathBuf> {
    let (base, key, sysctl) = if let Some(key) = id.strip_prefix(SYSCTL) {
        (root.join("proc/sys"), key, true)
    } else if let Some(key) = id.strip_prefix(SYSFS) {
        (root.join("sys"), key, false)
    } else {
        return None;
    };
    let mut path = base;
    path.extend(machinery::config::kernel_param_parts(key, sysctl)?);
    Some(path)
}

/// The parameters set so far, and what each was before.
#[derive(Debug)]
pub struct KernelParams {
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Id → the value before it was first written.
    defaults: BTreeMap<String, String>,
    /// Id → status, for every parameter asked for last.
    statuses: BTreeMap<String, Status>,
}

impl KernelParams {
    /// The node's own (under `/`), one for the whole process: what each
    /// parameter was before is kept across the restart that follows a
    /// config applied in maintenance mode.
    pub fn node() -> &'static KernelParams {
        static NODE: std::sync::OnceLock<KernelParams> = std::sync::OnceLock::new();
        NODE.get_or_init(|| KernelParams::new("/"))
    }

    /// Parameters under `root` (`/` on a node).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> KernelParams {
        KernelParams {
            root: root.into(),
            state: Mutex::new(State::default()),
        }
    }

    /// Writes every parameter of `desired` that differs, and writes back
    /// the value from before of those no longer desired. Returns what
    /// could not be done, one line each (the rest is still done).
    pub fn apply(&self, desired: &BTreeMap<String, String>) -> Vec<String> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut problems = Vec::new();
        // Given up: back to what they were.
        let dropped: Vec<String> = state
            .defaults
            .keys()
            .filter(|id| !desired.contains_key(*id))
            .cloned()
            .collect();
        for id in dropped {
            let Some(default) = state.defaults.get(&id).cloned() else {
                continue;
            };
            match path_of(&self.root, &id).map(|path| write(&path, &default)) {
                // Gone from the kernel, or not a name: nothing to restore.
                None | Some(Ok(())) => {}
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Some(Err(e)) => {
                    // Kept, to be tried again at the next change.
                    problems.push(format!("{id}: restoring {default:?}: {e}"));
                    continue;
                }
            }
            state.defaults.remove(&id);
        }
        let mut statuses = BTreeMap::new();
        for (id, value) in desired {
            let Some(path) = path_of(&self.root, id) else {
                problems.push(format!("{id}: not a kernel parameter name"));
                continue;
            };
            let current = match std::fs::read_to_string(&path) {
                Ok(text) => text.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    statuses.insert(
                        id.clone(),
                        Status {
                            unsupported: true,
                            ..Status::default()
                        },
                    );
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{id}: reading {}: {e}", path.display()));
                    continue;
                }
            };
            let default = state
                .defaults
                .entry(id.clone())
                .or_insert_with(|| current.clone())
                .clone();
            // Whitespace-separated values read back with tabs (e.g.
            // net.ipv4.ip_local_port_range): compare word by word.
            let same = current.split_whitespace().eq(value.split_whitespace());
            let current = if same {
                current
            } else {
                match write(&path, value) {
                    Ok(()) => std::fs::read_to_string(&path)
                        .map_or_else(|_| value.clone(), |t| t.trim().to_owned()),
                    Err(e) => {
                        problems.push(format!("{id}: writing {value:?}: {e}"));
                        current
                    }
                }
            };
            statuses.insert(
                id.clone(),
                Status {
                    current,
                    default,
                    unsupported: false,
                },
            );
        }
        state.statuses = statuses;
        problems
    }

    /// The status of every parameter asked for last, by id.
    #[must_use]
    pub fn statuses(&self) -> BTreeMap<String, Status> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .statuses
            .clone()
    }
}

/// Writes an existing file only: a parameter that went away must not be
/// created (some of `/sys`, efivarfs, would take a new file).
fn write(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn ids_name_files_as_sysctl_does() {
        let root = Path::new("/r");
        assert_eq!(
            path_of(root, "proc.sys.net.ipv4.ip_forward"),
            Some(PathBuf::from("/r/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            path_of(root, "proc.sys.net.ipv4.conf.eth0/100.rp_filter"),
            Some(PathBuf::from(
                "/r/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
            ))
        );
        assert_eq!(
            path_of(root, "sys.kernel.mm.transparent_hugepage.enabled"),
            Some(PathBuf::from(
                "/r/sys/kernel/mm/transparent_hugepage/enabled"
            ))
        );
        for bad in [
            "proc.sys.net..ipv4",
            "proc.sys.",
            "sys.a.//.b",
            "sys.a/b",
            "etc.passwd",
            "proc.sys.a../..b",
        ] {
            assert_eq!(path_of(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_config_wins_over_the_defaults() {
        let d = desired(
            &map(&[
                ("kernel.kptr_restrict", "1"),
                (" vm.max_map_count ", " 262144 "),
            ]),
            &map(&[("kernel.mm.ksm.run", "0")]),
        );
        assert_eq!(d["proc.sys.kernel.kptr_restrict"], "1");
        assert_eq!(d["proc.sys.vm.max_map_count"], "262144");
        assert_eq!(d["sys.kernel.mm.ksm.run"], "0");
        assert_eq!(d["proc.sys.kernel.dmesg_restrict"], "1");
        assert_eq!(d.len(), KSPP.len() + 2);
    }

    #[test]
    fn applies_restores_and_reports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        };
        let read = |rel: &str| std::fs::read_to_string(dir.path().join(rel)).expect("read");
        file("proc/sys/vm/max_map_count", "65530\n");
        file("proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
        file("sys/kernel/mm/ksm/run", "0\n");
        let params = KernelParams::new(dir.path());
        let problems = params.apply(&map(&[
            ("proc.sys.vm.max_map_count", "262144"),
            ("proc.sys.net.ipv4.ip_local_port_range", "32768 60999"),
            ("sys.kernel.mm.ksm.run", "1"),
            ("proc.sys.kernel.no_such_knob", "1"),
            ("proc.sys.bad..key", "1"),
        ]));
        assert_eq!(problems, ["proc.sys.bad..key: not a kernel parameter name"]);
        assert_eq!(read("proc/sys/vm/max_map_count"), "262144");
        assert_eq!(read("sys/kernel/mm/ksm/run"), "1");
        // Equal word by word: not written.
        assert_eq!(
            read("proc/sys/net/ipv4/ip_local_port_range"),
            "32768\t60999\n"
        );
        let statuses = params.statuses();
        assert_eq!(
            statuses["proc.sys.vm.max_map_count"],
            Status {
                current: "262144".into(),
                default: "65530".into(),
                unsupported: false
            }
        );
        assert!(statuses["proc.sys.kernel.no_such_knob"].unsupported);

        // Changed again: the default stays the first value; dropped: the
        // default is written back, and the status goes.
        params.apply(&map(&[("proc.sys.vm.max_map_count", "300000")]));
        assert_eq!(
            params.statuses()["proc.sys.vm.max_map_count"].default,
            "65530"
        );
        params.apply(&BTreeMap::new());
        assert_eq!(read("proc/sys/vm/max_map_count"), "65530");
        assert_eq!(read("sys/kernel/mm/ksm/run"), "0");
        assert!(params.statuses().is_empty());
    }
}
