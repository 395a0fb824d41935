//! `WatchdogTimerConfig`: a hardware watchdog armed with the config's
//! timeout and fed by machined, as upstream's: a node whose PID 1 stops
//! running is reset by the hardware.
//!
//! The device must be a watchdog: a character device of the kernel's
//! `watchdog` class (or the legacy misc `watchdog`), checked through
//! sysfs before any ioctl or write, so a mistyped path (a disk) is
//! refused and never written. Its timeout is set with `WDIOC_SETTIMEOUT`
//! (the driver may round it; the one it took is logged), then it is fed
//! with `WDIOC_KEEPALIVE` every quarter of it from a thread of its own,
//! but only while machined's async runtime shows it is alive (its
//! [`Armed::heartbeat`] is at most half a timeout old) and machined has
//! not failed fatally ([`stop_feeding`]): a stuck PID 1 gets reset.
//! Dropped from the config, the watchdog is disarmed with the magic close
//! (`V`, then close). A changed device or timeout disarms the old one and
//! arms the new.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Set when machined fails fatally: the watchdog is no longer fed (and
/// not disarmed), so a PID 1 that halts instead of rebooting is reset.
static STOP_FEEDING: AtomicBool = AtomicBool::new(false);

/// Stops feeding every watchdog, without disarming it.
pub fn stop_feeding() {
    STOP_FEEDING.store(true, Ordering::SeqCst);
}

/// An armed watchdog: fed until dropped, then disarmed.
#[derive(Debug)]
pub struct Armed {
    device: String,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    /// When the runtime last said it was alive: milliseconds since `start`.
    alive: Arc<AtomicU64>,
    start: Instant,
    feeder: Option<std::thread::JoinHandle<()>>,
}

/// Why a watchdog could not be armed.
#[derive(Debug, thiserror::Error)]
#[error("arming the watchdog {device}: {step}: {source}")]
pub struct WatchdogError {
    /// The device.
    pub device: String,
    /// What failed.
    pub step: &'static str,
    /// The cause.
    pub source: std::io::Error,
}

impl Armed {
    /// The device.
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The timeout the driver took.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often it is fed: a quarter of the timeout.
    #[must_use]
    pub fn feed_interval(&self) -> Duration {
        self.timeout / 4
    }

