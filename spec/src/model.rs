//! The topology a spec declares, as plain data: what the executor needs to start
//! services and what `--dry-run` prints. Built while the spec's top level runs.

use std::collections::BTreeMap;
use std::time::Duration;

/// Where in a spec something was declared.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub protocol: String,
    pub port: u16,
    /// `spec=` as written; for `grpc`, the `.proto`'s absolute path (checked at load).
    pub spec: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthcheckKind {
    /// Connect to `host:port`.
    Tcp,
    /// GET `host:port/path`; 2xx or 3xx is healthy.
    Http,
    /// `ready()`: a round trip in the interface's own protocol, logged in with the
    /// service's credentials. `service()` fills in the interface (the first declared
    /// when `ready()` names none) and sets the target to its `localhost:PORT`.
    Ready { interface: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    pub kind: HealthcheckKind,
    /// As written: `localhost:5432` or `localhost:8080/health`.
    pub target: String,
    pub timeout: Duration,
}

/// A named operation: syscalls, optionally narrowed to a path glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub syscalls: Vec<String>,
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub binary: String,
    pub args: Vec<String>,
    /// User-defined variables, in declaration order.
    pub env: Vec<(String, String)>,
    pub interfaces: Vec<Interface>,
    pub depends_on: Vec<String>,
    pub healthcheck: Option<Healthcheck>,
    pub ops: BTreeMap<String, Op>,
    /// Who the service runs as (`service(user=)`): `name`, `uid`, `name:group` or
    /// `uid:gid`; Faultbox's own user when `None`.
    pub user: Option<String>,
    /// A container service's image (`image=`, or the tag Faultbox builds `build=` as).
    pub container: Option<Container>,
    /// `observe=[...]`: where the service's non-syscall events come from.
    pub observe: Vec<Source>,
    pub declared_at: Location,
}

/// One event source of `observe=[...]`, resolved at load.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub kind: SourceKind,
    /// How each line or message becomes the event's `data`; `None` keeps the raw text
    /// (`data` is then `{"line": ...}` or the source's own fields).
    pub decoder: Option<crate::decode::Decoder>,
    pub declared_at: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceKind {
    Stdout,
    Stderr,
    /// `tail(path=)`: lines appended to a file, relative to the declaring file's
    /// directory (absolute after load).
    Tail {
        path: String,
    },
    /// `poll(url=, interval=)`: a GET every `interval`.
    Poll {
        url: String,
        interval: Duration,
    },
    /// `wal_stream(slot=)`: PostgreSQL logical decoding on the observed service's
    /// postgres interface.
    Wal {
        slot: String,
        /// Tables to include (`tables=`); all when empty.
        tables: Vec<String>,
        /// The interface's port inside the service's namespace.
        port: u16,
    },
    /// `topic(broker=, topic=, group=)`: messages of a Kafka topic or NATS subject.
    Topic {
        /// `kafka` or `nats`.
        protocol: String,
        /// The service whose interface the broker address belongs to.
        service: String,
        port: u16,
        topic: String,
        /// Consumer group (Kafka) or queue group (NATS); a group of the test's own
        /// when `None`.
        group: Option<String>,
    },
}

impl SourceKind {
    /// The `type` of the events the source emits.
    pub fn event_type(&self) -> &'static str {
        match self {
            SourceKind::Stdout => "stdout",
            SourceKind::Stderr => "stderr",
            SourceKind::Tail { .. } => "tail",
            SourceKind::Poll { .. } => "poll",
            SourceKind::Wal { .. } => "wal",
            SourceKind::Topic { .. } => "topic",
        }
    }
}

/// Where a container service's image comes from, and what it mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub source: ImageSource,
    /// `volumes={host: container}`: host paths as written (relative ones are relative
    /// to the declaring file), in declaration order.
    pub volumes: Vec<(String, String)>,
    /// `seccomp=False`: no filter and no hand-off for this container; faults and
    /// traces on it are refused at load.
    pub seccomp: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// An image present on the host.
    Image(String),
    /// A directory with a Dockerfile, as written.
    Build(String),
}

