//! System views: `memory`, `processes`, `mounts`, `netstat`, `disks`,
//! `time`, `interfaces`, `routes`.

use std::cmp::Ordering;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use api::machine::{
    ConnectRecord, MemInfo, NetstatRequest, ProcessInfo, connect_record, netstat_request,
};
use serde::Serialize;

use crate::cli::{
    GlobalArgs, MemoryArgs, NetstatArgs, OutputFormat, ProcessSort, ProcessesArgs, TimeArgs,
    WipeArgs, WipeCommand, WipeDiskArgs, WipeMethod,
};
use crate::client::{self, CallError, Client, Options};
use crate::output::{self, Table};

// === memory ===

/// The brief `memory` columns in MiB: total, used, free, shared, buffers,
/// cache, available (upstream: meminfo kB / 1024; used = total - free -
/// cached - buffers).
#[must_use]
pub fn memory_columns(info: &MemInfo) -> [u64; 7] {
    let used = info
        .memtotal
        .saturating_sub(info.memfree)
        .saturating_sub(info.cached)
        .saturating_sub(info.buffers);
    [
        info.memtotal / 1024,
        used / 1024,
        info.memfree / 1024,
        info.shmem / 1024,
        info.buffers / 1024,
        info.cached / 1024,
        info.memavailable / 1024,
    ]
}

/// The `memory` table.
#[must_use]
pub fn memory_table(rows: &[(String, MemInfo)]) -> Table {
    let mut table = Table::new(&[
        "NODE",
        "TOTAL",
        "USED",
        "FREE",
        "SHARED",
        "BUFFERS",
        "CACHE",
        "AVAILABLE",
    ]);
    for (node, info) in rows {
        let mut cells = vec![node.clone()];
        cells.extend(memory_columns(info).iter().map(u64::to_string));
        table.push(cells);
    }
    table
}

/// `memory -v`: every field, /proc/meminfo style.
#[must_use]
pub fn memory_verbose(node: &str, m: &MemInfo) -> String {
    let kb: [(&str, u64); 44] = [
        ("MemTotal", m.memtotal),
        ("MemFree", m.memfree),
        ("MemAvailable", m.memavailable),
        ("Buffers", m.buffers),
        ("Cached", m.cached),
        ("SwapCached", m.swapcached),
        ("Active", m.active),
        ("Inactive", m.inactive),
        ("ActiveAnon", m.activeanon),
        ("InactiveAnon", m.inactiveanon),
        ("ActiveFile", m.activefile),
        ("InactiveFile", m.inactivefile),
        ("Unevictable", m.unevictable),
        ("Mlocked", m.mlocked),
        ("SwapTotal", m.swaptotal),
        ("SwapFree", m.swapfree),
        ("Dirty", m.dirty),
        ("Writeback", m.writeback),
        ("AnonPages", m.anonpages),
        ("Mapped", m.mapped),
        ("Shmem", m.shmem),
        ("Slab", m.slab),
        ("SReclaimable", m.sreclaimable),
        ("SUnreclaim", m.sunreclaim),
        ("KernelStack", m.kernelstack),
        ("PageTables", m.pagetables),
        ("NFSUnstable", m.nfsunstable),
        ("Bounce", m.bounce),
        ("WritebackTmp", m.writebacktmp),
        ("CommitLimit", m.commitlimit),
        ("CommittedAS", m.committedas),
        ("VmallocTotal", m.vmalloctotal),
        ("VmallocUsed", m.vmallocused),
        ("VmallocChunk", m.vmallocchunk),
        ("HardwareCorrupted", m.hardwarecorrupted),
        ("AnonHugePages", m.anonhugepages),
        ("ShmemHugePages", m.shmemhugepages),
        ("ShmemPmdMapped", m.shmempmdmapped),
        ("CmaTotal", m.cmatotal),
        ("CmaFree", m.cmafree),
        ("Hugepagesize", m.hugepagesize),
        ("DirectMap4k", m.directmap4k),
        ("DirectMap2M", m.directmap2m),
        ("DirectMap1G", m.directmap1g),
    ];
    let counts: [(&str, u64); 4] = [
        ("HugePagesTotal", m.hugepagestotal),
        ("HugePagesFree", m.hugepagesfree),
        ("HugePagesRsvd", m.hugepagesrsvd),
        ("HugePagesSurp", m.hugepagessurp),
    ];
    let mut text = format!("NODE: {node}\n");
    for (name, value) in kb.iter().take(40) {
        text.push_str(&format!("{name}: {value} kB\n"));
    }
    for (name, value) in counts {
        text.push_str(&format!("{name}: {value}\n"));
    }
    for (name, value) in kb.iter().skip(40) {
        text.push_str(&format!("{name}: {value} kB\n"));
    }
    text
}

