//! Fault rules as plain data, and the text form users type after `--fault`:
//! `SYSCALL=ERRNO:PROB%[:PATH_GLOB][:TRIGGER]` and
//! `SYSCALL=delay:DURATION:PROB%[:PATH_GLOB][:TRIGGER]`.

use std::fmt;
use std::time::Duration;

use crate::errno;
use crate::syscalls::{self, Arch, Syscall};

/// What a rule does to a call it fires on.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Fail the call with this errno; the call never reaches the kernel.
    Deny(i32),
    /// Let the call proceed after this long.
    Delay(Duration),
}

/// When a rule may fire, counted over the calls that match the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Always,
    /// Only the Nth matching call (1-based).
    Nth(u64),
    /// Every matching call after the first N.
    After(u64),
}

/// Whether `target` names a syscall (or family) or an `--fs-fault` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Syscall,
    FsOp,
}

/// One fault rule.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// The name as written: `write`, `openat`, or an fs operation such as `sync`.
    pub target: String,
    pub kind: TargetKind,
    pub action: Action,
    /// Chance to fire, in percent (0–100).
    pub probability: f64,
    /// Only calls whose file matches this glob; `None` means every non-system path.
    pub path_glob: Option<String>,
    pub trigger: Trigger,
    /// A name shown next to decisions, for diagnostics.
    pub label: Option<String>,
}

/// Why a rule was refused; every variant names the offending part.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("fault {rule:?}: missing '=' between the syscall and the action (expected SYSCALL=ERRNO:PROB% or SYSCALL=delay:DURATION:PROB%)")]
    MissingEquals { rule: String },
    #[error("fault {rule:?}: missing syscall name before '='")]
    MissingSyscall { rule: String },
    #[error("fault {rule:?}: unknown syscall {name:?} on {arch}")]
    UnknownSyscall {
        rule: String,
        name: String,
        arch: &'static str,
    },
    #[error("fs-fault {rule:?}: unknown operation {name:?} (expected one of: {expected})")]
    UnknownFsOp {
        rule: String,
        name: String,
        expected: String,
    },
    #[error("fault {rule:?}: unknown errno {name:?} (expected a name such as EIO, ENOENT, ECONNREFUSED)")]
    UnknownErrno { rule: String, name: String },
    #[error("fault {rule:?}: missing {what}")]
    Missing { rule: String, what: &'static str },
    #[error("fault {rule:?}: bad duration {text:?}: {why}")]
    BadDuration {
        rule: String,
        text: String,
        why: String,
    },
    #[error("fault {rule:?}: bad probability {text:?}: {why}")]
    BadProbability {
        rule: String,
        text: String,
        why: &'static str,
    },
    #[error("fault {rule:?}: bad trigger {text:?}: {why}")]
    BadTrigger {
        rule: String,
        text: String,
        why: &'static str,
    },
    #[error("fault {rule:?}: empty path glob")]
    EmptyGlob { rule: String },
    #[error("fault {rule:?}: path glob {glob:?} {why}")]
    BadGlob {
        rule: String,
        glob: String,
        why: String,
    },
    #[error("fault {rule:?}: unexpected {text:?} after the trigger (the path glob comes before it, as in SYSCALL=EIO:100%:/path:nth=1)")]
    Trailing { rule: String, text: String },
}

/// Most `{...}` groups a path glob may nest; the glob compiler recurses per level.
pub const MAX_GLOB_NESTING: usize = 10;
/// Longest path glob accepted (the kernel's PATH_MAX).
pub const MAX_GLOB_LEN: usize = 4096;

