//! The per-test sandbox: a fresh network namespace with loopback up, entered by the
//! test's own thread. Services are launched into it and the test's steps run from it,
//! so fixed ports never collide between tests, with leftovers of earlier tests, or
//! with a second run on the same host. It disappears with its last user.

use std::os::fd::RawFd;

use crate::network::namespace::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating the test's network namespace: {0} (faultbox test needs root, or CAP_SYS_ADMIN, for per-test network namespaces)")]
    Unshare(std::io::Error),
    #[error("entering the test's network namespace: {0}")]
    Open(std::io::Error),
}

/// A network namespace the calling thread has moved into, until this value is
/// dropped (on that thread): the thread goes home then, so the namespace can serve
/// another test.
pub struct Sandbox {
    netns: NetNs,
    home: std::fs::File,
}

impl Sandbox {
    /// Moves the calling thread (only it) into a new network namespace.
    pub fn enter() -> Result<Sandbox, SandboxError> {
        let home = std::fs::File::open("/proc/thread-self/ns/net").map_err(SandboxError::Open)?;
        let netns = NetNs::create().map_err(SandboxError::Unshare)?;
        netns.enter().map_err(SandboxError::Open)?;
        Ok(Sandbox { netns, home })
    }

    /// Checks, on a throwaway thread, that sandboxes can be created here.
    pub fn probe() -> Result<(), SandboxError> {
        std::thread::spawn(|| Sandbox::enter().map(drop))
            .join()
            .unwrap_or_else(|_| {
                Err(SandboxError::Open(std::io::Error::other(
                    "probe thread panicked",
                )))
            })
    }

    /// The namespace, for launching services into it.
    pub fn netns(&self) -> RawFd {
        self.netns.raw_fd()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a namespace descriptor we hold; it moves only this
        // thread. Should it fail, the thread stays inside, and the pool sees it
        // there and does not hand the namespace out again.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
