//! What a spec can fault or look at, found before anything runs: every `fault()`,
//! `fault_start()`, `fault_all()`, `trace()` and `trace_start()` call in every file,
//! with the services it names and the syscall (or op) keywords it passes, and every
//! query (`events()`, `assert_eventually()`, `assert_never()`, `assert_before()`,
//! `monitor()`) with a literal `syscall=` filter, which is observed as if traced. A
//! service's filter covers exactly these, so services nothing can fault or query run
//! with no filter.

use std::collections::{BTreeMap, BTreeSet};

use starlark::environment::FrozenModule;
use starlark::syntax::ast::{ArgumentP, AstExpr, ExprP};
use starlark::syntax::AstModule;
use starlark::values::ValueLike;

use crate::values::ServiceValue;

/// A service, or every service when a call's target cannot be resolved statically.
pub const ANY_SERVICE: &str = "*";

const FAULT_CALLS: &[&str] = &["fault", "fault_start", "fault_all", "fault_assumption"];
const TRACE_CALLS: &[&str] = &["trace", "trace_start"];
/// Calls whose keyword filters select events; `assert_before` takes them as dicts.
const QUERY_CALLS: &[&str] = &["events", "assert_eventually", "assert_never", "monitor"];
/// Keywords of those calls that are not syscalls.
const NOT_SYSCALLS: &[&str] = &[
    "run",
    "source",
    "syscalls",
    "target",
    "rules",
    "monitors",
    "faults",
    "description",
];

/// How a call site names a service.
#[derive(Debug, Clone)]
enum Target {
    /// An identifier, bound (or not) to a service value at the file's top level.
    Ident(String),
    /// A query's `service=` filter: a name or a glob over names.
    Name(String),
    /// Something computed: any service.
    Dynamic,
}

/// A call site: the services it names, and what it intercepts.
#[derive(Debug, Default)]
pub struct Site {
    targets: Vec<Target>,
    names: Vec<String>,
    /// Where the call is, `file:line`, for errors.
    at: String,
}

/// A literal that can be checked before anything runs, and where it is.
#[derive(Debug)]
pub enum Literal {
    Errno {
        name: String,
        at: String,
    },
    /// `delay("...")`'s duration.
    Duration {
        text: String,
        at: String,
    },
    /// `deny(probability="...")` or `delay(probability="...")`.
    Probability {
        text: String,
        at: String,
    },
    /// A protocol rule builtin's keyword names.
    RuleKeywords {
        builtin: String,
        names: Vec<String>,
        at: String,
    },
    /// Protocol rules installed on `service.interface`, checked against its protocol
    /// once the file is evaluated.
    ProxyRules {
        service: String,
        interface: String,
        /// (builtin, match keys, literal `status=`, where).
        rules: Vec<(
            String,
            Vec<String>,
            Option<faultbox_protocols::Code>,
            String,
        )>,
    },
    /// A query's literal `syscall=` filter: a syscall, family or glob.
    QuerySyscall {
        pattern: String,
        at: String,
    },
}

/// Collects the call sites and checkable literals of one parsed file.
pub fn sites(ast: &AstModule) -> (Vec<Site>, Vec<Literal>) {
    let mut out = (Vec::new(), Vec::new());
    ast.statement().visit_expr(|e| walk(ast, e, &mut out));
    out
}

fn at(ast: &AstModule, e: &AstExpr) -> String {
    let r = ast.file_span(e.span).resolve();
    format!("{}:{}", r.file, r.span.begin.line + 1)
}

