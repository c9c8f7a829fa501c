//! Fault composition: `scenario()`, `fault_assumption()`, `monitor()`,
//! `fault_scenario()` and `fault_matrix()`.
//!
//! Their values are Starlark structs with a `_kind` field (they hold callables, and
//! structs freeze with the module like any value). Their collections are tuples, so
//! the structs are hashable and can key `fault_matrix(overrides=)`. Registrations of tests go into a
//! private list of the module being evaluated, which the loader reads once the module
//! is frozen; a registered test names its entry by index.

// The #[starlark_module] functions take the reference's keyword arguments one by one.
#![allow(clippy::too_many_arguments)]

use anyhow::{anyhow, bail};
use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::values::dict::DictRef;
use starlark::values::list::{AllocList, ListRef};
use starlark::values::none::NoneType;
use starlark::values::structs::{AllocStruct, StructRef};
use starlark::values::tuple::{AllocTuple, TupleRef};
use starlark::values::{Heap, Value, ValueLike};
use starlark_derive::starlark_module;

use crate::runtime::Runtime;
use crate::values::{FaultValue, InterfaceRef, ServiceValue};

/// The module variable holding registered tests.
pub const REGISTRY: &str = "_faultbox_registry";
/// Beside the registry, index for index: where each entry was registered
/// (`file:line` of the `scenario()`, `fault_scenario()` or `fault_matrix()` call), so
/// reports can name the line a registered test comes from.
pub const REGISTRY_AT: &str = "_faultbox_registry_at";
/// The test module's variable holding the monitors of the running test.
pub const MONITORS: &str = "_faultbox_monitors";

pub const KIND_ASSUMPTION: &str = "fault_assumption";
pub const KIND_MONITOR: &str = "monitor";
pub const KIND_SCENARIO: &str = "scenario";
pub const KIND_FAULT_SCENARIO: &str = "fault_scenario";
pub const KIND_MATRIX: &str = "matrix";

/// The default `fault_scenario(timeout=)`.
pub const DEFAULT_TIMEOUT: &str = "30s";

/// A field of a composition struct.
pub fn field<'v>(v: Value<'v>, name: &str) -> Option<Value<'v>> {
    StructRef::from_value(v)?
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
}

/// The `_kind` of a composition struct.
pub fn kind(v: Value<'_>) -> Option<&str> {
    field(v, "_kind")?.unpack_str()
}

/// A string field.
pub fn text<'v>(v: Value<'v>, name: &str) -> Option<&'v str> {
    field(v, name)?.unpack_str()
}

/// The items of a list or tuple field.
pub fn items<'v>(v: Value<'v>, name: &str) -> Vec<Value<'v>> {
    field(v, name).map(seq).unwrap_or_default()
}

/// The items of a list or tuple.
fn seq(v: Value) -> Vec<Value> {
    if let Some(t) = TupleRef::from_value(v) {
        return t.content().to_vec();
    }
    ListRef::from_value(v)
        .map(|l| l.content().to_vec())
        .unwrap_or_default()
}

/// `(key, value)` pairs stored as a tuple of 2-tuples.
fn pairs(v: Value) -> Vec<(Value, Value)> {
    seq(v)
        .into_iter()
        .filter_map(|p| match seq(p).as_slice() {
            [k, v] => Some((*k, *v)),
            _ => None,
        })
        .collect()
}

fn tuple<'v>(heap: Heap<'v>, items: Vec<Value<'v>>) -> Value<'v> {
    heap.alloc(AllocTuple(items))
}

/// The name a `def` was given (`lambda` for lambdas).
pub fn function_name(v: Value) -> String {
    let repr = v.to_str();
    repr.rsplit('.').next().unwrap_or(&repr).to_string()
}

fn is_callable(v: Value) -> bool {
    matches!(v.get_type(), "function" | "native_function" | "partial")
}

/// Appends `entry` to the registry of the module being evaluated, and where the call
/// that registers it is to [`REGISTRY_AT`].
fn register<'v>(eval: &mut Evaluator<'v, '_, '_>, entry: Value<'v>) {
    let at = eval
        .heap()
        .alloc(crate::runtime::location(eval).to_string());
    for (name, item) in [(REGISTRY, entry), (REGISTRY_AT, at)] {
        let mut list: Vec<Value<'v>> = eval
            .module()
            .get(name)
            .and_then(ListRef::from_value)
            .map(|l| l.content().to_vec())
            .unwrap_or_default();
        list.push(item);
        let value = eval.heap().alloc(AllocList(list));
        eval.module().set(name, value);
    }
}

