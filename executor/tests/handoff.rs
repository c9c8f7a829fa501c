//! The hand-off over a unix socket (`--handoff-socket`), with the real shim and real
//! seccomp filters: the shim is started here as a plain child process, as a container
//! runtime would start it, and the supervisor answers its calls.
//!
//! Needs the shim binary: build the workspace first (`cargo build --workspace`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use faultbox_executor::engine::rules::{Decision, Engine, EngineSlot};
use faultbox_executor::engine::supervisor::{self, EventSink, SyscallEvent};
use faultbox_executor::sandbox::handoff::{HandoffError, HandoffSocket};
use faultbox_shim::handoff::{ShimArgs, SocketHandoff, Stage};
use faultbox_shim::rule::FaultRule;
use faultbox_shim::syscalls::Arch;

const LIMIT: Duration = Duration::from_secs(10);

fn shim() -> PathBuf {
    let shim = faultbox_executor::sandbox::session::find_shim().expect("finding the shim");
    assert!(
        shim.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        shim.display()
    );
    shim
}

/// `tests/targets/calls.c`, compiled once per test binary.
fn calls() -> PathBuf {
    static CALLS: OnceLock<PathBuf> = OnceLock::new();
    CALLS
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("calls");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/calls.c");
            let st = Command::new("gcc")
                .args(["-O1", "-Wall", "-o"])
                .arg(&out)
                .arg(src)
                .status()
                .expect("gcc runs");
            assert!(st.success(), "compiling calls.c");
            out
        })
        .clone()
}

/// A private directory under /tmp for the socket, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = PathBuf::from(format!("/tmp/fbtest-handoff-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shim as a child process, killed and reaped if a test fails before it ends.
struct Shim(Child);

impl Shim {
    fn start(sock: &HandoffSocket, notify: Vec<i32>, user: Option<&str>, argv: &[&str]) -> Shim {
        let args = ShimArgs {
            notify,
            shared_net: false,
            hosts: None,
            user: user.map(str::to_string),
            program: PathBuf::from(argv[0]),
            argv: argv.iter().map(Into::into).collect(),
            socket: Some(SocketHandoff {
                path: sock.path().to_path_buf(),
                token: sock.token().to_string(),
            }),
        };
        let child = Command::new(shim())
            .args(args.to_args())
            // A pipe, so that the target's writes are to a file rules apply to
            // (/dev/null is a system path, which rules without a glob skip).
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the shim");
        Shim(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < LIMIT, "the target did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_string(&mut s).unwrap();
        }
        s
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<SyscallEvent>>);

impl EventSink for Events {
    fn syscall(&self, event: SyscallEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.name.to_string())
            .collect()
    }
}

fn engine(rules: &[&str]) -> Engine {
    let rules: Vec<FaultRule> = rules.iter().map(|r| FaultRule::parse(r).unwrap()).collect();
    Engine::new(&rules, Arch::native(), 1).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap()
}

/// Starts the shim under `rules`, takes its listener over the socket, supervises it,
/// and returns how the target ended and what the supervisor saw.
fn run_filtered(name: &str, rules: &[&str], calls_made: &[&str]) -> (ExitStatus, Arc<Events>) {
    let dir = Scratch::new(name);
    let engine = engine(rules);
    let sock = HandoffSocket::bind(&dir.0, name).unwrap();
    let path = sock.path().to_path_buf();
    let target = calls();
    let mut argv = vec![target.to_str().unwrap()];
    argv.extend_from_slice(calls_made);
    let mut shim = Shim::start(&sock, engine.syscalls(), None, &argv);
    let mut accepted = sock.accept(LIMIT).unwrap();
    assert!(
        !path.exists(),
        "the socket file is removed once the shim is in"
    );
    assert_eq!(accepted.peer_pid, shim.pid(), "SO_PEERCRED names the shim");
    assert!(accepted.target_listener_fd.is_some());
    let rt = runtime();
    let events = Arc::new(Events::default());
    let sup = supervisor::spawn(
        accepted.listener.take().expect("a filter means a listener"),
        EngineSlot::new(engine),
        rt.handle().clone(),
        events.clone(),
        accepted.peer_pid,
        None,
        None,
    )
    .unwrap();
    accepted.conn.wait_exec(LIMIT).unwrap();
    let status = shim.wait();
    sup.stop();
    (status, events)
}