fn walk(ast: &AstModule, e: &AstExpr, out: &mut (Vec<Site>, Vec<Literal>)) {
    use starlark::syntax::ast::AstLiteral;
    if let ExprP::Call(callee, args) = &e.node {
        if let ExprP::Identifier(id) = &callee.node {
            let name = id.node.ident.as_str();
            if let Some(rule) = rule_call(ast, e) {
                out.1.push(Literal::RuleKeywords {
                    builtin: rule.0,
                    names: rule.1,
                    at: rule.3,
                });
            }
            if ["fault", "fault_start", "fault_all", "fault_assumption"].contains(&name) {
                proxy_site(ast, name, &args.args, out);
            }
            // deny() and delay() often sit in test bodies, which run only later:
            // their literal arguments are checked now.
            if name == "deny" || name == "delay" {
                for (i, a) in args.args.iter().enumerate() {
                    let (key, x) = match &a.node {
                        ArgumentP::Positional(x) if i == 0 => ("", x),
                        ArgumentP::Named(k, x) => (k.node.as_str(), x),
                        _ => continue,
                    };
                    let ExprP::Literal(AstLiteral::String(s)) = &x.node else {
                        continue;
                    };
                    let (text, at) = (s.node.clone(), at(ast, e));
                    out.1.push(match (name, key) {
                        ("deny", "") => Literal::Errno { name: text, at },
                        ("delay", "") => Literal::Duration { text, at },
                        (_, "probability") => Literal::Probability { text, at },
                        _ => continue,
                    });
                }
            }
            if name == "partition" {
                // Both services' filters must cover connect.
                let mut site = Site {
                    at: at(ast, e),
                    names: vec!["connect".to_string()],
                    ..Site::default()
                };
                for a in args.args.iter().take(2) {
                    if let ArgumentP::Positional(x) = &a.node {
                        site.targets.extend(targets(x));
                    }
                }
                out.0.push(site);
            }
            if QUERY_CALLS.contains(&name) {
                let filters = args.args.iter().filter_map(|a| match &a.node {
                    ArgumentP::Named(k, v) => Some((k.node.as_str(), v)),
                    _ => None,
                });
                query_site(ast, e, filters, out);
            }
            if name == "assert_before" {
                for a in &args.args {
                    if let ArgumentP::Named(_, v) = &a.node {
                        if let ExprP::Dict(pairs) = &v.node {
                            let filters = pairs.iter().filter_map(|(k, v)| match &k.node {
                                ExprP::Literal(AstLiteral::String(k)) => Some((k.node.as_str(), v)),
                                _ => None,
                            });
                            query_site(ast, e, filters, out);
                        }
                    }
                }
            }
            let is_fault = FAULT_CALLS.contains(&name);
            let is_trace = TRACE_CALLS.contains(&name);
            if is_fault || is_trace {
                let mut site = Site {
                    at: at(ast, e),
                    ..Site::default()
                };
                for (i, a) in args.args.iter().enumerate() {
                    match &a.node {
                        ArgumentP::Positional(x) if i == 0 && name != "fault_assumption" => {
                            site.targets = targets(x)
                        }
                        ArgumentP::Named(k, x)
                            if name == "fault_assumption" && k.node == "target" =>
                        {
                            site.targets = targets(x)
                        }
                        ArgumentP::Named(k, v) if is_trace && k.node == "syscalls" => {
                            site.names.extend(string_list(v));
                        }
                        ArgumentP::Named(k, _)
                            if is_fault && !NOT_SYSCALLS.contains(&k.node.as_str()) =>
                        {
                            site.names.push(k.node.clone());
                        }
                        // **kwargs hides the names: the sites cover nothing we can see.
                        _ => {}
                    }
                }
                out.0.push(site);
            }
        }
    }
    e.visit_expr(|c| walk(ast, c, out));
}

/// A call to a protocol rule builtin (`error(...)`, `delay(delay=...)` without a
/// positional duration): its name, keyword names, and where it is.
fn rule_call(ast: &AstModule, e: &AstExpr) -> Option<RuleCall> {
    let ExprP::Call(callee, args) = &e.node else {
        return None;
    };
    let ExprP::Identifier(id) = &callee.node else {
        return None;
    };
    let name = id.node.ident.as_str();
    if !crate::proxy::BUILTINS.contains(&name) {
        return None;
    }
    let mut names = Vec::new();
    let mut status = None;
    for a in &args.args {
        match &a.node {
            ArgumentP::Named(k, v) => {
                names.push(k.node.clone());
                if k.node == "status" {
                    status = literal_code(v);
                }
            }
            // delay("500ms") is a syscall fault; **kwargs hides the names.
            _ => return None,
        }
    }
    Some((name.to_string(), names, status, at(ast, e)))
}

/// A rule builtin call: (builtin, keyword names, literal `status=`, where).
type RuleCall = (
    String,
    Vec<String>,
    Option<faultbox_protocols::Code>,
    String,
);

/// A literal `status=` value, as `error()` reads it.
fn literal_code(e: &AstExpr) -> Option<faultbox_protocols::Code> {
    use faultbox_protocols::Code;
    use starlark::syntax::ast::AstLiteral;
    match &e.node {
        ExprP::Literal(AstLiteral::Int(i)) => i.node.to_string().parse().ok().map(Code::Number),
        ExprP::Literal(AstLiteral::String(t)) => Some(match t.node.parse::<i64>() {
            Ok(n) => Code::Number(n),
            Err(_) => Code::Text(t.node.clone()),
        }),
        _ => None,
    }
}

