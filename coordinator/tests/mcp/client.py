"""Drives `faultbox mcp` with the official MCP Python SDK, one scenario per run.

    python client.py SCENARIO

Environment: FAULTBOX (the faultbox binary), ROOT (the workspace root: the server's
working directory, so examples/*.star resolve), SCRATCH (a directory this scenario
may write, removed by the caller), TOKEN (a string only this scenario's processes
carry in their command lines). Exits non-zero with a message when a check fails.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

FAULTBOX = os.environ["FAULTBOX"]
ROOT = Path(os.environ["ROOT"])
SCRATCH = Path(os.environ["SCRATCH"])
TOKEN = os.environ["TOKEN"]
HERE = Path(__file__).resolve().parent

TOOLS = {
    "run_test",
    "run_single_test",
    "list_tests",
    "check_spec",
    "generate_faults",
    "init_from_compose",
    "init_spec",
}
# JSON-RPC's invalid params: the answer to a call of a tool that does not exist.
INVALID_PARAMS = -32602


def server(command=FAULTBOX, args=("mcp",), cwd=ROOT, env=None):
    return StdioServerParameters(command=command, args=list(args), cwd=str(cwd), env=env)


class Session:
    """An initialized session with a server, as an async context manager."""

    def __init__(self, params=None):
        self.params = params or server()

    async def __aenter__(self):
        self._client = stdio_client(self.params)
        read, write = await self._client.__aenter__()
        try:
            self._session = ClientSession(read, write)
            s = await self._session.__aenter__()
        except BaseException as e:
            await self._client.__aexit__(type(e), e, e.__traceback__)
            raise
        try:
            self.init = await s.initialize()
        except BaseException as e:
            await self.__aexit__(type(e), e, e.__traceback__)
            raise
        return s

    async def __aexit__(self, *exc):
        try:
            await self._session.__aexit__(*exc)
        finally:
            await self._client.__aexit__(*exc)


def structured(result):
    """The structured result of a successful call, checked against its text."""
    assert not result.is_error, f"tool error: {text(result)}"
    doc = result.structured_content
    assert isinstance(doc, dict), doc
    assert json.loads(text(result)) == doc, "the text content is not the structured content"
    return doc


def text(result):
    return "".join(c.text for c in result.content if c.type == "text")


def tool_error(result, *fragments):
    """A tool error whose message has every fragment."""
    assert result.is_error, f"expected a tool error, got {text(result)[:500]}"
    msg = text(result)
    for f in fragments:
        assert f in msg, f"{f!r} not in the error {msg!r}"
    return msg


def cli(*args, cwd=ROOT):
    """What the same command prints on the command line."""
    out = subprocess.run([FAULTBOX, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    return out


def pids_with(marker):
    """Processes whose command line has `marker` (as pgrep -f finds them)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


async def wait_for(cond, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.05)


def slow_spec():
    """A spec whose one test waits a minute on a delayed fsync; its service's command
    line carries TOKEN, so pgrep finds exactly this run's service."""
    spec = SCRATCH / "slow.star"
    echo = ROOT / "coordinator/tests/specs/echo_svc.py"
    spec.write_text(
        f"""echo = service("echo", "python3", interface("main", "tcp", 7000),
    args = [{str(echo)!r}, {TOKEN!r}],
    healthcheck = tcp("localhost:7000"))

def test_slow():
    \"\"\"Waits a minute on a delayed fsync: long enough to be cancelled.\"\"\"
    fault(echo, fsync = delay("60s"), run = lambda: echo.send(data = "x"))
"""
    )
    return spec


def service_marker():
    # The service runs as `python3 .../echo_svc.py TOKEN`; the faultbox test child's
    # command line names SCRATCH/slow.star, which has TOKEN in its path too.
    return f"echo_svc.py {TOKEN}"


# Scenarios ---------------------------------------------------------------------


