//! The normalized trace: a stable text form of each test's events, for comparing runs
//! (`--normalize FILE`, then `faultbox diff`). Services appear in name order; within a
//! service, its lifecycle and the test driver's actions on it come first and its
//! syscalls after, each in order (the two are recorded by different threads, so how
//! they interleave is not part of the system's behaviour). What changes from run to
//! run without the system behaving differently is left out: sequence numbers,
//! timestamps, vector clocks, pids, durations, socket and pipe inodes, the per-test
//! scratch directory, calls on system paths (the loader's, /proc, /dev, the C
//! library's name-service cache probe), whose number depends on the C library, and,
//! of the relays' connection events, the connections' numbers and their closing
//! (whether a connection closes before the test ends is a race, not behaviour). Each
//! event source's events (`observe=`) are a group of their own per service.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use faultbox_executor::world::run::TestReport;
use faultbox_spec::Verdict;

/// The types of event sources' events (`observe=`).
const SOURCE_KINDS: &[&str] = &[
    "stdout",
    "stderr",
    "tail",
    "poll",
    "wal",
    "topic",
    "source_error",
];

/// How a service's events are grouped, in this order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Group<'a> {
    Lifecycle,
    Syscalls,
    Source(&'a str),
}

/// Fields whose values differ between identical runs.
const VOLATILE: &[&str] = &["pid", "duration_ms", "connection"];

pub fn normalize(reports: &[TestReport]) -> String {
    let mut out = String::from("# faultbox normalized trace v1\n");
    for r in reports {
        let result = match &r.verdict {
            Verdict::Pass => "pass".to_string(),
            Verdict::Fail { reason, .. } => format!("fail: {}", stable(reason)),
        };
        let _ = writeln!(out, "test {} seed={} {result}", r.name, r.seed);
        let mut per: BTreeMap<(&str, Group), Vec<String>> = BTreeMap::new();
        for e in &r.events {
            if e.kind == "syscall"
                && e.fields
                    .get("path")
                    .is_some_and(|p| faultbox_executor::engine::rules::is_system_path(p))
            {
                continue;
            }
            if e.event_type == "proxy.close" {
                continue;
            }
            let mut line = e.event_type.to_string();
            for (k, v) in &e.fields {
                if !VOLATILE.contains(&k.as_str()) {
                    let _ = write!(line, " {k}={}", stable(v));
                }
            }
            // Each event source's events are a group of their own: sources run on
            // threads of their own, so how they interleave with each other and with
            // the steps is not the system's behaviour.
            let group = match e.kind.as_str() {
                "syscall" => Group::Syscalls,
                k if SOURCE_KINDS.contains(&k) => Group::Source(k),
                _ => Group::Lifecycle,
            };
            per.entry((e.service.as_str(), group))
                .or_default()
                .push(line);
        }
        for ((service, group), lines) in per {
            let what = match group {
                Group::Syscalls => "syscalls".to_string(),
                Group::Lifecycle => "lifecycle and steps".to_string(),
                Group::Source(k) => format!("{k} events"),
            };
            let _ = writeln!(out, "  service {service}: {what}");
            for l in lines {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
    out
}

/// Replaces volatile parts of a value: `socket:[123]` → `socket:[*]`, the scratch
/// directory (`<tmp>/faultbox-<pid>/<n>-<test>`, here or under an executor's work
/// directory) → `$TMPDIR`.
fn stable(v: &str) -> String {
    let mut s = v.to_string();
    for kind in ["socket:[", "pipe:[", "anon_inode:["] {
        if let Some(i) = s.find(kind) {
            if let Some(end) = s[i..].find(']') {
                let inner = &s[i + kind.len()..i + end];
                if inner.bytes().all(|b| b.is_ascii_digit()) {
                    s.replace_range(i + kind.len()..i + end, "*");
                }
            }
        }
    }
    // A run's scratch directory is `<tmp>/faultbox-<pid>/<n>-<test>`, where <tmp> is
    // this host's temporary directory or an executor's work directory.
    let marker = "/faultbox-";
    let mut from = 0;
    while let Some(found) = s[from..].find(marker) {
        let i = from + found;
        let after = i + marker.len();
        if !s[after..].starts_with(|c: char| c.is_ascii_digit()) {
            from = after;
            continue;
        }
        let start = s[..i]
            .rfind(|c: char| c.is_whitespace() || c == '=')
            .map_or(0, |j| j + 1);
        // The process's directory, then the test's.
        let end = s[after..]
            .find('/')
            .map(|e| after + e + 1)
            .and_then(|test| s[test..].find('/').map(|e| test + e))
            .unwrap_or(s.len());
        s.replace_range(start..end, "$TMPDIR");
        from = start + "$TMPDIR".len();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_parts_are_replaced() {
        assert_eq!(stable("socket:[62873]"), "socket:[*]");
        assert_eq!(stable("anon_inode:[eventfd]"), "anon_inode:[eventfd]");
        let tmp = std::env::temp_dir()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        assert_eq!(
            stable(&format!("{tmp}/faultbox-123/4-test_x/inventory.wal")),
            "$TMPDIR/inventory.wal"
        );
        assert_eq!(
            stable("/srv/work/tmp/faultbox-9/1-test_y/a.log"),
            "$TMPDIR/a.log"
        );
        assert_eq!(stable("/opt/faultbox-tools/x"), "/opt/faultbox-tools/x");
    }
}
