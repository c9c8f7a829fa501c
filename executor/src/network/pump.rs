//! A relayed connection's two pumps, one per direction, running at once: neither
//! ever waits for the other, so no conversation can deadlock on the relay. Each
//! chunk also goes to the protocol's [`Conversation`], which finds message
//! boundaries on the side. While rules apply to the connection's edge, the client's
//! bytes are held until a request is whole, so a rule can act on it: forward it,
//! hold it for a delay, answer it in the server's place, close the connection, or
//! send it twice. Answers given in the server's place go to the client in request
//! order, between the server's own responses. Bytes the conversation cannot make
//! sense of make the connection opaque: it is relayed untouched from there on, and
//! reported once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use faultbox_protocols::{Answer, Conversation, FieldView, Fields, Interest, Message, Request};
use faultbox_spec::world::ProxyAction;

use super::plan::Edge;
use super::rules::{Active, EdgeRules, Rules};

/// Bytes read at a time from either side.
const CHUNK: usize = 64 * 1024;

/// What a rule did, for the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// `response`, `error`, `delay`, `drop`, `duplicate`.
    pub action: &'static str,
    /// The request's match fields, as the client sent them.
    pub fields: BTreeMap<String, String>,
    /// What was injected: `status`, `error`, `delay_ms`, `value`.
    pub detail: BTreeMap<String, String>,
    pub label: Option<String>,
    /// The rule's id, for its hit count.
    pub rule: usize,
}

/// What a connection's pumps tell the relay.
pub trait Events: Send + Sync {
    fn fired(&self, fired: Fired);
    /// The connection stopped making sense as the protocol: relayed untouched now.
    fn opaque(&self, reason: String);
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("dropped by a rule")]
    Dropped,
}

/// What the client is owed, in request order.
#[derive(Debug)]
enum Owed {
    /// Responses the server still has to send for a forwarded request.
    Server(usize),
    /// An answer given in the server's place, written when its turn comes.
    Answer(Vec<u8>),
}

#[derive(Default)]
struct Order {
    owed: VecDeque<Owed>,
    /// Responses that completed before their request was recorded (a server that
    /// answers before the request is whole).
    credit: usize,
}

impl Order {
    fn push_server(&mut self, mut n: usize) {
        let used = n.min(self.credit);
        self.credit -= used;
        n -= used;
        if n > 0 {
            self.owed.push_back(Owed::Server(n));
        }
    }

    /// One response of the server is complete.
    fn complete(&mut self) {
        match self
            .owed
            .iter_mut()
            .find(|o| matches!(o, Owed::Server(n) if *n > 0))
        {
            Some(Owed::Server(n)) => *n -= 1,
            _ => self.credit += 1,
        }
    }

    /// The next thing to write to the client that is ready: an answer whose turn
    /// came. Finished entries before it are dropped.
    fn ready(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.owed.front() {
                Some(Owed::Server(0)) => {
                    self.owed.pop_front();
                }
                Some(Owed::Answer(_)) => match self.owed.pop_front() {
                    Some(Owed::Answer(b)) => return Some(b),
                    _ => unreachable!("front was an answer"),
                },
                _ => return None,
            }
        }
    }

    /// Whether an answer waits behind responses still owed by the server.
    fn answer_waiting(&self) -> bool {
        self.owed.iter().any(|o| matches!(o, Owed::Answer(_)))
    }
}

/// State the two directions share.
struct Shared {
    /// `None` once the connection is opaque.
    conv: Mutex<Option<Box<dyn Conversation>>>,
    order: Mutex<Order>,
    wake: Notify,
    /// Requests sent twice whose second answer the conversation may swallow: while
    /// any is outstanding, the server's messages are held until whole, so a
    /// swallowed one is never half written.
    duplicated: AtomicUsize,
}

/// Everything the pumps of one connection need.
pub struct Framed {
    pub edge: Edge,
    /// Whether rules act on requests (a protocol with match keys); a protocol
    /// without takes its rules per connection, and nothing is ever held.
    pub requests: bool,
    pub rules: Arc<Rules>,
    pub events: Arc<dyn Events>,
    /// Told the running total of bytes written to the server, after each write.
    pub on_sent: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

/// Pumps both directions until both are done; returns the bytes sent each way.
pub async fn framed(
    mut f: Framed,
    conv: Box<dyn Conversation>,
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
) -> Result<(u64, u64), PumpError> {
    let shared = Arc::new(Shared {
        conv: Mutex::new(Some(conv)),
        order: Mutex::new(Order::default()),
        wake: Notify::new(),
        duplicated: AtomicUsize::new(0),
    });
    let frames_server = lock(&shared.conv)
        .as_ref()
        .is_some_and(|c| c.frames_server());
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let on_sent = f.on_sent.take();
    let up = upstream(&f, on_sent, &shared, client_r, server_w);
    let down = async {
        if frames_server {
            messages(&f, &shared, server_r, client_w).await
        } else {
            downstream(&f, &shared, server_r, client_w).await
        }
    };
    // On a drop, dropping the halves closes both sides; the client sees a reset, for
    // upstream set a zero linger before it gave up.
    tokio::try_join!(up, down)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The rules that may act on one direction of a connection, and what its
/// conversation is told of them ([`Conversation::interest`]): rebuilt only when the
/// rules change, so a chunk pays a comparison of a few pointers.
#[derive(Default)]
struct Acting {
    rules: Vec<Arc<Active>>,
    interest: Option<Interest>,
}

impl Acting {
    fn update<'r>(&mut self, now: impl Iterator<Item = &'r Arc<Active>> + Clone) {
        let same = now.clone().count() == self.rules.len()
            && now.clone().zip(&self.rules).all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return;
        }
        self.rules = now.cloned().collect();
        self.interest = (!self.rules.is_empty()).then(|| {
            let rules = self.rules.clone();
            Arc::new(move |fields: &dyn FieldView| rules.iter().any(|r| r.matches(fields)))
                as Interest
        });
    }
}

