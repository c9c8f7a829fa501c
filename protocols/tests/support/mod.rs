//! Real servers on loopback, a small relay that drives a conversation the way the
//! executor's relays do, and real client drivers (Python) talking through it.
//! Everything started here is stopped, and every directory removed, by guards.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use faultbox_protocols::{protocol, Answer, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Installs the servers and drivers (once per test binary); returns the driver
/// virtualenv's python.
pub fn python() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/servers.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run scripts/servers.sh");
        assert!(status.success(), "scripts/servers.sh failed");
        let venv = std::env::var("FAULTBOX_VENV").unwrap_or("/var/cache/faultbox/venv".into());
        PathBuf::from(venv).join("bin/python")
    })
    .clone()
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fbproto-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Hands the directory to a system user (servers that refuse to run as root).
    pub fn chown(&self, user: &str) {
        let ok = Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown {user} {}", self.0.display());
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server process: terminated (then killed) and reaped on drop, its
/// directory removed after.
pub struct Server {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    // Declared last: removed after the process is gone.
    pub dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn log_file(dir: &TempDir) -> std::fs::File {
    std::fs::File::create(dir.path().join("server.log")).expect("server log")
}

/// Waits until the server accepts TCP connections and its log shows `ready` (if
/// given); panics with the log after `timeout`.
fn wait_ready(server: &mut Server, ready: Option<&str>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{} exited ({status}):\n{}", server.name, server.log());
        }
        let log_ok = ready.is_none_or(|r| server.log().contains(r));
        if log_ok && StdStream::connect(("127.0.0.1", server.port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready after {timeout:?}:\n{}",
            server.name,
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub const PG_PASSWORD: &str = "s3cret-pw";

/// PostgreSQL with SCRAM-SHA-256 for TCP clients (user `postgres`), as the
/// `postgres` user; with `tls`, a self-signed certificate and SSL on (a client
/// asking for SSL gets `S`), else SSL off (it gets `N`).
pub fn postgres(tls: bool) -> Server {
    let dir = TempDir::new("pg");
    let data = dir.path().join("data");
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, PG_PASSWORD).expect("pw file");
    let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    if tls {
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt));
    }
    dir.chown("postgres");
    if tls {
        run(Command::new("chmod").arg("600").arg(&key));
    }
    let bin = Path::new("/usr/lib/postgresql/15/bin");
    run(Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin.join("initdb"))
        .args([
            "-U",
            "postgres",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
        ])
        .arg("--pwfile")
        .arg(&pwfile)
        .arg("-D")
        .arg(&data));
    let port = free_port();
    let child = Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir.path())
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", if tls { "ssl=on" } else { "ssl=off" }])
        .arg("-c")
        .arg(format!("ssl_cert_file={}", crt.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", key.display()))
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(log_file(&dir))
        .spawn()
        .expect("start postgres");
    let mut s = Server {
        name: "postgres",
        port,
        child,
        dir,
    };
    wait_ready(
        &mut s,
        Some("ready to accept connections"),
        Duration::from_secs(30),
    );
    s
}

/// MariaDB with a fresh data dir and a TCP user `app`/`apppw` owning database
/// `app`.
pub fn mariadb() -> Server {
    let dir = TempDir::new("maria");
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("init.sql"),
        "CREATE DATABASE IF NOT EXISTS app;\n\
         CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'apppw';\n\
         GRANT ALL ON *.* TO 'app'@'%';\n",
    )
    .expect("init.sql");
    dir.chown("mysql");
    run(Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--user=mysql",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
        ])
        .arg(format!("--datadir={}", data.display())));
    let port = free_port();
    let child = Command::new("mariadbd")
        .arg("--no-defaults")
        .arg("--user=mysql")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.path().join("sock").display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .arg(format!(
            "--init-file={}",
            dir.path().join("init.sql").display()
        ))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--local-infile=1",
        ])
        .arg(format!("--port={port}"))
        .args(["--innodb-buffer-pool-size=32M", "--skip-log-bin"])
        .stdout(Stdio::null())
        .stderr(log_file(&dir))
        .spawn()
        .expect("start mariadbd");
    let mut s = Server {
        name: "mariadb",
        port,
        child,
        dir,
    };
    wait_ready(
        &mut s,
        Some("ready for connections"),
        Duration::from_secs(60),
    );
    s
}

pub fn redis() -> Server {
    redis_with(&[])
}

/// redis-server with more arguments (`--requirepass pw`).
pub fn redis_with(extra: &[&str]) -> Server {
    let dir = TempDir::new("redis");
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir.path())
        .stdout(log_file(&dir))
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let mut s = Server {
        name: "redis",
        port,
        child,
        dir,
    };
    wait_ready(&mut s, None, Duration::from_secs(20));
    s
}

