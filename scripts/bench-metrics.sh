#!/usr/bin/env bash
# /metrics scrape time (issue 15): a `crownest serve` over a fresh home is filled with N runs
# (default 10000) through the API (POST /v1/runs; a tenth of them canceled, so two statuses
# hold runs), then GET /metrics is timed S times (default 50) on one keep-alive connection:
# median, p90 and max, and the scrape's size. A scrape reads no store, so the time should
# not depend on N (compare N=100 with N=10000).
#
# Usage: scripts/bench-metrics.sh [N] [S]
#   CROWNEST_BIN=path/to/crownest to use a built binary; else it is built (release, without
#   the docker and wasm backends, which the scrape does not touch).
set -euo pipefail

N=${1:-10000}
SCRAPES=${2:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -z "${CROWNEST_BIN:-}" ]; then
  cargo build --release --quiet -p crownest-cli --no-default-features
  CROWNEST_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/crownest"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/crownest-bench-metrics.XXXXXX")
LOG="$WORK/serve.log"
cleanup() {
  if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

TOKEN=bench-metrics-token
: >"$LOG"
CROWNEST_TOKEN=$TOKEN RUST_LOG=warn "$CROWNEST_BIN" --home "$WORK/home" serve \
  --listen 127.0.0.1:0 --backends process 2>"$LOG" &
PID=$!
for _ in $(seq 1 600); do
  ADDR=$(sed -n 's/^listening on http:\/\///p' "$LOG" | head -n1 || true)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "${ADDR:-}" ] || { cat "$LOG" >&2; echo "serve did not start" >&2; exit 1; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$ADDR" "$TOKEN" "$N" "$SCRAPES" <<'EOF'
import http.client, json, statistics, sys, threading, time

addr, token, n, scrapes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

def fill(lo, hi):
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    for i in range(lo, hi):
        body = json.dumps({"command": ["true"], "backend": "process", "labels": {"bench": str(i)}})
        c.request("POST", "/v1/runs", body, auth)
        r = c.getresponse(); data = r.read()
        assert r.status == 201, (r.status, data)
        if i % 10 == 0:
            rid = json.loads(data)["id"]
            c.request("POST", f"/v1/runs/{rid}/cancel", "", auth)
            r = c.getresponse(); r.read()
            assert r.status == 200, r.status

t0 = time.monotonic()
workers = 4
threads = [threading.Thread(target=fill, args=(w * n // workers, (w + 1) * n // workers)) for w in range(workers)]
for t in threads: t.start()
for t in threads: t.join()
print(f"filled {n} runs in {time.monotonic() - t0:.1f} s")

c = http.client.HTTPConnection(host, int(port), timeout=60)
times, size = [], 0
for _ in range(scrapes):
    t = time.perf_counter()
    c.request("GET", "/metrics", headers=auth)
    r = c.getresponse(); body = r.read()
    times.append((time.perf_counter() - t) * 1000)
    assert r.status == 200, r.status
    size = len(body)
text = body.decode()
runs = [l for l in text.splitlines() if l.startswith("crownest_runs{")]
times.sort()
print("runs in the store: " + ", ".join(l.split("{", 1)[1] for l in runs if not l.endswith(" 0")))
print(f"GET /metrics x{scrapes}: median {statistics.median(times):.2f} ms, "
      f"p90 {times[int(len(times) * 0.9) - 1]:.2f} ms, max {times[-1]:.2f} ms ({size} bytes)")
EOF
