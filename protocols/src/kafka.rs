//! Kafka: the binary protocol clients speak to a broker, every API version the
//! `kafka-protocol` crate knows, flexible (compact, tagged-field) encodings
//! included.
//!
//! - Request: a 4-byte big-endian size, then the request header (API key, version,
//!   correlation id, client id) and body. Responses come back in request order,
//!   each a 4-byte size and the correlation id: a response is counted once whole
//!   (bodies the conversation does not read are skipped as they stream by).
//! - Match keys: `topic`, on Produce and Fetch requests only (the other APIs are
//!   relayed, never acted on). A request naming several topics is matched by the
//!   first one it carries. Fetch v13+ and Produce v13 name topics by id: ids are
//!   learnt from the Metadata and CreateTopics responses any Kafka connection of the
//!   process relays (ids are UUIDs, so one table serves every test), and a topic
//!   whose id was never seen has no `topic`. Fired events also carry `api`
//!   (`produce` or `fetch`).
//! - An incremental fetch session (KIP-227; kafka-python uses one) names a topic
//!   only in its first Fetch: later Fetches carry no topic, so they are not matched
//!   by `topic=`.
//! - Answers: `error()` on a Produce → a Produce response (the request's version and
//!   correlation id) with the error code on every partition it wrote and the
//!   message as `error_message`; on a Fetch → a Fetch response with the code on
//!   every partition asked for and no records. The code is `status=` (a number or a
//!   name such as `NOT_ENOUGH_REPLICAS`), else `message=` when it is a code's name
//!   (`LEADER_NOT_AVAILABLE`, as the spec reference writes it), else
//!   UNKNOWN_SERVER_ERROR (-1), which no client retries. A Produce with `acks=0`
//!   gets no response from a broker, so its answer is nothing at all.
//! - Limits: Produce v0–2 and Fetch v0–3 (clients from before Kafka 0.11) are
//!   relayed without match keys. A request larger than [`MAX_MESSAGE`] makes the
//!   connection opaque; a larger response is counted but not read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use kafka_protocol::messages::{
    ApiKey, CreateTopicsResponse, FetchResponse, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message as _, StrBytes};
use kafka_protocol::ResponseError;

use crate::common::{fields, request, too_large, Framer, Inbox, Latched};
use crate::{ActionKind, Answer, Code, Conversation, Fields, Message, Opaque, Protocol, Reply};
use crate::{Request, MAX_MESSAGE, MAX_PENDING};

/// Kafka's wire protocol.
pub struct Kafka;

impl Protocol for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["topic"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Error | ActionKind::Delay | ActionKind::Drop | ActionKind::Duplicate
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(KafkaConversation::default())
    }
}

/// Most topic ids remembered; past that the table starts afresh (ids are learnt
/// again from the next Metadata response).
const MAX_TOPIC_IDS: usize = 1 << 16;

/// Topic ids (as `u128`) to names, learnt from responses.
fn topic_ids() -> &'static Mutex<HashMap<u128, String>> {
    static IDS: OnceLock<Mutex<HashMap<u128, String>>> = OnceLock::new();
    IDS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn learn_topic(id: u128, name: &str) {
    if id == 0 || name.is_empty() {
        return;
    }
    let mut ids = topic_ids().lock().unwrap_or_else(|p| p.into_inner());
    if ids.len() >= MAX_TOPIC_IDS {
        ids.clear();
    }
    ids.insert(id, name.to_string());
}

/// The name of the topic with id `id`, if a response named it.
pub fn topic_name(id: u128) -> Option<String> {
    topic_ids()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
}

/// A topic a Produce request writes: by name, or by id (Produce v13).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Topic {
    name: String,
    id: u128,
    partitions: Vec<i32>,
}

impl Topic {
    /// The name, looked up by id when the request gave none.
    fn resolved(&self) -> Option<String> {
        if !self.name.is_empty() {
            Some(self.name.clone())
        } else {
            topic_name(self.id)
        }
    }
}

/// A request the server still owes a response, in request order.
#[derive(Clone, Debug)]
struct Pending {
    api: i16,
    version: i16,
    correlation: i32,
    kind: Kind,
    /// Responses still to come (2 for a duplicated request).
    expect: usize,
    /// How many of them the client must not see (the duplicate's).
    swallow: usize,
}