#[test]
fn a_target_under_a_filter_gets_the_errno_the_supervisor_decides() {
    let (status, events) =
        run_filtered("filtered", &["getppid=EPERM:100%"], &["sigpipe", "getppid"]);
    assert_eq!(
        status.code(),
        Some(libc::EPERM),
        "exit 200 would mean SIGPIPE was left ignored: {status}"
    );
    let events = events.0.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(&*events[0].name, "getppid");
    assert_eq!(events[0].decision, Decision::Deny(libc::EPERM));
}

#[test]
fn rules_on_the_calls_the_shim_hands_off_with_never_trap_it() {
    // The shim connects, says hello and sends the listener with these calls: were
    // any of them under the filter before the supervisor holds the listener, nobody
    // could answer it and accept() would time out.
    let (status, events) = run_filtered(
        "own-calls",
        &[
            "connect=EIO:100%",
            "sendto=EIO:100%",
            "sendmsg=EIO:100%",
            "write=EIO:100%",
        ],
        &["write"],
    );
    assert_eq!(status.code(), Some(libc::EIO), "{status}");
    assert_eq!(
        events.names(),
        ["write"],
        "only the target's own write was decided"
    );
}

#[test]
fn a_shim_without_a_filter_waits_for_go() {
    let dir = Scratch::new("gate");
    let sock = HandoffSocket::bind(&dir.0, "gate").unwrap();
    let target = calls();
    let mut shim = Shim::start(
        &sock,
        vec![],
        None,
        &[target.to_str().unwrap(), "sigpipe", "getppid"],
    );
    let mut accepted = sock.accept(LIMIT).unwrap();
    assert!(accepted.listener.is_none());
    assert_eq!(accepted.peer_pid, shim.pid());
    let e = accepted
        .conn
        .wait_exec(Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(e, HandoffError::Timeout { .. }), "{e}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", shim.pid())).unwrap();
    assert_eq!(
        exe.file_name().unwrap(),
        "faultbox-shim",
        "not exec'd before go"
    );
    accepted.conn.go().unwrap();
    accepted.conn.wait_exec(LIMIT).unwrap();
    let status = shim.wait();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_missing_socket_is_a_clear_error() {
    let dir = Scratch::new("missing");
    let path = dir.0.join("nobody-listens.sock");
    let out = Command::new(shim())
        .arg("--handoff-socket")
        .arg(&path)
        .args(["--handoff-token", "x", "--", "/bin/true", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to the hand-off socket {}: No such file or directory",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_failed_setup_names_its_stage() {
    let dir = Scratch::new("failed");
    let target = calls();
    let target = target.to_str().unwrap();

    // With a filter: the failure comes instead of the listener.
    let sock = HandoffSocket::bind(&dir.0, "user").unwrap();
    let notify = engine(&["getppid=EPERM:100%"]).syscalls();
    let mut shim = Shim::start(&sock, notify, Some("nobody-by-name"), &[target]);
    let e = sock.accept(LIMIT).err().expect("the user switch fails");
    // A name the root's /etc/passwd does not know.
    assert!(
        matches!(
            e,
            HandoffError::Setup {
                stage: Stage::User,
                errno: libc::ENOENT
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("switching to the service's user"),
        "{e}"
    );
    assert_eq!(shim.wait().code(), Some(127));

    // Without one: the exec failure comes after go.
    let sock = HandoffSocket::bind(&dir.0, "exec").unwrap();
    let missing = dir.0.join("no-such-program");
    let mut shim = Shim::start(&sock, vec![], None, &[missing.to_str().unwrap()]);
    let mut accepted = sock.accept(LIMIT).unwrap();
    accepted.conn.go().unwrap();
    let e = accepted.conn.wait_exec(LIMIT).unwrap_err();
    assert!(
        matches!(
            e,
            HandoffError::Setup {
                stage: Stage::Exec,
                errno: libc::ENOENT
            }
        ),
        "{e}"
    );
    assert_eq!(shim.wait().code(), Some(127));
    assert!(shim.stderr().contains("cannot execute"));
}

/// Removes a Docker image or container when the test ends, however it ends.
struct DockerThing(&'static str, String);

impl Drop for DockerThing {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args([self.0, "-f", &self.1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The same hand-off with the static shim as the entrypoint of a real container,
/// whose own seccomp profile (Docker's default) stays in force under ours.
/// `FAULTBOX_STATIC_SHIM=$(scripts/build-static-shim.sh) cargo test -p
/// faultbox-executor --test handoff -- --ignored`
#[test]
#[ignore = "needs a running Docker and FAULTBOX_STATIC_SHIM (scripts/build-static-shim.sh)"]
fn in_a_docker_container() {
    let static_shim = PathBuf::from(
        std::env::var_os("FAULTBOX_STATIC_SHIM").expect("FAULTBOX_STATIC_SHIM is set"),
    );
    let dir = Scratch::new("docker");
    let tag = format!("faultbox-handoff-test:{}", std::process::id());

    // An image with nothing but a static target; the shim is mounted into it, as it
    // will be into any image.
    let context = dir.0.join("image");
    std::fs::create_dir(&context).unwrap();
    let st = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(context.join("calls"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/calls.c"))
        .status()
        .unwrap();
    assert!(st.success(), "compiling calls.c statically");
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY calls /calls\n",
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(&context)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _image = DockerThing("rmi", tag.clone());

    let sockets = dir.0.join("run");
    std::fs::create_dir(&sockets).unwrap();
    // The shim's own calls are named too: inside a container as well, none of them
    // may be under the filter before the supervisor holds the listener.
    let engine = engine(&[
        "getppid=EPERM:100%",
        "connect=EIO:100%",
        "sendto=EIO:100%",
        "sendmsg=EIO:100%",
        "write=EIO:100%",
    ]);
    let sock = HandoffSocket::bind(&sockets, "in-docker").unwrap();
    let args = ShimArgs {
        notify: engine.syscalls(),
        shared_net: false,
        hosts: None,
        user: None,
        program: "/calls".into(),
        argv: vec!["calls".into(), "sigpipe".into(), "getppid".into()],
        socket: Some(SocketHandoff {
            path: Path::new("/run/faultbox").join(sock.file_name()),
            token: sock.token().to_string(),
        }),
    };
    let name = format!("faultbox-handoff-test-{}", std::process::id());
    let _container = DockerThing("rm", name.clone());
    let mut docker = Shim(
        Command::new("docker")
            .args(["run", "--rm", "--name", &name, "-v"])
            .arg(format!("{}:/run/faultbox", sockets.display()))
            .arg("-v")
            .arg(format!("{}:/faultbox-shim:ro", static_shim.display()))
            .args(["--entrypoint", "/faultbox-shim", &tag])
            .args(args.to_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut accepted = match sock.accept(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(e) => panic!("{e}; docker said: {}", docker.stderr()),
    };
    assert_ne!(
        accepted.peer_pid, 1,
        "the pid is the host's, not the container's"
    );
    let rt = runtime();
    let events = Arc::new(Events::default());
    let sup = supervisor::spawn(
        accepted.listener.take().expect("a listener"),
        EngineSlot::new(engine),
        rt.handle().clone(),
        events.clone(),
        accepted.peer_pid,
        None,
        None,
    )
    .unwrap();
    accepted.conn.wait_exec(LIMIT).unwrap();
    let status = docker.wait();
    sup.stop();
    assert_eq!(
        status.code(),
        Some(libc::EPERM),
        "{status}: {}",
        docker.stderr()
    );
    assert_eq!(events.names(), ["getppid"]);
}
