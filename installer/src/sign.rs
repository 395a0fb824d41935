//! ed25519 keys and signatures for installer images.
//!
//! The image's config blob (its version and every file's digest) is signed
//! with one private key; nodes and host tools carry the public keys they
//! trust. Keys travel in the usual PEM forms so `openssl` can make and read
//! them too: the private key as PKCS#8 (`PRIVATE KEY`), the public key as a
//! SubjectPublicKeyInfo (`PUBLIC KEY`).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// The DER bytes every ed25519 SubjectPublicKeyInfo starts with (RFC 8410):
/// the SEQUENCE, the algorithm identifier 1.3.101.112 and the BIT STRING
/// header; the 32 key bytes follow.
pub const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Bytes of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Bytes of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a key could not be read or a signature not verified.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key file could not be read.
    #[error("reading key file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A key file could not be written.
    #[error("writing key file {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The private key text is not an ed25519 PKCS#8 PEM key.
    #[error("malformed private key in {origin}: {detail}")]
    MalformedPrivateKey {
        /// Where the key came from (a file name).
        origin: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A public key is not an ed25519 SubjectPublicKeyInfo PEM block.
    #[error("malformed public key in {origin}: {detail}")]
    MalformedPublicKey {
        /// Where the key came from (a file name).
        origin: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The text holds no `PUBLIC KEY` PEM block at all.
    #[error("no public key (PEM \"PUBLIC KEY\" block) in {origin}")]
    NoPublicKey {
        /// Where the text came from.
        origin: String,
    },
    /// A directory of trusted keys holds no `*.pub` file.
    #[error("no *.pub key file in directory {}", .path.display())]
    EmptyKeyDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// The system's random source failed while generating a key.
    #[error("generating an ed25519 key: the system random source failed")]
    Generate,
    /// The signature has the wrong length.
    #[error("the signature is {len} bytes; an ed25519 signature is 64")]
    SignatureLength {
        /// Its length.
        len: usize,
    },
    /// Verification was asked for with no trusted key.
    #[error("no trusted keys are configured, so no signature can be accepted")]
    NoTrustedKeys,
    /// No trusted key verifies the signature.
    #[error("the signature matches none of the {count} trusted keys ({fingerprints})")]
    NoMatch {
        /// How many keys were tried.
        count: usize,
        /// Their fingerprints, comma separated.
        fingerprints: String,
    },
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A short, stable name for a public key in messages and annotations: the
/// first 16 hex digits of the SHA-256 of the raw 32 key bytes.
#[must_use]
pub fn fingerprint(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut hex = to_hex(digest.as_ref());
    hex.truncate(16);
    hex
}

/// Renders DER bytes as a PEM block with the given label (64-column base64).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = machinery::base64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The SubjectPublicKeyInfo PEM (`PUBLIC KEY`) of a raw ed25519 key.
#[must_use]
pub fn public_key_to_pem(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    let mut der = Vec::with_capacity(SPKI_PREFIX.len() + PUBLIC_KEY_LEN);
    der.extend_from_slice(&SPKI_PREFIX);
    der.extend_from_slice(public_key);
    pem_encode("PUBLIC KEY", &der)
}

/// The raw key inside an ed25519 SubjectPublicKeyInfo DER.
fn public_key_from_spki(der: &[u8], origin: &str) -> Result<[u8; PUBLIC_KEY_LEN], SignError> {
    let malformed = |detail: String| SignError::MalformedPublicKey {
        origin: origin.to_owned(),
        detail,
    };
    let Some(key) = der.strip_prefix(&SPKI_PREFIX[..]) else {
        return Err(malformed(
            "not an ed25519 SubjectPublicKeyInfo (the algorithm is not 1.3.101.112 Ed25519)"
                .to_owned(),
        ));
    };
    key.try_into().map_err(|_| {
        malformed(format!(
            "the key is {} bytes; an ed25519 key is {PUBLIC_KEY_LEN}",
            key.len()
        ))
    })
}

/// The private key an image is signed with.
///
/// Held only by whoever builds images (the imager); nodes never see it.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material; the fingerprint names the key.
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl SigningKey {
    /// Parses a PKCS#8 PEM (`PRIVATE KEY`) ed25519 key; `origin` names
    /// where it came from in errors.
    ///
    /// Both PKCS#8 v1 (what `openssl genpkey -algorithm ed25519` writes)
    /// and v2 (what [`SigningKey::generate`] writes) are accepted.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Self, SignError> {
        let malformed = |detail: String| SignError::MalformedPrivateKey {
            origin: origin.to_owned(),
            detail,
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                malformed("no PEM \"PRIVATE KEY\" (PKCS#8) block".to_owned())
            }
            other => malformed(format!("bad PEM: {other}")),
        })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| malformed(format!("not an ed25519 PKCS#8 key: {e}")))?;
        Ok(Self { pair })
    }

    /// Reads a PKCS#8 PEM key file.
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let pem = fs::read(path).map_err(|source| SignError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    /// A new random key, as PKCS#8 PEM text (load it with
    /// [`SigningKey::from_pem`]); text because it is meant to be stored.
    pub fn generate() -> Result<String, SignError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SignError::Generate)?;
        Ok(pem_encode("PRIVATE KEY", pkcs8.as_ref()))
    }

    /// Signs `message` (deterministic: ed25519 gives the same signature
    /// for the same key and message, which reproducible images rely on).
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let signature = self.pair.sign(message);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(signature.as_ref());
        out
    }

    /// The raw 32-byte public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The public key as SubjectPublicKeyInfo PEM (`PUBLIC KEY`), the form
    /// nodes are given to trust.
    #[must_use]
    pub fn public_key_pem(&self) -> String {
        public_key_to_pem(&self.public_key())
    }

    /// The public key's [`fingerprint`].
    #[must_use]
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key())
    }
}

