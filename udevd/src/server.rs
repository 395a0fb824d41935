//! `storage.StorageService`: the Disks call, answered from sysfs.
//!
//! Each call enumerates the disks afresh (a handful of small sysfs reads).
//! On metal a disk is the system disk when its GPT has a partition named
//! `STATE` or `EPHEMERAL` (read from its device node; a node that cannot be
//! read is not the system disk). In container mode only sysfs is read: the
//! host's disks are never the container node's system disk.
//!
//! BlockDeviceWipe wipes disks and partitions no system volume uses (see
//! [`crate::wipe`]); in container mode it is refused with
//! `FailedPrecondition`: the host's disks are not the node's.

use std::path::PathBuf;

use api::storage::disk::DiskType;
use api::storage::storage_service_server::StorageService;
use api::storage::{
    BlockDeviceWipe, BlockDeviceWipeRequest, BlockDeviceWipeResponse, Disk, Disks, DisksResponse,
};
use tonic::{Request, Response, Status};

use crate::Mode;
use crate::probe::{self, Probe};
use crate::sysfs::{self, BlockDevice, DiskKind, SysfsError};
use crate::wipe::{WipeError, WipeRequest, Wiper};

/// Partition names that mark the system disk.
pub const SYSTEM_LABELS: [&str; 2] = ["STATE", "EPHEMERAL"];

/// The service.
#[derive(Debug, Clone)]
pub struct StorageApi {
    mode: Mode,
    sysfs: PathBuf,
    dev: PathBuf,
    mounts: PathBuf,
}

