//! MongoDB wire protocol: OP_MSG, with legacy OP_QUERY/OP_REPLY for handshakes.
//!
//! - Message: a 16-byte header (`messageLength`, `requestID`, `responseTo`,
//!   `opCode`, little-endian) and a body. OP_MSG (2013) carries flag bits (bit 0
//!   `checksumPresent`, bit 1 `moreToCome`) and sections: kind 0 is the command
//!   document, kind 1 a document sequence (`documents` of an `insert`, say).
//! - Request: one client message. OP_MSG and OP_QUERY expect one reply, except an
//!   OP_MSG with `moreToCome` (an unacknowledged write), which gets none. Legacy
//!   OP_GET_MORE expects one, OP_INSERT/OP_UPDATE/OP_DELETE/OP_KILL_CURSORS none;
//!   those are never matchable.
//! - Response: one server message with `responseTo`; an OP_MSG reply with
//!   `moreToCome` (an exhaust cursor's batch, a streaming `hello`) is followed by
//!   more for the same request, so only the last completes the response.
//! - Match keys: `method`, the command name (the body's first key, `find`,
//!   `insert`, `aggregate`, ...; rules compare it case-insensitively) and `key`, the
//!   collection, for commands that name one (the first key's value, or `getMore`'s
//!   `collection`). An OP_QUERY to `db.$cmd` is the command its document holds; one
//!   to another namespace is a legacy `find` on that collection. Handshake and
//!   authentication commands (`hello`, `isMaster`, `saslStart`, `saslContinue`,
//!   `authenticate`, `getnonce`, `logout`) are not matchable.
//! - Answers: `error()` → a reply `{ok: 0, errmsg, code, codeName}` with
//!   `responseTo` the request's id, which drivers raise as a command failure; the
//!   code is `status=` (a number or a code name such as `"DuplicateKey"`), 1
//!   (`InternalError`) by default. An OP_QUERY gets an OP_REPLY with that document
//!   (a legacy find: with the `QueryFailure` flag and `$err`). A request with
//!   `moreToCome` cannot be answered: the client reads no reply to it.
//! - Limits: OP_COMPRESSED (negotiated compression) makes the connection opaque.
//!   A client message over [`MAX_MESSAGE`] is read only up to its command document
//!   when that comes first (as drivers send it); the rest is counted, not kept, and
//!   the request is reported once its last byte arrived. A reply is never held
//!   (only its header and flags are read). Replies are matched to
//!   requests in order: drivers send one request at a time per connection.

use bson::raw::{RawBsonRef, RawDocument};
use bson::{doc, Document};

use crate::common::{fields, request, too_large, Framer, Inbox, Latched, Ledger};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Code, Conversation, Fields, Opaque, Protocol, Reply, Request};

/// MongoDB (OP_MSG; OP_QUERY/OP_REPLY handshakes).
pub struct Mongodb;

impl Protocol for Mongodb {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["method", "key"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Error | ActionKind::Delay | ActionKind::Drop
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(MongoConversation::default())
    }
}

const OP_REPLY: i32 = 1;
const OP_UPDATE: i32 = 2001;
const OP_INSERT: i32 = 2002;
const OP_QUERY: i32 = 2004;
const OP_GET_MORE: i32 = 2005;
const OP_DELETE: i32 = 2006;
const OP_KILL_CURSORS: i32 = 2007;
const OP_COMPRESSED: i32 = 2012;
const OP_MSG: i32 = 2013;

const HEADER: usize = 16;
const CHECKSUM_PRESENT: u32 = 1;
const MORE_TO_COME: u32 = 1 << 1;
/// The largest message accepted at all: MongoDB's `maxMessageSizeBytes` is 48 MB.
const MAX_WIRE_MESSAGE: usize = 64 << 20;
/// An OP_REPLY's `QueryFailure` response flag.
const QUERY_FAILURE: i32 = 1 << 1;
/// The code an `error()` without `status=` answers with.
const DEFAULT_CODE: i32 = 1;

