//! The command tree, as upstream talosctl spells it.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// `talosctl`.
#[derive(Debug, Parser)]
#[command(
    name = "talosctl",
    about = "A CLI for out-of-band management of Kubernetes nodes created by Talos",
    long_about = None,
    disable_version_flag = true
)]
pub struct Cli {
    /// Flags every command accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// override default endpoints in Talos configuration
    #[arg(short = 'e', long = "endpoints", global = true, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// target the specified nodes
    #[arg(short = 'n', long = "nodes", global = true, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The path to the Talos configuration file. Defaults to 'TALOSCONFIG' env variable if set, otherwise '$HOME/.talos/config' and '/var/run/secrets/talos.dev/config' in order.
    #[arg(long, global = true)]
    pub talosconfig: Option<PathBuf>,
    /// Context to be used in command
    #[arg(long, global = true)]
    pub context: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
    /// Apply a new configuration to a node
    #[command(name = "apply-config", visible_alias = "apply")]
    ApplyConfig(ApplyArgs),
    /// Retrieve cgroups usage information
    #[command(visible_alias = "cg")]
    Cgroups(CgroupsArgs),
    /// A collection of commands for managing local docker-based or QEMU-based clusters
    Cluster(crate::cluster::ClusterArgs),
    /// Output shell completion code for the specified shell (bash, fish or zsh)
    Completion(CompletionArgs),
    /// Manage the client configuration file (talosconfig)
    Config(ConfigArgs),
    /// Copy data out from the node
    #[command(visible_alias = "cp")]
    Copy(CopyArgs),
    /// Get the list of disks from /sys/block on the machine
    Disks,
    /// Cluster dashboard with node overview, logs and real-time metrics
    Dashboard(DashboardArgs),
    /// Retrieve kernel logs
    Dmesg(DmesgArgs),
    /// Stream runtime events
    Events(EventsArgs),
    /// Generate CAs, certificates, and private keys
    Gen(GenArgs),
    /// Get a specific resource or list of resources (use 'talosctl get rd' to see all available resource types)
    #[command(visible_alias = "g")]
    Get(GetArgs),
    /// Check cluster health
    Health(HealthArgs),
    /// List network interfaces
    Interfaces,
    /// Edit the machine config of a node with your editor and apply it
    Edit(EditArgs),
    /// Patch the machine config of a node and apply it
    Patch(PatchArgs),
    /// Retrieve a directory listing
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Retrieve logs for a service
    Logs(LogsArgs),
    /// Show memory usage
    #[command(visible_aliases = ["m", "free"])]
    Memory(MemoryArgs),
    /// Machine config commands that need no node
    #[command(name = "machineconfig", visible_alias = "mc")]
    MachineConfig(MachineConfigArgs),
    /// Write and delete keys in the META partition
    Meta(MetaArgs),
    /// List mounts
    #[command(visible_alias = "mount")]
    Mounts,
    /// Show network connections and sockets
    #[command(visible_alias = "ss")]
    Netstat(NetstatArgs),
    /// Capture the network packets from the node
    #[command(visible_alias = "tcpdump")]
    Pcap(PcapArgs),
    /// List running processes
    #[command(visible_aliases = ["p", "ps"])]
    Processes(ProcessesArgs),
    /// Read a file on the machine
    #[command(visible_alias = "cat")]
    Read(ReadArgs),
    /// Reboot a node
    Reboot(RebootArgs),
    /// Reset a node
    Reset(ResetArgs),
    /// Rollback a node to the previous installation
    Rollback,
    /// Rotate cluster CAs (Talos and Kubernetes APIs).
    #[command(name = "rotate-ca")]
    RotateCa(RotateCaArgs),
    /// List network routes
    Routes,
    /// Retrieve the state of a service (or all services), control service state
    #[command(visible_alias = "services")]
    Service(ServiceArgs),
    /// Shutdown a node
    Shutdown(ShutdownArgs),
    /// Dump debug information about the cluster
    Support(SupportArgs),
    /// Gets current server time
    Time(TimeArgs),
    /// Upgrade Talos on the target node
    Upgrade(UpgradeArgs),
    /// Retrieve a disk usage
    #[command(visible_alias = "du")]
    Usage(UsageArgs),
    /// Validate config
    Validate(ValidateArgs),
    /// Prints the version
    Version(VersionArgs),
    /// Wipe block device or volumes
    Wipe(WipeArgs),
    /// Upstream's commands for what this OS does not run.
    #[command(flatten)]
    Absent(AbsentCommand),
}

