//! The progress bar: drawn with indicatif, and only when stderr is a terminal
//! (so logs, pipes and CI stay clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Jobs finished out of jobs submitted, when there is a terminal to show it.
#[derive(Debug)]
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    pub(crate) fn new(wanted: bool) -> Self {
        if !wanted || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} jobs ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    pub(crate) fn update(&self, submitted: u64, finished: u64) {
        if let Some(bar) = &self.0 {
            if submitted > 0 {
                bar.inc_length(submitted);
            }
            if finished > 0 {
                bar.inc(finished);
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
