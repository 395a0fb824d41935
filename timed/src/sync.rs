//! The reconcile loop: measure the clock against the configured servers and
//! correct it.
//!
//! Every round reads the time settings, queries the servers in order until
//! one answers (fail-over), and acts on that sample with [`decide`]:
//!
//! - |offset| > [`STEP_THRESHOLD`] (128 ms, ntpd's default step threshold):
//!   **step**, at once. This is what happens at boot when the clock reads
//!   1970, and after a suspend.
//! - otherwise **slew** through the kernel PLL, however small the offset:
//!   every update also tells the kernel the clock is synchronized, which it
//!   forgets after about 9 hours without one (and then stops writing the
//!   hardware clock).
//!
//! After the first sync, a step is taken only when a second sample from
//! the same server, taken at once, agrees with the first within
//! [`STEP_THRESHOLD`]: one odd answer (a spoofed or delayed packet, a
//! server that lost its way for a moment) does not move the clock.
//!
//! Rounds repeat every [`SyncOptions::poll_interval`] (5 minutes) after a
//! success, [`SyncOptions::min_backoff`] (1 s) after a step (to confirm it
//! and slew the remainder), and with exponential backoff after a failure:
//! 1 s, 2 s, 4 s … capped at [`SyncOptions::max_backoff`] (5 minutes), or
//! at [`SyncOptions::unsynced_backoff`] (4 s) until time is first synced,
//! so that a node whose network comes up late syncs soon after.
//!
//! Time is **synced** after the first successful round, when sync is
//! disabled in the config (nothing to wait for), once the node has been up
//! for the config's `bootTimeout` without a server answering (as
//! upstream), or from the start on a read-only clock (container mode: the
//! host owns the clock). It is then
//! published once, and stays: on a `watch` channel for in-process users, and
//! as a marker file (`/system/run/timed/synced`) for other processes. A
//! stale marker is removed when the loop starts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{Clock, ClockError, Offset};
use crate::config::ConfigSource;
use crate::sntp::{SntpError, TimeSource};

/// Offsets larger than this are stepped rather than slewed.
pub const STEP_THRESHOLD: Duration = Duration::from_millis(128);

/// A step larger than this starts a new time epoch (upstream's
/// `TimeStatus.epoch`): whatever measured durations across it is off.
pub const EPOCH_JUMP: Duration = Duration::from_secs(15 * 60);

/// What to do about a measured offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Jump the clock.
    Step,
    /// Correct it gradually.
    Slew,
}

impl Action {
    /// A lowercase name for logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Step => "step",
            Action::Slew => "slew",
        }
    }
}

/// Decides how to correct `offset`.
#[must_use]
pub fn decide(offset: Offset) -> Action {
    if offset.magnitude() > STEP_THRESHOLD {
        Action::Step
    } else {
        Action::Slew
    }
}

/// The wait after `failures` consecutive failed rounds (at least 1):
/// `min · 2^(failures-1)`, capped at `max`.
#[must_use]
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    min.checked_mul(1u32 << exponent)
        .map_or(max, |wait| wait.min(max))
}

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Between successful rounds.
    pub poll_interval: Duration,
    /// First retry after a failure, and the pause after a step.
    pub min_backoff: Duration,
    /// Longest wait between failed rounds.
    pub max_backoff: Duration,
    /// Longest wait between failed rounds until time is first synced.
    pub unsynced_backoff: Duration,
    /// Per server query.
    pub query_timeout: Duration,
    /// The marker file written once time is synced (`None`: no file).
    pub marker: Option<PathBuf>,
    /// How long the node has been up (the boot clock: timed may have
    /// restarted since).
    pub uptime: fn() -> Option<Duration>,
}

/// How long the system has been up, from `/proc/uptime`.
#[must_use]
pub fn system_uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            poll_interval: Duration::from_secs(300),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            unsynced_backoff: Duration::from_secs(4),
            query_timeout: Duration::from_secs(5),
            marker: None,
            uptime: system_uptime,
        }
    }
}

/// What a successful round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Time sync is disabled in the config: nothing was queried.
    Disabled,
    /// A server answered and the clock was corrected (or left alone).
    Adjusted {
        /// The server that answered.
        server: String,
        /// Its offset.
        offset: Offset,
        /// What was done.
        action: Action,
    },
}

