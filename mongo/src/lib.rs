//! MongoDB steps and the `ready()` probe, with the official driver (the heaviest
//! compile of the project: kept in a crate of its own so changes elsewhere do not
//! rebuild it).
//!
//! **Network namespaces.** The driver dials from tasks it spawns (its monitor and
//! its pool), not from the future it returns. Each step therefore runs on a
//! current-thread runtime of its own, built on the calling thread: every task, and
//! so every socket, is made on that thread, inside its network namespace (the
//! test's, so a step goes through the relays). Call [`run`] and [`ready`] from a
//! thread outside any runtime.
//!
//! **Documents** are JSON object text with key order kept (a command's name is its
//! first key), read as MongoDB Extended JSON: `{"$oid": "..."}` is an ObjectId,
//! `{"$date": ...}` a date, integers that fit 32 bits are `int`, others `long`,
//! numbers with a fraction or exponent `double`. Results are relaxed Extended JSON
//! with key order kept: numbers stay numbers, an ObjectId comes back as
//! `{"$oid": "..."}`, so a value read can be used in the next filter.
//!
//! Reads and writes are not retried (`retryReads`/`retryWrites` off), so a fault a
//! rule injects is the step's result, not hidden by a second attempt.

use std::net::SocketAddr;
use std::time::Duration;

use bson::{Bson, Document};
use faultbox_protocols::client::{ClientError, MongoOp, Outcome};
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;

pub mod json;

/// The database steps use when `database=` names none, as MongoDB's shell does.
pub const DEFAULT_DATABASE: &str = "test";

/// Runs `op` against the server at `addr`, in `database`, within `timeout`
/// (connecting included). Never panics; a failure is `ok == false` with the
/// server's words (`DuplicateKey (11000): ...`) or the driver's.
pub fn run(addr: SocketAddr, database: Option<&str>, op: &MongoOp, timeout: Duration) -> Outcome {
    let database = database.unwrap_or(DEFAULT_DATABASE);
    let result = on_this_thread(timeout, async {
        let client = client(addr, timeout)?;
        execute(&client, database, op).await
    });
    match result {
        Ok(body) => Outcome {
            ok: true,
            body,
            error: String::new(),
        },
        Err(e) => Outcome {
            ok: false,
            body: String::new(),
            error: e.to_string(),
        },
    }
}

/// One readiness probe: a `ping` command.
pub fn ready(addr: SocketAddr, timeout: Duration) -> Result<(), ClientError> {
    on_this_thread(timeout, async {
        let client = client(addr, timeout)?;
        let reply = client
            .database("admin")
            .run_command(bson::doc! {"ping": 1})
            .await
            .map_err(error)?;
        match reply.get("ok") {
            Some(Bson::Double(o)) if *o == 1.0 => Ok(()),
            Some(Bson::Int32(1) | Bson::Int64(1)) => Ok(()),
            _ => Err(ClientError::Protocol(format!("ping answered {reply}"))),
        }
    })
}

/// Runs `work` within `timeout` on a runtime whose tasks all run on this thread.
fn on_this_thread<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Io)?;
    let r = rt.block_on(async {
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)))
    });
    // Dropping the runtime ends the driver's tasks and closes its sockets, without
    // the `endSessions` a shutdown would send (rules would see it).
    rt.shutdown_background();
    r
}

fn client(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
    let mut options = ClientOptions::default();
    options.hosts = vec![ServerAddress::Tcp {
        host: addr.ip().to_string(),
        port: Some(addr.port()),
    }];
    options.direct_connection = Some(true);
    options.retry_reads = Some(false);
    options.retry_writes = Some(false);
    options.server_selection_timeout = Some(timeout);
    options.connect_timeout = Some(timeout);
    options.max_pool_size = Some(1);
    Client::with_options(options).map_err(error)
}

