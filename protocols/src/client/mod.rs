//! Step clients and readiness probes: what `db.main.query(...)`,
//! `cache.main.get(...)` and the `ready()` healthcheck say on the wire.
//!
//! The operations ([`Operation`], [`Credentials`]) are plain data, always compiled:
//! the spec crate builds them from a step's keywords. Talking to servers needs the
//! `client` feature, which brings the real drivers (tokio-postgres, mysql_async,
//! redis, tonic for gRPC; memcached's text protocol is small enough to speak here).
//! [`grpc_schema`] (the `grpc-schema` feature, no I/O) compiles `.proto` files and
//! marshals gRPC messages to and from JSON; the spec crate checks `call` steps with it.
//!
//! **Network namespaces.** A socket belongs to the namespace of the thread that
//! creates it. Every client opens its connection inside the future it returns and
//! spawns nothing that dials, so poll the future (`Handle::block_on`) on a thread
//! inside the namespace to reach: the test's, for steps through its relays, or the
//! service's own, for a probe.
//!
//! A failure of any kind (refused connection, bad password, an SQL error, a protocol
//! error injected by a rule, the timeout) is an [`Outcome`] with `ok == false` and the
//! server's own words in `error`, never a panic or a hang.

use std::time::Duration;

#[cfg(feature = "client")]
mod amqp;
#[cfg(feature = "client")]
pub mod decimal;
#[cfg(feature = "client")]
mod grpc;
#[cfg(feature = "grpc-schema")]
pub mod grpc_schema;
#[cfg(feature = "client")]
pub mod kafka;
#[cfg(feature = "client")]
mod memcached;
#[cfg(feature = "client")]
mod mysql;
#[cfg(feature = "client")]
pub mod nats;
#[cfg(feature = "client")]
mod postgres;
#[cfg(feature = "client")]
mod redis;

/// Who a step logs in as. What is not given comes from the service's environment
/// ([`Credentials::or_env`]), then from the protocol's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
}

