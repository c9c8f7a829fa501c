//! The trace of one test: every intercepted syscall, lifecycle change and step, in
//! one sequence, each stamped with its service's vector clock.
//!
//! Each service ticks its own entry when it records an event. A step merges the test
//! driver's clock into the target's on send and the target's into the driver's on
//! receive, so causality between steps and the calls they provoke is visible.
//!
//! Events are kept in a compact form and become [`Event`]s when read: stamping one
//! (a busy service logs hundreds of thousands of lines a second) then allocates
//! nothing but its fields, the trace holds less memory, and reading it costs
//! what cloning it did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use faultbox_spec::world::{Clock as VectorClock, Event, Name, SmallMap};

use crate::fleet::stream::EventStream;

/// The pseudo-service of the test body itself.
pub const DRIVER: &str = "test";

pub struct EventLog {
    start: Instant,
    inner: Mutex<Inner>,
    /// Where events also go as they are recorded: a job's stream to its coordinator.
    tap: Option<Arc<EventStream>>,
}

#[derive(Default)]
struct Inner {
    events: Vec<Stored>,
    clocks: BTreeMap<String, Clock>,
    /// Field keys seen so far, shared by the events that use them.
    keys: std::collections::BTreeSet<Name>,
}

/// A service's vector clock, split so that an event shares it instead of copying
/// it: the service's own count, and what it has learnt of the others, which only a
/// merge changes (copy on write).
struct Clock {
    name: Name,
    own: u64,
    others: Arc<BTreeMap<Name, u64>>,
    /// The kinds of event the service recorded, shared by their events.
    kinds: Vec<Name>,
}

impl Clock {
    fn kind(&mut self, kind: &str) -> Name {
        if let Some(k) = self.kinds.iter().find(|k| **k == *kind) {
            return k.clone();
        }
        let k: Name = kind.into();
        self.kinds.push(k.clone());
        k
    }
}

/// One event as kept; [`Stored::event`] makes the [`Event`].
struct Stored {
    timestamp_ns: u64,
    service: Name,
    kind: Name,
    /// `None`: the same as `kind`.
    event_type: Option<Name>,
    /// `None`: the same as `service`.
    partition_key: Option<Name>,
    fields: faultbox_spec::world::Fields,
    /// The service's own entry of its vector clock.
    own: u64,
    /// The rest of its vector clock.
    others: Arc<BTreeMap<Name, u64>>,
}

impl Stored {
    fn event(&self, seq: u64) -> Event {
        // The others' keys and the service's own, in key order.
        let mut entries = Vec::with_capacity(self.others.len() + 1);
        let mut own = Some((self.service.clone(), self.own));
        for (k, &v) in self.others.iter() {
            if own.as_ref().is_some_and(|(s, _)| s < k) {
                entries.extend(own.take());
            }
            entries.push((k.clone(), v));
        }
        entries.extend(own);
        let vector_clock: VectorClock =
            SmallMap::from_sorted(entries).expect("a service is not among its others");
        Event {
            seq,
            timestamp_ns: self.timestamp_ns,
            service: self.service.clone(),
            kind: self.kind.clone(),
            event_type: self.event_type.clone().unwrap_or_else(|| self.kind.clone()),
            partition_key: self
                .partition_key
                .clone()
                .unwrap_or_else(|| self.service.clone()),
            fields: self.fields.clone(),
            vector_clock,
        }
    }
}

impl Inner {
    fn clock(&mut self, service: &str) -> &mut Clock {
        if !self.clocks.contains_key(service) {
            self.clocks.insert(
                service.to_string(),
                Clock {
                    name: service.into(),
                    own: 0,
                    others: Arc::default(),
                    kinds: Vec::new(),
                },
            );
        }
        self.clocks.get_mut(service).expect("inserted above")
    }

    /// Appends an event of `service`, ticking its clock; returns its sequence number.
    fn push(
        &mut self,
        timestamp_ns: u64,
        service: &str,
        kind: &str,
        event_type: Option<String>,
        partition_key: Option<String>,
        fields: BTreeMap<String, String>,
    ) -> u64 {
        let keys = &mut self.keys;
        let fields = SmallMap::from_sorted(
            fields
                .into_iter()
                .map(|(k, v)| {
                    let name = match keys.get(k.as_str()) {
                        Some(n) => n.clone(),
                        None => {
                            let n = Name::from(k);
                            keys.insert(n.clone());
                            n
                        }
                    };
                    (name, v)
                })
                .collect(),
        )
        .expect("a BTreeMap's keys are sorted");
        let clock = self.clock(service);
        clock.own += 1;
        let kind = clock.kind(kind);
        let stored = Stored {
            timestamp_ns,
            service: clock.name.clone(),
            event_type: event_type.filter(|t| **t != *kind).map(Name::from),
            kind,
            partition_key: partition_key.filter(|p| p != service).map(Name::from),
            fields,
            own: clock.own,
            others: clock.others.clone(),
        };
        self.events.push(stored);
        self.events.len() as u64
    }
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
            tap: None,
        }
    }
}

