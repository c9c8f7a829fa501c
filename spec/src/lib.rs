//! The Faultbox spec language: a Starlark dialect whose builtins declare services,
//! faults and assertions. This crate evaluates specs and builds the [`model::Spec`];
//! everything that touches processes or sockets goes through the executor.

pub mod analysis;
pub mod compose;
pub mod decode;
pub mod event;
pub mod faults;
pub mod limits;
pub mod loader;
pub mod model;
pub mod proxy;
pub mod run;
pub mod runtime;
pub mod sources;
pub mod steps;
pub mod values;
pub mod world;

pub use loader::{load, Loaded, SpecError};
pub use model::Spec;
pub use run::{run_test, TestOutcome, Verdict};
pub use world::World;