impl Credentials {
    /// Fills what was not given from a service's environment, named as the official
    /// images name it: `POSTGRES_USER`/`POSTGRES_PASSWORD`/`POSTGRES_DB`;
    /// `MYSQL_USER`/`MYSQL_PASSWORD`/`MYSQL_DATABASE`, else user `root` with
    /// `MYSQL_ROOT_PASSWORD`; `REDIS_PASSWORD`. A password from the environment is
    /// used only for the user it belongs to, so `user="other"` does not send it.
    pub fn or_env(&self, protocol: &str, env: &[(String, String)]) -> Credentials {
        let var = |k: &str| {
            env.iter()
                .rev()
                .find(|(ek, v)| ek == k && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        let mut out = self.clone();
        match protocol {
            "postgres" => {
                let env_user = var("POSTGRES_USER").unwrap_or_else(|| "postgres".into());
                let user = out.user.clone().unwrap_or_else(|| env_user.clone());
                if out.password.is_none() && user == env_user {
                    out.password = var("POSTGRES_PASSWORD");
                }
                if out.database.is_none() {
                    // The image creates POSTGRES_DB, else a database named after the user.
                    out.database = Some(match var("POSTGRES_DB") {
                        Some(db) if user == env_user => db,
                        _ => user.clone(),
                    });
                }
                out.user = Some(user);
            }
            "mysql" => {
                let (env_user, env_password) = match var("MYSQL_USER") {
                    Some(u) => (u, var("MYSQL_PASSWORD")),
                    None => ("root".to_string(), var("MYSQL_ROOT_PASSWORD")),
                };
                let user = out.user.clone().unwrap_or_else(|| env_user.clone());
                if out.password.is_none() {
                    out.password = if user == env_user {
                        env_password
                    } else if user == "root" {
                        var("MYSQL_ROOT_PASSWORD")
                    } else {
                        None
                    };
                }
                if out.database.is_none() {
                    out.database = var("MYSQL_DATABASE");
                }
                out.user = Some(user);
            }
            "amqp" => {
                // As the official RabbitMQ image names them; guest/guest and `/`
                // otherwise. The password goes with the user it belongs to.
                let env_user = var("RABBITMQ_DEFAULT_USER").unwrap_or_else(|| "guest".into());
                let user = out.user.clone().unwrap_or_else(|| env_user.clone());
                if out.password.is_none() && user == env_user {
                    out.password =
                        Some(var("RABBITMQ_DEFAULT_PASS").unwrap_or_else(|| "guest".into()));
                }
                if out.database.is_none() {
                    out.database =
                        Some(var("RABBITMQ_DEFAULT_VHOST").unwrap_or_else(|| "/".into()));
                }
                out.user = Some(user);
            }
            "redis" if out.password.is_none() && out.user.is_none() => {
                out.password = var("REDIS_PASSWORD");
            }
            _ => {}
        }
        out
    }
}

/// A parameter of an SQL statement (`args=[...]`), bound in order to `$1`, `$2`, ...
/// (PostgreSQL) or `?` (MySQL). The server converts it to the type the statement
/// needs, as it would a literal.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlArg {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// What a step asks of a service.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    /// PostgreSQL or MySQL: one statement's rows, as a JSON list of objects with
    /// typed values.
    Query { sql: String, args: Vec<SqlArg> },
    /// PostgreSQL or MySQL: statements run for their effect; `{"rows_affected": N}`,
    /// summed over the statements.
    Exec { sql: String, args: Vec<SqlArg> },
    /// A Redis command line. The answer is `{"value": reply}`; with `bare`, the reply
    /// itself, sorted (`keys`, whose reference use is `len(r.data)`).
    Redis { command: Vec<String>, bare: bool },
    /// memcached `get`: `{"value": ...}`, `None` on a miss.
    MemcachedGet { key: String },
    /// memcached `set` with an expiry in seconds (0: none): `{"value": "STORED"}`.
    MemcachedSet {
        key: String,
        value: String,
        ttl: u32,
    },
    /// memcached `delete`: `{"value": "DELETED"}` or `{"value": "NOT_FOUND"}`.
    MemcachedDelete { key: String },
    /// AMQP publish with confirms, `mandatory` set: `{"published": true}`. With
    /// `declare`, the queue named `routing_key` is declared first.
    AmqpPublish {
        exchange: String,
        routing_key: String,
        body: String,
        declare: bool,
        durable: bool,
    },
    /// AMQP `Basic.Get` with auto-ack: the message, or `None` on an empty queue.
    AmqpGet {
        queue: String,
        declare: bool,
        durable: bool,
    },
    /// AMQP `Basic.Consume`: the first delivery within `wait`, acknowledged.
    AmqpConsume {
        queue: String,
        declare: bool,
        durable: bool,
        wait: Duration,
    },
    /// Kafka: one record to `topic` (created when missing):
    /// `{"published": true, "topic", "partition", "offset"}`.
    KafkaPublish {
        topic: String,
        value: String,
        key: Option<String>,
    },
    /// Kafka: the next record of `topic` for consumer group `group` (committed past
    /// it), waiting up to `wait`: `{"topic", "partition", "offset", "key", "value"}`.
    /// `group` is `None` until the world picks the test's own.
    KafkaConsume {
        topic: String,
        group: Option<String>,
        wait: Duration,
    },
    /// NATS: publish `data` on `subject`, confirmed by the server.
    NatsPublish { subject: String, data: String },
    /// NATS: publish `data` on `subject` with a reply subject; the first reply.
    NatsRequest { subject: String, data: String },
    /// NATS: subscribe to `subject` (wildcards allowed; in queue group `queue`);
    /// the first message.
    NatsSubscribe {
        subject: String,
        queue: Option<String>,
    },
    /// A MongoDB operation, run by the `faultbox-mongo` crate (the driver is the
    /// heaviest compile, kept out of this one).
    Mongo(MongoOp),
    /// A unary gRPC call: `body` (JSON) marshalled into `method`'s request, the
    /// response as JSON. Descriptors come from `proto` (the interface's `spec=`),
    /// else from the server's reflection. `timeout` is the step's own deadline.
    GrpcCall {
        method: String,
        body: String,
        metadata: Vec<(String, String)>,
        proto: Option<std::path::PathBuf>,
        timeout: Option<Duration>,
    },
}

/// A MongoDB step. Documents are JSON object text, key order kept (a command's
/// name is its first key), read as Extended JSON (`{"$oid": ...}` is an ObjectId).
#[derive(Clone, Debug, PartialEq)]
pub enum MongoOp {
    /// The matching documents, a JSON list.
    Find {
        collection: String,
        filter: String,
        projection: Option<String>,
        sort: Option<String>,
        limit: Option<i64>,
        skip: Option<u64>,
    },
    /// `{"inserted_id": id}`.
    Insert {
        collection: String,
        document: String,
    },
    /// `{"inserted_ids": [id, ...]}`, in the documents' order.
    InsertMany {
        collection: String,
        documents: Vec<String>,
    },
    /// `update` is an update document (`{"$set": ...}`), a pipeline (a JSON list),
    /// or a replacement document (no `$` operators; not with `many`).
    /// `{"matched_count": n, "modified_count": n, "upserted_id": id or null}`.
    Update {
        collection: String,
        filter: String,
        update: String,
        many: bool,
        upsert: bool,
    },
    /// `{"deleted_count": n}`.
    Delete {
        collection: String,
        filter: String,
        many: bool,
    },
    /// `{"count": n}`.
    Count { collection: String, filter: String },
    /// The server's reply document to a command.
    Command { command: String },
}

impl MongoOp {
    pub fn name(&self) -> &'static str {
        match self {
            MongoOp::Find { .. } => "find",
            MongoOp::Insert { .. } => "insert",
            MongoOp::InsertMany { .. } => "insert_many",
            MongoOp::Update { .. } => "update",
            MongoOp::Delete { .. } => "delete",
            MongoOp::Count { .. } => "count",
            MongoOp::Command { .. } => "command",
        }
    }
}