/// Client to server: frames requests, lets rules act on whole ones. Bytes go to
/// the server straight from the chunk read when nothing holds them, and the
/// requests of one chunk that no rule acts on go in one write.
async fn upstream(
    f: &Framed,
    on_sent: Option<Box<dyn Fn(u64) + Send + Sync>>,
    shared: &Shared,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; CHUNK];
    // The start of a request rules might act on, kept until it is whole.
    let mut held: Vec<u8> = Vec::new();
    // Bytes of the current, incomplete request already forwarded (it arrived while
    // no rule applied): it can no longer be acted on.
    let mut forwarded_part = 0usize;
    let mut sent = 0u64;
    let mut cache = EdgeRules::default();
    let mut acting = Acting::default();
    let edge = (
        f.edge.consumer.as_str(),
        f.edge.service.as_str(),
        f.edge.port.interface.as_str(),
    );
    loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            if !held.is_empty() {
                write(&mut server, &held, &mut sent, &on_sent).await?;
            }
            let _ = server.shutdown().await;
            return Ok(sent);
        }
        let chunk = &buf[..n];
        let rules: &[Arc<Active>] = if f.requests {
            f.rules.for_edge_cached(edge.0, edge.1, edge.2, &mut cache)
        } else {
            &[]
        };
        acting.update(rules.iter());
        let found = {
            let mut conv = lock(&shared.conv);
            match conv.as_mut().map(|c| {
                c.interest(acting.interest.as_ref());
                c.client(chunk)
            }) {
                None => None,
                Some(Ok(requests)) => Some(requests),
                Some(Err(opaque)) => {
                    *conv = None;
                    f.events.opaque(opaque.0);
                    shared.wake.notify_one();
                    None
                }
            }
        };
        let Some(requests) = found else {
            if !held.is_empty() {
                let h = std::mem::take(&mut held);
                write(&mut server, &h, &mut sent, &on_sent).await?;
            }
            write(&mut server, chunk, &mut sent, &on_sent).await?;
            continue;
        };
        // What was held, then this chunk; or the chunk alone.
        let joined = join(&mut held, chunk);
        let data: &[u8] = if joined.is_empty() { chunk } else { &joined };
        // data[..pos] is accounted for; data[run..pos] is to forward, not yet written.
        let mut pos = 0;
        let mut run = 0;
        for req in requests {
            let already = std::mem::take(&mut forwarded_part);
            let own = req.len.saturating_sub(already).min(data.len() - pos);
            let rule = (already == 0 && req.matchable && !rules.is_empty())
                .then(|| f.rules.decide(edge, rules, &req.fields))
                .flatten();
            match rule {
                None => lock(&shared.order).push_server(req.replies),
                Some(rule) => {
                    write(&mut server, &data[run..pos], &mut sent, &on_sent).await?;
                    let bytes = &data[pos..pos + own];
                    act(
                        f,
                        shared,
                        &rule,
                        &req,
                        bytes,
                        &mut server,
                        &mut client,
                        &mut sent,
                        &on_sent,
                    )
                    .await?;
                    run = pos + own;
                }
            }
            pos += own;
        }
        // A request in progress is held only while rules might act on it.
        if pos < data.len() && rules.is_empty() {
            forwarded_part += data.len() - pos;
            pos = data.len();
        }
        write(&mut server, &data[run..pos], &mut sent, &on_sent).await?;
        if pos < data.len() {
            held = rest(joined, chunk, pos);
        }
    }
}

/// Carries out `rule` on `req` (whose bytes are `bytes`).
#[allow(clippy::too_many_arguments)]
async fn act(
    f: &Framed,
    shared: &Shared,
    rule: &Active,
    req: &Request,
    bytes: &[u8],
    server: &mut OwnedWriteHalf,
    client: &mut OwnedReadHalf,
    sent: &mut u64,
    on_sent: &Option<Box<dyn Fn(u64) + Send + Sync>>,
) -> Result<(), PumpError> {
    let mut detail = BTreeMap::new();
    let fire = |action: &'static str, detail: BTreeMap<String, String>| {
        f.events.fired(Fired {
            action,
            fields: fields(&req.fields),
            detail,
            label: rule.rule.label.clone(),
            rule: rule.id,
        })
    };
    match &rule.rule.action {
        ProxyAction::Delay(d) => {
            detail.insert("delay_ms".into(), d.as_millis().to_string());
            fire("delay", detail);
            // Held on purpose: whoever waits for these bytes to be on their way
            // (parallel() branches) goes on now.
            if let Some(f) = on_sent {
                f(*sent + bytes.len() as u64);
            }
            crate::engine::timer::sleep(*d).await;
            lock(&shared.order).push_server(req.replies);
            Ok(write(server, bytes, sent, on_sent).await?)
        }
        ProxyAction::Drop => {
            let instead = lock(&shared.conv)
                .as_mut()
                .and_then(|c| c.drop_request(req));
            fire("drop", detail);
            match instead {
                // Only the message is lost; the client gets what the protocol
                // answers in its place, in its turn.
                Some(reply) => {
                    lock(&shared.order)
                        .owed
                        .push_back(Owed::Answer(reply.bytes));
                    shared.wake.notify_one();
                    Ok(())
                }
                None => {
                    let _ = client.as_ref().set_zero_linger();
                    Err(PumpError::Dropped)
                }
            }
        }
        ProxyAction::Duplicate => {
            let twice = lock(&shared.conv)
                .as_mut()
                .map(|c| c.duplicate_request(req, bytes))
                .unwrap_or_else(|| Err("the connection stopped making sense".into()));
            match twice {
                Ok(twice) => {
                    fire("duplicate", detail);
                    if req.replies > 0 {
                        shared.duplicated.fetch_add(1, Ordering::SeqCst);
                    }
                    lock(&shared.order).push_server(req.replies * 2);
                    Ok(write(server, &twice, sent, on_sent).await?)
                }
                Err(why) => {
                    detail.insert("refused".into(), why);
                    fire("duplicate", detail);
                    lock(&shared.order).push_server(req.replies);
                    Ok(write(server, bytes, sent, on_sent).await?)
                }
            }
        }
        ProxyAction::Response { .. } | ProxyAction::Error { .. } => {
            let (name, answer) = match &rule.rule.action {
                ProxyAction::Response {
                    status,
                    body,
                    value,
                } => {
                    detail.extend(status.map(|s| ("status".to_string(), s.to_string())));
                    detail.extend(value.clone().map(|v| ("value".to_string(), v)));
                    (
                        "response",
                        Answer::Response {
                            status: *status,
                            body: body.clone(),
                            value: value.clone(),
                        },
                    )
                }
                ProxyAction::Error { message, status } => {
                    detail.extend(
                        status
                            .as_ref()
                            .map(|s| ("status".to_string(), s.to_string())),
                    );
                    detail.extend(message.clone().map(|m| ("error".to_string(), m)));
                    (
                        "error",
                        Answer::Error {
                            message: message.clone(),
                            status: status.clone(),
                        },
                    )
                }
                _ => unreachable!("matched above"),
            };
            let reply = lock(&shared.conv)
                .as_mut()
                .map(|c| c.answer(req, &answer))
                .unwrap_or_else(|| Err("the connection stopped making sense".into()));
            match reply {
                Ok(reply) => {
                    fire(name, detail);
                    lock(&shared.order)
                        .owed
                        .push_back(Owed::Answer(reply.bytes));
                    shared.wake.notify_one();
                    Ok(())
                }
                Err(why) => {
                    // Cannot be answered here: the request goes through, and the
                    // trace says why the rule did not act.
                    detail.insert("refused".into(), why);
                    fire(name, detail);
                    lock(&shared.order).push_server(req.replies);
                    Ok(write(server, bytes, sent, on_sent).await?)
                }
            }
        }
    }
}

