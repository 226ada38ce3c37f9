#!/usr/bin/env bash
# A/B of two crownest binaries on the tiny run: `crownest --home HOME run tiny.tgz -- true`
# (process backend), interleaved (A B, B A, ...), medians, in both orders (the machine's
# speed drifts within minutes, so a change is kept only when both orders agree).
#
#   scripts/bench-ab.sh BIN_A BIN_B [RUNS] [DIR]     (RUNS per binary and order, default 40;
#                                                     DIR holds the homes, default /dev/shm)
#
# Both binaries are first copied into a fresh directory and run from there: how an
# executable's pages sit in the page cache changes its start-up (an older copy of the very
# same binary took 996 page faults and ~1.6 ms more per run than a fresh copy of it on the
# machine of the twelfth pass, docs/benchmarks.md), so comparing a binary built an hour ago
# with one built just now measures the page cache, not the change.
set -euo pipefail
A=$1 B=$2 RUNS=${3:-40} DIR=${4:-/dev/shm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"
WORK=$(mktemp -d "$DIR/crownest-bench-ab.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp "$A" "$WORK/a"
cp "$B" "$WORK/b"
bench_tiny_archive "$WORK"
cmd() { echo "$WORK/$1 --home $WORK/home-$1 run $WORK/tiny.tgz -- true"; }
for w in a b; do # the store and host key made, then a few warm runs
  for _ in 1 2 3 4 5 6; do eval "$(cmd $w)" > /dev/null 2>&1; done
done
ms() { bench_median "$@" | awk '{printf "%.2f", $1 * 1000}'; }
bench_pair "$RUNS" a "$(cmd a)" b "$(cmd b)"
echo "A then B: A $(ms "${BENCH_T_A[@]}") ms  B $(ms "${BENCH_T_B[@]}") ms  load $BENCH_LOAD"
bench_pair "$RUNS" b "$(cmd b)" a "$(cmd a)"
echo "B then A: A $(ms "${BENCH_T_B[@]}") ms  B $(ms "${BENCH_T_A[@]}") ms  load $BENCH_LOAD"
