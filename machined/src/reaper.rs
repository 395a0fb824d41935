//! The one owner of `waitpid`.
//!
//! As PID 1 (or as a child subreaper in container mode) machined inherits
//! every orphan, so something must reap them all; and whoever reaps with
//! `waitpid(-1)` steals the exit status of every other child. So nothing else
//! in machined waits: every process is started through [`Reaper::spawn`],
//! which registers the pid for its exit status, and the reaper thread reaps
//! everything, handing statuses to whoever registered and dropping the rest
//! (orphans).
//!
//! Design: a dedicated OS thread, so it keeps working whatever tokio runtime
//! is (or is not) running, and needs no SIGCHLD handler. It blocks in
//! `waitid(P_ALL, WEXITED | WNOWAIT)`, which waits for an exited child
//! without reaping it, then takes the registry lock and reaps with
//! `waitpid(-1, WNOHANG)` until nothing is left. [`Reaper::spawn`] holds the
//! same lock across `fork`/`exec`: if `exec` fails, the standard library
//! reaps its own failed child inside `spawn`, and the reaper must not steal
//! that status first (the standard library would panic).

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use rustix::process::{Pid, WaitId, WaitIdOptions, WaitOptions, wait, waitid};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal with this number killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// Exit code 0.
    #[must_use]
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit status {code}"),
            ExitStatus::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// A process started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
    /// The standard library's handle: pipes only. Never wait on it.
    pub child: Child,
    /// Resolves with the exit status once the reaper has reaped it.
    pub exit: oneshot::Receiver<ExitStatus>,
}

#[derive(Debug, Default)]
struct Registry {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Bumped on every spawn, to wake the thread when it had no children.
    spawns: u64,
    orphans_reaped: u64,
}

#[derive(Debug)]
struct Shared {
    registry: Mutex<Registry>,
    spawned: Condvar,
}

/// Handle to the process-wide reaper.
#[derive(Debug, Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

static GLOBAL: OnceLock<Reaper> = OnceLock::new();

/// Runs `cmd` to its end through the global reaper, for tests of this
/// crate: the reaper tests run it in the same binary, and it would steal a
/// plain `Command::status` (ECHILD). Blocks; not for async contexts.
///
/// # Panics
/// `cmd` cannot be started.
#[cfg(test)]
pub(crate) fn run_to_end(cmd: &mut Command) -> ExitStatus {
    let spawned = Reaper::global()
        .spawn(cmd)
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    spawned.exit.blocking_recv().expect("reaped")
}

impl Reaper {
    /// The process-wide reaper, started on first use. There must be only one:
    /// two reapers would steal each other's statuses.
    ///
    /// # Panics
    /// If the OS refuses to start a thread at first use.
    pub fn global() -> &'static Reaper {
        GLOBAL.get_or_init(|| {
            let shared = Arc::new(Shared {
                registry: Mutex::default(),
                spawned: Condvar::new(),
            });
            let thread_shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reap_forever(&thread_shared))
                .expect("starting the reaper thread");
            Reaper { shared }
        })
    }

    /// Starts `cmd` and registers it for its exit status.
    ///
    /// # Errors
    /// When the program cannot be started (not found, not executable...),
    /// or the node is going down.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        // Once the node goes down (a fatal error, the final reboot), a
        // service whose process was killed must not come back.
        if crate::boot::going_down() {
            return Err(io::Error::other(
                "the node is going down: nothing new starts",
            ));
        }
        let mut registry = lock(&self.shared.registry);
        let child = cmd.spawn()?;
        let pid = child.id();
        let (tx, rx) = oneshot::channel();
        registry.waiters.insert(pid_i32(pid), tx);
        registry.spawns += 1;
        drop(registry);
        self.shared.spawned.notify_all();
        Ok(Spawned {
            pid,
            child,
            exit: rx,
        })
    }

    /// How many processes nobody registered (orphans) were reaped so far.
    #[must_use]
    pub fn orphans_reaped(&self) -> u64 {
        lock(&self.shared.registry).orphans_reaped
    }
}

fn pid_i32(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}

fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts and removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn reap_forever(shared: &Shared) {
    loop {
        // Wait, without reaping, until some child has exited.
        match waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::CHILD) => {
                // No children: sleep until the next spawn. The timeout only
                // guards against a missed wake-up.
                let registry = lock(&shared.registry);
                let seen = registry.spawns;
                let _unused =
                    shared
                        .spawned
                        .wait_timeout_while(registry, Duration::from_secs(1), |r| r.spawns == seen);
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reaper: waitid failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let mut reaped = 0;
        let mut registry = lock(&shared.registry);
        // `wait` is wait4(-1): any child. (rustix's `waitpid(None)` is
        // wait4(0), only our own process group, which misses services.)
        loop {
            match wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let exit = if let Some(sig) = status.terminating_signal() {
                        ExitStatus::Signaled(sig)
                    } else {
                        ExitStatus::Exited(status.exit_status().unwrap_or(-1))
                    };
                    dispatch(&mut registry, pid, exit);
                    reaped += 1;
                }
                Ok(None) | Err(rustix::io::Errno::CHILD) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "reaper: waitpid failed");
                    break;
                }
            }
        }
        drop(registry);
        if reaped == 0 {
            // waitid saw an exited child that wait could not reap (a failed
            // exec the standard library reaped itself): do not spin.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn dispatch(registry: &mut Registry, pid: Pid, exit: ExitStatus) {
    match registry.waiters.remove(&pid.as_raw_nonzero().get()) {
        // The receiver may be gone (nobody cares any more): fine.
        Some(tx) => drop(tx.send(exit)),
        None => {
            registry.orphans_reaped += 1;
            tracing::debug!(pid = pid.as_raw_nonzero().get(), %exit, "reaped an orphan");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported() {
        let reaper = Reaper::global();
        let ok = reaper
            .spawn(Command::new("true").arg(""))
            .expect("spawn true");
        let fail = reaper
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .expect("spawn sh");
        let killed = reaper
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .expect("spawn sh");
        assert_eq!(ok.exit.await.expect("status"), ExitStatus::Exited(0));
        assert_eq!(fail.exit.await.expect("status"), ExitStatus::Exited(7));
        assert_eq!(killed.exit.await.expect("status"), ExitStatus::Signaled(9));
    }

    #[test]
    fn failed_exec_is_an_error_not_a_panic() {
        let reaper = Reaper::global();
        for _ in 0..20 {
            let err = reaper
                .spawn(&mut Command::new("/nonexistent/definitely-not-here"))
                .expect_err("no such program");
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }

    #[tokio::test]
    async fn children_in_their_own_process_group_are_reaped() {
        use std::os::unix::process::CommandExt as _;
        let reaper = Reaper::global();
        let child = reaper
            .spawn(Command::new("sh").args(["-c", "exit 5"]).process_group(0))
            .expect("spawn");
        let status = tokio::time::timeout(Duration::from_secs(10), child.exit).await;
        assert_eq!(
            status.expect("reaped in time").expect("status"),
            ExitStatus::Exited(5)
        );
    }

    #[tokio::test]
    async fn many_children_each_get_their_own_status() {
        let reaper = Reaper::global();
        let children: Vec<_> = (0..40)
            .map(|i| {
                let s = reaper
                    .spawn(Command::new("sh").args(["-c", &format!("exit {i}")]))
                    .expect("spawn");
                (i, s)
            })
            .collect();
        for (i, child) in children {
            assert_eq!(child.exit.await.expect("status"), ExitStatus::Exited(i));
        }
    }
}
