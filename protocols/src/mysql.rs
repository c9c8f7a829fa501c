//! MySQL and MariaDB: the client/server protocol (4.1+).
//!
//! - Requests: the client's handshake response (not matchable; a `CLIENT_SSL`
//!   request instead makes the connection opaque, since TLS follows), then one
//!   request per command packet (sequence id 0). Packets with another sequence id
//!   continue an exchange (authentication switch and more-data rounds of
//!   caching_sha2_password or mysql_native_password, LOCAL INFILE contents): they
//!   are reported as they arrive, not matchable, with no reply.
//! - Responses: the server's greeting is not one. Handshake response and
//!   `COM_CHANGE_USER`: up to the OK or ERR that ends authentication. `COM_QUERY`
//!   and `COM_STMT_EXECUTE`: OK, ERR, or result sets (column count, column
//!   definitions, an EOF unless `CLIENT_DEPRECATE_EOF` was negotiated, rows, and the
//!   terminating EOF or OK), chained while `SERVER_MORE_RESULTS_EXISTS` is set,
//!   LOCAL INFILE requests included. A row is never mistaken for a terminator: in a
//!   result set only `0xfe` in a packet shorter than 0xffffff bytes (and `0xff`,
//!   an error) ends the rows; a row whose first column is NULL (`0xfb`) or an empty
//!   string (`0x00`), or a binary row (`0x00` header), is a row. `COM_STMT_PREPARE`:
//!   the prepare OK (whose statement id Faultbox learns) and its parameter and
//!   column definitions, or ERR. `COM_STMT_FETCH`: rows up to the terminator.
//!   `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA` and `COM_QUIT` get no response.
//!   Every other command gets one packet. Rows are skipped, never held.
//! - Match key: `query`, for `COM_QUERY`, `COM_STMT_PREPARE` (the statement's
//!   text) and `COM_STMT_EXECUTE` (the text of the statement it runs, learned at
//!   prepare). Other commands are not matchable.
//! - Answers: `error()` → an ERR packet with sequence id 1: error code `status`
//!   when given (1..=65535), else 1105 (ER_UNKNOWN_ERROR); SQLSTATE 40001 for 1213
//!   (deadlock), 23000 for 1062/1451/1452, 42S02 for 1146, 42000 for 1064, HY000
//!   otherwise; message `message` or "faultbox injected error". `response()` is not
//!   offered.
//! - Limits: TLS, the compressed protocol, pre-4.1 clients and replication streams
//!   (`COM_BINLOG_DUMP`) make the connection opaque, as does a client packet of
//!   0xffffff bytes or more (a command over MAX_MESSAGE). A `COM_QUERY` with query
//!   attributes (MySQL 8 `CLIENT_QUERY_ATTRIBUTES`) that actually carries
//!   attributes has no `query`.

use crate::common::{fields, request, Framer, Inbox, Latched, Ledger, Names};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Conversation, Fields, Opaque, Protocol, Reply, Request};

/// MySQL / MariaDB.
pub struct Mysql;

impl Protocol for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
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
        Latched::boxed(MysqlConversation::default())
    }
}

const CLIENT_MYSQL: u32 = 1;
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
/// MariaDB's extended capability: result set metadata may be omitted.
const MARIADB_CLIENT_CACHE_METADATA: u32 = 1 << 4;

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_CHANGE_USER: u8 = 0x11;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
const COM_STMT_BULK_EXECUTE: u8 = 0xfa;

