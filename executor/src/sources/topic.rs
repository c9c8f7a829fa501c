//! `topic(broker=, topic=, group=)`: the messages of a Kafka topic or a NATS subject
//! as events of the observed service (`topic.NAME`), read straight from the broker
//! in the service's own network namespace, never through the test's relays.
//!
//! One thread per source runs a single-threaded tokio runtime, so every socket it
//! opens is made by a thread that entered the namespace (it enters again before each
//! reconnect: a container's namespace may be adopted after the source started).
//! The protocol loops live in `topic/kafka.rs` and `topic/nats.rs`; what they share
//! (commands, error reporting, backoff, how a message becomes an [`Observation`]) is
//! here. See `docs/sources/topic.md` for what a spec writer sees.

mod kafka;
mod nats;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use faultbox_protocols::client::ClientError;
use faultbox_spec::decode::Decoder;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::{decoded_fields, Context, Observation, Running};

/// The event type of everything this source emits.
const KIND: &str = "topic";
/// How long `sync` waits at most: the contract's bound.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// A request (or connect) the broker does not answer within this is a failure, so a
/// broker that hangs is reconnected to rather than waited on forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between reconnects.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Starts observing `topic` (a Kafka topic, or a NATS subject, wildcards allowed)
/// on the broker at `127.0.0.1:port` in the service's namespace. `protocol` is
/// `kafka` or `nats`. `group` is a NATS queue group (empty: none); Kafka reads every
/// partition from its start whatever the group and commits nothing for it.
///
/// Never fails and never blocks: what goes wrong is a `topic.error` event.
pub fn start(
    ctx: Context,
    protocol: &str,
    port: u16,
    topic: &str,
    group: &str,
    decoder: Option<Decoder>,
) -> Box<dyn Running> {
    let proto = match protocol {
        "kafka" => Protocol::Kafka,
        "nats" => Protocol::Nats {
            queue: (!group.is_empty()).then(|| group.to_string()),
        },
        other => {
            let mut w = Worker::new(ctx, protocol, topic, decoder);
            w.error(format!(
                "topic() reads kafka or nats, not {other:?}: nothing is observed"
            ));
            return Box::new(Inert);
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut w = Worker::new(ctx.clone(), protocol, topic, decoder);
    // A thread's name is at most 15 bytes: enough to tell sources apart in `ps`.
    let name: String = format!("topic {}", w.ctx.service)
        .chars()
        .take(15)
        .collect();
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return w.error(format!("starting the source's runtime: {e}")),
        };
        let mut cmds = Commands(cmd_rx);
        rt.block_on(async {
            let work = async {
                match proto {
                    Protocol::Kafka => kafka::run(&mut w, addr, &mut cmds).await,
                    Protocol::Nats { queue } => {
                        nats::run(&mut w, addr, queue.as_deref(), &mut cmds).await
                    }
                }
            };
            // Stop (or the handle dropped without stop) drops the work where it
            // waits: its connection closes with it.
            tokio::select! {
                () = work => {}
                _ = stop_rx => {}
            }
        });
    });
    match thread {
        Ok(thread) => Box::new(Source {
            cmds: cmd_tx,
            stop: stop_tx,
            thread,
        }),
        Err(e) => {
            // The worker went with the closure that could not run: report anew.
            Worker::new(ctx, protocol, topic, None).error(format!("starting a thread: {e}"));
            Box::new(Inert)
        }
    }
}

enum Protocol {
    Kafka,
    Nats { queue: Option<String> },
}

/// A request to the source's thread. A `Sync`'s sender is dropped (or used) once
/// everything observable when it was sent has been emitted.
enum Cmd {
    Sync(Reply),
}

/// Dropped to answer a sync.
type Reply = std::sync::mpsc::Sender<()>;

/// The thread's end of the command channel.
struct Commands(mpsc::UnboundedReceiver<Cmd>);

/// What a wait in a protocol loop was ended by.
enum Wake {
    /// The wait ran out.
    Time,
    Sync(Reply),
    /// The source's handle is gone: stop.
    Exit,
}

impl Commands {
    /// Waits `d`, or less if a command comes.
    async fn pause(&mut self, d: Duration) -> Wake {
        tokio::select! {
            () = tokio::time::sleep(d) => Wake::Time,
            cmd = self.0.recv() => match cmd {
                Some(Cmd::Sync(r)) => Wake::Sync(r),
                None => Wake::Exit,
            },
        }
    }

    /// The pause before a reconnect. A sync that comes meanwhile ends it (the broker
    /// is tried again at once for it) and joins `asked`. False once the handle is
    /// gone.
    async fn retry_after(&mut self, backoff: &mut Backoff, asked: &mut Vec<Reply>) -> bool {
        match self.pause(backoff.next()).await {
            Wake::Time => true,
            Wake::Sync(r) => {
                asked.push(r);
                true
            }
            Wake::Exit => false,
        }
    }

