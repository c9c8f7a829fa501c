//! Running `faultbox test` for a tool call: a child process of this executable, in a
//! process group of its own, with `--format json`. Its stdout (the JSON document) is
//! captured and never reaches the protocol; its stderr is kept for the message of a
//! failure; its progress lines come through a pipe of their own.
//!
//! Stopping it is what Ctrl-C does to `faultbox test`: SIGTERM, on which it cancels
//! the running jobs and stops their services; SIGKILL to its whole group only if it
//! has not exited after [`GRACE`]. If this server dies first, the child gets SIGTERM
//! from the kernel (`PR_SET_PDEATHSIG`) and cleans up the same way.

use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::progress::Line;

/// How long a stopped run has to cancel its jobs and stop its services before its
/// process group is killed.
pub const GRACE: Duration = Duration::from_secs(15);
/// The most JSON a run may print: more is refused rather than held in memory (a
/// run's events are its bulk; fewer runs or one test make less).
pub const MAX_STDOUT: usize = 256 << 20;
/// How much of the end of a run's stderr is kept for an error message.
const STDERR_TAIL: usize = 64 << 10;

/// What to run: `faultbox test SPEC` with these flags.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub spec: PathBuf,
    pub test: Option<String>,
    pub runs: Option<u64>,
    pub seed: Option<u64>,
    pub timeout: Option<String>,
}

impl Request {
    /// The arguments after the executable. Values go in `--flag=value` form and the
    /// spec after `--`, so none of them is read as a flag.
    fn args(&self, progress_fd: i32) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "test".into(),
            "--format=json".into(),
            format!("--progress-fd={progress_fd}").into(),
        ];
        if let Some(t) = &self.test {
            a.push(format!("--test={t}").into());
        }
        if let Some(r) = self.runs {
            a.push(format!("--runs={r}").into());
        }
        if let Some(s) = self.seed {
            a.push(format!("--seed={s}").into());
        }
        if let Some(t) = &self.timeout {
            a.push(format!("--timeout={t}").into());
        }
        a.push("--".into());
        a.push(self.spec.clone().into_os_string());
        a
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// It exited by itself: 0 all passed, 2 a test failed (the JSON is on stdout),
    /// 1 a Faultbox error (the message is on stderr).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        stdout: Vec<u8>,
        stderr: String,
    },
    /// It was stopped: the request was cancelled or the server is shutting down.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("starting `faultbox test`: {0}")]
    Spawn(std::io::Error),
    #[error("waiting for `faultbox test`: {0}")]
    Wait(std::io::Error),
    #[error("the run printed more than {} MiB of results, so it was stopped: run fewer runs, or one test", MAX_STDOUT >> 20)]
    TooMuchOutput,
}

/// The children running now, so that shutdown can wait for them.
#[derive(Default)]
pub struct Running {
    count: AtomicUsize,
    idle: Notify,
}

