//! Installing to disk and upgrading: machined's side.
//!
//! The work is done by the `installer` program in two steps, each a child
//! process started through the reaper:
//!
//! 1. the root's own installer (trusted: it came with this image) fetches
//!    the installer image (OCI registry, http(s) URL or path), checks every
//!    blob's digest and the ed25519 signature against the keys this image
//!    trusts, and unpacks the verified files into `/run/installer`;
//! 2. only then the image's installer, verified code of the version being
//!    installed (it knows its own disk layout), writes the disk: the whole
//!    layout for an install, the inactive slot for an upgrade.
//!
//! Nothing is written before step 1 succeeds, so a bad reference, an
//! unreachable registry or a tampered image leaves the disk as it was.
//! Progress lines of both steps go to the caller (LifecycleService
//! streams them) and to machined's log.
//!
//! META (upstream's ADV on the partition named `META`) records an upgrade
//! in flight: tag 6 (`Upgrade`) holds the slot the node upgraded from, as
//! upstream; machined deletes it once the new slot is confirmed. The
//! outcome of the last upgrade stays in tag [`TAG_UPGRADE_OUTCOME`], so a
//! node that fell back to its old slot can say so after the fact.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use machinery::config::Registries;
use machinery::meta;
use tokio::sync::mpsc;

use crate::bootloader::{self, Slot};
use crate::reaper::{ExitStatus, Reaper};

/// The installer in the root file system (fetches and verifies).
pub const ROOT_INSTALLER: &str = "/usr/bin/installer";

/// Where the verified image is unpacked (tmpfs; executable).
pub const WORK_DIR: &str = "/run/installer";

/// Where the config's extra trusted keys are written for the installer.
pub const CONFIG_KEYS_DIR: &str = "/run/installer-keys";

/// Where the config's registry credentials and TLS settings are written for
/// the installer (tmpfs, mode 0600, removed after the fetch).
pub const REGISTRY_CONFIG_FILE: &str = "/run/installer-registries.json";

/// META tag: the slot an upgrade started from (upstream's `Upgrade`).
pub const TAG_UPGRADE: u8 = 6;

/// META tag: staged upgrade image reference (upstream's
/// `StagedUpgradeImageRef`).
pub const TAG_STAGED_IMAGE: u8 = 7;

/// META tag (ours, outside upstream's range): the last upgrade's outcome,
/// one line of text.
pub const TAG_UPGRADE_OUTCOME: u8 = 0x40;

/// The GPT partition name of META.
pub const META_PARTITION: &str = "META";

/// Exit codes of `installer fetch` that say what went wrong (the
/// installer's `main` documents them).
pub mod exit {
    /// The image reference cannot be parsed.
    pub const BAD_REFERENCE: i32 = 3;
    /// The registry or server could not be reached.
    pub const UNREACHABLE: i32 = 4;
    /// The registry does not have the image.
    pub const NOT_FOUND: i32 = 5;
    /// The image failed verification (digest or signature).
    pub const VERIFICATION: i32 = 6;
    /// The registry refused access (no credentials, or wrong ones).
    pub const UNAUTHORIZED: i32 = 7;
}

