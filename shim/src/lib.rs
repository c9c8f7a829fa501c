//! The lowest layer of Faultbox: syscall and errno tables, the fault-rule model, the
//! seccomp filter and its listener, and the protocol of the `faultbox-shim` binary
//! that puts a target into its namespaces and under the filter before exec.
//!
//! This crate is kept small because the shim binary is also copied into containers.

pub mod errno;
pub mod fdpass;
pub mod filter;
pub mod handoff;
pub mod net;
pub mod notify;
pub mod rule;
pub mod syscalls;
