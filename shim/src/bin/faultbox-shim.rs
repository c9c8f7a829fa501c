//! `faultbox-shim`: runs as PID 1 of fresh user, PID, network and mount namespaces
//! (created and uid-mapped by the launcher's clone), finishes their setup, installs the seccomp filter
//! when asked, hands the listener over, and then becomes the target with `execve`.
//!
//! Failures before exec are reported on the status pipe (fd 3) and exit 127.
//!
//! With `--handoff-socket` it is a container's entrypoint instead: the container
//! runtime made the namespaces, so mounts and loopback are left alone; status goes to
//! the socket, and the listener is sent over it by a helper thread (see
//! [`socket_handoff`]).

// The unit tests keep the test harness's own entry point.
#![cfg_attr(not(test), no_main)]

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use faultbox_shim::handoff::{self, Hello, ShimArgs, Stage, Status};
use faultbox_shim::{fdpass, filter};

/// Entered from the C runtime directly: the standard runtime's start-up (finding the
/// main thread's stack guard reads all of /proc/self/maps) cost more than the rest of
/// the shim, which runs for microseconds on every service start and then execs.
/// Arguments still come from `std::env` (glibc hands them to Rust at load).
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: ignoring a signal installs no handler; this is what the standard
    // runtime would do, so a closed status pipe is an error here, not a signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    shim_main();
    0
}

#[cfg_attr(test, allow(dead_code))]
fn shim_main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args = match ShimArgs::parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("faultbox-shim: {e}");
            eprintln!("faultbox-shim is started by faultbox; it is not meant to be run by hand");
            std::process::exit(2);
        }
    };
    let status = match &args.socket {
        None => {
            // SAFETY: fcntl on an fd number; failure (fd not open) is checked.
            if unsafe { libc::fcntl(handoff::STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                eprintln!(
                    "faultbox-shim: status fd {} is not open",
                    handoff::STATUS_FD
                );
                std::process::exit(2);
            }
            Reporter::Pipe(handoff::STATUS_FD)
        }
        // Connected before any filter exists: a rule on connect cannot trap it.
        Some(s) => match std::os::unix::net::UnixStream::connect(&s.path) {
            // Close-on-exec (std sets it): end-of-file tells the executor we exec'd.
            Ok(sock) => {
                let status = Reporter::Socket(sock.into_raw_fd());
                status.send_line(
                    &Hello {
                        token: s.token.clone(),
                        listener: !args.notify.is_empty(),
                    }
                    .encode(),
                );
                status
            }
            Err(e) => {
                eprintln!(
                    "faultbox-shim: cannot connect to the hand-off socket {}: {e}",
                    s.path.display()
                );
                std::process::exit(2);
            }
        },
    };

    if args.socket.is_none() {
        if let Err(e) = private_mounts() {
            status.fail(Stage::Mounts, e);
        }
        if !args.shared_net {
            if let Err(e) = faultbox_shim::net::loopback_up() {
                status.fail(Stage::Loopback, e);
            }
        }
    }
    if let Some(hosts) = &args.hosts {
        if let Err(e) = bind_hosts(hosts) {
            status.fail(Stage::Hosts, e);
        }
    }

    // Before the filter: these calls are the shim's, not the target's.
    if let Some(user) = &args.user {
        if let Err(e) = become_user(user) {
            status.fail(Stage::User, e);
        }
    }

    let program = handoff::to_cstring(args.program.as_os_str());
    let argv: Option<Vec<CString>> = args.argv.iter().map(|a| handoff::to_cstring(a)).collect();
    let (Some(program), Some(argv)) = (program, argv) else {
        status.fail(Stage::Exec, libc::EINVAL);
    };

    // Rust ignores SIGPIPE for itself, and an ignored signal stays ignored across
    // exec: give the target the default a shell would. Before the filter, since a
    // rule could name rt_sigaction.
    // SAFETY: restoring a default disposition installs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }

    if !args.notify.is_empty() {
        let prog = match filter::build(&args.notify) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("faultbox-shim: {e}");
                status.fail(Stage::Filter, libc::EINVAL);
            }
        };
        match status {
            Reporter::Pipe(fd) => {
                // The listener will take the lowest free fd: find it, announce it, then
                // install. The supervisor fetches it with pidfd_getfd while we block in
                // the hand-off call, so no syscall a rule might trap runs in between.
                let next = lowest_free_fd(fd);
                status.send(&Status::Installing { listener_fd: next });
                match filter::install(&prog) {
                    Ok(fd) if fd == next => {}
                    Ok(_) => std::process::exit(handoff::EXIT_CANNOT_EXEC),
                    Err(e) => {
                        eprintln!("faultbox-shim: {e}");
                        status.fail(Stage::Filter, e.errno());
                    }
                }
            }
            Reporter::Socket(sock) => socket_handoff(sock, &prog, &status),
        }
        filter::handoff_wait();
    } else if let Reporter::Socket(sock) = status {
        // No filter, so reading is safe: the executor's go is its gate (it sets up
        // the container's network first).
        wait_for_go(sock);
    }

    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // A bare name is looked up in the target's PATH, as a container runtime does with
    // an image's entrypoint; the executor resolves binaries' paths itself.
    let bare = !args.program.as_os_str().as_encoded_bytes().contains(&b'/');
    // SAFETY: program and every argv entry are NUL-terminated C strings that outlive the
    // call; argv_ptrs is NULL-terminated; environ is the process environment.
    unsafe {
        if bare {
            libc::execvp(program.as_ptr(), argv_ptrs.as_ptr());
        } else {
            libc::execv(program.as_ptr(), argv_ptrs.as_ptr());
        }
    }
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let _ = writeln!(
        std::io::stderr(),
        "faultbox: cannot execute {}: {}",
        args.program.display(),
        std::io::Error::from_raw_os_error(errno)
    );
    status.fail(Stage::Exec, errno);
}