/// An install or upgrade that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Upgrade on a node that did not boot from an installed disk.
    #[error(
        "the node is not installed to disk (it booted without talos.slot= on the kernel command line): install it first"
    )]
    NotInstalled,
    /// Install on a node that already is.
    #[error("the node is already installed to disk (booted from slot {0})")]
    AlreadyInstalled(Slot),
    /// Another install, upgrade or power action holds the lifecycle.
    #[error("another install, upgrade or lifecycle operation is running")]
    Busy,
    /// The request names no image.
    #[error("no installer image given")]
    NoImage,
    /// The reference cannot be parsed.
    #[error("installer image {image}: {message}")]
    BadReference {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
    /// The source could not be reached.
    #[error("installer image {image}: {message}")]
    Unreachable {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
    /// The source has no such image.
    #[error("installer image {image}: {message}")]
    NotFound {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
    /// The registry wants credentials the config does not give, or refused
    /// the ones it gives.
    #[error("installer image {image}: {message}")]
    Unauthorized {
        /// The reference.
        image: String,
        /// Why, and which config field to look at.
        message: String,
    },
    /// The image is not what it claims (digest or signature).
    #[error("installer image {image} failed verification, nothing was written: {message}")]
    Verification {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
    /// A step failed.
    #[error("{step}: {message}")]
    Step {
        /// Which.
        step: &'static str,
        /// Why.
        message: String,
    },
}

/// Where an install goes: the config's `machine.install.disk`, or the
/// disk its `diskSelector` picks (which goes first, as upstream's).
#[derive(Debug, Clone)]
pub enum InstallDisk {
    /// `machine.install.disk`.
    Named(String),
    /// `machine.install.diskSelector`.
    Selected(machinery::config::DiskSelector),
}

impl InstallDisk {
    /// The disk's path; a selected one is picked among the disks under
    /// `sysfs` (the install's first step) and said on `progress`. Blocks.
    ///
    /// # Errors
    /// No disk matches the selector.
    pub fn resolve(self, sysfs: &Path, progress: &Progress) -> Result<String, InstallError> {
        match self {
            InstallDisk::Named(disk) => Ok(disk),
            InstallDisk::Selected(selector) => {
                let disk = pick_disk(&selector, sysfs)?;
                say(
                    progress,
                    format!("{disk} picked by machine.install.diskSelector"),
                );
                Ok(disk)
            }
        }
    }
}

/// The install disk `selector` picks among the disks under `sysfs`: the
/// first match in name order, as `/dev/<name>`.
///
/// # Errors
/// The disks cannot be listed, or none matches (the message lists them).
pub fn pick_disk(
    selector: &machinery::config::DiskSelector,
    sysfs: &Path,
) -> Result<String, InstallError> {
    let step = "picking the install disk (machine.install.diskSelector)";
    let disks = udevd::sysfs::disks(sysfs).map_err(|e| InstallError::Step {
        step,
        message: e.to_string(),
    })?;
    fn facts<'a>(
        sysfs: &Path,
        disk: &'a udevd::sysfs::BlockDevice,
    ) -> machinery::config::DiskFacts<'a> {
        machinery::config::DiskFacts {
            size: disk.size,
            model: &disk.model,
            serial: &disk.serial,
            modalias: &disk.modalias,
            uuid: &disk.uuid,
            wwid: &disk.wwid,
            transport: crate::resources::transport_name(sysfs, disk),
            bus_path: &disk.bus_path,
            rotational: disk.rotational,
            readonly: disk.readonly,
            cdrom: disk.cdrom,
        }
    }
    if let Some(disk) = disks
        .iter()
        .find(|disk| selector.matches(&facts(sysfs, disk)))
    {
        return Ok(format!("/dev/{}", disk.name));
    }
    let seen: Vec<String> = disks
        .iter()
        .map(|disk| {
            let facts = facts(sysfs, disk);
            format!(
                "{} ({}, transport {:?}, bus path {})",
                disk.name,
                machinery::humanize::bytes(facts.size),
                facts.transport,
                facts.bus_path
            )
        })
        .collect();
    Err(InstallError::Step {
        step,
        message: format!(
            "no disk matches; disks seen: {}",
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        ),
    })
}

/// Where progress lines go.
pub type Progress = mpsc::UnboundedSender<String>;

fn say(progress: &Progress, line: impl Into<String>) {
    let line = line.into();
    tracing::info!(target: "installer", "{line}");
    let _ = progress.send(line);
}

/// Runs `cmd` through the reaper, sending each stdout line to `progress`;
/// returns the exit status and the last stderr lines. Blocks.
fn run_streaming(
    step: &'static str,
    cmd: &mut Command,
    progress: &Progress,
) -> Result<(ExitStatus, String), InstallError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut spawned = Reaper::global()
        .spawn(cmd)
        .map_err(|e| InstallError::Step {
            step,
            message: format!("starting {:?}: {e}", cmd.get_program()),
        })?;
    let stderr = spawned.child.stderr.take();
    let errors = std::thread::Builder::new()
        .name("installer-stderr".into())
        .spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                let _ = s.read_to_string(&mut text);
            }
            text
        })
        .map_err(|e| InstallError::Step {
            step,
            message: format!("starting a reader thread: {e}"),
        })?;
    if let Some(stdout) = spawned.child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            say(progress, line);
        }
    }
    let status = spawned
        .exit
        .blocking_recv()
        .unwrap_or(ExitStatus::Signaled(0));
    let text = errors.join().unwrap_or_default();
    let message = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Ok((status, message))
}

