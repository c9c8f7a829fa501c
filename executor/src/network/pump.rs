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
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use faultbox_protocols::{Answer, Conversation, Fields, Request};
use faultbox_spec::world::ProxyAction;

use super::plan::Edge;
use super::rules::{Active, Rules};

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
    });
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let on_sent = f.on_sent.take();
    let up = upstream(&f, on_sent, &shared, client_r, server_w);
    let down = downstream(&shared, server_r, client_w);
    // On a drop, dropping the halves closes both sides; the client sees a reset, for
    // upstream set a zero linger before it gave up.
    tokio::try_join!(up, down)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Client to server: frames requests, lets rules act on whole ones.
async fn upstream(
    f: &Framed,
    on_sent: Option<Box<dyn Fn(u64) + Send + Sync>>,
    shared: &Shared,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; CHUNK];
    let mut held: Vec<u8> = Vec::new();
    // Bytes of the current, incomplete request already forwarded (it arrived while
    // no rule applied): it can no longer be acted on.
    let mut forwarded_part = 0usize;
    let mut sent = 0u64;
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
        let found = {
            let mut conv = lock(&shared.conv);
            match conv.as_mut().map(|c| c.client(chunk)) {
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
        held.extend_from_slice(chunk);
        let rules = if f.requests {
            f.rules.for_edge(edge.0, edge.1, edge.2)
        } else {
            Vec::new()
        };
        for req in requests {
            let already = std::mem::take(&mut forwarded_part);
            let own = req.len.saturating_sub(already).min(held.len());
            let bytes: Vec<u8> = held.drain(..own).collect();
            let rule = (already == 0 && req.matchable && !rules.is_empty())
                .then(|| f.rules.decide(edge, &rules, &req.fields))
                .flatten();
            match rule {
                None => {
                    lock(&shared.order).push_server(req.replies);
                    write(&mut server, &bytes, &mut sent, &on_sent).await?;
                }
                Some(rule) => {
                    act(
                        f,
                        shared,
                        &rule,
                        &req,
                        &bytes,
                        &mut server,
                        &mut client,
                        &mut sent,
                        &on_sent,
                    )
                    .await?
                }
            }
        }
        // A request in progress is held only while rules might act on it.
        if !held.is_empty() && rules.is_empty() {
            forwarded_part += held.len();
            let h = std::mem::take(&mut held);
            write(&mut server, &h, &mut sent, &on_sent).await?;
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
            tokio::time::sleep(*d).await;
            lock(&shared.order).push_server(req.replies);
            Ok(write(server, bytes, sent, on_sent).await?)
        }
        ProxyAction::Drop => {
            fire("drop", detail);
            let _ = client.as_ref().set_zero_linger();
            Err(PumpError::Dropped)
        }
        ProxyAction::Duplicate => {
            fire("duplicate", detail);
            lock(&shared.order).push_server(req.replies * 2);
            write(server, bytes, sent, on_sent).await?;
            Ok(write(server, bytes, sent, on_sent).await?)
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
                let ends = {
                    let mut conv = lock(&shared.conv);
                    match conv.as_mut() {
                        None => Ok(Vec::new()),
                        Some(c) if waiting => c.server_ends(chunk),
                        Some(c) => c.server(chunk).map(|count| vec![n; count]),
                    }
                };
                let ends = match ends {
                    Ok(e) => e,
                    Err(opaque) => {
                        *lock(&shared.conv) = None;
                        let _ = opaque;
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
