//! Event sources end to end: real services whose output, files, endpoints, WAL and
//! topics become events of the trace, queried by the specs' assertions and monitors.

mod common;

use common::root;

/// These tests check for leftover processes and scratch directories, so they run
/// one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_spec(spec: &str, extra: &[&str]) -> serde_json::Value {
    let path = format!("coordinator/tests/specs/sources/{spec}");
    let mut args = vec!["test", path.as_str(), "--format", "json"];
    args.extend_from_slice(extra);
    let out = common::faultbox_at(&root(), &args);
    let left = common::scratch_leftovers();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        matches!(out.code, 0 | 2),
        "{spec}: exit {}\n{}",
        out.code,
        out.stderr
    );
    common::results_of(&out)
}

fn verdicts(doc: &serde_json::Value) -> Vec<(String, String, String)> {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_string(),
                t["result"].as_str().unwrap_or("").to_string(),
                t["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn all_pass(spec: &str) -> serde_json::Value {
    let doc = run_spec(spec, &[]);
    for (name, result, reason) in verdicts(&doc) {
        assert_eq!(result, "pass", "{spec}: {name}: {reason}");
    }
    doc
}

fn events_of<'a>(doc: &'a serde_json::Value, test: &str) -> &'a Vec<serde_json::Value> {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == test)
        .unwrap_or_else(|| panic!("{test} ran"))["events"]
        .as_array()
        .unwrap()
}

#[test]
fn stdout_and_stderr_lines_are_decoded_events() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let doc = all_pass("output.star");
    assert_eq!(doc["pass"], 6, "{doc}");
    // A line the service wrote on its way out, without a newline, is in the trace,
    // before the service's `stopped`.
    let events = events_of(&doc, "test_lines_are_decoded");
    let last: Vec<&str> = events
        .iter()
        .rev()
        .take(2)
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(last, ["lifecycle.stopped", "stdout"], "{events:?}");
    let bye = &events[events.len() - 2];
    assert_eq!(
        bye["fields"]["line"],
        r#"{"level": "INFO", "msg": "shutting down"}"#
    );
    // Source events carry vector clocks like every other event.
    assert!(bye["vector_clock"]["app"].as_u64().unwrap() > 0);
    assert!(common::processes_with("logger.py").is_empty());
}

#[test]
fn a_monitor_fails_the_test_on_a_log_line() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let doc = run_spec("monitor_fails.star", &[]);
    let v = verdicts(&doc);
    assert_eq!(v[0].0, "test_an_error_line_fails_the_test");
    assert_eq!(v[0].1, "fail");
    assert!(
        v[0].2.contains("monitor violation") && v[0].2.contains("unexpected error"),
        "{v:?}"
    );
    assert_eq!(v[1].1, "pass", "{v:?}");
}

/// Mistakes in `observe=` stop the load with the file and line that made them.
#[test]
fn bad_sources_are_refused_at_load() {
    let dir = common::Scratch::new("sources-load");
    for (line, expect) in [
        (
            "observe = [stdout(decoder = regex_decoder(pattern = '(a'))]",
            "regex_decoder(pattern=\"(a\"): the pattern does not compile",
        ),
        (
            "observe = [stdout(decoder = regex_decoder(pattern = '(a)'))]",
            "has no named group",
        ),
        (
            "observe = stdout()",
            "observe must be a list of event sources",
        ),
        ("observe = ['stdout']", "observe= takes event sources"),
        (
            "observe = [stdout(decoder = 'json')]",
            "decoder= must be json_decoder()",
        ),
        (
            "observe = [stdout(), stdout()]",
            "stdout() is observed twice",
        ),
        (
            "observe = [wal_stream(slot = 'faultbox')]",
            "wal_stream() reads PostgreSQL's WAL through a postgres interface",
        ),
        (
            "observe = [wal_stream(slot = 'Bad-Slot')]",
            "must be 1 to 63 lowercase letters",
        ),
        (
            "observe = [topic('orders', broker = 'nobody:9092')]",
            "broker service \"nobody\" is not declared",
        ),
        (
            "observe = [topic('orders')]",
            "has no kafka or nats interface",
        ),
        (
            "observe = [topic('orders', broker = 'amqp://x:1')]",
            "is not kafka:// or nats://",
        ),
        (
            "observe = [poll(url = 'https://localhost:1/')]",
            "must start with http://",
        ),
        (
            "observe = [poll(url = 'http://example.com/')]",
            "the host must be localhost or an IP address",
        ),
        (
            "observe = [poll(url = 'http://localhost:1/', interval = '1ms')]",
            "is shorter than",
        ),
        ("observe = [tail()]", "tail(): needs path="),
    ] {
        let path = dir.path("spec.star");
        std::fs::write(
            &path,
            format!(
                "# a spec with a mistake\napp = service(\"app\", \"/bin/true\", interface(\"main\", \"tcp\", 7000),\n    {line})\n"
            ),
        )
        .unwrap();
        let out = common::faultbox_at(&root(), &["test", &path, "--dry-run"]);
        assert_eq!(out.code, 1, "{line}: {}", out.stderr);
        assert!(out.stderr.contains("spec.star:"), "{line}: {}", out.stderr);
        assert!(out.stderr.contains(expect), "{line}: {}", out.stderr);
    }
}

fn servers() {
    let ok = std::process::Command::new("bash")
        .arg(root().join("scripts/servers.sh"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "scripts/servers.sh failed");
}

#[test]
fn tailed_files_and_polled_endpoints_are_events() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let doc = all_pass("files.star");
    assert_eq!(doc["pass"], 4, "{doc}");
    // A path that never appeared says so once the source stops.
    let events = events_of(&doc, "test_failing_endpoints_are_events_not_test_failures");
    assert!(
        events.iter().any(|e| e["event_type"] == "tail.error"
            && e["fields"]["error"]
                .as_str()
                .is_some_and(|m| m.contains("never/appears.log never existed"))),
        "{events:?}"
    );
    assert!(common::processes_with("files_svc.py").is_empty());
}

#[test]
fn kafka_and_nats_messages_are_events() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    servers();
    let doc = all_pass("brokers.star");
    assert_eq!(doc["pass"], 4, "{doc}");
    for marker in ["tansu broker", "nats-server -a 127.0.0.1"] {
        assert!(common::processes_with(marker).is_empty(), "{marker} left");
    }
}

#[test]
fn a_wal_level_that_is_not_logical_is_explained() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    all_pass("wal.star");
    assert!(common::processes_with("postgres -D /tmp/faultbox-").is_empty());
}

/// The examples folder's spec: the reference's data-integrity examples over a
/// database's WAL, a Kafka topic and an API's log lines.
#[test]
fn the_event_sources_example_runs_the_references_integrity_checks() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    servers();
    let out = common::faultbox_at(
        &root(),
        &[
            "test",
            "examples/event-sources/event_sources.star",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let doc = common::results_of(&out);
    assert_eq!(doc["pass"], 3, "{doc}");
    // The fault did reach the database, and no record was published for the order.
    let events = events_of(&doc, "test_no_message_loss_on_db_error");
    assert!(events.iter().any(|e| e["fields"]["decision"]
        .as_str()
        .is_some_and(|d| d.starts_with("deny"))));
    assert!(!events.iter().any(|e| e["type"] == "topic"));
    for marker in [
        "orders_app.py",
        "tansu broker",
        "postgres -D /tmp/faultbox-",
    ] {
        assert!(common::processes_with(marker).is_empty(), "{marker} left");
    }
    assert!(common::scratch_leftovers().is_empty());
}
