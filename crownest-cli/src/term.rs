//! How `crownest` talks to the person at the terminal: `-q/--quiet`, `-v`, and
//! `--color auto|always|never` with `NO_COLOR`.
//!
//! * quiet: no progress bars and no notes (the start line, hints, the end-of-run summary of
//!   a run that succeeded, what packing left out); a failure's summary and every error are
//!   still printed, on stderr. stdout is never affected.
//! * `-v` raises the default log level (`-v` info, `-vv` debug, `-vvv` trace) when
//!   `$RUST_LOG` is not set.
//! * colour: `auto` (the default) colours stderr when it is a terminal and `NO_COLOR` is
//!   unset or empty (<https://no-color.org>); `always` and `never` force it. It applies to
//!   the run's status word, log lines and clap's help and errors.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cli::ColorChoice;

static QUIET: AtomicBool = AtomicBool::new(false);
static COLOR: AtomicBool = AtomicBool::new(false);

/// Settles the choices once, at start-up.
pub(crate) fn init(quiet: bool, color: ColorChoice) {
    QUIET.store(quiet, Ordering::Relaxed);
    COLOR.store(colored(color), Ordering::Relaxed);
}

/// Whether stderr gets colour under `choice` here.
pub(crate) fn colored(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal()
        }
    }
}

/// True under `-q`.
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// True when stderr is coloured.
pub(crate) fn color() -> bool {
    COLOR.load(Ordering::Relaxed)
}

/// `text` in green (`Good`), red (`Bad`) or yellow (`Warn`) when stderr is coloured.
pub(crate) fn paint(text: &str, tone: Tone) -> String {
    if !color() {
        return text.to_owned();
    }
    let code = match tone {
        Tone::Good => "32",
        Tone::Bad => "31",
        Tone::Warn => "33",
    };
    format!("\u{1b}[1;{code}m{text}\u{1b}[0m")
}

/// How a word is coloured.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tone {
    Good,
    Bad,
    Warn,
}

/// A note for the person (not an error): printed on stderr unless `-q`.
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::term::quiet() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use note;
