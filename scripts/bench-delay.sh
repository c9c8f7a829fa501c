#!/usr/bin/env bash
# Delays as long as asked: what a delay fault of d costs, before and after the delay
# timer, side by side in one run (rounds interleaved).
#
# Usage: scripts/bench-delay.sh [--out FILE]
#
# Measures, for the "before" commit and for this tree:
#   syscall  `faultbox run --fault "getpid=delay:D:100%"` on soak/bench/delayloop.c:
#            the cost of one delayed call (D = 100us, 1ms, 10ms, one thread), and 24
#            threads delayed 1 ms on every call (calls/s against the ideal 24,000)
#   floor    the C floor of a seccomp round trip (minsup, continue, blocking receive
#            with SYNC_WAKE_UP) and `faultbox run --fault getppid=EPERM:0%` on the
#            same loop: undelayed calls must not get slower
#   relay    Redis GET through a relay edge with a delay rule on GET (D = 100us,
#            1ms, 10ms) against an edge without rules, requests back to back and
#            with the client idle D before each (soak/bench/redis_latency.py,
#            redis-py, one connection): what the rule adds
#   timer    executor/examples/timer_bench.rs (this tree only): the delay timer
#            against tokio::time::sleep, the heap, one timer per process or per
#            supervisor
#
# Environment:
#   BEFORE_REF     the commit measured as "before" (5d05f95, the last without the
#                  delay timer); built from `git archive` under target/bench-delay/
#   BEFORE_BIN     a directory holding a "before" faultbox, faultbox-shim and
#                  examples/relay_bench already built (skips that build)
#   BENCH_ROUNDS   rounds, interleaved (3); figures are medians over rounds
#   BENCH_QUICK    1: a tenth of the calls (a smoke run)
#   BENCH_ONLY     only these sections (extended regex over syscall|floor|relay|timer)
#
# The markdown report goes to stdout (and to FILE with --out); progress to stderr.
# Needs root (namespaces), gcc, libseccomp-dev, redis-server and python3-redis
# (installed from Debian when missing).

set -euo pipefail

caller_pwd=$PWD
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

