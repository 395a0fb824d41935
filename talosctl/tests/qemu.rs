//! The real image under QEMU (TCG): `talosctl cluster create --provisioner
//! qemu` boots `_out/` (made by `scripts/image`), and the real talosctl
//! drives the nodes through their real apid, first in maintenance mode,
//! then over mTLS.
//!
//! These tests boot virtual machines (about a minute each under TCG) and
//! need root-free QEMU, the boot image and `mkfs.xfs`, so they are
//! `#[ignore]`d for a plain `cargo test`; `scripts/test` builds the image
//! and runs them with `--ignored --test-threads 1`.
//! `TALOS_IMAGE_DIR` overrides where the image is looked for.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn talosctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_talosctl"))
}

fn image_dir() -> PathBuf {
    let dir = std::env::var_os("TALOS_IMAGE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../_out"),
        PathBuf::from,
    );
    for artifact in ["vmlinuz", "initramfs.xz", "rootfs.sqsh", "manifest.json"] {
        assert!(
            dir.join(artifact).exists(),
            "{} has no {artifact}: build the image with scripts/image",
            dir.display()
        );
    }
    dir
}

struct Run {
    out: String,
    err: String,
    code: i32,
}

fn run(talosconfig: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(talosctl())
        .arg("--talosconfig")
        .arg(talosconfig)
        .args(args)
        .env_remove("TALOSCONFIG")
        .output()
        .expect("talosctl runs");
    Run {
        out: String::from_utf8_lossy(&stdout).into_owned(),
        err: String::from_utf8_lossy(&stderr).into_owned(),
        code: status.code().unwrap_or(-1),
    }
}

fn ok(talosconfig: &Path, args: &[&str]) -> String {
    let r = run(talosconfig, args);
    assert_eq!(
        r.code, 0,
        "talosctl {args:?} failed:\nstdout: {}\nstderr: {}",
        r.out, r.err
    );
    r.out
}