/// What a step came back with: `body` is the answer as JSON text (what `.data`
/// decodes), or empty when `ok` is false and `error` says why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// The protocol's own status code where it has one (gRPC's `grpc-status`), else 0.
    pub status: i64,
    pub body: String,
    pub error: String,
}

/// Why a step or probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: SQLSTATE and message, a Redis error line,
    /// a memcached `SERVER_ERROR`/`CLIENT_ERROR`/`ERROR`.
    #[error("{0}")]
    Server(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server's bytes were not what the protocol allows.
    #[error("{0}")]
    Protocol(String),
    /// A driver's own failure, in its words: the connection broke, a message it
    /// did not expect.
    #[error("{0}")]
    Driver(String),
    /// A request the client refuses to send (a memcached key with spaces, say).
    #[error("{0}")]
    Invalid(String),
    /// The operation does not belong to the protocol.
    #[error("{protocol} has no {operation} step")]
    Unsupported {
        protocol: String,
        operation: &'static str,
    },
}

impl Operation {
    /// What the operation is called in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Query { .. } => "query",
            Operation::Exec { .. } => "exec",
            Operation::Redis { .. } => "redis command",
            Operation::MemcachedGet { .. } => "memcached get",
            Operation::MemcachedSet { .. } => "memcached set",
            Operation::MemcachedDelete { .. } => "memcached delete",
            Operation::AmqpPublish { .. } => "amqp publish",
            Operation::AmqpGet { .. } => "amqp get",
            Operation::AmqpConsume { .. } => "amqp consume",
            Operation::KafkaPublish { .. } => "kafka publish",
            Operation::KafkaConsume { .. } => "kafka consume",
            Operation::NatsPublish { .. } => "nats publish",
            Operation::NatsRequest { .. } => "nats request",
            Operation::NatsSubscribe { .. } => "nats subscribe",
            Operation::Mongo(op) => op.name(),
            Operation::GrpcCall { .. } => "grpc call",
        }
    }
}

/// Runs `op` against the `protocol` server at `addr` within `timeout` (connecting
/// and logging in included).
#[cfg(feature = "client")]
pub async fn run(
    protocol: &str,
    addr: std::net::SocketAddr,
    credentials: &Credentials,
    op: &Operation,
    timeout: Duration,
) -> Outcome {
    if protocol == "grpc" {
        // gRPC has status codes of its own: its client builds the outcome.
        return grpc::run(addr, op, timeout).await;
    }
    let work = async {
        match protocol {
            "postgres" => postgres::run(addr, credentials, op).await,
            "mysql" => mysql::run(addr, credentials, op).await,
            "redis" => redis::run(addr, credentials, op).await,
            "memcached" => memcached::run(addr, op).await,
            "amqp" => amqp::run(addr, credentials, op).await,
            "kafka" => kafka::run(addr, op).await,
            "nats" => nats::run(addr, credentials, op).await,
            other => Err(ClientError::Unsupported {
                protocol: other.to_string(),
                operation: op.name(),
            }),
        }
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(timeout)),
    };
    match result {
        Ok(body) => Outcome {
            ok: true,
            body,
            ..Outcome::default()
        },
        Err(e) => Outcome {
            error: e.to_string(),
            ..Outcome::default()
        },
    }
}

