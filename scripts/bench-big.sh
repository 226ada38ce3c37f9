#!/usr/bin/env bash
# What a user waits for with a big repo: `crownest run big.tgz -- true`, locally and through
# `crownest --server URL`, against `sha256sum big.tgz && tar -xzf big.tgz` (the plain tools
# that verify and unpack the same archive), on tmpfs and on disk. Release build.
#
#   scripts/bench-big.sh [RUNS]       (default 5 timed runs per command and row)
#   env: FILES=20000 MB=400 (the tree: scripts/gen-repo-tree.py; ~93 MB gzipped), ROWS="local-tmpfs
#        local-disk server-tmpfs server-disk", TMPFS=/dev/shm/crownest-bench-big,
#        DISK=/tmp/crownest-bench-big, NO_DOC=1 (print only, leave docs/benchmarks.md alone)
#
# For each row, the two commands run alternately (plain, crownest, then crownest, plain...),
# each after an untimed `sync`, and the medians are compared (ratio = crownest / plain;
# goals: local tmpfs <= 0.5, server tmpfs <= 0.6). Everything a row touches lives on the
# row's filesystem: the archive, the plain tool's output, the CrowNest home (store, blobs)
# and the process backend's work root (XDG_RUNTIME_DIR, so the workspace is extracted there).
#
# Every crownest run gets a fresh home, made and used once by an untimed tiny run (store,
# host key, probe cache), so the big archive is never already in the store: the local run
# really uploads it into the blob store, and the client really sends it to the server (with
# the blob already there the client would attach it by digest and send nothing). A server
# row starts `crownest serve` on that home on a free loopback port with its own token
# (untimed) and stops it after the run. The outputs are removed after the row, not between
# runs (a large deletion on ext4 with `discard` stalls the disk for seconds; see
# docs/archive.md).
#
# Prints, per row, both medians, the ratio, the load average while measuring and every
# timed run; then writes the rows into the table of docs/benchmarks.md.
set -euo pipefail

RUNS=${1:-5}
FILES=${FILES:-20000}
MB=${MB:-400}
ROWS=${ROWS:-local-tmpfs local-disk server-tmpfs server-disk}
TMPFS=${TMPFS:-/dev/shm/crownest-bench-big}
DISK=${DISK:-/tmp/crownest-bench-big}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

# The binary: $CROWNEST_BIN when set (not built), else built into $CARGO_TARGET_DIR (or
# target/) with the workspace's feature set (`-p crownest-cli` resolves features differently
# and would rebuild the whole tree in a target dir shared with `--workspace` builds).
if [ -z "${CROWNEST_BIN:-}" ]; then
  cargo build --release --workspace --bins
fi
CN=${CROWNEST_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/crownest}
TOKEN=bench-big-$$-$RANDOM
SERVER_PID=

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2> /dev/null || true
    wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=
  fi
}
cleanup() {
  stop_server
  rm -rf "$TMPFS/run" "$DISK/run"
}
trap cleanup EXIT

# The archive (cached by the generator's content and size) and a tiny one for the untimed
# warm-up of each fresh home.
mkdir -p "$DISK"
KEY=$( (sha256sum scripts/gen-repo-tree.py; echo "$FILES $MB") | sha256sum | cut -c1-12)
ARCHIVE=$DISK/repo-$KEY.tgz
if [ ! -f "$ARCHIVE" ]; then
  echo "generating a ~$MB MB, $FILES-file repo-like tree..."
  rm -rf "$DISK/src"
  python3 scripts/gen-repo-tree.py "$DISK/src" "$FILES" "$MB"
  tar -C "$DISK/src" -czf "$ARCHIVE.part" .
  mv "$ARCHIVE.part" "$ARCHIVE"
  rm -rf "$DISK/src"
fi
TINY=$DISK/tiny.tgz
if [ ! -f "$TINY" ]; then
  mkdir -p "$DISK/tiny" && echo hi > "$DISK/tiny/README"
  tar -C "$DISK/tiny" -czf "$TINY" .
fi
SIZE="$(($(stat -c %s "$ARCHIVE") / 1000000)) MB gzipped, $(gzip -l "$ARCHIVE" | awk 'NR==2{print int($2/1000000)}') MB, $(tar -tzf "$ARCHIVE" | wc -l) entries"
echo "big.tgz: $SIZE"

