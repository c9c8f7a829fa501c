//! Loading a spec: parse and evaluate its top level (and every file it `load()`s,
//! relative to the loading file, each at most once), then check the topology and list
//! its tests. Errors name the spec's file and line.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use starlark::environment::{FrozenModule, Globals, GlobalsBuilder, LibraryExtension, Module};
use starlark::eval::{Evaluator, FileLoader};
use starlark::syntax::{AstModule, Dialect};

use std::time::Duration;

use crate::limits::{memory, Guard, Limits, Stop};
use crate::model::{Location, Service, Spec, Test};
use crate::runtime::{self, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A syntax error, an unknown name, a wrong type, a failed builtin: located.
    #[error("{0}")]
    Eval(String),
    #[error("{at}: {message}")]
    Topology { at: Location, message: String },
}

/// The language: Starlark with f-strings and top-level `if`/`for`, plus Faultbox's
/// builtins.
pub fn dialect() -> Dialect {
    Dialect {
        enable_f_strings: true,
        ..Dialect::Extended
    }
}

pub fn globals() -> Globals {
    GlobalsBuilder::extended_by(&[
        LibraryExtension::StructType,
        LibraryExtension::Print,
        LibraryExtension::Json,
        LibraryExtension::Map,
        LibraryExtension::Filter,
    ])
    .with(runtime::topology)
    .with(runtime::assertions)
    .with(runtime::testing)
    .with(crate::compose::composition)
    .with(crate::proxy::proxy_rules)
    .with(crate::sources::event_sources)
    .build()
}

/// The names of Faultbox's own builtins (not Starlark's standard ones).
pub fn builtin_names() -> Vec<String> {
    let g = GlobalsBuilder::new()
        .with(runtime::topology)
        .with(runtime::assertions)
        .with(runtime::testing)
        .with(crate::compose::composition)
        .with(crate::proxy::proxy_rules)
        .with(crate::sources::event_sources)
        .build();
    let mut names: Vec<String> = g.names().map(|n| n.as_str().to_string()).collect();
    names.sort();
    names
}

/// Formats a Starlark error as `file:line: message`.
pub fn describe(e: &starlark::Error) -> String {
    let message = e.kind().to_string();
    let message = message.trim();
    match e.span() {
        Some(span) => {
            let r = span.resolve();
            format!("{}:{}: {}", r.file, r.span.begin.line + 1, message)
        }
        None => message.to_string(),
    }
}

/// `file:line: message` at the place `e` points to, else at `fallback` (the statement
/// an evaluation was stopped in), else `message` alone.
pub fn located(
    e: &starlark::Error,
    fallback: Option<&starlark::codemap::FileSpan>,
    message: &str,
) -> String {
    match e.span().or(fallback) {
        Some(span) => {
            let r = span.resolve();
            format!("{}:{}: {message}", r.file, r.span.begin.line + 1)
        }
        None => message.to_string(),
    }
}

/// A loaded spec: its model and the frozen top-level module, from which tests run.
pub struct Loaded {
    pub spec: Spec,
    pub module: FrozenModule,
    pub path: PathBuf,
    /// Every spec file evaluated (the spec and all it `load()`s), canonical paths.
    pub files: Vec<PathBuf>,
    /// The same files in the order their evaluation finished, named as errors name
    /// them, with their modules: static checks re-read them and resolve their names.
    pub evaluated: Vec<SpecFile>,
}

/// One evaluated spec file.
pub struct SpecFile {
    /// The path as given (the spec's, or joined to the loading file's directory).
    pub name: String,
    pub module: FrozenModule,
}

/// How long a spec's top level (with everything it loads) may take to evaluate.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past its limit an evaluation that stopped answering (a long native
/// call) is waited for before it is given up on.
const ABANDON_AFTER: Duration = Duration::from_secs(5);

/// Loads `path`: its top level is evaluated on a thread of its own, with a stack deep
/// enough for the nesting the checks allow, under [`LOAD_TIMEOUT`] and the default
/// memory budget.
pub fn load(path: &Path) -> Result<Loaded, SpecError> {
    load_with(path, Limits::new(LOAD_TIMEOUT))
}

