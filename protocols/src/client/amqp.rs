//! AMQP 0-9-1 steps, spoken here (the handful of methods a step needs), one
//! connection per step: PLAIN login, channel 1, the step's methods, a clean
//! `Connection.Close`. No heartbeats (steps are short).
//!
//! - `publish`: publisher confirms on and `mandatory` set, so `{"published": true}`
//!   means the broker routed the message and took responsibility for it; an
//!   unroutable one is the error `312 NO_ROUTE`, a nack `nack`.
//! - `get`: `Basic.Get` with auto-ack; the message, or `None` when the queue is empty.
//! - `consume`: `Basic.Consume`, waits up to `wait` for one delivery, acks it.
//!
//! A `Connection.Close` or `Channel.Close` from the broker (or a rule) is the
//! step's error in the broker's words: `404 NOT_FOUND - no queue 'q' in vhost '/'`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ClientError, Credentials, Operation};
use crate::amqp::{frame, method, method_frame, Args, PROTOCOL_HEADER};

const CHANNEL: u16 = 1;

pub(super) async fn run(
    addr: SocketAddr,
    credentials: &Credentials,
    op: &Operation,
) -> Result<String, ClientError> {
    let mut s = Session::open(addr, credentials).await?;
    let value = match op {
        Operation::AmqpPublish {
            exchange,
            routing_key,
            body,
            declare,
            durable,
        } => {
            if *declare {
                s.declare(routing_key, *durable).await?;
            }
            s.publish(exchange, routing_key, body.as_bytes()).await?;
            json!({ "published": true })
        }
        Operation::AmqpGet {
            queue,
            declare,
            durable,
        } => {
            if *declare {
                s.declare(queue, *durable).await?;
            }
            s.get(queue).await?
        }
        Operation::AmqpConsume {
            queue,
            declare,
            durable,
            wait,
        } => {
            if *declare {
                s.declare(queue, *durable).await?;
            }
            s.consume(queue, *wait).await?
        }
        other => {
            return Err(ClientError::Unsupported {
                protocol: "amqp".into(),
                operation: other.name(),
            })
        }
    };
    s.close().await;
    Ok(super::json(&value))
}

/// A real connection open and channel open, then a clean close.
pub(super) async fn ping(addr: SocketAddr, credentials: &Credentials) -> Result<(), ClientError> {
    let s = Session::open(addr, credentials).await?;
    s.close().await;
    Ok(())
}

struct Session {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The largest frame the broker accepts.
    frame_max: usize,
}

/// A method's arguments, built up.
#[derive(Default)]
struct Build(Vec<u8>);

