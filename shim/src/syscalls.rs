//! Syscall tables: names users write, the families and filesystem operations they
//! expand to, the numbers on each supported architecture, and which argument of a
//! syscall names the file it acts on.

use libseccomp::{ScmpArch, ScmpSyscall};

/// The architectures whose syscall tables Faultbox knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this binary was built for.
    pub const fn native() -> Arch {
        #[cfg(target_arch = "aarch64")]
        {
            Arch::Aarch64
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            Arch::X86_64
        }
    }

    fn scmp(self) -> ScmpArch {
        match self {
            Arch::X86_64 => ScmpArch::X8664,
            Arch::Aarch64 => ScmpArch::Aarch64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// One syscall on one architecture.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Syscall {
    pub name: String,
    pub nr: i32,
}

/// Resolves a kernel syscall name on `arch`; `None` when the arch has no such syscall.
pub fn number(name: &str, arch: Arch) -> Option<i32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    // libseccomp answers with a negative pseudo number for names that exist on some
    // other architecture only (`open` on aarch64): those are not real syscalls here.
    match ScmpSyscall::from_name_by_arch(name, arch.scmp()) {
        Ok(sc) if i32::from(sc) >= 0 => Some(i32::from(sc)),
        _ => None,
    }
}

/// The kernel name of syscall `nr` on `arch`.
pub fn name(nr: i32, arch: Arch) -> Option<String> {
    ScmpSyscall::from(nr).get_name_by_arch(arch.scmp()).ok()
}

/// Every syscall `arch` has, in number order.
pub fn all(arch: Arch) -> Vec<Syscall> {
    // Both tables end below 512 (x86_64's x32 range starts at 512 and is not ours).
    (0..512)
        .filter_map(|nr| {
            name(nr, arch)
                .filter(|n| number(n, arch) == Some(nr))
                .map(|name| Syscall { name, nr })
        })
        .collect()
}

/// Names from the documentation that are not the kernel's own on either architecture.
fn alias(name: &str) -> Option<&'static str> {
    Some(match name {
        "fstatat" => "newfstatat",
        "sigaction" => "rt_sigaction",
        "sigprocmask" => "rt_sigprocmask",
        "sigreturn" => "rt_sigreturn",
        _ => return None,
    })
}

/// Families: one name a user thinks in, every syscall that performs that operation.
/// Members an architecture lacks are skipped there (aarch64 has no `open`).
const FAMILIES: &[(&str, &[&str])] = &[
    (
        "write",
        &["write", "writev", "pwrite64", "pwritev", "pwritev2"],
    ),
    ("read", &["read", "readv", "pread64", "preadv", "preadv2"]),
    ("fsync", &["fsync", "fdatasync"]),
    ("open", &["openat", "open"]),
    ("sendto", &["sendto", "sendmsg"]),
    ("recvfrom", &["recvfrom", "recvmsg"]),
];

/// `--fs-fault` operation names and the syscalls they stand for.
const FS_OPS: &[(&str, &[&str])] = &[
    ("open", &["openat", "open"]),
    ("read", &["read", "readv", "pread64", "preadv", "preadv2"]),
    (
        "write",
        &["write", "writev", "pwrite64", "pwritev", "pwritev2"],
    ),
    ("sync", &["fsync", "fdatasync"]),
    ("fsync", &["fsync", "fdatasync"]),
    ("mkdir", &["mkdirat", "mkdir"]),
    ("delete", &["unlinkat", "unlink", "rmdir"]),
    ("stat", &["newfstatat", "stat", "lstat", "statx"]),
];

/// The `--fs-fault` operation names, for error messages.
pub fn fs_op_names() -> Vec<&'static str> {
    FS_OPS.iter().map(|(n, _)| *n).collect()
}

/// The syscalls a fault on `name` covers on `arch`: a family, an alias or a raw syscall.
pub fn expand(name: &str, arch: Arch) -> Option<Vec<Syscall>> {
    if let Some((_, members)) = FAMILIES.iter().find(|(f, _)| *f == name) {
        return resolve_all(members, arch);
    }
    let kernel_name = alias(name).unwrap_or(name);
    number(kernel_name, arch).map(|nr| {
        vec![Syscall {
            name: kernel_name.to_string(),
            nr,
        }]
    })
}

/// The syscalls an `--fs-fault` operation covers on `arch`.
pub fn expand_fs_op(op: &str, arch: Arch) -> Option<Vec<Syscall>> {
    let (_, members) = FS_OPS.iter().find(|(o, _)| *o == op)?;
    resolve_all(members, arch)
}

