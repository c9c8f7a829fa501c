//! Reports of `faultbox test`: the human summary on stderr and the JSON document of
//! the reference (`tests[]` with name, result, reason, failure_type, seed,
//! duration_ms, replay_command, return_value, faults, syscall_summary, diagnostics,
//! events). `docs/json.md` describes the document field by field and
//! `docs/schema/test-results.schema.json` pins its shape: change the three together.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use serde_json::{json, Value};

use faultbox_executor::world::run::TestReport;
use faultbox_spec::run::FailureType;
use faultbox_spec::{Spec, Verdict};

/// The command that replays one run.
pub fn replay_command(spec: &str, test: &str, seed: u64) -> String {
    let short = test.strip_prefix("test_").unwrap_or(test);
    format!("faultbox test {spec} --test {short} --seed {seed}")
}

/// Per service: calls intercepted, how many were faulted, and per syscall.
fn syscall_summary(r: &TestReport) -> Value {
    let mut per: BTreeMap<&str, (u64, u64, BTreeMap<&str, u64>)> = BTreeMap::new();
    for e in r.events.iter().filter(|e| e.kind == "syscall") {
        let entry = per.entry(e.service.as_str()).or_default();
        entry.0 += 1;
        let d = e.fields.get("decision").map(String::as_str).unwrap_or("");
        if d.starts_with("deny") || d.starts_with("delay") {
            entry.1 += 1;
        }
        *entry
            .2
            .entry(e.fields.get("syscall").map(String::as_str).unwrap_or("?"))
            .or_default() += 1;
    }
    Value::Object(
        per.into_iter()
            .map(|(s, (total, faulted, breakdown))| {
                (
                    s.to_string(),
                    json!({"total": total, "faulted": faulted, "breakdown": breakdown}),
                )
            })
            .collect(),
    )
}

/// One run in the JSON document. Events are the bulk of it, so they are written
/// straight from the report instead of through an intermediate `Value` tree.
#[derive(serde::Serialize)]
pub struct TestJson<'a> {
    #[serde(flatten)]
    head: Value,
    events: Vec<EventJson<'a>>,
}

/// An entry of `tests[]`: a run, or a test outside the shard.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum TestEntry<'a> {
    Ran(TestJson<'a>),
    Skipped(Value),
}

/// The whole document: its summary fields and `tests[]`.
#[derive(serde::Serialize)]
pub struct Document<'a> {
    #[serde(flatten)]
    pub head: Value,
    pub tests: Vec<TestEntry<'a>>,
}

impl Document<'_> {
    /// Writes the document: the same bytes as `serde_json::to_writer(w, self)` (a
    /// test holds it to that), but with strings escaped by a scan of eight bytes at
    /// a time into a buffer of its own, where serde_json's scan of one byte at a
    /// time took a fifth of the coordinator's CPU on a run of many events.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let Value::Object(head) = &self.head else {
            return Ok(serde_json::to_writer(w, self)?);
        };
        let mut out = Vec::with_capacity(FLUSH_AT + (64 << 10));
        out.push(b'{');
        write_entries(&mut out, head)?;
        out.extend_from_slice(b"\"tests\":[");
        for (i, t) in self.tests.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match t {
                TestEntry::Ran(t) => t.write_to(&mut out, w)?,
                TestEntry::Skipped(v) => serde_json::to_writer(&mut out, v)?,
            }
        }
        out.extend_from_slice(b"]}");
        w.write_all(&out)
    }
}

/// How much of the document is kept before it is passed on to the writer.
const FLUSH_AT: usize = 1 << 20;

/// A JSON object's entries, each followed by a comma.
fn write_entries(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>) -> std::io::Result<()> {
    for (k, v) in map {
        write_str(out, k);
        out.push(b':');
        serde_json::to_writer(&mut *out, v)?;
        out.push(b',');
    }
    Ok(())
}

impl TestJson<'_> {
    /// Into `out`, passed on to `w` whenever it holds [`FLUSH_AT`] bytes.
    fn write_to(&self, out: &mut Vec<u8>, w: &mut impl Write) -> std::io::Result<()> {
        let Value::Object(head) = &self.head else {
            return Ok(serde_json::to_writer(out, self)?);
        };
        out.push(b'{');
        write_entries(out, head)?;
        out.extend_from_slice(b"\"events\":[");
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            e.write_to(out);
            if out.len() >= FLUSH_AT {
                w.write_all(out)?;
                out.clear();
            }
        }
        out.extend_from_slice(b"]}");
        Ok(())
    }
}

