//! Real drivers against real servers through a relay driving each protocol's
//! conversation: round trips must come back intact with exactly one response
//! counted per request, and injected answers must reach the drivers as the
//! protocol's own errors or values, in order, leaving the connection usable.
//!
//! Needs root (servers run as their system users) and the packages that
//! `scripts/servers.sh` installs; the tests run that script themselves.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faultbox_protocols::rules::matches;
use faultbox_protocols::{Answer, Request};
use support::{run_python, Relay, Rules};

const LIMIT: Duration = Duration::from_secs(20);

/// A rule list: the first whose patterns all match the request answers it.
fn rules(protocol: &'static str, list: Vec<(Vec<(&'static str, &'static str)>, Answer)>) -> Rules {
    Arc::new(move |r: &Request| {
        list.iter()
            .find(|(pats, _)| {
                pats.iter()
                    .all(|(k, p)| r.fields.get(k).is_some_and(|v| matches(protocol, k, p, v)))
            })
            .map(|(_, a)| a.clone())
    })
}

fn error(message: &str, status: Option<i64>) -> Answer {
    Answer::Error {
        message: Some(message.to_string()),
        status: status.map(faultbox_protocols::Code::Number),
    }
}

fn value(v: Option<&str>) -> Answer {
    Answer::Response {
        status: None,
        body: None,
        value: v.map(str::to_string),
    }
}

