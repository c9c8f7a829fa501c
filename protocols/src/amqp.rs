//! AMQP 0-9-1 (RabbitMQ): frames on both sides, publishes and deliveries as whole
//! messages.
//!
//! - Frames: type (1 method, 2 content header, 3 body, 8 heartbeat), channel,
//!   payload size, payload, `0xCE`. The client's stream starts with the protocol
//!   header `AMQP\0\0\x09\x01`; another version (AMQP 1.0, `AMQP\x03...`) makes the
//!   connection opaque.
//! - Requests: a `Basic.Publish` method frame with its content header and body
//!   frames is one request, matchable on `topic` (its routing key). Every other frame
//!   is a request of its own that no rule acts on. No request counts a response:
//!   AMQP answers per channel, in no order across channels.
//! - Server messages: `Basic.Deliver` and `Basic.GetOk` with their content are one
//!   message each, matchable on `topic` (the routing key the message was published
//!   with). `Basic.Return` with its content, and every other frame, are messages no
//!   rule acts on.
//! - Answers: `error()` is a `Connection.Close` with reply code `status=` (default
//!   541, INTERNAL_ERROR) and `message=`, naming the method it answers; the server's
//!   later bytes are swallowed (the client believes the broker closed it). A
//!   channel close would leave the broker's channel open while the client's is
//!   closed (RabbitMQ ends the connection at the next frame on it), so every code is
//!   a connection close.
//! - Drop: a publish vanishes (not forwarded; the client gets nothing). On a channel
//!   in confirm mode (`Confirm.Select`) the broker numbers confirms by the
//!   publishes it receives, so a lost one would shift every later confirm: there
//!   the drop closes the connection instead. A delivery vanishes; a `Basic.GetOk`
//!   becomes `Basic.GetEmpty`, so the client sees an empty queue rather than wait
//!   forever. The broker still counts the message as delivered: unacknowledged, it is
//!   requeued when the consumer's channel closes; with no-ack it is gone.
//! - Duplicate: a publish goes to the broker twice, so every queue it reaches holds
//!   two copies, each delivered with its own delivery tag. Refused (forwarded once)
//!   on a channel in confirm mode and on deliveries: a copied delivery would carry a
//!   tag the broker issued once, and acknowledging it twice closes the channel
//!   (PRECONDITION_FAILED).
//! - Limits: a frame or a message body larger than [`MAX_MESSAGE`] makes the
//!   connection opaque, as does a publish's or delivery's content interrupted by
//!   another channel's frame (clients and RabbitMQ write them whole).

use std::collections::{HashSet, VecDeque};

use crate::common::{fields, request, request_id, too_large};
use crate::{
    ActionKind, Answer, Code, Conversation, Fields, Message, Opaque, Protocol, Reply, Request,
    MAX_MESSAGE,
};

/// AMQP 0-9-1.
pub struct Amqp;

impl Protocol for Amqp {
    fn name(&self) -> &'static str {
        "amqp"
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
        Box::new(AmqpConversation::default())
    }
}

/// The client's first bytes.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_END: u8 = 0xCE;
const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const HEARTBEAT: u8 = 8;

const BASIC: u16 = 60;
const PUBLISH: (u16, u16) = (BASIC, 40);
const RETURN: (u16, u16) = (BASIC, 50);
const DELIVER: (u16, u16) = (BASIC, 60);
const GET_OK: (u16, u16) = (BASIC, 71);
const GET_EMPTY: (u16, u16) = (BASIC, 72);
const CONFIRM_SELECT: (u16, u16) = (85, 10);
const CHANNEL_CLOSE: (u16, u16) = (20, 40);
const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
const CONNECTION_CLOSE: (u16, u16) = (10, 50);

/// INTERNAL_ERROR: the code `error()` closes with when it names none.
pub const DEFAULT_ERROR: u16 = 541;

/// Publishes remembered for `drop`/`duplicate` after `client()` returned them: the
/// relay acts on a request before it forwards any later one, so a few suffice.
const REMEMBERED: usize = 4096;

/// One frame's head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) channel: u16,
    /// The whole frame's length, head and end byte included.
    pub(crate) len: usize,
}

