//! Virtual time for a test (`--virtual-time`): delay faults advance a per-test clock
//! instead of sleeping, `nanosleep`/`clock_nanosleep` return at once after advancing
//! it, and `clock_gettime` made as a syscall reads it. Calls that go through the vDSO
//! (most `clock_gettime`s of glibc and Go) never reach the kernel and see real time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Real time plus an offset that only grows.
#[derive(Default, Debug)]
pub struct VirtualClock {
    offset_ns: AtomicU64,
}

impl VirtualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.offset_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX / 4)) as u64,
            Ordering::SeqCst,
        );
    }

    /// How far the clock is ahead of real time.
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }

    /// The virtual time of `clock` (a `clockid_t`), as a `timespec`.
    pub fn now(&self, clock: libc::clockid_t) -> Option<libc::timespec> {
        // SAFETY: timespec is plain old data.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: clock_gettime writes one timespec; an invalid clock id fails.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return None;
        }
        let total = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32) + self.offset();
        Some(libc::timespec {
            tv_sec: total.as_secs() as libc::time_t,
            tv_nsec: total.subsec_nanos() as libc::c_long,
        })
    }
}

/// The real time of `clock`, as a duration since its epoch.
pub fn real_now(clock: libc::clockid_t) -> Option<Duration> {
    // SAFETY: timespec is plain old data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec; an invalid clock id fails.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(duration(&ts))
}

/// A `timespec` as a duration (negative or malformed values count as zero).
pub fn duration(ts: &libc::timespec) -> Duration {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The syscalls virtual time answers.
pub const SYSCALLS: &[&str] = &["nanosleep", "clock_nanosleep", "clock_gettime"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_ahead_of_real_time() {
        let c = VirtualClock::default();
        let before = duration(&c.now(libc::CLOCK_MONOTONIC).unwrap());
        c.advance(Duration::from_secs(5));
        let after = duration(&c.now(libc::CLOCK_MONOTONIC).unwrap());
        assert!(after - before >= Duration::from_secs(5));
        assert!(after - before < Duration::from_secs(6));
    }
}
