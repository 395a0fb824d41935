//! Metal boot: what machined does as PID 1, started by the kernel as the
//! initramfs's `/init`, before it serves anything.
//!
//! The initramfs (built by `imager`) holds `/init` (this binary),
//! `/lib/modules/*.ko[.xz]`, `/modules.order` and `/rootfs.sqsh`. The
//! sequence, [`boot_metal`]:
//!
//! 1. [`install_panic_hook`]: from here on a panic anywhere (any thread,
//!    any tokio task) is [`fatal`].
//! 2. [`early_mounts`]: `/proc`, `/sys`, `/dev` (devtmpfs), `/run`, `/tmp`,
//!    `/system` (tmpfs), `/dev/pts`; then Ctrl-Alt-Del is made a SIGINT
//!    to PID 1 instead of an instant reset.
//! 3. [`check_kernel_args`] of `/proc/cmdline`: the KSPP hardening
//!    arguments must be there; if not, say which on the console and halt
//!    (rebooting would not add them).
//! 4. [`load_modules`] in `/modules.order` with `finit_module`; the ones
//!    in `/modules.network` (the NIC driver) and `/modules.deferred` (xfs,
//!    vfat, overlay: only disk filesystems need them) are opened for later.
//! 5. [`switch_root_to_squashfs`]: `/rootfs.sqsh` on a read-only loop
//!    device becomes `/`, the early mounts move along, and
//!    `/system/etc/{hosts,resolv.conf}` are bound over `/etc/...`.
//! 6. If a disk has a filesystem of ours (STATE, EPHEMERAL, the ESP),
//!    [`finish_modules`] loads the deferred modules and locks module
//!    loading (`kernel.modules_disabled = 1`), and STATE and EPHEMERAL
//!    are mounted. Otherwise (a first boot, no disk of ours yet) that
//!    waits until apid is up, a few seconds later: machined then loads
//!    the NIC driver ([`load_network_modules`]) as networkd starts, and
//!    the rest at a low priority ([`finish_modules_in_background`]):
//!    under emulation xfs alone takes 1.5 s to load, and neither the
//!    operator's first call nor the DHCP lease need wait for it. Anything
//!    that mounts a disk filesystem calls [`finish_modules`] first.
//!
//! Everything here blocks (mount, `finit_module`, ioctl, sleep, sync):
//! call it on the main thread before any tokio runtime exists. Logging goes
//! to `/dev/kmsg` ([`kmsg_log`]) because nothing else exists yet.
//!
//! The loop device needs three ioctls that rustix has no safe wrapper for;
//! they live in the private `loop_device` module, the one place with
//! `unsafe` in machined.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::mount::{MountFlags, mount, mount_bind, mount_move};
use rustix::process::{Pid, Signal, chdir, chroot, getpid, kill_process_group};
use rustix::system::{RebootCommand, reboot};

/// Where the initramfs keeps the module files.
pub const INITRAMFS_MODULES_DIR: &str = "/lib/modules";
/// The initramfs's module load order: one file name per line.
pub const INITRAMFS_MODULES_ORDER: &str = "/modules.order";

/// The NIC driver, loaded by [`load_network_modules`] as networkd starts.
pub const INITRAMFS_MODULES_NETWORK: &str = "/modules.network";
/// The modules only disk filesystems need, loaded by [`finish_modules`].
pub const INITRAMFS_MODULES_DEFERRED: &str = "/modules.deferred";
/// The root file system image in the initramfs.
pub const INITRAMFS_ROOTFS: &str = "/rootfs.sqsh";
/// Where the squashfs is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/newroot";

/// Kernel arguments a node refuses to run without (KSPP recommendations,
/// as upstream Talos enforces): zero memory on allocation and on free,
/// no slab merging, kernel page-table isolation.
pub const REQUIRED_KERNEL_ARGS: &[&str] = &[
    "init_on_alloc=1",
    "init_on_free=1",
    "slab_nomerge",
    "pti=on",
];

/// Mounts that move from the initramfs into the new root, in order.
pub const MOVED_MOUNTS: &[&str] = &["/dev", "/proc", "/sys", "/run", "/system", "/tmp"];

