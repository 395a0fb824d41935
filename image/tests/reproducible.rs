//! Two builds from the same (fake) inputs give identical bytes, the root
//! holds no shell, and the initramfs holds `/init` and the modules in load
//! order.
//!
//! Needs `mksquashfs` and `unsquashfs` (Debian: squashfs-tools); fails,
//! saying so, when they are missing. No network, no
//! root: the kernel and modules are small fake files.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use image::build::{self, BuildInputs};
use image::cpio::{self, ReadEntry};
use image::kernel::KernelSource;
use image::manifest;
use image::modules::{DEFERRED, MODULES, NETWORK};

const EPOCH: u64 = 1_700_000_000;
const KERNEL_VERSION: &str = "6.1.0-test-amd64";

fn require(tool: &str, version_flag: &str, package: &str) {
    match Command::new(tool).arg(version_flag).output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: this test needs the Debian package `{package}` \
             (apt-get install {package}); scripts/setup installs it"
        ),
        Err(e) => panic!("running `{tool} {version_flag}`: {e}"),
    }
}

/// The file a module is stored as in the fake tree: some with `-`, one
/// compressed, the rest plain.
fn fake_file_name(module: &str) -> String {
    match module {
        "crc32c_generic" => "crc32c-generic.ko".to_owned(),
        "nls_cp437" => "nls_cp437.ko.xz".to_owned(),
        other => format!("{other}.ko"),
    }
}

/// Installed file name of a module (canonical name + source extension).
fn installed_file_name(module: &str) -> String {
    match module {
        "nls_cp437" => "nls_cp437.ko.xz".to_owned(),
        other => format!("{other}.ko"),
    }
}

struct Inputs {
    vmlinuz: PathBuf,
    modules_dir: PathBuf,
    bin_dir: PathBuf,
}

fn fake_inputs(dir: &Path) -> Inputs {
    fs::create_dir_all(dir).expect("mkdir inputs");
    let vmlinuz = dir.join("vmlinuz-fake");
    fs::write(&vmlinuz, b"not really a kernel\n").expect("write vmlinuz");

    let modules_dir = dir.join("lib/modules").join(KERNEL_VERSION);
    let drivers = modules_dir.join("kernel/drivers/misc");
    fs::create_dir_all(&drivers).expect("mkdir modules");
    for m in MODULES {
        fs::write(
            drivers.join(fake_file_name(m)),
            format!("fake module {m}\n"),
        )
        .expect("write module");
    }
    fs::write(drivers.join("unwanted.ko"), b"not in the list\n").expect("write module");
    fs::write(modules_dir.join("modules.order"), b"kernel/whatever.ko\n").expect("write");
    std::os::unix::fs::symlink("/nonexistent/build", modules_dir.join("build")).expect("symlink");

    let bin_dir = dir.join("bin");
    fs::create_dir_all(&bin_dir).expect("mkdir bin");
    // apid and routerd too: machined carries them, so the root must not.
    for name in ["machined", "apid", "routerd", "installer"] {
        fs::write(bin_dir.join(name), format!("fake {name} binary\n")).expect("write binary");
    }
    // What must never reach the image, even if it sits in the bin dir.
    for name in ["sh", "busybox", "bash"] {
        fs::write(bin_dir.join(name), b"a shell\n").expect("write binary");
    }
    Inputs {
        vmlinuz,
        modules_dir,
        bin_dir,
    }
}

/// Moves every input file's mtime, so a build that leaked host
/// timestamps would differ.
fn touch_all(dir: &Path, when: SystemTime) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let file_type = entry.file_type().expect("file type");
        if file_type.is_dir() {
            touch_all(&entry.path(), when);
        } else if file_type.is_file() {
            File::options()
                .write(true)
                .open(entry.path())
                .expect("open")
                .set_modified(when)
                .expect("set mtime");
        }
    }
}

fn build_into(output: &Path, inputs: &Inputs) -> manifest::Manifest {
    build::build(&BuildInputs {
        output: output.to_path_buf(),
        kernel: KernelSource::Files {
            vmlinuz: inputs.vmlinuz.clone(),
            modules_dir: inputs.modules_dir.clone(),
        },
        bin_dir: inputs.bin_dir.clone(),
        source_date_epoch: EPOCH,
        version: "0.0.0-test".to_owned(),
        trusted_keys: vec![(
            "release".to_owned(),
            b"-----BEGIN PUBLIC KEY-----\n".to_vec(),
        )],
        fs_templates: None,
    })
    .expect("the image builds")
}

