#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis on loopback for the scale-out test leg.
#   scripts/scaleout_services.sh start DIR   → installs (Debian packages) if missing, starts both,
#                                              prints `export DATABASE_URL=… REDIS_URL=…` lines
#   scripts/scaleout_services.sh restart-pg DIR → restarts PostgreSQL (fault tests)
#   scripts/scaleout_services.sh stop DIR    → stops both and removes DIR
set -euo pipefail
cmd=${1:?usage: $0 start|restart-pg|stop DIR}
dir=${2:?usage: $0 start|restart-pg|stop DIR}
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && echo "$d"
}

as_pg() {
  # PostgreSQL refuses to run as root.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_missing() {
  local need=()
  [ -n "$(pg_bin)" ] || need+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    echo "Installing ${need[*]} (Debian packages)..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    # The packages start system-wide services we do not use.
    service postgresql stop >/dev/null 2>&1 || true
    service redis-server stop >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  start)
    install_missing
    mkdir -p "$dir"
    bin=$(pg_bin)
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    as_pg "$bin/initdb" -D "$dir/pg" -U digitorn --auth=trust -E UTF8 >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w \
      -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U digitorn digitorn
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    echo "export DATABASE_URL=postgres://digitorn@127.0.0.1:$PG_PORT/digitorn"
    echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    ;;
  restart-pg)
    bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$dir/pg" -m fast -w restart -l "$dir/pg.log" \
      -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" >/dev/null
    ;;
  stop)
    bin=$(pg_bin || true)
    if [ -n "$bin" ] && [ -d "$dir/pg" ]; then as_pg "$bin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true; fi
    if [ -f "$dir/redis.pid" ]; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|restart-pg|stop DIR" >&2; exit 2 ;;
esac