impl EventLog {
    /// A log whose events are also streamed, in order, as they are recorded.
    pub fn streaming(tap: Option<Arc<EventStream>>) -> EventLog {
        EventLog {
            tap,
            ..EventLog::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event of `service`, ticking its clock; returns its sequence number.
    pub fn record(
        &self,
        service: &str,
        kind: &str,
        event_type: String,
        partition_key: String,
        fields: BTreeMap<String, String>,
    ) -> u64 {
        let timestamp_ns = self.start.elapsed().as_nanos() as u64;
        let mut inner = self.lock();
        let seq = inner.push(
            timestamp_ns,
            service,
            kind,
            Some(event_type),
            Some(partition_key),
            fields,
        );
        if let Some(tap) = &self.tap {
            // Under the lock, so the stream's order is the log's.
            tap.push(inner.events[seq as usize - 1].event(seq));
        }
        drop(inner);
        if let Some(tap) = &self.tap {
            tap.wait_for_space();
        }
        seq
    }

    /// Appends events of `service` (each a kind, an event type if not the kind, and
    /// fields) in order, one after the other, under one lock and one timestamp. Their
    /// partition key is the service.
    pub fn record_all<'a>(
        &self,
        service: &str,
        events: impl IntoIterator<Item = (&'a str, Option<String>, BTreeMap<String, String>)>,
    ) {
        let timestamp_ns = self.start.elapsed().as_nanos() as u64;
        let mut inner = self.lock();
        for (kind, event_type, fields) in events {
            let seq = inner.push(timestamp_ns, service, kind, event_type, None, fields);
            if let Some(tap) = &self.tap {
                tap.push(inner.events[seq as usize - 1].event(seq));
            }
        }
        drop(inner);
        if let Some(tap) = &self.tap {
            tap.wait_for_space();
        }
    }

    /// Merges `from`'s clock into `into`'s (entry-wise maximum): a message from `from`
    /// reached `into`.
    pub fn merge(&self, into: &str, from: &str) {
        let mut inner = self.lock();
        let Some(source) = inner.clocks.get(from) else {
            return;
        };
        let (own, others, name) = (source.own, source.others.clone(), source.name.clone());
        let target = inner.clock(into);
        let own_entry = (own > 0).then_some((&name, own));
        for (k, v) in others.iter().map(|(k, v)| (k, *v)).chain(own_entry) {
            if *k == *into {
                target.own = target.own.max(v);
            } else if target.others.get(k).is_none_or(|e| *e < v) {
                Arc::make_mut(&mut target.others).insert(k.clone(), v);
            }
        }
    }

    pub fn events(&self) -> Vec<Event> {
        let inner = self.lock();
        inner
            .events
            .iter()
            .zip(1..)
            .map(|(e, seq)| e.event(seq))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_tick_and_merge() {
        let log = EventLog::default();
        log.record(
            "db",
            "syscall",
            "syscall.write".into(),
            String::new(),
            BTreeMap::new(),
        );
        log.record(
            DRIVER,
            "step",
            "step.send".into(),
            String::new(),
            BTreeMap::new(),
        );
        log.merge("db", DRIVER);
        log.record(
            "db",
            "syscall",
            "syscall.fsync".into(),
            String::new(),
            BTreeMap::new(),
        );
        log.merge(DRIVER, "db");
        log.record(
            DRIVER,
            "step",
            "step.reply".into(),
            String::new(),
            BTreeMap::new(),
        );
        let e = log.events();
        assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(e[0].vector_clock, BTreeMap::from([("db".into(), 1)]));
        assert_eq!(
            e[2].vector_clock,
            BTreeMap::from([("db".into(), 2), ("test".into(), 1)])
        );
        assert_eq!(
            e[3].vector_clock,
            BTreeMap::from([("db".into(), 2), ("test".into(), 2)])
        );
    }

    /// The clocks as the log kept them before: a whole map per service, cloned into
    /// every event.
    #[derive(Default)]
    struct Model(BTreeMap<String, BTreeMap<String, u64>>);
    impl Model {
        fn record(&mut self, service: &str) -> BTreeMap<String, u64> {
            let clock = self.0.entry(service.to_string()).or_default();
            *clock.entry(service.to_string()).or_default() += 1;
            clock.clone()
        }
        fn merge(&mut self, into: &str, from: &str) {
            let source = self.0.get(from).cloned().unwrap_or_default();
            let target = self.0.entry(into.to_string()).or_default();
            for (k, v) in source {
                let e = target.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn events_carry_the_clock_their_service_had(
            ops in proptest::collection::vec((0usize..3, 0usize..3, 0u8..3), 0..80)
        ) {
            const NAMES: [&str; 3] = ["db", DRIVER, "api"];
            let log = EventLog::default();
            let mut model = Model::default();
            let mut want = Vec::new();
            for (a, b, op) in ops {
                let (a, b) = (NAMES[a], NAMES[b]);
                match op {
                    0 => {
                        log.record(a, "syscall", "syscall.write".into(), String::new(),
                            BTreeMap::from([("n".to_string(), want.len().to_string())]));
                        want.push((a, "syscall", "syscall.write", "", model.record(a)));
                    }
                    1 => {
                        log.record_all(a, [
                            ("stdout", None, BTreeMap::from([("n".to_string(), want.len().to_string())])),
                            ("stdout", Some("stdout.dropped".to_string()), BTreeMap::from([("n".to_string(), (want.len() + 1).to_string())])),
                        ]);
                        want.push((a, "stdout", "stdout", a, model.record(a)));
                        want.push((a, "stdout", "stdout.dropped", a, model.record(a)));
                    }
                    _ => {
                        log.merge(a, b);
                        model.merge(a, b);
                    }
                }
            }
            let got = log.events();
            proptest::prop_assert_eq!(got.len(), want.len());
            for (i, (e, (service, kind, event_type, key, clock))) in got.iter().zip(want).enumerate() {
                proptest::prop_assert_eq!(e.seq, i as u64 + 1);
                proptest::prop_assert_eq!(&e.service, service);
                proptest::prop_assert_eq!(&e.kind, kind);
                proptest::prop_assert_eq!(&e.event_type, event_type);
                proptest::prop_assert_eq!(&e.partition_key, key);
                proptest::prop_assert_eq!(&e.fields["n"], &i.to_string());
                proptest::prop_assert_eq!(&e.vector_clock, &clock);
            }
        }
    }
}
