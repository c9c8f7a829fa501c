//! `faultbox init`: a starter spec for a binary or from a docker-compose file, typing
//! stubs for editors (`--vscode`), and Claude Code commands (`--claude`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::output::Existing;

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("faultbox: error: {msg}");
    1
}

/// Writes `text` to `output`, or prints it.
fn emit(text: &str, output: Option<&Path>, existing: Existing) -> i32 {
    match output {
        None => match crate::stdout::write(text) {
            Ok(()) => 0,
            Err(e) => fail(e),
        },
        Some(p) => match crate::output::write(p, text, existing) {
            Ok(()) => 0,
            Err(e) => fail(format!("--output: {e}")),
        },
    }
}

fn identifier(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || s.is_empty() {
        s.insert(0, 's');
    }
    s
}

/// A starter spec for one binary.
pub fn for_binary(
    binary: &str,
    name: &str,
    port: u32,
    protocol: &str,
    output: Option<&Path>,
    existing: Existing,
) -> i32 {
    match binary_spec(binary, name, port, protocol) {
        Ok(s) => emit(&s, output, existing),
        Err(e) => fail(e),
    }
}

/// The text of a starter spec for one binary.
pub fn binary_spec(binary: &str, name: &str, port: u32, protocol: &str) -> Result<String, String> {
    if !["http", "tcp"].contains(&protocol) {
        return Err(format!("--protocol {protocol}: expected http or tcp"));
    }
    if port == 0 || port > 65535 {
        return Err(format!("--port {port}: expected 1 to 65535"));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "--name {name:?}: letters, digits, '-' and '_' only"
        ));
    }
    let var = identifier(name);
    let (healthcheck, probe, check) = match protocol {
        "http" => (
            format!("http(\"localhost:{port}/health\")"),
            format!("    return {var}.get(path = \"/health\")"),
            "    resp = happy_path()\n    assert_eq(resp.status, 200)".to_string(),
        ),
        _ => (
            format!("tcp(\"localhost:{port}\")"),
            format!("    return {var}.send(data = \"PING\")"),
            "    reply = happy_path()\n    assert_true(reply != \"\", \"no reply\")".to_string(),
        ),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# A starting point written by `faultbox init`. Run it with: faultbox test <this file>"
    );
    let _ = writeln!(
        s,
        "# Docs: the spec language reference; `faultbox generate` adds failure scenarios.\n"
    );
    let _ = writeln!(
        s,
        "{var} = service({name:?}, {binary:?},\n    interface(\"main\", {protocol:?}, {port}),\n    env = {{\"PORT\": \"{port}\"}},\n    healthcheck = {healthcheck},\n)\n"
    );
    let _ = writeln!(s, "def happy_path():\n{probe}\n\nscenario(happy_path)\n");
    let _ = writeln!(s, "def test_happy_path_checked():\n{check}\n");
    let _ = writeln!(
        s,
        "def test_disk_errors():\n    # What does {name} do when its writes fail? Replace with what it should do.\n    fault({var}, write = deny(\"EIO\"), run = happy_path)"
    );
    Ok(s)
}

/// What a compose service's protocol and port look like.
fn detect(image: &str, ports: &[u16]) -> (&'static str, Option<u16>) {
    let known: &[(&str, &str, u16)] = &[
        ("postgres", "postgres", 5432),
        ("mysql", "mysql", 3306),
        ("mariadb", "mysql", 3306),
        ("redis", "redis", 6379),
        ("kafka", "kafka", 9092),
        ("redpanda", "kafka", 9092),
        ("nats", "nats", 4222),
        ("rabbitmq", "amqp", 5672),
        ("memcached", "memcached", 11211),
        ("mongo", "mongodb", 27017),
    ];
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split(':')
        .next()
        .unwrap_or("");
    for (key, proto, port) in known {
        if base.contains(key) {
            return (proto, Some(*port));
        }
    }
    for (proto, port) in [
        ("postgres", 5432),
        ("mysql", 3306),
        ("redis", 6379),
        ("kafka", 9092),
        ("nats", 4222),
        ("amqp", 5672),
        ("memcached", 11211),
    ] {
        if ports.contains(&port) {
            return (proto, Some(port));
        }
    }
    match ports.first() {
        Some(p) if [80, 443, 3000, 5000, 8000, 8080, 8081, 9000].contains(p) => ("http", Some(*p)),
        Some(p) => ("tcp", Some(*p)),
        None => ("http", None),
    }
}

