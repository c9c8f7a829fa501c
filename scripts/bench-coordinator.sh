#!/usr/bin/env bash
# One coordinator against 4 executors (4 local processes x 1 slot, QUIC on loopback),
# for two builds side by side in one run: events/s, the coordinator's CPU per
# event, and the executors' (with their services', which they reap) per event. Each run of soak/fleet/stream.star test_log_burst makes ~20,000 events (a
# service's JSON lines decoded by a stdout source), which stream to the coordinator
# in acknowledged batches, are merged in plan order and written with --output.
# Rounds alternate the builds so that a busier moment of the machine hits both.
#
# Usage: FB_BEFORE=/path/to/old/faultbox scripts/bench-coordinator.sh
#   FB_AFTER    the build to compare (default target/release/faultbox; built here)
#   BENCH_RUNS  runs per measurement (default 24), BENCH_ROUNDS rounds (default 3)
# Each binary needs its faultbox-shim beside it; the builds do not talk to each
# other (each has its own executors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${BENCH_RUNS:-24}
rounds=${BENCH_ROUNDS:-3}
before=${FB_BEFORE:?set FB_BEFORE to the faultbox binary to compare against}
if [ -z "${FB_AFTER:-}" ]; then
    cargo build --release -j1 -p faultbox-coordinator -p faultbox-shim >&2
    FB_AFTER=$PWD/target/release/faultbox
fi
after=$FB_AFTER
spec=soak/fleet/stream.star

tmp=$(mktemp -d /tmp/fbbench-coord.XXXXXX)
pids=()
stop_executors() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_executors; rm -rf "$tmp"' EXIT

start_executors() { # BINARY
    stop_executors
    "$1" fleet init "$tmp/fleet" >/dev/null 2>&1 || true
    for i in 1 2 3 4; do
        "$1" fleet issue "$tmp/fleet" "c$i" >/dev/null 2>&1 || true
        : >"$tmp/c$i.log"
        "$1" executor --listen "127.0.0.1:$((7950 + i))" --fleet "$tmp/fleet" --name "c$i" \
            --slots 1 --work "$tmp/w$i" 2>"$tmp/c$i.log" &
        pids+=($!)
    done
    for i in 1 2 3 4; do
        until grep -q "executor ready" "$tmp/c$i.log"; do sleep 0.05; done
    done
    addrs=127.0.0.1:7951,127.0.0.1:7952,127.0.0.1:7953,127.0.0.1:7954
    # Ship the bundle once, so the timed runs measure jobs, not the first transfer.
    "$1" test "$spec" --executors "$addrs" --fleet "$tmp/fleet" >/dev/null 2>&1
}

measure() { # NAME BINARY: prints "wall cpu events executor-cpu"
    local out=$tmp/$1.json
    EXECUTORS="${pids[*]}" python3 - "$out" "$2" test "$spec" --runs "$runs" --executors "$addrs" \
        --fleet "$tmp/fleet" --output "$out" <<'PY'
import json, os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
tick = os.sysconf("SC_CLK_TCK")
def executors_cpu():
    # The executors' own CPU and that of their reaped children (services, shims).
    total = 0
    for pid in os.environ["EXECUTORS"].split():
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in f[11:15])
    return total / tick
e0 = executors_cpu()
t0 = time.monotonic()
with open(out + ".err", "w") as e:
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=e)
    _, status, usage = os.wait4(child.pid, 0)
wall = time.monotonic() - t0
executors = executors_cpu() - e0
if os.waitstatus_to_exitcode(status) != 0:
    sys.stderr.write(open(out + ".err").read())
    sys.exit(1)
doc = json.load(open(out))
assert all(t["result"] == "pass" for t in doc["tests"])
events = sum(len(t["events"]) for t in doc["tests"])
print(wall, usage.ru_utime + usage.ru_stime, events, executors)
PY
}

echo "bench-coordinator: $rounds rounds of $runs runs, before=$before after=$after" >&2
: >"$tmp/results"
for r in $(seq 1 "$rounds"); do
    for which in before after; do
        bin=$before
        [ "$which" = after ] && bin=$after
        start_executors "$bin"
        echo "$which $(measure "$which-$r" "$bin")" | tee -a "$tmp/results" >&2
        stop_executors
        rm -rf "$tmp/fleet" "$tmp"/w?
    done
done

python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    which, wall, cpu, events, executors = line.split()
    rows.setdefault(which, []).append((float(wall), float(cpu), int(events), float(executors)))
print("| build | rounds | events a round | events/s (median, range) | coordinator CPU per event (median, range) | events per coordinator CPU-second | executors' CPU per event, services included (median) |")
print("|---|---|---|---|---|---|---|")
med = {}
for which in ("before", "after"):
    rs = rows[which]
    rate = [e / w for w, c, e, x in rs]
    per = [c / e * 1e6 for w, c, e, x in rs]
    exe = [x / e * 1e6 for w, c, e, x in rs]
    med[which] = (statistics.median(rate), statistics.median(per))
    print(f"| {which} | {len(rs)} | {rs[0][2]} | {statistics.median(rate):,.0f} ({min(rate):,.0f}-{max(rate):,.0f}) "
          f"| {statistics.median(per):.2f} us ({min(per):.2f}-{max(per):.2f}) | {1e6 / statistics.median(per):,.0f} "
          f"| {statistics.median(exe):.1f} us |")
b, a = med["before"], med["after"]
print(f"\nafter/before: events/s x{a[0] / b[0]:.2f}, CPU per event x{a[1] / b[1]:.2f}")
PY
