//! The Starlark value types of the spec language: what `service()`, `interface()`,
//! `tcp()`/`http()`, `deny()`/`delay()` and `op()` return, and the interface references
//! and step methods reached through a service's attributes.
//!
//! They hold plain data only (no Starlark values inside), so they freeze trivially
//! and frozen modules can be shared across test threads.

use std::time::Duration;

use allocative::Allocative;
use starlark::any::ProvidesStaticType;
use starlark::eval::{Arguments, Evaluator};
use starlark::starlark_simple_value;
use starlark::values::{Heap, NoSerialize, StarlarkValue, Value};
use starlark_derive::{starlark_module, starlark_value, StarlarkPagablePanic};

use crate::model::{Healthcheck, Interface, Op};

/// `interface(name, protocol, port)`.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("interface({:?}, {:?}, {})", _0.name, _0.protocol, _0.port)]
pub struct InterfaceDecl(#[allocative(skip)] pub Interface);
starlark_simple_value!(InterfaceDecl);

#[starlark_value(type = "interface")]
impl<'v> StarlarkValue<'v> for InterfaceDecl {}

/// A service declared with `service()`.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("service({:?})", name)]
pub struct ServiceValue {
    pub name: String,
    #[allocative(skip)]
    pub interfaces: Vec<Interface>,
}
starlark_simple_value!(ServiceValue);

impl ServiceValue {
    fn interface(&self, name: &str) -> Option<InterfaceRef> {
        self.interfaces
            .iter()
            .find(|i| i.name == name)
            .map(|i| InterfaceRef {
                service: self.name.clone(),
                interface: i.clone(),
            })
    }
}

#[starlark_value(type = "service")]
impl<'v> StarlarkValue<'v> for ServiceValue {
    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        if attribute == "name" {
            return Some(heap.alloc(self.name.as_str()));
        }
        if let Some(r) = self.interface(attribute) {
            return Some(heap.alloc(r));
        }
        // A single-interface service exposes its interface's step methods.
        if let [only] = self.interfaces.as_slice() {
            let r = InterfaceRef {
                service: self.name.clone(),
                interface: only.clone(),
            };
            return r.get_attr(attribute, heap);
        }
        None
    }

    fn dir_attr(&self) -> Vec<String> {
        let mut v = vec!["name".to_string()];
        v.extend(self.interfaces.iter().map(|i| i.name.clone()));
        if let [only] = self.interfaces.as_slice() {
            v.extend(methods(&only.protocol).iter().map(|m| m.to_string()));
        }
        v
    }
}

/// The step methods a protocol offers.
pub fn methods(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "http" => &["get", "post", "put", "delete", "patch"],
        "tcp" => &["send"],
        other => crate::steps::methods(other),
    }
}

/// `service.interface`: an address and the protocol's step methods.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("{}.{}", service, interface.name)]
pub struct InterfaceRef {
    pub service: String,
    #[allocative(skip)]
    pub interface: Interface,
}
starlark_simple_value!(InterfaceRef);

#[starlark_value(type = "interface_ref")]
impl<'v> StarlarkValue<'v> for InterfaceRef {
    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        let port = self.interface.port;
        Some(match attribute {
            // Both reach the service's relay from any consumer; the name also when
            // two services share a port, where `localhost` means neither.
            "addr" => heap.alloc(format!("localhost:{port}")),
            "internal_addr" => heap.alloc(format!("{}:{port}", self.service)),
            "host" => heap.alloc("localhost"),
            "port" => heap.alloc(i32::from(port)),
            "name" => heap.alloc(self.interface.name.as_str()),
            "protocol" => heap.alloc(self.interface.protocol.as_str()),
            m if methods(&self.interface.protocol).contains(&m) => heap.alloc(StepMethod {
                target: self.clone(),
                method: m.to_string(),
            }),
            _ => return None,
        })
    }

    fn dir_attr(&self) -> Vec<String> {
        let mut v: Vec<String> = ["addr", "host", "port", "internal_addr", "name", "protocol"]
            .map(String::from)
            .to_vec();
        v.extend(
            methods(&self.interface.protocol)
                .iter()
                .map(|m| m.to_string()),
        );
        v
    }
}

