//! The `tracing` subscriber of the `crownest` binary: log lines on stderr (stdout stays
//! the command's output), as text or JSON (`--log-format`), filtered by `$RUST_LOG`
//! (default `info` for `serve`, so its access log shows, `warn` for the other commands).
//!
//! Spans carry context: `run{run_id}` around a run's driver and uploads, `request{request_id,
//! method, route}` around each HTTP request; JSON lines name them in `spans`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the subscriber (once, at start-up). A `$RUST_LOG` that does not parse is
/// reported and the default used.
pub(crate) fn init(format: LogFormat, serving: bool, verbose: u8, ansi: bool) {
    let default = match (verbose, serving) {
        (0, true) => "info",
        (0, false) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("crownest: RUST_LOG={v:?} is not a filter ({e}); using {default}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    if let Err(e) = installed {
        eprintln!("crownest: logging is not set up: {e}");
    }
}
