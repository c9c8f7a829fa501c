//! The `topic()` event source against real brokers: tansu (Kafka) and Debian's
//! nats-server, started here on free ports, fed by Faultbox's own clients and by
//! kafka-python. Every server, thread and directory is gone when a test ends,
//! passed or failed (guards with Drop).
//!
//! Needs the servers and the driver virtualenv `scripts/servers.sh` installs; the
//! tests run it themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use faultbox_executor::network::namespace::NetNs;
use faultbox_executor::sources::{topic, Context, Observation, Running, Sink};
use faultbox_protocols::client::{self, kafka::Connection, Credentials, Operation};
use faultbox_spec::decode::Decoder;
use serde_json::{json, Value};

/// Installs the servers and drivers (once per test binary); the venv's python.
fn python() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/servers.sh");
        let ok = Command::new("bash").arg(&script).status();
        assert!(ok.is_ok_and(|s| s.success()), "scripts/servers.sh failed");
        let venv = std::env::var("FAULTBOX_VENV").unwrap_or("/var/cache/faultbox/venv".into());
        PathBuf::from(venv).join("bin/python")
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fbtopic-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker process, killed and reaped on drop; its log's directory removed after.
struct Server {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(name: &str, program: &str, args: &[String], port: u16) -> Server {
        Server::start_in(None, name, program, args, port)
    }

    /// Starts the server in `netns` (the test's own when `None`).
    fn start_in(
        netns: Option<&NetNs>,
        name: &str,
        program: &str,
        args: &[String],
        port: u16,
    ) -> Server {
        let dir = TempDir::new(name);
        let log = dir.0.join("server.log");
        let out = std::fs::File::create(&log).expect("server log");
        let mut cmd = Command::new(program);
        if let Some(ns) = netns {
            let fd = ns.raw_fd();
            // SAFETY: the child only calls setns(2), async-signal-safe, before exec;
            // `fd` stays open in the parent while `ns` lives, so the child has it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(args)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let mut s = Server {
            child,
            log,
            _dir: dir,
        };
        s.wait_ready(netns, name, port);
        s
    }