/// The `memory -o json|yaml` view (MiB, as the table).
#[derive(Debug, Serialize)]
struct MemoryView {
    node: String,
    total: u64,
    used: u64,
    free: u64,
    shared: u64,
    buffers: u64,
    cache: u64,
    available: u64,
}

/// Runs `talosctl memory`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn memory(global: &GlobalArgs, args: &MemoryArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = client
        .machine_call(|mut m, r| async move { m.memory(r).await })
        .await?;
    let results = client.split(response.messages);
    let rows: Vec<(String, MemInfo)> = results
        .ok
        .into_iter()
        .map(|(node, reply)| (node, reply.meminfo.unwrap_or_default()))
        .collect();
    if args.output != OutputFormat::Text {
        let views: Vec<MemoryView> = rows
            .iter()
            .map(|(node, info)| {
                let [total, used, free, shared, buffers, cache, available] = memory_columns(info);
                MemoryView {
                    node: node.clone(),
                    total,
                    used,
                    free,
                    shared,
                    buffers,
                    cache,
                    available,
                }
            })
            .collect();
        output::print_views(&views, args.output)?;
    } else if args.verbose {
        let text: String = rows
            .iter()
            .map(|(node, info)| memory_verbose(node, info))
            .collect();
        output::out(&text)?;
    } else {
        memory_table(&rows).print()?;
    }
    client::report(&results.failed)
}

// === processes ===

/// The COMMAND column: the executable with its arguments, as upstream
/// composes it.
#[must_use]
pub fn process_command(process: &ProcessInfo) -> String {
    let command = if process.executable.is_empty() {
        process.command.clone()
    } else {
        let first_arg = process.args.split_whitespace().next();
        let executable_base = process
            .executable
            .split_whitespace()
            .next()
            .and_then(|first| Path::new(first).file_name())
            .and_then(|name| name.to_str());
        match (first_arg, executable_base) {
            (Some(arg), Some(base)) if arg == base => {
                process.args.replacen(arg, &process.executable, 1)
            }
            _ => process.args.clone(),
        }
    };
    // Non-printable characters (argv separators and the like) are dropped.
    command.chars().filter(|c| !c.is_control()).collect()
}

fn sort_processes(processes: &mut [ProcessInfo], sort: ProcessSort) {
    match sort {
        ProcessSort::Rss => processes.sort_by_key(|p| std::cmp::Reverse(p.resident_memory)),
        ProcessSort::Cpu => processes.sort_by(|a, b| {
            b.cpu_time
                .partial_cmp(&a.cpu_time)
                .unwrap_or(Ordering::Equal)
        }),
    }
}

/// The `processes` table (columns separated by two spaces, as upstream's
/// columnize output).
#[must_use]
pub fn processes_table(nodes: Vec<(String, Vec<ProcessInfo>)>, sort: ProcessSort) -> Table {
    let mut table = Table::with_padding(
        &[
            "NODE", "PID", "STATE", "THREADS", "CPU-TIME", "VIRTMEM", "RESMEM", "LABEL", "COMMAND",
        ],
        2,
    );
    for (node, mut processes) in nodes {
        sort_processes(&mut processes, sort);
        for process in &processes {
            table.push(vec![
                node.clone(),
                process.pid.to_string(),
                process.state.clone(),
                process.threads.to_string(),
                format!("{:.2}", process.cpu_time),
                output::humanize_bytes(process.virtual_memory),
                output::humanize_bytes(process.resident_memory),
                process.label.clone(),
                process_command(process),
            ]);
        }
    }
    table
}

/// Runs `talosctl processes`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn processes(global: &GlobalArgs, args: &ProcessesArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    if args.watch {
        return watch_processes(&client, args.sort).await;
    }
    let (table, failed) = processes_snapshot(&client, args.sort).await?;
    table.print()?;
    client::report(&failed)
}

