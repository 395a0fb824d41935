//! udevd's probe and links over filesystems made by the real tools.
//!
//! The unit tests write superblocks byte by byte (`udevd::testing`); these
//! tests have `mkfs.xfs`, `mkfs.vfat` (FAT32 and FAT16), `mkfs.ext4`,
//! `mkswap`, `mkfs.btrfs` and `xorriso` format image files with a fixed
//! UUID (or FAT volume id) and label. The probe must read exactly those
//! back, and the links must be exactly the `by-uuid` and `by-label` names
//! udev makes for them (a FAT volume id as `XXXX-XXXX`). The last test puts
//! the images behind a fake sysfs as the partition nodes of a GPT disk and
//! runs the whole `collect` and `sync`.
//!
//! The tools come from the Debian packages xfsprogs, dosfstools,
//! e2fsprogs, util-linux, btrfs-progs and xorriso (`scripts/setup` installs
//! them). Without them these tests fail,
//! naming the package: they do not skip. They need no root.
//!
//! The images are sparse files (`set_len`): mkfs.xfs refuses filesystems
//! under 300 MB (xfsprogs 5.19 and later), but only the metadata mkfs writes
//! takes disk space.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use udevd::links::{self, DeviceFacts, Link};
use udevd::probe::{self, Fs, FsKind};
use udevd::testing::{
    EFI_SYSTEM, FakeDisk, ImagePart, LINUX_DATA, write_fake_disk, write_gpt_image,
};

const MIB: u64 = 1 << 20;

/// Above mkfs.xfs's 300 MB minimum.
const XFS_SIZE: u64 = 512 * MIB;
/// With 512-byte clusters (`-s 1`) FAT32 gets about 129,000 clusters, above
/// the 65,525 it needs.
const FAT32_SIZE: u64 = 64 * MIB;
const FAT16_SIZE: u64 = 32 * MIB;
const EXT4_SIZE: u64 = 32 * MIB;

const XFS_UUID: &str = "0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0";
const XFS_LABEL: &str = "DATA";
/// `mkfs.vfat -i` takes the volume id in hex.
const FAT32_ID: &str = "1234ABCD";
const FAT32_UUID: &str = "1234-ABCD";
const FAT32_LABEL: &str = "EFI";
/// The FAT16 image has no label (mkfs.vfat writes `NO NAME`).
const FAT16_ID: &str = "0A0B0C0D";
const FAT16_UUID: &str = "0A0B-0C0D";
const EXT4_UUID: &str = "5ea7e000-0000-4000-8000-00000000e4e4";
const EXT4_LABEL: &str = "STATE";

/// The GPT disk GUID of the last test's disk.
const DISK_GUID: &str = "5c6f1d2e-2222-4333-8444-555566667777";

/// Where `tool` is: in PATH or in one of the sbin directories (which a
/// non-root PATH often lacks). Panics naming the Debian package when it is
/// not installed.
fn find_tool(tool: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.iter()
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed (looked in PATH, /usr/sbin, /sbin and \
                 /usr/local/sbin): udevd/tests/mkfs.rs needs the Debian package \
                 {package} (apt-get install {package}); scripts/setup installs it"
            )
        })
}