/// Server to client: forwards at once, counts responses, and writes answers given
/// in the server's place when their turn comes.
async fn downstream(
    f: &Framed,
    shared: &Shared,
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        flush(shared, &mut client, &mut received).await?;
        tokio::select! {
            read = server.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    flush(shared, &mut client, &mut received).await?;
                    let _ = client.shutdown().await;
                    return Ok(received);
                }
                let chunk = &buf[..n];
                let waiting = lock(&shared.order).answer_waiting();
                if !waiting {
                    // Nothing to place between responses: the chunk goes out whole,
                    // then the responses it completed are counted.
                    let done = {
                        let mut conv = lock(&shared.conv);
                        match conv.as_mut().map(|c| c.server(chunk)) {
                            None => 0,
                            Some(Ok(count)) => count,
                            Some(Err(opaque)) => {
                                // Once per connection: upstream may have given up first.
                                *conv = None;
                                f.events.opaque(opaque.0);
                                0
                            }
                        }
                    };
                    client.write_all(chunk).await?;
                    received += n as u64;
                    for _ in 0..done {
                        lock(&shared.order).complete();
                        flush(shared, &mut client, &mut received).await?;
                    }
                    continue;
                }
                let ends = {
                    let mut conv = lock(&shared.conv);
                    match conv.as_mut() {
                        None => Ok(Vec::new()),
                        Some(c) => c.server_ends(chunk),
                    }
                };
                let ends = match ends {
                    Ok(e) => e,
                    Err(opaque) => {
                        // Once per connection: upstream may have given up first.
                        if lock(&shared.conv).take().is_some() {
                            f.events.opaque(opaque.0);
                        }
                        Vec::new()
                    }
                };
                // Write up to each response's end, then whatever answer's turn came.
                let mut from = 0;
                for end in ends {
                    if end > from {
                        client.write_all(&chunk[from..end]).await?;
                        received += (end - from) as u64;
                        from = end;
                    }
                    lock(&shared.order).complete();
                    flush(shared, &mut client, &mut received).await?;
                }
                if from < n {
                    client.write_all(&chunk[from..]).await?;
                    received += (n - from) as u64;
                }
            }
            _ = shared.wake.notified() => {}
        }
    }
}

/// Server to client for a conversation that frames the server's messages: each
/// whole message may be acted on by a rule (dropped, held, sent twice, replaced by
/// an error) or swallowed by the conversation. While no rule applies and nothing is
/// to be swallowed, bytes go out as they come.
async fn messages(
    f: &Framed,
    shared: &Shared,
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut held: Vec<u8> = Vec::new();
    let mut forwarded_part = 0usize;
    let mut cache = EdgeRules::default();
    let mut scoped = Acting::default();
    let edge = (
        f.edge.consumer.as_str(),
        f.edge.service.as_str(),
        f.edge.port.interface.as_str(),
    );
    loop {
        // Answers go out between messages, never inside one written in part (a
        // message begun while nothing held it).
        if forwarded_part == 0 {
            flush(shared, &mut client, &mut received).await?;
        }
        let n = tokio::select! {
            read = server.read(&mut buf) => read?,
            _ = shared.wake.notified() => continue,
        };
        if n == 0 {
            if !held.is_empty() {
                send(&mut client, &held, &mut received).await?;
            }
            flush(shared, &mut client, &mut received).await?;
            let _ = client.shutdown().await;
            return Ok(received);
        }
        let chunk = &buf[..n];
        // Only rules installed for this consumer act on what it is sent.
        if f.requests {
            let rules = f.rules.for_edge_cached(edge.0, edge.1, edge.2, &mut cache);
            scoped.update(rules.iter().filter(|r| r.scoped));
        }
        let found = {
            let mut conv = lock(&shared.conv);
            match conv.as_mut().map(|c| {
                c.interest(scoped.interest.as_ref());
                c.server_messages(chunk)
            }) {
                None => None,
                Some(Ok(found)) => Some(found),
                Some(Err(opaque)) => {
                    *conv = None;
                    f.events.opaque(opaque.0);
                    None
                }
            }
        };
        let Some(found) = found else {
            forwarded_part = 0;
            let h = std::mem::take(&mut held);
            send(&mut client, &h, &mut received).await?;
            send(&mut client, chunk, &mut received).await?;
            continue;
        };
        let joined = join(&mut held, chunk);
        let data: &[u8] = if joined.is_empty() { chunk } else { &joined };
        // data[..pos] is accounted for; data[run..pos] is to write, not yet written.
        let mut pos = 0;
        let mut run = 0;
        for m in found {
            let already = std::mem::take(&mut forwarded_part);
            let own = m.len.saturating_sub(already).min(data.len() - pos);
            let bytes = &data[pos..pos + own];
            if !m.forward {
                send(&mut client, &data[run..pos], &mut received).await?;
                if already == 0 {
                    // Swallowed whole; a swallowed message begun before a duplicate
                    // was known went out in part and cannot be taken back.
                    shared
                        .duplicated
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                            Some(d.saturating_sub(1))
                        })
                        .ok();
                } else {
                    send(&mut client, bytes, &mut received).await?;
                }
                run = pos + own;
            } else if let Some(rule) = (already == 0 && m.matchable && !scoped.rules.is_empty())
                .then(|| f.rules.decide(edge, &scoped.rules, &m.fields))
                .flatten()
            {
                send(&mut client, &data[run..pos], &mut received).await?;
                let instead = act_on_message(f, shared, &rule, &m, bytes).await;
                send(&mut client, &instead, &mut received).await?;
                run = pos + own;
            }
            pos += own;
            if m.responses > 0 {
                // Answers given in the server's place go out right after the
                // response before them.
                let waiting = lock(&shared.order).answer_waiting();
                if waiting {
                    send(&mut client, &data[run..pos], &mut received).await?;
                    run = pos;
                }
                for _ in 0..m.responses {
                    lock(&shared.order).complete();
                    if waiting {
                        flush(shared, &mut client, &mut received).await?;
                    }
                }
            }
        }
        // A message in progress is held only while something may act on it.
        let hold = !scoped.rules.is_empty() || shared.duplicated.load(Ordering::SeqCst) > 0;
        if pos < data.len() && !hold {
            forwarded_part += data.len() - pos;
            pos = data.len();
        }
        send(&mut client, &data[run..pos], &mut received).await?;
        if pos < data.len() {
            held = rest(joined, chunk, pos);
        }
    }
}