/// Upstream's commands for etcd, Kubernetes and containers, which this OS
/// does not run. Each says so, rather than failing to parse with a "did
/// you mean" that points at another command (`bootstrap` at `reboot`).
#[derive(Debug, Subcommand)]
pub enum AbsentCommand {
    #[command(hide = true, disable_help_flag = true)]
    Bootstrap(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Conformance(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Containers(AbsentArgs),
    #[command(hide = true, disable_help_flag = true, name = "convert-k8s")]
    ConvertK8s(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Crashdump(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Debug(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Drain(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Etcd(AbsentArgs),
    #[command(hide = true, disable_help_flag = true, alias = "images")]
    Image(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Inject(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Inspect(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Kubeconfig(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Restart(AbsentArgs),
    #[command(hide = true, disable_help_flag = true)]
    Stats(AbsentArgs),
    #[command(hide = true, disable_help_flag = true, name = "upgrade-k8s")]
    UpgradeK8s(AbsentArgs),
}

/// Whatever was given to an absent command.
#[derive(Debug, Args)]
pub struct AbsentArgs {
    /// Taken and ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

/// `wipe` arguments.
#[derive(Debug, Args)]
pub struct WipeArgs {
    /// What to wipe.
    #[command(subcommand)]
    pub command: WipeCommand,
}

/// `wipe` subcommands.
#[derive(Debug, Subcommand)]
pub enum WipeCommand {
    /// Wipe a block device (disk or partition) which is not used as a volume
    ///
    /// Use device names as arguments, for example: vda or sdb5.
    Disk(WipeDiskArgs),
}

/// `wipe disk` arguments.
#[derive(Debug, Args)]
pub struct WipeDiskArgs {
    /// Device names (`sdb`, `sdb1`; a leading `/dev/` is dropped)
    #[arg(required = true, value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// wipe method to use [FAST ZEROES]
    #[arg(long, value_enum, default_value_t = WipeMethod::Fast, ignore_case = true)]
    pub method: WipeMethod,
    /// skip volume check
    #[arg(long)]
    pub skip_volume_check: bool,
    /// skip secondary disk check (e.g. underlying disk for RAID or LVM)
    #[arg(long)]
    pub skip_secondary_check: bool,
    /// drop partition after wipe (if applicable)
    #[arg(long)]
    pub drop_partition: bool,
    /// wipe disks of a node in maintenance mode (no client certificate,
    /// server not verified)
    #[arg(short = 'i', long)]
    pub insecure: bool,
}

/// `wipe disk --method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WipeMethod {
    /// Partition tables and filesystem signatures only (the first and last MiB)
    #[value(name = "FAST")]
    Fast,
    /// Every byte (can be slow)
    #[value(name = "ZEROES")]
    Zeroes,
}

/// `validate` flags.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// the path of the config file
    #[arg(short = 'c', long)]
    pub config: PathBuf,
    /// the mode to validate the config for (valid values are metal, cloud, and container)
    #[arg(short = 'm', long, value_enum)]
    pub mode: ValidateMode,
    /// treat validation warnings as errors
    #[arg(long)]
    pub strict: bool,
}

/// What kind of node a config is validated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateMode {
    /// Installed from an image onto a disk.
    Metal,
    /// A cloud VM.
    Cloud,
    /// A container.
    Container,
}

impl ValidateMode {
    /// The name upstream prints.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ValidateMode::Metal => "metal",
            ValidateMode::Cloud => "cloud",
            ValidateMode::Container => "container",
        }
    }
}

/// `machineconfig` arguments.
#[derive(Debug, Args)]
pub struct MachineConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MachineConfigCommand,
}

/// `machineconfig` subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum MachineConfigCommand {
    /// Generates a set of configuration files for Talos cluster (the same as `gen config`)
    Gen(GenConfigArgs),
    /// Patch a machine config
    Patch {
        /// The machine config file
        file: PathBuf,
        /// patch generated machineconfigs (applied to all node types), @FILE reads a file
        #[arg(short = 'p', long = "patch")]
        patches: Vec<String>,
        /// output destination; without it, stdout
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

/// Output format of commands that print a table by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text or table.
    #[default]
    #[value(alias = "table")]
    Text,
    /// One JSON object per node reply, one per line.
    Json,
    /// One YAML document per node reply, separated by `---`.
    Yaml,
}

/// `version` flags.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print client version only
    #[arg(long)]
    pub client: bool,
    /// Print the short version
    #[arg(long)]
    pub short: bool,
    /// use Talos maintenance mode API (no client certificate, server not verified)
    #[arg(short = 'i', long)]
    pub insecure: bool,
    /// Print the server replies as JSON (one object per line)
    #[arg(long, hide = true)]
    pub json: bool,
    /// output format
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `service` arguments.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Service ID; without it every service is listed
    pub id: Option<String>,
    /// status (default), start, stop or restart
    pub action: Option<String>,
    /// output format of the service list
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `get` arguments.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The resource type: its full name or an alias (`talosctl get rd`
    /// lists them)
    pub resource: String,
    /// Only the resource with this id
    pub id: Option<String>,
    /// Resource namespace (default is to use default namespace per resource)
    #[arg(long)]
    pub namespace: Option<String>,
    /// output mode (json, table, yaml, jsonpath=TEMPLATE)
    #[arg(short = 'o', long, default_value = "table", value_parser = parse_get_output)]
    pub output: GetOutput,
    /// Watch resource changes
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Talk to a node in maintenance mode: no server verification, no
    /// client certificate (reads only; the machine config is not readable)
    #[arg(short = 'i', long)]
    pub insecure: bool,
}

/// `get` output formats.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GetOutput {
    /// Aligned columns
    #[default]
    Table,
    /// One YAML document per resource
    Yaml,
    /// One JSON object per resource
    Json,
    /// What a JSONPath template picks from each resource's JSON document
    JsonPath(crate::jsonpath::Template),
}

fn parse_get_output(text: &str) -> Result<GetOutput, String> {
    match text {
        "table" => Ok(GetOutput::Table),
        "yaml" => Ok(GetOutput::Yaml),
        "json" => Ok(GetOutput::Json),
        _ => match text.strip_prefix("jsonpath=") {
            Some(template) => crate::jsonpath::Template::parse(template)
                .map(GetOutput::JsonPath)
                .map_err(|e| format!("error parsing jsonpath: {e}")),
            None => Err(format!(
                "output format {text:?} is not supported (json, table, yaml, jsonpath=TEMPLATE)"
            )),
        },
    }
}

/// `patch` arguments.
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// The resource: `machineconfig` (`mc`), the only one that can be patched
    pub resource: String,
    /// Its id: `v1alpha1`, the config in effect
    pub id: Option<String>,
    /// The patch: a partial config to merge (inline YAML or @FILE);
    /// repeat to apply several in order
    #[arg(short = 'p', long = "patch", action = ArgAction::Append)]
    pub patches: Vec<String>,
    /// A file holding a patch (the same as `--patch @FILE`)
    #[arg(long)]
    pub patch_file: Option<PathBuf>,
    /// resource namespace (the machine config's is `config`, the default)
    #[arg(long)]
    pub namespace: Option<String>,
    /// How the node applies the config.
    #[command(flatten)]
    pub apply: ApplyFlags,
}

/// `edit` arguments.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The resource: `machineconfig` (`mc`), the only one that can be edited
    pub resource: String,
    /// Its id: `v1alpha1`, the config in effect
    pub id: Option<String>,
    /// resource namespace (the machine config's is `config`, the default)
    #[arg(long)]
    pub namespace: Option<String>,
    /// How the node applies the config.
    #[command(flatten)]
    pub apply: ApplyFlags,
}

/// `meta` arguments.
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// What to do with the key.
    #[command(subcommand)]
    pub command: MetaCommand,
}

/// `meta` subcommands.
#[derive(Debug, Subcommand)]
pub enum MetaCommand {
    /// Write a key value
    Write {
        /// The key: 0 to 255, decimal or 0x hex
        key: String,
        /// The value
        value: String,
    },
    /// Delete a key
    Delete {
        /// The key: 0 to 255, decimal or 0x hex
        key: String,
    },
}

/// `logs` arguments.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service or container ID
    pub id: String,
    /// specify if the log stream should be followed
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// lines of log file to display (default is to show from the beginning)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i32,
    /// use the k8s.io containerd namespace
    #[arg(short = 'k', long)]
    pub kubernetes: bool,
}

