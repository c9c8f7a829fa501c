//! The timer behind delay faults: a thread of its own blocked on a `timerfd`
//! (`CLOCK_MONOTONIC`, absolute deadlines) in front of a deadline-ordered heap.
//!
//! A delay must last as long as asked and not much longer. The async runtime's timer
//! counts in whole milliseconds and sleeps in `epoll_wait` with a millisecond timeout,
//! so a delay of 100 µs took ~1.2 ms and one of 1 ms ~2.1 ms. A `timerfd` expires at
//! the nanosecond asked (it has no timer slack), and a delayed syscall is answered by
//! this thread itself when its deadline passes: answering is one ioctl, so nothing
//! else needs to wake. Protocol delays in relays wait on [`sleep`], which completes a
//! oneshot from this thread.
//!
//! One timer serves the whole process ([`Timer::process`]): one thread whatever the
//! number of services, slots and runs (a thread per supervisor would be started and
//! joined for every service of every run), and relays, which belong to no supervisor,
//! use the same one. Firing an entry costs a microsecond or two, so one thread keeps
//! up with hundreds of thousands of deadlines a second.
//!
//! A binary heap is enough: pushing and popping cost O(log n) comparisons of two
//! integers, well under a microsecond with 100,000 pending deadlines (see
//! `executor/examples/timer_bench.rs`), against a budget of 50 µs per delay.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::engine::rules::Decision;