/// `[x]` for a single assumption, the items for a list.
fn one_or_list<'v>(v: Value<'v>, what: &str) -> anyhow::Result<Vec<Value<'v>>> {
    let list = match ListRef::from_value(v) {
        Some(l) => l.content().to_vec(),
        None => vec![v],
    };
    for x in &list {
        if kind(*x) != Some(KIND_ASSUMPTION) {
            bail!(
                "{what} must be fault_assumption(...) values, got {}",
                x.get_type()
            );
        }
    }
    Ok(list)
}

fn monitor_list<'v>(heap: Heap<'v>, v: Option<Value<'v>>, what: &str) -> anyhow::Result<Value<'v>> {
    let Some(v) = v else {
        return Ok(tuple(heap, Vec::new()));
    };
    if ListRef::from_value(v).is_none() && TupleRef::from_value(v).is_none() {
        bail!("{what} must be a list of monitor(...)");
    }
    let list = seq(v);
    for m in &list {
        if kind(*m) != Some(KIND_MONITOR) {
            bail!(
                "{what} must be a list of monitor(...), got {}",
                m.get_type()
            );
        }
    }
    Ok(tuple(heap, list))
}

fn scenario_entry<'v>(
    heap: Heap<'v>,
    name: String,
    scenario: Value<'v>,
    faults: Vec<Value<'v>>,
    expect: Value<'v>,
    monitors: Value<'v>,
    timeout: &str,
    explicit: bool,
    cell: Option<(String, String)>,
) -> Value<'v> {
    let (scenario_name, fault_name) = cell.unwrap_or_default();
    heap.alloc(AllocStruct([
        ("_kind", heap.alloc(KIND_FAULT_SCENARIO)),
        ("name", heap.alloc(name)),
        ("scenario", scenario),
        ("faults", heap.alloc(AllocList(faults))),
        ("expect", expect),
        ("monitors", monitors),
        ("timeout", heap.alloc(timeout)),
        // Given by the spec: the whole test's time limit, in place of --timeout.
        ("explicit_timeout", heap.alloc(explicit)),
        ("cell_scenario", heap.alloc(scenario_name)),
        ("cell_fault", heap.alloc(fault_name)),
    ]))
}

