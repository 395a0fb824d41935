//! Routing by connection: routerd hands a client a connection to a backend.
//!
//! routerd forwards every call it receives over HTTP/2 to the daemon that
//! serves the call's gRPC package. A client that sends many calls to the
//! same package (apid, for every call it serves locally) can instead ask
//! routerd once per package to be routed: on a fresh connection to
//! routerd's socket it sends `ROUTE <service>\n`, and routerd answers with
//! one line:
//!
//! - `OK\n`, carrying (SCM_RIGHTS) a new connection to the backend of the
//!   service's package. The client speaks HTTP/2 on it, and routerd is out
//!   of the data path for that connection's life: relaying every call cost
//!   a second proxy's CPU and wake-ups on the API's hottest path.
//! - `SELF\n`: routerd serves the service itself (reflection) and goes on
//!   with HTTP/2 on this connection.
//! - `ERR <gRPC code> <message>\n`: the package has no backend
//!   (Unimplemented) or its backend cannot be reached (Unavailable), in the
//!   words routerd uses for a forwarded call.
//!
//! The route table stays routerd's alone. HTTP/2 clients open with the
//! connection preface (`PRI * HTTP/2.0`), so routerd tells the two kinds of
//! client apart by the first byte and serves plain HTTP/2 as before.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;

use crate::uds;

/// What a routing request starts with.
pub const REQUEST: &[u8] = b"ROUTE ";
/// The longest request or reply line accepted.
const MAX_LINE: usize = 1024;
/// How long either side waits for the other's line.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What routerd answered.
#[derive(Debug)]
pub enum Routed {
    /// A connection to the backend serving the package.
    Backend(uds::Stream),
    /// routerd serves the package itself on this connection.
    Router(uds::Stream),
}

impl Routed {
    /// The connection to speak HTTP/2 on, whichever it is.
    #[must_use]
    pub fn into_stream(self) -> uds::Stream {
        match self {
            Routed::Backend(s) | Routed::Router(s) => s,
        }
    }
}

/// Errors asking routerd for a route.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// routerd could not be reached.
    #[error("connecting to routerd at {path}: {source}")]
    Connect {
        /// routerd's socket.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The exchange failed or routerd's answer made no sense.
    #[error("asking routerd at {path} for {service}: {source}")]
    Exchange {
        /// routerd's socket.
        path: PathBuf,
        /// The service asked for.
        service: String,
        /// The cause.
        source: io::Error,
    },
    /// routerd has no route for the service, or its backend is down.
    #[error("{message}")]
    Refused {
        /// The gRPC status code routerd gave.
        code: i32,
        /// routerd's message.
        message: String,
    },
}

/// Asks routerd at `routerd` for a connection serving `service` (such as
/// `machine.MachineService`).
///
/// # Errors
/// routerd cannot be reached, refuses (with the gRPC code it would have
/// answered a forwarded call with), or answers out of protocol.
pub async fn request(routerd: &Path, service: &str) -> Result<Routed, HandoffError> {
    let exchange = |source: io::Error| HandoffError::Exchange {
        path: routerd.to_path_buf(),
        service: service.to_owned(),
        source,
    };
    if service.is_empty() || service.len() > MAX_LINE / 2 || service.contains(char::is_whitespace) {
        return Err(exchange(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a gRPC service name",
        )));
    }
    let mut stream =
        UnixStream::connect(routerd)
            .await
            .map_err(|source| HandoffError::Connect {
                path: routerd.to_path_buf(),
                source,
            })?;
    let mut line = Vec::with_capacity(REQUEST.len() + service.len() + 1);
    line.extend_from_slice(REQUEST);
    line.extend_from_slice(service.as_bytes());
    line.push(b'\n');
    let (reply, fd) = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        stream.write_all(&line).await?;
        read_reply(&stream).await
    })
    .await
    .map_err(|_| exchange(io::Error::new(io::ErrorKind::TimedOut, "no answer")))?
    .map_err(exchange)?;
    match (reply.as_str(), fd) {
        ("OK", Some(fd)) => uds::Stream::from_std(std::os::unix::net::UnixStream::from(fd))
            .map(Routed::Backend)
            .map_err(exchange),
        ("SELF", None) => uds::Stream::from_tokio(stream)
            .map(Routed::Router)
            .map_err(exchange),
        (other, None) if other.starts_with("ERR ") => {
            let rest = &other[4..];
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            // A refusal carries a gRPC error code: 1 to 16, never OK.
            let code = code
                .parse::<i32>()
                .ok()
                .filter(|c| (1..=16).contains(c))
                .ok_or_else(|| {
                    exchange(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed refusal {other:?}"),
                    ))
                })?;
            Err(HandoffError::Refused {
                code,
                message: message.to_owned(),
            })
        }
        (other, fd) => Err(exchange(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected answer {other:?} {} a descriptor",
                if fd.is_some() { "with" } else { "without" }
            ),
        ))),
    }
}