/// `cgroups` flags.
#[derive(Debug, Args)]
pub struct CgroupsArgs {
    /// preset name
    #[arg(long, value_enum)]
    pub preset: CgroupsPreset,
    /// do not resolve cgroup names via a request to CRI (there is no CRI here: names come from the node's services)
    #[arg(long)]
    pub skip_cri_resolve: bool,
}

/// The column sets of `cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupsPreset {
    /// CPU weight, limit, user and system time and their shares of the parent's
    Cpu,
    /// The CPUs and memory nodes allowed, as set and in effect
    Cpuset,
    /// Bytes and operations read and written per disk, I/O pressure
    Io,
    /// Memory use, peak, protections and limits
    Memory,
    /// Process and thread counts, limits and the processes by name
    Process,
    /// Pressure stall information: memory, CPU and I/O
    Psi,
    /// Swap use, peak and limits
    Swap,
}

/// `dashboard` flags.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// interval between updates
    #[arg(short = 'd', long, default_value = "3s", value_parser = crate::output::parse_go_duration)]
    pub update_interval: std::time::Duration,
}

/// `support` flags.
#[derive(Debug, Args)]
pub struct SupportArgs {
    /// output file to write support archive to
    #[arg(short = 'O', long, default_value = "support.zip")]
    pub output: String,
    /// number of workers per node
    #[arg(short = 'w', long, default_value_t = 1)]
    pub num_workers: usize,
    /// verbose output
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// `rotate-ca` flags.
#[derive(Debug, Args)]
#[command(long_about = "Rotate cluster CAs (Talos and Kubernetes APIs).\n\n\
The Talos API CA is replaced without a reboot and without a moment in which the cluster refuses \
either CA: the new CA is added to machine.acceptedCAs on every node, then made the issuing CA \
(the old one stays accepted), then the old one is removed. Connectivity is checked with Version \
on every node after each step. The new CA (with its key) and the new admin talosconfig are \
printed; the talosconfig is written to --output.\n\n\
Nodes are named with --control-plane-nodes and --worker-nodes: this OS runs no Kubernetes to \
discover them from, and has no Kubernetes CA to rotate. The default is a dry run: pass \
--dry-run=false to change the cluster.")]
pub struct RotateCaArgs {
    /// specify IPs of init node
    #[arg(long)]
    pub init_node: Option<String>,
    /// The nodes by type.
    #[command(flatten)]
    pub cluster: ClusterNodes,
    /// patch all machine configs with the commented examples
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub with_examples: bool,
    /// patch all machine configs adding the documentation for each field
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub with_docs: bool,
    /// path to the output new `talosconfig`
    #[arg(short = 'o', long, default_value = "talosconfig")]
    pub output: std::path::PathBuf,
    /// dry-run mode (no changes to the cluster)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub dry_run: bool,
    /// rotate Talos API CA
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub talos: bool,
    /// rotate Kubernetes API CA
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub kubernetes: bool,
}

/// `pcap` flags.
#[derive(Debug, Args)]
#[command(
    after_help = "Without --output each packet is printed as one tcpdump-style line; \
with it the raw pcap file is written ('-' for stdout: talosctl pcap -i eth0 -o - | tcpdump -r -).\n\
A BPF filter is given compiled, as tcpdump -dd prints it, with the link type of the interface \
(EN10MB for Ethernet and loopback links, RAW for WireGuard or tun):\n  \
talosctl pcap -i eth0 --bpf-filter \"$(tcpdump -dd -y EN10MB 'tcp and dst port 80')\"\n\
The capture travels over the API: filter out port 50000 when capturing the link it uses."
)]
pub struct PcapArgs {
    /// interface name to capture packets on
    #[arg(short = 'i', long, default_value = "eth0")]
    pub interface: String,
    /// put interface into promiscuous mode
    #[arg(long)]
    pub promiscuous: bool,
    /// maximum packet size to capture
    #[arg(short = 's', long, default_value_t = 65536)]
    pub snaplen: u32,
    /// if not set, decode packets to stdout; if set write raw pcap data to a file, use '-' for stdout
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// bpf filter to apply, tcpdump -dd format
    #[arg(long, default_value = "")]
    pub bpf_filter: String,
    /// duration of the capture
    #[arg(long, value_parser = crate::output::parse_go_duration)]
    pub duration: Option<std::time::Duration>,
}