async fn execute(client: &Client, database: &str, op: &MongoOp) -> Result<String, ClientError> {
    let db = client.database(database);
    let coll = |name: &str| db.collection::<Document>(name);
    let value = match op {
        MongoOp::Find {
            collection,
            filter,
            projection,
            sort,
            limit,
            skip,
        } => {
            let c = coll(collection);
            let mut find = c.find(json::document(filter, "filter")?);
            if let Some(p) = projection {
                find = find.projection(json::document(p, "projection")?);
            }
            if let Some(s) = sort {
                find = find.sort(json::document(s, "sort")?);
            }
            if let Some(l) = limit {
                find = find.limit(*l);
            }
            if let Some(s) = skip {
                find = find.skip(*s);
            }
            let mut cursor = find.await.map_err(error)?;
            let mut out = String::from("[");
            let mut first = true;
            while cursor.advance().await.map_err(error)? {
                let d = cursor.deserialize_current().map_err(error)?;
                if !first {
                    out.push(',');
                }
                first = false;
                json::write(&Bson::Document(d), &mut out);
            }
            out.push(']');
            return Ok(out);
        }
        MongoOp::Insert {
            collection,
            document,
        } => {
            let r = coll(collection)
                .insert_one(json::document(document, "document")?)
                .await
                .map_err(error)?;
            json::object([("inserted_id", r.inserted_id)])
        }
        MongoOp::InsertMany {
            collection,
            documents,
        } => {
            let docs = documents
                .iter()
                .map(|d| json::document(d, "documents"))
                .collect::<Result<Vec<_>, _>>()?;
            let n = docs.len();
            let r = coll(collection).insert_many(docs).await.map_err(error)?;
            let ids: Vec<Bson> = (0..n)
                .map(|i| r.inserted_ids.get(&i).cloned().unwrap_or(Bson::Null))
                .collect();
            json::object([("inserted_ids", Bson::Array(ids))])
        }
        MongoOp::Update {
            collection,
            filter,
            update,
            many,
            upsert,
        } => {
            let filter = json::document(filter, "filter")?;
            let c = coll(collection);
            let r = match json::update(update)? {
                json::Update::Replacement(d) => {
                    if *many {
                        return Err(ClientError::Invalid(
                            "update=: a replacement document (no $ operators) replaces one document; many=True needs operators such as $set".into(),
                        ));
                    }
                    c.replace_one(filter, d).upsert(*upsert).await
                }
                json::Update::Modifications(m) if *many => {
                    c.update_many(filter, m).upsert(*upsert).await
                }
                json::Update::Modifications(m) => c.update_one(filter, m).upsert(*upsert).await,
            }
            .map_err(error)?;
            json::object([
                ("matched_count", Bson::Int64(r.matched_count as i64)),
                ("modified_count", Bson::Int64(r.modified_count as i64)),
                ("upserted_id", r.upserted_id.unwrap_or(Bson::Null)),
            ])
        }
        MongoOp::Delete {
            collection,
            filter,
            many,
        } => {
            let filter = json::document(filter, "filter")?;
            let c = coll(collection);
            let r = if *many {
                c.delete_many(filter).await
            } else {
                c.delete_one(filter).await
            }
            .map_err(error)?;
            json::object([("deleted_count", Bson::Int64(r.deleted_count as i64))])
        }
        MongoOp::Count { collection, filter } => {
            let n = coll(collection)
                .count_documents(json::document(filter, "filter")?)
                .await
                .map_err(error)?;
            json::object([("count", Bson::Int64(n as i64))])
        }
        MongoOp::Command { command } => {
            let reply = db
                .run_command(json::document(command, "command")?)
                .await
                .map_err(error)?;
            Bson::Document(reply)
        }
    };
    let mut out = String::new();
    json::write(&value, &mut out);
    Ok(out)
}

/// The server's refusal in its words (`DuplicateKey (11000): E11000 ...`), else
/// the driver's description of what went wrong.
fn error(e: mongodb::error::Error) -> ClientError {
    use mongodb::error::{ErrorKind, WriteFailure};
    let server = |name: &str, code: i32, message: &str| {
        ClientError::Server(if name.is_empty() {
            format!("code {code}: {message}")
        } else {
            format!("{name} ({code}): {message}")
        })
    };
    match &*e.kind {
        ErrorKind::Command(c) => server(&c.code_name, c.code, &c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            server(w.code_name.as_deref().unwrap_or(""), w.code, &w.message)
        }
        ErrorKind::InsertMany(m) => match m.write_errors.as_ref().and_then(|w| w.first()) {
            Some(w) => server(w.code_name.as_deref().unwrap_or(""), w.code, &w.message),
            None => ClientError::Driver(e.to_string()),
        },
        _ => ClientError::Driver(e.to_string()),
    }
}