/// The next whole frame at the start of `data`: `Ok(None)` when more bytes are
/// needed.
pub(crate) fn frame<'a>(data: &'a [u8], side: &str) -> Result<Option<(Frame, &'a [u8])>, Opaque> {
    if data.len() < 7 {
        return Ok(None);
    }
    let channel = u16::from_be_bytes([data[1], data[2]]);
    let size = u32::from_be_bytes([data[3], data[4], data[5], data[6]]) as usize;
    let kind = data[0];
    if !matches!(kind, METHOD | HEADER | BODY | HEARTBEAT) {
        return Err(Opaque(format!("amqp: unknown {side} frame type {kind}")));
    }
    if size > MAX_MESSAGE {
        return Err(too_large(&format!("an amqp {side} frame")));
    }
    if data.len() < 7 + size + 1 {
        return Ok(None);
    }
    if data[7 + size] != FRAME_END {
        return Err(Opaque(format!(
            "amqp: a {side} frame does not end in 0xCE (type {kind}, {size} bytes)"
        )));
    }
    Ok(Some((
        Frame {
            kind,
            channel,
            len: size + 8,
        },
        &data[7..7 + size],
    )))
}

/// Reads a method's arguments.
pub(crate) struct Args<'a>(pub(crate) &'a [u8]);

