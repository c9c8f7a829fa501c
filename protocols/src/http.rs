//! HTTP/1.x: keep-alive and pipelining.
//!
//! - Request: the request line, headers and body (none, `Content-Length`, or
//!   chunked with trailers). A request with `Expect: 100-continue` is reported at
//!   the end of its headers (the client waits for the server's `100 Continue`
//!   before it sends the body, so holding the headers until the body came would
//!   stall both), and its body follows as a non-matchable message.
//! - Response: the final response to a request, body included: `HEAD` responses
//!   and 204/304 have no body; a body with neither length nor chunking ends when
//!   the server closes (that response never completes). Interim responses (100,
//!   102, 103) are not responses to count. Bodies are skipped, never held.
//! - Match keys: `method` (as sent; compared case-insensitively) and `path`: the
//!   request target without its query string or fragment, as sent (percent-encoding
//!   kept); for an absolute-form target (`http://host/a?b`) the path part (`/a`).
//! - Answers: `error()` → the status (default 500) with a short `text/plain` body
//!   (the message, else the reason phrase); `response()` → the status (default 200)
//!   with `body` (`application/json` when it starts with `{` or `[`). Both are
//!   `Content-Length` framed, `Connection: keep-alive` unless the request asked to
//!   close (`Connection: close`, or HTTP/1.0 without keep-alive) or was an
//!   `Expect: 100-continue` request (its body may still come, so the answer closes
//!   the connection). The status must be within 200..=599: an informational one
//!   would not end the exchange.
//! - Limits: `CONNECT`, any request with an `Upgrade` header (WebSocket, h2c), a
//!   `101 Switching Protocols` and HTTP/2 with prior knowledge make the connection
//!   opaque (HTTP/2 is a later protocol), as does a request over MAX_MESSAGE.

use crate::common::{fields, request, too_large, Framer, Inbox, Latched, Ledger};
use crate::MAX_MESSAGE;
use crate::{ActionKind, Answer, Conversation, Fields, Opaque, Protocol, Reply, Request};

/// HTTP/1.x.
pub struct Http;

impl Protocol for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["method", "path"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Response | ActionKind::Error | ActionKind::Delay | ActionKind::Drop
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(HttpConversation::default())
    }
}

/// What reading a request's response and answering it need.
#[derive(Clone, Copy, Debug, Default)]
struct Exchange {
    head: bool,
    close: bool,
    expect: bool,
}

/// Where a message's body stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Body {
    /// Reading the start line and headers.
    #[default]
    Head,
    /// A fixed-length body is being skipped.
    Fixed,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Expecting trailer lines up to an empty one.
    Trailers,
    /// The body runs to the end of the connection.
    UntilClose,
}

#[derive(Default)]
struct HttpConversation {
    client: Inbox,
    client_scanned: usize,
    client_body: Body,
    /// The request whose body is being read, and whether its head was already
    /// reported (`Expect: 100-continue`).
    current: Option<(Fields, Exchange, bool)>,
    server: Inbox,
    server_scanned: usize,
    server_body: Body,
    /// Whether the response being read answers a request (and so counts).
    server_counts: bool,
    pending: Ledger<Exchange>,
}

/// Which side's message a head starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// A message's start line, checked, with what the conversation keeps of it.
enum Start {
    Request {
        method: String,
        /// The target's path ([`target_path`]).
        path: String,
        /// `HTTP/1.0`: keep-alive only when asked for.
        http10: bool,
    },
    Response {
        status: u16,
    },
}

/// A parsed start line and the headers that matter here.
struct Head {
    start: Start,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect: bool,
    upgrade: bool,
}

/// Finds the blank line ending a head; returns the index just past it.
fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            *scanned = 0;
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            *scanned = 0;
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    *scanned = buf.len();
    None
}

/// The next line of `rest` without its `\r\n` or `\n`, and `rest` past it. Split on
/// the byte: `\n` is ASCII, so the cut is a char boundary.
fn next_line<'a>(rest: &mut &'a str) -> &'a str {
    let (line, after) = match rest.as_bytes().iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, ""),
    };
    *rest = after;
    line.strip_suffix('\r').unwrap_or(line)
}