/// One `processes` table, and the nodes that failed.
async fn processes_snapshot(
    client: &Client,
    sort: ProcessSort,
) -> anyhow::Result<(Table, Vec<(String, String)>)> {
    let response = client
        .machine_call(|mut m, r| async move { m.processes(r).await })
        .await?;
    let results = client.split(response.messages);
    let nodes = results
        .ok
        .into_iter()
        .map(|(node, reply)| (node, reply.processes))
        .collect();
    Ok((processes_table(nodes, sort), results.failed))
}

/// How often `processes --watch` asks again.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The screen of `processes --watch`: a title line, then the table (cut to
/// what fits), then each node that failed.
fn processes_screen(
    frame: &mut ratatui::Frame<'_>,
    sort: ProcessSort,
    table: &str,
    failed: &[(String, String)],
) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::widgets::Paragraph;
    let [title, body, errors] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(u16::try_from(failed.len()).unwrap_or(u16::MAX)),
    ])
    .areas(frame.area());
    let by = match sort {
        ProcessSort::Rss => "rss",
        ProcessSort::Cpu => "cpu",
    };
    frame.render_widget(
        Paragraph::new(format!(
            "processes, sorted by {by} (s: sort by {}, q: quit)",
            match sort {
                ProcessSort::Rss => "cpu",
                ProcessSort::Cpu => "rss",
            }
        )),
        title,
    );
    frame.render_widget(Paragraph::new(table.to_owned()), body);
    let lines: Vec<String> = failed
        .iter()
        .map(|(node, error)| format!("{node}: {error}"))
        .collect();
    frame.render_widget(Paragraph::new(lines.join("\n")), errors);
}

/// `processes --watch`: the table again every second, full screen, until
/// q, Esc or Ctrl-C (`s` switches the sort). Without a terminal, each
/// table is printed after the last, a blank line between.
async fn watch_processes(client: &Client, mut sort: ProcessSort) -> anyhow::Result<()> {
    use crate::cmd::dashboard;
    use std::io::IsTerminal as _;

    if !std::io::stdout().is_terminal() {
        // One listener for the whole run, polled from the start: an
        // interrupt while a table is fetched is not lost.
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            let snapshot = tokio::select! {
                snapshot = processes_snapshot(client, sort) => snapshot,
                _ = &mut interrupted => return Ok(()),
            };
            // A failed call is said and the watch goes on, as on screen.
            match snapshot {
                Ok((table, failed)) => {
                    table.print()?;
                    for (node, error) in &failed {
                        eprintln!("{node}: {error}");
                    }
                }
                Err(e) => eprintln!("error: {e}"),
            }
            println!();
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = &mut interrupted => return Ok(()),
            }
        }
    }
    let mut hangups = dashboard::Hangups::catch()?;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _guard = dashboard::TerminalGuard;
    loop {
        // Bounded by the interval: keys are read only between fetches, so
        // q answers within about two intervals whatever the node does.
        let (text, failed) =
            match tokio::time::timeout(WATCH_INTERVAL, processes_snapshot(client, sort)).await {
                Ok(Ok((table, failed))) => (table.render(), failed),
                Ok(Err(e)) => (String::new(), vec![("error".to_owned(), e.to_string())]),
                Err(_) => (
                    String::new(),
                    vec![("error".to_owned(), "no answer within 1s".to_owned())],
                ),
            };
        terminal
            .draw(|frame| processes_screen(frame, sort, &text, &failed))
            .context("drawing")?;
        let deadline = std::time::Instant::now() + WATCH_INTERVAL;
        if hangups.arrived() {
            return Ok(());
        }
        while let Some(key) = dashboard::key_before(deadline)? {
            if dashboard::quits(&key) {
                return Ok(());
            }
            if key.code == crossterm::event::KeyCode::Char('s') {
                sort = match sort {
                    ProcessSort::Rss => ProcessSort::Cpu,
                    ProcessSort::Cpu => ProcessSort::Rss,
                };
                break;
            }
        }
    }
}

// === mounts ===

