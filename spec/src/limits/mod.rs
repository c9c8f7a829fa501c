//! What bounds the evaluation of a spec, so that no spec can crash or hang Faultbox:
//! how deep it may nest ([`nesting`], checked before parsing and compiling), how much
//! memory its Starlark may use ([`memory`], enforced by the global allocator), and
//! when an evaluation must stop ([`guard`]: a time limit, a cancellation, the memory
//! budget), checked by the evaluator between instructions.

pub mod guard;
pub mod memory;
pub mod nesting;

pub use guard::{Guard, Limits, Stop};