/// Runs `tool <args>` with no input; panics with the command line and the
/// tool's output when it fails.
fn run_tool(tool: &str, package: &str, args: &[&OsStr]) {
    let program = find_tool(tool, package);
    let output = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let line: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    assert!(
        output.status.success(),
        "`{} {}` failed ({}):\n{}{}",
        program.display(),
        line.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Makes `image` a sparse file of `size` bytes and runs `tool <args> image`.
fn mkfs(tool: &str, package: &str, args: &[&str], image: &Path, size: u64) {
    File::create(image)
        .and_then(|file| file.set_len(size))
        .unwrap_or_else(|e| panic!("creating {} ({size} bytes): {e}", image.display()));
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(image.as_os_str());
    run_tool(tool, package, &all);
}

fn make_xfs(image: &Path) {
    let uuid = format!("uuid={XFS_UUID}");
    mkfs(
        "mkfs.xfs",
        "xfsprogs",
        &["-q", "-f", "-L", XFS_LABEL, "-m", uuid.as_str()],
        image,
        XFS_SIZE,
    );
}

fn make_fat32(image: &Path) {
    mkfs(
        "mkfs.vfat",
        "dosfstools",
        &["-F", "32", "-s", "1", "-n", FAT32_LABEL, "-i", FAT32_ID],
        image,
        FAT32_SIZE,
    );
}

fn make_fat16(image: &Path) {
    mkfs(
        "mkfs.vfat",
        "dosfstools",
        &["-F", "16", "-i", FAT16_ID],
        image,
        FAT16_SIZE,
    );
}

fn make_ext4(image: &Path) {
    mkfs(
        "mkfs.ext4",
        "e2fsprogs",
        &["-q", "-F", "-L", EXT4_LABEL, "-U", EXT4_UUID],
        image,
        EXT4_SIZE,
    );
}

fn fs(kind: FsKind, uuid: &str, label: Option<&str>) -> Fs {
    Fs {
        kind,
        uuid: Some(uuid.to_owned()),
        label: label.map(str::to_owned),
    }
}

fn link(path: &str, target: &str) -> Link {
    Link {
        path: path.into(),
        target: target.into(),
    }
}

/// Probes `image` as a whole device and as a partition, expecting `expected`
/// both ways, then checks the links of partition `number` named `node`
/// holding it (no `by-id` names: the disk has no identifiers).
fn check(image: &Path, expected: &Fs, node: &str, number: u32, expected_links: &[Link]) {
    let probe = probe::probe_path(image).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(probe.pt_uuid, None, "{}: not a GPT disk", image.display());
    assert!(
        probe.partitions.is_empty(),
        "{}: {:?}",
        image.display(),
        probe.partitions
    );
    assert_eq!(probe.fs.as_ref(), Some(expected), "{}", image.display());
    let fs = probe::probe_fs_path(image).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.as_ref(), Some(expected), "{}", image.display());
    let links = links::links_for(&DeviceFacts {
        name: node.to_owned(),
        partition: Some(number),
        fs,
        ..DeviceFacts::default()
    });
    assert_eq!(links, expected_links, "{}", image.display());
}

#[test]
fn real_filesystems_probe_and_link_exactly() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let xfs = dir.path().join("xfs.img");
    let fat32 = dir.path().join("fat32.img");
    let fat16 = dir.path().join("fat16.img");
    let ext4 = dir.path().join("ext4.img");
    make_xfs(&xfs);
    make_fat32(&fat32);
    make_fat16(&fat16);
    make_ext4(&ext4);

    check(
        &fat32,
        &fs(FsKind::Vfat, FAT32_UUID, Some(FAT32_LABEL)),
        "vda1",
        1,
        &[
            link("by-uuid/1234-ABCD", "../../vda1"),
            link("by-label/EFI", "../../vda1"),
        ],
    );
    check(
        &xfs,
        &fs(FsKind::Xfs, XFS_UUID, Some(XFS_LABEL)),
        "vda2",
        2,
        &[
            link("by-uuid/0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0", "../../vda2"),
            link("by-label/DATA", "../../vda2"),
        ],
    );
    check(
        &ext4,
        &fs(FsKind::Ext4, EXT4_UUID, Some(EXT4_LABEL)),
        "vda3",
        3,
        &[
            link("by-uuid/5ea7e000-0000-4000-8000-00000000e4e4", "../../vda3"),
            link("by-label/STATE", "../../vda3"),
        ],
    );
    // No label: a by-uuid link only.
    check(
        &fat16,
        &fs(FsKind::Vfat, FAT16_UUID, None),
        "vdb1",
        1,
        &[link("by-uuid/0A0B-0C0D", "../../vdb1")],
    );
}

/// A swap area (4 KiB pages and 8 KiB pages), btrfs and an ISO 9660
/// image with Joliet names, made by mkswap, mkfs.btrfs and xorriso: the
/// probe reads their UUIDs and labels, and the links are udev's (a swap
/// area's label too, as its blkid usage is "other"). One deliberate
/// difference: blkid gives ISO 9660 a UUID made of its creation date, so
/// udev also links it by UUID; upstream's probe and this one give none.
#[test]
fn swap_btrfs_and_iso_probe_and_link_exactly() {
    const SWAP_UUID: &str = "5a5a0000-1111-4222-8333-444455556666";
    const BTRFS_UUID: &str = "b7f50000-1111-4222-8333-444455556666";
    let dir = tempfile::tempdir().expect("temporary directory");
    for (page, label) in [("4096", "swap4k"), ("8192", "swap8k")] {
        let swap = dir.path().join(format!("{label}.img"));
        mkfs(
            "mkswap",
            "util-linux",
            &["-q", "-p", page, "-U", SWAP_UUID, "-L", label],
            &swap,
            64 * MIB,
        );
        check(
            &swap,
            &fs(FsKind::Swap, SWAP_UUID, Some(label)),
            "vdc1",
            1,
            &[
                link(&format!("by-uuid/{SWAP_UUID}"), "../../vdc1"),
                link(&format!("by-label/{label}"), "../../vdc1"),
            ],
        );
    }

    let btrfs = dir.path().join("btrfs.img");
    mkfs(
        "mkfs.btrfs",
        "btrfs-progs",
        &["-q", "-f", "-U", BTRFS_UUID, "-L", "pool"],
        &btrfs,
        256 * MIB,
    );
    check(
        &btrfs,
        &fs(FsKind::Btrfs, BTRFS_UUID, Some("pool")),
        "vdc2",
        2,
        &[
            link(&format!("by-uuid/{BTRFS_UUID}"), "../../vdc2"),
            link("by-label/pool", "../../vdc2"),
        ],
    );

    let contents = dir.path().join("contents");
    std::fs::create_dir(&contents).expect("mkdir");
    std::fs::write(contents.join("hello.txt"), "hello\n").expect("write");
    let iso = dir.path().join("image.iso");
    let mut args: Vec<&OsStr> = ["-as", "mkisofs", "-quiet", "-J", "-V", "ISO label", "-o"]
        .map(OsStr::new)
        .to_vec();
    args.extend([iso.as_os_str(), contents.as_os_str()]);
    run_tool("xorriso", "xorriso", &args);
    check(
        &iso,
        &Fs {
            kind: FsKind::Iso9660,
            uuid: None,
            label: Some("ISO label".to_owned()),
        },
        "sr0",
        1,
        &[link("by-label/ISO\\x20label", "../../sr0")],
    );
}

