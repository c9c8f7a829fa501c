//! Delays change timing, not behaviour: the same seed gives the same normalized trace,
//! byte for byte, for a spec with syscall and protocol delays; a syscall delay on
//! calls that `parallel()` holds and releases still applies to each of them.

mod common;

use common::root;

/// The normalized trace of each test of the file, by test name.
fn by_test(norm: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut name = String::new();
    for line in norm.lines() {
        if let Some(rest) = line.strip_prefix("test ") {
            name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        let section: &mut String = out.entry(name.clone()).or_default();
        section.push_str(line);
        section.push('\n');
    }
    out
}

#[test]
fn the_same_seed_gives_the_same_trace_with_delays() {
    let scratch = common::Scratch::new("delays");
    let (a, b) = (scratch.0.join("a.norm"), scratch.0.join("b.norm"));
    for path in [&a, &b] {
        let out = common::faultbox_at(
            &root(),
            &[
                "test",
                "coordinator/tests/specs/delays.star",
                "--seed",
                "11",
                "--normalize",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stderr.contains("3 passed, 0 failed"), "{}", out.stderr);
    }
    let (a, b) = (
        by_test(&std::fs::read_to_string(&a).unwrap()),
        by_test(&std::fs::read_to_string(&b).unwrap()),
    );
    for (test, want) in [
        ("test_syscall_delay", &["decision=delay(5ms)"][..]),
        ("test_protocol_delays", &["delay_ms=3", "delay_ms=2"][..]),
    ] {
        assert_eq!(a[test], b[test], "{test}: byte for byte");
        for w in want {
            assert!(a[test].contains(w), "{w} missing from:\n{}", a[test]);
        }
    }
    // Which branch's connect comes first in parallel() varies between runs of the
    // same seed with or without delays; the delays themselves do not.
    for trace in [&a, &b] {
        let t = &trace["test_delays_inside_parallel"];
        assert_eq!(t.matches("decision=delay(2ms)").count(), 2, "{t}");
    }
    for marker in ["debug/inventory", "debug/orders"] {
        common::wait_processes(marker, |n| n == 0, 3, &format!("{marker} still running"));
    }
    // Scratch directories of runs that have ended (others may be running now).
    let leftovers: Vec<String> = common::scratch_leftovers()
        .into_iter()
        .filter(|n| {
            let pid = n["faultbox-".len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next();
            !pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