/// Reads routerd's reply line and the descriptor that came with it.
async fn read_reply(stream: &UnixStream) -> io::Result<(String, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fd = None;
    // Byte by byte: after `SELF` routerd's HTTP/2 server speaks at once on
    // the same connection, and none of that may be taken here. The
    // descriptor comes with the first byte.
    loop {
        let mut buf = [0_u8; 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = stream
            .async_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map(|m| m.bytes)
                .map_err(io::Error::from)
            })
            .await?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for received in fds {
                    // Only the first descriptor is ours; any other closes here.
                    if fd.is_none() {
                        fd = Some(received);
                    }
                }
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "routerd closed the connection before answering",
            ));
        }
        if buf[0] == b'\n' {
            let text = String::from_utf8(line)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "answer is not UTF-8"))?;
            return Ok((text, fd));
        }
        line.push(buf[0]);
        if line.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer too long",
            ));
        }
    }
}

/// How a connection to routerd opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// Anything but a routing request: HTTP/2 (nothing has been read).
    Http2,
    /// `ROUTE <service>` (the line has been read).
    Route(String),
}

/// Tells a routing request from HTTP/2 on a connection routerd accepted.
/// Only a routing request is consumed; for HTTP/2 nothing is read.
///
/// # Errors
/// The connection fails, or a routing request is malformed or too slow.
pub async fn opening(stream: &mut UnixStream) -> io::Result<Opening> {
    let mut first = [0_u8; 1];
    // Either kind of client speaks first, at once: one that stays silent
    // holds no task for long.
    let n = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        stream.async_io(Interest::READABLE, || {
            rustix::net::recv(&*stream, &mut first, RecvFlags::PEEK)
                .map(|(_, n)| n)
                .map_err(io::Error::from)
        }),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client said nothing"))??;
    if n == 0 || first[0] != REQUEST[0] {
        return Ok(Opening::Http2);
    }
    let line = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut line = Vec::new();
        let mut byte = [0_u8; 1];
        // Byte by byte, so nothing past the line is taken from the socket:
        // a request is a few dozen bytes, once per connection.
        loop {
            if stream.read(&mut byte).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a routing request",
                ));
            }
            if byte[0] == b'\n' {
                return Ok(line);
            }
            line.push(byte[0]);
            if line.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "routing request too long",
                ));
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "routing request not finished"))??;
    let service = line
        .strip_prefix(REQUEST)
        .and_then(|s| String::from_utf8(s.to_vec()).ok())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed routing request"))?;
    Ok(Opening::Route(service))
}

/// Answers a routing request with a connection to the backend.
///
/// # Errors
/// The answer cannot be sent.
pub async fn reply_backend(stream: &UnixStream, backend: impl AsFd) -> io::Result<()> {
    let fds = [backend.as_fd()];
    stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room for the descriptor"));
            }
            let sent = rustix::net::sendmsg(
                stream,
                &[IoSlice::new(b"OK\n")],
                &mut control,
                SendFlags::NOSIGNAL,
            )?;
            if sent == 3 {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::WriteZero, "answer cut short"))
            }
        })
        .await
}

/// Answers that routerd serves the service itself on this connection.
///
/// # Errors
/// The answer cannot be sent.
pub async fn reply_self(stream: &mut UnixStream) -> io::Result<()> {
    stream.write_all(b"SELF\n").await
}

