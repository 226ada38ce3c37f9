#!/usr/bin/env bash
# A private, throw-away PostgreSQL server for the tests of crownest-store-postgres.
#
#   scripts/postgres.sh start DIR     initdb into DIR/data (DIR: a new or empty directory),
#                                     start the server on 127.0.0.1:<free port> and a unix
#                                     socket in DIR, create the database `crownest`, and print
#                                     its URL on stdout (also written to DIR/url)
#   scripts/postgres.sh stop DIR      stop that server and delete DIR
#   scripts/postgres.sh run -- CMD... start in a temp dir, run CMD with CROWNEST_POSTGRES_URL
#                                     exported, stop (also on failure or Ctrl-C); CMD's status
#   scripts/postgres.sh url DIR       print the URL of a started server
#
# PostgreSQL comes from Debian's packages: when no `initdb` is found under
# /usr/lib/postgresql/*/bin (or on PATH), `apt-get install -y postgresql` is run (as root).
# PostgreSQL refuses to run as root, so as root the server runs as the system user
# `crownest-pg` (created with useradd when missing, no home, no login shell). The server
# trusts local connections (user `crownest`, no password): it listens only on 127.0.0.1
# and on a socket in DIR, and lives as long as the tests. Diagnostics go to stderr; the
# server's log is DIR/postgres.log.
#
# Environment:
#   CROWNEST_PG_USER   system user that runs the server when invoked as root (default crownest-pg)
#   CROWNEST_PG_PORT   TCP port (default: a free one from 54321 up)
set -euo pipefail

PG_USER="${CROWNEST_PG_USER:-crownest-pg}"
DB_USER=crownest
DB_NAME=crownest

say() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# The directory holding initdb/pg_ctl/postgres: the newest Debian version, else PATH.
find_bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
  elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
  fi
}

ensure_installed() {
  local bindir
  bindir="$(find_bindir)"
  if [ -z "$bindir" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    say "PostgreSQL not found: installing it from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
    bindir="$(find_bindir)"
    [ -n "$bindir" ] || die "apt-get installed postgresql but no initdb was found"
  fi
  echo "$bindir"
}

# Runs a command as the server's user (root cannot run PostgreSQL).
# From `/`: the caller's directory (e.g. a clone under /root) may be closed to that user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u "$PG_USER" -- "$@")
  else
    "$@"
  fi
}

ensure_user() {
  [ "$(id -u)" = 0 ] || return 0
  if ! id -u "$PG_USER" >/dev/null 2>&1; then
    say "creating the system user $PG_USER"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
  fi
}

port_is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  local p
  for p in $(seq 54321 54420); do
    if port_is_free "$p"; then
      echo "$p"
      return 0
    fi
  done
  die "no free TCP port in 54321-54420"
}

cmd_start() {
  local dir="${1:?usage: postgres.sh start DIR}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [ ! -e "$dir/data" ] || die "$dir/data exists: stop that server first (postgres.sh stop $dir)"
  local bindir port
  bindir="$(ensure_installed)"
  ensure_user
  port="${CROWNEST_PG_PORT:-$(free_port)}"
  if [ "$(id -u)" = 0 ]; then
    chown "$PG_USER" "$dir"
  fi
  chmod 0700 "$dir"
  say "initdb into $dir/data ($("$bindir/postgres" --version))"
  as_pg "$bindir/initdb" -D "$dir/data" -U "$DB_USER" --auth=trust -E UTF8 --locale=C \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # Enough connections for parallel tests (each store holds a small pool).
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300" \
    start >&2 || { cat "$dir/postgres.log" >&2; die "the server did not start"; }
  echo "$bindir" >"$dir/bindir"
  as_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME" >&2
  local url="postgres://$DB_USER@127.0.0.1:$port/$DB_NAME"
  echo "$url" >"$dir/url"
  say "PostgreSQL is up: $url"
  echo "$url"
}

cmd_stop() {
  local dir="${1:?usage: postgres.sh stop DIR}"
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    local bindir
    bindir="$(cat "$dir/bindir" 2>/dev/null || find_bindir)"
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || say "pg_ctl stop failed"
  fi
  rm -rf -- "$dir"
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: postgres.sh run -- CMD..."
  # Global: the EXIT trap runs after this function has returned.
  RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/crownest-pg.XXXXXX")"
  trap 'cmd_stop "$RUN_DIR"' EXIT
  trap 'exit 130' INT TERM
  CROWNEST_POSTGRES_URL="$(cmd_start "$RUN_DIR")"
  export CROWNEST_POSTGRES_URL
  local status=0
  "$@" || status=$?
  return "$status"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  run) shift; cmd_run "$@" ;;
  url) cat "${2:?usage: postgres.sh url DIR}/url" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