async def tools():
    async with Session() as s:
        listed = await s.list_tools()
        names = {t.name for t in listed.tools}
        assert names == TOOLS, names
        for t in listed.tools:
            assert t.description and len(t.description) > 40, t.name
            schema = t.input_schema
            assert schema["type"] == "object", (t.name, schema)
            props = schema.get("properties", {})
            assert props, (t.name, schema)
            for name, prop in props.items():
                assert prop.get("description"), f"{t.name}.{name} has no description: {prop}"
        required = {t.name: set(t.input_schema.get("required", [])) for t in listed.tools}
        assert required["run_test"] == {"spec"}, required
        assert required["run_single_test"] == {"spec", "test"}, required
        assert required["init_spec"] == {"binary"}, required
        assert required["init_from_compose"] == set(), required
        cat = next(t for t in listed.tools if t.name == "generate_faults").input_schema
        assert "network" in json.dumps(cat["properties"]["category"]), cat


async def initialize():
    sess = Session()
    async with sess:
        init = sess.init
        assert init.server_info.name == "faultbox", init.server_info
        assert init.capabilities.tools is not None, init.capabilities
        assert init.instructions and "Faultbox" in init.instructions


async def list_and_check():
    async with Session() as s:
        doc = structured(await s.call_tool("list_tests", {"spec": "examples/faultbox.star"}))
        tests = {t["name"]: t for t in doc["tests"]}
        assert "test_happy_path" in tests and "test_tcp_protocol" in tests, tests.keys()
        assert doc["services"] == ["inventory", "orders"], doc["services"]
        happy = tests["test_happy_path"]
        assert happy["kind"] == "def" and happy["file"] == "examples/faultbox.star", happy
        source = (ROOT / "examples/faultbox.star").read_text().splitlines()
        assert source[happy["line"] - 1].startswith("def test_happy_path("), happy

        # Matrix cells and registered scenarios, and a docstring.
        doc = structured(await s.call_tool("list_tests", {"spec": "examples/composition.star"}))
        kinds = {t["name"]: t["kind"] for t in doc["tests"]}
        assert kinds["test_order_flow"] == "registered", kinds
        cell = next(t for t in doc["tests"] if t["kind"] == "matrix_cell")
        assert cell["matrix_cell"]["scenario"] and cell["matrix_cell"]["fault"], cell
        doc = structured(await s.call_tool("list_tests", {"spec": str(HERE / "failing.star")}))
        wrong = next(t for t in doc["tests"] if t["name"] == "test_wrong_stock")
        assert wrong["doc"].startswith("Expects 6 gadgets"), wrong

        # check_spec is `faultbox check --format json`, exactly.
        for spec in ["examples/faultbox.star", "coordinator/tests/specs/diag.star"]:
            doc = structured(await s.call_tool("check_spec", {"spec": spec}))
            want = json.loads(cli("check", spec, "--format", "json").stdout)
            assert doc == want, (doc, want)
        assert doc["ok"] is False and doc["findings"], doc
        assert any(f["code"] == "TEST_NO_ASSERTIONS" for f in doc["findings"]), doc


async def run_tests():
    async with Session() as s:
        seen = []

        async def progress(done, total, message):
            seen.append((done, total, message))

        r = await s.call_tool("run_test", {"spec": "examples/quickstart.star"}, progress_callback=progress)
        doc = structured(r)
        assert doc["pass"] == 2 and doc["fail"] == 0, doc
        names = [t["name"] for t in doc["tests"]]
        assert names == ["test_happy_path", "test_inventory_down"], names
        for t in doc["tests"]:
            assert t["result"] == "pass" and t["seed"] == 0, t
            assert t["replay_command"].startswith("faultbox test examples/quickstart.star --test "), t
            assert "events" not in t and t["events_omitted"] == t["events_total"] > 0, t
            assert "syscall_summary" in t and "diagnostics" in t and "faults" in t, t
        assert seen, "no progress notifications"
        assert seen[-1][0] == seen[-1][1] == 2, seen
        assert all(a[0] < b[0] for a, b in zip(seen, seen[1:])), seen

        # One test, with its events, bounded.
        doc = structured(
            await s.call_tool(
                "run_single_test",
                {"spec": "examples/faultbox.star", "test": "tcp_protocol", "events": True, "events_limit": 5},
            )
        )
        (t,) = doc["tests"]
        assert t["name"] == "test_tcp_protocol" and t["result"] == "pass", t
        assert [e["seq"] for e in t["events"]] == [1, 2, 3, 4, 5], t["events"]
        assert t["events_omitted"] == t["events_total"] - 5 > 0, t
        assert t["events"][0]["vector_clock"], t["events"][0]

        # events_of picks one test's events out of a whole-spec run; seeds replay.
        doc = structured(
            await s.call_tool(
                "run_test",
                {"spec": "examples/quickstart.star", "seed": 7, "events_of": "inventory_down", "events_limit": 3},
            )
        )
        by = {t["name"]: t for t in doc["tests"]}
        assert len(by["test_inventory_down"]["events"]) == 3, by["test_inventory_down"]
        assert "events" not in by["test_happy_path"], by["test_happy_path"]
        assert all(t["seed"] == 7 for t in doc["tests"]), doc


