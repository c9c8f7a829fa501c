//! memcached: the text protocol, classic and meta commands, pipelined.
//!
//! - Request: one command line, with its data block for storage commands (`set`,
//!   `add`, `replace`, `append`, `prepend`, `cas`, `ms`). An empty line is a
//!   non-matchable message (the server answers it `ERROR`).
//! - Response: `get`/`gets`/`gat`/`gats`: `VALUE` blocks up to `END`; `stats`:
//!   lines up to `END`; meta commands: one line, with a data block after `VA`;
//!   everything else: one line. Error lines (`ERROR`, `CLIENT_ERROR`,
//!   `SERVER_ERROR`) end any response. Data blocks are skipped, never held.
//! - No reply: a classic command ending in `noreply` and `quit` have `replies == 0`.
//!   A meta command with the `q` flag also has `replies == 0`: the server stays
//!   silent when it succeeds (misses for `mg`) and speaks only otherwise, so its
//!   output, if any, is read as belonging to it and never counted. `mn` (which
//!   always answers `MN`) ends such a quiet run.
//! - Match keys: `command` (as sent; compared case-insensitively) and `key`: the
//!   first key (for a multi-key `get`, the first; for `gat`/`gats`, the first key
//!   after the expiry). `stats`, `version`, `flush_all`, `verbosity`, `quit`, `mn`
//!   have no key.
//! - Answers: `error()` → `SERVER_ERROR message`. `response()` → for retrievals,
//!   `VALUE key 0 len` (plus a cas of 0 for `gets`/`gats`) for every key the
//!   command asked for, then `END`; with no value, a miss: `END`. Storage →
//!   `STORED`; `delete` → `DELETED`; `touch` → `TOUCHED`; `incr`/`decr` → the value
//!   (digits) or `NOT_FOUND`; `version` → `VERSION value`; `flush_all`/`verbosity` →
//!   `OK`; `mg` → `VA`/`HD` on a value, `EN` without (nothing when quiet); other meta
//!   commands → `HD` (nothing when quiet), echoing the `O` and `k` flags. A command
//!   sent with `noreply` is answered with nothing, whatever the answer: the client
//!   waits for no reply, so the effect is that the command is lost.
//! - Limits: the binary protocol (first byte 0x80) makes the connection opaque.
//!   After a quiet meta command, a non-quiet meta command other than `mn` makes it
//!   opaque too, since the server's replies to both would look alike. `watch`
//!   streams without end: opaque. An error line the server sends for a
//!   `noreply` command while other commands await replies is read as the next
//!   command's reply (memcached suppresses most such errors).

use crate::common::Ledger;
use crate::common::{fields, find_line, request, too_large, trim_eol, Framer, Inbox, Latched};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Conversation, Fields, Opaque, Protocol, Reply, Request};

/// memcached (text protocol).
pub struct Memcached;

impl Protocol for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
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
        Latched::boxed(MemcachedConversation::default())
    }
}

/// What a command's response looks like, and what answering it needs.
#[derive(Clone, Debug)]
enum Kind {
    Retrieval {
        keys: Vec<String>,
        cas: bool,
    },
    /// One line. `command` is lower-cased.
    Line {
        command: String,
    },
    /// `STAT`-style lines up to `END`, or a single status line.
    Stats {
        started: bool,
    },
    /// Lines up to `END` (`lru_crawler metadump`).
    UntilEnd,
    Meta(Meta),
}

#[derive(Clone, Debug)]
struct Meta {
    /// `mg`, `ms`, `md`, `ma`, `mn`, `me` (lower-cased).
    command: String,
    /// Flags echoed in an answer (`O<opaque>`, `k<key>`), and whether `v` asked for
    /// the value.
    echo: Vec<String>,
    value: bool,
    quiet: bool,
}

#[derive(Default)]
struct MemcachedConversation {
    client: Inbox,
    scanned: usize,
    /// A quiet meta command was sent and no `mn` has closed the run yet.
    quiet_run: bool,
    server: Inbox,
    server_scanned: usize,
    /// A meta `VA` block is being skipped; then its command's response is whole
    /// (`Some(true)`: it counts; `Some(false)`: a quiet command's).
    after_block: Option<bool>,
    pending: Ledger<Kind>,
}