struct ComposeService {
    name: String,
    image: String,
    build: Option<String>,
    ports: Vec<u16>,
    env: Vec<(String, String)>,
    depends_on: Vec<String>,
    /// `command:`, as arguments (it replaces the image's command, as `args=` does).
    command: Option<Vec<String>>,
    /// Bind mounts (`./data:/var/lib/x`); named volumes are left out.
    volumes: Vec<(String, String)>,
}

fn parse_compose(path: &Path, text: &str) -> Result<Vec<ComposeService>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| {
        format!(
            "{}:{}: not valid YAML: {}",
            path.display(),
            e.marker().line(),
            e.info()
        )
    })?;
    let doc = docs
        .first()
        .ok_or_else(|| format!("{}: empty file", path.display()))?;
    let services = doc["services"]
        .as_hash()
        .ok_or_else(|| format!("{}: no `services:` mapping", path.display()))?;
    let mut out = Vec::new();
    for (k, v) in services {
        let name = k
            .as_str()
            .ok_or_else(|| format!("{}: a service name is not a string", path.display()))?;
        let text_of = |y: &Yaml| match y {
            Yaml::String(s) => Some(s.clone()),
            Yaml::Integer(i) => Some(i.to_string()),
            Yaml::Real(r) => Some(r.clone()),
            Yaml::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        let ports = v["ports"]
            .as_vec()
            .map(|ps| {
                ps.iter()
                    .filter_map(text_of)
                    .filter_map(|p| {
                        // "8080:80", "127.0.0.1:8080:80/tcp", "5432": the container port.
                        let p = p.split('/').next().unwrap_or("").to_string();
                        p.rsplit(':').next().and_then(|x| x.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let env = match &v["environment"] {
            Yaml::Hash(h) => h
                .iter()
                .filter_map(|(k, v)| Some((text_of(k)?, text_of(v).unwrap_or_default())))
                .collect(),
            Yaml::Array(a) => a
                .iter()
                .filter_map(text_of)
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let depends_on = match &v["depends_on"] {
            Yaml::Array(a) => a.iter().filter_map(text_of).collect(),
            Yaml::Hash(h) => h.keys().filter_map(text_of).collect(),
            _ => Vec::new(),
        };
        let command = match &v["command"] {
            Yaml::String(c) => Some(c.split_whitespace().map(str::to_string).collect()),
            Yaml::Array(a) => Some(a.iter().filter_map(text_of).collect()),
            _ => None,
        };
        let volumes = v["volumes"]
            .as_vec()
            .map(|vs| {
                vs.iter()
                    .filter_map(|y| y.as_str())
                    .filter_map(|m| {
                        let mut parts = m.splitn(3, ':');
                        let (host, inside) = (parts.next()?, parts.next()?);
                        (host.starts_with('.') || host.starts_with('/'))
                            .then(|| (host.to_string(), inside.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ComposeService {
            command,
            volumes,
            name: name.to_string(),
            image: v["image"].as_str().unwrap_or("").to_string(),
            build: match &v["build"] {
                Yaml::String(s) => Some(s.clone()),
                Yaml::Hash(h) => h.get(&Yaml::String("context".into())).and_then(text_of),
                _ => None,
            },
            ports,
            env,
            depends_on,
        });
    }
    // Declaration order must follow dependencies: a spec refers to services by variable.
    let mut ordered: Vec<ComposeService> = Vec::new();
    while !out.is_empty() {
        let ready = out.iter().position(|s| {
            s.depends_on
                .iter()
                .all(|d| ordered.iter().any(|o| &o.name == d))
        });
        match ready {
            Some(i) => ordered.push(out.remove(i)),
            None => {
                let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
                return Err(format!(
                    "{}: depends_on names unknown services or forms a cycle among {}",
                    path.display(),
                    names.join(", ")
                ));
            }
        }
    }
    Ok(ordered)
}

/// A spec from a docker-compose file.
pub fn from_compose(file: &Path, output: Option<&Path>, existing: Existing) -> i32 {
    match compose_spec(file) {
        Ok(s) => emit(&s, output, existing),
        Err(e) => fail(e),
    }
}

/// The text of a spec from a docker-compose file.
pub fn compose_spec(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let services = parse_compose(file, &text)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by `faultbox init --from-compose {}`.",
        file.display()
    );
    let _ = writeln!(
        s,
        "# Images are not pulled: build or load them on this host first (docs/containers.md).\n"
    );
    let mut http_service = None;
    for svc in &services {
        let var = identifier(&svc.name);
        let (proto, port) = detect(&svc.image, &svc.ports);
        let mut args = vec![format!("{:?}", svc.name)];
        if let Some(p) = port {
            args.push(format!("interface(\"main\", {proto:?}, {p})"));
        }
        if !svc.image.is_empty() {
            args.push(format!("image = {:?}", svc.image));
        } else if let Some(b) = &svc.build {
            args.push(format!("build = {b:?}"));
        }
        if let Some(c) = &svc.command {
            let items: Vec<String> = c.iter().map(|a| format!("{a:?}")).collect();
            args.push(format!("args = [{}]", items.join(", ")));
        }
        if !svc.volumes.is_empty() {
            let pairs: Vec<String> = svc
                .volumes
                .iter()
                .map(|(h, c)| format!("{h:?}: {c:?}"))
                .collect();
            args.push(format!("volumes = {{{}}}", pairs.join(", ")));
        }
        if !svc.env.is_empty() {
            let pairs: Vec<String> = svc
                .env
                .iter()
                .map(|(k, v)| format!("{k:?}: {v:?}"))
                .collect();
            args.push(format!("env = {{{}}}", pairs.join(", ")));
        }
        if !svc.depends_on.is_empty() {
            let deps: Vec<String> = svc.depends_on.iter().map(|d| identifier(d)).collect();
            args.push(format!("depends_on = [{}]", deps.join(", ")));
        }
        if let Some(p) = port {
            // A database is ready when it answers a login, not when it accepts (official
            // images start a temporary server while they initialize); an HTTP service
            // when it accepts, since its `/` may well be a 404.
            args.push(match proto {
                "postgres" | "mysql" | "redis" | "memcached" | "mongodb" => {
                    "healthcheck = ready(timeout = \"60s\")".to_string()
                }
                _ => format!("healthcheck = tcp(\"localhost:{p}\", timeout = \"60s\")"),
            });
            if proto == "http" && http_service.is_none() {
                http_service = Some(var.clone());
            }
        }
        let _ = writeln!(s, "{var} = service(\n    {},\n)\n", args.join(",\n    "));
    }
    match http_service {
        Some(var) => {
            let _ = writeln!(
                s,
                "def happy_path():\n    return {var}.get(path = \"/\")\n\nscenario(happy_path)\n\ndef test_happy_path_answers():\n    assert_true(happy_path().status < 500)"
            );
        }
        None => {
            let _ = writeln!(
                s,
                "# No HTTP service was found: write a scenario that exercises the system."
            );
        }
    }
    Ok(s)
}

/// Typing stubs for every builtin, and editor settings that use them.
pub fn vscode(dir: &Path, existing: Existing) -> i32 {
    let files = [
        (dir.join("typings/faultbox.pyi"), STUBS.to_string()),
        (
            dir.join(".vscode/settings.json"),
            "{\n  \"files.associations\": {\"*.star\": \"python\"},\n  \"python.analysis.stubPath\": \"typings\",\n  \"python.analysis.extraPaths\": [\"typings\"]\n}\n".to_string(),
        ),
    ];
    write_all(&files, existing)
}

/// Claude Code slash commands and the MCP server configuration.
pub fn claude(dir: &Path, existing: Existing) -> i32 {
    let cmd = |what: &str, body: &str| format!("---\ndescription: {what}\n---\n\n{body}\n");
    let files = [
        (
            dir.join(".claude/commands/fault-test.md"),
            cmd(
                "Run the Faultbox spec and explain the results",
                "Run `faultbox test $ARGUMENTS --format json` (default spec: faultbox.star). For each failed test, read `reason`, `failure_type`, `diagnostics` and the faults that fired, and explain what the system did under the fault. Suggest the smallest change, to the service or to the spec's expectations, and the `replay_command` to reproduce it.",
            ),
        ),
        (
            dir.join(".claude/commands/fault-generate.md"),
            cmd(
                "Generate failure scenarios for the spec's scenarios",
                "Run `faultbox generate $ARGUMENTS` (default spec: faultbox.star), then `faultbox test` on each generated `*.faults.star`. From the results and diagnostics, propose `overrides=` for the fault_matrix with what correct behaviour is, and `exclude=` for cells whose fault never fired.",
            ),
        ),
        (
            dir.join(".claude/commands/fault-diagnose.md"),
            cmd(
                "Diagnose one failing Faultbox test",
                "Replay the failing test with `faultbox test <spec> --test <name> --seed <seed> --format json --debug` ($ARGUMENTS names the test). Walk the events in order: the faults applied, the syscalls denied or delayed, the steps and their answers, using the vector clocks for causality. Say where the service's behaviour departed from the expectation and why.",
            ),
        ),
        (
            dir.join(".mcp.json"),
            "{\n  \"mcpServers\": {\n    \"faultbox\": {\n      \"command\": \"faultbox\",\n      \"args\": [\"mcp\"]\n    }\n  }\n}\n".to_string(),
        ),
    ];
    write_all(&files, existing)
}

fn write_all(files: &[(PathBuf, String)], existing: Existing) -> i32 {
    if let Err(e) = crate::output::check_all(files.iter().map(|(p, _)| p.as_path()), existing) {
        return fail(e);
    }
    for (p, text) in files {
        if let Err(e) = crate::output::write(p, text, existing) {
            return fail(e);
        }
    }
    0
}

/// Python stubs of the spec language's builtins, for editors.
pub const STUBS: &str = r#"# Typing stubs for Faultbox specs (*.star), written by `faultbox init --vscode`.
from typing import Any, Callable, Optional

class Response:
    status: int
    body: str
    data: Any
    ok: bool
    error: str
    duration_ms: int

class Event:
    seq: int
    service: str
    type: str
    event_type: str
    data: Any
    fields: dict
    first: Optional["Event"]
    def __getitem__(self, key: str) -> Any: ...
    def get(self, key: str, default: Any = None) -> Any: ...

class InterfaceRef:
    addr: str
    host: str
    port: int
    internal_addr: str
    # http: path=, body=, headers=; redis and memcached get/delete: key=
    def get(self, path: str = "/", body: str = "", headers: dict = {}, key: str = ..., user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def post(self, path: str = "/", body: str = "", headers: dict = {}) -> Response: ...
    def put(self, path: str = "/", body: str = "", headers: dict = {}) -> Response: ...
    def delete(self, path: str = "/", body: str = "", headers: dict = {}, key: Any = ..., user: str = ..., password: str = ..., database: Any = ..., collection: str = ..., filter: Any = ..., many: bool = False) -> Response: ...
    def patch(self, path: str = "/", body: str = "", headers: dict = {}) -> Response: ...
    def send(self, data: str) -> str: ...
    # postgres, mysql
    def query(self, sql: str, args: list = [], user: str = ..., password: str = ..., database: str = ...) -> Response: ...
    def exec(self, sql: str, args: list = [], user: str = ..., password: str = ..., database: str = ...) -> Response: ...
    # redis (del is delete; memcached takes set, get and delete without login keywords)
    def set(self, key: str, value: Any, ttl: Any = ..., user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def ping(self, user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def keys(self, pattern: str = "*", user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def lpush(self, key: str, value: Any, user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def rpush(self, key: str, value: Any, user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def lrange(self, key: str, start: int = 0, stop: int = -1, user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def incr(self, key: str, user: str = ..., password: str = ..., database: Any = ...) -> Response: ...
    def command(self, args: list = ..., user: str = ..., password: str = ..., database: Any = ..., command: Any = ...) -> Response: ...
    # mongodb (documents are dicts or JSON object strings; also delete and command)
    def find(self, collection: str, filter: Any = {}, projection: Any = ..., sort: Any = ..., limit: int = ..., skip: int = ..., database: str = ...) -> Response: ...
    def insert(self, collection: str, document: Any, database: str = ...) -> Response: ...
    def insert_many(self, collection: str, documents: list, database: str = ...) -> Response: ...
    def update(self, collection: str, filter: Any, update: Any, many: bool = False, upsert: bool = False, database: str = ...) -> Response: ...
    def count(self, collection: str, filter: Any = {}, database: str = ...) -> Response: ...

class Service(InterfaceRef):
    name: str

class Interface: ...
class Healthcheck: ...
class Fault: ...
class Op: ...
class FaultAssumption: ...
class Monitor: ...
class ProxyRule: ...
class EventSource: ...
class Decoder: ...

def service(name: str, binary: str = ..., *interfaces: Interface, args: list = [], env: dict = {}, depends_on: list = [], healthcheck: Healthcheck = ..., ops: dict = {}, image: str = ..., build: str = ..., volumes: dict = {}, observe: list = []) -> Service: ...
def interface(name: str, protocol: str, port: int, spec: str = ...) -> Interface: ...
def tcp(addr: str, timeout: str = "10s") -> Healthcheck: ...
def http(url: str, timeout: str = "10s") -> Healthcheck: ...
def ready(timeout: str = "10s", interface: str = ...) -> Healthcheck: ...
def op(syscalls: list, path: str = ...) -> Op: ...
def deny(errno: str, probability: str = "100%", label: str = ...) -> Fault: ...
def delay(duration: str = ..., probability: str = "100%", label: str = ..., delay: str = ..., **match: str) -> Any: ...
def response(status: int = ..., body: str = ..., value: str = ..., probability: str = "100%", label: str = ..., **match: str) -> ProxyRule: ...
def error(message: str = ..., status: int = ..., probability: str = "100%", label: str = ..., **match: str) -> ProxyRule: ...
def drop(probability: str = "100%", label: str = ..., **match: str) -> ProxyRule: ...
def duplicate(probability: str = "100%", label: str = ..., **match: str) -> ProxyRule: ...
def fault(target: Any, *rules: ProxyRule, run: Callable = ..., source: Service = ..., **syscall_faults: Fault) -> Any: ...
def fault_all(services: list, run: Callable, **syscall_faults: Fault) -> Any: ...
def fault_start(target: Any, *rules: ProxyRule, source: Service = ..., **syscall_faults: Fault) -> None: ...
def fault_stop(target: Any) -> None: ...
def partition(a: Service, b: Service, run: Callable) -> Any: ...
def parallel(*branches: Callable) -> list: ...
def nondet(*services: Service) -> None: ...
def trace(service: Service, syscalls: list, run: Callable) -> Any: ...
def trace_start(service: Service, syscalls: list) -> None: ...
def trace_stop(service: Service) -> None: ...
def events(where: Callable[[Event], bool] = ..., **filters: str) -> list: ...
def assert_true(cond: Any, msg: str = ...) -> None: ...
def assert_eq(a: Any, b: Any, msg: str = ...) -> None: ...
def assert_eventually(where: Callable[[Event], bool] = ..., **filters: str) -> None: ...
def assert_never(where: Callable[[Event], bool] = ..., **filters: str) -> None: ...
def assert_before(first: Any, then: Any) -> None: ...
def fail(*args: Any) -> None: ...
def scenario(fn: Callable) -> Callable: ...
def fault_assumption(name: str, target: Any = ..., rules: list = ..., monitors: list = [], faults: list = [], description: str = "", **syscall_faults: Fault) -> FaultAssumption: ...
def fault_scenario(name: str, scenario: Callable, faults: Any, expect: Callable = ..., monitors: list = [], timeout: str = "30s") -> None: ...
def fault_matrix(scenarios: list, faults: list, default_expect: Callable = ..., overrides: dict = {}, monitors: list = [], exclude: list = []) -> None: ...
def monitor(callback: Callable[[Event], Any], **filters: str) -> Monitor: ...
def stdout(decoder: Decoder = ...) -> EventSource: ...
def stderr(decoder: Decoder = ...) -> EventSource: ...
def tail(path: str, decoder: Decoder = ...) -> EventSource: ...
def poll(url: str, interval: str = "1s", decoder: Decoder = ...) -> EventSource: ...
def wal_stream(slot: str = "faultbox", tables: list = ...) -> EventSource: ...
def topic(topic: str, broker: Any = ..., group: str = ..., decoder: Decoder = ...) -> EventSource: ...
def json_decoder() -> Decoder: ...
def logfmt_decoder() -> Decoder: ...
def regex_decoder(pattern: str) -> Decoder: ...
"#;
