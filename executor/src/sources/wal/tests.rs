//! `wal_stream` against a real PostgreSQL 15 started per test in a temporary
//! directory; a guard stops it (immediate shutdown, then SIGKILL) and removes the
//! directory, whether the test passes or fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::*;
use crate::network::namespace::NetNs;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const PASSWORD: &str = "wal-test-pw";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL server of this test's own, run as `postgres`, with SCRAM
/// authentication for TCP clients.
struct Pg {
    port: u16,
    child: Option<Child>,
    wal_level: &'static str,
    // Last: removed once the server is gone.
    dir: TempDir,
}

impl Pg {
    fn start(wal_level: &'static str) -> Pg {
        Pg::start_on(free_port(), wal_level)
    }

    fn start_on(port: u16, wal_level: &'static str) -> Pg {
        assert!(
            Path::new(BIN).join("postgres").exists(),
            "these tests need PostgreSQL 15 at {BIN} (apt-get install -y postgresql)"
        );
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = TempDir(std::env::temp_dir().join(format!("fbwal-{}-{n}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        std::fs::write(dir.0.join("pw"), PASSWORD).expect("password file");
        run(Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir.0));
        run(as_postgres(&Path::new(BIN).join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .args(["-E", "UTF8", "--pwfile"])
            .arg(dir.0.join("pw"))
            .arg("-D")
            .arg(dir.0.join("data")));
        let mut pg = Pg {
            port,
            child: None,
            wal_level,
            dir,
        };
        pg.launch();
        pg
    }

    /// Starts the server on the existing data directory and waits until it takes
    /// connections.
    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.0.join("server.log")).expect("log");
        let child = as_postgres(&Path::new(BIN).join("postgres"))
            .arg("-D")
            .arg(self.dir.0.join("data"))
            .arg("-k")
            .arg(&self.dir.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("wal_level={}", self.wal_level))
            .args(["-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            if self.log().contains("ready to accept connections")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with `signal` (SIGQUIT: immediate, SIGKILL) and reaps it.
    fn kill(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the server process this guard started and has not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    fn credentials(&self) -> Credentials {
        Credentials {
            user: Some("postgres".into()),
            password: Some(PASSWORD.into()),
            database: Some("postgres".into()),
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.kill(libc::SIGQUIT);
    }
}

fn as_postgres(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin);
    c
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The test's own connections to the server, on a runtime of the test.
struct Control {
    rt: tokio::runtime::Runtime,
    port: u16,
}

impl Control {
    fn new(pg: &Pg) -> Control {
        Control {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            port: pg.port,
        }
    }

    fn connect(&self) -> Client {
        self.rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .expect("connect");
            let mut config = tokio_postgres::Config::new();
            config
                .user("postgres")
                .password(PASSWORD)
                .dbname("postgres");
            let (client, connection) = config.connect_raw(stream, NoTls).await.expect("login");
            tokio::spawn(connection);
            client
        })
    }

    /// Runs `sql` (several statements allowed) on `client`; the rows' text values.
    fn on(&self, client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
        self.rt.block_on(async {
            let messages = client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            messages
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// Runs `sql` on a connection of its own.
    fn sql(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let client = self.connect();
        self.on(&client, sql)
    }

    fn slots(&self) -> Vec<String> {
        self.sql("SELECT slot_name FROM pg_replication_slots ORDER BY 1")
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect()
    }

    fn publications(&self) -> Vec<String> {
        self.sql("SELECT pubname FROM pg_publication ORDER BY 1")
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect()
    }

    /// Waits until the source's slot exists: changes from then on are seen.
    fn wait_for_slot(&self, slot: &str) {
        wait_until(Duration::from_secs(20), &format!("slot {slot}"), || {
            self.slots().iter().any(|s| s == slot)
        });
    }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "no {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sink that keeps what it is given.
#[derive(Default)]
struct Collected(Mutex<Vec<Observation>>);

impl Sink for Collected {
    fn emit(&self, o: Observation) {
        self.0.lock().unwrap().push(o);
    }
}

impl Collected {
    fn all(&self) -> Vec<Observation> {
        self.0.lock().unwrap().clone()
    }

    fn changes(&self) -> Vec<Observation> {
        self.all()
            .into_iter()
            .filter(|o| o.detail.as_deref() != Some("error"))
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|o| o.fields.get("error").cloned())
            .collect()
    }
}

/// A source stopped on drop, so a failing test leaves no session behind.
struct Source(Option<Box<dyn Running>>);

impl Source {
    fn sync(&self) {
        self.0.as_ref().expect("running").sync();
    }

    fn stop(&mut self) {
        if let Some(s) = self.0.take() {
            s.stop();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop();
    }
}

fn observe(
    pg_port: u16,
    credentials: Credentials,
    slot: &str,
    tables: &[&str],
) -> (Source, Arc<Collected>) {
    let sink = Arc::new(Collected::default());
    // The service's name names the worker thread: one per test.
    let ctx = Context {
        service: slot.into(),
        netns: Arc::new(NetNs::current().expect("this namespace")),
        sink: sink.clone(),
    };
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    (
        Source(Some(start(ctx, pg_port, credentials, slot, &tables))),
        sink,
    )
}

fn data(o: &Observation) -> Value {
    serde_json::from_str(&o.fields["data"]).expect("data is JSON")
}

#[test]
fn row_changes_arrive_typed_and_in_commit_order() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, qty int8, \
         ratio float8, small int2, f real, ok bool, doc jsonb, raw json, big numeric, \
         at date, tags text[]);
         CREATE TABLE audit (n int, note text);
         ALTER TABLE audit REPLICA IDENTITY FULL;",
    );
    let (mut source, sink) = observe(pg.port, pg.credentials(), "orders", &[]);
    db.wait_for_slot("orders");

    db.sql(
        "INSERT INTO items VALUES (1, 'apple', 12.50, 9007199254740993, 0.25, -3, 0.1, true, \
         '{\"a\": [1, 2.5], \"b\": null}', '[1, \"x\"]', 123456789012345678901234567890.5, \
         '2024-02-29', '{x,y}')",
    );
    // Two transactions that overlap: the one that commits first comes first.
    let (a, b) = (db.connect(), db.connect());
    db.on(
        &a,
        "BEGIN; INSERT INTO items (id, name) VALUES (10, 'first begun')",
    );
    db.on(
        &b,
        "BEGIN; INSERT INTO items (id, name) VALUES (20, 'first committed')",
    );
    db.on(
        &b,
        "UPDATE items SET name = 'pear', ok = false WHERE id = 1; COMMIT",
    );
    db.on(
        &a,
        "UPDATE items SET id = 11 WHERE id = 10; DELETE FROM items WHERE id = 20; COMMIT",
    );
    db.sql("INSERT INTO audit VALUES (1, 'x'); UPDATE audit SET note = 'y'; DELETE FROM audit");
    source.sync();

    let events = sink.changes();
    let summary: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            let d = data(e);
            let id = d["row"]
                .get("id")
                .or(d["old"].get("id"))
                .or(d["row"].get("n"))
                .or(d["old"].get("n"))
                .cloned()
                .unwrap_or(Value::Null);
            (e.fields["op"].clone(), e.fields["table"].clone(), id)
        })
        .collect();
    let expected = [
        ("INSERT", "items", json!(1)),
        ("INSERT", "items", json!(20)),
        ("UPDATE", "items", json!(1)),
        ("INSERT", "items", json!(10)),
        ("UPDATE", "items", json!(11)),
        ("DELETE", "items", json!(20)),
        ("INSERT", "audit", json!(1)),
        ("UPDATE", "audit", json!(1)),
        ("DELETE", "audit", json!(1)),
    ]
    .map(|(op, t, id)| (op.to_string(), t.to_string(), id));
    assert_eq!(summary, expected, "{events:#?}\n{:?}", sink.errors());
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());

    let first = &events[0];
    assert_eq!(first.kind, "wal");
    assert_eq!(first.detail.as_deref(), Some("insert"));
    assert_eq!(first.fields["schema"], "public");
    assert!(first.fields["lsn"].contains('/'), "{first:?}");
    assert_eq!(
        data(first),
        json!({
            "op": "INSERT", "table": "items", "schema": "public",
            "row": {
                "id": 1, "name": "apple", "price": 12.5, "qty": 9007199254740993_i64,
                "ratio": 0.25, "small": -3, "f": 0.1, "ok": true,
                "doc": {"a": [1, 2.5], "b": null}, "raw": [1, "x"],
                "big": "123456789012345678901234567890.5", "at": "2024-02-29",
                "tags": "{x,y}"
            }
        })
    );
    // One transaction, one xid; another transaction, another.
    let xid = |i: usize| events[i].fields["xid"].clone();
    assert_eq!(xid(1), xid(2));
    assert_eq!(xid(3), xid(4));
    assert_eq!(xid(4), xid(5));
    assert_ne!(xid(0), xid(1));
    assert_ne!(xid(2), xid(3));
    let update = data(&events[2]);
    assert_eq!(update["row"]["name"], "pear");
    assert_eq!(update["row"]["ok"], false);
    assert!(
        update.get("old").is_none(),
        "the key did not change: {update}"
    );
    // The key changed: the old key (and only it) is sent.
    assert_eq!(data(&events[4])["old"], json!({"id": 10}));
    assert_eq!(data(&events[5])["old"], json!({"id": 20}));
    assert!(data(&events[5]).get("row").is_none());
    // REPLICA IDENTITY FULL: the whole old row.
    assert_eq!(data(&events[7])["old"], json!({"n": 1, "note": "x"}));
    assert_eq!(data(&events[7])["row"], json!({"n": 1, "note": "y"}));
    assert_eq!(data(&events[8])["old"], json!({"n": 1, "note": "y"}));

    db.sql("TRUNCATE audit, items");
    source.sync();
    let truncated: Vec<_> = sink.changes()[9..]
        .iter()
        .map(|e| (e.fields["op"].clone(), e.fields["table"].clone()))
        .collect();
    let mut tables: Vec<&str> = truncated.iter().map(|(_, t)| t.as_str()).collect();
    tables.sort();
    assert_eq!(tables, ["audit", "items"], "{truncated:?}");
    assert!(truncated.iter().all(|(op, _)| op == "TRUNCATE"));
    source.stop();
}

#[test]
fn unchanged_toast_values_are_listed_not_sent() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)");
    // Incompressible, so it is stored out of line.
    db.sql(
        "INSERT INTO docs SELECT 1, string_agg(md5(i::text), '') FROM generate_series(1, 400) i",
    );
    let (mut source, sink) = observe(pg.port, pg.credentials(), "toast", &[]);
    db.wait_for_slot("toast");
    db.sql("UPDATE docs SET n = 5 WHERE id = 1");
    source.sync();
    let events = sink.changes();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        data(&events[0]),
        json!({"op": "UPDATE", "table": "docs", "schema": "public",
               "row": {"id": 1, "n": 5}, "unchanged": ["body"]})
    );
    source.stop();
}