# State of the row being measured.
BASE= MODE= N=0 URL=

# Untimed, before each timed command: a fresh output directory (plain) or a fresh, warmed-up
# home, with a server on it for a server row (crownest); then `sync`.
prep() {
  local which=$1
  N=$((N + 1))
  stop_server
  if [ "$which" = b ]; then
    local home=$BASE/run/home-$N
    mkdir -p "$home"
    if [ "$MODE" = server ]; then
      local log=$BASE/run/serve-$N.log
      CROWNEST_TOKEN=$TOKEN XDG_RUNTIME_DIR=$BASE/run/xdg "$CN" --home "$home" serve \
        --listen 127.0.0.1:0 --backends process 2> "$log" &
      SERVER_PID=$!
      URL=
      for _ in $(seq 1 200); do
        URL=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$log" | head -n1)
        [ -n "$URL" ] && break
        kill -0 "$SERVER_PID" 2> /dev/null || { cat "$log" >&2; exit 1; }
        sleep 0.05
      done
      [ -n "$URL" ] || { echo "crownest serve did not start:" >&2; cat "$log" >&2; exit 1; }
      CROWNEST_TOKEN=$TOKEN "$CN" --server "$URL" run "$TINY" -- true > /dev/null
    else
      XDG_RUNTIME_DIR=$BASE/run/xdg "$CN" --home "$home" run "$TINY" -- true > /dev/null
    fi
  fi
  sync
}

# Row: LABEL MODE FS BASE GOAL
row() {
  local label=$1 mode=$2 fs=$3 goal=$5
  BASE=$4 MODE=$mode N=0
  rm -rf "$BASE/run"
  mkdir -p "$BASE/run/xdg" "$BASE/run/out"
  chmod 700 "$BASE/run/xdg"
  # The archive on the row's filesystem.
  local big=$BASE/big.tgz
  if [ "$big" != "$ARCHIVE" ] && ! cmp -s "$ARCHIVE" "$big"; then cp "$ARCHIVE" "$big"; fi
  local plain="mkdir \$BASE/run/out/tar-\$N && sha256sum $big && tar -xzf $big -C \$BASE/run/out/tar-\$N"
  local cn
  if [ "$mode" = server ]; then
    cn="CROWNEST_TOKEN=$TOKEN $CN --server \$URL run $big -- true"
  else
    cn="XDG_RUNTIME_DIR=\$BASE/run/xdg $CN --home \$BASE/run/home-\$N run $big -- true"
  fi
  BENCH_ERR=$BASE/run/err bench_pair "$RUNS" plain "$plain" crownest "$cn" prep
  stop_server
  rm -rf "$BASE/run"
  local mp mc ratio
  mp=$(bench_median "${BENCH_T_A[@]}")
  mc=$(bench_median "${BENCH_T_B[@]}")
  ratio=$(awk -v c="$mc" -v p="$mp" 'BEGIN{printf "%.2f", c / p}')
  printf '%-28s plain %.2f s  crownest %.2f s  ratio %s (goal %s)  load %s\n' \
    "$label, $fs" "$mp" "$mc" "$ratio" "$goal" "$BENCH_LOAD"
  printf '    runs: plain %s| crownest %s\n' \
    "$(printf '%.2f ' "${BENCH_T_A[@]}")" "$(printf '%.2f ' "${BENCH_T_B[@]}")"
  if [ -z "${NO_DOC:-}" ]; then
    bench_row "\`$label\` ($fs; $SIZE)" \
      "\`sha256sum && tar -xzf\` $(printf '%.2f' "$mp") s" "$(printf '%.2f' "$mc") s" \
      "**${ratio}x**" "$goal" "$BENCH_LOAD"
  fi
}

for r in $ROWS; do
  case $r in
    local-tmpfs) row "crownest run big.tgz -- true" local tmpfs "$TMPFS" "<= 0.5x" ;;
    local-disk) row "crownest run big.tgz -- true" local disk "$DISK" "-" ;;
    server-tmpfs) row "crownest --server URL run big.tgz -- true" server tmpfs "$TMPFS" "<= 0.6x" ;;
    server-disk) row "crownest --server URL run big.tgz -- true" server disk "$DISK" "-" ;;
    *) echo "unknown row $r (local-tmpfs, local-disk, server-tmpfs, server-disk)" >&2; exit 2 ;;
  esac
done