/// Commands that open or authenticate a connection: never matchable.
const HANDSHAKE: &[&str] = &[
    "hello",
    "ismaster",
    "saslstart",
    "saslcontinue",
    "authenticate",
    "getnonce",
    "logout",
];

/// Commands whose first value names the collection they act on.
const COLLECTION_COMMANDS: &[&str] = &[
    "find",
    "insert",
    "update",
    "delete",
    "findandmodify",
    "aggregate",
    "count",
    "distinct",
    "create",
    "drop",
    "createindexes",
    "dropindexes",
    "deleteindexes",
    "listindexes",
    "collmod",
    "killcursors",
    "validate",
    "collstats",
    "mapreduce",
    "renamecollection",
    "compact",
    "reindex",
    "geonear",
    "geosearch",
    "analyze",
    "shardcollection",
    "datasize",
];

/// Server error codes and their names, for `codeName` and `status="Name"`.
const CODES: &[(i32, &str)] = &[
    (1, "InternalError"),
    (2, "BadValue"),
    (4, "NoSuchKey"),
    (6, "HostUnreachable"),
    (7, "HostNotFound"),
    (8, "UnknownError"),
    (9, "FailedToParse"),
    (11, "UserNotFound"),
    (13, "Unauthorized"),
    (14, "TypeMismatch"),
    (18, "AuthenticationFailed"),
    (24, "LockTimeout"),
    (26, "NamespaceNotFound"),
    (27, "IndexNotFound"),
    (43, "CursorNotFound"),
    (48, "NamespaceExists"),
    (50, "MaxTimeMSExpired"),
    (59, "CommandNotFound"),
    (63, "StaleShardVersion"),
    (64, "WriteConcernFailed"),
    (79, "UnknownReplWriteConcern"),
    (89, "NetworkTimeout"),
    (91, "ShutdownInProgress"),
    (100, "UnsatisfiableWriteConcern"),
    (112, "WriteConflict"),
    (121, "DocumentValidationFailure"),
    (133, "FailedToSatisfyReadPreference"),
    (134, "ReadConcernMajorityNotAvailableYet"),
    (136, "CappedPositionLost"),
    (150, "StaleEpoch"),
    (189, "PrimarySteppedDown"),
    (202, "NetworkInterfaceExceededTimeLimit"),
    (211, "KeyNotFound"),
    (251, "NoSuchTransaction"),
    (262, "ExceededTimeLimit"),
    (9001, "SocketException"),
    (10107, "NotWritablePrimary"),
    (11000, "DuplicateKey"),
    (11600, "InterruptedAtShutdown"),
    (11602, "InterruptedDueToReplStateChange"),
    (13435, "NotPrimaryNoSecondaryOk"),
    (13436, "NotPrimaryOrSecondary"),
];

#[derive(Default)]
struct MongoConversation {
    client: Inbox,
    /// A request whose start is read; the rest of it is being skipped.
    reading: Option<Read>,
    server: Inbox,
    /// A server message is being skipped; `true` when it is its request's last.
    finishing: Option<bool>,
    /// Requests awaiting replies, with their ids.
    pending: Ledger<Pending>,
    /// Ids for replies given in the server's place.
    next_id: i32,
}

struct Read {
    fields: Fields,
    matchable: bool,
    replies: usize,
    pending: Pending,
}