#[test]
fn tables_limit_the_events() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql(
        "CREATE TABLE a (x int PRIMARY KEY); CREATE TABLE b (x int PRIMARY KEY); \
         CREATE SCHEMA s; CREATE TABLE s.a (x int PRIMARY KEY)",
    );
    let (mut only_a, sink_a) = observe(pg.port, pg.credentials(), "only_a", &["a"]);
    let (mut b_and_s, sink_b) = observe(pg.port, pg.credentials(), "b_and_s", &["public.b", "s.a"]);
    // A table the service has not made yet: the source waits for it, quietly.
    let (mut later, sink_later) = observe(pg.port, pg.credentials(), "later", &["later"]);
    db.wait_for_slot("only_a");
    db.wait_for_slot("b_and_s");
    db.sql(
        "INSERT INTO a VALUES (1); INSERT INTO b VALUES (2); INSERT INTO s.a VALUES (3); \
         INSERT INTO b VALUES (4); CREATE TABLE later (x int PRIMARY KEY)",
    );
    db.wait_for_slot("later");
    db.sql("INSERT INTO later VALUES (5); INSERT INTO a VALUES (6)");
    for s in [&only_a, &b_and_s, &later] {
        s.sync();
    }
    let seen = |sink: &Collected| -> Vec<(String, Value)> {
        sink.changes()
            .iter()
            .map(|e| {
                let table = format!("{}.{}", e.fields["schema"], e.fields["table"]);
                (table, data(e)["row"]["x"].clone())
            })
            .collect()
    };
    // A bare name is the table the search path finds, as in SQL.
    assert_eq!(
        seen(&sink_a),
        [("public.a".into(), json!(1)), ("public.a".into(), json!(6))]
    );
    assert_eq!(
        seen(&sink_b),
        [
            ("public.b".into(), json!(2)),
            ("s.a".into(), json!(3)),
            ("public.b".into(), json!(4))
        ]
    );
    assert_eq!(seen(&sink_later), [("public.later".into(), json!(5))]);
    for s in [&mut only_a, &mut b_and_s, &mut later] {
        s.stop();
    }
    for sink in [&sink_a, &sink_b, &sink_later] {
        assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    }
}

