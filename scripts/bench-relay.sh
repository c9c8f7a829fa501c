#!/usr/bin/env bash
# What a Faultbox relay costs a connection, against the same traffic sent directly
# and through haproxy, in one run. For each protocol (HTTP with wrk against nginx,
# Redis with redis-benchmark against redis-server, PostgreSQL with pgbench -S against
# postgres) and each load (1 client, then BENCH_CLIENTS), four paths are measured
# round-robin, BENCH_ROUNDS times:
#   direct   the load generator talks to the server on loopback;
#   haproxy  through haproxy, mode tcp, one frontend to one backend;
#   relay    through a Faultbox relay (executor/examples/relay_bench.rs: the
#            production Relays, framed pump of the protocol), no rules;
#   rule     the same with a rule installed that matches none of the requests, so
#            every request is framed, held until whole and matched.
# Prints a markdown table (medians over rounds) and the same-run ratios.
#
# Usage: scripts/bench-relay.sh   (as root; BENCH_SECONDS per measurement, default 5;
#        BENCH_ROUNDS, default 1; BENCH_CLIENTS, default 16; BENCH_ONLY, a subset of
#        "http redis postgres"; RELAY_BENCH, a relay_bench binary to use instead of
#        building one; RELAY_BASELINE, another relay_bench binary (an earlier
#        build) measured in the same rounds as "baseline" and "baseline + rule")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-1}
many=${BENCH_CLIENTS:-16}
only=${BENCH_ONLY:-http redis postgres}

[[ $(id -u) -eq 0 ]] || { echo "bench-relay: run as root (postgres runs as its own user)" >&2; exit 1; }

scripts/setup.sh
packages=(haproxy wrk nginx-light redis-server redis-tools postgresql)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "bench-relay: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ -n ${RELAY_BENCH:-} ]]; then
    relay_bin=$RELAY_BENCH
else
    cargo build --release -j2 -p faultbox-executor --example relay_bench >&2
    relay_bin=${CARGO_TARGET_DIR:-target}/release/examples/relay_bench
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

