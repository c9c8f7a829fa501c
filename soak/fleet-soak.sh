#!/usr/bin/env bash
# Fleet soak: fans RUNS runs of an example test out over 4 executors, each in its own
# network namespace acting as a separate host, kills one executor mid-run and starts
# it again, then checks that every (test, seed) was reported exactly once and that
# nothing was left behind on any "host".
#
#   ./soak/fleet-soak.sh [RUNS]      (default 10000; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-10000}
HOSTS=4
SLOTS=${SLOTS:-2}
TEST=${TEST:-tcp_protocol}
./scripts/setup.sh
command -v ip >/dev/null || { echo "soak: needs iproute2 (ip)" >&2; exit 1; }
cargo build -j2 --workspace
fb="$PWD/target/debug/faultbox"

work=$(mktemp -d /tmp/fbsoak-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for i in $(seq 1 $HOSTS); do
        ip netns del "fbsoak$i" 2>/dev/null || true
        ip link del "fbsoak$i" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

"$fb" fleet init "$work/fleet" 2>/dev/null
for i in $(seq 1 $HOSTS); do
    "$fb" fleet issue "$work/fleet" "host$i" 2>/dev/null
    # A "host": its own network namespace, reached over a veth pair.
    ip netns add "fbsoak$i"
    ip link add "fbsoak$i" type veth peer name eth0 netns "fbsoak$i"
    ip addr add "10.77.$i.1/24" dev "fbsoak$i"
    ip link set "fbsoak$i" up
    ip -n "fbsoak$i" addr add "10.77.$i.2/24" dev eth0
    ip -n "fbsoak$i" link set eth0 up
    ip -n "fbsoak$i" link set lo up
done

start() {
    local i=$1
    ip netns exec "fbsoak$i" "$fb" executor --listen "10.77.$i.2:7070" --fleet "$work/fleet" \
        --name "host$i" --slots "$SLOTS" --work "$work/host$i" 2>>"$work/host$i.log" &
    pids[$i]=$!
    for _ in $(seq 100); do
        grep -q "executor ready" "$work/host$i.log" 2>/dev/null && return
        sleep 0.1
    done
    echo "soak: host$i did not start" >&2; cat "$work/host$i.log" >&2; exit 1
}
for i in $(seq 1 $HOSTS); do start "$i"; done

addrs=$(seq -s, -f "10.77.%g.2:7070" 1 $HOSTS)
echo "soak: $RUNS runs of test_$TEST over $HOSTS executors x $SLOTS slots" >&2
t0=$(date +%s.%N)
"$fb" test examples/faultbox.star --test "$TEST" --runs "$RUNS" --format json \
    --executors "$addrs" --fleet "$work/fleet" >"$work/report.json" 2>"$work/coordinator.log" &
coord=$!

# Kill host2 once a quarter of the runs are through, then bring it back.
victim=2
while kill -0 "$coord" 2>/dev/null; do
    done_runs=$(grep -o 'progress: [0-9]*' "$work/coordinator.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
    if (( ${done_runs:-0} >= RUNS / 4 )); then break; fi
    sleep 1
done
echo "soak: killing host$victim" >&2
kill -9 "${pids[$victim]}"
wait "${pids[$victim]}" 2>/dev/null || true
sleep 2
start "$victim"
echo "soak: host$victim restarted" >&2

code=0
wait "$coord" || code=$?
t1=$(date +%s.%N)
grep -E "link lost|rejoined|error" "$work/coordinator.log" >&2 || true
tail -1 "$work/coordinator.log" >&2

python3 - "$work/report.json" "$RUNS" "test_$TEST" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
runs, name = int(sys.argv[2]), sys.argv[3]
seeds = sorted(t["seed"] for t in doc["tests"] if t["name"] == name)
assert seeds == list(range(runs)), f"{len(seeds)} entries, {len(set(seeds))} distinct seeds"
assert all(t["result"] == "pass" for t in doc["tests"]), "a run failed"
print(f"soak: every one of {runs} (test, seed) reported exactly once, all passed")
EOF
grep -q "link lost" "$work/coordinator.log" || { echo "soak: the kill was not noticed" >&2; exit 1; }
grep -q "rejoined" "$work/coordinator.log" && echo "soak: host$victim rejoined the run" >&2

# Nothing left on any host: services, scratch directories, job namespaces.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
leaks=0
if pgrep -f 'target/debug/(inventory|orders)' >/dev/null; then
    echo "soak: leftover services:" >&2; pgrep -af 'target/debug/(inventory|orders)' >&2; leaks=1
fi
for i in $(seq 1 $HOSTS); do
    if [ -n "$(ls -A "$work/host$i/tmp" 2>/dev/null)" ]; then
        echo "soak: host$i left scratch files:" >&2; ls "$work/host$i/tmp" >&2; leaks=1
    fi
done
((leaks == 0)) || exit 1
python3 -c "import sys; n, a, b, c = sys.argv[1:]; s = float(b) - float(a); print(f'soak: {n} runs in {s:.1f} s ({int(n) / s:.1f} runs/s), coordinator exit {c}, no leftovers')" \
    "$RUNS" "$t0" "$t1" "$code" >&2
exit "$code"
