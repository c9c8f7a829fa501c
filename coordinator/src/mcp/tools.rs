//! The MCP tools. Each takes the same inputs as the command it stands for and returns
//! what that command prints with `--format json` (or its text, in a JSON object), as
//! JSON text and as `structuredContent`. A failure of the command (a spec that does
//! not load, a missing file, a refused argument) is a tool error (`isError`) whose
//! text is what the command prints on stderr; arguments of the wrong shape never
//! reach a tool: they are JSON-RPC errors (invalid params).
//!
//! Paths are relative to the server's working directory, as on the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::child::{self, Outcome, Request};
use super::results::{self, Keep};
use crate::output::Existing;

/// Specs larger than this are refused before anything loads them: a spec is code
/// written by people, and one this size is a mistake or an attack on the server.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// The most runs (tests × seeds) one call may ask for: every run starts real
/// services, and the result grows with each.
pub const MAX_RUNS: u64 = 1000;
/// Runs (`faultbox test` children) going at once; further calls wait their turn.
const MAX_CONCURRENT_RUNS: usize = 4;

#[derive(Clone)]
pub struct Faultbox {
    tool_router: ToolRouter<Faultbox>,
    /// Cancelled when the server shuts down: every run stops.
    shutdown: CancellationToken,
    running: Arc<child::Running>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// What each test-running tool takes besides the spec.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTestParams {
    /// Path of the spec (.star file), relative to the server's working directory.
    pub spec: String,
    /// Run each test this many times with seeds 0..runs-1, a test stopping at its
    /// first failure (default 1; tests × runs at most 1000). Not with `seed`.
    pub runs: Option<u64>,
    /// Run once with this seed: replays the fault decisions of the run that had it
    /// (see `replay_command` in a result). Not with `runs`.
    pub seed: Option<u64>,
    /// Each test's time limit, e.g. "30s" or "2m" (default 60s).
    pub timeout: Option<String>,
    /// Return the events (the trace) of this test, named with or without `test_`;
    /// other tests' events are left out and counted in `events_omitted`.
    pub events_of: Option<String>,
    /// At most this many events per run of `events_of` (default 200, at most 5000).
    pub events_limit: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSingleTestParams {
    /// Path of the spec (.star file), relative to the server's working directory.
    pub spec: String,
    /// The test to run: `happy_path` or `test_happy_path`.
    pub test: String,
    /// Run it this many times with seeds 0..runs-1, stopping at its first failure
    /// (default 1, at most 1000). Not with `seed`.
    pub runs: Option<u64>,
    /// Run once with this seed: replays the fault decisions of the run that had it.
    /// Not with `runs`.
    pub seed: Option<u64>,
    /// The test's time limit, e.g. "30s" or "2m" (default 60s).
    pub timeout: Option<String>,
    /// Also return the test's events (its trace), in order (default false).
    pub events: Option<bool>,
    /// At most this many events per run (default 200, at most 5000).
    pub events_limit: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecParams {
    /// Path of the spec (.star file), relative to the server's working directory.
    pub spec: String,
}

/// Which failure modes `generate_faults` writes.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Refused, slow and reset connections to each dependency.
    Network,
    /// I/O errors, a full disk and slow fsync on each dependency.
    Disk,
    /// Both.
    #[default]
    All,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// Path of the spec (.star file) whose scenario() registrations are used.
    pub spec: String,
    /// Only this scenario (default: every scenario()).
    pub scenario: Option<String>,
    /// Only faults of this dependency (a service others depend on).
    pub service: Option<String>,
    /// network, disk or all (default all).
    pub category: Option<Category>,
    /// Write the files (default false: only return their paths and text).
    pub write: Option<bool>,
    /// Put everything in this one file (default: <scenario>.faults.star beside the
    /// spec, one per scenario).
    pub output: Option<String>,
    /// When writing, replace files that exist (default false: refuse).
    pub force: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposeParams {
    /// The docker-compose file (default docker-compose.yml).
    pub compose_file: Option<String>,
    /// Write the spec to this file (default: only return its text).
    pub output: Option<String>,
    /// Replace `output` if it exists (default false: refuse).
    pub force: Option<bool>,
}

/// The protocol a starter spec's service speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Checked with GET /health.
    #[default]
    Http,
    /// Checked with a line sent over TCP.
    Tcp,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InitSpecParams {
    /// The service's binary (a path, or a name on PATH).
    pub binary: String,
    /// The service's name: letters, digits, '-' and '_' (default myapp).
    pub name: Option<String>,
    /// The port it listens on (default 8080).
    pub port: Option<u32>,
    /// http or tcp (default http).
    pub protocol: Option<Protocol>,
    /// Write the spec to this file (default: only return its text).
    pub output: Option<String>,
    /// Replace `output` if it exists (default false: refuse).
    pub force: Option<bool>,
}

/// A tool's arguments, as rmcp's `Parameters` reads them, except that a value of the
/// wrong type is named by its path (`runs: invalid type: string "many", expected
/// u64`): the caller sees which argument to fix. rmcp turns the error into a tool
/// error (`isError`), as MCP asks of input validation errors, so a model can correct
/// its call.
pub struct Args<T>(pub T);

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Args<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let arguments = context.arguments.take().unwrap_or_default();
        serde_path_to_error::deserialize(Value::Object(arguments))
            .map(Args)
            .map_err(|e| {
                // rmcp recognizes argument errors by this prefix.
                ErrorData::invalid_params(format!("failed to deserialize parameters: {e}"), None)
            })
    }
}

