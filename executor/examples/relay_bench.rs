//! One or more relay edges, for `scripts/bench-relay.sh`: a load generator connects to
//! `127.0.0.1:LISTEN` and the relay dials `127.0.0.1:UPSTREAM`, where a real server
//! listens. The path measured is the production one: `Relays::open` with an edge of the
//! named protocol, its accept loop, the dial through the namespace broker, and the
//! framed pump; a rule is installed the way `fault(...)` on an interface installs it
//! (`Rules::install` of an `Active`). Both ends are in the namespace this process runs
//! in (a test gives each service its own; the pump does not know the difference).
//!
//! ```text
//! relay_bench --edge PROTOCOL:LISTEN:UPSTREAM[:rule|:delay=DURATION] [--edge ...]
//! ```
//!
//! With `:rule`, the edge gets a rule of its protocol that matches none of the
//! benchmark's requests (`delay(path="/nomatch")`, `error(command="GET",
//! key="nomatch*")`, `error(query="nomatch*")`, `error(topic="nomatch.>")`,
//! `error(method="/nomatch.*")`), so every request is framed (for gRPC: decided per
//! call), held
//! until whole, and matched. Prints `ready` once listening; on SIGTERM or SIGINT,
//! prints a summary line per edge to stderr and exits. A rule that fired or a
//! connection that went opaque is reported on stderr at once: the script treats
//! either as a failed measurement.
//!
//! With `:delay=DURATION` (`scripts/bench-delay.sh`), the edge gets a delay rule that
//! matches every request of the benchmark (`delay(command="GET")` for Redis,
//! `delay(method="GET")` for HTTP): what it adds over an edge without rules is what
//! a protocol delay costs. Its firings are counted, not reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultbox_executor::network::namespace::NetNs;
use faultbox_executor::network::plan::{Edge, Port};
use faultbox_executor::network::relay::{Relays, Report, Reporter};
use faultbox_executor::network::rules::{Active, Rules};
use faultbox_spec::world::{ProxyAction, ProxyRule};

struct Spec {
    protocol: String,
    listen: u16,
    upstream: u16,
    rule: Rule,
}

#[derive(Clone, Copy, PartialEq)]
enum Rule {
    None,
    NonMatching,
    Delay(Duration),
}

fn usage() -> ! {
    eprintln!(
        "usage: relay_bench --edge PROTOCOL:LISTEN:UPSTREAM[:rule|:delay=DURATION] [--edge ...]"
    );
    std::process::exit(2)
}

fn parse() -> Vec<Spec> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a != "--edge" {
            usage();
        }
        let v = args.next().unwrap_or_else(|| usage());
        let parts: Vec<&str> = v.split(':').collect();
        let port = |s: &str| s.parse::<u16>().unwrap_or_else(|_| usage());
        let (p, l, u, rule) = match parts.as_slice() {
            [p, l, u] => (p, l, u, Rule::None),
            [p, l, u, "rule"] => (p, l, u, Rule::NonMatching),
            [p, l, u, d] if d.starts_with("delay=") => {
                let d = faultbox_shim::rule::parse_duration(&d["delay=".len()..])
                    .unwrap_or_else(|_| usage());
                (p, l, u, Rule::Delay(d))
            }
            _ => usage(),
        };
        out.push(Spec {
            protocol: p.to_string(),
            listen: port(l),
            upstream: port(u),
            rule,
        });
    }
    if out.is_empty() {
        usage();
    }
    out
}

/// A rule of `protocol` that none of the load generators' requests match.
fn nonmatching(protocol: &str) -> ProxyRule {
    let m = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let error = ProxyAction::Error {
        message: None,
        status: None,
    };
    let (action, matches) = match protocol {
        "http" => (
            ProxyAction::Delay(Duration::from_secs(1)),
            m(&[("path", "/nomatch")]),
        ),
        "redis" => (error, m(&[("command", "GET"), ("key", "nomatch*")])),
        "postgres" => (error, m(&[("query", "nomatch*")])),
        "nats" => (error, m(&[("topic", "nomatch.>")])),
        "grpc" => (error, m(&[("method", "/nomatch.*")])),
        "kafka" => (error, m(&[("topic", "nomatch*")])),
        other => {
            eprintln!("relay_bench: no benchmark rule for protocol {other:?}");
            std::process::exit(2)
        }
    };
    ProxyRule {
        action,
        matches,
        probability: 100.0,
        label: None,
    }
}

