//! Test bodies against an in-memory World: steps, faults, events and assertions.

use std::path::Path;
use std::sync::{Arc, Mutex};

use faultbox_shim::rule::{Action, FaultRule};
use faultbox_spec::run::FailureType;
use faultbox_spec::world::{Event, StepCall, StepResult, World, WorldError};
use faultbox_spec::{load, run_test, Verdict};

#[derive(Default)]
struct FakeWorld {
    log: Mutex<Vec<String>>,
    next: Mutex<u64>,
    /// (handle, `file:line`) of every `fault_declared_at`.
    sites: Mutex<Vec<(u64, String)>>,
}

impl World for FakeWorld {
    fn step(&self, call: &StepCall) -> Result<StepResult, WorldError> {
        if let Some(op) = &call.op {
            self.log.lock().unwrap().push(format!(
                "step {} {} {op:?} {:?}",
                call.service, call.method, call.credentials
            ));
            return Ok(StepResult {
                body: r#"{"value": "v"}"#.into(),
                ok: true,
                ..Default::default()
            });
        }
        self.log.lock().unwrap().push(format!(
            "step {} {} {} {:?}",
            call.service, call.method, call.path, call.headers
        ));
        Ok(match call.protocol.as_str() {
            "tcp" => StepResult {
                body: if call.body == "PING" {
                    "PONG".into()
                } else {
                    String::new()
                },
                ok: true,
                ..Default::default()
            },
            _ => StepResult {
                status: 200,
                body: format!("{{\"echo\": \"{}\"}}", call.path),
                ok: true,
                duration_ms: 3,
                ..Default::default()
            },
        })
    }
    fn fault_start(&self, service: &str, rules: &[FaultRule]) -> Result<u64, WorldError> {
        if rules.iter().any(|r| r.target == "mkdir") {
            return Err(WorldError("fsync filter does not cover mkdir".into()));
        }
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let desc: Vec<String> = rules
            .iter()
            .map(|r| {
                format!(
                    "{}{}",
                    r,
                    r.label
                        .as_deref()
                        .map(|l| format!("[{l}]"))
                        .unwrap_or_default()
                )
            })
            .collect();
        self.log
            .lock()
            .unwrap()
            .push(format!("start#{n} {service} {}", desc.join(" ")));
        Ok(*n)
    }
    fn trace_start(&self, service: &str, syscalls: &[String]) -> Result<u64, WorldError> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        self.log
            .lock()
            .unwrap()
            .push(format!("trace#{n} {service} {syscalls:?}"));
        Ok(*n)
    }
    fn trace_stop(&self, service: &str) -> Result<(), WorldError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("trace_stop {service}"));
        Ok(())
    }
    fn fault_remove(&self, handle: u64) -> Result<(), WorldError> {
        self.log.lock().unwrap().push(format!("remove#{handle}"));
        Ok(())
    }
    fn fault_declared_at(&self, handle: u64, at: &faultbox_spec::model::Location) {
        let file = Path::new(&at.file).file_name().unwrap().to_string_lossy();
        self.sites
            .lock()
            .unwrap()
            .push((handle, format!("{file}:{}", at.line)));
    }
    fn fault_stop(&self, service: &str) -> Result<(), WorldError> {
        self.log.lock().unwrap().push(format!("stop {service}"));
        Ok(())
    }
    fn events(&self) -> Vec<Event> {
        let step = Event {
            seq: 9,
            service: "test".into(),
            kind: "step".into(),
            event_type: "step.get".into(),
            ..Default::default()
        };
        let mut e = Event {
            seq: 7,
            service: "db".into(),
            kind: "syscall".into(),
            event_type: "syscall.write".into(),
            ..Default::default()
        };
        e.fields.insert("syscall".into(), "write".into());
        e.fields.insert("path".into(), "/tmp/db.wal".into());
        e.fields
            .insert("decision".into(), "deny(input/output error)".into());
        if self.log.lock().unwrap().iter().any(|l| l == "with-step") {
            return vec![e, step];
        }
        vec![e]
    }
}

fn limits() -> faultbox_spec::limits::Limits {
    faultbox_spec::limits::Limits::new(std::time::Duration::from_secs(60))
}

fn run(name: &str) -> (faultbox_spec::TestOutcome, Vec<String>) {
    let loaded =
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tests.star")).unwrap();
    let test = loaded
        .spec
        .tests
        .iter()
        .find(|t| t.name == name)
        .unwrap()
        .clone();
    let world = Arc::new(FakeWorld::default());
    let out = run_test(&loaded, &test, world.clone(), limits());
    let log = world.log.lock().unwrap().clone();
    (out, log)
}

