#!/usr/bin/env bash
# What a Faultbox relay costs a gRPC unary call, against the same calls sent directly,
# in one run. The server and the load generator are executor/examples/grpc_bench.rs
# (hyper, HTTP/2, gRPC framing and trailers); the relay is the production one
# (executor/examples/relay_bench.rs: Relays with a `grpc` edge, which terminates
# HTTP/2 and forwards each call on its own connection to the server). Three paths,
# measured round-robin BENCH_ROUNDS times, for 1 caller on 1 connection and for
# BENCH_CLIENTS callers on 4 connections:
#   direct   the load generator calls the server on loopback;
#   haproxy  through haproxy (mode tcp), when installed: what a byte relay adds;
#   relay    through a relay, no rules;
#   rule     through a relay with a rule that matches no call, so every call is
#            matched (its :path against the rule's method pattern).
# Prints a markdown table (medians over rounds) and the same-run ratios.
#
# Usage: scripts/bench-grpc.sh   (BENCH_SECONDS per measurement, default 5;
#        BENCH_ROUNDS, default 3; BENCH_CLIENTS, default 16; GRPC_BENCH and
#        RELAY_BENCH, binaries to use instead of building them)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
many=${BENCH_CLIENTS:-16}

if [[ -z ${GRPC_BENCH:-} || -z ${RELAY_BENCH:-} ]]; then
    cargo build --release -j2 -p faultbox-executor --example grpc_bench --example relay_bench >&2
fi
out=${CARGO_TARGET_DIR:-target}/release/examples
grpc_bin=${GRPC_BENCH:-$out/grpc_bench}
relay_bin=${RELAY_BENCH:-$out/relay_bench}

tmp=$(mktemp -d /tmp/faultbox-bench-grpc.XXXXXX)
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
trap 'exit 130' INT TERM

read -r p_srv p_relay p_rule p_hap <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"

wait_ready() {
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q ready "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-grpc: $1 never got ready:" >&2
    cat "$1" >&2
    return 1
}

"$grpc_bin" server "$p_srv" >"$tmp/server.log" 2>&1 &
pids+=($!)
"$relay_bin" --edge "grpc:$p_relay:$p_srv" --edge "grpc:$p_rule:$p_srv:rule" >"$tmp/relay.log" 2>"$tmp/relay.err" &
relay_pid=$!
pids+=($relay_pid)
wait_ready "$tmp/server.log"
wait_ready "$tmp/relay.log"

paths="direct relay rule"
declare -A port=([direct]=$p_srv [relay]=$p_relay [rule]=$p_rule [haproxy]=$p_hap)
if command -v haproxy >/dev/null; then
    cat >"$tmp/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
frontend grpc_in
    bind 127.0.0.1:$p_hap
    default_backend grpc_out
backend grpc_out
    server s 127.0.0.1:$p_srv
EOF
    haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
    pids+=($!)
    paths="direct haproxy relay rule"
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p_hap") 2>/dev/null && break
        sleep 0.1
    done
fi
loads="1:1 $many:4"
for ((r = 1; r <= rounds; r++)); do
    for load in $loads; do
        callers=${load%%:*} conns=${load##*:}
        for path in $paths; do
            line=$("$grpc_bin" load "127.0.0.1:${port[$path]}" "$secs" "$callers" "$conns")
            echo "$path $callers $line" >>"$tmp/results"
            echo "bench-grpc: round $r, $callers caller(s), $path: $line (calls p50_us p99_us calls/s)" >&2
        done
    done
done

kill -TERM "$relay_pid"
wait "$relay_pid" 2>/dev/null || true
if grep -q -e "a rule fired" -e "went opaque" "$tmp/relay.err"; then
    echo "bench-grpc: the relay reported a fired rule or an opaque connection:" >&2
    cat "$tmp/relay.err" >&2
    exit 1
fi

python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    path, callers, calls, p50, p99, rate = line.split()
    rows.setdefault((int(callers), path), []).append((int(p50), int(p99), float(rate)))
names = {"direct": "direct", "haproxy": "haproxy (tcp)", "relay": "relay, no rules",
         "rule": "relay, non-matching rule"}
print("| callers | path | p50 ms | p99 ms | calls/s | p50 vs direct | calls/s vs direct |")
print("|---|---|---|---|---|---|---|")
for callers in sorted({c for c, _ in rows}):
    paths = [p for p in names if (callers, p) in rows]
    med = {p: tuple(statistics.median(x[i] for x in rows[(callers, p)]) for i in range(3))
           for p in paths}
    d = med["direct"]
    for p in paths:
        m = med[p]
        print(f"| {callers} | {names[p]} | {m[0]/1000:.3f} | {m[1]/1000:.3f} | {m[2]:,.0f} | "
              f"{m[0]/d[0]:.2f}x | {m[2]/d[2]:.2f} |")
PY
