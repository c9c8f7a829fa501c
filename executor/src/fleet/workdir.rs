//! An executor's work directory: where it keeps blobs, unpacked bundles and jobs'
//! scratch files. Jobs run as root from what is in it, so it must be a directory
//! that nobody else could have made or can write: owned by the executor's user,
//! not writable by group or others, and not a symbolic link. It is created with
//! mode 0700, and tightened to 0700 when an existing one is accepted. One executor
//! holds it at a time (a lock file).

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: is a symbolic link; give the directory itself")]
    Symlink(PathBuf),
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: owned by uid {owner}, not by this executor's user (uid {uid}); it may have been made by someone else: remove it or choose another --work")]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("{path}: group or others can write it (mode {mode:o}); make it writable by its owner only (chmod 700)")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{0}: another executor is using it")]
    Busy(PathBuf),
    #[error("no default work directory: neither XDG_STATE_HOME nor HOME is set (give --work)")]
    NoDefault,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkDirError + '_ {
    move |source| WorkDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where executor `name` works when not told: a root-owned place for root
/// (`/var/lib/faultbox/executor-NAME`), the user's state directory otherwise
/// (`$XDG_STATE_HOME/faultbox/executor-NAME`, or `~/.local/state/faultbox/...`).
/// Never the shared temporary directory, where anyone can make the name first.
pub fn default_dir(
    name: &str,
    euid: u32,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, WorkDirError> {
    let leaf = format!("executor-{name}");
    if euid == 0 {
        return Ok(Path::new("/var/lib/faultbox").join(leaf));
    }
    // XDG: a relative XDG_STATE_HOME is invalid and ignored.
    let state = match xdg_state_home.filter(|s| s.as_bytes().starts_with(b"/")) {
        Some(s) => PathBuf::from(s),
        None => PathBuf::from(
            home.filter(|h| !h.is_empty())
                .ok_or(WorkDirError::NoDefault)?,
        )
        .join(".local/state"),
    };
    Ok(state.join("faultbox").join(leaf))
}

/// The default work directory of executor `name` for this process's user.
pub fn default_for(name: &str) -> Result<PathBuf, WorkDirError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    default_dir(
        name,
        euid,
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// A claimed work directory; the claim lasts as long as this value.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _lock: File,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes `path` safe to work in, or refuses it: creates it (mode 0700) if missing,
/// checks it without following a symbolic link, tightens it to 0700, locks it for
/// this executor, and empties its `tmp/` (what a killed executor left behind).
pub fn claim(path: &Path) -> Result<WorkDir, WorkDirError> {
    // Without a trailing `/`, which would make the kernel follow a final link.
    let path: &Path = &path.components().collect::<PathBuf>();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(path)(e)),
    }
    let dir = open_dir(path)?;
    let meta = dir.metadata().map_err(io(path))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(WorkDirError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(WorkDirError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o077 != 0 {
        dir.set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(io(path))?;
    }
    // Nobody else can make entries in it now: paths below it are ours.
    let lock_path = path.join("lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(WorkDirError::Busy(path.to_path_buf()));
    }
    let tmp = path.join("tmp");
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    private_dir(&tmp)?;
    Ok(WorkDir {
        path: path.to_path_buf(),
        _lock: lock,
    })
}

/// Opens `path` as a directory, refusing a symbolic link.
fn open_dir(path: &Path) -> Result<File, WorkDirError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| WorkDirError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `c` is a valid NUL-terminated path; the flags ask for no side effects.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            // O_NOFOLLOW on a link gives ELOOP; O_DIRECTORY on anything else ENOTDIR.
            Some(libc::ELOOP) => WorkDirError::Symlink(path.to_path_buf()),
            Some(libc::ENOTDIR) if is_symlink(path) => WorkDirError::Symlink(path.to_path_buf()),
            Some(libc::ENOTDIR) => WorkDirError::NotADirectory(path.to_path_buf()),
            _ => io(path)(e),
        });
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Creates `path` (mode 0700) if missing, and makes sure it is a directory of ours
/// that only we can enter: a sub-directory of a claimed work directory.
pub fn private_dir(path: &Path) -> Result<(), WorkDirError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(path)(e)),
    }
    let dir = open_dir(path)?;
    let mode = dir.metadata().map_err(io(path))?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        dir.set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_never_in_the_shared_temporary_directory() {
        assert_eq!(
            default_dir("e1", 0, Some("/x".into()), Some("/root".into())).unwrap(),
            Path::new("/var/lib/faultbox/executor-e1")
        );
        assert_eq!(
            default_dir("e1", 1000, Some("/s".into()), Some("/home/u".into())).unwrap(),
            Path::new("/s/faultbox/executor-e1")
        );
        // A relative XDG_STATE_HOME does not count.
        assert_eq!(
            default_dir("e1", 1000, Some("rel".into()), Some("/home/u".into())).unwrap(),
            Path::new("/home/u/.local/state/faultbox/executor-e1")
        );
        assert!(matches!(
            default_dir("e1", 1000, None, None),
            Err(WorkDirError::NoDefault)
        ));
    }

    #[test]
    fn a_claimed_directory_is_private_and_held_once() {
        let base = std::env::temp_dir().join(format!("fbtest-workdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let work = base.join("w");
        let held = claim(&work).unwrap();
        let mode = std::fs::metadata(&work).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(claim(&work), Err(WorkDirError::Busy(_))));
        drop(held);
        // An existing directory others can read is tightened, not refused.
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
        let held = claim(&work).unwrap();
        assert_eq!(std::fs::metadata(&work).unwrap().mode() & 0o777, 0o700);
        drop(held);
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(claim(&work), Err(WorkDirError::Writable { .. })));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