/// Loads `path` under `limits` (see [`load`]).
pub fn load_with(path: &Path, limits: Limits) -> Result<Loaded, SpecError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (file, lim) = (path.to_path_buf(), limits.clone());
    std::thread::Builder::new()
        .name("faultbox-load".into())
        .stack_size(crate::limits::nesting::EVAL_STACK)
        .spawn(move || {
            let _scope = memory::Scope::enter(lim.memory, lim.signal.clone());
            let _ = tx.send(load_here(&file, lim));
        })
        .map_err(|e| {
            SpecError::Eval(format!("{}: starting its evaluation: {e}", path.display()))
        })?;
    let started = std::time::Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SpecError::Eval(format!(
                    "{}: evaluating the spec failed unexpectedly",
                    path.display()
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        // The evaluation is left where it is: parked, or busy in a native call that
        // ends when the process does.
        if let Some(asked) = limits.signal.parked() {
            return Err(SpecError::Eval(format!(
                "{}: the spec's top level asked for {} at once, past its memory limit of {}",
                path.display(),
                memory::describe(asked),
                memory::describe(limits.memory)
            )));
        }
        if started.elapsed() > limits.timeout + ABANDON_AFTER {
            return Err(SpecError::Eval(format!(
                "{}: {}",
                path.display(),
                Stop::Timeout(limits.timeout).describe("the spec's top level")
            )));
        }
    }
}

fn load_here(path: &Path, limits: Limits) -> Result<Loaded, SpecError> {
    let guard = Guard::start(limits);
    let runtime = Runtime::default();
    let globals = globals();
    let loader = Loader {
        globals: &globals,
        runtime: &runtime,
        guard: &guard,
        cache: RefCell::new(HashMap::new()),
        loading: RefCell::new(Vec::new()),
        faultable: RefCell::new(BTreeMap::new()),
        evaluated: RefCell::new(Vec::new()),
    };
    let module = loader.eval_file(path)?;
    let faultable = loader.faultable.into_inner();
    let evaluated = loader.evaluated.into_inner();
    let mut files: Vec<PathBuf> = loader.cache.borrow().keys().cloned().collect();
    files.sort();
    let declared = runtime.declared.into_inner();
    let mut services = start_order(declared.services)?;
    crate::sources::resolve(&mut services)
        .map_err(|(at, message)| SpecError::Topology { at, message })?;
    let mut tests = Vec::new();
    let mut defs = DefLines::default();
    for name in module.names() {
        let name = name.as_str();
        if !name.starts_with("test_") {
            continue;
        }
        let Ok(v) = module.get(name) else { continue };
        if v.value().get_type() != "function" {
            continue;
        }
        // A function's repr is `<file>.<name>`: the file that defines it.
        let repr = v.value().to_str();
        let file = repr.strip_suffix(&format!(".{name}")).unwrap_or("");
        let declared_at = match defs.line(file, name) {
            Some(line) => Location {
                file: file.to_string(),
                line,
            },
            None => Location {
                file: path.display().to_string(),
                line: 0,
            },
        };
        tests.push(Test {
            name: name.to_string(),
            function: name.to_string(),
            registered: None,
            cell: None,
            probe: false,
            timeout: None,
            declared_at,
        });
    }
    let (matrices, scenarios) = registered(&module, path, &mut tests)?;
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = tests.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(SpecError::Eval(format!(
            "{}: test {:?} is defined twice (a def test_* and a scenario() or fault_scenario() of the same name?)",
            path.display(),
            w[0].name
        )));
    }
    Ok(Loaded {
        spec: Spec {
            services,
            tests,
            faultable,
            matrices,
            scenarios,
        },
        module,
        path: path.to_path_buf(),
        files,
        evaluated,
    })
}

type Registered = (Vec<crate::model::Matrix>, Vec<crate::model::ScenarioDecl>);

/// The lines of the top-level `def`s of spec files, each file read once.
#[derive(Default)]
struct DefLines(HashMap<String, HashMap<String, usize>>);

impl DefLines {
    /// The line of `def name` in `file`; `None` if the file cannot be read.
    fn line(&mut self, file: &str, name: &str) -> Option<usize> {
        self.0
            .entry(file.to_string())
            .or_insert_with(|| {
                crate::analysis::outline_file(file)
                    .map(|o| o.functions.into_iter().map(|f| (f.name, f.line)).collect())
                    .unwrap_or_default()
            })
            .get(name)
            .copied()
    }
}

