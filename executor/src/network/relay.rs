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
use super::pump::{self, Fired};
use super::rules::Rules;

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
    /// A rule acted on a request.
    Rule {
        consumer: String,
        service: String,
        interface: String,
        protocol: String,
        connection: u64,
        fired: Fired,
    },
    /// The connection stopped making sense as its protocol: relayed untouched now.
    Opaque {
        consumer: String,
        service: String,
        interface: String,
        protocol: String,
        connection: u64,
        reason: String,
    },
}

/// Where reports go (the test's event log).
pub type Reporter = Arc<dyn Fn(Report) + Send + Sync>;

/// A running edge.
struct Running {
    edge: Edge,
    upstream: Arc<NetNs>,
    listeners: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<HashMap<u64, JoinHandle<()>>>>,
}

/// How far each consumer connection has been forwarded, and who waits for it, by
/// the consumer's address (its end of the connection to the relay).
type Waiters = Arc<Mutex<HashMap<SocketAddr, Progress>>>;

#[derive(Default)]
struct Progress {
    /// Bytes written to the service so far, or accounted for by a rule that holds
    /// them on purpose; `u64::MAX` once the connection is over.
    forwarded: u64,
    /// (bytes, who waits until that many have been forwarded).
    waiting: Vec<(u64, oneshot::Sender<()>)>,
}

/// Records that `total` bytes from `peer` have reached the service, and wakes whoever
/// waited for that many.
fn progressed(waiters: &Waiters, peer: SocketAddr, total: u64) {
    let mut all = waiters.lock().unwrap_or_else(|p| p.into_inner());
    let p = all.entry(peer).or_default();
    p.forwarded = p.forwarded.max(total);
    let total = p.forwarded;
    let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut p.waiting)
        .into_iter()
        .partition(|(n, _)| *n <= total);
    p.waiting = still;
    for (_, tx) in done {
        let _ = tx.send(());
    }
}

/// The relays of one test.
pub struct Relays {
    rt: tokio::runtime::Handle,
    report: Reporter,
    rules: Arc<Rules>,
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
    pub fn new(rt: tokio::runtime::Handle, report: Reporter, rules: Arc<Rules>) -> Relays {
        Relays {
            rt,
            report,
            rules,
            edges: Mutex::new(Vec::new()),
            next: Arc::new(AtomicU64::new(1)),
            waiters: Waiters::default(),
        }
    }

    /// Fires once `bytes` bytes the consumer at `client` sent have been written to the
    /// service (or held there on purpose by a rule): what it sent is then where it would be
    /// without a relay. Fires too once the connection is over.
    pub fn forwarded(&self, client: SocketAddr, bytes: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut all = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let p = all.entry(client).or_default();
        if p.forwarded >= bytes {
            let _ = tx.send(());
        } else {
            p.waiting.push((bytes, tx));
        }
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
                rules: self.rules.clone(),
                next: self.next.clone(),
                connections: connections.clone(),
                waiters: self.waiters.clone(),
                rt: self.rt.clone(),
            };
            listeners.push(self.rt.spawn(accept.run(listener)));
        }
        self.lock().push(Running {
            edge,
            upstream,
            listeners,
            connections,
        });
        Ok(())
    }

    /// Opens again, in `consumer_ns`, every edge `consumer` listens on: a container
    /// consumer's namespace is known only once its container runs. What was open in
    /// the namespace it had before is closed.
    pub fn reopen_consumer(&self, consumer: &str, consumer_ns: &NetNs) -> Result<(), RelayError> {
        let moved: Vec<Running> = {
            let mut all = self.lock();
            let (moved, kept) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|r| r.edge.consumer == consumer);
            *all = kept;
            moved
        };
        for r in moved {
            for l in &r.listeners {
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
            self.open(r.edge, consumer_ns, r.upstream)?;
        }
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
    rules: Arc<Rules>,
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
                rules: self.rules.clone(),
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
    rules: Arc<Rules>,
    id: u64,
    /// The consumer's end.
    peer: SocketAddr,
    waiters: Waiters,
}

