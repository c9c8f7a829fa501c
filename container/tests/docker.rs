//! Against the real Docker daemon and the locally built test images
//! (`scripts/images.sh`): images, builds, a container's life, and the sweep.

use std::time::Duration;

use faultbox_container::owner::{OWNER_LABEL, RUN_LABEL};
use faultbox_container::{ContainerError, ContainerSpec, Daemon};

const REDIS: &str = "faultbox-test/redis:7";
const EXAMPLES: &str = "faultbox-test/examples:latest";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A name no other test run uses.
fn unique(what: &str) -> String {
    format!("faultbox-ctest-{}-{what}", std::process::id())
}

fn docker_ps(filter: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_missing_image_says_to_build_or_load_it() {
    rt().block_on(async {
        let d = Daemon::connect().await.unwrap();
        let e = d.image("faultbox-test/no-such-image:1").await.unwrap_err();
        assert!(matches!(e, ContainerError::ImageMissing { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("no-such-image")
                && msg.contains("docker build")
                && msg.contains("does not pull"),
            "{msg}"
        );
    });
}

#[test]
fn builds_show_their_output_when_they_fail() {
    rt().block_on(async {
        let d = Daemon::connect().await.unwrap();
        let dir = std::env::temp_dir().join(unique("build"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.txt"), "hi").unwrap();
        std::fs::write(dir.join("secret.txt"), "no").unwrap();
        std::fs::write(dir.join(".dockerignore"), "secret.txt\n").unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {EXAMPLES}\nCOPY hello.txt /hello.txt\nLABEL faultbox.test=1\n"),
        )
        .unwrap();
        let tag = format!("faultbox-test/ctest-{}:1", std::process::id());
        let img = d.build(&dir, &tag).await.unwrap();
        assert!(img.entrypoint.is_empty() && img.cmd.is_empty(), "{img:?}");
        // The ignored file was not in the context.
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {EXAMPLES}\nCOPY secret.txt /secret.txt\n"),
        )
        .unwrap();
        let e = d.build(&dir, &tag).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, ContainerError::Build { .. }) && msg.contains("secret.txt"),
            "{msg}"
        );
        // A failing step: its output is in the error.
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {EXAMPLES}\nRUN /no/such/program\n"),
        )
        .unwrap();
        let msg = d.build(&dir, &tag).await.unwrap_err().to_string();
        assert!(
            msg.contains("Step 2/2") && msg.contains("/no/such/program"),
            "{msg}"
        );
        // No Dockerfile at all.
        std::fs::remove_file(dir.join("Dockerfile")).unwrap();
        let msg = d.build(&dir, &tag).await.unwrap_err().to_string();
        assert!(msg.contains("no Dockerfile"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
        std::process::Command::new("docker")
            .args(["rmi", "-f", &tag])
            .output()
            .unwrap();
    });
}

#[test]
fn a_container_runs_with_only_loopback_and_is_removed_whole() {
    rt().block_on(async {
        let d = Daemon::connect().await.unwrap();
        let img = d.image(REDIS).await.unwrap();
        let run = unique("life");
        let spec = ContainerSpec {
            name: run.clone(),
            run: run.clone(),
            image: REDIS.into(),
            command: img.command(Some(&["redis-server".into(), "--save".into(), "".into()])),
            network_mode: "none".into(),
            ..Default::default()
        };
        let c = d.create(&spec).await.unwrap();
        let state = d.start(&c).await.unwrap();
        assert!(state.running && state.pid > 0, "{state:?}");
        // Its network namespace has loopback only.
        let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", state.pid)).unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "{dev}");
        assert_eq!(
            docker_ps(&format!("label={RUN_LABEL}={run}"))
                .lines()
                .count(),
            1
        );
        let t = std::time::Instant::now();
        d.stop_and_remove(&c, Duration::from_secs(5)).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "redis stops on SIGTERM"
        );
        assert_eq!(docker_ps(&format!("label={RUN_LABEL}={run}")), "");
        // Removing again is fine.
        d.remove(&c).await.unwrap();
    });
}

#[test]
fn the_sweep_removes_only_what_dead_owners_left() {
    rt().block_on(async {
        let d = Daemon::connect().await.unwrap();
        let img = d.image(REDIS).await.unwrap();
        let mk = |what: &str, owner: Option<String>| ContainerSpec {
            name: unique(what),
            run: unique("sweep"),
            image: REDIS.into(),
            command: img.command(None),
            network_mode: "none".into(),
            owner,
            ..Default::default()
        };
        let dead = d
            .create(&mk("dead", Some("another-boot/12345".into())))
            .await
            .unwrap();
        let live = d.create(&mk("live", None)).await.unwrap();
        let removed = d.sweep().await.unwrap();
        assert!(removed.contains(&dead.name), "{removed:?}");
        assert!(!removed.contains(&live.name), "{removed:?}");
        assert_eq!(docker_ps(&format!("name={}", dead.name)), "");
        assert_ne!(docker_ps(&format!("name={}", live.name)), "");
        assert_ne!(docker_ps(&format!("label={OWNER_LABEL}")), "");
        d.remove(&live).await.unwrap();
        assert_eq!(
            docker_ps(&format!("label={RUN_LABEL}={}", unique("sweep"))),
            ""
        );
    });
}
