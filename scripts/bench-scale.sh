#!/usr/bin/env bash
# Tiny runs per second with 1, 2 and 3 engine processes (`crownest serve`) on one
# PostgreSQL store, against one engine on its SQLite store, side by side. Release build.
#
#   scripts/bench-scale.sh [REPEAT]   (rounds per configuration, default 3)
#   env: RUNS=200 CONCURRENCY=16 SLOTS=4 NO_DOC=1 (print only) PROFILE=debug (script check)
#        CROWNEST_POSTGRES_URL (else a private server is started, scripts/postgres.sh)
#
# Each round submits RUNS tiny runs (a 50-file / 100 KB archive, `true` on the process
# backend) through the HTTP API of the configuration's servers, round-robin as a load
# balancer would, CONCURRENCY requests in flight (examples/scale_load.rs), and times from
# the first create to the last terminal record. Every server is up for the whole benchmark
# and the configurations take turns round by round (rotated), so load drifts hit all of
# them. Each server executes SLOTS runs at a time; with PostgreSQL, a run a server has no
# slot for waits in the shared queue for any server's free slot. The store is durable in
# both cases (SQLite fsyncs every commit under `serve`; PostgreSQL with its defaults).
set -euo pipefail
REPEAT=${1:-3}
RUNS=${RUNS:-200}
CONCURRENCY=${CONCURRENCY:-16}
SLOTS=${SLOTS:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

# PROFILE=debug: a quick check of the script itself (its numbers mean nothing).
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release --workspace --bins --example scale_load
else
  cargo build --workspace --bins --example scale_load
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
BIN=${CROWNEST_BIN:-$TARGET/crownest}
LOAD=$TARGET/examples/scale_load

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2> /dev/null || true; kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  [ -n "${PG_DIR:-}" ] && scripts/postgres.sh stop "$PG_DIR" > /dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${CROWNEST_POSTGRES_URL:-}" ]; then
  PG_DIR=$WORK/pg
  mkdir -p "$PG_DIR"
  CROWNEST_POSTGRES_URL=$(scripts/postgres.sh start "$PG_DIR")
fi
DB=bench_scale_$$
psql "$CROWNEST_POSTGRES_URL" -qAtc "CREATE DATABASE $DB" > /dev/null
PG_URL="${CROWNEST_POSTGRES_URL%/*}/$DB"
drop_db() { psql "$CROWNEST_POSTGRES_URL" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" > /dev/null 2>&1 || true; }
trap 'drop_db; cleanup' EXIT

bench_tiny_archive "$WORK"
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$TOKEN" > "$WORK/token"

# serve NAME [STORE ARGS...]: starts a server with its own home (in this shell, so its pid
# is kept); its URL goes to URL_OF[NAME].
declare -A PID_OF URL_OF
serve() {
  local name=$1 url
  shift
  mkdir -p "$WORK/$name"
  "$BIN" --home "$WORK/$name/home" --token-file "$WORK/token" "$@" serve \
    --listen 127.0.0.1:0 --backends process --max-concurrent-runs "$SLOTS" \
    2> "$WORK/$name/log" &
  PID_OF[$name]=$!
  PIDS+=($!)
  for _ in $(seq 600); do
    url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/$name/log" | head -1)
    [ -n "$url" ] && { URL_OF[$name]=$url; return; }
    sleep 0.1
  done
  echo "server $name did not start:" >&2
  cat "$WORK/$name/log" >&2
  return 1
}

PG=(--store "$PG_URL" --blobs "$WORK/blobs")
serve sqlite1
for name in pg1 pg2a pg2b pg3a pg3b pg3c; do serve "$name" "${PG[@]}"; done
# The servers of each configuration. Only the servers of the configuration being measured
# take runs: the others are stopped (SIGSTOP) meanwhile, so a pg1 round is not helped by
# pg2's and pg3's engines claiming from the shared queue.
declare -A GROUP=([sqlite1]=sqlite1 [pg1]=pg1 [pg2]="pg2a pg2b" [pg3]="pg3a pg3b pg3c")
urls() {
  local n out=""
  for n in ${GROUP[$1]}; do out="$out,${URL_OF[$n]}"; done
  echo "${out#,}"
}
only() {
  local keep=" ${GROUP[$1]} " n
  for n in "${!PID_OF[@]}"; do
    if [[ $keep == *" $n "* ]]; then kill -CONT "${PID_OF[$n]}"; else kill -STOP "${PID_OF[$n]}"; fi
  done
}

CONFIGS=(sqlite1 pg1 pg2 pg3)
declare -A RATES PER
for c in "${CONFIGS[@]}"; do
  only "$c"
  "$LOAD" "$(urls "$c")" "$TOKEN" "$WORK/tiny.tgz" 10 4 > /dev/null # warm-up, untimed
  RATES[$c]=""
done
LOADS=()
for r in $(seq "$REPEAT"); do
  for k in "${!CONFIGS[@]}"; do
    c=${CONFIGS[$(((k + r) % ${#CONFIGS[@]}))]}
    only "$c"
    LOADS+=("$(bench_load)")
    out=$("$LOAD" "$(urls "$c")" "$TOKEN" "$WORK/tiny.tgz" "$RUNS" "$CONCURRENCY")
    rate=$(sed -n 's/.*"runsPerSecond":\([0-9.]*\).*/\1/p' <<< "$out")
    RATES[$c]="${RATES[$c]} $rate"
    PER[$c]=$(sed -n 's/.*"perEngine":\(\[[^]]*\]\).*/\1/p' <<< "$out")
    echo "round $r $c: $rate runs/s, per engine ${PER[$c]}" >&2
  done
done
for n in "${!PID_OF[@]}"; do kill -CONT "${PID_OF[$n]}"; done

load=$(bench_median "${LOADS[@]}")
base=$(printf '%.1f' "$(bench_median ${RATES[sqlite1]})")
table="| configuration | runs/s (median of $REPEAT × $RUNS) | vs one engine on SQLite | runs per engine (last round) |
|---|---|---|---|"
for c in "${CONFIGS[@]}"; do
  m=$(printf '%.1f' "$(bench_median ${RATES[$c]})")
  ratio=$(awk -v a="$m" -v b="$base" 'BEGIN{printf "%.2f", a / b}')
  case $c in
    sqlite1) label="1 engine, SQLite" ;;
    pg1) label="1 engine, PostgreSQL" ;;
    pg2) label="2 engines, one PostgreSQL" ;;
    pg3) label="3 engines, one PostgreSQL" ;;
  esac
  table="$table
| $label | $m | ${ratio}× | ${PER[$c]} |"
done
table="$table

$(date -u +%F), $(nproc) cores, load average $load while measuring; $SLOTS slots per engine, $CONCURRENCY requests in flight, process backend, tiny runs (50 files, \`true\`)."
echo "$table"
if [ -z "${NO_DOC:-}" ]; then
  python3 - "$BENCH_DOC" "$table" << 'PY'
import sys
path, table = sys.argv[1], sys.argv[2]
s = open(path).read()
start, end = "<!-- bench-scale -->", "<!-- /bench-scale -->"
block = f"{start}\n{table}\n{end}"
if start in s:
    a, b = s.index(start), s.index(end) + len(end)
    s = s[:a] + block + s[b:]
else:
    s = s.rstrip("\n") + "\n\n## Scale-out: engines on one PostgreSQL (`scripts/bench-scale.sh`)\n\n" + block + "\n"
open(path, "w").write(s)
PY
fi
