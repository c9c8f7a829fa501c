//! Redis: RESP2 and RESP3, pipelined.
//!
//! - Request: one command, either an array of bulk strings (`*2\r\n$3\r\nGET\r\n...`)
//!   or an inline command line (`GET k\r\n`). An empty inline line or `*0` is
//!   reported as a non-matchable message with no reply (the server ignores it).
//! - Response: one reply per command, however deeply nested. RESP3 push messages
//!   (`>`) and attributes (`|`, which precede the reply they describe) are not
//!   replies. Bulk payloads are skipped as they stream by, never held.
//! - Match keys: `command` (as sent; rules compare it case-insensitively) and `key`:
//!   the first argument, for commands that name a key there; `EVAL`/`FCALL` give
//!   their first key, `XREAD`/`XREADGROUP` the first stream, `OBJECT`/`MEMORY`/
//!   `XINFO`/`BITOP` the argument after their subcommand; commands with no key
//!   (`PING`, `AUTH`, `SELECT`, `CLIENT`, ...) have none.
//! - Answers: `error()` → a simple error: the message as given when it starts with
//!   an upper-case error code (`READONLY ...`), else `-ERR message`. `response()` →
//!   the bulk string `value`, or nil when there is none (`$-1` in RESP2, `_` once
//!   the client said `HELLO 3`).
//! - Limits: RESP2 subscriber connections (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`),
//!   `MONITOR` and `CLIENT REPLY OFF|SKIP` break the one-reply-per-command rhythm,
//!   so the connection is relayed unchanged from that command on. In RESP3,
//!   (un)subscribe confirmations and messages are pushes, so the connection stays
//!   understood. Inline commands are split on whitespace (quotes are not parsed).

use crate::common::{fields, find_line, request, too_large, trim_eol, Framer, Inbox, Latched};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Conversation, Fields, Opaque, Protocol, Reply, Request};

/// Redis (RESP2/RESP3).
pub struct Redis;

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["command", "key"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Error | ActionKind::Response | ActionKind::Delay | ActionKind::Drop
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(RedisConversation::default())
    }
}

/// How many arguments of a command are kept to find its key.
const KEPT_ARGS: usize = 8;
/// Deepest nesting of server replies followed.
const MAX_DEPTH: usize = 1024;

#[derive(Default)]
struct RedisConversation {
    client: Inbox,
    /// Progress through a partially received multibulk command.
    command: Option<Multibulk>,
    scanned: usize,
    /// Whether nil is `_` (the client switched to RESP3 with `HELLO 3`).
    resp3: bool,
    server: Inbox,
    server_scanned: usize,
    replies: Replies,
}

struct Multibulk {
    /// Elements still to read.
    remaining: usize,
    /// Bytes of the command read so far (into the inbox).
    offset: usize,
    args: Vec<Vec<u8>>,
}

impl Framer for RedisConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        while let Some(args) = self.next_command()? {
            let len = self.client.take();
            let Some(args) = args else {
                out.push(request(len, Fields::new(), false, 0));
                continue;
            };
            let replies = self.replies_for(&args)?;
            out.push(request(len, command_fields(&args), true, replies));
        }
        Ok(out)
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        self.server.extend(bytes);
        let mut done = 0;
        loop {
            if self.server.skipping() {
                return Ok(done);
            }
            if let Some(role) = self.replies.after_payload.take() {
                // A bulk payload ended: its value is whole now.
                done += self.replies.finish(role);
            }
            let data = self.server.data();
            if data.is_empty() {
                return Ok(done);
            }
            let Some(end) = find_line(data, &mut self.server_scanned) else {
                if data.len() > MAX_MESSAGE {
                    return Err(too_large("a redis reply line"));
                }
                return Ok(done);
            };
            let (skip, replies) = self.replies.line(trim_eol(&data[..end]))?;
            self.server.consume(end);
            done += replies;
            if let Some(n) = skip {
                self.server.skip(n);
            }
            self.server.take();
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let _ = request;
        let bytes = match answer {
            Answer::Error { message, .. } => {
                let message = message.as_deref().unwrap_or("faultbox injected error");
                let message: String = message
                    .chars()
                    .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                    .collect();
                if starts_with_code(&message) {
                    format!("-{message}\r\n").into_bytes()
                } else {
                    format!("-ERR {message}\r\n").into_bytes()
                }
            }
            Answer::Response { value, .. } => match value {
                Some(v) => {
                    let mut b = format!("${}\r\n", v.len()).into_bytes();
                    b.extend_from_slice(v.as_bytes());
                    b.extend_from_slice(b"\r\n");
                    b
                }
                None if self.resp3 => b"_\r\n".to_vec(),
                None => b"$-1\r\n".to_vec(),
            },
        };
        Ok(Reply { bytes })
    }
}

