//! Bounding a `faultbox test --format json` document for a tool result. A run's
//! events are most of its size (a trace can be megabytes), and an agent reads the
//! whole result, so events are left out unless asked for, for one test and up to a
//! limit; every test says how many of its events were left out. What is still over
//! [`MAX_RESULT_BYTES`] loses whole runs, passing ones first, and says so.

use serde_json::{json, Map, Value};

/// The most a run's result may take, in bytes of JSON.
pub const MAX_RESULT_BYTES: usize = 1 << 20;
/// Events of the asked-for test kept by default, per run.
pub const DEFAULT_EVENTS: u64 = 200;
/// The most events of the asked-for test kept per run.
pub const MAX_EVENTS: u64 = 5000;

/// Which events to keep.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    /// The test (`x` or `test_x`) whose events are kept.
    pub test: Option<String>,
    /// How many of them per run.
    pub limit: u64,
}

/// `test_x` for `x` or `test_x`.
pub fn full_name(name: &str) -> String {
    if name.starts_with("test_") {
        name.to_string()
    } else {
        format!("test_{name}")
    }
}

/// Bounds `doc` (a `--format json` document) as the module says.
pub fn bound(mut doc: Value, keep: &Keep) -> Value {
    let wanted = keep.test.as_deref().map(full_name);
    let Some(tests) = doc.get_mut("tests").and_then(Value::as_array_mut) else {
        return doc;
    };
    // Events of the kept test share half the budget, so the runs still fit.
    let mut event_budget = MAX_RESULT_BYTES / 2;
    for t in tests.iter_mut() {
        let Some(obj) = t.as_object_mut() else {
            continue;
        };
        let Some(Value::Array(events)) = obj.remove("events") else {
            continue;
        };
        let total = events.len() as u64;
        let mut kept = Vec::new();
        if wanted.is_some() && obj.get("name").and_then(Value::as_str) == wanted.as_deref() {
            for e in events {
                if kept.len() as u64 >= keep.limit {
                    break;
                }
                let size = e.to_string().len();
                if size > event_budget {
                    break;
                }
                event_budget -= size;
                kept.push(e);
            }
        }
        obj.insert("events_total".into(), json!(total));
        obj.insert("events_omitted".into(), json!(total - kept.len() as u64));
        if !kept.is_empty() {
            obj.insert("events".into(), Value::Array(kept));
        }
    }
    drop_runs_over_budget(&mut doc);
    doc
}

/// Leaves out whole runs (passing first, from the end) until `doc` fits.
fn drop_runs_over_budget(doc: &mut Value) {
    let size = doc.to_string().len();
    if size <= MAX_RESULT_BYTES {
        return;
    }
    let Some(tests) = doc.get_mut("tests").and_then(Value::as_array_mut) else {
        return;
    };
    let sizes: Vec<usize> = tests.iter().map(|t| t.to_string().len() + 1).collect();
    let failing = |t: &Value| t.get("result").and_then(Value::as_str) == Some("fail");
    let mut over = size - MAX_RESULT_BYTES + 256;
    let mut drop = vec![false; tests.len()];
    for pass in [true, false] {
        for i in (0..tests.len()).rev() {
            if over == 0 {
                break;
            }
            if failing(&tests[i]) != pass {
                drop[i] = true;
                over = over.saturating_sub(sizes[i]);
            }
        }
    }
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut i = 0;
    tests.retain(|t| {
        let d = drop[i];
        i += 1;
        if d {
            if failing(t) {
                failed += 1;
            } else {
                passed += 1;
            }
        }
        !d
    });
    if let Some(obj) = doc.as_object_mut() {
        let mut note = Map::new();
        note.insert("pass".into(), json!(passed));
        note.insert("fail".into(), json!(failed));
        note.insert(
            "reason".into(),
            json!(format!(
                "the result is bounded to {} KiB: run one test (run_single_test) or fewer runs to see these",
                MAX_RESULT_BYTES >> 10
            )),
        );
        obj.insert("runs_omitted".into(), Value::Object(note));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, result: &str, events: usize, pad: usize) -> Value {
        json!({
            "name": name,
            "result": result,
            "seed": 0,
            "pad": "x".repeat(pad),
            "events": (0..events).map(|i| json!({"seq": i})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn events_are_left_out_unless_asked_for_and_counted() {
        let doc = json!({"pass": 2, "tests": [run("test_a", "pass", 5, 0), run("test_b", "fail", 300, 0)]});
        let out = bound(doc.clone(), &Keep::default());
        for t in out["tests"].as_array().unwrap() {
            assert!(t.get("events").is_none());
        }
        assert_eq!(out["tests"][0]["events_omitted"], 5);
        assert_eq!(out["tests"][1]["events_total"], 300);
        assert_eq!(out["pass"], 2);

        let keep = Keep {
            test: Some("b".into()),
            limit: 250,
        };
        let out = bound(doc, &keep);
        assert!(out["tests"][0].get("events").is_none());
        assert_eq!(out["tests"][1]["events"].as_array().unwrap().len(), 250);
        assert_eq!(out["tests"][1]["events"][0]["seq"], 0);
        assert_eq!(out["tests"][1]["events_omitted"], 50);
    }

    #[test]
    fn runs_over_the_bound_go_passing_first() {
        let big = MAX_RESULT_BYTES / 4;
        let tests: Vec<Value> = (0..6)
            .map(|i| {
                run(
                    &format!("test_{i}"),
                    if i == 5 { "fail" } else { "pass" },
                    0,
                    big,
                )
            })
            .collect();
        let out = bound(json!({"tests": tests}), &Keep::default());
        assert!(out.to_string().len() <= MAX_RESULT_BYTES);
        let names: Vec<&str> = out["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"test_5"), "{names:?}");
        assert_eq!(names[0], "test_0");
        assert_eq!(
            out["runs_omitted"]["pass"].as_u64().unwrap() as usize,
            6 - names.len()
        );
        assert_eq!(out["runs_omitted"]["fail"], 0);
    }
}
