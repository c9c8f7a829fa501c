//! No spec can crash or hang the process that evaluates it: deep nesting is refused
//! at load with its file and line, a long top level or test body is stopped at its
//! time limit or when cancelled, and Starlark memory is bounded.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultbox_shim::rule::FaultRule;
use faultbox_spec::limits::{memory, Limits};
use faultbox_spec::run::FailureType;
use faultbox_spec::world::{Event, StepCall, StepResult, World, WorldError};
use faultbox_spec::{load, Verdict};

#[global_allocator]
static ALLOC: memory::Bounded = memory::Bounded;

/// A world with no services: these bodies never reach it.
struct Empty;

impl World for Empty {
    fn step(&self, _: &StepCall) -> Result<StepResult, WorldError> {
        Err(WorldError("no services".into()))
    }
    fn fault_start(&self, _: &str, _: &[FaultRule]) -> Result<u64, WorldError> {
        Err(WorldError("no services".into()))
    }
    fn trace_start(&self, _: &str, _: &[String]) -> Result<u64, WorldError> {
        Err(WorldError("no services".into()))
    }
    fn fault_remove(&self, _: u64) -> Result<(), WorldError> {
        Ok(())
    }
    fn trace_stop(&self, _: &str) -> Result<(), WorldError> {
        Ok(())
    }
    fn fault_stop(&self, _: &str) -> Result<(), WorldError> {
        Ok(())
    }
    fn events(&self) -> Vec<Event> {
        Vec::new()
    }
}

/// A scratch spec file, removed on drop.
struct Spec(PathBuf);

impl Spec {
    fn new(name: &str, source: &str) -> Spec {
        let dir = std::env::temp_dir().join(format!("fbspec-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spec.star");
        std::fs::write(&path, source).unwrap();
        Spec(path)
    }
}

impl Drop for Spec {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

fn load_error(name: &str, source: &str) -> String {
    load_error_within(name, source, Duration::from_millis(500))
}

fn load_error_within(name: &str, source: &str, limit: Duration) -> String {
    let spec = Spec::new(name, source);
    match faultbox_spec::loader::load_with(&spec.0, Limits::new(limit)) {
        Ok(_) => panic!("{name}: loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn deep_nesting_is_refused_at_load_with_file_and_line() {
    for (name, source) in [
        ("sum", format!("a = 1\nx = {}\n", vec!["1"; 5000].join("+"))),
        (
            "brackets",
            format!("a = 1\nx = {}{}\n", "[".repeat(3000), "]".repeat(3000)),
        ),
        (
            "parens",
            format!(
                "a = 1\nx = {}1{}\n",
                "(".repeat(100_000),
                ")".repeat(100_000)
            ),
        ),
    ] {
        let e = load_error(name, &source);
        assert!(e.contains("spec.star:2: "), "{name}: {e}");
        assert!(e.contains("nested more than"), "{name}: {e}");
    }
}

#[test]
fn a_long_top_level_is_stopped_at_its_limit() {
    let started = Instant::now();
    let e = load_error("loop", "n = 0\nfor i in range(2147483647):\n    n += i\n");
    assert!(
        e.contains("spec.star:3: the spec's top level ran past its time limit of 500ms"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn top_level_memory_is_bounded() {
    let e = load_error("bomb", "x = [1] * 1000000000\n");
    assert!(
        e.contains("asked for 7.5 GiB at once, past its memory limit of 512 MiB"),
        "{e}"
    );
    let e = load_error_within(
        "grow",
        "x = []\nfor i in range(100000):\n    x.append([i] * 1000000)\n",
        Duration::from_secs(60),
    );
    assert!(
        e.contains("spec.star:3: the spec's top level used more than its memory limit of 512 MiB"),
        "{e}"
    );
}

/// Runs `test` of limits.star on a thread of its own under `limits`, as the executor
/// does; returns its verdict, or `None` if it is still running after `wait`.
fn body(test: &str, limits: Limits, wait: Duration) -> Option<Verdict> {
    let loaded = Arc::new(
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/limits.star")).unwrap(),
    );
    let t = loaded
        .spec
        .tests
        .iter()
        .find(|t| t.name == test)
        .unwrap()
        .clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let out = faultbox_spec::run_test(&loaded, &t, Arc::new(Empty), limits);
            let _ = tx.send(out.verdict);
        })
        .unwrap();
    rx.recv_timeout(wait).ok()
}

fn failed(v: Option<Verdict>) -> (String, FailureType) {
    match v {
        Some(Verdict::Fail {
            reason,
            failure_type,
        }) => (reason, failure_type),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn bodies_are_stopped_at_their_time_limit() {
    for test in ["test_loops_forever", "test_comprehension_forever"] {
        let started = Instant::now();
        let (why, kind) = failed(body(
            test,
            Limits::new(Duration::from_millis(300)),
            Duration::from_secs(10),
        ));
        assert_eq!(kind, FailureType::Timeout, "{test}: {why}");
        assert!(
            why.contains("limits.star:")
                && why.contains("the test ran past its time limit of 300ms"),
            "{test}: {why}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{test}");
    }
}

#[test]
fn bodies_are_stopped_when_cancelled() {
    let limits = Limits::new(Duration::from_secs(600));
    let cancel = limits.cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::SeqCst);
    });
    let (why, kind) = failed(body("test_loops_forever", limits, Duration::from_secs(10)));
    assert_eq!(kind, FailureType::Error);
    assert!(why.contains("the test was cancelled"), "{why}");
}

#[test]
fn body_memory_is_bounded() {
    let limits = Limits {
        memory: 64 << 20,
        ..Limits::new(Duration::from_secs(600))
    };
    let (why, kind) = failed(body(
        "test_grows_past_the_budget",
        limits,
        Duration::from_secs(60),
    ));
    assert_eq!(kind, FailureType::Error);
    assert!(
        why.contains("the test used more than its memory limit of 64 MiB"),
        "{why}"
    );
    // One request far past the budget is never granted: the thread is parked and
    // its signal says so (the thread stays parked until this process exits).
    let limits = Limits {
        memory: 64 << 20,
        ..Limits::new(Duration::from_secs(600))
    };
    let signal = limits.signal.clone();
    assert!(body(
        "test_asks_for_everything_at_once",
        limits,
        Duration::from_secs(2)
    )
    .is_none());
    assert_eq!(signal.parked(), Some(16_000_000_000));
}

#[test]
fn deep_call_chains_are_an_error_not_a_crash() {
    let (why, kind) = failed(body(
        "test_deep_calls",
        Limits::new(Duration::from_secs(60)),
        Duration::from_secs(60),
    ));
    assert_eq!(kind, FailureType::Error, "{why}");
    assert!(
        why.contains("limits.star:") && why.contains("Starlark call stack overflow"),
        "{why}"
    );
}
