#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the tests that need one (as root:
# the server runs as the `postgres` user). Prints the URL; stop it with `.ci/postgres.sh stop DIR`.
set -euo pipefail
if [[ "${1:-}" == "stop" ]]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    runuser -u postgres -- "$bin/pg_ctl" -D "$2/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$2"
    exit 0
fi
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql) >&2
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d /tmp/tnsearch-pg.XXXXXX)
chown postgres "$dir"
port=${PGPORT_TEST:-55432}
runuser -u postgres -- "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-k $dir -c listen_addresses=127.0.0.1 -p $port -c max_connections=200" start >/dev/null
echo "$dir postgresql://postgres@127.0.0.1:$port/postgres"