#[starlark_module]
pub fn composition(builder: &mut GlobalsBuilder) {
    /// `scenario(fn)`: runs `fn` as `test_<fn>` and registers it for composition.
    fn scenario<'v>(
        #[starlark(require = pos)] f: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        if !is_callable(f) {
            bail!("scenario() takes a function, got {}", f.get_type());
        }
        let name = function_name(f);
        if name == "lambda" {
            bail!("scenario() needs a named function (def), not a lambda");
        }
        let heap = eval.heap();
        let entry = heap.alloc(AllocStruct([
            ("_kind", heap.alloc(KIND_SCENARIO)),
            ("name", heap.alloc(format!("test_{name}"))),
            ("scenario", f),
        ]));
        register(eval, entry);
        Ok(f)
    }

    /// `fault_assumption(name, target=, **syscall_faults, rules=, monitors=, faults=,
    /// description=)`: a named, reusable set of faults.
    fn fault_assumption<'v>(
        #[starlark(require = pos)] name: &str,
        #[starlark(require = named)] target: Option<Value<'v>>,
        #[starlark(require = named)] rules: Option<Value<'v>>,
        #[starlark(require = named)] monitors: Option<Value<'v>>,
        #[starlark(require = named)] faults: Option<Value<'v>>,
        #[starlark(require = named)] description: Option<&str>,
        #[starlark(kwargs)] syscall_faults: starlark::collections::SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let what = format!("fault_assumption({name:?})");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!(
                "{what}: the name must be letters, digits and '_' (it becomes part of test names)"
            );
        }
        let heap = eval.heap();
        let at = crate::runtime::location(eval);
        let mut interface = None;
        let target_name = match target {
            None => None,
            Some(t) => match (
                t.downcast_ref::<ServiceValue>(),
                t.downcast_ref::<InterfaceRef>(),
            ) {
                (Some(s), _) => Some((s.name.clone(), false)),
                (_, Some(i)) => {
                    interface = Some(i.clone());
                    Some((i.service.clone(), true))
                }
                _ => bail!(
                    "{what}: target= must be a service or a service's interface, got {}",
                    t.get_type()
                ),
            },
        };
        let protocol_target = target_name.as_ref().is_some_and(|(_, iface)| *iface);
        if let Some(r) = rules {
            if !protocol_target {
                bail!("{what}: rules= are protocol-level and need an interface as target= (for example target = db.main)");
            }
            let items = ListRef::from_value(r)
                .ok_or_else(|| anyhow!("{what}: rules= must be a list"))?
                .content()
                .to_vec();
            let iface = interface
                .as_ref()
                .expect("a protocol target is an interface");
            for rule in crate::proxy::rules(&items, &format!("{what}: rules="))? {
                crate::proxy::check(&iface.interface.protocol, &rule).map_err(|e| {
                    anyhow!(
                        "{what}: {rule} on {iface} ({}): {e}",
                        iface.interface.protocol
                    )
                })?;
            }
        }
        if protocol_target && !syscall_faults.is_empty() {
            bail!("{what}: syscall faults need a service as target=, not an interface");
        }
        let mut kwargs = Vec::new();
        for (k, v) in syscall_faults.iter() {
            if v.downcast_ref::<FaultValue>().is_none() {
                bail!(
                    "{what}: {k}= must be deny(...) or delay(...), got {}",
                    v.get_type()
                );
            }
            let known_op = target_name
                .as_ref()
                .is_some_and(|(svc, _)| Runtime::get(eval).is_ok_and(|rt| rt.has_op(svc, k)));
            if !known_op {
                crate::faults::check_syscall(k)
                    .map_err(|_| anyhow!("{what}: unknown syscall or op {k:?}"))?;
            }
            kwargs.push((k.clone(), *v));
        }
        if !kwargs.is_empty() && target_name.is_none() {
            bail!("{what}: syscall faults need target= (the service they apply to)");
        }
        let children = match faults {
            None => Vec::new(),
            Some(f) => one_or_list(f, &format!("{what}: faults="))?,
        };
        if kwargs.is_empty() && children.is_empty() && rules.is_none() {
            bail!("{what}: no faults given (syscall faults, rules= or faults=)");
        }
        let monitors = monitor_list(eval.heap(), monitors, &format!("{what}: monitors="))?;
        let fault_pairs: Vec<Value> = kwargs
            .into_iter()
            .map(|(k, v)| tuple(heap, vec![heap.alloc(k), v]))
            .collect();
        Ok(heap.alloc(AllocStruct([
            ("_kind", heap.alloc(KIND_ASSUMPTION)),
            ("name", heap.alloc(name)),
            (
                "target",
                match &target_name {
                    Some((s, _)) => heap.alloc(s.as_str()),
                    None => Value::new_none(),
                },
            ),
            ("faults", tuple(heap, fault_pairs)),
            (
                "interface",
                match &interface {
                    Some(i) => heap.alloc(i.interface.name.as_str()),
                    None => Value::new_none(),
                },
            ),
            (
                "rules",
                match rules {
                    Some(r) => tuple(heap, seq(r)),
                    None => Value::new_none(),
                },
            ),
            ("children", tuple(heap, children)),
            ("monitors", monitors),
            ("description", heap.alloc(description.unwrap_or(""))),
            // Where it was made: diagnostics about its faults name this line.
            ("_at", heap.alloc(at.to_string())),
        ])))
    }

    /// `monitor(callback, service=, syscall=, path=, decision=)`: calls `callback` with
    /// every matching event; an assertion it raises fails the test as a monitor
    /// violation. Inside a running test it applies at once; elsewhere it is a value for
    /// `monitors=`.
    fn monitor<'v>(
        #[starlark(require = pos)] callback: Value<'v>,
        #[starlark(kwargs)] filters: starlark::collections::SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        if !is_callable(callback) {
            bail!("monitor() takes a function, got {}", callback.get_type());
        }
        let mut filter_pairs = Vec::new();
        for (k, v) in filters.iter() {
            if !["service", "syscall", "path", "decision", "type", "label"].contains(&k.as_str()) {
                bail!("monitor(): unknown filter {k:?} (expected service, syscall, path, decision, type or label)");
            }
            let v = v
                .unpack_str()
                .ok_or_else(|| anyhow!("monitor(): {k}= must be a string"))?;
            filter_pairs.push((k.clone(), v.to_string()));
        }
        let heap = eval.heap();
        let filters: Vec<Value> = filter_pairs
            .into_iter()
            .map(|(k, v)| tuple(heap, vec![heap.alloc(k), heap.alloc(v)]))
            .collect();
        let m = heap.alloc(AllocStruct([
            ("_kind", heap.alloc(KIND_MONITOR)),
            ("callback", callback),
            ("filters", tuple(heap, filters)),
        ]));
        let in_test = Runtime::get(eval).is_ok_and(|rt| rt.test.is_some());
        if in_test {
            activate(eval, &[m])?;
        }
        Ok(m)
    }

    /// `fault_scenario(name, scenario=, faults=, expect=, monitors=, timeout=)`:
    /// registers `test_<name>`.
    fn fault_scenario<'v>(
        #[starlark(require = pos)] name: &str,
        #[starlark(require = named)] scenario: Value<'v>,
        #[starlark(require = named)] faults: Value<'v>,
        #[starlark(require = named)] expect: Option<Value<'v>>,
        #[starlark(require = named)] monitors: Option<Value<'v>>,
        #[starlark(require = named)] timeout: Option<&str>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        let what = format!("fault_scenario({name:?})");
        if !is_callable(scenario) {
            bail!(
                "{what}: scenario= must be a function, got {}",
                scenario.get_type()
            );
        }
        let faults = one_or_list(faults, &format!("{what}: faults="))?;
        let expect = match expect {
            Some(e) if !e.is_none() && !is_callable(e) => {
                bail!("{what}: expect= must be a function")
            }
            Some(e) => e,
            None => Value::new_none(),
        };
        let explicit = timeout.is_some();
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let limit = faultbox_shim::rule::parse_duration(timeout)
            .map_err(|e| anyhow!("{what}: bad timeout {timeout:?}: {e}"))?;
        if limit.is_zero() {
            bail!("{what}: timeout must be more than 0");
        }
        let monitors = monitor_list(eval.heap(), monitors, &format!("{what}: monitors="))?;
        let heap = eval.heap();
        let entry = scenario_entry(
            heap,
            format!("test_{name}"),
            scenario,
            faults,
            expect,
            monitors,
            timeout,
            explicit,
            None,
        );
        register(eval, entry);
        Ok(NoneType)
    }

    /// `fault_matrix(scenarios=, faults=, default_expect=, overrides=, monitors=,
    /// exclude=)`: one `test_matrix_<scenario>_<fault>` per pair not excluded; a cell's
    /// oracle is its override, else `default_expect`, else none (a smoke test).
    fn fault_matrix<'v>(
        #[starlark(require = named)] scenarios: Value<'v>,
        #[starlark(require = named)] faults: Value<'v>,
        #[starlark(require = named)] default_expect: Option<Value<'v>>,
        #[starlark(require = named)] overrides: Option<Value<'v>>,
        #[starlark(require = named)] monitors: Option<Value<'v>>,
        #[starlark(require = named)] exclude: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<NoneType> {
        let scenarios: Vec<Value> = ListRef::from_value(scenarios)
            .ok_or_else(|| anyhow!("fault_matrix(): scenarios= must be a list of functions"))?
            .content()
            .to_vec();
        for s in &scenarios {
            if !is_callable(*s) || function_name(*s) == "lambda" {
                bail!(
                    "fault_matrix(): scenarios= must be named functions, got {}",
                    s.to_repr()
                );
            }
        }
        let faults = one_or_list(faults, "fault_matrix(): faults=")?;
        if scenarios.is_empty() || faults.is_empty() {
            bail!("fault_matrix(): needs at least one scenario and one fault");
        }
        let default_expect = default_expect.unwrap_or_else(Value::new_none);
        let monitors = monitor_list(eval.heap(), monitors, "fault_matrix(): monitors=")?;
        let label = |s: Value, f: Value| {
            format!("({}, {})", function_name(s), text(f, "name").unwrap_or("?"))
        };
        let find = |pair: Value, what: &str| -> anyhow::Result<(usize, usize)> {
            let items: Vec<Value> = match TupleRef::from_value(pair) {
                Some(t) => t.content().to_vec(),
                None => bail!(
                    "fault_matrix(): {what} keys must be (scenario, fault) pairs, got {}",
                    pair.to_repr()
                ),
            };
            let [s, f] = items.as_slice() else {
                bail!(
                    "fault_matrix(): {what} keys must be (scenario, fault) pairs, got {}",
                    pair.to_repr()
                );
            };
            let si = scenarios.iter().position(|x| x.ptr_eq(*s));
            let fi = faults.iter().position(|x| x.ptr_eq(*f));
            match (si, fi) {
                (Some(si), Some(fi)) => Ok((si, fi)),
                _ => bail!(
                    "fault_matrix(): {what} names the pair {} that is not in scenarios= × faults=",
                    if kind(*f) == Some(KIND_ASSUMPTION) && is_callable(*s) {
                        label(*s, *f)
                    } else {
                        pair.to_repr()
                    }
                ),
            }
        };
        let mut cell_expect = vec![vec![default_expect; faults.len()]; scenarios.len()];
        if let Some(o) = overrides {
            let d = DictRef::from_value(o)
                .ok_or_else(|| anyhow!("fault_matrix(): overrides= must be a dict"))?;
            for (k, v) in d.iter() {
                let (si, fi) = find(k, "overrides=")?;
                cell_expect[si][fi] = v;
            }
        }
        let mut excluded = vec![vec![false; faults.len()]; scenarios.len()];
        if let Some(x) = exclude {
            let l = ListRef::from_value(x).ok_or_else(|| {
                anyhow!("fault_matrix(): exclude= must be a list of (scenario, fault) pairs")
            })?;
            for pair in l.iter() {
                let (si, fi) = find(pair, "exclude=")?;
                excluded[si][fi] = true;
            }
        }
        let heap = eval.heap();
        let scenario_names: Vec<String> = scenarios.iter().map(|s| function_name(*s)).collect();
        let fault_names: Vec<String> = faults
            .iter()
            .map(|f| text(*f, "name").unwrap_or("?").to_string())
            .collect();
        let mut cells = Vec::new();
        for (si, s) in scenarios.iter().enumerate() {
            for (fi, f) in faults.iter().enumerate() {
                let name = format!("test_matrix_{}_{}", scenario_names[si], fault_names[fi]);
                if excluded[si][fi] {
                    cells.push(heap.alloc((
                        scenario_names[si].as_str(),
                        fault_names[fi].as_str(),
                        Value::new_none(),
                    )));
                    continue;
                }
                cells.push(heap.alloc((
                    scenario_names[si].as_str(),
                    fault_names[fi].as_str(),
                    heap.alloc(name.as_str()),
                )));
                let entry = scenario_entry(
                    heap,
                    name,
                    *s,
                    vec![*f],
                    cell_expect[si][fi],
                    monitors,
                    DEFAULT_TIMEOUT,
                    false,
                    Some((scenario_names[si].clone(), fault_names[fi].clone())),
                );
                register(eval, entry);
            }
        }
        let matrix = heap.alloc(AllocStruct([
            ("_kind", heap.alloc(KIND_MATRIX)),
            (
                "scenarios",
                heap.alloc(AllocList(
                    scenario_names
                        .iter()
                        .map(|s| heap.alloc(s.as_str()))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "faults",
                heap.alloc(AllocList(
                    fault_names
                        .iter()
                        .map(|s| heap.alloc(s.as_str()))
                        .collect::<Vec<_>>(),
                )),
            ),
            ("cells", heap.alloc(AllocList(cells))),
        ]));
        register(eval, matrix);
        Ok(NoneType)
    }
}

