//! `poll(url=, interval=)`: a GET every `interval`, each answer a `poll` event.
//!
//! One thread per source enters the observed service's network namespace (so
//! `localhost` is the service, not a relay, and the test's faults never touch the
//! poll) and runs a single-threaded runtime. Fetches are strictly one after another,
//! each bounded by `min(interval, 5 s)`: a slow endpoint costs ticks, never a pile of
//! requests against the service.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultbox_spec::decode::Decoder;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::{decoded_fields, Context, Observation, Running, Sink};

/// The most of a body kept: the event says `truncated` past it.
pub const BODY_CAP: usize = 1 << 20;

/// The longest a fetch may take, whatever the interval.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest interval: a zero interval would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How long `sync` and `stop` wait for a fetch under way.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// Why a `poll(url=)` cannot be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not an http:// URL (only plain HTTP is polled)")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("host {0:?} is neither localhost nor an IP address")]
    Host(String),
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
}

/// Where a poll connects and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header: the URL's host and port as written.
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses `http://HOST[:PORT][/PATH][?QUERY]`, HOST being `localhost` (127.0.0.1 in
/// the service's namespace), an IPv4 address or a bracketed IPv6 address.
pub fn parse_url(url: &str) -> Result<Target, UrlError> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or_else(|| UrlError::Scheme(url.to_string()))?;
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    if authority.is_empty() {
        return Err(UrlError::NoHost(url.to_string()));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| UrlError::Host(authority.to_string()))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| UrlError::Host(authority.to_string()))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>()
            .map_err(|_| UrlError::Host(host.to_string()))?
    };
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| UrlError::Port(p.to_string()))?,
    };
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        path,
    })
}

/// Starts polling `url` every `interval` (at least 10 ms), the first GET one interval
/// after the start, so a service that is still starting is not reported as down.
pub fn start(
    ctx: Context,
    url: &str,
    interval: Duration,
    decoder: Option<Decoder>,
) -> Box<dyn Running> {
    let interval = interval.max(MIN_INTERVAL);
    let flight = Arc::new(Flight::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = Poller {
        url: url.to_string(),
        interval,
        timeout: interval.min(MAX_TIMEOUT),
        decoder,
        sink: ctx.sink.clone(),
        flight: flight.clone(),
        failing: None,
    };
    let netns = ctx.netns.clone();
    let thread = std::thread::Builder::new()
        .name(format!("faultbox-poll-{}", ctx.service))
        .spawn(move || poller.run(&netns, stop_rx));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            let mut o = Observation::error("poll", format!("cannot start the poll thread: {e}"));
            o.fields.insert("url".into(), url.to_string());
            ctx.sink.emit(o);
            None
        }
    };
    Box::new(Poll {
        flight,
        stop: stop_tx,
        thread,
    })
}

/// Whether a fetch is under way, for `sync`.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
    landed: Condvar,
}

#[derive(Default)]
struct FlightState {
    in_flight: bool,
    /// Fetches finished (and emitted) so far.
    done: u64,
}

impl Flight {
    fn set(&self, in_flight: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.in_flight = in_flight;
        if !in_flight {
            s.done += 1;
            self.landed.notify_all();
        }
    }

