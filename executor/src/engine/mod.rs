//! Interception: the supervisor's loop over a target's seccomp notifications
//! ([`supervisor`]), the rule chain that decides each call ([`rules`]), reading the
//! target's arguments and file descriptors ([`procfs`]), virtual time ([`vclock`]),
//! and the ordering of held calls inside `parallel()` ([`scheduler`]).

pub mod procfs;
pub mod rules;
pub mod scheduler;
pub mod supervisor;
pub mod vclock;
