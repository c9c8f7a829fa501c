//! Files Faultbox writes for the user (specs from `init` and `generate`, editor
//! files): never over an existing file unless `--force` says so, and never through a
//! symlink, which could point anywhere.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Whether existing files may be replaced (`--force`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

/// Checks every path before anything is written, so a refusal writes nothing.
pub fn check_all<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
    existing: Existing,
) -> Result<(), String> {
    for p in paths {
        // symlink_metadata: a dangling symlink exists too.
        if existing == Existing::Refuse && std::fs::symlink_metadata(p).is_ok() {
            return Err(format!(
                "{} exists; not overwriting it (--force replaces it)",
                p.display()
            ));
        }
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            return Err(format!("{} is a directory", p.display()));
        }
    }
    Ok(())
}

/// Writes `text` to `path`, creating its directory. A new file is created
/// exclusively (an existing name, a symlink included, is refused); with
/// [`Existing::Replace`], the text goes to a new file beside it that is renamed over
/// the old name, so a symlink there is replaced and its target left alone.
pub fn write(path: &Path, text: &str, existing: Existing) -> Result<(), String> {
    check_all([path], existing)?;
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let create = |p: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
    };
    match existing {
        Existing::Refuse => create(path).map_err(at)?,
        Existing::Replace => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let tmp = dir.join(format!(
                ".{}.faultbox-{}",
                name.unwrap_or_default(),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            create(&tmp).map_err(at)?;
            if let Err(e) = std::fs::rename(&tmp, path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(at(e));
            }
        }
    }
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_names_and_never_follows_symlinks() {
        let dir = std::env::temp_dir().join(format!("fbtest-output-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target.txt");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.join("link.star");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = dir.join("dangling.star");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();

        for p in [&target, &link, &dangling] {
            let e = write(p, "new", Existing::Refuse).unwrap_err();
            assert!(e.contains("exists; not overwriting it"), "{e}");
        }
        assert!(!dir.join("nowhere").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");

        write(&link, "new", Existing::Replace).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");

        write(&dir.join("sub/fresh.star"), "x", Existing::Refuse).unwrap();
        assert!(write(&dir, "x", Existing::Replace)
            .unwrap_err()
            .contains("is a directory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
