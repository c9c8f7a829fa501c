//! The step methods of `postgres`, `mysql`, `redis` and `memcached` interfaces: the
//! keywords each takes, checked when the spec calls it (a wrong keyword or type is
//! an error naming the step), and the operation it asks the step client for.
//!
//! | protocol | method | keywords |
//! |---|---|---|
//! | postgres, mysql | `query`, `exec` | `sql=`, `args=[...]` |
//! | redis | `get`, `incr` | `key=` |
//! | redis | `set` | `key=`, `value=`, `ttl=` |
//! | redis | `del` / `delete` | `key=` (a string or a list) |
//! | redis | `ping` | |
//! | redis | `keys` | `pattern=` (default `*`) |
//! | redis | `lpush`, `rpush` | `key=`, `value=` (a value or a list) |
//! | redis | `lrange` | `key=`, `start=` (0), `stop=` (-1) |
//! | redis | `command` | `args=[...]` |
//! | memcached | `get`, `delete` | `key=` |
//! | memcached | `set` | `key=`, `value=`, `ttl=` |
//! | amqp | `publish` | `routing_key=`, `exchange=` (""), `body=` (""), `declare=`, `durable=` (False) |
//! | amqp | `get` | `queue=`, `declare=` (True), `durable=` (False) |
//! | amqp | `consume` | `queue=`, `declare=` (True), `durable=` (False), `wait=` ("5s") |
//! | nats | `publish`, `request` | `subject=`, `data=` |
//! | nats | `subscribe` | `subject=`, `queue=` |
//! | mongodb | `find` | `collection=`, `filter=`, `projection=`, `sort=`, `limit=`, `skip=` |
//! | mongodb | `insert` | `collection=`, `document=` |
//! | mongodb | `insert_many` | `collection=`, `documents=[...]` |
//! | mongodb | `update` | `collection=`, `filter=`, `update=`, `many=`, `upsert=` |
//! | mongodb | `delete` | `collection=`, `filter=`, `many=` |
//! | mongodb | `count` | `collection=`, `filter=` |
//! | mongodb | `command` | `command=` |
//! | grpc | `call` | `method=`, `body=`, `metadata=`, `timeout=` |
//! | kafka | `publish` | `topic=`, `data=`, `key=` |
//! | kafka | `consume` | `topic=`, `group=`, `timeout=` (default `5s`) |
//!
//! A `consume` without `group=` uses the test's own group (the world picks one per
//! test and run), so offsets never leak between tests or runs.
//!
//! postgres, mysql and redis steps also take `user=`, `password=` and `database=`;
//! nats steps `user=` and `password=`; mongodb steps `database=` (the server used in
//! tests has no authentication); amqp steps `user=`, `password=` and `vhost=`.
//! MongoDB documents are dicts or JSON object strings. An amqp `publish` declares
//! the queue its routing key names when it goes to the default exchange (`declare=`
//! defaults to `exchange == ""`).
//! `del` is a Starlark keyword (`r.main.del(...)` does not parse): `delete` is the
//! same method.

use anyhow::{anyhow, bail};
use starlark::values::list::ListRef;
use starlark::values::tuple::TupleRef;
use starlark::values::{UnpackValue, Value};

use faultbox_protocols::client::{Credentials, MongoOp, Operation, SqlArg};

/// The step methods of a protocol with a step client in `faultbox_protocols::client`.
pub fn methods(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "postgres" | "mysql" => &["query", "exec"],
        "redis" => &[
            "get", "set", "del", "delete", "ping", "keys", "lpush", "rpush", "lrange", "incr",
            "command",
        ],
        "memcached" => &["get", "set", "delete"],
        "amqp" => &["publish", "get", "consume"],
        "nats" => &["publish", "request", "subscribe"],
        "mongodb" => &[
            "find",
            "insert",
            "insert_many",
            "update",
            "delete",
            "count",
            "command",
        ],
        "grpc" => &["call"],
        "kafka" => &["publish", "consume"],
        _ => &[],
    }
}

const LOGIN: &[&str] = &["user", "password", "database"];
const AMQP_LOGIN: &[&str] = &["user", "password", "vhost"];

/// The login keywords a protocol's steps take.
fn login(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "postgres" | "mysql" | "redis" => LOGIN,
        "nats" => &["user", "password"],
        "mongodb" => &["database"],
        "amqp" => AMQP_LOGIN,
        _ => &[],
    }
}