/// Carries out `rule` on server message `m` (whose bytes are `bytes`); returns what
/// the client gets instead.
async fn act_on_message(
    f: &Framed,
    shared: &Shared,
    rule: &Active,
    m: &Message,
    bytes: &[u8],
) -> Vec<u8> {
    let mut detail = BTreeMap::new();
    detail.insert("direction".to_string(), "to_client".to_string());
    let fire = |action: &'static str, detail: BTreeMap<String, String>| {
        f.events.fired(Fired {
            action,
            fields: fields(&m.fields),
            detail,
            label: rule.rule.label.clone(),
            rule: rule.id,
        })
    };
    let (name, result) = match &rule.rule.action {
        ProxyAction::Delay(d) => {
            detail.insert("delay_ms".into(), d.as_millis().to_string());
            fire("delay", detail);
            crate::engine::timer::sleep(*d).await;
            return bytes.to_vec();
        }
        ProxyAction::Drop => (
            "drop",
            lock(&shared.conv)
                .as_mut()
                .map(|c| c.drop_message(m, bytes)),
        ),
        ProxyAction::Duplicate => (
            "duplicate",
            lock(&shared.conv)
                .as_mut()
                .map(|c| c.duplicate_message(m, bytes)),
        ),
        ProxyAction::Error { message, status } => {
            detail.extend(
                status
                    .as_ref()
                    .map(|s| ("status".to_string(), s.to_string())),
            );
            detail.extend(message.clone().map(|m| ("error".to_string(), m)));
            let answer = Answer::Error {
                message: message.clone(),
                status: status.clone(),
            };
            (
                "error",
                lock(&shared.conv)
                    .as_mut()
                    .map(|c| c.answer_message(m, bytes, &answer)),
            )
        }
        ProxyAction::Response { .. } => (
            "response",
            Some(Err(
                "a message from the server cannot be answered with a response".into(),
            )),
        ),
    };
    match result.unwrap_or_else(|| Err("the connection stopped making sense".into())) {
        Ok(instead) => {
            fire(name, detail);
            instead
        }
        Err(why) => {
            detail.insert("refused".into(), why);
            fire(name, detail);
            bytes.to_vec()
        }
    }
}

async fn send(
    client: &mut OwnedWriteHalf,
    bytes: &[u8],
    received: &mut u64,
) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    client.write_all(bytes).await?;
    *received += bytes.len() as u64;
    Ok(())
}

/// What was held, then `chunk`; empty (and nothing copied) when nothing was held,
/// in which case the caller reads `chunk` itself.
fn join(held: &mut Vec<u8>, chunk: &[u8]) -> Vec<u8> {
    let mut joined = std::mem::take(held);
    if !joined.is_empty() {
        joined.extend_from_slice(chunk);
    }
    joined
}

/// The bytes from `pos` on of what [`join`] gave (`chunk` when it gave nothing):
/// an unfinished message, held for the next read.
fn rest(mut joined: Vec<u8>, chunk: &[u8], pos: usize) -> Vec<u8> {
    if joined.is_empty() {
        chunk[pos..].to_vec()
    } else {
        joined.drain(..pos);
        joined
    }
}

/// Writes every answer whose turn has come.
async fn flush(
    shared: &Shared,
    client: &mut OwnedWriteHalf,
    received: &mut u64,
) -> std::io::Result<()> {
    loop {
        let next = lock(&shared.order).ready();
        match next {
            Some(bytes) => {
                client.write_all(&bytes).await?;
                *received += bytes.len() as u64;
            }
            None => return Ok(()),
        }
    }
}

async fn write(
    server: &mut OwnedWriteHalf,
    bytes: &[u8],
    sent: &mut u64,
    on_sent: &Option<Box<dyn Fn(u64) + Send + Sync>>,
) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    server.write_all(bytes).await?;
    *sent += bytes.len() as u64;
    if let Some(f) = on_sent {
        f(*sent);
    }
    Ok(())
}

