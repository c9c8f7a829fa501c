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

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use kafka_protocol::messages::{
    ApiKey, CreateTopicsResponse, FetchRequest, FetchResponse, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, StrBytes};
use kafka_protocol::ResponseError;

use crate::common::{fields, request, too_large, Framer, Inbox, Latched, Ledger};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Code, Conversation, Fields, Opaque, Protocol, Reply, Request};

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

/// A topic a request names: by name, or by id (Fetch v13+).
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

/// What a request was, for reading its response and answering it.
#[derive(Clone, Debug)]
struct Pending {
    api: i16,
    version: i16,
    correlation: i32,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Produce {
        acks: i16,
        topics: Vec<Topic>,
    },
    Fetch {
        session: i32,
        topics: Vec<Topic>,
    },
    /// Responses that name topic ids: Metadata, CreateTopics.
    Names,
    Other,
}

#[derive(Default)]
struct KafkaConversation {
    client: Inbox,
    server: Inbox,
    ledger: Ledger<Pending>,
    /// Responses read or skipped that are not yet counted.
    reading: Option<Reading>,
}

/// The response being received.
enum Reading {
    /// Its body is being skipped; counted once the skip ends.
    Skipping,
}

/// The size a frame announces, once its 4 bytes are in.
fn frame_size(data: &[u8]) -> Option<i32> {
    let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(i32::from_be_bytes(b))
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
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
            let req = request(len, fields, matchable, replies);
            if replies > 0 {
                self.ledger.push(&req, pending)?;
            }
            out.push(req);
        }
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        self.server.extend(bytes);
        let mut done = 0;
        loop {
            if self.server.skipping() {
                return Ok(done);
            }
            if let Some(Reading::Skipping) = self.reading.take() {
                self.ledger.complete();
                self.server.take();
                done += 1;
            }
            let data = self.server.data();
            let Some(size) = frame_size(data) else {
                return Ok(done);
            };
            if size < 4 {
                return Err(Opaque(format!(
                    "kafka: a response of {size} bytes is shorter than a response header"
                )));
            }
            let size = size as usize;
            let reads = matches!(
                self.ledger.front().map(|p| &p.kind),
                Some(Kind::Names | Kind::Fetch { .. })
            );
            if !reads || size > MAX_MESSAGE {
                // Not needed whole: counted once its last byte has passed.
                self.server.skip(4 + size);
                self.reading = Some(Reading::Skipping);
                continue;
            }
            if data.len() < 4 + size {
                return Ok(done);
            }
            if let Some(p) = self.ledger.complete() {
                read_response(&p, &data[4..4 + size]);
            }
            self.server.consume(4 + size);
            self.server.take();
            done += 1;
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let Answer::Error { message, status } = answer else {
            return Err("kafka answers only with error()".into());
        };
        let code = error_code(status.as_ref(), message.as_deref())?;
        let Some(entry) = self.ledger.find(request) else {
            // A Produce with acks=0 is never in the ledger: a broker answers nothing.
            return Ok(Reply { bytes: Vec::new() });
        };
        let p = entry.kind.clone();
        let bytes = error_response(&p, code, message.as_deref())?;
        self.ledger.answered(request);
        Ok(Reply { bytes })
    }
}

/// A request's match fields, how many responses it gets, and what to remember.
fn parse_request(frame: &[u8]) -> Result<(Fields, usize, Pending), Opaque> {
    let api = i16_at(frame, 0);
    let version = i16_at(frame, 2);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let mut pending = Pending {
        api,
        version,
        correlation,
        kind: Kind::Other,
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
            f = topic_fields("produce", &topics);
            if r.acks == 0 {
                replies = 0;
            }
            pending.kind = Kind::Produce {
                acks: r.acks,
                topics,
            };
        }
        ApiKey::Fetch if FetchRequest::VERSIONS.contains(version) => {
            let body = body(frame, key, version)?;
            let r = FetchRequest::decode(&mut &body[..], version)
                .map_err(|e| bad("a Fetch", version, e))?;
            let topics: Vec<Topic> = r
                .topics
                .iter()
                .map(|t| Topic {
                    name: t.topic.0.to_string(),
                    id: t.topic_id.as_u128(),
                    partitions: t.partitions.iter().map(|p| p.partition).collect(),
                })
                .collect();
            f = topic_fields("fetch", &topics);
            pending.kind = Kind::Fetch {
                session: r.session_id,
                topics,
            };
        }
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

/// `api` and the first topic with a known name.
fn topic_fields(api: &str, topics: &[Topic]) -> Fields {
    match topics.iter().find_map(Topic::resolved) {
        Some(t) => fields([("api", api.to_string()), ("topic", t)]),
        None => fields([("api", api.to_string())]),
    }
}

/// Learns topic ids from a response that names them. A response that does not
/// decode is only counted: the client, not the relay, deals with it.
fn read_response(p: &Pending, frame: &[u8]) {
    let Ok(key) = ApiKey::try_from(p.api) else {
        return;
    };
    let mut rest = frame;
    if ResponseHeader::decode(&mut rest, key.response_header_version(p.version)).is_err() {
        return;
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
        _ => {}
    }
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

/// The response a broker failing `p` with `code` sends.
fn error_response(p: &Pending, code: i16, message: Option<&str>) -> Result<Vec<u8>, String> {
    use kafka_protocol::messages::{fetch_response, produce_response, TopicName};
    match &p.kind {
        Kind::Produce { acks: 0, .. } => Ok(Vec::new()),
        Kind::Produce { topics, .. } => {
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
        Kind::Fetch { session, topics } => {
            let responses: Vec<_> = topics
                .iter()
                .map(|t| {
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                        .with_topic_id(uuid_of(t.id))
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|&i| {
                                    fetch_response::PartitionData::default()
                                        .with_partition_index(i)
                                        .with_error_code(code)
                                        .with_high_watermark(-1)
                                        .with_last_stable_offset(-1)
                                        .with_log_start_offset(-1)
                                        .with_records(Some(Default::default()))
                                })
                                .collect(),
                        )
                })
                .collect();
            // A Fetch naming no partition (a session's follow-up) fails as a whole.
            let top = if responses.is_empty() { code } else { 0 };
            let body = FetchResponse::default()
                .with_error_code(top)
                .with_session_id(*session)
                .with_responses(responses);
            frame(p.correlation, p.version, &body)
        }
        Kind::Names | Kind::Other => {
            Err("kafka rules act on Produce and Fetch requests only".into())
        }
    }
}

fn uuid_of(id: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(id)
}
