#!/usr/bin/env bash
# Sets up the machine, builds Faultbox and runs the demo: the example target under
# `faultbox run`, first untouched, then with faults injected; then the example spec's
# tests against the inventory and orders services with `faultbox test` (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
cargo build -j2 --workspace

fb=target/debug/faultbox
demo_target=target/debug/target

step() {
    printf '\n\033[1m$ %s\033[0m\n' "$*" >&2
    "$@" || echo "(exit code $?)" >&2
}

export NO_COLOR=${NO_COLOR:-}
step "$fb" run --log-format=console "$demo_target"
step "$fb" run --log-format=console --fault "write=EIO:100%" "$demo_target"
step "$fb" run --log-format=console --fault "openat=ENOENT:100%:/tmp/faultbox*" "$demo_target"
step "$fb" run --log-format=console --fault "openat=ENOENT:100%:/data/*" "$demo_target"
step "$fb" run --log-format=console --fault "write=delay:500ms:100%:/tmp/faultbox*" "$demo_target"
step "$fb" run --log-format=console --fs-fault "sync=EIO:100%" "$demo_target"

step "$fb" test examples/faultbox.star
