//! Diagnostics: what a test's trace suggests beyond pass or fail, each with a code, a
//! message and a suggestion.

use faultbox_executor::world::run::{Startup, TestReport};
use faultbox_spec::Verdict;
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: &'static str,
    pub message: String,
    pub suggestion: String,
}

impl Diagnostic {
    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "suggestion": self.suggestion})
    }
}

/// What `TEST_NO_ASSERTIONS` says, after a run and from `faultbox check` alike.
pub fn no_assertions_message(test: &str) -> String {
    format!("{test} checked nothing")
}

pub const NO_ASSERTIONS_SUGGESTION: &str = "add assert_eq/assert_true on the steps' results, or assert_eventually/assert_never on the trace; a test without assertions only proves the services started";

/// The diagnostics of one run.
pub fn diagnose(r: &TestReport) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    match &r.startup {
        Some(Startup::HealthcheckTimeout { service }) => out.push(Diagnostic {
            code: "HEALTHCHECK_TIMEOUT",
            message: format!("service {service:?} never passed its healthcheck"),
            suggestion: format!(
                "check that {service} listens on the healthcheck's port on 127.0.0.1, and its stderr in the failure reason; raise timeout= if it is just slow"
            ),
        }),
        Some(Startup::Exited { service, code }) => out.push(Diagnostic {
            code: "SERVICE_CRASHED",
            message: format!("service {service:?} exited with code {code} during startup"),
            suggestion: "run the service's binary by hand with the spec's args and env; its last stderr lines are in the failure reason".into(),
        }),
        _ => {}
    }
    for (service, code) in &r.crashed {
        out.push(Diagnostic {
            code: "SERVICE_CRASHED",
            message: format!("service {service:?} exited with code {code} during the test"),
            suggestion: format!(
                "a fault may have taken {service} down instead of making it fail gracefully: look at the faults that fired before it exited"
            ),
        });
    }
    for f in &r.faults {
        let what = match (&f.errno, &f.delay) {
            (Some(e), _) => format!("deny({e})"),
            (_, Some(d)) => format!("delay({d})"),
            _ => f.action.clone(),
        };
        // A partition blocks both directions; one of them going unused is expected.
        let partition = f
            .label
            .as_deref()
            .is_some_and(|l| l.starts_with("partition "));
        if f.hits == 0 && !partition {
            if let Some(iface) = &f.interface {
                out.push(Diagnostic {
                    code: "FAULT_NOT_FIRED",
                    message: format!("rule {} on {}.{iface} never fired", f.action, f.service),
                    suggestion: "no request on that interface matched while the rule was active: compare its patterns with the requests the trace shows (proxy events carry them), and check source= names the consumer that sends them".into(),
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
                message: format!("fault {}={what} on {:?} never fired", f.syscall, f.service),
                suggestion: format!(
                    "the service made no matching call while the fault was active: check the syscall name and path glob with trace() or --debug.{hint}"
                ),
            });
        }
    }
    if r.verdict == Verdict::Pass {
        out.extend(fired_but_success(r));
    }
    if r.assertions == 0 && !r.probe && r.startup.is_none() && r.verdict == Verdict::Pass {
        out.push(Diagnostic {
            code: "TEST_NO_ASSERTIONS",
            message: no_assertions_message(&r.name),
            suggestion: NO_ASSERTIONS_SUGGESTION.into(),
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
                    && s.fields.get("service") == Some(&e.service)
            })
            .filter(|s| s.fields.get("status").is_some_and(|st| st.starts_with('2')));
        if let Some(ok) = later_ok {
            out.push(Diagnostic {
                code: "FAULT_FIRED_BUT_SUCCESS",
                message: format!(
                    "{} {} was denied ({}), yet {}'s next answer was {}",
                    e.service,
                    e.fields.get("syscall").map(String::as_str).unwrap_or("?"),
                    e.fields.get("decision").map(String::as_str).unwrap_or("?"),
                    e.service,
                    ok.fields.get("status").map(String::as_str).unwrap_or("?"),
                ),
                suggestion: "check that the service handles the error on that path instead of ignoring it (or that a retry made the success legitimate)".into(),
            });
        }
    }
    out
}