/// The `mounts` table.
#[must_use]
pub fn mounts_table(rows: &[(String, api::machine::MountStat)]) -> Table {
    let mut table = Table::new(&[
        "NODE",
        "FILESYSTEM",
        "SIZE(GB)",
        "USED(GB)",
        "AVAILABLE(GB)",
        "PERCENT USED",
        "MOUNTED ON",
    ]);
    for (node, stat) in rows {
        if stat.size == 0 {
            // Upstream skips these (0/0 is NaN).
            continue;
        }
        #[allow(clippy::cast_precision_loss)]
        let (size, available) = (stat.size as f64, stat.available as f64);
        let used = size - available;
        let percent = 100.0 - 100.0 * (available / size);
        table.push(vec![
            node.clone(),
            stat.filesystem.clone(),
            format!("{:.2}", size * 1e-9),
            format!("{:.2}", used * 1e-9),
            format!("{:.2}", available * 1e-9),
            format!("{percent:.2}%"),
            stat.mounted_on.clone(),
        ]);
    }
    table
}

/// Runs `talosctl mounts`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn mounts(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = client
        .machine_call(|mut m, r| async move { m.mounts(r).await })
        .await?;
    let results = client.split(response.messages);
    let rows: Vec<(String, api::machine::MountStat)> = results
        .ok
        .into_iter()
        .flat_map(|(node, reply)| {
            reply
                .stats
                .into_iter()
                .map(move |stat| (node.clone(), stat))
        })
        .collect();
    mounts_table(&rows).print()?;
    client::report(&results.failed)
}

// === netstat ===

/// The request for `netstat`'s flags, as upstream's: no protocol flag
/// means TCP and UDP (`-v` every protocol), neither -4 nor -6 means both.
#[must_use]
pub fn netstat_request(args: &NetstatArgs) -> NetstatRequest {
    use netstat_request::{Feature, Filter, L4proto, NetNs};
    let any_proto = args.tcp || args.udp || args.udplite || args.raw;
    let proto = |flag: bool, by_default: bool| flag || args.verbose || (!any_proto && by_default);
    let (v4, v6) = if args.ipv4 || args.ipv6 {
        (args.ipv4, args.ipv6)
    } else {
        (true, true)
    };
    let filter = if args.all {
        Filter::All
    } else if args.listening {
        Filter::Listening
    } else {
        Filter::Connected
    };
    NetstatRequest {
        filter: filter as i32,
        feature: Some(Feature { pid: args.programs }),
        l4proto: Some(L4proto {
            tcp: proto(args.tcp, true) && v4,
            tcp6: proto(args.tcp, true) && v6,
            udp: proto(args.udp, true) && v4,
            udp6: proto(args.udp, true) && v6,
            udplite: proto(args.udplite, false) && v4,
            udplite6: proto(args.udplite, false) && v6,
            raw: proto(args.raw, false) && v4,
            raw6: proto(args.raw, false) && v6,
        }),
        netns: Some(NetNs {
            hostnetwork: true,
            netns: Vec::new(),
            allnetns: false,
        }),
    }
}

/// `ip:port` as upstream prints it: the address as the node gives it, the
/// port as a number, or `*` for a peer's port of 0.
fn endpoint(ip: &str, port: u32, peer: bool) -> String {
    if peer && port == 0 {
        format!("{ip}:*")
    } else {
        format!("{ip}:{port}")
    }
}

/// The `netstat` table: upstream's columns, `Uid` and `Inode` with -x,
/// `PID/Program name` with -p, `Timer` with -o. A socket shows its state
/// unless it is CLOSE, as upstream's.
#[must_use]
pub fn netstat_table(rows: &[(String, ConnectRecord)], args: &NetstatArgs) -> Table {
    let mut header = vec![
        "NODE",
        "Proto",
        "Recv-Q",
        "Send-Q",
        "Local Address",
        "Foreign Address",
        "State",
    ];
    if args.extend {
        header.extend(["Uid", "Inode"]);
    }
    if args.programs {
        header.push("PID/Program name");
    }
    if args.timers {
        header.push("Timer");
    }
    let mut table = Table::new(&header);
    for (node, r) in rows {
        let state = match connect_record::State::try_from(r.state) {
            Ok(connect_record::State::Close) => String::new(),
            Ok(state) => state.as_str_name().to_owned(),
            Err(_) => r.state.to_string(),
        };
        let mut row = vec![
            node.clone(),
            r.l4proto.clone(),
            r.rxqueue.to_string(),
            r.txqueue.to_string(),
            endpoint(&r.localip, r.localport, false),
            endpoint(&r.remoteip, r.remoteport, true),
            state,
        ];
        if args.extend {
            row.extend([r.uid.to_string(), r.inode.to_string()]);
        }
        if args.programs {
            row.push(match &r.process {
                Some(p) if p.pid != 0 => format!("{}/{}", p.pid, p.name),
                _ => "-".to_owned(),
            });
        }
        if args.timers {
            // The kernel's jiffies (USER_HZ, 100 a second) as seconds.
            let timer = connect_record::TimerActive::try_from(r.tr)
                .map_or_else(|_| r.tr.to_string(), |t| t.as_str_name().to_lowercase());
            row.push(format!(
                "{timer} ({:.2}/{}/{})",
                r.timerwhen as f64 / 100.0,
                r.retrnsmt,
                r.timeout
            ));
        }
        table.push(row);
    }
    table
}

