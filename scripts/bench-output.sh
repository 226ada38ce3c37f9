#!/usr/bin/env bash
# End-to-end output benchmark (issue 4): a command writing 256 MiB to stdout through the
# engine (WorkspaceRuns + ProcessBackend + SqliteStore on disk; examples/bench_output.rs)
# against the raw pipe `head -c 256M /dev/zero | cat > /dev/null`, for two streams:
#   zero:   head -c 256M /dev/zero                       (NUL bytes: valid UTF-8, but JSON
#                                                         stores each as "\u0000", 6 bytes)
#   base64: head -c 192M /dev/urandom | base64 -w 76     (~259 MiB of text: realistic logs)
# Each run checks stored bytes == written bytes and verifies the hash chain.
#
# Usage: scripts/bench-output.sh [RUNS]   (default 3; env MIB=256, DIR=/tmp/crownest-bench-output,
#        WAIT=poll|subscribe (default poll: no reader competes with the writer))
# Prints the median of each side, MB/s (10^6 bytes/s) persisted, and the ratio engine/raw.
# Goal: >= 100 MB/s persisted.
set -euo pipefail

RUNS=${1:-3}
MIB=${MIB:-256}
DIR=${DIR:-/tmp/crownest-bench-output}
WAIT=${WAIT:-poll}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

cd "$ROOT"
cargo build --release --quiet --no-default-features --example bench_output
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_output"

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1==k{print $2}'; }

raw_pipe() { # MODE -> seconds, bytes
  local s e
  s=$EPOCHREALTIME
  case $1 in
    zero) head -c "${MIB}M" /dev/zero | cat > /dev/null ;;
    base64) head -c "$((MIB * 3 / 4))M" /dev/urandom | base64 -w 76 | cat > /dev/null ;;
  esac
  e=$EPOCHREALTIME
  echo "$e - $s" | bc -l
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in zero base64; do
  t_raw=() t_eng=() lines=()
  for ((r = 1; r <= RUNS; r++)); do
    t_raw+=("$(raw_pipe "$mode")")
    line=$("$BIN" --mode "$mode" --mib "$MIB" --wait "$WAIT" --dir "$DIR")
    lines+=("$line")
    t_eng+=("$(echo "$line" | field wall_s)")
    echo "  $line"
  done
  bytes=$(echo "${lines[0]}" | field bytes)
  mr=$(printf '%s\n' "${t_raw[@]}" | median)
  me=$(printf '%s\n' "${t_eng[@]}" | median)
  printf '%-6s raw pipe: %.3f s (%.0f MB/s)  engine: %.3f s (%.1f MB/s persisted)  ratio engine/raw: %.1f  (runs: raw %s | engine %s)\n' \
    "$mode" "$mr" "$(echo "$bytes / $mr / 1000000" | bc -l)" "$me" "$(echo "$bytes / $me / 1000000" | bc -l)" \
    "$(echo "$me / $mr" | bc -l)" "${t_raw[*]}" "${t_eng[*]}"
done
rm -rf "$DIR"
