//! NATS: one subscription to the subject (wildcards allowed, in the queue group if
//! one was given), one event per `MSG`/`HMSG`.
//!
//! NATS keeps nothing for a subscriber that is not there: what is published while
//! the source is disconnected is not seen, and a sync then returns at once. A sync
//! is a `PING` on the subscription's connection: the server sends everything it had
//! for it before the `PONG`. A `PONG` that takes longer than [`REQUEST_TIMEOUT`]
//! (a stopped server) counts as a broken connection.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use faultbox_protocols::client::nats::{Delivery, Message, Subscription};
use faultbox_protocols::client::Credentials;
use serde_json::{Map, Value};

use super::{ask, Backoff, Cmd, Commands, Reply, Worker, REQUEST_TIMEOUT};

/// The source's handle is gone: the loop ends.
struct Exit;

pub(super) async fn run(
    w: &mut Worker,
    addr: SocketAddr,
    queue: Option<&str>,
    cmds: &mut Commands,
) {
    // The source takes no credentials: servers without authentication only.
    let credentials = Credentials::default();
    let mut backoff = Backoff::new();
    let mut asked: Vec<Reply> = Vec::new();
    loop {
        let failure = match w.enter() {
            Err(e) => e,
            Ok(()) => {
                let subject = w.topic.clone();
                let open = Subscription::open(addr, &credentials, &subject, queue);
                match ask(open).await {
                    Err(e) => e,
                    Ok(sub) => {
                        w.healthy();
                        backoff.reset();
                        let asked = std::mem::take(&mut asked);
                        match session(w, sub, asked, cmds).await {
                            Ok(Exit) => return,
                            Err(e) => e,
                        }
                    }
                }
            }
        };
        w.error(failure);
        // Nothing published meanwhile will come: a sync asked now has nothing to
        // wait for.
        asked.clear();
        if !cmds.retry_after(&mut backoff, &mut asked).await {
            return;
        }
    }
}

/// Emits deliveries until the connection fails (the error) or the handle is gone.
async fn session(
    w: &mut Worker,
    mut sub: Subscription,
    asked: Vec<Reply>,
    cmds: &mut Commands,
) -> Result<Exit, String> {
    // Syncs waiting for their PONG, oldest first, with when their PING went out.
    let mut pings: VecDeque<(Instant, Reply)> = VecDeque::new();
    for r in asked {
        ask(sub.ping()).await?;
        pings.push_back((Instant::now(), r));
    }
    loop {
        let overdue = pings.front().map(|(sent, _)| *sent + REQUEST_TIMEOUT);
        tokio::select! {
            cmd = cmds.0.recv() => match cmd {
                Some(Cmd::Sync(r)) => {
                    ask(sub.ping()).await?;
                    pings.push_back((Instant::now(), r));
                }
                None => return Ok(Exit),
            },
            // Cancel-safe: a delivery half read waits in the subscription's buffer.
            d = sub.next() => match d.map_err(|e| e.to_string())? {
                Delivery::Message(m) => emit(w, m),
                Delivery::Pong => {
                    pings.pop_front();
                }
            },
            () = sleep_until(overdue), if overdue.is_some() => {
                return Err(format!(
                    "the server did not answer a PING within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

fn emit(w: &Worker, m: Message) {
    let mut fields = BTreeMap::from([
        ("topic".to_string(), m.subject.clone()),
        ("reply".to_string(), m.reply.unwrap_or_default()),
    ]);
    if !m.headers.is_empty() {
        fields.insert("headers".to_string(), m.headers);
    }
    let ours = Map::from_iter([("topic".to_string(), Value::from(m.subject.as_str()))]);
    w.emit(&m.subject, Some(&m.payload), fields, ours);
}
