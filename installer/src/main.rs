//! The `installer` binary: fetch, verify and extract an installer image,
//! install it onto a disk or into the inactive boot slot, push images to a
//! registry, make signing keys.
//!
//! Thin on purpose: the logic is in the library, where it is tested.
//! Progress goes to stdout one line at a time (a caller streams it),
//! errors to stderr. Exit codes: 0 success, 1 failure, 2 usage error; a
//! failed `fetch` says why with its code (machined turns it into the gRPC
//! status an operator sees): 3 the reference cannot be parsed, 4 the
//! source cannot be reached, 5 the source has no such image, 6 the image
//! failed verification (a digest or the signature), 7 the registry refused
//! access (no credentials, or wrong ones).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use installer::fetch::{self, FetchOptions};
use installer::oci;
use installer::sign::{SigningKey, TrustedKeys};
use machinery::config::Registries;

/// Fetches, verifies and installs installer images.
#[derive(Debug, Parser)]
#[command(name = "installer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch an image, verify its signature and every file, and extract
    /// the files into a directory.
    Fetch {
        /// A registry reference (registry/repo:tag or @sha256:…), an
        /// http(s) URL of a layout tar, or an absolute path (or file://
        /// URL) of a layout directory or tar.
        #[arg(long, value_name = "REF")]
        image: String,
        /// Where the files go (created if absent); work files go in
        /// DIR/.work, removed at the end.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// A public key file (PEM "PUBLIC KEY") or a directory of *.pub
        /// files the signature may be made with; repeatable.
        #[arg(long = "trusted-key", value_name = "FILE_OR_DIR", required = true)]
        trusted_keys: Vec<PathBuf>,
        /// A registry (host:port) to pull from over plain http; repeatable.
        #[arg(long = "plain-http-registry", value_name = "HOST:PORT")]
        plain_http_registries: Vec<String>,
        /// A JSON file of mirrors, credentials and TLS settings (what
        /// machined writes from `machine.registries`).
        #[arg(long = "registry-config", value_name = "FILE")]
        registry_config: Option<PathBuf>,
    },
    /// Push an image layout (a directory or a tar of one) to a registry,
    /// unchanged, so its manifest digest stays the same.
    Push {
        /// The layout directory or tar.
        #[arg(long, value_name = "DIR|TAR")]
        layout: PathBuf,
        /// The registry reference to push to (registry/repo:tag).
        #[arg(long, value_name = "REF")]
        image: String,
        /// A registry (host:port) to push to over plain http; repeatable.
        #[arg(long = "plain-http-registry", value_name = "HOST:PORT")]
        plain_http_registries: Vec<String>,
        /// A JSON file of credentials and TLS settings per registry:
        /// `{"config": {"host:port": {"auth": {"username": "…", "password":
        /// "…"}, "ca_pem": "…", "insecure_skip_verify": false}}}`.
        #[arg(long = "registry-config", value_name = "FILE")]
        registry_config: Option<PathBuf>,
    },
    /// Make a new ed25519 signing key (PKCS#8 PEM, mode 0600) and write its
    /// public key (SubjectPublicKeyInfo PEM) for nodes to trust.
    Keygen {
        /// The private key file to create (an existing file is refused).
        #[arg(long, value_name = "OUT.pem")]
        private: PathBuf,
        /// The public key file to write.
        #[arg(long, value_name = "OUT.pub")]
        public: PathBuf,
    },
    /// Install an extracted image (see `fetch`) onto a whole disk.
    Install {
        /// The directory `fetch` extracted the image into.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The disk: a block device or a disk image file.
        #[arg(long, value_name = "PATH")]
        disk: PathBuf,
    },
    /// Write an extracted image into the boot slot not running and make it
    /// boot next, on trial.
    Upgrade {
        /// The directory `fetch` extracted the image into.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Where the ESP is mounted.
        #[arg(long, value_name = "DIR")]
        esp: PathBuf,
        /// The slot running now (A or B); the other one is written.
        #[arg(long, value_name = "A|B", value_parser = parse_slot)]
        booted: char,
    },
}

/// "A" or "B" (either case) as the slot letter.
fn parse_slot(text: &str) -> Result<char, String> {
    match text {
        "A" | "a" => Ok('A'),
        "B" | "b" => Ok('B'),
        other => Err(format!("{other:?} is not a boot slot; expected A or B")),
    }
}

