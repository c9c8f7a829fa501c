//! `faultbox check SPEC`: loads a spec as `faultbox test --dry-run` does and reads
//! it statically for mistakes a run would only reveal later (or never): each finding
//! has a code, a severity, a message, a suggestion and the spec line it is about.
//! Nothing runs: no service, no sandbox, no Docker, no network, no root needed.
//! Exit codes: 0 clean, 2 findings, 1 the spec does not load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use faultbox_spec::analysis::{self, Function, Outline, Written};
use faultbox_spec::Loaded;
use serde_json::json;

use crate::diagnostics;

/// Findings were reported.
pub const EXIT_FINDINGS: i32 = 2;
/// The spec did not load.
const EXIT_ERROR: i32 = 1;

/// How sure a finding is that a run goes wrong: an error always does (a run refuses
/// it, or a query can only see nothing); a warning may be intended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub suggestion: String,
}

impl Finding {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "code": self.code,
            "severity": self.severity.as_str(),
            "message": self.message,
            "suggestion": self.suggestion,
            "file": self.file,
            "line": self.line,
        })
    }
}

/// `--format json`'s document for a spec that loaded: its findings.
pub fn json_doc(spec_arg: &str, findings: &[Finding]) -> serde_json::Value {
    json!({
        "spec": spec_arg,
        "ok": findings.is_empty(),
        "findings": findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
    })
}

/// `--format json`'s document for a spec that could not be read: the message
/// `faultbox test` gives.
pub fn json_error(spec_arg: &str, error: &str) -> serde_json::Value {
    json!({"spec": spec_arg, "ok": false, "error": error, "findings": []})
}

/// Runs `faultbox check` and returns its exit code.
pub fn run(spec: &Path, format: Option<&str>) -> i32 {
    let spec_arg = spec.display().to_string();
    let json_out = format == Some("json");
    let failed = |e: String| {
        eprintln!("faultbox: error: {e}");
        if json_out {
            let doc = json_error(&spec_arg, &e);
            let _ = crate::stdout::write(&format!("{doc}\n"));
        }
        EXIT_ERROR
    };
    let loaded = match faultbox_spec::load(spec) {
        Ok(l) => l,
        Err(e) => return failed(e.to_string()),
    };
    let findings = match findings(&loaded) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let out = if json_out {
        format!("{}\n", json_doc(&spec_arg, &findings))
    } else {
        text(&spec_arg, &loaded, &findings)
    };
    if let Err(e) = crate::stdout::write(&out) {
        eprintln!("faultbox: error: {e}");
        return EXIT_ERROR;
    }
    if findings.is_empty() {
        0
    } else {
        EXIT_FINDINGS
    }
}

fn text(spec: &str, loaded: &Loaded, findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(
            out,
            "{}:{}: {}: {} ({})",
            f.file, f.line, f.code, f.message, f.suggestion
        );
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let scope = format!(
        "{} service(s), {} test(s)",
        loaded.spec.services.len(),
        loaded.spec.tests.len()
    );
    if findings.is_empty() {
        let _ = writeln!(out, "{spec}: no findings ({scope})");
    } else {
        let _ = writeln!(
            out,
            "{spec}: {} finding(s): {errors} error(s), {} warning(s) ({scope})",
            findings.len(),
            findings.len() - errors
        );
    }
    out
}

/// Everything `faultbox check` finds in a loaded spec, sorted by place.
pub fn findings(loaded: &Loaded) -> Result<Vec<Finding>, String> {
    let mut out = Vec::new();
    services(loaded, &mut out);
    let mut outlines: Vec<(&faultbox_spec::loader::SpecFile, Outline)> = Vec::new();
    for file in &loaded.evaluated {
        outlines.push((file, analysis::outline_file(&file.name)?));
    }
    for (file, outline) in &outlines {
        hidden(outline, &mut out);
        queries(loaded, file, outline, &mut out);
    }
    tests(loaded, &outlines, &mut out);
    out.sort();
    out.dedup();
    Ok(out)
}

fn line_of(at: &faultbox_spec::model::Location) -> (String, usize) {
    (at.file.clone(), at.line)
}

