//! `faultbox test`: load a spec, run its tests (each in a sandbox of its own) and
//! report. Exit codes: 0 all passed, 1 Faultbox error (bad spec, bad flags), 2 a test
//! failed.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use faultbox_executor::fleet::actor::{Executor, ExecutorArgs};
use faultbox_executor::sandbox::{program, session};
use faultbox_executor::world::run::TestReport;
use faultbox_spec::{Loaded, Verdict};

use crate::cli::TestArgs;
use crate::coordinator::{self, Explore, Finished, Plan};
use crate::progress::Progress;
use crate::{junit, logging, report};

pub const EXIT_FAILED: i32 = 2;
/// Every executor of a fleet run was lost with work left.
pub const EXIT_NO_EXECUTOR: i32 = 3;
/// Ctrl-C (or SIGTERM): the running jobs were cancelled, as a shell expects.
pub const EXIT_INTERRUPTED: i32 = 130;
/// The name of the executor inside this process.
const LOCAL: &str = "local";
/// A Faultbox error: bad flags, a spec that cannot be loaded.
const EXIT_ERROR: i32 = 1;
/// The most runs (tests × seeds) one invocation plans: the coordinator keeps a record
/// of each. Larger suites are split with `--partition` or over several invocations.
pub const MAX_RUNS: u64 = 1_000_000;

fn error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("faultbox: error: {msg}");
    EXIT_ERROR
}

/// Reports an error that leaves the run without results; with `--report`, the page
/// says so too, since whoever opens it expects one.
fn aborted(args: &TestArgs, msg: impl std::fmt::Display, code: i32) -> i32 {
    let msg = msg.to_string();
    eprintln!("faultbox: error: {msg}");
    if let Some(path) = &args.report {
        let spec = args.spec.display().to_string();
        if let Err(e) = crate::html_report::write_aborted(path, &spec, &msg) {
            eprintln!("faultbox: error: --report {}: {e}", path.display());
        }
    }
    code
}

