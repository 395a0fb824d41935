//! The installer image as an OCI image layout.
//!
//! An OCI layout (image-spec `image-layout.md`) is what registries, `oras`
//! and `skopeo` already move around, so the image needs no transport of its
//! own: a directory (or a tar of one) can be pushed to any registry and
//! pulled back byte for byte.
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one manifest, ref.name = the version
//! blobs/sha256/<hex>         manifest, config and one blob per file
//! ```
//!
//! What is trusted is the **config blob**, not the manifest: it lists the
//! version and every file's name, digest and size, and the manifest carries
//! an ed25519 signature over its exact bytes
//! ([`ANNOTATION_SIGNATURE`]). Verification ([`verify_layout`],
//! [`verify_parts`]) checks that signature against the trusted keys before
//! reading anything else from the config, then checks that the manifest's
//! layers and every blob's bytes agree with it. Nothing from an image
//! touches a disk before that.
//!
//! Writing is deterministic: the same files, version and key give
//! byte-identical blobs (ed25519 signatures are deterministic), so image
//! builds are reproducible; [`pack_tar`] keeps that for the tar form.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files;
use crate::sign::{SignError, SigningKey, TrustedKeys, to_hex};

/// The layout marker file's name.
pub const LAYOUT_FILE: &str = "oci-layout";
/// The layout marker file's content.
pub const LAYOUT_CONTENT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// The layout's index file.
pub const INDEX_FILE: &str = "index.json";
/// The file [`extract`] writes next to the image files: version and
/// manifest digest, for the installer to record what it installed.
pub const IMAGE_JSON: &str = "image.json";

/// Media type of `index.json`.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The manifest's `artifactType`: what kind of artifact this is.
pub const ARTIFACT_TYPE: &str = "application/vnd.talos-rs.installer.v1";
/// Media type of the (signed) config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.talos-rs.installer.config.v1+json";
/// Media type of every file layer.
pub const FILE_MEDIA_TYPE: &str = "application/vnd.talos-rs.installer.file.v1";
/// Layer annotation: the file name.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Index annotation: the image's version (its tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifest annotation: standard base64 of the ed25519 signature over the
/// exact config blob bytes.
pub const ANNOTATION_SIGNATURE: &str = "dev.talos-rs.installer.signature";
/// Manifest annotation: the signing key's fingerprint (informational; the
/// signature is checked against every trusted key).
pub const ANNOTATION_KEY: &str = "dev.talos-rs.installer.key";

/// The most bytes `index.json`, the manifest or the config may have: they
/// are read whole, and real ones are a few KiB.
pub const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;

/// A SHA-256 content digest (`sha256:<hex>` in text).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// A digest from its 32 raw bytes (a hash computed elsewhere, such as
    /// while streaming a download).
    #[must_use]
    pub fn from_raw(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses `sha256:` and 64 lower-case hex digits (the only form the
    /// spec allows for sha256); `None` for anything else.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let nibble = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// The 64 hex digits (the blob's file name under `blobs/sha256`).
    #[must_use]
    pub fn hex(&self) -> String {
        to_hex(&self.0)
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Why an image layout could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file operation failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The directory is not an OCI layout or not one of ours.
    #[error("{}: {detail}", .path.display())]
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A metadata file or blob is bigger than [`MAX_METADATA_BYTES`].
    #[error("{what} is {size} bytes, more than the {MAX_METADATA_BYTES} allowed")]
    TooLarge {
        /// Which file.
        what: String,
        /// Its size.
        size: u64,
    },
    /// JSON that does not parse as what it should be.
    #[error("{what} is not valid: {detail}")]
    Json {
        /// Which document ("index.json", "the manifest", ...).
        what: String,
        /// The parser's message.
        detail: String,
    },
    /// A digest string that is not `sha256:` and 64 hex digits.
    #[error("malformed digest {value:?} in {context}")]
    BadDigest {
        /// The text.
        value: String,
        /// Where it was found.
        context: String,
    },
    /// A blob's bytes do not hash to the digest that names them.
    /// What a registry served does not match its digest (checked by the
    /// registry client: a pinned `@sha256:`, or `Docker-Content-Digest`).
    #[error("{server}, {step}: the content does not match its digest: {detail}")]
    RegistryDigest {
        /// The registry.
        server: String,
        /// What was being fetched.
        step: String,
        /// The client's words.
        detail: String,
    },
    #[error("blob {expected} of {what}: digest mismatch (got {actual})")]
    BlobDigest {
        /// Which blob ("the manifest", "the config", a file name).
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest its bytes have.
        actual: Digest,
    },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest} of {what}: size mismatch (expected {expected} bytes, got {actual})")]
    BlobSize {
        /// Which blob.
        what: String,
        /// Its digest.
        digest: Digest,
        /// The size it should have.
        expected: u64,
        /// The size it has.
        actual: u64,
    },
    /// A blob the manifest or config names is not there.
    #[error("blob {digest} of {what} is missing ({})", .path.display())]
    BlobMissing {
        /// Which blob.
        what: String,
        /// Its digest.
        digest: Digest,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The manifest is not an installer image manifest.
    #[error("manifest: {detail}")]
    Manifest {
        /// What is wrong.
        detail: String,
    },
    /// The signature is absent, malformed or made by no trusted key.
    #[error("signature: {detail}")]
    Signature {
        /// What is wrong.
        detail: String,
    },
    /// The signature did not verify.
    #[error("signature: {0}")]
    SignatureRejected(#[from] SignError),
    /// A file every image carries is not in it.
    #[error("missing file {name}")]
    MissingFile {
        /// The file.
        name: &'static str,
    },
    /// A file name that is not one of [`files::ALL`].
    #[error("unexpected file name {name}")]
    UnexpectedFile {
        /// The name (untrusted text, shown escaped).
        name: String,
    },
    /// A file listed twice.
    #[error("file {name} is listed twice")]
    DuplicateFile {
        /// The file.
        name: String,
    },
    /// The manifest's layer for a file disagrees with the signed config.
    #[error(
        "layer {name}: {what} mismatch: the manifest says {manifest}, the signed config says {config}"
    )]
    LayerMismatch {
        /// The file.
        name: String,
        /// "digest" or "size".
        what: &'static str,
        /// The manifest's value.
        manifest: String,
        /// The config's value.
        config: String,
    },
    /// A manifest layer that is no signed file.
    #[error("manifest layer {digest}: {detail}")]
    BadLayer {
        /// The layer's digest text.
        digest: String,
        /// What is wrong.
        detail: String,
    },
    /// A tar archive that is not a plain tar of a layout.
    #[error("tar {}: {detail}", .path.display())]
    Tar {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Invalid arguments to [`write_layout`].
    #[error("writing layout {}: {detail}", .path.display())]
    Write {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OciError + 'a {
    move |source| OciError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// An OCI content descriptor (image-spec `descriptor.md`), the fields we
/// use. Field order is the serialization order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// Annotations (the file name of a layer, the version in the index).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (image-spec `manifest.md`), the fields we use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// [`ARTIFACT_TYPE`].
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The config blob ([`CONFIG_MEDIA_TYPE`]).
    pub config: Descriptor,
    /// One layer per file.
    pub layers: Vec<Descriptor>,
    /// The signature and key fingerprint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (`index.json`), the fields we use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`INDEX_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// The manifests; ours has exactly one.
    pub manifests: Vec<Descriptor>,
}

/// One file in the signed config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The file name, one of [`files::ALL`].
    pub name: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The signed config blob: what an image is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The image's version.
    pub version: String,
    /// Every file, sorted by name.
    pub files: Vec<ConfigFile>,
}

/// What a verified signature vouches for: the version and each file's
/// digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedContents {
    /// The image's version.
    pub version: String,
    /// The fingerprint of the trusted key that made the signature.
    pub signed_by: String,
    /// Every file of [`files::ALL`]: its digest and size.
    pub files: BTreeMap<String, (Digest, u64)>,
}

/// A file of a verified image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    /// The blob holding it (its bytes were hashed and matched).
    pub path: PathBuf,
    /// Its digest, as signed.
    pub digest: Digest,
    /// Its size, as signed.
    pub size: u64,
}