/// Checks that `glob` can match something: it is well formed (closed `[...]` and
/// `{...}`, at most [`MAX_GLOB_NESTING`] nested groups, no dangling `\`) and anchored
/// the way the strings it is matched against are: absolute paths (`/data/*`,
/// `*/x.wal`), `socket:[...]`, `pipe:[...]`, and numeric socket addresses
/// (`127.0.0.1:5432`, `[::1]:80`, `*:5432`, `@abstract`). A relative path or a host
/// name would never match, and a declared fault must never be silently inert.
/// Returns why not, as the end of a sentence that starts with the glob.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.trim().is_empty() {
        return Err("is empty".into());
    }
    if glob.len() > MAX_GLOB_LEN {
        return Err(format!("is longer than {MAX_GLOB_LEN} bytes"));
    }
    let (mut depth, mut escaped) = (0usize, false);
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => class(&mut chars)?,
            '{' => {
                depth += 1;
                if depth > MAX_GLOB_NESTING {
                    return Err(format!("nests more than {MAX_GLOB_NESTING} {{...}} groups"));
                }
            }
            '}' if depth == 0 => return Err("has a '}' with no '{' before it".into()),
            '}' => depth -= 1,
            _ => {}
        }
    }
    if escaped {
        return Err("ends with a lone '\\'".into());
    }
    if depth > 0 {
        return Err("has a '{' that is never closed".into());
    }
    anchored(glob, 0)
}

/// Reads a character class after its `[`: `[!...]` negates, a `]` first is a
/// literal, every other character is itself (`\\` included), and ranges go upwards.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<(), String> {
    if chars.peek().is_some_and(|c| *c == '!' || *c == '^') {
        chars.next();
    }
    let mut members: Vec<char> = Vec::new();
    if chars.peek() == Some(&']') {
        members.push(']');
        chars.next();
    }
    loop {
        match chars.next() {
            None => return Err("has a '[' that is never closed".into()),
            Some(']') => return Ok(()),
            Some('-') if !members.is_empty() && chars.peek().is_some_and(|c| *c != ']') => {
                let (from, to) = (
                    *members.last().expect("not empty"),
                    chars.next().expect("peeked"),
                );
                if from > to {
                    return Err(format!("has a backwards range {from}-{to}"));
                }
                members.push(to);
            }
            Some(c) => members.push(c),
        }
    }
}

