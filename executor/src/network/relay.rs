//! Relays: the only path from one party of a test to another. Each edge (a consumer
//! and one interface of a service) listens in the consumer's namespace and, for every
//! connection it accepts, dials the service inside the service's own namespace and
//! pumps bytes both ways at once. A relay never answers for a service that is not
//! there: when the dial fails, the consumer's connection is reset.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::namespace::NetNs;
use super::plan::Edge;

/// How long a relay waits for a service to accept before it resets the consumer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relay reports: a connection opened or closed on an edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Open {
        consumer: String,
        service: String,
        interface: String,
        connection: u64,
    },
    Close {
        consumer: String,
        service: String,
        interface: String,
        connection: u64,
        /// Bytes from the consumer to the service, and back.
        sent: u64,
        received: u64,
        /// Why it ended, when not a clean close by either side.
        error: Option<String>,
    },
}

/// Where reports go (the test's event log).
pub type Reporter = Arc<dyn Fn(Report) + Send + Sync>;

/// A running edge.
struct Running {
    edge: Edge,
    listeners: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<HashMap<u64, JoinHandle<()>>>>,
}

/// Who waits for a consumer's first bytes to reach the service, by the consumer's
/// address (its end of the connection to the relay).
type Waiters = Arc<Mutex<HashMap<SocketAddr, oneshot::Sender<()>>>>;

