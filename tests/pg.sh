#!/usr/bin/env bash
# Start a throw-away PostgreSQL cluster on a free loopback port and print its URL.
# Usage: eval "$(tests/pg.sh start DIR)"   ...   tests/pg.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?cluster directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "$bin" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
start)  # a cluster stopped in DIR before starts again, on the same port
  fresh=0
  if [ ! -f "$dir/port" ]; then
    fresh=1
    mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_pg "$bin/initdb" -D "$dir/data" -U fleet --auth=trust -E UTF8 >/dev/null
    echo "$port" >"$dir/port"
  fi
  port=$(cat "$dir/port")
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off" start >/dev/null
  [ "$fresh" = 0 ] || as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U fleet fleet_test
  echo "export FLEET_TEST_POSTGRES_URL=postgresql+psycopg://fleet@127.0.0.1:$port/fleet_test"
  ;;
stop)
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
  ;;
esac
