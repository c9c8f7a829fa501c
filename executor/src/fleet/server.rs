//! `faultbox executor`: serves jobs to coordinators of its fleet over QUIC. Each link
//! gets the coordinator's bundle (only the contents this host lacks), loads its spec
//! from the work directory, and runs an Executor actor whose free slots pull jobs
//! across the link. A peer without a certificate of the fleet never gets past the
//! TLS handshake; a peer with another protocol version is refused with both named.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::fleet::actor::{Executor, ExecutorArgs};
use crate::fleet::batch::EventBatch;
use crate::fleet::bundle::Store;
use crate::fleet::identity::{Identity, IdentityError, Role};
use crate::fleet::job::{CoordinatorMsg, ExecutorMsg};
use crate::fleet::wire::{self, Frame, WireError, PROTOCOL_VERSION};

/// Frames waiting to go out on one link; a full queue holds the slots back.
const OUTBOX: usize = 64;

pub struct ServeConfig {
    pub listen: SocketAddr,
    pub fleet: PathBuf,
    pub name: String,
    pub slots: usize,
    /// Everything the executor writes goes under here: a directory
    /// [`crate::fleet::workdir::claim`] accepted.
    pub work: PathBuf,
    pub shim: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--fleet: {0}")]
    Identity(#[from] IdentityError),
    #[error("--listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--work {path}: {source}")]
    Work {
        path: PathBuf,
        source: crate::fleet::bundle::BundleError,
    },
}

/// Serves until `stop` resolves.
pub async fn serve(
    cfg: ServeConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let identity = Identity::load(&cfg.fleet, &cfg.name, Role::Executor)?;
    let server = identity.server_config()?;
    let store = Arc::new(Store::new(&cfg.work).map_err(|source| ServeError::Work {
        path: cfg.work.clone(),
        source,
    })?);
    let endpoint =
        quinn::Endpoint::server(server, cfg.listen).map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    // A killed executor's containers go when it starts again.
    crate::container::sweep_at_start().await;
    tracing::info!(
        name = %cfg.name,
        listen = %cfg.listen,
        slots = cfg.slots,
        work = %cfg.work.display(),
        "executor ready"
    );
    let cfg = Arc::new(cfg);
    tokio::pin!(stop);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = &mut stop => break,
        };
        let Some(incoming) = incoming else { break };
        let cfg = cfg.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    tracing::info!(%remote, "coordinator connected");
                    if let Err(e) = link(conn, &cfg, &store).await {
                        tracing::warn!(%remote, "link ended: {e}");
                    }
                }
                Err(e) => tracing::warn!(%remote, "refused a connection: {e}"),
            }
        });
    }
    endpoint.close(0u32.into(), b"executor stopping");
    endpoint.wait_idle().await;
    Ok(())
}

/// One coordinator's session: handshake, bundle, then jobs until the link ends.
async fn link(conn: quinn::Connection, cfg: &ServeConfig, store: &Store) -> Result<(), String> {
    let (mut tx, mut rx) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let hello = wire::recv(&mut rx).await.map_err(|e| e.to_string())?;
    let Frame::Hello { version, .. } = hello else {
        return Err(format!("the first frame was {}, not Hello", hello.kind()));
    };
    if let Err(reason) = wire::check_version(version) {
        let refused = Frame::Refused {
            reason: reason.clone(),
        };
        last_frame(&mut tx, &refused).await;
        return Err(reason);
    }
    let ours = Frame::Hello {
        version: PROTOCOL_VERSION,
        name: cfg.name.clone(),
        slots: cfg.slots as u32,
    };
    wire::send(&mut tx, &ours)
        .await
        .map_err(|e| e.to_string())?;
    let loaded = match prepare(&mut tx, &mut rx, cfg, store).await {
        Ok(l) => Arc::new(l),
        Err(message) => {
            let error = Frame::Error {
                message: message.clone(),
            };
            last_frame(&mut tx, &error).await;
            return Err(message);
        }
    };
    wire::send(&mut tx, &Frame::Ready)
        .await
        .map_err(|e| e.to_string())?;

    // Frames to the coordinator go through one writer, in order, with back-pressure.
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wire::send(&mut tx, &f).await.is_err() {
                break;
            }
        }
        let _ = tx.finish();
    });
    let (proxy, proxy_handle) = Actor::spawn(None, LinkProxy, out_tx)
        .await
        .map_err(|e| e.to_string())?;
    let (exec, exec_handle) = Actor::spawn(
        None,
        Executor,
        ExecutorArgs {
            name: cfg.name.clone(),
            slots: cfg.slots,
            loaded,
            shim: cfg.shim.clone(),
            runtime: tokio::runtime::Handle::current(),
            coordinator: proxy.clone(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let ended = loop {
        match wire::recv(&mut rx).await {
            Ok(Frame::Run(job)) => {
                if exec.cast(ExecutorMsg::Run(job)).is_err() {
                    break Err("the executor actor stopped".to_string());
                }
            }
            Ok(Frame::Cancel { job }) => {
                let _ = exec.cast(ExecutorMsg::Cancel(job));
            }
            Ok(Frame::Ack { job }) => {
                let _ = exec.cast(ExecutorMsg::Ack(job));
            }
            Ok(other) => break Err(format!("unexpected frame {}", other.kind())),
            Err(WireError::Closed) => break Ok(()),
            Err(e) => break Err(e.to_string()),
        }
    };
    // Stopping the executor cancels the jobs still running: their results have
    // nowhere to go. They clean up after themselves.
    exec.stop(None);
    let _ = exec_handle.await;
    proxy.stop(None);
    let _ = proxy_handle.await;
    let _ = writer.await;
    ended
}

/// Sends the link's last frame and waits (up to 2 s) until the peer has read it:
/// dropping the connection at once could lose it, and the peer would see only a
/// closed link.
async fn last_frame(tx: &mut quinn::SendStream, frame: &Frame) {
    if wire::send(tx, frame).await.is_ok() && tx.finish().is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tx.stopped()).await;
    }
}

