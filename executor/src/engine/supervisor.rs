//! The notification loop: receives every notified call of one target, decides it with
//! the [`Engine`], answers, and reports the decision to an [`EventSink`].
//!
//! It runs on its own thread, blocked in the receive ioctl, so that a deny or continue
//! costs one receive and one answer and never waits on the async runtime (a `poll`
//! before each receive would add ~0.75 µs to every call). A delay is handed to the
//! process's delay timer ([`crate::engine::timer`]), whose thread answers the call
//! when the deadline passes, so it holds up nothing else. A blocked
//! receive does not wake when the target dies, so [`SupervisorHandle::stop`] ends the
//! loop with a thread-directed signal once the target has been reaped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use faultbox_shim::filter::{HANDOFF_COOKIE, HANDOFF_SYSCALL};
use faultbox_shim::notify;
use faultbox_shim::syscalls::{self, Arch};

use crate::engine::procfs::Procfs;
use crate::engine::rules::{Decision, EngineSlot};
use crate::engine::timer::{Answers, NotScheduled, Timer};
use crate::engine::vclock::{self, VirtualClock};

/// One intercepted call and what was decided.
#[derive(Debug, Clone)]
pub struct SyscallEvent {
    /// Thread id of the caller, as seen from the supervisor.
    pub pid: i32,
    pub name: Arc<str>,
    pub path: Option<String>,
    pub decision: Decision,
    /// Index of the rule that fired.
    pub rule: Option<usize>,
    pub label: Option<Arc<str>>,
    /// For `connect`: the destination port, when it is an IP address.
    pub peer_port: Option<u16>,
}

/// Where decisions go: logs for `faultbox run`, the event log for tests.
pub trait EventSink: Send + Sync + 'static {
    fn syscall(&self, event: SyscallEvent);
}

/// A decided call whose answer is withheld, so that the order in which calls of
/// concurrent branches proceed can be chosen (see `parallel()`).
pub struct HeldCall {
    listener: Arc<OwnedFd>,
    id: u64,
    answers: Option<Arc<Answers>>,
    runtime: tokio::runtime::Handle,
    sink: Arc<dyn EventSink>,
    pub event: SyscallEvent,
}

impl HeldCall {
    /// Lets the call proceed with its decision, and reports it now.
    pub fn release(self) {
        // Reported before it proceeds, so that what it causes is logged after it.
        self.sink.syscall(self.event.clone());
        let fd = self.listener.as_raw_fd();
        match self.event.decision {
            // The delay starts now, when the call is let go.
            Decision::Delay(d) => continue_after(
                self.answers.as_deref(),
                &self.runtime,
                &self.listener,
                self.id,
                d,
            ),
            ref other => answer(fd, self.id, other),
        }
    }
}

/// Takes decided calls while their order is being controlled.
pub trait Holder: Send + Sync + 'static {
    /// Keeps `call` to release later, or gives it back to be answered now.
    fn hold(&self, call: Box<HeldCall>) -> Result<(), Box<HeldCall>>;
    /// Whether calls are being held now (a cheap check before costlier ones).
    fn holding(&self) -> bool;
}

/// The running loop of one target.
pub struct SupervisorHandle {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    answers: Option<Arc<Answers>>,
}

impl SupervisorHandle {
    /// Ends the loop and waits for it. Call once the target has been reaped.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        let pthread = thread.as_pthread_t();
        // A signal can land just before the thread enters the ioctl and be lost, so
        // keep knocking until it has left.
        while !thread.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            unsafe {
                libc::pthread_kill(pthread, wake_signal());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = thread.join();
        // Delayed calls still pending belong to a target that is gone: drop them with
        // the listener they hold.
        if let Some(a) = &self.answers {
            a.close();
        }
    }
}

impl Drop for SupervisorHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The signal that interrupts a blocked receive. Its handler does nothing; the point
/// is the `EINTR`.
fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 6
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn install_wake_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed struct plus a handler that does nothing,
        // which is async-signal-safe; no SA_RESTART, so the ioctl returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(wake_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Runs the loop for `listener` until [`SupervisorHandle::stop`].
