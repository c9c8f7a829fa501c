//! Delay faults through the production launch path: a real target (`targets/timed.c`)
//! in its namespaces under the shim's seccomp filter, its `getppid` calls delayed by
//! the supervisor and answered by the delay timer. A delay must never be shorter than
//! asked; how much longer is the benchmark's business (`scripts/bench-delay.sh`), not
//! a test's, on machines this noisy.
//!
//! Needs the shim binary: build the workspace first (`cargo build --workspace`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use faultbox_executor::engine::rules::Decision;
use faultbox_executor::engine::supervisor::{EventSink, SyscallEvent};
use faultbox_executor::engine::timer::Timer;
use faultbox_executor::sandbox::session::{self, SessionConfig};
use faultbox_executor::Exit;
use faultbox_shim::rule::FaultRule;

/// The tests here count the process timer's pending deadlines: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// `tests/targets/timed.c`, compiled once per test binary.
fn timed() -> PathBuf {
    static TIMED: OnceLock<PathBuf> = OnceLock::new();
    TIMED
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("timed");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/timed.c");
            let st = Command::new("gcc")
                .args(["-O1", "-Wall", "-pthread", "-o"])
                .arg(&out)
                .arg(src)
                .status()
                .expect("gcc runs");
            assert!(st.success(), "compiling timed.c");
            out
        })
        .clone()
}

/// A private directory for the target's output, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("fbtest-delay-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<SyscallEvent>>);

impl EventSink for Events {
    fn syscall(&self, event: SyscallEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn delayed(&self, d: Duration) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| &*e.name == "getppid" && e.decision == Decision::Delay(d))
            .count()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A session of `timed THREADS CALLS` under `rule`, its stdout in `out`.
fn config(rule: &str, threads: u32, calls: u32, out: &std::fs::File) -> SessionConfig {
    let program = timed();
    let argv = vec![
        program.clone().into_os_string(),
        threads.to_string().into(),
        calls.to_string().into(),
    ];
    let rules = [FaultRule::parse(rule).unwrap()];
    let shim = session::find_shim().expect("the shim: build the workspace first");
    let mut cfg = SessionConfig::for_rules(
        program,
        argv,
        std::env::vars_os().collect(),
        shim,
        &rules,
        1,
    )
    .unwrap();
    cfg.stdout = Some(out.as_raw_fd());
    cfg
}

#[test]
fn a_delayed_call_lasts_at_least_its_delay() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = runtime();
    for (text, d, calls) in [
        ("100us", Duration::from_micros(100), 50),
        ("1ms", Duration::from_millis(1), 20),
        ("10ms", Duration::from_millis(10), 4),
    ] {
        let threads = 4;
        let dir = Scratch::new(text);
        let out_path = dir.0.join("out");
        let out = std::fs::File::create(&out_path).unwrap();
        let events = Arc::new(Events::default());
        let cfg = config(&format!("getppid=delay:{text}:100%"), threads, calls, &out);
        let outcome = rt.block_on(async {
            let running = session::start(cfg, events.clone()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(30), running.wait())
                .await
                .expect("the target ends")
        });
        assert!(matches!(outcome.exit, Exit::Code(0)), "{:?}", outcome.exit);
        let report = std::fs::read_to_string(&out_path).unwrap();
        let field = |name: &str| -> u64 {
            report
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {report:?}"))
        };
        let total = u64::from(threads * calls);
        assert_eq!(field("calls"), total, "every call continued: {report}");
        assert!(
            field("min_ns") >= d.as_nanos() as u64,
            "a {text} delay ended early: {report}"
        );
        assert_eq!(
            events.delayed(d) as u64,
            total,
            "each call reported delayed"
        );
    }
}

#[test]
fn a_target_killed_mid_delay_leaves_no_answer_pending() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let timer = Timer::process().expect("the delay timer starts");
    let before = timer.pending();
    let rt = runtime();
    let dir = Scratch::new("killed");
    let out = std::fs::File::create(dir.0.join("out")).unwrap();
    let events = Arc::new(Events::default());
    let cfg = config("getppid=delay:20s:100%", 3, 1, &out);
    let start = Instant::now();
    let outcome = rt.block_on(async {
        let running = session::start(cfg, events.clone()).await.unwrap();
        // All three threads are inside their delayed call.
        while events.delayed(Duration::from_secs(20)) < 3 {
            assert!(start.elapsed() < Duration::from_secs(10), "calls not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(timer.pending(), before + 3);
        running.kill();
        running.wait().await
    });
    assert!(
        matches!(outcome.exit, Exit::Signal(libc::SIGKILL)),
        "{:?}",
        outcome.exit
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        timer.pending(),
        before,
        "the stopped supervisor's answers were dropped, not left to fire"
    );
}