/// Whether every alternative `glob` can expand to starts the way matched strings do.
fn anchored(glob: &str, depth: usize) -> Result<(), String> {
    let first = glob.chars().next().unwrap_or('/');
    if first == '{' && depth <= MAX_GLOB_NESTING {
        // `{/a,/b}rest`: each alternative, followed by the rest, must be anchored.
        let mut level = 0;
        let mut start = 1;
        let mut alternatives = Vec::new();
        for (i, c) in glob.char_indices() {
            match c {
                '{' => level += 1,
                '}' => {
                    level -= 1;
                    if level == 0 {
                        alternatives.push(&glob[start..i]);
                        let rest = &glob[i + 1..];
                        for alt in alternatives {
                            anchored(&format!("{alt}{rest}"), depth + 1)?;
                        }
                        return Ok(());
                    }
                }
                ',' if level == 1 => {
                    alternatives.push(&glob[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return Ok(());
    }
    if matches!(first, '/' | '*' | '?' | '[' | '@' | '{') || first.is_ascii_digit() {
        return Ok(());
    }
    match glob.split_once(':') {
        Some((head, _)) if !head.contains('/') => {
            if ["socket", "pipe", "anon_inode"].contains(&head) {
                Ok(())
            } else {
                Err(format!(
                    "names host {head:?}: socket addresses are matched as numbers (127.0.0.1:5432, [::1]:80, *:5432), so it would never match"
                ))
            }
        }
        _ => Err(format!(
            "is relative: files are matched by absolute path, so it would never match (write /full/path/{glob} or */{glob})"
        )),
    }
}

impl FaultRule {
    /// Parses a `--fault` value. The syscall name is checked later, per architecture,
    /// by [`FaultRule::syscalls`].
    pub fn parse(text: &str) -> Result<FaultRule, RuleError> {
        parse(text, TargetKind::Syscall)
    }

    /// Parses an `--fs-fault` value, whose target is an operation name (`sync`, `stat`).
    pub fn parse_fs(text: &str) -> Result<FaultRule, RuleError> {
        let rule = parse(text, TargetKind::FsOp)?;
        if syscalls::expand_fs_op(&rule.target, Arch::native()).is_none() {
            return Err(RuleError::UnknownFsOp {
                rule: text.to_string(),
                name: rule.target,
                expected: syscalls::fs_op_names().join(", "),
            });
        }
        Ok(rule)
    }

    /// The syscalls this rule covers on `arch`.
    pub fn syscalls(&self, arch: Arch) -> Result<Vec<Syscall>, RuleError> {
        let found = match self.kind {
            TargetKind::Syscall => syscalls::expand(&self.target, arch),
            TargetKind::FsOp => syscalls::expand_fs_op(&self.target, arch),
        };
        found.ok_or_else(|| RuleError::UnknownSyscall {
            rule: self.to_string(),
            name: self.target.clone(),
            arch: arch.name(),
        })
    }
}

impl fmt::Display for FaultRule {
    /// The canonical text form, which parses back to the same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.target)?;
        match &self.action {
            Action::Deny(e) => match errno::name(*e) {
                Some(n) => write!(f, "{n}")?,
                None => write!(f, "errno{e}")?,
            },
            Action::Delay(d) => write!(f, "delay:{}", format_duration(*d))?,
        }
        write!(f, ":{}%", self.probability)?;
        if let Some(g) = &self.path_glob {
            write!(f, ":{g}")?;
        }
        match self.trigger {
            Trigger::Always => Ok(()),
            Trigger::Nth(n) => write!(f, ":nth={n}"),
            Trigger::After(n) => write!(f, ":after={n}"),
        }
    }
}

fn parse(text: &str, kind: TargetKind) -> Result<FaultRule, RuleError> {
    let rule = || text.to_string();
    let (target, rest) = text
        .split_once('=')
        .ok_or_else(|| RuleError::MissingEquals { rule: rule() })?;
    let target = target.trim();
    if target.is_empty() {
        return Err(RuleError::MissingSyscall { rule: rule() });
    }
    if kind == TargetKind::Syscall
        && !target
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(RuleError::UnknownSyscall {
            rule: rule(),
            name: target.to_string(),
            arch: Arch::native().name(),
        });
    }

    let mut parts = rest.split(':');
    let action_text = parts.next().unwrap_or("").trim();
    let action = if action_text.eq_ignore_ascii_case("delay") {
        let d = parts.next().ok_or(RuleError::Missing {
            rule: rule(),
            what: "duration after 'delay:' (for example delay:200ms:100%)",
        })?;
        Action::Delay(
            parse_duration(d.trim()).map_err(|why| RuleError::BadDuration {
                rule: rule(),
                text: d.to_string(),
                why,
            })?,
        )
    } else if action_text.is_empty() {
        return Err(RuleError::Missing {
            rule: rule(),
            what: "errno or 'delay' after '='",
        });
    } else {
        let e = errno::from_name(action_text).ok_or_else(|| RuleError::UnknownErrno {
            rule: rule(),
            name: action_text.to_string(),
        })?;
        Action::Deny(e)
    };

    let prob_text = parts.next().ok_or(RuleError::Missing {
        rule: rule(),
        what: "probability (for example :100%)",
    })?;
    let probability =
        parse_probability(prob_text.trim()).map_err(|why| RuleError::BadProbability {
            rule: rule(),
            text: prob_text.to_string(),
            why,
        })?;

    // What remains is an optional glob and an optional trigger. A glob may itself
    // contain ':', so the trigger is recognised from the end.
    let rest: Vec<&str> = parts.collect();
    let mut trigger = Trigger::Always;
    let mut glob_parts: &[&str] = &rest;
    if let Some((last, before)) = rest.split_last() {
        if looks_like_trigger(last) {
            trigger = parse_trigger(last.trim()).map_err(|why| RuleError::BadTrigger {
                rule: rule(),
                text: last.to_string(),
                why,
            })?;
            glob_parts = before;
        }
    }
    if let Some(pos) = glob_parts.iter().position(|p| looks_like_trigger(p)) {
        return Err(RuleError::Trailing {
            rule: rule(),
            text: rest[pos + 1..].join(":"),
        });
    }
    let path_glob = if glob_parts.is_empty() {
        None
    } else {
        let g = glob_parts.join(":");
        if g.trim().is_empty() {
            return Err(RuleError::EmptyGlob { rule: rule() });
        }
        check_glob(&g).map_err(|why| RuleError::BadGlob {
            rule: rule(),
            glob: g.clone(),
            why,
        })?;
        Some(g)
    };

    Ok(FaultRule {
        target: target.to_string(),
        kind,
        action,
        probability,
        path_glob,
        trigger,
        label: None,
    })
}

/// `nth=3`, `after=2`, and anything else of the form `word=value` that is not a path.
fn looks_like_trigger(part: &str) -> bool {
    match part.split_once('=') {
        Some((key, _)) => !key.is_empty() && key.trim().bytes().all(|b| b.is_ascii_alphabetic()),
        None => false,
    }
}

fn parse_trigger(text: &str) -> Result<Trigger, &'static str> {
    let (key, value) = text.split_once('=').ok_or("expected nth=N or after=N")?;
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| "the count must be a non-negative whole number")?;
    match key.trim() {
        "nth" if n == 0 => Err("nth counts from 1"),
        "nth" => Ok(Trigger::Nth(n)),
        "after" => Ok(Trigger::After(n)),
        _ => Err("unknown trigger (expected nth=N or after=N)"),
    }
}

/// Parses `30%`, `0.5%` or `100%`.
pub fn parse_probability(text: &str) -> Result<f64, &'static str> {
    let number = text
        .strip_suffix('%')
        .ok_or("must end with '%' (for example 30%)")?;
    let p: f64 = number
        .trim()
        .parse()
        .map_err(|_| "not a number (for example 30%)")?;
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err("must be between 0% and 100%");
    }
    Ok(p)
}