impl Build {
    fn id(id: (u16, u16)) -> Build {
        let mut b = Build::default();
        b.u16(id.0).u16(id.1);
        b
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn short(&mut self, s: &str) -> Result<&mut Self, ClientError> {
        if s.len() > 255 {
            return Err(ClientError::Invalid(format!(
                "an AMQP name is at most 255 bytes: {s:?}"
            )));
        }
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        Ok(self)
    }
    fn long(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
}

/// What the broker said when it closed the connection or channel.
fn closed(mut args: Args) -> ClientError {
    let code = args.u16().unwrap_or(0);
    let text = args.short().unwrap_or_default();
    ClientError::Server(format!("{code} {text}"))
}

impl Session {
    async fn open(addr: SocketAddr, credentials: &Credentials) -> Result<Session, ClientError> {
        let stream = super::connect(addr).await?;
        let mut s = Session {
            stream,
            buf: Vec::new(),
            frame_max: 4096,
        };
        s.stream.write_all(PROTOCOL_HEADER).await?;
        s.expect(0, (10, 10)).await?;
        let user = credentials.user.as_deref().unwrap_or("guest");
        let password = credentials.password.as_deref().unwrap_or("guest");
        let mut start_ok = Build::id((10, 11));
        // Without this capability RabbitMQ answers a refused login by closing the
        // socket; with it, by a Connection.Close that says why.
        let mut caps = Build::default();
        caps.short("authentication_failure_close")?.u8(b't').u8(1);
        let mut props = Build::default();
        props.short("product")?.u8(b'S').long(b"faultbox");
        props.short("capabilities")?.u8(b'F').long(&caps.0);
        start_ok.long(&props.0).short("PLAIN")?;
        start_ok.long(format!("\0{user}\0{password}").as_bytes());
        start_ok.short("en_US")?;
        s.send(0, &start_ok).await?;
        let tune = s.expect(0, (10, 30)).await?;
        let mut t = Args(&tune);
        let channel_max = t.u16().unwrap_or(0);
        let frame_max = t
            .take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        s.frame_max = match frame_max {
            0 => 131_072,
            n => n as usize,
        };
        let mut tune_ok = Build::id((10, 31));
        tune_ok.u16(channel_max).u32(s.frame_max as u32).u16(0);
        s.send(0, &tune_ok).await?;
        let vhost = credentials.database.as_deref().unwrap_or("/");
        let mut open = Build::id((10, 40));
        open.short(vhost)?.short("")?.u8(0);
        s.send(0, &open).await?;
        s.expect(0, (10, 41)).await?;
        let mut ch = Build::id((20, 10));
        ch.short("")?;
        s.send(CHANNEL, &ch).await?;
        s.expect(CHANNEL, (20, 11)).await?;
        Ok(s)
    }

    async fn send(&mut self, channel: u16, m: &Build) -> Result<(), ClientError> {
        self.stream.write_all(&method_frame(channel, &m.0)).await?;
        Ok(())
    }

    /// The next frame (heartbeats skipped): its type, channel and payload.
    async fn frame(&mut self) -> Result<(u8, u16, Vec<u8>), ClientError> {
        loop {
            if self.buf.starts_with(b"AMQP") {
                // The broker's refusal of our version names its own.
                return Err(ClientError::Protocol(
                    "the broker does not speak AMQP 0-9-1".into(),
                ));
            }
            let parsed = frame(&self.buf, "server")
                .map_err(|o| ClientError::Protocol(o.0))?
                .map(|(f, p)| (f, p.to_vec()));
            if let Some((f, payload)) = parsed {
                self.buf.drain(..f.len);
                if f.kind == 8 {
                    continue;
                }
                return Ok((f.kind, f.channel, payload));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the broker closed the connection".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next method on `channel` or 0: a close of either is the step's error
    /// (acknowledged first).
    async fn method(&mut self) -> Result<((u16, u16), u16, Vec<u8>), ClientError> {
        let (kind, channel, payload) = self.frame().await?;
        if kind != 1 {
            return Err(ClientError::Protocol(format!(
                "frame type {kind} where a method was expected"
            )));
        }
        let (id, args) = method(&payload).map_err(|o| ClientError::Protocol(o.0))?;
        match id {
            (10, 50) => {
                let _ = self.send(0, &Build::id((10, 51))).await;
                Err(closed(args))
            }
            (20, 40) => {
                let _ = self.send(channel, &Build::id((20, 41))).await;
                Err(closed(args))
            }
            _ => Ok((id, channel, args.0.to_vec())),
        }
    }

    /// Waits for method `id`; returns its arguments.
    async fn expect(&mut self, channel: u16, id: (u16, u16)) -> Result<Vec<u8>, ClientError> {
        let (got, on, args) = self.method().await?;
        if got != id || on != channel {
            return Err(ClientError::Protocol(format!(
                "expected method {}.{} on channel {channel}, got {}.{} on channel {on}",
                id.0, id.1, got.0, got.1
            )));
        }
        Ok(args)
    }

    /// A message's content header and body frames.
    async fn content(&mut self) -> Result<Vec<u8>, ClientError> {
        let (kind, _, header) = self.frame().await?;
        let size = Args(&header)
            .take(12)
            .map(|b| u64::from_be_bytes(b[4..12].try_into().expect("eight bytes")));
        let (2, Some(size)) = (kind, size) else {
            return Err(ClientError::Protocol("expected a content header".into()));
        };
        let mut body = Vec::new();
        while (body.len() as u64) < size {
            let (kind, _, part) = self.frame().await?;
            if kind != 3 {
                return Err(ClientError::Protocol("expected a body frame".into()));
            }
            body.extend_from_slice(&part);
        }
        Ok(body)
    }

    async fn declare(&mut self, queue: &str, durable: bool) -> Result<(), ClientError> {
        let mut d = Build::id((50, 10));
        d.u16(0)
            .short(queue)?
            .u8(if durable { 2 } else { 0 })
            .u32(0);
        self.send(CHANNEL, &d).await?;
        self.expect(CHANNEL, (50, 11)).await?;
        Ok(())
    }

    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), ClientError> {
        let mut select = Build::id((85, 10));
        select.u8(0);
        self.send(CHANNEL, &select).await?;
        self.expect(CHANNEL, (85, 11)).await?;
        // Mandatory: an unroutable message comes back as Basic.Return.
        let mut p = Build::id((60, 40));
        p.u16(0).short(exchange)?.short(routing_key)?.u8(1);
        let mut bytes = method_frame(CHANNEL, &p.0);
        let mut header = Build::default();
        header.u16(60).u16(0).u64(body.len() as u64).u16(0);
        bytes.extend(raw_frame(2, &header.0));
        for part in body.chunks(self.frame_max.saturating_sub(8).max(1)) {
            bytes.extend(raw_frame(3, part));
        }
        self.stream.write_all(&bytes).await?;
        let mut returned = None;
        loop {
            let (id, _, args) = self.method().await?;
            match id {
                (60, 50) => {
                    let mut a = Args(&args);
                    let code = a.u16().unwrap_or(0);
                    let text = a.short().unwrap_or_default();
                    returned = Some(format!("{code} {text}"));
                    self.content().await?;
                }
                (60, 80) => {
                    return match returned {
                        Some(r) => Err(ClientError::Server(r)),
                        None => Ok(()),
                    }
                }
                (60, 120) => return Err(ClientError::Server("nack".into())),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected method {}.{} after a publish",
                        other.0, other.1
                    )))
                }
            }
        }
    }

