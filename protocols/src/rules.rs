//! Matching request fields against rule patterns, and checking rules at spec load.
//!
//! A pattern is a glob anchored at both ends: `*` matches any run of characters
//! (including none) and `?` exactly one, anywhere in the pattern; every other
//! character matches itself. How a key compares depends on what it holds:
//! - `query`: SQL text is compared case-insensitively, with leading and trailing
//!   whitespace trimmed and every run of whitespace collapsed to one space, on both
//!   the pattern and the value, so `INSERT*` matches `insert  into t ...`;
//! - `method` and `command`: case-insensitive (`get` matches a Redis `GET`);
//! - `path`, `key`, `topic` and anything else: exact case;
//! - a NATS `topic`/`subject`: NATS wildcards instead of globs. Subjects are
//!   dot-separated tokens; `*` matches exactly one token and a final `>` one or more,
//!   so `orders.*` matches `orders.new` but not `orders.eu.new`, and `orders.>`
//!   matches both (see [`Pattern::for_protocol`]).
//!
//! Matching is iterative (the classic two-pointer wildcard walk that backtracks only
//! to the last `*`), so a hostile pattern such as `*a*a*a*b` costs at most
//! pattern × value steps, never an exponential recursion.

use crate::{protocol, ActionKind};

/// How a key's values compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Folding {
    Exact,
    CaseInsensitive,
    Sql,
    /// NATS subject wildcards, token by token (never through the glob).
    Subject,
}

fn folding(protocol: &str, key: &str) -> Folding {
    match (protocol, key) {
        ("nats", "topic" | "subject") => Folding::Subject,
        (_, "query") => Folding::Sql,
        (_, "method" | "command") => Folding::CaseInsensitive,
        _ => Folding::Exact,
    }
}

fn normalize(folding: Folding, text: &str) -> Vec<char> {
    match folding {
        Folding::Exact | Folding::Subject => text.chars().collect(),
        Folding::CaseInsensitive => text.chars().flat_map(char::to_lowercase).collect(),
        Folding::Sql => {
            let mut out = Vec::with_capacity(text.len());
            for word in text.split_whitespace() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.extend(word.chars().flat_map(char::to_lowercase));
            }
            out
        }
    }
}

/// Whitespace as `char::is_whitespace` sees it, for ASCII bytes.
fn ascii_space(b: u8) -> bool {
    b == b' ' || (0x09..=0x0d).contains(&b)
}

/// [`normalize`] for ASCII text, a byte per character: what every request of a
/// relayed connection pays while a rule matches on its key.
fn normalize_ascii(folding: Folding, text: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match folding {
        Folding::Exact | Folding::Subject => out.extend_from_slice(text),
        Folding::CaseInsensitive => out.extend(text.iter().map(u8::to_ascii_lowercase)),
        Folding::Sql => {
            for word in text.split(|&b| ascii_space(b)).filter(|w| !w.is_empty()) {
                if !out.is_empty() {
                    out.push(b' ');
                }
                out.extend(word.iter().map(u8::to_ascii_lowercase));
            }
        }
    }
}

/// A rule's pattern for one match key, normalized once for that key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    folding: Folding,
    glob: Vec<char>,
    /// The same glob a byte per character, when the pattern is ASCII.
    ascii: Option<Vec<u8>>,
    /// A NATS subject pattern as its text: compared token by token with every
    /// message's subject while a rule is installed, so nothing is built per match.
    subject: String,
}

impl Pattern {
    /// The pattern `pattern` for values of `key`, compared as most protocols do.
    pub fn new(key: &str, pattern: &str) -> Pattern {
        Pattern::for_protocol("", key, pattern)
    }

    /// The pattern `pattern` for values of `key` in requests of `protocol`.
    pub fn for_protocol(protocol: &str, key: &str, pattern: &str) -> Pattern {
        let folding = folding(protocol, key);
        let ascii = pattern.is_ascii().then(|| {
            let mut out = Vec::with_capacity(pattern.len());
            normalize_ascii(folding, pattern.as_bytes(), &mut out);
            out
        });
        Pattern {
            folding,
            glob: normalize(folding, pattern),
            ascii,
            subject: if folding == Folding::Subject {
                pattern.to_string()
            } else {
                String::new()
            },
        }
    }

