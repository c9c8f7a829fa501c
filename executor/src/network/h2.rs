//! HTTP/2 between services: gRPC interfaces, and `http` interfaces whose client
//! starts with the HTTP/2 preface (h2c with prior knowledge). HTTP/2 multiplexes
//! streams over one connection with shared HPACK state and flow control, so it is
//! not framed byte-wise like the other protocols: the relay terminates it. It
//! serves the consumer's connection as an HTTP/2 server and forwards each request
//! on one HTTP/2 client connection of its own to the service (one upstream
//! connection per consumer connection, so an edge keeps its connections one to
//! one). Bodies are streamed both ways, never buffered, and trailers are kept
//! (gRPC's status lives in them).
//!
//! Both connections are driven with the `h2` crate directly, and every call is one
//! future polled by the connection's own task, next to the two connections: no
//! wake-up crosses to another worker between a request and its forwarding, a call
//! costs no task, channel or boxed body of its own, and stopping the connection's
//! task stops all of it (a call held by a delay included).
//!
//! Rules act per request (per stream): an answer in the server's place (a gRPC
//! trailers-only error or a successful call; an HTTP status and body for h2c), a
//! delay that holds only that stream, or a drop that resets the consumer's whole
//! connection (and the relay's to the service), as a network failure would.

use std::future::{poll_fn, Future};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, TE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use faultbox_protocols::{Answer, FieldView, Fields};
use faultbox_spec::world::ProxyAction;

use super::plan::Edge;
use super::pump::{Events, Fired};
use super::rules::{Active, EdgeRules, Rules};

/// What the relay serves on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A gRPC interface: `method=` is the `:path`, answers are gRPC statuses.
    Grpc,
    /// An `http` interface spoken as h2c: HTTP/1's keys and answers.
    Http,
}

/// Why an HTTP/2 relay connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("the consumer's HTTP/2 connection failed: {0}")]
    Consumer(h2::Error),
    #[error("the HTTP/2 handshake with the service failed: {0}")]
    Handshake(h2::Error),
    #[error("the service's HTTP/2 connection failed: {0}")]
    Service(h2::Error),
    #[error("dropped by a rule")]
    Dropped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything a connection's calls share.
struct Ctx {
    edge: Edge,
    kind: Kind,
    rules: Arc<Rules>,
    cache: Mutex<EdgeRules>,
    events: Arc<dyn Events>,
    upstream: h2::client::SendRequest<Bytes>,
    /// Set by a call a `drop()` rule fired on: the connection's task resets both
    /// connections once it sees it (right after polling that call).
    dropped: AtomicBool,
}