pub fn run(args: TestArgs) -> i32 {
    // What runs of this host that were killed outright left behind.
    faultbox_executor::sandbox::scratch::sweep();
    let loaded = match faultbox_spec::load(&args.spec) {
        Ok(l) => l,
        Err(e) => return aborted(&args, e, EXIT_ERROR),
    };
    let spec_arg = args.spec.display().to_string();
    let mut tests = loaded.spec.tests.clone();
    if let Some(want) = &args.test {
        let full = if want.starts_with("test_") {
            want.clone()
        } else {
            format!("test_{want}")
        };
        tests.retain(|t| t.name == full);
        if tests.is_empty() {
            let names: Vec<&str> = loaded.spec.tests.iter().map(|t| t.name.as_str()).collect();
            return error(format!(
                "--test {want}: no such test in {spec_arg} (tests: {})",
                names.join(", ")
            ));
        }
    }
    // This shard's tests; the others are reported as skipped. Slices count in spec
    // order over the whole spec, so `--test` does not change what a shard owns.
    let mut skipped: Vec<String> = Vec::new();
    if let Some(p) = args.partition {
        let index: HashMap<&str, usize> = loaded
            .spec
            .tests
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        tests.retain(|t| {
            let keep = p.keeps(index[t.name.as_str()], &t.name);
            if !keep {
                skipped.push(t.name.clone());
            }
            keep
        });
    }
    // A binary that does not exist is a mistake in the spec, not a failing test, and
    // --dry-run refuses what the run would. On a fleet, what only an executor can
    // find is checked there, before any job.
    for svc in &loaded.spec.services {
        let found = if args.executors.is_some() {
            program::check_before_shipping(svc)
        } else {
            program::resolve(svc).map(drop)
        };
        if let Err(e) = found {
            let msg = format!("{}: service {:?}: {e}", svc.declared_at, svc.name);
            return aborted(&args, msg, EXIT_ERROR);
        }
        // A container without a filter cannot take a fault or trace: refuse, rather
        // than run a test whose faults are silently inert.
        if svc.container.as_ref().is_some_and(|c| !c.seccomp) {
            let wanted = loaded.spec.filter_syscalls(&svc.name);
            if !wanted.is_empty() {
                return error(format!(
                    "{}: service {:?}: seccomp=False, but the spec faults or traces it ({}): remove seccomp=False or those calls",
                    svc.declared_at,
                    svc.name,
                    wanted.join(", ")
                ));
            }
        }
        // Users, like binaries, are looked up where the service runs.
        if let (Some(user), None) = (&svc.user, &args.executors) {
            if let Err(e) = faultbox_executor::sandbox::user::resolve(user) {
                return error(format!(
                    "{}: service {:?}: user {user:?}: {e}",
                    svc.declared_at, svc.name
                ));
            }
        }
    }
    let runs = args
        .runs
        .unwrap_or(if args.explore.as_deref() == Some("sample") {
            100
        } else {
            1
        });
    let planned = (tests.len() as u64).saturating_mul(runs);
    if args.seed.is_none() && planned > MAX_RUNS {
        return error(format!(
            "--runs {runs}: {} test(s) × {runs} runs is {planned} runs, more than the {MAX_RUNS} one invocation plans; use fewer runs, or split the suite with --partition",
            tests.len()
        ));
    }
    if args.dry_run {
        return dry_run(&loaded, &tests, &spec_arg);
    }
    // A fleet run checks its addresses and identity before anything starts.
    let remote = match &args.executors {
        None => None,
        Some(list) => {
            let addrs = match crate::remote::parse_executors(list) {
                Ok(a) => a,
                Err(e) => return error(e),
            };
            let fleet = args.fleet.clone().unwrap_or_default();
            use faultbox_executor::fleet::identity::{Identity, Role, COORDINATOR};
            match Identity::load(&fleet, COORDINATOR, Role::Coordinator) {
                Ok(id) => Some((addrs, id)),
                Err(e) => return error(format!("--fleet: {e}")),
            }
        }
    };
    let level = if args.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    logging::init(
        logging::Format::choose(args.log_format.as_deref()),
        level,
        format!("{:016x}", std::process::id()),
    );
    // Services run here only without a fleet.
    let mut shim = std::path::PathBuf::new();
    if remote.is_none() {
        if let Err(e) = faultbox_executor::sandbox::netns::Sandbox::probe() {
            return error(e);
        }
        shim = match session::find_shim() {
            Ok(s) => s,
            Err(e) => return error(e),
        };
    }
    let runtime = match coordinator::runtime() {
        Ok(rt) => rt,
        Err(e) => return error(e),
    };
    let loaded = Arc::new(loaded);
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (0..runs).collect(),
    };
    let suite_start = std::time::Instant::now();
    let slots = args
        .slots
        .map_or_else(coordinator::default_slots, |n| n as usize);
    let plan = Plan {
        tests: tests.iter().map(|t| t.name.clone()).collect(),
        seeds,
        explore: match args.explore.as_deref() {
            Some("all") => Explore::All,
            Some(_) => Explore::Sample,
            None => Explore::Seeds,
        },
        virtual_time: args.virtual_time,
        timeout: args.timeout,
        executors: vec![LOCAL.to_string()],
    };
    // Failures (or every run, with --show all) are printed in plan order as their
    // tests complete.
    let progress = Arc::new(Progress::new());
    let show_all = args.show == "all";
    let debug = args.debug;
    let spec_for_emit = spec_arg.clone();
    let loaded_for_emit = loaded.clone();
    let printer = progress.clone();
    let emit: coordinator::Emit = Box::new(move |r| {
        if r.verdict != Verdict::Pass || show_all {
            printer.print(&report::human(
                &spec_for_emit,
                &loaded_for_emit.spec,
                r,
                debug,
            ));
        }
    });
    let bar = progress.clone();
    let mut lines = match args.progress_fd.map(crate::mcp::progress::Lines::from_fd) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => return error(format!("--progress-fd: {e}")),
    };
    let on_progress: coordinator::OnProgress = Box::new(move |c| {
        bar.update(c);
        if let Some(l) = &mut lines {
            l.update(c);
        }
    });
    let finished = match remote {
        // Nothing to run (no tests, or none in this shard): starting an executor for
        // a coordinator that is done at once only races its shutdown.
        _ if plan.tests.is_empty() => Ok(Finished::Reports(Vec::new())),
        None => runtime.block_on(run_in_process(
            plan,
            (emit, on_progress),
            loaded.clone(),
            shim,
            runtime.handle().clone(),
            slots,
        )),
        Some((addrs, identity)) => runtime.block_on(run_on_fleet(
            plan,
            (emit, on_progress),
            &loaded,
            addrs,
            (identity, args.fleet.as_deref()),
        )),
    };
    progress.finish();
    let ran = match finished {
        Ok(Finished::Reports(r)) => r,
        Ok(Finished::Error(e)) => return aborted(&args, e, EXIT_ERROR),
        Ok(Finished::NoExecutor(e)) => return aborted(&args, e, EXIT_NO_EXECUTOR),
        Ok(Finished::Interrupted) => {
            eprintln!("faultbox: interrupted: the running jobs were cancelled");
            if let Some(path) = &args.report {
                let why = "interrupted: the running jobs were cancelled";
                if let Err(e) = crate::html_report::write_aborted(path, &spec_arg, why) {
                    eprintln!("faultbox: error: --report {}: {e}", path.display());
                }
            }
            return EXIT_INTERRUPTED;
        }
        Err(e) => return aborted(&args, e, EXIT_ERROR),
    };
    let shard = args.partition.map(|p| p.to_string()).unwrap_or_default();
    let skip_reason = |_: &str| format!("outside shard {shard}");
    let (reports, executors): (Vec<TestReport>, Vec<String>) =
        ran.into_iter().map(|r| (r.report, r.executor)).unzip();
    // The JSON document is built only when it goes somewhere: with every event of
    // every run, it is the largest thing a run makes.
    let want_json = args.format.as_deref() == Some("json") || args.output.is_some();
    // Every run in plan order, with the skipped tests where they stand in the spec.
    let mut entries: Vec<junit::Entry<'_>> = Vec::new();
    let mut results: Vec<report::TestEntry<'_>> = Vec::new();
    for test in &loaded.spec.tests {
        if skipped.contains(&test.name) {
            results.push(report::TestEntry::Skipped(
                json!({"name": test.name, "result": "skip", "reason": skip_reason(&test.name)}),
            ));
            entries.push(junit::Entry::Skipped {
                name: &test.name,
                why: skip_reason(&test.name),
            });
            continue;
        }
        for (report, executor) in reports
            .iter()
            .zip(&executors)
            .filter(|(r, _)| r.name == test.name)
        {
            if want_json {
                results.push(report::TestEntry::Ran(report::test_json(
                    &spec_arg,
                    &loaded.spec,
                    report,
                )));
            }
            entries.push(junit::Entry::Ran { report, executor });
        }
    }
    let failed = reports
        .iter()
        .filter(|r| r.verdict != Verdict::Pass)
        .count() as u64;
    let passed = reports.len() as u64 - failed;
    let (matrix_text, matrix_json) = report::matrices(&loaded.spec, &reports);
    eprint!("{matrix_text}");
    if skipped.is_empty() {
        eprintln!("{passed} passed, {failed} failed");
    } else {
        eprintln!(
            "{passed} passed, {failed} failed, {} skipped (outside shard {shard})",
            skipped.len()
        );
    }
    let mut head = json!({
        "version": 1,
        "star_file": spec_arg,
        "duration_ms": suite_start.elapsed().as_millis() as u64,
        "pass": passed,
        "fail": failed,
        "skip": skipped.len(),
    });
    if let Some(m) = matrix_json {
        head["matrix"] = m;
    }
    // The HTML report shows the summary too; the JSON document takes `head`.
    let html_head = args.report.is_some().then(|| head.clone());
    let doc = want_json.then_some(report::Document {
        head,
        tests: results,
    });
    if let (Some(doc), Some("json")) = (&doc, args.format.as_deref()) {
        let mut text = Vec::new();
        if let Err(e) = doc.write_to(&mut text) {
            return error(format!("writing the JSON results: {e}"));
        }
        text.push(b'\n');
        // The writer writes UTF-8 only.
        if let Err(e) = crate::stdout::write(&String::from_utf8_lossy(&text)) {
            return error(format!("the JSON results: {e}"));
        }
    }
    // Each walks every event: made only for the files asked for.
    type Render = fn(&[TestReport]) -> String;
    let files: [(_, _, Render); 2] = [
        (&args.shiviz, "--shiviz", crate::shiviz::shiviz),
        (&args.normalize, "--normalize", crate::normalize::normalize),
    ];
    for (path, flag, render) in files {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(path, render(&reports)) {
                return error(format!("{flag} {}: {e}", path.display()));
            }
        }
    }
    if let Some(path) = &args.junit {
        let xml = match junit::junit(&spec_arg, &entries) {
            Ok(x) => x,
            Err(e) => return error(format!("--junit {}: {e}", path.display())),
        };
        if let Err(e) = std::fs::write(path, xml) {
            return error(format!("--junit {}: {e}", path.display()));
        }
    }
    if let (Some(path), Some(doc)) = (&args.output, &doc) {
        // Written as it is made: the document (~400 bytes an event) is never held
        // whole in memory, nor copied.
        let written = std::fs::File::create(path).and_then(|f| {
            use std::io::Write as _;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            doc.write_to(&mut w)?;
            w.write_all(b"\n")?;
            w.flush()
        });
        if let Err(e) = written {
            return error(format!("--output {}: {e}", path.display()));
        }
    }
    if let (Some(path), Some(head)) = (&args.report, &html_head) {
        let run = crate::html_report::Run {
            spec: &spec_arg,
            duration_ms: head["duration_ms"].as_u64().unwrap_or(0),
            matrix: head.get("matrix"),
            services: loaded
                .spec
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            model: &loaded.spec,
            entries: &entries,
        };
        if let Err(e) = crate::html_report::write(path, &run) {
            return error(format!("--report {}: {e}", path.display()));
        }
    }
    // The process exits with this code: freeing every event of every run one by one
    // is work nobody reads.
    std::mem::forget(reports);
    if failed > 0 {
        EXIT_FAILED
    } else {
        0
    }
}