impl Running {
    /// Waits until no child runs, for at most `limit`; whether none does.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Counts one child while it lives.
struct Counted(Arc<Running>);

impl Counted {
    fn new(r: &Arc<Running>) -> Counted {
        r.count.fetch_add(1, Ordering::SeqCst);
        Counted(r.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.idle.notify_waiters();
    }
}

/// Runs `req` until it exits or `stop` is cancelled; progress lines go to
/// `progress` as they come.
pub async fn run(
    req: &Request,
    stop: CancellationToken,
    running: &Arc<Running>,
    progress: Option<mpsc::UnboundedSender<Line>>,
) -> Result<Outcome, ChildError> {
    let exe = std::env::current_exe().map_err(ChildError::Spawn)?;
    // Both ends close on exec; the child's copy of the write end is made inheritable
    // between fork and exec, so no other child (of a concurrent call) inherits it.
    let (tx, rx) = tokio::net::unix::pipe::pipe().map_err(ChildError::Spawn)?;
    let write_end = tx.into_blocking_fd().map_err(ChildError::Spawn)?;
    let fd = write_end.as_raw_fd();
    let parent = std::process::id();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(req.args(fd))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fcntl, prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The server died between fork and prctl: nobody would stop this run.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(ChildError::Spawn)?;
    let _counted = Counted::new(running);
    // Ours is closed now, so the pipe ends when the child (the only writer) exits.
    drop(write_end);
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let overflow = CancellationToken::new();

    let read_stdout = async {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            if read_bounded(s, &mut out, MAX_STDOUT).await.is_err() {
                overflow.cancel();
            }
        }
        out
    };
    let read_stderr = async {
        let mut tail = Vec::new();
        if let Some(s) = stderr {
            read_tail(s, &mut tail, STDERR_TAIL).await;
        }
        String::from_utf8_lossy(&tail).into_owned()
    };
    let read_progress = async {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let (Some(tx), Ok(line)) = (&progress, serde_json::from_str::<Line>(&l)) {
                let _ = tx.send(line);
            }
        }
    };
    let wait = async {
        tokio::select! {
            status = child.wait() => status.map(|s| (s, false)),
            _ = stop.cancelled() => terminate(&mut child, pid).await.map(|s| (s, true)),
            _ = overflow.cancelled() => terminate(&mut child, pid).await.map(|s| (s, true)),
        }
    };
    let (status, stdout, stderr, ()) = tokio::join!(wait, read_stdout, read_stderr, read_progress);
    let (status, stopped) = status.map_err(ChildError::Wait)?;
    if overflow.is_cancelled() {
        return Err(ChildError::TooMuchOutput);
    }
    if stopped {
        return Ok(Outcome::Stopped);
    }
    use std::os::unix::process::ExitStatusExt as _;
    Ok(Outcome::Exited {
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
    })
}

/// SIGTERM to the child, then SIGKILL to its group after [`GRACE`].
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
) -> std::io::Result<std::process::ExitStatus> {
    // Not yet reaped (this holds `child`), so the pid and group are still its own.
    if let Some(pid) = pid {
        // SAFETY: kill only sends a signal; `pid` is our unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            if let Some(pid) = pid {
                tracing::warn!(
                    pid,
                    "faultbox test did not stop in time; killing its process group"
                );
                // SAFETY: killpg only sends a signal, to the group our unreaped child
                // leads (process_group(0) made its pid the group id).
                unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
            }
            child.wait().await
        }
    }
}

/// Reads `r` to its end into `out`; past `limit` bytes it stops and fails.
async fn read_bounded(
    mut r: impl AsyncRead + Unpin,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                if out.len() + n > limit {
                    return Err(());
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// Reads `r` to its end, keeping its last `keep` bytes in `tail`.
async fn read_tail(mut r: impl AsyncRead + Unpin, tail: &mut Vec<u8>, keep: usize) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
}

/// What a person would read of a failed run's stderr: from the first
/// `faultbox: error:` line on, else every line; log lines (JSON objects) left out.
pub fn error_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim_start().starts_with('{'))
        .collect();
    let from = lines
        .iter()
        .position(|l| l.starts_with("faultbox: error:"))
        .unwrap_or(0);
    let text = lines[from..].join("\n");
    let text = text.trim();
    if text.is_empty() {
        "faultbox test failed without a message".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_cannot_be_taken_for_flags() {
        let req = Request {
            spec: "-weird.star".into(),
            test: Some("happy_path".into()),
            runs: Some(3),
            seed: None,
            timeout: Some("-1s".into()),
        };
        let args: Vec<String> = req
            .args(7)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "test",
                "--format=json",
                "--progress-fd=7",
                "--test=happy_path",
                "--runs=3",
                "--timeout=-1s",
                "--",
                "-weird.star"
            ]
        );
    }

    #[test]
    fn error_message_is_what_a_person_reads() {
        let stderr = "{\"level\":\"WARN\",\"msg\":\"x\"}\n--- FAIL: a ---\nfaultbox: error: a.star:2: Parse error\n  more\n";
        assert_eq!(
            error_message(stderr),
            "faultbox: error: a.star:2: Parse error\n  more"
        );
        assert_eq!(
            error_message("error: unexpected argument '--x'\n"),
            "error: unexpected argument '--x'"
        );
        assert_eq!(error_message(""), "faultbox test failed without a message");
    }
}