/// Receives the bundle, loads its spec and checks that this host has every
/// service's binary: what a link needs before its first job.
async fn prepare(
    tx: &mut quinn::SendStream,
    rx: &mut quinn::RecvStream,
    cfg: &ServeConfig,
    store: &Store,
) -> Result<faultbox_spec::Loaded, String> {
    let spec = receive_bundle(tx, rx, store).await?;
    let loaded =
        faultbox_spec::load(&spec).map_err(|e| format!("loading the bundle's spec: {e}"))?;
    // Binaries this host must provide (bare names in PATH, absolute paths) are
    // checked now, so a missing one stops the run before its first job.
    check_programs(&loaded, &spec, store, &cfg.name)?;
    Ok(loaded)
}

/// Finds every service's binary on this host; the error names the service, where
/// the spec declares it (relative to the bundle) and this executor.
fn check_programs(
    loaded: &faultbox_spec::Loaded,
    spec: &std::path::Path,
    store: &Store,
    name: &str,
) -> Result<(), String> {
    let root = store.bundle_root(spec);
    for svc in &loaded.spec.services {
        if let Err(e) = crate::sandbox::program::resolve(svc) {
            return Err(format!(
                "service {:?} ({}:{}): {e} on executor {name}",
                svc.name,
                crate::sandbox::program::relative_to(&svc.declared_at.file, &root),
                svc.declared_at.line
            ));
        }
    }
    Ok(())
}

async fn receive_bundle(
    tx: &mut quinn::SendStream,
    rx: &mut quinn::RecvStream,
    store: &Store,
) -> Result<PathBuf, String> {
    let bundle = match wire::recv(rx).await.map_err(|e| e.to_string())? {
        Frame::Offer(bundle) => bundle,
        other => return Err(format!("expected the bundle's offer, got {}", other.kind())),
    };
    let missing = store.missing(&bundle).map_err(|e| e.to_string())?;
    tracing::info!(
        bundle = %bundle.hash,
        files = bundle.files.len(),
        missing = missing.len(),
        "bundle offered"
    );
    wire::send(
        tx,
        &Frame::Need {
            hashes: missing.clone(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    for _ in 0..missing.len() {
        match wire::recv(rx).await.map_err(|e| e.to_string())? {
            Frame::Blob { hash, bytes } if missing.contains(&hash) => {
                store.put(&hash, &bytes).map_err(|e| e.to_string())?;
            }
            other => {
                return Err(format!(
                    "expected a file of the bundle, got {}",
                    other.kind()
                ))
            }
        }
    }
    store.unpack(&bundle).map_err(|e| e.to_string())
}

/// Stands for the coordinator on this side of a link: what the Executor actor tells
/// it goes out as frames.
struct LinkProxy;

impl Actor for LinkProxy {
    type Msg = CoordinatorMsg;
    type State = mpsc::Sender<Frame>;
    type Arguments = mpsc::Sender<Frame>;

    async fn pre_start(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        out: mpsc::Sender<Frame>,
    ) -> Result<mpsc::Sender<Frame>, ActorProcessingErr> {
        Ok(out)
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        message: CoordinatorMsg,
        out: &mut mpsc::Sender<Frame>,
    ) -> Result<(), ActorProcessingErr> {
        let frame = match message {
            CoordinatorMsg::Pull { .. } => Frame::Pull,
            CoordinatorMsg::Events { job, events, .. } => Frame::Events {
                job,
                events: EventBatch::encode(&events),
            },
            CoordinatorMsg::Done {
                job,
                report,
                streamed,
                ..
            } => Frame::Done {
                job,
                report,
                streamed,
            },
            CoordinatorMsg::Lost { .. } | CoordinatorMsg::Interrupt => return Ok(()),
        };
        if out.send(frame).await.is_err() {
            myself.stop(None);
        }
        Ok(())
    }
}
