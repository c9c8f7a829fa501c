//! The boundary between the spec language and everything with effects. A test body
//! reaches services, faults and the event log only through [`World`]; the executor
//! implements it on real processes, and unit tests implement it in memory.

use faultbox_shim::rule::FaultRule;

pub use crate::event::{Clock, Fields, Name, SmallMap};
use crate::limits::memory::paused;

/// The name the test driver goes by: its events' `service`, and the consumer of its
/// steps (`source="test"`).
pub const DRIVER: &str = "test";

/// One step call: `api.post(path=..., body=...)`, `db.main.send(data=...)`,
/// `db.main.query(sql=...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepCall {
    pub service: String,
    pub interface: String,
    pub protocol: String,
    pub port: u16,
    pub method: String,
    pub path: String,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// How long the step may take: 30 s, or less when a scenario's `timeout=` is near.
    pub timeout: std::time::Duration,
    /// For protocols past `http` and `tcp`: what to ask the service.
    pub op: Option<faultbox_protocols::client::Operation>,
    /// Credentials the step's keywords gave (`user=`, `password=`, `database=`); the
    /// world fills in the rest from the service's environment.
    pub credentials: faultbox_protocols::client::Credentials,
}

/// An HTTP-style result; `tcp` steps fill `body` with the reply line, the other
/// protocols with their answer as JSON (`status` is 0 for them, gRPC's `grpc-status` for `grpc`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StepResult {
    pub status: i64,
    pub body: String,
    pub ok: bool,
    pub error: String,
    pub duration_ms: i64,
}

/// One event of the trace.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Nanoseconds since the test started.
    pub timestamp_ns: u64,
    pub service: Name,
    /// `syscall`, `service_started` / `service_ready` / `service_stopped`,
    /// `step_send`, `step_recv`, `fault`.
    pub kind: Name,
    /// Dotted: `syscall.write`, `lifecycle.started`, `step_send.api`.
    pub event_type: Name,
    /// The service the event concerns: its own name for a service's events, the
    /// target's for the driver's steps and fault changes.
    pub partition_key: Name,
    pub fields: Fields,
    pub vector_clock: Clock,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct WorldError(pub String);

/// What a protocol-level rule does to a request it matches.
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyAction {
    /// `response(...)`: a success in the server's place.
    Response {
        status: Option<i64>,
        body: Option<String>,
        value: Option<String>,
    },
    /// `error(...)`: a protocol error in the server's place.
    Error {
        message: Option<String>,
        status: Option<faultbox_protocols::Code>,
    },
    /// `delay(delay=...)`: hold the request, then forward it.
    Delay(std::time::Duration),
    /// `drop(...)`: close the connection.
    Drop,
    /// `duplicate(...)`: forward the message twice.
    Duplicate,
}

impl ProxyAction {
    pub fn kind(&self) -> faultbox_protocols::ActionKind {
        use faultbox_protocols::ActionKind as A;
        match self {
            ProxyAction::Response { .. } => A::Response,
            ProxyAction::Error { .. } => A::Error,
            ProxyAction::Delay(_) => A::Delay,
            ProxyAction::Drop => A::Drop,
            ProxyAction::Duplicate => A::Duplicate,
        }
    }
}

/// A protocol-level rule: an action on the requests whose fields match every
/// pattern (globs; `query` ignores case and whitespace runs).
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyRule {
    pub action: ProxyAction,
    /// (key, glob): `method`, `path`, `query`, `command`, `key`, `topic`.
    pub matches: Vec<(String, String)>,
    /// Chance to act, in percent.
    pub probability: f64,
    pub label: Option<String>,
}

impl std::fmt::Display for ProxyRule {
    /// The form the reports use: `error(query="INSERT*", message="disk full")`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .matches
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        match &self.action {
            ProxyAction::Response {
                status,
                body,
                value,
            } => {
                parts.extend(status.map(|s| format!("status={s}")));
                parts.extend(body.as_ref().map(|b| format!("body={b:?}")));
                parts.extend(value.as_ref().map(|v| format!("value={v:?}")));
            }
            ProxyAction::Error { message, status } => {
                parts.extend(message.as_ref().map(|m| format!("message={m:?}")));
                parts.extend(status.as_ref().map(|s| match s {
                    faultbox_protocols::Code::Number(n) => format!("status={n}"),
                    faultbox_protocols::Code::Text(t) => format!("status={t:?}"),
                }));
            }
            ProxyAction::Delay(d) => parts.push(format!(
                "delay={:?}",
                faultbox_shim::rule::format_duration(*d)
            )),
            ProxyAction::Drop | ProxyAction::Duplicate => {}
        }
        if self.probability < 100.0 {
            parts.push(format!("probability=\"{}%\"", self.probability));
        }
        write!(f, "{}({})", self.action.kind().name(), parts.join(", "))
    }
}

/// What a test body can do to the system under test.
pub trait World {
    /// Runs one step against a service's interface.
    fn step(&self, call: &StepCall) -> Result<StepResult, WorldError>;
    /// Adds `rules` to `service`'s active faults and returns a handle to remove them.
    /// Fails if the service's filter does not cover a rule's syscalls: a declared
    /// fault is never silently inert.
    fn fault_start(&self, service: &str, rules: &[FaultRule]) -> Result<u64, WorldError>;
    /// Records `service`'s calls of `syscalls` as events without faulting them, until
    /// the returned handle is removed. Fails if the filter does not cover them.
    fn trace_start(&self, service: &str, syscalls: &[String]) -> Result<u64, WorldError>;
    /// Removes the faults or trace added under `handle`.
    fn fault_remove(&self, handle: u64) -> Result<(), WorldError>;
    /// Where the spec asked for the faults or rules under `handle` (the `fault()`,
    /// `fault_start()` or `fault_assumption()` call), so a diagnostic about them can
    /// name the line to change.
    fn fault_declared_at(&self, _handle: u64, _at: &crate::model::Location) {}
    /// Ends every trace of `service`.
    fn trace_stop(&self, service: &str) -> Result<(), WorldError>;
    /// Removes every fault of `service`.
    fn fault_stop(&self, service: &str) -> Result<(), WorldError>;
    /// The events recorded so far, in sequence order.
    fn events(&self) -> Vec<Event>;
    /// Lets every event source catch up: what a service wrote, committed or
    /// published before the call is in the log when it returns (bounded in time).
    fn sync_sources(&self) {}
    /// The kernel syscalls `service`'s filter notifies, whose calls all become
    /// events; `None` when this world cannot tell (queries are then not checked).
    fn observed(&self, _service: &str) -> Option<Vec<String>> {
        None
    }

