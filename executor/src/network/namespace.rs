//! Network namespaces and the sockets that live in them. A socket belongs to the
//! namespace of the thread that creates it, whatever thread uses it afterwards: one
//! long-lived broker thread visits a namespace (`setns`), creates the socket there,
//! and returns home, so relays can listen in one service's namespace and dial into
//! another's from ordinary async tasks.
//!
//! Creating a namespace costs about half a millisecond of kernel work, on every
//! service of every test: a few fresh ones are kept ready, made by a thread of their
//! own while tests run, so a test takes them without waiting. A namespace is never
//! reused: each comes from `unshare`, with only `lo`, up.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// A network namespace, kept alive by its descriptor.
///
/// A container service's namespace is Docker's, known only once its container runs:
/// until then the service has a fresh one like any other, and [`NetNs::adopt`] puts
/// the container's in its place, so whoever holds this value (the relays dialing the
/// service, its healthcheck) reaches the container from then on.
#[derive(Debug)]
pub struct NetNs {
    current: Mutex<Arc<OwnedFd>>,
    /// Namespaces adopted over: their descriptors stay open while this value lives,
    /// so a number handed out by [`NetNs::raw_fd`] never names another file.
    retired: Mutex<Vec<Arc<OwnedFd>>>,
}

enum Job {
    /// A TCP socket of this family in the namespace.
    Socket(Arc<OwnedFd>, Domain),
    /// Listeners at these addresses in the namespace, in one visit.
    Listen(Arc<OwnedFd>, Vec<SocketAddr>),
}

type Request = (Job, mpsc::SyncSender<Vec<std::io::Result<OwnedFd>>>);

/// How many fresh namespaces are kept ready.
const SPARE: usize = 8;

/// Fresh namespaces, and the signal that one was taken.
struct Pool {
    ready: Mutex<Vec<OwnedFd>>,
    taken: std::sync::Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            ready: Mutex::new(Vec::new()),
            taken: std::sync::Condvar::new(),
        }));
        let _ = std::thread::Builder::new()
            .name("faultbox-netns-pool".into())
            .spawn(move || {
                let Ok(home) = File::open("/proc/thread-self/ns/net") else {
                    return;
                };
                loop {
                    let mut ready = pool.ready.lock().unwrap_or_else(|p| p.into_inner());
                    while ready.len() >= SPARE {
                        ready = pool.taken.wait(ready).unwrap_or_else(|p| p.into_inner());
                    }
                    drop(ready);
                    match fresh(&home) {
                        Ok(fd) => pool
                            .ready
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(fd),
                        // Creation fails the same way for the test that asks; it
                        // then creates its own and reports why.
                        Err(_) => return,
                    }
                }
            });
        pool
    })
}

/// A new namespace with `lo` up, made by the calling thread, which is home again
/// afterwards.
fn fresh(home: &File) -> std::io::Result<OwnedFd> {
    // SAFETY: unshare(2) of the network namespace moves only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let made = faultbox_shim::net::loopback_up()
        .map_err(std::io::Error::from_raw_os_error)
        .and_then(|()| File::open("/proc/thread-self/ns/net"))
        .map(OwnedFd::from);
    go_home(home);
    made
}

fn go_home(home: &File) {
    // SAFETY: setns(2) on a namespace descriptor; it moves only this thread.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // A thread stuck in a test's namespace would put every later socket there.
        panic!(
            "could not return to the host's network namespace: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl NetNs {
    /// A new namespace with only `lo`, up: a ready one, or one made now.
    pub fn create() -> std::io::Result<NetNs> {
        let p = pool();
        let spare = p.ready.lock().unwrap_or_else(|p| p.into_inner()).pop();
        p.taken.notify_one();
        match spare {
            Some(fd) => Ok(NetNs::from_fd(fd)),
            None => {
                let home = File::open("/proc/thread-self/ns/net")?;
                std::thread::scope(|s| s.spawn(|| fresh(&home)).join())
                    .map_err(|_| std::io::Error::other("creating a network namespace panicked"))?
                    .map(NetNs::from_fd)
            }
        }
    }

    fn from_fd(fd: OwnedFd) -> NetNs {
        NetNs {
            current: Mutex::new(Arc::new(fd)),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The namespace process `pid` is in (a container's main process).
    pub fn of_process(pid: i32) -> std::io::Result<NetNs> {
        Ok(NetNs::from_fd(
            File::open(format!("/proc/{pid}/ns/net"))?.into(),
        ))
    }

    /// From now on this value stands for `other`'s namespace. Work already under way
    /// in the old one finishes there (it holds its own reference).
    pub fn adopt(&self, other: NetNs) {
        let fd = other.handle();
        let old = std::mem::replace(
            &mut *self.current.lock().unwrap_or_else(|p| p.into_inner()),
            fd,
        );
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(old);
    }

    fn handle(&self) -> Arc<OwnedFd> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Moves the calling thread (only it) into this namespace.
    pub fn enter(&self) -> std::io::Result<()> {
        let fd = self.handle();
        // SAFETY: setns(2) on a namespace descriptor we hold; it moves only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The namespace the calling thread is in (a test's sandbox).
    pub fn current() -> std::io::Result<NetNs> {
        Ok(NetNs::from_fd(
            File::open("/proc/thread-self/ns/net")?.into(),
        ))
    }

    /// The descriptor, for a child cloned into the namespace; it stays open while
    /// this value lives.
    pub fn raw_fd(&self) -> RawFd {
        self.handle().as_raw_fd()
    }

    /// A non-blocking TCP socket in this namespace, of `addr`'s family.
    pub fn socket(&self, addr: &SocketAddr) -> std::io::Result<Socket> {
        let domain = Domain::for_address(*addr);
        broker(Job::Socket(self.handle(), domain))?
            .pop()
            .expect("one socket")
            .map(Socket::from)
    }

    /// Listeners at `addrs` in this namespace, made in one visit (address reuse on,
    /// so an address can be listened on again at once).
    pub fn listen(
        &self,
        addrs: &[SocketAddr],
    ) -> std::io::Result<Vec<std::io::Result<std::net::TcpListener>>> {
        Ok(broker(Job::Listen(self.handle(), addrs.to_vec()))?
            .into_iter()
            .map(|r| r.map(|fd| Socket::from(fd).into()))
            .collect())
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
fn broker(job: Job) -> std::io::Result<Vec<std::io::Result<OwnedFd>>> {
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
                        Err(e) => vec![Err(std::io::Error::new(e.kind(), e.to_string()))],
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
        .map_err(|_| std::io::Error::other("network namespace broker is gone"))
}

/// Does `job` on the broker thread, which is home again when it returns.
fn run(job: Job, home: &File) -> Vec<std::io::Result<OwnedFd>> {
    let ns = match &job {
        Job::Socket(ns, _) | Job::Listen(ns, _) => ns.as_raw_fd(),
    };
    // SAFETY: setns(2) on a namespace descriptor; it moves only this thread.
    if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
        return vec![Err(std::io::Error::last_os_error())];
    }
    let socket =
        |domain| Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None).map(OwnedFd::from);
    let result = match job {
        Job::Socket(_, domain) => vec![socket(domain)],
        Job::Listen(_, addrs) => addrs
            .into_iter()
            .map(|addr| {
                let s = Socket::from(socket(Domain::for_address(addr))?);
                s.set_reuse_address(true)?;
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(OwnedFd::from(s))
            })
            .collect(),
    };
    go_home(home);
    result
}
