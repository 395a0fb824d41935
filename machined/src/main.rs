//! machined: PID 1 (metal) or an ordinary process (container). Thin binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use machined::node::{Mode, NodeOptions, PowerAction};
use machinery::cli::{Common, Opt, Parsed, Spec, value};

const SPEC: Spec = Spec {
    name: "machined",
    about: "PID 1 and service supervisor of the node",
    options: &[
        Opt::new(
            "mode",
            "MODE",
            "metal (PID 1) or container (an ordinary process under a state directory) [default: metal]",
        ),
        Opt::new(
            "root",
            "ROOT",
            "Root of the node's paths (container mode: the state directory) [default: /]",
        ),
        Opt::new(
            "hostname",
            "HOSTNAME",
            "Hostname to report when the machine config sets none",
        ),
        Opt::new(
            "bin-dir",
            "BIN_DIR",
            "Directory holding the other daemons' own binaries (default: none; machined's own executable carries them)",
        ),
        Opt::new("apid-listen", "APID_LISTEN", "apid's listen address"),
        Opt::new("trustd-listen", "TRUSTD_LISTEN", "trustd's listen address"),
    ],
};

#[derive(Debug, Default)]
struct Args {
    common: Common,
    hostname: Option<String>,
    bin_dir: Option<PathBuf>,
    apid_listen: Option<SocketAddr>,
    trustd_listen: Option<SocketAddr>,
}

impl Args {
    fn set(&mut self, option: &str, v: &str) -> Result<(), String> {
        match option {
            "hostname" => self.hostname = Some(v.to_owned()),
            "bin-dir" => self.bin_dir = Some(v.into()),
            "apid-listen" => self.apid_listen = Some(value(v)?),
            "trustd-listen" => self.trustd_listen = Some(value(v)?),
            other => self.common.set(other, v)?,
        }
        Ok(())
    }

    fn from_env() -> Args {
        let mut args = Args::default();
        SPEC.parse_env_or_exit(|option, v| args.set(option, v));
        args
    }

    /// As PID 1: the kernel hands unknown command-line words to /init as
    /// arguments, and neither they nor `--help` may end init (that panics
    /// the kernel): anything but a clean parse means the defaults.
    fn from_kernel() -> Args {
        Args::lenient(std::env::args_os())
    }

    fn lenient<I>(words: I) -> Args
    where
        I: IntoIterator,
        I::Item: Into<std::ffi::OsString>,
    {
        let mut args = Args::default();
        match SPEC.parse(words, |option, v| args.set(option, v)) {
            Ok(Parsed::Run) => args,
            _ => Args::default(),
        }
    }
}

fn main() -> ExitCode {
    // Started as another daemon (by machined, through its own executable).
    if let Some(status) = machined::daemons::run_if_carried() {
        return status;
    }
    let pid1 = rustix::process::getpid().is_init();
    let args = if pid1 {
        Args::from_kernel()
    } else {
        Args::from_env()
    };
    let mode = args.common.mode;
    let metal_init = pid1 && mode == Mode::Metal;
    let report = metal_init.then(machined::boot::boot_metal);
    let options = NodeOptions {
        mode,
        root: args.common.root,
        hostname: args.hostname,
        // None: machined's own executable carries the daemons.
        bin_dir: args.bin_dir,
        apid_listen: args.apid_listen,
        trustd_listen: args.trustd_listen,
    };
    let logs = machined::run::init_logging(&options);
    if let Some(report) = &report {
        tracing::info!(?report, "metal boot done");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("machined")
        .build()
    {
        Ok(rt) => rt,
        Err(e) if metal_init => machined::boot::fatal(&format!("starting the runtime: {e}")),
        Err(e) => {
            eprintln!("machined: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Listened for once, before anything starts, for the whole process.
    let signals = match runtime.block_on(async { machined::run::Signals::listen(mode) }) {
        Ok(signals) => signals,
        Err(e) if metal_init => machined::boot::fatal(&e.to_string()),
        Err(e) => {
            eprintln!("machined: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = loop {
        match runtime.block_on(machined::run::run(
            options.clone(),
            Arc::clone(&logs),
            &signals,
        )) {
            // Out of maintenance mode: run again from the applied config.
            Ok(PowerAction::Configured) => continue,
            other => break other,
        }
    };
    // Bounded: a blocking read stuck on a device that stopped answering
    // (a probe given up on) must not keep PID 1 from rebooting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(action) if metal_init => {
            machined::boot::power_off_or_reboot(action == PowerAction::Reboot)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if metal_init => machined::boot::fatal(&e.to_string()),
        Err(e) => {
            eprintln!("machined: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_pid_1_no_command_line_ends_init() {
        // What the kernel passes on: words it does not know, or anything.
        for words in [
            &["/init", "quiet", "splash"][..],
            &["/init", "--help"],
            &["/init", "--version"],
            &["/init", "--mode", "bogus"],
            &["/init", "--root"],
        ] {
            let args = Args::lenient(words.iter().copied());
            assert_eq!(args.common.mode, Mode::Metal, "{words:?}");
            assert_eq!(args.common.root, PathBuf::from("/"), "{words:?}");
        }
        let args = Args::lenient(["/init", "--mode", "container", "--root", "/x"]);
        assert_eq!(args.common.mode, Mode::Container);
        assert_eq!(args.common.root, PathBuf::from("/x"));
    }
}