/// One readiness probe: a real round trip in the protocol, logged in with
/// `credentials` (`SELECT 1`, a MySQL ping, `PING`, `version`, NATS `CONNECT` and
/// `PING`).
#[cfg(feature = "client")]
pub async fn ready(
    protocol: &str,
    addr: std::net::SocketAddr,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), ClientError> {
    let work = async {
        match protocol {
            "postgres" => postgres::ping(addr, credentials).await,
            "mysql" => mysql::ping(addr, credentials).await,
            "redis" => redis::ping(addr, credentials).await,
            "memcached" => memcached::ping(addr).await,
            "amqp" => amqp::ping(addr, credentials).await,
            "kafka" => kafka::ping(addr).await,
            "nats" => nats::ping(addr, credentials).await,
            other => Err(ClientError::Unsupported {
                protocol: other.to_string(),
                operation: "ready",
            }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ClientError::Timeout(timeout)))
}

/// Connects to `addr` from the polling thread, with Nagle off (steps are small
/// request/response exchanges).
#[cfg(feature = "client")]
async fn connect(addr: std::net::SocketAddr) -> Result<tokio::net::TcpStream, ClientError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The JSON text of `value`.
#[cfg(feature = "client")]
fn json(value: &serde_json::Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// `bytes` as text if they are UTF-8, else as hex after `prefix` (`\x` for
/// PostgreSQL's bytea, `0x` for MySQL): never a lossy string.
#[cfg(feature = "client")]
fn text_or_hex(bytes: &[u8], prefix: &str) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::Value::String(hex(bytes, prefix)),
    }
}

#[cfg(feature = "client")]
fn hex(bytes: &[u8], prefix: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(prefix.len() + bytes.len() * 2);
    out.push_str(prefix);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A JSON list of rows, each with its columns in the statement's order
/// (`serde_json`'s maps would sort them): `[{"id":1,"name":"alice"}]`.
#[cfg(feature = "client")]
fn rows_json(columns: &[String], rows: &[Vec<serde_json::Value>]) -> String {
    let mut out = String::from("[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        for (j, (c, v)) in columns.iter().zip(row).enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&json(&serde_json::Value::String(c.clone())));
            out.push(':');
            out.push_str(&json(v));
        }
        out.push('}');
    }
    out.push(']');
    out
}

/// `{"rows_affected":n}`.
#[cfg(feature = "client")]
fn rows_affected(n: u64) -> String {
    format!("{{\"rows_affected\":{n}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn creds(user: Option<&str>, password: Option<&str>, db: Option<&str>) -> Credentials {
        Credentials {
            user: user.map(str::to_string),
            password: password.map(str::to_string),
            database: db.map(str::to_string),
        }
    }

    #[test]
    fn postgres_credentials() {
        let none = Credentials::default();
        assert_eq!(
            none.or_env("postgres", &[]),
            creds(Some("postgres"), None, Some("postgres"))
        );
        let e = env(&[("POSTGRES_PASSWORD", "pw"), ("POSTGRES_DB", "app")]);
        assert_eq!(
            none.or_env("postgres", &e),
            creds(Some("postgres"), Some("pw"), Some("app"))
        );
        let e = env(&[("POSTGRES_USER", "svc"), ("POSTGRES_PASSWORD", "pw")]);
        assert_eq!(
            none.or_env("postgres", &e),
            creds(Some("svc"), Some("pw"), Some("svc"))
        );
        // Another user does not get the service user's password.
        assert_eq!(
            creds(Some("other"), None, None).or_env("postgres", &e),
            creds(Some("other"), None, Some("other"))
        );
        // Given values win.
        assert_eq!(
            creds(None, Some("x"), Some("d")).or_env("postgres", &e),
            creds(Some("svc"), Some("x"), Some("d"))
        );
    }

    #[test]
    fn mysql_credentials() {
        let none = Credentials::default();
        assert_eq!(none.or_env("mysql", &[]), creds(Some("root"), None, None));
        let e = env(&[("MYSQL_ROOT_PASSWORD", "r"), ("MYSQL_DATABASE", "app")]);
        assert_eq!(
            none.or_env("mysql", &e),
            creds(Some("root"), Some("r"), Some("app"))
        );
        let e = env(&[
            ("MYSQL_USER", "app"),
            ("MYSQL_PASSWORD", "apppw"),
            ("MYSQL_ROOT_PASSWORD", "r"),
        ]);
        assert_eq!(
            none.or_env("mysql", &e),
            creds(Some("app"), Some("apppw"), None)
        );
        assert_eq!(
            creds(Some("root"), None, None).or_env("mysql", &e),
            creds(Some("root"), Some("r"), None)
        );
    }

    #[test]
    fn redis_credentials() {
        let e = env(&[("REDIS_PASSWORD", "pw")]);
        assert_eq!(
            Credentials::default().or_env("redis", &e),
            creds(None, Some("pw"), None)
        );
        assert_eq!(
            creds(Some("acl"), None, None).or_env("redis", &e),
            creds(Some("acl"), None, None)
        );
        assert_eq!(
            Credentials::default().or_env("memcached", &e),
            Credentials::default()
        );
    }
}