/// Parses a head of `side`'s message. Nothing is allocated but the request's match
/// keys: a head goes by on every request and response.
fn parse_head(bytes: &[u8], side: Side) -> Result<Head, Opaque> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Opaque("http: a message head is not text".into()))?;
    let mut rest = text;
    let first = next_line(&mut rest);
    let mut content_length = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect = false;
    let mut upgrade = false;
    loop {
        let line = next_line(&mut rest);
        if line.is_empty() {
            if rest.is_empty() {
                break;
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some(colon) = line.as_bytes().iter().position(|&b| b == b':') else {
            return Err(Opaque(format!("http: a header without a colon: {line:?}")));
        };
        let name = line[..colon].trim();
        // Only the headers read below have their value trimmed.
        let value = || line[colon + 1..].trim();
        if name.eq_ignore_ascii_case("content-length") {
            let value = value();
            let n: usize = value
                .parse()
                .ok()
                .filter(|n| *n < 1 << 48)
                .ok_or_else(|| Opaque(format!("http: bad Content-Length {value:?}")))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(Opaque("http: conflicting Content-Length headers".into()));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = value();
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = last.eq_ignore_ascii_case("chunked");
            if !chunked && !value.is_empty() {
                content_length = None;
                // A transfer coding other than chunked last: delimited by close.
                close = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value().split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect = value().eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if chunked {
        content_length = None;
    }
    let mut parts = first.splitn(3, ' ');
    let start = match side {
        Side::Client => {
            let (Some(method), Some(target), Some(version), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(Opaque("http: not an HTTP/1 request line".into()));
            };
            if !version.starts_with("HTTP/1.") {
                return Err(Opaque(format!("http: unsupported version {version:?}")));
            }
            if method.eq_ignore_ascii_case("CONNECT") {
                return Err(Opaque("http: CONNECT tunnels the connection".into()));
            }
            Start::Request {
                method: method.to_string(),
                path: target_path(target),
                http10: version == "HTTP/1.0",
            }
        }
        Side::Server => {
            let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
                return Err(Opaque("http: not an HTTP/1 status line".into()));
            };
            if !version.starts_with("HTTP/1.") {
                return Err(Opaque(format!(
                    "http: unsupported response version {version:?}"
                )));
            }
            let status: u16 = status
                .parse()
                .map_err(|_| Opaque(format!("http: bad status {status:?}")))?;
            Start::Response { status }
        }
    };
    Ok(Head {
        start,
        content_length,
        chunked,
        close,
        keep_alive,
        expect,
        upgrade,
    })
}

/// The path of a request target: no query string or fragment; for absolute-form,
/// the part after the authority.
fn target_path(target: &str) -> String {
    let mut t = target;
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        t = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    }
    let end = t.find(['?', '#']).unwrap_or(t.len());
    t[..end].to_string()
}

impl Framer for HttpConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.extend(bytes);
        let mut out = Vec::new();
        loop {
            if self.client.skipping() {
                return Ok(out);
            }
            if self.client_body == Body::Head {
                let data = self.client.data();
                // Blank lines between requests are allowed; they belong to the next.
                let blank = data
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                if blank > 0 {
                    self.client.consume(blank);
                    continue;
                }
                if data.is_empty() {
                    return Ok(out);
                }
                if data.starts_with(b"PRI * HTTP/2.0") || b"PRI * HTTP/2.0".starts_with(data) {
                    if data.len() >= 14 {
                        return Err(Opaque("http: HTTP/2 with prior knowledge".into()));
                    }
                    return Ok(out);
                }
                let Some(end) = head_end(data, &mut self.client_scanned) else {
                    if data.len() > MAX_MESSAGE {
                        return Err(too_large("an http request head"));
                    }
                    return Ok(out);
                };
                let head = parse_head(&data[..end], Side::Client)?;
                self.client.consume(end);
                self.request_head(head, &mut out)?;
                continue;
            }
            if !self.body_step(Side::Client)? {
                return Ok(out);
            }
            if self.client_body == Body::Head {
                let (fields, exchange, reported) = self.current.take().unwrap_or_default();
                let len = self.client.take();
                let r = if reported {
                    request(len, Fields::new(), false, 0)
                } else {
                    request(len, fields, true, 1)
                };
                if !reported {
                    self.pending.push(&r, exchange)?;
                }
                out.push(r);
            }
            if self.client.held() > MAX_MESSAGE {
                return Err(too_large("an http request"));
            }
        }
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        self.server.extend(bytes);
        let mut done = 0;
        loop {
            if self.server.skipping() {
                return Ok(done);
            }
            match self.server_body {
                Body::UntilClose => {
                    let n = self.server.data().len();
                    self.server.consume(n);
                    self.server.take();
                    return Ok(done);
                }
                Body::Head => {
                    let data = self.server.data();
                    if data.is_empty() {
                        return Ok(done);
                    }
                    let Some(end) = head_end(data, &mut self.server_scanned) else {
                        if data.len() > MAX_MESSAGE {
                            return Err(too_large("an http response head"));
                        }
                        return Ok(done);
                    };
                    let head = parse_head(&data[..end], Side::Server)?;
                    self.server.consume(end);
                    done += self.response_head(head)?;
                }
                _ => {
                    if !self.body_step(Side::Server)? {
                        return Ok(done);
                    }
                    if self.server_body == Body::Head {
                        done += self.response_done();
                    }
                }
            }
            self.server.take();
        }
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let exchange = self
            .pending
            .find(request)
            .map(|e| e.kind)
            .unwrap_or_default();
        let (status, body, content_type) = match answer {
            Answer::Error { message, status } => {
                let status = match status {
                    None => 500,
                    Some(crate::Code::Number(n)) => *n,
                    Some(t) => return Err(format!("http: status {t} is not a number")),
                };
                let body = message
                    .clone()
                    .unwrap_or_else(|| reason(status).to_string());
                (status, body, "text/plain; charset=utf-8")
            }
            Answer::Response { status, body, .. } => {
                let body = body.clone().unwrap_or_default();
                let json = body.trim_start().starts_with(['{', '[']);
                let ct = if json {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                (status.unwrap_or(200), body, ct)
            }
        };
        if !(200..=599).contains(&status) {
            return Err(format!(
                "http: status {status} cannot answer a request (200 to 599)"
            ));
        }
        self.pending.answered(request);
        let close = exchange.close || exchange.expect;
        let no_body = status == 204 || status == 304;
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        if !no_body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "Connection: keep-alive\r\n\r\n"
        });
        let mut bytes = head.into_bytes();
        if !no_body && !exchange.head {
            bytes.extend_from_slice(body.as_bytes());
        }
        Ok(Reply { bytes })
    }
}

