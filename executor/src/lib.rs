//! Everything Faultbox does on a host: launching services in their sandboxes, the
//! supervisor that answers their notified syscalls and the rules that decide each
//! call, running a test against them, and serving jobs to a fleet's coordinator.
//!
//! - [`container`]: container services: the shim as entrypoint, the hand-off over a
//!   socket, the container's namespace joined to the network, removal.
//! - [`engine`]: interception: the notification loop, the rule chain, reading the
//!   target's arguments, virtual time, `parallel()` ordering.
//! - [`sandbox`]: isolation and launch: namespaces, the shim and its filter, the
//!   service's binary, scratch directories.
//! - [`network`]: the network between a test's services: a namespace per service,
//!   relays per edge.
//! - [`world`]: one test: the `World` its body runs against, steps, the event log.
//! - [`fleet`]: jobs and executors: the actor, the wire, QUIC serving, identities,
//!   bundles, the work directory.

pub mod container;
pub mod engine;
pub mod fleet;
pub mod network;
pub mod sandbox;
pub mod sources;
pub mod world;

pub use engine::rules::{Decision, Engine};
pub use engine::supervisor::{EventSink, SyscallEvent};
pub use sandbox::launch::Exit;
pub use sandbox::session::{Outcome, Running, SessionConfig, SessionError};
