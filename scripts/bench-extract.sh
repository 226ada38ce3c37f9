#!/usr/bin/env bash
# End-to-end intake benchmark: CrowNest's one-pass verify + extract (sha256 of the compressed
# bytes while inflating, file writes on a second thread; examples/extract_bench.rs) against
# `sha256sum a.tgz && tar -xzf a.tgz -C d`, on tmpfs (/dev/shm) and on disk (/tmp here).
#
# Usage: scripts/bench-extract.sh [RUNS]   (default 5; env FILES, MB, WORK, DISK override)
# Prints the median wall time of each side and the ratio crownest/tar (goal: ≤ 0.6 on tmpfs,
# ≤ 1.0 on disk).
#
# Method: the archive is a deterministic repo-like tree (scripts/gen-repo-tree.py: ~200 MB of
# source-like text in ~20 000 files, ~45 MB gzipped), cached by the generator's content. Every
# timed extraction goes into a fresh directory after an untimed `sync`, and the two tools
# alternate which goes first. On disk the trees are removed only after all runs: ext4 mounted
# with `discard` (as here) stalls for seconds after a large deletion, which would time the
# previous run's deletion instead of this extraction. That case is still reported, as its own
# line ("disk-after-rm": each timed run follows the deletion of the previous tree).
set -euo pipefail

RUNS=${1:-5}
FILES=${FILES:-20000}
MB=${MB:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/dev/shm/crownest-bench-extract}
DISK=${DISK:-/tmp/crownest-bench-extract}

cd "$ROOT"
# The facade's default features (docker, wasm, http) are not needed here.
cargo build --release --quiet --no-default-features --example extract_bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/extract_bench"

mkdir -p "$WORK"
KEY=$( (sha256sum scripts/gen-repo-tree.py; echo "$FILES $MB") | sha256sum | cut -c1-12)
ARCHIVE="$WORK/repo-$KEY.tgz"
if [ ! -f "$ARCHIVE" ]; then
  echo "generating a ~${MB} MB, ${FILES}-file repo-like tree..."
  rm -rf "$WORK/src"
  python3 scripts/gen-repo-tree.py "$WORK/src" "$FILES" "$MB"
  tar -C "$WORK/src" -czf "$ARCHIVE.part" .
  mv "$ARCHIVE.part" "$ARCHIVE"
  rm -rf "$WORK/src"
fi
SHA=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
echo "archive: $(du -m "$ARCHIVE" | cut -f1) MB compressed, $(gzip -l "$ARCHIVE" | awk 'NR==2{print int($2/1048576)}') MB inflated, $(tar -tzf "$ARCHIVE" | wc -l) entries"

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Prints the wall time of one extraction by `tool` (tar | cn) into the new directory `dir`.
timed() {
  local tool=$1 dir=$2 s e
  sync
  s=$EPOCHREALTIME
  if [ "$tool" = tar ]; then
    mkdir "$dir"
    sha256sum "$ARCHIVE" > /dev/null && tar -xzf "$ARCHIVE" -C "$dir"
  else
    "$BIN" "$ARCHIVE" "$dir" "$SHA" > /dev/null
  fi
  e=$EPOCHREALTIME
  echo "$e - $s" | bc -l
}

# bench_on LABEL BASE DELETE_BETWEEN
bench_on() {
  local label=$1 base=$2 delete=$3
  rm -rf "$base"; mkdir -p "$base"
  local t_tar=() t_cn=() r order tool prev=""
  for ((r = 1; r <= RUNS; r++)); do
    if ((r % 2)); then order="tar cn"; else order="cn tar"; fi
    for tool in $order; do
      if [ "$delete" = 1 ] && [ -n "$prev" ]; then rm -rf "$prev"; fi
      local t
      t=$(timed "$tool" "$base/$tool-$r")
      if [ "$tool" = tar ]; then t_tar+=("$t"); else t_cn+=("$t"); fi
      prev="$base/$tool-$r"
    done
  done
  # Same tree? (compared once, outside the timed part)
  rm -rf "$base/ref-tar" "$base/ref-cn"
  mkdir "$base/ref-tar" && tar -xzf "$ARCHIVE" -C "$base/ref-tar"
  "$BIN" "$ARCHIVE" "$base/ref-cn" "$SHA" > /dev/null
  diff -r "$base/ref-tar" "$base/ref-cn" > /dev/null || { echo "trees differ!" >&2; exit 1; }
  rm -rf "$base"
  local mt mc
  mt=$(printf '%s\n' "${t_tar[@]}" | median)
  mc=$(printf '%s\n' "${t_cn[@]}" | median)
  printf '%-13s tar: %.3f s  crownest: %.3f s  ratio: %.2f  (runs: tar %s | crownest %s)\n' \
    "$label" "$mt" "$mc" "$(echo "$mc / $mt" | bc -l)" \
    "$(printf '%.2f ' "${t_tar[@]}")" "$(printf '%.2f ' "${t_cn[@]}")"
}

bench_on tmpfs "$WORK/out" 0
bench_on disk "$DISK" 0
bench_on disk-after-rm "$DISK" 1
