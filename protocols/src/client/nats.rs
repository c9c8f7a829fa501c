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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
