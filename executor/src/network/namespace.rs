//! Network namespaces and the sockets that live in them. A socket belongs to the
//! namespace of the thread that creates it, whatever thread uses it afterwards: one
//! long-lived broker thread visits a namespace (`setns`), creates the socket there,
//! and returns home, so relays can listen in one service's namespace and dial into
//! another's from ordinary async tasks.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// A network namespace, kept alive by its descriptor.
#[derive(Debug)]
pub struct NetNs(OwnedFd);

enum Job {
    /// A new namespace with loopback up.
    Create,
    /// A TCP socket of this family in the namespace.
    Socket(i32, Domain),
}

type Request = (Job, mpsc::SyncSender<std::io::Result<OwnedFd>>);

impl NetNs {
    /// A new namespace with only `lo`, up.
    pub fn create() -> std::io::Result<NetNs> {
        broker(Job::Create).map(NetNs)
    }

    /// The namespace the calling thread is in (a test's sandbox).
    pub fn current() -> std::io::Result<NetNs> {
        Ok(NetNs(File::open("/proc/thread-self/ns/net")?.into()))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// A non-blocking TCP socket in this namespace, of `addr`'s family.
    pub fn socket(&self, addr: &SocketAddr) -> std::io::Result<Socket> {
        let domain = Domain::for_address(*addr);
        broker(Job::Socket(self.0.as_raw_fd(), domain)).map(Socket::from)
    }

    /// A listener at `addr` in this namespace (address reuse on, so a cut and healed
    /// edge can listen again at once).
    pub fn listen(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let s = self.socket(&addr)?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    }

    /// Connects to `addr` from inside this namespace.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let s = self.socket(&addr)?;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(s));
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr}: no answer within {timeout:?}"),
            )),
        }
    }
}

/// Runs `job` on the broker thread.
fn broker(job: Job) -> std::io::Result<OwnedFd> {
    static BROKER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = BROKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("faultbox-netns".into())
            .spawn(move || {
                let home = File::open("/proc/thread-self/ns/net");
                for (job, reply) in rx {
                    let result = match &home {
                        Ok(home) => run(job, home),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = reply.send(result);
                }
            })
            .expect("spawning the network namespace broker");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    sender
        .lock()
        .map_err(|_| std::io::Error::other("network namespace broker poisoned"))?
        .send((job, reply_tx))
        .map_err(|_| std::io::Error::other("network namespace broker is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("network namespace broker is gone"))?
}

/// Does `job` on the broker thread, which is home again when it returns.
fn run(job: Job, home: &File) -> std::io::Result<OwnedFd> {
    let enter = |fd: i32| {
        // SAFETY: setns(2) on a namespace descriptor; it moves only this thread.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let result = match job {
        Job::Create => {
            // SAFETY: unshare(2) of the network namespace moves only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            faultbox_shim::net::loopback_up()
                .map_err(std::io::Error::from_raw_os_error)
                .and_then(|()| File::open("/proc/thread-self/ns/net"))
                .map(OwnedFd::from)
        }
        Job::Socket(ns, domain) => {
            enter(ns)?;
            Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None).map(OwnedFd::from)
        }
    };
    if let Err(e) = enter(home.as_raw_fd()) {
        // A broker stuck in a test's namespace would put every later socket there.
        panic!("the network namespace broker could not return home: {e}");
    }
    result
}
