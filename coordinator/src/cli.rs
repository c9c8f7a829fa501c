//! The command line, as the CLI reference describes it.

use std::ffi::OsString;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "faultbox",
    version,
    about = "Inject real failures into real programs",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch a binary in isolated namespaces with optional syscall fault injection.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Fault rule: SYSCALL=ERRNO:PROB%[:PATH_GLOB][:TRIGGER] or
    /// SYSCALL=delay:DURATION:PROB%[:PATH_GLOB][:TRIGGER]. Repeatable.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,

    /// Like --fault with filesystem operation names: open, read, write, sync, fsync,
    /// mkdir, delete, stat. Repeatable.
    #[arg(long = "fs-fault", value_name = "SPEC")]
    pub fs_faults: Vec<String>,

    /// Set an environment variable for the target. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Log format; when omitted, console on a terminal and json otherwise.
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = ["console", "json"])]
    pub log_format: Option<String>,

    /// Log every intercepted syscall, not only faulted ones.
    #[arg(long)]
    pub debug: bool,

    /// Seed for probability rolls, for replaying a run's decisions.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// The program to run, then its arguments (use -- before arguments that start with -).
    #[arg(value_name = "BINARY", required = true, trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
    pub command: Vec<OsString>,
}
