//! `faultbox fleet init|issue` and `faultbox executor`.

use faultbox_executor::fleet::identity;
use faultbox_executor::fleet::server::{self, ServeConfig};
use faultbox_executor::fleet::workdir;

use crate::cli::{ExecutorArgs, FleetCommand};
use crate::logging;

fn error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("faultbox: error: {msg}");
    1
}

pub fn fleet(cmd: FleetCommand) -> i32 {
    match cmd {
        FleetCommand::Init { dir, days } => match identity::init(&dir, days) {
            Ok(()) => {
                eprintln!(
                    "fleet created in {}: ca.pem, ca.key (keep it private), coordinator.pem, coordinator.key",
                    dir.display()
                );
                0
            }
            Err(e) => error(format!("fleet init: {e}")),
        },
        FleetCommand::Issue { dir, name, days } => match identity::issue(&dir, &name, days) {
            Ok(()) if name == identity::COORDINATOR => {
                eprintln!(
                    "issued the coordinator's identity again: {0}/{name}.pem and {0}/{name}.key, used by faultbox test --fleet {0}",
                    dir.display()
                );
                0
            }
            Ok(()) => {
                eprintln!(
                    "issued {name}: {0}/{name}.pem and {0}/{name}.key; copy them and {0}/ca.pem to the executor's fleet directory",
                    dir.display()
                );
                0
            }
            Err(e) => error(format!("fleet issue: {e}")),
        },
    }
}

pub fn executor(args: ExecutorArgs) -> i32 {
    if !identity::valid_name(&args.name) {
        return error(format!(
            "--name {:?}: use letters, digits, '-' and '_'",
            args.name
        ));
    }
    let work = match args
        .work
        .map_or_else(|| workdir::default_for(&args.name), Ok)
    {
        Ok(w) => w,
        Err(e) => return error(format!("--work: {e}")),
    };
    // One executor per work directory, and only one nobody else can write. Jobs'
    // scratch directories live under it, so whatever a killed executor left behind
    // is swept when it starts again.
    let claimed = match workdir::claim(&work) {
        Ok(c) => c,
        Err(e) => return error(format!("--work: {e}")),
    };
    // Before any thread of ours starts: jobs make their scratch directories here.
    std::env::set_var("TMPDIR", claimed.path().join("tmp"));
    logging::init(
        logging::Format::choose(None),
        if args.debug {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        },
        format!("{:016x}", std::process::id()),
    );
    if let Err(e) = faultbox_executor::sandbox::netns::Sandbox::probe() {
        return error(e);
    }
    let shim = match faultbox_executor::sandbox::session::find_shim() {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let slots = args
        .slots
        .map_or_else(crate::coordinator::default_slots, |n| n as usize);
    let runtime = match crate::coordinator::runtime() {
        Ok(rt) => rt,
        Err(e) => return error(e),
    };
    let cfg = ServeConfig {
        listen: args.listen,
        fleet: args.fleet,
        name: args.name,
        slots,
        work: claimed.path().to_path_buf(),
        shim,
    };
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let code = match runtime.block_on(server::serve(cfg, stop)) {
        Ok(()) => 0,
        Err(e) => error(e),
    };
    drop(claimed);
    code
}