fn port_env(relay: &Relay) -> Vec<(&'static str, String)> {
    vec![("PORT", relay.port.to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_drivers() {
    support::python();
    let server = tokio::task::spawn_blocking(|| support::postgres(false))
        .await
        .unwrap();
    let env = |relay: &Relay| {
        let mut e = port_env(relay);
        e.push(("PW", support::PG_PASSWORD.to_string()));
        e
    };

    let relay = Relay::start("postgres", server.port, support::no_rules()).await;
    run_python(PG_ROUND_TRIPS, &env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    let queries: Vec<&str> = s
        .requests
        .iter()
        .filter_map(|r| r.fields.get("query").map(String::as_str))
        .collect();
    assert!(queries
        .iter()
        .any(|q| q.contains("COPY t (id, name) FROM STDIN")));
    assert!(
        queries.iter().any(|q| q.contains("$1")),
        "extended protocol with parameters"
    );

    let relay = Relay::start(
        "postgres",
        server.port,
        rules(
            "postgres",
            vec![(
                vec![("query", "insert into f *")],
                error("disk full", Some(53100)),
            )],
        ),
    )
    .await;
    run_python(PG_INJECTED, &env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert!(s.answered >= 5, "answered {}", s.answered);
}

/// A server that accepts SSL: the conversation steps aside once the server says
/// `S` (TLS follows), the driver's encrypted session passes through untouched,
/// and no rule can act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_passes_through() {
    support::python();
    let server = tokio::task::spawn_blocking(|| support::postgres(true))
        .await
        .unwrap();
    let relay = Relay::start(
        "postgres",
        server.port,
        rules(
            "postgres",
            vec![(vec![("query", "*")], error("must not fire", None))],
        ),
    )
    .await;
    let mut env = port_env(&relay);
    env.push(("PW", support::PG_PASSWORD.to_string()));
    run_python(PG_TLS, &env, LIMIT).await;
    let s = relay.settle().await;
    assert_eq!(s.answered, 0);
    assert_eq!(s.opaque.len(), s.connections, "{:?}", s.opaque);
    assert!(s.opaque.iter().all(|o| o.contains("TLS")), "{:?}", s.opaque);
}

const PG_TLS: &str = r#"
import os, psycopg
for mode in ("require", "prefer"):
    with psycopg.connect(host="127.0.0.1", port=int(os.environ["PORT"]), user="postgres",
                         password=os.environ["PW"], dbname="postgres", sslmode=mode) as c:
        ssl = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert ssl == (True,), (mode, ssl)
        assert c.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)
print("OK")
"#;

const PG_ROUND_TRIPS: &str = r#"
import os, psycopg, pg8000.native
kw = dict(host="127.0.0.1", port=int(os.environ["PORT"]), user="postgres",
          password=os.environ["PW"], dbname="postgres", sslmode="prefer")
with psycopg.connect(autocommit=True, **kw) as c:
    assert c.execute("SELECT 1").fetchone() == (1,)
    c.execute("DROP TABLE IF EXISTS t")
    c.execute("CREATE TABLE t (id int, name text)")
    c.execute("INSERT INTO t VALUES (%s, %s)", (1, "alice"))
    c.cursor().executemany("INSERT INTO t VALUES (%s, %s)",
                           [(i, None if i % 2 else "") for i in range(2, 12)])
    rows = c.execute("SELECT id, name FROM t ORDER BY id").fetchall()
    assert len(rows) == 11 and rows[0] == (1, "alice") and rows[1] == (2, "") and rows[2] == (3, None), rows
    for i in range(3):
        assert c.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
    with c.cursor().copy("COPY t (id, name) FROM STDIN") as cp:
        for i in range(100, 105):
            cp.write_row((i, f"c{i}"))
    with c.cursor().copy("COPY (SELECT id FROM t WHERE id >= 100 ORDER BY id) TO STDOUT") as cp:
        got = [bytes(b) for b in cp]
    assert b"".join(got) == b"100\n101\n102\n103\n104\n", got
    cur = c.execute("SELECT 1; SELECT 2")
    with c.transaction():
        c.execute("INSERT INTO t VALUES (200, 'tx')")
    assert c.execute("SELECT count(*) FROM t WHERE id = 200").fetchone() == (1,)
    with c.pipeline():
        c1 = c.execute("SELECT 10")
        c2 = c.execute("SELECT %s::int", (20,))
    assert c1.fetchone() == (10,) and c2.fetchone() == (20,)
    assert len(c.execute("SELECT generate_series(1, 5000)").fetchall()) == 5000
con = pg8000.native.Connection("postgres", host="127.0.0.1", port=int(os.environ["PORT"]),
                               password=os.environ["PW"])
assert con.run("SELECT :x::int * 2", x=21) == [[42]]
assert con.run("SELECT id, name FROM t WHERE id < :n ORDER BY id", n=4) == [[1, "alice"], [2, ""], [3, None]]
assert con.run("SELECT id FROM t WHERE id = :n", n=200) == [[200]]
con.close()
print("OK")
"#;

const PG_INJECTED: &str = r#"
import os, psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus as TS
kw = dict(host="127.0.0.1", port=int(os.environ["PORT"]), user="postgres",
          password=os.environ["PW"], dbname="postgres", sslmode="prefer")
c = psycopg.connect(autocommit=True, **kw)
c.execute("DROP TABLE IF EXISTS f")
c.execute("CREATE TABLE f (id int)")

def expect_disk_full(fn):
    try:
        fn()
    except errors.DiskFull as e:
        assert e.sqlstate == "53100" and "disk full" in str(e), (e.sqlstate, str(e))
        return
    raise SystemExit("no injected error")

# Simple and extended protocol, outside a transaction.
expect_disk_full(lambda: c.execute("INSERT INTO f VALUES (1)"))
assert c.execute("SELECT 1").fetchone() == (1,)
expect_disk_full(lambda: c.execute("insert  into f values (%s)", (2,)))
assert c.info.transaction_status == TS.IDLE

# Inside a transaction block: the error aborts it, the connection recovers.
def in_tx():
    with c.transaction():
        c.execute("SELECT 1")
        c.execute("INSERT INTO f VALUES (%s)", (3,))
expect_disk_full(in_tx)
assert c.info.transaction_status == TS.IDLE
assert c.execute("SELECT count(*) FROM f").fetchone() == (0,)

c2 = psycopg.connect(**kw)
c2.execute("SELECT 1")
expect_disk_full(lambda: c2.execute("INSERT INTO f VALUES (4)"))
assert c2.info.transaction_status == TS.INERROR, c2.info.transaction_status
c2.rollback()
assert c2.execute("SELECT 2").fetchone() == (2,)
c2.close()

# Pipelined: the answer comes back between the real responses around it.
with c.pipeline() as p:
    a = c.execute("SELECT 'a'")
    p.sync()
    b = c.cursor()
    try:
        b.execute("INSERT INTO f VALUES (5)")
        p.sync()
        raise SystemExit("no injected error in the pipeline")
    except errors.DiskFull:
        pass
    d = c.execute("SELECT 'd'")
assert a.fetchone() == ("a",) and d.fetchone() == ("d",)
assert c.execute("SELECT 3").fetchone() == (3,)
c.close()
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_drivers() {
    support::python();
    let server = tokio::task::spawn_blocking(support::mariadb).await.unwrap();

    let relay = Relay::start("mysql", server.port, support::no_rules()).await;
    run_python(MYSQL_ROUND_TRIPS, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    let executed = s
        .requests
        .iter()
        .filter(|r| {
            r.fields
                .get("query")
                .is_some_and(|q| q.contains("WHERE b > ?"))
        })
        .count();
    assert!(
        executed >= 3,
        "prepare and two executes by statement id: {executed}"
    );

    // The first statement of `f` by id passes (its prepare); the next (the
    // execute) gets a deadlock error.
    let seen = Arc::new(AtomicUsize::new(0));
    let base = rules(
        "mysql",
        vec![(vec![("query", "INSERT INTO f*")], error("disk full", None))],
    );
    let rule: Rules = Arc::new(move |r: &Request| {
        if r.fields
            .get("query")
            .is_some_and(|q| q == "SELECT id FROM f WHERE id = ?")
            && seen.fetch_add(1, Ordering::SeqCst) == 1
        {
            return Some(error("Deadlock found", Some(1213)));
        }
        base(r)
    });
    let relay = Relay::start("mysql", server.port, rule).await;
    run_python(MYSQL_INJECTED, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert!(s.answered >= 3, "answered {}", s.answered);
}

const MYSQL_ROUND_TRIPS: &str = r#"
import os, tempfile, pymysql, mysql.connector
from pymysql.constants import CLIENT
kw = dict(host="127.0.0.1", port=int(os.environ["PORT"]), user="app", password="apppw", database="app")
c = pymysql.connect(local_infile=True, client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True, **kw)
cur = c.cursor()
cur.execute("DROP TABLE IF EXISTS t")
cur.execute("CREATE TABLE t (a VARCHAR(10) NULL, b INT)")
cur.executemany("INSERT INTO t VALUES (%s, %s)", [(None, 1), ("", 2), ("x", 3)])
cur.execute("SELECT a, b FROM t ORDER BY b")
assert cur.fetchall() == ((None, 1), ("", 2), ("x", 3))
cur.execute("SELECT NULL, 1")
assert cur.fetchall() == ((None, 1),)
cur.execute("SELECT '', ''")
assert cur.fetchall() == (("", ""),)
cur.execute("SELECT NULL")
assert cur.fetchall() == ((None,),)
cur.execute("SELECT seq, NULL FROM seq_1_to_3000")
assert len(cur.fetchall()) == 3000
cur.execute("SELECT 1; SELECT NULL, 2; UPDATE t SET b = b WHERE b = 0")
assert cur.fetchall() == ((1,),)
assert cur.nextset() and cur.fetchall() == ((None, 2),)
assert cur.nextset() and cur.rowcount == 0
with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
    f.write("y\t4\nz\t5\n")
cur.execute("LOAD DATA LOCAL INFILE %s INTO TABLE t", (f.name,))
os.unlink(f.name)
cur.execute("SELECT count(*) FROM t")
assert cur.fetchone() == (5,)
c.ping()
c.select_db("app")
c.begin()
cur.execute("INSERT INTO t VALUES ('tx', 6)")
c.commit()
c.close()

m = mysql.connector.connect(use_pure=True, **kw)
pc = m.cursor(prepared=True)
pc.execute("SELECT a, b FROM t WHERE b > ? ORDER BY b", (0,))
rows = pc.fetchall()
assert [r[1] for r in rows] == [1, 2, 3, 4, 5, 6], rows
assert rows[0][0] is None and rows[1][0] in ("", b"", bytearray()), rows
pc.execute("SELECT a, b FROM t WHERE b > ? ORDER BY b", (4,))
assert [r[1] for r in pc.fetchall()] == [5, 6]
pc.execute("SELECT a, b FROM t WHERE b > ? ORDER BY b", (5,))
assert [r[1] for r in pc.fetchall()] == [6]
pc.close()
m.close()
print("OK")
"#;

const MYSQL_INJECTED: &str = r#"
import os, pymysql, mysql.connector
kw = dict(host="127.0.0.1", port=int(os.environ["PORT"]), user="app", password="apppw", database="app")
c = pymysql.connect(autocommit=True, **kw)
cur = c.cursor()
cur.execute("DROP TABLE IF EXISTS f")
cur.execute("CREATE TABLE f (id INT)")

def expect(fn, code, text):
    try:
        fn()
    except (pymysql.err.OperationalError, pymysql.err.InternalError, mysql.connector.Error) as e:
        got = e.args[0] if isinstance(e, pymysql.err.Error) else e.errno
        assert got == code and text in str(e), (got, str(e))
        return
    raise SystemExit("no injected error")

expect(lambda: cur.execute("INSERT INTO f VALUES (1)"), 1105, "disk full")
cur.execute("SELECT 1")
assert cur.fetchone() == (1,)
c.begin()
cur.execute("SELECT 1")
expect(lambda: cur.execute("INSERT INTO f VALUES (2)"), 1105, "disk full")
c.rollback()
cur.execute("SELECT count(*) FROM f")
assert cur.fetchone() == (0,)
c.close()

m = mysql.connector.connect(use_pure=True, **kw)
pc = m.cursor(prepared=True)
expect(lambda: pc.execute("SELECT id FROM f WHERE id = ?", (1,)), 1213, "Deadlock")
pc.execute("SELECT id FROM f WHERE id = ?", (1,))
assert pc.fetchall() == []
m.close()
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_drivers() {
    support::python();
    let server = tokio::task::spawn_blocking(support::redis).await.unwrap();

    let relay = Relay::start("redis", server.port, support::no_rules()).await;
    run_python(REDIS_ROUND_TRIPS, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert!(s.requests.len() > 400, "{}", s.requests.len());

    let relay = Relay::start(
        "redis",
        server.port,
        rules(
            "redis",
            vec![
                (
                    vec![("key", "bad:*")],
                    error(
                        "READONLY You can't write against a read only replica.",
                        None,
                    ),
                ),
                (
                    vec![("command", "get"), ("key", "cache:*")],
                    value(Some("stale")),
                ),
                (vec![("command", "GET"), ("key", "nil:*")], value(None)),
            ],
        ),
    )
    .await;
    run_python(REDIS_INJECTED, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert!(s.answered >= 12, "answered {}", s.answered);
}

const REDIS_ROUND_TRIPS: &str = r#"
import os, redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=int(os.environ["PORT"]), protocol=proto, decode_responses=True)
    r.flushall()
    assert r.set("user:1", "alice") and r.get("user:1") == "alice"
    r.hset("h", mapping={"a": "1", "b": "2"})
    assert r.hgetall("h") == {"a": "1", "b": "2"}
    r.sadd("s", "x", "y")
    assert r.smembers("s") == {"x", "y"}
    r.zadd("z", {"m": 1.5})
    assert r.zscore("z", "m") == 1.5
    assert r.get("missing") is None
    big = "x" * 300000
    r.set("big", big)
    assert r.get("big") == big
    p = r.pipeline(transaction=False)
    for i in range(100):
        p.set(f"k{i}", i)
    for i in range(100):
        p.get(f"k{i}")
    res = p.execute()
    assert res[100:] == [str(i) for i in range(100)], res[100:]
    with r.pipeline() as p:
        p.incr("n").incr("n").get("n")
        assert p.execute() == [1, 2, "2"]
    assert r.execute_command("PING") in (True, "PONG")
    r.close()
print("OK")
"#;

const REDIS_INJECTED: &str = r#"
import os, redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=int(os.environ["PORT"]), protocol=proto, decode_responses=True)
    try:
        r.set("bad:1", "x")
        raise SystemExit("no injected error")
    except redis.exceptions.ReadOnlyError:
        pass
    assert r.get("cache:1") == "stale"
    assert r.get("nil:1") is None
    r.set("a", "1")
    p = r.pipeline(transaction=False)
    p.set("b", "2").get("bad:2").get("a").get("cache:9").get("nil:9").get("b")
    res = p.execute(raise_on_error=False)
    assert res[0] is True and isinstance(res[1], redis.exceptions.ResponseError), res
    assert res[2:] == ["1", "stale", None, "2"], res
    r.close()
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_drivers() {
    support::python();
    let server = tokio::task::spawn_blocking(support::memcached)
        .await
        .unwrap();

    let relay = Relay::start("memcached", server.port, support::no_rules()).await;
    run_python(MEMCACHED_ROUND_TRIPS, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);

    let relay = Relay::start(
        "memcached",
        server.port,
        rules(
            "memcached",
            vec![
                (vec![("key", "bad:*")], error("out of memory", None)),
                (
                    vec![("command", "get"), ("key", "cache:*")],
                    value(Some("stale")),
                ),
                (vec![("command", "get"), ("key", "miss:*")], value(None)),
            ],
        ),
    )
    .await;
    run_python(MEMCACHED_INJECTED, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert!(s.answered >= 5, "answered {}", s.answered);
}

const MEMCACHED_ROUND_TRIPS: &str = r#"
import os, socket
from pymemcache.client.base import Client
port = int(os.environ["PORT"])
c = Client(("127.0.0.1", port))
c.set("a", "1")  # noreply by default: no response
assert c.get("a") == b"1"
assert c.set("b", "2", noreply=False) is True
assert c.get_many(["a", "b", "zz"]) == {"a": b"1", "b": b"2"}
v, cas = c.gets("a")
assert v == b"1" and c.cas("a", "3", cas, noreply=False) is True
assert c.get("a") == b"3"
assert c.incr("n", 1) is None
c.set("n", "5", noreply=False)
assert c.incr("n", 2, noreply=False) == 7
assert c.delete("b", noreply=False) is True
assert c.touch("a", 100, noreply=False) is True
assert b"pid" in c.stats()
c.version()
big = b"v" * 500000
c.set("big", big, noreply=False)
assert c.get("big") == big
c.close()
# Meta commands with a quiet run closed by mn, sent in one write.
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"ms m 2\r\nhi\r\nmg m v q\r\nmg nope v q\r\nmn\r\nmg m v\r\n")
want = b"HD\r\nVA 2\r\nhi\r\nMN\r\nVA 2\r\nhi\r\n"
got = b""
while len(got) < len(want):
    got += s.recv(4096)
assert got == want, got
s.close()
print("OK")
"#;

const MEMCACHED_INJECTED: &str = r#"
import os, socket
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError
port = int(os.environ["PORT"])
c = Client(("127.0.0.1", port))
try:
    c.get("bad:1")
    raise SystemExit("no injected error")
except MemcacheServerError as e:
    assert "out of memory" in str(e), e
assert c.get("cache:1") == b"stale"
assert c.get("miss:1") is None
assert c.get_many(["cache:a", "cache:b"]) == {"cache:a": b"stale", "cache:b": b"stale"}
assert c.set("x", "1", noreply=False) is True
assert c.get("x") == b"1"
c.close()
# Pipelined: the injected error comes back between the real responses.
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"set a 0 0 1\r\nx\r\nget bad:1\r\nget a\r\nget cache:2\r\n")
want = b"STORED\r\nSERVER_ERROR out of memory\r\nVALUE a 0 1\r\nx\r\nEND\r\nVALUE cache:2 0 5\r\nstale\r\nEND\r\n"
got = b""
while len(got) < len(want):
    chunk = s.recv(4096)
    assert chunk, got
    got += chunk
assert got == want, got
s.close()
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_clients() {
    support::python();
    let server = tokio::task::spawn_blocking(support::http_server)
        .await
        .unwrap();

    let relay = Relay::start("http", server.port, support::no_rules()).await;
    run_python(HTTP_ROUND_TRIPS, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);

    let relay = Relay::start(
        "http",
        server.port,
        rules(
            "http",
            vec![
                (
                    vec![("method", "post"), ("path", "/orders")],
                    Answer::Response {
                        status: Some(429),
                        body: Some("{\"error\":\"rate_limited\"}".into()),
                        value: None,
                    },
                ),
                (vec![("path", "/boom/*")], error("upstream down", Some(503))),
            ],
        ),
    )
    .await;
    run_python(HTTP_INJECTED, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert!(s.answered >= 4, "answered {}", s.answered);
}

const HTTP_ROUND_TRIPS: &str = r#"
import os, socket, subprocess, time, http.client
port = int(os.environ["PORT"])
h = http.client.HTTPConnection("127.0.0.1", port)
def req(method, path, body=None, headers={}, **kw):
    h.request(method, path, body=body, headers=headers, **kw)
    r = h.getresponse()
    return r.status, r.read()
assert req("GET", "/a?x=1") == (200, b"GET /a?x=1")
assert req("POST", "/orders", body=b"hello") == (200, b"POST /orders 5")
assert req("HEAD", "/h") == (200, b"")
assert req("GET", "/chunked/long-enough-body") == (200, b"GET /chunked/long-enough-body")
assert req("PUT", "/up", body=iter([b"abc", b"defg"]), encode_chunked=True) == (200, b"PUT /up 7")
assert req("GET", "/again") == (200, b"GET /again")
h.close()
print("keep-alive done", flush=True)
# Expect: 100-continue: curl waits for 100 Continue before the body.
start = time.time()
out = subprocess.run(["curl", "-s", "--expect100-timeout", "20", "-H", "Expect: 100-continue",
                      "--data-binary", "@-", f"http://127.0.0.1:{port}/upload"],
                     input=b"z" * 5000, capture_output=True, check=True).stdout
assert out == b"POST /upload 5000", out
assert time.time() - start < 10, "Expect: 100-continue stalled"
print("expect done", flush=True)
# Pipelined on one connection, in one write.
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
assert got.count(b"HTTP/1.1 200") == 3 and got.index(b"GET /p1") < got.index(b"POST /p2 2") < got.index(b"GET /p3"), got
s.close()
print("OK")
"#;

const HTTP_INJECTED: &str = r#"
import os, socket, subprocess, json, http.client
port = int(os.environ["PORT"])
h = http.client.HTTPConnection("127.0.0.1", port)
h.request("POST", "/orders", body=b"{}")
r = h.getresponse()
assert r.status == 429 and json.loads(r.read()) == {"error": "rate_limited"}
h.request("GET", "/orders")
r = h.getresponse()
assert (r.status, r.read()) == (200, b"GET /orders")
h.request("GET", "/boom/1")
r = h.getresponse()
assert (r.status, r.read()) == (503, b"upstream down")
h.request("GET", "/fine")
r = h.getresponse()
assert (r.status, r.read()) == (200, b"GET /fine")
h.close()
# Pipelined: the injected response sits between the real ones.
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
i1, i2, i3 = got.index(b"GET /p1"), got.index(b"429 Too Many Requests"), got.index(b"GET /p3")
assert i1 < i2 < i3, got
s.close()
# Expect: 100-continue answered in the server's place.
out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--expect100-timeout", "20",
                      "-H", "Expect: 100-continue", "--data-binary", "@-", f"http://127.0.0.1:{port}/orders"],
                     input=b"z" * 5000, capture_output=True, check=True, timeout=15).stdout
assert out == b"429", out
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_drivers() {
    support::python();
    let server = tokio::task::spawn_blocking(support::nx27017).await.unwrap();

    let relay = Relay::start("mongodb", server.port, support::no_rules()).await;
    run_python(
        MONGO_ROUND_TRIPS,
        &port_env(&relay),
        Duration::from_secs(60),
    )
    .await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    let methods: Vec<&str> = s
        .requests
        .iter()
        .filter_map(|r| r.fields.get("method").map(String::as_str))
        .collect();
    for m in ["insert", "find", "getMore", "update", "delete", "aggregate"] {
        assert!(methods.contains(&m), "{m} in {methods:?}");
    }
    assert!(
        s.requests
            .iter()
            .any(|r| r.len > faultbox_protocols::MAX_MESSAGE
                && r.fields.get("key").map(String::as_str) == Some("big")),
        "a batch over MAX_MESSAGE is matched"
    );

    let relay = Relay::start(
        "mongodb",
        server.port,
        rules(
            "mongodb",
            vec![
                (
                    vec![("method", "find"), ("key", "bad*")],
                    error("disk full", Some(11000)),
                ),
                (vec![("method", "aggregate")], error("slow down", Some(262))),
            ],
        ),
    )
    .await;
    run_python(MONGO_INJECTED, &port_env(&relay), LIMIT).await;
    let s = relay.settle().await;
    assert!(s.opaque.is_empty(), "{:?}", s.opaque);
    assert_eq!(s.answered, 3, "{s:?}");
}

const MONGO_ROUND_TRIPS: &str = r#"
import os, pymongo
c = pymongo.MongoClient(host="127.0.0.1", port=int(os.environ["PORT"]), directConnection=True)
db = c.shop
db.orders.drop()
db.orders.insert_one({"_id": 1, "n": 1, "tags": ["a", "b"], "price": 2.5})
db.orders.insert_many([{"_id": i, "n": i} for i in range(2, 200)])
got = list(db.orders.find({"n": {"$gte": 2}}, batch_size=10).sort("n", 1))
assert [d["n"] for d in got] == list(range(2, 200)), len(got)
assert db.orders.find_one({"_id": 1}) == {"_id": 1, "n": 1, "tags": ["a", "b"], "price": 2.5}
assert db.orders.update_many({"n": {"$lt": 10}}, {"$inc": {"n": 1000}}).modified_count == 9
assert db.orders.count_documents({"n": {"$gte": 1000}}) == 9
assert db.orders.delete_many({"n": {"$gte": 1000}}).deleted_count == 9
# No unacknowledged (w: 0, moreToCome) writes: nx-27017 replies to them, which
# desynchronises pymongo without any relay (the framer's unit tests cover them).
# A batch over 16 MiB: one OP_MSG with a document sequence.
pad = "x" * (1 << 20)
db.big.insert_many([{"i": i, "pad": pad} for i in range(20)])
assert db.big.count_documents({}) == 20
assert db.command("ping")["ok"] == 1
c.close()
print("OK")
"#;

const MONGO_INJECTED: &str = r#"
import os, pymongo
from pymongo.errors import OperationFailure, ExecutionTimeout
c = pymongo.MongoClient(host="127.0.0.1", port=int(os.environ["PORT"]), directConnection=True,
                        retryReads=False, maxPoolSize=1)
db = c.shop
db.bad.insert_one({"a": 1})
try:
    list(db.bad.find({}))
    raise SystemExit("no injected error")
except OperationFailure as e:
    assert e.code == 11000 and e.details["errmsg"] == "disk full", e.details
    assert e.details["codeName"] == "DuplicateKey", e.details
# The connection stays usable, replies in their place.
assert db.good.insert_one({"a": 1}).acknowledged
assert len(list(db.good.find({}))) == 1
try:
    db.good.count_documents({})
    raise SystemExit("no injected error")
except ExecutionTimeout:
    raise SystemExit("262 is not MaxTimeMSExpired")
except OperationFailure as e:
    assert e.code == 262 and e.details["codeName"] == "ExceededTimeLimit", e.details
try:
    next(db.bad2.find({}))
    raise SystemExit("no injected error")
except OperationFailure as e:
    assert e.code == 11000
assert db.good.find_one({}, {"_id": 0}) == {"a": 1}
c.close()
print("OK")
"#;