/// Runtime copies of files the read-only root has placeholders for:
/// (source on `/system`, target in `/etc`, content when first created).
/// networkd rewrites the sources in place (never by rename: a bind mount
/// pins the inode it was made with).
pub const SYSTEM_ETC_FILES: &[(&str, &str, &str)] = &[
    (
        "/system/etc/hosts",
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    ("/system/etc/resolv.conf", "/etc/resolv.conf", ""),
];

const MODULES_DISABLED: &str = "/proc/sys/kernel/modules_disabled";
const PRINTK_DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";
const KMSG: &str = "/dev/kmsg";
pub(crate) const CONSOLE: &str = "/dev/console";
/// `finit_module` flag: the file is compressed; the kernel decompresses it
/// (Linux >= 5.17 built with module decompression; 6.1 Debian is not).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;
/// Longest text of one `/dev/kmsg` record we write (the kernel refuses
/// records over ~1000 bytes with EINVAL).
const KMSG_MAX_TEXT: usize = 900;
/// How long [`fatal`] lets processes handle SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long [`fatal`] waits for `sync(2)`.
pub(crate) const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// A boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A mount point could not be created.
    #[error("creating the mount point {path}: {source}")]
    MountPoint {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file system could not be mounted.
    #[error("mounting {fstype} ({what}) at {target}: {source}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The source (device or name).
        what: String,
        /// The mount point.
        target: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The module order file could not be read.
    #[error("reading the module order {path}: {source}")]
    ModuleOrder {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A module file could not be opened.
    #[error("opening the module {path}: {source}")]
    ModuleOpen {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A line of the module order file is not a module file name.
    #[error("module order line {line}: {text:?} is not a module file name")]
    ModuleOrderLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// Module loading could not be locked.
    #[error("locking module loading ({path}): {source}")]
    LockModules {
        /// The sysctl file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The root image could not be attached to a loop device.
    #[error("attaching {image} to a loop device: {step}: {source}")]
    Loop {
        /// The image.
        image: PathBuf,
        /// Which step.
        step: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The new root lacks a mount point.
    #[error("the new root has no directory {path} to move a mount onto")]
    MissingMountPoint {
        /// The missing directory.
        path: PathBuf,
    },
    /// A mount could not be moved.
    #[error("moving the mount {from} to {to}: {source}")]
    Move {
        /// The mount.
        from: PathBuf,
        /// Where to.
        to: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A step of the root switch failed.
    #[error("switching root to {new_root}: {step}: {source}")]
    SwitchRoot {
        /// The new root.
        new_root: PathBuf,
        /// Which step.
        step: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// A runtime file could not be created.
    #[error("creating {path}: {source}")]
    SystemFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A bind mount failed.
    #[error("bind-mounting {from} over {to}: {source}")]
    Bind {
        /// The source file.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

// === early mounts ===

/// One early mount.
#[derive(Debug, Clone, Copy)]
struct EarlyMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: Option<&'static CStr>,
    /// Boot goes on without it if false.
    required: bool,
}

/// The early mounts, in order, each with why it is there.
fn early_mount_table() -> [EarlyMount; 8] {
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    [
        // /proc/cmdline (kernel arguments), /proc/sys (modules_disabled),
        // /proc/self; later the stats and process APIs.
        EarlyMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: hardened,
            data: None,
            required: true,
        },
        // Devices, block device attributes and uevents for udevd.
        EarlyMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: hardened,
            data: None,
            required: true,
        },
        // The unified control group hierarchy: one group per service
        // (crate::cgroups). Moves into the new root with /sys. A kernel
        // without it boots on, its services in no group of their own.
        EarlyMount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: hardened,
            data: Some(c"nsdelegate"),
            required: false,
        },
        // Device nodes, made by the kernel (the image ships none but
        // /dev/console): /dev/kmsg, /dev/loop-control, /dev/vda...
        EarlyMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MountFlags::NOSUID,
            data: Some(c"mode=0755"),
            required: true,
        },
        // Pseudo-terminals: nothing of ours uses them yet; optional.
        EarlyMount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MountFlags::NOSUID | MountFlags::NOEXEC,
            data: Some(c"mode=0620,ptmxmode=0666"),
            required: false,
        },
        // Runtime state of programs that expect /run.
        EarlyMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: Some(c"mode=0755"),
            required: true,
        },
        // Scratch space.
        EarlyMount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: Some(c"mode=1777"),
            required: true,
        },
        // Our runtime files: sockets (/system/run), secrets, etc/hosts and
        // resolv.conf; STATE is mounted under it later.
        EarlyMount {
            source: "tmpfs",
            target: "/system",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: Some(c"mode=0755"),
            required: true,
        },
    ]
}

fn mkdir_p(path: &Path) -> Result<(), BootError> {
    std::fs::create_dir_all(path).map_err(|source| BootError::MountPoint {
        path: path.to_path_buf(),
        source,
    })
}

fn mount_one(m: &EarlyMount) -> Result<(), BootError> {
    let target = Path::new(m.target);
    mkdir_p(target)?;
    mount(m.source, target, m.fstype, m.flags, m.data).map_err(|e| BootError::Mount {
        fstype: m.fstype,
        what: m.source.to_owned(),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Mounts proc, sysfs, devtmpfs, devpts, and tmpfs on `/run`, `/tmp` and
/// `/system` (see the table in the source for why each), creating the
/// mount points. A failed devpts is logged and skipped. Also lifts the
/// kernel's rate limit on `/dev/kmsg` writes (10 per 5 s by default) so
/// PID 1's early lines are not dropped; a `printk.devkmsg=` kernel argument
/// locks that setting, and then it stays as the argument says.
///
/// Blocks (mount(2)).
///
/// # Errors
/// A required mount failed.
pub fn early_mounts() -> Result<(), BootError> {
    for m in early_mount_table() {
        match mount_one(&m) {
            Ok(()) => {}
            Err(e) if !m.required => log(Priority::Warning, &format!("{e}; going on without")),
            Err(e) => return Err(e),
        }
    }
    let _ = std::fs::write(PRINTK_DEVKMSG, "on\n");
    Ok(())
}

// === kernel arguments ===

/// The kernel's parameter name comparison: `-` and `_` are the same.
fn param_name_eq(a: &str, b: &str) -> bool {
    let dash = |c: u8| c == b'-' || c == b'_';
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (dash(x) && dash(y)))
}

/// The value of the last `name` among the kernel's own arguments (those
/// before a lone `--`; the last occurrence wins, as in the kernel):
/// `None` if absent, `Some(None)` for a bare flag, `Some(Some(v))` for
/// `name=v` (surrounding quotes removed).
#[must_use]
pub fn last_kernel_arg<'a>(cmdline: &'a str, name: &str) -> Option<Option<&'a str>> {
    cmdline
        .split_whitespace()
        .take_while(|word| *word != "--")
        .filter_map(|word| match word.split_once('=') {
            Some((key, value)) => param_name_eq(key, name).then_some(Some(value.trim_matches('"'))),
            None => param_name_eq(word, name).then_some(None),
        })
        .last()
}

fn satisfied(cmdline: &str, required: &str) -> bool {
    match required.split_once('=') {
        Some((name, want)) => last_kernel_arg(cmdline, name) == Some(Some(want)),
        None => last_kernel_arg(cmdline, required).is_some(),
    }
}

/// Checks that every one of [`REQUIRED_KERNEL_ARGS`] is on `cmdline` (the
/// last occurrence of each counts: `pti=on pti=off` lacks `pti=on`; values
/// must match exactly). Pure.
///
/// # Errors
/// The missing arguments, in [`REQUIRED_KERNEL_ARGS`] order.
pub fn check_kernel_args(cmdline: &str) -> Result<(), Vec<String>> {
    let missing: Vec<String> = REQUIRED_KERNEL_ARGS
        .iter()
        .filter(|req| !satisfied(cmdline, req))
        .map(|req| (*req).to_owned())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// The console message for missing kernel arguments.
#[must_use]
pub fn missing_kernel_args_message(missing: &[String]) -> String {
    format!(
        "the kernel command line lacks required arguments: {}. Add them to the boot loader's \
         kernel command line (all required: {}). Halting.",
        missing.join(" "),
        REQUIRED_KERNEL_ARGS.join(" ")
    )
}

/// Whether `cmdline` asks to stay down on a fatal error (`panic=0`: the
/// kernel itself would wait forever on a panic) instead of rebooting.
#[must_use]
pub fn panic_halts(cmdline: &str) -> bool {
    last_kernel_arg(cmdline, "panic") == Some(Some("0"))
}

/// `/proc/cmdline`, or empty if it cannot be read.
#[must_use]
pub fn read_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

// === modules ===

/// What [`load_modules`] did.
#[derive(Debug, Default)]
pub struct ModuleReport {
    /// Loaded now, in order.
    pub loaded: Vec<String>,
    /// Already in the kernel (EEXIST).
    pub already_loaded: Vec<String>,
    /// Could not be loaded, with why; the others were still tried.
    pub failed: Vec<(String, io::Error)>,
}

fn is_module_file_name(name: &str) -> bool {
    let plain = !name.contains('/') && name != "." && name != "..";
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext));
    plain && stem.is_some_and(|s| !s.is_empty())
}

/// The module file names of a `modules.order` text, in order; blank lines
/// and `#` comments are skipped. Pure.
///
/// # Errors
/// A line that is not a plain module file name (`x.ko`, `x.ko.xz`...).
pub fn parse_module_order(text: &str) -> Result<Vec<&str>, BootError> {
    let mut names = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if !is_module_file_name(name) {
            return Err(BootError::ModuleOrderLine {
                line: index + 1,
                text: line.to_owned(),
            });
        }
        names.push(name);
    }
    Ok(names)
}

fn load_one(file: &File, name: &str) -> io::Result<()> {
    let flags = if name.ends_with(".ko") {
        0
    } else {
        MODULE_INIT_COMPRESSED_FILE
    };
    rustix::system::finit_module(file, c"", flags).map_err(io::Error::from)
}

/// Opens each module listed in `order_file` (in `dir`), in order: the
/// handles stay usable after the switch root hides the initramfs.
///
/// # Errors
/// The order file cannot be read or parsed, or a module cannot be opened.
pub fn open_modules(dir: &Path, order_file: &Path) -> Result<Vec<(String, File)>, BootError> {
    let text = std::fs::read_to_string(order_file).map_err(|source| BootError::ModuleOrder {
        path: order_file.to_path_buf(),
        source,
    })?;
    parse_module_order(&text)?
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            File::open(&path)
                .map(|f| (name.to_owned(), f))
                .map_err(|source| BootError::ModuleOpen { path, source })
        })
        .collect()
}

/// Loads `modules` with `finit_module(2)`, in order; a module already
/// loaded (EEXIST) is fine, one that fails is reported and the rest are
/// still tried. Blocks (each module's init runs in the call).
#[must_use]
pub fn load_modules(modules: Vec<(String, File)>) -> ModuleReport {
    let mut report = ModuleReport::default();
    for (name, file) in modules {
        match load_one(&file, &name) {
            Ok(()) => report.loaded.push(name),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {
                report.already_loaded.push(name);
            }
            Err(e) => report.failed.push((name, e)),
        }
    }
    report
}

/// Locks module loading for good (`/proc/sys/kernel/modules_disabled` =
/// 1): nothing can load code into the kernel after this.
///
/// # Errors
/// The write fails.
pub fn lock_modules() -> Result<(), BootError> {
    std::fs::write(MODULES_DISABLED, "1\n").map_err(|source| BootError::LockModules {
        path: PathBuf::from(MODULES_DISABLED),
        source,
    })
}

/// Where module loading stands (metal only).
#[derive(Debug)]
enum ModuleStage {
    /// Not a metal boot: machined loads no modules.
    None,
    /// Opened, waiting: the NIC driver for [`load_network_modules`] (empty
    /// once loaded) and the filesystems' modules for [`finish_modules`].
    Pending {
        network: Vec<(String, File)>,
        filesystems: Vec<(String, File)>,
    },
    /// Everything loaded and loading locked.
    Done,
}

