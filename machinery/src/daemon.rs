//! What every daemon's thin `main` does: log to stderr (machined collects
//! it into the service's log), run one async body on a single-threaded
//! runtime, stop on SIGTERM or SIGINT, and turn an error into one line and
//! a failure exit status.

use std::fmt::Display;
use std::process::ExitCode;

/// Runs `body` as daemon `name`. One thread: the daemons are small, and on
/// a small node cross-thread wake-ups cost more than they give.
pub fn run<F, E>(name: &str, body: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let _ = tracing_subscriber_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tracing_subscriber_init() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init()
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be set).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
            one.recv().await;
        }
        (Err(_), Err(_)) => std::future::pending::<()>().await,
    }
    tracing::info!("stopping");
}

/// Makes `dir` (and its parents) if missing, and makes it the owner's
/// only (0700) whether it was there or not: a socket directory, whose
/// sockets take callers without a certificate.
///
/// # Errors
/// The directory cannot be made or restricted.
pub fn owner_only_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds a daemon's unix socket at `path`: creates its directory and
/// removes a stale socket first, so a restart never finds the old one.
/// Only the owner may connect: the sockets are the node's trusted local
/// doors (a call on them carries no certificate). The socket directory is
/// 0700 (made so, or made so before the bind when it exists: machined
/// creates them first), so there is no moment in which another user could
/// connect, whatever the umask; the socket itself is then made 0600.
///
/// # Errors
/// The socket cannot be bound or restricted.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        owner_only_dir(dir)?;
    }
    clear_socket_path(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Binds a unix datagram socket at `path` the same way as [`bind_unix`]
/// (directory made, stale socket removed).
///
/// # Errors
/// The socket cannot be bound.
pub fn bind_unix_datagram(path: &std::path::Path) -> std::io::Result<tokio::net::UnixDatagram> {
    clear_socket_path(path);
    tokio::net::UnixDatagram::bind(path)
}

/// Makes `path`'s directory and removes what is at `path`. Failures show
/// up as the bind's own error.
fn clear_socket_path(path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
}

/// Tells the supervisor that started this daemon that it is ready to serve
/// (systemd's `NOTIFY_SOCKET` protocol: a `READY=1` datagram), if it asked
/// to be told. Call it once the daemon's sockets are bound. machined checks
/// a service's health as soon as it hears this, instead of polling for it.
pub fn notify_ready() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_ready_to(std::path::Path::new(&target)) {
        tracing::debug!(socket = ?target, error = %e, "reporting readiness");
    }
}

/// Sends `READY=1` to the datagram socket `target` (a path, or an
/// abstract name written `@name`, as systemd does).
///
/// # Errors
/// The datagram cannot be sent.
pub fn notify_ready_to(target: &std::path::Path) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = target.as_os_str().as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(b"READY=1", &addr)?;
        }
        None => {
            socket.send_to(b"READY=1", target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new/d.sock");
        let _listener = bind_unix(&path).expect("bind");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        // A directory made before (machined makes them), open to all: it
        // is closed before the socket is bound.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let path = open.join("d.sock");
        let _listener = bind_unix(&path).expect("bind");
        assert_eq!(mode(&open), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn readiness_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        notify_ready_to(&path).expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn readiness_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("talos-rs-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind");
        notify_ready_to(std::path::Path::new(&format!("@{name}"))).expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn readiness_to_nobody_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(notify_ready_to(&dir.path().join("absent.sock")).is_err());
    }
}
