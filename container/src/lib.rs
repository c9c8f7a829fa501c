//! Container services through the Docker API (`bollard`): the images a spec names or
//! builds, containers created for one run and labelled with it, their stop and
//! removal, and the sweep of what dead runs left behind.
//!
//! What runs inside a container (the shim hand-off, the network between services)
//! is the executor's; this crate only speaks to the Docker daemon, so the heavy HTTP
//! client it needs is built once and not with every change to the engine.
//!
//! - [`daemon`]: connecting, with the API version negotiated (Debian's docker.io
//!   speaks 1.41).
//! - [`image`]: an image present on the host, or one built from a directory.
//! - [`run`]: creating, starting, stopping and removing one container.
//! - [`owner`]: the labels that tie a container to the process that made it, and the
//!   sweep that removes only what dead processes left.

pub mod daemon;
pub mod image;
pub mod owner;
pub mod run;

pub use daemon::Daemon;
pub use image::ImageConfig;
pub use run::{Container, ContainerSpec};

/// What can go wrong talking to Docker; each message names what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no Docker daemon at {socket}: {why} (install docker.io and start dockerd)")]
    NoDaemon { socket: String, why: String },
    #[error("image {image:?} is not on this host: build it (`docker build -t {image} DIR`) or load it (`docker load`); Faultbox does not pull images")]
    ImageMissing { image: String },
    #[error("building {dir}: {why}\n{output}")]
    Build {
        dir: String,
        why: String,
        output: String,
    },
    #[error("reading the build context {dir}: {why}")]
    Context { dir: String, why: String },
    #[error("container {name}: {why}")]
    Container { name: String, why: String },
    #[error("Docker: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// The HTTP status of a daemon's error answer, if it was one.
pub(crate) fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