async def failing():
    async with Session() as s:
        spec = str(HERE / "failing.star")
        doc = structured(await s.call_tool("run_test", {"spec": spec}))
        assert doc["pass"] == 1 and doc["fail"] == 1, doc
        wrong = next(t for t in doc["tests"] if t["name"] == "test_wrong_stock")
        assert wrong["result"] == "fail", wrong
        assert "6" in wrong["reason"] and "5" in wrong["reason"], wrong["reason"]
        assert wrong["failure_type"] == "assertion", wrong
        codes = [d["code"] for d in wrong["diagnostics"]]
        assert "FAULT_NOT_FIRED" in codes, wrong["diagnostics"]
        assert wrong["replay_command"] == f"faultbox test {spec} --test wrong_stock --seed 0", wrong


async def syntax_error():
    spec = SCRATCH / "broken.star"
    spec.write_text('x = service("a", "/bin/true")\ndef test_a(:\n    pass\n')
    async with Session() as s:
        for tool in ["run_test", "list_tests", "check_spec"]:
            r = await s.call_tool(tool, {"spec": str(spec)})
            tool_error(r, f"{spec}:2:", "faultbox: error:")
        r = await s.call_tool("run_single_test", {"spec": str(spec), "test": "a"})
        msg = tool_error(r, f"{spec}:2:")
        # The message a person would see on stderr.
        assert cli("test", str(spec)).stderr.strip() == msg, msg
        doc = (await s.call_tool("check_spec", {"spec": str(spec)})).structured_content
        assert doc["ok"] is False and f"{spec}:2:" in doc["error"], doc


async def missing_file():
    async with Session() as s:
        for tool, args in [
            ("run_test", {"spec": "nope.star"}),
            ("run_single_test", {"spec": "nope.star", "test": "x"}),
            ("list_tests", {"spec": "nope.star"}),
            ("check_spec", {"spec": "nope.star"}),
            ("generate_faults", {"spec": "nope.star"}),
            ("init_from_compose", {"compose_file": "nope.yml"}),
        ]:
            r = await s.call_tool(tool, args)
            tool_error(r, "nope.", "No such file")
        r = await s.call_tool("run_single_test", {"spec": "examples/faultbox.star", "test": "no_such"})
        tool_error(r, "--test no_such: no such test")


