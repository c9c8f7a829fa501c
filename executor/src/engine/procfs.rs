//! Reading what a notified call refers to: path strings in the target's memory, and
//! fds resolved through `/proc/PID/fd`. Paths are made absolute and lexically
//! normalised so that globs match what the call will touch.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use faultbox_shim::syscalls::PathArg;

const PATH_MAX: usize = 4096;
const PAGE: u64 = 4096;
/// Open `/proc/PID/mem` files kept; beyond this the cache starts over.
const MEM_CACHE_LIMIT: usize = 1024;

/// Per-supervisor access to target processes, keeping `/proc/PID/mem` open per pid
/// (reopening it for every read costs several microseconds).
#[derive(Default)]
pub struct Procfs {
    mem: HashMap<i32, File>,
}

/// The file a call refers to, and whether target memory was read to find it.
pub struct Resolved {
    pub path: Option<String>,
    pub read_memory: bool,
}

impl Procfs {
    /// Resolves the file that syscall `args` of thread `pid` names, per `arg`.
    pub fn resolve(&mut self, pid: i32, arg: PathArg, args: &[u64; 6]) -> Resolved {
        match arg {
            PathArg::None => Resolved {
                path: None,
                read_memory: false,
            },
            PathArg::Fd { fd } => Resolved {
                path: fd_path(pid, args[fd] as i32),
                read_memory: false,
            },
            PathArg::Path { path } => Resolved {
                path: self
                    .read_cstr(pid, args[path])
                    .and_then(|p| absolute(pid, None, &p)),
                read_memory: true,
            },
            PathArg::SockAddr { addr, len } => Resolved {
                path: self.sockaddr(pid, args[addr], args[len]),
                read_memory: true,
            },
            PathArg::At { dirfd, path } => Resolved {
                path: self
                    .read_cstr(pid, args[path])
                    .and_then(|p| absolute(pid, Some(args[dirfd] as i32), &p)),
                read_memory: true,
            },
        }
    }

    /// Reads a NUL-terminated string at `addr` in `pid`'s memory, page by page so an
    /// unmapped page after a short string does not fail the read.
    fn read_cstr(&mut self, pid: i32, addr: u64) -> Option<Vec<u8>> {
        if addr == 0 {
            return None;
        }
        for attempt in 0..2 {
            if attempt == 1 {
                self.mem.remove(&pid);
            }
            let file = match self.mem.get(&pid) {
                Some(f) => f,
                None => {
                    if self.mem.len() >= MEM_CACHE_LIMIT {
                        self.mem.clear();
                    }
                    let f = File::open(format!("/proc/{pid}/mem")).ok()?;
                    self.mem.entry(pid).or_insert(f)
                }
            };
            if let Some(s) = read_cstr_from(file, addr) {
                return Some(s);
            }
        }
        None
    }

    /// The socket address of `len` bytes at `addr` in `pid`'s memory, as text:
    /// `127.0.0.1:5432`, `[::1]:80`, a Unix socket's path, or `@name` for an abstract
    /// one.
    fn sockaddr(&mut self, pid: i32, addr: u64, len: u64) -> Option<String> {
        if addr == 0 || len < 2 {
            return None;
        }
        let file = match self.mem.get(&pid) {
            Some(f) => f,
            None => {
                let f = File::open(format!("/proc/{pid}/mem")).ok()?;
                self.mem.entry(pid).or_insert(f)
            }
        };
        let mut buf = [0u8; 128];
        let len = (len as usize).min(buf.len());
        file.read_exact_at(&mut buf[..len], addr).ok()?;
        sockaddr_text(&buf[..len])
    }

