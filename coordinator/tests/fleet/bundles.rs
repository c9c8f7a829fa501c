//! What a bundle carries to executors: the spec and what it needs, never a fleet
//! directory, a private key or an ignored file; names in UTF-8 only; and what ships
//! is what was hashed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{faultbox_cmd, fleet, no_services_left, Executor, SERIAL};
use crate::common::{root, Scratch};

/// Not a usable key: what matters is that it looks like one.
pub const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
    MC4CAQAwBQYDK2VwBCIEIG5vdCBhIGtleSwganVzdCBpdHMgc2hhcGUgISEhISE=\n\
    -----END PRIVATE KEY-----\n";

/// Writes a spec folder at `dir` whose one test talks to a Python echo service
/// started as `binary echo_svc.py`; returns the spec's path.
pub fn echo_project(dir: &Path, binary: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        root().join("coordinator/tests/specs/echo_svc.py"),
        dir.join("echo_svc.py"),
    )
    .unwrap();
    let spec = dir.join("spec.star");
    std::fs::write(
        &spec,
        format!(
            r#"echo = service("echo", "{binary}", interface("main", "tcp", 7000),
    args = ["echo_svc.py"],
    healthcheck = tcp("localhost:7000"))

def test_echo():
    assert_eq(echo.send(data = "a"), "ECHO a")
"#
        ),
    )
    .unwrap();
    spec
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn bundles_carry_the_run_and_never_a_key_a_fleet_or_an_ignored_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-bundle");
    let proj = s.0.join("proj");
    let spec = echo_project(&proj, "python3");
    // The fleet beside the spec, as docs/fleet.md sets one up.
    let dir = proj.join("fleet");
    fleet(&dir, &["e1"]);
    let write = |rel: &str, text: &str| {
        let p = proj.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("data.txt", "data the tests read");
    write("secrets.env", "TOKEN=hunter2-secret");
    write("build.log", "a log line nobody needs");
    write(".faultboxignore", "secrets.env\n");
    write(".gitignore", "*.log\n");
    write("keys/server.key", PRIVATE_KEY);
    write("keys/tls.pem", PRIVATE_KEY);
    // Another fleet's directory, by its CA.
    write("old-fleet/ca.pem", "an old fleet's CA");
    write("old-fleet/notes.txt", "notes of the old fleet");
    let work = s.0.join("w1");
    let e1 = Executor::start(&dir, "e1", 7771, &work, "1");
    let run = |spec: &Path| {
        faultbox_cmd(&[
            "test",
            spec.to_str().unwrap(),
            "--executors",
            &e1.addr,
            "--fleet",
            dir.to_str().unwrap(),
        ])
    };
    let out = run(&spec);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("3 of 3 files shipped"),
        "{}",
        out.stderr
    );
    // The executor holds the spec, its service's script and the data file: nothing
    // else, unpacked or as a blob.
    let bundles = work.join("bundles");
    let mut unpacked: Vec<String> = files_under(&bundles)
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&bundles).unwrap();
            rel.components()
                .skip(1)
                .collect::<PathBuf>()
                .display()
                .to_string()
        })
        .filter(|p| p != ".complete")
        .collect();
    unpacked.sort();
    assert_eq!(unpacked, ["data.txt", "echo_svc.py", "spec.star"]);
    let ca_key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    for f in files_under(&work) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for secret in [
            "PRIVATE KEY",
            ca_key.as_str(),
            "hunter2",
            "a log line",
            "notes of the old fleet",
        ] {
            assert!(!text.contains(secret), "{} holds {secret:?}", f.display());
        }
    }
    // Stored for the executor's user only.
    assert_eq!(mode(&work) & 0o077, 0, "{:o}", mode(&work));
    for f in files_under(&work.join("blobs")) {
        assert_eq!(mode(&f) & 0o077, 0, "{} is {:o}", f.display(), mode(&f));
    }

    // A spec that names a private key, or a file of the fleet directory, is refused
    // before anything ships, naming the file.
    let key_spec = proj.join("key.star");
    std::fs::write(
        &key_spec,
        "k = service(\"k\", \"keys/server.key\", interface(\"main\", \"tcp\", 7000))\n\
         def test_k():\n    pass\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(proj.join("keys/server.key"), perms).unwrap();
    }
    let out = run(&key_spec);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("keys/server.key") && out.stderr.contains("private key"),
        "{}",
        out.stderr
    );
    std::fs::write(dir.join("helpers.star"), "X = 1\n").unwrap();
    let fleet_spec = proj.join("fleet_load.star");
    std::fs::write(
        &fleet_spec,
        "load(\"fleet/helpers.star\", \"X\")\ndef test_x():\n    assert_eq(X, 1)\n",
    )
    .unwrap();
    let out = run(&fleet_spec);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("fleet/helpers.star") && out.stderr.contains("fleet directory"),
        "{}",
        out.stderr
    );
    drop(e1);
    no_services_left();
}

/// A log the user writes into the spec folder while a run ships it: the executor
/// gets the contents that were hashed, and the run goes on.
#[test]
fn a_file_written_during_a_run_ships_as_it_was_hashed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-changing");
    let proj = s.0.join("proj");
    let spec = echo_project(&proj, "python3");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7772, &s.0.join("w1"), "1");
    let log = proj.join("run.log");
    std::fs::write(&log, "").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let out = faultbox_cmd(&[
        "test",
        spec.to_str().unwrap(),
        "--executors",
        &e1.addr,
        "--fleet",
        dir.to_str().unwrap(),
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    drop(e1);
    no_services_left();
}

/// Two names that differ only in bytes that are not UTF-8 would be one path on an
/// executor: such a name is refused, naming the file.
#[test]
fn file_names_that_are_not_utf8_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-utf8");
    let proj = s.0.join("proj");
    let spec = echo_project(&proj, "python3");
    // Two names that differ only in bytes that are not UTF-8.
    for (name, text) in [
        (&b"data-\xff.txt"[..], "one"),
        (&b"data-\xfe.txt"[..], "two"),
    ] {
        std::fs::write(proj.join(OsStr::from_bytes(name)), text).unwrap();
    }
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7791, &s.0.join("w1"), "1");
    let out = faultbox_cmd(&[
        "test",
        spec.to_str().unwrap(),
        "--executors",
        &e1.addr,
        "--fleet",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}/data-\\xFE.txt", proj.display()))
            && out.stderr.contains("not UTF-8"),
        "{}",
        out.stderr
    );
    drop(e1);
    no_services_left();
}
