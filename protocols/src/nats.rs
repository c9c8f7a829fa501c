//! NATS: the text protocol of nats-server (client ops `CONNECT`, `PUB`, `HPUB`,
//! `SUB`, `UNSUB`, `PING`, `PONG`; server ops `INFO`, `MSG`, `HMSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`).
//!
//! - Framing: an op is a control line ended by `\r\n` (a bare `\n` is accepted, as
//!   the server does); `PUB`/`HPUB`/`MSG`/`HMSG` are followed by their payload of
//!   the size the line gives and an exact `\r\n`, which is checked. Ops are
//!   case-insensitive. Payloads are skipped as they stream by, never held; bytes
//!   are read where they lie (a control line cut by the end of a chunk is the only
//!   copy), and control lines are checked as UTF-8 only when they hold non-ASCII.
//! - Every op is framed, whether or not a rule is installed, so a rule installed
//!   mid-stream acts on the next message exactly. Once the relay has said which
//!   messages rules may act on ([`Conversation::interest`]), only those get their
//!   fields copied out; runs of the others are reported as one request or message
//!   (a relay then handles a chunk of a thousand small messages as one), and
//!   control lines are read only as far as framing and matching need: the op's
//!   name, the subject (the word after it) and the size (the last word), not
//!   checked word by word. A line with a word too many or a non-UTF-8 word is then
//!   framed by its size instead of making the connection opaque (the server
//!   refuses such a line itself); a line that reading does not know is read in
//!   full.
//! - Requests: every client op. `PUB`/`HPUB` are matchable; `PING` expects a `PONG`;
//!   with `"verbose": true` in `CONNECT`, every other op expects a `+OK`.
//! - Server messages: `MSG`/`HMSG` (deliveries) are matchable. `PONG` and, in verbose
//!   mode, `+OK` are responses; the second `+OK` of a duplicated publish is swallowed.
//! - Match keys: `topic` and `subject` (the same value: the message's subject),
//!   compared with NATS wildcards (`orders.*`, `orders.>`); fields also carry
//!   `command` (`PUB`, `HPUB`, `MSG`, `HMSG`).
//! - Actions: on a publish, `drop()` loses the message (the connection stays; a
//!   verbose client gets its `+OK`), `duplicate()` sends it twice, `delay()` holds
//!   it, `error()` answers `-ERR 'message'`; on a delivery, `drop()` removes it,
//!   `duplicate()` delivers it twice, `delay()` holds it (and what follows on that
//!   connection), `error()` replaces it with `-ERR`. Without `message=` the error is
//!   the server's own permissions error (`Permissions Violation for Publish to
//!   "orders.new"`, or `... for Subscription to ...`), which clients report to their
//!   error callback and survive; other `-ERR`s make most clients close the
//!   connection, as they would with the server.

use std::collections::VecDeque;

use crate::common::Latched;
use crate::common::{fields, request, request_id, too_large, trim_eol, Framer};
use crate::{ActionKind, Answer, Conversation, FieldView, Interest, Message, Opaque, Protocol};
use crate::{Fields, Reply, Request, MAX_MESSAGE};

/// NATS.
pub struct Nats;

impl Protocol for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["topic", "subject"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Error | ActionKind::Delay | ActionKind::Drop | ActionKind::Duplicate
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(NatsConversation::default())
    }
}

/// The longest control line held while waiting for its end (nats-server's own
/// limit is 4 KiB by default; `INFO` and `CONNECT` can carry long JSON).
const MAX_CONTROL_LINE: usize = 1 << 20;

/// One op, as far as the conversation cares.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    Connect {
        verbose: bool,
    },
    /// `PUB`/`HPUB` (client) or `MSG`/`HMSG` (server), with its subject as sent:
    /// the first word of `subject` (read the light way, the words up to the size
    /// follow it; [`first_word`] picks it out when needed).
    Message {
        command: &'static str,
        subject: &'a [u8],
    },
    Sub,
    Unsub,
    Ping,
    Pong,
    Info,
    Ok,
    Err,
}

/// A control line's op; a message's subject as a range of the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect {
        verbose: bool,
    },
    Message {
        command: &'static str,
        subject: (usize, usize),
    },
    Sub,
    Unsub,
    Ping,
    Pong,
    Info,
    Ok,
    Err,
}

/// One direction: ops found in its bytes as they pass. The bytes are read where
/// they lie; only a control line cut by the end of a chunk is copied, to be
/// finished by the next one, and a message's subject when its payload runs on
/// past the chunk.
#[derive(Default)]
struct Side {
    /// The start of a control line whose end has not arrived yet.
    line: Vec<u8>,
    /// The message whose control line was read, waiting for its payload and `\r\n`.
    pending: Option<&'static str>,
    /// Where its subject lies in the chunk being read; `None`: in `subject`.
    subject_at: Option<(usize, usize)>,
    subject: Vec<u8>,
    /// Payload bytes still to come.
    skip: usize,
    /// How much of the `\r\n` after the payload has been checked.
    crlf: usize,
    /// Bytes of the op in progress so far.
    len: usize,
}

