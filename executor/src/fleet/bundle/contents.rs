//! What a bundle carries, decided on the coordinator's side.
//!
//! The files the spec names always go: the spec, every file it `load()`s, and the
//! service binaries it names by relative path. Around them goes the rest of the
//! spec's folder, so that data files the services or tests read are there too,
//! minus what `.gitignore` and `.faultboxignore` files exclude, hidden entries,
//! `target/` folders and symbolic links. Never shipped: a fleet directory (the
//! `--fleet` directory, or any folder holding `ca.pem` or `ca.key`) and private
//! keys (a `.key` file, or one holding a PEM private key). A named file that is
//! one of those is refused, naming it; the folder's are left out. Names must be
//! UTF-8, so that a name means one path on every host.
//!
//! Each file is read once, into memory: what is hashed is what ships, even if the
//! file changes on disk during the run.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faultbox_spec::Loaded;

use super::{hash, io, Bundle, BundleError, FileEntry, MAX_FILES};

/// File contents by hash: what the coordinator sends when an executor lacks them.
pub type Contents = BTreeMap<String, Arc<[u8]>>;

/// The extra ignore file read in every folder of the spec's, like `.gitignore`.
pub const IGNORE_FILE: &str = ".faultboxignore";

/// Whether `dir` is a fleet directory: the `--fleet` one, or one that holds a CA.
fn is_fleet_dir(dir: &Path, fleet: Option<&Path>) -> bool {
    fleet == Some(dir) || dir.join("ca.pem").exists() || dir.join("ca.key").exists()
}

/// Whether `bytes`, read from `path`, are a private key: by name (`.key`) or by a
/// PEM private-key header on a line of its own (not inside an executable, whose
/// strings may spell one).
fn is_private_key(path: &Path, bytes: &[u8]) -> bool {
    if path.extension().is_some_and(|e| e == "key") {
        return true;
    }
    if bytes.starts_with(b"\x7fELF") {
        return false;
    }
    bytes.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        line.starts_with(b"-----BEGIN ") && line.ends_with(b"PRIVATE KEY-----")
    })
}

/// The spec folder's files that may ship, sorted, skipping ignored files, hidden
/// entries, `target/` and fleet directories.
fn folder_files(folder: &Path, fleet: Option<&Path>) -> Result<Vec<PathBuf>, BundleError> {
    let fleet = fleet.map(Path::to_path_buf);
    let walk = ignore::WalkBuilder::new(folder)
        .hidden(true)
        .parents(true)
        .ignore(false)
        .git_ignore(true)
        .git_exclude(true)
        // The user's global excludes differ between machines: the bundle must not.
        .git_global(false)
        .require_git(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |e| {
            let dir = e.file_type().is_some_and(|t| t.is_dir());
            !(dir && (e.file_name() == "target" || is_fleet_dir(e.path(), fleet.as_deref())))
        })
        .build();
    let mut out = Vec::new();
    for entry in walk {
        let entry = entry.map_err(|e| BundleError::Walk {
            folder: folder.to_path_buf(),
            message: e.to_string(),
        })?;
        if entry.file_type().is_some_and(|t| t.is_file()) {
            out.push(entry.into_path());
            if out.len() > MAX_FILES {
                return Err(BundleError::TooMany(folder.to_path_buf()));
            }
        }
    }
    Ok(out)
}