    /// Whether `value` (as the request carried it) matches.
    pub fn matches(&self, value: &str) -> bool {
        if self.folding == Folding::Subject {
            return subject_matches(&self.subject, value);
        }
        match &self.ascii {
            Some(pattern) if value.is_ascii() => {
                let mut v = Vec::with_capacity(value.len());
                normalize_ascii(self.folding, value.as_bytes(), &mut v);
                glob(pattern, &v, b'*', b'?')
            }
            _ => glob(&self.glob, &normalize(self.folding, value), '*', '?'),
        }
    }
}

/// Whether the value of `key` in a request of `protocol` matches `pattern`.
pub fn matches(protocol: &str, key: &str, pattern: &str, value: &str) -> bool {
    Pattern::for_protocol(protocol, key, pattern).matches(value)
}

/// NATS subject matching: `*` is one whole token, a final `>` one or more; any
/// other token matches itself exactly. Tokens are what `split('.')` gives (empty
/// ones included), walked byte by byte: while a rule is installed, every message's
/// subject is matched.
fn subject_matches(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let dot = |s: &[u8], from: usize| {
        s[from..]
            .iter()
            .position(|&c| c == b'.')
            .map_or(s.len(), |i| from + i)
    };
    // The current token of each starts at `i` and `j`; `None`: no tokens left.
    let (mut i, mut j) = (Some(0), Some(0));
    loop {
        let (pi, vj) = match (i, j) {
            (None, None) => return true,
            (Some(pi), Some(vj)) => (pi, vj),
            _ => return false,
        };
        let (pe, ve) = (dot(p, pi), dot(v, vj));
        let token = &p[pi..pe];
        if token == b">" {
            return pe == p.len();
        }
        if token != b"*" && token != &v[vj..ve] {
            return false;
        }
        i = (pe < p.len()).then_some(pe + 1);
        j = (ve < v.len()).then_some(ve + 1);
    }
}

/// Anchored glob match with `*` and `?`, iterative: on a mismatch it resumes after
/// the last `*` with one more character consumed by it.
fn glob<T: Copy + PartialEq>(pattern: &[T], value: &[T], any: T, one: T) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(&c) if c == any => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == one || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp + 1;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == any)
}

