//! What can go wrong decoding, validating, loading and saving a machine config.
//!
//! Every variant says where the problem is: a document number (1-based
//! position in the YAML stream), a dotted field path such as
//! `machine.network.interfaces[0].addresses[1]`, or a file path.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// One rule a config broke: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    /// Dotted path of the offending field, e.g. `machine.files[0].path`.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Every rule a config broke, in document order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssues(pub(super) Vec<ValidationIssue>);

impl ValidationIssues {
    /// The individual problems.
    #[must_use]
    pub fn as_slice(&self) -> &[ValidationIssue] {
        &self.0
    }

    /// Whether some problem concerns exactly this field path.
    #[must_use]
    pub fn mentions(&self, path: &str) -> bool {
        self.0.iter().any(|issue| issue.path == path)
    }
}

impl fmt::Display for ValidationIssues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [only] => write!(f, "{only}"),
            issues => {
                write!(f, "{} problems: ", issues.len())?;
                for (i, issue) in issues.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{issue}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a machine config could not be decoded, validated, loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The bytes are not well-formed YAML.
    #[error("machine config: YAML syntax error in document {document}: {message}")]
    Syntax {
        /// 1-based position of the document in the stream.
        document: usize,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// 1-based column of the error, when the parser knows it.
        column: Option<usize>,
        /// The parser's description (includes the position).
        message: String,
    },

    /// A document is neither the v1alpha1 document nor an `apiVersion`/`kind` document.
    #[error("machine config: document {document}: {reason}")]
    UnrecognizedDocument {
        /// 1-based position of the document in the stream.
        document: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The stream has no document with `version: v1alpha1`.
    #[error("machine config: no v1alpha1 document (one with `version: v1alpha1`) in the config")]
    MissingV1Alpha1,

    /// The stream has two documents with `version:`.
    #[error(
        "machine config: documents {first} and {second} are both v1alpha1 documents; exactly one is allowed"
    )]
    DuplicateV1Alpha1 {
        /// 1-based position of the first one.
        first: usize,
        /// 1-based position of the second one.
        second: usize,
    },

    /// The `version:` document is not `v1alpha1`.
    #[error(
        "machine config: document {document}: unsupported version {found:?} (only \"v1alpha1\" is supported)"
    )]
    UnsupportedVersion {
        /// 1-based position of the document in the stream.
        document: usize,
        /// The version it declares.
        found: String,
    },

    /// A `kind:` document declares an `apiVersion` other than `v1alpha1`.
    #[error(
        "machine config: document {document} ({kind}): unsupported apiVersion {found:?} (only \"v1alpha1\" is supported)"
    )]
    UnsupportedApiVersion {
        /// 1-based position of the document in the stream.
        document: usize,
        /// The document's kind.
        kind: String,
        /// The apiVersion it declares.
        found: String,
    },

    /// A key the schema does not know.
    #[error("machine config: unknown key \"{key}\" at {at}")]
    UnknownKey {
        /// The unknown key itself.
        key: String,
        /// Path of the mapping that holds it (`top level` for the root).
        at: String,
        /// Full path including the key, e.g. `machine.network.interfacez`.
        path: String,
    },

    /// A value of the wrong YAML type (a string where a boolean belongs, ...).
    #[error("machine config: {path}: {message}")]
    WrongType {
        /// Path of the field.
        path: String,
        /// What was found and what was expected.
        message: String,
    },

    /// Any other schema problem: a missing required key, a number out of range, ...
    #[error("machine config: {path}: {message}")]
    InvalidField {
        /// Path of the field (or of the mapping missing a key).
        path: String,
        /// The decoder's description.
        message: String,
    },

    /// The config decoded but breaks validation rules.
    #[error("machine config: {0}")]
    Validation(ValidationIssues),

    /// Serializing the config back to YAML failed.
    #[error("machine config: cannot serialize to YAML: {message}")]
    Serialize {
        /// The serializer's description.
        message: String,
    },

    /// A file operation failed.
    #[error("machine config: {} {}: {}", .operation, .path.display(), .source)]
    Io {
        /// What was being done (`reading`, `renaming into place`, ...).
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// A config file was read but its contents are not a valid config.
    #[error("{}: {}", .path.display(), .source)]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        source: Box<ConfigError>,
    },
}

impl From<crate::fsutil::WriteError> for ConfigError {
    fn from(e: crate::fsutil::WriteError) -> Self {
        Self::Io {
            operation: e.operation,
            path: e.path,
            source: e.source,
        }
    }
}

impl ConfigError {
    /// The validation problems, when this is a validation error (also inside [`ConfigError::InFile`]).
    #[must_use]
    pub fn validation_issues(&self) -> Option<&ValidationIssues> {
        match self {
            Self::Validation(issues) => Some(issues),
            Self::InFile { source, .. } => source.validation_issues(),
            _ => None,
        }
    }
}