impl<'a> Args<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("eight bytes")))
    }
    pub(crate) fn short(&mut self) -> Option<String> {
        let n = *self.take(1)?.first()? as usize;
        self.take(n)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// A method frame's class and method ids, and its arguments.
pub(crate) fn method(payload: &[u8]) -> Result<((u16, u16), Args<'_>), Opaque> {
    let mut a = Args(payload);
    match (a.u16(), a.u16()) {
        (Some(c), Some(m)) => Ok(((c, m), a)),
        _ => Err(Opaque("amqp: a method frame shorter than its ids".into())),
    }
}

fn bad(what: &str) -> Opaque {
    Opaque(format!("amqp: a malformed {what}"))
}

/// A content header's body size.
fn body_size(payload: &[u8]) -> Result<u64, Opaque> {
    let mut a = Args(payload);
    a.take(4);
    a.u64().ok_or_else(|| bad("content header"))
}

/// A method with content, read up to its last body frame.
struct Content {
    channel: u16,
    /// Bytes of the message so far.
    len: usize,
    /// Body bytes still to come; `None` before the content header.
    remaining: Option<u64>,
    fields: Fields,
    matchable: bool,
}

impl Content {
    /// Takes the next frame; returns whether the message is whole.
    fn frame(&mut self, f: Frame, payload: &[u8], side: &str) -> Result<bool, Opaque> {
        self.len += f.len;
        if f.kind == HEARTBEAT && f.channel == 0 {
            return Ok(false);
        }
        if f.channel != self.channel {
            return Err(Opaque(format!(
                "amqp: a {side} message's content on channel {} is interrupted by channel {}",
                self.channel, f.channel
            )));
        }
        match (f.kind, self.remaining) {
            (HEADER, None) => {
                let size = body_size(payload)?;
                if size > MAX_MESSAGE as u64 {
                    return Err(too_large(&format!("an amqp {side} message body")));
                }
                self.remaining = Some(size);
                Ok(size == 0)
            }
            (BODY, Some(left)) => {
                let n = payload.len() as u64;
                if n > left {
                    return Err(Opaque(format!(
                        "amqp: a {side} body frame is longer than its content header said"
                    )));
                }
                self.remaining = Some(left - n);
                Ok(left == n)
            }
            (kind, _) => Err(Opaque(format!(
                "amqp: frame type {kind} where a {side} message's content was expected on channel {}",
                self.channel
            ))),
        }
    }
}

#[derive(Default)]
struct AmqpConversation {
    opaque: Option<Opaque>,
    client: Vec<u8>,
    /// Whether the protocol header has been read.
    started: bool,
    publish: Option<Content>,
    /// Channels in confirm mode.
    confirming: HashSet<u16>,
    /// Recent publishes: their id and whether their channel was confirming.
    publishes: VecDeque<(u64, bool)>,
    server: Vec<u8>,
    server_started: bool,
    delivery: Option<Content>,
    /// An injected `Connection.Close` went to the client: the server's bytes no
    /// longer reach it.
    closed: bool,
}

impl AmqpConversation {
    fn latch<T>(&mut self, r: Result<T, Opaque>) -> Result<T, Opaque> {
        if let Err(e) = &r {
            self.opaque = Some(e.clone());
            self.client = Vec::new();
            self.server = Vec::new();
        }
        r
    }

    fn client_frames(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        if !self.started {
            let n = self.client.len().min(8);
            if self.client[..n] != PROTOCOL_HEADER[..n] {
                return Err(Opaque(format!(
                    "amqp: the client's protocol header is {:?}, not AMQP 0-9-1",
                    String::from_utf8_lossy(&self.client[..n])
                )));
            }
            if n < 8 {
                return Ok(out);
            }
            self.started = true;
            at = 8;
            out.push(request(8, Fields::new(), false, 0));
        }
        while let Some((f, payload)) = frame(&self.client[at..], "client")? {
            at += f.len;
            if let Some(p) = self.publish.as_mut() {
                if p.frame(f, payload, "client")? {
                    let p = self.publish.take().expect("checked above");
                    let r = request(p.len, p.fields, true, 0);
                    let confirming = self.confirming.contains(&p.channel);
                    if self.publishes.len() >= REMEMBERED {
                        self.publishes.pop_front();
                    }
                    self.publishes.push_back((request_id(&r), confirming));
                    out.push(r);
                }
                continue;
            }
            match f.kind {
                METHOD => {
                    let (id, mut args) = method(payload)?;
                    match id {
                        PUBLISH => {
                            args.u16().ok_or_else(|| bad("Basic.Publish"))?;
                            let _exchange = args.short().ok_or_else(|| bad("Basic.Publish"))?;
                            let key = args.short().ok_or_else(|| bad("Basic.Publish"))?;
                            self.publish = Some(Content {
                                channel: f.channel,
                                len: f.len,
                                remaining: None,
                                fields: fields([("topic", key)]),
                                matchable: true,
                            });
                            continue;
                        }
                        CONFIRM_SELECT => {
                            self.confirming.insert(f.channel);
                        }
                        CHANNEL_CLOSE | CHANNEL_CLOSE_OK => {
                            self.confirming.remove(&f.channel);
                        }
                        _ => {}
                    }
                }
                HEARTBEAT => {}
                kind => {
                    return Err(Opaque(format!(
                        "amqp: a client content frame (type {kind}) without a Basic.Publish on channel {}",
                        f.channel
                    )))
                }
            }
            out.push(request(f.len, Fields::new(), false, 0));
        }
        self.client.drain(..at);
        Ok(out)
    }

    fn server_frames(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        self.server.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        if !self.server_started {
            match self.server.first() {
                None => return Ok(out),
                Some(b'A') if self.server.len() < 8 => return Ok(out),
                Some(b'A') if self.server.starts_with(b"AMQP") => {
                    // The broker refuses the client's version: it names its own,
                    // then closes.
                    at = 8;
                    out.push(self.message(8, Fields::new(), false));
                }
                _ => {}
            }
            self.server_started = true;
        }
        while let Some((f, payload)) = frame(&self.server[at..], "server")? {
            at += f.len;
            if let Some(d) = self.delivery.as_mut() {
                if d.frame(f, payload, "server")? {
                    let d = self.delivery.take().expect("checked above");
                    out.push(self.message(d.len, d.fields, d.matchable));
                }
                continue;
            }
            if f.kind == METHOD {
                let (id, mut args) = method(payload)?;
                let started = match id {
                    DELIVER => {
                        args.short().ok_or_else(|| bad("Basic.Deliver"))?;
                        args.take(9).ok_or_else(|| bad("Basic.Deliver"))?;
                        args.short().ok_or_else(|| bad("Basic.Deliver"))?;
                        Some((args.short().ok_or_else(|| bad("Basic.Deliver"))?, true))
                    }
                    GET_OK => {
                        args.take(9).ok_or_else(|| bad("Basic.GetOk"))?;
                        args.short().ok_or_else(|| bad("Basic.GetOk"))?;
                        Some((args.short().ok_or_else(|| bad("Basic.GetOk"))?, true))
                    }
                    RETURN => {
                        args.u16().ok_or_else(|| bad("Basic.Return"))?;
                        args.short().ok_or_else(|| bad("Basic.Return"))?;
                        args.short().ok_or_else(|| bad("Basic.Return"))?;
                        Some((args.short().ok_or_else(|| bad("Basic.Return"))?, false))
                    }
                    _ => None,
                };
                if let Some((key, matchable)) = started {
                    self.delivery = Some(Content {
                        channel: f.channel,
                        len: f.len,
                        remaining: None,
                        fields: fields([("topic", key)]),
                        matchable,
                    });
                    continue;
                }
            } else if f.kind != HEARTBEAT {
                return Err(Opaque(format!(
                    "amqp: a server content frame (type {}) without a delivery on channel {}",
                    f.kind, f.channel
                )));
            }
            out.push(self.message(f.len, Fields::new(), false));
        }
        self.server.drain(..at);
        Ok(out)
    }

    fn message(&self, len: usize, fields: Fields, matchable: bool) -> Message {
        Message {
            len,
            fields,
            matchable: matchable && !self.closed,
            responses: 0,
            // An injected `Connection.Close` ended the client's view of the broker.
            forward: !self.closed,
        }
    }

    /// Whether `request` is a publish on a channel in confirm mode.
    fn confirming(&self, request: &Request) -> bool {
        let id = request_id(request);
        self.publishes
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .is_some_and(|(_, c)| *c)
    }

    /// A `Connection.Close` for `answer` in place of method `about`; the server's
    /// later bytes are swallowed.
    fn close(&mut self, about: (u16, u16), answer: &Answer) -> Result<Vec<u8>, String> {
        let Answer::Error { message, status } = answer else {
            return Err("amqp has no response(): use error(), which closes the connection".into());
        };
        let code = match status {
            None => DEFAULT_ERROR,
            Some(Code::Number(n)) => u16::try_from(*n)
                .map_err(|_| format!("an AMQP reply code is 0 to 65535, not {n}"))?,
            Some(Code::Text(t)) => {
                return Err(format!("an AMQP reply code is a number, not {t:?}"))
            }
        };
        let text = message.as_deref().unwrap_or("faultbox injected error");
        self.closed = true;
        Ok(connection_close(code, text, about))
    }
}

/// A `Connection.Close` frame (channel 0).
pub fn connection_close(code: u16, text: &str, about: (u16, u16)) -> Vec<u8> {
    let mut args = Vec::new();
    args.extend_from_slice(&CONNECTION_CLOSE.0.to_be_bytes());
    args.extend_from_slice(&CONNECTION_CLOSE.1.to_be_bytes());
    args.extend_from_slice(&code.to_be_bytes());
    let text = &text.as_bytes()[..text.len().min(255)];
    args.push(text.len() as u8);
    args.extend_from_slice(text);
    args.extend_from_slice(&about.0.to_be_bytes());
    args.extend_from_slice(&about.1.to_be_bytes());
    method_frame(0, &args)
}

pub(crate) fn method_frame(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![METHOD];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

/// The channel and method of the message that starts `bytes`.
fn head(bytes: &[u8]) -> Option<(u16, (u16, u16))> {
    let (f, payload) = frame(bytes, "server").ok()??;
    if f.kind != METHOD {
        return None;
    }
    let (id, _) = method(payload).ok()?;
    Some((f.channel, id))
}

impl Conversation for AmqpConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        if let Some(o) = &self.opaque {
            return Err(o.clone());
        }
        let r = self.client_frames(bytes);
        self.latch(r)
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        if let Some(o) = &self.opaque {
            return Err(o.clone());
        }
        let r = self.server_frames(bytes).map(|_| 0);
        self.latch(r)
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        if let Some(o) = &self.opaque {
            return Err(format!("the connection is relayed unchanged: {o}"));
        }
        if !request.matchable {
            return Err("this message is not a request rules may act on".into());
        }
        self.close(PUBLISH, answer).map(|bytes| Reply { bytes })
    }

    fn frames_server(&self) -> bool {
        true
    }

    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        if let Some(o) = &self.opaque {
            return Err(o.clone());
        }
        let r = self.server_frames(bytes);
        self.latch(r)
    }

    /// A rule drops a publish: it vanishes, unless its channel confirms publishes
    /// (`None`: the connection is closed).
    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        if self.confirming(request) {
            None
        } else {
            Some(Reply { bytes: Vec::new() })
        }
    }

    /// A rule duplicates a publish: the broker gets it twice.
    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        if self.confirming(request) {
            return Err(
                "the channel is in confirm mode: a second copy would shift every later confirm"
                    .into(),
            );
        }
        Ok([bytes, bytes].concat())
    }

    /// A rule drops a delivery: it vanishes; a `Basic.GetOk` becomes `Basic.GetEmpty`.
    fn drop_message(&mut self, _: &Message, bytes: &[u8]) -> Result<Vec<u8>, String> {
        match head(bytes) {
            Some((channel, GET_OK)) => {
                let mut p = Vec::new();
                p.extend_from_slice(&GET_EMPTY.0.to_be_bytes());
                p.extend_from_slice(&GET_EMPTY.1.to_be_bytes());
                p.push(0); // cluster-id, reserved
                Ok(method_frame(channel, &p))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Deliveries are not copied (see the module doc).
    fn duplicate_message(&mut self, _: &Message, _: &[u8]) -> Result<Vec<u8>, String> {
        Err(
            "a copied delivery would carry a delivery tag the broker issued once \
             (acking it twice closes the channel): duplicate() copies publishes"
                .into(),
        )
    }

    /// A rule answers a delivery with an error: the connection closes in its place.
    fn answer_message(
        &mut self,
        _: &Message,
        bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        let about = head(bytes).map(|(_, id)| id).unwrap_or((0, 0));
        self.close(about, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method frame on `channel` with class, method and raw arguments.
    pub(crate) fn meth(channel: u16, id: (u16, u16), args: &[u8]) -> Vec<u8> {
        let mut p = id.0.to_be_bytes().to_vec();
        p.extend_from_slice(&id.1.to_be_bytes());
        p.extend_from_slice(args);
        method_frame(channel, &p)
    }

    fn short(s: &str) -> Vec<u8> {
        let mut b = vec![s.len() as u8];
        b.extend_from_slice(s.as_bytes());
        b
    }

    fn frame_of(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        f
    }

    fn content(channel: u16, body: &[u8], split: usize) -> Vec<u8> {
        let mut h = BASIC.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&(body.len() as u64).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        let mut out = frame_of(HEADER, channel, &h);
        for part in body.chunks(split.max(1)) {
            out.extend(frame_of(BODY, channel, part));
        }
        out
    }

    pub(crate) fn publish(channel: u16, key: &str, body: &[u8]) -> Vec<u8> {
        let mut a = vec![0, 0];
        a.extend(short(""));
        a.extend(short(key));
        a.push(0);
        let mut out = meth(channel, PUBLISH, &a);
        out.extend(content(channel, body, 3));
        out
    }

    fn deliver(channel: u16, tag: u64, key: &str, body: &[u8]) -> Vec<u8> {
        let mut a = short("ctag");
        a.extend_from_slice(&tag.to_be_bytes());
        a.push(0);
        a.extend(short(""));
        a.extend(short(key));
        let mut out = meth(channel, DELIVER, &a);
        out.extend(content(channel, body, 4));
        out
    }

    fn get_ok(channel: u16, key: &str, body: &[u8]) -> Vec<u8> {
        let mut a = 1u64.to_be_bytes().to_vec();
        a.push(0);
        a.extend(short(""));
        a.extend(short(key));
        a.extend_from_slice(&0u32.to_be_bytes());
        let mut out = meth(channel, GET_OK, &a);
        out.extend(content(channel, body, 100));
        out
    }

    fn m() -> Message {
        Message {
            len: 0,
            fields: Fields::new(),
            matchable: true,
            responses: 0,
            forward: true,
        }
    }

    fn conv() -> AmqpConversation {
        AmqpConversation::default()
    }

    /// Feeds `bytes` in chunks of `cut` bytes.
    fn requests(c: &mut AmqpConversation, bytes: &[u8], cut: usize) -> Vec<Request> {
        bytes
            .chunks(cut)
            .flat_map(|ch| c.client_frames(ch).unwrap())
            .collect()
    }

    fn messages(c: &mut AmqpConversation, bytes: &[u8], cut: usize) -> Vec<Message> {
        bytes
            .chunks(cut)
            .flat_map(|ch| c.server_frames(ch).unwrap())
            .collect()
    }

    #[test]
    fn publishes_are_whole_requests_at_every_cut() {
        let mut stream = PROTOCOL_HEADER.to_vec();
        stream.extend(meth(1, (20, 10), &short("")));
        stream.extend(publish(1, "orders.new", b"hello world"));
        stream.extend(frame_of(HEARTBEAT, 0, &[]));
        stream.extend(publish(2, "empty", b""));
        for cut in [1, 2, 7, 13, 64, stream.len()] {
            let mut c = conv();
            let r = requests(&mut c, &stream, cut);
            assert_eq!(r.len(), 5, "cut {cut}: {r:?}");
            assert_eq!(r.iter().map(|r| r.len).sum::<usize>(), stream.len());
            assert_eq!(r[2].fields["topic"], "orders.new");
            assert!(r[2].matchable && !r[1].matchable && !r[3].matchable);
            assert_eq!(r[4].fields["topic"], "empty");
            assert!(r.iter().all(|r| r.replies == 0));
        }
    }

    #[test]
    fn deliveries_and_gets_are_whole_messages() {
        let mut s = meth(0, (10, 10), &[0, 9, 0, 0, 0, 0, 0, 0, 0]);
        s.extend(deliver(1, 1, "orders.new", b"a body of some length"));
        s.extend(frame_of(HEARTBEAT, 0, &[]));
        s.extend(get_ok(2, "q", b""));
        for cut in [1, 3, 10, s.len()] {
            let mut c = conv();
            let m = messages(&mut c, &s, cut);
            assert_eq!(m.len(), 4, "cut {cut}");
            assert_eq!(m.iter().map(|m| m.len).sum::<usize>(), s.len());
            assert_eq!(m[1].fields["topic"], "orders.new");
            assert!(m[1].matchable && m[3].matchable && !m[0].matchable && !m[2].matchable);
            assert!(m.iter().all(|m| m.forward));
        }
    }

    #[test]
    fn errors_close_the_connection_and_hide_the_server() {
        let mut c = conv();
        let mut stream = PROTOCOL_HEADER.to_vec();
        stream.extend(publish(1, "k", b"x"));
        let r = c.client(&stream).unwrap().remove(1);
        let err = Answer::Error {
            message: Some("nope".into()),
            status: Some(Code::Number(404)),
        };
        let bytes = c.answer(&r, &err).unwrap().bytes;
        assert_eq!(bytes, connection_close(404, "nope", PUBLISH));
        let m = c.server_frames(&deliver(1, 1, "k", b"y")).unwrap();
        assert!(!m[0].forward && !m[0].matchable);
        let text = Answer::Error {
            message: None,
            status: Some(Code::Text("x".into())),
        };
        assert!(c.answer(&r, &text).is_err());
    }

    #[test]
    fn confirm_mode_turns_drop_into_a_reset_and_refuses_copies() {
        let mut c = conv();
        let mut stream = PROTOCOL_HEADER.to_vec();
        stream.extend(publish(1, "k", b"x"));
        stream.extend(meth(2, CONFIRM_SELECT, &[0]));
        stream.extend(publish(2, "k", b"xy"));
        let r = c.client(&stream).unwrap();
        assert!(c.drop_request(&r[1]).is_some_and(|r| r.bytes.is_empty()));
        assert!(c.duplicate_request(&r[1], b"ab").unwrap() == b"abab");
        assert!(c.drop_request(&r[3]).is_none());
        assert!(c.duplicate_request(&r[3], b"ab").is_err());
    }

    #[test]
    fn a_dropped_get_is_an_empty_queue() {
        let mut c = conv();
        let bytes = get_ok(3, "q", b"v");
        let out = c.drop_message(&m(), &bytes).unwrap();
        assert_eq!(out, meth(3, GET_EMPTY, &[0]));
        assert!(c
            .drop_message(&m(), &deliver(1, 1, "q", b"v"))
            .unwrap()
            .is_empty());
        assert!(c.duplicate_message(&m(), b"").is_err());
    }

    #[test]
    fn what_is_not_amqp_0_9_1_is_opaque() {
        for bad in [
            &b"AMQP\x00\x01\x00\x00"[..],
            b"AMQP\x03\x01\x00\x00",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(conv().client(bad).is_err(), "{bad:?}");
        }
        let mut c = conv();
        let mut s = PROTOCOL_HEADER.to_vec();
        s.extend(frame_of(METHOD, 0, b"\x00\x0a\x00\x0b"));
        assert_eq!(c.client(&s).unwrap().len(), 2);
        // No frame end.
        assert!(c.client(&[1, 0, 0, 0, 0, 0, 1, 9, 0]).is_err());
        assert!(c.client(&[1]).is_err(), "stays opaque");
        // A body with no publish; an oversized frame; a content interrupted.
        let mut c = conv();
        c.client(PROTOCOL_HEADER).unwrap();
        assert!(c.client(&frame_of(BODY, 1, b"x")).is_err());
        let mut c = conv();
        assert!(c.server(&[1, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut c = conv();
        let mut s = deliver(1, 1, "k", b"abc");
        s.truncate(s.len() - 11);
        s.extend(meth(2, (20, 11), &[]));
        assert!(c.server(&s).is_err());
        // The broker's refusal names its version.
        let mut c = conv();
        assert_eq!(c.server_frames(PROTOCOL_HEADER).unwrap().len(), 1);
    }
}