/// What `faultbox test --dry-run` refuses about services, as findings: a program
/// that is not on this host may be on the one that runs the spec, and a container
/// without a filter is the static form of a fault that cannot take effect.
fn services(loaded: &Loaded, out: &mut Vec<Finding>) {
    use faultbox_executor::sandbox::program;
    for svc in &loaded.spec.services {
        let (file, line) = line_of(&svc.declared_at);
        if let Err(e) = program::resolve(svc) {
            out.push(Finding {
                file: file.clone(),
                line,
                code: "SERVICE_PROGRAM_NOT_FOUND",
                severity: Severity::Warning,
                message: format!("service {:?}: {e}", svc.name),
                suggestion: "build the program, or fix binary= (a relative path is relative to the declaring file); `faultbox test` refuses to start without it".into(),
            });
        }
        if svc.container.as_ref().is_some_and(|c| !c.seccomp) {
            let wanted = loaded.spec.filter_syscalls(&svc.name);
            if !wanted.is_empty() {
                out.push(Finding {
                    file: file.clone(),
                    line,
                    code: "FAULT_NOT_COVERED",
                    severity: Severity::Error,
                    message: format!(
                        "service {:?} has seccomp=False, but the spec faults, traces or queries its syscalls ({}): no filter covers them",
                        svc.name,
                        wanted.join(", ")
                    ),
                    suggestion: "remove seccomp=False, or the fault/trace/query calls on this service".into(),
                });
            }
        }
        if let Some(user) = &svc.user {
            if let Err(e) = faultbox_executor::sandbox::user::resolve(user) {
                out.push(Finding {
                    file,
                    line,
                    code: "SERVICE_USER_UNRESOLVED",
                    severity: Severity::Warning,
                    message: format!("service {:?}: user {user:?}: {e}", svc.name),
                    suggestion:
                        "create the user on the host that runs the spec (as root), or drop user="
                            .into(),
                });
            }
        }
    }
}

/// `fault*`/`trace*` calls with `**kwargs`: their syscalls are invisible to the
/// filter, so a run refuses them unless another call names the same syscalls.
fn hidden(outline: &Outline, out: &mut Vec<Finding>) {
    for h in &outline.hidden {
        out.push(Finding {
            file: h.file.clone(),
            line: h.line,
            code: "FAULT_NOT_COVERED",
            severity: Severity::Warning,
            message: format!(
                "{}() passes **kwargs: the syscalls it names cannot be seen before the run, so no filter is made to cover them",
                h.builtin
            ),
            suggestion: format!(
                "write the syscalls as keywords of the call ({}(svc, write=deny(\"EIO\")) or trace(svc, syscalls=[...])); otherwise the run fails with \"cannot take effect\"",
                h.builtin
            ),
        });
    }
}

/// The kernel syscalls `service`'s filter covers.
fn covered(loaded: &Loaded, service: &str) -> BTreeSet<String> {
    let arch = faultbox_shim::syscalls::Arch::native();
    loaded
        .spec
        .filter_syscalls(service)
        .iter()
        .flat_map(|n| faultbox_shim::syscalls::expand(n, arch).unwrap_or_default())
        .map(|s| s.name)
        .collect()
}

/// Queries whose `syscall=` no filter observes: the filter includes a query's
/// syscall only when it is a string literal, and a `service=` that matches no
/// service observes nothing. A run refuses such queries when it reaches them.
fn queries(
    loaded: &Loaded,
    file: &faultbox_spec::loader::SpecFile,
    outline: &Outline,
    out: &mut Vec<Finding>,
) {
    let names: Vec<&str> = loaded
        .spec
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for q in &outline.queries {
        let Some(syscall) = &q.syscall else { continue };
        let mut finding = |severity, message: String, suggestion: String| {
            out.push(Finding {
                file: q.file.clone(),
                line: q.line,
                code: "QUERY_NOT_OBSERVED",
                severity,
                message,
                suggestion,
            })
        };
        let selected: Vec<&str> = match &q.service {
            Some(Written::Literal(p)) => {
                let m: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|n| faultbox_spec::runtime::glob_match(p, n))
                    .collect();
                if m.is_empty() {
                    finding(
                        Severity::Error,
                        format!(
                            "{}(): service={p:?} matches no service, so syscall= observes nothing",
                            q.builtin
                        ),
                        format!("name one of the services: {}", names.join(", ")),
                    );
                    continue;
                }
                m
            }
            None => names.clone(),
            // A computed service: only one of them need observe the syscall.
            Some(_) => Vec::new(),
        };
        let pattern = match syscall {
            // Literals are in the filter by construction (and checked at load).
            Written::Literal(_) => continue,
            Written::Name(n) => file
                .module
                .get(n)
                .ok()
                .and_then(|v| v.value().unpack_str().map(str::to_string)),
            Written::Computed => None,
        };
        let Some(pattern) = pattern else {
            finding(
                Severity::Warning,
                format!(
                    "{}(): syscall= is not a string literal, so no filter is made to observe it; unless a fault() or trace() names the same syscall the run refuses the query",
                    q.builtin
                ),
                "write syscall=\"...\" as a string literal in the call, or name the syscall in trace(svc, syscalls=[...])".into(),
            );
            continue;
        };
        let Ok(wanted) = faultbox_spec::faults::query_syscalls(&pattern) else {
            finding(
                Severity::Error,
                format!(
                    "{}(): syscall={pattern:?} names no syscall of {}",
                    q.builtin,
                    faultbox_shim::syscalls::Arch::native().name()
                ),
                "name a syscall, a family such as write, or a glob such as *sync".into(),
            );
            continue;
        };
        let missing = |svc: &str| -> Vec<String> {
            let have = covered(loaded, svc);
            wanted
                .iter()
                .filter(|w| !have.contains(*w))
                .cloned()
                .collect()
        };
        let uncovered: Vec<(&str, Vec<String>)> = if selected.is_empty() {
            // Computed service=: nothing observed anywhere is the certain case.
            let all: Vec<(&str, Vec<String>)> = names.iter().map(|n| (*n, missing(n))).collect();
            if all.iter().all(|(_, m)| !m.is_empty()) {
                all
            } else {
                Vec::new()
            }
        } else {
            selected
                .iter()
                .map(|n| (*n, missing(n)))
                .filter(|(_, m)| !m.is_empty())
                .collect()
        };
        if let Some((svc, m)) = uncovered.first() {
            finding(
                Severity::Error,
                format!(
                    "{}(): syscall={pattern:?} is not observed on service {svc:?} (its filter does not cover {}): the filter includes a query's syscall only when written as a string literal",
                    q.builtin,
                    m.join(", ")
                ),
                format!("write syscall={pattern:?} in the call, or name it in trace({svc}, syscalls=[...])"),
            );
        }
    }
}

