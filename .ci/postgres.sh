# Source me (bash): start a throwaway PostgreSQL server on localhost for the
# store tests, export EXPERTLOOP_TEST_POSTGRES_URL, and define pg_stop.
#
#   source .ci/postgres.sh && trap pg_stop EXIT
#
# Installs the Debian `postgresql` package when the binaries are missing and we
# are root. PostgreSQL refuses to run as root, so the cluster runs as the
# `postgres` system user (created by the package) in a fresh temporary folder.

_pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

pg_start() {
  local bindir
  if ! bindir="$(_pg_bindir)"; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
      echo "(installing postgresql with apt-get)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null || { apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null; }
    fi
    bindir="$(_pg_bindir)" || { echo "postgres.sh: no PostgreSQL binaries" >&2; return 1; }
  fi
  local runas=()
  if [ "$(id -u)" = "0" ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    runas=(runuser -u postgres --)
  fi
  PG_TMPDIR="$(mktemp -d /tmp/expertloop-pg.XXXXXX)"
  chmod 755 "$PG_TMPDIR"
  [ "$(id -u)" = "0" ] && chown postgres "$PG_TMPDIR"
  export PG_TMPDIR PG_BINDIR="$bindir"
  PG_PORT="${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
  export PG_PORT
  PG_RUNAS="${runas[*]}"
  export PG_RUNAS
  "${runas[@]}" "$bindir/initdb" -D "$PG_TMPDIR/data" -U expertloop -A trust \
    --no-sync -E UTF8 >"$PG_TMPDIR/initdb.log" 2>&1 \
    || { cat "$PG_TMPDIR/initdb.log" >&2; return 1; }
  "${runas[@]}" "$bindir/pg_ctl" -D "$PG_TMPDIR/data" -l "$PG_TMPDIR/server.log" -w \
    -o "-h 127.0.0.1 -p $PG_PORT -k $PG_TMPDIR -c fsync=off -c max_connections=60" \
    start >/dev/null || { cat "$PG_TMPDIR/server.log" >&2; return 1; }
  "${runas[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U expertloop expertloop_test \
    || return 1
  export EXPERTLOOP_TEST_POSTGRES_URL="postgresql+psycopg://expertloop@127.0.0.1:$PG_PORT/expertloop_test"
  echo "PostgreSQL running: $EXPERTLOOP_TEST_POSTGRES_URL"
}

pg_stop() {
  [ -n "${PG_TMPDIR:-}" ] && [ -d "$PG_TMPDIR/data" ] || return 0
  # shellcheck disable=SC2086
  $PG_RUNAS "$PG_BINDIR/pg_ctl" -D "$PG_TMPDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMPDIR"
  unset PG_TMPDIR EXPERTLOOP_TEST_POSTGRES_URL
}

pg_start