    /// Reads `N` bytes at `addr` in `pid`'s memory.
    pub fn read_array<const N: usize>(&mut self, pid: i32, addr: u64) -> Option<[u8; N]> {
        let file = match self.mem.get(&pid) {
            Some(f) => f,
            None => {
                let f = File::open(format!("/proc/{pid}/mem")).ok()?;
                self.mem.entry(pid).or_insert(f)
            }
        };
        let mut buf = [0u8; N];
        file.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    /// Writes `bytes` at `addr` in `pid`'s memory (rare: virtual time answers).
    pub fn write(&mut self, pid: i32, addr: u64, bytes: &[u8]) -> bool {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/mem"));
        file.and_then(|f| f.write_all_at(bytes, addr)).is_ok()
    }

    /// Forgets what is cached about `pid`.
    pub fn forget(&mut self, pid: i32) {
        self.mem.remove(&pid);
    }
}

/// Formats a raw `sockaddr`.
fn sockaddr_text(b: &[u8]) -> Option<String> {
    let family = i32::from(u16::from_ne_bytes([b[0], b[1]]));
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_INET if b.len() >= 8 => {
            Some(format!("{}.{}.{}.{}:{}", b[4], b[5], b[6], b[7], port(b)))
        }
        libc::AF_INET6 if b.len() >= 24 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[8..24]);
            Some(format!(
                "[{}]:{}",
                std::net::Ipv6Addr::from(octets),
                port(b)
            ))
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.first() == Some(&0) {
                let name = &path[1..];
                return Some(format!("@{}", String::from_utf8_lossy(name)));
            }
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            Some(String::from_utf8_lossy(&path[..end]).into_owned())
        }
        _ => None,
    }
}

/// The port of a socket address formatted by [`sockaddr_text`].
pub fn port_of(addr: &str) -> Option<u16> {
    let (host, port) = addr.rsplit_once(':')?;
    if host.is_empty() || addr.starts_with('/') || addr.starts_with('@') {
        return None;
    }
    port.parse().ok()
}

fn read_cstr_from(file: &File, addr: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = addr;
    let mut buf = [0u8; PAGE as usize];
    while out.len() < PATH_MAX {
        let chunk = (PAGE - at % PAGE) as usize;
        let n = file.read_at(&mut buf[..chunk], at).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Some(out);
        }
        out.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    None
}

/// Whether `path` (`socket:[inode]`, as [`fd_path`] gives it) is a bound netlink
/// socket of `pid`'s network namespace.
pub fn is_netlink(pid: i32, path: &str) -> bool {
    let Some(inode) = path
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
    else {
        return false;
    };
    // Columns: sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode.
    std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).is_ok_and(|table| {
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(9) == Some(inode))
    })
}

/// The path behind fd `fd` of `pid` (`/tmp/x`, `pipe:[123]`, `socket:[456]`).
pub fn fd_path(pid: i32, fd: i32) -> Option<String> {
    if fd < 0 {
        return None;
    }
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn absolute(pid: i32, dirfd: Option<i32>, raw: &[u8]) -> Option<String> {
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    if p.is_absolute() {
        return Some(normalize(p));
    }
    let base = match dirfd {
        Some(fd) if fd != libc::AT_FDCWD => fd_path(pid, fd)?,
        _ => std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .to_string_lossy()
            .into_owned(),
    };
    if raw.is_empty() {
        // AT_EMPTY_PATH: the call acts on dirfd itself.
        return Some(base);
    }
    Some(normalize(&Path::new(&base).join(p)))
}

/// Removes `.` and resolves `..` without touching the filesystem.
fn normalize(p: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out.to_string_lossy().into_owned()
}

/// Whether a thread of `root` or of any process below it is running or runnable: the
/// scheduler waits for this to end before it decides which held call goes next.
pub fn any_running(root: i32) -> bool {
    let mut stack = vec![root];
    let mut seen = 0;
    while let Some(pid) = stack.pop() {
        seen += 1;
        if seen > 4096 {
            return false;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
                // The state follows the parenthesised command, which may hold spaces.
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].trim_start().chars().next());
                if state == Some('R') {
                    return true;
                }
            }
            if let Ok(children) = std::fs::read_to_string(dir.join("children")) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    false
}