    /// Starts a step without waiting for its answer (inside `parallel()`).
    fn step_start(&self, _call: &StepCall) -> Result<u64, WorldError> {
        Err(WorldError("this world runs steps one at a time".into()))
    }
    /// Waits for a step started with `step_start`.
    fn step_finish(&self, _handle: u64) -> Result<StepResult, WorldError> {
        Err(WorldError("no such step".into()))
    }
    /// Starts holding the services' calls so their order can be chosen.
    fn parallel_begin(&self) -> Result<(), WorldError> {
        Ok(())
    }
    /// Releases held calls in the chosen order until every started step has its
    /// answer, then stops holding.
    fn parallel_release(&self) -> Result<(), WorldError> {
        Ok(())
    }
    /// Stops holding and releases everything at once.
    fn parallel_open(&self) {}
    /// Excludes services from ordering control for the rest of the test.
    fn nondet(&self, _services: &[String]) {}
    /// Adds protocol-level `rules` on `service`'s `interface`, for the connections of
    /// `source` only when given (a service name, or `test` for the driver's steps),
    /// and returns a handle to remove them with `fault_remove`.
    fn proxy_start(
        &self,
        _service: &str,
        _interface: &str,
        _source: Option<&str>,
        _rules: &[ProxyRule],
    ) -> Result<u64, WorldError> {
        Err(WorldError(
            "this world has no relays for protocol faults".into(),
        ))
    }
    /// Removes every protocol-level rule of `service`'s `interface`.
    fn proxy_stop(&self, _service: &str, _interface: &str) -> Result<(), WorldError> {
        Ok(())
    }
    /// Cuts `a` and `b` apart, both ways: their open connections are closed and new
    /// ones refused, until every returned handle is removed with `fault_remove`.
    fn partition(&self, _a: &str, _b: &str) -> Result<Vec<u64>, WorldError> {
        Err(WorldError("this world has no network to partition".into()))
    }
}

/// The world as a test body sees it: every call runs with the body's memory budget
/// paused, since what the host allocates for a call (a step's buffers, a copy of the
/// event log) is not the spec's to pay for, and a thread must never be stopped while
/// it holds the host's locks.
pub(crate) struct Host(pub std::sync::Arc<dyn World + Send + Sync>);

impl World for Host {
    fn step(&self, call: &StepCall) -> Result<StepResult, WorldError> {
        paused(|| self.0.step(call))
    }
    fn fault_start(&self, service: &str, rules: &[FaultRule]) -> Result<u64, WorldError> {
        paused(|| self.0.fault_start(service, rules))
    }
    fn trace_start(&self, service: &str, syscalls: &[String]) -> Result<u64, WorldError> {
        paused(|| self.0.trace_start(service, syscalls))
    }
    fn fault_remove(&self, handle: u64) -> Result<(), WorldError> {
        paused(|| self.0.fault_remove(handle))
    }
    fn fault_declared_at(&self, handle: u64, at: &crate::model::Location) {
        paused(|| self.0.fault_declared_at(handle, at))
    }
    fn trace_stop(&self, service: &str) -> Result<(), WorldError> {
        paused(|| self.0.trace_stop(service))
    }
    fn fault_stop(&self, service: &str) -> Result<(), WorldError> {
        paused(|| self.0.fault_stop(service))
    }
    fn events(&self) -> Vec<Event> {
        paused(|| self.0.events())
    }
    fn sync_sources(&self) {
        paused(|| self.0.sync_sources())
    }
    fn observed(&self, service: &str) -> Option<Vec<String>> {
        paused(|| self.0.observed(service))
    }
    fn step_start(&self, call: &StepCall) -> Result<u64, WorldError> {
        paused(|| self.0.step_start(call))
    }
    fn step_finish(&self, handle: u64) -> Result<StepResult, WorldError> {
        paused(|| self.0.step_finish(handle))
    }
    fn parallel_begin(&self) -> Result<(), WorldError> {
        paused(|| self.0.parallel_begin())
    }
    fn parallel_release(&self) -> Result<(), WorldError> {
        paused(|| self.0.parallel_release())
    }
    fn parallel_open(&self) {
        paused(|| self.0.parallel_open())
    }
    fn nondet(&self, services: &[String]) {
        paused(|| self.0.nondet(services))
    }
    fn partition(&self, a: &str, b: &str) -> Result<Vec<u64>, WorldError> {
        paused(|| self.0.partition(a, b))
    }
    fn proxy_start(
        &self,
        service: &str,
        interface: &str,
        source: Option<&str>,
        rules: &[ProxyRule],
    ) -> Result<u64, WorldError> {
        paused(|| self.0.proxy_start(service, interface, source, rules))
    }
    fn proxy_stop(&self, service: &str, interface: &str) -> Result<(), WorldError> {
        paused(|| self.0.proxy_stop(service, interface))
    }
}