fn reason(o: &faultbox_spec::TestOutcome) -> (String, FailureType) {
    match &o.verdict {
        Verdict::Fail {
            reason,
            failure_type,
        } => (reason.clone(), failure_type.clone()),
        Verdict::Pass => panic!("passed"),
    }
}

#[test]
fn steps_reach_the_world_and_return_responses() {
    let (out, log) = run("test_steps");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    assert_eq!(log[0], "step api post /orders [(\"X\", \"1\")]");
    assert_eq!(log[1], "step db send / []");
}

#[test]
fn protocol_steps_build_their_operations() {
    let (out, log) = run("test_protocol_steps");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    let none = "Credentials { user: None, password: None, database: None }";
    let redis = |command: &str| format!("Redis {{ command: [{command}], bare: false }}");
    let expected = [
        format!("step pg query Query {{ sql: \"SELECT $1\", args: [Int(1), Text(\"a\"), Null, Bool(true), Float(1.5)] }} {none}"),
        "step pg exec Exec { sql: \"DELETE FROM t\", args: [] } Credentials { user: Some(\"app\"), password: Some(\"pw\"), database: Some(\"shop\") }".to_string(),
        format!("step cache get {} {none}", redis("\"GET\", \"k\"")),
        format!("step cache set {} {none}", redis("\"SET\", \"k\", \"7\", \"EX\", \"90\"")),
        format!("step cache delete {} {none}", redis("\"DEL\", \"k\"")),
        format!("step cache del {} {none}", redis("\"DEL\", \"a\", \"b\"")),
        format!("step cache keys Redis {{ command: [\"KEYS\", \"*\"], bare: true }} {none}"),
        format!("step cache lrange {} {none}", redis("\"LRANGE\", \"l\", \"0\", \"-1\"")),
        format!("step cache rpush {} {none}", redis("\"RPUSH\", \"l\", \"a\", \"2\"")),
        format!("step cache command {} Credentials {{ user: None, password: None, database: Some(\"2\") }}", redis("\"HSET\", \"h\", \"f\", \"1\"")),
        format!("step mc set MemcachedSet {{ key: \"k\", value: \"v\", ttl: 60 }} {none}"),
        format!("step mc delete MemcachedDelete {{ key: \"k\" }} {none}"),
    ];
    assert_eq!(log, expected);
}

#[test]
fn amqp_steps_build_their_operations() {
    let (out, log) = run("test_amqp_steps");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    let none = "Credentials { user: None, password: None, database: None }";
    assert_eq!(
        log,
        [
            format!("step mq publish AmqpPublish {{ exchange: \"\", routing_key: \"orders\", body: \"42\", declare: true, durable: false }} {none}"),
            "step mq publish AmqpPublish { exchange: \"events\", routing_key: \"orders.new\", body: \"\", declare: false, durable: false } Credentials { user: Some(\"app\"), password: Some(\"pw\"), database: Some(\"shop\") }".to_string(),
            format!("step mq get AmqpGet {{ queue: \"q\", declare: false, durable: false }} {none}"),
            format!("step mq consume AmqpConsume {{ queue: \"q\", declare: true, durable: true, wait: 250ms }} {none}"),
        ]
    );
    for (test, expect) in [
        (
            "test_amqp_step_unknown_kwarg",
            "mq.main.get(): unexpected keyword argument \"database\" (expected queue, declare, durable, user, password, vhost)",
        ),
        ("test_amqp_step_missing_queue", "mq.main.consume(): queue= is required"),
        ("test_amqp_step_wrong_type", "mq.main.publish(): declare must be a bool, got string"),
    ] {
        let (why, kind) = reason(&run(test).0);
        assert_eq!(kind, FailureType::Error, "{test}: {why}");
        assert!(why.contains(expect), "{test}: {why}");
    }
}

#[test]
fn protocol_step_mistakes_name_the_step() {
    for (test, expect) in [
        (
            "test_step_unknown_kwarg",
            "cache.main.get(): unexpected keyword argument \"path\" (expected key, user, password, database)",
        ),
        ("test_step_missing_kwarg", "pg.main.query(): sql= is required"),
        ("test_step_wrong_type", "cache.main.lrange(): start must be an int, got string"),
        (
            "test_step_memcached_login",
            "mc.main.get(): unexpected keyword argument \"password\" (expected key)",
        ),
        ("test_step_bad_arg", "pg.main.query(): args holds None, bools, ints, floats and strings, not dict"),
        ("test_step_no_method", "Object of type `interface_ref` has no attribute `send`"),
    ] {
        let (why, kind) = reason(&run(test).0);
        assert_eq!(kind, FailureType::Error, "{test}: {why}");
        assert!(why.contains(expect), "{test}: {why}");
    }
}

