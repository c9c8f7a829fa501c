//! One run's trace as the page draws it: lanes, events in a compact row form, and
//! the messages between lanes that the vector clocks record.

use std::collections::HashMap;

use serde::ser::{Serialize, SerializeTuple, Serializer};

use faultbox_spec::world::{Event, DRIVER};

/// A call or request a fault acted on (denied, failed, answered in the server's place).
pub const FAULT: u8 = 1;
/// The driver turned faults on or off.
pub const RULE: u8 = 2;
/// The fault was a delay: drawn apart from failures.
pub const DELAY: u8 = 4;

/// What the page gets of a trace. Strings that repeat on every event (kinds, event
/// types, lane names) go once into tables and events point into them: a 50,000-event
/// trace stays a few megabytes.
#[derive(serde::Serialize)]
pub struct Trace<'a> {
    pub lanes: Vec<&'a str>,
    pub kinds: Vec<&'a str>,
    pub types: Vec<&'a str>,
    pub events: Vec<Row<'a>>,
    /// Pairs `sender, receiver` of event indices, sorted by receiver.
    pub arrows: Vec<u32>,
}

/// One event: `[seq, µs since start, lane, kind, type, flags, partition key or null,
/// fields, clock]`, the clock as one count per lane.
pub struct Row<'a> {
    seq: u64,
    micros: u64,
    lane: usize,
    kind: usize,
    event_type: usize,
    flags: u8,
    partition_key: Option<&'a str>,
    fields: &'a faultbox_spec::world::Fields,
    clock: Vec<u64>,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(9)?;
        t.serialize_element(&self.seq)?;
        t.serialize_element(&self.micros)?;
        t.serialize_element(&self.lane)?;
        t.serialize_element(&self.kind)?;
        t.serialize_element(&self.event_type)?;
        t.serialize_element(&self.flags)?;
        t.serialize_element(&self.partition_key)?;
        t.serialize_element(self.fields)?;
        t.serialize_element(&self.clock)?;
        t.end()
    }
}

/// Indexes strings in order of first use.
#[derive(Default)]
struct Table<'a> {
    names: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
}

impl<'a> Table<'a> {
    fn get(&mut self, s: &'a str) -> usize {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        self.names.push(s);
        self.index.insert(s, self.names.len() - 1);
        self.names.len() - 1
    }
}

/// How the page marks an event: faults that acted, and the driver's fault changes.
pub fn flags(e: &Event) -> u8 {
    match e.kind.as_str() {
        "fault" => RULE,
        "syscall" => match e.fields.get("decision").map(String::as_str) {
            Some(d) if d.starts_with("delay") => FAULT | DELAY,
            Some(d) if d.starts_with("deny") => FAULT,
            _ => 0,
        },
        "proxy" => match e.fields.get("action").map(String::as_str) {
            Some("delay") => FAULT | DELAY,
            Some("response" | "error" | "drop" | "duplicate") => FAULT,
            _ => 0,
        },
        _ => 0,
    }
}

/// The trace of one run with one lane per service: the test driver first, then the
/// spec's services in declaration order, then any other name the events carry.
pub fn trace<'a>(events: &'a [Event], services: &'a [String]) -> Trace<'a> {
    let mut lanes = Table::default();
    lanes.get(DRIVER);
    for s in services {
        lanes.get(s);
    }
    for e in events {
        lanes.get(&e.service);
        for name in e.vector_clock.keys() {
            lanes.get(name);
        }
    }
    let (mut kinds, mut types) = (Table::default(), Table::default());
    let rows = events
        .iter()
        .map(|e| {
            let mut clock = vec![0; lanes.names.len()];
            for (name, n) in &e.vector_clock {
                clock[lanes.index[name.as_str()]] = *n;
            }
            Row {
                seq: e.seq,
                micros: e.timestamp_ns / 1000,
                lane: lanes.index[e.service.as_str()],
                kind: kinds.get(&e.kind),
                event_type: types.get(&e.event_type),
                flags: flags(e),
                partition_key: (e.partition_key != e.service).then_some(e.partition_key.as_str()),
                fields: &e.fields,
                clock,
            }
        })
        .collect();
    Trace {
        lanes: lanes.names,
        kinds: kinds.names,
        types: types.names,
        events: rows,
        arrows: arrows(events)
            .into_iter()
            .flat_map(|(a, b)| [a, b])
            .collect(),
    }
}