/// `dmesg` flags.
#[derive(Debug, Args)]
pub struct DmesgArgs {
    /// specify if the kernel log should be followed
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// specify if only new messages should be sent (makes sense only when combined with --follow)
    #[arg(long)]
    pub tail: bool,
}

/// `memory` flags.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// display extended memory statistics
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// output format
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Sort order of `processes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ProcessSort {
    /// Resident memory, largest first.
    #[default]
    Rss,
    /// CPU time, largest first.
    Cpu,
}

/// `netstat` flags.
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // one per flag, as upstream
pub struct NetstatArgs {
    /// display all sockets states (default: connected)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// display sockets of all supported transport protocols
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// display timers
    #[arg(short = 'o', long)]
    pub timers: bool,
    /// show detailed socket information
    #[arg(short = 'x', long)]
    pub extend: bool,
    /// display listening server sockets
    #[arg(short = 'l', long)]
    pub listening: bool,
    /// show process using socket
    #[arg(short = 'p', long)]
    pub programs: bool,
    /// display only RAW sockets
    #[arg(short = 'w', long)]
    pub raw: bool,
    /// display only TCP sockets
    #[arg(short = 't', long)]
    pub tcp: bool,
    /// display only UDP sockets
    #[arg(short = 'u', long)]
    pub udp: bool,
    /// display only UDPLite sockets
    #[arg(short = 'U', long)]
    pub udplite: bool,
    /// display only ipv4 sockets
    #[arg(short = '4', long)]
    pub ipv4: bool,
    /// display only ipv6 sockets
    #[arg(short = '6', long)]
    pub ipv6: bool,
}

/// `processes` flags.
#[derive(Debug, Args)]
pub struct ProcessesArgs {
    /// Column to sort output by. [rss|cpu]
    #[arg(short = 's', long, value_enum, default_value_t = ProcessSort::Rss)]
    pub sort: ProcessSort,
    /// Stream running processes
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// `list` arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Directory to list
    #[arg(default_value = "/")]
    pub path: String,
    /// display additional file details
    #[arg(short = 'l', long)]
    pub long: bool,
    /// recurse into subdirectories
    #[arg(short = 'r', long)]
    pub recurse: bool,
    /// maximum recursion depth
    #[arg(short = 'd', long, default_value_t = 1, allow_negative_numbers = true)]
    pub depth: i32,
    /// filter by specified types: f (regular file), d (directory), l or L (symbolic link)
    #[arg(short = 't', long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// humanize size and time in the output
    #[arg(short = 'H', long)]
    pub humanize: bool,
}

/// `read` arguments.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// File to read
    pub path: String,
}

/// `copy` arguments.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Path on the node
    pub src: String,
    /// Local directory to extract into, or `-` for the raw tar.gz on stdout
    pub dest: String,
}

/// `usage` arguments.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Paths to measure (default /)
    pub paths: Vec<String>,
    /// maximum recursion depth
    #[arg(short = 'd', long, default_value_t = 0)]
    pub depth: i32,
    /// write counts for all files, not just directories
    #[arg(short = 'a', long)]
    pub all: bool,
    /// threshold exclude entries smaller than SIZE if positive, or entries greater than SIZE if negative
    #[arg(short = 't', long, default_value_t = 0, allow_negative_numbers = true)]
    pub threshold: i64,
    /// humanize size and time in the output
    #[arg(short = 'H', long)]
    pub humanize: bool,
}

/// `time` flags.
#[derive(Debug, Args)]
pub struct TimeArgs {
    /// checks server time against specified ntp server
    #[arg(short = 'c', long)]
    pub check: Option<String>,
}

/// `events` flags.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// show specified number of past events (use -1 to show full history, default is to show no history)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub tail: i32,
    /// show events for the past duration interval (one second resolution, default is to show no history)
    #[arg(long)]
    pub duration: Option<String>,
    /// show events after the specified event ID (default is to show no history)
    #[arg(long)]
    pub since: Option<String>,
    /// filter events by the specified actor ID (default is no filter)
    #[arg(long)]
    pub actor_id: Option<String>,
    /// stop watching after this long (e.g. 10s) instead of streaming until interrupted
    #[arg(long)]
    pub stop_after: Option<String>,
}

/// `reboot` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum RebootMode {
    /// kexec when possible.
    #[default]
    Default,
    /// Skip kexec.
    Powercycle,
    /// Skip the graceful stop.
    Force,
}

/// `reboot` flags.
#[derive(Debug, Args)]
pub struct RebootArgs {
    /// select the reboot mode
    #[arg(short = 'm', long, value_enum, default_value_t = RebootMode::Default)]
    pub mode: RebootMode,
    /// wait for the operation to complete, tracking its progress (--wait=false to return at once)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub wait: bool,
    /// time to wait for the operation to complete
    #[arg(long, default_value = "30m")]
    pub timeout: String,
}

/// `shutdown` flags.
#[derive(Debug, Args)]
pub struct ShutdownArgs {
    /// if true, force a node to shutdown without a cordon/drain
    #[arg(long)]
    pub force: bool,
    /// wait for the operation to complete, tracking its progress (--wait=false to return at once)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub wait: bool,
    /// time to wait for the operation to complete
    #[arg(long, default_value = "30m")]
    pub timeout: String,
}

/// `reset --wipe-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WipeMode {
    /// System disk and user disks.
    #[default]
    All,
    /// The system disk only.
    SystemDisk,
    /// User disks only.
    UserDisks,
}

