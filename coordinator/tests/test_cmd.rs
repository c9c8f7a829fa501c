//! `faultbox test` against real services: the example spec (Rust services), Python
//! and shell services, JSON output, seeds, and every kind of bad spec.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn faultbox() -> PathBuf {
    common::faultbox()
}

use common::{root, Out};

/// These tests check for leftover processes by name, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn test_cmd(args: &[&str]) -> Out {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let o = faultbox_in(&root(), "test", args);
    assert_no_services_left();
    o
}

/// Runs `faultbox <sub> <args>` in `dir`.
fn faultbox_in(dir: &Path, sub: &str, args: &[&str]) -> Out {
    let mut all = vec![sub];
    all.extend_from_slice(args);
    common::faultbox_at(dir, &all)
}

/// No service process of ours survives a run. One still exiting (killed, its
/// reaper a moment behind) gets 3 s to go; a leak stays.
fn assert_no_services_left() {
    for marker in [
        "debug/inventory",
        "debug/orders",
        "echo_svc.py",
        "http.server 8000",
        "fbtest-never",
    ] {
        common::wait_processes(marker, |n| n == 0, 3, &format!("{marker} still running"));
    }
    let leftovers = common::scratch_leftovers();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn json(out: &Out) -> serde_json::Value {
    common::results_of(out)
}

fn spec_file(name: &str, source: &str) -> (PathBuf, impl Drop) {
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("fbtest-spec-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spec.star");
    std::fs::write(&path, source).unwrap();
    (path, Rm(dir))
}

#[test]
fn the_example_spec_passes() {
    let scratch = common::Scratch::new("output");
    let written = scratch.0.join("out.json");
    let out = test_cmd(&[
        "examples/faultbox.star",
        "--format",
        "json",
        "--output",
        written.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = json(&out);
    let file = common::results(&std::fs::read_to_string(&written).unwrap());
    assert_eq!(file, doc, "--output holds the same document");
    let tests = doc["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 10);
    assert!(
        tests.iter().all(|t| t["result"] == "pass"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--- PASS: test_happy_path ("),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("WAL fsyncs: 1"),
        "print() goes to stderr"
    );
    assert!(out.stderr.contains("10 passed, 0 failed"));
    let happy = tests
        .iter()
        .find(|t| t["name"] == "test_happy_path")
        .unwrap();
    for key in [
        "name",
        "result",
        "seed",
        "duration_ms",
        "faults",
        "syscall_summary",
        "diagnostics",
        "events",
        "replay_command",
    ] {
        assert!(happy.get(key).is_some(), "{key} missing");
    }
    // As in the reference's example, a passing run has no reason or failure type, and
    // no return value when it returned None.
    for key in ["reason", "failure_type", "return_value"] {
        assert!(happy.get(key).is_none(), "{key} on a passing run: {happy}");
    }
    let window = tests
        .iter()
        .find(|t| t["name"] == "test_trace_window")
        .unwrap();
    assert_eq!(window["return_value"], serde_json::json!({"fsyncs": 2}));
    let events = happy["events"].as_array().unwrap();
    let fsync = events
        .iter()
        .find(|e| e["event_type"] == "syscall.fsync" && e["service"] == "inventory")
        .expect("the WAL fsync is in the trace");
    assert_eq!(fsync["fields"]["decision"], "allow");
    assert_eq!(fsync["partition_key"], "inventory", "{fsync}");
    // Lifecycle events are typed as the reference's JSON trace shows them.
    for (what, kind) in [("started", "service_started"), ("ready", "service_ready")] {
        let e = events
            .iter()
            .find(|e| e["event_type"] == format!("lifecycle.{what}") && e["service"] == "inventory")
            .unwrap_or_else(|| panic!("inventory's lifecycle.{what} is in the trace"));
        assert_eq!(e["type"], kind, "{e}");
        assert_eq!(e["partition_key"], "inventory", "{e}");
    }
    // The step merged the driver into orders; orders' connect to inventory merged
    // inventory's history into orders.
    let connect = events
        .iter()
        .find(|e| {
            e["event_type"] == "syscall.connect"
                && e["service"] == "orders"
                && e["fields"]["port"] == "5432"
        })
        .expect("orders' connect to inventory is in the trace");
    assert_eq!(connect["fields"]["peer"], "inventory");
    assert_eq!(connect["fields"]["port"], "5432");
    assert!(
        connect["vector_clock"]["test"].as_u64().unwrap() >= 1,
        "{connect}"
    );
    assert!(
        connect["vector_clock"]["inventory"].as_u64().unwrap() >= 2,
        "{connect}"
    );
    assert!(events.iter().any(|e| e["event_type"] == "step_send.orders"));
    assert!(events
        .iter()
        .all(|e| e["timestamp"].as_str().unwrap().ends_with('Z')));
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let down = tests
        .iter()
        .find(|t| t["name"] == "test_matrix_x" || t["name"] == "test_inventory_down")
        .unwrap();
    assert_eq!(down["faults"][0]["errno"], "ECONNREFUSED");
    assert!(down["faults"][0]["hits"].as_u64().unwrap() >= 1);
    assert!(
        down["syscall_summary"]["orders"]["faulted"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn python_and_shell_services() {
    let out = test_cmd(&["coordinator/tests/specs/python.star", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn the_same_seed_makes_the_same_decisions() {
    let run = |seed: &str| {
        let out = test_cmd(&[
            "coordinator/tests/specs/python.star",
            "--test",
            "flaky",
            "--seed",
            seed,
            "--format",
            "json",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        // The returned list, as a JSON array of the replies.
        let replies = json(&out)["tests"][0]["return_value"].clone();
        assert_eq!(replies.as_array().map(Vec::len), Some(21), "{replies}");
        replies.to_string()
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert!(
        a.contains("ERR 5") && a.contains("ECHO"),
        "50% denies some: {a}"
    );
    assert_ne!(a, run("8"));
}

#[test]
fn failures_report_reason_and_a_replay_that_works() {
    let (spec, _rm) = spec_file(
        "fail",
        "svc = service('svc', 'python3', interface('main', 'tcp', 7300), args = ['-c', 'import socket,time\\ns=socket.socket();s.bind((\"127.0.0.1\",7300));s.listen();time.sleep(60)'], healthcheck = tcp('localhost:7300'))\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert_eq(1, 2, 'numbers')\n\ndef test_zfail():\n    fail('deliberately', svc.main.port)\n",
    );
    let spec = spec.to_str().unwrap();
    let out = test_cmd(&[spec, "--runs", "3", "--format", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = json(&out);
    let runs: Vec<(String, u64)> = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("test_bad".into(), 0),
            ("test_ok".into(), 0),
            ("test_ok".into(), 1),
            ("test_ok".into(), 2),
            ("test_zfail".into(), 0)
        ],
        "a test stops at its first failure"
    );
    let zfail = &doc["tests"][4];
    assert_eq!(zfail["failure_type"], "assertion");
    assert!(
        zfail["reason"]
            .as_str()
            .unwrap()
            .contains("deliberately 7300"),
        "{zfail}"
    );
    let bad = &doc["tests"][0];
    assert_eq!(bad["failure_type"], "assertion");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .ends_with("spec.star:7: assert_eq: numbers: 1 != 2"),
        "{bad}"
    );
    let replay = bad["replay_command"].as_str().unwrap();
    assert!(out.stderr.contains(&format!("replay: {replay}")));
    let args: Vec<&str> = replay.split_whitespace().skip(2).collect();
    let again = test_cmd(&args);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("--- FAIL: test_bad (") && again.stderr.contains("seed=0"),
        "{}",
        again.stderr
    );
    let only_fail = test_cmd(&[spec, "--show", "fail"]);
    assert!(!only_fail.stderr.contains("PASS"), "{}", only_fail.stderr);
}

#[test]
fn fixed_ports_do_not_collide_with_the_host() {
    // Something on the host holds the port the service wants: the test's own
    // network namespace does not see it.
    let holder = std::net::TcpListener::bind("127.0.0.1:5432");
    let out = test_cmd(&["examples/faultbox.star", "--test", "tcp_protocol"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    drop(holder);
}

#[test]
fn dry_run_starts_nothing() {
    let out = test_cmd(&["examples/faultbox.star", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Services: 2"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "inventory (../target/debug/inventory); filter: connect, fdatasync, fsync, openat, sendto, write"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Tests: test_disk_full_then_recovers, "),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_specs_are_refused_with_file_and_line() {
    let deep_op = format!(
        "a = service('a', '/bin/true', ops = {{'x': op(syscalls = ['write'], path = '/{}a{}')}})\n",
        "{".repeat(300),
        "}".repeat(300)
    );
    let cases: &[(&str, &str, i32, &str)] = &[
        ("syntax", "x = (\n", 1, "spec.star:2: Parse error"),
        ("builtin", "\nservce('a', '/bin/true')\n", 1, "spec.star:2:"),
        ("keyword", "service('a', '/bin/true', colour = 'red')\n", 1, "colour"),
        ("type", "service('a', '/bin/true', interface('m', 'tcp', 'x'))\n", 1, "spec.star:1:"),
        ("cycle", "a = service('a', '/bin/true', depends_on = ['b'])\nb = service('b', '/bin/true', depends_on = [a])\n", 1, "dependency cycle"),
        (
            "missing_binary",
            "\nservice('a', '/nonexistent/fbtest-never', interface('m', 'tcp', 7400))\ndef test_t():\n    pass\n",
            1,
            "spec.star:2: service \"a\": target \"/nonexistent/fbtest-never\" not found",
        ),
        (
            "never_healthy",
            "service('a', 'sleep', interface('m', 'tcp', 7400), args = ['60'], healthcheck = tcp('localhost:7400', timeout = '300ms'))\ndef test_t():\n    pass\n",
            2,
            "service \"a\": healthcheck tcp(\"localhost:7400\") did not pass within 300ms (declared at ",
        ),
        (
            "crash",
            "service('a', 'sh', interface('m', 'tcp', 7400), args = ['-c', 'echo fbtest-never boom >&2; exit 3'], healthcheck = tcp('localhost:7400'))\ndef test_t():\n    pass\n",
            2,
            "service \"a\" exited with code 3 during startup (declared at ",
        ),
        (
            "uncovered",
            "a = service('a', 'sleep', interface('m', 'tcp', 7400), args = ['60'])\nhidden = {'mkdir': deny('EIO')}\ndef test_t():\n    fault(a, fsync = deny('EIO'), run = lambda: None)\n    fault_start(a, **hidden)\n",
            2,
            "cannot take effect: its seccomp filter does not cover mkdir",
        ),
        (
            "bad_kwarg",
            "a = service('a', 'sleep', interface('m', 'tcp', 7400), args = ['60'])\ndef test_t():\n    fault(a, nosuchcall = deny('EIO'), run = lambda: None)\n",
            1,
            "spec.star:3: unknown syscall or op \"nosuchcall\"",
        ),
        (
            "query_syscall",
            "def test_t():\n    pass\n\ndef check():\n    assert_never(syscall = 'opnat')\n",
            1,
            "spec.star:5: syscall=\"opnat\": unknown syscall",
        ),
        (
            "op_empty_path",
            "a = service('a', '/bin/true', ops = {'x': op(syscalls = ['write'], path = '')})\n",
            1,
            "spec.star:1: op(path=\"\"): the glob is empty",
        ),
        (
            "op_relative_path",
            "a = service('a', '/bin/true',\n    ops = {'x': op(syscalls = ['write'], path = 'data/*')})\n",
            1,
            "spec.star:2: op(path=\"data/*\"): the glob is relative",
        ),
        (
            "op_deep_glob",
            deep_op.as_str(),
            1,
            "nests more than 10 {...} groups",
        ),
        (
            "bad_probability",
            "def test_t():\n    pass\n\ndef later():\n    return deny('EIO', probability = '150%')\n",
            1,
            "spec.star:5: bad probability \"150%\"",
        ),
        (
            "bad_delay",
            "def test_t():\n    pass\n\ndef later():\n    return delay('soon')\n",
            1,
            "spec.star:5: delay(): bad duration \"soon\"",
        ),
        (
            "query_everything",
            "def test_t():\n    events(syscall = '*')\n",
            1,
            "spec.star:2: syscall=\"*\" matches",
        ),
    ];
    for (name, src, code, expect) in cases {
        let (spec, _rm) = spec_file(name, src);
        let out = test_cmd(&[spec.to_str().unwrap()]);
        assert_eq!(out.code, *code, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(expect),
            "{name}: expected {expect:?} in {}",
            out.stderr
        );
        // --dry-run refuses whatever the run refuses before starting anything.
        if *code == 1 {
            let dry = test_cmd(&[spec.to_str().unwrap(), "--dry-run"]);
            assert_eq!(dry.code, 1, "{name} --dry-run: {}", dry.stderr);
            assert!(
                dry.stderr.contains(expect),
                "{name} --dry-run: {}",
                dry.stderr
            );
        }
    }
    // A binary that is not executable, likewise.
    let (spec, _rm) = spec_file(
        "not_executable",
        "service('a', './plain', interface('m', 'tcp', 7400))\ndef test_t():\n    pass\n",
    );
    std::fs::write(spec.with_file_name("plain"), "not a program\n").unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec![spec.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = test_cmd(&args);
        assert_eq!(out.code, 1, "{extra:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("spec.star:1: service \"a\"")
                && out.stderr.contains("is not executable"),
            "{extra:?}: {}",
            out.stderr
        );
    }
    let out = test_cmd(&["examples/faultbox.star", "--test", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("--test nope: no such test"),
        "{}",
        out.stderr
    );
}

#[test]
fn unprivileged_callers_get_one_clear_error() {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(faultbox())
        .current_dir(root())
        .args(["test", "examples/faultbox.star"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("faultbox test needs root"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

fn diagnostics(doc: &serde_json::Value, test: &str) -> Vec<String> {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == test)
        .unwrap_or_else(|| panic!("{test} not in {doc}"))["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(
                d["message"].is_string() && d["suggestion"].is_string(),
                "{d}"
            );
            d["code"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn diagnostics_explain_what_the_trace_shows() {
    let out = test_cmd(&["coordinator/tests/specs/diag.star", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = json(&out);
    assert_eq!(
        diagnostics(&doc, "test_swallowed"),
        ["FAULT_FIRED_BUT_SUCCESS"]
    );
    assert_eq!(diagnostics(&doc, "test_not_fired"), ["FAULT_NOT_FIRED"]);
    assert_eq!(diagnostics(&doc, "test_crashes"), ["SERVICE_CRASHED"]);
    assert_eq!(
        diagnostics(&doc, "test_checks_nothing"),
        ["TEST_NO_ASSERTIONS"]
    );
    assert!(
        out.stderr
            .contains("FAULT_FIRED_BUT_SUCCESS: app write was denied"),
        "{}",
        out.stderr
    );
    for (name, src, code) in [
        (
            "hc",
            "service('a', 'sleep', interface('m', 'tcp', 7400), args = ['60'], healthcheck = tcp('localhost:7400', timeout = '200ms'))\ndef test_t():\n    pass\n",
            "HEALTHCHECK_TIMEOUT",
        ),
        (
            "exit",
            "service('a', 'sh', interface('m', 'tcp', 7400), args = ['-c', 'exit 4'], healthcheck = tcp('localhost:7400'))\ndef test_t():\n    pass\n",
            "SERVICE_CRASHED",
        ),
    ] {
        let (spec, _rm) = spec_file(name, src);
        let out = test_cmd(&[spec.to_str().unwrap(), "--format", "json"]);
        assert_eq!(out.code, 2);
        let doc = json(&out);
        assert_eq!(diagnostics(&doc, "test_t"), [code]);
        assert_eq!(doc["tests"][0]["failure_type"], "service_start");
    }
}

#[test]
fn the_same_seed_reproduces_the_normalized_trace() {
    let scratch = common::Scratch::new("norm");
    let dir = scratch.0.clone();
    let (a, b, s) = (dir.join("a.norm"), dir.join("b.norm"), dir.join("t.shiviz"));
    for (path, extra) in [(&a, Some(&s)), (&b, None)] {
        let mut args = vec![
            "examples/faultbox.star",
            "--seed",
            "3",
            "--normalize",
            path.to_str().unwrap(),
        ];
        if let Some(s) = extra {
            args.extend(["--shiviz", s.to_str().unwrap()]);
        }
        assert_eq!(test_cmd(&args).code, 0);
    }
    let norm = std::fs::read_to_string(&a).unwrap();
    assert_eq!(norm, std::fs::read_to_string(&b).unwrap(), "byte for byte");
    assert!(
        norm.starts_with(
            "# faultbox normalized trace v1\ntest test_disk_full_then_recovers seed=3 pass\n"
        ),
        "{norm}"
    );
    assert!(
        !norm.contains("pid=") && !norm.contains("duration_ms=") && !norm.contains("socket:[1"),
        "volatile values left in"
    );
    assert!(norm.contains("$TMPDIR/inventory.wal"));

    let diff = |x: &Path, y: &Path| {
        let o = Command::new(faultbox())
            .arg("diff")
            .arg(x)
            .arg(y)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(
        diff(&a, &b),
        (Some(0), "traces are identical\n".to_string())
    );
    std::fs::write(
        &b,
        norm.replace("decision=deny(no space left on device)", "decision=allow"),
    )
    .unwrap();
    let (code, text) = diff(&a, &b);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("-    syscall.fsync decision=deny(no space left on device)")
            && text.contains("+    syscall.fsync decision=allow"),
        "{text}"
    );
    assert_eq!(diff(&a, &dir.join("missing")).0, Some(1));

    let shiviz = std::fs::read_to_string(&s).unwrap();
    let mut lines = shiviz.lines();
    assert_eq!(lines.next(), Some(r"(?<host>\S+) (?<clock>\{.*\})"));
    assert_eq!(lines.next(), Some("=== (?<trace>.*) ==="));
    assert_eq!(lines.next(), Some(""));
    assert!(lines
        .next()
        .unwrap()
        .starts_with("=== test_disk_full_then_recovers seed=3 ==="));
    let (host, clock) = lines.next().unwrap().split_once(' ').unwrap();
    assert_eq!(host, "inventory");
    let clock: serde_json::Value = serde_json::from_str(clock).unwrap();
    assert_eq!(clock["inventory"], 1);
    assert_eq!(lines.next(), Some("lifecycle.started"));
}

#[test]
fn composition_runs_scenarios_assumptions_and_the_matrix() {
    let out = test_cmd(&["examples/composition.star", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = json(&out);
    let names: Vec<&str> = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "test_order_flow",
        "test_stock_check",
        "test_order_inventory_down",
        "test_matrix_order_flow_inventory_down",
        "test_matrix_order_flow_disk_full",
        "test_matrix_order_flow_slow_disk",
        "test_matrix_stock_check_inventory_down",
        "test_matrix_stock_check_slow_disk",
        "test_inline_monitor",
        "test_composed_assumption",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.contains(&"test_matrix_stock_check_disk_full"),
        "excluded cell ran"
    );
    let flow = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test_order_flow")
        .unwrap();
    // The scenario returned its response: an object of the response's attributes.
    let response = &flow["return_value"];
    assert_eq!(response["status"], 200, "{flow}");
    assert_eq!(response["ok"], true, "{flow}");
    assert_eq!(response["data"]["status"], "confirmed", "{flow}");
    assert!(
        diagnostics(&doc, "test_order_flow").is_empty(),
        "a probe is not meant to assert"
    );
    let m = &doc["matrix"];
    assert_eq!(
        m["scenarios"],
        serde_json::json!(["order_flow", "stock_check"])
    );
    assert_eq!(
        m["faults"],
        serde_json::json!(["inventory_down", "disk_full", "slow_disk"])
    );
    assert_eq!(
        (m["passed"].as_u64(), m["failed"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(m["cells"].as_array().unwrap().len(), 6);
    assert!(
        out.stderr
            .contains("Fault Matrix: 2 scenarios × 3 faults = 5 cells"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("— (excluded)") && out.stderr.contains("Result: 5/5 passed"));
    // The composed assumption installed both children's faults.
    let cascade = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test_composed_assumption")
        .unwrap();
    let kinds: Vec<&str> = cascade["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["syscall"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["connect", "fsync"]);
    // One cell run alone: the others are listed as not run here, the excluded one as
    // excluded, and the assumption's faults name the fault_assumption() line.
    let one = test_cmd(&[
        "examples/composition.star",
        "--test",
        "matrix_order_flow_disk_full",
        "--format",
        "json",
    ]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    let doc = json(&one);
    let results: Vec<(&str, &str, &str)> = doc["matrix"]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["scenario"].as_str().unwrap(),
                c["fault"].as_str().unwrap(),
                c["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("order_flow", "inventory_down", "skip"),
            ("order_flow", "disk_full", "pass"),
            ("order_flow", "slow_disk", "skip"),
            ("stock_check", "inventory_down", "skip"),
            ("stock_check", "disk_full", "excluded"),
            ("stock_check", "slow_disk", "skip"),
        ]
    );
    let fault = &doc["tests"][0]["faults"][0];
    let source = std::fs::read_to_string(root().join("examples/composition.star")).unwrap();
    let line = fault["line"].as_u64().unwrap() as usize;
    assert_eq!(fault["file"], "examples/composition.star", "{fault}");
    assert!(
        source
            .lines()
            .nth(line - 1)
            .unwrap()
            .contains("fault_assumption(\"disk_full\""),
        "line {line} of composition.star is not the assumption: {fault}"
    );
}

/// The agent loop on the JSON document: a failed run says how it failed, how to
/// replay it, and which spec line to change; a passing one returns its value as JSON.
#[test]
fn failures_name_the_spec_line_to_change() {
    let src = r#"load('LOAD', 'orders', 'inventory', 'place')
def test_wrong_call():
    def scenario():
        assert_eq(place().status, 500)
    fault(inventory, unlink = deny('EIO'), run = scenario)
def test_bad_step():
    inventory.send(data = 'PING', nosuch = 1)
def test_returns():
    resp = place()
    assert_eq(resp.status, 200)
    return {'status': resp.status, 'order': resp.data, 'ok': resp.ok, 'none': None}
def test_nothing():
    place()
"#;
    let load = root().join("examples/faultbox.star");
    let (spec, _rm) = spec_file("lines", &src.replace("LOAD", load.to_str().unwrap()));
    let spec = spec.to_str().unwrap();
    let out = test_cmd(&[spec, "--format", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = json(&out);
    let find = |doc: &serde_json::Value, n: &str| {
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in {doc}"))
            .clone()
    };
    // The fault on a call inventory never makes: the scenario's assertion fails, and
    // the diagnostic names the fault() line and what to change there.
    let wrong = find(&doc, "test_wrong_call");
    assert_eq!(wrong["result"], "fail");
    assert_eq!(wrong["failure_type"], "assertion", "{wrong}");
    assert!(
        wrong["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{spec}:4: assert_eq")),
        "{wrong}"
    );
    assert!(wrong.get("return_value").is_none(), "{wrong}");
    let d = &wrong["diagnostics"][0];
    assert_eq!(d["code"], "FAULT_NOT_FIRED", "{wrong}");
    assert_eq!(d["severity"], "warning");
    assert_eq!(
        (d["file"].as_str(), d["line"].as_u64()),
        (Some(spec), Some(5))
    );
    assert!(
        d["suggestion"]
            .as_str()
            .unwrap()
            .contains(&format!("change unlink= (or its path glob) at {spec}:5")),
        "{d}"
    );
    let fault = &wrong["faults"][0];
    assert_eq!(
        (&fault["syscall"], &fault["hits"], &fault["line"]),
        (
            &serde_json::json!("unlink"),
            &serde_json::json!(0),
            &serde_json::json!(5)
        )
    );
    assert!(
        out.stderr.contains(&format!(
            "{spec}:5: FAULT_NOT_FIRED: fault unlink=deny(EIO)"
        )),
        "{}",
        out.stderr
    );
    // A step that cannot run is an error, located too.
    let bad = find(&doc, "test_bad_step");
    assert_eq!(bad["failure_type"], "error", "{bad}");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{spec}:7: ")),
        "{bad}"
    );
    // A passing run: its return value as JSON, and no failure fields.
    let returns = find(&doc, "test_returns");
    assert_eq!(returns["result"], "pass");
    assert_eq!(
        returns["return_value"],
        serde_json::json!({"status": 200, "ok": true, "none": null,
                           "order": {"status": "confirmed", "sku": "widget", "qty": 1,
                                     "remaining": 99}}),
        "{returns}"
    );
    for key in ["reason", "failure_type"] {
        assert!(returns.get(key).is_none(), "{key}: {returns}");
    }
    assert_eq!(
        returns["replay_command"],
        format!("faultbox test {spec} --test returns --seed 0")
    );
    let nothing = find(&doc, "test_nothing");
    let d = &nothing["diagnostics"][0];
    assert_eq!(d["code"], "TEST_NO_ASSERTIONS", "{nothing}");
    assert_eq!(d["line"], 12, "the def's line: {d}");
    assert!(nothing.get("return_value").is_none(), "it returned None");
    // replay_command is the whole command: run as given, it fails the same way.
    let replay = wrong["replay_command"].as_str().unwrap();
    assert_eq!(
        replay,
        format!("faultbox test {spec} --test wrong_call --seed 0")
    );
    let mut args: Vec<&str> = replay.split_whitespace().skip(2).collect();
    args.extend(["--format", "json"]);
    let again = test_cmd(&args);
    assert_eq!(again.code, 2, "{}", again.stderr);
    let again = json(&again);
    assert_eq!(again["tests"].as_array().unwrap().len(), 1);
    let replayed = find(&again, "test_wrong_call");
    assert_eq!(replayed["diagnostics"], wrong["diagnostics"]);
    assert_eq!(replayed["failure_type"], "assertion");
    // The schema catches drift: this document matched it (json() validates); each of
    // these changes must not.
    let index = |name: &str| {
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .position(|t| t["name"] == name)
            .unwrap()
    };
    let (failed, passed) = (index("test_wrong_call"), index("test_returns"));
    type Drift = Box<dyn Fn(&mut serde_json::Value)>;
    let drifts: [(&str, Drift); 8] = [
        ("a new summary field", Box::new(|d| d["extra"] = 1.into())),
        (
            "a new run field",
            Box::new(move |d| d["tests"][passed]["why"] = "x".into()),
        ),
        (
            "a retyped seed",
            Box::new(move |d| d["tests"][passed]["seed"] = "0".into()),
        ),
        (
            "a failure type the reference lacks",
            Box::new(move |d| d["tests"][failed]["failure_type"] = "monitor_violation".into()),
        ),
        (
            "a run without its replay command",
            Box::new(move |d| {
                d["tests"][passed]
                    .as_object_mut()
                    .unwrap()
                    .remove("replay_command");
            }),
        ),
        (
            "a reason on a passing run",
            Box::new(move |d| d["tests"][passed]["reason"] = serde_json::Value::Null),
        ),
        (
            "a diagnostic with a line and no file",
            Box::new(move |d| {
                d["tests"][failed]["diagnostics"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("file");
            }),
        ),
        (
            "an event with a bad timestamp",
            Box::new(move |d| d["tests"][passed]["events"][0]["timestamp"] = "yesterday".into()),
        ),
    ];
    for (what, change) in drifts {
        let mut drifted = doc.clone();
        change(&mut drifted);
        assert!(
            !common::violations(common::Schema::TestResults, &drifted).is_empty(),
            "the schema let {what} through"
        );
    }
}

#[test]
fn monitors_fail_tests_as_violations_naming_the_event() {
    let src = "load('LOAD', 'orders', 'inventory', 'place')\n\
def flow():\n    return place()\n\
def syncs(e):\n    assert_true(False, 'WAL synced')\n\
watch = monitor(syncs, service = 'inventory', syscall = 'fsync')\n\
slow = fault_assumption('slow', target = inventory, fsync = delay('1ms'), monitors = [watch])\n\
fault_scenario('watched', scenario = flow, faults = slow, expect = lambda r: fail('expect must not run'))\n\
def test_bad_callback():\n    monitor(lambda e: e['no_such_key'], service = 'inventory', syscall = 'fsync')\n    place()\n";
    let load = root().join("examples/faultbox.star");
    let (spec, _rm) = spec_file("monitor", &src.replace("LOAD", load.to_str().unwrap()));
    let out = test_cmd(&[spec.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = json(&out);
    let find = |n: &str| {
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()
            .clone()
    };
    let watched = find("test_watched");
    // The reference's failure types: a monitor's violated invariant is an assertion.
    assert_eq!(watched["failure_type"], "assertion", "{watched}");
    let reason = watched["reason"].as_str().unwrap();
    assert!(
        reason.contains("monitor violation at event #")
            && reason.contains("(inventory syscall.fsync)")
            && reason.contains("WAL synced"),
        "{reason}"
    );
    let bad = find("test_bad_callback");
    assert_eq!(bad["failure_type"], "error", "{bad}");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("monitor callback failed at event #"),
        "{bad}"
    );
}

#[test]
fn bad_composition_is_refused_at_load() {
    let head = "a = service('a', 'sleep', interface('m', 'tcp', 7400), args = ['60'])\ndef s1():\n    pass\ndef s2():\n    pass\nf1 = fault_assumption('f1', target = a, fsync = deny('EIO'))\nf2 = fault_assumption('f2', target = a, write = deny('EIO'))\n";
    let cases = [
        ("override", "fault_matrix(scenarios = [s1], faults = [f1], overrides = {(s2, f1): lambda r: None})\n", "overrides= names the pair (s2, f1) that is not in scenarios= × faults="),
        ("exclude", "fault_matrix(scenarios = [s1], faults = [f1], exclude = [(s1, f2)])\n", "exclude= names the pair (s1, f2) that is not in scenarios= × faults="),
        ("kwarg", "fault_assumption('f3', target = a, nosuch = deny('EIO'))\n", "unknown syscall or op \"nosuch\""),
        ("rules", "fault_assumption('f4', target = a, rules = [])\n", "rules= are protocol-level and need an interface as target="),
        ("lambda", "scenario(lambda: None)\n", "needs a named function"),
        ("dup", "scenario(s1)\ndef test_s1():\n    pass\n", "test \"test_s1\" is defined twice"),
    ];
    for (name, tail, expect) in cases {
        let (spec, _rm) = spec_file(name, &format!("{head}{tail}"));
        let out = test_cmd(&[spec.to_str().unwrap(), "--dry-run"]);
        assert_eq!(out.code, 1, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(expect),
            "{name}: expected {expect:?} in {}",
            out.stderr
        );
        assert!(out.stderr.contains("spec.star"), "{name}: {}", out.stderr);
    }
}

/// A copy of the example specs in a scratch directory, with binaries by absolute path.
fn example_copy(name: &str) -> (PathBuf, impl Drop) {
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("fbtest-gen-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["faultbox.star", "composition.star", "common.star"] {
        let mut text = std::fs::read_to_string(root().join("examples").join(f)).unwrap();
        if f == "common.star" {
            let bin = root().join("target/debug/");
            text = text.replace(
                "BIN = \"../target/debug/\"",
                &format!("BIN = {:?}", bin.to_str().unwrap()),
            );
        }
        std::fs::write(dir.join(f), text).unwrap();
    }
    (dir.clone(), Rm(dir))
}

fn generate(args: &[&str]) -> Out {
    faultbox_in(&root(), "generate", args)
}

#[test]
fn generated_specs_run() {
    let (dir, _rm) = example_copy("default");
    let spec = dir.join("composition.star");
    let out = generate(&[spec.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let per = dir.join("order_flow.faults.star");
    let text = std::fs::read_to_string(&per).unwrap();
    assert!(dir.join("stock_check.faults.star").is_file());
    assert!(
        text.contains("load(\"composition.star\", \"order_flow\")"),
        "{text}"
    );
    assert!(
        text.contains("load(\"faultbox.star\", \"inventory\", \"orders\")"),
        "{text}"
    );
    for name in [
        "inventory_down",
        "inventory_slow",
        "inventory_reset",
        "inventory_disk_eio",
        "inventory_disk_full",
        "inventory_slow_fsync",
    ] {
        assert!(
            text.contains(&format!("{name} = fault_assumption({name:?},")),
            "{name} in {text}"
        );
    }
    assert!(text.contains("def test_partition_orders_inventory_order_flow():"));
    let run = test_cmd(&[per.to_str().unwrap(), "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = json(&run);
    assert_eq!(doc["pass"], 7, "6 matrix cells and a partition");
    assert_eq!(doc["matrix"]["passed"], 6);

    let single = dir.join("all.star");
    let out = generate(&[
        spec.to_str().unwrap(),
        "--output",
        single.to_str().unwrap(),
        "--category",
        "network",
        "--scenario",
        "stock_check",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(&single).unwrap();
    assert!(
        text.contains("inventory_reset")
            && !text.contains("disk_eio")
            && !text.contains("order_flow"),
        "{text}"
    );
}

#[test]
fn generate_lists_and_refuses() {
    let spec = "examples/composition.star";
    let out = generate(&[
        spec,
        "--dry-run",
        "--service",
        "inventory",
        "--category",
        "disk",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "order_flow: inventory_disk_full (disk) target=inventory write=deny(\"ENOSPC\")"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("2 scenarios × 3 faults"),
        "{}",
        out.stdout
    );
    for (args, expect) in [
        (
            vec![spec, "--scenario", "nope"],
            "--scenario nope: no scenario() of that name",
        ),
        (
            vec![spec, "--service", "orders"],
            "--service orders: no service depends on it",
        ),
        (
            vec![spec, "--category", "cpu"],
            "--category cpu: expected network, disk or all",
        ),
        (
            vec!["examples/faultbox.star"],
            "no scenario() registrations",
        ),
    ] {
        let out = generate(&args);
        assert_eq!(out.code, 1, "{args:?}");
        assert!(out.stderr.contains(expect), "{args:?}: {}", out.stderr);
    }
}

fn init(dir: &Path, args: &[&str]) -> Out {
    faultbox_in(dir, "init", args)
}

#[test]
fn init_writes_specs_that_run() {
    let (dir, _rm) = spec_file("init", "");
    let dir = dir.parent().unwrap().to_path_buf();
    let inventory = root().join("target/debug/inventory");
    let orders = root().join("target/debug/orders");
    let tcp = dir.join("tcp.star");
    let out = init(
        &dir,
        &[
            "--name",
            "inventory",
            "--port",
            "5432",
            "--protocol",
            "tcp",
            "--output",
            tcp.to_str().unwrap(),
            inventory.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = test_cmd(&[tcp.to_str().unwrap(), "--format", "json"]);
    assert_eq!(
        run.code,
        0,
        "{}\n{}",
        run.stderr,
        std::fs::read_to_string(&tcp).unwrap()
    );
    assert_eq!(json(&run)["pass"], 3);
    let http = init(&dir, &["--name", "orders", orders.to_str().unwrap()]);
    assert_eq!(http.code, 0);
    assert!(
        http.stdout
            .contains("healthcheck = http(\"localhost:8080/health\")"),
        "{}",
        http.stdout
    );
    let spec = dir.join("http.star");
    std::fs::write(&spec, &http.stdout).unwrap();
    let run = test_cmd(&[spec.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (args, expect) in [
        (
            vec!["--protocol", "udp", "x"],
            "--protocol udp: expected http or tcp",
        ),
        (vec!["--port", "70000", "x"], "--port 70000"),
        (
            vec![],
            "needs a binary, --from-compose, --vscode or --claude",
        ),
    ] {
        let out = init(&dir, &args);
        assert_eq!(out.code, 1, "{args:?}");
        assert!(out.stderr.contains(expect), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn init_from_compose() {
    let (dir, _rm) = spec_file("compose", "");
    let dir = dir.parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  api:\n    build: ./api\n    ports: [\"8080:8080\"]\n    depends_on: [db, cache]\n    environment:\n      DB_URL: postgres://db/app\n  db:\n    image: postgres:16-alpine\n    environment: [\"POSTGRES_PASSWORD=test\"]\n  cache:\n    image: redis:7\n    ports:\n      - \"6379\"\n",
    )
    .unwrap();
    let out = init(&dir, &["--from-compose"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let spec = &out.stdout;
    let (cache, db, api) = (
        spec.find("cache = service(").unwrap(),
        spec.find("db = service(").unwrap(),
        spec.find("api = service(").unwrap(),
    );
    assert!(cache < api && db < api, "dependencies first: {spec}");
    assert!(
        spec.contains("interface(\"main\", \"postgres\", 5432)")
            && spec.contains("image = \"postgres:16-alpine\""),
        "{spec}"
    );
    assert!(
        spec.contains("interface(\"main\", \"redis\", 6379)")
            && spec.contains("healthcheck = ready(timeout = \"60s\")"),
        "{spec}"
    );
    assert!(
        spec.contains("build = \"./api\"") && spec.contains("depends_on = [db, cache]"),
        "{spec}"
    );
    assert!(
        spec.contains("\"POSTGRES_PASSWORD\": \"test\"")
            && spec.contains("healthcheck = tcp(\"localhost:8080\", timeout = \"60s\")"),
        "{spec}"
    );
    assert!(spec.contains("scenario(happy_path)"), "{spec}");
    // It loads; --dry-run checks what can be checked without Docker: the build
    // directory needs a Dockerfile.
    let file = dir.join("from-compose.star");
    std::fs::write(&file, spec).unwrap();
    let dry = test_cmd(&[file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 1);
    assert!(
        dry.stderr.contains("service \"api\": build=\"./api\"")
            && dry.stderr.contains("has no Dockerfile"),
        "{}",
        dry.stderr
    );
    std::fs::create_dir_all(dir.join("api")).unwrap();
    std::fs::write(dir.join("api/Dockerfile"), "FROM scratch\n").unwrap();
    let dry = test_cmd(&[file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    std::fs::write(dir.join("bad.yml"), "services:\n  a: [1, 2\n").unwrap();
    let bad = init(&dir, &["--from-compose", "bad.yml"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("bad.yml:") && bad.stderr.contains("not valid YAML"),
        "{}",
        bad.stderr
    );
}

#[test]
fn init_vscode_and_claude() {
    let (dir, _rm) = spec_file("editors", "");
    let dir = dir.parent().unwrap().to_path_buf();
    assert_eq!(init(&dir, &["--vscode"]).code, 0);
    let stubs = std::fs::read_to_string(dir.join("typings/faultbox.pyi")).unwrap();
    for name in faultbox_spec::loader::builtin_names() {
        assert!(
            stubs.contains(&format!("def {name}(")),
            "no stub for {name}"
        );
    }
    assert!(dir.join(".vscode/settings.json").is_file());
    assert_eq!(init(&dir, &["--claude"]).code, 0);
    for f in ["fault-test.md", "fault-generate.md", "fault-diagnose.md"] {
        assert!(dir.join(".claude/commands").join(f).is_file(), "{f}");
    }
    let mcp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["faultbox"]["args"][0], "mcp");
    let again = init(&dir, &["--claude"]);
    assert_eq!(again.code, 1, "existing files are not overwritten");
    assert!(again.stderr.contains("exists; not overwriting it"));
}

#[test]
fn virtual_time_makes_sleeps_and_delays_instant() {
    let start = std::time::Instant::now();
    let out = test_cmd(&[
        "coordinator/tests/specs/vtime.star",
        "--virtual-time",
        "--format",
        "json",
    ]);
    let elapsed = start.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Without virtual time: 2 × 3 s startup sleeps, a 10 s sleep and a 2 s delay.
    assert!(
        elapsed < std::time::Duration::from_secs(4),
        "took {elapsed:?}"
    );
    let doc = json(&out);
    for t in doc["tests"].as_array().unwrap() {
        assert!(t["duration_ms"].as_u64().unwrap() < 1500, "{}", t["name"]);
    }
    let delayed = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test_delays_are_instant")
        .unwrap();
    assert_eq!(delayed["faults"][0]["hits"], 1);
    let events = delayed["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["label"] == "virtual time"),
        "time calls are in the trace"
    );
}

#[test]
fn fault_scenario_timeouts_cut_steps_off() {
    let src = "load('LOAD', 'inventory', 'place')\n\
def two_orders():\n    first = place()\n    return [first, place()]\n\
slow = fault_assumption('slow', target = inventory, fsync = delay('1s'))\n\
fault_scenario('too_slow', scenario = two_orders, faults = slow, timeout = '300ms')\n";
    let load = root().join("examples/faultbox.star");
    let (spec, _rm) = spec_file("timeout", &src.replace("LOAD", load.to_str().unwrap()));
    let start = std::time::Instant::now();
    let out = test_cmd(&[spec.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let t = &json(&out)["tests"][0];
    assert_eq!(t["failure_type"], "timeout", "{t}");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("the test ran past its time limit of 300ms"),
        "{t}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_millis(2500),
        "the first step was cut off at the deadline"
    );
}

#[test]
fn parallel_orders_calls_by_seed_and_explores_every_ordering() {
    let spec = "coordinator/tests/specs/race.star";
    let race = |args: &[&str]| {
        let mut a = vec![spec, "--test", "race", "--format", "json"];
        a.extend_from_slice(args);
        let out = test_cmd(&a);
        assert_eq!(out.code, 0, "{}", out.stderr);
        json(&out)
    };
    // Whatever order the seed picks, exactly one order wins (the test asserts it);
    // which one is the seed's choice, and the same seed replays the same trace.
    let scratch = common::Scratch::new("race");
    let dir = scratch.0.clone();
    let mut winners = std::collections::BTreeSet::new();
    for s in 0..4 {
        let mut traces = Vec::new();
        let mut values = Vec::new();
        for i in 0..2 {
            let path = dir.join(format!("{s}-{i}.norm"));
            let doc = race(&[
                "--seed",
                &s.to_string(),
                "--normalize",
                path.to_str().unwrap(),
            ]);
            let t = &doc["tests"][0];
            assert_eq!(t["result"], "pass");
            assert!(t["held_calls"].as_u64().unwrap() >= 2, "{t}");
            values.push(t["return_value"].to_string());
            traces.push(std::fs::read_to_string(&path).unwrap());
        }
        assert_eq!(values[0], values[1], "seed {s} picks the same winner");
        assert_eq!(
            traces[0], traces[1],
            "seed {s} replays the trace byte for byte"
        );
        winners.insert(values[0].clone());
    }
    assert_eq!(winners.len(), 2, "either order can win: {winners:?}");
    // --explore=all runs each ordering of the K held calls exactly once: K! runs,
    // and between them they find both winners.
    let all = race(&["--explore", "all"]);
    let runs = all["tests"].as_array().unwrap();
    let k = runs[0]["held_calls"].as_u64().unwrap();
    let expected: u64 = (1..=k).product();
    assert_eq!(runs.len() as u64, expected, "K = {k}");
    let mut seen: Vec<u64> = runs
        .iter()
        .map(|t| t["interleaving"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..expected).collect::<Vec<_>>());
    let found: std::collections::BTreeSet<String> =
        runs.iter().map(|t| t["return_value"].to_string()).collect();
    assert_eq!(found, winners);
    let sample = race(&["--explore", "sample", "--runs", "4"]);
    assert_eq!(sample["tests"].as_array().unwrap().len(), 4);
}

#[test]
fn parallel_never_strands_calls() {
    let spec = "coordinator/tests/specs/race.star";
    let out = test_cmd(&[spec, "--format", "json"]);
    let doc = json(&out);
    let find = |n: &str| {
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(find("test_unordered")["result"], "pass", "{}", out.stderr);
    assert_eq!(
        find("test_unordered")["held_calls"],
        0,
        "nondet services are not held"
    );
    let failing = find("test_failing_branch");
    assert_eq!(failing["result"], "fail");
    assert!(failing["reason"]
        .as_str()
        .unwrap()
        .contains("a branch failed"));
    assert_eq!(
        find("test_reads_inside_a_branch")["result"],
        "pass",
        "{}",
        out.stderr
    );
    assert_eq!(
        find("test_tcp_branches")["result"],
        "pass",
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("4 passed, 1 failed"), "{}", out.stderr);
    let none = test_cmd(&[
        "examples/faultbox.star",
        "--test",
        "tcp_protocol",
        "--explore",
        "all",
    ]);
    assert_eq!(none.code, 1);
    assert!(
        none.stderr
            .contains("--explore: test_tcp_protocol does not call parallel()"),
        "{}",
        none.stderr
    );
}

#[test]
fn slots_run_side_by_side_and_report_like_one_slot() {
    let spec = "coordinator/tests/specs/seeds.star";
    let run = |slots: &str| {
        let out = test_cmd(&[spec, "--runs", "12", "--slots", slots, "--format", "json"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        json(&out)
    };
    let summary = common::summary;
    let one = run("1");
    let four = run("4");
    let runs = summary(&one);
    assert_eq!(runs, summary(&four), "same runs, same order, same results");
    // test_sometimes fails at some seed after 0: the runs before it are all there and
    // nothing after it, even though later seeds were already running beside it.
    let sometimes: Vec<_> = runs.iter().filter(|r| r.0 == "test_sometimes").collect();
    let last = sometimes.last().unwrap();
    assert_eq!(last.2, "fail");
    assert!(last.1 > 0 && last.1 < 11, "{sometimes:?}");
    assert!(sometimes[..sometimes.len() - 1]
        .iter()
        .all(|r| r.2 == "pass"));
    assert_eq!(runs.iter().filter(|r| r.0 == "test_always").count(), 12);
    // With four slots, runs overlapped in time.
    let spans: Vec<(String, String)> = four["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ev = t["events"].as_array().unwrap();
            let ts = |e: &serde_json::Value| e["timestamp"].as_str().unwrap().to_string();
            (ts(&ev[0]), ts(ev.last().unwrap()))
        })
        .collect();
    let overlapping = spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(overlapping, "runs went side by side: {spans:?}");
}

#[test]
fn partitions_shard_the_tests_and_junit_lists_every_run() {
    let spec = "examples/faultbox.star";
    let all: Vec<String> = json(&test_cmd(&[spec, "--format", "json"]))["tests"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    let scratch = common::Scratch::new("junit");
    for kind in ["hash", "slice"] {
        let mut ran: Vec<String> = Vec::new();
        for k in 1..=3 {
            let xml = scratch.0.join(format!("{kind}{k}.xml"));
            let out = test_cmd(&[
                spec,
                "--partition",
                &format!("{kind}:{k}/3"),
                "--format",
                "json",
                "--junit",
                xml.to_str().unwrap(),
            ]);
            assert_eq!(out.code, 0, "{}", out.stderr);
            let doc = json(&out);
            let tests = doc["tests"].as_array().unwrap();
            let names: Vec<String> = tests
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(names, all, "every test listed, in spec order");
            let skipped = tests.iter().filter(|t| t["result"] == "skip").count();
            assert_eq!(doc["skip"], skipped);
            ran.extend(
                tests
                    .iter()
                    .filter(|t| t["result"] == "pass")
                    .map(|t| t["name"].as_str().unwrap().to_string()),
            );
            let xml = std::fs::read_to_string(&xml).unwrap();
            assert_eq!(xml.matches("<testcase ").count(), all.len(), "{xml}");
            assert_eq!(xml.matches("<skipped ").count(), skipped, "{xml}");
            assert!(xml.contains(r#"<property name="executor" value="local"/>"#));
            assert!(out
                .stderr
                .contains(&format!("skipped (outside shard {kind}:{k}/3)")));
        }
        ran.sort();
        let mut want = all.clone();
        want.sort();
        assert_eq!(ran, want, "{kind}: each test runs in exactly one shard");
    }
    // A failing run is a failure testcase with its seed.
    let xml = scratch.0.join("seeds.xml");
    let out = test_cmd(&[
        "coordinator/tests/specs/seeds.star",
        "--test",
        "sometimes",
        "--runs",
        "8",
        "--junit",
        xml.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 2);
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    assert!(
        xml.contains(r#"<property name="seed" value="4"/>"#),
        "{xml}"
    );
    for bad in ["hash:0/2", "slice:3/2", "mod:1/2", "hash:1"] {
        let out = test_cmd(&[spec, "--partition", bad]);
        assert_eq!(out.code, 1, "{bad}");
        assert!(
            out.stderr.contains("is not hash:K/N or slice:K/N"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_closed_stdout_does_not_crash_the_json_output() {
    // `faultbox test --format json | head`: the reader is gone before the JSON comes.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The listings of --dry-run and generate --dry-run, likewise.
    for args in [
        &[
            "test",
            "coordinator/tests/specs/seeds.star",
            "--test",
            "always",
            "--format",
            "json",
        ][..],
        &["test", "examples/faultbox.star", "--dry-run"][..],
        &["generate", "examples/composition.star", "--dry-run"][..],
    ] {
        let mut child = Command::new(faultbox())
            .current_dir(root())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_no_services_left();
}

#[test]
fn progress_is_a_bar_on_a_terminal_and_lines_otherwise() {
    // On a terminal (through script(1)): the bar, and the summary.
    let cmd = format!(
        "{} test coordinator/tests/specs/seeds.star --test always --runs 6",
        faultbox().display()
    );
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("6/6 runs, 0 failed"), "{text}");
    assert!(text.contains("6 passed, 0 failed"), "{text}");
    // Not on a terminal: a plain line every 5 s; the JSON on stdout is untouched.
    drop(_serial);
    let out = test_cmd(&[
        "coordinator/tests/specs/seeds.star",
        "--test",
        "always",
        "--runs",
        "60",
        "--slots",
        "1",
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("progress: ") && l.contains(" runs, 0 failed, ")),
        "{}",
        out.stderr
    );
    assert_eq!(json(&out)["tests"].as_array().unwrap().len(), 60);
}

#[test]
fn ctrl_c_cancels_running_jobs_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let child = Command::new(faultbox())
        .current_dir(root())
        .args([
            "test",
            "coordinator/tests/specs/slow.star",
            "--runs",
            "4",
            "--slots",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once both slots have their echo service up, interrupt.
    common::wait_processes("echo_svc.py", |n| n >= 2, 20, "the services did not start");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: the running jobs were cancelled"),
        "{stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "not a minute: {:?}",
        t.elapsed()
    );
    assert_no_services_left();
}

/// Runs `faultbox <sub> <args>` in `dir`, one run at a time, and checks that nothing
/// of the run is left behind.
fn serial_in(dir: &Path, sub: &str, args: &[&str]) -> Out {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let o = faultbox_in(dir, sub, args);
    assert_no_services_left();
    o
}

/// The form every example uses: the spec's bare file name, from the spec's own folder.
#[test]
fn a_bare_spec_name_works_from_its_folder() {
    let examples = root().join("examples");
    let out = serial_in(
        &examples,
        "test",
        &["faultbox.star", "--test", "happy_path", "--format", "json"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out)["pass"], 1);
    let dry = serial_in(&examples, "test", &["faultbox.star", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("Dry-run: loaded faultbox.star"));

    // generate, then run what it wrote, from a copy whose binaries are where
    // common.star says (../target/debug/).
    let scratch = common::Scratch::new("bare-name");
    let folder = scratch.0.join("examples");
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink(root().join("target"), scratch.0.join("target")).unwrap();
    for f in ["faultbox.star", "composition.star", "common.star"] {
        std::fs::copy(examples.join(f), folder.join(f)).unwrap();
    }
    let gen = serial_in(&folder, "generate", &["composition.star"]);
    assert_eq!(gen.code, 0, "{}", gen.stderr);
    let run = serial_in(
        &folder,
        "test",
        &["stock_check.faults.star", "--format", "json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(json(&run)["pass"].as_u64().unwrap() >= 3, "{}", run.stdout);

    // init, then run what it wrote.
    let init = serial_in(
        &folder,
        "init",
        &[
            "--name",
            "inventory",
            "--port",
            "5432",
            "--protocol",
            "tcp",
            "--output",
            "svc.star",
            "../target/debug/inventory",
        ],
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let run = serial_in(&folder, "test", &["svc.star", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)["pass"], 3);
}

/// A syscall an assertion or query names literally is observed for the whole test;
/// one it names some other way is refused, never looked at in vain.
#[test]
fn queries_observe_the_syscalls_they_name() {
    let out = test_cmd(&["coordinator/tests/specs/queries.star", "--format", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = json(&out);
    let result = |name: &str| {
        let t = doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} ran"));
        (
            t["result"].as_str().unwrap().to_string(),
            t["failure_type"].as_str().unwrap_or("").to_string(),
            t["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    let (r, kind, why) = result("test_never_fails_when_the_call_happened");
    assert_eq!((r.as_str(), kind.as_str()), ("fail", "assertion"), "{why}");
    assert!(why.contains("syscall.openat"), "{why}");
    let (r, _, why) = result("test_eventually_and_before_see_the_calls");
    assert_eq!(r, "pass", "{why}");
    for (test, line, call, syscall) in [
        (
            "test_a_computed_syscall_is_refused",
            27,
            "assert_never()",
            "mkdirat",
        ),
        (
            "test_a_monitor_on_a_computed_syscall_is_refused",
            31,
            "monitor()",
            "unlinkat",
        ),
    ] {
        let (r, kind, why) = result(test);
        assert_eq!((r.as_str(), kind.as_str()), ("fail", "error"), "{why}");
        assert!(
            why.contains(&format!(
                "queries.star:{line}: {call}: syscall=\"{syscall}\" is not observed on service \"inventory\""
            )),
            "{why}"
        );
    }
    let (_, kind, why) = result("test_an_unknown_service_is_refused");
    assert_eq!(kind, "error");
    assert!(
        why.contains("service=\"inventroy\" matches no service"),
        "{why}"
    );
}

/// The spec reference's Quick Start, as written there, passes.
#[test]
fn the_reference_quick_start_passes() {
    let out = serial_in(
        &root().join("examples"),
        "test",
        &["quickstart.star", "--format", "json"],
    );
    let _ = std::fs::remove_file("/tmp/inventory.wal");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = json(&out);
    assert_eq!(doc["pass"], 2);
    let happy = &doc["tests"].as_array().unwrap()[0];
    assert_eq!(happy["name"], "test_happy_path");
    assert!(
        happy["events"].as_array().unwrap().iter().any(|e| {
            e["service"] == "inventory"
                && e["event_type"] == "syscall.openat"
                && e["fields"]["path"] == "/tmp/inventory.wal"
        }),
        "the WAL's openat is in the trace"
    );
}

/// `init` and `generate` never write over a file, or through a symlink, unless
/// `--force`; with it, a symlink is replaced and what it pointed at is left alone.
#[test]
fn init_and_generate_never_overwrite_without_force() {
    let (dir, _rm) = example_copy("force");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "keep").unwrap();
    let link = dir.join("link.star");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  db:\n    image: redis:7\n",
    )
    .unwrap();
    let spec = dir.join("faultbox.star");
    let before = std::fs::read_to_string(&spec).unwrap();
    let bin = root().join("target/debug/inventory");
    let bin = bin.to_str().unwrap();
    for target in ["faultbox.star", "link.star"] {
        for args in [
            vec!["--output", target, bin],
            vec!["--from-compose", "docker-compose.yml", "--output", target],
        ] {
            let out = init(&dir, &args);
            assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
            assert!(
                out.stderr
                    .contains("exists; not overwriting it (--force replaces it)"),
                "{args:?}: {}",
                out.stderr
            );
        }
        let out = generate(&[
            dir.join("composition.star").to_str().unwrap(),
            "--output",
            dir.join(target).to_str().unwrap(),
        ]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("--output: "), "{}", out.stderr);
    }
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");

    // generate's default files: the second run refuses, naming the file, and writes
    // nothing; --force replaces them.
    let composition = dir.join("composition.star");
    assert_eq!(generate(&[composition.to_str().unwrap()]).code, 0);
    let per = dir.join("order_flow.faults.star");
    std::fs::write(&per, "# edited by hand\n").unwrap();
    let again = generate(&[composition.to_str().unwrap()]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("order_flow.faults.star exists"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read_to_string(&per).unwrap(), "# edited by hand\n");
    let forced = generate(&[composition.to_str().unwrap(), "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(std::fs::read_to_string(&per)
        .unwrap()
        .contains("fault_matrix("));

    let out = init(&dir, &["--output", "link.star", "--force", bin]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(std::fs::read_to_string(&link).unwrap().contains("service("));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}

/// Network namespaces are handed from one run to the next: a server that binds a
/// fixed port without SO_REUSEADDR and closes its connections first (leaving
/// TIME_WAIT on that port) still binds in every run, and runs that fail (a failing
/// body, a service that dies at start) leave nothing behind.
#[test]
fn namespaces_serve_run_after_run() {
    let server = "svc = service('svc', 'python3', interface('main', 'tcp', 7400), args = ['-c', 'import os,socket\\ns=socket.socket()\\ns.bind((\"127.0.0.1\",7400))\\ns.listen()\\nwhile True:\\n c,_=s.accept()\\n try:\\n  c.recv(64)\\n  c.sendall((os.readlink(\"/proc/self/ns/net\")+\"\\\\n\").encode())\\n except OSError:\\n  pass\\n c.close()'], healthcheck = tcp('localhost:7400'))\n";
    let (spec, _rm) = spec_file(
        "reuse",
        &format!("{server}\ndef test_reply():\n    r = svc.send(data = 'ns?')\n    assert_true(r.startswith('net:['), r)\n    return r\n\ndef test_fails():\n    svc.send(data = 'ns?')\n    fail('deliberately')\n"),
    );
    let spec = spec.to_str().unwrap();
    let (dies, _rm2) = spec_file(
        "reuse-dies",
        "svc = service('svc', 'python3', interface('main', 'tcp', 7400), args = ['-c', 'raise SystemExit(3)'], healthcheck = tcp('localhost:7400'))\n\ndef test_never_starts():\n    pass\n",
    );
    let out = test_cmd(&[dies.to_str().unwrap(), "--runs", "5"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("exited with code 3"), "{}", out.stderr);
    let out = test_cmd(&[spec, "--runs", "30", "--slots", "2", "--format", "json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = json(&out);
    let mut seen = std::collections::BTreeSet::new();
    for t in doc["tests"].as_array().unwrap() {
        match t["name"].as_str().unwrap() {
            "test_reply" => {
                assert_eq!(t["result"], "pass", "{t}");
                let ns = t["return_value"].as_str().unwrap().to_string();
                assert!(ns.starts_with("net:["), "{ns}");
                seen.insert(ns);
            }
            _ => assert_eq!(
                t["reason"].as_str().map(|r| r.contains("deliberately")),
                Some(true),
                "{t}"
            ),
        }
    }
    // 30 runs of each test: the server's namespace was one a run before had used.
    assert!(seen.len() < 30, "no namespace served twice: {seen:?}");
}
