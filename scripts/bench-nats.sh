#!/usr/bin/env bash
# What a Faultbox relay costs NATS traffic, against the same traffic sent directly,
# in one run: Debian's nats-server, and executor/examples/nats_load.rs (one load
# generator for every path) measuring
#   latency     one publisher: PUB then PING, waiting for the PONG (p50, p99);
#   throughput  a publisher in batches of 1000 PUBs + PING, a subscriber on its own
#               connection counting deliveries (msgs/s).
# Paths, measured round-robin BENCH_ROUNDS times:
#   direct  straight to nats-server on loopback;
#   haproxy through haproxy, mode tcp: what any proxy's extra hop costs;
#   relay   through a Faultbox relay (executor/examples/relay_bench.rs: the production
#           Relays and framed pump, both directions framed), no rules;
#   rule    the same with error(topic="nomatch.>") installed, so every publish is
#           held until whole and matched.
# Prints a markdown table (medians over rounds) and the same-run ratios.
#
# Usage: scripts/bench-nats.sh   (BENCH_SECONDS per measurement, default 5;
#        BENCH_ROUNDS, default 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}

bash scripts/servers.sh
cargo build --release -j2 -p faultbox-executor --example relay_bench --example nats_load >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples

tmp=$(mktemp -d /tmp/faultbox-bench-nats.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

dpkg -s haproxy 2>/dev/null | grep -q '^Status: install ok installed' || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
}
p_nats=24222 p_relay=24223 p_rule=24224 p_haproxy=24225
cat >"$tmp/haproxy.cfg" <<CFG
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend f
    bind 127.0.0.1:$p_haproxy
    default_backend b
backend b
    server s 127.0.0.1:$p_nats
CFG
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)
/usr/sbin/nats-server -a 127.0.0.1 -p "$p_nats" >"$tmp/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p_nats") 2>/dev/null && break
    sleep 0.1
done
"$bin/relay_bench" --edge "nats:$p_relay:$p_nats" --edge "nats:$p_rule:$p_nats:rule" \
    >"$tmp/relay.out" 2>"$tmp/relay.err" &
pids+=($!)
for _ in $(seq 100); do
    grep -q ready "$tmp/relay.out" 2>/dev/null && break
    sleep 0.1
done

declare -A lat99 lat50 pub del
for r in $(seq "$rounds"); do
    for path in direct haproxy relay rule; do
        case $path in
            direct) port=$p_nats ;; haproxy) port=$p_haproxy ;;
            relay) port=$p_relay ;; rule) port=$p_rule ;;
        esac
        l=$("$bin/nats_load" latency "127.0.0.1:$port" "$secs")
        t=$("$bin/nats_load" throughput "127.0.0.1:$port" "$secs")
        lat50[$path]+="$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$l") "
        lat99[$path]+="$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$l") "
        pub[$path]+="$(sed -E 's/.*published_per_s=([0-9]+).*/\1/' <<<"$t") "
        del[$path]+="$(sed -E 's/.*delivered_per_s=([0-9]+).*/\1/' <<<"$t") "
        echo "round $r $path: $l $t" >&2
    done
done
if grep -E "fired|opaque" "$tmp/relay.err" >&2; then
    echo "bench-nats: a rule fired or a connection went opaque: the measurement is void" >&2
    exit 1
fi

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| path | publish p50 (µs) | p99 (µs) | published msgs/s | delivered msgs/s |"
echo "|---|---|---|---|---|"
for path in direct haproxy relay rule; do
    echo "| $path | $(median "${lat50[$path]}") | $(median "${lat99[$path]}") | $(median "${pub[$path]}") | $(median "${del[$path]}") |"
done
d50=$(median "${lat50[direct]}") dpub=$(median "${pub[direct]}")
for path in haproxy relay rule; do
    awk -v p="$path" -v a="$(median "${lat50[$path]}")" -v b="$d50" \
        -v c="$(median "${pub[$path]}")" -v d="$dpub" \
        'BEGIN { printf "%s: p50 %.2fx direct, throughput %.0f%% of direct\n", p, a / b, 100 * c / d }'
done