impl HttpConversation {
    fn request_head(&mut self, head: Head, out: &mut Vec<Request>) -> Result<(), Opaque> {
        let Start::Request {
            method,
            path,
            http10,
        } = head.start
        else {
            return Err(Opaque("http: not an HTTP/1 request line".into()));
        };
        if head.upgrade {
            return Err(Opaque(
                "http: the client asks to upgrade the protocol".into(),
            ));
        }
        let close = head.close || (http10 && !head.keep_alive);
        let exchange = Exchange {
            head: method.eq_ignore_ascii_case("HEAD"),
            close,
            expect: false,
        };
        let f = fields([("method", method), ("path", path)]);
        let length = if head.chunked {
            None
        } else {
            match head.content_length {
                Some(n) if n > MAX_MESSAGE => return Err(too_large("an http request body")),
                n => n.filter(|n| *n > 0),
            }
        };
        if !head.chunked && length.is_none() {
            let r = request(self.client.take(), f, true, 1);
            self.pending.push(&r, exchange)?;
            out.push(r);
            return Ok(());
        }
        let reported = head.expect;
        if head.expect {
            // The client waits for `100 Continue` before sending the body: release
            // the head now; the body follows as a message of its own.
            let exchange = Exchange {
                expect: true,
                ..exchange
            };
            let r = request(self.client.take(), f.clone(), true, 1);
            self.pending.push(&r, exchange)?;
            out.push(r);
        }
        self.current = Some((f, exchange, reported));
        match length {
            Some(n) => {
                self.client.skip(n);
                self.client_body = Body::Fixed;
            }
            None => self.client_body = Body::ChunkSize,
        }
        Ok(())
    }

