//! Bundles: what an executor needs to run a spec it did not write. A bundle lists the
//! spec folder's files, every file the spec `load()`s, and the service binaries it
//! names by relative path, each by content hash, relative to their common directory.
//! Executors keep contents by hash, so a file they have seen is never sent again, and
//! unpack a bundle only inside their work directory: absolute paths and `..` are
//! refused.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use faultbox_spec::Loaded;

/// Files a spec folder may hold before bundling it is refused.
const MAX_FILES: usize = 5000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the bundle's root.
    pub path: String,
    /// SHA-256 of the contents, hex.
    pub hash: String,
    /// Unix permission bits.
    pub mode: u32,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// SHA-256 over the file list and the spec's path.
    pub hash: String,
    /// The spec to load, relative to the root.
    pub spec: String,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: more than {MAX_FILES} files to ship")]
    TooMany(PathBuf),
    #[error("bundle path {0:?} is absolute or leaves the bundle")]
    Escapes(String),
    #[error("{path}: contents do not match hash {hash}")]
    Corrupt { path: String, hash: String },
    #[error("no contents for {0}")]
    Missing(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 of `bytes`, hex.
pub fn hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_file(path: &Path) -> Result<(String, u64), BundleError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        size,
    ))
}

/// The files of the spec folder, recursively, leaving out hidden entries and build
/// output (`target/`).
fn folder_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BundleError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let kind = entry.file_type().map_err(io(dir))?;
        if kind.is_dir() {
            folder_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
        if out.len() > MAX_FILES {
            return Err(BundleError::TooMany(dir.to_path_buf()));
        }
    }
    Ok(())
}

fn common_root(paths: &[PathBuf]) -> PathBuf {
    let mut root: Option<PathBuf> = None;
    for p in paths {
        let dir = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        root = Some(match root {
            None => dir,
            Some(r) => {
                let mut common = PathBuf::new();
                for (a, b) in r.components().zip(dir.components()) {
                    if a != b {
                        break;
                    }
                    common.push(a);
                }
                common
            }
        });
    }
    root.unwrap_or_else(|| PathBuf::from("/"))
}

/// Lists what `loaded` needs. Returns the bundle and where each hash's contents are
/// on this host.
pub fn build(loaded: &Loaded) -> Result<(Bundle, BTreeMap<String, PathBuf>), BundleError> {
    let spec = std::fs::canonicalize(&loaded.path).map_err(io(&loaded.path))?;
    let mut paths = Vec::new();
    folder_files(spec.parent().unwrap_or(Path::new("/")), &mut paths)?;
    paths.extend(loaded.files.iter().cloned());
    for svc in &loaded.spec.services {
        if svc.binary.contains('/') && !svc.binary.starts_with('/') {
            let bin = PathBuf::from(svc.binary_path());
            paths.push(std::fs::canonicalize(&bin).map_err(io(&bin))?);
        }
    }
    paths.push(spec.clone());
    let mut paths: Vec<PathBuf> = paths
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    paths.sort();
    paths.dedup();
    let root = common_root(&paths);
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut files = Vec::new();
    let mut sources = BTreeMap::new();
    for p in &paths {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(p).map_err(io(p))?;
        let (hash, size) = hash_file(p)?;
        sources.insert(hash.clone(), p.clone());
        files.push(FileEntry {
            path: rel(p),
            hash,
            mode: meta.permissions().mode() & 0o7777,
            size,
        });
    }
    let spec_rel = rel(&spec);
    let listing: String = files
        .iter()
        .map(|f| format!("{}\0{}\0{:o}\n", f.path, f.hash, f.mode))
        .collect();
    let bundle = Bundle {
        hash: hash(format!("{spec_rel}\n{listing}").as_bytes()),
        spec: spec_rel,
        files,
    };
    Ok((bundle, sources))
}

/// Checks that `path` stays inside the directory it is joined to.
pub fn safe_relative(path: &str) -> Result<&Path, BundleError> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(BundleError::Escapes(path.to_string()))
    }
}

/// An executor's store: contents by hash under `work/blobs`, unpacked bundles under
/// `work/bundles/<hash>`.
pub struct Store {
    work: PathBuf,
}

impl Store {
    pub fn new(work: &Path) -> Result<Store, BundleError> {
        for sub in ["blobs", "bundles"] {
            let d = work.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Store {
            work: work.to_path_buf(),
        })
    }

    fn blob(&self, hash: &str) -> PathBuf {
        self.work.join("blobs").join(hash)
    }

    /// The hashes of `bundle` this store lacks; refuses unsafe paths first.
    pub fn missing(&self, bundle: &Bundle) -> Result<Vec<String>, BundleError> {
        let mut out = Vec::new();
        for f in &bundle.files {
            safe_relative(&f.path)?;
            if f.hash.len() != 64 || !f.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BundleError::Corrupt {
                    path: f.path.clone(),
                    hash: f.hash.clone(),
                });
            }
            if !self.blob(&f.hash).exists() && !out.contains(&f.hash) {
                out.push(f.hash.clone());
            }
        }
        safe_relative(&bundle.spec)?;
        Ok(out)
    }

    /// Keeps one file's contents, after checking them against their hash.
    pub fn put(&self, expected: &str, bytes: &[u8]) -> Result<(), BundleError> {
        if hash(bytes) != expected {
            return Err(BundleError::Corrupt {
                path: "(blob)".into(),
                hash: expected.to_string(),
            });
        }
        let tmp = self.work.join("blobs").join(format!(".{expected}.part"));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        let dest = self.blob(expected);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))
    }

    /// Unpacks `bundle` (once) and returns the path of its spec.
    pub fn unpack(&self, bundle: &Bundle) -> Result<PathBuf, BundleError> {
        if let Some(h) = self.missing(bundle)?.first() {
            return Err(BundleError::Missing(h.clone()));
        }
        safe_relative(&bundle.hash)?;
        let dir = self.work.join("bundles").join(&bundle.hash);
        if !dir.join(".complete").exists() {
            for f in &bundle.files {
                use std::os::unix::fs::PermissionsExt;
                let dest = dir.join(safe_relative(&f.path)?);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                let _ = std::fs::remove_file(&dest);
                std::fs::copy(self.blob(&f.hash), &dest).map_err(io(&dest))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode & 0o777))
                    .map_err(io(&dest))?;
            }
            let done = dir.join(".complete");
            std::fs::write(&done, b"").map_err(io(&done))?;
        }
        Ok(dir.join(safe_relative(&bundle.spec)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/..", "./a"] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
        assert!(safe_relative("a/b.star").is_ok());
    }

    #[test]
    fn blobs_are_checked_against_their_hash() {
        let dir = std::env::temp_dir().join(format!("fbtest-store-{}", std::process::id()));
        let store = Store::new(&dir).unwrap();
        let h = hash(b"hello");
        assert!(store.put(&h, b"hullo").is_err());
        store.put(&h, b"hello").unwrap();
        let bundle = Bundle {
            hash: "b".repeat(64),
            spec: "s/spec.star".into(),
            files: vec![FileEntry {
                path: "s/spec.star".into(),
                hash: h.clone(),
                mode: 0o644,
                size: 5,
            }],
        };
        assert!(store.missing(&bundle).unwrap().is_empty());
        let spec = store.unpack(&bundle).unwrap();
        assert_eq!(std::fs::read(&spec).unwrap(), b"hello");
        assert!(spec.starts_with(&dir));
        let mut evil = bundle.clone();
        evil.files[0].path = "../../escape".into();
        assert!(matches!(store.missing(&evil), Err(BundleError::Escapes(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
