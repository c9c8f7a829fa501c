//! One target under Faultbox: resolve it, start it in its namespaces (under the filter
//! when rules name syscalls), supervise it, and report how it ended.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use faultbox_shim::handoff::Stage;
use faultbox_shim::rule::FaultRule;
use faultbox_shim::syscalls::{self, Arch};

use crate::engine::rules::{Engine, EngineError, EngineSlot};
use crate::engine::supervisor::{self, EventSink};
use crate::sandbox::launch::{self, Exit, LaunchError, LaunchSpec};

/// What to run, what its filter covers, and the rules that decide its calls.
#[derive(Clone)]
pub struct SessionConfig {
    pub program: PathBuf,
    /// The target's argv, argv[0] included.
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub shim: PathBuf,
    /// Decides every notified call; may be replaced while the target runs.
    pub engine: EngineSlot,
    /// Syscall numbers the filter notifies, fixed at launch; empty means no filter.
    pub notify: Vec<i32>,
    /// Join this network namespace (with loopback up) instead of a new one.
    pub netns: Option<RawFd>,
    /// A hosts file to mount over the target's `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// Where the target's stdout and stderr go; inherited when `None`.
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// The target's working directory; inherited when `None`.
    pub cwd: Option<PathBuf>,
    /// The ids the target runs as (`service(user=)`); the caller's when `None`.
    pub user: Option<crate::sandbox::user::Ids>,
    /// Under virtual time, the clock its time syscalls and delays use.
    pub vclock: Option<Arc<crate::engine::vclock::VirtualClock>>,
    /// In tests: withholds answers while `parallel()` orders calls.
    pub holder: Option<Arc<dyn supervisor::Holder>>,
}

