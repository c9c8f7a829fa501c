//! Protocol-level fault rules: `response()`, `error()`, `delay()` without a
//! positional duration, `drop()` and `duplicate()`, which `fault()`, `fault_start()`
//! and `fault_assumption()` install on an interface (`db.main`) rather than on a
//! service's syscalls. Every rule is checked against its interface's protocol (the
//! spec reference's table of match keys and actions) before it is installed, and at
//! load where the call can be seen (`analysis`): a rule that could never act is an
//! error, never silently inert.

use allocative::Allocative;
use anyhow::{anyhow, bail};
use starlark::any::ProvidesStaticType;
use starlark::collections::SmallMap;
use starlark::environment::GlobalsBuilder;
use starlark::starlark_simple_value;
use starlark::values::{NoSerialize, StarlarkValue, Value, ValueLike};
use starlark_derive::{starlark_module, starlark_value, StarlarkPagablePanic};

use faultbox_protocols::ActionKind;

use crate::world::{ProxyAction, ProxyRule};
use faultbox_protocols::Code;

/// The keys requests are matched on, across protocols.
pub const MATCH_KEYS: &[&str] = &["method", "path", "query", "command", "key", "topic"];

/// What each rule builtin accepts besides the match keys.
pub fn params(builtin: &str) -> &'static [&'static str] {
    match builtin {
        "response" => &["status", "body", "value", "probability", "label"],
        "error" => &["message", "status", "probability", "label"],
        "delay" => &["delay", "probability", "label"],
        "drop" | "duplicate" => &["probability", "label"],
        _ => &[],
    }
}

/// The names of the rule builtins.
pub const BUILTINS: &[&str] = &["response", "error", "delay", "drop", "duplicate"];

/// Checks a rule builtin's keyword names; `Err` names the one it does not take.
pub fn check_keywords(builtin: &str, names: &[&str]) -> Result<(), String> {
    for n in names {
        if !MATCH_KEYS.contains(n) && !params(builtin).contains(n) {
            let mut offered: Vec<&str> = MATCH_KEYS.to_vec();
            offered.extend(params(builtin));
            return Err(format!(
                "{builtin}(): unknown argument {n:?} (it takes {})",
                offered.join("=, ") + "="
            ));
        }
    }
    Ok(())
}

