//! The [`World`] a test body runs against: real services in the test's sandbox,
//! faults installed into their supervisors' engines, and the event log.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultbox_protocols::client::{self, Credentials};
use faultbox_shim::rule::{Action, FaultRule};
use faultbox_shim::syscalls::{self, Arch, Syscall};
use faultbox_spec::model::{Healthcheck, HealthcheckKind, Service, SourceKind, Spec};
use faultbox_spec::world::{Event, StepCall, StepResult, World, WorldError};

use crate::engine::rules::{self as engine, Compiled, Engine, EngineSlot, Rolls};
use crate::engine::scheduler::{Order, Scheduler};
use crate::engine::supervisor::{EventSink, SyscallEvent};
use crate::network::namespace::NetNs;
use crate::network::plan::Plan;
use crate::network::relay::{Relays, Report, Reporter};
use crate::network::rules::{Active, Rules};
use crate::sandbox::session::{self, Running, SessionConfig};
use crate::sources::LogSink;
use crate::world::eventlog::{EventLog, DRIVER};
use crate::world::steps;

/// How long one `ready()` round trip may take: a login and one request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A fault installed during a test, and how often it fired.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FaultReport {
    pub service: String,
    /// The syscall (or op) a syscall fault acts on; empty for a protocol rule.
    pub syscall: String,
    /// `deny` or `delay`; for a protocol rule, the rule (`error(query="INSERT*")`).
    pub action: String,
    pub errno: Option<String>,
    pub delay: Option<String>,
    pub label: Option<String>,
    pub hits: u64,
    /// The interface a protocol rule acts on.
    #[serde(default)]
    pub interface: Option<String>,
    /// The spec call that installed it, for diagnostics that name the line to change.
    #[serde(default)]
    pub declared_at: Option<faultbox_spec::model::Location>,
}

/// A running service of the test.
pub struct ServiceState {
    pub decl: Service,
    pub running: Running,
    /// A container service's container, removed with this value at the latest.
    container: Option<crate::container::Guard>,
    slot: EngineSlot,
    rolls: Rolls,
    /// The syscalls its filter notifies.
    covered: Vec<Syscall>,
}

enum Installed {
    Faults {
        service: String,
        rules: Vec<(Arc<Compiled>, Vec<Syscall>)>,
    },
    Proxy {
        service: String,
        interface: String,
    },
    Trace {
        service: String,
    },
}

/// State shared with the services' event sinks.
struct Shared {
    log: Arc<EventLog>,
    /// Who listens where, to follow `connect` between services.
    plan: std::sync::OnceLock<Plan>,
    /// Fires per compiled rule id.
    hits: Mutex<HashMap<usize, u64>>,
}

pub struct TestWorld {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    seed: u64,
    services: Mutex<BTreeMap<String, Arc<ServiceState>>>,
    /// In start order, for stopping newest first.
    started: Mutex<Vec<Arc<ServiceState>>>,
    installed: Mutex<BTreeMap<u64, Installed>>,
    next: AtomicU64,
    /// Every fault ever installed: (rule id, report without hits).
    reports: Mutex<Vec<(usize, u64, FaultReport)>>,
    /// Set under `--virtual-time`: shared by every service of the test.
    vclock: Option<Arc<crate::engine::vclock::VirtualClock>>,
    /// Orders the services' calls inside `parallel()`.
    scheduler: Arc<Scheduler>,
    /// How the first batch of held calls is ordered.
    order: Order,
    /// Steps started inside `parallel()` and not yet collected.
    pending: Mutex<HashMap<u64, Pending>>,
    /// The size of the first batch of held calls of the test's first `parallel()`:
    /// an exhaustive exploration runs its every ordering.
    explored: Mutex<Option<usize>>,
    /// Set until the first batch of the test's first parallel() has been seen.
    first_batch: std::sync::atomic::AtomicBool,
    /// The network between the services, once it is up.
    net: Mutex<Option<Net>>,
    /// Protocol-level rules on the relays.
    rules: Arc<Rules>,
    /// Every protocol rule ever installed, for its hit count.
    proxy_rules: Mutex<Vec<Arc<Active>>>,
    /// The Kafka consumer group of `consume` steps that name none: this test's
    /// own, so committed offsets never carry over to another test or run.
    kafka_group: String,
    /// The running event sources (`observe=`), with the service each observes.
    sources: Mutex<Vec<Observed>>,
    /// Of those, the services' stdout and stderr sources: cheap to sync, so synced
    /// before every event that follows from the service's answer (its `ready`, a
    /// step's reply), which keeps what it wrote before answering ahead of it.
    outputs: Mutex<Vec<(String, crate::sources::output::Probe)>>,
    /// Sources that poll their service or read its broker (poll, topic), started
    /// when it is ready: before that it could only refuse them.
    deferred: Mutex<Vec<Deferred>>,
}

/// A test's network: a namespace per service, the hosts file, the relays.
struct Net {
    spaces: BTreeMap<String, Arc<NetNs>>,
    hosts: PathBuf,
    relays: Relays,
}

/// Records what a relay reports as a `proxy` event of the service it leads to; a
/// connection carries the consumer's history to the service.
fn record_relay(log: &EventLog, r: Report) {
    let mut fields = BTreeMap::new();
    let (what, consumer, service) = match r {
        Report::Open {
            consumer,
            service,
            interface,
            connection,
        } => {
            fields.insert("interface".to_string(), interface);
            fields.insert("connection".to_string(), connection.to_string());
            log.merge(&service, &consumer);
            ("open", consumer, service)
        }
        Report::Close {
            consumer,
            service,
            interface,
            connection,
            sent,
            received,
            error,
        } => {
            fields.insert("interface".to_string(), interface);
            fields.insert("connection".to_string(), connection.to_string());
            fields.insert("bytes_sent".to_string(), sent.to_string());
            fields.insert("bytes_received".to_string(), received.to_string());
            if let Some(e) = error {
                fields.insert("error".to_string(), e);
            }
            ("close", consumer, service)
        }
        Report::Rule {
            consumer,
            service,
            interface,
            protocol,
            connection,
            fired,
        } => {
            fields.insert("interface".to_string(), interface);
            fields.insert("protocol".to_string(), protocol);
            fields.insert("connection".to_string(), connection.to_string());
            fields.extend(fired.fields);
            fields.extend(fired.detail);
            if let Some(l) = fired.label {
                fields.insert("label".to_string(), l);
            }
            (fired.action, consumer, service)
        }
        Report::Opaque {
            consumer,
            service,
            interface,
            protocol,
            connection,
            reason,
        } => {
            fields.insert("interface".to_string(), interface);
            fields.insert("protocol".to_string(), protocol);
            fields.insert("connection".to_string(), connection.to_string());
            fields.insert("reason".to_string(), reason);
            ("opaque", consumer, service)
        }
    };
    fields.insert("action".to_string(), what.to_string());
    fields.insert("source".to_string(), consumer);
    log.record(
        &service,
        "proxy",
        format!("proxy.{what}"),
        service.clone(),
        fields,
    );
}

