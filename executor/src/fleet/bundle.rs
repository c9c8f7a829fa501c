//! Bundles: what an executor needs to run a spec it did not write, each file by
//! content hash, relative to the files' common directory. What goes in is decided in
//! [`contents`]; executors keep contents by hash in a [`Store`], so a file they have
//! seen is never sent again, and unpack a bundle only inside their work directory:
//! absolute paths and `..` are refused.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod contents;
mod store;

pub use contents::{build, Contents};
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
    #[error("{0}: more than {MAX_FILES} files to ship (list what the run does not need in .faultboxignore)")]
    TooMany(PathBuf),
    #[error("{folder}: {message}")]
    Walk { folder: PathBuf, message: String },
    #[error("{0}: a private key, named by the spec (as a service binary or a load()): bundles never carry one")]
    PrivateKey(PathBuf),
    #[error("{path}: inside the fleet directory {fleet}: bundles never carry a fleet directory's files; keep it apart from the files the spec uses")]
    InFleet { path: PathBuf, fleet: PathBuf },
    #[error("{0:?}: the file name is not UTF-8, and bundles carry UTF-8 names only: rename it, or list it in .faultboxignore")]
    NotUtf8(PathBuf),
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
    WorkDir(#[from] crate::fleet::workdir::WorkDirError),
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
