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

mod store;

pub use store::Store;

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
    #[error("{path}: {hash:?} is not a SHA-256")]
    Corrupt { path: String, hash: String },
    #[error("a file sent as {0} does not match that hash")]
    Received(String),
    #[error("{path}: the stored contents (blob {hash}) do not match their hash; the blob was deleted: run again to receive it")]
    BadBlob { path: String, hash: String },
    #[error("no contents for {0}")]
    Missing(String),
    #[error(transparent)]
    WorkDir(#[from] crate::workdir::WorkDirError),
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
}
