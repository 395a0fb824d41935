//! Per-service log buffers.
//!
//! Every log id (a service, or `machined` itself) has a bounded in-memory
//! ring (1 MiB by default, as upstream) that the Logs API reads, and, when a
//! log directory is available (`/var/log` on metal, the state directory in
//! container mode), a file `<dir>/<id>.log` rotated to `<id>.log.1` at 5 MiB.
//!
//! Readers address the stream by absolute byte offset. A follower that falls
//! further behind than the ring holds skips to the oldest byte still held:
//! the ring bound holds whatever readers do.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

/// Default ring capacity per log id.
pub const DEFAULT_CAPACITY: usize = 1024 * 1024;
/// Size at which a log file is rotated.
pub const ROTATE_AT: u64 = 5 * 1024 * 1024;
/// Largest chunk handed to a reader at once.
pub const MAX_CHUNK: usize = 32 * 1024;

#[derive(Debug)]
struct Ring {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Absolute offset of `buf[0]`.
    start: u64,
}

impl Ring {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn push(&mut self, data: &[u8]) {
        if data.len() >= self.capacity {
            // Only the tail of this append fits: everything before it is gone.
            let skipped = data.len() - self.capacity;
            self.start += (self.buf.len() + skipped) as u64;
            self.buf.clear();
            self.buf.extend(&data[skipped..]);
            return;
        }
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.buf.drain(..overflow);
            self.start += overflow as u64;
        }
        self.buf.extend(data);
    }

    fn read(&self, from: u64, max: usize) -> (Bytes, u64) {
        let from = from.max(self.start);
        if from >= self.end() {
            return (Bytes::new(), self.end());
        }
        let skip = usize::try_from(from - self.start).unwrap_or(usize::MAX);
        let n = (self.buf.len() - skip).min(max);
        let (a, b) = self.buf.as_slices();
        let mut out = Vec::with_capacity(n);
        if skip < a.len() {
            let take = (a.len() - skip).min(n);
            out.extend_from_slice(&a[skip..skip + take]);
            out.extend_from_slice(&b[..n - take]);
        } else {
            let s = skip - a.len();
            out.extend_from_slice(&b[s..s + n]);
        }
        (Bytes::from(out), from + n as u64)
    }

    /// Offset where the last `lines` lines begin (a trailing newline does not
    /// start an extra empty line).
    fn tail_offset(&self, lines: usize) -> u64 {
        if lines == 0 {
            return self.end();
        }
        let mut seen = 0;
        let len = self.buf.len();
        for i in (0..len).rev() {
            if self.buf[i] == b'\n' && i != len - 1 {
                seen += 1;
                if seen == lines {
                    return self.start + i as u64 + 1;
                }
            }
        }
        self.start
    }
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LogFile {
    fn open(path: PathBuf) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path, file, size })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.size + data.len() as u64 > ROTATE_AT && self.size > 0 {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, &rotated)?;
            *self = LogFile::open(self.path.clone())?;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

/// One log id's buffer.
#[derive(Debug)]
pub struct LogBuffer {
    id: String,
    ring: Mutex<Ring>,
    file: Mutex<Option<LogFile>>,
    notify: Notify,
}

impl LogBuffer {
    fn new(id: &str, capacity: usize, dir: Option<&Path>) -> LogBuffer {
        let file = dir.and_then(|d| {
            let path = d.join(format!("{id}.log"));
            LogFile::open(path.clone())
                .map_err(|e| eprintln!("machined: opening log file {}: {e}", path.display()))
                .ok()
        });
        LogBuffer {
            id: id.to_owned(),
            ring: Mutex::new(Ring {
                buf: VecDeque::with_capacity(16 * 1024),
                capacity,
                start: 0,
            }),
            file: Mutex::new(file),
            notify: Notify::new(),
        }
    }

