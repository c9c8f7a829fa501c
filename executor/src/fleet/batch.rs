//! A batch of a job's events in the compact form they cross the fleet's wire in.
//! Events repeat the same few names (services, kinds, types, field and clock keys)
//! and move by small steps (sequence numbers, timestamps, vector clocks), so a batch
//! carries each name once and every number as the step from the one before: about
//! half the bytes of one MessagePack map per event, and a decoder that parses each
//! name once per batch instead of once per event. Batches are independent of each
//! other (a lost link or a rerun needs no shared state to be rebuilt).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use faultbox_spec::world::{Event, Name, SmallMap};

/// Columns of a batch; the i-th event is spread over the i-th entries.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Distinct names, in order of first use.
    names: Vec<String>,
    /// Per event: its sequence number minus the previous event's (the first's
    /// minus 0), wrapping.
    seq: Vec<i64>,
    /// Per event: its timestamp minus the previous event's, wrapping.
    timestamp: Vec<i64>,
    /// Per event, [`HEAD`] entries: the indices in `names` of its service, kind,
    /// event type and partition key, then how many fields and clock entries it has.
    heads: Vec<u32>,
    /// Every field's key, as an index in `names`, event after event.
    field_keys: Vec<u32>,
    /// Every field's value, one after the other, and each one's length in bytes.
    #[serde(with = "serde_bytes")]
    values: Vec<u8>,
    value_lens: Vec<u32>,
    /// Every clock entry's key (an index in `names`) and its value minus the value
    /// the same key had in the batch's previous entry for it (from 0), wrapping.
    clock_keys: Vec<u32>,
    clock_steps: Vec<i64>,
}

/// Entries of `heads` per event.
const HEAD: usize = 6;

/// A batch that does not describe events: a peer's bug, not a reason to panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("event batch: {0} out of range")]
    OutOfRange(&'static str),
    #[error("event batch: the columns disagree on the number of {0}")]
    Columns(&'static str),
    #[error("event batch: a field value is not UTF-8")]
    NotUtf8,
}

/// Interns names while a batch is encoded.
struct Names<'a> {
    index: HashMap<&'a str, u32>,
    names: Vec<String>,
}

impl<'a> Names<'a> {
    fn of(&mut self, name: &'a str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.index.insert(name, i);
        i
    }
}

