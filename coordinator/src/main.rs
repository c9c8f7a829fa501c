//! `faultbox`: the command line. Every subcommand returns its exit code; errors of
//! Faultbox itself exit 1, and `run` passes the target's code through.

mod check;
mod cli;
mod coordinator;
mod decision_log;
mod diagnostics;
mod diff;
mod fleet_cmd;
mod generate;
mod html_report;
mod init;
mod junit;
mod logging;
mod mcp;
mod normalize;
mod output;
mod partition;
mod progress;
mod remote;
mod report;
mod run;
mod shiviz;
mod stdout;
mod test_cmd;

use clap::Parser;

/// Starlark evaluation (a spec's top level, each test body) runs under a memory
/// budget, which the allocator enforces.
#[global_allocator]
static ALLOC: faultbox_spec::limits::memory::Bounded = faultbox_spec::limits::memory::Bounded;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => run::EXIT_FAULTBOX_ERROR,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.command {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Test(args) => test_cmd::run(*args),
        cli::Command::Check { spec, format } => check::run(&spec, format.as_deref()),
        cli::Command::Diff { a, b } => diff::run(&a, &b),
        cli::Command::Mcp => mcp::run(),
        cli::Command::Fleet(cmd) => fleet_cmd::fleet(cmd),
        cli::Command::Executor(args) => fleet_cmd::executor(args),
        cli::Command::Init {
            binary,
            name,
            port,
            protocol,
            output,
            from_compose,
            vscode,
            claude,
            force,
        } => {
            let here = std::path::Path::new(".");
            let existing = if force {
                output::Existing::Replace
            } else {
                output::Existing::Refuse
            };
            match (binary, from_compose, vscode, claude) {
                (_, _, true, _) => init::vscode(here, existing),
                (_, _, _, true) => init::claude(here, existing),
                (None, Some(file), _, _) => init::from_compose(&file, output.as_deref(), existing),
                (Some(b), None, _, _) => {
                    init::for_binary(&b, &name, port, &protocol, output.as_deref(), existing)
                }
                (Some(_), Some(_), _, _) => {
                    eprintln!("faultbox: error: give a binary or --from-compose, not both");
                    1
                }
                (None, None, _, _) => {
                    eprintln!("faultbox: error: faultbox init needs a binary, --from-compose, --vscode or --claude");
                    1
                }
            }
        }
        cli::Command::Generate {
            spec,
            output,
            scenario,
            service,
            category,
            dry_run,
            force,
        } => generate::run(
            &spec,
            output.as_deref(),
            generate::Options {
                scenario,
                service,
                category,
                existing: if force {
                    output::Existing::Replace
                } else {
                    output::Existing::Refuse
                },
            },
            dry_run,
        ),
    };
    std::process::exit(code);
}
