//! One test, end to end: a sandbox, the services started in dependency order and
//! waited for, the test body, and everything stopped again, whatever happened.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultbox_spec::limits::Limits;
use faultbox_spec::model::{HealthcheckKind, Service, Test};
use faultbox_spec::run::FailureType;
use faultbox_spec::world::Event;
use faultbox_spec::{Loaded, Verdict};

use crate::sandbox::netns::Sandbox;
use crate::world::steps;
use crate::world::test_world::{FaultReport, ServiceState, TestWorld};

/// How long a service gets between SIGTERM and SIGKILL when a test ends.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct TestOptions {
    pub seed: u64,
    pub shim: PathBuf,
    pub runtime: tokio::runtime::Handle,
    /// Delays and time syscalls use a virtual clock instead of sleeping.
    pub virtual_time: bool,
    /// How long the body may run, unless the test sets its own limit.
    pub timeout: Duration,
    /// How `parallel()` orders the services' calls.
    pub order: crate::engine::scheduler::Order,
    /// Ends the job early from outside.
    pub cancel: Arc<crate::world::cancel::Cancel>,
    /// Where the events also go while the test runs.
    pub stream: Option<Arc<crate::fleet::stream::EventStream>>,
}

/// Where a test's time went, for the overhead benchmark.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub sandbox: Duration,
    /// Launching every service (namespaces, filter, exec).
    pub launch: Duration,
    /// From the last launch to the last healthcheck passing.
    pub ready: Duration,
    pub body: Duration,
    pub stop: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestReport {
    pub name: String,
    pub seed: u64,
    /// Wall-clock time the test started; event timestamps count from it.
    pub started_at: std::time::SystemTime,
    pub verdict: Verdict,
    pub return_value: Option<String>,
    /// The return value as JSON, for `--format json`.
    #[serde(default)]
    pub return_json: Option<serde_json::Value>,
    pub duration: Duration,
    pub events: Vec<Event>,
    pub faults: Vec<FaultReport>,
    pub timings: Timings,
    /// Assertions the test body evaluated.
    pub assertions: u64,
    /// Services that exited on their own during the test: (name, exit code).
    pub crashed: Vec<(String, i32)>,
    /// Why the services did not all start, if they did not.
    pub startup: Option<Startup>,
    /// The test is a probe without an oracle (see `Test::probe`).
    pub probe: bool,
    /// For matrix cells: (scenario, fault assumption).
    pub cell: Option<(String, String)>,
    /// If the test ran `parallel()`: how many calls its first ordering decision
    /// covered (an exhaustive exploration runs all their orderings).
    pub explored: Option<usize>,
    /// Which ordering this run used.
    pub order: Option<crate::engine::scheduler::Order>,
}

impl TestReport {
    /// A report of `name` with nothing recorded yet.
    pub fn empty(name: String, seed: u64, verdict: Verdict) -> TestReport {
        TestReport {
            name,
            seed,
            started_at: std::time::SystemTime::now(),
            verdict,
            return_value: None,
            return_json: None,
            duration: Duration::ZERO,
            events: Vec::new(),
            faults: Vec::new(),
            timings: Timings::default(),
            assertions: 0,
            crashed: Vec::new(),
            startup: None,
            probe: false,
            cell: None,
            explored: None,
            order: None,
        }
    }
}

/// How a service failed to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Startup {
    Exited { service: String, code: i32 },
    HealthcheckTimeout { service: String },
    Other { service: String },
}

/// Runs `test` on a thread of its own (its network namespace is per thread) and
/// returns its report.
pub fn run_test(loaded: Arc<Loaded>, test: Test, opts: TestOptions) -> TestReport {
    let name = test.name.clone();
    let seed = opts.seed;
    std::thread::Builder::new()
        .name(format!("faultbox-{name}"))
        .spawn(move || run_here(&loaded, &test, &opts))
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("the test thread panicked"))
        })
        .unwrap_or_else(|e| {
            TestReport::empty(
                name,
                seed,
                Verdict::Fail {
                    reason: e.to_string(),
                    failure_type: FailureType::Error,
                },
            )
        })
}

fn fail(reason: String) -> Verdict {
    Verdict::Fail {
        reason,
        failure_type: FailureType::Error,
    }
}

fn start_failed(reason: String) -> Verdict {
    Verdict::Fail {
        reason,
        failure_type: FailureType::ServiceStart,
    }
}

