//! Starting a target: clone3 into new user, PID, network and mount namespaces, exec
//! the shim, and take the seccomp listener from it.
//!
//! Clones happen on a few long-lived threads because `PR_SET_PDEATHSIG` fires when
//! the *thread* that created the child exits: a pool thread could retire and kill a
//! healthy target. The child shares the launcher's memory (`CLONE_VM`, as
//! `posix_spawn` does) on a stack of its own until it execs: copying the page tables
//! of a large multi-threaded process for a child that execs at once, then tearing
//! them down and taking the copy-on-write faults that follow, was the largest single
//! cost of starting a service. The child only calls async-signal-safe functions and
//! writes no memory the launcher reads; the launcher waits for its exec before the
//! memory it reads is freed or reused.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use faultbox_shim::handoff::{self, ShimArgs, Stage, Status};

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The `faultbox-shim` binary.
    pub shim: PathBuf,
    /// The resolved program to execute.
    pub program: PathBuf,
    /// The target's argv, argv[0] included.
    pub argv: Vec<OsString>,
    /// The target's complete environment.
    pub env: Vec<(OsString, OsString)>,
    /// Syscall numbers to notify; empty means no filter.
    pub notify: Vec<i32>,
    /// Join this network namespace instead of creating one (the services of a test
    /// share one); its loopback must already be up.
    pub netns: Option<RawFd>,
    /// A hosts file the shim mounts over `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// Where the target's stdout and stderr go; inherited when `None`.
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// The target's working directory; inherited when `None`.
    pub cwd: Option<PathBuf>,
    /// The ids the target runs as, `uid:gid[:groups]` (see `sandbox::user`); the
    /// shim switches before exec.
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("invalid argument or environment entry for the target (contains a NUL byte)")]
    Nul,
    #[error("creating user, PID, network and mount namespaces: {0} (are unprivileged user namespaces disabled? see /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone)")]
    Clone(std::io::Error),
    #[error("{}: {}", .stage.describe(), std::io::Error::from_raw_os_error(*.errno))]
    Setup { stage: Stage, errno: i32 },
    #[error("the target exited before its seccomp listener could be taken")]
    Vanished,
    #[error(
        "taking the seccomp listener from the target: {0} (pidfd_getfd needs Linux 5.6 or later)"
    )]
    Listener(std::io::Error),
    #[error("the target did not hand over its seccomp listener within {0:?}")]
    Timeout(Duration),
    #[error("launcher: {0}")]
    Io(#[from] std::io::Error),
}

/// A started target: the shim is blocked in its hand-off call when `listener` is set.
pub struct Launched {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The supervisor's copy of the seccomp listener.
    pub listener: Option<OwnedFd>,
    /// The listener's fd number inside the target, for logs.
    pub target_listener_fd: Option<i32>,
    /// The rest of the status pipe: end-of-file once the target has exec'd.
    pub status: StatusPipe,
}

/// The read end of the shim's status pipe.
pub struct StatusPipe(BufReader<File>);

impl StatusPipe {
    fn next(&mut self) -> std::io::Result<Option<Status>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.0.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            if let Some(s) = Status::decode(line.trim_end()) {
                return Ok(Some(s));
            }
        }
    }

    /// Blocks until the target has exec'd (`Ok`) or reported why it could not.
    pub fn wait_exec(mut self) -> Result<(), LaunchError> {
        match self.next()? {
            None => Ok(()),
            Some(Status::Failed { stage, errno }) => Err(LaunchError::Setup { stage, errno }),
            Some(Status::Installing { .. }) => Ok(()),
        }
    }
}