impl EventBatch {
    /// The events of `events`, in order.
    pub fn encode(events: &[Event]) -> EventBatch {
        let mut names = Names {
            index: HashMap::new(),
            names: Vec::new(),
        };
        let fields: usize = events.iter().map(|e| e.fields.len()).sum();
        let clocks: usize = events.iter().map(|e| e.vector_clock.len()).sum();
        let bytes: usize = events
            .iter()
            .flat_map(|e| e.fields.values())
            .map(String::len)
            .sum();
        let mut b = EventBatch {
            names: Vec::new(),
            seq: Vec::with_capacity(events.len()),
            timestamp: Vec::with_capacity(events.len()),
            heads: Vec::with_capacity(events.len() * HEAD),
            field_keys: Vec::with_capacity(fields),
            values: Vec::with_capacity(bytes),
            value_lens: Vec::with_capacity(fields),
            clock_keys: Vec::with_capacity(clocks),
            clock_steps: Vec::with_capacity(clocks),
        };
        let (mut seq, mut ts) = (0u64, 0u64);
        // The last value of each clock key, by name index.
        let mut last: Vec<u64> = Vec::new();
        for e in events {
            b.seq.push(e.seq.wrapping_sub(seq) as i64);
            b.timestamp.push(e.timestamp_ns.wrapping_sub(ts) as i64);
            (seq, ts) = (e.seq, e.timestamp_ns);
            b.heads.extend([
                names.of(&e.service),
                names.of(&e.kind),
                names.of(&e.event_type),
                names.of(&e.partition_key),
                e.fields.len() as u32,
                e.vector_clock.len() as u32,
            ]);
            for (k, v) in &e.fields {
                b.field_keys.push(names.of(k));
                b.values.extend_from_slice(v.as_bytes());
                b.value_lens.push(v.len() as u32);
            }
            for (k, &v) in &e.vector_clock {
                let k = names.of(k);
                let slot = k as usize;
                if last.len() <= slot {
                    last.resize(slot + 1, 0);
                }
                b.clock_keys.push(k);
                b.clock_steps.push(v.wrapping_sub(last[slot]) as i64);
                last[slot] = v;
            }
        }
        b.names = names.names;
        b
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The events again, exactly as they were encoded.
    pub fn decode(&self) -> Result<Vec<Event>, BatchError> {
        let n = self.seq.len();
        if self.timestamp.len() != n || self.heads.len() != n.saturating_mul(HEAD) {
            return Err(BatchError::Columns("events"));
        }
        if self.value_lens.len() != self.field_keys.len() {
            return Err(BatchError::Columns("fields"));
        }
        if self.clock_steps.len() != self.clock_keys.len() {
            return Err(BatchError::Columns("clock entries"));
        }
        // Checked once for the whole batch; each value is then cut at lengths that
        // must fall on character boundaries.
        let values = std::str::from_utf8(&self.values).map_err(|_| BatchError::NotUtf8)?;
        // Each name once per batch; events share them.
        let names: Vec<Name> = self.names.iter().map(Name::from).collect();
        let name = |i: u32| -> Result<&Name, BatchError> {
            names
                .get(i as usize)
                .ok_or(BatchError::OutOfRange("a name index"))
        };
        let mut out = Vec::with_capacity(n);
        let (mut seq, mut ts) = (0u64, 0u64);
        let (mut field, mut at, mut clock) = (0usize, 0usize, 0usize);
        let mut last = vec![0u64; self.names.len()];
        for (i, head) in self.heads.chunks_exact(HEAD).enumerate() {
            seq = seq.wrapping_add(self.seq[i] as u64);
            ts = ts.wrapping_add(self.timestamp[i] as u64);
            let (nf, nc) = (head[4] as usize, head[5] as usize);
            let keys = self
                .field_keys
                .get(field..field.saturating_add(nf))
                .ok_or(BatchError::OutOfRange("a field count"))?;
            let lens = &self.value_lens[field..field + nf];
            field += nf;
            let mut fields = Vec::with_capacity(nf);
            for (&k, &len) in keys.iter().zip(lens) {
                let end = at.saturating_add(len as usize);
                let v = values
                    .get(at..end)
                    .ok_or(BatchError::OutOfRange("a field value's length"))?;
                at = end;
                fields.push((name(k)?.clone(), v.to_owned()));
            }
            let keys = self
                .clock_keys
                .get(clock..clock.saturating_add(nc))
                .ok_or(BatchError::OutOfRange("a clock count"))?;
            let steps = &self.clock_steps[clock..clock + nc];
            clock += nc;
            let mut vector_clock = Vec::with_capacity(nc);
            for (&k, &step) in keys.iter().zip(steps) {
                let prev = last
                    .get_mut(k as usize)
                    .ok_or(BatchError::OutOfRange("a name index"))?;
                *prev = prev.wrapping_add(step as u64);
                vector_clock.push((name(k)?.clone(), *prev));
            }
            out.push(Event {
                seq,
                timestamp_ns: ts,
                service: name(head[0])?.clone(),
                kind: name(head[1])?.clone(),
                event_type: name(head[2])?.clone(),
                partition_key: name(head[3])?.clone(),
                fields: SmallMap::from_vec(fields),
                vector_clock: SmallMap::from_vec(vector_clock),
            });
        }
        if field != self.field_keys.len() || clock != self.clock_keys.len() {
            return Err(BatchError::Columns("fields or clock entries"));
        }
        if at != values.len() {
            return Err(BatchError::Columns("field value bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(seq: u64, service: &str, fields: &[(&str, &str)], clock: &[(&str, u64)]) -> Event {
        Event {
            seq,
            timestamp_ns: seq * 1000 + 7,
            service: service.into(),
            kind: "syscall".into(),
            event_type: "syscall.write".into(),
            partition_key: service.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vector_clock: clock.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn events_come_back_as_they_went() {
        let events = vec![
            event(1, "db", &[("fd", "3"), ("path", "/tmp/é ü")], &[("db", 1)]),
            event(2, "api", &[], &[("api", 4), ("db", 1)]),
            event(9, "db", &[("fd", "")], &[("db", 2), ("test", 3)]),
        ];
        let b = EventBatch::encode(&events);
        assert_eq!(b.len(), 3);
        assert_eq!(b.decode().unwrap(), events);
        // Through MessagePack too, as on the wire.
        let bytes = rmp_serde::to_vec(&b).unwrap();
        let back: EventBatch = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.decode().unwrap(), events);
    }

    /// The event as it was before names were shared and maps became sorted vectors.
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Plain {
        seq: u64,
        timestamp_ns: u64,
        service: String,
        kind: String,
        event_type: String,
        partition_key: String,
        fields: std::collections::BTreeMap<String, String>,
        vector_clock: std::collections::BTreeMap<String, u64>,
    }

    /// Events serialize byte for byte as before, in JSON and MessagePack, and come
    /// back from what the old form wrote (older executors' reports, saved documents).
    #[test]
    fn the_compact_event_serializes_as_the_plain_one() {
        let e = event(
            3,
            "db",
            &[("path", "/tmp/\"é\"\n"), ("fd", "3"), ("a", "")],
            &[("test", 2), ("db", 5)],
        );
        let plain = Plain {
            seq: 3,
            timestamp_ns: 3007,
            service: "db".into(),
            kind: "syscall".into(),
            event_type: "syscall.write".into(),
            partition_key: "db".into(),
            fields: [("path", "/tmp/\"é\"\n"), ("fd", "3"), ("a", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vector_clock: [("test".to_string(), 2), ("db".to_string(), 5)].into(),
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
        assert_eq!(
            serde_json::to_string_pretty(&e).unwrap(),
            serde_json::to_string_pretty(&plain).unwrap()
        );
        let packed = rmp_serde::to_vec(&plain).unwrap();
        assert_eq!(rmp_serde::to_vec(&e).unwrap(), packed);
        assert_eq!(
            rmp_serde::to_vec_named(&e).unwrap(),
            rmp_serde::to_vec_named(&plain).unwrap()
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert_eq!(rmp_serde::from_slice::<Event>(&packed).unwrap(), e);
        assert!(e.fields == plain.fields && e.vector_clock == plain.vector_clock);
    }

    #[test]
    fn names_are_sent_once_and_the_form_is_smaller() {
        let events: Vec<Event> = (1..=256)
            .map(|i| {
                event(
                    i,
                    "inventory",
                    &[("fd", "5"), ("size", "64"), ("decision", "allow")],
                    &[("inventory", i), ("test", i / 3)],
                )
            })
            .collect();
        let b = EventBatch::encode(&events);
        assert_eq!(b.names.iter().filter(|n| *n == "inventory").count(), 1);
        let compact = rmp_serde::to_vec(&b).unwrap().len();
        let plain = rmp_serde::to_vec(&events).unwrap().len();
        assert!(compact * 2 < plain, "{compact} bytes against {plain}");
    }

    #[test]
    fn inconsistent_columns_are_errors() {
        let events = vec![event(1, "db", &[("fd", "3")], &[("db", 1)])];
        let good = EventBatch::encode(&events);
        let mut b = good.clone();
        b.heads[0] = 99;
        assert_eq!(b.decode(), Err(BatchError::OutOfRange("a name index")));
        let mut b = good.clone();
        b.heads[4] = 2;
        assert_eq!(b.decode(), Err(BatchError::OutOfRange("a field count")));
        let mut b = good.clone();
        b.value_lens[0] = 9;
        assert!(b.decode().is_err());
        let mut b = good.clone();
        b.values = vec![0xff];
        b.value_lens[0] = 1;
        assert_eq!(b.decode(), Err(BatchError::NotUtf8));
        let mut b = good.clone();
        b.values = "é".into();
        b.value_lens[0] = 1;
        assert!(b.decode().is_err(), "a cut inside a character");
        let mut b = good;
        b.seq.push(1);
        assert_eq!(b.decode(), Err(BatchError::Columns("events")));
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let name = "[a-c]{0,3}";
        (
            any::<u64>(),
            any::<u64>(),
            (name, name, name, name),
            proptest::collection::btree_map(name, ".{0,6}", 0..4),
            proptest::collection::btree_map(name, any::<u64>(), 0..4),
        )
            .prop_map(|(seq, ts, (s, k, t, p), fields, clock)| Event {
                seq,
                timestamp_ns: ts,
                service: s.into(),
                kind: k.into(),
                event_type: t.into(),
                partition_key: p.into(),
                fields: fields.into(),
                vector_clock: clock.into(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Any events, in any order, come back unchanged.
        #[test]
        fn any_events_round_trip(events in proptest::collection::vec(arb_event(), 0..40)) {
            let b = EventBatch::encode(&events);
            let back: EventBatch = rmp_serde::from_slice(&rmp_serde::to_vec(&b).unwrap()).unwrap();
            prop_assert_eq!(back.decode().unwrap(), events);
        }

        /// Whatever a peer sends, decoding answers with events or an error.
        #[test]
        fn arbitrary_columns_never_panic(
            names in proptest::collection::vec("[a-b]{0,2}", 0..4),
            seq in proptest::collection::vec(any::<i64>(), 0..4),
            heads in proptest::collection::vec(0u32..6, 0..24),
            field_keys in proptest::collection::vec(0u32..5, 0..6),
            values in proptest::collection::vec(any::<u8>(), 0..12),
            value_lens in proptest::collection::vec(0u32..5, 0..6),
            clock_keys in proptest::collection::vec(0u32..5, 0..6),
        ) {
            let b = EventBatch {
                timestamp: seq.clone(),
                clock_steps: clock_keys.iter().map(|&k| k as i64).collect(),
                names, seq, heads, field_keys, values, value_lens, clock_keys,
            };
            let _ = b.decode();
        }
    }
}
