//! Names that must mean one thing on every host: a service binary named without a
//! slash, and a spec named by its bare file name.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;

use super::bundles::echo_project;
use super::{fleet, no_services_left, Executor, SERIAL};
use crate::common::{faultbox, root, Out, Scratch};

/// Runs `faultbox test SPEC [--executors ADDR --fleet DIR]` in `cwd` with `path`
/// as its PATH.
fn test_with_path(cwd: &Path, spec: &Path, fleet: Option<(&str, &Path)>, path: &OsStr) -> Out {
    let mut cmd = Command::new(faultbox());
    cmd.current_dir(cwd).env("PATH", path).arg("test").arg(spec);
    if let Some((addr, dir)) = fleet {
        cmd.args(["--executors", addr, "--fleet"]).arg(dir);
    }
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A service binary named without a slash is looked up in PATH on the host that
/// runs the service, never in the current directory; a file of that name beside
/// the spec makes the name ambiguous, and is refused.
#[test]
fn a_bare_binary_name_is_looked_up_in_path_where_the_service_runs() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-bare-name");
    let bin = s.0.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("fbecho");
    std::fs::write(&script, "#!/bin/sh\nexec python3 \"$@\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let proj = s.0.join("proj");
    let spec = echo_project(&proj, "fbecho");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1", "e2"]);
    let plain = std::env::var_os("PATH").unwrap_or_default();
    let mut with_bin = OsString::from(&bin);
    with_bin.push(":");
    with_bin.push(&plain);
    // e1 has fbecho in its PATH; e2 does not.
    let e1 = Executor::start_env(
        &dir,
        "e1",
        7792,
        &s.0.join("w1"),
        "1",
        &[("PATH", &with_bin)],
    );
    let e2 = Executor::start(&dir, "e2", 7793, &s.0.join("w2"), "1");
    let cwd = root();

    // The executor's PATH counts, not the coordinator's.
    let out = test_with_path(&cwd, &spec, Some((&e1.addr, &dir)), &plain);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = test_with_path(&cwd, &spec, Some((&e2.addr, &dir)), &with_bin);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("executor {}:", e2.addr))
            && out.stderr.contains("service \"echo\"")
            && out.stderr.contains("\"fbecho\" not found in PATH"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("PASS"), "{}", out.stderr);
    // A local run is the same rule on this host.
    let out = test_with_path(&cwd, &spec, None, &with_bin);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = test_with_path(&proj, &spec, None, &plain);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"fbecho\" not found in PATH"),
        "{}",
        out.stderr
    );

    // A file of that name beside the spec: which one was meant? Refused, locally
    // (even from the spec's folder) and for a fleet.
    std::fs::copy(&script, proj.join("fbecho")).unwrap();
    for (cwd, fleet) in [
        (&proj, None),
        (&cwd, Some((e1.addr.as_str(), dir.as_path()))),
    ] {
        let out = test_with_path(cwd, &spec, fleet, &with_bin);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "\"fbecho\" is looked up in PATH, but {} is a file beside the spec: write \"./fbecho\"",
                proj.join("fbecho").display()
            )),
            "{}",
            out.stderr
        );
    }
    drop((e1, e2));
    no_services_left();
}

/// `cd examples && faultbox test faultbox.star --executors ...`: the spec named by
/// its bare file name, from its own folder.
#[test]
fn a_spec_named_by_its_bare_file_name_runs_on_a_fleet() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-bare-spec");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7794, &s.0.join("w1"), "1");
    let out = crate::common::faultbox_at(
        &root().join("examples"),
        &[
            "test",
            "faultbox.star",
            "--test",
            "tcp_protocol",
            "--executors",
            &e1.addr,
            "--fleet",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("1 passed, 0 failed"), "{}", out.stderr);
    drop(e1);
    no_services_left();
}
