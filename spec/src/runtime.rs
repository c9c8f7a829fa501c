//! Host state of an evaluation and the builtins that read or change it.
//!
//! During loading, the builtins record the topology ([`Declarations`]); `load()`ed
//! files share the same record. Every builtin checks its arguments and fails with a
//! message that Starlark places at the calling line.

// service() takes the reference's keyword arguments one by one, and the functions
// #[starlark_module] generates carry them all.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use starlark::any::ProvidesStaticType;
use starlark::environment::GlobalsBuilder;
use starlark::eval::{Arguments, Evaluator};
use starlark::values::dict::DictRef;
use starlark::values::list::ListRef;
use starlark::values::none::NoneType;
use starlark::values::tuple::UnpackTuple;
use starlark::values::{Value, ValueLike};
use starlark_derive::starlark_module;

use faultbox_shim::rule::{Action, FaultRule, TargetKind, Trigger};
use starlark::collections::SmallMap;

use crate::model::{
    Container, Healthcheck, HealthcheckKind, ImageSource, Interface, Location, Op, Service,
};
use crate::values::{
    EventValue, FaultAction, FaultValue, HealthcheckValue, InterfaceDecl, OpValue, ResponseValue,
    ServiceValue, StepMethod,
};
use crate::world::{Event, StepCall};

/// How long one step may take at most.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Default timeout of `tcp()`, `http()` and `ready()` healthchecks.
pub const DEFAULT_HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the spec's top level declared, in declaration order.
#[derive(Default, Debug)]
pub struct Declarations {
    pub services: Vec<Service>,
}

/// The host state reachable from builtins through `Evaluator::extra`.
#[derive(ProvidesStaticType, Default)]
pub struct Runtime {
    pub declared: RefCell<Declarations>,
    /// Assertions evaluated so far (passing or not), for the TEST_NO_ASSERTIONS
    /// diagnostic.
    pub assertions: std::cell::Cell<u64>,
    /// The last event delivered to monitors.
    pub monitored: std::cell::Cell<u64>,
    /// Set while `parallel()` evaluates its branches: HTTP steps start without waiting.
    pub parallel: std::cell::Cell<bool>,
    /// When the running fault scenario's `timeout=` expires.
    pub deadline: std::cell::Cell<Option<(std::time::Instant, Duration)>>,
    /// Set while a test body runs: the services and the World they live in.
    pub test: Option<TestContext>,
    /// The running test's limits.
    pub guard: Option<std::rc::Rc<crate::limits::Guard>>,
}

/// What a running test needs beyond the Starlark module.
pub struct TestContext {
    pub services: Vec<Service>,
    pub world: std::sync::Arc<dyn crate::world::World + Send + Sync>,
}

impl Runtime {
    /// An error if the running test must stop now (time limit, cancellation, memory):
    /// builtins that wait call this, so they never wait past it.
    pub fn halt(&self) -> anyhow::Result<()> {
        match self.guard.as_ref().and_then(|g| g.check()) {
            Some(stop) => Err(anyhow!("{}", stop.describe("the test"))),
            None => Ok(()),
        }
    }

    /// How long a builtin may wait at most: the test's time left.
    pub fn time_left(&self, want: Duration) -> Duration {
        match &self.guard {
            Some(g) => want.min(g.left()),
            None => want,
        }
    }

    /// The running test's context, or an error naming `what` outside of tests.
    pub fn test(&self, what: &str) -> anyhow::Result<&TestContext> {
        self.test
            .as_ref()
            .ok_or_else(|| anyhow!("{what} can only be used inside a test function"))
    }
}

/// Counts one assertion of the running evaluation.
fn counted(eval: &Evaluator) {
    if let Ok(rt) = Runtime::get(eval) {
        rt.assertions.set(rt.assertions.get() + 1);
    }
}

impl Runtime {
    /// Whether `service` declares an op called `name` (while loading or testing).
    pub fn has_op(&self, service: &str, name: &str) -> bool {
        if let Some(t) = &self.test {
            return t
                .services
                .iter()
                .any(|s| s.name == service && s.ops.contains_key(name));
        }
        self.declared
            .borrow()
            .services
            .iter()
            .any(|s| s.name == service && s.ops.contains_key(name))
    }

    pub fn get<'a>(eval: &Evaluator<'_, 'a, '_>) -> anyhow::Result<&'a Runtime> {
        eval.extra
            .and_then(|e| e.downcast_ref::<Runtime>())
            .ok_or_else(|| anyhow!("internal: no Faultbox runtime in this evaluation"))
    }
}

pub(crate) fn location(eval: &Evaluator) -> Location {
    eval.call_stack_top_location()
        .map(|s| {
            let r = s.resolve();
            Location {
                file: r.file,
                line: r.span.begin.line + 1,
            }
        })
        .unwrap_or_default()
}

fn string_list(v: Value, what: &str) -> anyhow::Result<Vec<String>> {
    let list = ListRef::from_value(v)
        .ok_or_else(|| anyhow!("{what} must be a list of strings, got {}", v.get_type()))?;
    list.iter()
        .map(|x| {
            x.unpack_str().map(str::to_string).ok_or_else(|| {
                anyhow!(
                    "{what} must be a list of strings, got an element of type {}",
                    x.get_type()
                )
            })
        })
        .collect()
}

fn parse_timeout(t: Option<&str>) -> anyhow::Result<Duration> {
    match t {
        None => Ok(DEFAULT_HEALTHCHECK_TIMEOUT),
        Some(t) => {
            faultbox_shim::rule::parse_duration(t).map_err(|e| anyhow!("bad timeout {t:?}: {e}"))
        }
    }
}

fn parse_probability(p: Option<&str>) -> anyhow::Result<f64> {
    match p {
        None => Ok(100.0),
        Some(p) => faultbox_shim::rule::parse_probability(p)
            .map_err(|e| anyhow!("bad probability {p:?}: {e}")),
    }
}

