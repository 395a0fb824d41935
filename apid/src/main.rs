//! apid: thin binary; its command line and the daemon are in the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    apid::cli::main()
}
