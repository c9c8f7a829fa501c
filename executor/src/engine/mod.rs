//! Interception: the supervisor's loop over a target's seccomp notifications
//! ([`supervisor`]), the rule chain that decides each call ([`rules`]), reading the
//! target's arguments and file descriptors ([`procfs`]), virtual time ([`vclock`]),
//! the ordering of held calls inside `parallel()` ([`scheduler`]), and the timer that
//! ends delays, of syscalls and of relayed messages ([`timer`]).

pub mod procfs;
pub mod rules;
pub mod scheduler;
pub mod supervisor;
pub mod timer;
pub mod vclock;
