//! Container services on a fleet: the spec's folder (with its `build=` directory)
//! ships in the bundle, and the executor runs the containers with its own Docker,
//! its hand-off sockets deep in its work directory.

use super::*;

#[test]
fn the_containers_demo_runs_on_an_executor() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-containers");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let e1 = Executor::start(&dir, "e1", 7741, &s.0.join("w1"), "2");
    let out = faultbox_cmd(&[
        "test",
        "examples/containers/faultbox.star",
        "--format",
        "json",
        "--executors",
        &e1.addr,
        "--fleet",
        dir.to_str().unwrap(),
    ]);
    let doc = crate::common::results_of(&out);
    let tests = doc["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 4, "{}", out.stdout);
    for t in tests {
        assert_eq!(
            t["result"], "pass",
            "{}: {}\n{}",
            t["name"], t["reason"], out.stderr
        );
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=faultbox.run"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "containers left behind");
}

#[test]
fn a_killed_executors_containers_go_when_it_starts_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let containers = || {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=faultbox.run"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let s = Scratch::new("fleet-containers-kill");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let work = s.0.join("w1");
    let mut e1 = Executor::start(&dir, "e1", 7742, &work, "1");
    let mut run = Command::new(faultbox())
        .current_dir(root())
        .args([
            "test",
            "coordinator/tests/specs/containers/waits.star",
            "--executors",
        ])
        .arg(&e1.addr)
        .arg("--fleet")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers().is_empty() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    e1.kill();
    let _ = run.wait();
    assert_ne!(containers(), "", "a killed executor leaves its container");
    let _e1 = Executor::start(&dir, "e1", 7742, &work, "1");
    assert_eq!(containers(), "", "the restarted executor removed it");
}
