#!/usr/bin/env bash
# Makes a Docker daemon available, idempotently: installs Debian's docker.io (and
# debootstrap, which scripts/images.sh uses to build the test images' base) when
# missing, and starts dockerd in the background when `docker info` cannot reach one.
# Quiet when everything is already there; safe to run while dockerd runs.
set -euo pipefail

log=${FAULTBOX_DOCKERD_LOG:-/var/log/faultbox-dockerd.log}

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)

packages=(docker.io debootstrap)
missing=()
for p in "${packages[@]}"; do
    # No pipe into grep -q: under pipefail, dpkg dying of SIGPIPE would read as "missing".
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == 'install ok installed' ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "docker: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    # Recommends would add a mail server and tools the daemon does not need.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi

# No systemd here: run the daemon ourselves, detached from this shell so it outlives it.
if ! pgrep -x dockerd >/dev/null; then
    "${sudo[@]}" mkdir -p "$(dirname "$log")"
    "${sudo[@]}" setsid --fork /usr/sbin/dockerd >>"$log" 2>&1 </dev/null
fi
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "docker: dockerd started (log: $log)" >&2
        exit 0
    fi
    sleep 0.5
done
echo "docker: dockerd did not answer within 30 s; the end of $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