/// The keywords `method` of `protocol` takes, login keywords aside.
fn keywords(protocol: &str, method: &str) -> &'static [&'static str] {
    match (protocol, method) {
        ("postgres" | "mysql", _) => &["sql", "args"],
        ("redis", "get" | "incr" | "del" | "delete") => &["key"],
        ("redis", "set") | ("memcached", "set") => &["key", "value", "ttl"],
        ("redis", "keys") => &["pattern"],
        ("redis", "lpush" | "rpush") => &["key", "value"],
        ("redis", "lrange") => &["key", "start", "stop"],
        ("redis", "command") => &["args"],
        ("memcached", "get" | "delete") => &["key"],
        ("amqp", "publish") => &["exchange", "routing_key", "body", "declare", "durable"],
        ("amqp", "get") => &["queue", "declare", "durable"],
        ("amqp", "consume") => &["queue", "declare", "durable", "wait"],
        ("nats", "publish" | "request") => &["subject", "data"],
        ("nats", "subscribe") => &["subject", "queue"],
        ("mongodb", "find") => &[
            "collection",
            "filter",
            "projection",
            "sort",
            "limit",
            "skip",
        ],
        ("mongodb", "insert") => &["collection", "document"],
        ("mongodb", "insert_many") => &["collection", "documents"],
        ("mongodb", "update") => &["collection", "filter", "update", "many", "upsert"],
        ("mongodb", "delete") => &["collection", "filter", "many"],
        ("mongodb", "count") => &["collection", "filter"],
        ("mongodb", "command") => &["command"],
        ("kafka", "publish") => &["topic", "data", "key"],
        ("kafka", "consume") => &["topic", "group", "timeout"],
        _ => &[],
    }
}

/// A step's keyword arguments, read with errors that name the step.
struct Kwargs<'a, 'v> {
    step: &'a str,
    given: &'a [(&'a str, Value<'v>)],
}

