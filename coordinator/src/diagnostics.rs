//! Diagnostics: what a test's trace suggests beyond pass or fail. Each has a code, a
//! severity, a message (what happened), a suggestion (what to change) and, where the
//! spec has one, the line it is about: the `fault()` whose rule never fired, the
//! `service()` that crashed, the test that asserts nothing. An agent can go straight to
//! that line instead of searching the spec for it.

use faultbox_executor::world::run::{Startup, TestReport};
use faultbox_executor::world::test_world::FaultReport;
use faultbox_spec::model::Location;
use faultbox_spec::{Spec, Verdict};
use serde_json::{json, Value};

/// How sure a diagnostic is that something is wrong: an error explains a failure (a
/// service that did not start or crashed); a warning means the test may not check
/// what it was meant to (a fault that never fired, an error that was swallowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub suggestion: String,
    /// The spec line to look at, when there is one.
    pub at: Option<Location>,
}

impl Diagnostic {
    /// The entry of a test's `diagnostics[]`; `file` and `line` as `faultbox check`
    /// gives them, absent when no spec line is concerned.
    pub fn to_json(&self) -> Value {
        let mut d = json!({
            "code": self.code,
            "severity": self.severity.as_str(),
            "message": self.message,
            "suggestion": self.suggestion,
        });
        if let Some(at) = &self.at {
            d["file"] = json!(at.file);
            d["line"] = json!(at.line);
        }
        d
    }

    /// The human line: `file:line: CODE: message (suggestion)`.
    pub fn human(&self) -> String {
        let at = self
            .at
            .as_ref()
            .map(|a| format!("{a}: "))
            .unwrap_or_default();
        format!("{at}{}: {} ({})", self.code, self.message, self.suggestion)
    }
}

/// What `TEST_NO_ASSERTIONS` says, after a run and from `faultbox check` alike.
pub fn no_assertions_message(test: &str) -> String {
    format!("{test} checked nothing")
}

pub const NO_ASSERTIONS_SUGGESTION: &str = "add assert_eq/assert_true on the steps' results, or assert_eventually/assert_never on the trace; a test without assertions only proves the services started";

/// A location that points somewhere: runs from older executors carry none.
fn known(at: Option<&Location>) -> Option<Location> {
    at.filter(|a| !a.file.is_empty() && a.line > 0).cloned()
}

/// " at FILE:LINE" for a suggestion, or nothing.
fn where_(at: &Option<Location>) -> String {
    at.as_ref().map(|a| format!(" at {a}")).unwrap_or_default()
}

/// `deny(EIO)`, `delay(300ms)` or the action as recorded.
fn what(f: &FaultReport) -> String {
    match (&f.errno, &f.delay) {
        (Some(e), _) => format!("deny({e})"),
        (_, Some(d)) => format!("delay({d})"),
        _ => f.action.clone(),
    }
}