    /// Waits for the fetch under way, if any, to be emitted.
    fn wait(&self, limit: Duration) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.in_flight {
            let done = s.done;
            let _ = self
                .landed
                .wait_timeout_while(s, limit, |s| s.done == done)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct Poll {
    flight: Arc<Flight>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Running for Poll {
    fn sync(&self) {
        self.flight.wait(SYNC_WAIT);
    }

    fn stop(mut self: Box<Self>) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One fetch's answer.
struct Fetched {
    status: u16,
    body: Vec<u8>,
    truncated: bool,
}

struct Poller {
    url: String,
    interval: Duration,
    timeout: Duration,
    decoder: Option<Decoder>,
    sink: Arc<dyn Sink>,
    flight: Arc<Flight>,
    /// The failure now lasting and how many fetches it has failed.
    failing: Option<(String, u64)>,
}

impl Poller {
    fn run(
        mut self,
        netns: &crate::network::namespace::NetNs,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let target = match parse_url(&self.url) {
            Ok(t) => t,
            Err(e) => return self.error(e.to_string()),
        };
        if let Err(e) = netns.enter() {
            return self.error(format!("cannot enter the service's network namespace: {e}"));
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return self.error(format!("cannot start the poll runtime: {e}")),
        };
        rt.block_on(async {
            let mut ticks = tokio::time::interval_at(
                tokio::time::Instant::now() + self.interval,
                self.interval,
            );
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.changed() => return,
                }
                self.flight.set(true);
                let started = Instant::now();
                let fetch = tokio::time::timeout(self.timeout, fetch(&target));
                tokio::pin!(fetch);
                let stopped;
                let outcome = tokio::select! {
                    r = &mut fetch => { stopped = false; Some(r) }
                    _ = stop.changed() => {
                        // Stopping does what sync does: the fetch under way may land.
                        stopped = true;
                        tokio::time::timeout(SYNC_WAIT, &mut fetch).await.ok()
                    }
                };
                let elapsed = started.elapsed();
                match outcome {
                    Some(Ok(Ok(answer))) => self.answered(answer, elapsed),
                    Some(Ok(Err(e))) => self.failed(e, elapsed),
                    Some(Err(_)) => {
                        self.failed(format!("no response within {:?}", self.timeout), elapsed)
                    }
                    None => {}
                }
                self.flight.set(false);
                if stopped {
                    return;
                }
            }
        });
    }

    fn answered(&mut self, answer: Fetched, elapsed: Duration) {
        let mut fields = BTreeMap::new();
        match &self.decoder {
            Some(d) => {
                let mut decoded = decoded_fields(&answer.body, Some(d));
                decoded.remove("line");
                fields.extend(decoded);
            }
            None => {
                let data = serde_json::json!({
                    "status": answer.status,
                    "body": String::from_utf8_lossy(&answer.body),
                });
                fields.insert("data".into(), data.to_string());
            }
        }
        fields.insert("url".into(), self.url.clone());
        fields.insert("status".into(), answer.status.to_string());
        fields.insert("duration_ms".into(), elapsed.as_millis().to_string());
        fields.insert(
            "body".into(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        );
        if answer.truncated {
            fields.insert("truncated".into(), "true".into());
        }
        if let Some((_, failed)) = self.failing.take() {
            fields.insert("recovered".into(), "true".into());
            fields.insert("failed_fetches".into(), failed.to_string());
        }
        self.sink.emit(Observation {
            kind: "poll",
            detail: None,
            fields,
        });
    }

    /// Reports a failure when it differs from the one already lasting.
    fn failed(&mut self, message: String, elapsed: Duration) {
        if let Some((lasting, count)) = &mut self.failing {
            if *lasting == message {
                *count += 1;
                return;
            }
        }
        let mut o = Observation::error("poll", message.clone());
        o.fields.insert("url".into(), self.url.clone());
        o.fields
            .insert("duration_ms".into(), elapsed.as_millis().to_string());
        self.sink.emit(o);
        let failed = self.failing.as_ref().map_or(0, |(_, n)| *n);
        self.failing = Some((message, failed + 1));
    }

    fn error(&self, message: String) {
        let mut o = Observation::error("poll", message);
        o.fields.insert("url".into(), self.url.clone());
        self.sink.emit(o);
    }
}

/// One GET on a fresh connection, made from the calling thread's namespace. The body
/// is read up to [`BODY_CAP`]; the connection is dropped past it.
async fn fetch(target: &Target) -> Result<Fetched, String> {
    let stream = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect to {}: {}", target.addr, io_reason(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(target.path.as_str())
        .header("host", target.host.as_str())
        .header("user-agent", "faultbox-poll")
        .header("connection", "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(hyper_reason)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(hyper_reason)?;
            if let Ok(data) = frame.into_data() {
                let room = BODY_CAP - kept.len();
                kept.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    truncated = true;
                    break;
                }
            }
        }
        Ok(Fetched {
            status,
            body: kept,
            truncated,
        })
    }
    .await;
    driver.abort();
    result
}

/// An I/O error without the varying `(os error N)` detail, so that the same failure
/// reads the same on every tick.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A hyper error with its cause (`connection reset`, `unexpected EOF`).
fn hyper_reason(e: hyper::Error) -> String {
    match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_an_address_host_and_path() {
        let t = parse_url("http://localhost:8080/metrics?x=1#frag").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "localhost:8080");
        assert_eq!(t.path, "/metrics?x=1");
        let t = parse_url("HTTP://10.0.0.2").unwrap();
        assert_eq!(t.addr, "10.0.0.2:80".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = parse_url("http://[::1]:9/?q").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.path, "/?q");
        assert_eq!(
            parse_url("https://localhost/"),
            Err(UrlError::Scheme("https://localhost/".into()))
        );
        assert_eq!(
            parse_url("http://example.com/"),
            Err(UrlError::Host("example.com".into()))
        );
        assert_eq!(
            parse_url("http://localhost:0/"),
            Err(UrlError::Port("0".into()))
        );
        assert_eq!(
            parse_url("http://localhost:http/"),
            Err(UrlError::Port("http".into()))
        );
        assert_eq!(
            parse_url("http:///x"),
            Err(UrlError::NoHost("http:///x".into()))
        );
        assert!(matches!(parse_url("http://[::1"), Err(UrlError::Host(_))));
    }
}
