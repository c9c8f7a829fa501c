//! Which process a container belongs to, and the sweep of dead processes' leftovers.
//!
//! Every container carries `faultbox.run` (the job it serves) and `faultbox.owner`
//! (the boot and pid of the process that made it). A process that dies without
//! cleaning up (SIGKILL, a crashed executor) leaves containers whose owner no longer
//! runs; the next Faultbox process on the host removes exactly those, with their
//! anonymous volumes. A container whose owner still runs belongs to a concurrent run
//! and is left alone, which is why this is narrower than "remove every `faultbox-*`
//! container".

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};

use crate::{status, ContainerError, Daemon};

/// The label naming the job a container serves.
pub const RUN_LABEL: &str = "faultbox.run";
/// The label naming the process that owns a container: `BOOT_ID/PID`.
pub const OWNER_LABEL: &str = "faultbox.owner";

/// This process as an owner label value.
pub fn this_process() -> String {
    format!("{}/{}", boot_id(), std::process::id())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".into())
}

/// Whether the owner a label names still runs: the same boot, and the pid alive.
/// (A pid reused since then keeps a container a little longer, never removes a live
/// run's.)
pub fn alive(owner: &str) -> bool {
    let Some((boot, pid)) = owner.rsplit_once('/') else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if boot != boot_id() || pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl Daemon {
    /// Removes every container (and its anonymous volumes) whose owner no longer runs;
    /// returns their names.
    pub async fn sweep(&self) -> Result<Vec<String>, ContainerError> {
        let filters = HashMap::from([("label", vec![OWNER_LABEL])]);
        let list = self
            .api
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let mut removed = Vec::new();
        for c in list {
            let owner = c
                .labels
                .as_ref()
                .and_then(|l| l.get(OWNER_LABEL))
                .cloned()
                .unwrap_or_default();
            if alive(&owner) {
                continue;
            }
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_else(|| id.clone());
            let opts = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match self.api.remove_container(&id, Some(opts)).await {
                Ok(()) => removed.push(name.trim_start_matches('/').to_string()),
                // Gone meanwhile, or already being removed by another sweep.
                Err(e) if matches!(status(&e), Some(404 | 409)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert!(alive(&this_process()));
        assert!(!alive("another-boot/1"));
        assert!(!alive(&format!("{}/not-a-pid", boot_id())));
        assert!(!alive("garbage"));
        // A pid that cannot exist (above pid_max's ceiling).
        assert!(!alive(&format!("{}/{}", boot_id(), 1 << 23)));
    }
}