impl<'v> Kwargs<'_, 'v> {
    fn get(&self, name: &str) -> Option<Value<'v>> {
        self.given.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    fn required(&self, name: &str) -> anyhow::Result<Value<'v>> {
        self.get(name)
            .ok_or_else(|| anyhow!("{}(): {name}= is required", self.step))
    }

    fn wrong(&self, name: &str, want: &str, v: Value) -> anyhow::Error {
        anyhow!(
            "{}(): {name} must be {want}, got {}",
            self.step,
            v.get_type()
        )
    }

    fn string(&self, name: &str, v: Value) -> anyhow::Result<String> {
        v.unpack_str()
            .map(str::to_string)
            .ok_or_else(|| self.wrong(name, "a string", v))
    }

    fn opt_string(&self, name: &str) -> anyhow::Result<Option<String>> {
        self.get(name).map(|v| self.string(name, v)).transpose()
    }

    fn opt_bool(&self, name: &str) -> anyhow::Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.get_type() == "bool" => Ok(Some(v.to_bool())),
            Some(v) => Err(self.wrong(name, "a bool", v)),
        }
    }

    fn int(&self, name: &str, v: Value) -> anyhow::Result<i64> {
        if v.get_type() != "int" {
            return Err(self.wrong(name, "an int", v));
        }
        i64::unpack_value(v)
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("{}(): {name} is out of range", self.step))
    }

    /// A value stored as text: a string, or an int or float written out.
    fn text(&self, name: &str, v: Value) -> anyhow::Result<String> {
        match v.get_type() {
            "string" | "int" | "float" => Ok(v.to_str()),
            _ => Err(self.wrong(name, "a string, an int or a float", v)),
        }
    }

    /// The items of a list or tuple.
    fn items(&self, name: &str, v: Value<'v>) -> anyhow::Result<Vec<Value<'v>>> {
        if let Some(l) = ListRef::from_value(v) {
            return Ok(l.iter().collect());
        }
        if let Some(t) = TupleRef::from_value(v) {
            return Ok(t.iter().collect());
        }
        Err(self.wrong(name, "a list", v))
    }

    /// One value or a list of them, as text.
    fn texts(&self, name: &str, v: Value<'v>) -> anyhow::Result<Vec<String>> {
        let items = match v.get_type() {
            "list" | "tuple" => self.items(name, v)?,
            _ => vec![v],
        };
        if items.is_empty() {
            bail!("{}(): {name}= must not be an empty list", self.step);
        }
        items.into_iter().map(|i| self.text(name, i)).collect()
    }

    /// `ttl=`: whole seconds, as an int or a duration (`"30s"`, `"1m"`).
    fn ttl_secs(&self) -> anyhow::Result<Option<u64>> {
        let Some(v) = self.get("ttl") else {
            return Ok(None);
        };
        let secs = match v.get_type() {
            "int" => u64::try_from(self.int("ttl", v)?).ok(),
            "string" => {
                let text = self.string("ttl", v)?;
                let d = faultbox_shim::rule::parse_duration(&text)
                    .map_err(|e| anyhow!("{}(): bad ttl {text:?}: {e}", self.step))?;
                // Expiries here are whole seconds: round up, so a key never expires
                // before the time given.
                Some(d.as_millis().div_ceil(1000) as u64)
            }
            _ => return Err(self.wrong("ttl", "an int (seconds) or a duration string", v)),
        };
        secs.map(Some)
            .ok_or_else(|| anyhow!("{}(): ttl must not be negative", self.step))
    }

    /// A MongoDB document: a dict (as JSON, its keys in order) or a string holding
    /// a JSON object.
    fn document(&self, name: &str, v: Value) -> anyhow::Result<String> {
        match v.get_type() {
            "dict" => v
                .to_json()
                .map_err(|e| anyhow!("{}(): {name}= cannot be JSON: {e}", self.step)),
            "string" => {
                let text = self.string(name, v)?;
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(_)) => Ok(text),
                    Ok(_) => bail!("{}(): {name}= must be a JSON object", self.step),
                    Err(e) => bail!("{}(): {name}= is not JSON: {e}", self.step),
                }
            }
            _ => Err(self.wrong(name, "a dict or a JSON object string", v)),
        }
    }

    fn sql_args(&self) -> anyhow::Result<Vec<SqlArg>> {
        let Some(v) = self.get("args") else {
            return Ok(Vec::new());
        };
        self.items("args", v)?
            .into_iter()
            .map(|a| {
                Ok(match a.get_type() {
                    "NoneType" => SqlArg::Null,
                    "bool" => SqlArg::Bool(a.to_bool()),
                    "int" => SqlArg::Int(self.int("args", a)?),
                    "float" => SqlArg::Float(
                        starlark::values::float::StarlarkFloat::unpack_value(a)
                            .ok()
                            .flatten()
                            .map(|f| f.0)
                            .unwrap_or_default(),
                    ),
                    "string" => SqlArg::Text(self.string("args", a)?),
                    _ => {
                        return Err(anyhow!(
                            "{}(): args holds None, bools, ints, floats and strings, not {}",
                            self.step,
                            a.get_type()
                        ))
                    }
                })
            })
            .collect()
    }
}