/// What the fetch step needs from the config.
#[derive(Debug, Clone, Default)]
pub struct FetchSettings {
    /// Extra trusted public keys (PEM) from `machine.install.trustedKeys`.
    pub trusted_keys: Vec<String>,
    /// Mirrors, credentials and TLS settings from `machine.registries`.
    pub registries: Registries,
    /// `machine.env`, for the fetch: proxies above all.
    pub env: Vec<(String, String)>,
}

impl FetchSettings {
    /// From the machine config. A registry that declares itself plain
    /// http (`mirrors.<name>.endpoints: ["http://<name>"]`) reaches the
    /// installer with the mirrors, which it reads the same way.
    #[must_use]
    pub fn from_config(config: Option<&machinery::config::MachineConfig>) -> FetchSettings {
        let mut settings = FetchSettings::default();
        if let Some(config) = config {
            settings.trusted_keys = config.install_trusted_keys().to_vec();
            settings.registries = config.registries().clone();
            settings.env = config.env().into_iter().collect();
        }
        settings
    }
}

/// The directory of keys the root trusts.
pub const TRUSTED_KEYS_DIR: &str = machinery::constants::TRUSTED_KEYS_DIR;

/// Step 1: fetch and verify `image` into `dir` with the root's installer.
/// Blocks.
fn fetch(
    image: &str,
    dir: &Path,
    settings: &FetchSettings,
    progress: &Progress,
) -> Result<String, InstallError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| InstallError::Step {
        step: "preparing the work directory",
        message: format!("{}: {e}", dir.display()),
    })?;
    let mut cmd = Command::new(ROOT_INSTALLER);
    // A proxy in machine.env is how a node behind one reaches a registry.
    cmd.envs(settings.env.iter().map(|(k, v)| (k, v)))
        .args(["fetch", "--image", image, "--to"])
        .arg(dir)
        .arg("--trusted-key")
        .arg(TRUSTED_KEYS_DIR);
    if !settings.trusted_keys.is_empty() {
        // The config's keys, as files for the installer to read.
        let keys = Path::new(CONFIG_KEYS_DIR);
        let _ = std::fs::remove_dir_all(keys);
        std::fs::create_dir_all(keys).map_err(|e| InstallError::Step {
            step: "writing the config's trusted keys",
            message: format!("{}: {e}", keys.display()),
        })?;
        for (i, pem) in settings.trusted_keys.iter().enumerate() {
            let path = keys.join(format!("config-{i}.pub"));
            std::fs::write(&path, pem).map_err(|e| InstallError::Step {
                step: "writing the config's trusted keys",
                message: format!("{}: {e}", path.display()),
            })?;
        }
        cmd.arg("--trusted-key").arg(keys);
    }
    // Credentials go in a file only root can read, not on the command line
    // where every process could see them.
    let registries = Path::new(REGISTRY_CONFIG_FILE);
    let _ = std::fs::remove_file(registries);
    if !settings.registries.is_empty() {
        write_registry_config(registries, &settings.registries)?;
        cmd.arg("--registry-config").arg(registries);
    }
    let result = run_streaming("fetching the installer image", &mut cmd, progress);
    let _ = std::fs::remove_file(registries);
    let (status, message) = result?;
    let image = image.to_owned();
    match status {
        ExitStatus::Exited(0) => {}
        ExitStatus::Exited(exit::BAD_REFERENCE) => {
            return Err(InstallError::BadReference { image, message });
        }
        ExitStatus::Exited(exit::UNREACHABLE) => {
            return Err(InstallError::Unreachable { image, message });
        }
        ExitStatus::Exited(exit::NOT_FOUND) => {
            return Err(InstallError::NotFound { image, message });
        }
        ExitStatus::Exited(exit::UNAUTHORIZED) => {
            return Err(InstallError::Unauthorized { image, message });
        }
        ExitStatus::Exited(exit::VERIFICATION) => {
            return Err(InstallError::Verification { image, message });
        }
        other => {
            return Err(InstallError::Step {
                step: "fetching the installer image",
                message: format!("{other}: {message}"),
            });
        }
    }
    let version = std::fs::read_to_string(dir.join("image.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_default();
    Ok(version)
}

/// Writes the registry settings for the installer, readable by root only.
/// Blocks.
pub fn write_registry_config(path: &Path, registries: &Registries) -> Result<(), InstallError> {
    let step = "writing the config's registry settings";
    let json = serde_json::to_vec(registries).map_err(|e| InstallError::Step {
        step,
        message: e.to_string(),
    })?;
    machinery::fsutil::write_atomic(path, &json, 0o600).map_err(|e| InstallError::Step {
        step,
        message: e.to_string(),
    })
}

/// The partition whose GPT name is `name` (`/sys/class/block/*/uevent`
/// `PARTNAME=`), as a `/dev` path.
#[must_use]
pub fn find_partition(class_block: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|n| {
            std::fs::read_to_string(class_block.join(n).join("uevent"))
                .map(|u| u.lines().any(|l| l == format!("PARTNAME={name}")))
                .unwrap_or(false)
        })
        .map(|n| dev.join(n))
}