fn dry_run(loaded: &Loaded, tests: &[faultbox_spec::model::Test], spec: &str) -> i32 {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Dry-run: loaded {spec}");
    let _ = writeln!(out, "Services: {}", loaded.spec.services.len());
    for s in &loaded.spec.services {
        let filter = loaded.spec.filter_syscalls(&s.name);
        let filter = if filter.is_empty() {
            "none".to_string()
        } else {
            filter.join(", ")
        };
        let deps = if s.depends_on.is_empty() {
            String::new()
        } else {
            format!(" after {}", s.depends_on.join(", "))
        };
        let _ = writeln!(out, "  {} ({}){deps}; filter: {filter}", s.name, s.binary);
    }
    let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
    let _ = writeln!(out, "Tests: {}", names.join(", "));
    for m in &loaded.spec.matrices {
        let cells = m.cells.iter().filter(|c| c.2.is_some()).count();
        let _ = writeln!(
            out,
            "Fault matrix: {cells} cells ({} scenarios × {} faults)",
            m.scenarios.len(),
            m.faults.len()
        );
    }
    match crate::stdout::write(&out) {
        Ok(()) => 0,
        Err(e) => error(e),
    }
}

/// Runs `plan` on an executor in this process with `slots` slots.
async fn run_in_process(
    plan: Plan,
    (emit, progress): (coordinator::Emit, coordinator::OnProgress),
    loaded: Arc<Loaded>,
    shim: std::path::PathBuf,
    runtime: tokio::runtime::Handle,
    slots: usize,
) -> Result<Finished, String> {
    let (coord, coord_handle, done_rx) = coordinator::start(plan, emit, progress).await?;
    interrupt_on_signal(coord.clone());
    let (exec, exec_handle) = ractor::Actor::spawn(
        None,
        Executor,
        ExecutorArgs {
            name: LOCAL.into(),
            slots,
            loaded,
            shim,
            runtime,
            coordinator: coord.clone(),
        },
    )
    .await
    .map_err(|e| format!("starting the executor: {e}"))?;
    let finished = done_rx
        .await
        .map_err(|_| "the coordinator stopped without a result".to_string());
    exec.stop(None);
    let _ = exec_handle.await;
    let _ = coord_handle.await;
    finished
}

