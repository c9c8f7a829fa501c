//! Protocol-level faults against real servers (PostgreSQL, MariaDB, Redis, memcached,
//! NATS, RabbitMQ from Debian; nx-27017, a MongoDB-wire server from PyPI; the
//! Kafka-compatible broker tansu; a Python grpcio server) run as Faultbox services, and
//! a system under test with real drivers that sees every fault itself. The specs in `specs/protocols/` carry the
//! assertions; these tests run them, check nothing is left behind, and check that a
//! seed replays the relays' probabilistic decisions.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{root, Out};

/// Specs whose leftovers are checked by process name run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the specs start: a process whose command line holds one of these outlived
/// its test.
const MARKERS: &[&str] = &[
    "sut.py",
    "postgres -D",
    "mariadbd",
    "redis-server",
    "memcached",
    // RabbitMQ: the Erlang VM and the port mapper it starts.
    "beam.smp",
    "epmd",
    "nats-server",
    "nats_sut.py",
    "nx-27017",
    "grpc_server.py",
    "grpc_sut.py",
    "tansu",
];

/// Installs the servers and the drivers' virtualenv (idempotent).
fn servers() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new("bash")
            .arg(root().join("scripts/servers.sh"))
            .status()
            .expect("run scripts/servers.sh");
        assert!(status.success(), "scripts/servers.sh failed");
    });
}

fn faultbox(args: &[&str]) -> Out {
    servers();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = common::faultbox_at(&root(), args);
    for m in MARKERS {
        let left = common::processes_with(m);
        assert!(left.is_empty(), "{m} outlived its test: {left:?}");
    }
    let left = common::scratch_leftovers();
    assert!(left.is_empty(), "{left:?}");
    out
}

fn spec(name: &str) -> String {
    format!("coordinator/tests/specs/protocols/{name}.star")
}