fn fields(f: &Fields) -> BTreeMap<String, String> {
    f.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    //! The pumps between a real client socket and a real server socket on loopback:
    //! garbage, oversized messages, a peer that leaves mid-message, and answers among
    //! pipelined responses.
    use super::*;
    use crate::network::plan::Port;
    use faultbox_protocols::MAX_MESSAGE;
    use faultbox_spec::world::ProxyRule;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    #[derive(Default)]
    struct Seen {
        fired: Mutex<Vec<Fired>>,
        opaque: Mutex<Vec<String>>,
    }

    impl Events for Seen {
        fn fired(&self, fired: Fired) {
            lock(&self.fired).push(fired);
        }
        fn opaque(&self, reason: String) {
            lock(&self.opaque).push(reason);
        }
    }

    fn edge(protocol: &str) -> Edge {
        Edge {
            consumer: "app".into(),
            service: "db".into(),
            port: Port {
                interface: "main".into(),
                protocol: protocol.into(),
                port: 1,
            },
            listen: Vec::new(),
        }
    }

    /// Two connected pairs: (the client's end, the pump's client end) and (the pump's
    /// server end, the server's end).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        async fn pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (b, _) = l.accept().await.unwrap();
            (a, b)
        }
        (pair().await, pair().await)
    }

    /// Starts pumps for `protocol` with `rules` installed on the edge; returns the
    /// client's and the server's ends, what the pumps reported, and the pumps' task.
    async fn start(
        protocol: &str,
        rules: Vec<ProxyRule>,
    ) -> (
        TcpStream,
        TcpStream,
        Arc<Seen>,
        tokio::task::JoinHandle<Result<(u64, u64), PumpError>>,
    ) {
        let ((client, pump_client), (pump_server, server)) = pairs().await;
        let table = Arc::new(Rules::new(1));
        let active = rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| Arc::new(Active::new(i, "redis", r)))
            .collect();
        table.install(1, "db", "main", None, active);
        let seen = Arc::new(Seen::default());
        let p = faultbox_protocols::protocol(protocol).unwrap();
        let f = Framed {
            edge: edge(protocol),
            requests: !p.keys().is_empty(),
            rules: table,
            events: seen.clone(),
            on_sent: None,
        };
        let task = tokio::spawn(framed(f, p.conversation(), pump_client, pump_server));
        (client, server, seen, task)
    }

    fn error_rule(key: &str, pattern: &str, message: &str) -> ProxyRule {
        ProxyRule {
            action: ProxyAction::Error {
                message: Some(message.into()),
                status: None,
            },
            matches: vec![(key.into(), pattern.into())],
            probability: 100.0,
            label: None,
        }
    }

    async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("bytes within 5s")
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn garbage_is_relayed_unchanged_and_reported_once() {
        let (mut client, mut server, seen, task) =
            start("redis", vec![error_rule("command", "GET", "x")]).await;
        // Not RESP: a type byte no RESP message starts with.
        client.write_all(b"\x01\x02garbage\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut server, 11).await, b"\x01\x02garbage\r\n");
        server.write_all(b"whatever\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 9).await, b"whatever\n");
        // From here on nothing is parsed, so not even a GET is answered by the rule.
        client
            .write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_exactly(&mut server, 20).await,
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        let opaque = lock(&seen.opaque).clone();
        assert_eq!(opaque.len(), 1, "{opaque:?}");
        assert!(lock(&seen.fired).is_empty());
        drop((client, server));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the pumps end when both peers have gone")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_oversized_message_goes_opaque_not_into_memory() {
        let (mut client, mut server, seen, task) =
            start("redis", vec![error_rule("command", "SET", "x")]).await;
        let big = MAX_MESSAGE + 1;
        let head = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${big}\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'v'; 1 << 20];
            let mut left = big + 2;
            while left > 0 {
                let n = left.min(chunk.len());
                client.write_all(&chunk[..n]).await.unwrap();
                left -= n;
            }
            client
        });
        // Everything reaches the server, though the message was never whole in the
        // relay's hands.
        let mut got = 0usize;
        let total = head.len() + big + 2;
        let mut buf = vec![0; 1 << 16];
        while got < total {
            let n = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
                .await
                .expect("no stall")
                .unwrap();
            assert!(n > 0);
            got += n;
        }
        let client = writer.await.unwrap();
        assert_eq!(lock(&seen.opaque).len(), 1);
        drop((client, server));
        let _ = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the pumps end");
    }

    #[tokio::test]
    async fn a_client_leaving_mid_message_ends_the_connection() {
        let (mut client, mut server, _seen, task) =
            start("postgres", vec![error_rule("query", "INSERT*", "x")]).await;
        // The start of a Query message, then gone.
        client.write_all(b"Q\x00\x00\x01\x00INSERT").await.unwrap();
        drop(client);
        // The server sees the connection end without a hang.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the server's side closes")
            .unwrap_or(0);
        assert!(n <= 11, "at most the partial message: {n}");
        drop(server);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the pumps end")
            .unwrap()
            .ok();
    }

    #[tokio::test]
    async fn answers_take_their_place_among_pipelined_responses() {
        let (mut client, mut server, seen, task) =
            start("redis", vec![error_rule("key", "bad*", "ERR injected")]).await;
        let get = |k: &str| format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len());
        // Three pipelined requests; the middle one is answered by the rule.
        let batch = [get("a"), get("bad"), get("c")].concat();
        client.write_all(batch.as_bytes()).await.unwrap();
        let forwarded = [get("a"), get("c")].concat();
        assert_eq!(
            read_exactly(&mut server, forwarded.len()).await,
            forwarded.as_bytes()
        );
        // The server answers its two; the client gets three, in request order.
        server.write_all(b"$1\r\nA\r\n$1\r\nC\r\n").await.unwrap();
        let want = b"$1\r\nA\r\n-ERR injected\r\n$1\r\nC\r\n";
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        assert_eq!(lock(&seen.fired).len(), 1);
        assert_eq!(lock(&seen.fired)[0].fields["key"], "bad");
        drop((client, server));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the pumps end")
            .unwrap()
            .unwrap();
    }

    /// An AMQP frame.
    fn amqp_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 1];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        f
    }

    #[tokio::test]
    async fn an_answer_waits_for_a_message_written_in_part() {
        // An unscoped rule acts on publishes only, so a delivery is relayed as it
        // comes; the error answering a publish meanwhile must not land inside it.
        let (mut client, mut server, seen, task) =
            start("amqp", vec![error_rule("topic", "bad", "nope")]).await;
        let mut deliver = vec![0, 60, 0, 60, 1, b't'];
        deliver.extend_from_slice(&1u64.to_be_bytes());
        deliver.extend_from_slice(&[0, 0, 1, b'k']);
        let mut head = amqp_frame(1, &deliver);
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&10u64.to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        head.extend(amqp_frame(2, &header));
        let body = amqp_frame(3, b"0123456789");
        let (first, rest) = body.split_at(9);
        head.extend_from_slice(first);
        server.write_all(&head).await.unwrap();
        assert_eq!(read_exactly(&mut client, head.len()).await, head);
        let mut publish = b"AMQP\x00\x00\x09\x01".to_vec();
        publish.extend(amqp_frame(
            1,
            &[0, 60, 0, 40, 0, 0, 0, 3, b'b', b'a', b'd', 0],
        ));
        let mut empty = vec![0, 60, 0, 0];
        empty.extend_from_slice(&0u64.to_be_bytes());
        empty.extend_from_slice(&[0, 0]);
        publish.extend(amqp_frame(2, &empty));
        client.write_all(&publish).await.unwrap();
        // The protocol header reaches the broker; the publish does not.
        assert_eq!(read_exactly(&mut server, 8).await, &publish[..8]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.write_all(rest).await.unwrap();
        let close = faultbox_protocols::amqp::connection_close(541, "nope", (60, 40));
        let want = [rest, &close[..]].concat();
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        assert_eq!(lock(&seen.fired).len(), 1);
        drop((client, server));
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

#[cfg(test)]
mod fast_path_tests {
    //! The fast path: bytes no rule holds go straight through, in order, and a rule
    //! installed while a connection is open applies at its next message.
    use super::*;
    use crate::network::plan::Port;
    use faultbox_spec::world::ProxyRule;
    use tokio::net::{TcpListener, TcpStream};

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Events for Seen {
        fn fired(&self, fired: Fired) {
            lock(&self.0).push(format!("{} {:?}", fired.action, fired.fields));
        }
        fn opaque(&self, reason: String) {
            lock(&self.0).push(format!("opaque {reason}"));
        }
    }

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn edge() -> Edge {
        Edge {
            consumer: "api".into(),
            service: "cache".into(),
            port: Port {
                interface: "main".into(),
                protocol: "redis".into(),
                port: 6379,
            },
            listen: Vec::new(),
        }
    }

    fn error_on(key: &str) -> Vec<Arc<Active>> {
        vec![Arc::new(Active::new(
            1,
            "redis",
            ProxyRule {
                action: ProxyAction::Error {
                    message: Some("injected".into()),
                    status: None,
                },
                matches: vec![("key".into(), key.into())],
                probability: 100.0,
                label: None,
            },
        ))]
    }

    fn get(key: &str) -> String {
        format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())
    }

    /// A relay between a client socket and a server socket, returning both far ends
    /// (the client's and the server's) and what the pump reported.
    async fn relay(
        rules: Arc<Rules>,
    ) -> (
        TcpStream,
        TcpStream,
        Arc<Seen>,
        tokio::task::JoinHandle<Result<(u64, u64), PumpError>>,
    ) {
        let (client, relay_client) = pair().await;
        let (relay_server, server) = pair().await;
        let seen = Arc::new(Seen::default());
        let f = Framed {
            edge: edge(),
            requests: true,
            rules,
            events: seen.clone(),
            on_sent: None,
        };
        let conv = faultbox_protocols::protocol("redis")
            .unwrap()
            .conversation();
        let pump = tokio::spawn(framed(f, conv, relay_client, relay_server));
        (client, server, seen, pump)
    }

    async fn read_exactly(s: &mut TcpStream, n: usize) -> String {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).await.unwrap();
        String::from_utf8(b).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_around_an_answered_one_keep_their_order() {
        let rules = Arc::new(Rules::new(1));
        rules.install(1, "cache", "main", None, error_on("b"));
        let (mut client, mut server, seen, pump) = relay(rules).await;
        let sent = format!("{}{}{}", get("a"), get("b"), get("c"));
        client.write_all(sent.as_bytes()).await.unwrap();
        // The server sees a and c, never b.
        let want = format!("{}{}", get("a"), get("c"));
        assert_eq!(read_exactly(&mut server, want.len()).await, want);
        server.write_all(b"$1\r\nA\r\n$1\r\nC\r\n").await.unwrap();
        let answer = "$1\r\nA\r\n-ERR injected\r\n$1\r\nC\r\n";
        assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
        drop(client);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        drop(server);
        let (up, down) = pump.await.unwrap().unwrap();
        assert_eq!(up as usize, want.len());
        assert_eq!(down as usize, answer.len());
        assert_eq!(lock(&seen.0).len(), 1, "{:?}", lock(&seen.0));
    }

    #[tokio::test]
    async fn a_request_split_over_reads_is_held_while_a_rule_may_act() {
        let rules = Arc::new(Rules::new(1));
        rules.install(1, "cache", "main", None, error_on("b*"));
        let (mut client, mut server, _seen, _pump) = relay(rules).await;
        let whole = get("bb");
        let (head, tail) = whole.split_at(whole.len() - 5);
        client.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(tail.as_bytes()).await.unwrap();
        let answer = "-ERR injected\r\n";
        assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
        // Nothing reached the server; a request no rule takes goes through whole.
        client.write_all(get("x").as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut server, get("x").len()).await, get("x"));
    }

    #[tokio::test]
    async fn without_rules_a_partial_request_is_not_held() {
        let (mut client, mut server, seen, _pump) = relay(Arc::new(Rules::new(1))).await;
        let whole = get("key");
        let (head, tail) = whole.split_at(whole.len() - 4);
        client.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut server, head.len()).await, head);
        client.write_all(tail.as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut server, tail.len()).await, tail);
        server.write_all(b"$-1\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 5).await, "$-1\r\n");
        assert!(lock(&seen.0).is_empty());
    }

    #[tokio::test]
    async fn a_rule_installed_while_connected_acts_on_the_next_request() {
        let rules = Arc::new(Rules::new(1));
        let (mut client, mut server, _seen, _pump) = relay(rules.clone()).await;
        client.write_all(get("b").as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut server, get("b").len()).await, get("b"));
        server.write_all(b"$1\r\nB\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 7).await, "$1\r\nB\r\n");
        rules.install(7, "cache", "main", None, error_on("b"));
        client.write_all(get("b").as_bytes()).await.unwrap();
        let answer = "-ERR injected\r\n";
        assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
        assert!(rules.remove(7));
        client.write_all(get("b").as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut server, get("b").len()).await, get("b"));
    }
}