tmp=$(mktemp -d /tmp/faultbox-bench-relay.XXXXXX)
chmod 755 "$tmp" # postgres, as its own user, reaches its data dir inside
pids=()
pg_pid=
cleanup() {
    local p
    # Postgres's fast shutdown: it does not wait for clients to leave.
    [[ -z $pg_pid ]] || kill -INT "$pg_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}" $pg_pid; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, as many as asked.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits until 127.0.0.1:$1 accepts (at most 30 s).
wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-relay: nothing listens on port $1; the servers' logs:" >&2
    tail -n 5 "$tmp"/*.log "$tmp"/nginx/error.log "$tmp"/pg/log >&2 2>/dev/null || true
    return 1
}

# Servers (p), haproxy (h), the relay without (r) and with (q) a rule, the baseline
# relay without (b) and with (c) a rule.
read -r p_http p_redis p_pg h_http h_redis h_pg r_http r_redis r_pg q_http q_redis q_pg \
    b_http b_redis b_pg c_http c_redis c_pg <<<"$(free_ports 18)"
paths="direct haproxy relay rule"
[[ -z ${RELAY_BASELINE:-} ]] || paths+=" base base-rule"

# --- servers ---
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$p_http;
        location / { default_type text/plain; return 200 "hello\n"; }
    }
}
EOF
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
pids+=($!)

redis-server --bind 127.0.0.1 --port "$p_redis" --save "" --appendonly no \
    --dir "$tmp" --logfile "$tmp/redis.log" &
pids+=($!)

mkdir -p "$tmp/pg"
chown postgres: "$tmp/pg"
as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
"${as_pg[@]}" "$pgbin/initdb" -U postgres --auth=trust -E UTF8 -D "$tmp/pg/data" >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$tmp/pg/data" -k "$tmp/pg" \
    -c listen_addresses=127.0.0.1 -p "$p_pg" -c fsync=off -c synchronous_commit=off \
    -c max_connections=200 >"$tmp/pg/log" 2>&1 &
pg_pid=$!

cat >"$tmp/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
frontend http_in
    bind 127.0.0.1:$h_http
    default_backend http_out
backend http_out
    server s 127.0.0.1:$p_http
frontend redis_in
    bind 127.0.0.1:$h_redis
    default_backend redis_out
backend redis_out
    server s 127.0.0.1:$p_redis
frontend pg_in
    bind 127.0.0.1:$h_pg
    default_backend pg_out
backend pg_out
    server s 127.0.0.1:$p_pg
EOF
haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

"$relay_bin" \
    --edge "http:$r_http:$p_http" --edge "http:$q_http:$p_http:rule" \
    --edge "redis:$r_redis:$p_redis" --edge "redis:$q_redis:$p_redis:rule" \
    --edge "postgres:$r_pg:$p_pg" --edge "postgres:$q_pg:$p_pg:rule" \
    >"$tmp/relay.out" 2>"$tmp/relay.err" &
relay_pid=$!
pids+=($relay_pid)
# Each prints "ready" once every listener is open.
wait_ready() { # pid out err
    for ((i = 0; i < 300; i++)); do
        grep -q ready "$2" && return 0
        kill -0 "$1" 2>/dev/null || { cat "$3" >&2; return 1; }
        sleep 0.1
    done
    echo "bench-relay: the relay never said ready" >&2
    return 1
}
wait_ready "$relay_pid" "$tmp/relay.out" "$tmp/relay.err"
base_pid=
if [[ -n ${RELAY_BASELINE:-} ]]; then
    "$RELAY_BASELINE" \
        --edge "http:$b_http:$p_http" --edge "http:$c_http:$p_http:rule" \
        --edge "redis:$b_redis:$p_redis" --edge "redis:$c_redis:$p_redis:rule" \
        --edge "postgres:$b_pg:$p_pg" --edge "postgres:$c_pg:$p_pg:rule" \
        >"$tmp/base.out" 2>"$tmp/base.err" &
    base_pid=$!
    pids+=($base_pid)
    wait_ready "$base_pid" "$tmp/base.out" "$tmp/base.err"
fi

for p in "$p_http" "$p_redis" "$p_pg" "$h_http" "$h_redis" "$h_pg"; do
    wait_port "$p"
done
for ((i = 0; i < 100; i++)); do
    "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$p_pg" && break
    sleep 0.1
done
"$pgbin/pgbench" -h 127.0.0.1 -p "$p_pg" -U postgres -i -q -s 1 postgres >/dev/null 2>&1

# --- measurements: one line per run in $tmp/results.tsv ---
# protocol clients path round p50_ms p99_ms throughput
results=$tmp/results.tsv
: >"$results"

declare -A port_of=(
    [http direct]=$p_http [http haproxy]=$h_http [http relay]=$r_http [http rule]=$q_http
    [redis direct]=$p_redis [redis haproxy]=$h_redis [redis relay]=$r_redis [redis rule]=$q_redis
    [postgres direct]=$p_pg [postgres haproxy]=$h_pg [postgres relay]=$r_pg [postgres rule]=$q_pg
    [http base]=$b_http [http base-rule]=$c_http [redis base]=$b_redis [redis base-rule]=$c_redis
    [postgres base]=$b_pg [postgres base-rule]=$c_pg
)

# wrk's latency to ms: 12.34us, 1.20ms, 1.00s.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
        else { printf "%s", v } }'
}

run_http() { # port clients -> "p50 p99 rps"
    local out
    out=$(wrk -t1 -c"$2" -d"${secs}s" --latency "http://127.0.0.1:$1/")
    if grep -qE 'Socket errors|Non-2xx' <<<"$out"; then
        echo "bench-relay: wrk reported errors on port $1:" >&2
        echo "$out" >&2
        return 1
    fi
    local p50 p99 rps
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    rps=$(awk '$1 == "Requests/sec:" { print $2 }' <<<"$out")
    echo "$(to_ms "$p50") $(to_ms "$p99") $rps"
}

declare -A redis_n=()
run_redis() { # port clients -> "p50 p99 rps"
    local n=${redis_n[$2]:-20000} out
    out=$(redis-benchmark -h 127.0.0.1 -p "$1" -c "$2" -n "$n" -t get --csv)
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    awk -F'","' '/^"GET/ { gsub(/"/, "", $0); split($0, f, ","); print f[5], f[7], f[2] }' <<<"$out"
}

run_postgres() { # port clients -> "p50 p99 tps"
    local dir=$tmp/pglog.$RANDOM out tps
    mkdir -p "$dir"
    out=$("$pgbin/pgbench" -h 127.0.0.1 -p "$1" -U postgres -S -n -c "$2" -j 1 -T "$secs" \
        -l --log-prefix="$dir/tx" postgres 2>&1)
    if grep -q 'number of failed transactions: [1-9]' <<<"$out"; then
        echo "bench-relay: pgbench failed transactions on port $1:" >&2
        echo "$out" >&2
        return 1
    fi
    tps=$(awk '/^tps = / { print $3 }' <<<"$out")
    # Each log line: client transaction latency_us script epoch_s epoch_us.
    cat "$dir"/tx* | awk '{ print $3 }' | sort -n | awk -v tps="$tps" '
        { v[NR] = $1 }
        END { printf "%.4f %.4f %s\n", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000, tps }'
    rm -rf "$dir"
}

for proto in $only; do
    for clients in 1 "$many"; do
        if [[ $proto == redis ]]; then
            # Size the run to about BENCH_SECONDS direct: redis-benchmark counts requests.
            rps=$(run_redis "$p_redis" "$clients" | awk '{ print int($3) }')
            redis_n[$clients]=$((rps * secs))
        fi
        for ((round = 1; round <= rounds; round++)); do
            for path in $paths; do
                echo "bench-relay: $proto, $clients client(s), $path, round $round" >&2
                line=$("run_$proto" "${port_of[$proto $path]}" "$clients")
                echo "$proto $clients $path $round $line" >>"$results"
            done
        done
    done
done

# Each relay prints a summary per edge when stopped: no rule may have fired and no
# connection gone opaque, or the framed path was not what was measured.
for p in "$relay_pid" $base_pid; do
    kill "$p"
    wait "$p" || true
done
if cat "$tmp"/relay.err "$tmp"/base.err 2>/dev/null | grep -E 'fired|opaque|panicked' |
    grep -vE ' 0 fired, 0 opaque$' | grep -q .; then
    echo "bench-relay: the relay did not pass the traffic through as expected:" >&2
    cat "$tmp"/relay.err "$tmp"/base.err >&2 2>/dev/null || true
    exit 1
fi

echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) · $(uname -sr) $(uname -m) · $(nproc) CPUs ·" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "$secs s per measurement · $rounds round(s), medians · $many clients for the loaded rows ·" \
    "$(wrk --version 2>&1 | awk 'NR == 1 { print $1, $2 }'), redis-benchmark $(redis-benchmark --version | awk '{ print $2 }')," \
    "pgbench $("$pgbin/pgbench" --version | awk '{ print $3 }'), nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')," \
    "haproxy $(haproxy -v | awk 'NR == 1 { print $3 }')"
echo
grep 'rule ' "$tmp/relay.err" | sed 's/^relay_bench: \([a-z]*\)-rule-[0-9]*: rule /- \1 rule: `/; s/$/`/'
echo
python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    proto, clients, path, _round, p50, p99, thr = line.split()
    runs[(proto, int(clients), path)].append((float(p50), float(p99), float(thr)))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}

protos = list(dict.fromkeys(k[0] for k in med))
loads = sorted(set(k[1] for k in med))
names = {"direct": "direct", "haproxy": "haproxy", "relay": "relay, no rules",
         "rule": "relay, non-matching rule", "base": "baseline relay, no rules",
         "base-rule": "baseline relay, non-matching rule"}
paths = [p for p in names if any(k[2] == p for k in med)]
unit = {"http": "req/s", "redis": "req/s", "postgres": "tx/s"}

print("| protocol | clients | path | p50 ms | p99 ms | throughput | p50 × direct | throughput × direct | throughput × haproxy |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
for proto in protos:
    for c in loads:
        d, h = med[(proto, c, "direct")], med[(proto, c, "haproxy")]
        for path in paths:
            p50, p99, thr = med[(proto, c, path)]
            print(f"| {proto} | {c} | {names[path]} | {p50:.3f} | {p99:.3f} | {thr:,.0f} {unit[proto]} "
                  f"| {p50 / d[0]:.2f} | {thr / d[2]:.2f} | {thr / h[2]:.2f} |")

print()
print("Added p50 latency (path − direct, µs) and throughput against haproxy's, same run:")
print()
print("| protocol | clients | haproxy adds | relay adds | relay + rule adds | relay ÷ haproxy (added p50) | rule ÷ haproxy (added p50) | relay thr ÷ haproxy | rule thr ÷ haproxy |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for proto in protos:
    for c in loads:
        d, h, r, q = (med[(proto, c, p)] for p in ["direct", "haproxy", "relay", "rule"])
        add = lambda x: (x[0] - d[0]) * 1000
        ratio = lambda x: f"{add(x) / add(h):.2f}" if add(h) > 0 else "-"
        print(f"| {proto} | {c} | {add(h):.1f} | {add(r):.1f} | {add(q):.1f} | {ratio(r)} | {ratio(q)} "
              f"| {r[2] / h[2]:.2f} | {q[2] / h[2]:.2f} |")
if "base" in paths:
    print()
    print("This build against the baseline build, same run:")
    print()
    print("| protocol | clients | p50 ms, baseline → this | throughput, baseline → this | × | with the rule: p50 ms | throughput | × |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for proto in protos:
        for c in loads:
            b, r, bq, q = (med[(proto, c, p)] for p in ["base", "relay", "base-rule", "rule"])
            print(f"| {proto} | {c} | {b[0]:.3f} → {r[0]:.3f} | {b[2]:,.0f} → {r[2]:,.0f} | {r[2] / b[2]:.2f} "
                  f"| {bq[0]:.3f} → {q[0]:.3f} | {bq[2]:,.0f} → {q[2]:,.0f} | {q[2] / bq[2]:.2f} |")
PY