/// Starts the target described by `spec`. Blocking: call it off the async runtime.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let shim_args = ShimArgs {
        notify: spec.notify.clone(),
        shared_net: spec.netns.is_some(),
        hosts: spec.hosts.clone(),
        user: spec.user.clone(),
        program: spec.program.clone(),
        argv: spec.argv.clone(),
        socket: None,
    };
    let cstr = |s: &std::ffi::OsStr| CString::new(s.as_bytes()).map_err(|_| LaunchError::Nul);
    let shim = cstr(spec.shim.as_os_str())?;
    let mut argv = vec![cstr(std::ffi::OsStr::new("faultbox-shim"))?];
    for a in shim_args.to_args() {
        argv.push(cstr(&a)?);
    }
    let mut envp = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(CString::new(kv).map_err(|_| LaunchError::Nul)?);
    }

    let (read_end, write_end) = pipe()?;
    // Root maps every host id into the target's namespace, as it is outside, so a
    // service can drop privileges to its own user the ordinary way (PostgreSQL
    // refuses to run as root). Only a process with CAP_SETUID in the parent
    // namespace may write such a map, so the launcher writes it while the child
    // waits; anyone else can only map themselves, which the child does.
    // SAFETY: geteuid cannot fail.
    let maps = if unsafe { libc::geteuid() } == 0 {
        let (wait, go) = pipe()?;
        Maps::ByParent { wait, go }
    } else {
        Maps::Own {
            uid_map: CString::new(format!("0 {uid} 1")).expect("no NUL"),
            gid_map: CString::new(format!("0 {gid} 1")).expect("no NUL"),
        }
    };
    let child = Prepared {
        maps,
        shim,
        argv,
        envp,
        status_fd: write_end.as_raw_fd(),
        netns: spec.netns,
        stdout: spec.stdout,
        stderr: spec.stderr,
        cwd: match &spec.cwd {
            Some(d) => Some(cstr(d.as_os_str())?),
            None => None,
        },
    };
    let (pid, pidfd) = clone_on_launcher_thread(child)?;
    drop(write_end);

    let mut status = StatusPipe(BufReader::new(File::from(read_end)));
    if spec.notify.is_empty() {
        return Ok(Launched {
            pid,
            pidfd,
            listener: None,
            target_listener_fd: None,
            status,
        });
    }
    let failed = |pidfd: OwnedFd, e: LaunchError| {
        kill(&pidfd, libc::SIGKILL);
        reap(&pidfd);
        Err(e)
    };
    match status.next()? {
        Some(Status::Installing { listener_fd }) => {
            let fd = match take_listener(pidfd.as_raw_fd(), listener_fd) {
                Ok(fd) => fd,
                // The shim died instead of installing its filter: it said why.
                Err(LaunchError::Vanished) => {
                    let why = match status.next() {
                        Ok(Some(Status::Failed { stage, errno })) => {
                            LaunchError::Setup { stage, errno }
                        }
                        _ => LaunchError::Vanished,
                    };
                    return failed(pidfd, why);
                }
                Err(e) => return failed(pidfd, e),
            };
            if let Err(e) = faultbox_shim::notify::set_sync_wakeup(fd.as_raw_fd()) {
                tracing::debug!(target: "engine", error = %e, "synchronous wake-up not available");
            }
            Ok(Launched {
                pid,
                pidfd,
                listener: Some(fd),
                target_listener_fd: Some(listener_fd),
                status,
            })
        }
        Some(Status::Failed { stage, errno }) => failed(pidfd, LaunchError::Setup { stage, errno }),
        None => failed(pidfd, LaunchError::Vanished),
    }
}

