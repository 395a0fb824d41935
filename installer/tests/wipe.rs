//! `installer::wipe` against real tools and, as root with loop devices
//! (CI runs as root), the kernel: `sgdisk -v` finds a table with a dropped
//! partition sound; a mounted partition, or its whole disk, cannot be
//! opened for wiping; a fast wipe leaves `blkid` nothing to find; a dropped
//! partition's device node goes at once.
//!
//! Needs gdisk, xfsprogs and util-linux (`scripts/setup` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use installer::layout;
use installer::target::Disk;
use installer::wipe::{self, Method};

const MIB: u64 = 1024 * 1024;

fn sbin(tool: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed: installer/tests/wipe.rs needs gdisk, xfsprogs \
                 and util-linux; scripts/setup installs them"
            )
        })
}

fn output(tool: &str, args: &[&str]) -> Output {
    Command::new(sbin(tool))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

/// Runs a tool that must succeed; returns its stdout.
fn run(tool: &str, args: &[&str]) -> String {
    let out = output(tool, args);
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image file laid out as an installed disk: EFI, META, STATE,
/// EPHEMERAL.
fn laid_out(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let size = layout::minimum_disk_bytes() + 64 * MIB;
    let disk = Disk::create_image(&path, size).expect("image");
    let plan = layout::plan(size, &mut layout::seeded_guids(11)).expect("plan");
    layout::write_gpt_to(&disk, &plan).expect("gpt");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn sgdisk_finds_the_table_sound_after_a_partition_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = laid_out(dir.path());
    let disk = Disk::open_any(&image).expect("open");
    wipe::drop_partition(&disk, 3).expect("drop STATE");
    let verify = run("sgdisk", &["-v", s(&image)]);
    assert!(verify.contains("No problems found"), "{verify}");
    let printed = run("sgdisk", &["-p", s(&image)]);
    for kept in ["EFI", "META", "EPHEMERAL"] {
        assert!(printed.contains(kept), "{kept} is gone:\n{printed}");
    }
    assert!(
        !printed.contains("STATE"),
        "STATE is still listed:\n{printed}"
    );
}

/// A loop device over an image with its partitions, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    fn attach(image: &Path) -> Loop {
        let dev = run("losetup", &["--find", "--show", "--partscan", s(image)]);
        let dev = Loop(PathBuf::from(dev.trim()));
        // A kernel built without GPT support (such as this VM's) finds
        // no partitions itself: partx reads the table and adds them
        // (BLKPG_ADD_PARTITION).
        if !dev.kernel_has(1) {
            run("partx", &["--add", s(&dev.0)]);
        }
        dev
    }

    fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.0.display()))
    }

    /// The kernel's own view: the partition's sysfs directory.
    fn kernel_has(&self, n: u32) -> bool {
        let name = self.0.file_name().and_then(|n| n.to_str()).expect("name");
        Path::new("/sys/block")
            .join(name)
            .join(format!("{name}p{n}"))
            .exists()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(sbin("losetup"))
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// A mount, unmounted when dropped (a failed assertion included).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn the_kernel_guards_mounted_devices_and_forgets_a_dropped_partition() {
    if !(rustix::process::geteuid().is_root() && Path::new("/dev/loop-control").exists()) {
        eprintln!("not root, or no loop devices: the kernel's part was skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = laid_out(dir.path());
    let dev = Loop::attach(&image);
    let state = dev.partition(3);
    // udev may not run here: wait for the node devtmpfs makes.
    for _ in 0..50 {
        if state.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run("mkfs.xfs", &["-q", "-f", "-L", "STATE", s(&state)]);
    let found = run("blkid", &["-p", "-o", "value", "-s", "LABEL", s(&state)]);
    assert_eq!(found.trim(), "STATE");

    let at = dir.path().join("mnt");
    std::fs::create_dir(&at).expect("mkdir");
    {
        let status = Command::new("mount")
            .arg(&state)
            .arg(&at)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting {}", state.display());
        let _mounted = Mounted(at.clone());
        for busy in [&state, &dev.0] {
            let err = Disk::open_any(busy).expect_err("in use");
            assert!(err.to_string().contains("in use"), "{err}");
        }
    }

    let part = Disk::open_any(&state).expect("open STATE");
    wipe::wipe(&part, Method::Fast).expect("wipe");
    drop(part);
    // blkid still reports the partition's entry in the table, but no
    // filesystem: no TYPE, no LABEL.
    let probed = output("blkid", &["-p", "-o", "export", s(&state)]);
    let probed = String::from_utf8_lossy(&probed.stdout);
    assert!(
        !probed
            .lines()
            .any(|l| l.starts_with("TYPE=") || l.starts_with("LABEL=")),
        "blkid still finds a filesystem: {probed}"
    );
    assert!(probed.contains("PART_ENTRY_NAME=STATE"), "{probed}");

    assert!(dev.kernel_has(3));
    let disk = Disk::open_any(&dev.0).expect("open the disk");
    wipe::drop_partition(&disk, 3).expect("drop STATE");
    drop(disk);
    assert!(!dev.kernel_has(3), "the kernel still lists partition 3");
    assert!(dev.kernel_has(4), "partition 4 went too");
    let verify = run("sgdisk", &["-v", s(&dev.0)]);
    assert!(verify.contains("No problems found"), "{verify}");
}