#[starlark_module]
pub fn topology(builder: &mut GlobalsBuilder) {
    /// `interface(name, protocol, port, spec=)`.
    fn interface(
        #[starlark(require = pos)] name: &str,
        #[starlark(require = pos)] protocol: &str,
        #[starlark(require = pos)] port: i32,
        #[starlark(require = named)] spec: Option<&str>,
        eval: &mut Evaluator,
    ) -> anyhow::Result<InterfaceDecl> {
        if name.is_empty() {
            bail!("interface name must not be empty");
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("interface {name:?}: port {port} is not between 1 and 65535"))?;
        let spec = match spec {
            // A gRPC interface's `.proto`, relative to the declaring file, compiled
            // now: a missing file or a syntax error stops the spec at this line.
            Some(path) if protocol == "grpc" => {
                let here = location(eval);
                let dir = std::path::Path::new(&here.file)
                    .parent()
                    .unwrap_or(std::path::Path::new(""));
                let full = std::path::absolute(dir.join(path))
                    .map_err(|e| anyhow!("interface {name:?}: spec={path:?}: {e}"))?;
                faultbox_protocols::client::grpc_schema::load(&full)
                    .map_err(|e| anyhow!("interface {name:?}: spec={path:?}: {e}"))?;
                Some(full.to_string_lossy().into_owned())
            }
            other => other.map(str::to_string),
        };
        Ok(InterfaceDecl(Interface {
            name: name.to_string(),
            protocol: protocol.to_string(),
            port,
            spec,
        }))
    }

    /// `tcp(addr, timeout=)`: ready once a TCP connection to `addr` succeeds.
    fn tcp(
        #[starlark(require = pos)] addr: &str,
        #[starlark(require = named)] timeout: Option<&str>,
    ) -> anyhow::Result<HealthcheckValue> {
        Ok(HealthcheckValue(Healthcheck {
            kind: HealthcheckKind::Tcp,
            target: addr.to_string(),
            timeout: parse_timeout(timeout)?,
        }))
    }

    /// `http(url, timeout=)`: ready once GET `url` answers 2xx or 3xx.
    fn http(
        #[starlark(require = pos)] url: &str,
        #[starlark(require = named)] timeout: Option<&str>,
    ) -> anyhow::Result<HealthcheckValue> {
        Ok(HealthcheckValue(Healthcheck {
            kind: HealthcheckKind::Http,
            target: url.to_string(),
            timeout: parse_timeout(timeout)?,
        }))
    }

    /// `ready(timeout=, interface=)`: ready once the service answers a round trip in
    /// its interface's protocol (the first interface unless `interface=` names one).
    fn ready(
        #[starlark(require = named)] timeout: Option<&str>,
        #[starlark(require = named)] interface: Option<&str>,
    ) -> anyhow::Result<HealthcheckValue> {
        Ok(HealthcheckValue(Healthcheck {
            kind: HealthcheckKind::Ready {
                interface: interface.map(str::to_string),
            },
            target: String::new(),
            timeout: parse_timeout(timeout)?,
        }))
    }

    /// `deny(errno, probability=, label=)`.
    fn deny(
        #[starlark(require = pos)] errno: &str,
        #[starlark(require = named)] probability: Option<&str>,
        #[starlark(require = named)] label: Option<&str>,
    ) -> anyhow::Result<FaultValue> {
        let e = faultbox_shim::errno::from_name(errno).ok_or_else(|| {
            anyhow!("unknown errno {errno:?} (expected a name such as EIO, ENOENT, ECONNREFUSED)")
        })?;
        Ok(FaultValue {
            action: FaultAction::Deny(e),
            probability: parse_probability(probability)?,
            label: label.map(str::to_string),
        })
    }

    /// `delay(duration, probability=, label=)` delays syscalls; without a positional
    /// duration, `delay(delay=, method=, path=, query=, ...)` is a protocol-level
    /// rule that holds matching requests.
    fn delay<'v>(
        #[starlark(require = pos)] duration: Option<&str>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let Some(duration) = duration else {
            let rule = crate::proxy::make_rule("delay", &kwargs)?;
            return Ok(eval.heap().alloc(crate::proxy::ProxyRuleValue(rule)));
        };
        let mut probability = None;
        let mut label = None;
        for (k, v) in kwargs.iter() {
            let slot = match k.as_str() {
                "probability" => &mut probability,
                "label" => &mut label,
                other => bail!(
                    "delay({duration:?}): unexpected {other}= (a syscall delay takes probability= and label=; protocol rules are delay(delay=..., {other}=...))"
                ),
            };
            *slot = Some(
                v.unpack_str()
                    .ok_or_else(|| anyhow!("delay(): {k}= must be a string"))?
                    .to_string(),
            );
        }
        let d = faultbox_shim::rule::parse_duration(duration)
            .map_err(|e| anyhow!("bad duration {duration:?}: {e}"))?;
        Ok(eval.heap().alloc(FaultValue {
            action: FaultAction::Delay(d),
            probability: parse_probability(probability.as_deref())?,
            label,
        }))
    }

    /// `op(syscalls=[...], path=)`: a named operation for `ops=`.
    fn op<'v>(
        #[starlark(require = named)] syscalls: Value<'v>,
        #[starlark(require = named)] path: Option<&str>,
    ) -> anyhow::Result<OpValue> {
        let syscalls = string_list(syscalls, "op(syscalls=)")?;
        if syscalls.is_empty() {
            bail!("op(syscalls=) must name at least one syscall");
        }
        for s in &syscalls {
            crate::faults::check_syscall(s)?;
        }
        if let Some(p) = path {
            faultbox_shim::rule::check_glob(p)
                .map_err(|why| anyhow!("op(path={p:?}): the glob {why}"))?;
        }
        Ok(OpValue(Op {
            syscalls,
            path: path.map(str::to_string),
        }))
    }

    /// `service(name, [binary], *interfaces, args=, env=, depends_on=, healthcheck=, ops=, ...)`.
    fn service<'v>(
        #[starlark(require = pos)] name: &str,
        #[starlark(args)] rest: UnpackTuple<Value<'v>>,
        #[starlark(require = named)] binary: Option<&str>,
        #[starlark(require = named)] args: Option<Value<'v>>,
        #[starlark(require = named)] env: Option<Value<'v>>,
        #[starlark(require = named)] depends_on: Option<Value<'v>>,
        #[starlark(require = named)] healthcheck: Option<Value<'v>>,
        #[starlark(require = named)] ops: Option<Value<'v>>,
        #[starlark(require = named)] image: Option<&str>,
        #[starlark(require = named)] build: Option<&str>,
        #[starlark(require = named)] volumes: Option<Value<'v>>,
        #[starlark(require = named)] observe: Option<Value<'v>>,
        #[starlark(require = named)] user: Option<&str>,
        #[starlark(require = named)] seccomp: Option<bool>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<ServiceValue> {
        let rt = Runtime::get(eval)?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!("service name {name:?} must be letters, digits, '-' or '_'");
        }
        let mut positional_binary = None;
        let mut interfaces = Vec::new();
        for (i, v) in rest.items.iter().enumerate() {
            if let Some(s) = v.unpack_str() {
                if i != 0 {
                    bail!("service {name:?}: the binary must come right after the name");
                }
                positional_binary = Some(s.to_string());
            } else if let Some(d) = v.downcast_ref::<InterfaceDecl>() {
                if interfaces.iter().any(|x: &Interface| x.name == d.0.name) {
                    bail!("service {name:?}: interface {:?} declared twice", d.0.name);
                }
                interfaces.push(d.0.clone());
            } else {
                bail!(
                    "service {name:?}: expected interface(...) arguments, got {}",
                    v.get_type()
                );
            }
        }
        let mut volume_pairs = Vec::new();
        if let Some(v) = volumes {
            let d = DictRef::from_value(v).ok_or_else(|| {
                anyhow!("service {name:?}: volumes must be a dict {{host_path: container_path}}")
            })?;
            for (k, val) in d.iter() {
                let (Some(host), Some(inside)) = (k.unpack_str(), val.unpack_str()) else {
                    bail!("service {name:?}: volumes must map host paths to container paths (strings)");
                };
                if host.is_empty()
                    || !inside.starts_with('/')
                    || host.contains(':')
                    || inside.contains(':')
                {
                    bail!("service {name:?}: volume {host:?}: {inside:?}: the host path must be non-empty and the container path absolute, neither with ':'");
                }
                volume_pairs.push((host.to_string(), inside.to_string()));
            }
        }
        let sources = [
            positional_binary.is_some() || binary.is_some(),
            image.is_some(),
            build.is_some(),
        ];
        if positional_binary.is_some() && binary.is_some() {
            bail!("service {name:?}: binary given both positionally and as binary=");
        }
        match sources.iter().filter(|s| **s).count() {
            0 => bail!("service {name:?}: needs exactly one of a binary, image= or build="),
            1 => {}
            _ => bail!("service {name:?}: give only one of a binary, image= or build="),
        }
        let container = match (image, build) {
            (Some(i), None) => {
                if i.is_empty() || i.chars().any(char::is_whitespace) {
                    bail!("service {name:?}: image {i:?} is not an image name");
                }
                Some(ImageSource::Image(i.to_string()))
            }
            (None, Some(b)) => {
                if b.is_empty() {
                    bail!("service {name:?}: build= needs a directory with a Dockerfile");
                }
                Some(ImageSource::Build(b.to_string()))
            }
            _ => None,
        };
        if container.is_none() && (volumes.is_some() || seccomp.is_some()) {
            bail!("service {name:?}: volumes= and seccomp= apply to container services (image= or build=)");
        }
        if container.is_some() && user.is_some() {
            bail!(
                "service {name:?}: user= applies to binaries; a container runs as its image's USER"
            );
        }
        let observe = match observe {
            None => Vec::new(),
            Some(v) => {
                let here = location(eval);
                let home = std::path::Path::new(&here.file)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                let home = std::path::absolute(home).unwrap_or_else(|_| home.to_path_buf());
                crate::sources::observe(name, v, &interfaces, container.is_some(), &home)?
            }
        };
        if let Some(u) = user {
            let (who, group) = u.split_once(':').unwrap_or((u, "x"));
            if who.is_empty() || group.is_empty() || group.contains(':') || u.contains('\0') {
                bail!(
                    "service {name:?}: user must be \"name\", \"uid\", \"name:group\" or \"uid:gid\", got {u:?}"
                );
            }
        }
        let binary = positional_binary
            .or(binary.map(str::to_string))
            .unwrap_or_default();
        let args = match args {
            Some(v) => string_list(v, "args")?,
            None => Vec::new(),
        };
        let mut env_pairs = Vec::new();
        if let Some(v) = env {
            let d = DictRef::from_value(v)
                .ok_or_else(|| anyhow!("service {name:?}: env must be a dict of strings"))?;
            for (k, val) in d.iter() {
                let (Some(k), Some(val)) = (k.unpack_str(), val.unpack_str()) else {
                    bail!(
                        "service {name:?}: env must map strings to strings, got {}: {}",
                        k.get_type(),
                        val.get_type()
                    );
                };
                env_pairs.push((k.to_string(), val.to_string()));
            }
        }
        let mut deps = Vec::new();
        if let Some(v) = depends_on {
            let list = ListRef::from_value(v).ok_or_else(|| {
                anyhow!("service {name:?}: depends_on must be a list of services")
            })?;
            for d in list.iter() {
                match d.downcast_ref::<ServiceValue>() {
                    Some(s) => deps.push(s.name.clone()),
                    None => match d.unpack_str() {
                        Some(s) => deps.push(s.to_string()),
                        None => bail!(
                            "service {name:?}: depends_on must list services, got {}",
                            d.get_type()
                        ),
                    },
                }
            }
        }
        let healthcheck = match healthcheck {
            None => None,
            Some(v) => {
                let hc = v
                    .downcast_ref::<HealthcheckValue>()
                    .ok_or_else(|| {
                        anyhow!(
                            "service {name:?}: healthcheck must be tcp(...), http(...) or ready(...), got {}",
                            v.get_type()
                        )
                    })?
                    .0
                    .clone();
                Some(resolve_ready(name, hc, &interfaces)?)
            }
        };
        let mut op_map = BTreeMap::new();
        if let Some(v) = ops {
            let d = DictRef::from_value(v)
                .ok_or_else(|| anyhow!("service {name:?}: ops must be a dict of op(...)"))?;
            for (k, val) in d.iter() {
                let k = k
                    .unpack_str()
                    .ok_or_else(|| anyhow!("service {name:?}: ops keys must be strings"))?;
                let op = val.downcast_ref::<OpValue>().ok_or_else(|| {
                    anyhow!(
                        "service {name:?}: ops[{k:?}] must be op(...), got {}",
                        val.get_type()
                    )
                })?;
                op_map.insert(k.to_string(), op.0.clone());
            }
        }
        let mut declared = rt.declared.borrow_mut();
        if declared.services.iter().any(|s| s.name == name) {
            bail!("service {name:?} declared twice");
        }
        declared.services.push(Service {
            name: name.to_string(),
            binary,
            args,
            env: env_pairs,
            interfaces: interfaces.clone(),
            depends_on: deps,
            healthcheck,
            ops: op_map,
            user: user.map(str::to_string),
            observe,
            container: container.map(|source| Container {
                source,
                volumes: volume_pairs,
                seccomp: seccomp.unwrap_or(true),
            }),
            declared_at: location(eval),
        });
        Ok(ServiceValue {
            name: name.to_string(),
            interfaces,
        })
    }
}

