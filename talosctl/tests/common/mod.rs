//! What the CLI and QEMU tests share: running the real talosctl binary
//! against a talosconfig.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The talosctl binary cargo built for these tests.
pub fn talosctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_talosctl"))
}

/// One run's output and exit code.
pub struct Run {
    pub out: String,
    pub err: String,
    pub code: i32,
}

/// `talosctl --talosconfig <talosconfig> <args>`, with no talosconfig or
/// editor from the environment.
pub fn run(talosconfig: &Path, args: &[&str]) -> Run {
    run_env(talosconfig, args, &[])
}

/// [`run`] with `env` set.
pub fn run_env(talosconfig: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(talosctl())
        .arg("--talosconfig")
        .arg(talosconfig)
        .args(args)
        .env_remove("TALOSCONFIG")
        .env_remove("TALOS_EDITOR")
        .envs(env.iter().copied())
        .output()
        .expect("talosctl runs");
    Run {
        out: String::from_utf8_lossy(&stdout).into_owned(),
        err: String::from_utf8_lossy(&stderr).into_owned(),
        code: status.code().unwrap_or(-1),
    }
}

/// [`run`], which must succeed; its stdout.
pub fn ok(talosconfig: &Path, args: &[&str]) -> String {
    let r = run(talosconfig, args);
    assert_eq!(
        r.code, 0,
        "talosctl {args:?} failed:\nstdout: {}\nstderr: {}",
        r.out, r.err
    );
    r.out
}

/// `talosctl -n <node> patch mc --mode no-reboot -p <patch>`: a config
/// change applied live; its stdout.
pub fn patch_live(talosconfig: &Path, node: &str, patch: &str) -> String {
    ok(
        talosconfig,
        &[
            "-n",
            node,
            "patch",
            "mc",
            "--mode",
            "no-reboot",
            "-p",
            patch,
        ],
    )
}