/// An image whose signature and every blob were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    /// The image's version (from the signed config).
    pub version: String,
    /// The manifest's digest (what a registry calls the image).
    pub manifest_digest: Digest,
    /// The fingerprint of the trusted key that signed it.
    pub signed_by: String,
    /// Every file of [`files::ALL`], by name.
    pub files: BTreeMap<String, VerifiedFile>,
}

/// What [`extract`] records in [`IMAGE_JSON`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The image's version.
    pub version: String,
    /// `sha256:<hex>` of its manifest.
    pub manifest_digest: String,
}

/// Where a blob lives in a layout directory.
#[must_use]
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join("sha256").join(digest.hex())
}

/// Copies `reader` to `writer`, returning the SHA-256 and length of what
/// passed through.
fn copy_hashing(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<(Digest, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((Digest(out), total))
}

/// The SHA-256 and size of a file's bytes.
fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let mut file = File::open(path)?;
    copy_hashing(&mut file, &mut io::sink())
}

/// Reads a small file whole, refusing more than [`MAX_METADATA_BYTES`].
fn read_small(path: &Path, what: &str) -> Result<Vec<u8>, OciError> {
    let file = File::open(path).map_err(io_err("reading", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(OciError::TooLarge {
            what: what.to_owned(),
            size,
        });
    }
    Ok(bytes)
}

fn parse_digest(value: &str, context: &str) -> Result<Digest, OciError> {
    Digest::parse(value).ok_or_else(|| OciError::BadDigest {
        value: value.to_owned(),
        context: context.to_owned(),
    })
}

/// Checks that `names` are exactly [`files::ALL`]: every name known, none
/// twice, none missing.
fn check_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), OciError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !files::ALL.contains(&name) {
            return Err(OciError::UnexpectedFile {
                name: name.escape_debug().to_string(),
            });
        }
        if !seen.insert(name) {
            return Err(OciError::DuplicateFile {
                name: name.to_owned(),
            });
        }
    }
    for name in files::ALL {
        if !seen.contains(name) {
            return Err(OciError::MissingFile { name });
        }
    }
    Ok(())
}

