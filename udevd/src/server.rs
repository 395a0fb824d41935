//! `storage.StorageService`: the Disks call, answered from sysfs.
//!
//! Each call enumerates the disks afresh (a handful of small sysfs reads).
//! On metal a disk is the system disk when its GPT has a partition named
//! `STATE` or `EPHEMERAL` (read from its device node; a node that cannot be
//! read is not the system disk). In container mode only sysfs is read: the
//! host's disks are never the container node's system disk.
//!
//! BlockDeviceWipe is refused: `FailedPrecondition` in container mode,
//! `Unimplemented` on metal until wiping lands.

use std::path::PathBuf;

use api::storage::disk::DiskType;
use api::storage::storage_service_server::StorageService;
use api::storage::{BlockDeviceWipeRequest, BlockDeviceWipeResponse, Disk, Disks, DisksResponse};
use tonic::{Request, Response, Status};

use crate::Mode;
use crate::probe::{self, Probe};
use crate::sysfs::{self, BlockDevice, DiskKind, SysfsError};

/// Partition names that mark the system disk.
pub const SYSTEM_LABELS: [&str; 2] = ["STATE", "EPHEMERAL"];

/// The service.
#[derive(Debug, Clone)]
pub struct StorageApi {
    mode: Mode,
    sysfs: PathBuf,
    dev: PathBuf,
}

