#!/usr/bin/env bash
# A tiny Docker run, whole process, side by side with the plain tool (issue 16, item 2).
# Release build.
#
#   scripts/bench-docker.sh [RUNS]        (RUNS: timed runs per case, default 15;
#                                          env CROWNEST_BIN=PATH: a built binary)
#
# In ONE run, interleaved (each round runs every case once, in turn), timed with
# `date +%s%N` around the whole client process:
#
#   baseline  docker run --rm --network none crownest/python-node true
#   cold      crownest --home H run --backend docker tiny.tgz -- true       (local engine)
#   server    crownest --server URL run --backend docker tiny.tgz -- true   (`crownest serve`)
#   pool      the same against a `crownest serve --pool docker:python-node=2`
#
# tiny.tgz = 50 files, ~100 KB of text (as scripts/bench-cli.sh). Prints the median of
# each case, its ratio to the baseline's median (goals: cold <= 1.0x, pool <= 0.5x) and
# the load average before and after, then writes the table between the `bench-docker`
# markers of docs/benchmarks.md and its row in the summary table. Needs Docker and the
# image (`crownest setup docker`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
RUNS=${1:-15}
TARGET=${CARGO_TARGET_DIR:-target}
REPO=$(pwd)

# The binary: $CROWNEST_BIN when set (not built), else built into $CARGO_TARGET_DIR (or
# target/) with the workspace's feature set (`-p crownest-cli` resolves features differently
# and would rebuild the whole tree in a target dir shared with `--workspace` builds).
if [ -z "${CROWNEST_BIN:-}" ]; then
  cargo build --release --workspace --bins
fi
CROWNEST=${CROWNEST_BIN:-$TARGET/release/crownest}
docker image inspect crownest/python-node:latest > /dev/null