/// Writes a signed installer image layout into `dir` (created if absent;
/// must be empty if present, so no stale blob ends up in the image).
///
/// `files` are (name, source file) pairs: every name of [`files::ALL`],
/// once. Returns the manifest digest.
pub fn write_layout(
    dir: &Path,
    version: &str,
    files: &[(&str, &Path)],
    key: &SigningKey,
) -> Result<Digest, OciError> {
    let invalid = |detail: String| OciError::Write {
        path: dir.to_owned(),
        detail,
    };
    if version.is_empty() || version.chars().any(char::is_control) {
        return Err(invalid(format!(
            "the version {:?} must be non-empty printable text",
            version
        )));
    }
    check_names(files.iter().map(|(name, _)| *name))?;
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    if fs::read_dir(dir)
        .map_err(io_err("reading", dir))?
        .next()
        .is_some()
    {
        return Err(invalid("the directory is not empty".to_owned()));
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;

    // Copy every file into its blob, hashing on the way.
    let mut sorted: Vec<(&str, &Path)> = files.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut config_files = Vec::with_capacity(sorted.len());
    for (name, source) in sorted {
        let partial = blobs.join(format!(".{name}.partial"));
        let mut input = File::open(source).map_err(io_err("reading", source))?;
        let mut output = File::create(&partial).map_err(io_err("creating", &partial))?;
        let (digest, size) =
            copy_hashing(&mut input, &mut output).map_err(|source_err| OciError::Io {
                action: "copying into the layout",
                path: source.to_owned(),
                source: source_err,
            })?;
        drop(output);
        let blob = blobs.join(digest.hex());
        fs::rename(&partial, &blob).map_err(io_err("renaming", &partial))?;
        config_files.push(ConfigFile {
            name: name.to_owned(),
            digest: digest.to_string(),
            size,
        });
    }

    let config = ImageConfig {
        version: version.to_owned(),
        files: config_files,
    };
    let config_bytes = to_json(&config, "the config")?;
    let config_digest = write_blob(dir, &config_bytes)?;
    let signature = key.sign(&config_bytes);

    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.to_owned(),
            digest: config_digest.to_string(),
            size: config_bytes.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers: config
            .files
            .iter()
            .map(|f| Descriptor {
                media_type: FILE_MEDIA_TYPE.to_owned(),
                digest: f.digest.clone(),
                size: f.size,
                annotations: BTreeMap::from([(ANNOTATION_TITLE.to_owned(), f.name.clone())]),
            })
            .collect(),
        annotations: BTreeMap::from([
            (
                ANNOTATION_SIGNATURE.to_owned(),
                machinery::base64::encode(signature),
            ),
            (ANNOTATION_KEY.to_owned(), key.fingerprint()),
        ]),
    };
    let manifest_bytes = to_json(&manifest, "the manifest")?;
    let manifest_digest = write_blob(dir, &manifest_bytes)?;

    write_index(dir, &manifest_digest, manifest_bytes.len() as u64, version)?;
    let marker = dir.join(LAYOUT_FILE);
    fs::write(&marker, LAYOUT_CONTENT).map_err(io_err("writing", &marker))?;
    Ok(manifest_digest)
}

/// Writes `index.json` naming one manifest.
///
/// Public so tools (and tests) that rewrite a manifest can point the index
/// at the new one.
pub fn write_index(
    dir: &Path,
    manifest_digest: &Digest,
    manifest_size: u64,
    version: &str,
) -> Result<(), OciError> {
    let index = Index {
        schema_version: 2,
        media_type: Some(INDEX_MEDIA_TYPE.to_owned()),
        manifests: vec![Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            digest: manifest_digest.to_string(),
            size: manifest_size,
            annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), version.to_owned())]),
        }],
    };
    let path = dir.join(INDEX_FILE);
    fs::write(&path, to_json(&index, INDEX_FILE)?).map_err(io_err("writing", &path))
}

/// Stores `bytes` as a blob of the layout in `dir`; returns its digest.
pub fn write_blob(dir: &Path, bytes: &[u8]) -> Result<Digest, OciError> {
    let digest = Digest::of(bytes);
    let path = blob_path(dir, &digest);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    fs::write(&path, bytes).map_err(io_err("writing", &path))?;
    Ok(digest)
}

fn to_json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(value).map_err(|e| OciError::Json {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Parses manifest bytes and checks they describe an installer image
/// (schema 2, the OCI manifest media type, our artifact and config types).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, OciError> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| OciError::Json {
        what: "the manifest".to_owned(),
        detail: e.to_string(),
    })?;
    let bad = |detail: String| Err(OciError::Manifest { detail });
    if manifest.schema_version != 2 {
        return bad(format!(
            "schemaVersion is {}, expected 2",
            manifest.schema_version
        ));
    }
    if let Some(mt) = &manifest.media_type
        && mt != MANIFEST_MEDIA_TYPE
    {
        return bad(format!(
            "mediaType is {mt:?}, expected {MANIFEST_MEDIA_TYPE}"
        ));
    }
    if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return bad(format!(
            "artifactType is {:?}, expected {ARTIFACT_TYPE}: not an installer image",
            manifest.artifact_type.as_deref().unwrap_or("(none)")
        ));
    }
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return bad(format!(
            "config mediaType is {:?}, expected {CONFIG_MEDIA_TYPE}",
            manifest.config.media_type
        ));
    }
    Ok(manifest)
}