#[test]
fn mongo_steps_build_their_operations() {
    let (out, log) = run("test_mongo_steps");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    let none = "Credentials { user: None, password: None, database: None }";
    let expected = [
        "step mg find Mongo(Find { collection: \"orders\", filter: \"{\\\"n\\\":{\\\"$gt\\\":1},\\\"a\\\":\\\"b\\\"}\", projection: None, sort: Some(\"{\\\"n\\\": -1}\"), limit: Some(2), skip: None }) Credentials { user: None, password: None, database: Some(\"shop\") }".to_string(),
        format!("step mg insert_many Mongo(InsertMany {{ collection: \"orders\", documents: [\"{{\\\"b\\\":1,\\\"a\\\":2.5}}\", \"{{\\\"c\\\": null}}\"] }}) {none}"),
        format!("step mg update Mongo(Update {{ collection: \"orders\", filter: \"{{}}\", update: \"[{{\\\"$set\\\":{{\\\"x\\\":1}}}}]\", many: true, upsert: false }}) {none}"),
        format!("step mg command Mongo(Command {{ command: \"{{\\\"count\\\":\\\"orders\\\",\\\"query\\\":{{}}}}\" }}) {none}"),
    ];
    assert_eq!(log, expected);
}

#[test]
fn mongo_step_mistakes_name_the_step() {
    for (test, expect) in [
        (
            "test_mongo_unknown_kwarg",
            "mg.main.find(): unexpected keyword argument \"query\" (expected collection, filter, projection, sort, limit, skip, database)",
        ),
        ("test_mongo_login", "mg.main.count(): unexpected keyword argument \"user\""),
        ("test_mongo_missing_collection", "mg.main.insert(): collection= is required"),
        ("test_mongo_not_an_object", "mg.main.delete(): filter= must be a JSON object"),
        ("test_mongo_bad_document", "mg.main.insert(): document must be a dict or a JSON object string, got list"),
        ("test_mongo_empty_documents", "mg.main.insert_many(): documents= must not be an empty list"),
        ("test_mongo_bad_flag", "mg.main.delete(): many must be a bool, got string"),
    ] {
        let (why, kind) = reason(&run(test).0);
        assert_eq!(kind, FailureType::Error, "{test}: {why}");
        assert!(why.contains(expect), "{test}: {why}");
    }
}

#[test]
fn scoped_faults_resolve_ops_and_are_removed() {
    let (out, log) = run("test_fault_scoped");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    assert_eq!(
        log[0],
        "start#1 db write=EIO:100%:/tmp/*.wal[wal] fsync=EIO:100%:/tmp/*.wal[wal] connect=delay:200ms:50%"
    );
    assert_eq!(log[1], "step api get /x []");
    assert_eq!(log[2], "remove#1");
}

#[test]
fn faults_are_removed_when_the_callback_fails() {
    let (out, log) = run("test_fault_removed_on_error");
    let (why, kind) = reason(&out);
    assert!(why.contains("boom"), "{why}");
    assert_eq!(kind, FailureType::Assertion);
    assert_eq!(log.last().unwrap(), "remove#1");
}

#[test]
fn imperative_faults() {
    let (out, log) = run("test_imperative");
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(log, ["start#1 db fsync=ENOSPC:100%", "stop db"]);
}

#[test]
fn event_queries_and_temporal_assertions() {
    let (out, _) = run("test_events");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    assert_eq!(out.return_value.as_deref(), Some("{\"writes\": 1}"));
}

#[test]
fn return_values_have_a_json_form() {
    let (out, _) = run("test_events");
    assert_eq!(out.return_json, Some(serde_json::json!({"writes": 1})));
    let (out, _) = run("test_returns_values");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    assert_eq!(
        out.return_json,
        Some(serde_json::json!({
            "resp": {"status": 200, "body": "{\"echo\": \"/x\"}", "data": {"echo": "/x"},
                     "ok": true, "error": "", "duration_ms": 3},
            "nested": [1, [2, "three"]],
            "ok": true,
            "none": null,
            "f": "len",
        }))
    );
    assert!(out.return_value.unwrap().contains("response(status=200"));
    let (out, _) = run("test_assert_fails");
    assert_eq!(out.return_json, None, "a failed test returns nothing");
}

