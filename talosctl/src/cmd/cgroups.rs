//! `talosctl cgroups`: the node's control groups as a tree, one preset of
//! columns at a time, as upstream's command prints them.
//!
//! The groups are found with List under `/sys/fs/cgroup` and each file a
//! preset needs is read with Read; processes are named from Processes. A
//! file a group does not have (the root has no `memory.current`) shows as
//! `unset`, a limit that is not set as `max`. Upstream's values and their
//! formats: sizes in IEC units, shares as percentages with two decimals,
//! CPU times as Go durations.

use std::collections::BTreeMap;

use anyhow::bail;
use api::machine::{ListRequest, ReadRequest, list_request};

use crate::cli::{CgroupsArgs, CgroupsPreset, GlobalArgs};
use crate::client::{self, Client, NodePolicy, Options};
use crate::output::Table;

/// Where the hierarchy is on a node.
pub const ROOT: &str = "/sys/fs/cgroup";

/// A value of a cgroup file: a number (with `frac` decimals), `max`, or
/// missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Value {
    /// The file or key is not there.
    #[default]
    Unset,
    /// No limit.
    Max,
    /// A number: `val / 10^frac`.
    Num {
        /// The digits.
        val: i64,
        /// Decimals.
        frac: u32,
    },
}

impl Value {
    /// Parses one value as the kernel writes it.
    #[must_use]
    pub fn parse(text: &str) -> Value {
        let text = text.trim();
        if text == "max" {
            return Value::Max;
        }
        let (digits, frac) = match text.split_once('.') {
            Some((l, r)) => (format!("{l}{r}"), u32::try_from(r.len()).unwrap_or(0)),
            None => (text.to_owned(), 0),
        };
        digits
            .parse()
            .map_or(Value::Unset, |val| Value::Num { val, frac })
    }

    /// Sizes in IEC units (`12 MiB`), other values as they are.
    #[must_use]
    pub fn ibytes(self) -> String {
        match self {
            Value::Num { val, frac: 0 } if val >= 0 => {
                machinery::humanize::ibytes(val.unsigned_abs())
            }
            other => other.to_string(),
        }
    }

    /// `self / other` in percent, two decimals; `max` when dividing by
    /// zero or by a value that is `max` only on this side.
    #[must_use]
    pub fn percent_of(self, other: Value) -> Value {
        match (self, other) {
            (Value::Unset, _) | (_, Value::Unset) => Value::Unset,
            (Value::Max, Value::Max) => Value::Num {
                val: 10_000,
                frac: 2,
            },
            (Value::Num { .. }, Value::Max) => Value::Num { val: 0, frac: 2 },
            (Value::Max, _) => Value::Max,
            (Value::Num { val: a, frac: fa }, Value::Num { val: b, frac: fb }) => {
                if b == 0 {
                    return Value::Max;
                }
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let ratio = (a as f64 / 10f64.powi(fa.cast_signed()))
                    / (b as f64 / 10f64.powi(fb.cast_signed()));
                #[allow(clippy::cast_possible_truncation)]
                let val = (ratio * 100.0 * 100.0).round() as i64;
                Value::Num { val, frac: 2 }
            }
        }
    }

    /// Microseconds as a Go duration (`1.5ms`, `2m3.25s`).
    #[must_use]
    pub fn usec_duration(self) -> String {
        match self {
            Value::Num { val, frac: 0 } if val >= 0 => {
                crate::output::go_duration_micros(val.unsigned_abs())
            }
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Unset => f.write_str("unset"),
            Value::Max => f.write_str("max"),
            Value::Num { val, frac: 0 } => write!(f, "{val}"),
            Value::Num { val, frac } => {
                let digits = val.unsigned_abs().to_string();
                let frac = *frac as usize;
                let digits = format!("{digits:0>width$}", width = frac + 1);
                let (int, dec) = digits.split_at(digits.len() - frac);
                let sign = if *val < 0 { "-" } else { "" };
                write!(f, "{sign}{int}.{dec}")
            }
        }
    }
}

/// One group: its path below the root (`""` for the root) and the files
/// read from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Path below the root.
    pub path: String,
    /// File name → content, for the files that exist.
    pub files: BTreeMap<String, String>,
}

impl Group {
    fn value(&self, file: &str) -> Value {
        self.files
            .get(file)
            .map_or(Value::Unset, |t| Value::parse(t))
    }

