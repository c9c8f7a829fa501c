#!/usr/bin/env bash
# How fast a service's log lines become decoded events through a
# stdout(decoder=json_decoder()) source, and what observing costs the service:
# executor/examples/source_bench.rs, release build. Two services, each run alone
# (stdout on /dev/null) and observed (stdout through the source into a real event
# log), side by side in every round:
#   log   JSON lines as fast as it can (~10M lines/s): the decoder's ceiling, the
#         lines it cannot take (dropped, counted), what the pipe costs the service;
#   work  a few microseconds of work, a serde_json record and one write per line
#         (~250k lines/s alone): every line should become an event.
# Plus a control with no observer: `work` pinned to CPU 0, alone and beside a busy
# loop on CPU 1 (what any CPU time spent beside the service costs it on this machine).
# Prints every round, then a markdown table of medians, and the load average.
#
# Usage: scripts/bench-sources.sh   (BENCH_ROUNDS, default 15; BENCH_LOG_LINES,
#        default 1000000; BENCH_WORK_LINES, default 100000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${BENCH_ROUNDS:-15}
log_lines=${BENCH_LOG_LINES:-1000000}
work_lines=${BENCH_WORK_LINES:-100000}

cargo build --release -j2 -p faultbox-executor --example source_bench >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples/source_bench

echo "$(date -u +%FT%TZ) · $(uname -sr) $(uname -m) · $(nproc) CPUs · $(uptime | sed 's/.*load/load/')"
"$bin" "$rounds" "$log_lines" "$work_lines"
uptime
