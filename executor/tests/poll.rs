//! `poll(url=, interval=)` against real HTTP servers on loopback: Python's
//! http.server, and a small threaded server here whose answers (a 500, a slow or a
//! large body) and whose presence (a refused port that starts listening) the tests
//! control.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use faultbox_executor::network::namespace::NetNs;
use faultbox_executor::sources::poll::{self, BODY_CAP};
use faultbox_executor::sources::{Context, Observation};
use faultbox_spec::decode::Decoder;
use support::{context, timed, Collect, Proc, Scratch};

const LIMIT: Duration = Duration::from_secs(5);

/// A threaded HTTP/1.1 server: `/json`, `/fail` (500), `/slow?ms=N`, `/big`
/// (1.5 MiB). It records when each request arrived; it stops and joins its threads
/// on drop.
struct Server {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        Server::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Server {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (h, s) = (h.clone(), s.clone());
                        handlers.push(std::thread::spawn(move || serve(conn, &h, &s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for t in handlers {
                let _ = t.join();
            }
        });
        Server {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    fn hits(&self) -> Vec<(String, Instant)> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, hits: &Mutex<Vec<(String, Instant)>>, stop: &AtomicBool) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
    hits.lock().unwrap().push((target.clone(), Instant::now()));
    let (status, body) = match target.split_once('?').map_or(target.as_str(), |(p, _)| p) {
        "/json" => (200, br#"{"state":"ready","queue":3}"#.to_vec()),
        "/fail" => (500, b"boom".to_vec()),
        "/slow" => {
            let ms: u64 = target.rsplit('=').next().unwrap().parse().unwrap();
            let until = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            (200, b"slow".to_vec())
        }
        "/big" => (200, vec![b'x'; BODY_CAP + BODY_CAP / 2]),
        _ => (404, b"no such path".to_vec()),
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.write_all(&body);
    let _ = conn.shutdown(Shutdown::Write);
}

/// A loopback port with nothing listening on it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn polls(sink: &Collect) -> Vec<Observation> {
    sink.all()
        .into_iter()
        .filter(|o| o.detail.is_none())
        .collect()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[test]
fn python_http_server_json_is_decoded_on_every_tick() {
    let dir = Scratch::new("poll-python");
    std::fs::write(dir.join("status.json"), r#"{"state":"starting"}"#).unwrap();
    let port = free_port();
    let _server = Proc::spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < LIMIT, "http.server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sink = Collect::new();
    let url = format!("http://localhost:{port}/status.json");
    let source = poll::start(
        context(sink.clone()),
        &url,
        Duration::from_millis(100),
        Some(Decoder::Json),
    );
    sink.wait_for("a poll", LIMIT, |seen| !seen.is_empty());
    // Replaced atomically, as a service rewrites a status file.
    std::fs::write(dir.join("next"), r#"{"state":"ready","queue":[1,2]}"#).unwrap();
    std::fs::rename(dir.join("next"), dir.join("status.json")).unwrap();
    sink.wait_for("the new content", LIMIT, |seen| {
        seen.iter().any(|o| o.fields["body"].contains("ready"))
    });
    source.stop();
    let all = sink.all();
    assert!(
        all.iter().all(|o| o.kind == "poll" && o.detail.is_none()),
        "{all:?}"
    );
    let first = &all[0];
    assert_eq!(first.fields["url"], url);
    assert_eq!(first.fields["status"], "200");
    assert_eq!(first.fields["body"], r#"{"state":"starting"}"#);
    assert_eq!(first.fields["data"], r#"{"state":"starting"}"#);
    assert!(first.fields["duration_ms"].parse::<u64>().unwrap() < 1000);
    let last = all.last().unwrap();
    assert_eq!(
        json(&last.fields["data"])["queue"],
        serde_json::json!([1, 2])
    );
    let count = sink.len();
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(sink.len(), count, "nothing is emitted after stop");
}

#[test]
fn a_500_is_an_answer_not_an_error_and_an_undecodable_body_says_why() {
    let server = Server::start();
    let plain = Collect::new();
    let decoded = Collect::new();
    let every = Duration::from_millis(50);
    let a = poll::start(context(plain.clone()), &server.url("/fail"), every, None);
    let b = poll::start(
        context(decoded.clone()),
        &server.url("/fail"),
        every,
        Some(Decoder::Json),
    );
    plain.wait_for("two polls", LIMIT, |seen| seen.len() >= 2);
    decoded.wait_for("a poll", LIMIT, |seen| !seen.is_empty());
    a.stop();
    b.stop();
    for o in plain.all() {
        assert_eq!(o.detail, None);
        assert_eq!(o.fields["status"], "500");
        assert_eq!(o.fields["body"], "boom");
        assert_eq!(
            json(&o.fields["data"]),
            serde_json::json!({"status": 500, "body": "boom"})
        );
        assert!(!o.fields.contains_key("error"));
    }
    let o = &decoded.all()[0];
    assert_eq!(o.fields["data"], "{}");
    assert!(o.fields["error"].starts_with("not JSON"), "{o:?}");
    assert!(!o.fields.contains_key("line"));
}

#[test]
fn a_refused_port_is_reported_once_and_the_recovery_is_said() {
    let port = free_port();
    let sink = Collect::new();
    let every = Duration::from_millis(50);
    let url = format!("http://127.0.0.1:{port}/json");
    let source = poll::start(context(sink.clone()), &url, every, None);
    std::thread::sleep(Duration::from_millis(500));
    source.sync();
    let errors = sink.errors();
    assert_eq!(
        sink.len(),
        1,
        "one event for ~9 refused fetches: {:?}",
        sink.all()
    );
    assert_eq!(errors[0].kind, "poll");
    assert!(errors[0].fields["error"].contains("refused"), "{errors:?}");
    assert_eq!(errors[0].fields["url"], url);

    let server = Server::on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    sink.wait_for("a poll", LIMIT, |seen| {
        seen.iter().any(|o| o.detail.is_none())
    });
    let ok = polls(&sink);
    assert_eq!(ok[0].fields["recovered"], "true");
    let failed: u64 = ok[0].fields["failed_fetches"].parse().unwrap();
    assert!(
        failed >= 5,
        "{failed} failed fetches in 500 ms of 50 ms ticks"
    );
    assert_eq!(ok[0].fields["status"], "200");

    drop(server);
    sink.wait_for("the second outage", LIMIT, |seen| {
        seen.last().is_some_and(|o| o.detail.is_some())
    });
    std::thread::sleep(Duration::from_millis(300));
    source.stop();
    let errors = sink.errors();
    // The outage may start with a cut connection before the refusals: at most one
    // event for each, never one per tick.
    assert!((2..=3).contains(&errors.len()), "{errors:#?}");
    assert!(errors.last().unwrap().fields["error"].contains("refused"));
    assert!(polls(&sink)[1..]
        .iter()
        .all(|o| !o.fields.contains_key("recovered")));
}

#[test]
fn a_slower_endpoint_than_the_interval_times_out_without_piling_up_requests() {
    let server = Server::start();
    let sink = Collect::new();
    let every = Duration::from_millis(100);
    let source = poll::start(
        context(sink.clone()),
        &server.url("/slow?ms=400"),
        every,
        None,
    );
    std::thread::sleep(Duration::from_millis(1050));
    let ((), took) = timed(|| source.sync());
    assert!(took < Duration::from_millis(300), "sync took {took:?}");
    let ((), took) = timed(|| source.stop());
    assert!(took < Duration::from_millis(300), "stop took {took:?}");
    let all = sink.all();
    assert_eq!(
        all.len(),
        1,
        "one event for every timed-out fetch: {all:#?}"
    );
    assert_eq!(all[0].fields["error"], "no response within 100ms");
    let hits = server.hits();
    assert!(
        (4..=11).contains(&hits.len()),
        "{} requests in ~1 s",
        hits.len()
    );
    for pair in hits.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= Duration::from_millis(80),
            "two requests {gap:?} apart"
        );
    }
}

#[test]
fn sync_waits_for_the_fetch_under_way_and_stop_cuts_a_long_one() {
    let server = Server::start();
    let sink = Collect::new();
    let source = poll::start(
        context(sink.clone()),
        &server.url("/slow?ms=300"),
        Duration::from_millis(1000),
        None,
    );
    let start = Instant::now();
    while server.hits().is_empty() {
        assert!(start.elapsed() < LIMIT);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(sink.len(), 0);
    let ((), took) = timed(|| source.sync());
    assert!(
        took >= Duration::from_millis(150),
        "sync returned after {took:?}"
    );
    assert_eq!(
        sink.len(),
        1,
        "the fetch under way is emitted before sync returns"
    );
    assert_eq!(sink.all()[0].fields["body"], "slow");
    let ((), took) = timed(|| source.stop());
    assert!(
        took < Duration::from_millis(300),
        "stop waited for a tick: {took:?}"
    );

    // A fetch still under way 2 s after stop is dropped, unreported.
    let sink = Collect::new();
    let source = poll::start(
        context(sink.clone()),
        &server.url("/slow?ms=8000"),
        Duration::from_millis(2500),
        None,
    );
    let start = Instant::now();
    while server.hits().len() < 2 {
        assert!(start.elapsed() < LIMIT);
        std::thread::sleep(Duration::from_millis(5));
    }
    let ((), took) = timed(|| source.stop());
    assert!(
        (Duration::from_millis(1900)..Duration::from_millis(2600)).contains(&took),
        "stop took {took:?}"
    );
    assert_eq!(sink.len(), 0, "{:?}", sink.all());
}

#[test]
fn a_body_larger_than_the_cap_is_cut() {
    let server = Server::start();
    let sink = Collect::new();
    let source = poll::start(
        context(sink.clone()),
        &server.url("/big"),
        Duration::from_millis(50),
        None,
    );
    sink.wait_for("a poll", LIMIT, |seen| !seen.is_empty());
    source.stop();
    let o = &sink.all()[0];
    assert_eq!(o.fields["status"], "200");
    assert_eq!(o.fields["body"].len(), BODY_CAP);
    assert_eq!(o.fields["truncated"], "true");
}

#[test]
fn the_poll_runs_in_the_services_network_namespace() {
    let ns = Arc::new(NetNs::create().expect("a network namespace"));
    let listener = ns
        .listen(&["127.0.0.1:0".parse().unwrap()])
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let server = Server::on(listener);
    let inside = Collect::new();
    let outside = Collect::new();
    let every = Duration::from_millis(50);
    let a = poll::start(
        Context {
            service: "svc".into(),
            netns: ns.clone(),
            sink: inside.clone(),
        },
        &server.url("/json"),
        every,
        None,
    );
    let b = poll::start(context(outside.clone()), &server.url("/json"), every, None);
    inside.wait_for("a poll", LIMIT, |seen| !seen.is_empty());
    outside.wait_for("an error", LIMIT, |seen| !seen.is_empty());
    a.stop();
    b.stop();
    assert_eq!(inside.all()[0].fields["status"], "200");
    assert!(inside.errors().is_empty());
    let errors = outside.errors();
    assert!(errors[0].fields["error"].contains("refused"), "{errors:?}");
}

#[test]
fn a_url_that_cannot_be_polled_is_one_error() {
    for (url, says) in [
        ("https://localhost:8443/", "only plain HTTP"),
        ("http://example.com/", "neither localhost nor an IP"),
        ("http://localhost:99999/", "port"),
    ] {
        let sink = Collect::new();
        let source = poll::start(context(sink.clone()), url, Duration::from_millis(10), None);
        std::thread::sleep(Duration::from_millis(50));
        let ((), took) = timed(|| source.stop());
        assert!(took < Duration::from_millis(200));
        let all = sink.all();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].fields["error"].contains(says), "{all:?}");
        assert_eq!(all[0].fields["url"], url);
    }
}
