//! talosctl: the command-line client of the node API.
//!
//! Same command names, flags and output formats as upstream talosctl, so
//! scripts and habits carry over:
//!
//! - [`cli`]: the clap command tree (global flags `-e/--endpoints`,
//!   `-n/--nodes`, `--talosconfig`, `--context` on every command);
//! - [`client`]: talosconfig resolution, TLS, channels, node targeting
//!   (`node` / `nodes` metadata), endpoint fail-over and the one-line error
//!   messages an operator can act on;
//! - [`output`]: the Go-tabwriter-like table writer and the formatting
//!   helpers (Go `FileMode` strings, Go durations, humanized sizes and times);
//! - [`cmd`]: one module per command group;
//! - [`cluster`]: `talosctl cluster ...` (local clusters);
//! - [`qemu`]: the `qemu` provisioner of `talosctl cluster create` (QEMU
//!   virtual machines, their loopback-only inter-node network hub).
//!
//! Errors end the process with one line `error: <message>` on stderr and exit
//! status 1. Per-node failures of a multi-node call are printed as
//! `error: <node>: <cause>` lines after the successful nodes' output, and the
//! exit status is 1 as well.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cluster;
pub mod cmd;
pub mod jsonpath;
pub mod output;
pub mod qemu;

use std::process::ExitCode;

use clap::Parser as _;

/// Runs talosctl with the process arguments and returns its exit status.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and usage errors print themselves, as clap formats them.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit_for(&err),
    }
}

/// Prints `err` (unless it was already reported) and picks the exit status.
fn exit_for(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<output::Reported>().is_some() {
        return ExitCode::FAILURE;
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        // `talosctl logs ... | head`: the reader went away, not an error.
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {}", one_line(err));
    ExitCode::FAILURE
}

/// The error and its causes on one line, joined with ": ".
#[must_use]
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_the_chain() {
        let err = anyhow::anyhow!("inner\ncause").context("outer");
        assert_eq!(one_line(&err), "outer: inner cause");
    }
}