/// One trusted public key and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrustedKey {
    key: [u8; PUBLIC_KEY_LEN],
    origin: String,
}

/// The public keys an image signature may be made with.
///
/// A set rather than one key so keys can be rotated: trust old and new,
/// sign with the new, then drop the old.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// An empty set (which verifies nothing).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses every `PUBLIC KEY` PEM block in `text`; `origin` names where
    /// it came from in errors. At least one block is required.
    pub fn from_pem(text: &[u8], origin: &str) -> Result<Self, SignError> {
        let mut keys = Self::new();
        keys.add_pem(text, origin)?;
        Ok(keys)
    }

    /// Reads a key file, or every `*.pub` file of a directory (in name
    /// order); an empty directory is an error, since trusting nothing is
    /// never what was meant.
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let mut keys = Self::new();
        keys.add_path(path)?;
        Ok(keys)
    }

    /// Adds every `PUBLIC KEY` PEM block in `text`; returns how many.
    pub fn add_pem(&mut self, text: &[u8], origin: &str) -> Result<usize, SignError> {
        let mut added = 0;
        for item in SubjectPublicKeyInfoDer::pem_slice_iter(text) {
            let der = item.map_err(|e| SignError::MalformedPublicKey {
                origin: origin.to_owned(),
                detail: format!("bad PEM: {e}"),
            })?;
            let key = public_key_from_spki(der.as_ref(), origin)?;
            self.add_raw(key, origin);
            added += 1;
        }
        if added == 0 {
            return Err(SignError::NoPublicKey {
                origin: origin.to_owned(),
            });
        }
        Ok(added)
    }

    /// Adds a key file, or every `*.pub` file of a directory (see
    /// [`TrustedKeys::load`]).
    pub fn add_path(&mut self, path: &Path) -> Result<(), SignError> {
        let read_err = |source| SignError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        if !meta.is_dir() {
            let text = fs::read(path).map_err(read_err)?;
            self.add_pem(&text, &path.display().to_string())?;
            return Ok(());
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let file = entry.path();
            if file.extension().is_some_and(|ext| ext == "pub") && file.is_file() {
                files.push(file);
            }
        }
        if files.is_empty() {
            return Err(SignError::EmptyKeyDirectory {
                path: path.to_owned(),
            });
        }
        files.sort();
        for file in files {
            let text = fs::read(&file).map_err(|source| SignError::Read {
                path: file.clone(),
                source,
            })?;
            self.add_pem(&text, &file.display().to_string())?;
        }
        Ok(())
    }

    /// Adds a raw 32-byte key (a key already present is not added twice).
    pub fn add_raw(&mut self, key: [u8; PUBLIC_KEY_LEN], origin: &str) {
        if !self.keys.iter().any(|k| k.key == key) {
            self.keys.push(TrustedKey {
                key,
                origin: origin.to_owned(),
            });
        }
    }

    /// How many distinct keys are trusted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The [`fingerprint`]s of the trusted keys, in the order added.
    #[must_use]
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| fingerprint(&k.key)).collect()
    }

    /// Checks that one of the trusted keys made `signature` over
    /// `message`; returns that key's [`fingerprint`] (for the log line
    /// saying who signed).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<String, SignError> {
        if self.keys.is_empty() {
            return Err(SignError::NoTrustedKeys);
        }
        if signature.len() != SIGNATURE_LEN {
            return Err(SignError::SignatureLength {
                len: signature.len(),
            });
        }
        for k in &self.keys {
            if UnparsedPublicKey::new(&ED25519, &k.key[..])
                .verify(message, signature)
                .is_ok()
            {
                return Ok(fingerprint(&k.key));
            }
        }
        Err(SignError::NoMatch {
            count: self.keys.len(),
            fingerprints: self.fingerprints().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key() -> SigningKey {
        let pem = SigningKey::generate().unwrap();
        SigningKey::from_pem(pem.as_bytes(), "test").unwrap()
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = new_key();
        let trusted = TrustedKeys::from_pem(key.public_key_pem().as_bytes(), "test").unwrap();
        let signature = key.sign(b"the config bytes");
        let by = trusted.verify(b"the config bytes", &signature).unwrap();
        assert_eq!(by, key.fingerprint());
        assert_eq!(by.len(), 16);
        // Deterministic.
        assert_eq!(signature, key.sign(b"the config bytes"));
    }

    #[test]
    fn wrong_key_refused() {
        let signer = new_key();
        let other = new_key();
        let trusted = TrustedKeys::from_pem(other.public_key_pem().as_bytes(), "other").unwrap();
        let err = trusted
            .verify(b"message", &signer.sign(b"message"))
            .unwrap_err();
        assert!(matches!(err, SignError::NoMatch { count: 1, .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("matches none of the 1 trusted keys"),
            "{text}"
        );
        assert!(text.contains(&other.fingerprint()), "{text}");
    }

    #[test]
    fn flipped_message_byte_refused() {
        let key = new_key();
        let trusted = TrustedKeys::from_pem(key.public_key_pem().as_bytes(), "k").unwrap();
        let mut message = b"version v1.2.3 and digests".to_vec();
        let signature = key.sign(&message);
        message[3] ^= 1;
        assert!(matches!(
            trusted.verify(&message, &signature),
            Err(SignError::NoMatch { .. })
        ));
        let mut bad_sig = signature;
        bad_sig[0] ^= 0x80;
        message[3] ^= 1;
        assert!(trusted.verify(&message, &bad_sig).is_err());
        assert!(trusted.verify(&message, &signature).is_ok());
        assert!(matches!(
            trusted.verify(&message, &signature[..63]),
            Err(SignError::SignatureLength { len: 63 })
        ));
    }

    #[test]
    fn empty_set_verifies_nothing() {
        let key = new_key();
        let err = TrustedKeys::new()
            .verify(b"m", &key.sign(b"m"))
            .unwrap_err();
        assert!(matches!(err, SignError::NoTrustedKeys));
    }

    #[test]
    fn pem_round_trip() {
        let pem = SigningKey::generate().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"), "{pem}");
        let key = SigningKey::from_pem(pem.as_bytes(), "a").unwrap();
        let again = SigningKey::from_pem(pem.as_bytes(), "b").unwrap();
        assert_eq!(key.public_key(), again.public_key());

        let public = key.public_key_pem();
        assert!(
            public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{public}"
        );
        // 44 DER bytes are 60 base64 characters: one line.
        assert_eq!(public.lines().count(), 3, "{public}");
        let der = machinery::base64::decode(public.lines().nth(1).unwrap()).unwrap();
        assert_eq!(der.len(), 44);
        assert_eq!(der[..12], SPKI_PREFIX);
        assert_eq!(der[12..], key.public_key());

        let trusted = TrustedKeys::from_pem(public.as_bytes(), "p").unwrap();
        assert_eq!(trusted.fingerprints(), vec![key.fingerprint()]);
    }

    #[test]
    fn pkcs8_v1_key_accepted() {
        // ring writes PKCS#8 v2: 16 header bytes, the 32-byte seed, then
        // the public key. openssl writes v1, the same seed without the
        // public key; both must give the same key.
        let v2_pem = SigningKey::generate().unwrap();
        let v2_der = PrivatePkcs8KeyDer::from_pem_slice(v2_pem.as_bytes()).unwrap();
        let seed = &v2_der.secret_pkcs8_der()[16..48];
        let mut v1 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        v1.extend_from_slice(seed);
        let v1_key = SigningKey::from_pem(pem_encode("PRIVATE KEY", &v1).as_bytes(), "v1").unwrap();
        let v2_key = SigningKey::from_pem(v2_pem.as_bytes(), "v2").unwrap();
        assert_eq!(v1_key.public_key(), v2_key.public_key());
    }

    #[test]
    fn several_blocks_and_duplicates() {
        let a = new_key();
        let b = new_key();
        let text = format!(
            "# comment lines between blocks are fine\n{}{}{}",
            a.public_key_pem(),
            b.public_key_pem(),
            a.public_key_pem()
        );
        let trusted = TrustedKeys::from_pem(text.as_bytes(), "keys.pem").unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.verify(b"x", &b.sign(b"x")).is_ok());
        assert!(trusted.verify(b"x", &a.sign(b"x")).is_ok());
    }

    #[test]
    fn malformed_public_keys_named() {
        let err = TrustedKeys::from_pem(b"nothing here\n", "keys.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no public key (PEM \"PUBLIC KEY\" block) in keys.pem"
        );

        // An RSA-looking SPKI: right label, wrong algorithm.
        let bogus = pem_encode("PUBLIC KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        let err = TrustedKeys::from_pem(bogus.as_bytes(), "rsa.pub").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed public key in rsa.pub: "),
            "{err}"
        );

        let mut short = SPKI_PREFIX.to_vec();
        short.extend_from_slice(&[7; 31]);
        let err = TrustedKeys::from_pem(pem_encode("PUBLIC KEY", &short).as_bytes(), "short.pub")
            .unwrap_err();
        assert!(err.to_string().contains("31 bytes"), "{err}");

        let err = SigningKey::from_pem(b"-----BEGIN PUBLIC KEY-----\n", "k.pem").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed private key in k.pem"),
            "{err}"
        );
    }

    #[test]
    fn key_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let a = new_key();
        let b = new_key();
        fs::write(dir.path().join("a.pub"), a.public_key_pem()).unwrap();
        fs::write(dir.path().join("b.pub"), b.public_key_pem()).unwrap();
        fs::write(dir.path().join("notes.txt"), "not a key").unwrap();

        let one = TrustedKeys::load(&dir.path().join("a.pub")).unwrap();
        assert_eq!(one.fingerprints(), vec![a.fingerprint()]);

        let all = TrustedKeys::load(dir.path()).unwrap();
        assert_eq!(all.fingerprints(), vec![a.fingerprint(), b.fingerprint()]);

        let empty = tempfile::tempdir().unwrap();
        let err = TrustedKeys::load(empty.path()).unwrap_err();
        assert!(matches!(err, SignError::EmptyKeyDirectory { .. }), "{err}");

        let err = TrustedKeys::load(&dir.path().join("missing.pub")).unwrap_err();
        assert!(err.to_string().contains("missing.pub"), "{err}");

        let pem_path = dir.path().join("signing.pem");
        fs::write(&pem_path, SigningKey::generate().unwrap()).unwrap();
        let key = SigningKey::load(&pem_path).unwrap();
        assert!(format!("{key:?}").contains(&key.fingerprint()));
    }
}
