//! NATS steps, spoken here over the socket the calling thread opens (a client
//! library would redial from its own tasks, outside the test's network namespace,
//! when a fault breaks the connection). One connection per step: `CONNECT` with
//! `verbose` off, then the operation, each confirmed by a `PING`/`PONG` round trip,
//! so a `-ERR` the server (or a rule) sends for it is the step's error.
//!
//! `.data` is `{"subject": ..., "data": ...}`: for `publish` what was published; for
//! `request` the subject asked and the reply's payload; for `subscribe` the first
//! message's own subject (wildcards resolved) and payload. Payloads are text (`0x`
//! hex when not UTF-8).
//!
//! [`Subscription`] is the `topic()` event source's: one subscription kept open,
//! every delivery handed out as it comes, and `PING` on demand so the caller knows
//! when the server has delivered everything it had.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{ClientError, Credentials, Operation};

pub(super) async fn run(
    addr: SocketAddr,
    credentials: &Credentials,
    op: &Operation,
) -> Result<String, ClientError> {
    let mut c = Connection::open(addr, credentials).await?;
    let (subject, data) = match op {
        Operation::NatsPublish { subject, data } => {
            c.send(&pub_op(subject, None, data)).await?;
            c.confirm().await?;
            (subject.clone(), data.as_bytes().to_vec())
        }
        Operation::NatsRequest { subject, data } => {
            let inbox = inbox();
            c.send(&format!(
                "SUB {inbox} 1\r\n{}",
                pub_op(subject, Some(&inbox), data)
            ))
            .await?;
            let (_, headers, payload) = c.next_message().await?;
            // With `no_responders`, the server answers a request nobody serves with
            // an empty message whose header says 503.
            if headers.starts_with("NATS/1.0 503") {
                return Err(ClientError::Server(format!(
                    "no responders for {subject:?}"
                )));
            }
            (subject.clone(), payload)
        }
        Operation::NatsSubscribe { subject, queue } => {
            let group = queue
                .as_deref()
                .map(|q| format!(" {q}"))
                .unwrap_or_default();
            c.send(&format!("SUB {subject}{group} 1\r\n")).await?;
            c.confirm().await?;
            let (got, _, payload) = c.next_message().await?;
            (got, payload)
        }
        other => {
            return Err(ClientError::Unsupported {
                protocol: "nats".into(),
                operation: other.name(),
            })
        }
    };
    Ok(super::json(&serde_json::json!({
        "subject": subject,
        "data": super::text_or_hex(&data, "0x"),
    })))
}

/// Logs in and waits for the server's `PONG`.
pub(super) async fn ping(addr: SocketAddr, credentials: &Credentials) -> Result<(), ClientError> {
    Connection::open(addr, credentials).await.map(|_| ())
}

fn pub_op(subject: &str, reply: Option<&str>, data: &str) -> String {
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    format!("PUB {subject}{reply} {}\r\n{data}\r\n", data.len())
}

/// A reply subject no other step of this process uses.
fn inbox() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    format!("_INBOX.faultbox.{}.{nanos}.{n}", std::process::id())
}

struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// The longest line read from the server.
const MAX_LINE: usize = 1 << 20;

