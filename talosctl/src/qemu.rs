//! `talosctl cluster create --provisioner qemu`: nodes as QEMU virtual
//! machines booting the image `imager build` makes.
//!
//! # Design
//!
//! - **No root, no KVM needed.** Each node is one `qemu-system-x86_64`
//!   process with TCG (software emulation) and direct kernel boot
//!   (`-kernel vmlinuz -initrd initramfs.xz`). A guest reboot (through the
//!   API) resets the machine inside the same QEMU and boots the same kernel
//!   again, so QEMU runs without `-no-reboot`.
//! - **The API: user networking.** NIC 0 (`eth0`, DHCP) is QEMU's user-mode
//!   network (slirp), with `hostfwd` forwarding a free port of the host's
//!   127.0.0.1 to the guest's apid on 50000. talosctl talks to each node
//!   through `127.0.0.1:<port>`; the machine config adds `127.0.0.1` to
//!   `machine.certSANs` so the node's certificate is valid for that name.
//!   QEMU accepts the TCP connection before the guest listens, so only a
//!   successful RPC counts as "up".
//! - **The inter-node network: a loopback UDP hub.** NIC 1 (`eth1`, static
//!   `10.5.0.<2+i>/24`) is a QEMU `dgram` netdev: every Ethernet frame is
//!   one UDP datagram between the node's port and the hub's, all on
//!   127.0.0.1. The hub (`talosctl cluster hub`, a hidden subcommand started
//!   detached) repeats each frame from one node to every other node, like an
//!   Ethernet hub; frames from any other address are dropped, and it refuses
//!   to bind or send anywhere but loopback, so the cluster network is not
//!   reachable from outside the host.
//! - **The STATE disk.** Each node gets a 512 MiB sparse raw disk formatted
//!   as XFS labelled `STATE`. machined mounts it at `/system/state` and
//!   keeps the applied machine config there, so a node keeps its config
//!   over reboots.
//! - **Config.** The nodes boot without a config (maintenance mode);
//!   `create` then applies `<cluster dir>/<node>.yaml` to each through the
//!   maintenance API (`--skip-apply` leaves that to the operator) and waits
//!   until every node answers over mTLS with every service running and
//!   healthy.
//!
//! QEMU and the hub are detached (own process group, stdin closed, output
//! in log files) and their pids are recorded in `cluster.yaml`;
//! `cluster destroy` stops them by pid and then scans `/proc` for any
//! QEMU or hub whose command line still mentions the cluster directory.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use api::machine::{ApplyConfigurationRequest, apply_configuration_request};
use clap::Args;

use crate::cluster::{
    self, ClusterState, CreateArgs, NodeState, ReadyTarget, alive, signal, state_root,
};

/// The files of a boot image directory (see `imager build`).
pub const IMAGE_FILES: [&str; 3] = ["vmlinuz", "initramfs.xz", "manifest.json"];

/// The kernel command line of every node.
pub const KERNEL_ARGS: &str =
    "console=ttyS0 init_on_alloc=1 init_on_free=1 slab_nomerge pti=on talos.platform=metal";

/// Size of each node's STATE disk (sparse: it takes what XFS writes).
pub const STATE_DISK_SIZE: u64 = 512 * 1024 * 1024;

/// `--wait-timeout` of the qemu provisioner when not given: TCG boots slowly.
const QEMU_WAIT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long applying one node's config may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest UDP datagram (and so Ethernet frame) the hub repeats.
const HUB_BUFFER: usize = 65536;

/// Nodes get `10.5.0.2` ... `10.5.0.254`.
const MAX_NODES: u32 = 253;

/// The inter-node address of node `index` (0-based, control planes first).
#[must_use]
pub fn node_address(index: u32) -> Ipv4Addr {
    // MAX_NODES keeps `2 + index` within the last octet.
    Ipv4Addr::new(10, 5, 0, u8::try_from(2 + index).unwrap_or(u8::MAX))
}

// === the hub ===

/// `talosctl cluster hub` flags.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// UDP address to listen on (loopback only), the nodes' remote port.
    #[arg(long)]
    pub listen: SocketAddr,
    /// UDP address of one node's inter-node NIC (loopback only); once per node.
    #[arg(long = "peer", required = true)]
    pub peers: Vec<SocketAddr>,
    /// The cluster directory this hub serves; only recorded on the command
    /// line, so `cluster destroy` can find a hub whose pid it lost.
    #[arg(long)]
    pub cluster_dir: Option<PathBuf>,
}

/// Fails unless `addr` is an IPv4 loopback address (127.0.0.0/8): the hub
/// must never carry the cluster network off this host.
///
/// # Errors
/// `addr` is not loopback; `flag` names the offending option.
pub fn check_loopback(flag: &str, addr: SocketAddr) -> anyhow::Result<()> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(()),
        _ => bail!(
            "{flag} {addr}: the hub only uses loopback addresses (127.0.0.0/8), so the cluster network stays on this host"
        ),
    }
}

/// What the hub did with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// It came from a peer and was sent to this many other peers.
    Sent(usize),
    /// It came from an address that is not a peer.
    Dropped,
}

