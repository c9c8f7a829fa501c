#!/usr/bin/env bash
# What Faultbox adds to starting, readying and stopping a container service, against
# Docker alone, in the same run. One Redis container (faultbox-test/redis:7), a test
# with an empty body, three ways, alternated in BENCH_BATCHES batches of BENCH_RUNS:
#   - docker: the raw Docker API over its socket (what `docker run` + a readiness
#     poll + `docker rm -f` do, without the CLI's own start-up): create with a
#     published loopback port, start, poll the port until Redis answers PING, kill
#     (SIGTERM, as Faultbox's stop), wait, remove with volumes;
#   - faultbox, no fault: `faultbox test` of a spec whose test faults nothing (the
#     container starts under the shim with no filter), per run duration minus body;
#   - faultbox, filtered: the same with a syscall fault on the container (the shim
#     installs a filter and hands the listener over).
# Prints a markdown table of medians and the ratios.
#
# Usage: scripts/bench-containers.sh   (as root; BENCH_RUNS default 10, BENCH_BATCHES 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${BENCH_RUNS:-10}
batches=${BENCH_BATCHES:-3}

scripts/images.sh >&2
cargo build --release -j2 -p faultbox-coordinator -p faultbox-shim >&2
export FAULTBOX_CONTAINER_SHIM
FAULTBOX_CONTAINER_SHIM=$(scripts/build-static-shim.sh -j2)
bin=${CARGO_TARGET_DIR:-target}/release/faultbox

tmp=$(mktemp -d /tmp/faultbox-bench-containers.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for kind in plain filtered; do
    {
        echo 'cache = service("cache", interface("main", "redis", 6379), image = "faultbox-test/redis:7",'
        echo '    healthcheck = ready(timeout = "20s"))'
        echo 'def test_empty():'
        if [[ $kind == filtered ]]; then
            echo '    fault(cache, fsync = deny("EIO"), run = lambda: None)'
        else
            echo '    pass'
        fi
    } >"$tmp/$kind.star"
done

for ((b = 1; b <= batches; b++)); do
    for kind in plain filtered; do
        echo "bench-containers: batch $b, faultbox $kind" >&2
        "$bin" test "$tmp/$kind.star" --runs "$runs" --format json >"$tmp/$kind.$b.json" 2>"$tmp/err" ||
            { cat "$tmp/err" >&2; exit 1; }
    done
    echo "bench-containers: batch $b, docker" >&2
    python3 - "$runs" >"$tmp/docker.$b.json" <<'PY'
import http.client, json, socket, sys, time

class Unix(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost")
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/var/run/docker.sock")

def api(method, path, body=None):
    c = Unix()
    c.request(method, "/v1.41" + path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data[:200]}")
    return json.loads(data) if data else None

def ping(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        s.sendall(b"PING\r\n")
        ok = s.recv(16).startswith(b"+PONG")
        s.close()
        return ok
    except OSError:
        return False

out = []
for i in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    c = api("POST", f"/containers/create?name=faultbox-bench-{i}", {
        "Image": "faultbox-test/redis:7",
        "Labels": {"faultbox.bench": "1"},
        "HostConfig": {"PortBindings": {"6379/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
        "ExposedPorts": {"6379/tcp": {}},
    })["Id"]
    api("POST", f"/containers/{c}/start")
    port = int(api("GET", f"/containers/{c}/json")["NetworkSettings"]["Ports"]["6379/tcp"][0]["HostPort"])
    pause = 0.0001
    while not ping(port):
        time.sleep(pause)
        pause = min(pause * 2, 0.005)
    t1 = time.perf_counter()
    api("POST", f"/containers/{c}/kill?signal=SIGTERM")
    api("POST", f"/containers/{c}/wait")
    api("DELETE", f"/containers/{c}?v=true&force=true")
    t2 = time.perf_counter()
    out.append({"ready_ms": (t1 - t0) * 1000, "stop_ms": (t2 - t1) * 1000})
print(json.dumps(out))
PY
done

python3 - "$tmp" "$batches" <<'PY'
import json, statistics, sys
tmp, batches = sys.argv[1], int(sys.argv[2])
def fb(kind):
    tests = []
    for b in range(1, batches + 1):
        tests += json.load(open(f"{tmp}/{kind}.{b}.json"))["tests"]
    assert all(t["result"] == "pass" for t in tests), kind
    return tests
docker = []
for b in range(1, batches + 1):
    docker += json.load(open(f"{tmp}/docker.{b}.json"))
med = statistics.median
d_total = med(x["ready_ms"] + x["stop_ms"] for x in docker)
rows = [("docker API: create, start, poll until PING, SIGTERM, wait, remove", len(docker),
         d_total, med(x["ready_ms"] for x in docker), med(x["stop_ms"] for x in docker))]
totals = {}
for kind, label in [("plain", "faultbox, no fault (shim, no filter)"), ("filtered", "faultbox, a fault on it (shim, filter, hand-off)")]:
    t = fb(kind)
    total = med(x["duration_ms"] - x["timings_ms"]["body"] for x in t)
    totals[kind] = total
    rows.append((label, len(t), total, med(x["timings_ms"]["launch"] + x["timings_ms"]["ready"] for x in t),
                 med(x["timings_ms"]["stop"] for x in t)))
print("| path | runs | start + ready + stop, ms | start + ready | stop |")
print("|---|---:|---:|---:|---:|")
for label, n, total, ready, stop in rows:
    print(f"| {label} | {n} | {total:.1f} | {ready:.1f} | {stop:.1f} |")
print()
print(f"- faultbox, no fault ÷ docker: **{totals['plain'] / d_total:.2f}**")
print(f"- faultbox, a fault ÷ docker: **{totals['filtered'] / d_total:.2f}**")
print(f"- the filter and hand-off add: **{totals['filtered'] - totals['plain']:+.1f} ms**")
PY
