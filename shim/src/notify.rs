//! The seccomp user-notification ioctls on a listener fd.

use std::io;
use std::os::fd::RawFd;

pub use libc::seccomp_notif as Notif;

const IOC_MAGIC: u64 = b'!' as u64;
const fn iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (IOC_MAGIC << 8) | nr
}
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (IOC_MAGIC << 8) | nr
}
const NOTIF_RECV: u64 = iowr(0, std::mem::size_of::<libc::seccomp_notif>() as u64);
const NOTIF_SEND: u64 = iowr(1, std::mem::size_of::<libc::seccomp_notif_resp>() as u64);
const NOTIF_ID_VALID: u64 = iow(2, 8);
const NOTIF_SET_FLAGS: u64 = iow(4, 8);
const USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// A zeroed notification buffer (the kernel requires zeroed input).
pub fn empty() -> Notif {
    // SAFETY: seccomp_notif is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Receives one notification. Blocks if none is pending. `ENOENT` means the call that
/// caused it is gone (its thread was killed) and is not an error of the listener.
pub fn recv(fd: RawFd, req: &mut Notif) -> io::Result<()> {
    *req = empty();
    // SAFETY: req is a valid, writable seccomp_notif for the duration of the ioctl.
    let rc = unsafe { libc::ioctl(fd, NOTIF_RECV as _, req as *mut Notif) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn send(fd: RawFd, resp: &libc::seccomp_notif_resp) -> io::Result<()> {
    // SAFETY: resp is a valid seccomp_notif_resp for the duration of the ioctl.
    let rc = unsafe { libc::ioctl(fd, NOTIF_SEND as _, resp as *const libc::seccomp_notif_resp) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Lets the call proceed in the kernel as if it had not been intercepted.
pub fn respond_continue(fd: RawFd, id: u64) -> io::Result<()> {
    send(
        fd,
        &libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        },
    )
}

/// Fails the call with `errno` without running it.
pub fn respond_error(fd: RawFd, id: u64, errno: i32) -> io::Result<()> {
    send(
        fd,
        &libc::seccomp_notif_resp {
            id,
            val: 0,
            error: -errno,
            flags: 0,
        },
    )
}

/// Completes the call without running it, as if it had returned `val`.
pub fn respond_value(fd: RawFd, id: u64, val: i64) -> io::Result<()> {
    send(
        fd,
        &libc::seccomp_notif_resp {
            id,
            val,
            error: 0,
            flags: 0,
        },
    )
}

/// Whether notification `id` is still pending: checked after reading the target's
/// memory, because the pid behind it could have died and been reused meanwhile.
pub fn id_valid(fd: RawFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: the ioctl reads one u64 through the pointer, which is valid.
    unsafe { libc::ioctl(fd, NOTIF_ID_VALID as _, &mut id as *mut u64) == 0 }
}

/// Asks the kernel to wake the supervisor on the target's CPU and the target on the
/// supervisor's (Linux 6.6+). Without it, every round trip pays for cross-CPU wake-ups.
pub fn set_sync_wakeup(fd: RawFd) -> io::Result<()> {
    // SAFETY: SET_FLAGS takes its argument by value.
    let rc = unsafe { libc::ioctl(fd, NOTIF_SET_FLAGS as _, USER_NOTIF_FD_SYNC_WAKE_UP) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
