//! `talosctl dashboard`: a node at a glance, refreshed in the terminal.
//!
//! Two screens per node. The summary: what it is (hostname, version,
//! mode, uptime), how busy it is (CPU since the last refresh, memory,
//! load), its addresses, its services and the end of machined's log. The
//! monitor: CPU and memory over the last refreshes, each link's and each
//! disk's throughput, and the processes by CPU. `1`/`2` (F1/F2, Tab)
//! switch screens, `[`/`]` or the arrow keys switch nodes, `q` quits. The
//! data comes from the same calls the other commands make ([`fetch`],
//! [`fetch_monitor`]); drawing ([`draw`], [`draw_monitor`]) is a pure
//! function of it, so it is tested on ratatui's test backend.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table, Wrap};

use crate::cli::{DashboardArgs, GlobalArgs};
use crate::client::{self, Client, Options};

/// Lines of machined's log shown.
pub const LOG_LINES: i32 = 30;

/// Refreshes of CPU and memory the monitor's graphs keep.
pub const HISTORY: usize = 120;

/// Processes the monitor lists.
pub const TOP_PROCESSES: usize = 50;

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Screen {
    /// The node at a glance.
    #[default]
    Summary,
    /// Graphs, throughput and processes.
    Monitor,
}

/// One process as the monitor samples it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessSample {
    /// Its pid.
    pub pid: i32,
    /// Its state letter.
    pub state: String,
    /// Its threads.
    pub threads: i32,
    /// CPU time so far, seconds.
    pub cpu_time: f64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Its command line.
    pub command: String,
}

/// What the monitor samples of one node: counters, turned into rates
/// against the sample before ([`MonitorSample::rates`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorSample {
    /// When, as the client saw it.
    pub at: Option<std::time::Instant>,
    /// Processes.
    pub processes: Vec<ProcessSample>,
    /// `(link, received bytes, sent bytes)`.
    pub links: Vec<(String, u64, u64)>,
    /// `(disk, bytes read, bytes written)`.
    pub disks: Vec<(String, u64, u64)>,
    /// What could not be read, and why.
    pub errors: Vec<String>,
}

/// Per-second rates between two samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    /// `(link, received/s, sent/s)`; `None` before a second sample.
    pub links: Vec<(String, Option<f64>, Option<f64>)>,
    /// `(disk, read/s, written/s)`.
    pub disks: Vec<(String, Option<f64>, Option<f64>)>,
    /// `(process, CPU percent of one CPU)`, busiest first.
    pub processes: Vec<(ProcessSample, Option<f64>)>,
}

impl MonitorSample {
    /// The rates since `before` (of the same node); without it, or for
    /// what it did not have (a new link, a new process), none.
    #[must_use]
    pub fn rates(&self, before: Option<&MonitorSample>) -> Rates {
        let seconds = match (self.at, before.and_then(|b| b.at)) {
            (Some(now), Some(then)) => now.duration_since(then).as_secs_f64(),
            _ => 0.0,
        };
        let per_second = |now: u64, then: Option<u64>| {
            then.filter(|_| seconds > 0.0)
                .map(|then| now.saturating_sub(then) as f64 / seconds)
        };
        let pair = |list: &[(String, u64, u64)], earlier: Option<&[(String, u64, u64)]>| {
            list.iter()
                .map(|(name, a, b)| {
                    let then = earlier.and_then(|e| e.iter().find(|(n, _, _)| n == name));
                    (
                        name.clone(),
                        per_second(*a, then.map(|t| t.1)),
                        per_second(*b, then.map(|t| t.2)),
                    )
                })
                .collect()
        };
        let mut processes: Vec<(ProcessSample, Option<f64>)> = self
            .processes
            .iter()
            .map(|p| {
                let then = before.and_then(|b| {
                    b.processes
                        .iter()
                        .find(|q| q.pid == p.pid && q.command == p.command)
                });
                let share = then
                    .filter(|_| seconds > 0.0)
                    .map(|t| ((p.cpu_time - t.cpu_time).max(0.0) / seconds * 100.0).max(0.0));
                (p.clone(), share)
            })
            .collect();
        // Busiest first, then the largest.
        processes.sort_by(|(a, x), (b, y)| {
            y.unwrap_or(0.0)
                .total_cmp(&x.unwrap_or(0.0))
                .then(b.rss.cmp(&a.rss))
                .then(a.pid.cmp(&b.pid))
        });
        Rates {
            links: pair(&self.links, before.map(|b| b.links.as_slice())),
            disks: pair(&self.disks, before.map(|b| b.disks.as_slice())),
            processes,
        }
    }
}