/// The input schema of a tool taking `Args<T>`.
fn schema<T: JsonSchema + 'static>() -> Arc<rmcp::model::JsonObject> {
    use rmcp::handler::server::common::{schema_for_input, schema_for_type};
    schema_for_input::<T>().unwrap_or_else(|_| schema_for_type::<T>())
}

/// A tool error: `message` as a person reads it on stderr, also under `error` in the
/// structured content (with `extra`'s fields).
fn tool_error(message: impl std::fmt::Display, extra: Option<Value>) -> CallToolResult {
    let message = message.to_string();
    let mut structured = extra.unwrap_or_else(|| json!({}));
    if let Some(o) = structured.as_object_mut() {
        o.insert("error".into(), json!(message));
    }
    let mut r = CallToolResult::error(vec![ContentBlock::text(message)]);
    r.structured_content = Some(structured);
    r
}

/// The CLI's prefix for an error message.
fn faultbox_error(message: impl std::fmt::Display) -> CallToolResult {
    tool_error(format!("faultbox: error: {message}"), None)
}

/// Refuses a spec over [`MAX_SPEC_BYTES`]; one that is missing or unreadable is left
/// to the loader, whose message names the file the way the CLI does.
fn check_size(spec: &Path) -> Result<(), CallToolResult> {
    match std::fs::metadata(spec) {
        Ok(m) if m.is_file() && m.len() > MAX_SPEC_BYTES => Err(faultbox_error(format!(
            "{}: {} bytes; specs over {} KiB are refused",
            spec.display(),
            m.len(),
            MAX_SPEC_BYTES >> 10
        ))),
        _ => Ok(()),
    }
}

/// Runs blocking work (loading a spec evaluates Starlark) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ErrorData> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ErrorData::internal_error(format!("the tool stopped: {e}"), None))
}

/// `existing` for a `force` parameter.
fn existing(force: Option<bool>) -> Existing {
    if force.unwrap_or(false) {
        Existing::Replace
    } else {
        Existing::Refuse
    }
}

/// Writes a file for a tool; the CLI's hint about `--force` becomes the parameter's.
fn write_file(path: &Path, text: &str, force: Option<bool>) -> Result<(), String> {
    crate::output::write(path, text, existing(force))
        .map_err(|e| e.replace("(--force replaces it)", "(force: true replaces it)"))
}