/// Checks the config blob against its descriptor, then its signature
/// against `trusted`, and only then what it says: exactly the files of
/// [`files::ALL`], each matched by one manifest layer with the same digest
/// and size.
pub fn verify_config(
    manifest: &Manifest,
    config_bytes: &[u8],
    trusted: &TrustedKeys,
) -> Result<SignedContents, OciError> {
    let config_digest = parse_digest(&manifest.config.digest, "the manifest's config")?;
    let actual = Digest::of(config_bytes);
    if actual != config_digest {
        return Err(OciError::BlobDigest {
            what: "the config".to_owned(),
            expected: config_digest,
            actual,
        });
    }
    if config_bytes.len() as u64 != manifest.config.size {
        return Err(OciError::BlobSize {
            what: "the config".to_owned(),
            digest: config_digest,
            expected: manifest.config.size,
            actual: config_bytes.len() as u64,
        });
    }

    // The signature, before anything in the config is believed.
    let Some(encoded) = manifest.annotations.get(ANNOTATION_SIGNATURE) else {
        return Err(OciError::Signature {
            detail: format!("the manifest has no {ANNOTATION_SIGNATURE} annotation"),
        });
    };
    let signature = machinery::base64::decode(encoded).map_err(|e| OciError::Signature {
        detail: format!("the {ANNOTATION_SIGNATURE} annotation is not base64: {e}"),
    })?;
    let signed_by = trusted.verify(config_bytes, &signature)?;

    let config: ImageConfig = serde_json::from_slice(config_bytes).map_err(|e| OciError::Json {
        what: "the config".to_owned(),
        detail: e.to_string(),
    })?;
    check_names(config.files.iter().map(|f| f.name.as_str()))?;
    let mut signed = BTreeMap::new();
    for f in &config.files {
        let digest = parse_digest(&f.digest, &format!("the config entry of {}", f.name))?;
        signed.insert(f.name.clone(), (digest, f.size));
    }

    // The manifest's layers: exactly one per signed file, agreeing with it.
    let mut layers: BTreeMap<&str, &Descriptor> = BTreeMap::new();
    for layer in &manifest.layers {
        let bad = |detail: String| OciError::BadLayer {
            digest: layer.digest.escape_debug().to_string(),
            detail,
        };
        let Some(title) = layer.annotations.get(ANNOTATION_TITLE) else {
            return Err(bad(format!("no {ANNOTATION_TITLE} annotation")));
        };
        if !signed.contains_key(title) {
            return Err(bad(format!(
                "titled {}, which is not a file of the signed config",
                title.escape_debug()
            )));
        }
        if layer.media_type != FILE_MEDIA_TYPE {
            return Err(bad(format!(
                "mediaType is {:?}, expected {FILE_MEDIA_TYPE}",
                layer.media_type
            )));
        }
        if layers.insert(title, layer).is_some() {
            return Err(bad(format!("a second layer titled {title}")));
        }
    }
    for (name, (digest, size)) in &signed {
        let Some(layer) = layers.get(name.as_str()) else {
            return Err(OciError::Manifest {
                detail: format!("no layer titled {name}"),
            });
        };
        if layer.digest != digest.to_string() {
            return Err(OciError::LayerMismatch {
                name: name.clone(),
                what: "digest",
                manifest: layer.digest.escape_debug().to_string(),
                config: digest.to_string(),
            });
        }
        if layer.size != *size {
            return Err(OciError::LayerMismatch {
                name: name.clone(),
                what: "size",
                manifest: format!("{} bytes", layer.size),
                config: format!("{size} bytes"),
            });
        }
    }
    Ok(SignedContents {
        version: config.version,
        signed_by,
        files: signed,
    })
}

/// Hashes the blob of every signed file (found with `blob_path`) and
/// checks it against the signature's digest and size.
pub fn verify_files(
    signed: &SignedContents,
    blob_path: &dyn Fn(&Digest) -> PathBuf,
) -> Result<BTreeMap<String, VerifiedFile>, OciError> {
    let mut out = BTreeMap::new();
    for (name, (digest, size)) in &signed.files {
        let path = blob_path(digest);
        check_blob(&path, name, digest, *size)?;
        out.insert(
            name.clone(),
            VerifiedFile {
                path,
                digest: *digest,
                size: *size,
            },
        );
    }
    Ok(out)
}

/// Checks one blob file's size and SHA-256.
fn check_blob(path: &Path, what: &str, digest: &Digest, size: u64) -> Result<(), OciError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OciError::BlobMissing {
                what: what.to_owned(),
                digest: *digest,
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    // Size first: cheap, and catches a truncated download without hashing.
    if meta.len() != size {
        return Err(OciError::BlobSize {
            what: what.to_owned(),
            digest: *digest,
            expected: size,
            actual: meta.len(),
        });
    }
    let (actual, actual_size) = hash_file(path).map_err(io_err("reading", path))?;
    if actual != *digest {
        return Err(OciError::BlobDigest {
            what: what.to_owned(),
            expected: *digest,
            actual,
        });
    }
    if actual_size != size {
        return Err(OciError::BlobSize {
            what: what.to_owned(),
            digest: *digest,
            expected: size,
            actual: actual_size,
        });
    }
    Ok(())
}

/// Verifies an image given its manifest and config bytes and where its
/// blobs are: the whole check of [`verify_layout`], for images that are
/// not (yet) a layout directory.
///
/// `manifest_digest`, when known (from an index or a pinned reference), is
/// checked against the manifest bytes.
pub fn verify_parts(
    manifest_bytes: &[u8],
    manifest_digest: Option<&Digest>,
    config_bytes: &[u8],
    trusted: &TrustedKeys,
    blob_path: &dyn Fn(&Digest) -> PathBuf,
) -> Result<VerifiedImage, OciError> {
    let actual = Digest::of(manifest_bytes);
    if let Some(expected) = manifest_digest
        && *expected != actual
    {
        return Err(OciError::BlobDigest {
            what: "the manifest".to_owned(),
            expected: *expected,
            actual,
        });
    }
    let manifest = parse_manifest(manifest_bytes)?;
    let signed = verify_config(&manifest, config_bytes, trusted)?;
    let files = verify_files(&signed, blob_path)?;
    Ok(VerifiedImage {
        version: signed.version,
        manifest_digest: actual,
        signed_by: signed.signed_by,
        files,
    })
}