/// Runs `talosctl netstat`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn netstat(global: &GlobalArgs, args: &NetstatArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let request = netstat_request(args);
    let response = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::machine(channel).netstat(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let rows: Vec<(String, ConnectRecord)> = results
        .ok
        .into_iter()
        .flat_map(|(node, reply)| {
            reply
                .connectrecord
                .into_iter()
                .map(move |r| (node.clone(), r))
        })
        .collect();
    netstat_table(&rows, args).print()?;
    client::report(&results.failed)
}

// === disks ===

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Runs `talosctl disks`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn disks(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = client
        .call(|channel| {
            let request = client.request(());
            async move { client::storage(channel).disks(request).await }
        })
        .await?;
    let results = client.split(response.messages);
    let mut table = Table::new(&[
        "NODE",
        "DEV",
        "MODEL",
        "SERIAL",
        "TYPE",
        "UUID",
        "WWID",
        "MODALIAS",
        "NAME",
        "SIZE",
        "BUS_PATH",
        "SUBSYSTEM",
        "READ_ONLY",
        "SYSTEM_DISK",
    ]);
    for (node, reply) in &results.ok {
        for disk in &reply.disks {
            let kind = api::storage::disk::DiskType::try_from(disk.r#type)
                .map_or("UNKNOWN", |kind| kind.as_str_name());
            table.push(vec![
                node.clone(),
                dash(&disk.device_name),
                dash(&disk.model),
                dash(&disk.serial),
                kind.to_owned(),
                dash(&disk.uuid),
                dash(&disk.wwid),
                dash(&disk.modalias),
                dash(&disk.name),
                output::humanize_bytes(disk.size),
                dash(&disk.bus_path),
                dash(&disk.subsystem),
                if disk.readonly { "*" } else { "" }.to_owned(),
                if disk.system_disk { "*" } else { "" }.to_owned(),
            ]);
        }
    }
    table.print()?;
    client::report(&results.failed)
}

// === wipe ===

/// The wire request of `talosctl wipe disk`.
fn wipe_request(args: &WipeDiskArgs) -> api::storage::BlockDeviceWipeRequest {
    use api::storage::block_device_wipe_descriptor::Method;
    let method = match args.method {
        WipeMethod::Fast => Method::Fast,
        WipeMethod::Zeroes => Method::Zeroes,
    };
    api::storage::BlockDeviceWipeRequest {
        devices: args
            .devices
            .iter()
            .map(|d| api::storage::BlockDeviceWipeDescriptor {
                device: d.strip_prefix("/dev/").unwrap_or(d).to_owned(),
                method: method as i32,
                skip_volume_check: args.skip_volume_check,
                drop_partition: args.drop_partition,
                skip_secondary_check: args.skip_secondary_check,
            })
            .collect(),
    }
}

/// Runs `talosctl wipe`.
///
/// # Errors
/// The client setup or the call failed, or a node refused or failed.
pub async fn wipe(global: &GlobalArgs, args: WipeArgs) -> anyhow::Result<()> {
    let WipeCommand::Disk(args) = args.command;
    let request = wipe_request(&args);
    let client = Client::connect(
        global,
        Options {
            insecure: args.insecure,
            ..Options::default()
        },
    )?;
    let response = client
        .call(|channel| {
            let request = client.request(request.clone());
            async move { client::storage(channel).block_device_wipe(request).await }
        })
        .await?;
    client::report(&client.split(response.messages).failed)
}

// === time ===

/// Runs `talosctl time`.
///
/// # Errors
/// The client setup or the call failed, or a node failed.
pub async fn time(global: &GlobalArgs, args: TimeArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let response = match args.check {
        Some(server) => {
            let request = api::time::TimeRequest { server };
            client
                .call(|channel| {
                    let request = client.request(request.clone());
                    async move { client::time(channel).time_check(request).await }
                })
                .await?
        }
        None => {
            client
                .call(|channel| {
                    let request = client.request(());
                    async move { client::time(channel).time(request).await }
                })
                .await?
        }
    };
    let results = client.split(response.messages);
    let mut table = Table::new(&["NODE", "NTP-SERVER", "NODE-TIME", "NTP-SERVER-TIME"]);
    for (node, reply) in &results.ok {
        table.push(vec![
            node.clone(),
            reply.server.clone(),
            output::timestamp_string(reply.localtime.as_ref()),
            output::timestamp_string(reply.remotetime.as_ref()),
        ]);
    }
    table.print()?;
    client::report(&results.failed)
}

// === network ===

/// `(node, reply)` of the nodes that answered, `(node, error)` of the
/// others.
type NodeReplies<R> = (Vec<(String, R)>, Vec<(String, String)>);

/// Calls a NetworkService method on each node in turn (the method cannot
/// be fanned out by apid), collecting replies and per-node failures.
async fn per_node<R, F, Fut>(client: &Client, rpc: F) -> anyhow::Result<NodeReplies<R>>
where
    R: client::Reply,
    F: Fn(tonic::transport::Channel, tonic::Request<()>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Vec<R>>, tonic::Status>>,
{
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for node_client in client.per_node() {
        let result = node_client
            .try_call(|channel| rpc(channel, node_client.request(())))
            .await;
        match result {
            Ok(messages) => {
                let results = node_client.split(messages);
                ok.extend(results.ok);
                failed.extend(results.failed);
            }
            Err(CallError::Status(status)) => failed.push((
                node_client.default_node().to_owned(),
                client::rpc_error_text(&status),
            )),
            Err(err @ CallError::Transport(_)) => return Err(node_client.call_error(err)),
        }
    }
    Ok((ok, failed))
}

/// Runs `talosctl interfaces`.
///
/// # Errors
/// The client setup or the calls failed, or a node failed.
pub async fn interfaces(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let (ok, failed) = per_node(&client, |channel, request| async move {
        client::network(channel)
            .interfaces(request)
            .await
            .map(|response| response.map(|reply| reply.messages))
    })
    .await?;
    let mut table = Table::new(&["NODE", "INDEX", "NAME", "MAC", "MTU", "ADDRESS"]);
    for (node, reply) in &ok {
        for interface in &reply.interfaces {
            let addresses = if interface.ipaddress.is_empty() {
                vec![String::new()]
            } else {
                interface.ipaddress.clone()
            };
            for address in addresses {
                table.push(vec![
                    node.clone(),
                    interface.index.to_string(),
                    interface.name.clone(),
                    interface.hardwareaddr.clone(),
                    interface.mtu.to_string(),
                    address,
                ]);
            }
        }
    }
    table.print()?;
    client::report(&failed)
}

/// Runs `talosctl routes`.
///
/// # Errors
/// The client setup or the calls failed, or a node failed.
pub async fn routes(global: &GlobalArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::default())?;
    let (ok, failed) = per_node(&client, |channel, request| async move {
        client::network(channel)
            .routes(request)
            .await
            .map(|response| response.map(|reply| reply.messages))
    })
    .await?;
    let mut table = Table::new(&["NODE", "INTERFACE", "DESTINATION", "GATEWAY", "METRIC"]);
    for (node, reply) in &ok {
        for route in &reply.routes {
            table.push(vec![
                node.clone(),
                route.interface.clone(),
                route.destination.clone(),
                route.gateway.clone(),
                route.metric.to_string(),
            ]);
        }
    }
    table.print()?;
    client::report(&failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_screen_shows_the_table_the_sort_and_failures() {
        let mut terminal =
            ratatui::Terminal::new(ratatui::backend::TestBackend::new(80, 8)).expect("terminal");
        let table = "NODE  PID  COMMAND\n10.5.0.2  1  /sbin/init\n";
        let failed = vec![("10.5.0.3".to_owned(), "unreachable".to_owned())];
        terminal
            .draw(|frame| processes_screen(frame, ProcessSort::Cpu, table, &failed))
            .expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let lines: Vec<String> = (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            lines[0],
            "processes, sorted by cpu (s: sort by rss, q: quit)"
        );
        assert_eq!(lines[1], "NODE  PID  COMMAND");
        assert_eq!(lines[2], "10.5.0.2  1  /sbin/init");
        assert_eq!(lines[7], "10.5.0.3: unreachable");
    }

    #[test]
    fn wipe_disk_sends_kernel_names_and_the_flags() {
        let args = WipeDiskArgs {
            devices: vec!["/dev/sdb".into(), "nvme0n1p3".into()],
            method: WipeMethod::Zeroes,
            skip_volume_check: true,
            skip_secondary_check: false,
            drop_partition: true,
            insecure: false,
        };
        let request = wipe_request(&args);
        let names: Vec<&str> = request.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["sdb", "nvme0n1p3"]);
        for d in &request.devices {
            assert_eq!(
                d.method,
                api::storage::block_device_wipe_descriptor::Method::Zeroes as i32
            );
            assert!(d.skip_volume_check && d.drop_partition && !d.skip_secondary_check);
        }
    }

    fn netstat_args(flags: &str) -> NetstatArgs {
        let has = |c| flags.contains(c);
        NetstatArgs {
            all: has('a'),
            verbose: has('v'),
            timers: has('o'),
            extend: has('x'),
            listening: has('l'),
            programs: has('p'),
            raw: has('w'),
            tcp: has('t'),
            udp: has('u'),
            udplite: has('U'),
            ipv4: has('4'),
            ipv6: has('6'),
        }
    }

    #[test]
    fn netstat_flags_to_request() {
        use netstat_request::Filter;
        let all = netstat_request(&netstat_args(""));
        assert_eq!(all.filter, Filter::Connected as i32);
        let l4 = all.l4proto.expect("l4");
        // Upstream's default: TCP and UDP, both families; UDPLite and raw
        // only when asked for (or -v).
        assert!(l4.tcp && l4.tcp6 && l4.udp && l4.udp6 && !l4.udplite && !l4.raw6);
        let tcp4 = netstat_request(&netstat_args("lt4p"));
        assert_eq!(tcp4.filter, Filter::Listening as i32);
        assert!(tcp4.feature.expect("feature").pid);
        let l4 = tcp4.l4proto.expect("l4");
        assert!(l4.tcp && !l4.tcp6 && !l4.udp && !l4.udp6 && !l4.raw);
        assert_eq!(
            netstat_request(&netstat_args("al")).filter,
            Filter::All as i32
        );
    }

    #[test]
    fn netstat_rows() {
        let record = |proto: &str, local: (&str, u32), remote: (&str, u32), state| ConnectRecord {
            l4proto: proto.to_owned(),
            localip: local.0.to_owned(),
            localport: local.1,
            remoteip: remote.0.to_owned(),
            remoteport: remote.1,
            state,
            rxqueue: 1,
            txqueue: 2,
            uid: 0,
            inode: 99,
            process: Some(connect_record::Process {
                pid: 7,
                name: "apid".to_owned(),
            }),
            ..ConnectRecord::default()
        };
        let rows = vec![
            (
                "n1".to_owned(),
                record("tcp", ("127.0.0.1", 50000), ("0.0.0.0", 0), 10),
            ),
            ("n1".to_owned(), record("udp6", ("::1", 514), ("::", 0), 7)),
            (
                "n1".to_owned(),
                record("udp", ("10.5.0.2", 123), ("10.5.0.1", 123), 1),
            ),
        ];
        let text = netstat_table(&rows, &netstat_args("xp")).render();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][..2], ["NODE", "Proto"]);
        assert!(text.lines().next().unwrap().ends_with("PID/Program name"));
        assert_eq!(
            lines[1],
            [
                "n1",
                "tcp",
                "1",
                "2",
                "127.0.0.1:50000",
                "0.0.0.0:*",
                "LISTEN",
                "0",
                "99",
                "7/apid"
            ]
        );
        assert_eq!(
            lines[2],
            [
                "n1", "udp6", "1", "2", "::1:514", ":::*", "0", "99", "7/apid"
            ]
        );
        // A connected UDP socket shows its state, as upstream's.
        assert_eq!(
            lines[3][4..7],
            ["10.5.0.2:123", "10.5.0.1:123", "ESTABLISHED"]
        );
        // -o: the timer, when it fires (jiffies as seconds), retransmits
        // and probes.
        let mut timed = rows[0].clone();
        timed.1.tr = 2;
        timed.1.timerwhen = 712;
        timed.1.retrnsmt = 1;
        let text = netstat_table(&[timed], &netstat_args("o")).render();
        assert!(text.lines().next().unwrap().ends_with("Timer"), "{text}");
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("keepalive (7.12/1/0)"),
            "{text}"
        );
        // -v asks for every protocol; without a protocol flag, TCP and UDP.
        let all = netstat_request(&netstat_args("tv"))
            .l4proto
            .expect("protocols");
        assert!(all.tcp && all.udp && all.udplite6 && all.raw);
        let plain = netstat_request(&netstat_args(""))
            .l4proto
            .expect("protocols");
        assert!(plain.tcp && plain.udp6 && !plain.udplite && !plain.raw6);
    }

    #[test]
    fn memory_math_in_mib() {
        let info = MemInfo {
            memtotal: 8_000_000,
            memfree: 2_000_000,
            memavailable: 5_000_000,
            buffers: 100_000,
            cached: 1_900_000,
            shmem: 50_000,
            ..MemInfo::default()
        };
        // used = 8_000_000 - 2_000_000 - 1_900_000 - 100_000 = 4_000_000 kB
        assert_eq!(
            memory_columns(&info),
            [7812, 3906, 1953, 48, 97, 1855, 4882]
        );
        let rows = vec![("10.5.0.2".to_owned(), info)];
        assert_eq!(
            memory_table(&rows).render(),
            "NODE       TOTAL   USED   FREE   SHARED   BUFFERS   CACHE   AVAILABLE\n\
             10.5.0.2   7812    3906   1953   48       97        1855    4882\n"
        );
    }

    #[test]
    fn memory_used_never_underflows() {
        let info = MemInfo {
            memtotal: 100,
            memfree: 200,
            ..MemInfo::default()
        };
        assert_eq!(memory_columns(&info)[1], 0);
    }

    #[test]
    fn process_commands() {
        let mut process = ProcessInfo {
            command: "kthreadd".into(),
            ..ProcessInfo::default()
        };
        assert_eq!(process_command(&process), "kthreadd");
        process.executable = "/usr/bin/containerd".into();
        process.args = "containerd --address /run/x.sock".into();
        assert_eq!(
            process_command(&process),
            "/usr/bin/containerd --address /run/x.sock"
        );
        process.args = "other --flag".into();
        assert_eq!(process_command(&process), "other --flag");
        process.args = "other\u{0}--flag".into();
        assert_eq!(process_command(&process), "other--flag");
    }

    #[test]
    fn processes_sorted_by_rss() {
        let small = ProcessInfo {
            pid: 1,
            resident_memory: 10,
            command: "a".into(),
            ..ProcessInfo::default()
        };
        let big = ProcessInfo {
            pid: 2,
            resident_memory: 20_000_000,
            command: "b".into(),
            ..ProcessInfo::default()
        };
        let table = processes_table(vec![("n".into(), vec![small, big])], ProcessSort::Rss);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE  PID  STATE"), "{text}");
        assert!(lines[1].starts_with("n     2"), "{text}");
        assert!(lines[1].contains("20 MB"), "{text}");
    }

    #[test]
    fn mounts_rows() {
        let rows = vec![
            (
                "n".to_owned(),
                api::machine::MountStat {
                    filesystem: "/dev/sda1".into(),
                    size: 10_000_000_000,
                    available: 2_500_000_000,
                    mounted_on: "/var".into(),
                },
            ),
            (
                "n".to_owned(),
                api::machine::MountStat {
                    filesystem: "proc".into(),
                    size: 0,
                    available: 0,
                    mounted_on: "/proc".into(),
                },
            ),
        ];
        assert_eq!(
            mounts_table(&rows).render(),
            "NODE   FILESYSTEM   SIZE(GB)   USED(GB)   AVAILABLE(GB)   PERCENT USED   MOUNTED ON\n\
             n      /dev/sda1    10.00      7.50       2.50            75.00%         /var\n"
        );
    }
}
