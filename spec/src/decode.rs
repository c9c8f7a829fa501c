//! Decoders of event sources (`json_decoder()`, `logfmt_decoder()`,
//! `regex_decoder(pattern=)`): one line or message in, the event's `data` out.
//!
//! They live here, beside the spec language, because a regex is checked when the spec
//! loads (a pattern that does not compile, or has no named group, is a load error
//! with file:line) and the executor decodes with the same code at run time.

use serde_json::{Map, Value};

/// How a source turns its raw bytes into the event's `data`.
#[derive(Clone, Debug)]
pub enum Decoder {
    /// A JSON object's top-level keys; any other JSON value as `{"value": v}`.
    Json,
    /// `key=value key2="value 2"` pairs, values as strings; a bare `key` is `true`.
    Logfmt,
    /// The named capture groups of a regex's first match.
    Regex(Pattern),
}

impl PartialEq for Decoder {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Decoder::Json, Decoder::Json) | (Decoder::Logfmt, Decoder::Logfmt) => true,
            (Decoder::Regex(a), Decoder::Regex(b)) => a.source == b.source,
            _ => false,
        }
    }
}

/// A compiled `regex_decoder` pattern and the source it came from.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    regex: regex::Regex,
}

/// Why a pattern cannot be a decoder.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("does not compile: {0}")]
    Syntax(String),
    #[error("has no named group (?P<name>...): a match would decode to no field")]
    NoGroups,
}

/// Why one line did not decode: the event keeps the raw line and says this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not logfmt: {0}")]
    Logfmt(String),
    #[error("does not match {0:?}")]
    NoMatch(String),
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        let regex = regex::Regex::new(source).map_err(|e| PatternError::Syntax(e.to_string()))?;
        if regex.capture_names().flatten().next().is_none() {
            return Err(PatternError::NoGroups);
        }
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }
}

impl Decoder {
    /// The constructor's name as a spec writes it, for reports and `--dry-run`.
    pub fn name(&self) -> &'static str {
        match self {
            Decoder::Json => "json_decoder",
            Decoder::Logfmt => "logfmt_decoder",
            Decoder::Regex(_) => "regex_decoder",
        }
    }

    /// Decodes one line (without its line end) or message.
    pub fn decode(&self, raw: &[u8]) -> Result<Map<String, Value>, DecodeError> {
        match self {
            Decoder::Json => match serde_json::from_slice::<Value>(trim_end(raw)) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(other) => Ok(Map::from_iter([("value".to_string(), other)])),
                Err(e) => Err(DecodeError::Json(e.to_string())),
            },
            Decoder::Logfmt => logfmt(&String::from_utf8_lossy(raw)),
            Decoder::Regex(p) => {
                let text = String::from_utf8_lossy(raw);
                let caps = p
                    .regex
                    .captures(&text)
                    .ok_or_else(|| DecodeError::NoMatch(p.source.clone()))?;
                Ok(p.regex
                    .capture_names()
                    .flatten()
                    .filter_map(|name| {
                        caps.name(name)
                            .map(|m| (name.to_string(), Value::String(m.as_str().to_string())))
                    })
                    .collect())
            }
        }
    }
}

fn trim_end(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &raw[..end]
}