/// The manifest descriptor of a layout's `index.json` (exactly one).
pub fn read_index(dir: &Path) -> Result<Descriptor, OciError> {
    let layout_err = |detail: String| OciError::Layout {
        path: dir.to_owned(),
        detail,
    };
    let marker = dir.join(LAYOUT_FILE);
    let marker_bytes = match fs::read(&marker) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(layout_err(format!(
                "not an OCI image layout (no {LAYOUT_FILE} file)"
            )));
        }
        Err(e) => return Err(io_err("reading", &marker)(e)),
    };
    let version: serde_json::Value =
        serde_json::from_slice(&marker_bytes).map_err(|e| OciError::Json {
            what: format!("{}", marker.display()),
            detail: e.to_string(),
        })?;
    if version.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(layout_err(format!(
            "{LAYOUT_FILE} does not say imageLayoutVersion 1.0.0"
        )));
    }
    let index_path = dir.join(INDEX_FILE);
    let index_bytes = read_small(&index_path, INDEX_FILE)?;
    let index: Index = serde_json::from_slice(&index_bytes).map_err(|e| OciError::Json {
        what: format!("{}", index_path.display()),
        detail: e.to_string(),
    })?;
    if index.schema_version != 2 {
        return Err(layout_err(format!(
            "{INDEX_FILE} schemaVersion is {}, expected 2",
            index.schema_version
        )));
    }
    let [manifest] = <[Descriptor; 1]>::try_from(index.manifests).map_err(|m| {
        layout_err(format!(
            "{INDEX_FILE} lists {} manifests; an installer image has exactly one",
            m.len()
        ))
    })?;
    if manifest.media_type != MANIFEST_MEDIA_TYPE {
        return Err(layout_err(format!(
            "{INDEX_FILE} names a {:?}, expected an image manifest ({MANIFEST_MEDIA_TYPE})",
            manifest.media_type
        )));
    }
    Ok(manifest)
}

/// Reads a blob whole (manifest or config), checking size and digest.
fn read_metadata_blob(
    dir: &Path,
    descriptor: &Descriptor,
    what: &str,
) -> Result<(Digest, Vec<u8>), OciError> {
    let digest = parse_digest(&descriptor.digest, what)?;
    if descriptor.size > MAX_METADATA_BYTES {
        return Err(OciError::TooLarge {
            what: what.to_owned(),
            size: descriptor.size,
        });
    }
    let path = blob_path(dir, &digest);
    if !path.exists() {
        return Err(OciError::BlobMissing {
            what: what.to_owned(),
            digest,
            path,
        });
    }
    let bytes = read_small(&path, what)?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(OciError::BlobDigest {
            what: what.to_owned(),
            expected: digest,
            actual,
        });
    }
    if bytes.len() as u64 != descriptor.size {
        return Err(OciError::BlobSize {
            what: what.to_owned(),
            digest,
            expected: descriptor.size,
            actual: bytes.len() as u64,
        });
    }
    Ok((digest, bytes))
}

/// Reads a layout's manifest: its digest (checked) and bytes.
pub fn read_manifest(dir: &Path) -> Result<(Digest, Vec<u8>), OciError> {
    let descriptor = read_index(dir)?;
    read_metadata_blob(dir, &descriptor, "the manifest")
}

/// Verifies the installer image layout in `dir`: index, manifest digest,
/// config digest and size, the config's signature by one of `trusted`,
/// the file names, each layer against the config, and each blob's bytes.
pub fn verify_layout(dir: &Path, trusted: &TrustedKeys) -> Result<VerifiedImage, OciError> {
    let (manifest_digest, manifest_bytes) = read_manifest(dir)?;
    let manifest = parse_manifest(&manifest_bytes)?;
    let (_, config_bytes) = read_metadata_blob(dir, &manifest.config, "the config")?;
    verify_parts(
        &manifest_bytes,
        Some(&manifest_digest),
        &config_bytes,
        trusted,
        &|digest| blob_path(dir, digest),
    )
}

/// Copies a verified image's files into `to_dir` (created if absent),
/// hashing again while copying so a blob changed since verification is
/// still refused, and records version and manifest digest in
/// [`IMAGE_JSON`].
///
/// The installer binary gets mode 0755, the other files 0644. Each file
/// appears under its name only once complete and checked.
pub fn extract(image: &VerifiedImage, to_dir: &Path) -> Result<(), OciError> {
    fs::create_dir_all(to_dir).map_err(io_err("creating", to_dir))?;
    for (name, file) in &image.files {
        let partial = to_dir.join(format!(".{name}.partial"));
        let target = to_dir.join(name);
        let result = (|| {
            let mut input = File::open(&file.path).map_err(io_err("reading", &file.path))?;
            let mut output = File::create(&partial).map_err(io_err("creating", &partial))?;
            let (digest, size) =
                copy_hashing(&mut input, &mut output).map_err(io_err("extracting", &target))?;
            if digest != file.digest {
                return Err(OciError::BlobDigest {
                    what: name.clone(),
                    expected: file.digest,
                    actual: digest,
                });
            }
            if size != file.size {
                return Err(OciError::BlobSize {
                    what: name.clone(),
                    digest: file.digest,
                    expected: file.size,
                    actual: size,
                });
            }
            let mode = if name == files::INSTALLER {
                0o755
            } else {
                0o644
            };
            output
                .set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err("setting the mode of", &partial))?;
            output.sync_all().map_err(io_err("syncing", &partial))?;
            drop(output);
            fs::rename(&partial, &target).map_err(io_err("renaming", &partial))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&partial);
        }
        result?;
    }
    let info = ImageInfo {
        version: image.version.clone(),
        manifest_digest: image.manifest_digest.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&info).map_err(|e| OciError::Json {
        what: IMAGE_JSON.to_owned(),
        detail: e.to_string(),
    })?;
    let path = to_dir.join(IMAGE_JSON);
    fs::write(&path, bytes).map_err(io_err("writing", &path))
}

/// Reads the [`IMAGE_JSON`] that [`extract`] wrote into `dir`.
pub fn read_image_info(dir: &Path) -> Result<ImageInfo, OciError> {
    let path = dir.join(IMAGE_JSON);
    let bytes = read_small(&path, IMAGE_JSON)?;
    serde_json::from_slice(&bytes).map_err(|e| OciError::Json {
        what: format!("{}", path.display()),
        detail: e.to_string(),
    })
}