#[test]
fn a_user_that_is_not_superuser_publishes_the_tables_it_owns() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql(
        "CREATE ROLE app LOGIN REPLICATION PASSWORD 'app-pw'; \
         GRANT CREATE ON DATABASE postgres TO app; \
         CREATE TABLE owned (x int PRIMARY KEY); ALTER TABLE owned OWNER TO app",
    );
    let app = Credentials {
        user: Some("app".into()),
        password: Some("app-pw".into()),
        database: Some("postgres".into()),
    };
    let (mut listed, sink) = observe(pg.port, app.clone(), "listed", &["owned"]);
    db.wait_for_slot("listed");
    db.sql("INSERT INTO owned VALUES (1)");
    listed.sync();
    assert_eq!(sink.changes().len(), 1, "{:?}", sink.all());
    listed.stop();

    let (mut all, sink) = observe(pg.port, app, "all_tables", &[]);
    wait_until(Duration::from_secs(20), "error event", || {
        !sink.errors().is_empty()
    });
    let error = &sink.errors()[0];
    assert!(
        error.contains("42501") && error.contains("tables="),
        "{error}"
    );
    all.stop();
    assert!(db.slots().is_empty() && db.publications().is_empty());
}

#[test]
fn sync_sees_what_was_committed_just_before() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let (mut source, sink) = observe(pg.port, pg.credentials(), "synced", &[]);
    db.wait_for_slot("synced");
    let writer = db.connect();
    // Asynchronous commits are acknowledged before the WAL is flushed: sync waits.
    db.on(&writer, "SET synchronous_commit = off");
    let mut took = Vec::new();
    for i in 0..40 {
        db.on(&writer, &format!("INSERT INTO t VALUES ({i})"));
        let t0 = Instant::now();
        source.sync();
        took.push(t0.elapsed());
        let n = sink.changes().len();
        assert_eq!(n, i + 1, "after the sync following insert {i}");
    }
    took.sort();
    eprintln!(
        "sync after a commit: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(took[took.len() - 1] < SYNC_WAIT, "{took:?}");
    source.stop();
}