/// A step started inside `parallel()`.
enum Pending {
    Running {
        call: Box<StepCall>,
        /// The fields of its `step_send` event, for its `step_recv`.
        fields: BTreeMap<String, String>,
        task: tokio::task::JoinHandle<StepResult>,
    },
    Done(StepResult),
}

/// A running event source.
struct Observed {
    service: String,
    /// It connects to a service (poll, topic, wal_stream): stopped before the
    /// services are, since a server may wait for its clients to leave.
    connects: bool,
    running: Box<dyn crate::sources::Running>,
}

/// A service's sources waiting for it to be ready.
struct Deferred {
    svc: Service,
    observer: Arc<LogSink>,
    root: Option<PathBuf>,
    scratch: PathBuf,
}

/// Records a service's intercepted calls in the event log.
struct ServiceSink {
    service: String,
    shared: Arc<Shared>,
    /// Calls made before the service's `lifecycle.started` is logged (the loader's,
    /// while the launch returns), kept so they come after it; `None` once it is.
    early: Mutex<Option<Vec<SyscallEvent>>>,
}

impl ServiceSink {
    /// Logs `started` (the service's `lifecycle.started`), then the calls kept so far.
    fn open(&self, started: impl FnOnce()) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        started();
        for ev in early.take().unwrap_or_default() {
            self.record(ev);
        }
    }
}

impl EventSink for ServiceSink {
    fn syscall(&self, ev: SyscallEvent) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        match early.as_mut() {
            Some(kept) => kept.push(ev),
            None => {
                drop(early);
                self.record(ev);
            }
        }
    }
}

impl ServiceSink {
    fn record(&self, ev: SyscallEvent) {
        let mut fields = BTreeMap::new();
        fields.insert("syscall".to_string(), ev.name.to_string());
        fields.insert("pid".to_string(), ev.pid.to_string());
        fields.insert("decision".to_string(), ev.decision.to_string());
        if let Some(p) = &ev.path {
            fields.insert("path".to_string(), p.clone());
        }
        if let Some(l) = &ev.label {
            fields.insert("label".to_string(), l.to_string());
        }
        if let Some(id) = ev.rule {
            *self
                .shared
                .hits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_default() += 1;
        }
        // A connect to another service (its relay) brings that service's history
        // into ours.
        if let Some(port) = ev.peer_port {
            fields.insert("port".to_string(), port.to_string());
            let peer = self.shared.plan.get().and_then(|plan| {
                ev.path
                    .as_deref()
                    .and_then(|addr| plan.reached(&self.service, addr))
                    .map(|(node, _)| node.name.clone())
            });
            if let Some(peer) = peer {
                fields.insert("peer".to_string(), peer.clone());
                self.shared.log.merge(&self.service, &peer);
            }
        }
        self.shared.log.record(
            &self.service,
            "syscall",
            format!("syscall.{}", ev.name),
            self.service.clone(),
            fields,
        );
    }
}