static MODULES: std::sync::Mutex<ModuleStage> = std::sync::Mutex::new(ModuleStage::None);

fn modules_stage() -> std::sync::MutexGuard<'static, ModuleStage> {
    MODULES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn report_modules(what: &str, report: &ModuleReport, locked: bool) {
    for (name, e) in &report.failed {
        log(Priority::Warning, &format!("loading module {name}: {e}"));
    }
    kmsg_log(&format!(
        "{what}: {} loaded, {} failed{}",
        report.loaded.len(),
        report.failed.len(),
        if locked {
            "; module loading locked"
        } else {
            ""
        }
    ));
}

/// Loads the NIC driver if it is still pending; the filesystems' modules
/// stay pending. Idempotent and safe from any thread; a no-op off metal.
/// Blocks while the modules load.
pub fn load_network_modules() {
    let mut stage = modules_stage();
    let ModuleStage::Pending { network, .. } = &mut *stage else {
        return;
    };
    if network.is_empty() {
        return;
    }
    let report = load_modules(std::mem::take(network));
    report_modules("network modules", &report, false);
}

/// Loads whatever modules are still pending (the NIC driver, then xfs,
/// vfat, ...), then locks module loading. Idempotent and safe from any
/// thread; a no-op off metal. Whatever needs a disk filesystem calls it
/// first. Blocks while the modules load. Returns the report when it loaded
/// them now.
pub fn finish_modules() -> Option<ModuleReport> {
    let mut stage = modules_stage();
    let ModuleStage::Pending {
        network,
        filesystems,
    } = std::mem::replace(&mut *stage, ModuleStage::Done)
    else {
        return None;
    };
    let mut modules = network;
    modules.extend(filesystems);
    let report = load_modules(modules);
    if let Err(e) = lock_modules() {
        log(Priority::Error, &e.to_string());
    }
    report_modules("deferred modules", &report, true);
    Some(report)
}

/// [`finish_modules`] at a low CPU priority for the calling thread: the
/// modules load in the kernel in this thread's time, and on a first boot
/// nothing waits for them while the daemons start and networkd takes its
/// lease. The thread's priority is put back afterwards (it is a pooled
/// blocking thread). A caller that needs a filesystem meanwhile blocks in
/// [`finish_modules`] until the load is done.
pub fn finish_modules_in_background() -> Option<ModuleReport> {
    let tid = rustix::thread::gettid();
    // PRIO_PROCESS with a thread id sets that one thread's nice value.
    let before = rustix::process::getpriority_process(Some(tid)).ok();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
        log(
            Priority::Warning,
            &format!("lowering the priority of module loading: {e}"),
        );
    }
    let report = finish_modules();
    if let Some(nice) = before {
        let _ = rustix::process::setpriority_process(Some(tid), nice);
    }
    report
}

/// The nice value of [`finish_modules_in_background`]: a tenth of the CPU
/// share of a default-priority task while others want it.
const BACKGROUND_NICE: i32 = 10;

// === switch root ===

/// Opens `path`, retrying briefly while it does not exist yet (a loop
/// device node appears in devtmpfs as the device is added).
fn open_device(path: &Path) -> io::Result<File> {
    let mut attempts = 0;
    loop {
        match OpenOptions::new().read(true).write(true).open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Attaches `image` read-only to a free loop device (detached again
/// automatically once nothing uses it); returns the device's path and an
/// open handle, which must be kept until the device is mounted.
fn attach_loop(image: &Path) -> Result<(PathBuf, File), BootError> {
    let err = |step: &'static str| {
        move |source: io::Error| BootError::Loop {
            image: image.to_path_buf(),
            step,
            source,
        }
    };
    let backing = File::open(image).map_err(err("opening the image"))?;
    let control = open_device(Path::new("/dev/loop-control")).map_err(err(
        "opening /dev/loop-control (is the loop module loaded?)",
    ))?;
    let mut name = image.as_os_str().as_encoded_bytes().to_vec();
    name.truncate(loop_device::NAME_MAX);
    let mut last_busy = None;
    // Another process could take the free device between GET_FREE and
    // CONFIGURE (EBUSY); at boot nobody does, but retry a few times.
    for _ in 0..8 {
        let index = loop_device::get_free(&control)
            .map_err(err("finding a free loop device (LOOP_CTL_GET_FREE)"))?;
        let path = PathBuf::from(format!("/dev/loop{index}"));
        let device = open_device(&path).map_err(err("opening the loop device"))?;
        match loop_device::configure(
            &device,
            &backing,
            loop_device::LO_FLAGS_READ_ONLY | loop_device::LO_FLAGS_AUTOCLEAR,
            &name,
        ) {
            Ok(()) => return Ok((path, device)),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                last_busy = Some(e);
            }
            Err(e) => return Err(err("configuring the loop device (LOOP_CONFIGURE)")(e)),
        }
    }
    Err(err("configuring the loop device (LOOP_CONFIGURE)")(
        last_busy.unwrap_or_else(|| io::Error::from(io::ErrorKind::ResourceBusy)),
    ))
}

/// Makes the squashfs `image` the root file system (the classic
/// `switch_root`; `pivot_root(2)` cannot leave the initramfs's rootfs):
///
/// 1. attaches `image` to a loop device, read-only, auto-clearing;
/// 2. mounts it read-only (squashfs, nodev) at [`NEW_ROOT`];
/// 3. moves each of [`MOVED_MOUNTS`] into the new root (`MS_MOVE`; their
///    mount points must exist in the image);
/// 4. `chdir(NEW_ROOT)`, moves `.` onto `/`, `chroot(".")`, `chdir("/")`;
/// 5. creates [`SYSTEM_ETC_FILES`] on `/system` and bind-mounts each over
///    its placeholder in `/etc`.
///
/// The initramfs's files are not deleted: `rootfs.sqsh` must stay (it backs
/// the loop device), and so must `/init`: machined keeps running from it,
/// and starts every daemon by executing it again through `/proc/self/exe`
/// (see [`crate::daemons`]), the one way left to reach it. The rest (~22
/// modules) is about a MB of RAM that nothing reaches any more.
///
/// Blocks (ioctl, mount).
///
/// # Errors
/// The step that failed; the process's root is unchanged unless the
/// failure is in step 4 or 5.
pub fn switch_root_to_squashfs(image: &Path) -> Result<(), BootError> {
    let new_root = Path::new(NEW_ROOT);
    mkdir_p(new_root)?;
    let (device_path, device) = attach_loop(image)?;
    mount(
        &device_path,
        new_root,
        "squashfs",
        MountFlags::RDONLY | MountFlags::NODEV,
        None::<&CStr>,
    )
    .map_err(|e| BootError::Mount {
        fstype: "squashfs",
        what: device_path.display().to_string(),
        target: new_root.to_path_buf(),
        source: e.into(),
    })?;
    // The mount holds the device now; with AUTOCLEAR it is detached when
    // the squashfs is unmounted.
    drop(device);

    for from in MOVED_MOUNTS {
        let to = new_root.join(from.trim_start_matches('/'));
        if !to.is_dir() {
            return Err(BootError::MissingMountPoint { path: to });
        }
        mount_move(*from, &to).map_err(|e| BootError::Move {
            from: PathBuf::from(from),
            to: to.clone(),
            source: e.into(),
        })?;
    }

    let step = |step: &'static str| {
        move |e: rustix::io::Errno| BootError::SwitchRoot {
            new_root: new_root.to_path_buf(),
            step,
            source: e.into(),
        }
    };
    chdir(new_root).map_err(step("chdir into it"))?;
    mount_move(".", "/").map_err(step("moving it onto /"))?;
    chroot(".").map_err(step("chroot"))?;
    chdir("/").map_err(step("chdir to the new /"))?;

    bind_system_files()
}

