//! `machine.registries.config`: how the node reaches a private registry.
//!
//! The section stays raw YAML in the config (upstream hands it to
//! containerd), but the parts the node itself uses to pull installer images
//! are read here, once, at validation, so a config with credentials or a CA
//! that cannot work is refused when it is applied
//! ([`MachineConfig::strict_check`](super::MachineConfig::strict_check))
//! rather than when an upgrade needs it. A config persisted before these
//! checks existed still loads; its bad parts are left unused:
//!
//! ```yaml
//! machine:
//!   registries:
//!     config:
//!       registry.example.com:5000:
//!         auth:
//!           username: talos
//!           password: s3cret          # or auth: base64("user:password")
//!         tls:
//!           ca: LS0tLS1CRUdJTi...     # base64 of the PEM of the registry's CA
//!           insecureSkipVerify: false
//! ```
//!
//! Not used for installer pulls: `auth.identityToken` (containerd trades it
//! for a token at the registry's token server, a flow the registry client
//! does not have) and `tls.clientIdentity`. They are kept and round-trip.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::error::ValidationIssue;
use crate::base64;

/// A user name and password for HTTP Basic authentication to a registry
/// (and, with a token server, to get a token).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    /// The user.
    pub username: String,
    /// The password (may be empty).
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the node uses to reach one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAccess {
    /// Credentials, when the config gives some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryCredentials>,
    /// PEM of the CA (or CAs) the registry's certificate chains to, trusted
    /// besides the built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Accept any certificate from the registry. What is pulled is still
    /// checked against its signature and digests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Where to pull one registry's images from: its mirrors in order, then
/// the registry itself unless `skip_fallback`
/// (`machine.registries.mirrors.<name>`; the name `*` stands for every
/// registry without its own entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryMirror {
    /// The endpoints as written (`https://mirror.example:5000`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Never fall back to the registry itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_fallback: bool,
    /// The endpoints' paths replace the API's `/v2` (containerd's
    /// `override_path`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub override_path: bool,
}

/// Everything the node uses to reach registries: what the installer gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registries {
    /// Mirrors per registry name.
    #[serde(default)]
    pub mirrors: BTreeMap<String, RegistryMirror>,
    /// Credentials and TLS settings per registry (or mirror) host.
    #[serde(default)]
    pub config: BTreeMap<String, RegistryAccess>,
    /// CA certificates (PEM) trusted for every registry and download,
    /// beside the image's bundle: the `TrustedRootsConfig` documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_roots: Vec<String>,
}

impl Registries {
    /// Whether there is nothing in it.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.config.is_empty() && self.trusted_roots.is_empty()
    }
}

/// Reads `machine.registries.mirrors`. Containerd reads this section too,
/// with features the installer lacks (endpoint paths, `overridePath`), so
/// nothing here is refused: what the installer cannot use it skips, and
/// says so when it pulls.
pub(super) fn read_mirrors(registries: Option<&Value>) -> BTreeMap<String, RegistryMirror> {
    let Some(mirrors) = registries
        .and_then(|r| r.get("mirrors"))
        .and_then(Value::as_mapping)
    else {
        return BTreeMap::new();
    };
    mirrors
        .iter()
        .filter_map(|(name, mirror)| {
            let name = name.as_str()?;
            let endpoints = mirror
                .get("endpoints")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let flag = |key| mirror.get(key).and_then(Value::as_bool) == Some(true);
            Some((
                name.to_owned(),
                RegistryMirror {
                    endpoints,
                    skip_fallback: flag("skipFallback"),
                    override_path: flag("overridePath"),
                },
            ))
        })
        .collect()
}

