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
    let doc = common::results_of(&out);
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

/// Protocol rules act on requests at the relays: the driver sees HTTP answers given
/// in the server's place, orders sees inventory's connections dropped or delayed,
/// and `source=` limits a rule to one consumer.
#[test]
fn protocol_rules_act_at_the_relays() {
    let dir = common::Scratch::new("proxy-traces");
    let (norm, shiviz) = (dir.path("t.norm"), dir.path("t.shiviz"));
    let out = faultbox(&[
        "test",
        "coordinator/tests/specs/proxy_example.star",
        "--format",
        "json",
        "--normalize",
        &norm,
        "--shiviz",
        &shiviz,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Firings are in every trace format.
    let norm = std::fs::read_to_string(&norm).unwrap();
    assert!(
        norm.contains("proxy.response action=response interface=public method=POST path=/orders protocol=http source=test status=429"),
        "{norm}"
    );
    let shiviz = std::fs::read_to_string(&shiviz).unwrap();
    assert!(shiviz.contains("proxy.response"), "{shiviz}");
    let doc = common::results_of(&out);
    let ev = events(&doc, "test_http_response");
    let fired = ev
        .iter()
        .find(|e| e["event_type"] == "proxy.response")
        .expect("the rule's firing is in the trace");
    assert_eq!(fired["type"], "proxy");
    assert_eq!(fired["service"], "orders");
    for (k, v) in [
        ("action", "response"),
        ("protocol", "http"),
        ("interface", "public"),
        ("source", "test"),
        ("method", "POST"),
        ("path", "/orders"),
        ("status", "429"),
    ] {
        assert_eq!(fired["fields"][k], v, "{k}: {fired}");
    }
    let drop = events(&doc, "test_tcp_drop_reaches_orders")
        .iter()
        .find(|e| e["event_type"] == "proxy.drop")
        .expect("the drop is in the trace");
    assert_eq!(drop["fields"]["source"], "orders");
    let t = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test_source_scopes")
        .unwrap();
    assert_eq!(t["faults"][0]["interface"], "main");
    assert_eq!(
        t["faults"][0]["hits"], 1,
        "only the driver's connection: {t}"
    );
}

/// A rule its interface's protocol cannot take is refused at load, with file and
/// line, before anything starts.
#[test]
fn rules_a_protocol_cannot_take_are_refused_at_load() {
    let dir = common::Scratch::new("proxy-load");
    let cases = [
        (
            "fault(orders.public, error(query = 'INSERT*'), run = lambda: None)",
            "error() on orders.public (http): http has no match key `query`: it matches on method=, path=",
        ),
        (
            "fault(inventory.main, error(), run = lambda: None)",
            "inventory.main (tcp): tcp does not support error()",
        ),
        (
            "fault(orders.public, error(qurey = 'x'), run = lambda: None)",
            "error(): unknown argument \"qurey\"",
        ),
        (
            "fault(orders.public, duplicate(), run = lambda: None)",
            "http does not support duplicate()",
        ),
        (
            "fault(orders.public, error(status = '42P01'), run = lambda: None)",
            "status=\"42P01\": http error codes are numbers",
        ),
    ];
    for (line, expect) in cases {
        let path = dir.path("spec.star");
        std::fs::write(
            &path,
            format!(
                "load({:?}, \"inventory\", \"orders\")\n\ndef test_t():\n    {line}\n",
                root().join("examples/faultbox.star").to_str().unwrap()
            ),
        )
        .unwrap();
        let out = faultbox(&["test", &path, "--dry-run"]);
        assert_eq!(out.code, 1, "{line}: {}", out.stderr);
        assert!(
            out.stderr.contains("spec.star:4: "),
            "{line}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(expect), "{line}: {}", out.stderr);
    }
}

#[test]
fn services_run_as_the_users_they_name() {
    let out = faultbox(&["test", "coordinator/tests/specs/users.star"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // A user that does not exist is a mistake in the spec, found before anything
    // starts, with --dry-run too.
    let dir = common::Scratch::new("users");
    let spec = dir.path("bad.star");
    std::fs::write(
        &spec,
        "svc = service(\"svc\", \"/bin/true\",\n    user = \"no-such-user-here\")\ndef test_x():\n    pass\n",
    )
    .unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["test", spec.as_str()];
        args.extend_from_slice(extra);
        let out = faultbox(&args);
        assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
        assert!(
            out.stderr
                .contains("bad.star:1: service \"svc\": user \"no-such-user-here\": no user"),
            "{}",
            out.stderr
        );
    }
    // A malformed one is refused at load.
    std::fs::write(
        &spec,
        "svc = service(\"svc\", \"/bin/true\", user = \"a:b:c\")\n",
    )
    .unwrap();
    let out = faultbox(&["test", spec.as_str()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("user must be"), "{}", out.stderr);
}
