//! One container's life: created with its run's labels, started, stopped with
//! SIGTERM then SIGKILL after the grace, and removed with its anonymous volumes.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::owner::{this_process, OWNER_LABEL, RUN_LABEL};
use crate::{status, ContainerError, Daemon};

/// A host path mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// The container's name: unique on the host (it carries the run's job id).
    pub name: String,
    /// The job this container serves (the `faultbox.run` label).
    pub run: String,
    pub image: String,
    /// The whole command, entrypoint included: the image's own is replaced by it.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub binds: Vec<Bind>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Docker's network mode; `none` gives the container a namespace with only
    /// loopback, which Faultbox then connects to the other services.
    pub network_mode: String,
    /// The `faultbox.owner` label; this process when `None`.
    pub owner: Option<String>,
}

/// A created container.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
}

/// How a container stands, from an inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub running: bool,
    /// Its main process as the host sees it (0 when not running).
    pub pid: i32,
    pub exit_code: Option<i64>,
}

impl Daemon {
    /// Creates (does not start) the container `spec` describes.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container, ContainerError> {
        let (entrypoint, cmd) = match spec.command.split_first() {
            Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
            None => return Err(ContainerError::Container {
                name: spec.name.clone(),
                why:
                    "nothing to run: the image has no entrypoint or command and no args= were given"
                        .into(),
            }),
        };
        let labels = HashMap::from([
            (RUN_LABEL.to_string(), spec.run.clone()),
            (
                OWNER_LABEL.to_string(),
                spec.owner.clone().unwrap_or_else(this_process),
            ),
        ]);
        let binds = spec
            .binds
            .iter()
            .map(|b| {
                format!(
                    "{}:{}{}",
                    b.host,
                    b.container,
                    if b.read_only { ":ro" } else { "" }
                )
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(entrypoint),
            cmd: Some(cmd),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            working_dir: spec.working_dir.clone(),
            user: spec.user.clone(),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(spec.network_mode.clone()),
                // Docker turns IPv6 off in a container's namespace; `localhost` is
                // `::1` first for many clients, and the relays listen there too.
                sysctls: Some(HashMap::from([(
                    "net.ipv6.conf.all.disable_ipv6".to_string(),
                    "0".to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created =
            self.api
                .create_container(Some(opts), body)
                .await
                .map_err(|e| match status(&e) {
                    Some(404) => ContainerError::ImageMissing {
                        image: spec.image.clone(),
                    },
                    _ => ContainerError::Container {
                        name: spec.name.clone(),
                        why: e.to_string(),
                    },
                })?;
        Ok(Container {
            id: created.id,
            name: spec.name.clone(),
        })
    }

    /// Starts `c` and returns its state (its main process's host pid).
    pub async fn start(&self, c: &Container) -> Result<State, ContainerError> {
        self.api
            .start_container(&c.id, None)
            .await
            .map_err(|e| ContainerError::Container {
                name: c.name.clone(),
                why: format!("starting: {e}"),
            })?;
        self.state(c).await
    }

    /// How `c` stands now.
    pub async fn state(&self, c: &Container) -> Result<State, ContainerError> {
        let inspect = self.api.inspect_container(&c.id, None).await?;
        let s = inspect.state.unwrap_or_default();
        Ok(State {
            running: s.running.unwrap_or(false),
            pid: s.pid.unwrap_or(0) as i32,
            exit_code: s.exit_code,
        })
    }

    /// SIGTERM, SIGKILL after `grace` (whole seconds, at least one), then removal
    /// with the container's anonymous volumes. A container already gone is fine.
    pub async fn stop_and_remove(
        &self,
        c: &Container,
        grace: Duration,
    ) -> Result<(), ContainerError> {
        let t = grace.as_secs().max(1) as i32;
        let stop = StopContainerOptionsBuilder::default().t(t).build();
        match self.api.stop_container(&c.id, Some(stop)).await {
            Ok(()) => {}
            // 304: not running; 404: gone.
            Err(e) if matches!(status(&e), Some(304 | 404)) => {}
            Err(e) => return Err(e.into()),
        }
        self.remove(c).await
    }

    /// Removes `c` at once (killing it if it runs), with its anonymous volumes.
    pub async fn remove(&self, c: &Container) -> Result<(), ContainerError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.api.remove_container(&c.id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies `c`'s output into `stdout` and `stderr` as it comes, until the container
    /// ends: the same files a binary service writes.
    pub async fn follow_output(
        &self,
        c: &Container,
        mut stdout: impl std::io::Write,
        mut stderr: impl std::io::Write,
    ) {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        let mut stream = self.api.logs(&c.id, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            let _ = match chunk {
                bollard::container::LogOutput::StdErr { message } => stderr.write_all(&message),
                other => stdout.write_all(&other.into_bytes()),
            };
        }
    }

    /// The last `lines` lines of `c`'s output, stdout and stderr together, for
    /// messages about a container that failed.
    pub async fn logs(&self, c: &Container, lines: usize) -> String {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut out = String::new();
        let mut stream = self.api.logs(&c.id, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out
    }
}