/// Creates `/system/etc/*` (if not there) and binds each over `/etc/*`.
fn bind_system_files() -> Result<(), BootError> {
    let etc = Path::new("/system/etc");
    std::fs::create_dir_all(etc).map_err(|source| BootError::SystemFile {
        path: etc.to_path_buf(),
        source,
    })?;
    for (from, to, initial) in SYSTEM_ETC_FILES {
        let from = Path::new(from);
        if !from.exists() {
            std::fs::write(from, initial)
                .and_then(|()| {
                    std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(|source| BootError::SystemFile {
                    path: from.to_path_buf(),
                    source,
                })?;
        }
        mount_bind(from, *to).map_err(|e| BootError::Bind {
            from: from.to_path_buf(),
            to: PathBuf::from(to),
            source: e.into(),
        })?;
    }
    Ok(())
}

// === the STATE filesystem ===

/// The label of the filesystem that keeps the machine config (upstream's
/// STATE partition; a whole disk with that label works too).
pub const STATE_LABEL: &str = "STATE";

/// Where it is mounted: machined's state directory.
pub const STATE_MOUNT: &str = "/system/state";

/// Finds the block device (a partition or a whole disk) whose filesystem
/// is labelled `label`, among the names in `class_block` (a
/// `/sys/class/block`), opened under `dev`. Devices that cannot be read
/// (an empty CD drive) are skipped. Returns the device and its
/// filesystem type; with several, the first by name.
pub fn find_labelled(
    class_block: &Path,
    dev: &Path,
    label: &str,
) -> Option<(PathBuf, udevd::probe::FsKind)> {
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        // The root image's loop device and RAM disks hold nothing of ours.
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let path = dev.join(&name);
        match udevd::probe::probe_fs_path(&path) {
            Ok(Some(fs)) if fs.label.as_deref() == Some(label) && image_mounts(fs.kind) => {
                Some((path, fs.kind))
            }
            _ => None,
        }
    })
}

/// Whether the image can mount a filesystem of `kind` for STATE, EPHEMERAL
/// or the ESP (xfs and vfat are its modules; ext and squashfs are in the
/// kernel): a volume of another kind with one of those labels is not
/// taken for it.
pub(crate) fn image_mounts(kind: udevd::probe::FsKind) -> bool {
    use udevd::probe::FsKind;
    matches!(
        kind,
        FsKind::Xfs | FsKind::Vfat | FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 | FsKind::Squashfs
    )
}

/// The label of the filesystem for `/var` (upstream's EPHEMERAL).
pub const EPHEMERAL_LABEL: &str = "EPHEMERAL";

/// Where it is mounted.
pub const EPHEMERAL_MOUNT: &str = "/var";

/// Mounts the filesystem labelled `label` (xfs or vfat: the modules the
/// image carries) on `target` if a device carries one, `nosuid,nodev,
/// noexec`. Returns the device mounted, if any.
///
/// # Errors
/// The filesystem was found but could not be mounted.
pub fn mount_labelled(
    class_block: &Path,
    dev: &Path,
    label: &str,
    target: &Path,
) -> Result<Option<PathBuf>, BootError> {
    let Some((device, kind)) = find_labelled(class_block, dev, label) else {
        return Ok(None);
    };
    // The filesystem's module, if it was still deferred.
    finish_modules();
    mkdir_p(target)?;
    let fstype: &'static str = kind.as_str();
    mount(
        &device,
        target,
        fstype,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None::<&CStr>,
    )
    .map_err(|e| BootError::Mount {
        fstype,
        what: device.display().to_string(),
        target: target.to_path_buf(),
        source: e.into(),
    })?;
    Ok(Some(device))
}

/// Formats the partition named `label` (STATE or EPHEMERAL) of the system
/// disk (the one holding META) from the root's template when no filesystem
/// has that label and the partition is blank, as a reset leaves it
/// ([`installer::install::format_blank`]). Says what it did on the
/// console; a failure leaves the node to boot without it.
fn format_blank_volume(class_block: &Path, dev: &Path, label: &'static str) {
    if find_labelled(class_block, dev, label).is_some() {
        return;
    }
    let find = |name| crate::install::find_partition(class_block, dev, name);
    let (Some(part), Some(meta)) = (find(label), find(crate::install::META_PARTITION)) else {
        return;
    };
    if disk_of(class_block, dev, &part) != disk_of(class_block, dev, &meta) {
        return;
    }
    let template =
        Path::new(machinery::constants::FS_TEMPLATES_DIR).join(if label == STATE_LABEL {
            installer::files::STATE_TEMPLATE
        } else {
            installer::files::EPHEMERAL_TEMPLATE
        });
    match installer::install::format_blank(&part, label, &template) {
        Ok(true) => kmsg_log(&format!(
            "{label} ({}) was blank: formatted from the image's template",
            part.display()
        )),
        Ok(false) => kmsg_log(&format!(
            "{label} ({}) holds no filesystem labelled {label} but is not blank: left alone",
            part.display()
        )),
        Err(e) => log(
            Priority::Error,
            &format!("formatting {label} ({}): {e}", part.display()),
        ),
    }
}

/// Grows the xfs filesystem mounted on `target` to fill `device`: the
/// installer writes EPHEMERAL from a small template, and a disk image
/// copied onto a larger disk has a larger partition than its filesystem.
/// A failure leaves `/var` as it is (smaller), and says so.
fn grow_to_partition(device: &Path, target: &Path) {
    let bytes = match installer::target::device_size(device) {
        Ok(bytes) => bytes,
        Err(e) => {
            log(
                Priority::Warning,
                &format!("sizing {}: {e}", device.display()),
            );
            return;
        }
    };
    match installer::xfs::grow_to_fill(target, bytes) {
        Ok(Some((old, new))) => kmsg_log(&format!(
            "{} grown from {} MiB to {} MiB",
            target.display(),
            old >> 20,
            new >> 20
        )),
        Ok(None) => {}
        Err(e) => log(
            Priority::Warning,
            &format!("growing {}: {e}", target.display()),
        ),
    }
}

/// The disk that partition `part` (a device path under `dev`) is on, from
/// sysfs: `/sys/class/block/vda4` links into `.../block/vda/vda4`.
pub fn disk_of(class_block: &Path, dev: &Path, part: &Path) -> Option<PathBuf> {
    let name = part.file_name()?;
    let entry = class_block.join(name);
    if !entry.join("partition").exists() {
        return None;
    }
    let real = std::fs::canonicalize(&entry).ok()?;
    Some(dev.join(real.parent()?.file_name()?))
}

/// Fits the partition table of the disk EPHEMERAL is on to the whole disk
/// before anything on it is mounted: `metal-amd64.raw` copied onto a larger
/// disk keeps the table it was built with, its backup in the middle of the
/// disk and EPHEMERAL ending there. The backup moves to the end and
/// EPHEMERAL's partition grows to it (`installer::layout::grow_to_disk`);
/// the kernel then re-reads the table, and [`grow_to_partition`] grows the
/// filesystem once mounted. A table the installer did not write, or any
/// failure, leaves the disk as it is, and says so.
fn grow_partition_table(class_block: &Path, dev: &Path) {
    let Some((part, _)) = find_labelled(class_block, dev, EPHEMERAL_LABEL) else {
        return;
    };
    let Some(path) = disk_of(class_block, dev, &part) else {
        return;
    };
    let disk = match installer::target::Disk::open(&path) {
        Ok(disk) => disk,
        Err(e) => {
            log(
                Priority::Warning,
                &format!("fitting the partition table: {e}"),
            );
            return;
        }
    };
    match installer::layout::grow_to_disk(&disk) {
        Ok(None) => {}
        Ok(Some(growth)) => {
            let mib = |sectors: u64| (sectors * installer::layout::SECTOR_SIZE) >> 20;
            let (from, to) = growth.disk_sectors;
            let mut line = if growth.primary_restored {
                format!(
                    "{}: the damaged primary partition table was written again from the backup",
                    path.display()
                )
            } else {
                format!(
                    "{}: partition table moved from a {} MiB to a {} MiB disk",
                    path.display(),
                    mib(from),
                    mib(to)
                )
            };
            if let Some((name, before, after)) = growth.last_partition
                && after != before
            {
                line.push_str(&format!(
                    ", {name} grown from {} MiB to {} MiB",
                    mib(before),
                    mib(after)
                ));
            }
            kmsg_log(&line);
            if let Err(e) = disk.reread_partitions() {
                log(
                    Priority::Warning,
                    &format!("{e}: the new partition sizes take effect at the next boot"),
                );
            }
        }
        Err(e) => log(
            Priority::Warning,
            &format!("fitting the partition table: {e}"),
        ),
    }
}