pub fn spawn(
    listener: OwnedFd,
    engine: EngineSlot,
    runtime: tokio::runtime::Handle,
    sink: Arc<dyn EventSink>,
    shim_pid: i32,
    vclock: Option<Arc<VirtualClock>>,
    holder: Option<Arc<dyn Holder>>,
) -> std::io::Result<SupervisorHandle> {
    install_wake_handler();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Timer::process().map(|t| Arc::new(t.answers()));
    let mut sup = Supervisor {
        listener: Arc::new(listener),
        answers: answers.clone(),
        engine,
        runtime,
        sink,
        procfs: Procfs::default(),
        shim_pid,
        handed_off: false,
        shim_exec_seen: false,
        execve_nrs: ["execve", "execveat"]
            .iter()
            .filter_map(|n| syscalls::number(n, Arch::native()))
            .collect(),
        stop: stop.clone(),
        vclock,
        holder,
        time_nrs: crate::engine::vclock::SYSCALLS
            .iter()
            .map(|n| syscalls::number(n, Arch::native()).unwrap_or(-1))
            .collect(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("faultbox-supervisor-{shim_pid}"))
        .spawn(move || sup.run())?;
    Ok(SupervisorHandle {
        thread: Some(thread),
        stop,
        answers,
    })
}

struct Supervisor {
    listener: Arc<OwnedFd>,
    /// Delayed answers on the process's timer (`None` if it could not start).
    answers: Option<Arc<Answers>>,
    engine: EngineSlot,
    runtime: tokio::runtime::Handle,
    sink: Arc<dyn EventSink>,
    procfs: Procfs,
    shim_pid: i32,
    handed_off: bool,
    shim_exec_seen: bool,
    execve_nrs: Vec<i32>,
    stop: Arc<AtomicBool>,
    /// Set under `--virtual-time`.
    vclock: Option<Arc<VirtualClock>>,
    /// Set in tests: may withhold answers while `parallel()` orders calls.
    holder: Option<Arc<dyn Holder>>,
    /// nanosleep, clock_nanosleep, clock_gettime (-1 where the arch lacks one).
    time_nrs: Vec<i32>,
}

impl Supervisor {
    fn run(&mut self) {
        let fd = self.listener.as_raw_fd();
        let mut req = notify::empty();
        while !self.stop.load(Ordering::Relaxed) {
            match notify::recv(fd, &mut req) {
                Ok(()) => self.handle(&req),
                // The caller died between notification and receive: nothing to answer.
                // Once no process is left under the filter, every receive fails so
                // without blocking; the listener then reports hang-up and we are done.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if hung_up(fd) {
                        break;
                    }
                }
                // Woken by stop(), or a stray signal: the loop condition decides.
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(target: "engine", error = %e, "receiving a seccomp notification");
                    break;
                }
            }
        }
    }

    fn handle(&mut self, req: &notify::Notif) {
        let fd = self.listener.as_raw_fd();
        let nr = req.data.nr;
        let pid = req.pid as i32;
        if pid == self.shim_pid && !self.shim_exec_seen {
            // The shim's own calls before it becomes the target are never faulted:
            // the hand-off call, and the execve of the target itself.
            if !self.handed_off
                && i64::from(nr) == HANDOFF_SYSCALL
                && req.data.args[0] == HANDOFF_COOKIE
            {
                self.handed_off = true;
                answer(fd, req.id, &Decision::Allow);
                return;
            }
            if self.execve_nrs.contains(&nr) {
                self.shim_exec_seen = true;
                answer(fd, req.id, &Decision::Allow);
                return;
            }
        }
        if let Some(clock) = self.vclock.clone() {
            if let Some(i) = self.time_nrs.iter().position(|&t| t == nr) {
                self.virtual_time(&clock, i, pid, req);
                return;
            }
        }
        let engine = self.engine.load();
        let Some(chain) = engine.chain(nr) else {
            answer(fd, req.id, &Decision::Allow);
            return;
        };
        let resolved = self.procfs.resolve(pid, chain.path_arg, &req.data.args);
        let peer_port = match chain.path_arg {
            faultbox_shim::syscalls::PathArg::SockAddr { .. } => resolved
                .path
                .as_deref()
                .and_then(crate::engine::procfs::port_of),
            _ => None,
        };
        // The path came from memory of a thread that may have died meanwhile, its pid
        // reused: only act on it if the notification is still pending.
        if resolved.read_memory && !notify::id_valid(fd, req.id) {
            self.procfs.forget(pid);
            return;
        }
        let verdict = engine.decide(chain, resolved.path.as_deref());
        let event = SyscallEvent {
            pid,
            name: chain.name.clone(),
            path: resolved.path,
            decision: verdict.decision.clone(),
            rule: verdict.rule,
            label: verdict.label,
            peer_port,
        };
        // The C library's own calls (the loader, /proc, the name-service cache probe,
        // the netlink query behind getaddrinfo) are not part of the order parallel()
        // controls: which thread makes them depends on locks inside the library, not
        // on the service's logic, and holding one would hold every thread waiting on
        // that lock.
        let system = |e: &SyscallEvent| {
            e.path.as_deref().is_some_and(|p| {
                crate::engine::rules::is_system_path(p) || crate::engine::procfs::is_netlink(pid, p)
            })
        };
        let event = match &self.holder {
            Some(h) if h.holding() && !system(&event) => match h.hold(Box::new(HeldCall {
                listener: self.listener.clone(),
                id: req.id,
                answers: self.answers.clone(),
                runtime: self.runtime.clone(),
                sink: self.sink.clone(),
                event,
            })) {
                Ok(()) => return,
                Err(call) => call.event,
            },
            _ => event,
        };
        // Reported before the call proceeds: whatever the call lets the service do
        // next (answer a request, say) is then logged after it, and a test that
        // sees the effect finds the call in its events.
        self.sink.syscall(event);
        match verdict.decision {
            Decision::Delay(d) if self.vclock.is_some() => {
                if let Some(c) = &self.vclock {
                    c.advance(d);
                }
                answer(fd, req.id, &Decision::Allow);
            }
            Decision::Delay(d) => continue_after(
                self.answers.as_deref(),
                &self.runtime,
                &self.listener,
                req.id,
                d,
            ),
            ref other => answer(fd, req.id, other),
        }
    }
}