#[cfg(test)]
mod nats_tests {
    //! NATS through the pumps: every op is framed whether or not a rule is
    //! installed, so a rule installed mid-stream acts from the next message on and a
    //! message already on its way goes through whole; runs of messages no rule acts
    //! on leave answers where they belong. Scripted peers on loopback give exact cut
    //! points; a real nats-server gives load.
    use super::*;
    use crate::network::plan::Port;
    use faultbox_spec::world::ProxyRule;
    use std::time::Duration;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::{TcpListener, TcpStream};

    #[derive(Default)]
    struct Seen {
        fired: Mutex<Vec<Fired>>,
        opaque: Mutex<Vec<String>>,
    }

    impl Events for Seen {
        fn fired(&self, fired: Fired) {
            lock(&self.fired).push(fired);
        }
        fn opaque(&self, reason: String) {
            lock(&self.opaque).push(reason);
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn rule(action: ProxyAction, subject: &str) -> ProxyRule {
        ProxyRule {
            action,
            matches: vec![("subject".into(), subject.into())],
            probability: 100.0,
            label: None,
        }
    }

    fn error(subject: &str) -> ProxyRule {
        rule(
            ProxyAction::Error {
                message: Some("injected".into()),
                status: None,
            },
            subject,
        )
    }

    /// Installs `rule` on the queue's interface: for every consumer, or scoped to
    /// the pumps' consumer (then it acts on deliveries too).
    fn install(rules: &Rules, handle: u64, rule: ProxyRule, scoped: bool) {
        let active = Arc::new(Active::new(handle as usize, "nats", rule).scoped(scoped));
        let source = scoped.then_some("app");
        rules.install(handle, "queue", "main", source, vec![active]);
    }

    type Pumps = tokio::task::JoinHandle<Result<(u64, u64), PumpError>>;

    /// Pumps between `client` (the pumps' client end) and `server`.
    fn start(rules: Arc<Rules>, client: TcpStream, server: TcpStream) -> (Arc<Seen>, Pumps) {
        let seen = Arc::new(Seen::default());
        let f = Framed {
            edge: Edge {
                consumer: "app".into(),
                service: "queue".into(),
                port: Port {
                    interface: "main".into(),
                    protocol: "nats".into(),
                    port: 4222,
                },
                listen: Vec::new(),
            },
            requests: true,
            rules,
            events: seen.clone(),
            on_sent: None,
        };
        let conv = faultbox_protocols::protocol("nats").unwrap().conversation();
        (seen.clone(), tokio::spawn(framed(f, conv, client, server)))
    }

    /// A relay between two scripted peers: the client's end and the server's.
    async fn scripted(rules: Arc<Rules>) -> (TcpStream, TcpStream, Arc<Seen>, Pumps) {
        let (client, pump_client) = pair().await;
        let (pump_server, server) = pair().await;
        let (seen, task) = start(rules, pump_client, pump_server);
        (client, server, seen, task)
    }

    async fn read_exactly(s: &mut TcpStream, n: usize) -> String {
        let mut b = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("bytes within 5s")
            .unwrap();
        String::from_utf8(b).unwrap()
    }

    #[tokio::test]
    async fn a_rule_installed_mid_publish_acts_from_the_next_publish() {
        let rules = Arc::new(Rules::new(1));
        let (mut client, mut server, seen, _pump) = scripted(rules.clone()).await;
        // Half a publish goes through while no rule exists.
        client.write_all(b"PUB bad 5\r\nhe").await.unwrap();
        assert_eq!(read_exactly(&mut server, 13).await, "PUB bad 5\r\nhe");
        install(&rules, 1, error("bad"), false);
        client
            .write_all(b"llo\r\nPUB bad 1\r\nx\r\nPUB ok 1\r\ny\r\n")
            .await
            .unwrap();
        // The publish already on its way completes untouched; the next one on the
        // subject is answered in the server's place; the last goes through.
        let through = "llo\r\nPUB ok 1\r\ny\r\n";
        assert_eq!(read_exactly(&mut server, through.len()).await, through);
        let answer = "-ERR 'injected'\r\n";
        assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
        let fired = lock(&seen.fired).clone();
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].fields["subject"], "bad");
        assert!(lock(&seen.opaque).is_empty());
    }