/// Reads the tests, matrices and scenarios registered by composition builtins in
/// `module`.
fn registered(
    module: &FrozenModule,
    path: &Path,
    tests: &mut Vec<Test>,
) -> Result<Registered, SpecError> {
    use crate::compose::{
        field, function_name, items, kind, text, KIND_MATRIX, KIND_SCENARIO, REGISTRY,
    };
    let mut matrices = Vec::new();
    let mut scenarios = Vec::new();
    let Ok((list, _)) = module.get_any_visibility(REGISTRY) else {
        return Ok((matrices, scenarios));
    };
    let entries: Vec<starlark::values::Value> =
        starlark::values::list::ListRef::from_value(list.value())
            .map(|l| l.content().to_vec())
            .unwrap_or_default();
    let places: Vec<Location> = module
        .get_any_visibility(crate::compose::REGISTRY_AT)
        .ok()
        .and_then(|(l, _)| {
            starlark::values::list::ListRef::from_value(l.value()).map(|l| {
                l.iter()
                    .map(|at| {
                        let (file, line) = at.unpack_str().unwrap_or("").rsplit_once(':')?;
                        Some(Location {
                            file: file.to_string(),
                            line: line.parse().ok()?,
                        })
                    })
                    .map(Option::unwrap_or_default)
                    .collect()
            })
        })
        .unwrap_or_default();
    for (i, e) in entries.into_iter().enumerate() {
        if kind(e) == Some(KIND_MATRIX) {
            let strings = |name: &str| -> Vec<String> {
                items(e, name)
                    .iter()
                    .filter_map(|v| v.unpack_str().map(str::to_string))
                    .collect()
            };
            let cells = items(e, "cells")
                .iter()
                .filter_map(|c| {
                    starlark::values::tuple::TupleRef::from_value(*c).map(|t| t.content().to_vec())
                })
                .map(|t| {
                    (
                        t[0].unpack_str().unwrap_or("").to_string(),
                        t[1].unpack_str().unwrap_or("").to_string(),
                        t[2].unpack_str().map(str::to_string),
                    )
                })
                .collect();
            matrices.push(crate::model::Matrix {
                scenarios: strings("scenarios"),
                faults: strings("faults"),
                cells,
            });
            continue;
        }
        if kind(e) == Some(KIND_SCENARIO) {
            if let Some(f) = field(e, "scenario") {
                let name = function_name(f);
                // A function's repr is `<file>.<name>`.
                let repr = f.to_str();
                let file = repr
                    .strip_suffix(&format!(".{name}"))
                    .unwrap_or("")
                    .to_string();
                scenarios.push(crate::model::ScenarioDecl { name, file });
            }
        }
        let name = text(e, "name").unwrap_or("").to_string();
        let cell = match (text(e, "cell_scenario"), text(e, "cell_fault")) {
            (Some(s), Some(f)) if !s.is_empty() => Some((s.to_string(), f.to_string())),
            _ => None,
        };
        let probe = kind(e) == Some(crate::compose::KIND_SCENARIO)
            || field(e, "expect").is_none_or(|x| x.is_none());
        let timeout = field(e, "explicit_timeout")
            .is_some_and(|x| x.to_bool())
            .then(|| text(e, "timeout"))
            .flatten()
            .and_then(|t| faultbox_shim::rule::parse_duration(t).ok());
        tests.push(Test {
            name,
            function: String::new(),
            registered: Some(i),
            cell,
            probe,
            timeout,
            declared_at: places.get(i).cloned().unwrap_or_else(|| Location {
                file: path.display().to_string(),
                line: 0,
            }),
        });
    }
    Ok((matrices, scenarios))
}

struct Loader<'a> {
    globals: &'a Globals,
    runtime: &'a Runtime,
    guard: &'a Guard,
    cache: RefCell<HashMap<PathBuf, FrozenModule>>,
    /// Files being evaluated, to refuse cyclic loads.
    loading: RefCell<Vec<PathBuf>>,
    faultable: RefCell<BTreeMap<String, BTreeSet<String>>>,
    evaluated: RefCell<Vec<SpecFile>>,
}