/// Receives one datagram on `socket` (blocking, or until the socket's read
/// timeout) and repeats it unchanged to every peer but its sender.
///
/// # Errors
/// Receiving failed (including a read timeout: `WouldBlock`/`TimedOut`).
/// Failures to send to one peer are not errors: that node's QEMU may not
/// be up yet, or may be gone, and the others still get the frame.
pub fn forward_one(
    socket: &UdpSocket,
    peers: &[SocketAddr],
    buf: &mut [u8],
) -> io::Result<Forwarded> {
    let (len, from) = socket.recv_from(buf)?;
    if !peers.contains(&from) {
        return Ok(Forwarded::Dropped);
    }
    let frame = &buf[..len];
    let mut sent = 0;
    for peer in peers.iter().filter(|peer| **peer != from) {
        if socket.send_to(frame, peer).is_ok() {
            sent += 1;
        }
    }
    Ok(Forwarded::Sent(sent))
}

/// Runs the hub until it is killed.
///
/// # Errors
/// An address is not loopback, the listen address cannot be bound, or
/// receiving fails for good.
pub fn hub(args: &HubArgs) -> anyhow::Result<()> {
    check_loopback("--listen", args.listen)?;
    for peer in &args.peers {
        check_loopback("--peer", *peer)?;
    }
    let socket = UdpSocket::bind(args.listen)
        .with_context(|| format!("hub: binding UDP {}", args.listen))?;
    eprintln!(
        "hub: repeating frames between {} peers on {}",
        args.peers.len(),
        args.listen
    );
    let mut buf = vec![0u8; HUB_BUFFER];
    loop {
        match forward_one(&socket, &args.peers, &mut buf) {
            Ok(_) => {}
            // An ICMP port-unreachable from a peer that is not up yet can
            // surface on the next receive; it says nothing about the hub.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => return Err(err).context("hub: receiving"),
        }
    }
}

// === QEMU ===

/// One virtual machine, as [`qemu_args`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Node name (QEMU's `-name`).
    pub name: String,
    /// 0-based node index: picks the MAC addresses.
    pub index: u32,
    /// The node directory (absolute): STATE disk, console log.
    pub dir: PathBuf,
    /// The boot image directory (absolute).
    pub image_dir: PathBuf,
    /// Memory in MiB.
    pub memory: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Host port on 127.0.0.1 forwarded to the guest's apid.
    pub api_port: u16,
    /// UDP port on 127.0.0.1 of the node's inter-node NIC.
    pub nic_port: u16,
    /// UDP port on 127.0.0.1 of the hub.
    pub hub_port: u16,
}

/// The state disk of the node in `dir`.
#[must_use]
pub fn state_disk(dir: &Path) -> PathBuf {
    dir.join("state.raw")
}

/// The serial console log of the node in `dir`.
#[must_use]
pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// The VM's QMP socket, through which the host presses its power button
/// ([`press_power_button`]).
#[must_use]
pub fn qmp_socket(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

/// The longest unix socket path the kernel takes (`sun_path`, 108 bytes
/// with its NUL).
const SUN_PATH_MAX: usize = 107;

/// Presses the VM's ACPI power button (QMP `system_powerdown`), as a
/// hypervisor's graceful "shut down" does: the node shuts down in order and
/// QEMU exits. Returns once QEMU has taken the command.
///
/// # Errors
/// The VM has no QMP socket (not running, or a path too long for one), or
/// QEMU refused the command.
pub fn press_power_button(dir: &Path) -> anyhow::Result<()> {
    press_power_button_at(&qmp_socket(dir))
}

/// [`press_power_button`] through the QMP socket at `path`.
///
/// # Errors
/// As [`press_power_button`].
pub fn press_power_button_at(path: &Path) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to QEMU's QMP socket {}", path.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a timeout on the QMP socket")?;
    let mut reader = BufReader::new(stream.try_clone().context("QMP socket")?);
    let mut writer = stream;
    let mut line = String::new();
    // The greeting, then each command's answer; events may come between.
    reader
        .read_line(&mut line)
        .context("reading QMP's greeting")?;
    for command in ["qmp_capabilities", "system_powerdown"] {
        writeln!(writer, "{{\"execute\":\"{command}\"}}").context("writing to QMP")?;
        loop {
            line.clear();
            if reader.read_line(&mut line).context("reading from QMP")? == 0 {
                bail!("QEMU closed the QMP socket before answering {command}");
            }
            if line.contains("\"error\"") {
                bail!("QEMU refused {command}: {}", line.trim());
            }
            if line.contains("\"return\"") {
                break;
            }
        }
    }
    Ok(())
}