/// `READONLY You can't write...`, `WRONGTYPE`, `ERR`: an upper-case first word.
fn starts_with_code(message: &str) -> bool {
    let word = message.split(' ').next().unwrap_or("");
    word.len() >= 2 && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

impl RedisConversation {
    /// The next complete command: `Some(Some(args))`, `Some(None)` for an empty
    /// one the server ignores, `None` when more bytes are needed.
    #[allow(clippy::type_complexity)]
    fn next_command(&mut self) -> Result<Option<Option<Vec<Vec<u8>>>>, Opaque> {
        let data = self.client.data();
        if data.is_empty() {
            return Ok(None);
        }
        if self.command.is_none() && data[0] != b'*' {
            return self.inline();
        }
        if self.command.is_none() {
            let Some(end) = find_line(data, &mut self.scanned) else {
                return self.line_too_long(data.len());
            };
            let n = parse_int(trim_eol(&data[1..end]))
                .ok_or_else(|| Opaque("redis: a command's element count is not a number".into()))?;
            if n <= 0 {
                self.client.consume(end);
                return Ok(Some(None));
            }
            if n > MAX_MESSAGE as i64 / 4 {
                return Err(too_large("a redis command"));
            }
            self.command = Some(Multibulk {
                remaining: n as usize,
                offset: end,
                args: Vec::new(),
            });
        }
        let Some(cmd) = self.command.as_mut() else {
            return Ok(None);
        };
        while cmd.remaining > 0 {
            let rest = &data[cmd.offset..];
            if rest.is_empty() {
                return Ok(None);
            }
            if rest[0] != b'$' {
                return Err(Opaque(format!(
                    "redis: a command element is not a bulk string ({:?})",
                    rest[0] as char
                )));
            }
            let Some(end) = find_line(rest, &mut self.scanned) else {
                if data.len() > MAX_MESSAGE {
                    return Err(too_large("a redis command"));
                }
                return Ok(None);
            };
            let len = parse_int(trim_eol(&rest[1..end]))
                .filter(|n| *n >= 0)
                .ok_or_else(|| Opaque("redis: a bulk length is not a number".into()))?
                as usize;
            if cmd.offset + end + len > MAX_MESSAGE {
                return Err(too_large("a redis command"));
            }
            if rest.len() < end + len + 2 {
                return Ok(None);
            }
            if &rest[end + len..end + len + 2] != b"\r\n" {
                return Err(Opaque("redis: a bulk string does not end in CRLF".into()));
            }
            if cmd.args.len() < KEPT_ARGS {
                cmd.args.push(rest[end..end + len].to_vec());
            }
            cmd.offset += end + len + 2;
            cmd.remaining -= 1;
        }
        let cmd = self.command.take().expect("checked above");
        self.client.consume(cmd.offset);
        Ok(Some(Some(cmd.args)))
    }

    #[allow(clippy::type_complexity)]
    fn inline(&mut self) -> Result<Option<Option<Vec<Vec<u8>>>>, Opaque> {
        let data = self.client.data();
        let Some(end) = find_line(data, &mut self.scanned) else {
            return self.line_too_long(data.len());
        };
        let args: Vec<Vec<u8>> = trim_eol(&data[..end])
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .take(KEPT_ARGS)
            .map(<[u8]>::to_vec)
            .collect();
        self.client.consume(end);
        Ok(Some(if args.is_empty() { None } else { Some(args) }))
    }

    #[allow(clippy::type_complexity)]
    fn line_too_long(&self, len: usize) -> Result<Option<Option<Vec<Vec<u8>>>>, Opaque> {
        if len > MAX_MESSAGE {
            Err(too_large("a redis command line"))
        } else {
            Ok(None)
        }
    }

    /// Replies the server sends for `args`; refuses modes that break one reply per
    /// command.
    fn replies_for(&mut self, args: &[Vec<u8>]) -> Result<usize, Opaque> {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let arg = |i: usize| {
            args.get(i)
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
        };
        match name.as_str() {
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
            | "SUNSUBSCRIBE" => {
                if self.resp3 {
                    // RESP3 confirms with pushes, which are not replies.
                    Ok(0)
                } else {
                    Err(Opaque(format!(
                        "redis: {name} in RESP2 puts the connection in subscriber mode"
                    )))
                }
            }
            "MONITOR" => Err(Opaque("redis: MONITOR streams every command".into())),
            "CLIENT"
                if arg(1).as_deref() == Some("REPLY")
                    && matches!(arg(2).as_deref(), Some("OFF") | Some("SKIP")) =>
            {
                Err(Opaque(
                    "redis: CLIENT REPLY OFF/SKIP suppresses replies".into(),
                ))
            }
            "HELLO" => {
                match arg(1).as_deref() {
                    Some("3") => self.resp3 = true,
                    Some("2") => self.resp3 = false,
                    _ => {}
                }
                Ok(1)
            }
            _ => Ok(1),
        }
    }
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

const KEYLESS: &[&str] = &[
    "PING",
    "ECHO",
    "AUTH",
    "HELLO",
    "SELECT",
    "QUIT",
    "RESET",
    "CLIENT",
    "CONFIG",
    "INFO",
    "DBSIZE",
    "FLUSHALL",
    "FLUSHDB",
    "MULTI",
    "EXEC",
    "DISCARD",
    "UNWATCH",
    "SCRIPT",
    "KEYS",
    "SCAN",
    "RANDOMKEY",
    "TIME",
    "COMMAND",
    "CLUSTER",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "LASTSAVE",
    "SHUTDOWN",
    "SLOWLOG",
    "LATENCY",
    "ACL",
    "ROLE",
    "REPLICAOF",
    "SLAVEOF",
    "SWAPDB",
    "DEBUG",
    "MODULE",
    "READONLY",
    "READWRITE",
    "ASKING",
    "LOLWUT",
    "WAIT",
    "WAITAOF",
    "FUNCTION",
    "PUBLISH",
    "SPUBLISH",
    "PUBSUB",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "MONITOR",
    "FAILOVER",
    "PSYNC",
    "SYNC",
    "REPLCONF",
];

/// `command` and, when it has one, `key`.
fn command_fields(args: &[Vec<u8>]) -> Fields {
    let command = String::from_utf8_lossy(&args[0]).into_owned();
    let upper = command.to_ascii_uppercase();
    let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
    let key = match upper.as_str() {
        c if KEYLESS.contains(&c) => None,
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => {
            match text(2).and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if n > 0 => text(3),
                _ => None,
            }
        }
        "XREAD" | "XREADGROUP" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
            .and_then(|i| text(i + 1)),
        "OBJECT" | "MEMORY" | "XINFO" | "BITOP" => text(2),
        _ => text(1),
    };
    let mut f = fields([("command", command)]);
    if let Some(key) = key {
        f.insert("key", key);
    }
    f
}

/// Where the server's reply stream stands: open aggregates, innermost last.
#[derive(Default)]
struct Replies {
    stack: Vec<Aggregate>,
    in_streamed_string: bool,
    /// A bulk value whose payload is being skipped: it completes after it.
    after_payload: Option<Role>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A value that counts: a reply at top level, an element inside an aggregate.
    Value,
    /// `|`: describes the next value; not a reply, not an element.
    Attribute,
    /// `>`: out-of-band; not a reply.
    Push,
}

struct Aggregate {
    /// Elements still expected; `None` for a streamed aggregate that ends at `.`.
    remaining: Option<u64>,
    role: Role,
}

impl Replies {
    /// Reads one header line (type byte and its text). Returns how many payload
    /// bytes to skip and how many replies completed.
    fn line(&mut self, line: &[u8]) -> Result<(Option<usize>, usize), Opaque> {
        let Some((&kind, rest)) = line.split_first() else {
            return Err(Opaque("redis: an empty reply line".into()));
        };
        if self.in_streamed_string {
            // `;<len>` chunks; `;0` ends the string.
            if kind != b';' {
                return Err(Opaque(
                    "redis: a streamed string chunk does not start with `;`".into(),
                ));
            }
            let len = parse_len(rest)?;
            if len == 0 {
                self.in_streamed_string = false;
                return Ok((None, self.finish(Role::Value)));
            }
            return Ok((Some(len + 2), 0));
        }
        let role = match kind {
            b'|' => Role::Attribute,
            b'>' => Role::Push,
            _ => Role::Value,
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok((None, self.finish(role))),
            b'$' | b'!' | b'=' => {
                if rest == b"?" {
                    self.in_streamed_string = true;
                    return Ok((None, 0));
                }
                if rest == b"-1" {
                    return Ok((None, self.finish(role)));
                }
                let len = parse_len(rest)?;
                self.after_payload = Some(role);
                Ok((Some(len + 2), 0))
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                if rest == b"-1" {
                    return Ok((None, self.finish(role)));
                }
                let remaining = if rest == b"?" {
                    None
                } else {
                    let n = parse_len(rest)? as u64;
                    let n = if matches!(kind, b'%' | b'|') {
                        n * 2
                    } else {
                        n
                    };
                    if n == 0 {
                        return Ok((None, self.finish(role)));
                    }
                    Some(n)
                };
                if self.stack.len() >= MAX_DEPTH {
                    return Err(Opaque("redis: replies nested too deeply".into()));
                }
                self.stack.push(Aggregate { remaining, role });
                Ok((None, 0))
            }
            b'.' => match self.stack.pop() {
                Some(Aggregate {
                    remaining: None,
                    role,
                }) => Ok((None, self.finish(role))),
                _ => Err(Opaque("redis: `.` outside a streamed aggregate".into())),
            },
            other => Err(Opaque(format!(
                "redis: unknown reply type {:?}",
                other as char
            ))),
        }
    }

    /// A value with `role` is complete: counts it in its parent (closing parents
    /// that it fills). Returns 1 when a top-level reply completed.
    fn finish(&mut self, mut role: Role) -> usize {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return usize::from(role == Role::Value);
            };
            if role == Role::Attribute {
                return 0;
            }
            match &mut top.remaining {
                None => return 0,
                Some(n) => {
                    *n -= 1;
                    if *n > 0 {
                        return 0;
                    }
                }
            }
            role = top.role;
            self.stack.pop();
        }
    }
}