#[test]
fn collect_and_sync_link_real_filesystems_on_gpt_partitions() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    std::fs::create_dir_all(&dev).expect("creating dev");

    // (node, number, GPT name, unique GUID, type, size), laid out from LBA
    // 2048 on.
    let layout = [
        (
            "vda1",
            1u32,
            "EFI",
            "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            EFI_SYSTEM,
            FAT32_SIZE,
        ),
        (
            "vda2",
            2,
            "DATA",
            "a0000000-0000-4000-8000-000000000002",
            LINUX_DATA,
            XFS_SIZE,
        ),
        (
            "vda3",
            3,
            "STATE",
            "a0000000-0000-4000-8000-000000000003",
            LINUX_DATA,
            EXT4_SIZE,
        ),
    ];
    let mut start = 2048u64;
    let mut gpt = Vec::new();
    let mut sysfs_partitions = Vec::new();
    for (node, number, label, uuid, type_guid, size) in layout {
        let sectors = size / 512;
        gpt.push(ImagePart {
            type_guid: type_guid.into(),
            uuid: uuid.into(),
            label: label.into(),
            start_lba: start,
            end_lba: start + sectors - 1,
            fs: None,
        });
        sysfs_partitions.push((node.to_owned(), number, start, sectors));
        start += sectors;
    }
    // Room after the last partition for the backup GPT.
    let total = start + 2048;
    // The disk's node holds only the GPT: as on a real machine, each
    // partition's filesystem is read through the partition's own node, which
    // here is the image mkfs made.
    write_gpt_image(&dev.join("vda"), total, DISK_GUID, &gpt).expect("GPT image");
    write_fake_disk(
        &sys,
        &FakeDisk {
            name: "vda".into(),
            device_path: "pci0000:00/0000:00:05.0/virtio2".into(),
            sectors: total,
            attrs: vec![("serial".into(), "mkfs-disk\n".into())],
            partitions: sysfs_partitions,
            ..FakeDisk::default()
        },
    )
    .expect("fake sysfs");
    make_fat32(&dev.join("vda1"));
    make_xfs(&dev.join("vda2"));
    make_ext4(&dev.join("vda3"));

    let expected = [
        link("by-id/virtio-mkfs-disk", "../../vda"),
        link("by-id/virtio-mkfs-disk-part1", "../../vda1"),
        link("by-uuid/1234-ABCD", "../../vda1"),
        link("by-label/EFI", "../../vda1"),
        link(
            "by-partuuid/3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "../../vda1",
        ),
        link("by-partlabel/EFI", "../../vda1"),
        link("by-id/virtio-mkfs-disk-part2", "../../vda2"),
        link("by-uuid/0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0", "../../vda2"),
        link("by-label/DATA", "../../vda2"),
        link(
            "by-partuuid/a0000000-0000-4000-8000-000000000002",
            "../../vda2",
        ),
        link("by-partlabel/DATA", "../../vda2"),
        link("by-id/virtio-mkfs-disk-part3", "../../vda3"),
        link("by-uuid/5ea7e000-0000-4000-8000-00000000e4e4", "../../vda3"),
        link("by-label/STATE", "../../vda3"),
        link(
            "by-partuuid/a0000000-0000-4000-8000-000000000003",
            "../../vda3",
        ),
        link("by-partlabel/STATE", "../../vda3"),
    ];
    let links = links::collect(&sys, &dev).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(links, expected);

    let report = links::sync(&sys, &dev).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.created, report.removed), (expected.len(), 0));
    // Every link resolves to its node.
    let disk = dev.join("disk");
    for l in &expected {
        let node = l.target.trim_start_matches("../../");
        let resolved = std::fs::canonicalize(disk.join(&l.path))
            .unwrap_or_else(|e| panic!("resolving {}: {e}", l.path));
        let want = std::fs::canonicalize(dev.join(node))
            .unwrap_or_else(|e| panic!("resolving {node}: {e}"));
        assert_eq!(resolved, want, "{}", l.path);
    }
}