impl Connection {
    async fn run(self, client: tokio::net::TcpStream) {
        self.relay(client).await;
        // Whoever waits for bytes that will never go through learns it now, and so
        // does whoever asks later (the entry stays for the test's life).
        progressed(&self.waiters, self.peer, u64::MAX);
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
        // A protocol with no messages to match (tcp) takes its rules per connection:
        // a delay holds the connection before it reaches the service, a drop resets it.
        let protocol = faultbox_protocols::protocol(&e.port.protocol);
        if protocol.is_some_and(|p| p.keys().is_empty()) {
            let edge = (
                e.consumer.as_str(),
                e.service.as_str(),
                e.port.interface.as_str(),
            );
            let rules = self.rules.for_edge(edge.0, edge.1, edge.2);
            let events = ConnectionEvents {
                edge: e.clone(),
                connection: self.id,
                report: self.report.clone(),
            };
            if let Some(rule) = self
                .rules
                .decide(edge, &rules, &faultbox_protocols::Fields::new())
            {
                let mut detail = std::collections::BTreeMap::new();
                let action = match &rule.rule.action {
                    faultbox_spec::world::ProxyAction::Delay(d) => {
                        detail.insert("delay_ms".to_string(), d.as_millis().to_string());
                        "delay"
                    }
                    _ => "drop",
                };
                pump::Events::fired(
                    &events,
                    Fired {
                        action,
                        fields: Default::default(),
                        detail,
                        label: rule.rule.label.clone(),
                        rule: rule.id,
                    },
                );
                match &rule.rule.action {
                    faultbox_spec::world::ProxyAction::Delay(d) => {
                        // The rule decides when this connection goes on: the driver's
                        // parallel() branches need not wait for it.
                        progressed(&self.waiters, self.peer, u64::MAX);
                        crate::engine::timer::sleep(*d).await
                    }
                    _ => {
                        let _ = client.set_zero_linger();
                        drop(client);
                        (self.report)(close(0, 0, Some("dropped by a rule".into())));
                        return;
                    }
                }
            }
        }
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
        // Only the driver waits on its bytes (to start parallel() branches in order).
        let on_sent: Option<Box<dyn Fn(u64) + Send + Sync>> = (e.consumer == super::plan::DRIVER)
            .then(|| {
                let waiters = self.waiters.clone();
                let peer = self.peer;
                Box::new(move |total| progressed(&waiters, peer, total))
                    as Box<dyn Fn(u64) + Send + Sync>
            });
        // HTTP/2 is terminated, not framed: a gRPC interface, or an `http` one whose
        // client opens with the HTTP/2 preface (HTTP/1 stays on its framer).
        let h2 = match protocol.map(|p| p.name()) {
            Some("grpc") => Some(super::h2::Kind::Grpc),
            Some("http") => Some(super::h2::Kind::Http),
            _ => None,
        };
        let h2 = match h2 {
            Some(kind) => match super::h2::starts_with_preface(&client).await {
                Ok(true) => Some(kind),
                Ok(false) => None,
                Err(err) => {
                    (self.report)(close(0, 0, Some(err.to_string())));
                    return;
                }
            },
            None => None,
        };
        let outcome = match (protocol, h2) {
            (_, Some(kind)) => {
                // Requests are multiplexed: the driver's bytes are not counted in order,
                // so nobody waits on them.
                if on_sent.is_some() {
                    progressed(&self.waiters, self.peer, u64::MAX);
                }
                super::h2::relay(
                    e.clone(),
                    kind,
                    self.rules.clone(),
                    Arc::new(ConnectionEvents {
                        edge: e.clone(),
                        connection: self.id,
                        report: self.report.clone(),
                    }),
                    client,
                    server,
                )
                .await
                .map_err(|err| err.to_string())
            }
            (Some(protocol), None) => {
                let framed = pump::Framed {
                    edge: e.clone(),
                    requests: !protocol.keys().is_empty(),
                    rules: self.rules.clone(),
                    events: Arc::new(ConnectionEvents {
                        edge: e.clone(),
                        connection: self.id,
                        report: self.report.clone(),
                    }),
                    on_sent,
                };
                pump::framed(framed, protocol.conversation(), client, server)
                    .await
                    .map_err(|err| err.to_string())
            }
            (None, None) => {
                let (client_r, client_w) = client.into_split();
                let (server_r, server_w) = server.into_split();
                tokio::try_join!(
                    plain(client_r, server_w, on_sent),
                    plain(server_r, client_w, None)
                )
                .map_err(|err| err.to_string())
            }
        };
        (self.report)(match outcome {
            Ok((sent, received)) => close(sent, received, None),
            Err(err) => close(0, 0, Some(err)),
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

/// A connection's pump events, as reports of its edge.
struct ConnectionEvents {
    edge: Edge,
    connection: u64,
    report: Reporter,
}

impl pump::Events for ConnectionEvents {
    fn fired(&self, fired: Fired) {
        (self.report)(Report::Rule {
            consumer: self.edge.consumer.clone(),
            service: self.edge.service.clone(),
            interface: self.edge.port.interface.clone(),
            protocol: self.edge.port.protocol.clone(),
            connection: self.connection,
            fired,
        });
    }

    fn opaque(&self, reason: String) {
        (self.report)(Report::Opaque {
            consumer: self.edge.consumer.clone(),
            service: self.edge.service.clone(),
            interface: self.edge.port.interface.clone(),
            protocol: self.edge.port.protocol.clone(),
            connection: self.connection,
            reason,
        });
    }
}

/// Copies one direction until end of file, then half-closes the other side, as the
/// peer did. `on_sent` is told the running total after each write. Returns the bytes
/// copied.
/// For protocols Faultbox does not frame.
async fn plain(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    on_sent: Option<Box<dyn Fn(u64) + Send + Sync>>,
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
        if let Some(f) = &on_sent {
            f(total);
        }
    }
}
