//! `xfs_uuid::set_uuid` against real xfs: a filesystem made by `mkfs.xfs`
//! is given a new UUID, then checked by xfsprogs (`xfs_db` reads the new
//! UUID, `xfs_repair -n` finds nothing wrong: superblocks, metadata and
//! log). As root with loop devices (CI runs as root), the kernel mounts it
//! too, writes its own log records (with CRCs), and mounts it again after
//! a second UUID.
//!
//! Needs xfsprogs (`scripts/setup` installs it).

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use installer::xfs_uuid;

fn sbin(tool: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed: installer/tests/xfs_uuid.rs needs xfsprogs \
                 (apt-get install xfsprogs); scripts/setup installs it"
            )
        })
}

/// Runs a command; panics with its output when it fails. Returns stdout.
fn run(program: &Path, args: &[&str], file: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "`{} {} {}` failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn uuid_of(image: &Path) -> uuid::Uuid {
    let mut sb = [0u8; 48];
    File::open(image)
        .and_then(|mut f| f.read_exact(&mut sb))
        .expect("reading the superblock");
    uuid::Uuid::from_slice(&sb[32..48]).expect("16 bytes")
}

fn set(image: &Path, uuid: uuid::Uuid) -> xfs_uuid::UuidChange {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .expect("open");
    xfs_uuid::set_uuid(&mut f, *uuid.as_bytes()).expect("set_uuid")
}

/// xfsprogs agrees: the UUID reads back and the filesystem is consistent.
fn xfsprogs_check(image: &Path, uuid: uuid::Uuid) {
    let printed = run(&sbin("xfs_db"), &["-r", "-c", "uuid"], image);
    assert_eq!(printed.trim(), format!("UUID = {uuid}"), "xfs_db");
    run(&sbin("xfs_repair"), &["-n"], image);
}

/// Loop mounts need root and the loop driver; as root (CI) with loop
/// devices, the kernel's part runs and must pass.
fn loop_mounts_possible() -> bool {
    rustix::process::geteuid().is_root() && Path::new("/dev/loop-control").exists()
}

/// A loop mount, unmounted when dropped (a failed assertion included).
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.0).status();
        if !std::thread::panicking() {
            assert!(
                status.is_ok_and(|s| s.success()),
                "unmounting {} failed",
                self.0.display()
            );
        }
    }
}

fn mount<'a>(image: &Path, at: &'a Path) -> Mounted<'a> {
    let status = Command::new("mount")
        .args(["-t", "xfs", "-o", "loop"])
        .arg(image)
        .arg(at)
        .status()
        .expect("mount");
    assert!(status.success(), "mounting {} failed", image.display());
    Mounted(at)
}

#[test]
fn a_real_xfs_takes_a_new_uuid_that_xfsprogs_and_the_kernel_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("state.xfs");
    File::create(&image)
        .and_then(|f| f.set_len(300 * 1024 * 1024))
        .expect("image file");
    run(&sbin("mkfs.xfs"), &["-q", "-f", "-L", "STATE"], &image);
    let made = uuid_of(&image);

    let first = uuid::Uuid::new_v4();
    let change = set(&image, first);
    assert_eq!(change.old, *made.as_bytes());
    assert!(
        change.superblocks >= 1 && change.log_records >= 1,
        "{change:?}"
    );
    assert_eq!(uuid_of(&image), first);
    xfsprogs_check(&image, first);

    if !loop_mounts_possible() {
        eprintln!("not root, or no loop devices: the kernel's mounts were skipped");
        return;
    }
    let at = dir.path().join("mnt");
    std::fs::create_dir(&at).expect("mkdir");
    {
        let _mounted = mount(&image, &at);
        std::fs::write(at.join("config.yaml"), "kept\n").expect("write");
    }

    // The log now holds the kernel's records, with CRCs.
    let second = uuid::Uuid::new_v4();
    let change = set(&image, second);
    assert_eq!(change.old, *first.as_bytes());
    xfsprogs_check(&image, second);
    let _mounted = mount(&image, &at);
    let kept = std::fs::read_to_string(at.join("config.yaml")).expect("read back");
    assert_eq!(kept, "kept\n");
}

fn mkfs_with_uuid(dir: &Path, name: &str, uuid: &str) -> PathBuf {
    let image = dir.join(name);
    File::create(&image)
        .and_then(|f| f.set_len(300 * 1024 * 1024))
        .expect("image file");
    run(
        &sbin("mkfs.xfs"),
        &["-q", "-f", "-L", "STATE", "-m", &format!("uuid={uuid}")],
        &image,
    );
    image
}

fn set_times(image: &Path, seconds: i64) -> Result<u32, xfs_uuid::XfsUuidError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .expect("open");
    xfs_uuid::set_inode_times(&mut f, seconds)
}

#[test]
fn two_filesystems_made_apart_are_the_same_bytes_once_their_times_are_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uuid = "0c0ffee0-1234-4abc-8def-000000000001";
    let first = mkfs_with_uuid(dir.path(), "a.xfs", uuid);
    // mkfs.xfs stamps the time in seconds and nanoseconds: a second apart,
    // the two differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = mkfs_with_uuid(dir.path(), "b.xfs", uuid);
    let read = |p: &Path| std::fs::read(p).expect("read");
    assert_ne!(read(&first), read(&second), "mkfs.xfs made identical bytes");

    // 2023-11-14T22:13:20Z
    let epoch = 1_700_000_000;
    assert_eq!(set_times(&first, epoch).expect("set"), 3);
    assert_eq!(set_times(&second, epoch).expect("set"), 3);
    assert!(
        read(&first) == read(&second),
        "the filesystems still differ"
    );
    run(&sbin("xfs_repair"), &["-n"], &first);
    // xfs_db prints times in the local zone.
    let printed = Command::new(sbin("xfs_db"))
        .env("TZ", "UTC")
        .args([
            "-r",
            "-c",
            "inode 128",
            "-c",
            "p core.mtime.sec v3.crtime.sec",
        ])
        .arg(&first)
        .output()
        .expect("xfs_db");
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.matches("Nov 14 22:13:20 2023").count() == 2,
        "{printed}"
    );

    // An inode that fails its CRC is refused, and nothing is written.
    let mut bytes = read(&second);
    bytes[65536 + 200] ^= 0xff;
    std::fs::write(&second, &bytes).expect("damage");
    let err = set_times(&second, 0).expect_err("damaged inode");
    assert!(err.to_string().contains("inode 128 fails its CRC"), "{err}");
    assert!(read(&second) == bytes);
}