/// Serialises every read-modify-write of META: the API's key writes and
/// the upgrade's bookkeeping must not undo each other.
static META_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The META partition of this node, if it has one.
fn meta_partition() -> Option<PathBuf> {
    find_partition(
        Path::new("/sys/class/block"),
        Path::new("/dev"),
        META_PARTITION,
    )
}

/// Reads META at `path` (starting afresh only when it is blank or both
/// copies are corrupt), lets `change` edit it, and writes it back when
/// `change` succeeds. Blocks.
fn edit_meta_at<E>(
    path: &Path,
    change: impl FnOnce(&mut meta::Adv) -> Result<(), E>,
) -> Result<Result<(), E>, meta::MetaError> {
    let _lock = META_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut adv = match meta::read_from(path) {
        Ok((adv, _)) => adv,
        // Nothing valid to keep: never written, or both copies corrupt.
        Err(e @ (meta::MetaError::Blank | meta::MetaError::BothBad { .. })) => {
            tracing::warn!(error = %e, "META holds no valid copy: starting it afresh");
            meta::Adv::new()
        }
        // A read that failed says nothing about what is there: writing a
        // fresh store now could erase every key.
        Err(e) => return Err(e),
    };
    if let Err(e) = change(&mut adv) {
        return Ok(Err(e));
    }
    adv.write_to(path)?;
    Ok(Ok(()))
}

/// Reads, changes and writes META; a node without one changes nothing.
/// Blocks.
pub fn update_meta(
    change: impl FnOnce(&mut meta::Adv) -> Result<(), meta::MetaError>,
) -> Result<bool, InstallError> {
    let Some(path) = meta_partition() else {
        return Ok(false);
    };
    edit_meta_at(&path, change)
        .and_then(|changed| changed)
        .map_err(|e| InstallError::Step {
            step: "writing META",
            message: e.to_string(),
        })?;
    Ok(true)
}

/// Bytes of META's data area that key writes through the API leave free,
/// so machined's own upgrade records (tags 6 and `0x40`, well under this)
/// always fit.
pub const META_RESERVED: usize = 4096;

/// One change to a META key through the API (`MetaWrite`, `MetaDelete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaChange {
    /// Set the key to the value.
    Write(u8, Vec<u8>),
    /// Remove the key.
    Delete(u8),
}