    /// A response ended: 1 if it answered a request.
    fn response_done(&mut self) -> usize {
        if std::mem::take(&mut self.server_counts) {
            self.pending.complete();
            1
        } else {
            0
        }
    }

    /// Reads a response head; returns 1 if it completed a response.
    fn response_head(&mut self, head: Head) -> Result<usize, Opaque> {
        let Start::Response { status } = head.start else {
            return Err(Opaque("http: not an HTTP/1 status line".into()));
        };
        if status == 101 {
            return Err(Opaque("http: the server switched protocols".into()));
        }
        if (100..200).contains(&status) {
            // Interim: the final response is still to come.
            return Ok(0);
        }
        let Some(exchange) = self.pending.front().copied() else {
            // Nothing asked for it (a 408 before closing): read it, count nothing.
            self.server_counts = false;
            return self.response_body(&head, false);
        };
        self.server_counts = true;
        self.response_body(&head, exchange.head)
    }

    /// Sets up reading a response body; returns 1 if the response is complete.
    fn response_body(&mut self, head: &Head, head_request: bool) -> Result<usize, Opaque> {
        let status = match head.start {
            Start::Response { status } => status,
            Start::Request { .. } => 0,
        };
        if head_request || status == 204 || status == 304 {
            return Ok(self.response_done());
        }
        if head.chunked {
            self.server_body = Body::ChunkSize;
            return Ok(0);
        }
        match head.content_length {
            Some(0) => Ok(self.response_done()),
            Some(n) => {
                self.server.skip(n);
                self.server_body = Body::Fixed;
                Ok(0)
            }
            None => {
                self.server_body = Body::UntilClose;
                Ok(0)
            }
        }
    }

    /// Advances through a body on `side`. Returns false when more bytes are needed;
    /// sets the side's state back to `Head` when the body ended.
    fn body_step(&mut self, side: Side) -> Result<bool, Opaque> {
        let (inbox, state, scanned) = match side {
            Side::Client => (
                &mut self.client,
                &mut self.client_body,
                &mut self.client_scanned,
            ),
            Side::Server => (
                &mut self.server,
                &mut self.server_body,
                &mut self.server_scanned,
            ),
        };
        if inbox.skipping() {
            return Ok(false);
        }
        match *state {
            Body::Head | Body::UntilClose => Ok(true),
            Body::Fixed => {
                *state = Body::Head;
                Ok(true)
            }
            Body::ChunkSize | Body::Trailers => {
                let data = inbox.data();
                let Some(end) = crate::common::find_line(data, scanned) else {
                    if data.len() > MAX_MESSAGE {
                        return Err(too_large("an http chunk line"));
                    }
                    return Ok(false);
                };
                let line = crate::common::trim_eol(&data[..end]);
                if *state == Body::Trailers {
                    let last = line.is_empty();
                    inbox.consume(end);
                    if last {
                        *state = Body::Head;
                    }
                    return Ok(true);
                }
                let size = std::str::from_utf8(line)
                    .ok()
                    .map(|l| l.split(';').next().unwrap_or("").trim())
                    .and_then(|h| usize::from_str_radix(h, 16).ok())
                    .filter(|n| *n < 1 << 48)
                    .ok_or_else(|| Opaque("http: bad chunk size".into()))?;
                inbox.consume(end);
                if size == 0 {
                    *state = Body::Trailers;
                } else {
                    if side == Side::Client && size > MAX_MESSAGE {
                        return Err(too_large("an http chunk"));
                    }
                    inbox.skip(size + 2);
                }
                Ok(true)
            }
        }
    }
}