impl TestWorld {
    pub fn new(
        rt: tokio::runtime::Handle,
        seed: u64,
        virtual_time: bool,
        order: Order,
        stream: Option<Arc<crate::fleet::stream::EventStream>>,
    ) -> TestWorld {
        TestWorld {
            shared: Arc::new(Shared {
                log: Arc::new(EventLog::streaming(stream)),
                plan: std::sync::OnceLock::new(),
                hits: Mutex::new(HashMap::new()),
            }),
            rt,
            seed,
            services: Mutex::new(BTreeMap::new()),
            started: Mutex::new(Vec::new()),
            installed: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            reports: Mutex::new(Vec::new()),
            vclock: virtual_time.then(|| Arc::new(crate::engine::vclock::VirtualClock::default())),
            scheduler: Arc::new(Scheduler::default()),
            order,
            pending: Mutex::new(HashMap::new()),
            explored: Mutex::new(None),
            first_batch: std::sync::atomic::AtomicBool::new(false),
            net: Mutex::new(None),
            rules: Arc::new(Rules::new(seed)),
            proxy_rules: Mutex::new(Vec::new()),
            kafka_group: test_group(),
            sources: Mutex::new(Vec::new()),
            outputs: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// The operation a step asks for, with what the world decides filled in (the
    /// test's Kafka consumer group).
    fn operation(&self, call: &StepCall) -> Option<client::Operation> {
        let mut op = call.op.clone()?;
        if let client::Operation::KafkaConsume { group, .. } = &mut op {
            group.get_or_insert_with(|| self.kafka_group.clone());
        }
        Some(op)
    }

    pub fn log(&self) -> &EventLog {
        &self.shared.log
    }

    /// Builds the test's network before any service starts: a namespace per service,
    /// the hosts file (in `logs`), and every relay, the driver's (in the calling
    /// thread's namespace, the test's sandbox) included.
    pub fn network_up(&self, spec: &Spec, logs: &Path) -> Result<(), String> {
        let plan = Plan::new(spec);
        let hosts = logs.join("hosts");
        std::fs::write(&hosts, plan.hosts())
            .map_err(|e| format!("writing the test's hosts file: {e}"))?;
        let driver = NetNs::current().map_err(|e| format!("the test's namespace: {e}"))?;
        let mut spaces = BTreeMap::new();
        for node in &plan.nodes {
            let ns = NetNs::create().map_err(|e| {
                format!("creating service {:?}'s network namespace: {e}", node.name)
            })?;
            spaces.insert(node.name.clone(), Arc::new(ns));
        }
        let shared = self.shared.clone();
        let report: Reporter = Arc::new(move |r| record_relay(&shared.log, r));
        let relays = Relays::new(self.rt.clone(), report, self.rules.clone());
        for edge in plan.edges() {
            let listen_ns = match spaces.get(&edge.consumer) {
                Some(ns) => ns.as_ref(),
                None => &driver,
            };
            let upstream = spaces[&edge.service].clone();
            relays
                .open(edge, listen_ns, upstream)
                .map_err(|e| e.to_string())?;
        }
        let _ = self.shared.plan.set(plan);
        *self.net.lock().unwrap_or_else(|p| p.into_inner()) = Some(Net {
            spaces,
            hosts,
            relays,
        });
        Ok(())
    }

    /// The namespace `service` runs in and the hosts file it sees.
    fn home_of(&self, service: &str) -> Result<(Arc<NetNs>, PathBuf), String> {
        let net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        let net = net
            .as_ref()
            .ok_or_else(|| "the test's network is not up".to_string())?;
        let ns = net
            .spaces
            .get(service)
            .cloned()
            .ok_or_else(|| format!("service {service:?} has no network namespace"))?;
        Ok((ns, net.hosts.clone()))
    }

    /// Whether `service` answers its healthcheck, asked inside its own namespace
    /// (never through a relay, which would accept before the service listens); if
    /// not, why.
    pub fn probe(
        &self,
        service: &str,
        hc: &Healthcheck,
        port: u16,
        path: &str,
    ) -> Result<(), String> {
        let (ns, _) = self.home_of(service)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let state = self.service(service).map_err(|e| e.0)?;
        let (protocol, healthy): (&str, fn(u16) -> bool) = match &hc.kind {
            HealthcheckKind::Tcp => ("tcp", |_| true),
            HealthcheckKind::Http => ("http", |s| (200..400).contains(&s)),
            // ready() on HTTP: anything but a server error means it serves.
            HealthcheckKind::Ready { interface } => (
                state
                    .decl
                    .interfaces
                    .iter()
                    .find(|i| interface.as_deref() == Some(i.name.as_str()))
                    .map_or("tcp", |i| i.protocol.as_str()),
                |s| s < 500,
            ),
        };
        if let "tcp" | "http" = protocol {
            let probe = async {
                let stream = ns
                    .connect(addr, Duration::from_millis(200))
                    .await
                    .map_err(|e| e.to_string())?;
                if protocol == "tcp" {
                    return Ok(());
                }
                let (status, _) = steps::http_over(
                    stream,
                    addr,
                    "GET",
                    path,
                    "",
                    &[],
                    Duration::from_secs(1),
                    None,
                )
                .await?;
                match healthy(status) {
                    true => Ok(()),
                    false => Err(format!("GET {path} answered {status}")),
                }
            };
            return self.rt.block_on(probe);
        }
        let credentials = Credentials::default().or_env(protocol, &state.decl.env);
        // The probe's socket must be made inside the service's namespace: a thread of
        // its own enters it, and ends there.
        std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter()
                    .map_err(|e| format!("entering {service:?}'s network namespace: {e}"))?;
                if protocol == "mongodb" {
                    return faultbox_mongo::ready(addr, PROBE_TIMEOUT).map_err(|e| e.to_string());
                }
                self.rt
                    .block_on(client::ready(protocol, addr, &credentials, PROBE_TIMEOUT))
                    .map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("the probe panicked".into()))
        })
    }

    /// Credentials for `call`: its keywords', else those in its service's environment.
    fn credentials(&self, call: &StepCall) -> Credentials {
        let env = self
            .service(&call.service)
            .map(|s| s.decl.env.clone())
            .unwrap_or_default();
        call.credentials.or_env(&call.protocol, &env)
    }

    /// Fires once the first `bytes` the driver sent from `local` have reached the
    /// service (so that `parallel()` branches reach the services in argument order).
    fn forwarded(
        &self,
        local: SocketAddr,
        bytes: u64,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        net.as_ref().map(|n| n.relays.forwarded(local, bytes))
    }

    /// Where the driver reaches `service`'s `port`: its relay in the test's namespace.
    fn driver_addr(&self, service: &str, port: u16) -> SocketAddr {
        let ip = self
            .shared
            .plan
            .get()
            .and_then(|p| p.node(service))
            .map_or(std::net::Ipv4Addr::LOCALHOST, |n| n.address);
        SocketAddr::from((ip, port))
    }

    /// Starts `svc` in its namespace, its filter covering what `spec` can fault on it,
    /// its output in `logs`. Does not wait for its healthcheck.
    pub fn start_service(
        &self,
        spec: &Spec,
        svc: &Service,
        shim: &Path,
        logs: &Path,
    ) -> Result<Arc<ServiceState>, String> {
        let (netns, hosts) = self.home_of(&svc.name)?;
        let arch = Arch::native();
        let mut covered: Vec<Syscall> = Vec::new();
        for name in spec.filter_syscalls(&svc.name) {
            for sc in syscalls::expand(&name, arch).unwrap_or_default() {
                if !covered.iter().any(|c| c.nr == sc.nr) {
                    covered.push(sc);
                }
            }
        }
        if self.vclock.is_some() {
            for name in crate::engine::vclock::SYSCALLS {
                for sc in syscalls::expand(name, arch).unwrap_or_default() {
                    if !covered.iter().any(|c| c.nr == sc.nr) {
                        covered.push(sc);
                    }
                }
            }
        }
        if svc.container.as_ref().is_some_and(|c| !c.seccomp) {
            covered.clear();
        }
        let notify: Vec<i32> = covered.iter().map(|s| s.nr).collect();
        let rolls = engine::rolls(self.seed ^ name_hash(&svc.name));
        let slot = EngineSlot::new(Engine::assemble(&[], &covered, rolls.clone()));
        if svc.container.is_some() {
            return self.start_container(spec, svc, logs, hosts, covered, notify, slot, rolls);
        }
        let program = crate::sandbox::program::resolve(svc)
            .map_err(|e| format!("service {:?}: {e}", svc.name))?;
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let mut set = |k: &str, v: &str| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v.into()));
        };
        for other in &spec.services {
            for (k, v) in other.injected_env() {
                set(&k, &v);
            }
        }
        // A temporary directory per test, removed with it: what services put under
        // $TMPDIR does not outlive the test.
        set("TMPDIR", &logs.to_string_lossy());
        for (k, v) in &svc.env {
            set(k, v);
        }
        let user = match &svc.user {
            None => None,
            Some(u) => {
                let ids = crate::sandbox::user::resolve(u)
                    .map_err(|e| format!("service {:?}: user {u:?}: {e}", svc.name))?;
                // The test's temporary directory is the service's $TMPDIR too.
                crate::sandbox::scratch::share(logs)
                    .map_err(|e| format!("service {:?}: sharing $TMPDIR: {e}", svc.name))?;
                Some(ids)
            }
        };
        let mut argv: Vec<OsString> = vec![svc.binary.clone().into()];
        argv.extend(svc.args.iter().map(OsString::from));
        let open = |ext: &str| -> Result<OwnedFd, String> {
            std::fs::File::create(logs.join(format!("{}.{ext}", svc.name)))
                .map(OwnedFd::from)
                .map_err(|e| format!("service {:?}: creating its {ext} log: {e}", svc.name))
        };
        let observer = Arc::new(LogSink::new(&svc.name, self.shared.log.clone()));
        let (stdout, stderr) = self.output(svc, &observer, open("stdout")?, open("stderr")?)?;
        let config = SessionConfig {
            program,
            argv,
            env,
            shim: shim.to_path_buf(),
            engine: slot.clone(),
            notify,
            netns: Some(netns.raw_fd()),
            hosts: Some(hosts),
            stdout: Some(stdout.as_raw_fd()),
            stderr: Some(stderr.as_raw_fd()),
            // Relative paths in a service's arguments mean what they mean for its binary.
            cwd: Some(svc.home()),
            user,
            vclock: self.vclock.clone(),
            holder: Some(self.scheduler.holder(&svc.name)),
        };
        let sink = Arc::new(ServiceSink {
            service: svc.name.clone(),
            shared: self.shared.clone(),
            early: Mutex::new(Some(Vec::new())),
        });
        let running = self
            .rt
            .block_on(session::start(config, sink.clone()))
            .map_err(|e| format!("service {:?}: {e}", svc.name))?;
        drop((stdout, stderr));
        let state = self.started(
            &sink,
            ServiceState {
                decl: svc.clone(),
                running,
                container: None,
                slot,
                rolls,
                covered,
            },
        );
        self.observe(svc, &observer, None, logs);
        Ok(state)
    }

    /// Where a service's stdout and stderr go: their log files, or through an
    /// `stdout()`/`stderr()` source's pipe that also copies into them.
    fn output(
        &self,
        svc: &Service,
        observer: &Arc<LogSink>,
        out_log: OwnedFd,
        err_log: OwnedFd,
    ) -> Result<(OwnedFd, OwnedFd), String> {
        let mut fds = Vec::new();
        for (kind, log) in [(SourceKind::Stdout, out_log), (SourceKind::Stderr, err_log)] {
            let Some(source) = svc.observe.iter().find(|s| s.kind == kind) else {
                fds.push(log);
                continue;
            };
            let ctx = self.source_context(&svc.name, observer)?;
            let (write, running, probe) = crate::sources::output::start(
                ctx,
                kind.event_type(),
                source.decoder.clone(),
                std::fs::File::from(log),
            )
            .map_err(|e| format!("service {:?}: {}(): {e}", svc.name, kind.event_type()))?;
            self.outputs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((svc.name.clone(), probe));
            self.sources
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Observed {
                    service: svc.name.clone(),
                    connects: false,
                    running,
                });
            fds.push(write);
        }
        let err = fds.pop().expect("two");
        let out = fds.pop().expect("two");
        Ok((out, err))
    }

    fn source_context(
        &self,
        service: &str,
        observer: &Arc<LogSink>,
    ) -> Result<crate::sources::Context, String> {
        let (netns, _) = self.home_of(service)?;
        Ok(crate::sources::Context {
            service: service.to_string(),
            netns,
            sink: observer.clone(),
        })
    }

    /// Starts `svc`'s event sources that read what it writes (its files; its WAL,
    /// quietly retrying until the server is up; its output started with it) right
    /// after the service, before its healthcheck is polled, so nothing it writes is
    /// missed; keeps `poll` and `topic` for when it is ready, since before that it
    /// could only refuse them (and a Kafka topic is read from its start anyway).
    /// `root` is a container's root directory as the host sees it.
    fn observe(
        &self,
        svc: &Service,
        observer: &Arc<LogSink>,
        root: Option<PathBuf>,
        scratch: &Path,
    ) {
        observer.open();
        self.start_sources(
            svc,
            observer,
            root.as_deref(),
            scratch,
            |k| matches!(k, SourceKind::Tail { .. } | SourceKind::Wal { .. }),
            false,
        );
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Deferred {
                svc: svc.clone(),
                observer: observer.clone(),
                root,
                scratch: scratch.to_path_buf(),
            });
    }

    /// Starts the sources of `service` that wait for it to be ready, and syncs those
    /// already running (a WAL slot then exists before the test body writes).
    fn observe_ready(&self, service: &str) {
        for o in self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|o| o.service == service && o.connects)
        {
            o.running.sync();
        }
        let waiting: Vec<Deferred> = {
            let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            let (mine, others) = std::mem::take(&mut *d)
                .into_iter()
                .partition(|d| d.svc.name == service);
            *d = others;
            mine
        };
        for d in waiting {
            self.start_sources(
                &d.svc,
                &d.observer,
                d.root.as_deref(),
                &d.scratch,
                |k| matches!(k, SourceKind::Poll { .. } | SourceKind::Topic { .. }),
                true,
            );
        }
    }

    fn start_sources(
        &self,
        svc: &Service,
        observer: &Arc<LogSink>,
        root: Option<&Path>,
        scratch: &Path,
        now: impl Fn(&SourceKind) -> bool,
        ready: bool,
    ) {
        for source in svc.observe.iter().filter(|s| now(&s.kind)) {
            match self.start_source(svc, observer, &source.kind, source, root, scratch) {
                Ok(running) => {
                    if ready {
                        // Subscribed and connected before the test body runs: a
                        // NATS message published then is not missed.
                        running.sync();
                    }
                    self.sources
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Observed {
                            service: svc.name.clone(),
                            connects: !matches!(source.kind, SourceKind::Tail { .. }),
                            running,
                        })
                }
                Err(e) => crate::sources::Sink::emit(
                    observer.as_ref(),
                    crate::sources::Observation::error(source.kind.event_type(), e),
                ),
            }
        }
    }

    fn start_source(
        &self,
        svc: &Service,
        observer: &Arc<LogSink>,
        kind: &SourceKind,
        source: &faultbox_spec::model::Source,
        root: Option<&Path>,
        scratch: &Path,
    ) -> Result<Box<dyn crate::sources::Running>, String> {
        let ctx = self.source_context(&svc.name, observer)?;
        let decoder = source.decoder.clone();
        Ok(match kind {
            SourceKind::Stdout | SourceKind::Stderr => {
                unreachable!("output sources start with the service")
            }
            SourceKind::Tail { path } => {
                // A container's path is inside it: reached through its root.
                let path = match (path.strip_prefix(faultbox_spec::sources::TMPDIR), root) {
                    (Some(rest), _) => scratch.join(rest),
                    (None, Some(root)) => root.join(path.trim_start_matches('/')),
                    (None, None) => PathBuf::from(path),
                };
                crate::sources::tail::start(ctx, path, decoder)
            }
            SourceKind::Poll { url, interval } => {
                crate::sources::poll::start(ctx, url, *interval, decoder)
            }
            SourceKind::Topic {
                protocol,
                service,
                port,
                topic,
                group,
            } => {
                // The broker is read in its own namespace, where 127.0.0.1:PORT is it.
                let ctx = crate::sources::Context {
                    netns: self.home_of(service)?.0,
                    ..ctx
                };
                crate::sources::topic::start(
                    ctx,
                    protocol,
                    *port,
                    topic,
                    group.as_deref().unwrap_or(""),
                    decoder,
                )
            }
            SourceKind::Wal { slot, tables, port } => crate::sources::wal::start(
                ctx,
                *port,
                Credentials::default().or_env("postgres", &svc.env),
                slot,
                tables,
            ),
        })
    }

    /// Records that a service started and makes it the test's: its `started` event
    /// (the calls it made before that are then logged), and its place among the
    /// running services.
    fn started(&self, sink: &ServiceSink, state: ServiceState) -> Arc<ServiceState> {
        let mut fields = BTreeMap::new();
        fields.insert("pid".to_string(), state.running.pid.to_string());
        sink.open(|| self.lifecycle(&state.decl.name, "started", fields));
        let name = state.decl.name.clone();
        let state = Arc::new(state);
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, state.clone());
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state.clone());
        state
    }

    /// [`TestWorld::start_service`] for a container service (`crate::container`).
    #[allow(clippy::too_many_arguments)]
    fn start_container(
        &self,
        spec: &Spec,
        svc: &Service,
        logs: &Path,
        hosts: PathBuf,
        covered: Vec<Syscall>,
        notify: Vec<i32>,
        slot: EngineSlot,
        rolls: Rolls,
    ) -> Result<Arc<ServiceState>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v.into()));
        };
        for other in &spec.services {
            for (k, v) in other.injected_env() {
                set(&k, &v);
            }
        }
        for (k, v) in &svc.env {
            set(k, v);
        }
        let run = format!(
            "{}-{}",
            std::process::id(),
            logs.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let sink = Arc::new(ServiceSink {
            service: svc.name.clone(),
            shared: self.shared.clone(),
            early: Mutex::new(Some(Vec::new())),
        });
        let observer = Arc::new(LogSink::new(&svc.name, self.shared.log.clone()));
        let wants = |k: SourceKind| svc.observe.iter().any(|s| s.kind == k);
        let output = if wants(SourceKind::Stdout) || wants(SourceKind::Stderr) {
            let open = |ext: &str| -> Result<OwnedFd, String> {
                std::fs::File::create(logs.join(format!("{}.{ext}", svc.name)))
                    .map(OwnedFd::from)
                    .map_err(|e| format!("service {:?}: creating its {ext} log: {e}", svc.name))
            };
            let (out, err) = self.output(svc, &observer, open("stdout")?, open("stderr")?)?;
            (
                Some(std::fs::File::from(out)),
                Some(std::fs::File::from(err)),
            )
        } else {
            (None, None)
        };
        let cfg = crate::container::ContainerConfig {
            output,
            svc,
            run,
            notify,
            env,
            hosts,
            scratch: logs.to_path_buf(),
            engine: slot.clone(),
            vclock: self.vclock.clone(),
            holder: Some(self.scheduler.holder(&svc.name)),
        };
        let join = |pid: i32| -> Result<(), String> {
            let ns = NetNs::of_process(pid)
                .map_err(|e| format!("the container's network namespace: {e}"))?;
            let net = self.net.lock().unwrap_or_else(|p| p.into_inner());
            let net = net
                .as_ref()
                .ok_or_else(|| "the test's network is not up".to_string())?;
            let mine = net
                .spaces
                .get(&svc.name)
                .ok_or_else(|| format!("service {:?} has no network namespace", svc.name))?;
            mine.adopt(ns);
            net.relays
                .reopen_consumer(&svc.name, mine)
                .map_err(|e| e.to_string())
        };
        let started = crate::container::start(cfg, &self.rt, sink.clone(), &join)
            .map_err(|e| format!("{}: service {:?}: {e}", svc.declared_at, svc.name))?;
        let root = PathBuf::from(format!("/proc/{}/root", started.running.pid));
        let state = self.started(
            &sink,
            ServiceState {
                decl: svc.clone(),
                running: started.running,
                container: Some(started.guard),
                slot,
                rolls,
                covered,
            },
        );
        self.observe(svc, &observer, Some(root), logs);
        Ok(state)
    }

    fn service(&self, name: &str) -> Result<Arc<ServiceState>, WorldError> {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| WorldError(format!("service {name:?} is not running")))
    }

    /// Rebuilds `service`'s engine from the faults installed on it, in order.
    fn rebuild(&self, service: &str) -> Result<(), WorldError> {
        let state = self.service(service)?;
        let installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let rules: Vec<(Arc<Compiled>, Vec<Syscall>)> = installed
            .values()
            .filter_map(|i| match i {
                Installed::Faults { service: s, rules } if s == service => Some(rules.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        state.slot.store(Engine::assemble(
            &rules,
            &state.covered,
            state.rolls.clone(),
        ));
        Ok(())
    }

    fn uncovered(state: &ServiceState, wanted: &[Syscall], what: &str) -> Result<(), WorldError> {
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| !state.covered.iter().any(|c| c.nr == w.nr))
            .map(|w| w.name.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let covered: Vec<&str> = state.covered.iter().map(|c| c.name.as_str()).collect();
        Err(WorldError(format!(
            "{what} on {:?} cannot take effect: its seccomp filter does not cover {} (it covers [{}]). \
             Filters are computed from the spec's fault() and trace() calls; name {:?} directly \
             as their first argument so the call can be found",
            state.decl.name,
            missing.join(", "),
            covered.join(", "),
            state.decl.name
        )))
    }

    /// The size of the first batch of calls `parallel()` ordered, if it ran.
    pub fn explored(&self) -> Option<usize> {
        *self.explored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a step being sent, and merges the driver's clock into the target's.
    fn step_sent(&self, call: &StepCall) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        fields.insert("service".to_string(), call.service.clone());
        fields.insert("interface".to_string(), call.interface.clone());
        fields.insert("method".to_string(), call.method.clone());
        if call.protocol == "http" {
            fields.insert("path".to_string(), call.path.clone());
        }
        self.log().record(
            DRIVER,
            "step_send",
            format!("step_send.{}", call.service),
            call.service.clone(),
            fields.clone(),
        );
        self.log().merge(&call.service, DRIVER);
        fields
    }

    /// Records a step's answer, and merges the target's clock into the driver's.
    fn step_received(
        &self,
        call: &StepCall,
        mut fields: BTreeMap<String, String>,
        result: &StepResult,
    ) {
        self.sync_output(&call.service);
        self.log().merge(DRIVER, &call.service);
        fields.insert("ok".to_string(), result.ok.to_string());
        fields.insert("status".to_string(), result.status.to_string());
        fields.insert("duration_ms".to_string(), result.duration_ms.to_string());
        if !result.ok {
            fields.insert("error".to_string(), result.error.clone());
        }
        self.log().record(
            DRIVER,
            "step_recv",
            format!("step_recv.{}", call.service),
            call.service.clone(),
            fields,
        );
    }

    fn pending_running(&self) -> bool {
        self.pending_in_flight() > 0
    }

    /// How many steps started by parallel() branches are still waiting for an answer.
    fn pending_in_flight(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| matches!(p, Pending::Running { task, .. } if !task.is_finished()))
            .count()
    }

    /// Records a change in `service`'s life: `started`, `ready` or `stopped`. Its type
    /// is `service_<what>` and its event type `lifecycle.<what>`, as the JSON trace
    /// of the spec reference shows.
    pub fn lifecycle(&self, service: &str, what: &str, fields: BTreeMap<String, String>) {
        if what == "ready" {
            self.sync_output(service);
        }
        let ready = what == "ready";
        self.log().record(
            service,
            &format!("service_{what}"),
            format!("lifecycle.{what}"),
            service.to_string(),
            fields,
        );
        if ready {
            self.observe_ready(service);
        }
    }

    /// Records that the test driver changed a service's faults.
    fn fault_event(&self, what: &str, service: &str, rules: String) {
        let mut fields = BTreeMap::new();
        fields.insert("service".to_string(), service.to_string());
        if !rules.is_empty() {
            fields.insert("rules".to_string(), rules);
        }
        self.log().record(
            DRIVER,
            "fault",
            what.to_string(),
            service.to_string(),
            fields,
        );
    }

    /// Kills every service at once, leaving them to be reaped by [`Self::stop_all`]:
    /// whatever a test body waits on from them fails straight away.
    pub fn kill_services(&self) {
        for s in self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if s.running.poll_exit().is_none() {
                s.running.kill();
            }
        }
    }

    /// Stops the relays, then every service, newest first: SIGTERM, then SIGKILL after
    /// `grace`. The services' namespaces go with their last reference.
    pub fn stop_all(&self, grace: std::time::Duration) {
        // Relays first: what the services do on the way out is not the test's traffic.
        // The namespaces are let go only once the services are gone, so they can
        // serve another test.
        let net = self.net.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(net) = &net {
            net.relays.stop();
        }
        // While the services still run: what a database committed or a broker took
        // is read before they go, and the sources that connect to them leave first.
        self.sync_sources();
        let (connecting, mut sources): (Vec<Observed>, Vec<Observed>) =
            std::mem::take(&mut *self.sources.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .partition(|o| o.connects);
        for o in connecting {
            o.running.stop();
        }
        let services: Vec<Arc<ServiceState>> = {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            self.services
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            std::mem::take(&mut *started)
        };
        for s in services.iter().rev() {
            if s.running.poll_exit().is_none() {
                s.running.signal(libc::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + grace;
        for s in services.iter().rev() {
            while s.running.poll_exit().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if s.running.poll_exit().is_none() {
                s.running.kill();
            }
            let outcome = self.rt.block_on(s.running.wait());
            if let Some(c) = &s.container {
                c.remove();
            }
            // Its sources end after it (its last line is read to the end of its
            // output), and before its `stopped` event.
            let (mine, others) = sources
                .drain(..)
                .partition::<Vec<_>, _>(|o| o.service == s.decl.name);
            sources = others;
            for o in mine {
                o.running.stop();
            }
            let mut fields = BTreeMap::new();
            fields.insert("exit_code".to_string(), outcome.exit.code().to_string());
            self.lifecycle(&s.decl.name, "stopped", fields);
        }
        // Sources of services that never started.
        for o in sources {
            o.running.stop();
        }
        self.outputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        drop(net);
    }

    /// Lets `service`'s stdout and stderr sources catch up.
    fn sync_output(&self, service: &str) {
        let outputs: Vec<crate::sources::output::Probe> = self
            .outputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, r)| r.clone())
            .collect();
        for o in outputs {
            o.sync();
        }
    }

    /// Lets every event source catch up with what its service did so far.
    pub fn sync_sources(&self) {
        for o in self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            o.running.sync();
        }
    }

    /// The faults installed during the test, with how often each fired.
    pub fn fault_reports(&self) -> Vec<FaultReport> {
        let hits = self.shared.hits.lock().unwrap_or_else(|p| p.into_inner());
        let proxy = self.proxy_rules.lock().unwrap_or_else(|p| p.into_inner());
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, _, r)| FaultReport {
                hits: match proxy.iter().find(|a| a.id == *id) {
                    Some(a) => a.hits.load(Ordering::Relaxed),
                    None => hits.get(id).copied().unwrap_or(0),
                },
                ..r.clone()
            })
            .collect()
    }
}

