#!/usr/bin/env bash
# Fleet throughput and scaling, all measured in one run on this host (executors are
# local processes on loopback, so the figures bound the coordinator and the wire, not
# a network):
#   1. trivial jobs (soak/fleet/bench.star test_trivial: 10 traced round trips each)
#      through one coordinator: runs/s and events/s, in-process (--slots 4) and over
#      4 executors x 1 slot;
#   2. event-heavy jobs (soak/fleet/chatty.star: ~6,000 traced writes each, streamed
#      to the coordinator while they run): events/s, in-process and over 4 executors;
#   3. an I/O-bound test (each run waits on a 200 ms delay fault): wall time with 1
#      slot on 1 executor against 16 slots over 4 executors, and the speed-up.
# Usage: scripts/bench-fleet.sh   (BENCH_RUNS trivial runs, default 400; BENCH_CHATTY
# event-heavy runs, default 24; BENCH_IO I/O-bound runs, default 64)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${BENCH_RUNS:-400}
io_runs=${BENCH_IO:-64}
chatty_runs=${BENCH_CHATTY:-24}

scripts/setup.sh
cargo build -j2 --workspace >&2
cargo build --release -j2 -p faultbox-coordinator -p faultbox-shim >&2
fb=$PWD/target/release/faultbox

tmp=$(mktemp -d /tmp/fbbench-fleet.XXXXXX)
pids=()
stop_executors() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
trap 'stop_executors; rm -rf "$tmp"' EXIT

"$fb" fleet init "$tmp/fleet" 2>/dev/null
start_executors() { # COUNT SLOTS
    stop_executors
    for i in $(seq 1 "$1"); do
        "$fb" fleet issue "$tmp/fleet" "b$i" 2>/dev/null || true
        : >"$tmp/b$i.log"
        "$fb" executor --listen "127.0.0.1:$((7900 + i))" --fleet "$tmp/fleet" --name "b$i" \
            --slots "$2" --work "$tmp/w$i" 2>"$tmp/b$i.log" &
        pids+=($!)
    done
    for i in $(seq 1 "$1"); do
        until grep -q "executor ready" "$tmp/b$i.log"; do sleep 0.05; done
    done
    addrs=$(seq -s, -f "127.0.0.1:79%02g" 1 "$1")
    # Ship the bundle once, so the timed runs measure jobs, not the first transfer.
    "$fb" test soak/fleet/bench.star --test trivial --executors "$addrs" --fleet "$tmp/fleet" \
        >/dev/null 2>&1
}

spec=soak/fleet/bench.star

timed() { # OUT ARGS...: runs faultbox test, writes the JSON to OUT and the process's
    # CPU seconds (user + system) to OUT.cpu, prints wall seconds
    local out=$1
    shift
    python3 - "$out" "$fb" test "$spec" --format json "$@" <<'PY' || {
import os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
with open(out, "w") as o, open(out + ".err", "w") as e:
    child = subprocess.Popen(cmd, stdout=o, stderr=e)
    _, status, usage = os.wait4(child.pid, 0)
wall = time.monotonic() - t0
with open(out + ".cpu", "w") as f:
    f.write(str(usage.ru_utime + usage.ru_stime))
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(1)
print(wall)
PY
        cat "$out.err" >&2
        exit 1
    }
}

echo "bench-fleet: $runs trivial runs, $chatty_runs event-heavy runs, $io_runs I/O-bound runs" >&2
local_s=$(timed "$tmp/local.json" --test trivial --runs "$runs" --slots 4)
spec=soak/fleet/chatty.star
chatty_local_s=$(timed "$tmp/chatty-local.json" --test many_writes --runs "$chatty_runs" --slots 4)
spec=soak/fleet/bench.star
start_executors 4 1
fleet_s=$(timed "$tmp/fleet.json" --test trivial --runs "$runs" --executors "$addrs" --fleet "$tmp/fleet")
spec=soak/fleet/chatty.star
chatty_fleet_s=$(timed "$tmp/chatty-fleet.json" --test many_writes --runs "$chatty_runs" --executors "$addrs" --fleet "$tmp/fleet")
spec=soak/fleet/bench.star
start_executors 1 1
io1_s=$(timed "$tmp/io1.json" --test io_bound --runs "$io_runs" --executors "$addrs" --fleet "$tmp/fleet")
start_executors 4 4
io16_s=$(timed "$tmp/io16.json" --test io_bound --runs "$io_runs" --executors "$addrs" --fleet "$tmp/fleet")
stop_executors

python3 - "$tmp" "$runs" "$io_runs" "$local_s" "$fleet_s" "$io1_s" "$io16_s" \
    "$chatty_local_s" "$chatty_fleet_s" <<'PY'
import json, sys
tmp, runs, io_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
local_s, fleet_s, io1_s, io16_s, chatty_local_s, chatty_fleet_s = map(float, sys.argv[4:])

def events(name):
    doc = json.load(open(f"{tmp}/{name}.json"))
    assert all(t["result"] == "pass" for t in doc["tests"]), name
    return len(doc["tests"]), sum(len(t["events"]) for t in doc["tests"])

def cpu(name):
    return float(open(f"{tmp}/{name}.json.cpu").read())

# In-process, the faultbox process also runs the jobs and reaps the services, so its
# CPU is everything; with executors it is the coordinator's alone.
print("| measurement | runs | wall s | runs/s | events/s | coordinator CPU per event |")
print("|---|---|---|---|---|---|")
rows = [("trivial, in-process, 4 slots", "local", local_s, False),
        ("trivial, 4 executors x 1 slot (QUIC)", "fleet", fleet_s, True),
        ("event-heavy, in-process, 4 slots", "chatty-local", chatty_local_s, False),
        ("event-heavy, 4 executors x 1 slot (QUIC)", "chatty-fleet", chatty_fleet_s, True),
        ("200 ms delay, 1 executor x 1 slot", "io1", io1_s, True),
        ("200 ms delay, 4 executors x 4 slots", "io16", io16_s, True)]
for label, name, s, remote in rows:
    n, ev = events(name)
    per = f"{cpu(name) / ev * 1e6:.1f} us" if remote else "-"
    print(f"| {label} | {n} | {s:.2f} | {n / s:.1f} | {ev / s:.0f} | {per} |")
print(f"\nI/O-bound speed-up, 1 -> 16 slots: {io1_s / io16_s:.1f}x (ideal 16x; "
      f"floor: {io_runs} x 0.2 s = {io_runs * 0.2:.1f} s on one slot)")
PY
