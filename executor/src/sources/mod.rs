//! Event sources: a service's `observe=[...]`. Each source watches something beside
//! the syscall stream (the service's output, a file, an HTTP endpoint, a database's
//! WAL, a broker's topic) and hands every line or message to a [`Sink`], which stamps
//! it into the test's trace as an event of the observed service, with a sequence
//! number and vector clock like any other event.
//!
//! A source never blocks the test or the service: it runs on threads of its own,
//! reports what goes wrong as events (`fields["error"]`), and keeps trying. The world
//! starts a service's sources right after the service itself (before its healthcheck
//! is polled), asks them to [`Running::sync`] before a query reads the trace, and
//! stops them after the service has stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use faultbox_spec::decode::Decoder;

use crate::network::namespace::NetNs;
use crate::world::eventlog::EventLog;

pub mod output;
pub mod poll;
pub mod tail;
pub mod topic;
pub mod wal;

/// One line or message, before the sink stamps it into the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The event's `type`: `stdout`, `stderr`, `tail`, `poll`, `wal`, `topic`.
    pub kind: &'static str,
    /// Appended to the type in `event_type` (`wal.insert`, `topic.orders`), if any.
    pub detail: Option<String>,
    /// `e.fields`: raw strings. `data` holds the decoded value as JSON text (what
    /// `e.data` decodes); `error` says what went wrong, when something did.
    pub fields: BTreeMap<String, String>,
}

impl Observation {
    /// An event saying the source could not do its work (a refused connection, a
    /// missing file, a slot that exists): `event_type` `KIND.error`.
    pub fn error(kind: &'static str, message: impl Into<String>) -> Observation {
        Observation {
            kind,
            detail: Some("error".into()),
            fields: BTreeMap::from([("error".to_string(), message.into())]),
        }
    }
}

/// Where a source's observations go. Called from the source's own threads.
pub trait Sink: Send + Sync {
    fn emit(&self, o: Observation);

    /// Emits several observations in order. A sink that can take them in one go
    /// (one lock for all) overrides it: busy sources emit through it.
    fn emit_batch(&self, batch: Vec<Observation>) {
        for o in batch {
            self.emit(o);
        }
    }
}

/// A started source.
pub trait Running: Send + Sync {
    /// Returns once everything observable when it was called (lines already written,
    /// rows already committed, messages already acknowledged by the broker) has been
    /// emitted, or after a bounded wait (about 2 s) if that cannot be known.
    fn sync(&self);
    /// Emits what is left, as `sync` does, then stops: no emit after it returns. It
    /// releases what the source made (connections, slots, watches, threads).
    fn stop(self: Box<Self>);
}

/// The type of an event saying a source could not do its work.
pub const SOURCE_ERROR: &str = "source_error";

/// Stamps a source's observations into the test's log as events of the observed
/// service.
pub struct LogSink {
    service: String,
    log: Arc<EventLog>,
    /// Lines that came before the service's `lifecycle.started` was logged (its
    /// output pipe exists before it does), kept so they come after it; `None` once
    /// it is.
    early: Mutex<Option<Vec<Observation>>>,
}

impl LogSink {
    pub fn new(service: &str, log: Arc<EventLog>) -> LogSink {
        LogSink {
            service: service.to_string(),
            log,
            early: Mutex::new(Some(Vec::new())),
        }
    }

    /// Logs what was kept, and everything from now on as it comes.
    pub fn open(&self) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        self.record(early.take().unwrap_or_default());
    }

    /// A line or message is an event of the source's type; what went wrong with the
    /// source itself (`KIND.error`, `KIND.dropped`) is a `source_error` event naming
    /// the source, so that a query over `e.type == "topic"` sees messages only.
    fn record(&self, batch: impl IntoIterator<Item = Observation>) {
        self.log.record_all(
            &self.service,
            batch.into_iter().map(|mut o| {
                let event_type = o.detail.as_ref().map(|d| format!("{}.{d}", o.kind));
                let kind = match o.detail.as_deref() {
                    Some("error" | "dropped") => {
                        o.fields.insert("source".to_string(), o.kind.to_string());
                        SOURCE_ERROR
                    }
                    _ => o.kind,
                };
                (kind, event_type, o.fields)
            }),
        );
    }
}

impl Sink for LogSink {
    fn emit(&self, o: Observation) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        match early.as_mut() {
            Some(kept) => kept.push(o),
            None => {
                drop(early);
                self.record([o]);
            }
        }
    }

    fn emit_batch(&self, batch: Vec<Observation>) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        match early.as_mut() {
            Some(kept) => kept.extend(batch),
            None => {
                drop(early);
                self.record(batch);
            }
        }
    }
}

/// What a source needs from the test it runs in.
#[derive(Clone)]
pub struct Context {
    /// The observed service's name.
    pub service: String,
    /// The observed service's network namespace. A thread that connects anywhere
    /// (poll, wal_stream, topic) enters it first with [`NetNs::enter`], so that
    /// `localhost:PORT` is the service itself, not a relay, and observing it is never
    /// subject to the test's faults.
    pub netns: Arc<NetNs>,
    pub sink: Arc<dyn Sink>,
}

/// The fields of one decoded line or message: `line` (the raw text, lossily UTF-8),
/// `data` (the decoder's output as JSON text, or `{"line": ...}` with no decoder) and,
/// when the decoder refused it, `error`.
pub fn decoded_fields(raw: &[u8], decoder: Option<&Decoder>) -> BTreeMap<String, String> {
    // `from_utf8` checks ASCII a word at a time; the lossy walk is for the rest.
    let line = match std::str::from_utf8(raw) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    };
    let mut fields = BTreeMap::new();
    let data = match decoder {
        None => serde_json::json!({ "line": line }).to_string(),
        // A JSON object is its own `data`: checked, not rebuilt.
        Some(Decoder::Json) if is_object(raw) => line.trim_end().to_string(),
        Some(d) => match d.decode(raw) {
            Ok(map) => serde_json::Value::Object(map).to_string(),
            Err(e) => {
                fields.insert("error".to_string(), e.to_string());
                "{}".to_string()
            }
        },
    };
    fields.insert("data".to_string(), data);
    fields.insert("line".to_string(), line);
    fields
}

/// Whether `raw` is one JSON object (and nothing after it but whitespace).
fn is_object(raw: &[u8]) -> bool {
    let start = raw.iter().position(|b| !b.is_ascii_whitespace());
    if start.is_none_or(|i| raw[i] != b'{') {
        return false;
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(raw).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_the_line_and_decode_its_data() {
        let f = decoded_fields(br#"{"level":"ERROR"}  "#, Some(&Decoder::Json));
        assert_eq!(f["data"], r#"{"level":"ERROR"}"#);
        assert!(!f.contains_key("error"));
        let f = decoded_fields(b"oops \xff", Some(&Decoder::Json));
        assert_eq!(f["data"], "{}");
        assert!(f["error"].starts_with("not JSON"), "{f:?}");
        assert_eq!(f["line"], "oops \u{fffd}");
        let f = decoded_fields(b"a=1", None);
        assert_eq!(f["data"], r#"{"line":"a=1"}"#);
        let f = decoded_fields(b"a=1 b", Some(&Decoder::Logfmt));
        assert_eq!(f["data"], r#"{"a":"1","b":true}"#);
    }
}
