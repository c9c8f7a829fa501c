//! Building the seccomp filter with libseccomp and installing it with a listener.
//!
//! The filter notifies only the syscalls the rules name; everything else is allowed
//! by the BPF program itself and never leaves the kernel. One extra entry notifies
//! `sched_get_priority_min(HANDOFF_COOKIE)`: the shim makes that call right after installing the
//! filter and blocks in it until the supervisor holds the listener, so the hand-off
//! needs no syscall that a rule could trap.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};

/// The argument that marks the shim's own hand-off call; no real program passes it.
pub const HANDOFF_COOKIE: u64 = 0xfa17_b0c5_5eed_c0de;

/// The syscall the shim blocks in during the hand-off. A filter entry compares its
/// argument, which costs a few instructions on every call of it, so it is one that
/// no program makes in a hot loop.
pub const HANDOFF_SYSCALL: i64 = libc::SYS_sched_get_priority_min;

const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("building the seccomp filter: {0}")]
    Build(String),
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(std::io::Error),
    #[error("installing the seccomp filter: {0} (seccomp user notification needs Linux 5.6 or later with CONFIG_SECCOMP_FILTER)")]
    Install(std::io::Error),
}

/// A compiled BPF program, ready to install.
pub struct Program(Vec<libc::sock_filter>);

impl Program {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compiles a filter for the native architecture that notifies the syscalls `notify`
/// and allows all others.
pub fn build(notify: &[i32]) -> Result<Program, FilterError> {
    let err = |e: libseccomp::error::SeccompError| FilterError::Build(e.to_string());
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(err)?;
    // Calls made through a foreign ABI (i386 on x86_64) are let through rather than
    // killing the target: Faultbox injects faults, it does not sandbox.
    ctx.set_act_badarch(ScmpAction::Allow).map_err(err)?;
    let mut nrs: Vec<i32> = notify.to_vec();
    nrs.sort_unstable();
    nrs.dedup();
    for &nr in &nrs {
        ctx.add_rule(ScmpAction::Notify, nr).map_err(err)?;
    }
    if !nrs.contains(&(HANDOFF_SYSCALL as i32)) {
        ctx.add_rule_conditional(
            ScmpAction::Notify,
            HANDOFF_SYSCALL as i32,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, HANDOFF_COOKIE)],
        )
        .map_err(err)?;
    }
    export(&ctx)
}

fn export(ctx: &ScmpFilterContext) -> Result<Program, FilterError> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the returned fd, if
    // valid, is owned by nobody else.
    let fd = unsafe { libc::memfd_create(c"faultbox-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FilterError::Build(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just created and is valid.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file)
        .map_err(|e| FilterError::Build(e.to_string()))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| FilterError::Build(format!("reading exported BPF: {e}")))?;
    let insns = bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Ok(Program(insns))
}

/// Installs `prog` on the calling thread and returns the listener fd.
///
/// Sets `no_new_privs` first, which is what lets an unprivileged process install a
/// filter. `WAIT_KILLABLE_RECV` keeps a notified call from being interrupted by
/// non-fatal signals once the supervisor has received it (Go's SIGURG preemption
/// would otherwise spin); kernels without it get a plain listener.
pub fn install(prog: &Program) -> Result<RawFd, FilterError> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(FilterError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let fprog = libc::sock_fprog {
        len: prog.0.len() as u16,
        filter: prog.0.as_ptr() as *mut libc::sock_filter,
    };
    let mut flags = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    loop {
        // SAFETY: fprog points at prog's instructions, which outlive the call; the
        // kernel copies the program before returning.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc >= 0 {
            return Ok(rc as RawFd);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL)
            && flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0
        {
            flags &= !SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
            continue;
        }
        return Err(FilterError::Install(e));
    }
}

/// The hand-off call: blocks until the supervisor, now holding the listener, answers.
pub fn handoff_wait() {
    // SAFETY: an invalid policy only makes the call fail with EINVAL; the cookie is
    // what makes the filter notify it.
    unsafe {
        libc::syscall(HANDOFF_SYSCALL, HANDOFF_COOKIE);
    }
}