/// A monitor's `(key, pattern)` filters.
fn monitor_filters(m: Value) -> Vec<(String, String)> {
    field(m, "filters")
        .map(pairs)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                k.unpack_str().unwrap_or("").to_string(),
                v.unpack_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Adds monitors to the running test: they see events recorded from now on. A
/// monitor on a syscall its services do not observe is refused.
pub fn activate<'v>(eval: &mut Evaluator<'v, '_, '_>, new: &[Value<'v>]) -> anyhow::Result<()> {
    if let Ok(Some(ctx)) = Runtime::get(eval).map(|rt| rt.test.as_ref()) {
        for m in new {
            crate::runtime::check_observed(ctx, &monitor_filters(*m), "monitor()")?;
        }
    }
    let from = Runtime::get(eval)
        .ok()
        .and_then(|rt| {
            rt.test
                .as_ref()
                .map(|t| t.world.events().last().map(|e| e.seq).unwrap_or(0))
        })
        .unwrap_or(0);
    let heap = eval.heap();
    let mut list: Vec<Value<'v>> = eval
        .module()
        .get(MONITORS)
        .and_then(ListRef::from_value)
        .map(|l| l.content().to_vec())
        .unwrap_or_default();
    for m in new {
        list.push(heap.alloc((*m, heap.alloc(from as i64))));
    }
    let value = heap.alloc(AllocList(list));
    eval.module().set(MONITORS, value);
    Ok(())
}

/// Removes every monitor of the running test.
pub fn clear(eval: &mut Evaluator) {
    let value = eval.heap().alloc(AllocList(Vec::<Value>::new()));
    eval.module().set(MONITORS, value);
}

/// Delivers every event recorded since the last call to the monitors watching it, in
/// order. An assertion a callback raises is a monitor violation naming the event.
pub fn drain<'v>(eval: &mut Evaluator<'v, '_, '_>) -> starlark::Result<()> {
    drain_with(eval, false)
}