#[tool_router]
impl Faultbox {
    pub fn new(shutdown: CancellationToken) -> Faultbox {
        Faultbox {
            tool_router: Self::tool_router(),
            shutdown,
            running: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_RUNS)),
        }
    }

    /// The children this server runs, for shutdown to wait on.
    pub fn running(&self) -> Arc<child::Running> {
        self.running.clone()
    }

    #[tool(
        description = "Run every test of a Faultbox spec (.star file) against real services, each test in a sandbox of its own, and return the results: the JSON of `faultbox test --format json` (pass/fail counts, the fault matrix, and per run its result, reason, failure_type, seed, replay_command, faults that fired, syscall_summary and diagnostics). Events (traces) are left out, counted per run in events_omitted; events_of asks for one test's. Sends progress notifications per finished run when the request has a progressToken; cancelling the request stops the run and its services.",
        input_schema = schema::<RunTestParams>(),
    )]
    async fn run_test(
        &self,
        params: Args<RunTestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = params.0;
        let keep = Keep {
            test: p.events_of.clone(),
            limit: p.events_limit.unwrap_or(results::DEFAULT_EVENTS),
        };
        let req = Request {
            spec: PathBuf::from(&p.spec),
            test: None,
            runs: p.runs,
            seed: p.seed,
            timeout: p.timeout,
        };
        self.run(req, keep, ctx).await
    }

    #[tool(
        description = "Run one test of a Faultbox spec and return its results, the JSON of `faultbox test SPEC --test NAME --format json`; with events: true, also its events (the trace with vector clocks), up to events_limit per run. With seed, replays a run's fault decisions. Progress and cancellation as for run_test.",
        input_schema = schema::<RunSingleTestParams>(),
    )]
    async fn run_single_test(
        &self,
        params: Args<RunSingleTestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = params.0;
        let keep = Keep {
            test: p.events.unwrap_or(false).then(|| p.test.clone()),
            limit: p.events_limit.unwrap_or(results::DEFAULT_EVENTS),
        };
        let req = Request {
            spec: PathBuf::from(&p.spec),
            test: Some(p.test),
            runs: p.runs,
            seed: p.seed,
            timeout: p.timeout,
        };
        self.run(req, keep, ctx).await
    }

    #[tool(
        description = "List the tests of a Faultbox spec without running anything: each test's name, kind (def, a registered scenario/fault_scenario, or a fault matrix cell), the file and line of its function, and its docstring.",
        input_schema = schema::<SpecParams>(),
        annotations(read_only_hint = true)
    )]
    async fn list_tests(&self, params: Args<SpecParams>) -> Result<CallToolResult, ErrorData> {
        let spec = PathBuf::from(&params.0.spec);
        if let Err(refused) = check_size(&spec) {
            return Ok(refused);
        }
        Ok(match blocking(move || list(&spec)).await? {
            Ok(doc) => CallToolResult::structured(doc),
            Err(e) => faultbox_error(e),
        })
    }

    #[tool(
        description = "Check a Faultbox spec without running anything (no services, no sandbox): returns the JSON of `faultbox check --format json`, ok and the findings, each with a code, severity, message, suggestion, file and line. A spec that does not load is a tool error naming file:line.",
        input_schema = schema::<SpecParams>(),
        annotations(read_only_hint = true)
    )]
    async fn check_spec(&self, params: Args<SpecParams>) -> Result<CallToolResult, ErrorData> {
        let spec = PathBuf::from(&params.0.spec);
        if let Err(refused) = check_size(&spec) {
            return Ok(refused);
        }
        let spec_arg = params.0.spec.clone();
        blocking(move || {
            let loaded = match faultbox_spec::load(&spec) {
                Ok(l) => l,
                Err(e) => {
                    let e = e.to_string();
                    return tool_error(
                        format!("faultbox: error: {e}"),
                        Some(crate::check::json_error(&spec_arg, &e)),
                    );
                }
            };
            match crate::check::findings(&loaded) {
                Ok(f) => CallToolResult::structured(crate::check::json_doc(&spec_arg, &f)),
                Err(e) => tool_error(
                    format!("faultbox: error: {e}"),
                    Some(crate::check::json_error(&spec_arg, &e)),
                ),
            }
        })
        .await
    }

    #[tool(
        description = "Generate failure scenarios from a spec's scenario() registrations, as `faultbox generate` does: per dependency, network faults (refused, slow, reset) and disk faults (EIO, ENOSPC, slow fsync) composed with the scenarios in a fault_matrix, plus partition tests. Returns the mutations and each file's path and text; writes the files only with write: true.",
        input_schema = schema::<GenerateParams>(),
    )]
    async fn generate_faults(
        &self,
        params: Args<GenerateParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = params.0;
        let spec = PathBuf::from(&p.spec);
        if let Err(refused) = check_size(&spec) {
            return Ok(refused);
        }
        blocking(move || generate(&spec, p)).await
    }

    #[tool(
        description = "Generate a starter Faultbox spec from a docker-compose file, as `faultbox init --from-compose` does: one service() per compose service with its image, ports (protocol detected), env, depends_on and a healthcheck, and a happy-path test. Returns the spec text; writes it only when output is given.",
        input_schema = schema::<ComposeParams>(),
    )]
    async fn init_from_compose(
        &self,
        params: Args<ComposeParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = params.0;
        let file = PathBuf::from(p.compose_file.as_deref().unwrap_or("docker-compose.yml"));
        blocking(move || {
            let text = match crate::init::compose_spec(&file) {
                Ok(t) => t,
                Err(e) => return faultbox_error(e),
            };
            finish_init(text, p.output.as_deref(), p.force)
        })
        .await
    }

    #[tool(
        description = "Generate a starter Faultbox spec for one binary, as `faultbox init BINARY` does: a service() with an interface, env and healthcheck, a happy_path scenario, a test that checks it, and a disk-fault test to fill in. Returns the spec text; writes it only when output is given.",
        input_schema = schema::<InitSpecParams>(),
    )]
    async fn init_spec(&self, params: Args<InitSpecParams>) -> Result<CallToolResult, ErrorData> {
        let p = params.0;
        let protocol = match p.protocol.unwrap_or_default() {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        };
        let text = match crate::init::binary_spec(
            &p.binary,
            p.name.as_deref().unwrap_or("myapp"),
            p.port.unwrap_or(8080),
            protocol,
        ) {
            Ok(t) => t,
            Err(e) => return Ok(faultbox_error(e)),
        };
        let (output, force) = (p.output, p.force);
        blocking(move || finish_init(text, output.as_deref(), force)).await
    }
}