/// The protocols `ready()` can speak.
pub const READY_PROTOCOLS: &[&str] = &[
    "http",
    "tcp",
    "postgres",
    "mysql",
    "redis",
    "memcached",
    "amqp",
    "nats",
    "mongodb",
    "kafka",
];

/// Points a `ready()` healthcheck at its interface: the one it names, else the
/// service's first. Other healthchecks pass unchanged.
fn resolve_ready(
    service: &str,
    mut hc: Healthcheck,
    interfaces: &[Interface],
) -> anyhow::Result<Healthcheck> {
    let HealthcheckKind::Ready { interface } = &hc.kind else {
        return Ok(hc);
    };
    let names = || {
        interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match interface {
        Some(n) => interfaces.iter().find(|i| i.name == *n).ok_or_else(|| {
            anyhow!(
                "service {service:?}: ready(interface={n:?}) names no interface of it (it has {})",
                names()
            )
        })?,
        None => interfaces.first().ok_or_else(|| {
            anyhow!(
                "service {service:?}: ready() needs an interface to speak to, and it declares none"
            )
        })?,
    };
    if !READY_PROTOCOLS.contains(&chosen.protocol.as_str()) {
        bail!(
            "service {service:?}: ready() speaks {}; interface {:?} is {}: use tcp(\"localhost:{}\")",
            READY_PROTOCOLS.join(", "),
            chosen.name,
            chosen.protocol,
            chosen.port
        );
    }
    hc.target = format!("localhost:{}", chosen.port);
    hc.kind = HealthcheckKind::Ready {
        interface: Some(chosen.name.clone()),
    };
    Ok(hc)
}

#[starlark_module]
pub fn assertions(builder: &mut GlobalsBuilder) {
    /// `fail(*args)`: fails the test with the arguments as the reason.
    fn fail<'v>(
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        counted(eval);
        let text: Vec<String> = args
            .items
            .iter()
            .map(|v| {
                v.unpack_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_repr())
            })
            .collect();
        Err(crate::faults::AssertionFailed(format!("fail: {}", text.join(" "))).into())
    }

    /// `assert_true(cond, msg=)`.
    fn assert_true<'v>(
        #[starlark(require = pos)] cond: Value<'v>,
        #[starlark(require = pos)] msg: Option<&str>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        counted(eval);
        if cond.to_bool() {
            Ok(NoneType)
        } else {
            Err(crate::faults::AssertionFailed(format!(
                "assert_true: {}",
                msg.map(str::to_string)
                    .unwrap_or_else(|| format!("{} is not true", cond.to_repr()))
            ))
            .into())
        }
    }

    /// `assert_eq(a, b, msg=)`.
    fn assert_eq<'v>(
        #[starlark(require = pos)] a: Value<'v>,
        #[starlark(require = pos)] b: Value<'v>,
        #[starlark(require = pos)] msg: Option<&str>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        counted(eval);
        if a.equals(b).map_err(|e| anyhow!("{e}"))? {
            Ok(NoneType)
        } else {
            let detail = format!("{} != {}", a.to_repr(), b.to_repr());
            Err(crate::faults::AssertionFailed(match msg {
                Some(m) => format!("assert_eq: {m}: {detail}"),
                None => format!("assert_eq: {detail}"),
            })
            .into())
        }
    }
}

