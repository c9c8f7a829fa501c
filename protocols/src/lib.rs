//! Protocols Faultbox understands on the wire between services: for each, how to find
//! message boundaries in a byte stream without blocking it, what a request's match
//! keys are, and how to answer a request in the server's place (an error, a custom
//! response). No I/O and no Starlark here: the executor's relays feed bytes in and
//! act on what comes out; the spec crate checks rules against [`Protocol::keys`] and
//! [`Protocol::supports`]. The exception is [`client`]: the step clients and
//! readiness probes, whose I/O (and real drivers) come with the `client` feature.
//!
//! A relay pumps both directions at once and never waits on a framer: it hands each
//! chunk it reads to the connection's [`Conversation`] and gets back what completed.
//! Bytes the conversation cannot make sense of make it [`Opaque`]: the relay then
//! passes the connection through untouched and reports it once.
//!
//! [`rules`] matches request fields against rule patterns and checks rules at spec
//! load. Each protocol module's doc says what its requests and responses are, what
//! is matchable, how answers are encoded, and its limits. A conversation holds at
//! most about [`MAX_MESSAGE`] bytes of unfinished messages and [`MAX_PENDING`]
//! requests awaiting responses; bodies and rows are counted as they pass, never
//! held. A relay calls `answer()` for a request before it forwards any later one.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use common::MAX_PENDING;

pub mod amqp;
pub mod client;
mod common;
pub mod grpc;
pub mod http;
pub mod http2;
pub mod kafka;
pub mod memcached;
pub mod mongodb;
pub mod mysql;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod rules;
pub mod tcp;
#[cfg(test)]
mod testkit;

/// The largest message a conversation holds whole. A larger one makes the
/// connection opaque: it is relayed, never acted on.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Match keys of a request as the client sent them: `method`, `path`, `query`,
/// `command`, `key`, `topic`. A key a request does not have is absent.
pub type Fields = BTreeMap<&'static str, String>;

/// Match fields as a rule reads them, one key at a time: [`Fields`], or a view a
/// conversation borrows from the bytes it frames, so that finding no rule wants a
/// message copies nothing out of it.
pub trait FieldView {
    /// The value of `key`, if the message has it.
    fn field(&self, key: &str) -> Option<&str>;
}

impl FieldView for Fields {
    fn field(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Whether any rule may act on a message with these fields (see
/// [`Conversation::interest`]).
pub type Interest = Arc<dyn Fn(&dyn FieldView) -> bool + Send + Sync>;

/// A complete request found in the client's stream.
///
/// Told that rules may act on some messages only ([`Conversation::interest`]), a
/// conversation may report a run of consecutive requests none may act on as one:
/// not matchable, spanning them all, with their replies summed. A relay treats
/// them alike (it forwards them and expects their responses), and reading one
/// request per chunk instead of one per message is most of what relaying small
/// messages costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// How many bytes of the client's stream it spans, counted from the end of the
    /// previous request (or message the conversation reported).
    pub len: usize,
    /// What rules match on. Empty for messages no rule may act on (handshakes,
    /// authentication, session setup); those have `matchable == false`.
    pub fields: Fields,
    /// Whether rules may act on it.
    pub matchable: bool,
    /// How many responses the server sends for it, in order with the others: 1 for
    /// most requests, 0 for those that get none (memcached `noreply`).
    pub replies: usize,
}

/// The stream stopped making sense as the protocol (a TLS upgrade, a message larger
/// than [`MAX_MESSAGE`], bytes the protocol does not allow): from here on the
/// connection is relayed unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Opaque(pub String);

/// An error's code as a spec gives it (`error(status=)`): a number (HTTP status,
/// MySQL error number, gRPC code) or text (a PostgreSQL SQLSTATE such as `42P01`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    Number(i64),
    Text(String),
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::Number(n) => write!(f, "{n}"),
            Code::Text(t) => f.write_str(t),
        }
    }
}

/// What a rule answers in the server's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A protocol error: an HTTP status (default 500 for `error()`), a
    /// PostgreSQL/MySQL error with `message`, a Redis `-ERR`-style error, a
    /// memcached `SERVER_ERROR`.
    Error {
        message: Option<String>,
        status: Option<Code>,
    },
    /// A response that looks like success: an HTTP response with `status` (default
    /// 200) and `body`; a Redis bulk string `value` (nil when absent); a memcached
    /// `VALUE`/`END` or `STORED`.
    Response {
        status: Option<i64>,
        body: Option<String>,
        value: Option<String>,
    },
}

/// What a rule does at a request, as the spec names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActionKind {
    /// `response()`: answer in the server's place with a success.
    Response,
    /// `error()`: answer in the server's place with a protocol error.
    Error,
    /// `delay()`: hold the request, then forward it.
    Delay,
    /// `drop()`: close the connection (a TCP reset).
    Drop,
    /// `duplicate()`: forward the message twice.
    Duplicate,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Response => "response",
            ActionKind::Error => "error",
            ActionKind::Delay => "delay",
            ActionKind::Drop => "drop",
            ActionKind::Duplicate => "duplicate",
        }
    }
}

/// The bytes to send the client in the server's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Written to the client when every earlier request's responses have been.
    pub bytes: Vec<u8>,
}