impl Loader<'_> {
    fn eval_file(&self, path: &Path) -> Result<FrozenModule, SpecError> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(m) = self.cache.borrow().get(&key) {
            return Ok(m.clone());
        }
        if self.loading.borrow().contains(&key) {
            return Err(SpecError::Eval(format!("{}: load() cycle", path.display())));
        }
        let source = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let name = path.display().to_string();
        crate::limits::nesting::check_source(&name, &source, &dialect())
            .map_err(SpecError::Eval)?;
        let ast = AstModule::parse(&name, source, &dialect())
            .map_err(|e| SpecError::Eval(describe(&e)))?;
        crate::limits::nesting::check_tree(&ast).map_err(SpecError::Eval)?;
        let (sites, literals) = crate::analysis::sites(&ast);
        self.loading.borrow_mut().push(key.clone());
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let child = ChildLoader { parent: self, base };
        let result = Module::with_temp_heap(|module| {
            {
                let mut eval = Evaluator::new(&module);
                eval.extra = Some(self.runtime);
                eval.set_loader(&child);
                self.guard.install(&mut eval);
                eval.eval_module(ast, self.globals).map_err(|e| {
                    SpecError::Eval(match self.guard.stopped() {
                        Some(stop) => located(
                            &e,
                            self.guard.statement().as_ref(),
                            &stop.describe("the spec's top level"),
                        ),
                        None => describe(&e),
                    })
                })?;
            }
            module
                .freeze()
                .map_err(|e| SpecError::Eval(format!("{}: {e:?}", path.display())))
        });
        self.loading.borrow_mut().pop();
        let frozen = result?;
        let ops: BTreeMap<String, BTreeSet<String>> = self
            .runtime
            .declared
            .borrow()
            .services
            .iter()
            .map(|s| (s.name.clone(), s.ops.keys().cloned().collect()))
            .collect();
        crate::analysis::check(&sites, &literals, &frozen, &ops).map_err(SpecError::Eval)?;
        crate::analysis::resolve(&sites, &frozen, &mut self.faultable.borrow_mut());
        self.evaluated.borrow_mut().push(SpecFile {
            name,
            module: frozen.clone(),
        });
        self.cache.borrow_mut().insert(key, frozen.clone());
        Ok(frozen)
    }
}

/// Resolves `load()` paths relative to the loading file.
struct ChildLoader<'a, 'b> {
    parent: &'a Loader<'b>,
    base: PathBuf,
}

impl FileLoader for ChildLoader<'_, '_> {
    fn load(&self, path: &str) -> starlark::Result<FrozenModule> {
        self.parent
            .eval_file(&self.base.join(path))
            .map_err(|e| starlark::Error::new_other(anyhow::anyhow!("{e}")))
    }
}

/// Orders services so that dependencies start first, ties broken by name; refuses
/// unknown dependencies and cycles, naming where the service was declared.
fn start_order(services: Vec<Service>) -> Result<Vec<Service>, SpecError> {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in &services {
        for d in &s.depends_on {
            if !names.contains(d.as_str()) {
                return Err(SpecError::Topology {
                    at: s.declared_at.clone(),
                    message: format!("service {:?} depends on unknown service {d:?}", s.name),
                });
            }
            if d == &s.name {
                return Err(SpecError::Topology {
                    at: s.declared_at.clone(),
                    message: format!("service {:?} depends on itself", s.name),
                });
            }
        }
    }
    let mut done: Vec<Service> = Vec::new();
    let mut left: Vec<Service> = services;
    left.sort_by(|a, b| a.name.cmp(&b.name));
    while !left.is_empty() {
        let ready = left.iter().position(|s| {
            s.depends_on
                .iter()
                .all(|d| done.iter().any(|x| &x.name == d))
        });
        match ready {
            Some(i) => done.push(left.remove(i)),
            None => {
                let s = &left[0];
                let cycle: Vec<&str> = left.iter().map(|s| s.name.as_str()).collect();
                return Err(SpecError::Topology {
                    at: s.declared_at.clone(),
                    message: format!("dependency cycle among services {}", cycle.join(", ")),
                });
            }
        }
    }
    Ok(done)
}