/// Calls a step method through the World: `tcp` `send` returns the first reply
/// line, every other step a response.
pub fn invoke_step<'v>(
    step: &StepMethod,
    args: &Arguments<'v, '_>,
    eval: &mut Evaluator<'v, '_, '_>,
) -> starlark::Result<Value<'v>> {
    let heap = eval.heap();
    args.no_positional_args(heap)?;
    let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
    let ctx = rt
        .test(&format!("{step}()"))
        .map_err(starlark::Error::new_other)?;
    let mut call = StepCall {
        service: step.target.service.clone(),
        interface: step.target.interface.name.clone(),
        protocol: step.target.interface.protocol.clone(),
        port: step.target.interface.port,
        method: step.method.clone(),
        path: "/".to_string(),
        body: String::new(),
        headers: Vec::new(),
        timeout: STEP_TIMEOUT,
        op: None,
        credentials: Default::default(),
    };
    if let Some((deadline, limit)) = rt.deadline.get() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(starlark::Error::new_other(crate::faults::TimedOut(
                format!(
                    "{step}(): the scenario ran past its timeout of {}",
                    faultbox_shim::rule::format_duration(limit)
                ),
            )));
        }
        call.timeout = call.timeout.min(left);
    }
    rt.halt().map_err(starlark::Error::new_other)?;
    call.timeout = rt.time_left(call.timeout);
    let kwargs = args.names_map()?;
    let allowed: &[&str] = match call.protocol.as_str() {
        "tcp" => &["data"],
        "http" => &["path", "body", "headers"],
        _ => {
            let given: Vec<(&str, Value)> = kwargs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let (op, credentials) = if call.protocol == "grpc" {
                let spec = step.target.interface.spec.as_deref();
                crate::steps::grpc_call(&step.to_string(), spec, &given)
                    .map(|op| (op, Default::default()))
            } else {
                crate::steps::operation(&step.to_string(), &call.protocol, &step.method, &given)
            }
            .map_err(starlark::Error::new_other)?;
            call.op = Some(op);
            call.credentials = credentials;
            &[]
        }
    };
    for (name, value) in kwargs.iter().filter(|_| call.op.is_none()) {
        let name = name.as_str();
        if !allowed.contains(&name) {
            return Err(starlark::Error::new_other(anyhow!(
                "{step}(): unexpected keyword argument {name:?} (expected {})",
                allowed.join(", ")
            )));
        }
        let text = |v: Value| {
            v.unpack_str().map(str::to_string).ok_or_else(|| {
                starlark::Error::new_other(anyhow!(
                    "{step}(): {name} must be a string, got {}",
                    v.get_type()
                ))
            })
        };
        match name {
            "path" => call.path = text(*value)?,
            "body" | "data" => call.body = text(*value)?,
            "headers" => {
                let d = DictRef::from_value(*value).ok_or_else(|| {
                    starlark::Error::new_other(anyhow!(
                        "{step}(): headers must be a dict of strings"
                    ))
                })?;
                for (k, v) in d.iter() {
                    call.headers.push((text(k)?, text(v)?));
                }
            }
            _ => {}
        }
    }
    if call.protocol == "tcp" && call.body.is_empty() {
        return Err(starlark::Error::new_other(anyhow!(
            "{step}(): data= is required"
        )));
    }
    if rt.parallel.get() {
        let handle = ctx
            .world
            .step_start(&call)
            .map_err(|e| starlark::Error::new_other(anyhow!("{step}(): {e}")))?;
        let lazy = crate::values::LazyResponse::new(handle, ctx.world.clone());
        return Ok(match call.protocol.as_str() {
            "tcp" => eval.heap().alloc(crate::values::LazyText(lazy)),
            _ => eval.heap().alloc(lazy),
        });
    }
    let result = ctx
        .world
        .step(&call)
        .map_err(|e| starlark::Error::new_other(anyhow!("{step}(): {e}")))?;
    crate::compose::drain(eval)?;
    let heap = eval.heap();
    Ok(match call.protocol.as_str() {
        "tcp" => heap.alloc(result.body),
        _ => heap.alloc(ResponseValue(result)),
    })
}

