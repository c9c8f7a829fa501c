#!/usr/bin/env bash
# Installs what building and testing Faultbox needs, idempotently: Debian packages
# are installed only when missing (apt-get update runs only then).
set -euo pipefail

packages=(libseccomp-dev pkg-config gcc make python3 strace util-linux bsdutils procps iproute2 logrotate)
# The HTML report's tests open it in headless Chromium; a font gives its screenshots text.
packages+=(chromium fonts-dejavu-core)

missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is not installed (install a Rust toolchain with rustup)" >&2
    exit 1
fi
