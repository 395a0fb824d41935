//! The daemons' command lines: `--option value` (or `--option=value`),
//! `--help` and `--version`, nothing else.
//!
//! machined starts the daemons with a handful of fixed options; people do
//! not type them. So this is lexopt, not clap (which `talosctl` keeps):
//! under emulation a booting node waits mostly for code that runs for the
//! first time, and clap's parser was about 14% of the code apid runs
//! before it listens.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::mode::Mode;

/// One `--name <VALUE>` option of a daemon.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    /// The long name, without the dashes.
    pub name: &'static str,
    /// What `--help` shows as the value (`MODE`, `ADDR`...).
    pub value: &'static str,
    /// One line for `--help`, with the default if there is one.
    pub help: &'static str,
    /// Left out of `--help` (options for tests).
    pub hidden: bool,
}

impl Opt {
    /// A documented option.
    #[must_use]
    pub const fn new(name: &'static str, value: &'static str, help: &'static str) -> Opt {
        Opt {
            name,
            value,
            help,
            hidden: false,
        }
    }

    /// An option left out of `--help`.
    #[must_use]
    pub const fn hidden(name: &'static str, value: &'static str) -> Opt {
        Opt {
            name,
            value,
            help: "",
            hidden: true,
        }
    }
}

/// `--root`, as most daemons describe it.
pub const ROOT: Opt = Opt::new("root", "ROOT", "Root of the node's paths [default: /]");

/// `--mode`, for a daemon that works the same in both modes but for the
/// paths.
pub const MODE: Opt = Opt::new("mode", "MODE", "metal or container [default: metal]");

/// The options most daemons share, [`MODE`] and [`ROOT`] (under these
/// names), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// `--mode`: metal (the default) or container.
    pub mode: Mode,
    /// `--root`: the root of the node's paths, `/` by default.
    pub root: PathBuf,
}

impl Default for Common {
    fn default() -> Common {
        Common {
            mode: Mode::Metal,
            root: PathBuf::from("/"),
        }
    }
}

impl Common {
    /// Takes `--mode` or `--root`; any other option is an error: a
    /// daemon's parser hands on the options it does not declare itself.
    ///
    /// # Errors
    /// A mode that is neither metal nor container, or another option.
    pub fn set(&mut self, option: &str, v: &str) -> Result<(), String> {
        match option {
            "mode" => self.mode = value(v)?,
            "root" => self.root = v.into(),
            other => return Err(format!("no option --{other}")),
        }
        Ok(())
    }

    /// The process's command line for a daemon whose only options are
    /// these two (see [`Spec::parse_env_or_exit`]).
    #[must_use]
    pub fn from_env(spec: &Spec) -> Common {
        let mut common = Common::default();
        spec.parse_env_or_exit(|option, v| common.set(option, v));
        common
    }
}

/// A daemon's command line: its name, what it is, its options.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The program's name.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// Its options.
    pub options: &'static [Opt],
}

/// What the command line asked for, when it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Run: every option was handed to the setter.
    Run,
    /// `--help` or `-h`: print [`Spec::help`].
    Help,
    /// `--version` or `-V`: print [`Spec::version`].
    Version,
}

