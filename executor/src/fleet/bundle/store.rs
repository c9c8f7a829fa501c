//! An executor's store: file contents by hash under `WORK/blobs` (mode 0600, in a
//! directory only the executor's user can enter), unpacked bundles under
//! `WORK/bundles/<hash>`. Nothing found there is trusted by its name: a blob is
//! checked against its hash before it counts as present and again when it is
//! unpacked, and an unpacked bundle's files are checked each time it is used. A
//! blob that does not match is deleted, so it is received again.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{hash, io, safe_relative, Bundle, BundleError};
use crate::fleet::workdir;

/// Marks a bundle directory whose files were all written.
const COMPLETE: &str = ".complete";

pub struct Store {
    work: PathBuf,
    /// Blobs this process has checked (or written) since it started.
    verified: Mutex<HashSet<String>>,
    /// Makes temporary file names unique when links write at once.
    counter: AtomicU64,
}

/// Reads `path` without following a symbolic link; `None` when it does not exist.
fn read(path: &Path) -> Result<Option<Vec<u8>>, BundleError> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes).map_err(io(path))?;
    Ok(Some(bytes))
}

impl Store {
    /// Opens the store in `work`, a directory [`workdir::claim`] accepted.
    pub fn new(work: &Path) -> Result<Store, BundleError> {
        for sub in ["blobs", "bundles"] {
            workdir::private_dir(&work.join(sub))?;
        }
        Ok(Store {
            work: work.to_path_buf(),
            verified: Mutex::new(HashSet::new()),
            counter: AtomicU64::new(0),
        })
    }

    fn blob(&self, hash: &str) -> PathBuf {
        self.work.join("blobs").join(hash)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a good copy of `hash` is stored; one that does not match its name is
    /// deleted (and so counts as missing).
    fn holds(&self, hash: &str) -> Result<bool, BundleError> {
        let path = self.blob(hash);
        if self.verified().contains(hash) && path.exists() {
            return Ok(true);
        }
        match read(&path)? {
            None => Ok(false),
            Some(bytes) if super::hash(&bytes) == hash => {
                self.verified().insert(hash.to_string());
                Ok(true)
            }
            Some(_) => {
                tracing::warn!(blob = %hash, "a stored blob does not match its hash: deleted, to be received again");
                std::fs::remove_file(&path).map_err(io(&path))?;
                Ok(false)
            }
        }
    }

    /// The hashes of `bundle` this store lacks; refuses unsafe paths first.
    pub fn missing(&self, bundle: &Bundle) -> Result<Vec<String>, BundleError> {
        safe_relative(&bundle.spec)?;
        if !is_hash(&bundle.hash) {
            return Err(BundleError::Corrupt {
                path: "(the bundle)".into(),
                hash: bundle.hash.clone(),
            });
        }
        let mut out = Vec::new();
        for f in &bundle.files {
            safe_relative(&f.path)?;
            if !is_hash(&f.hash) {
                return Err(BundleError::Corrupt {
                    path: f.path.clone(),
                    hash: f.hash.clone(),
                });
            }
            if !out.contains(&f.hash) && !self.holds(&f.hash)? {
                out.push(f.hash.clone());
            }
        }
        Ok(out)
    }

    /// Writes `bytes` to `dest` through a private temporary file, so a reader never
    /// sees a partial file.
    fn write_new(&self, dest: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".part-{}-{n}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(dest)(e)
        })
    }

    /// Keeps one file's contents, after checking them against their hash.
    pub fn put(&self, expected: &str, bytes: &[u8]) -> Result<(), BundleError> {
        if !is_hash(expected) || hash(bytes) != expected {
            return Err(BundleError::Received(expected.to_string()));
        }
        self.write_new(&self.blob(expected), bytes, 0o600)?;
        self.verified().insert(expected.to_string());
        Ok(())
    }

    /// The contents of blob `hash` for the bundle file `path`, checked again.
    fn contents(&self, path: &str, hash: &str) -> Result<Vec<u8>, BundleError> {
        let blob = self.blob(hash);
        match read(&blob)? {
            Some(bytes) if super::hash(&bytes) == hash => Ok(bytes),
            Some(_) => {
                self.verified().remove(hash);
                std::fs::remove_file(&blob).map_err(io(&blob))?;
                Err(BundleError::BadBlob {
                    path: path.to_string(),
                    hash: hash.to_string(),
                })
            }
            None => Err(BundleError::Missing(hash.to_string())),
        }
    }

    /// The directory of the unpacked bundle that holds `spec`.
    pub fn bundle_root(&self, spec: &Path) -> PathBuf {
        let bundles = self.work.join("bundles");
        match spec.strip_prefix(&bundles) {
            Ok(rel) => rel
                .components()
                .next()
                .map_or(bundles.clone(), |hash| bundles.join(hash)),
            Err(_) => bundles,
        }
    }

    /// Unpacks `bundle` and returns the path of its spec. Files already unpacked by
    /// an earlier link are checked against their hashes, and written again if they
    /// differ.
    pub fn unpack(&self, bundle: &Bundle) -> Result<PathBuf, BundleError> {
        if let Some(h) = self.missing(bundle)?.first() {
            return Err(BundleError::Missing(h.clone()));
        }
        let dir = self.work.join("bundles").join(safe_relative(&bundle.hash)?);
        let complete = dir.join(COMPLETE).exists();
        for f in &bundle.files {
            let dest = dir.join(safe_relative(&f.path)?);
            if complete && read(&dest)?.is_some_and(|b| hash(&b) == f.hash) {
                continue;
            }
            let bytes = self.contents(&f.path, &f.hash)?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            // Execute bits as shipped; never set-id bits or write access for others.
            self.write_new(&dest, &bytes, f.mode & 0o755)?;
        }
        if !complete {
            let done = dir.join(COMPLETE);
            std::fs::write(&done, b"").map_err(io(&done))?;
        }
        Ok(dir.join(safe_relative(&bundle.spec)?))
    }
}

