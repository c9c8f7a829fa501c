//! `faultbox test --report FILE`: the run as one HTML page a person opens in a browser,
//! with nothing to fetch: the summary, the fault matrix, every run with its verdict,
//! replay command, diagnostics and faults, and each trace as a space-time diagram.
//!
//! The page is `template.html` (markup and CSS) with `report.js` inlined, and the run's data as JSON in a
//! `<script type="application/json">` element. Event text comes from the services
//! under test, so `<`, `>` and `&` in the JSON are written as `\u003c`, `\u003e`,
//! `\u0026`: no output can close the element or open a comment, and the page only
//! ever puts data into the document as text. The diagram is drawn on a canvas, row
//! by row for what is in view, so a trace of 50,000 events costs no DOM node each.

mod trace;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use faultbox_executor::world::run::TestReport;
use faultbox_spec::Verdict;

use crate::junit::Entry;

const TEMPLATE: &str = include_str!("template.html");
const SCRIPT: &str = include_str!("report.js");
/// Where the template takes the page's title, its data and its script.
const TITLE: &str = "{{title}}";
const DATA: &str = "{{data}}";
const CODE: &str = "{{script}}";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("encoding the report's data: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a finished `faultbox test` knows of its run.
pub struct Run<'a> {
    /// The spec as given on the command line.
    pub spec: &'a str,
    pub duration_ms: u64,
    /// The JSON document's `matrix` section, if the spec has matrices.
    pub matrix: Option<&'a Value>,
    /// The spec's services, in declaration order: the diagram's lanes.
    pub services: Vec<String>,
    /// The loaded spec: the lines diagnostics point at.
    pub model: &'a faultbox_spec::Spec,
    /// Every run and skipped test, in plan order.
    pub entries: &'a [Entry<'a>],
}

/// The whole page's data.
#[derive(Serialize)]
struct Page<'a> {
    version: u32,
    faultbox: &'static str,
    spec: &'a str,
    generated: String,
    /// Why there are no results: the spec did not load, or the run was cut short.
    aborted: Option<&'a str>,
    duration_ms: u64,
    pass: u64,
    fail: u64,
    skip: u64,
    seeds: Vec<u64>,
    executors: Vec<&'a str>,
    matrix: Option<&'a Value>,
    runs: Vec<RunData<'a>>,
}

#[derive(Serialize)]
struct RunData<'a> {
    #[serde(flatten)]
    head: Value,
    trace: Option<trace::Trace<'a>>,
}

/// Writes the page of a finished run to `path`.
pub fn write(path: &Path, run: &Run<'_>) -> Result<(), ReportError> {
    let mut runs = Vec::new();
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    let (mut seeds, mut executors) = (BTreeSet::new(), BTreeSet::new());
    for entry in run.entries {
        match entry {
            Entry::Ran { report, executor } => {
                if report.verdict == Verdict::Pass {
                    pass += 1;
                } else {
                    fail += 1;
                }
                seeds.insert(report.seed);
                executors.insert(*executor);
                runs.push(RunData {
                    head: run_head(run.spec, run.model, report, executor),
                    trace: Some(trace::trace(&report.events, &run.services)),
                });
            }
            Entry::Skipped { name, why } => {
                skip += 1;
                runs.push(RunData {
                    head: json!({"name": name, "result": "skip", "reason": why}),
                    trace: None,
                });
            }
        }
    }
    let page = Page {
        version: 1,
        faultbox: env!("CARGO_PKG_VERSION"),
        spec: run.spec,
        generated: now(),
        aborted: None,
        duration_ms: run.duration_ms,
        pass,
        fail,
        skip,
        seeds: seeds.into_iter().collect(),
        executors: executors.into_iter().collect(),
        matrix: run.matrix,
        runs,
    };
    save(path, &page)
}

