//! Protocol steps and `ready()` end to end: real redis-server and memcached run as
//! services, the spec's steps reach them through the driver's relays, and a
//! protocol rule's injected error is what the step sees.

mod common;

use std::path::Path;
use std::process::Command;

use common::root;

/// These tests check for leftover processes and scratch directories, so they run
/// one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the servers (`scripts/servers.sh` is idempotent and quiet when nothing
/// is missing).
fn servers() {
    let ok = Command::new("bash")
        .arg(root().join("scripts/servers.sh"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "scripts/servers.sh failed");
}

/// Pids of processes running in `dir` (services run in their spec's directory)
/// whose command line contains `marker`: other checkouts' servers do not count.
fn running_in(dir: &Path, marker: &str) -> Vec<i32> {
    common::processes_with(marker)
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

fn test_named<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} ran"))
}

#[test]
fn steps_and_ready_against_real_servers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    servers();
    let out = common::faultbox_at(
        &root(),
        &[
            "test",
            "coordinator/tests/specs/steps.star",
            "--format",
            "json",
        ],
    );
    let specs = root().join("coordinator/tests/specs");
    for marker in ["redis-server", "memcached", "http.server 8000"] {
        assert!(
            running_in(&specs, marker).is_empty(),
            "{marker} outlived its test"
        );
    }
    let left = common::scratch_leftovers();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let doc = common::results_of(&out);
    assert_eq!(doc["pass"], 5, "{doc}");

    // ready() passed for each: every service was ready before the body ran.
    let t = test_named(&doc, "test_injected_error_reaches_the_step");
    let events = t["events"].as_array().unwrap();
    for svc in ["cache", "mc", "web"] {
        assert!(
            events
                .iter()
                .any(|e| e["event_type"] == "lifecycle.ready" && e["service"] == svc),
            "{svc} ready"
        );
    }
    // The rule fired once, on the driver's GET, and the step's answer is recorded.
    assert_eq!(t["faults"][0]["hits"], 1, "{}", t["faults"]);
    let recv = events
        .iter()
        .find(|e| e["event_type"] == "step_recv.cache" && e["fields"]["ok"] == "false")
        .expect("the failed GET's step_recv");
    assert_eq!(recv["fields"]["error"], "LOADING");
}

/// A spec mistake in a step's keywords is an error naming the step and the line;
/// `ready()` naming no interface of its service fails the load.
#[test]
fn step_keywords_and_ready_are_checked() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    servers();
    let dir = common::Scratch::new("steps-kw");
    let spec = dir.path("spec.star");
    std::fs::write(
        &spec,
        "mc = service('mc', 'memcached', interface('main', 'memcached', 11211),\n\
         \x20   args = ['-u', 'root', '-l', '127.0.0.1', '-p', '11211'], healthcheck = ready())\n\
         def test_t():\n\
         \x20   mc.main.get(key = 'k', ttl = 5)\n",
    )
    .unwrap();
    let out = common::faultbox_at(Path::new("/"), &["test", &spec]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "spec.star:4: mc.main.get(): unexpected keyword argument \"ttl\" (expected key)"
        ),
        "{}",
        out.stderr
    );

    std::fs::write(
        &spec,
        "mc = service('mc', 'memcached', interface('main', 'memcached', 11211),\n\
         \x20   healthcheck = ready(interface = 'admin'))\n",
    )
    .unwrap();
    let out = common::faultbox_at(Path::new("/"), &["test", &spec, "--dry-run"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "spec.star:1: service \"mc\": ready(interface=\"admin\") names no interface of it (it has main)"
        ),
        "{}",
        out.stderr
    );
    assert!(running_in(&dir.0, "memcached").is_empty());
}
