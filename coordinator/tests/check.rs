//! `faultbox check`: the real binary on spec files that trigger each finding, a
//! clean spec, specs that do not load, and proof that nothing is started.

mod common;

use std::path::Path;

use common::{faultbox_at, root, Out, Scratch};

fn check(spec: &str, json: bool) -> Out {
    let mut args = vec!["check", spec];
    if json {
        args.extend(["--format", "json"]);
    }
    faultbox_at(&root(), &args)
}

fn spec(name: &str) -> String {
    format!("coordinator/tests/specs/check/{name}.star")
}

fn doc(out: &Out) -> serde_json::Value {
    common::parse_valid(common::Schema::CheckResults, &out.stdout)
}

/// The findings of a JSON document as (code, severity, line).
fn findings(doc: &serde_json::Value) -> Vec<(String, String, u64)> {
    doc["findings"]
        .as_array()
        .expect("findings is a list")
        .iter()
        .map(|f| {
            for key in ["code", "severity", "message", "suggestion", "file"] {
                assert!(
                    f[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{key} missing in {f}"
                );
            }
            (
                f["code"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["line"].as_u64().expect("line is a number"),
            )
        })
        .collect()
}

fn finding(code: &str, severity: &str, line: u64) -> (String, String, u64) {
    (code.to_string(), severity.to_string(), line)
}

#[test]
fn a_clean_spec_exits_0() {
    let out = check(&spec("clean"), true);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let d = doc(&out);
    assert_eq!(d["spec"], spec("clean"));
    assert_eq!(d["ok"], true);
    assert_eq!(findings(&d), vec![]);
    let text = check(&spec("clean"), false);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("no findings"), "{}", text.stdout);
}

#[test]
fn the_example_spec_is_clean() {
    let out = check("examples/faultbox.star", false);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn a_test_without_assertions_is_found_at_its_def() {
    let out = check(&spec("no_assertions"), true);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let d = doc(&out);
    assert_eq!(d["ok"], false);
    // test_through_helper asserts in a helper it calls: not a finding.
    assert_eq!(
        findings(&d),
        vec![finding("TEST_NO_ASSERTIONS", "warning", 11)]
    );
    assert_eq!(d["findings"][0]["message"], "test_nothing checked nothing");
    assert_eq!(d["findings"][0]["file"], spec("no_assertions"));
}

#[test]
fn assert_never_without_a_positive_control_is_found() {
    let out = check(&spec("never"), true);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        findings(&doc(&out)),
        vec![finding("NEVER_WITHOUT_CONTROL", "warning", 6)]
    );
}

#[test]
fn queries_on_unobserved_syscalls_are_found() {
    let out = check(&spec("queries"), true);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let d = doc(&out);
    assert_eq!(
        findings(&d),
        vec![
            finding("QUERY_NOT_OBSERVED", "error", 7),
            finding("QUERY_NOT_OBSERVED", "warning", 12),
            finding("QUERY_NOT_OBSERVED", "error", 16),
        ]
    );
    assert!(
        d["findings"][2]["message"]
            .as_str()
            .unwrap()
            .contains("service=\"apj\" matches no service"),
        "{d}"
    );
}

#[test]
fn a_fault_whose_syscalls_are_hidden_is_found() {
    let out = check(&spec("hidden"), true);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        findings(&doc(&out)),
        vec![finding("FAULT_NOT_COVERED", "warning", 5)]
    );
}

#[test]
fn text_output_is_one_finding_a_line_and_a_summary() {
    let out = check(&spec("queries"), false);
    assert_eq!(out.code, 2);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    let prefix = format!("{}:7: QUERY_NOT_OBSERVED: ", spec("queries"));
    assert!(lines[0].starts_with(&prefix), "{}", lines[0]);
    assert!(lines[0].ends_with(')'), "{}", lines[0]);
    assert!(
        lines[3].contains("3 finding(s): 2 error(s), 1 warning(s)"),
        "{}",
        lines[3]
    );
}

