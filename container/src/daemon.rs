//! The connection to the Docker daemon.

use crate::ContainerError;

/// Where the daemon listens unless `DOCKER_HOST` says otherwise.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A connected daemon, cheap to clone.
#[derive(Clone, Debug)]
pub struct Daemon {
    pub(crate) api: bollard::Docker,
}

impl Daemon {
    /// Connects to the local daemon and agrees on an API version both speak.
    pub async fn connect() -> Result<Daemon, ContainerError> {
        let socket = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_SOCKET.into());
        let no_daemon = |why: String| ContainerError::NoDaemon {
            socket: socket.clone(),
            why,
        };
        let api =
            bollard::Docker::connect_with_unix_defaults().map_err(|e| no_daemon(e.to_string()))?;
        // The version call is the first request: it fails at once when nothing listens.
        let api = api
            .negotiate_version()
            .await
            .map_err(|e| no_daemon(e.to_string()))?;
        Ok(Daemon { api })
    }

    /// The API version agreed on, for logs.
    pub fn api_version(&self) -> String {
        self.api.client_version().to_string()
    }
}