/// Writes the page of a run that gave no results: the spec did not load (`why`
/// names its file and line), or the run was cut short.
pub fn write_aborted(path: &Path, spec: &str, why: &str) -> Result<(), ReportError> {
    let page = Page {
        version: 1,
        faultbox: env!("CARGO_PKG_VERSION"),
        spec,
        generated: now(),
        aborted: Some(why),
        duration_ms: 0,
        pass: 0,
        fail: 0,
        skip: 0,
        seeds: Vec::new(),
        executors: Vec::new(),
        matrix: None,
        runs: Vec::new(),
    };
    save(path, &page)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Everything of a run but its trace.
fn run_head(spec: &str, model: &faultbox_spec::Spec, r: &TestReport, executor: &str) -> Value {
    let (result, reason, failure_type) = match &r.verdict {
        Verdict::Pass => ("pass", None, None),
        Verdict::Fail {
            reason,
            failure_type,
        } => ("fail", Some(reason.as_str()), Some(failure_type.as_str())),
    };
    let faults: Vec<Value> = r
        .faults
        .iter()
        .map(|f| {
            json!({"service": f.service, "syscall": f.syscall, "action": f.action,
                   "errno": f.errno, "delay": f.delay, "label": f.label, "hits": f.hits,
                   "interface": f.interface})
        })
        .collect();
    let started = chrono::DateTime::<chrono::Utc>::from(r.started_at)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "name": r.name,
        "result": result,
        "reason": reason,
        "failure_type": failure_type,
        "seed": r.seed,
        "duration_ms": r.duration.as_millis() as u64,
        "started": started,
        "executor": executor,
        "replay": crate::report::replay_command(spec, &r.name, r.seed),
        "return_value": r.return_value,
        "assertions": r.assertions,
        "cell": r.cell,
        "faults": faults,
        "diagnostics": crate::diagnostics::diagnose(r, model).iter().map(|d| d.to_json()).collect::<Vec<_>>(),
    })
}

/// Writes the page next to `path` and moves it into place, so a reader never sees
/// half a report and a failed write leaves the previous one.
fn save(path: &Path, page: &Page<'_>) -> Result<(), ReportError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
        render(&mut out, page)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn render(out: &mut impl Write, page: &Page<'_>) -> Result<(), ReportError> {
    let (head, rest) = TEMPLATE
        .split_once(TITLE)
        .expect("the template has a title");
    let (middle, rest) = rest.split_once(DATA).expect("the template has a data slot");
    let (before_code, tail) = rest
        .split_once(CODE)
        .expect("the template has a script slot");
    out.write_all(head.as_bytes())?;
    out.write_all(html_text(&format!("Faultbox report: {}", page.spec)).as_bytes())?;
    out.write_all(middle.as_bytes())?;
    serde_json::to_writer(ScriptSafe(&mut *out), page)?;
    out.write_all(before_code.as_bytes())?;
    out.write_all(SCRIPT.as_bytes())?;
    out.write_all(tail.as_bytes())?;
    Ok(())
}

/// `s` as HTML text.
fn html_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes JSON for the inside of a `<script>` element. In JSON `<`, `>` and `&`
/// occur only inside strings, where their `\u` escapes mean the same characters.
struct ScriptSafe<W: Write>(W);

impl<W: Write> Write for ScriptSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut start = 0;
        for (i, b) in buf.iter().enumerate() {
            let escaped: &[u8] = match b {
                b'<' => b"\\u003c",
                b'>' => b"\\u003e",
                b'&' => b"\\u0026",
                _ => continue,
            };
            self.0.write_all(&buf[start..i])?;
            self.0.write_all(escaped)?;
            start = i + 1;
        }
        self.0.write_all(&buf[start..])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(aborted: Option<&str>) -> String {
        let page = Page {
            version: 1,
            faultbox: "0",
            spec: "a<b>.star",
            generated: now(),
            aborted,
            duration_ms: 0,
            pass: 0,
            fail: 0,
            skip: 0,
            seeds: Vec::new(),
            executors: Vec::new(),
            matrix: None,
            runs: Vec::new(),
        };
        let mut out = Vec::new();
        render(&mut out, &page).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The JSON between the data element's tags.
    fn data(html: &str) -> Value {
        let open = r#"<script type="application/json" id="fb-data">"#;
        let start = html.find(open).unwrap() + open.len();
        let len = html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..start + len]).unwrap()
    }

    #[test]
    fn event_text_cannot_close_the_data_element() {
        let why = "x.star:3: </script><script>alert(1)</script><!-- & \u{fffd}\u{0}";
        let html = page_of(Some(why));
        assert_eq!(data(&html)["aborted"], why, "the text survives unchanged");
        assert_eq!(html.matches("</script>").count(), 2, "data and code only");
        assert!(!html.contains("<!--"));
        assert!(html.contains("<title>Faultbox report: a&lt;b&gt;.star</title>"));
    }

    #[test]
    fn the_page_names_nothing_outside_itself() {
        let html = page_of(None);
        for needle in ["http:", "https:", "//cdn", "src=", "@import", "url("] {
            assert!(!html.contains(needle), "{needle}");
        }
        assert!(!SCRIPT.contains("</script"), "the script would end early");
        assert!(!SCRIPT.contains("<!--"));
    }

    #[test]
    fn escaping_splits_nothing_it_should_not() {
        let mut out = Vec::new();
        ScriptSafe(&mut out).write_all(b"a<b>c&d\xce\xbb").unwrap();
        assert_eq!(out, b"a\\u003cb\\u003ec\\u0026d\xce\xbb");
    }
}
