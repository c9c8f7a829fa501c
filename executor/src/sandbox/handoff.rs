//! The hand-off over a unix socket, for a shim the executor does not start itself: a
//! container's entrypoint. Neither a pid (entrypoints fork, and the container has a
//! PID namespace of its own) nor an inherited pipe reaches it there, so the shim
//! connects to a socket the executor listens on, says who it is, and sends its
//! seccomp listener over it (`SCM_RIGHTS`); see `faultbox_shim::handoff` for the lines.
//!
//! The caller:
//! 1. [`HandoffSocket::bind`]s in a directory it then mounts into the container, and
//!    gives the shim `--handoff-socket <the path inside> --handoff-token <token>`
//!    (`ShimArgs::socket`);
//! 2. starts the container and calls [`HandoffSocket::accept`];
//! 3. with a filter, passes [`Accepted::listener`] and [`Accepted::peer_pid`] to
//!    `engine::supervisor::spawn`, whose first answer (to the hand-off call) lets the
//!    shim exec; without one, calls [`ShimConn::go`]. Either is the place to finish
//!    the container's network first;
//! 4. calls [`ShimConn::wait_exec`], which returns once the target has exec'd.
//!
//! Every wait has a timeout, and the socket file is gone once a shim has connected
//! (or the [`HandoffSocket`] is dropped).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use faultbox_shim::fdpass;
use faultbox_shim::handoff::{self, Hello, Stage, Status};

