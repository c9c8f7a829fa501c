//! The delay timer on its own, for `scripts/bench-delay.sh`: how late a wait of d ends
//! on the runtime's timer (`tokio::time::sleep`, what relays used before) and on the
//! delay timer (`engine::timer`), alone and with many waits at once; what the heap
//! costs with many deadlines pending; and one timer for the process against one per
//! supervisor.
//!
//! ```text
//! timer_bench [--quick]
//! ```
//!
//! Prints markdown tables to stdout. Lateness is the time from the deadline to the
//! moment the waiting code runs again, in µs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultbox_executor::engine::timer::Timer;

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// p50, p99 and mean of `v` (µs).
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    (v[n / 2], v[((n - 1) as f64 * 0.99) as usize], mean)
}

fn runtime() -> tokio::runtime::Runtime {
    // As `faultbox test` and `faultbox run` run: two workers.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[derive(Clone, Copy)]
enum Kind {
    Tokio,
    Timer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tokio => "tokio::time::sleep",
            Kind::Timer => "delay timer",
        }
    }
}

async fn wait(kind: Kind, d: Duration) {
    match kind {
        Kind::Tokio => tokio::time::sleep(d).await,
        Kind::Timer => faultbox_executor::engine::timer::sleep(d).await,
    }
}

/// `tasks` tasks, each waiting `d` `n` times in a row; the lateness of every wait.
fn lateness(
    rt: &tokio::runtime::Runtime,
    kind: Kind,
    d: Duration,
    tasks: usize,
    n: usize,
) -> Vec<f64> {
    let out = Arc::new(Mutex::new(Vec::with_capacity(tasks * n)));
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let out = out.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::with_capacity(n);
                    for _ in 0..n {
                        let due = Instant::now() + d;
                        wait(kind, d).await;
                        let now = Instant::now();
                        mine.push(now.saturating_duration_since(due).as_secs_f64() * 1e6);
                        assert!(now >= due, "{} ended a wait early", kind.name());
                    }
                    out.lock().unwrap().extend(mine);
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

fn waits(rt: &tokio::runtime::Runtime) {
    println!("### Lateness of one wait of d at a time (2-worker runtime)");
    println!();
    println!("| d | timer | waits | p50 µs late | p99 µs late | mean µs late |");
    println!("|---|---|---:|---:|---:|---:|");
    let scale = if quick() { 10 } else { 1 };
    for (d, n) in [(100u64, 3000), (1_000, 1000), (10_000, 150)] {
        let d = Duration::from_micros(d);
        for kind in [Kind::Tokio, Kind::Timer] {
            let mut v = lateness(rt, kind, d, 1, n / scale);
            let (p50, p99, mean) = stats(&mut v);
            println!(
                "| {d:?} | {} | {} | {p50:.1} | {p99:.1} | {mean:.1} |",
                kind.name(),
                v.len()
            );
        }
    }
    println!();
    println!("### Lateness with many waits at once (1 ms each, back to back)");
    println!();
    println!("| concurrent waits | timer | waits | p50 µs late | p99 µs late | mean µs late |");
    println!("|---:|---|---:|---:|---:|---:|");
    for tasks in [24usize, 100] {
        for kind in [Kind::Tokio, Kind::Timer] {
            let n = if quick() { 20 } else { 200 };
            let mut v = lateness(rt, kind, Duration::from_millis(1), tasks, n);
            let (p50, p99, mean) = stats(&mut v);
            println!(
                "| {tasks} | {} | {} | {p50:.1} | {p99:.1} | {mean:.1} |",
                kind.name(),
                v.len()
            );
        }
    }
    println!();
}

/// What adding a deadline costs with `pending` others waiting, and whether the heap
/// then fires a crowd of deadlines on time.
fn heap(rt: &tokio::runtime::Runtime) {
    println!("### The heap");
    println!();
    println!("| deadlines pending | ns per added deadline |");
    println!("|---:|---:|");
    let timer = Timer::new().expect("timer");
    for pending in [1_000usize, 100_000] {
        // Far deadlines, kept alive: the heap only grows.
        let mut keep = Vec::with_capacity(pending);
        let start = Instant::now();
        for _ in 0..pending {
            keep.push(timer.sleep(Duration::from_secs(3600)));
        }
        let ns = start.elapsed().as_nanos() as f64 / pending as f64;
        println!("| {pending} | {ns:.0} |");
        drop(keep);
    }
    drop(timer);
    // 100,000 deadlines spread over one second (100,000 a second), all pending at
    // once: the first is 300 ms away, so that all are in before it fires.
    let n = if quick() { 10_000 } else { 100_000 };
    let timer = Timer::new().expect("timer");
    let late = Arc::new(Mutex::new(Vec::with_capacity(n)));
    rt.block_on(async {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let d = Duration::from_micros(300_000 + (i as u64 * 7919) % 1_000_000);
                let due = Instant::now() + d;
                let s = timer.sleep(d);
                let late = late.clone();
                tokio::spawn(async move {
                    s.await;
                    let l = Instant::now().saturating_duration_since(due).as_secs_f64() * 1e6;
                    late.lock().unwrap().push(l);
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    let mut v = Arc::try_unwrap(late).unwrap().into_inner().unwrap();
    let (p50, p99, mean) = stats(&mut v);
    println!();
    println!(
        "{n} deadlines over one second, all pending at once: lateness p50 {p50:.1} µs, p99 {p99:.1} µs, mean {mean:.1} µs (tasks woken on a 2-worker runtime)"
    );
    println!();
}

/// `threads` threads, each blocked in turn on `n` waits of 1 ms, as supervisors'
/// targets are; on one shared timer or each on its own. Lateness of every wait.
fn blocked_waits(threads: usize, own: bool, n: usize) -> Vec<f64> {
    let shared = Timer::new().expect("timer");
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let timer = if own {
                Timer::new().expect("timer")
            } else {
                shared.clone()
            };
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let d = Duration::from_millis(1);
                    let due = Instant::now() + d;
                    rt.block_on(timer.sleep(d));
                    v.push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1e6);
                }
                v
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn shared_or_own() {
    println!("### One timer per process or one per supervisor");
    println!();
    println!("Threads blocked in turn on 1 ms waits; each configuration runs 4 times, which of");
    println!("the two goes first alternating. With one thread both are the same configuration:");
    println!("the difference between those two rows is the noise.");
    println!();
    println!("| supervisors | timers | waits | p50 µs late | p99 µs late | mean µs late |");
    println!("|---:|---|---:|---:|---:|---:|");
    let n = if quick() { 25 } else { 150 };
    for threads in [1usize, 4, 16] {
        let (mut shared, mut own) = (Vec::new(), Vec::new());
        for rep in 0..4 {
            for own_timers in [rep % 2 == 1, rep % 2 == 0] {
                let v = blocked_waits(threads, own_timers, n);
                if own_timers {
                    own.extend(v);
                } else {
                    shared.extend(v);
                }
            }
        }
        for (name, v) in [("one shared", &mut shared), ("one each", &mut own)] {
            let (p50, p99, mean) = stats(v);
            println!(
                "| {threads} | {name} | {} | {p50:.1} | {p99:.1} | {mean:.1} |",
                v.len()
            );
        }
    }
    // What a timer per supervisor would add to every service start and stop.
    let k = if quick() { 50 } else { 500 };
    let start = Instant::now();
    for _ in 0..k {
        drop(Timer::new().expect("timer"));
    }
    println!();
    println!(
        "Starting and stopping a timer thread: {:.1} µs (mean of {k})",
        start.elapsed().as_secs_f64() * 1e6 / k as f64
    );
    println!();
}

fn main() {
    let rt = runtime();
    waits(&rt);
    heap(&rt);
    shared_or_own();
}
