//! `talosctl dashboard`: a node at a glance, refreshed in the terminal.
//!
//! One screen per node: what it is (hostname, version, mode, uptime),
//! how busy it is (CPU since the last refresh, memory, load), its
//! addresses, its services and the end of machined's log. `[`/`]` or the
//! arrow keys switch nodes, `q` quits. The data comes from the same calls
//! the other commands make ([`fetch`]); drawing ([`draw`]) is a pure
//! function of it, so it is tested on ratatui's test backend.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, Wrap};

use crate::cli::{DashboardArgs, GlobalArgs};
use crate::client::{self, Client, Options};

/// Lines of machined's log shown.
pub const LOG_LINES: i32 = 30;

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
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "talosctl dashboard  node {} ({}/{count})",
            view.node,
            index + 1
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        header,
    );

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
    frame.render_widget(
        Paragraph::new(Line::from("[ ] or ← → switch nodes   q quit")),
        footer,
    );
}

/// Restores the terminal however the dashboard ends.
struct TerminalGuard;

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
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use std::io::IsTerminal as _;

    if !std::io::stdout().is_terminal() {
        bail!("the dashboard needs a terminal: stdout is not one");
    }
    let client = Client::connect(global, Options::default())?;
    let nodes = client.per_node();
    let interval = args.update_interval.max(Duration::from_millis(500));
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _guard = TerminalGuard;
    let mut index = 0usize;
    let mut previous: Vec<Option<CpuTimes>> = vec![None; nodes.len()];
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
        terminal
            .draw(|frame| draw(frame, &view, cpu, index, nodes.len()))
            .context("drawing")?;
        let deadline = std::time::Instant::now() + interval;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !event::poll(left).context("reading the terminal")? {
                break;
            }
            let Event::Key(key) = event::read().context("reading the terminal")? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(());
                }
                KeyCode::Char(']') | KeyCode::Right => {
                    index = (index + 1) % nodes.len();
                    break;
                }
                KeyCode::Char('[') | KeyCode::Left => {
                    index = (index + nodes.len() - 1) % nodes.len();
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

    fn screen(view: &NodeView, cpu: Option<f64>) -> String {
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).expect("terminal");
        terminal.draw(|f| draw(f, view, cpu, 1, 3)).expect("draw");
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
