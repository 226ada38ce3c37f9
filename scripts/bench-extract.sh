#!/usr/bin/env bash
# End-to-end intake benchmark: CrowNest's one-pass verify + extract (sha256 of the compressed
# bytes while inflating, file writes on a second thread; examples/extract_bench.rs) against
# `sha256sum a.tgz && tar -xzf a.tgz -C d`, on tmpfs (/dev/shm) and on disk (/tmp here).
#
# Usage: scripts/bench-extract.sh [RUNS]   (default 5; env FILES, MB, WORK override the tree)
# Prints the median wall time of each side and the ratio crownest/tar (goal: ≤ 0.6 on tmpfs,
# ≤ 1.0 on disk).
set -euo pipefail

RUNS=${1:-5}
FILES=${FILES:-20000}
MB=${MB:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/dev/shm/crownest-bench-extract}
DISK=${DISK:-/tmp/crownest-bench-extract}

cd "$ROOT"
cargo build --release --quiet --example extract_bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/extract_bench"

mkdir -p "$WORK"
ARCHIVE="$WORK/a.tgz"
if [ ! -f "$ARCHIVE" ]; then
  echo "generating a ~${MB} MB, ${FILES}-file repo-like tree..."
  rm -rf "$WORK/src"
  python3 - "$WORK/src" "$FILES" "$MB" <<'PY'
import os, random, sys
root, files, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
syll = ["ka","lo","mi","ne","ru","ta","po","si","de","fa","gu","hi","jo","be","zu","wy","qu","xa","ve","co"]
vocab = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
kw = ["def","return","import","class","self","if","else","for","in","while","const","let","fn","=>","{","}","(",")",";","=","+","==","None","true","false"]
avg = mb * 1024 * 1024 // files
dirs = [os.path.join(*["d%02d" % rng.randint(0, 40) for _ in range(rng.randint(1, 4))]) for _ in range(1500)]
for i in range(files):
    d = os.path.join(root, rng.choice(dirs))
    os.makedirs(d, exist_ok=True)
    size = int(rng.expovariate(1.0 / avg)) + 64
    out, n = [], 0
    while n < size:
        line = " " * (4 * rng.randint(0, 4)) + " ".join(
            rng.choice(kw) if rng.random() < 0.3 else
            (str(rng.randint(0, 10**rng.randint(1, 9))) if rng.random() < 0.15 else rng.choice(vocab))
            for _ in range(rng.randint(2, 14)))
        out.append(line); n += len(line) + 1
    ext = rng.choice([".py", ".js", ".rs", ".md", ".txt", ".json"])
    with open(os.path.join(d, "f%05d%s" % (i, ext)), "w") as f:
        f.write("\n".join(out) + "\n")
    if i % 11 == 0:
        os.chmod(os.path.join(d, "f%05d%s" % (i, ext)), 0o755)
PY
  tar -C "$WORK/src" -czf "$ARCHIVE" .
  rm -rf "$WORK/src"
fi
SHA=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
echo "archive: $(du -m "$ARCHIVE" | cut -f1) MB compressed, $(gzip -l "$ARCHIVE" | awk 'NR==2{print int($2/1048576)}') MB inflated, $(tar -tzf "$ARCHIVE" | wc -l) entries"

now() { echo "$EPOCHREALTIME"; }

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

bench_on() {
  local label=$1 base=$2
  mkdir -p "$base"
  local t_tar=() t_cn=()
  for ((r = 1; r <= RUNS; r++)); do
    rm -rf "$base/tar" "$base/cn"; sync
    local s e
    s=$(now)
    mkdir "$base/tar"
    sha256sum "$ARCHIVE" > /dev/null && tar -xzf "$ARCHIVE" -C "$base/tar"
    e=$(now); t_tar+=("$(echo "$e - $s" | bc -l)")
    rm -rf "$base/tar"; sync
    s=$(now)
    "$BIN" "$ARCHIVE" "$base/cn" "$SHA" > /dev/null
    e=$(now); t_cn+=("$(echo "$e - $s" | bc -l)")
  done
  # Same tree? (compare once, outside the timed part)
  mkdir -p "$base/tar" && tar -xzf "$ARCHIVE" -C "$base/tar"
  diff -r "$base/tar" "$base/cn" > /dev/null || { echo "trees differ!" >&2; exit 1; }
  rm -rf "$base/tar" "$base/cn"
  local mt mc
  mt=$(printf '%s\n' "${t_tar[@]}" | median)
  mc=$(printf '%s\n' "${t_cn[@]}" | median)
  printf '%-7s tar: %s s  crownest: %s s  ratio: %.2f  (runs: tar %s | crownest %s)\n' \
    "$label" "$mt" "$mc" "$(echo "$mc / $mt" | bc -l)" "${t_tar[*]}" "${t_cn[*]}"
}

bench_on tmpfs "$WORK/out"
bench_on disk "$DISK"
rm -rf "$DISK"
