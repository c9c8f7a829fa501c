//! Container services against the real Docker daemon and the local test images
//! (`scripts/images.sh`, `scripts/build-static-shim.sh`): the same faults, protocol
//! rules and events as binaries, one clear error for an image that is not there,
//! and nothing left in Docker after a run, even one that was killed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::root;

/// Tests that count containers run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Containers, networks and volumes any Faultbox run made that still exist.
fn docker_leftovers() -> String {
    let mut all = String::new();
    for what in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
    ] {
        let out = Command::new("docker")
            .args(what)
            .args(["--filter", "label=faultbox.run"])
            .output()
            .expect("docker runs");
        all.push_str(String::from_utf8_lossy(&out.stdout).trim());
    }
    all
}

fn spec(name: &str) -> String {
    format!("coordinator/tests/specs/containers/{name}.star")
}

fn faultbox(args: &[&str]) -> common::Out {
    let out = common::faultbox_at(&root(), args);
    assert_eq!(docker_leftovers(), "", "containers outlived the run");
    assert!(common::scratch_leftovers().is_empty());
    assert!(common::processes_with("sut.py").is_empty());
    out
}

/// The tests of a `--format json` run, each of which must have passed, with the exit
/// code that says so.
fn passing(out: &common::Out) -> Vec<serde_json::Value> {
    let doc = common::results_of(out);
    let tests = doc["tests"].as_array().unwrap().clone();
    for t in &tests {
        assert_eq!(
            t["result"], "pass",
            "{}: {}\n{}",
            t["name"], t["reason"], out.stderr
        );
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
    tests
}

#[test]
fn a_container_service_takes_the_same_faults_as_a_binary() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = faultbox(&["test", &spec("redis"), "--format", "json"]);
    assert_eq!(passing(&out).len(), 5, "{}", out.stdout);
}

/// Runs all of a spec's tests (alone: leftovers are checked by name), which must
/// be `count` and all pass.
fn every_test_passes(spec: &str, count: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = faultbox(&["test", spec, "--format", "json"]);
    assert_eq!(passing(&out).len(), count, "{}", out.stdout);
}

#[test]
fn a_nats_container_takes_message_faults_as_a_binary_does() {
    every_test_passes(&spec("nats"), 2);
    assert!(common::processes_with("nats_sut.py").is_empty());
}

/// Event sources on containers: PostgreSQL's stderr decoded by a regex, a file inside
/// the container tailed through its root, its WAL, and a NATS container's subject.
#[test]
fn event_sources_observe_containers_as_they_do_binaries() {
    every_test_passes(&spec("sources"), 4);
}

#[test]
fn a_kafka_container_takes_record_faults_as_a_binary_does() {
    every_test_passes(&spec("kafka"), 2);
}

#[test]
fn a_mongodb_wire_container_takes_command_faults_as_a_binary_does() {
    every_test_passes(&spec("mongodb"), 2);
}

#[test]
fn a_grpcio_container_takes_call_faults_as_a_binary_does() {
    every_test_passes(&spec("grpc"), 2);
}

#[test]
fn a_rabbitmq_container_takes_message_faults_as_a_binary_does() {
    every_test_passes(&spec("amqp"), 2);
    assert!(common::processes_with("beam.smp").is_empty());
    assert!(common::processes_with("epmd").is_empty());
}

#[test]
fn an_image_that_is_not_there_is_one_clear_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = faultbox(&["test", &spec("missing"), "--format", "json"]);
    assert_eq!(out.code, 2);
    let doc = common::results_of(&out);
    let reason = doc["tests"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("service \"db\"")
            && reason.contains("faultbox-test/no-such-image:1")
            && reason.contains("not on this host"),
        "{reason}"
    );
}