/// What an answer to a request needs to know.
#[derive(Clone, Copy)]
struct Pending {
    request_id: i32,
    legacy: Legacy,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Legacy {
    /// OP_MSG: answered with an OP_MSG.
    No,
    /// An OP_QUERY command: answered with an OP_REPLY holding the document.
    Command,
    /// An OP_QUERY on a collection: an OP_REPLY with `QueryFailure`.
    Query,
}

fn le_i32(b: &[u8]) -> i32 {
    i32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A message's declared length, checked.
fn message_len(header: &[u8], who: &str) -> Result<usize, Opaque> {
    let len = le_i32(header);
    if len < HEADER as i32 || len as usize > MAX_WIRE_MESSAGE {
        return Err(Opaque(format!(
            "mongodb: a {who} message declares {len} bytes"
        )));
    }
    Ok(len as usize)
}

impl Framer for MongoConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        loop {
            if self.client.skipping() {
                return Ok(out);
            }
            // A request counts once its last byte arrived (a relay holds its bytes
            // until then), even when only its start was read.
            if let Some(read) = self.reading.take() {
                let r = request(
                    self.client.take(),
                    read.fields,
                    read.matchable,
                    read.replies,
                );
                self.pending.push(&r, read.pending)?;
                out.push(r);
            }
            let data = self.client.data();
            if data.len() < 4 {
                return Ok(out);
            }
            let total = message_len(data, "client")?;
            if data.len() < HEADER {
                return Ok(out);
            }
            let opcode = le_i32(&data[12..]);
            // What must be held to read the request: all of it when it is small
            // enough, else through its command document.
            let need = if total <= MAX_MESSAGE {
                total
            } else if opcode == OP_MSG {
                if data.len() < HEADER + 9 {
                    return Ok(out);
                }
                if data[HEADER + 4] != 0 {
                    return Err(too_large("a mongodb message without its command first"));
                }
                let body = le_i32(&data[HEADER + 5..]);
                if body < 5 || body as usize > MAX_MESSAGE {
                    return Err(too_large("a mongodb command document"));
                }
                HEADER + 5 + body as usize
            } else {
                return Err(too_large("a legacy mongodb message"));
            };
            if data.len() < need {
                return Ok(out);
            }
            let (fields, matchable, replies, legacy) = read_request(&data[..need], total)?;
            let request_id = le_i32(&data[4..]);
            self.client.consume(need);
            self.client.skip(total - need);
            self.reading = Some(Read {
                fields,
                matchable,
                replies,
                pending: Pending { request_id, legacy },
            });
        }
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        self.server.extend(bytes);
        let mut done = 0;
        loop {
            if self.server.skipping() {
                return Ok(done);
            }
            // A message just ended: the last of its request's replies completes it.
            if self.finishing.take() == Some(true) {
                done += 1;
                self.pending.complete();
            }
            let data = self.server.data();
            if data.len() < 4 {
                return Ok(done);
            }
            let total = message_len(data, "server")?;
            if data.len() < HEADER {
                return Ok(done);
            }
            let opcode = le_i32(&data[12..]);
            let last = match opcode {
                OP_MSG => {
                    if total < HEADER + 4 {
                        return Err(Opaque("mongodb: an OP_MSG reply without flags".into()));
                    }
                    if data.len() < HEADER + 4 {
                        return Ok(done);
                    }
                    le_u32(&data[HEADER..]) & MORE_TO_COME == 0
                }
                OP_REPLY => true,
                OP_COMPRESSED => {
                    return Err(Opaque(
                        "mongodb: the server compresses its replies (OP_COMPRESSED)".into(),
                    ))
                }
                other => return Err(Opaque(format!("mongodb: the server sent opcode {other}"))),
            };
            self.server.skip(total);
            self.server.take();
            self.finishing = Some(last);
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let Answer::Error { message, status } = answer else {
            return Err("mongodb answers only with error()".into());
        };
        if request.replies == 0 {
            return Err(
                "an unacknowledged write (moreToCome) gets no reply, so error() cannot answer it"
                    .into(),
            );
        }
        let code = error_code(status.as_ref())?;
        let Some(entry) = self.pending.answered(request) else {
            return Err("the request is not awaiting a reply".into());
        };
        let pending = entry.kind;
        let message = message
            .clone()
            .unwrap_or_else(|| "faultbox injected error".into());
        let code_name = code_name(code);
        self.next_id = self.next_id.wrapping_add(1);
        let id = 0x4642_0000_i32.wrapping_add(self.next_id);
        let bytes = match pending.legacy {
            Legacy::No => {
                let body =
                    doc! { "ok": 0.0, "errmsg": &message, "code": code, "codeName": code_name };
                op_msg(id, pending.request_id, &body)
            }
            Legacy::Command => {
                let body =
                    doc! { "ok": 0.0, "errmsg": &message, "code": code, "codeName": code_name };
                op_reply(id, pending.request_id, 0, &body)
            }
            Legacy::Query => {
                let body = doc! { "$err": &message, "code": code };
                op_reply(id, pending.request_id, QUERY_FAILURE, &body)
            }
        };
        Ok(Reply { bytes })
    }
}

/// The error code `error(status=)` answers with: a number, or a server code name
/// such as `"DuplicateKey"`; 1 (`InternalError`) when there is none. The spec
/// checks it at load.
pub fn error_code(status: Option<&Code>) -> Result<i32, String> {
    let code = match status {
        None => return Ok(DEFAULT_CODE),
        Some(Code::Number(n)) => *n,
        Some(Code::Text(t)) => match t.trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => match CODES
                .iter()
                .find(|(_, name)| name.eq_ignore_ascii_case(t.trim()))
            {
                Some((n, _)) => i64::from(*n),
                None => {
                    return Err(format!(
                        "mongodb error codes are numbers or names such as DuplicateKey, not {t:?}"
                    ))
                }
            },
        },
    };
    i32::try_from(code).map_err(|_| format!("mongodb error code {code} does not fit 32 bits"))
}