out_file=""
while (($#)); do
    case $1 in
        --out) (($# >= 2)) || usage; out_file=$2; shift 2 ;;
        --out=*) out_file=${1#--out=}; shift ;;
        -h | --help) usage ;;
        *) echo "bench-delay: unknown argument: $1" >&2; usage ;;
    esac
done
if [[ -n $out_file && $out_file != /* ]]; then
    out_file=$caller_pwd/$out_file
fi

before_ref=${BEFORE_REF:-5d05f95}
before_bin=${BEFORE_BIN:-}
rounds=${BENCH_ROUNDS:-3}
quick=${BENCH_QUICK:-0}
only=${BENCH_ONLY:-}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "bench-delay: BENCH_ROUNDS must be a positive integer" >&2; exit 2; }

log() { echo "bench-delay: $*" >&2; }
section() { [[ -z $only || $1 =~ $only ]]; }

# --- dependencies and builds ----------------------------------------------------

ensure_packages() {
    local missing=() p
    command -v dpkg >/dev/null || return 0
    for p in gcc make libseccomp-dev redis-server python3-redis; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    apt-get install -y "${missing[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; }
}

ensure_packages
log "building the C programs"
make -s -C soak/bench all >&2

log "building this tree (release)"
cargo build --release -p faultbox-coordinator -p faultbox-shim >&2
cargo build --release -p faultbox-executor --example relay_bench --example timer_bench >&2
after_dir=$repo_root/target/release

if [[ -z $before_bin ]]; then
    work=$repo_root/target/bench-delay
    src=$work/before-src
    commit=$(git rev-parse --verify "$before_ref^{commit}")
    if [[ $(cat "$src/.commit" 2>/dev/null) != "$commit" ]]; then
        log "extracting $before_ref ($commit) into $src"
        rm -rf "$src"
        mkdir -p "$src"
        git archive "$commit" | tar -x -C "$src"
        echo "$commit" >"$src/.commit"
    fi
    # The harness is this tree's: it only drives the relays through their public API.
    cp executor/examples/relay_bench.rs "$src/executor/examples/relay_bench.rs"
    log "building $before_ref (release) in $work/before-target"
    (cd "$src" && CARGO_TARGET_DIR=$work/before-target cargo build --release \
        -p faultbox-coordinator -p faultbox-shim >&2 &&
        CARGO_TARGET_DIR=$work/before-target cargo build --release \
            -p faultbox-executor --example relay_bench >&2)
    before_bin=$work/before-target/release
fi
for f in faultbox faultbox-shim examples/relay_bench; do
    [[ -x $before_bin/$f ]] || { log "missing $before_bin/$f"; exit 1; }
    [[ -x $after_dir/$f ]] || { log "missing $after_dir/$f"; exit 1; }
done

declare -A bin=([before]=$before_bin [after]=$after_dir)
sides=(before after)
build=$repo_root/soak/bench/build

# --- scratch and cleanup --------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/faultbox-bench-delay.XXXXXX")
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

us() {
    case $1 in
        *us) echo "${1%us}" ;;
        *ms) echo "$((${1%ms} * 1000))" ;;
    esac
}
scale() { if [[ $quick == 1 ]]; then echo $(((${1} + 9) / 10)); else echo "$1"; fi; }

# samples[KEY] holds one value per round.
declare -A samples

# record KEY VALUE
record() { samples[$1]+="$2 "; }

# field LINE NAME: the value of NAME=... in LINE.
field() { grep -o "$2=[0-9.]*" <<<"$1" | head -n 1 | cut -d= -f2; }

# --- syscall delays -------------------------------------------------------------

delays=(100us 1ms 10ms)
declare -A calls_for=([100us]=4000 [1ms]=1000 [10ms]=100)
threads24=24
calls24=$(scale 400)

# delayed SIDE D THREADS CALLS: runs delayloop under a delay rule; prints its line.
delayed() {
    local side=$1 d=$2 threads=$3 n=$4 err=$tmp/delayed.err
    "${bin[$side]}/faultbox" run --log-format=json --fault "getpid=delay:$d:100%" \
        -- "$build/delayloop" "$threads" "$n" >/dev/null 2>"$err" || true
    local line
    line=$(grep '^delay_result' "$err" | tail -n 1 || true)
    if [[ -z $line ]]; then
        log "$side delay $d x$threads: no result line"
        tail -n 20 "$err" >&2
        exit 1
    fi
    echo "$line"
}

syscall_round() {
    local side d line
    for d in "${delays[@]}"; do
        for side in "${sides[@]}"; do
            line=$(delayed "$side" "$d" 1 "$(scale "${calls_for[$d]}")")
            record "sys/$side/$d/mean" "$(field "$line" mean_us)"
            record "sys/$side/$d/p50" "$(field "$line" p50_us)"
            record "sys/$side/$d/p99" "$(field "$line" p99_us)"
            log "  $side delay $d: $line"
        done
    done
    for side in "${sides[@]}"; do
        line=$(delayed "$side" 1ms "$threads24" "$calls24")
        record "sys/$side/x24/rate" "$(field "$line" rate)"
        record "sys/$side/x24/mean" "$(field "$line" mean_us)"
        record "sys/$side/x24/p99" "$(field "$line" p99_us)"
        log "  $side 24 threads x 1ms: $line"
    done
}

# --- the C floor ----------------------------------------------------------------

floor_iters=$(scale 200000)

ns_per_call() {
    local err=$tmp/floor.err
    "$@" >/dev/null 2>"$err" || true
    local v
    v=$(grep -o 'ns_per_call=[0-9.]*' "$err" | tail -n 1 | cut -d= -f2 || true)
    [[ -n $v ]] || { log "no ns_per_call from: $*"; tail -n 20 "$err" >&2; exit 1; }
    echo "$v"
}

floor_round() {
    local side v
    v=$(ns_per_call "$build/minsup" --mode continue --recv blocking --sync-wakeup 1 getppid \
        -- "$build/loop" getppid "$floor_iters")
    record floor/c "$v"
    log "  C continue: $v ns/call"
    for side in "${sides[@]}"; do
        v=$(ns_per_call "${bin[$side]}/faultbox" run --log-format=json --fault "getppid=EPERM:0%" \
            -- "$build/loop" getppid "$floor_iters")
        record "floor/$side" "$v"
        log "  $side faultbox continue: $v ns/call"
    done
}

# --- relays -----------------------------------------------------------------------

declare -A relay_n=([pass]=4000 [100us]=3000 [1ms]=1000 [10ms]=150)
relay_edges=(pass "${delays[@]}")
declare -A port

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() {
    local file=$1 what=$2 i
    for ((i = 0; i < 200; i++)); do
        grep -q "$3" "$file" 2>/dev/null && return 0
        sleep 0.05
    done
    log "$what did not start"
    cat "$file" >&2
    exit 1
}

start_relays() {
    local redis_port side e args
    redis_port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
        --daemonize no --logfile "" >"$tmp/redis.out" 2>&1 &
    pids+=($!)
    wait_ready "$tmp/redis.out" redis-server "Ready to accept connections"
    for side in "${sides[@]}"; do
        args=()
        for e in "${relay_edges[@]}"; do
            port[$side/$e]=$(free_port)
            if [[ $e == pass ]]; then
                args+=(--edge "redis:${port[$side/$e]}:$redis_port")
            else
                args+=(--edge "redis:${port[$side/$e]}:$redis_port:delay=$e")
            fi
        done
        "${bin[$side]}/examples/relay_bench" "${args[@]}" >"$tmp/relay-$side.out" 2>"$tmp/relay-$side.err" &
        pids+=($!)
        wait_ready "$tmp/relay-$side.out" "relay_bench ($side)" ready
    done
}

# latency PORT N [IDLE_US]: "mean p50 p99" in µs from redis_latency.py.
latency() {
    local line
    line=$(/usr/bin/python3 "$repo_root/soak/bench/redis_latency.py" "$@")
    echo "$(field "$line" mean_us) $(field "$line" p50_us) $(field "$line" p99_us)"
}

relay_round() {
    local side e n mean p50 p99
    for side in "${sides[@]}"; do
        read -r mean p50 p99 < <(latency "${port[$side/pass]}" "$(scale "${relay_n[pass]}")")
        record "relay/$side/pass/mean" "$mean"
        record "relay/$side/pass/p50" "$p50"
        record "relay/$side/pass/p99" "$p99"
        log "  $side relay, no rule: mean $mean p50 $p50 p99 $p99 µs"
    done
    for e in "${delays[@]}"; do
        n=$(scale "${relay_n[$e]}")
        for side in "${sides[@]}"; do
            read -r mean p50 p99 < <(latency "${port[$side/$e]}" "$n")
            record "relay/$side/$e/mean" "$mean"
            record "relay/$side/$e/p50" "$p50"
            record "relay/$side/$e/p99" "$p99"
            log "  $side relay, delay $e: mean $mean p50 $p50 p99 $p99 µs"
            read -r mean p50 p99 < <(latency "${port[$side/pass]}" "$n" "$(us "$e")")
            record "relay/$side/idle$e/mean" "$mean"
            record "relay/$side/idle$e/p50" "$p50"
            record "relay/$side/idle$e/p99" "$p99"
            log "  $side relay, no rule, idle $e first: mean $mean p50 $p50 p99 $p99 µs"
        done
    done
}

# --- rounds -------------------------------------------------------------------------

section relay && start_relays
for ((r = 1; r <= rounds; r++)); do
    log "round $r/$rounds"
    if section syscall; then syscall_round; fi
    if section floor; then floor_round; fi
    if section relay; then relay_round; fi
done

# --- report -------------------------------------------------------------------------

# med KEY: the median over rounds.
med() {
    tr ' ' '\n' <<<"${samples[$1]:-}" | grep -v '^$' | sort -g | awk '
        { a[NR] = $1 }
        END {
            if (NR == 0) { print "n/a"; exit }
            m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            printf "%.1f\n", m
        }'
}
calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }

report() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo "## Delays: before ($before_ref) and after, same run"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) · Linux $(uname -r) $(uname -m) · $(nproc) CPUs${cpu:+ · $cpu}"
    echo "· $rounds interleaved round(s), medians over rounds$([[ $quick == 1 ]] && echo " · QUICK (a tenth of the calls)")"
    echo
    local d side
    if section syscall; then
        echo "### A delayed syscall (\`faultbox run --fault \"getpid=delay:D:100%\"\`, one thread)"
        echo
        echo "Per-call cost of \`getpid\` measured inside the target; \"over d\" is the mean cost minus d (the"
        echo "seccomp round trip included). Target: mean ≤ d + 50 µs, p99 ≤ d + 200 µs."
        echo
        echo "| d | side | calls/run | mean µs | p50 µs | p99 µs | mean over d µs | p99 over d µs |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        for d in "${delays[@]}"; do
            for side in "${sides[@]}"; do
                local m p50 p99 dd
                m=$(med "sys/$side/$d/mean"); p50=$(med "sys/$side/$d/p50"); p99=$(med "sys/$side/$d/p99")
                dd=$(us "$d")
                echo "| $d | $side | $(scale "${calls_for[$d]}") | $m | $p50 | $p99 | $(calc "$m - $dd") | $(calc "$p99 - $dd") |"
            done
        done
        echo
        echo "### 24 threads, each delayed 1 ms on every call"
        echo
        echo "| side | calls/s | × ideal (24,000/s) | mean µs per call | p99 µs |"
        echo "|---|---:|---:|---:|---:|"
        for side in "${sides[@]}"; do
            local rate
            rate=$(med "sys/$side/x24/rate")
            echo "| $side | $rate | $(calc "$rate / 24000" 3) | $(med "sys/$side/x24/mean") | $(med "sys/$side/x24/p99") |"
        done
        echo
    fi
    if section floor; then
        local c b a
        c=$(med floor/c); b=$(med floor/before); a=$(med floor/after)
        echo "### Undelayed calls against the C floor (\`loop getppid $floor_iters\`)"
        echo
        echo "| configuration | ns/call | × C floor |"
        echo "|---|---:|---:|"
        echo "| C continue, blocking recv + SYNC_WAKE_UP (minsup) | $c | 1.00 |"
        echo "| faultbox continue (getppid=EPERM:0%), before | $b | $(calc "$b / $c" 2) |"
        echo "| faultbox continue (getppid=EPERM:0%), after | $a | $(calc "$a / $c" 2) |"
        echo
    fi
    if section relay; then
        echo "### A protocol delay in a relay (Redis GET, \`delay(command=\"GET\", delay=D)\`)"
        echo
        echo "redis-py, one connection, through relay_bench edges of one process. \"over d\" is the"
        echo "delayed request's latency minus d minus the same statistic without a rule: requests back"
        echo "to back, or with the client idle d before each (the machine idles as during a delay,"
        echo "and a round trip that starts on idle CPUs costs more whatever delayed it)."
        echo
        echo "| d | side | requests | mean µs | p50 µs | p99 µs | no rule: mean / p99 µs | idle d, no rule: mean / p99 µs | mean over d, back to back | p99 over d, back to back | mean over d, idle | p99 over d, idle |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for d in "${delays[@]}"; do
            for side in "${sides[@]}"; do
                local m p50 p99 bm bp im ip dd
                m=$(med "relay/$side/$d/mean"); p50=$(med "relay/$side/$d/p50"); p99=$(med "relay/$side/$d/p99")
                bm=$(med "relay/$side/pass/mean"); bp=$(med "relay/$side/pass/p99")
                im=$(med "relay/$side/idle$d/mean"); ip=$(med "relay/$side/idle$d/p99")
                dd=$(us "$d")
                echo "| $d | $side | $(scale "${relay_n[$d]}") | $m | $p50 | $p99 | $bm / $bp | $im / $ip | $(calc "$m - $dd - $bm") | $(calc "$p99 - $dd - $bp") | $(calc "$m - $dd - $im") | $(calc "$p99 - $dd - $ip") |"
            done
        done
        echo
    fi
    if section timer; then
        echo "## The delay timer on its own (this tree, \`timer_bench\`)"
        echo
        if [[ $quick == 1 ]]; then
            "$after_dir/examples/timer_bench" --quick
        else
            "$after_dir/examples/timer_bench"
        fi
    fi
}

report_text=$(report)
echo "$report_text"
if [[ -n $out_file ]]; then
    mkdir -p "$(dirname "$out_file")"
    echo "$report_text" >"$out_file"
    log "report written to $out_file"
fi
