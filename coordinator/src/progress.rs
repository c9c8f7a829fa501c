//! Progress of a run on stderr: a bar on a terminal (done/total, failures, rate,
//! events, ETA), plain lines every few seconds otherwise, also while no run finishes
//! (events keep streaming from the runs in flight). Reports on stdout are never
//! touched.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::coordinator::Counts;

/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    counts: Arc<Mutex<Counts>>,
    /// Dropping it stops the plain-line writer.
    stop: Mutex<Option<mpsc::Sender<()>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        let start = Instant::now();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {msg}, ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let (stop, writer) = if bar.is_none() {
            let (tx, rx) = mpsc::channel::<()>();
            let counts = counts.clone();
            let writer = std::thread::Builder::new()
                .name("faultbox-progress".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(PLAIN_EVERY) {
                        let c = *counts.lock().unwrap_or_else(|p| p.into_inner());
                        eprintln!("progress: {}", line(c, start.elapsed()));
                    }
                })
                .ok();
            (Some(tx), writer)
        } else {
            (None, None)
        };
        Progress {
            bar,
            start,
            counts,
            stop: Mutex::new(stop),
            writer: Mutex::new(writer),
        }
    }

    pub fn update(&self, c: Counts) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = c;
        if let Some(bar) = &self.bar {
            let secs = self.start.elapsed().as_secs_f64().max(1e-3);
            bar.set_length(c.total);
            bar.set_position(c.done);
            bar.set_message(format!(
                "{} failed, {:.1} runs/s, {} events",
                c.failed,
                c.done as f64 / secs,
                c.events
            ));
        }
    }

    /// Writes `text` to stderr without tearing the bar.
    pub fn print(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprint!("{text}")),
            None => eprint!("{text}"),
        }
    }

    /// Removes the bar, or stops the plain lines.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        drop(self.stop.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

/// One plain progress line's text.
fn line(c: Counts, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = c.done as f64 / secs;
    let eta = if rate > 0.0 {
        format!("{:.0}s", c.total.saturating_sub(c.done) as f64 / rate)
    } else {
        "?".into()
    };
    format!(
        "{}/{} runs, {} failed, {rate:.1} runs/s, {} events ({:.0}/s), ETA {eta}",
        c.done,
        c.total,
        c.failed,
        c.events,
        c.events as f64 / secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line_names_runs_events_and_eta() {
        let c = Counts {
            done: 5,
            total: 10,
            failed: 1,
            events: 300,
        };
        assert_eq!(
            line(c, Duration::from_secs(10)),
            "5/10 runs, 1 failed, 0.5 runs/s, 300 events (30/s), ETA 10s"
        );
        let none = Counts {
            total: 3,
            events: 7,
            ..Counts::default()
        };
        assert!(line(none, Duration::from_secs(1)).ends_with("ETA ?"));
    }
}