/// Parses a Go-style duration: `500us`, `200ms`, `1.5s`, `1m30s`, `2h`, or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty (expected for example 200ms)".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit after {rest:?} (use ns, us, ms, s, m or h)"))?;
        if num_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if total > 86_400.0 * 365.0 {
        return Err("longer than a year".into());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way users write one: `500ms`, `1.5s`, `250us`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".into()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else if ns >= 1_000_000_000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_with_glob_and_trigger() {
        let r = FaultRule::parse("openat=ENOENT:100%:/data/*:nth=3").unwrap();
        assert_eq!(r.target, "openat");
        assert_eq!(r.action, Action::Deny(libc::ENOENT));
        assert_eq!(r.probability, 100.0);
        assert_eq!(r.path_glob.as_deref(), Some("/data/*"));
        assert_eq!(r.trigger, Trigger::Nth(3));
    }

    #[test]
    fn delay_with_trigger_only() {
        let r = FaultRule::parse("fsync=delay:1.5s:50%:after=2").unwrap();
        assert_eq!(r.action, Action::Delay(Duration::from_millis(1500)));
        assert_eq!(r.path_glob, None);
        assert_eq!(r.trigger, Trigger::After(2));
    }

    #[test]
    fn errno_is_case_insensitive() {
        assert_eq!(
            FaultRule::parse("write=eio:30%").unwrap().action,
            Action::Deny(libc::EIO)
        );
    }

    #[test]
    fn bad_inputs_name_the_part() {
        let e = |s: &str| FaultRule::parse(s).unwrap_err().to_string();
        assert!(e("writeEIO").contains("missing '='"));
        assert!(e("write=EIOX:10%").contains("unknown errno \"EIOX\""));
        assert!(e("write=EIO:101%").contains("between 0% and 100%"));
        assert!(e("write=EIO:-1%").contains("between 0% and 100%"));
        assert!(e("write=EIO:50").contains("must end with '%'"));
        assert!(e("write=EIO").contains("missing probability"));
        assert!(e("write=EIO:100%:nth=0").contains("nth counts from 1"));
        assert!(e("write=EIO:100%:after=-1").contains("non-negative"));
        assert!(e("write=EIO:100%:every=2").contains("unknown trigger"));
        assert!(e("write=delay:fast:100%").contains("bad duration"));
        assert!(e("write=delay:10:100%").contains("missing unit"));
        assert!(e("=EIO:100%").contains("missing syscall"));
        assert!(e("write=EIO:100%:nth=1:/x").contains("unexpected \"/x\" after the trigger"));
        assert!(e("write=EIO:100%:nth=1:/a:/b").contains("unexpected \"/a:/b\" after"));
    }

    #[test]
    fn globs_that_could_never_match_are_refused() {
        let e = |s: &str| FaultRule::parse(s).unwrap_err().to_string();
        assert!(e("write=EIO:100%:data/*").contains("is relative"));
        assert!(e("write=EIO:100%:./x").contains("is relative"));
        assert!(e("connect=ECONNREFUSED:100%:localhost:5432").contains("names host \"localhost\""));
        assert!(e("openat=EIO:100%:/a[b").contains("never closed"));
        assert!(e("openat=EIO:100%:/a}").contains("no '{' before it"));
        assert!(e("openat=EIO:100%:/{a,b").contains("never closed"));
        let deep = format!(
            "openat=ENOENT:100%:/{}a{}",
            "{".repeat(300),
            "}".repeat(300)
        );
        assert!(e(&deep).contains("nests more than 10"));
        assert!(e(&format!("openat=EIO:100%:/{}", "a".repeat(5000))).contains("longer than"));
        assert!(e("openat=EIO:100%:{/a,b/c}").contains("is relative"));
        for ok in [
            "/data/*",
            "*/x.wal",
            "**/x",
            "/{a,b}/*",
            "{/a,/b}",
            "*:5432",
            "127.0.0.1:*",
            "[::1]:80",
            "socket:[*]",
            "pipe:*",
            "@abstract",
            "?tmp/x",
        ] {
            check_glob(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn globs_may_contain_colons() {
        let r = FaultRule::parse("openat=EIO:100%:/a:b/*").unwrap();
        assert_eq!(r.path_glob.as_deref(), Some("/a:b/*"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 ms").is_err());
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn fs_ops() {
        let r = FaultRule::parse_fs("sync=EIO:100%:after=2").unwrap();
        let names: Vec<_> = r
            .syscalls(Arch::X86_64)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["fsync", "fdatasync"]);
        assert!(FaultRule::parse_fs("rename=EIO:100%")
            .unwrap_err()
            .to_string()
            .contains("unknown operation"));
    }

    #[test]
    fn unknown_syscall_is_refused_per_arch() {
        let r = FaultRule::parse("nosuch=EIO:100%").unwrap();
        assert!(r.syscalls(Arch::X86_64).is_err());
        let open = FaultRule::parse("open=EIO:100%").unwrap();
        assert!(open.syscalls(Arch::Aarch64).is_ok(), "family covers openat");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn never_panics_on_any_text(s in ".{0,64}") {
            let _ = FaultRule::parse(&s);
            let _ = FaultRule::parse_fs(&s);
        }

        #[test]
        fn never_panics_on_rule_shaped_text(
            sc in "[a-z_0-9]{0,12}",
            act in "(E[A-Z]{1,8}|delay:[0-9.]{0,4}[a-zµ]{0,3}|[a-z]{0,4})",
            prob in "[-0-9.e]{0,6}%?",
            tail in "(:[/*a-z=0-9.:-]{0,12}){0,3}",
        ) {
            let text = format!("{sc}={act}:{prob}{tail}");
            let _ = FaultRule::parse(&text);
        }

        #[test]
        fn display_round_trips(
            errno_idx in 0usize..crate::errno::ERRNOS.len(),
            prob in 0u32..=100,
            glob in proptest::option::of("/[a-z]{1,6}/\\*{1,2}"),
            trig in 0u8..3, n in 1u64..1000,
        ) {
            let errno = crate::errno::ERRNOS[errno_idx].1;
            let trigger = match trig { 0 => Trigger::Always, 1 => Trigger::Nth(n), _ => Trigger::After(n) };
            let rule = FaultRule {
                target: "write".into(), kind: TargetKind::Syscall, action: Action::Deny(errno),
                probability: prob as f64, path_glob: glob, trigger, label: None,
            };
            let back = FaultRule::parse(&rule.to_string()).unwrap();
            prop_assert_eq!(back, rule);
        }
    }
}