/// CPU and memory percentages of the last refreshes of one node, oldest
/// first, at most [`HISTORY`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// CPU busy, percent.
    pub cpu: std::collections::VecDeque<u64>,
    /// Memory in use, percent.
    pub memory: std::collections::VecDeque<u64>,
}

impl History {
    /// Adds a refresh: its CPU share and memory, where known.
    pub fn push(&mut self, cpu: Option<f64>, memory: Option<(u64, u64)>) {
        let percent = |v: f64| v.round().clamp(0.0, 100.0) as u64;
        if let Some(cpu) = cpu {
            self.cpu.push_back(percent(cpu));
        }
        if let Some((used, total)) = memory.filter(|(_, total)| *total > 0) {
            self.memory
                .push_back(percent(used as f64 / total as f64 * 100.0));
        }
        for series in [&mut self.cpu, &mut self.memory] {
            while series.len() > HISTORY {
                series.pop_front();
            }
        }
    }
}

/// CPU time counters (seconds), for the busy share between two refreshes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// Time doing anything.
    pub busy: f64,
    /// Time in all.
    pub total: f64,
}

/// What the dashboard shows of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    /// The node as targeted.
    pub node: String,
    /// Its hostname.
    pub hostname: String,
    /// Its version tag.
    pub version: String,
    /// `metal` or `container`.
    pub mode: String,
    /// Since boot.
    pub uptime: Option<Duration>,
    /// CPU counters now.
    pub cpu: Option<CpuTimes>,
    /// Memory used and total, KiB.
    pub memory: Option<(u64, u64)>,
    /// Load averages.
    pub load: Option<(f64, f64, f64)>,
    /// `link address` pairs.
    pub addresses: Vec<(String, String)>,
    /// `(id, state, health)` of each service.
    pub services: Vec<(String, String, String)>,
    /// The end of machined's log.
    pub log: Vec<String>,
    /// What could not be read, and why.
    pub errors: Vec<String>,
}

impl NodeView {
    /// The busy share of the CPUs between `before` and this view, percent.
    #[must_use]
    pub fn cpu_percent(&self, before: Option<CpuTimes>) -> Option<f64> {
        let (now, before) = (self.cpu?, before?);
        let total = now.total - before.total;
        (total > 0.0).then(|| ((now.busy - before.busy) / total * 100.0).clamp(0.0, 100.0))
    }
}