/// What a command's response looks like.
#[derive(Clone, Debug)]
enum Kind {
    /// Authentication: packets up to OK or ERR.
    Auth,
    /// OK, ERR, LOCAL INFILE or result sets, chained by MORE_RESULTS.
    Results { cursor: bool, state: ResultState },
    /// A prepare OK and its definitions, or ERR.
    Prepare {
        query: Option<String>,
        defs: Option<u64>,
    },
    /// Rows up to a terminator (`COM_STMT_FETCH`).
    Rows,
    /// Column definitions up to EOF (`COM_FIELD_LIST`).
    FieldList,
    /// One packet.
    Simple,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResultState {
    Start,
    /// Column definitions still to come.
    Columns(u64),
    /// The EOF after the column definitions.
    ColumnsEof,
    Rows,
}

#[derive(Default)]
struct MysqlConversation {
    client: Inbox,
    /// The handshake response was seen.
    handshaken: bool,
    /// Negotiated capabilities (server ∩ client).
    caps: u32,
    cache_metadata: bool,
    statements: Names<u32>,
    /// MariaDB runs statement id 0xffffffff as "the last one prepared".
    last_prepared: Option<String>,
    server: Inbox,
    server_caps: u32,
    server_ext_caps: u32,
    greeted: bool,
    /// The previous server packet was 0xffffff bytes: this one continues it.
    continuation: bool,
    pending: Ledger<Kind>,
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A length-encoded integer: its value and size.
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = b.split_first()?;
    let (size, v) = match first {
        0..=0xfa => return Some((first as u64, 1)),
        0xfc => (2, rest.get(..2).map(|x| le16(x) as u64)?),
        0xfd => (
            3,
            rest.get(..3)
                .map(|x| x[0] as u64 | (x[1] as u64) << 8 | (x[2] as u64) << 16)?,
        ),
        0xfe => (
            8,
            rest.get(..8)
                .map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))?,
        ),
        _ => return None,
    };
    Some((v, size + 1))
}

/// The status flags of an EOF (`0xfe`, warnings, status) or OK packet.
fn status_flags(payload: &[u8], deprecate_eof: bool) -> u16 {
    if payload.first() == Some(&0xfe) && (!deprecate_eof || payload.len() < 9) && payload.len() >= 5
    {
        return le16(&payload[3..5]);
    }
    // OK: header, affected rows, last insert id, status.
    let mut i = 1;
    for _ in 0..2 {
        match payload.get(i..).and_then(lenenc) {
            Some((_, n)) => i += n,
            None => return 0,
        }
    }
    payload.get(i..i + 2).map(le16).unwrap_or(0)
}

impl Framer for MysqlConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        loop {
            let data = self.client.data();
            if data.len() < 4 {
                return Ok(out);
            }
            let len = data[0] as usize | (data[1] as usize) << 8 | (data[2] as usize) << 16;
            let seq = data[3];
            if len == 0xffffff {
                return Err(Opaque(format!(
                    "mysql: a client packet of 16 MiB or more (over {MAX_MESSAGE} bytes)"
                )));
            }
            if data.len() < 4 + len {
                return Ok(out);
            }
            let payload = data[4..4 + len].to_vec();
            self.client.consume(4 + len);
            let r = if !self.handshaken {
                self.handshake_response(&payload)?
            } else if seq != 0 || payload.is_empty() {
                request(self.client.take(), Fields::new(), false, 0)
            } else {
                let (kind, query, replies) = self.command(&payload)?;
                let r = match query {
                    Some(q) => request(self.client.take(), fields([("query", q)]), true, replies),
                    None => request(self.client.take(), Fields::new(), false, replies),
                };
                if let Some(kind) = kind {
                    self.pending.push(&r, kind)?;
                }
                r
            };
            out.push(r);
        }
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        self.server.extend(bytes);
        let mut done = 0;
        loop {
            if self.server.skipping() {
                return Ok(done);
            }
            let data = self.server.data();
            if data.len() < 4 {
                return Ok(done);
            }
            let len = data[0] as usize | (data[1] as usize) << 8 | (data[2] as usize) << 16;
            let continues = len == 0xffffff;
            if std::mem::replace(&mut self.continuation, continues) {
                // The rest of a large packet already judged by its first part.
                self.server.skip(4 + len);
                self.server.take();
                continue;
            }
            let first = data.get(4).copied();
            if len > 0 && first.is_none() {
                return Ok(done);
            }
            // Packets whose content matters are small; wait for all of them.
            let whole = data.len() >= 4 + len;
            let needs_whole = self.needs_whole(first, len);
            let data = self.server.data();
            if needs_whole && !whole {
                if len > MAX_MESSAGE {
                    return Err(Opaque(format!("mysql: a {len}-byte status packet")));
                }
                return Ok(done);
            }
            let payload = if needs_whole {
                data[4..4 + len].to_vec()
            } else {
                first.into_iter().collect()
            };
            self.server.skip(4 + len);
            self.server.take();
            done += self.packet(&payload, len)?;
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let Answer::Error { message, status } = answer else {
            return Err("mysql offers no response(): only error()".into());
        };
        if request.replies == 0 {
            return Err("mysql: this command gets no response to stand in for".into());
        }
        let code = match status {
            None => 1105,
            Some(crate::Code::Number(s)) if (1..=65535).contains(s) => *s as u16,
            Some(s) => return Err(format!("mysql: error code {s} is not within 1..=65535")),
        };
        let sqlstate = match code {
            1213 => "40001",
            1062 | 1451 | 1452 => "23000",
            1146 => "42S02",
            1064 => "42000",
            _ => "HY000",
        };
        self.pending.answered(request);
        let message = message.as_deref().unwrap_or("faultbox injected error");
        let mut payload = vec![0xff];
        payload.extend_from_slice(&code.to_le_bytes());
        if self.caps & CLIENT_PROTOCOL_41 != 0 || self.caps == 0 {
            payload.push(b'#');
            payload.extend_from_slice(sqlstate.as_bytes());
        }
        payload.extend_from_slice(message.as_bytes());
        payload.truncate(0xfffff0);
        let len = payload.len() as u32;
        let mut bytes = len.to_le_bytes()[..3].to_vec();
        bytes.push(1);
        bytes.extend_from_slice(&payload);
        Ok(Reply { bytes })
    }
}