#[derive(Clone, Debug)]
enum Kind {
    Produce {
        acks: i16,
        topics: Vec<Topic>,
    },
    /// Responses read whole: rules act on them by the topics they carry.
    Fetch,
    /// Responses that name topic ids: Metadata, CreateTopics.
    Names,
    Other,
}

/// How many recent Fetch responses' versions are remembered for rules acting on
/// them (the relay acts on a message right after it is framed).
const RECENT: usize = 64;

#[derive(Default)]
struct KafkaConversation {
    client: Inbox,
    server: Inbox,
    pending: VecDeque<Pending>,
    /// The response being skipped (not read whole), counted once its last byte
    /// has passed: whether the client sees it.
    skipping: Option<bool>,
    /// Correlation id → version of recent Fetch responses.
    recent: VecDeque<(i32, i16)>,
}

/// The size a frame announces, once its 4 bytes are in.
fn frame_size(data: &[u8]) -> Option<i32> {
    let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(i32::from_be_bytes(b))
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl KafkaConversation {
    /// The pending request with correlation id `correlation`.
    fn position(&self, request: &Request) -> Option<usize> {
        let c: i32 = request.fields.get("correlation")?.parse().ok()?;
        self.pending.iter().position(|p| p.correlation == c)
    }
}

/// The next response the server owes has arrived: whether the client sees it, and
/// what it answers.
fn arrived(pending: &mut VecDeque<Pending>) -> (bool, Option<Pending>) {
    {
        let Some(front) = pending.front_mut() else {
            // More responses than requests: the client's problem, relayed as is.
            return (true, None);
        };
        front.expect -= 1;
        // The first answer of a duplicated request goes to the client, the second
        // is the copy's.
        let forward = !(front.expect == 0 && front.swallow > 0);
        if front.expect == 0 {
            (forward, pending.pop_front())
        } else {
            (forward, Some(front.clone()))
        }
    }
}

impl KafkaConversation {
    /// Frames the server's bytes into whole responses.
    fn responses(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        self.server.extend(bytes);
        let mut out = Vec::new();
        loop {
            if self.server.skipping() {
                return Ok(out);
            }
            if let Some(forward) = self.skipping.take() {
                out.push(message(self.server.take(), Fields::new(), forward));
            }
            let data = self.server.data();
            let Some(size) = frame_size(data) else {
                return Ok(out);
            };
            if size < 4 {
                return Err(Opaque(format!(
                    "kafka: a response of {size} bytes is shorter than a response header"
                )));
            }
            let size = size as usize;
            let front = self.pending.front();
            let reads = matches!(front.map(|p| &p.kind), Some(Kind::Names | Kind::Fetch));
            let swallowed = front.is_some_and(|p| p.swallow > 0);
            if (!reads && !swallowed) || size > MAX_MESSAGE {
                // Not needed whole: counted once its last byte has passed.
                let (forward, _) = arrived(&mut self.pending);
                self.server.skip(4 + size);
                self.skipping = Some(forward);
                continue;
            }
            if data.len() < 4 + size {
                return Ok(out);
            }
            let frame = &data[4..4 + size];
            let (forward, p) = arrived(&mut self.pending);
            if let Some(p) = &p {
                if i32_at(frame, 0) != p.correlation {
                    return Err(Opaque(format!(
                        "kafka: a response to request {} came where request {} was owed",
                        i32_at(frame, 0),
                        p.correlation
                    )));
                }
            }
            let fields = match &p {
                Some(p) => read_response(&mut self.recent, p, frame),
                None => Fields::new(),
            };
            self.server.consume(4 + size);
            out.push(message(self.server.take(), fields, forward));
        }
    }
}

/// Learns topic ids from a response that names them; a Fetch response's match
/// fields (its version is kept in `recent`). A response that does not decode is
/// only counted: the client, not the relay, deals with it.
fn read_response(recent: &mut VecDeque<(i32, i16)>, p: &Pending, frame: &[u8]) -> Fields {
    {
        let Ok(key) = ApiKey::try_from(p.api) else {
            return Fields::new();
        };
        let mut rest = frame;
        if ResponseHeader::decode(&mut rest, key.response_header_version(p.version)).is_err() {
            return Fields::new();
        }
        match key {
            ApiKey::Metadata if MetadataResponse::VERSIONS.contains(p.version) => {
                if let Ok(r) = MetadataResponse::decode(&mut rest, p.version) {
                    for t in &r.topics {
                        if let Some(name) = &t.name {
                            learn_topic(t.topic_id.as_u128(), name.0.as_str());
                        }
                    }
                }
            }
            ApiKey::CreateTopics if CreateTopicsResponse::VERSIONS.contains(p.version) => {
                if let Ok(r) = CreateTopicsResponse::decode(&mut rest, p.version) {
                    for t in &r.topics {
                        learn_topic(t.topic_id.as_u128(), t.name.0.as_str());
                    }
                }
            }
            ApiKey::Fetch if FetchResponse::VERSIONS.contains(p.version) => {
                if let Ok(r) = FetchResponse::decode(&mut rest, p.version) {
                    if recent.len() >= RECENT {
                        recent.pop_front();
                    }
                    recent.push_back((p.correlation, p.version));
                    return fetch_fields(&r, p.correlation);
                }
            }
            _ => {}
        }
        Fields::new()
    }
}

impl KafkaConversation {
    /// A Fetch response rules act on, decoded, with its version.
    fn fetch_response(&self, bytes: &[u8]) -> Result<(i32, i16, FetchResponse), String> {
        let frame = bytes.get(4..).ok_or("not a Kafka response")?;
        if frame.len() < 4 {
            return Err("not a Kafka response".into());
        }
        let correlation = i32_at(frame, 0);
        let version = self
            .recent
            .iter()
            .find(|(c, _)| *c == correlation)
            .map(|(_, v)| *v)
            .ok_or("not a Fetch response this connection read")?;
        let mut rest = frame;
        ResponseHeader::decode(&mut rest, FetchResponse::header_version(version))
            .map_err(|e| e.to_string())?;
        let r = FetchResponse::decode(&mut rest, version).map_err(|e| e.to_string())?;
        Ok((correlation, version, r))
    }

    /// Rewrites the partitions of topic `topic` in Fetch response `bytes` with `f`.
    fn rewrite_fetch(
        &self,
        m: &Message,
        bytes: &[u8],
        f: &mut dyn FnMut(
            &mut kafka_protocol::messages::fetch_response::PartitionData,
        ) -> Result<(), String>,
    ) -> Result<Vec<u8>, String> {
        let topic = m
            .fields
            .get("topic")
            .ok_or("a Fetch response with no topic")?;
        let (correlation, version, mut r) = self.fetch_response(bytes)?;
        for t in &mut r.responses {
            let name = if t.topic.0.is_empty() {
                topic_name(t.topic_id.as_u128())
            } else {
                Some(t.topic.0.to_string())
            };
            if name.as_deref() != Some(topic.as_str()) {
                continue;
            }
            for p in &mut t.partitions {
                f(p)?;
            }
        }
        frame(correlation, version, &r)
    }
}

fn message(len: usize, fields: Fields, forward: bool) -> Message {
    Message {
        len,
        matchable: fields.contains_key("topic"),
        fields,
        responses: 1,
        forward,
    }
}

/// A Fetch response's match fields: `api`, and the first topic that carries
/// records (else the first topic) by name.
fn fetch_fields(r: &FetchResponse, correlation: i32) -> Fields {
    let name = |t: &kafka_protocol::messages::fetch_response::FetchableTopicResponse| {
        if t.topic.0.is_empty() {
            topic_name(t.topic_id.as_u128())
        } else {
            Some(t.topic.0.to_string())
        }
    };
    let carries = |t: &&kafka_protocol::messages::fetch_response::FetchableTopicResponse| {
        t.partitions
            .iter()
            .any(|p| p.records.as_ref().is_some_and(|r| !r.is_empty()))
    };
    let topic = r
        .responses
        .iter()
        .filter(carries)
        .find_map(name)
        .or_else(|| r.responses.iter().find_map(name));
    match topic {
        Some(t) => fields([
            ("api", "fetch".to_string()),
            ("topic", t),
            ("correlation", correlation.to_string()),
        ]),
        None => Fields::new(),
    }
}

impl Framer for KafkaConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        loop {
            let data = self.client.data();
            let Some(size) = frame_size(data) else {
                return Ok(out);
            };
            if size < 8 {
                return Err(Opaque(format!(
                    "kafka: a request of {size} bytes is shorter than a request header"
                )));
            }
            let size = size as usize;
            if size > MAX_MESSAGE {
                return Err(too_large("a kafka request"));
            }
            if data.len() < 4 + size {
                return Ok(out);
            }
            let (fields, replies, pending) = parse_request(&data[4..4 + size])?;
            self.client.consume(4 + size);
            let len = self.client.take();
            let matchable = fields.contains_key("topic");
            if replies > 0 {
                if self.pending.len() >= MAX_PENDING {
                    return Err(Opaque(format!(
                        "more than {MAX_PENDING} requests await responses"
                    )));
                }
                self.pending.push_back(pending);
            }
            out.push(request(len, fields, matchable, replies));
        }
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        Ok(self.responses(bytes)?.len())
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let Answer::Error { message, status } = answer else {
            return Err("kafka answers only with error()".into());
        };
        let code = error_code(status.as_ref(), message.as_deref())?;
        let Some(i) = self.position(request) else {
            // A Produce with acks=0 is never pending: a broker answers nothing.
            return Ok(Reply { bytes: Vec::new() });
        };
        let bytes = produce_response(&self.pending[i], code, message.as_deref())?;
        self.pending.remove(i);
        Ok(Reply { bytes })
    }

    fn frames_server(&self) -> bool {
        true
    }

    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        self.responses(bytes)
    }

    /// A dropped Produce is answered with success: the record is lost for good,
    /// and the producer never knows.
    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        let Some(i) = self.position(request) else {
            return Some(Reply { bytes: Vec::new() });
        };
        let bytes = produce_response(&self.pending[i], 0, None).ok()?;
        self.pending.remove(i);
        Some(Reply { bytes })
    }

    /// A duplicated Produce goes to the broker twice; the second response is the
    /// relay's to swallow, so the producer sees one answer.
    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(i) = self.position(request) {
            let p = &mut self.pending[i];
            p.expect += 1;
            p.swallow += 1;
        }
        Ok([bytes, bytes].concat())
    }

    /// A dropped Fetch response loses the topic's records for this consumer for
    /// good: each record batch becomes an empty batch spanning the same offsets, so
    /// the consumer moves past them (and commits past them) as it does past records
    /// a compaction removed.
    fn drop_message(&mut self, m: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        self.rewrite_fetch(m, bytes, &mut |p| {
            if let Some(records) = &p.records {
                p.records = Some(emptied(records)?.into());
            }
            Ok(())
        })
    }

    /// A duplicated Fetch response carries the topic's record batches twice.
    fn duplicate_message(&mut self, m: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        self.rewrite_fetch(m, bytes, &mut |p| {
            if let Some(records) = &p.records {
                p.records = Some([&records[..], &records[..]].concat().into());
            }
            Ok(())
        })
    }

    /// An error on a Fetch response: the topic's partitions carry the code and no
    /// records.
    fn answer_message(
        &mut self,
        m: &Message,
        bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        let Answer::Error { message, status } = answer else {
            return Err("kafka answers only with error()".into());
        };
        let code = error_code(status.as_ref(), message.as_deref())?;
        self.rewrite_fetch(m, bytes, &mut |p| {
            p.error_code = code;
            p.records = Some(Default::default());
            Ok(())
        })
    }
}