fn resolve_all(members: &[&str], arch: Arch) -> Option<Vec<Syscall>> {
    let found: Vec<Syscall> = members
        .iter()
        .filter_map(|m| {
            number(m, arch).map(|nr| Syscall {
                name: (*m).to_string(),
                nr,
            })
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// Where a syscall names the file it acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathArg {
    /// No file: sockets by address, process and memory calls.
    None,
    /// A path string in argument `path`, relative to the working directory.
    Path { path: usize },
    /// A path string in argument `path`, relative to the directory fd in argument `dirfd`.
    At { dirfd: usize, path: usize },
    /// A file descriptor in argument `fd`, resolved through `/proc/PID/fd`.
    Fd { fd: usize },
    /// A socket address in argument `addr` of `len` bytes: the destination of a
    /// `connect`, as `127.0.0.1:5432`, `[::1]:80` or a Unix socket's path.
    SockAddr { addr: usize, len: usize },
}

/// Which argument of `name` identifies its file, if any.
pub fn path_arg(name: &str) -> PathArg {
    match name {
        "openat" | "openat2" | "mkdirat" | "unlinkat" | "newfstatat" | "statx" | "faccessat"
        | "faccessat2" | "readlinkat" | "fchmodat" | "fchmodat2" | "fchownat" | "renameat"
        | "renameat2" | "linkat" | "mknodat" | "execveat" | "utimensat" | "name_to_handle_at" => {
            PathArg::At { dirfd: 0, path: 1 }
        }
        "symlinkat" => PathArg::At { dirfd: 1, path: 2 },
        "open" | "creat" | "mkdir" | "rmdir" | "unlink" | "stat" | "lstat" | "access"
        | "readlink" | "chmod" | "chown" | "lchown" | "truncate" | "execve" | "rename" | "link"
        | "chdir" | "chroot" | "mknod" | "utime" | "utimes" | "statfs" | "setxattr"
        | "lsetxattr" | "getxattr" | "lgetxattr" | "listxattr" | "llistxattr" | "removexattr"
        | "lremovexattr" => PathArg::Path { path: 0 },
        "symlink" => PathArg::Path { path: 1 },
        "connect" => PathArg::SockAddr { addr: 1, len: 2 },
        "read" | "write" | "readv" | "writev" | "pread64" | "pwrite64" | "preadv" | "pwritev"
        | "preadv2" | "pwritev2" | "fsync" | "fdatasync" | "close" | "fstat" | "ftruncate"
        | "fallocate" | "lseek" | "getdents" | "getdents64" | "fchmod" | "fchown" | "fchdir"
        | "flock" | "fcntl" | "ioctl" | "sync_file_range" | "fadvise64" | "syncfs" | "fstatfs"
        | "fgetxattr" | "fsetxattr" | "flistxattr" | "fremovexattr" | "sendto" | "sendmsg"
        | "recvfrom" | "recvmsg" | "bind" | "listen" | "accept" | "accept4" | "shutdown"
        | "getsockname" | "getpeername" | "setsockopt" | "getsockopt" | "sendfile"
        | "copy_file_range" | "splice" | "sendmmsg" | "recvmmsg" => PathArg::Fd { fd: 0 },
        _ => PathArg::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<Syscall>) -> Vec<String> {
        v.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn families_expand_per_arch() {
        assert_eq!(
            names(expand("write", Arch::X86_64).unwrap()),
            ["write", "writev", "pwrite64", "pwritev", "pwritev2"]
        );
        assert_eq!(
            names(expand("open", Arch::X86_64).unwrap()),
            ["openat", "open"]
        );
        assert_eq!(names(expand("open", Arch::Aarch64).unwrap()), ["openat"]);
        assert_eq!(
            names(expand("fsync", Arch::Aarch64).unwrap()),
            ["fsync", "fdatasync"]
        );
        assert_eq!(
            names(expand("sendto", Arch::X86_64).unwrap()),
            ["sendto", "sendmsg"]
        );
    }

    #[test]
    fn raw_names_and_aliases() {
        assert_eq!(number("write", Arch::X86_64), Some(1));
        assert_eq!(number("write", Arch::Aarch64), Some(64));
        assert_eq!(number("open", Arch::Aarch64), None);
        assert_eq!(number("nosuchcall", Arch::X86_64), None);
        assert_eq!(
            names(expand("fstatat", Arch::X86_64).unwrap()),
            ["newfstatat"]
        );
        assert_eq!(
            names(expand("sigaction", Arch::Aarch64).unwrap()),
            ["rt_sigaction"]
        );
        assert!(expand("getdents64", Arch::Aarch64).is_some());
        assert!(expand("mkdir", Arch::Aarch64).is_none());
    }

    #[test]
    fn stat_maps_to_what_each_arch_has() {
        assert_eq!(
            names(expand_fs_op("stat", Arch::X86_64).unwrap()),
            ["newfstatat", "stat", "lstat", "statx"]
        );
        assert_eq!(
            names(expand_fs_op("stat", Arch::Aarch64).unwrap()),
            ["newfstatat", "statx"]
        );
        assert_eq!(
            names(expand_fs_op("delete", Arch::Aarch64).unwrap()),
            ["unlinkat"]
        );
    }
}