/// Detects the HTTP/2 preface without consuming it: waits until the client's first
/// bytes are the whole preface or are not a start of it. End of stream is "not".
pub async fn starts_with_preface(client: &TcpStream) -> std::io::Result<bool> {
    use faultbox_protocols::http2::{preface, Preface, PREFACE};
    let mut buf = [0u8; PREFACE.len()];
    let mut wait = Duration::from_millis(1);
    loop {
        let n = client.peek(&mut buf).await?;
        match preface(&buf[..n]) {
            Preface::Http2 => return Ok(true),
            Preface::Other => return Ok(false),
            // Part of the preface came: peek returns it again at once, so wait a
            // little for the rest (rare: clients send the preface in one write).
            Preface::Undecided => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// Flow-control windows: larger than HTTP/2's 64 KiB default so a relayed stream
/// is not held to one window per round trip.
const WINDOW: u32 = 1 << 20;

/// The largest header list either side accepts (hyper's default, which the relay
/// had when it was built on hyper).
const MAX_HEADER_LIST: u32 = 16 << 10;

/// Passes of the connection's loop one poll may make before it lets the scheduler
/// run other tasks.
const MAX_PASSES: usize = 8;

/// The waker a connection's loop polls everything with. h2 wakes the connection's
/// task whenever a call queues a frame, and a call whenever its connection reads
/// a frame for it: wakes that happen while the loop is running, so a plain waker
/// would have the task scheduled again right after each poll, and tokio's
/// scheduler, seeing a task woken by itself, rouses the other worker to steal it
/// (a cross-CPU wake-up, several context switches per call). This waker notes
/// such a wake and the loop makes another pass instead; a wake that comes while
/// the loop is not running (the sockets' readiness) wakes the task.
#[derive(Default)]
struct Passes {
    /// IDLE, POLLING, or WOKEN (polling, and woken since the pass began).
    state: std::sync::atomic::AtomicU8,
    task: futures_util::task::AtomicWaker,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl Passes {
    fn enter(&self, task: &Waker) {
        self.task.register(task);
        self.state.store(POLLING, Ordering::SeqCst);
    }

    /// Whether the loop may wait: nothing woke it during this pass. If something
    /// did, the next pass begins.
    fn done(&self) -> bool {
        match self
            .state
            .compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(_) => {
                self.state.store(POLLING, Ordering::SeqCst);
                false
            }
        }
    }

    fn leave<T>(&self, out: Poll<T>) -> Poll<T> {
        self.state.store(IDLE, Ordering::SeqCst);
        out
    }

    fn yield_now<T>(&self) -> Poll<T> {
        self.state.store(IDLE, Ordering::SeqCst);
        self.task.wake();
        Poll::Pending
    }
}

impl std::task::Wake for Passes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut now = self.state.load(Ordering::SeqCst);
        loop {
            match now {
                WOKEN => return,
                POLLING => match self.state.compare_exchange(
                    POLLING,
                    WOKEN,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return,
                    Err(was) => now = was,
                },
                _ => return self.task.wake(),
            }
        }
    }
}

/// Serves `client` (which starts with the HTTP/2 preface) and forwards its requests
/// to `server`; returns the bytes read from and written to the client.
pub async fn relay(
    edge: Edge,
    kind: Kind,
    rules: Arc<Rules>,
    events: Arc<dyn Events>,
    client: TcpStream,
    server: TcpStream,
) -> Result<(u64, u64), H2Error> {
    // Kept to reset the sockets on a drop: a duplicate shares SO_LINGER with them.
    let client_fd: OwnedFd = client.as_fd().try_clone_to_owned()?;
    let server_fd: OwnedFd = server.as_fd().try_clone_to_owned()?;
    let counts = Arc::new(Counts::default());
    let (upstream, service_conn) = h2::client::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW * 4)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(1 << 20)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(server)
        .await
        .map_err(H2Error::Handshake)?;
    let mut consumer = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW * 4)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(200)
        .max_send_buffer_size(400 << 10)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(Counted {
            inner: client,
            counts: counts.clone(),
        })
        .await
        .map_err(H2Error::Consumer)?;
    let ctx = Ctx {
        edge,
        kind,
        rules,
        cache: Mutex::new(EdgeRules::default()),
        events,
        upstream,
        dropped: AtomicBool::new(false),
    };
    let mut service_conn = pin!(service_conn);
    let mut calls = FuturesUnordered::new();
    let mut accepting = true;
    let mut service_done = false;
    // One loop polls, in the order a call's bytes travel, the consumer's connection
    // (new calls, its frames in and out), the calls, and the service's connection;
    // what one of them wakes in another during the pass is polled by the next pass
    // of the same poll (see [`Passes`]).
    let passes = Arc::new(Passes::default());
    let own = Waker::from(passes.clone());
    let result = poll_fn(|cx| {
        passes.enter(cx.waker());
        let cx = &mut Context::from_waker(&own);
        for _ in 0..MAX_PASSES {
            'pass: {
                while accepting {
                    match consumer.poll_accept(cx) {
                        Poll::Ready(Some(Ok((req, respond)))) => {
                            calls.push(call(&ctx, req, respond))
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return passes.leave(Poll::Ready(Err(H2Error::Consumer(e))))
                        }
                        Poll::Ready(None) => accepting = false,
                        Poll::Pending => break,
                    }
                }
                if !accepting {
                    // No more calls: the connection ends once those in flight have.
                    if let Poll::Ready(r) = consumer.poll_closed(cx) {
                        return passes.leave(Poll::Ready(r.map_err(H2Error::Consumer)));
                    }
                }
                while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
                if ctx.dropped.load(Ordering::Relaxed) {
                    return passes.leave(Poll::Ready(Err(H2Error::Dropped)));
                }
                if !service_done {
                    match service_conn.as_mut().poll(cx) {
                        Poll::Pending => {}
                        // The service said goodbye: so does the relay, letting calls
                        // in flight end as they can.
                        Poll::Ready(Ok(())) => {
                            service_done = true;
                            consumer.graceful_shutdown();
                            break 'pass;
                        }
                        // The service vanished: the consumer's connection goes too,
                        // as a direct one would.
                        Poll::Ready(Err(e)) => {
                            return passes.leave(Poll::Ready(Err(H2Error::Service(e))))
                        }
                    }
                }
                if passes.done() {
                    return Poll::Pending;
                }
            }
        }
        // Still woken after as many passes: back to the scheduler (tokio's
        // cooperative budget, for one, wakes a task that used it up).
        passes.yield_now()
    })
    .await;
    if let Err(H2Error::Dropped) = result {
        for fd in [&client_fd, &server_fd] {
            let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
        }
    }
    result.map(|()| {
        (
            counts.read.load(Ordering::Relaxed),
            counts.written.load(Ordering::Relaxed),
        )
    })
}

