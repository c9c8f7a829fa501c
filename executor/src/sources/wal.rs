//! `wal_stream(slot=, tables=)`: PostgreSQL logical decoding as events, one per row
//! change, in commit order.
//!
//! A thread of the source's own enters the service's network namespace and keeps
//! one session to `127.0.0.1:PORT`, in which it creates a publication
//! (`faultbox_<slot>`) and then a *temporary* logical slot with the built-in
//! `pgoutput` plugin. The server drops a temporary slot when the session ends (and,
//! in PostgreSQL 15, on any error in it), so no slot outlives Faultbox, whatever
//! happens to it. Every ~15 ms, and at once on [`Running::sync`], the session reads
//! what the slot holds with `pg_logical_slot_get_binary_changes` and the messages are
//! decoded by [`pgoutput`]. No extension (wal2json) is needed.
//!
//! The publication must exist before the slot: `pgoutput` looks publications up as
//! the catalog was when each change was written, so a publication made later would
//! be "does not exist" for the changes in between.

mod pgoutput;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use faultbox_protocols::client::decimal;
use faultbox_protocols::client::Credentials;
use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc as async_mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, NoTls, Statement};

use self::pgoutput::{Datum, Message, Relation};
use super::{Context, Observation, Running, Sink};

/// The events' `type`.
const KIND: &str = "wal";
/// How often the slot is read while nothing asks.
const POLL_EVERY: Duration = Duration::from_millis(15);
/// How long `sync` waits for the server to flush what was committed before it.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How long `stop` waits for the worker, which itself gives up at [`STOP_GRACE`].
const STOP_WAIT: Duration = Duration::from_secs(4);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reading a large backlog of changes can take a while; only a hung server takes this.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Creating a slot waits for the transactions running at that moment to end.
const SLOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long what is in flight when `stop` is called (the last read, dropping the slot
/// and publication) may still take: a hung server must not hang the test.
const STOP_GRACE: Duration = Duration::from_millis(2500);
/// A server (or table) that is not there yet is expected (the source starts with
/// its service): it becomes an error event only when it lasts this long.
const STARTING_QUIET: Duration = Duration::from_secs(10);

/// Starts observing the PostgreSQL server at `127.0.0.1:port` in the service's
/// namespace. `tables` limits the events to those tables (`name`, as the search
/// path finds it, or `schema.name`); all tables when empty.
pub fn start(
    ctx: Context,
    port: u16,
    credentials: Credentials,
    slot: &str,
    tables: &[String],
) -> Box<dyn Running> {
    let gate = Arc::new(Gate {
        sink: ctx.sink.clone(),
        open: Mutex::new(true),
    });
    let (commands, receiver) = async_mpsc::unbounded_channel();
    let config = Config {
        port,
        credentials,
        slot: slot.to_string(),
        publication: publication_name(slot),
        tables: tables.to_vec(),
        application_name: format!("faultbox wal_stream {slot}"),
        stopping: Arc::new(Stopping::default()),
    };
    let stopping = config.stopping.clone();
    let g = gate.clone();
    let netns = ctx.netns.clone();
    let thread = std::thread::Builder::new()
        .name(format!("wal {}", ctx.service))
        .spawn(move || worker(&netns, &g, &config, receiver));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            gate.emit(Observation::error(
                KIND,
                format!("cannot start a thread to read the WAL: {e}"),
            ));
            None
        }
    };
    Box::new(WalStream {
        commands,
        gate,
        stopping,
        thread,
    })
}

/// The longest name PostgreSQL keeps whole (it cuts longer ones).
const MAX_NAME: usize = 63;

/// The slot's publication, `faultbox_<slot>`. A name too long to keep whole ends in
/// a hash of the slot's instead, so two long slot names never share a publication.
fn publication_name(slot: &str) -> String {
    let name = format!("faultbox_{slot}");
    if name.len() <= MAX_NAME {
        return name;
    }
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(slot.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_NAME - hash.len() - 1;
    format!("{}_{hash}", &name[..keep])
}

/// What PostgreSQL accepts as a slot name: checked here so a bad one is one clear
/// event, not a server error on every retry.
fn check_slot_name(slot: &str) -> Result<(), String> {
    let valid = !slot.is_empty()
        && slot.len() <= MAX_NAME
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "slot name {slot:?} is not valid: it takes 1 to {MAX_NAME} lower-case letters, \
             digits and underscores"
        ))
    }
}

