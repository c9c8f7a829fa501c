//! Links to remote executors: dial, check each other's fleet certificate, agree on
//! the protocol version, ship the bundle (only what the executor lacks), then relay:
//! the executor's free slots become Pulls to the Coordinator, Runs go out as frames,
//! results come back as Done, and a link that breaks becomes Lost, so its unfinished
//! jobs run elsewhere.

use std::net::SocketAddr;
use std::time::Duration;

use faultbox_executor::fleet::bundle::{Bundle, Contents};
use faultbox_executor::fleet::identity::{Identity, EXECUTOR_SAN};
use faultbox_executor::fleet::job::{CoordinatorMsg, ExecutorMsg};
use faultbox_executor::fleet::wire::{self, Frame, WireError, PROTOCOL_VERSION};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// How long dialing and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The coordinator's names for the spec files an executor's reports mention.
/// Executors load the bundle from a directory of their own (`.../bundles/HASH/`), so
/// a fault's `file:line` or a failure's reason names a file there; a diagnostic that
/// says which line to change must name the file the user has.
#[derive(Clone, Debug)]
pub struct Names {
    /// `/HASH/`: what every path inside an executor's copy of the bundle contains.
    marker: String,
    /// What the coordinator puts in front of a path inside the bundle: the spec as
    /// given, without the spec's path inside the bundle (`specs/` for
    /// `specs/x.star`). `None` when the two do not line up: paths stay as reported.
    local: Option<String>,
}

impl Names {
    /// `spec` is the spec as given on the command line.
    pub fn new(bundle: &Bundle, spec: &std::path::Path) -> Names {
        let spec = spec.to_string_lossy();
        let local = spec
            .strip_suffix(bundle.spec.as_str())
            .filter(|prefix| prefix.is_empty() || prefix.ends_with('/'))
            .map(str::to_string);
        Names {
            marker: format!("/{}/", bundle.hash),
            local,
        }
    }

    /// `path` as the coordinator names it, if it is inside the executor's bundle.
    fn local(&self, path: &str) -> Option<String> {
        let local = self.local.as_ref()?;
        let at = path.find(&self.marker)?;
        Some(format!("{local}{}", &path[at + self.marker.len()..]))
    }

    /// Renames the spec files `report` mentions: the faults' places, and the place a
    /// failure's reason starts with.
    pub fn localize(&self, report: &mut faultbox_executor::world::run::TestReport) {
        for f in &mut report.faults {
            if let Some(at) = f.declared_at.as_mut() {
                if let Some(local) = self.local(&at.file) {
                    at.file = local;
                }
            }
        }
        if let faultbox_spec::Verdict::Fail { reason, .. } = &mut report.verdict {
            // `FILE:LINE: message`: only a leading path is renamed.
            let path_end = reason.find(": ").unwrap_or(0);
            if !reason[..path_end].contains(char::is_whitespace) {
                if let Some(local) = self.local(&reason[..path_end]) {
                    reason.replace_range(..path_end, &local);
                }
            }
        }
    }
}

/// An executor that accepted the bundle and is ready for jobs.
pub struct Link {
    pub addr: SocketAddr,
    pub name: String,
    pub slots: u32,
    /// Files shipped to it (those it lacked).
    pub shipped: usize,
    conn: quinn::Connection,
    tx: quinn::SendStream,
    rx: quinn::RecvStream,
}