/// Reads everything the dashboard shows from the one node `client`
/// targets. A part that fails is named in `errors`; the rest is shown.
pub async fn fetch(client: &Client) -> NodeView {
    let mut view = NodeView {
        node: client.default_node().to_owned(),
        ..NodeView::default()
    };
    let mut errors = Vec::new();

    match client
        .machine_call(|mut m, r| async move { m.version(r).await })
        .await
    {
        Ok(reply) => {
            if let Some(v) = reply.messages.into_iter().next() {
                view.version = v.version.map(|i| i.tag).unwrap_or_default();
                view.mode = v.platform.map(|p| p.mode).unwrap_or_default();
            }
        }
        Err(e) => errors.push(view_error("version", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.hostname(r).await })
        .await
    {
        Ok(reply) => {
            view.hostname = reply
                .messages
                .into_iter()
                .next()
                .map(|h| h.hostname)
                .unwrap_or_default();
        }
        Err(e) => errors.push(view_error("hostname", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.system_stat(r).await })
        .await
    {
        Ok(reply) => {
            if let Some(s) = reply.messages.into_iter().next() {
                view.uptime = SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(s.boot_time))
                    .and_then(|boot| SystemTime::now().duration_since(boot).ok());
                view.cpu = s.cpu_total.map(|c| {
                    let busy = c.user + c.nice + c.system + c.irq + c.soft_irq + c.steal;
                    CpuTimes {
                        busy,
                        total: busy + c.idle + c.iowait,
                    }
                });
            }
        }
        Err(e) => errors.push(view_error("system stat", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.memory(r).await })
        .await
    {
        Ok(reply) => {
            view.memory = reply
                .messages
                .into_iter()
                .next()
                .and_then(|m| m.meminfo)
                .map(|m| (m.memtotal.saturating_sub(m.memavailable), m.memtotal));
        }
        Err(e) => errors.push(view_error("memory", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.load_avg(r).await })
        .await
    {
        Ok(reply) => {
            view.load = reply
                .messages
                .into_iter()
                .next()
                .map(|l| (l.load1, l.load5, l.load15));
        }
        Err(e) => errors.push(view_error("load", &e)),
    }
    match client
        .call(|c| {
            let r = client.request(());
            async move { client::network(c).interfaces(r).await }
        })
        .await
    {
        Ok(reply) => {
            for interface in reply.messages.into_iter().flat_map(|m| m.interfaces) {
                for address in interface.ipaddress {
                    view.addresses.push((interface.name.clone(), address));
                }
            }
        }
        Err(e) => errors.push(view_error("addresses", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.service_list(r).await })
        .await
    {
        Ok(reply) => {
            for service in reply.messages.into_iter().flat_map(|m| m.services) {
                let health = super::services::health_status(&service).to_owned();
                view.services.push((service.id, service.state, health));
            }
        }
        Err(e) => errors.push(view_error("services", &e)),
    }
    match log_tail(client).await {
        Ok(lines) => view.log = lines,
        Err(e) => errors.push(view_error("machined's log", &e)),
    }
    view.errors = errors;
    view
}

fn view_error(what: &str, e: &anyhow::Error) -> String {
    format!("{what}: {e:#}")
}

/// Reads what the monitor shows of the one node `client` targets: its
/// processes, its links' and its disks' counters. A part that fails is
/// named in `errors`.
pub async fn fetch_monitor(client: &Client) -> MonitorSample {
    let mut sample = MonitorSample {
        at: Some(std::time::Instant::now()),
        ..MonitorSample::default()
    };
    match client
        .machine_call(|mut m, r| async move { m.processes(r).await })
        .await
    {
        Ok(reply) => {
            sample.processes = reply
                .messages
                .into_iter()
                .flat_map(|m| m.processes)
                .map(|p| ProcessSample {
                    command: super::system::process_command(&p),
                    pid: p.pid,
                    state: p.state,
                    threads: p.threads,
                    cpu_time: p.cpu_time,
                    rss: p.resident_memory,
                })
                .collect();
        }
        Err(e) => sample.errors.push(view_error("processes", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.network_device_stats(r).await })
        .await
    {
        Ok(reply) => {
            sample.links = reply
                .messages
                .into_iter()
                .flat_map(|m| m.devices)
                .filter(|d| d.name != "lo")
                .map(|d| (d.name, d.rx_bytes, d.tx_bytes))
                .collect();
        }
        Err(e) => sample.errors.push(view_error("network", &e)),
    }
    match client
        .machine_call(|mut m, r| async move { m.disk_stats(r).await })
        .await
    {
        Ok(reply) => {
            // Sectors of 512 bytes, whatever the disk's own size.
            sample.disks = reply
                .messages
                .into_iter()
                .flat_map(|m| m.devices)
                .filter(|d| d.read_completed.saturating_add(d.write_completed) > 0)
                .map(|d| {
                    (
                        d.name,
                        d.read_sectors.saturating_mul(512),
                        d.write_sectors.saturating_mul(512),
                    )
                })
                .collect();
        }
        Err(e) => sample.errors.push(view_error("disks", &e)),
    }
    sample
}

async fn log_tail(client: &Client) -> anyhow::Result<Vec<String>> {
    let stream = client
        .call(|c| {
            let r = client.request(api::machine::LogsRequest {
                namespace: "system".to_owned(),
                id: "machined".to_owned(),
                driver: api::common::ContainerDriver::Containerd as i32,
                follow: false,
                tail_lines: LOG_LINES,
            });
            async move { client::machine(c).logs(r).await }
        })
        .await?;
    let mut bytes = Vec::new();
    super::files::drain_data(client, stream, |chunk| {
        bytes.extend_from_slice(&chunk);
        Ok(true)
    })
    .await?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn kib(n: u64) -> String {
    machinery::humanize::ibytes(n.saturating_mul(1024))
}

/// The first line of each screen: the node, which of how many, and
/// `screen`'s name after it.
fn draw_header(
    frame: &mut Frame<'_>,
    area: ratatui::layout::Rect,
    view: &NodeView,
    index: usize,
    count: usize,
    screen: &str,
) {
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "talosctl dashboard  node {} ({}/{count}){screen}",
            view.node,
            index + 1
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        area,
    );
}

/// Draws `view`: node `index` of `count`, its CPU share since the last
/// refresh.
pub fn draw(frame: &mut Frame<'_>, view: &NodeView, cpu: Option<f64>, index: usize, count: usize) {
    let [header, top, logs, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(10),
        Constraint::Percentage(40),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, view, index, count, "");

    let [info, services] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let mut lines = vec![
        Line::from(format!("HOSTNAME  {}", view.hostname)),
        Line::from(format!("VERSION   {}", view.version)),
        Line::from(format!("MODE      {}", view.mode)),
        Line::from(format!(
            "UPTIME    {}",
            view.uptime.map_or_else(
                || "-".to_owned(),
                |u| crate::output::go_duration(i64::try_from(u.as_secs()).unwrap_or(i64::MAX))
            )
        )),
        Line::from(format!(
            "CPU       {}",
            cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}%"))
        )),
        Line::from(format!(
            "MEMORY    {}",
            view.memory.map_or_else(
                || "-".to_owned(),
                |(used, total)| format!("{} / {}", kib(used), kib(total))
            )
        )),
        Line::from(format!(
            "LOAD      {}",
            view.load.map_or_else(
                || "-".to_owned(),
                |(a, b, c)| format!("{a:.2} {b:.2} {c:.2}")
            )
        )),
    ];
    for (link, address) in &view.addresses {
        lines.push(Line::from(format!("ADDRESS   {address} ({link})")));
    }
    for error in &view.errors {
        lines.push(Line::from(format!("ERROR     {error}")));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" Node "))
            .wrap(Wrap { trim: false }),
        info,
    );

    let rows = view
        .services
        .iter()
        .map(|(id, state, health)| Row::new([id.as_str(), state.as_str(), health.as_str()]));
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Percentage(40),
                Constraint::Percentage(30),
                Constraint::Percentage(30),
            ],
        )
        .header(
            Row::new(["SERVICE", "STATE", "HEALTH"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" Services ")),
        services,
    );

    // The newest lines, as many as fit.
    let room = usize::from(logs.height.saturating_sub(2));
    let start = view.log.len().saturating_sub(room);
    let text: Vec<Line<'_>> = view.log[start..]
        .iter()
        .map(|l| Line::from(l.as_str()))
        .collect();
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(" machined ")),
        logs,
    );
    frame.render_widget(Paragraph::new(Line::from(FOOTER)), footer);
}

