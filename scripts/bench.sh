#!/usr/bin/env bash
# Cost of an intercepted syscall: Faultbox vs. a minimal C seccomp-notify
# supervisor (the raw kernel round trip) vs. strace fault injection.
#
# Usage: scripts/bench.sh [--out FILE]
#
# Environment:
#   BENCH_REPEATS         runs per configuration; the median is reported (7)
#   BENCH_ITERS           measured calls per run (200000)
#   BENCH_STRACE_ITERS    measured calls per strace run (BENCH_ITERS/10:
#                         strace is slow; ns/call stays comparable)
#   BENCH_ONLY            only run configurations whose key matches this
#                         extended regex (keys are listed in the table)
#   FAULTBOX              faultbox binary (target/release/faultbox); relative
#                         paths are taken from the repository root
#   FAULTBOX_ARGS         extra `faultbox run` arguments (--log-format=json)
#   BENCH_BUILD_FAULTBOX  0 skips `cargo build --release` (1)
#
# The markdown report goes to stdout (and to FILE with --out); progress goes
# to stderr. Runs are interleaved round-robin across configurations so that
# slow drift on the machine (other load, thermal) spreads over all of them
# instead of biasing whichever configuration ran last.

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
        *) echo "bench: unknown argument: $1" >&2; usage ;;
    esac
