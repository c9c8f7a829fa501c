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

use crate::model::{Healthcheck, HealthcheckKind, Interface, Location, Op, Service};
use crate::values::{
    FaultAction, FaultValue, HealthcheckValue, InterfaceDecl, OpValue, ServiceValue, StepMethod,
};

/// Default timeout of `tcp()` and `http()` healthchecks.
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
}

impl Runtime {
    pub fn get<'a>(eval: &Evaluator<'_, 'a, '_>) -> anyhow::Result<&'a Runtime> {
        eval.extra
            .and_then(|e| e.downcast_ref::<Runtime>())
            .ok_or_else(|| anyhow!("internal: no Faultbox runtime in this evaluation"))
    }
}

fn location(eval: &Evaluator) -> Location {
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
    ) -> anyhow::Result<InterfaceDecl> {
        if name.is_empty() {
            bail!("interface name must not be empty");
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("interface {name:?}: port {port} is not between 1 and 65535"))?;
        Ok(InterfaceDecl(Interface {
            name: name.to_string(),
            protocol: protocol.to_string(),
            port,
            spec: spec.map(str::to_string),
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

    /// `delay(duration, probability=, label=)`.
    fn delay(
        #[starlark(require = pos)] duration: &str,
        #[starlark(require = named)] probability: Option<&str>,
        #[starlark(require = named)] label: Option<&str>,
    ) -> anyhow::Result<FaultValue> {
        let d = faultbox_shim::rule::parse_duration(duration)
            .map_err(|e| anyhow!("bad duration {duration:?}: {e}"))?;
        Ok(FaultValue {
            action: FaultAction::Delay(d),
            probability: parse_probability(probability)?,
            label: label.map(str::to_string),
        })
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
        if let Some(v) = volumes {
            if DictRef::from_value(v).is_none() {
                bail!("service {name:?}: volumes must be a dict {{host_path: container_path}}");
            }
        }
        if let Some(v) = observe {
            if ListRef::from_value(v).is_none() {
                bail!("service {name:?}: observe must be a list of event sources");
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
        if image.is_some() || build.is_some() {
            bail!("service {name:?}: container services (image=, build=) are not yet supported; use a binary");
        }
        if volumes.is_some() {
            bail!("service {name:?}: volumes= applies to container services, which are not yet supported");
        }
        if observe.is_some() {
            bail!("service {name:?}: observe= (event sources) is not yet supported");
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
            Some(v) => Some(
                v.downcast_ref::<HealthcheckValue>()
                    .ok_or_else(|| {
                        anyhow!(
                            "service {name:?}: healthcheck must be tcp(...) or http(...), got {}",
                            v.get_type()
                        )
                    })?
                    .0
                    .clone(),
            ),
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
            declared_at: location(eval),
        });
        Ok(ServiceValue {
            name: name.to_string(),
            interfaces,
        })
    }
}

#[starlark_module]
pub fn assertions(builder: &mut GlobalsBuilder) {
    /// `assert_true(cond, msg=)`.
    fn assert_true<'v>(
        #[starlark(require = pos)] cond: Value<'v>,
        #[starlark(require = pos)] msg: Option<&str>,
    ) -> anyhow::Result<NoneType> {
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
    ) -> anyhow::Result<NoneType> {
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

/// Calls a step method: reserved for the test runtime, which knows the World.
pub fn invoke_step<'v>(
    step: &StepMethod,
    _args: &Arguments<'v, '_>,
    _eval: &mut Evaluator<'v, '_, '_>,
) -> starlark::Result<Value<'v>> {
    Err(starlark::Error::new_other(anyhow!(
        "{step}(): steps can only run inside a test function"
    )))
}
