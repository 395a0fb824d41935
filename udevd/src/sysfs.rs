//! Block devices as sysfs describes them.
//!
//! Everything here is a pure function of a sysfs root (`/sys` on a node, a
//! temporary directory in tests): `<root>/block/<name>` lists the whole
//! disks, each a symlink into `<root>/devices/...`; a partition is a
//! subdirectory of its disk holding a `partition` file. Attribute files that
//! are missing or unreadable read as empty: devices come and go while we
//! look, and most attributes only exist for some buses.

use std::path::{Path, PathBuf};

/// Bytes per sector in sysfs `size` and `start` files (always 512,
/// whatever the device's logical block size).
pub const SYSFS_SECTOR: u64 = 512;

/// Errors enumerating block devices.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// `<root>/block` could not be listed.
    #[error("listing block devices in {path}: {source}")]
    ListBlock {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How a disk is attached, as far as sysfs tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// NVMe namespace (`nvme*`).
    Nvme,
    /// virtio-blk (`vd*`).
    Virtio,
    /// MMC/SD card (`mmcblk*`).
    Mmc,
    /// Xen virtual block device (`xvd*`).
    Xen,
    /// ATA disk behind libata's SCSI layer (SCSI vendor `ATA`).
    Ata,
    /// USB mass storage (a SCSI device below a USB port).
    Usb,
    /// Any other SCSI device.
    Scsi,
    /// Not a bus we recognise (loop, ram, device-mapper...).
    #[default]
    Unknown,
}

/// The kind of disk reported by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// Unknown (virtual devices).
    Unknown,
    /// Non-rotational disk.
    Ssd,
    /// Rotational disk.
    Hdd,
    /// NVMe namespace.
    Nvme,
    /// SD/MMC card.
    Sd,
    /// CD/DVD drive.
    Cd,
}

/// A partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name, e.g. `vda1` or `nvme0n1p1`.
    pub name: String,
    /// Partition number (the `partition` file; the GPT slot + 1).
    pub number: u32,
    /// First sector (512-byte units).
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Read-only.
    pub readonly: bool,
}

/// A whole block device (`<root>/block/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `device/model`.
    pub model: String,
    /// `device/vendor` (SCSI).
    pub vendor: String,
    /// `device/serial`, else `serial`, else the SCSI VPD page 0x80.
    pub serial: String,
    /// `wwid`, else `device/wwid`.
    pub wwid: String,
    /// `uuid`, else `device/uuid` (NVMe namespaces).
    pub uuid: String,
    /// `device/modalias`.
    pub modalias: String,
    /// `device/name` (MMC cards).
    pub card_name: String,
    /// `ro` is 1.
    pub readonly: bool,
    /// `queue/rotational` is 1.
    pub rotational: bool,
    /// A CD/DVD drive (`sr*`, or SCSI device type 5).
    pub cdrom: bool,
    /// How it is attached.
    pub transport: Transport,
    /// The SCSI address `host:channel:target:lun` (SCSI disks only).
    pub scsi_address: String,
    /// Path of the parent device below `/sys/devices`, e.g.
    /// `/pci0000:00/0000:00:05.0/virtio2`.
    pub bus_path: String,
    /// Where the `subsystem` link points, e.g. `/sys/class/block`.
    pub subsystem: String,
    /// Partitions, by number.
    pub partitions: Vec<Partition>,
}

impl BlockDevice {
    /// The kind the API reports (upstream's order of checks: CD, NVMe, SD,
    /// rotational, any known bus).
    #[must_use]
    pub fn kind(&self) -> DiskKind {
        if self.cdrom {
            return DiskKind::Cd;
        }
        match self.transport {
            Transport::Nvme => DiskKind::Nvme,
            Transport::Mmc => DiskKind::Sd,
            _ if self.rotational => DiskKind::Hdd,
            Transport::Unknown => DiskKind::Unknown,
            _ => DiskKind::Ssd,
        }
    }
}