/// The relays of one test.
pub struct Relays {
    rt: tokio::runtime::Handle,
    report: Reporter,
    edges: Mutex<Vec<Running>>,
    next: Arc<AtomicU64>,
    waiters: Waiters,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("listening for {consumer} at {addr} (the relay to {service}'s {interface}): {source}")]
    Listen {
        consumer: String,
        service: String,
        interface: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Relays {
    pub fn new(rt: tokio::runtime::Handle, report: Reporter) -> Relays {
        Relays {
            rt,
            report,
            edges: Mutex::new(Vec::new()),
            next: Arc::new(AtomicU64::new(1)),
            waiters: Waiters::default(),
        }
    }

    /// Fires once the first bytes the consumer at `client` sends have been written to
    /// the service: the request is then where it would be without a relay. Register
    /// before sending.
    pub fn forwarded(&self, client: SocketAddr) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client, tx);
        rx
    }

    /// Opens `edge`: listeners in `consumer_ns`, dialing `upstream` (the service's
    /// namespace) at `localhost` on the interface's port.
    pub fn open(
        &self,
        edge: Edge,
        consumer_ns: &NetNs,
        upstream: Arc<NetNs>,
    ) -> Result<(), RelayError> {
        let connections: Arc<Mutex<HashMap<u64, JoinHandle<()>>>> = Arc::default();
        let mut listeners = Vec::new();
        let failed = |addr: SocketAddr, source| RelayError::Listen {
            consumer: edge.consumer.clone(),
            service: edge.service.clone(),
            interface: edge.port.interface.clone(),
            addr,
            source,
        };
        let made = consumer_ns
            .listen(&edge.listen)
            .map_err(|e| failed(edge.listen[0], e))?;
        for (addr, made) in edge.listen.iter().zip(made) {
            let listener = made
                .and_then(|l| {
                    let _guard = self.rt.enter();
                    tokio::net::TcpListener::from_std(l)
                })
                .map_err(|e| failed(*addr, e))?;
            let accept = Accept {
                edge: edge.clone(),
                upstream: upstream.clone(),
                report: self.report.clone(),
                next: self.next.clone(),
                connections: connections.clone(),
                waiters: self.waiters.clone(),
                rt: self.rt.clone(),
            };
            listeners.push(self.rt.spawn(accept.run(listener)));
        }
        self.lock().push(Running {
            edge,
            listeners,
            connections,
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every open connection between `a` and `b`, both ways (a partition
    /// cuts what is open; its connect faults refuse what is tried next).
    pub fn cut(&self, a: &str, b: &str) {
        for r in self.lock().iter() {
            let e = &r.edge;
            if (e.consumer == a && e.service == b) || (e.consumer == b && e.service == a) {
                for (_, c) in r
                    .connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain()
                {
                    c.abort();
                }
            }
        }
    }

    /// Stops every relay and closes every connection.
    pub fn stop(&self) {
        for r in self.lock().drain(..) {
            for l in r.listeners {
                l.abort();
            }
            for (_, c) in r
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
            {
                c.abort();
            }
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One edge's accept loop.
struct Accept {
    edge: Edge,
    upstream: Arc<NetNs>,
    report: Reporter,
    next: Arc<AtomicU64>,
    connections: Arc<Mutex<HashMap<u64, JoinHandle<()>>>>,
    waiters: Waiters,
    rt: tokio::runtime::Handle,
}

impl Accept {
    async fn run(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((client, peer)) = listener.accept().await else {
                continue;
            };
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let conn = Connection {
                edge: self.edge.clone(),
                upstream: self.upstream.clone(),
                report: self.report.clone(),
                id,
                peer,
                waiters: self.waiters.clone(),
            };
            let connections = self.connections.clone();
            // Registered before it can finish, so it is never left in the table.
            let mut open = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            let task = self.rt.spawn(async move {
                conn.run(client).await;
                connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
            open.insert(id, task);
        }
    }
}

/// One accepted connection.
struct Connection {
    edge: Edge,
    upstream: Arc<NetNs>,
    report: Reporter,
    id: u64,
    /// The consumer's end.
    peer: SocketAddr,
    waiters: Waiters,
}

impl Connection {
    async fn run(self, client: tokio::net::TcpStream) {
        self.relay(client).await;
        // Whoever waited for bytes that never went through learns it now.
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.peer);
    }

    async fn relay(&self, client: tokio::net::TcpStream) {
        let e = &self.edge;
        (self.report)(Report::Open {
            consumer: e.consumer.clone(),
            service: e.service.clone(),
            interface: e.port.interface.clone(),
            connection: self.id,
        });
        let close = |sent, received, error| Report::Close {
            consumer: e.consumer.clone(),
            service: e.service.clone(),
            interface: e.port.interface.clone(),
            connection: self.id,
            sent,
            received,
            error,
        };
        let server = match self.dial().await {
            Ok(s) => s,
            Err(err) => {
                // As if the service refused: the consumer sees a reset.
                let _ = client.set_zero_linger();
                drop(client);
                (self.report)(close(0, 0, Some(err.to_string())));
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        let first = {
            let waiters = self.waiters.clone();
            let peer = self.peer;
            move || {
                if let Some(tx) = waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&peer)
                {
                    let _ = tx.send(());
                }
            }
        };
        let outcome = tokio::try_join!(
            pump(client_r, server_w, Some(first)),
            pump(server_r, client_w, None::<fn()>)
        );
        (self.report)(match outcome {
            Ok((sent, received)) => close(sent, received, None),
            Err(err) => close(0, 0, Some(err.to_string())),
        });
    }

    /// Dials the service in its namespace: IPv4 loopback, then IPv6 for a service
    /// that listens there only.
    async fn dial(&self) -> std::io::Result<tokio::net::TcpStream> {
        let port = self.edge.port.port;
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        match self.upstream.connect(v4, DIAL_TIMEOUT).await {
            Ok(s) => Ok(s),
            Err(first) if first.kind() == std::io::ErrorKind::ConnectionRefused => {
                let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                self.upstream
                    .connect(v6, DIAL_TIMEOUT)
                    .await
                    .map_err(|_| first)
            }
            Err(e) => Err(e),
        }
    }
}

/// Copies one direction until end of file, then half-closes the other side, as the
/// peer did. `first` runs once the first bytes are written. Returns the bytes copied.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut first: Option<impl FnOnce()>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        if let Some(f) = first.take() {
            f();
        }
    }
}