/// `path` as a value inside a QEMU `key=value,...` option: commas doubled.
fn qemu_opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The arguments of `qemu-system-x86_64` (without the program) for `vm`.
#[must_use]
pub fn qemu_args(vm: &VmSpec) -> Vec<String> {
    let mac = vm.index + 2;
    let mut args = vec![
        "-accel".to_owned(),
        "tcg".to_owned(),
        "-name".to_owned(),
        vm.name.clone(),
        "-m".to_owned(),
        vm.memory.to_string(),
        "-smp".to_owned(),
        vm.cpus.to_string(),
        "-display".to_owned(),
        "none".to_owned(),
        "-monitor".to_owned(),
        "none".to_owned(),
        // `file:` takes the rest of the argument as the path: no escaping.
        "-serial".to_owned(),
        format!("file:{}", console_log(&vm.dir).display()),
        "-kernel".to_owned(),
        vm.image_dir.join("vmlinuz").display().to_string(),
        "-initrd".to_owned(),
        vm.image_dir.join("initramfs.xz").display().to_string(),
        "-append".to_owned(),
        KERNEL_ARGS.to_owned(),
        "-drive".to_owned(),
        format!(
            "file={},format=raw,if=virtio",
            qemu_opt_path(&state_disk(&vm.dir))
        ),
        "-netdev".to_owned(),
        format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{}",
            vm.api_port,
            machinery::constants::APID_PORT
        ),
        "-device".to_owned(),
        format!("virtio-net-pci,netdev=net0,mac=52:54:00:5a:00:{mac:02x}"),
        "-netdev".to_owned(),
        format!(
            "dgram,id=net1,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            vm.nic_port, vm.hub_port
        ),
        "-device".to_owned(),
        format!("virtio-net-pci,netdev=net1,mac=52:54:00:5b:00:{mac:02x}"),
        // Host entropy: the guest's pool is ready at once instead of
        // stalling the first getrandom() under emulation.
        "-device".to_owned(),
        "virtio-rng-pci".to_owned(),
    ];
    // QMP, for the power button, where the path fits a unix socket.
    let qmp = qmp_socket(&vm.dir);
    if qmp.as_os_str().len() <= SUN_PATH_MAX {
        args.push("-qmp".to_owned());
        args.push(format!("unix:{},server=on,wait=off", qemu_opt_path(&qmp)));
    }
    args
}

// === config ===

/// The patch that makes a base config node `hostname`'s: its hostname,
/// DHCP on eth0 (user networking), `address/24` on eth1 (the hub), and
/// `cert_sans` as `machine.certSANs`.
#[must_use]
pub fn node_patch(hostname: &str, address: Ipv4Addr, cert_sans: &[String]) -> String {
    // JSON is YAML, and serde_json quotes whatever the names contain.
    serde_json::json!({
        "machine": {
            "network": {
                "hostname": hostname,
                "interfaces": [
                    { "interface": "eth0", "dhcp": true },
                    { "interface": "eth1", "addresses": [format!("{address}/24")] },
                ],
            },
            "certSANs": cert_sans,
            // These nodes run from the kernel and initramfs with a STATE
            // disk of their own: nothing to install (an install disk in
            // maintenance would make them try).
            "install": { "disk": "" },
        }
    })
    .to_string()
}

/// Node `hostname`'s config: `base` (the generated controlplane or worker
/// config) with [`node_patch`] applied. `127.0.0.1` joins the SANs `base`
/// already has (merge patches replace lists), since talosctl reaches the
/// node's apid through a port forwarded on 127.0.0.1.
///
/// # Errors
/// `base` does not parse or the patched config is invalid.
pub fn node_config(base: &str, hostname: &str, address: Ipv4Addr) -> anyhow::Result<String> {
    let parsed = machinery::config::parse(base.as_bytes())
        .map_err(|err| anyhow!("the generated config: {err}"))?;
    let mut sans = parsed.cert_sans().to_vec();
    if !sans.iter().any(|san| san == "127.0.0.1") {
        sans.push("127.0.0.1".to_owned());
    }
    machinery::generate::apply_patch(base, &node_patch(hostname, address, &sans))
        .map_err(|err| anyhow!("the config of node {hostname}: {err}"))
}

// === host checks ===

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in `$PATH`, then in `extra` directories.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn missing_image_files(dir: &Path) -> Vec<&'static str> {
    IMAGE_FILES
        .into_iter()
        .filter(|file| !dir.join(file).is_file())
        .collect()
}

/// The boot image directory, absolute; built with the `imager` beside
/// talosctl when files are missing and imager is there.
fn ensure_image(dir: &Path) -> anyhow::Result<PathBuf> {
    let missing = missing_image_files(dir);
    if !missing.is_empty() {
        let no_image = || {
            anyhow!(
                "no boot image in {dir}: build it with `scripts/image` (or `imager build --output {dir}`); missing: {}",
                missing.join(", "),
                dir = dir.display()
            )
        };
        let imager = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|bin| bin.join("imager")))
            .filter(|imager| is_executable(imager))
            .ok_or_else(no_image)?;
        eprintln!(
            "no boot image in {}: building it with {}",
            dir.display(),
            imager.display()
        );
        let status = Command::new(&imager)
            .arg("build")
            .arg("--output")
            .arg(dir)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {}", imager.display()))?;
        if !status.success() {
            bail!(
                "`{} build --output {}` failed ({status}): see its output above",
                imager.display(),
                dir.display()
            );
        }
        let still = missing_image_files(dir);
        if !still.is_empty() {
            bail!(
                "`imager build --output {}` did not produce {}",
                dir.display(),
                still.join(", ")
            );
        }
    }
    std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// A cluster name becomes part of hostnames and QEMU options.
fn check_cluster_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "cluster name {name:?}: use up to 40 letters, digits and inner '-' (it becomes part of the node hostnames)"
        );
    }
    Ok(())
}

// === files and processes ===

