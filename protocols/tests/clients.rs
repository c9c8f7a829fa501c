//! The step clients and readiness probes against real servers: typed rows,
//! rows affected, the servers' own errors (SQLSTATE, Redis and memcached error
//! lines, a refused login), errors a relay injects, and timeouts that return
//! instead of hanging.
//!
//! Needs root (servers run as their system users) and the packages that
//! `scripts/servers.sh` installs; the tests run that script themselves.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use faultbox_protocols::client::{self, Credentials, Operation, Outcome, SqlArg};
use faultbox_protocols::Answer;
use serde_json::{json, Value};
use support::{Relay, Rules};

const STEP: Duration = Duration::from_secs(20);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn login(user: &str, password: &str, database: &str) -> Credentials {
    Credentials {
        user: Some(user.into()),
        password: Some(password.into()),
        database: Some(database.into()),
    }
}

fn query(sql: &str, args: Vec<SqlArg>) -> Operation {
    Operation::Query {
        sql: sql.into(),
        args,
    }
}

fn exec(sql: &str, args: Vec<SqlArg>) -> Operation {
    Operation::Exec {
        sql: sql.into(),
        args,
    }
}

fn redis(command: &[&str]) -> Operation {
    Operation::Redis {
        command: command.iter().map(|s| s.to_string()).collect(),
        bare: false,
    }
}

/// The step's `.data`, checking it succeeded.
fn data(o: &Outcome) -> Value {
    assert!(o.ok, "step failed: {}", o.error);
    assert!(o.error.is_empty());
    serde_json::from_str(&o.body).unwrap_or_else(|e| panic!("{e}: {}", o.body))
}

fn failed(o: &Outcome) -> &str {
    assert!(!o.ok, "step passed: {}", o.body);
    assert!(o.body.is_empty());
    &o.error
}

/// A listener that accepts and never answers: a server that hangs.
async fn silent() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

