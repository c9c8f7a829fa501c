//! Redis steps with the redis crate, RESP2, one command per connection: `AUTH`
//! and `SELECT` first when credentials ask for them, nothing else (no `CLIENT
//! SETINFO`, which rules matching `command="*"` would see).
//!
//! Replies become JSON: bulk and simple strings are strings (`0x` hex when not
//! UTF-8), integers ints, nil `None`, arrays lists. An error reply is the step's
//! error, as the server wrote it (`WRONGTYPE Operation against a key ...`).

use std::net::SocketAddr;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, Value as R};
use serde_json::Value;

use super::{ClientError, Credentials, Operation};

pub(super) async fn run(
    addr: SocketAddr,
    credentials: &Credentials,
    op: &Operation,
) -> Result<String, ClientError> {
    let Operation::Redis { command, bare } = op else {
        return Err(ClientError::Unsupported {
            protocol: "redis".into(),
            operation: op.name(),
        });
    };
    let reply = session(addr, credentials, command).await?;
    let value = json(reply);
    Ok(super::json(&if *bare {
        match value {
            Value::Array(mut items) => {
                items.sort_by_key(|v| v.to_string());
                Value::Array(items)
            }
            other => other,
        }
    } else {
        serde_json::json!({ "value": value })
    }))
}

pub(super) async fn ping(addr: SocketAddr, credentials: &Credentials) -> Result<(), ClientError> {
    match session(addr, credentials, &["PING".to_string()]).await? {
        R::SimpleString(s) if s == "PONG" => Ok(()),
        other => Err(ClientError::Protocol(format!(
            "PING answered {}",
            json(other)
        ))),
    }
}

/// Logs in and sends `command`, driving the connection meanwhile.
async fn session(
    addr: SocketAddr,
    credentials: &Credentials,
    command: &[String],
) -> Result<R, ClientError> {
    let stream = super::connect(addr).await?;
    // AUTH and SELECT go as commands of their own: the crate's login would replace
    // the server's refusal (`WRONGPASS ...`) with words of its own.
    let mut login: Vec<Vec<String>> = Vec::new();
    if let Some(p) = &credentials.password {
        let mut auth = vec!["AUTH".to_string()];
        auth.extend(credentials.user.clone());
        auth.push(p.clone());
        login.push(auth);
    }
    if let Some(db) = &credentials.database {
        if db.parse::<u32>().is_err() {
            return Err(ClientError::Invalid(format!(
                "a Redis database is a number, not {db:?}"
            )));
        }
        login.push(vec!["SELECT".into(), db.clone()]);
    }
    let info = RedisConnectionInfo::default().set_skip_set_lib_name();
    // The step's own timeout bounds the answer; the crate's default (500 ms) would
    // cut off a delay a rule injects on purpose.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (mut conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
        .await
        .map_err(error)?;
    let mut driver = std::pin::pin!(driver);
    let work = async {
        for line in &login {
            send(&mut conn, line).await?;
        }
        send(&mut conn, command).await
    };
    tokio::select! {
        r = work => r,
        () = &mut driver => Err(ClientError::Protocol("the server closed the connection".into())),
    }
}

/// Sends one command line; an error reply is the step's error.
async fn send(conn: &mut MultiplexedConnection, line: &[String]) -> Result<R, ClientError> {
    let Some((name, args)) = line.split_first() else {
        return Err(ClientError::Invalid("an empty Redis command".into()));
    };
    let mut cmd = redis::cmd(name);
    for a in args {
        cmd.arg(a);
    }
    match conn.send_packed_command(&cmd).await.map_err(error)? {
        R::ServerError(e) => Err(ClientError::Server(server_error(&e))),
        other => Ok(other),
    }
}

/// `CODE detail`, as the server wrote the line.
fn server_error(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_string(),
    }
}

/// An error reply as the server sent it (`LOADING`, `ERR unknown command ...`),
/// else the crate's description.
fn error(e: redis::RedisError) -> ClientError {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => ClientError::Server(format!("{code} {detail}")),
        (Some(code), None) => ClientError::Server(code.to_string()),
        _ => ClientError::Driver(e.to_string()),
    }
}

/// A reply as JSON.
fn json(v: R) -> Value {
    match v {
        R::Nil => Value::Null,
        R::Int(i) => Value::from(i),
        R::BulkString(b) => super::text_or_hex(&b, "0x"),
        R::SimpleString(s) => Value::String(s),
        R::Okay => Value::String("OK".into()),
        R::Array(items) | R::Set(items) => Value::Array(items.into_iter().map(json).collect()),
        R::Map(pairs) => Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let k = match json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, json(v))
                })
                .collect(),
        ),
        R::Attribute { data, .. } => json(*data),
        R::Double(d) => super::decimal::float(d),
        R::Boolean(b) => Value::Bool(b),
        R::VerbatimString { text, .. } => Value::String(text),
        R::BigNumber(n) => Value::String(String::from_utf8_lossy(&n).into_owned()),
        R::Push { data, .. } => Value::Array(data.into_iter().map(json).collect()),
        // An error inside an array (a transaction's): the line, as text.
        R::ServerError(e) => Value::String(server_error(&e)),
        _ => Value::Null,
    }
}