/// Writes `data` to `path` (atomically), readable by the owner only:
/// configs carry the cluster's secrets.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    machinery::fsutil::write_atomic(path, data, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates the sparse STATE disk at `path` and formats it.
fn make_state_disk(mkfs: &Path, path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(STATE_DISK_SIZE)
        .with_context(|| format!("sizing {}", path.display()))?;
    drop(file);
    let out = Command::new(mkfs)
        .args(["-q", "-L", "STATE"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", mkfs.display()))?;
    if !out.status.success() {
        bail!(
            "{} -q -L STATE {} failed ({}): {}",
            mkfs.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Free TCP ports on 127.0.0.1, all distinct (the listeners are held until
/// every port is picked).
fn free_tcp_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .context("picking free TCP ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|addr| addr.port()))
        .collect::<io::Result<Vec<u16>>>()
        .context("picking free TCP ports on 127.0.0.1")
}

/// Free UDP ports on 127.0.0.1, all distinct.
fn free_udp_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let sockets = (0..count)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .context("picking free UDP ports on 127.0.0.1")?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|addr| addr.port()))
        .collect::<io::Result<Vec<u16>>>()
        .context("picking free UDP ports on 127.0.0.1")
}

/// Starts `program args` detached: its own process group (a Ctrl-C of this
/// command does not reach it), stdin closed, stdout and stderr into `log`.
/// Returns its pid.
fn spawn_detached(program: &Path, args: &[String], log: &Path) -> anyhow::Result<u32> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Not waited for: a long-lived daemon, reparented to init when this
    // command exits.
    Ok(child.id())
}

// === create ===

/// One node being created.
struct Planned {
    name: String,
    role: &'static str,
    address: Ipv4Addr,
    dir: PathBuf,
    config_path: PathBuf,
    config: String,
    api_port: u16,
    nic_port: u16,
}

/// `cluster create --provisioner qemu`.
///
/// # Errors
/// Whatever stops the command, with a message for the operator.
pub(crate) async fn create(args: &CreateArgs, talosconfig_path: &Path) -> anyhow::Result<()> {
    check_cluster_name(&args.name)?;
    if args.controlplanes == 0 {
        bail!("a cluster needs at least one control plane (--controlplanes)");
    }
    let total = args.controlplanes.saturating_add(args.workers);
    if total > MAX_NODES {
        bail!("the qemu provisioner runs at most {MAX_NODES} nodes (10.5.0.2-254), not {total}");
    }
    if args.cpus == 0 {
        bail!("--cpus must be at least 1");
    }
    if args.memory < 256 {
        bail!(
            "--memory {} MiB is too little to boot a node: give at least 256",
            args.memory
        );
    }
    let timeout = args.wait_timeout.unwrap_or(QEMU_WAIT_TIMEOUT);
    let dir = std::path::absolute(state_root(args.state.as_deref())?.join(&args.name))
        .context("resolving the state directory")?;
    if dir.join("cluster.yaml").exists() {
        bail!(
            "cluster {:?} already exists at {}: run \"talosctl cluster destroy --name {}\" first",
            args.name,
            dir.display(),
            args.name
        );
    }
    if dir.to_str().is_none() {
        bail!(
            "the cluster directory {} is not UTF-8: QEMU cannot be given it; pass another --state",
            dir.display()
        );
    }

    let image_dir = ensure_image(&args.image_dir)?;
    let qemu = find_program("qemu-system-x86_64", &[]).context(
        "qemu-system-x86_64 is not on PATH: install the package qemu-system-x86 (scripts/setup does)",
    )?;
    let mkfs = find_program("mkfs.xfs", &["/usr/sbin", "/sbin"]).context(
        "mkfs.xfs is not on PATH, /usr/sbin or /sbin: install the package xfsprogs (scripts/setup does)",
    )?;

    let endpoint_ip = node_address(0);
    let (bundle, generated) =
        cluster::generate_configs(&args.name, format!("https://{endpoint_ip}:6443")).await?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join("secrets.yaml"), bundle.to_yaml()?.as_bytes())?;

    let count = usize::try_from(total)?;
    let api_ports = free_tcp_ports(count)?;
    // One per node, and the hub's last.
    let udp_ports = free_udp_ports(count + 1)?;
    let hub_port = udp_ports[count];

    eprintln!("preparing {total} nodes (configs and STATE disks)");
    let mut planned = Vec::with_capacity(count);
    for i in 0..total {
        let index = usize::try_from(i)?;
        let (role, n) = if i < args.controlplanes {
            ("controlplane", i + 1)
        } else {
            ("worker", i - args.controlplanes + 1)
        };
        let name = format!("{}-{role}-{n}", args.name);
        let address = node_address(i);
        let base = if role == "controlplane" {
            &generated.controlplane_yaml
        } else {
            &generated.worker_yaml
        };
        let config = node_config(base, &name, address)?;
        let config_path = dir.join(format!("{name}.yaml"));
        write_private(&config_path, config.as_bytes())?;
        let node_dir = dir.join(&name);
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        make_state_disk(&mkfs, &state_disk(&node_dir))?;
        planned.push(Planned {
            name,
            role,
            address,
            dir: node_dir,
            config_path,
            config,
            api_port: api_ports[index],
            nic_port: udp_ports[index],
        });
    }

    // The hub first: the nodes' first frames go to it.
    let mut hub_args: Vec<String> = vec![
        "cluster".into(),
        "hub".into(),
        "--listen".into(),
        format!("127.0.0.1:{hub_port}"),
    ];
    for node in &planned {
        hub_args.push("--peer".into());
        hub_args.push(format!("127.0.0.1:{}", node.nic_port));
    }
    hub_args.push("--cluster-dir".into());
    hub_args.push(dir.display().to_string());
    let exe = std::env::current_exe().context("locating talosctl")?;
    let hub_log = dir.join("hub.log");
    let hub_pid = spawn_detached(&exe, &hub_args, &hub_log)?;
    let mut state = ClusterState {
        name: args.name.clone(),
        provisioner: "qemu".to_owned(),
        nodes: Vec::with_capacity(count),
        hub_pid: Some(hub_pid),
        image_dir: Some(image_dir.clone()),
    };
    // Recorded at once, so `cluster destroy` can clean up a failed create.
    cluster::save_state(&dir, &state)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !alive(hub_pid) {
        bail!(
            "the inter-node network hub exited at once: see {}; then run \"talosctl cluster destroy --name {}\"",
            hub_log.display(),
            args.name
        );
    }

    eprintln!("starting {total} QEMU virtual machines");
    for (i, node) in planned.iter().enumerate() {
        let vm = VmSpec {
            name: node.name.clone(),
            index: u32::try_from(i)?,
            dir: node.dir.clone(),
            image_dir: image_dir.clone(),
            memory: args.memory,
            cpus: args.cpus,
            api_port: node.api_port,
            nic_port: node.nic_port,
            hub_port,
        };
        let pid = spawn_detached(&qemu, &qemu_args(&vm), &node.dir.join("qemu.log"))?;
        state.nodes.push(NodeState {
            name: node.name.clone(),
            role: node.role.to_owned(),
            ip: node.address.to_string(),
            pid,
            root: node.dir.clone(),
            api_port: Some(node.api_port),
            console: Some(console_log(&node.dir)),
        });
        cluster::save_state(&dir, &state)?;
    }

    let mut context_config = generated.talosconfig.clone();
    if let Some(ctx) = context_config.contexts.get_mut(&args.name) {
        ctx.endpoints = vec![format!("127.0.0.1:{}", planned[0].api_port)];
        ctx.nodes = vec![endpoint_ip.to_string()];
    }

    eprintln!("waiting for {total} nodes to boot into maintenance mode (up to {timeout:?})");
    wait_maintenance(&state, timeout)
        .await
        .map_err(|err| err.context(destroy_hint(&args.name)))?;

    if !args.skip_apply {
        eprintln!("applying the machine configs");
        for (node, plan) in state.nodes.iter().zip(&planned) {
            apply_config(node, plan).await?;
        }
        let targets: Vec<ReadyTarget> = state
            .nodes
            .iter()
            .map(|node| ReadyTarget {
                name: node.name.clone(),
                addr: format!("127.0.0.1:{}", node.api_port.unwrap_or_default()),
                server_name: "127.0.0.1".to_owned(),
                log: console_log(&node.root),
                pid: Some(node.pid),
                node: Some(node.ip.clone()),
            })
            .collect();
        // No health checks here, unlike the process provisioner: these
        // nodes run from the image with a STATE disk and are not installed,
        // so "all nodes disk sizes" would find no EPHEMERAL partition.
        if args.wait {
            eprintln!("waiting for {total} nodes to be ready (up to {timeout:?})");
            cluster::wait_ready(&context_config, &args.name, &targets, timeout, true)
                .await
                .map_err(|err| err.context(destroy_hint(&args.name)))?;
        }
    }

    let context = cluster::merge_talosconfig(talosconfig_path, context_config)?;

    cluster::print_cluster(&state);
    println!();
    println!("next:");
    if args.skip_apply {
        println!("  # the nodes are in maintenance mode: apply their configs");
        for plan in &planned {
            println!(
                "  talosctl apply-config --insecure -n 127.0.0.1:{} --file {}",
                plan.api_port,
                plan.config_path.display()
            );
        }
    }
    println!("  talosctl --context {context} version");
    println!(
        "  talosctl --context {context} -n {} services",
        state
            .nodes
            .iter()
            .map(|n| n.ip.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "  consoles: {}",
        dir.join("<node>").join("console.log").display()
    );
    println!("  talosctl cluster destroy --name {}", args.name);
    Ok(())
}

pub(crate) fn destroy_hint(name: &str) -> String {
    format!(
        "cluster {name:?} is not ready (remove it with \"talosctl cluster destroy --name {name}\")"
    )
}

/// Waits until every node answers Version through its maintenance API
/// (TLS, any server certificate, no client certificate).
async fn wait_maintenance(state: &ClusterState, timeout: Duration) -> anyhow::Result<()> {
    let tls: Arc<rustls::ClientConfig> = crate::client::insecure_tls_config()?;
    let deadline = Instant::now() + timeout;
    for node in &state.nodes {
        let port = node
            .api_port
            .with_context(|| format!("node {} has no API port", node.name))?;
        let addr = format!("127.0.0.1:{port}");
        let console = console_log(&node.root);
        loop {
            if !alive(node.pid) {
                bail!(
                    "QEMU of node {} (pid {}) exited: see {} and {}",
                    node.name,
                    node.pid,
                    node.root.join("qemu.log").display(),
                    console.display()
                );
            }
            let last = match cluster::probe_version(&addr, "127.0.0.1", &tls).await {
                Ok(()) => {
                    eprintln!("  {} is in maintenance mode", node.name);
                    break;
                }
                Err(err) => err,
            };
            if Instant::now() > deadline {
                bail!(
                    "node {} did not answer on {addr} within {timeout:?}: {last}; see {}",
                    node.name,
                    console.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Applies `plan.config` to `node` through its maintenance API.
async fn apply_config(node: &NodeState, plan: &Planned) -> anyhow::Result<()> {
    let by_hand = || {
        format!(
            "apply it by hand with \"talosctl apply-config --insecure -n 127.0.0.1:{} --file {}\" (console: {})",
            plan.api_port,
            plan.config_path.display(),
            console_log(&node.root).display()
        )
    };
    let tls = crate::client::insecure_tls_config()?;
    let channel =
        machinery::grpc::tls_channel(format!("127.0.0.1:{}", plan.api_port), "127.0.0.1", tls)?;
    let request = ApplyConfigurationRequest {
        data: plan.config.clone().into_bytes(),
        mode: apply_configuration_request::Mode::Auto as i32,
        dry_run: false,
        try_mode_timeout: None,
    };
    let reply = match tokio::time::timeout(
        APPLY_TIMEOUT,
        crate::client::machine(channel).apply_configuration(tonic::Request::new(request)),
    )
    .await
    {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(status)) => bail!(
            "applying the config of node {}: {}; {}",
            node.name,
            cluster::status_text(&status),
            by_hand()
        ),
        Err(_) => bail!(
            "applying the config of node {}: no answer within {APPLY_TIMEOUT:?}; {}",
            node.name,
            by_hand()
        ),
    };
    for message in &reply.messages {
        if let Some(err) = crate::client::node_error(message.metadata.as_ref()) {
            bail!(
                "applying the config of node {}: {err}; {}",
                node.name,
                by_hand()
            );
        }
        for warning in &message.warnings {
            eprintln!("  {}: warning: {warning}", node.name);
        }
        let details = message.mode_details.trim();
        if details.is_empty() {
            eprintln!("  {}: config applied", node.name);
        } else {
            eprintln!("  {}: {details}", node.name);
        }
    }
    Ok(())
}

// === destroy ===

/// Whether the command line `cmdline` (NUL-separated) is one of a
/// cluster's QEMUs or its hub, and mentions the cluster directory `dir`.
///
/// QEMU arguments carry node paths inside options (`file:<dir>/<node>/...`),
/// so QEMUs match on `<dir>/` as a substring (the slash keeps cluster
/// `demo` from matching `demo2`); the hub has `--cluster-dir <dir>` as a
/// whole argument. Only QEMU and hub command lines count, so an editor or
/// `tail` showing a node's console is left alone.
#[must_use]
pub fn is_cluster_process(cmdline: &[u8], dir: &Path) -> bool {
    let dir = dir.as_os_str().as_encoded_bytes();
    if dir.is_empty() {
        return false;
    }
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .collect();
    let Some(&argv0) = args.first() else {
        return false;
    };
    let program = argv0.rsplit(|b| *b == b'/').next().unwrap_or(argv0);
    if program.starts_with(b"qemu-system") {
        let mut needle = dir.to_vec();
        if !needle.ends_with(b"/") {
            needle.push(b'/');
        }
        return args
            .iter()
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle.as_slice()));
    }
    let is_hub = args
        .windows(2)
        .any(|pair| pair[0] == b"cluster" && pair[1] == b"hub");
    is_hub
        && args
            .windows(2)
            .any(|pair| pair[0] == b"--cluster-dir" && pair[1] == dir)
}

/// Whether `pid` is alive and one of the cluster's processes (a recorded
/// pid may have been reused by an unrelated process since).
fn belongs(pid: u32, dir: &Path) -> bool {
    pid != std::process::id()
        && alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| is_cluster_process(&cmdline, dir))
}

/// The live processes of the cluster in `dir`: the recorded pids that still
/// belong to it and whatever else `/proc` shows.
fn cluster_processes(dir: &Path, recorded: &[u32]) -> Vec<u32> {
    let mut pids: Vec<u32> = recorded
        .iter()
        .copied()
        .filter(|pid| belongs(*pid, dir))
        .collect();
    for pid in crate::cluster::pids() {
        if !pids.contains(&pid) && belongs(pid, dir) {
            pids.push(pid);
        }
    }
    pids
}

/// `cluster destroy` of a qemu cluster: SIGTERM to every QEMU and the hub,
/// SIGKILL after 10 s, then the cluster directory goes.
///
/// # Errors
/// A process survives SIGKILL, or the directory cannot be removed.
pub(crate) fn destroy(dir: &Path, state: &ClusterState) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).context("resolving the cluster directory")?;
    let recorded: Vec<u32> = state
        .nodes
        .iter()
        .map(|node| node.pid)
        .chain(state.hub_pid)
        .collect();
    let wait_gone = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let left = cluster_processes(&dir, &recorded);
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for pid in cluster_processes(&dir, &recorded) {
        signal(pid, "-TERM");
    }
    // QEMU exits at once on SIGTERM; the guest is not asked to shut down
    // (its state is the STATE disk, which goes with the directory anyway).
    let left = wait_gone(Duration::from_secs(10));
    for pid in &left {
        signal(*pid, "-KILL");
    }
    let left = if left.is_empty() {
        left
    } else {
        wait_gone(Duration::from_secs(5))
    };
    if !left.is_empty() {
        bail!(
            "processes {left:?} of cluster {:?} are still running: stop them (kill -KILL) and run destroy again",
            state.name
        );
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    println!("destroyed cluster {:?}", state.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_socket() -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        socket
    }

    fn receive(socket: &UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => Some(buf[..len].to_vec()),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(err) => panic!("recv: {err}"),
        }
    }

    #[test]
    fn the_hub_repeats_to_the_other_peers_only() {
        let hub = loopback_socket();
        let hub_addr = hub.local_addr().expect("addr");
        let (a, b, c) = (loopback_socket(), loopback_socket(), loopback_socket());
        let peers: Vec<SocketAddr> = [&a, &b, &c]
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        let mut buf = vec![0u8; HUB_BUFFER];

        a.send_to(b"frame from a", hub_addr).expect("send");
        assert_eq!(
            forward_one(&hub, &peers, &mut buf).expect("forward"),
            Forwarded::Sent(2)
        );
        assert_eq!(receive(&b).as_deref(), Some(&b"frame from a"[..]));
        assert_eq!(receive(&c).as_deref(), Some(&b"frame from a"[..]));
        assert_eq!(receive(&a), None, "the sender must not get its frame back");
    }

    #[test]
    fn the_hub_drops_strangers() {
        let hub = loopback_socket();
        let hub_addr = hub.local_addr().expect("addr");
        let (a, b) = (loopback_socket(), loopback_socket());
        let stranger = loopback_socket();
        let peers: Vec<SocketAddr> = [&a, &b]
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        let mut buf = vec![0u8; HUB_BUFFER];

        stranger.send_to(b"intruder", hub_addr).expect("send");
        assert_eq!(
            forward_one(&hub, &peers, &mut buf).expect("forward"),
            Forwarded::Dropped
        );
        assert_eq!(receive(&a), None);
        assert_eq!(receive(&b), None);
    }

    #[test]
    fn only_loopback_addresses() {
        let ok: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let also_ok: SocketAddr = "127.5.0.9:4000".parse().expect("addr");
        assert!(check_loopback("--listen", ok).is_ok());
        assert!(check_loopback("--peer", also_ok).is_ok());
        for bad in [
            "0.0.0.0:4000",
            "10.5.0.2:4000",
            "192.168.1.1:4000",
            "[::1]:4000",
        ] {
            let addr: SocketAddr = bad.parse().expect("addr");
            let err = check_loopback("--peer", addr).expect_err(bad);
            assert!(err.to_string().contains("loopback"), "{err}");
        }
    }

    fn spec_for_tests() -> VmSpec {
        VmSpec {
            name: "demo-worker-1".into(),
            index: 1,
            dir: PathBuf::from("/state/demo/demo-worker-1"),
            image_dir: PathBuf::from("/src/_out"),
            memory: 768,
            cpus: 2,
            api_port: 40001,
            nic_port: 40002,
            hub_port: 40003,
        }
    }

    #[test]
    fn qemu_arguments() {
        let vm = spec_for_tests();
        let args = qemu_args(&vm);
        let after = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|pair| pair[0] == flag)
                .map(|pair| pair[1].as_str())
                .collect()
        };
        assert_eq!(after("-accel"), ["tcg"]);
        assert_eq!(after("-name"), ["demo-worker-1"]);
        assert_eq!(after("-m"), ["768"]);
        assert_eq!(after("-smp"), ["2"]);
        assert_eq!(
            after("-serial"),
            ["file:/state/demo/demo-worker-1/console.log"]
        );
        assert_eq!(after("-kernel"), ["/src/_out/vmlinuz"]);
        assert_eq!(after("-initrd"), ["/src/_out/initramfs.xz"]);
        assert_eq!(after("-append"), [KERNEL_ARGS]);
        assert_eq!(
            after("-drive"),
            ["file=/state/demo/demo-worker-1/state.raw,format=raw,if=virtio"]
        );
        assert_eq!(
            after("-netdev"),
            [
                "user,id=net0,hostfwd=tcp:127.0.0.1:40001-:50000",
                "dgram,id=net1,local.type=inet,local.host=127.0.0.1,local.port=40002,remote.type=inet,remote.host=127.0.0.1,remote.port=40003",
            ]
        );
        assert_eq!(
            after("-device"),
            [
                "virtio-net-pci,netdev=net0,mac=52:54:00:5a:00:03",
                "virtio-net-pci,netdev=net1,mac=52:54:00:5b:00:03",
                "virtio-rng-pci",
            ]
        );
        assert_eq!(
            after("-qmp"),
            ["unix:/state/demo/demo-worker-1/qmp.sock,server=on,wait=off"]
        );
        assert!(!args.iter().any(|a| a == "-no-reboot"));
    }

    /// A QMP socket path too long for a unix socket is left out rather
    /// than make QEMU fail to start.
    #[test]
    fn no_qmp_socket_where_the_path_is_too_long() {
        let vm = VmSpec {
            dir: PathBuf::from(format!("/{}/vm", "d".repeat(120))),
            ..spec_for_tests()
        };
        assert!(!qemu_args(&vm).iter().any(|a| a == "-qmp"));
    }

    /// The power button through a QMP server standing in for QEMU's: the
    /// greeting, then each command answered (an event in between), and
    /// a refusal named.
    #[test]
    fn the_power_button_is_pressed_through_qmp() {
        use std::io::{BufRead as _, BufReader, Write as _};
        let dir = tempfile::tempdir().expect("tempdir");
        let serve = |refuse: bool| {
            let listener =
                std::os::unix::net::UnixListener::bind(qmp_socket(dir.path())).expect("bind");
            std::thread::spawn(move || {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                writeln!(
                    writer,
                    "{{\"QMP\": {{\"version\": {{}}, \"capabilities\": []}}}}"
                )
                .expect("greeting");
                let mut asked = Vec::new();
                let mut line = String::new();
                while reader.read_line(&mut line).expect("read") > 0 {
                    asked.push(line.trim().to_owned());
                    if refuse && line.contains("system_powerdown") {
                        writeln!(writer, "{{\"error\": {{\"class\": \"GenericError\"}}}}")
                            .expect("error");
                    } else {
                        writeln!(writer, "{{\"event\": \"X\"}}").expect("event");
                        writeln!(writer, "{{\"return\": {{}}}}").expect("return");
                    }
                    line.clear();
                }
                asked
            })
        };
        let server = serve(false);
        press_power_button(dir.path()).expect("pressed");
        assert_eq!(
            server.join().expect("server"),
            [
                "{\"execute\":\"qmp_capabilities\"}",
                "{\"execute\":\"system_powerdown\"}"
            ]
        );
        std::fs::remove_file(qmp_socket(dir.path())).expect("rm");
        let server = serve(true);
        let err = press_power_button(dir.path()).expect_err("refused");
        assert!(
            err.to_string().contains("refused system_powerdown"),
            "{err}"
        );
        server.join().expect("server");
        std::fs::remove_file(qmp_socket(dir.path())).expect("rm");
        assert!(press_power_button(dir.path()).is_err(), "no VM");
    }

    #[test]
    fn drive_paths_escape_commas() {
        let vm = VmSpec {
            name: "n".into(),
            index: 0,
            dir: PathBuf::from("/odd,dir/n"),
            image_dir: PathBuf::from("/img"),
            memory: 512,
            cpus: 1,
            api_port: 1,
            nic_port: 2,
            hub_port: 3,
        };
        assert!(
            qemu_args(&vm)
                .iter()
                .any(|a| a == "file=/odd,,dir/n/state.raw,format=raw,if=virtio")
        );
    }

    #[test]
    fn node_addresses() {
        assert_eq!(node_address(0), Ipv4Addr::new(10, 5, 0, 2));
        assert_eq!(node_address(3), Ipv4Addr::new(10, 5, 0, 5));
        assert_eq!(node_address(MAX_NODES - 1), Ipv4Addr::new(10, 5, 0, 254));
    }

    #[test]
    fn node_config_sets_hostname_interfaces_and_sans() {
        let now = std::time::SystemTime::now();
        let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
        let opts = machinery::generate::GenOptions::new("demo", "https://10.5.0.2:6443");
        let generated = machinery::generate::generate(&bundle, &opts, now).expect("generate");
        let yaml = node_config(
            &generated.worker_yaml,
            "demo-worker-1",
            Ipv4Addr::new(10, 5, 0, 3),
        )
        .expect("patch");
        let config = machinery::config::parse(yaml.as_bytes()).expect("parse");
        assert_eq!(config.hostname(), Some("demo-worker-1"));
        assert_eq!(config.install_disk(), None);
        assert!(config.cert_sans().iter().any(|san| san == "127.0.0.1"));
        let network = config
            .v1alpha1()
            .machine
            .as_ref()
            .and_then(|machine| machine.network.as_ref())
            .expect("network");
        let interfaces = network.interfaces.as_deref().expect("interfaces");
        let eth = |name: &str| {
            interfaces
                .iter()
                .find(|device| device.interface.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(eth("eth0").dhcp, Some(true));
        assert_eq!(
            eth("eth1").addresses.as_deref(),
            Some(&["10.5.0.3/24".to_owned()][..])
        );
    }

    #[test]
    fn cluster_processes_are_recognised_by_command_line() {
        let dir = Path::new("/home/u/.talos/clusters/demo");
        let qemu = b"/usr/bin/qemu-system-x86_64\0-serial\0file:/home/u/.talos/clusters/demo/demo-controlplane-1/console.log\0";
        assert!(is_cluster_process(qemu, dir));
        // Another cluster whose name starts the same.
        let other = b"qemu-system-x86_64\0-serial\0file:/home/u/.talos/clusters/demo2/demo2-worker-1/console.log\0";
        assert!(!is_cluster_process(other, dir));
        let hub = b"/usr/local/bin/talosctl\0cluster\0hub\0--listen\x00127.0.0.1:1\0--peer\x00127.0.0.1:2\0--cluster-dir\0/home/u/.talos/clusters/demo\0";
        assert!(is_cluster_process(hub, dir));
        let other_hub = b"talosctl\0cluster\0hub\0--cluster-dir\0/home/u/.talos/clusters/demo2\0";
        assert!(!is_cluster_process(other_hub, dir));
        // An operator reading a console is not the cluster.
        let tail = b"tail\0-f\0/home/u/.talos/clusters/demo/demo-controlplane-1/console.log\0";
        assert!(!is_cluster_process(tail, dir));
        assert!(!is_cluster_process(b"", dir));
    }

    #[test]
    fn cluster_names() {
        assert!(check_cluster_name("talos-default").is_ok());
        assert!(check_cluster_name("demo2").is_ok());
        let long = "x".repeat(41);
        for bad in ["", "-x", "x-", "a,b", "a b", "a/b", long.as_str()] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
    }
}