impl SessionConfig {
    /// A target in namespaces of its own, whose filter covers exactly `rules`.
    pub fn for_rules(
        program: PathBuf,
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        shim: PathBuf,
        rules: &[FaultRule],
        seed: u64,
    ) -> Result<SessionConfig, EngineError> {
        let engine = Engine::new(rules, Arch::native(), seed)?;
        let notify = engine.syscalls();
        Ok(SessionConfig {
            program,
            argv,
            env,
            shim,
            engine: EngineSlot::new(engine),
            notify,
            netns: None,
            hosts: None,
            stdout: None,
            stderr: None,
            cwd: None,
            user: None,
            vclock: None,
            holder: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Rules(#[from] EngineError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot execute {program}: {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
    #[error("starting the supervisor: {0}")]
    Supervisor(std::io::Error),
}

impl SessionError {
    /// Whether the target itself could not be executed (exit code 127), as opposed to
    /// a failure of Faultbox.
    pub fn is_exec_failure(&self) -> bool {
        matches!(self, SessionError::Exec { .. })
    }
}

/// A running target.
pub struct Running {
    pub pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    supervisor: std::sync::Mutex<Option<supervisor::SupervisorHandle>>,
    reaped: std::sync::atomic::AtomicBool,
    started: Instant,
    /// A terminating signal whose default action Faultbox carried out (see [`Running::signal`]).
    emulated: AtomicI32,
    /// The exit status, once collected.
    exit: std::sync::Mutex<Option<Exit>>,
    /// How the exit status is learned when the process is not our child (a
    /// container's, whose parent is the container runtime): asked once it has ended.
    foreign: Option<ExitOf>,
}

/// Asks whoever reaped a process that is not ours how it ended. Blocking.
pub type ExitOf = Arc<dyn Fn() -> Exit + Send + Sync>;

/// Takes charge of `pid`, which another process started and will reap (a
/// container's main process, already past its hand-off): signals and waits go
/// through a pidfd, and `exit_of` says how it ended.
pub fn adopt(
    pid: i32,
    supervisor: Option<supervisor::SupervisorHandle>,
    exit_of: ExitOf,
) -> Result<Running, SessionError> {
    // SAFETY: pidfd_open with flags 0; a non-negative return is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(SessionError::Supervisor(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(Running {
        pid,
        supervisor: std::sync::Mutex::new(supervisor),
        reaped: std::sync::atomic::AtomicBool::new(false),
        // SAFETY: as in `start`: the AsyncFd keeps the descriptor while registered.
        pidfd: unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| SessionError::Supervisor(std::io::Error::other(e.to_string())))?,
        started: Instant::now(),
        emulated: AtomicI32::new(0),
        exit: std::sync::Mutex::new(None),
        foreign: Some(exit_of),
    })
}

/// Whether the process behind `pidfd` has ended (its pidfd polls readable).
fn ended(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// How a session ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub exit: Exit,
    pub duration: Duration,
}

/// Starts the target. Returns once it has exec'd.
pub async fn start(cfg: SessionConfig, sink: Arc<dyn EventSink>) -> Result<Running, SessionError> {
    let arch = Arch::native();
    let engine = cfg.engine.clone();
    let notify = cfg.notify.clone();
    if !notify.is_empty() {
        let names: Vec<String> = notify
            .iter()
            .map(|&nr| syscalls::name(nr, arch).unwrap_or_else(|| nr.to_string()))
            .collect();
        tracing::info!(
            target: "engine",
            syscalls = ?notify,
            names = %names.join(","),
            "seccomp filter installed"
        );
    }
    let spec = LaunchSpec {
        shim: cfg.shim.clone(),
        program: cfg.program.clone(),
        argv: cfg.argv.clone(),
        env: cfg.env.clone(),
        notify,
        netns: cfg.netns,
        hosts: cfg.hosts.clone(),
        stdout: cfg.stdout,
        stderr: cfg.stderr,
        cwd: cfg.cwd.clone(),
        user: cfg.user.as_ref().map(|u| u.to_arg()),
    };
    let started = Instant::now();
    let launched = tokio::task::spawn_blocking(move || launch::launch(&spec))
        .await
        .expect("launch task panicked")?;
    let pid = launched.pid;
    tracing::info!(
        target: "engine",
        pid,
        listener_fd = launched.target_listener_fd,
        state = "running",
        "target started"
    );
    let supervisor = match launched.listener {
        Some(listener) => Some(
            supervisor::spawn(
                listener,
                engine,
                tokio::runtime::Handle::current(),
                sink,
                pid,
                cfg.vclock.clone(),
                cfg.holder.clone(),
            )
            .map_err(SessionError::Supervisor)?,
        ),
        None => None,
    };
    let pidfd = launched.pidfd;
    let status = launched.status;
    let exec = tokio::task::spawn_blocking(move || status.wait_exec())
        .await
        .expect("status task panicked");
    if let Err(e) = exec {
        launch::reap(&pidfd);
        drop(supervisor);
        return Err(match e {
            LaunchError::Setup {
                stage: Stage::Exec,
                errno,
            } => SessionError::Exec {
                program: cfg.program.display().to_string(),
                source: std::io::Error::from_raw_os_error(errno),
            },
            other => SessionError::Launch(other),
        });
    }
    Ok(Running {
        pid,
        supervisor: std::sync::Mutex::new(supervisor),
        reaped: std::sync::atomic::AtomicBool::new(false),
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open for as long as
        // it is registered.
        pidfd: unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| SessionError::Supervisor(std::io::Error::other(e.to_string())))?,
        started,
        emulated: AtomicI32::new(0),
        exit: std::sync::Mutex::new(None),
        foreign: None,
    })
}

impl Running {
    /// Delivers `sig` to the target. The target is PID 1 of its namespace, where the
    /// kernel drops signals that have no handler; for terminating signals without a
    /// handler Faultbox carries out the default action itself (SIGKILL) and reports
    /// the target as killed by `sig`, as it would have been outside a namespace.
    pub fn signal(&self, sig: i32) {
        let terminating = matches!(
            sig,
            libc::SIGINT
                | libc::SIGTERM
                | libc::SIGHUP
                | libc::SIGQUIT
                | libc::SIGUSR1
                | libc::SIGUSR2
        );
        if terminating && !handles_signal(self.pid, sig) {
            let _ = self
                .emulated
                .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            launch::kill(self.pidfd.get_ref(), libc::SIGKILL);
        } else {
            launch::kill(self.pidfd.get_ref(), sig);
        }
    }

    /// Kills the target and everything in its namespaces.
    pub fn kill(&self) {
        launch::kill(self.pidfd.get_ref(), libc::SIGKILL);
    }

    /// The exit status if the target has ended, without waiting.
    pub fn poll_exit(&self) -> Option<Exit> {
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_none() {
            *exit = match &self.foreign {
                Some(exit_of) => ended(self.pidfd.get_ref()).then(|| exit_of()),
                None => launch::try_reap(self.pidfd.get_ref()).ok().flatten(),
            };
            if exit.is_some() {
                self.reaped.store(true, Ordering::SeqCst);
            }
        }
        *exit
    }

