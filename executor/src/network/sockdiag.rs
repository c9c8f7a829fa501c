//! The sockets left in a network namespace, through the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`, what `ss` uses): listed, and TIME_WAIT ones destroyed. A
//! namespace is handed to another test only when nothing of the last one is left in
//! it; a TIME_WAIT entry would otherwise make a server's `bind` without
//! `SO_REUSEADDR` fail in the next test.
//!
//! The calling thread must be inside the namespace: a netlink socket answers for
//! the namespace it was created in.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `TCP_TIME_WAIT` in the kernel's state numbering.
pub const TIME_WAIT: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    iface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The head of `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Msg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

/// One socket of the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub family: u8,
    pub protocol: u8,
    /// The kernel's TCP state number (UDP sockets report 7, closed, when unconnected).
    pub state: u8,
    id: SockId,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("socket diagnostics: {0}")]
    Io(#[from] std::io::Error),
    #[error("socket diagnostics: the kernel answered {0}")]
    Kernel(std::io::Error),
    #[error("socket diagnostics: a malformed answer")]
    Malformed,
}

/// A netlink socket for the calling thread's network namespace.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    pub fn open() -> Result<Diag, DiagError> {
        // SAFETY: socket(2) with constant arguments; a non-negative result is ours.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Diag { fd, seq: 0 })
    }

    /// Every TCP and UDP socket of the namespace, IPv4 and IPv6, in any state.
    pub fn sockets(&mut self) -> Result<Vec<Entry>, DiagError> {
        self.dump(&[libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8], !0)
    }

    /// The namespace's TCP TIME_WAIT entries, IPv4 and IPv6. Asking for no listening
    /// state spares the kernel a walk of the listeners' table, which all namespaces
    /// share; so does leaving UDP out.
    pub fn time_wait(&mut self) -> Result<Vec<Entry>, DiagError> {
        self.dump(&[libc::IPPROTO_TCP as u8], 1 << TIME_WAIT)
    }

    fn dump(&mut self, protocols: &[u8], states: u32) -> Result<Vec<Entry>, DiagError> {
        let mut all = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for &protocol in protocols {
                let req = Request {
                    family,
                    protocol,
                    states,
                    ..Request::default()
                };
                self.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &req)?;
                self.receive(|kind, body| {
                    if kind == SOCK_DIAG_BY_FAMILY {
                        let m: Msg = read(body).ok_or(DiagError::Malformed)?;
                        all.push(Entry {
                            family: m.family,
                            protocol,
                            state: m.state,
                            id: m.id,
                        });
                    }
                    Ok(())
                })?;
            }
        }
        Ok(all)
    }

    /// Destroys one socket (a TIME_WAIT entry is simply forgotten).
    pub fn destroy(&mut self, e: &Entry) -> Result<(), DiagError> {
        let req = Request {
            family: e.family,
            protocol: e.protocol,
            states: !0,
            id: e.id,
            ..Request::default()
        };
        self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &req)?;
        self.receive(|_, _| Ok(()))
    }

    fn send(&mut self, kind: u16, flags: u16, req: &Request) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let hdr = NlMsgHdr {
            len: (size_of::<NlMsgHdr>() + size_of::<Request>()) as u32,
            kind,
            flags,
            seq: self.seq,
            pid: 0,
        };
        let mut buf = Vec::with_capacity(hdr.len as usize);
        buf.extend_from_slice(bytes_of(&hdr));
        buf.extend_from_slice(bytes_of(req));
        // SAFETY: sending a valid buffer on a socket we own (the kernel is the
        // default destination of a netlink socket).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n != buf.len() as isize {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Reads answers to the last request until its end (DONE, or the
    /// acknowledgement), handing each message's kind and body to `each`.
    fn receive(
        &mut self,
        mut each: impl FnMut(u16, &[u8]) -> Result<(), DiagError>,
    ) -> Result<(), DiagError> {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            // SAFETY: receiving into a buffer we own, of the length given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e.into());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= size_of::<NlMsgHdr>() {
                let h: NlMsgHdr = read(rest).ok_or(DiagError::Malformed)?;
                let len = h.len as usize;
                if len < size_of::<NlMsgHdr>() || len > rest.len() {
                    return Err(DiagError::Malformed);
                }
                let body = &rest[size_of::<NlMsgHdr>()..len];
                if h.seq == self.seq {
                    match h.kind {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code: i32 = read(body).ok_or(DiagError::Malformed)?;
                            return match code {
                                0 => Ok(()),
                                c => Err(DiagError::Kernel(std::io::Error::from_raw_os_error(-c))),
                            };
                        }
                        kind => each(kind, body)?,
                    }
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
            }
        }
    }
}

/// What `/proc/net/sockstat` and `sockstat6` count for the calling thread's
/// namespace: cheap to read, where a dump walks the host's whole TCP table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sockets of any protocol and family with an owner (or closing): TCP, UDP,
    /// UDP-Lite and raw, IPv4 and IPv6. TIME_WAIT entries are not among them.
    pub in_use: u64,
    /// TIME_WAIT entries.
    pub time_wait: u64,
}

pub fn counts() -> Result<Counts, DiagError> {
    let mut c = Counts::default();
    for file in [
        "/proc/thread-self/net/sockstat",
        "/proc/thread-self/net/sockstat6",
    ] {
        let text = std::fs::read_to_string(file)?;
        for line in text.lines() {
            let Some((proto, rest)) = line.split_once(':') else {
                continue;
            };
            let mut words = rest.split_whitespace();
            while let (Some(k), Some(v)) = (words.next(), words.next()) {
                let v: u64 = v.parse().map_err(|_| DiagError::Malformed)?;
                match (proto, k) {
                    (
                        "TCP" | "TCP6" | "UDP" | "UDP6" | "UDPLITE" | "UDPLITE6" | "RAW" | "RAW6",
                        "inuse",
                    ) => c.in_use += v,
                    ("TCP", "tw") => c.time_wait += v,
                    _ => {}
                }
            }
        }
    }
    Ok(c)
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a `repr(C)` struct of integers without padding, so all its bytes
    // are initialized; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A `T` from the first bytes of `b`, if there are enough.
fn read<T: Copy + Default>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: copies size_of::<T>() bytes from a slice at least that long into a
    // `repr(C)` integer struct, for which every bit pattern is valid.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), size_of::<T>())
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<SockId>(), 48);
        assert_eq!(size_of::<Request>(), 56);
        assert_eq!(size_of::<Msg>(), 52);
    }

    /// In a namespace of its own (needs root): a closed connection leaves TIME_WAIT,
    /// which is listed, destroyed, and then a port without SO_REUSEADDR binds again.
    #[test]
    fn time_wait_is_listed_and_destroyed() {
        let ns = crate::network::namespace::NetNs::create().expect("a namespace (root)");
        std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter().unwrap();
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let port = l.local_addr().unwrap().port();
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (mut a, _) = l.accept().unwrap();
                // The server side closes first: TIME_WAIT is on the listening port.
                a.write_all(b"x").unwrap();
                drop(a);
                let mut b = [0u8; 4];
                while c.read(&mut b).unwrap() > 0 {}
                drop(c);
                drop(l);
                assert_eq!(
                    counts().unwrap(),
                    Counts {
                        in_use: 0,
                        time_wait: 1
                    }
                );
                let mut d = Diag::open().unwrap();
                let left = d.sockets().unwrap();
                assert!(
                    left.iter()
                        .any(|e| e.state == TIME_WAIT && u16::from_be_bytes(e.id.sport) == port),
                    "{left:?}"
                );
                let tw: Vec<Entry> = left
                    .iter()
                    .copied()
                    .filter(|e| e.state == TIME_WAIT)
                    .collect();
                assert_eq!(d.time_wait().unwrap(), tw);
                for e in &tw {
                    d.destroy(e).unwrap();
                }
                assert_eq!(d.sockets().unwrap(), []);
                assert_eq!(d.time_wait().unwrap(), []);
                assert_eq!(counts().unwrap(), Counts::default());
                // SAFETY: socket/bind with a valid sockaddr_in; the fd is closed below.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let addr = libc::sockaddr_in {
                        sin_family: libc::AF_INET as u16,
                        sin_port: port.to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                        },
                        sin_zero: [0; 8],
                    };
                    let rc = libc::bind(
                        fd,
                        (&addr as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    );
                    libc::close(fd);
                    assert_eq!(
                        rc,
                        0,
                        "bind without SO_REUSEADDR: {}",
                        std::io::Error::last_os_error()
                    );
                }
            });
        });
    }
}
