//! machined: PID 1 (metal) or an ordinary process (container). Thin binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Directory holding the other daemons (default: beside machined).
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
    let args = Args::parse();
    let mode = if args.mode == "container" {
        Mode::Container
    } else {
        Mode::Metal
    };
    let bin_dir = args
        .bin_dir
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin"));
    let options = NodeOptions {
        mode,
        root: args.root,
        hostname: args.hostname,
        bin_dir,
        apid_listen: args.apid_listen,
        trustd_listen: args.trustd_listen,
    };
    let logs = machined::run::init_logging(&options);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("machined")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("machined: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(machined::run::run(options, logs)) {
        Ok(PowerAction::Shutdown | PowerAction::Reboot) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machined: {e}");
            ExitCode::FAILURE
        }
    }
}