/// A complete message in the server's stream, for a conversation that frames that
/// side ([`Conversation::frames_server`]): messaging protocols deliver messages the
/// client never asked for one by one (NATS `MSG`, AMQP deliveries), and rules act on
/// them as they act on requests.
///
/// As with requests, a run of messages no rule may act on may be reported as one
/// (not matchable, its responses summed); such a run never holds a message the
/// conversation swallows, and ends at the first message that completes a
/// response, so an answer given in the server's place still goes out right after
/// the response before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// How many bytes of the server's stream it spans, counted from the end of the
    /// previous message.
    pub len: usize,
    /// What rules match on (the subject or topic of a delivery).
    pub fields: Fields,
    /// Whether rules may act on it.
    pub matchable: bool,
    /// How many responses to the client's requests it completes (0 for a message
    /// the server sends unasked).
    pub responses: usize,
    /// `false`: the conversation swallows it (the server's answer to the second copy
    /// of a duplicated request, which the client never sent); it is never written
    /// to the client but still counts its `responses`.
    pub forward: bool,
}

/// One connection's view of a protocol: both directions, in order.
///
/// The methods with defaults are for protocols that carry messages rather than
/// strict request/response turns: framing the server's side, and acting on one
/// message without closing the connection. The defaults are what a turn-taking
/// protocol needs.
pub trait Conversation: Send {
    /// The client sent `bytes` (the next chunk of its stream). Returns the messages
    /// completed by them, in order; partial data is kept for the next call.
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque>;

    /// The server sent `bytes`. Returns how many responses they completed (a
    /// response counts once it is whole; one request's response may span calls).
    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque>;

    /// Like [`Conversation::server`], but says where in `bytes` each completed
    /// response ends (offsets just past its last byte), so a relay holding an
    /// answer for a later request can write it exactly between two responses that
    /// arrived in one chunk. This default feeds the bytes one at a time: meant for
    /// the moments an answer waits, not for every chunk.
    fn server_ends(&mut self, bytes: &[u8]) -> Result<Vec<usize>, Opaque> {
        let mut ends = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            for _ in 0..self.server(std::slice::from_ref(b))? {
                ends.push(i + 1);
            }
        }
        Ok(ends)
    }

    /// The bytes that answer `request` (one [`Conversation::client`] returned, and
    /// that will not be forwarded) with `answer`, as the server would have: framed,
    /// with whatever state the protocol needs kept consistent (sequence numbers,
    /// transaction status, a statement's later messages). `Err` names why this
    /// protocol cannot give that answer to that request.
    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String>;

    /// Which messages of the next calls rules may act on: those `interest` accepts,
    /// given their fields; none when `None`. A conversation may leave match fields
    /// out of the others (they cost allocations per message and nobody reads them)
    /// and report runs of them as one request or message. Until called, every
    /// message gets its fields. A hint: fields may always be given.
    fn interest(&mut self, interest: Option<&Interest>) {
        let _ = interest;
    }

    /// Whether the server's bytes go through [`Conversation::server_messages`]
    /// (messages rules may act on, or the conversation may swallow) instead of
    /// [`Conversation::server`].
    fn frames_server(&self) -> bool {
        false
    }

    /// The server sent `bytes`: the messages they completed, in order; partial data
    /// is kept for the next call. Called only when [`Conversation::frames_server`].
    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        let _ = bytes;
        Err(Opaque(
            "this protocol does not frame the server's messages".into(),
        ))
    }

    /// A rule drops `request`. `None`: the connection is closed (the client sees a
    /// reset). `Some(reply)`: only the message is lost: it is not forwarded, and
    /// `reply` (possibly empty) goes to the client in its place, in request order.
    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        let _ = request;
        None
    }

    /// A rule duplicates `request`, whose bytes are `bytes`: what to send the server
    /// instead. The relay then expects twice the request's responses; a
    /// conversation that hides the second from the client marks it `forward: false`.
    /// `Err` says why it cannot be duplicated: it is forwarded once.
    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let _ = request;
        Ok([bytes, bytes].concat())
    }

    /// A rule drops server message `message` (whose bytes are `bytes`): what the
    /// client gets instead. By default, nothing: it vanishes.
    fn drop_message(&mut self, message: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let _ = (message, bytes);
        Ok(Vec::new())
    }

    /// A rule duplicates server message `message`: what the client gets instead. By
    /// default, the message twice.
    fn duplicate_message(&mut self, message: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let _ = message;
        Ok([bytes, bytes].concat())
    }

    /// A rule answers server message `message` with `answer` (an error the client
    /// sees in its place). `Err` says why this protocol cannot: it is forwarded.
    fn answer_message(
        &mut self,
        message: &Message,
        bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        let _ = (message, bytes, answer);
        Err("this protocol cannot answer a message from the server".into())
    }
}

/// A protocol: its name in `interface(name, PROTOCOL, port)`, its match keys and
/// actions (the spec reference's table), and a conversation per connection.
pub trait Protocol: Send + Sync {
    fn name(&self) -> &'static str;
    /// The keys rules may match requests on.
    fn keys(&self) -> &'static [&'static str];
    /// Whether rules may take `action` on this protocol.
    fn supports(&self, action: ActionKind) -> bool;
    /// A fresh conversation, for a new connection.
    fn conversation(&self) -> Box<dyn Conversation>;
}

/// The protocol called `name`, if Faultbox knows it.
pub fn protocol(name: &str) -> Option<&'static dyn Protocol> {
    let all: [&'static dyn Protocol; 11] = [
        &http::Http,
        &tcp::Tcp,
        &postgres::Postgres,
        &mysql::Mysql,
        &redis::Redis,
        &memcached::Memcached,
        &amqp::Amqp,
        &nats::Nats,
        &mongodb::Mongodb,
        &grpc::Grpc,
        &kafka::Kafka,
    ];
    all.into_iter().find(|p| p.name() == name)
}
