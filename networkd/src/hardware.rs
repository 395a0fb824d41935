//! What sysfs says about a link's device: its driver, bus address, PCI ids,
//! speed and duplex (what upstream asks ethtool and the device's uevent
//! for). machined reports it in `LinkStatus`; networkd matches
//! `deviceSelector`s against it.

use std::path::Path;

/// What sysfs says about a link's device (what upstream asks ethtool and
/// the device's uevent for).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver bound to the device.
    pub driver: String,
    /// The device's bus address (`0000:00:02.0`).
    pub bus_path: String,
    /// `PCI_ID` of a PCI network device (`8086:100E`).
    pub pci_id: String,
    /// `0x1af4`.
    pub vendor_id: String,
    /// `0x1000`.
    pub product_id: String,
    /// Mbit/s as the kernel reports it (`-1`, unknown, as 4294967295);
    /// 0 when the link has no speed.
    pub speed: i64,
    /// `DUPLEX_*`: 0 half, 1 full, 255 unknown.
    pub duplex: u8,
}

/// Reads `name`'s device details under `sysfs` (`/sys`).
#[must_use]
pub fn device_info(sysfs: &Path, name: &str) -> DeviceInfo {
    let net = sysfs.join("class/net").join(name);
    let mut info = DeviceInfo {
        duplex: 255,
        ..DeviceInfo::default()
    };
    if let Ok(uevent) = std::fs::read_to_string(net.join("device/uevent")) {
        for line in uevent.lines() {
            match line.split_once('=') {
                Some(("DRIVER", v)) => v.clone_into(&mut info.driver),
                Some(("PCI_ID", v)) => v.clone_into(&mut info.pci_id),
                Some(("PCI_SLOT_NAME", v)) => v.clone_into(&mut info.bus_path),
                _ => {}
            }
        }
    }
    // ethtool's bus address of a virtio NIC is its virtio device's parent
    // (the PCI function, or the MMIO device).
    if info.bus_path.is_empty()
        && let Ok(device) = std::fs::canonicalize(net.join("device"))
        && subsystem(&device).as_deref() == Some("virtio")
        && let Some(parent) = device.parent().and_then(|p| p.file_name())
    {
        info.bus_path = parent.to_string_lossy().into_owned();
    }
    // Vendor and product when the bus address is a PCI device, as upstream
    // looks them up.
    let pci = sysfs.join("bus/pci/devices").join(&info.bus_path);
    if !info.bus_path.is_empty() && pci.is_dir() {
        let id = |file: &str| {
            std::fs::read_to_string(pci.join(file))
                .ok()
                .and_then(|t| u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
                .map(|n| format!("0x{n:04x}"))
                .unwrap_or_default()
        };
        info.vendor_id = id("vendor");
        info.product_id = id("device");
    }
    // Reading either fails for a link that is down or has no speed.
    if let Some(speed) = std::fs::read_to_string(net.join("speed"))
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
    {
        // SPEED_UNKNOWN is -1 in sysfs and 0xffffffff from ethtool.
        info.speed = if speed < 0 {
            i64::from(u32::MAX)
        } else {
            speed
        };
    }
    if let Ok(duplex) = std::fs::read_to_string(net.join("duplex")) {
        info.duplex = match duplex.trim() {
            "half" => 0,
            "full" => 1,
            _ => 255,
        };
    }
    info
}

/// The bus a sysfs device is on (`pci`, `virtio`...).
fn subsystem(device: &Path) -> Option<String> {
    std::fs::read_link(device.join("subsystem"))
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_details_come_from_sysfs_as_ethtool_reports_them() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        let write = |path: &str, text: &str| {
            let path = sys.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        // A virtio NIC below PCI function 0000:00:03.0.
        let pci = "devices/pci0000:00/0000:00:03.0";
        write(&format!("{pci}/vendor"), "0x1af4\n");
        write(&format!("{pci}/device"), "0x1041\n");
        write(
            &format!("{pci}/virtio2/uevent"),
            "DRIVER=virtio_net\nMODALIAS=virtio:d00000001v00001AF4\n",
        );
        std::fs::create_dir_all(sys.join("bus/virtio")).unwrap();
        symlink(
            sys.join("bus/virtio"),
            sys.join(pci).join("virtio2/subsystem"),
        )
        .unwrap();
        std::fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        symlink(sys.join(pci), sys.join("bus/pci/devices/0000:00:03.0")).unwrap();
        write("class/net/eth0/speed", "-1\n");
        write("class/net/eth0/duplex", "unknown\n");
        symlink(
            sys.join(pci).join("virtio2"),
            sys.join("class/net/eth0/device"),
        )
        .unwrap();
        assert_eq!(
            device_info(sys, "eth0"),
            DeviceInfo {
                driver: "virtio_net".to_owned(),
                bus_path: "0000:00:03.0".to_owned(),
                pci_id: String::new(),
                vendor_id: "0x1af4".to_owned(),
                product_id: "0x1041".to_owned(),
                speed: 4_294_967_295,
                duplex: 255,
            }
        );
        // A PCI NIC names its slot in its uevent; a link without a device
        // (lo) has nothing but the defaults.
        write(
            "class/net/eth1/device/uevent",
            "DRIVER=e1000\nPCI_ID=8086:100E\nPCI_SLOT_NAME=0000:00:04.0\n",
        );
        write("class/net/eth1/speed", "1000\n");
        write("class/net/eth1/duplex", "full\n");
        let e1000 = device_info(sys, "eth1");
        assert_eq!(
            (
                e1000.driver.as_str(),
                e1000.pci_id.as_str(),
                e1000.bus_path.as_str()
            ),
            ("e1000", "8086:100E", "0000:00:04.0")
        );
        assert_eq!((e1000.speed, e1000.duplex), (1000, 1));
        assert_eq!(
            device_info(sys, "lo"),
            DeviceInfo {
                duplex: 255,
                ..DeviceInfo::default()
            }
        );
    }
}
