//! A job's events on their way to the coordinator while the job runs. Events go out
//! in batches: a full batch at once, a partial one within [`FLUSH_EVERY`]. At most
//! [`WINDOW`] batches are unacknowledged at a time; when the coordinator falls behind,
//! events queue up to [`MAX_PENDING`], and past that the service threads that record
//! them wait, which slows the job's services down instead of growing memory without
//! bound. Threads of the async runtime never wait (the acknowledgements arrive on
//! that runtime); their events only queue.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use faultbox_spec::world::Event;

use crate::world::cancel::Cancel;

/// Events per batch.
pub const BATCH: usize = 256;
/// Batches sent and not yet acknowledged.
pub const WINDOW: usize = 4;
/// Queued events past which recording threads wait for an acknowledgement.
pub const MAX_PENDING: usize = BATCH * WINDOW;
/// How long a partial batch may wait before it is sent.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Sends one batch of a job's events; false when nobody is listening any more.
pub type BatchSender = Box<dyn Fn(Vec<Event>) -> bool + std::marker::Send + Sync>;

pub struct EventStream {
    send: BatchSender,
    cancel: Arc<Cancel>,
    state: Mutex<State>,
    space: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<Event>,
    in_flight: usize,
    sent: u64,
    /// The job ended, or the receiver is gone: nothing waits any more.
    closed: bool,
}

impl EventStream {
    pub fn new(send: BatchSender, cancel: Arc<Cancel>) -> Arc<EventStream> {
        Arc::new(EventStream {
            send,
            cancel,
            state: Mutex::new(State::default()),
            space: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`, sending a batch when one is full and the window allows.
    /// Never waits: call it in recording order, then [`EventStream::wait_for_space`].
    pub fn push(&self, event: Event) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.pending.push(event);
        if s.pending.len() >= BATCH && s.in_flight < WINDOW {
            self.flush(&mut s, false);
        }
    }

    /// Waits while too many events are queued, unless the job is cancelled, the
    /// stream closed, or this is a thread of the async runtime.
    pub fn wait_for_space(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        let mut s = self.lock();
        while s.pending.len() >= MAX_PENDING && !s.closed && !self.cancel.is_cancelled() {
            s = self
                .space
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The coordinator took a batch: send the next if there is one.
    pub fn ack(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if !s.pending.is_empty() && !s.closed {
            self.flush(&mut s, false);
        }
        self.space.notify_all();
    }

    /// Sends a partial batch that has waited long enough, if the window allows.
    pub fn tick(&self) {
        let mut s = self.lock();
        if !s.pending.is_empty() && s.in_flight < WINDOW && !s.closed {
            self.flush(&mut s, false);
        }
    }

    /// Ends the stream: sends what is queued, whatever the window, and returns how
    /// many events were sent in all.
    pub fn finish(&self) -> u64 {
        let mut s = self.lock();
        if !s.closed && !s.pending.is_empty() {
            self.flush(&mut s, true);
        }
        s.closed = true;
        self.space.notify_all();
        s.sent
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Sends the next batch, or with `all` everything queued.
    fn flush(&self, s: &mut State, all: bool) {
        let n = if all {
            s.pending.len()
        } else {
            s.pending.len().min(BATCH)
        };
        let batch: Vec<Event> = s.pending.drain(..n).collect();
        s.sent += batch.len() as u64;
        s.in_flight += 1;
        if !(self.send)(batch) {
            // Nobody takes them: stop queueing and never make anyone wait.
            s.closed = true;
            s.pending.clear();
        }
        self.space.notify_all();
    }

    /// Sends partial batches every [`FLUSH_EVERY`] until the stream is closed or
    /// dropped.
    pub fn tick_on(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let me = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut every = tokio::time::interval(FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match me.upgrade() {
                    Some(s) if !s.is_closed() => s.tick(),
                    _ => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn event(seq: u64) -> Event {
        Event {
            seq,
            timestamp_ns: 0,
            service: "db".into(),
            kind: "syscall".into(),
            event_type: "syscall.write".into(),
            partition_key: "".into(),
            fields: Default::default(),
            vector_clock: Default::default(),
        }
    }

    fn capture() -> (BatchSender, Arc<Mutex<Vec<Vec<u64>>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let send: BatchSender = Box::new(move |b: Vec<Event>| {
            g.lock().unwrap().push(b.iter().map(|e| e.seq).collect());
            true
        });
        (send, got)
    }

    #[test]
    fn batches_in_order_and_the_rest_on_finish() {
        let (send, got) = capture();
        let s = EventStream::new(send, Arc::default());
        for i in 1..=BATCH as u64 + 10 {
            s.push(event(i));
        }
        assert_eq!(got.lock().unwrap().len(), 1, "one full batch went at once");
        assert_eq!(s.finish(), BATCH as u64 + 10);
        let all: Vec<u64> = got.lock().unwrap().concat();
        assert_eq!(all, (1..=BATCH as u64 + 10).collect::<Vec<_>>());
    }

    #[test]
    fn a_partial_batch_goes_out_without_waiting_for_more() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let (send, got) = capture();
        let s = EventStream::new(send, Arc::default());
        s.tick_on(rt.handle());
        s.push(event(1));
        let deadline = std::time::Instant::now() + 40 * FLUSH_EVERY;
        while got.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never sent");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*got.lock().unwrap(), vec![vec![1]]);
        assert_eq!(s.finish(), 1);
    }

    #[test]
    fn a_slow_receiver_holds_the_recorder_back_until_it_acknowledges() {
        let (send, got) = capture();
        let s = EventStream::new(send, Arc::default());
        let blocked = Arc::new(AtomicBool::new(true));
        let (s2, b2) = (s.clone(), blocked.clone());
        let total = MAX_PENDING + WINDOW * BATCH + 1;
        let recorder = std::thread::spawn(move || {
            for i in 1..=total as u64 {
                s2.push(event(i));
                s2.wait_for_space();
            }
            b2.store(false, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(blocked.load(Ordering::SeqCst), "the recorder must wait");
        assert_eq!(got.lock().unwrap().len(), WINDOW, "no more than the window");
        // Acknowledging lets it go on, one batch at a time.
        for _ in 0..2 * WINDOW {
            s.ack();
        }
        recorder.join().unwrap();
        assert!(!blocked.load(Ordering::SeqCst));
        s.finish();
        let all: Vec<u64> = got.lock().unwrap().concat();
        assert_eq!(all, (1..=total as u64).collect::<Vec<_>>());
    }

    #[test]
    fn cancelling_frees_a_waiting_recorder() {
        let (send, _got) = capture();
        let cancel: Arc<Cancel> = Arc::default();
        let s = EventStream::new(send, cancel.clone());
        let s2 = s.clone();
        let recorder = std::thread::spawn(move || {
            for i in 1..=(MAX_PENDING + WINDOW * BATCH + 1) as u64 {
                s2.push(event(i));
                s2.wait_for_space();
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!recorder.is_finished());
        cancel.cancel();
        recorder.join().unwrap();
    }

    #[test]
    fn a_gone_receiver_never_blocks() {
        let s = EventStream::new(Box::new(|_| false), Arc::default());
        for i in 1..=(3 * MAX_PENDING) as u64 {
            s.push(event(i));
            s.wait_for_space();
        }
        assert!(s.is_closed());
    }
}