/// Turns `fault()` keyword arguments into rules for `service`: a name is one of the
/// service's ops, else a syscall family or syscall.
pub(crate) fn rules_for(
    service: &Service,
    faults: &SmallMap<String, Value>,
) -> anyhow::Result<Vec<FaultRule>> {
    let mut rules = Vec::new();
    for (name, value) in faults.iter() {
        let f = value.downcast_ref::<FaultValue>().ok_or_else(|| {
            anyhow!(
                "{name}= must be deny(...) or delay(...), got {}",
                value.get_type()
            )
        })?;
        let (targets, glob) = match service.ops.get(name) {
            Some(op) => (op.syscalls.clone(), op.path.clone()),
            None => {
                crate::faults::check_syscall(name).map_err(|_| {
                    anyhow!(
                        "unknown syscall or op {name:?} for service {:?}",
                        service.name
                    )
                })?;
                (vec![name.clone()], None)
            }
        };
        for target in targets {
            rules.push(FaultRule {
                target,
                kind: TargetKind::Syscall,
                action: match &f.action {
                    FaultAction::Deny(e) => Action::Deny(*e),
                    FaultAction::Delay(d) => Action::Delay(*d),
                },
                probability: f.probability,
                path_glob: glob.clone(),
                trigger: Trigger::Always,
                label: f
                    .label
                    .clone()
                    .or_else(|| service.ops.contains_key(name).then(|| name.clone())),
            });
        }
    }
    if rules.is_empty() {
        bail!("no faults given (for example write=deny(\"EIO\"))");
    }
    Ok(rules)
}

pub(crate) fn service_of<'a>(ctx: &'a TestContext, v: Value) -> anyhow::Result<&'a Service> {
    let name = match v.downcast_ref::<ServiceValue>() {
        Some(s) => s.name.clone(),
        None => bail!("expected a service, got {}", v.get_type()),
    };
    ctx.services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("unknown service {name:?}"))
}

/// Installs faults on every service in `targets`, runs `run`, and removes them again
/// whatever `run` did.
/// What a `fault*` call asks for besides its targets: protocol rules (for interface
/// targets) and syscall faults (for service targets).
struct Wanted<'a, 'v> {
    rules: &'a [Value<'v>],
    source: Option<Value<'v>>,
    faults: &'a SmallMap<String, Value<'v>>,
}

/// The consumer a `source=` names: a service, or `"test"` for the driver's steps.
fn source_of(ctx: &TestContext, v: Value) -> anyhow::Result<String> {
    if let Some(s) = v.downcast_ref::<ServiceValue>() {
        return Ok(s.name.clone());
    }
    match v.unpack_str() {
        Some(crate::world::DRIVER) => Ok(crate::world::DRIVER.to_string()),
        Some(name) if ctx.services.iter().any(|s| s.name == name) => Ok(name.to_string()),
        Some(name) => bail!("source={name:?} names no service (nor \"test\", the driver)"),
        None => bail!("source= must be a service, got {}", v.get_type()),
    }
}

/// Installs what `wanted` asks for on one target: protocol rules on an interface
/// (`db.main`), or syscall faults on a service. Returns the handle.
fn install(ctx: &TestContext, target: Value, wanted: &Wanted) -> anyhow::Result<u64> {
    if let Some(iface) = target.downcast_ref::<crate::values::InterfaceRef>() {
        if !wanted.faults.is_empty() {
            let names: Vec<&str> = wanted.faults.keys().map(String::as_str).collect();
            bail!(
                "syscall faults ({}=...) act on a service, not on its interface {iface}: fault({}, ...)",
                names.join("=, "),
                iface.service
            );
        }
        let rules = crate::proxy::rules(wanted.rules, &iface.to_string())?;
        if rules.is_empty() {
            bail!("no rules given for {iface} (for example error(...) or delay(delay=\"500ms\"))");
        }
        for r in &rules {
            crate::proxy::check(&iface.interface.protocol, r)
                .map_err(|e| anyhow!("{r} on {iface} ({}): {e}", iface.interface.protocol))?;
        }
        let source = wanted.source.map(|v| source_of(ctx, v)).transpose()?;
        return ctx
            .world
            .proxy_start(
                &iface.service,
                &iface.interface.name,
                source.as_deref(),
                &rules,
            )
            .map_err(|e| anyhow!("{e}"));
    }
    if !wanted.rules.is_empty() {
        bail!(
            "protocol rules act on an interface: fault({}.<interface>, ...), not on the service",
            target
        );
    }
    if wanted.source.is_some() {
        bail!("source= scopes protocol rules on an interface; syscall faults act on the whole service");
    }
    let svc = service_of(ctx, target)?;
    let rules = rules_for(svc, wanted.faults)?;
    ctx.world
        .fault_start(&svc.name, &rules)
        .map_err(|e| anyhow!("{e}"))
}