/// `reset` flags.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// if true, attempt to cordon/drain node and leave etcd (if applicable)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub graceful: bool,
    /// if true, reboot the node after resetting instead of shutting down
    #[arg(long)]
    pub reboot: bool,
    /// if set, just wipe selected system disk partitions by label but keep other partitions intact
    #[arg(long, value_delimiter = ',')]
    pub system_labels_to_wipe: Vec<String>,
    /// if set, wipes defined devices in the list
    #[arg(long, value_delimiter = ',')]
    pub user_disks_to_wipe: Vec<String>,
    /// disk reset mode
    #[arg(long, value_enum, default_value_t = WipeMode::All)]
    pub wipe_mode: WipeMode,
    /// wait for the operation to complete, tracking its progress (--wait=false to return at once)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub wait: bool,
    /// time to wait for the operation to complete
    #[arg(long, default_value = "30m")]
    pub timeout: String,
}

/// `upgrade --reboot-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum UpgradeRebootMode {
    /// kexec when possible.
    #[default]
    Default,
    /// Skip kexec.
    Powercycle,
}

/// `upgrade` flags.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// the container image to use for performing the install
    #[arg(short = 'i', long, default_value = machinery::generate::DEFAULT_INSTALL_IMAGE)]
    pub image: String,
    /// preserve data
    #[arg(short = 'p', long)]
    pub preserve: bool,
    /// stage the upgrade to perform it after a reboot
    #[arg(short = 's', long)]
    pub stage: bool,
    /// force the upgrade (skip checks on etcd health and members, might lead to data loss)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// select the reboot mode during upgrade
    #[arg(short = 'm', long, value_enum, default_value_t = UpgradeRebootMode::Default)]
    pub reboot_mode: UpgradeRebootMode,
    /// wait for the operation to complete, tracking its progress (--wait=false to return at once)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub wait: bool,
    /// time to wait for the operation to complete
    #[arg(long, default_value = "30m")]
    pub timeout: String,
}

/// `health` flags.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// timeout to wait for the cluster to be ready
    #[arg(long, default_value = "20m")]
    pub wait_timeout: String,
    /// The nodes by type.
    #[command(flatten)]
    pub cluster: ClusterNodes,
    /// specify IPs of init node (checked as a control plane node)
    #[arg(long)]
    pub init_node: Option<String>,
    /// run server-side check (false is refused: the client-side checks are Kubernetes')
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub server: bool,
    /// run Kubernetes e2e test (refused: this OS runs no Kubernetes)
    #[arg(long)]
    pub run_e2e: bool,
}

