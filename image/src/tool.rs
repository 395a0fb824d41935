//! Running the external tools an image is made with (`mksquashfs`, `xz`,
//! `apt-get`, `dpkg-deb`).
//!
//! This is a build tool, not PID 1: plain [`std::process::Command`] with
//! captured output is right here. A failure carries the operation, the full
//! command line and the tool's stderr; a missing tool names the Debian
//! package that provides it.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

/// An external tool could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error("{operation}: `{program}` not found; install the Debian package `{package}`")]
    NotFound {
        /// What we were doing.
        operation: &'static str,
        /// The program.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The program could not be started.
    #[error("{operation}: starting `{command}`: {source}")]
    Spawn {
        /// What we were doing.
        operation: &'static str,
        /// The command line.
        command: String,
        /// The cause.
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{operation}: `{command}` failed ({status}): {stderr}")]
    Failed {
        /// What we were doing.
        operation: &'static str,
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// The Debian package that ships `program` (for the "not found" hint).
#[must_use]
pub fn package_of(program: &str) -> &'static str {
    let name = Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or(program);
    match name {
        "mksquashfs" | "unsquashfs" => "squashfs-tools",
        "xz" => "xz-utils",
        "dpkg-deb" => "dpkg",
        "apt-get" | "apt-cache" => "apt",
        _ => "(unknown)",
    }
}

/// The command line of `cmd`, for messages.
#[must_use]
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured
/// (unless the caller redirected them); fails unless it exits with 0.
///
/// # Errors
/// [`ToolError`] naming `operation`, the command and its stderr.
pub fn run(operation: &'static str, cmd: &mut Command) -> Result<Output, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let command = describe(cmd);
    let output = cmd.stdin(Stdio::null()).output().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ToolError::NotFound {
                operation,
                package: package_of(&program),
                program: program.clone(),
            }
        } else {
            ToolError::Spawn {
                operation,
                command: command.clone(),
                source,
            }
        }
    })?;
    if !output.status.success() {
        return Err(ToolError::Failed {
            operation,
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_package_of_each_tool() {
        assert_eq!(package_of("mksquashfs"), "squashfs-tools");
        assert_eq!(package_of("/usr/bin/unsquashfs"), "squashfs-tools");
        assert_eq!(package_of("xz"), "xz-utils");
        assert_eq!(package_of("dpkg-deb"), "dpkg");
        assert_eq!(package_of("apt-get"), "apt");
    }

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let err = run(
            "testing",
            &mut Command::new("mksquashfs-that-does-not-exist-anywhere"),
        )
        .expect_err("cannot run");
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_failing_tool_reports_its_stderr() {
        let err = run(
            "testing",
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
        )
        .expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("testing"), "{text}");
        assert!(text.contains("broken"), "{text}");
    }
}
