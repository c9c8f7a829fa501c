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
#   before, before-rule   relay and rule through BENCH_BASELINE, a relay_bench built
#           from an earlier commit (only when set): before and after in one run.
# Prints a markdown table (medians over rounds) and the same-run ratios, and the
# relay's CPU time per message relayed (user + system, over the throughput runs).
#
# Usage: scripts/bench-nats.sh   (BENCH_SECONDS per measurement, default 5;
#        BENCH_ROUNDS, default 3; BENCH_BASELINE, a relay_bench binary)
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
p_nats=24222 p_relay=24223 p_rule=24224 p_haproxy=24225 p_before=24226 p_before_rule=24227
paths="direct haproxy relay rule"
if [ -n "${BENCH_BASELINE:-}" ]; then
    paths="$paths before before-rule"
fi
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
relay_pid=$!
before_pid=
if [ -n "${BENCH_BASELINE:-}" ]; then
    "$BENCH_BASELINE" --edge "nats:$p_before:$p_nats" --edge "nats:$p_before_rule:$p_nats:rule" \
        >"$tmp/before.out" 2>"$tmp/before.err" &
    pids+=($!)
    before_pid=$!
fi
for _ in $(seq 100); do
    grep -q ready "$tmp/relay.out" 2>/dev/null &&
        { [ -z "$before_pid" ] || grep -q ready "$tmp/before.out" 2>/dev/null; } && break
    sleep 0.1
done
# CPU time (user + system, in clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

declare -A lat99 lat50 pub del cpu
loads=()
for r in $(seq "$rounds"); do
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
    for path in $paths; do
        proc=
        case $path in
            direct) port=$p_nats ;; haproxy) port=$p_haproxy ;;
            relay) port=$p_relay proc=$relay_pid ;; rule) port=$p_rule proc=$relay_pid ;;
            before) port=$p_before proc=$before_pid ;;
            before-rule) port=$p_before_rule proc=$before_pid ;;
        esac
        l=$("$bin/nats_load" latency "127.0.0.1:$port" "$secs")
        [ -n "$proc" ] && t0=$(ticks "$proc")
        t=$("$bin/nats_load" throughput "127.0.0.1:$port" "$secs")
        lat50[$path]+="$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$l") "
        lat99[$path]+="$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$l") "
        p=$(sed -E 's/.*published_per_s=([0-9]+).*/\1/' <<<"$t")
        pub[$path]+="$p "
        del[$path]+="$(sed -E 's/.*delivered_per_s=([0-9]+).*/\1/' <<<"$t") "
        if [ -n "$proc" ]; then
            # Nanoseconds of relay CPU per message published (each is relayed twice:
            # the publish, and its delivery to the subscriber).
            cpu[$path]+="$(awk -v a="$t0" -v b="$(ticks "$proc")" -v hz="$hz" -v p="$p" -v s="$secs" \
                'BEGIN { printf "%.0f", 1e9 * (b - a) / hz / (p * s) }') "
        fi
        echo "round $r $path: $l $t" >&2
    done
done
if grep -E "fired|opaque" "$tmp/relay.err" "$tmp"/before.err 2>/dev/null >&2; then
    echo "bench-nats: a rule fired or a connection went opaque: the measurement is void" >&2
    exit 1
fi

median() { tr ' ' '\n' <<<"$1" | { grep . || true; } | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "load average (1 min) at each round: ${loads[*]}"
echo
echo "| path | publish p50 (µs) | p99 (µs) | published msgs/s | delivered msgs/s | relay CPU ns/msg |"
echo "|---|---|---|---|---|---|"
for path in $paths; do
    c=$(median "${cpu[$path]:-}")
    echo "| $path | $(median "${lat50[$path]}") | $(median "${lat99[$path]}") | $(median "${pub[$path]}") | $(median "${del[$path]}") | ${c:-} |"
done
d50=$(median "${lat50[direct]}") dpub=$(median "${pub[direct]}")
h50=$(median "${lat50[haproxy]}") hpub=$(median "${pub[haproxy]}")
for path in $paths; do
    [ "$path" = direct ] && continue
    awk -v p="$path" -v a="$(median "${lat50[$path]}")" -v b="$d50" -v h="$h50" \
        -v c="$(median "${pub[$path]}")" -v d="$dpub" -v hp="$hpub" \
        'BEGIN { printf "%s: p50 %.2fx direct (%.2fx haproxy), throughput %.0f%% of direct (%.0f%% of haproxy)\n", p, a / b, a / h, 100 * c / d, 100 * c / hp }'
done
# Ratios per round (each path against direct in the same round), medians: on a
# shared machine a round's load moves every path alike.
for path in $paths; do
    [ "$path" = direct ] && continue
    paste -d' ' <(tr ' ' '\n' <<<"${pub[$path]}" | grep .) <(tr ' ' '\n' <<<"${pub[direct]}" | grep .) |
        awk '{print 100 * $1 / $2}' | sort -n |
        awk -v p="$path" '{a[NR]=$1} END { printf "%s: throughput per round %% of direct: median %.0f (", p, a[int((NR+1)/2)]; for (i=1;i<=NR;i++) printf "%s%.0f", (i>1?" ":""), a[i]; print ")" }'
done
