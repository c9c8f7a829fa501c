//! Kafka: every partition of the topic read from its log start, one event per
//! record, in offset order per partition.
//!
//! One connection does it all, one request at a time: Metadata (the partitions,
//! again every second so added ones are read too), ListOffsets (where a partition
//! starts; its high watermark when a sync comes), and Fetch of all partitions at
//! once, barely waiting on the broker, so a command is looked at between requests
//! and never cuts one short. A fetch that finds nothing rests [`IDLE`] before the
//! next. What was read survives reconnects: a broker that comes back with a shorter
//! log (an in-memory broker restarted) is read again from its start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use faultbox_protocols::client::kafka::Connection;
use faultbox_protocols::kafka::error_name;
use serde_json::{Map, Value};

use super::{ask, Backoff, Commands, Reply, Wake, Worker, SYNC_WAIT};

/// The rest after a fetch that found nothing: how late a record can be emitted
/// when nobody syncs.
const IDLE: Duration = Duration::from_millis(50);
/// The rest while a sync waits for records the broker has not handed out yet.
const SYNC_REST: Duration = Duration::from_millis(10);
/// How often partitions are looked up while the topic does not exist, and once it
/// does (for partitions added later).
const META_MISSING: Duration = Duration::from_millis(200);
const META_KNOWN: Duration = Duration::from_secs(1);
/// How long a fetch may wait on the broker for records: as good as not at all (a
/// command is looked at between requests), but not zero, which tansu answers with
/// no partitions at all.
const FETCH_WAIT: Duration = Duration::from_millis(1);
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// What is kept across reconnects.
struct State {
    /// The next offset to read, per partition of the topic.
    offsets: BTreeMap<i32, i64>,
    /// Syncs waiting for partitions to be read up to their high watermarks.
    syncs: Vec<Pending>,
}

struct Pending {
    /// The high watermark of each partition when the sync came.
    targets: BTreeMap<i32, i64>,
    /// Dropped when the targets are reached, or at `until` (the caller has stopped
    /// waiting by then).
    _reply: Reply,
    until: Instant,
}

/// The source's handle is gone: the loop ends.
struct Exit;

pub(super) async fn run(w: &mut Worker, addr: SocketAddr, cmds: &mut Commands) {
    let mut state = State {
        offsets: BTreeMap::new(),
        syncs: Vec::new(),
    };
    let mut backoff = Backoff::new();
    let mut asked: Vec<Reply> = Vec::new();
    loop {
        let failure = match w.enter() {
            Err(e) => e,
            Ok(()) => match ask(Connection::open(addr)).await {
                Err(e) => e,
                Ok(mut c) => {
                    let asked = std::mem::take(&mut asked);
                    match session(w, &mut c, &mut state, asked, cmds, &mut backoff).await {
                        Ok(Exit) => return,
                        Err(e) => e,
                    }
                }
            },
        };
        w.error(failure);
        // A sync asked while the broker cannot be reached: nothing is observable.
        asked.clear();
        let now = Instant::now();
        state.syncs.retain(|p| p.until > now);
        if !cmds.retry_after(&mut backoff, &mut asked).await {
            return;
        }
    }
}

/// Reads on one connection until it fails (the error) or the handle is gone.
async fn session(
    w: &mut Worker,
    c: &mut Connection,
    s: &mut State,
    mut asked: Vec<Reply>,
    cmds: &mut Commands,
    backoff: &mut Backoff,
) -> Result<Exit, String> {
    let topic = w.topic.clone();
    let mut reconnected = true;
    let mut next_meta = Instant::now();
    loop {
        match cmds.pending() {
            Some(more) => asked.extend(more),
            None => return Ok(Exit),
        }
        if !asked.is_empty() || Instant::now() >= next_meta {
            refresh(w, c, s, reconnected).await?;
            reconnected = false;
            let every = if s.offsets.is_empty() {
                META_MISSING
            } else {
                META_KNOWN
            };
            next_meta = Instant::now() + every;
        }
        if !asked.is_empty() {
            let mut targets = BTreeMap::new();
            for &p in s.offsets.keys() {
                targets.insert(p, ask(c.high_watermark(&topic, p)).await?);
            }
            let until = Instant::now() + SYNC_WAIT;
            s.syncs.extend(asked.drain(..).map(|reply| Pending {
                targets: targets.clone(),
                _reply: reply,
                until,
            }));
        }
        let round = if s.offsets.is_empty() {
            Round::default()
        } else {
            fetch(w, c, s).await?
        };
        if round.stale {
            next_meta = Instant::now();
        }
        w.healthy();
        backoff.reset();
        let now = Instant::now();
        let offsets = &s.offsets;
        s.syncs.retain(|p| {
            p.until > now
                && p.targets
                    .iter()
                    .any(|(part, t)| offsets.get(part).is_some_and(|o| o < t))
        });
        if round.records == 0 {
            let rest = if s.syncs.is_empty() { IDLE } else { SYNC_REST };
            match cmds.pause(rest).await {
                Wake::Time => {}
                Wake::Sync(r) => asked.push(r),
                Wake::Exit => return Ok(Exit),
            }
        }
    }
}