/// Writes status lines on the inherited pipe or the hand-off socket.
#[derive(Clone, Copy)]
enum Reporter {
    Pipe(RawFd),
    Socket(RawFd),
}

impl Reporter {
    fn send(&self, s: &Status) {
        self.send_line(&s.encode());
    }

    fn send_line(&self, line: &str) {
        // SAFETY: line is a valid buffer of line.len() bytes. On the socket, a closed
        // peer is an error rather than SIGPIPE.
        unsafe {
            match *self {
                Reporter::Pipe(fd) => libc::write(fd, line.as_ptr().cast(), line.len()),
                Reporter::Socket(fd) => {
                    libc::send(fd, line.as_ptr().cast(), line.len(), libc::MSG_NOSIGNAL)
                }
            };
        }
    }

    fn fail(&self, stage: Stage, errno: i32) -> ! {
        self.send(&Status::Failed { stage, errno });
        std::process::exit(handoff::EXIT_CANNOT_EXEC)
    }
}

trait Errno {
    fn errno(&self) -> i32;
}

impl Errno for filter::FilterError {
    fn errno(&self) -> i32 {
        match self {
            filter::FilterError::Install(e) | filter::FilterError::NoNewPrivs(e) => {
                e.raw_os_error().unwrap_or(libc::EINVAL)
            }
            filter::FilterError::Build(_) => libc::EINVAL,
        }
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Mounts `hosts` over `/etc/hosts` in this mount namespace (private by now): the
/// test's service names resolve to their relays for the target only.
fn bind_hosts(hosts: &std::path::Path) -> Result<(), i32> {
    let src = handoff::to_cstring(hosts.as_os_str()).ok_or(libc::EINVAL)?;
    // SAFETY: both paths are NUL-terminated; a bind mount takes no fstype or data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            c"/etc/hosts".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Switches to `uid:gid[:g1,g2,...]` (resolved by the executor): supplementary groups,
/// then group, then user, since each step needs the privilege the next one drops.
fn become_user(spec: &str) -> Result<(), i32> {
    let (uid, gid, groups, home) = resolve_user(spec)?;
    // SAFETY: `groups` holds groups.len() ids; setgid/setuid take plain numbers.
    let ok = unsafe {
        libc::setgroups(groups.len(), groups.as_ptr()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if !ok {
        return Err(last_errno());
    }
    // As a container runtime does for its USER: HOME from the account, unless set.
    if let Some(home) = home {
        if std::env::var_os("HOME").is_none() {
            std::env::set_var("HOME", home);
        }
    }
    Ok(())
}

/// `uid:gid[:groups]` as numbers (the executor resolved them), or an image's USER as
/// a container runtime reads it: `name`, `uid`, `name:group` or `uid:gid`, names
/// looked up in this root's /etc/passwd and /etc/group (a static shim has no NSS).
/// A user without a group takes its account's primary group (0 if it has none) and
/// the groups that list it.
fn resolve_user(spec: &str) -> Result<(u32, u32, Vec<libc::gid_t>, Option<String>), i32> {
    let mut parts = spec.splitn(3, ':');
    let who = parts.next().unwrap_or("");
    let group = parts.next();
    let listed = parts.next();
    if let (Ok(uid), Some(Ok(gid))) = (who.parse::<u32>(), group.map(str::parse::<u32>)) {
        let groups = match listed {
            None => vec![gid],
            Some(list) => list
                .split(',')
                .map(|g| g.parse().map_err(|_| libc::EINVAL))
                .collect::<Result<_, _>>()?,
        };
        return Ok((uid, gid, groups, None));
    }
    if listed.is_some() {
        return Err(libc::EINVAL);
    }
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let passwd = read("/etc/passwd");
    let account = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 7
                && (f[0] == who
                    || f[2].parse::<u32>().ok()
                        == who.parse::<u32>().ok().filter(|_| !who.is_empty()))
        });
    let uid = match (who.parse::<u32>(), &account) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| libc::EINVAL)?,
        (Err(_), None) => return Err(libc::ENOENT),
    };
    let name = account.as_ref().map(|f| f[0].to_string());
    let etc_group = read("/etc/group");
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => etc_group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or(libc::ENOENT)?,
        },
        None => account
            .as_ref()
            .and_then(|f| f[3].parse().ok())
            .unwrap_or(0),
    };
    let mut groups = vec![gid];
    if let (None, Some(name)) = (group, &name) {
        for f in etc_group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    let home = account
        .as_ref()
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty());
    Ok((uid, gid, groups, home))
}

