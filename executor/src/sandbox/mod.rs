//! Isolation and launch: a test's network namespace ([`netns`]), starting a target in
//! its own user, PID and mount namespaces under the shim ([`launch`], [`session`]),
//! taking the listener from a shim started by someone else, such as a container
//! runtime ([`handoff`]), finding a service's binary ([`program`]), and tests'
//! scratch directories ([`scratch`]).

pub mod handoff;
pub mod launch;
pub mod netns;
pub mod program;
pub mod scratch;
pub mod session;
pub mod user;
