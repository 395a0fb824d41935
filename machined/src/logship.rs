//! `machine.logging.destinations`: every service's log lines, machined's
//! own included, sent to each destination as upstream sends them, one
//! JSON object a line (`json_lines`): `msg`, `talos-level`,
//! `talos-service` and `talos-time`, with the destination's `extraTags`.
//! Over TCP the objects are newline-separated on one connection, made
//! again after a failure; over UDP each is one datagram.
//!
//! The first destinations machined is given get every line held since
//! boot, so the boot is not lost; one added later gets the lines from then
//! on. A destination that cannot keep up (or is down) loses lines rather
//! than hold the node back: each has a bounded queue, and what overflows
//! is counted and reported in machined's log, at most every 10 s. A line
//! is cut at 8 KiB.
//!
//! The kernel's log goes the same way to the `KmsgLogConfig` documents'
//! URLs (and `talos.logging.kernel=`), as upstream's: one object a record,
//! with `facility`, `priority`, `seq` and `clock` (microseconds since
//! boot) beside `msg`, `talos-level` and `talos-time`, from the oldest
//! record the kernel still holds. Each kernel destination reads the ring
//! itself and waits while its queue is full, so no record is dropped.
//!
//! At shutdown, once the services stopped, machined waits (a bounded
//! time) until every line and record read is on its destination's
//! socket: a node's last words are the ones an operator looks for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::logbuf::{LogBuffer, LogRegistry};

/// Lines a destination may have waiting before new ones are dropped (at
/// most [`MAX_LINE`] bytes each).
pub const QUEUE: usize = 1024;

/// The longest wait between two attempts to reach a TCP destination.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How lines reach a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// JSON lines on a TCP connection.
    Tcp,
    /// One JSON object a UDP datagram.
    Udp,
    /// Plain `<service>: <line>` lines written to a console device
    /// (`debug: true`).
    Console,
}

/// Where to send, and what to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// TCP, UDP or a console.
    pub carrier: Carrier,
    /// `host:port`, or the console device's path.
    pub address: String,
    /// Extra fields of every object.
    pub extra_tags: BTreeMap<String, String>,
}

impl Destination {
    /// From a config endpoint (`tcp://host:port/`, as validation checked
    /// it) and its tags; `None` for anything else.
    #[must_use]
    pub fn parse(endpoint: &str, extra_tags: BTreeMap<String, String>) -> Option<Destination> {
        let (udp, address) = machinery::config::log_endpoint(endpoint)?;
        (!address.is_empty()).then(|| Destination {
            carrier: if udp { Carrier::Udp } else { Carrier::Tcp },
            address: address.to_owned(),
            extra_tags,
        })
    }

    /// The console device at `path`: every service's lines but machined's
    /// (machined writes its own there already).
    #[must_use]
    pub fn console(path: &str) -> Destination {
        Destination {
            carrier: Carrier::Console,
            address: path.to_owned(),
            extra_tags: BTreeMap::new(),
        }
    }

    fn name(&self) -> String {
        match self.carrier {
            Carrier::Tcp => format!("tcp://{}", self.address),
            Carrier::Udp => format!("udp://{}", self.address),
            Carrier::Console => self.address.clone(),
        }
    }
}