    /// A key of a flat-keyed file (`cpu.stat`).
    fn keyed(&self, file: &str, key: &str) -> Value {
        self.files
            .get(file)
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.split_once(' ').filter(|(k, _)| *k == key))
            })
            .map_or(Value::Unset, |(_, v)| Value::parse(v))
    }

    /// A space-separated file as Go prints a list (`[max 100000]`).
    fn list(&self, file: &str) -> String {
        match self.files.get(file) {
            Some(t) => format!("[{}]", t.split_whitespace().collect::<Vec<_>>().join(" ")),
            None => "[]".to_owned(),
        }
    }

    /// A key of one line of a pressure file (`some avg10=0.00 ...`), `kind`
    /// being `some` or `full`.
    fn pressure(&self, file: &str, kind: &str, key: &str) -> Value {
        self.files
            .get(file)
            .and_then(|t| {
                t.lines()
                    .find(|l| l.split_whitespace().next() == Some(kind))?
                    .split_whitespace()
                    .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key))
            })
            .map_or(Value::Unset, |(_, v)| Value::parse(v))
    }

    /// The file's text, trimmed; empty when it is not there.
    fn raw(&self, file: &str) -> &str {
        self.files.get(file).map_or("", |t| t.trim())
    }

    /// `io.stat` by disk name (`names` maps `major:minor` to it; a number
    /// without a name stays as it is), each with its keys, in name order.
    fn io_stat(
        &self,
        names: &BTreeMap<String, String>,
    ) -> BTreeMap<String, BTreeMap<String, Value>> {
        let mut disks = BTreeMap::new();
        for line in self.lines("io.stat") {
            let mut words = line.split_whitespace();
            let Some(device) = words.next() else { continue };
            let name = names
                .get(device)
                .cloned()
                .unwrap_or_else(|| device.to_owned());
            let keys = words
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), Value::parse(v)))
                .collect();
            disks.insert(name, keys);
        }
        disks
    }

    fn lines(&self, file: &str) -> Vec<String> {
        self.files
            .get(file)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// The files a preset reads.
#[must_use]
pub fn files(preset: CgroupsPreset) -> &'static [&'static str] {
    match preset {
        CgroupsPreset::Memory => &[
            "memory.current",
            "memory.peak",
            "memory.low",
            "memory.high",
            "memory.min",
            "memory.max",
        ],
        CgroupsPreset::Cpu => &["cpu.weight", "cpu.weight.nice", "cpu.max", "cpu.stat"],
        CgroupsPreset::Cpuset => &[
            "cpuset.cpus",
            "cpuset.cpus.effective",
            "cpuset.mems",
            "cpuset.mems.effective",
        ],
        CgroupsPreset::Io => &["io.stat", "io.pressure"],
        CgroupsPreset::Psi => &[
            "memory.current",
            "memory.pressure",
            "cpu.pressure",
            "io.pressure",
        ],
        CgroupsPreset::Swap => &[
            "memory.swap.current",
            "memory.swap.peak",
            "memory.swap.high",
            "memory.swap.max",
        ],
        CgroupsPreset::Process => &[
            "pids.current",
            "pids.peak",
            "pids.max",
            "cgroup.procs",
            "cgroup.threads",
        ],
    }
}

fn header(preset: CgroupsPreset) -> &'static [&'static str] {
    match preset {
        CgroupsPreset::Memory => &[
            "MemCurrent",
            "MemPeak",
            "MemLow",
            "Peak/Low",
            "MemHigh",
            "MemMin",
            "Current/Min",
            "MemMax",
        ],
        CgroupsPreset::Cpu => &[
            "CpuWeight",
            "CpuNice",
            "CpuMax",
            "CpuUser",
            "User/%",
            "CpuSystem",
            "System/%",
            "Throttled",
        ],
        CgroupsPreset::Cpuset => &["CpuSet", "CpuSet(Eff)", "Mems", "Mems(Eff)"],
        CgroupsPreset::Io => &[
            "Bytes Read/Written",
            "ios Read/Write",
            "PressAvg10",
            "PressAvg60",
            "PressTotal",
        ],
        CgroupsPreset::Psi => &[
            "MemCurrent",
            "MemPsiSome10",
            "MemPsi10",
            "CpuPsi10",
            "IoPsi10",
        ],
        CgroupsPreset::Swap => &["SwapCurrent", "SwapPeak", "SwapHigh", "SwapMax"],
        CgroupsPreset::Process => &[
            "PidsCurrent",
            "PidsPeak",
            "PidsMax",
            "Procs",
            "Threads",
            "Processes",
        ],
    }
}