/// The bytes of record batches (format v2) with every record taken out: each
/// batch keeps its base offset, last offset delta and producer fields, so a
/// consumer's position moves past it.
fn emptied(records: &[u8]) -> Result<Vec<u8>, String> {
    /// Bytes of a v2 batch header, up to and including the record count.
    const HEADER: usize = 61;
    let mut out = Vec::with_capacity(records.len().min(4096));
    let mut at = 0;
    while at + 12 <= records.len() {
        let len = i32_at(records, at + 8);
        if len < 0 {
            return Err("a record batch with a negative length".into());
        }
        let end = at + 12 + len as usize;
        if end > records.len() {
            // A partial batch at the end (the broker cut it at the size limit): the
            // consumer ignores it, so does the rewrite.
            break;
        }
        let batch = &records[at..end];
        if batch.len() < HEADER || batch[16] != 2 {
            return Err("records older than format v2 cannot be emptied".into());
        }
        let mut b = batch[..HEADER].to_vec();
        b[8..12].copy_from_slice(&((HEADER - 12) as i32).to_be_bytes());
        b[57..61].copy_from_slice(&0i32.to_be_bytes());
        // Nothing left to decompress: the codec bits go too.
        b[22] &= !0x07;
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&b);
        at = end;
    }
    Ok(out)
}