/// The nodes of a cluster by type, as upstream's commands that act on a
/// whole cluster (`health`, `rotate-ca`) take them.
#[derive(Debug, Args)]
pub struct ClusterNodes {
    /// specify IPs of control plane nodes
    #[arg(long, value_delimiter = ',')]
    pub control_plane_nodes: Vec<String>,
    /// specify IPs of worker nodes
    #[arg(long, value_delimiter = ',')]
    pub worker_nodes: Vec<String>,
    /// use endpoint instead of kubeconfig default
    #[arg(long)]
    pub k8s_endpoint: Option<String>,
}

/// `apply-config --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ApplyMode {
    /// Let the node decide (no reboot when possible).
    #[default]
    Auto,
    /// Apply without a reboot; fail if a reboot is needed.
    NoReboot,
    /// Apply and reboot.
    Reboot,
    /// Store the config for the next boot.
    Staged,
    /// Apply without a reboot and roll back after --timeout unless confirmed.
    Try,
}

/// `apply-config` flags.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// `apply config` or `apply machineconfig`, as upstream takes them
    #[arg(hide = true)]
    pub what: Option<String>,
    /// the filename of the updated configuration
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// How the node applies the config.
    #[command(flatten)]
    pub apply: ApplyFlags,
    /// apply the config using the insecure (encrypted with no auth) maintenance service
    #[arg(short = 'i', long)]
    pub insecure: bool,
    /// list of server certificate fingeprints to accept (defaults to no check)
    #[arg(long = "cert-fingerprint", value_delimiter = ',', action = ArgAction::Append)]
    pub cert_fingerprints: Vec<String>,
    /// the list of config patches to apply to the local config file before sending it to the node (@file or inline YAML/JSON)
    #[arg(short = 'p', long = "config-patch", action = ArgAction::Append)]
    pub patches: Vec<String>,
}

/// How a config is applied: `apply-config`, `patch` and `edit` alike.
#[derive(Debug, Args)]
pub struct ApplyFlags {
    /// apply config mode
    #[arg(short = 'm', long, value_enum, default_value_t = ApplyMode::Auto)]
    pub mode: ApplyMode,
    /// check how the config change will be applied in dry-run mode
    #[arg(long)]
    pub dry_run: bool,
    /// the config will be rolled back after specified timeout (if try mode is selected)
    #[arg(long, default_value = "1m")]
    pub timeout: String,
}

/// `completion` arguments.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::aot::Shell,
}

/// `config` subcommands.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Add a new context
    Add(ConfigAddArgs),
    /// Set the current context
    #[command(visible_alias = "use-context")]
    Context {
        /// The context to make current
        name: String,
    },
    /// List defined contexts
    #[command(visible_alias = "get-contexts")]
    Contexts,
    /// Set the endpoint(s) for the current context
    #[command(visible_alias = "endpoints")]
    Endpoint {
        /// The endpoints
        #[arg(required = true, value_name = "ENDPOINT")]
        addresses: Vec<String>,
    },
    /// Set the node(s) for the current context
    #[command(visible_alias = "nodes")]
    Node {
        /// The nodes (none clears them)
        #[arg(value_name = "NODE")]
        addresses: Vec<String>,
    },
    /// Show information about the current context
    Info {
        /// output format (json|yaml|text). Default text.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Merge additional contexts from another client configuration file
    Merge {
        /// The talosconfig to merge in
        from: PathBuf,
    },
    /// Remove contexts
    Remove(ConfigRemoveArgs),
    /// Generate a new client configuration file
    New(ConfigNewArgs),
}

/// `config add` flags.
#[derive(Debug, Args)]
pub struct ConfigAddArgs {
    /// The new context's name
    pub name: String,
    /// the path to the CA certificate
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// the path to the certificate
    #[arg(long)]
    pub crt: Option<PathBuf>,
    /// the path to the key
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// `config remove` flags.
#[derive(Debug, Args)]
pub struct ConfigRemoveArgs {
    /// The context to remove (`*` matches any characters)
    pub name: String,
    /// do not ask for confirmation
    #[arg(short = 'y', long)]
    pub noconfirm: bool,
    /// dry run
    #[arg(long)]
    pub dry_run: bool,
}

/// `config new` flags.
#[derive(Debug, Args)]
pub struct ConfigNewArgs {
    /// Where to write the new talosconfig
    #[arg(default_value = "talosconfig")]
    pub path: PathBuf,
    /// roles
    #[arg(long, value_delimiter = ',', default_value = "os:admin")]
    pub roles: Vec<String>,
    /// certificate TTL
    #[arg(long, default_value = "8760h")]
    pub crt_ttl: String,
}

/// `gen` subcommands.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// What to generate.
    #[command(subcommand)]
    pub command: GenCommand,
}

/// `gen ...`.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum GenCommand {
    /// Generates a self-signed X.509 certificate authority
    Ca(GenCaArgs),
    /// Generates a set of configuration files for Talos cluster
    Config(GenConfigArgs),
    /// Generates an X.509 Ed25519 client certificate from a CSR
    Crt(GenCrtArgs),
    /// Generates a CSR using an Ed25519 private key
    Csr(GenCsrArgs),
    /// Generates an Ed25519 private key
    Key(GenKeyArgs),
    /// Generates an X.509 Ed25519 key pair
    Keypair(GenKeypairArgs),
    /// Generates a secrets bundle file which can later be used to generate a config
    Secrets(GenSecretsArgs),
}