/// A value right-aligned in six columns, as upstream's `printf "%6s"`.
fn width6(v: Value) -> String {
    format!("{:>6}", v.to_string())
}

fn row(
    preset: CgroupsPreset,
    g: &Group,
    parent: Option<&Group>,
    names: &BTreeMap<String, String>,
) -> Vec<String> {
    let pct = |v: Value| format!("{:>6}%", v.to_string());
    match preset {
        CgroupsPreset::Memory => {
            let (current, peak, low) = (
                g.value("memory.current"),
                g.value("memory.peak"),
                g.value("memory.low"),
            );
            let min = g.value("memory.min");
            vec![
                format!("{:>8}", current.ibytes()),
                format!("{:>8}", peak.ibytes()),
                format!("{:>8}", low.ibytes()),
                pct(peak.percent_of(low)),
                format!("{:>8}", g.value("memory.high").ibytes()),
                format!("{:>8}", min.ibytes()),
                pct(current.percent_of(min)),
                format!("{:>8}", g.value("memory.max").ibytes()),
            ]
        }
        CgroupsPreset::Cpu => {
            let share = |key: &str| match parent {
                Some(p) => pct(g
                    .keyed("cpu.stat", key)
                    .percent_of(p.keyed("cpu.stat", key))),
                None => "-".to_owned(),
            };
            vec![
                format!("{:>6}", g.value("cpu.weight").to_string()),
                format!("{:>6}", g.value("cpu.weight.nice").to_string()),
                format!("{:>6}", g.list("cpu.max")),
                format!("{:>12}", g.keyed("cpu.stat", "user_usec").usec_duration()),
                share("user_usec"),
                format!("{:>12}", g.keyed("cpu.stat", "system_usec").usec_duration()),
                share("system_usec"),
                format!(
                    "{:>12}",
                    g.keyed("cpu.stat", "throttled_usec").usec_duration()
                ),
            ]
        }
        CgroupsPreset::Cpuset => [
            "cpuset.cpus",
            "cpuset.cpus.effective",
            "cpuset.mems",
            "cpuset.mems.effective",
        ]
        .iter()
        .map(|f| format!("{:>12}", g.raw(f)))
        .collect(),
        CgroupsPreset::Io => {
            let disks = g.io_stat(names);
            let bytes: String = disks
                .iter()
                .filter(|(_, keys)| !keys.is_empty())
                .map(|(disk, keys)| {
                    let v = |k: &str| keys.get(k).copied().unwrap_or_default().ibytes();
                    format!("{disk}: {}/{} ", v("rbytes"), v("wbytes"))
                })
                .collect();
            // As upstream: operation counts only below the root.
            let ios: String = if parent.is_some() {
                disks
                    .iter()
                    .map(|(disk, keys)| {
                        let v = |k: &str| keys.get(k).copied().unwrap_or_default().to_string();
                        format!("{disk}: {}/{} ", v("rios"), v("wios"))
                    })
                    .collect()
            } else {
                String::new()
            };
            vec![
                bytes,
                ios,
                width6(g.pressure("io.pressure", "some", "avg10")),
                width6(g.pressure("io.pressure", "some", "avg60")),
                format!(
                    "{:>12}",
                    g.pressure("io.pressure", "some", "total").usec_duration()
                ),
            ]
        }
        CgroupsPreset::Psi => vec![
            format!("{:>8}", g.value("memory.current").ibytes()),
            width6(g.pressure("memory.pressure", "some", "avg10")),
            width6(g.pressure("memory.pressure", "full", "avg10")),
            width6(g.pressure("cpu.pressure", "full", "avg10")),
            width6(g.pressure("io.pressure", "full", "avg10")),
        ],
        CgroupsPreset::Swap => [
            "memory.swap.current",
            "memory.swap.peak",
            "memory.swap.high",
            "memory.swap.max",
        ]
        .iter()
        .map(|f| format!("{:>8}", g.value(f).ibytes()))
        .collect(),
        CgroupsPreset::Process => {
            let procs = g.lines("cgroup.procs");
            let resolved: Vec<String> = procs
                .iter()
                .map(|pid| names.get(pid).cloned().unwrap_or_else(|| pid.clone()))
                .collect();
            let processes = if parent.is_some() {
                format!("[{}]", resolved.join(" "))
                    .chars()
                    .take(50)
                    .collect()
            } else {
                String::new()
            };
            vec![
                format!("{:>8}", g.value("pids.current").to_string()),
                format!("{:>8}", g.value("pids.peak").to_string()),
                format!("{:>8}", g.value("pids.max").to_string()),
                format!("{:>7}", procs.len()),
                format!("{:>7}", g.lines("cgroup.threads").len()),
                processes,
            ]
        }
    }
}

