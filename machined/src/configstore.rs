//! The machine config: what is live, what is persisted, and how a new one
//! is applied.
//!
//! Modes, as upstream v1.14: `auto` and `no_reboot` persist and apply live
//! (the reply says NO_REBOOT); `staged` persists only, for the next boot;
//! `try` applies live without persisting and reverts after a timeout unless
//! another apply lands first; `dry_run` changes nothing and describes the
//! diff. A config that fails to parse or validate is refused with the reason
//! and nothing changes. Only one apply runs at a time.
//!
//! The daemons that read the config themselves (networkd, timed) read the
//! live one, not the persisted one: machined keeps a copy of it at
//! [`NodePaths::live_config`](machinery::constants::NodePaths::live_config)
//! ([`ConfigStore::with_live_copy`]). So a `try` apply reaches them and is
//! reverted in them too, and a `staged` one waits for the next boot there
//! as well.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use machinery::config::{ConfigError, MachineConfig};
use tokio::sync::watch;

/// Try mode's default timeout, as upstream.
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Deprecated REBOOT (0).
    Reboot,
    /// Whatever needs no reboot (always no reboot here).
    Auto,
    /// Persist and apply live.
    NoReboot,
    /// Persist for the next boot only.
    Staged,
    /// Apply live for a while, then revert.
    Try(Duration),
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The mode actually used.
    pub mode: ApplyMode,
    /// Human-readable details (the diff on dry runs).
    pub details: String,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config does not parse or validate.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// A valid config that cannot be applied in this way.
    #[error("{0}")]
    Refused(String),
    /// Another apply is running.
    #[error("another apply configuration is already in progress")]
    Busy,
    /// The mode is not supported.
    #[error("{0}")]
    Unsupported(String),
    /// Persisting failed; nothing changed.
    #[error("persisting the machine config: {0}")]
    Persist(ConfigError),
    /// The live copy the daemons read could not be written; nothing
    /// changed.
    #[error("writing the live machine config for networkd and timed: {0}")]
    LiveCopy(ConfigError),
    /// The apply failed and the persisted config could not be put back:
    /// the next boot uses the config this apply tried to make.
    #[error("{failed}; putting the previous machine config back failed too: {restore}")]
    NotRestored {
        /// Why the apply failed.
        failed: Box<ApplyError>,
        /// Why the previous config could not be put back.
        restore: ConfigError,
    },
}

#[derive(Debug, Default)]
struct TryState {
    /// Bumped by every apply that changes the live config, so a stale
    /// revert timer does nothing.
    generation: u64,
    pending: Option<tokio::task::JoinHandle<()>>,
    /// What a pending try reverts to: the live config before the first of
    /// the tries in a row.
    revert_to: Option<Arc<MachineConfig>>,
}

