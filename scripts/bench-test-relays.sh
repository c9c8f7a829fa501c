#!/usr/bin/env bash
# What the relays add to each test: the same services and an empty test body, with
# the services' interfaces declared (so every party gets a relay to every other
# service's interface) and without (no relays; each service still gets its own
# network namespace). Two and three services (the example inventory and orders, and
# a second inventory), all four specs alternated in one run, BENCH_RUNS runs each
# per batch, BENCH_BATCHES batches. Per-run figure: duration minus body (as
# scripts/bench-test.sh), from `faultbox test --format json`; medians.
#
# Usage: scripts/bench-test-relays.sh   (as root; BENCH_RUNS default 20,
#        BENCH_BATCHES default 5)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${BENCH_RUNS:-20}
batches=${BENCH_BATCHES:-5}

scripts/setup.sh
cargo build --release -j2 -p faultbox-coordinator -p faultbox-shim \
    -p faultbox-example-inventory -p faultbox-example-orders >&2
bin=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)

tmp=$(mktemp -d /tmp/faultbox-bench-test-relays.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# spec NAME SERVICES(2|3) RELAYS(1|0)
spec() {
    local iface_inv='' iface_orders='' iface_inv2='' inv_addr='"localhost:5432"'
    if [[ $3 == 1 ]]; then
        iface_inv='interface("main", "tcp", 5432),'
        iface_orders='interface("public", "http", 8080),'
        iface_inv2='interface("main", "tcp", 5433),'
        inv_addr='inventory.main.addr'
    fi
    {
        cat <<EOF
inventory = service("inventory", "$bin/inventory", $iface_inv
    env = {"PORT": "5432"}, healthcheck = tcp("localhost:5432"))
orders = service("orders", "$bin/orders", $iface_orders
    env = {"PORT": "8080", "INVENTORY_ADDR": $inv_addr}, depends_on = [inventory],
    healthcheck = tcp("localhost:8080"))
EOF
        if [[ $2 == 3 ]]; then
            cat <<EOF
inventory2 = service("inventory2", "$bin/inventory", $iface_inv2
    env = {"PORT": "5433"}, healthcheck = tcp("localhost:5433"))
EOF
        fi
        echo 'def test_empty():'
        echo '    pass'
    } >"$tmp/$1.star"
}
spec two_relays 2 1
spec two_plain 2 0
spec three_relays 3 1
spec three_plain 3 0

for ((b = 1; b <= batches; b++)); do
    for s in two_relays two_plain three_relays three_plain; do
        echo "bench-test-relays: batch $b, $s" >&2
        "$bin/faultbox" test "$tmp/$s.star" --runs "$runs" --format json \
            >"$tmp/$s.$b.json" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    done
done

python3 - "$tmp" "$batches" <<'PY'
import json, statistics, sys
tmp, batches = sys.argv[1], int(sys.argv[2])
def load(name):
    tests = []
    for b in range(1, batches + 1):
        tests += json.load(open(f"{tmp}/{name}.{b}.json"))["tests"]
    assert all(t["result"] == "pass" for t in tests), name
    return tests
med = {}
print("| services | relays | runs | whole test minus body, ms | sandbox + network | launch | ready | stop |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for n, word in [(2, "two"), (3, "three")]:
    for relays in ["relays", "plain"]:
        t = load(f"{word}_{relays}")
        total = statistics.median(x["duration_ms"] - x["timings_ms"]["body"] for x in t)
        ph = {k: statistics.median(x["timings_ms"][k] for x in t) for k in ["sandbox", "launch", "ready", "stop"]}
        med[(n, relays)] = total
        edges = "every edge" if relays == "relays" else "none (no interfaces)"
        print(f"| {n} | {edges} | {len(t)} | {total:.2f} | {ph['sandbox']:.2f} | {ph['launch']:.2f} | {ph['ready']:.2f} | {ph['stop']:.2f} |")
print()
for n in [2, 3]:
    print(f"- {n} services: relays add **{med[(n, 'relays')] - med[(n, 'plain')]:+.2f} ms** per test")
PY