/// Whether the Disks API lists a device of this name: loop, RAM, zram and
/// device-mapper devices are not disks.
#[must_use]
pub fn is_listed_disk(name: &str) -> bool {
    !["loop", "ram", "zram", "dm-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Whether `/dev/disk` links are made for a device of this name: every block
/// device except RAM disks, zram and device-mapper (which has its own
/// naming).
#[must_use]
pub fn gets_links(name: &str) -> bool {
    !["ram", "zram", "dm-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Every block device under `<sysfs>/block`, sorted by name.
///
/// # Errors
/// `<sysfs>/block` cannot be listed.
pub fn block_devices(sysfs: &Path) -> Result<Vec<BlockDevice>, SysfsError> {
    let dir = sysfs.join("block");
    let entries = std::fs::read_dir(&dir).map_err(|source| SysfsError::ListBlock {
        path: dir.clone(),
        source,
    })?;
    let root = sysfs.canonicalize().unwrap_or_else(|_| sysfs.to_path_buf());
    let mut devices: Vec<BlockDevice> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| read_device(&root, &name))
        .collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devices)
}

/// The disks the Disks API lists (see [`is_listed_disk`]), sorted by name.
///
/// # Errors
/// `<sysfs>/block` cannot be listed.
pub fn disks(sysfs: &Path) -> Result<Vec<BlockDevice>, SysfsError> {
    Ok(block_devices(sysfs)?
        .into_iter()
        .filter(|d| is_listed_disk(&d.name))
        .collect())
}

/// Reads one device; `root` is the canonical sysfs root.
fn read_device(root: &Path, name: &str) -> BlockDevice {
    let dir = root.join("block").join(name);
    let model = attr(&dir.join("device/model"));
    let vendor = attr(&dir.join("device/vendor"));
    let serial = first_nonempty([
        attr(&dir.join("device/serial")),
        attr(&dir.join("serial")),
        std::fs::read(dir.join("device/vpd_pg80"))
            .map(|b| vpd_pg80_serial(&b))
            .unwrap_or_default(),
    ]);
    let wwid = first_nonempty([attr(&dir.join("wwid")), attr(&dir.join("device/wwid"))]);
    let uuid = first_nonempty([attr(&dir.join("uuid")), attr(&dir.join("device/uuid"))]);
    let bus_path = bus_path(root, &dir);
    let scsi_address = dir
        .join("device")
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .filter(|base| is_scsi_address(base))
        .unwrap_or_default();
    let transport = transport(name, &scsi_address, &vendor, &bus_path);
    BlockDevice {
        name: name.to_owned(),
        size: sectors_to_bytes(&attr(&dir.join("size"))),
        cdrom: name.starts_with("sr") || attr(&dir.join("device/type")) == "5",
        model,
        vendor,
        serial,
        wwid,
        uuid,
        modalias: attr(&dir.join("device/modalias")),
        card_name: attr(&dir.join("device/name")),
        readonly: attr(&dir.join("ro")) == "1",
        rotational: attr(&dir.join("queue/rotational")) == "1",
        transport,
        scsi_address,
        subsystem: subsystem(root, &dir.join("subsystem")),
        bus_path,
        partitions: partitions(&dir),
    }
}

fn partitions(dir: &Path) -> Vec<Partition> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut parts: Vec<Partition> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pdir = dir.join(&name);
            let number = attr(&pdir.join("partition")).parse::<u32>().ok()?;
            Some(Partition {
                number,
                start: attr(&pdir.join("start")).parse().unwrap_or(0),
                size: sectors_to_bytes(&attr(&pdir.join("size"))),
                readonly: attr(&pdir.join("ro")) == "1",
                name,
            })
        })
        .collect();
    parts.sort_by_key(|p| p.number);
    parts
}

