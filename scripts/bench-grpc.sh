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
#            matched (its :path against the rule's method pattern);
#   before, before-rule   relay and rule through BENCH_BASELINE, a relay_bench built
#            from an earlier commit (only when set): before and after in one run.
# Prints a markdown table (medians over rounds) with the proxy's CPU time per call
# (user + system of the haproxy or relay process over the measurement, divided by
# the calls: on a shared 2-core machine the steadier figure), and the throughput
# against direct per round (each path over direct in the same round).
#
# Usage: scripts/bench-grpc.sh   (BENCH_SECONDS per measurement, default 5;
#        BENCH_ROUNDS, default 3; BENCH_CLIENTS, default 16; GRPC_BENCH and
#        RELAY_BENCH, binaries to use instead of building them; BENCH_BASELINE,
#        a relay_bench binary to measure as "before")
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

read -r p_srv p_relay p_rule p_hap p_before p_before_rule <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(6):
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
before_pid=
if [[ -n ${BENCH_BASELINE:-} ]]; then
    "$BENCH_BASELINE" --edge "grpc:$p_before:$p_srv" --edge "grpc:$p_before_rule:$p_srv:rule" \
        >"$tmp/before.log" 2>"$tmp/before.err" &
    before_pid=$!
    pids+=($before_pid)
fi
wait_ready "$tmp/server.log"
wait_ready "$tmp/relay.log"
[[ -z $before_pid ]] || wait_ready "$tmp/before.log"

paths="direct relay rule"
declare -A port=([direct]=$p_srv [relay]=$p_relay [rule]=$p_rule [haproxy]=$p_hap
    [before]=$p_before [before-rule]=$p_before_rule)
declare -A proc=([relay]=$relay_pid [rule]=$relay_pid)
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
    proc[haproxy]=$!
    paths="direct haproxy relay rule"
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p_hap") 2>/dev/null && break
        sleep 0.1
    done
fi
if [[ -n $before_pid ]]; then
    paths="$paths before before-rule"
    proc[before]=$before_pid
    proc[before-rule]=$before_pid
fi
# CPU time (user + system, in clock ticks, every thread) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
loads="1:1 $many:4"
for ((r = 1; r <= rounds; r++)); do
    echo "bench-grpc: round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    echo "$r $(cut -d' ' -f1 /proc/loadavg)" >>"$tmp/loadavg"
    for load in $loads; do
        callers=${load%%:*} conns=${load##*:}
        for path in $paths; do
            pid=${proc[$path]:-}
            [[ -z $pid ]] || t0=$(ticks "$pid")
            line=$("$grpc_bin" load "127.0.0.1:${port[$path]}" "$secs" "$callers" "$conns")
            # Nanoseconds of the proxy's CPU per call ("-" for direct).
            cpu=-
            if [[ -n $pid ]]; then
                cpu=$(awk -v a="$t0" -v b="$(ticks "$pid")" -v hz="$hz" -v n="${line%% *}" \
                    'BEGIN { printf "%.0f", 1e9 * (b - a) / hz / n }')
            fi
            echo "$r $path $callers $line $cpu" >>"$tmp/results"
            echo "bench-grpc: round $r, $callers caller(s), $path: $line $cpu (calls p50_us p99_us calls/s cpu_ns/call)" >&2
        done
    done
done

for pid in $relay_pid $before_pid; do
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
done
if grep -q -e "a rule fired" -e "went opaque" "$tmp/relay.err" "$tmp"/before.err 2>/dev/null; then
    echo "bench-grpc: a relay reported a fired rule or an opaque connection:" >&2
    cat "$tmp/relay.err" "$tmp"/before.err >&2 2>/dev/null
    exit 1
fi

echo "load average (1 min) at each round's start: $(cut -d' ' -f2 "$tmp/loadavg" | tr '\n' ' ')"
echo
python3 - "$tmp/results" <<'PY'
import statistics, sys
rows, rounds = {}, {}
for line in open(sys.argv[1]):
    r, path, callers, calls, p50, p99, rate, cpu = line.split()
    key = (int(callers), path)
    rows.setdefault(key, []).append(
        (int(p50), int(p99), float(rate), None if cpu == "-" else int(cpu)))
    rounds.setdefault(key, {})[int(r)] = float(rate)
names = {"direct": "direct", "haproxy": "haproxy (tcp)", "relay": "relay, no rules",
         "rule": "relay, non-matching rule", "before": "before, no rules",
         "before-rule": "before, non-matching rule"}
print("| callers | path | p50 ms | p99 ms | calls/s | p50 vs direct | calls/s vs direct "
      "| calls/s vs haproxy | proxy CPU µs/call |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for callers in sorted({c for c, _ in rows}):
    paths = [p for p in names if (callers, p) in rows]
    med = {}
    for p in paths:
        xs = rows[(callers, p)]
        cpus = [x[3] for x in xs if x[3] is not None]
        med[p] = tuple(statistics.median(x[i] for x in xs) for i in range(3)) + (
            statistics.median(cpus) if cpus else None,)
    d, h = med["direct"], med.get("haproxy")
    for p in paths:
        m = med[p]
        vs_h = f"{m[2]/h[2]:.2f}" if h else ""
        cpu = f"{m[3]/1000:.1f}" if m[3] is not None else ""
        print(f"| {callers} | {names[p]} | {m[0]/1000:.3f} | {m[1]/1000:.3f} | {m[2]:,.0f} | "
              f"{m[0]/d[0]:.2f}x | {m[2]/d[2]:.2f} | {vs_h} | {cpu} |")
print()
# Each path over direct in the same round: a round's load moves every path alike.
for callers in sorted({c for c, _ in rows}):
    direct = rounds[(callers, "direct")]
    for p in names:
        if p == "direct" or (callers, p) not in rounds:
            continue
        per = sorted(100 * v / direct[r] for r, v in rounds[(callers, p)].items())
        print(f"{callers} caller(s), {names[p]}: calls/s per round, % of direct: median "
              f"{statistics.median(per):.0f} ({' '.join(f'{x:.0f}' for x in per)})")
PY
