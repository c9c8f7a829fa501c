#!/usr/bin/env bash
# Runs per second and slot scaling, for two builds side by side in one run:
#   1. `faultbox test examples/faultbox.star --test tcp_protocol --runs N` (inventory
#      and orders, with their relays) with 1 and 4 slots: runs/s, and CPU per run (the
#      faultbox process with the services it reaps, user + system);
#   2. soak/fleet/bench.star test_io_bound (each run waits on one 200 ms delay fault)
#      with 1 and 16 slots in-process: the speed-up;
#   3. the same seed's normalized traces of examples/faultbox.star and of
#      coordinator/tests/specs/race.star test_race (a parallel() spec) from both
#      builds, compared byte for byte.
# Rounds alternate the builds so that a busier moment of the machine hits both.
#
# Usage: FB_BEFORE=/path/to/old/faultbox scripts/bench-runs.sh
#   FB_AFTER     the build to compare (default target/release/faultbox; built here)
#   BENCH_RUNS   tcp_protocol runs per measurement (default 200)
#   BENCH_IO     I/O-bound runs per measurement (default 64)
#   BENCH_ROUNDS rounds (default 3)
# Each binary needs its faultbox-shim beside it. The example services are the debug
# builds the example specs name (target/debug/inventory, orders).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${BENCH_RUNS:-200}
io_runs=${BENCH_IO:-64}
rounds=${BENCH_ROUNDS:-3}
before=${FB_BEFORE:?set FB_BEFORE to the faultbox binary to compare against}
cargo build -j2 -p faultbox-example-inventory -p faultbox-example-orders >&2
if [ -z "${FB_AFTER:-}" ]; then
    cargo build --release -j2 -p faultbox-coordinator -p faultbox-shim >&2
    FB_AFTER=$PWD/target/release/faultbox
fi
after=$FB_AFTER

tmp=$(mktemp -d /tmp/fbbench-runs.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

timed() { # OUT BINARY ARGS...: writes "wall cpu" seconds to OUT
    local out=$1
    shift
    python3 - "$out" "$@" <<'PY'
import os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
wall = time.monotonic() - t0
if os.waitstatus_to_exitcode(status) != 0:
    sys.stderr.write(err.decode(errors="replace"))
    sys.exit(1)
with open(out, "w") as f:
    f.write(f"{wall} {usage.ru_utime + usage.ru_stime}\n")
PY
}

echo "bench-runs: $rounds rounds; tcp_protocol x $runs, io_bound x $io_runs" >&2
for r in $(seq 1 "$rounds"); do
    for b in before after; do
        bin=${!b}
        for slots in 1 4; do
            timed "$tmp/$b.tcp$slots.$r" "$bin" test examples/faultbox.star --test tcp_protocol \
                --runs "$runs" --slots "$slots"
        done
        for slots in 1 16; do
            timed "$tmp/$b.io$slots.$r" "$bin" test soak/fleet/bench.star --test io_bound \
                --runs "$io_runs" --slots "$slots"
        done
    done
done

# The guard rail: the same seed gives the same normalized trace from both builds.
same=0
differ=()
for b in before after; do
    bin=${!b}
    "$bin" test examples/faultbox.star --seed 5 --normalize "$tmp/$b.examples.norm" >/dev/null 2>&1
    "$bin" test coordinator/tests/specs/race.star --test race --seed 5 \
        --normalize "$tmp/$b.race.norm" >/dev/null 2>&1
done
for t in examples race; do
    if cmp -s "$tmp/before.$t.norm" "$tmp/after.$t.norm"; then
        same=$((same + 1))
    else
        differ+=("$t")
        diff "$tmp/before.$t.norm" "$tmp/after.$t.norm" | head -20 >&2 || true
    fi
done

python3 - "$tmp" "$rounds" "$runs" "$io_runs" <<'PY'
import statistics, sys
tmp, rounds, runs, io_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def load(build, what):
    rows = [open(f"{tmp}/{build}.{what}.{r}").read().split() for r in range(1, rounds + 1)]
    return [float(w) for w, _ in rows], [float(c) for _, c in rows]

def fmt(xs, f):
    return f"{f(statistics.median(xs))} ({f(min(xs))}–{f(max(xs))})"

print(f"| build | slots | runs/s, tcp_protocol x {runs} (median, range) | CPU per run, ms | wall s |")
print("|---|---:|---|---|---|")
for build in ("before", "after"):
    for slots in (1, 4):
        wall, cpu = load(build, f"tcp{slots}")
        rate = [runs / w for w in wall]
        per = [c / runs * 1000 for c in cpu]
        print(f"| {build} | {slots} | {fmt(rate, lambda v: f'{v:.1f}')} | "
              f"{fmt(per, lambda v: f'{v:.2f}')} | {statistics.median(wall):.2f} |")
print()
print(f"| build | io_bound x {io_runs}: 1 slot, s | 16 slots, s | speed-up (median, range) |")
print("|---|---|---|---|")
for build in ("before", "after"):
    one, _ = load(build, "io1")
    sixteen, _ = load(build, "io16")
    ups = [a / b for a, b in zip(one, sixteen)]
    print(f"| {build} | {statistics.median(one):.2f} | {statistics.median(sixteen):.2f} | "
          f"{fmt(ups, lambda v: f'{v:.1f}x')} |")
PY
echo "normalized traces identical between the builds: $same of 2${differ:+ (differ: ${differ[*]})}"