/// Every top-level function of every spec file, by name.
fn functions<'a>(
    outlines: &'a [(&faultbox_spec::loader::SpecFile, Outline)],
) -> BTreeMap<&'a str, Vec<&'a Function>> {
    let mut by_name: BTreeMap<&str, Vec<&Function>> = BTreeMap::new();
    for (_, o) in outlines {
        for f in &o.functions {
            by_name.entry(f.name.as_str()).or_default().push(f);
        }
    }
    by_name
}

/// The functions `start` may reach: itself, and every top-level function of any spec
/// file its body names, transitively. Names are matched without scoping, so this
/// may reach more than a run does (never less, except through values computed at
/// run time).
fn reachable<'a>(
    start: &'a Function,
    by_name: &BTreeMap<&'a str, Vec<&'a Function>>,
) -> Vec<&'a Function> {
    let mut seen: BTreeSet<(&str, usize)> = BTreeSet::new();
    let mut todo = vec![start];
    let mut out = Vec::new();
    while let Some(f) = todo.pop() {
        if !seen.insert((f.file.as_str(), f.line)) {
            continue;
        }
        out.push(f);
        for n in &f.names {
            if let Some(fs) = by_name.get(n.as_str()) {
                todo.extend(fs.iter().copied());
            }
        }
    }
    out
}

/// Tests (`def test_*`) that check nothing, and `assert_never` with no positive
/// control: both pass however the system behaves.
fn tests(
    loaded: &Loaded,
    outlines: &[(&faultbox_spec::loader::SpecFile, Outline)],
    out: &mut Vec<Finding>,
) {
    let by_name = functions(outlines);
    let main = loaded.evaluated.last().map(|f| f.name.as_str());
    for test in loaded.spec.tests.iter().filter(|t| !t.function.is_empty()) {
        // The def of the spec file itself, else one a load() brought in.
        let Some(candidates) = by_name.get(test.function.as_str()) else {
            continue;
        };
        let Some(def) = candidates
            .iter()
            .find(|f| Some(f.file.as_str()) == main)
            .or(candidates.first())
        else {
            continue;
        };
        let calls: Vec<&analysis::Call> = reachable(def, &by_name)
            .into_iter()
            .flat_map(|f| &f.calls)
            .collect();
        if !calls
            .iter()
            .any(|c| analysis::CHECK_CALLS.contains(&c.builtin.as_str()))
        {
            out.push(Finding {
                file: def.file.clone(),
                line: def.line,
                code: "TEST_NO_ASSERTIONS",
                severity: Severity::Warning,
                message: diagnostics::no_assertions_message(&test.name),
                suggestion: diagnostics::NO_ASSERTIONS_SUGGESTION.into(),
            });
            continue;
        }
        let control = calls.iter().any(|c| {
            matches!(
                c.builtin.as_str(),
                "assert_eventually" | "assert_before" | "events"
            ) || c.on_result
        });
        if control {
            continue;
        }
        for never in calls.iter().filter(|c| c.builtin == "assert_never") {
            out.push(Finding {
                file: never.file.clone(),
                line: never.line,
                code: "NEVER_WITHOUT_CONTROL",
                severity: Severity::Warning,
                message: format!(
                    "{}: assert_never() has no positive control: nothing in the test shows the events it looks for could be seen, so it passes also when nothing ran",
                    test.name
                ),
                suggestion: "in the same test, assert that the system did something observable: assert_eventually(...) or events(...) on the same service, or assert_eq on a step's result".into(),
            });
        }
    }
}
