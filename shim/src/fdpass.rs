//! Passing file descriptors over a unix stream socket (`SCM_RIGHTS`): how a shim in a
//! container hands its seccomp listener to a supervisor that cannot reach it by pid.
//!
//! Both ends live here so that the sender (the shim) and the receiver (the executor)
//! agree on the message layout, and so one test covers both.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// At most this many descriptors are accepted with one message; the shim sends one.
pub const MAX_FDS: usize = 4;

/// Room for `MAX_FDS` descriptors in a control message, in `u64`s so that the
/// buffer has the alignment `cmsghdr` needs.
const CMSG_WORDS: usize = 8;

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `bytes` with `fd` attached. Never raises `SIGPIPE`: a closed peer is `EPIPE`.
///
/// The descriptor travels with the first byte of `bytes`, so a receiver that reads
/// the message with [`recv_with_fds`] has the descriptor by the time it has the bytes.
pub fn send_with_fd(sock: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    assert!(
        !bytes.is_empty(),
        "a descriptor needs at least one byte to travel with"
    );
    let mut control = [0u64; CMSG_WORDS];
    debug_assert!(cmsg_space(1) <= std::mem::size_of_val(&control));
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: msghdr is plain old data; zero is valid for every member not set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // The descriptor goes with the first part; any rest goes plain.
        if sent == 0 {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = cmsg_space(1) as _;
            // SAFETY: msg_control points at a buffer of at least CMSG_SPACE(one fd)
            // bytes, so the first header and its data fit inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
            }
        }
        // SAFETY: msg points at iov and control, both alive and sized as declared.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes; descriptors that came with them are appended to
/// `fds` (close-on-exec). Returns the byte count, 0 at end-of-file.
///
/// A message that carried more descriptors than fit is an error (`EMSGSIZE`): the
/// kernel has closed the ones that did not fit, so the hand-off cannot be trusted.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut control = [0u64; CMSG_WORDS];
    debug_assert!(cmsg_space(MAX_FDS) <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; zero is valid for every member not set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS) as _;
    let n = loop {
        // SAFETY: msg points at iov (over buf) and control, both alive and writable
        // for the sizes declared.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed
    // control messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them, and every
    // SCM_RIGHTS entry holds descriptors that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_descriptor_arrives_with_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = UnixStream::pair().unwrap();
        send_with_fd(a.as_raw_fd(), b"L 7\n", w.as_raw_fd()).unwrap();
        drop(w);
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"L 7\n");
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same socket: writing through it reaches r.
        let mut passed = std::fs::File::from(fds.pop().unwrap());
        passed.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        // SAFETY: F_GETFD on an fd we hold.
        let flags = unsafe { libc::fcntl(passed.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        drop(a);
        assert_eq!(recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap(), 0);
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = send_with_fd(a.as_raw_fd(), b"L 1\n", a.as_raw_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