struct WalStream {
    commands: async_mpsc::UnboundedSender<Command>,
    gate: Arc<Gate>,
    stopping: Arc<Stopping>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Command {
    /// Read what is committed now; answer when done.
    Sync(mpsc::SyncSender<()>),
    /// Read what is left, drop the slot and publication, end the session.
    Stop(mpsc::SyncSender<()>),
}

impl Running for WalStream {
    fn sync(&self) {
        let (reply, done) = mpsc::sync_channel(1);
        if self.commands.send(Command::Sync(reply)).is_ok() {
            // The worker bounds its own wait; a little more here for the reply.
            let _ = done.recv_timeout(SYNC_WAIT + Duration::from_millis(500));
        }
    }

    fn stop(mut self: Box<Self>) {
        self.stopping.request();
        let (reply, done) = mpsc::sync_channel(1);
        // A worker that answered, or dropped the request on its way out, is ending.
        let ending = self.commands.send(Command::Stop(reply)).is_err()
            || !matches!(
                done.recv_timeout(STOP_WAIT),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
        self.gate.close();
        if let Some(thread) = self.thread.take() {
            // Otherwise it is stuck where no limit applies; it can no longer emit and
            // ends at its own timeout.
            if ending || thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// The sink, until `stop` closes it: no emit gets past it after that, even from a
/// thread that is still waiting for a hung server.
struct Gate {
    sink: Arc<dyn Sink>,
    open: Mutex<bool>,
}

impl Gate {
    fn emit(&self, o: Observation) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if *open {
            self.sink.emit(o);
        }
    }

    fn close(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

/// Set by `stop`: from then on everything the worker waits for gets [`STOP_GRACE`].
#[derive(Default)]
struct Stopping {
    at: std::sync::OnceLock<Instant>,
    notify: tokio::sync::Notify,
}

impl Stopping {
    fn request(&self) {
        let _ = self.at.set(Instant::now());
        self.notify.notify_waiters();
    }

    fn requested(&self) -> bool {
        self.at.get().is_some()
    }

    /// Resolves [`STOP_GRACE`] after `stop` was called.
    async fn expired(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if let Some(&at) = self.at.get() {
                tokio::time::sleep_until((at + STOP_GRACE).into()).await;
                return;
            }
            notified.await;
        }
    }
}

struct Config {
    stopping: Arc<Stopping>,
    port: u16,
    credentials: Credentials,
    slot: String,
    publication: String,
    tables: Vec<String>,
    /// Marks the session, so a slot still held by an earlier session of this source
    /// (a reconnect before the server noticed the old one gone) is told apart from
    /// someone else's.
    application_name: String,
}

/// Why setting up failed, and whether trying again makes sense.
enum Failure {
    /// The server, or a table to publish, is not there yet: expected while the
    /// service starts.
    NotYet(String),
    /// Something that may clear up, reported at once (a database not created yet,
    /// a login refused, a server that does not answer).
    Retry(String),
    /// Something only a change to the spec or server fixes.
    Fatal(String),
}

fn worker(
    netns: &crate::network::namespace::NetNs,
    gate: &Gate,
    config: &Config,
    mut commands: async_mpsc::UnboundedReceiver<Command>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let problem = match (&runtime, netns.enter()) {
        (Err(e), _) => Some(format!("cannot start a runtime to read the WAL: {e}")),
        (_, Err(e)) => Some(format!("cannot enter the service's network namespace: {e}")),
        _ => check_slot_name(&config.slot).err(),
    };
    match (runtime, problem) {
        (Ok(rt), None) => rt.block_on(run(config, gate, &mut commands)),
        (_, problem) => {
            if let Some(p) = problem {
                gate.emit(Observation::error(KIND, p));
            }
            // Nothing to observe: answer until stopped.
            while let Some(command) = commands.blocking_recv() {
                if answer(command) {
                    return;
                }
            }
        }
    }
}

/// Answers a command when there is nothing to read; true for `Stop`.
fn answer(command: Command) -> bool {
    match command {
        Command::Sync(reply) => {
            let _ = reply.send(());
            false
        }
        Command::Stop(reply) => {
            let _ = reply.send(());
            true
        }
    }
}

/// One error event per distinct failure, not one per retry.
struct Reporter<'a> {
    gate: &'a Gate,
    last: Option<String>,
}

impl Reporter<'_> {
    fn report(&mut self, message: String) {
        if self.last.as_ref() != Some(&message) {
            self.gate.emit(Observation::error(KIND, message.clone()));
            self.last = Some(message);
        }
    }
}

/// Connects and sets up (again after a lost session) until stopped.
///
/// A `sync` while there is no slot starts an attempt at once and is answered when
/// it ends: called right after the service's healthcheck passes, it returns once
/// the slot exists, so the test's first changes are seen.
async fn run(config: &Config, gate: &Gate, commands: &mut async_mpsc::UnboundedReceiver<Command>) {
    let mut reporter = Reporter { gate, last: None };
    let mut changes = Changes::default();
    let mut delay = Duration::ZERO;
    let mut outage = Instant::now();
    // Why the last session was lost, until that is reported.
    let mut lost: Option<String> = None;
    let mut syncs: Vec<mpsc::SyncSender<()>> = Vec::new();
    loop {
        if !delay.is_zero() {
            match wait(delay, commands).await {
                Waited::Elapsed => {}
                Waited::Sync(reply) => syncs.push(reply),
                Waited::Stop => return,
            }
        }
        let result = {
            let mut setup = pin!(setup(config));
            loop {
                tokio::select! {
                    r = &mut setup => break r,
                    command = commands.recv() => match command {
                        Some(Command::Sync(reply)) => syncs.push(reply),
                        Some(Command::Stop(reply)) => {
                            // Setting up ends soon now (its waits are cut at the
                            // grace): what it made is dropped.
                            if let Ok(session) = (&mut setup).await {
                                session.teardown(config).await;
                            }
                            let _ = reply.send(());
                            return;
                        }
                        // Dropped without stop: the server drops the slot when the
                        // session ends with this thread.
                        None => return,
                    },
                }
            }
        };
        let session = match result {
            Ok(session) => {
                reporter.last = None;
                if let Some(why) = lost.take() {
                    reporter.report(format!(
                        "the session with PostgreSQL was lost ({why}) and a new one made: \
                         changes committed in between were not seen"
                    ));
                }
                changes.reset();
                session
            }
            Err(failure) => {
                // Nothing committed now can be read later: no slot.
                syncs.drain(..).for_each(|reply| {
                    let _ = reply.send(());
                });
                match failure {
                    Failure::Fatal(message) => {
                        reporter.report(message);
                        return idle(commands).await;
                    }
                    Failure::NotYet(message) => {
                        if outage.elapsed() >= STARTING_QUIET {
                            reporter.report(match &lost {
                                Some(why) => {
                                    format!("lost the session with PostgreSQL ({why}); {message}")
                                }
                                None => message,
                            });
                        }
                        delay = (delay * 2)
                            .clamp(Duration::from_millis(50), Duration::from_millis(200));
                    }
                    Failure::Retry(message) => {
                        reporter.report(message);
                        delay =
                            (delay * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    }
                }
                continue;
            }
        };
        match observe(session, config, gate, &mut changes, commands, &mut syncs).await {
            None => return,
            // Cut short by stop: not a failure of the server's.
            Some(_) if config.stopping.requested() => return idle(commands).await,
            // Said once a new session exists (or the server stays away): at the end
            // of a test the server is killed before its sources stop, which is no
            // failure worth an event.
            Some(why) => {
                lost = Some(why);
                outage = Instant::now();
                delay = Duration::from_millis(50);
            }
        }
    }
}

/// Answers commands, with nothing to read, until stopped.
async fn idle(commands: &mut async_mpsc::UnboundedReceiver<Command>) {
    while let Some(command) = commands.recv().await {
        if answer(command) {
            return;
        }
    }
}

enum Waited {
    Elapsed,
    /// A sync cut the wait short: there may be a server to find now.
    Sync(mpsc::SyncSender<()>),
    Stop,
}

/// Sleeps `delay` between attempts to set up.
async fn wait(delay: Duration, commands: &mut async_mpsc::UnboundedReceiver<Command>) -> Waited {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Waited::Elapsed,
        command = commands.recv() => match command {
            Some(Command::Sync(reply)) => Waited::Sync(reply),
            Some(Command::Stop(reply)) => {
                let _ = reply.send(());
                Waited::Stop
            }
            None => Waited::Stop,
        },
    }
}

/// Reads changes until stopped (`None`) or the session is lost (why). `syncs`
/// came while setting up: they are answered after a first read.
async fn observe(
    session: Session,
    config: &Config,
    gate: &Gate,
    changes: &mut Changes,
    commands: &mut async_mpsc::UnboundedReceiver<Command>,
    syncs: &mut Vec<mpsc::SyncSender<()>>,
) -> Option<String> {
    if !syncs.is_empty() {
        let r = session.catch_up(config, changes, gate).await;
        syncs.drain(..).for_each(|reply| {
            let _ = reply.send(());
        });
        if let Err(e) = r {
            return Some(e);
        }
    }
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(Command::Sync(reply)) => {
                    let r = session.catch_up(config, changes, gate).await;
                    let _ = reply.send(());
                    if let Err(e) = r {
                        return Some(e);
                    }
                }
                stop => {
                    let _ = session.catch_up(config, changes, gate).await;
                    session.teardown(config).await;
                    if let Some(Command::Stop(reply)) = stop {
                        let _ = reply.send(());
                    }
                    return None;
                }
            },
            _ = tokio::time::sleep(POLL_EVERY) => {
                if let Err(e) = session.poll_if_new(config, changes, gate).await {
                    return Some(e);
                }
            }
        }
    }
}

