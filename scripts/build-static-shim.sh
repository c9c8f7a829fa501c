#!/usr/bin/env bash
# Builds a statically linked faultbox-shim for containers: it is mounted into images
# that may have no C library at all (FROM scratch). libseccomp and the C library are
# both linked in; build scripts and proc-macros are built as usual, since RUSTFLAGS
# given with an explicit --target apply to the target's code only.
#
# Usage: scripts/build-static-shim.sh [extra cargo args, e.g. -j1]
#   Prints the binary's path. Its own target directory (STATIC_SHIM_TARGET_DIR,
#   default target/static-shim) keeps these flags from rebuilding the usual one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

arch=$(uname -m)
triple=$arch-unknown-linux-gnu
libdir=/usr/lib/$arch-linux-gnu
target_dir=${STATIC_SHIM_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/static-shim}

if [[ ! -f $libdir/libseccomp.a ]]; then
    echo "build-static-shim: $libdir/libseccomp.a is missing (apt-get install libseccomp-dev)" >&2
    exit 1
fi

LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$libdir \
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    CARGO_TARGET_DIR=$target_dir \
    cargo build --release -p faultbox-shim --bin faultbox-shim --target "$triple" "$@" >&2

bin=$target_dir/$triple/release/faultbox-shim
# A dynamic binary names its loader in a PT_INTERP header; a static one has none.
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
    echo "build-static-shim: $bin is dynamically linked:" >&2
    ldd "$bin" >&2
    exit 1
fi
echo "$bin"