/// Prints a progress line and flushes it, so whoever reads the pipe sees
/// it now. A closed stdout is not a reason to stop installing.
fn progress(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Reads a `--registry-config` file; none means no registry settings.
fn registry_config(path: Option<&Path>) -> Result<Registries> {
    let Some(path) = path else {
        return Ok(Registries::default());
    };
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: not registry settings ({{\"mirrors\": {{...}}, \"config\": {{...}}}})",
            path.display()
        )
    })
}

fn run_fetch(
    image: &str,
    to: &Path,
    trusted_keys: &[PathBuf],
    plain_http_registries: Vec<String>,
    registry_config_file: Option<&Path>,
) -> Result<()> {
    let mut trusted = TrustedKeys::new();
    for path in trusted_keys {
        trusted.add_path(path)?;
    }
    let opts = FetchOptions {
        plain_http_registries,
        registries: registry_config(registry_config_file)?,
        trusted,
    };
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let work = to.join(".work");
    let result = (|| -> Result<()> {
        let verified = runtime()?.block_on(fetch::fetch(image, &work, &opts, &mut progress))?;
        oci::extract(&verified, to)?;
        progress(format!(
            "extracted {} ({}) into {}",
            verified.version,
            verified.manifest_digest,
            to.display()
        ));
        Ok(())
    })();
    let cleanup = match fs::remove_dir_all(&work) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", work.display()))
        }
        _ => Ok(()),
    };
    result?;
    cleanup
}

fn run_keygen(private: &Path, public: &Path) -> Result<()> {
    let pem = SigningKey::generate()?;
    let key = SigningKey::from_pem(pem.as_bytes(), "the new key")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(private)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                private.display()
            )
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", private.display()))?;
    fs::write(public, key.public_key_pem())
        .with_context(|| format!("writing {}", public.display()))?;
    progress(format!(
        "wrote key {} to {} and {}",
        key.fingerprint(),
        private.display(),
        public.display()
    ));
    Ok(())
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Fetch {
            image,
            to,
            trusted_keys,
            plain_http_registries,
            registry_config: config,
        } => run_fetch(
            &image,
            &to,
            &trusted_keys,
            plain_http_registries,
            config.as_deref(),
        ),
        Command::Push {
            layout,
            image,
            plain_http_registries,
            registry_config: config,
        } => {
            let registries = registry_config(config.as_deref())?;
            let digest = runtime()?.block_on(fetch::push(
                &layout,
                &image,
                &plain_http_registries,
                &registries.config,
            ))?;
            progress(format!("pushed {image} ({digest})"));
            Ok(())
        }
        Command::Keygen { private, public } => run_keygen(&private, &public),
        // Provided by the install module: the whole-disk layout.
        Command::Install { from, disk } => {
            installer::install::install_from_dir(&from, &disk, &mut progress)?;
            progress(format!("installed onto {}", disk.display()));
            Ok(())
        }
        // Provided by the upgrade module: the inactive slot, on trial.
        Command::Upgrade { from, esp, booted } => {
            let written = installer::upgrade::upgrade_from_dir(&from, &esp, booted, &mut progress)?;
            progress(format!("wrote slot {written}; it boots next, on trial"));
            Ok(())
        }
    }
}

/// The exit code for a failure (see the module docs).
fn exit_code(error: &anyhow::Error) -> u8 {
    use installer::fetch::FetchError;
    for cause in error.chain() {
        if let Some(fetch) = cause.downcast_ref::<FetchError>() {
            return match fetch {
                FetchError::InvalidReference { .. } => 3,
                FetchError::Unreachable { .. } => 4,
                FetchError::NotFound { .. } => 5,
                FetchError::Verify { .. } => 6,
                FetchError::Unauthorized { .. } => 7,
                _ => 1,
            };
        }
        if let Some(e) = cause.downcast_ref::<oci::OciError>() {
            // A local file problem (a full /run) is not a bad image.
            return match e {
                oci::OciError::Io { .. } | oci::OciError::Write { .. } => 1,
                _ => 6,
            };
        }
    }
    1
}

fn main() -> ExitCode {
    // Usage errors exit 2 from here (clap's convention).
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("installer: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}