impl Faultbox {
    /// Runs `faultbox test` for a tool call and turns its outcome into the result.
    async fn run(
        &self,
        req: Request,
        keep: Keep,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        if let Err(refused) = self.validate(&req, &keep).await? {
            return Ok(refused);
        }
        // Stopped by the server's shutdown, or by this request's cancellation.
        let stop = self.shutdown.child_token();
        let watch = {
            let (ct, stop) = (ctx.ct.clone(), stop.clone());
            tokio::spawn(async move {
                ct.cancelled().await;
                stop.cancel();
            })
        };
        let outcome = tokio::select! {
            permit = self.slots.clone().acquire_owned() => match permit {
                Ok(permit) => {
                    let progress = ctx.meta.get_progress_token().map(|token| {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<super::progress::Line>();
                        let peer = ctx.peer.clone();
                        tokio::spawn(async move {
                            let mut sent: Option<u64> = None;
                            while let Some(line) = rx.recv().await {
                                // Progress must increase from one notification to the next.
                                if sent.is_some_and(|s| line.done <= s) {
                                    continue;
                                }
                                sent = Some(line.done);
                                let note = ProgressNotificationParam::new(token.clone(), line.done as f64)
                                    .with_total(line.total as f64)
                                    .with_message(line.message());
                                let _ = peer.notify_progress(note).await;
                            }
                        });
                        tx
                    });
                    let r = child::run(&req, stop.clone(), &self.running, progress).await;
                    drop(permit);
                    Some(r)
                }
                Err(_) => None,
            },
            _ = stop.cancelled() => None,
        };
        watch.abort();
        let outcome = match outcome {
            None => Outcome::Stopped,
            Some(Ok(o)) => o,
            Some(Err(e)) => return Ok(faultbox_error(e)),
        };
        Ok(match outcome {
            Outcome::Stopped => {
                return Err(ErrorData::internal_error(
                    "the run was cancelled: its jobs were stopped with their services",
                    None,
                ))
            }
            Outcome::Exited {
                code: Some(0 | 2),
                stdout,
                stderr,
                ..
            } => match serde_json::from_slice::<Value>(&stdout) {
                Ok(doc) => CallToolResult::structured(results::bound(doc, &keep)),
                Err(e) => faultbox_error(format!(
                    "the run's JSON results could not be read ({e}); its stderr: {}",
                    child::error_message(&stderr)
                )),
            },
            Outcome::Exited {
                code: Some(_),
                stderr,
                ..
            } => tool_error(child::error_message(&stderr), None),
            Outcome::Exited { signal, stderr, .. } => faultbox_error(format!(
                "faultbox test was killed by signal {}: {}",
                signal.unwrap_or(0),
                child::error_message(&stderr)
            )),
        })
    }