/// Retries `args` until it succeeds and `accept` likes its output.
fn eventually(
    talosconfig: &Path,
    args: &[&str],
    timeout: Duration,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = run(talosconfig, args);
        if r.code == 0 && accept(&r.out) {
            return r.out;
        }
        assert!(
            Instant::now() < deadline,
            "talosctl {args:?} did not succeed within {timeout:?}; last:\nstdout: {}\nstderr: {}",
            r.out,
            r.err
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A QEMU cluster destroyed when the test ends, pass or fail.
struct Cluster {
    dir: tempfile::TempDir,
    name: String,
}

impl Cluster {
    fn create(name: &str, workers: u32, extra: &[&str]) -> (Cluster, Run) {
        let image = image_dir();
        let c = Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            name: name.to_owned(),
        };
        let state = c.state();
        let workers = workers.to_string();
        let mut args = vec![
            "cluster",
            "create",
            "--provisioner",
            "qemu",
            "--name",
            name,
            "--controlplanes",
            "1",
            "--workers",
            &workers,
            "--state",
            state.to_str().expect("utf8"),
            "--image-dir",
            image.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        let r = run(&c.talosconfig(), &args);
        assert_eq!(r.code, 0, "cluster create failed:\n{}\n{}", r.out, r.err);
        (c, r)
    }

    fn talosconfig(&self) -> PathBuf {
        self.dir.path().join("talosconfig")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("clusters")
    }

    fn cluster_dir(&self) -> PathBuf {
        self.state().join(&self.name)
    }

    /// The host endpoint (`127.0.0.1:port`) of a node, from cluster.yaml.
    fn endpoint(&self, node: &str) -> String {
        let text =
            std::fs::read_to_string(self.cluster_dir().join("cluster.yaml")).expect("cluster.yaml");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
        let nodes = doc["nodes"].as_sequence().expect("nodes");
        let n = nodes
            .iter()
            .find(|n| n["name"].as_str() == Some(node))
            .unwrap_or_else(|| panic!("{node} not in cluster.yaml:\n{text}"));
        let port = n["api_port"].as_u64().expect("api_port");
        format!("127.0.0.1:{port}")
    }

    fn destroy(&self) -> Run {
        run(
            &self.talosconfig(),
            &[
                "cluster",
                "destroy",
                "--name",
                &self.name,
                "--state",
                self.state().to_str().expect("utf8"),
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.cluster_dir().exists() {
            let r = self.destroy();
            if r.code != 0 && !std::thread::panicking() {
                panic!("cluster destroy failed: {}", r.err);
            }
        }
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

fn services_healthy(out: &str, node: &str, expected: &[&str]) -> bool {
    expected.iter().all(|svc| {
        out.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 4
                && cols[0] == node
                && cols[1] == *svc
                && cols[2] == "Running"
                && cols[3] == "OK"
        })
    })
}

#[test]
#[ignore = "boots QEMU; scripts/test runs it after scripts/image"]
fn maintenance_apply_mtls_read_only_root_and_reboot() {
    let (c, created) = Cluster::create("e2e", 1, &["--skip-apply"]);
    let tc = c.talosconfig();
    let cp_name = "e2e-controlplane-1";
    let worker_name = "e2e-worker-1";
    let cp = c.endpoint(cp_name);
    let worker = c.endpoint(worker_name);
    assert!(
        created
            .err
            .contains(&format!("{cp_name} is in maintenance mode")),
        "{}",
        created.err
    );

    // Maintenance mode: only --insecure works, and Version answers.
    for endpoint in [&cp, &worker] {
        // --insecure talks to the node itself: -n is the address.
        let v = ok(&tc, &["-n", endpoint, "version", "--insecure"]);
        assert!(v.contains("Server:") && v.contains("Tag:"), "{v}");
    }
    let r = run(&tc, &["-e", &cp, "-n", "127.0.0.1", "version"]);
    assert_ne!(r.code, 0, "mTLS must not work before a config:\n{}", r.out);

    // Apply the generated configs through the maintenance API.
    for (endpoint, name) in [(&cp, cp_name), (&worker, worker_name)] {
        let file = c.cluster_dir().join(format!("{name}.yaml"));
        let r = run(
            &tc,
            &[
                "-n",
                endpoint,
                "apply-config",
                "--insecure",
                "-f",
                file.to_str().expect("utf8"),
            ],
        );
        assert_eq!(r.code, 0, "apply-config {name}: {}{}", r.out, r.err);
    }

    // mTLS from here on; the worker through the control plane's apid over
    // the inter-node network.
    let (cp_ip, worker_ip) = ("10.5.0.2", "10.5.0.3");
    let long = Duration::from_secs(300);
    eventually(&tc, &["-n", cp_ip, "version"], long, |v| {
        v.contains(&format!("NODE:        {cp_ip}"))
    });
    let cp_services = ["apid", "routerd", "trustd", "networkd", "timed", "udevd"];
    let worker_services = ["apid", "routerd", "networkd", "timed", "udevd"];
    eventually(&tc, &["-n", cp_ip, "services"], long, |s| {
        services_healthy(s, cp_ip, &cp_services)
    });
    let s = eventually(&tc, &["-n", worker_ip, "services"], long, |s| {
        services_healthy(s, worker_ip, &worker_services)
    });
    assert!(
        !s.lines().any(|l| l.contains("trustd")),
        "workers run no trustd:\n{s}"
    );

    let logs = ok(&tc, &["-n", cp_ip, "logs", "machined"]);
    assert!(logs.contains("machined ready"), "{logs}");
    let dmesg = ok(&tc, &["-n", cp_ip, "dmesg"]);
    assert!(
        dmesg.contains("Linux version") && dmesg.contains("root switched to the squashfs"),
        "{dmesg}"
    );
    assert!(
        dmesg.contains("STATE /dev/vda mounted on /system/state"),
        "{dmesg}"
    );
    let m = ok(&tc, &["-n", cp_ip, "memory"]);
    assert!(
        m.lines().nth(1).is_some_and(|l| l.starts_with(cp_ip)),
        "{m}"
    );
    let boot_id = ok(
        &tc,
        &["-n", cp_ip, "read", "/proc/sys/kernel/random/boot_id"],
    );
    assert_eq!(boot_id.trim().len(), 36, "{boot_id}");

    // The root is the read-only squashfs; every writable mount is one of
    // ours, none of them over /usr or /etc as a whole.
    let mounts = ok(&tc, &["-n", cp_ip, "read", "/proc/self/mounts"]);
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no / in\n{mounts}"));
    let fields: Vec<&str> = root.split_whitespace().collect();
    assert_eq!(fields[2], "squashfs", "{root}");
    assert!(fields[3].split(',').any(|o| o == "ro"), "{root}");
    let writable_allowed = [
        "/dev",
        "/dev/pts",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/system",
        "/system/state",
        "/etc/hosts",
        "/etc/resolv.conf",
    ];
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (target, options) = (f[1], f[3]);
        if options.split(',').any(|o| o == "rw") {
            assert!(
                writable_allowed.contains(&target)
                    || target.starts_with("/sys/")
                    || target.starts_with("/proc/"),
                "unexpected writable mount {line}"
            );
        }
    }
    // No shell anywhere in the image.
    let listing = ok(&tc, &["-n", cp_ip, "list", "/usr/bin"]);
    assert!(listing.lines().any(|l| l == "apid"), "{listing}");
    for forbidden in ["sh", "bash", "busybox", "ls", "cat"] {
        assert!(!listing.lines().any(|l| l == forbidden), "{listing}");
    }
    let r = run(&tc, &["-n", cp_ip, "list", "/bin"]);
    assert_ne!(r.code, 0, "/bin exists:\n{}", r.out);
    let unsquash = Command::new("unsquashfs")
        .args(["-l", "-d", ""])
        .arg(image_dir().join("rootfs.sqsh"))
        .output()
        .expect("unsquashfs (squashfs-tools) runs");
    assert!(unsquash.status.success(), "{unsquash:?}");
    let files = String::from_utf8_lossy(&unsquash.stdout);
    assert!(files.lines().any(|l| l == "/usr/bin/apid"), "{files}");
    for bad in ["/bin/sh", "/usr/bin/sh", "/bin/busybox", "/usr/bin/busybox"] {
        assert!(!files.lines().any(|l| l == bad), "{bad} in\n{files}");
    }

    // Reboot through the API: the node comes back with its config (from
    // STATE) and a new boot id.
    let r = run(&tc, &["-n", cp_ip, "reboot"]);
    assert_eq!(r.code, 0, "reboot: {}{}", r.out, r.err);
    let after = eventually(
        &tc,
        &["-n", cp_ip, "read", "/proc/sys/kernel/random/boot_id"],
        long,
        |id| id.trim().len() == 36 && id != boot_id,
    );
    assert_ne!(after, boot_id);

    let r = c.destroy();
    assert_eq!(r.code, 0, "destroy: {}", r.err);
    let dir = c.cluster_dir();
    assert!(!dir.exists(), "{} is left", dir.display());
    let left = processes_mentioning(c.dir.path().to_str().expect("utf8"));
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
#[ignore = "boots QEMU; scripts/test runs it after scripts/image"]
fn create_applies_configs_waits_for_readiness_and_merges_the_context() {
    let (c, created) = Cluster::create("auto", 0, &[]);
    assert!(
        created.err.contains("merging talosconfig into") && created.out.contains("next:"),
        "{}\n{}",
        created.out,
        created.err
    );
    let tc = c.talosconfig();
    // The merged context reaches the node with no -e or -n.
    let v = ok(&tc, &["--context", "auto", "version"]);
    assert!(v.contains("NODE:        10.5.0.2"), "{v}");
    let s = ok(&tc, &["--context", "auto", "services"]);
    assert!(
        services_healthy(
            &s,
            "10.5.0.2",
            &["apid", "routerd", "trustd", "networkd", "timed", "udevd"]
        ),
        "{s}"
    );
    let shown = ok(
        &tc,
        &[
            "cluster",
            "show",
            "--name",
            "auto",
            "--state",
            c.state().to_str().expect("utf8"),
        ],
    );
    assert!(
        shown.contains("auto-controlplane-1") && shown.contains("running"),
        "{shown}"
    );
    let r = c.destroy();
    assert_eq!(r.code, 0, "destroy: {}", r.err);
    let left = processes_mentioning(c.dir.path().to_str().expect("utf8"));
    assert!(left.is_empty(), "still running: {left:?}");
}

/// A QEMU process killed when the test ends.
struct Vm(std::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
#[ignore = "boots QEMU with OVMF; scripts/test runs it after scripts/image"]
fn the_disk_image_boots_through_systemd_boot_and_keeps_its_config() {
    let image = image_dir();
    let raw = image.join("metal-amd64.raw");
    assert!(
        raw.exists(),
        "{} missing: scripts/image builds it",
        raw.display()
    );
    let work = tempfile::tempdir().expect("tempdir");
    // The test writes to an overlay, never to the built image.
    let disk = work.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&disk)
        .status()
        .expect("qemu-img runs");
    assert!(st.success());
    let vars = work.path().join("OVMF_VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("OVMF (package ovmf)");
    let port = free_port();
    let console = work.path().join("console.log");
    let _vm = Vm(Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "768", "-smp", "1"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args([
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", disk.display()))
        .arg("-netdev")
        .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:50000"))
        .args([
            "-device",
            "virtio-net-pci,netdev=net0",
            "-device",
            "virtio-rng-pci",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup installs it)"));
    let endpoint = format!("127.0.0.1:{port}");
    let none = work.path().join("none");
    let long = Duration::from_secs(300);

    // Maintenance mode from the disk: firmware, systemd-boot, slot A.
    eventually(
        &none,
        &["-n", &endpoint, "version", "--insecure"],
        long,
        |v| v.contains("Server:"),
    );

    // A config through the maintenance API lands on the disk's STATE.
    let generated = work.path().join("gen");
    ok(
        &none,
        &[
            "gen",
            "config",
            "disk",
            "https://10.0.2.15:6443",
            "--output-dir",
            generated.to_str().expect("utf8"),
        ],
    );
    let tc = generated.join("talosconfig");
    ok(
        &tc,
        &[
            "-n",
            &endpoint,
            "apply-config",
            "--insecure",
            "-f",
            generated.join("controlplane.yaml").to_str().expect("utf8"),
        ],
    );
    let mtls = ["-e", &endpoint, "-n", "127.0.0.1"];
    let with = |rest: &[&'static str]| -> Vec<String> {
        mtls.iter()
            .map(|s| (*s).to_owned())
            .chain(rest.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    let version = with(&["version"]);
    eventually(&tc, &args(&version), long, |v| {
        v.contains("Enabled:     RBAC")
    });

    let cmdline = ok(&tc, &args(&with(&["read", "/proc/cmdline"])));
    assert!(
        cmdline.contains("talos.slot=A") && cmdline.contains("init_on_free=1"),
        "{cmdline}"
    );
    let mounts = ok(&tc, &args(&with(&["read", "/proc/self/mounts"])));
    let mounted = |target: &str| {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(target))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_owned(), f[2].to_owned())
            })
    };
    assert_eq!(
        mounted("/system/state"),
        Some(("/dev/vda3".to_owned(), "xfs".to_owned())),
        "{mounts}"
    );
    assert_eq!(
        mounted("/var"),
        Some(("/dev/vda4".to_owned(), "xfs".to_owned())),
        "{mounts}"
    );
    let boot_id = ok(
        &tc,
        &args(&with(&["read", "/proc/sys/kernel/random/boot_id"])),
    );

    // Service logs persist on EPHEMERAL.
    let logs = ok(&tc, &args(&with(&["list", "/var/log"])));
    for file in ["machined.log", "apid.log"] {
        assert!(logs.lines().any(|l| l == file), "{file} missing:\n{logs}");
    }

    // A fresh install has one slot: rollback is refused, and nothing
    // reboots.
    let r = run(&tc, &args(&with(&["rollback"])));
    assert_ne!(r.code, 0, "rollback with one slot: {}", r.out);
    assert!(
        r.err.contains("no other installation to roll back to"),
        "{}",
        r.err
    );
    assert_eq!(
        ok(
            &tc,
            &args(&with(&["read", "/proc/sys/kernel/random/boot_id"]))
        ),
        boot_id
    );

    // After a reboot the node comes back from the disk with its config:
    // mTLS works without applying anything again.
    let r = run(&tc, &args(&with(&["reboot"])));
    assert_eq!(r.code, 0, "reboot: {}{}", r.out, r.err);
    let read_id = with(&["read", "/proc/sys/kernel/random/boot_id"]);
    let after = eventually(&tc, &args(&read_id), long, |id| {
        id.trim().len() == 36 && id != boot_id
    });
    assert_ne!(after, boot_id);
}