/// One log line as a `json_lines` object (without the newline). A line
/// in the daemons' own format (`<RFC 3339 time> <LEVEL> <rest>`) gives
/// its time and level; any other line is `info` at `now`.
#[must_use]
pub fn json_line(
    service: &str,
    line: &str,
    extra_tags: &BTreeMap<String, String>,
    now: time::OffsetDateTime,
) -> String {
    // The level is padded to five columns: any run of spaces separates.
    let parsed = line
        .trim_start()
        .split_once(char::is_whitespace)
        .and_then(|(stamp, rest)| {
            let rest = rest.trim_start();
            let (level, msg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let stamp =
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            let level = match level {
                "TRACE" | "DEBUG" => "debug",
                "INFO" => "info",
                "WARN" => "warn",
                "ERROR" => "error",
                _ => return None,
            };
            Some((stamp, level, msg.trim()))
        });
    let (at, level, msg) = parsed.unwrap_or((now, "info", line.trim_end()));
    let mut object = serde_json::Map::new();
    for (key, value) in extra_tags {
        object.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    for (key, value) in [
        ("msg", msg),
        ("talos-level", level),
        ("talos-service", service),
        ("talos-time", at.as_str()),
    ] {
        object.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
    }
    serde_json::Value::Object(object).to_string()
}

/// One destination's queue, as the followers see it.
struct Queue {
    destination: Destination,
    tx: mpsc::Sender<String>,
    /// Lines queued and not yet handed to the network: what a drain at
    /// shutdown waits for.
    unsent: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    /// Its sender task, stopped when the destination goes.
    task: tokio::task::AbortHandle,
    /// The kernel's log: the destination's own reader of it, stopped
    /// with it.
    reader: Option<tokio::task::AbortHandle>,
}

impl Queue {
    fn stop(&self) {
        self.task.abort();
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// Ships the node's logs: one follower per log buffer, started once per
/// process, and one sender per destination. Destinations change without
/// touching the others: an unchanged one keeps its queue and connection,
/// and the restart after a config applied in maintenance mode neither
/// loses nor repeats a line.
pub struct Shipper {
    source: Source,
    queues: Arc<std::sync::RwLock<Vec<Queue>>>,
    followers: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Every buffer followed, with the offset its lines are queued up to.
    followed: Followed,
    /// Asked at the drain: a line without its newline goes as it is.
    flush: Arc<Flush>,
}

/// The drain's request to the followers to send what they hold of a line
/// without its newline: the services have stopped, no newline comes.
#[derive(Debug, Default)]
struct Flush {
    requested: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

/// The buffers followed and how far each one's lines are queued.
type Followed = Arc<std::sync::Mutex<Vec<(Arc<LogBuffer>, Arc<AtomicU64>)>>>;

/// How often a drain looks whether everything went.
const DRAIN_POLL: Duration = Duration::from_millis(5);

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").finish_non_exhaustive()
    }
}

/// What a shipper sends.
enum Source {
    /// The services' log lines.
    Services(Arc<LogRegistry>),
    /// The kernel's log records (`/dev/kmsg`).
    Kernel,
}

impl Shipper {
    /// A shipper of `logs`'s lines, with no destination yet.
    #[must_use]
    pub fn new(logs: Arc<LogRegistry>) -> Shipper {
        Shipper::of(Source::Services(logs))
    }

    /// The process's shipper of the kernel's log.
    pub fn kernel() -> &'static Shipper {
        static KERNEL: std::sync::OnceLock<Shipper> = std::sync::OnceLock::new();
        KERNEL.get_or_init(|| Shipper::of(Source::Kernel))
    }

    fn of(source: Source) -> Shipper {
        Shipper {
            source,
            queues: Arc::default(),
            followers: std::sync::Mutex::new(None),
            followed: Arc::default(),
            flush: Arc::default(),
        }
    }

    /// The process's shipper: one for machined's whole life, over the
    /// registry of its first caller (machined has one).
    pub fn node(logs: &Arc<LogRegistry>) -> &'static Shipper {
        static NODE: std::sync::OnceLock<Shipper> = std::sync::OnceLock::new();
        NODE.get_or_init(|| Shipper::new(Arc::clone(logs)))
    }

    /// Sends to `destinations` from now on: new ones start, gone ones
    /// stop, the others go on. The first time there is any, the lines
    /// held already go too when `from_start`.
    pub fn set(&self, destinations: &[Destination], from_start: bool) {
        {
            let mut queues = self
                .queues
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queues.retain(|q| {
                let keep = destinations.contains(&q.destination);
                if !keep {
                    q.stop();
                }
                keep
            });
            for destination in destinations {
                if queues.iter().any(|q| &q.destination == destination) {
                    continue;
                }
                let (tx, rx) = mpsc::channel::<String>(QUEUE);
                let dropped = Arc::new(AtomicU64::new(0));
                let unsent = Arc::new(AtomicUsize::new(0));
                let task = tokio::spawn(send(
                    destination.clone(),
                    rx,
                    Arc::clone(&unsent),
                    Arc::clone(&dropped),
                ));
                // The kernel's ring is the buffer: each destination reads
                // it at its own pace, and nothing is dropped.
                let reader = matches!(self.source, Source::Kernel).then(|| {
                    tokio::spawn(follow_kernel(
                        destination.extra_tags.clone(),
                        tx.clone(),
                        Arc::clone(&unsent),
                    ))
                    .abort_handle()
                });
                queues.push(Queue {
                    destination: destination.clone(),
                    tx,
                    unsent,
                    dropped,
                    task: task.abort_handle(),
                    reader,
                });
            }
        }
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if followers.is_none()
            && !destinations.is_empty()
            && let Source::Services(logs) = &self.source
        {
            let queues = Arc::clone(&self.queues);
            let followed = Arc::clone(&self.followed);
            let flush = Arc::clone(&self.flush);
            let task = tokio::spawn(follow_all(
                Arc::clone(logs),
                queues,
                followed,
                flush,
                from_start,
            ));
            *followers = Some(task.abort_handle());
        }
    }

    /// Waits, at most `within`, until every line and record read so far
    /// is handed to its destination's socket: at shutdown, so the
    /// services' last words and the kernel's reach the destinations.
    /// Whether everything went (a destination that is down holds its lines
    /// until the time is up).
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        // The services have stopped: a last line without its newline will
        // get none.
        self.flush.requested.store(true, Ordering::Release);
        self.flush.notify.notify_waiters();
        loop {
            if self.drained() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    fn drained(&self) -> bool {
        let queues = self
            .queues
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queues.is_empty() {
            return true;
        }
        let followed = self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let all_followed = match &self.source {
            Source::Services(logs) => followed.len() >= logs.count(),
            Source::Kernel => true,
        };
        all_followed
            && followed
                .iter()
                .all(|(buffer, queued)| queued.load(Ordering::Acquire) >= buffer.end())
            && queues.iter().all(|q| q.unsent.load(Ordering::Acquire) == 0)
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if let Some(followers) = self
            .followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            followers.abort();
        }
        for queue in self
            .queues
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            queue.stop();
        }
    }
}