    /// Says machined's runtime is alive; the feeder stops feeding when
    /// this is more than half a timeout old. Call it every feed interval.
    pub fn heartbeat(&self) {
        self.alive.store(millis_since(self.start), Ordering::SeqCst);
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(feeder) = self.feeder.take() {
            feeder.thread().unpark();
            let _ = feeder.join();
        }
    }
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Opens `device`, checks it is a watchdog, sets `timeout` (whole
/// seconds, at least one) and starts feeding it.
///
/// # Errors
/// The device cannot be opened, is no watchdog, or refuses the timeout.
pub fn arm(device: &str, timeout: Duration) -> Result<Armed, WatchdogError> {
    let error = |step: &'static str| {
        let device = device.to_owned();
        move |source: std::io::Error| WatchdogError {
            device,
            step,
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        // A terminal must not become PID 1's controlling terminal.
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(device)
        .map_err(error("opening it"))?;
    // Nothing is written to what is not a watchdog.
    is_watchdog(&file, Path::new("/sys/dev/char")).map_err(error("checking it"))?;
    let seconds = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
    let took = match ioctls::set_timeout(&file, seconds) {
        Ok(took) => took,
        Err(e) => {
            // Opening armed it: disarm before giving up.
            disarm(file);
            return Err(error("setting the timeout (WDIOC_SETTIMEOUT)")(e.into()));
        }
    };
    let timeout = Duration::from_secs(u64::try_from(took.max(1)).unwrap_or(1));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let alive = Arc::new(AtomicU64::new(0));
    let feeder = Feeder {
        stop: Arc::clone(&stop),
        alive: Arc::clone(&alive),
        start,
        timeout,
        device: device.to_owned(),
    };
    let feeder = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || feeder.run(file))
        .map_err(error("starting its feeder"))?;
    Ok(Armed {
        device: device.to_owned(),
        timeout,
        stop,
        alive,
        start,
        feeder: Some(feeder),
    })
}

/// Whether the open `file` is a watchdog: a character device whose sysfs
/// node (under `dev_char`, `/sys/dev/char`) is in the `watchdog` class,
/// or the legacy misc device named `watchdog`.
fn is_watchdog(file: &File, dev_char: &Path) -> std::io::Result<()> {
    let meta = file.metadata()?;
    if !meta.file_type().is_char_device() {
        return Err(std::io::Error::other("not a character device"));
    }
    let rdev = meta.rdev();
    let node = dev_char.join(format!(
        "{}:{}",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    ));
    let subsystem = std::fs::read_link(node.join("subsystem"))?;
    let class = subsystem.file_name().and_then(|n| n.to_str());
    let name = node.canonicalize()?;
    let name = name.file_name().and_then(|n| n.to_str());
    match (class, name) {
        (Some("watchdog"), _) | (Some("misc"), Some("watchdog")) => Ok(()),
        _ => Err(std::io::Error::other(format!(
            "not a watchdog (a {} device)",
            class.unwrap_or("unknown")
        ))),
    }
}

/// The feeding thread's state.
struct Feeder {
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicU64>,
    start: Instant,
    timeout: Duration,
    device: String,
}

impl Feeder {
    fn run(self, file: File) {
        let device = self.device.as_str();
        let interval = self.timeout / 4;
        let stale = u64::try_from((self.timeout / 2).as_millis()).unwrap_or(u64::MAX);
        let mut failed = false;
        let mut starved = false;
        while !self.stop.load(Ordering::SeqCst) {
            let silent = millis_since(self.start).saturating_sub(self.alive.load(Ordering::SeqCst));
            if STOP_FEEDING.load(Ordering::SeqCst) {
                // machined failed fatally: let the hardware reset it.
            } else if silent > stale {
                if !starved {
                    starved = true;
                    tracing::error!(
                        device,
                        silent_ms = silent,
                        "machined's runtime is not answering: the watchdog is no longer fed"
                    );
                }
            } else {
                starved = false;
                match ioctls::keepalive(&file) {
                    Ok(()) => failed = false,
                    // Reported once per run of failures.
                    Err(e) if !failed => {
                        failed = true;
                        tracing::error!(device, error = %e, "feeding the watchdog (WDIOC_KEEPALIVE)");
                    }
                    Err(_) => {}
                }
            }
            std::thread::park_timeout(interval);
        }
        disarm(file);
    }
}

/// The magic close: `V`, then close, stops the timer (unless the driver
/// was built with nowayout). Only ever given a checked watchdog.
fn disarm(mut file: File) {
    let _ = file.write_all(b"V");
    drop(file);
}

/// `WDIOC_SETTIMEOUT` and `WDIOC_KEEPALIVE` of `<linux/watchdog.h>`,
/// which rustix has no safe wrappers for.
#[allow(unsafe_code)]
mod ioctls {
    use std::fs::File;

    use rustix::ioctl::{Opcode, Updater, ioctl, opcode};

    /// `_IOWR('W', 6, int)`.
    const WDIOC_SETTIMEOUT: Opcode = opcode::read_write::<i32>(b'W', 6);
    /// `_IOR('W', 5, int)`.
    const WDIOC_KEEPALIVE: Opcode = opcode::read::<i32>(b'W', 5);

    /// Sets the timeout in seconds; returns the one the driver took.
    pub(super) fn set_timeout(file: &File, seconds: i32) -> rustix::io::Result<i32> {
        let mut value = seconds;
        // SAFETY: WDIOC_SETTIMEOUT reads one int (the size encoded in the
        // opcode) from the pointer rustix passes, which points at `value`,
        // and writes the timeout it set back into it. The caller checked
        // that `file` is a watchdog, so no other driver reads the opcode.
        unsafe {
            ioctl(file, Updater::<WDIOC_SETTIMEOUT, i32>::new(&mut value))?;
        }
        Ok(value)
    }

    /// Feeds the watchdog.
    pub(super) fn keepalive(file: &File) -> rustix::io::Result<()> {
        let mut ignored = 0i32;
        // SAFETY: WDIOC_KEEPALIVE ignores its argument; the pointer rustix
        // passes points at a live int of the size encoded in the opcode,
        // which the kernel may write and nothing reads.
        unsafe { ioctl(file, Updater::<WDIOC_KEEPALIVE, i32>::new(&mut ignored)) }
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    mod tests {
        use super::*;

        #[test]
        fn opcodes_are_the_kernels() {
            // <linux/watchdog.h> on x86_64.
            assert_eq!(WDIOC_SETTIMEOUT, 0xc004_5706);
            assert_eq!(WDIOC_KEEPALIVE, 0x8004_5705);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is not a watchdog is refused before any ioctl or write: a
    /// mistyped path to a disk must not lose a byte.
    #[test]
    fn what_is_no_watchdog_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("watchdog9");
        let err = arm(missing.to_str().expect("utf8"), Duration::from_secs(10))
            .expect_err("no such device");
        assert!(
            err.to_string().contains("watchdog9") && err.to_string().contains("opening it"),
            "{err}"
        );
        let file = dir.path().join("plain");
        std::fs::write(&file, "data").expect("file");
        let err =
            arm(file.to_str().expect("utf8"), Duration::from_secs(10)).expect_err("not a watchdog");
        assert!(err.to_string().contains("not a character device"), "{err}");
        assert_eq!(std::fs::read(&file).expect("read"), b"data", "untouched");
        // A character device of another class (the null device, of the
        // memory class) is refused by its sysfs class.
        let err = arm("/dev/null", Duration::from_secs(10)).expect_err("not a watchdog");
        assert!(
            err.to_string().contains("not a watchdog (a mem device)"),
            "{err}"
        );
    }

    /// The class check on a fake `/sys/dev/char`: the watchdog class and
    /// the legacy misc `watchdog` pass, another misc device does not.
    #[test]
    fn the_watchdog_classes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let null = File::open("/dev/null").expect("/dev/null");
        let rdev = null.metadata().expect("meta").rdev();
        let node = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
        let check = |class: &str, name: &str| {
            let sys = dir.path().join(format!("{class}-{name}"));
            let device = sys.join("devices").join(class).join(name);
            std::fs::create_dir_all(&device).expect("device");
            std::fs::create_dir_all(sys.join("class").join(class)).expect("class");
            std::os::unix::fs::symlink(sys.join("class").join(class), device.join("subsystem"))
                .expect("subsystem");
            let dev_char = sys.join("dev/char");
            std::fs::create_dir_all(&dev_char).expect("dev/char");
            std::os::unix::fs::symlink(&device, dev_char.join(&node)).expect("node");
            is_watchdog(&null, &dev_char).map_err(|e| e.to_string())
        };
        assert_eq!(check("watchdog", "watchdog0"), Ok(()));
        assert_eq!(check("misc", "watchdog"), Ok(()));
        assert_eq!(
            check("misc", "fuse"),
            Err("not a watchdog (a misc device)".to_owned())
        );
    }
}
