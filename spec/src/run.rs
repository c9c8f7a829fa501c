//! Running one test body: the frozen test function is called on this thread with a
//! [`World`] behind the test builtins. The outcome separates failed assertions from
//! errors (a bad argument, a step that could not run) and keeps the return value.

use std::rc::Rc;
use std::sync::Arc;

use starlark::environment::Module;
use starlark::eval::Evaluator;
use starlark::values::dict::DictRef;
use starlark::values::list::ListRef;
use starlark::values::tuple::TupleRef;
use starlark::values::{Heap, Value};
use starlark::ErrorKind;

use crate::faults::{AssertionFailed, MonitorViolation};
use crate::limits::{memory, Guard, Limits, Stop};
use crate::loader::{describe, Loaded};
use crate::model::Test;
use crate::runtime::{Runtime, TestContext};
use crate::world::World;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailureType {
    /// An assertion did not hold (`assert_*`, `fail()`).
    Assertion,
    /// The test could not do what it asked (bad arguments, a failed step, ...).
    Error,
    /// A service did not start: it exited, or its healthcheck never passed.
    ServiceStart,
    /// A monitor's callback raised an assertion on an event.
    MonitorViolation,
    /// A fault scenario ran past its `timeout=`.
    Timeout,
}

impl FailureType {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureType::Assertion => "assertion",
            FailureType::Error => "error",
            FailureType::ServiceStart => "service_start",
            FailureType::MonitorViolation => "monitor_violation",
            FailureType::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    Pass,
    Fail {
        reason: String,
        failure_type: FailureType,
    },
}

#[derive(Clone, Debug)]
pub struct TestOutcome {
    pub verdict: Verdict,
    /// `repr()` of the test function's return value, when it is not None.
    pub return_value: Option<String>,
    /// The same value as JSON, for the machine-readable report (see [`json_form`]).
    pub return_json: Option<serde_json::Value>,
    /// How many assertions the test evaluated.
    pub assertions: u64,
}

/// Runs `test` of `loaded` against `world`. Blocking; Starlark evaluation is not
/// `Send`, so call it on the thread that should run the test.
pub fn run_test(
    loaded: &Loaded,
    test: &Test,
    world: Arc<dyn World + Send + Sync>,
    limits: Limits,
) -> TestOutcome {
    let _scope = memory::Scope::enter(limits.memory, limits.signal.clone());
    let guard = Rc::new(Guard::start(limits));
    let function = match test.registered {
        Some(_) => loaded
            .module
            .get_any_visibility(crate::compose::REGISTRY)
            .map(|(v, _)| v),
        None => loaded.module.get(&test.function),
    };
    let function = match function {
        Ok(f) => f,
        Err(e) => {
            return TestOutcome {
                verdict: Verdict::Fail {
                    reason: format!("{}: {e}", test.function),
                    failure_type: FailureType::Error,
                },
                return_value: None,
                return_json: None,
                assertions: 0,
            }
        }
    };
    let runtime = Runtime {
        test: Some(TestContext {
            services: loaded.spec.services.clone(),
            world: Arc::new(crate::world::Host(world)),
        }),
        guard: Some(guard.clone()),
        ..Runtime::default()
    };
    Module::with_temp_heap(|module| {
        // SAFETY: owned_frozen_value adds a reference from this module's frozen heap to
        // the heap that owns the function, so the value stays alive as long as the
        // module, which outlives every use below.
        let f = unsafe { function.owned_frozen_value(module.frozen_heap()) }.to_value();
        let mut eval = Evaluator::new(&module);
        eval.extra = Some(&runtime);
        guard.install(&mut eval);
        let result = match test.registered {
            Some(i) => {
                let entry = starlark::values::list::ListRef::from_value(f)
                    .and_then(|l| l.content().get(i).copied())
                    .expect("registered tests point into the registry");
                crate::compose::run_registered(&mut eval, entry)
            }
            None => eval.eval_function(f, &[], &[]),
        }
        .and_then(|v| crate::compose::drain_last(&mut eval).map(|()| v));
        let assertions = runtime.assertions.get();
        match result {
            Ok(v) => TestOutcome {
                verdict: Verdict::Pass,
                return_value: (!v.is_none()).then(|| v.to_repr()),
                return_json: (!v.is_none()).then(|| json_form(v, module.heap(), 0)),
                assertions,
            },
            Err(e) => TestOutcome {
                verdict: match guard.stopped() {
                    Some(stop) => stopped(&e, guard.statement().as_ref(), stop),
                    None => Verdict::Fail {
                        failure_type: classify(&e),
                        reason: describe(&e),
                    },
                },
                return_value: None,
                return_json: None,
                assertions,
            },
        }
    })
}