/// Polls `pidfd_getfd` until the shim has installed its filter. The shim announced the
/// fd number just before `seccomp()`, so this spins for microseconds at most.
fn take_listener(pidfd: RawFd, target_fd: i32) -> Result<OwnedFd, LaunchError> {
    let limit = Duration::from_secs(5);
    let start = Instant::now();
    let mut pause = Duration::from_micros(10);
    loop {
        // SAFETY: pidfd_getfd with a valid pidfd and flags 0; a non-negative return is a
        // new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target_fd, 0) };
        if fd >= 0 {
            // SAFETY: fd was just returned by the kernel and is owned by nobody else.
            let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            if is_listener(owned.as_raw_fd()) {
                return Ok(owned);
            }
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EBADF) => {}
                Some(libc::ESRCH) => return Err(LaunchError::Vanished),
                _ => return Err(LaunchError::Listener(e)),
            }
        }
        if exited(pidfd) {
            return Err(LaunchError::Vanished);
        }
        if start.elapsed() > limit {
            return Err(LaunchError::Timeout(limit));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Whether the process behind `pidfd` has exited (its pidfd polls readable).
fn exited(pidfd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// Whether `fd` is a seccomp listener, and not some other fd that took its number.
pub(crate) fn is_listener(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.as_os_str().as_bytes() == b"anon_inode:seccomp notify")
        .unwrap_or(false)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `sig` to the process behind `pidfd`; a process that is gone is not an error.
pub fn kill(pidfd: &OwnedFd, sig: i32) {
    // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo and flags 0.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the code itself, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Collects the exit status if the process has ended; `None` while it runs.
pub fn try_reap(pidfd: &OwnedFd) -> std::io::Result<Option<Exit>> {
    wait(pidfd, libc::WEXITED | libc::WNOHANG)
}

/// Waits for the process to end and collects its status.
pub fn reap(pidfd: &OwnedFd) -> Option<Exit> {
    wait(pidfd, libc::WEXITED).ok().flatten()
}

fn wait(pidfd: &OwnedFd, flags: i32) -> std::io::Result<Option<Exit>> {
    // SAFETY: siginfo_t is plain old data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid on a pidfd with a valid siginfo buffer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    // SAFETY: waitid filled info (or left si_pid zero for WNOHANG with no change).
    let (pid, status, code) = unsafe { (info.si_pid(), info.si_status(), info.si_code) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if code == libc::CLD_EXITED {
        Exit::Code(status)
    } else {
        Exit::Signal(status)
    }))
}

/// Everything the cloned child needs, prepared before the clone so that the child
/// never allocates.
struct Prepared {
    maps: Maps,
    shim: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    status_fd: RawFd,
    netns: Option<RawFd>,
    stdout: Option<RawFd>,
    stderr: Option<RawFd>,
    cwd: Option<CString>,
}

/// Who writes the child's uid and gid maps.
enum Maps {
    /// The child, `0 <uid> 1`: the caller becomes root inside the user namespace
    /// and no other id exists there.
    Own { uid_map: CString, gid_map: CString },
    /// The launcher, identity over every id (it runs as root); the child blocks
    /// reading `wait` until the launcher writes a byte to `go`.
    ByParent { wait: OwnedFd, go: OwnedFd },
}

/// Every id, mapped to itself.
const IDENTITY_MAP: &str = "0 0 4294967295";

type Request = (Prepared, mpsc::SyncSender<std::io::Result<(i32, OwnedFd)>>);

/// How many launcher threads clone side by side: a clone waits for its child's exec,
/// so with one thread the starts of many slots queued behind each other.
const LAUNCHERS: usize = 4;

fn clone_on_launcher_thread(child: Prepared) -> Result<(i32, OwnedFd), LaunchError> {
    static LAUNCHER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = LAUNCHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..LAUNCHERS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("faultbox-launcher-{i}"))
                .spawn(move || {
                    // The thread's own network namespace, to return to after cloning
                    // a child into a test's namespace.
                    let home = File::open("/proc/thread-self/ns/net").ok();
                    let mut stack = ChildStack::new();
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((prepared, reply)) = next else {
                            return;
                        };
                        let _ = reply.send(clone_in_netns(&prepared, home.as_ref(), &mut stack));
                    }
                })
                .expect("spawning a launcher thread");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    sender
        .lock()
        .map_err(|_| std::io::Error::other("launcher thread poisoned"))?
        .send((child, reply_tx))
        .map_err(|_| std::io::Error::other("launcher thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("launcher thread is gone"))?
        .map_err(LaunchError::Clone)
}

/// Clones the child inside `p.netns` when given: the launcher thread enters that
/// namespace for the clone (a child starts in its parent thread's namespace) and
/// returns home after.
fn clone_in_netns(
    p: &Prepared,
    home: Option<&File>,
    stack: &mut ChildStack,
) -> std::io::Result<(i32, OwnedFd)> {
    let Some(netns) = p.netns else {
        return clone_child(p, stack);
    };
    let home = home
        .ok_or_else(|| std::io::Error::other("launcher cannot return to its network namespace"))?;
    // SAFETY: setns on valid fds, affecting this thread only.
    if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let result = clone_child(p, stack);
    // SAFETY: as above.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // A launcher stuck in a test's namespace would put later targets there.
        panic!(
            "launcher could not return to its network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    result
}

/// The stack the cloned child runs on until it execs: one per launcher thread,
/// reused, since a launcher waits for each child's exec before its next clone.
struct ChildStack(Box<[u8]>);

impl ChildStack {
    /// Room for the child's few libc calls; the child never allocates.
    const SIZE: usize = 256 << 10;

    fn new() -> ChildStack {
        ChildStack(vec![0u8; Self::SIZE].into_boxed_slice())
    }

    /// The initial stack pointer: the top, 16-byte aligned (the stack grows down).
    fn top(&mut self) -> *mut libc::c_void {
        let end = self.0.as_mut_ptr_range().end as usize;
        (end & !15) as *mut libc::c_void
    }
}

/// What the child's entry point reads: everything lives in the launcher's frame,
/// which outlives the child's use of it (the launcher waits for the exec).
struct ChildArgs<'a> {
    p: &'a Prepared,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the `ChildArgs` in `clone_child`'s frame, alive and
    // unchanged until this child execs or exits; `child_exec` never returns.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        child_exec(a.p, a.argv, a.envp)
    }
}

fn clone_child(p: &Prepared, stack: &mut ChildStack) -> std::io::Result<(i32, OwnedFd)> {
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // Closed in the child by its exec (or its exit): end-of-file here says the child
    // no longer uses this thread's memory.
    let (exec_read, exec_write) = pipe()?;
    let mut pidfd: libc::c_int = -1;
    let net = if p.netns.is_some() {
        0
    } else {
        libc::CLONE_NEWNET
    };
    let flags = libc::CLONE_VM
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | net
        | libc::CLONE_NEWNS
        | libc::CLONE_PIDFD
        | libc::SIGCHLD;
    let args = ChildArgs {
        p,
        argv: &argv,
        envp: &envp,
    };
    // Blocked around the clone, so the child starts with every signal blocked.
    // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask changes
    // this thread's mask only, and `old` restores it below.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_entry` on `stack`, which nothing else uses until
    // the child has exec'd or exited (waited for below); it shares this address
    // space, reads only `args` and what it points to, which stay alive and unchanged
    // until then, and makes async-signal-safe calls only. With CLONE_PIDFD the kernel
    // stores the new pidfd through the parent-tid pointer.
    let pid = unsafe {
        libc::clone(
            child_entry,
            stack.top(),
            flags,
            &args as *const ChildArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_error);
    }
    drop(exec_write);
    // SAFETY: CLONE_PIDFD stored a new pidfd that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if let Maps::ByParent { go, .. } = &p.maps {
        if let Err(e) = map_identity(pid, go) {
            kill(&pidfd, libc::SIGKILL);
            reap(&pidfd);
            return Err(e);
        }
    }
    wait_for_exec(&exec_read);
    Ok((pid, pidfd))
}

