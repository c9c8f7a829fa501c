//! Fleet runs: real `faultbox executor` processes on loopback, each with its own fleet
//! identity, and `faultbox test --executors` driving them over QUIC.

mod common;
// What a fleet trusts (tests/fleet/): bundle contents, executors' work directories,
// certificate roles, and how names are found on each host.
#[path = "fleet/bundles.rs"]
mod bundles;
#[path = "fleet/containers.rs"]
mod containers;
#[path = "fleet/names.rs"]
mod names;
#[path = "fleet/roles.rs"]
mod roles;
#[path = "fleet/work_dir.rs"]
mod work_dir;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{faultbox, root, Out, Scratch};

/// Fleet tests start executors on fixed ports; one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn faultbox_cmd(args: &[&str]) -> Out {
    common::faultbox_at(&root(), args)
}

/// Runs `faultbox <args>` that should end by itself (an executor that refuses to
/// start); killed after 20 s if it does not, so a regression fails instead of hanging.
fn faultbox_bounded(args: &[&str]) -> Out {
    let mut child = Command::new(faultbox())
        .current_dir(root())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `faultbox executor`, killed (and waited for) on drop.
struct Executor {
    child: Option<Child>,
    log: PathBuf,
    addr: String,
}

impl Executor {
    fn start(fleet: &Path, name: &str, port: u16, work: &Path, slots: &str) -> Executor {
        Executor::start_env(fleet, name, port, work, slots, &[])
    }

    /// Like [`Executor::start`], with `env` added to the executor's environment.
    fn start_env(
        fleet: &Path,
        name: &str,
        port: u16,
        work: &Path,
        slots: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Executor {
        let log = work.with_extension("log");
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(faultbox())
            .envs(env.iter().copied())
            .args([
                "executor", "--listen", &addr, "--name", name, "--slots", slots,
            ])
            .arg("--fleet")
            .arg(fleet)
            .arg("--work")
            .arg(work)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let e = Executor {
            child: Some(child),
            log,
            addr,
        };
        e.wait_for("executor ready");
        e
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.kill();
    }
}

fn fleet(dir: &Path, names: &[&str]) {
    let d = dir.to_str().unwrap();
    assert_eq!(faultbox_cmd(&["fleet", "init", d]).code, 0);
    for n in names {
        assert_eq!(faultbox_cmd(&["fleet", "issue", d, n]).code, 0);
    }
}

fn summary(stdout: &str) -> Vec<(String, u64, String)> {
    common::summary(&common::results(stdout))
}

fn no_services_left() {
    for marker in [
        "debug/inventory",
        "debug/orders",
        "echo_svc.py",
        "chatty_svc.py",
    ] {
        assert!(
            common::processes_with(marker).is_empty(),
            "{marker} still running"
        );
    }
}

#[test]
fn two_executors_give_the_same_report_as_one_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-same");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1", "e2"]);
    let e1 = Executor::start(&dir, "e1", 7711, &s.0.join("w1"), "2");
    let e2 = Executor::start(&dir, "e2", 7712, &s.0.join("w2"), "2");
    let executors = format!("{},{}", e1.addr, e2.addr);
    let fleet_dir = dir.to_str().unwrap();
    let spec = "coordinator/tests/specs/seeds.star";
    let page = s.0.join("report.html");
    let remote = faultbox_cmd(&[
        "test",
        spec,
        "--runs",
        "12",
        "--format",
        "json",
        "--executors",
        &executors,
        "--fleet",
        fleet_dir,
        "--report",
        page.to_str().unwrap(),
    ]);
    let local = faultbox_cmd(&["test", spec, "--runs", "12", "--format", "json"]);
    assert_eq!(remote.code, 2, "{}", remote.stderr);
    assert_eq!(local.code, 2);
    assert_eq!(summary(&remote.stdout), summary(&local.stdout));
    assert!(
        remote
            .stderr
            .contains("executor e1 (127.0.0.1:7711): 2 slots"),
        "{}",
        remote.stderr
    );
    // Both executors did work.
    let doc = common::results_of(&remote);
    assert!(doc["tests"].as_array().unwrap().len() > 4);
    // Executors load the bundle from their own directory, yet reasons, faults and
    // diagnostics name the spec as it was given here: the same as in-process.
    let places = |doc: &serde_json::Value| -> Vec<String> {
        let mut out = Vec::new();
        for t in doc["tests"].as_array().unwrap() {
            out.extend(t["reason"].as_str().map(str::to_string));
            for f in t["faults"].as_array().unwrap() {
                out.push(format!("{}:{}", f["file"], f["line"]));
            }
        }
        out
    };
    let (here, there) = (places(&common::results_of(&local)), places(&doc));
    assert_eq!(there, here);
    assert!(
        here.iter()
            .any(|p| p.starts_with(&format!("{spec}:11: assert_eq")))
            && here.contains(&format!("\"{spec}\":11")),
        "{here:?}"
    );
    // The HTML report of a fleet run has every run, each with the executor it ran on.
    let html = std::fs::read_to_string(&page).unwrap();
    let open = r#"<script type="application/json" id="fb-data">"#;
    let data = &html[html.find(open).unwrap() + open.len()..];
    let data: serde_json::Value =
        serde_json::from_str(&data[..data.find("</script>").unwrap()]).unwrap();
    assert_eq!(
        data["runs"].as_array().unwrap().len(),
        doc["tests"].as_array().unwrap().len()
    );
    let ran_on: std::collections::BTreeSet<&str> = data["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["executor"].as_str().unwrap())
        .collect();
    assert!(
        ran_on.iter().all(|e| ["e1", "e2"].contains(e)),
        "{ran_on:?}"
    );
    assert_eq!(
        data["executors"],
        serde_json::json!(ran_on),
        "the summary names them"
    );

    // The same normalized trace as in-process, and the second run ships nothing.
    let (a, b) = (s.0.join("remote.norm"), s.0.join("local.norm"));
    let example = "examples/faultbox.star";
    let remote = faultbox_cmd(&[
        "test",
        example,
        "--seed",
        "3",
        "--normalize",
        a.to_str().unwrap(),
        "--executors",
        &executors,
        "--fleet",
        fleet_dir,
    ]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    let again = faultbox_cmd(&[
        "test",
        example,
        "--seed",
        "3",
        "--executors",
        &executors,
        "--fleet",
        fleet_dir,
    ]);
    assert_eq!(again.code, 0);
    assert!(
        again
            .stderr
            .contains("executor e1 (127.0.0.1:7711): 2 slots, 0 of ")
            && again
                .stderr
                .contains("executor e2 (127.0.0.1:7712): 2 slots, 0 of "),
        "{}",
        again.stderr
    );
    let local = faultbox_cmd(&[
        "test",
        example,
        "--seed",
        "3",
        "--normalize",
        b.to_str().unwrap(),
    ]);
    assert_eq!(local.code, 0);
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        std::fs::read_to_string(&b).unwrap()
    );

    // A trace longer than a job's window of events in flight streams back whole and
    // in order: the same normalized trace as in-process.
    let chatty = "soak/fleet/chatty.star";
    let (a, b) = (
        s.0.join("remote-chatty.norm"),
        s.0.join("local-chatty.norm"),
    );
    let remote = faultbox_cmd(&[
        "test",
        chatty,
        "--test",
        "many_writes",
        "--normalize",
        a.to_str().unwrap(),
        "--executors",
        &executors,
        "--fleet",
        fleet_dir,
    ]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    let local = faultbox_cmd(&[
        "test",
        chatty,
        "--test",
        "many_writes",
        "--normalize",
        b.to_str().unwrap(),
    ]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    let (a, b) = (
        std::fs::read_to_string(&a).unwrap(),
        std::fs::read_to_string(&b).unwrap(),
    );
    assert!(a.lines().count() > 6000, "{} lines", a.lines().count());
    assert!(a == b, "the streamed trace differs from the in-process one");
    drop((e1, e2));
    no_services_left();
    // Nothing of a job is left in the executors' work directories.
    for w in ["w1", "w2"] {
        let tmp = s.0.join(w).join("tmp");
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{}",
            tmp.display()
        );
    }
}

/// Events cross the wire in a compact form (names once per batch, numbers as steps):
/// a fleet run of events from a stdout source, with text beyond ASCII, gives the same
/// normalized trace as one process, and every event's type and fields come back byte
/// for byte, in order, in the JSON document.
#[test]
fn compact_events_give_the_in_process_trace_and_document() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-compact");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1", "e2"]);
    let e1 = Executor::start(&dir, "e1", 7715, &s.0.join("w1"), "1");
    let e2 = Executor::start(&dir, "e2", 7716, &s.0.join("w2"), "1");
    let executors = format!("{},{}", e1.addr, e2.addr);
    let spec = "soak/fleet/stream.star";
    let run = |name: &str, fleet: bool| {
        let norm = s.0.join(format!("{name}.norm"));
        let json = s.0.join(format!("{name}.json"));
        let mut args = vec![
            "test",
            spec,
            "--test",
            "text_burst",
            "--runs",
            "2",
            "--normalize",
            norm.to_str().unwrap(),
            "--output",
            json.to_str().unwrap(),
        ];
        if fleet {
            args.extend(["--executors", &executors, "--fleet", dir.to_str().unwrap()]);
        }
        let out = faultbox_cmd(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        // What a run's events say, without what differs between identical runs.
        let events: Vec<Vec<(String, serde_json::Value)>> = doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["type"] == "stdout")
                    .map(|e| {
                        (
                            e["event_type"].as_str().unwrap().to_string(),
                            e["fields"].clone(),
                        )
                    })
                    .collect()
            })
            .collect();
        (std::fs::read_to_string(&norm).unwrap(), events)
    };
    let (remote_norm, remote_events) = run("remote", true);
    let (local_norm, local_events) = run("local", false);
    assert!(
        remote_norm.lines().count() > 1200,
        "{} lines",
        remote_norm.lines().count()
    );
    assert!(remote_norm.contains("traitée ✓ 注文"));
    assert!(
        remote_norm == local_norm,
        "the fleet's trace differs from the in-process one"
    );
    assert_eq!(remote_events.len(), 2);
    assert!(remote_events.iter().all(|e| e.len() == 600));
    assert!(remote_events == local_events, "the events' fields differ");
    drop((e1, e2));
    no_services_left();
}