/// The operation `step` (`db.main.query`, a `method` of `protocol`) asks for with
/// the keyword arguments `given`, and the credentials they name.
pub fn operation(
    step: &str,
    protocol: &str,
    method: &str,
    given: &[(&str, Value)],
) -> anyhow::Result<(Operation, Credentials)> {
    let own = keywords(protocol, method);
    let login = login(protocol);
    for (name, _) in given {
        if !own.contains(name) && !login.contains(name) {
            let expected: Vec<&str> = own.iter().chain(login).copied().collect();
            bail!(
                "{step}(): unexpected keyword argument {name:?} (expected {})",
                if expected.is_empty() {
                    "none".to_string()
                } else {
                    expected.join(", ")
                }
            );
        }
    }
    let k = Kwargs { step, given };
    let credentials = Credentials {
        user: k.opt_string("user")?,
        password: k.opt_string("password")?,
        database: match k.get(if protocol == "amqp" {
            "vhost"
        } else {
            "database"
        }) {
            Some(v) if protocol == "redis" => Some(match v.get_type() {
                "int" => k.int("database", v)?.to_string(),
                _ => k.string("database", v)?,
            }),
            Some(v) => Some(k.string("database", v)?),
            None => None,
        },
    };
    let key = || -> anyhow::Result<String> { k.string("key", k.required("key")?) };
    let op = match (protocol, method) {
        ("postgres" | "mysql", "query" | "exec") => {
            let sql = k.string("sql", k.required("sql")?)?;
            if sql.trim().is_empty() {
                bail!("{step}(): sql= is empty");
            }
            let args = k.sql_args()?;
            if method == "query" {
                Operation::Query { sql, args }
            } else {
                Operation::Exec { sql, args }
            }
        }
        ("redis", _) => {
            let command: Vec<String> = match method {
                "get" => vec!["GET".into(), key()?],
                "incr" => vec!["INCR".into(), key()?],
                "set" => {
                    let mut c = vec!["SET".into(), key()?, k.text("value", k.required("value")?)?];
                    if let Some(s) = k.ttl_secs()?.filter(|s| *s > 0) {
                        c.extend(["EX".to_string(), s.to_string()]);
                    }
                    c
                }
                "del" | "delete" => {
                    let mut c = vec!["DEL".to_string()];
                    c.extend(k.texts("key", k.required("key")?)?);
                    c
                }
                "ping" => vec!["PING".into()],
                "keys" => vec![
                    "KEYS".into(),
                    k.opt_string("pattern")?.unwrap_or_else(|| "*".into()),
                ],
                "lpush" | "rpush" => {
                    let mut c = vec![method.to_ascii_uppercase(), key()?];
                    c.extend(k.texts("value", k.required("value")?)?);
                    c
                }
                "lrange" => {
                    let bound = |name: &str, default: i64| -> anyhow::Result<String> {
                        Ok(match k.get(name) {
                            Some(v) => k.int(name, v)?,
                            None => default,
                        }
                        .to_string())
                    };
                    vec![
                        "LRANGE".into(),
                        key()?,
                        bound("start", 0)?,
                        bound("stop", -1)?,
                    ]
                }
                "command" => {
                    let args = k.items("args", k.required("args")?)?;
                    if args.is_empty() {
                        bail!("{step}(): args= names the command and its arguments, so it must not be empty");
                    }
                    args.into_iter()
                        .map(|a| k.text("args", a))
                        .collect::<anyhow::Result<_>>()?
                }
                other => bail!("{step}(): redis has no step {other:?}"),
            };
            Operation::Redis {
                command,
                bare: method == "keys",
            }
        }
        ("memcached", "get") => Operation::MemcachedGet { key: key()? },
        ("memcached", "delete") => Operation::MemcachedDelete { key: key()? },
        ("memcached", "set") => {
            let ttl = k.ttl_secs()?.unwrap_or(0);
            // Past 30 days memcached reads the number as a Unix time.
            if ttl > 30 * 86_400 {
                bail!("{step}(): memcached expiries are at most 30 days (2592000 seconds)");
            }
            Operation::MemcachedSet {
                key: key()?,
                value: k.text("value", k.required("value")?)?,
                ttl: ttl as u32,
            }
        }
        ("amqp", "publish") => {
            let exchange = k.opt_string("exchange")?.unwrap_or_default();
            Operation::AmqpPublish {
                routing_key: k.string("routing_key", k.required("routing_key")?)?,
                body: match k.get("body") {
                    Some(v) => k.text("body", v)?,
                    None => String::new(),
                },
                declare: k.opt_bool("declare")?.unwrap_or(exchange.is_empty()),
                durable: k.opt_bool("durable")?.unwrap_or(false),
                exchange,
            }
        }
        ("amqp", "get" | "consume") => {
            let queue = k.string("queue", k.required("queue")?)?;
            let declare = k.opt_bool("declare")?.unwrap_or(true);
            let durable = k.opt_bool("durable")?.unwrap_or(false);
            if method == "get" {
                Operation::AmqpGet {
                    queue,
                    declare,
                    durable,
                }
            } else {
                let wait = match k.opt_string("wait")? {
                    Some(text) => faultbox_shim::rule::parse_duration(&text)
                        .map_err(|e| anyhow!("{step}(): bad wait {text:?}: {e}"))?,
                    None => std::time::Duration::from_secs(5),
                };
                Operation::AmqpConsume {
                    queue,
                    declare,
                    durable,
                    wait,
                }
            }
        }
        ("nats", _) => {
            let subject = k.string("subject", k.required("subject")?)?;
            let wildcard = method != "subscribe";
            check_subject(step, &subject, wildcard)?;
            match method {
                "publish" | "request" => {
                    let data = match k.get("data") {
                        Some(v) => k.text("data", v)?,
                        None => String::new(),
                    };
                    if method == "publish" {
                        Operation::NatsPublish { subject, data }
                    } else {
                        Operation::NatsRequest { subject, data }
                    }
                }
                _ => {
                    let queue = k.opt_string("queue")?;
                    if let Some(q) = &queue {
                        if q.is_empty() || q.chars().any(char::is_whitespace) {
                            bail!("{step}(): queue= must be one word, got {q:?}");
                        }
                    }
                    Operation::NatsSubscribe { subject, queue }
                }
            }
        }
        ("mongodb", _) => Operation::Mongo(mongo(&k, method)?),
        ("kafka", "publish" | "consume") => {
            let topic = k.string("topic", k.required("topic")?)?;
            if topic.is_empty() {
                bail!("{step}(): topic= is empty");
            }
            if method == "publish" {
                Operation::KafkaPublish {
                    topic,
                    value: k.text("data", k.required("data")?)?,
                    key: k.get("key").map(|v| k.text("key", v)).transpose()?,
                }
            } else {
                let group = k.opt_string("group")?;
                if group.as_deref() == Some("") {
                    bail!("{step}(): group= is empty");
                }
                let wait = match k.get("timeout") {
                    None => std::time::Duration::from_secs(5),
                    Some(v) => {
                        let text = k.string("timeout", v)?;
                        faultbox_shim::rule::parse_duration(&text)
                            .map_err(|e| anyhow!("{step}(): bad timeout {text:?}: {e}"))?
                    }
                };
                Operation::KafkaConsume { topic, group, wait }
            }
        }
        (p, m) => bail!("{step}(): {p} has no step {m:?}"),
    };
    Ok((op, credentials))
}

