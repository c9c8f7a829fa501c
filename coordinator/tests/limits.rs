//! `faultbox test` against specs that would crash or hang the process that evaluates
//! them: they are refused or stopped with a clear error, and nothing is left behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{root, Out};

/// These tests check for leftover processes by name, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn assert_nothing_left() {
    assert!(
        common::processes_with("debug/inventory").is_empty(),
        "a service outlived its test"
    );
    let leftovers = common::scratch_leftovers();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn faultbox(args: &[&str]) -> (Out, Duration) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t = Instant::now();
    let out = common::faultbox_at(&root(), args);
    let took = t.elapsed();
    assert_nothing_left();
    (out, took)
}

/// A spec file in a scratch directory, removed on drop.
fn spec(name: &str, source: &str) -> (String, common::Scratch) {
    let dir = common::Scratch::new(&format!("limits-{name}"));
    let path = dir.path("spec.star");
    std::fs::write(&path, source).unwrap();
    (path, dir)
}

fn json(out: &Out) -> serde_json::Value {
    common::results_of(out)
}

fn test<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {doc}"))
}

#[test]
fn deep_nesting_is_refused_with_file_and_line() {
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
        let (path, _dir) = spec(name, &source);
        for args in [vec!["test", &path], vec!["test", &path, "--dry-run"]] {
            let (out, _) = faultbox(&args);
            assert_eq!(out.code, 1, "{name}: {}", out.stderr);
            assert!(
                out.stderr.contains("spec.star:2: ") && out.stderr.contains("nested more than"),
                "{name}: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn a_huge_top_level_allocation_is_refused() {
    let (path, _dir) = spec("bomb", "x = [1] * 1000000000\n");
    let (out, took) = faultbox(&["test", &path, "--dry-run"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the spec's top level asked for 7.5 GiB at once, past its memory limit of 512 MiB"
        ),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn runaway_bodies_are_stopped_reported_and_cleaned_up() {
    let (out, took) = faultbox(&[
        "test",
        "coordinator/tests/specs/runaway.star",
        "--timeout",
        "2s",
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = json(&out);
    for (name, kind, why) in [
        (
            "test_spins",
            "timeout",
            "runaway.star:12: the test ran past its time limit of 2s",
        ),
        // A fault scenario's own timeout= is its limit.
        (
            "test_spins_in_a_scenario",
            "timeout",
            "runaway.star:17: the test ran past its time limit of 1s",
        ),
        (
            "test_asks_for_everything",
            "error",
            "the test asked for 7.5 GiB at once, past its memory limit of 512 MiB",
        ),
    ] {
        let t = test(&doc, name);
        assert_eq!(t["failure_type"], kind, "{t}");
        assert!(t["reason"].as_str().unwrap().contains(why), "{t}");
    }
    assert_eq!(test(&doc, "test_passes")["result"], "pass");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn bad_timeouts_are_refused_naming_the_flag() {
    for bad in ["0s", "soon", "25h"] {
        let (out, _) = faultbox(&[
            "test",
            "coordinator/tests/specs/runaway.star",
            "--timeout",
            bad,
        ]);
        assert_eq!(out.code, 1, "{bad}: {}", out.stderr);
        assert!(out.stderr.contains("--timeout"), "{bad}: {}", out.stderr);
    }
    let (path, _dir) = spec(
        "zero",
        "fault_scenario('x', scenario = lambda: None, faults = [], timeout = '0s')\n",
    );
    let (out, _) = faultbox(&["test", &path]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("spec.star:1: "), "{}", out.stderr);
    assert!(
        out.stderr.contains("timeout must be more than 0"),
        "{}",
        out.stderr
    );
}

/// `faultbox test` running a body that spins in pure Starlark, once its service is up.
fn spinning() -> std::process::Child {
    let child = Command::new(common::faultbox())
        .current_dir(root())
        .args([
            "test",
            "coordinator/tests/specs/runaway.star",
            "--test",
            "spins",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_processes(
        "debug/inventory",
        |n| n >= 1,
        20,
        "the service did not start",
    );
    child
}

/// SIGTERM and Ctrl-C stop a run whose test body is busy in pure Starlark.
#[test]
fn signals_stop_a_looping_body() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let child = spinning();
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_nothing_left();
    }
}

#[test]
fn more_runs_than_a_plan_holds_are_refused_naming_the_flag() {
    for args in [
        &["test", "examples/faultbox.star", "--runs", "4294967296"][..],
        &[
            "test",
            "examples/faultbox.star",
            "--runs",
            "100001",
            "--dry-run",
        ][..],
    ] {
        let (out, took) = faultbox(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("--runs ") && out.stderr.contains("more than the 1000000"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let (out, _) = faultbox(&[
        "test",
        "examples/faultbox.star",
        "--runs",
        "100000",
        "--dry-run",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `faultbox test` killed outright leaves its tests' scratch directories; the next
/// run on the host sweeps them, and the killed run's services went with it.
#[test]
fn the_next_run_sweeps_what_a_killed_run_left() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = spinning();
    let dir = std::env::temp_dir().join(format!("faultbox-{}", child.id()));
    assert!(
        dir.is_dir(),
        "{} holds the running test's files",
        dir.display()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.is_dir(), "a killed run cannot clean up");
    common::wait_processes(
        "debug/inventory",
        |n| n == 0,
        10,
        "the service outlived its supervisor",
    );
    let out = common::faultbox_at(&root(), &["test", "examples/faultbox.star", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!dir.exists(), "the next run sweeps {}", dir.display());
    assert_nothing_left();
}
