//! PostgreSQL: the frontend/backend protocol 3.
//!
//! - Requests:
//!   - a simple `Query`, however many statements its text holds;
//!   - an extended-protocol batch: `Parse`/`Bind`/`Describe`/`Execute`/`Close` up
//!     to and including `Sync`. Its `query` is the text of the statement its first
//!     `Execute` runs (from a `Parse` in the batch, or remembered from the `Parse`
//!     that prepared the statement earlier on this connection), else that of its
//!     first `Parse`. A `Flush` inside a batch means the client waits for what it
//!     sent so far, so the batch up to the `Flush` is reported then (matchable,
//!     with no reply of its own; it can be delayed or dropped, not answered);
//!   - not matchable: the startup message, `SSLRequest`/`GSSENCRequest` (one byte
//!     answers them), `CancelRequest`, password/SASL messages (cleartext, md5,
//!     SCRAM-SHA-256 are relayed untouched), `FunctionCall`, `Terminate`, and
//!     `CopyData`/`CopyDone`/`CopyFail`, each reported as it arrives so a COPY
//!     streams.
//! - Responses: everything up to `ReadyForQuery` (COPY in, out and both included);
//!   for the startup message, everything up to the first `ReadyForQuery` or an
//!   `ErrorResponse` (authentication failed); one byte for `SSLRequest` and
//!   `GSSENCRequest`. Message bodies are skipped, never held.
//! - Match key: `query`.
//! - Answers: `error()` → `ErrorResponse` (severity ERROR, SQLSTATE `XX000`
//!   internal_error unless `status` gives a five-digit code such as 53100
//!   disk_full or 40001 serialization_failure, message `message` or "faultbox
//!   injected error") then `ReadyForQuery` with the transaction status the client
//!   would see: `I` outside a transaction block, `E` inside one (an error aborts
//!   it). The status is the server's last, carried forward over requests still in
//!   flight by what they do (`BEGIN`/`START` open a block; `COMMIT`/`END`/
//!   `ROLLBACK`/`ABORT` close it). `response()` is not offered (the reference
//!   table has none for postgres).
//! - Limits: the server's `S` to `SSLRequest` (TLS follows), `G` to
//!   `GSSENCRequest`, and a direct TLS hello make the connection opaque. A server
//!   whose transaction an answered error "aborted" has not really aborted it: a
//!   client that commits anyway commits the statements before it. In the extended
//!   protocol the server ignores a `Sync` sent during COPY FROM STDIN; Faultbox
//!   recognizes such a COPY by its statement text (COPY ... FROM STDIN: the only
//!   way to start one), so that batch expects no reply of its own.

use crate::common::{fields, request, too_large, Framer, Inbox, Latched, Ledger, Names};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Conversation, Fields, Opaque, Protocol, Reply, Request};

/// PostgreSQL (protocol 3).
pub struct Postgres;

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["query"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Error | ActionKind::Delay | ActionKind::Drop
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(PostgresConversation::default())
    }
}

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;
/// The largest startup-phase message the server accepts.
const MAX_STARTUP: usize = 10_000;

/// What a request does to the transaction status, for answering later ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    None,
    Begin,
    End,
}

/// A byte the server owes in answer to an encryption request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encryption {
    Ssl,
    Gss,
}

#[derive(Default)]
struct Batch {
    /// The first `Execute`'s statement text.
    executed: Option<String>,
    /// The first `Parse`'s text.
    parsed: Option<String>,
    /// Part of the batch went out unreported-as-matchable (it outgrew MAX_MESSAGE).
    split: bool,
    /// An `Execute` in it started COPY FROM STDIN: the server ignores `Sync` until
    /// the copy ends.
    copy_in: bool,
}

impl Batch {
    fn query(&self) -> Option<&String> {
        self.executed.as_ref().or(self.parsed.as_ref())
    }
}

#[derive(Default)]
struct PostgresConversation {
    client: Inbox,
    /// The startup message has been seen (untyped messages are over).
    started: bool,
    batch: Batch,
    /// COPY FROM STDIN through the extended protocol is in progress.
    copy_in: bool,
    statements: Names<String>,
    portals: Names<String>,
    /// One-byte answers the server owes, oldest first.
    encryption: std::collections::VecDeque<Encryption>,
    server: Inbox,
    /// The server has sent its first `ReadyForQuery`.
    ready: bool,
    /// The transaction status of the server's last `ReadyForQuery`.
    status: u8,
    pending: Ledger<Effect>,
}