/// The server's name for `code`; `Location<code>` (as servers say) when it has none.
fn code_name(code: i32) -> String {
    match CODES.iter().find(|(n, _)| *n == code) {
        Some((_, name)) => (*name).to_string(),
        None => format!("Location{code}"),
    }
}

fn header(total: usize, id: i32, response_to: i32, opcode: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&(total as i32).to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&response_to.to_le_bytes());
    b.extend_from_slice(&opcode.to_le_bytes());
    b
}

fn doc_bytes(body: &Document) -> Vec<u8> {
    // A document of a few strings and numbers always encodes.
    body.to_vec().unwrap_or_else(|_| vec![5, 0, 0, 0, 0])
}

/// An OP_MSG with one kind-0 section.
fn op_msg(id: i32, response_to: i32, body: &Document) -> Vec<u8> {
    let doc = doc_bytes(body);
    let total = HEADER + 4 + 1 + doc.len();
    let mut b = header(total, id, response_to, OP_MSG);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&doc);
    b
}

/// An OP_REPLY with one document.
fn op_reply(id: i32, response_to: i32, flags: i32, body: &Document) -> Vec<u8> {
    let doc = doc_bytes(body);
    let total = HEADER + 20 + doc.len();
    let mut b = header(total, id, response_to, OP_REPLY);
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    b.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    b.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    b.extend_from_slice(&doc);
    b
}

type Parsed = (Fields, bool, usize, Legacy);