/// A spec that does not load fails as `faultbox test --dry-run` fails: exit 1, the
/// same message.
#[test]
fn load_failures_exit_1_with_the_dry_run_message() {
    for name in ["syntax", "proxy_key"] {
        let out = check(&spec(name), false);
        assert_eq!(out.code, 1, "{name}: {}", out.stdout);
        let dry = faultbox_at(&root(), &["test", &spec(name), "--dry-run"]);
        assert_eq!(dry.code, 1);
        assert_eq!(out.stderr, dry.stderr, "{name}");
        let json = check(&spec(name), true);
        assert_eq!(json.code, 1);
        let d = doc(&json);
        assert_eq!(d["ok"], false);
        assert!(d["error"].as_str().unwrap().contains(":"), "{d}");
    }
    let proxy = check(&spec("proxy_key"), false);
    assert!(
        proxy.stderr.contains("proxy_key.star:5:") && proxy.stderr.contains("no match key `topic`"),
        "{}",
        proxy.stderr
    );
    let missing = check("coordinator/tests/specs/check/no-such-file.star", false);
    assert_eq!(missing.code, 1);
}

/// A fault on a name that is no syscall is refused while loading, with its line.
#[test]
fn a_fault_on_an_unknown_syscall_is_a_load_error() {
    let dir = Scratch::new("check-unknown");
    let path = dir.path("spec.star");
    std::fs::write(
        &path,
        "api = service(\"api\", \"/bin/sh\", interface(\"main\", \"http\", 8080))\n\
         def test_x():\n    fault(api, wrlte = deny(\"EIO\"), run = lambda: assert_true(True))\n",
    )
    .unwrap();
    let out = faultbox_at(Path::new(&dir.0), &["check", "spec.star"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("spec.star:3:") && out.stderr.contains("unknown syscall or op"),
        "{}",
        out.stderr
    );
}

/// Nothing runs: a service whose program would leave a mark leaves none, and a
/// service whose program does not exist is a finding, not a failure to check.
#[test]
fn nothing_is_started() {
    let dir = Scratch::new("check-start");
    let mark = dir.0.join("started");
    let script = dir.0.join("svc.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.0.join("spec.star"),
        "svc = service(\"svc\", \"./svc.sh\", interface(\"main\", \"tcp\", 9000),\n\
         \x20   healthcheck = tcp(\"localhost:9000\"))\n\
         gone = service(\"gone\", \"./not-built\", interface(\"main\", \"tcp\", 9001))\n\
         def test_send():\n    assert_eq(svc.send(data = \"PING\"), \"PONG\")\n",
    )
    .unwrap();
    let out = faultbox_at(&dir.0, &["check", "spec.star", "--format", "json"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        findings(&doc(&out)),
        vec![finding("SERVICE_PROGRAM_NOT_FOUND", "warning", 3)]
    );
    assert!(!mark.exists(), "check started a service");
}

/// A container without a filter that the spec faults: what `--dry-run` refuses is
/// an error finding here, without Docker.
#[test]
fn a_fault_on_a_container_without_a_filter_is_found() {
    let out = check(&spec("seccomp_off"), true);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        findings(&doc(&out)),
        vec![finding("FAULT_NOT_COVERED", "error", 2)]
    );
    let dry = faultbox_at(&root(), &["test", &spec("seccomp_off"), "--dry-run"]);
    assert_eq!(dry.code, 1, "{}", dry.stderr);
}

/// No root needed: the check runs as an unprivileged user (when the suite runs as
/// root and can switch to one).
#[test]
fn it_needs_no_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let out = check(&spec("clean"), false);
        assert_eq!(out.code, 0, "{}", out.stderr);
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::faultbox())
        .args(["check", &spec("clean")])
        .current_dir(root())
        .output()
        .expect("setpriv runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