/// Dials `addr` and prepares it to run `bundle`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    bundle: &Bundle,
    contents: &Contents,
) -> Result<Link, String> {
    let client = identity.client_config().map_err(|e| e.to_string())?;
    let fail = |what: String| format!("executor {addr}: {what}");
    let handshake = async {
        let conn = endpoint
            .connect_with(client, addr, EXECUTOR_SAN)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("TLS/QUIC handshake failed: {e}"))?;
        let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            name: "coordinator".into(),
            slots: 0,
        };
        wire::send(&mut tx, &hello)
            .await
            .map_err(|e| e.to_string())?;
        // The executor may refuse our certificate only after the handshake seemed to
        // succeed: its first answer is what proves the link.
        let answer = wire::recv(&mut rx).await.map_err(|e| match e {
            WireError::Closed | WireError::Read(_) => match conn.close_reason() {
                Some(reason) => format!("refused the link: {reason}"),
                None => format!("refused the link: {e}"),
            },
            e => e.to_string(),
        })?;
        let (name, slots) = match answer {
            Frame::Hello {
                version,
                name,
                slots,
            } => {
                wire::check_version(version)?;
                (name, slots)
            }
            Frame::Refused { reason } => return Err(format!("refused the link: {reason}")),
            other => return Err(format!("answered {} to Hello", other.kind())),
        };
        Ok::<_, String>((conn, tx, rx, name, slots))
    };
    let (conn, mut tx, mut rx, name, slots) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            fail(format!(
                "unreachable (no answer within {CONNECT_TIMEOUT:?})"
            ))
        })?
        .map_err(fail)?;
    // The bundle: offer the listing, send what is missing.
    wire::send(&mut tx, &Frame::Offer(bundle.clone()))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let need = match wire::recv(&mut rx).await.map_err(|e| fail(e.to_string()))? {
        Frame::Need { hashes } => hashes,
        Frame::Error { message } => return Err(fail(message)),
        other => return Err(fail(format!("answered {} to the bundle", other.kind()))),
    };
    // What was hashed when the bundle was made, whatever the file holds now.
    for hash in &need {
        let bytes = contents
            .get(hash)
            .ok_or_else(|| fail(format!("asked for {hash}, which is not in the bundle")))?;
        wire::send(
            &mut tx,
            &Frame::Blob {
                hash: hash.clone(),
                bytes: bytes.to_vec(),
            },
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    }
    match wire::recv(&mut rx).await.map_err(|e| fail(e.to_string()))? {
        Frame::Ready => {}
        Frame::Error { message } => return Err(fail(message)),
        other => {
            return Err(fail(format!(
                "answered {} to the bundle's files",
                other.kind()
            )))
        }
    }
    tracing::info!(%addr, executor = %name, slots, shipped = need.len(), "executor linked");
    Ok(Link {
        addr,
        name,
        slots,
        shipped: need.len(),
        conn,
        tx,
        rx,
    })
}

impl Link {
    /// Starts relaying between the link and `coordinator`; the receiver fires when the
    /// link ends.
    pub async fn relay(
        self,
        coordinator: ActorRef<CoordinatorMsg>,
        names: std::sync::Arc<Names>,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, String> {
        let Link {
            addr,
            name,
            conn,
            mut tx,
            mut rx,
            ..
        } = self;
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let writer_conn = conn.clone();
        tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                if wire::send(&mut tx, &f).await.is_err() {
                    break;
                }
            }
            let _ = tx.finish();
            // The coordinator is done with this executor.
            writer_conn.close(0u32.into(), b"done");
        });
        let (proxy, _) = Actor::spawn(None, RemoteExecutor, out_tx)
            .await
            .map_err(|e| e.to_string())?;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let ended = loop {
                match wire::recv(&mut rx).await {
                    Ok(Frame::Pull) => {
                        let pull = CoordinatorMsg::Pull {
                            executor: name.clone(),
                            reply: proxy.clone(),
                        };
                        if coordinator.cast(pull).is_err() {
                            break None;
                        }
                    }
                    Ok(Frame::Events { job, events }) => {
                        let events = match events.decode() {
                            Ok(e) => e,
                            Err(e) => break Some(e.to_string()),
                        };
                        let events = CoordinatorMsg::Events {
                            executor: name.clone(),
                            job,
                            events,
                            reply: proxy.clone(),
                        };
                        if coordinator.cast(events).is_err() {
                            break None;
                        }
                    }
                    Ok(Frame::Done {
                        job,
                        mut report,
                        streamed,
                    }) => {
                        names.localize(&mut report);
                        let done = CoordinatorMsg::Done {
                            executor: name.clone(),
                            job,
                            report,
                            streamed,
                        };
                        if coordinator.cast(done).is_err() {
                            break None;
                        }
                    }
                    Ok(other) => break Some(format!("unexpected frame {}", other.kind())),
                    Err(e) => break Some(e.to_string()),
                }
            };
            if let Some(why) = ended {
                // Only news while the run goes on; at its end the links are closed.
                if coordinator
                    .cast(CoordinatorMsg::Lost {
                        executor: name.clone(),
                    })
                    .is_ok()
                {
                    tracing::warn!(%addr, executor = %name, "link lost: {why}");
                }
            }
            proxy.stop(None);
            let _ = ended_tx.send(());
        });
        Ok(ended_rx)
    }
}

