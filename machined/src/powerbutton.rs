//! The ACPI power button: a press asks for a shutdown, as upstream's
//! machined does. A hypervisor's or a cloud's graceful "shut down"
//! (`virsh shutdown`, QEMU's `system_powerdown`, a provider's stop) presses
//! it; without this, the machine would be cut off when that times out.
//!
//! The kernel's `button` driver makes the button an input device named
//! "Power Button", and `evdev` gives it a `/dev/input/eventN` node: a key
//! event `KEY_POWER` with value 1 is a press. The modules load after boot
//! (they are deferred), so the devices are looked for until found; each
//! one is read on a thread of its own (blocking reads of a character
//! device, which is what it takes).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name the kernel gives the button's input device (the ACPI fixed
/// feature button and the PNP0C0C device alike).
const NAME: &str = "Power Button";

/// `struct input_event` on 64-bit Linux: a `timeval` (16 bytes), then
/// `type` (u16), `code` (u16) and `value` (i32).
const EVENT_LEN: usize = 24;
/// `EV_KEY`.
const EV_KEY: u16 = 0x01;
/// `KEY_POWER`.
const KEY_POWER: u16 = 116;

/// How often to look for the devices until one is found.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Whether one `input_event` record is the power key going down.
#[must_use]
fn is_press(record: &[u8; EVENT_LEN]) -> bool {
    let kind = u16::from_ne_bytes([record[16], record[17]]);
    let code = u16::from_ne_bytes([record[18], record[19]]);
    let value = i32::from_ne_bytes([record[20], record[21], record[22], record[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// The event nodes of the power buttons: `sys_input` is
/// `/sys/class/input`, `dev_input` is `/dev/input`.
#[must_use]
fn buttons(sys_input: &Path, dev_input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_input) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !name.starts_with("event") {
                return None;
            }
            let device = std::fs::read_to_string(entry.path().join("device/name")).ok()?;
            (device.trim() == NAME).then(|| dev_input.join(name))
        })
        .collect();
    found.sort();
    found
}

/// Reads `device` until it fails, calling `on_press` for each press.
fn read_presses(device: &Path, on_press: &(dyn Fn() + Send + Sync)) -> std::io::Result<()> {
    let mut file = std::fs::File::open(device)?;
    let mut record = [0u8; EVENT_LEN];
    loop {
        file.read_exact(&mut record)?;
        if is_press(&record) {
            on_press();
        }
    }
}

/// Watches the power buttons for the life of the process: `on_press` is
/// called for each press. Looks for them every 2 s until one appears.
///
/// # Errors
/// The watching thread cannot be started.
pub fn watch(on_press: impl Fn() + Send + Sync + 'static) -> std::io::Result<()> {
    let on_press: std::sync::Arc<dyn Fn() + Send + Sync> = std::sync::Arc::new(on_press);
    std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || {
            let found = loop {
                let found = buttons(Path::new("/sys/class/input"), Path::new("/dev/input"));
                if !found.is_empty() {
                    break found;
                }
                std::thread::sleep(LOOK_EVERY);
            };
            let mut readers = Vec::new();
            for device in found {
                let on_press = std::sync::Arc::clone(&on_press);
                let name = device.display().to_string();
                let spawned = std::thread::Builder::new()
                    .name("power-button".into())
                    .spawn(move || {
                        tracing::info!(device = %name, "watching the power button");
                        if let Err(e) = read_presses(&device, &*on_press) {
                            tracing::warn!(device = %name, error = %e, "reading the power button");
                        }
                    });
                match spawned {
                    Ok(handle) => readers.push(handle),
                    Err(e) => tracing::warn!(error = %e, "starting a power button reader"),
                }
            }
            for reader in readers {
                let _ = reader.join();
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, code: u16, value: i32) -> [u8; EVENT_LEN] {
        let mut r = [0u8; EVENT_LEN];
        r[..8].copy_from_slice(&1_700_000_000_i64.to_ne_bytes());
        r[16..18].copy_from_slice(&kind.to_ne_bytes());
        r[18..20].copy_from_slice(&code.to_ne_bytes());
        r[20..24].copy_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn only_the_power_key_going_down_is_a_press() {
        assert!(is_press(&record(EV_KEY, KEY_POWER, 1)));
        // Released, auto-repeat, another key, a sync event.
        assert!(!is_press(&record(EV_KEY, KEY_POWER, 0)));
        assert!(!is_press(&record(EV_KEY, KEY_POWER, 2)));
        assert!(!is_press(&record(EV_KEY, 142, 1)));
        assert!(!is_press(&record(0, 0, 0)));
    }

    #[test]
    fn the_buttons_are_found_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys/class/input");
        for (entry, name) in [
            ("event0", "Power Button\n"),
            ("event1", "AT Translated Set 2 keyboard\n"),
            ("event2", "Power Button\n"),
            ("input3", "Power Button\n"),
        ] {
            std::fs::create_dir_all(sys.join(entry).join("device")).expect("mkdir");
            std::fs::write(sys.join(entry).join("device/name"), name).expect("name");
        }
        let dev = dir.path().join("dev/input");
        assert_eq!(
            buttons(&sys, &dev),
            [dev.join("event0"), dev.join("event2")]
        );
        assert!(buttons(&dir.path().join("nothing"), &dev).is_empty());
    }

    /// Records read from a device node (a file standing in): each press
    /// calls back, the rest does not, and the end of the data ends it.
    #[test]
    fn presses_are_read_from_the_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("event0");
        let mut data = Vec::new();
        for r in [
            record(EV_KEY, KEY_POWER, 1),
            record(0, 0, 0),
            record(EV_KEY, KEY_POWER, 0),
            record(EV_KEY, KEY_POWER, 1),
        ] {
            data.extend_from_slice(&r);
        }
        std::fs::write(&device, data).expect("write");
        let presses = std::sync::atomic::AtomicUsize::new(0);
        let err = read_presses(&device, &|| {
            presses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .expect_err("the end of the data");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(presses.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