fn run_here(loaded: &Arc<Loaded>, test: &Test, opts: &TestOptions) -> TestReport {
    let start = Instant::now();
    let world = Arc::new(TestWorld::new(
        opts.runtime.clone(),
        opts.seed,
        opts.virtual_time,
        opts.order,
        opts.stream.clone(),
    ));
    let mut r = TestReport {
        probe: test.probe,
        cell: test.cell.clone(),
        ..TestReport::empty(test.name.clone(), opts.seed, Verdict::Pass)
    };
    let finish = |mut r: TestReport, world: &TestWorld| {
        r.explored = world.explored();
        r.order = Some(opts.order);
        r.duration = start.elapsed();
        r.events = world.log().events();
        r.faults = world.fault_reports();
        r
    };
    let sandbox = match Sandbox::enter() {
        Ok(s) => s,
        Err(e) => {
            r.verdict = fail(e.to_string());
            return finish(r, &world);
        }
    };
    r.timings.sandbox = start.elapsed();
    let logs = match crate::sandbox::scratch::test_dir(&test.name) {
        Ok(d) => d,
        Err(e) => {
            r.verdict = fail(format!("creating the test's scratch directory: {e}"));
            return finish(r, &world);
        }
    };

    let t = Instant::now();
    if let Err(e) = world.network_up(&loaded.spec, logs.path()) {
        r.verdict = fail(e);
        return finish(r, &world);
    }
    r.timings.sandbox += t.elapsed();
    let mut started = Vec::new();
    for svc in &loaded.spec.services {
        let t = Instant::now();
        if opts.cancel.is_cancelled() {
            break;
        }
        match world.start_service(&loaded.spec, svc, &opts.shim, logs.path()) {
            Ok(state) => {
                opts.cancel.register(state.running.pid);
                started.push(state);
            }
            Err(e) => {
                r.startup = Some(Startup::Other {
                    service: svc.name.clone(),
                });
                r.verdict = start_failed(e);
                break;
            }
        }
        r.timings.launch += t.elapsed();
        let t = Instant::now();
        if let Err((e, why)) =
            wait_ready(started.last().expect("just started"), &world, logs.path())
        {
            r.startup = Some(why);
            r.verdict = start_failed(e);
            break;
        }
        r.timings.ready += t.elapsed();
        world.lifecycle(&svc.name, "ready", Default::default());
    }
    if r.verdict == Verdict::Pass {
        let t = Instant::now();
        let limits = Limits {
            cancel: opts.cancel.flag(),
            ..Limits::new(test.timeout.unwrap_or(opts.timeout))
        };
        let (outcome, killed) = run_body(loaded, test, &world, limits, sandbox.netns());
        r.timings.body = t.elapsed();
        r.verdict = outcome.verdict;
        r.return_value = outcome.return_value;
        r.return_json = outcome.return_json;
        r.assertions = outcome.assertions;
        r.crashed = started
            .iter()
            .filter_map(|s| {
                // A service that closed its sockets on the way out may not have its
                // exit status yet; one that is exiting gets a moment to finish.
                let deadline = Instant::now() + Duration::from_secs(1);
                let mut exit = s.running.poll_exit();
                while exit.is_none()
                    && Instant::now() < deadline
                    && crate::engine::procfs::is_exiting(s.running.pid)
                {
                    std::thread::sleep(Duration::from_millis(2));
                    exit = s.running.poll_exit();
                }
                exit.map(|e| (s.decl.name.clone(), e.code()))
            })
            .collect();
        if killed {
            // Killed here for running past the time limit: not a crash of theirs.
            r.crashed.clear();
        }
    }
    opts.cancel.forget();
    if opts.cancel.is_cancelled() {
        r.verdict = fail("cancelled".into());
        r.crashed.clear();
    }
    let t = Instant::now();
    world.stop_all(STOP_GRACE);
    r.timings.stop = t.elapsed();
    drop(sandbox);
    finish(r, &world)
}

/// How long after its time limit a body that has not stopped gets its services
/// killed (whatever it waits on then fails at once).
const KILL_AFTER: Duration = Duration::from_secs(1);
/// How long after its time limit a body still busy (in one long native call) is left
/// behind: the test is reported and cleaned up without it.
const ABANDON_AFTER: Duration = Duration::from_secs(5);
/// Stack of a test body's thread: room for Starlark's deepest call chain in a debug
/// build; reserved, not committed.
const BODY_STACK: usize = 64 << 20;