impl MysqlConversation {
    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    /// The client's handshake response (or SSL request).
    fn handshake_response(&mut self, payload: &[u8]) -> Result<Request, Opaque> {
        if payload.len() < 4 {
            return Err(Opaque("mysql: a handshake response too short".into()));
        }
        let caps = le32(payload);
        if caps & CLIENT_PROTOCOL_41 == 0 {
            return Err(Opaque("mysql: a pre-4.1 client".into()));
        }
        if caps & CLIENT_SSL != 0 && payload.len() == 32 {
            return Err(Opaque("mysql: the client switches to TLS".into()));
        }
        let server_caps = if self.greeted {
            self.server_caps
        } else {
            u32::MAX
        };
        self.caps = caps & server_caps;
        if self.caps & CLIENT_COMPRESS != 0 {
            return Err(Opaque("mysql: the compressed protocol".into()));
        }
        if server_caps & CLIENT_MYSQL == 0 && payload.len() >= 32 {
            let ext = le32(&payload[28..32]);
            self.cache_metadata = ext & self.server_ext_caps & MARIADB_CLIENT_CACHE_METADATA != 0;
        }
        self.handshaken = true;
        let r = request(self.client.take(), Fields::new(), false, 1);
        self.pending.push(&r, Kind::Auth)?;
        Ok(r)
    }