pub(crate) fn reason(status: i64) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Faultbox",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    #[test]
    fn keep_alive_pipelining_and_bodies() {
        let client = b"GET /orders?limit=5 HTTP/1.1\r\nHost: a\r\n\r\n\
POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n\
HEAD /h HTTP/1.1\r\n\r\n\
DELETE http://a:80/x/y?z HTTP/1.1\r\nConnection: close\r\n\r\n"
            .to_vec();
        let server = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nid\r\n0\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\
HTTP/1.1 500 Oops\r\n\r\nuntil close"
            .to_vec();
        let o = check_cuts(&Http, &[(Dir::C, client.clone()), (Dir::S, server)]);
        let summary: Vec<_> = o
            .requests
            .iter()
            .map(|r| {
                (
                    r.fields["method"].as_str(),
                    r.fields["path"].as_str(),
                    r.replies,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("GET", "/orders", 1),
                ("POST", "/orders", 1),
                ("PUT", "/up", 1),
                ("HEAD", "/h", 1),
                ("DELETE", "/x/y", 1),
            ]
        );
        assert_eq!(
            o.requests.iter().map(|r| r.len).sum::<usize>(),
            client.len()
        );
        // The close-delimited response never completes.
        assert_eq!(o.total_responses(), 4);
    }

    #[test]
    fn expect_continue_releases_the_head() {
        let client_head =
            b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n".to_vec();
        let script = [
            (Dir::C, client_head.clone()),
            (Dir::S, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
            (Dir::C, b"data".to_vec()),
            (
                Dir::S,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ),
        ];
        let o = check_cuts(&Http, &script);
        assert_eq!(o.requests.len(), 2);
        assert_eq!(o.requests[0].len, client_head.len());
        assert!(o.requests[0].matchable && o.requests[0].replies == 1);
        assert!(!o.requests[1].matchable && o.requests[1].replies == 0);
        assert_eq!(o.responses, [0, 1]);
    }

    #[test]
    fn answers() {
        let mut c = Http.conversation();
        let rs = c
            .client(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.0\r\n\r\n")
            .unwrap();
        let resp = Answer::Response {
            status: Some(429),
            body: Some("{\"error\":\"rate_limited\"}".into()),
            value: None,
        };
        let text = String::from_utf8(c.answer(&rs[0], &resp).unwrap().bytes).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n\
Content-Length: 24\r\nConnection: keep-alive\r\n\r\n{\"error\":\"rate_limited\"}"
        );
        let err = Answer::Error {
            message: None,
            status: None,
        };
        let head = String::from_utf8(c.answer(&rs[1], &err).unwrap().bytes).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 500 ") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let old = String::from_utf8(c.answer(&rs[2], &err).unwrap().bytes).unwrap();
        assert!(old.contains("Connection: close"), "{old}");
        let bad = Answer::Error {
            message: None,
            status: Some(crate::Code::Number(100)),
        };
        assert!(c.answer(&rs[0], &bad).is_err());
        // The answered requests are off the books: a real response counts for nothing.
        assert_eq!(
            c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(0)
        );
    }

    #[test]
    fn absurd_lengths_are_opaque_not_overflows() {
        let script = [
            (Dir::C, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            (
                Dir::S,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n"
                    .to_vec(),
            ),
        ];
        assert!(play_whole(&Http, &script).is_err());
        let script = [
            (Dir::C, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            (
                Dir::S,
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n".to_vec(),
            ),
        ];
        assert!(play_whole(&Http, &script).is_err());
    }

    #[test]
    fn upgrades_and_http2_are_opaque() {
        for client in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\r\n\r\n",
        ] {
            assert!(play_whole(&Http, &[(Dir::C, client.to_vec())]).is_err());
        }
        let script = [
            (Dir::C, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            (Dir::S, b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec()),
        ];
        assert!(play_whole(&Http, &script).is_err());
    }
}