impl Service {
    /// The directory of the file that declared the service: its relative binary path
    /// and its working directory are taken from there, also when another file
    /// `load()`s the declaration.
    pub fn home(&self) -> std::path::PathBuf {
        let dir = std::path::Path::new(&self.declared_at.file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }

    /// A path as the spec wrote it, relative to the declaring file's directory.
    pub fn from_home(&self, path: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.home().join(p)
        }
    }

    /// The binary to execute: a relative path with a `/` is relative to the declaring
    /// file's directory; a bare name is left for a `PATH` lookup.
    pub fn binary_path(&self) -> String {
        if self.binary.contains('/') && !self.binary.starts_with('/') {
            self.home()
                .join(&self.binary)
                .to_string_lossy()
                .into_owned()
        } else {
            self.binary.clone()
        }
    }

    /// `FAULTBOX_<SVC>_<IFACE>_{ADDR,HOST,PORT}` for every interface, as the spec
    /// reference gives them (`localhost:5432`): they reach the service's relay.
    pub fn injected_env(&self) -> Vec<(String, String)> {
        let key = |s: &str| {
            s.to_ascii_uppercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        };
        let mut out = Vec::new();
        for i in &self.interfaces {
            let prefix = format!("FAULTBOX_{}_{}", key(&self.name), key(&i.name));
            out.push((format!("{prefix}_ADDR"), format!("localhost:{}", i.port)));
            out.push((format!("{prefix}_HOST"), "localhost".to_string()));
            out.push((format!("{prefix}_PORT"), i.port.to_string()));
        }
        out
    }
}

/// A test the plan runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Test {
    /// `test_<name>`.
    pub name: String,
    /// The Starlark function to call (for `def test_*`).
    pub function: String,
    /// For tests registered by `scenario()`, `fault_scenario()` or `fault_matrix()`:
    /// the entry in the module's registry.
    pub registered: Option<usize>,
    /// For matrix cells: (scenario, fault assumption).
    pub cell: Option<(String, String)>,
    /// A probe without an oracle (a `scenario()`, or a fault scenario without
    /// `expect=`): it is not meant to assert anything.
    pub probe: bool,
    /// Its own time limit (a fault scenario's `timeout=`), in place of the run's.
    pub timeout: Option<Duration>,
    pub declared_at: Location,
}

/// A function registered with `scenario()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioDecl {
    /// The function's name.
    pub name: String,
    /// The file that defines it.
    pub file: String,
}

/// A `fault_matrix()`: its axes and cells, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub scenarios: Vec<String>,
    pub faults: Vec<String>,
    /// (scenario, fault, test name), the name `None` for excluded cells.
    pub cells: Vec<(String, String, Option<String>)>,
}

/// Everything a spec declares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spec {
    /// In start order: dependencies first, ties broken by name.
    pub services: Vec<Service>,
    pub tests: Vec<Test>,
    /// Syscall and op names each service may be faulted or traced on, from every
    /// `fault*`/`trace*` call in the spec; key `*` for calls whose target is dynamic.
    pub faultable: BTreeMap<String, std::collections::BTreeSet<String>>,
    pub matrices: Vec<Matrix>,
    /// `scenario()` registrations of the spec file, in order.
    pub scenarios: Vec<ScenarioDecl>,
}

impl Spec {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The syscall names (families and aliases included) `service`'s filter must
    /// cover: its faultable names with ops replaced by their syscalls. Empty means the
    /// service runs without a filter.
    pub fn filter_syscalls(&self, service: &str) -> Vec<String> {
        let Some(svc) = self.service(service) else {
            return Vec::new();
        };
        let mut out = std::collections::BTreeSet::new();
        // Keys are service names, `*` for any service, or a query's service glob.
        let keys = self.faultable.iter().filter(|(key, _)| {
            key.as_str() == service
                || key.as_str() == crate::analysis::ANY_SERVICE
                || (key.contains('*') && crate::runtime::glob_match(key, service))
        });
        for (_, names) in keys {
            for name in names {
                match svc.ops.get(name) {
                    Some(op) => out.extend(op.syscalls.iter().cloned()),
                    None if crate::faults::check_syscall(name).is_ok() => {
                        out.insert(name.clone());
                    }
                    None => {}
                }
            }
        }
        out.into_iter().collect()
    }
}