/// How deep [`json_form`] follows nested values: a list that contains itself ends
/// here as its `repr()`.
const JSON_DEPTH: usize = 64;

/// A Starlark value as JSON, so an agent reads a test's return value with `jq`
/// instead of parsing `repr()`: None, bools, numbers, strings, lists, tuples, dicts and
/// structs as themselves; a step's response (and any other value with attributes) as
/// an object of its attributes; anything else (a function, a float JSON cannot
/// hold) as its `repr()` string.
pub fn json_form<'v>(v: Value<'v>, heap: Heap<'v>, depth: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if depth >= JSON_DEPTH {
        return J::String(v.to_repr());
    }
    if let Ok(j) = v.to_json_value() {
        return j;
    }
    if let Some(l) = ListRef::from_value(v) {
        return J::Array(l.iter().map(|x| json_form(x, heap, depth + 1)).collect());
    }
    if let Some(t) = TupleRef::from_value(v) {
        return J::Array(
            t.content()
                .iter()
                .map(|x| json_form(*x, heap, depth + 1))
                .collect(),
        );
    }
    if let Some(d) = DictRef::from_value(v) {
        return J::Object(
            d.iter()
                .map(|(k, x)| {
                    let key = k.unpack_str().map_or_else(|| k.to_repr(), str::to_string);
                    (key, json_form(x, heap, depth + 1))
                })
                .collect(),
        );
    }
    let attrs = v.dir_attr();
    if attrs.is_empty() || v.unpack_str().is_some() {
        return J::String(v.to_repr());
    }
    J::Object(
        attrs
            .iter()
            .filter_map(|a| {
                let x = v.get_attr(a, heap).ok().flatten()?;
                Some((a.clone(), json_form(x, heap, depth + 1)))
            })
            .collect(),
    )
}

/// The verdict of a body its guard stopped: a timeout, or an error for a cancelled
/// run or a spent memory budget; `e` says where it was.
pub fn stopped(
    e: &starlark::Error,
    at: Option<&starlark::codemap::FileSpan>,
    stop: Stop,
) -> Verdict {
    Verdict::Fail {
        failure_type: match stop {
            Stop::Timeout(_) => FailureType::Timeout,
            Stop::Cancelled | Stop::Memory(_) => FailureType::Error,
        },
        reason: crate::loader::located(e, at, &stop.describe("the test")),
    }
}

/// Whether `e` is a failed assertion (as opposed to an error).
pub fn is_assertion(e: &starlark::Error) -> bool {
    classify(e) == FailureType::Assertion
}

fn classify(e: &starlark::Error) -> FailureType {
    let has = |a: &anyhow::Error, monitor: bool| {
        a.chain().any(|c| {
            if monitor {
                c.downcast_ref::<MonitorViolation>().is_some()
            } else {
                c.downcast_ref::<AssertionFailed>().is_some()
            }
        })
    };
    let timed_out = |a: &anyhow::Error| {
        a.chain()
            .any(|c| c.downcast_ref::<crate::faults::TimedOut>().is_some())
    };
    match e.kind() {
        ErrorKind::Fail(_) => FailureType::Assertion,
        ErrorKind::Native(a) | ErrorKind::Other(a) | ErrorKind::Value(a) if timed_out(a) => {
            FailureType::Timeout
        }
        ErrorKind::Native(a) | ErrorKind::Other(a) | ErrorKind::Value(a) if has(a, true) => {
            FailureType::MonitorViolation
        }
        ErrorKind::Native(a) | ErrorKind::Other(a) | ErrorKind::Value(a) if has(a, false) => {
            FailureType::Assertion
        }
        _ => FailureType::Error,
    }
}