async fn times_out(protocol: &str, addr: SocketAddr, creds: &Credentials, op: &Operation) {
    let start = Instant::now();
    let o = client::run(protocol, addr, creds, op, Duration::from_millis(300)).await;
    assert!(
        failed(&o).contains("no answer within 300ms"),
        "{protocol}: {o:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{protocol}: took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_steps() {
    support::python();
    let server = tokio::task::spawn_blocking(|| support::postgres(false))
        .await
        .unwrap();
    let addr = local(server.port);
    let creds = login("postgres", support::PG_PASSWORD, "postgres");
    let run = |op: Operation| {
        let creds = creds.clone();
        async move { client::run("postgres", addr, &creds, &op, STEP).await }
    };

    let o = run(exec(
        "DROP TABLE IF EXISTS t; CREATE TABLE t (id int, big bigint, small smallint, \
         name text, ok bool, price numeric(10, 2), huge numeric, f real, d float8, j jsonb, \
         born date, at timestamptz, naive timestamp, tags text[], grid int[], u uuid, b bytea, \
         span interval)",
        vec![],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 0}));

    let o = run(exec(
        "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16, $17, $18)",
        vec![
            SqlArg::Int(1),
            SqlArg::Int(9_007_199_254_740_993),
            SqlArg::Int(-7),
            SqlArg::Text("alice".into()),
            SqlArg::Bool(true),
            SqlArg::Text("12.50".into()),
            SqlArg::Text("123456789012345678901234567890.5".into()),
            SqlArg::Float(0.1),
            SqlArg::Float(2.5),
            SqlArg::Text(r#"{"a": [1, "x"]}"#.into()),
            SqlArg::Text("2024-03-01".into()),
            SqlArg::Text("2024-03-01 12:34:56.5+02".into()),
            SqlArg::Text("2024-03-01 00:00:00".into()),
            SqlArg::Text("{a,NULL,c}".into()),
            SqlArg::Text("{{1,2},{3,4}}".into()),
            SqlArg::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            SqlArg::Text("\\xdeadbeef".into()),
            SqlArg::Text("1 day 02:00:00".into()),
        ],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 1}));

    // Several statements in one exec: their counts add up.
    let o = run(exec(
        "INSERT INTO t (id) VALUES (2); INSERT INTO t (id) VALUES (3), (4)",
        vec![],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 3}));
    let o = run(exec(
        "UPDATE t SET name = $1 WHERE id > $2",
        vec![SqlArg::Text("bob".into()), SqlArg::Int(2)],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 2}));

    let o = run(query("SELECT * FROM t WHERE id = $1", vec![SqlArg::Int(1)])).await;
    let mut row = data(&o)[0].clone();
    // No decoder for intervals: their wire bytes, as hex.
    let span = row.as_object_mut().unwrap().remove("span").unwrap();
    assert!(span.as_str().unwrap().starts_with("\\x"), "{span}");
    assert_eq!(
        row,
        json!({
            "id": 1, "big": 9_007_199_254_740_993_i64, "small": -7, "name": "alice", "ok": true,
            "price": 12.5, "huge": "123456789012345678901234567890.5", "f": 0.1, "d": 2.5,
            "j": {"a": [1, "x"]}, "born": "2024-03-01", "at": "2024-03-01 10:34:56.5+00",
            "naive": "2024-03-01 00:00:00", "tags": ["a", null, "c"], "grid": [[1, 2], [3, 4]],
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "b": "\\xdeadbeef",
        })
    );
    // The body keeps the columns in the statement's order.
    assert!(o
        .body
        .starts_with(r#"[{"id":1,"big":9007199254740993,"small":-7"#));
    let o = run(query(
        "SELECT id, name, count(*) OVER () AS n, sum(price) AS s FROM t WHERE id IN (1, 2) \
         GROUP BY id, name ORDER BY id",
        vec![],
    ))
    .await;
    assert_eq!(
        data(&o),
        json!([{"id": 1, "name": "alice", "n": 2, "s": 12.5}, {"id": 2, "name": null, "n": 2, "s": null}])
    );
    let o = run(query("SELECT count(*) AS n FROM t", vec![])).await;
    assert_eq!(data(&o), json!([{"n": 4}]));
    let o = run(query("SELECT span::text AS s FROM t WHERE id = 1", vec![])).await;
    assert_eq!(data(&o), json!([{"s": "1 day 02:00:00"}]));
    let o = run(query("SELECT 1 WHERE false", vec![])).await;
    assert_eq!(data(&o), json!([]));

    // The server's errors, with their SQLSTATE.
    let o = run(query("SELECT * FROM nope", vec![])).await;
    assert_eq!(failed(&o), "42P01: relation \"nope\" does not exist");
    let o = run(exec("INSERT INTO t (id) VALUES ('x')", vec![])).await;
    assert!(failed(&o).starts_with("22P02: "), "{o:?}");
    let o = client::run(
        "postgres",
        addr,
        &login("postgres", "wrong", "postgres"),
        &query("SELECT 1", vec![]),
        STEP,
    )
    .await;
    assert_eq!(
        failed(&o),
        "28P01: password authentication failed for user \"postgres\""
    );

    // Readiness: a login and a round trip.
    client::ready("postgres", addr, &creds, STEP).await.unwrap();
    let e = client::ready(
        "postgres",
        addr,
        &login("postgres", "wrong", "postgres"),
        STEP,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().starts_with("28P01"), "{e}");

    // A statement slower than the step's time: the step returns at its timeout.
    times_out(
        "postgres",
        addr,
        &creds,
        &query("SELECT pg_sleep(5)", vec![]),
    )
    .await;
    let (_l, hung) = silent().await;
    times_out("postgres", hung, &creds, &query("SELECT 1", vec![])).await;
    let refused = local(support::free_port());
    let o = run_at("postgres", refused, &creds, &query("SELECT 1", vec![])).await;
    assert!(failed(&o).starts_with("connecting to 127.0.0.1:"), "{o:?}");

    // Through a relay that answers INSERTs with an error: the step sees it.
    let relay = Relay::start("postgres", server.port, insert_fails("postgres")).await;
    let o = run_at(
        "postgres",
        local(relay.port),
        &creds,
        &exec("INSERT INTO t (id) VALUES (9)", vec![]),
    )
    .await;
    assert_eq!(failed(&o), "53100: disk full");
    let o = run_at(
        "postgres",
        local(relay.port),
        &creds,
        &query("SELECT count(*) AS n FROM t", vec![]),
    )
    .await;
    assert_eq!(data(&o), json!([{"n": 4}]));
}

async fn run_at(protocol: &str, addr: SocketAddr, creds: &Credentials, op: &Operation) -> Outcome {
    client::run(protocol, addr, creds, op, STEP).await
}

fn insert_fails(protocol: &'static str) -> Rules {
    std::sync::Arc::new(move |r: &faultbox_protocols::Request| {
        r.fields
            .get("query")
            .filter(|q| faultbox_protocols::rules::matches(protocol, "query", "INSERT*", q))
            .map(|_| Answer::Error {
                message: Some("disk full".into()),
                status: Some(faultbox_protocols::Code::Number(
                    if protocol == "postgres" { 53100 } else { 1021 },
                )),
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_steps() {
    support::python();
    let server = tokio::task::spawn_blocking(support::mariadb).await.unwrap();
    let addr = local(server.port);
    let creds = login("app", "apppw", "app");
    let run = |op: Operation| {
        let creds = creds.clone();
        async move { client::run("mysql", addr, &creds, &op, STEP).await }
    };

    let o = run(exec(
        "DROP TABLE IF EXISTS t; CREATE TABLE t (id INT, big BIGINT UNSIGNED, name VARCHAR(20), \
         ok TINYINT(1), price DECIMAL(10, 2), huge DECIMAL(40, 1), f FLOAT, d DOUBLE, \
         born DATE, at DATETIME(6), t TIME, bits BIT(8), b VARBINARY(8))",
        vec![],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 0}));
    let o = run(exec(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            SqlArg::Int(1),
            SqlArg::Text("18446744073709551615".into()),
            SqlArg::Text("alice".into()),
            SqlArg::Bool(true),
            SqlArg::Text("12.50".into()),
            SqlArg::Text("123456789012345678901234567890.5".into()),
            SqlArg::Float(0.1),
            SqlArg::Float(2.5),
            SqlArg::Text("2024-03-01".into()),
            SqlArg::Text("2024-03-01 12:34:56.5".into()),
            SqlArg::Text("-26:00:01".into()),
            SqlArg::Int(5),
            SqlArg::Null,
        ],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 1}));
    let o = run(exec(
        "INSERT INTO t (id, b) VALUES (2, x'ff00'); INSERT INTO t (id) VALUES (3), (4)",
        vec![],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 3}));
    let o = run(exec(
        "UPDATE t SET name = ? WHERE id > ?",
        vec![SqlArg::Text("bob".into()), SqlArg::Int(2)],
    ))
    .await;
    assert_eq!(data(&o), json!({"rows_affected": 2}));

    let row = json!([{
        "id": 1, "big": 18_446_744_073_709_551_615_u64, "name": "alice", "ok": 1,
        "price": 12.5, "huge": "123456789012345678901234567890.5", "f": 0.1, "d": 2.5,
        "born": "2024-03-01", "at": "2024-03-01 12:34:56.500000", "t": "-26:00:01",
        "bits": 5, "b": null,
    }]);
    // The text protocol (numbers arrive as strings) and the binary one agree.
    let o = run(query("SELECT * FROM t WHERE id = 1", vec![])).await;
    assert_eq!(data(&o), row);
    let o = run(query("SELECT * FROM t WHERE id = ?", vec![SqlArg::Int(1)])).await;
    assert_eq!(data(&o), row);
    assert!(o.body.starts_with(r#"[{"id":1,"big":18446744073709551615"#));
    let o = run(query(
        "SELECT id, b, name FROM t WHERE id IN (2, 3) ORDER BY id",
        vec![],
    ))
    .await;
    assert_eq!(
        data(&o),
        json!([{"id": 2, "b": "0xff00", "name": null}, {"id": 3, "b": null, "name": "bob"}])
    );
    let o = run(query(
        "SELECT count(*) AS n, sum(price) AS s FROM t",
        vec![],
    ))
    .await;
    assert_eq!(data(&o), json!([{"n": 4, "s": 12.5}]));
    let o = run(query("SET @x = 5; SELECT @x + 1 AS y", vec![])).await;
    assert_eq!(data(&o), json!([{"y": 6}]));

    let o = run(query("SELECT * FROM nope", vec![])).await;
    assert_eq!(failed(&o), "1146 (42S02): Table 'app.nope' doesn't exist");
    let o = client::run(
        "mysql",
        addr,
        &login("app", "wrong", "app"),
        &query("SELECT 1", vec![]),
        STEP,
    )
    .await;
    assert!(
        failed(&o).starts_with("1045 (28000): Access denied for user 'app'@"),
        "{o:?}"
    );

    client::ready("mysql", addr, &creds, STEP).await.unwrap();
    assert!(
        client::ready("mysql", addr, &login("app", "wrong", "app"), STEP)
            .await
            .is_err()
    );
    times_out("mysql", addr, &creds, &query("SELECT SLEEP(5)", vec![])).await;
    let (_l, hung) = silent().await;
    times_out("mysql", hung, &creds, &query("SELECT 1", vec![])).await;

    let relay = Relay::start("mysql", server.port, insert_fails("mysql")).await;
    let o = run_at(
        "mysql",
        local(relay.port),
        &creds,
        &exec("INSERT INTO t (id) VALUES (9)", vec![]),
    )
    .await;
    assert!(failed(&o).starts_with("1021 ("), "{o:?}");
    assert!(failed(&o).ends_with("disk full"), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_steps() {
    support::python();
    let server = tokio::task::spawn_blocking(|| support::redis_with(&["--requirepass", "rpw"]))
        .await
        .unwrap();
    let addr = local(server.port);
    let creds = Credentials {
        password: Some("rpw".into()),
        ..Credentials::default()
    };
    let run = |op: Operation| {
        let creds = creds.clone();
        async move { client::run("redis", addr, &creds, &op, STEP).await }
    };
    let value = |o: &Outcome| data(o)["value"].clone();

    assert_eq!(value(&run(redis(&["PING"])).await), json!("PONG"));
    assert_eq!(
        value(&run(redis(&["SET", "user:1", "alice"])).await),
        json!("OK")
    );
    assert_eq!(
        data(&run(redis(&["GET", "user:1"])).await),
        json!({"value": "alice"})
    );
    assert_eq!(
        data(&run(redis(&["GET", "user:2"])).await),
        json!({"value": null})
    );
    assert_eq!(value(&run(redis(&["INCR", "n"])).await), json!(1));
    assert_eq!(value(&run(redis(&["INCR", "n"])).await), json!(2));
    assert_eq!(
        value(&run(redis(&["RPUSH", "l", "a", "b"])).await),
        json!(2)
    );
    assert_eq!(value(&run(redis(&["LPUSH", "l", "z"])).await), json!(3));
    assert_eq!(
        value(&run(redis(&["LRANGE", "l", "0", "-1"])).await),
        json!(["z", "a", "b"])
    );
    let keys = Operation::Redis {
        command: vec!["KEYS".into(), "*".into()],
        bare: true,
    };
    assert_eq!(data(&run(keys).await), json!(["l", "n", "user:1"]));
    assert_eq!(value(&run(redis(&["HSET", "h", "f", "v"])).await), json!(1));
    assert_eq!(
        value(&run(redis(&["HGETALL", "h"])).await),
        json!(["f", "v"])
    );
    assert_eq!(
        value(&run(redis(&["DEL", "user:1", "n", "missing"])).await),
        json!(2)
    );
    assert_eq!(
        value(&run(redis(&["SET", "bin", "x", "EX", "100"])).await),
        json!("OK")
    );
    assert_eq!(value(&run(redis(&["TTL", "bin"])).await), json!(100));

    // The server's errors, as it writes them.
    assert_eq!(
        failed(&run(redis(&["INCR", "l"])).await),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    assert!(failed(&run(redis(&["NOSUCH"])).await).starts_with("ERR unknown command 'NOSUCH'"));
    let o = client::run(
        "redis",
        addr,
        &Credentials::default(),
        &redis(&["GET", "l"]),
        STEP,
    )
    .await;
    assert_eq!(failed(&o), "NOAUTH Authentication required.");
    let wrong = Credentials {
        password: Some("nope".into()),
        ..Credentials::default()
    };
    let o = client::run("redis", addr, &wrong, &redis(&["GET", "l"]), STEP).await;
    assert!(
        failed(&o).starts_with("WRONGPASS invalid username-password pair"),
        "{o:?}"
    );

    client::ready("redis", addr, &creds, STEP).await.unwrap();
    assert!(client::ready("redis", addr, &wrong, STEP).await.is_err());
    times_out("redis", addr, &creds, &redis(&["BLPOP", "empty", "5"])).await;
    let (_l, hung) = silent().await;
    times_out("redis", hung, &creds, &redis(&["PING"])).await;

    // A relay answering GET with LOADING, and delaying SET past the crate's own
    // 500 ms default: the step sees the error, and waits for the delayed answer.
    let rules: Rules = std::sync::Arc::new(|r: &faultbox_protocols::Request| {
        (r.fields.get("command").map(String::as_str) == Some("GET")).then(|| Answer::Error {
            message: Some("LOADING".into()),
            status: None,
        })
    });
    let relay = Relay::start("redis", server.port, rules).await;
    let o = run_at("redis", local(relay.port), &creds, &redis(&["GET", "l"])).await;
    assert_eq!(failed(&o), "LOADING");
    let o = run_at("redis", local(relay.port), &creds, &redis(&["LLEN", "l"])).await;
    assert_eq!(data(&o), json!({"value": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_steps() {
    support::python();
    let server = tokio::task::spawn_blocking(support::memcached)
        .await
        .unwrap();
    let addr = local(server.port);
    let none = Credentials::default();
    let run = |op: Operation| async move {
        client::run("memcached", addr, &Credentials::default(), &op, STEP).await
    };
    let set = |key: &str, value: &str, ttl: u32| Operation::MemcachedSet {
        key: key.into(),
        value: value.into(),
        ttl,
    };
    let get = |key: &str| Operation::MemcachedGet { key: key.into() };
    let delete = |key: &str| Operation::MemcachedDelete { key: key.into() };

    assert_eq!(
        data(&run(set("session:1", "alice", 0)).await),
        json!({"value": "STORED"})
    );
    assert_eq!(
        data(&run(get("session:1")).await),
        json!({"value": "alice"})
    );
    assert_eq!(
        data(&run(set("multi", "a b\r\nc", 60)).await),
        json!({"value": "STORED"})
    );
    assert_eq!(data(&run(get("multi")).await), json!({"value": "a b\r\nc"}));
    assert_eq!(data(&run(get("missing")).await), json!({"value": null}));
    assert_eq!(
        data(&run(delete("session:1")).await),
        json!({"value": "DELETED"})
    );
    assert_eq!(
        data(&run(delete("session:1")).await),
        json!({"value": "NOT_FOUND"})
    );
    assert_eq!(data(&run(get("session:1")).await), json!({"value": null}));
    // A key the server would read as another command is refused before sending.
    assert!(failed(&run(get("two words")).await).starts_with("memcached keys are"));
    let big = "x".repeat(2 << 20);
    assert!(
        failed(&run(set("big", &big, 0)).await).starts_with("SERVER_ERROR"),
        "a value past the item size limit"
    );

    client::ready("memcached", addr, &none, STEP).await.unwrap();
    let (_l, hung) = silent().await;
    times_out("memcached", hung, &none, &get("k")).await;
    assert!(
        client::ready("memcached", hung, &none, Duration::from_millis(200))
            .await
            .is_err()
    );

    // An error a relay injects reaches the step.
    let rules: Rules = std::sync::Arc::new(|r: &faultbox_protocols::Request| {
        (r.fields.get("command").map(String::as_str) == Some("set")).then(|| Answer::Error {
            message: Some("out of memory".into()),
            status: None,
        })
    });
    let relay = Relay::start("memcached", server.port, rules).await;
    let o = run_at("memcached", local(relay.port), &none, &set("k", "v", 0)).await;
    assert_eq!(failed(&o), "SERVER_ERROR out of memory");
    let o = run_at("memcached", local(relay.port), &none, &get("multi")).await;
    assert_eq!(data(&o), json!({"value": "a b\r\nc"}));
}

fn publish(exchange: &str, key: &str, body: &str, declare: bool) -> Operation {
    Operation::AmqpPublish {
        exchange: exchange.into(),
        routing_key: key.into(),
        body: body.into(),
        declare,
        durable: false,
    }
}

fn amqp_get(queue: &str, declare: bool) -> Operation {
    Operation::AmqpGet {
        queue: queue.into(),
        declare,
        durable: false,
    }
}

/// A peer that answers the protocol header with `bytes`, then closes.
async fn says(bytes: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let mut head = [0u8; 8];
            let _ = s.read_exact(&mut head).await;
            let _ = s.write_all(bytes).await;
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_steps() {
    support::python();
    let server = tokio::task::spawn_blocking(support::rabbitmq)
        .await
        .unwrap();
    let addr = local(server.port);
    let guest = Credentials::default().or_env("amqp", &[]);
    let run = |op: Operation| {
        let guest = guest.clone();
        async move { client::run("amqp", addr, &guest, &op, STEP).await }
    };
    assert_eq!(
        data(&run(publish("", "q", "hello", true)).await),
        json!({"published": true})
    );
    let big = "b".repeat(300_000);
    data(&run(publish("", "q", &big, true)).await);
    assert_eq!(
        data(&run(amqp_get("q", true)).await),
        json!({"body": "hello", "routing_key": "q", "exchange": "", "redelivered": false, "message_count": 1})
    );
    let consumed = data(
        &run(Operation::AmqpConsume {
            queue: "q".into(),
            declare: false,
            durable: false,
            wait: Duration::from_secs(2),
        })
        .await,
    );
    assert_eq!(consumed["body"].as_str().map(str::len), Some(big.len()));
    assert_eq!(data(&run(amqp_get("q", false)).await), Value::Null);
    assert_eq!(
        failed(&run(amqp_get("nope", false)).await),
        "404 NOT_FOUND - no queue 'nope' in vhost '/'"
    );
    assert_eq!(
        failed(&run(publish("amq.direct", "nobody", "x", false)).await),
        "312 NO_ROUTE"
    );
    let wrong = Credentials {
        password: Some("wrong".into()),
        ..guest.clone()
    };
    let o = client::run("amqp", addr, &wrong, &amqp_get("q", true), STEP).await;
    assert!(failed(&o).starts_with("403 ACCESS_REFUSED"), "{o:?}");
    client::ready("amqp", addr, &guest, STEP).await.unwrap();

    // A hung broker, one that leaves mid-frame, one that speaks another version,
    // garbage: errors, never a hang or a panic.
    let (_l, hung) = silent().await;
    times_out("amqp", hung, &guest, &amqp_get("q", true)).await;
    assert!(
        client::ready("amqp", hung, &guest, Duration::from_millis(200))
            .await
            .is_err()
    );
    let cut = says(b"\x01\x00\x00\x00\x00\x01\x00\x00\x0a").await;
    let o = client::run("amqp", cut, &guest, &amqp_get("q", true), STEP).await;
    assert_eq!(failed(&o), "the broker closed the connection");
    let other = says(b"AMQP\x00\x01\x00\x00").await;
    let o = client::run("amqp", other, &guest, &amqp_get("q", true), STEP).await;
    assert_eq!(failed(&o), "the broker does not speak AMQP 0-9-1");
    let garbage = says(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    let o = client::run("amqp", garbage, &guest, &amqp_get("q", true), STEP).await;
    assert!(
        failed(&o).starts_with("amqp: unknown server frame type"),
        "{o:?}"
    );

    // An error a relay injects reaches the step in the broker's form.
    let rules: Rules = std::sync::Arc::new(|r: &faultbox_protocols::Request| {
        (r.fields.get("topic").map(String::as_str) == Some("q")).then(|| Answer::Error {
            message: Some("NOT_ALLOWED - maintenance".into()),
            status: Some(faultbox_protocols::Code::Number(530)),
        })
    });
    let relay = Relay::start("amqp", server.port, rules).await;
    let o = client::run(
        "amqp",
        local(relay.port),
        &guest,
        &publish("", "q", "x", true),
        STEP,
    )
    .await;
    assert_eq!(failed(&o), "530 NOT_ALLOWED - maintenance");
    let o = client::run(
        "amqp",
        local(relay.port),
        &guest,
        &publish("", "r", "x", true),
        STEP,
    )
    .await;
    assert_eq!(data(&o), json!({"published": true}));
}