    /// Commands already waiting, without waiting for more; `None` once the handle
    /// is gone.
    fn pending(&mut self) -> Option<Vec<Reply>> {
        let mut out = Vec::new();
        loop {
            match self.0.try_recv() {
                Ok(Cmd::Sync(r)) => out.push(r),
                Err(mpsc::error::TryRecvError::Empty) => return Some(out),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
    }
}

/// The handle a started source is.
struct Source {
    cmds: mpsc::UnboundedSender<Cmd>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Running for Source {
    fn sync(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.cmds.send(Cmd::Sync(tx)).is_ok() {
            // Ok or disconnected: answered either way; a timeout is the bound.
            let _ = rx.recv_timeout(SYNC_WAIT);
        }
    }

    fn stop(self: Box<Self>) {
        self.sync();
        let Source { cmds, stop, thread } = *self;
        let _ = stop.send(());
        drop(cmds);
        // The thread ends as soon as its runtime is polled again: every wait in it
        // is a tokio one.
        let _ = thread.join();
    }
}

/// A source that could not start: it has reported why, and has nothing to do.
struct Inert;

impl Running for Inert {
    fn sync(&self) {}
    fn stop(self: Box<Self>) {}
}

/// What a protocol loop needs: where events go and how errors are reported.
struct Worker {
    ctx: Context,
    protocol: &'static str,
    topic: String,
    decoder: Option<Decoder>,
    /// The last error reported, so a failure repeating on every retry is one event.
    last_error: Option<String>,
}

impl Worker {
    fn new(ctx: Context, protocol: &str, topic: &str, decoder: Option<Decoder>) -> Worker {
        Worker {
            ctx,
            protocol: match protocol {
                "kafka" => "kafka",
                "nats" => "nats",
                _ => "unknown",
            },
            topic: topic.to_string(),
            decoder,
            last_error: None,
        }
    }

    /// Reports `message` as a `topic.error` event, unless it is the failure reported
    /// last.
    fn error(&mut self, message: String) {
        if self.last_error.as_ref() == Some(&message) {
            return;
        }
        let mut o = Observation::error(KIND, message.clone());
        o.fields.insert("protocol".into(), self.protocol.into());
        o.fields.insert("topic".into(), self.topic.clone());
        self.ctx.sink.emit(o);
        self.last_error = Some(message);
    }

    /// The source works again: the next failure is news, even a known one.
    fn healthy(&mut self) {
        self.last_error = None;
    }

    /// Moves this thread into the service's namespace.
    fn enter(&self) -> Result<(), String> {
        self.ctx
            .netns
            .enter()
            .map_err(|e| format!("entering {}'s network namespace: {e}", self.ctx.service))
    }

    /// Emits one message: `fields` are the source's raw ones, `ours` the keys added
    /// to `data` over whatever the decoder produced.
    fn emit(
        &self,
        detail: &str,
        payload: Option<&[u8]>,
        mut fields: BTreeMap<String, String>,
        ours: Map<String, Value>,
    ) {
        let raw = payload.unwrap_or_default();
        let mut all = match (payload, &self.decoder) {
            // A record without a value (a Kafka tombstone) has nothing to decode.
            (None, _) => BTreeMap::from([("line".to_string(), String::new())]),
            (Some(p), d) => decoded_fields(p, d.as_ref()),
        };
        let mut data = match (payload, &self.decoder) {
            (Some(_), Some(_)) => all
                .get("data")
                .and_then(|d| serde_json::from_str::<Map<String, Value>>(d).ok())
                .unwrap_or_default(),
            (Some(_), None) => Map::from_iter([(
                "value".to_string(),
                Value::String(String::from_utf8_lossy(raw).into_owned()),
            )]),
            (None, _) => Map::from_iter([("value".to_string(), Value::Null)]),
        };
        data.extend(ours);
        // What the source sees is what reached the topic: a record produced (the
        // reference's integrity examples tell produced from consumed by `action`).
        data.insert("action".into(), Value::from(ACTION));
        all.insert("action".into(), ACTION.into());
        all.insert("data".into(), Value::Object(data).to_string());
        all.insert("value".into(), String::from_utf8_lossy(raw).into_owned());
        all.insert("protocol".into(), self.protocol.into());
        all.append(&mut fields);
        self.ctx.sink.emit(Observation {
            kind: KIND,
            detail: Some(detail.to_string()),
            fields: all,
        });
    }
}

/// The `action` of every topic event: the record was produced to the topic.
const ACTION: &str = "produce";

/// Pauses between reconnects: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// `work` within [`REQUEST_TIMEOUT`], its error as the text an event carries.
async fn ask<T>(work: impl Future<Output = Result<T, ClientError>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the broker did not answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}
