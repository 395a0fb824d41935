//! routerd's command line and entry point, shared by the `routerd` binary
//! and by machined, whose executable runs routerd in the boot image
//! (see `machined::daemons`).

use std::process::ExitCode;

use machinery::cli::{self, Common, Opt, Spec};

const SPEC: Spec = Spec {
    name: "routerd",
    about: "Routes node API calls to the daemon serving them",
    options: &[
        Opt::new(
            "mode",
            "MODE",
            "metal or container (accepted for symmetry; routerd behaves the same) [default: metal]",
        ),
        cli::ROOT,
    ],
};

/// Runs routerd with this process's command line: parses it (exiting with
/// status 2 and a usage message when it is wrong), then serves until
/// stopped.
pub fn main() -> ExitCode {
    let args = Common::from_env(&SPEC);
    let paths = machinery::constants::NodePaths::under(&args.root);
    machinery::daemon::run("routerd", async {
        let router = crate::Router::new(&paths)?;
        let socket = paths.socket("routerd");
        let listener = crate::bind(&socket)?;
        tracing::info!(socket = %socket.display(), mode = %args.mode, "routerd serving");
        machinery::daemon::notify_ready();
        router
            .serve(listener, machinery::daemon::shutdown_signal())
            .await;
        Ok::<(), crate::RouterError>(())
    })
}