/// Keeps mount changes inside the namespace and mounts a /proc that shows the new PID
/// namespace, so the target sees itself as PID 1 there too.
fn private_mounts() -> Result<(), i32> {
    // SAFETY: mount with NULL source/fstype/data and propagation flags only.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    // SAFETY: all strings are NUL-terminated literals.
    let rc = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// The fd number the kernel will hand out next.
fn lowest_free_fd(open: RawFd) -> i32 {
    // SAFETY: dup of an open fd; the copy is closed right away.
    unsafe {
        let fd = libc::dup(open);
        libc::close(fd);
        fd
    }
}

/// The listener's fd once the main thread has installed the filter: 0 while it has
/// not, negative if installing failed (the main thread reports that itself).
static LISTENER: AtomicI32 = AtomicI32::new(0);

/// How long the helper waits for the filter; installing takes microseconds.
const INSTALL_LIMIT: Duration = Duration::from_secs(5);

/// Installs the filter on this thread and has a helper thread send the listener over
/// `sock`, then returns so that the caller blocks in the hand-off call.
///
/// A filter installed without `SECCOMP_FILTER_FLAG_TSYNC` (see [`filter::install`])
/// applies to the calling thread only, while threads share the fd table: the helper
/// can `sendmsg` the listener with no rule able to trap it, and this thread makes no
/// syscall between `seccomp()` and the hand-off call (the fd number passes through
/// memory). After the supervisor answers, `execve` ends the helper if it has not
/// ended already, and the filter covers the whole target.
fn socket_handoff(sock: RawFd, prog: &filter::Program, status: &Reporter) {
    let helper = std::thread::Builder::new()
        .name("faultbox-handoff".into())
        .spawn(move || send_listener(sock));
    if let Err(e) = helper {
        eprintln!("faultbox-shim: starting the hand-off thread: {e}");
        status.fail(Stage::Filter, e.raw_os_error().unwrap_or(libc::EAGAIN));
    }
    match filter::install(prog) {
        Ok(fd) => LISTENER.store(fd, Ordering::Release),
        Err(e) => {
            LISTENER.store(-1, Ordering::Release);
            eprintln!("faultbox-shim: {e}");
            status.fail(Stage::Filter, e.errno());
        }
    }
}

/// The helper thread: waits for the listener, sends it with its `L` line, and ends.
/// If it cannot, it ends the whole shim, whose main thread is blocked for good.
fn send_listener(sock: RawFd) {
    let start = Instant::now();
    let mut pause = Duration::from_micros(20);
    let fd = loop {
        match LISTENER.load(Ordering::Acquire) {
            0 => {}
            fd if fd > 0 => break fd,
            _ => return,
        }
        if start.elapsed() > INSTALL_LIMIT {
            eprintln!(
                "faultbox-shim: the seccomp filter was not installed within {INSTALL_LIMIT:?}"
            );
            Reporter::Socket(sock).fail(Stage::Filter, libc::ETIMEDOUT);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    };
    let line = Status::Installing { listener_fd: fd }.encode();
    if let Err(e) = fdpass::send_with_fd(sock, line.as_bytes(), fd) {
        eprintln!("faultbox-shim: handing over the seccomp listener: {e}");
        std::process::exit(handoff::EXIT_CANNOT_EXEC);
    }
}

/// Blocks until the executor sends [`handoff::GO`]; exits if it hangs up instead.
fn wait_for_go(sock: RawFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a valid one-byte buffer.
        let n = unsafe { libc::recv(sock, (&mut byte as *mut u8).cast(), 1, 0) };
        if n == 1 && byte == handoff::GO {
            return;
        }
        if n < 0 && last_errno() == libc::EINTR {
            continue;
        }
        let why = match n {
            0 => "it closed the socket".to_string(),
            1 => format!("unexpected byte {byte:#04x}"),
            _ => std::io::Error::last_os_error().to_string(),
        };
        eprintln!("faultbox-shim: the executor did not release the target: {why}");
        std::process::exit(handoff::EXIT_CANNOT_EXEC);
    }
}