impl Side {
    /// The next complete op in `bytes` from `*at` on (moved past it) and the bytes it
    /// spans, counting those of earlier chunks. `None`: `bytes` ends inside one.
    ///
    /// `light`: a control line is read only as far as framing and matching need
    /// (its op, subject and size), not checked word by word; a line the light way
    /// does not know is read in full.
    fn next<'a>(
        &'a mut self,
        bytes: &'a [u8],
        at: &mut usize,
        server: bool,
        light: bool,
    ) -> Result<Option<(usize, Op<'a>)>, Opaque> {
        loop {
            if let Some(command) = self.pending {
                let n = self.skip.min(bytes.len() - *at);
                self.skip -= n;
                *at += n;
                self.len += n;
                if self.skip == 0 && self.crlf == 0 && bytes[*at..].starts_with(b"\r\n") {
                    // Both bytes here, as they mostly are.
                    self.crlf = 2;
                    *at += 2;
                    self.len += 2;
                }
                while self.skip == 0 && self.crlf < 2 && *at < bytes.len() {
                    if bytes[*at] != b"\r\n"[self.crlf] {
                        return Err(Opaque("a NATS payload not followed by \\r\\n".into()));
                    }
                    self.crlf += 1;
                    *at += 1;
                    self.len += 1;
                }
                if self.crlf < 2 {
                    // The chunk ends inside the message: its subject is kept for
                    // when it completes.
                    if let Some((from, to)) = self.subject_at.take() {
                        self.subject.clear();
                        self.subject.extend_from_slice(&bytes[from..to]);
                    }
                    return Ok(None);
                }
                self.pending = None;
                self.crlf = 0;
                let subject = match self.subject_at.take() {
                    Some((from, to)) => &bytes[from..to],
                    None => &self.subject[..],
                };
                let op = Op::Message { command, subject };
                return Ok(Some((std::mem::take(&mut self.len), op)));
            }
            let rest = &bytes[*at..];
            let mut found = [(0usize, 0usize); WORDS];
            // The line's end: found with its words in one pass when read in full
            // and within 64 bytes, alone when read the light way.
            let quick = match (self.line.is_empty(), light) {
                (false, _) => None,
                (true, true) => line_end(rest).map(|i| (i, None)),
                (true, false) => scan(rest, &mut found).map(|(i, c, a)| (i, Some((c, a)))),
            };
            let (i, words_found) = match quick {
                Some(found) => found,
                None => match memchr::memchr(b'\n', rest) {
                    Some(i) => (i, None),
                    None => {
                        if self.line.len() + rest.len() > MAX_CONTROL_LINE {
                            return Err(too_large("a NATS control line"));
                        }
                        self.line.extend_from_slice(rest);
                        self.len += rest.len();
                        *at = bytes.len();
                        return Ok(None);
                    }
                },
            };
            let start = *at;
            *at += i + 1;
            self.len += i + 1;
            // A line begun in an earlier chunk is finished here and read from the copy.
            let carried = !self.line.is_empty();
            if carried {
                self.line.extend_from_slice(&rest[..=i]);
            }
            let line = trim_eol(if carried { &self.line[..] } else { &rest[..=i] });
            let parsed = match light.then(|| light_parse(line, server)).flatten() {
                Some(known) => Ok(known),
                None => {
                    let (count, ascii) = match words_found {
                        Some(w) => w,
                        None => words(line, &mut found),
                    };
                    parse(line, &found, count, ascii, server)
                }
            };
            if let Ok((Kind::Message { subject, .. }, _)) = parsed {
                if carried {
                    self.subject.clear();
                    self.subject.extend_from_slice(&line[subject.0..subject.1]);
                    self.subject_at = None;
                } else {
                    self.subject_at = Some((start + subject.0, start + subject.1));
                }
            }
            self.line.clear();
            let (kind, size) = parsed?;
            if let Kind::Message { command, .. } = kind {
                self.pending = Some(command);
                self.skip = size.unwrap_or(0);
                continue;
            }
            return Ok(Some((std::mem::take(&mut self.len), op_of(kind))));
        }
    }
}

/// The op of a control line that carries no message.
fn op_of(kind: Kind) -> Op<'static> {
    match kind {
        Kind::Connect { verbose } => Op::Connect { verbose },
        Kind::Message { command, .. } => Op::Message {
            command,
            subject: &[],
        },
        Kind::Sub => Op::Sub,
        Kind::Unsub => Op::Unsub,
        Kind::Ping => Op::Ping,
        Kind::Pong => Op::Pong,
        Kind::Info => Op::Info,
        Kind::Ok => Op::Ok,
        Kind::Err => Op::Err,
    }
}

/// The bytes of `words` up to its first blank.
fn first_word(words: &[u8]) -> &[u8] {
    &words[..words.iter().position(|&b| blank(b)).unwrap_or(words.len())]
}

/// Where the `\n` ending the line at the start of `rest` is, when within 64 bytes.
fn line_end(rest: &[u8]) -> Option<usize> {
    (0..rest.len().div_ceil(8).min(8)).find_map(|k| {
        let end = equal(load(rest, k), b'\n');
        (end != 0).then(|| 8 * k + end.trailing_zeros() as usize / 8)
    })
}

/// A control line read only as far as framing and matching need: its op (from
/// its name) and, for a message, its subject (the first word after the name) and
/// size (the last word). `None` for a line it does not know this way (`CONNECT`,
/// anything odd), which is then read in full: only a line whose name, subject and
/// size are right but whose other words are not is taken here where the full
/// reading would refuse it (the server refuses it too).
#[inline]
fn light_parse(line: &[u8], server: bool) -> Option<(Kind, Option<usize>)> {
    // The name, packed as `word` packs it, in the same pass that finds its end.
    let mut name = 0u64;
    let mut end = 0;
    while end < line.len() && !blank(line[end]) {
        if end == 7 {
            return None;
        }
        name |= u64::from(line[end].to_ascii_uppercase()) << (8 * end);
        end += 1;
    }
    let name = name | (end as u64) << 56;
    let command = match (server, name) {
        (false, PUB) => "PUB",
        (false, HPUB) => "HPUB",
        (true, MSG) => "MSG",
        (true, HMSG) => "HMSG",
        (false, SUB) => return Some((Kind::Sub, None)),
        (false, UNSUB) => return Some((Kind::Unsub, None)),
        (true, INFO) => return Some((Kind::Info, None)),
        (true, OK) => return Some((Kind::Ok, None)),
        (true, ERR) => return Some((Kind::Err, None)),
        (_, PING) => return Some((Kind::Ping, None)),
        (_, PONG) => return Some((Kind::Pong, None)),
        _ => return None,
    };
    // The size: the digits ending the line, after a blank.
    let mut size = line.len();
    while size > end && line[size - 1].is_ascii_digit() {
        size -= 1;
    }
    let subject = end + 1;
    // The words between the name and the size: the subject, first, is picked out
    // only when needed (`first_word`).
    if size <= subject + 1
        || line.len() - size > 19
        || line.len() == size
        || !blank(line[size - 1])
        || blank(line[subject])
    {
        return None;
    }
    let n = line[size..]
        .iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
    (n <= MAX_MESSAGE).then_some((
        Kind::Message {
            command,
            subject: (subject, size - 1),
        },
        Some(n),
    ))
}