impl Connection {
    async fn open(addr: SocketAddr, credentials: &Credentials) -> Result<Connection, ClientError> {
        let stream: TcpStream = super::connect(addr).await?;
        let (r, writer) = stream.into_split();
        let mut c = Connection {
            reader: BufReader::new(r),
            writer,
        };
        let info = c.line().await?;
        if !info.starts_with("INFO ") {
            return Err(ClientError::Protocol(format!(
                "the server greeted with {info:?}, not INFO"
            )));
        }
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "lang": "faultbox",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
        });
        if let Some(u) = &credentials.user {
            connect["user"] = u.clone().into();
        }
        if let Some(p) = &credentials.password {
            connect["pass"] = p.clone().into();
        }
        c.send(&format!("CONNECT {connect}\r\n")).await?;
        c.confirm().await?;
        Ok(c)
    }

    async fn send(&mut self, text: &str) -> Result<(), ClientError> {
        self.writer.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// A `PING` round trip: everything sent before it was processed, and a `-ERR`
    /// for it is an error.
    async fn confirm(&mut self) -> Result<(), ClientError> {
        self.send("PING\r\n").await?;
        loop {
            let line = self.line().await?;
            match op(&line).as_str() {
                "PONG" => return Ok(()),
                "MSG" | "HMSG" => {
                    self.payload(&line).await?;
                }
                _ => self.other(&line).await?,
            }
        }
    }

    /// The next delivery: its subject, headers and payload.
    async fn next_message(&mut self) -> Result<(String, String, Vec<u8>), ClientError> {
        loop {
            let line = self.line().await?;
            match op(&line).as_str() {
                "MSG" | "HMSG" => {
                    let subject = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (headers, payload) = self.payload(&line).await?;
                    return Ok((subject, headers, payload));
                }
                "PONG" => {}
                _ => self.other(&line).await?,
            }
        }
    }

    /// A line that is neither what was awaited nor a delivery: answers `PING`,
    /// fails on `-ERR`, ignores `+OK` and `INFO` updates.
    async fn other(&mut self, line: &str) -> Result<(), ClientError> {
        match op(line).as_str() {
            "PING" => self.send("PONG\r\n").await,
            "+OK" | "INFO" => Ok(()),
            "-ERR" => Err(ClientError::Server(
                line[4..].trim().trim_matches('\'').to_string(),
            )),
            _ => Err(ClientError::Protocol(format!(
                "the server sent {line:?}, not a NATS op"
            ))),
        }
    }

    /// The headers (as text) and payload following a `MSG`/`HMSG` line.
    async fn payload(&mut self, line: &str) -> Result<(String, Vec<u8>), ClientError> {
        let args: Vec<&str> = line.split_whitespace().collect();
        let bad = || ClientError::Protocol(format!("a malformed delivery: {line:?}"));
        let number = |s: Option<&&str>| -> Result<usize, ClientError> {
            s.and_then(|s| s.parse().ok()).ok_or_else(bad)
        };
        let (header_len, total) = if op(line) == "HMSG" {
            (number(args.get(args.len() - 2))?, number(args.last())?)
        } else {
            (0, number(args.last())?)
        };
        if header_len > total || total > crate::MAX_MESSAGE {
            return Err(bad());
        }
        let mut body = vec![0u8; total + 2];
        self.reader.read_exact(&mut body).await?;
        if !body.ends_with(b"\r\n") {
            return Err(bad());
        }
        body.truncate(total);
        let payload = body.split_off(header_len);
        Ok((String::from_utf8_lossy(&body).into_owned(), payload))
    }

    async fn line(&mut self) -> Result<String, ClientError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(ClientError::Driver(
                "the server closed the connection".into(),
            ));
        }
        if !buf.ends_with(b"\n") {
            return Err(ClientError::Protocol("a line without an end".into()));
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// A line's op, upper-cased.
fn op(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// A message delivered to a [`Subscription`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message's own subject (wildcards of the subscription resolved).
    pub subject: String,
    /// The reply subject the publisher gave, if any.
    pub reply: Option<String>,
    /// The header block of an `HMSG` (`NATS/1.0` and its lines), as text; empty
    /// for a `MSG`.
    pub headers: String,
    pub payload: Vec<u8>,
}

/// What [`Subscription::next`] hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Message(Message),
    /// The answer to a [`Subscription::ping`]: every message the server had for
    /// this subscription when the `PING` arrived came before it.
    Pong,
}

/// One subscription on its own connection, kept open.
///
/// [`Subscription::next`] is cancel-safe: it reads into a buffer kept here and
/// writes (its `PONG`s to the server's `PING`s) with single cancel-safe writes, so a
/// caller can `select!` it against its own work and call it again without losing or
/// splitting anything.
pub struct Subscription {
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// Bytes read and not yet parsed.
    inbox: BytesMut,
    /// Bytes owed to the server and not yet written.
    outbox: Vec<u8>,
    /// Messages that arrived while the subscription was being confirmed.
    early: VecDeque<Message>,
}

impl Subscription {
    /// Connects, logs in and subscribes to `subject` (wildcards allowed), in queue
    /// group `queue` if given; returns once the server has confirmed all of it (a
    /// `-ERR` for any of it is the error).
    pub async fn open(
        addr: SocketAddr,
        credentials: &Credentials,
        subject: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, ClientError> {
        let c = Connection::open(addr, credentials).await?;
        let (reader, writer) = (c.reader, c.writer);
        let inbox = BytesMut::from(reader.buffer());
        let queue = queue.map(|q| format!(" {q}")).unwrap_or_default();
        let mut s = Subscription {
            reader: reader.into_inner(),
            writer,
            inbox,
            outbox: format!("SUB {subject}{queue} 1\r\nPING\r\n").into_bytes(),
            early: VecDeque::new(),
        };
        loop {
            match s.next().await? {
                Delivery::Pong => return Ok(s),
                Delivery::Message(m) => s.early.push_back(m),
            }
        }
    }

    /// Sends a `PING`: its [`Delivery::Pong`] comes from [`Subscription::next`].
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.outbox.extend_from_slice(b"PING\r\n");
        self.flush().await
    }