/// Faults, assumptions and tests know the spec line that declared them, so reports
/// can say which line to change.
#[test]
fn faults_and_tests_know_their_spec_line() {
    let loaded =
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tests.star")).unwrap();
    let line = |name: &str| {
        let t = loaded.spec.tests.iter().find(|t| t.name == name).unwrap();
        assert!(t.declared_at.file.ends_with("tests.star"), "{t:?}");
        t.declared_at.line
    };
    assert_eq!(line("test_steps"), 7, "a def test: its def line");
    assert_eq!(line("test_db_slow"), 174, "a fault_scenario(): its call");
    let sites = |name: &str| {
        let test = loaded
            .spec
            .tests
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone();
        let world = Arc::new(FakeWorld::default());
        let out = run_test(&loaded, &test, world.clone(), limits());
        assert_eq!(out.verdict, Verdict::Pass, "{name}: {out:?}");
        let sites = world.sites.lock().unwrap().clone();
        sites
    };
    // fault(): the call; fault_start(): the call; an assumption: where it was made.
    assert_eq!(
        sites("test_fault_scoped"),
        [(1, "tests.star:19".to_string())]
    );
    assert_eq!(
        sites("test_returns_values"),
        [(1, "tests.star:166".to_string())]
    );
    assert_eq!(sites("test_db_slow"), [(1, "tests.star:169".to_string())]);
}

#[test]
fn failures_are_classified_and_located() {
    let (out, _) = run("test_assert_fails");
    let (why, kind) = reason(&out);
    assert_eq!(kind, FailureType::Assertion);
    assert!(why.contains("tests.star:43: assert_eq: 2 != 3"), "{why}");
    let (why, kind) = reason(&run("test_never_fails").0);
    assert_eq!(kind, FailureType::Assertion);
    assert!(
        why.contains("assert_never: event #7 (db syscall.write) matched syscall=\"write\""),
        "{why}"
    );
    let (why, kind) = reason(&run("test_bad_fault_kwarg").0);
    assert_eq!(kind, FailureType::Error);
    assert!(
        why.contains("unknown syscall or op \"nosuch\" for service \"db\""),
        "{why}"
    );
    let (why, _) = reason(&run("test_uncovered").0);
    assert!(why.contains("does not cover mkdir"), "{why}");
}

#[test]
fn traces_are_scoped() {
    let (out, log) = run("test_trace");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    assert_eq!(
        log,
        [
            "trace#1 db [\"write\", \"fsync\"]",
            "remove#1",
            "trace#2 db [\"openat\"]",
            "trace_stop db"
        ]
    );
}

#[test]
fn assert_before_orders_events_and_sees_first() {
    let loaded =
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/tests.star")).unwrap();
    for (name, pass) in [("test_before", true), ("test_before_fails", false)] {
        let test = loaded
            .spec
            .tests
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone();
        let world = Arc::new(FakeWorld::default());
        world.log.lock().unwrap().push("with-step".into());
        let out = run_test(&loaded, &test, world, limits());
        assert_eq!(out.verdict == Verdict::Pass, pass, "{name}: {out:?}");
        if !pass {
            let (why, kind) = reason(&out);
            assert_eq!(kind, FailureType::Assertion);
            assert!(
                why.contains(
                    "first matched event #9 (test step.get), but then matched the earlier event #7"
                ),
                "{why}"
            );
        }
    }
}

#[test]
fn rules_carry_the_action() {
    let r = FaultRule::parse("fsync=ENOSPC:100%").unwrap();
    assert_eq!(r.action, Action::Deny(libc_enospc()));
}

fn libc_enospc() -> i32 {
    faultbox_shim::errno::from_name("ENOSPC").unwrap()
}

#[test]
fn kafka_steps_build_their_operations() {
    let (out, log) = run("test_kafka_steps");
    assert_eq!(out.verdict, Verdict::Pass, "{out:?}");
    let none = "Credentials { user: None, password: None, database: None }";
    assert_eq!(
        log,
        [
            format!("step broker publish KafkaPublish {{ topic: \"orders\", value: \"{{\\\"id\\\": 1}}\", key: Some(\"order-1\") }} {none}"),
            format!("step broker publish KafkaPublish {{ topic: \"orders\", value: \"7\", key: None }} {none}"),
            // No group: the world gives the test its own.
            format!("step broker consume KafkaConsume {{ topic: \"orders\", group: None, wait: 5s }} {none}"),
            format!("step broker consume KafkaConsume {{ topic: \"orders\", group: Some(\"audit\"), wait: 300ms }} {none}"),
        ]
    );
    for (test, expect) in [
        (
            "test_step_kafka_unknown_kwarg",
            "broker.main.consume(): unexpected keyword argument \"partition\" (expected topic, group, timeout)",
        ),
        (
            "test_step_kafka_login",
            "broker.main.publish(): unexpected keyword argument \"user\" (expected topic, data, key)",
        ),
    ] {
        let (why, kind) = reason(&run(test).0);
        assert_eq!(kind, FailureType::Error, "{test}: {why}");
        assert!(why.contains(expect), "{test}: {why}");
    }
}