const STORAGE: &[&str] = &["set", "add", "replace", "append", "prepend", "cas"];

impl Framer for MemcachedConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        loop {
            let data = self.client.data();
            if data.is_empty() {
                return Ok(out);
            }
            if data[0] == 0x80 {
                return Err(Opaque("memcached: binary protocol".into()));
            }
            let Some(end) = find_line(data, &mut self.scanned) else {
                if data.len() > MAX_MESSAGE {
                    return Err(too_large("a memcached command line"));
                }
                return Ok(out);
            };
            let line = String::from_utf8_lossy(trim_eol(&data[..end])).into_owned();
            let tokens: Vec<&str> = line.split_ascii_whitespace().collect();
            let Some(&command) = tokens.first() else {
                self.client.consume(end);
                let r = request(self.client.take(), Fields::new(), false, 1);
                self.pending.push(
                    &r,
                    Kind::Line {
                        command: String::new(),
                    },
                )?;
                out.push(r);
                continue;
            };
            let lower = command.to_ascii_lowercase();
            // Storage commands carry a data block: wait for all of it.
            let block = match lower.as_str() {
                c if STORAGE.contains(&c) => tokens.get(4).and_then(|n| n.parse::<usize>().ok()),
                "ms" => tokens.get(2).and_then(|n| n.parse::<usize>().ok()),
                _ => None,
            };
            let total = match block {
                Some(n) if n > MAX_MESSAGE => return Err(too_large("a memcached data block")),
                Some(n) => end + n + 2,
                None => end,
            };
            if data.len() < total {
                // Found the line again next time: keep the scan from the start.
                return Ok(out);
            }
            self.client.consume(total);
            let (kind, replies, key) = self.classify(&lower, &tokens)?;
            let mut f = fields([("command", command.to_string())]);
            if let Some(key) = key {
                f.insert("key", key);
            }
            let r = request(self.client.take(), f, true, replies);
            match &kind {
                Kind::Meta(m) if m.quiet => self.pending.push_always(&r, kind)?,
                _ => self.pending.push(&r, kind)?,
            }
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
            if let Some(counted) = self.after_block.take() {
                // A meta value block ended: its response is whole now.
                if counted {
                    self.pending.complete();
                    done += 1;
                } else {
                    self.pending.pop();
                }
            }
            let data = self.server.data();
            if data.is_empty() {
                return Ok(done);
            }
            let Some(end) = find_line(data, &mut self.server_scanned) else {
                if data.len() > MAX_MESSAGE {
                    return Err(too_large("a memcached response line"));
                }
                return Ok(done);
            };
            let line = String::from_utf8_lossy(trim_eol(&data[..end])).into_owned();
            self.server.consume(end);
            done += self.response_line(&line)?;
            self.server.take();
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let Some(entry) = self.pending.find(request) else {
            // Not awaiting a reply: a `noreply` command. The client expects nothing.
            return Ok(Reply { bytes: Vec::new() });
        };
        let kind = entry.kind.clone();
        let bytes = match answer {
            Answer::Error { message, .. } => {
                let message = message.as_deref().unwrap_or("faultbox injected error");
                let message: String = message
                    .chars()
                    .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                    .collect();
                format!("SERVER_ERROR {message}\r\n").into_bytes()
            }
            Answer::Response { value, .. } => respond(&kind, value.as_deref())?,
        };
        self.pending.answered(request);
        Ok(Reply { bytes })
    }
}