#[test]
fn wal_level_replica_is_explained_once() {
    let pg = Pg::start("replica");
    let db = Control::new(&pg);
    let (mut source, sink) = observe(pg.port, pg.credentials(), "nope", &[]);
    wait_until(Duration::from_secs(20), "error event", || {
        !sink.errors().is_empty()
    });
    let t0 = Instant::now();
    source.sync();
    assert!(t0.elapsed() < Duration::from_millis(500));
    // It does not retry: still one event a while later.
    std::thread::sleep(Duration::from_millis(300));
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("wal_level is \"replica\""),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("-c wal_level=logical"), "{}", errors[0]);
    let all = sink.all();
    assert_eq!(all[0].kind, "wal");
    assert_eq!(all[0].detail.as_deref(), Some("error"));
    assert!(db.publications().is_empty());
    source.stop();
}

#[test]
fn a_slot_that_exists_is_named_and_left_alone() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql("SELECT pg_create_logical_replication_slot('taken', 'pgoutput')");
    let (mut source, sink) = observe(pg.port, pg.credentials(), "taken", &[]);
    wait_until(Duration::from_secs(20), "error event", || {
        !sink.errors().is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("\"taken\" already exists"),
        "{}",
        errors[0]
    );
    source.stop();
    assert_eq!(db.slots(), ["taken"]);
    assert!(db.publications().is_empty());
    db.sql("SELECT pg_drop_replication_slot('taken')");

    // A name PostgreSQL would refuse is said at once, without connecting.
    let (mut source, sink) = observe(pg.port, pg.credentials(), "Bad-Name", &[]);
    wait_until(Duration::from_secs(5), "error event", || {
        !sink.errors().is_empty()
    });
    assert!(
        sink.errors()[0].contains("not valid"),
        "{:?}",
        sink.errors()
    );
    source.stop();
}

