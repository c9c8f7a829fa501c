//! Ordering concurrent work: while a test's `parallel()` runs, the decided calls of
//! its services (but those marked `nondet()`) are held instead of answered, and
//! released one at a time in an order chosen by the seed, or by the index of an
//! exhaustive exploration. A held call is never stranded: ending the parallel section,
//! the test, or the scheduler releases everything.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;

use crate::engine::supervisor::{HeldCall, Holder};

/// How the first batch of held calls is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Order {
    /// A permutation drawn from this seed.
    Seeded(u64),
    /// The n-th permutation in lexicographic order (exhaustive exploration).
    Nth(u64),
}

/// A held call as the ordering sees it.
#[derive(Clone, Debug)]
pub struct Held {
    pub id: u64,
    /// `service syscall path`, for messages.
    pub what: String,
    /// (service, thread id): a key that is stable between runs, since a service's
    /// threads are numbered in the order they are created.
    pub caller: (String, i32),
}

fn describe(service: &str, event: &crate::engine::supervisor::SyscallEvent) -> String {
    match &event.path {
        Some(p) => format!("{service} {} {p}", event.name),
        None => format!("{service} {}", event.name),
    }
}

#[derive(Default)]
struct State {
    active: bool,
    nondet: HashSet<String>,
    held: Vec<(u64, String, Box<HeldCall>)>,
    next: u64,
    last_change: Option<Instant>,
}

#[derive(Default)]
pub struct Scheduler {
    state: Mutex<State>,
    changed: Condvar,
}

struct ServiceHolder {
    service: String,
    scheduler: Arc<Scheduler>,
}

impl Holder for ServiceHolder {
    fn hold(&self, call: Box<HeldCall>) -> Result<(), Box<HeldCall>> {
        let mut s = self.scheduler.lock();
        if !s.active || s.nondet.contains(&self.service) {
            return Err(call);
        }
        s.next += 1;
        let id = s.next;
        s.held.push((id, self.service.clone(), call));
        s.last_change = Some(Instant::now());
        self.scheduler.changed.notify_all();
        Ok(())
    }

    fn holding(&self) -> bool {
        let s = self.scheduler.lock();
        s.active && !s.nondet.contains(&self.service)
    }
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The holder for one service's supervisor.
    pub fn holder(self: &Arc<Self>, service: &str) -> Arc<dyn Holder> {
        Arc::new(ServiceHolder {
            service: service.to_string(),
            scheduler: self.clone(),
        })
    }

    /// Starts holding calls.
    pub fn begin(&self) {
        let mut s = self.lock();
        s.active = true;
        s.last_change = Some(Instant::now());
    }

    /// Stops holding and releases everything held, in arrival order.
    pub fn end(&self) {
        let held = {
            let mut s = self.lock();
            s.active = false;
            std::mem::take(&mut s.held)
        };
        for (_, _, call) in held {
            call.release();
        }
    }

    /// Excludes services from ordering control for the rest of the test.
    pub fn nondet(&self, services: &[String]) {
        self.lock().nondet.extend(services.iter().cloned());
    }

    /// Waits until the services have settled, or `limit` passed, and returns what is
    /// held, oldest first. Settled means no call was held for `idle` and `busy()` says
    /// no thread of theirs is running; a thread that keeps running (a spinning runtime)
    /// delays this by at most `10 × idle`.
    pub fn settle(&self, idle: Duration, limit: Instant, busy: &dyn Fn() -> bool) -> Vec<Held> {
        let mut s = self.lock();
        loop {
            let quiet_since = s.last_change.map(|t| t.elapsed()).unwrap_or(idle);
            let now = Instant::now();
            if now >= limit || (quiet_since >= idle && (quiet_since >= idle * 10 || !busy())) {
                return s
                    .held
                    .iter()
                    .map(|(id, svc, c)| Held {
                        id: *id,
                        what: describe(svc, &c.event),
                        caller: (svc.clone(), c.event.pid),
                    })
                    .collect();
            }
            // Poll for running threads every millisecond once quiet.
            let wait = idle
                .saturating_sub(quiet_since)
                .max(Duration::from_millis(1));
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether `service` is excluded from ordering control.
    pub fn is_nondet(&self, service: &str) -> bool {
        self.lock().nondet.contains(service)
    }

    /// Releases the held call `id`.
    pub fn release(&self, id: u64) {
        let call = {
            let mut s = self.lock();
            let pos = s.held.iter().position(|(i, _, _)| *i == id);
            let call = pos.map(|p| s.held.remove(p).2);
            s.last_change = Some(Instant::now());
            call
        };
        if let Some(c) = call {
            c.release();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.end();
    }
}

/// The order in which to release `k` calls.
pub fn permutation(k: usize, order: Order) -> Vec<usize> {
    let mut items: Vec<usize> = (0..k).collect();
    match order {
        Order::Seeded(seed) => {
            items.shuffle(&mut Pcg64::seed_from_u64(seed ^ 0x005e_ed0f_0de5));
            items
        }
        Order::Nth(mut n) => {
            // The factorial number system: digit i picks among the remaining items.
            let mut out = Vec::with_capacity(k);
            for i in (1..=k).rev() {
                let f = factorial(i - 1);
                let pick = (n / f) as usize % items.len();
                n %= f.max(1);
                out.push(items.remove(pick));
            }
            out
        }
    }
}

/// `n!`, saturating.
pub fn factorial(n: usize) -> u64 {
    (1..=n as u64).fold(1u64, |a, b| a.saturating_mul(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permutation_exactly_once() {
        let all: std::collections::BTreeSet<Vec<usize>> = (0..factorial(4))
            .map(|n| permutation(4, Order::Nth(n)))
            .collect();
        assert_eq!(all.len(), 24);
        assert_eq!(permutation(3, Order::Nth(0)), [0, 1, 2]);
        assert_eq!(permutation(3, Order::Nth(5)), [2, 1, 0]);
        assert_eq!(
            permutation(5, Order::Seeded(7)),
            permutation(5, Order::Seeded(7))
        );
    }
}