/// Refuses a routing request with a gRPC `code` and `message`.
///
/// # Errors
/// The answer cannot be sent.
pub async fn reply_error(stream: &mut UnixStream, code: i32, message: &str) -> io::Result<()> {
    // Cut by bytes, as the line is read, at a character's boundary: the
    // line with its prefix must stay within MAX_LINE.
    let mut cut = String::new();
    for c in message.chars() {
        let c = if c == '\n' || c == '\r' { ' ' } else { c };
        if cut.len() + c.len_utf8() > MAX_LINE / 2 {
            break;
        }
        cut.push(c);
    }
    let message = cut;
    stream
        .write_all(format!("ERR {code} {message}\n").as_bytes())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection "routerd" answering with `answer`.
    async fn routerd_answering<F, Fut>(dir: &Path, answer: F) -> PathBuf
    where
        F: FnOnce(UnixStream, String) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let path = dir.join("routerd.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            match opening(&mut stream).await.expect("opening") {
                Opening::Route(service) => answer(stream, service).await,
                Opening::Http2 => panic!("expected a routing request"),
            }
        });
        path
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_backend_connection_is_handed_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let path = routerd_answering(dir.path(), |stream, service| async move {
            assert_eq!(service, "machine.MachineService");
            reply_backend(&stream, &ours).await.expect("reply");
        })
        .await;
        let Routed::Backend(mut handed) = request(&path, "machine.MachineService")
            .await
            .expect("routed")
        else {
            panic!("expected a backend connection");
        };
        handed.write_all(b"ping").await.expect("write");
        let mut got = [0_u8; 4];
        theirs.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refusal_carries_code_and_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = routerd_answering(dir.path(), |mut stream, service| async move {
            reply_error(
                &mut stream,
                12,
                &format!("unknown service {service}\nsecond line"),
            )
            .await
            .expect("reply");
        })
        .await;
        match request(&path, "nope.Nope").await {
            Err(HandoffError::Refused { code, message }) => {
                assert_eq!(code, 12);
                assert_eq!(message, "unknown service nope.Nope second line");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // A refusal with code 0 (OK) would read as success: out of protocol.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = routerd_answering(dir.path(), |mut stream, _| async move {
            reply_error(&mut stream, 0, "fine").await.expect("reply");
        })
        .await;
        let err = request(&path, "nope.Nope").await.expect_err("code 0");
        assert!(err.to_string().contains("malformed refusal"), "{err}");
        // A long message of wide characters (a path with non-ASCII names)
        // is cut to fit the line, and still read as the refusal.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = routerd_answering(dir.path(), |mut stream, _| async move {
            reply_error(&mut stream, 14, &"é".repeat(900))
                .await
                .expect("reply");
        })
        .await;
        match request(&path, "nope.Nope").await {
            Err(HandoffError::Refused { code, message }) => {
                assert_eq!(code, 14);
                assert_eq!(message, "é".repeat(256));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn self_keeps_the_connection_and_http2_is_not_consumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = routerd_answering(dir.path(), |mut stream, _| async move {
            reply_self(&mut stream).await.expect("reply");
            let mut got = [0_u8; 3];
            stream.read_exact(&mut got).await.expect("read");
            stream.write_all(&got).await.expect("echo");
        })
        .await;
        let Routed::Router(mut conn) = request(&path, "grpc.reflection.v1.ServerReflection")
            .await
            .expect("routed")
        else {
            panic!("expected routerd's own connection");
        };
        conn.write_all(b"PRI").await.expect("write");
        let mut got = [0_u8; 3];
        conn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"PRI");

        let (mut a, mut b) = UnixStream::pair().expect("pair");
        b.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        assert_eq!(opening(&mut a).await.expect("opening"), Opening::Http2);
        let mut preface = [0_u8; 16];
        a.read_exact(&mut preface).await.expect("preface intact");
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_names_and_silent_routers_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            request(&dir.path().join("none.sock"), "machine.MachineService").await,
            Err(HandoffError::Connect { .. })
        ));
        assert!(matches!(
            request(&dir.path().join("none.sock"), "two words").await,
            Err(HandoffError::Exchange { .. })
        ));
        let path = routerd_answering(dir.path(), |mut stream, _| async move {
            stream.write_all(b"OK\n").await.expect("reply");
        })
        .await;
        let err = request(&path, "machine.MachineService")
            .await
            .expect_err("OK without a descriptor");
        assert!(err.to_string().contains("without a descriptor"), "{err}");
    }
}