/// A rule of `protocol` that every request of the load generators matches.
fn delay_all(protocol: &str, d: Duration) -> ProxyRule {
    let key = match protocol {
        "redis" => "command",
        "http" => "method",
        other => {
            eprintln!("relay_bench: no delay rule for protocol {other:?}");
            std::process::exit(2)
        }
    };
    ProxyRule {
        action: ProxyAction::Delay(d),
        matches: [(key.to_string(), "GET".to_string())].into(),
        probability: 100.0,
        label: None,
    }
}

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    fired: AtomicU64,
    opaque: AtomicU64,
}

fn main() {
    let specs = parse();
    // As `faultbox test` runs its relays: a two-worker multi-threaded runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let counts: Arc<Mutex<BTreeMap<String, Arc<Counts>>>> = Arc::default();
    let by_service = counts.clone();
    let report: Reporter = Arc::new(move |r: Report| {
        let service = match &r {
            Report::Open { service, .. }
            | Report::Close { service, .. }
            | Report::Rule { service, .. }
            | Report::Opaque { service, .. } => service.clone(),
        };
        let c = by_service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&service)
            .cloned()
            .unwrap_or_default();
        match r {
            Report::Open { .. } => {
                c.opened.fetch_add(1, Ordering::Relaxed);
            }
            Report::Close { error, .. } => {
                c.closed.fetch_add(1, Ordering::Relaxed);
                if error.is_some() {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Report::Rule { fired, .. } => {
                c.fired.fetch_add(1, Ordering::Relaxed);
                if !service.contains("-delay-") {
                    eprintln!("relay_bench: {service}: a rule fired: {fired:?}");
                }
            }
            Report::Opaque { reason, .. } => {
                c.opaque.fetch_add(1, Ordering::Relaxed);
                eprintln!("relay_bench: {service}: connection went opaque: {reason}");
            }
        }
    });
    let rules = Arc::new(Rules::new(1));
    let relays = Relays::new(rt.handle().clone(), report, rules.clone());
    let here = Arc::new(NetNs::current().expect("this process's network namespace"));
    for (i, s) in specs.iter().enumerate() {
        let service = format!(
            "{}-{}-{}",
            s.protocol,
            match s.rule {
                Rule::None => "pass",
                Rule::NonMatching => "rule",
                Rule::Delay(_) => "delay",
            },
            s.listen
        );
        counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.clone(), Arc::default());
        let rule = match s.rule {
            Rule::None => None,
            Rule::NonMatching => Some(nonmatching(&s.protocol)),
            Rule::Delay(d) => Some(delay_all(&s.protocol, d)),
        };
        if let Some(rule) = rule {
            eprintln!("relay_bench: {service}: rule {rule}");
            let active = Arc::new(Active::new(i + 1, &s.protocol, rule));
            rules.install(1000 + i as u64, &service, "main", None, vec![active]);
        }
        let edge = Edge {
            consumer: "bench".into(),
            service,
            port: Port {
                interface: "main".into(),
                protocol: s.protocol.clone(),
                port: s.upstream,
            },
            listen: vec![SocketAddr::from(([127, 0, 0, 1], s.listen))],
        };
        relays
            .open(edge, &here, here.clone())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    println!("ready");
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    relays.stop();
    for (service, c) in counts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        eprintln!(
            "relay_bench: {service}: {} opened, {} closed ({} with an error), {} fired, {} opaque",
            c.opened.load(Ordering::Relaxed),
            c.closed.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.fired.load(Ordering::Relaxed),
            c.opaque.load(Ordering::Relaxed),
        );
    }
}
