//! `faultbox-shim`: runs as PID 1 of fresh user, PID, network and mount namespaces
//! (created and uid-mapped by the launcher's clone), finishes their setup, installs the seccomp filter
//! when asked, hands the listener over, and then becomes the target with `execve`.
//!
//! Failures before exec are reported on the status pipe (fd 3) and exit 127.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::RawFd;

use faultbox_shim::filter;
use faultbox_shim::handoff::{self, ShimArgs, Stage, Status};

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args = match ShimArgs::parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("faultbox-shim: {e}");
            eprintln!("faultbox-shim is started by faultbox; it is not meant to be run by hand");
            std::process::exit(2);
        }
    };
    // SAFETY: fcntl on an fd number; failure (fd not open) is checked.
    if unsafe { libc::fcntl(handoff::STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        eprintln!(
            "faultbox-shim: status fd {} is not open",
            handoff::STATUS_FD
        );
        std::process::exit(2);
    }
    let status = Reporter(handoff::STATUS_FD);

    if let Err(e) = private_mounts() {
        status.fail(Stage::Mounts, e);
    }
    if !args.shared_net {
        if let Err(e) = faultbox_shim::net::loopback_up() {
            status.fail(Stage::Loopback, e);
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
        // The listener will take the lowest free fd: find it, announce it, then
        // install. The supervisor fetches it with pidfd_getfd while we block in the
        // hand-off call, so no syscall a rule might trap runs in between.
        let next = lowest_free_fd();
        status.send(&Status::Installing { listener_fd: next });
        match filter::install(&prog) {
            Ok(fd) if fd == next => {}
            Ok(_) => std::process::exit(handoff::EXIT_CANNOT_EXEC),
            Err(e) => {
                eprintln!("faultbox-shim: {e}");
                status.fail(Stage::Filter, e.errno());
            }
        }
        filter::handoff_wait();
    }

    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // SAFETY: program and every argv entry are NUL-terminated C strings that outlive the
    // call; argv_ptrs is NULL-terminated; environ is the process environment.
    unsafe {
        libc::execv(program.as_ptr(), argv_ptrs.as_ptr());
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

/// Writes status lines on the inherited pipe.
struct Reporter(RawFd);

impl Reporter {
    fn send(&self, s: &Status) {
        let line = s.encode();
        // SAFETY: line is a valid buffer of line.len() bytes.
        unsafe {
            libc::write(self.0, line.as_ptr().cast(), line.len());
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
    let mut parts = spec.splitn(3, ':');
    let mut id = || -> Result<u32, i32> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(libc::EINVAL)
    };
    let (uid, gid) = (id()?, id()?);
    let groups: Vec<libc::gid_t> = match parts.next() {
        None => vec![gid],
        Some(list) => list
            .split(',')
            .map(|g| g.parse().map_err(|_| libc::EINVAL))
            .collect::<Result<_, _>>()?,
    };
    // SAFETY: `groups` holds groups.len() ids; setgid/setuid take plain numbers.
    let ok = unsafe {
        libc::setgroups(groups.len(), groups.as_ptr()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(last_errno())
    }
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
fn lowest_free_fd() -> i32 {
    // SAFETY: dup of an open fd; the copy is closed right away.
    unsafe {
        let fd = libc::dup(handoff::STATUS_FD);
        libc::close(fd);
        fd
    }
}