/// `sun_path` holds 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// A line longer than this is not the shim speaking.
const MAX_LINE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("hand-off token {0:?} is not 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadToken(String),
    #[error("hand-off socket {0}: the path is longer than a unix socket allows ({MAX_SOCKET_PATH} bytes)")]
    PathTooLong(PathBuf),
    #[error("creating the hand-off socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("{what} within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("{}: {}", .stage.describe(), io::Error::from_raw_os_error(*.errno))]
    Setup { stage: Stage, errno: i32 },
    #[error("the shim on the hand-off socket is {got:?}, not {expected:?}")]
    WrongToken { expected: String, got: String },
    #[error("the shim hung up {0}")]
    Vanished(&'static str),
    #[error("the shim sent {0:?}, which is not part of the hand-off")]
    Protocol(String),
    #[error("the shim's listener line came with {0} descriptors instead of one")]
    NoListener(usize),
    #[error("the descriptor the shim sent is not a seccomp listener")]
    NotAListener,
    #[error("hand-off socket: {0}")]
    Io(#[from] io::Error),
}

/// A listening hand-off socket for one shim. Dropping it removes the file.
pub struct HandoffSocket {
    listener: UnixListener,
    path: PathBuf,
    token: String,
}

impl HandoffSocket {
    /// Creates a socket file with a fresh name in `dir`, readable and writable by its
    /// owner only, for the shim that says `token`.
    pub fn bind(dir: &Path, token: &str) -> Result<HandoffSocket, HandoffError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if !handoff::valid_token(token) {
            return Err(HandoffError::BadToken(token.to_string()));
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("fb-{}-{n}.sock", std::process::id());
        let path = dir.join(&name);
        let bind_err = |source| HandoffError::Bind {
            path: path.clone(),
            source,
        };
        // A file of this name is a leftover of an earlier process with our pid.
        let _ = std::fs::remove_file(&path);
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .map_err(bind_err)?;
        // A deep directory (an executor's work directory) makes a path longer than a
        // socket address holds: bind through the directory's descriptor instead,
        // whose /proc path is short.
        let held_dir;
        let bind_at = if path.as_os_str().len() > MAX_SOCKET_PATH {
            held_dir = std::fs::File::open(dir).map_err(bind_err)?;
            PathBuf::from(format!("/proc/self/fd/{}/{name}", held_dir.as_raw_fd()))
        } else {
            path.clone()
        };
        if bind_at.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HandoffError::PathTooLong(path));
        }
        let addr = socket2::SockAddr::unix(&bind_at).map_err(bind_err)?;
        sock.bind(&addr).map_err(bind_err)?;
        let listener = HandoffSocket {
            listener: UnixListener::from(OwnedFd::from(sock)),
            path: path.clone(),
            token: token.to_string(),
        };
        // Nobody can connect before listen(), so the mode is right before anyone can.
        std::fs::set_permissions(&listener.path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        // SAFETY: listen on a bound socket we own.
        if unsafe { libc::listen(listener.listener.as_raw_fd(), 1) } != 0 {
            return Err(bind_err(io::Error::last_os_error()));
        }
        listener.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(listener)
    }

    /// The socket's path on this host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket's name in its directory: the shim's path is this name in the
    /// directory as mounted inside the container.
    pub fn file_name(&self) -> &OsStr {
        self.path.file_name().expect("bind made a file name")
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Waits up to `timeout` for the shim to connect, say hello and, if it has a
    /// filter, hand over its listener. Blocking: call it off the async runtime.
    pub fn accept(self, timeout: Duration) -> Result<Accepted, HandoffError> {
        let deadline = Instant::now() + timeout;
        let sock = loop {
            wait_readable(
                self.listener.as_raw_fd(),
                deadline,
                "nothing connected to the hand-off socket (did the container start, with the socket's directory mounted?)",
                timeout,
            )?;
            match self.listener.accept() {
                Ok((sock, _)) => break sock,
                // The connection went away between poll and accept.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // One shim per socket: nobody else may connect.
        let _ = std::fs::remove_file(&self.path);
        sock.set_nonblocking(false)?;
        let peer_pid = peer_pid(&sock)?;
        let mut conn = ShimConn {
            sock,
            buf: Vec::new(),
            fds: Vec::new(),
        };
        let line = conn
            .next_line(deadline, "the shim did not say hello", timeout)?
            .ok_or(HandoffError::Vanished("before saying hello"))?;
        let hello = Hello::decode(&line).ok_or(HandoffError::Protocol(line))?;
        if hello.token != self.token {
            return Err(HandoffError::WrongToken {
                expected: self.token.clone(),
                got: hello.token,
            });
        }
        if !hello.listener {
            return Ok(Accepted {
                peer_pid,
                listener: None,
                target_listener_fd: None,
                conn,
            });
        }
        let line = conn
            .next_line(
                deadline,
                "the shim did not hand over its seccomp listener",
                timeout,
            )?
            .ok_or(HandoffError::Vanished(
                "before handing over its seccomp listener",
            ))?;
        match Status::decode(&line) {
            Some(Status::Installing { listener_fd }) => {
                if conn.fds.len() != 1 {
                    return Err(HandoffError::NoListener(conn.fds.len()));
                }
                let fd = conn.fds.pop().expect("one fd");
                if !crate::sandbox::launch::is_listener(fd.as_raw_fd()) {
                    return Err(HandoffError::NotAListener);
                }
                if let Err(e) = faultbox_shim::notify::set_sync_wakeup(fd.as_raw_fd()) {
                    tracing::debug!(target: "engine", error = %e, "synchronous wake-up not available");
                }
                Ok(Accepted {
                    peer_pid,
                    listener: Some(fd),
                    target_listener_fd: Some(listener_fd),
                    conn,
                })
            }
            Some(Status::Failed { stage, errno }) => Err(HandoffError::Setup { stage, errno }),
            None => Err(HandoffError::Protocol(line)),
        }
    }
}

impl Drop for HandoffSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A shim that has connected.
pub struct Accepted {
    /// The shim's pid as this host sees it (`SO_PEERCRED`): the supervisor's
    /// `shim_pid`, which tells the shim's own hand-off and exec calls apart.
    pub peer_pid: i32,
    /// The seccomp listener, when the shim has a filter. The shim is blocked in its
    /// hand-off call until a supervisor answers it.
    pub listener: Option<OwnedFd>,
    /// The listener's fd number inside the shim, for logs.
    pub target_listener_fd: Option<i32>,
    pub conn: ShimConn,
}

/// The rest of the conversation with a shim: the release without a filter, and the
/// end-of-file that confirms its exec.
pub struct ShimConn {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl ShimConn {
    /// Lets a shim without a filter exec its target.
    pub fn go(&mut self) -> Result<(), HandoffError> {
        // SAFETY: sending one byte from a valid buffer; a closed peer is EPIPE.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                [handoff::GO].as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        match n {
            1 => Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EPIPE) {
                    Err(HandoffError::Vanished("before it was released"))
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Waits up to `timeout` for the target's exec (end-of-file on the socket) or the
    /// reason it failed. May be called again after a timeout.
    pub fn wait_exec(&mut self, timeout: Duration) -> Result<(), HandoffError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline, "the target was not executed", timeout)? {
                None => return Ok(()),
                Some(line) => match Status::decode(&line) {
                    Some(Status::Failed { stage, errno }) => {
                        return Err(HandoffError::Setup { stage, errno })
                    }
                    Some(Status::Installing { .. }) => {}
                    None => return Err(HandoffError::Protocol(line)),
                },
            }
        }
    }

    /// The next line without its newline; `None` at end-of-file. Descriptors that
    /// arrive meanwhile are kept in `fds`.
    fn next_line(
        &mut self,
        deadline: Instant,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Option<String>, HandoffError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(HandoffError::Protocol(
                    String::from_utf8_lossy(&self.buf).into_owned(),
                ));
            }
            wait_readable(self.sock.as_raw_fd(), deadline, what, timeout)?;
            let mut chunk = [0u8; 256];
            let n = fdpass::recv_with_fds(self.sock.as_raw_fd(), &mut chunk, &mut self.fds)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Waits until `fd` is readable (or hung up), or fails with a timeout naming `what`.
fn wait_readable(
    fd: RawFd,
    deadline: Instant,
    what: &'static str,
    timeout: Duration,
) -> Result<(), HandoffError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up, so that a wait never ends before the deadline.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(());
        }
        if rc == 0 {
            return Err(HandoffError::Timeout { what, timeout });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e.into());
        }
    }
}