    /// What the CLI would refuse too, and what only a server refuses: a huge spec,
    /// too many runs, too many events. `Ok(Err(result))` is a tool error to return.
    async fn validate(
        &self,
        req: &Request,
        keep: &Keep,
    ) -> Result<Result<(), CallToolResult>, ErrorData> {
        if req.runs.is_some() && req.seed.is_some() {
            return Ok(Err(faultbox_error(
                "give runs or seed, not both: a seed replays one run",
            )));
        }
        if req.runs == Some(0) {
            return Ok(Err(faultbox_error("runs: at least 1")));
        }
        if req.runs.is_some_and(|r| r > MAX_RUNS) {
            return Ok(Err(faultbox_error(format!(
                "runs {}: at most {MAX_RUNS} runs per call; every run starts real services",
                req.runs.unwrap_or(0)
            ))));
        }
        if keep.limit > results::MAX_EVENTS {
            return Ok(Err(faultbox_error(format!(
                "events_limit {}: at most {}",
                keep.limit,
                results::MAX_EVENTS
            ))));
        }
        if let Err(refused) = check_size(&req.spec) {
            return Ok(Err(refused));
        }
        // A whole-spec call's size is tests × runs, and events_of must name a test:
        // both need the spec's tests, so it is loaded here first.
        if req.test.is_none() && (req.runs.unwrap_or(1) > 1 || keep.test.is_some()) {
            let spec = req.spec.clone();
            let names = match blocking(move || faultbox_spec::load(&spec)).await? {
                Ok(l) => l
                    .spec
                    .tests
                    .iter()
                    .map(|t| t.name.clone())
                    .collect::<Vec<_>>(),
                Err(e) => return Ok(Err(faultbox_error(e))),
            };
            let runs = req.runs.unwrap_or(1);
            let planned = (names.len() as u64).saturating_mul(runs);
            if planned > MAX_RUNS {
                return Ok(Err(faultbox_error(format!(
                    "runs {runs}: {} test(s) × {runs} runs is {planned} runs, more than the {MAX_RUNS} one call may start; use fewer runs or run_single_test",
                    names.len()
                ))));
            }
            if let Some(want) = &keep.test {
                if !names.contains(&results::full_name(want)) {
                    return Ok(Err(faultbox_error(format!(
                        "events_of {want}: no such test in {} (tests: {})",
                        req.spec.display(),
                        names.join(", ")
                    ))));
                }
            }
        }
        Ok(Ok(()))
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "faultbox",
    instructions = "Faultbox injects real failures (syscall faults, protocol faults, partitions) into real services described by a Starlark spec (.star). list_tests and check_spec read a spec without running it; run_test and run_single_test run tests and return structured results with diagnostics and replay commands; generate_faults, init_spec and init_from_compose write specs. Paths are relative to the server's working directory."
)]
impl ServerHandler for Faultbox {}