/// Looks the topic's partitions up: new ones are read from their log start, gone
/// ones forgotten. Just after a reconnect, a partition whose log now ends before
/// what was read (the broker lost it) is read again from its start.
async fn refresh(
    w: &mut Worker,
    c: &mut Connection,
    s: &mut State,
    reconnected: bool,
) -> Result<(), String> {
    let topic = w.topic.clone();
    let Some(parts) = ask(c.partitions(&topic)).await? else {
        // Not there (yet, or any more): a topic made again is read from its start.
        s.offsets.clear();
        return Ok(());
    };
    s.offsets.retain(|p, _| parts.contains(p));
    for p in parts {
        match s.offsets.get(&p).copied() {
            None => {
                let start = ask(c.log_start(&topic, p)).await?;
                s.offsets.insert(p, start);
            }
            Some(at) if reconnected && at > 0 => {
                let end = ask(c.high_watermark(&topic, p)).await?;
                if end < at {
                    let start = ask(c.log_start(&topic, p)).await?;
                    w.error(format!(
                        "{topic}/{p} now ends at offset {end}, before offset {at} already \
                         read: reading it again from {start}"
                    ));
                    s.offsets.insert(p, start);
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// What one fetch round did.
#[derive(Default)]
struct Round {
    /// Records emitted.
    records: usize,
    /// The broker no longer knows a partition: look the topic up again.
    stale: bool,
}

/// One Fetch of every partition from where it was left; emits what came.
async fn fetch(w: &mut Worker, c: &mut Connection, s: &mut State) -> Result<Round, String> {
    let topic = w.topic.clone();
    let from: Vec<(i32, i64)> = s.offsets.iter().map(|(&p, &o)| (p, o)).collect();
    let fetched = ask(c.fetch_records(&topic, &from, FETCH_WAIT)).await?;
    let mut round = Round::default();
    for f in fetched {
        let p = f.partition;
        let at = s.offsets.get(&p).copied().unwrap_or_default();
        match f.error_code {
            0 => {}
            OFFSET_OUT_OF_RANGE => {
                let start = ask(c.log_start(&topic, p)).await?;
                w.error(format!(
                    "offset {at} of {topic}/{p} is out of range: reading from {start}"
                ));
                s.offsets.insert(p, start);
                continue;
            }
            UNKNOWN_TOPIC_OR_PARTITION => {
                round.stale = true;
                continue;
            }
            code => {
                let name = error_name(code).unwrap_or_else(|| "UNKNOWN".into());
                return Err(format!(
                    "{name} ({code}) fetching {topic}/{p} at offset {at}"
                ));
            }
        }
        for skipped in &f.skipped {
            w.error(format!(
                "records {}..={} of {topic}/{p} do not decode, skipped: {}",
                skipped.first, skipped.last, skipped.reason
            ));
        }
        for r in &f.records {
            let key = r
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            let fields = BTreeMap::from([
                ("topic".to_string(), topic.clone()),
                ("partition".to_string(), p.to_string()),
                ("offset".to_string(), r.offset.to_string()),
                ("key".to_string(), key.clone().unwrap_or_default()),
                ("timestamp".to_string(), r.timestamp.to_string()),
            ]);
            let ours = Map::from_iter([
                ("topic".to_string(), Value::from(topic.as_str())),
                ("partition".to_string(), Value::from(p)),
                ("offset".to_string(), Value::from(r.offset)),
                ("key".to_string(), key.map_or(Value::Null, Value::String)),
            ]);
            w.emit(&topic, r.value.as_deref(), fields, ours);
            round.records += 1;
        }
        s.offsets.insert(p, f.next_offset.max(at));
    }
    Ok(round)
}
