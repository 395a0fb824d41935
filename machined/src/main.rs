//! Thin binary: all logic lives in the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("machined: not wired yet");
    std::process::ExitCode::from(2)
}
