//! Checks shared by the fault builtins.

use anyhow::anyhow;
use faultbox_shim::syscalls::{self, Arch};

/// An assertion that did not hold: reported as a test failure, not an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AssertionFailed(pub String);

/// Accepts a syscall name, alias or family the machine's architecture knows.
pub fn check_syscall(name: &str) -> anyhow::Result<()> {
    syscalls::expand(name, Arch::native())
        .map(|_| ())
        .ok_or_else(|| anyhow!("unknown syscall {name:?} on {}", Arch::native().name()))
}

/// A monitor's callback raised an assertion: the test fails as a monitor violation.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MonitorViolation(pub String);

/// A fault scenario ran past its `timeout=`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);