fn cstr(b: &[u8]) -> Option<(String, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((
        String::from_utf8_lossy(&b[..end]).into_owned(),
        &b[end + 1..],
    ))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Words of SQL text, upper-cased, skipping leading comments.
fn words(sql: &str) -> impl Iterator<Item = String> + '_ {
    let mut s = sql.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest
                .split_once('\n')
                .map(|x| x.1)
                .unwrap_or("")
                .trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest
                .split_once("*/")
                .map(|x| x.1)
                .unwrap_or("")
                .trim_start();
        } else {
            break;
        }
    }
    s.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
}

fn effect(sql: &str) -> Effect {
    let mut effect = Effect::None;
    for statement in sql.split(';') {
        let mut w = words(statement);
        match (w.next().as_deref(), w.next().as_deref()) {
            (Some("BEGIN"), _) | (Some("START"), Some("TRANSACTION")) => effect = Effect::Begin,
            (Some("ROLLBACK"), Some("TO")) => {}
            (Some("COMMIT" | "END" | "ROLLBACK" | "ABORT"), _) => effect = Effect::End,
            (Some("PREPARE"), Some("TRANSACTION")) => effect = Effect::End,
            _ => {}
        }
    }
    effect
}

/// `COPY ... FROM STDIN`: the client streams CopyData next.
fn is_copy_in(sql: &str) -> bool {
    let w: Vec<String> = words(sql).take(64).collect();
    w.first().map(String::as_str) == Some("COPY")
        && w.windows(2).any(|p| p[0] == "FROM" && p[1] == "STDIN")
}