/// Records the protocol rules a `fault*` call installs on `service.interface`, when
/// the target is written that way and the rules are calls of the rule builtins.
fn proxy_site(
    ast: &AstModule,
    call: &str,
    args: &[starlark::syntax::ast::AstArgument],
    out: &mut (Vec<Site>, Vec<Literal>),
) {
    let mut target = None;
    let mut rules = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match &a.node {
            ArgumentP::Positional(x) if i == 0 && call != "fault_assumption" => target = Some(x),
            ArgumentP::Positional(x) => rules.extend(rule_call(ast, x)),
            ArgumentP::Named(k, x) if k.node == "target" => target = Some(x),
            ArgumentP::Named(k, x) if k.node == "rules" => {
                if let ExprP::List(items) = &x.node {
                    rules.extend(items.iter().filter_map(|i| rule_call(ast, i)));
                }
            }
            _ => {}
        }
    }
    let Some(target) = target else { return };
    let targets: Vec<&AstExpr> = match &target.node {
        ExprP::List(items) => items.iter().collect(),
        _ => vec![target],
    };
    for t in targets {
        if let ExprP::Dot(obj, iface) = &t.node {
            if let ExprP::Identifier(svc) = &obj.node {
                out.1.push(Literal::ProxyRules {
                    service: svc.node.ident.clone(),
                    interface: iface.node.clone(),
                    rules: rules
                        .iter()
                        .map(|(b, names, status, at)| {
                            let keys = names
                                .iter()
                                .filter(|n| crate::proxy::MATCH_KEYS.contains(&n.as_str()))
                                .cloned()
                                .collect();
                            (b.clone(), keys, status.clone(), at.clone())
                        })
                        .collect(),
                });
            }
        }
    }
}

/// Records a query's literal `syscall=` filter as a site observing it on the
/// services its `service=` filter names (every service without one, or when the
/// service is computed).
fn query_site<'a>(
    ast: &AstModule,
    e: &AstExpr,
    filters: impl Iterator<Item = (&'a str, &'a AstExpr)>,
    out: &mut (Vec<Site>, Vec<Literal>),
) {
    use starlark::syntax::ast::AstLiteral;
    let literal = |x: &AstExpr| match &x.node {
        ExprP::Literal(AstLiteral::String(s)) => Some(s.node.clone()),
        _ => None,
    };
    let mut syscall = None;
    let mut target = None;
    for (k, v) in filters {
        match k {
            "syscall" => syscall = literal(v),
            "service" => target = Some(literal(v).map_or(Target::Dynamic, Target::Name)),
            _ => {}
        }
    }
    let Some(pattern) = syscall else { return };
    let at = at(ast, e);
    let names = crate::faults::query_syscalls(&pattern).unwrap_or_default();
    out.1.push(Literal::QuerySyscall {
        pattern,
        at: at.clone(),
    });
    out.0.push(Site {
        targets: target.into_iter().collect(),
        names,
        at,
    });
}