// === loopback ===

/// Brings up `lo` (always interface 1) with one rtnetlink request, so the
/// daemons can reach each other on 127.0.0.1 from their first moment
/// (apid's health check among them), before networkd has started.
/// networkd still owns every interface's configuration afterwards; this
/// only sets the one flag it would set first.
///
/// # Errors
/// The socket, the send or the kernel's answer failed.
pub fn loopback_up() -> io::Result<()> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, recv, send, socket};
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    const LOOPBACK_INDEX: i32 = 1;
    let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    // struct nlmsghdr (16 bytes) + struct ifinfomsg (16 bytes).
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    msg.extend_from_slice(&[0, 0]); // family AF_UNSPEC, padding
    msg.extend_from_slice(&0u16.to_ne_bytes()); // device type
    msg.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    send(&fd, &msg, SendFlags::empty())?;
    let mut reply = [0u8; 256];
    let (n, _) = recv(&fd, &mut reply, RecvFlags::empty())?;
    // The ack: an NLMSG_ERROR whose error code is 0, or -errno.
    if n >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
        return Ok(());
    }
    Err(io::Error::other("no acknowledgement from the kernel"))
}

// === logging before there is a logger ===

/// Syslog priorities of `/dev/kmsg` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// err
    Error = 3,
    /// warning
    Warning = 4,
    /// info
    Info = 6,
}

/// One `/dev/kmsg` record for `line`: `<prio>machined: line\n`, the text
/// cut (at a character boundary) to what the kernel accepts. Pure.
#[must_use]
pub fn kmsg_record(priority: Priority, line: &str) -> String {
    let mut end = line.len().min(KMSG_MAX_TEXT);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("<{}>machined: {}\n", priority as u8, &line[..end])
}

fn write_kmsg(priority: Priority, text: &str) -> io::Result<()> {
    let mut kmsg = OpenOptions::new().write(true).open(KMSG)?;
    for line in text.lines() {
        // One write per record: /dev/kmsg takes each write as one message.
        kmsg.write_all(kmsg_record(priority, line).as_bytes())?;
    }
    Ok(())
}

fn write_console(text: &str) {
    // O_NOCTTY: PID 1 must not make the console its controlling terminal
    // (a ^C there would then be a SIGINT to PID 1, which means reboot).
    let console = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(CONSOLE);
    if let Ok(mut console) = console {
        for line in text.lines() {
            let _ = console.write_all(format!("machined: {line}\n").as_bytes());
        }
    }
}

/// Logs `text` (one record per line) to the kernel log, or to the console
/// if the kernel log cannot be written. Never fails.
pub fn log(priority: Priority, text: &str) {
    if write_kmsg(priority, text).is_err() {
        write_console(text);
    }
}

/// Logs an informational line to `/dev/kmsg` (console as fallback).
pub fn kmsg_log(line: &str) {
    log(Priority::Info, line);
}

/// Logs to `/dev/kmsg` as an error *and* writes to `/dev/console`, for what
/// a person at the console must see whatever the kernel's console log level
/// (it may then show twice).
pub fn console_log(text: &str) {
    let _ = write_kmsg(Priority::Error, text);
    write_console(text);
}

// === the last resort ===

static GOING_DOWN: AtomicBool = AtomicBool::new(false);

/// Sleeps forever. PID 1 must never exit: the kernel would panic.
pub fn halt_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Whether the node is going down ([`fatal`] or [`power_off_or_reboot`]
/// has begun): nothing new may start.
pub(crate) fn going_down() -> bool {
    GOING_DOWN.load(Ordering::SeqCst)
}

/// Runs `f` on a helper thread named `name` and waits at most `limit` for
/// it (a dead disk can make a filesystem call hang forever). Blocks up to
/// `limit`; whether `f` finished.
fn bounded(name: &str, limit: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            f();
            let _ = done_tx.send(());
        });
    spawned.is_ok() && done_rx.recv_timeout(limit).is_ok()
}

/// Runs `sync(2)` on a helper thread and waits at most `limit` for it (a
/// dead disk can make sync hang forever). Blocks up to `limit`.
pub(crate) fn sync_bounded(limit: Duration) -> bool {
    bounded("sync", limit, rustix::fs::sync)
}

/// What to unmount for `roots`, in the order to unmount it, from
/// `mountinfo` (the format of `/proc/*/mountinfo`): every mount at or under
/// them, and every other mount of the same filesystems (a `machine.files`
/// bind from `/var` over a path elsewhere keeps `/var`'s filesystem
/// mounted), latest mounted first, so each goes before what it was
/// mounted on.
fn mounts_under(mountinfo: &str, roots: &[&Path]) -> Vec<PathBuf> {
    // (device, mount point), in mount order.
    let mounts: Vec<(&str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let path = fields.nth(1)?;
            // The kernel escapes space, tab, newline and backslash as octal.
            let path = PathBuf::from(
                path.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            );
            Some((device, path))
        })
        .collect();
    let under = |path: &Path| roots.iter().any(|root| path.starts_with(root));
    let devices: Vec<&str> = mounts
        .iter()
        .filter(|(_, path)| roots.iter().any(|root| path == root))
        .map(|(device, _)| *device)
        .collect();
    mounts
        .iter()
        .rev()
        .filter(|(device, path)| under(path) || devices.contains(device))
        .map(|(_, path)| path.clone())
        .collect()
}

/// Unmounts everything mounted at or under `roots` and every other mount
/// of their filesystems ([`mounts_under`]); where something still holds
/// a filesystem, makes it read-only instead. Either
/// way its journal is written out and clean, so the next boot (maybe an
/// older kernel, after a rollback) mounts it without a replay. Returns the
/// mount points that are neither unmounted nor read-only.
pub(crate) fn unmount_under(roots: &[&Path]) -> Vec<PathBuf> {
    use rustix::mount::{UnmountFlags, mount_remount, unmount};
    // This thread's view: a test's namespace, or PID 1's.
    let mountinfo = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
    let mut left = Vec::new();
    for path in mounts_under(&mountinfo, roots) {
        if unmount(&path, UnmountFlags::empty()).is_ok() {
            continue;
        }
        if mount_remount(&path, MountFlags::RDONLY, "").is_err() {
            left.push(path);
        }
    }
    left
}