#[test]
fn a_killed_run_leaves_containers_the_next_run_removes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = Command::new(common::faultbox())
        .current_dir(root())
        .args(["test", &spec("waits")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker_leftovers().is_empty() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past start: give the test body time to block.
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(docker_leftovers(), "", "a SIGKILL leaves the container");
    // The next run sweeps what the dead one left, then cleans up after itself.
    let out = faultbox(&["test", &spec("redis"), "--test", "pass_through"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn the_containers_chapter_demo_runs_as_the_chapter_says() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = faultbox(&[
        "test",
        "examples/containers/faultbox.star",
        "--format",
        "json",
    ]);
    let tests = passing(&out);
    assert_eq!(tests.len(), 4, "{}", out.stdout);
    // pwrite64 is denied on Postgres itself, as the chapter shows.
    let disk_full = tests
        .iter()
        .find(|t| t["name"] == "test_postgres_disk_full")
        .unwrap();
    assert!(disk_full.to_string().contains("pwrite64"), "{disk_full}");
}

#[test]
fn faultbox_init_from_compose_writes_a_spec_that_runs_unchanged() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("fbtest-compose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("api")).unwrap();
    for f in ["Dockerfile", "app.py"] {
        std::fs::copy(
            root().join("examples/containers/api").join(f),
            dir.join("api").join(f),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("docker-compose.yml"),
        r#"services:
  api:
    build: ./api
    ports: ["8080:8080"]
    depends_on: [postgres, cache]
    environment:
      PORT: "8080"
      DATABASE_URL: postgres://postgres:test@postgres:5432/testdb?sslmode=disable
      REDIS_ADDR: cache:6379
  postgres:
    image: faultbox-test/postgres:15
    command: ["-c", "fsync=off"]
    environment:
      POSTGRES_PASSWORD: test
      POSTGRES_DB: testdb
  cache:
    image: faultbox-test/redis:7
    ports: ["6379"]
"#,
    )
    .unwrap();
    let init = common::faultbox_at(
        &dir,
        &["init", "--from-compose", "--output", "faultbox.star"],
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let out = faultbox(&[
        "test",
        dir.join("faultbox.star").to_str().unwrap(),
        "--format",
        "json",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let tests = passing(&out);
    let names: Vec<&str> = tests.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        ["test_happy_path", "test_happy_path_answers"],
        "{}",
        out.stdout
    );
}

#[test]
fn volumes_and_a_named_user_from_the_image() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("fbtest-volume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("redis")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    // The image's user writes there.
    std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        dir.join("redis/Dockerfile"),
        "FROM faultbox-test/redis:7\nVOLUME /scratch\nUSER redis\nENTRYPOINT [\"redis-server\"]\n\
         CMD [\"--bind\", \"127.0.0.1 -::1\", \"--protected-mode\", \"no\", \"--dir\", \"/data\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("spec.star"),
        "cache = service(\"cache\", interface(\"main\", \"redis\", 6379), build = \"./redis\",\n\
         \x20   volumes = {\"./data\": \"/data\"}, healthcheck = ready(timeout = \"20s\"))\n\
         def test_saves_into_the_volume():\n\
         \x20   assert_true(cache.main.command(args = [\"SAVE\"]).ok)\n",
    )
    .unwrap();
    let volumes = || {
        let out = Command::new("docker")
            .args(["volume", "ls", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = volumes();
    let out = faultbox(&["test", dir.join("spec.star").to_str().unwrap()]);
    // The image's VOLUME made an anonymous volume; it went with the container.
    assert_eq!(
        volumes(),
        before,
        "an anonymous volume outlived its container"
    );
    let dump = std::fs::metadata(dir.join("data/dump.rdb"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let dump = dump.expect("Redis saved into the host directory");
    // Written by the image's USER (redis), resolved by name inside the image.
    assert_ne!(dump.uid(), 0, "the container ran as root");
}

#[test]
fn bad_container_input_is_one_clear_error_with_its_place() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A fault on a container declared without a filter.
    let out = faultbox(&["test", &spec("unfiltered")]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("unfiltered.star:2:")
            && out
                .stderr
                .contains("seccomp=False, but the spec faults or traces it (write"),
        "{}",
        out.stderr
    );
    // A binary and an image together.
    let out = faultbox(&["test", &spec("both")]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("both.star:2")
            && out
                .stderr
                .contains("give only one of a binary, image= or build="),
        "{}",
        out.stderr
    );
    // No Docker daemon: the test fails naming the service, where it is declared, and
    // what to do.
    let out = common::faultbox_at_env(
        &root(),
        &["test", &spec("redis"), "--test", "pass_through"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    // Exit 2: the test that starts the service fails, as when a binary cannot start.
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("redis.star:6:")
            && out
                .stderr
                .contains("no Docker daemon at unix:///nonexistent/docker.sock")
            && out.stderr.contains("start dockerd"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(docker_leftovers(), "");
}

#[test]
fn two_slots_and_a_timeout_leave_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Two runs of a container test at once on one host: no names or ports collide.
    let out = faultbox(&[
        "test",
        &spec("redis"),
        "--test",
        "protocol_fault_reaches_the_app",
        "--runs",
        "4",
        "--slots",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = common::results_of(&out);
    assert_eq!(doc["tests"].as_array().unwrap().len(), 4);
    // A test over its time limit with its container running: it fails as a timeout
    // and the container goes (checked by `faultbox`).
    let t = Instant::now();
    let out = faultbox(&[
        "test",
        &spec("waits"),
        "--timeout",
        "3s",
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let doc = common::results_of(&out);
    assert_eq!(doc["tests"][0]["failure_type"], "timeout", "{}", out.stdout);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "stopped at its limit"
    );
}

#[test]
fn virtual_time_reaches_into_containers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // DEBUG SLEEP 5 inside Redis: instant with --virtual-time, 5 s without (the spec's
    // own assertion fails then, which is what makes this a test of the container).
    let out = faultbox(&["test", &spec("vtime"), "--virtual-time"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn trace_and_ops_reach_into_containers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = faultbox(&["test", &spec("more")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("2 passed, 0 failed"), "{}", out.stderr);
}

#[test]
fn a_container_that_exits_at_start_says_why() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = faultbox(&["test", &spec("exits")]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // The failure names the service, where it is declared, and its own last words.
    assert!(
        out.stderr
            .contains("service \"cache\" exited with code 1 during startup")
            && out.stderr.contains("exits.star:2")
            && out.stderr.contains("FATAL CONFIG FILE ERROR"),
        "{}",
        out.stderr
    );
}

#[test]
fn ctrl_c_and_a_missing_volume_leave_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A volume path that does not exist: refused before anything runs, with its place.
    let out = faultbox(&["test", &spec("novolume"), "--dry-run"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("novolume.star:2")
            && out.stderr.contains("volume \"./no-such-dir\"")
            && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
    // Ctrl-C while the container runs: the run is cancelled and the container goes.
    let child = Command::new(common::faultbox())
        .current_dir(root())
        .args(["test", &spec("waits")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker_leftovers().is_empty() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(docker_leftovers(), "", "the container outlived Ctrl-C");
}