/// A command line that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Unknown option, missing value, stray argument...
    #[error("{0}")]
    Syntax(#[from] lexopt::Error),
    /// The setter refused a value.
    #[error("invalid value {value:?} for '--{option}': {reason}")]
    Value {
        /// The option.
        option: &'static str,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Spec {
    /// Parses `args` (the program name first, as from
    /// [`std::env::args_os`]), handing each known option and its value to
    /// `set`, which returns why it refuses a value.
    ///
    /// # Errors
    /// An unknown option, a missing value, a positional argument, a value
    /// that is not UTF-8, or one `set` refuses.
    pub fn parse<I, F>(&self, args: I, mut set: F) -> Result<Parsed, CliError>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
        F: FnMut(&'static str, &str) -> Result<(), String>,
    {
        use lexopt::prelude::*;
        let mut parser = lexopt::Parser::from_iter(args);
        while let Some(arg) = parser.next()? {
            let option = match arg {
                Short('h') | Long("help") => return Ok(Parsed::Help),
                Short('V') | Long("version") => return Ok(Parsed::Version),
                Long(name) => match self.options.iter().find(|o| o.name == name) {
                    Some(o) => o.name,
                    None => return Err(arg.unexpected().into()),
                },
                _ => return Err(arg.unexpected().into()),
            };
            let value = parser.value()?.string()?;
            set(option, &value).map_err(|reason| CliError::Value {
                option,
                value,
                reason,
            })?;
        }
        Ok(Parsed::Run)
    }

    /// What `--help` prints.
    #[must_use]
    pub fn help(&self) -> String {
        let mut out = format!(
            "{}\n\nUsage: {} [OPTIONS]\n\nOptions:\n",
            self.about, self.name
        );
        let shown: Vec<(String, &str)> = self
            .options
            .iter()
            .filter(|o| !o.hidden)
            .map(|o| (format!("      --{} <{}>", o.name, o.value), o.help))
            .chain([
                ("  -h, --help".to_owned(), "Print help"),
                ("  -V, --version".to_owned(), "Print version"),
            ])
            .collect();
        let width = shown.iter().map(|(left, _)| left.len()).max().unwrap_or(0);
        for (left, help) in shown {
            let _ = writeln!(out, "{left:width$}  {help}");
        }
        out
    }

    /// What `--version` prints.
    #[must_use]
    pub fn version(&self) -> String {
        format!("{} {}\n", self.name, crate::constants::VERSION)
    }

    /// Parses the process's own command line for a daemon's `main`:
    /// `--help` and `--version` print and exit 0; a command line that does
    /// not parse prints the error and the usage to stderr and exits 2 (as
    /// clap does).
    pub fn parse_env_or_exit<F>(&self, set: F)
    where
        F: FnMut(&'static str, &str) -> Result<(), String>,
    {
        match self.parse(std::env::args_os(), set) {
            Ok(Parsed::Run) => {}
            Ok(Parsed::Help) => {
                print!("{}", self.help());
                std::process::exit(0);
            }
            Ok(Parsed::Version) => {
                print!("{}", self.version());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!(
                    "error: {e}\n\nUsage: {} [OPTIONS]\n\nFor more information, try '--help'.",
                    self.name
                );
                std::process::exit(2);
            }
        }
    }
}

/// Parses `value` with [`std::str::FromStr`], the error as text (for the
/// setters of [`Spec::parse`]).
///
/// # Errors
/// The value does not parse.
pub fn value<T>(value: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        name: "testd",
        about: "A daemon for tests",
        options: &[
            Opt::new("mode", "MODE", "metal or container [default: metal]"),
            Opt::new("listen", "ADDR", "Listen address"),
            Opt::hidden("secret", "X"),
        ],
    };

    #[derive(Debug, Default, PartialEq)]
    struct Args {
        mode: String,
        listen: Option<std::net::SocketAddr>,
        secret: Vec<String>,
    }

    fn parse(args: &[&str]) -> Result<(Parsed, Args), CliError> {
        let mut out = Args::default();
        let parsed = SPEC.parse(
            std::iter::once("testd").chain(args.iter().copied()),
            |option, v| {
                match option {
                    "mode" => out.mode = v.to_owned(),
                    "listen" => out.listen = Some(value(v)?),
                    "secret" => out.secret.push(v.to_owned()),
                    _ => unreachable!("unknown options never reach the setter"),
                }
                Ok(())
            },
        )?;
        Ok((parsed, out))
    }

    #[test]
    fn options_take_values_both_ways() {
        let (parsed, args) = parse(&[
            "--mode",
            "container",
            "--listen=127.0.0.1:50000",
            "--secret",
            "a",
            "--secret=b",
        ])
        .expect("parses");
        assert_eq!(parsed, Parsed::Run);
        assert_eq!(args.mode, "container");
        assert_eq!(args.listen, Some(([127, 0, 0, 1], 50000).into()));
        assert_eq!(args.secret, ["a", "b"]);
        assert_eq!(parse(&[]).expect("empty").1, Args::default());
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse(&["--help"]).expect("help").0, Parsed::Help);
        assert_eq!(parse(&["-h"]).expect("help").0, Parsed::Help);
        assert_eq!(
            parse(&["--mode", "x", "--version"]).expect("version").0,
            Parsed::Version
        );
        assert_eq!(parse(&["-V"]).expect("version").0, Parsed::Version);
    }

    #[test]
    fn bad_command_lines_name_what_is_wrong() {
        let e = parse(&["--bogus", "1"]).expect_err("unknown option");
        assert_eq!(e.to_string(), "invalid option '--bogus'");
        let e = parse(&["--listen"]).expect_err("missing value");
        assert_eq!(e.to_string(), "missing argument for option '--listen'");
        let e = parse(&["stray"]).expect_err("positional");
        assert_eq!(e.to_string(), "unexpected argument \"stray\"");
        let e = parse(&["--listen", "nowhere"]).expect_err("bad address");
        assert_eq!(
            e.to_string(),
            "invalid value \"nowhere\" for '--listen': invalid socket address syntax"
        );
        let e = parse(&["-x"]).expect_err("unknown short option");
        assert_eq!(e.to_string(), "invalid option '-x'");
    }

    #[test]
    fn help_lists_the_documented_options() {
        let help = SPEC.help();
        assert!(help.starts_with("A daemon for tests\n\nUsage: testd [OPTIONS]\n"));
        assert!(help.contains("      --mode <MODE>    metal or container [default: metal]\n"));
        assert!(help.contains("      --listen <ADDR>  Listen address\n"));
        assert!(help.contains("  -h, --help           Print help\n"));
        assert!(help.contains("  -V, --version        Print version\n"));
        assert!(!help.contains("secret"));
        assert_eq!(
            SPEC.version(),
            format!("testd {}\n", crate::constants::VERSION)
        );
    }

    #[test]
    fn the_common_options_parse_and_refuse_the_rest() {
        let spec = Spec {
            name: "commond",
            about: "Takes only the common options",
            options: &[MODE, ROOT],
        };
        let mut common = Common::default();
        let words = ["commond", "--mode", "container", "--root=/node"];
        let parsed = spec.parse(words, |option, v| common.set(option, v));
        assert!(matches!(parsed, Ok(Parsed::Run)), "{parsed:?}");
        assert_eq!(common.mode, Mode::Container);
        assert_eq!(common.root, PathBuf::from("/node"));

        let mut common = Common::default();
        let err = spec
            .parse(["commond", "--mode", "vm"], |option, v| {
                common.set(option, v)
            })
            .expect_err("an unknown mode");
        assert!(err.to_string().contains("unknown mode \"vm\""), "{err}");
        assert_eq!(
            Common::default().set("listen", "x"),
            Err("no option --listen".to_owned())
        );
    }
}