/// The keys, at the foot of each screen.
const FOOTER: &str = "1 summary  2 monitor   [ ] or ← → switch nodes   q quit";

fn rate(value: Option<f64>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |v| format!("{}/s", machinery::humanize::ibytes(v.round() as u64)),
    )
}

/// Draws the monitor of `view`'s node: `history` as graphs, and `rates`
/// (from [`MonitorSample::rates`]), with the sample's errors.
pub fn draw_monitor(
    frame: &mut Frame<'_>,
    view: &NodeView,
    history: &History,
    rates: &Rates,
    errors: &[String],
    index: usize,
    count: usize,
) {
    let [header, graphs, io, processes, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, view, index, count, "  monitor");

    let [cpu_area, memory_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(graphs);
    for (area, title, series) in [
        (cpu_area, "CPU", &history.cpu),
        (memory_area, "Memory", &history.memory),
    ] {
        // The newest values, as many as fit.
        let room = usize::from(area.width.saturating_sub(2));
        let data: Vec<u64> = series
            .iter()
            .skip(series.len().saturating_sub(room))
            .copied()
            .collect();
        let now = series
            .back()
            .map_or_else(|| "-".to_owned(), |v| format!("{v}%"));
        frame.render_widget(
            Sparkline::default()
                .block(Block::bordered().title(format!(" {title} {now} ")))
                .data(&data)
                .max(100),
            area,
        );
    }

    let [links_area, disks_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(io);
    for (area, title, columns, rows) in [
        (links_area, " Network ", ["LINK", "RX", "TX"], &rates.links),
        (
            disks_area,
            " Disks ",
            ["DISK", "READ", "WRITE"],
            &rates.disks,
        ),
    ] {
        let rows = rows
            .iter()
            .map(|(name, a, b)| Row::new([name.clone(), rate(*a), rate(*b)]));
        frame.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Percentage(40),
                    Constraint::Percentage(30),
                    Constraint::Percentage(30),
                ],
            )
            .header(Row::new(columns).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::bordered().title(title)),
            area,
        );
    }

    let mut rows: Vec<Row<'_>> = errors
        .iter()
        .map(|e| {
            Row::new([
                "ERROR".to_owned(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                e.clone(),
            ])
        })
        .collect();
    rows.extend(rates.processes.iter().take(TOP_PROCESSES).map(|(p, cpu)| {
        Row::new([
            p.pid.to_string(),
            p.state.clone(),
            p.threads.to_string(),
            cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
            machinery::humanize::ibytes(p.rss),
            p.command.clone(),
        ])
    }));
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(7),
                Constraint::Length(5),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(10),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["PID", "STATE", "THREADS", "CPU%", "RSS", "COMMAND"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" Processes ")),
        processes,
    );
    frame.render_widget(Paragraph::new(Line::from(FOOTER)), footer);
}