    /// Waits for a real round trip in the broker's protocol, from `netns`.
    fn wait_ready(&mut self, netns: Option<&NetNs>, protocol: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let anonymous = Credentials::default();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{protocol} exited ({status}):\n{}", self.log());
            }
            let probe = client::ready(protocol, addr(port), &anonymous, Duration::from_secs(2));
            if in_ns(netns, || runtime().block_on(probe)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{protocol} not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn tansu(port: u16) -> Server {
    python();
    let bin = python().with_file_name("tansu");
    let args = [
        "broker".to_string(),
        "--listener-url".into(),
        format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url".into(),
        format!("tcp://127.0.0.1:{port}"),
        "--storage-engine".into(),
        "memory://tansu/".into(),
    ];
    Server::start("kafka", bin.to_str().expect("utf-8 path"), &args, port)
}

fn nats(port: u16) -> Server {
    python();
    let args = [
        "-a".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    Server::start("nats", "nats-server", &args, port)
}

/// `f` on a thread of its own in `netns` (the test's own when `None`).
fn in_ns<T: Send>(netns: Option<&NetNs>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = netns {
                ns.enter().expect("entering the namespace");
            }
            f()
        })
        .join()
        .expect("the thread in the namespace")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Observations in arrival order.
#[derive(Default)]
struct Collect(Mutex<Vec<Observation>>);

impl Sink for Collect {
    fn emit(&self, o: Observation) {
        self.0.lock().unwrap().push(o);
    }
}

impl Collect {
    fn all(&self) -> Vec<Observation> {
        self.0.lock().unwrap().clone()
    }

    fn messages(&self) -> Vec<Observation> {
        self.all()
            .into_iter()
            .filter(|o| o.detail.as_deref() != Some("error"))
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|o| o.detail.as_deref() == Some("error"))
            .map(|o| o.fields["error"].clone())
            .collect()
    }

    /// Waits up to `limit` for `ready` to hold of what was emitted.
    fn wait(&self, limit: Duration, ready: impl Fn(&[Observation]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if ready(&self.all()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ready(&self.all())
    }
}

/// A started source, stopped on drop if the test did not stop it.
struct Started(Option<Box<dyn Running>>);

impl Started {
    fn sync(&self) {
        self.0.as_ref().expect("running").sync();
    }

    fn stop(&mut self) {
        if let Some(s) = self.0.take() {
            s.stop();
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start(
    service: &str,
    protocol: &str,
    port: u16,
    subject: &str,
    group: &str,
    decoder: Option<Decoder>,
) -> (Arc<Collect>, Started) {
    let here = Arc::new(NetNs::current().expect("this test's namespace"));
    start_in(here, service, protocol, port, subject, group, decoder)
}

/// Starts a source observing a service in `netns`.
fn start_in(
    netns: Arc<NetNs>,
    service: &str,
    protocol: &str,
    port: u16,
    subject: &str,
    group: &str,
    decoder: Option<Decoder>,
) -> (Arc<Collect>, Started) {
    let sink = Arc::new(Collect::default());
    let ctx = Context {
        service: service.to_string(),
        netns,
        sink: sink.clone(),
    };
    let s = topic::start(ctx, protocol, port, subject, group, decoder);
    (sink, Started(Some(s)))
}

/// The source's threads still alive in this process (named `topic SERVICE`).
fn threads_of(service: &str) -> usize {
    let name = format!("topic {service}");
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// TCP connections of this process to or from `port`, in the calling thread's
/// namespace.
fn connections(port: u16) -> usize {
    let ours: BTreeSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|f| std::fs::read_link(f.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let hex = format!(":{port:04X}");
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 9
                && (cols[1].ends_with(&hex) || cols[2].ends_with(&hex))
                && ours.contains(cols[9])
        })
        .count()
}

/// An event's `data`, without its `action` (always `produce`: checked here).
fn data(o: &Observation) -> Value {
    let mut v: Value = serde_json::from_str(&o.fields["data"]).expect("data is JSON");
    let action = v.as_object_mut().and_then(|m| m.remove("action"));
    assert_eq!(action, Some(Value::from("produce")), "{v}");
    assert_eq!(o.fields["action"], "produce");
    v
}

/// Each partition's offsets, in emission order.
fn offsets_by_partition(events: &[Observation]) -> BTreeMap<i64, Vec<i64>> {
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for o in events {
        let p = o.fields["partition"].parse().expect("a partition number");
        out.entry(p)
            .or_default()
            .push(o.fields["offset"].parse().expect("an offset"));
    }
    out
}

/// Publishes one record with Faultbox's Kafka client (acknowledged by the broker).
fn publish(port: u16, topic: &str, key: Option<&str>, value: &str) -> Value {
    runtime().block_on(async {
        let mut c = Connection::open(addr(port)).await.expect("connect");
        c.publish(topic, key, value).await.expect("publish")
    })
}

fn create(port: u16, topic: &str, partitions: i32) {
    runtime().block_on(async {
        let mut c = Connection::open(addr(port)).await.expect("connect");
        c.create(topic, partitions).await.expect("create topic");
    })
}

/// Produces `values` with kafka-python (linger on, so several records share a batch).
fn python_produce(port: u16, topic: &str, values: &[String]) {
    let script = r#"
import json, sys
from kafka import KafkaProducer
port, topic, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
p = KafkaProducer(bootstrap_servers="127.0.0.1:" + port, linger_ms=50, acks="all",
                  enable_idempotence=False, request_timeout_ms=10000, max_block_ms=10000)
futures = [p.send(topic, v.encode(), key=("k%d" % i).encode()) for i, v in enumerate(values)]
p.flush(10)
for f in futures:
    f.get(timeout=10)
p.close(timeout=5)
"#;
    let out = Command::new(python())
        .args(["-c", script, &port.to_string(), topic])
        .arg(serde_json::to_string(values).expect("json"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "kafka-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nats_publish(port: u16, subject: &str, data: &str) {
    let op = Operation::NatsPublish {
        subject: subject.into(),
        data: data.into(),
    };
    let out = runtime().block_on(client::run(
        "nats",
        addr(port),
        &Credentials::default(),
        &op,
        Duration::from_secs(5),
    ));
    assert!(out.ok, "publishing to {subject}: {}", out.error);
}

#[test]
fn kafka_reads_every_partition_from_the_start_in_offset_order() {
    let port = free_port();
    let _broker = tansu(port);
    create(port, "orders", 3);
    // Before the source starts: kafka-python, several records to a batch.
    let before: Vec<String> = (0..6).map(|i| json!({"id": i}).to_string()).collect();
    python_produce(port, "orders", &before);
    let (sink, mut source) = start("k-order", "kafka", port, "orders", "", Some(Decoder::Json));
    // After: Faultbox's client, one record at a time; the decoder's keys lose to
    // the source's own, and a value that is not JSON still makes an event.
    for i in 6..10 {
        let v = json!({"id": i, "offset": "mine", "topic": "x"}).to_string();
        publish(port, "orders", Some(&format!("k{i}")), &v);
    }
    publish(port, "orders", None, "not json");
    source.sync();

    let events = sink.messages();
    assert_eq!(sink.errors(), Vec::<String>::new());
    assert_eq!(events.len(), 11, "{events:#?}");
    let by_part = offsets_by_partition(&events);
    assert!(
        by_part.len() > 1,
        "keys spread over partitions: {by_part:?}"
    );
    for (p, offsets) in &by_part {
        let want: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &want, "partition {p} in offset order, none missed");
    }
    let mut ids: Vec<i64> = events
        .iter()
        .filter_map(|o| data(o)["id"].as_i64())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    for o in &events {
        assert_eq!((o.kind, o.detail.as_deref()), ("topic", Some("orders")));
        assert_eq!(o.fields["protocol"], "kafka");
        assert_eq!(o.fields["topic"], "orders");
        assert!(o.fields["timestamp"].parse::<i64>().unwrap() > 0, "{o:?}");
        let d = data(o);
        assert_eq!(d["topic"], "orders");
        assert_eq!(
            d["partition"],
            json!(o.fields["partition"].parse::<i64>().unwrap())
        );
        assert_eq!(
            d["offset"],
            json!(o.fields["offset"].parse::<i64>().unwrap())
        );
    }
    let six = events.iter().find(|o| data(o)["id"] == 6).expect("id 6");
    assert_eq!(six.fields["key"], "k6");
    assert_eq!(data(six)["key"], "k6");
    assert_eq!(six.fields["value"], six.fields["line"]);
    let plain = events
        .iter()
        .find(|o| o.fields["value"] == "not json")
        .expect("the plain record");
    assert!(plain.fields["error"].starts_with("not JSON"), "{plain:?}");
    assert_eq!(
        (plain.fields["key"].as_str(), &data(plain)["key"]),
        ("", &Value::Null)
    );

    // Stopped: nothing emitted any more, no thread, no connection.
    assert_eq!(threads_of("k-order"), 1);
    assert_eq!(connections(port), 1);
    source.stop();
    assert_eq!(threads_of("k-order"), 0);
    assert_eq!(connections(port), 0);
    publish(port, "orders", None, "late");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.messages().len(), 11);
}

#[test]
fn kafka_waits_quietly_for_a_topic_made_after_start() {
    let port = free_port();
    let _broker = tansu(port);
    let (sink, mut source) = start("k-late", "kafka", port, "late", "", None);
    std::thread::sleep(Duration::from_millis(600));
    let t = Instant::now();
    source.sync();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(sink.all().is_empty(), "{:?}", sink.all());
    // Created by the publish, with one partition.
    assert_eq!(publish(port, "late", Some("a"), "first")["offset"], 0);
    publish(port, "late", None, "second");
    source.sync();
    let events = sink.messages();
    let values: Vec<&str> = events.iter().map(|o| o.fields["value"].as_str()).collect();
    assert_eq!(values, ["first", "second"]);
    // No decoder: `data` is the value and the record's place.
    assert_eq!(
        data(&events[0]),
        json!({"topic": "late", "partition": 0, "offset": 0, "key": "a", "value": "first"})
    );
    assert_eq!(sink.errors(), Vec::<String>::new());
    source.stop();
}

#[test]
fn kafka_sync_sees_a_record_acknowledged_just_before() {
    let port = free_port();
    let _broker = tansu(port);
    create(port, "ticks", 2);
    let (sink, mut source) = start("k-sync", "kafka", port, "ticks", "", None);
    for i in 0..15 {
        publish(port, "ticks", Some(&format!("key-{i}")), &i.to_string());
        source.sync();
        let seen: Vec<String> = sink
            .messages()
            .iter()
            .map(|o| o.fields["value"].clone())
            .collect();
        assert_eq!(seen.len(), i + 1, "after sync {i}: {seen:?}");
        assert!(seen.contains(&i.to_string()));
    }
    source.stop();
}

#[test]
fn kafka_broker_down_then_up_then_gone() {
    let port = free_port();
    let (sink, mut source) = start("k-down", "kafka", port, "orders", "", Some(Decoder::Json));
    // Refused, again and again: one event for it.
    assert!(sink.wait(Duration::from_secs(5), |o| !o.is_empty()));
    std::thread::sleep(Duration::from_millis(1500));
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("refused"), "{errors:?}");
    assert_eq!(sink.all()[0].fields["protocol"], "kafka");
    let t = Instant::now();
    source.sync();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "sync with no broker: {:?}",
        t.elapsed()
    );

    let broker = tansu(port);
    publish(port, "orders", None, r#"{"n": 1}"#);
    source.sync();
    let values: Vec<Value> = sink
        .messages()
        .iter()
        .map(|o| data(o)["n"].clone())
        .collect();
    assert_eq!(values, [json!(1)]);

    // The broker goes away: reported, retried, and stop stays bounded.
    drop(broker);
    assert!(sink.wait(Duration::from_secs(5), |o| {
        o.iter()
            .filter(|o| o.detail.as_deref() == Some("error"))
            .count()
            > 1
    }));
    std::thread::sleep(Duration::from_millis(1500));
    let errors = sink.errors();
    assert!(
        (2..=3).contains(&errors.len()),
        "one per distinct failure: {errors:?}"
    );
    let t = Instant::now();
    source.stop();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(threads_of("k-down"), 0);
}

#[test]
fn kafka_reads_a_restarted_broker_again_from_the_start() {
    let port = free_port();
    let broker = tansu(port);
    let (sink, mut source) = start("k-again", "kafka", port, "orders", "", None);
    for v in ["a", "b", "c"] {
        publish(port, "orders", None, v);
    }
    source.sync();
    assert_eq!(sink.messages().len(), 3);
    // A fresh in-memory broker on the same port: its topic starts over at 0.
    drop(broker);
    let _broker = tansu(port);
    publish(port, "orders", None, "again");
    assert!(sink.wait(Duration::from_secs(5), |o| {
        o.iter()
            .any(|o| o.fields.get("value").is_some_and(|v| v == "again"))
    }));
    let last = sink.messages().pop().expect("an event");
    assert_eq!(last.fields["offset"], "0");
    source.stop();
}

#[test]
fn nats_wildcard_subject_with_replies_and_headers() {
    let port = free_port();
    let _server = nats(port);
    let (sink, mut source) = start("n-wild", "nats", port, "orders.*", "", Some(Decoder::Json));
    source.sync();
    nats_publish(port, "orders.created", r#"{"id": 1, "topic": "theirs"}"#);
    nats_publish(port, "other.created", r#"{"id": 2}"#);
    nats_publish(port, "orders.created.late", r#"{"id": 3}"#);
    nats_publish(port, "orders.paid", "plain");
    // A request: its reply subject comes with the message.
    let op = Operation::NatsRequest {
        subject: "orders.asked".into(),
        data: r#"{"id": 5}"#.into(),
    };
    let _ = runtime().block_on(client::run(
        "nats",
        addr(port),
        &Credentials::default(),
        &op,
        Duration::from_millis(300),
    ));
    source.sync();

    let events = sink.messages();
    let subjects: Vec<&str> = events.iter().map(|o| o.fields["topic"].as_str()).collect();
    assert_eq!(subjects, ["orders.created", "orders.paid", "orders.asked"]);
    let first = &events[0];
    assert_eq!(first.detail.as_deref(), Some("orders.created"));
    assert_eq!(first.fields["protocol"], "nats");
    assert_eq!(first.fields["reply"], "");
    assert_eq!(data(first), json!({"id": 1, "topic": "orders.created"}));
    assert!(events[1].fields["error"].starts_with("not JSON"));
    assert_eq!(data(&events[1]), json!({"topic": "orders.paid"}));
    assert!(
        events[2].fields["reply"].starts_with("_INBOX."),
        "{:?}",
        events[2]
    );
    assert_eq!(sink.errors(), Vec::<String>::new());

    assert_eq!(connections(port), 1);
    source.stop();
    assert_eq!(threads_of("n-wild"), 0);
    assert_eq!(connections(port), 0);
    nats_publish(port, "orders.created", "{}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.messages().len(), 3);
}

#[test]
fn nats_queue_group_shares_messages_and_no_group_sees_all() {
    let port = free_port();
    let _server = nats(port);
    let (a, mut sa) = start("n-qa", "nats", port, "jobs", "workers", None);
    let (b, mut sb) = start("n-qb", "nats", port, "jobs", "workers", None);
    let (all, mut sall) = start("n-qall", "nats", port, "jobs", "", None);
    for s in [&sa, &sb, &sall] {
        s.sync();
    }
    for i in 0..40 {
        nats_publish(port, "jobs", &i.to_string());
    }
    for s in [&sa, &sb, &sall] {
        s.sync();
    }
    let (na, nb) = (a.messages().len(), b.messages().len());
    assert_eq!(na + nb, 40, "each message to one member: {na} + {nb}");
    assert_eq!(all.messages().len(), 40);
    assert_eq!(
        data(&all.messages()[7]),
        json!({"topic": "jobs", "value": "7"})
    );
    for s in [&mut sa, &mut sb, &mut sall] {
        s.stop();
    }
}

#[test]
fn nats_server_down_then_up_then_restarted() {
    let port = free_port();
    let (sink, mut source) = start("n-down", "nats", port, "events", "", None);
    assert!(sink.wait(Duration::from_secs(5), |o| !o.is_empty()));
    std::thread::sleep(Duration::from_millis(1500));
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("refused"), "{errors:?}");

    let server = nats(port);
    // The sync reconnects at once; from then on the subscription is there.
    source.sync();
    nats_publish(port, "events", "one");
    source.sync();
    assert_eq!(sink.messages().len(), 1, "{:?}", sink.all());

    drop(server);
    assert!(sink.wait(Duration::from_secs(5), |o| {
        o.iter()
            .filter(|o| o.detail.as_deref() == Some("error"))
            .count()
            > 1
    }));
    let _server = nats(port);
    source.sync();
    nats_publish(port, "events", "two");
    source.sync();
    let values: Vec<String> = sink
        .messages()
        .iter()
        .map(|o| o.fields["value"].clone())
        .collect();
    assert_eq!(values, ["one", "two"]);
    let t = Instant::now();
    source.stop();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(threads_of("n-down"), 0);
}

#[test]
fn an_unknown_protocol_is_one_error_event() {
    let (sink, mut source) = start("x-bad", "amqp", free_port(), "q", "", None);
    source.sync();
    source.stop();
    let errors = sink.errors();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("kafka or nats"), "{errors:?}");
    assert_eq!(threads_of("x-bad"), 0);
}

/// A broker that stops answering (SIGSTOP) holds neither sync nor stop beyond
/// their bounds.
#[test]
fn a_frozen_broker_bounds_sync_and_stop() {
    let (kport, nport) = (free_port(), free_port());
    let kafka = tansu(kport);
    let nats = nats(nport);
    publish(kport, "t", None, "x");
    let (ksink, mut ksource) = start("k-frozen", "kafka", kport, "t", "", None);
    let (nsink, mut nsource) = start("n-frozen", "nats", nport, "t", "", None);
    ksource.sync();
    nsource.sync();
    assert_eq!(ksink.messages().len(), 1);
    for server in [&kafka, &nats] {
        // SAFETY: kill(2) on a child this test started and has not reaped.
        assert_eq!(
            unsafe { libc::kill(server.child.id() as i32, libc::SIGSTOP) },
            0
        );
    }
    for (name, source) in [("kafka", &mut ksource), ("nats", &mut nsource)] {
        let t = Instant::now();
        source.sync();
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{name} sync: {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        source.stop();
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{name} stop: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(threads_of("k-frozen") + threads_of("n-frozen"), 0);
    assert_eq!(connections(kport) + connections(nport), 0);
    assert!(nsink.messages().is_empty());
}

#[test]
fn nats_refuses_a_bad_subject_once() {
    let port = free_port();
    let _server = nats(port);
    let (sink, mut source) = start("n-bad", "nats", port, "orders..x", "", None);
    assert!(sink.wait(Duration::from_secs(5), |o| !o.is_empty()));
    // Retried with backoff, reported once.
    std::thread::sleep(Duration::from_millis(1200));
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("Invalid Subject"), "{errors:?}");
    source.stop();
    assert_eq!(connections(port), 0);
}

/// The `consume` step reads what the source reads, and the source commits nothing
/// for its group: a step with that group still starts at the beginning.
#[test]
fn kafka_consume_steps_and_the_source_agree_and_the_group_is_left_alone() {
    let port = free_port();
    let _broker = tansu(port);
    for v in ["a", "b", "c"] {
        publish(port, "shared", None, v);
    }
    let (sink, mut source) = start("k-group", "kafka", port, "shared", "audit", None);
    source.sync();
    let seen: Vec<String> = sink
        .messages()
        .iter()
        .map(|o| o.fields["value"].clone())
        .collect();
    assert_eq!(seen, ["a", "b", "c"]);
    let consume = |wait: Duration| {
        let op = Operation::KafkaConsume {
            topic: "shared".into(),
            group: Some("audit".into()),
            wait,
        };
        runtime().block_on(client::run(
            "kafka",
            addr(port),
            &Credentials::default(),
            &op,
            Duration::from_secs(10),
        ))
    };
    for (offset, value) in seen.iter().enumerate() {
        let out = consume(Duration::from_secs(2));
        assert!(out.ok, "{}", out.error);
        let body: Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(
            (&body["offset"], &body["value"]),
            (&json!(offset), &json!(value))
        );
    }
    let out = consume(Duration::from_millis(300));
    assert!(!out.ok && out.error.contains("no message"), "{out:?}");
    source.stop();
}

/// The source dials `127.0.0.1:PORT` in the observed service's namespace, not the
/// test's: here the server exists only in a namespace of its own.
#[test]
fn nats_is_read_in_the_services_own_namespace() {
    python();
    let ns = Arc::new(NetNs::create().expect("a network namespace"));
    let port = free_port();
    let args = [
        "-a".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    let _server = Server::start_in(Some(&ns), "nats", "nats-server", &args, port);
    assert!(
        std::net::TcpStream::connect(addr(port)).is_err(),
        "nothing listens in the test's own namespace"
    );
    let (sink, mut source) = start_in(ns.clone(), "n-ns", "nats", port, "x.>", "", None);
    source.sync();
    in_ns(Some(&ns), || nats_publish(port, "x.y.z", "inside"));
    source.sync();
    let values: Vec<String> = sink
        .messages()
        .iter()
        .map(|o| o.fields["value"].clone())
        .collect();
    assert_eq!(values, ["inside"]);
    assert_eq!(sink.errors(), Vec::<String>::new());
    assert_eq!(in_ns(Some(&ns), || connections(port)), 1);
    source.stop();
    assert_eq!(in_ns(Some(&ns), || connections(port)), 0);
    assert_eq!(threads_of("n-ns"), 0);
}