/// Why a META key change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MetaKeyError {
    /// The node has no META partition to keep keys in.
    #[error("this node has no META partition: it boots without an installed disk")]
    NoPartition,
    /// Tag 0 cannot hold a value, or the value does not fit.
    #[error(transparent)]
    Refused(meta::MetaError),
    /// Deleting a key that is not set.
    #[error("META key {0:#04x} is not set")]
    NotSet(u8),
    /// Reading or writing the partition failed.
    #[error("writing META {}: {source}", .path.display())]
    Write {
        /// The partition.
        path: PathBuf,
        /// Why.
        source: meta::MetaError,
    },
}

/// Applies `change` to the META partition at `path`. Blocks.
///
/// # Errors
/// See [`MetaKeyError`]; nothing is written on error.
pub fn change_meta_key_at(path: &Path, change: &MetaChange) -> Result<(), MetaKeyError> {
    edit_meta_at(path, |adv| match change {
        MetaChange::Write(tag, value) => {
            adv.set(*tag, value.clone())
                .map_err(MetaKeyError::Refused)?;
            let available = meta::DATA_LENGTH - META_RESERVED;
            if adv.encoded_len() > available {
                return Err(MetaKeyError::Refused(meta::MetaError::TooBig {
                    tag: *tag,
                    size: value.len(),
                    needed: adv.encoded_len(),
                    available,
                }));
            }
            Ok(())
        }
        MetaChange::Delete(tag) => {
            if adv.delete(*tag) {
                Ok(())
            } else {
                Err(MetaKeyError::NotSet(*tag))
            }
        }
    })
    .map_err(|source| MetaKeyError::Write {
        path: path.to_owned(),
        source,
    })?
}

/// Applies `change` to this node's META partition. Blocks.
///
/// # Errors
/// See [`MetaKeyError`].
pub fn change_meta_key(change: &MetaChange) -> Result<(), MetaKeyError> {
    let path = meta_partition().ok_or(MetaKeyError::NoPartition)?;
    change_meta_key_at(&path, change)
}

/// Every key of this node's META partition with its value, by tag; none on
/// a node without one, or whose META was never written. Blocks.
///
/// # Errors
/// The partition exists but cannot be read.
pub fn read_meta_keys() -> Result<Vec<(u8, Vec<u8>)>, meta::MetaError> {
    let Some(path) = meta_partition() else {
        return Ok(Vec::new());
    };
    read_meta_keys_at(&path)
}

/// [`read_meta_keys`] of the META partition at `path`. Blocks.
///
/// # Errors
/// The partition cannot be read, or holds two corrupt copies.
pub fn read_meta_keys_at(path: &Path) -> Result<Vec<(u8, Vec<u8>)>, meta::MetaError> {
    match meta::read_from(path) {
        Ok((adv, _)) => Ok(adv.tags().map(|(t, v)| (t, v.to_vec())).collect()),
        Err(meta::MetaError::Blank) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Reads one META tag as text. Blocks.
#[must_use]
pub fn read_meta(tag: u8) -> Option<String> {
    let path = meta_partition()?;
    let (adv, _) = meta::read_from(&path).ok()?;
    adv.get(tag)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// What an upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The slot written.
    pub slot: Slot,
    /// The version it holds.
    pub version: String,
}

/// Upgrades a node booted from `booted`: fetch and verify `image`, then
/// the image's installer writes the other slot and makes it boot next, on
/// trial. Blocks (run it on a blocking thread).
///
/// # Errors
/// [`InstallError`]; nothing is written unless verification passed.
pub fn upgrade(
    image: &str,
    booted: Slot,
    settings: &FetchSettings,
    progress: &Progress,
) -> Result<Upgraded, InstallError> {
    if image.trim().is_empty() {
        return Err(InstallError::NoImage);
    }
    let dir = Path::new(WORK_DIR);
    say(
        progress,
        format!("upgrading from slot {booted}: fetching {image}"),
    );
    let version = fetch(image, dir, settings, progress)?;
    say(progress, format!("verified {image} ({version})"));
    let result = bootloader::with_esp(|esp| {
        let mut cmd = Command::new(dir.join("installer"));
        cmd.args(["upgrade", "--from"])
            .arg(dir)
            .arg("--esp")
            .arg(esp)
            .args(["--booted", &booted.to_string()]);
        // The ESP error type carries text: keep ours in the message.
        match run_streaming("writing the inactive slot", &mut cmd, progress) {
            Ok((status, _)) if status.success() => Ok(Ok(())),
            Ok((status, message)) => Ok(Err(InstallError::Step {
                step: "writing the inactive slot",
                message: format!("the installer ended with {status}: {message}"),
            })),
            Err(e) => Ok(Err(e)),
        }
    });
    let _ = std::fs::remove_dir_all(dir);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            return Err(InstallError::Step {
                step: "mounting the ESP",
                message: e.to_string(),
            });
        }
    }
    let slot = if booted == 'A' { 'B' } else { 'A' };
    let from = booted.to_string();
    let line = format!("pending: slot {slot} ({version}) from {image}, on trial");
    // The slot is written and on trial whatever happens to this record:
    // a failure here is said, not fatal.
    if let Err(e) = update_meta(|adv| {
        adv.set(TAG_UPGRADE, from.into_bytes())?;
        adv.set(TAG_UPGRADE_OUTCOME, line.into_bytes())
    }) {
        say(
            progress,
            format!("warning: recording the upgrade in META: {e}"),
        );
    }
    say(
        progress,
        format!("slot {slot} holds {version}: it boots next, on trial"),
    );
    Ok(Upgraded { slot, version })
}