/// How many of this process's threads are the worker of the source of `slot`.
fn worker_threads(slot: &str) -> usize {
    let name = format!("wal {slot}");
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn stop_leaves_no_slot_publication_session_or_thread() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let (mut source, sink) = observe(pg.port, pg.credentials(), "tidy", &[]);
    db.wait_for_slot("tidy");
    assert_eq!(db.publications(), ["faultbox_tidy"]);
    assert_eq!(worker_threads("tidy"), 1);
    db.sql("INSERT INTO t VALUES (1)");
    let t0 = Instant::now();
    source.stop();
    let took = t0.elapsed();
    // stop reads what is left before it returns.
    assert_eq!(sink.changes().len(), 1);
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    assert!(db.slots().is_empty(), "{:?}", db.slots());
    assert!(db.publications().is_empty(), "{:?}", db.publications());
    let sessions = db.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'faultbox wal_stream%'",
    );
    assert_eq!(sessions[0][0].as_deref(), Some("0"));
    assert_eq!(worker_threads("tidy"), 0);
    let n = sink.all().len();
    db.sql("INSERT INTO t VALUES (2)");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(sink.all().len(), n, "an emit after stop");
}

#[test]
fn a_source_started_before_its_server_waits_for_it_quietly() {
    let port = free_port();
    let credentials = Credentials {
        user: Some("postgres".into()),
        password: Some(PASSWORD.into()),
        database: Some("postgres".into()),
    };
    let (mut source, sink) = observe(port, credentials, "early", &[]);
    // Nothing is up: sync has nothing to wait for.
    let t0 = Instant::now();
    source.sync();
    assert!(t0.elapsed() < Duration::from_millis(500));
    let pg = Pg::start_on(port, "logical");
    let db = Control::new(&pg);
    // Once the server is up, a sync returns when the slot exists (whatever the
    // retry's backoff): what the test does next is seen.
    source.sync();
    assert_eq!(db.slots(), ["early"]);
    db.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (7)");
    source.sync();
    let events = sink.changes();
    assert_eq!(events.len(), 1, "{:?}", sink.all());
    assert_eq!(data(&events[0])["row"], json!({"id": 7}));
    // A server that was starting is not an error.
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    source.stop();
}

#[test]
fn a_sync_between_retries_tries_at_once_and_returns_with_the_slot() {
    let pg = Pg::start("logical");
    let db = Control::new(&pg);
    let mut credentials = pg.credentials();
    credentials.database = Some("made_later".into());
    let (mut source, sink) = observe(pg.port, credentials, "retried", &[]);
    // The database does not exist: the source retries, backing off to 1 s, and says
    // so once.
    std::thread::sleep(Duration::from_secs(3));
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("3D000"), "{}", errors[0]);
    db.sql("CREATE DATABASE made_later");
    // Logged in beforehand, so the check follows the sync closely.
    let check = db.connect();
    let t0 = Instant::now();
    source.sync();
    let took = t0.elapsed();
    let slots = db.on(&check, "SELECT slot_name FROM pg_replication_slots");
    assert_eq!(
        slots,
        [[Some("retried".to_string())]],
        "after a sync of {took:?}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    source.stop();
    assert!(db.slots().is_empty());
}

#[test]
fn a_restarted_server_is_observed_again_and_the_gap_reported() {
    let mut pg = Pg::start("logical");
    let db = Control::new(&pg);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let (mut source, sink) = observe(pg.port, pg.credentials(), "again", &[]);
    db.wait_for_slot("again");
    db.sql("INSERT INTO t VALUES (1)");
    source.sync();
    // Immediate shutdown: a crash as far as the WAL is concerned.
    pg.kill(libc::SIGQUIT);
    // A server that is gone may be the end of the test: nothing said yet.
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    pg.launch();
    db.wait_for_slot("again");
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("were not seen"), "{}", errors[0]);
    db.sql("INSERT INTO t VALUES (2)");
    source.sync();
    let ids: Vec<Value> = sink
        .changes()
        .iter()
        .map(|e| data(e)["row"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2)], "{:?}", sink.all());
    assert_eq!(sink.errors().len(), 1, "{:?}", sink.errors());
    source.stop();
    // The publication made before the crash was replaced, then dropped.
    assert!(db.publications().is_empty());
}

