//! networkd against a real kernel and a real DHCP server, inside network
//! namespaces that the test makes and removes.
//!
//! Each test makes two namespaces joined by a veth pair: `nd-cli-<pid>-<t>`,
//! where the networkd binary runs (`ip netns exec`), and `nd-srv-<pid>-<t>`,
//! where dnsmasq serves DHCP. Addresses (10.99.x.0/24) exist only inside
//! those namespaces; nothing is configured in the host namespace. The
//! checks read the kernel's state with `ip -j` and networkd's files under a
//! temporary root; the gRPC API is called through the unix socket, which
//! works across network namespaces.
//!
//! Needs root, `ip` (iproute2) and `dnsmasq` (Debian: dnsmasq-base). These
//! tests FAIL, not skip, without them: CI runs as root.
//!
//! dnsmasq will not lease for less than two minutes (T1 one minute), so the
//! DHCP test starts networkd with the hidden `--dhcp-renew-after 3`, which
//! caps T1 at 3 s, to see a renewal quickly.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

const NETWORKD: &str = env!("CARGO_BIN_EXE_networkd");

fn require_root_and_tools() {
    assert!(
        rustix::process::geteuid().is_root(),
        "tests/netns.rs needs root (network namespaces, veth links, DHCP on port 68); \
         run it as root, as CI does"
    );
    for (tool, args, package) in [
        ("ip", &["-V"][..], "iproute2"),
        ("dnsmasq", &["--version"][..], "dnsmasq-base"),
    ] {
        let found = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "tests/netns.rs needs `{tool}` (Debian package {package}); install it"
        );
    }
}

/// Runs a command; panics with its output if it fails.
fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `ip -j -n <ns> <args>`, parsed.
fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut command = vec!["ip", "-j", "-n", ns];
    command.extend_from_slice(args);
    let text = run(&command);
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {command:?} output {text:?}: {e}"))
}

/// The IPv4 addresses on `dev` in `ns`, with their prefixes.
fn ipv4_addresses(ns: &str, dev: &str) -> Vec<(Ipv4Addr, u64)> {
    let links = ip_json(ns, &["addr", "show", "dev", dev]);
    let mut out = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        for info in link["addr_info"].as_array().into_iter().flatten() {
            if info["family"] == "inet"
                && let (Some(local), Some(prefix)) =
                    (info["local"].as_str(), info["prefixlen"].as_u64())
                && let Ok(ip) = local.parse()
            {
                out.push((ip, prefix));
            }
        }
    }
    out
}

/// `ip -j link show dev <dev>` in `ns`: the one link object.
fn link(ns: &str, dev: &str) -> Value {
    let links = ip_json(ns, &["link", "show", "dev", dev]);
    links
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no link {dev} in {ns}"))
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "UP"))
}

