#!/usr/bin/env bash
# What a Faultbox relay costs Kafka traffic, against the same traffic sent directly,
# in one run: three tansu brokers (memory storage), each advertising the address its
# clients reach it by, so every connection of a path stays on that path:
#   direct  confluent-kafka talks to the broker on loopback;
#   relay   through a Faultbox relay (executor/examples/relay_bench.rs: the production
#           Relays and framed pump of the kafka protocol), no rules;
#   rule    the same with a rule that matches no topic (error(topic="nomatch*")), so
#           every Produce request is decoded and matched and every Fetch response is
#           read whole.
# The paths run round-robin BENCH_ROUNDS times (scripts/bench-kafka.py: produce
# latency one record at a time, produce and consume throughput); prints the medians
# as a markdown table and the same-run ratios to direct.
#
# Usage: scripts/bench-kafka.sh   (BENCH_ROUNDS, default 3; BENCH_LATENCY records
#        for latency, default 500; BENCH_RECORDS for throughput, default 50000;
#        RELAY_BENCH, a relay_bench binary to use instead of building one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${BENCH_ROUNDS:-3}
n_lat=${BENCH_LATENCY:-500}
n_tp=${BENCH_RECORDS:-50000}
venv=/var/cache/faultbox/venv
tansu=$venv/bin/tansu
[[ -x $tansu ]] || scripts/servers.sh

if [[ -n ${RELAY_BENCH:-} ]]; then
    relay_bin=$RELAY_BENCH
else
    cargo build --release -j2 -p faultbox-executor --example relay_bench >&2
    relay_bin=${CARGO_TARGET_DIR:-target}/release/examples/relay_bench
fi

tmp=$(mktemp -d /tmp/faultbox-bench-kafka.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# broker PORT ADVERTISED
broker() {
    "$tansu" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$2" \
        --storage-engine memory://tansu/ >"$tmp/tansu-$1.log" 2>&1 &
    pids+=($!)
}

d=$(free_port); r_up=$(free_port); r=$(free_port); q_up=$(free_port); q=$(free_port)
broker "$d" "$d"
broker "$r_up" "$r"
broker "$q_up" "$q"
"$relay_bin" --edge "kafka:$r:$r_up" --edge "kafka:$q:$q_up:rule" >"$tmp/relay.out" 2>"$tmp/relay.err" &
relay_pid=$!
pids+=($relay_pid)
for _ in $(seq 100); do
    grep -q ready "$tmp/relay.out" 2>/dev/null && break
    sleep 0.1
done
for port in "$d" "$r_up" "$q_up"; do
    for _ in $(seq 100); do
        (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.1
    done
done

declare -A addr=([direct]=$d [relay]=$r [rule]=$q)
for round in $(seq "$rounds"); do
    for path in direct relay rule; do
        out=$("$venv/bin/python" scripts/bench-kafka.py "127.0.0.1:${addr[$path]}" "bench-$round-$path" "$n_lat" "$n_tp")
        echo "$path $out" >>"$tmp/results"
        echo "bench-kafka: round $round $path $out" >&2
    done
done

kill -TERM "$relay_pid"
wait "$relay_pid" 2>/dev/null || true
if grep -qE "a rule fired:|went opaque:" "$tmp/relay.err"; then
    echo "bench-kafka: the relay reported a firing or an opaque connection:" >&2
    cat "$tmp/relay.err" >&2
    exit 1
fi

python3 - "$tmp/results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    path, doc = line.split(" ", 1)
    d = json.loads(doc)
    if d["consumed"] != d["expected"]:
        sys.exit("bench-kafka: %s consumed %d of %d records" % (path, d["consumed"], d["expected"]))
    rows.setdefault(path, []).append(d)
med = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in rows.items()}
print("| path | produce p50 (µs) | produce p99 (µs) | produce (records/s) | consume (records/s) |")
print("|---|---|---|---|---|")
for p in ["direct", "relay", "rule"]:
    m = med[p]
    print("| %s | %.0f | %.0f | %.0f | %.0f |" % (p, m["produce_p50_us"], m["produce_p99_us"], m["produce_per_s"], m["consume_per_s"]))
print()
for p in ["relay", "rule"]:
    m, d = med[p], med["direct"]
    print("%s vs direct: p50 x%.2f, produce throughput %.0f%%, consume throughput %.0f%%" % (
        p, m["produce_p50_us"] / d["produce_p50_us"], 100 * m["produce_per_s"] / d["produce_per_s"],
        100 * m["consume_per_s"] / d["consume_per_s"]))
PY
