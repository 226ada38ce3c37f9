#!/usr/bin/env bash
# Concurrent tiny runs per second, per backend: 200 tiny runs submitted at once to one engine
# (examples/throughput.rs: SQLite store on disk, the engine executing SLOTS runs at a time),
# against the same 200 unpack-and-run jobs done with the plain tools, SLOTS at a time
# (`xargs -P`). Release build.
#
#   scripts/bench-concurrency.sh [REPEAT]   (batches per side and backend, default 3)
#   env: RUNS=200 SLOTS=8 BACKENDS="process wasm docker", NO_DOC=1 (print only)
#
# A tiny run: a 50-file / 100 KB archive, verified, extracted into a fresh sandbox, one
# trivial command (`true`; `node -e 0`, i.e. QuickJS, on the WASI backend, which has no
# `true`), evidence written. The plain job: `mkdir d && tar -xzf tiny.tgz -C d && true`; for
# the Docker backend `docker run --rm -i IMAGE sh -c 'mkdir /tmp/d && tar -xzf - -C /tmp/d &&
# true' < tiny.tgz` (what a user would do with the image by hand). The batches alternate
# (plain, crownest, then crownest, plain, ...) and the median runs/s of each side is compared;
# the ratio is crownest's time per run over the plain one's (lower is better).
#
# The engine side times from the first `create` to the last terminal record, after one
# untimed warm-up run (the backend connection, the WASI module compilation and the first
# container are set-up, not per-run cost).
set -euo pipefail
REPEAT=${1:-3}
RUNS=${RUNS:-200}
SLOTS=${SLOTS:-8}
BACKENDS=${BACKENDS:-process wasm docker}
IMAGE=${IMAGE:-crownest/python-node}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

cargo build --release --example throughput
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/throughput

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
bench_tiny_archive "$WORK"

# One batch of RUNS plain jobs, SLOTS at a time; prints runs/s.
plain_batch() {
  local backend=$1 t
  rm -rf "$WORK/out" && mkdir "$WORK/out"
  if [ "$backend" = docker ]; then
    t=$(bench_time "seq $RUNS | xargs -P $SLOTS -I{} sh -c 'docker run --rm -i $IMAGE sh -c \"mkdir /tmp/d && tar -xzf - -C /tmp/d && true\" < $WORK/tiny.tgz'")
  else
    t=$(bench_time "seq $RUNS | xargs -P $SLOTS -I{} sh -c 'mkdir $WORK/out/{} && tar -xzf $WORK/tiny.tgz -C $WORK/out/{} && true'")
  fi
  awk -v n="$RUNS" -v t="$t" 'BEGIN{printf "%.2f\n", n / t}'
}

# One batch through the engine; prints runs/s.
crownest_batch() {
  local backend=$1 out
  out=$("$BIN" "$RUNS" --backend "$backend" --slots "$SLOTS") || {
    echo "$out" >&2
    return 1
  }
  local line
  line=$(printf '%s\n' "$out" | grep '^runs_per_s=')
  case $line in
    *" succeeded=$RUNS") ;;
    *) echo "not every run succeeded: $out" >&2; return 1 ;;
  esac
  line=${line#runs_per_s=}
  echo "${line%% *}"
}

for backend in $BACKENDS; do
  plain=() cn=() loads=()
  for ((r = 1; r <= REPEAT; r++)); do
    loads+=("$(bench_load)")
    if ((r % 2)); then order="plain cn"; else order="cn plain"; fi
    for side in $order; do
      sync
      if [ "$side" = plain ]; then plain+=("$(plain_batch "$backend")"); else cn+=("$(crownest_batch "$backend")"); fi
    done
  done
  load=$(printf '%s\n' "${loads[@]}" | awk '{s+=$1} END{printf "%.2f", s/NR}')
  mp=$(bench_median "${plain[@]}")
  mc=$(bench_median "${cn[@]}")
  ratio=$(awk -v c="$mc" -v p="$mp" 'BEGIN{printf "%.2f", p / c}')
  printf '%-8s %s runs, %s at a time: plain %s runs/s  crownest %s runs/s  ratio %sx  load %s\n' \
    "$backend" "$RUNS" "$SLOTS" "$mp" "$mc" "$ratio" "$load"
  printf '    batches: plain %s| crownest %s\n' "${plain[*]} " "${cn[*]} "
  if [ -z "${NO_DOC:-}" ]; then
    if [ "$backend" = docker ]; then what="\`docker run --rm -i\` + \`tar -xzf\`"; else what="\`mkdir && tar -xzf && true\`"; fi
    bench_row "$RUNS concurrent tiny runs ($backend, $SLOTS slots)" \
      "$what $mp runs/s" "**$mc runs/s**" "${ratio}x" "-" "$load"
  fi
done