fn initramfs(output: &Path) -> BTreeMap<String, ReadEntry> {
    let compressed = std::fs::read(output.join(build::INITRAMFS)).expect("reading the initramfs");
    // One zstd frame, as the kernel unpacks it (upstream's historical name
    // `initramfs.xz` notwithstanding).
    assert_eq!(&compressed[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let cpio = zstd::stream::decode_all(compressed.as_slice()).expect("zstd -d");
    cpio::read_newc(&cpio)
        .expect("the initramfs is a newc archive")
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect()
}

#[test]
fn two_builds_are_identical_and_hold_what_they_should() {
    require("mksquashfs", "-version", "squashfs-tools");
    require("unsquashfs", "-version", "squashfs-tools");

    let work = tempfile::tempdir().expect("tempdir");
    let inputs = fake_inputs(&work.path().join("inputs"));
    let (out1, out2) = (work.path().join("out1"), work.path().join("out2"));

    let first = build_into(&out1, &inputs);
    touch_all(
        &work.path().join("inputs"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890),
    );
    let second = build_into(&out2, &inputs);

    // Identical manifests and identical bytes, artifact by artifact.
    assert_eq!(first, second);
    assert_eq!(
        fs::read(out1.join(manifest::FILE_NAME)).expect("manifest 1"),
        fs::read(out2.join(manifest::FILE_NAME)).expect("manifest 2"),
    );
    for name in [build::VMLINUZ, build::INITRAMFS, build::ROOTFS] {
        let a = manifest::artifact(&out1.join(name)).expect("hash");
        let b = manifest::artifact(&out2.join(name)).expect("hash");
        assert_eq!(a, b, "{name} differs between two builds");
        assert_eq!(
            first.artifacts.get(name),
            Some(&a),
            "{name} in the manifest"
        );
    }
    assert_eq!(first.kernel_version, KERNEL_VERSION);
    assert_eq!(first.source_date_epoch, EPOCH);
    assert_eq!(first.rootfs_binaries, ["installer"]);
    assert_eq!(
        fs::read(out1.join(build::VMLINUZ)).expect("vmlinuz"),
        b"not really a kernel\n"
    );

    // lz4 in 32 KiB blocks: what the guest decompresses fastest as it
    // starts the daemons (see squashfs::mksquashfs).
    let superblock = Command::new("unsquashfs")
        .arg("-s")
        .arg(out1.join(build::ROOTFS))
        .output()
        .expect("running unsquashfs -s");
    let superblock = String::from_utf8_lossy(&superblock.stdout);
    assert!(superblock.contains("Compression lz4"), "{superblock}");
    assert!(superblock.contains("Block size 32768"), "{superblock}");

    // The root: the installer, mount points, no shell of any kind, and no
    // daemon (/init carries them).
    let listing = Command::new("unsquashfs")
        .args(["-lls", "-UTC"])
        .arg(out1.join(build::ROOTFS))
        .output()
        .expect("running unsquashfs");
    assert!(
        listing.status.success(),
        "unsquashfs: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.strip_prefix("squashfs-root"))
        .collect();
    for want in [
        "/usr/bin/installer",
        "/etc/os-release",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/usr/etc",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/system",
        "/var",
    ] {
        assert!(
            paths.contains(&want),
            "{want} missing from the root:\n{listing}"
        );
    }
    for banned in ["sh", "bash", "busybox", "machined", "apid", "routerd"] {
        assert!(
            !paths.iter().any(|p| p.rsplit('/').next() == Some(banned)),
            "{banned} must not be in the root:\n{listing}"
        );
    }
    assert!(!paths.contains(&"/bin/sh"), "{listing}");
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.contains(" root/root "), "not owned by root: {line}");
        assert!(
            line.contains("2023-11-14 22:13"),
            "timestamp not pinned: {line}"
        );
    }

    // The initramfs: /init, the modules and their order, the root image.
    let entries = initramfs(&out1);
    let init = entries.get("init").expect("/init in the initramfs");
    assert_eq!(init.mode, cpio::S_IFREG | 0o755);
    assert_eq!(init.data, b"fake machined binary\n");
    let console = entries.get("dev/console").expect("/dev/console");
    assert_eq!((console.file_type(), console.rdev), (cpio::S_IFCHR, (5, 1)));
    // modules.order, then modules.network (the NIC driver) and
    // modules.deferred (the filesystems' modules), both loaded later,
    // together are every module in load order.
    let listed_in = |name: &str| -> Vec<String> {
        let file = entries.get(name).unwrap_or_else(|| panic!("/{name}"));
        std::str::from_utf8(&file.data)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let expected: Vec<String> = MODULES.iter().map(|m| installed_file_name(m)).collect();
    let early = listed_in("modules.order");
    let network = listed_in("modules.network");
    let deferred = listed_in("modules.deferred");
    let listed = |list: &[&str]| -> Vec<String> {
        MODULES
            .iter()
            .filter(|m| list.contains(m))
            .map(|m| installed_file_name(m))
            .collect()
    };
    assert_eq!(network, listed(NETWORK), "modules.network");
    assert_eq!(deferred, listed(DEFERRED), "modules.deferred");
    assert!(
        !early
            .iter()
            .any(|m| network.contains(m) || deferred.contains(m))
    );
    let mut all = early.clone();
    all.extend(network);
    all.extend(deferred);
    let mut sorted_all = all.clone();
    sorted_all.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_all, sorted_expected, "every module is listed once");
    assert_eq!(
        early,
        expected
            .iter()
            .filter(|m| !all[early.len()..].contains(m))
            .cloned()
            .collect::<Vec<_>>(),
        "modules.order is the load order"
    );
    assert_eq!(first.modules, expected);
    for (file, module) in expected.iter().zip(MODULES) {
        let entry = entries
            .get(&format!("lib/modules/{file}"))
            .unwrap_or_else(|| panic!("lib/modules/{file} missing"));
        assert_eq!(entry.data, format!("fake module {module}\n").as_bytes());
    }
    assert!(!entries.keys().any(|p| p.contains("unwanted")));
    assert_eq!(
        entries.get("rootfs.sqsh").expect("rootfs.sqsh").data,
        fs::read(out1.join(build::ROOTFS)).expect("rootfs")
    );
    for e in entries.values() {
        assert_eq!(
            (e.uid, e.gid, u64::from(e.mtime)),
            (0, 0, EPOCH),
            "{}",
            e.path
        );
    }
    let inodes: Vec<u32> = {
        let mut by_position: Vec<&ReadEntry> = entries.values().collect();
        by_position.sort_by_key(|e| e.ino);
        by_position.iter().map(|e| e.ino).collect()
    };
    assert_eq!(inodes, (1..=entries.len() as u32).collect::<Vec<_>>());
}