/// Refuses a NATS subject the server would: empty, with whitespace or empty
/// tokens, or (where one is published to, `literal`) with wildcards.
fn check_subject(step: &str, subject: &str, literal: bool) -> anyhow::Result<()> {
    if subject.is_empty()
        || subject.chars().any(char::is_whitespace)
        || subject.split('.').any(str::is_empty)
    {
        bail!("{step}(): {subject:?} is not a NATS subject (dot-separated words, no spaces)");
    }
    if literal && subject.split('.').any(|t| t == "*" || t == ">") {
        bail!("{step}(): {subject:?} has wildcards; only subscribe() takes them");
    }
    Ok(())
}

/// A mongodb step's operation.
fn mongo(k: &Kwargs, method: &str) -> anyhow::Result<MongoOp> {
    let step = k.step;
    let collection = || -> anyhow::Result<String> {
        let c = k.string("collection", k.required("collection")?)?;
        if c.is_empty() {
            bail!("{step}(): collection= is empty");
        }
        Ok(c)
    };
    let doc = |name: &str| -> anyhow::Result<String> { k.document(name, k.required(name)?) };
    let opt_doc = |name: &str| -> anyhow::Result<Option<String>> {
        k.get(name).map(|v| k.document(name, v)).transpose()
    };
    let filter =
        || -> anyhow::Result<String> { Ok(opt_doc("filter")?.unwrap_or_else(|| "{}".into())) };
    let flag = |name: &str| -> anyhow::Result<bool> {
        match k.get(name) {
            None => Ok(false),
            Some(v) if v.get_type() == "bool" => Ok(v.to_bool()),
            Some(v) => Err(k.wrong(name, "a bool", v)),
        }
    };
    Ok(match method {
        "find" => {
            let limit = k.get("limit").map(|v| k.int("limit", v)).transpose()?;
            let skip = match k.get("skip") {
                Some(v) => Some(
                    u64::try_from(k.int("skip", v)?)
                        .map_err(|_| anyhow!("{step}(): skip must not be negative"))?,
                ),
                None => None,
            };
            MongoOp::Find {
                collection: collection()?,
                filter: filter()?,
                projection: opt_doc("projection")?,
                sort: opt_doc("sort")?,
                limit,
                skip,
            }
        }
        "insert" => MongoOp::Insert {
            collection: collection()?,
            document: doc("document")?,
        },
        "insert_many" => {
            let items = k.items("documents", k.required("documents")?)?;
            if items.is_empty() {
                bail!("{step}(): documents= must not be an empty list");
            }
            MongoOp::InsertMany {
                collection: collection()?,
                documents: items
                    .into_iter()
                    .map(|d| k.document("documents", d))
                    .collect::<anyhow::Result<_>>()?,
            }
        }
        "update" => {
            let update = k.required("update")?;
            let update = if ListRef::from_value(update).is_some() {
                update.to_json()?
            } else {
                k.document("update", update)?
            };
            MongoOp::Update {
                collection: collection()?,
                filter: doc("filter")?,
                update,
                many: flag("many")?,
                upsert: flag("upsert")?,
            }
        }
        "delete" => MongoOp::Delete {
            collection: collection()?,
            filter: doc("filter")?,
            many: flag("many")?,
        },
        "count" => MongoOp::Count {
            collection: collection()?,
            filter: filter()?,
        },
        "command" => MongoOp::Command {
            command: doc("command")?,
        },
        other => bail!("{step}(): mongodb has no step {other:?}"),
    })
}