/// The next key pressed before `deadline`, if any (releases and other
/// events are skipped).
///
/// # Errors
/// The terminal cannot be read.
pub(crate) fn key_before(
    deadline: std::time::Instant,
) -> anyhow::Result<Option<crossterm::event::KeyEvent>> {
    use crossterm::event::{self, Event, KeyEventKind};
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !event::poll(left).context("reading the terminal")? {
            return Ok(None);
        }
        if let Event::Key(key) = event::read().context("reading the terminal")?
            && key.kind == KeyEventKind::Press
        {
            return Ok(Some(key));
        }
    }
}

/// Whether `key` ends a full-screen view: q, Esc or Ctrl-C.
pub(crate) fn quits(key: &crossterm::event::KeyEvent) -> bool {
    use crossterm::event::{KeyCode, KeyModifiers};
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => true,
        KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

/// SIGTERM and SIGHUP, caught while a full-screen view runs: the view then
/// ends as `q` ends it and the terminal is restored, where the default
/// action would leave it raw.
pub(crate) struct Hangups(Vec<tokio::signal::unix::Signal>);

impl Hangups {
    /// Starts catching them.
    ///
    /// # Errors
    /// A handler cannot be installed.
    pub(crate) fn catch() -> anyhow::Result<Hangups> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Hangups(vec![
            signal(SignalKind::terminate()).context("catching SIGTERM")?,
            signal(SignalKind::hangup()).context("catching SIGHUP")?,
        ]))
    }

    /// Whether one has arrived.
    pub(crate) fn arrived(&mut self) -> bool {
        use futures_util::FutureExt as _;
        self.0
            .iter_mut()
            .any(|s| s.recv().now_or_never().flatten().is_some())
    }
}