impl EventJson<'_> {
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"seq\":");
        write_u64(out, self.seq);
        out.extend_from_slice(b",\"timestamp\":");
        write_str(out, self.timestamp.as_str());
        out.extend_from_slice(b",\"service\":");
        write_str(out, self.service);
        out.extend_from_slice(b",\"type\":");
        write_str(out, self.kind);
        out.extend_from_slice(b",\"event_type\":");
        write_str(out, self.event_type);
        out.extend_from_slice(b",\"partition_key\":");
        write_str(out, self.partition_key);
        out.extend_from_slice(b",\"fields\":{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, k);
            out.push(b':');
            write_str(out, v);
        }
        out.extend_from_slice(b"},\"vector_clock\":{");
        for (i, (k, v)) in self.vector_clock.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, k);
            out.push(b':');
            write_u64(out, *v);
        }
        out.extend_from_slice(b"}}");
    }
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// What serde_json writes for a byte after a backslash: 0 for a byte it writes as
/// it is, `u` for `\u00XX`.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Flags (high bit of each byte) the bytes of `x` that need escaping: below 0x20,
/// '"' or '\\'. The lowest flag is always a true one (a false one can only sit
/// above a true one, where a borrow carried).
fn needs_escape(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = x ^ (ONES * b'"' as u64);
    let backslash = x ^ (ONES * b'\\' as u64);
    ((x.wrapping_sub(ONES * 0x20) & !x)
        | (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash))
        & HIGH
}

/// A byte that needs escaping, escaped.
fn write_escape(out: &mut Vec<u8>, byte: u8) {
    match ESCAPE[byte as usize] {
        b'u' => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(byte >> 4) as usize],
                HEX[(byte & 0xf) as usize],
            ]);
        }
        escape => out.extend_from_slice(&[b'\\', escape]),
    }
}

/// `s` as a JSON string, as serde_json writes it. Each 8-byte chunk is copied
/// whole (one store, where a copy of the bytes up to an escape is a call to
/// `memcpy`) and cut back to the first byte that needs escaping.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let chunk: [u8; 8] = chunk.try_into().expect("8 bytes");
        out.extend_from_slice(&chunk);
        let flags = needs_escape(u64::from_le_bytes(chunk));
        if flags == 0 {
            i += 8;
            continue;
        }
        let at = (flags.trailing_zeros() / 8) as usize;
        out.truncate(out.len() - 8 + at);
        write_escape(out, chunk[at]);
        i += at + 1;
    }
    for &byte in &b[i..] {
        if ESCAPE[byte as usize] == 0 {
            out.push(byte);
        } else {
            write_escape(out, byte);
        }
    }
    out.push(b'"');
}

#[derive(serde::Serialize)]
struct EventJson<'a> {
    seq: u64,
    timestamp: Stamp,
    service: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    event_type: &'a str,
    partition_key: &'a str,
    fields: &'a faultbox_spec::world::Fields,
    vector_clock: &'a faultbox_spec::world::Clock,
}

/// `failure_type` as the reference lists it: `assertion`, `timeout`, `service_start`
/// or `error`. A monitor's violated invariant is an assertion; its reason says it was
/// a monitor's.
fn failure_type(f: &FailureType) -> &'static str {
    match f {
        FailureType::MonitorViolation => "assertion",
        other => other.as_str(),
    }
}

