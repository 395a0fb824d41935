//! Getting an installer image into a verified local layout, and pushing a
//! layout to a registry.
//!
//! An image reference is one of:
//!
//! - an absolute path or `file:///abs/path`: a layout directory, or a
//!   `.tar` of one ([`oci::pack_tar`]);
//! - an `http://` or `https://` URL of such a tar;
//! - an OCI reference (`registry/repo:tag` or `registry/repo@sha256:…`;
//!   without a registry, docker.io), pulled with `oci-client`.
//!
//! Whatever the source, the result is checked by [`oci`]'s verification
//! (signature over the config first, then every blob's digest) and nothing
//! the transport claims is trusted. For registries the signature is
//! checked right after the small manifest and config arrive, so an image
//! signed by no trusted key is refused before its large files are
//! downloaded.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use machinery::config::{Registries, RegistryAccess};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use tokio::io::AsyncWriteExt as _;

use crate::oci::{self, Digest, OciError, VerifiedImage};
use crate::sign::{SignError, TrustedKeys};

/// How long a connection to a registry or server may take, through a
/// proxy's tunnel included: a peer that accepts and never answers must
/// fail the fetch, not hang an upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a response may go without a byte (a whole download may take
/// longer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How to fetch: which registries speak plain http, how to reach private
/// ones, which keys to trust.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Registries (`host:port`, as written in references) pulled over
    /// plain http instead of https: local and test registries.
    pub plain_http_registries: Vec<String>,
    /// Mirrors per registry, and credentials and TLS settings per host
    /// (`host` or `host:port`, as written in references): the node's
    /// `machine.registries`.
    pub registries: Registries,
    /// The keys an image's signature must be made with.
    pub trusted: TrustedKeys,
}

/// Why an image could not be fetched or pushed. Every variant names the
/// reference; the variants tell callers which status to report (bad
/// argument, unavailable, not found, refused image).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The reference is not a path, URL or OCI reference.
    #[error("image reference {reference:?} is invalid: {detail}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The registry or server could not be reached (or the transfer broke).
    #[error("{reference}: {step}: cannot reach {server}: {detail}")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry, URL origin or place.
        server: String,
        /// What was being done.
        step: String,
        /// The cause.
        detail: String,
    },
    /// The image (or one of its blobs) does not exist there.
    #[error("{reference}: {step}: not found on {server}: {detail}")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry, URL origin or place.
        server: String,
        /// What was being done.
        step: String,
        /// The cause.
        detail: String,
    },
    /// The registry wants credentials, or refused the ones it was given.
    #[error("{reference}: {step}: {server} refused access: {detail}; {hint}")]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The registry.
        server: String,
        /// What was being done.
        step: String,
        /// The answer.
        detail: String,
        /// What the operator can do about it.
        hint: String,
    },
    /// The registry or server answered with another error.
    #[error("{reference}: {step}: {server} answered with an error: {detail}")]
    Refused {
        /// The reference.
        reference: String,
        /// The registry or URL origin.
        server: String,
        /// What was being done.
        step: String,
        /// The answer.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{reference}: {action} {}: {source}", .path.display())]
    Io {
        /// The reference.
        reference: String,
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The image arrived but is not acceptable: bad signature, digest or
    /// layout.
    #[error("{reference}: {source}")]
    Verify {
        /// The reference.
        reference: String,
        /// What verification found.
        source: OciError,
    },
}

impl FetchError {
    fn oci(reference: &str, error: OciError) -> Self {
        match error {
            // Local file trouble is not a verdict on the image.
            OciError::Io {
                action,
                path,
                source,
            } => Self::Io {
                reference: reference.to_owned(),
                action,
                path,
                source,
            },
            other => Self::Verify {
                reference: reference.to_owned(),
                source: other,
            },
        }
    }

    fn io(reference: &str, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let reference = reference.to_owned();
        let path = path.to_owned();
        move |source| Self::Io {
            reference,
            action,
            path,
            source,
        }
    }
}

/// An error and its causes, joined: reqwest's own message ("error
/// sending request") says little without them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Sizes for progress lines: "512 B", "12.3 MiB".
#[must_use]
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Where a reference points.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Path(PathBuf),
    Url(String),
    Registry(Reference),
}

fn classify(reference: &str) -> Result<Source, FetchError> {
    let invalid = |detail: &str| FetchError::InvalidReference {
        reference: reference.to_owned(),
        detail: detail.to_owned(),
    };
    if reference.is_empty() {
        return Err(invalid("it is empty"));
    }
    if let Some(path) = reference.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid(
                "a file:// URL needs an absolute path, like file:///var/images/installer.tar",
            ));
        }
        return Ok(Source::Path(PathBuf::from(path)));
    }
    if reference.starts_with('/') {
        return Ok(Source::Path(PathBuf::from(reference)));
    }
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return Ok(Source::Url(reference.to_owned()));
    }
    if reference.contains("://") {
        return Err(invalid(
            "unsupported scheme (use file://, http://, https:// or an OCI reference)",
        ));
    }
    if reference.starts_with('.') {
        return Err(invalid("a local path must be absolute"));
    }
    reference
        .parse::<Reference>()
        .map(Source::Registry)
        .map_err(|e| {
            invalid(&format!(
                "not an OCI reference (registry/repository:tag): {e}"
            ))
        })
}

/// Makes the crypto provider rustls uses process-wide (we build rustls
/// without a built-in one); a provider already installed stays.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Fetches the image `reference` names, verifies it against
/// `opts.trusted` and returns it; blobs that had to be downloaded or
/// unpacked are under `work_dir` (created if absent), a local layout
/// directory is verified in place.
///
/// `progress` gets one human-readable line per step.
pub async fn fetch(
    reference: &str,
    work_dir: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<VerifiedImage, FetchError> {
    install_crypto_provider();
    let source = classify(reference)?;
    if opts.trusted.is_empty() {
        // Refuse before downloading anything that could never be accepted.
        return Err(FetchError::oci(
            reference,
            OciError::SignatureRejected(SignError::NoTrustedKeys),
        ));
    }
    fs::create_dir_all(work_dir).map_err(FetchError::io(reference, "creating", work_dir))?;
    match source {
        Source::Path(path) => fetch_path(reference, &path, work_dir, opts, progress),
        Source::Url(url) => fetch_url(reference, &url, work_dir, opts, progress).await,
        Source::Registry(parsed) => {
            fetch_registry(reference, &parsed, work_dir, opts, progress).await
        }
    }
}

/// An empty `work_dir/layout` to download or unpack into.
fn fresh_layout_dir(reference: &str, work_dir: &Path) -> Result<PathBuf, FetchError> {
    let layout = work_dir.join("layout");
    match fs::remove_dir_all(&layout) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FetchError::io(reference, "removing", &layout)(e)),
    }
    fs::create_dir_all(&layout).map_err(FetchError::io(reference, "creating", &layout))?;
    Ok(layout)
}

