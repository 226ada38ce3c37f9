#!/usr/bin/env bash
# SSE fan-out benchmark (issue 8): N subscribers (default 100) on one run printing 10 MB,
# served by crownest_http::router on 127.0.0.1 over an on-disk SqliteStore and the process
# backend; the subscribers run in a child process (crownest-http/examples/sse_fanout.rs), so
# the server's CPU is its own. Reports events/s delivered (all subscribers), subscriber lag
# (receive time - event `at`: p50, p99, max) and CPU time of server and client.
#
# Usage: scripts/bench-sse.sh [RUNS]   (default 3; env SUBSCRIBERS=100, MB=10, PACED=R MB/s
#        for a paced command instead of a flood)
# Goal: worst lag <= 1 s.
set -euo pipefail

RUNS=${1:-3}
SUBSCRIBERS=${SUBSCRIBERS:-100}
MB=${MB:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

cd "$ROOT"
cargo build --release --quiet -p crownest-http --example sse_fanout
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/sse_fanout"
EXTRA=()
if [ -n "${PACED:-}" ]; then EXTRA=(--paced-mbps "$PACED"); fi

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= RUNS; r++)); do
  "$BIN" --subscribers "$SUBSCRIBERS" --mb "$MB" "${EXTRA[@]}"
done