impl Supervisor {
    /// Answers `nanosleep` (which = 0), `clock_nanosleep` (1) or `clock_gettime` (2)
    /// from the virtual clock, and reports the call.
    fn virtual_time(&mut self, clock: &VirtualClock, which: usize, pid: i32, req: &notify::Notif) {
        let fd = self.listener.as_raw_fd();
        let args = req.data.args;
        let read_ts = |procfs: &mut Procfs, addr: u64| {
            procfs.read_array::<16>(pid, addr).map(|b| libc::timespec {
                tv_sec: i64::from_ne_bytes(b[..8].try_into().expect("8 bytes")) as libc::time_t,
                tv_nsec: i64::from_ne_bytes(b[8..].try_into().expect("8 bytes")) as libc::c_long,
            })
        };
        let (name, result) = match which {
            0 => (
                "nanosleep",
                read_ts(&mut self.procfs, args[0]).map(|t| vclock::duration(&t)),
            ),
            1 => {
                let wait = read_ts(&mut self.procfs, args[2]).map(|t| {
                    if args[1] as i32 & libc::TIMER_ABSTIME != 0 {
                        // The deadline was almost surely computed from the vDSO's real
                        // clock, so the wait it means is measured against real time.
                        let now = vclock::real_now(args[0] as libc::clockid_t);
                        vclock::duration(&t).saturating_sub(now.unwrap_or_default())
                    } else {
                        vclock::duration(&t)
                    }
                });
                ("clock_nanosleep", wait)
            }
            _ => {
                let now = clock.now(args[0] as libc::clockid_t);
                let written = now.is_some_and(|ts| {
                    let mut bytes = [0u8; 16];
                    bytes[..8].copy_from_slice(&ts.tv_sec.to_ne_bytes());
                    bytes[8..].copy_from_slice(&ts.tv_nsec.to_ne_bytes());
                    self.procfs.write(pid, args[1], &bytes)
                });
                (
                    "clock_gettime",
                    written.then_some(std::time::Duration::ZERO),
                )
            }
        };
        if !notify::id_valid(fd, req.id) {
            return;
        }
        self.sink.syscall(SyscallEvent {
            pid,
            name: Arc::from(name),
            path: None,
            decision: Decision::Allow,
            rule: None,
            label: Some(Arc::from("virtual time")),
            peer_port: None,
        });
        match result {
            Some(d) => {
                clock.advance(d);
                if let Err(e) = notify::respond_value(fd, req.id, 0) {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::warn!(target: "engine", error = %e, "answering a virtual-time call");
                    }
                }
            }
            // Bad pointers and the like: let the kernel give its own answer.
            None => answer(fd, req.id, &Decision::Allow),
        }
    }
}

/// Whether every process using the filter is gone.
fn hung_up(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc == 1 && pfd.revents & libc::POLLIN == 0 && pfd.revents & libc::POLLHUP != 0
}

/// Lets a delayed call proceed once `d` has passed: answered by the timer thread, or
/// by the runtime's (millisecond) timer if the delay timer could not start.
fn continue_after(
    answers: Option<&Answers>,
    runtime: &tokio::runtime::Handle,
    listener: &Arc<OwnedFd>,
    id: u64,
    d: Duration,
) {
    let scheduled = match answers {
        Some(a) => a.continue_after(d, listener, id),
        None => Err(NotScheduled::Stopped),
    };
    match scheduled {
        Ok(()) => {}
        // The supervisor has stopped: its target is gone, so is the call.
        Err(NotScheduled::Closed) => {}
        Err(NotScheduled::Stopped) => {
            let listener = listener.clone();
            runtime.spawn(async move {
                tokio::time::sleep(d).await;
                answer(listener.as_raw_fd(), id, &Decision::Allow);
            });
        }
    }
}

/// Answers a notification. A caller that is gone (`ENOENT`) needs no answer.
pub(crate) fn answer(fd: i32, id: u64, decision: &Decision) {
    let r = match decision {
        Decision::Deny(e) => notify::respond_error(fd, id, *e),
        _ => notify::respond_continue(fd, id),
    };
    if let Err(e) = r {
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(target: "engine", error = %e, "answering a seccomp notification");
        }
    }
}
