//! Network namespaces and the sockets that live in them. A socket belongs to the
//! namespace of the thread that creates it, whatever thread uses it afterwards: one
//! long-lived broker thread visits a namespace (`setns`), creates the socket there,
//! and returns home, so relays can listen in one service's namespace and dial into
//! another's from ordinary async tasks.
//!
//! Creating a namespace costs about half a millisecond of kernel work, on every
//! service of every test, and tearing it down as much again: a few are kept ready by
//! a thread of their own, so a test takes them without waiting. A namespace a test is
//! done with goes back to that thread, which hands it out again only when nothing of
//! the test is left in it: no thread of ours inside, no socket but TIME_WAIT entries
//! (destroyed, see [`crate::network::sockdiag`]). Otherwise it is dropped and the
//! kernel tears it down. Either way a test gets a namespace with only `lo`, up, and
//! no sockets; services cannot have changed its configuration, since their user
//! namespace does not own it.

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
    /// Made for a test (not adopted, not someone else's): goes back to the pool.
    recycle: std::sync::atomic::AtomicBool,
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

/// How many namespaces are made ahead of need at first; each time a test finds
/// none ready the pool keeps [`GROW`] more, up to [`KEEP`] (many slots of
/// many-service tests use dozens at once).
const SPARE: usize = 8;
const GROW: usize = 4;
/// How many ready ones are kept at most: returned ones beyond are dropped.
const KEEP: usize = 64;

/// Ready namespaces, returned ones waiting to be checked, and the signal that
/// either changed.
struct Pool {
    state: Mutex<PoolState>,
    wake: std::sync::Condvar,
}

struct PoolState {
    ready: Vec<OwnedFd>,
    returned: Vec<OwnedFd>,
    /// How many the pool thread keeps ready.
    spare: usize,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: Mutex::new(PoolState {
                ready: Vec::new(),
                returned: Vec::new(),
                spare: SPARE,
            }),
            wake: std::sync::Condvar::new(),
        }));
        let _ = std::thread::Builder::new()
            .name("faultbox-netns-pool".into())
            .spawn(move || {
                let Ok(home) = File::open("/proc/thread-self/ns/net") else {
                    return;
                };
                loop {
                    let mut st = pool.lock();
                    while st.returned.is_empty() && st.ready.len() >= st.spare {
                        st = pool.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    if let Some(fd) = st.returned.pop() {
                        drop(st);
                        let clean = scrub(&fd, &home);
                        tracing::debug!(target: "netns", clean, "a test's namespace returned");
                        if clean {
                            let mut st = pool.lock();
                            if st.ready.len() < KEEP {
                                st.ready.push(fd);
                            }
                        }
                        continue;
                    }
                    drop(st);
                    match fresh(&home) {
                        Ok(fd) => pool.lock().ready.push(fd),
                        // Creation fails the same way for the test that asks; it
                        // then creates its own and reports why.
                        Err(_) => return,
                    }
                }
            });
        pool
    })
}

/// Whether the namespace behind `fd` may serve another test, after destroying its
/// TIME_WAIT entries. Runs on the pool thread, which is home again afterwards.
fn scrub(fd: &OwnedFd, home: &File) -> bool {
    // A thread of ours still inside (a test's body that was left behind) could make
    // sockets there at any time.
    let Some(name) = ns_name(fd) else {
        return false;
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    for task in tasks.flatten() {
        if std::fs::read_link(task.path().join("ns/net")).is_ok_and(|l| l.as_os_str() == name) {
            return false;
        }
    }
    // SAFETY: setns(2) on a namespace descriptor; it moves only this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    let clean = (|| -> Result<bool, crate::network::sockdiag::DiagError> {
        use crate::network::sockdiag::{counts, Diag};
        let c = counts()?;
        tracing::debug!(target: "netns", in_use = c.in_use, time_wait = c.time_wait, "sockets left");
        // A socket with an owner, or one closing: not ours to end.
        if c.in_use > 0 {
            return Ok(false);
        }
        if c.time_wait == 0 {
            return Ok(true);
        }
        // Found in the namespace's own TCP table (see [`Nursery`]).
        let mut diag = Diag::open()?;
        for e in &diag.time_wait()? {
            diag.destroy(e)?;
        }
        Ok(counts()? == Default::default())
    })()
    .unwrap_or(false);
    go_home(home);
    clean
}

