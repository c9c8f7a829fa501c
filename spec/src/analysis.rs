//! What a spec can fault, found before anything runs: every `fault()`,
//! `fault_start()`, `fault_all()`, `trace()` and `trace_start()` call in every file,
//! with the services it names and the syscall (or op) keywords it passes. A service's
//! filter covers exactly these, so services no test can fault run with no filter.

use std::collections::{BTreeMap, BTreeSet};

use starlark::environment::FrozenModule;
use starlark::syntax::ast::{ArgumentP, AstExpr, ExprP};
use starlark::syntax::AstModule;
use starlark::values::ValueLike;

use crate::values::ServiceValue;

/// A service, or every service when a call's target cannot be resolved statically.
pub const ANY_SERVICE: &str = "*";

const FAULT_CALLS: &[&str] = &["fault", "fault_start", "fault_all"];
const TRACE_CALLS: &[&str] = &["trace", "trace_start"];
/// Keywords of those calls that are not syscalls.
const NOT_SYSCALLS: &[&str] = &["run", "syscalls"];

/// A call site: the identifiers naming its target services, and what it intercepts.
#[derive(Debug, Default)]
pub struct Site {
    targets: Vec<Option<String>>,
    names: Vec<String>,
}

/// Collects the call sites of one parsed file.
pub fn sites(ast: &AstModule) -> Vec<Site> {
    let mut out = Vec::new();
    ast.statement().visit_expr(|e| walk(e, &mut out));
    out
}

fn walk(e: &AstExpr, out: &mut Vec<Site>) {
    if let ExprP::Call(callee, args) = &e.node {
        if let ExprP::Identifier(id) = &callee.node {
            let name = id.node.ident.as_str();
            let is_fault = FAULT_CALLS.contains(&name);
            let is_trace = TRACE_CALLS.contains(&name);
            if is_fault || is_trace {
                let mut site = Site::default();
                for (i, a) in args.args.iter().enumerate() {
                    match &a.node {
                        ArgumentP::Positional(x) if i == 0 => site.targets = targets(x),
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
                out.push(site);
            }
        }
    }
    e.visit_expr(|c| walk(c, out));
}

fn targets(x: &AstExpr) -> Vec<Option<String>> {
    match &x.node {
        ExprP::Identifier(id) => vec![Some(id.node.ident.clone())],
        ExprP::List(items) | ExprP::Tuple(items) => items.iter().flat_map(targets).collect(),
        _ => vec![None],
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
        let mut services: Vec<String> = site
            .targets
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|ident| module.get(ident).ok())
                    .and_then(|v| {
                        v.value()
                            .downcast_ref::<ServiceValue>()
                            .map(|s| s.name.clone())
                    })
                    .unwrap_or_else(|| ANY_SERVICE.to_string())
            })
            .collect();
        if services.is_empty() {
            services.push(ANY_SERVICE.to_string());
        }
        for s in services {
            into.entry(s)
                .or_default()
                .extend(site.names.iter().cloned());
        }
    }
}
