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

/// Most syscalls a glob in a query's `syscall=` may stand for: each one is observed
/// on every service the query names, and a filter that notifies nearly every call
/// would slow the services down more than any test wants.
pub const MAX_QUERY_SYSCALLS: usize = 64;

/// The kernel syscalls a query's `syscall=` filter stands for: a syscall, alias or
/// family (`write` is every write call, as in `fault()` and `trace()`), or a glob
/// over kernel names (`*sync*`).
pub fn query_syscalls(pattern: &str) -> anyhow::Result<Vec<String>> {
    let arch = Arch::native();
    if !pattern.contains('*') {
        return syscalls::expand(pattern, arch)
            .map(|v| v.into_iter().map(|s| s.name).collect())
            .ok_or_else(|| {
                anyhow!(
                    "syscall={pattern:?}: unknown syscall on {} (a query's syscall= names a syscall, a family such as write, or a glob such as *sync)",
                    arch.name()
                )
            });
    }
    let names: Vec<String> = syscalls::all(arch)
        .into_iter()
        .map(|s| s.name)
        .filter(|n| crate::runtime::glob_match(pattern, n))
        .collect();
    if names.is_empty() {
        return Err(anyhow!(
            "syscall={pattern:?} matches no syscall on {}",
            arch.name()
        ));
    }
    if names.len() > MAX_QUERY_SYSCALLS {
        return Err(anyhow!(
            "syscall={pattern:?} matches {} syscalls (at most {MAX_QUERY_SYSCALLS}): every one would be observed; name the syscalls the query is about",
            names.len()
        ));
    }
    Ok(names)
}

/// Whether a call of kernel syscall `name` matches a query's `syscall=` filter.
pub fn syscall_matches(pattern: &str, name: &str) -> bool {
    if pattern.contains('*') {
        return crate::runtime::glob_match(pattern, name);
    }
    pattern == name
        || syscalls::expand(pattern, Arch::native())
            .is_some_and(|v| v.iter().any(|s| s.name == name))
}
