//! Tests' scratch directories (service output, `$TMPDIR`, WALs). They live under one
//! directory per process, `$TMPDIR/faultbox-PID`, which the process holds a lock on
//! for as long as it has tests running and removes when the last one ends. A process
//! killed outright (SIGKILL) cannot clean up: the next Faultbox process to start
//! sweeps every such directory whose lock nobody holds any more.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The process's directory, while it has tests.
struct Run {
    dir: PathBuf,
    /// Holds the lock; closing it releases it.
    _lock: File,
    tests: usize,
}

static RUN: Mutex<Option<Run>> = Mutex::new(None);

/// A test's scratch directory, removed (with the process's directory, if it was the
/// last) on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = run.as_mut() {
            r.tests -= 1;
            if r.tests == 0 {
                let _ = std::fs::remove_dir_all(&r.dir);
                *run = None;
            }
        }
    }
}

/// Creates a scratch directory for `test`.
pub fn test_dir(test: &str) -> std::io::Result<TestDir> {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    if run.is_none() {
        *run = Some(open_run()?);
    }
    let r = run.as_mut().expect("just opened");
    let dir = r
        .dir
        .join(format!("{}-{test}", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    r.tests += 1;
    Ok(TestDir(dir))
}

/// Opens a test's directory to services that run as other users (`service(user=)`):
/// the directory becomes writable by all and sticky, like /tmp, and the process's
/// directory above it searchable (not listable), so other tests stay private.
pub fn share(test_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(run) = test_dir.parent() {
        std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o711))?;
    }
    std::fs::set_permissions(test_dir, std::fs::Permissions::from_mode(0o1777))
}

fn run_dir_name(pid: u32) -> String {
    format!("faultbox-{pid}")
}

fn open_run() -> std::io::Result<Run> {
    // Once per process: what dead processes left does not come back.
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        sweep();
    });
    let dir = std::env::temp_dir().join(run_dir_name(std::process::id()));
    // A directory under our own pid is a dead process's whose pid we now have.
    if std::fs::symlink_metadata(&dir).is_ok() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let lock = open_dir(&dir)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Run {
        dir,
        _lock: lock,
        tests: 0,
    })
}

fn open_dir(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
}

/// Removes the scratch directories of Faultbox processes that are gone: directories
/// `faultbox-PID` in the temp directory, owned by this user, that nobody holds the
/// lock of. Returns how many it removed.
pub fn sweep() -> usize {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return 0;
    };
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    let mine = run_dir_name(std::process::id());
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_run = name
            .strip_prefix("faultbox-")
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if !is_run || name == mine {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        let Ok(dir) = open_dir(&path) else { continue };
        // SAFETY: flock on a descriptor we own; it is released when `dir` closes.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            && std::fs::remove_dir_all(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_process_s_directory_is_swept_and_a_live_one_is_not() {
        let tmp = std::env::temp_dir();
        let dead = tmp.join("faultbox-4000000001");
        std::fs::create_dir_all(dead.join("0-test_x")).unwrap();
        std::fs::write(dead.join("0-test_x/svc.stdout"), "x").unwrap();
        let live = tmp.join("faultbox-4000000002");
        std::fs::create_dir_all(&live).unwrap();
        let held = open_dir(&live).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(
            unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        // flock locks belong to the open file, so a second open in this process is
        // refused like another process would be.
        sweep();
        assert!(!dead.exists(), "a directory nobody holds is swept");
        assert!(live.exists(), "a held directory is left alone");
        drop(held);
        sweep();
        assert!(!live.exists());
    }

    #[test]
    fn test_dirs_go_with_their_last_test() {
        let a = test_dir("test_a").unwrap();
        let b = test_dir("test_b").unwrap();
        let run = a.path().parent().unwrap().to_path_buf();
        assert_eq!(b.path().parent().unwrap(), run);
        drop(a);
        assert!(run.exists());
        drop(b);
        assert!(!run.exists());
    }
}