/// One run's entry of `tests[]`. `spec_arg` is the spec as given on the command line
/// (for `replay_command`); `spec` gives the lines diagnostics point at.
pub fn test_json<'a>(spec_arg: &str, spec: &Spec, r: &'a TestReport) -> TestJson<'a> {
    let faults: Vec<Value> = r
        .faults
        .iter()
        .map(|f| {
            json!({"service": f.service, "syscall": f.syscall, "action": f.action,
                   "errno": f.errno, "delay": f.delay, "label": f.label, "hits": f.hits,
                   "interface": f.interface,
                   "file": f.declared_at.as_ref().map(|a| &a.file),
                   "line": f.declared_at.as_ref().map(|a| a.line)})
        })
        .collect();
    let mut stamps = Stamps::default();
    let events = r
        .events
        .iter()
        .map(|e| {
            let at = r.started_at + std::time::Duration::from_nanos(e.timestamp_ns);
            EventJson {
                seq: e.seq,
                timestamp: stamps.stamp(at),
                service: &e.service,
                kind: &e.kind,
                event_type: &e.event_type,
                partition_key: &e.partition_key,
                fields: &e.fields,
                vector_clock: &e.vector_clock,
            }
        })
        .collect();
    let mut head = json!({
        "name": r.name,
        "result": if r.verdict == Verdict::Pass { "pass" } else { "fail" },
        "seed": r.seed,
        "duration_ms": r.duration.as_millis() as u64,
        // On every run, not just failed ones: a passing seed is worth re-running too.
        "replay_command": replay_command(spec_arg, &r.name, r.seed),
        "faults": faults,
        "syscall_summary": syscall_summary(r),
        "diagnostics": crate::diagnostics::diagnose(r, spec).iter().map(|d| d.to_json()).collect::<Vec<_>>(),
        "interleaving": match r.order {
            Some(faultbox_executor::engine::scheduler::Order::Nth(n)) if r.explored.is_some() => json!(n),
            _ => Value::Null,
        },
        "held_calls": r.explored,
        "timings_ms": {
            "sandbox": ms(r.timings.sandbox),
            "launch": ms(r.timings.launch),
            "ready": ms(r.timings.ready),
            "body": ms(r.timings.body),
            "stop": ms(r.timings.stop),
        },
    });
    // As in the reference's example: a failed run carries why and how it failed; a
    // passing one neither.
    if let Verdict::Fail {
        reason,
        failure_type: kind,
    } = &r.verdict
    {
        head["reason"] = json!(reason);
        head["failure_type"] = json!(failure_type(kind));
    }
    // "when non-None": the value as JSON, or its repr() from an executor that sent none.
    match (&r.return_json, &r.return_value) {
        (Some(v), _) => head["return_value"] = v.clone(),
        (None, Some(repr)) => head["return_value"] = json!(repr),
        (None, None) => {}
    }
    TestJson { head, events }
}

/// An event's timestamp as chrono's `to_rfc3339_opts(SecondsFormat::Nanos, true)`
/// writes it (`2026-11-29T06:40:00.123456789Z`), held inline: made for every event,
/// it allocates nothing.
struct Stamp {
    text: [u8; STAMP_MAX],
    len: u8,
}

/// Bytes of the longest stamp (chrono writes years up to six digits and a sign).
const STAMP_MAX: usize = 40;

impl Stamp {
    fn as_str(&self) -> &str {
        // Only ASCII is ever written into `text` (digits, '-', ':', 'T', '.', 'Z').
        std::str::from_utf8(&self.text[..self.len as usize]).unwrap_or("")
    }
}

impl serde::Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Makes [`Stamp`]s for times that are mostly within the same second: the date and
/// time of day (chrono's text) once per second, the nanoseconds by hand.
#[derive(Default)]
struct Stamps {
    /// The whole second last seen since the epoch, and chrono's text for it up to
    /// the seconds (`2026-11-29T06:40:00`).
    second: Option<(u64, Vec<u8>)>,
}