/// The node's config.
#[derive(Debug)]
pub struct ConfigStore {
    path: PathBuf,
    live_copy: Option<PathBuf>,
    live: watch::Sender<Option<Arc<MachineConfig>>>,
    apply_lock: tokio::sync::Mutex<()>,
    try_state: Mutex<TryState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConfigStore {
    /// Loads the persisted config at `path`; a missing file means no config
    /// (maintenance mode).
    ///
    /// # Errors
    /// The file exists but is unreadable or invalid.
    pub fn load(path: PathBuf) -> Result<ConfigStore, ConfigError> {
        let config = if path.exists() {
            let config = machinery::config::load(&path)?;
            // Rules added since it was persisted: it runs, the parts they
            // reject unused, and the operator hears of it.
            if let Err(e) = config.strict_check() {
                tracing::warn!(error = %e, "the persisted machine config would be refused today");
            }
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(ConfigStore {
            path,
            live_copy: None,
            live: watch::channel(config).0,
            apply_lock: tokio::sync::Mutex::new(()),
            try_state: Mutex::default(),
        })
    }

    /// Keeps a copy of the live config at `copy` from now on (written at
    /// once; removed while there is none), for the daemons that read the
    /// config themselves.
    ///
    /// # Errors
    /// The copy cannot be written (or a stale one removed).
    pub fn with_live_copy(mut self, copy: PathBuf) -> Result<ConfigStore, ApplyError> {
        self.live_copy = Some(copy);
        self.write_live_copy(self.current().as_ref())?;
        Ok(self)
    }

    /// Writes `config` to the live copy atomically (a rename, which the
    /// daemons' inotify watches see), or removes the copy for `None`.
    fn write_live_copy(&self, config: Option<&Arc<MachineConfig>>) -> Result<(), ApplyError> {
        let Some(path) = &self.live_copy else {
            return Ok(());
        };
        // The daemons watch the directory: it exists even without a config.
        ensure_parent(path, "creating the live config's directory")
            .map_err(ApplyError::LiveCopy)?;
        match config {
            Some(config) => {
                machinery::config::save_atomic(path, config).map_err(ApplyError::LiveCopy)
            }
            None => remove_if_present(path).map_err(ApplyError::LiveCopy),
        }
    }

    /// The live config, if any.
    #[must_use]
    pub fn current(&self) -> Option<Arc<MachineConfig>> {
        self.live.borrow().clone()
    }

    /// A watch on the live config.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<MachineConfig>>> {
        self.live.subscribe()
    }

    /// Where the config persists.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Applies `data` per `mode`.
    ///
    /// # Errors
    /// Invalid config, busy, unsupported mode, or a failed write (then
    /// nothing changed).
    pub async fn apply(
        self: &Arc<Self>,
        data: &[u8],
        mode: ApplyMode,
        dry_run: bool,
        maintenance: bool,
    ) -> Result<ApplyOutcome, ApplyError> {
        let _guard = self.apply_lock.try_lock().map_err(|_| ApplyError::Busy)?;
        let config = machinery::config::parse(data)?;
        config.strict_check()?;
        let current = self.current();
        if let Some(old) = &current
            && old.machine_type() != config.machine_type()
        {
            return Err(ApplyError::Refused(format!(
                "machine type can't be changed from {} to {}",
                old.machine_type(),
                config.machine_type()
            )));
        }
        let mode = match mode {
            ApplyMode::Auto | ApplyMode::NoReboot => ApplyMode::NoReboot,
            ApplyMode::Reboot if maintenance => ApplyMode::NoReboot,
            ApplyMode::Reboot => {
                return Err(ApplyError::Unsupported(
                    "apply mode REBOOT is not supported: use auto or no-reboot".into(),
                ));
            }
            ApplyMode::Staged | ApplyMode::Try(_) if maintenance => {
                return Err(ApplyError::Unsupported(
                    "staged and try modes are not supported in maintenance mode".into(),
                ));
            }
            m => m,
        };
        let summary = match mode {
            ApplyMode::Staged => "Staged configuration to be applied after a reboot".to_owned(),
            ApplyMode::Try(t) => format!(
                "Applied configuration for a trial period of {}",
                humanize(t)
            ),
            _ => "Applied configuration without a reboot".to_owned(),
        };
        // What the node will not do, said back rather than dropped unseen.
        let warnings = networkd::settings::config_warnings(&config);
        if dry_run {
            let old_yaml = match &current {
                Some(c) => c.to_yaml().map_err(ApplyError::Invalid)?,
                None => String::new(),
            };
            let new_yaml = config.to_yaml().map_err(ApplyError::Invalid)?;
            let diff = similar::TextDiff::from_lines(&old_yaml, &new_yaml)
                .unified_diff()
                .context_radius(3)
                .header("current", "new")
                .to_string();
            let diff = if diff.is_empty() {
                "No changes.".to_owned()
            } else {
                diff
            };
            return Ok(ApplyOutcome {
                mode,
                details: format!(
                    "Dry run summary:\n{summary} (skipped in dry-run).\n\nConfig diff:\n\n{diff}"
                ),
                warnings,
            });
        }

        self.commit(Arc::new(config), mode)?;
        Ok(ApplyOutcome {
            mode,
            details: summary,
            warnings,
        })
    }

    /// Makes a valid `config` live and/or persisted per `mode`, under the
    /// try lock so a try's revert cannot interleave. A pending try is
    /// replaced only once this succeeded: a refused apply leaves it to
    /// revert as planned. A staged config does not touch it (the live
    /// config stays the trial's until the revert).
    fn commit(
        self: &Arc<Self>,
        config: Arc<MachineConfig>,
        mode: ApplyMode,
    ) -> Result<(), ApplyError> {
        let mut t = lock(&self.try_state);
        let before = self.current();
        match mode {
            ApplyMode::Try(_) => {
                self.write_live_copy(Some(&config))?;
                self.live.send_replace(Some(config));
            }
            ApplyMode::Staged => return self.persist_or_restore(&config, false),
            _ => {
                self.persist_or_restore(&config, true)?;
                self.live.send_replace(Some(config));
            }
        }
        t.generation += 1;
        let revert_to = t.revert_to.take();
        if let Some(pending) = t.pending.take() {
            pending.abort();
        }
        if let ApplyMode::Try(timeout) = mode {
            // A try on a pending try still reverts to what ran before the
            // first.
            t.revert_to = revert_to.or(before);
            let generation = t.generation;
            let store = Arc::clone(self);
            t.pending = Some(tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                store.revert_try(generation);
            }));
        }
        Ok(())
    }

    /// The persisted config's bytes as no apply is changing them (an apply
    /// writes the file before it knows whether it succeeded), `None` when
    /// there is none.
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub async fn persisted_bytes(&self) -> Result<Option<Vec<u8>>, ApplyError> {
        let _guard = self.apply_lock.lock().await;
        self.read_persisted()
    }

    /// The persisted file's bytes, `None` when there is none.
    fn read_persisted(&self) -> Result<Option<Vec<u8>>, ApplyError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ApplyError::Persist(ConfigError::Io {
                operation: "reading",
                path: self.path.clone(),
                source,
            })),
        }
    }

    /// Persists `config` and, with `live`, then writes the live copy; if
    /// either fails, the persisted file is as it was before.
    ///
    /// Persisted first: before the next boot only an install reads that
    /// file, and it waits for the apply lock (`persisted_bytes`), so if the
    /// live copy then cannot be written, the old file goes back and no
    /// daemon ever saw the refused config. A failed persist may have
    /// renamed the new file into place before the directory sync failed,
    /// so it is checked and put back then too.
    fn persist_or_restore(
        &self,
        config: &Arc<MachineConfig>,
        live: bool,
    ) -> Result<(), ApplyError> {
        let previous = self.read_persisted()?;
        let result = self.persist(config).and_then(|()| {
            if live {
                self.write_live_copy(Some(config))
            } else {
                Ok(())
            }
        });
        let Err(failed) = result else {
            return Ok(());
        };
        match self.restore_persisted(previous.as_deref()) {
            Ok(()) => Err(failed),
            Err(restore) => Err(ApplyError::NotRestored {
                failed: Box::new(failed),
                restore,
            }),
        }
    }

    /// Puts back what [`Self::read_persisted`] returned, unless the file
    /// already holds it (most failed persists fail before the rename, and
    /// a rewrite would likely fail the same way). Only an apply calls
    /// this, holding the apply lock.
    fn restore_persisted(&self, previous: Option<&[u8]>) -> Result<(), ConfigError> {
        if matches!(self.read_persisted(), Ok(now) if now.as_deref() == previous) {
            return Ok(());
        }
        match previous {
            Some(bytes) => Ok(machinery::fsutil::write_atomic(&self.path, bytes, 0o600)?),
            None => remove_if_present(&self.path),
        }
    }

    fn persist(&self, config: &Arc<MachineConfig>) -> Result<(), ApplyError> {
        ensure_parent(&self.path, "creating the state directory").map_err(ApplyError::Persist)?;
        machinery::config::save_atomic(&self.path, config).map_err(ApplyError::Persist)
    }

    fn revert_try(&self, generation: u64) {
        let mut t = lock(&self.try_state);
        if t.generation != generation {
            return;
        }
        t.pending = None;
        let previous = t.revert_to.take();
        tracing::info!("try mode timed out: reverting to the machine config from before it");
        if let Err(e) = self.write_live_copy(previous.as_ref()) {
            // The API and machined revert regardless; networkd and timed
            // keep the trial's settings until the next apply or boot.
            tracing::warn!(error = %e, "reverting the live machine config copy");
        }
        self.live.send_replace(previous);
    }
}

