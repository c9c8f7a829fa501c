//! Container services: a service with `image=` or `build=` runs in a Docker container
//! whose entrypoint is the statically linked shim. The shim hands its seccomp
//! listener over a unix socket (`sandbox::handoff`), and waits there until the
//! container's network namespace has joined the network between services: Docker
//! gives it only loopback (`network_mode: none`), the service's namespace becomes the
//! container's (`NetNs::adopt`), and the relays open there. Then the image's own
//! entrypoint and command run, under the same engine as a binary.
//!
//! The container is named after the job and the service and labelled with its job
//! and owning process (`faultbox_container::owner`); [`Guard`] removes it, with its
//! anonymous volumes, however the test ends, and containers of processes that died
//! are swept by the next one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use faultbox_container::run::Bind;
use faultbox_container::{Container, ContainerSpec, Daemon};
use faultbox_shim::handoff::{ShimArgs, SocketHandoff, Stage};
use faultbox_spec::model::{ImageSource, Service};

use crate::engine::rules::EngineSlot;
use crate::engine::supervisor::{self, EventSink, Holder};
use crate::engine::vclock::VirtualClock;
use crate::sandbox::handoff::{HandoffError, HandoffSocket};
use crate::sandbox::launch::Exit;
use crate::sandbox::session::{self, Running};

/// Where the shim and the hand-off socket's directory appear inside a container.
const SHIM_INSIDE: &str = "/.faultbox/shim";
const RUN_INSIDE: &str = "/.faultbox/run";

/// How long a container may take from start to its shim's hand-off, and from the
/// release to its target's exec.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(20);

/// What a container service needs to start.
pub struct ContainerConfig<'a> {
    pub svc: &'a Service,
    /// The job (and test) this container serves: part of its name and labels.
    pub run: String,
    /// Syscall numbers the filter notifies; empty for no filter.
    pub notify: Vec<i32>,
    /// The service's environment on top of the image's: what Faultbox injects and
    /// what the spec sets.
    pub env: Vec<(String, String)>,
    /// The test's hosts file, mounted over `/etc/hosts`.
    pub hosts: PathBuf,
    /// The test's scratch directory: the hand-off socket lives there.
    pub scratch: PathBuf,
    pub engine: EngineSlot,
    pub vclock: Option<Arc<VirtualClock>>,
    pub holder: Option<Arc<dyn Holder>>,
    /// Where the container's stdout and stderr go instead of `SERVICE.stdout` and
    /// `SERVICE.stderr` in the scratch directory (an event source's pipes).
    pub output: (Option<std::fs::File>, Option<std::fs::File>),
}

/// A started container service.
pub struct Started {
    pub running: Running,
    pub guard: Guard,
}

/// Removes its container when dropped (or at [`Guard::remove`]), with the
/// container's anonymous volumes.
pub struct Guard {
    daemon: Daemon,
    container: Container,
    rt: tokio::runtime::Handle,
    removed: AtomicBool,
}

impl Guard {
    /// Removes the container. Idempotent.
    pub fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (daemon, c) = (self.daemon.clone(), self.container.clone());
        let rt = self.rt.clone();
        // A thread of its own: the caller may be on the runtime.
        let _ = std::thread::spawn(move || {
            rt.block_on(async {
                if let Err(e) = daemon.remove(&c).await {
                    tracing::warn!(target: "engine", container = %c.name, error = %e, "removing the container");
                }
            })
        })
        .join();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The statically linked shim mounted into containers: `$FAULTBOX_CONTAINER_SHIM`,
/// `faultbox-shim-static` beside the running binary, or what
/// `scripts/build-static-shim.sh` builds in the target directory beside it.
pub fn find_static_shim() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FAULTBOX_CONTAINER_SHIM") {
        // Docker takes a relative source for a volume's name.
        let p = PathBuf::from(p);
        return Ok(std::path::absolute(&p).unwrap_or(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let candidates = [
        dir.join("faultbox-shim-static"),
        dir.join(format!("../static-shim/{triple}/release/faultbox-shim")),
        dir.join(format!("../../static-shim/{triple}/release/faultbox-shim")),
    ];
    candidates
        .iter()
        .find(|c| c.is_file())
        .map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()))
        .ok_or_else(|| {
            "no statically linked faultbox-shim for containers: set FAULTBOX_CONTAINER_SHIM \
             or build it with scripts/build-static-shim.sh"
                .to_string()
        })
}

