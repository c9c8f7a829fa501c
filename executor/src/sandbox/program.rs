//! How a service's binary is found: one rule for local and fleet runs, applied on
//! the host that runs the service. A binary with a `/` is a path: absolute, or
//! relative to the folder of the file that declares the service (so it ships in
//! the bundle). A bare name is looked up in `PATH` only, never in the current
//! directory, whose meaning differs between the coordinator and an executor; and a
//! bare name that is also a file beside the declaring spec file is refused, since
//! which of the two was meant depends on the host.

use std::path::{Path, PathBuf};

use faultbox_spec::model::Service;

use crate::sandbox::session::{self, ResolveError};

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{0:?} not found in PATH")]
    NotInPath(String),
    #[error(
        "{name:?} is looked up in PATH, but {} is a file beside the spec: write \"./{name}\" to run that file, or rename it",
        file.display()
    )]
    Ambiguous { name: String, file: PathBuf },
    #[error("build={dir:?}: {} has no Dockerfile", path.display())]
    NoDockerfile { dir: String, path: PathBuf },
    #[error("volume {host:?}: {} does not exist", path.display())]
    NoVolume { host: String, path: PathBuf },
}

/// What can be checked of a container service without Docker: its build directory
/// has a Dockerfile and its volumes' host paths exist. (The image is looked up when
/// the test starts, where the service runs.)
fn check_container(svc: &Service, c: &faultbox_spec::model::Container) -> Result<(), ProgramError> {
    if let faultbox_spec::model::ImageSource::Build(dir) = &c.source {
        let path = svc.from_home(dir);
        if !path.join("Dockerfile").is_file() {
            return Err(ProgramError::NoDockerfile {
                dir: dir.clone(),
                path,
            });
        }
    }
    for (host, _) in &c.volumes {
        let path = svc.from_home(host);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(ProgramError::NoVolume {
                host: host.clone(),
                path,
            });
        }
    }
    Ok(())
}

/// Refuses a bare name that is also a file beside the declaring spec file.
fn check_unambiguous(svc: &Service) -> Result<(), ProgramError> {
    let beside = svc.home().join(&svc.binary);
    if std::fs::symlink_metadata(&beside).is_ok() {
        return Err(ProgramError::Ambiguous {
            name: svc.binary.clone(),
            file: beside,
        });
    }
    Ok(())
}

/// Looks a bare `name` up in the directories of `PATH` (an empty entry, which a
/// shell reads as the current directory, is skipped).
fn in_path(name: &str) -> Result<PathBuf, ProgramError> {
    let mut first_problem = None;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
        let candidate = dir.join(name);
        match session::check_executable(&candidate, name) {
            Ok(()) => return Ok(candidate),
            Err(ResolveError::NotFound(_)) => {}
            Err(e) => {
                first_problem.get_or_insert(e);
            }
        }
    }
    Err(first_problem.map_or_else(|| ProgramError::NotInPath(name.to_string()), Into::into))
}

/// The program to run for `svc` on this host (empty for a container service, once
/// what can be checked of it without Docker holds).
pub fn resolve(svc: &Service) -> Result<PathBuf, ProgramError> {
    if let Some(c) = &svc.container {
        check_container(svc, c)?;
        return Ok(PathBuf::new());
    }
    if svc.binary.contains('/') {
        return Ok(session::resolve_program(&svc.binary_path())?);
    }
    check_unambiguous(svc)?;
    in_path(&svc.binary)
}

/// What the coordinator of a fleet run can check before it ships: binaries named
/// by relative path (they ship from here) and bare names that are ambiguous. An
/// absolute path or a bare name is the executor host's to find; executors check
/// them when they load the bundle.
pub fn check_before_shipping(svc: &Service) -> Result<(), ProgramError> {
    if let Some(c) = &svc.container {
        check_container(svc, c)
    } else if svc.binary.starts_with('/') {
        Ok(())
    } else if svc.binary.contains('/') {
        session::resolve_program(&svc.binary_path()).map(drop)?;
        Ok(())
    } else {
        check_unambiguous(svc)
    }
}

/// `file` (a spec location) relative to `root` when it is under it: a location in
/// an unpacked bundle, as the coordinator knows it.
pub fn relative_to<'a>(file: &'a str, root: &Path) -> &'a str {
    Path::new(file)
        .strip_prefix(root)
        .ok()
        .and_then(Path::to_str)
        .unwrap_or(file)
}