/// Verifies a local layout and reports what was checked.
fn verify_local(
    reference: &str,
    layout: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<VerifiedImage, FetchError> {
    let image =
        oci::verify_layout(layout, &opts.trusted).map_err(|e| FetchError::oci(reference, e))?;
    progress(format!("verified signature (key {})", image.signed_by));
    for (name, file) in &image.files {
        progress(format!("verified {name} ({})", human_size(file.size)));
    }
    progress(format!(
        "verified {} ({})",
        image.version, image.manifest_digest
    ));
    Ok(image)
}

fn fetch_path(
    reference: &str,
    path: &Path,
    work_dir: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<VerifiedImage, FetchError> {
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            FetchError::NotFound {
                reference: reference.to_owned(),
                server: "the local filesystem".to_owned(),
                step: format!("reading {}", path.display()),
                detail: e.to_string(),
            }
        } else {
            FetchError::io(reference, "reading", path)(e)
        }
    })?;
    if meta.is_dir() {
        progress(format!("reading layout {}", path.display()));
        return verify_local(reference, path, opts, progress);
    }
    progress(format!("unpacking {}", path.display()));
    let layout = fresh_layout_dir(reference, work_dir)?;
    oci::unpack_tar(path, &layout).map_err(|e| FetchError::oci(reference, e))?;
    verify_local(reference, &layout, opts, progress)
}

async fn fetch_url(
    reference: &str,
    url: &str,
    work_dir: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<VerifiedImage, FetchError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::InvalidReference {
        reference: reference.to_owned(),
        detail: format!("not a valid URL: {e}"),
    })?;
    let server = parsed.origin().ascii_serialization();
    let step = format!("downloading {url}");
    let unreachable = |detail: String| FetchError::Unreachable {
        reference: reference.to_owned(),
        server: server.clone(),
        step: step.clone(),
        detail,
    };
    progress(step.clone());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT);
    // The TrustedRootsConfig documents, beside the image's bundle.
    for pem in &opts.registries.trusted_roots {
        let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| unreachable(format!("reading the trusted roots: {}", chain(&e))))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    let client = builder
        .build()
        .map_err(|e| unreachable(format!("setting up the http client: {}", chain(&e))))?;
    let mut response = client
        .get(parsed.clone())
        .send()
        .await
        .map_err(|e| unreachable(chain(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        return Err(FetchError::NotFound {
            reference: reference.to_owned(),
            server: server.clone(),
            step: step.clone(),
            detail: format!("HTTP {status}"),
        });
    }
    if !status.is_success() {
        return Err(FetchError::Refused {
            reference: reference.to_owned(),
            server: server.clone(),
            step: step.clone(),
            detail: format!("HTTP {status}"),
        });
    }
    let tar_path = work_dir.join("download.tar");
    let mut file = tokio::fs::File::create(&tar_path)
        .await
        .map_err(FetchError::io(reference, "creating", &tar_path))?;
    let mut total = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| unreachable(format!("the transfer broke: {}", chain(&e))))?
    {
        file.write_all(&chunk)
            .await
            .map_err(FetchError::io(reference, "writing", &tar_path))?;
        total += chunk.len() as u64;
    }
    file.flush()
        .await
        .map_err(FetchError::io(reference, "writing", &tar_path))?;
    drop(file);
    progress(format!("downloaded {url} ({})", human_size(total)));

    let layout = fresh_layout_dir(reference, work_dir)?;
    let unpacked = oci::unpack_tar(&tar_path, &layout);
    let _ = fs::remove_file(&tar_path);
    unpacked.map_err(|e| FetchError::oci(reference, e))?;
    verify_local(reference, &layout, opts, progress)
}

/// An `oci-client` for these plain-http registries. `Client::new` would
/// fall back to a default client (https everywhere) on a setup error, so
/// the fallible constructor is used.
fn registry_client(
    reference: &str,
    registry: &str,
    plain_http_registries: &[String],
    access: Option<&RegistryAccess>,
    trusted_roots: &[String],
) -> Result<oci_client::Client, FetchError> {
    let mut config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http_registries.to_vec()),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    };
    // The TrustedRootsConfig documents: trusted for every registry.
    for pem in trusted_roots {
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone().into_bytes(),
        });
    }
    if let Some(access) = access {
        config.accept_invalid_certificates = access.insecure_skip_verify;
        if let Some(pem) = &access.ca_pem {
            config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone().into_bytes(),
            });
        }
    }
    oci_client::Client::try_from(config).map_err(|e| FetchError::Unreachable {
        reference: reference.to_owned(),
        server: format!("registry {registry}"),
        step: "setting up the registry client".to_owned(),
        detail: chain(&e),
    })
}

/// The credentials configured for `registry`, if any.
fn registry_auth(access: Option<&RegistryAccess>) -> RegistryAuth {
    match access.and_then(|a| a.auth.as_ref()) {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// Whether the registry's answer means "not with these credentials".
fn is_unauthorized(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RequestError(e) => e.status().is_some_and(|s| {
            s == reqwest::StatusCode::UNAUTHORIZED || s == reqwest::StatusCode::FORBIDDEN
        }),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

/// What to do about a refused access, for the error message.
fn access_hint(registry: &str, access: Option<&RegistryAccess>) -> String {
    if access.is_some_and(|a| a.auth.is_some()) {
        format!("check the credentials in machine.registries.config.\"{registry}\".auth")
    } else {
        // Registries also answer 401 for a repository that does not exist.
        format!(
            "no credentials are configured for it (or the repository does not exist): \
             set machine.registries.config.\"{registry}\".auth"
        )
    }
}

/// Sorts a registry client error into the variant callers map to a status.
fn registry_error(
    reference: &str,
    registry: &str,
    access: Option<&RegistryAccess>,
    step: &str,
    error: OciDistributionError,
) -> FetchError {
    let reference = reference.to_owned();
    let server = format!("registry {registry}");
    let step = step.to_owned();
    let detail = chain(&error);
    if is_unauthorized(&error) {
        return FetchError::Unauthorized {
            reference,
            server,
            step,
            detail,
            hint: access_hint(registry, access),
        };
    }
    let not_found = match &error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        _ => false,
    };
    if not_found {
        return FetchError::NotFound {
            reference,
            server,
            step,
            detail,
        };
    }
    // The registry's bytes do not match the digest asked for (a pinned
    // `@sha256:`) or the one it announced: a verification failure, which
    // does not give way to the next mirror.
    if matches!(error, OciDistributionError::DigestError(_)) {
        return FetchError::Verify {
            reference,
            source: crate::oci::OciError::RegistryDigest {
                server,
                step,
                detail,
            },
        };
    }
    match error {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
            FetchError::Unreachable {
                reference,
                server,
                step,
                detail,
            }
        }
        _ => FetchError::Refused {
            reference,
            server,
            step,
            detail,
        },
    }
}

/// The digest a streaming hash arrived at.
fn finish(ctx: ring::digest::Context) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Digest::from_raw(out)
}