fn with_faults<'v>(
    eval: &mut Evaluator<'v, '_, '_>,
    targets: &[Value<'v>],
    run: Value<'v>,
    wanted: &Wanted<'_, 'v>,
    what: &str,
) -> starlark::Result<Value<'v>> {
    let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
    let ctx = rt.test(what).map_err(starlark::Error::new_other)?;
    let world = ctx.world.clone();
    let at = location(eval);
    let mut handles = Vec::new();
    let mut installed = Ok(());
    let mut assumptions = Vec::new();
    for t in targets {
        if crate::compose::kind(*t) == Some(crate::compose::KIND_ASSUMPTION) {
            if !wanted.faults.is_empty() || !wanted.rules.is_empty() {
                installed = Err(starlark::Error::new_other(anyhow!(
                    "{what}: give faults either in the assumption or as keywords, not both"
                )));
                break;
            }
            assumptions.push(*t);
            continue;
        }
        match install(ctx, *t, wanted) {
            Ok(h) => {
                world.fault_declared_at(h, &at);
                handles.push(h);
            }
            Err(e) => {
                installed = Err(starlark::Error::new_other(anyhow!("{what}: {e}")));
                break;
            }
        }
    }
    if installed.is_ok() && !assumptions.is_empty() {
        match crate::compose::apply(eval, &assumptions) {
            Ok(h) => handles.extend(h),
            Err(e) => installed = Err(e),
        }
    }
    let result = installed
        .and_then(|()| eval.eval_function(run, &[], &[]))
        .and_then(|v| crate::compose::drain(eval).map(|()| v));
    for h in handles {
        let _ = world.fault_remove(h);
    }
    result
}

fn start_trace(
    eval: &Evaluator,
    service: Value,
    syscalls: Value,
    what: &str,
) -> anyhow::Result<u64> {
    let rt = Runtime::get(eval)?;
    let ctx = rt.test(what)?;
    let svc = service_of(ctx, service)?;
    let names = string_list(syscalls, &format!("{what} syscalls="))?;
    if names.is_empty() {
        bail!("{what}: syscalls= must name at least one syscall");
    }
    for n in &names {
        crate::faults::check_syscall(n).map_err(|e| anyhow!("{what}: {e}"))?;
    }
    ctx.world
        .trace_start(&svc.name, &names)
        .map_err(|e| anyhow!("{what}: {e}"))
}

/// Whether `value` matches `pattern`: `*` at either end matches any prefix/suffix.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        _ if pattern == "*" => true,
        (Some(rest), _) if rest.ends_with('*') && rest.len() > 1 => {
            value.contains(&rest[..rest.len() - 1])
        }
        (Some(suffix), _) => value.ends_with(suffix),
        (None, Some(prefix)) => value.starts_with(prefix),
        (None, None) => pattern == value,
    }
}

fn event_field<'e>(e: &'e Event, key: &str) -> Option<&'e str> {
    match key {
        "service" => Some(&e.service),
        "type" => Some(&e.kind),
        "event_type" => Some(&e.event_type),
        other => e.fields.get(other).map(String::as_str),
    }
}

/// Whether `e` passes the filter `key=pattern`: a glob on the field, except that
/// `syscall=` also takes a family (`write` matches `writev`), as faults and traces do.
pub fn event_matches(e: &Event, key: &str, pattern: &str) -> bool {
    event_field(e, key).is_some_and(|f| match key {
        "syscall" => crate::faults::syscall_matches(pattern, f),
        _ => glob_match(pattern, f),
    })
}

/// Refuses a query whose `syscall=` filter names calls that some service it looks at
/// does not observe: such a query could only ever see nothing, so a negative
/// assertion would pass without anything having been looked at.
pub fn check_observed(
    ctx: &TestContext,
    filters: &[(String, String)],
    what: &str,
) -> anyhow::Result<()> {
    let Some((_, pattern)) = filters.iter().find(|(k, _)| k == "syscall") else {
        return Ok(());
    };
    let wanted = crate::faults::query_syscalls(pattern).map_err(|e| anyhow!("{what}: {e}"))?;
    let service = filters
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    let services: Vec<&Service> = ctx
        .services
        .iter()
        .filter(|s| service.is_none_or(|p| glob_match(p, &s.name)))
        .collect();
    if let (Some(p), true) = (service, services.is_empty()) {
        let names: Vec<&str> = ctx.services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "{what}: service={p:?} matches no service that makes syscalls (services: {})",
            names.join(", ")
        );
    }
    for s in services {
        let Some(covered) = ctx.world.observed(&s.name) else {
            continue;
        };
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|w| !covered.contains(w))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{what}: syscall={pattern:?} is not observed on service {:?} (its filter does not cover {}), so this query could only see nothing. \
                 Syscalls are observed when a query names them as a string literal (syscall=\"...\" in the call, or in assert_before's dicts) \
                 or when trace() names them",
                s.name,
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// Events matching keyword filters and an optional `where=` predicate.
fn matching<'v>(
    eval: &mut Evaluator<'v, '_, '_>,
    filters: &SmallMap<String, Value<'v>>,
    predicate: Option<Value<'v>>,
    what: &str,
) -> starlark::Result<Vec<Event>> {
    matching_after(eval, filters, predicate, None, what)
}

/// Like [`matching`]; `first` is what a predicate sees as `e.first`.
fn matching_after<'v>(
    eval: &mut Evaluator<'v, '_, '_>,
    filters: &SmallMap<String, Value<'v>>,
    predicate: Option<Value<'v>>,
    first: Option<&Event>,
    what: &str,
) -> starlark::Result<Vec<Event>> {
    let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
    let ctx = rt.test(what).map_err(starlark::Error::new_other)?;
    let mut wanted = Vec::new();
    for (k, v) in filters.iter() {
        let v = v.unpack_str().ok_or_else(|| {
            starlark::Error::new_other(anyhow!("{what}: filter {k}= must be a string"))
        })?;
        wanted.push((k.clone(), v.to_string()));
    }
    check_observed(ctx, &wanted, what).map_err(starlark::Error::new_other)?;
    ctx.world.sync_sources();
    let events = ctx.world.events();
    let mut out = Vec::new();
    for e in events {
        if !wanted.iter().all(|(k, v)| event_matches(&e, k, v)) {
            continue;
        }
        if let Some(p) = predicate {
            let ev = eval
                .heap()
                .alloc(EventValue(e.clone(), first.cloned().map(Box::new)));
            if !eval.eval_function(p, &[ev], &[])?.to_bool() {
                continue;
            }
        }
        out.push(e);
    }
    Ok(out)
}

fn describe_filters(filters: &SmallMap<String, Value>, predicate: Option<Value>) -> String {
    let mut parts: Vec<String> = filters
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_repr()))
        .collect();
    if predicate.is_some() {
        parts.push("where=<lambda>".into());
    }
    parts.join(", ")
}

