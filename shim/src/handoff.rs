//! What passes between the launcher and the shim: the shim's command line, and the
//! status lines it writes before it becomes the target.
//!
//! The lines go on an inherited pipe (fd 3) when the executor started the shim itself,
//! or, with `--handoff-socket`, on a unix socket the shim connects to (a container,
//! whose entrypoint the executor neither forks nor can find by pid). On the socket the
//! shim first says [`Hello`] with the token it was given, so the executor knows which
//! service it is; the listener then travels on the `L` line itself (`SCM_RIGHTS`, see
//! [`crate::fdpass`]), and a shim without a filter waits for one [`GO`] byte before
//! exec, which lets the executor finish the container's network first.
//!
//! Either channel is close-on-exec, so end-of-file after the last line means the
//! target's `execve` succeeded (or the shim died). Nothing is written on it after the
//! filter is installed except an exec failure, which is best effort.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The fd the status pipe is inherited on.
pub const STATUS_FD: i32 = 3;

/// Exit code of the shim when the target cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 127;

/// The byte the executor sends on the hand-off socket to release a shim that has no
/// filter (with a filter, answering the hand-off call is the release).
pub const GO: u8 = b'g';

/// The first line on the hand-off socket: who is calling, and whether a listener
/// follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub token: String,
    /// An `L` line with the listener attached comes next; otherwise the shim waits
    /// for [`GO`].
    pub listener: bool,
}

impl Hello {
    pub fn encode(&self) -> String {
        let what = if self.listener { "listener" } else { "gate" };
        format!("H {} {what}\n", self.token)
    }

    pub fn decode(line: &str) -> Option<Hello> {
        let mut it = line.split_whitespace();
        let (tag, token, what, rest) = (it.next()?, it.next()?, it.next()?, it.next());
        let listener = match what {
            "listener" => true,
            "gate" => false,
            _ => return None,
        };
        (tag == "H" && rest.is_none() && valid_token(token)).then(|| Hello {
            token: token.to_string(),
            listener,
        })
    }
}

/// Whether `token` can name a service on the hand-off socket: 1 to 64 characters out
/// of `A-Z a-z 0-9 . _ -`, so it survives a line and a command line unquoted.
pub fn valid_token(token: &str) -> bool {
    (1..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where a shim in a container reports and hands over its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketHandoff {
    /// The unix socket, as the shim sees it (inside the container).
    pub path: PathBuf,
    /// Said in [`Hello`]; see [`valid_token`].
    pub token: String,
}

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
    /// Report on this socket instead of fd 3. The container runtime has made the
    /// namespaces: the shim leaves mounts and loopback alone.
    pub socket: Option<SocketHandoff>,
}

impl ShimArgs {
    /// Arguments after the shim's own argv[0].
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if let Some(s) = &self.socket {
            out.push("--handoff-socket".into());
            out.push(s.path.clone().into_os_string());
            out.push("--handoff-token".into());
            out.push(s.token.clone().into());
        }
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
        let mut socket_path = None;
        let mut token = None;
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
                b"--handoff-socket" => {
                    socket_path = Some(PathBuf::from(
                        args.get(i + 1)
                            .ok_or("missing value after --handoff-socket")?,
                    ))
                }
                b"--handoff-token" => {
                    let t = value()?;
                    if !valid_token(t) {
                        return Err(format!(
                            "bad hand-off token {t:?} (1 to 64 of A-Z a-z 0-9 . _ -)"
                        ));
                    }
                    token = Some(t.to_string())
                }
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
                    let socket = match (socket_path, token) {
                        (Some(path), Some(token)) => Some(SocketHandoff { path, token }),
                        (None, None) => None,
                        (Some(_), None) => {
                            return Err("--handoff-socket needs --handoff-token".into())
                        }
                        (None, Some(_)) => {
                            return Err("--handoff-token needs --handoff-socket".into())
                        }
                    };
                    return Ok(ShimArgs {
                        notify,
                        shared_net,
                        hosts,
                        user,
                        program: PathBuf::from(program),
                        argv,
                        socket,
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
            socket: None,
        };
        assert_eq!(ShimArgs::parse(&a.to_args()).unwrap(), a);
        let none = ShimArgs {
            notify: vec![],
            user: None,
            ..a.clone()
        };
        assert_eq!(ShimArgs::parse(&none.to_args()).unwrap(), none);
        let socket = ShimArgs {
            socket: Some(SocketHandoff {
                path: "/run/faultbox/fb-1.sock".into(),
                token: "orders-0".into(),
            }),
            ..a
        };
        assert_eq!(ShimArgs::parse(&socket.to_args()).unwrap(), socket);
    }

    #[test]
    fn a_socket_needs_a_token_and_a_token_must_be_plain() {
        let parse = |v: &[&str]| ShimArgs::parse(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert!(
            parse(&["--handoff-socket", "/s", "--", "/bin/true", "true"])
                .unwrap_err()
                .contains("--handoff-token")
        );
        assert!(parse(&["--handoff-token", "a", "--", "/bin/true", "true"])
            .unwrap_err()
            .contains("--handoff-socket"));
        assert!(parse(&[
            "--handoff-socket",
            "/s",
            "--handoff-token",
            "a b",
            "--",
            "/bin/true",
            "true"
        ])
        .unwrap_err()
        .contains("bad hand-off token"));
    }

    #[test]
    fn hello_round_trip() {
        for h in [
            Hello {
                token: "svc.1_a-b".into(),
                listener: true,
            },
            Hello {
                token: "x".into(),
                listener: false,
            },
        ] {
            assert_eq!(Hello::decode(h.encode().trim_end()), Some(h));
        }
        assert_eq!(Hello::decode("H x"), None);
        assert_eq!(Hello::decode("H x maybe"), None);
        assert_eq!(Hello::decode("H x gate extra"), None);
        assert_eq!(Hello::decode("L 4"), None);
        assert!(!valid_token(&"a".repeat(65)));
        assert!(!valid_token(""));
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