/// A logged-in session that holds the slot.
struct Session {
    client: Client,
    connection: ConnectionTask,
    /// The prepared `pg_logical_slot_get_binary_changes` call.
    poll: Statement,
    /// The prepared `SELECT pg_current_wal_flush_lsn()`.
    flushed: Statement,
    /// The flushed end of the WAL when the slot was last read: until it moves there
    /// is nothing new, and a decoding pass costs the server far more than asking.
    read_to: std::cell::Cell<Option<PgLsn>>,
}

/// The task that drives a session's socket; aborted if the session is dropped.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `SQLSTATE: message` for a server error, else the driver's words and causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|db| db.code().code())
}

/// `f`'s output, or `None` when it takes longer than `limit`, or than `stop` allows.
async fn within<T>(
    stopping: &Stopping,
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        r = tokio::time::timeout(limit, f) => r.ok(),
        _ = stopping.expired() => None,
    }
}

/// A query [`within`] its limit; the error says what got no answer.
async fn limited<T>(
    stopping: &Stopping,
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match within(stopping, limit, f).await {
        Some(r) => r.map_err(|e| describe(&e)),
        None => Err(format!("{what} got no answer in time")),
    }
}

/// `name` as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Logs in, checks `wal_level`, makes the publication, then the slot.
async fn setup(config: &Config) -> Result<Session, Failure> {
    let (client, connection) = login(config).await?;
    let stopping = &config.stopping;
    let retry = Failure::Retry;

    let level = limited(stopping, QUERY_TIMEOUT, "SHOW wal_level", async {
        client
            .query_one("SHOW wal_level", &[])
            .await?
            .try_get::<_, String>(0)
    })
    .await
    .map_err(retry)?;
    if level != "logical" {
        return Err(Failure::Fatal(format!(
            "PostgreSQL's wal_level is {level:?}; wal_stream needs \"logical\": start the \
             server with `-c wal_level=logical` (for an image, args = [\"postgres\", \"-c\", \
             \"wal_level=logical\"], as compose's `command: postgres -c wal_level=logical`)"
        )));
    }

    let holder = limited(
        stopping,
        QUERY_TIMEOUT,
        "the replication slot check",
        client.query_opt(
            "SELECT s.temporary, coalesce(a.application_name, '') \
             FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&config.slot],
        ),
    )
    .await
    .map_err(retry)?;
    if let Some(row) = holder {
        let temporary: bool = row.get(0);
        let application: &str = row.get(1);
        return Err(if temporary && application == config.application_name {
            Failure::Retry(format!(
                "replication slot {:?} is still held by an earlier session of this source; \
                 waiting for the server to drop it",
                config.slot
            ))
        } else {
            slot_taken(&config.slot)
        });
    }

    publish(&client, config).await?;

    let created = within(
        stopping,
        SLOT_TIMEOUT,
        client.query_one(
            "SELECT 1 FROM pg_create_logical_replication_slot($1, 'pgoutput', true)",
            &[&config.slot],
        ),
    )
    .await;
    let failure = match created {
        Some(Ok(_)) => None,
        Some(Err(e)) if sqlstate(&e) == Some("42710") => Some(slot_taken(&config.slot)),
        Some(Err(e)) => Some(retry(format!(
            "cannot create replication slot {:?}: {}",
            config.slot,
            describe(&e)
        ))),
        None => Some(retry(format!(
            "creating replication slot {:?} got no answer in {SLOT_TIMEOUT:?}: it waits for \
             the transactions running when it began to end",
            config.slot
        ))),
    };
    if let Some(failure) = failure {
        let drop = format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&config.publication)
        );
        let _ = within(stopping, QUERY_TIMEOUT, client.simple_query(&drop)).await;
        return Err(failure);
    }

    let prepare = |sql| {
        limited(
            stopping,
            QUERY_TIMEOUT,
            "preparing a query",
            client.prepare(sql),
        )
    };
    let poll = prepare(
        "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes(\
         $1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)",
    )
    .await
    .map_err(retry)?;
    let flushed = prepare("SELECT pg_current_wal_flush_lsn()")
        .await
        .map_err(retry)?;
    Ok(Session {
        client,
        connection,
        poll,
        flushed,
        read_to: std::cell::Cell::new(None),
    })
}

