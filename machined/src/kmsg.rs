//! The kernel log (`/dev/kmsg`) for the Dmesg API.
//!
//! Each read of `/dev/kmsg` returns one record,
//! `<prio>,<seq>,<usec>,<flags>;<text>` with continuation lines. Records are
//! formatted as upstream does:
//! `<facility>: <priority, right-aligned to 7>: [<RFC 3339 time>]: <text>`.

use std::fs::OpenOptions;
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog facility number.
    pub facility: u8,
    /// Syslog priority (0 emerg … 7 debug).
    pub priority: u8,
    /// Sequence number.
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    /// The message (first line).
    pub text: String,
}

/// Parses one `/dev/kmsg` record.
#[must_use]
pub fn parse(raw: &str) -> Option<Record> {
    let (header, rest) = raw.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    let text = rest.lines().next().unwrap_or_default().to_owned();
    Some(Record {
        facility: u8::try_from(prio >> 3).unwrap_or(u8::MAX),
        priority: (prio & 7) as u8,
        seq,
        usec,
        text,
    })
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

impl Record {
    /// The facility's name (`kern`, `daemon`, ...).
    #[must_use]
    pub fn facility_name(&self) -> &'static str {
        FACILITIES
            .get(usize::from(self.facility))
            .copied()
            .unwrap_or("unknown")
    }

    /// The priority's name (`err`, `warning`, `info`, ...).
    #[must_use]
    pub fn priority_name(&self) -> &'static str {
        PRIORITIES[usize::from(self.priority & 7)]
    }

    /// When it was logged, in RFC 3339, `boot` being boot time.
    #[must_use]
    pub fn time(&self, boot: SystemTime) -> String {
        time::OffsetDateTime::from(boot + Duration::from_micros(self.usec))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// Formats a record the way upstream's Dmesg does, `boot` being boot time.
#[must_use]
pub fn format(record: &Record, boot: SystemTime) -> String {
    let facility = record.facility_name();
    let priority = record.priority_name();
    let ts = record.time(boot);
    format!("{facility}: {priority:>7}: [{ts}]: {}\n", record.text)
}

/// Boot time, from `/proc/stat`'s `btime`.
#[must_use]
pub fn boot_time() -> SystemTime {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::from_secs(secs))
}

/// Streams formatted kernel log lines: everything held (or, with `tail`,
/// only what comes next), then, with `follow`, new records as they arrive.
///
/// # Errors
/// `/dev/kmsg` cannot be opened (e.g. no CAP_SYSLOG).
pub fn stream(follow: bool, tail: bool) -> io::Result<mpsc::Receiver<io::Result<String>>> {
    let boot = boot_time();
    records(follow, tail, move |record| format(&record, boot))
}

/// Streams kernel log records as `map` makes them: everything held (or,
/// with `tail`, only what comes next), then, with `follow`, new records
/// as they arrive. Ends when the receiver is dropped.
///
/// # Errors
/// `/dev/kmsg` cannot be opened (e.g. no CAP_SYSLOG).
pub fn records<T, F>(follow: bool, tail: bool, map: F) -> io::Result<mpsc::Receiver<io::Result<T>>>
where
    T: Send + 'static,
    F: Fn(Record) -> T + Send + 'static,
{
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open("/dev/kmsg")?;
    if tail {
        rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0)).map_err(io::Error::from)?;
    }
    let (tx, rx) = mpsc::channel(64);
    // A blocking thread with a bounded poll, so it notices a client that
    // went away even when the kernel logs nothing.
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !follow {
                        return;
                    }
                    let mut fds = [rustix::event::PollFd::new(
                        &file,
                        rustix::event::PollFlags::IN,
                    )];
                    let timeout = rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: 500_000_000,
                    };
                    let _ = rustix::event::poll(&mut fds, Some(&timeout));
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
                // Records were overwritten before we read them: go on.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if n == 0 {
                return;
            }
            if let Some(record) = parse(&String::from_utf8_lossy(&buf[..n]))
                && tx.blocking_send(Ok(map(record))).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_like_upstream() {
        let r = parse("6,339,5140900,-;NET: Registered PF_INET6 protocol family\n SUBSYSTEM=net\n")
            .expect("parses");
        assert_eq!(
            r,
            Record {
                facility: 0,
                priority: 6,
                seq: 339,
                usec: 5_140_900,
                text: "NET: Registered PF_INET6 protocol family".into()
            }
        );
        let line = format(&r, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(
            line,
            "kern:    info: [2023-11-14T22:13:25.1409Z]: NET: Registered PF_INET6 protocol family\n"
        );
        let user = parse("12,1,0,-;hello").expect("parses");
        assert_eq!((user.facility, user.priority), (1, 4));
        assert!(format(&user, UNIX_EPOCH).starts_with("user: warning: ["));
        assert!(parse("garbage").is_none());
    }
}