/// The pid of the process that connected, in this host's PID namespace.
fn peer_pid(sock: &UnixStream) -> io::Result<i32> {
    // SAFETY: ucred is plain old data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred is a writable ucred and len its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fbtest-handoff-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_socket_is_private_and_removed_when_nobody_comes() {
        let dir = scratch("nobody");
        let s = HandoffSocket::bind(&dir, "svc").unwrap();
        let path = s.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let start = Instant::now();
        let e = s.accept(Duration::from_millis(100)).err().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(matches!(e, HandoffError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("nothing connected"), "{e}");
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stranger_is_refused_and_a_silent_peer_times_out() {
        let dir = scratch("stranger");
        let s = HandoffSocket::bind(&dir, "orders").unwrap();
        let mut c = UnixStream::connect(s.path()).unwrap();
        c.write_all(b"H inventory gate\n").unwrap();
        let e = s.accept(Duration::from_secs(5)).err().unwrap();
        assert!(matches!(e, HandoffError::WrongToken { .. }), "{e}");

        let s = HandoffSocket::bind(&dir, "orders").unwrap();
        let _c = UnixStream::connect(s.path()).unwrap();
        let e = s.accept(Duration::from_millis(50)).err().unwrap();
        assert!(e.to_string().contains("did not say hello"), "{e}");

        let s = HandoffSocket::bind(&dir, "orders").unwrap();
        let mut c = UnixStream::connect(s.path()).unwrap();
        c.write_all(b"H orders listener\nL 5\n").unwrap();
        let e = s.accept(Duration::from_secs(5)).err().unwrap();
        assert!(matches!(e, HandoffError::NoListener(0)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_tokens_are_refused_and_deep_directories_work() {
        let dir = scratch("names");
        assert!(matches!(
            HandoffSocket::bind(&dir, "a b").err().unwrap(),
            HandoffError::BadToken(_)
        ));
        // A directory too deep for a socket address still works, through its fd.
        let deep = dir.join("d".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = HandoffSocket::bind(&deep, "ok").unwrap();
        assert!(sock.path().as_os_str().len() > MAX_SOCKET_PATH);
        assert!(sock.path().exists(), "the socket is in the deep directory");
        drop(sock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