/// Reads a client message (`data`: the whole of it, or through its command
/// document when it is longer; `total` its length).
fn read_request(data: &[u8], total: usize) -> Result<Parsed, Opaque> {
    let opcode = le_i32(&data[12..]);
    let body = &data[HEADER..];
    match opcode {
        OP_MSG => {
            if body.len() < 4 {
                return Err(Opaque("mongodb: an OP_MSG without flags".into()));
            }
            let flags = le_u32(body);
            let replies = usize::from(flags & MORE_TO_COME == 0);
            // Sections end before the checksum, when there is one.
            let end = if flags & CHECKSUM_PRESENT != 0 && data.len() == total {
                if body.len() < 8 {
                    return Err(Opaque(
                        "mongodb: an OP_MSG too short for its checksum".into(),
                    ));
                }
                body.len() - 4
            } else {
                body.len()
            };
            let command = msg_command(&body[4..end])?;
            let (fields, matchable) = command_fields(command);
            Ok((fields, matchable, replies, Legacy::No))
        }
        OP_QUERY => {
            // flags, fullCollectionName, numberToSkip, numberToReturn, query.
            let rest = body.get(4..).ok_or_else(|| short("OP_QUERY"))?;
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| short("OP_QUERY"))?;
            let namespace = String::from_utf8_lossy(&rest[..nul]).into_owned();
            let query = rest.get(nul + 9..).ok_or_else(|| short("OP_QUERY"))?;
            let query = document(query, "an OP_QUERY's query")?;
            match namespace.split_once('.') {
                Some((_, "$cmd")) => {
                    // A command may be wrapped as `{$query: {...}, $readPreference: ...}`.
                    let command = match query
                        .get("$query")
                        .ok()
                        .flatten()
                        .or_else(|| query.get("query").ok().flatten())
                    {
                        Some(RawBsonRef::Document(d)) => d,
                        _ => query,
                    };
                    let (fields, matchable) = command_fields(command);
                    Ok((fields, matchable, 1, Legacy::Command))
                }
                _ => {
                    let collection = namespace
                        .split_once('.')
                        .map_or(namespace.as_str(), |(_, c)| c)
                        .to_string();
                    let f = fields([("method", "find".to_string()), ("key", collection)]);
                    Ok((f, true, 1, Legacy::Query))
                }
            }
        }
        OP_GET_MORE => Ok((Fields::new(), false, 1, Legacy::No)),
        OP_INSERT | OP_UPDATE | OP_DELETE | OP_KILL_CURSORS => {
            Ok((Fields::new(), false, 0, Legacy::No))
        }
        OP_COMPRESSED => Err(Opaque(
            "mongodb: the client compresses its messages (OP_COMPRESSED)".into(),
        )),
        other => Err(Opaque(format!("mongodb: the client sent opcode {other}"))),
    }
}

fn short(what: &str) -> Opaque {
    Opaque(format!("mongodb: a truncated {what}"))
}

/// A BSON document at the start of `bytes`, checked to be whole and well formed
/// as far as its first keys.
fn document<'a>(bytes: &'a [u8], what: &str) -> Result<&'a RawDocument, Opaque> {
    if bytes.len() < 5 {
        return Err(Opaque(format!("mongodb: {what} is truncated")));
    }
    let len = le_i32(bytes);
    if len < 5 || len as usize > bytes.len() {
        return Err(Opaque(format!(
            "mongodb: {what} declares {len} bytes of {}",
            bytes.len()
        )));
    }
    RawDocument::from_bytes(&bytes[..len as usize])
        .map_err(|e| Opaque(format!("mongodb: {what} is not BSON: {e}")))
}

/// The command document of an OP_MSG's `sections`: its kind-0 section.
fn msg_command(mut sections: &[u8]) -> Result<&RawDocument, Opaque> {
    let mut command = None;
    while let Some((&kind, rest)) = sections.split_first() {
        match kind {
            0 => {
                let d = document(rest, "an OP_MSG command")?;
                if command.replace(d).is_some() {
                    return Err(Opaque(
                        "mongodb: an OP_MSG with two command documents".into(),
                    ));
                }
                sections = &rest[d.as_bytes().len()..];
            }
            1 => {
                if rest.len() < 4 {
                    // A long message is read only through its command document.
                    break;
                }
                let size = le_i32(rest);
                if size < 4 {
                    return Err(Opaque(format!(
                        "mongodb: a document sequence declares {size} bytes"
                    )));
                }
                let Some(after) = rest.get(size as usize..) else {
                    break;
                };
                sections = after;
            }
            other => {
                return Err(Opaque(format!(
                    "mongodb: an OP_MSG section of unknown kind {other}"
                )))
            }
        }
    }
    command.ok_or_else(|| Opaque("mongodb: an OP_MSG without a command document".into()))
}