pub fn memcached() -> Server {
    let dir = TempDir::new("memcached");
    let port = free_port();
    let child = Command::new("memcached")
        .args([
            "-u",
            "memcache",
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(log_file(&dir))
        .spawn()
        .expect("start memcached");
    let mut s = Server {
        name: "memcached",
        port,
        child,
        dir,
    };
    wait_ready(&mut s, None, Duration::from_secs(20));
    s
}

/// nx-27017, a MongoDB-wire server on SQLite (PyPI), in memory; its log and pid
/// files in its directory.
pub fn nx27017() -> Server {
    let dir = TempDir::new("nx27017");
    let port = free_port();
    let bin = python().with_file_name("nx-27017");
    let child = Command::new(bin)
        .args([
            "--db",
            "memory",
            "--host",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg("--log-file")
        .arg(dir.path().join("nx.log"))
        .arg("--pid-file")
        .arg(dir.path().join("nx.pid"))
        .stdout(Stdio::null())
        .stderr(log_file(&dir))
        .spawn()
        .expect("start nx-27017");
    let mut s = Server {
        name: "nx-27017",
        port,
        child,
        dir,
    };
    wait_ready(&mut s, None, Duration::from_secs(30));
    s
}

/// An HTTP/1.1 keep-alive server (Python's http.server) that echoes what it got.
pub fn http_server() -> Server {
    let dir = TempDir::new("http");
    let script = dir.path().join("server.py");
    std::fs::write(&script, HTTP_SERVER).expect("server.py");
    let port = free_port();
    let child = Command::new(python())
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(log_file(&dir))
        .spawn()
        .expect("start the http server");
    let mut s = Server {
        name: "http",
        port,
        child,
        dir,
    };
    wait_ready(&mut s, None, Duration::from_secs(20));
    s
}

const HTTP_SERVER: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body, chunked=False):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(body), 7):
                    part = body[i:i + 7]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self):
        self.reply(("GET " + self.path).encode(), chunked=self.path.startswith("/chunked"))

    def do_HEAD(self):
        self.reply(("GET " + self.path).encode())

    def do_POST(self):
        data = self.body()
        self.reply(self.command.encode() + b" " + self.path.encode() + b" " + str(len(data)).encode())

    do_PUT = do_POST

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"#;

/// What a rule set answers for a request (None: forward it).
pub type Rules = Arc<dyn Fn(&Request) -> Option<Answer> + Send + Sync>;

pub fn no_rules() -> Rules {
    Arc::new(|_| None)
}

/// What the relay saw, over all its connections.
#[derive(Clone, Default, Debug)]
pub struct Stats {
    pub connections: usize,
    pub open: usize,
    pub opaque: Vec<String>,
    /// Responses owed by the server on connections that stayed understood.
    pub expected: usize,
    pub completed: usize,
    pub requests: Vec<Request>,
    pub answered: usize,
    pub refused: Vec<String>,
}

/// A relay in front of `upstream`, driving `protocol`'s conversation for each
/// connection as the executor's relays do: forward requests whole, write answers
/// for matched ones in order between real responses.
pub struct Relay {
    pub port: u16,
    pub stats: Arc<Mutex<Stats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(name: &'static str, upstream: u16, rules: Rules) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay listen");
        let port = listener.local_addr().expect("addr").port();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
                conns.spawn(connection(
                    name,
                    client,
                    upstream,
                    rules.clone(),
                    st.clone(),
                ));
            }
        });
        Relay { port, stats, task }
    }

    /// Waits (a few seconds at most) until every connection closed, then checks no
    /// understood connection drifted: the server completed exactly the responses
    /// its forwarded requests announced.
    pub async fn settle(&self) -> Stats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let s = self.stats.lock().unwrap();
                if s.open == 0 || Instant::now() > deadline {
                    assert_eq!(s.open, 0, "connections still open: {s:?}");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = self.stats.lock().unwrap();
        assert!(s.connections > 0, "nothing connected through the relay");
        assert_eq!(
            s.completed, s.expected,
            "responses completed vs announced (drift)"
        );
        s.clone()
    }
}

struct Shared {
    conv: Box<dyn faultbox_protocols::Conversation>,
    opaque: bool,
    /// Client bytes not yet attributed to a request.
    held: Vec<u8>,
    /// Responses owed for the requests forwarded so far.
    owed: usize,
    completed: usize,
    /// Answers waiting for the responses owed before them: (owed before, bytes).
    answers: VecDeque<(usize, Vec<u8>)>,
}

