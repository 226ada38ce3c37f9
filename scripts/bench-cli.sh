#!/usr/bin/env bash
# CLI per-run overhead and library throughput (issue 5, point 5). Release builds.
#
#   scripts/bench-cli.sh [RUNS]          (RUNS: timed runs per command, default 50)
#
# 1. `crownest run tiny.tgz -- true` against the shell baseline
#    `mkdir d && tar -xzf tiny.tgz -C d && true` (tiny = 50 files, ~100 KB of text), both
#    timed by hyperfine when it is installed (or installable with apt-get as root), else by a
#    loop reading `date +%s%N`. Goal: at most 20 ms above the baseline per run.
# 2. Library throughput: tiny runs per second through the engine on 2 cores
#    (examples/throughput.rs: SQLite store + process backend, 200 runs, 8 at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p crownest-cli
cargo build --release --no-default-features --example throughput
CROWNEST=$TARGET/release/crownest

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tiny/src"
for i in $(seq -w 1 50); do
  head -c 1600 /dev/urandom | base64 -w 76 | head -c 2048 > "$WORK/tiny/src/file$i.txt"
done
tar -czf "$WORK/tiny.tgz" -C "$WORK/tiny" .
echo "tiny.tgz: $(stat -c %s "$WORK/tiny.tgz") bytes compressed, $(du -sb "$WORK/tiny/src" | cut -f1) bytes in 50 files"

HOME_DIR=$WORK/home
RUN_CMD="$CROWNEST --home $HOME_DIR run $WORK/tiny.tgz -- true"
BASE_CMD="sh -c 'mkdir $WORK/d && tar -xzf $WORK/tiny.tgz -C $WORK/d && true'"
# The first run creates the store; not timed.
$RUN_CMD > /dev/null 2>&1

if ! command -v hyperfine > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  apt-get install -y -qq hyperfine > /dev/null 2>&1 || true
fi

if command -v hyperfine > /dev/null; then
  hyperfine -N --warmup 5 --runs "$RUNS" \
    --export-json "$WORK/bench.json" \
    --command-name "crownest run tiny.tgz -- true" "$RUN_CMD" \
    --prepare "rm -rf $WORK/d" --command-name "baseline: mkdir + tar -xzf + true" "$BASE_CMD"
  python3 - "$WORK/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
run, base = r[0]["mean"] * 1000, r[1]["mean"] * 1000
print(f"per-run: crownest {run:.1f} ms, baseline {base:.1f} ms, overhead {run - base:+.1f} ms (goal <= +20 ms)")
PY
else
  time_loop() { # name, command, prepare
    local total=0 start end
    for _ in $(seq 1 "$RUNS"); do
      eval "$3"
      start=$(date +%s%N)
      eval "$2" > /dev/null 2>&1
      end=$(date +%s%N)
      total=$((total + end - start))
    done
    echo $((total / RUNS / 1000))
  }
  run_us=$(time_loop crownest "$RUN_CMD" true)
  base_us=$(time_loop baseline "$BASE_CMD" "rm -rf $WORK/d")
  echo "per-run: crownest $((run_us / 1000)).$((run_us % 1000 / 100)) ms, baseline $((base_us / 1000)).$((base_us % 1000 / 100)) ms, overhead $(((run_us - base_us) / 1000)) ms (goal <= +20 ms)"
fi

echo "library throughput (2 worker threads, SQLite store, process backend):"
"$TARGET/release/examples/throughput" 200 8