/// Where blobs come from: the client, the reference, and the host pulled
/// from with its access settings (for error messages).
struct BlobSource<'a> {
    client: &'a oci_client::Client,
    reference: &'a str,
    parsed: &'a Reference,
    host: &'a str,
    access: Option<&'a RegistryAccess>,
}

/// Downloads one blob into `path`, hashing and counting it on the way:
/// the registry's (and the client's) word on the digest is not taken.
async fn pull_blob(
    source: &BlobSource<'_>,
    digest: &Digest,
    size: u64,
    what: &str,
    path: &Path,
) -> Result<(), FetchError> {
    let BlobSource {
        client,
        reference,
        parsed,
        host: registry,
        access,
    } = *source;
    let step = format!("pulling blob {digest} of {what}");
    let digest_text = digest.to_string();
    let mut stream = client
        .pull_blob_stream(parsed, digest_text.as_str())
        .await
        .map_err(|e| registry_error(reference, registry, access, &step, e))?;
    let partial = path.with_extension("partial");
    if let Some(parent) = partial.parent() {
        fs::create_dir_all(parent).map_err(FetchError::io(reference, "creating", parent))?;
    }
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(FetchError::io(reference, "creating", &partial))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&partial);
                // The client checks the digest at the end of the stream;
                // when all bytes are in, say what they were ourselves.
                if received == size {
                    let actual = finish(ctx);
                    if actual != *digest {
                        return Err(FetchError::oci(
                            reference,
                            OciError::BlobDigest {
                                what: what.to_owned(),
                                expected: *digest,
                                actual,
                            },
                        ));
                    }
                }
                return Err(FetchError::Unreachable {
                    reference: reference.to_owned(),
                    server: format!("registry {registry}"),
                    step,
                    detail: format!("the transfer broke: {}", chain(&e)),
                });
            }
        };
        received += chunk.len() as u64;
        if received > size {
            drop(file);
            let _ = fs::remove_file(&partial);
            return Err(FetchError::oci(
                reference,
                OciError::BlobSize {
                    what: what.to_owned(),
                    digest: *digest,
                    expected: size,
                    actual: received,
                },
            ));
        }
        ctx.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(FetchError::io(reference, "writing", &partial))?;
    }
    file.flush()
        .await
        .map_err(FetchError::io(reference, "writing", &partial))?;
    drop(file);
    let actual = finish(ctx);
    let mismatch = if received != size {
        Some(OciError::BlobSize {
            what: what.to_owned(),
            digest: *digest,
            expected: size,
            actual: received,
        })
    } else if actual != *digest {
        Some(OciError::BlobDigest {
            what: what.to_owned(),
            expected: *digest,
            actual,
        })
    } else {
        None
    };
    if let Some(error) = mismatch {
        let _ = fs::remove_file(&partial);
        return Err(FetchError::oci(reference, error));
    }
    fs::rename(&partial, path).map_err(FetchError::io(reference, "renaming", &partial))
}

/// A registry name as the config and references may both write it:
/// lower case, without https's default port, and Docker Hub's hosts
/// (`index.docker.io`, `registry-1.docker.io`) as `docker.io`.
fn canonical_registry(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix(":443").unwrap_or(&name);
    match name {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

/// The entry of `map` for registry `name`: the one written exactly so,
/// else one naming the same registry another way.
fn entry_for<'a, T>(map: &'a BTreeMap<String, T>, name: &str) -> Option<&'a T> {
    map.get(name).or_else(|| {
        let wanted = canonical_registry(name);
        map.iter()
            .find(|(key, _)| canonical_registry(key) == wanted)
            .map(|(_, value)| value)
    })
}

/// One place to pull a registry's image from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host` or `host:port`.
    host: String,
    /// Over plain http.
    plain_http: bool,
    /// A mirror (requests carry `?ns=<registry>`, as containerd's do), not
    /// the registry itself.
    mirror: bool,
}

