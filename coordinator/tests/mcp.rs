//! `faultbox mcp` driven by a real MCP client we did not write: the official Python
//! SDK (`mcp` from PyPI, in the virtualenv `scripts/servers.sh` builds). Each test is
//! one scenario of `tests/mcp/client.py`; after each, no server, run or service of it
//! may be left, and no scratch file.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use common::{processes_with, root, wait_processes, Scratch};

/// Scenarios look for leftovers by name, and runs take every CPU: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The virtualenv's python, after `scripts/servers.sh` made sure it has the SDK.
fn python() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let ok = Command::new("bash")
                .arg(root().join("scripts/servers.sh"))
                .status()
                .expect("run scripts/servers.sh")
                .success();
            assert!(ok, "scripts/servers.sh failed");
            let venv = std::env::var_os("FAULTBOX_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/faultbox/venv"));
            venv.join("bin/python")
        })
        .clone()
}

/// Processes of our `faultbox` binary whose arguments include `arg`.
fn faultbox_processes(arg: &str) -> Vec<i32> {
    let bin = common::faultbox();
    processes_with(arg)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).skip(1).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Whether the process a `faultbox-PID...` scratch directory is named after lives.
fn scratch_owner_alive(name: &str) -> bool {
    let pid: String = name
        .trim_start_matches("faultbox-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `scenario` and checks that it passed and left nothing behind.
fn scenario(name: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let python = python();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let token = format!("fbmcp{}x{n}", std::process::id());
    let scratch = Scratch::new(&format!("mcp-{token}"));
    let before = common::scratch_leftovers();
    let out = Command::new(&python)
        .arg(root().join("coordinator/tests/mcp/client.py"))
        .arg(name)
        .env("FAULTBOX", common::faultbox())
        .env("ROOT", root())
        .env("SCRATCH", &scratch.0)
        .env("TOKEN", &token)
        .current_dir(root())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Whatever happened, nothing of the scenario may outlive it.
    wait_processes(
        &token,
        |n| n == 0,
        20,
        &format!("{name}: a process with {token} is left"),
    );
    for sub in ["mcp", "test"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !faultbox_processes(sub).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: faultbox {sub} still running: {:?}",
                faultbox_processes(sub)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    for marker in ["debug/inventory", "debug/orders"] {
        wait_processes(
            marker,
            |n| n == 0,
            5,
            &format!("{name}: {marker} left running"),
        );
    }
    // Scratch directories (`/tmp/faultbox-PID...`) this scenario's runs left: other
    // checkouts' runs on this machine come and go meanwhile, so only new ones whose
    // process is gone count.
    let leftovers: Vec<String> = common::scratch_leftovers()
        .into_iter()
        .filter(|n| !before.contains(n) && !scratch_owner_alive(n))
        .collect();
    assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
    assert!(
        out.status.success(),
        "scenario {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("{name}: ok")),
        "{stdout}\n{stderr}"
    );
    // The SDK passes the servers' stderr on: whatever the input, no server panicked.
    assert!(
        !stderr.contains("panicked"),
        "{name}: a server panicked:\n{stderr}"
    );
    // What the scenario measured (shown with --nocapture).
    eprint!("{stdout}");
}

#[test]
fn initialize() {
    scenario("initialize");
}

#[test]
fn every_tool_has_an_input_schema_with_descriptions() {
    scenario("tools");
}

#[test]
fn list_tests_and_check_spec_on_the_examples() {
    scenario("list_and_check");
}

#[test]
fn run_tests_with_progress_and_bounded_events() {
    scenario("run_tests");
}

#[test]
fn a_failing_test_returns_its_verdict_and_diagnostics() {
    scenario("failing");
}

#[test]
fn a_syntax_error_is_a_tool_error_naming_file_and_line() {
    scenario("syntax_error");
}

#[test]
fn a_missing_file_is_a_tool_error() {
    scenario("missing_file");
}

#[test]
fn wrong_argument_types_are_tool_errors_naming_the_argument() {
    scenario("wrong_arguments");
}

#[test]
fn a_huge_spec_and_absurd_runs_are_refused() {
    scenario("refused");
}

#[test]
fn a_cancelled_run_stops_its_services() {
    scenario("cancel");
}

#[test]
fn concurrent_calls() {
    scenario("concurrent");
}

#[test]
fn a_client_that_leaves_mid_run_leaves_no_process() {
    scenario("disconnect");
}

#[test]
fn end_of_input_mid_run_stops_the_run_and_the_server() {
    scenario("eof_mid_run");
}

#[test]
fn a_killed_server_leaves_no_run_behind() {
    scenario("server_killed");
}

#[test]
fn generate_and_init_return_what_the_cli_writes() {
    scenario("generate_and_init");
}

#[test]
fn the_mcp_json_of_init_claude_starts_a_working_server() {
    scenario("claude_config");
}