/// A request's match fields, how many responses it gets, and what to remember.
fn parse_request(frame: &[u8]) -> Result<(Fields, usize, Pending), Opaque> {
    let api = i16_at(frame, 0);
    let version = i16_at(frame, 2);
    let correlation = i32_at(frame, 4);
    let mut pending = Pending {
        api,
        version,
        correlation,
        kind: Kind::Other,
        expect: 1,
        swallow: 0,
    };
    let Ok(key) = ApiKey::try_from(api) else {
        // An API this crate does not know: relayed, one response expected.
        return Ok((Fields::new(), 1, pending));
    };
    let mut f = Fields::new();
    let mut replies = 1;
    match key {
        ApiKey::Produce if ProduceRequest::VERSIONS.contains(version) => {
            let body = body(frame, key, version)?;
            let r = ProduceRequest::decode(&mut &body[..], version)
                .map_err(|e| bad("a Produce", version, e))?;
            let topics: Vec<Topic> = r
                .topic_data
                .iter()
                .map(|t| Topic {
                    name: t.name.0.to_string(),
                    id: t.topic_id.as_u128(),
                    partitions: t.partition_data.iter().map(|p| p.index).collect(),
                })
                .collect();
            if let Some(t) = topics.iter().find_map(Topic::resolved) {
                f = fields([
                    ("api", "produce".to_string()),
                    ("topic", t),
                    ("correlation", correlation.to_string()),
                ]);
            }
            if r.acks == 0 {
                replies = 0;
            }
            pending.kind = Kind::Produce {
                acks: r.acks,
                topics,
            };
        }
        ApiKey::Fetch => pending.kind = Kind::Fetch,
        ApiKey::Metadata | ApiKey::CreateTopics => pending.kind = Kind::Names,
        _ => {}
    }
    Ok((f, replies, pending))
}