    #[tokio::test]
    async fn an_answer_goes_between_the_pongs_of_deliveries_relayed_as_one_run() {
        let rules = Arc::new(Rules::new(1));
        install(&rules, 1, error("bad"), false);
        let (mut client, mut server, _seen, _pump) = scripted(rules).await;
        client
            .write_all(b"PING\r\nPUB bad 1\r\nx\r\nPING\r\n")
            .await
            .unwrap();
        assert_eq!(read_exactly(&mut server, 12).await, "PING\r\nPING\r\n");
        // No rule acts on deliveries (the rule is not scoped): the server's chunk is
        // framed as runs, yet the error answering the publish comes right after the
        // PONG of the PING before it.
        server
            .write_all(b"MSG a 1 1\r\nm\r\nPONG\r\nMSG a 1 1\r\nn\r\nPONG\r\n")
            .await
            .unwrap();
        let want = "MSG a 1 1\r\nm\r\nPONG\r\n-ERR 'injected'\r\nMSG a 1 1\r\nn\r\nPONG\r\n";
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
    }

    #[tokio::test]
    async fn a_scoped_rule_installed_mid_delivery_acts_from_the_next_delivery() {
        let rules = Arc::new(Rules::new(1));
        let (mut client, mut server, seen, _pump) = scripted(rules.clone()).await;
        server.write_all(b"MSG drop.me 1 5\r\nhe").await.unwrap();
        assert_eq!(read_exactly(&mut client, 19).await, "MSG drop.me 1 5\r\nhe");
        install(&rules, 1, rule(ProxyAction::Drop, "drop.*"), true);
        server
            .write_all(b"llo\r\nMSG drop.me 1 1\r\nx\r\nMSG keep 1 1\r\ny\r\n")
            .await
            .unwrap();
        let want = "llo\r\nMSG keep 1 1\r\ny\r\n";
        assert_eq!(read_exactly(&mut client, want.len()).await, want);
        let fired = lock(&seen.fired).clone();
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(
            (fired[0].action, fired[0].fields["subject"].as_str()),
            ("drop", "drop.me")
        );
    }

