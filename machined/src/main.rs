//! machined: PID 1 (metal) or an ordinary process (container). Thin binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use machined::node::{Mode, NodeOptions, PowerAction};

#[derive(Debug, Parser)]
#[command(
    name = "machined",
    version,
    about = "PID 1 and service supervisor of the node"
)]
struct Args {
    /// metal (PID 1) or container (an ordinary process under a state directory).
    #[arg(long, value_parser = ["metal", "container"], default_value = "metal")]
    mode: String,
    /// Root of the node's paths (container mode: the state directory).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Hostname to report when the machine config sets none.
    #[arg(long)]
    hostname: Option<String>,
    /// Directory holding the other daemons (default: beside machined; /usr/bin on metal).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// apid's listen address.
    #[arg(long)]
    apid_listen: Option<SocketAddr>,
    /// trustd's listen address.
    #[arg(long)]
    trustd_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let pid1 = rustix::process::getpid().is_init();
    // As PID 1 the kernel hands unknown command-line words to /init as
    // arguments; a parse error must not end init (that panics the kernel).
    let args = if pid1 {
        Args::try_parse().unwrap_or_else(|_| Args::parse_from(["machined"]))
    } else {
        Args::parse()
    };
    let mode = if args.mode == "container" {
        Mode::Container
    } else {
        Mode::Metal
    };
    let metal_init = pid1 && mode == Mode::Metal;
    let report = metal_init.then(machined::boot::boot_metal);
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None if metal_init => PathBuf::from("/usr/bin"),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/usr/bin")),
    };
    let options = NodeOptions {
        mode,
        root: args.root,
        hostname: args.hostname,
        bin_dir,
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
    let result = loop {
        match runtime.block_on(machined::run::run(options.clone(), Arc::clone(&logs))) {
            // Out of maintenance mode: run again from the applied config.
            Ok(PowerAction::Configured) => continue,
            other => break other,
        }
    };
    drop(runtime);
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