impl Framer for PostgresConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        loop {
            let data = self.client.data();
            if !self.started {
                if data.first() == Some(&0x16) {
                    return Err(Opaque("postgres: the client starts with TLS".into()));
                }
                if data.len() < 8 {
                    return Ok(out);
                }
                let len = be32(data) as usize;
                if !(8..=MAX_STARTUP).contains(&len) {
                    return Err(Opaque(format!(
                        "postgres: bad startup message length {len}"
                    )));
                }
                if data.len() < len {
                    return Ok(out);
                }
                let code = be32(&data[4..]);
                self.client.consume(len);
                let replies = match code {
                    SSL_REQUEST | GSSENC_REQUEST => {
                        self.encryption.push_back(if code == SSL_REQUEST {
                            Encryption::Ssl
                        } else {
                            Encryption::Gss
                        });
                        1
                    }
                    CANCEL_REQUEST => {
                        self.started = true;
                        0
                    }
                    c if c >> 16 == 3 => {
                        self.started = true;
                        1
                    }
                    c => {
                        return Err(Opaque(format!(
                            "postgres: unsupported protocol or request code {c}"
                        )))
                    }
                };
                let r = request(self.client.take(), Fields::new(), false, replies);
                self.pending.push(&r, Effect::None)?;
                out.push(r);
                continue;
            }
            if data.len() < 5 {
                return Ok(out);
            }
            let kind = data[0];
            let len = be32(&data[1..]) as usize;
            if len < 4 {
                return Err(Opaque(format!("postgres: bad message length {len}")));
            }
            if len - 4 > MAX_MESSAGE {
                return Err(too_large("a postgres message"));
            }
            if data.len() < len + 1 {
                return Ok(out);
            }
            let body = data[5..len + 1].to_vec();
            self.client.consume(len + 1);
            self.message(kind, &body, &mut out)?;
        }
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        self.server.extend(bytes);
        let mut done = 0;
        loop {
            let data = self.server.data();
            if data.is_empty() {
                return Ok(done);
            }
            if let Some(&enc) = self.encryption.front() {
                match (enc, data[0]) {
                    (Encryption::Ssl, b'S') => {
                        return Err(Opaque("postgres: the server accepted TLS".into()))
                    }
                    (Encryption::Gss, b'G') => {
                        return Err(Opaque(
                            "postgres: the server accepted GSS encryption".into(),
                        ))
                    }
                    (_, b'N') => {
                        self.server.consume(1);
                        self.server.take();
                        self.encryption.pop_front();
                        self.pending.complete();
                        done += 1;
                        continue;
                    }
                    // An old server's ErrorResponse: read below as one.
                    (_, b'E') => {
                        self.encryption.pop_front();
                    }
                    (_, other) => {
                        return Err(Opaque(format!(
                            "postgres: unexpected answer {other:#04x} to an encryption request"
                        )))
                    }
                }
            }
            if data.len() < 5 {
                return Ok(done);
            }
            let kind = data[0];
            let len = be32(&data[1..]) as usize;
            if len < 4 || !b"RKZENSACDTIn123stGHWdcVv".contains(&kind) {
                return Err(Opaque(format!(
                    "postgres: unexpected server message {:?} (length {len})",
                    kind as char
                )));
            }
            match kind {
                b'Z' => {
                    if data.len() < 6 {
                        return Ok(done);
                    }
                    self.status = data[5];
                    self.ready = true;
                    self.server.skip(len + 1);
                    self.pending.complete();
                    done += 1;
                }
                b'E' if !self.ready => {
                    // Startup or authentication failed; the server closes next.
                    if data.len() < len + 1 {
                        if len > MAX_MESSAGE {
                            return Err(too_large("a postgres error"));
                        }
                        return Ok(done);
                    }
                    self.server.skip(len + 1);
                    self.pending.complete();
                    done += 1;
                }
                _ => self.server.skip(len + 1),
            }
            self.server.take();
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let Answer::Error { message, status } = answer else {
            return Err("postgres offers no response(): only error()".into());
        };
        if request.replies == 0 {
            return Err(
                "postgres: this part of a batch gets no reply of its own (the client \
                        flushed before Sync, or COPY ignores its Sync): it can be delayed or \
                        dropped, not answered"
                    .into(),
            );
        }
        let sqlstate = match status {
            None => "XX000".to_string(),
            Some(s) => sqlstate(s)?,
        };
        // The status the client sees once every earlier request is answered.
        let mut tx = if self.status == 0 { b'I' } else { self.status };
        for e in self.pending.preceding(request) {
            tx = match (e.answered, e.kind, tx) {
                (true, _, b'I') => b'I',
                (true, _, _) => b'E',
                (false, Effect::Begin, b'I') => b'T',
                (false, Effect::End, _) => b'I',
                _ => tx,
            };
        }
        self.pending.answered(request);
        let tx = if tx == b'I' { b'I' } else { b'E' };
        let message = message.as_deref().unwrap_or("faultbox injected error");
        let mut body = Vec::new();
        for (code, text) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', sqlstate.as_str()),
            (b'M', message),
        ] {
            body.push(code);
            body.extend(text.bytes().filter(|&b| b != 0));
            body.push(0);
        }
        body.push(0);
        let mut bytes = vec![b'E'];
        bytes.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[b'Z', 0, 0, 0, 5, tx]);
        Ok(Reply { bytes })
    }
}