/// A protocol-level rule, as a Starlark value.
#[derive(
    Debug,
    Clone,
    ProvidesStaticType,
    NoSerialize,
    Allocative,
    StarlarkPagablePanic,
    derive_more::Display,
)]
#[display("{}", _0)]
pub struct ProxyRuleValue(#[allocative(skip)] pub ProxyRule);
starlark_simple_value!(ProxyRuleValue);

#[starlark_value(type = "proxy_fault")]
impl<'v> StarlarkValue<'v> for ProxyRuleValue {
    /// Hashable, so that fault assumptions holding these can key `overrides=`.
    fn write_hash(
        &self,
        hasher: &mut starlark::collections::StarlarkHasher,
    ) -> starlark::Result<()> {
        use std::hash::Hash;
        self.0.to_string().hash(hasher);
        Ok(())
    }
}

fn text(v: Value, what: &str) -> anyhow::Result<String> {
    v.unpack_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{what} must be a string, got {}", v.get_type()))
}

/// Builds the rule a builtin call describes.
pub fn make_rule(builtin: &str, kwargs: &SmallMap<String, Value>) -> anyhow::Result<ProxyRule> {
    let names: Vec<&str> = kwargs.keys().map(String::as_str).collect();
    check_keywords(builtin, &names).map_err(|e| anyhow!(e))?;
    let get = |k: &str| kwargs.get(k).copied();
    let mut matches = Vec::new();
    for key in MATCH_KEYS {
        if let Some(v) = get(key) {
            let pattern = text(v, &format!("{builtin}(): {key}="))?;
            if pattern.is_empty() {
                bail!("{builtin}(): {key}= is empty; leave it out to match every request");
            }
            matches.push((key.to_string(), pattern));
        }
    }
    let code = match get("status") {
        None => None,
        Some(v) => Some(match (v.unpack_i32(), v.unpack_str()) {
            (Some(n), _) => Code::Number(n.into()),
            (_, Some(t)) => match t.parse::<i64>() {
                Ok(n) => Code::Number(n),
                Err(_) => Code::Text(t.to_string()),
            },
            _ => bail!(
                "{builtin}(): status= must be a number or, for a PostgreSQL SQLSTATE, a string; got {}",
                v.get_type()
            ),
        }),
    };
    let status = match &code {
        None => None,
        Some(Code::Number(n)) => Some(*n),
        Some(Code::Text(t)) if builtin == "response" => {
            bail!("response(): status={t:?} must be a number")
        }
        Some(Code::Text(_)) => None,
    };
    let opt_text = |k: &str| -> anyhow::Result<Option<String>> {
        get(k)
            .map(|v| text(v, &format!("{builtin}(): {k}=")))
            .transpose()
    };
    let action = match builtin {
        "response" => ProxyAction::Response {
            status,
            body: opt_text("body")?,
            value: opt_text("value")?,
        },
        "error" => ProxyAction::Error {
            message: opt_text("message")?,
            status: code,
        },
        "delay" => {
            let d = opt_text("delay")?.ok_or_else(|| {
                anyhow!("delay(): give a duration: delay(\"500ms\") delays syscalls, delay(delay=\"500ms\", ...) protocol requests")
            })?;
            ProxyAction::Delay(
                faultbox_shim::rule::parse_duration(&d)
                    .map_err(|e| anyhow!("delay(): bad delay {d:?}: {e}"))?,
            )
        }
        "drop" => ProxyAction::Drop,
        "duplicate" => ProxyAction::Duplicate,
        other => bail!("unknown rule builtin {other}()"),
    };
    let probability = match opt_text("probability")? {
        None => 100.0,
        Some(p) => faultbox_shim::rule::parse_probability(&p)
            .map_err(|e| anyhow!("{builtin}(): bad probability {p:?}: {e}"))?,
    };
    Ok(ProxyRule {
        action,
        matches,
        probability,
        label: opt_text("label")?,
    })
}

/// Refuses `rule` on an interface of `protocol` if the protocol lacks its action or
/// one of its match keys, or if an answer it gives cannot be given there.
pub fn check(protocol: &str, rule: &ProxyRule) -> anyhow::Result<()> {
    let keys: Vec<&str> = rule.matches.iter().map(|(k, _)| k.as_str()).collect();
    faultbox_protocols::rules::check(protocol, rule.action.kind(), &keys)
        .map_err(|e| anyhow!(e))?;
    if protocol == "grpc" {
        let answer = match &rule.action {
            ProxyAction::Response {
                status,
                body,
                value,
            } => Some(faultbox_protocols::Answer::Response {
                status: *status,
                body: body.clone(),
                value: value.clone(),
            }),
            ProxyAction::Error { message, status } => Some(faultbox_protocols::Answer::Error {
                message: message.clone(),
                status: status.clone(),
            }),
            _ => None,
        };
        if let Some(a) = answer {
            faultbox_protocols::grpc::check(&a).map_err(|e| anyhow!(e))?;
        }
    }
    let code = match &rule.action {
        ProxyAction::Response {
            status: Some(s), ..
        } => Some(Code::Number(*s)),
        ProxyAction::Error {
            status: Some(c), ..
        } => Some(c.clone()),
        _ => None,
    };
    match code {
        Some(c) => check_code(protocol, &c),
        None => Ok(()),
    }
}

/// Refuses a `status=` the protocol cannot give.
pub fn check_code(protocol: &str, code: &Code) -> anyhow::Result<()> {
    match (protocol, code) {
        ("http", Code::Number(s)) if !(100..=599).contains(s) => {
            bail!("status={s} is not an HTTP status (100 to 599)")
        }
        ("grpc", c) => {
            faultbox_protocols::grpc::status_code(c).map_err(|e| anyhow!(e))?;
        }
        ("postgres", c) => {
            faultbox_protocols::postgres::sqlstate(c).map_err(|e| anyhow!(e))?;
        }
        ("amqp", Code::Number(s)) if !(0..=65535).contains(s) => {
            bail!("status={s} is not an AMQP reply code (0 to 65535)")
        }
        ("kafka", c) => {
            faultbox_protocols::kafka::status_code(c).map_err(|e| anyhow!(e))?;
        }
        ("mongodb", c) => {
            faultbox_protocols::mongodb::error_code(Some(c)).map_err(|e| anyhow!(e))?;
        }
        ("nats", _) => {
            bail!("status={code}: NATS errors have no code, only message=")
        }
        (_, Code::Text(t)) => {
            bail!("status={t:?}: {protocol} error codes are numbers")
        }
        _ => {}
    }
    Ok(())
}

/// The rules among `values` (positional arguments of `fault()` and the like).
pub fn rules(values: &[Value], what: &str) -> anyhow::Result<Vec<ProxyRule>> {
    values
        .iter()
        .map(|v| {
            v.downcast_ref::<ProxyRuleValue>()
                .map(|r| r.0.clone())
                .ok_or_else(|| {
                    anyhow!(
                        "{what}: expected protocol rules such as error(...) or delay(delay=...), got {}",
                        v.get_type()
                    )
                })
        })
        .collect()
}

/// The kind of a builtin's rule, for load-time checks.
pub fn kind(builtin: &str) -> Option<ActionKind> {
    Some(match builtin {
        "response" => ActionKind::Response,
        "error" => ActionKind::Error,
        "delay" => ActionKind::Delay,
        "drop" => ActionKind::Drop,
        "duplicate" => ActionKind::Duplicate,
        _ => return None,
    })
}

#[starlark_module]
pub fn proxy_rules(builder: &mut GlobalsBuilder) {
    /// `response(method=, path=, status=, body=, command=, key=, value=, probability=)`:
    /// answers matching requests in the server's place with a success.
    fn response<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
    ) -> anyhow::Result<ProxyRuleValue> {
        make_rule("response", &kwargs).map(ProxyRuleValue)
    }

    /// `error(method=, path=, query=, command=, key=, topic=, message=, status=)`:
    /// answers matching requests with a protocol error.
    fn error<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
    ) -> anyhow::Result<ProxyRuleValue> {
        make_rule("error", &kwargs).map(ProxyRuleValue)
    }

    /// `drop(method=, path=, topic=, probability=)`: closes the connection at a
    /// matching request.
    fn drop<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
    ) -> anyhow::Result<ProxyRuleValue> {
        make_rule("drop", &kwargs).map(ProxyRuleValue)
    }

    /// `duplicate(topic=)`: delivers a matching message twice.
    fn duplicate<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
    ) -> anyhow::Result<ProxyRuleValue> {
        make_rule("duplicate", &kwargs).map(ProxyRuleValue)
    }
}