/// `gen ca` arguments.
#[derive(Debug, Args)]
pub struct GenCaArgs {
    /// X.509 distinguished name for the Organization (also the files' base name)
    #[arg(long, required = true)]
    pub organization: String,
    /// the hours from now on which the certificate validity period ends
    #[arg(long, default_value_t = 87_600)]
    pub hours: u64,
    /// generate in RSA format
    #[arg(long)]
    pub rsa: bool,
    /// will overwrite existing files
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `gen crt` arguments.
#[derive(Debug, Args)]
pub struct GenCrtArgs {
    /// the basename of the generated file
    #[arg(long, required = true)]
    pub name: String,
    /// path of the CA, without extension: <ca>.crt and <ca>.key are read
    #[arg(long, required = true)]
    pub ca: String,
    /// path to the PEM encoded CERTIFICATE REQUEST
    #[arg(long, required = true)]
    pub csr: PathBuf,
    /// the hours from now on which the certificate validity period ends
    #[arg(long, default_value_t = 24)]
    pub hours: u64,
    /// will overwrite existing files
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `gen csr` arguments.
#[derive(Debug, Args)]
pub struct GenCsrArgs {
    /// path to the PEM encoded EC or Ed25519 PRIVATE KEY
    #[arg(long, required = true)]
    pub key: PathBuf,
    /// generate the certificate for this IP address
    #[arg(long, required = true)]
    pub ip: String,
    /// roles
    #[arg(long, value_delimiter = ',', default_value = "os:admin")]
    pub roles: Vec<String>,
}

/// `gen key` arguments.
#[derive(Debug, Args)]
pub struct GenKeyArgs {
    /// the basename of the generated file
    #[arg(long, required = true)]
    pub name: String,
    /// will overwrite existing files
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `gen keypair` arguments.
#[derive(Debug, Args)]
pub struct GenKeypairArgs {
    /// X.509 distinguished name for the Organization (also the files' base name)
    #[arg(long, required = true)]
    pub organization: String,
    /// generate the certificate for this IP address
    #[arg(long)]
    pub ip: Option<String>,
    /// will overwrite existing files
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `gen config` arguments.
#[derive(Debug, Args)]
pub struct GenConfigArgs {
    /// Cluster name
    pub cluster_name: String,
    /// Kubernetes API endpoint, e.g. https://10.5.0.2:6443
    pub endpoint: String,
    /// destination to output generated files. when multiple output types are specified, it must be a directory. for a single output type, it must either be a file path, or "-" for stdout
    #[arg(
        short = 'o',
        long = "output",
        alias = "output-dir",
        default_value = "."
    )]
    pub output: PathBuf,
    /// types of outputs to be generated
    #[arg(
        short = 't',
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [GenOutputType::Controlplane, GenOutputType::Worker, GenOutputType::Talosconfig]
    )]
    pub output_types: Vec<GenOutputType>,
    /// list of registry mirrors to use in format: <registry host>=<mirror URL>
    #[arg(long, action = ArgAction::Append)]
    pub registry_mirror: Vec<String>,
    /// use a secrets file generated using 'gen secrets'
    #[arg(long)]
    pub with_secrets: Option<PathBuf>,
    /// patch generated machineconfigs (applied to all node types), use @file to read a patch from file
    #[arg(long, action = ArgAction::Append)]
    pub config_patch: Vec<String>,
    /// patch generated machineconfigs (applied to 'controlplane' type)
    #[arg(long, action = ArgAction::Append)]
    pub config_patch_control_plane: Vec<String>,
    /// patch generated machineconfigs (applied to 'worker' type)
    #[arg(long, action = ArgAction::Append)]
    pub config_patch_worker: Vec<String>,
    /// the disk to install to
    #[arg(long)]
    pub install_disk: Option<String>,
    /// the image used to perform an installation
    #[arg(long)]
    pub install_image: Option<String>,
    /// a public key (PEM) whose signed installer images the nodes trust, besides their image's own (repeatable)
    #[arg(long)]
    pub installer_key: Vec<std::path::PathBuf>,
    /// additional Subject-Alt-Names for the APIServer certificate
    #[arg(long, value_delimiter = ',')]
    pub additional_sans: Vec<String>,
    /// the dns domain to use for cluster
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// desired kubernetes version to run
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    /// will overwrite existing files
    #[arg(short = 'f', long)]
    pub force: bool,
    /// enable cluster discovery feature
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub with_cluster_discovery: bool,
    /// enable KubeSpan feature
    #[arg(long)]
    pub with_kubespan: bool,
    /// the desired persist value for configs (false is refused: the node always keeps its config)
    #[arg(short = 'p', long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub persist: bool,
    /// renders all machine configs with the documentation added
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub with_docs: bool,
    /// renders all machine configs with the commented examples
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub with_examples: bool,
    /// the desired Talos version to generate config for (accepted for compatibility: configs are generated for this talosctl's own release)
    #[arg(long)]
    pub talos_version: Option<String>,
    /// the desired machine config version to generate
    #[arg(long = "version", default_value = "v1alpha1")]
    pub config_version: String,
}