/// Where to pull `registry`'s images from, in order: the endpoints of its
/// mirror entry (or of `*`), then the registry itself unless the entry
/// says `skipFallback`. Also the endpoints skipped, and why.
fn sources(registry: &str, opts: &FetchOptions) -> (Vec<Endpoint>, Vec<String>) {
    let mirrors = &opts.registries.mirrors;
    let entry = entry_for(mirrors, registry).or_else(|| mirrors.get("*"));
    let mut out: Vec<Endpoint> = Vec::new();
    let mut skipped = Vec::new();
    for endpoint in entry.map(|m| m.endpoints.as_slice()).unwrap_or_default() {
        let (plain_http, rest) = if let Some(rest) = endpoint.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = endpoint.strip_prefix("https://") {
            (false, rest)
        } else {
            skipped.push(format!(
                "mirror endpoint {endpoint:?} skipped: not an http(s) URL"
            ));
            continue;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        // The installer speaks the API at `/v2` of a host: an endpoint
        // with a path, or one whose path replaces `/v2`
        // (`overridePath`), works only when that path is `/v2`.
        let path = path.trim_end_matches('/');
        let usable = if entry.is_some_and(|m| m.override_path) {
            path == "v2"
        } else {
            matches!(path, "" | "v2")
        };
        if host.is_empty() || !usable {
            skipped.push(format!(
                "mirror endpoint {endpoint:?} skipped: installer images are pulled from a \
                 registry's root, not a path"
            ));
            continue;
        }
        let source = Endpoint {
            host: host.to_owned(),
            plain_http,
            mirror: canonical_registry(host) != canonical_registry(registry),
        };
        if !out.contains(&source) {
            out.push(source);
        }
    }
    if !entry.is_some_and(|m| m.skip_fallback) && !out.iter().any(|s| !s.mirror) {
        out.push(Endpoint {
            host: registry.to_owned(),
            plain_http: false,
            mirror: false,
        });
    }
    (out, skipped)
}

/// Whether the next source may have what this one failed to give: not for
/// a bad reference, a local file problem or an image that failed
/// verification (an operator should hear that a mirror serves bad bytes).
fn try_next(error: &FetchError) -> bool {
    matches!(
        error,
        FetchError::Unreachable { .. }
            | FetchError::NotFound { .. }
            | FetchError::Unauthorized { .. }
            | FetchError::Refused { .. }
    )
}

async fn fetch_registry(
    reference: &str,
    parsed: &Reference,
    work_dir: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<VerifiedImage, FetchError> {
    let registry = parsed.registry();
    let (sources, skipped) = sources(registry, opts);
    for line in skipped {
        progress(line);
    }
    // What to report when every source failed: the first failure that is
    // not "no such image" (a mirror refusing the credentials says more
    // than the registry behind it being unreachable), as containerd does.
    let mut first: Option<FetchError> = None;
    let count = sources.len();
    for (i, source) in sources.into_iter().enumerate() {
        let mut from = parsed.clone();
        if source.mirror {
            // Hidden in oci-spec (the `ns` parameter is not in the
            // distribution spec yet); Cargo.lock pins it.
            from.set_mirror_registry(source.host.clone());
            progress(format!("pulling {reference} from mirror {}", source.host));
        } else {
            progress(format!("pulling {reference}"));
        }
        match fetch_from(reference, &from, &source, work_dir, opts, progress).await {
            Ok(image) => return Ok(image),
            Err(e) if try_next(&e) && i + 1 < count => {
                progress(format!("{e}; trying the next source"));
                if first.is_none() && !matches!(e, FetchError::NotFound { .. }) {
                    first = Some(e);
                }
            }
            Err(e) => return Err(first.filter(|_| try_next(&e)).unwrap_or(e)),
        }
    }
    Err(first.unwrap_or_else(|| FetchError::Unreachable {
        reference: reference.to_owned(),
        server: format!("registry {registry}"),
        step: "choosing where to pull from".to_owned(),
        detail: "its mirror entry has skipFallback and no endpoint the installer can use"
            .to_owned(),
    }))
}

/// Pulls from one source: the manifest, the signed config (checked before
/// anything large), the files, then the whole layout verified again.
async fn fetch_from(
    reference: &str,
    parsed: &Reference,
    source: &Endpoint,
    work_dir: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<VerifiedImage, FetchError> {
    let registry = source.host.as_str();
    let access = entry_for(&opts.registries.config, registry);
    // A mirror speaks plain http only if its endpoint says so: a host
    // declared plain elsewhere must not take an https endpoint's
    // credentials in the clear.
    let mut plain_http = if source.mirror {
        Vec::new()
    } else {
        opts.plain_http_registries.clone()
    };
    if source.plain_http {
        plain_http.push(source.host.clone());
    }
    let client = registry_client(
        reference,
        registry,
        &plain_http,
        access,
        &opts.registries.trusted_roots,
    )?;

    let (manifest_bytes, _) = client
        .pull_manifest_raw(parsed, &registry_auth(access), &[oci::MANIFEST_MEDIA_TYPE])
        .await
        .map_err(|e| registry_error(reference, registry, access, "pulling the manifest", e))?;
    let verify_err = |e| FetchError::oci(reference, e);
    if manifest_bytes.len() as u64 > oci::MAX_METADATA_BYTES {
        return Err(verify_err(OciError::TooLarge {
            what: "the manifest".to_owned(),
            size: manifest_bytes.len() as u64,
        }));
    }
    let manifest_digest = Digest::of(&manifest_bytes);
    if let Some(pinned) = parsed.digest() {
        let expected = Digest::parse(pinned).ok_or_else(|| FetchError::InvalidReference {
            reference: reference.to_owned(),
            detail: format!("{pinned} is not a sha256 digest"),
        })?;
        if expected != manifest_digest {
            return Err(verify_err(OciError::BlobDigest {
                what: "the manifest".to_owned(),
                expected,
                actual: manifest_digest,
            }));
        }
    }
    let manifest = oci::parse_manifest(&manifest_bytes).map_err(verify_err)?;

    let layout = fresh_layout_dir(reference, work_dir)?;
    let config_digest = Digest::parse(&manifest.config.digest).ok_or_else(|| {
        verify_err(OciError::BadDigest {
            value: manifest.config.digest.clone(),
            context: "the manifest's config".to_owned(),
        })
    })?;
    if manifest.config.size > oci::MAX_METADATA_BYTES {
        return Err(verify_err(OciError::TooLarge {
            what: "the config".to_owned(),
            size: manifest.config.size,
        }));
    }
    let config_path = oci::blob_path(&layout, &config_digest);
    let source = BlobSource {
        client: &client,
        reference,
        parsed,
        host: registry,
        access,
    };
    pull_blob(
        &source,
        &config_digest,
        manifest.config.size,
        "the config",
        &config_path,
    )
    .await?;
    let config_bytes =
        fs::read(&config_path).map_err(FetchError::io(reference, "reading", &config_path))?;
    // The signature before the big downloads.
    let signed = oci::verify_config(&manifest, &config_bytes, &opts.trusted).map_err(verify_err)?;
    progress(format!("verified signature (key {})", signed.signed_by));

    for (name, (digest, size)) in &signed.files {
        let path = oci::blob_path(&layout, digest);
        pull_blob(&source, digest, *size, name, &path).await?;
        progress(format!("fetched {name} ({})", human_size(*size)));
    }

    // Now a layout like any other; verify it as one (every blob hashed
    // again, the signature again) so there is one verification path.
    oci::write_blob(&layout, &manifest_bytes).map_err(verify_err)?;
    oci::write_index(
        &layout,
        &manifest_digest,
        manifest_bytes.len() as u64,
        &signed.version,
    )
    .map_err(verify_err)?;
    let marker = layout.join(oci::LAYOUT_FILE);
    fs::write(&marker, oci::LAYOUT_CONTENT)
        .map_err(FetchError::io(reference, "writing", &marker))?;
    let image = oci::verify_layout(&layout, &opts.trusted).map_err(verify_err)?;
    progress(format!(
        "verified {} ({})",
        image.version, image.manifest_digest
    ));
    Ok(image)
}

/// Removes a temporary directory when dropped.
#[derive(Debug)]
struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Pushes a layout (a directory or a tar of one) to `reference` (which
/// must name a tag), blobs and manifest exactly as they are, so the
/// registry's manifest digest is the layout's. Returns that digest.
///
/// Each blob's digest and size are checked before it is sent; the
/// signature is not (pushing is for image builders, who may push to test
/// what a node refuses).
pub async fn push(
    layout: &Path,
    reference: &str,
    plain_http_registries: &[String],
    registries: &BTreeMap<String, RegistryAccess>,
) -> Result<String, FetchError> {
    // Pushes go to the registry the reference names, never a mirror.
    install_crypto_provider();
    let parsed: Reference = reference
        .parse()
        .map_err(|e| FetchError::InvalidReference {
            reference: reference.to_owned(),
            detail: format!("not an OCI reference (registry/repository:tag): {e}"),
        })?;
    if parsed.digest().is_some() {
        return Err(FetchError::InvalidReference {
            reference: reference.to_owned(),
            detail: "name a tag to push to, not a digest".to_owned(),
        });
    }
    let registry = parsed.registry();

    let meta = fs::metadata(layout).map_err(FetchError::io(reference, "reading", layout))?;
    let _guard;
    let dir = if meta.is_dir() {
        layout.to_owned()
    } else {
        let tmp = std::env::temp_dir().join(format!(
            "installer-push-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        _guard = TempDirGuard(tmp.clone());
        oci::unpack_tar(layout, &tmp).map_err(|e| FetchError::oci(reference, e))?;
        tmp
    };

    let verify_err = |e| FetchError::oci(reference, e);
    let (manifest_digest, manifest_bytes) = oci::read_manifest(&dir).map_err(verify_err)?;
    let manifest = oci::parse_manifest(&manifest_bytes).map_err(verify_err)?;
    let access = entry_for(registries, registry);
    let client = registry_client(
        reference,
        registry,
        plain_http_registries,
        access,
        // Pushing (a tool for tests and image builds) trusts only the
        // per-registry CAs it is given.
        &[],
    )?;
    client
        .auth(&parsed, &registry_auth(access), RegistryOperation::Push)
        .await
        .map_err(|e| registry_error(reference, registry, access, "authenticating", e))?;

    let mut descriptors = vec![(manifest.config.clone(), "the config".to_owned())];
    for layer in &manifest.layers {
        let title = layer
            .annotations
            .get(oci::ANNOTATION_TITLE)
            .cloned()
            .unwrap_or_else(|| "an untitled layer".to_owned());
        descriptors.push((layer.clone(), title));
    }
    let mut pushed = std::collections::BTreeSet::new();
    for (descriptor, what) in descriptors {
        let digest = Digest::parse(&descriptor.digest).ok_or_else(|| {
            verify_err(OciError::BadDigest {
                value: descriptor.digest.clone(),
                context: format!("the manifest's descriptor of {what}"),
            })
        })?;
        if !pushed.insert(digest) {
            continue;
        }
        let path = oci::blob_path(&dir, &digest);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(FetchError::io(reference, "reading", &path))?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(verify_err(OciError::BlobDigest {
                what,
                expected: digest,
                actual,
            }));
        }
        if bytes.len() as u64 != descriptor.size {
            return Err(verify_err(OciError::BlobSize {
                what,
                digest,
                expected: descriptor.size,
                actual: bytes.len() as u64,
            }));
        }
        let step = format!("pushing blob {digest} of {what}");
        let exists = client
            .blob_exists(&parsed, &descriptor.digest)
            .await
            .map_err(|e| registry_error(reference, registry, access, &step, e))?;
        if !exists {
            client
                .push_blob(&parsed, bytes, &descriptor.digest)
                .await
                .map_err(|e| registry_error(reference, registry, access, &step, e))?;
        }
    }
    client
        .push_manifest_raw(
            &parsed,
            manifest_bytes,
            reqwest::header::HeaderValue::from_static(oci::MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(|e| registry_error(reference, registry, access, "pushing the manifest", e))?;
    Ok(manifest_digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files;
    use crate::sign::SigningKey;

    /// Bytes a registry served that do not match their digest fail the
    /// fetch as a verification failure, which no other mirror may mend.
    #[test]
    fn a_registry_digest_mismatch_is_a_verification_failure() {
        let error =
            OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
                expected: format!("sha256:{}", "a".repeat(64)),
                actual: format!("sha256:{}", "b".repeat(64)),
            });
        let sorted = registry_error(
            "reg/talos/installer@sha256:aa",
            "reg",
            None,
            "pulling the manifest",
            error,
        );
        assert!(
            matches!(
                &sorted,
                FetchError::Verify {
                    source: crate::oci::OciError::RegistryDigest { .. },
                    ..
                }
            ),
            "{sorted:?}"
        );
        assert!(
            !try_next(&sorted),
            "a mismatch must not give way to the next source"
        );
        assert!(
            sorted.to_string().contains("does not match its digest"),
            "{sorted}"
        );
    }
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    struct Fixture {
        tmp: tempfile::TempDir,
        key: SigningKey,
        layout: PathBuf,
        digest: Digest,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            fs::create_dir(&src).unwrap();
            let mut sources = Vec::new();
            for name in files::ALL {
                let path = src.join(name);
                fs::write(&path, format!("{name} bytes\n").repeat(3000)).unwrap();
                sources.push((name, path));
            }
            let refs: Vec<(&str, &Path)> = sources.iter().map(|(n, p)| (*n, p.as_path())).collect();
            let key =
                SigningKey::from_pem(SigningKey::generate().unwrap().as_bytes(), "k").unwrap();
            let layout = tmp.path().join("layout");
            let digest = oci::write_layout(&layout, "v2.0.0", &refs, &key).unwrap();
            Self {
                tmp,
                key,
                layout,
                digest,
            }
        }

        fn opts(&self, plain: Vec<String>) -> FetchOptions {
            FetchOptions {
                plain_http_registries: plain,
                registries: Registries::default(),
                trusted: TrustedKeys::from_pem(self.key.public_key_pem().as_bytes(), "k").unwrap(),
            }
        }

        fn work(&self, name: &str) -> PathBuf {
            self.tmp.path().join(name)
        }

        /// Checks a fetched image is the fixture's, extracting it.
        fn check(&self, image: &VerifiedImage, name: &str) {
            assert_eq!(image.manifest_digest, self.digest);
            assert_eq!(image.version, "v2.0.0");
            assert_eq!(image.signed_by, self.key.fingerprint());
            let out = self.work(name);
            oci::extract(image, &out).unwrap();
            for file in files::ALL {
                assert_eq!(
                    fs::read_to_string(out.join(file)).unwrap(),
                    format!("{file} bytes\n").repeat(3000)
                );
            }
        }
    }

    async fn fetch_lines(
        reference: &str,
        work: &Path,
        opts: &FetchOptions,
    ) -> (Result<VerifiedImage, FetchError>, Vec<String>) {
        let mut lines = Vec::new();
        let result = fetch(reference, work, opts, &mut |l| lines.push(l)).await;
        (result, lines)
    }

    #[test]
    fn references_classified() {
        assert_eq!(
            classify("/srv/installer.tar").unwrap(),
            Source::Path("/srv/installer.tar".into())
        );
        assert_eq!(
            classify("file:///srv/layout").unwrap(),
            Source::Path("/srv/layout".into())
        );
        assert_eq!(
            classify("https://example.com/i.tar").unwrap(),
            Source::Url("https://example.com/i.tar".into())
        );
        let Source::Registry(r) = classify("10.0.2.2:5000/talos/installer:v2").unwrap() else {
            panic!("not a registry reference");
        };
        assert_eq!(r.registry(), "10.0.2.2:5000");
        assert_eq!(r.repository(), "talos/installer");
        assert_eq!(r.tag(), Some("v2"));
        let Source::Registry(r) = classify("talos/installer:v2").unwrap() else {
            panic!("not a registry reference");
        };
        assert_eq!(r.registry(), "docker.io");

        for bad in [
            "",
            "file://relative/x",
            "ftp://host/x",
            "./layout",
            "Upper/Case:tag",
            "host/repo:bad tag",
        ] {
            let err = classify(bad).unwrap_err();
            assert!(
                matches!(err, FetchError::InvalidReference { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12_897_485), "12.3 MiB");
    }

    #[tokio::test]
    async fn fetch_layout_directory_and_tar() {
        let fx = Fixture::new();
        let opts = fx.opts(vec![]);

        let dir_ref = fx.layout.display().to_string();
        let (image, lines) = fetch_lines(&dir_ref, &fx.work("w1"), &opts).await;
        let image = image.unwrap();
        fx.check(&image, "out1");
        assert_eq!(lines[0], format!("reading layout {dir_ref}"));
        assert!(
            lines.contains(&format!(
                "verified signature (key {})",
                fx.key.fingerprint()
            )),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"verified vmlinuz (41.0 KiB)".to_owned()),
            "{lines:?}"
        );

        let tar = fx.work("image.tar");
        oci::pack_tar(&fx.layout, &tar).unwrap();
        let tar_ref = format!("file://{}", tar.display());
        let (image, _) = fetch_lines(&tar_ref, &fx.work("w2"), &opts).await;
        let image = image.unwrap();
        assert!(image.files[files::VMLINUZ].path.starts_with(fx.work("w2")));
        fx.check(&image, "out2");

        // A second fetch into the same work dir starts clean.
        let (image, _) = fetch_lines(&tar_ref, &fx.work("w2"), &opts).await;
        fx.check(&image.unwrap(), "out3");

        let (err, _) = fetch_lines("/no/such/image.tar", &fx.work("w3"), &opts).await;
        assert!(matches!(err, Err(FetchError::NotFound { .. })), "{err:?}");

        let other = SigningKey::from_pem(SigningKey::generate().unwrap().as_bytes(), "o").unwrap();
        let wrong = FetchOptions {
            plain_http_registries: vec![],
            registries: Registries::default(),
            trusted: TrustedKeys::from_pem(other.public_key_pem().as_bytes(), "o").unwrap(),
        };
        let (err, _) = fetch_lines(&tar_ref, &fx.work("w4"), &wrong).await;
        let err = err.unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::Verify {
                    source: OciError::SignatureRejected(SignError::NoMatch { .. }),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("{tar_ref}: signature: ")),
            "{err}"
        );

        let (err, _) = fetch_lines(&tar_ref, &fx.work("w5"), &FetchOptions::default()).await;
        assert!(
            matches!(
                err,
                Err(FetchError::Verify {
                    source: OciError::SignatureRejected(SignError::NoTrustedKeys),
                    ..
                })
            ),
            "{err:?}"
        );
    }

    /// Serves `body` with `status` to each of `count` connections on
    /// loopback; returns the base URL.
    fn serve_http(status: &'static str, body: Vec<u8>, count: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(count) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body).unwrap();
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn fetch_tar_over_http() {
        let fx = Fixture::new();
        let tar = fx.work("image.tar");
        oci::pack_tar(&fx.layout, &tar).unwrap();
        let base = serve_http("200 OK", fs::read(&tar).unwrap(), 1);
        let url = format!("{base}/images/installer.tar");
        let (image, lines) = fetch_lines(&url, &fx.work("w"), &fx.opts(vec![])).await;
        fx.check(&image.unwrap(), "out");
        assert_eq!(lines[0], format!("downloading {url}"));
        assert!(!fx.work("w").join("download.tar").exists());

        let base = serve_http("404 Not Found", b"no".to_vec(), 1);
        let (err, _) =
            fetch_lines(&format!("{base}/x.tar"), &fx.work("w2"), &fx.opts(vec![])).await;
        assert!(matches!(err, Err(FetchError::NotFound { .. })), "{err:?}");

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (err, _) = fetch_lines(
            &format!("http://{closed}/x.tar"),
            &fx.work("w3"),
            &fx.opts(vec![]),
        )
        .await;
        assert!(
            matches!(err, Err(FetchError::Unreachable { .. })),
            "{err:?}"
        );
    }

    /// Debian's registry (distribution 2.8) on a loopback port, stopped
    /// when dropped.
    struct Registry {
        child: Child,
        addr: String,
        _dir: tempfile::TempDir,
    }

    impl Registry {
        const BINARY: &str = "/usr/bin/docker-registry";

        fn start() -> Self {
            Self::start_with(|_| String::new())
        }

        /// A registry whose config has `extra` appended; `extra` gets the
        /// registry's directory, for files it names.
        fn start_with(extra: impl FnOnce(&Path) -> String) -> Self {
            assert!(
                Path::new(Self::BINARY).exists(),
                "{} is missing: run scripts/setup (it installs Debian's docker-registry, \
                 which this test runs on loopback)",
                Self::BINARY
            );
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\nhttp:\n  addr: {addr}\n{}",
                    dir.path().join("data").display(),
                    extra(dir.path())
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.path().join("log")).unwrap();
            let child = Command::new(Self::BINARY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut registry = Self {
                child,
                addr,
                _dir: dir,
            };
            registry.wait_ready();
            registry
        }

        fn wait_ready(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    let log = fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
                    panic!("docker-registry exited with {status}: {log}");
                }
                if let Ok(mut stream) = TcpStream::connect(&self.addr) {
                    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                    let mut answer = String::new();
                    // Any HTTP answer will do: 401 when it wants credentials,
                    // 400 for plain http on its TLS port.
                    if stream.write_all(request.as_bytes()).is_ok()
                        && stream.read_to_string(&mut answer).is_ok()
                        && answer.starts_with("HTTP/1.")
                    {
                        return;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "docker-registry did not answer GET /v2/ on {} within 15 s",
                    self.addr
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn registry_push_fetch_and_tamper() {
        let registry = Registry::start();
        let fx = Fixture::new();
        let plain = vec![registry.addr.clone()];
        let opts = fx.opts(plain.clone());

        // Push, pull back by tag and by digest.
        let tag_ref = format!("{}/talos/installer:v2", registry.addr);
        let pushed = push(&fx.layout, &tag_ref, &plain, &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(pushed, fx.digest.to_string());
        let (image, lines) = fetch_lines(&tag_ref, &fx.work("w1"), &opts).await;
        let image = image.unwrap();
        fx.check(&image, "out1");
        assert_eq!(lines[0], format!("pulling {tag_ref}"));
        assert_eq!(
            lines[1],
            format!("verified signature (key {})", fx.key.fingerprint())
        );
        assert!(
            lines.contains(&"fetched initramfs.xz (55.7 KiB)".to_owned()),
            "{lines:?}"
        );

        let digest_ref = format!("{}/talos/installer@{}", registry.addr, fx.digest);
        let (image, _) = fetch_lines(&digest_ref, &fx.work("w2"), &opts).await;
        fx.check(&image.unwrap(), "out2");

        // Pushing the tar form gives the same manifest.
        let tar = fx.work("image.tar");
        oci::pack_tar(&fx.layout, &tar).unwrap();
        let tar_tag = format!("{}/talos/installer:from-tar", registry.addr);
        assert_eq!(
            push(&tar, &tar_tag, &plain, &BTreeMap::new())
                .await
                .unwrap(),
            fx.digest.to_string()
        );

        // Tampered: one layer's bytes changed, its descriptor updated in
        // the manifest, the signed config unchanged.
        let (_, bytes) = oci::read_manifest(&fx.layout).unwrap();
        let mut manifest: oci::Manifest = serde_json::from_slice(&bytes).unwrap();
        let evil = b"evil kernel\n".repeat(100);
        let evil_digest = oci::write_blob(&fx.layout, &evil).unwrap();
        for layer in &mut manifest.layers {
            if layer.annotations[oci::ANNOTATION_TITLE] == files::VMLINUZ {
                layer.digest = evil_digest.to_string();
                layer.size = evil.len() as u64;
            }
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let tampered_digest = oci::write_blob(&fx.layout, &bytes).unwrap();
        oci::write_index(&fx.layout, &tampered_digest, bytes.len() as u64, "v2.0.0").unwrap();
        let evil_ref = format!("{}/talos/installer:tampered", registry.addr);
        assert_eq!(
            push(&fx.layout, &evil_ref, &plain, &BTreeMap::new())
                .await
                .unwrap(),
            tampered_digest.to_string()
        );
        let (err, _) = fetch_lines(&evil_ref, &fx.work("w3"), &opts).await;
        let err = err.unwrap_err();
        assert!(
            matches!(
                &err,
                FetchError::Verify {
                    source: OciError::LayerMismatch { name, what: "digest", .. },
                    ..
                } if name == files::VMLINUZ
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("layer vmlinuz: digest mismatch"),
            "{err}"
        );
        assert!(
            !fx.work("w3")
                .join("layout")
                .join("blobs/sha256")
                .join(evil_digest.hex())
                .exists()
        );

        // Not there, and not reachable.
        let missing = format!("{}/talos/installer:nope", registry.addr);
        let (err, _) = fetch_lines(&missing, &fx.work("w4"), &opts).await;
        assert!(matches!(err, Err(FetchError::NotFound { .. })), "{err:?}");
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let down = format!("{closed}/talos/installer:v2");
        let down_opts = fx.opts(vec![closed.to_string()]);
        let (err, _) = fetch_lines(&down, &fx.work("w5"), &down_opts).await;
        let err = err.unwrap_err();
        assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("registry {closed}")),
            "{err}"
        );

        let (err, _) = fetch_lines(
            &format!(
                "{}/talos/installer@sha256:{}",
                registry.addr,
                "0".repeat(64)
            ),
            &fx.work("w6"),
            &opts,
        )
        .await;
        assert!(matches!(err, Err(FetchError::NotFound { .. })), "{err:?}");

        let err = push(&fx.layout, &digest_ref, &plain, &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::InvalidReference { .. }), "{err}");
    }

    /// `talos`'s password in [`HTPASSWD`].
    const PASSWORD: &str = "correct horse";
    /// An htpasswd line for user `talos`, bcrypt at the lowest cost (the
    /// registry checks it on every request). Made with Python's
    /// `crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))`.
    const HTPASSWD: &str = "talos:$2b$04$TBItg3Bu4C/ZKi.TghjUa.hHs2l3HZP/rnyOkY.agwwRVSUTk3RnO\n";

    #[tokio::test]
    async fn registry_with_credentials_over_tls() {
        use machinery::config::RegistryCredentials;
        use machinery::pki;

        let now = std::time::SystemTime::now();
        let ca = pki::generate_os_ca(now).unwrap();
        let server = pki::issue_server_cert(
            &ca,
            "registry",
            &["127.0.0.1".parse().unwrap()],
            &[],
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        let registry = Registry::start_with(|dir| {
            fs::write(dir.join("htpasswd"), HTPASSWD).unwrap();
            fs::write(dir.join("cert.pem"), &server.cert_pem).unwrap();
            fs::write(dir.join("key.pem"), &server.key_pem).unwrap();
            format!(
                "  tls:\n    certificate: {d}/cert.pem\n    key: {d}/key.pem\n\
                 auth:\n  htpasswd:\n    realm: test\n    path: {d}/htpasswd\n",
                d = dir.display()
            )
        });
        let fx = Fixture::new();
        let name = registry.addr.clone();
        let access = |password: Option<&str>, ca_pem: Option<&str>, insecure: bool| {
            let access = RegistryAccess {
                auth: password.map(|p| RegistryCredentials {
                    username: "talos".to_owned(),
                    password: p.to_owned(),
                }),
                ca_pem: ca_pem.map(str::to_owned),
                insecure_skip_verify: insecure,
            };
            BTreeMap::from([(name.clone(), access)])
        };
        let opts_with = |config| FetchOptions {
            registries: Registries {
                config,
                ..Registries::default()
            },
            ..fx.opts(vec![])
        };
        let good = access(Some(PASSWORD), Some(&ca.cert_pem), false);
        let tag_ref = format!("{name}/talos/installer:v2");

        // Pushing needs the credentials too.
        let anonymous = access(None, Some(&ca.cert_pem), false);
        let err = push(&fx.layout, &tag_ref, &[], &anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");
        assert_eq!(
            push(&fx.layout, &tag_ref, &[], &good).await.unwrap(),
            fx.digest.to_string()
        );

        // With the credentials and the CA: the image, verified.
        let (image, _) = fetch_lines(&tag_ref, &fx.work("ok"), &opts_with(good)).await;
        fx.check(&image.unwrap(), "ok-out");

        // No credentials, then wrong ones: refused, saying which field to set.
        let field = format!("machine.registries.config.\"{name}\".auth");
        for (work, registries, hint) in [
            (
                "anon",
                anonymous,
                "no credentials are configured for it (or the repository does not exist): set",
            ),
            (
                "wrong",
                access(Some("wrong horse"), Some(&ca.cert_pem), false),
                "check the credentials in",
            ),
        ] {
            let (err, _) = fetch_lines(&tag_ref, &fx.work(work), &opts_with(registries)).await;
            let err = err.unwrap_err();
            assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("registry {name} refused access"))
                    && text.contains(&format!("{hint} {field}")),
                "{text}"
            );
        }

        // Without the CA the registry's certificate is not trusted...
        let (err, _) = fetch_lines(
            &tag_ref,
            &fx.work("noca"),
            &opts_with(access(Some(PASSWORD), None, false)),
        )
        .await;
        let err = err.unwrap_err();
        assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("registry {name}")),
            "{err}"
        );
        // ...unless the CA is trusted for every registry (a
        // TrustedRootsConfig)...
        let trusted = FetchOptions {
            registries: Registries {
                config: access(Some(PASSWORD), None, false),
                trusted_roots: vec![ca.cert_pem.clone()],
                ..Registries::default()
            },
            ..fx.opts(vec![])
        };
        let (image, _) = fetch_lines(&tag_ref, &fx.work("roots"), &trusted).await;
        fx.check(&image.unwrap(), "roots-out");
        // ...or certificate checks are off; the image is still verified.
        let (image, _) = fetch_lines(
            &tag_ref,
            &fx.work("insecure"),
            &opts_with(access(Some(PASSWORD), None, true)),
        )
        .await;
        fx.check(&image.unwrap(), "insecure-out");
    }

    #[test]
    fn registry_names_match_however_written() {
        let map = BTreeMap::from([
            ("docker.io".to_owned(), 1),
            ("Registry.Example:443".to_owned(), 2),
            ("r.example:5000".to_owned(), 3),
        ]);
        for (name, expect) in [
            ("docker.io", Some(1)),
            ("index.docker.io", Some(1)),
            ("registry-1.docker.io", Some(1)),
            ("registry.example", Some(2)),
            ("registry.example:443", Some(2)),
            ("r.example:5000", Some(3)),
            ("r.example", None),
            ("r.example:443", None),
        ] {
            assert_eq!(entry_for(&map, name).copied(), expect, "{name}");
        }
    }

    #[test]
    fn sources_in_order_with_unusable_endpoints_named() {
        use machinery::config::RegistryMirror;

        let opts = |override_path| FetchOptions {
            registries: Registries {
                mirrors: BTreeMap::from([(
                    "r.example".to_owned(),
                    RegistryMirror {
                        endpoints: vec![
                            "https://a.example/v2".to_owned(),
                            "https://b.example".to_owned(),
                            "http://r.example".to_owned(),
                            "https://c.example/proxy".to_owned(),
                        ],
                        skip_fallback: false,
                        override_path,
                    },
                )]),
                config: BTreeMap::new(),
                ..Registries::default()
            },
            ..FetchOptions::default()
        };
        let hosts = |(sources, skipped): (Vec<Endpoint>, Vec<String>)| {
            let hosts: Vec<(String, bool, bool)> = sources
                .into_iter()
                .map(|s| (s.host, s.mirror, s.plain_http))
                .collect();
            (hosts, skipped.len())
        };
        let own = |h: &str, mirror, plain| (h.to_owned(), mirror, plain);
        // The registry's own http endpoint is the registry itself, over
        // http, in its place; no second fallback to it.
        assert_eq!(
            hosts(sources("r.example", &opts(false))),
            (
                vec![
                    own("a.example", true, false),
                    own("b.example", true, false),
                    own("r.example", false, true),
                ],
                1
            )
        );
        // overridePath: only an endpoint whose path is /v2 works.
        assert_eq!(
            hosts(sources("r.example", &opts(true))),
            (
                vec![
                    own("a.example", true, false),
                    own("r.example", false, false)
                ],
                3
            )
        );
        // Another registry, no "*": the registry alone.
        assert_eq!(
            hosts(sources("s.example", &opts(false))),
            (vec![own("s.example", false, false)], 0)
        );
    }

    #[tokio::test]
    async fn mirrors_first_then_the_registry_unless_skip_fallback() {
        use machinery::config::RegistryMirror;

        let mirror = Registry::start();
        let origin = Registry::start();
        let fx = Fixture::new();
        let none = BTreeMap::new();
        // The mirror has v2; the origin has v2 and v3.
        for (registry, tag) in [(&mirror, "v2"), (&origin, "v2"), (&origin, "v3")] {
            let to = format!("{}/talos/installer:{tag}", registry.addr);
            push(&fx.layout, &to, std::slice::from_ref(&registry.addr), &none)
                .await
                .unwrap();
        }
        let opts = |name: &str, skip_fallback: bool| FetchOptions {
            registries: Registries {
                mirrors: BTreeMap::from([(
                    name.to_owned(),
                    RegistryMirror {
                        endpoints: vec![
                            "ftp://nowhere.example".to_owned(),
                            format!("http://{}/v2/", mirror.addr),
                        ],
                        skip_fallback,
                        override_path: false,
                    },
                )]),
                config: BTreeMap::new(),
                ..Registries::default()
            },
            ..fx.opts(vec![origin.addr.clone()])
        };

        // From the mirror: the registry named is never contacted (here
        // nothing listens there). The endpoint it cannot use is said.
        let gone = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let reference = format!("{gone}/talos/installer:v2");
        let (image, lines) = fetch_lines(&reference, &fx.work("m"), &opts(&gone, false)).await;
        fx.check(&image.unwrap(), "m-out");
        assert!(
            lines[0].contains("\"ftp://nowhere.example\" skipped"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            format!("pulling {reference} from mirror {}", mirror.addr)
        );

        // The mirror lacks v3: the origin has it ("*" covers every registry).
        let reference = format!("{}/talos/installer:v3", origin.addr);
        let (image, lines) = fetch_lines(&reference, &fx.work("f"), &opts("*", false)).await;
        fx.check(&image.unwrap(), "f-out");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("not found") && l.ends_with("trying the next source")),
            "{lines:?}"
        );
        assert!(lines.contains(&format!("pulling {reference}")), "{lines:?}");

        // skipFallback: the mirror's answer is final.
        let (err, lines) = fetch_lines(&reference, &fx.work("s"), &opts("*", true)).await;
        let err = err.unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("registry {}", mirror.addr)),
            "{err}"
        );
        assert!(
            !lines.contains(&format!("pulling {reference}")),
            "{lines:?}"
        );

        // Every source failed: the first failure that is not "no such
        // image" is the one reported (here the unreachable mirror, not the
        // registry's missing tag).
        let opts = FetchOptions {
            registries: Registries {
                mirrors: BTreeMap::from([(
                    "*".to_owned(),
                    RegistryMirror {
                        endpoints: vec![format!("http://{gone}")],
                        ..RegistryMirror::default()
                    },
                )]),
                config: BTreeMap::new(),
                ..Registries::default()
            },
            ..fx.opts(vec![origin.addr.clone()])
        };
        let missing = format!("{}/talos/installer:nope", origin.addr);
        let (err, _) = fetch_lines(&missing, &fx.work("u"), &opts).await;
        let err = err.unwrap_err();
        assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("registry {gone}")),
            "{err}"
        );
    }
}
