//! What passes between the launcher and the shim: the shim's command line, and the
//! status lines it writes on an inherited pipe before it becomes the target.
//!
//! The pipe is close-on-exec, so end-of-file after the last line means the target's
//! `execve` succeeded (or the shim died). Nothing is written on it after the filter is
//! installed except an exec failure, which is best effort.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The fd the status pipe is inherited on.
pub const STATUS_FD: i32 = 3;

/// Exit code of the shim when the target cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 127;

/// One status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The filter is about to be installed; its listener will be fd `listener_fd`.
    Installing { listener_fd: i32 },
    /// Setup failed at `stage` with `errno`.
    Failed { stage: Stage, errno: i32 },
}

/// The steps of the shim, named in failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    UserNamespace,
    Mounts,
    Loopback,
    User,
    Hosts,
    Filter,
    Exec,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::UserNamespace => "userns",
            Stage::Mounts => "mounts",
            Stage::Loopback => "loopback",
            Stage::User => "user",
            Stage::Hosts => "hosts",
            Stage::Filter => "filter",
            Stage::Exec => "exec",
        }
    }

    fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "userns" => Stage::UserNamespace,
            "mounts" => Stage::Mounts,
            "loopback" => Stage::Loopback,
            "user" => Stage::User,
            "hosts" => Stage::Hosts,
            "filter" => Stage::Filter,
            "exec" => Stage::Exec,
            _ => return None,
        })
    }

    /// What the stage does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::UserNamespace => "mapping the user namespace",
            Stage::Mounts => "setting up the private mount table and /proc",
            Stage::Loopback => "bringing up loopback in the network namespace",
            Stage::User => "switching to the service's user",
            Stage::Hosts => "mounting the test's hosts file on /etc/hosts",
            Stage::Filter => "installing the seccomp filter",
            Stage::Exec => "executing the target",
        }
    }
}

impl Status {
    pub fn encode(&self) -> String {
        match self {
            Status::Installing { listener_fd } => format!("L {listener_fd}\n"),
            Status::Failed { stage, errno } => format!("E {} {errno}\n", stage.as_str()),
        }
    }

    pub fn decode(line: &str) -> Option<Status> {
        let mut it = line.split_whitespace();
        match (it.next()?, it.next()?, it.next()) {
            ("L", fd, None) => Some(Status::Installing {
                listener_fd: fd.parse().ok()?,
            }),
            ("E", stage, Some(errno)) => Some(Status::Failed {
                stage: Stage::parse(stage)?,
                errno: errno.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// The shim's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// Syscall numbers the filter notifies; empty means no filter at all.
    pub notify: Vec<i32>,
    /// The network namespace is shared and already set up (tests): leave `lo` alone.
    pub shared_net: bool,
    /// A hosts file to mount over `/etc/hosts` (a test's service names).
    pub hosts: Option<PathBuf>,
    /// Who to become before exec: `name`, `uid`, `name:group` or `uid:gid`.
    pub user: Option<String>,
    /// The file to execute.
    pub program: PathBuf,
    /// The target's full argv, argv[0] included.
    pub argv: Vec<OsString>,
}

impl ShimArgs {
    /// Arguments after the shim's own argv[0].
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if self.shared_net {
            out.push("--shared-net".into());
        }
        if let Some(h) = &self.hosts {
            out.push("--hosts".into());
            out.push(h.clone().into_os_string());
        }
        if let Some(u) = &self.user {
            out.push("--user".into());
            out.push(u.into());
        }
        if !self.notify.is_empty() {
            out.push("--notify".into());
            out.push(
                self.notify
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            );
        }
        out.push("--".into());
        out.push(self.program.clone().into_os_string());
        out.extend(self.argv.iter().cloned());
        out
    }

    /// Parses what [`ShimArgs::to_args`] produced.
    pub fn parse(args: &[OsString]) -> Result<ShimArgs, String> {
        let mut notify = Vec::new();
        let mut shared_net = false;
        let mut hosts = None;
        let mut user = None;
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_bytes();
            let value = || {
                args.get(i + 1)
                    .and_then(|v| v.to_str())
                    .ok_or_else(|| format!("missing value after {}", String::from_utf8_lossy(a)))
            };
            match a {
                b"--shared-net" => {
                    shared_net = true;
                    i += 1;
                    continue;
                }
                b"--hosts" => {
                    hosts = Some(PathBuf::from(
                        args.get(i + 1).ok_or("missing value after --hosts")?,
                    ))
                }
                b"--user" => user = Some(value()?.to_string()),
                b"--notify" => {
                    notify = value()?
                        .split(',')
                        .map(|n| {
                            n.parse::<i32>()
                                .map_err(|_| format!("bad syscall number {n:?}"))
                        })
                        .collect::<Result<_, _>>()?
                }
                b"--" => {
                    let program = args.get(i + 1).ok_or("missing program after --")?;
                    let argv: Vec<OsString> = args[i + 2..].to_vec();
                    if argv.is_empty() {
                        return Err("missing argv[0] after the program".into());
                    }
                    return Ok(ShimArgs {
                        notify,
                        shared_net,
                        hosts,
                        user,
                        program: PathBuf::from(program),
                        argv,
                    });
                }
                other => return Err(format!("unknown argument {:?}", OsStr::from_bytes(other))),
            }
            i += 2;
        }
        Err("missing -- before the program".into())
    }
}

/// Turns an OS string into a C string for exec; interior NULs cannot be passed.
pub fn to_cstring(s: &OsStr) -> Option<std::ffi::CString> {
    std::ffi::CString::new(s.as_bytes().to_vec()).ok()
}

/// The inverse of [`to_cstring`], for tests and logs.
pub fn from_bytes(b: Vec<u8>) -> OsString {
    OsString::from_vec(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            notify: vec![1, 257],
            shared_net: true,
            hosts: Some("/tmp/x/hosts".into()),
            user: Some("postgres:postgres".into()),
            program: "/bin/echo".into(),
            argv: vec!["echo".into(), "--".into(), "x y".into()],
        };
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        let none = ShimArgs {
            notify: vec![],
            user: None,
            ..a
        };
        assert_eq!(ShimArgs::parse(&none.to_args()).unwrap(), none);
    }

    #[test]
    fn status_round_trip() {
        for s in [
            Status::Installing { listener_fd: 4 },
            Status::Failed {
                stage: Stage::Exec,
                errno: 2,
            },
        ] {
            assert_eq!(Status::decode(s.encode().trim_end()), Some(s));
        }
        assert_eq!(Status::decode("garbage"), None);
    }
}