async fn connection(
    name: &'static str,
    client: TcpStream,
    upstream: SocketAddr,
    rules: Rules,
    stats: Arc<Mutex<Stats>>,
) {
    {
        let mut s = stats.lock().unwrap();
        s.connections += 1;
        s.open += 1;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        stats.lock().unwrap().open -= 1;
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let shared = Arc::new(Mutex::new(Shared {
        conv: protocol(name).expect("known protocol").conversation(),
        opaque: false,
        held: Vec::new(),
        owed: 0,
        completed: 0,
        answers: VecDeque::new(),
    }));
    // One writer to the client, fed in order by both pumps; `None` passes on the
    // server's end of stream.
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
    let writer = tokio::spawn(async move {
        while let Some(Some(bytes)) = rx.recv().await {
            if cw.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    });

    let (sh, st, tx2) = (shared.clone(), stats.clone(), tx.clone());
    let upward = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = &buf[..n];
            let mut out = Vec::new();
            {
                let mut g = sh.lock().unwrap();
                let g = &mut *g;
                if g.opaque {
                    out.extend_from_slice(data);
                } else {
                    g.held.extend_from_slice(data);
                    match g.conv.client(data) {
                        Err(o) => {
                            g.opaque = true;
                            st.lock().unwrap().opaque.push(o.0);
                            out.append(&mut g.held);
                        }
                        Ok(requests) => {
                            for r in requests {
                                let bytes: Vec<u8> = g.held.drain(..r.len).collect();
                                st.lock().unwrap().requests.push(r.clone());
                                let answer = if r.matchable { rules(&r) } else { None };
                                if let Some(answer) = answer {
                                    match g.conv.answer(&r, &answer) {
                                        Ok(reply) => {
                                            st.lock().unwrap().answered += 1;
                                            if g.answers.is_empty() && g.completed >= g.owed {
                                                let _ = tx2.send(Some(reply.bytes));
                                            } else {
                                                g.answers.push_back((g.owed, reply.bytes));
                                            }
                                            continue;
                                        }
                                        Err(e) => st.lock().unwrap().refused.push(e),
                                    }
                                }
                                g.owed += r.replies;
                                out.extend_from_slice(&bytes);
                            }
                        }
                    }
                }
            }
            if sw.write_all(&out).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };

    let (sh, st) = (shared.clone(), stats.clone());
    let downward = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = &buf[..n];
            let mut g = sh.lock().unwrap();
            let g = &mut *g;
            if g.opaque {
                let _ = tx.send(Some(data.to_vec()));
                continue;
            }
            let ends = if g.answers.is_empty() {
                g.conv.server(data).map(|k| vec![n; k])
            } else {
                g.conv.server_ends(data)
            };
            match ends {
                Err(o) => {
                    g.opaque = true;
                    st.lock().unwrap().opaque.push(o.0);
                    let _ = tx.send(Some(data.to_vec()));
                    for (_, a) in g.answers.drain(..) {
                        let _ = tx.send(Some(a));
                    }
                }
                Ok(ends) => {
                    let mut at = 0;
                    for end in ends {
                        g.completed += 1;
                        if g.answers
                            .front()
                            .is_some_and(|(owed, _)| *owed <= g.completed)
                        {
                            let _ = tx.send(Some(data[at..end].to_vec()));
                            at = end;
                            while g
                                .answers
                                .front()
                                .is_some_and(|(owed, _)| *owed <= g.completed)
                            {
                                let (_, a) = g.answers.pop_front().expect("checked");
                                let _ = tx.send(Some(a));
                            }
                        }
                    }
                    if at < n {
                        let _ = tx.send(Some(data[at..].to_vec()));
                    }
                }
            }
        }
        let _ = tx.send(None);
    };

    tokio::join!(upward, downward);
    let _ = writer.await;
    let g = shared.lock().unwrap();
    let mut s = stats.lock().unwrap();
    if !g.opaque {
        s.expected += g.owed;
        s.completed += g.completed;
    }
    s.open -= 1;
}

/// Runs a Python script with the driver virtualenv; fails the test on a non-zero
/// exit or after `timeout` (a stalled driver is a deadlock), showing what the
/// script printed either way. Returns stdout.
pub async fn run_python(script: &str, env: &[(&str, String)], timeout: Duration) -> String {
    let dir = TempDir::new("py");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg("-u").arg("-c").arg(script).kill_on_drop(true);
    cmd.stdout(std::fs::File::create(&out_path).expect("stdout file"));
    cmd.stderr(std::fs::File::create(&err_path).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run python");
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Err(_) => {
            panic!("the driver script stalled for {timeout:?} (deadlock?):\n{stdout}\n{stderr}")
        }
        Ok(status) => assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "driver script failed after {:?} ({status:?}):\n{stdout}\n{stderr}",
            started.elapsed()
        ),
    }
    stdout
}