done
if [[ -n $out_file && $out_file != /* ]]; then
    out_file=$caller_pwd/$out_file
fi

repeats=${BENCH_REPEATS:-7}
iters=${BENCH_ITERS:-200000}
strace_iters=${BENCH_STRACE_ITERS:-}
only=${BENCH_ONLY:-}
faultbox=${FAULTBOX:-target/release/faultbox}
faultbox_args=${FAULTBOX_ARGS-"--log-format=json"}
build_faultbox=${BENCH_BUILD_FAULTBOX:-1}

positive_int() {
    if ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
        echo "bench: $1 must be a positive integer, got '$2'" >&2
        exit 2
    fi
}
positive_int BENCH_REPEATS "$repeats"
positive_int BENCH_ITERS "$iters"
# Checked before use in arithmetic: $(( )) would evaluate a non-number as a
# variable name.
strace_iters=${strace_iters:-$(((iters + 9) / 10))}
positive_int BENCH_STRACE_ITERS "$strace_iters"

log() { echo "bench: $*" >&2; }

# --- dependencies -----------------------------------------------------------

ensure_packages() {
    local pkgs=(libseccomp-dev strace gcc make util-linux) missing=() p sudo=()
    if ! command -v dpkg >/dev/null; then
        # Not Debian-like: just check that the tools are there.
        for p in gcc make strace taskset; do
            command -v "$p" >/dev/null || { log "missing $p (install it)"; exit 1; }
        done
        return
    fi
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { log "need root to install: ${missing[*]}"; exit 1; }
        sudo=(sudo)
    fi
    log "installing: ${missing[*]}"
    # Try without refreshing the index first: it is slow and usually current.
    "${sudo[@]}" apt-get install -y "${missing[@]}" >&2 ||
        { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" apt-get install -y "${missing[@]}" >&2; }
}

# --- build ------------------------------------------------------------------

bench_dir=soak/bench
build_dir=$bench_dir/build
loop_bin=$repo_root/$build_dir/loop
minsup_bin=$repo_root/$build_dir/minsup

build_c() {
    log "building C programs in $build_dir"
    make -s -C "$bench_dir" all >&2
}

build_rust() {
    if [[ $build_faultbox != 1 ]]; then
        log "BENCH_BUILD_FAULTBOX=$build_faultbox: not building faultbox"
        return
    fi
    if ! command -v cargo >/dev/null; then
        log "cargo not found: not building faultbox"
        return
    fi
    log "building faultbox (release)"
    cargo build --release -p faultbox-coordinator -p faultbox-shim >&2
}

ensure_packages
build_c
build_rust

[[ $faultbox == /* ]] || faultbox=$repo_root/$faultbox
have_faultbox=0
if [[ -x $faultbox ]]; then
    have_faultbox=1
else
    log "SKIPPING faultbox rows: $faultbox does not exist (build it, or set FAULTBOX=...)"
fi

# --- configurations -----------------------------------------------------------

keys=()
declare -A label cmd n_iter samples

# add KEY LABEL ITERATIONS COMMAND...: the command is stored shell-quoted and
# run with eval, so arguments with spaces or % survive intact.
add() {
    local key=$1 lbl=$2 n=$3
    shift 3
    if [[ -n $only && ! $key =~ $only ]]; then
        return
    fi
    keys+=("$key")
    label[$key]=$lbl
    n_iter[$key]=$n
    cmd[$key]=$(printf '%q ' "$@")
    samples[$key]=""
}

N=$iters
S=$strace_iters
ms=("$minsup_bin")
read -r -a fb_args <<<"$faultbox_args"

add native "native getppid" "$N" "$loop_bin" getppid "$N"
add c_filter "C filter only (getppid not targeted; rule on fsync)" "$N" \
    "${ms[@]}" --filter-only fsync -- "$loop_bin" getppid "$N"
if ((have_faultbox)); then
    add fb_nontarget "faultbox, non-targeted (getppid; rule fsync=EIO:100%)" "$N" \
        "$faultbox" run "${fb_args[@]}" --fault "fsync=EIO:100%" -- "$loop_bin" getppid "$N"
fi
add c_cont_block "C continue, blocking recv" "$N" \
    "${ms[@]}" --mode continue --recv blocking --sync-wakeup 0 getppid -- "$loop_bin" getppid "$N"
add c_cont_block_sync "C continue, blocking recv + SYNC_WAKE_UP" "$N" \
    "${ms[@]}" --mode continue --recv blocking --sync-wakeup 1 getppid -- "$loop_bin" getppid "$N"
add c_cont_poll_sync "C continue, poll+recv + SYNC_WAKE_UP" "$N" \
    "${ms[@]}" --mode continue --recv poll --sync-wakeup 1 getppid -- "$loop_bin" getppid "$N"
add c_cont_pinned "C continue, blocking recv, pinned same CPU" "$N" \
    "${ms[@]}" --mode continue --recv blocking --sync-wakeup 0 --pin-same-cpu 1 getppid -- "$loop_bin" getppid "$N"
add c_deny_block_sync "C deny EPERM, blocking recv + SYNC_WAKE_UP" "$N" \
    "${ms[@]}" --mode deny --recv blocking --sync-wakeup 1 getppid -- "$loop_bin" getppid "$N"
add c_deny_poll_sync "C deny EPERM, poll+recv + SYNC_WAKE_UP" "$N" \
    "${ms[@]}" --mode deny --recv poll --sync-wakeup 1 getppid -- "$loop_bin" getppid "$N"
if ((have_faultbox)); then
    add fb_cont "faultbox continue (getppid=EPERM:0%)" "$N" \
        "$faultbox" run "${fb_args[@]}" --fault "getppid=EPERM:0%" -- "$loop_bin" getppid "$N"
    add fb_deny "faultbox deny (getppid=EPERM:100%)" "$N" \
        "$faultbox" run "${fb_args[@]}" --fault "getppid=EPERM:100%" -- "$loop_bin" getppid "$N"
fi
strace_cmd=(strace -f -o /dev/null -e trace=getppid -e inject=getppid:error=EPERM "$loop_bin" getppid "$S")
add strace "strace inject EPERM" "$S" "${strace_cmd[@]}"
add strace_pinned "strace inject EPERM, pinned CPU 0 (taskset)" "$S" taskset -c 0 "${strace_cmd[@]}"

((${#keys[@]})) || { log "no configuration matches BENCH_ONLY='$only'"; exit 2; }

# --- measurement --------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/faultbox-bench.XXXXXX")
trap 'rm -rf "$tmp" /tmp/faultbox-bench-file' EXIT

# Runs one configuration once and prints its ns_per_call (called in a
# command substitution, so it must not touch the caller's variables).
# Stderr goes to a file because supervisors (faultbox's JSON logs, minsup's
# summary) share it with loop's single `ns_per_call=` line.
run_once() {
    local key=$1 err=$tmp/$1.err rc=0 value
    eval "${cmd[$key]}" >/dev/null 2>"$err" || rc=$?
    value=$(grep -o 'ns_per_call=[0-9.]*' "$err" | tail -n 1 | cut -d= -f2 || true)
    if [[ -z $value ]]; then
        log "${label[$key]}: no ns_per_call line (exit $rc); command: ${cmd[$key]}"
        tail -n 20 "$err" >&2
        exit 1
    fi
    if ((rc != 0)); then
        log "warning: ${label[$key]} exited $rc (measurement kept)"
    fi
    echo "$value"
}

for ((r = 1; r <= repeats; r++)); do
    for key in "${keys[@]}"; do
        v=$(run_once "$key") || exit 1
        samples[$key]+="$v "
        log "[$r/$repeats] ${label[$key]}: $v ns/call"
    done
done

# --- report -------------------------------------------------------------------

# stats "v1 v2 ...": prints "median min max".
stats() {
    tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '
        { a[NR] = $1 }
        END {
            med = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            printf "%.1f %.1f %.1f\n", med, a[1], a[NR]
        }'
}

declare -A median lo hi
for key in "${keys[@]}"; do
    read -r median[$key] lo[$key] hi[$key] < <(stats "${samples[$key]}")
done

# calc EXPR: floating-point arithmetic via awk.
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
has() { [[ -n ${median[$1]:-} ]]; }

# best KEY...: the key with the lowest median among those that ran.
best() {
    local b="" k
    for k in "$@"; do
        has "$k" || continue
        if [[ -z $b ]] || awk "BEGIN { exit !(${median[$k]} < ${median[$b]}) }"; then
            b=$k
        fi
    done
    echo "$b"
}

report() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo "## Intercepted syscall cost"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) · Linux $(uname -r) $(uname -m) · $(nproc) CPUs${cpu:+ · $cpu}"
    echo "· median of $repeats runs · $iters calls/run ($strace_iters for strace) · unpinned unless stated"
    echo
    echo "| key | configuration | calls/run | median ns/call | min | max | × native |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    local key x
    for key in "${keys[@]}"; do
        x="–"
        has native && x=$(calc "${median[$key]} / ${median[native]}")
        echo "| $key | ${label[$key]} | ${n_iter[$key]} | ${median[$key]} | ${lo[$key]} | ${hi[$key]} | $x |"
    done
    echo

    local bd bc
    # Faultbox runs unpinned, so it is compared with the best unpinned C
    # variant; the pinned row is a reference for the same-CPU regime.
    bd=$(best c_deny_block_sync c_deny_poll_sync)
    bc=$(best c_cont_block c_cont_block_sync c_cont_poll_sync)
    echo "### Ratios (same run)"
    echo
    ratio "faultbox deny / best C deny" fb_deny "$bd" /
    ratio "faultbox continue / best unpinned C continue" fb_cont "$bc" /
    ratio "strace (unpinned) / faultbox deny" strace fb_deny /
    ratio "strace (unpinned) / best C deny" strace "$bd" /
    ratio "faultbox non-targeted − native (ns)" fb_nontarget native -
    ratio "C filter only − native (ns)" c_filter native -
    if ((!have_faultbox)); then
        echo
        echo "_faultbox rows skipped: $faultbox not found._"
    fi
}

# ratio TEXT A B OP: one bullet, "n/a" when either side did not run.
ratio() {
    local text=$1 a=$2 b=$3 op=$4
    if [[ -n $a && -n $b ]] && has "$a" && has "$b"; then
        echo "- $text: **$(calc "${median[$a]} $op ${median[$b]}")** ($a ${median[$a]} $op $b ${median[$b]})"
    else
        echo "- $text: n/a (${a:-?} or ${b:-?} not run)"
    fi
}

report_text=$(report)
echo "$report_text"
if [[ -n $out_file ]]; then
    mkdir -p "$(dirname "$out_file")"
    echo "$report_text" >"$out_file"
    log "report written to $out_file"
fi