/// A bound step method: `api.post`, `db.main.send`.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("{}.{}", target, method)]
pub struct StepMethod {
    pub target: InterfaceRef,
    pub method: String,
}
starlark_simple_value!(StepMethod);

#[starlark_value(type = "step_method")]
impl<'v> StarlarkValue<'v> for StepMethod {
    fn invoke(
        &self,
        _me: Value<'v>,
        args: &Arguments<'v, '_>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        crate::runtime::invoke_step(self, args, eval)
    }
}

/// `tcp(addr)` / `http(url)`.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("healthcheck({:?})", _0.target)]
pub struct HealthcheckValue(#[allocative(skip)] pub Healthcheck);
starlark_simple_value!(HealthcheckValue);

#[starlark_value(type = "healthcheck")]
impl<'v> StarlarkValue<'v> for HealthcheckValue {}

/// What `deny()` and `delay()` describe.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    Deny(i32),
    Delay(Duration),
}

/// `deny(errno, probability=, label=)` / `delay(duration, probability=, label=)`.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("{}", describe_fault(self))]
pub struct FaultValue {
    #[allocative(skip)]
    pub action: FaultAction,
    pub probability: f64,
    pub label: Option<String>,
}
starlark_simple_value!(FaultValue);

fn describe_fault(f: &FaultValue) -> String {
    match &f.action {
        FaultAction::Deny(e) => format!("deny({})", faultbox_shim::errno::name(*e).unwrap_or("?")),
        FaultAction::Delay(d) => format!("delay({})", faultbox_shim::rule::format_duration(*d)),
    }
}

#[starlark_value(type = "fault")]
impl<'v> StarlarkValue<'v> for FaultValue {
    /// Hashable, so that fault assumptions holding these can key `overrides=`.
    fn write_hash(
        &self,
        hasher: &mut starlark::collections::StarlarkHasher,
    ) -> starlark::Result<()> {
        use std::hash::Hash;
        describe_fault(self).hash(hasher);
        self.probability.to_bits().hash(hasher);
        self.label.hash(hasher);
        Ok(())
    }
}

/// `op(syscalls=[...], path=)`.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("op({:?})", _0.syscalls)]
pub struct OpValue(#[allocative(skip)] pub Op);
starlark_simple_value!(OpValue);

#[starlark_value(type = "op")]
impl<'v> StarlarkValue<'v> for OpValue {}

/// What an HTTP step returns.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("response(status={}, body={:?}, duration_ms={})", _0.status, _0.body, _0.duration_ms)]
pub struct ResponseValue(#[allocative(skip)] pub crate::world::StepResult);
starlark_simple_value!(ResponseValue);

#[starlark_value(type = "response")]
impl<'v> StarlarkValue<'v> for ResponseValue {
    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        let r = &self.0;
        Some(match attribute {
            "status" => heap.alloc(r.status),
            "body" => heap.alloc(r.body.as_str()),
            "ok" => Value::new_bool(r.ok),
            "error" => heap.alloc(r.error.as_str()),
            "duration_ms" => heap.alloc(r.duration_ms),
            "data" => decode(&r.body, heap),
            _ => return None,
        })
    }

    fn dir_attr(&self) -> Vec<String> {
        ["status", "body", "data", "ok", "error", "duration_ms"]
            .map(String::from)
            .to_vec()
    }
}

/// A body decoded from JSON, or the raw string when it is not JSON.
fn decode<'v>(body: &str, heap: Heap<'v>) -> Value<'v> {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => heap.alloc(v),
        Err(_) => heap.alloc(body),
    }
}

/// An event of the trace, as queries and `where=` lambdas see it.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("event(#{} {} {})", _0.seq, _0.service, _0.event_type)]
pub struct EventValue(
    #[allocative(skip)] pub crate::world::Event,
    /// In `assert_before(then=)`: the event `first=` matched.
    #[allocative(skip)]
    pub Option<Box<crate::world::Event>>,
);
starlark_simple_value!(EventValue);

