//! `PCIDevices.hardware.talos.dev`: the PCI devices the kernel found, read
//! from `/sys/bus/pci/devices` as upstream's controller reads them.
//!
//! Each device directory carries `class` (`0xCCSSPP`: class, subclass,
//! programming interface), `vendor` and `device` (16-bit ids) and, when a
//! driver is bound, a `driver` link. Class and subclass names come from
//! the PCI class codes, a short fixed list kept here. Vendor and product
//! names need the PCI ID database (about 1.3 MB), which the image does not
//! carry: those two fields stay empty, and the ids say the same.

use std::path::Path;

use api::talos::resource::definitions::hardware::PciDeviceSpec;

/// Every device under `sysfs` (`/sys`), by its bus address, sorted. A
/// device whose ids cannot be read is skipped (it went away meanwhile),
/// as upstream skips one whose files are missing.
///
/// # Errors
/// The device directory exists but cannot be listed.
pub fn devices(sysfs: &Path) -> std::io::Result<Vec<(String, PciDeviceSpec)>> {
    let dir = sysfs.join("bus/pci/devices");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        // No PCI bus (some virtual machines, containers).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let address = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let hex = |file: &str| -> Option<u32> {
            let text = std::fs::read_to_string(path.join(file)).ok()?;
            let text = text.trim();
            u32::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
        };
        let (Some(class), Some(vendor), Some(product)) =
            (hex("class"), hex("vendor"), hex("device"))
        else {
            continue;
        };
        let driver = std::fs::read_link(path.join("driver"))
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        out.push((address, spec(class, vendor, product, driver)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The spec of a device of class word `class` (`0xCCSSPP`), as upstream
/// writes the ids: `0x%02x` for class and subclass, `0x%04x` for vendor
/// and product.
#[must_use]
pub fn spec(class: u32, vendor: u32, product: u32, driver: String) -> PciDeviceSpec {
    let class_id = (class >> 16) & 0xff;
    let subclass_id = (class >> 8) & 0xff;
    let (class_name, subclass_name) = class_names(class_id, subclass_id);
    PciDeviceSpec {
        class: class_name.to_owned(),
        subclass: subclass_name.to_owned(),
        vendor: String::new(),
        product: String::new(),
        class_id: format!("0x{class_id:02x}"),
        subclass_id: format!("0x{subclass_id:02x}"),
        vendor_id: format!("0x{:04x}", vendor & 0xffff),
        product_id: format!("0x{:04x}", product & 0xffff),
        driver,
    }
}

/// The names of a class and subclass; empty where the code is not one the
/// PCI class code list names.
#[must_use]
pub fn class_names(class: u32, subclass: u32) -> (&'static str, &'static str) {
    let Some((name, subclasses)) = CLASSES
        .iter()
        .find(|(code, _, _)| *code == class)
        .map(|(_, n, s)| (n, s))
    else {
        return ("", "");
    };
    let subclass = subclasses
        .iter()
        .find(|(code, _)| *code == subclass)
        .map_or("", |(_, n)| *n);
    (name, subclass)
}

/// Class code → name, and its subclasses (the PCI class code list).
type Subclasses = &'static [(u32, &'static str)];
const CLASSES: &[(u32, &str, Subclasses)] = &[
    (
        0x00,
        "Unclassified device",
        &[
            (0x00, "Non-VGA unclassified device"),
            (0x01, "VGA compatible unclassified device"),
            (0x05, "Image coprocessor"),
        ],
    ),
    (
        0x01,
        "Mass storage controller",
        &[
            (0x00, "SCSI storage controller"),
            (0x01, "IDE interface"),
            (0x02, "Floppy disk controller"),
            (0x03, "IPI bus controller"),
            (0x04, "RAID bus controller"),
            (0x05, "ATA controller"),
            (0x06, "SATA controller"),
            (0x07, "Serial Attached SCSI controller"),
            (0x08, "Non-Volatile memory controller"),
            (0x09, "Universal Flash Storage controller"),
            (0x80, "Mass storage controller"),
        ],
    ),
    (
        0x02,
        "Network controller",
        &[
            (0x00, "Ethernet controller"),
            (0x01, "Token ring network controller"),
            (0x02, "FDDI network controller"),
            (0x03, "ATM network controller"),
            (0x04, "ISDN controller"),
            (0x05, "WorldFip controller"),
            (0x06, "PICMG controller"),
            (0x07, "Infiniband controller"),
            (0x08, "Fabric controller"),
            (0x80, "Network controller"),
        ],
    ),
    (
        0x03,
        "Display controller",
        &[
            (0x00, "VGA compatible controller"),
            (0x01, "XGA compatible controller"),
            (0x02, "3D controller"),
            (0x80, "Display controller"),
        ],
    ),
    (
        0x04,
        "Multimedia controller",
        &[
            (0x00, "Multimedia video controller"),
            (0x01, "Multimedia audio controller"),
            (0x02, "Computer telephony device"),
            (0x03, "Audio device"),
            (0x80, "Multimedia controller"),
        ],
    ),
    (
        0x05,
        "Memory controller",
        &[
            (0x00, "RAM memory"),
            (0x01, "FLASH memory"),
            (0x02, "CXL"),
            (0x80, "Memory controller"),
        ],
    ),
    (
        0x06,
        "Bridge",
        &[
            (0x00, "Host bridge"),
            (0x01, "ISA bridge"),
            (0x02, "EISA bridge"),
            (0x03, "MicroChannel bridge"),
            (0x04, "PCI bridge"),
            (0x05, "PCMCIA bridge"),
            (0x06, "NuBus bridge"),
            (0x07, "CardBus bridge"),
            (0x08, "RACEway bridge"),
            (0x09, "Semi-transparent PCI-to-PCI bridge"),
            (0x0a, "InfiniBand to PCI host bridge"),
            (0x80, "Bridge"),
        ],
    ),
    (
        0x07,
        "Communication controller",
        &[
            (0x00, "Serial controller"),
            (0x01, "Parallel controller"),
            (0x02, "Multiport serial controller"),
            (0x03, "Modem"),
            (0x04, "GPIB controller"),
            (0x05, "Smart Card controller"),
            (0x80, "Communication controller"),
        ],
    ),
    (
        0x08,
        "Generic system peripheral",
        &[
            (0x00, "PIC"),
            (0x01, "DMA controller"),
            (0x02, "Timer"),
            (0x03, "RTC"),
            (0x04, "PCI Hot-plug controller"),
            (0x05, "SD Host controller"),
            (0x06, "IOMMU"),
            (0x80, "System peripheral"),
            (0x99, "Timing Card"),
        ],
    ),
    (
        0x09,
        "Input device controller",
        &[
            (0x00, "Keyboard controller"),
            (0x01, "Digitizer Pen"),
            (0x02, "Mouse controller"),
            (0x03, "Scanner controller"),
            (0x04, "Gameport controller"),
            (0x80, "Input device controller"),
        ],
    ),
    (
        0x0a,
        "Docking station",
        &[(0x00, "Generic Docking Station"), (0x80, "Docking Station")],
    ),
    (
        0x0b,
        "Processor",
        &[
            (0x00, "386"),
            (0x01, "486"),
            (0x02, "Pentium"),
            (0x10, "Alpha"),
            (0x20, "Power PC"),
            (0x30, "MIPS"),
            (0x40, "Co-processor"),
            (0x80, "Processor"),
        ],
    ),
    (
        0x0c,
        "Serial bus controller",
        &[
            (0x00, "FireWire (IEEE 1394)"),
            (0x01, "ACCESS Bus"),
            (0x02, "SSA"),
            (0x03, "USB controller"),
            (0x04, "Fibre Channel"),
            (0x05, "SMBus"),
            (0x06, "InfiniBand"),
            (0x07, "IPMI Interface"),
            (0x08, "SERCOS interface"),
            (0x09, "CANBUS"),
            (0x80, "Serial bus controller"),
        ],
    ),
    (
        0x0d,
        "Wireless controller",
        &[
            (0x00, "IRDA controller"),
            (0x01, "Consumer IR controller"),
            (0x10, "RF controller"),
            (0x11, "Bluetooth"),
            (0x12, "Broadband"),
            (0x20, "802.1a controller"),
            (0x21, "802.1b controller"),
            (0x80, "Wireless controller"),
        ],
    ),
    (0x0e, "Intelligent controller", &[(0x00, "I2O")]),
    (
        0x0f,
        "Satellite communications controller",
        &[
            (0x01, "Satellite TV controller"),
            (0x02, "Satellite audio communication controller"),
            (0x03, "Satellite voice communication controller"),
            (0x04, "Satellite data communication controller"),
        ],
    ),
    (
        0x10,
        "Encryption controller",
        &[
            (0x00, "Network and computing encryption device"),
            (0x10, "Entertainment encryption device"),
            (0x80, "Encryption controller"),
        ],
    ),
    (
        0x11,
        "Signal processing controller",
        &[
            (0x00, "DPIO module"),
            (0x01, "Performance counters"),
            (0x10, "Communication synchronizer"),
            (0x20, "Signal processing management"),
            (0x80, "Signal processing controller"),
        ],
    ),
    (
        0x12,
        "Processing accelerators",
        &[(0x00, "Processing accelerators")],
    ),
    (0x13, "Non-Essential Instrumentation", &[]),
    (0x40, "Coprocessor", &[]),
    (0xff, "Unassigned class", &[]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_class_names_as_upstream_writes_them() {
        // QEMU's virtio network device.
        let nic = spec(0x020000, 0x1af4, 0x1000, "virtio-pci".into());
        assert_eq!(
            (nic.class.as_str(), nic.subclass.as_str()),
            ("Network controller", "Ethernet controller")
        );
        assert_eq!(
            (
                nic.class_id.as_str(),
                nic.subclass_id.as_str(),
                nic.vendor_id.as_str(),
                nic.product_id.as_str()
            ),
            ("0x02", "0x00", "0x1af4", "0x1000")
        );
        assert_eq!(nic.driver, "virtio-pci");
        assert!(nic.vendor.is_empty() && nic.product.is_empty());
        // An NVMe controller (programming interface 02), and a code the
        // list does not name.
        assert_eq!(
            class_names(0x01, 0x08),
            ("Mass storage controller", "Non-Volatile memory controller")
        );
        assert_eq!(class_names(0x06, 0x42), ("Bridge", ""));
        assert_eq!(class_names(0x77, 0x00), ("", ""));
        let odd = spec(0x778001, 0x8086, 0x1234, String::new());
        assert_eq!(
            (odd.class_id.as_str(), odd.subclass_id.as_str()),
            ("0x77", "0x80")
        );
    }

    #[test]
    fn devices_are_read_from_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devices_dir = dir.path().join("bus/pci/devices");
        let write = |address: &str, files: &[(&str, &str)]| {
            let device = devices_dir.join(address);
            std::fs::create_dir_all(&device).expect("device dir");
            for (name, text) in files {
                std::fs::write(device.join(name), text).expect("write");
            }
            device
        };
        let nic = write(
            "0000:00:03.0",
            &[
                ("class", "0x020000\n"),
                ("vendor", "0x1af4\n"),
                ("device", "0x1000\n"),
            ],
        );
        let drivers = dir.path().join("bus/pci/drivers/virtio-pci");
        std::fs::create_dir_all(&drivers).expect("driver dir");
        std::os::unix::fs::symlink(&drivers, nic.join("driver")).expect("driver link");
        write(
            "0000:00:00.0",
            &[
                ("class", "0x060000\n"),
                ("vendor", "0x8086\n"),
                ("device", "0x29c0\n"),
            ],
        );
        // Gone half-way: no vendor file.
        write("0000:00:09.0", &[("class", "0x010000\n")]);
        let found = devices(dir.path()).expect("devices");
        let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["0000:00:00.0", "0000:00:03.0"]);
        assert_eq!(found[0].1.subclass, "Host bridge");
        assert!(found[0].1.driver.is_empty());
        assert_eq!(found[1].1.driver, "virtio-pci");
        assert_eq!(found[1].1.vendor_id, "0x1af4");
        // No PCI bus at all: none.
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(devices(empty.path()).expect("no bus").is_empty());
    }
}
