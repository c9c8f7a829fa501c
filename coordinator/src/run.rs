//! `faultbox run`: one binary, in its namespaces, under the given fault rules.

use std::ffi::OsString;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use faultbox_executor::sandbox::session::{self, SessionConfig};
use faultbox_shim::rule::FaultRule;
use faultbox_shim::syscalls::Arch;

use crate::cli::RunArgs;
use crate::{decision_log, logging};

/// Exit code for errors of Faultbox itself (bad arguments, failure to start).
pub const EXIT_FAULTBOX_ERROR: i32 = 1;
/// Exit code when the target could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 127;

/// A validated `run` invocation: everything checked before anything starts.
struct Plan {
    config: SessionConfig,
    seed: u64,
    rules: usize,
    format: logging::Format,
    debug: bool,
}

fn plan(args: RunArgs) -> Result<Plan> {
    let arch = Arch::native();
    let mut rules = Vec::new();
    for text in &args.faults {
        let rule = FaultRule::parse(text).context("--fault")?;
        rule.syscalls(arch).context("--fault")?;
        rules.push(rule);
    }
    for text in &args.fs_faults {
        rules.push(FaultRule::parse_fs(text).context("--fs-fault")?);
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: expected KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--env {kv:?}: empty variable name");
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.into(), v.into()));
    }
    let name = args.command[0].to_string_lossy().into_owned();
    let program = session::resolve_program(&name)?;
    let shim = session::find_shim()?;
    let seed = args.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    });
    // Compiling the rules checks their globs too, before anything starts.
    let config = SessionConfig::for_rules(program, args.command.clone(), env, shim, &rules, seed)?;
    Ok(Plan {
        config,
        seed,
        rules: rules.len(),
        format: logging::Format::choose(args.log_format.as_deref()),
        debug: args.debug,
    })
}

/// Runs the command and returns the process exit code.
pub fn run(args: RunArgs) -> i32 {
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("faultbox: error: {e:#}");
            return EXIT_FAULTBOX_ERROR;
        }
    };
    let session_id = format!("{:016x}", plan.seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
    let level = if plan.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    logging::init(plan.format, level, session_id);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return EXIT_FAULTBOX_ERROR;
        }
    };
    match runtime.block_on(supervise(plan.config, plan.seed, plan.rules, plan.debug)) {
        Ok(code) => code,
        Err(e) => {
            let exec = e
                .downcast_ref::<session::SessionError>()
                .is_some_and(|s| s.is_exec_failure());
            tracing::error!(state = "failed", "{e:#}");
            if exec {
                EXIT_CANNOT_EXECUTE
            } else {
                EXIT_FAULTBOX_ERROR
            }
        }
    }
}

async fn supervise(config: SessionConfig, seed: u64, rules: usize, debug: bool) -> Result<i32> {
    tracing::info!(
        target: "engine",
        state = "starting",
        name = %config.program.display(),
        seed,
        rules,
        "session starting"
    );
    let mut signals = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ] {
        signals.push(signal(kind).context("installing signal handlers")?);
    }
    let (sink, logger) = decision_log::start(debug).context("starting the logger thread")?;
    let running = session::start(config, sink).await?;
    let [int, term, hup, quit] = &mut signals[..] else {
        unreachable!("four signal streams were created")
    };
    let outcome = {
        let wait = running.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                outcome = &mut wait => break outcome,
                _ = int.recv() => running.signal(libc::SIGINT),
                _ = term.recv() => running.signal(libc::SIGTERM),
                _ = hup.recv() => running.signal(libc::SIGHUP),
                _ = quit.recv() => running.signal(libc::SIGQUIT),
            }
        }
    };
    // The supervisor has ended and dropped its sink: wait for the last lines.
    let _ = tokio::task::spawn_blocking(move || logger.join()).await;
    let code = outcome.exit.code();
    let duration = outcome.duration.as_nanos() as u64;
    if code == 0 {
        tracing::info!(target: "engine", state = "stopped", exit_code = code, duration, "session completed");
    } else {
        tracing::info!(target: "engine", state = "stopped", exit_code = code, duration, "target exited with error");
    }
    Ok(code)
}