    /// A nats-server on a free loopback port, killed when dropped.
    struct NatsServer {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl NatsServer {
        async fn start() -> NatsServer {
            let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .expect("nats-server is not installed (scripts/servers.sh installs it)");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start nats-server");
            let mut server = NatsServer { child, port };
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("nats-server exited: {status}");
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = server.child.kill();
            panic!("nats-server did not listen on {port}");
        }

        /// A connection past INFO and CONNECT, PING answered.
        async fn connect(&self) -> tokio::io::BufReader<TcpStream> {
            let s = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
            greet(tokio::io::BufReader::new(s)).await
        }
    }

    async fn line(r: &mut tokio::io::BufReader<TcpStream>) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut l))
            .await
            .expect("a line within 10s")
            .unwrap();
        assert!(n > 0, "the connection closed");
        l
    }

    async fn pong(r: &mut tokio::io::BufReader<TcpStream>) {
        loop {
            let l = line(r).await;
            assert!(!l.starts_with("-ERR"), "{l}");
            if l == "PONG\r\n" {
                return;
            }
        }
    }

    async fn greet(mut r: tokio::io::BufReader<TcpStream>) -> tokio::io::BufReader<TcpStream> {
        assert!(line(&mut r).await.starts_with("INFO "));
        r.get_mut()
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":true}\r\nPING\r\n")
            .await
            .unwrap();
        pong(&mut r).await;
        r
    }

    /// A publish of message `i`, on one of seven subjects, its payload naming it.
    fn publish(i: usize) -> (String, Vec<u8>) {
        let subject = format!("s.{}", i % 7);
        let payload = format!("message {i} {}", "x".repeat(i % 23));
        let op = format!("PUB {subject} {}\r\n{payload}\r\n", payload.len());
        (subject, op.into_bytes())
    }

    #[tokio::test]
    async fn a_rule_installed_under_load_takes_the_next_messages_of_a_real_nats_server() {
        let nats = NatsServer::start().await;
        // The subscriber reads deliveries straight from the server.
        let mut sub = nats.connect().await;
        sub.get_mut()
            .write_all(b"SUB s.* 1\r\nSUB end 2\r\nPING\r\n")
            .await
            .unwrap();
        pong(&mut sub).await;
        let (tx, mut seen_count) = tokio::sync::watch::channel(0usize);
        let deliveries = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let l = line(&mut sub).await;
                if l == "PING\r\n" {
                    sub.get_mut().write_all(b"PONG\r\n").await.unwrap();
                    continue;
                }
                let parts: Vec<&str> = l.trim_end().split(' ').collect();
                assert_eq!(parts[0], "MSG", "{l}");
                let size: usize = parts[parts.len() - 1].parse().unwrap();
                let mut payload = vec![0u8; size + 2];
                sub.read_exact(&mut payload).await.unwrap();
                assert!(payload.ends_with(b"\r\n"));
                payload.truncate(size);
                if parts[1] == "end" {
                    return got;
                }
                got.push((parts[1].to_string(), String::from_utf8(payload).unwrap()));
                let _ = tx.send(got.len());
            }
        });
        // The publisher goes through the pumps.
        let rules = Arc::new(Rules::new(1));
        let (publisher, pump_client) = pair().await;
        let upstream = TcpStream::connect(("127.0.0.1", nats.port)).await.unwrap();
        let (seen, pump) = start(rules.clone(), pump_client, upstream);
        let mut publisher = greet(tokio::io::BufReader::new(publisher)).await;
        // Phase one: a stream written in pieces that cut ops anywhere, while the
        // rule (dropping s.3) is installed once deliveries are under way.
        let (first, second) = (20_000, 700);
        let stream: Vec<u8> = (0..first).flat_map(|i| publish(i).1).collect();
        let writer = {
            let mut w = publisher.into_inner();
            tokio::spawn(async move {
                for (i, piece) in stream.chunks(977).enumerate() {
                    w.write_all(piece).await.unwrap();
                    // Paced, so that the rule arrives while the stream flows.
                    if i % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                w.write_all(b"PING\r\n").await.unwrap();
                w
            })
        };
        seen_count.wait_for(|n| *n >= 1000).await.unwrap();
        install(&rules, 1, rule(ProxyAction::Drop, "s.3"), false);
        publisher = tokio::io::BufReader::new(writer.await.unwrap());
        pong(&mut publisher).await;
        // Phase two: after the rule, every s.3 message is dropped.
        let rest: Vec<u8> = (first..first + second)
            .flat_map(|i| publish(i).1)
            .chain(b"PUB end 0\r\n\r\nPING\r\n".iter().copied())
            .collect();
        publisher.get_mut().write_all(&rest).await.unwrap();
        pong(&mut publisher).await;
        let got = tokio::time::timeout(Duration::from_secs(20), deliveries)
            .await
            .expect("every delivery within 20s")
            .unwrap();
        // Whatever was not s.3 arrives whole and in order; of s.3, a prefix arrives
        // (what was published before the rule took effect), none of phase two.
        let published: Vec<(String, String)> = (0..first + second)
            .map(|i| {
                let (subject, op) = publish(i);
                let op = String::from_utf8(op).unwrap();
                let payload = op.split("\r\n").nth(1).unwrap().to_string();
                (subject, payload)
            })
            .collect();
        let others = |v: &[(String, String)]| -> Vec<(String, String)> {
            v.iter().filter(|(s, _)| s != "s.3").cloned().collect()
        };
        assert_eq!(others(&got), others(&published));
        let threes: Vec<_> = got.iter().filter(|(s, _)| s == "s.3").collect();
        let all_threes: Vec<_> = published.iter().filter(|(s, _)| s == "s.3").collect();
        assert!(!threes.is_empty(), "the rule came after deliveries began");
        assert_eq!(threes[..], all_threes[..threes.len()]);
        let phase_one = (0..first).filter(|i| i % 7 == 3).count();
        assert!(threes.len() <= phase_one, "no s.3 of phase two arrives");
        let fired = lock(&seen.fired).len();
        assert_eq!(
            fired,
            all_threes.len() - threes.len(),
            "one drop per s.3 lost"
        );
        assert!(lock(&seen.opaque).is_empty(), "{:?}", lock(&seen.opaque));
        drop(publisher);
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
    }
}