impl PostgresConversation {
    /// Handles one complete typed message from the client.
    fn message(&mut self, kind: u8, body: &[u8], out: &mut Vec<Request>) -> Result<(), Opaque> {
        let malformed = || Opaque(format!("postgres: malformed {:?} message", kind as char));
        match kind {
            b'Q' => {
                let (query, _) = cstr(body).ok_or_else(malformed)?;
                let effect = effect(&query);
                self.report(fields([("query", query)]), true, 1, effect, out)?;
            }
            b'P' => {
                let (name, rest) = cstr(body).ok_or_else(malformed)?;
                let (query, _) = cstr(rest).ok_or_else(malformed)?;
                if self.batch.parsed.is_none() {
                    self.batch.parsed = Some(query.clone());
                }
                self.statements.insert(name, query);
            }
            b'B' => {
                let (portal, rest) = cstr(body).ok_or_else(malformed)?;
                let (statement, _) = cstr(rest).ok_or_else(malformed)?;
                match self.statements.get(&statement).cloned() {
                    Some(q) => self.portals.insert(portal, q),
                    None => self.portals.remove(&portal),
                }
            }
            b'E' => {
                let (portal, _) = cstr(body).ok_or_else(malformed)?;
                if let Some(q) = self.portals.get(&portal).cloned() {
                    if is_copy_in(&q) {
                        self.batch.copy_in = true;
                        self.copy_in = true;
                    }
                    if self.batch.executed.is_none() {
                        self.batch.executed = Some(q);
                    }
                }
            }
            b'C' => {
                let (&what, rest) = body.split_first().ok_or_else(malformed)?;
                let (name, _) = cstr(rest).ok_or_else(malformed)?;
                match what {
                    b'S' => self.statements.remove(&name),
                    _ => self.portals.remove(&name),
                }
            }
            b'D' => {}
            b'H' => {
                if !self.copy_in {
                    // The client waits for what it sent: release it.
                    let f = self.batch_fields();
                    let matchable = !f.is_empty() && !self.batch.split;
                    self.report(f, matchable, 0, Effect::None, out)?;
                }
            }
            b'S' => {
                let f = self.batch_fields();
                let matchable = !f.is_empty() && !self.batch.split;
                let effect = self
                    .batch
                    .query()
                    .map(|q| effect(q))
                    .unwrap_or(Effect::None);
                // During COPY FROM STDIN the server ignores Sync: no reply.
                let replies = usize::from(!self.copy_in);
                self.report(f, matchable, replies, effect, out)?;
                self.batch = Batch::default();
            }
            b'd' | b'c' | b'f' => {
                if kind != b'd' {
                    self.copy_in = false;
                }
                self.report(Fields::new(), false, 0, Effect::None, out)?;
            }
            b'F' => self.report(Fields::new(), false, 1, Effect::None, out)?,
            b'p' | b'X' => self.report(Fields::new(), false, 0, Effect::None, out)?,
            other => {
                return Err(Opaque(format!(
                    "postgres: unknown frontend message {:?}",
                    other as char
                )))
            }
        }
        if self.client.held() > MAX_MESSAGE {
            // A batch too large to hold: release it; the rest of it cannot be acted on.
            self.batch.split = true;
            self.report(Fields::new(), false, 0, Effect::None, out)?;
        }
        Ok(())
    }

    fn batch_fields(&self) -> Fields {
        match self.batch.query() {
            Some(q) => fields([("query", q.clone())]),
            None => Fields::new(),
        }
    }

    fn report(
        &mut self,
        f: Fields,
        matchable: bool,
        replies: usize,
        effect: Effect,
        out: &mut Vec<Request>,
    ) -> Result<(), Opaque> {
        let r = request(self.client.take(), f, matchable, replies);
        self.pending.push(&r, effect)?;
        out.push(r);
        Ok(())
    }
}