/// Connects to `127.0.0.1:PORT` and logs in as the step clients do.
async fn login(config: &Config) -> Result<(Client, ConnectionTask), Failure> {
    let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
    let stopping = &config.stopping;
    let stream = match within(
        stopping,
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return Err(Failure::NotYet(format!(
                "cannot connect to PostgreSQL at {addr}: {e}"
            )))
        }
        None => {
            return Err(Failure::NotYet(format!(
                "connecting to PostgreSQL at {addr} got no answer in time"
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let credentials = &config.credentials;
    let user = credentials.user.as_deref().unwrap_or("postgres");
    let mut pg = tokio_postgres::Config::new();
    pg.user(user)
        .dbname(credentials.database.as_deref().unwrap_or(user))
        .application_name(&config.application_name)
        // Commits of this session (the flush in `catch_up`) wait for the local WAL
        // flush, never for a standby.
        .options("-c synchronous_commit=local")
        .ssl_mode(SslMode::Disable);
    if let Some(p) = &credentials.password {
        pg.password(p);
    }
    match within(stopping, QUERY_TIMEOUT, pg.connect_raw(stream, NoTls)).await {
        Some(Ok((client, connection))) => Ok((
            client,
            ConnectionTask(tokio::spawn(async move {
                let _ = connection.await;
            })),
        )),
        // 57P03: starting up, shutting down or in recovery; no code: the connection
        // closed under a server that is (re)starting.
        Some(Err(e)) if sqlstate(&e).is_none_or(|c| c == "57P03") => Err(Failure::NotYet(format!(
            "cannot log in to PostgreSQL at {addr}: {}",
            describe(&e)
        ))),
        Some(Err(e)) => Err(Failure::Retry(format!(
            "cannot log in to PostgreSQL at {addr} as {user:?}: {}",
            describe(&e)
        ))),
        None => Err(Failure::NotYet(format!(
            "logging in to PostgreSQL at {addr} got no answer in time"
        ))),
    }
}

/// Makes the publication `pgoutput` reads through: FOR TABLE the `tables=` (as SQL
/// resolves the names), else FOR ALL TABLES, which takes in tables created after
/// the slot (by the service's migrations) too but needs a superuser. A leftover of
/// a Faultbox that was killed is replaced.
async fn publish(client: &Client, config: &Config) -> Result<(), Failure> {
    let publication = quote_ident(&config.publication);
    let what = if config.tables.is_empty() {
        "FOR ALL TABLES".to_string()
    } else {
        let list: Vec<String> = config
            .tables
            .iter()
            .map(|t| match t.split_once('.') {
                Some((schema, name)) => format!("{}.{}", quote_ident(schema), quote_ident(name)),
                None => quote_ident(t),
            })
            .collect();
        format!("FOR TABLE {}", list.join(", "))
    };
    let sql = format!(
        "DROP PUBLICATION IF EXISTS {publication}; CREATE PUBLICATION {publication} {what}"
    );
    match within(&config.stopping, QUERY_TIMEOUT, client.simple_query(&sql)).await {
        Some(Ok(_)) => Ok(()),
        None => Err(Failure::Retry(format!(
            "CREATE PUBLICATION {publication} got no answer in time"
        ))),
        // The service's migrations may not have made it yet.
        Some(Err(e)) if sqlstate(&e) == Some("42P01") => Err(Failure::NotYet(format!(
            "cannot create publication {publication} {what}: {}",
            describe(&e)
        ))),
        Some(Err(e)) if sqlstate(&e) == Some("42501") && config.tables.is_empty() => {
            Err(Failure::Retry(format!(
                "cannot create publication {publication} FOR ALL TABLES: {}: a user that is \
                 not a superuser can publish the tables it owns: list them in tables=",
                describe(&e)
            )))
        }
        Some(Err(e)) => Err(Failure::Retry(format!(
            "cannot create publication {publication} {what}: {}",
            describe(&e)
        ))),
    }
}

fn slot_taken(slot: &str) -> Failure {
    Failure::Fatal(format!(
        "replication slot {slot:?} already exists and is not this source's: choose another \
         slot= name, or drop it (SELECT pg_drop_replication_slot('{slot}')) if nothing uses it"
    ))
}

impl Session {
    /// Reads the slot if the flushed WAL has moved since it was last read.
    async fn poll_if_new(
        &self,
        config: &Config,
        changes: &mut Changes,
        gate: &Gate,
    ) -> Result<(), String> {
        let flushed: PgLsn = limited(
            &config.stopping,
            QUERY_TIMEOUT,
            "the flushed WAL position",
            self.client.query_one(&self.flushed, &[]),
        )
        .await?
        .get(0);
        if self.read_to.get() == Some(flushed) {
            return Ok(());
        }
        self.poll(config, changes, gate).await?;
        // The read went at least this far.
        self.read_to.set(Some(flushed));
        Ok(())
    }

    /// Reads and emits everything the slot holds now.
    async fn poll(
        &self,
        config: &Config,
        changes: &mut Changes,
        gate: &Gate,
    ) -> Result<(), String> {
        let read = async {
            let params: [&(dyn ToSql + Sync); 2] = [&config.slot, &config.publication];
            let rows = self.client.query_raw(&self.poll, params).await?;
            let mut rows = pin!(rows);
            let mut out = Vec::new();
            while let Some(row) = rows.try_next().await? {
                let lsn: &str = row.try_get(0)?;
                let xid: &str = row.try_get(1)?;
                let data: &[u8] = row.try_get(2)?;
                if let Err(e) = changes.feed(lsn, xid, data, &mut out) {
                    out.push(Observation::error(
                        KIND,
                        format!("an undecodable pgoutput message at {lsn}: {e}"),
                    ));
                }
                for o in out.drain(..) {
                    gate.emit(o);
                }
            }
            Ok(())
        };
        limited(&config.stopping, POLL_TIMEOUT, "reading the slot", read).await
    }

    /// Emits everything committed before the call. The slot is read only up to the
    /// flushed end of the WAL, and an asynchronous commit (`synchronous_commit =
    /// off` in the service) is acknowledged before its WAL is flushed, which the WAL
    /// writer does only every 200 ms: if the WAL written so far is not flushed yet,
    /// an empty transactional logical message (which `pgoutput` does not pass on)
    /// commits synchronously and so flushes it. Waits up to [`SYNC_WAIT`] otherwise.
    async fn catch_up(
        &self,
        config: &Config,
        changes: &mut Changes,
        gate: &Gate,
    ) -> Result<(), String> {
        let deadline = Instant::now() + SYNC_WAIT;
        let stopping = &config.stopping;
        let now = limited(
            stopping,
            QUERY_TIMEOUT,
            "the WAL positions",
            self.client.query_one(
                "SELECT pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()",
                &[],
            ),
        )
        .await?;
        let target: PgLsn = now.get(0);
        let mut flushed = now.get::<_, PgLsn>(1) >= target;
        if !flushed {
            // In a block of its own: an error at the top level would drop the slot.
            limited(
                stopping,
                QUERY_TIMEOUT,
                "flushing the WAL",
                self.client.batch_execute(
                    "DO $$ BEGIN PERFORM pg_logical_emit_message(true, 'faultbox', ''); \
                     EXCEPTION WHEN OTHERS THEN NULL; END $$",
                ),
            )
            .await?;
        }
        loop {
            if !flushed {
                flushed = limited(
                    stopping,
                    QUERY_TIMEOUT,
                    "the flushed WAL position",
                    self.client
                        .query_one("SELECT pg_current_wal_flush_lsn() >= $1", &[&target]),
                )
                .await?
                .get(0);
            }
            self.poll(config, changes, gate).await?;
            if flushed || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drops the slot (at once, rather than when the server notices the session
    /// gone) and the publication, then says goodbye.
    async fn teardown(self, config: &Config) {
        let Session {
            client, connection, ..
        } = self;
        let drop_all = async {
            let _ = client
                .query("SELECT pg_drop_replication_slot($1)", &[&config.slot])
                .await;
            let _ = client
                .simple_query(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    quote_ident(&config.publication)
                ))
                .await;
        };
        let _ = within(&config.stopping, QUERY_TIMEOUT, drop_all).await;
        // Dropping the client sends Terminate; the connection then ends on its own.
        drop(client);
        let mut connection = connection;
        let _ = within(
            &config.stopping,
            Duration::from_millis(500),
            &mut connection.0,
        )
        .await;
    }
}

/// Turns pgoutput messages into events: one per row change (and per truncated
/// table), held until the transaction's commit, so events come in commit order and
/// only for committed work.
#[derive(Default)]
struct Changes {
    relations: HashMap<u32, Relation>,
    /// The events of the transaction being read.
    pending: Option<Vec<Observation>>,
}

impl Changes {
    /// Forgets what a lost session had sent.
    fn reset(&mut self) {
        self.relations.clear();
        self.pending = None;
    }

    /// Decodes one message (a row of the changes query); events of a transaction go
    /// to `out` at its commit.
    fn feed(
        &mut self,
        lsn: &str,
        xid: &str,
        data: &[u8],
        out: &mut Vec<Observation>,
    ) -> Result<(), pgoutput::ParseError> {
        let mut events = Vec::new();
        match pgoutput::parse(data)? {
            Message::Begin { .. } => self.pending = Some(Vec::new()),
            Message::Commit { .. } => out.extend(self.pending.take().unwrap_or_default()),
            Message::Relation(r) => {
                self.relations.insert(r.oid, r);
            }
            Message::Insert { relation, new } => {
                if let Some(r) = self.relation(relation, &mut events) {
                    let (new, unchanged) = row(&new, r, false);
                    events.push(event("INSERT", r, lsn, xid, Some(new), None, unchanged));
                }
            }
            Message::Update { relation, old, new } => {
                if let Some(r) = self.relation(relation, &mut events) {
                    let (new, unchanged) = row(&new, r, false);
                    let old = old.map(|o| row(&o.values, r, o.key_only).0);
                    events.push(event("UPDATE", r, lsn, xid, Some(new), old, unchanged));
                }
            }
            Message::Delete { relation, old } => {
                if let Some(r) = self.relation(relation, &mut events) {
                    let (old, _) = row(&old.values, r, old.key_only);
                    events.push(event("DELETE", r, lsn, xid, None, Some(old), Vec::new()));
                }
            }
            Message::Truncate { relations, .. } => {
                for relation in relations {
                    if let Some(r) = self.relation(relation, &mut events) {
                        events.push(event("TRUNCATE", r, lsn, xid, None, None, Vec::new()));
                    }
                }
            }
            Message::Origin { .. } | Message::Type { .. } | Message::Unknown(_) => {}
        }
        match &mut self.pending {
            Some(pending) => pending.extend(events),
            None => out.extend(events),
        }
        Ok(())
    }

    /// The relation a change is about; an error event if it was never described.
    fn relation(&self, oid: u32, events: &mut Vec<Observation>) -> Option<&Relation> {
        let r = self.relations.get(&oid);
        if r.is_none() {
            events.push(Observation::error(
                KIND,
                format!("a change to relation {oid}, which the server never described"),
            ));
        }
        r
    }
}

/// A tuple's columns by name (`$N` past the relation's columns), and the names of
/// the unchanged TOASTed ones, which the server does not send. A `K` old tuple
/// keeps only the replica identity's columns (the server sends the others as NULL).
fn row(values: &[Datum], relation: &Relation, key_only: bool) -> (Map<String, Value>, Vec<Value>) {
    let mut map = Map::new();
    let mut unchanged = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let column = relation.columns.get(i);
        if key_only && !column.is_some_and(|c| c.key) {
            continue;
        }
        let name = column.map_or_else(|| format!("${}", i + 1), |c| c.name.clone());
        match value(column.map_or(0, |c| c.type_oid), v) {
            Some(v) => {
                map.insert(name, v);
            }
            None => unchanged.push(Value::String(name)),
        }
    }
    (map, unchanged)
}

/// The relation's schema: pgoutput sends `pg_catalog` as empty.
fn schema(r: &Relation) -> &str {
    if r.namespace.is_empty() {
        "pg_catalog"
    } else {
        &r.namespace
    }
}

fn event(
    op: &'static str,
    r: &Relation,
    lsn: &str,
    xid: &str,
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
    unchanged: Vec<Value>,
) -> Observation {
    let mut data = Map::new();
    data.insert("op".into(), op.into());
    data.insert("table".into(), r.name.clone().into());
    data.insert("schema".into(), schema(r).into());
    if let Some(new) = new {
        data.insert("row".into(), Value::Object(new));
    }
    if let Some(old) = old {
        data.insert("old".into(), Value::Object(old));
    }
    if !unchanged.is_empty() {
        data.insert("unchanged".into(), Value::Array(unchanged));
    }
    let fields = [
        ("op", op.to_string()),
        ("table", r.name.clone()),
        ("schema", schema(r).to_string()),
        ("lsn", lsn.to_string()),
        ("xid", xid.to_string()),
        ("data", Value::Object(data).to_string()),
    ];
    Observation {
        kind: KIND,
        detail: Some(op.to_ascii_lowercase()),
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

// Type OIDs (pg_type.h) whose text output has a JSON counterpart.
const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;

/// A column's value as JSON by its type; `None` for an unchanged TOASTed value,
/// which the server does not send.
fn value(type_oid: u32, datum: &Datum) -> Option<Value> {
    let text = match datum {
        Datum::Null => return Some(Value::Null),
        Datum::UnchangedToast => return None,
        Datum::Text(t) => String::from_utf8_lossy(t),
        Datum::Binary(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            return Some(Value::String(format!("\\x{hex}")));
        }
    };
    let as_text = || Value::String(text.to_string());
    Some(match type_oid {
        BOOL => match &*text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => as_text(),
        },
        INT2 | INT4 | INT8 => text.parse::<i64>().map_or_else(|_| as_text(), Value::from),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .map_or_else(|_| as_text(), decimal::float),
        NUMERIC => decimal::decimal(&text),
        JSON | JSONB => serde_json::from_str(&text).unwrap_or_else(|_| as_text()),
        _ => as_text(),
    })
}
