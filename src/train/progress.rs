//! Progress output: an indicatif bar on a terminal, plain lines on stderr otherwise (CI, log
//! files), nothing when quiet (tests). Every line also reaches the run's `train.log` through
//! [`crate::output`], which also makes a closed stderr harmless.

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    pub bar: ProgressBar,
    /// No terminal: lines instead of the bar.
    pub plain: bool,
}

impl Progress {
    pub fn new(total: u64, at: u64, quiet: bool) -> Self {
        if quiet {
            return Self {
                bar: ProgressBar::hidden(),
                plain: false,
            };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{elapsed_precise} < {eta_precise}] {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(at);
        let plain = bar.is_hidden();
        Self { bar, plain }
    }

    /// A line above the bar (or a plain line).
    pub fn say(&self, line: String) {
        if self.plain || !crate::output::stderr_open() {
            crate::output::err(&line);
        } else {
            crate::output::log_only(&line);
            self.bar.println(line);
        }
    }
}
