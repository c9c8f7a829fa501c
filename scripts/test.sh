#!/usr/bin/env bash
# Sets up the machine and runs every test: formatting, lints, unit tests and the
# integration tests that run real programs under real seccomp filters. Fails if any
# process, scratch directory or report file of the tests is left behind, or any Docker
# container, network or volume of a container service (label faultbox.run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

echo "== images (Docker and the local images container services run; quick when up to date)" >&2
scripts/images.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

echo "== build (the integration tests run the faultbox and faultbox-shim binaries)" >&2
cargo build -j2 --workspace --all-targets
# The shim mounted into containers is linked statically (it runs in FROM scratch
# images); container services find it in target/static-shim.
scripts/build-static-shim.sh -j2 >/dev/null

echo "== clippy" >&2
cargo clippy -j2 --workspace --all-targets -- -D warnings

echo "== tests" >&2
cargo test -j2 --workspace

echo "== leak check" >&2
leaks=0
ours='target/(debug|release|tmp)/(faultbox|probe|target|inventory|orders)( |$)|echo_svc\.py|chatty_svc\.py|net_svc\.py|swallow\.py|clocks\.py|http\.server 8000|while :; do :; done|faultbox executor'
# The protocol specs' real servers and system under test.
ours+='|sut\.py|postgres -D /tmp/faultbox-|datadir=/tmp/faultbox-|requirepass s3cret|memcached -l 127\.0\.0\.1 -p 11211 -U 0'
ours+='|nats-server|nats_sut\.py|tansu broker|nx-27017|beam\.smp|epmd|grpc_(server|sut|people)\.py|grpc-users'
# The event-source specs' services.
ours+='|logger\.py|files_svc\.py|orders_app\.py'
# The HTML report's tests: their service, and Chromium (its processes, crash handlers
# included, name the test's private directory).
ours+='|report_svc\.py|fbtest-chromium-'
# `faultbox mcp` servers (its tests also start one through a PATH lookup).
ours+='|(^|/)faultbox mcp( |$)'
if pgrep -f "$ours" >/dev/null; then
    echo "leftover processes:" >&2
    pgrep -af "$ours" >&2
    leaks=1
fi
if compgen -G '/tmp/fbtest-*' >/dev/null || compgen -G '/dev/shm/faultbox-test-*' >/dev/null \
    || compgen -G '/tmp/faultbox-[0-9]*' >/dev/null || compgen -G '/tmp/fbspec-*' >/dev/null; then
    echo "leftover scratch files:" >&2
    ls -d /tmp/fbtest-* /dev/shm/faultbox-test-* /tmp/faultbox-[0-9]* /tmp/fbspec-* 2>/dev/null >&2 || true
    leaks=1
fi
# Container services' containers, networks and volumes: all labelled faultbox.run.
for kind in container network volume; do
    all=()
    [[ $kind == container ]] && all=(-a)
    left=$(docker "$kind" ls -q "${all[@]}" --filter label=faultbox.run)
    if [[ -n $left ]]; then
        echo "leftover docker ${kind}s:" >&2
        docker "$kind" ls "${all[@]}" --filter label=faultbox.run >&2
        leaks=1
    fi
done
if ((leaks)); then
    exit 1
fi
echo "no leftovers"
