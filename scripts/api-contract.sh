#!/usr/bin/env bash
# The API contract against a live server: starts `crownest serve` (temp home, a token with
# every scope, the process backend offered), fetches the OpenAPI document it serves
# (generated from the code; docs/openapi.json is the committed copy), then
#   1. validates it with openapi-spec-validator;
#   2. fuzzes the server with schemathesis (every check, tools/api/schemathesis.toml) and
#      requires zero failures, printing its summary line;
#   3. generates a Python client with openapi-python-client and runs
#      tools/api/staged_upload.py with it: a run created, its archive sent as a staged
#      transfer in chunks with their digests, completed, started, followed to its end, and
#      its evidence read and checked.
# Exits non-zero on any failure; always stops the server.
#
# Python: a venv under $CROWNEST_CACHE_DIR/api-venv-<sha256 of tools/api/requirements.txt>
# (scripts/lib/venv.sh). The CLI: $CROWNEST_BIN, else $CARGO_TARGET_DIR/debug/crownest, else
# target/debug/crownest; built (`cargo build -p crownest-cli`) when missing.
# CROWNEST_API_EXAMPLES (default 40) bounds schemathesis' examples per operation and
# CROWNEST_API_MAX_TIME (default 150) its seconds; CROWNEST_API_KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
unset CROWNEST_SERVER CROWNEST_HOME

export CROWNEST_CACHE_DIR="${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}"
mkdir -p "$CROWNEST_CACHE_DIR"
target_dir="${CARGO_TARGET_DIR:-target}"
BIN="${CROWNEST_BIN:-$target_dir/debug/crownest}"
if [ ! -x "$BIN" ]; then
  cargo build -q -p crownest-cli
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

. scripts/lib/venv.sh
venv="$(crownest_venv tools/api/requirements.txt api-venv)"
export PATH="$venv/bin:$PATH"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "${CROWNEST_API_KEEP:-}" ]; then
    echo "api-contract: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
fail() {
  echo "api-contract: FAILED: $*" >&2
  if [ -f "$work/serve.log" ]; then tail -n 40 "$work/serve.log" | sed 's/^/  serve: /' >&2; fi
  exit 1
}

TOKEN="api-contract-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
env CROWNEST_TOKEN="$TOKEN" "$BIN" --home "$work/home" \
  serve --listen 127.0.0.1:0 --backends process 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 1 300); do
  grep -q '^listening on ' "$work/serve.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || fail "crownest serve exited"
  sleep 0.1
done
BASE="$(sed -n 's/^listening on //p' "$work/serve.log" | head -n1)"
[ -n "$BASE" ] || fail "crownest serve printed no address"
echo "api-contract: server $BASE"

curl -fsS "$BASE/v1/openapi.json" -H "Authorization: Bearer $TOKEN" -o "$work/openapi.json" \
  || fail "GET /v1/openapi.json"
cmp -s "$work/openapi.json" docs/openapi.json \
  || fail "the served document differs from docs/openapi.json (regenerate: CROWNEST_UPDATE_OPENAPI=1 cargo test -p crownest-http --test openapi)"

echo "api-contract: 1. openapi-spec-validator"
openapi-spec-validator "$work/openapi.json" || fail "openapi-spec-validator"

echo "api-contract: 2. schemathesis"
set +e
(cd "$work" && schemathesis --no-color --config-file "$OLDPWD/tools/api/schemathesis.toml" run "$work/openapi.json" \
  --url "$BASE" -H "Authorization: Bearer $TOKEN" \
  --max-examples "${CROWNEST_API_EXAMPLES:-40}" --max-time "${CROWNEST_API_MAX_TIME:-150}" \
  --seed 1 --workers 2) >"$work/schemathesis.log" 2>&1
st=$?
set -e
cat "$work/schemathesis.log"
summary="$(grep -E '^=+ .* =+$' "$work/schemathesis.log" | tail -n1 | tr -s '=' | sed 's/^= //; s/ =$//' || true)"
cases="$(grep -A1 -E '^Test cases:' "$work/schemathesis.log" | tail -n1 | sed 's/^ *//' || true)"
summary="schemathesis: ${cases:-?}; ${summary:-no summary line}"
echo "api-contract: $summary"
[ "$st" = 0 ] || fail "schemathesis exited $st"
kill -0 "$server_pid" 2>/dev/null || fail "the server died under the fuzz"

echo "api-contract: 3. openapi-python-client + tools/api/staged_upload.py"
(cd "$work" && openapi-python-client generate --path "$work/openapi.json" \
  --config "$OLDPWD/tools/api/client-config.yaml" --output-path "$work/client/crownest_api" --meta none) \
  >"$work/generate.log" 2>&1 || { cat "$work/generate.log"; fail "openapi-python-client generate"; }
PYTHONPATH="$work/client" PYTHONDONTWRITEBYTECODE=1 python tools/api/staged_upload.py \
  --base "$BASE" --token "$TOKEN" || fail "tools/api/staged_upload.py"

kill -TERM "$server_pid"
wait "$server_pid" || fail "crownest serve exited with $?"
server_pid=""
echo "api-contract: ok ($summary)"