impl StorageApi {
    /// A service reading `sysfs` and (on metal) the nodes under `dev`.
    #[must_use]
    pub fn new(mode: Mode, sysfs: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> StorageApi {
        StorageApi {
            mode,
            sysfs: sysfs.into(),
            dev: dev.into(),
            mounts: PathBuf::from("/proc/self/mounts"),
        }
    }

    /// The same service reading the mount table at `mounts` (tests).
    #[must_use]
    pub fn with_mounts(mut self, mounts: impl Into<PathBuf>) -> StorageApi {
        self.mounts = mounts.into();
        self
    }

    fn wiper(&self) -> Wiper {
        Wiper {
            sysfs: self.sysfs.clone(),
            dev: self.dev.clone(),
            mounts: self.mounts.clone(),
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

/// The status for a refused or failed wipe (upstream's codes).
fn wipe_status(e: &WipeError) -> Status {
    let msg = e.to_string();
    match e {
        WipeError::BadName(_) | WipeError::UnknownMethod(_) => Status::invalid_argument(msg),
        WipeError::NotFound(_) => Status::not_found(msg),
        WipeError::ReadOnly(_)
        | WipeError::Cdrom(_)
        | WipeError::InUse { .. }
        | WipeError::Held { .. }
        | WipeError::Busy(_) => Status::failed_precondition(msg),
        WipeError::Sysfs(_) | WipeError::Wipe { .. } => Status::internal(msg),
    }
}

/// The wire request as the domain's.
fn wipe_requests(request: BlockDeviceWipeRequest) -> Result<Vec<WipeRequest>, WipeError> {
    request
        .devices
        .into_iter()
        .map(|d| {
            Ok(WipeRequest {
                method: crate::wipe::method_of(d.method)?,
                device: d.device,
                skip_volume_check: d.skip_volume_check,
                skip_secondary_check: d.skip_secondary_check,
                drop_partition: d.drop_partition,
            })
        })
        .collect()
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
        request: Request<BlockDeviceWipeRequest>,
    ) -> Result<Response<BlockDeviceWipeResponse>, Status> {
        if self.mode == Mode::Container {
            return Err(Status::failed_precondition(
                "not supported in container mode",
            ));
        }
        let requests = wipe_requests(request.into_inner()).map_err(|e| wipe_status(&e))?;
        let wiper = self.wiper();
        tokio::task::spawn_blocking(move || wiper.wipe_all(&requests))
            .await
            .map_err(|e| Status::internal(format!("wiping: {e}")))?
            .map_err(|e| {
                tracing::warn!(error = %e, "wipe refused or failed");
                wipe_status(&e)
            })?;
        Ok(Response::new(BlockDeviceWipeResponse {
            messages: vec![BlockDeviceWipe { metadata: None }],
        }))
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
        // Nothing asked, nothing done: one empty reply, as upstream.
        let metal = StorageApi::new(Mode::Metal, &sys, &dev);
        let reply = metal
            .block_device_wipe(Request::new(BlockDeviceWipeRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.messages, [BlockDeviceWipe { metadata: None }]);
    }

    const MIB: u64 = 1024 * 1024;

    fn wipe_one(device: &str, method: i32, skip: bool, drop: bool) -> BlockDeviceWipeRequest {
        BlockDeviceWipeRequest {
            devices: vec![api::storage::BlockDeviceWipeDescriptor {
                device: device.into(),
                method,
                skip_volume_check: skip,
                drop_partition: drop,
                skip_secondary_check: false,
            }],
        }
    }

    async fn wipe(api: &StorageApi, request: BlockDeviceWipeRequest) -> Result<(), Status> {
        api.block_device_wipe(Request::new(request)).await.map(drop)
    }

    /// A node whose vdb is 3 MiB of 0xa5 and whose mount table is `mounts`.
    fn wipe_node(mounts: &str) -> (tempfile::TempDir, StorageApi) {
        let (dir, sys, dev) = node();
        let vdb = dir.path().join("sys/block/vdb/size");
        std::fs::write(&vdb, format!("{}\n", 3 * MIB / 512)).unwrap();
        std::fs::write(dev.join("vdb"), vec![0xa5u8; (3 * MIB) as usize]).unwrap();
        let table = dir.path().join("mounts");
        std::fs::write(&table, mounts).unwrap();
        let api = StorageApi::new(Mode::Metal, &sys, &dev).with_mounts(&table);
        (dir, api)
    }

    fn bytes(path: &std::path::Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[tokio::test]
    async fn a_fast_wipe_zeroes_both_ends_and_a_zeroes_wipe_all() {
        let (dir, api) = wipe_node("");
        let vdb = dir.path().join("dev/vdb");
        wipe(&api, wipe_one("vdb", 0, false, false)).await.unwrap();
        let after = bytes(&vdb);
        assert!(after[..MIB as usize].iter().all(|&b| b == 0));
        assert!(after[2 * MIB as usize..].iter().all(|&b| b == 0));
        assert!(
            after[MIB as usize..2 * MIB as usize]
                .iter()
                .all(|&b| b == 0xa5)
        );
        wipe(&api, wipe_one("vdb", 1, false, false)).await.unwrap();
        assert!(bytes(&vdb).iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn system_volumes_are_refused_unless_the_check_is_skipped() {
        let (dir, api) = wipe_node("");
        // vda holds STATE (its third partition): it and the whole disk are
        // refused.
        for device in ["vda3", "vda"] {
            let err = wipe(&api, wipe_one(device, 0, false, false))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{device}");
            assert_eq!(
                err.message(),
                format!("blockdevice \"{device}\" is in use by volume \"STATE\"")
            );
        }
        // Skipped: wiped.
        let vda3 = dir.path().join("dev/vda3");
        std::fs::write(&vda3, vec![1u8; 4096]).unwrap();
        wipe(&api, wipe_one("vda3", 0, true, false)).await.unwrap();
        assert!(bytes(&vda3).iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn a_mounted_volume_is_refused_by_its_mount() {
        let (_dir, api) = wipe_node("/dev/vdb /var xfs rw 0 0\nproc /proc proc rw 0 0\n");
        let err = wipe(&api, wipe_one("vdb", 0, false, false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            "blockdevice \"vdb\" is in use by volume \"EPHEMERAL\""
        );
    }

    #[tokio::test]
    async fn an_old_installation_on_another_disk_is_not_a_volume() {
        // The node's volumes are on vdb (mounted); vda's STATE partition
        // is an old installation's, free to wipe.
        let (dir, api) = wipe_node("/dev/vdb /var xfs rw 0 0\n");
        let vda3 = dir.path().join("dev/vda3");
        std::fs::write(&vda3, vec![1u8; 4096]).unwrap();
        wipe(&api, wipe_one("vda3", 0, false, false)).await.unwrap();
        assert!(bytes(&vda3).iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn a_data_partition_is_wiped_and_dropped_from_the_table() {
        let (dir, api) = wipe_node("");
        let vda4 = dir.path().join("dev/vda4");
        std::fs::write(&vda4, vec![3u8; 8192]).unwrap();
        let before = probe::probe_path(&dir.path().join("dev/vda")).unwrap();
        assert_eq!(before.partitions.len(), 4);
        wipe(&api, wipe_one("vda4", 0, false, true)).await.unwrap();
        assert!(bytes(&vda4).iter().all(|&b| b == 0));
        let after = probe::probe_path(&dir.path().join("dev/vda")).unwrap();
        let names: Vec<_> = after.partitions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, ["EFI", "BOOT", "STATE"]);
    }

    #[tokio::test]
    async fn every_device_is_checked_before_any_is_wiped() {
        let (dir, api) = wipe_node("");
        let mut request = wipe_one("vdb", 0, false, false);
        request
            .devices
            .extend(wipe_one("vdz", 0, false, false).devices);
        let err = wipe(&api, request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "blockdevice \"vdz\" not found");
        assert!(
            bytes(&dir.path().join("dev/vdb"))
                .iter()
                .all(|&b| b == 0xa5)
        );
    }

    #[tokio::test]
    async fn bad_names_and_methods_are_invalid_arguments() {
        let (_dir, api) = wipe_node("");
        for name in ["", "/dev/vdb", "..", "vdb/../vda"] {
            let err = wipe(&api, wipe_one(name, 0, false, false))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}");
            assert!(
                err.message().contains("not a block device name"),
                "{}",
                err.message()
            );
        }
        let err = wipe(&api, wipe_one("vdb", 7, false, false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "unsupported wipe method 7");
    }

    #[tokio::test]
    async fn a_device_another_is_built_on_is_refused_unless_skipped() {
        let (dir, api) = wipe_node("");
        let holders = dir.path().join("sys/block/vdb/holders");
        std::fs::create_dir_all(holders.join("md0")).unwrap();
        let err = wipe(&api, wipe_one("vdb", 0, true, false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            "blockdevice \"vdb\" is in use by disk \"md0\""
        );
        let mut skipped = wipe_one("vdb", 0, true, false);
        skipped.devices[0].skip_secondary_check = true;
        wipe(&api, skipped).await.unwrap();
    }

    #[tokio::test]
    async fn read_only_disks_and_cd_drives_are_refused() {
        let (dir, api) = wipe_node("");
        std::fs::write(dir.path().join("sys/block/vdb/ro"), "1\n").unwrap();
        write_fake_disk(&dir.path().join("sys"), &crate::testing::cd_drive("sr0")).unwrap();
        for (device, message) in [
            ("vdb", "blockdevice \"vdb\" is read-only"),
            ("sr0", "blockdevice \"sr0\" is a CD-ROM"),
        ] {
            let err = wipe(&api, wipe_one(device, 0, true, false))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
            assert_eq!(err.message(), message);
        }
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