/// Whether `pid` has begun to exit (`PF_EXITING`) but is not yet a zombie: its sockets
/// may already be closed while its exit status is not there to collect.
pub fn is_exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    // After the command: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let flags = fields.nth(5).and_then(|f| f.parse::<u64>().ok());
    state != Some("Z") && flags.is_some_and(|f| f & PF_EXITING != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_threads_below_a_process() {
        // A sleeping shell whose child spins: running, through the child.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sh -c 'while :; do :; done' & exec sleep 30"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = parent.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Once the shell is `sleep`, the spinner has been forked and only it can run.
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        while comm().trim() != "sleep" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        while !any_running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let spinning = any_running(pid);
        // Every process below the shell (it may fork twice for `&`).
        let mut below = Vec::new();
        let mut stack = vec![pid];
        while let Some(p) = stack.pop() {
            let children =
                std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                below.push(c);
                stack.push(c);
            }
        }
        for c in below {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
        // The killed child may take a moment to go on a loaded machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while any_running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let idle = any_running(pid);
        parent.kill().unwrap();
        parent.wait().unwrap();
        assert!(spinning, "the spinning child is seen");
        assert!(!idle, "a sleeping process is not running");
    }

    #[test]
    fn socket_addresses() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5432u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(sockaddr_text(&v4).unwrap(), "127.0.0.1:5432");
        assert_eq!(port_of("127.0.0.1:5432"), Some(5432));
        let mut un = vec![0u8; 30];
        un[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        un[2..14].copy_from_slice(b"/run/x.sock\0");
        assert_eq!(sockaddr_text(&un).unwrap(), "/run/x.sock");
        assert_eq!(port_of("/run/x.sock"), None);
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("/a/./b/../c//d")), "/a/c/d");
        assert_eq!(normalize(Path::new("/../x")), "/x");
    }

    #[test]
    fn reads_own_memory_and_fds() {
        let mut procfs = Procfs::default();
        let s = std::ffi::CString::new("/data/file.wal").unwrap();
        let pid = std::process::id() as i32;
        let args = [libc::AT_FDCWD as u64, s.as_ptr() as u64, 0, 0, 0, 0];
        let r = procfs.resolve(pid, PathArg::At { dirfd: 0, path: 1 }, &args);
        assert_eq!(r.path.as_deref(), Some("/data/file.wal"));
        assert!(r.read_memory);
        let rel = std::ffi::CString::new("x/../y").unwrap();
        let args = [rel.as_ptr() as u64, 0, 0, 0, 0, 0];
        let cwd = std::env::current_dir().unwrap();
        let r = procfs.resolve(pid, PathArg::Path { path: 0 }, &args);
        assert_eq!(r.path.unwrap(), cwd.join("y").to_string_lossy());
        let f = File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let args = [f.as_raw_fd() as u64, 0, 0, 0, 0, 0];
        let r = procfs.resolve(pid, PathArg::Fd { fd: 0 }, &args);
        assert_eq!(r.path.unwrap(), format!("/proc/{pid}/status"));
    }

    #[test]
    fn tells_netlink_sockets_apart() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let pid = std::process::id() as i32;
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) };
        assert!(raw >= 0);
        // SAFETY: `raw` is a fresh descriptor this test owns.
        let netlink = unsafe { OwnedFd::from_raw_fd(raw) };
        // Bound, as the C library's netlink queries are (the table lists bound ones).
        // SAFETY: a zeroed sockaddr_nl (kernel-chosen port id) of its exact size.
        let bound = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        assert_eq!(bound, 0);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nl = fd_path(pid, netlink.as_raw_fd()).unwrap();
        let other = fd_path(pid, tcp.as_raw_fd()).unwrap();
        assert!(is_netlink(pid, &nl), "{nl}");
        assert!(!is_netlink(pid, &other), "{other}");
        assert!(!is_netlink(pid, "/etc/hosts"));
    }
}