/// The directory every path in `paths` is under.
fn common_root(paths: &[PathBuf]) -> PathBuf {
    let mut root: Option<PathBuf> = None;
    for p in paths {
        let dir = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        root = Some(match root {
            None => dir,
            Some(r) => r
                .components()
                .zip(dir.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    root.unwrap_or_else(|| PathBuf::from("/"))
}

/// A file read once: its mode and contents.
fn read(path: &Path) -> Result<(u32, Vec<u8>), BundleError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mode = f.metadata().map_err(io(path))?.permissions().mode() & 0o7777;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes).map_err(io(path))?;
    Ok((mode, bytes))
}

/// Lists what `loaded` needs (see the module's documentation); `fleet` is the
/// fleet directory of the run. Returns the bundle and the contents of its files.
pub fn build(loaded: &Loaded, fleet: Option<&Path>) -> Result<(Bundle, Contents), BundleError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(io(p));
    let fleet = fleet.map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf()));
    let fleet = fleet.as_deref();
    let spec = canonical(&loaded.path)?;
    // Named by the spec: these must go.
    let mut named = vec![spec.clone()];
    for f in &loaded.files {
        named.push(canonical(f)?);
    }
    for svc in &loaded.spec.services {
        if svc.binary.contains('/') && !svc.binary.starts_with('/') {
            named.push(canonical(Path::new(&svc.binary_path()))?);
        }
    }
    named.sort();
    named.dedup();
    let folder = spec.parent().unwrap_or(Path::new("/"));
    let mut paths = folder_files(folder, fleet)?;
    paths.extend(named.iter().cloned());
    paths.sort();
    paths.dedup();
    let root = common_root(&paths);
    for path in &named {
        let inside = path
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&root))
            .find(|a| is_fleet_dir(a, fleet));
        if let Some(dir) = inside {
            return Err(BundleError::InFleet {
                path: path.clone(),
                fleet: dir.to_path_buf(),
            });
        }
    }
    let mut files = Vec::new();
    let mut contents = Contents::new();
    for path in &paths {
        let rel = path.strip_prefix(&root).unwrap_or(path);
        let Some(rel) = rel.to_str() else {
            return Err(BundleError::NotUtf8(path.clone()));
        };
        let (mode, bytes) = read(path)?;
        if is_private_key(path, &bytes) {
            if named.contains(path) {
                return Err(BundleError::PrivateKey(path.clone()));
            }
            continue;
        }
        let hash = hash(&bytes);
        files.push(FileEntry {
            path: rel.to_string(),
            hash: hash.clone(),
            mode,
            size: bytes.len() as u64,
        });
        contents.entry(hash).or_insert_with(|| bytes.into());
    }
    let spec_rel = spec
        .strip_prefix(&root)
        .unwrap_or(&spec)
        .to_str()
        .ok_or_else(|| BundleError::NotUtf8(spec.clone()))?
        .to_string();
    let listing: String = files
        .iter()
        .map(|f| format!("{}\0{}\0{:o}\n", f.path, f.hash, f.mode))
        .collect();
    let bundle = Bundle {
        hash: hash(format!("{spec_rel}\n{listing}").as_bytes()),
        spec: spec_rel,
        files,
    };
    Ok((bundle, contents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_known_by_name_or_by_their_header() {
        let p = Path::new;
        assert!(is_private_key(p("a/ca.key"), b""));
        for header in [
            "-----BEGIN PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        ] {
            let text = format!("junk\n  {header}\r\nAAAA\n");
            assert!(is_private_key(p("x.pem"), text.as_bytes()), "{header}");
        }
        assert!(!is_private_key(
            p("ca.pem"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n"
        ));
        // A program that can parse keys spells the header among its strings.
        let mut elf = b"\x7fELF".to_vec();
        elf.extend_from_slice(b"\n-----BEGIN PRIVATE KEY-----\n");
        assert!(!is_private_key(p("bin/server"), &elf));
    }

    #[test]
    fn the_folder_walk_leaves_out_ignored_hidden_built_and_fleet_files() {
        let base = std::env::temp_dir().join(format!("fbtest-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let spec = base.join("spec");
        for (rel, text) in [
            (".faultboxignore", "skip.txt\n"),
            ("spec/.gitignore", "*.log\n"),
            ("spec/keep.txt", ""),
            ("spec/skip.txt", ""),
            ("spec/run.log", ""),
            ("spec/.hidden", ""),
            ("spec/target/debug/x", ""),
            ("spec/fleet/ca.pem", ""),
            ("spec/fleet/e1.key", ""),
            ("spec/given/notes.txt", ""),
            ("spec/sub/ok.txt", ""),
            ("spec/sub/.faultboxignore", "notes.txt\n"),
            ("spec/sub/notes.txt", ""),
        ] {
            let p = base.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let names = |fleet: Option<&Path>| -> Vec<String> {
            folder_files(&spec, fleet)
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(&spec).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names(None), ["given/notes.txt", "keep.txt", "sub/ok.txt"]);
        // The --fleet directory goes too, with or without a CA in it.
        assert_eq!(names(Some(&spec.join("given"))), ["keep.txt", "sub/ok.txt"]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_common_root_is_the_deepest_shared_directory() {
        let r = common_root(&[
            PathBuf::from("/w/examples/spec.star"),
            PathBuf::from("/w/examples/lib/x.star"),
            PathBuf::from("/w/target/debug/orders"),
        ]);
        assert_eq!(r, Path::new("/w"));
    }
}
