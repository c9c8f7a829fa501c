//! Images: one present on the host (`image=`), or one built from a directory with a
//! Dockerfile (`build=`). Nothing is ever pulled: there may be no registry, and a
//! pull that waits on one is a long timeout instead of a clear error.

use std::path::Path;

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

use crate::{status, ContainerError, Daemon};

/// What an image runs when nothing overrides it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

impl ImageConfig {
    /// The command a container runs, as `docker run IMAGE ARGS` and compose's
    /// `command:` decide it: the entrypoint stays; `args`, when given, replace the
    /// image's command.
    pub fn command(&self, args: Option<&[String]>) -> Vec<String> {
        let mut c = self.entrypoint.clone();
        match args {
            Some(a) => c.extend(a.iter().cloned()),
            None => c.extend(self.cmd.iter().cloned()),
        }
        c
    }
}

impl Daemon {
    /// The image `name` as present on this host.
    pub async fn image(&self, name: &str) -> Result<ImageConfig, ContainerError> {
        let inspect = match self.api.inspect_image(name).await {
            Ok(i) => i,
            Err(e) if status(&e) == Some(404) => {
                return Err(ContainerError::ImageMissing { image: name.into() })
            }
            Err(e) => return Err(e.into()),
        };
        let config = inspect.config.unwrap_or_default();
        Ok(ImageConfig {
            id: inspect.id.unwrap_or_default(),
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
            user: config.user.filter(|u| !u.is_empty()),
        })
    }

    /// Builds the Dockerfile in `dir` as `tag` and returns the image. The build's
    /// output is kept and shown whole when it fails.
    pub async fn build(&self, dir: &Path, tag: &str) -> Result<ImageConfig, ContainerError> {
        let shown = dir.display().to_string();
        if !dir.join("Dockerfile").is_file() {
            return Err(ContainerError::Build {
                dir: shown,
                why: "no Dockerfile in that directory".into(),
                output: String::new(),
            });
        }
        let context = context_tar(dir).map_err(|e| ContainerError::Context {
            dir: shown.clone(),
            why: e.to_string(),
        })?;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut output = String::new();
        let mut failed = None;
        let mut stream =
            self.api
                .build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        output.push_str(&s);
                    }
                    if let Some(d) = info.error_detail {
                        failed = Some(d.message.unwrap_or_else(|| "the build failed".into()));
                    }
                }
                Err(e) => {
                    failed = Some(match e {
                        bollard::errors::Error::DockerStreamError { error } => error,
                        other => other.to_string(),
                    });
                    break;
                }
            }
        }
        if let Some(why) = failed {
            return Err(ContainerError::Build {
                dir: shown,
                why,
                output,
            });
        }
        self.image(tag).await
    }
}

/// The build context: every file under `dir` that `.dockerignore` does not exclude
/// (read with gitignore rules, which agree with Docker's for the usual patterns),
/// as an uncompressed tar.
fn context_tar(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let walk = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .hidden(false)
        .add_custom_ignore_filename(".dockerignore")
        .build();
    for entry in walk {
        let entry = entry.map_err(std::io::Error::other)?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(dir) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        tar.append_path_with_name(path, rel)?;
    }
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_replace_the_command_and_keep_the_entrypoint() {
        let img = ImageConfig {
            entrypoint: vec!["/entry.sh".into()],
            cmd: vec!["postgres".into()],
            ..Default::default()
        };
        assert_eq!(img.command(None), ["/entry.sh", "postgres"]);
        let args = ["postgres".to_string(), "-c".into(), "fsync=off".into()];
        assert_eq!(
            img.command(Some(&args)),
            ["/entry.sh", "postgres", "-c", "fsync=off"]
        );
        let bare = ImageConfig {
            cmd: vec!["redis-server".into()],
            ..Default::default()
        };
        assert_eq!(bare.command(Some(&["/bin/sh".to_string()])), ["/bin/sh"]);
    }
}