/// The IPv4 main-table routes in `ns`.
fn routes(ns: &str) -> Vec<Value> {
    ip_json(ns, &["-4", "route", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `check` every 100 ms until it yields, or panics after `timeout`
/// naming `what` and showing `context()`.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Namespaces {
    cli: String,
    srv: String,
    /// The veth end in `cli` (networkd's link).
    cli_link: String,
    /// The veth end in `srv`.
    srv_link: String,
}

impl Namespaces {
    /// Makes the pair; `server_cidr` goes on the server end, which is up.
    fn new(tag: char, server_cidr: &str) -> Namespaces {
        let pid = std::process::id();
        let namespaces = Namespaces {
            cli: format!("nd-cli-{pid}-{tag}"),
            srv: format!("nd-srv-{pid}-{tag}"),
            cli_link: format!("c{tag}{pid}"),
            srv_link: format!("s{tag}{pid}"),
        };
        // Made before anything can fail, so Drop cleans up partial setups.
        run(&["ip", "netns", "add", &namespaces.cli]);
        run(&["ip", "netns", "add", &namespaces.srv]);
        run(&[
            "ip",
            "link",
            "add",
            &namespaces.cli_link,
            "netns",
            &namespaces.cli,
            "type",
            "veth",
            "peer",
            "name",
            &namespaces.srv_link,
            "netns",
            &namespaces.srv,
        ]);
        // The DHCP client receives the server's broadcasts before it has
        // an address: reverse-path filtering must be off (the kernel's
        // default; some hosts turn it on and new namespaces inherit that).
        let rp_filter = format!(
            "for f in all default {link}; do echo 0 > /proc/sys/net/ipv4/conf/$f/rp_filter; done",
            link = namespaces.cli_link
        );
        run(&[
            "ip",
            "netns",
            "exec",
            &namespaces.cli,
            "sh",
            "-c",
            &rp_filter,
        ]);
        run(&["ip", "-n", &namespaces.srv, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &namespaces.srv,
            "addr",
            "add",
            server_cidr,
            "dev",
            &namespaces.srv_link,
        ]);
        run(&[
            "ip",
            "-n",
            &namespaces.srv,
            "link",
            "set",
            &namespaces.srv_link,
            "up",
        ]);
        namespaces
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A child process with its log; stopped (SIGTERM, then SIGKILL) on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], log: PathBuf) -> Proc {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({args:?}): {e}"));
        Proc {
            name,
            child,
            log,
            status: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn context(&self) -> String {
        format!("--- {} log ---\n{}", self.name, self.log())
    }

    /// SIGTERM, then up to 10 s for a clean exit, then SIGKILL.
    fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.status = Some(status);
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// dnsmasq serving 10.99.7.50-60 on the server end, router and DNS
/// 10.99.7.1, 2-minute leases (its minimum).
fn start_dnsmasq(ns: &Namespaces, dir: &Path) -> Proc {
    let (interface, net) = (&ns.srv_link, "10.99.7");
    let leases = dir.join("dnsmasq.leases");
    let server = Proc::spawn(
        "dnsmasq",
        &[
            "ip",
            "netns",
            "exec",
            &ns.srv,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            &format!("--interface={interface}"),
            "--bind-interfaces",
            &format!("--dhcp-range={net}.50,{net}.60,120s"),
            &format!("--dhcp-option=option:router,{net}.1"),
            &format!("--dhcp-option=option:dns-server,{net}.1"),
            &format!("--dhcp-leasefile={}", leases.display()),
            "--port=0",
            "--no-ping",
            "--log-dhcp",
        ],
        dir.join("dnsmasq.log"),
    );
    wait_for(
        Duration::from_secs(10),
        "dnsmasq to start",
        || server.context(),
        || server.log().contains("DHCP, IP range").then_some(()),
    );
    server
}

/// The networkd binary in `ns.cli`, rooted at `root`, with `cmdline` as
/// the kernel command line.
fn start_networkd(ns: &Namespaces, dir: &Path, root: &Path, cmdline: &str) -> Proc {
    let cmdline_file = dir.join("cmdline");
    std::fs::write(&cmdline_file, cmdline).expect("cmdline");
    let root = root.display().to_string();
    let cmdline_file = cmdline_file.display().to_string();
    Proc::spawn(
        "networkd",
        &[
            "ip",
            "netns",
            "exec",
            &ns.cli,
            NETWORKD,
            "--mode",
            "metal",
            "--root",
            &root,
            "--cmdline-file",
            &cmdline_file,
            "--dhcp-renew-after",
            "3",
        ],
        dir.join("networkd.log"),
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A worker machine config for the cluster at `https://<ip>:6443`, and
/// where machined keeps the live copy under a node root.
struct LiveConfig {
    worker_yaml: String,
    path: PathBuf,
}

impl LiveConfig {
    fn new(root: &Path, endpoint_ip: &str) -> LiveConfig {
        let now = SystemTime::now();
        let bundle = machinery::secrets::SecretsBundle::generate(now).expect("secrets");
        let generated = machinery::generate::generate(
            &bundle,
            &machinery::generate::GenOptions::new("netns", format!("https://{endpoint_ip}:6443")),
            now,
        )
        .expect("configs");
        LiveConfig {
            worker_yaml: generated.worker_yaml,
            path: machinery::constants::NodePaths::under(root).live_config(),
        }
    }

    /// The config with `patch` applied.
    fn patched(&self, patch: &str) -> String {
        machinery::generate::apply_patch(&self.worker_yaml, patch).expect("patched config")
    }

    /// Puts `yaml` in place, replacing the file whole, as machined does
    /// when it persists an `auto` or `no-reboot` apply.
    fn write(&self, yaml: &str) {
        std::fs::create_dir_all(self.path.parent().expect("a directory")).expect("config dir");
        let staged = self.path.with_extension("yaml.new");
        std::fs::write(&staged, yaml).expect("config");
        std::fs::rename(&staged, &self.path).expect("config in place");
    }
}

#[test]
fn dhcp_lease_renewal_release_ignored_link_and_api() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let ns = Namespaces::new('d', "10.99.7.1/24");
    // The link to ignore: a veth pair inside the namespace (dummy links
    // need a kernel module that CI machines may lack).
    run(&[
        "ip", "-n", &ns.cli, "link", "add", "ign0", "type", "veth", "peer", "name", "ign0p",
    ]);
    let dnsmasq = start_dnsmasq(&ns, dir.path());
    // DHCP on the veth (a virtual link: networkd leaves those alone unless
    // told); ign0 has a static ip= too, but is ignored, which wins.
    let cmdline = format!(
        "console=ttyS0 ip=:::::{}:dhcp ip=10.99.6.5:::255.255.255.0::ign0:off \
         talos.network.interface.ignore=ign0\n",
        ns.cli_link
    );
    let started = Instant::now();
    let mut networkd = start_networkd(&ns, dir.path(), &root, &cmdline);
    let context = || format!("{}\n{}", networkd.context(), dnsmasq.context());

    // The lease: an address from the range on the veth.
    let (address, prefix) = wait_for(
        Duration::from_secs(20),
        "a DHCP address on the veth",
        context,
        || {
            ipv4_addresses(&ns.cli, &ns.cli_link)
                .into_iter()
                .find(|(ip, _)| {
                    (50..=60).contains(&ip.octets()[3]) && ip.octets()[..3] == [10, 99, 7]
                })
        },
    );
    // A figure, not a check (`-- --nocapture` shows it): networkd's start
    // to the leased address on the link, at the 100 ms resolution of the poll.
    eprintln!(
        "bench: time to DHCP lease on a veth (process start to address): {:?}",
        started.elapsed()
    );
    assert_eq!(prefix, 24);
    assert!(is_up(&link(&ns.cli, &ns.cli_link)));

    // The default route via the router option.
    wait_for(
        Duration::from_secs(10),
        "the default route via 10.99.7.1",
        context,
        || {
            routes(&ns.cli)
                .iter()
                .any(|r| {
                    r["dst"] == "default"
                        && r["gateway"] == "10.99.7.1"
                        && r["dev"] == ns.cli_link.as_str()
                })
                .then_some(())
        },
    );

    // Resolvers from option 6, the addresses file, the hosts file.
    let resolv_conf = root.join("system/etc/resolv.conf");
    wait_for(
        Duration::from_secs(10),
        "resolv.conf naming 10.99.7.1",
        || format!("resolv.conf: {:?}\n{}", read(&resolv_conf), context()),
        || {
            read(&resolv_conf)
                .contains("nameserver 10.99.7.1\n")
                .then_some(())
        },
    );
    let addresses_file = root.join("system/run/networkd/addresses");
    wait_for(
        Duration::from_secs(10),
        "the lease address in the addresses file",
        || format!("addresses: {:?}\n{}", read(&addresses_file), context()),
        || {
            read(&addresses_file)
                .lines()
                .any(|l| l == address.to_string())
                .then_some(())
        },
    );
    let hosts = read(&root.join("system/etc/hosts"));
    assert!(hosts.contains("talos-"), "a generated hostname: {hosts}");
    assert!(
        read(&root.join("system/etc/hostname")).starts_with("talos-"),
        "hostname file"
    );

    // Renewal at the capped T1 (3 s), acknowledged by dnsmasq.
    wait_for(Duration::from_secs(20), "a lease renewal", context, || {
        networkd.log().contains("DHCP lease renewed").then_some(())
    });
    wait_for(
        Duration::from_secs(5),
        "dnsmasq to acknowledge twice",
        context,
        || (dnsmasq.log().matches("DHCPACK(").count() >= 2).then_some(()),
    );

    // The ignored link: down, no address, although ip= names it.
    let ignored = link(&ns.cli, "ign0");
    assert!(!is_up(&ignored), "ign0 was brought up: {ignored}");
    assert!(ipv4_addresses(&ns.cli, "ign0").is_empty());

    // The API, through the socket (from the host's network namespace).
    let socket = root.join("system/run/networkd/networkd.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (interfaces, routes) = runtime.block_on(async {
        let channel = machinery::grpc::unix_channel(&socket)
            .await
            .expect("connect to networkd.sock");
        let mut client = api::network::network_service_client::NetworkServiceClient::new(channel);
        let interfaces = client
            .interfaces(())
            .await
            .expect("Interfaces")
            .into_inner();
        let routes = client.routes(()).await.expect("Routes").into_inner();
        (interfaces, routes)
    });
    // Close the API connection before networkd stops.
    drop(runtime);
    let interfaces = &interfaces.messages[0].interfaces;
    let veth = interfaces
        .iter()
        .find(|i| i.name == ns.cli_link)
        .unwrap_or_else(|| panic!("no {} in {interfaces:?}", ns.cli_link));
    assert!(
        veth.ipaddress.contains(&format!("{address}/24")),
        "{veth:?}"
    );
    assert_eq!(veth.hardwareaddr.len(), 17, "{veth:?}");
    assert_eq!(veth.flags & 1, 1, "up: {veth:?}");
    assert!(interfaces.iter().any(|i| i.name == "ign0"));
    let routes = &routes.messages[0].routes;
    assert!(
        routes.iter().any(|r| r.destination == "0.0.0.0/0"
            && r.gateway == "10.99.7.1"
            && r.interface == ns.cli_link
            && r.protocol == 16
            && r.metric == 1024),
        "{routes:?}"
    );

    // Stop: the lease is released and its address removed.
    let status = networkd.stop();
    let context = || format!("{}\n{}", networkd.context(), dnsmasq.context());
    assert!(
        status.success(),
        "networkd exited with {status}\n{}",
        context()
    );
    wait_for(
        Duration::from_secs(5),
        "dnsmasq to see the release",
        context,
        || dnsmasq.log().contains("DHCPRELEASE(").then_some(()),
    );
    assert!(
        !ipv4_addresses(&ns.cli, &ns.cli_link)
            .iter()
            .any(|(ip, _)| *ip == address),
        "the released address is still on the link\n{}",
        context()
    );
}

#[test]
fn static_addresses_routes_mtu_and_resolvers_from_the_machine_config() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let ns = Namespaces::new('s', "10.99.8.1/24");
    let live = LiveConfig::new(&root, "10.99.8.1");
    let route = "
        routes:
          - network: 10.99.9.0/24
            gateway: 10.99.8.1
            metric: 100";
    let config_routed = |addresses: &str, nameserver: &str, routes: &str| {
        let patch = format!(
            "machine:
  network:
    hostname: static-node
    nameservers: [{nameserver}]
    interfaces:
      - interface: {link}
        addresses: [{addresses}]
        mtu: 1400{routes}
",
            link = ns.cli_link
        );
        live.patched(&patch)
    };
    let config_with =
        |addresses: &str, nameserver: &str| config_routed(addresses, nameserver, route);
    live.write(&config_with("10.99.8.5/24", "10.99.8.53"));

    let networkd = start_networkd(&ns, dir.path(), &root, "console=ttyS0\n");
    let context = || networkd.context();

    wait_for(
        Duration::from_secs(15),
        "10.99.8.5/24 on the veth",
        context,
        || {
            ipv4_addresses(&ns.cli, &ns.cli_link)
                .contains(&(Ipv4Addr::new(10, 99, 8, 5), 24))
                .then_some(())
        },
    );
    let veth = wait_for(
        Duration::from_secs(5),
        "the veth up with MTU 1400",
        context,
        || {
            let veth = link(&ns.cli, &ns.cli_link);
            (is_up(&veth) && veth["mtu"] == 1400).then_some(veth)
        },
    );
    assert_eq!(veth["mtu"], 1400);
    wait_for(
        Duration::from_secs(10),
        "the route to 10.99.9.0/24 via 10.99.8.1",
        || format!("routes: {:?}\n{}", routes(&ns.cli), context()),
        || {
            routes(&ns.cli)
                .iter()
                .any(|r| {
                    r["dst"] == "10.99.9.0/24"
                        && r["gateway"] == "10.99.8.1"
                        && r["dev"] == ns.cli_link.as_str()
                        && r["metric"] == 100
                })
                .then_some(())
        },
    );
    let resolv_conf = root.join("system/etc/resolv.conf");
    wait_for(
        Duration::from_secs(10),
        "resolv.conf naming 10.99.8.53",
        || format!("resolv.conf: {:?}\n{}", read(&resolv_conf), context()),
        || {
            read(&resolv_conf)
                .contains("nameserver 10.99.8.53\n")
                .then_some(())
        },
    );
    assert_eq!(read(&root.join("system/etc/hostname")), "static-node\n");
    let hosts_file = root.join("system/etc/hosts");
    wait_for(
        Duration::from_secs(10),
        "the hosts file naming static-node on 10.99.8.5",
        || format!("hosts: {:?}\n{}", read(&hosts_file), context()),
        || {
            read(&hosts_file)
                .contains("10.99.8.5\tstatic-node\n")
                .then_some(())
        },
    );
    // A configured link without `dhcp: true` runs no DHCP client.
    assert!(
        !networkd.log().contains("DHCP client started"),
        "{}",
        context()
    );

    // A config applied live (machined replaces the file, as it persists an
    // `auto` or `no-reboot` apply) takes effect at once. The pause lets the
    // link go quiet first (IPv6 address setup ends within about 2 s), so
    // that no network event wakes networkd instead: without the config
    // watch this fails.
    std::thread::sleep(Duration::from_secs(5));
    live.write(&config_with("10.99.8.5/24, 10.99.8.6/24", "10.99.8.54"));
    wait_for(
        Duration::from_secs(5),
        "10.99.8.6/24 added from the replaced config",
        context,
        || {
            let addresses = ipv4_addresses(&ns.cli, &ns.cli_link);
            (addresses.contains(&(Ipv4Addr::new(10, 99, 8, 6), 24))
                && addresses.contains(&(Ipv4Addr::new(10, 99, 8, 5), 24)))
            .then_some(())
        },
    );
    wait_for(
        Duration::from_secs(5),
        "resolv.conf naming 10.99.8.54",
        || format!("resolv.conf: {:?}\n{}", read(&resolv_conf), context()),
        || {
            read(&resolv_conf)
                .contains("nameserver 10.99.8.54\n")
                .then_some(())
        },
    );
    // And it was the watch that woke networkd.
    assert!(
        networkd.log().contains("the machine config changed"),
        "{}",
        context()
    );

    // A config that drops an address and the route: both go, the other
    // address stays.
    live.write(&config_routed("10.99.8.6/24", "10.99.8.54", ""));
    wait_for(
        Duration::from_secs(10),
        "10.99.8.5/24 and the route to 10.99.9.0/24 removed",
        || {
            format!(
                "addresses: {:?}\nroutes: {:?}\n{}",
                ipv4_addresses(&ns.cli, &ns.cli_link),
                routes(&ns.cli),
                context()
            )
        },
        || {
            let addresses = ipv4_addresses(&ns.cli, &ns.cli_link);
            (!addresses.contains(&(Ipv4Addr::new(10, 99, 8, 5), 24))
                && addresses.contains(&(Ipv4Addr::new(10, 99, 8, 6), 24))
                && !routes(&ns.cli).iter().any(|r| r["dst"] == "10.99.9.0/24"))
            .then_some(())
        },
    );
}

/// The documents upstream added beside v1alpha1 name the node and set its
/// resolvers and hosts (`HostnameConfig`, `ResolverConfig`,
/// `StaticHostConfig`); changed live, a search domain from the hostname's
/// domain can be turned off, and so can the generated name.
#[test]
fn hostname_resolvers_and_hosts_from_config_documents() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let ns = Namespaces::new('h', "10.99.11.1/24");
    let live = LiveConfig::new(&root, "10.99.11.1");
    let config = |features: &str, hostname: &str, search: &str| {
        let patch = format!(
            "machine:
  network:
    interfaces:
      - interface: {link}
        addresses: [10.99.11.5/24]
  features:
    stableHostname: {features}
",
            link = ns.cli_link
        );
        format!(
            "{}---
apiVersion: v1alpha1
kind: HostnameConfig
{hostname}
---
apiVersion: v1alpha1
kind: ResolverConfig
nameservers:
  - address: 10.99.11.53
searchDomains:
  {search}
---
apiVersion: v1alpha1
kind: StaticHostConfig
name: 10.99.11.9
hostnames: [db, db.corp.example]
",
            live.patched(&patch)
        )
    };
    let first = config("true", "hostname: doc-node.example.org", "domains: []");
    machinery::config::parse(first.as_bytes())
        .expect("a valid config")
        .strict_check()
        .expect("strictly valid");
    live.write(&first);

    let networkd = start_networkd(&ns, dir.path(), &root, "console=ttyS0\n");
    let context = || networkd.context();
    let resolv_conf = root.join("system/etc/resolv.conf");
    let hostname_file = root.join("system/etc/hostname");
    let hosts_file = root.join("system/etc/hosts");
    let files = || {
        format!(
            "hostname: {:?}\nresolv.conf: {:?}\nhosts: {:?}\n{}",
            read(&hostname_file),
            read(&resolv_conf),
            read(&hosts_file),
            context()
        )
    };
    // The hostname's domain is the search domain.
    wait_for(
        Duration::from_secs(15),
        "the documents' hostname, resolver and search domain",
        files,
        || {
            (read(&hostname_file) == "doc-node\n"
                && read(&resolv_conf)
                    == "# Generated by networkd.\nnameserver 10.99.11.53\nsearch example.org\n")
                .then_some(())
        },
    );
    wait_for(
        Duration::from_secs(10),
        "the static host and the node's name in the hosts file",
        files,
        || {
            let hosts = read(&hosts_file);
            (hosts.contains("10.99.11.9\tdb db.corp.example\n")
                && hosts.contains("10.99.11.5\tdoc-node.example.org doc-node\n"))
            .then_some(())
        },
    );

    // Live: the default search domain turned off.
    live.write(&config(
        "true",
        "hostname: doc-node.example.org",
        "disableDefault: true",
    ));
    wait_for(
        Duration::from_secs(10),
        "resolv.conf without a search domain",
        files,
        || {
            (read(&resolv_conf) == "# Generated by networkd.\nnameserver 10.99.11.53\n")
                .then_some(())
        },
    );

    // Live: no static name and no generated one: nothing names the node.
    let unnamed = config("false", "auto: off", "domains: []");
    machinery::config::parse(unnamed.as_bytes())
        .expect("a valid config")
        .strict_check()
        .expect("strictly valid");
    live.write(&unnamed);
    wait_for(
        Duration::from_secs(10),
        "the node unnamed (localhost)",
        files,
        || (read(&hostname_file) == "localhost\n").then_some(()),
    );
}

/// A link picked by its hardware address (`deviceSelector`, a pattern over
/// its MAC) gets the entry's address and MTU. (VLANs need 802.1Q, which
/// the kernels these tests run on may lack: the QEMU tests check them on
/// the image's kernel.)
#[test]
fn a_link_selected_by_its_hardware_address() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let ns = Namespaces::new('v', "10.99.10.1/24");
    let mac = link(&ns.cli, &ns.cli_link)["address"]
        .as_str()
        .expect("the veth's MAC")
        .to_owned();
    let live = LiveConfig::new(&root, "10.99.10.1");
    // The first four bytes, in upper case: hex matches in either case.
    let pattern = format!("{}*", mac[..12].to_ascii_uppercase());
    let patch = format!(
        "machine:
  network:
    interfaces:
      - deviceSelector:
          hardwareAddr: \"{pattern}\"
        addresses: [10.99.10.5/24]
        mtu: 1400
"
    );
    live.write(&live.patched(&patch));

    let networkd = start_networkd(&ns, dir.path(), &root, "console=ttyS0\n");
    let context = || networkd.context();
    wait_for(
        Duration::from_secs(15),
        "10.99.10.5/24 on the selected veth, up with MTU 1400",
        context,
        || {
            let veth = link(&ns.cli, &ns.cli_link);
            (ipv4_addresses(&ns.cli, &ns.cli_link).contains(&(Ipv4Addr::new(10, 99, 10, 5), 24))
                && is_up(&veth)
                && veth["mtu"] == 1400)
                .then_some(())
        },
    );
    // A configured link runs DHCP only when told.
    assert!(
        !networkd.log().contains("DHCP client started"),
        "{}",
        context()
    );
}

/// A bridge made for the config, with the veth as its port (named by a
/// `bridgePort` entry): the port is up in it, has no address of its own,
/// and the bridge gets a DHCP lease from the server across it, its route
/// with the `dhcpOptions.routeMetric` asked for. Dropped
/// from the config live, the bridge is deleted, and the veth, released,
/// gets its own address.
#[test]
fn a_bridge_made_then_dropped_live() {
    require_root_and_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let ns = Namespaces::new('b', "10.99.7.1/24");
    let _dnsmasq = start_dnsmasq(&ns, dir.path());
    let live = LiveConfig::new(&root, "10.99.7.1");
    let write_config = |patch: &str| live.write(&live.patched(patch));
    let cli_link = ns.cli_link.clone();
    write_config(&format!(
        "machine:
  network:
    interfaces:
      - interface: br7
        dhcp: true
        dhcpOptions:
          routeMetric: 512
        bridge:
          stp:
            enabled: false
      - interface: {cli_link}
        bridgePort:
          master: br7
"
    ));
    let networkd = start_networkd(&ns, dir.path(), &root, "console=ttyS0\n");
    let context = || networkd.context();
    wait_for(
        Duration::from_secs(15),
        "br7, a bridge with a lease from 10.99.7.50-60, and the veth its port, up",
        context,
        || {
            // All links: `dev br7` fails until it exists.
            let details = ip_json(&ns.cli, &["-d", "link", "show"]);
            let bridge = details
                .as_array()?
                .iter()
                .find(|l| l["ifname"] == "br7")?
                .clone();
            let veth = link(&ns.cli, &cli_link);
            (bridge["linkinfo"]["info_kind"] == "bridge"
                && is_up(&bridge)
                && veth["master"] == "br7"
                && is_up(&veth)
                && ipv4_addresses(&ns.cli, "br7")
                    .iter()
                    .any(|(ip, prefix)| (50..=60).contains(&ip.octets()[3]) && *prefix == 24))
            .then_some(())
        },
    );
    assert!(
        ipv4_addresses(&ns.cli, &cli_link).is_empty(),
        "a port has no address of its own\n{}",
        context()
    );
    // The lease's default route, with dhcpOptions.routeMetric.
    wait_for(
        Duration::from_secs(10),
        "the default route via 10.99.7.1 on br7 with metric 512",
        context,
        || {
            routes(&ns.cli)
                .iter()
                .any(|r| {
                    r["dst"] == "default"
                        && r["gateway"] == "10.99.7.1"
                        && r["dev"] == "br7"
                        && r["metric"] == 512
                })
                .then_some(())
        },
    );
    // The bridge is dropped: deleted, and the veth gets its own address.
    write_config(&format!(
        "machine:
  network:
    interfaces:
      - interface: {cli_link}
        addresses: [10.99.7.6/24]
"
    ));
    wait_for(
        Duration::from_secs(15),
        "br7 deleted, and the veth, out of it, up with 10.99.7.6/24",
        context,
        || {
            let links = ip_json(&ns.cli, &["link", "show"]);
            let gone = !links.as_array()?.iter().any(|l| l["ifname"] == "br7");
            let veth = link(&ns.cli, &cli_link);
            (gone
                && veth.get("master").is_none()
                && is_up(&veth)
                && ipv4_addresses(&ns.cli, &cli_link).contains(&(Ipv4Addr::new(10, 99, 7, 6), 24)))
            .then_some(())
        },
    );
    let log = networkd.log();
    for line in ["creating the bridge br7", "deleting the bridge link br7"] {
        assert!(log.contains(line), "{line:?} missing\n{}", context());
    }
}