/// Runs the test body on a thread of its own, in the test's network namespace, and
/// waits for it under its limits. The body stops itself at its time limit, when the
/// job is cancelled, or past its memory budget; one that cannot (a long native call,
/// or a request for memory that was refused) is left behind and reported, so the
/// services are always stopped and the scratch directory removed. Returns the
/// outcome and whether the services were killed for running past the limit.
fn run_body(
    loaded: &Arc<Loaded>,
    test: &Test,
    world: &Arc<TestWorld>,
    limits: Limits,
    netns: std::os::fd::RawFd,
) -> (faultbox_spec::TestOutcome, bool) {
    let outcome = |verdict| faultbox_spec::TestOutcome {
        verdict,
        return_value: None,
        return_json: None,
        assertions: 0,
    };
    // The thread enters the namespace through a descriptor of its own, so it does not
    // depend on the sandbox outliving it.
    // SAFETY: `netns` is the sandbox's descriptor, open for the whole of this call.
    let ns = match unsafe { std::os::fd::BorrowedFd::borrow_raw(netns) }.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            return (
                outcome(fail(format!("sharing the test's network namespace: {e}"))),
                false,
            )
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (loaded, test, w, lim) = (loaded.clone(), test.clone(), world.clone(), limits.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("faultbox-body-{}", test.name))
        .stack_size(BODY_STACK)
        .spawn(move || {
            // SAFETY: setns(2) on a namespace descriptor this thread owns; it moves
            // only the calling thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let _ = tx.send(outcome(fail(format!(
                    "entering the test's network namespace: {e}"
                ))));
                return;
            }
            drop(ns);
            let _ = tx.send(faultbox_spec::run_test(&loaded, &test, w, lim));
        });
    if let Err(e) = spawned {
        return (
            outcome(fail(format!("starting the test body's thread: {e}"))),
            false,
        );
    }
    let deadline = Instant::now() + limits.timeout;
    let mut killed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(o) => return (o, killed),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return (
                    outcome(fail("the test body's thread panicked".into())),
                    killed,
                )
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(asked) = limits.signal.parked() {
            let why = format!(
                "the test asked for {} at once, past its memory limit of {}",
                faultbox_spec::limits::memory::describe(asked),
                faultbox_spec::limits::memory::describe(limits.memory)
            );
            return (outcome(fail(why)), killed);
        }
        let now = Instant::now();
        if now > deadline + KILL_AFTER && !killed {
            world.kill_services();
            killed = true;
        }
        if now > deadline + ABANDON_AFTER {
            let verdict = Verdict::Fail {
                reason: faultbox_spec::limits::Stop::Timeout(limits.timeout).describe("the test"),
                failure_type: FailureType::Timeout,
            };
            return (outcome(verdict), killed);
        }
    }
}

/// Polls the service's healthcheck until it passes, it times out, or the service
/// exits. Starts at 100 µs between polls and backs off to 5 ms, so a ready service is
/// seen within a millisecond or two.
fn wait_ready(
    state: &ServiceState,
    world: &TestWorld,
    logs: &std::path::Path,
) -> Result<(), (String, Startup)> {
    let svc: &Service = &state.decl;
    let exited = |code: i32| {
        (
            crashed(svc, code, logs),
            Startup::Exited {
                service: svc.name.clone(),
                code,
            },
        )
    };
    let Some(hc) = &svc.healthcheck else {
        return match state.running.poll_exit() {
            Some(exit) => Err(exited(exit.code())),
            None => Ok(()),
        };
    };
    let (port, path) = steps::parse_target(&hc.target).ok_or_else(|| {
        (
            format!(
                "service {:?}: healthcheck target {:?} has no port",
                svc.name, hc.target
            ),
            Startup::Other {
                service: svc.name.clone(),
            },
        )
    })?;
    let deadline = Instant::now() + hc.timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(exit) = state.running.poll_exit() {
            return Err(exited(exit.code()));
        }
        let last = match world.probe(&svc.name, hc, port, &path) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let check = match &hc.kind {
                HealthcheckKind::Tcp => format!("tcp({:?})", hc.target),
                HealthcheckKind::Http => format!("http({:?})", hc.target),
                HealthcheckKind::Ready { interface } => format!(
                    "ready(interface={:?}) on {}",
                    interface.as_deref().unwrap_or_default(),
                    hc.target
                ),
            };
            return Err((
                format!(
                    "service {:?}: healthcheck {check} did not pass within {:?} (declared at {}; last try: {last}){}",
                    svc.name,
                    hc.timeout,
                    svc.declared_at,
                    tail(logs, &svc.name)
                ),
                Startup::HealthcheckTimeout {
                    service: svc.name.clone(),
                },
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

fn crashed(svc: &Service, code: i32, logs: &std::path::Path) -> String {
    format!(
        "service {:?} exited with code {code} during startup (declared at {}){}",
        svc.name,
        svc.declared_at,
        tail(logs, &svc.name)
    )
}

/// The last lines of a service's stderr, for failure messages.
fn tail(logs: &std::path::Path, service: &str) -> String {
    let text = std::fs::read_to_string(logs.join(format!("{service}.stderr"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut lines = lines;
    lines.reverse();
    format!("; stderr: {}", lines.join(" | "))
}
