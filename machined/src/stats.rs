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