async def wrong_arguments():
    """Arguments that do not fit a tool's schema: tool errors naming the argument (as
    MCP asks of input validation errors, so that a model can correct its call); a
    call of no tool, or one that is not a call, is a JSON-RPC error."""
    async with Session() as s:
        for tool, args, fragment in [
            ("run_test", {"spec": 42}, "spec: invalid type: number, expected a string"),
            ("run_test", {"spec": "examples/faultbox.star", "runs": "many"}, 'runs: invalid type: string "many"'),
            ("run_test", {"spec": "examples/faultbox.star", "runs": -1}, "runs: invalid number"),
            ("run_test", {}, "missing field `spec`"),
            ("run_test", {"spec": "examples/faultbox.star", "tset": "x"}, "unknown field `tset`"),
            ("run_single_test", {"spec": "examples/faultbox.star"}, "missing field `test`"),
            ("generate_faults", {"spec": "examples/composition.star", "category": "cpu"}, "category: unknown variant `cpu`"),
            ("init_spec", {"binary": "x", "port": "eighty"}, 'port: invalid type: string "eighty"'),
            ("list_tests", {"spec": ["a", "b"]}, "spec: invalid type: sequence"),
        ]:
            tool_error(await s.call_tool(tool, args), fragment)
        try:
            await s.call_tool("no_such_tool", {})
        except MCPError as e:
            assert e.code == INVALID_PARAMS and "tool not found" in e.message, e
        else:
            raise AssertionError("an unknown tool was called")
        # Still serving.
        structured(await s.call_tool("list_tests", {"spec": "examples/quickstart.star"}))
    # Requests the SDK would not send: a call without a name, arguments that are not
    # an object, a line that is not JSON, an unknown method. Each malformed request is
    # answered with a JSON-RPC error; the line that is not JSON is dropped; the server
    # goes on.
    proc = subprocess.run(
        [FAULTBOX, "mcp"],
        cwd=ROOT,
        input="\n".join(
            [
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}),
                json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"arguments": {}}}),
                json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_tests", "arguments": "x"}}),
                "{not json",
                json.dumps({"jsonrpc": "2.0", "id": 4, "method": "no/such"}),
                json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
                    "name": "list_tests", "arguments": {"spec": "examples/quickstart.star"}}}),
            ]
        )
        + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc
    replies = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert sorted(replies) == [1, 2, 3, 4, 5], proc.stdout
    for i in (2, 3, 4):
        assert replies[i]["error"]["code"] < 0, replies[i]
    assert replies[5]["result"]["isError"] is False, replies[5]
    assert "panicked" not in proc.stderr, proc.stderr


async def refused():
    huge = SCRATCH / "huge.star"
    huge.write_text("# padding\n" * 200_000 + "def test_x():\n    pass\n")
    async with Session() as s:
        r = await s.call_tool("run_test", {"spec": str(huge)})
        tool_error(r, "refused")
        r = await s.call_tool("list_tests", {"spec": str(huge)})
        tool_error(r, "refused")
        r = await s.call_tool("run_test", {"spec": "examples/faultbox.star", "runs": 1_000_000})
        tool_error(r, "at most 1000")
        # 10 tests × 200 runs: each test's runs are allowed, their product is not.
        r = await s.call_tool("run_test", {"spec": "examples/faultbox.star", "runs": 200})
        tool_error(r, "2000 runs")
        r = await s.call_tool("run_test", {"spec": "examples/faultbox.star", "runs": 2, "seed": 1})
        tool_error(r, "not both")
        r = await s.call_tool("run_test", {"spec": "examples/faultbox.star", "events_of": "nope"})
        tool_error(r, "events_of nope: no such test")
        r = await s.call_tool("run_single_test", {"spec": "examples/faultbox.star", "test": "tcp_protocol", "events_limit": 10**6})
        tool_error(r, "events_limit")
        r = await s.call_tool("run_single_test", {"spec": "examples/faultbox.star", "test": "tcp_protocol", "timeout": "0s"})
        tool_error(r, "more than 0")
    assert not pids_with(str(SCRATCH)), "a refused run started"


async def cancel():
    spec = slow_spec()
    async with Session() as s:
        call = asyncio.create_task(s.call_tool("run_single_test", {"spec": str(spec), "test": "slow"}))
        await wait_for(lambda: pids_with(service_marker()), "the slow test's service to start")
        started = time.monotonic()
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass
        # The run and its service are gone, well before the minute the test waits.
        await wait_for(lambda: not pids_with(service_marker()), "the service to stop", 25)
        await wait_for(lambda: not pids_with(str(spec)), "faultbox test to stop", 25)
        print(f"run stopped {time.monotonic() - started:.2f}s after the cancellation")
        # The server goes on serving.
        doc = structured(await s.call_tool("list_tests", {"spec": str(spec)}))
        assert [t["name"] for t in doc["tests"]] == ["test_slow"], doc


def runs_now():
    """`faultbox test` children of a server (only they carry --progress-fd) running
    now; a process such a child forked (same command line) is not another run."""
    runs = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if len(args) > 1 and args[1] == b"test" and any(a.startswith(b"--progress-fd=") for a in args):
                runs[int(pid)] = ppid
    return sum(1 for ppid in runs.values() if ppid not in runs)