/// A Docker container name from the job and the service: letters, digits, `_.-`.
fn container_name(run: &str, service: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("faultbox-{}-{}", clean(run), clean(service))
}

/// The image's USER for the shim's `--user`, which reads names from the image's own
/// account files; `None` for root.
fn shim_user(image_user: Option<&str>) -> Option<String> {
    let u = image_user.filter(|u| !u.is_empty())?;
    let who = u.split(':').next().unwrap_or(u);
    (who != "root" && who != "0").then(|| u.to_string())
}

/// Starts `cfg.svc`'s container. Blocking: call it off the runtime `rt`.
/// `join_network` is called with the container's main process once its shim has
/// connected, before the target runs: the caller makes the container's namespace
/// the service's there.
pub fn start(
    cfg: ContainerConfig<'_>,
    rt: &tokio::runtime::Handle,
    sink: Arc<dyn EventSink>,
    join_network: &dyn Fn(i32) -> Result<(), String>,
) -> Result<Started, String> {
    let svc = cfg.svc;
    let c = svc
        .container
        .as_ref()
        .ok_or_else(|| "not a container service".to_string())?;
    let daemon = rt.block_on(Daemon::connect()).map_err(|e| e.to_string())?;
    sweep_once(rt, &daemon);
    let image = match &c.source {
        ImageSource::Image(name) => rt.block_on(daemon.image(name)),
        ImageSource::Build(dir) => {
            let path = svc.from_home(dir);
            let tag = format!(
                "faultbox-build/{}:{:016x}",
                container_name("", &svc.name).trim_start_matches("faultbox--"),
                hash(&path)
            );
            rt.block_on(daemon.build(&path, &tag))
        }
    }
    .map_err(|e| e.to_string())?;
    let tag = match &c.source {
        ImageSource::Image(name) => name.clone(),
        ImageSource::Build(_) => image.id.clone(),
    };
    let args = (!svc.args.is_empty()).then_some(svc.args.as_slice());
    let command = image.command(args);
    let Some(program) = command.first().cloned() else {
        return Err("its image has no entrypoint or command, and no args= were given".into());
    };
    let user = shim_user(image.user.as_deref());
    let shim = find_static_shim()?;

    let handoff_dir = cfg.scratch.join(format!("{}.handoff", svc.name));
    std::fs::create_dir_all(&handoff_dir)
        .map_err(|e| format!("creating {}: {e}", handoff_dir.display()))?;
    let socket = HandoffSocket::bind(&handoff_dir, &token(&svc.name)).map_err(|e| e.to_string())?;
    let shim_args = ShimArgs {
        notify: cfg.notify.clone(),
        shared_net: false,
        hosts: None,
        user,
        program: PathBuf::from(&program),
        argv: command.iter().map(OsString::from).collect(),
        socket: Some(SocketHandoff {
            path: Path::new(RUN_INSIDE).join(socket.file_name()),
            token: socket.token().to_string(),
        }),
    };
    let mut entry = vec![SHIM_INSIDE.to_string()];
    entry.extend(
        shim_args
            .to_args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let mut binds = vec![
        Bind {
            host: shim.display().to_string(),
            container: SHIM_INSIDE.into(),
            read_only: true,
        },
        Bind {
            host: handoff_dir.display().to_string(),
            container: RUN_INSIDE.into(),
            read_only: false,
        },
        Bind {
            host: cfg.hosts.display().to_string(),
            container: "/etc/hosts".into(),
            read_only: true,
        },
    ];
    for (host, inside) in &c.volumes {
        binds.push(Bind {
            host: svc.from_home(host).display().to_string(),
            container: inside.clone(),
            read_only: false,
        });
    }
    let spec = ContainerSpec {
        name: container_name(&cfg.run, &svc.name),
        run: cfg.run.clone(),
        image: tag,
        command: entry,
        env: cfg.env.clone(),
        binds,
        working_dir: None,
        // Root until the shim has handed over; it switches to the image's user.
        user: Some("0:0".into()),
        network_mode: "none".into(),
        owner: None,
    };
    let container = rt
        .block_on(daemon.create(&spec))
        .map_err(|e| e.to_string())?;
    let guard = Guard {
        daemon: daemon.clone(),
        container: container.clone(),
        rt: rt.clone(),
        removed: AtomicBool::new(false),
    };
    rt.block_on(daemon.start(&container))
        .map_err(|e| e.to_string())?;
    // Its output goes where a binary's does: SERVICE.stdout and SERVICE.stderr.
    let open = |ext: &str| std::fs::File::create(cfg.scratch.join(format!("{}.{ext}", svc.name)));
    let (out, err) = cfg.output;
    let out = out.map_or_else(|| open("stdout"), Ok);
    let err = err.map_or_else(|| open("stderr"), Ok);
    if let (Ok(out), Ok(err)) = (out, err) {
        let (d, c) = (daemon.clone(), container.clone());
        rt.spawn(async move { d.follow_output(&c, out, err).await });
    }
    let failed = |e: HandoffError| -> String {
        let logs = rt.block_on(daemon.logs(&container, 20));
        let logs = logs.trim();
        let why = match e {
            HandoffError::Setup {
                stage: Stage::Exec,
                errno,
            } => format!(
                "executing {program:?} in the container: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            other => other.to_string(),
        };
        if logs.is_empty() {
            why
        } else {
            format!("{why}; the container's output ends with:\n{logs}")
        }
    };
    let mut accepted = socket.accept(HANDOFF_TIMEOUT).map_err(failed)?;
    let pid = accepted.peer_pid;
    join_network(pid)?;
    let supervisor = match accepted.listener.take() {
        Some(listener) => Some(
            supervisor::spawn(
                listener,
                cfg.engine.clone(),
                rt.clone(),
                sink,
                pid,
                cfg.vclock.clone(),
                cfg.holder.clone(),
            )
            .map_err(|e| format!("supervising the container: {e}"))?,
        ),
        None => {
            accepted.conn.go().map_err(failed)?;
            None
        }
    };
    accepted.conn.wait_exec(HANDOFF_TIMEOUT).map_err(failed)?;
    let (d, c2, rt2) = (daemon.clone(), container.clone(), rt.clone());
    let exit_of: session::ExitOf = Arc::new(move || {
        let (d, c2, rt2) = (d.clone(), c2.clone(), rt2.clone());
        std::thread::spawn(move || {
            // The runtime reaps the process a moment after it ends.
            for _ in 0..200 {
                match rt2.block_on(d.state(&c2)) {
                    Ok(s) if !s.running => {
                        return Exit::Code(s.exit_code.unwrap_or(1) as i32);
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return Exit::Code(1),
                }
            }
            Exit::Code(1)
        })
        .join()
        .unwrap_or(Exit::Code(1))
    });
    let running = {
        // The pidfd is registered with the runtime's reactor.
        let _in = rt.enter();
        session::adopt(pid, supervisor, exit_of).map_err(|e| e.to_string())?
    };
    Ok(Started { running, guard })
}

/// A hand-off token from a service name.
fn token(service: &str) -> String {
    let t: String = service
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(64)
        .collect();
    if t.is_empty() {
        "service".into()
    } else {
        t
    }
}

fn hash(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// At an executor's start: removes the containers Faultbox processes that died left
/// (a killed executor's own included), if this host has a Docker daemon at all.
pub async fn sweep_at_start() {
    if std::env::var_os("DOCKER_HOST").is_none() && !Path::new("/var/run/docker.sock").exists() {
        return;
    }
    match Daemon::connect().await {
        Ok(d) => match d.sweep().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(target: "engine", containers = ?removed, "removed containers of runs that ended without cleaning up")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "engine", error = %e, "sweeping containers of dead runs")
            }
        },
        Err(e) => tracing::debug!(target: "engine", error = %e, "no Docker daemon to sweep"),
    }
}

/// Removes, once per process, the containers of Faultbox processes that died.
fn sweep_once(rt: &tokio::runtime::Handle, daemon: &Daemon) {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| match rt.block_on(daemon.sweep()) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(target: "engine", containers = ?removed, "removed containers of runs that ended without cleaning up")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(target: "engine", error = %e, "sweeping containers of dead runs"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_users() {
        assert_eq!(container_name("job 7/a", "db"), "faultbox-job-7-a-db");
        assert_eq!(shim_user(None), None);
        assert_eq!(shim_user(Some("root")), None);
        assert_eq!(shim_user(Some("0:0")), None);
        assert_eq!(shim_user(Some("999:998")).as_deref(), Some("999:998"));
        assert_eq!(shim_user(Some("postgres")).as_deref(), Some("postgres"));
        assert_eq!(token("my db!"), "mydb");
    }
}
