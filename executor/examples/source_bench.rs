//! How fast a service's log lines become decoded events, and what that costs the
//! service: `scripts/bench-sources.sh` runs it (release build).
//!
//! ```text
//! source_bench ROUNDS LOG_LINES WORK_LINES   # the benchmark
//! source_bench log LINES                     # service 1: JSON lines to stdout, nothing else
//! source_bench work LINES                    # service 2: some work per line, a write per line
//! ```
//!
//! Two services, each run twice per round, side by side in time: once with its stdout
//! on /dev/null, once through a `stdout(decoder=json_decoder())` source into a real
//! event log.
//!
//! - `log` only formats lines into a 64 KiB buffer (~10 M lines/s alone): no observer
//!   decodes that, so it measures the decoder's ceiling and what the pipe costs a
//!   service that writes as fast as memory allows; lines the decoder cannot take are
//!   dropped and counted.
//! - `work` is shaped like a real service: per line it does a few microseconds of
//!   CPU work, builds the record with serde_json and writes it with one `write` (like
//!   `println!`, Go's `log` or Python's `logging`). Every line should become an event.
//!
//! Reported per service (medians over the rounds): its time alone and observed, and
//! the slowdown (the median of each round's ratio: the two runs of a round are
//! seconds apart, so they share the machine's load); its own CPU time both ways and
//! that ratio (what writing to a pipe costs it, whatever the load); the time until
//! the last line was an event; decoded lines per second of that time and
//! per CPU-second of the observer's threads (the source's reader and decoder: the
//! bench process's own CPU time while the service runs); lines dropped.
//!
//! And a control with no observer at all, on two CPUs or more: the `work` service
//! pinned to CPU 0, alone and beside a thread spinning on CPU 1. On a machine whose
//! CPUs are shared with other work, whatever keeps one CPU busy pushes that work onto
//! the other, so the control says how much of the slowdown any CPU time spent
//! beside the service would cause, observer or not.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultbox_executor::network::namespace::NetNs;
use faultbox_executor::sources::{output, Context, LogSink};
use faultbox_executor::world::eventlog::EventLog;
use faultbox_spec::decode::Decoder;

/// The allocator the `faultbox` binary runs with.
#[global_allocator]
static ALLOC: faultbox_spec::limits::memory::Bounded = faultbox_spec::limits::memory::Bounded;

/// Iterations of the `work` service's busy loop per line (~3 µs here).
const WORK_SPINS: u64 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(cpu) = std::env::var(SERVICE_CPU).ok().and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    match args.get(1).map(String::as_str) {
        Some("log") => return log_only(args[2].parse().expect("LINES")),
        Some("work") => return work(args[2].parse().expect("LINES")),
        _ => {}
    }
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let rounds = arg(1, 15) as usize;
    let (log_lines, work_lines) = (arg(2, 1_000_000), arg(3, 100_000));
    let services = [("log", log_lines), ("work", work_lines)];
    println!("load before: {}", load());
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); services.len()];
    let mut controls = Vec::new();
    for round in 0..rounds {
        for (i, (mode, lines)) in services.iter().enumerate() {
            let r = run(mode, *lines, round % 2 == 1);
            println!(
                "round {round} {mode}: alone {:.1} ms (CPU {:.1}), observed {:.1} ms (CPU {:.1}), last event {:.1} ms, observer CPU {:.1} ms, {} decoded, {} dropped",
                ms(r.alone),
                ms(r.alone_cpu),
                ms(r.observed),
                ms(r.observed_cpu),
                ms(r.last_event),
                ms(r.cpu),
                r.decoded,
                r.dropped
            );
            runs[i].push(r);
        }
        if cpus() >= 2 {
            let (alone, beside) = control(work_lines, round % 2 == 1);
            println!(
                "round {round} control: work pinned, alone {:.1} ms, beside a busy loop on CPU 1 {:.1} ms",
                ms(alone),
                ms(beside)
            );
            controls.push(ratio(beside, alone));
        }
    }
    println!("load after: {}", load());
    println!(
        "| service | lines | alone ms | observed ms | slowdown (range) | service CPU alone / observed ms | CPU slowdown | last event ms | decoded lines/s | decoded lines per observer CPU-s | dropped |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((mode, lines), runs) in services.iter().zip(&runs) {
        let alone = median(runs.iter().map(|r| ms(r.alone)));
        let observed = median(runs.iter().map(|r| ms(r.observed)));
        println!(
            "| {mode} | {lines} | {alone:.1} | {observed:.1} | {} | {:.1} / {:.1} | {:+.1}% | {:.1} | {:.0} | {:.0} | {:.0} |",
            spread(runs.iter().map(|r| ratio(r.observed, r.alone))),
            median(runs.iter().map(|r| ms(r.alone_cpu))),
            median(runs.iter().map(|r| ms(r.observed_cpu))),
            median(runs.iter().map(|r| ratio(r.observed_cpu, r.alone_cpu))),
            median(runs.iter().map(|r| ms(r.last_event))),
            median(runs.iter().map(|r| r.decoded as f64 / r.last_event.as_secs_f64())),
            median(runs.iter().map(|r| r.decoded as f64 / r.cpu.as_secs_f64())),
            median(runs.iter().map(|r| r.dropped as f64)),
        );
    }
    if !controls.is_empty() {
        println!(
            "control (no observer): work pinned to CPU 0, stdout on /dev/null, slowed by a busy loop on CPU 1: {}",
            spread(controls.into_iter())
        );
    }
}