/// Installs onto `disk` from `image`, then puts `config` on the new STATE
/// so the installed node boots configured. Blocks.
///
/// # Errors
/// [`InstallError`]; nothing is written unless verification passed.
pub fn install(
    image: &str,
    disk: &str,
    config: &[u8],
    settings: &FetchSettings,
    progress: &Progress,
) -> Result<String, InstallError> {
    if image.trim().is_empty() {
        return Err(InstallError::NoImage);
    }
    let dir = Path::new(WORK_DIR);
    say(progress, format!("installing to {disk}: fetching {image}"));
    let version = fetch(image, dir, settings, progress)?;
    say(progress, format!("verified {image} ({version})"));
    let mut cmd = Command::new(dir.join("installer"));
    cmd.args(["install", "--from"])
        .arg(dir)
        .args(["--disk", disk]);
    let (status, message) = run_streaming("writing the disk", &mut cmd, progress)?;
    let _ = std::fs::remove_dir_all(dir);
    if !status.success() {
        return Err(InstallError::Step {
            step: "writing the disk",
            message: format!("the installer ended with {status}: {message}"),
        });
    }
    if config.is_empty() {
        say(
            progress,
            "no machine config yet: the installed node boots into maintenance mode",
        );
    } else {
        save_config_to_state(disk, config)?;
    }
    say(progress, format!("installed {version} to {disk}"));
    Ok(version)
}

/// The partition named `name` of `disk` (`/sys/class/block/<disk>/<part>`
/// with `PARTNAME=<name>`), as a `/dev` path, once its device node exists.
#[must_use]
pub fn partition_of(class_block: &Path, dev: &Path, disk: &str, name: &str) -> Option<PathBuf> {
    let disk_name = Path::new(disk).file_name()?.to_str()?.to_owned();
    let mut parts: Vec<String> = std::fs::read_dir(class_block.join(&disk_name))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&disk_name))
        .collect();
    parts.sort();
    parts
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(class_block.join(&disk_name).join(p).join("uevent"))
                .map(|u| u.lines().any(|l| l == format!("PARTNAME={name}")))
                .unwrap_or(false)
        })
        .map(|p| dev.join(p))
}