/// Blocks until every write end of the exec pipe is closed: the child has exec'd or
/// exited.
fn wait_for_exec(read: &OwnedFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a valid buffer from a pipe we own.
        let n = unsafe { libc::read(read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        // Nothing is ever written, so 0 is end-of-file. An error is retried (EINTR)
        // unless the descriptor itself is bad, which cannot happen to a pipe we own.
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF))
        {
            return;
        }
    }
}

/// Writes the identity uid and gid maps of child `pid`, then lets it go on.
fn map_identity(pid: i32, go: &OwnedFd) -> std::io::Result<()> {
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), IDENTITY_MAP)
            .map_err(|e| std::io::Error::new(e.kind(), format!("writing {map}: {e}")))?;
    }
    // SAFETY: writing one byte from a valid buffer to a pipe we own.
    if unsafe { libc::write(go.as_raw_fd(), b"1".as_ptr().cast(), 1) } != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The child side of the clone: tie our life to the launcher thread, put the status
/// pipe on its agreed fd, map our ids into the new user namespace, restore default
/// signal handling, and exec the shim.
///
/// The maps must be written before exec: a process whose uid is unmapped loses its
/// capabilities in the namespace at exec, and could then no longer set up mounts.
///
/// # Safety
/// Must only be called in a freshly cloned child; uses async-signal-safe calls only.
unsafe fn child_exec(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    if let Some(dir) = &p.cwd {
        if libc::chdir(dir.as_ptr()) != 0 {
            let line = b"E exec 2\n";
            libc::write(p.status_fd, line.as_ptr().cast(), line.len());
            libc::_exit(handoff::EXIT_CANNOT_EXEC);
        }
    }
    if let Some(fd) = p.stdout {
        libc::dup2(fd, 1);
    }
    if let Some(fd) = p.stderr {
        libc::dup2(fd, 2);
    }
    if p.status_fd == handoff::STATUS_FD {
        libc::fcntl(p.status_fd, libc::F_SETFD, 0);
    } else {
        libc::dup2(p.status_fd, handoff::STATUS_FD);
    }
    let mapped = match &p.maps {
        Maps::Own { uid_map, gid_map } => {
            write_proc(c"/proc/self/setgroups", c"deny").is_ok()
                && write_proc(c"/proc/self/uid_map", uid_map).is_ok()
                && write_proc(c"/proc/self/gid_map", gid_map).is_ok()
        }
        Maps::ByParent { wait, go } => {
            // Only the launcher's copy may keep the pipe open.
            libc::close(go.as_raw_fd());
            let mut byte = 0u8;
            loop {
                let n = libc::read(wait.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                if n == 1 {
                    break true;
                }
                // errno is the launcher thread's too (shared memory, same thread
                // pointer), so it is not read here: a blocking read of a pipe we
                // hold can only be interrupted, and is tried again.
                if n < 0 {
                    continue;
                }
                // The launcher closed the pipe without mapping us.
                *libc::__errno_location() = libc::EPERM;
                break false;
            }
        }
    };
    if !mapped {
        let errno = *libc::__errno_location();
        let mut line = *b"E userns 000\n";
        line[9] = b'0' + (errno / 100 % 10) as u8;
        line[10] = b'0' + (errno / 10 % 10) as u8;
        line[11] = b'0' + (errno % 10) as u8;
        libc::write(handoff::STATUS_FD, line.as_ptr().cast(), line.len());
        libc::_exit(handoff::EXIT_CANNOT_EXEC);
    }
    // Signals are still blocked (the launcher blocked them around the clone): no
    // handler of the launcher's may run on this stack in its memory. Handlers go
    // back to the default before they are let through, and so do the signals a
    // service must be stoppable by (SIGPIPE, which Rust ignores for itself, too);
    // other ignored ones stay ignored across exec, as for any child.
    let reset = [
        libc::SIGPIPE,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
    ];
    for sig in 1..libc::SIGRTMAX() {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
            && (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN
                || reset.contains(&sig))
        {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    libc::execve(p.shim.as_ptr(), argv.as_ptr(), envp.as_ptr());
    let line = b"E exec 2\n";
    libc::write(handoff::STATUS_FD, line.as_ptr().cast(), line.len());
    libc::_exit(handoff::EXIT_CANNOT_EXEC)
}

/// Writes `content` to a /proc file with async-signal-safe calls only.
///
/// # Safety
/// Both arguments are valid NUL-terminated strings.
unsafe fn write_proc(path: &std::ffi::CStr, content: &std::ffi::CStr) -> Result<(), ()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(());
    }
    let bytes = content.to_bytes();
    let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    libc::close(fd);
    if n == bytes.len() as isize {
        Ok(())
    } else {
        Err(())
    }
}
