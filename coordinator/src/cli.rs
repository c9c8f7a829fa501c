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
    /// Run the tests of a Starlark spec against real services.
    Test(Box<TestArgs>),
    /// Check a spec without running anything: load errors (exit 1), and findings with
    /// a code and a suggestion (exit 2); exit 0 when clean.
    Check {
        /// The spec file.
        #[arg(value_name = "FILE")]
        spec: std::path::PathBuf,
        /// Output format: one finding a line, or a JSON document on stdout.
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        format: Option<String>,
    },
    /// Write a starter spec, editor stubs or Claude Code commands.
    Init {
        /// The binary to write a spec for.
        #[arg(value_name = "BINARY")]
        binary: Option<String>,
        /// Service name.
        #[arg(long, default_value = "myapp")]
        name: String,
        /// Port number.
        #[arg(long, default_value_t = 8080)]
        port: u32,
        /// Protocol: http or tcp.
        #[arg(long, default_value = "http")]
        protocol: String,
        /// Write to this file instead of printing.
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// Generate the spec from a docker-compose file.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "docker-compose.yml")]
        from_compose: Option<std::path::PathBuf>,
        /// Write typing stubs for editors (typings/, .vscode/).
        #[arg(long)]
        vscode: bool,
        /// Write Claude Code slash commands (.claude/commands/) and .mcp.json.
        #[arg(long)]
        claude: bool,
        /// Replace files that exist (a symlink is replaced, not followed).
        #[arg(long)]
        force: bool,
    },
    /// Generate failure scenarios from a spec's scenario() registrations.
    Generate {
        /// The spec file.
        #[arg(value_name = "FILE")]
        spec: std::path::PathBuf,
        /// Write everything to this one file (default: <scenario>.faults.star each).
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// Only this scenario.
        #[arg(long, value_name = "NAME")]
        scenario: Option<String>,
        /// Only faults of this dependency.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// network, disk or all.
        #[arg(long, value_name = "CAT", default_value = "all")]
        category: String,
        /// List the mutations without writing files.
        #[arg(long)]
        dry_run: bool,
        /// Replace files that exist (a symlink is replaced, not followed).
        #[arg(long)]
        force: bool,
    },
    /// Manage a fleet's certificates.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Serve jobs to the fleet's coordinators over QUIC.
    Executor(ExecutorArgs),
    /// Serve the Model Context Protocol on stdin/stdout for LLM agents: run, list,
    /// check and generate tests as MCP tools (nothing but protocol goes to stdout).
    Mcp,
    /// Compare two normalized traces (exit 0 identical, 2 different).
    Diff {
        #[arg(value_name = "A")]
        a: std::path::PathBuf,
        #[arg(value_name = "B")]
        b: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// The spec file.
    #[arg(value_name = "FILE")]
    pub spec: std::path::PathBuf,

    /// Run only this test (`happy_path` or `test_happy_path`).
    #[arg(long = "test", value_name = "NAME")]
    pub test: Option<String>,

    /// Run each test N times with seeds 0..N-1, stopping a test at its first failure
    /// (default 1; 100 with --explore=sample).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: Option<u64>,

    /// Explore the orderings parallel() controls: all of them (K! runs) or a sample.
    #[arg(long, value_name = "MODE", value_parser = ["all", "sample"])]
    pub explore: Option<String>,

    /// Use this seed (replays a run's fault decisions).
    #[arg(long, value_name = "N", conflicts_with = "runs")]
    pub seed: Option<u64>,

    /// Which results to print: all, or only failures.
    #[arg(long, value_name = "WHICH", default_value = "all", value_parser = ["all", "fail"])]
    pub show: String,

    /// Print results as JSON on stdout (human output stays on stderr).
    #[arg(long, value_name = "FORMAT", value_parser = ["json"])]
    pub format: Option<String>,

    /// Also write the JSON results to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,

    /// Write a ShiViz trace (events with vector clocks) to this file.
    #[arg(long, value_name = "FILE")]
    pub shiviz: Option<std::path::PathBuf>,

    /// Write the normalized trace (for `faultbox diff`) to this file.
    #[arg(long, value_name = "FILE")]
    pub normalize: Option<std::path::PathBuf>,

    /// How long each test's body may run before it fails as a timeout (a fault
    /// scenario's own `timeout=` takes its place).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,

    /// Delay faults advance a virtual clock instead of sleeping; nanosleep returns at
    /// once and clock_gettime syscalls read the virtual clock.
    #[arg(long)]
    pub virtual_time: bool,

    /// Runs only this CI shard's tests: `hash:K/N` (stable when tests are added) or
    /// `slice:K/N` (every N-th test in spec order); the others are reported as skipped.
    #[arg(long, value_name = "KIND:K/N")]
    pub partition: Option<crate::partition::Partition>,

    /// Also writes a JUnit XML report: one testcase per run.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,

    /// Also writes an HTML report: the summary, the fault matrix, every run and its
    /// trace as a space-time diagram, in one file that needs no network to open.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,

    /// Runs the jobs on these executors instead of in this process:
    /// `HOST:PORT[,HOST:PORT...]`, or `@FILE` with one address a line.
    #[arg(long, value_name = "ADDRS", requires = "fleet")]
    pub executors: Option<String>,

    /// The fleet directory holding the CA and the coordinator's identity.
    #[arg(long, value_name = "DIR")]
    pub fleet: Option<std::path::PathBuf>,

    /// How many runs go side by side on this host, each in its own sandbox
    /// (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub slots: Option<u64>,

    /// Load and check the spec and show the test plan without starting anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Log format; when omitted, console on a terminal and json otherwise.
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = ["console", "json"])]
    pub log_format: Option<String>,

    /// Debug logging: every intercepted syscall, service lifecycle, return values.
    #[arg(long)]
    pub debug: bool,

    /// Writes a JSON line per finished run (`{"done","total","failed"}`) to this
    /// inherited file descriptor: how `faultbox mcp` follows the runs it starts.
    #[arg(long, value_name = "FD", hide = true)]
    pub progress_fd: Option<i32>,
}

