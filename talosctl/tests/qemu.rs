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

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, ok, patch_live, run, talosctl};
use std::time::{Duration, Instant};

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

    // Apply the generated configs through the maintenance API, pinned by
    // the fingerprint each node printed on its console.
    for (endpoint, name) in [(&cp, cp_name), (&worker, worker_name)] {
        let file = c.cluster_dir().join(format!("{name}.yaml"));
        let console_log = c.cluster_dir().join(name).join("console.log");
        let deadline = Instant::now() + Duration::from_secs(120);
        let fingerprint = loop {
            let console = std::fs::read_to_string(&console_log).unwrap_or_default();
            if let Some(rest) = console.split("--cert-fingerprint '").nth(1)
                && let Some((fingerprint, _)) = rest.split_once('\'')
            {
                break fingerprint.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{name} printed no certificate fingerprint:\n{console}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let apply = |pin: &str| {
            run(
                &tc,
                &[
                    "-n",
                    endpoint,
                    "apply-config",
                    "--insecure",
                    "--cert-fingerprint",
                    pin,
                    "-f",
                    file.to_str().expect("utf8"),
                ],
            )
        };
        let r = apply("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert!(
            r.code != 0
                && r.err
                    .contains("leaf peer certificate doesn't match the provided fingerprints"),
            "apply-config {name} with another key's fingerprint: {}{}",
            r.out,
            r.err
        );
        let r = apply(&fingerprint);
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
    // Its disk carries STATE, so every module loaded at boot, before the
    // services, and module loading is locked.
    assert!(
        dmesg.contains("deferred modules: 34 loaded, 0 failed; module loading locked"),
        "{dmesg}"
    );
    let modules = ok(&tc, &["-n", cp_ip, "read", "/proc/modules"]);
    for module in [
        "virtio_net",
        "8021q",
        "bridge",
        "wireguard",
        "virtio_blk",
        "squashfs",
        "xfs",
        "vfat",
        // The power button.
        "evdev",
        "button",
    ] {
        assert!(
            modules
                .lines()
                .any(|l| l.split_whitespace().next() == Some(module)),
            "{module} not loaded:\n{modules}"
        );
    }
    let locked = ok(
        &tc,
        &["-n", cp_ip, "read", "/proc/sys/kernel/modules_disabled"],
    );
    assert_eq!(locked.trim(), "1", "module loading is not locked");
    // Each service in its own control group, machined in the root one.
    let procs = ok(
        &tc,
        &[
            "-n",
            cp_ip,
            "read",
            "/sys/fs/cgroup/system/apid/cgroup.procs",
        ],
    );
    let apid_pid = procs.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        apid_pid.parse::<u32>().is_ok(),
        "no process in apid's group: {procs:?}"
    );
    let cmdline = ok(
        &tc,
        &["-n", cp_ip, "read", &format!("/proc/{apid_pid}/cmdline")],
    );
    assert!(cmdline.starts_with("apid\0"), "{cmdline:?}");
    let group = ok(
        &tc,
        &["-n", cp_ip, "read", &format!("/proc/{apid_pid}/cgroup")],
    );
    assert_eq!(group.trim(), "0::/system/apid");
    assert_eq!(
        ok(&tc, &["-n", cp_ip, "read", "/proc/1/cgroup"]).trim(),
        "0::/"
    );
    let memory = ok(
        &tc,
        &[
            "-n",
            cp_ip,
            "read",
            "/sys/fs/cgroup/system/apid/memory.current",
        ],
    );
    assert!(
        memory.trim().parse::<u64>().is_ok_and(|m| m > 0),
        "{memory:?}"
    );
    // Upstream's reservations and limits for apid: 16 MiB never
    // reclaimed, at most 128 MiB, the CPU weight of 500 millicores.
    for (file, value) in [
        ("memory.min", "16777216"),
        ("memory.max", "134217728"),
        ("cpu.weight", "20"),
    ] {
        let read = ok(
            &tc,
            &[
                "-n",
                cp_ip,
                "read",
                &format!("/sys/fs/cgroup/system/apid/{file}"),
            ],
        );
        assert_eq!(read.trim(), value, "{file}");
    }
    // The same through `talosctl cgroups`, as upstream's tree.
    let tree = ok(&tc, &["-n", cp_ip, "cgroups", "--preset", "memory"]);
    assert!(
        tree.lines().next().is_some_and(|l| l.starts_with("NAME")),
        "{tree}"
    );
    assert!(tree.lines().any(|l| l.contains("──system")), "{tree}");
    assert!(
        tree.lines()
            .any(|l| l.contains("──apid") && l.contains("iB")),
        "{tree}"
    );
    let procs = ok(&tc, &["-n", cp_ip, "cgroups", "--preset", "process"]);
    let apid_row: Vec<&str> = procs
        .lines()
        .find(|l| l.contains("──apid"))
        .unwrap_or_else(|| panic!("no apid group:\n{procs}"))
        .split_whitespace()
        .collect();
    // NAME PidsCurrent PidsPeak PidsMax Procs Threads Processes
    assert_eq!(apid_row.get(4), Some(&"1"), "{procs}");
    // Pressure: the kernel's PSI numbers for apid, and its reservation in
    // the memory preset.
    let psi = ok(&tc, &["-n", cp_ip, "cgroups", "--preset", "psi"]);
    let apid_psi: Vec<&str> = psi
        .lines()
        .find(|l| l.contains("──apid"))
        .unwrap_or_else(|| panic!("no apid group:\n{psi}"))
        .split_whitespace()
        .collect();
    // NAME MemCurrent (two words) MemPsiSome10 MemPsi10 CpuPsi10 IoPsi10
    assert!(
        apid_psi[3..].iter().all(|v| v.parse::<f64>().is_ok()),
        "{psi}"
    );
    assert!(
        tree.lines()
            .any(|l| l.contains("──apid") && l.contains("16 MiB") && l.contains("128 MiB")),
        "{tree}"
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
    // The root's only program is the installer: /init (machined) carries
    // the daemons, which run healthy above.
    let listing = ok(&tc, &["-n", cp_ip, "list", "/usr/bin"]);
    assert!(listing.lines().any(|l| l == "installer"), "{listing}");
    for forbidden in ["sh", "bash", "busybox", "ls", "cat", "apid"] {
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
    assert!(files.lines().any(|l| l == "/usr/bin/installer"), "{files}");
    for bad in [
        "/bin/sh",
        "/usr/bin/sh",
        "/bin/busybox",
        "/usr/bin/busybox",
        "/usr/bin/apid",
    ] {
        assert!(!files.lines().any(|l| l == bad), "{bad} in\n{files}");
    }

    // PacketCapture on metal, through the control plane: the worker's
    // inter-node link (eth1) carries the capture's own stream (apid to
    // apid, port 50000), so a capture filtered to that port has packets
    // within its duration. tcpdump compiles the filter and reads the file.
    let program = Command::new("tcpdump")
        .args(["-dd", "-y", "EN10MB", "tcp port 50000"])
        .output()
        .expect("tcpdump (Debian package tcpdump; scripts/setup installs it)");
    assert!(program.status.success(), "{program:?}");
    let program = String::from_utf8(program.stdout).expect("utf8");
    let file = c.dir.path().join("eth1.pcap");
    let file_arg = file.to_str().expect("utf8");
    ok(
        &tc,
        &[
            "-n",
            worker_ip,
            "pcap",
            "-i",
            "eth1",
            "--bpf-filter",
            &program,
            "-o",
            file_arg,
            "--duration",
            "5s",
        ],
    );
    let read = Command::new("tcpdump")
        .args(["-nn", "-r", file_arg])
        .output()
        .expect("tcpdump -r");
    assert!(read.status.success(), "{read:?}");
    let read = String::from_utf8_lossy(&read.stdout);
    assert!(read.lines().count() >= 2, "{read}");
    assert!(
        read.lines()
            .all(|l| l.contains(&format!("{worker_ip}.50000")) && l.contains("Flags [")),
        "{read}"
    );

    // VLAN 42 over the inter-node link, applied live: on the control plane
    // under eth1 by name, on the worker under the link its deviceSelector
    // picks (eth1's MAC prefix). The control plane then reaches the worker
    // at its VLAN address, which only tagged frames carry.
    let cp_patch = r#"{"machine": {"network": {"interfaces": [
        {"interface": "eth0", "dhcp": true},
        {"interface": "eth1", "addresses": ["10.5.0.2/24"],
         "vlans": [{"vlanId": 42, "addresses": ["10.42.0.2/24"]}]},
        {"interface": "dummy0", "dummy": true, "addresses": ["10.200.0.2/32"]},
        {"interface": "br0", "bridge": {"stp": {"enabled": true}}, "addresses": ["10.201.0.2/32"]},
        {"interface": "wg0", "addresses": ["10.6.0.2/24"],
         "wireguard": {"privateKey": "+Imsu8uaBOuiN0bzKw/IXsMdwmbImmfbTWB3iYZowF0=", "listenPort": 51820,
                       "peers": [{"publicKey": "Bfr7gkNPxLdMClxJW+IBHT4nxzFhR1kpEWMGmTxK/xw=",
                                  "endpoint": "10.5.0.3:51820", "allowedIPs": ["10.6.0.3/32"]}]}}]}}}"#;
    // The worker's end of the WireGuard tunnel (keys made for this test:
    // the control plane's public key is vDksHf+h...).
    let worker_patch = r#"{"machine": {"network": {"interfaces": [
        {"interface": "eth0", "dhcp": true},
        {"deviceSelector": {"hardwareAddr": "52:54:00:5b:*", "physical": true},
         "addresses": ["10.5.0.3/24"],
         "vlans": [{"vlanId": 42, "addresses": ["10.42.0.3/24"]}]},
        {"interface": "wg0", "addresses": ["10.6.0.3/24"],
         "wireguard": {"privateKey": "qLXky7BKTahxcxXdvCshBZluLeJXiL8sEXOAm6dt/GI=", "listenPort": 51820,
                       "peers": [{"publicKey": "vDksHf+h7BFVAY82ZvC6ZHbvvWvb51azOiwa1gH80A8=",
                                  "endpoint": "10.5.0.2:51820", "allowedIPs": ["10.6.0.2/32"],
                                  "persistentKeepaliveInterval": "5s"}]}}]}}}"#;
    for (node, patch) in [(cp_ip, cp_patch), (worker_ip, worker_patch)] {
        patch_live(&tc, node, patch);
    }
    eventually(
        &tc,
        &["-n", worker_ip, "get", "addresses"],
        Duration::from_secs(60),
        |a| a.contains("eth1.42/10.42.0.3/24") && a.contains("eth1/10.5.0.3/24"),
    );
    // And a dummy link and a bridge (with no ports) on the control plane,
    // made and addressed.
    eventually(
        &tc,
        &["-n", cp_ip, "get", "addresses"],
        Duration::from_secs(60),
        |a| {
            a.contains("dummy0/10.200.0.2/32")
                && a.contains("eth1.42/10.42.0.2/24")
                && a.contains("br0/10.201.0.2/32")
        },
    );
    let bridge = ok(&tc, &["-n", cp_ip, "get", "links", "br0", "-o", "yaml"]);
    assert!(bridge.contains("kind: bridge"), "{bridge}");
    let vlan = ok(
        &tc,
        &["-n", worker_ip, "get", "links", "eth1.42", "-o", "yaml"],
    );
    assert!(
        vlan.contains("kind: vlan") && vlan.contains("vlanID: 42"),
        "{vlan}"
    );
    // The worker's certificate gains its VLAN address (its addresses
    // changed), and the control plane forwards to it over VLAN 42.
    eventually(
        &tc,
        &["-n", "10.42.0.3", "version"],
        Duration::from_secs(120),
        |v| v.contains("NODE:        10.42.0.3"),
    );
    // And through the WireGuard tunnel, which only the keys open.
    let wg = ok(&tc, &["-n", cp_ip, "get", "links", "wg0", "-o", "yaml"]);
    assert!(wg.contains("kind: wireguard"), "{wg}");
    eventually(
        &tc,
        &["-n", "10.6.0.3", "version"],
        Duration::from_secs(120),
        |v| v.contains("NODE:        10.6.0.3"),
    );

    // Then the worker's inter-node link becomes the only member of an
    // active-backup bond, picked by a selector, and its address moves to
    // the bond: the control plane still reaches the worker there.
    let bond_patch = r#"{"machine": {"network": {"interfaces": [
        {"interface": "eth0", "dhcp": true},
        {"interface": "bond0", "addresses": ["10.5.0.3/24"],
         "bond": {"mode": "active-backup", "miimon": 100,
                  "deviceSelectors": [{"hardwareAddr": "52:54:00:5b:*", "physical": true}]}}]}}}"#;
    patch_live(&tc, worker_ip, bond_patch);
    eventually(
        &tc,
        &["-n", worker_ip, "get", "addresses"],
        Duration::from_secs(120),
        |a| a.contains("bond0/10.5.0.3/24") && !a.contains("eth1/10.5.0.3/24"),
    );
    let bond = ok(
        &tc,
        &["-n", worker_ip, "get", "links", "bond0", "-o", "yaml"],
    );
    assert!(bond.contains("kind: bond"), "{bond}");
    let member = ok(
        &tc,
        &["-n", worker_ip, "get", "links", "eth1", "-o", "yaml"],
    );
    assert!(member.contains("slaveKind: bond"), "{member}");
    let v = eventually(
        &tc,
        &["-n", worker_ip, "version"],
        Duration::from_secs(60),
        |v| v.contains(&format!("NODE:        {worker_ip}")),
    );
    assert!(v.contains("Tag:"), "{v}");
    // The bond's config has no VLAN: the worker's is deleted.
    eventually(
        &tc,
        &["-n", worker_ip, "get", "links"],
        Duration::from_secs(60),
        |l| l.contains("bond0") && !l.contains("eth1.42"),
    );

    // Kernel parameters: upstream's hardening defaults are set, and
    // `machine.sysctls` applies live; dropped, the value from before
    // comes back.
    let params = ok(&tc, &["-n", cp_ip, "get", "kernelparamstatus"]);
    assert!(
        params.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(3) == Some(&"proc.sys.kernel.kptr_restrict") && cols.get(5) == Some(&"2")
        }),
        "{params}"
    );
    let max_map_count = ["-n", cp_ip, "read", "/proc/sys/vm/max_map_count"];
    let before = ok(&tc, &max_map_count).trim().to_owned();
    assert_ne!(before, "262144");
    patch_live(
        &tc,
        cp_ip,
        r#"{"machine": {"sysctls": {"vm.max_map_count": "262144"}}}"#,
    );
    eventually(&tc, &max_map_count, Duration::from_secs(30), |v| {
        v.trim() == "262144"
    });
    patch_live(
        &tc,
        cp_ip,
        r#"{"machine": {"sysctls": {"vm.max_map_count": null}}}"#,
    );
    eventually(&tc, &max_map_count, Duration::from_secs(30), |v| {
        v.trim() == before
    });

    // The kernel's log, shipped to a KmsgLogConfig document's URL (the
    // host, as the guest's slirp network sees it) from the oldest record.
    kernel_log_shipped(&tc, cp_ip);

    // Dropped from the configs, the links networkd made go: the control
    // plane's VLAN, dummy link and bridge, then the worker's bond, whose member
    // (released by the kernel) gets its address back.
    let cp_plain = r#"{"machine": {"network": {"interfaces": [
        {"interface": "eth0", "dhcp": true},
        {"interface": "eth1", "addresses": ["10.5.0.2/24"]}]}}}"#;
    let worker_plain = r#"{"machine": {"network": {"interfaces": [
        {"interface": "eth0", "dhcp": true},
        {"interface": "eth1", "addresses": ["10.5.0.3/24"]}]}}}"#;
    for (node, patch) in [(cp_ip, cp_plain), (worker_ip, worker_plain)] {
        patch_live(&tc, node, patch);
    }
    eventually(
        &tc,
        &["-n", cp_ip, "get", "links"],
        Duration::from_secs(60),
        |l| {
            l.contains("eth1")
                && !l.contains("dummy0")
                && !l.contains("eth1.42")
                && !l.contains("br0")
                && !l.contains("wg0")
        },
    );
    eventually(
        &tc,
        &["-n", worker_ip, "get", "addresses"],
        Duration::from_secs(120),
        |a| a.contains("eth1/10.5.0.3/24") && !a.contains("bond0"),
    );
    let links = ok(&tc, &["-n", worker_ip, "get", "links"]);
    assert!(!links.contains("bond0"), "{links}");
    let member = ok(
        &tc,
        &["-n", worker_ip, "get", "links", "eth1", "-o", "yaml"],
    );
    assert!(!member.contains("slaveKind: bond"), "{member}");

    // Reboot through the API: the node comes back with its config (from
    // STATE) and a new boot id.
    let r = run(&tc, &["-n", cp_ip, "reboot"]);
    assert_eq!(r.code, 0, "reboot: {}{}", r.out, r.err);
    // --wait (the default) ends once the node says it is running and
    // ready, as upstream's does, not as soon as it answers.
    assert!(
        r.err.contains(&format!("{cp_ip}: node is back up"))
            && r.err.contains(&format!("{cp_ip}: node is ready")),
        "{}",
        r.err
    );
    let after = eventually(
        &tc,
        &["-n", cp_ip, "read", "/proc/sys/kernel/random/boot_id"],
        long,
        |id| id.trim().len() == 36 && id != boot_id,
    );
    assert_ne!(after, boot_id);

    // The ACPI power button, as a hypervisor's graceful shutdown presses
    // it: the worker shuts down in order and its QEMU exits by itself.
    let worker_dir = c.cluster_dir().join(worker_name);
    talosctl::qemu::press_power_button(&worker_dir).expect("pressing the worker's power button");
    let deadline = Instant::now() + Duration::from_secs(180);
    let worker_console = worker_dir.join("console.log");
    let needle = worker_console.display().to_string();
    loop {
        let console = std::fs::read_to_string(&worker_console).unwrap_or_default();
        if processes_mentioning(&needle).is_empty() {
            assert!(
                console.contains("the power button was pressed")
                    && console.contains("STATE and EPHEMERAL unmounted (or read-only)")
                    && console.contains("powering off"),
                "the worker's QEMU ended without an orderly shutdown:\n{console}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not power off after its power button was pressed:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

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
    // The test writes to an overlay, never to the built image. The overlay
    // is 1 GiB larger than the image, as a disk the image is copied onto
    // usually is: the node fits its partition table to the disk.
    let disk = work.path().join("disk.qcow2");
    let disk_bytes = std::fs::metadata(&raw).expect("image size").len() + (1 << 30);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&disk)
        .arg(disk_bytes.to_string())
        .status()
        .expect("qemu-img runs");
    assert!(st.success());
    let port = free_port();
    let mut vm = node_vm(work.path(), &disk, port, None, "disk");
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
            "--config-patch",
            USER_FILES_PATCH,
            "--config-patch",
            "debug: true",
            "--config-patch",
            "apiVersion: v1alpha1\nkind: WatchdogTimerConfig\ndevice: /dev/watchdog0\ntimeout: 10s\n",
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
    // mTLS and the config's features answer as soon as the config is
    // applied, while machined still restarts the services from it: a
    // stream through the old apid would be cut (seen once in CI). Wait
    // for the control plane's full set, trustd included, which only the
    // configured node runs.
    eventually(&tc, &args(&with(&["services"])), long, |s| {
        services_healthy(
            s,
            "127.0.0.1",
            &["apid", "routerd", "trustd", "networkd", "timed", "udevd"],
        )
    });

    // debug: true puts the services' logs on the console, as upstream's:
    // trustd runs only once the config is there.
    let console_log = work.path().join("console-disk.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = std::fs::read_to_string(&console_log).unwrap_or_default();
        if console
            .lines()
            .any(|l| l.contains("trustd: ") && l.contains("trustd serving"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trustd line on the console:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // WatchdogTimerConfig: the emulated 6300ESB armed with a 10 s timeout
    // and fed; QEMU resets the machine when it fires, so the same boot
    // several timeouts later shows it was fed.
    eventually(&tc, &args(&with(&["dmesg"])), long, |d| {
        d.contains("watchdog /dev/watchdog0 armed: timeout 10s, fed every 2.5s")
    });
    let boot_id = || {
        ok(
            &tc,
            &args(&with(&["read", "/proc/sys/kernel/random/boot_id"])),
        )
    };
    let armed_boot = boot_id();
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(boot_id(), armed_boot, "the watchdog reset the machine");

    let cmdline = ok(&tc, &args(&with(&["read", "/proc/cmdline"])));
    assert!(
        cmdline.contains("talos.slot=A")
            && cmdline.contains("init_on_free=1")
            && cmdline.split_whitespace().any(|a| a == "gpt"),
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
    // health on metal: the memory and disk checks apply; the node
    // reaches its own apid at its address over mTLS with its client
    // certificate, as it reaches other nodes.
    let r = run(
        &tc,
        &args(&with(&[
            "health",
            "--control-plane-nodes",
            "10.0.2.15",
            "--wait-timeout",
            "2m",
        ])),
    );
    assert_eq!(r.code, 0, "health: {}", r.err);
    for check in [
        "apid to be ready",
        "all nodes memory sizes",
        "all nodes disk sizes",
        "all nodes to finish boot sequence",
    ] {
        assert!(
            r.err.contains(&format!("waiting for {check}: OK")),
            "{check}: {}",
            r.err
        );
    }
    // NetworkStatus from networkd's work: an address, QEMU's default
    // route, the hostname and the /etc files.
    let status = ok(&tc, &args(&with(&["get", "networkstatus", "-o", "yaml"])));
    for field in [
        "addressReady: true",
        "connectivityReady: true",
        "hostnameReady: true",
        "etcFilesReady: true",
    ] {
        assert!(status.contains(field), "{field}: {status}");
    }
    // SecurityState on metal: OVMF here has no Secure Boot enabled, and
    // this kernel enforces no module signatures and has no SELinux.
    let security = ok(&tc, &args(&with(&["get", "securitystate", "-o", "yaml"])));
    assert!(
        security.contains("id: securitystate")
            && security.contains("secureBoot: false")
            && !security.contains("selinuxState"),
        "{security}"
    );
    // BlockDevices: the disk and its partitions as the kernel lists them.
    let devices = ok(
        &tc,
        &args(&with(&["get", "blockdevices", "vda4", "-o", "yaml"])),
    );
    for field in [
        "type: partition",
        "partitionName: EPHEMERAL",
        "partitionNumber: 4",
        "parent: vda",
    ] {
        assert!(devices.contains(field), "{field}: {devices}");
    }

    let boot_id = ok(
        &tc,
        &args(&with(&["read", "/proc/sys/kernel/random/boot_id"])),
    );

    // The image's table was for a smaller disk, as the kernel said; the
    // node moved the backup table to the disk's end, grew EPHEMERAL's
    // partition up to the last MiB boundary before it, and /var with it.
    let dmesg = ok(&tc, &args(&with(&["dmesg"])));
    for line in [
        "Alternate GPT header not at the end of the disk",
        "/dev/vda: partition table moved from a",
        "EPHEMERAL grown from",
        "/var grown from",
    ] {
        assert!(dmesg.contains(line), "{line:?} missing:\n{dmesg}");
    }
    let sectors = |path: &'static str| -> u64 {
        let text = ok(&tc, &args(&with(&["read", path])));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
    };
    assert_eq!(sectors("/sys/class/block/vda/size"), disk_bytes / 512);
    let ephemeral_end = (disk_bytes / 512 - 33) / 2048 * 2048;
    let ephemeral_start = sectors("/sys/class/block/vda4/start");
    assert_eq!(
        sectors("/sys/class/block/vda4/size"),
        ephemeral_end - ephemeral_start
    );

    user_files_written(&tc, &with);

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

    // Written again at this boot: the append does not pile up.
    user_files_written(&tc, &with);

    // The kernel finds the table whole at the next boot.
    let dmesg = ok(&tc, &args(&with(&["dmesg"])));
    assert!(dmesg.contains("EPHEMERAL"), "not this boot's log:\n{dmesg}");
    assert!(!dmesg.contains("GPT header not at the end"), "{dmesg}");
    assert!(!dmesg.contains("partition table moved"), "{dmesg}");
    assert_eq!(
        sectors("/sys/class/block/vda4/size"),
        ephemeral_end - ephemeral_start
    );

    // The power button, on a node with /var on EPHEMERAL (its logs there,
    // machine.files bound from it over /etc): an orderly shutdown that
    // leaves STATE and EPHEMERAL unmounted or read-only, as the reboot
    // above did too, and QEMU exits by itself.
    talosctl::qemu::press_power_button_at(&work.path().join("qmp-disk.sock"))
        .expect("pressing the power button");
    let deadline = Instant::now() + Duration::from_secs(180);
    while vm.0.try_wait().expect("QEMU's status").is_none() {
        assert!(
            Instant::now() < deadline,
            "the node did not power off after its power button was pressed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = std::fs::read_to_string(work.path().join("console-disk.log")).expect("console");
    assert!(
        console.contains("the power button was pressed") && console.contains("powering off"),
        "{console}"
    );
    assert!(
        console
            .matches("STATE and EPHEMERAL unmounted (or read-only)")
            .count()
            >= 2,
        "at the reboot and at the power off:\n{console}"
    );
    assert!(!console.contains("could not unmount"), "{console}");
}

/// A `KmsgLogConfig` applied live on `node` sends the kernel's log to a
/// listener on the host, as upstream's JSON objects, the boot's first
/// record included.
fn kernel_log_shipped(tc: &Path, node: &str) {
    use std::io::BufRead as _;
    // The oldest records the kernel holds, as dmesg shows them (one may
    // leave the ring before the node reads it).
    let dmesg = ok(tc, &["-n", node, "dmesg"]);
    let oldest: Vec<String> = dmesg
        .lines()
        .take(50)
        .filter_map(|l| l.split_once("]: "))
        .map(|(_, text)| text.trim_end().to_owned())
        .collect();
    assert!(!oldest.is_empty(), "{dmesg}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("address").port();
    patch_live(
        tc,
        node,
        &format!(
            "apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: e2e\nurl: tcp://10.0.2.2:{port}/\n"
        ),
    );
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(60);
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("the node never sent its kernel log: {e}"),
        }
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut lines = std::io::BufReader::new(conn).lines();
    let first = lines.next().expect("a record").expect("a readable line");
    let object: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    let msg = object["msg"].as_str().expect("msg");
    assert!(
        oldest.iter().any(|t| t == msg),
        "{first} is not among\n{oldest:#?}"
    );
    assert!(
        object["facility"].is_string() && object["clock"].is_u64(),
        "{first}"
    );
    assert!(
        object["seq"].is_u64() && object["talos-time"].is_string(),
        "{first}"
    );
    // Records go on arriving in order.
    let next = lines.next().expect("another").expect("readable");
    let next: serde_json::Value = serde_json::from_str(&next).expect("JSON");
    assert!(next["seq"].as_u64() > object["seq"].as_u64(), "{next}");
}

/// `machine.files`: one file created under /var, one appended to on the
/// read-only root (the CA bundle, with a comment PEM readers skip).
const USER_FILES_PATCH: &str = r##"{"machine":{"files":[{"path":"/var/etc/greeting","op":"create","permissions":384,"content":"hello from machine.files\n"},{"path":"/etc/ssl/certs/ca-certificates.crt","op":"append","content":"# appended by machine.files\n"}]}}"##;

/// The files of [`USER_FILES_PATCH`] are in place: the created one with
/// its mode, the appended one bind-mounted read-only over the original,
/// with the line added once.
fn user_files_written(tc: &Path, with: &dyn Fn(&[&'static str]) -> Vec<String>) {
    assert_eq!(
        ok(tc, &args(&with(&["read", "/var/etc/greeting"]))),
        "hello from machine.files\n"
    );
    let listing = ok(tc, &args(&with(&["list", "-l", "/var/etc"])));
    assert!(
        listing
            .lines()
            .any(|l| l.contains("greeting") && l.contains("-rw-------")),
        "{listing}"
    );
    let bundle = ok(
        tc,
        &args(&with(&["read", "/etc/ssl/certs/ca-certificates.crt"])),
    );
    assert!(bundle.contains("-----BEGIN CERTIFICATE-----"), "{bundle}");
    assert_eq!(
        bundle.matches("# appended by machine.files").count(),
        1,
        "{bundle}"
    );
    assert!(bundle.ends_with("\n# appended by machine.files\n"));
    let mounts = ok(tc, &args(&with(&["read", "/proc/self/mounts"])));
    assert!(
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/etc/ssl/certs/ca-certificates.crt")
                && f.get(3).is_some_and(|o| o.split(',').any(|o| o == "ro"))
        }),
        "{mounts}"
    );
}

// === install and upgrade ===

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The filesystem UUIDs of STATE and EPHEMERAL (GPT entries 3 and 4) in
/// a disk image: the templates' own, which the seeded disk image keeps.
fn template_fs_uuids(disk: &Path) -> Vec<String> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(disk).unwrap_or_else(|e| panic!("{}: {e}", disk.display()));
    let read = |at: u64, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)
            .expect("reading the disk image");
        buf
    };
    let entries = read(1024, 4 * 128);
    [2usize, 3]
        .iter()
        .map(|i| {
            let first_lba =
                u64::from_le_bytes(entries[i * 128 + 32..i * 128 + 40].try_into().expect("8"));
            let sb = read(first_lba * 512, 48);
            assert_eq!(&sb[..4], b"XFSB", "xfs at entry {}", i + 1);
            let hex: String = sb[32..48].iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        })
        .collect()
}

/// The host-side `installer` (pushes layouts), built next to talosctl.
fn installer_bin() -> PathBuf {
    talosctl()
        .parent()
        .expect("talosctl has a directory")
        .join("installer")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// An OCI layout's manifest (through index.json).
fn read_manifest(layout: &Path) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index json");
    let digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob"))
        .expect("manifest json")
}

/// Writes `manifest` as a new blob and points index.json at it: what an
/// attacker who controls a registry can do.
fn write_manifest(layout: &Path, manifest: &serde_json::Value) {
    let bytes = serde_json::to_vec(manifest).expect("json");
    let hex = sha256_hex(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).expect("write blob");
    let path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("json");
    index["manifests"][0]["digest"] = format!("sha256:{hex}").into();
    index["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(&path, serde_json::to_vec(&index).expect("json")).expect("write index");
}

/// A copy of `layout` with one byte of `title`'s blob changed; the
/// manifest is updated to the new digest (so a registry takes it), the
/// signed config is not (so a node must refuse it).
fn tamper_blob(layout: &Path, to: &Path, title: &str) {
    copy_tree(layout, to);
    let mut manifest = read_manifest(to);
    let layers = manifest["layers"].as_array_mut().expect("layers");
    let layer = layers
        .iter_mut()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == title)
        .expect("the layer");
    let hex = layer["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .expect("digest")
        .to_owned();
    let mut bytes = std::fs::read(to.join("blobs/sha256").join(&hex)).expect("blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let new_hex = sha256_hex(&bytes);
    std::fs::write(to.join("blobs/sha256").join(&new_hex), &bytes).expect("write");
    layer["digest"] = format!("sha256:{new_hex}").into();
    write_manifest(to, &manifest);
}

/// A copy of `layout` whose signature is not the signer's.
fn tamper_signature(layout: &Path, to: &Path) {
    copy_tree(layout, to);
    let mut manifest = read_manifest(to);
    let key = "dev.talos-rs.installer.signature";
    let sig = manifest["annotations"][key]
        .as_str()
        .expect("a signature annotation")
        .to_owned();
    let mut chars: Vec<char> = sig.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    manifest["annotations"][key] = chars.into_iter().collect::<String>().into();
    write_manifest(to, &manifest);
}

/// Builds an installer image of `version` with the same signing key as
/// the image under test; `machined` replaces the real one (a broken
/// release).
fn build_variant(image: &Path, out: &Path, version: &str, machined: Option<&Path>) -> PathBuf {
    std::fs::create_dir_all(out).expect("mkdir");
    std::os::unix::fs::symlink(image.join("cache"), out.join("cache")).expect("symlink cache");
    let bins = workspace().join("target/x86_64-unknown-linux-musl/image");
    let bin_dir = match machined {
        None => bins,
        Some(replacement) => {
            let dir = out.join("bin");
            copy_tree(&bins, &dir);
            std::fs::copy(replacement, dir.join("machined")).expect("copy machined");
            dir
        }
    };
    let st = Command::new(workspace().join("target/release/imager"))
        .args(["build", "--no-disk", "--version", version, "--output"])
        .arg(out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--signing-key")
        .arg(image.join("keys/installer-signing.pem"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("imager runs (scripts/image builds it)");
    assert!(st.success(), "imager build {version}");
    out.join("installer")
}

/// The registry's user and password (the node gets them from
/// `machine.registries.config`).
const REGISTRY_USER: &str = "talos";
const REGISTRY_PASSWORD: &str = "correct horse";
/// [`REGISTRY_USER`]'s htpasswd line, bcrypt at the lowest cost. Made with
/// Python's `crypt.crypt(REGISTRY_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))`.
const REGISTRY_HTPASSWD: &str =
    "talos:$2b$04$TBItg3Bu4C/ZKi.TghjUa.hHs2l3HZP/rnyOkY.agwwRVSUTk3RnO\n";

/// Debian's docker-registry on loopback, wanting a password, removed when
/// dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, REGISTRY_HTPASSWD).expect("write htpasswd");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n\
                 auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .expect("write config");
        // The installer's push reads its credentials from a file.
        std::fs::write(
            dir.path().join("access.json"),
            format!(
                r#"{{"config":{{"127.0.0.1:{port}":{{"auth":{{"username":"{REGISTRY_USER}","password":"{REGISTRY_PASSWORD}"}}}}}}}}"#
            ),
        )
        .expect("write access");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            use std::io::{Read as _, Write as _};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                // It wants a password: 401 means it is up.
                if reply.starts_with("HTTP/1.0 401") || reply.starts_with("HTTP/1.1 401") {
                    return registry;
                }
            }
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn push(&self, layout: &Path, tag: &str) {
        let host = format!("127.0.0.1:{}", self.port);
        let out = Command::new(installer_bin())
            .args(["push", "--layout"])
            .arg(layout)
            .args(["--image", &format!("{host}/talos/installer:{tag}")])
            .args(["--plain-http-registry", &host])
            .arg("--registry-config")
            .arg(self._dir.path().join("access.json"))
            .output()
            .expect("installer runs");
        assert!(
            out.status.success(),
            "push {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The reference as the guest sees it (QEMU's user network: the host
    /// is 10.0.2.2).
    fn guest_ref(&self, tag: &str) -> String {
        format!("10.0.2.2:{}/talos/installer:{tag}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One QEMU run of the node on `disk`: from the image's kernel and
/// initramfs (maintenance, the way a node first boots; `-no-reboot` makes
/// its reboot after installing end QEMU), or from the disk through OVMF.
fn node_vm(work: &Path, disk: &Path, port: u16, direct: Option<&Path>, name: &str) -> Vm {
    node_vm_with(work, disk, port, direct, name, "")
}

/// The SMBIOS system UUID of every node VM.
const VM_UUID: &str = "5c0f3a9e-1d2b-4c5d-8e6f-a0b1c2d3e4f5";

/// [`node_vm`] with extra `-drive` options for the disk.
fn node_vm_with(
    work: &Path,
    disk: &Path,
    port: u16,
    direct: Option<&Path>,
    name: &str,
    drive_options: &str,
) -> Vm {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "1"])
        // The SMBIOS UUID `get systeminformation` must show.
        .args(["-uuid", VM_UUID])
        .args(["-display", "none", "-monitor", "none"])
        // For the power button (`talosctl::qemu::press_power_button_at`).
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            work.join(format!("qmp-{name}.sock")).display()
        ))
        .arg("-serial")
        .arg(format!(
            "file:{}",
            work.join(format!("console-{name}.log")).display()
        ));
    match direct {
        Some(image) => {
            cmd.arg("-kernel")
                .arg(image.join("vmlinuz"))
                .arg("-initrd")
                .arg(image.join("initramfs.xz"))
                .args([
                    "-append",
                    "console=ttyS0 init_on_alloc=1 init_on_free=1 slab_nomerge pti=on panic=10 talos.platform=metal",
                    "-no-reboot",
                ]);
        }
        None => {
            let vars = work.join("OVMF_VARS.fd");
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("OVMF (package ovmf)");
            }
            cmd.args([
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            ])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
    }
    // A qcow2 overlay, or the raw disk itself.
    let format = if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    cmd.arg("-drive")
        .arg(format!(
            "file={},format={format},if=virtio{drive_options}",
            disk.display()
        ))
        .arg("-netdev")
        .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:50000"))
        .args([
            "-device",
            "virtio-net-pci,netdev=net0",
            "-device",
            "virtio-rng-pci",
            // A hardware watchdog (reset when it fires) for
            // WatchdogTimerConfig.
            "-device",
            "i6300esb",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Vm(cmd
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup installs it)"))
}

/// The sha256 of the ESP (both boot slots) and META of the raw disk.
fn boot_partitions_hash(disk: &Path) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    // EFI starts at 1 MiB and is 512 MiB; META follows (1 MiB).
    let mut f = std::fs::File::open(disk).expect("open disk");
    f.seek(SeekFrom::Start(1 << 20)).expect("seek");
    let mut bytes = vec![0u8; 513 << 20];
    f.read_exact(&mut bytes).expect("read");
    sha256_hex(&bytes)
}

/// Prints the console logs of a failed test (the guest's own account).
struct ConsoleOnFailure(PathBuf);

impl Drop for ConsoleOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("=== {} (last lines)", log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn tag_of(version_output: &str) -> String {
    // The server's section comes second.
    version_output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Tag:"))
        .map(|t| t.trim().to_owned())
        .next_back()
        .unwrap_or_default()
}

#[test]
#[ignore = "boots QEMU (maintenance, then OVMF from the disk) and a registry; scripts/test runs it after scripts/image"]
fn install_upgrade_rollback_and_refused_or_failed_upgrades() {
    let image = image_dir();
    let v1 = image.join("installer");
    assert!(
        v1.join("index.json").exists(),
        "{} missing: scripts/image builds it",
        v1.display()
    );
    let work = tempfile::tempdir().expect("tempdir");
    let _console = ConsoleOnFailure(work.path().to_path_buf());

    // The releases: v1 (the image under test), v2, and a v2 whose machined
    // cannot start (a dynamically linked program as /init: the kernel
    // finds no working init and panics); all signed with the same key.
    let v2 = build_variant(&image, &work.path().join("v2"), "0.1.0-v2", None);
    let broken = build_variant(
        &image,
        &work.path().join("broken"),
        "0.1.0-broken",
        Some(Path::new("/bin/false")),
    );
    let tampered = work.path().join("tampered");
    tamper_blob(&v2, &tampered, "initramfs.xz");
    let badsig = work.path().join("badsig");
    tamper_signature(&v2, &badsig);
    let registry = Registry::start();
    for (tag, layout) in [
        ("v1", &v1),
        ("v2", &v2),
        ("broken", &broken),
        ("tampered", &tampered),
        ("badsig", &badsig),
    ] {
        registry.push(layout, tag);
    }

    // A blank disk but for an old filesystem on it (to be wiped), a node
    // booted from the kernel and initramfs.
    let disk = work.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(3 << 30))
        .expect("disk");
    let mkfs = talosctl::qemu::find_program("mkfs.xfs", &["/usr/sbin", "/sbin"])
        .expect("mkfs.xfs (xfsprogs; scripts/setup installs it)");
    let made = Command::new(mkfs)
        .args(["-q", "-f", "-L", "OLDDATA"])
        .arg(&disk)
        .status()
        .expect("mkfs.xfs");
    assert!(made.success());
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let none = work.path().join("none");
    let long = Duration::from_secs(300);
    let mut vm = node_vm(work.path(), &disk, port, Some(&image), "install");
    eventually(
        &none,
        &["-n", &endpoint, "version", "--insecure"],
        long,
        |v| v.contains("Server:"),
    );

    // The disk to install to, as an operator finds it: `get disks` in
    // maintenance mode (the COSI API over the maintenance TLS, as
    // os:reader); the machine config is not readable there.
    let disks = ok(&none, &["-n", &endpoint, "get", "disks", "--insecure"]);
    assert!(
        disks.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1..4) == Some(&["runtime", "Disk", "vda"][..])
                && l.contains("3.2 GB")
                && l.contains("virtio")
        }),
        "{disks}"
    );
    let r = run(&none, &["-n", &endpoint, "get", "mc", "--insecure"]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(r.err.contains("not authorized"), "{}", r.err);
    // The old filesystem, wiped through the API (allowed in maintenance
    // mode, as upstream): the node's udevd zeroes the disk's ends.
    let old_fs = |dv: &str| {
        dv.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(3) == Some(&"vda") && l.contains("xfs") && l.contains("OLDDATA")
        })
    };
    let dv = ok(&none, &["-n", &endpoint, "get", "dv", "--insecure"]);
    assert!(old_fs(&dv), "{dv}");
    let r = run(
        &none,
        &["-n", &endpoint, "wipe", "disk", "vdz", "--insecure"],
    );
    assert!(
        r.code != 0 && r.err.contains("blockdevice \"vdz\" not found"),
        "{}",
        r.err
    );
    ok(
        &none,
        &["-n", &endpoint, "wipe", "disk", "vda", "--insecure"],
    );
    let dv = ok(&none, &["-n", &endpoint, "get", "dv", "--insecure"]);
    assert!(!old_fs(&dv), "{dv}");
    // Nothing is on the blank disk yet: no system disk, and every volume
    // is missing.
    let system_disk = ok(&none, &["-n", &endpoint, "get", "systemdisk", "--insecure"]);
    assert_eq!(system_disk.lines().count(), 1, "{system_disk}");
    let statuses = ok(
        &none,
        &["-n", &endpoint, "get", "volumestatus", "--insecure"],
    );
    for id in ["META", "STATE", "EPHEMERAL"] {
        assert!(
            statuses.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(3) == Some(&id) && cols.get(5..7) == Some(&["partition", "missing"][..])
            }),
            "{id}: {statuses}"
        );
    }

    // What the firmware says it is (SMBIOS type 1), as upstream shows it.
    let system = ok(
        &none,
        &[
            "-n",
            &endpoint,
            "get",
            "systeminformation",
            "--insecure",
            "-o",
            "yaml",
        ],
    );
    assert!(
        system.contains("  manufacturer: QEMU\n")
            && system.contains("  wakeUpType: Power Switch\n")
            && system.contains(&format!("  uuid: {VM_UUID}\n")),
        "{system}"
    );
    // What it runs on, as upstream's metal platform says: the SMBIOS UUID
    // as the instance id.
    let platform = ok(
        &none,
        &[
            "-n",
            &endpoint,
            "get",
            "platformmetadata",
            "--insecure",
            "-o",
            "yaml",
        ],
    );
    assert!(
        platform.contains("  platform: metal\n")
            && platform.contains(&format!("  instanceId: {VM_UUID}\n")),
        "{platform}"
    );
    // Its processor and memory (SMBIOS types 4 and 17): QEMU's one
    // socket with one core (`-smp 1`) and one DIMM of the VM's 1024 MiB.
    let cpus = ok(&none, &["-n", &endpoint, "get", "cpus", "--insecure"]);
    assert!(
        cpus.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1..4) == Some(&["hardware", "Processor", "CPU-0"][..])
                && cols.get(5) == Some(&"QEMU")
                && cols.iter().rev().take(2).all(|c| *c == "1")
        }),
        "{cpus}"
    );
    let ram = ok(
        &none,
        &["-n", &endpoint, "get", "ram", "--insecure", "-o", "yaml"],
    );
    assert!(
        ram.contains("  sizeMiB: 1024\n")
            && ram.contains("  deviceLocator: DIMM 0\n")
            && ram.contains("  manufacturer: QEMU\n"),
        "{ram}"
    );
    // Its PCI devices, by bus address: among them virtio's network device
    // (class 02, subclass 00, vendor 1af4), bound to virtio-pci.
    let pci = ok(
        &none,
        &[
            "-n",
            &endpoint,
            "get",
            "pcidevices",
            "--insecure",
            "-o",
            "yaml",
        ],
    );
    assert!(
        pci.split("\n---\n").any(|doc| {
            let has = |line: &str| doc.lines().any(|l| l == line);
            has("  class: Network controller")
                && has("  subclass: Ethernet controller")
                && has("  vendor_id: '0x1af4'")
                && has("  driver: virtio-pci")
        }),
        "{pci}"
    );

    // The resolver networkd took from the lease (QEMU's 10.0.2.3) and the
    // time server timed asks without a config.
    eventually(
        &none,
        &["-n", &endpoint, "get", "resolvers", "--insecure"],
        Duration::from_secs(60),
        |r| {
            r.lines()
                .any(|l| l.contains("ResolverStatus") && l.contains("\"10.0.2.3\""))
        },
    );
    let timeservers = ok(
        &none,
        &["-n", &endpoint, "get", "timeservers", "--insecure"],
    );
    assert!(
        timeservers.contains("[\"time.cloudflare.com\"]"),
        "{timeservers}"
    );

    // Its network as the kernel has it: the virtio NIC up with a carrier,
    // the address DHCP gave it and the default route through QEMU's
    // gateway.
    let links = ok(
        &none,
        &["-n", &endpoint, "get", "links", "--insecure", "-o", "yaml"],
    );
    assert!(
        links
            .split("---\n")
            .any(|doc| doc.contains("  driver: virtio_net\n")
                && doc.contains("  operationalState: up\n")
                && doc.contains("  linkState: true\n")),
        "{links}"
    );
    let addresses = ok(&none, &["-n", &endpoint, "get", "addresses", "--insecure"]);
    assert!(
        addresses
            .lines()
            .any(|l| l.contains("/10.0.2.15/24") && l.contains("AddressStatus")),
        "{addresses}"
    );
    // Upstream's NodeAddresses: the DHCP address is the node's default
    // and among its current ones (loopback and link-local left out).
    let node_addresses = ok(
        &none,
        &["-n", &endpoint, "get", "nodeaddresses", "--insecure"],
    );
    for id in ["current", "default", "routed", "accumulative"] {
        assert!(
            node_addresses.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1..4) == Some(&["network", "NodeAddress", id][..])
                    && l.contains("10.0.2.15/24")
                    && !l.contains("127.0.0.1/")
                    && cols.last() == Some(&"v1")
            }),
            "{id}: {node_addresses}"
        );
    }
    // networkd adds the default route after the address.
    eventually(
        &none,
        &["-n", &endpoint, "get", "routes", "--insecure"],
        Duration::from_secs(60),
        |routes| {
            routes.lines().any(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|id| id.starts_with("inet4/10.0.2.2//"))
            })
        },
    );

    // Install: the config picks the disk by what it is (its size and bus,
    // upstream's diskSelector) and names the image (pulled over http from
    // the test's registry, declared as a mirror, with the password the
    // registry wants).
    let generated = work.path().join("gen");
    let mirror = format!(
        r#"{{"machine":{{"registries":{{"mirrors":{{"10.0.2.2:{p}":{{"endpoints":["http://10.0.2.2:{p}"]}}}},"config":{{"10.0.2.2:{p}":{{"auth":{{"username":"{REGISTRY_USER}","password":"{REGISTRY_PASSWORD}"}}}}}}}}}}}}"#,
        p = registry.port
    );
    ok(
        &none,
        &[
            "gen",
            "config",
            "disk",
            "https://10.0.2.15:6443",
            "--install-image",
            &registry.guest_ref("v1"),
            "--config-patch",
            &mirror,
            "--config-patch",
            // gen config's default disk (/dev/sda) stays: the selector
            // goes first, as upstream's.
            "machine: {install: {diskSelector: {size: '>= 3GB', busPath: '/pci0000:00/*'}}}",
            "--output-dir",
            generated.to_str().expect("utf8"),
        ],
    );
    let tc = generated.join("talosconfig");
    let install_started = Instant::now();
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
    // The node installs, then reboots: QEMU ends (-no-reboot).
    let deadline = Instant::now() + Duration::from_secs(600);
    while vm.0.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the node did not install and reboot"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let installed_in = install_started.elapsed();
    drop(vm);
    // That boot had a blank disk: the NIC driver (and 802.1Q) loaded once
    // apid was up,
    // the filesystems' modules after it (in the background, or at once
    // for the install), then module loading was locked.
    let console = std::fs::read_to_string(work.path().join("console-install.log"))
        .expect("the install boot's console log");
    assert!(
        console.contains("no disk filesystem of ours")
            && console.contains("install: /dev/vda picked by machine.install.diskSelector")
            && console.contains("network modules: 21 loaded, 0 failed")
            && console.contains("deferred modules: 13 loaded, 0 failed; module loading locked"),
        "{console}"
    );

    // From the disk: firmware, systemd-boot, slot A, the config from STATE.
    let booted = Instant::now();
    let vm = node_vm(work.path(), &disk, port, None, "disk");
    let mtls = ["-e", &endpoint, "-n", "127.0.0.1"];
    let with = |rest: &[&str]| -> Vec<String> {
        mtls.iter()
            .chain(rest.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let version = with(&["version"]);
    let v = eventually(&tc, &args(&version), long, |v| {
        v.contains("Enabled:     RBAC")
    });
    let first_boot = booted.elapsed();
    eprintln!(
        "bench: install (apply-config → installed and rebooting) {:.1} s; first boot from disk → mTLS Version {:.1} s",
        installed_in.as_secs_f64(),
        first_boot.as_secs_f64()
    );
    let v1_tag = tag_of(&v);
    assert!(!v1_tag.is_empty() && !v1_tag.contains("v2"), "{v}");
    let cmdline = with(&["read", "/proc/cmdline"]);
    assert!(ok(&tc, &args(&cmdline)).contains("talos.slot=A"));
    // EPHEMERAL was grown from its 300 MiB template to the partition.
    let mounts = ok(&tc, &args(&with(&["mounts"])));
    let var_gb: f64 = mounts
        .lines()
        .find(|l| l.split_whitespace().last() == Some("/var"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no /var in:\n{mounts}"));
    assert!(var_gb > 1.5, "/var is {var_gb} GB:\n{mounts}");

    // A META key (upstream's first user-reserved one), written now; it must
    // outlive the upgrades' own META writes and the reboots below.
    ok(&tc, &args(&with(&["meta", "write", "0x0c", "kept"])));
    // It reads back as upstream's MetaKey resource.
    let keys = ok(&tc, &args(&with(&["get", "meta"])));
    assert!(
        keys.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1..4) == Some(&["runtime", "MetaKey", "0x0c"][..])
                && cols.last() == Some(&"kept")
        }),
        "{keys}"
    );

    // The installed disk as upstream's DiscoveredVolumes: its GPT, and each
    // partition with what a probe finds there (META by its magic).
    let volumes = ok(&tc, &args(&with(&["get", "dv", "-o", "yaml"])));
    for (id, name, partition_label) in [
        ("vda", "gpt", ""),
        ("vda1", "vfat", "EFI"),
        ("vda2", "talosmeta", "META"),
        ("vda3", "xfs", "STATE"),
        ("vda4", "xfs", "EPHEMERAL"),
    ] {
        assert!(
            volumes
                .split("---\n")
                .any(|doc| doc.contains(&format!("  id: {id}\n"))
                    && doc.contains(&format!("  name: {name}\n"))
                    && (partition_label.is_empty()
                        || doc.contains(&format!("  partition_label: {partition_label}\n")))),
            "{id}: {volumes}"
        );
    }
    // STATE and EPHEMERAL have UUIDs of their own: not the templates'
    // (which the seeded disk image keeps), and not each other's.
    let uuid_of = |id: &str| -> String {
        volumes
            .split("---\n")
            .find(|doc| doc.contains(&format!("  id: {id}\n")))
            .and_then(|doc| doc.lines().find_map(|l| l.strip_prefix("  uuid: ")))
            .unwrap_or_else(|| panic!("no uuid for {id}: {volumes}"))
            .to_owned()
    };
    let installed = [uuid_of("vda3"), uuid_of("vda4")];
    let templates = template_fs_uuids(&image.join("metal-amd64.raw"));
    assert_ne!(installed[0], installed[1]);
    for uuid in &installed {
        assert!(
            !templates.contains(uuid),
            "{uuid} is a template's: {templates:?}"
        );
    }
    // The system disk: the one holding META.
    let system_disk = ok(&tc, &args(&with(&["get", "systemdisk"])));
    assert!(
        system_disk.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1..4) == Some(&["runtime", "SystemDisk", "system-disk"][..])
                && cols.last() == Some(&"vda")
        }),
        "{system_disk}"
    );
    // The three volumes as upstream's VolumeStatuses: where they are and
    // that they are ready.
    let statuses = ok(&tc, &args(&with(&["get", "volumestatus"])));
    for expect in [
        ["META", "partition", "ready", "/dev/vda2"],
        ["STATE", "partition", "ready", "/dev/vda3"],
        ["EPHEMERAL", "partition", "ready", "/dev/vda4"],
    ] {
        assert!(
            statuses.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1..3) == Some(&["runtime", "VolumeStatus"][..])
                    && cols.get(3) == Some(&expect[0])
                    && cols.get(5..8) == Some(&expect[1..])
            }),
            "{expect:?}: {statuses}"
        );
    }
    // And what machined mounted from it, by label, as upstream's
    // MountStatuses (`get mounts`).
    let mounts = ok(&tc, &args(&with(&["get", "mounts"])));
    for expect in [
        [
            "runtime",
            "MountStatus",
            "STATE",
            "1",
            "/dev/vda3",
            "/system/state",
            "xfs",
        ],
        [
            "runtime",
            "MountStatus",
            "EPHEMERAL",
            "1",
            "/dev/vda4",
            "/var",
            "xfs",
        ],
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split_whitespace().skip(1).eq(expect)),
            "{expect:?}: {mounts}"
        );
    }

    // Refused before any write: a changed blob, a bad signature, a missing
    // tag. The boot partitions stay byte for byte the same.
    let before = boot_partitions_hash(&disk);
    for (tag, expect) in [
        ("tampered", "digest"),
        ("badsig", "signature"),
        ("missing", "not found"),
    ] {
        let r = run(
            &tc,
            &args(&with(&["upgrade", "--image", &registry.guest_ref(tag)])),
        );
        assert_ne!(r.code, 0, "upgrade to {tag} succeeded: {}", r.out);
        assert!(
            r.err.to_lowercase().contains(expect),
            "upgrade to {tag}: expected {expect:?} in:\n{}",
            r.err
        );
    }
    assert_eq!(
        boot_partitions_hash(&disk),
        before,
        "a refused upgrade changed the disk"
    );

    // v1 → v2 from the registry.
    let started = Instant::now();
    let r = run(
        &tc,
        &args(&with(&[
            "upgrade",
            "--image",
            &registry.guest_ref("v2"),
            "--wait",
            "--timeout",
            "10m",
        ])),
    );
    assert_eq!(r.code, 0, "upgrade to v2:\n{}\n{}", r.out, r.err);
    let v = eventually(&tc, &args(&version), long, |v| tag_of(v).contains("v2"));
    eprintln!(
        "bench: upgrade (API call → v2 answering) {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(tag_of(&v).contains("0.1.0-v2"), "{v}");
    assert!(ok(&tc, &args(&cmdline)).contains("talos.slot=B"));

    // Rollback → v1.
    let boot_id = with(&["read", "/proc/sys/kernel/random/boot_id"]);
    let id = ok(&tc, &args(&boot_id));
    ok(&tc, &args(&with(&["rollback"])));
    eventually(&tc, &args(&boot_id), long, |now| {
        now.trim().len() == 36 && now != id
    });
    let v = eventually(&tc, &args(&version), long, |v| {
        v.contains("Enabled:     RBAC")
    });
    assert_eq!(tag_of(&v), v1_tag);
    assert!(ok(&tc, &args(&cmdline)).contains("talos.slot=A"));

    // The META key is still there: it reads back, deleting it works once,
    // then it is gone.
    let key = ok(&tc, &args(&with(&["get", "meta", "0x0c", "-o", "yaml"])));
    assert!(
        key.contains("  id: '0x0c'\n") && key.ends_with("spec:\n  value: kept\n"),
        "{key}"
    );
    ok(&tc, &args(&with(&["meta", "delete", "0x0c"])));
    let r = run(&tc, &args(&with(&["meta", "delete", "0x0c"])));
    assert_ne!(r.code, 0, "a second delete succeeded: {}", r.out);
    assert!(
        r.err.contains("META key 0x0c is not set") && r.err.contains("NotFound"),
        "{}",
        r.err
    );

    // A release whose machined cannot start: the node falls back to v1 by
    // itself and says the upgrade failed.
    let r = run(
        &tc,
        &args(&with(&[
            "upgrade",
            "--image",
            &registry.guest_ref("broken"),
            "--wait",
            "--timeout",
            "15m",
        ])),
    );
    assert_ne!(r.code, 0, "a broken upgrade reported success: {}", r.out);
    assert!(r.err.contains("came back on its old slot A"), "{}", r.err);
    let v = eventually(&tc, &args(&version), long, |v| {
        v.contains("Enabled:     RBAC")
    });
    assert_eq!(tag_of(&v), v1_tag);
    let events = eventually(
        &tc,
        &args(&with(&["events", "--tail", "-1", "--stop-after", "3s"])),
        long,
        |e| e.contains("did not come up"),
    );
    assert!(events.contains("upgrade"), "{events}");

    // Power lost while the inactive slot is written: v1 boots. The disk
    // takes writes at 2 MiB/s here, so writing the slot's ~25 MB lasts
    // long enough for the kill to land in the middle of it.
    drop(vm);
    let mut vm = node_vm_with(
        work.path(),
        &disk,
        port,
        None,
        "slow-disk",
        ",throttling.bps-write=2097152",
    );
    eventually(&tc, &args(&version), long, |v| {
        v.contains("Enabled:     RBAC")
    });
    let mut upgrade = Command::new(talosctl())
        .arg("--talosconfig")
        .arg(&tc)
        .args(args(&with(&[
            "upgrade",
            "--image",
            &registry.guest_ref("v2"),
        ])))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("talosctl runs");
    let stderr = upgrade.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
        let writing = line.contains("writing slot B");
        seen.push(line);
        if writing {
            let _ = vm.0.kill();
            break;
        }
    }
    let _ = upgrade.wait();
    assert!(
        seen.iter().any(|l| l.contains("writing slot B")),
        "the upgrade never got to writing: {seen:?}"
    );
    drop(vm);
    let console = std::fs::read_to_string(work.path().join("console-slow-disk.log"))
        .expect("the console log");
    assert!(
        console.contains("writing slot B") && !console.contains("slot B holds"),
        "the kill did not land while slot B was written"
    );
    let mut vm = node_vm(work.path(), &disk, port, None, "after-kill");
    let v = eventually(&tc, &args(&version), long, |v| {
        v.contains("Enabled:     RBAC")
    });
    assert_eq!(tag_of(&v), v1_tag, "after a killed upgrade");
    assert!(ok(&tc, &args(&cmdline)).contains("talos.slot=A"));

    // Reset. Requests that contradict themselves or name what is not
    // there are refused before anything stops.
    for (flags, refusal) in [
        (
            &[
                "--wipe-mode",
                "user-disks",
                "--system-labels-to-wipe",
                "STATE",
            ][..],
            "USER_DISKS doesn't support SystemPartitionsToWipe",
        ),
        (
            &["--system-labels-to-wipe", "BOOT"],
            "volume status with label \"BOOT\"",
        ),
        (
            &[
                "--wipe-mode",
                "user-disks",
                "--user-disks-to-wipe",
                "/dev/vda",
            ],
            "device /dev/vda is the system disk",
        ),
    ] {
        let r = run(&tc, &args(&with(&[&["reset"][..], flags].concat())));
        assert!(
            r.code != 0 && r.err.contains(refusal),
            "{flags:?}: {}",
            r.err
        );
    }
    ok(&tc, &args(&version));
    // STATE and EPHEMERAL wiped: the installation boots again, formats
    // them afresh, and comes up without its config, in maintenance mode.
    // --wait follows it down; its certificate cannot follow it further.
    let r = run(
        &tc,
        &args(&with(&[
            "reset",
            "--system-labels-to-wipe",
            "STATE",
            "--system-labels-to-wipe",
            "EPHEMERAL",
            "--reboot",
            "--wait",
            "--timeout",
            "5m",
        ])),
    );
    assert_eq!(r.code, 0, "reset --wait: {}{}", r.out, r.err);
    assert!(
        r.err.contains("node is down") && r.err.contains("comes back in maintenance mode"),
        "{}",
        r.err
    );
    let maintenance = ["-n", &endpoint, "--insecure"];
    let insecure = |rest: &[&str]| -> Vec<String> {
        rest.iter()
            .chain(maintenance.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    eventually(&none, &args(&insecure(&["version"])), long, |v| {
        v.contains("Server:")
    });
    let console = std::fs::read_to_string(work.path().join("console-after-kill.log"))
        .expect("the console log");
    for line in [
        "reset: volume STATE (/dev/vda3) wiped",
        "reset: volume EPHEMERAL (/dev/vda4) wiped",
        "STATE (/dev/vda3) was blank: formatted from the image's template",
        "EPHEMERAL (/dev/vda4) was blank: formatted from the image's template",
    ] {
        assert!(console.contains(line), "{line}: {console}");
    }
    let statuses = ok(&none, &args(&insecure(&["get", "volumestatus"])));
    for expect in [
        ["META", "partition", "ready"],
        ["STATE", "partition", "ready"],
        ["EPHEMERAL", "partition", "ready"],
    ] {
        assert!(
            statuses.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(3) == Some(&expect[0]) && cols.get(5..7) == Some(&expect[1..])
            }),
            "{expect:?}: {statuses}"
        );
    }
    // Configured again: the config is kept on the new STATE across a
    // reboot. Then a whole reset: the system disk is wiped and the node
    // powers off.
    ok(
        &none,
        &args(&insecure(&[
            "apply-config",
            "-f",
            generated.join("controlplane.yaml").to_str().expect("utf8"),
        ])),
    );
    // mTLS answers as soon as the credentials are written, while the
    // services still restart from the config (a lifecycle action of its
    // own, which refuses a reboot): wait for the control plane's full set,
    // trustd included, which only the configured node runs.
    eventually(&tc, &args(&with(&["services"])), long, |s| {
        services_healthy(
            s,
            "127.0.0.1",
            &["apid", "routerd", "trustd", "networkd", "timed", "udevd"],
        )
    });
    let boot_id = ok(
        &tc,
        &args(&with(&["read", "/proc/sys/kernel/random/boot_id"])),
    );
    ok(&tc, &args(&with(&["reboot"])));
    eventually(
        &tc,
        &args(&with(&["read", "/proc/sys/kernel/random/boot_id"])),
        long,
        |id| !id.trim().is_empty() && id != boot_id,
    );
    ok(&tc, &args(&with(&["reset"])));
    let deadline = Instant::now() + Duration::from_secs(300);
    while vm.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the node did not power off");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(vm);
    let console = std::fs::read_to_string(work.path().join("console-after-kill.log"))
        .expect("the console log");
    assert!(
        console.contains("reset: the system disk (/dev/vda) wiped"),
        "{console}"
    );
    // Booted from elsewhere (the kernel and initramfs, as PXE would): a
    // blank disk again, ready for an install.
    let _vm = node_vm(work.path(), &disk, port, Some(&image), "after-reset");
    eventually(&none, &args(&insecure(&["version"])), long, |v| {
        v.contains("Server:")
    });
    let system_disk = ok(&none, &args(&insecure(&["get", "systemdisk"])));
    assert_eq!(system_disk.lines().count(), 1, "{system_disk}");
    let dv = ok(&none, &args(&insecure(&["get", "dv"])));
    assert!(
        dv.lines()
            .any(|l| l.split_whitespace().nth(3) == Some("vda"))
            && !dv.contains("vda1"),
        "{dv}"
    );
}
