#!/usr/bin/env bash
# The HTTP API with nothing but curl (docs/http.md shows the same steps): starts
# `crownest serve` on 127.0.0.1 with a temp home and a fixed token, then creates a run,
# uploads examples/sample-repo packed with tar, starts it, follows the SSE stream with
# `curl -N` until it closes, and fetches the evidence and the artifact, checking each answer
# with python3. Exits non-zero on any failure; always stops the server.
#
# Uses the debug binary: $CROWNEST_BIN, else $CARGO_TARGET_DIR/debug/crownest, else
# target/debug/crownest; builds it (`cargo build -p crownest-cli`) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
BIN="${CROWNEST_BIN:-$target_dir/debug/crownest}"
if [ ! -x "$BIN" ]; then
  cargo build -q -p crownest-cli
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "curl-walkthrough: FAILED: $*" >&2
  if [ -f "$work/serve.log" ]; then sed 's/^/  serve: /' "$work/serve.log" >&2; fi
  exit 1
}

export TOKEN="walkthrough-token"
# The token through the environment (argv is visible to every user); the process backend
# named explicitly (a server offers host processes only when told to).
env -u CROWNEST_SERVER CROWNEST_TOKEN="$TOKEN" "$BIN" --home "$work/home" \
  serve --listen 127.0.0.1:0 --backends process 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 1 300); do
  grep -q '^listening on ' "$work/serve.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || fail "crownest serve exited"
  sleep 0.1
done
BASE="$(sed -n 's/^listening on //p' "$work/serve.log" | head -n1)"
[ -n "$BASE" ] || fail "crownest serve printed no address"
echo "server: $BASE"

# check FILE PYTHON-EXPRESSION: evaluates the expression with `d` = the JSON in FILE.
check() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert eval(sys.argv[2]), (sys.argv[2], d)' "$1" "$2" \
    || fail "check $2 on $(cat "$1")"
}

AUTH="Authorization: Bearer $TOKEN"
curl -fsS "$BASE/healthz" >/dev/null || fail "healthz"
code="$(curl -sS -o /dev/null -w '%{http_code}' "$BASE/v1/runs")"
[ "$code" = 401 ] || fail "no token: expected 401, got $code"

# 1. Create a run.
curl -fsS -X POST "$BASE/v1/runs" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"command": ["python3", "main.py"], "artifacts": [{"path": "out/result.json", "required": true}]}' \
  -o "$work/run.json" || fail "create run"
check "$work/run.json" 'd["status"] == "awaiting_archive"'
RUN="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/run.json")"
echo "run: $RUN"

# 2. Upload the archive (direct upload: sha256 header, Content-Length from the body).
tar -czf "$work/src.tar.gz" -C examples/sample-repo .
SHA="$(sha256sum "$work/src.tar.gz" | cut -d' ' -f1)"
curl -fsS -X PUT "$BASE/v1/runs/$RUN/archive" -H "$AUTH" -H "X-Archive-Sha256: $SHA" \
  --data-binary @"$work/src.tar.gz" -o "$work/uploaded.json" || fail "upload"
check "$work/uploaded.json" 'd["status"] == "archive_ready"'

# 3. Start it.
curl -fsS -X POST "$BASE/v1/runs/$RUN/start" -H "$AUTH" -o "$work/started.json" || fail "start"

# 4. Follow the events over SSE until the server closes the stream after `terminal`.
curl -fsS -N --max-time 120 "$BASE/v1/runs/$RUN/events/stream" -H "$AUTH" >"$work/events.sse" \
  || fail "SSE stream"
python3 - "$work/events.sse" <<'EOF' || fail "SSE events"
import json, sys
events = [json.loads(line[5:]) for line in open(sys.argv[1]) if line.startswith("data:")]
seqs = [e["seq"] for e in events]
assert seqs == list(range(1, len(seqs) + 1)), seqs
assert events[-1]["type"] == "terminal" and events[-1]["status"] == "succeeded", events[-1]
out = "".join(e.get("data", "") for e in events if e["type"] == "stdout")
assert "read 8 numbers, sum 31" in out, out
print(f"events: {len(events)}, ends {events[-1]['status']}")
EOF

# 5. The Evidence Bundle, then the artifact's bytes (checked against the bundle's sha256).
curl -fsS "$BASE/v1/runs/$RUN/evidence" -H "$AUTH" -o "$work/evidence.json" || fail "evidence"
check "$work/evidence.json" 'd["status"] == "succeeded" and d["source"]["sha256"] == "'"$SHA"'"'
check "$work/evidence.json" 'd["artifacts"][0]["path"] == "out/result.json"'
ART="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["artifacts"][0]["artifactId"])' "$work/evidence.json")"
curl -fsS "$BASE/v1/artifacts/$ART" -H "$AUTH" -o "$work/result.json" || fail "artifact"
check "$work/result.json" 'd["sum"] == 31'
ART_SHA="$(sha256sum "$work/result.json" | cut -d' ' -f1)"
check "$work/evidence.json" 'd["artifacts"][0]["sha256"] == "'"$ART_SHA"'"'

# 6. The same record signed: the server's host key, the in-toto statement in a DSSE
#    envelope, checked offline by `crownest verify --dsse` against that public key and the
#    bundle fetched above (so the signature covers exactly that bundle).
curl -fsS "$BASE/v1/host-key" -H "$AUTH" -o "$work/host-key.json" || fail "host key"
PUB="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["publicKey"])' "$work/host-key.json")"
curl -fsS "$BASE/v1/runs/$RUN/evidence?format=dsse" -H "$AUTH" -o "$work/envelope.json" || fail "dsse"
check "$work/envelope.json" 'd["payloadType"] == "application/vnd.in-toto+json" and len(d["signatures"]) == 1'
curl -fsS "$BASE/v1/runs/$RUN/events?limit=1000" -H "$AUTH" -o "$work/window.json" || fail "events"
python3 -c 'import json,sys; [print(json.dumps(e)) for e in json.load(open(sys.argv[1]))["events"]]' \
  "$work/window.json" >"$work/events.jsonl"
env -u CROWNEST_SERVER -u CROWNEST_TOKEN "$BIN" --home "$work/verifier" verify \
  --evidence "$work/evidence.json" --events "$work/events.jsonl" \
  --dsse "$work/envelope.json" --public-key "$PUB" || fail "verify --dsse"

# 7. Stop the server (SIGTERM: graceful).
kill -TERM "$server_pid"
wait "$server_pid" || fail "crownest serve exited with $?"
server_pid=""
echo "curl-walkthrough: ok"
