//! System statistics from `/proc`, through the procfs crate.

use procfs::Current as _;
use procfs::CurrentSI as _;

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
#[error("reading {what} from /proc: {source}")]
pub struct StatsError {
    /// Which statistic.
    pub what: &'static str,
    /// The cause.
    pub source: procfs::ProcError,
}

fn err(what: &'static str) -> impl FnOnce(procfs::ProcError) -> StatsError {
    move |source| StatsError { what, source }
}

/// `/proc/meminfo`.
///
/// # Errors
/// `/proc` unreadable.
pub fn meminfo() -> Result<procfs::Meminfo, StatsError> {
    procfs::Meminfo::current().map_err(err("meminfo"))
}

/// `/proc/loadavg`.
///
/// # Errors
/// `/proc` unreadable.
pub fn loadavg() -> Result<procfs::LoadAverage, StatsError> {
    procfs::LoadAverage::current().map_err(err("loadavg"))
}

/// `/proc/stat`.
///
/// # Errors
/// `/proc` unreadable.
pub fn kernel_stats() -> Result<procfs::KernelStats, StatsError> {
    procfs::KernelStats::current().map_err(err("stat"))
}

/// `/proc/cpuinfo`.
///
/// # Errors
/// `/proc` unreadable.
pub fn cpuinfo() -> Result<procfs::CpuInfo, StatsError> {
    procfs::CpuInfo::current().map_err(err("cpuinfo"))
}

/// `/proc/diskstats`: every block device and partition, in the kernel's
/// order.
///
/// # Errors
/// `/proc` unreadable.
pub fn diskstats() -> Result<Vec<procfs::DiskStat>, StatsError> {
    procfs::diskstats().map_err(err("diskstats"))
}

/// `/proc/net/dev` of machined's network namespace, by link name.
///
/// # Errors
/// `/proc` unreadable.
pub fn net_dev() -> Result<Vec<procfs::net::DeviceStatus>, StatsError> {
    let mut links: Vec<_> = procfs::net::dev_status()
        .map_err(err("net/dev"))?
        .into_values()
        .collect();
    links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(links)
}

/// One CPU's frequency scaling, from `cpufreq` in sysfs (kHz).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFreq {
    /// `scaling_cur_freq`.
    pub current: u64,
    /// `cpuinfo_min_freq`.
    pub minimum: u64,
    /// `cpuinfo_max_freq`.
    pub maximum: u64,
    /// `scaling_governor`.
    pub governor: String,
}

/// Frequency scaling of each CPU under `cpu_dir` (`/sys/devices/system/cpu`),
/// by CPU number. A CPU without `cpufreq` (most virtual machines) is left
/// out; one whose frequencies cannot be read is all zeros, as upstream.
#[must_use]
pub fn cpu_freq(cpu_dir: &std::path::Path) -> Vec<CpuFreq> {
    let Ok(entries) = std::fs::read_dir(cpu_dir) else {
        return Vec::new();
    };
    let mut cpus: Vec<(u32, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("cpu")?.parse().ok()?;
            let freq = e.path().join("cpufreq");
            freq.is_dir().then_some((n, freq))
        })
        .collect();
    cpus.sort_by_key(|(n, _)| *n);
    cpus.into_iter()
        .map(|(_, dir)| {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            let num = |f: &str| read(f).and_then(|t| t.trim().parse::<u64>().ok());
            match (
                num("scaling_cur_freq"),
                num("cpuinfo_min_freq"),
                num("cpuinfo_max_freq"),
            ) {
                (Some(current), Some(minimum), Some(maximum)) => CpuFreq {
                    current,
                    minimum,
                    maximum,
                    governor: read("scaling_governor")
                        .map(|g| g.trim().to_owned())
                        .unwrap_or_default(),
                },
                _ => CpuFreq::default(),
            }
        })
        .collect()
}

/// One process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessInfo {
    /// pid.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// State letter.
    pub state: String,
    /// Threads.
    pub threads: i32,
    /// User + system CPU time, seconds.
    pub cpu_time: f64,
    /// Virtual memory, bytes.
    pub virtual_memory: u64,
    /// Resident memory, bytes.
    pub resident_memory: u64,
    /// Command name.
    pub command: String,
    /// Executable path.
    pub executable: String,
    /// Command line.
    pub args: String,
}