fn list(errors: &[SntpError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Sync is enabled but no server is configured.
    #[error("no NTP server is configured")]
    NoServers,
    /// Every server failed.
    #[error("no NTP server answered: {}", list(.0))]
    AllFailed(Vec<SntpError>),
    /// The clock could not be corrected.
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// How the marker of time synced by a server's answer begins.
pub const SYNCED_BY_SERVER: &str = "synced with ";

/// How often a loop with sync disabled looks whether it is on again.
const DISABLED_POLL: Duration = Duration::from_secs(10);

/// The file beside the marker holding the epoch, once it is not 0 (the
/// run directory is new at every boot).
pub const EPOCH_FILE: &str = "epoch";

/// The loop's state: the clock, where samples and settings come from, and
/// the published "synced" flag.
#[derive(Debug)]
pub struct Syncer<S> {
    clock: Arc<dyn Clock>,
    source: S,
    config: Arc<dyn ConfigSource>,
    options: SyncOptions,
    synced: watch::Sender<bool>,
    /// Steps larger than [`EPOCH_JUMP`] so far.
    epoch: std::sync::atomic::AtomicU64,
}

impl<S: TimeSource> Syncer<S> {
    /// A loop correcting `clock` from `source` with the servers of `config`.
    #[must_use]
    pub fn new(
        clock: Arc<dyn Clock>,
        source: S,
        config: Arc<dyn ConfigSource>,
        options: SyncOptions,
    ) -> Syncer<S> {
        let (synced, _) = watch::channel(false);
        Syncer {
            clock,
            source,
            config,
            options,
            synced,
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times the clock jumped by more than [`EPOCH_JUMP`].
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a step into a new epoch, and says it beside the marker
    /// (`epoch`, for machined's TimeStatus), replaced whole so that a
    /// reader never sees half of it.
    fn new_epoch(&self) {
        let epoch = self
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let Some(marker) = &self.options.marker else {
            return;
        };
        let path = marker.with_file_name(EPOCH_FILE);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                machinery::fsutil::write_atomic(&path, format!("{epoch}\n").as_bytes(), 0o644)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %path.display(), "writing the time epoch");
        }
    }

    /// The epoch a timed that ran before in this boot left, if any (the
    /// run directory starts empty at every boot).
    fn load_epoch(&self) {
        let Some(marker) = &self.options.marker else {
            return;
        };
        if let Some(epoch) = std::fs::read_to_string(marker.with_file_name(EPOCH_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        {
            self.epoch
                .store(epoch, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The "time synced" flag: false until the first sync, then true for
    /// good.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Whether time is synced.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// One round: query the servers in order until one answers, then step,
    /// slew or leave the clock as [`decide`] says.
    ///
    /// # Errors
    /// No server is configured, none answered, or the clock refused.
    pub async fn sync_once(&self, first_sync: bool) -> Result<Outcome, SyncError> {
        let config = self.config.time_config();
        if config.disabled {
            return Ok(Outcome::Disabled);
        }
        if config.servers.is_empty() {
            return Err(SyncError::NoServers);
        }
        let mut errors = Vec::new();
        for server in &config.servers {
            let sample = match self.source.query(server, self.options.query_timeout).await {
                Ok(sample) => sample,
                Err(e) => {
                    tracing::warn!(error = %e, "NTP server failed; trying the next one");
                    errors.push(e);
                    continue;
                }
            };
            let mut sample = sample;
            let action = decide(sample.offset);
            if action == Action::Step && !first_sync {
                // Synced before: a jump needs a second opinion.
                match self.source.query(server, self.options.query_timeout).await {
                    Ok(second)
                        if Offset::from_nanos(
                            second
                                .offset
                                .as_nanos()
                                .saturating_sub(sample.offset.as_nanos()),
                        )
                        .magnitude()
                            <= STEP_THRESHOLD =>
                    {
                        sample = second;
                    }
                    Ok(second) => {
                        let e = SntpError::Inconsistent {
                            server: server.clone(),
                            first: sample.offset,
                            second: second.offset,
                        };
                        tracing::warn!(error = %e, "trying the next NTP server");
                        errors.push(e);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "NTP server failed to confirm a step; trying the next one");
                        errors.push(e);
                        continue;
                    }
                }
            }
            match action {
                Action::Step => self.clock.step(sample.offset)?,
                Action::Slew => self.clock.slew(sample.offset, sample.leap)?,
            }
            if action == Action::Step && sample.offset.magnitude() > EPOCH_JUMP {
                self.new_epoch();
            }
            if action == Action::Step {
                tracing::info!(
                    server = %server,
                    offset = %sample.offset,
                    round_trip = ?sample.round_trip,
                    "stepped the clock"
                );
            } else {
                tracing::debug!(
                    server = %server,
                    offset = %sample.offset,
                    round_trip = ?sample.round_trip,
                    action = action.as_str(),
                    "clock checked"
                );
            }
            return Ok(Outcome::Adjusted {
                server: server.clone(),
                offset: sample.offset,
                action,
            });
        }
        Err(SyncError::AllFailed(errors))
    }

    /// Marks time synced when the config's `bootTimeout` has passed since
    /// boot with no server answering, as upstream's controller does.
    fn boot_timeout_passed(&self) {
        if self.is_synced() {
            return;
        }
        if let Some(timeout) = self.boot_timeout_elapsed() {
            self.mark_synced(&format!(
                "no NTP server answered within bootTimeout ({timeout:?}) of boot"
            ));
        }
    }

    /// The config's `bootTimeout`, when the node has been up that long.
    fn boot_timeout_elapsed(&self) -> Option<Duration> {
        let timeout = self.config.time_config().boot_timeout?;
        (self.options.uptime)()
            .is_some_and(|up| up >= timeout)
            .then_some(timeout)
    }

    /// The wait after `failures` failed rounds: short until time is first
    /// synced.
    fn failure_wait(&self, failures: u32) -> Duration {
        let cap = if self.is_synced() {
            self.options.max_backoff
        } else {
            self.options.unsynced_backoff.min(self.options.max_backoff)
        };
        backoff(failures, self.options.min_backoff, cap)
    }

    /// Withdraws "time synced": the watch flag and the marker file.
    fn unmark_synced(&self, reason: &str) {
        if !self.synced.send_replace(false) {
            return;
        }
        tracing::info!(reason, "time is not synced");
        if let Some(marker) = &self.options.marker
            && let Err(e) = std::fs::remove_file(marker)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, marker = %marker.display(), "removing the time-synced marker");
        }
    }

    /// Publishes "time synced" (once): the watch flag and the marker file.
    fn mark_synced(&self, reason: &str) {
        if self.synced.send_replace(true) {
            return;
        }
        tracing::info!(reason, "time synced");
        let Some(marker) = &self.options.marker else {
            return;
        };
        if let Some(dir) = marker.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(error = %e, dir = %dir.display(), "creating the marker's directory");
        }
        if let Err(e) = std::fs::write(marker, format!("{reason}\n")) {
            tracing::warn!(error = %e, marker = %marker.display(), "writing the time-synced marker");
        }
    }

    /// Runs rounds until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        // A restart within the boot goes on counting.
        self.load_epoch();
        if let Some(marker) = &self.options.marker {
            match std::fs::remove_file(marker) {
                Ok(()) => {
                    tracing::info!(marker = %marker.display(), "removed a stale time-synced marker")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, marker = %marker.display(), "removing a stale time-synced marker");
                }
            }
        }
        if self.clock.is_read_only() {
            self.mark_synced("the host owns the clock (container mode)");
        }
        let mut first_sync = true;
        let mut failures: u32 = 0;
        // Synced only because sync was off: turned on again, time is not
        // synced until a server says so (as upstream restarts its syncer).
        let mut synced_while_disabled = false;
        loop {
            let result = tokio::select! {
                result = self.sync_once(first_sync) => result,
                () = shutdown.as_mut() => return,
            };
            if synced_while_disabled && !matches!(result, Ok(Outcome::Disabled)) {
                synced_while_disabled = false;
                first_sync = true;
                // Past bootTimeout time counts as synced anyway, as
                // upstream's controller says at once: nothing to withdraw.
                if !self.clock.is_read_only()
                    && result.is_err()
                    && self.boot_timeout_elapsed().is_none()
                {
                    self.unmark_synced("time sync is enabled again and no server answered yet");
                }
            }
            let wait = match result {
                Ok(Outcome::Disabled) => {
                    failures = 0;
                    synced_while_disabled = true;
                    self.mark_synced("time sync is disabled in the machine config");
                    // Look again soon: sync may be turned back on.
                    self.options.poll_interval.min(DISABLED_POLL)
                }
                Ok(Outcome::Adjusted {
                    server,
                    offset,
                    action,
                }) => {
                    failures = 0;
                    first_sync = false;
                    self.mark_synced(&format!("{SYNCED_BY_SERVER}{server} (offset {offset})"));
                    if action == Action::Step {
                        self.options.min_backoff
                    } else {
                        self.options.poll_interval
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.boot_timeout_passed();
                    let wait = self.failure_wait(failures);
                    tracing::warn!(error = %e, failures, retry_in = ?wait, "time sync failed");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.as_mut() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::clock::{FakeClock, ReadOnlyClock};
    use crate::config::TimeConfig;
    use crate::sntp::{FakeAnswer, FakeSource};

    #[test]
    fn decisions() {
        let ms = Offset::from_millis;
        // Large offsets are stepped, either sign.
        assert_eq!(decide(Offset::from_secs(-1_700_000_000)), Action::Step);
        assert_eq!(decide(ms(129)), Action::Step);
        assert_eq!(decide(ms(-129)), Action::Step);
        assert_eq!(decide(Offset::from_secs(3600)), Action::Step);
        // At or below the threshold: slewed, however small (each update
        // keeps the kernel's "synchronized" status).
        assert_eq!(decide(ms(128)), Action::Slew);
        assert_eq!(decide(ms(-128)), Action::Slew);
        assert_eq!(decide(ms(5)), Action::Slew);
        assert_eq!(decide(Offset::from_nanos(499_999)), Action::Slew);
        assert_eq!(decide(Offset::ZERO), Action::Slew);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (1..=11).map(|n| backoff(n, s(1), s(300))).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300].map(s).to_vec()
        );
        assert_eq!(backoff(0, s(1), s(300)), s(1));
        assert_eq!(backoff(u32::MAX, s(1), s(300)), s(300));
    }

    fn syncer(
        clock: &Arc<FakeClock>,
        source: &Arc<FakeSource>,
        config: TimeConfig,
        options: SyncOptions,
    ) -> Syncer<Arc<FakeSource>> {
        Syncer::new(clock.clone(), source.clone(), Arc::new(config), options)
    }

    #[tokio::test]
    async fn fails_over_to_the_next_server_and_steps_a_large_offset() {
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Timeout);
        source.push("b", FakeAnswer::Offset(Offset::from_secs(2)));
        source.push("c", FakeAnswer::Offset(Offset::from_secs(9)));
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a", "b", "c"]),
            SyncOptions::default(),
        );
        let outcome = s.sync_once(true).await.expect("synced");
        assert_eq!(
            outcome,
            Outcome::Adjusted {
                server: "b".into(),
                offset: Offset::from_secs(2),
                action: Action::Step
            }
        );
        assert_eq!(source.queries(), vec!["a", "b"]);
        assert_eq!(clock.steps(), vec![Offset::from_secs(2)]);
        assert!(clock.slews().is_empty());
    }

    #[tokio::test]
    async fn a_jump_of_more_than_15_minutes_starts_a_new_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("synced");
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Offset(Offset::from_secs(15 * 60)));
        source.push("a", FakeAnswer::Offset(Offset::from_secs(-3600)));
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a"]),
            fast_options(Some(marker.clone())),
        );
        s.sync_once(true).await.expect("first");
        assert_eq!(s.epoch(), 0, "15 minutes exactly is no jump");
        assert!(!marker.with_file_name(EPOCH_FILE).exists());
        s.sync_once(false).await.expect("second");
        assert_eq!(s.epoch(), 1);
        assert_eq!(
            std::fs::read_to_string(marker.with_file_name(EPOCH_FILE)).expect("epoch file"),
            "1\n"
        );
        // A timed restarted within the boot goes on from there.
        let again = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a"]),
            fast_options(Some(marker.clone())),
        );
        assert_eq!(again.epoch(), 0);
        again.load_epoch();
        assert_eq!(again.epoch(), 1, "run() loads it first");
    }

    #[tokio::test]
    async fn small_offsets_are_slewed_however_small() {
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Offset(Offset::from_millis(20)));
        source.push("a", FakeAnswer::Offset(Offset::from_nanos(100_000)));
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a"]),
            SyncOptions::default(),
        );
        for _ in 0..2 {
            let outcome = s.sync_once(false).await.expect("round");
            assert!(matches!(
                outcome,
                Outcome::Adjusted {
                    action: Action::Slew,
                    ..
                }
            ));
        }
        // The second update keeps the kernel's "synchronized" status.
        assert_eq!(
            clock.slews(),
            vec![Offset::from_millis(20), Offset::from_nanos(100_000)]
        );
        assert!(clock.steps().is_empty());
    }

    /// A leap second the server announces reaches the kernel with the
    /// slew, as upstream sets STA_INS or STA_DEL; a later answer without
    /// one disarms it.
    #[tokio::test]
    async fn a_leap_second_announced_is_armed() {
        use crate::clock::Leap;
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Leap(Offset::from_millis(1), Leap::Insert));
        source.push("a", FakeAnswer::Leap(Offset::from_millis(1), Leap::Delete));
        source.push("a", FakeAnswer::Offset(Offset::from_millis(1)));
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a"]),
            SyncOptions::default(),
        );
        for _ in 0..3 {
            s.sync_once(false).await.expect("round");
        }
        assert_eq!(clock.leaps(), [Leap::Insert, Leap::Delete, Leap::None]);
    }

    #[tokio::test]
    async fn every_server_failing_is_an_error_naming_each() {
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Timeout);
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a", "b"]),
            SyncOptions::default(),
        );
        let err = s.sync_once(true).await.expect_err("all fail");
        assert!(matches!(&err, SyncError::AllFailed(errors) if errors.len() == 2));
        let message = err.to_string();
        assert!(message.contains("NTP server a:"), "{message}");
        assert!(message.contains("NTP server b "), "{message}");
        assert!(clock.steps().is_empty() && clock.slews().is_empty());
    }

    #[tokio::test]
    async fn disabled_sync_queries_nothing() {
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        let s = syncer(
            &clock,
            &source,
            TimeConfig::disabled(),
            SyncOptions::default(),
        );
        assert_eq!(s.sync_once(true).await.expect("ok"), Outcome::Disabled);
        assert!(source.queries().is_empty());
        let none = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(Vec::<String>::new()),
            SyncOptions::default(),
        );
        assert!(matches!(
            none.sync_once(true).await,
            Err(SyncError::NoServers)
        ));
    }

    /// Once synced, a step waits for a second sample that agrees.
    #[tokio::test]
    async fn after_the_first_sync_a_step_needs_a_second_sample() {
        // (the fake repeats a server's last answer once its script is done)
        let run = async |answers: &[(&str, Offset)], first_sync: bool| {
            let clock = Arc::new(FakeClock::new());
            let source = Arc::new(FakeSource::new());
            let mut servers: Vec<String> = Vec::new();
            for (server, offset) in answers {
                source.push(server, FakeAnswer::Offset(*offset));
                if !servers.iter().any(|s| s == server) {
                    servers.push((*server).to_owned());
                }
            }
            let s = syncer(
                &clock,
                &source,
                TimeConfig::with_servers(servers),
                SyncOptions::default(),
            );
            let outcome = s.sync_once(first_sync).await;
            (outcome, clock.steps(), source.queries())
        };
        let secs = Offset::from_secs;
        // Agreeing samples: the step is the second one's.
        let (outcome, steps, queries) = run(
            &[("a", secs(10)), ("a", Offset::from_millis(10_050))],
            false,
        )
        .await;
        assert_eq!(
            outcome.expect("stepped"),
            Outcome::Adjusted {
                server: "a".into(),
                offset: Offset::from_millis(10_050),
                action: Action::Step,
            }
        );
        assert_eq!(steps, vec![Offset::from_millis(10_050)]);
        assert_eq!(queries, ["a", "a"]);
        // Disagreeing: no step, the next server decides.
        let (outcome, steps, _) = run(
            &[
                ("a", secs(10)),
                ("a", secs(-3)),
                ("b", Offset::from_millis(2)),
            ],
            false,
        )
        .await;
        assert_eq!(
            outcome.expect("b answered"),
            Outcome::Adjusted {
                server: "b".into(),
                offset: Offset::from_millis(2),
                action: Action::Slew,
            }
        );
        assert!(steps.is_empty(), "the odd sample moved nothing");
        // With nobody else to ask, the round fails and says why.
        let (outcome, steps, _) = run(&[("a", secs(10)), ("a", secs(20))], false).await;
        let err = outcome.expect_err("disagree");
        assert!(err.to_string().contains("two samples disagree"), "{err}");
        assert!(steps.is_empty());
        // The first sync steps on one sample: a clock at 1970 has nothing
        // to lose.
        let (outcome, steps, queries) = run(&[("a", secs(-7))], true).await;
        outcome.expect("first sync");
        assert_eq!(steps, vec![secs(-7)]);
        assert_eq!(queries, ["a"]);
    }

    /// Until time is first synced, failed rounds are retried within a few
    /// seconds; after, the wait grows to the full backoff.
    #[test]
    fn retries_stay_short_until_the_first_sync() {
        let s = syncer(
            &Arc::new(FakeClock::new()),
            &Arc::new(FakeSource::new()),
            TimeConfig::with_servers(["a"]),
            SyncOptions::default(),
        );
        let waits = |s: &Syncer<Arc<FakeSource>>| -> Vec<u64> {
            (1..=10).map(|n| s.failure_wait(n).as_secs()).collect()
        };
        assert_eq!(waits(&s), [1, 2, 4, 4, 4, 4, 4, 4, 4, 4]);
        s.mark_synced("test");
        assert_eq!(waits(&s), [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    }

    /// Nothing answers: time counts as synced once the node has been up
    /// for `bootTimeout`, and not before; without one, never.
    #[tokio::test]
    async fn boot_timeout_counts_as_synced_once_passed() {
        let source = Arc::new(FakeSource::new()); // nothing answers
        let with = |timeout: Option<Duration>, up: fn() -> Option<Duration>| {
            let mut options = fast_options(None);
            options.uptime = up;
            let config = TimeConfig {
                boot_timeout: timeout,
                ..TimeConfig::with_servers(["a"])
            };
            syncer(&Arc::new(FakeClock::new()), &source, config, options)
        };
        // Up 10 s, 30 s allowed: not yet, after any number of failures.
        let early = with(Some(Duration::from_secs(30)), || {
            Some(Duration::from_secs(10))
        });
        let synced = early.subscribe();
        let task = tokio::spawn(early.run(std::future::pending()));
        wait_until("failed rounds", || source.queries().len() >= 5).await;
        assert!(!*synced.borrow(), "before bootTimeout");
        task.abort();
        // Up 31 s: synced, without any answer.
        let late = with(Some(Duration::from_secs(30)), || {
            Some(Duration::from_secs(31))
        });
        let mut synced = late.subscribe();
        let task = tokio::spawn(late.run(std::future::pending()));
        tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
            .await
            .expect("synced after bootTimeout")
            .expect("sender alive");
        task.abort();
        // No bootTimeout: only an answer would do.
        let never = with(None, || Some(Duration::from_secs(3600)));
        let synced = never.subscribe();
        let task = tokio::spawn(never.run(std::future::pending()));
        let before = source.queries().len();
        wait_until("more failed rounds", || {
            source.queries().len() >= before + 5
        })
        .await;
        assert!(!*synced.borrow(), "no bootTimeout");
        task.abort();
    }

    #[tokio::test]
    async fn a_clock_that_refuses_fails_the_round() {
        let clock = Arc::new(FakeClock::new());
        clock.set_failing(true);
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Offset(Offset::from_secs(5)));
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a"]),
            SyncOptions::default(),
        );
        let err = s.sync_once(true).await.expect_err("EPERM");
        assert!(
            matches!(err, SyncError::Clock(ClockError::Step { .. })),
            "{err}"
        );
    }

    fn fast_options(marker: Option<PathBuf>) -> SyncOptions {
        SyncOptions {
            poll_interval: Duration::from_millis(20),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            unsynced_backoff: Duration::from_millis(40),
            query_timeout: Duration::from_millis(100),
            marker,
            uptime: || Some(Duration::from_secs(10)),
        }
    }

    async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_loop_retries_then_steps_then_slews_and_publishes_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("run/timed/synced");
        std::fs::create_dir_all(marker.parent().expect("parent")).expect("mkdir");
        std::fs::write(&marker, "stale\n").expect("stale marker");

        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        source.push("a", FakeAnswer::Unreachable);
        source.push("a", FakeAnswer::Timeout);
        source.push("a", FakeAnswer::Offset(Offset::from_secs(-30)));
        source.push("a", FakeAnswer::Offset(Offset::from_millis(3)));
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["a"]),
            fast_options(Some(marker.clone())),
        );
        let mut synced = s.subscribe();
        assert!(!*synced.borrow());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(s.run(async {
            let _ = stopped.await;
        }));

        // The stale marker goes first.
        wait_until("the stale marker to be removed", || {
            std::fs::read_to_string(&marker).map_or(true, |text| text != "stale\n")
        })
        .await;
        tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
            .await
            .expect("synced in time")
            .expect("sender alive");
        let text = std::fs::read_to_string(&marker).expect("marker written");
        assert!(
            text.starts_with("synced with a (offset -30.000000s)"),
            "{text}"
        );

        // A 30 s step is no new epoch.
        assert!(!marker.with_file_name(EPOCH_FILE).exists());

        // After the step, the next rounds slew the small residual offset.
        wait_until("a slew", || clock.slews().len() >= 2).await;
        assert_eq!(clock.steps(), vec![Offset::from_secs(-30)]);
        assert!(clock.slews().iter().all(|s| *s == Offset::from_millis(3)));
        // Two failures before the first answer.
        assert!(source.queries().len() >= 5);

        stop.send(()).expect("loop alive");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_read_only_clock_is_synced_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("synced");
        let source = Arc::new(FakeSource::new()); // nothing answers
        let s = Syncer::new(
            Arc::new(ReadOnlyClock),
            source.clone(),
            Arc::new(TimeConfig::with_servers(["a"])),
            fast_options(Some(marker.clone())),
        );
        let mut synced = s.subscribe();
        let task = tokio::spawn(s.run(std::future::pending()));
        tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
            .await
            .expect("synced at once")
            .expect("sender alive");
        assert!(marker.exists());
        // It still measures (and logs what it would do).
        wait_until("a query", || !source.queries().is_empty()).await;
        task.abort();
    }

    #[tokio::test]
    async fn disabled_sync_counts_as_synced() {
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        let s = syncer(&clock, &source, TimeConfig::disabled(), fast_options(None));
        let mut synced = s.subscribe();
        let task = tokio::spawn(s.run(std::future::pending()));
        tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s))
            .await
            .expect("synced")
            .expect("sender alive");
        assert!(source.queries().is_empty());
        task.abort();
    }

    /// Settings a test changes while the loop runs.
    #[derive(Debug)]
    struct Switch(std::sync::Mutex<TimeConfig>);

    impl ConfigSource for Switch {
        fn time_config(&self) -> TimeConfig {
            self.0.lock().expect("lock").clone()
        }
    }

    /// Sync turned back on: not synced until a server answers, as
    /// upstream restarts its syncer.
    #[tokio::test]
    async fn sync_enabled_again_waits_for_a_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("synced");
        let source = Arc::new(FakeSource::new());
        let settings = Arc::new(Switch(std::sync::Mutex::new(TimeConfig::disabled())));
        let s = Syncer::new(
            Arc::new(FakeClock::new()),
            source.clone(),
            settings.clone(),
            fast_options(Some(marker.clone())),
        );
        let mut synced = s.subscribe();
        let task = tokio::spawn(s.run(std::future::pending()));
        let mut wait = async |want: bool| {
            tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s == want))
                .await
                .expect("in time")
                .expect("sender alive");
        };
        wait(true).await;
        assert!(marker.exists());
        // On again, with a server that does not answer.
        *settings.0.lock().expect("lock") = TimeConfig::with_servers(["down"]);
        wait(false).await;
        assert!(!marker.exists());
        // It answers.
        source.push("up", FakeAnswer::Offset(Offset::from_millis(1)));
        *settings.0.lock().expect("lock") = TimeConfig::with_servers(["up"]);
        wait(true).await;
        assert!(
            std::fs::read_to_string(&marker)
                .expect("marker")
                .starts_with("synced with up")
        );
        task.abort();
    }

    #[tokio::test]
    async fn failures_never_publish_synced() {
        let clock = Arc::new(FakeClock::new());
        let source = Arc::new(FakeSource::new());
        let s = syncer(
            &clock,
            &source,
            TimeConfig::with_servers(["down"]),
            fast_options(None),
        );
        let synced = s.subscribe();
        let task = tokio::spawn(s.run(std::future::pending()));
        wait_until("three attempts", || source.queries().len() >= 3).await;
        assert!(!*synced.borrow());
        task.abort();
    }
}