/// Whether `s` looks like a SHA-256 in hex (it becomes a file name).
fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::super::FileEntry;
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fbtest-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn one_file(contents: &[u8]) -> Bundle {
        Bundle {
            hash: "b".repeat(64),
            spec: "s/spec.star".into(),
            files: vec![FileEntry {
                path: "s/spec.star".into(),
                hash: hash(contents),
                mode: 0o644,
                size: contents.len() as u64,
            }],
        }
    }

    #[test]
    fn blobs_are_checked_against_their_hash() {
        let dir = scratch("put");
        let store = Store::new(&dir).unwrap();
        let h = hash(b"hello");
        assert!(store.put(&h, b"hullo").is_err());
        store.put(&h, b"hello").unwrap();
        let bundle = one_file(b"hello");
        assert!(store.missing(&bundle).unwrap().is_empty());
        let spec = store.unpack(&bundle).unwrap();
        assert_eq!(std::fs::read(&spec).unwrap(), b"hello");
        assert!(spec.starts_with(&dir));
        let mut evil = bundle.clone();
        evil.files[0].path = "../../escape".into();
        assert!(matches!(store.missing(&evil), Err(BundleError::Escapes(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_blob_that_lies_about_its_contents_is_never_used() {
        let dir = scratch("planted");
        let bundle = one_file(b"the real spec");
        let h = &bundle.files[0].hash;
        // Planted before the store opens: found out when the bundle is offered.
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("blobs").join(h), b"planted").unwrap();
        let store = Store::new(&dir).unwrap();
        assert_eq!(store.missing(&bundle).unwrap(), vec![h.clone()]);
        assert!(!dir.join("blobs").join(h).exists());
        store.put(h, b"the real spec").unwrap();
        // Changed after it was checked: found out when it is unpacked.
        std::fs::write(dir.join("blobs").join(h), b"planted later").unwrap();
        match store.unpack(&bundle) {
            Err(e @ BundleError::BadBlob { .. }) => {
                assert!(e.to_string().contains("s/spec.star"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.join("blobs").join(h).exists());
        // An unpacked file that changed is written again from its blob.
        store.put(h, b"the real spec").unwrap();
        let spec = store.unpack(&bundle).unwrap();
        std::fs::write(&spec, b"changed").unwrap();
        assert_eq!(store.unpack(&bundle).unwrap(), spec);
        assert_eq!(std::fs::read(&spec).unwrap(), b"the real spec");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blobs_are_for_the_executors_user_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("modes");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::set_permissions(dir.join("blobs"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let store = Store::new(&dir).unwrap();
        let h = hash(b"x");
        store.put(&h, b"x").unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.join("blobs")), 0o700);
        assert_eq!(mode(dir.join("bundles")), 0o700);
        assert_eq!(mode(dir.join("blobs").join(&h)), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