impl StorageApi {
    /// A service reading `sysfs` and (on metal) the nodes under `dev`.
    #[must_use]
    pub fn new(mode: Mode, sysfs: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> StorageApi {
        StorageApi {
            mode,
            sysfs: sysfs.into(),
            dev: dev.into(),
        }
    }

    /// The disks, as the API reports them (blocking: reads sysfs and, on
    /// metal, the partition tables).
    ///
    /// # Errors
    /// `<sysfs>/block` cannot be listed.
    pub fn list_disks(&self) -> Result<Vec<Disk>, SysfsError> {
        Ok(sysfs::disks(&self.sysfs)?
            .iter()
            .map(|d| to_proto(d, self.is_system_disk(d)))
            .collect())
    }

    fn is_system_disk(&self, disk: &BlockDevice) -> bool {
        if self.mode != Mode::Metal || disk.cdrom || disk.size == 0 {
            return false;
        }
        match probe::probe_path(&self.dev.join(&disk.name)) {
            Ok(p) => holds_system_partition(&p),
            Err(e) => {
                tracing::debug!(disk = %disk.name, error = %e, "cannot read the partition table");
                false
            }
        }
    }
}

/// Whether a probed disk has a partition named in [`SYSTEM_LABELS`].
#[must_use]
pub fn holds_system_partition(probe: &Probe) -> bool {
    probe
        .partitions
        .iter()
        .any(|p| SYSTEM_LABELS.contains(&p.label.as_str()))
}

/// The API's type for a disk kind.
#[must_use]
pub fn disk_type(kind: DiskKind) -> DiskType {
    match kind {
        DiskKind::Unknown => DiskType::Unknown,
        DiskKind::Ssd => DiskType::Ssd,
        DiskKind::Hdd => DiskType::Hdd,
        DiskKind::Nvme => DiskType::Nvme,
        DiskKind::Sd => DiskType::Sd,
        DiskKind::Cd => DiskType::Cd,
    }
}

/// The API's view of a disk. `device_name` is the node path (`/dev/vda`),
/// as upstream sends it; `name` is the MMC card name.
#[must_use]
pub fn to_proto(dev: &BlockDevice, system_disk: bool) -> Disk {
    Disk {
        size: dev.size,
        model: dev.model.clone(),
        device_name: format!("/dev/{}", dev.name),
        name: dev.card_name.clone(),
        serial: dev.serial.clone(),
        modalias: dev.modalias.clone(),
        uuid: dev.uuid.clone(),
        wwid: dev.wwid.clone(),
        r#type: i32::from(disk_type(dev.kind())),
        bus_path: dev.bus_path.clone(),
        system_disk,
        subsystem: dev.subsystem.clone(),
        readonly: dev.readonly,
    }
}

/// The status for a failed enumeration.
fn status_of(e: &SysfsError) -> Status {
    match e {
        SysfsError::ListBlock { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn disks(&self, _request: Request<()>) -> Result<Response<DisksResponse>, Status> {
        let api = self.clone();
        let listed = tokio::task::spawn_blocking(move || api.list_disks())
            .await
            .map_err(|e| Status::internal(format!("listing disks: {e}")))?;
        let disks = listed.map_err(|e| status_of(&e))?;
        Ok(Response::new(DisksResponse {
            messages: vec![Disks {
                metadata: None,
                disks,
            }],
        }))
    }

    async fn block_device_wipe(
        &self,
        _request: Request<BlockDeviceWipeRequest>,
    ) -> Result<Response<BlockDeviceWipeResponse>, Status> {
        match self.mode {
            Mode::Container => Err(Status::failed_precondition(
                "not supported in container mode",
            )),
            Mode::Metal => Err(Status::unimplemented(
                "BlockDeviceWipe is not implemented by udevd yet",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::{Partition, Transport};
    use crate::testing::{
        FakeDisk, SAMPLE_SECTORS, sample_sysfs_partitions, write_fake_disk, write_sample_image,
    };

    #[test]
    fn maps_a_disk_to_the_wire() {
        let dev = BlockDevice {
            name: "nvme0n1".into(),
            size: 1 << 30,
            model: "QEMU NVMe Ctrl".into(),
            serial: "deadbeef".into(),
            wwid: "eui.0011223344556677".into(),
            uuid: "7f1c3b4e-0000-4000-8000-000000000001".into(),
            modalias: "nvme:x".into(),
            readonly: true,
            transport: Transport::Nvme,
            bus_path: "/pci0000:00/0000:00:04.0/nvme".into(),
            subsystem: "/sys/class/block".into(),
            partitions: vec![Partition {
                name: "nvme0n1p1".into(),
                number: 1,
                start: 2048,
                size: 512,
                readonly: true,
            }],
            ..BlockDevice::default()
        };
        assert_eq!(
            to_proto(&dev, true),
            Disk {
                size: 1 << 30,
                model: "QEMU NVMe Ctrl".into(),
                device_name: "/dev/nvme0n1".into(),
                name: String::new(),
                serial: "deadbeef".into(),
                modalias: "nvme:x".into(),
                uuid: "7f1c3b4e-0000-4000-8000-000000000001".into(),
                wwid: "eui.0011223344556677".into(),
                r#type: DiskType::Nvme as i32,
                bus_path: "/pci0000:00/0000:00:04.0/nvme".into(),
                system_disk: true,
                subsystem: "/sys/class/block".into(),
                readonly: true,
            }
        );
        assert_eq!(disk_type(DiskKind::Cd), DiskType::Cd);
        assert_eq!(disk_type(DiskKind::Unknown), DiskType::Unknown);
    }

    fn node() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for (name, slot, sectors) in [("vda", 5, SAMPLE_SECTORS), ("vdb", 6, 4096)] {
            write_fake_disk(
                &sys,
                &FakeDisk {
                    name: name.into(),
                    device_path: format!("pci0000:00/0000:00:0{slot}.0/virtio{slot}"),
                    sectors,
                    partitions: if name == "vda" {
                        sample_sysfs_partitions(name)
                    } else {
                        Vec::new()
                    },
                    ..FakeDisk::default()
                },
            )
            .unwrap();
        }
        write_sample_image(&dev.join("vda")).unwrap();
        std::fs::File::create(dev.join("vdb"))
            .unwrap()
            .set_len(4096 * 512)
            .unwrap();
        (dir, sys, dev)
    }

    fn system_disks(api: &StorageApi) -> Vec<(String, bool)> {
        api.list_disks()
            .unwrap()
            .into_iter()
            .map(|d| (d.device_name, d.system_disk))
            .collect()
    }

    #[test]
    fn metal_finds_the_system_disk_by_its_partitions() {
        let (_dir, sys, dev) = node();
        let api = StorageApi::new(Mode::Metal, &sys, &dev);
        assert_eq!(
            system_disks(&api),
            [
                ("/dev/vda".to_owned(), true),
                ("/dev/vdb".to_owned(), false)
            ]
        );
        // An unreadable node is not the system disk.
        std::fs::remove_file(dev.join("vda")).unwrap();
        assert_eq!(
            system_disks(&api),
            [
                ("/dev/vda".to_owned(), false),
                ("/dev/vdb".to_owned(), false)
            ]
        );
    }

    #[test]
    fn container_mode_reads_sysfs_only() {
        let (_dir, sys, dev) = node();
        let api = StorageApi::new(Mode::Container, &sys, &dev);
        assert_eq!(
            system_disks(&api),
            [
                ("/dev/vda".to_owned(), false),
                ("/dev/vdb".to_owned(), false)
            ]
        );
    }

    #[tokio::test]
    async fn wipe_is_refused_by_mode() {
        let (_dir, sys, dev) = node();
        let container = StorageApi::new(Mode::Container, &sys, &dev);
        let err = container
            .block_device_wipe(Request::new(BlockDeviceWipeRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(err.message(), "not supported in container mode");
        let metal = StorageApi::new(Mode::Metal, &sys, &dev);
        let err = metal
            .block_device_wipe(Request::new(BlockDeviceWipeRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }

    #[tokio::test]
    async fn disks_call_wraps_one_reply() {
        let (_dir, sys, dev) = node();
        let api = StorageApi::new(Mode::Container, &sys, &dev);
        let reply = StorageService::disks(&api, Request::new(()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.messages.len(), 1);
        assert_eq!(reply.messages[0].metadata, None);
        assert_eq!(reply.messages[0].disks.len(), 2);

        let missing = StorageApi::new(Mode::Container, dev.join("nope"), &dev);
        let err = StorageService::disks(&missing, Request::new(()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("nope"), "{}", err.message());
    }
}