trait Contains {
    fn contains(&self, v: i16) -> bool;
}

impl Contains for kafka_protocol::protocol::VersionRange {
    fn contains(&self, v: i16) -> bool {
        self.min <= v && v <= self.max
    }
}

fn bad(what: &str, version: i16, e: impl std::fmt::Display) -> Opaque {
    Opaque(format!(
        "kafka: {what} v{version} request does not decode: {e}"
    ))
}

/// The body of a request frame: what follows its header.
fn body(frame: &[u8], key: ApiKey, version: i16) -> Result<&[u8], Opaque> {
    let mut rest = frame;
    RequestHeader::decode(&mut rest, key.request_header_version(version))
        .map_err(|e| Opaque(format!("kafka: a request header does not decode: {e}")))?;
    Ok(rest)
}

/// A Kafka error name (`NOT_ENOUGH_REPLICAS`) for `code`, if it has one.
pub fn error_name(code: i16) -> Option<String> {
    let e = ResponseError::try_from_code(code)?;
    if matches!(e, ResponseError::Unknown(_)) {
        return None;
    }
    // The crate names errors in camel case (`NotEnoughReplicas`).
    let camel = e.to_string();
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    Some(out)
}

/// The code of the error called `name` (`LEADER_NOT_AVAILABLE`, any case).
pub fn error_code_named(name: &str) -> Option<i16> {
    let want = name.trim().to_ascii_uppercase();
    (-1..=200).find(|&c| c != 0 && error_name(c).as_deref() == Some(want.as_str()))
}

/// The Kafka error code `status=` names: a non-zero 16-bit number, or the name of
/// a code (`NOT_ENOUGH_REPLICAS`). Checked when the spec loads.
pub fn status_code(status: &Code) -> Result<i16, String> {
    error_code(Some(status), None)
}