    async fn get(&mut self, queue: &str) -> Result<Value, ClientError> {
        let mut g = Build::id((60, 70));
        g.u16(0).short(queue)?.u8(1);
        self.send(CHANNEL, &g).await?;
        let (id, _, args) = self.method().await?;
        match id {
            (60, 72) => Ok(Value::Null),
            (60, 71) => {
                let mut a = Args(&args);
                let meta = (|| {
                    a.u64()?;
                    let redelivered = a.take(1)?[0] & 1 == 1;
                    let exchange = a.short()?;
                    let key = a.short()?;
                    let count = a
                        .take(4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
                    Some((redelivered, exchange, key, count))
                })()
                .ok_or_else(|| ClientError::Protocol("a malformed Basic.GetOk".into()))?;
                let body = self.content().await?;
                Ok(json!({
                    "body": super::text_or_hex(&body, "0x"),
                    "routing_key": meta.2,
                    "exchange": meta.1,
                    "redelivered": meta.0,
                    "message_count": meta.3,
                }))
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected method {}.{} after Basic.Get",
                other.0, other.1
            ))),
        }
    }

    async fn consume(&mut self, queue: &str, wait: Duration) -> Result<Value, ClientError> {
        let mut c = Build::id((60, 20));
        c.u16(0).short(queue)?.short("")?.u8(0).u32(0);
        self.send(CHANNEL, &c).await?;
        self.expect(CHANNEL, (60, 21)).await?;
        let delivery = async {
            loop {
                let (id, _, args) = self.method().await?;
                if id != (60, 60) {
                    continue;
                }
                let mut a = Args(&args);
                let meta = (|| {
                    a.short()?;
                    let tag = a.u64()?;
                    let redelivered = a.take(1)?[0] & 1 == 1;
                    let exchange = a.short()?;
                    let key = a.short()?;
                    Some((tag, redelivered, exchange, key))
                })()
                .ok_or_else(|| ClientError::Protocol("a malformed Basic.Deliver".into()))?;
                let body = self.content().await?;
                return Ok::<_, ClientError>((meta, body));
            }
        };
        let ((tag, redelivered, exchange, key), body) = tokio::time::timeout(wait, delivery)
            .await
            .map_err(|_| ClientError::Server(format!("no message within {wait:?}")))??;
        let mut ack = Build::id((60, 80));
        ack.u64(tag).u8(0);
        self.send(CHANNEL, &ack).await?;
        Ok(json!({
            "body": super::text_or_hex(&body, "0x"),
            "routing_key": key,
            "exchange": exchange,
            "redelivered": redelivered,
        }))
    }

    /// `Connection.Close` and its `CloseOk`, as far as the broker goes along.
    async fn close(mut self) {
        let mut c = Build::id((10, 50));
        c.u16(200);
        if c.short("bye").is_err() {
            return;
        }
        c.u16(0).u16(0);
        if self.send(0, &c).await.is_err() {
            return;
        }
        let bye = async {
            loop {
                match self.frame().await {
                    Ok((1, 0, p)) if p.starts_with(&[0, 10, 0, 51]) => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
    }
}

fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&CHANNEL.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}
