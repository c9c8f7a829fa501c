//! A job's off switch. Cancelling kills the job's services at once, so whatever its
//! body waits on fails fast and the job ends through its normal cleanup (services
//! reaped, scratch directory removed), reported as cancelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Cancel {
    state: Mutex<State>,
    /// Set with `cancelled`, for the test body's evaluator to poll without a lock.
    flag: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    cancelled: bool,
    /// Host pids of the job's services (each the init of its own PID namespace).
    pids: Vec<i32>,
}

impl Cancel {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels the job: its services are killed now, and any it starts later at once.
    pub fn cancel(&self) {
        let mut s = self.lock();
        s.cancelled = true;
        self.flag.store(true, Ordering::SeqCst);
        for &pid in &s.pids {
            kill(pid);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// A flag that turns true when the job is cancelled: a test body stops on it
    /// even when it is busy in pure Starlark, with no service to fail under it.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// A service of the job started.
    pub fn register(&self, pid: i32) {
        let mut s = self.lock();
        if s.cancelled {
            kill(pid);
        }
        s.pids.push(pid);
    }

    /// The job is stopping its services itself; their pids may be reused after this.
    pub fn forget(&self) {
        self.lock().pids.clear();
    }
}

fn kill(pid: i32) {
    // SAFETY: kill(2) on a pid this job started and has not reaped yet (`forget` is
    // called before the job reaps its services).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}
