#!/usr/bin/env bash
# Cost of starting a target under Faultbox: `faultbox run` of /bin/true without
# rules (namespaces only) and with a rule (namespaces + filter + hand-off), against
# running /bin/true directly. Median wall time of BENCH_REPEATS runs (default 41).
#
# Usage: scripts/bench-launch.sh   (expects target/release/faultbox; FAULTBOX overrides)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fb=${FAULTBOX:-target/release/faultbox}
n=${BENCH_REPEATS:-41}
[[ -x $fb ]] || { echo "bench-launch: $fb not found (cargo build --release)" >&2; exit 1; }

median_ms() {
    local times=() i t0 t1
    for ((i = 0; i < n; i++)); do
        t0=$(date +%s%N)
        "$@" >/dev/null 2>&1
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v n="$n" 'NR == int((n + 1) / 2) { printf "%.2f", $1 / 1000 }'
}

native=$(median_ms /bin/true)
isolated=$(median_ms "$fb" run --log-format=json /bin/true)
filtered=$(median_ms "$fb" run --log-format=json --fault "fsync=EIO:100%" /bin/true)
echo "| run of /bin/true | median ms |"
echo "|---|---:|"
echo "| direct (fork + exec by bash) | $native |"
echo "| faultbox run, no rules (namespaces) | $isolated |"
echo "| faultbox run, one rule (namespaces + filter + hand-off) | $filtered |"