    /// A command: its response kind (none when it gets no response), its query
    /// text if matchable, and its reply count.
    fn command(&mut self, payload: &[u8]) -> Result<(Option<Kind>, Option<String>, usize), Opaque> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let results = |cursor| Kind::Results {
            cursor,
            state: ResultState::Start,
        };
        Ok(match payload[0] {
            COM_QUIT | COM_STMT_SEND_LONG_DATA => (None, None, 0),
            COM_STMT_CLOSE => {
                if let Some(id) = payload.get(1..5) {
                    self.statements.remove(&le32(id));
                }
                (None, None, 0)
            }
            COM_QUERY => (Some(results(false)), self.query_text(&payload[1..]), 1),
            COM_STMT_PREPARE => {
                let q = text(&payload[1..]);
                self.last_prepared = Some(q.clone());
                (
                    Some(Kind::Prepare {
                        query: Some(q.clone()),
                        defs: None,
                    }),
                    Some(q),
                    1,
                )
            }
            COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => {
                let q = payload.get(1..5).and_then(|id| match le32(id) {
                    0xffff_ffff => self.last_prepared.clone(),
                    id => self.statements.get(&id).cloned(),
                });
                let cursor = payload[0] == COM_STMT_EXECUTE
                    && payload.get(5).is_some_and(|flags| flags & 0x07 != 0);
                (Some(results(cursor)), q, 1)
            }
            COM_STMT_FETCH => (Some(Kind::Rows), None, 1),
            COM_FIELD_LIST => (Some(Kind::FieldList), None, 1),
            COM_CHANGE_USER => (Some(Kind::Auth), None, 1),
            COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID => {
                return Err(Opaque("mysql: a replication stream".into()))
            }
            _ => (Some(Kind::Simple), None, 1),
        })
    }

    /// The text of a `COM_QUERY`, past its (empty) query attributes when those were
    /// negotiated.
    fn query_text(&self, body: &[u8]) -> Option<String> {
        let body = if self.caps & CLIENT_QUERY_ATTRIBUTES != 0 {
            let (count, n) = lenenc(body)?;
            let (_sets, m) = lenenc(body.get(n..)?)?;
            if count != 0 {
                return None;
            }
            body.get(n + m..)?
        } else {
            body
        };
        Some(String::from_utf8_lossy(body).into_owned())
    }

    /// Whether reading a packet starting with `first` needs its whole payload.
    fn needs_whole(&mut self, first: Option<u8>, len: usize) -> bool {
        if !self.greeted {
            return true;
        }
        let deprecate = self.deprecate_eof();
        let terminator = |b: Option<u8>| match b {
            Some(0xfe) => len < 0xffffff,
            Some(0xff) => true,
            _ => false,
        };
        match self.pending.front() {
            None => false,
            // Small packets that can end a response: it counts once whole.
            Some(Kind::Simple) | Some(Kind::Auth) | Some(Kind::Prepare { .. }) => true,
            Some(Kind::Results { state, .. }) => match state {
                ResultState::Start => true,
                ResultState::Columns(_) => false,
                ResultState::ColumnsEof => true,
                ResultState::Rows => {
                    terminator(first) && (deprecate || len < 9 || first == Some(0xff))
                }
            },
            Some(Kind::Rows) | Some(Kind::FieldList) => terminator(first),
        }
    }

    /// Reads one server packet (`payload` is whole when [`Self::needs_whole`] said
    /// so, else just its first byte). Returns how many responses it completed.
    fn packet(&mut self, payload: &[u8], len: usize) -> Result<usize, Opaque> {
        if !self.greeted {
            return self.greeting(payload);
        }
        let deprecate = self.deprecate_eof();
        let cache_metadata = self.cache_metadata;
        let first = payload.first().copied();
        let is_end = |first: Option<u8>| match first {
            Some(0xfe) => len < 0xffffff && (deprecate || len < 9),
            _ => false,
        };
        let Some(kind) = self.pending.front() else {
            if first == Some(0xff) {
                // An error before the server closes (a killed connection).
                return Ok(0);
            }
            return Err(Opaque("mysql: a server packet nobody asked for".into()));
        };
        let complete = match kind {
            Kind::Simple => true,
            Kind::Auth => matches!(first, Some(0x00) | Some(0xff)),
            Kind::FieldList | Kind::Rows => first == Some(0xff) || is_end(first),
            Kind::Prepare { query, defs } => match defs {
                None => {
                    if first != Some(0x00) || payload.len() < 9 {
                        true
                    } else {
                        let id = le32(&payload[1..5]);
                        let columns = le16(&payload[5..7]) as u64;
                        let params = le16(&payload[7..9]) as u64;
                        if let Some(q) = query.take() {
                            self.statements.insert(id, q);
                        }
                        let eofs = if deprecate {
                            0
                        } else {
                            u64::from(params > 0) + u64::from(columns > 0)
                        };
                        let n = params + columns + eofs;
                        if n == 0 {
                            true
                        } else {
                            // Re-borrow: the map insert above ended the first.
                            if let Some(Kind::Prepare { defs, .. }) = self.pending.front() {
                                *defs = Some(n);
                            }
                            false
                        }
                    }
                }
                Some(n) => {
                    *n -= 1;
                    *n == 0
                }
            },
            Kind::Results { cursor, state } => match *state {
                ResultState::Start => match first {
                    Some(0x00) => {
                        status_flags(payload, deprecate) & SERVER_MORE_RESULTS_EXISTS == 0
                    }
                    Some(0xff) => true,
                    // LOCAL INFILE: the client sends the file; OK or ERR follows.
                    Some(0xfb) => false,
                    _ => {
                        let (columns, n) = lenenc(payload).ok_or_else(|| {
                            Opaque("mysql: a result set without a column count".into())
                        })?;
                        let metadata = !cache_metadata || payload.get(n).copied() != Some(0);
                        *state = if columns == 0 {
                            return Err(Opaque("mysql: a result set of no columns".into()));
                        } else if metadata {
                            ResultState::Columns(columns)
                        } else if deprecate {
                            ResultState::Rows
                        } else {
                            ResultState::ColumnsEof
                        };
                        false
                    }
                },
                ResultState::Columns(n) => {
                    *state = if n > 1 {
                        ResultState::Columns(n - 1)
                    } else if deprecate {
                        ResultState::Rows
                    } else {
                        ResultState::ColumnsEof
                    };
                    false
                }
                ResultState::ColumnsEof => {
                    if first == Some(0xff) {
                        true
                    } else {
                        let flags = status_flags(payload, false);
                        if *cursor && flags & SERVER_STATUS_CURSOR_EXISTS != 0 {
                            true
                        } else {
                            *state = ResultState::Rows;
                            false
                        }
                    }
                }
                ResultState::Rows => {
                    if first == Some(0xff) {
                        true
                    } else if is_end(first) {
                        let flags = status_flags(payload, deprecate);
                        if flags & SERVER_MORE_RESULTS_EXISTS != 0 {
                            *state = ResultState::Start;
                            false
                        } else {
                            true
                        }
                    } else {
                        false
                    }
                }
            },
        };
        if complete {
            self.pending.complete();
            Ok(1)
        } else {
            Ok(0)
        }
    }

    /// The server's first packet: handshake v10 (or an error before closing).
    fn greeting(&mut self, payload: &[u8]) -> Result<usize, Opaque> {
        self.greeted = true;
        match payload.first() {
            Some(0xff) => return Ok(0),
            Some(10) => {}
            _ => return Err(Opaque("mysql: not a protocol 10 handshake".into())),
        }
        let Some(end) = payload[1..].iter().position(|&b| b == 0) else {
            return Err(Opaque("mysql: a malformed handshake".into()));
        };
        // Version, NUL, connection id (4), auth data (8), filler (1).
        let at = 1 + end + 1 + 4 + 8 + 1;
        let lower = payload.get(at..at + 2).map(le16).unwrap_or(0) as u32;
        let upper = payload.get(at + 5..at + 7).map(le16).unwrap_or(0) as u32;
        self.server_caps = lower | upper << 16;
        // MariaDB puts its extended capabilities in the last 4 reserved bytes.
        self.server_ext_caps = payload.get(at + 14..at + 18).map(le32).unwrap_or(0);
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        b.push(seq);
        b.extend_from_slice(payload);
        b
    }

    fn greeting(caps: u32) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"10.11.6-MariaDB\0");
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(b"12345678\0");
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[2, 0]);
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"123456789012\0mysql_native_password\0");
        pkt(0, &p)
    }

    fn handshake_response(caps: u32) -> Vec<u8> {
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 45]);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"app\0\x14");
        p.extend_from_slice(&[7; 20]);
        p.extend_from_slice(b"mysql_native_password\0");
        pkt(1, &p)
    }

    fn ok(seq: u8, status: u16) -> Vec<u8> {
        let mut p = vec![0, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        pkt(seq, &p)
    }

    /// The end of a result set: EOF, or an OK with a 0xfe header.
    fn end(seq: u8, status: u16, deprecate: bool) -> Vec<u8> {
        let mut p = vec![0xfe, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        if deprecate {
            p.extend_from_slice(&[0, 0]);
        }
        pkt(seq, &p)
    }

    fn coldef(seq: u8, name: &str) -> Vec<u8> {
        let mut p = b"\x03def\x00\x01t\x01t".to_vec();
        p.push(name.len() as u8);
        p.extend_from_slice(name.as_bytes());
        p.push(name.len() as u8);
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&[0x0c, 0x21, 0, 0xff, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        pkt(seq, &p)
    }

    fn query(text: &str) -> Vec<u8> {
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(text.as_bytes());
        pkt(0, &p)
    }

    fn session(deprecate: bool) -> Vec<(Dir, Vec<u8>)> {
        let eof_flag = if deprecate { CLIENT_DEPRECATE_EOF } else { 0 };
        let caps = CLIENT_PROTOCOL_41 | 0x8000 | 0x80000 | 0x80 | 0x10000 | 0x20000 | eof_flag;
        let mut s = Vec::new();
        let c = |s: &mut Vec<(Dir, Vec<u8>)>, b: Vec<u8>| s.push((Dir::C, b));
        let v = |s: &mut Vec<(Dir, Vec<u8>)>, parts: Vec<Vec<u8>>| s.push((Dir::S, parts.concat()));
        // Metadata end (EOF) only without DEPRECATE_EOF.
        let meta_end = |seq: u8| {
            if deprecate {
                vec![]
            } else {
                end(seq, 2, false)
            }
        };
        v(&mut s, vec![greeting(caps | CLIENT_SSL)]);
        c(&mut s, handshake_response(caps));
        v(
            &mut s,
            vec![pkt(2, b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0")],
        );
        c(&mut s, pkt(3, &[9; 32]));
        v(&mut s, vec![pkt(4, &[1, 3]), ok(5, 2)]);
        c(&mut s, query("SELECT a, b FROM t"));
        let mut rs = vec![pkt(1, &[2]), coldef(2, "a"), coldef(3, "b"), meta_end(4)];
        rs.push(pkt(5, b"\xfb\x01x")); // first column NULL
        rs.push(pkt(6, b"\x00\x01y")); // first column empty
        rs.push(pkt(7, b"\x00\x00")); // both empty
        rs.push(pkt(8, b"\x01z\xfb"));
        rs.push(end(9, 2, deprecate));
        v(&mut s, rs);
        c(&mut s, query("CALL p()"));
        v(
            &mut s,
            vec![
                pkt(1, &[1]),
                coldef(2, "a"),
                meta_end(3),
                pkt(4, b"\x011"),
                end(5, 2 | SERVER_MORE_RESULTS_EXISTS, deprecate),
                ok(6, 2),
            ],
        );
        c(&mut s, pkt(0, b"\x16SELECT ? AS x"));
        let mut prep = vec![1, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        prep[0] = 0;
        v(
            &mut s,
            vec![
                pkt(1, &prep),
                coldef(2, "?"),
                meta_end(3),
                coldef(4, "x"),
                meta_end(5),
            ],
        );
        c(
            &mut s,
            pkt(
                0,
                &[
                    COM_STMT_EXECUTE,
                    7,
                    0,
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                    1,
                    0xfe,
                    0,
                    1,
                    b'5',
                ],
            ),
        );
        v(
            &mut s,
            vec![
                pkt(1, &[1]),
                coldef(2, "x"),
                meta_end(3),
                pkt(4, b"\x00\x00\x015"),
                end(5, 2, deprecate),
            ],
        );
        c(&mut s, pkt(0, &[COM_STMT_CLOSE, 7, 0, 0, 0]));
        c(&mut s, pkt(0, &[0x0e]));
        v(&mut s, vec![ok(1, 2)]);
        c(&mut s, query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
        v(&mut s, vec![pkt(1, b"\xfbf")]);
        c(&mut s, [pkt(2, b"1\n2\n"), pkt(3, b"")].concat());
        v(&mut s, vec![ok(4, 2)]);
        c(&mut s, query("SELECT nope"));
        v(&mut s, vec![pkt(1, b"\xff\x7a\x04#42S22Unknown column")]);
        c(&mut s, pkt(0, &[COM_QUIT]));
        s
    }

    #[test]
    fn sessions_at_every_cut() {
        for deprecate in [false, true] {
            let script = session(deprecate);
            let o = check_cuts(&Mysql, &script);
            let summary: Vec<_> = o
                .requests
                .iter()
                .map(|r| (r.fields.get("query").map(String::as_str), r.replies))
                .collect();
            assert_eq!(
                summary,
                [
                    (None, 1), // handshake response
                    (None, 0), // auth switch data
                    (Some("SELECT a, b FROM t"), 1),
                    (Some("CALL p()"), 1),
                    (Some("SELECT ? AS x"), 1),
                    (Some("SELECT ? AS x"), 1), // execute, by statement id
                    (None, 0),                  // close
                    (None, 1),                  // ping
                    (Some("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"), 1),
                    (None, 0),
                    (None, 0),
                    (Some("SELECT nope"), 1),
                    (None, 0), // quit
                ],
                "deprecate_eof {deprecate}"
            );
            // One response per server segment after the greeting, none before.
            assert_eq!(o.responses[0], 0);
            assert!(
                o.responses[1..].iter().all(|&n| n <= 1),
                "{:?}",
                o.responses
            );
            assert_eq!(
                o.total_responses(),
                o.total_replies(),
                "deprecate_eof {deprecate}"
            );
        }
    }

    #[test]
    fn answers_err_with_sequence_one() {
        let caps = CLIENT_PROTOCOL_41 | 0x80000;
        let mut c = Mysql.conversation();
        assert_eq!(c.server(&greeting(caps)), Ok(0));
        c.client(&handshake_response(caps)).unwrap();
        assert_eq!(c.server(&ok(2, 2)), Ok(1));
        let r = c
            .client(&query("INSERT INTO t VALUES (1)"))
            .unwrap()
            .remove(0);
        let err = Answer::Error {
            message: Some("disk full".into()),
            status: None,
        };
        let bytes = c.answer(&r, &err).unwrap().bytes;
        assert_eq!(bytes, pkt(1, b"\xff\x51\x04#HY000disk full"));
        let deadlock = Answer::Error {
            message: None,
            status: Some(crate::Code::Number(1213)),
        };
        let bytes = c.answer(&r, &deadlock).unwrap().bytes;
        assert_eq!(&bytes[4..13], b"\xff\xbd\x04#40001");
        let r = c
            .client(&pkt(0, &[COM_STMT_CLOSE, 1, 0, 0, 0]))
            .unwrap()
            .remove(0);
        assert!(c.answer(&r, &err).is_err(), "no response to stand in for");
    }

    #[test]
    fn tls_compression_and_garbage_are_opaque() {
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SSL;
        let mut ssl = caps.to_le_bytes().to_vec();
        ssl.extend_from_slice(&[0; 28]);
        let script = [(Dir::S, greeting(caps)), (Dir::C, pkt(1, &ssl))];
        assert!(play_whole(&Mysql, &script).is_err());
        let caps = CLIENT_PROTOCOL_41 | CLIENT_COMPRESS;
        let script = [(Dir::S, greeting(caps)), (Dir::C, handshake_response(caps))];
        assert!(play_whole(&Mysql, &script).is_err());
        assert!(play_whole(&Mysql, &[(Dir::S, pkt(0, b"\x09old"))]).is_err());
    }
}