/// [`unmount_under`] STATE and EPHEMERAL on a helper thread, waiting at
/// most `limit`.
fn unmount_data_bounded(limit: Duration) {
    // machined's own log files are on /var.
    crate::logbuf::close_node_log_files();
    let done = bounded("unmount", limit, || {
        let left = unmount_under(&[Path::new(STATE_MOUNT), Path::new(EPHEMERAL_MOUNT)]);
        if left.is_empty() {
            console_log("STATE and EPHEMERAL unmounted (or read-only)");
        } else {
            console_log(&format!(
                "could not unmount or make read-only: {}",
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    });
    if !done {
        console_log("unmounting the data filesystems did not finish in time; going on");
    }
}

/// PID 1's last resort: logs `reason` to the kernel log and console,
/// SIGTERMs every other process, waits 2 s, SIGKILLs what is left,
/// unmounts STATE and EPHEMERAL (or makes them read-only) and syncs (at
/// most 10 s each), then reboots — or, with `panic=0` on the kernel command
/// line, halts forever. Only the first caller does this; any other thread
/// calling it meanwhile just sleeps.
///
/// When machined is not PID 1 (tests, container mode) it does not signal
/// every process or reboot the host: it exits with status 70 instead.
///
/// Blocks until the reboot (about 2–12 s).
pub fn fatal(reason: &str) -> ! {
    if GOING_DOWN.swap(true, Ordering::SeqCst) {
        halt_forever();
    }
    console_log(&format!("fatal: {reason}"));
    // A PID 1 that halts below (panic=0) must still be reset by an armed
    // watchdog.
    crate::watchdog::stop_feeding();
    if getpid() != Pid::INIT {
        eprintln!("machined: fatal: {reason}");
        std::process::exit(70);
    }
    let cmdline = read_cmdline();
    console_log("stopping every process: SIGTERM, SIGKILL after 2 s");
    // kill(-1, sig): every process but PID 1.
    let _ = kill_process_group(Pid::INIT, Signal::TERM);
    std::thread::sleep(TERM_GRACE);
    let _ = kill_process_group(Pid::INIT, Signal::KILL);
    unmount_data_bounded(SYNC_TIMEOUT);
    if !sync_bounded(SYNC_TIMEOUT) {
        console_log("sync(2) did not finish within 10 s; going on");
    }
    if panic_halts(&cmdline) {
        console_log("panic=0 on the kernel command line: halting instead of rebooting");
        halt_forever();
    }
    console_log("rebooting");
    if let Err(e) = reboot(RebootCommand::Restart) {
        console_log(&format!("reboot(2) failed: {e}; halting"));
    }
    halt_forever()
}

/// The end of an orderly shutdown or reboot, after the services stopped:
/// whatever is left gets SIGTERM, then SIGKILL after 2 s, STATE and
/// EPHEMERAL are unmounted (or made read-only; at most 10 s), disks are
/// synced (at most 10 s), and the machine reboots or powers off. Never
/// returns.
///
/// Blocks until the reboot (about 2–12 s).
pub fn power_off_or_reboot(reboot_machine: bool) -> ! {
    if GOING_DOWN.swap(true, Ordering::SeqCst) {
        halt_forever();
    }
    if getpid() != Pid::INIT {
        std::process::exit(0);
    }
    console_log(if reboot_machine {
        "rebooting"
    } else {
        "powering off"
    });
    let _ = kill_process_group(Pid::INIT, Signal::TERM);
    std::thread::sleep(TERM_GRACE);
    let _ = kill_process_group(Pid::INIT, Signal::KILL);
    unmount_data_bounded(SYNC_TIMEOUT);
    if !sync_bounded(SYNC_TIMEOUT) {
        console_log("sync(2) did not finish within 10 s; going on");
    }
    let command = if reboot_machine {
        RebootCommand::Restart
    } else {
        RebootCommand::PowerOff
    };
    if let Err(e) = reboot(command) {
        console_log(&format!("reboot(2) failed: {e}; halting"));
    }
    halt_forever()
}

/// Makes every panic, in any thread or tokio task, [`fatal`] (PID 1 must
/// not unwind out of `main`, and a half-dead init is worse than a reboot).
/// The hook never returns, so nothing unwinds after it: `catch_unwind`
/// sees nothing. Install on metal only, as early as possible.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a non-string panic payload)");
        let place = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        fatal(&format!("panic in thread {name}{place}: {what}"));
    }));
}

// === the whole sequence ===

/// What the boot did, for machined's log once logging is up.
#[derive(Debug)]
pub struct BootReport {
    /// The kernel command line.
    pub cmdline: String,
    /// The module loading.
    pub modules: ModuleReport,
}

/// The metal boot, in order (see the module docs). Returns once `/` is the
/// squashfs. Does not return on failure: missing kernel arguments halt
/// (after a console message), anything else is [`fatal`].
///
/// Call first thing in `main` when running as PID 1 in metal mode, before
/// logging and the tokio runtime. Blocks for the whole boot.
pub fn boot_metal() -> BootReport {
    install_panic_hook();
    if let Err(e) = early_mounts() {
        fatal(&e.to_string());
    }
    let cgroups = Path::new(crate::cgroups::ROOT);
    if crate::cgroups::is_unified(cgroups)
        && let Err(e) = crate::cgroups::prepare(cgroups)
    {
        log(
            Priority::Warning,
            &format!("control groups: {e}; services run without groups of their own"),
        );
    }
    kmsg_log(&format!(
        "machined {} booting (metal)",
        machinery::constants::VERSION
    ));
    // Ctrl-Alt-Del becomes a SIGINT to PID 1 (which run.rs takes as
    // "reboot", cleanly) instead of an immediate hard reset.
    if let Err(e) = reboot(RebootCommand::CadOff) {
        log(
            Priority::Warning,
            &format!("disabling Ctrl-Alt-Del reset: {e}"),
        );
    }

    let cmdline = read_cmdline();
    if let Err(missing) = check_kernel_args(&cmdline) {
        console_log(&missing_kernel_args_message(&missing));
        halt_forever();
    }

    let dir = Path::new(INITRAMFS_MODULES_DIR);
    // The later lists are optional: an image may load everything early.
    let optional = |list: &str| {
        let list = Path::new(list);
        if list.exists() {
            open_modules(dir, list)
        } else {
            Ok(Vec::new())
        }
    };
    let (early, network, filesystems) = match open_modules(dir, Path::new(INITRAMFS_MODULES_ORDER))
        .and_then(|early| {
            Ok((
                early,
                optional(INITRAMFS_MODULES_NETWORK)?,
                optional(INITRAMFS_MODULES_DEFERRED)?,
            ))
        }) {
        Ok(lists) => lists,
        Err(e) => fatal(&e.to_string()),
    };
    let modules = load_modules(early);
    for (name, e) in &modules.failed {
        log(Priority::Warning, &format!("loading module {name}: {e}"));
    }
    kmsg_log(&format!(
        "modules: {} loaded, {} already loaded, {} failed",
        modules.loaded.len(),
        modules.already_loaded.len(),
        modules.failed.len()
    ));
    *modules_stage() = ModuleStage::Pending {
        network,
        filesystems,
    };

    if let Err(e) = switch_root_to_squashfs(Path::new(INITRAMFS_ROOTFS)) {
        fatal(&e.to_string());
    }
    kmsg_log("root switched to the squashfs");
    if let Err(e) = loopback_up() {
        log(Priority::Warning, &format!("bringing up lo: {e}"));
    }
    let (class_block, dev) = (Path::new("/sys/class/block"), Path::new("/dev"));
    // The deferred modules (network and filesystems) now only if a disk
    // has one of our filesystems (read straight from the superblocks, no
    // module needed): a node without one (a first boot) gets to apid
    // sooner, and they are loaded once apid is up.
    let disk = [STATE_LABEL, EPHEMERAL_LABEL, crate::bootloader::ESP_LABEL]
        .iter()
        .any(|label| find_labelled(class_block, dev, label).is_some());
    if disk {
        finish_modules();
        grow_partition_table(class_block, dev);
    } else {
        kmsg_log(
            "no disk filesystem of ours: the network and filesystem modules load once apid is up",
        );
    }
    // An installation whose STATE or EPHEMERAL was wiped (a reset) gets
    // them formatted again, as at install, before they are looked for.
    if crate::bootloader::booted_slot(&cmdline).is_some() {
        for label in [STATE_LABEL, EPHEMERAL_LABEL] {
            format_blank_volume(class_block, dev, label);
        }
    }
    for (label, target, missing) in [
        (
            STATE_LABEL,
            STATE_MOUNT,
            "the machine config lives in memory until the node is installed",
        ),
        (
            EPHEMERAL_LABEL,
            EPHEMERAL_MOUNT,
            "/var is part of the read-only root",
        ),
    ] {
        match mount_labelled(class_block, dev, label, Path::new(target)) {
            Ok(Some(device)) => {
                kmsg_log(&format!("{label} {} mounted on {target}", device.display()));
                if label == EPHEMERAL_LABEL {
                    grow_to_partition(&device, Path::new(target));
                }
            }
            Ok(None) => kmsg_log(&format!("no filesystem labelled {label}: {missing}")),
            // The node still boots (into maintenance mode without STATE):
            // an operator can see what happened through the API.
            Err(e) => log(Priority::Error, &e.to_string()),
        }
    }
    BootReport { cmdline, modules }
}

// === the loop device ioctls ===

/// `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE` (Linux >= 5.8), which rustix
/// has no safe wrappers for. One of the two places with `unsafe` in
/// machined (the other: the watchdog's ioctls).
#[allow(unsafe_code)]
mod loop_device {
    use std::ffi::c_void;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd as _;

