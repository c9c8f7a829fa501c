//! Progress of the `faultbox test` runs `faultbox mcp` starts. The child writes one
//! JSON line per change of its finished-run count to a pipe it inherits
//! (`--progress-fd`, hidden); the server reads the lines and sends them on as MCP
//! progress notifications. A pipe of its own keeps the lines out of the child's
//! stdout (the JSON results) and stderr (what a person would read).

use std::fs::File;
use std::io::Write as _;
use std::os::fd::FromRawFd as _;

use crate::coordinator::Counts;

#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("{0} is a standard stream, not a descriptor of its own")]
    Standard(i32),
    #[error("descriptor {fd} is not open: {source}")]
    NotOpen { fd: i32, source: std::io::Error },
}

/// The writing end, in `faultbox test`.
pub struct Lines {
    out: File,
    /// The last (done, total) written: counts also change with every batch of
    /// events, and only finished runs make a line.
    last: Option<(u64, u64)>,
}

impl Lines {
    /// Takes over inherited descriptor `fd`.
    pub fn from_fd(fd: i32) -> Result<Lines, ProgressError> {
        if (0..=2).contains(&fd) {
            return Err(ProgressError::Standard(fd));
        }
        // SAFETY: F_SETFD only changes a flag of the descriptor table entry; it fails
        // with EBADF when `fd` is not open. Close-on-exec keeps the services this run
        // starts from holding the pipe open after the run.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err(ProgressError::NotOpen {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is open (checked above) and was handed to this process for this
        // use alone (`--progress-fd`), so nothing else here owns or closes it.
        let out = unsafe { File::from_raw_fd(fd) };
        Ok(Lines { out, last: None })
    }

    /// Writes a line when a run finished (or the plan's size changed) since the last.
    /// A reader that went away is not an error: the run goes on and is reported.
    pub fn update(&mut self, c: Counts) {
        if self.last == Some((c.done, c.total)) {
            return;
        }
        self.last = Some((c.done, c.total));
        let line = Line {
            done: c.done,
            total: c.total,
            failed: c.failed,
        };
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            let _ = self.out.write_all(text.as_bytes());
        }
    }
}

/// One progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    /// Runs finished.
    pub done: u64,
    /// Runs planned (fewer once a test stops at its first failure).
    pub total: u64,
    /// Finished runs that did not pass.
    pub failed: u64,
}

impl Line {
    /// The line's text as a person would read it in a progress message.
    pub fn message(&self) -> String {
        format!(
            "{}/{} runs finished, {} failed",
            self.done, self.total, self.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::fd::IntoRawFd as _;

    #[test]
    fn one_line_per_finished_run_and_none_for_events() {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let mut lines = Lines::from_fd(tx.into_raw_fd()).unwrap();
        let c = |done, events| Counts {
            done,
            total: 3,
            failed: done.min(1),
            events,
        };
        for counts in [c(0, 0), c(0, 10), c(1, 10), c(1, 50), c(3, 60)] {
            lines.update(counts);
        }
        drop(lines);
        let mut text = String::new();
        rx.read_to_string(&mut text).unwrap();
        let got: Vec<Line> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want = |done, failed| Line {
            done,
            total: 3,
            failed,
        };
        assert_eq!(got, vec![want(0, 0), want(1, 1), want(3, 1)]);
    }

    #[test]
    fn refuses_standard_streams_and_closed_descriptors() {
        assert!(matches!(Lines::from_fd(1), Err(ProgressError::Standard(1))));
        // Past any descriptor table: closed for certain, whatever other tests open.
        let fd = 1_000_000_000;
        assert!(matches!(
            Lines::from_fd(fd),
            Err(ProgressError::NotOpen { .. })
        ));
    }
}