impl Side {
    /// Consumes, from `*at` on, whole messages that join a run: read the light way,
    /// their control line, payload and `\r\n` all in `bytes`, and `wanted` false
    /// for their command and subject. Returns the bytes they span. Stops at
    /// anything else (another op, a message cut by the chunk's end, one a rule may
    /// want, a line the light way does not know, bytes that are not NATS), which
    /// [`Side::next`] then reads. This is the loop most relayed messages take:
    /// nothing is returned per message.
    fn skim(
        &mut self,
        bytes: &[u8],
        at: &mut usize,
        server: bool,
        wanted: impl Fn(&'static str, &[u8]) -> bool,
    ) -> usize {
        if self.pending.is_some() || !self.line.is_empty() {
            return 0;
        }
        let from = *at;
        loop {
            let rest = &bytes[*at..];
            let Some(i) = line_end(rest) else { break };
            let Some((Kind::Message { command, subject }, Some(n))) =
                light_parse(trim_eol(&rest[..=i]), server)
            else {
                break;
            };
            let end = i + 1 + n;
            if rest.len() < end + 2 || &rest[end..end + 2] != b"\r\n" {
                break;
            }
            if wanted(command, &rest[subject.0..subject.1]) {
                break;
            }
            *at += end + 2;
        }
        *at - from
    }
}

fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// An op name, upper-cased and packed with its length into one word, so that
/// telling ops apart is a comparison of numbers; 0 for a name longer than any op's.
const fn word(name: &[u8]) -> u64 {
    if name.len() > 7 {
        return 0;
    }
    let mut w = (name.len() as u64) << 56;
    let mut i = 0;
    while i < name.len() {
        w |= (name[i].to_ascii_uppercase() as u64) << (8 * i);
        i += 1;
    }
    w
}

const CONNECT: u64 = word(b"CONNECT");
const PUB: u64 = word(b"PUB");
const HPUB: u64 = word(b"HPUB");
const SUB: u64 = word(b"SUB");
const UNSUB: u64 = word(b"UNSUB");
const MSG: u64 = word(b"MSG");
const HMSG: u64 = word(b"HMSG");
const INFO: u64 = word(b"INFO");
const OK: u64 = word(b"+OK");
const ERR: u64 = word(b"-ERR");
const PING: u64 = word(b"PING");
const PONG: u64 = word(b"PONG");

/// A size argument, as `usize::from_str` reads it (an optional `+`, then digits).
fn number(digits: &[u8]) -> Option<usize> {
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Nineteen digits never overflow 64 bits: only longer numbers are checked.
    if digits.len() <= 19 && usize::BITS == 64 {
        return Some(
            digits
                .iter()
                .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
        );
    }
    digits.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// At most this many words of a control line are told apart: an op name and five
/// arguments (HMSG's), and one more to know there were too many.
const WORDS: usize = 7;

const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const ONES: u64 = 0x0101_0101_0101_0101;

/// 0x80 in every byte of `x` equal to `c`, exactly (no borrow crosses bytes).
fn equal(x: u64, c: u8) -> u64 {
    let y = x ^ (ONES * u64::from(c));
    !(((y & LOW) + LOW) | y | LOW)
}

/// The top bit of each byte of `m` gathered to the low byte: bit `i` for byte `i`.
fn gather(m: u64) -> u64 {
    ((m >> 7) & ONES).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Word `k` (bytes `8k..8k+8`) of `bytes` as a number, bytes past the end read as a
/// byte that is no blank, line end or non-ASCII; loaded without a copy (the last
/// word is the last eight bytes, shifted).
fn load(bytes: &[u8], k: usize) -> u64 {
    let (from, n) = (8 * k, bytes.len());
    if from + 8 <= n {
        return u64::from_le_bytes(bytes[from..from + 8].try_into().expect("eight bytes"));
    }
    let tail = n - from;
    let x = if n >= 8 {
        let last: [u8; 8] = bytes[n - 8..].try_into().expect("eight bytes");
        u64::from_le_bytes(last) >> (8 * (8 - tail))
    } else {
        bytes
            .iter()
            .enumerate()
            .fold(0u64, |x, (i, &b)| x | u64::from(b) << (8 * i))
    };
    x | (ONES * u64::from(b'x')) << (8 * tail)
}

/// The words of a line from a bit per blank byte among its first `len` (≤ 64).
fn split(blanks: u64, len: usize, out: &mut [(usize, usize); WORDS]) -> usize {
    let within = if len == 64 {
        u64::MAX
    } else {
        (1u64 << len) - 1
    };
    let filled = !blanks & within;
    let mut starts = filled & !(filled << 1);
    let mut ends = filled & !(filled >> 1);
    let mut count = 0;
    while starts != 0 {
        if count < WORDS {
            out[count] = (
                starts.trailing_zeros() as usize,
                ends.trailing_zeros() as usize + 1,
            );
        }
        count += 1;
        starts &= starts - 1;
        ends &= ends - 1;
    }
    count
}

/// The control line at the start of `rest`, when it ends within 64 bytes: where its
/// `\n` is, its words (those of the line without its end of line, put in `out`),
/// and whether it is ASCII. One pass, eight bytes at a time, finds the end, the
/// blanks and any non-ASCII byte: what every relayed message costs.
fn scan(rest: &[u8], out: &mut [(usize, usize); WORDS]) -> Option<(usize, usize, bool)> {
    let (mut blanks, mut high) = (0u64, 0u64);
    for k in 0..rest.len().div_ceil(8).min(8) {
        let x = load(rest, k);
        blanks |= gather(equal(x, b' ') | equal(x, b'\t')) << (8 * k);
        high |= gather(x) << (8 * k);
        let end = gather(equal(x, b'\n'));
        if end != 0 {
            let nl = 8 * k + end.trailing_zeros() as usize;
            let len = if nl > 0 && rest[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            let ascii = high & ((1u64 << len) - 1) == 0;
            return Some((nl, split(blanks, len, out), ascii));
        }
    }
    None
}

/// The words of `line` (runs of bytes between blanks) as ranges, the first
/// [`WORDS`] of them put in `out`; returns how many there are, and whether the line
/// is ASCII. (Filled in place: a returned array is copied back through the stack.)
fn words(line: &[u8], out: &mut [(usize, usize); WORDS]) -> (usize, bool) {
    if line.len() > 64 {
        return words_bytewise(line, out);
    }
    let (mut blanks, mut high) = (0u64, 0u64);
    for k in 0..line.len().div_ceil(8) {
        let x = load(line, k);
        blanks |= gather(equal(x, b' ') | equal(x, b'\t')) << (8 * k);
        high |= x;
    }
    (split(blanks, line.len(), out), high & (ONES << 7) == 0)
}

/// [`words`] a byte at a time, for long lines (`INFO`, `CONNECT`, long subjects).
fn words_bytewise(line: &[u8], out: &mut [(usize, usize); WORDS]) -> (usize, bool) {
    let mut count = 0;
    let mut from = None;
    for (i, &b) in line.iter().enumerate() {
        match (blank(b), from) {
            (false, None) => from = Some(i),
            (true, Some(f)) => {
                if count < WORDS {
                    out[count] = (f, i);
                }
                count += 1;
                from = None;
            }
            _ => {}
        }
    }
    if let Some(f) = from {
        if count < WORDS {
            out[count] = (f, line.len());
        }
        count += 1;
    }
    (count, line.is_ascii())
}

/// A control line's op, and the payload size that follows it. Every op name and
/// argument that matters is ASCII: the line is checked as UTF-8 only when it holds
/// other bytes (a subject or JSON may), and nothing is copied out of it. One pass
/// over the line finds its words and whether it is ASCII: this runs for every
/// message relayed.
#[inline(always)]
fn parse(
    line: &[u8],
    found: &[(usize, usize); WORDS],
    count: usize,
    ascii: bool,
    server: bool,
) -> Result<(Kind, Option<usize>), Opaque> {
    let bad = |why: &str| {
        Opaque(format!(
            "not NATS ({why}): {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        ))
    };
    // The op name and at most five arguments matter (HMSG's); more make the line
    // malformed. (INFO and CONNECT carry JSON instead, never read as arguments.)
    if !ascii && std::str::from_utf8(line).is_err() {
        return Err(bad("a control line that is not UTF-8"));
    }
    // The name runs from the line's first byte to its first blank.
    let name = match found[0] {
        (0, end) if count > 0 => word(&line[..end]),
        _ => 0,
    };
    let args = if count > WORDS {
        &[][..]
    } else {
        &found[1..count.max(1)]
    };
    let size = |(from, to): (usize, usize)| -> Result<usize, Opaque> {
        let n = number(&line[from..to]).ok_or_else(|| bad("a size that is not a number"))?;
        if n > MAX_MESSAGE {
            return Err(too_large("a NATS message"));
        }
        Ok(n)
    };
    let message = |command: &'static str| Kind::Message {
        command,
        subject: args[0],
    };
    let op = match (server, name) {
        (false, CONNECT) => {
            let json = std::str::from_utf8(&line[found[0].1..]).unwrap_or("");
            (
                Kind::Connect {
                    verbose: json_true(json, "verbose"),
                },
                None,
            )
        }
        (false, PUB) if (2..=3).contains(&args.len()) => {
            (message("PUB"), Some(size(args[args.len() - 1])?))
        }
        (false, HPUB) if (3..=4).contains(&args.len()) => {
            let (headers, total) = (size(args[args.len() - 2])?, size(args[args.len() - 1])?);
            if headers > total {
                return Err(bad("headers larger than the message"));
            }
            (message("HPUB"), Some(total))
        }
        (false, SUB) if (2..=3).contains(&args.len()) => (Kind::Sub, None),
        (false, UNSUB) if (1..=2).contains(&args.len()) => (Kind::Unsub, None),
        (true, MSG) if (3..=4).contains(&args.len()) => {
            (message("MSG"), Some(size(args[args.len() - 1])?))
        }
        (true, HMSG) if (4..=5).contains(&args.len()) => {
            let (headers, total) = (size(args[args.len() - 2])?, size(args[args.len() - 1])?);
            if headers > total {
                return Err(bad("headers larger than the message"));
            }
            (message("HMSG"), Some(total))
        }
        (true, INFO) => (Kind::Info, None),
        (true, OK) => (Kind::Ok, None),
        (true, ERR) => (Kind::Err, None),
        (_, PING) => (Kind::Ping, None),
        (_, PONG) => (Kind::Pong, None),
        _ => return Err(bad("an op this side does not send, or its arguments")),
    };
    Ok(op)
}

/// Whether the JSON object `json` sets `key` to `true` (enough for `CONNECT`'s flat
/// object of options; the server rejects anything fancier).
fn json_true(json: &str, key: &str) -> bool {
    let quoted = format!("\"{key}\"");
    let Some(at) = json.find(&quoted) else {
        return false;
    };
    let after = json[at + quoted.len()..].trim_start();
    after
        .strip_prefix(':')
        .is_some_and(|v| v.trim_start().starts_with("true"))
}

/// Which messages get match fields (see [`Conversation::interest`]).
#[derive(Default)]
enum Want {
    /// Every message, each reported on its own (until the relay says otherwise).
    #[default]
    All,
    /// Only those the interest accepts; runs of the others are reported as one.
    Some(Interest),
    /// None: runs of messages are reported as one.
    None,
}

/// A message's fields, borrowed from the bytes being framed.
struct View<'a> {
    command: &'static str,
    subject: &'a str,
}

impl FieldView for View<'_> {
    fn field(&self, key: &str) -> Option<&str> {
        match key {
            "command" => Some(self.command),
            "subject" | "topic" => Some(self.subject),
            _ => None,
        }
    }
}

impl Want {
    /// The fields of a message, when a rule may act on it.
    #[inline]
    fn fields(&self, command: &'static str, subject: &[u8]) -> Option<Fields> {
        if let Want::None = self {
            return None;
        }
        self.wanted(command, subject)
    }

    fn wanted(&self, command: &'static str, subject: &[u8]) -> Option<Fields> {
        // Read in full, a control line was checked as UTF-8; read the light way, a
        // subject that is not is no subject any rule names.
        let Ok(subject) = std::str::from_utf8(first_word(subject)) else {
            return None;
        };
        let wanted = match self {
            Want::Some(interest) => interest(&View { command, subject }),
            _ => true,
        };
        wanted.then(|| {
            fields([
                ("command", command.to_string()),
                ("subject", subject.to_string()),
                ("topic", subject.to_string()),
            ])
        })
    }

    /// Whether a rule may act on a message (what [`Want::fields`] decides, without
    /// building the fields).
    fn wants(&self, command: &'static str, subject: &[u8]) -> bool {
        match self {
            Want::All => true,
            Want::None => false,
            Want::Some(interest) => std::str::from_utf8(first_word(subject))
                .is_ok_and(|subject| interest(&View { command, subject })),
        }
    }

    /// Whether runs of messages no rule may act on are reported as one.
    fn joins(&self) -> bool {
        !matches!(self, Want::All)
    }
}

/// Consecutive ops no rule may act on, reported as one request or message.
#[derive(Default)]
struct Run {
    len: usize,
    /// Replies (client side) or responses (server side) they carry.
    count: usize,
    ops: usize,
}

impl Run {
    fn add(&mut self, len: usize, count: usize) {
        self.len += len;
        self.count += count;
        self.ops += 1;
    }

    fn request(&mut self) -> Option<Request> {
        let run = std::mem::take(self);
        (run.ops > 0).then(|| request(run.len, Fields::new(), false, run.count))
    }

    fn message(&mut self) -> Option<Message> {
        let run = std::mem::take(self);
        (run.ops > 0).then(|| Message {
            len: run.len,
            fields: Fields::new(),
            matchable: false,
            responses: run.count,
            forward: true,
        })
    }
}

#[derive(Default)]
struct NatsConversation {
    client: Side,
    server: Side,
    /// The client asked for `+OK` after every op.
    verbose: bool,
    /// In verbose mode, the `+OK`s owed in order: the request they answer, and
    /// whether the client gets it (the second `+OK` of a duplicate it does not).
    okays: VecDeque<(u64, bool)>,
    /// Which messages rules may act on: only those get fields and their own entry.
    want: Want,
}

impl NatsConversation {
    /// Forgets the `+OK` owed for `request`: it is answered here.
    fn forget(&mut self, request: &Request) {
        let id = request_id(request);
        if let Some(i) = self.okays.iter().position(|(r, _)| *r == id) {
            self.okays.remove(i);
        }
    }

    fn subject(fields: &Fields) -> &str {
        fields.get("subject").map(String::as_str).unwrap_or("")
    }
}

/// `-ERR 'message'`, with the server's permissions error by default.
fn err_line(answer: &Answer, what: &str, subject: &str) -> Result<Vec<u8>, String> {
    match answer {
        Answer::Error { message, status } => {
            if status.is_some() {
                return Err("NATS errors have no status code: give message= only".into());
            }
            let text = match message {
                Some(m) => m.replace(['\r', '\n'], " "),
                None => format!("Permissions Violation for {what} to \"{subject}\""),
            };
            Ok(format!("-ERR '{text}'\r\n").into_bytes())
        }
        Answer::Response { .. } => Err("NATS has no response to give in the server's place".into()),
    }
}

impl Framer for NatsConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        let mut out = Vec::new();
        let mut run = Run::default();
        let joins = self.want.joins();
        let mut at = 0;
        loop {
            // Without +OKs to account for, publishes of a run are skimmed whole.
            if joins && !self.verbose {
                let want = &self.want;
                let n = self
                    .client
                    .skim(bytes, &mut at, false, |c, s| want.wants(c, s));
                if n > 0 {
                    run.add(n, 0);
                }
            }
            let Some((len, op)) = self.client.next(bytes, &mut at, false, joins)? else {
                break;
            };
            if let Op::Connect { verbose } = op {
                self.verbose = verbose;
            }
            let okay = self.verbose && !matches!(op, Op::Ping | Op::Pong);
            let replies = usize::from(okay || matches!(op, Op::Ping));
            let req = match op {
                Op::Message { command, subject } => match self.want.fields(command, subject) {
                    Some(fields) => Some(request(len, fields, true, replies)),
                    None if joins => None,
                    None => Some(request(len, Fields::new(), true, replies)),
                },
                _ if joins => None,
                _ => Some(request(len, Fields::new(), false, replies)),
            };
            if okay {
                if self.okays.len() >= crate::MAX_PENDING {
                    return Err(Opaque(format!(
                        "more than {} ops await +OK",
                        crate::MAX_PENDING
                    )));
                }
                let id = match &req {
                    Some(req) => request_id(req),
                    // Never looked up: only a request a rule acted on is.
                    None => request_id(&request(len, Fields::new(), false, replies)),
                };
                self.okays.push_back((id, true));
            }
            match req {
                Some(req) => {
                    out.extend(run.request());
                    out.push(req);
                }
                None => run.add(len, replies),
            }
        }
        out.extend(run.request());
        Ok(out)
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        Ok(self
            .server_messages(bytes)?
            .iter()
            .map(|m| m.responses)
            .sum())
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let bytes = err_line(answer, "Publish", Self::subject(&request.fields))?;
        self.forget(request);
        Ok(Reply { bytes })
    }

    fn interest(&mut self, interest: Option<&Interest>) {
        self.want = match interest {
            Some(i) => Want::Some(i.clone()),
            None => Want::None,
        };
    }

    fn frames_server(&self) -> bool {
        true
    }

    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        let mut out = Vec::new();
        let mut run = Run::default();
        let joins = self.want.joins();
        let mut at = 0;
        loop {
            // Deliveries of a run are skimmed whole.
            if joins {
                let want = &self.want;
                let n = self
                    .server
                    .skim(bytes, &mut at, true, |c, s| want.wants(c, s));
                if n > 0 {
                    run.add(n, 0);
                }
            }
            let Some((len, op)) = self.server.next(bytes, &mut at, true, joins)? else {
                break;
            };
            let (mut fields, mut matchable, mut responses, mut forward) = (None, false, 0, true);
            match op {
                Op::Message { command, subject } => {
                    fields = self.want.fields(command, subject);
                    matchable = fields.is_some() || !joins;
                }
                Op::Pong => responses = 1,
                Op::Ok => {
                    responses = 1;
                    forward = self.okays.pop_front().is_none_or(|(_, f)| f);
                }
                _ => {}
            }
            if joins && !matchable && forward {
                // A run ends at a response: an answer may be owed right after it.
                run.add(len, responses);
                if responses > 0 {
                    out.extend(run.message());
                }
                continue;
            }
            out.extend(run.message());
            out.push(Message {
                len,
                fields: fields.unwrap_or_default(),
                matchable,
                responses,
                forward,
            });
        }
        out.extend(run.message());
        Ok(out)
    }

    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        if !request.fields.contains_key("subject") {
            return None;
        }
        self.forget(request);
        let bytes = if self.verbose {
            b"+OK\r\n".to_vec()
        } else {
            Vec::new()
        };
        Some(Reply { bytes })
    }

    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        if self.verbose {
            let id = request_id(request);
            if let Some(i) = self.okays.iter().position(|(r, f)| *r == id && *f) {
                self.okays.insert(i + 1, (id, false));
            }
        }
        Ok([bytes, bytes].concat())
    }

    fn answer_message(
        &mut self,
        message: &Message,
        _bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        err_line(answer, "Subscription", Self::subject(&message.fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn c(s: &str) -> (Dir, Vec<u8>) {
        (Dir::C, s.as_bytes().to_vec())
    }

    fn s(s: &str) -> (Dir, Vec<u8>) {
        (Dir::S, s.as_bytes().to_vec())
    }

    #[test]
    fn publishes_are_framed_by_their_size_whatever_the_cuts() {
        let out = check_cuts(
            &Nats,
            &[
                s("INFO {\"server_id\":\"x\",\"headers\":true}\r\n"),
                c("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n"),
                s("PONG\r\n"),
                c("PUB orders.new 5\r\nhello\r\npub orders.eu.new _INBOX.1 3\r\na\r\n\r\n"),
                c("HPUB orders.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB orders.* 1\r\nUNSUB 1\r\n"),
                c("PING\r\n"),
                s("PONG\r\n"),
            ],
        );
        let subjects: Vec<_> = out
            .requests
            .iter()
            .filter(|r| r.matchable)
            .map(|r| (r.fields["command"].clone(), r.fields["topic"].clone()))
            .collect();
        assert_eq!(
            subjects,
            [
                ("PUB".to_string(), "orders.new".to_string()),
                ("PUB".to_string(), "orders.eu.new".to_string()),
                ("HPUB".to_string(), "orders.h".to_string()),
            ]
        );
        // A payload holding "\r\n" does not end the message early.
        assert_eq!(
            out.requests[3].len,
            "pub orders.eu.new _INBOX.1 3\r\na\r\n\r\n".len()
        );
        assert_eq!(out.total_replies(), 2, "the two PINGs");
        assert_eq!(out.total_responses(), 2);
    }

    #[test]
    fn deliveries_are_messages_rules_can_match() {
        let mut conv = Nats.conversation();
        let msgs = conv
            .server_messages(b"MSG orders.new 1 5\r\nhello\r\nHMSG a.b 2 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n")
            .unwrap();
        assert_eq!(msgs.len(), 3);
        assert!(msgs[0].matchable && msgs[0].fields["subject"] == "orders.new");
        assert_eq!(msgs[0].len, "MSG orders.new 1 5\r\nhello\r\n".len());
        assert!(msgs[1].matchable && msgs[1].fields["command"] == "HMSG");
        assert!(!msgs[2].matchable && msgs[2].responses == 0);
        let err = conv
            .answer_message(
                &msgs[0],
                b"",
                &Answer::Error {
                    message: None,
                    status: None,
                },
            )
            .unwrap();
        assert_eq!(
            err,
            b"-ERR 'Permissions Violation for Subscription to \"orders.new\"'\r\n"
        );
    }

    #[test]
    fn a_payload_must_end_in_crlf_whatever_the_interest() {
        let on_ab: Interest = Arc::new(|v: &dyn FieldView| v.field("subject") == Some("a.b"));
        for interest in [None, Some(&on_ab)] {
            let mut conv = Nats.conversation();
            conv.interest(interest);
            assert!(conv.client(b"PUB x 1\r\na\r\nPUB x 2\r\nhiX\r\n").is_err());
            let mut conv = Nats.conversation();
            conv.interest(interest);
            assert!(conv
                .server_messages(b"MSG x 1 1\r\na\r\nMSG x 1 2\r\nhi\n\r")
                .is_err());
        }
    }

    #[test]
    fn a_payload_must_end_in_crlf() {
        let e = play_whole(&Nats, &[c("PUB a 2\r\nhiX\r\n")]).unwrap_err();
        assert!(e.0.contains("\\r\\n"), "{e}");
        let e = play_whole(&Nats, &[s("MSG a 1 2\r\nhi\n\r")]).unwrap_err();
        assert!(e.0.contains("payload"), "{e}");
    }

    #[test]
    fn ops_from_the_wrong_side_or_garbage_go_opaque() {
        assert!(play_whole(&Nats, &[c("MSG a 1 2\r\nhi\r\n")]).is_err());
        assert!(play_whole(&Nats, &[s("PUB a 2\r\nhi\r\n")]).is_err());
        assert!(play_whole(&Nats, &[c("PUB a x\r\n")]).is_err());
        assert!(play_whole(&Nats, &[c("PUB a\r\n")]).is_err());
        assert!(play_whole(&Nats, &[c("PUB a b c d e f g 1\r\nx\r\n")]).is_err());
        let connect = "CONNECT {\"verbose\": false, \"pedantic\": false, \"a\": 1, \"b\": 2}\r\n";
        assert!(play_whole(&Nats, &[c(connect)]).is_ok(), "JSON with spaces");
        assert!(
            play_whole(&Nats, &[c("\x16\x03\x01\x02\x00")]).is_ok(),
            "no line yet"
        );
        let huge = format!("PUB a {}\r\n", MAX_MESSAGE + 1);
        assert!(play_whole(&Nats, &[c(&huge)]).is_err());
    }

    #[test]
    fn verbose_clients_get_their_okays_and_never_an_extra_one() {
        let mut conv = Nats.conversation();
        let reqs = conv
            .client(b"CONNECT {\"verbose\": true}\r\nPUB a 1\r\nx\r\nPUB b 1\r\ny\r\nPING\r\n")
            .unwrap();
        assert_eq!(
            reqs.iter().map(|r| r.replies).collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        // The first publish is sent twice: its second +OK is swallowed.
        conv.duplicate_request(&reqs[1], b"PUB a 1\r\nx\r\n")
            .unwrap();
        // The second is dropped: answered +OK here, nothing owed by the server.
        assert_eq!(conv.drop_request(&reqs[2]).unwrap().bytes, b"+OK\r\n");
        let msgs = conv
            .server_messages(b"+OK\r\n+OK\r\n+OK\r\nPONG\r\n")
            .unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.forward).collect::<Vec<_>>(),
            [true, true, false, true]
        );
        assert!(msgs.iter().all(|m| m.responses == 1));
    }

    #[test]
    fn errors_answer_a_publish() {
        let mut conv = Nats.conversation();
        let reqs = conv.client(b"PUB orders.new 1\r\nx\r\n").unwrap();
        assert_eq!(reqs[0].replies, 0);
        let r = conv
            .answer(
                &reqs[0],
                &Answer::Error {
                    message: Some("Maximum Payload Violation".into()),
                    status: None,
                },
            )
            .unwrap();
        assert_eq!(r.bytes, b"-ERR 'Maximum Payload Violation'\r\n");
        assert!(conv
            .answer(
                &reqs[0],
                &Answer::Response {
                    status: None,
                    body: None,
                    value: None
                }
            )
            .is_err());
        assert!(json_true("{\"a\":1,\"verbose\" : true}", "verbose"));
        assert!(!json_true("{\"verbose\":false}", "verbose"));
    }

    /// One op of either side, as the conversation reports it when it reports every
    /// op with its fields: where it ends in the stream, and what it is.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Seen {
        end: usize,
        len: usize,
        fields: Fields,
        matchable: bool,
        /// Replies (client side) or responses (server side).
        count: usize,
        forward: bool,
    }

    /// Feeds `bytes` to one side of a fresh conversation in `chunks`, telling it
    /// before each chunk the interest `modes` gives (`0`: nothing, `1`: no rule,
    /// `2`: rules on subject `a.b`). Returns what it reported, with the chunk each
    /// came from, and the chunk that made it opaque.
    fn feed(
        server: bool,
        bytes: &[u8],
        chunks: &[usize],
        modes: &[u8],
    ) -> (Vec<(usize, Seen)>, Option<usize>) {
        let on_ab: Interest = Arc::new(|v: &dyn FieldView| v.field("subject") == Some("a.b"));
        let mut conv = Nats.conversation();
        let mut out = Vec::new();
        let (mut at, mut end) = (0, 0);
        for (i, &n) in chunks.iter().enumerate() {
            match modes[i % modes.len()] {
                1 => conv.interest(None),
                2 => conv.interest(Some(&on_ab)),
                _ => {}
            }
            let chunk = &bytes[at..at + n];
            at += n;
            let seen: Result<Vec<_>, _> = if server {
                conv.server_messages(chunk).map(|ms| {
                    ms.into_iter()
                        .map(|m| (m.len, m.fields, m.matchable, m.responses, m.forward))
                        .collect()
                })
            } else {
                conv.client(chunk).map(|rs| {
                    rs.into_iter()
                        .map(|r| (r.len, r.fields, r.matchable, r.replies, true))
                        .collect()
                })
            };
            let Ok(seen) = seen else {
                return (out, Some(i));
            };
            for (len, fields, matchable, count, forward) in seen {
                end += len;
                let s = Seen {
                    end,
                    len,
                    fields,
                    matchable,
                    count,
                    forward,
                };
                out.push((i, s));
            }
        }
        (out, None)
    }

    /// Ops of the client.
    fn client_op() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => Just(b"PUB a.b 3\r\nabc\r\n".to_vec()),
            4 => Just(b"PUB x.y _INBOX.1 2\r\nhi\r\n".to_vec()),
            2 => Just(b"pub a.b 0\r\n\r\n".to_vec()),
            2 => Just(b"HPUB a.b 12 14\r\nNATS/1.0\r\n\r\nhi\r\n".to_vec()),
            2 => Just(b"PING\r\n".to_vec()),
            1 => Just(b"PONG\n".to_vec()),
            1 => Just(b"SUB a.* 1\r\n".to_vec()),
            1 => Just(b"UNSUB 1\r\n".to_vec()),
            1 => Just(b"CONNECT {\"verbose\":true}\r\n".to_vec()),
            1 => Just(b"CONNECT {\"verbose\":false}\r\n".to_vec()),
            1 => Just([&b"PUB a.b."[..], &[b'x'; 60], b" 1\r\nx\r\n"].concat()),
        ]
    }

    /// Ops of the server.
    fn server_op() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => Just(b"MSG a.b 1 3\r\nabc\r\n".to_vec()),
            4 => Just(b"MSG x.y 1 _INBOX.1 2\r\nhi\r\n".to_vec()),
            2 => Just(b"HMSG a.b 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\n".to_vec()),
            2 => Just(b"PONG\r\n".to_vec()),
            2 => Just(b"+OK\r\n".to_vec()),
            1 => Just(b"PING\r\n".to_vec()),
            1 => Just(b"-ERR 'x'\r\n".to_vec()),
            1 => Just(b"INFO {\"server_id\":\"\xc3\xa9\"}\r\n".to_vec()),
            1 => Just([&b"MSG a.b."[..], &[b'x'; 60], b" 1 1\r\nx\r\n"].concat()),
        ]
    }

    /// Bytes NATS does not allow, mostly: random ones, and message lines and
    /// payloads that may not go together.
    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..6),
            Just(b"PUB a.b 3\r\n".to_vec()),
            Just(b"MSG a.b 1 3\r\n".to_vec()),
            Just(b"abc\r\n".to_vec()),
            Just(b"abcd\r\n".to_vec()),
            Just(b"PUB a.b c d 1\r\nx\r\n".to_vec()),
            Just(b"MSG a.\xff 1 1\r\nx\r\n".to_vec()),
        ]
    }

    /// Cuts of `n` bytes from `sizes` (each at least 1), the last taking the rest.
    fn cuts(n: usize, sizes: &[usize]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut left = n;
        for &s in sizes.iter().cycle() {
            if left == 0 {
                break;
            }
            let s = s.clamp(1, left);
            out.push(s);
            left -= s;
        }
        out
    }

    /// Whatever the cuts, and whatever interest the relay gives before each chunk
    /// (rules installed and removed mid-stream), the conversation frames exactly
    /// what it frames fed a byte at a time under the interest `reference` (`0`:
    /// every op reported on its own): each report ends at an op boundary; an op a
    /// rule may act on is reported alone with its fields; a run holds only ops no
    /// rule wanted, ends at a response on the server's side, and carries their
    /// replies; and it goes opaque in the chunk holding the byte that makes it so.
    fn check_modes(server: bool, ops: &[Vec<u8>], sizes: &[usize], modes: &[u8], reference: u8) {
        let bytes = ops.concat();
        let bytewise = vec![1; bytes.len()];
        let (reference, wrong) = feed(server, &bytes, &bytewise, &[reference]);
        let chunks = cuts(bytes.len(), sizes);
        let (got, opaque) = feed(server, &bytes, &chunks, modes);
        let chunk_of = |byte: usize| {
            let mut end = 0;
            chunks.iter().position(|&n| {
                end += n;
                byte < end
            })
        };
        assert_eq!(
            opaque,
            wrong.and_then(chunk_of),
            "goes opaque in the same chunk"
        );
        // The interest in force for a chunk: the last one given (0: none yet).
        let mode_of = |chunk: usize| {
            (0..=chunk)
                .rev()
                .map(|c| modes[c % modes.len()])
                .find(|&m| m != 0)
                .unwrap_or(0)
        };
        let by_end: std::collections::HashMap<usize, usize> = reference
            .iter()
            .enumerate()
            .map(|(i, (_, s))| (s.end, i))
            .collect();
        let mut next = 0;
        for (chunk, s) in &got {
            let Some(&last) = by_end.get(&s.end) else {
                panic!("{s:?} does not end at an op boundary: {reference:?}");
            };
            let span = &reference[next..=last];
            next = last + 1;
            let mode = mode_of(*chunk);
            let wanted = |r: &Seen| {
                r.matchable && (mode == 0 || (mode == 2 && r.fields["subject"] == "a.b"))
            };
            if span.len() == 1 && (s.matchable || !s.forward || mode == 0) {
                let r = &span[0].1;
                if mode == 0 || wanted(r) {
                    assert_eq!(s, r);
                } else {
                    assert_eq!((s.len, s.count, s.forward), (r.len, r.count, r.forward));
                    assert!(s.fields.is_empty(), "{s:?}");
                }
                continue;
            }
            assert!(
                mode != 0,
                "ops are joined only once told the interest: {s:?}"
            );
            assert!(!s.matchable && s.forward && s.fields.is_empty(), "{s:?}");
            assert_eq!(s.len, span.iter().map(|(_, r)| r.len).sum::<usize>());
            assert_eq!(s.count, span.iter().map(|(_, r)| r.count).sum::<usize>());
            for (i, (_, r)) in span.iter().enumerate() {
                assert!(!wanted(r) && r.forward, "{r:?} joined into {s:?}");
                if server && r.count > 0 {
                    assert_eq!(i, span.len() - 1, "a run ends at a response: {s:?}");
                }
            }
        }
        if opaque.is_none() {
            assert_eq!(next, reference.len(), "every op is reported");
        }
    }

    proptest! {
        #[test]
        fn words_are_found_alike_eight_bytes_at_a_time(
            line in prop::collection::vec(
                prop_oneof![
                    Just(b' '), Just(b'\t'), Just(b'a'), Just(b'\x80'), Just(b'\xff'),
                    Just(b'\x00'), Just(b'\x09' ^ 0x80), Just(b' ' ^ 0x80), Just(b'!'),
                ],
                0..=64,
            ),
        ) {
            let (mut a, mut b) = ([(0, 0); WORDS], [(0, 0); WORDS]);
            prop_assert_eq!(words(&line, &mut a), words_bytewise(&line, &mut b));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn a_line_is_scanned_alike_in_one_pass(
            rest in prop::collection::vec(
                prop_oneof![
                    4 => Just(b'a'), 2 => Just(b' '), 1 => Just(b'\t'), 1 => Just(b'\r'), 1 => Just(b'\n'),
                    1 => Just(b'\x8a'), 1 => Just(b'\xa0'), 1 => Just(b'\x0a' ^ 0x80),
                ],
                0..90,
            ),
        ) {
            let mut a = [(0, 0); WORDS];
            let scanned = scan(&rest, &mut a);
            match memchr::memchr(b'\n', &rest) {
                Some(nl) if nl < 64 => {
                    let mut b = [(0, 0); WORDS];
                    let (count, ascii) = words_bytewise(trim_eol(&rest[..=nl]), &mut b);
                    prop_assert_eq!(scanned, Some((nl, count, ascii)));
                    prop_assert_eq!(&a[..count.min(WORDS)], &b[..count.min(WORDS)]);
                }
                _ => prop_assert_eq!(scanned, None),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn publishes_frame_alike_whatever_rules_come_and_go(
            ops in prop::collection::vec(client_op(), 0..24),
            sizes in prop::collection::vec(1usize..48, 1..8),
            modes in prop::collection::vec(0u8..3, 1..6),
        ) {
            check_modes(false, &ops, &sizes, &modes, 0);
        }

        #[test]
        fn deliveries_frame_alike_whatever_rules_come_and_go(
            ops in prop::collection::vec(server_op(), 0..24),
            sizes in prop::collection::vec(1usize..48, 1..8),
            modes in prop::collection::vec(0u8..3, 1..6),
        ) {
            check_modes(true, &ops, &sizes, &modes, 0);
        }

        /// With garbage, under one interest throughout: lines are read the same way
        /// (in full, or as far as framing and matching need) whatever the cuts.
        #[test]
        fn garbage_is_framed_alike_whatever_the_cuts(
            server in any::<bool>(),
            client in prop::collection::vec(prop_oneof![24 => client_op(), 1 => garbage()], 0..24),
            from_server in prop::collection::vec(prop_oneof![21 => server_op(), 1 => garbage()], 0..24),
            sizes in prop::collection::vec(1usize..48, 1..8),
            mode in 0u8..3,
        ) {
            let ops = if server { &from_server } else { &client };
            check_modes(server, ops, &sizes, &[mode], mode);
        }
    }

    #[test]
    fn once_told_the_rules_lines_are_read_only_as_far_as_framing_and_matching_need() {
        // A publish with a word too many: its size frames it, but it is malformed.
        let script = b"PUB a.b c d 5\r\nhello\r\nPING\r\n";
        let mut full = Nats.conversation();
        assert!(full.client(script).is_err(), "read in full, it goes opaque");
        let mut none = Nats.conversation();
        none.interest(None);
        let reqs = none.client(script).unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].len, reqs[0].replies), (script.len(), 1));
        let on_ab: Interest = Arc::new(|v: &dyn FieldView| v.field("subject") == Some("a.b"));
        let mut some = Nats.conversation();
        some.interest(Some(&on_ab));
        let reqs = some.client(script).unwrap();
        assert_eq!(reqs[0].fields["subject"], "a.b");
        assert_eq!(reqs[0].len, 22);
        // Lines the light way does not know are read in full.
        assert!(none.client(b"PUB a b\r\n").is_err());
        assert!(some.client(b"PUB 5\r\n").is_err());
    }

    #[test]
    fn a_rule_arriving_mid_stream_sees_the_next_publish_whole() {
        // No rule: everything that completes is one run, whatever it holds.
        let mut conv = Nats.conversation();
        conv.interest(None);
        let reqs = conv
            .client(b"PUB a.b 3\r\nabc\r\nPING\r\nPUB a.b 5\r\nhel")
            .unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].len, reqs[0].replies), (22, 1));
        assert!(!reqs[0].matchable);
        // A rule on a.b arrives while a publish is cut: it completes as what it is.
        let on_ab: Interest = Arc::new(|v: &dyn FieldView| v.field("topic") == Some("a.b"));
        conv.interest(Some(&on_ab));
        let reqs = conv
            .client(b"lo\r\nPUB x 1\r\n1\r\nPUB a.b 1\r\n2\r\n")
            .unwrap();
        let shape: Vec<_> = reqs
            .iter()
            .map(|r| (r.len, r.matchable, r.fields.get("subject").cloned()))
            .collect();
        assert_eq!(
            shape,
            [
                (18, true, Some("a.b".to_string())),
                (12, false, None),
                (14, true, Some("a.b".to_string())),
            ]
        );
    }
}
