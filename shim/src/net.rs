//! Network namespace setup shared by the shim and the test sandbox.

use std::os::fd::FromRawFd;

/// Brings `lo` up in the calling thread's network namespace: a new namespace has it,
/// but down. Returns the errno on failure.
pub fn loopback_up() -> Result<(), i32> {
    let last = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: socket() with constant arguments.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(last());
    }
    // SAFETY: sock was just created and is owned here.
    let _guard = unsafe { std::fs::File::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    if unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(last());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req) } != 0 {
        return Err(last());
    }
    Ok(())
}