/// Reads `machine.registries.config` into one [`RegistryAccess`] per
/// registry name (the key as written, `host` or `host:port`), with every
/// problem found, each with its field path. A part with a problem (say, a
/// CA that is no certificate) is left out of its entry; the rest is kept.
pub(super) fn read(
    registries: Option<&Value>,
) -> (BTreeMap<String, RegistryAccess>, Vec<ValidationIssue>) {
    let mut out = BTreeMap::new();
    let mut issues = Vec::new();
    let mut issue = |path: String, reason: String| issues.push(ValidationIssue { path, reason });
    let Some(config) = registries.and_then(|r| r.get("config")) else {
        return (out, issues);
    };
    let Some(config) = config.as_mapping() else {
        issue(
            "machine.registries.config".to_owned(),
            "must be a mapping of registry names".to_owned(),
        );
        return (out, issues);
    };
    for (name, entry) in config {
        let Some(name) = name.as_str().filter(|n| !n.is_empty()) else {
            issue(
                "machine.registries.config".to_owned(),
                format!("{name:?} is not a registry name"),
            );
            continue;
        };
        let base = format!("machine.registries.config.{name}");
        let mut access = RegistryAccess::default();
        if let Some(auth) = entry.get("auth") {
            match read_auth(&base, auth) {
                Ok(credentials) => access.auth = credentials,
                Err((path, reason)) => issue(path, reason),
            }
        }
        if let Some(tls) = entry.get("tls") {
            match text(tls, "ca") {
                Ok(None) => {}
                Ok(Some(ca)) => match decode_ca(ca) {
                    Ok(pem) => access.ca_pem = Some(pem),
                    Err(reason) => issue(format!("{base}.tls.ca"), reason),
                },
                Err(reason) => issue(format!("{base}.tls.ca"), reason),
            }
            match tls.get("insecureSkipVerify") {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => access.insecure_skip_verify = *b,
                Some(_) => issue(
                    format!("{base}.tls.insecureSkipVerify"),
                    "must be true or false".to_owned(),
                ),
            }
        }
        out.insert(name.to_owned(), access);
    }
    (out, issues)
}

/// A string field of a mapping: absent and empty are both `None`.
fn text<'a>(mapping: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match mapping.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("must be a string".to_owned()),
    }
}

/// `auth`: `username`/`password`, else `auth` (base64 of `user:password`),
/// the order containerd reads them in. `identityToken` alone gives none.
fn read_auth(base: &str, auth: &Value) -> Result<Option<RegistryCredentials>, (String, String)> {
    let field = |key: &str| text(auth, key).map_err(|e| (format!("{base}.auth.{key}"), e));
    let username = field("username")?;
    let password = field("password")?;
    let encoded = field("auth")?;
    field("identityToken")?;
    if let Some(username) = username {
        return Ok(Some(RegistryCredentials {
            username: username.to_owned(),
            password: password.unwrap_or_default().to_owned(),
        }));
    }
    if password.is_some() {
        return Err((
            format!("{base}.auth.username"),
            "is required with a password".to_owned(),
        ));
    }
    let Some(encoded) = encoded else {
        return Ok(None);
    };
    let path = format!("{base}.auth.auth");
    let decoded =
        base64::decode(encoded).map_err(|e| (path.clone(), format!("is not valid base64: {e}")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| (path.clone(), "does not decode to text".to_owned()))?;
    match decoded.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(Some(RegistryCredentials {
            username: user.to_owned(),
            password: password.to_owned(),
        })),
        _ => Err((
            path,
            "must be the base64 of \"username:password\"".to_owned(),
        )),
    }
}