WORK=$(mktemp -d)
server_pids=()
cleanup() {
  for p in "${server_pids[@]}"; do
    kill -TERM "$p" 2> /dev/null || true
  done
  for p in "${server_pids[@]}"; do
    wait "$p" 2> /dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
bench_tiny_archive "$WORK"

export CROWNEST_TOKEN=bench-docker-token
# serve NAME POOL-ARGS...: starts a server on a free port, sets URL (not in a subshell:
# the cleanup must see its pid).
serve() {
  local name=$1
  shift
  "$CROWNEST" --home "$WORK/$name" serve --listen 127.0.0.1:0 --backends docker "$@" \
    > "$WORK/$name.log" 2>&1 &
  server_pids+=($!)
  local url=""
  for _ in $(seq 1 200); do
    url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$WORK/$name.log" | head -n1)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] || { cat "$WORK/$name.log" >&2; echo "bench-docker: $name did not start" >&2; exit 1; }
  URL=$url
}
serve server-plain
URL_PLAIN=$URL
serve server-pool --pool docker:python-node=2
URL_POOL=$URL

declare -A CMD
CMD[baseline]="docker run --rm --network none crownest/python-node true"
CMD[cold]="$CROWNEST --home $WORK/local run --backend docker $WORK/tiny.tgz -- true"
CMD[server]="$CROWNEST --server $URL_PLAIN run --backend docker $WORK/tiny.tgz -- true"
CMD[pool]="$CROWNEST --server $URL_POOL run --backend docker $WORK/tiny.tgz -- true"
CASES=(baseline cold server pool)

# One warm-up of each (creates the local store, measures the image's interpreters once).
for c in "${CASES[@]}"; do
  ${CMD[$c]} > /dev/null 2>&1 || { echo "bench-docker: $c failed: ${CMD[$c]}" >&2; exit 1; }
done
sleep 1 # the pool refills

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for _ in $(seq 1 "$RUNS"); do
  for c in "${CASES[@]}"; do
    start=$(date +%s%N)
    ${CMD[$c]} > /dev/null 2>&1 || { echo "bench-docker: $c failed" >&2; exit 1; }
    end=$(date +%s%N)
    echo "$c $(((end - start) / 1000))" >> "$WORK/times"
  done
  sleep 0.3 # lets the pool refill, as between the requests of a real server
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
pool_state=$(curl -fsS "$URL_POOL/metrics" -H "Authorization: Bearer $CROWNEST_TOKEN" \
  | grep '^crownest_sandbox_pool_claims_total' | sed 's/.*result="\([a-z]*\)"} \([0-9]*\)/\1=\2/' | tr '\n' ' ')

python3 - "$WORK/times" "$RUNS" "$load_before" "$load_after" "$pool_state" "$REPO/docs/benchmarks.md" <<'PY'
import re, statistics, sys, datetime
times, runs, before, after, pool_state, doc = sys.argv[1:]
by = {}
for line in open(times):
    case, us = line.split()
    by.setdefault(case, []).append(int(us) / 1000.0)
med = {c: statistics.median(v) for c, v in by.items()}
base = med["baseline"]
labels = {
    "baseline": "`docker run --rm --network none crownest/python-node true`",
    "cold": "`crownest run --backend docker tiny.tgz -- true` (local engine, no pool)",
    "server": "`crownest --server URL run --backend docker tiny.tgz -- true`, server without a pool",
    "pool": "the same, server with `--pool docker:python-node=2`",
}
goals = {"baseline": "", "cold": "<= 1.0x", "server": "", "pool": "<= 0.5x"}
print(f"load average before: {before}; after: {after}; {runs} interleaved rounds; pool claims: {pool_state}")
rows = []
for c in ["baseline", "cold", "server", "pool"]:
    v = sorted(by[c])
    ratio = med[c] / base
    print(f"{c:<9} median {med[c]:7.1f} ms  min {v[0]:7.1f}  max {v[-1]:7.1f}  {ratio:5.2f}x the baseline  {goals[c]}")
    rows.append(f"| {labels[c]} | {med[c]:.0f} ms | {v[0]:.0f}–{v[-1]:.0f} ms | {ratio:.2f}x | {goals[c] or '-'} |")
day = datetime.date.today().isoformat()
block = "\n".join([
    "<!-- bench-docker:begin (written by scripts/bench-docker.sh) -->",
    f"Last run {day}, {runs} interleaved rounds, load average {before} before and {after} after; pool claims {pool_state.strip()}.",
    "",
    "| case | median | min–max | vs `docker run` | goal |",
    "|---|---|---|---|---|",
    *rows,
    "<!-- bench-docker:end -->",
])
text = open(doc).read()
if "<!-- bench-docker:begin" in text:
    text = re.sub(r"<!-- bench-docker:begin.*?<!-- bench-docker:end -->", lambda _: block, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n## Docker runs vs `docker run` (issue 16)\n\n```sh\nscripts/bench-docker.sh [RUNS]\n```\n\n" + block + "\n"
summary = (f"| Docker tiny run, whole process (issue 16) | `scripts/bench-docker.sh` | no pool <= 1.0x, "
           f"pool <= 0.5x `docker run --rm --network none` | **cold {med['cold'] / base:.2f}x, server {med['server'] / base:.2f}x, "
           f"pool {med['pool'] / base:.2f}x** ({med['cold']:.0f} / {med['server']:.0f} / {med['pool']:.0f} ms vs {base:.0f} ms, load {before}) |")
lines = text.split("\n")
idx = [i for i, l in enumerate(lines) if l.startswith("| Docker tiny run, whole process")]
if idx:
    lines[idx[0]] = summary
else:
    # The end of the summary table (the first table, headed `| benchmark |`).
    i = next(i for i, l in enumerate(lines) if l.startswith("| benchmark |"))
    while i + 1 < len(lines) and lines[i + 1].startswith("|"):
        i += 1
    lines.insert(i + 1, summary)
open(doc, "w").write("\n".join(lines))
print(f"updated {doc}")
PY
