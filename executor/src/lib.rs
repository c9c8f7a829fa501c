//! Everything Faultbox does on a host: launching targets in namespaces under the
//! seccomp filter, the supervisor that answers their notified syscalls, and the rule
//! engine that decides each call.

pub mod actor;
pub mod bundle;
pub mod cancel;
pub mod engine;
pub mod eventlog;
pub mod identity;
pub mod job;
pub mod launch;
pub mod procfs;
pub mod program;
pub mod sandbox;
pub mod scheduler;
pub mod scratch;
pub mod server;
pub mod session;
pub mod steps;
pub mod stream;
pub mod supervisor;
pub mod testrun;
pub mod testworld;
pub mod vclock;
pub mod wire;
pub mod workdir;

pub use engine::{Decision, Engine};
pub use launch::Exit;
pub use session::{Outcome, Running, SessionConfig, SessionError};
pub use supervisor::{EventSink, SyscallEvent};