/// Packs a layout directory into one tar file (regular files and
/// directories only, in name order, with zero times and owners, so the
/// same layout gives the same bytes).
pub fn pack_tar(layout_dir: &Path, out_tar: &Path) -> Result<(), OciError> {
    // Check it is a layout before packing it.
    read_index(layout_dir)?;
    let out = File::create(out_tar).map_err(io_err("creating", out_tar))?;
    let mut builder = tar::Builder::new(io::BufWriter::new(out));
    pack_dir(&mut builder, layout_dir, Path::new(""), out_tar)?;
    let writer = builder.into_inner().map_err(io_err("writing", out_tar))?;
    let file = writer
        .into_inner()
        .map_err(|e| io_err("writing", out_tar)(e.into_error()))?;
    file.sync_all().map_err(io_err("syncing", out_tar))
}

fn pack_dir(
    builder: &mut tar::Builder<io::BufWriter<File>>,
    root: &Path,
    rel: &Path,
    out_tar: &Path,
) -> Result<(), OciError> {
    let dir = root.join(rel);
    let mut entries = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
        let entry = entry.map_err(io_err("reading", &dir))?;
        entries.push(entry.file_name());
    }
    entries.sort();
    for name in entries {
        let rel_path = rel.join(&name);
        let path = root.join(&rel_path);
        let meta = fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &rel_path, io::empty())
                .map_err(io_err("writing", out_tar))?;
            pack_dir(builder, root, &rel_path, out_tar)?;
        } else if meta.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(meta.len());
            let file = File::open(&path).map_err(io_err("reading", &path))?;
            builder
                .append_data(&mut header, &rel_path, file)
                .map_err(io_err("writing", out_tar))?;
        } else {
            return Err(OciError::Layout {
                path: path.clone(),
                detail: "neither a regular file nor a directory; a layout holds only those"
                    .to_owned(),
            });
        }
    }
    Ok(())
}