impl Stamps {
    fn stamp(&mut self, at: std::time::SystemTime) -> Stamp {
        let since = at.duration_since(std::time::UNIX_EPOCH).ok();
        let mut text = [0u8; STAMP_MAX];
        if let Some(since) = since {
            let secs = since.as_secs();
            if self.second.as_ref().is_none_or(|(s, _)| *s != secs) {
                let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                let mut prefix = chrono::DateTime::<chrono::Utc>::from(whole)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .into_bytes();
                prefix.pop(); // its 'Z'
                self.second = Some((secs, prefix));
            }
            let prefix = &self.second.as_ref().expect("set above").1;
            // Then ".NNNNNNNNNZ".
            let n = prefix.len();
            if n + 11 <= STAMP_MAX {
                text[..n].copy_from_slice(prefix);
                text[n] = b'.';
                let mut nanos = since.subsec_nanos();
                for i in (0..9).rev() {
                    text[n + 1 + i] = b'0' + (nanos % 10) as u8;
                    nanos /= 10;
                }
                text[n + 10] = b'Z';
                return Stamp {
                    text,
                    len: (n + 11) as u8,
                };
            }
        }
        // Before the epoch: chrono writes it whole.
        let whole = chrono::DateTime::<chrono::Utc>::from(at)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let n = whole.len().min(STAMP_MAX);
        text[..n].copy_from_slice(&whole.as_bytes()[..n]);
        Stamp { text, len: n as u8 }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The human block for one run.
pub fn human(spec_arg: &str, spec: &Spec, r: &TestReport, debug: bool) -> String {
    let mut s = String::new();
    let ms = r.duration.as_millis();
    let ordering = match (r.order, r.explored) {
        (Some(faultbox_executor::engine::scheduler::Order::Nth(n)), Some(k)) => {
            format!(
                ", ordering {}/{}",
                n + 1,
                faultbox_executor::engine::scheduler::factorial(k)
            )
        }
        _ => String::new(),
    };
    match &r.verdict {
        Verdict::Pass => {
            let _ = writeln!(
                s,
                "--- PASS: {} ({ms}ms, seed={}{ordering}) ---",
                r.name, r.seed
            );
        }
        Verdict::Fail { reason, .. } => {
            let _ = writeln!(
                s,
                "--- FAIL: {} ({ms}ms, seed={}{ordering}) ---",
                r.name, r.seed
            );
            let _ = writeln!(s, "    reason: {reason}");
            let _ = writeln!(
                s,
                "    replay: {}",
                replay_command(spec_arg, &r.name, r.seed)
            );
        }
    }
    for f in &r.faults {
        let what = match (&f.errno, &f.delay) {
            (Some(e), _) => format!("deny({e})"),
            (_, Some(d)) => format!("delay({d})"),
            _ => f.action.clone(),
        };
        let label = f
            .label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let _ = match &f.interface {
            Some(iface) => writeln!(
                s,
                "    fault {}.{iface} {what}{label}: fired {} times",
                f.service, f.hits
            ),
            None => writeln!(
                s,
                "    fault {} {}={what}{label}: fired {} times",
                f.service, f.syscall, f.hits
            ),
        };
    }
    let mut decisions: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for e in r.events.iter().filter(|e| e.kind == "syscall") {
        let d = e.fields.get("decision").cloned().unwrap_or_default();
        if d == "allow" || d == "allow (system path)" {
            continue;
        }
        let sc = e.fields.get("syscall").cloned().unwrap_or_default();
        *decisions.entry((e.service.to_string(), sc, d)).or_default() += 1;
    }
    for ((svc, sc, d), n) in decisions {
        let _ = writeln!(s, "    {svc} {sc} {d} ×{n}");
    }
    for d in crate::diagnostics::diagnose(r, spec) {
        let _ = writeln!(s, "    {}", d.human());
    }
    if debug {
        if let Some(v) = &r.return_value {
            let _ = writeln!(s, "    return: {v}");
        }
    }
    s
}

/// The matrices' results: the terminal table and the JSON section.
pub fn matrices(spec: &faultbox_spec::Spec, reports: &[TestReport]) -> (String, Option<Value>) {
    if spec.matrices.is_empty() {
        return (String::new(), None);
    }
    let mut text = String::new();
    let mut cells_json = Vec::new();
    let (mut passed, mut failed) = (0u64, 0u64);
    let (mut all_scenarios, mut all_faults) = (Vec::new(), Vec::new());
    for m in &spec.matrices {
        all_scenarios.extend(m.scenarios.iter().cloned());
        all_faults.extend(m.faults.iter().cloned());
        let total = m.cells.iter().filter(|c| c.2.is_some()).count();
        let _ = writeln!(
            text,
            "Fault Matrix: {} scenarios × {} faults = {total} cells",
            m.scenarios.len(),
            m.faults.len()
        );
        let width = m
            .scenarios
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(8)
            .max(8)
            + 2;
        let col = m.faults.iter().map(|f| f.len()).max().unwrap_or(8).max(14) + 2;
        let _ = write!(text, "{:width$}", "");
        for f in &m.faults {
            let _ = write!(text, "│ {f:col$}");
        }
        text.push('\n');
        let _ = writeln!(text, "{}", "─".repeat(width + (col + 2) * m.faults.len()));
        let (mut ok, mut run) = (0, 0);
        for s in &m.scenarios {
            let _ = write!(text, "{s:width$}");
            for f in &m.faults {
                let cell = m.cells.iter().find(|c| &c.0 == s && &c.1 == f);
                let shown = match cell.and_then(|c| c.2.as_ref()) {
                    None => {
                        cells_json.push(json!({"scenario": s, "fault": f, "result": "excluded"}));
                        "— (excluded)".to_string()
                    }
                    Some(test) => match reports.iter().rev().find(|r| &r.name == test) {
                        None => {
                            // Not run here (another shard's, or left out by --test).
                            cells_json.push(json!({"scenario": s, "fault": f, "test": test,
                                                   "result": "skip"}));
                            "—".to_string()
                        }
                        Some(r) => {
                            run += 1;
                            let ms = r.duration.as_millis();
                            let result = if r.verdict == Verdict::Pass {
                                ok += 1;
                                passed += 1;
                                "pass"
                            } else {
                                failed += 1;
                                "fail"
                            };
                            cells_json.push(json!({"scenario": s, "fault": f, "test": test,
                                                   "result": result, "duration_ms": ms as u64}));
                            format!("{} ({ms}ms)", result.to_uppercase())
                        }
                    },
                };
                let _ = write!(text, "│ {shown:col$}");
            }
            text.push('\n');
        }
        let _ = writeln!(text, "Result: {ok}/{run} passed");
    }
    let section = json!({
        "scenarios": all_scenarios,
        "faults": all_faults,
        "cells": cells_json,
        "passed": passed,
        "failed": failed,
    });
    (text, Some(section))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn chrono_text(at: SystemTime) -> String {
        chrono::DateTime::<chrono::Utc>::from(at)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    /// Strings with everything JSON escapes (control bytes, quotes, backslashes) at
    /// every offset of an 8-byte chunk, beside text beyond ASCII.
    fn nasty_strings() -> Vec<String> {
        let mut out: Vec<String> = (0u8..0x80).map(|b| (b as char).to_string()).collect();
        let pieces = [
            "a", "é", "✓", "注文", "\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", " ", "}",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..400 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for j in 0..(x % 40) {
                s.push_str(pieces[((x >> (j % 50)) as usize + j as usize) % pieces.len()]);
            }
            out.push(s);
        }
        out.push(String::new());
        out
    }

    /// The document's own writer gives serde_json's bytes, for any strings, empty
    /// and skipped entries included.
    #[test]
    fn the_writer_gives_serde_jsons_bytes() {
        use faultbox_spec::world::Event;
        let strings = nasty_strings();
        let events: Vec<Event> = strings
            .iter()
            .enumerate()
            .map(|(i, s)| Event {
                seq: i as u64 * 977,
                timestamp_ns: i as u64,
                service: s.as_str().into(),
                kind: "stdout".into(),
                event_type: s.as_str().into(),
                partition_key: strings[(i * 7) % strings.len()].as_str().into(),
                fields: [(s.clone(), s.clone()), ("line".to_string(), s.repeat(3))].into(),
                vector_clock: [(s.clone(), u64::MAX - i as u64), ("test".to_string(), 0)].into(),
            })
            .collect();
        fn event_json<'a>(stamps: &mut Stamps, e: &'a Event) -> EventJson<'a> {
            EventJson {
                seq: e.seq,
                timestamp: stamps.stamp(UNIX_EPOCH + Duration::from_nanos(e.seq * 1_000_003)),
                service: &e.service,
                kind: &e.kind,
                event_type: &e.event_type,
                partition_key: &e.partition_key,
                fields: &e.fields,
                vector_clock: &e.vector_clock,
            }
        }
        let mut stamps = Stamps::default();
        let doc = Document {
            head: serde_json::json!({"version": 1, "star_file": strings[300], "pass": 2, "weird\u{2}key": [1.5, null]}),
            tests: vec![
                TestEntry::Ran(TestJson {
                    head: serde_json::json!({"name": "test_a", "reason": strings[5], "return_value": {"x": strings[9]}}),
                    // Past the writer's buffer: it passes the text on more than once.
                    events: events
                        .iter()
                        .cycle()
                        .take(6000)
                        .map(|e| event_json(&mut stamps, e))
                        .collect(),
                }),
                TestEntry::Skipped(serde_json::json!({"name": "test_b", "result": "skip"})),
                TestEntry::Ran(TestJson {
                    head: serde_json::json!({}),
                    events: Vec::new(),
                }),
                TestEntry::Ran(TestJson {
                    head: serde_json::json!({"name": "test_c"}),
                    events: events[..3]
                        .iter()
                        .map(|e| event_json(&mut stamps, e))
                        .collect(),
                }),
            ],
        };
        let mut ours = Vec::new();
        doc.write_to(&mut ours).unwrap();
        let theirs = serde_json::to_vec(&doc).unwrap();
        assert!(theirs.len() > 2 * FLUSH_AT);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
        for s in &strings {
            let mut ours = Vec::new();
            write_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    /// Stamps are chrono's text, for times in and across seconds, days and years,
    /// in order and out of it.
    #[test]
    fn stamps_are_chronos_text() {
        let mut stamps = Stamps::default();
        let base = UNIX_EPOCH + Duration::from_secs(1_796_000_000); // 2026-11-29
        let mut times = vec![UNIX_EPOCH, base, base + Duration::from_nanos(1)];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(base + Duration::from_nanos(x % 3_000_000_000));
            times.push(UNIX_EPOCH + Duration::from_nanos(x % (300 * 365 * 86_400 * 1_000_000_000)));
        }
        // Before the epoch, and past year 9999 (both written by chrono itself).
        times.push(UNIX_EPOCH - Duration::from_nanos(1_500_000_001));
        times.push(UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 5));
        for at in times {
            assert_eq!(stamps.stamp(at).as_str(), chrono_text(at));
        }
    }
}