/// A dict of filters or a predicate, as `assert_before` takes them.
fn selector<'v>(
    v: Value<'v>,
    what: &str,
) -> starlark::Result<(SmallMap<String, Value<'v>>, Option<Value<'v>>)> {
    if let Some(d) = DictRef::from_value(v) {
        let mut filters = SmallMap::new();
        for (k, val) in d.iter() {
            let k = k.unpack_str().ok_or_else(|| {
                starlark::Error::new_other(anyhow!("assert_before(): {what}= keys must be strings"))
            })?;
            filters.insert(k.to_string(), val);
        }
        return Ok((filters, None));
    }
    if v.get_type() == "function" || v.get_type() == "native_function" {
        return Ok((SmallMap::new(), Some(v)));
    }
    Err(starlark::Error::new_other(anyhow!(
        "assert_before(): {what}= must be a dict of filters or a function, got {}",
        v.get_type()
    )))
}

/// How long `assert_eventually` waits for a matching event to be recorded.
const EVENTUALLY: Duration = Duration::from_secs(2);

#[starlark_module]
pub fn testing(builder: &mut GlobalsBuilder) {
    /// `fault(service, run=fn, **syscall_faults)`: faults active only while `run` runs;
    /// `fault(db.main, *rules, run=fn, source=)`: protocol rules on an interface, for
    /// one consumer when `source=` names it.
    fn fault<'v>(
        #[starlark(require = pos)] target: Value<'v>,
        #[starlark(args)] rules: UnpackTuple<Value<'v>>,
        #[starlark(require = named)] run: Value<'v>,
        #[starlark(require = named)] source: Option<Value<'v>>,
        #[starlark(kwargs)] faults: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let wanted = Wanted {
            rules: &rules.items,
            source,
            faults: &faults,
        };
        with_faults(eval, &[target], run, &wanted, "fault()")
    }

    /// `fault_all([services], run=fn, **syscall_faults)`, or on interfaces,
    /// `fault_all([db.main, cache.main], *rules, run=fn, source=)`.
    fn fault_all<'v>(
        #[starlark(require = pos)] services: Value<'v>,
        #[starlark(args)] rules: UnpackTuple<Value<'v>>,
        #[starlark(require = named)] run: Value<'v>,
        #[starlark(require = named)] source: Option<Value<'v>>,
        #[starlark(kwargs)] faults: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let list = ListRef::from_value(services).ok_or_else(|| {
            starlark::Error::new_other(anyhow!(
                "fault_all(): expected a list of services or interfaces"
            ))
        })?;
        let targets: Vec<Value> = list.iter().collect();
        let wanted = Wanted {
            rules: &rules.items,
            source,
            faults: &faults,
        };
        with_faults(eval, &targets, run, &wanted, "fault_all()")
    }

    /// `parallel(fn, ...)`: runs the branches concurrently and returns their results
    /// in argument order. Their HTTP steps are all sent before any is answered, and the
    /// services' intercepted calls are released in an order chosen by the seed (or by
    /// `--explore`). A branch that reads a response before returning makes the rest
    /// run as they come.
    fn parallel<'v>(
        #[starlark(args)] branches: UnpackTuple<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Vec<Value<'v>>> {
        let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
        let world = rt
            .test("parallel()")
            .map_err(starlark::Error::new_other)?
            .world
            .clone();
        if branches.items.is_empty() {
            return Err(starlark::Error::new_other(anyhow!(
                "parallel(): give at least one function"
            )));
        }
        world
            .parallel_begin()
            .map_err(|e| starlark::Error::new_other(anyhow!("parallel(): {e}")))?;
        rt.parallel.set(true);
        let mut results = Vec::new();
        let mut failed = None;
        for b in &branches.items {
            match eval.eval_function(*b, &[], &[]) {
                Ok(v) => results.push(v),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
        rt.parallel.set(false);
        if let Some(e) = failed {
            world.parallel_open();
            return Err(e);
        }
        world
            .parallel_release()
            .map_err(|e| starlark::Error::new_other(anyhow!("parallel(): {e}")))?;
        let heap = eval.heap();
        let resolved: Vec<Value> = results
            .into_iter()
            .map(|v| {
                if let Some(t) = v.downcast_ref::<crate::values::LazyText>() {
                    return heap.alloc(t.text());
                }
                match v.downcast_ref::<crate::values::LazyResponse>() {
                    Some(l) => heap.alloc(ResponseValue(l.force().unwrap_or_else(|e| {
                        crate::world::StepResult {
                            error: e,
                            ..Default::default()
                        }
                    }))),
                    None => v,
                }
            })
            .collect();
        crate::compose::drain(eval)?;
        Ok(resolved)
    }

    /// `nondet(service, ...)`: excludes services from ordering control in
    /// `parallel()`; their calls proceed as they come.
    fn nondet<'v>(
        #[starlark(args)] services: UnpackTuple<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        let rt = Runtime::get(eval)?;
        let ctx = rt.test("nondet()")?;
        let mut names = Vec::new();
        for s in &services.items {
            names.push(service_of(ctx, *s)?.name.clone());
        }
        ctx.world.nondet(&names);
        Ok(NoneType)
    }

    /// `partition(a, b, run=fn)`: while `run` runs, connections between the two
    /// services are refused in both directions; all other connections work.
    fn partition<'v>(
        #[starlark(require = pos)] a: Value<'v>,
        #[starlark(require = pos)] b: Value<'v>,
        #[starlark(require = named)] run: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
        let ctx = rt.test("partition()").map_err(starlark::Error::new_other)?;
        let world = ctx.world.clone();
        let (sa, sb) = match (service_of(ctx, a), service_of(ctx, b)) {
            (Ok(x), Ok(y)) => (x.clone(), y.clone()),
            (Err(e), _) | (_, Err(e)) => {
                return Err(starlark::Error::new_other(anyhow!("partition(): {e}")))
            }
        };
        if sa.name == sb.name {
            return Err(starlark::Error::new_other(anyhow!(
                "partition(): a service cannot be partitioned from itself"
            )));
        }
        let (handles, installed) = match world.partition(&sa.name, &sb.name) {
            Ok(h) => {
                let at = location(eval);
                for handle in &h {
                    world.fault_declared_at(*handle, &at);
                }
                (h, Ok(()))
            }
            Err(e) => (
                Vec::new(),
                Err(starlark::Error::new_other(anyhow!("partition(): {e}"))),
            ),
        };
        let result = installed
            .and_then(|()| eval.eval_function(run, &[], &[]))
            .and_then(|v| crate::compose::drain(eval).map(|()| v));
        for h in handles {
            let _ = world.fault_remove(h);
        }
        result
    }

    /// `fault_start(service, **syscall_faults)` or `fault_start(db.main, *rules,
    /// source=)`: faults until `fault_stop(...)` of the same target.
    fn fault_start<'v>(
        #[starlark(require = pos)] target: Value<'v>,
        #[starlark(args)] rules: UnpackTuple<Value<'v>>,
        #[starlark(require = named)] source: Option<Value<'v>>,
        #[starlark(kwargs)] faults: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        let rt = Runtime::get(eval)?;
        let ctx = rt.test("fault_start()")?;
        let wanted = Wanted {
            rules: &rules.items,
            source,
            faults: &faults,
        };
        let handle = install(ctx, target, &wanted).map_err(|e| anyhow!("fault_start(): {e}"))?;
        ctx.world.fault_declared_at(handle, &location(eval));
        Ok(NoneType)
    }

    /// `fault_stop(service)`: removes every fault of `service`.
    fn fault_stop<'v>(
        #[starlark(require = pos)] service: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        let rt = Runtime::get(eval)?;
        let ctx = rt.test("fault_stop()")?;
        if let Some(iface) = service.downcast_ref::<crate::values::InterfaceRef>() {
            ctx.world
                .proxy_stop(&iface.service, &iface.interface.name)
                .map_err(|e| anyhow!("fault_stop(): {e}"))?;
            return Ok(NoneType);
        }
        let svc = service_of(ctx, service)?;
        ctx.world
            .fault_stop(&svc.name)
            .map_err(|e| anyhow!("fault_stop(): {e}"))?;
        Ok(NoneType)
    }

    /// `trace(service, syscalls=[...], run=fn)`: records those calls while `run` runs.
    fn trace<'v>(
        #[starlark(require = pos)] service: Value<'v>,
        #[starlark(require = named)] syscalls: Value<'v>,
        #[starlark(require = named)] run: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let handle =
            start_trace(eval, service, syscalls, "trace()").map_err(starlark::Error::new_other)?;
        let world = Runtime::get(eval)
            .and_then(|rt| Ok(rt.test("trace()")?.world.clone()))
            .map_err(starlark::Error::new_other)?;
        let result = eval.eval_function(run, &[], &[]);
        let _ = world.fault_remove(handle);
        result
    }

    /// `trace_start(service, syscalls=[...])`: records those calls until `trace_stop`.
    fn trace_start<'v>(
        #[starlark(require = pos)] service: Value<'v>,
        #[starlark(require = named)] syscalls: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        start_trace(eval, service, syscalls, "trace_start()")?;
        Ok(NoneType)
    }

    /// `trace_stop(service)`.
    fn trace_stop<'v>(
        #[starlark(require = pos)] service: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        let rt = Runtime::get(eval)?;
        let ctx = rt.test("trace_stop()")?;
        let svc = service_of(ctx, service)?;
        ctx.world
            .trace_stop(&svc.name)
            .map_err(|e| anyhow!("trace_stop(): {e}"))?;
        Ok(NoneType)
    }

    /// `events(**filters, where=)`: the matching events, oldest first.
    fn events<'v>(
        #[starlark(require = named)] r#where: Option<Value<'v>>,
        #[starlark(kwargs)] filters: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Vec<EventValue>> {
        Ok(matching(eval, &filters, r#where, "events()")?
            .into_iter()
            .map(|e| EventValue(e, None))
            .collect())
    }

    /// `assert_eventually(**filters, where=)`: some event matches (waiting briefly for
    /// events still being recorded).
    fn assert_eventually<'v>(
        #[starlark(require = named)] r#where: Option<Value<'v>>,
        #[starlark(kwargs)] filters: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        counted(eval);
        let deadline = std::time::Instant::now() + EVENTUALLY;
        loop {
            if !matching(eval, &filters, r#where, "assert_eventually()")?.is_empty() {
                return Ok(NoneType);
            }
            Runtime::get(eval)
                .and_then(|rt| rt.halt())
                .map_err(starlark::Error::new_other)?;
            if std::time::Instant::now() >= deadline {
                return Err(starlark::Error::new_other(crate::faults::AssertionFailed(
                    format!(
                        "assert_eventually: no event matched {}",
                        describe_filters(&filters, r#where)
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `assert_before(first=, then=)`: the first event matching `first` comes before
    /// the first event matching `then`. Each is a dict of filters or a predicate; a
    /// `then` predicate sees the matched first event as `e.first`.
    fn assert_before<'v>(
        #[starlark(require = named)] first: Value<'v>,
        #[starlark(require = named)] then: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        counted(eval);
        let (f_filters, f_pred) = selector(first, "first")?;
        let (t_filters, t_pred) = selector(then, "then")?;
        let fail = |m: String| starlark::Error::new_other(crate::faults::AssertionFailed(m));
        let Some(a) = matching(eval, &f_filters, f_pred, "assert_before()")?
            .into_iter()
            .next()
        else {
            return Err(fail(format!(
                "assert_before: no event matched first={}",
                describe_filters(&f_filters, f_pred)
            )));
        };
        let Some(b) = matching_after(eval, &t_filters, t_pred, Some(&a), "assert_before()")?
            .into_iter()
            .next()
        else {
            return Err(fail(format!(
                "assert_before: no event matched then={}",
                describe_filters(&t_filters, t_pred)
            )));
        };
        if a.seq < b.seq {
            Ok(NoneType)
        } else {
            Err(fail(format!(
                "assert_before: first matched event #{} ({} {}), but then matched the earlier event #{} ({} {})",
                a.seq, a.service, a.event_type, b.seq, b.service, b.event_type
            )))
        }
    }

    /// `assert_never(**filters, where=)`: no event matches.
    fn assert_never<'v>(
        #[starlark(require = named)] r#where: Option<Value<'v>>,
        #[starlark(kwargs)] filters: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        counted(eval);
        let found = matching(eval, &filters, r#where, "assert_never()")?;
        match found.first() {
            None => Ok(NoneType),
            Some(e) => Err(starlark::Error::new_other(crate::faults::AssertionFailed(
                format!(
                    "assert_never: event #{} ({} {}) matched {}",
                    e.seq,
                    e.service,
                    e.event_type,
                    describe_filters(&filters, r#where)
                ),
            ))),
        }
    }
}