/// What `gen config` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenOutputType {
    /// `controlplane.yaml`.
    Controlplane,
    /// `worker.yaml`.
    Worker,
    /// `talosconfig`.
    Talosconfig,
}

impl GenOutputType {
    /// The file it is written to in an output directory.
    #[must_use]
    pub const fn file_name(self) -> &'static str {
        match self {
            GenOutputType::Controlplane => "controlplane.yaml",
            GenOutputType::Worker => "worker.yaml",
            GenOutputType::Talosconfig => "talosconfig",
        }
    }
}

/// `gen secrets` flags.
#[derive(Debug, Args)]
pub struct GenSecretsArgs {
    /// path of the output file, or "-" for stdout
    #[arg(short = 'o', long = "output-file", default_value = "secrets.yaml")]
    pub output_file: PathBuf,
    /// use a control plane's machine config to take the secrets from (rebuilds a lost secrets.yaml)
    #[arg(long = "from-controlplane-config")]
    pub from_controlplane_config: Option<PathBuf>,
    /// will overwrite existing files
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn upstream_short_flags() {
        let cli = Cli::try_parse_from(["talosctl", "upgrade", "-m", "powercycle"]).expect("parses");
        let Command::Upgrade(args) = cli.command else {
            panic!("not upgrade");
        };
        assert_eq!(args.reboot_mode, UpgradeRebootMode::Powercycle);
        let cli = Cli::try_parse_from([
            "talosctl",
            "cgroups",
            "--preset",
            "cpu",
            "--skip-cri-resolve",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::Cgroups(args) if args.skip_cri_resolve));
        let cli = Cli::try_parse_from(["talosctl", "apply", "machineconfig", "-f", "c.yaml"])
            .expect("parses");
        assert!(
            matches!(cli.command, Command::ApplyConfig(args) if args.what.as_deref() == Some("machineconfig"))
        );
    }

    #[test]
    fn global_flags_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "talosctl",
            "logs",
            "kubelet",
            "-n",
            "10.5.0.2,10.5.0.3",
            "-e",
            "10.5.0.2",
            "--tail",
            "-1",
        ])
        .expect("parses");
        assert_eq!(cli.global.nodes, ["10.5.0.2", "10.5.0.3"]);
        assert_eq!(cli.global.endpoints, ["10.5.0.2"]);
        let Command::Logs(args) = cli.command else {
            panic!("not logs");
        };
        assert_eq!(args.id, "kubelet");
        assert_eq!(args.tail, -1);
    }

    #[test]
    fn aliases() {
        for (alias, expected) in [
            ("ls", "list"),
            ("cat", "read"),
            ("m", "memory"),
            ("ps", "processes"),
        ] {
            let cli = Cli::try_parse_from(["talosctl", alias, "/"])
                .or_else(|_| Cli::try_parse_from(["talosctl", alias]));
            let cli = cli.expect("alias parses");
            let name = match cli.command {
                Command::List(_) => "list",
                Command::Read(_) => "read",
                Command::Memory(_) => "memory",
                Command::Processes(_) => "processes",
                _ => "other",
            };
            assert_eq!(name, expected, "{alias}");
        }
    }

    #[test]
    fn reset_graceful_accepts_false() {
        let cli = Cli::try_parse_from(["talosctl", "reset", "--graceful=false"]).expect("parses");
        let Command::Reset(args) = cli.command else {
            panic!("not reset");
        };
        assert!(!args.graceful);
        let cli = Cli::try_parse_from(["talosctl", "reset"]).expect("parses");
        let Command::Reset(args) = cli.command else {
            panic!("not reset");
        };
        assert!(args.graceful);
    }

    #[test]
    fn cluster_create_waits_unless_told_not_to() {
        let wait = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).expect("parses");
            let Command::Cluster(c) = cli.command else {
                panic!("not cluster");
            };
            let crate::cluster::ClusterCommand::Create(a) = c.command else {
                panic!("not create");
            };
            a.wait
        };
        assert!(wait(&["talosctl", "cluster", "create"]));
        assert!(!wait(&["talosctl", "cluster", "create", "--wait=false"]));
    }

    /// `--wait` is on unless turned off, as upstream: `reboot`, `shutdown`,
    /// `reset` and `upgrade` follow the node by default.
    #[test]
    fn lifecycle_commands_wait_by_default() {
        let wait = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).expect("parses");
            match cli.command {
                Command::Reboot(a) => a.wait,
                Command::Shutdown(a) => a.wait,
                Command::Reset(a) => a.wait,
                Command::Upgrade(a) => a.wait,
                other => panic!("unexpected {other:?}"),
            }
        };
        for command in ["reboot", "shutdown", "reset", "upgrade"] {
            assert!(wait(&["talosctl", command]), "{command}");
            assert!(wait(&["talosctl", command, "--wait"]), "{command} --wait");
            assert!(
                !wait(&["talosctl", command, "--wait=false"]),
                "{command} --wait=false"
            );
        }
    }
}