/// Writes `config` as `config.yaml` on the STATE partition of `disk` (the
/// one just installed, not whatever else carries that label; mounted on
/// a scratch directory and unmounted again). The kernel may take a moment
/// to show the new partitions: waits up to 10 s for them. Blocks.
fn save_config_to_state(disk: &str, config: &[u8]) -> Result<(), InstallError> {
    use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};
    let step = "saving the config to STATE";
    let target = Path::new("/run/installer-state");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let device = loop {
        let found = partition_of(
            Path::new("/sys/class/block"),
            Path::new("/dev"),
            disk,
            "STATE",
        )
        .filter(|p| p.exists());
        match found {
            Some(device) => break device,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            None => {
                return Err(InstallError::Step {
                    step,
                    message: format!("{disk} shows no partition named STATE after the install"),
                });
            }
        }
    };
    crate::boot::finish_modules();
    std::fs::create_dir_all(target).map_err(|e| InstallError::Step {
        step,
        message: format!("{}: {e}", target.display()),
    })?;
    mount(
        &device,
        target,
        "xfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| InstallError::Step {
        step,
        message: format!("mounting {} on {}: {e}", device.display(), target.display()),
    })?;
    let written = machinery::fsutil::write_atomic(&target.join("config.yaml"), config, 0o600)
        .map_err(|e| InstallError::Step {
            step,
            message: e.to_string(),
        });
    rustix::fs::sync();
    let _ = unmount(target, UnmountFlags::empty());
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selector picks the first matching disk by name: never a CD
    /// drive or a read-only disk, and only disks on a bus; with none, the
    /// error lists what was seen.
    #[test]
    fn a_disk_picked_by_its_selector() {
        use udevd::testing::{FakeDisk, cd_drive, write_fake_disk};
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path();
        let virtio = |name: &str, slot: u8, gib: u64, readonly: bool| FakeDisk {
            name: name.into(),
            device_path: format!("pci0000:00/0000:00:0{slot}.0/virtio{slot}"),
            sectors: gib << 21,
            rotational: true,
            readonly,
            ..FakeDisk::default()
        };
        for disk in [
            virtio("vda", 4, 1, false),
            virtio("vdb", 5, 20, true),
            virtio("vdc", 6, 20, false),
            virtio("vdd", 7, 40, false),
            cd_drive("sr0"),
            FakeDisk {
                name: "loop0".into(),
                sectors: 100 << 21,
                ..FakeDisk::default()
            },
        ] {
            write_fake_disk(sys, &disk).expect("disk");
        }
        let selector = |yaml: &str| {
            let config = crate::test_config::patched(&format!(
                "machine:\n  install:\n    disk: ''\n    diskSelector: {yaml}\n"
            ));
            let config = machinery::config::parse(config.as_bytes()).expect("config");
            config.strict_check().expect("strictly valid");
            config.install_disk_selector().cloned().expect("a selector")
        };
        // vdb is large enough but read-only; loop0 is on no bus.
        assert_eq!(
            pick_disk(&selector("{size: '>= 10GB'}"), sys).expect("picked"),
            "/dev/vdc"
        );
        assert_eq!(
            pick_disk(&selector("{busPath: '/pci0000:00/0000:00:07.0/*'}"), sys).expect("picked"),
            "/dev/vdd"
        );
        assert_eq!(
            pick_disk(&selector("{type: hdd, size: '< 2GiB'}"), sys).expect("picked"),
            "/dev/vda"
        );
        let err = pick_disk(&selector("{type: nvme}"), sys).expect_err("no NVMe disk");
        let text = err.to_string();
        assert!(
            text.contains("no disk matches")
                && text.contains(
                    "vdc (22 GB, transport \"virtio\", bus path /pci0000:00/0000:00:06.0/virtio6)"
                ),
            "{text}"
        );
    }

    #[test]
    fn meta_keys_are_written_and_deleted_and_refusals_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.img");
        // A blank partition, as the installer leaves it.
        std::fs::write(&path, vec![0u8; meta::PARTITION_DATA_SIZE]).expect("blank");
        let read = || meta::read_from(&path).expect("META").0;

        assert_eq!(read_meta_keys_at(&path).expect("blank reads"), []);
        change_meta_key_at(&path, &MetaChange::Write(0x0c, b"hello".to_vec())).expect("write");
        assert_eq!(read().get(0x0c), Some(&b"hello"[..]));
        // What `talosctl get meta` shows.
        assert_eq!(
            read_meta_keys_at(&path).expect("keys"),
            [(0x0c, b"hello".to_vec())]
        );
        let written = std::fs::read(&path).expect("bytes");

        for (change, expect) in [
            (MetaChange::Delete(0x0d), "NotSet"),
            (
                MetaChange::Write(0x0d, vec![b'x'; meta::DATA_LENGTH]),
                "Refused(TooBig",
            ),
            // Fits the data area, but not beside machined's reserve.
            (
                MetaChange::Write(0x0d, vec![b'x'; meta::DATA_LENGTH - META_RESERVED]),
                "Refused(TooBig",
            ),
            (MetaChange::Write(0, b"end".to_vec()), "Refused(ReservedTag"),
        ] {
            let err = change_meta_key_at(&path, &change).expect_err("refused");
            assert!(
                format!("{err:?}").starts_with(expect),
                "{change:?}: {err:?}"
            );
            assert_eq!(std::fs::read(&path).expect("bytes"), written, "{change:?}");
        }

        change_meta_key_at(&path, &MetaChange::Delete(0x0c)).expect("delete");
        assert!(read().get(0x0c).is_none());

        // A partition that cannot be read whole is not started afresh
        // (that would erase what is there): the write fails, nothing written.
        let short = dir.path().join("short.img");
        std::fs::write(&short, b"not all of META").expect("short");
        let err = change_meta_key_at(&short, &MetaChange::Write(0x0c, b"x".to_vec()))
            .expect_err("unreadable");
        assert!(matches!(err, MetaKeyError::Write { .. }), "{err:?}");
        assert_eq!(std::fs::read(&short).expect("bytes"), b"not all of META");
    }

    #[test]
    fn registry_settings_reach_the_installer_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt as _;

        let text = crate::test_config::patched(
            "machine:\n  registries:\n    config:\n      10.0.2.2:5000:\n        \
             auth:\n          username: talos\n          password: pw\n    \
             mirrors:\n      docker.io:\n        endpoints: [http://10.0.2.2:5000]\n",
        );
        let config = machinery::config::parse(text.as_bytes()).expect("config");
        let settings = FetchSettings::from_config(Some(&config));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registries.json");
        write_registry_config(&path, &settings.registries).expect("written");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read: Registries =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read, settings.registries);
        assert_eq!(
            read.mirrors["docker.io"].endpoints,
            ["http://10.0.2.2:5000"]
        );
        assert!(settings.env.is_empty());
        let text = crate::test_config::patched(
            "machine:\n  env:\n    https_proxy: http://10.0.2.2:3128\n",
        );
        let config = machinery::config::parse(text.as_bytes()).expect("config");
        assert_eq!(
            FetchSettings::from_config(Some(&config)).env,
            [("https_proxy".to_owned(), "http://10.0.2.2:3128".to_owned())]
        );
        let auth = read.config["10.0.2.2:5000"]
            .auth
            .as_ref()
            .expect("credentials");
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("talos", "pw")
        );
    }

    #[test]
    fn partitions_are_found_by_name_on_the_named_disk_only() {
        let sys = tempfile::tempdir().expect("tempdir");
        let part = |disk: &str, p: &str, name: &str| {
            let dir = sys.path().join(disk).join(p);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(
                dir.join("uevent"),
                format!("MAJOR=254\nDEVNAME={p}\nPARTNAME={name}\n"),
            )
            .expect("write");
            // /sys/class/block also lists every partition by itself.
            std::fs::create_dir_all(sys.path().join(p)).expect("mkdir");
            std::fs::write(
                sys.path().join(p).join("uevent"),
                format!("PARTNAME={name}\n"),
            )
            .expect("write");
        };
        part("vda", "vda3", "STATE");
        part("vda", "vda2", "META");
        part("vdb", "vdb3", "STATE");
        let dev = Path::new("/dev");
        assert_eq!(
            partition_of(sys.path(), dev, "/dev/vdb", "STATE"),
            Some(PathBuf::from("/dev/vdb3"))
        );
        assert_eq!(
            partition_of(sys.path(), dev, "/dev/vda", "STATE"),
            Some(PathBuf::from("/dev/vda3"))
        );
        assert_eq!(partition_of(sys.path(), dev, "/dev/vdb", "META"), None);
        assert_eq!(
            find_partition(sys.path(), dev, "META"),
            Some(PathBuf::from("/dev/vda2"))
        );
    }
}