/// A test time limit: a duration such as `90s` or `5m`, more than 0 and at most a day.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = faultbox_shim::rule::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("a time limit must be more than 0".into());
    }
    if d > std::time::Duration::from_secs(24 * 3600) {
        return Err("a time limit is at most 24h".into());
    }
    Ok(d)
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

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Create a fleet in DIR: its CA and the coordinator's identity.
    Init {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
        /// How long the coordinator's certificate is valid (the CA: ten times longer).
        #[arg(long, value_name = "N", default_value_t = 365)]
        days: u32,
    },
    /// Issue an executor's identity (DIR/NAME.pem, DIR/NAME.key) from the fleet CA.
    Issue {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
        #[arg(value_name = "NAME")]
        name: String,
        /// How long the certificate is valid; 0 makes one already expired.
        #[arg(long, value_name = "N", default_value_t = 365)]
        days: u32,
    },
}

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The UDP address to serve on, e.g. 0.0.0.0:7070.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// The fleet directory holding the CA and this executor's identity.
    #[arg(long, value_name = "DIR")]
    pub fleet: std::path::PathBuf,
    /// This executor's name: its identity is DIR/NAME.pem and DIR/NAME.key.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Jobs run side by side (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub slots: Option<u64>,
    /// Where bundles are kept and unpacked: a directory only this user can write
    /// (default: /var/lib/faultbox/executor-NAME as root, else
    /// $XDG_STATE_HOME/faultbox/executor-NAME or ~/.local/state/faultbox/executor-NAME).
    #[arg(long, value_name = "DIR")]
    pub work: Option<std::path::PathBuf>,
    /// Debug logging.
    #[arg(long)]
    pub debug: bool,
}