#[test]
fn stop_is_bounded_when_the_server_hangs_or_dies() {
    let mut pg = Pg::start("logical");
    let db = Control::new(&pg);
    let (mut source, sink) = observe(pg.port, pg.credentials(), "hung", &[]);
    db.wait_for_slot("hung");
    let pid = db.sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'faultbox wal_stream hung'",
    )[0][0]
        .clone()
        .expect("the source's session")
        .parse::<i32>()
        .expect("pid");
    // SAFETY: stopping (then resuming) the server backend this test's server started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t0 = Instant::now();
    source.sync();
    let synced = t0.elapsed();
    let t0 = Instant::now();
    source.stop();
    let stopped = t0.elapsed();
    let n = sink.all().len();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        synced < SYNC_WAIT + Duration::from_secs(1),
        "sync took {synced:?}"
    );
    assert!(
        stopped < STOP_GRACE + Duration::from_secs(1),
        "stop took {stopped:?}"
    );
    // The worker gave up in time and was joined.
    assert_eq!(worker_threads("hung"), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.all().len(), n, "an emit after stop");

    // A server that is gone: stop does not wait for it, and a server killed before
    // its source stops (as at the end of a test) is no error.
    let (mut source, sink) = observe(pg.port, pg.credentials(), "dead", &[]);
    db.wait_for_slot("dead");
    pg.kill(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    source.stop();
    assert!(sink.all().is_empty(), "{:?}", sink.all());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t0.elapsed()
    );
}

#[test]
fn values_take_their_column_type() {
    let t = |oid, text: &'static str| value(oid, &Datum::Text(text.as_bytes())).unwrap();
    assert_eq!(t(INT4, "-42"), json!(-42));
    assert_eq!(t(INT8, "9223372036854775807"), json!(i64::MAX));
    assert_eq!(t(FLOAT8, "1e+300"), json!(1e300));
    assert_eq!(t(FLOAT8, "NaN"), json!("NaN"));
    assert_eq!(t(FLOAT4, "-Infinity"), json!("-Infinity"));
    assert_eq!(t(NUMERIC, "30.00"), json!(30));
    assert_eq!(
        t(NUMERIC, "0.1000000000000000055511"),
        json!("0.1000000000000000055511")
    );
    assert_eq!(t(BOOL, "f"), json!(false));
    assert_eq!(t(JSONB, "{\"k\": 1}"), json!({"k": 1}));
    assert_eq!(t(JSON, "not json"), json!("not json"));
    assert_eq!(t(25, "42"), json!("42"));
    assert_eq!(value(INT4, &Datum::Null), Some(Value::Null));
    assert_eq!(value(25, &Datum::UnchangedToast), None);
    assert_eq!(
        value(17, &Datum::Binary(&[0xde, 0xad])),
        Some(json!("\\xdead"))
    );
}

#[test]
fn slot_names_are_checked_before_connecting() {
    assert!(check_slot_name("orders_2").is_ok());
    assert!(check_slot_name(&"x".repeat(63)).is_ok());
    for bad in ["", "Orders", "a-b", "a b", &"x".repeat(64)] {
        assert!(check_slot_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(publication_name("orders"), "faultbox_orders");
    let long = |c: &str| publication_name(&format!("{}{c}", "x".repeat(60)));
    assert_eq!(publication_name(&"x".repeat(54)).len(), 63);
    assert_eq!(long("a").len(), 63);
    assert_ne!(long("a"), long("b"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any sequence of messages (valid ones about a few relations, cut ones, noise)
    /// gives events whose `data` is JSON, or errors: never a panic.
    #[test]
    fn any_message_sequence_is_safe(
        messages in proptest::collection::vec(
            prop_oneof![
                4 => pgoutput::tests::message(),
                1 => proptest::collection::vec(any::<u8>(), 0..24),
            ],
            0..24,
        ),
        oids in proptest::collection::vec(0u8..3, 24),
    ) {
        let mut changes = Changes::default();
        let mut out = Vec::new();
        for (mut m, oid) in messages.into_iter().zip(oids) {
            // Point relations and changes at a few OIDs, so changes meet their relation.
            if m.len() >= 5 && b"RIUD".contains(&m[0]) {
                m[1..5].copy_from_slice(&u32::from(oid).to_be_bytes());
            }
            let _ = changes.feed("0/1", "7", &m, &mut out);
        }
        let _ = changes.feed("0/2", "7", b"C\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", &mut out);
        for o in out {
            prop_assert_eq!(o.kind, "wal");
            if o.detail.as_deref() != Some("error") {
                let d: Value = serde_json::from_str(&o.fields["data"]).unwrap();
                prop_assert_eq!(&d["op"], &json!(o.fields["op"]));
            }
        }
    }
}