/// `tls.ca`: base64 of a PEM holding at least one certificate.
fn decode_ca(text: &str) -> Result<String, String> {
    let bytes = base64::decode(text).map_err(|e| format!("is not valid base64: {e}"))?;
    let pem = String::from_utf8(bytes).map_err(|_| "does not decode to text".to_owned())?;
    if pem.contains("-----BEGIN CERTIFICATE-----") {
        Ok(pem)
    } else {
        Err("does not hold a PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_yaml(yaml: &str) -> Result<BTreeMap<String, RegistryAccess>, Vec<ValidationIssue>> {
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        match read(Some(&value)) {
            (access, issues) if issues.is_empty() => Ok(access),
            (_, issues) => Err(issues),
        }
    }

    #[test]
    fn credentials_in_either_form() {
        let encoded = base64::encode("bob:p:w");
        let got = read_yaml(&format!(
            "config:\n  a.example:\n    auth:\n      username: alice\n      password: pw\n  \
             b.example:5000:\n    auth:\n      auth: {encoded}\n  \
             c.example:\n    auth:\n      identityToken: tok\n"
        ))
        .unwrap();
        let user = |name: &str| got[name].auth.as_ref().map(|a| a.username.clone());
        assert_eq!(user("a.example").as_deref(), Some("alice"));
        assert_eq!(got["a.example"].auth.as_ref().unwrap().password, "pw");
        assert_eq!(user("b.example:5000").as_deref(), Some("bob"));
        // The password is everything after the first colon.
        assert_eq!(got["b.example:5000"].auth.as_ref().unwrap().password, "p:w");
        assert_eq!(got["c.example"].auth, None);
        // The password never shows in Debug output.
        let debug = format!("{got:?}");
        assert!(
            debug.contains("alice")
                && debug.contains("bob")
                && !debug.contains("\"pw\"")
                && !debug.contains("p:w"),
            "{debug}"
        );
    }

    #[test]
    fn tls_settings() {
        let ca = base64::encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let got = read_yaml(&format!(
            "config:\n  r.example:\n    tls:\n      ca: {ca}\n      insecureSkipVerify: true\n"
        ))
        .unwrap();
        let access = &got["r.example"];
        assert!(
            access
                .ca_pem
                .as_deref()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(access.insecure_skip_verify);
        assert_eq!(access.auth, None);
    }

    #[test]
    fn bad_entries_name_their_field() {
        let not_pem = base64::encode("hello");
        let no_colon = base64::encode("justauser");
        let issues = read_yaml(&format!(
            "config:\n  r.example:\n    auth:\n      auth: '%%%'\n    tls:\n      ca: {not_pem}\n      \
             insecureSkipVerify: 'yes'\n  s.example:\n    auth:\n      password: pw\n  \
             t.example:\n    auth:\n      auth: {no_colon}\n  u.example:\n    auth:\n      username: [1]\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "machine.registries.config.r.example.auth.auth",
                "machine.registries.config.r.example.tls.ca",
                "machine.registries.config.r.example.tls.insecureSkipVerify",
                "machine.registries.config.s.example.auth.username",
                "machine.registries.config.t.example.auth.auth",
                "machine.registries.config.u.example.auth.username",
            ]
        );
        assert!(issues[0].reason.contains("base64"), "{issues:?}");
        assert!(issues[1].reason.contains("PEM certificate"), "{issues:?}");
        assert!(issues[4].reason.contains("username:password"), "{issues:?}");
    }

    #[test]
    fn mirrors_are_read_as_written() {
        let value: Value = serde_yaml_ng::from_str(
            "mirrors:\n  docker.io:\n    endpoints: [https://m1.example, 'http://m2.example:5000/v2']\n    \
             skipFallback: true\n  '*':\n    endpoints: [https://all.example]\n  bad: 3\n",
        )
        .unwrap();
        let mirrors = read_mirrors(Some(&value));
        assert_eq!(
            mirrors["docker.io"],
            RegistryMirror {
                endpoints: vec![
                    "https://m1.example".to_owned(),
                    "http://m2.example:5000/v2".to_owned()
                ],
                skip_fallback: true,
                override_path: false,
            }
        );
        assert_eq!(mirrors["*"].endpoints, ["https://all.example"]);
        assert!(!mirrors["*"].skip_fallback);
        assert!(mirrors["bad"].endpoints.is_empty());
        assert!(read_mirrors(None).is_empty());
    }

    #[test]
    fn no_section_means_no_access() {
        assert!(read(None).0.is_empty() && read(None).1.is_empty());
        assert!(read_yaml("mirrors: {}\n").unwrap().is_empty());
        assert!(read_yaml("config: 3\n").is_err());
    }

    #[test]
    fn access_round_trips_as_json() {
        let access = RegistryAccess {
            auth: Some(RegistryCredentials {
                username: "u".to_owned(),
                password: "p".to_owned(),
            }),
            ca_pem: None,
            insecure_skip_verify: false,
        };
        let json = serde_json::to_string(&access).unwrap();
        assert_eq!(json, r#"{"auth":{"username":"u","password":"p"}}"#);
        assert_eq!(
            serde_json::from_str::<RegistryAccess>(&json).unwrap(),
            access
        );
        assert_eq!(
            serde_json::from_str::<RegistryAccess>("{}").unwrap(),
            RegistryAccess::default()
        );
    }
}
