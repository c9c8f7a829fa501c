#!/bin/sh
# Runs redis-server as the redis user, on every address, protected mode off, data in
# /data. Arguments starting with '-' are added to redis-server's (later ones win, e.g.
# `--requirepass s3cret`); any other command is run as given.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

set -- redis-server --bind '* -::*' --port 6379 --protected-mode no --dir /data "$@"
if [ "$(id -u)" = 0 ]; then
    # setpriv only changes ids and execs: no setuid helper, no extra process.
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