/// The error code a rule injects (see the module doc).
fn error_code(status: Option<&Code>, message: Option<&str>) -> Result<i16, String> {
    match status {
        Some(Code::Number(n)) => match i16::try_from(*n) {
            Ok(0) | Err(_) => Err(format!(
                "status={n} is not a Kafka error code (a non-zero 16-bit number)"
            )),
            Ok(c) => Ok(c),
        },
        Some(Code::Text(t)) => error_code_named(t)
            .ok_or_else(|| format!("status={t:?} is not the name of a Kafka error code")),
        None => Ok(message
            .and_then(error_code_named)
            .unwrap_or(UNKNOWN_SERVER_ERROR)),
    }
}

const UNKNOWN_SERVER_ERROR: i16 = -1;

/// A whole response frame: size, header with `correlation`, `body` at `version`.
fn frame<R: Encodable + HeaderVersion>(
    correlation: i32,
    version: i16,
    body: &R,
) -> Result<Vec<u8>, String> {
    let mut buf: Vec<u8> = vec![0; 4];
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

/// The response a broker gives Produce `p` with `code` on every partition it
/// wrote (0: success, offsets unknown).
fn produce_response(p: &Pending, code: i16, message: Option<&str>) -> Result<Vec<u8>, String> {
    use kafka_protocol::messages::{produce_response, TopicName};
    let Kind::Produce { acks, topics } = &p.kind else {
        return Err("kafka rules act on Produce requests and Fetch responses only".into());
    };
    if *acks == 0 {
        return Ok(Vec::new());
    }
    let responses = topics
        .iter()
        .map(|t| {
            produce_response::TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                .with_topic_id(uuid_of(t.id))
                .with_partition_responses(
                    t.partitions
                        .iter()
                        .map(|&i| {
                            produce_response::PartitionProduceResponse::default()
                                .with_index(i)
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                                .with_error_message(
                                    message.map(|m| StrBytes::from_string(m.into())),
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    let body = ProduceResponse::default().with_responses(responses);
    frame(p.correlation, p.version, &body)
}

fn uuid_of(id: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};
    use kafka_protocol::messages::{fetch_response, metadata_response, produce_request};
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, TopicName};
    use kafka_protocol::protocol::Request as KafkaRequest;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn name(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.into()))
    }

    /// A request frame as a client sends it.
    fn req<R: KafkaRequest>(r: &R, version: i16, correlation: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 4];
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_string("t".into())))
            .encode(&mut buf, R::header_version(version))
            .unwrap();
        r.encode(&mut buf, version).unwrap();
        let n = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&n.to_be_bytes());
        buf
    }

    /// One batch a record: `values` at offsets from `base`.
    pub(crate) fn records(values: &[&str], base: i64) -> Vec<u8> {
        encode(values, base, false)
    }

    /// `values` at offsets from `base`, all in one batch.
    pub(crate) fn one_batch(values: &[&str], base: i64) -> Vec<u8> {
        encode(values, base, true)
    }

    /// The encoder starts a new batch where a record's offset and sequence do not
    /// advance together: sequences of −1 make one batch a record.
    fn encode(values: &[&str], base: i64, together: bool) -> Vec<u8> {
        let recs: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: if together { i as i32 } else { -1 },
                timestamp: 1,
                key: None,
                value: Some(v.as_bytes().to_vec().into()),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    fn produce(topic: &str, acks: i16, version: i16, correlation: i32) -> Vec<u8> {
        let r = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records(&["v"], 0).into())),
                ])]);
        req(&r, version, correlation)
    }

    fn fetch_response(topic: &str, id: u128, values: &[&str], version: i16, c: i32) -> Vec<u8> {
        let r = FetchResponse::default().with_responses(vec![
            fetch_response::FetchableTopicResponse::default()
                .with_topic(name(if version >= 13 { "" } else { topic }))
                .with_topic_id(uuid_of(id))
                .with_partitions(vec![fetch_response::PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(values.len() as i64)
                    .with_records(Some(records(values, 0).into()))]),
        ]);
        frame(c, version, &r).unwrap()
    }

    fn fetch_request(version: i16, c: i32) -> Vec<u8> {
        req(&FetchRequest::default(), version, c)
    }

    #[test]
    fn produce_versions_match_by_topic_and_count_responses() {
        for version in [3, 7, 8, 9, 10, 11] {
            let ok = frame(2, version, &ProduceResponse::default()).unwrap();
            let script = vec![
                (
                    Dir::C,
                    [
                        produce("orders", -1, version, 2),
                        produce("x", 0, version, 3),
                    ]
                    .concat(),
                ),
                (Dir::S, ok),
            ];
            let out = check_cuts(&super::Kafka, &script);
            assert_eq!(out.requests.len(), 2, "v{version}");
            assert_eq!(out.requests[0].fields["topic"], "orders");
            assert_eq!(out.requests[0].fields["api"], "produce");
            assert_eq!(out.requests[0].replies, 1);
            // acks=0: the broker sends nothing back.
            assert_eq!(out.requests[1].replies, 0);
            assert_eq!(out.responses, vec![1]);
        }
    }

    #[test]
    fn fetch_responses_name_their_topic_by_id_too() {
        let id = 0x1234_5678_9abc_def0_u128 << 3;
        // A Metadata response teaches the id; Fetch v16 then carries only the id.
        let md = MetadataResponse::default().with_topics(vec![
            metadata_response::MetadataResponseTopic::default()
                .with_name(Some(name("orders.v16")))
                .with_topic_id(uuid_of(id)),
        ]);
        let mut conv = super::Kafka.conversation();
        conv.client(&req(&MetadataRequest::default(), 12, 1))
            .unwrap();
        let m = conv.server_messages(&frame(1, 12, &md).unwrap()).unwrap();
        assert_eq!(m.len(), 1);
        assert!(!m[0].matchable);
        conv.client(&fetch_request(16, 2)).unwrap();
        let bytes = fetch_response("orders.v16", id, &["a", "b"], 16, 2);
        let m = conv.server_messages(&bytes).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].matchable);
        assert_eq!(m[0].fields["topic"], "orders.v16");
        assert_eq!(m[0].fields["api"], "fetch");
        assert_eq!(m[0].len, bytes.len());
    }

    /// The records of the single partition of a Fetch response frame.
    fn partition(bytes: &[u8], version: i16) -> fetch_response::PartitionData {
        let mut rest = &bytes[4..];
        ResponseHeader::decode(&mut rest, FetchResponse::header_version(version)).unwrap();
        let r = FetchResponse::decode(&mut rest, version).unwrap();
        r.responses[0].partitions[0].clone()
    }

    #[test]
    fn fetch_drop_duplicate_and_error_rewrite_the_topic() {
        let mut conv = super::Kafka.conversation();
        conv.client(&fetch_request(12, 7)).unwrap();
        let bytes = fetch_response("orders", 0, &["a", "b"], 12, 7);
        let m = conv.server_messages(&bytes).unwrap().remove(0);

        let dropped = conv.drop_message(&m, &bytes).unwrap();
        let p = partition(&dropped, 12);
        let mut recs = p.records.unwrap();
        let set = RecordBatchDecoder::decode(&mut recs).unwrap();
        assert!(set.records.is_empty(), "the batch is emptied");
        // The batches still span offsets 0..=1, so the consumer moves to 2.
        let raw = p_records(&dropped);
        let (mut at, mut next) = (0, 0);
        while at < raw.len() {
            let base = i64::from_be_bytes(raw[at..at + 8].try_into().unwrap());
            next = base + i64::from(i32_at(&raw, at + 23)) + 1;
            assert_eq!(i32_at(&raw, at + 57), 0, "no records");
            at += 12 + i32_at(&raw, at + 8) as usize;
        }
        assert_eq!(next, 2);

        let twice = conv.duplicate_message(&m, &bytes).unwrap();
        let mut recs = partition(&twice, 12).records.unwrap();
        let all = RecordBatchDecoder::decode_all(&mut recs).unwrap();
        let values: Vec<_> = all
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.value.clone().unwrap()))
            .collect();
        assert_eq!(values, ["a", "b", "a", "b"].map(bytes::Bytes::from));

        let e = Answer::Error {
            message: Some("NOT_LEADER_OR_FOLLOWER".into()),
            status: None,
        };
        let failed = conv.answer_message(&m, &bytes, &e).unwrap();
        let p = partition(&failed, 12);
        assert_eq!(p.error_code, 6);
        assert!(p.records.unwrap().is_empty());
    }

    fn p_records(bytes: &[u8]) -> Vec<u8> {
        partition(bytes, 12).records.unwrap().to_vec()
    }

    #[test]
    fn produce_answers_carry_the_requests_correlation_and_code() {
        let mut conv = super::Kafka.conversation();
        // Two equal requests but for their correlation id: each answer is its own.
        let reqs = conv
            .client(&[produce("o", -1, 9, 41), produce("o", -1, 9, 42)].concat())
            .unwrap();
        let e = Answer::Error {
            message: None,
            status: Some(Code::Text("not_enough_replicas".into())),
        };
        let reply = conv.answer(&reqs[1], &e).unwrap();
        let mut rest = &reply.bytes[4..];
        let h = ResponseHeader::decode(&mut rest, ProduceResponse::header_version(9)).unwrap();
        assert_eq!(h.correlation_id, 42);
        let r = ProduceResponse::decode(&mut rest, 9).unwrap();
        assert_eq!(r.responses[0].partition_responses[0].error_code, 19);
        // Dropped: a success; the server now owes only the first.
        let reply = conv.drop_request(&reqs[0]).unwrap();
        let mut rest = &reply.bytes[4..];
        let h = ResponseHeader::decode(&mut rest, ProduceResponse::header_version(9)).unwrap();
        assert_eq!(h.correlation_id, 41);
        let r = ProduceResponse::decode(&mut rest, 9).unwrap();
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }

    #[test]
    fn a_duplicate_s_second_answer_is_swallowed() {
        let mut conv = super::Kafka.conversation();
        let bytes = produce("o", -1, 9, 5);
        let r = conv.client(&bytes).unwrap().remove(0);
        let twice = conv.duplicate_request(&r, &bytes).unwrap();
        assert_eq!(twice, [&bytes[..], &bytes[..]].concat());
        let ok = frame(5, 9, &ProduceResponse::default()).unwrap();
        let m = conv.server_messages(&[&ok[..], &ok[..]].concat()).unwrap();
        assert_eq!(
            m.iter().map(|m| m.forward).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn error_codes_by_number_name_and_message() {
        assert_eq!(error_code(None, Some("LEADER_NOT_AVAILABLE")), Ok(5));
        assert_eq!(error_code(None, Some("disk on fire")), Ok(-1));
        assert_eq!(error_code(None, None), Ok(-1));
        assert_eq!(error_code(Some(&Code::Number(19)), Some("x")), Ok(19));
        assert_eq!(
            error_code(Some(&Code::Text("NOT_ENOUGH_REPLICAS".into())), None),
            Ok(19)
        );
        assert!(error_code(Some(&Code::Number(0)), None).is_err());
        assert!(error_code(Some(&Code::Number(40000)), None).is_err());
        assert!(error_code(Some(&Code::Text("NOPE".into())), None).is_err());
        assert_eq!(error_name(19).as_deref(), Some("NOT_ENOUGH_REPLICAS"));
        assert_eq!(error_name(-1).as_deref(), Some("UNKNOWN_SERVER_ERROR"));
    }

    #[test]
    fn bad_frames_go_opaque_with_a_reason() {
        let short = play_whole(&super::Kafka, &[(Dir::C, vec![0, 0, 0, 2, 0, 0])]);
        assert!(short
            .unwrap_err()
            .0
            .contains("shorter than a request header"));
        let huge = play_whole(&super::Kafka, &[(Dir::C, vec![0x7f, 0xff, 0xff, 0xff])]);
        assert!(huge.unwrap_err().0.contains("larger than"));
        // A Produce whose body is cut short inside its frame.
        let mut p = produce("orders", -1, 9, 1);
        p.truncate(p.len() - 10);
        let n = (p.len() - 4) as i32;
        p[..4].copy_from_slice(&n.to_be_bytes());
        let bad = play_whole(&super::Kafka, &[(Dir::C, p)]);
        assert!(bad.unwrap_err().0.contains("does not decode"), "named");
        // A response for a request that was never sent.
        let mut conv = super::Kafka.conversation();
        conv.client(&fetch_request(12, 1)).unwrap();
        let wrong = fetch_response("t", 0, &["a"], 12, 99);
        assert!(conv
            .server_messages(&wrong)
            .unwrap_err()
            .0
            .contains("request 99"));
    }
}