#[starlark_value(type = "event")]
impl<'v> StarlarkValue<'v> for EventValue {
    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        let e = &self.0;
        match attribute {
            "first" => Some(match &self.1 {
                Some(f) => heap.alloc(EventValue((**f).clone(), None)),
                None => Value::new_none(),
            }),
            // Events of different kinds carry different fields: a field an event lacks
            // reads as None, so one predicate can scan a mixed trace.
            other => Some(
                self.lookup(other, heap)
                    .unwrap_or_else(|| match e.fields.get(other) {
                        Some(v) => heap.alloc(v.as_str()),
                        None => Value::new_none(),
                    }),
            ),
        }
    }

    fn dir_attr(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "seq",
            "service",
            "type",
            "event_type",
            "data",
            "fields",
            "first",
            "get",
        ]
        .map(String::from)
        .to_vec();
        v.extend(self.0.fields.keys().map(|k| k.to_string()));
        v
    }

    /// `e["decision"]`, as the reference's monitors read events: the event's own
    /// keys, then its fields, then the keys of its decoded `data`.
    fn at(&self, index: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let key = index.unpack_str().ok_or_else(|| {
            starlark::Error::new_other(anyhow::anyhow!(
                "an event is indexed by a string key, not {}",
                index.get_type()
            ))
        })?;
        self.lookup(key, heap).ok_or_else(|| {
            starlark::Error::new_other(anyhow::anyhow!(
                "event #{} ({}) has no key {key:?}; e.get({key:?}) gives None instead",
                self.0.seq,
                self.0.event_type
            ))
        })
    }

    fn is_in(&self, other: Value<'v>) -> starlark::Result<bool> {
        Ok(other.unpack_str().is_some_and(|k| self.has_key(k)))
    }

    fn get_methods() -> Option<&'static starlark::environment::Methods> {
        static RES: starlark::environment::MethodsStatic =
            starlark::environment::MethodsStatic::new("event", event_methods);
        Some(RES.methods())
    }
}

impl EventValue {
    fn data(&self) -> Option<serde_json::Value> {
        self.0
            .fields
            .get("data")
            .and_then(|d| serde_json::from_str(d).ok())
    }

    fn has_key(&self, key: &str) -> bool {
        matches!(
            key,
            "seq" | "service" | "type" | "event_type" | "fields" | "data"
        ) || self.0.fields.contains_key(key)
            || self
                .data()
                .is_some_and(|d| d.as_object().is_some_and(|o| o.contains_key(key)))
    }

    /// The value under `key`, as `e[key]` and `e.get(key)` see it.
    fn lookup<'v>(&self, key: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        let e = &self.0;
        let fields = || {
            let map: serde_json::Map<String, serde_json::Value> = e
                .fields
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            heap.alloc(map)
        };
        Some(match key {
            "seq" => heap.alloc(e.seq as i64),
            "service" => heap.alloc(e.service.as_str()),
            "type" => heap.alloc(e.kind.as_str()),
            "event_type" => heap.alloc(e.event_type.as_str()),
            "fields" => fields(),
            "data" => match e.fields.get("data") {
                Some(d) => decode(d, heap),
                None => fields(),
            },
            other => match e.fields.get(other) {
                Some(v) => heap.alloc(v.as_str()),
                None => match self.data()? {
                    serde_json::Value::Object(mut o) => heap.alloc(o.remove(other)?),
                    _ => return None,
                },
            },
        })
    }
}

#[starlark_module]
fn event_methods(builder: &mut starlark::environment::MethodsBuilder) {
    /// `e.get(key, default=None)`: like a dict's.
    fn get<'v>(
        this: &EventValue,
        #[starlark(require = pos)] key: &str,
        #[starlark(require = pos)] default: Option<Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        Ok(this
            .lookup(key, heap)
            .unwrap_or_else(|| default.unwrap_or_else(Value::new_none)))
    }
}

