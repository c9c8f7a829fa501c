//! Logging of syscall decisions off the supervisor's thread.
//!
//! The supervisor pushes each decision onto a queue without waking anyone (a wake-up
//! is a futex syscall, about as dear as the rest of a deny); a logger thread drains
//! the queue every few milliseconds and writes the batch with one call. The queue is
//! bounded: a target that outpaces a logger that is writing waits for room, so no
//! line is lost. A logger that has not drained for [`STALLED`] is stuck (its stderr is
//! a pipe nobody reads): the target is then never made to wait, its decisions are
//! dropped and counted, and the count is logged once the logger can write again.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use faultbox_executor::{EventSink, SyscallEvent};

use crate::logging;

const CAPACITY: usize = 16 * 1024;
const TICK: Duration = Duration::from_millis(5);
/// How long the logger may go without draining before the target stops waiting on it.
pub const STALLED: Duration = Duration::from_millis(100);

struct Queue {
    events: VecDeque<SyscallEvent>,
    closed: bool,
    /// When the logger last took a batch.
    drained: Instant,
    /// Decisions dropped since the last report, while the logger was stuck.
    dropped: u64,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            events: VecDeque::new(),
            closed: false,
            drained: Instant::now(),
            dropped: 0,
        }
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the logger has made room, or when the sink closes.
    changed: Condvar,
}

/// The sink given to the supervisor. Dropping it lets the logger finish.
pub struct DecisionLog {
    shared: Arc<Shared>,
    debug: bool,
}

impl EventSink for DecisionLog {
    fn syscall(&self, ev: SyscallEvent) {
        if !(self.debug || ev.decision.is_fault()) {
            return;
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.events.len() >= CAPACITY {
            let stuck_for = q.drained.elapsed();
            if stuck_for >= STALLED {
                q.dropped += 1;
                return;
            }
            q = self
                .shared
                .changed
                .wait_timeout(q, STALLED - stuck_for)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.events.push_back(ev);
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.shared.changed.notify_all();
    }
}

/// Starts the logger; join the handle after the sink is dropped to flush every line.
pub fn start(debug: bool) -> std::io::Result<(Arc<DecisionLog>, std::thread::JoinHandle<()>)> {
    let shared = Arc::new(Shared::default());
    let drain = shared.clone();
    let thread = std::thread::Builder::new()
        .name("faultbox-logger".into())
        .spawn(move || loop {
            let (batch, closed, dropped) = {
                let q = drain.queue.lock().unwrap_or_else(|p| p.into_inner());
                let (mut q, _) = drain
                    .changed
                    .wait_timeout_while(q, TICK, |q| !q.closed)
                    .unwrap_or_else(|p| p.into_inner());
                q.drained = Instant::now();
                (
                    std::mem::take(&mut q.events),
                    q.closed,
                    std::mem::take(&mut q.dropped),
                )
            };
            drain.changed.notify_all();
            logging::batched(|| {
                if dropped > 0 {
                    tracing::warn!(
                        target: "engine",
                        dropped,
                        "decisions not logged: stderr was not being read, and the target is never made to wait for it"
                    );
                }
                batch.iter().for_each(log_decision)
            });
            if closed {
                break;
            }
        })?;
    Ok((Arc::new(DecisionLog { shared, debug }), thread))
}

/// Faults at INFO, every other intercepted call at DEBUG.
fn log_decision(ev: &SyscallEvent) {
    let path = ev.path.as_deref();
    let label = ev.label.as_deref();
    if ev.decision.is_fault() {
        tracing::info!(
            target: "engine",
            name = &*ev.name,
            pid = ev.pid,
            decision = %ev.decision,
            path,
            label,
            "syscall intercepted"
        );
    } else {
        tracing::debug!(
            target: "engine",
            name = &*ev.name,
            pid = ev.pid,
            decision = %ev.decision,
            path,
            "syscall intercepted"
        );
    }
}