/// `method` and `key` of a command, and whether rules may act on it.
fn command_fields(command: &RawDocument) -> (Fields, bool) {
    let first = match command.iter().next() {
        Some(Ok((name, value))) => Some((name.to_string(), value)),
        _ => None,
    };
    let Some((name, value)) = first else {
        // An empty or malformed command: the server refuses it; nothing to match.
        return (Fields::new(), false);
    };
    let lower = name.to_ascii_lowercase();
    if HANDSHAKE.contains(&lower.as_str()) {
        return (Fields::new(), false);
    }
    let key = if lower == "getmore" {
        command.get_str("collection").ok().map(str::to_string)
    } else if COLLECTION_COMMANDS.contains(&lower.as_str()) {
        match value {
            RawBsonRef::String(s) => Some(s.to_string()),
            _ => None,
        }
    } else {
        None
    };
    let mut f = fields([("method", name)]);
    if let Some(key) = key {
        f.insert("key", key);
    }
    (f, true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    /// An OP_MSG request with a command document and optional document sequences.
    pub(crate) fn msg(
        id: i32,
        flags: u32,
        body: &Document,
        seqs: &[(&str, Vec<Document>)],
    ) -> Vec<u8> {
        let mut sections = vec![0u8];
        sections.extend(doc_bytes(body));
        for (name, docs) in seqs {
            let mut s = Vec::new();
            s.extend_from_slice(name.as_bytes());
            s.push(0);
            for d in docs {
                s.extend(doc_bytes(d));
            }
            sections.push(1);
            sections.extend_from_slice(&((s.len() + 4) as i32).to_le_bytes());
            sections.extend(s);
        }
        let checksum = flags & CHECKSUM_PRESENT != 0;
        let total = HEADER + 4 + sections.len() + if checksum { 4 } else { 0 };
        let mut b = header(total, id, 0, OP_MSG);
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend(sections);
        if checksum {
            b.extend_from_slice(&[1, 2, 3, 4]);
        }
        b
    }

    fn query(id: i32, ns: &str, q: &Document) -> Vec<u8> {
        let d = doc_bytes(q);
        let total = HEADER + 4 + ns.len() + 1 + 8 + d.len();
        let mut b = header(total, id, 0, OP_QUERY);
        b.extend_from_slice(&0i32.to_le_bytes());
        b.extend_from_slice(ns.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i32.to_le_bytes());
        b.extend_from_slice(&(-1i32).to_le_bytes());
        b.extend(d);
        b
    }

    fn reply(to: i32, flags: u32) -> Vec<u8> {
        let d = doc_bytes(&doc! {"ok": 1.0});
        let mut b = header(HEADER + 5 + d.len(), 99, to, OP_MSG);
        b.extend_from_slice(&flags.to_le_bytes());
        b.push(0);
        b.extend(d);
        b
    }

    fn m(r: &Request, k: &str) -> Option<String> {
        r.fields.get(k).cloned()
    }

    #[test]
    fn commands_collections_and_handshakes() {
        let mut client = query(
            1,
            "admin.$cmd",
            &doc! {"isMaster": 1, "client": {"driver": "x"}},
        );
        client.extend(msg(
            2,
            0,
            &doc! {"find": "orders", "filter": {"a": 1}, "$db": "shop"},
            &[],
        ));
        client.extend(msg(
            3,
            0,
            &doc! {"insert": "orders", "$db": "shop"},
            &[("documents", vec![doc! {"a": 1}, doc! {"a": 2}])],
        ));
        client.extend(msg(
            4,
            CHECKSUM_PRESENT,
            &doc! {"getMore": 7i64, "collection": "orders"},
            &[],
        ));
        client.extend(msg(5, 0, &doc! {"ping": 1, "$db": "admin"}, &[]));
        client.extend(msg(6, MORE_TO_COME, &doc! {"delete": "orders"}, &[]));
        client.extend(msg(7, 0, &doc! {"saslStart": 1}, &[]));
        client.extend(query(8, "shop.$cmd", &doc! {"$query": {"count": "orders"}}));
        client.extend(query(9, "shop.orders", &doc! {"a": 1}));
        let mut server = Vec::new();
        for (to, flags) in [
            (1, 0),
            (2, 0),
            (3, 0),
            (4, MORE_TO_COME),
            (4, MORE_TO_COME),
            (4, 0),
            (5, 0),
            (7, 0),
            (8, 0),
            (9, 0),
        ] {
            server.extend(reply(to, flags));
        }
        let o = check_cuts(&Mongodb, &[(Dir::C, client.clone()), (Dir::S, server)]);
        let r = &o.requests;
        assert_eq!(r.len(), 9);
        assert!(!r[0].matchable && r[0].fields.is_empty());
        assert_eq!(
            (m(&r[1], "method").unwrap(), m(&r[1], "key").unwrap()),
            ("find".into(), "orders".into())
        );
        assert_eq!(m(&r[2], "method").as_deref(), Some("insert"));
        assert_eq!(m(&r[3], "key").as_deref(), Some("orders"));
        assert_eq!(m(&r[4], "method").as_deref(), Some("ping"));
        assert_eq!(m(&r[4], "key"), None);
        assert_eq!(r[5].replies, 0);
        assert!(!r[6].matchable);
        assert_eq!(m(&r[7], "method").as_deref(), Some("count"));
        assert_eq!(m(&r[7], "key").as_deref(), Some("orders"));
        assert_eq!(m(&r[8], "method").as_deref(), Some("find"));
        assert_eq!(m(&r[8], "key").as_deref(), Some("orders"));
        assert_eq!(r.iter().map(|r| r.len).sum::<usize>(), client.len());
        assert_eq!(o.total_responses(), 8, "exhaust batches count once");
        assert_eq!(o.total_replies(), 8);
    }

    fn error_doc(bytes: &[u8], opcode: i32) -> (i32, Document) {
        assert_eq!(le_i32(bytes) as usize, bytes.len());
        assert_eq!(le_i32(&bytes[12..]), opcode);
        let at = if opcode == OP_MSG {
            HEADER + 5
        } else {
            HEADER + 20
        };
        let d = Document::from_reader(&bytes[at..]).unwrap();
        (le_i32(&bytes[8..]), d)
    }

    #[test]
    fn error_answers_reply_to_the_request() {
        let mut c = Mongodb.conversation();
        let r = c
            .client(&msg(41, 0, &doc! {"find": "t"}, &[]))
            .unwrap()
            .remove(0);
        let err = |m: Option<&str>, s: Option<Code>| Answer::Error {
            message: m.map(str::to_string),
            status: s,
        };
        let (to, d) = error_doc(
            &c.answer(&r, &err(Some("disk full"), Some(Code::Number(11000))))
                .unwrap()
                .bytes,
            OP_MSG,
        );
        assert_eq!(to, 41);
        assert_eq!(
            d,
            doc! {"ok": 0.0, "errmsg": "disk full", "code": 11000, "codeName": "DuplicateKey"}
        );
        let r = c
            .client(&msg(42, 0, &doc! {"find": "t"}, &[]))
            .unwrap()
            .remove(0);
        let (to, d) = error_doc(&c.answer(&r, &err(None, None)).unwrap().bytes, OP_MSG);
        assert_eq!(to, 42);
        assert_eq!(d.get_i32("code").unwrap(), 1);
        assert_eq!(d.get_str("codeName").unwrap(), "InternalError");
        assert_eq!(d.get_str("errmsg").unwrap(), "faultbox injected error");
        let r = c
            .client(&msg(43, 0, &doc! {"find": "t"}, &[]))
            .unwrap()
            .remove(0);
        let (_, d) = error_doc(
            &c.answer(
                &r,
                &err(None, Some(Code::Text("NotWritablePrimary".into()))),
            )
            .unwrap()
            .bytes,
            OP_MSG,
        );
        assert_eq!(d.get_i32("code").unwrap(), 10107);
        // Answered once: the server owes it nothing more.
        assert!(c.answer(&r, &err(None, None)).is_err());
        let r = c
            .client(&msg(44, 0, &doc! {"find": "t"}, &[]))
            .unwrap()
            .remove(0);
        let (_, d) = error_doc(
            &c.answer(&r, &err(None, Some(Code::Number(4242))))
                .unwrap()
                .bytes,
            OP_MSG,
        );
        assert_eq!(d.get_str("codeName").unwrap(), "Location4242");
        let r = c
            .client(&msg(45, 0, &doc! {"find": "t"}, &[]))
            .unwrap()
            .remove(0);
        assert!(c
            .answer(&r, &err(None, Some(Code::Text("Nope".into()))))
            .is_err());
        assert!(c
            .answer(&r, &err(None, Some(Code::Number(1 << 40))))
            .is_err());
        let w = c
            .client(&msg(46, MORE_TO_COME, &doc! {"insert": "t"}, &[]))
            .unwrap()
            .remove(0);
        assert!(c
            .answer(&w, &err(None, None))
            .unwrap_err()
            .contains("moreToCome"));
        // Legacy OP_QUERY: an OP_REPLY.
        let q = c
            .client(&query(47, "db.$cmd", &doc! {"count": "t"}))
            .unwrap()
            .remove(0);
        let (to, d) = error_doc(
            &c.answer(&q, &err(Some("no"), None)).unwrap().bytes,
            OP_REPLY,
        );
        assert_eq!((to, d.get_str("errmsg").unwrap()), (47, "no"));
        let q = c.client(&query(48, "db.u", &doc! {})).unwrap().remove(0);
        let bytes = c.answer(&q, &err(Some("no"), None)).unwrap().bytes;
        assert_eq!(le_i32(&bytes[HEADER..]), QUERY_FAILURE);
        let (_, d) = error_doc(&bytes, OP_REPLY);
        assert_eq!(d.get_str("$err").unwrap(), "no");
    }

    #[test]
    fn a_large_insert_is_read_through_its_command() {
        let big = "x".repeat(1 << 20);
        let docs: Vec<Document> = (0..17).map(|i| doc! {"i": i, "pad": &big}).collect();
        let bytes = msg(1, 0, &doc! {"insert": "big"}, &[("documents", docs)]);
        assert!(bytes.len() > MAX_MESSAGE);
        let mut c = Mongodb.conversation();
        let mut got = Vec::new();
        let chunks: Vec<&[u8]> = bytes.chunks(64 << 10).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            got.extend(c.client(chunk).unwrap());
            // Reported with its last byte, never before.
            assert_eq!(got.len(), usize::from(i == chunks.len() - 1), "chunk {i}");
        }
        assert_eq!(got[0].len, bytes.len());
        assert_eq!(got[0].fields["key"], "big");
        // A reply streams by without being held.
        let mut r = header(HEADER + 4 + (40 << 20), 1, 1, OP_MSG);
        r.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(c.server(&r).unwrap(), 0);
        let pad = vec![0u8; 40 << 20];
        assert_eq!(c.server(&pad).unwrap(), 1);
    }

    #[test]
    fn what_it_cannot_follow_is_opaque() {
        let mut compressed = header(HEADER + 9, 1, 0, OP_COMPRESSED);
        compressed.extend_from_slice(&[0; 9]);
        for script in [
            vec![(Dir::C, compressed.clone())],
            vec![(Dir::S, compressed)],
            vec![(Dir::C, header(8, 1, 0, OP_MSG))],
            vec![(Dir::C, header(HEADER, 1, 0, 9999))],
            vec![(Dir::C, vec![0xff, 0xff, 0xff, 0x7f])],
            vec![(Dir::S, header(HEADER, 1, 0, OP_QUERY))],
        ] {
            assert!(play_whole(&Mongodb, &script).is_err(), "{script:?}");
        }
        // A body that is not BSON, a section of unknown kind.
        let mut bad = header(HEADER + 4 + 1 + 5, 1, 0, OP_MSG);
        bad.extend_from_slice(&[0, 0, 0, 0, 0, 9, 0, 0, 0, 0]);
        assert!(play_whole(&Mongodb, &[(Dir::C, bad)]).is_err());
        let mut bad = header(HEADER + 4 + 1, 1, 0, OP_MSG);
        bad.extend_from_slice(&[0, 0, 0, 0, 7]);
        assert!(play_whole(&Mongodb, &[(Dir::C, bad)]).is_err());
    }
}
