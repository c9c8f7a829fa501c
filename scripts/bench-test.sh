#!/usr/bin/env bash
# Faultbox's own overhead per test on the example spec: sandbox creation, launch,
# readiness detection and stop, beyond what the services themselves take to start,
# become ready and stop. Both sides are measured in the same run:
#   - faultbox: `faultbox test examples/faultbox.star --test tcp_protocol --runs N`,
#     per-run duration minus the test body (from the JSON's timings_ms);
#   - native: the same two binaries started directly (same env), polled until their
#     ports accept with the same backoff, then SIGTERMed and reaped.
# Usage: scripts/bench-test.sh   (BENCH_RUNS, default 50)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${BENCH_RUNS:-50}

scripts/setup.sh
cargo build -j2 --workspace >&2
cargo build --release -j2 -p faultbox-coordinator -p faultbox-shim >&2

tmp=$(mktemp -d /tmp/faultbox-bench-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

target/release/faultbox test examples/faultbox.star --test tcp_protocol --runs "$runs" --format json \
    >"$tmp/fb.json" 2>"$tmp/fb.err" || { cat "$tmp/fb.err" >&2; exit 1; }

BENCH_TMP=$tmp python3 - "$tmp/fb.json" "$runs" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time

doc = json.load(open(sys.argv[1]))
runs = int(sys.argv[2])
fb = [t for t in doc["tests"] if t["result"] == "pass"]
assert len(fb) == runs, "every run should pass"

def native_once():
    """Start inventory then orders as faultbox does, wait for their ports, stop both."""
    env = dict(os.environ, PORT="5432", TMPDIR=os.environ.get("BENCH_TMP", "/tmp"))
    t0 = time.perf_counter()
    procs = []
    for binary, port, extra in [("inventory", 5432, {}), ("orders", 8080, {"INVENTORY_ADDR": "localhost:5432"})]:
        e = dict(env, PORT=str(port), **extra)
        procs.append(subprocess.Popen(["target/debug/" + binary], env=e, stderr=subprocess.DEVNULL))
        pause = 0.0001
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
    ready = time.perf_counter()
    for p in reversed(procs):
        p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        p.wait()
    return ready - t0, time.perf_counter() - ready

native = [native_once() for _ in range(runs)]
n_total = [(a + b) * 1000 for a, b in native]
f_total = [t["duration_ms"] - t["timings_ms"]["body"] for t in fb]
phase = {k: statistics.median(t["timings_ms"][k] for t in fb) for k in ["sandbox", "launch", "ready", "body", "stop"]}
med_f, med_n = statistics.median(f_total), statistics.median(n_total)
print(f"runs: {runs} (test_tcp_protocol of examples/faultbox.star: inventory + orders)")
print()
print("| measure | median ms |")
print("|---|---:|")
print(f"| faultbox: whole test minus body | {med_f:.2f} |")
for k in ["sandbox", "launch", "ready", "stop"]:
    print(f"| &nbsp;&nbsp;{k} | {phase[k]:.2f} |")
print(f"| native: same services started, ready, stopped | {med_n:.2f} |")
print(f"| **faultbox overhead per test** | **{med_f - med_n:.2f}** |")
PY