/// Runs `plan` on the executors at `addrs`: every link is made (certificates checked,
/// protocol version agreed, bundle shipped) before the first job starts.
async fn run_on_fleet(
    mut plan: Plan,
    (emit, progress): (coordinator::Emit, coordinator::OnProgress),
    loaded: &Loaded,
    addrs: Vec<std::net::SocketAddr>,
    (identity, fleet): (
        faultbox_executor::fleet::identity::Identity,
        Option<&std::path::Path>,
    ),
) -> Result<Finished, String> {
    // Never the fleet directory: it holds the keys.
    let (bundle, contents) = faultbox_executor::fleet::bundle::build(loaded, fleet)
        .map_err(|e| format!("bundling the spec: {e}"))?;
    let bind: std::net::SocketAddr = if addrs.iter().all(|a| a.is_ipv4()) {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint =
        quinn::Endpoint::client(bind).map_err(|e| format!("opening a QUIC endpoint: {e}"))?;
    let mut links = Vec::new();
    for addr in addrs {
        let link = crate::remote::connect(&endpoint, &identity, addr, &bundle, &contents).await?;
        if links
            .iter()
            .any(|l: &crate::remote::Link| l.name == link.name)
        {
            return Err(format!(
                "--executors: {} and {} are the same executor ({})",
                links
                    .iter()
                    .find(|l| l.name == link.name)
                    .map(|l| l.addr.to_string())
                    .unwrap_or_default(),
                addr,
                link.name
            ));
        }
        eprintln!(
            "executor {} ({}): {} slots, {} of {} files shipped",
            link.name,
            link.addr,
            link.slots,
            link.shipped,
            bundle.files.len()
        );
        links.push(link);
    }
    plan.executors = links.iter().map(|l| l.name.clone()).collect();
    let (coord, coord_handle, done_rx) = coordinator::start(plan, emit, progress).await?;
    interrupt_on_signal(coord.clone());
    let identity = Arc::new(identity);
    let names = Arc::new(crate::remote::Names::new(&bundle, &loaded.path));
    let shipped = Arc::new((bundle, contents));
    for link in links {
        tokio::spawn(crate::remote::keep(
            link,
            coord.clone(),
            endpoint.clone(),
            identity.clone(),
            shipped.clone(),
            names.clone(),
        ));
    }
    let finished = done_rx
        .await
        .map_err(|_| "the coordinator stopped without a result".to_string());
    let _ = coord_handle.await;
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    finished
}

/// Ctrl-C or SIGTERM interrupts the run: the coordinator cancels every running job,
/// wherever it runs, and ends once they are cleaned up.
fn interrupt_on_signal(coord: ractor::ActorRef<faultbox_executor::fleet::job::CoordinatorMsg>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = coord.cast(faultbox_executor::fleet::job::CoordinatorMsg::Interrupt);
    });
}
