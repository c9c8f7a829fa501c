//! Helpers for tests that run the real `faultbox` binary on real targets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn faultbox() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_faultbox"));
    let shim = bin.with_file_name("faultbox-shim");
    assert!(
        shim.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        shim.display()
    );
    bin
}

/// The example target built with the workspace.
pub fn example_target() -> PathBuf {
    let t = faultbox().with_file_name("target");
    assert!(
        t.is_file(),
        "{} is missing: build the workspace first",
        t.display()
    );
    t
}

fn targets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets")
}

/// The C probe, compiled once per test binary.
pub fn probe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe");
            let st = Command::new("gcc")
                .args(["-O1", "-Wall", "-o"])
                .arg(&out)
                .arg(targets_dir().join("probe.c"))
                .arg("-lpthread")
                .status()
                .expect("gcc runs");
            assert!(st.success(), "compiling probe.c");
            out
        })
        .clone()
}

pub fn python_probe() -> PathBuf {
    targets_dir().join("probe.py")
}

/// A scratch directory under /tmp, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = PathBuf::from(format!("/tmp/fbtest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn path(&self, rel: &str) -> String {
        self.0.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one `faultbox run` did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Probe report lines: (op, arg, result).
    pub results: Vec<(String, String, String)>,
    pub logs: Vec<serde_json::Value>,
    pub elapsed: Duration,
}

impl Output {
    /// Results of `op` on `arg`, in order.
    pub fn of(&self, op: &str, arg: &str) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(o, a, _)| o == op && a == arg)
            .map(|(_, _, r)| r.as_str())
            .collect()
    }

    /// The single result of `op` on `arg`.
    pub fn one(&self, op: &str, arg: &str) -> &str {
        let r = self.of(op, arg);
        assert_eq!(
            r.len(),
            1,
            "expected one {op} {arg} in {:#?}\n{}",
            self.results,
            self.stderr
        );
        r[0]
    }

    pub fn logs_with(&self, msg: &str) -> Vec<&serde_json::Value> {
        self.logs.iter().filter(|l| l["msg"] == msg).collect()
    }

    pub fn target_pid(&self) -> Option<i64> {
        self.logs_with("target started")
            .first()
            .and_then(|l| l["pid"].as_i64())
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `faultbox run --log-format=json <flags> -- <target>` with a fresh PROBE_OUT.
pub fn run(flags: &[&str], target: &[&str]) -> Output {
    let mut cmd = Command::new(faultbox());
    cmd.arg("run")
        .arg("--log-format=json")
        .args(flags)
        .arg("--")
        .args(target);
    run_cmd(cmd)
}

/// Runs a prepared `faultbox` command, collecting the probe's report and logs, and
/// checks that the target did not outlive it.
pub fn run_cmd(mut cmd: Command) -> Output {
    let out_file = format!(
        "/dev/shm/faultbox-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let _ = std::fs::remove_file(&out_file);
    cmd.env("PROBE_OUT", &out_file).stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd.output().expect("faultbox runs");
    let elapsed = start.elapsed();
    let report = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let logs = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad json log {l:?}: {e}")))
        .collect();
    let results = report
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            (
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
            )
        })
        .collect();
    let output = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        results,
        logs,
        elapsed,
    };
    if let Some(pid) = output.target_pid() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "target pid {pid} outlived faultbox"
        );
    }
    output
}

/// Pids of processes whose command line contains `marker`.
///
/// Only processes of this checkout count: their executable or working directory is
/// under the workspace root or the temp directory, so another checkout's tests on the
/// same machine (with their own `target/debug/inventory`) are not taken for ours.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let root = root();
    let ours = |pid: i32| {
        ["exe", "cwd"].iter().any(|link| {
            std::fs::read_link(format!("/proc/{pid}/{link}"))
                .is_ok_and(|p| p.starts_with(&root) || p.starts_with(std::env::temp_dir()))
        })
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) && ours(pid) {
                found.push(pid);
            }
        }
    }
    found
}