    use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode, Setter};

    /// `_IO('L', 0x82)`: returns the index of a free loop device.
    const LOOP_CTL_GET_FREE: Opcode = ioctl::opcode::none(b'L', 0x82);
    /// `_IO('L', 0x0A)`: binds a backing fd and sets the status in one step.
    const LOOP_CONFIGURE: Opcode = ioctl::opcode::none(b'L', 0x0A);
    /// The device is read-only.
    pub(super) const LO_FLAGS_READ_ONLY: u32 = 1;
    /// Detach automatically when the last user closes the device.
    pub(super) const LO_FLAGS_AUTOCLEAR: u32 = 4;
    const LO_NAME_SIZE: usize = 64;
    const LO_KEY_SIZE: usize = 32;
    /// Longest backing file name stored (the field keeps a final NUL).
    pub(super) const NAME_MAX: usize = LO_NAME_SIZE - 1;

    /// `struct loop_info64` of `<linux/loop.h>`.
    #[repr(C)]
    struct LoopInfo64 {
        lo_device: u64,
        lo_inode: u64,
        lo_rdevice: u64,
        lo_offset: u64,
        lo_sizelimit: u64,
        lo_number: u32,
        lo_encrypt_type: u32,
        lo_encrypt_key_size: u32,
        lo_flags: u32,
        lo_file_name: [u8; LO_NAME_SIZE],
        lo_crypt_name: [u8; LO_NAME_SIZE],
        lo_encrypt_key: [u8; LO_KEY_SIZE],
        lo_init: [u64; 2],
    }

    /// `struct loop_config` of `<linux/loop.h>`.
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }

    // The kernel's sizes (x86_64 and every other 64-bit-aligned ABI).
    const _: () = assert!(size_of::<LoopInfo64>() == 232);
    const _: () = assert!(size_of::<LoopConfig>() == 304);

    /// `LOOP_CTL_GET_FREE`: no argument; the result is the ioctl's return
    /// value.
    #[derive(Debug)]
    struct GetFree;

    // SAFETY: LOOP_CTL_GET_FREE on /dev/loop-control takes no argument
    // (the pointer is null and never dereferenced), reads and writes no
    // user memory (IS_MUTATING = false holds), and returns the free index
    // as the ioctl's non-negative return value, which is all
    // `output_from_ptr` uses.
    unsafe impl Ioctl for GetFree {
        type Output = u32;
        const IS_MUTATING: bool = false;

        fn opcode(&self) -> Opcode {
            LOOP_CTL_GET_FREE
        }

        fn as_ptr(&mut self) -> *mut c_void {
            std::ptr::null_mut()
        }

        unsafe fn output_from_ptr(
            out: IoctlOutput,
            _extract_output: *mut c_void,
        ) -> rustix::io::Result<u32> {
            u32::try_from(out).map_err(|_| rustix::io::Errno::RANGE)
        }
    }

    /// The index of a free loop device (one is created if none is free).
    pub(super) fn get_free(control: &File) -> io::Result<u32> {
        // SAFETY: `control` is /dev/loop-control, whose LOOP_CTL_GET_FREE
        // matches `GetFree` (see its impl); no memory is shared with the
        // kernel.
        unsafe { ioctl::ioctl(control, GetFree) }.map_err(io::Error::from)
    }

    /// Binds `backing` to the loop `device` with `flags`, recording `name`
    /// (at most [`NAME_MAX`] bytes are kept) as the backing file name.
    pub(super) fn configure(
        device: &File,
        backing: &File,
        flags: u32,
        name: &[u8],
    ) -> io::Result<()> {
        let fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut lo_file_name = [0u8; LO_NAME_SIZE];
        let len = name.len().min(NAME_MAX);
        lo_file_name[..len].copy_from_slice(&name[..len]);
        let config = LoopConfig {
            fd,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `device` is a loop block device; LOOP_CONFIGURE takes a
        // pointer to one `struct loop_config`, which `LoopConfig` is
        // (repr(C), the kernel's field order, sizes asserted above, every
        // byte initialized with no padding holes). `Setter` passes a
        // pointer to its own copy that lives for the whole call, and the
        // kernel only reads it (copy_from_user), so the non-mutating
        // Setter is right. `fd` is an open file that outlives the call;
        // the kernel takes its own reference to it.
        unsafe { ioctl::ioctl(device, Setter::<LOOP_CONFIGURE, LoopConfig>::new(config)) }
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "BOOT_IMAGE=/vmlinuz console=ttyS0 init_on_alloc=1 init_on_free=1 slab_nomerge pti=on talos.platform=metal";

    #[test]
    #[allow(unsafe_code)]
    fn loopback_comes_up_in_a_fresh_network_namespace() {
        // A thread of its own: a new network namespace applies to the
        // calling thread only. Needs root (CI runs tests as root).
        let outcome = std::thread::spawn(|| {
            // SAFETY: only CLONE_NEWNET, on a thread of this test's own:
            // no file table or filesystem state is unshared, which is what
            // could invalidate other code's assumptions.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .map_err(|e| format!("unshare(CLONE_NEWNET) (run as root): {e}"))?;
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let before = std::net::TcpStream::connect(addr).is_ok();
            loopback_up().map_err(|e| format!("loopback_up: {e}"))?;
            let after = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"));
            Ok::<_, String>((before, after.is_ok()))
        })
        .join()
        .expect("the thread");
        assert_eq!(outcome, Ok((false, true)));
    }

    #[test]
    fn accepts_a_hardened_command_line() {
        assert_eq!(check_kernel_args(GOOD), Ok(()));
        // `-` and `_` are the same in names; quotes around values go.
        assert_eq!(
            check_kernel_args("init-on-alloc=1 init_on_free=\"1\" slab-nomerge pti=on"),
            Ok(())
        );
    }

    #[test]
    fn names_what_is_missing_in_order() {
        assert_eq!(
            check_kernel_args("console=ttyS0 pti=on"),
            Err(vec![
                "init_on_alloc=1".to_owned(),
                "init_on_free=1".to_owned(),
                "slab_nomerge".to_owned(),
            ])
        );
        assert_eq!(
            check_kernel_args(""),
            Err(REQUIRED_KERNEL_ARGS
                .iter()
                .map(|a| (*a).to_owned())
                .collect::<Vec<_>>())
        );
    }

    #[test]
    fn the_last_occurrence_wins_and_values_must_match() {
        let overridden = format!("{GOOD} pti=off");
        assert_eq!(
            check_kernel_args(&overridden),
            Err(vec!["pti=on".to_owned()])
        );
        let restored = format!("{GOOD} pti=off pti=on");
        assert_eq!(check_kernel_args(&restored), Ok(()));
        assert_eq!(
            check_kernel_args("init_on_alloc=0 init_on_free=1 slab_nomerge pti=on"),
            Err(vec!["init_on_alloc=1".to_owned()])
        );
        // A prefix is not the argument.
        assert_eq!(
            check_kernel_args("init_on_alloc=1 init_on_free=1 slab_nomergex pti=on"),
            Err(vec!["slab_nomerge".to_owned()])
        );
    }

    #[test]
    fn arguments_after_double_dash_belong_to_init() {
        let cmdline = "console=ttyS0 -- init_on_alloc=1 init_on_free=1 slab_nomerge pti=on";
        assert_eq!(
            check_kernel_args(cmdline).map_err(|m| m.len()),
            Err(REQUIRED_KERNEL_ARGS.len())
        );
    }

    #[test]
    fn the_message_names_the_missing_arguments() {
        let text = missing_kernel_args_message(&["pti=on".to_owned()]);
        assert!(text.contains("pti=on"), "{text}");
        assert!(text.contains("Halting"), "{text}");
    }

    #[test]
    fn data_mounts_are_found_latest_first_with_their_binds() {
        let mountinfo = "\
22 1 0:21 / / ro,relatime - squashfs /dev/loop0 ro
30 22 8:3 / /system/state rw - xfs /dev/vda3 rw
31 22 8:4 / /var rw - xfs /dev/vda4 rw
32 31 8:4 /lib/x /var/lib/x rw - xfs /dev/vda4 rw
33 22 0:40 / /var2 rw - tmpfs tmpfs rw
34 31 0:41 / /var/mnt/a\\040b rw - tmpfs tmpfs rw
35 22 8:4 /files/motd /etc/motd rw - xfs /dev/vda4 rw
36 22 0:40 / /etc/other rw - tmpfs tmpfs rw
";
        let found = mounts_under(mountinfo, &[Path::new("/system/state"), Path::new("/var")]);
        assert_eq!(
            found,
            // Latest first: each before what it was mounted on; the bind
            // of a file from /var over /etc/motd before /var itself.
            [
                PathBuf::from("/etc/motd"),
                PathBuf::from("/var/mnt/a b"),
                PathBuf::from("/var/lib/x"),
                PathBuf::from("/var"),
                PathBuf::from("/system/state"),
            ]
        );
    }

    /// Real mounts in a mount namespace of this test's own: nested ones are
    /// unmounted deepest first.
    #[test]
    #[allow(unsafe_code)]
    fn data_filesystems_are_unmounted() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting needs root (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let left = std::thread::spawn(move || {
            use rustix::mount::{MountPropagationFlags, mount_change};
            // SAFETY: unshares this thread's filesystem attributes (cwd,
            // root, umask) and mount namespace only, on a thread of this
            // test's own that ends with the test: no other thread's state
            // is touched, and no file descriptor table is shared or freed.
            unsafe {
                rustix::thread::unshare_unsafe(
                    rustix::thread::UnshareFlags::FS | rustix::thread::UnshareFlags::NEWNS,
                )
            }
            .expect("unshare a mount namespace");
            mount_change(
                "/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )
            .expect("private mounts");
            let outer = root.join("var");
            let inner = outer.join("lib");
            std::fs::create_dir_all(&outer).expect("mkdir");
            mount("tmpfs", &outer, "tmpfs", MountFlags::empty(), None).expect("mount outer");
            std::fs::create_dir_all(&inner).expect("mkdir");
            mount("tmpfs", &inner, "tmpfs", MountFlags::empty(), None).expect("mount inner");
            let before = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
            assert_eq!(mounts_under(&before, &[&outer]).len(), 2, "{before}");
            let left = unmount_under(&[&outer]);
            let after = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
            (left, mounts_under(&after, &[&outer]))
        })
        .join()
        .expect("the namespace's thread");
        assert_eq!(left, (Vec::new(), Vec::new()));
    }

    #[test]
    fn panic_zero_means_halt() {
        assert!(panic_halts("console=ttyS0 panic=0"));
        assert!(!panic_halts("console=ttyS0 panic=10"));
        assert!(!panic_halts("console=ttyS0"));
        assert!(!panic_halts("panic=0 panic=-1"));
        assert!(panic_halts("panic=5 panic=0"));
    }

    #[test]
    fn finds_the_last_value_of_an_argument() {
        assert_eq!(last_kernel_arg("a=1 b a=2", "a"), Some(Some("2")));
        assert_eq!(last_kernel_arg("a=1 b a=2", "b"), Some(None));
        assert_eq!(last_kernel_arg("a=1 b a=2", "c"), None);
        assert_eq!(last_kernel_arg("x-y=1", "x_y"), Some(Some("1")));
    }

    #[test]
    fn parses_the_module_order() {
        let text = "virtio_ring.ko\n\n# comment\n  virtio.ko  \nxfs.ko.xz\n";
        assert_eq!(
            parse_module_order(text).expect("parses"),
            ["virtio_ring.ko", "virtio.ko", "xfs.ko.xz"]
        );
        assert!(parse_module_order("").expect("parses").is_empty());
        for bad in ["../etc/passwd.ko", "kernel/fs/xfs.ko", "notamodule", ".ko"] {
            let err = parse_module_order(bad).expect_err(bad);
            assert!(
                matches!(err, BootError::ModuleOrderLine { line: 1, .. }),
                "{err}"
            );
        }
        let err = parse_module_order("a.ko\nb.txt\n").expect_err("line 2");
        assert!(
            matches!(err, BootError::ModuleOrderLine { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn kmsg_records_carry_priority_and_are_bounded() {
        assert_eq!(kmsg_record(Priority::Info, "hello"), "<6>machined: hello\n");
        assert_eq!(kmsg_record(Priority::Error, "x"), "<3>machined: x\n");
        let long = "é".repeat(1000);
        let record = kmsg_record(Priority::Warning, &long);
        assert!(record.len() <= KMSG_MAX_TEXT + "<4>machined: \n".len());
        assert!(record.starts_with("<4>machined: é"));
        assert!(record.ends_with("é\n"));
    }

    #[test]
    fn finds_the_state_filesystem_by_label() {
        use std::process::Command;
        let dir = tempfile::tempdir().expect("tempdir");
        let class = dir.path().join("class");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&class).expect("mkdir");
        std::fs::create_dir_all(&dev).expect("mkdir");
        let mkfs = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mkfs.xfs (xfsprogs; scripts/setup installs it)");
        // vda: xfs labelled EPHEMERAL; vdb: xfs labelled STATE; loop0:
        // labelled STATE too but skipped (the root image lives on loops);
        // sr0: unreadable.
        for (name, label) in [("vda", "EPHEMERAL"), ("vdb", "STATE"), ("loop0", "STATE")] {
            std::fs::create_dir(class.join(name)).expect("mkdir");
            let image = dev.join(name);
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(300 << 20))
                .expect("image");
            // Through the reaper: other tests in this binary run it, and
            // it would steal a plain `Command::status`.
            let spawned = crate::reaper::Reaper::global()
                .spawn(Command::new(mkfs).args(["-q", "-L", label]).arg(&image))
                .expect("mkfs.xfs runs");
            let status = spawned.exit.blocking_recv().expect("reaped");
            assert!(status.success(), "mkfs.xfs {label}: {status:?}");
        }
        std::fs::create_dir(class.join("sr0")).expect("mkdir");
        let found = find_labelled(&class, &dev, STATE_LABEL).expect("found");
        assert_eq!(found, (dev.join("vdb"), udevd::probe::FsKind::Xfs));
        assert_eq!(find_labelled(&class, &dev, "META"), None);
    }

    #[test]
    fn a_partition_names_its_disk() {
        use std::os::unix::fs::symlink;
        // As sysfs has it: class/block entries link into the device tree,
        // where a partition is a directory inside its disk's.
        let dir = tempfile::tempdir().expect("tempdir");
        let class = dir.path().join("class/block");
        let devices = dir.path().join("devices/pci0/virtio1/block/vda");
        std::fs::create_dir_all(devices.join("vda4")).expect("mkdir");
        std::fs::write(devices.join("vda4/partition"), "4\n").expect("partition");
        std::fs::create_dir_all(&class).expect("mkdir");
        symlink(&devices, class.join("vda")).expect("symlink");
        symlink(devices.join("vda4"), class.join("vda4")).expect("symlink");
        let dev = Path::new("/dev");
        assert_eq!(
            disk_of(&class, dev, Path::new("/dev/vda4")),
            Some(PathBuf::from("/dev/vda"))
        );
        // A whole disk is no partition; an unknown name is nothing.
        assert_eq!(disk_of(&class, dev, Path::new("/dev/vda")), None);
        assert_eq!(disk_of(&class, dev, Path::new("/dev/vdz1")), None);
    }

    #[test]
    fn early_mounts_cover_every_moved_mount() {
        let table = early_mount_table();
        for moved in MOVED_MOUNTS {
            let m = table
                .iter()
                .find(|m| m.target == *moved)
                .unwrap_or_else(|| panic!("{moved} is not mounted early"));
            assert!(
                m.required,
                "{moved} must be required: it moves into the new root"
            );
        }
        // Parents before children.
        let pos = |t: &str| table.iter().position(|m| m.target == t).expect("listed");
        assert!(pos("/dev") < pos("/dev/pts"));
    }

    #[test]
    fn module_file_names() {
        assert!(is_module_file_name("loop.ko"));
        assert!(is_module_file_name("xfs.ko.xz"));
        assert!(!is_module_file_name("loop"));
        assert!(!is_module_file_name("a/b.ko"));
    }
}
