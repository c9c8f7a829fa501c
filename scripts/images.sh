#!/usr/bin/env bash
# Builds the local Docker images that tests run as container services, each only when
# it is missing or its inputs changed (every image carries a faultbox.inputs label with
# the hash of what it was built from, and faultbox.test=1):
# - faultbox-test/debian:bookworm   debootstrap --variant=minbase from the host's Debian
#                                   mirror, imported; the rootfs tarball is cached in
#                                   $FAULTBOX_IMAGE_CACHE (/var/cache/faultbox/images)
# - faultbox-test/postgres:15       Debian's postgresql-15 on that base
# - faultbox-test/redis:7           Debian's redis-server on that base
# - faultbox-test/nats:2.9          Debian's nats-server on that base
# - faultbox-test/rabbitmq:3.10     Debian's rabbitmq-server on that base
# - faultbox-test/nx-27017:0.8      the MongoDB-wire server nx-27017 (PyPI) on that base
# - faultbox-test/grpcio:1.85       Python's grpcio (PyPI) on that base, to run a server
#                                   script a spec mounts
# - faultbox-test/tansu:0.6         FROM scratch: the static tansu broker that
#                                   scripts/servers.sh installs
# - faultbox-test/examples:latest   FROM scratch: the inventory and orders examples,
#                                   linked statically
# Definitions are in scripts/images/. No image registry is used: nothing is pulled.
# Quiet when everything is up to date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

scripts/docker.sh

cache=${FAULTBOX_IMAGE_CACHE:-/var/cache/faultbox/images}
suite=bookworm
defs=$repo/scripts/images
base=faultbox-test/debian:$suite

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
"${sudo[@]}" mkdir -p "$cache"

# One build at a time: parallel test runs share the images and the cache.
exec 9>"$cache/.lock"
flock 9

work=$(mktemp -d /tmp/faultbox-images.XXXXXX)
cleanup() {
    local m
    # A failed debootstrap can leave its chroot's mounts behind.
    for m in proc sys dev/pts; do
        if mountpoint -q "$work/root/$m" 2>/dev/null; then
            "${sudo[@]}" umount -l "$work/root/$m" || true
        fi
    done
    "${sudo[@]}" rm -rf "$work"
}
trap cleanup EXIT

inputs_of() {
    docker image inspect -f '{{index .Config.Labels "faultbox.inputs"}}' "$1" 2>/dev/null || true
}