    /// The next message or `PONG`. The server's `PING`s are answered, `+OK` and
    /// `INFO` skipped; a `-ERR` is an error, as is a closed connection.
    pub async fn next(&mut self) -> Result<Delivery, ClientError> {
        if let Some(m) = self.early.pop_front() {
            return Ok(Delivery::Message(m));
        }
        loop {
            self.flush().await?;
            while let Some((frame, used)) = frame(&self.inbox)? {
                self.inbox.advance(used);
                match frame {
                    Frame::Message(m) => return Ok(Delivery::Message(m)),
                    Frame::Pong => return Ok(Delivery::Pong),
                    Frame::Ping => {
                        self.outbox.extend_from_slice(b"PONG\r\n");
                        self.flush().await?;
                    }
                    Frame::Skip => {}
                    Frame::Err(e) => return Err(ClientError::Server(e)),
                }
            }
            self.inbox.reserve(64 << 10);
            if self.reader.read_buf(&mut self.inbox).await? == 0 {
                return Err(ClientError::Driver(
                    "the server closed the connection".into(),
                ));
            }
        }
    }

    /// Writes what is owed, one cancel-safe `write` at a time.
    async fn flush(&mut self) -> Result<(), ClientError> {
        while !self.outbox.is_empty() {
            let n = self.writer.write(&self.outbox).await?;
            if n == 0 {
                return Err(ClientError::Driver(
                    "the server closed the connection".into(),
                ));
            }
            self.outbox.drain(..n);
        }
        Ok(())
    }
}

/// One op from the server, parsed out of [`Subscription`]'s buffer.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Message(Message),
    Ping,
    Pong,
    /// `+OK`, `INFO`: nothing to do.
    Skip,
    Err(String),
}

/// The first complete op in `buf` and the bytes it spans; `None` until it is all
/// there.
fn frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ClientError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_LINE {
            return Err(ClientError::Protocol("a line without an end".into()));
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..nl]);
    let line = text.trim_end_matches('\r');
    let bad = || ClientError::Protocol(format!("a malformed delivery: {line:?}"));
    let frame = match op(line).as_str() {
        "PING" => Frame::Ping,
        "PONG" => Frame::Pong,
        "+OK" | "INFO" => Frame::Skip,
        "-ERR" => Frame::Err(line[4..].trim().trim_matches('\'').to_string()),
        o @ ("MSG" | "HMSG") => {
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            let headed = o == "HMSG";
            // subject, sid, [reply], [header size], total size
            let fixed = if headed { 4 } else { 3 };
            if args.len() != fixed && args.len() != fixed + 1 {
                return Err(bad());
            }
            let number = |s: &str| s.parse::<usize>().map_err(|_| bad());
            let total = number(args[args.len() - 1])?;
            let header_len = if headed {
                number(args[args.len() - 2])?
            } else {
                0
            };
            if header_len > total || total > crate::MAX_MESSAGE {
                return Err(bad());
            }
            let end = nl + 1 + total + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(bad());
            }
            let body = &buf[nl + 1..end - 2];
            let m = Message {
                subject: args[0].to_string(),
                reply: (args.len() > fixed).then(|| args[2].to_string()),
                headers: String::from_utf8_lossy(&body[..header_len]).into_owned(),
                payload: body[header_len..].to_vec(),
            };
            return Ok(Some((Frame::Message(m), end)));
        }
        _ => {
            return Err(ClientError::Protocol(format!(
                "the server sent {line:?}, not a NATS op"
            )))
        }
    };
    Ok(Some((frame, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, reply: Option<&str>, headers: &str, payload: &str) -> Frame {
        Frame::Message(Message {
            subject: subject.into(),
            reply: reply.map(str::to_string),
            headers: headers.into(),
            payload: payload.as_bytes().to_vec(),
        })
    }

    #[test]
    fn frames_wait_for_their_whole_payload() {
        let all =
            b"MSG a.b 1 _INBOX.x 5\r\nhello\r\nHMSG c 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n";
        let (f, n) = frame(all).unwrap().unwrap();
        assert_eq!(f, msg("a.b", Some("_INBOX.x"), "", "hello"));
        let rest = &all[n..];
        // Every cut short of the whole message is incomplete, not an error.
        for cut in 0..30 {
            assert_eq!(frame(&rest[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (f, m) = frame(rest).unwrap().unwrap();
        assert_eq!(f, msg("c", None, "NATS/1.0\r\n\r\n", "hi"));
        assert_eq!(frame(&rest[m..]).unwrap(), Some((Frame::Ping, 6)));
        assert_eq!(
            frame(b"-ERR 'Invalid Subject'\r\n").unwrap(),
            Some((Frame::Err("Invalid Subject".into()), 24))
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(frame(b"MSG a 1 x\r\n").is_err());
        assert!(frame(b"MSG a 1 3\r\nabcd\r\n").is_err());
        assert!(frame(b"HMSG a 1 9 3\r\nabc\r\n").is_err());
        assert!(frame(b"WHAT\r\n").is_err());
    }
}