/// The tree, upstream's layout: the root as `.`, children sorted, each
/// under its parent with `├──`, `└──` and `│` edges.
#[must_use]
pub fn render(preset: CgroupsPreset, groups: &[Group], names: &BTreeMap<String, String>) -> String {
    let by_path: BTreeMap<&str, &Group> = groups.iter().map(|g| (g.path.as_str(), g)).collect();
    let mut table = Table::headerless(3);
    let mut head = vec!["NAME".to_owned()];
    head.extend(header(preset).iter().map(|h| (*h).to_owned()));
    table.push(head);
    let Some(root) = by_path.get("") else {
        return table.render();
    };
    walk(
        preset, &by_path, root, None, ".", "", true, true, names, &mut table,
    );
    table.render()
}

#[allow(clippy::too_many_arguments)]
fn walk(
    preset: CgroupsPreset,
    by_path: &BTreeMap<&str, &Group>,
    group: &Group,
    parent: Option<&Group>,
    name: &str,
    prefix: &str,
    last: bool,
    root: bool,
    names: &BTreeMap<String, String>,
    table: &mut Table,
) {
    let edge = if root {
        ""
    } else if last {
        "└──"
    } else {
        "├──"
    };
    let mut cells = vec![format!("{prefix}{edge}{name}")];
    cells.extend(row(preset, group, parent, names));
    table.push(cells);
    let children: Vec<(&str, &&Group)> = by_path
        .iter()
        .filter_map(|(path, g)| {
            let rest = if group.path.is_empty() {
                Some(*path).filter(|p| !p.is_empty())
            } else {
                path.strip_prefix(group.path.as_str())?.strip_prefix('/')
            }?;
            (!rest.contains('/')).then_some((rest, g))
        })
        .collect();
    let child_prefix = if root {
        String::new()
    } else if last {
        format!("{prefix}    ")
    } else {
        format!("{prefix}│   ")
    };
    for (i, (child_name, child)) in children.iter().enumerate() {
        walk(
            preset,
            by_path,
            child,
            Some(group),
            child_name,
            &child_prefix,
            i + 1 == children.len(),
            false,
            names,
            table,
        );
    }
}

/// Reads the groups and the files `preset` needs from the node.
///
/// # Errors
/// The groups cannot be listed.
pub async fn fetch(client: &Client, preset: CgroupsPreset) -> anyhow::Result<Vec<Group>> {
    let mut stream = client
        .call(|channel| {
            let request = client.request(ListRequest {
                root: ROOT.to_owned(),
                recurse: true,
                recursion_depth: -1,
                types: vec![list_request::Type::Directory as i32],
                report_xattrs: false,
            });
            async move { client::machine(channel).list(request).await }
        })
        .await?;
    let mut paths = vec![String::new()];
    while let Some(info) = stream
        .message()
        .await
        .map_err(|s| client.status_error(&s))?
    {
        if let Some(error) = client::node_error(info.metadata.as_ref()) {
            bail!("{error}");
        }
        if !info.error.is_empty() {
            bail!("listing {}: {}", info.name, info.error);
        }
        let relative = info.relative_name.trim_start_matches("./").to_owned();
        if info.is_dir && !relative.is_empty() && relative != "." {
            paths.push(relative);
        }
    }
    paths.sort();
    paths.dedup();
    let mut groups = Vec::new();
    for path in paths {
        let dir = if path.is_empty() {
            ROOT.to_owned()
        } else {
            format!("{ROOT}/{path}")
        };
        let mut group = Group {
            path,
            files: BTreeMap::new(),
        };
        for file in files(preset) {
            if let Some(text) = read(client, &format!("{dir}/{file}")).await? {
                group.files.insert((*file).to_owned(), text);
            }
        }
        groups.push(group);
    }
    Ok(groups)
}