fn parse_len(b: &[u8]) -> Result<usize, Opaque> {
    match parse_int(b) {
        Some(n) if n >= 0 && (n as u64) < (1 << 40) => Ok(n as usize),
        _ => Err(Opaque(format!(
            "redis: bad length {:?}",
            String::from_utf8_lossy(b)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        b
    }

    #[test]
    fn pipelined_resp2() {
        let mut client = cmd(&["SET", "user:1", "alice"]);
        client.extend(cmd(&["get", "user:1"]));
        client.extend(b"PING\r\n\r\n");
        client.extend(cmd(&["MGET", "a", "b"]));
        let server = b"+OK\r\n$5\r\nalice\r\n+PONG\r\n*2\r\n$-1\r\n$1\r\nx\r\n".to_vec();
        let o = check_cuts(&Redis, &[(Dir::C, client.clone()), (Dir::S, server)]);
        let f: Vec<_> = o.requests.iter().map(|r| r.fields.clone()).collect();
        assert_eq!(f[0]["command"], "SET");
        assert_eq!(f[0]["key"], "user:1");
        assert_eq!(f[1]["command"], "get");
        assert_eq!(f[2]["command"], "PING");
        assert!(!f[2].contains_key("key"));
        assert!(!o.requests[3].matchable && o.requests[3].replies == 0);
        assert_eq!(f[4]["key"], "a");
        assert_eq!(
            o.requests.iter().map(|r| r.len).sum::<usize>(),
            client.len()
        );
        assert_eq!(o.total_responses(), 4);
        assert_eq!(o.total_replies(), 4);
    }

    #[test]
    fn resp3_maps_pushes_attributes_and_streams() {
        let mut client = cmd(&["HELLO", "3"]);
        client.extend(cmd(&["SUBSCRIBE", "ch"]));
        client.extend(cmd(&["GET", "k"]));
        client.extend(cmd(&["HGETALL", "h"]));
        client.extend(cmd(&["GET", "s"]));
        let server = [
            &b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n"[..],
            b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
            b"|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n",
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
            b"%1\r\n|1\r\n+a\r\n+b\r\n+f\r\n*?\r\n:1\r\n_\r\n.\r\n",
            b"$?\r\n;3\r\nabc\r\n;0\r\n",
        ]
        .concat();
        let o = check_cuts(&Redis, &[(Dir::C, client), (Dir::S, server)]);
        assert_eq!(
            o.requests.iter().map(|r| r.replies).collect::<Vec<_>>(),
            [1, 0, 1, 1, 1]
        );
        assert_eq!(o.total_responses(), 4);
    }

    #[test]
    fn answers() {
        let mut c = Redis.conversation();
        let r = c
            .client(&cmd(&["SET", "session:1", "x"]))
            .unwrap()
            .remove(0);
        let err = |m: Option<&str>| Answer::Error {
            message: m.map(str::to_string),
            status: None,
        };
        let resp = |v: Option<&str>| Answer::Response {
            status: None,
            body: None,
            value: v.map(str::to_string),
        };
        assert_eq!(
            c.answer(&r, &err(Some("READONLY"))).unwrap().bytes,
            b"-READONLY\r\n"
        );
        assert_eq!(
            c.answer(&r, &err(Some("disk full"))).unwrap().bytes,
            b"-ERR disk full\r\n"
        );
        assert_eq!(
            c.answer(&r, &resp(Some("stale"))).unwrap().bytes,
            b"$5\r\nstale\r\n"
        );
        assert_eq!(c.answer(&r, &resp(None)).unwrap().bytes, b"$-1\r\n");
        c.client(&cmd(&["HELLO", "3"])).unwrap();
        assert_eq!(c.answer(&r, &resp(None)).unwrap().bytes, b"_\r\n");
    }

    #[test]
    fn modes_it_cannot_follow_are_opaque() {
        for args in [
            &["SUBSCRIBE", "a"][..],
            &["MONITOR"],
            &["CLIENT", "REPLY", "OFF"],
        ] {
            let e = play_whole(&Redis, &[(Dir::C, cmd(args))]);
            assert!(e.is_err(), "{args:?}");
        }
        assert!(play_whole(&Redis, &[(Dir::C, b"*1\r\n+PING\r\n".to_vec())]).is_err());
        assert!(play_whole(&Redis, &[(Dir::S, b"?what\r\n".to_vec())]).is_err());
    }
}
