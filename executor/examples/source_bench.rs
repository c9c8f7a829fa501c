//! How fast a service's log lines become decoded events, and what that costs the
//! service: `scripts/bench-sources.sh` runs it (release build).
//!
//! ```text
//! source_bench ROUNDS LINES      # the benchmark
//! source_bench log LINES         # the service: LINES JSON lines to stdout, fast
//! ```
//!
//! Each round runs the service twice, side by side in time: once with its stdout on
//! /dev/null, once through a `stdout(decoder=json_decoder())` source into a real
//! event log. Prints per round the service's time both ways and the time until the
//! last line was an event; then medians, decoded lines/s and the slowdown.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultbox_executor::network::namespace::NetNs;
use faultbox_executor::sources::{output, Context, LogSink};
use faultbox_executor::world::eventlog::EventLog;
use faultbox_spec::decode::Decoder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("log") {
        let n: u64 = args[2].parse().expect("LINES");
        let out = std::io::stdout();
        let mut w = std::io::BufWriter::with_capacity(64 << 10, out.lock());
        for i in 0..n {
            // A typical structured log line: ~130 bytes, five keys.
            writeln!(
                w,
                r#"{{"ts":"2026-11-28T12:00:00.{i:06}Z","level":"INFO","msg":"handled request","path":"/orders/{i}","latency_ms":{}}}"#,
                i % 97
            )
            .expect("write");
        }
        w.flush().expect("flush");
        return;
    }
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let lines: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let me = std::env::current_exe().expect("own path");
    let (mut direct, mut observed, mut emitted) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let d = {
            let t = Instant::now();
            let status = Command::new(&me)
                .args(["log", &lines.to_string()])
                .stdout(Stdio::null())
                .status()
                .expect("service runs");
            assert!(status.success());
            t.elapsed()
        };
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
        let t = Instant::now();
        let status = Command::new(&me)
            .args(["log", &lines.to_string()])
            .stdout(Stdio::from(write))
            .status()
            .expect("service runs");
        assert!(status.success());
        let o = t.elapsed();
        source.stop();
        let e = t.elapsed();
        let events = log.events();
        let decoded = events.iter().filter(|e| e.event_type == "stdout").count() as u64;
        let lost: u64 = events
            .iter()
            .filter(|e| e.event_type == "stdout.dropped")
            .map(|e| e.fields["dropped"].parse::<u64>().expect("a count"))
            .sum();
        assert_eq!(
            decoded + lost,
            lines,
            "every line is an event or counted as dropped"
        );
        assert!(events
            .iter()
            .filter(|e| e.event_type == "stdout")
            .all(|e| !e.fields.contains_key("error")));
        drop(events);
        println!(
            "round {round}: service alone {:.1} ms, observed {:.1} ms, last event {:.1} ms, {decoded} decoded ({:.0}/s), {lost} dropped",
            ms(d),
            ms(o),
            ms(e),
            decoded as f64 / e.as_secs_f64()
        );
        direct.push(d);
        observed.push(o);
        emitted.push((e, decoded, lost));
    }
    let rate = |(e, decoded, _): &(Duration, u64, u64)| *decoded as f64 / e.as_secs_f64();
    emitted.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mid = &emitted[emitted.len() / 2];
    let (d, o) = (median(direct), median(observed));
    println!(
        "lines={lines} rounds={rounds} service_alone_ms={:.1} service_observed_ms={:.1} decoded_lines_per_s={:.0} dropped={} slowdown_pct={:.1}",
        ms(d),
        ms(o),
        rate(mid),
        mid.2,
        (o.as_secs_f64() / d.as_secs_f64() - 1.0) * 100.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