fn respond(kind: &Kind, value: Option<&str>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match kind {
        Kind::Retrieval { keys, cas } => {
            if let Some(v) = value {
                for key in keys {
                    let cas = if *cas { " 0" } else { "" };
                    out.extend_from_slice(format!("VALUE {key} 0 {}{cas}\r\n", v.len()).as_bytes());
                    out.extend_from_slice(v.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"END\r\n");
        }
        Kind::Line { command } => {
            let line = match command.as_str() {
                c if STORAGE.contains(&c) => "STORED".to_string(),
                "delete" => "DELETED".into(),
                "touch" => "TOUCHED".into(),
                "incr" | "decr" => match value {
                    Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.into(),
                    Some(v) => {
                        return Err(format!("memcached {command}: value {v:?} is not a number"))
                    }
                    None => "NOT_FOUND".into(),
                },
                "version" => format!("VERSION {}", value.unwrap_or("1.6.0")),
                "flush_all" | "verbosity" => "OK".into(),
                other => return Err(format!("memcached has no success response for `{other}`")),
            };
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Kind::Stats { .. } | Kind::UntilEnd => {
            return Err("memcached: response() does not answer stats".into())
        }
        Kind::Meta(m) => {
            let echo: String = m.echo.iter().map(|f| format!(" {f}")).collect();
            match (m.command.as_str(), value) {
                ("mn", _) => out.extend_from_slice(b"MN\r\n"),
                ("mg", Some(v)) if m.value => {
                    out.extend_from_slice(format!("VA {}{echo}\r\n", v.len()).as_bytes());
                    out.extend_from_slice(v.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                ("mg", None) if m.quiet => {}
                ("mg", None) => out.extend_from_slice(format!("EN{echo}\r\n").as_bytes()),
                _ if m.quiet => {}
                _ => out.extend_from_slice(format!("HD{echo}\r\n").as_bytes()),
            }
        }
    }
    Ok(out)
}

fn is_error(line: &str) -> bool {
    line == "ERROR"
        || line.starts_with("ERROR ")
        || line.starts_with("CLIENT_ERROR")
        || line.starts_with("SERVER_ERROR")
}

/// A meta-protocol status line: a two-letter code, alone or followed by flags.
fn is_meta(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 2 && b[..2].iter().all(u8::is_ascii_uppercase) && (b.len() == 2 || b[2] == b' ')
}

/// The size of the data block after a `VA <size>` or `VALUE <key> <flags> <size>`.
fn block_size(line: &str, index: usize) -> Result<usize, Opaque> {
    line.split_ascii_whitespace()
        .nth(index)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n <= 1 << 40)
        .ok_or_else(|| Opaque(format!("memcached: bad value header {line:?}")))
}

impl MemcachedConversation {
    /// The response kind, reply count and key of a command.
    fn classify(
        &mut self,
        lower: &str,
        tokens: &[&str],
    ) -> Result<(Kind, usize, Option<String>), Opaque> {
        let noreply = tokens.last() == Some(&"noreply");
        let replies = usize::from(!noreply);
        let arg = |i: usize| tokens.get(i).map(|s| s.to_string());
        let line = || Kind::Line {
            command: lower.to_string(),
        };
        if lower != "mn" && lower.starts_with('m') && lower.len() == 2 && self.quiet_run {
            let quiet = tokens.iter().skip(2).any(|t| *t == "q");
            if !quiet {
                return Err(Opaque(format!(
                    "memcached: {lower} after a quiet meta command before mn: their replies look alike"
                )));
            }
        }
        Ok(match lower {
            "get" | "gets" => (
                Kind::Retrieval {
                    keys: tokens[1..].iter().map(|s| s.to_string()).collect(),
                    cas: lower == "gets",
                },
                1,
                arg(1),
            ),
            "gat" | "gats" => (
                Kind::Retrieval {
                    keys: tokens.iter().skip(2).map(|s| s.to_string()).collect(),
                    cas: lower == "gats",
                },
                1,
                arg(2),
            ),
            c if STORAGE.contains(&c) => (line(), replies, arg(1)),
            "delete" | "incr" | "decr" | "touch" => (line(), replies, arg(1)),
            "flush_all" | "verbosity" | "cache_memlimit" => (line(), replies, None),
            "quit" => (line(), 0, None),
            "version" | "shutdown" | "misbehave" => (line(), 1, None),
            "stats" => (Kind::Stats { started: false }, 1, None),
            "watch" => return Err(Opaque("memcached: watch streams logs".into())),
            // Dumps end at `END`; other subcommands answer one line.
            "lru_crawler" => match tokens.get(1).copied() {
                Some("metadump") | Some("mgdump") => (Kind::UntilEnd, 1, None),
                _ => (line(), 1, None),
            },
            "mg" | "ms" | "md" | "ma" | "mn" | "me" => {
                // Flags follow the key (and, for `ms`, the data length).
                let first_flag = if lower == "ms" { 3 } else { 2 };
                let flags = if lower == "mn" {
                    &[][..]
                } else {
                    tokens.get(first_flag..).unwrap_or(&[])
                };
                let quiet = flags.contains(&"q");
                let value = flags.contains(&"v");
                let key = if lower == "mn" { None } else { arg(1) };
                let echo = flags
                    .iter()
                    .filter(|f| f.starts_with('O') || **f == "k")
                    .map(|f| {
                        if *f == "k" {
                            format!("k{}", key.as_deref().unwrap_or(""))
                        } else {
                            f.to_string()
                        }
                    })
                    .collect();
                if quiet {
                    self.quiet_run = true;
                } else if lower == "mn" {
                    self.quiet_run = false;
                }
                let meta = Meta {
                    command: lower.to_string(),
                    echo,
                    value,
                    quiet,
                };
                (Kind::Meta(meta), usize::from(!quiet), key)
            }
            // Unknown commands get `ERROR`.
            _ => (line(), 1, arg(1)),
        })
    }

    /// Reads one response line; returns how many responses it completed.
    fn response_line(&mut self, line: &str) -> Result<usize, Opaque> {
        loop {
            let Some(kind) = self.pending.front() else {
                if is_error(line) {
                    // memcached reports some errors even for `noreply` commands.
                    return Ok(0);
                }
                return Err(Opaque(format!(
                    "memcached: a response nobody asked for: {:?}",
                    truncate(line)
                )));
            };
            match kind {
                Kind::Retrieval { .. } => {
                    if line.starts_with("VALUE ") {
                        let n = block_size(line, 3)?;
                        self.server.skip(n + 2);
                        return Ok(0);
                    }
                    if line == "END" || is_error(line) {
                        self.pending.complete();
                        return Ok(1);
                    }
                    return Err(Opaque(format!(
                        "memcached: unexpected line in a retrieval: {:?}",
                        truncate(line)
                    )));
                }
                Kind::Line { .. } => {
                    self.pending.complete();
                    return Ok(1);
                }
                Kind::Stats { started } => {
                    let single = matches!(line, "RESET" | "OK") || is_error(line);
                    if line == "END" || (!*started && single) {
                        self.pending.complete();
                        return Ok(1);
                    }
                    *started = true;
                    return Ok(0);
                }
                Kind::UntilEnd => {
                    if line == "END" || is_error(line) {
                        self.pending.complete();
                        return Ok(1);
                    }
                    return Ok(0);
                }
                Kind::Meta(m) => {
                    let quiet = m.quiet;
                    if quiet && (line == "MN" || !(is_meta(line) || is_error(line))) {
                        // The quiet command succeeded silently: the line is the next one's.
                        self.pending.pop();
                        continue;
                    }
                    if line.starts_with("VA ") {
                        let n = block_size(line, 1)?;
                        self.server.skip(n + 2);
                        self.after_block = Some(!quiet);
                        return Ok(0);
                    }
                    if quiet {
                        self.pending.pop();
                        return Ok(0);
                    }
                    self.pending.complete();
                    return Ok(1);
                }
            }
        }
    }
}

fn truncate(line: &str) -> &str {
    match line.char_indices().nth(80) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    #[test]
    fn classic_commands_pipelined() {
        let client = b"set a 0 0 5\r\nhello\r\nget a b\r\nset q 0 0 1 noreply\r\nx\r\n\
gets a\r\ncas a 0 0 1 99\r\ny\r\ndelete a\r\nincr n 1\r\nstats\r\nversion\r\ngat 10 a\r\n\
touch a 10 noreply\r\nquit\r\n"
            .to_vec();
        let server = b"STORED\r\nVALUE a 0 5\r\nhello\r\nEND\r\nVALUE a 0 5 42\r\nhello\r\nEND\r\n\
EXISTS\r\nDELETED\r\nNOT_FOUND\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\nVERSION 1.6.18\r\n\
VALUE a 0 3\r\nEND\r\nEND\r\n"
            .to_vec();
        let o = check_cuts(&Memcached, &[(Dir::C, client.clone()), (Dir::S, server)]);
        let summary: Vec<_> = o
            .requests
            .iter()
            .map(|r| {
                (
                    r.fields["command"].as_str(),
                    r.fields.get("key").map(String::as_str),
                    r.replies,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("set", Some("a"), 1),
                ("get", Some("a"), 1),
                ("set", Some("q"), 0),
                ("gets", Some("a"), 1),
                ("cas", Some("a"), 1),
                ("delete", Some("a"), 1),
                ("incr", Some("n"), 1),
                ("stats", None, 1),
                ("version", None, 1),
                ("gat", Some("a"), 1),
                ("touch", Some("a"), 0),
                ("quit", None, 0),
            ]
        );
        assert_eq!(
            o.requests.iter().map(|r| r.len).sum::<usize>(),
            client.len()
        );
        assert_eq!(o.total_responses(), 9);
    }

    #[test]
    fn meta_commands_and_quiet_runs() {
        let client =
            b"mg a v\r\nms b 2 T0\r\nhi\r\nmg c v q k\r\nmg d v q\r\nmd e q\r\nmn\r\nma n\r\n"
                .to_vec();
        // c hits (VA, shown), d misses (silent), e deleted (HD suppressed).
        let server = b"VA 1\r\nx\r\nHD\r\nVA 2 kc\r\nzz\r\nMN\r\nHD\r\n".to_vec();
        let o = check_cuts(&Memcached, &[(Dir::C, client), (Dir::S, server)]);
        assert_eq!(
            o.requests.iter().map(|r| r.replies).collect::<Vec<_>>(),
            [1, 1, 0, 0, 0, 1, 1]
        );
        assert_eq!(o.total_responses(), 4);
        // A non-quiet meta command after quiet ones, before mn: ambiguous.
        assert!(play_whole(&Memcached, &[(Dir::C, b"mg a q\r\nmg b\r\n".to_vec())]).is_err());
    }

    #[test]
    fn answers() {
        let mut c = Memcached.conversation();
        let rs = c
            .client(b"get a b\r\ngets a\r\nset k 0 0 1\r\nx\r\nset k 0 0 1 noreply\r\nx\r\nmg k v\r\nmg k v q\r\nincr n 1\r\nstats\r\n")
            .unwrap();
        let value = |v: Option<&str>| Answer::Response {
            status: None,
            body: None,
            value: v.map(str::to_string),
        };
        let err = Answer::Error {
            message: Some("out of memory".into()),
            status: None,
        };
        let a = |c: &mut Box<dyn Conversation>, i: usize, ans: &Answer| {
            String::from_utf8(c.answer(&rs[i], ans).unwrap().bytes).unwrap()
        };
        assert_eq!(
            a(&mut c, 0, &value(Some("v"))),
            "VALUE a 0 1\r\nv\r\nVALUE b 0 1\r\nv\r\nEND\r\n"
        );
        assert_eq!(a(&mut c, 1, &value(None)), "END\r\n");
        assert_eq!(a(&mut c, 2, &err), "SERVER_ERROR out of memory\r\n");
        assert_eq!(
            a(&mut c, 3, &err),
            "",
            "noreply: the client waits for nothing"
        );
        assert_eq!(a(&mut c, 4, &value(Some("vv"))), "VA 2\r\nvv\r\n");
        assert_eq!(a(&mut c, 5, &value(None)), "", "a quiet miss is silent");
        assert_eq!(a(&mut c, 6, &value(Some("7"))), "7\r\n");
        assert!(c.answer(&rs[7], &value(None)).is_err());
        // The server never sees the answered ones: only unanswered counts remain.
        assert_eq!(c.server(b"STAT a 1\r\nEND\r\n"), Ok(1));
    }

    #[test]
    fn binary_protocol_is_opaque() {
        let mut c = Memcached.conversation();
        assert!(c.client(&[0x80, 0x00, 0x00, 0x05]).is_err());
        assert!(c.client(b"get a\r\n").is_err(), "stays opaque");
    }
}