/// Refuses, at spec load, a rule for `protocol` that takes `action` or matches on a
/// key in `keys` the protocol does not offer; the message names what it offers.
pub fn check(protocol_name: &str, action: ActionKind, keys: &[&str]) -> Result<(), String> {
    let Some(p) = protocol(protocol_name) else {
        return Err(format!("unknown protocol `{protocol_name}`"));
    };
    if !p.supports(action) {
        let offered: Vec<&str> = [
            ActionKind::Response,
            ActionKind::Error,
            ActionKind::Delay,
            ActionKind::Drop,
            ActionKind::Duplicate,
        ]
        .into_iter()
        .filter(|a| p.supports(*a))
        .map(ActionKind::name)
        .collect();
        return Err(format!(
            "{protocol_name} does not support {}(): it supports {}",
            action.name(),
            offered.join(", ")
        ));
    }
    for key in keys {
        if !p.keys().contains(key) {
            let offered = if p.keys().is_empty() {
                "no match keys (its rules act on the whole connection)".to_string()
            } else {
                format!("{}=", p.keys().join("=, "))
            };
            return Err(format!(
                "{protocol_name} has no match key `{key}`: it matches on {offered}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, v: &str| matches("redis", "key", p, v);
        assert!(m("cache:*", "cache:1"));
        assert!(m("cache:*", "cache:"));
        assert!(!m("cache:*", "xcache:1"));
        assert!(m("*:1", "cache:1"));
        assert!(m("c?che:*", "cache:9"));
        assert!(!m("c?che", "cche"));
        assert!(m("*", ""));
        assert!(!m("", "a"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("**a**", "xay"));
        assert!(!m("Cache:*", "cache:1"), "keys compare with case");
    }

    #[test]
    fn no_blowup_on_hostile_patterns() {
        let value = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(50));
        let start = std::time::Instant::now();
        assert!(!matches("redis", "key", &pattern, &value));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    /// NATS subject matching as `split('.')` reads it: the reference for the byte
    /// walk.
    fn subject_matches_by_split(pattern: &str, value: &str) -> bool {
        let mut p = pattern.split('.');
        let mut v = value.split('.');
        loop {
            match (p.next(), v.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) => return p.next().is_none(),
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn subjects_match_as_split_reads_them(
            pattern in "[ab.*>]{0,8}",
            value in "[ab.*>]{0,8}",
        ) {
            proptest::prop_assert_eq!(
                subject_matches(&pattern, &value),
                subject_matches_by_split(&pattern, &value)
            );
        }
    }

    #[test]
    fn nats_subjects_match_token_by_token() {
        let m = |p: &str, v: &str| matches("nats", "subject", p, v);
        assert!(m("orders.*", "orders.new"));
        assert!(!m("orders.*", "orders.eu.new"));
        assert!(!m("orders.*", "orders"));
        assert!(m("orders.>", "orders.eu.new"));
        assert!(m("orders.>", "orders.new"));
        assert!(!m("orders.>", "orders"));
        assert!(m(">", "anything.at.all"));
        assert!(m("*.new", "orders.new"));
        assert!(m("orders.new", "orders.new"));
        assert!(
            !m("orders.ne?", "orders.new"),
            "no glob characters in subjects"
        );
        assert!(matches("nats", "topic", "a.*", "a.b"));
        // Other protocols keep globs.
        assert!(matches("kafka", "topic", "orders.*", "orders.eu.new"));
    }

    #[test]
    fn sql_and_case_folding() {
        assert!(matches(
            "postgres",
            "query",
            "INSERT*",
            "insert  into t values (1)"
        ));
        assert!(matches(
            "mysql",
            "query",
            "  select *   from t ",
            "SELECT\n\t* FROM t"
        ));
        assert!(matches(
            "postgres",
            "query",
            "insert into *",
            "  INSERT\ninto x"
        ));
        assert!(!matches("postgres", "query", "INSERT*", "UPDATE t"));
        assert!(matches("http", "method", "post", "POST"));
        assert!(matches("redis", "command", "GET", "get"));
        assert!(!matches("http", "path", "/Orders", "/orders"));
        assert!(matches("http", "path", "/orders/*", "/orders/7"));
    }

    #[test]
    fn check_names_what_is_offered() {
        assert!(check("postgres", ActionKind::Error, &["query"]).is_ok());
        assert!(check("http", ActionKind::Response, &["method", "path"]).is_ok());
        let e = check("postgres", ActionKind::Response, &["query"]).unwrap_err();
        assert!(e.contains("error, delay, drop"), "{e}");
        let e = check("postgres", ActionKind::Error, &["path"]).unwrap_err();
        assert!(e.contains("query="), "{e}");
        let e = check("tcp", ActionKind::Delay, &["path"]).unwrap_err();
        assert!(e.contains("no match keys"), "{e}");
        assert!(check("tcp", ActionKind::Drop, &[]).is_ok());
        assert!(check("tcp", ActionKind::Error, &[]).is_err());
        assert!(check("redis", ActionKind::Duplicate, &[]).is_err());
        assert!(check("smtp", ActionKind::Drop, &[]).is_err());
        assert!(check("memcached", ActionKind::Response, &["command", "key"]).is_ok());
    }
}

#[cfg(test)]
mod glob_reference {
    use super::glob;
    use proptest::prelude::*;

    /// The obvious recursive definition, for small inputs only.
    fn reference(p: &[char], v: &[char]) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some(('*', rest)) => (0..=v.len()).any(|i| reference(rest, &v[i..])),
            Some((&c, rest)) => {
                !v.is_empty() && (c == '?' || c == v[0]) && reference(rest, &v[1..])
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_recursive_definition(p in "[ab*?]{0,8}", v in "[ab]{0,10}") {
            let (p, v): (Vec<char>, Vec<char>) = (p.chars().collect(), v.chars().collect());
            prop_assert_eq!(glob(&p, &v, '*', '?'), reference(&p, &v));
        }

        /// The byte path for ASCII text folds and matches exactly as the char path.
        #[test]
        fn ascii_path_agrees_with_the_char_path(
            key in "(query|command|path)",
            p in "[aB \t\x0b*?]{0,8}",
            v in "[Ab \t\n\x0b]{0,12}",
        ) {
            let f = super::folding("", &key);
            let mut pat = Vec::new();
            let mut val = Vec::new();
            super::normalize_ascii(f, p.as_bytes(), &mut pat);
            super::normalize_ascii(f, v.as_bytes(), &mut val);
            let chars = |b: &[u8]| b.iter().map(|&c| c as char).collect::<Vec<char>>();
            prop_assert_eq!(chars(&pat), super::normalize(f, &p));
            prop_assert_eq!(chars(&val), super::normalize(f, &v));
            prop_assert_eq!(
                glob(&pat, &val, b'*', b'?'),
                glob(&super::normalize(f, &p), &super::normalize(f, &v), '*', '?')
            );
        }
    }
}