/// (name, seed, result) of every run in a `faultbox test --format json` document.
pub fn summary(doc: &serde_json::Value) -> Vec<(String, u64, String)> {
    doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["seed"].as_u64().unwrap(),
                t["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The workspace root, where specs' relative paths start.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What a `faultbox` command printed and how it exited.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `faultbox <args>` in `dir`.
pub fn faultbox_at(dir: &Path, args: &[&str]) -> Out {
    faultbox_at_env(dir, args, &[])
}

/// Runs `faultbox <args>` in `dir` with `env` added to its environment. What a
/// `faultbox test` or `faultbox check` prints with `--format json` is validated
/// against its schema in `docs/schema/` (see [`validate_output`]).
#[allow(dead_code)]
pub fn faultbox_at_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = Command::new(faultbox())
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("faultbox runs");
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    validate_output(args, &out);
    out
}

/// The machine-readable documents Faultbox prints, each with a schema in
/// `docs/schema/`.
#[derive(Clone, Copy, Debug)]
pub enum Schema {
    /// `faultbox test --format json` and `--output FILE`.
    TestResults,
    /// `faultbox check --format json`.
    CheckResults,
}

impl Schema {
    /// The schema's text, read at compile time so a change to it rebuilds the tests.
    fn text(self) -> &'static str {
        match self {
            Schema::TestResults => include_str!("../../../docs/schema/test-results.schema.json"),
            Schema::CheckResults => {
                include_str!("../../../docs/schema/check-results.schema.json")
            }
        }
    }

    /// The compiled validator; `format` (timestamps) is checked too, not just noted.
    fn validator(self) -> &'static jsonschema::Validator {
        static TEST: OnceLock<jsonschema::Validator> = OnceLock::new();
        static CHECK: OnceLock<jsonschema::Validator> = OnceLock::new();
        let cell = match self {
            Schema::TestResults => &TEST,
            Schema::CheckResults => &CHECK,
        };
        cell.get_or_init(|| {
            let schema: serde_json::Value = serde_json::from_str(self.text())
                .unwrap_or_else(|e| panic!("{self:?}: the schema is not JSON: {e}"));
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{self:?}: not a valid JSON Schema: {e}"))
        })
    }
}

/// Where and how `doc` departs from `schema`; empty when it matches.
pub fn violations(schema: Schema, doc: &serde_json::Value) -> Vec<String> {
    schema
        .validator()
        .iter_errors(doc)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect()
}

/// Fails the test, listing every violation, if `doc` does not match `schema`.
pub fn validate(schema: Schema, doc: &serde_json::Value) {
    let errors = violations(schema, doc);
    if !errors.is_empty() {
        let mut text = doc.to_string();
        if text.len() > 4000 {
            let mut cut = 4000;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        panic!(
            "the document does not match docs/schema ({schema:?}):\n{}\n{text}",
            errors.join("\n")
        );
    }
}

/// Parses `text` as a document of `schema` and validates it.
pub fn parse_valid(schema: Schema, text: &str) -> serde_json::Value {
    let doc = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    validate(schema, &doc);
    doc
}

/// A `faultbox test --format json` (or `--output`) document, validated.
pub fn results(text: &str) -> serde_json::Value {
    parse_valid(Schema::TestResults, text)
}

/// The validated `faultbox test --format json` document `out` printed; its stderr
/// is shown if there is none.
pub fn results_of(out: &Out) -> serde_json::Value {
    if serde_json::from_str::<serde_json::Value>(&out.stdout).is_err() {
        panic!(
            "no JSON document on stdout (exit {}):\n{}\n{}",
            out.code, out.stdout, out.stderr
        );
    }
    results(&out.stdout)
}

/// What a run of `faultbox <args>` printed on stdout, checked against its schema when
/// `args` ask `faultbox test` or `faultbox check` for `--format json`: whenever it
/// printed something, and always when the exit code says the document was written
/// (0 or 2; `check` also writes one for a spec that does not load, with 1).
pub fn validate_output(args: &[&str], out: &Out) {
    let json = args
        .windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json")
        || args.contains(&"--format=json");
    // --dry-run prints its plan as text whatever the format.
    if !json || args.contains(&"--dry-run") {
        return;
    }
    let (schema, written) = match args.first() {
        Some(&"test") => (Schema::TestResults, [0, 2].contains(&out.code)),
        Some(&"check") => (Schema::CheckResults, [0, 1, 2].contains(&out.code)),
        _ => return,
    };
    if out.stdout.trim().is_empty() {
        assert!(
            !written,
            "faultbox {args:?} exited {} with no JSON on stdout:\n{}",
            out.code, out.stderr
        );
        return;
    }
    parse_valid(schema, &out.stdout);
}

/// Waits until `count(processes with marker)` satisfies `ok`, failing with `what`
/// after `secs` seconds.
pub fn wait_processes(marker: &str, ok: impl Fn(usize) -> bool, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok(processes_with(marker).len()) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scratch directories of `faultbox` runs left in /tmp (`faultbox-PID...`).
pub fn scratch_leftovers() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            // `faultbox-PID`: a run's scratch is a leak once its process is gone (a
            // live one belongs to a run still going, here or in another test).
            n.strip_prefix("faultbox-")
                .and_then(|rest| {
                    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
                    digits.parse::<u32>().ok()
                })
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}