/// Every process readable in `/proc`, by pid.
///
/// # Errors
/// `/proc` unreadable.
pub fn processes() -> Result<Vec<ProcessInfo>, StatsError> {
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    let mut out = Vec::new();
    for p in procfs::process::all_processes().map_err(err("processes"))? {
        // Processes come and go while we walk: skip the ones that went.
        let Ok(p) = p else { continue };
        let Ok(stat) = p.stat() else { continue };
        out.push(ProcessInfo {
            pid: stat.pid,
            ppid: stat.ppid,
            state: stat.state.to_string(),
            threads: i32::try_from(stat.num_threads).unwrap_or(i32::MAX),
            cpu_time: (stat.utime + stat.stime) as f64 / ticks,
            virtual_memory: stat.vsize,
            resident_memory: stat.rss.saturating_mul(page),
            command: stat.comm.clone(),
            executable: p.exe().map(|e| e.display().to_string()).unwrap_or_default(),
            args: p.cmdline().map(|c| c.join(" ")).unwrap_or_default(),
        });
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

/// One mounted filesystem with its usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Source (device).
    pub filesystem: String,
    /// Total bytes.
    pub size: u64,
    /// Available bytes.
    pub available: u64,
    /// Mount point.
    pub mounted_on: String,
}

/// Every mount of this process's namespace (`/proc/self/mounts`).
///
/// # Errors
/// `/proc` unreadable.
pub fn mounts() -> Result<Vec<Mount>, StatsError> {
    let entries = procfs::mounts().map_err(err("mounts"))?;
    Ok(entries
        .into_iter()
        .map(|m| {
            let (size, available) = rustix::fs::statvfs(m.fs_file.as_str())
                .map(|s| {
                    (
                        s.f_blocks.saturating_mul(s.f_frsize),
                        s.f_bavail.saturating_mul(s.f_frsize),
                    )
                })
                .unwrap_or((0, 0));
            Mount {
                filesystem: m.fs_spec,
                size,
                available,
                mounted_on: m.fs_file,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_freq_from_sysfs() {
        let dir = tempfile::tempdir().expect("tmp");
        let cpu = |name: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(name).join("cpufreq");
            std::fs::create_dir_all(&d).expect("dir");
            for (f, v) in files {
                std::fs::write(d.join(f), v).expect("write");
            }
        };
        let full = [
            ("scaling_cur_freq", "2100000\n"),
            ("cpuinfo_min_freq", "800000\n"),
            ("cpuinfo_max_freq", "3500000\n"),
            ("scaling_governor", "schedutil\n"),
        ];
        cpu("cpu10", &full);
        cpu("cpu0", &full);
        cpu("cpu2", &[("scaling_governor", "performance\n")]);
        std::fs::create_dir_all(dir.path().join("cpu1")).expect("no cpufreq");
        std::fs::create_dir_all(dir.path().join("cpuidle")).expect("not a cpu");
        let got = cpu_freq(dir.path());
        let want = CpuFreq {
            current: 2_100_000,
            minimum: 800_000,
            maximum: 3_500_000,
            governor: "schedutil".into(),
        };
        assert_eq!(got, vec![want.clone(), CpuFreq::default(), want]);
        assert!(cpu_freq(&dir.path().join("none")).is_empty());
    }

    #[test]
    fn reads_this_machine() {
        let m = meminfo().expect("meminfo");
        assert!(m.mem_total > 0);
        assert!(loadavg().expect("loadavg").one >= 0.0);
        assert!(!cpuinfo().expect("cpuinfo").cpus.is_empty());
        let me = std::process::id() as i32;
        let procs = processes().expect("processes");
        let mine = procs
            .iter()
            .find(|p| p.pid == me)
            .expect("this process is listed");
        assert!(mine.resident_memory > 0 && mine.threads >= 1);
        assert!(
            mounts()
                .expect("mounts")
                .iter()
                .any(|m| m.mounted_on == "/")
        );
    }
}
