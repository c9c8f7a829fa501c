//! memcached steps over the text protocol, one command per connection: `get`,
//! `set` (never `noreply`, so an error a rule injects is seen), `delete`, and
//! `version` for readiness.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{ClientError, Operation};

/// The longest key memcached accepts.
const MAX_KEY: usize = 250;

pub(super) async fn run(addr: SocketAddr, op: &Operation) -> Result<String, ClientError> {
    let (request, key) = match op {
        Operation::MemcachedGet { key } => (format!("get {key}\r\n").into_bytes(), key),
        Operation::MemcachedSet { key, value, ttl } => {
            let mut r = format!("set {key} 0 {ttl} {}\r\n", value.len()).into_bytes();
            r.extend_from_slice(value.as_bytes());
            r.extend_from_slice(b"\r\n");
            (r, key)
        }
        Operation::MemcachedDelete { key } => (format!("delete {key}\r\n").into_bytes(), key),
        other => {
            return Err(ClientError::Unsupported {
                protocol: "memcached".into(),
                operation: other.name(),
            })
        }
    };
    check_key(key)?;
    let mut conn = Conn::open(addr).await?;
    conn.send(&request).await?;
    let line = conn.line().await?;
    let value = match op {
        Operation::MemcachedGet { key } => match line.strip_prefix("VALUE ") {
            None if line == "END" => Value::Null,
            None => return Err(failure(line)),
            Some(rest) => {
                let fields: Vec<&str> = rest.split(' ').collect();
                let len = match fields.as_slice() {
                    [k, _flags, len, ..] if k == key => len.parse::<usize>().ok(),
                    _ => None,
                }
                .ok_or_else(|| ClientError::Protocol(format!("unexpected reply {line:?}")))?;
                let data = conn.block(len).await?;
                let end = conn.line().await?;
                if end != "END" {
                    return Err(ClientError::Protocol(format!(
                        "expected END after the value, got {end:?}"
                    )));
                }
                super::text_or_hex(&data, "0x")
            }
        },
        Operation::MemcachedSet { .. } if line == "STORED" => Value::String(line),
        Operation::MemcachedDelete { .. } if line == "DELETED" || line == "NOT_FOUND" => {
            Value::String(line)
        }
        _ => return Err(failure(line)),
    };
    Ok(super::json(&json!({ "value": value })))
}

pub(super) async fn ping(addr: SocketAddr) -> Result<(), ClientError> {
    let mut conn = Conn::open(addr).await?;
    conn.send(b"version\r\n").await?;
    let line = conn.line().await?;
    if line.starts_with("VERSION ") {
        Ok(())
    } else {
        Err(failure(line))
    }
}

/// Keys are 1 to 250 bytes without spaces or control characters: anything else
/// would be read by the server as a different command.
fn check_key(key: &str) -> Result<(), ClientError> {
    if key.is_empty() || key.len() > MAX_KEY || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ClientError::Invalid(format!(
            "memcached keys are 1 to {MAX_KEY} bytes without spaces or control characters, not {key:?}"
        )));
    }
    Ok(())
}

/// An error line (`SERVER_ERROR out of memory`, `CLIENT_ERROR ...`, `ERROR`) is the
/// server's own error; any other line a reply the command cannot have.
fn failure(line: String) -> ClientError {
    if line == "ERROR" || line.starts_with("SERVER_ERROR") || line.starts_with("CLIENT_ERROR") {
        ClientError::Server(line)
    } else {
        ClientError::Protocol(format!("unexpected reply {line:?}"))
    }
}

struct Conn {
    stream: BufReader<tokio::net::TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, ClientError> {
        Ok(Conn {
            stream: BufReader::new(super::connect(addr).await?),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let s = self.stream.get_mut();
        s.write_all(bytes).await?;
        s.flush().await?;
        Ok(())
    }

    /// The next line, without its CRLF. End of stream before one is an error.
    async fn line(&mut self) -> Result<String, ClientError> {
        let mut line = Vec::new();
        // A line longer than any reply the commands here get is not memcached.
        let n = (&mut self.stream)
            .take(64 << 10)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 || !line.ends_with(b"\n") {
            return Err(ClientError::Protocol(
                "the server closed the connection before answering".into(),
            ));
        }
        let text = String::from_utf8_lossy(&line);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    /// A data block of `len` bytes and its CRLF.
    async fn block(&mut self, len: usize) -> Result<Vec<u8>, ClientError> {
        if len > crate::MAX_MESSAGE {
            return Err(ClientError::Protocol(format!(
                "a {len}-byte value is past what a step reads ({} bytes)",
                crate::MAX_MESSAGE
            )));
        }
        let mut data = vec![0; len + 2];
        self.stream.read_exact(&mut data).await?;
        if !data.ends_with(b"\r\n") {
            return Err(ClientError::Protocol(
                "a value block not ended by CRLF".into(),
            ));
        }
        data.truncate(len);
        Ok(data)
    }
}
