# Sourced by the user-path benchmarks (bench-big.sh, bench-cli.sh, bench-concurrency.sh):
# interleaved timing, medians, the load average, and the rows of the table in
# docs/benchmarks.md that each script keeps up to date.
#
#   bench_pair RUNS NAME_A CMD_A NAME_B CMD_B [PREP]   # A B, B A, A B...; times in BENCH_T_A/B
#   bench_median 0.1 0.3 0.2                           # -> 0.2
#   bench_row PATH PLAIN CROWNEST RATIO GOAL LOAD      # upserts the row keyed by PATH
#   bench_tiny_archive DIR                             # DIR/tiny/src (50 files), DIR/tiny.tgz

BENCH_ROOT=${BENCH_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BENCH_DOC=${BENCH_DOC:-$BENCH_ROOT/docs/benchmarks.md}

# The median of the arguments (numbers).
bench_median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

# The 1-minute load average now.
bench_load() { cut -d' ' -f1 /proc/loadavg; }

# Seconds (with microseconds) that `eval "$1"` takes; its output is discarded, and a failure
# stops the benchmark (a failing command would be timed as a fast one).
bench_time() {
  local s e
  s=$EPOCHREALTIME
  if ! eval "$1" > /dev/null 2> "${BENCH_ERR:-/dev/null}"; then
    echo "benchmark command failed: $1" >&2
    [ -n "${BENCH_ERR:-}" ] && cat "$BENCH_ERR" >&2
    return 1
  fi
  e=$EPOCHREALTIME
  awk -v s="$s" -v e="$e" 'BEGIN{printf "%.6f\n", e - s}'
}

# bench_pair RUNS A CMD_A B CMD_B [PREP]: runs the two commands alternately (A B, then B A,
# ...), RUNS times each, `eval "$PREP a"` or `eval "$PREP b"` (untimed) before every timed
# command of A or B, and leaves
# the times in seconds in the arrays BENCH_T_A and BENCH_T_B, and the load average seen
# (the mean of the 1-minute load average read before each round) in BENCH_LOAD.
bench_pair() {
  local runs=$1 cmd_a=$3 cmd_b=$5 prep=${6:-:} r order which t loads=()
  BENCH_T_A=() BENCH_T_B=()
  for ((r = 1; r <= runs; r++)); do
    loads+=("$(bench_load)")
    if ((r % 2)); then order="a b"; else order="b a"; fi
    for which in $order; do
      eval "$prep $which"
      if [ "$which" = a ]; then
        t=$(bench_time "$cmd_a") || return 1
        BENCH_T_A+=("$t")
      else
        t=$(bench_time "$cmd_b") || return 1
        BENCH_T_B+=("$t")
      fi
    done
  done
  BENCH_LOAD=$(printf '%s\n' "${loads[@]}" | awk '{s+=$1} END{printf "%.2f", s/NR}')
}

# bench_row PATH PLAIN CROWNEST RATIO GOAL LOAD: replaces (or adds) the row whose first cell
# is PATH (markdown, as given) in the "User-path benchmarks" table of docs/benchmarks.md, dated today.
bench_row() {
  python3 "$BENCH_ROOT/scripts/lib/bench-table.py" "$BENCH_DOC" "$@" "$(date -u +%Y-%m-%d)"
}

# bench_tiny_archive DIR: the tiny repo every tiny-run benchmark uses, 50 text files of 2 KiB
# (~100 KB) in DIR/tiny/src, packed as DIR/tiny.tgz (~78 KB).
bench_tiny_archive() {
  local dir=$1 i
  mkdir -p "$dir/tiny/src"
  for i in $(seq -w 1 50); do
    head -c 1600 /dev/urandom | base64 -w 76 | head -c 2048 > "$dir/tiny/src/file$i.txt"
  done
  tar -czf "$dir/tiny.tgz" -C "$dir/tiny" .
}
