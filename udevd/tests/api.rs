//! storage.StorageService over its unix socket, served by the real server
//! from a fake sysfs tree (and, on metal, disk image files as device nodes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::storage::disk::DiskType;
use api::storage::storage_service_client::StorageServiceClient;
use api::storage::{BlockDeviceWipeRequest, Disk};
use machinery::constants::NodePaths;
use tonic::Code;
use tonic::transport::Channel;
use udevd::testing::{
    FakeDisk, SAMPLE_SECTORS, sample_sysfs_partitions, write_fake_disk, write_sample_image,
};
use udevd::{Mode, Options, StorageApi};

/// A node with a virtio disk `vda` (its node: the sample GPT image, with a
/// STATE partition), an empty CD drive `sr0`, a blank virtio disk `vdb`
/// and a loop device. Returns (sysfs, dev).
fn fake_node(dir: &Path) -> (PathBuf, PathBuf) {
    let sys = dir.join("sys");
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).expect("dev");
    let disks = [
        FakeDisk {
            name: "vda".into(),
            device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
            sectors: SAMPLE_SECTORS,
            attrs: vec![("serial".into(), "disk-one\n".into())],
            device_attrs: vec![("modalias".into(), "virtio:d00000002v00001AF4\n".into())],
            partitions: sample_sysfs_partitions("vda"),
            ..FakeDisk::default()
        },
        FakeDisk {
            name: "vdb".into(),
            device_path: "pci0000:00/0000:00:06.0/virtio3".into(),
            sectors: 4096,
            rotational: true,
            ..FakeDisk::default()
        },
        FakeDisk {
            name: "sr0".into(),
            device_path: "pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0".into(),
            readonly: true,
            device_attrs: vec![
                ("vendor".into(), "QEMU    \n".into()),
                ("model".into(), "QEMU DVD-ROM    \n".into()),
                ("type".into(), "5\n".into()),
            ],
            ..FakeDisk::default()
        },
        FakeDisk {
            name: "loop0".into(),
            sectors: 8,
            ..FakeDisk::default()
        },
    ];
    for disk in &disks {
        write_fake_disk(&sys, disk).expect("fake disk");
    }
    write_sample_image(&dev.join("vda")).expect("image");
    std::fs::File::create(dev.join("vdb"))
        .and_then(|f| f.set_len(4096 * 512))
        .expect("blank image");
    (sys, dev)
}

async fn connect(socket: &Path) -> StorageServiceClient<Channel> {
    for _ in 0..100 {
        if let Ok(channel) = machinery::grpc::unix_channel(socket).await {
            return StorageServiceClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} does not answer", socket.display());
}

fn expected(system_disk: bool) -> Vec<Disk> {
    vec![
        Disk {
            size: 0,
            model: "QEMU DVD-ROM".into(),
            device_name: "/dev/sr0".into(),
            r#type: DiskType::Cd as i32,
            bus_path: "/pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0".into(),
            subsystem: "/sys/class/block".into(),
            readonly: true,
            ..Disk::default()
        },
        Disk {
            size: SAMPLE_SECTORS * 512,
            device_name: "/dev/vda".into(),
            serial: "disk-one".into(),
            modalias: "virtio:d00000002v00001AF4".into(),
            r#type: DiskType::Ssd as i32,
            bus_path: "/pci0000:00/0000:00:05.0/virtio2".into(),
            system_disk,
            subsystem: "/sys/class/block".into(),
            ..Disk::default()
        },
        Disk {
            size: 4096 * 512,
            device_name: "/dev/vdb".into(),
            r#type: DiskType::Hdd as i32,
            bus_path: "/pci0000:00/0000:00:06.0/virtio3".into(),
            subsystem: "/sys/class/block".into(),
            ..Disk::default()
        },
    ]
}

/// Every file under `dir` with its content (links as `-> target`).
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).expect("read_dir").flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_symlink() {
                let target = std::fs::read_link(&path).expect("read_link");
                out.push((path, format!("-> {}", target.display())));
            } else if kind.is_dir() {
                stack.push(path);
            } else {
                let content = std::fs::read(&path).expect("read");
                out.push((path, String::from_utf8_lossy(&content).into_owned()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn container_mode_serves_disks_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sys, dev) = fake_node(dir.path());
    let before = (snapshot(&sys), snapshot(&dev));
    let root = dir.path().join("root");
    let socket = NodePaths::under(&root).socket("udevd");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = Options {
        mode: Mode::Container,
        root: root.clone(),
        sysfs: sys.clone(),
        dev: dev.clone(),
    };
    let server = tokio::spawn(udevd::run(options, async move {
        let _ = stopped.await;
    }));
    let mut client = connect(&socket).await;

    let reply = client.disks(()).await.expect("Disks").into_inner();
    assert_eq!(reply.messages.len(), 1);
    assert_eq!(reply.messages[0].metadata, None);
    // Container mode never reads the device nodes: no system disk.
    assert_eq!(reply.messages[0].disks, expected(false));

    let err = client
        .block_device_wipe(BlockDeviceWipeRequest::default())
        .await
        .expect_err("wipe refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "not supported in container mode");

    assert_eq!(
        (snapshot(&sys), snapshot(&dev)),
        before,
        "container mode wrote"
    );

    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server result");
    assert!(!socket.exists(), "socket left behind");
}

#[tokio::test]
async fn metal_api_reports_the_system_disk() {
    // run() on metal needs the kernel's uevent socket; the API alone is
    // served the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let (sys, dev) = fake_node(dir.path());
    let socket = NodePaths::under(dir.path().join("root")).socket("udevd");
    let listener = udevd::bind(&socket).expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(udevd::serve(
        StorageApi::new(Mode::Metal, &sys, &dev),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = connect(&socket).await;

    let reply = client.disks(()).await.expect("Disks").into_inner();
    assert_eq!(reply.messages.len(), 1);
    assert_eq!(reply.messages[0].disks, expected(true));

    // The system disk's STATE is a volume: refused, over the socket, with
    // upstream's code.
    let err = client
        .block_device_wipe(BlockDeviceWipeRequest {
            devices: vec![api::storage::BlockDeviceWipeDescriptor {
                device: "vda3".into(),
                ..Default::default()
            }],
        })
        .await
        .expect_err("STATE is in use");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "blockdevice \"vda3\" is in use by volume \"STATE\""
    );

    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server result");
}