/// Checks what can be checked before anything runs: errno literals, and that every
/// keyword of a `fault*` call names a syscall, family or op (of the named services, or
/// of any service when the target is dynamic). Returns `file:line: message`.
pub fn check(
    sites: &[Site],
    literals: &[Literal],
    module: &FrozenModule,
    ops: &BTreeMap<String, BTreeSet<String>>,
) -> Result<(), String> {
    for l in literals {
        match l {
            Literal::Errno { name, at } => {
                if faultbox_shim::errno::from_name(name).is_none() {
                    return Err(format!(
                        "{at}: unknown errno {name:?} (expected a name such as EIO, ENOENT, ECONNREFUSED)"
                    ));
                }
            }
            Literal::Duration { text, at } => {
                faultbox_shim::rule::parse_duration(text)
                    .map_err(|e| format!("{at}: delay(): bad duration {text:?}: {e}"))?;
            }
            Literal::Probability { text, at } => {
                faultbox_shim::rule::parse_probability(text)
                    .map_err(|e| format!("{at}: bad probability {text:?}: {e}"))?;
            }
            Literal::QuerySyscall { pattern, at } => {
                crate::faults::query_syscalls(pattern).map_err(|e| format!("{at}: {e}"))?;
            }
            Literal::RuleKeywords { builtin, names, at } => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                crate::proxy::check_keywords(builtin, &names).map_err(|e| format!("{at}: {e}"))?;
            }
            Literal::ProxyRules {
                service,
                interface,
                rules,
            } => {
                let Some(svc) = module
                    .get(service)
                    .ok()
                    .and_then(|v| v.value().downcast_ref::<ServiceValue>().cloned())
                else {
                    continue;
                };
                let Some(iface) = svc.interfaces.iter().find(|i| &i.name == interface) else {
                    continue;
                };
                for (builtin, keys, status, at) in rules {
                    let Some(kind) = crate::proxy::kind(builtin) else {
                        continue;
                    };
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let on = |e: String| {
                        format!(
                            "{at}: {builtin}() on {}.{} ({}): {e}",
                            svc.name, iface.name, iface.protocol
                        )
                    };
                    faultbox_protocols::rules::check(&iface.protocol, kind, &keys).map_err(on)?;
                    if let Some(code) = status {
                        crate::proxy::check_code(&iface.protocol, code)
                            .map_err(|e| on(e.to_string()))?;
                    }
                }
            }
        }
    }
    for site in sites {
        let services = resolved(site, module);
        for name in &site.names {
            if crate::faults::check_syscall(name).is_ok() {
                continue;
            }
            let known_op = services.iter().any(|s| {
                if s == ANY_SERVICE {
                    ops.values().any(|o| o.contains(name))
                } else {
                    ops.get(s).is_some_and(|o| o.contains(name))
                }
            });
            if !known_op {
                return Err(format!(
                    "{}: unknown syscall or op {name:?} (not a syscall of {} nor an op of {})",
                    site.at,
                    faultbox_shim::syscalls::Arch::native().name(),
                    services.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn resolved(site: &Site, module: &FrozenModule) -> Vec<String> {
    let mut services: Vec<String> = site
        .targets
        .iter()
        .map(|t| match t {
            Target::Ident(ident) => module
                .get(ident)
                .ok()
                .and_then(|v| {
                    v.value()
                        .downcast_ref::<ServiceValue>()
                        .map(|s| s.name.clone())
                })
                .unwrap_or_else(|| ANY_SERVICE.to_string()),
            // Kept as written: a name or glob matches the services declared anywhere
            // in the spec, also those of files loaded later.
            Target::Name(name) => name.clone(),
            Target::Dynamic => ANY_SERVICE.to_string(),
        })
        .collect();
    if services.is_empty() {
        services.push(ANY_SERVICE.to_string());
    }
    services
}

fn targets(x: &AstExpr) -> Vec<Target> {
    match &x.node {
        ExprP::Identifier(id) => vec![Target::Ident(id.node.ident.clone())],
        ExprP::List(items) | ExprP::Tuple(items) => items.iter().flat_map(targets).collect(),
        _ => vec![Target::Dynamic],
    }
}

fn string_list(x: &AstExpr) -> Vec<String> {
    use starlark::syntax::ast::AstLiteral;
    match &x.node {
        ExprP::List(items) | ExprP::Tuple(items) => items
            .iter()
            .filter_map(|i| match &i.node {
                ExprP::Literal(AstLiteral::String(s)) => Some(s.node.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Resolves the sites of a file against its evaluated module: an identifier bound to
/// a service names that service; anything else may be any service.
pub fn resolve(
    sites: &[Site],
    module: &FrozenModule,
    into: &mut BTreeMap<String, BTreeSet<String>>,
) {
    for site in sites {
        for s in resolved(site, module) {
            into.entry(s)
                .or_default()
                .extend(site.names.iter().cloned());
        }
    }
}

/// Builtins that check something: a test that reaches none of them checks nothing.
pub const CHECK_CALLS: &[&str] = &[
    "assert_true",
    "assert_eq",
    "fail",
    "assert_eventually",
    "assert_never",
    "assert_before",
    "monitor",
];
/// Assertions on values (a step's result, an event list), as opposed to the trace.
const VALUE_CHECKS: &[&str] = &["assert_true", "assert_eq", "fail"];

/// A call of a checking or query builtin in a function's body.
#[derive(Debug, Clone)]
pub struct Call {
    pub builtin: String,
    pub file: String,
    pub line: usize,
    /// For value assertions: an argument reads an attribute or calls a method
    /// (`resp.status`, `svc.send(...)`), so it checks what something returned rather
    /// than a constant.
    pub on_result: bool,
}

/// A top-level `def`, read without running it.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub file: String,
    /// The line of its `def`.
    pub line: usize,
    /// Every identifier its body names (called or passed, as in `run = flow`): the
    /// other top-level functions it may reach.
    pub names: BTreeSet<String>,
    /// Checking and query builtins called in its body, nested functions and lambdas
    /// included.
    pub calls: Vec<Call>,
    /// Its docstring (a string literal as its first statement), dedented: what a
    /// test is about, for tools that list tests.
    pub doc: Option<String>,
}

/// A query's `syscall=` or `service=` filter, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Literal(String),
    /// An identifier: a top-level constant of the file, or a local.
    Name(String),
    Computed,
}

/// A query (`events()`, `assert_eventually()`, `assert_never()`, `monitor()`, or a
/// selector dict of `assert_before()`) with its filters as written.
#[derive(Debug, Clone)]
pub struct Query {
    pub builtin: String,
    pub file: String,
    pub line: usize,
    pub syscall: Option<Written>,
    pub service: Option<Written>,
}

/// A `fault*`/`trace*` call that passes `**kwargs`: the syscalls it names are hidden
/// from the filter, which covers only the names written in the call.
#[derive(Debug, Clone)]
pub struct Hidden {
    pub builtin: String,
    pub file: String,
    pub line: usize,
}

/// What `faultbox check` reads from one parsed file.
#[derive(Debug, Default)]
pub struct Outline {
    pub functions: Vec<Function>,
    pub queries: Vec<Query>,
    pub hidden: Vec<Hidden>,
}

fn place(ast: &AstModule, span: starlark::codemap::Span) -> (String, usize) {
    let r = ast.file_span(span).resolve();
    (r.file, r.span.begin.line + 1)
}

/// Reads a parsed file's top-level functions, queries and `**kwargs` fault calls.
pub fn outline(ast: &AstModule) -> Outline {
    use starlark::syntax::ast::StmtP;
    let mut out = Outline::default();
    let mut top = Vec::new();
    match &ast.statement().node {
        StmtP::Statements(xs) => top.extend(xs.iter()),
        _ => top.push(ast.statement()),
    }
    for stmt in top {
        if let StmtP::Def(def) = &stmt.node {
            let (file, line) = place(ast, stmt.span);
            let mut f = Function {
                name: def.name.node.ident.clone(),
                file,
                line,
                names: BTreeSet::new(),
                calls: Vec::new(),
                doc: docstring(&def.body),
            };
            def.body.visit_expr(|e| body_expr(ast, e, &mut f));
            out.functions.push(f);
        }
    }
    ast.statement()
        .visit_expr(|e| outline_expr(ast, e, &mut out));
    out
}

/// The docstring of a function body: its first statement, when that is a string
/// literal, with the indentation of its continuation lines removed.
fn docstring(body: &starlark::syntax::ast::AstStmt) -> Option<String> {
    use starlark::syntax::ast::{AstLiteral, StmtP};
    let first = match &body.node {
        StmtP::Statements(xs) => xs.first()?,
        _ => body,
    };
    let StmtP::Expression(e) = &first.node else {
        return None;
    };
    let ExprP::Literal(AstLiteral::String(s)) = &e.node else {
        return None;
    };
    let mut lines = s.node.lines();
    let head = lines.next().unwrap_or("").trim();
    let rest: Vec<&str> = lines.collect();
    let indent = rest
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = vec![head.to_string()];
    out.extend(
        rest.iter()
            .map(|l| l.get(indent..).unwrap_or("").trim_end().to_string()),
    );
    let text = out.join("\n").trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Collects the names and calls of one expression of a function body, and of every
/// expression inside it.
fn body_expr(ast: &AstModule, e: &AstExpr, f: &mut Function) {
    match &e.node {
        ExprP::Identifier(id) => {
            f.names.insert(id.node.ident.clone());
        }
        ExprP::Call(callee, args) => {
            if let ExprP::Identifier(id) = &callee.node {
                let name = id.node.ident.as_str();
                if CHECK_CALLS.contains(&name) || name == "events" {
                    let (file, line) = place(ast, e.span);
                    let on_result = VALUE_CHECKS.contains(&name)
                        && args.args.iter().any(|a| reads_result(a.expr()));
                    f.calls.push(Call {
                        builtin: name.to_string(),
                        file,
                        line,
                        on_result,
                    });
                }
            }
        }
        _ => {}
    }
    e.visit_expr(|c| body_expr(ast, c, f));
}

/// Whether an expression reads an attribute or calls a method.
fn reads_result(e: &AstExpr) -> bool {
    if matches!(e.node, ExprP::Dot(..)) {
        return true;
    }
    let mut found = false;
    e.visit_expr(|c| found = found || reads_result(c));
    found
}

fn written(e: &AstExpr) -> Written {
    use starlark::syntax::ast::AstLiteral;
    match &e.node {
        ExprP::Literal(AstLiteral::String(s)) => Written::Literal(s.node.clone()),
        ExprP::Identifier(id) => Written::Name(id.node.ident.clone()),
        _ => Written::Computed,
    }
}

fn outline_expr(ast: &AstModule, e: &AstExpr, out: &mut Outline) {
    use starlark::syntax::ast::AstLiteral;
    if let ExprP::Call(callee, args) = &e.node {
        if let ExprP::Identifier(id) = &callee.node {
            let name = id.node.ident.as_str();
            let (file, line) = place(ast, e.span);
            let mut query = |filters: Vec<(&str, &AstExpr)>| {
                let get = |k: &str| {
                    filters
                        .iter()
                        .find(|(n, _)| *n == k)
                        .map(|(_, v)| written(v))
                };
                out.queries.push(Query {
                    builtin: name.to_string(),
                    file: file.clone(),
                    line,
                    syscall: get("syscall"),
                    service: get("service"),
                });
            };
            if QUERY_CALLS.contains(&name) {
                query(
                    args.args
                        .iter()
                        .filter_map(|a| match &a.node {
                            ArgumentP::Named(k, v) => Some((k.node.as_str(), v)),
                            _ => None,
                        })
                        .collect(),
                );
            }
            if name == "assert_before" {
                for a in &args.args {
                    if let ArgumentP::Named(_, v) = &a.node {
                        if let ExprP::Dict(pairs) = &v.node {
                            query(
                                pairs
                                    .iter()
                                    .filter_map(|(k, v)| match &k.node {
                                        ExprP::Literal(AstLiteral::String(k)) => {
                                            Some((k.node.as_str(), v))
                                        }
                                        _ => None,
                                    })
                                    .collect(),
                            );
                        }
                    }
                }
            }
            if (FAULT_CALLS.contains(&name) || TRACE_CALLS.contains(&name))
                && args
                    .args
                    .iter()
                    .any(|a| matches!(a.node, ArgumentP::KwArgs(_)))
            {
                out.hidden.push(Hidden {
                    builtin: name.to_string(),
                    file,
                    line,
                });
            }
        }
    }
    e.visit_expr(|c| outline_expr(ast, c, out));
}

/// Reads and parses the spec file `name` (as the loader named it) and outlines it.
pub fn outline_file(name: &str) -> Result<Outline, String> {
    let source = std::fs::read_to_string(name).map_err(|e| format!("{name}: {e}"))?;
    let ast = AstModule::parse(name, source, &crate::loader::dialect())
        .map_err(|e| crate::loader::describe(&e))?;
    Ok(outline(&ast))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(source: &str) -> Vec<(String, Option<String>)> {
        let ast = AstModule::parse("t.star", source.to_string(), &crate::loader::dialect())
            .expect("parses");
        outline(&ast)
            .functions
            .into_iter()
            .map(|f| (f.name, f.doc))
            .collect()
    }

    #[test]
    fn docstrings_are_the_first_statement_dedented() {
        let got = docs(concat!(
            "def test_a():\n",
            "    \"\"\"Orders survive a slow disk.\n",
            "\n",
            "        The WAL is fsynced first.\n",
            "    \"\"\"\n",
            "    pass\n",
            "def test_b():\n",
            "    x = \"not a docstring\"\n",
            "def test_c():\n",
            "    'One line.'\n",
        ));
        assert_eq!(
            got,
            vec![
                (
                    "test_a".to_string(),
                    Some("Orders survive a slow disk.\n\nThe WAL is fsynced first.".to_string())
                ),
                ("test_b".to_string(), None),
                ("test_c".to_string(), Some("One line.".to_string())),
            ]
        );
    }
}
