//! Progress of a run on stderr: a bar on a terminal (done/total, failures, rate, ETA),
//! plain lines every few seconds otherwise. Reports on stdout are never touched.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        let start = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {msg}, ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            start,
            last_line: Mutex::new(start),
        }
    }

    /// `done` of `total` runs finished, `failed` of them failing.
    pub fn update(&self, done: u64, total: u64, failed: u64) {
        match &self.bar {
            Some(bar) => {
                let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-3);
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(format!("{failed} failed, {rate:.1} runs/s"));
            }
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() < PLAIN_EVERY {
                    return;
                }
                *last = Instant::now();
                let secs = self.start.elapsed().as_secs_f64();
                let rate = done as f64 / secs.max(1e-3);
                let eta = if rate > 0.0 {
                    format!("{:.0}s", total.saturating_sub(done) as f64 / rate)
                } else {
                    "?".into()
                };
                eprintln!(
                    "progress: {done}/{total} runs, {failed} failed, {rate:.1} runs/s, ETA {eta}"
                );
            }
        }
    }

    /// Writes `text` to stderr without tearing the bar.
    pub fn print(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprint!("{text}")),
            None => eprint!("{text}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