/// Unpacks a tar of a layout into `dir` (created if absent). Only regular
/// files and directories with relative paths inside `dir` are accepted:
/// no `..`, no absolute paths, no links or devices.
pub fn unpack_tar(tar_path: &Path, dir: &Path) -> Result<(), OciError> {
    let tar_err = |detail: String| OciError::Tar {
        path: tar_path.to_owned(),
        detail,
    };
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let file = File::open(tar_path).map_err(io_err("reading", tar_path))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|e| tar_err(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_err(format!("corrupt archive: {e}")))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let raw_path = entry
            .path()
            .map_err(|e| tar_err(format!("entry with an unreadable name: {e}")))?
            .into_owned();
        let shown = raw_path.display().to_string().escape_debug().to_string();
        let mut rel = PathBuf::new();
        for component in raw_path.components() {
            match component {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(tar_err(format!(
                        "entry {shown} leaves the directory (absolute or `..`)"
                    )));
                }
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        if kind.is_dir() {
            fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
            }
            let mut out = File::create(&target).map_err(io_err("creating", &target))?;
            io::copy(&mut entry, &mut out).map_err(io_err("unpacking", &target))?;
        } else {
            return Err(tar_err(format!(
                "entry {shown} is a {kind:?}; a layout tar holds only files and directories"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        key: SigningKey,
        trusted: TrustedKeys,
    }

    fn new_key() -> SigningKey {
        SigningKey::from_pem(SigningKey::generate().unwrap().as_bytes(), "test").unwrap()
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().to_owned();
            let src = root.join("src");
            fs::create_dir(&src).unwrap();
            for name in files::ALL {
                fs::write(src.join(name), format!("contents of {name}\n").repeat(100)).unwrap();
            }
            let key = new_key();
            let trusted = TrustedKeys::from_pem(key.public_key_pem().as_bytes(), "test").unwrap();
            Self {
                _tmp: tmp,
                root,
                key,
                trusted,
            }
        }

        fn sources(&self) -> Vec<(&'static str, PathBuf)> {
            files::ALL
                .iter()
                .map(|n| (*n, self.root.join("src").join(n)))
                .collect()
        }

        fn write(&self, name: &str, key: &SigningKey) -> (PathBuf, Digest) {
            let dir = self.root.join(name);
            let sources = self.sources();
            let refs: Vec<(&str, &Path)> = sources.iter().map(|(n, p)| (*n, p.as_path())).collect();
            let digest = write_layout(&dir, "v1.2.3", &refs, key).unwrap();
            (dir, digest)
        }
    }

    /// Rewrites a layout's manifest with `edit` and points the index at
    /// the result, as someone tampering with the manifest would.
    fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
        let (_, bytes) = read_manifest(dir).unwrap();
        let mut manifest: Manifest = serde_json::from_slice(&bytes).unwrap();
        edit(&mut manifest);
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = write_blob(dir, &bytes).unwrap();
        write_index(dir, &digest, bytes.len() as u64, "v1.2.3").unwrap();
    }

    fn config_bytes(dir: &Path) -> Vec<u8> {
        let (_, bytes) = read_manifest(dir).unwrap();
        let manifest = parse_manifest(&bytes).unwrap();
        fs::read(blob_path(
            dir,
            &Digest::parse(&manifest.config.digest).unwrap(),
        ))
        .unwrap()
    }

    fn all_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(
                        p.strip_prefix(dir).unwrap().to_owned(),
                        fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn written_layout_verifies() {
        let fx = Fixture::new();
        let (dir, digest) = fx.write("layout", &fx.key);
        let image = verify_layout(&dir, &fx.trusted).unwrap();
        assert_eq!(image.version, "v1.2.3");
        assert_eq!(image.manifest_digest, digest);
        assert_eq!(image.signed_by, fx.key.fingerprint());
        assert_eq!(
            image
                .files
                .keys()
                .map(String::as_str)
                .collect::<BTreeSet<_>>(),
            files::ALL.into_iter().collect::<BTreeSet<_>>()
        );
        for (name, file) in &image.files {
            let expected = format!("contents of {name}\n").repeat(100);
            assert_eq!(fs::read(&file.path).unwrap(), expected.as_bytes());
            assert_eq!(file.digest, Digest::of(expected.as_bytes()));
            assert_eq!(file.size, expected.len() as u64);
        }

        // The documents say what the format says.
        assert_eq!(
            fs::read_to_string(dir.join(LAYOUT_FILE)).unwrap(),
            LAYOUT_CONTENT
        );
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
        assert_eq!(index["manifests"][0]["digest"], digest.to_string());
        assert_eq!(
            index["manifests"][0]["annotations"][ANNOTATION_REF_NAME],
            "v1.2.3"
        );
        let (_, manifest_bytes) = read_manifest(&dir).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["artifactType"], ARTIFACT_TYPE);
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 6);
        assert_eq!(
            manifest["annotations"][ANNOTATION_KEY],
            fx.key.fingerprint()
        );
        let config: serde_json::Value = serde_json::from_slice(&config_bytes(&dir)).unwrap();
        let names: Vec<&str> = config["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(
            String::from_utf8(config_bytes(&dir))
                .unwrap()
                .starts_with(r#"{"version":"v1.2.3","files":[{"name":"#)
        );
    }

    #[test]
    fn output_is_byte_identical() {
        let fx = Fixture::new();
        let (a, da) = fx.write("a", &fx.key);
        let (b, db) = fx.write("b", &fx.key);
        assert_eq!(da, db);
        let fa = all_files(&a);
        assert_eq!(fa, all_files(&b));
        // 6 files + config + manifest, index.json, oci-layout.
        assert_eq!(fa.len(), 10);

        fx.write("c", &new_key());
        assert_ne!(all_files(&fx.root.join("c")), fa);

        // The tar form too.
        pack_tar(&a, &fx.root.join("a.tar")).unwrap();
        pack_tar(&b, &fx.root.join("b.tar")).unwrap();
        assert_eq!(
            fs::read(fx.root.join("a.tar")).unwrap(),
            fs::read(fx.root.join("b.tar")).unwrap()
        );
    }

    #[test]
    fn flipped_blob_byte_refused() {
        let fx = Fixture::new();
        let (dir, _) = fx.write("layout", &fx.key);
        let image = verify_layout(&dir, &fx.trusted).unwrap();
        let blob = &image.files[files::INITRAMFS];
        let mut bytes = fs::read(&blob.path).unwrap();
        bytes[10] ^= 1;
        fs::write(&blob.path, &bytes).unwrap();
        let err = verify_layout(&dir, &fx.trusted).unwrap_err();
        match &err {
            OciError::BlobDigest { what, expected, .. } => {
                assert_eq!(what, files::INITRAMFS);
                assert_eq!(*expected, blob.digest);
            }
            other => panic!("expected a digest error, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "blob {} of initramfs.xz: digest mismatch (got sha256:",
                blob.digest
            )),
            "{text}"
        );
    }

    #[test]
    fn blob_swapped_after_verify_caught_by_extract() {
        let fx = Fixture::new();
        let (dir, _) = fx.write("layout", &fx.key);
        let image = verify_layout(&dir, &fx.trusted).unwrap();

        let out = fx.root.join("out");
        extract(&image, &out).unwrap();
        for name in files::ALL {
            assert_eq!(
                fs::read(out.join(name)).unwrap(),
                format!("contents of {name}\n").repeat(100).as_bytes()
            );
            let mode = fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                if name == files::INSTALLER {
                    0o755
                } else {
                    0o644
                }
            );
        }
        let info = read_image_info(&out).unwrap();
        assert_eq!(info.version, "v1.2.3");
        assert_eq!(info.manifest_digest, image.manifest_digest.to_string());

        let vmlinuz = &image.files[files::VMLINUZ].path;
        let mut bytes = fs::read(vmlinuz).unwrap();
        bytes[0] ^= 0xff;
        fs::write(vmlinuz, &bytes).unwrap();
        let out2 = fx.root.join("out2");
        let err = extract(&image, &out2).unwrap_err();
        assert!(
            matches!(&err, OciError::BlobDigest { what, .. } if what == files::VMLINUZ),
            "{err}"
        );
        assert!(!out2.join(files::VMLINUZ).exists());
        assert!(!out2.join(".vmlinuz.partial").exists());
    }

    #[test]
    fn config_signed_by_other_key_refused() {
        let fx = Fixture::new();
        let (dir, _) = fx.write("layout", &fx.key);
        let other = new_key();
        let config = config_bytes(&dir);
        edit_manifest(&dir, |m| {
            m.annotations.insert(
                ANNOTATION_SIGNATURE.to_owned(),
                machinery::base64::encode(other.sign(&config)),
            );
            m.annotations
                .insert(ANNOTATION_KEY.to_owned(), other.fingerprint());
        });
        let err = verify_layout(&dir, &fx.trusted).unwrap_err();
        assert!(
            matches!(
                err,
                OciError::SignatureRejected(SignError::NoMatch { count: 1, .. })
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("signature: the signature matches none of the 1 trusted keys"),
            "{err}"
        );
        // Trusting the other key makes it acceptable: the check is the
        // signature, not the annotation naming the key.
        let mut both = fx.trusted.clone();
        both.add_pem(other.public_key_pem().as_bytes(), "other")
            .unwrap();
        assert_eq!(
            verify_layout(&dir, &both).unwrap().signed_by,
            other.fingerprint()
        );
    }

    #[test]
    fn changed_config_refused() {
        // A config listing other digests (and re-hashed into the manifest)
        // no longer matches the signature.
        let fx = Fixture::new();
        let (dir, _) = fx.write("layout", &fx.key);
        let mut config: ImageConfig = serde_json::from_slice(&config_bytes(&dir)).unwrap();
        config.version = "v9.9.9".to_owned();
        let bytes = serde_json::to_vec(&config).unwrap();
        let digest = write_blob(&dir, &bytes).unwrap();
        edit_manifest(&dir, |m| {
            m.config.digest = digest.to_string();
            m.config.size = bytes.len() as u64;
        });
        let err = verify_layout(&dir, &fx.trusted).unwrap_err();
        assert!(matches!(err, OciError::SignatureRejected(_)), "{err}");
    }

    #[test]
    fn missing_signature_refused() {
        let fx = Fixture::new();
        let (dir, _) = fx.write("layout", &fx.key);
        edit_manifest(&dir, |m| {
            m.annotations.remove(ANNOTATION_SIGNATURE);
        });
        let err = verify_layout(&dir, &fx.trusted).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature: the manifest has no dev.talos-rs.installer.signature annotation"
        );
    }

    #[test]
    fn manifest_layer_swapped_refused() {
        // A layer pointing at other bytes (with a digest that matches
        // them) disagrees with the signed config.
        let fx = Fixture::new();
        let (dir, _) = fx.write("layout", &fx.key);
        let evil = write_blob(&dir, b"evil kernel").unwrap();
        edit_manifest(&dir, |m| {
            for layer in &mut m.layers {
                if layer.annotations[ANNOTATION_TITLE] == files::VMLINUZ {
                    layer.digest = evil.to_string();
                    layer.size = 11;
                }
            }
        });
        let err = verify_layout(&dir, &fx.trusted).unwrap_err();
        assert!(
            matches!(&err, OciError::LayerMismatch { name, what: "digest", .. } if name == files::VMLINUZ),
            "{err}"
        );
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[test]
    fn tampered_index_and_manifest_refused() {
        let fx = Fixture::new();
        let (dir, digest) = fx.write("layout", &fx.key);
        // A manifest blob changed in place no longer matches its name.
        let path = blob_path(&dir, &digest);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = b' ';
        fs::write(&path, &bytes).unwrap();
        let err = verify_layout(&dir, &fx.trusted).unwrap_err();
        assert!(
            matches!(&err, OciError::BlobDigest { what, .. } if what == "the manifest"),
            "{err}"
        );

        let err = verify_layout(&fx.root.join("src"), &fx.trusted).unwrap_err();
        assert!(err.to_string().contains("not an OCI image layout"), "{err}");
    }

    #[test]
    fn file_names_checked() {
        assert!(check_names(files::ALL).is_ok());
        let mut names = files::ALL.to_vec();
        names[0] = "../x";
        assert_eq!(
            check_names(names.iter().copied()).unwrap_err().to_string(),
            "unexpected file name ../x"
        );
        let err = check_names(files::ALL[1..].iter().copied()).unwrap_err();
        assert_eq!(err.to_string(), "missing file installer");
        let mut twice = files::ALL.to_vec();
        twice.push(files::VMLINUZ);
        assert!(matches!(
            check_names(twice.iter().copied()),
            Err(OciError::DuplicateFile { .. })
        ));

        let fx = Fixture::new();
        let sources = fx.sources();
        let refs: Vec<(&str, &Path)> = sources[1..]
            .iter()
            .map(|(n, p)| (*n, p.as_path()))
            .collect();
        let err = write_layout(&fx.root.join("l"), "v1", &refs, &fx.key).unwrap_err();
        assert_eq!(err.to_string(), "missing file installer");
    }

    #[test]
    fn write_refuses_non_empty_directory() {
        let fx = Fixture::new();
        fx.write("layout", &fx.key);
        let sources = fx.sources();
        let refs: Vec<(&str, &Path)> = sources.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let err = write_layout(&fx.root.join("layout"), "v2", &refs, &fx.key).unwrap_err();
        assert!(
            err.to_string().ends_with("the directory is not empty"),
            "{err}"
        );
    }

    #[test]
    fn tar_round_trip() {
        let fx = Fixture::new();
        let (dir, digest) = fx.write("layout", &fx.key);
        let tar_path = fx.root.join("layout.tar");
        pack_tar(&dir, &tar_path).unwrap();
        let out = fx.root.join("unpacked");
        unpack_tar(&tar_path, &out).unwrap();
        assert_eq!(all_files(&dir), all_files(&out));
        assert_eq!(
            verify_layout(&out, &fx.trusted).unwrap().manifest_digest,
            digest
        );
    }

    /// A one-entry tar whose name is written raw (tar::Builder refuses
    /// `..`, as it should, so the header is made by hand).
    fn raw_tar(name: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn tar_escapes_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("blobs/../../evil", tar::EntryType::Regular),
            ("/tmp/evil", tar::EntryType::Regular),
            ("blobs/link", tar::EntryType::Symlink),
        ] {
            let tar_path = tmp.path().join("bad.tar");
            fs::write(&tar_path, raw_tar(name, kind, b"x")).unwrap();
            let err = unpack_tar(&tar_path, &out).unwrap_err();
            assert!(matches!(err, OciError::Tar { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(!tmp.path().join("evil").exists());

        let ok = tmp.path().join("ok.tar");
        fs::write(
            &ok,
            raw_tar("./dir/file", tar::EntryType::Regular, b"hello"),
        )
        .unwrap();
        unpack_tar(&ok, &out).unwrap();
        assert_eq!(fs::read(out.join("dir/file")).unwrap(), b"hello");
    }

    #[test]
    fn digest_text() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert_eq!(Digest::parse("sha256:BA7816BF"), None);
        assert_eq!(Digest::parse(&d.to_string().to_uppercase()), None);
        assert_eq!(
            Digest::parse(&d.to_string().replace("sha256", "sha512")),
            None
        );
        assert_eq!(Digest::parse("sha256:../../../../etc/passwd"), None);
    }
}