# Hash of some words, then (after --) of the files under some paths: names and contents.
hash_inputs() {
    local words=()
    while (($#)) && [[ $1 != -- ]]; do
        words+=("$1")
        shift
    done
    shift
    {
        printf '%s\n' "${words[@]}"
        find "$@" -path '*/target' -prune -o -type f -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}

# Runs a command, showing its output only if it fails.
quietly() {
    local log=$work/log
    if ! "$@" >"$log" 2>&1; then
        echo "images: failed: $*" >&2
        tail -n 40 "$log" >&2
        return 1
    fi
}

# The host's Debian entries for $suite (and its -updates/-security suites), one-line
# style: the base's apt reaches the same mirror the host does.
debian_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        sed -E 's/#.*//; s/\[[^]]*\]//' "$f" | awk -v s="$suite" '$1 == "deb" && index($3, s) == 1'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v s="$suite" '
            function flush(  u, x, i, j, n, m, us, xs) {
                if (types ~ /(^| )deb( |$)/ && enabled != "no") {
                    n = split(uris, us, " "); m = split(suites, xs, " ")
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (index(xs[j], s) == 1) print "deb " us[i] " " xs[j] " " comps
                }
                types = uris = suites = comps = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
            key == "types:" { types = $0 } key == "uris:" { uris = $0 }
            key == "suites:" { suites = $0 } key == "components:" { comps = $0 }
            key == "enabled:" { enabled = tolower($0) }
            END { flush() }' "$f"
    done
}

build_base() {
    local sources=$1 aptconf=$2 tarball=$3 mirror
    mirror=${FAULTBOX_DEBIAN_MIRROR:-$(awk -v s="$suite" '$3 == s { print $2; exit }' <<<"$sources")}
    if [[ -z $mirror ]]; then
        echo "images: no Debian $suite mirror in /etc/apt/sources.list*; set FAULTBOX_DEBIAN_MIRROR" >&2
        return 1
    fi
    echo "images: debootstrap $suite from $mirror" >&2
    quietly "${sudo[@]}" debootstrap --variant=minbase --components=main "$suite" "$work/root" "$mirror"
    local root=$work/root
    printf '%s\n' "$sources" | "${sudo[@]}" tee "$root/etc/apt/sources.list" >/dev/null
    "${sudo[@]}" rm -f "$root"/etc/apt/sources.list.d/*
    printf '%s\n' "$aptconf" | "${sudo[@]}" tee "$root/etc/apt/apt.conf.d/90faultbox" >/dev/null
    # As in Debian's own container images: packages installed during a build do not
    # start their services, and apt keeps no downloaded packages.
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$root/usr/sbin/policy-rc.d" >/dev/null
    "${sudo[@]}" chmod 755 "$root/usr/sbin/policy-rc.d"
    printf 'APT::Install-Recommends "false";\nDPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' \
        | "${sudo[@]}" tee "$root/etc/apt/apt.conf.d/91faultbox-container" >/dev/null
    "${sudo[@]}" rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/tmp/*
    "${sudo[@]}" tar -C "$root" --numeric-owner --xattrs \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$tarball.tmp" .
    "${sudo[@]}" mv "$tarball.tmp" "$tarball"
}

built=0

# --- the Debian base -------------------------------------------------------------
sources=$(debian_sources)
# The host's apt may need settings to use its mirror (a proxy, a snapshot's old dates).
aptconf=$(apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' || true)
base_key=$(printf '%s\n' "$suite" "$sources" "$aptconf" "${FAULTBOX_DEBIAN_MIRROR:-}" "$(declare -f build_base)" \
    | sha256sum | cut -d' ' -f1)
if [[ $(inputs_of "$base") != "$base_key" ]]; then
    tarball=$cache/debian-$suite-${base_key:0:16}.tar
    if [[ ! -s $tarball ]]; then
        start=$SECONDS
        build_base "$sources" "$aptconf" "$tarball"
        "${sudo[@]}" find "$cache" -maxdepth 1 -name "debian-$suite-*.tar" ! -path "$tarball" -delete
        echo "images: $base rootfs built in $((SECONDS - start)) s" >&2
    fi
    # docker import takes no LABEL: import, then label it in a one-line build.
    quietly docker import "$tarball" "faultbox-test/debian-rootfs:${base_key:0:16}"
    mkdir -p "$work/base"
    printf 'FROM faultbox-test/debian-rootfs:%s\nCMD ["/bin/bash"]\n' "${base_key:0:16}" >"$work/base/Dockerfile"
    quietly docker build --label faultbox.test=1 --label "faultbox.inputs=$base_key" -t "$base" "$work/base"
    quietly docker rmi "faultbox-test/debian-rootfs:${base_key:0:16}"
    echo "images: built $base" >&2
    built=1
fi
base_id=$(docker image inspect -f '{{.Id}}' "$base")

# --- images built on the base ----------------------------------------------------
build_on_base() {
    local name=$1 dir=$2 key start
    key=$(hash_inputs "$base_id" -- "$dir")
    [[ $(inputs_of "$name") == "$key" ]] && return 0
    start=$SECONDS
    # The host's network: apt inside the build reaches the mirror exactly as the host's does.
    quietly docker build --network host --label faultbox.test=1 --label "faultbox.inputs=$key" \
        -t "$name" "$dir"
    echo "images: built $name in $((SECONDS - start)) s" >&2
    built=1
}
build_on_base faultbox-test/postgres:15 scripts/images/postgres
build_on_base faultbox-test/redis:7 scripts/images/redis
build_on_base faultbox-test/nats:2.9 scripts/images/nats
build_on_base faultbox-test/rabbitmq:3.10 scripts/images/rabbitmq

# --- the examples, statically linked ----------------------------------------------
build_examples() {
    local key=$1 target=$2 static_dir=$3 b
    # Their own target directory: these flags would otherwise rebuild the usual one.
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$static_dir \
        CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
        quietly cargo build --release --locked --target "$target" \
        -p faultbox-example-inventory -p faultbox-example-orders
    mkdir -p "$work/examples/bin" "$work/examples/tmp"
    chmod 1777 "$work/examples/tmp"
    cp "$defs/examples/Dockerfile" "$work/examples/"
    for b in inventory orders; do
        if ! ldd "$static_dir/$target/release/$b" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
            echo "images: $b is not statically linked" >&2
            return 1
        fi
        cp "$static_dir/$target/release/$b" "$work/examples/bin/"
    done
    quietly docker build --label faultbox.test=1 --label "faultbox.inputs=$key" \
        -t faultbox-test/examples:latest "$work/examples"
}
# Keyed by the sources rather than the binaries, so an up-to-date image costs no cargo run.
target=$(rustc -vV | sed -n 's/^host: //p')
static_dir=${FAULTBOX_STATIC_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}/static}
key=$(hash_inputs "$(rustc -vV)" "$(declare -f build_examples)" -- \
    examples/inventory examples/orders scripts/images/examples Cargo.toml Cargo.lock)
if [[ $(inputs_of faultbox-test/examples:latest) != "$key" ]]; then
    start=$SECONDS
    build_examples "$key" "$target" "$static_dir"
    echo "images: built faultbox-test/examples:latest in $((SECONDS - start)) s" >&2
    built=1
fi

# --- nx-27017, from wheels downloaded here (the build itself needs no index) --------
key=$(hash_inputs "$base_id" -- scripts/images/mongodb)
if [[ $(inputs_of faultbox-test/nx-27017:0.8) != "$key" ]]; then
    start=$SECONDS
    mkdir -p "$work/mongodb/wheels"
    cp "$defs/mongodb/Dockerfile" "$work/mongodb/"
    scripts/servers.sh
    quietly "${FAULTBOX_VENV:-/var/cache/faultbox/venv}/bin/pip" download -q \
        --disable-pip-version-check nx-27017==0.8.1 -d "$work/mongodb/wheels"
    quietly docker build --label faultbox.test=1 --label "faultbox.inputs=$key" \
        -t faultbox-test/nx-27017:0.8 "$work/mongodb"
    echo "images: built faultbox-test/nx-27017:0.8 in $((SECONDS - start)) s" >&2
    built=1
fi

# --- grpcio, from wheels downloaded here ------------------------------------------
key=$(hash_inputs "$base_id" -- scripts/images/grpcio)
if [[ $(inputs_of faultbox-test/grpcio:1.85) != "$key" ]]; then
    start=$SECONDS
    mkdir -p "$work/grpcio/wheels"
    cp "$defs/grpcio/Dockerfile" "$work/grpcio/"
    scripts/servers.sh
    quietly "${FAULTBOX_VENV:-/var/cache/faultbox/venv}/bin/pip" download -q \
        --disable-pip-version-check grpcio==1.85.3 grpcio-reflection==1.85.1 \
        protobuf==7.36.2 -d "$work/grpcio/wheels"
    quietly docker build --label faultbox.test=1 --label "faultbox.inputs=$key" \
        -t faultbox-test/grpcio:1.85 "$work/grpcio"
    echo "images: built faultbox-test/grpcio:1.85 in $((SECONDS - start)) s" >&2
    built=1
fi

# --- tansu, from the binary scripts/servers.sh installs ----------------------------
scripts/servers.sh
tansu=$(readlink -f "${FAULTBOX_VENV:-/var/cache/faultbox/venv}/bin/tansu")
key=$(hash_inputs "$(sha256sum <"$tansu")" -- scripts/images/tansu)
if [[ $(inputs_of faultbox-test/tansu:0.6) != "$key" ]]; then
    start=$SECONDS
    mkdir -p "$work/tansu"
    cp "$defs/tansu/Dockerfile" "$tansu" "$work/tansu/"
    quietly docker build --label faultbox.test=1 --label "faultbox.inputs=$key" \
        -t faultbox-test/tansu:0.6 "$work/tansu"
    echo "images: built faultbox-test/tansu:0.6 in $((SECONDS - start)) s" >&2
    built=1
fi

# Earlier builds of these images, now untagged.
if ((built)); then
    quietly docker image prune -f --filter label=faultbox.test=1
fi
