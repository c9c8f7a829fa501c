//! gRPC `call` steps: the driver's calls through Faultbox's relays to a Python
//! grpcio server (a second implementation beside our tonic client; its messages
//! built at run time from descriptors) and to the example tonic server, typed
//! values round-tripping as JSON; the relay's gRPC rules as the step sees them; and
//! steps written wrong, refused at their line.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{root, Out};

/// Specs whose leftovers are checked by process name run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the specs start: a process whose command line holds one of these outlived
/// its test.
const MARKERS: &[&str] = &["grpc_people.py", "grpc-users"];

/// Installs the drivers' virtualenv with grpcio (idempotent).
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

/// Each test of `spec` with its result and reason.
fn results(spec: &str) -> (Out, Vec<(String, String, String)>) {
    let out = faultbox(&["test", spec, "--format", "json"]);
    let doc = common::results_of(&out);
    let tests = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("result"), s("reason"))
        })
        .collect();
    (out, tests)
}

fn all_pass(spec: &str, count: usize) {
    let (out, tests) = results(spec);
    assert_eq!(tests.len(), count, "{spec}: {tests:?}");
    for (name, result, reason) in &tests {
        assert_eq!(result, "pass", "{spec} {name}: {reason}\n{}", out.stderr);
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn calls_reach_python_grpcio_through_the_relay() {
    all_pass("coordinator/tests/specs/protocols/grpc_steps.star", 8);
}

/// Needs the gRPC relay (the `grpc` protocol's rules): error, response, delay past
/// the step's deadline and drop, as the step reports them.
#[test]
fn relay_faults_reach_the_call_step() {
    all_pass("coordinator/tests/specs/protocols/grpc_step_faults.star", 5);
}

#[test]
fn the_example_spec_runs_against_the_tonic_example() {
    let bin = common::faultbox().with_file_name("grpc-users");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    all_pass("examples/grpc.star", 4);
}

#[test]
fn steps_written_wrong_stop_at_their_line() {
    let spec = "coordinator/tests/specs/protocols/grpc_bad.star";
    let (out, tests) = results(spec);
    let expect: &[(&str, u32, &str)] = &[
        (
            "test_unknown_method",
            14,
            "people.main.call(): service \"people.v1.People\" has no method \"Nope\" (methods: Put, Get, Hello, Slow)",
        ),
        (
            "test_unknown_service",
            17,
            "people.main.call(): no service \"people.v1.Folks\" in ",
        ),
        (
            "test_method_not_a_path",
            20,
            "people.main.call(): method \"people.v1.People.Get\" is not of the form \"/package.Service/Method\"",
        ),
        (
            "test_wrong_type_in_body",
            23,
            "people.main.call(): body does not fit people.v1.GetRequest: at id: ",
        ),
        (
            "test_unknown_field_in_body",
            26,
            "people.main.call(): body does not fit people.v1.GetRequest: unrecognized field name 'nope'",
        ),
        (
            "test_body_not_json",
            29,
            "people.main.call(): body does not fit people.v1.GetRequest: key must be a string",
        ),
        (
            "test_unknown_keyword",
            32,
            "people.main.call(): unexpected keyword argument \"headers\" (expected method, body, metadata, timeout)",
        ),
        ("test_no_method", 35, "people.main.call(): method= is required"),
        (
            "test_bad_metadata",
            38,
            "people.main.call(): metadata key \"grpc-timeout\" is not allowed",
        ),
        (
            "test_bad_timeout",
            41,
            "people.main.call(): bad timeout \"soon\"",
        ),
    ];
    assert_eq!(tests.len(), expect.len(), "{tests:?}\n{}", out.stderr);
    for (name, line, text) in expect {
        let (_, result, reason) = tests
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} did not run: {tests:?}"));
        assert_eq!(result, "fail", "{name}");
        let at = format!("{spec}:{line}: {text}");
        assert!(
            reason.starts_with(&at),
            "{name}: {reason:?} should start with {at:?}"
        );
    }
    assert_ne!(out.code, 0);
}

#[test]
fn a_missing_or_broken_proto_stops_the_load_at_its_interface() {
    let dir = "coordinator/tests/specs/protocols";
    let out = faultbox(&["test", &format!("{dir}/grpc_missing_proto.star")]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&format!(
            "{dir}/grpc_missing_proto.star:3: interface \"main\": spec=\"grpc/absent.proto\": compiling "
        )) && out.stderr.contains("grpc/absent.proto: no such file"),
        "{}",
        out.stderr
    );
    let out = faultbox(&["test", &format!("{dir}/grpc_broken_proto.star")]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&format!(
            "{dir}/grpc_broken_proto.star:4: interface \"main\""
        )) && out
            .stderr
            .contains("broken.proto:6:1: expected ';' or '[', but found '}'"),
        "{}",
        out.stderr
    );
}
