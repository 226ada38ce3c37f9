//! Progress bars for packing, uploading, verifying and extracting, drawn on stderr only
//! when stderr is a terminal. When piped, every method is a no-op: nothing extra is printed.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One bar at a time, reset per phase.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    enabled: bool,
    phase: &'static str,
}

impl Progress {
    /// Bars on stderr when `enabled` (stderr is a terminal and output is for humans).
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            bar: None,
            enabled,
            phase: "",
        }
    }

    /// Starts (or continues) a phase with a byte total (0 = unknown).
    pub(crate) fn phase(&mut self, phase: &'static str, total: u64) {
        if !self.enabled {
            return;
        }
        if self.phase == phase
            && let Some(bar) = &self.bar
        {
            if total > 0 {
                bar.set_length(total);
            }
            return;
        }
        self.finish();
        let bar = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(phase);
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bar = Some(bar);
        self.phase = phase;
    }

    /// Bytes done in the current phase.
    pub(crate) fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// A handle on the current bar (to update it from another task).
    pub(crate) fn bar(&self) -> Option<ProgressBar> {
        self.bar.clone()
    }

    /// A short message next to the bar (e.g. entries seen).
    pub(crate) fn message(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
        }
    }

    /// Removes the bar (before the command's output starts).
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.phase = "";
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
