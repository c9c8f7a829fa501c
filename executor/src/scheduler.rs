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

use crate::supervisor::{HeldCall, Holder};

/// How the first batch of held calls is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// A permutation drawn from this seed.
    Seeded(u64),
    /// The n-th permutation in lexicographic order (exhaustive exploration).
    Nth(u64),
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

    /// Waits until no call has been held for `idle` (or `limit` passed) and returns
    /// the held calls' ids and descriptions, oldest first.
    pub fn quiesce(&self, idle: Duration, limit: Instant) -> Vec<(u64, String)> {
        self.quiesce_with_callers(idle, limit)
            .into_iter()
            .map(|(id, what, _)| (id, what))
            .collect()
    }

    /// Like [`Scheduler::quiesce`], with each call's (service, thread id): a stable key
    /// between runs, since a service's threads are created in the order its requests
    /// arrive.
    pub fn quiesce_with_callers(
        &self,
        idle: Duration,
        limit: Instant,
    ) -> Vec<(u64, String, (String, i32))> {
        let mut s = self.lock();
        loop {
            let quiet_since = s.last_change.map(|t| t.elapsed()).unwrap_or(idle);
            if quiet_since >= idle || Instant::now() >= limit {
                return s
                    .held
                    .iter()
                    .map(|(id, svc, c)| {
                        let path = c
                            .event
                            .path
                            .as_deref()
                            .map(|p| format!(" {p}"))
                            .unwrap_or_default();
                        (
                            *id,
                            format!("{svc} {}{path}", c.event.name),
                            (svc.clone(), c.event.pid),
                        )
                    })
                    .collect();
            }
            let wait = idle - quiet_since;
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until a call of thread `pid` is held again, or `max` passed: after its
    /// previous call was released, the thread's next step is part of the order.
    pub fn wait_for_caller(&self, pid: i32, max: Duration) {
        let deadline = Instant::now() + max;
        let mut s = self.lock();
        while !s.held.iter().any(|(_, _, c)| c.event.pid == pid) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
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