/// Stands for a remote executor on the coordinator's side.
struct RemoteExecutor;

impl Actor for RemoteExecutor {
    type Msg = ExecutorMsg;
    type State = mpsc::Sender<Frame>;
    type Arguments = mpsc::Sender<Frame>;

    async fn pre_start(
        &self,
        _myself: ActorRef<ExecutorMsg>,
        out: mpsc::Sender<Frame>,
    ) -> Result<mpsc::Sender<Frame>, ActorProcessingErr> {
        Ok(out)
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecutorMsg>,
        message: ExecutorMsg,
        out: &mut mpsc::Sender<Frame>,
    ) -> Result<(), ActorProcessingErr> {
        let frame = match message {
            ExecutorMsg::Run(job) => Frame::Run(job),
            ExecutorMsg::Cancel(job) => Frame::Cancel { job },
            ExecutorMsg::Ack(job) => Frame::Ack { job },
            ExecutorMsg::Finished { .. } => return Ok(()),
        };
        if out.send(frame).await.is_err() {
            myself.stop(None);
        }
        Ok(())
    }
}

/// Parses `--executors`: `ADDR[,ADDR...]` or `@FILE` with one address a line
/// (blank lines and `#` comments skipped). Duplicates are refused.
pub fn parse_executors(arg: &str) -> Result<Vec<SocketAddr>, String> {
    let text;
    let (items, from): (Vec<&str>, String) = match arg.strip_prefix('@') {
        Some(file) => {
            text =
                std::fs::read_to_string(file).map_err(|e| format!("--executors @{file}: {e}"))?;
            (
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect(),
                format!("@{file}"),
            )
        }
        None => (arg.split(',').map(str::trim).collect(), arg.to_string()),
    };
    if items.is_empty() {
        return Err(format!("--executors {from}: no addresses"));
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for item in items {
        let addr = resolve(item).map_err(|e| format!("--executors: {item:?}: {e}"))?;
        if out.contains(&addr) {
            return Err(format!("--executors: {item} is listed twice"));
        }
        out.push(addr);
    }
    Ok(out)
}

fn resolve(item: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    item.to_socket_addrs()
        .map_err(|e| format!("not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| "resolves to no address".to_string())
}

/// Keeps an executor in the run: relays `link`, and when it breaks, dials `addr`
/// again every second while the run goes on, so a restarted executor rejoins.
pub async fn keep(
    mut link: Link,
    coordinator: ActorRef<CoordinatorMsg>,
    endpoint: quinn::Endpoint,
    identity: std::sync::Arc<Identity>,
    bundle: std::sync::Arc<(Bundle, Contents)>,
    names: std::sync::Arc<Names>,
) {
    let running =
        |c: &ActorRef<CoordinatorMsg>| matches!(c.get_status(), ractor::ActorStatus::Running);
    loop {
        let addr = link.addr;
        let Ok(ended) = link.relay(coordinator.clone(), names.clone()).await else {
            return;
        };
        let _ = ended.await;
        link = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !running(&coordinator) {
                return;
            }
            match connect(&endpoint, &identity, addr, &bundle.0, &bundle.1).await {
                Ok(l) => {
                    tracing::warn!(%addr, executor = %l.name, "executor rejoined");
                    break l;
                }
                Err(e) => tracing::debug!(%addr, "executor not back yet: {e}"),
            }
        };
    }
}