/// The answer of a step started inside `parallel()`: resolved when `parallel()`
/// returns, or earlier if the branch reads it (which then lets all held calls go).
#[derive(
    ProvidesStaticType, NoSerialize, Allocative, StarlarkPagablePanic, derive_more::Display,
)]
#[display("response(pending)")]
pub struct LazyResponse {
    handle: u64,
    #[allocative(skip)]
    world: std::sync::Arc<dyn crate::world::World + Send + Sync>,
    #[allocative(skip)]
    result: std::sync::OnceLock<Result<crate::world::StepResult, String>>,
}
starlark_simple_value!(LazyResponse);

impl std::fmt::Debug for LazyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyResponse({})", self.handle)
    }
}

impl LazyResponse {
    pub fn new(handle: u64, world: std::sync::Arc<dyn crate::world::World + Send + Sync>) -> Self {
        LazyResponse {
            handle,
            world,
            result: std::sync::OnceLock::new(),
        }
    }

    /// Waits for the answer.
    pub fn force(&self) -> Result<crate::world::StepResult, String> {
        self.result
            .get_or_init(|| {
                self.world.parallel_open();
                self.world
                    .step_finish(self.handle)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

#[starlark_value(type = "response")]
impl<'v> StarlarkValue<'v> for LazyResponse {
    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        let r = match self.force() {
            Ok(r) => r,
            Err(e) => crate::world::StepResult {
                error: e,
                ..Default::default()
            },
        };
        ResponseValue(r).get_attr(attribute, heap)
    }

    fn dir_attr(&self) -> Vec<String> {
        ResponseValue(Default::default()).dir_attr()
    }
}

/// The reply of a `tcp` step started inside `parallel()`: a string once `parallel()`
/// returns. Used inside its branch, it waits for the reply (letting all held calls
/// go) and behaves as the string.
#[derive(
    ProvidesStaticType, NoSerialize, Allocative, StarlarkPagablePanic, derive_more::Display,
)]
#[display("string(pending)")]
pub struct LazyText(pub LazyResponse);
starlark_simple_value!(LazyText);

impl std::fmt::Debug for LazyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyText({})", self.0.handle)
    }
}

impl LazyText {
    /// The reply line; empty if the step failed, as outside `parallel()`.
    pub fn text(&self) -> String {
        self.0.force().map(|r| r.body).unwrap_or_default()
    }
}

#[starlark_value(type = "string")]
impl<'v> StarlarkValue<'v> for LazyText {
    fn collect_repr(&self, collector: &mut String) {
        collector.push_str(&format!("{:?}", self.text()));
    }

    fn collect_str(&self, collector: &mut String) {
        collector.push_str(&self.text());
    }

    fn to_bool(&self) -> bool {
        !self.text().is_empty()
    }

    fn equals(&self, other: Value<'v>) -> starlark::Result<bool> {
        Ok(other.unpack_str() == Some(self.text().as_str()))
    }

    fn compare(&self, other: Value<'v>) -> starlark::Result<std::cmp::Ordering> {
        match other.unpack_str() {
            Some(o) => Ok(self.text().as_str().cmp(o)),
            None => Err(starlark::Error::new_other(anyhow::anyhow!(
                "cannot compare string with {}",
                other.get_type()
            ))),
        }
    }

    fn length(&self) -> starlark::Result<i32> {
        Ok(self.text().chars().count() as i32)
    }

    fn is_in(&self, other: Value<'v>) -> starlark::Result<bool> {
        match other.unpack_str() {
            Some(o) => Ok(self.text().contains(o)),
            None => Err(starlark::Error::new_other(anyhow::anyhow!(
                "'in <string>' requires string as left operand, not {}",
                other.get_type()
            ))),
        }
    }

    fn at(&self, index: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        heap.alloc(self.text()).at(index, heap)
    }

    fn add(&self, rhs: Value<'v>, heap: Heap<'v>) -> Option<starlark::Result<Value<'v>>> {
        Some(heap.alloc(self.text()).add(rhs, heap))
    }

    fn radd(&self, lhs: Value<'v>, heap: Heap<'v>) -> Option<starlark::Result<Value<'v>>> {
        Some(lhs.add(heap.alloc(self.text()), heap))
    }

    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        heap.alloc(self.text())
            .get_attr(attribute, heap)
            .ok()
            .flatten()
    }
}
