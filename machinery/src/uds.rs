//! Unix-socket streams that wake their task only for what it waits for.
//!
//! tokio registers every socket for read and write readiness at once. On a
//! unix socket the kernel reports write space every time the peer reads a
//! message (`unix_write_space`, unlike TCP, which reports it only after a
//! writer found the buffer full). So a process that sent a request and
//! sleeps until the answer is woken once for nothing as soon as the peer
//! has read the request: on every hop of every call, one extra wake-up of
//! the writer, often an inter-processor interrupt and a context switch.
//! The local API path has three such hops (apid → routerd → backend and the
//! clients of the backends' sockets).
//!
//! A [`Stream`] registers its socket for read readiness only and writes
//! straight to it. Only a write that finds the send buffer full registers
//! a duplicate of the socket for write readiness, and drops that
//! registration as soon as a write goes through again.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected unix stream socket registered for read readiness only.
#[derive(Debug)]
pub struct Stream {
    read: AsyncFd<StdStream>,
    /// Write readiness, registered only while the send buffer is full.
    write: Option<AsyncFd<StdStream>>,
}

impl Stream {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// The connection fails, or the socket cannot be registered.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Stream> {
        Stream::from_tokio(tokio::net::UnixStream::connect(path).await?)
    }

    /// Takes over a tokio stream (e.g. one a listener accepted).
    ///
    /// # Errors
    /// The socket cannot be registered.
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Stream> {
        Stream::from_std(stream.into_std()?)
    }

    /// Takes over a connected std stream.
    ///
    /// # Errors
    /// The socket cannot be made non-blocking or registered.
    pub fn from_std(stream: StdStream) -> io::Result<Stream> {
        stream.set_nonblocking(true)?;
        Ok(Stream {
            read: register(stream, Interest::READABLE)?,
            write: None,
        })
    }

    /// Writes with `op`, straight to the socket while it takes data, and
    /// through a write-readiness registration while it does not.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&StdStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(write) = &self.write {
                let mut guard = ready!(write.poll_write_ready(cx))?;
                if let Ok(result) = guard.try_io(|fd| op(fd.get_ref())) {
                    // The buffer drained: stop listening for write space.
                    self.write = None;
                    return Poll::Ready(result);
                }
                continue;
            }
            match op(self.read.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Registering reports the socket's state at once, so
                    // space freed since the failed write is not missed.
                    let dup = self.read.get_ref().try_clone()?;
                    self.write = Some(register(dup, Interest::WRITABLE)?);
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

/// Registers `stream` with the runtime's reactor for `interest` only.
#[allow(unsafe_code)]
fn register(stream: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    // SAFETY: the AsyncFd owns `stream`, an owned socket whose
    // `as_raw_fd` is always the same descriptor, open until the stream is
    // dropped, which happens only with the AsyncFd.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(io::Error::from)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let wanted = unfilled.len();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket: wait for the next
                    // message instead of trying a read that would fail
                    // (as tokio's own streams do).
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.read.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Accepts the next connection on `listener` as a [`Stream`].
///
/// # Errors
/// Accepting fails, or the connection cannot be registered.
pub async fn accept(listener: &tokio::net::UnixListener) -> io::Result<Stream> {
    let (stream, _) = listener.accept().await?;
    Stream::from_tokio(stream)
}

/// The connections `listener` accepts, as [`Stream`]s (for tonic's
/// `serve_with_incoming`).
pub fn incoming(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = io::Result<Stream>> + Send + 'static {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|accepted| accepted.and_then(Stream::from_tokio))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Context switches of the thread `task` (a `/proc/self/task/TID` path).
    fn switches(task: &Path) -> u64 {
        std::fs::read_to_string(task.join("status"))
            .expect("status")
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    }

    /// The thread's context switches once it sleeps and they stay put (at
    /// most 10 s of waiting on a busy machine).
    fn settled(task: &Path) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = switches(task);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let sleeping = std::fs::read_to_string(task.join("stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('S')))
                .unwrap_or(false);
            let now = switches(task);
            if (sleeping && now == last) || std::time::Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// How often a runtime thread that wrote a request and waits for the
    /// answer is woken while the peer merely reads the request.
    fn wakes_while_peer_reads(quiet: bool) -> u64 {
        let (ours, mut peer) = StdStream::pair().expect("pair");
        let (task_tx, task_rx) = std::sync::mpsc::channel();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let task = std::fs::read_link("/proc/thread-self").expect("thread-self");
                let mut answer = [0_u8; 4];
                if quiet {
                    let mut s = Stream::from_std(ours).expect("stream");
                    s.write_all(b"ping").await.expect("write");
                    task_tx.send(task).expect("send");
                    s.read_exact(&mut answer).await.expect("read");
                } else {
                    ours.set_nonblocking(true).expect("nonblocking");
                    let mut s = tokio::net::UnixStream::from_std(ours).expect("stream");
                    s.write_all(b"ping").await.expect("write");
                    task_tx.send(task).expect("send");
                    s.read_exact(&mut answer).await.expect("read");
                }
                assert_eq!(&answer, b"pong");
            });
        });
        let task = Path::new("/proc").join(task_rx.recv().expect("task"));
        let before = settled(&task);
        let mut request = [0_u8; 4];
        peer.read_exact(&mut request).expect("read request");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let after = switches(&task);
        peer.write_all(b"pong").expect("answer");
        runtime.join().expect("runtime thread");
        after - before
    }

    #[test]
    fn the_writer_sleeps_while_the_peer_reads() {
        // tokio's own stream is woken for the write space the read freed
        // (this is what Stream is for; if a kernel stops doing it, Stream
        // is no longer needed).
        assert!(wakes_while_peer_reads(false) >= 1);
        assert_eq!(wakes_while_peer_reads(true), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bulk_both_ways_through_full_buffers() {
        // Far more than a socket buffer each way at once: both writers
        // find their buffer full and must wait for write space.
        let (a, b) = StdStream::pair().expect("pair");
        let mut a = Stream::from_std(a).expect("a");
        let mut b = Stream::from_std(b).expect("b");
        let data: Vec<u8> = (0..8 * 1024 * 1024_u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let (mut ar, mut aw) = tokio::io::split(&mut a);
        let (mut br, mut bw) = tokio::io::split(&mut b);
        let a_to_b = async {
            aw.write_all(&data).await.expect("a writes");
            aw.shutdown().await.expect("a shuts down");
        };
        let b_to_a = async {
            bw.write_all(&data).await.expect("b writes");
            bw.shutdown().await.expect("b shuts down");
        };
        let read_b = async {
            let mut got = Vec::new();
            br.read_to_end(&mut got).await.expect("b reads");
            got
        };
        let read_a = async {
            let mut got = Vec::new();
            ar.read_to_end(&mut got).await.expect("a reads");
            got
        };
        let ((), (), at_b, at_a) = tokio::join!(a_to_b, b_to_a, read_b, read_a);
        assert!(at_b == expected, "a → b corrupted ({} bytes)", at_b.len());
        assert!(at_a == expected, "b → a corrupted ({} bytes)", at_a.len());
    }
}