/// One call, from the consumer's request to the end of both of its streams.
async fn call(ctx: &Ctx, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let Some(rule) = decide(ctx, &req) else {
        return forward(ctx, req, respond).await;
    };
    let fields = fields(ctx.kind, req.method(), req.uri());
    let action = unless_reset(&mut respond, act(ctx, &rule, fields)).await;
    match action {
        // The consumer gave up on the call while it was held.
        None => {}
        Some(Act::Forward) => forward(ctx, req, respond).await,
        Some(Act::Answer(reply)) => answer(*reply, req.into_body(), respond).await,
        Some(Act::Drop) => ctx.dropped.store(true, Ordering::Relaxed),
    }
}

/// The rule that acts on `req`, if any: one atomic load while the edge's rules did
/// not change, and the request's keys read in place (nothing is copied out of a
/// call no rule acts on).
fn decide(ctx: &Ctx, req: &Request<RecvStream>) -> Option<Arc<Active>> {
    let edge = (
        ctx.edge.consumer.as_str(),
        ctx.edge.service.as_str(),
        ctx.edge.port.interface.as_str(),
    );
    let mut cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
    let rules = ctx
        .rules
        .for_edge_cached(edge.0, edge.1, edge.2, &mut cache);
    if rules.is_empty() {
        return None;
    }
    let keys = Keys::of(ctx.kind, req.method(), req.uri());
    ctx.rules.decide(edge, rules, &keys)
}

/// A request's match keys, borrowed from it: what [`fields`] would hold.
struct Keys<'a> {
    kind: Kind,
    method: &'a str,
    path: &'a str,
    /// The path without its query, for `path=`.
    bare: &'a str,
}

impl<'a> Keys<'a> {
    fn of(kind: Kind, method: &'a Method, uri: &'a Uri) -> Keys<'a> {
        Keys {
            kind,
            method: method.as_str(),
            path: uri.path(),
            bare: faultbox_protocols::http2::bare_path(path_and_query(uri)),
        }
    }
}

impl FieldView for Keys<'_> {
    fn field(&self, key: &str) -> Option<&str> {
        match (self.kind, key) {
            (Kind::Grpc, "method") => Some(self.path),
            (Kind::Http, "method") => Some(self.method),
            (Kind::Http, "path") => Some(self.bare),
            _ => None,
        }
    }
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

/// The match fields of a request, for the trace of a rule that fired.
fn fields(kind: Kind, method: &Method, uri: &Uri) -> Fields {
    match kind {
        Kind::Grpc => {
            let mut f = Fields::new();
            f.insert("method", uri.path().to_string());
            f
        }
        Kind::Http => faultbox_protocols::http2::fields(method.as_str(), path_and_query(uri)),
    }
}