/// A consumer group name no other test or run uses: the process, the time, a count.
fn test_group() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "faultbox-{}-{nanos:x}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl World for TestWorld {
    fn sync_sources(&self) {
        TestWorld::sync_sources(self)
    }

    fn step(&self, call: &StepCall) -> Result<StepResult, WorldError> {
        let fields = self.step_sent(call);
        let addr = self.driver_addr(&call.service, call.port);
        let result = match call.protocol.as_str() {
            "http" => steps::http(
                &self.rt,
                addr,
                &call.method,
                &call.path,
                &call.body,
                &call.headers,
                call.timeout,
            ),
            "tcp" => steps::tcp(addr, &call.body, call.timeout),
            other => match &self.operation(call) {
                Some(op) => steps::protocol(
                    &self.rt,
                    other,
                    addr,
                    &self.credentials(call),
                    op,
                    call.timeout,
                ),
                None => {
                    return Err(WorldError(format!(
                        "protocol {other:?} has no step client yet"
                    )))
                }
            },
        };
        self.step_received(call, fields, &result);
        Ok(result)
    }

    fn step_start(&self, call: &StepCall) -> Result<u64, WorldError> {
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        let addr = self.driver_addr(&call.service, call.port);
        // Each branch's request is on the wire before the next branch starts, so the
        // services see requests in argument order and create their threads in it: the
        // order a seed picks then means the same branches every run.
        let pending = match call.protocol.as_str() {
            "http" => {
                let fields = self.step_sent(call);
                let started = std::time::Instant::now();
                let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
                let mut local = None;
                let task = match steps::http_connect(addr, call.timeout) {
                    Ok(stream) => self.rt.spawn({
                        local = stream.local_addr().ok();
                        let exchange = steps::http_exchange(
                            stream,
                            addr,
                            call.method.clone(),
                            call.path.clone(),
                            call.body.clone(),
                            call.headers.clone(),
                            call.timeout,
                            Some(sent_tx),
                        );
                        async move { steps::http_result(exchange.await, started) }
                    }),
                    Err(e) => {
                        drop(sent_tx);
                        self.rt
                            .spawn(async move { steps::http_result(Err(e), started) })
                    }
                };
                let timeout = call.timeout;
                let _ = self.rt.block_on(async move {
                    tokio::time::timeout(timeout, async {
                        let Ok(bytes) = sent_rx.await else { return };
                        if let Some(f) = local.and_then(|a| self.forwarded(a, bytes)) {
                            let _ = f.await;
                        }
                    })
                    .await
                });
                Pending::Running {
                    call: Box::new(call.clone()),
                    fields,
                    task,
                }
            }
            "tcp" => {
                let fields = self.step_sent(call);
                let started = std::time::Instant::now();
                let sent = steps::tcp_connect(addr, call.timeout).and_then(|stream| {
                    // The step writes its data and a newline.
                    let bytes = call.body.len() as u64 + 1;
                    let forwarded = stream
                        .local_addr()
                        .ok()
                        .and_then(|a| self.forwarded(a, bytes));
                    let stream = steps::tcp_write(stream, &call.body)?;
                    if let Some(f) = forwarded {
                        let timeout = call.timeout;
                        let _ = self
                            .rt
                            .block_on(async move { tokio::time::timeout(timeout, f).await });
                    }
                    Ok(stream)
                });
                let task = match sent {
                    Ok(stream) => self.rt.spawn_blocking(move || {
                        steps::tcp_result(steps::tcp_reply(stream), started)
                    }),
                    Err(e) => self
                        .rt
                        .spawn(async move { steps::tcp_result(Err(e), started) }),
                };
                Pending::Running {
                    call: Box::new(call.clone()),
                    fields,
                    task,
                }
            }
            protocol if call.op.is_some() => {
                let fields = self.step_sent(call);
                let (tx, rx) = tokio::sync::oneshot::channel();
                let rt = self.rt.clone();
                let protocol = protocol.to_string();
                let credentials = self.credentials(call);
                let op = self.operation(call).expect("checked above");
                let timeout = call.timeout;
                // A thread started here is in the test's network namespace, where the
                // step's socket must be made; it runs beside the other branches. Its
                // request is not awaited: it goes out once the service accepts.
                let spawned = std::thread::Builder::new()
                    .name("faultbox-step".into())
                    .spawn(move || {
                        let r = steps::protocol(&rt, &protocol, addr, &credentials, &op, timeout);
                        let _ = tx.send(r);
                    });
                let task = match spawned {
                    Ok(_) => self.rt.spawn(async move {
                        rx.await.unwrap_or_else(|_| StepResult {
                            error: "the step's thread ended without an answer".into(),
                            ..StepResult::default()
                        })
                    }),
                    Err(e) => {
                        let r = StepResult {
                            error: format!("starting the step: {e}"),
                            ..StepResult::default()
                        };
                        self.rt.spawn(async move { r })
                    }
                };
                Pending::Running {
                    call: Box::new(call.clone()),
                    fields,
                    task,
                }
            }
            _ => Pending::Done(self.step(call)?),
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle, pending);
        Ok(handle)
    }

    fn step_finish(&self, handle: u64) -> Result<StepResult, WorldError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle)
            .ok_or_else(|| WorldError(format!("no pending step {handle}")))?;
        match pending {
            Pending::Done(r) => Ok(r),
            Pending::Running { call, fields, task } => {
                let result = self.rt.block_on(task).unwrap_or_else(|e| StepResult {
                    error: format!("the step's task failed: {e}"),
                    ..StepResult::default()
                });
                self.step_received(&call, fields, &result);
                Ok(result)
            }
        }
    }

    fn parallel_begin(&self) -> Result<(), WorldError> {
        // The test's first parallel() decides what an exploration orders; until its
        // first batch is seen, it ordered nothing.
        let mut explored = self.explored.lock().unwrap_or_else(|p| p.into_inner());
        if explored.is_none() {
            *explored = Some(0);
            self.first_batch.store(true, Ordering::SeqCst);
        }
        drop(explored);
        self.scheduler.begin();
        Ok(())
    }

    fn parallel_release(&self) -> Result<(), WorldError> {
        const IDLE: std::time::Duration = std::time::Duration::from_millis(20);
        const FIRST_BATCH: std::time::Duration = std::time::Duration::from_millis(100);
        let limit = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let roots: Vec<i32> = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(name, _)| !self.scheduler.is_nondet(name))
            .map(|(_, s)| s.running.pid)
            .collect();
        let busy = || {
            roots
                .iter()
                .any(|&pid| crate::engine::procfs::any_running(pid))
        };
        // The threads of the first batch of held calls, in the order the seed (or the
        // exploration's index) ranks them. Every later decision releases the held call
        // of the highest-ranked thread, so one ranking fixes the whole interleaving;
        // threads that join later rank below, oldest first.
        let mut ranking: Vec<(String, i32)> = Vec::new();
        let mut first = true;
        let mut first_seen: Option<std::time::Instant> = None;
        loop {
            let mut held = self.scheduler.settle(IDLE, limit, &busy);
            if held.is_empty() {
                if !self.pending_running() || std::time::Instant::now() >= limit {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
            // The first batch fixes the ranking, so it waits a little for steps whose
            // request has not reached a service yet: on a loaded machine a branch's send
            // can trail the other's held call by more than IDLE.
            if first
                && held.len() < self.pending_in_flight()
                && first_seen
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    < FIRST_BATCH
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
            // Arrival order varies between runs; thread order does not.
            held.sort_by(|a, b| a.caller.cmp(&b.caller));
            if first {
                first = false;
                if self.first_batch.swap(false, Ordering::SeqCst) {
                    *self.explored.lock().unwrap_or_else(|p| p.into_inner()) = Some(held.len());
                }
                ranking = crate::engine::scheduler::permutation(held.len(), self.order)
                    .into_iter()
                    .map(|i| held[i].caller.clone())
                    .collect();
            }
            let next = held
                .iter()
                .min_by_key(|h| {
                    ranking
                        .iter()
                        .position(|c| *c == h.caller)
                        .unwrap_or(usize::MAX)
                })
                .expect("held is not empty");
            self.scheduler.release(next.id);
        }
        self.first_batch.store(false, Ordering::SeqCst);
        self.scheduler.end();
        if std::time::Instant::now() >= limit {
            return Err(WorldError(
                "parallel(): the branches did not finish within 60s".into(),
            ));
        }
        Ok(())
    }

    fn parallel_open(&self) {
        self.scheduler.end();
    }

    fn nondet(&self, services: &[String]) {
        self.scheduler.nondet(services);
    }

    fn fault_start(&self, service: &str, rules: &[FaultRule]) -> Result<u64, WorldError> {
        let state = self.service(service)?;
        let mut compiled = Vec::new();
        let mut reports = Vec::new();
        for rule in rules {
            let id = self.next.fetch_add(1, Ordering::SeqCst) as usize;
            let (c, scs) =
                engine::compile(rule, id, Arch::native()).map_err(|e| WorldError(e.to_string()))?;
            Self::uncovered(
                &state,
                &scs,
                &format!("fault {}={}", rule.target, describe_action(&rule.action)),
            )?;
            reports.push((
                id,
                FaultReport {
                    service: service.to_string(),
                    syscall: rule.target.clone(),
                    action: match rule.action {
                        Action::Deny(_) => "deny".into(),
                        Action::Delay(_) => "delay".into(),
                    },
                    errno: match rule.action {
                        Action::Deny(e) => faultbox_shim::errno::name(e).map(str::to_string),
                        Action::Delay(_) => None,
                    },
                    delay: match rule.action {
                        Action::Delay(d) => Some(faultbox_shim::rule::format_duration(d)),
                        Action::Deny(_) => None,
                    },
                    label: rule.label.clone(),
                    hits: 0,
                    interface: None,
                    declared_at: None,
                },
            ));
            compiled.push((c, scs));
        }
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                Installed::Faults {
                    service: service.to_string(),
                    rules: compiled,
                },
            );
        let text: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(reports.into_iter().map(|(id, r)| (id, handle, r)));
        self.rebuild(service)?;
        self.fault_event("fault_applied", service, text.join(" "));
        Ok(handle)
    }

    fn trace_start(&self, service: &str, names: &[String]) -> Result<u64, WorldError> {
        let state = self.service(service)?;
        let mut wanted = Vec::new();
        for n in names {
            wanted.extend(syscalls::expand(n, Arch::native()).unwrap_or_default());
        }
        Self::uncovered(&state, &wanted, "trace")?;
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                Installed::Trace {
                    service: service.to_string(),
                },
            );
        Ok(handle)
    }

    fn fault_remove(&self, handle: u64) -> Result<(), WorldError> {
        let removed = self
            .installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        match removed {
            Some(Installed::Faults { service, .. }) => {
                self.rebuild(&service)?;
                self.fault_event("fault_removed", &service, String::new());
                Ok(())
            }
            Some(Installed::Proxy { service, interface }) => {
                self.rules.remove(handle);
                self.fault_event("fault_removed", &service, interface);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn proxy_start(
        &self,
        service: &str,
        interface: &str,
        source: Option<&str>,
        rules: &[faultbox_spec::world::ProxyRule],
    ) -> Result<u64, WorldError> {
        let state = self.service(service)?;
        let Some(protocol) = state
            .decl
            .interfaces
            .iter()
            .find(|i| i.name == interface)
            .map(|i| i.protocol.as_str())
        else {
            return Err(WorldError(format!(
                "service {service:?} has no interface {interface:?}"
            )));
        };
        let mut actives = Vec::new();
        let mut reports = Vec::new();
        for rule in rules {
            let id = self.next.fetch_add(1, Ordering::SeqCst) as usize;
            let active = Arc::new(Active::new(id, protocol, rule.clone()).scoped(source.is_some()));
            reports.push((
                id,
                FaultReport {
                    service: service.to_string(),
                    syscall: String::new(),
                    action: rule.to_string(),
                    errno: None,
                    delay: None,
                    label: rule.label.clone(),
                    hits: 0,
                    interface: Some(interface.to_string()),
                    declared_at: None,
                },
            ));
            self.proxy_rules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(active.clone());
            actives.push(active);
        }
        let handle = self.next.fetch_add(1, Ordering::SeqCst);
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(reports.into_iter().map(|(id, r)| (id, handle, r)));
        self.rules
            .install(handle, service, interface, source, actives);
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                Installed::Proxy {
                    service: service.to_string(),
                    interface: interface.to_string(),
                },
            );
        let mut text: Vec<String> = rules.iter().map(|r| format!("{interface}: {r}")).collect();
        if let Some(s) = source {
            text.push(format!("source={s}"));
        }
        self.fault_event("fault_applied", service, text.join(" "));
        Ok(handle)
    }

    fn fault_declared_at(&self, handle: u64, at: &faultbox_spec::model::Location) {
        for (_, h, r) in self
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            if *h == handle {
                r.declared_at = Some(at.clone());
            }
        }
    }

    fn proxy_stop(&self, service: &str, interface: &str) -> Result<(), WorldError> {
        self.rules.clear(service, interface);
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, i| {
                !matches!(i, Installed::Proxy { service: s, interface: f } if s == service && f == interface)
            });
        self.fault_event("fault_removed", service, interface.to_string());
        Ok(())
    }

    fn fault_stop(&self, service: &str) -> Result<(), WorldError> {
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, i| !matches!(i, Installed::Faults { service: s, .. } if s == service));
        self.rebuild(service)?;
        self.fault_event("fault_removed", service, String::new());
        Ok(())
    }

    fn trace_stop(&self, service: &str) -> Result<(), WorldError> {
        self.installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, i| !matches!(i, Installed::Trace { service: s } if s == service));
        Ok(())
    }

    fn events(&self) -> Vec<Event> {
        self.log().events()
    }

    fn partition(&self, a: &str, b: &str) -> Result<Vec<u64>, WorldError> {
        let plan = self
            .shared
            .plan
            .get()
            .ok_or_else(|| WorldError("the test's network is not up".into()))?;
        let label = format!("partition {a}|{b}");
        let mut handles = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            // Every address `from` reaches `to` at: its relays in `from`'s namespace.
            let addrs: Vec<String> = plan
                .edges()
                .into_iter()
                .filter(|e| e.consumer == from && e.service == to)
                .flat_map(|e| e.listen)
                .map(|addr| escape_glob(&addr.to_string()))
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let rules = [FaultRule {
                target: "connect".into(),
                kind: faultbox_shim::rule::TargetKind::Syscall,
                action: Action::Deny(libc::ECONNREFUSED),
                probability: 100.0,
                path_glob: Some(format!("{{{}}}", addrs.join(","))),
                trigger: faultbox_shim::rule::Trigger::Always,
                label: Some(label.clone()),
            }];
            match self.fault_start(from, &rules) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in handles {
                        let _ = self.fault_remove(h);
                    }
                    return Err(e);
                }
            }
        }
        // What is already open between them is cut too.
        if let Some(net) = self.net.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            net.relays.cut(a, b);
        }
        Ok(handles)
    }

    fn observed(&self, service: &str) -> Option<Vec<String>> {
        let state = self.service(service).ok()?;
        Some(state.covered.iter().map(|c| c.name.clone()).collect())
    }
}

/// `text` as a glob that matches only itself (`[::1]:80` has a character class).
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn describe_action(a: &Action) -> String {
    match a {
        Action::Deny(e) => format!("deny({})", faultbox_shim::errno::name(*e).unwrap_or("?")),
        Action::Delay(d) => format!("delay({})", faultbox_shim::rule::format_duration(*d)),
    }
}