async def concurrent():
    most = 0
    done = asyncio.Event()

    async def watch():
        nonlocal most
        while not done.is_set():
            most = max(most, runs_now())
            await asyncio.sleep(0.005)

    async with Session() as s:
        watcher = asyncio.create_task(watch())
        calls = [
            s.call_tool("run_single_test", {"spec": "examples/faultbox.star", "test": "tcp_protocol"}),
            s.call_tool("run_single_test", {"spec": "examples/faultbox.star", "test": "http_methods"}),
            s.call_tool("run_test", {"spec": "examples/quickstart.star"}),
            s.call_tool("list_tests", {"spec": "examples/composition.star"}),
            s.call_tool("check_spec", {"spec": "examples/faultbox.star"}),
        ]
        a, b, c, d, e = [structured(r) for r in await asyncio.gather(*calls)]
        done.set()
        await watcher
        # The three runs overlapped: the server does not serialize calls.
        assert most >= 2, f"at most {most} run(s) at a time"
        print(f"{most} runs went at once")
        assert [t["name"] for t in a["tests"]] == ["test_tcp_protocol"], a
        assert [t["name"] for t in b["tests"]] == ["test_http_methods"], b
        assert a["pass"] == b["pass"] == 1 and c["pass"] == 2, (a, b, c)
        assert len(d["tests"]) == 10, d
        assert "findings" in e, e


async def disconnect():
    """The official client leaves in the middle of a run: closing the server's stdin."""
    spec = slow_spec()
    async with Session() as s:
        call = asyncio.create_task(s.call_tool("run_single_test", {"spec": str(spec), "test": "slow"}))
        await wait_for(lambda: pids_with(service_marker()), "the slow test's service to start")
    call.cancel()
    try:
        await call
    except (asyncio.CancelledError, MCPError):
        pass
    await wait_for(lambda: not pids_with(service_marker()), "the service to stop", 25)
    await wait_for(lambda: not pids_with(str(spec)), "faultbox test to stop", 25)


async def eof_mid_run():
    """A client that closes its end without any shutdown: the server stops the run and
    exits by itself, with no signal from anyone."""
    spec = slow_spec()
    proc = start_raw_run(spec)
    try:
        await wait_for(lambda: pids_with(service_marker()), "the slow test's service to start")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.stdin.close()
    proc.stdout.close()
    left = time.monotonic()
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the server did not exit after its client left")
    assert code == 0, code
    # The run was stopped at once, not left to the kernel when the server ended.
    took = time.monotonic() - left
    assert took < 10, f"the server took {took:.1f}s to exit"
    print(f"server exited {took:.2f}s after its client left")
    assert not pids_with(service_marker()), "the service outlived the server"
    assert not pids_with(str(spec)), "faultbox test outlived the server"


def start_raw_run(spec):
    """A server started by hand, initialized, with a call of the slow test in flight."""
    proc = subprocess.Popen(
        [FAULTBOX, "mcp"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )

    def send(msg):
        proc.stdin.write((json.dumps(msg) + "\n").encode())
        proc.stdin.flush()

    send(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        }
    )
    reply = json.loads(proc.stdout.readline())
    assert reply["result"]["serverInfo"]["name"] == "faultbox", reply
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send(
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "run_single_test", "arguments": {"spec": str(spec), "test": "slow"}},
        }
    )
    return proc


async def server_killed():
    """The server dies (SIGKILL, no chance to clean up) in the middle of a run: the
    kernel tells the run (PR_SET_PDEATHSIG), which stops its services by itself."""
    spec = slow_spec()
    proc = start_raw_run(spec)
    try:
        await wait_for(lambda: pids_with(service_marker()), "the slow test's service to start")
    finally:
        proc.kill()
        proc.wait()
    killed = time.monotonic()
    await wait_for(lambda: not pids_with(service_marker()), "the service to stop", 25)
    await wait_for(lambda: not pids_with(str(spec)), "faultbox test to stop", 25)
    print(f"run stopped {time.monotonic() - killed:.2f}s after its server was killed")