/// The namespace's name as its links in /proc read, `net:[inode]`.
fn ns_name(fd: &OwnedFd) -> Option<std::ffi::OsString> {
    // SAFETY: fstat on a descriptor we own, into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some(format!("net:[{}]", st.st_ino).into())
}

/// A new namespace with `lo` up, made by the calling thread, which is home again
/// afterwards.
fn fresh(home: &File) -> std::io::Result<OwnedFd> {
    let parent = nursery();
    if let Some(n) = parent {
        // SAFETY: setns(2) on a namespace descriptor; it moves only this thread.
        if unsafe { libc::setns(n.ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: unshare(2) of the network namespace moves only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        // Still home unless the nursery was entered (a caller without the
        // privilege for namespaces gets here with none, and could not go back).
        if parent.is_some() {
            go_home(home);
        }
        return Err(e);
    }
    let made = faultbox_shim::net::loopback_up()
        .map_err(std::io::Error::from_raw_os_error)
        .and_then(|()| {
            // What the kernel derives from the table's size, set back to the host's.
            if let Some(n) = parent {
                for (name, value) in &n.host_limits {
                    std::fs::write(format!("/proc/sys/net/ipv4/{name}"), value)?;
                }
            }
            File::open("/proc/thread-self/ns/net")
        })
        .map(OwnedFd::from);
    go_home(home);
    made
}

/// The namespace test namespaces are made from. It only sets the size of their
/// TCP tables (`tcp_child_ehash_entries`): each gets one of its own instead of
/// sharing the host's, so looking for what a test left in its namespace walks a
/// few thousand buckets rather than the host's hundreds of thousands.
struct Nursery {
    ns: File,
    /// The host's limits that the kernel sizes by the table in a new namespace.
    host_limits: Vec<(&'static str, String)>,
}

/// Buckets of a test namespace's TCP table (the kernel rounds to a power of two).
const EHASH_ENTRIES: u32 = 4096;

/// The nursery, made once; `None` where the kernel has no per-namespace tables
/// (before 6.1), and namespaces are then made from the host's.
fn nursery() -> Option<&'static Nursery> {
    static NURSERY: OnceLock<Option<Nursery>> = OnceLock::new();
    NURSERY
        .get_or_init(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut host_limits = Vec::new();
                    for name in ["tcp_max_tw_buckets", "tcp_max_syn_backlog"] {
                        let v =
                            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok()?;
                        host_limits.push((name, v.trim().to_string()));
                    }
                    // SAFETY: unshare(2) moves only this thread, which ends here.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        return None;
                    }
                    std::fs::write(
                        "/proc/sys/net/ipv4/tcp_child_ehash_entries",
                        EHASH_ENTRIES.to_string(),
                    )
                    .ok()?;
                    let ns = File::open("/proc/thread-self/ns/net").ok()?;
                    Some(Nursery { ns, host_limits })
                })
                .join()
                .ok()
                .flatten()
            })
        })
        .as_ref()
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
        let spare = {
            let mut st = p.lock();
            let fd = st.ready.pop();
            if fd.is_none() {
                st.spare = (st.spare + GROW).min(KEEP);
            }
            fd
        };
        p.wake.notify_one();
        let ns = match spare {
            Some(fd) => NetNs::from_fd(fd),
            None => {
                let home = File::open("/proc/thread-self/ns/net")?;
                std::thread::scope(|s| s.spawn(|| fresh(&home)).join())
                    .map_err(|_| std::io::Error::other("creating a network namespace panicked"))?
                    .map(NetNs::from_fd)?
            }
        };
        ns.recycle.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(ns)
    }

    fn from_fd(fd: OwnedFd) -> NetNs {
        NetNs {
            current: Mutex::new(Arc::new(fd)),
            recycle: std::sync::atomic::AtomicBool::new(false),
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
        // Docker's namespace is not ours to hand to another test.
        self.recycle
            .store(false, std::sync::atomic::Ordering::Relaxed);
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

impl Drop for NetNs {
    /// A namespace made for a test goes back to the pool, unless a socket being made
    /// for it still holds it (the pool checks the rest).
    fn drop(&mut self) {
        if !*self.recycle.get_mut() {
            return;
        }
        let fd = self.current.get_mut().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(fd) != 1 {
            return;
        }
        if let Ok(copy) = fd.try_clone() {
            let p = pool();
            let mut st = p.lock();
            if st.returned.len() < KEEP {
                st.returned.push(copy);
                drop(st);
                p.wake.notify_one();
            }
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
