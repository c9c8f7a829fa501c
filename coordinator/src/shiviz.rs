//! The ShiViz trace (`--shiviz FILE`): the reference's parsing regex on the first
//! line, then the execution delimiter (empty for a single test), a blank line, and per
//! event the host with its vector clock on one line and what happened on the next.
//! Several tests are separate executions, each after a `=== name ===` line.

use std::fmt::Write as _;

use faultbox_executor::world::run::TestReport;

pub const HEADER: &str = "(?<host>\\S+) (?<clock>\\{.*\\})";
pub const DELIMITER: &str = "=== (?<trace>.*) ===";

pub fn shiviz(reports: &[TestReport]) -> String {
    let several = reports.len() > 1;
    let mut out = format!("{HEADER}\n{}\n\n", if several { DELIMITER } else { "" });
    for r in reports {
        if several {
            let _ = writeln!(out, "=== {} seed={} ===", r.name, r.seed);
        }
        for e in &r.events {
            let clock = serde_json::to_string(&e.vector_clock).unwrap_or_else(|_| "{}".into());
            let mut what = e.event_type.to_string();
            for key in ["decision", "path", "method", "status", "peer", "rules"] {
                if let Some(v) = e.fields.get(key) {
                    let _ = write!(what, " {v}");
                }
            }
            let _ = writeln!(out, "{} {clock}\n{what}", e.service);
        }
    }
    out
}