    /// Waits for the target to end. Its namespace dies with it, and the supervisor
    /// thread ends once no process under the filter is left.
    pub async fn wait(&self) -> Outcome {
        let cached = *self.exit.lock().unwrap_or_else(|p| p.into_inner());
        let exit = if let Some(e) = cached {
            e
        } else {
            loop {
                if let Some(exit_of) = &self.foreign {
                    let _ = self.pidfd.readable().await;
                    let exit_of = exit_of.clone();
                    break tokio::task::spawn_blocking(move || exit_of())
                        .await
                        .unwrap_or(Exit::Code(1));
                }
                match self.pidfd.readable().await {
                    Ok(mut guard) => match launch::try_reap(self.pidfd.get_ref()) {
                        Ok(Some(exit)) => break exit,
                        Ok(None) => guard.clear_ready(),
                        Err(_) => break Exit::Code(1),
                    },
                    Err(_) => break launch::reap(self.pidfd.get_ref()).unwrap_or(Exit::Code(1)),
                }
            }
        };
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
        self.reaped.store(true, Ordering::SeqCst);
        let duration = self.started.elapsed();
        let sup = self.supervisor.lock().ok().and_then(|mut s| s.take());
        if let Some(sup) = sup {
            let _ = tokio::task::spawn_blocking(move || sup.stop()).await;
        }
        let emulated = self.emulated.load(Ordering::SeqCst);
        let exit = match exit {
            Exit::Signal(libc::SIGKILL) if emulated != 0 => Exit::Signal(emulated),
            other => other,
        };
        Outcome { exit, duration }
    }

    pub fn pidfd(&self) -> i32 {
        self.pidfd.get_ref().as_raw_fd()
    }
}

impl Drop for Running {
    /// A target is never left behind: if nobody waited for it, it is killed and reaped.
    fn drop(&mut self) {
        if !self.reaped.load(Ordering::SeqCst) {
            launch::kill(self.pidfd.get_ref(), libc::SIGKILL);
            launch::reap(self.pidfd.get_ref());
        }
    }
}

/// Whether `pid` has a handler installed for `sig` (the `SigCgt` mask in /proc).
fn handles_signal(pid: i32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .map(|mask| mask & (1u64 << (sig - 1)) != 0)
        .unwrap_or(false)
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("target {0:?} not found")]
    NotFound(String),
    #[error("target {0:?} is not a regular file")]
    NotAFile(String),
    #[error("target {0:?} is not executable (no execute permission)")]
    NotExecutable(String),
    #[error("faultbox-shim not found next to {0} (set FAULTBOX_SHIM to its path)")]
    NoShim(String),
}

/// Finds the program to run: a path with a `/` as given, otherwise the current
/// directory first and then `PATH`.
pub fn resolve_program(name: &str) -> Result<PathBuf, ResolveError> {
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        let mut c = vec![PathBuf::from(".").join(name)];
        if let Some(path) = std::env::var_os("PATH") {
            c.extend(std::env::split_paths(&path).map(|d| d.join(name)));
        }
        c
    };
    let mut first_problem = None;
    for c in candidates {
        match check_executable(&c, name) {
            Ok(()) => return Ok(std::path::absolute(&c).unwrap_or(c)),
            Err(ResolveError::NotFound(_)) => {}
            Err(e) => {
                first_problem.get_or_insert(e);
            }
        }
    }
    Err(first_problem.unwrap_or_else(|| ResolveError::NotFound(name.to_string())))
}

/// Whether `path` is an executable regular file; errors name it `name`.
pub(crate) fn check_executable(path: &Path, name: &str) -> Result<(), ResolveError> {
    let meta = std::fs::metadata(path).map_err(|_| ResolveError::NotFound(name.to_string()))?;
    if !meta.is_file() {
        return Err(ResolveError::NotAFile(name.to_string()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ResolveError::NotExecutable(name.to_string()));
    }
    Ok(())
}

/// The shim binary: `$FAULTBOX_SHIM`, or `faultbox-shim` next to the running binary.
pub fn find_shim() -> Result<PathBuf, ResolveError> {
    if let Some(p) = std::env::var_os("FAULTBOX_SHIM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|_| ResolveError::NoShim("faultbox".into()))?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for candidate in [dir.join("faultbox-shim"), dir.join("../faultbox-shim")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ResolveError::NoShim(exe.display().to_string()))
}