/// Removes `path`; one that is not there is fine.
fn remove_if_present(path: &std::path::Path) -> Result<(), ConfigError> {
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(ConfigError::Io {
            operation: "removing",
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

/// Makes `path`'s directory (`operation` names the step in the error).
fn ensure_parent(path: &std::path::Path, operation: &'static str) -> Result<(), ConfigError> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
            operation,
            path: dir.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane config with `hostname`.
    fn config(hostname: &str) -> String {
        crate::test_config::patched(&format!("machine:\n  network:\n    hostname: {hostname}\n"))
    }

    #[tokio::test]
    async fn a_failed_persist_leaves_the_live_copy_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("run/config.yaml");
        // The persisted path's parent is a file: persisting fails.
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "").expect("file");
        let store = Arc::new(
            ConfigStore::load(blocker.join("config.yaml"))
                .expect("no config")
                .with_live_copy(live.clone())
                .expect("live copy"),
        );
        let err = store
            .apply(config("one").as_bytes(), ApplyMode::NoReboot, false, true)
            .await
            .expect_err("cannot persist");
        assert!(matches!(err, ApplyError::Persist(_)), "{err}");
        assert!(!live.exists(), "the live copy kept the refused config");
        assert!(store.current().is_none());

        // A try needs no persisting: its copy is written, and a stale
        // copy is replaced at load.
        std::fs::write(&live, "stale").expect("stale copy");
        let store = Arc::new(
            ConfigStore::load(dir.path().join("state/config.yaml"))
                .expect("no config")
                .with_live_copy(live.clone())
                .expect("live copy"),
        );
        assert!(!live.exists(), "a stale copy survived the load");
        store
            .apply(config("two").as_bytes(), ApplyMode::NoReboot, false, true)
            .await
            .expect("applied");
        store
            .apply(
                config("three").as_bytes(),
                ApplyMode::Try(Duration::from_secs(60)),
                false,
                false,
            )
            .await
            .expect("tried");
        let copy = std::fs::read_to_string(&live).expect("copy");
        assert!(copy.contains("hostname: three"), "{copy}");
    }

    #[tokio::test]
    async fn a_failed_write_leaves_both_copies_as_they_were() {
        use std::os::unix::fs::MetadataExt as _;

        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let persisted = state.join("config.yaml");
        let run = dir.path().join("run");
        let live = run.join("config.yaml");
        let store = Arc::new(
            ConfigStore::load(persisted.clone())
                .expect("no config")
                .with_live_copy(live.clone())
                .expect("live copy"),
        );
        store
            .apply(config("one").as_bytes(), ApplyMode::NoReboot, false, true)
            .await
            .expect("applied");
        let before = std::fs::read(&persisted).expect("persisted");
        // Inode numbers get reused; the inode and its change time together
        // tell whether the file was replaced.
        let stamp = || {
            let m = std::fs::metadata(&live).expect("live copy");
            (m.ino(), m.ctime(), m.ctime_nsec())
        };
        let live_stamp = stamp();

        // STATE's directory becomes a file: persisting fails before the
        // live copy is touched (not even written and put back), so the
        // daemons watching it never see the refused config.
        std::fs::remove_dir_all(&state).expect("rm");
        std::fs::write(&state, "").expect("blocker");
        let err = store
            .apply(config("two").as_bytes(), ApplyMode::NoReboot, false, false)
            .await
            .expect_err("cannot persist");
        assert!(matches!(err, ApplyError::Persist(_)), "{err}");
        assert_eq!(stamp(), live_stamp, "the live copy was rewritten");
        assert_eq!(hostname_of(store.current()), "one");
        std::fs::remove_file(&state).expect("rm");
        std::fs::create_dir(&state).expect("mkdir");
        std::fs::write(&persisted, &before).expect("put back");

        // The live copy's directory becomes a file: the copy cannot be
        // written, so the apply fails and the persisted file is put back.
        std::fs::remove_dir_all(&run).expect("rm");
        std::fs::write(&run, "").expect("blocker");
        let err = store
            .apply(config("two").as_bytes(), ApplyMode::NoReboot, false, false)
            .await
            .expect_err("cannot write the live copy");
        assert!(matches!(err, ApplyError::LiveCopy(_)), "{err}");
        assert_eq!(std::fs::read(&persisted).expect("persisted"), before);
        assert_eq!(hostname_of(store.current()), "one");

        // The first config of a node: no file was there, and none stays.
        std::fs::remove_file(&persisted).expect("rm");
        let fresh = Arc::new(
            ConfigStore::load(persisted.clone())
                .expect("no config")
                .with_live_copy(dir.path().join("run2/config.yaml"))
                .expect("live copy"),
        );
        std::fs::remove_dir_all(dir.path().join("run2")).expect("rm");
        std::fs::write(dir.path().join("run2"), "").expect("blocker");
        fresh
            .apply(config("three").as_bytes(), ApplyMode::NoReboot, false, true)
            .await
            .expect_err("cannot write the live copy");
        assert!(!persisted.exists(), "the refused config stayed persisted");
        assert!(fresh.current().is_none());
    }

    #[tokio::test]
    async fn rules_newer_than_a_persisted_config_refuse_applies_but_not_boots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let persisted = dir.path().join("config.yaml");
        // A registry password without a user: the apply is refused.
        let bad = crate::test_config::patched(
            "machine:\n  registries:\n    config:\n      r.example:\n        auth:\n          password: pw\n",
        );
        let store = Arc::new(ConfigStore::load(persisted.clone()).expect("no config"));
        let err = store
            .apply(bad.as_bytes(), ApplyMode::NoReboot, false, true)
            .await
            .expect_err("refused");
        let field = "machine.registries.config.r.example.auth.username";
        let named = match &err {
            ApplyError::Invalid(e) => e.validation_issues().is_some_and(|i| i.mentions(field)),
            _ => false,
        };
        assert!(named, "{err}");
        assert!(!persisted.exists() && store.current().is_none());

        // The same config persisted by an older version still loads.
        std::fs::write(&persisted, &bad).expect("persist");
        let store = ConfigStore::load(persisted).expect("loads");
        let current = store.current().expect("a config");
        assert!(current.registry_access()["r.example"].auth.is_none());
    }

    fn hostname_of(config: Option<Arc<MachineConfig>>) -> String {
        let yaml = config.expect("a config").to_yaml().expect("yaml");
        yaml.lines()
            .find_map(|l| l.trim().strip_prefix("hostname: "))
            .expect("a hostname")
            .to_owned()
    }

    #[tokio::test]
    async fn a_try_reverts_to_what_ran_before_it_whatever_lands_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let live = dir.path().join("run/config.yaml");
        let store = Arc::new(
            ConfigStore::load(state.join("config.yaml"))
                .expect("no config")
                .with_live_copy(live.clone())
                .expect("live copy"),
        );
        // Made before any try starts: the tries' timers run meanwhile.
        let configs: std::collections::HashMap<&str, String> = [
            "base", "trial", "staged", "trial-1", "trial-2", "trial-3", "refused",
        ]
        .into_iter()
        .map(|name| (name, config(name)))
        .collect();
        let apply = async |name: &str, mode| {
            store
                .apply(configs[name].as_bytes(), mode, false, false)
                .await
        };
        let short = ApplyMode::Try(Duration::from_millis(800));
        let past_it = Duration::from_millis(1600);
        let live_hostname = || {
            let copy = std::fs::read_to_string(&live).expect("copy");
            assert_eq!(hostname_of(store.current()), {
                let c = machinery::config::parse(copy.as_bytes()).expect("parses");
                hostname_of(Some(Arc::new(c)))
            });
            hostname_of(store.current())
        };
        apply("base", ApplyMode::NoReboot).await.expect("base");

        // A staged config meanwhile: persisted, but the try still reverts
        // to what ran before it, not to the staged one.
        apply("trial", short).await.expect("try");
        apply("staged", ApplyMode::Staged).await.expect("staged");
        assert_eq!(live_hostname(), "trial");
        let persisted = machinery::config::load(&state.join("config.yaml")).expect("persisted");
        assert_eq!(hostname_of(Some(Arc::new(persisted))), "staged");
        tokio::time::sleep(past_it).await;
        assert_eq!(live_hostname(), "base");

        // A try on a try reverts to what ran before the first.
        apply("trial-1", short).await.expect("try");
        apply("trial-2", short).await.expect("try");
        assert_eq!(live_hostname(), "trial-2");
        tokio::time::sleep(past_it).await;
        assert_eq!(live_hostname(), "base");

        // A refused apply leaves the pending try to revert.
        apply("trial-3", short).await.expect("try");
        std::fs::remove_dir_all(&state).expect("rm");
        std::fs::write(&state, "").expect("a file where the directory was");
        let err = apply("refused", ApplyMode::NoReboot)
            .await
            .expect_err("cannot persist");
        assert!(matches!(err, ApplyError::Persist(_)), "{err}");
        assert_eq!(live_hostname(), "trial-3");
        tokio::time::sleep(past_it).await;
        assert_eq!(live_hostname(), "base", "the try never reverted");
    }
}
