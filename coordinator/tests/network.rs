//! The network between services, against real processes: every service in a
//! namespace of its own, reached only through Faultbox's relays.

mod common;

use common::{root, Out};

/// These tests check for leftover processes by name, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn faultbox(args: &[&str]) -> Out {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = common::faultbox_at(&root(), args);
    assert!(
        common::processes_with("net_svc.py").is_empty(),
        "a service outlived its test"
    );
    let left = common::scratch_leftovers();
    assert!(left.is_empty(), "{left:?}");
    out
}

fn events<'a>(doc: &'a serde_json::Value, test: &str) -> &'a Vec<serde_json::Value> {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == test)
        .unwrap_or_else(|| panic!("{test} ran"))["events"]
        .as_array()
        .unwrap()
}

#[test]
fn services_reach_each_other_only_through_relays() {
    let out = faultbox(&[
        "test",
        "coordinator/tests/specs/network.star",
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ev = events(&doc, "test_every_way_of_addressing_reaches_the_service");
    // Each connection c made to a crossed c's relay: opened and closed on a's side,
    // with the bytes both ways.
    let closes: Vec<&serde_json::Value> = ev
        .iter()
        .filter(|e| {
            e["event_type"] == "proxy.close" && e["service"] == "a" && e["fields"]["source"] == "c"
        })
        .collect();
    assert!(!closes.is_empty(), "c's connections to a are in the trace");
    for e in &closes {
        assert_eq!(e["type"], "proxy");
        assert_eq!(e["fields"]["interface"], "main");
        assert_eq!(e["fields"]["bytes_sent"], "5", "PING and a newline: {e}");
        assert_eq!(e["fields"]["bytes_received"], "12", "PONG from a: {e}");
    }
    // The driver's steps are one more consumer.
    assert!(ev.iter().any(|e| e["event_type"] == "proxy.open"
        && e["service"] == "b"
        && e["fields"]["source"] == "test"));
    // A connect to a relay names the service behind it, and merges its clock.
    let connect = ev
        .iter()
        .find(|e| {
            e["event_type"] == "syscall.connect"
                && e["service"] == "c"
                && e["fields"]["path"] == "127.0.1.1:7100"
        })
        .expect("c's connect to a's relay (partition() puts connect in c's filter)");
    assert_eq!(connect["fields"]["peer"], "a", "{connect}");
    // The relay's open carries c's history into a.
    let open = ev
        .iter()
        .find(|e| {
            e["event_type"] == "proxy.open" && e["service"] == "a" && e["fields"]["source"] == "c"
        })
        .unwrap();
    assert!(open["vector_clock"]["c"].as_u64().unwrap() >= 1, "{open}");

    let cut = events(&doc, "test_a_partition_cuts_exactly_its_edge");
    let faults = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test_a_partition_cuts_exactly_its_edge")
        .unwrap()["faults"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(faults.len(), 2, "one connect rule each way: {faults:?}");
    assert!(cut.iter().any(|e| e["event_type"] == "syscall.connect"
        && e["service"] == "c"
        && e["fields"]["decision"]
            .as_str()
            .unwrap()
            .starts_with("deny")));
}
