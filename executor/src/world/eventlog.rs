//! The trace of one test: every intercepted syscall, lifecycle change and step, in
//! one sequence, each stamped with its service's vector clock.
//!
//! Each service ticks its own entry when it records an event. A step merges the test
//! driver's clock into the target's on send and the target's into the driver's on
//! receive, so causality between steps and the calls they provoke is visible.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use faultbox_spec::world::Event;

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
    events: Vec<Event>,
    clocks: BTreeMap<String, BTreeMap<String, u64>>,
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
        let clock = inner.clocks.entry(service.to_string()).or_default();
        *clock.entry(service.to_string()).or_default() += 1;
        let vector_clock = clock.clone();
        let seq = inner.events.len() as u64 + 1;
        let event = Event {
            seq,
            timestamp_ns,
            service: service.to_string(),
            kind: kind.to_string(),
            event_type,
            partition_key,
            fields,
            vector_clock,
        };
        if let Some(tap) = &self.tap {
            // Under the lock, so the stream's order is the log's.
            tap.push(event.clone());
        }
        inner.events.push(event);
        drop(inner);
        if let Some(tap) = &self.tap {
            tap.wait_for_space();
        }
        seq
    }

    /// Merges `from`'s clock into `into`'s (entry-wise maximum): a message from `from`
    /// reached `into`.
    pub fn merge(&self, into: &str, from: &str) {
        let mut inner = self.lock();
        let source = inner.clocks.get(from).cloned().unwrap_or_default();
        let target = inner.clocks.entry(into.to_string()).or_default();
        for (k, v) in source {
            let e = target.entry(k).or_default();
            *e = (*e).max(v);
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
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
}