/// A file's content, `None` when the group does not have it.
///
/// # Errors
/// Any other failure (no permission to read files, a node that went
/// away): a tree of `unset` would hide it.
async fn read(client: &Client, path: &str) -> anyhow::Result<Option<String>> {
    let stream = match client
        .try_call(|channel| {
            let request = client.request(ReadRequest {
                path: path.to_owned(),
            });
            async move { client::machine(channel).read(request).await }
        })
        .await
    {
        Ok(stream) => stream,
        Err(client::CallError::Status(s)) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(e) => return Err(client.call_error(e)),
    };
    let mut out = Vec::new();
    super::files::drain_data(client, stream, |chunk| {
        out.extend_from_slice(&chunk);
        Ok(true)
    })
    .await?;
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

/// pid → process name, for the process preset.
async fn process_names(client: &Client) -> BTreeMap<String, String> {
    let Ok(reply) = client
        .machine_call(|mut m, r| async move { m.processes(r).await })
        .await
    else {
        return BTreeMap::new();
    };
    reply
        .messages
        .into_iter()
        .flat_map(|m| m.processes)
        .map(|p| {
            let name = [&p.executable, &p.command]
                .into_iter()
                .find(|n| !n.is_empty())
                .cloned()
                .or_else(|| p.args.split_whitespace().next().map(str::to_owned))
                .unwrap_or_default();
            let base = name.rsplit('/').next().unwrap_or_default().to_owned();
            (p.pid.to_string(), base)
        })
        .collect()
}

/// `major:minor` → block device name, for the io preset: the links of
/// `/sys/dev/block` (`8:0 -> ../../devices/.../sda`). Numbers stay numbers
/// when the listing fails.
async fn disk_names(client: &Client) -> BTreeMap<String, String> {
    let Ok(mut stream) = client
        .call(|channel| {
            let request = client.request(ListRequest {
                root: "/sys/dev/block".to_owned(),
                recurse: false,
                recursion_depth: 0,
                types: Vec::new(),
                report_xattrs: false,
            });
            async move { client::machine(channel).list(request).await }
        })
        .await
    else {
        return BTreeMap::new();
    };
    let mut names = BTreeMap::new();
    while let Ok(Some(info)) = stream.message().await {
        let number = info.name.rsplit('/').next().unwrap_or_default();
        if let Some(name) = info.link.rsplit('/').next().filter(|n| !n.is_empty())
            && number.contains(':')
        {
            names.insert(number.to_owned(), name.to_owned());
        }
    }
    names
}

/// Runs `talosctl cgroups`.
///
/// # Errors
/// The client setup or the listing failed.
pub async fn run(global: &GlobalArgs, args: &CgroupsArgs) -> anyhow::Result<()> {
    let client = Client::connect(global, Options::nodes(NodePolicy::Single("cgroups")))?;
    let groups = fetch(&client, args.preset).await?;
    let names = match args.preset {
        CgroupsPreset::Process => process_names(&client).await,
        CgroupsPreset::Io => disk_names(&client).await,
        _ => BTreeMap::new(),
    };
    crate::output::out(&render(args.preset, &groups, &names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(path: &str, files: &[(&str, &str)]) -> Group {
        Group {
            path: path.to_owned(),
            files: files
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn values_as_upstream_prints_them() {
        assert_eq!(Value::parse("max"), Value::Max);
        assert_eq!(Value::parse("12.50").to_string(), "12.50");
        assert_eq!(Value::parse("0.05").to_string(), "0.05");
        assert_eq!(Value::parse("garbage"), Value::Unset);
        assert_eq!(Value::parse("12582912\n").ibytes(), "12 MiB");
        assert_eq!(Value::Max.ibytes(), "max");
        assert_eq!(Value::Unset.ibytes(), "unset");
        let v = |t| Value::parse(t);
        assert_eq!(v("50").percent_of(v("200")).to_string(), "25.00");
        assert_eq!(v("50").percent_of(v("0")), Value::Max);
        assert_eq!(v("50").percent_of(Value::Max).to_string(), "0.00");
        assert_eq!(Value::Max.percent_of(Value::Max).to_string(), "100.00");
        assert_eq!(Value::Unset.percent_of(v("1")), Value::Unset);
    }

    #[test]
    fn the_tree_of_groups_with_a_preset() {
        let groups = vec![
            group("", &[("cgroup.procs", "1\n")]),
            group(
                "system",
                &[("memory.current", "4194304"), ("memory.max", "max")],
            ),
            group(
                "system/apid",
                &[
                    ("memory.current", "2097152"),
                    ("memory.peak", "3145728"),
                    ("memory.low", "0"),
                    ("memory.min", "1048576"),
                    ("memory.max", "max"),
                    ("cgroup.procs", "42\n"),
                ],
            ),
            group("system/routerd", &[("memory.current", "1048576")]),
            group("init", &[]),
        ];
        let text = render(CgroupsPreset::Memory, &groups, &BTreeMap::new());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("Current/Min"),
            "{text}"
        );
        assert!(lines[1].starts_with(". "), "{text}");
        assert!(lines[2].starts_with("├──init"), "{text}");
        assert!(lines[3].starts_with("└──system"), "{text}");
        assert!(lines[4].starts_with("    ├──apid"), "{text}");
        assert!(lines[5].starts_with("    └──routerd"), "{text}");
        let apid: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            apid,
            [
                "├──apid",
                "2.0",
                "MiB",
                "3.0",
                "MiB",
                "0",
                "B",
                "max%",
                "unset",
                "1.0",
                "MiB",
                "200.00%",
                "max"
            ]
        );
        let mut names = BTreeMap::new();
        names.insert("42".to_owned(), "apid".to_owned());
        let procs = render(CgroupsPreset::Process, &groups, &names);
        assert!(
            procs.lines().nth(4).is_some_and(|l| l.ends_with("[apid]")),
            "{procs}"
        );
        let cpu = render(CgroupsPreset::Cpu, &groups, &names);
        assert!(
            cpu.lines().nth(1).is_some_and(|l| l.contains(" - ")),
            "{cpu}"
        );
    }

    #[test]
    fn io_psi_swap_and_cpuset_presets() {
        let pressure = "some avg10=1.50 avg60=0.25 avg300=0.00 total=2500000
                        full avg10=0.75 avg60=0.00 avg300=0.00 total=1000
";
        let groups = vec![
            group(
                "",
                &[(
                    "io.stat",
                    "8:0 rbytes=1048576 wbytes=2097152 rios=10 wios=20
",
                )],
            ),
            group(
                "system",
                &[
                    (
                        "io.stat",
                        "8:0 rbytes=1024 wbytes=0 rios=1 wios=0 dbytes=0 dios=0
                         253:7 rbytes=0 wbytes=4096 rios=0 wios=1
",
                    ),
                    ("io.pressure", pressure),
                    ("memory.current", "3145728"),
                    ("memory.pressure", pressure),
                    ("cpu.pressure", pressure),
                    ("memory.swap.current", "0"),
                    ("memory.swap.max", "max"),
                    (
                        "cpuset.cpus.effective",
                        "0-1
",
                    ),
                    (
                        "cpuset.mems.effective",
                        "0
",
                    ),
                ],
            ),
        ];
        let disks = BTreeMap::from([("8:0".to_owned(), "sda".to_owned())]);
        let io = render(CgroupsPreset::Io, &groups, &disks);
        let lines: Vec<&str> = io.lines().collect();
        assert!(
            lines[0].contains("Bytes Read/Written") && lines[0].contains("PressTotal"),
            "{io}"
        );
        assert!(lines[1].contains("sda: 1.0 MiB/2.0 MiB"), "{io}");
        assert!(
            !lines[1].contains("10/20"),
            "no operation counts at the root: {io}"
        );
        assert!(
            lines[2].contains("253:7: 0 B/4.0 KiB") && lines[2].contains("sda: 1/0"),
            "{io}"
        );
        assert!(
            lines[2].contains("1.50") && lines[2].contains("0.25") && lines[2].contains("2.5s"),
            "{io}"
        );
        let psi = render(CgroupsPreset::Psi, &groups, &disks);
        let row: Vec<&str> = psi
            .lines()
            .nth(2)
            .expect("system")
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            ["└──system", "3.0", "MiB", "1.50", "0.75", "0.75", "0.75"],
            "{psi}"
        );
        let swap = render(CgroupsPreset::Swap, &groups, &disks);
        let row: Vec<&str> = swap
            .lines()
            .nth(2)
            .expect("system")
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            ["└──system", "0", "B", "unset", "unset", "max"],
            "{swap}"
        );
        let cpuset = render(CgroupsPreset::Cpuset, &groups, &disks);
        let row: Vec<&str> = cpuset
            .lines()
            .nth(2)
            .expect("system")
            .split_whitespace()
            .collect();
        assert_eq!(row, ["└──system", "0-1", "0"], "{cpuset}");
    }
}