    /// The log id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends bytes and wakes followers. Writes to the file too; that is a
    /// page-cache write, brief enough to do in place.
    pub fn append(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        lock(&self.ring).push(data);
        if let Some(file) = lock(&self.file).as_mut()
            && let Err(e) = file.write(data)
        {
            eprintln!("machined: writing log file {}: {e}", file.path.display());
        }
        self.notify.notify_waiters();
    }

    /// Offset at which a reader should start: the last `tail_lines` lines, or
    /// the whole buffer when `None`.
    #[must_use]
    pub fn start_offset(&self, tail_lines: Option<usize>) -> u64 {
        let ring = lock(&self.ring);
        match tail_lines {
            None => ring.start,
            Some(n) => ring.tail_offset(n),
        }
    }

    /// Up to `max` bytes from `from` (or from the oldest byte held, if `from`
    /// was overwritten) and the offset after them. Empty at the end.
    #[must_use]
    pub fn read(&self, from: u64, max: usize) -> (Bytes, u64) {
        lock(&self.ring).read(from, max)
    }

    /// The offset after the last byte appended.
    #[must_use]
    pub fn end(&self) -> u64 {
        lock(&self.ring).end()
    }

    /// Bytes currently held.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.ring).buf.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until bytes beyond `offset` exist.
    pub async fn wait_beyond(&self, offset: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so an append in between is not missed.
            notified.as_mut().enable();
            if lock(&self.ring).end() > offset {
                return;
            }
            notified.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The node's registry, once [`set_node_logs`] named it: what the last
/// steps before a reboot close the files of.
static NODE_LOGS: std::sync::OnceLock<Arc<LogRegistry>> = std::sync::OnceLock::new();

/// Names `logs` as the node's registry (the first call wins).
pub fn set_node_logs(logs: Arc<LogRegistry>) {
    let _ = NODE_LOGS.set(logs);
}

/// Closes the node's log files ([`LogRegistry::close_files`]): they are
/// on `/var`, which cannot be unmounted while they are open for writing.
/// Lines go on to memory.
pub fn close_node_log_files() {
    if let Some(logs) = NODE_LOGS.get() {
        logs.close_files();
    }
}

/// All log buffers of a node.
#[derive(Debug)]
pub struct LogRegistry {
    buffers: RwLock<BTreeMap<String, Arc<LogBuffer>>>,
    capacity: usize,
    dir: RwLock<Option<PathBuf>>,
    /// Woken when a buffer is made.
    created: Notify,
}

impl LogRegistry {
    /// A registry whose files (if any) go into `dir`.
    #[must_use]
    pub fn new(capacity: usize, dir: Option<PathBuf>) -> LogRegistry {
        LogRegistry {
            buffers: RwLock::default(),
            capacity,
            dir: RwLock::new(dir),
            created: Notify::new(),
        }
    }

    /// The buffer for `id`, created on first use.
    pub fn get_or_create(&self, id: &str) -> Arc<LogBuffer> {
        if let Some(b) = self.get(id) {
            return b;
        }
        let dir = self
            .dir
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut map = self
            .buffers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let buffer = Arc::clone(
            map.entry(id.to_owned())
                .or_insert_with(|| Arc::new(LogBuffer::new(id, self.capacity, dir.as_deref()))),
        );
        drop(map);
        self.created.notify_waiters();
        buffer
    }

    /// Waits until there are more than `known` buffers.
    pub async fn wait_more_than(&self, known: usize) {
        loop {
            let notified = self.created.notified();
            tokio::pin!(notified);
            // Register before checking, so a buffer made in between is not missed.
            notified.as_mut().enable();
            if self.count() > known {
                return;
            }
            notified.await;
        }
    }

    /// How many buffers there are.
    #[must_use]
    pub fn count(&self) -> usize {
        self.buffers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// The buffer for `id`, if any.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Arc<LogBuffer>> {
        self.buffers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Stops writing log files: every open one is closed, and buffers made
    /// later keep their logs in memory only. For a reset, which must
    /// unmount `/var` (where the files are) before wiping it.
    pub fn close_files(&self) {
        *self
            .dir
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        for buffer in self
            .buffers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            *lock(&buffer.file) = None;
        }
    }

    /// Every log id, sorted.
    #[must_use]
    pub fn ids(&self) -> Vec<String> {
        self.buffers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

/// A `tracing` writer that copies machined's own log into its log buffer
/// as well as to stderr.
#[derive(Debug, Clone)]
pub struct TeeWriter {
    buffer: Arc<LogBuffer>,
}

impl TeeWriter {
    /// Writes into `buffer` and stderr.
    #[must_use]
    pub fn new(buffer: Arc<LogBuffer>) -> TeeWriter {
        TeeWriter { buffer }
    }
}

impl std::io::Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.append(buf);
        // stderr may be closed (PID 1 before the console is set up): the
        // buffer has the line, which is what matters.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TeeWriter {
    type Writer = TeeWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &LogBuffer, from: u64) -> String {
        let mut out = Vec::new();
        let mut off = from;
        loop {
            let (chunk, next) = b.read(off, 7);
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
            off = next;
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn tail_lines() {
        let b = LogBuffer::new("t", 1024, None);
        b.append(b"one\ntwo\nthree\n");
        assert_eq!(text(&b, b.start_offset(Some(2))), "two\nthree\n");
        assert_eq!(text(&b, b.start_offset(Some(1))), "three\n");
        assert_eq!(text(&b, b.start_offset(Some(10))), "one\ntwo\nthree\n");
        assert_eq!(text(&b, b.start_offset(Some(0))), "");
        assert_eq!(text(&b, b.start_offset(None)), "one\ntwo\nthree\n");
        b.append(b"partial");
        assert_eq!(text(&b, b.start_offset(Some(1))), "partial");
        assert_eq!(text(&b, b.start_offset(Some(2))), "three\npartial");
    }

    #[test]
    fn ring_bound_holds_and_lagging_readers_skip_ahead() {
        let b = LogBuffer::new("t", 100, None);
        for i in 0..1000 {
            b.append(format!("line {i:04}\n").as_bytes());
            assert!(b.len() <= 100);
        }
        assert_eq!(b.len(), 100);
        let all = text(&b, 0);
        assert_eq!(all.len(), 100);
        assert!(all.ends_with("line 0999\n"), "{all}");
        // A single append larger than the ring keeps its tail.
        b.append(&[b'x'; 250]);
        assert_eq!(text(&b, 0), "x".repeat(100));
    }

    #[test]
    fn closed_files_stay_closed_and_the_buffers_keep_logging() {
        let dir = tempfile::tempdir().unwrap();
        let reg = LogRegistry::new(1024, Some(dir.path().to_path_buf()));
        let a = reg.get_or_create("a");
        a.append(b"one\n");
        reg.close_files();
        a.append(b"two\n");
        let b = reg.get_or_create("b");
        b.append(b"three\n");
        assert_eq!(std::fs::read(dir.path().join("a.log")).unwrap(), b"one\n");
        assert!(!dir.path().join("b.log").exists());
        assert_eq!(text(&a, 0), "one\ntwo\n");
        assert_eq!(text(&b, 0), "three\n");
    }

    #[test]
    fn rotation_at_the_threshold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = LogBuffer::new("svc", 1024, Some(dir.path()));
        let line = vec![b'a'; 1024 * 1024];
        for _ in 0..6 {
            b.append(&line);
        }
        let current = std::fs::metadata(dir.path().join("svc.log"))
            .expect("log")
            .len();
        let rotated = std::fs::metadata(dir.path().join("svc.log.1"))
            .expect("rotated")
            .len();
        assert_eq!(rotated, 5 * 1024 * 1024);
        assert_eq!(current, 1024 * 1024);
    }

    #[tokio::test]
    async fn followers_wake_on_append() {
        let b = Arc::new(LogBuffer::new("t", 1024, None));
        let end = b.start_offset(Some(0));
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                b.wait_beyond(end).await;
                b.read(end, 100).0
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b.append(b"live\n");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(&got[..], b"live\n");
    }
}