/// Upstream's bus path: the disk's own directory below `/sys/devices`, two
/// levels up (dropping `block/<name>`; for NVMe, `<controller>/<name>`).
fn bus_path(root: &Path, dir: &Path) -> String {
    let Ok(real) = dir.canonicalize() else {
        return String::new();
    };
    let Ok(rel) = real.strip_prefix(root.join("devices")) else {
        return String::new();
    };
    let full = Path::new("/").join(rel);
    full.parent()
        .and_then(Path::parent)
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The resolved `subsystem` link, written as it would be under `/sys`.
fn subsystem(root: &Path, link: &Path) -> String {
    let Ok(real) = link.canonicalize() else {
        return String::new();
    };
    match real.strip_prefix(root) {
        Ok(rel) => Path::new("/sys").join(rel).display().to_string(),
        Err(_) => real.display().to_string(),
    }
}

fn transport(name: &str, scsi_address: &str, vendor: &str, bus_path: &str) -> Transport {
    if name.starts_with("nvme") {
        Transport::Nvme
    } else if name.starts_with("vd") {
        Transport::Virtio
    } else if name.starts_with("mmcblk") {
        Transport::Mmc
    } else if name.starts_with("xvd") {
        Transport::Xen
    } else if scsi_address.is_empty() {
        Transport::Unknown
    } else if bus_path.contains("/usb") {
        Transport::Usb
    } else if vendor == "ATA" {
        Transport::Ata
    } else {
        Transport::Scsi
    }
}

/// `host:channel:target:lun`, four decimal numbers.
fn is_scsi_address(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The serial number in a SCSI VPD page 0x80 (unit serial number): a 4-byte
/// header (page code at byte 1, big-endian length at 2..4), then ASCII.
#[must_use]
pub fn vpd_pg80_serial(page: &[u8]) -> String {
    if page.len() < 4 || page[1] != 0x80 {
        return String::new();
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let end = page.len().min(4 + len);
    String::from_utf8_lossy(&page[4..end])
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_owned()
}

fn sectors_to_bytes(s: &str) -> u64 {
    s.parse::<u64>().unwrap_or(0).saturating_mul(SYSFS_SECTOR)
}

fn first_nonempty<const N: usize>(candidates: [String; N]) -> String {
    candidates
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

/// An attribute file, trimmed; empty when missing or unreadable.
fn attr(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_owned()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDisk, write_fake_disk};

    fn virtio() -> FakeDisk {
        FakeDisk {
            name: "vda".into(),
            device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
            sectors: 20_971_520,
            rotational: true,
            attrs: vec![("serial".into(), "disk-one\n".into())],
            device_attrs: vec![("modalias".into(), "virtio:d00000002v00001AF4\n".into())],
            partitions: vec![
                ("vda1".into(), 1, 2048, 204_800),
                ("vda2".into(), 2, 206_848, 2048),
            ],
            ..FakeDisk::default()
        }
    }

    fn nvme() -> FakeDisk {
        FakeDisk {
            name: "nvme0n1".into(),
            device_path: "pci0000:00/0000:00:04.0/nvme/nvme0".into(),
            flat: true,
            sectors: 2_097_152,
            attrs: vec![
                ("wwid".into(), "eui.0011223344556677\n".into()),
                (
                    "uuid".into(),
                    "7f1c3b4e-0000-4000-8000-000000000001\n".into(),
                ),
            ],
            device_attrs: vec![
                (
                    "model".into(),
                    "QEMU NVMe Ctrl                          \n".into(),
                ),
                ("serial".into(), "deadbeef            \n".into()),
            ],
            ..FakeDisk::default()
        }
    }

    fn ata() -> FakeDisk {
        FakeDisk {
            name: "sda".into(),
            device_path: "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0".into(),
            sectors: 1000,
            rotational: true,
            readonly: true,
            device_attrs: vec![
                ("vendor".into(), "ATA     \n".into()),
                ("model".into(), "QEMU HARDDISK   \n".into()),
                ("wwid".into(), "naa.5000c500a1b2c3d4\n".into()),
                ("type".into(), "0\n".into()),
            ],
            device_vpd_pg80: Some(b"\x00\x80\x00\x08QM00001 ".to_vec()),
            ..FakeDisk::default()
        }
    }

    #[test]
    fn enumerates_disks_with_their_facts() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        for d in [virtio(), nvme(), ata()] {
            write_fake_disk(sys, &d).unwrap();
        }
        write_fake_disk(
            sys,
            &FakeDisk {
                name: "sr0".into(),
                device_path: "pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0".into(),
                sectors: 0,
                rotational: true,
                device_attrs: vec![
                    ("vendor".into(), "QEMU    \n".into()),
                    ("model".into(), "QEMU DVD-ROM    \n".into()),
                    ("type".into(), "5\n".into()),
                ],
                ..FakeDisk::default()
            },
        )
        .unwrap();
        write_fake_disk(
            sys,
            &FakeDisk {
                name: "loop0".into(),
                sectors: 8,
                ..FakeDisk::default()
            },
        )
        .unwrap();

        let all = block_devices(sys).unwrap();
        let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "nvme0n1", "sda", "sr0", "vda"]);

        let listed = disks(sys).unwrap();
        let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "sr0", "vda"]);

        let vda = listed.iter().find(|d| d.name == "vda").unwrap();
        assert_eq!(
            *vda,
            BlockDevice {
                name: "vda".into(),
                size: 20_971_520 * 512,
                serial: "disk-one".into(),
                modalias: "virtio:d00000002v00001AF4".into(),
                rotational: true,
                transport: Transport::Virtio,
                bus_path: "/pci0000:00/0000:00:05.0/virtio2".into(),
                subsystem: "/sys/class/block".into(),
                partitions: vec![
                    Partition {
                        name: "vda1".into(),
                        number: 1,
                        start: 2048,
                        size: 204_800 * 512,
                        readonly: false,
                    },
                    Partition {
                        name: "vda2".into(),
                        number: 2,
                        start: 206_848,
                        size: 2048 * 512,
                        readonly: false,
                    },
                ],
                ..BlockDevice::default()
            }
        );
        assert_eq!(vda.kind(), DiskKind::Hdd);

        let nvme = listed.iter().find(|d| d.name == "nvme0n1").unwrap();
        assert_eq!(nvme.model, "QEMU NVMe Ctrl");
        assert_eq!(nvme.serial, "deadbeef");
        assert_eq!(nvme.wwid, "eui.0011223344556677");
        assert_eq!(nvme.uuid, "7f1c3b4e-0000-4000-8000-000000000001");
        // Upstream's rule (two levels up from the disk's own directory)
        // stops at the controller's parent for NVMe.
        assert_eq!(nvme.bus_path, "/pci0000:00/0000:00:04.0/nvme");
        assert_eq!(nvme.transport, Transport::Nvme);
        assert_eq!(nvme.kind(), DiskKind::Nvme);
        assert!(nvme.partitions.is_empty());

        let sda = listed.iter().find(|d| d.name == "sda").unwrap();
        assert_eq!(sda.vendor, "ATA");
        assert_eq!(sda.model, "QEMU HARDDISK");
        assert_eq!(sda.serial, "QM00001");
        assert_eq!(sda.wwid, "naa.5000c500a1b2c3d4");
        assert_eq!(sda.scsi_address, "0:0:0:0");
        assert_eq!(sda.transport, Transport::Ata);
        assert!(sda.readonly);
        assert_eq!(sda.kind(), DiskKind::Hdd);
        assert_eq!(
            sda.bus_path,
            "/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0"
        );

        let sr0 = listed.iter().find(|d| d.name == "sr0").unwrap();
        assert!(sr0.cdrom);
        assert_eq!(sr0.size, 0);
        assert_eq!(sr0.transport, Transport::Scsi);
        assert_eq!(sr0.kind(), DiskKind::Cd);

        let loop0 = all.iter().find(|d| d.name == "loop0").unwrap();
        assert_eq!(loop0.bus_path, "/virtual");
        assert_eq!(loop0.transport, Transport::Unknown);
        assert_eq!(loop0.kind(), DiskKind::Unknown);
    }

    #[test]
    fn kinds() {
        let mut d = BlockDevice {
            transport: Transport::Virtio,
            ..BlockDevice::default()
        };
        assert_eq!(d.kind(), DiskKind::Ssd);
        d.rotational = true;
        assert_eq!(d.kind(), DiskKind::Hdd);
        d.transport = Transport::Mmc;
        assert_eq!(d.kind(), DiskKind::Sd);
        d.cdrom = true;
        assert_eq!(d.kind(), DiskKind::Cd);
    }

    #[test]
    fn listed_names() {
        for name in ["vda", "sda", "nvme0n1", "mmcblk0", "sr0", "xvda"] {
            assert!(is_listed_disk(name), "{name}");
        }
        for name in ["loop0", "ram0", "zram0", "dm-0"] {
            assert!(!is_listed_disk(name), "{name}");
        }
        assert!(gets_links("loop0"));
        assert!(!gets_links("dm-1"));
    }

    #[test]
    fn vpd_page() {
        assert_eq!(vpd_pg80_serial(b"\x00\x80\x00\x06 ABC12"), "ABC12");
        assert_eq!(vpd_pg80_serial(b"\x00\x83\x00\x02AB"), "");
        assert_eq!(vpd_pg80_serial(b"\x00\x80"), "");
        // A length past the end is clamped.
        assert_eq!(vpd_pg80_serial(b"\x00\x80\x00\xffXY"), "XY");
    }

    #[test]
    fn missing_block_dir_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = block_devices(dir.path()).unwrap_err();
        assert!(err.to_string().contains("block"), "{err}");
    }
}