/// Restores the terminal however a full-screen view ends.
pub(crate) struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs `talosctl dashboard`.
///
/// # Errors
/// Not a terminal, or the client setup failed.
pub async fn run(global: &GlobalArgs, args: &DashboardArgs) -> anyhow::Result<()> {
    use crossterm::event::KeyCode;
    use std::io::IsTerminal as _;

    if !std::io::stdout().is_terminal() {
        bail!("the dashboard needs a terminal: stdout is not one");
    }
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let interval = args.update_interval.max(Duration::from_millis(500));
    let mut hangups = Hangups::catch()?;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _guard = TerminalGuard;
    let mut index = 0usize;
    let mut screen = Screen::Summary;
    let mut previous: Vec<Option<CpuTimes>> = vec![None; nodes.len()];
    let mut histories: Vec<History> = vec![History::default(); nodes.len()];
    let mut samples: Vec<Option<MonitorSample>> = vec![None; nodes.len()];
    loop {
        // A node that does not answer must not hold the keys: q still
        // quits within one interval.
        let view = match tokio::time::timeout(interval, fetch(&nodes[index])).await {
            Ok(view) => view,
            Err(_) => NodeView {
                node: nodes[index].default_node().to_owned(),
                errors: vec![format!(
                    "no answer within {}",
                    crate::output::go_duration(
                        i64::try_from(interval.as_secs()).unwrap_or(i64::MAX)
                    )
                )],
                ..NodeView::default()
            },
        };
        let cpu = view.cpu_percent(previous[index]);
        previous[index] = view.cpu;
        histories[index].push(cpu, view.memory);
        match screen {
            Screen::Summary => {
                terminal
                    .draw(|frame| draw(frame, &view, cpu, index, nodes.len()))
                    .context("drawing")?;
            }
            Screen::Monitor => {
                let sample = tokio::time::timeout(interval, fetch_monitor(&nodes[index]))
                    .await
                    .unwrap_or_else(|_| MonitorSample {
                        errors: vec!["no answer in time".to_owned()],
                        ..MonitorSample::default()
                    });
                // A sample from long ago (the summary was shown meanwhile)
                // would average over the absence: none then.
                let before = samples[index].as_ref().filter(|b| {
                    b.at.is_some_and(|at| at.elapsed() < interval.saturating_mul(3))
                });
                let rates = sample.rates(before);
                terminal
                    .draw(|frame| {
                        draw_monitor(
                            frame,
                            &view,
                            &histories[index],
                            &rates,
                            &sample.errors,
                            index,
                            nodes.len(),
                        );
                    })
                    .context("drawing")?;
                if sample.at.is_some() {
                    samples[index] = Some(sample);
                }
            }
        }
        let deadline = std::time::Instant::now() + interval;
        if hangups.arrived() {
            return Ok(());
        }
        while let Some(key) = key_before(deadline)? {
            if quits(&key) {
                return Ok(());
            }
            match key.code {
                KeyCode::Char(']') | KeyCode::Right => {
                    index = (index + 1) % nodes.len();
                    break;
                }
                KeyCode::Char('[') | KeyCode::Left => {
                    index = (index + nodes.len() - 1) % nodes.len();
                    break;
                }
                KeyCode::Char('1') | KeyCode::F(1) => {
                    screen = Screen::Summary;
                    break;
                }
                KeyCode::Char('2') | KeyCode::F(2) => {
                    screen = Screen::Monitor;
                    break;
                }
                KeyCode::Tab => {
                    screen = match screen {
                        Screen::Summary => Screen::Monitor,
                        Screen::Monitor => Screen::Summary,
                    };
                    break;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    #[tokio::test]
    async fn a_hangup_is_noticed() {
        let mut hangups = Hangups::catch().expect("handlers");
        assert!(!hangups.arrived());
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
            .expect("SIGHUP to this process");
        // The runtime's signal driver hands it over on its next turn.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !hangups.arrived() {
            assert!(
                std::time::Instant::now() < deadline,
                "the hangup was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('s'), KeyModifiers::NONE)));
    }

    /// What `draw` puts on a 100×30 terminal, as text.
    fn rendered(draw: impl FnOnce(&mut Frame<'_>)) -> String {
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).expect("terminal");
        terminal.draw(draw).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn screen(view: &NodeView, cpu: Option<f64>) -> String {
        rendered(|f| draw(f, view, cpu, 1, 3))
    }

    #[test]
    fn draws_what_the_node_said() {
        let view = NodeView {
            node: "10.5.0.3".into(),
            hostname: "worker-1".into(),
            version: "v0.1.0".into(),
            mode: "metal".into(),
            uptime: Some(Duration::from_secs(3725)),
            cpu: None,
            memory: Some((512 * 1024, 2048 * 1024)),
            load: Some((0.5, 0.25, 0.15)),
            addresses: vec![("eth0".into(), "10.5.0.3/24".into())],
            services: vec![
                ("apid".into(), "Running".into(), "OK".into()),
                ("timed".into(), "Waiting".into(), "?".into()),
            ],
            log: (0..40).map(|i| format!("log line {i}")).collect(),
            errors: vec!["load: unavailable".into()],
        };
        let s = screen(&view, Some(12.34));
        for want in [
            "node 10.5.0.3 (2/3)",
            "HOSTNAME  worker-1",
            "VERSION   v0.1.0",
            "MODE      metal",
            "UPTIME    1h2m5s",
            "CPU       12.3%",
            "LOAD      0.50 0.25 0.15",
            "ADDRESS   10.5.0.3/24 (eth0)",
            "ERROR     load: unavailable",
            "SERVICE",
            "apid",
            "Running",
            "log line 39",
            "q quit",
        ] {
            assert!(s.contains(want), "{want:?} missing:\n{s}");
        }
        let memory = format!(
            "MEMORY    {} / {}",
            machinery::humanize::ibytes(512 << 20),
            machinery::humanize::ibytes(2048 << 20)
        );
        assert!(s.contains(&memory), "{memory:?} missing:\n{s}");
        // The oldest lines make room for the newest.
        assert!(
            !s.contains("log line 0\n") && !s.contains("log line 1 "),
            "{s}"
        );
        assert!(screen(&view, None).contains("CPU       -"));
    }

    fn monitor_screen(
        view: &NodeView,
        history: &History,
        rates: &Rates,
        errors: &[String],
    ) -> String {
        rendered(|f| draw_monitor(f, view, history, rates, errors, 0, 2))
    }

    fn process(pid: i32, cpu_time: f64, rss: u64, command: &str) -> ProcessSample {
        ProcessSample {
            pid,
            state: "S".into(),
            threads: 2,
            cpu_time,
            rss,
            command: command.into(),
        }
    }

    /// Rates between two samples: bytes per second of each link and disk,
    /// CPU percent of each process (busiest first); none for what the
    /// first sample lacked, and none at all without one.
    #[test]
    fn monitor_rates_between_samples() {
        let start = std::time::Instant::now();
        let before = MonitorSample {
            at: Some(start),
            processes: vec![
                process(1, 10.0, 4 << 20, "/sbin/init"),
                process(7, 1.0, 8 << 20, "apid"),
            ],
            links: vec![("eth0".into(), 1000, 500)],
            disks: vec![("vda".into(), 4096, 0)],
            errors: Vec::new(),
        };
        let now = MonitorSample {
            at: Some(start + Duration::from_secs(2)),
            processes: vec![
                process(1, 10.5, 4 << 20, "/sbin/init"),
                process(7, 2.0, 8 << 20, "apid"),
                process(9, 0.1, 1 << 20, "new"),
            ],
            links: vec![("eth0".into(), 3000, 900), ("eth1".into(), 5, 5)],
            disks: vec![("vda".into(), 4096 + 8192, 1024)],
            errors: Vec::new(),
        };
        let rates = now.rates(Some(&before));
        assert_eq!(
            rates.links,
            [
                ("eth0".to_owned(), Some(1000.0), Some(200.0)),
                ("eth1".to_owned(), None, None)
            ]
        );
        assert_eq!(rates.disks, [("vda".to_owned(), Some(4096.0), Some(512.0))]);
        let shares: Vec<(i32, Option<f64>)> =
            rates.processes.iter().map(|(p, c)| (p.pid, *c)).collect();
        assert_eq!(shares, [(7, Some(50.0)), (1, Some(25.0)), (9, None)]);
        // No sample before: counters, no rates.
        let first = now.rates(None);
        assert!(
            first
                .links
                .iter()
                .all(|(_, a, b)| a.is_none() && b.is_none())
        );
        assert!(first.processes.iter().all(|(_, c)| c.is_none()));
        // A pid reused by another command is not the same process.
        let mut reused = before.clone();
        reused.processes[1].command = "other".into();
        let rates = now.rates(Some(&reused));
        assert!(
            rates
                .processes
                .iter()
                .any(|(p, c)| p.pid == 7 && c.is_none())
        );
    }

    #[test]
    fn history_keeps_the_last_refreshes_in_percent() {
        let mut history = History::default();
        history.push(Some(12.6), Some((1 << 20, 4 << 20)));
        history.push(None, None);
        assert_eq!(history.cpu, [13]);
        assert_eq!(history.memory, [25]);
        for i in 0..(HISTORY + 10) {
            history.push(Some(i as f64 % 100.0), Some((1, 2)));
        }
        assert_eq!(history.cpu.len(), HISTORY);
        assert_eq!(history.memory.len(), HISTORY);
        assert_eq!(history.cpu.back(), Some(&(((HISTORY + 9) % 100) as u64)));
    }

    #[test]
    fn draws_the_monitor() {
        let view = NodeView {
            node: "10.5.0.2".into(),
            ..NodeView::default()
        };
        let mut history = History::default();
        history.push(Some(40.0), Some((1, 4)));
        let rates = Rates {
            links: vec![("eth0".into(), Some(2048.0), None)],
            disks: vec![("vda".into(), Some(1.0 * 1024.0 * 1024.0), Some(0.0))],
            processes: vec![
                (process(7, 2.0, 8 << 20, "apid --listen"), Some(50.0)),
                (process(1, 1.0, 4 << 20, "/sbin/init"), None),
            ],
        };
        let s = monitor_screen(&view, &history, &rates, &["disks: unavailable".into()]);
        for want in [
            "node 10.5.0.2 (1/2)  monitor",
            " CPU 40% ",
            " Memory 25% ",
            "eth0",
            &format!("{}/s", machinery::humanize::ibytes(2048)),
            &format!("{}/s", machinery::humanize::ibytes(1 << 20)),
            "vda",
            "PID",
            "apid --listen",
            "50.0",
            "/sbin/init",
            "ERROR",
            "disks: unavailable",
            "2 monitor",
        ] {
            assert!(s.contains(want), "{want:?} missing:\n{s}");
        }
        // The busiest process above the idle one.
        assert!(s.find("apid --listen") < s.find("/sbin/init"), "{s}");
    }

    #[test]
    fn cpu_share_between_refreshes() {
        let mut view = NodeView {
            cpu: Some(CpuTimes {
                busy: 30.0,
                total: 100.0,
            }),
            ..NodeView::default()
        };
        assert_eq!(view.cpu_percent(None), None);
        let before = CpuTimes {
            busy: 20.0,
            total: 60.0,
        };
        assert_eq!(view.cpu_percent(Some(before)), Some(25.0));
        view.cpu = None;
        assert_eq!(view.cpu_percent(Some(before)), None);
    }
}