/// Runs every test of a protocol's spec; all must pass.
fn passes(protocol: &str) {
    let out = faultbox(&["test", &spec(protocol), "--format", "json"]);
    let doc = common::results_of(&out);
    for t in doc["tests"].as_array().unwrap() {
        assert_eq!(
            t["result"], "pass",
            "{protocol} {}: {}\n{}",
            t["name"], t["reason"], out.stderr
        );
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// The `ok` of each of test_probabilistic's twelve requests under `seed`.
fn rolls(protocol: &str, seed: u64) -> Vec<bool> {
    let out = faultbox(&[
        "test",
        &spec(protocol),
        "--test",
        "probabilistic",
        "--seed",
        &seed.to_string(),
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = common::results_of(&out);
    let t = &doc["tests"][0];
    // The test returns the list of `ok`s: a JSON array of booleans.
    let oks: Vec<bool> = t["return_value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    // Every failed request is one firing of the rule, and its event is in the trace.
    let fired = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "proxy.error")
        .count();
    assert_eq!(fired, oks.iter().filter(|ok| !**ok).count(), "{t}");
    oks
}

/// The same seed replays the same decisions; another seed makes others.
fn replays(protocol: &str) {
    let first = rolls(protocol, 7);
    assert_eq!(rolls(protocol, 7), first, "{protocol}: seed 7 replays");
    assert!(
        first.contains(&true) && first.contains(&false),
        "{protocol}: a 50% rule both fires and passes over twelve requests: {first:?}"
    );
    assert!(
        (8..12).any(|s| rolls(protocol, s) != first),
        "{protocol}: other seeds decide differently"
    );
}

#[test]
fn postgres_faults_reach_the_system_under_test() {
    passes("postgres");
    replays("postgres");
}

#[test]
fn mysql_faults_reach_the_system_under_test() {
    passes("mysql");
    replays("mysql");
}

#[test]
fn redis_faults_reach_the_system_under_test() {
    passes("redis");
    replays("redis");
}

#[test]
fn memcached_faults_reach_the_system_under_test() {
    passes("memcached");
    replays("memcached");
}

#[test]
fn nats_faults_reach_the_system_under_test() {
    passes("nats");
    replays("nats");
}

#[test]
fn mongodb_faults_reach_the_system_under_test() {
    passes("mongodb");
    replays("mongodb");
}

/// MongoDB rules its protocol cannot take, and error codes it cannot send, are
/// refused at load with file and line.
#[test]
fn mongodb_rules_it_cannot_take_are_refused_at_load() {
    let dir = common::Scratch::new("mongo-load");
    for (rule, expect) in [
        (
            "response(method = 'find')",
            "mongodb does not support response(): it supports error, delay, drop",
        ),
        (
            "error(query = 'x')",
            "mongodb has no match key `query`: it matches on method=, key=",
        ),
        (
            "error(status = 'NoSuchCode')",
            "mongodb error codes are numbers or names such as DuplicateKey",
        ),
        ("error(status = 4294967296)", "does not fit 32 bits"),
        ("duplicate()", "mongodb does not support duplicate()"),
    ] {
        let path = dir.path("spec.star");
        std::fs::write(
            &path,
            format!(
                "db = service(\"db\", \"/bin/true\", interface(\"main\", \"mongodb\", 27017))\n\
                 \ndef test_t():\n    fault(db.main, {rule}, run = lambda: None)\n"
            ),
        )
        .unwrap();
        let out = common::faultbox_at(&root(), &["test", &path, "--dry-run"]);
        assert_eq!(out.code, 1, "{rule}: {}", out.stderr);
        assert!(
            out.stderr.contains("spec.star:4: "),
            "{rule}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(expect), "{rule}: {}", out.stderr);
    }
}

#[test]
fn amqp_faults_reach_the_system_under_test() {
    passes("amqp");
    replays("amqp");
}

/// AMQP rules the protocol cannot take are refused at load with their place.
#[test]
fn amqp_rules_it_cannot_take_are_refused_at_load() {
    let dir = common::Scratch::new("amqp-load");
    for (line, expect) in [
        (
            "fault(mq.main, response(topic = 'a'), run = lambda: None)",
            "amqp does not support response()",
        ),
        (
            "fault(mq.main, error(key = 'a'), run = lambda: None)",
            "amqp has no match key `key`: it matches on topic=",
        ),
        (
            "fault(mq.main, error(status = 70000), run = lambda: None)",
            "status=70000 is not an AMQP reply code (0 to 65535)",
        ),
        (
            "fault(mq.main, error(status = 'NOT_FOUND'), run = lambda: None)",
            "amqp error codes are numbers",
        ),
    ] {
        let path = dir.path("spec.star");
        std::fs::write(
            &path,
            format!(
                "mq = service(\"mq\", \"/bin/true\", interface(\"main\", \"amqp\", 5672))\n\ndef test_t():\n    {line}\n"
            ),
        )
        .unwrap();
        let out = faultbox(&["test", &path, "--dry-run"]);
        assert_eq!(out.code, 1, "{line}: {}", out.stderr);
        assert!(
            out.stderr.contains("spec.star:4: "),
            "{line}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(expect), "{line}: {}", out.stderr);
    }
}

#[test]
fn grpc_faults_reach_the_system_under_test() {
    passes("grpc");
    replays("grpc");
}

/// gRPC rules Faultbox cannot carry out are refused: at load with `file:line` (a
/// status that is no gRPC code, a key gRPC does not have, an action it lacks), and
/// when installed (an OK status for `error()`, a response body that is not hex).
#[test]
fn grpc_rules_it_cannot_give_are_refused() {
    let dir = common::Scratch::new("grpc-refused");
    let server = root().join("coordinator/tests/specs/protocols/grpc_server.py");
    let head = format!(
        "echo = service(\"echo\", \"/var/cache/faultbox/venv/bin/python\", interface(\"main\", \"grpc\", 50051),\n    args = [{:?}], env = {{\"PORT\": \"50051\"}}, healthcheck = tcp(\"localhost:50051\", timeout = \"10s\"))\n",
        server.to_str().unwrap()
    );
    let at_load = [
        (
            "fault(echo.main, error(status = 'BROKEN'), run = lambda: None)",
            "status \"BROKEN\" is not a gRPC status name",
        ),
        (
            "fault(echo.main, error(status = 17), run = lambda: None)",
            "status 17 is not a gRPC status code (0 to 16)",
        ),
        (
            "fault(echo.main, error(path = '/x'), run = lambda: None)",
            "grpc has no match key `path`: it matches on method=",
        ),
        (
            "fault(echo.main, duplicate(), run = lambda: None)",
            "grpc does not support duplicate()",
        ),
    ];
    for (line, expect) in at_load {
        let path = dir.path("spec.star");
        std::fs::write(&path, format!("{head}\ndef test_t():\n    {line}\n")).unwrap();
        let out = faultbox(&["test", &path, "--dry-run"]);
        assert_eq!(out.code, 1, "{line}: {}", out.stderr);
        assert!(
            out.stderr.contains("spec.star:5: "),
            "{line}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(expect), "{line}: {}", out.stderr);
    }
    let installed = [
        (
            "fault(echo.main, error(status = 0), run = lambda: None)",
            "error(status=0) would be a success",
        ),
        (
            "fault(echo.main, response(body = '{\"a\": 1}'), run = lambda: None)",
            "takes the response message's protobuf encoding as \"hex:...\"",
        ),
    ];
    for (line, expect) in installed {
        let path = dir.path("spec.star");
        std::fs::write(&path, format!("{head}\ndef test_t():\n    {line}\n")).unwrap();
        let out = faultbox(&["test", &path]);
        // The test fails (exit 2) where the rule is installed, saying why.
        assert_eq!(out.code, 2, "{line}: {}", out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains("spec.star:5: fault(): "), "{line}: {all}");
        assert!(all.contains(expect), "{line}: {all}");
    }
}

#[test]
fn kafka_faults_reach_the_system_under_test() {
    passes("kafka");
    replays("kafka");
}