#[derive(Clone)]
struct Run {
    alone: Duration,
    observed: Duration,
    /// The service's own CPU time (user and system), alone and observed.
    alone_cpu: Duration,
    observed_cpu: Duration,
    last_event: Duration,
    /// CPU time of this process (the source's threads) while observing.
    cpu: Duration,
    decoded: u64,
    dropped: u64,
}

/// Runs service `mode` alone and observed, in turn (observed first if asked, so
/// that neither order is favoured).
fn run(mode: &str, lines: u64, observed_first: bool) -> Run {
    let me = std::env::current_exe().expect("own path");
    let service = || {
        let mut c = Command::new(&me);
        c.args([mode, &lines.to_string()]);
        c
    };
    let alone = || {
        let cpu = children_cpu();
        let t = Instant::now();
        let status = service()
            .stdout(Stdio::null())
            .status()
            .expect("service runs");
        assert!(status.success());
        (t.elapsed(), children_cpu() - cpu)
    };
    if observed_first {
        let r = observe(service(), lines);
        let (alone, alone_cpu) = alone();
        return Run {
            alone,
            alone_cpu,
            ..r
        };
    }
    let (alone, alone_cpu) = alone();
    Run {
        alone,
        alone_cpu,
        ..observe(service(), lines)
    }
}

/// What the machine does to a pinned service when the other CPU is busy, with no
/// observer at all: the `work` service alone, and beside a thread spinning on CPU 1.
fn control(lines: u64, busy_first: bool) -> (Duration, Duration) {
    let me = std::env::current_exe().expect("own path");
    let alone = || {
        let t = Instant::now();
        let status = Command::new(&me)
            .args(["work", &lines.to_string()])
            .env(SERVICE_CPU, "0")
            .stdout(Stdio::null())
            .status()
            .expect("service runs");
        assert!(status.success());
        t.elapsed()
    };
    let beside = || {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin(1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let d = alone();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spin.join().expect("spinner");
        d
    };
    if busy_first {
        let b = beside();
        (alone(), b)
    } else {
        let a = alone();
        (a, beside())
    }
}

/// Runs `service` with its stdout through a source; the `alone` fields are left zero.
fn observe(mut service: Command, lines: u64) -> Run {
    let log = Arc::new(EventLog::default());
    let sink = Arc::new(LogSink::new("svc", log.clone()));
    sink.open();
    let ctx = Context {
        service: "svc".into(),
        netns: Arc::new(NetNs::current().expect("own namespace")),
        sink,
    };
    let devnull = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let (write, source, _) =
        output::start(ctx, "stdout", Some(Decoder::Json), devnull).expect("source starts");
    let cpu = cpu_time();
    let service_cpu = children_cpu();
    let t = Instant::now();
    let status = service
        .stdout(Stdio::from(write))
        .status()
        .expect("service runs");
    assert!(status.success());
    let observed = t.elapsed();
    // It holds the pipe's write end: the source would wait for it at `stop`.
    drop(service);
    let observed_cpu = children_cpu() - service_cpu;
    source.stop();
    let last_event = t.elapsed();
    let cpu = cpu_time() - cpu;
    let events = log.events();
    let decoded = events.iter().filter(|e| e.event_type == "stdout").count() as u64;
    let dropped: u64 = events
        .iter()
        .filter(|e| e.event_type == "stdout.dropped")
        .map(|e| e.fields["dropped"].parse::<u64>().expect("a count"))
        .sum();
    assert_eq!(
        decoded + dropped,
        lines,
        "every line is an event or counted as dropped"
    );
    assert!(events
        .iter()
        .filter(|e| e.event_type == "stdout")
        .all(|e| !e.fields.contains_key("error")));
    Run {
        alone: Duration::ZERO,
        observed,
        alone_cpu: Duration::ZERO,
        observed_cpu,
        last_event,
        cpu,
        decoded,
        dropped,
    }
}

/// Service `log`: a typical structured log line (~130 bytes, five keys), as fast as
/// it can, through a 64 KiB buffer.
fn log_only(n: u64) {
    let out = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(64 << 10, out.lock());
    for i in 0..n {
        writeln!(
            w,
            r#"{{"ts":"2026-11-28T12:00:00.{i:06}Z","level":"INFO","msg":"handled request","path":"/orders/{i}","latency_ms":{}}}"#,
            i % 97
        )
        .expect("write");
    }
    w.flush().expect("flush");
}

/// Service `work`: per line, a few microseconds of CPU work, a record built with
/// serde_json, and one `write` (stdout is line-buffered).
fn work(n: u64) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        for _ in 0..WORK_SPINS {
            x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
        }
        let record = serde_json::json!({
            "ts": format!("2026-11-28T12:00:00.{i:06}Z"),
            "level": "INFO",
            "msg": "handled request",
            "path": format!("/orders/{}", x % 10_000),
            "latency_ms": x % 97,
        });
        serde_json::to_writer(&mut out, &record).expect("write");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
}

/// Where the service pins itself.
const SERVICE_CPU: &str = "SOURCE_BENCH_CPU";

/// Pins the calling thread (and the threads it starts) to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the caller passes a CPU that is online, within the set's size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        r,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// CPUs online (not those this thread may use, which pinning narrows).
fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// User and system CPU time of this process so far.
fn cpu_time() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// User and system CPU time of the children waited for so far.
fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer.
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How much longer `observed` took than `alone`, in percent.
fn ratio(observed: Duration, alone: Duration) -> f64 {
    (observed.as_secs_f64() / alone.as_secs_f64() - 1.0) * 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median, and the range over the rounds: these machines are noisy.
fn spread(v: impl Iterator<Item = f64>) -> String {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    format!(
        "{:+.1}% ({:+.0}..{:+.0})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