/// The tests of `spec`: name, kind, where their function is, and its docstring.
fn list(spec: &Path) -> Result<Value, String> {
    use faultbox_spec::analysis::{outline_file, Function};
    use std::collections::BTreeMap;
    let loaded = faultbox_spec::load(spec).map_err(|e| e.to_string())?;
    let outlines: Vec<_> = loaded
        .evaluated
        .iter()
        .filter_map(|f| outline_file(&f.name).ok())
        .collect();
    let mut by_name: BTreeMap<&str, Vec<&Function>> = BTreeMap::new();
    for o in &outlines {
        for f in &o.functions {
            by_name.entry(f.name.as_str()).or_default().push(f);
        }
    }
    // The spec's own def of a name first, else one a load() brought in.
    let main = loaded.evaluated.last().map(|f| f.name.as_str());
    let def = |name: &str| {
        by_name.get(name).and_then(|fs| {
            fs.iter()
                .find(|f| Some(f.file.as_str()) == main)
                .or(fs.first())
                .copied()
        })
    };
    let tests: Vec<Value> = loaded
        .spec
        .tests
        .iter()
        .map(|t| {
            let short = t.name.strip_prefix("test_").unwrap_or(&t.name);
            let (kind, function) = match (&t.cell, t.function.is_empty()) {
                (_, false) => ("def", Some(t.function.as_str())),
                (Some((scenario, _)), true) => ("matrix_cell", Some(scenario.as_str())),
                (None, true) => ("registered", Some(short)),
            };
            let f = function.and_then(def);
            json!({
                "name": t.name,
                "kind": kind,
                "probe": t.probe,
                "file": f.map(|f| f.file.clone()).unwrap_or_else(|| t.declared_at.file.clone()),
                "line": f.map(|f| f.line),
                "doc": f.and_then(|f| f.doc.clone()),
                "matrix_cell": t.cell.as_ref().map(|(s, fault)| json!({"scenario": s, "fault": fault})),
            })
        })
        .collect();
    Ok(json!({
        "spec": spec.display().to_string(),
        "services": loaded.spec.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "tests": tests,
    }))
}

/// `generate_faults`: the files, written only when asked.
fn generate(spec: &Path, p: GenerateParams) -> CallToolResult {
    let opts = crate::generate::Options {
        scenario: p.scenario,
        service: p.service,
        category: match p.category.unwrap_or_default() {
            Category::Network => "network",
            Category::Disk => "disk",
            Category::All => "all",
        }
        .to_string(),
        existing: existing(p.force),
    };
    let output = p.output.as_deref().map(Path::new);
    let g = match crate::generate::generate(spec, output, &opts) {
        Ok(g) => g,
        Err(e) => return faultbox_error(e),
    };
    let write = p.write.unwrap_or(false);
    if write {
        if let Err(e) =
            crate::output::check_all(g.files.iter().map(|(p, _)| p.as_path()), opts.existing)
        {
            return faultbox_error(e.replace("(--force replaces it)", "(force: true replaces it)"));
        }
        for (path, text) in &g.files {
            if let Err(e) = write_file(path, text, p.force) {
                return faultbox_error(e);
            }
        }
    }
    CallToolResult::structured(json!({
        "spec": spec.display().to_string(),
        "scenarios": g.scenarios,
        "mutations": g.mutations.iter().map(|m| json!({
            "name": m.name,
            "category": m.category,
            "target": m.target,
            "dependency": m.dependency,
            "fault": format!("{}={}", m.fault.0, m.fault.1),
            "description": m.description,
        })).collect::<Vec<_>>(),
        "files": g.files.iter().map(|(path, text)| json!({
            "path": path.display().to_string(),
            "text": text,
        })).collect::<Vec<_>>(),
        "written": write,
    }))
}

/// An `init_*` result: the spec text, written to `output` when given.
fn finish_init(text: String, output: Option<&str>, force: Option<bool>) -> CallToolResult {
    if let Some(path) = output {
        if let Err(e) = write_file(Path::new(path), &text, force) {
            return faultbox_error(format!("output: {e}"));
        }
    }
    CallToolResult::structured(json!({"spec_text": text, "written": output}))
}