/// The keywords of a gRPC `call` step.
const GRPC_CALL: &[&str] = &["method", "body", "metadata", "timeout"];

/// A gRPC `call` step (`svc.main.call(method=..., body=...)`): `method=` is
/// `/pkg.Service/Method`; `body=` the request as JSON text or as a dict (default
/// `{}`); `metadata=` a dict of ASCII headers; `timeout=` a duration, the call's
/// deadline. With the interface's `.proto` (`spec`, an absolute path), the method
/// and body are checked here, so a mistake stops the test at the step's line;
/// without one they are checked against the server's reflection when the step runs.
pub fn grpc_call(
    step: &str,
    spec: Option<&str>,
    given: &[(&str, Value)],
) -> anyhow::Result<Operation> {
    use faultbox_protocols::client::grpc_schema;
    for (name, _) in given {
        if !GRPC_CALL.contains(name) {
            bail!(
                "{step}(): unexpected keyword argument {name:?} (expected {})",
                GRPC_CALL.join(", ")
            );
        }
    }
    let k = Kwargs { step, given };
    let method = k.string("method", k.required("method")?)?;
    let body = match k.get("body") {
        None => "{}".to_string(),
        Some(v) => match v.get_type() {
            "string" => k.string("body", v)?,
            "dict" => v
                .to_json()
                .map_err(|e| anyhow!("{step}(): body= as JSON: {e}"))?,
            _ => return Err(k.wrong("body", "a JSON string or a dict", v)),
        },
    };
    let mut metadata = Vec::new();
    if let Some(v) = k.get("metadata") {
        let d = starlark::values::dict::DictRef::from_value(v)
            .ok_or_else(|| k.wrong("metadata", "a dict of strings", v))?;
        for (key, value) in d.iter() {
            let key = k.string("metadata", key)?;
            let value = k.string("metadata", value)?;
            let lower = key.to_ascii_lowercase();
            if lower.is_empty()
                || !lower
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
                || lower.ends_with("-bin")
                || lower.starts_with("grpc-")
            {
                bail!("{step}(): metadata key {key:?} is not allowed (ASCII names of letters, digits, '-', '_', '.'; no grpc- prefix or -bin suffix)");
            }
            if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                bail!("{step}(): metadata value {value:?} of {key:?} is not printable ASCII");
            }
            metadata.push((lower, value));
        }
    }
    let timeout = match k.get("timeout") {
        None => None,
        Some(v) => {
            let text = k.string("timeout", v)?;
            let d = faultbox_shim::rule::parse_duration(&text)
                .map_err(|e| anyhow!("{step}(): bad timeout {text:?}: {e}"))?;
            if d.is_zero() {
                bail!("{step}(): timeout must be more than 0");
            }
            Some(d)
        }
    };
    let proto = spec.map(std::path::PathBuf::from);
    match &proto {
        Some(p) => {
            let pool = grpc_schema::load(p).map_err(|e| anyhow!("{step}(): {e}"))?;
            let m = grpc_schema::method(&pool, &method, &p.display().to_string())
                .map_err(|e| anyhow!("{step}(): {e}"))?;
            grpc_schema::encode(&m, &body).map_err(|e| anyhow!("{step}(): {e}"))?;
        }
        None => {
            grpc_schema::split_method(&method).map_err(|e| anyhow!("{step}(): {e}"))?;
        }
    }
    Ok(Operation::GrpcCall {
        method,
        body,
        metadata,
        proto,
        timeout,
    })
}