/// Parses logfmt: pairs separated by spaces; a value is bare (up to the next space)
/// or double-quoted with backslash escapes.
fn logfmt(line: &str) -> Result<Map<String, Value>, DecodeError> {
    let mut out = Map::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut end = line.len();
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                end = i;
                break;
            }
            if c == '"' {
                return Err(DecodeError::Logfmt(format!("a quote in a key at byte {i}")));
            }
            chars.next();
        }
        let key = &line[start..end];
        if key.is_empty() {
            return Err(DecodeError::Logfmt(format!("an empty key at byte {start}")));
        }
        if chars.peek().map(|&(_, c)| c) != Some('=') {
            out.insert(key.to_string(), Value::Bool(true));
            continue;
        }
        chars.next();
        let value = if chars.peek().map(|&(_, c)| c) == Some('"') {
            let (open, _) = chars.next().expect("peeked");
            let mut v = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, 't')) => v.push('\t'),
                        Some((_, 'r')) => v.push('\r'),
                        Some((_, other)) => v.push(other),
                        None => break,
                    },
                    c => v.push(c),
                }
            }
            if !closed {
                return Err(DecodeError::Logfmt(format!(
                    "the quote at byte {open} is never closed"
                )));
            }
            v
        } else {
            let mut v = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                v.push(c);
                chars.next();
            }
            v
        };
        out.insert(key.to_string(), Value::String(value));
    }
    if out.is_empty() {
        return Err(DecodeError::Logfmt("no key=value pair".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn json_objects_give_their_keys_and_other_values_a_value_key() {
        let d = Decoder::Json;
        assert_eq!(
            d.decode(br#"{"level":"INFO","n":3}"#).unwrap(),
            obj(serde_json::json!({"level": "INFO", "n": 3}))
        );
        assert_eq!(
            d.decode(b"[1,2]\r").unwrap(),
            obj(serde_json::json!({"value": [1, 2]}))
        );
        assert!(matches!(d.decode(b"level=INFO"), Err(DecodeError::Json(_))));
        assert!(d.decode(b"").is_err());
    }

    #[test]
    fn logfmt_takes_bare_quoted_and_flag_values() {
        let d = Decoder::Logfmt;
        assert_eq!(
            d.decode(br#"level=INFO msg="started \"ok\"" ready path=/a=b"#)
                .unwrap(),
            obj(serde_json::json!({
                "level": "INFO", "msg": "started \"ok\"", "ready": true, "path": "/a=b"
            }))
        );
        assert_eq!(
            d.decode(b"  empty=  x=1").unwrap(),
            obj(serde_json::json!({"empty": "", "x": "1"}))
        );
        for bad in [&b"msg=\"open"[..], b"   ", b"=x", b"a\"b=1"] {
            assert!(
                matches!(d.decode(bad), Err(DecodeError::Logfmt(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn regex_gives_named_groups_and_checks_the_pattern() {
        let d = Decoder::Regex(Pattern::new(r"WAL: (?P<action>\w+) (?P<path>.+)").unwrap());
        assert_eq!(
            d.decode(b"WAL: fsync /data/wal/001").unwrap(),
            obj(serde_json::json!({"action": "fsync", "path": "/data/wal/001"}))
        );
        assert!(matches!(d.decode(b"nothing"), Err(DecodeError::NoMatch(_))));
        // An optional group that did not take part is absent, not empty.
        let d = Decoder::Regex(Pattern::new(r"a(?P<x>b)?").unwrap());
        assert_eq!(d.decode(b"a").unwrap(), Map::new());
        assert!(matches!(Pattern::new("(a"), Err(PatternError::Syntax(_))));
        assert!(matches!(Pattern::new("(a)"), Err(PatternError::NoGroups)));
    }

    proptest::proptest! {
        /// Lines are user input of the most arbitrary kind: no decoder panics on
        /// any bytes, and what decodes is a map of the kinds of values promised.
        #[test]
        fn decoders_take_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let regex = Decoder::Regex(Pattern::new(r"(?P<level>[A-Z]+)[: ]+(?P<msg>.*)").unwrap());
            for d in [&Decoder::Json, &Decoder::Logfmt, &regex] {
                if let Ok(map) = d.decode(&bytes) {
                    if !matches!(d, Decoder::Json) {
                        proptest::prop_assert!(map.values().all(|v| v.is_string() || v.is_boolean()));
                    }
                }
            }
        }

        /// Well-formed logfmt round-trips: every pair written is read back.
        #[test]
        fn logfmt_reads_what_is_written(pairs in proptest::collection::btree_map("[a-z_][a-z0-9_.]{0,8}", "[ -~]{0,12}", 1..6)) {
            let line: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let map = Decoder::Logfmt.decode(line.join(" ").as_bytes()).unwrap();
            for (k, v) in &pairs {
                proptest::prop_assert_eq!(map[k].as_str(), Some(v.as_str()));
            }
        }
    }

    #[test]
    fn no_input_panics() {
        let p = Decoder::Regex(Pattern::new("(?P<a>.)").unwrap());
        for len in 0..64usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            for d in [&Decoder::Json, &Decoder::Logfmt, &p] {
                let _ = d.decode(&bytes);
            }
        }
    }
}