async def generate_and_init():
    async with Session() as s:
        # generate_faults returns what `faultbox generate` writes, writing nothing.
        out_cli, out_mcp = SCRATCH / "cli.faults.star", SCRATCH / "mcp.faults.star"
        assert cli("generate", "examples/composition.star", "--output", str(out_cli)).returncode == 0
        doc = structured(
            await s.call_tool("generate_faults", {"spec": "examples/composition.star", "output": str(out_mcp)})
        )
        assert doc["written"] is False and not out_mcp.exists(), doc
        (f,) = doc["files"]
        assert f["path"] == str(out_mcp) and f["text"] == out_cli.read_text(), f
        assert {m["category"] for m in doc["mutations"]} == {"network", "disk"}, doc["mutations"]
        assert doc["scenarios"] == ["order_flow", "stock_check"], doc
        doc = structured(
            await s.call_tool(
                "generate_faults",
                {"spec": "examples/composition.star", "output": str(out_mcp), "category": "disk", "write": True},
            )
        )
        assert doc["written"] and out_mcp.read_text() == doc["files"][0]["text"], doc
        assert {m["category"] for m in doc["mutations"]} == {"disk"}, doc["mutations"]
        r = await s.call_tool(
            "generate_faults", {"spec": "examples/composition.star", "output": str(out_mcp), "write": True}
        )
        tool_error(r, "exists", "force: true")
        # The generated file is a spec that loads.
        doc = structured(await s.call_tool("list_tests", {"spec": str(out_mcp)}))
        assert any(t["kind"] == "matrix_cell" for t in doc["tests"]), doc

        compose = SCRATCH / "docker-compose.yml"
        compose.write_text(
            "services:\n  db:\n    image: postgres:16\n  api:\n    image: example/api\n"
            "    ports: ['8080:8080']\n    depends_on: [db]\n"
        )
        doc = structured(await s.call_tool("init_from_compose", {"compose_file": str(compose)}))
        assert doc["spec_text"] == cli("init", "--from-compose", str(compose)).stdout, doc
        assert doc["written"] is None
        assert 'image = "postgres:16"' in doc["spec_text"], doc

        args = ["./svc", "--name", "svc", "--port", "9000", "--protocol", "tcp"]
        doc = structured(
            await s.call_tool("init_spec", {"binary": "./svc", "name": "svc", "port": 9000, "protocol": "tcp"})
        )
        assert doc["spec_text"] == cli("init", *args).stdout, doc
        target = SCRATCH / "svc.star"
        doc = structured(await s.call_tool("init_spec", {"binary": "./svc", "output": str(target)}))
        assert doc["written"] == str(target) and target.read_text() == doc["spec_text"], doc
        tool_error(await s.call_tool("init_spec", {"binary": "./svc", "output": str(target)}), "exists")
        structured(await s.call_tool("init_spec", {"binary": "./svc", "output": str(target), "force": True}))
        tool_error(await s.call_tool("init_spec", {"binary": "./svc", "port": 0}), "--port 0")


async def claude_config():
    """`faultbox init --claude`'s .mcp.json, run as Claude Code runs it: its command
    looked up on PATH, in the project directory."""
    project = SCRATCH / "project"
    project.mkdir()
    assert cli("init", "--claude", cwd=project).returncode == 0
    config = json.loads((project / ".mcp.json").read_text())
    entry = config["mcpServers"]["faultbox"]
    bin_dir = SCRATCH / "bin"
    bin_dir.mkdir()
    (bin_dir / "faultbox").symlink_to(FAULTBOX)
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    params = server(command=entry["command"], args=entry.get("args", []), cwd=project, env=env)
    async with Session(params) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert names == TOOLS, names
        doc = structured(await s.call_tool("init_spec", {"binary": "./svc", "output": "faultbox.star"}))
        assert (project / "faultbox.star").read_text() == doc["spec_text"]
        doc = structured(await s.call_tool("list_tests", {"spec": "faultbox.star"}))
        assert [t["name"] for t in doc["tests"]] == ["test_disk_errors", "test_happy_path", "test_happy_path_checked"], doc


SCENARIOS = {
    f.__name__: f
    for f in [
        initialize,
        tools,
        list_and_check,
        run_tests,
        failing,
        syntax_error,
        missing_file,
        wrong_arguments,
        refused,
        cancel,
        concurrent,
        disconnect,
        eof_mid_run,
        server_killed,
        generate_and_init,
        claude_config,
    ]
}

if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(SCENARIOS[sys.argv[1]](), timeout=240))
    print(f"{sys.argv[1]}: ok")
