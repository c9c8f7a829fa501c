//! The log formats of the reference: `console` (colored, `HH:MM:SS.mmm LVL [component]
//! msg key=value`) and `json` (one object per line with `time`, `level`, `msg`,
//! `component`, `session_id` and the event's own fields).

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Console { color: bool },
    Json,
}

impl Format {
    /// `console` or `json` as given, else console on a terminal and json when piped.
    pub fn choose(given: Option<&str>) -> Format {
        // SAFETY: isatty only inspects the fd.
        let tty = unsafe { libc::isatty(2) } == 1;
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        match given {
            Some("json") => Format::Json,
            Some(_) => Format::Console { color },
            None if tty => Format::Console { color },
            None => Format::Json,
        }
    }
}

struct LogLayer {
    format: Format,
    max: Level,
    session_id: String,
}

/// Installs the global logger, showing events up to `max`.
pub fn init(format: Format, max: Level, session_id: String) {
    let layer = LogLayer {
        format,
        max,
        session_id,
    };
    let _ = tracing::subscriber::set_global_default(Registry::default().with(layer));
}

#[derive(Default)]
struct Fields {
    msg: String,
    list: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.list.push((field.name(), value.into()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.list.push((field.name(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.list.push((field.name(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.list.push((field.name(), value.into()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.list.push((field.name(), format!("{value:?}").into()));
        }
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let component = match meta.target() {
            "engine" => "engine",
            t if t.starts_with("faultbox_executor") => "engine",
            _ => "cli",
        };
        let line = match self.format {
            Format::Json => json_line(meta.level(), component, &self.session_id, fields),
            Format::Console { color } => console_line(meta.level(), component, fields, color),
        };
        let buffered = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(buf) => {
                buf.extend_from_slice(line.as_bytes());
                true
            }
            None => false,
        });
        if !buffered {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

thread_local! {
    static BATCH: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's log lines collected, then writes them with one call:
/// a logger draining a queue writes a batch at a time instead of a line at a time.
pub fn batched(f: impl FnOnce()) {
    BATCH.with(|b| *b.borrow_mut() = Some(Vec::with_capacity(64 * 1024)));
    f();
    if let Some(buf) = BATCH.with(|b| b.borrow_mut().take()) {
        if !buf.is_empty() {
            let _ = std::io::stderr().lock().write_all(&buf);
        }
    }
}

fn json_line(level: &Level, component: &str, session: &str, f: Fields) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert(
        "time".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            .into(),
    );
    obj.insert("level".into(), level.as_str().into());
    obj.insert("msg".into(), f.msg.into());
    obj.insert("component".into(), component.into());
    obj.insert("session_id".into(), session.into());
    for (k, v) in f.list {
        obj.insert(k.into(), v);
    }
    let mut s = serde_json::Value::Object(obj).to_string();
    s.push('\n');
    s
}

fn console_line(level: &Level, component: &str, f: Fields, color: bool) -> String {
    let (tag, code) = match *level {
        Level::ERROR => ("ERR", "31"),
        Level::WARN => ("WRN", "33"),
        Level::INFO => ("INF", "32"),
        _ => ("DBG", "90"),
    };
    let time = chrono::Local::now().format("%H:%M:%S%.3f");
    let mut s = String::new();
    if color {
        let _ = write!(
            s,
            "\x1b[90m{time}\x1b[0m \x1b[{code}m{tag}\x1b[0m \x1b[1m[{component}]\x1b[0m {}",
            f.msg
        );
    } else {
        let _ = write!(s, "{time} {tag} [{component}] {}", f.msg);
    }
    for (k, v) in f.list {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        if color {
            let _ = write!(s, "  \x1b[36m{k}\x1b[0m={v}");
        } else {
            let _ = write!(s, "  {k}={v}");
        }
    }
    s.push('\n');
    s
}