#[test]
fn strangers_expired_certificates_and_bad_addresses_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-refuse");
    let ours = s.0.join("ours");
    let theirs = s.0.join("theirs");
    fleet(&ours, &["e1"]);
    fleet(&theirs, &["x1"]);
    let old = faultbox_cmd(&[
        "fleet",
        "issue",
        ours.to_str().unwrap(),
        "old",
        "--days",
        "0",
    ]);
    assert_eq!(old.code, 0);
    let spec = "coordinator/tests/specs/seeds.star";
    let run = |addrs: &str, fleet: &Path| {
        faultbox_cmd(&[
            "test",
            spec,
            "--test",
            "always",
            "--executors",
            addrs,
            "--fleet",
            fleet.to_str().unwrap(),
        ])
    };

    // An executor of another fleet: the coordinator refuses its certificate.
    let stranger = Executor::start(&theirs, "x1", 7721, &s.0.join("wx"), "1");
    let out = run(&stranger.addr, &ours);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("executor 127.0.0.1:7721: TLS/QUIC handshake failed"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    // ... and a coordinator of another fleet is refused by ours, logged there.
    let e1 = Executor::start(&ours, "e1", 7722, &s.0.join("w1"), "1");
    let out = run(&e1.addr, &theirs);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("executor 127.0.0.1:7722:"),
        "{}",
        out.stderr
    );
    e1.wait_for("refused a connection");
    // An expired executor certificate.
    let expired = Executor::start(&ours, "old", 7723, &s.0.join("wo"), "1");
    let out = run(&expired.addr, &ours);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("handshake failed"), "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("expired"),
        "{}",
        out.stderr
    );

    // Addresses: nothing listening, twice the same, not an address, an empty file.
    let out = run("127.0.0.1:7729", &ours);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("executor 127.0.0.1:7729:"),
        "{}",
        out.stderr
    );
    let out = run("127.0.0.1:7722,127.0.0.1:7722", &ours);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("127.0.0.1:7722 is listed twice"),
        "{}",
        out.stderr
    );
    let out = run("nowhere", &ours);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("--executors: \"nowhere\": not HOST:PORT"),
        "{}",
        out.stderr
    );
    let list = s.0.join("executors.txt");
    std::fs::write(&list, "# none yet\n\n").unwrap();
    let out = run(&format!("@{}", list.display()), &ours);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no addresses"), "{}", out.stderr);
    std::fs::write(&list, format!("# the fleet\n{}\n", e1.addr)).unwrap();
    let out = run(&format!("@{}", list.display()), &ours);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A fleet directory without the coordinator's identity.
    std::fs::remove_file(ours.join("coordinator.key")).unwrap();
    let out = run(&e1.addr, &ours);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("--fleet: ") && out.stderr.contains("coordinator.key"),
        "{}",
        out.stderr
    );
    // An executor whose identity is missing does not start.
    let out = faultbox_cmd(&[
        "executor",
        "--listen",
        "127.0.0.1:7724",
        "--name",
        "ghost",
        "--fleet",
        ours.to_str().unwrap(),
        "--work",
        s.0.join("wg").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("ghost.pem"), "{}", out.stderr);
    // Names that would leave the fleet directory.
    let out = faultbox_cmd(&["fleet", "issue", ours.to_str().unwrap(), "../x"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("\"../x\" is not a valid name"),
        "{}",
        out.stderr
    );
    let out = faultbox_cmd(&[
        "executor",
        "--listen",
        "127.0.0.1:7726",
        "--name",
        "a/b",
        "--fleet",
        ours.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--name \"a/b\""), "{}", out.stderr);
    let out = faultbox_cmd(&["fleet", "init", ours.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("already a fleet directory"),
        "{}",
        out.stderr
    );
    // Two executors on one work directory.
    let out = faultbox_cmd(&[
        "executor",
        "--listen",
        "127.0.0.1:7725",
        "--name",
        "e1",
        "--fleet",
        ours.to_str().unwrap(),
        "--work",
        s.0.join("w1").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("another executor is using it"),
        "{}",
        out.stderr
    );
    let _ = out.stdout;
}

#[test]
fn a_lost_executor_has_its_jobs_rerun_elsewhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-lost");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1", "e2"]);
    let mut e1 = Executor::start(&dir, "e1", 7731, &s.0.join("w1"), "2");
    let e2 = Executor::start(&dir, "e2", 7732, &s.0.join("w2"), "2");
    let executors = format!("{},{}", e1.addr, e2.addr);
    let spec = "coordinator/tests/specs/seeds.star";
    let child = Command::new(faultbox())
        .current_dir(root())
        .args([
            "test", spec, "--test", "always", "--runs", "40", "--format", "json",
        ])
        .args(["--executors", &executors, "--fleet", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill e1 once it is running jobs.
    e1.wait_for("target started");
    e1.kill();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let runs = summary(&stdout);
    let seeds: Vec<u64> = runs.iter().map(|r| r.1).collect();
    assert_eq!(
        seeds,
        (0..40).collect::<Vec<_>>(),
        "every seed exactly once"
    );
    assert!(stderr.contains("link lost"), "{stderr}");

    // With no executor left, the run ends with its own exit code.
    let child = Command::new(faultbox())
        .current_dir(root())
        .args(["test", spec, "--test", "always", "--runs", "40"])
        .args(["--executors", &e2.addr, "--fleet", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    e2.wait_for("bundle offered");
    std::thread::sleep(Duration::from_millis(300));
    drop(e2);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no executor left"), "{stderr}");
    no_services_left();
}

/// A peer with a fleet certificate that speaks another protocol version, or sends
/// garbage: the executor refuses or drops that link, logs why, and keeps serving.
#[test]
fn wrong_versions_and_malformed_frames_end_only_their_link() {
    use faultbox_executor::fleet::identity::{Identity, Role, EXECUTOR_SAN};
    use faultbox_executor::fleet::wire::{self, Frame, PROTOCOL_VERSION};

    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-wire");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7741, &s.0.join("w1"), "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let identity = Identity::load(&dir, "coordinator", Role::Coordinator).unwrap();
    // The links stay open until the executor has said what it made of them.
    let (_endpoint, _links) = rt.block_on(async {
        let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        let dial = || async {
            let conn = endpoint
                .connect_with(
                    identity.client_config().unwrap(),
                    "127.0.0.1:7741".parse().unwrap(),
                    EXECUTOR_SAN,
                )
                .unwrap()
                .await
                .unwrap();
            let (tx, rx) = conn.open_bi().await.unwrap();
            (conn, tx, rx)
        };
        // Another version: refused, both versions named.
        let (_c, mut tx, mut rx) = dial().await;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION + 1,
            name: "future".into(),
            slots: 0,
        };
        wire::send(&mut tx, &hello).await.unwrap();
        match wire::recv(&mut rx).await.unwrap() {
            Frame::Refused { reason } => {
                assert!(
                    reason.contains(&format!("peer speaks {}", PROTOCOL_VERSION + 1)),
                    "{reason}"
                );
                assert!(
                    reason.contains(&format!("this side {PROTOCOL_VERSION}")),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Garbage where a frame should be.
        let (c1, mut tx1, _) = dial().await;
        tx1.write_all(&[0, 0, 0, 5, 0xc1, 0xff, 0x00, 0x13, 0x37])
            .await
            .unwrap();
        // A valid frame out of turn (an acknowledgement where the bundle's offer
        // belongs): named in the log, not dumped.
        let (c3, mut tx3, mut rx3) = dial().await;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            name: "coordinator".into(),
            slots: 0,
        };
        wire::send(&mut tx3, &hello).await.unwrap();
        assert!(matches!(
            wire::recv(&mut rx3).await.unwrap(),
            Frame::Hello { .. }
        ));
        wire::send(&mut tx3, &Frame::Ack { job: 7 }).await.unwrap();
        // A frame claiming to be larger than any frame may be.
        let (c2, mut tx2, _) = dial().await;
        tx2.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        (endpoint.clone(), vec![(c1, tx1), (c2, tx2), (c3, tx3)])
    });
    e1.wait_for("protocol version mismatch");
    e1.wait_for("a malformed frame");
    e1.wait_for("larger than the limit");
    e1.wait_for("expected the bundle's offer, got Ack");
    // Still serving.
    let out = faultbox_cmd(&[
        "test",
        "coordinator/tests/specs/seeds.star",
        "--test",
        "always",
        "--executors",
        &e1.addr,
        "--fleet",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    drop(e1);
    no_services_left();
}

/// Ctrl-C on the coordinator cancels the jobs running on the executors.
#[test]
fn ctrl_c_on_the_coordinator_cancels_remote_jobs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-ctrl-c");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7751, &s.0.join("w1"), "2");
    let mut child = Command::new(faultbox())
        .current_dir(root())
        .args(["test", "coordinator/tests/specs/slow.star", "--runs", "4"])
        .args(["--executors", &e1.addr, "--fleet", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    common::wait_processes("echo_svc.py", |n| n >= 2, 20, "the services did not start");
    // The events of runs still in flight stream in: a progress line counts them
    // while no run has finished (each waits a minute on its delay fault).
    let streamed = |l: &str| -> Option<u64> {
        let rest = l.strip_prefix("progress: 0/4 runs, ")?;
        let (before, _) = rest.split_once(" events (")?;
        before.rsplit(' ').next()?.parse().ok()
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no progress line with streamed events: {seen:?}"));
        if streamed(&line).is_some_and(|n| n > 0) {
            break;
        }
        seen.push(line);
    }
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr: Vec<String> = lines.try_iter().collect();
    assert_eq!(status.code(), Some(130), "{stderr:?}");
    // The executor cancelled the jobs: their services are gone, not a minute later.
    common::wait_processes(
        "echo_svc.py",
        |n| n == 0,
        10,
        "the remote jobs were not cancelled",
    );
    let tmp = s.0.join("w1").join("tmp");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "scratch left in {}",
            tmp.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(e1);
}

#[test]
fn a_paused_coordinator_holds_the_jobs_back_and_loses_no_event() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-backpressure");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7761, &s.0.join("w1"), "1");
    let child = Command::new(faultbox())
        .current_dir(root())
        .args(["test", "soak/fleet/chatty.star", "--test", "long_burst"])
        .args(["--format", "json", "--executors", &e1.addr])
        .args(["--fleet", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    common::wait_processes("chatty_svc.py", |n| n >= 1, 20, "the service did not start");
    // The burst of 60,000 writes is under way: stop taking events for 2 s (less than
    // the links' 5 s idle timeout), then go on.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = doc["tests"][0]["events"].as_array().unwrap();
    let writes: Vec<i64> = events
        .iter()
        .filter(|e| e["event_type"] == "syscall.write" && e["service"] == "chatty")
        .map(|e| {
            chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap()
        })
        .collect();
    // Every event arrived, in order...
    assert!(writes.len() >= 60_000, "{} writes", writes.len());
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "events out of order"
    );
    // ...and while nobody took them, the service was held: its writes stopped for
    // most of the pause instead of piling up on the executor.
    let gap = writes.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        gap >= 1_000_000_000,
        "the longest pause between writes was {} ms",
        gap / 1_000_000
    );
    drop(e1);
    no_services_left();
}
