//! A memory bound for Starlark evaluation. A spec can ask for any amount of memory in
//! one expression (`[1] * 1000000000` is 8 GB), and Rust aborts the whole process when
//! an allocation fails, so the bound has to act before the memory is handed out.
//!
//! [`Bounded`] is the process's global allocator (the `faultbox` binary installs it).
//! A thread that evaluates Starlark opens a [`Scope`] with a limit; every byte it
//! allocates or frees is counted against it. Past the limit the thread is marked
//! over: the evaluator stops it at the next statement with a clear error. A single
//! request that would take it past [`hard_cap`] (twice the limit and a little more:
//! Starlark's heap grows in chunks as large as what it already holds, and the thread
//! needs room to stop cleanly) is never granted: the thread is parked for good and
//! its [`Signal`] tells whoever waits on it. A parked thread keeps what it had (at
//! most the hard cap) until the process exits. Calls out of Starlark into the host
//! (steps, the event log) run [`paused`]: what they allocate is the host's.
//!
//! Threads without a scope pay one thread-local read per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// How much Starlark evaluation (a spec's top level, or one test body) may allocate.
pub const DEFAULT_BUDGET: usize = 512 << 20;

/// The most a thread with `limit` ever holds: past the limit it is stopped, and it
/// may still need its heap's next chunk (as large as the heap) and room to unwind.
pub fn hard_cap(limit: usize) -> usize {
    limit.saturating_mul(2).saturating_add(64 << 20)
}

/// Wraps the system allocator with per-thread budgets.
pub struct Bounded;

#[derive(Clone, Copy)]
struct Budget {
    /// 0: no budget on this thread.
    limit: usize,
    used: usize,
    paused: bool,
    over: bool,
    /// The scope's signal; valid while `limit != 0` (the scope owns it).
    signal: *const Signal,
}

const NONE: Budget = Budget {
    limit: 0,
    used: 0,
    paused: false,
    over: false,
    signal: std::ptr::null(),
};

thread_local! {
    static BUDGET: Cell<Budget> = const { Cell::new(NONE) };
}

/// What a waiting thread learns about a budgeted one that was stopped for good.
#[derive(Default, Debug)]
pub struct Signal {
    parked: AtomicBool,
    /// The request that was refused, in bytes.
    refused: AtomicUsize,
}

impl Signal {
    /// The size of the request the thread was parked on, if it was.
    pub fn parked(&self) -> Option<usize> {
        self.parked
            .load(Ordering::SeqCst)
            .then(|| self.refused.load(Ordering::SeqCst))
    }
}

/// Whether `size` more bytes may be handed to this thread.
fn charge(size: usize) -> bool {
    BUDGET
        .try_with(|cell| {
            let mut b = cell.get();
            if b.limit == 0 || b.paused {
                return true;
            }
            let after = b.used.saturating_add(size);
            if after > b.limit {
                b.over = true;
                if after > hard_cap(b.limit) {
                    // SAFETY: `signal` points into the Arc the scope holds; the scope
                    // lives on this thread's stack, and this thread is about to park
                    // for good, so it is never dropped.
                    let signal = unsafe { &*b.signal };
                    signal.refused.store(size, Ordering::SeqCst);
                    signal.parked.store(true, Ordering::SeqCst);
                    cell.set(b);
                    return false;
                }
            }
            b.used = after;
            cell.set(b);
            true
        })
        .unwrap_or(true)
}

fn credit(size: usize) {
    let _ = BUDGET.try_with(|cell| {
        let mut b = cell.get();
        if b.limit != 0 && !b.paused {
            b.used = b.used.saturating_sub(size);
            cell.set(b);
        }
    });
}

/// Stops this thread without returning: it holds no lock of ours (budgets apply
/// only to Starlark evaluation, and host calls are paused), and nothing here
/// allocates.
fn park_forever() -> ! {
    loop {
        // SAFETY: pause(2) only waits for a signal.
        unsafe { libc::pause() };
    }
}

// SAFETY: every method forwards to `System` with the caller's layout; the budget
// only decides whether to forward, and a refused request never returns.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size()) {
            park_forever();
        }
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size()) {
            park_forever();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        credit(layout.size());
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            if !charge(new_size - layout.size()) {
                park_forever();
            }
        } else {
            credit(layout.size() - new_size);
        }
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A budget on the current thread, for as long as the scope lives.
pub struct Scope {
    signal: Arc<Signal>,
    /// Scopes belong to one thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Scope {
    /// Starts counting this thread's allocations against `limit` bytes; `signal` tells
    /// a watching thread if this one is parked.
    pub fn enter(limit: usize, signal: Arc<Signal>) -> Scope {
        let ptr = Arc::as_ptr(&signal);
        BUDGET.with(|cell| {
            cell.set(Budget {
                limit: limit.max(1),
                signal: ptr,
                ..NONE
            })
        });
        Scope {
            signal,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether this thread has gone past its budget (while its scope is open).
    pub fn over() -> bool {
        BUDGET.try_with(|c| c.get().over).unwrap_or(false)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = &self.signal;
        let _ = BUDGET.try_with(|c| c.set(NONE));
    }
}

/// Runs `f` with this thread's budget paused: host work done on behalf of a spec
/// (steps, copying the event log) is neither counted nor stopped.
pub fn paused<R>(f: impl FnOnce() -> R) -> R {
    let was = BUDGET.try_with(|c| {
        let b = c.get();
        c.set(Budget { paused: true, ..b });
        b.paused
    });
    struct Resume(Option<bool>);
    impl Drop for Resume {
        fn drop(&mut self) {
            if let Some(was) = self.0 {
                let _ = BUDGET.try_with(|c| {
                    let b = c.get();
                    c.set(Budget { paused: was, ..b });
                });
            }
        }
    }
    let _resume = Resume(was.ok());
    f()
}

/// Formats a byte count for messages: `1 GiB`, `64 MiB`, `8000000000 bytes`.
pub fn describe(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{b} bytes"),
    }
}