/// [`drain`] at the end of a test: event sources catch up first, so a monitor sees a
/// line the service wrote just before the test ended.
pub fn drain_last<'v>(eval: &mut Evaluator<'v, '_, '_>) -> starlark::Result<()> {
    drain_with(eval, true)
}

fn drain_with<'v>(eval: &mut Evaluator<'v, '_, '_>, last: bool) -> starlark::Result<()> {
    let Some(list) = eval
        .module()
        .get(MONITORS)
        .and_then(ListRef::from_value)
        .map(|l| l.content().to_vec())
    else {
        return Ok(());
    };
    if list.is_empty() {
        return Ok(());
    }
    let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
    let Some(ctx) = rt.test.as_ref() else {
        return Ok(());
    };
    let seen = rt.monitored.get();
    if last {
        ctx.world.sync_sources();
    }
    let events: Vec<_> = ctx
        .world
        .events()
        .into_iter()
        .filter(|e| e.seq > seen)
        .collect();
    if let Some(last) = events.last() {
        rt.monitored.set(last.seq);
    }
    for e in &events {
        for entry in &list {
            let Some(pair) = TupleRef::from_value(*entry).map(|t| t.content()) else {
                continue;
            };
            let (m, from) = (pair[0], pair[1].unpack_i32().unwrap_or(0) as u64);
            if e.seq <= from {
                continue;
            }
            let matches = monitor_filters(m)
                .iter()
                .all(|(k, v)| crate::runtime::event_matches(e, k, v));
            if !matches {
                continue;
            }
            // An event that reads as a dict (`e["decision"]`, `e.get("x")`) and as an
            // object (`e.type`, `e.data`), as the reference's monitors use both.
            let arg = eval
                .heap()
                .alloc(crate::values::EventValue(e.clone(), None));
            let callback = field(m, "callback").expect("monitors have a callback");
            if let Err(err) = eval.eval_function(callback, &[arg], &[]) {
                let what = format!("event #{} ({} {})", e.seq, e.service, e.event_type);
                let reason = crate::loader::describe(&err);
                return Err(starlark::Error::new_other(
                    if crate::run::is_assertion(&err) {
                        anyhow::Error::new(crate::faults::MonitorViolation(format!(
                            "monitor violation at {what}: {reason}"
                        )))
                    } else {
                        anyhow!("monitor callback failed at {what}: {reason}")
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Every assumption in `roots` and their children, depth first.
fn flatten<'v>(roots: &[Value<'v>], out: &mut Vec<Value<'v>>) {
    for a in roots {
        out.push(*a);
        flatten(&items(*a, "children"), out);
    }
}

/// Tells the world where assumption `a` was made, for the faults under `handle`.
fn declared_at(world: &dyn crate::world::World, handle: u64, a: Value) {
    let Some((file, line)) = text(a, "_at").and_then(|at| at.rsplit_once(':')) else {
        return;
    };
    let at = crate::model::Location {
        file: file.to_string(),
        line: line.parse().unwrap_or(0),
    };
    world.fault_declared_at(handle, &at);
}

/// Installs the faults of `assumptions` (and their children) and activates their
/// monitors; returns the handles to remove the faults with.
pub fn apply<'v>(
    eval: &mut Evaluator<'v, '_, '_>,
    assumptions: &[Value<'v>],
) -> starlark::Result<Vec<u64>> {
    let mut all = Vec::new();
    flatten(assumptions, &mut all);
    let rt = Runtime::get(eval).map_err(starlark::Error::new_other)?;
    let ctx = rt
        .test("a fault assumption")
        .map_err(starlark::Error::new_other)?;
    let world = ctx.world.clone();
    let mut handles = Vec::new();
    let mut monitors = Vec::new();
    let mut failed = None;
    for a in &all {
        let name = text(*a, "name").unwrap_or("?");
        monitors.extend(items(*a, "monitors"));
        if let Some(rules) = field(*a, "rules").filter(|r| !r.is_none()) {
            let (Some(service), Some(interface)) = (text(*a, "target"), text(*a, "interface"))
            else {
                continue;
            };
            let installed = crate::proxy::rules(&seq(rules), "rules=").and_then(|rules| {
                world
                    .proxy_start(service, interface, None, &rules)
                    .map_err(|e| anyhow!("{e}"))
            });
            match installed {
                Ok(h) => {
                    declared_at(&*world, h, *a);
                    handles.push(h);
                }
                Err(e) => {
                    failed = Some(anyhow!("fault assumption {name:?}: {e}"));
                    break;
                }
            }
            continue;
        }
        let Some(target) = text(*a, "target") else {
            continue;
        };
        let Some(service) = ctx.services.iter().find(|s| s.name == target) else {
            failed = Some(anyhow!(
                "fault assumption {name:?}: unknown service {target:?}"
            ));
            break;
        };
        let mut kwargs = starlark::collections::SmallMap::new();
        for (k, v) in field(*a, "faults").map(pairs).unwrap_or_default() {
            kwargs.insert(k.unpack_str().unwrap_or("").to_string(), v);
        }
        if kwargs.is_empty() {
            continue;
        }
        let installed = crate::runtime::rules_for(service, &kwargs).and_then(|rules| {
            world
                .fault_start(&service.name, &rules)
                .map_err(|e| anyhow!("{e}"))
        });
        match installed {
            Ok(h) => {
                declared_at(&*world, h, *a);
                handles.push(h);
            }
            Err(e) => {
                failed = Some(anyhow!("fault assumption {name:?}: {e}"));
                break;
            }
        }
    }
    if let Some(e) = failed.or_else(|| activate(eval, &monitors).err()) {
        for h in handles {
            let _ = world.fault_remove(h);
        }
        return Err(starlark::Error::new_other(e));
    }
    Ok(handles)
}

/// Runs a registered test: a `scenario()` alone, or a fault scenario / matrix cell:
/// monitors on, faults installed, the scenario run, monitors checked, then the
/// oracle called with the scenario's result; faults and monitors removed however it
/// ends.
pub fn run_registered<'v>(
    eval: &mut Evaluator<'v, '_, '_>,
    entry: Value<'v>,
) -> starlark::Result<Value<'v>> {
    let scenario = field(entry, "scenario").expect("registered tests have a scenario");
    if kind(entry) == Some(KIND_SCENARIO) {
        return eval.eval_function(scenario, &[], &[]);
    }
    let world = Runtime::get(eval)
        .and_then(|rt| Ok(rt.test("a fault scenario")?.world.clone()))
        .map_err(starlark::Error::new_other)?;
    activate(eval, &items(entry, "monitors")).map_err(starlark::Error::new_other)?;
    let limit = text(entry, "timeout")
        .and_then(|t| faultbox_shim::rule::parse_duration(t).ok())
        .unwrap_or(std::time::Duration::from_secs(30));
    if let Ok(rt) = Runtime::get(eval) {
        rt.deadline
            .set(Some((std::time::Instant::now() + limit, limit)));
    }
    let handles = apply(eval, &items(entry, "faults"));
    let result = handles
        .as_ref()
        .map_err(|e| starlark::Error::new_other(anyhow!("{e}")))
        .and_then(|_| {
            let r = eval.eval_function(scenario, &[], &[])?;
            drain(eval)?;
            match field(entry, "expect") {
                Some(expect) if !expect.is_none() => {
                    eval.eval_function(expect, &[r], &[])?;
                    drain(eval)?;
                }
                _ => {}
            }
            Ok(r)
        });
    for h in handles.unwrap_or_default() {
        let _ = world.fault_remove(h);
    }
    clear(eval);
    if let Ok(rt) = Runtime::get(eval) {
        rt.deadline.set(None);
    }
    result
}