/// The messages between lanes, as `(sender, receiver)` event indices in receiver
/// order. An event whose clock holds a newer entry for another service than its
/// lane's previous event did has received from that service: the sender is that
/// service's event with exactly that count. Entries learnt only through another
/// sender (its clock already covers them) are not messages of their own, so
/// knowledge passed along a chain draws one arrow per hop, not one to every
/// service upstream.
pub fn arrows(events: &[Event]) -> Vec<(u32, u32)> {
    // (service, its own count) -> event index.
    let mut by_count: HashMap<(&str, u64), usize> = HashMap::new();
    let mut previous: HashMap<&str, &faultbox_spec::world::Clock> = HashMap::new();
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let before = previous.get(e.service.as_str());
        let mut senders: Vec<usize> = Vec::new();
        for (other, &n) in &e.vector_clock {
            if *other == e.service {
                continue;
            }
            let known = before.and_then(|c| c.get(other)).copied().unwrap_or(0);
            if n <= known {
                continue;
            }
            if let Some(&j) = by_count.get(&(other.as_str(), n)) {
                senders.push(j);
            }
        }
        // A sender that another sender had already heard of is implied by that one.
        let direct: Vec<usize> = senders
            .iter()
            .copied()
            .filter(|&j| {
                let s = &events[j];
                let own = s.vector_clock.get(&s.service).copied().unwrap_or(0);
                !senders.iter().any(|&k| {
                    k != j && events[k].vector_clock.get(&s.service).copied().unwrap_or(0) >= own
                })
            })
            .collect();
        out.extend(direct.into_iter().map(|j| (j as u32, i as u32)));
        if let Some(&own) = e.vector_clock.get(&e.service) {
            by_count.insert((e.service.as_str(), own), i);
        }
        previous.insert(e.service.as_str(), &e.vector_clock);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(service: &str, kind: &str, clock: &[(&str, u64)], fields: &[(&str, &str)]) -> Event {
        Event {
            service: service.into(),
            kind: kind.into(),
            event_type: kind.into(),
            partition_key: service.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vector_clock: clock.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Event::default()
        }
    }

    #[test]
    fn a_step_and_the_calls_it_provokes_are_messages_one_hop_at_a_time() {
        // test sends to orders, orders connects to inventory (learning its clock),
        // the reply reaches test: test learns inventory's entry through orders.
        let events = [
            ev("inventory", "service_ready", &[("inventory", 1)], &[]),
            ev("test", "step_send", &[("test", 1)], &[]),
            ev("orders", "proxy", &[("orders", 1), ("test", 1)], &[]),
            ev("orders", "syscall", &[("orders", 2), ("test", 1)], &[]),
            ev(
                "orders",
                "syscall",
                &[("inventory", 1), ("orders", 3), ("test", 1)],
                &[],
            ),
            ev(
                "test",
                "step_recv",
                &[("inventory", 1), ("orders", 3), ("test", 2)],
                &[],
            ),
        ];
        assert_eq!(arrows(&events), [(1, 2), (0, 4), (4, 5)]);
    }

    #[test]
    fn two_senders_unknown_to_each_other_both_draw() {
        let events = [
            ev("a", "x", &[("a", 1)], &[]),
            ev("b", "x", &[("b", 1)], &[]),
            ev("c", "x", &[("a", 1), ("b", 1), ("c", 1)], &[]),
            // Nothing new: no arrow.
            ev("c", "x", &[("a", 1), ("b", 1), ("c", 2)], &[]),
        ];
        assert_eq!(arrows(&events), [(0, 2), (1, 2)]);
    }

    #[test]
    fn faults_and_rule_changes_are_flagged() {
        let deny = ev(
            "s",
            "syscall",
            &[],
            &[("decision", "deny(input/output error)")],
        );
        let delay = ev("s", "syscall", &[], &[("decision", "delay(200ms)")]);
        let allow = ev("s", "syscall", &[], &[("decision", "allow (system path)")]);
        let proxy_err = ev("s", "proxy", &[], &[("action", "error")]);
        let proxy_open = ev("s", "proxy", &[], &[("action", "open")]);
        let rule = ev("test", "fault", &[], &[]);
        assert_eq!(flags(&deny), FAULT);
        assert_eq!(flags(&delay), FAULT | DELAY);
        assert_eq!(flags(&allow), 0);
        assert_eq!(flags(&proxy_err), FAULT);
        assert_eq!(flags(&proxy_open), 0);
        assert_eq!(flags(&rule), RULE);
    }

    #[test]
    fn lanes_start_with_the_driver_then_the_spec_order() {
        let services = vec!["orders".to_string(), "inventory".to_string()];
        let events = [
            ev("inventory", "service_started", &[("inventory", 1)], &[]),
            ev("extra", "x", &[("extra", 1), ("inventory", 1)], &[]),
        ];
        let t = trace(&events, &services);
        assert_eq!(t.lanes, ["test", "orders", "inventory", "extra"]);
        let row = serde_json::to_value(&t.events[1]).unwrap();
        assert_eq!(row[2], 3, "lane of extra");
        assert_eq!(row[8], serde_json::json!([0, 0, 1, 1]));
        assert_eq!(t.arrows, [0, 1]);
    }
}