/// Why a timer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("creating the timerfd: {0}")]
    Create(#[source] std::io::Error),
    #[error("starting the timer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock the timerfd counts in.
pub fn now_ns() -> u64 {
    // SAFETY: timespec is plain old data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The deadline `d` from now, in [`now_ns`] terms (saturating: "never" stays never).
fn deadline(d: Duration) -> u64 {
    now_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What happens when a deadline passes.
enum Action {
    /// Let a delayed syscall proceed. The listener is held, not its number, so the
    /// descriptor cannot be closed and its number reused while the answer waits.
    /// Notification ids are never reused within a listener; a caller that died
    /// meanwhile makes the answer fail with `ENOENT`, which is ignored.
    Answer { listener: Arc<OwnedFd>, id: u64 },
    /// Complete a [`sleep`].
    Wake(tokio::sync::oneshot::Sender<()>),
}

struct Entry {
    at: u64,
    /// Arrival order, so that equal deadlines fire first come, first served.
    seq: u64,
    /// The [`Answers`] this belongs to (0 for sleeps).
    owner: u64,
    action: Action,
}

impl Entry {
    fn fire(self) {
        match self.action {
            Action::Answer { listener, id } => {
                crate::engine::supervisor::answer(listener.as_raw_fd(), id, &Decision::Allow)
            }
            Action::Wake(tx) => {
                let _ = tx.send(());
            }
        }
    }

    /// A sleep nobody waits for any more.
    fn abandoned(&self) -> bool {
        matches!(&self.action, Action::Wake(tx) if tx.is_closed())
    }
}

// Ordered so that the max-heap's top is the earliest deadline.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}

/// Heaps below this size are never swept for abandoned sleeps.
const MIN_SWEEP: usize = 1024;

struct State {
    heap: BinaryHeap<Entry>,
    /// The deadline the timerfd is set to (0: disarmed).
    armed: u64,
    seq: u64,
    stopped: bool,
    /// The heap size at which abandoned sleeps are swept out: a relay whose
    /// connection closes drops its sleep, and a long delay would otherwise keep the
    /// entry until its deadline.
    sweep_at: usize,
}

struct Shared {
    tfd: OwnedFd,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the timerfd to expire at `at` (absolute; a past deadline expires at once).
    /// Called with the state locked, so that `armed` always says what the fd holds.
    fn arm(&self, s: &mut State, at: u64) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as libc::time_t,
                tv_nsec: (at % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and itimerspec; the old value is not asked for.
        let rc = unsafe {
            libc::timerfd_settime(
                self.tfd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            tracing::error!(target: "engine", error = %std::io::Error::last_os_error(), "arming the delay timer");
        }
        s.armed = at;
    }

    /// Adds an entry; gives it back if the timer has stopped.
    fn push(&self, s: &mut State, at: u64, owner: u64, action: Action) -> Result<(), Action> {
        if s.stopped {
            return Err(action);
        }
        if s.heap.len() >= s.sweep_at {
            s.heap.retain(|e| !e.abandoned());
            s.sweep_at = (s.heap.len() * 2).max(MIN_SWEEP);
        }
        s.seq += 1;
        let seq = s.seq;
        s.heap.push(Entry {
            at,
            seq,
            owner,
            action,
        });
        // `at` is never 0 (the monotonic clock starts well after it).
        if s.armed == 0 || at < s.armed {
            self.arm(s, at);
        }
        Ok(())
    }

    fn run(&self) {
        let fd = self.tfd.as_raw_fd();
        let mut due = Vec::new();
        loop {
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 owned by this frame.
            let n = unsafe { libc::read(fd, (&raw mut expirations).cast(), 8) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::error!(target: "engine", error = %e, "waiting on the delay timer");
                // Entries are given back from now on (their callers fall back on
                // the runtime's timer); the pending ones are dropped with the timer.
                self.lock().stopped = true;
                return;
            }
            {
                let mut s = self.lock();
                if s.stopped {
                    return;
                }
                let now = now_ns();
                while s.heap.peek().is_some_and(|e| e.at <= now) {
                    due.extend(s.heap.pop());
                }
                match s.heap.peek().map(|e| e.at) {
                    Some(next) => self.arm(&mut s, next),
                    None => s.armed = 0,
                }
            }
            // Outside the lock, so that pushing never waits on an ioctl.
            for e in due.drain(..) {
                e.fire();
            }
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    /// Stops the thread and drops what is pending: calls waiting for an answer then
    /// fail once their listener closes (their supervisor has stopped), and sleeps
    /// finish on the runtime's timer instead.
    fn drop(&mut self) {
        {
            let mut s = self.shared.lock();
            s.stopped = true;
            // Expire at once, to wake the thread.
            self.shared.arm(&mut s, 1);
        }
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let pending = std::mem::take(&mut self.shared.lock().heap);
        drop(pending);
    }
}

/// A timer thread and its deadlines. Clones share the thread, which ends when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Timer {
    inner: Arc<Inner>,
}

impl Timer {
    /// Starts a timer thread of its own.
    pub fn new() -> Result<Timer, TimerError> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(TimerError::Create(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just created and nobody else owns it.
        let tfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            tfd,
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                armed: 0,
                seq: 0,
                stopped: false,
                sweep_at: MIN_SWEEP,
            }),
        });
        let run = shared.clone();
        let thread = std::thread::Builder::new()
            .name("faultbox-timer".into())
            .spawn(move || run.run())
            .map_err(TimerError::Thread)?;
        Ok(Timer {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The process's timer, started on first use; `None` if it could not start
    /// (callers then fall back on the runtime's timer). It lives as long as the
    /// process.
    pub fn process() -> Option<&'static Timer> {
        static PROCESS: OnceLock<Option<Timer>> = OnceLock::new();
        PROCESS
            .get_or_init(|| match Timer::new() {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(target: "engine", error = %e, "delays fall back on the runtime's timer");
                    None
                }
            })
            .as_ref()
    }

    /// A future that completes once `d` has passed, on this timer.
    pub fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        let start = tokio::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = &self.inner.shared;
        let pushed = shared.push(&mut shared.lock(), deadline(d), 0, Action::Wake(tx));
        async move {
            if pushed.is_ok() && rx.await.is_ok() {
                return;
            }
            // The timer stopped first: never end a delay early.
            tokio::time::sleep_until(start + d).await;
        }
    }

    /// The delayed answers of one listener, on this timer.
    pub fn answers(&self) -> Answers {
        static OWNERS: AtomicU64 = AtomicU64::new(1);
        Answers {
            timer: self.clone(),
            owner: OWNERS.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
        }
    }

    /// How many deadlines are pending.
    pub fn pending(&self) -> usize {
        self.inner.shared.lock().heap.len()
    }
}

/// Sleeps for `d` on the process's timer (on the runtime's if it could not start).
pub async fn sleep(d: Duration) {
    match Timer::process() {
        Some(t) => t.sleep(d).await,
        None => tokio::time::sleep(d).await,
    }
}

/// The delayed answers of one supervisor's listener. Closing it (its supervisor
/// stops) drops those still pending and refuses new ones, so that nothing outlives
/// the supervisor: not the listener, not an answer.
pub struct Answers {
    timer: Timer,
    owner: u64,
    closed: AtomicBool,
}

/// Why an answer was not scheduled.
#[derive(Debug, PartialEq, Eq)]
pub enum NotScheduled {
    /// [`Answers::close`] came first: the call is not answered at all.
    Closed,
    /// The timer has stopped: the caller answers some other way.
    Stopped,
}

impl Answers {
    /// Lets notification `id` of `listener` proceed once `d` has passed.
    pub fn continue_after(
        &self,
        d: Duration,
        listener: &Arc<OwnedFd>,
        id: u64,
    ) -> Result<(), NotScheduled> {
        let shared = &self.timer.inner.shared;
        let at = deadline(d);
        // Checked under the timer's lock, which close() also takes: an answer is
        // either refused or in the heap when close() sweeps it.
        let mut s = shared.lock();
        if self.closed.load(Ordering::SeqCst) {
            return Err(NotScheduled::Closed);
        }
        let action = Action::Answer {
            listener: listener.clone(),
            id,
        };
        shared
            .push(&mut s, at, self.owner, action)
            .map_err(|_| NotScheduled::Stopped)
    }

    /// Drops the pending answers and refuses new ones.
    pub fn close(&self) {
        let removed = {
            let mut s = self.timer.inner.shared.lock();
            self.closed.store(true, Ordering::SeqCst);
            let owner = self.owner;
            let (gone, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut s.heap)
                .into_iter()
                .partition(|e| e.owner == owner);
            s.heap = BinaryHeap::from(kept);
            gone
        };
        // Dropped outside the lock: the last reference to a listener closes it.
        drop(removed);
    }

    /// How many answers of this listener are pending.
    pub fn pending(&self) -> usize {
        let owner = self.owner;
        self.timer
            .inner
            .shared
            .lock()
            .heap
            .iter()
            .filter(|e| e.owner == owner)
            .count()
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::RawFd;
    use std::sync::mpsc;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Completion order and lateness of sleeps of `delays`, all started at once.
    fn sleep_all(timer: &Timer, delays: &[Duration]) -> (Vec<usize>, Vec<(u64, u64)>) {
        let order = Arc::new(Mutex::new(Vec::new()));
        let times = runtime().block_on(async {
            let tasks: Vec<_> = delays
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    let (t, order) = (timer.clone(), order.clone());
                    let at = deadline(d);
                    tokio::spawn(async move {
                        t.sleep(d).await;
                        let woke = now_ns();
                        order.lock().unwrap().push(i);
                        (at, woke)
                    })
                })
                .collect();
            let mut times = Vec::new();
            for t in tasks {
                times.push(t.await.unwrap());
            }
            times
        });
        let order = order.lock().unwrap().clone();
        (order, times)
    }

    #[test]
    fn equal_deadlines_fire_in_arrival_order() {
        let mut heap = BinaryHeap::new();
        for (at, seq) in [(30, 1), (10, 2), (20, 3), (10, 4), (10, 5), (20, 6)] {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            heap.push(Entry {
                at,
                seq,
                owner: 0,
                action: Action::Wake(tx),
            });
        }
        let popped: Vec<(u64, u64)> = std::iter::from_fn(|| heap.pop())
            .map(|e| (e.at, e.seq))
            .collect();
        assert_eq!(
            popped,
            [(10, 2), (10, 4), (10, 5), (20, 3), (20, 6), (30, 1)]
        );
    }

    #[test]
    fn sleeps_end_in_deadline_order_and_never_early() {
        let timer = Timer::new().unwrap();
        // Given out of order, 2 ms apart.
        let ms = [9u64, 1, 5, 3, 7, 2, 8, 4, 6];
        let delays: Vec<Duration> = ms.iter().map(|&m| Duration::from_millis(2 * m)).collect();
        let (order, times) = sleep_all(&timer, &delays);
        let mut by_deadline: Vec<usize> = (0..ms.len()).collect();
        by_deadline.sort_by_key(|&i| ms[i]);
        assert_eq!(order, by_deadline);
        for (at, woke) in times {
            assert!(woke >= at, "woke {} ns early", at - woke);
        }
        assert_eq!(timer.pending(), 0);
    }

    #[test]
    fn many_deadlines_all_fire_none_early() {
        let timer = Timer::new().unwrap();
        // 20,000 deadlines over 0..50 ms, many of them equal.
        let delays: Vec<Duration> = (0..20_000u64)
            .map(|i| Duration::from_micros((i * 7919) % 50_000))
            .collect();
        let (order, times) = sleep_all(&timer, &delays);
        assert_eq!(order.len(), delays.len());
        for (at, woke) in times {
            assert!(woke >= at, "woke {} ns early", at - woke);
        }
        assert_eq!(timer.pending(), 0);
    }

    #[test]
    fn a_dropped_sleep_is_swept_out() {
        let timer = Timer::new().unwrap();
        runtime().block_on(async {
            for _ in 0..3 * MIN_SWEEP {
                // Started and abandoned at once, as by a relay whose connection closed.
                drop(timer.sleep(Duration::from_secs(3600)));
            }
        });
        assert!(
            timer.pending() <= MIN_SWEEP,
            "{} abandoned hour-long sleeps kept",
            timer.pending()
        );
    }

    #[test]
    fn a_sleep_outlives_its_timer_without_ending_early() {
        let timer = Timer::new().unwrap();
        let start = std::time::Instant::now();
        runtime().block_on(async {
            let s = timer.sleep(Duration::from_millis(30));
            drop(timer);
            s.await;
        });
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    /// A thread under a real seccomp filter that notifies `getppid`: each call it makes
    /// waits for the listener's answer. Dropping the listener fails what is pending
    /// (ENOSYS), so the thread always ends.
    struct Target {
        listener: Arc<OwnedFd>,
        calls: mpsc::Sender<()>,
        done: mpsc::Receiver<(i64, Duration)>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Target {
        fn start() -> Target {
            let nr =
                faultbox_shim::syscalls::number("getppid", faultbox_shim::syscalls::Arch::native())
                    .unwrap();
            let prog = faultbox_shim::filter::build(&[nr]).unwrap();
            let (fd_tx, fd_rx) = mpsc::channel::<RawFd>();
            let (calls, call_rx) = mpsc::channel::<()>();
            let (done_tx, done) = mpsc::channel();
            let thread = std::thread::spawn(move || {
                // The filter binds this thread only (and threads it would start).
                fd_tx
                    .send(faultbox_shim::filter::install(&prog).unwrap())
                    .unwrap();
                while call_rx.recv().is_ok() {
                    let start = std::time::Instant::now();
                    // SAFETY: getppid takes no arguments.
                    let rc = unsafe { libc::syscall(libc::SYS_getppid) };
                    let _ = done_tx.send((rc, start.elapsed()));
                }
            });
            let fd = fd_rx.recv().unwrap();
            // SAFETY: the listener was just created for us and nobody else owns it.
            let listener = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
            faultbox_shim::notify::set_sync_wakeup(fd).unwrap();
            Target {
                listener,
                calls,
                done,
                thread: Some(thread),
            }
        }

        /// Has the thread make one call, and returns its notification id.
        fn call(&self) -> u64 {
            self.calls.send(()).unwrap();
            let mut req = faultbox_shim::notify::empty();
            faultbox_shim::notify::recv(self.listener.as_raw_fd(), &mut req).unwrap();
            req.id
        }
    }

    impl Drop for Target {
        fn drop(&mut self) {
            // Closing the channel ends the thread's loop; a call still waiting gets
            // ENOSYS once the last reference to the listener is gone.
            let (tx, _) = mpsc::channel();
            drop(std::mem::replace(&mut self.calls, tx));
            let (_, rx) = mpsc::channel();
            drop(std::mem::replace(&mut self.done, rx));
            let listener = std::mem::replace(
                &mut self.listener,
                Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap())),
            );
            drop(listener);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn a_delayed_call_is_answered_by_the_timer_no_sooner_than_asked() {
        // Declared first, so dropped last, after the timer and what it holds.
        let target = Target::start();
        let timer = Timer::new().unwrap();
        let answers = timer.answers();
        for d in [100u64, 1_000, 10_000].map(Duration::from_micros) {
            let id = target.call();
            answers.continue_after(d, &target.listener, id).unwrap();
            let (rc, took) = target.done.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(rc > 0, "getppid continued: {rc}");
            assert!(took >= d, "delay {d:?} took {took:?}");
        }
        assert_eq!(answers.pending(), 0);
    }

    #[test]
    fn closing_drops_pending_answers_and_refuses_new_ones() {
        let target = Target::start();
        let timer = Timer::new().unwrap();
        let answers = timer.answers();
        let other = timer.answers();
        let id = target.call();
        answers
            .continue_after(Duration::from_millis(50), &target.listener, id)
            .unwrap();
        // Another listener's pending answer is not touched.
        let bystander = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        other
            .continue_after(Duration::from_secs(3600), &bystander, 1)
            .unwrap();
        assert_eq!(Arc::strong_count(&target.listener), 2);
        answers.close();
        assert_eq!(answers.pending(), 0);
        assert_eq!(other.pending(), 1);
        assert_eq!(
            Arc::strong_count(&target.listener),
            1,
            "the dropped answer released the listener"
        );
        assert_eq!(
            answers.continue_after(Duration::ZERO, &target.listener, id),
            Err(NotScheduled::Closed)
        );
        // Past the deadline, the call is still waiting: nothing answered it.
        assert!(target
            .done
            .recv_timeout(Duration::from_millis(150))
            .is_err());
        assert!(faultbox_shim::notify::id_valid(
            target.listener.as_raw_fd(),
            id
        ));
        drop(other);
        assert_eq!(Arc::strong_count(&bystander), 1);
    }

    #[test]
    fn a_stopped_timer_answers_nothing_more_and_its_thread_ends() {
        let target = Target::start();
        let timer = Timer::new().unwrap();
        let answers = timer.answers();
        let id = target.call();
        answers
            .continue_after(Duration::from_millis(50), &target.listener, id)
            .unwrap();
        // The thread holds the shared state for as long as it runs.
        let shared = Arc::downgrade(&timer.inner.shared);
        // The supervisor's handle goes first, then the timer's last handle.
        drop(answers);
        drop(timer);
        assert!(shared.upgrade().is_none(), "the timer thread ended");
        assert_eq!(Arc::strong_count(&target.listener), 1);
        assert!(target
            .done
            .recv_timeout(Duration::from_millis(150))
            .is_err());
        assert!(faultbox_shim::notify::id_valid(
            target.listener.as_raw_fd(),
            id
        ));
    }

    #[test]
    fn a_timer_stopped_with_answers_pending_drops_them() {
        let target = Target::start();
        let timer = Timer::new().unwrap();
        let answers = timer.answers();
        let id = target.call();
        answers
            .continue_after(Duration::from_millis(50), &target.listener, id)
            .unwrap();
        let shared = Arc::downgrade(&timer.inner.shared);
        // Answers keeps the timer alive: stop it by hand, as its last handle would.
        let inner = &timer.inner;
        {
            let mut s = inner.shared.lock();
            s.stopped = true;
            inner.shared.arm(&mut s, 1);
        }
        let t = inner.thread.lock().unwrap().take().unwrap();
        t.join().unwrap();
        assert_eq!(
            answers.continue_after(Duration::ZERO, &target.listener, id),
            Err(NotScheduled::Stopped)
        );
        drop(answers);
        drop(timer);
        assert!(shared.upgrade().is_none());
        assert_eq!(Arc::strong_count(&target.listener), 1);
        assert!(target
            .done
            .recv_timeout(Duration::from_millis(150))
            .is_err());
    }
}
