//! `faultbox mcp`: a Model Context Protocol server on stdio, so that LLM agents can
//! drive Faultbox through tools: `run_test`, `run_single_test`, `list_tests`,
//! `check_spec`, `generate_faults`, `init_from_compose` and `init_spec`.
//!
//! This module owns the server's process: its protocol streams, its shutdown, and the
//! `faultbox test` children it starts ([`child`]). Nothing but protocol reaches the
//! client's stdout: the real stdout is kept for the protocol alone and descriptor 1
//! is pointed at stderr, so a stray print (a library's, a spec's) cannot corrupt a
//! message; logs go to stderr. Runs are child processes, so their output and their
//! services stay apart from the protocol, and a cancelled request, a client that
//! closes stdin, or SIGTERM stops them the way Ctrl-C stops `faultbox test`.

pub mod child;
pub mod progress;
pub mod results;
mod tools;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::time::Duration;

use rmcp::ServiceExt as _;
use tokio_util::sync::CancellationToken;

/// Exit code when SIGINT or SIGTERM ended the server.
const EXIT_INTERRUPTED: i32 = 130;

/// Runs the server until the client closes stdin or a signal stops it.
pub fn run() -> i32 {
    crate::logging::init(
        crate::logging::Format::Json,
        tracing::Level::WARN,
        format!("{:016x}", std::process::id()),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("faultbox-mcp")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultbox: error: mcp: starting the runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(serve());
    // A read of the client's stdin may still be pending in a blocking thread.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn serve() -> i32 {
    let shutdown = CancellationToken::new();
    let (input, output) = match protocol_streams(shutdown.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("faultbox: error: mcp: setting up stdio: {e}");
            return 1;
        }
    };
    let server = tools::Faultbox::new(shutdown.clone());
    let running = server.running();
    let service = match server.serve((input, output)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("faultbox: error: mcp: {e}");
            return 1;
        }
    };
    let signalled = CancellationToken::new();
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (shutdown, signalled) = (shutdown.clone(), signalled.clone());
        let stop = service.cancellation_token();
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::spawn(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                signalled.cancel();
                shutdown.cancel();
                stop.cancel();
            });
        }
    }
    let _ = service.waiting().await;
    // Whatever still runs is stopped, and waited for: its services go with it.
    shutdown.cancel();
    if !running
        .wait_idle(child::GRACE + Duration::from_secs(5))
        .await
    {
        tracing::warn!("some faultbox test runs did not stop in time");
    }
    if signalled.is_cancelled() {
        EXIT_INTERRUPTED
    } else {
        0
    }
}

/// The protocol's input and output: pipes that threads fill from the real stdin and
/// drain to the real stdout. Descriptor 1 then points at stderr. Blocking copies in
/// threads of their own work whatever the client gave us (pipes, sockets, a
/// terminal) and never change the flags of descriptors the client shares with us.
/// The end of stdin cancels `eof`: the client is gone, so its runs are stopped.
fn protocol_streams(
    eof: CancellationToken,
) -> std::io::Result<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    let mut real_out = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut real_in = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    // SAFETY: dup2 only changes the descriptor table; both descriptors are open.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    let (out_tx, out_rx) = tokio::net::unix::pipe::pipe()?;
    let mut out_rx = File::from(out_rx.into_blocking_fd()?);
    std::thread::Builder::new()
        .name("faultbox-mcp-out".into())
        .spawn(move || {
            let _ = std::io::copy(&mut out_rx, &mut real_out);
            let _ = real_out.flush();
        })?;
    let (in_tx, in_rx) = tokio::net::unix::pipe::pipe()?;
    let mut in_tx = File::from(in_tx.into_blocking_fd()?);
    std::thread::Builder::new()
        .name("faultbox-mcp-in".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match real_in.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if in_tx.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            eof.cancel();
        })?;
    Ok((in_rx, out_tx))
}