/// The SQLSTATE `error(status=)` gives: five digits or capital letters (`42P01`), or
/// a number written with up to five digits (`53100`).
pub fn sqlstate(code: &crate::Code) -> Result<String, String> {
    match code {
        crate::Code::Number(n) if (0..=99_999).contains(n) => Ok(format!("{n:05}")),
        crate::Code::Text(t)
            if t.len() == 5
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) =>
        {
            Ok(t.clone())
        }
        other => Err(format!(
            "postgres: SQLSTATE {other} is not five digits or capital letters (such as 42P01)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    fn z(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }

    fn cs(parts: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    }

    fn untyped(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut b = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    fn parse(name: &str, q: &str) -> Vec<u8> {
        let mut b = cs(&[name, q]);
        b.extend_from_slice(&[0, 0]);
        msg(b'P', &b)
    }

    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        let mut b = cs(&[portal, stmt]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    fn execute() -> Vec<u8> {
        msg(b'E', &[0, 0, 0, 0, 0])
    }

    fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    /// A session: SSL refused, SCRAM, simple and extended queries, COPY both ways
    /// of asking, a flush mid-batch.
    fn session() -> Vec<(Dir, Vec<u8>)> {
        let c = |parts: &[Vec<u8>]| (Dir::C, parts.concat());
        let s = |parts: &[Vec<u8>]| (Dir::S, parts.concat());
        vec![
            c(&[untyped(SSL_REQUEST, &[])]),
            s(&[b"N".to_vec()]),
            c(&[untyped(
                196608,
                &cs(&["user", "app", "database", "app", ""]),
            )]),
            s(&[msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0")]),
            c(&[msg(b'p', b"SCRAM-SHA-256\0\0\0\0\x04n,,x")]),
            s(&[msg(b'R', b"\0\0\0\x0br=abc")]),
            c(&[msg(b'p', b"c=biws,r=abc,p=xyz")]),
            s(&[
                msg(b'R', b"\0\0\0\x0cv=xyz"),
                msg(b'R', &[0, 0, 0, 0]),
                msg(b'S', &cs(&["server_version", "15"])),
                msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
                z(b'I'),
            ]),
            c(&[msg(b'Q', &cs(&["BEGIN"]))]),
            s(&[msg(b'C', &cs(&["BEGIN"])), z(b'T')]),
            c(&[
                parse("s1", "INSERT INTO t VALUES ($1)"),
                bind("", "s1"),
                msg(b'D', b"P\0"),
                execute(),
                sync(),
            ]),
            s(&[
                msg(b'1', &[]),
                msg(b'2', &[]),
                msg(b'n', &[]),
                msg(b'C', &cs(&["INSERT 0 1"])),
                z(b'T'),
            ]),
            c(&[bind("", "s1"), execute(), sync()]),
            s(&[
                msg(b'2', &[]),
                msg(b'E', &cs(&["SERROR", "C23505", "Mdup", ""])),
                z(b'E'),
            ]),
            c(&[msg(b'Q', &cs(&["ROLLBACK"]))]),
            s(&[msg(b'C', &cs(&["ROLLBACK"])), z(b'I')]),
            c(&[msg(b'Q', &cs(&["COPY t FROM STDIN"]))]),
            s(&[msg(b'G', &[0, 0, 1, 0, 0])]),
            c(&[msg(b'd', b"1\n"), msg(b'd', b"2\n"), msg(b'c', &[])]),
            s(&[msg(b'C', &cs(&["COPY 2"])), z(b'I')]),
            c(&[
                parse("", "copy t from stdin"),
                bind("", ""),
                execute(),
                sync(),
            ]),
            s(&[msg(b'1', &[]), msg(b'2', &[]), msg(b'G', &[0, 0, 1, 0, 0])]),
            c(&[msg(b'd', b"3\n"), msg(b'c', &[]), sync()]),
            s(&[msg(b'C', &cs(&["COPY 1"])), z(b'I')]),
            c(&[msg(b'Q', &cs(&["COPY t TO STDOUT"]))]),
            s(&[
                msg(b'H', &[0, 0, 1, 0, 0]),
                msg(b'd', b"1\n"),
                msg(b'c', &[]),
                msg(b'C', &cs(&["COPY 1"])),
                z(b'I'),
            ]),
            c(&[parse("", "SELECT 1"), msg(b'D', b"S\0"), msg(b'H', &[])]),
            s(&[msg(b'1', &[]), msg(b't', &[0, 0]), msg(b'T', &[0, 0])]),
            c(&[bind("", ""), execute(), sync()]),
            s(&[
                msg(b'2', &[]),
                msg(b'D', &[0, 1, 0, 0, 0, 1, b'1']),
                msg(b'C', &cs(&["SELECT 1"])),
                z(b'I'),
            ]),
            c(&[msg(b'X', &[])]),
        ]
    }

    #[test]
    fn a_whole_session_at_every_cut() {
        let script = session();
        let o = check_cuts(&Postgres, &script);
        let summary: Vec<_> = o
            .requests
            .iter()
            .map(|r| {
                (
                    r.fields.get("query").map(String::as_str),
                    r.matchable,
                    r.replies,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (None, false, 1), // SSLRequest
                (None, false, 1), // startup
                (None, false, 0), // SASLInitialResponse
                (None, false, 0), // SASLResponse
                (Some("BEGIN"), true, 1),
                (Some("INSERT INTO t VALUES ($1)"), true, 1),
                (Some("INSERT INTO t VALUES ($1)"), true, 1),
                (Some("ROLLBACK"), true, 1),
                (Some("COPY t FROM STDIN"), true, 1),
                (None, false, 0),
                (None, false, 0),
                (None, false, 0),
                (Some("copy t from stdin"), true, 0), // its Sync is ignored
                (None, false, 0),
                (None, false, 0),
                (None, false, 1), // the Sync after CopyDone
                (Some("COPY t TO STDOUT"), true, 1),
                (Some("SELECT 1"), true, 0), // flushed
                (Some("SELECT 1"), true, 1),
                (None, false, 0), // Terminate
            ]
        );
        let client_bytes: usize = script
            .iter()
            .filter(|(d, _)| *d == Dir::C)
            .map(|(_, b)| b.len())
            .sum();
        assert_eq!(
            o.requests.iter().map(|r| r.len).sum::<usize>(),
            client_bytes
        );
        assert_eq!(o.total_responses(), o.total_replies());
    }

    fn answer_bytes(status: u8) -> Vec<u8> {
        let mut b = msg(b'E', &cs(&["SERROR", "VERROR", "C53100", "Mdisk full", ""]));
        b.extend(z(status));
        b
    }

    #[test]
    fn sqlstates() {
        use crate::Code;
        assert_eq!(sqlstate(&Code::Number(53100)).unwrap(), "53100");
        assert_eq!(sqlstate(&Code::Number(1)).unwrap(), "00001");
        assert_eq!(sqlstate(&Code::Text("42P01".into())).unwrap(), "42P01");
        assert!(sqlstate(&Code::Text("42p01".into())).is_err());
        assert!(sqlstate(&Code::Text("4201".into())).is_err());
        assert!(sqlstate(&Code::Number(100_000)).is_err());
    }

    #[test]
    fn answers_keep_the_transaction_status() {
        let err = Answer::Error {
            message: Some("disk full".into()),
            status: Some(crate::Code::Number(53100)),
        };
        let mut c = Postgres.conversation();
        c.client(&untyped(196608, &cs(&["user", "u", ""]))).unwrap();
        assert_eq!(
            c.server(&[msg(b'R', &[0, 0, 0, 0]), z(b'I')].concat()),
            Ok(1)
        );
        let r = c
            .client(&msg(b'Q', &cs(&["INSERT INTO t VALUES (1)"])))
            .unwrap()
            .remove(0);
        assert_eq!(c.answer(&r, &err).unwrap().bytes, answer_bytes(b'I'));
        // Pipelined: BEGIN still in flight when the INSERT is answered.
        let rs = c
            .client(
                &[
                    msg(b'Q', &cs(&["begin"])),
                    parse("", "INSERT INTO t VALUES (2)"),
                    bind("", ""),
                    execute(),
                    sync(),
                ]
                .concat(),
            )
            .unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(c.answer(&rs[1], &err).unwrap().bytes, answer_bytes(b'E'));
        assert_eq!(
            c.server(&[msg(b'C', &cs(&["BEGIN"])), z(b'T')].concat()),
            Ok(1)
        );
        let r = c.client(&msg(b'Q', &cs(&["SELECT 1"]))).unwrap().remove(0);
        assert_eq!(c.answer(&r, &err).unwrap().bytes, answer_bytes(b'E'));
        let default = Answer::Error {
            message: None,
            status: None,
        };
        let bytes = c.answer(&r, &default).unwrap().bytes;
        assert!(bytes.windows(6).any(|w| w == b"CXX000"));
        let resp = Answer::Response {
            status: None,
            body: None,
            value: None,
        };
        assert!(c.answer(&r, &resp).is_err());
    }

    #[test]
    fn tls_and_garbage_are_opaque() {
        let ssl = [(Dir::C, untyped(SSL_REQUEST, &[])), (Dir::S, b"S".to_vec())];
        assert!(play_whole(&Postgres, &ssl).is_err());
        assert!(play_whole(
            &Postgres,
            &[(Dir::C, b"\x16\x03\x01\x00\x05hello".to_vec())]
        )
        .is_err());
        let mut c = Postgres.conversation();
        c.client(&untyped(196608, &cs(&["user", "u", ""]))).unwrap();
        assert!(c.client(b"?\0\0\0\x04").is_err());
        assert!(
            c.client(&msg(b'Q', &cs(&["SELECT 1"]))).is_err(),
            "stays opaque"
        );
    }
}