/// `fut`, unless the consumer resets the call's stream first.
async fn unless_reset<F: Future>(respond: &mut SendResponse<Bytes>, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Sends `req` to the service and streams its response back; both bodies are
/// pumped at once (a streaming call sends and receives at the same time).
async fn forward(ctx: &Ctx, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (head, body) = req.into_parts();
    let end = body.is_end_stream();
    let mut upstream = ctx.upstream.clone();
    let sent = match poll_fn(|cx| upstream.poll_ready(cx)).await {
        Ok(()) => upstream.send_request(Request::from_parts(head, ()), end),
        Err(e) => Err(e),
    };
    drop(upstream);
    let (mut response, to_service) = match sent {
        Ok(sent) => sent,
        // The service's connection failed: the relay's loop ends the consumer's
        // connection too; until then this stream says the service is unreachable.
        Err(_) => return reply(unreachable_reply(ctx.kind), &mut respond),
    };
    let mut request = (!end).then(|| Pump::new(body, to_service));
    let mut back: Option<Pump> = None;
    let mut respond = Some(respond);
    poll_fn(|cx| {
        if let Some(p) = request.as_mut() {
            if p.poll(cx).is_ready() {
                request = None;
            }
        }
        if let Some(r) = respond.as_mut() {
            // Waiting for the service's response headers.
            if r.poll_reset(cx).is_ready() {
                // The consumer cancelled: dropping the service's stream cancels it
                // there too.
                return Poll::Ready(());
            }
            let Poll::Ready(got) = Pin::new(&mut response).poll(cx) else {
                return Poll::Pending;
            };
            let mut r = respond.take().expect("checked above");
            match got {
                Ok(resp) => {
                    let (mut head, body) = resp.into_parts();
                    // Connection-specific headers cannot arrive over HTTP/2 (h2
                    // refuses them); `te` can, and is not for responses.
                    head.headers.remove(TE);
                    let end = body.is_end_stream();
                    match r.send_response(Response::from_parts(head, ()), end) {
                        Ok(to_consumer) if !end => back = Some(Pump::new(body, to_consumer)),
                        Ok(_) => {}
                        Err(_) => r.send_reset(Reason::INTERNAL_ERROR),
                    }
                }
                // The service reset the call or its connection failed.
                Err(_) => reply(unreachable_reply(ctx.kind), &mut r),
            }
        }
        if let Some(p) = back.as_mut() {
            if p.poll(cx).is_ready() {
                back = None;
            }
        }
        // Over once both directions are (a client stream may go on sending after
        // the service answered, as it would on a direct connection).
        if respond.is_none() && back.is_none() && request.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of a stream: DATA frames and trailers from one connection to the
/// other, as they come, holding at most one frame while the receiver's flow-control
/// window is closed.
struct Pump {
    from: RecvStream,
    to: SendStream<Bytes>,
    held: Option<(Bytes, bool)>,
    data_done: bool,
}

impl Pump {
    fn new(from: RecvStream, to: SendStream<Bytes>) -> Pump {
        Pump {
            from,
            to,
            held: None,
            data_done: false,
        }
    }

    /// Ready once the direction is over: ended, reset by either side, or failed.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // The receiver reset the stream: nothing more goes its way.
            if self.to.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some((data, end)) = self.held.take() {
                while self.to.capacity() == 0 {
                    match self.to.poll_capacity(cx) {
                        Poll::Pending => {
                            self.held = Some((data, end));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                if self.to.send_data(data, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            if !self.data_done {
                match ready!(self.from.poll_data(cx)) {
                    Some(Ok(data)) => {
                        // Taken off the sender's window at once: what bounds the
                        // bytes in flight is the receiver's window, held above.
                        let _ = self.from.flow_control().release_capacity(data.len());
                        let end = self.from.is_end_stream();
                        if data.is_empty() {
                            // Needs no window: an empty frame that ends the stream.
                            if self.to.send_data(data, end).is_err() || end {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // A claim on the window only once data is in hand (a claim
                        // held while waiting for data could starve other streams).
                        self.to.reserve_capacity(1);
                        self.held = Some((data, end));
                        continue;
                    }
                    Some(Err(e)) => {
                        self.failed(e);
                        return Poll::Ready(());
                    }
                    None => self.data_done = true,
                }
            }
            match ready!(self.from.poll_trailers(cx)) {
                Ok(Some(trailers)) => {
                    self.to.reserve_capacity(0);
                    let _ = self.to.send_trailers(trailers);
                }
                Ok(None) => {
                    let _ = self.to.send_data(Bytes::new(), true);
                }
                Err(e) => self.failed(e),
            }
            return Poll::Ready(());
        }
    }

    /// The sender reset its stream or its connection failed: a reset with its
    /// reason goes on, except NO_ERROR (an early response), which ends the stream.
    fn failed(&mut self, e: h2::Error) {
        match e.reason() {
            Some(Reason::NO_ERROR) => {
                let _ = self.to.send_data(Bytes::new(), true);
            }
            reason => self.to.send_reset(reason.unwrap_or(Reason::INTERNAL_ERROR)),
        }
    }
}

/// What a rule does to a call.
enum Act {
    Forward,
    Answer(Box<Reply>),
    Drop,
}

/// A response given in the server's place.
struct Reply {
    head: Response<()>,
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

/// Sends `r` on the consumer's stream: headers, at most one data frame, trailers.
fn reply(r: Reply, respond: &mut SendResponse<Bytes>) {
    let end = r.data.is_none() && r.trailers.is_none();
    let mut to = match respond.send_response(r.head, end) {
        Ok(to) => to,
        Err(_) => return respond.send_reset(Reason::INTERNAL_ERROR),
    };
    if let Some(d) = r.data {
        let _ = to.send_data(d, r.trailers.is_none());
    }
    if let Some(t) = r.trailers {
        let _ = to.send_trailers(t);
    }
}

/// Answers a call in the server's place, then reads the rest of the request and
/// discards it, as a server that answers early does: resetting it would reset the
/// stream under the answer, which some clients (curl) report instead of the answer.
/// It ends with the stream, or with the connection.
async fn answer(r: Reply, mut body: RecvStream, mut respond: SendResponse<Bytes>) {
    reply(r, &mut respond);
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
    }
}

/// What a stream gets when the service's connection failed under it: HTTP 502, or
/// gRPC UNAVAILABLE (what a client sees when its connection breaks mid-call).
fn unreachable_reply(kind: Kind) -> Reply {
    match kind {
        Kind::Grpc => grpc_reply(faultbox_protocols::grpc::GrpcReply {
            headers: vec![
                ("grpc-status", "14".into()),
                ("grpc-message", "the service's connection failed".into()),
            ],
            body: Vec::new(),
            trailers: Vec::new(),
            status: 14,
        }),
        Kind::Http => {
            let mut head = Response::new(());
            *head.status_mut() = StatusCode::BAD_GATEWAY;
            Reply {
                head,
                data: None,
                trailers: None,
            }
        }
    }
}

async fn act(ctx: &Ctx, rule: &Active, fields: Fields) -> Act {
    let mut detail = std::collections::BTreeMap::new();
    let fire = |action: &'static str, detail| {
        ctx.events.fired(Fired {
            action,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            detail,
            label: rule.rule.label.clone(),
            rule: rule.id,
        })
    };
    let (name, answer) = match &rule.rule.action {
        ProxyAction::Delay(d) => {
            detail.insert("delay_ms".into(), d.as_millis().to_string());
            fire("delay", detail);
            crate::engine::timer::sleep(*d).await;
            return Act::Forward;
        }
        ProxyAction::Duplicate => {
            // Refused at load (neither gRPC nor HTTP supports it); said so if it came.
            detail.insert(
                "refused".into(),
                "HTTP/2 requests are not duplicated".into(),
            );
            fire("duplicate", detail);
            return Act::Forward;
        }
        ProxyAction::Drop => {
            fire("drop", detail);
            return Act::Drop;
        }
        ProxyAction::Response {
            status,
            body,
            value,
        } => (
            "response",
            Answer::Response {
                status: *status,
                body: body.clone(),
                value: value.clone(),
            },
        ),
        ProxyAction::Error { message, status } => {
            detail.extend(message.clone().map(|m| ("error".to_string(), m)));
            (
                "error",
                Answer::Error {
                    message: message.clone(),
                    status: status.clone(),
                },
            )
        }
    };
    let made = match ctx.kind {
        Kind::Grpc => faultbox_protocols::grpc::answer(&answer)
            .map(|r| {
                detail.insert("status".into(), r.status.to_string());
                grpc_reply(r)
            })
            .map_err(|e| e.to_string()),
        Kind::Http => faultbox_protocols::http2::answer(&answer)
            .map(|r| {
                detail.insert("status".into(), r.status.to_string());
                http_reply(r)
            })
            .map_err(|e| e.to_string()),
    };
    match made {
        Ok(reply) => {
            fire(name, detail);
            Act::Answer(Box::new(reply))
        }
        Err(why) => {
            // Checked at load, so only a rule this kind cannot answer gets here: the
            // request goes through and the trace says why the rule did not act.
            detail.insert("refused".into(), why.to_string());
            fire(name, detail);
            Act::Forward
        }
    }
}

fn grpc_reply(r: faultbox_protocols::grpc::GrpcReply) -> Reply {
    let mut head = Response::new(());
    let h = head.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.extend(headers(&r.headers));
    Reply {
        head,
        data: (!r.body.is_empty()).then(|| Bytes::from(r.body)),
        trailers: (!r.trailers.is_empty()).then(|| headers(&r.trailers)),
    }
}

fn http_reply(r: faultbox_protocols::http2::Reply) -> Reply {
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    head.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    Reply {
        head,
        data: (!r.body.is_empty()).then(|| Bytes::from(r.body)),
        trailers: None,
    }
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        // Values come from the protocols crate: printable ASCII (messages are
        // percent-encoded, statuses are digits).
        if let Ok(v) = HeaderValue::from_str(v) {
            map.insert(HeaderName::from_static(k), v);
        }
    }
    map
}

#[derive(Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

/// The consumer's socket, counting bytes each way for the connection's report.
struct Counted {
    inner: TcpStream,
    counts: Arc<Counts>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        me.counts.read.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            me.counts.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            me.counts.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The HTTP/2 relay between a real hyper client and a real hyper server on
    //! loopback: streaming with trailers, each action, a service that vanishes, and
    //! garbage after the preface.
    use super::*;
    use crate::network::plan::Port;
    use faultbox_spec::world::ProxyRule;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Body, Frame, Incoming};
    use hyper_util::rt::TokioExecutor;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    type Out = BoxBody<Bytes, hyper::Error>;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Fired>>);

    impl Events for Seen {
        fn fired(&self, fired: Fired) {
            self.0.lock().unwrap().push(fired);
        }
        fn opaque(&self, _: String) {}
    }

    fn edge(protocol: &str) -> Edge {
        Edge {
            consumer: "app".into(),
            service: "api".into(),
            port: Port {
                interface: "main".into(),
                protocol: protocol.into(),
                port: 1,
            },
            listen: Vec::new(),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A gRPC-shaped service: `/echo.E/Say` streams the request body back in two
    /// frames and ends with `grpc-status: 0` in trailers; `/echo.E/Gone` closes the
    /// connection mid-response.
    fn service(io: TcpStream) -> JoinHandle<()> {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if path == "/echo.E/Gone" {
                // Half a message, then the process "dies": the test drops the socket.
                return Err::<Response<Out>, _>(std::io::Error::other("gone"));
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = Frames(
                [
                    Frame::data(body.slice(..body.len() / 2)),
                    Frame::data(body.slice(body.len() / 2..)),
                    Frame::trailers(trailers),
                ]
                .into(),
            );
            let mut resp = Response::new(frames.map_err(|n| match n {}).boxed());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            Ok(resp)
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc)
                .await;
        })
    }

    /// A body of ready frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    struct Running {
        client: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        seen: Arc<Seen>,
        relay: JoinHandle<Result<(u64, u64), H2Error>>,
    }

    async fn start(kind: Kind, rules: Vec<ProxyRule>) -> Running {
        let (client, relay_client) = pair().await;
        let (relay_server, server) = pair().await;
        service(server);
        let table = Arc::new(Rules::new(1));
        let active = rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| Arc::new(Active::new(i, "grpc", r)))
            .collect();
        table.install(1, "api", "main", None, active);
        let seen = Arc::new(Seen::default());
        let protocol = if kind == Kind::Grpc { "grpc" } else { "http" };
        let relay = tokio::spawn(relay(
            edge(protocol),
            kind,
            table,
            seen.clone(),
            relay_client,
            relay_server,
        ));
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        Running {
            client: send,
            seen,
            relay,
        }
    }

    fn call(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::post(format!("http://api{path}"))
            .header(CONTENT_TYPE, "application/grpc")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    }

    fn rule(action: ProxyAction, key: &str, pattern: &str) -> ProxyRule {
        ProxyRule {
            action,
            matches: vec![(key.into(), pattern.into())],
            probability: 100.0,
            label: None,
        }
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("within 5 s")
    }

    /// A wake during a pass asks for another pass and does not schedule the task; a
    /// wake between polls schedules it; so does giving up after the last pass.
    #[test]
    fn wakes_during_a_pass_make_another_pass() {
        #[derive(Default)]
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let passes = Arc::new(Passes::default());
        let own = Waker::from(passes.clone());
        passes.enter(&task);
        own.wake_by_ref();
        own.wake_by_ref();
        assert!(!passes.done(), "woken during the pass: another pass");
        assert!(passes.done(), "nothing woke the second pass");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        own.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken between polls");
        passes.enter(&task);
        assert!(passes.yield_now::<()>().is_pending());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            2,
            "a yield schedules the task"
        );
        passes.enter(&task);
        assert!(passes.leave(Poll::Ready(())).is_ready());
        own.wake_by_ref();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            3,
            "after the end, wakes go through"
        );
    }

    /// Rules match the keys read in place exactly as they would the fields a fired
    /// rule reports.
    #[test]
    fn keys_read_in_place_are_the_fields() {
        let uris = [
            "http://api/echo.E/Say",
            "http://api/echo.E/Say?x=1",
            "/a/b?q=1#f",
            "http://api",
            "*",
        ];
        for kind in [Kind::Grpc, Kind::Http] {
            for method in [Method::POST, Method::GET] {
                for uri in uris {
                    let uri: Uri = uri.parse().unwrap();
                    let keys = Keys::of(kind, &method, &uri);
                    let fields = fields(kind, &method, &uri);
                    for key in ["method", "path", "query", "topic"] {
                        assert_eq!(
                            keys.field(key),
                            fields.get(key).map(String::as_str),
                            "{kind:?} {method} {uri} {key}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn bodies_and_trailers_pass_through() {
        let mut r = start(Kind::Grpc, Vec::new()).await;
        let resp = within(
            r.client
                .send_request(call("/echo.E/Say", b"\0\0\0\0\x02hi")),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        let got = within(resp.into_body().collect()).await.unwrap();
        assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&got.to_bytes()[..], b"\0\0\0\0\x02hi");
        assert!(r.seen.0.lock().unwrap().is_empty());
        drop(r.client);
        let (sent, received) = within(r.relay).await.unwrap().unwrap();
        assert!(sent > 24 && received > 0, "{sent} {received}");
    }

    #[tokio::test]
    async fn an_error_is_a_trailers_only_status() {
        let mut r = start(
            Kind::Grpc,
            vec![rule(
                ProxyAction::Error {
                    message: Some("down: 100%".into()),
                    status: Some(faultbox_protocols::Code::Text("unavailable".into())),
                },
                "method",
                "/echo.E/*",
            )],
        )
        .await;
        let resp = within(r.client.send_request(call("/echo.E/Say", b"\0\0\0\0\0")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "down: 100%25");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
        assert!(resp.body().is_end_stream(), "trailers-only: no body");
        let fired = r.seen.0.lock().unwrap().clone();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].action, "error");
        assert_eq!(fired[0].fields["method"], "/echo.E/Say");
        assert_eq!(fired[0].detail["status"], "14");
    }

    #[tokio::test]
    async fn a_response_is_one_message_and_status_ok() {
        let mut r = start(
            Kind::Grpc,
            vec![rule(
                ProxyAction::Response {
                    status: None,
                    body: Some("hex:0801".into()),
                    value: None,
                },
                "method",
                "/echo.E/Say",
            )],
        )
        .await;
        let resp = within(r.client.send_request(call("/echo.E/Say", b"\0\0\0\0\0")))
            .await
            .unwrap();
        let got = within(resp.into_body().collect()).await.unwrap();
        assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&got.to_bytes()[..], b"\0\0\0\0\x02\x08\x01");
    }

    #[tokio::test]
    async fn h2c_answers_are_http_statuses_and_delays_hold_one_stream() {
        let mut r = start(
            Kind::Http,
            vec![
                rule(
                    ProxyAction::Error {
                        message: None,
                        status: Some(faultbox_protocols::Code::Number(503)),
                    },
                    "path",
                    "/echo.E/Say",
                ),
                rule(
                    ProxyAction::Delay(Duration::from_millis(300)),
                    "method",
                    "post",
                ),
            ],
        )
        .await;
        let resp = within(r.client.send_request(call("/echo.E/Say?x=1", b"")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"Service Unavailable");
        let started = std::time::Instant::now();
        let resp = within(r.client.send_request(call("/echo.E/Other", b"\0\0\0\0\0")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let fired = r.seen.0.lock().unwrap().clone();
        assert_eq!(
            fired.iter().map(|f| f.action).collect::<Vec<_>>(),
            ["error", "delay"]
        );
        assert_eq!(fired[0].fields["path"], "/echo.E/Say");
        assert_eq!(fired[0].fields["method"], "POST");
    }

    #[tokio::test]
    async fn a_drop_resets_the_connection() {
        let mut r = start(Kind::Grpc, vec![rule(ProxyAction::Drop, "method", "*")]).await;
        let got = within(r.client.send_request(call("/echo.E/Say", b""))).await;
        assert!(got.is_err(), "the call fails with its connection");
        let end = within(r.relay).await.unwrap();
        assert!(matches!(end, Err(H2Error::Dropped)), "{end:?}");
    }

    #[tokio::test]
    async fn a_service_that_fails_a_stream_does_not_hang_the_client() {
        let mut r = start(Kind::Grpc, Vec::new()).await;
        let got = within(r.client.send_request(call("/echo.E/Gone", b"\0\0\0\0\0"))).await;
        // The service reset the stream (hyper turns its error into RST_STREAM); the
        // relay passes on what it got: a response or a reset, never a hang.
        if let Ok(resp) = got {
            let _ = within(resp.into_body().collect()).await;
        }
        // The connection still serves other calls.
        let resp = within(r.client.send_request(call("/echo.E/Say", b"ok")))
            .await
            .unwrap();
        let got = within(resp.into_body().collect()).await.unwrap();
        assert_eq!(&got.to_bytes()[..], b"ok");
    }

    #[tokio::test]
    async fn a_service_that_vanishes_ends_the_consumers_connection() {
        let (mut client, relay_client) = pair().await;
        let (relay_server, server) = pair().await;
        let relay = tokio::spawn(relay(
            edge("grpc"),
            Kind::Grpc,
            Arc::new(Rules::new(1)),
            Arc::new(Seen::default()),
            relay_client,
            relay_server,
        ));
        client
            .write_all(faultbox_protocols::http2::PREFACE)
            .await
            .unwrap();
        // The service reads the relay's preface, then is gone without a word.
        let mut server = server;
        let mut buf = [0u8; 24];
        within(server.read_exact(&mut buf)).await.unwrap();
        drop(server);
        let end = within(relay).await.unwrap();
        assert!(end.is_err(), "{end:?}");
        // The consumer sees its connection end.
        let mut rest = Vec::new();
        let _ = within(client.read_to_end(&mut rest)).await;
    }

    /// Garbage after the preface: the relay ends the connection with an error (the
    /// connection's close event carries it), without a hang or a panic.
    async fn garbage_ends_the_connection(after: Vec<u8>, close: bool) {
        let (mut client, relay_client) = pair().await;
        let (relay_server, server) = pair().await;
        service(server);
        let relay = tokio::spawn(relay(
            edge("grpc"),
            Kind::Grpc,
            Arc::new(Rules::new(1)),
            Arc::new(Seen::default()),
            relay_client,
            relay_server,
        ));
        let mut bytes = faultbox_protocols::http2::PREFACE.to_vec();
        bytes.extend_from_slice(&after);
        let _ = client.write_all(&bytes).await;
        if close {
            let _ = client.shutdown().await;
        }
        // The relay answers or closes; reading to the end must finish either way.
        let mut sink = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut sink)).await;
        if !close {
            assert!(
                read.is_ok(),
                "the relay closed a connection it could not read"
            );
        }
        drop(client);
        let end = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ends")
            .expect("no panic");
        let _ = end;
    }

    #[tokio::test]
    async fn a_frame_that_is_not_settings_first_closes_the_connection() {
        // A DATA frame on stream 1 before any SETTINGS: a protocol error.
        garbage_ends_the_connection(b"\x00\x00\x03\x00\x01\x00\x00\x00\x01abc".to_vec(), false)
            .await;
        // A truncated frame header, then the client leaves.
        garbage_ends_the_connection(b"\x00\x00\x10\x04".to_vec(), true).await;
    }

    /// Through the production [`crate::network::relay::Relays`]: a `grpc` edge and
    /// an `http` edge, the latter taking h2c and HTTP/1 alike; garbage after the
    /// preface closes with an error in the connection's close report.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_pick_http2_by_the_preface_and_report_a_bad_connection() {
        use crate::network::namespace::NetNs;
        use crate::network::relay::{Relays, Report};
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        // Serves HTTP/2 and HTTP/1 alike (hyper's auto builder is not built here:
        // the service peeks the preface as the relay does).
        tokio::spawn(async move {
            loop {
                let (s, _) = upstream.accept().await.unwrap();
                if starts_with_preface(&s).await.unwrap() {
                    service(s);
                } else {
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"h1"))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            }
        });
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let sink = reports.clone();
        let relays = Relays::new(
            tokio::runtime::Handle::current(),
            Arc::new(move |r| sink.lock().unwrap().push(r)),
            Arc::new(Rules::new(1)),
        );
        let here = Arc::new(NetNs::current().unwrap());
        let mut at = Vec::new();
        for protocol in ["grpc", "http"] {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen = free.local_addr().unwrap();
            drop(free);
            let mut e = edge(protocol);
            e.service = protocol.into();
            e.port.port = port;
            e.listen = vec![listen];
            relays.open(e, &here, here.clone()).unwrap();
            at.push(listen);
        }
        let h2_call = |addr: std::net::SocketAddr| async move {
            let s = TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let resp = within(send.send_request(call("/echo.E/Say", b"h2")))
                .await
                .unwrap();
            within(resp.into_body().collect()).await.unwrap().to_bytes()
        };
        assert_eq!(&h2_call(at[0]).await[..], b"h2");
        assert_eq!(&h2_call(at[1]).await[..], b"h2");
        // HTTP/1 on the http edge stays on its framer.
        let mut h1 = TcpStream::connect(at[1]).await.unwrap();
        h1.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        within(h1.read_to_end(&mut got)).await.unwrap();
        assert!(got.ends_with(b"h1"), "{}", String::from_utf8_lossy(&got));
        // Garbage after the preface on the grpc edge: closed, with the reason.
        let mut bad = TcpStream::connect(at[0]).await.unwrap();
        bad.write_all(faultbox_protocols::http2::PREFACE)
            .await
            .unwrap();
        bad.write_all(b"\x00\x00\x03\x00\x01\x00\x00\x00\x01abc")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = within(bad.read_to_end(&mut rest)).await;
        let closed_with_error = || {
            reports.lock().unwrap().iter().any(|r| {
                matches!(r, Report::Close { service, error: Some(e), .. }
                    if service == "grpc" && e.contains("HTTP/2"))
            })
        };
        for _ in 0..100 {
            if closed_with_error() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed_with_error(), "{:?}", reports.lock().unwrap());
        assert!(
            !reports
                .lock()
                .unwrap()
                .iter()
                .any(|r| matches!(r, Report::Opaque { .. })),
            "{:?}",
            reports.lock().unwrap()
        );
        relays.stop();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn any_bytes_after_the_preface_end_cleanly(
            after in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            // The client half-closes after its bytes: whatever they were, the relay
            // must end (bytes that are valid HTTP/2 may keep an open connection idle).
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(garbage_ends_the_connection(after, true));
        }
    }
}