type Queues = Arc<std::sync::RwLock<Vec<Queue>>>;

/// Follows every log buffer, those made later too (from their start:
/// their service started after shipping did).
async fn follow_all(
    logs: Arc<LogRegistry>,
    queues: Queues,
    followed_at: Followed,
    flush: Arc<Flush>,
    from_start: bool,
) {
    let mut followed = std::collections::BTreeSet::new();
    let mut followers = JoinSet::new();
    let mut first = true;
    loop {
        for id in logs.ids() {
            if followed.insert(id.clone())
                && let Some(buffer) = logs.get(&id)
            {
                let start = if first && !from_start {
                    buffer.start_offset(Some(0))
                } else {
                    buffer.start_offset(None)
                };
                let queues = Arc::clone(&queues);
                let queued = Arc::new(AtomicU64::new(start));
                followed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((Arc::clone(&buffer), Arc::clone(&queued)));
                let flush = Arc::clone(&flush);
                followers.spawn(async move { follow(buffer, start, queues, queued, flush).await });
            }
        }
        first = false;
        logs.wait_more_than(followed.len()).await;
    }
}

/// How long a kernel log reader that failed waits before it reads again.
const KERNEL_REREAD: Duration = Duration::from_secs(5);

/// Follows the kernel's log from its oldest record for one destination,
/// waiting while its queue is full (the kernel's ring holds the rest; what
/// the ring overwrites meanwhile is lost, as in any reader of it). A
/// reader that fails is opened again, going on after the last record
/// sent.
async fn follow_kernel(
    extra_tags: BTreeMap<String, String>,
    tx: mpsc::Sender<String>,
    unsent: Arc<AtomicUsize>,
) {
    let boot = crate::kmsg::boot_time();
    let mut last: Option<u64> = None;
    loop {
        match crate::kmsg::records(true, false, |record| record) {
            Ok(mut records) => {
                while let Some(record) = records.recv().await {
                    let record = match record {
                        Ok(record) => record,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the kernel log to ship it");
                            break;
                        }
                    };
                    if last.is_some_and(|last| record.seq <= last) {
                        continue;
                    }
                    last = Some(record.seq);
                    unsent.fetch_add(1, Ordering::AcqRel);
                    if tx
                        .send(kernel_json(&record, boot, &extra_tags))
                        .await
                        .is_err()
                    {
                        unsent.fetch_sub(1, Ordering::AcqRel);
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the kernel log to ship it"),
        }
        tokio::time::sleep(KERNEL_REREAD).await;
    }
}

/// One kernel log record as upstream's kernel log shipping writes it
/// (without the newline); `boot` is when the clock started.
#[must_use]
pub fn kernel_json(
    record: &crate::kmsg::Record,
    boot: std::time::SystemTime,
    extra_tags: &BTreeMap<String, String>,
) -> String {
    let level = match record.priority & 7 {
        0..=3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    };
    let at = record.time(boot);
    let mut end = record.text.len().min(MAX_LINE);
    while !record.text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &record.text[..end];
    let mut object = serde_json::Map::new();
    for (key, value) in extra_tags {
        object.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    for (key, value) in [
        ("msg", serde_json::Value::from(text.trim_end())),
        ("talos-level", level.into()),
        ("talos-time", at.into()),
        ("facility", record.facility_name().into()),
        ("priority", record.priority_name().into()),
        ("seq", record.seq.into()),
        ("clock", record.usec.into()),
    ] {
        object.insert(key.to_owned(), value);
    }
    serde_json::Value::Object(object).to_string()
}

/// The longest line shipped, in bytes: a longer one is cut (and a service
/// writing without newlines still ships, in pieces of this size).
pub const MAX_LINE: usize = 8 * 1024;

/// Follows one buffer from `offset`, queueing each line; `queued` says
/// how far (a line held for its newline is not queued yet). Once `flush`
/// is asked, a held line goes without its newline.
async fn follow(
    buffer: Arc<LogBuffer>,
    mut offset: u64,
    queues: Queues,
    queued: Arc<AtomicU64>,
    flush: Arc<Flush>,
) {
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let asked = flush.notify.notified();
        tokio::pin!(asked);
        // Registered before the flag is read, so a drain in between is
        // not missed.
        asked.as_mut().enable();
        let flushing = flush.requested.load(Ordering::Acquire);
        // A held line to flush goes at once; else wait for more.
        if !flushing || partial.is_empty() {
            tokio::select! {
                () = buffer.wait_beyond(offset) => {}
                () = &mut asked => {}
            }
        }
        let (bytes, next) = buffer.read(offset, 64 * 1024);
        // The ring moved on past `offset`: what was partial is cut off.
        if next.saturating_sub(bytes.len() as u64) != offset {
            partial.clear();
        }
        offset = next;
        partial.extend_from_slice(&bytes);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            lines.push(partial.drain(..=end).collect());
        }
        // No newline in sight: ship what is there in pieces rather than
        // hold it.
        while partial.len() >= MAX_LINE {
            lines.push(partial.drain(..MAX_LINE).collect());
        }
        // Only once the buffer is read to its end: the rest of the line may
        // be in what the next read brings.
        if flush.requested.load(Ordering::Acquire) && !partial.is_empty() && offset >= buffer.end()
        {
            lines.push(std::mem::take(&mut partial));
        }
        let held = partial.len() as u64;
        if lines.is_empty() {
            queued.store(offset.saturating_sub(held), Ordering::Release);
            continue;
        }
        let now = time::OffsetDateTime::now_utc();
        let queues = queues
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in &lines {
            let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
            if line.trim().is_empty() {
                continue;
            }
            for queue in queues.iter() {
                let object = match queue.destination.carrier {
                    // machined's own lines are on the console already.
                    Carrier::Console if buffer.id() == "machined" => continue,
                    Carrier::Console => format!("{}: {}", buffer.id(), line.trim_end()),
                    Carrier::Tcp | Carrier::Udp => {
                        json_line(buffer.id(), &line, &queue.destination.extra_tags, now)
                    }
                };
                queue.unsent.fetch_add(1, Ordering::AcqRel);
                if queue.tx.try_send(object).is_err() {
                    queue.unsent.fetch_sub(1, Ordering::AcqRel);
                    queue.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        queued.store(offset.saturating_sub(held), Ordering::Release);
    }
}

/// How long one write to a TCP destination may take before the
/// connection is given up and made again.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// The least time between two reports of lines dropped.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Sends what `rx` carries to `destination`, reconnecting over TCP.
async fn send(
    destination: Destination,
    mut rx: mpsc::Receiver<String>,
    unsent: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
) {
    let name = destination.name();
    let mut backoff = Duration::from_secs(1);
    let mut pending: Option<String> = None;
    // At most one report every REPORT_EVERY: the report is a log line,
    // shipped too.
    let mut reported = tokio::time::Instant::now();
    let mut report = |dropped: &AtomicU64| {
        if reported.elapsed() < REPORT_EVERY {
            return;
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            reported = tokio::time::Instant::now();
            tracing::warn!(destination = %name, lost, "log lines dropped: the destination did not keep up");
        }
    };
    if destination.carrier == Carrier::Console {
        // A console write may block (a slow serial line): a thread of its
        // own, not one of the runtime's blocking pool, which shutdown
        // would wait for. It ends when the destination goes.
        let path = destination.address.clone();
        let spawned = std::thread::Builder::new()
            .name("console-logs".into())
            .spawn(move || write_console(&path, &mut rx, &unsent));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "starting the console log writer");
        }
        return;
    }
    loop {
        if destination.carrier == Carrier::Udp {
            let socket = match udp_socket(&destination.address).await {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::warn!(destination = %destination.name(), error = %e, "log destination unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            while let Some(line) = rx.recv().await {
                // One object a datagram; a refused one is lost, as UDP's are.
                let _ = socket.send(line.as_bytes()).await;
                unsent.fetch_sub(1, Ordering::AcqRel);
                report(&dropped);
            }
            return;
        }
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(destination.address.as_str()),
        )
        .await;
        let mut stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(destination = %destination.name(), error = %e, "log destination unreachable; retrying");
                report(&dropped);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::warn!(destination = %destination.name(), "log destination did not answer; retrying");
                report(&dropped);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        loop {
            let line = match pending.take() {
                Some(line) => line,
                None => match rx.recv().await {
                    Some(line) => line,
                    None => return,
                },
            };
            let mut framed = line.into_bytes();
            framed.push(b'\n');
            // A peer that stops reading must not hold the sender for good.
            let failed = match tokio::time::timeout(WRITE_WITHIN, stream.write_all(&framed)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no progress in {} s", WRITE_WITHIN.as_secs())),
            };
            if let Some(error) = failed {
                tracing::warn!(destination = %destination.name(), %error, "sending logs failed; reconnecting");
                framed.pop();
                pending = Some(String::from_utf8(framed).unwrap_or_default());
                break;
            }
            unsent.fetch_sub(1, Ordering::AcqRel);
            report(&dropped);
        }
    }
}

/// Writes each line `rx` carries to the console device at `path`, opened
/// without becoming a controlling terminal (PID 1 must not get the
/// console's signals). A line that cannot be written is lost.
fn write_console(path: &str, rx: &mut mpsc::Receiver<String>, unsent: &AtomicUsize) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let console = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(path);
    let mut console = match console {
        Ok(console) => Some(console),
        Err(e) => {
            tracing::warn!(console = path, error = %e, "opening the console for service logs");
            None
        }
    };
    while let Some(line) = rx.blocking_recv() {
        if let Some(console) = console.as_mut() {
            let _ = console.write_all(format!("{line}\n").as_bytes());
        }
        unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn udp_socket(address: &str) -> std::io::Result<tokio::net::UdpSocket> {
    let target = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address} resolves to nothing")))?;
    let local: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> time::OffsetDateTime {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("time")
    }

    #[test]
    fn kernel_records_as_upstream_ships_them() {
        let record = crate::kmsg::parse("3,812,5140900,-;virtio_net: link down\n").expect("record");
        let boot = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let object: serde_json::Value =
            serde_json::from_str(&kernel_json(&record, boot, &BTreeMap::new())).expect("json");
        assert_eq!(
            object,
            serde_json::json!({
                "msg": "virtio_net: link down",
                "talos-level": "error",
                "talos-time": "2023-11-14T22:13:25.1409Z",
                "facility": "kern",
                "priority": "err",
                "seq": 812,
                "clock": 5_140_900,
            })
        );
        let warning = crate::kmsg::parse("4,1,0,-;x").expect("record");
        let debug = crate::kmsg::parse("15,2,0,-;y").expect("record");
        for (record, level) in [(warning, "warn"), (debug, "debug")] {
            let object: serde_json::Value =
                serde_json::from_str(&kernel_json(&record, boot, &BTreeMap::new())).expect("json");
            assert_eq!(object["talos-level"], level);
        }
        // A long record is cut on a character boundary.
        let long = crate::kmsg::Record {
            facility: 0,
            priority: 6,
            seq: 3,
            usec: 0,
            text: "é".repeat(MAX_LINE),
        };
        let object: serde_json::Value =
            serde_json::from_str(&kernel_json(&long, boot, &BTreeMap::new())).expect("json");
        assert_eq!(object["msg"].as_str().expect("msg").len(), MAX_LINE);
    }

    #[test]
    fn destinations_from_the_config() {
        let tags = BTreeMap::from([("node".to_owned(), "cp1".to_owned())]);
        assert_eq!(
            Destination::parse("udp://127.0.0.1:12345/", tags.clone()),
            Some(Destination {
                carrier: Carrier::Udp,
                address: "127.0.0.1:12345".into(),
                extra_tags: tags,
            })
        );
        let tcp = Destination::parse("tcp://[fd00::1]:5044", BTreeMap::new()).expect("tcp");
        assert_eq!(tcp.carrier, Carrier::Tcp);
        assert_eq!(tcp.address, "[fd00::1]:5044");
        assert_eq!(Destination::parse("http://x:1/", BTreeMap::new()), None);
        assert_eq!(Destination::parse("tcp:///", BTreeMap::new()), None);
    }

    #[test]
    fn lines_as_upstream_json_lines() {
        let now = at("2026-11-28T07:00:00Z");
        let tags = BTreeMap::from([("cluster".to_owned(), "rusty".to_owned())]);
        let v: serde_json::Value = serde_json::from_str(&json_line(
            "apid",
            "2026-11-28T06:49:47.522841Z  WARN apid::tls: certificate reloaded path=/a",
            &tags,
            now,
        ))
        .expect("json");
        assert_eq!(v["msg"], "apid::tls: certificate reloaded path=/a");
        assert_eq!(v["talos-level"], "warn");
        assert_eq!(v["talos-service"], "apid");
        assert_eq!(v["talos-time"], "2026-11-28T06:49:47.522841Z");
        assert_eq!(v["cluster"], "rusty");
        // Not the daemons' format: the whole line, info, now.
        let v: serde_json::Value = serde_json::from_str(&json_line(
            "udevd",
            "plain text line\n",
            &BTreeMap::new(),
            now,
        ))
        .expect("json");
        assert_eq!(v["msg"], "plain text line");
        assert_eq!(v["talos-level"], "info");
        assert_eq!(v["talos-time"], "2026-11-28T07:00:00Z");
        // A tag named like a field does not replace it.
        let clash = BTreeMap::from([("msg".to_owned(), "x".to_owned())]);
        let v: serde_json::Value =
            serde_json::from_str(&json_line("s", "real", &clash, now)).expect("json");
        assert_eq!(v["msg"], "real");
    }

    type TcpLines = tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>;

    async fn next(lines: &mut TcpLines) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("not closed");
        serde_json::from_str(&line).expect("json")
    }

    /// Lines appended to a buffer reach a TCP listener as JSON lines; the
    /// destination's connection is made again after the listener drops it.
    #[tokio::test]
    async fn ships_to_tcp_and_udp() {
        use tokio::io::AsyncBufReadExt as _;
        let logs = Arc::new(LogRegistry::new(64 * 1024, None));
        let machined = logs.get_or_create("machined");
        machined.append(b"2026-11-28T06:00:00Z  INFO machined: booted\n");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("tcp");
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let destinations = [
            Destination {
                carrier: Carrier::Tcp,
                address: tcp.local_addr().expect("addr").to_string(),
                extra_tags: BTreeMap::new(),
            },
            Destination {
                carrier: Carrier::Udp,
                address: udp.local_addr().expect("addr").to_string(),
                extra_tags: BTreeMap::from([("node".to_owned(), "n1".to_owned())]),
            },
        ];
        let shipper = Shipper::new(Arc::clone(&logs));
        shipper.set(&destinations, true);
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), tcp.accept())
            .await
            .expect("a connection")
            .expect("accept");
        let mut lines = tokio::io::BufReader::new(stream).lines();

        // What was held before: the boot.
        let first = next(&mut lines).await;
        assert_eq!(first["msg"], "machined: booted");
        assert_eq!(first["talos-service"], "machined");
        // A service that starts later, and a line split across writes.
        let apid = logs.get_or_create("apid");
        apid.append(b"2026-11-28T06:00:01Z ERROR apid: half");
        apid.append(b" and the rest\n");
        let second = next(&mut lines).await;
        assert_eq!(second["msg"], "apid: half and the rest");
        assert_eq!(second["talos-level"], "error");
        assert_eq!(second["talos-service"], "apid");

        let mut datagram = vec![0u8; 4096];
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = tokio::time::timeout(Duration::from_secs(10), udp.recv(&mut datagram))
                .await
                .expect("a datagram in time")
                .expect("recv");
            let v: serde_json::Value = serde_json::from_slice(&datagram[..n]).expect("json");
            assert_eq!(v["node"], "n1");
            got.push(v["msg"].as_str().expect("msg").to_owned());
        }
        assert_eq!(got, ["machined: booted", "apid: half and the rest"]);

        // The listener drops the connection: lines after are sent on a
        // new one.
        drop(lines);
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                machined.append(b"2026-11-28T06:00:02Z  INFO machined: again\n");
                tokio::select! {
                    accepted = tcp.accept() => return accepted,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
        .await
        .expect("reconnected")
        .expect("accept");
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let again = next(&mut lines).await;
        assert_eq!(again["msg"], "machined: again");

        // The UDP destination goes: the TCP one keeps its connection, and
        // a service that writes no newline still ships, cut at MAX_LINE.
        shipper.set(&destinations[..1], false);
        machined.append(&vec![b'x'; MAX_LINE + 10]);
        let cut = loop {
            let v = next(&mut lines).await;
            if v["msg"] != "machined: again" {
                break v;
            }
        };
        assert_eq!(cut["msg"].as_str().map(str::len), Some(MAX_LINE));
        machined.append(b"\n");
        assert_eq!(next(&mut lines).await["msg"], "xxxxxxxxxx");
        // Dropped: the connection closes.
        shipper.set(&[], false);
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match lines.next_line().await {
                    Ok(Some(_)) => {}
                    _ => return,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "still connected");
    }

    /// `debug: true`'s console gets each service's lines as plain text,
    /// not machined's own (already there).
    #[tokio::test]
    async fn the_console_gets_plain_service_lines() {
        let logs = Arc::new(LogRegistry::new(64 * 1024, None));
        logs.get_or_create("machined")
            .append(b"2026-11-28T06:00:00Z  INFO machined: booted\n");
        logs.get_or_create("apid")
            .append(b"2026-11-28T06:00:01Z  INFO apid: listening\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console");
        std::fs::write(&console, "").expect("console");
        let shipper = Shipper::new(Arc::clone(&logs));
        shipper.set(
            &[Destination::console(console.to_str().expect("utf8"))],
            true,
        );
        logs.get_or_create("networkd").append(b"no newline yet");
        logs.get_or_create("networkd").append(b", now\n");
        assert!(shipper.drain(Duration::from_secs(10)).await, "drained");
        // Each service's lines in order; services may interleave.
        let written = std::fs::read_to_string(&console).expect("read");
        let mut lines: Vec<&str> = written.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "apid: 2026-11-28T06:00:01Z  INFO apid: listening",
                "networkd: no newline yet, now"
            ]
        );
    }

    /// A drain returns once every line appended before it is on the
    /// destination's socket, a buffer made just before included; with the
    /// destination down it gives up when the time is up.
    #[tokio::test]
    async fn drain_sends_what_is_held() {
        use tokio::io::AsyncBufReadExt as _;
        let logs = Arc::new(LogRegistry::new(1024 * 1024, None));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("tcp");
        assert!(
            Shipper::new(Arc::clone(&logs)).drain(Duration::ZERO).await,
            "nothing to send without destinations"
        );
        let shipper = Shipper::new(Arc::clone(&logs));
        shipper.set(
            &[Destination {
                carrier: Carrier::Tcp,
                address: tcp.local_addr().expect("addr").to_string(),
                extra_tags: BTreeMap::new(),
            }],
            true,
        );
        // Written at once, the follower not yet run, one buffer new; its
        // last words have no newline (a service that died mid-line).
        for service in ["machined", "late"] {
            let buffer = logs.get_or_create(service);
            for i in 0..300 {
                buffer.append(format!("2026-11-28T06:00:00Z  INFO {service} {i}\n").as_bytes());
            }
        }
        let late = logs.get_or_create("late");
        late.append(b"panicked at the end");
        // The follower holds the last line, waiting for its newline, when
        // the drain starts: the drain wakes it.
        let held = late.end() - "panicked at the end".len() as u64;
        let waited = tokio::time::Instant::now();
        loop {
            let holding = shipper
                .followed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .any(|(b, queued)| b.id() == "late" && queued.load(Ordering::Acquire) == held);
            if holding {
                break;
            }
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "the follower never held the line"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (drained, accepted) =
            tokio::join!(shipper.drain(Duration::from_secs(10)), tcp.accept());
        assert!(drained, "drained in time");
        let (stream, _) = accepted.expect("accept");
        // Every line is on the socket now: reading it needs no more sending.
        shipper.set(&[], false);
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let mut got = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read") {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json");
            got.push(v["msg"].as_str().expect("msg").to_owned());
        }
        assert_eq!(got.len(), 601, "every line: {got:?}");
        assert!(got.contains(&"late 299".to_owned()));
        assert!(
            got.iter().any(|m| m.ends_with("panicked at the end")),
            "the line without its newline: {got:?}"
        );

        // Down: the lines stay unsent, and the drain ends at its bound.
        let down = tcp.local_addr().expect("addr").to_string();
        drop(tcp);
        let shipper = Shipper::new(Arc::clone(&logs));
        shipper.set(
            &[Destination {
                carrier: Carrier::Tcp,
                address: down,
                extra_tags: BTreeMap::new(),
            }],
            true,
        );
        let started = tokio::time::Instant::now();
        assert!(!shipper.drain(Duration::from_millis(200)).await);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