/// The diagnostics of one run; `spec` gives the lines of its services and tests.
pub fn diagnose(r: &TestReport, spec: &Spec) -> Vec<Diagnostic> {
    let service_at = |name: &str| {
        known(
            spec.services
                .iter()
                .find(|s| s.name == name)
                .map(|s| &s.declared_at),
        )
    };
    let mut out = Vec::new();
    match &r.startup {
        Some(Startup::HealthcheckTimeout { service }) => {
            let at = service_at(service);
            out.push(Diagnostic {
                code: "HEALTHCHECK_TIMEOUT",
                severity: Severity::Error,
                message: format!("service {service:?} never passed its healthcheck"),
                suggestion: format!(
                    "check that {service} listens on the healthcheck's port on 127.0.0.1, and its stderr in the failure reason; if it is just slow, raise the healthcheck's timeout= in service(){}",
                    where_(&at)
                ),
                at,
            })
        }
        Some(Startup::Exited { service, code }) => {
            let at = service_at(service);
            out.push(Diagnostic {
                code: "SERVICE_CRASHED",
                severity: Severity::Error,
                message: format!("service {service:?} exited with code {code} during startup"),
                suggestion: format!(
                    "run the service's binary by hand with the args and env of service(){}; its last stderr lines are in the failure reason",
                    where_(&at)
                ),
                at,
            })
        }
        _ => {}
    }
    for (service, code) in &r.crashed {
        // The faults that fired on it are the likely cause: point at the first.
        let fired = r
            .faults
            .iter()
            .find(|f| &f.service == service && f.hits > 0);
        let (at, suggestion) = match fired {
            Some(f) => {
                let at = known(f.declared_at.as_ref());
                (
                    at.clone(),
                    format!(
                        "the fault {}{} may have taken {service} down instead of making it fail gracefully: handle that error in {service}, or fault a call it can survive",
                        f.label.as_deref().unwrap_or(&what(f)),
                        where_(&at)
                    ),
                )
            }
            None => {
                let at = service_at(service);
                (
                    at.clone(),
                    format!(
                        "no fault fired on {service}: its stderr shows why it exited; check the args and env of service(){}",
                        where_(&at)
                    ),
                )
            }
        };
        out.push(Diagnostic {
            code: "SERVICE_CRASHED",
            severity: Severity::Error,
            message: format!("service {service:?} exited with code {code} during the test"),
            suggestion,
            at,
        });
    }
    for f in &r.faults {
        // A partition blocks both directions; one of them going unused is expected.
        let partition = f
            .label
            .as_deref()
            .is_some_and(|l| l.starts_with("partition "));
        if f.hits != 0 || partition {
            continue;
        }
        let at = known(f.declared_at.as_ref());
        if let Some(iface) = &f.interface {
            out.push(Diagnostic {
                code: "FAULT_NOT_FIRED",
                severity: Severity::Warning,
                message: format!("rule {} on {}.{iface} never fired", f.action, f.service),
                suggestion: format!(
                    "no request on that interface matched while the rule was active: change the rule's patterns{} to match the requests the trace shows (proxy events carry them), and check that source= names the consumer that sends them",
                    where_(&at)
                ),
                at,
            });
            continue;
        }
        let hint = if matches!(f.syscall.as_str(), "write" | "read") {
            " Network services often use send/recv (the sendto/recvfrom families) on sockets, not write/read."
        } else {
            ""
        };
        out.push(Diagnostic {
            code: "FAULT_NOT_FIRED",
            severity: Severity::Warning,
            message: format!(
                "fault {}={} on {:?} never fired",
                f.syscall,
                what(f),
                f.service
            ),
            suggestion: format!(
                "the service made no matching call while the fault was active: change {}= (or its path glob){} to a call the service makes there; trace() or --debug shows its calls.{hint}",
                f.syscall,
                where_(&at)
            ),
            at,
        });
    }
    if r.verdict == Verdict::Pass {
        out.extend(fired_but_success(r));
    }
    if r.assertions == 0 && !r.probe && r.startup.is_none() && r.verdict == Verdict::Pass {
        out.push(Diagnostic {
            code: "TEST_NO_ASSERTIONS",
            severity: Severity::Warning,
            message: no_assertions_message(&r.name),
            suggestion: NO_ASSERTIONS_SUGGESTION.into(),
            at: known(
                spec.tests
                    .iter()
                    .find(|t| t.name == r.name)
                    .map(|t| &t.declared_at),
            ),
        });
    }
    out
}

/// A deny fault fired and the service's next answer to a step was still a 2xx: the
/// error may have been swallowed.
fn fired_but_success(r: &TestReport) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in &r.events {
        if e.kind != "syscall"
            || !e
                .fields
                .get("decision")
                .is_some_and(|d| d.starts_with("deny"))
        {
            continue;
        }
        if !seen.insert(e.service.clone()) {
            continue;
        }
        // The service's next answer: the reply to the request the denial happened in.
        let later_ok = r
            .events
            .iter()
            .find(|s| {
                s.seq > e.seq
                    && s.kind == "step_recv"
                    && s.fields.get("service").is_some_and(|v| *v == e.service)
            })
            .filter(|s| s.fields.get("status").is_some_and(|st| st.starts_with('2')));
        let Some(ok) = later_ok else {
            continue;
        };
        let syscall = e.fields.get("syscall").map(String::as_str).unwrap_or("?");
        // The fault that denied it: a deny on this service that fired.
        let fault = r
            .faults
            .iter()
            .find(|f| f.service == e.service && f.errno.is_some() && f.hits > 0);
        let at = fault.and_then(|f| known(f.declared_at.as_ref()));
        out.push(Diagnostic {
            code: "FAULT_FIRED_BUT_SUCCESS",
            severity: Severity::Warning,
            message: format!(
                "{} {syscall} was denied ({}), yet {}'s next answer was {}",
                e.service,
                e.fields.get("decision").map(String::as_str).unwrap_or("?"),
                e.service,
                ok.fields.get("status").map(String::as_str).unwrap_or("?"),
            ),
            suggestion: format!(
                "make {} handle the failed {syscall} on that path instead of ignoring it, and assert on the error in the test run under the fault{} (or, if a retry made the success legitimate, assert that the retry happened)",
                e.service,
                where_(&at)
            ),
            at,
        });
    }
    out
}
