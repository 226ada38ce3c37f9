#!/usr/bin/env bash
# The independent evidence verifier (tools/verify-evidence.py, written from docs/evidence.md
# alone) against real runs: with a fresh temp home, runs of every outcome (succeeded with an
# artifact, non-UTF-8 stdout and a non-BMP label key; failed with exit 3; timed out;
# canceled by `crownest cancel` from a second process; host-restarted by `kill -9` of the
# driving `crownest run` and recovered by the next command) on every backend (process,
# wasm, docker: docker skips visibly without an engine/image unless
# CROWNEST_REQUIRE_DOCKER=1), each exported with `crownest export` and verified (it must
# pass, signature required), then tampered copies of each (bundle fields, a dropped or
# swapped event, artifact bytes, a wrong key, an edited stdout chunk, re-chained forgeries),
# which must all be rejected. Prints a summary table; exits non-zero on any unexpected result.
#
# Python: a venv under $CROWNEST_CACHE_DIR/venv-evidence-<sha256 of
# tools/requirements-evidence.txt> (scripts/lib/venv.sh: made once with the machine's
# python3, reused while the file is unchanged).
# CROWNEST_EVIDENCE_KEEP=1 keeps the temp dir (home, exports, tampered copies, reports).
# The CLI: $CROWNEST_BIN, else $CARGO_TARGET_DIR/debug/crownest, else target/debug/crownest;
# built (`cargo build -p crownest-cli`) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
unset CROWNEST_SERVER CROWNEST_TOKEN CROWNEST_HOME

export CROWNEST_CACHE_DIR="${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}"
mkdir -p "$CROWNEST_CACHE_DIR"
target_dir="${CARGO_TARGET_DIR:-target}"
BIN="${CROWNEST_BIN:-$target_dir/debug/crownest}"
if [ ! -x "$BIN" ]; then
  cargo build -q -p crownest-cli
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# --- the venv (scripts/lib/venv.sh) ------------------------------------------------------
. scripts/lib/venv.sh
venv="$(crownest_venv tools/requirements-evidence.txt venv-evidence)"
PY="$venv/bin/python"
VERIFY=(env PYTHONDONTWRITEBYTECODE=1 "$PY" tools/verify-evidence.py)
TAMPER=(env PYTHONDONTWRITEBYTECODE=1 "$PY" tools/evidence-tamper.py)

# --- the WASI modules (scripts/test.sh fetches them first; cached) -----------------------
if ! scripts/fetch-wasm-modules.sh --check >/dev/null 2>&1; then
  scripts/fetch-wasm-modules.sh >/dev/null
fi

work="$(mktemp -d)"
bg_pids=()
cleanup() {
  for p in "${bg_pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  if [ -n "${CROWNEST_EVIDENCE_KEEP:-}" ]; then
    echo "evidence-check: kept $work (runs, exports, tampered copies and reports)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
home="$work/home"
cn() { "$BIN" --home "$home" "$@"; }
failures=0
bad() {
  echo "evidence-check: UNEXPECTED: $*" >&2
  failures=$((failures + 1))
}

# --- the source: the sample repo plus a script for every outcome -------------------------
src="$work/src"
cp -r examples/sample-repo "$src"
cat >"$src/evidence_case.py" <<'EOF'
"""evidence-check: one script for every outcome (ok, fail, sleep)."""
import os
import sys
import time

mode = sys.argv[1]
print(f"case {mode}: hello \u2713 \U0001F600", flush=True)
sys.stderr.write("to stderr\n")
sys.stderr.flush()
if mode == "ok":
    os.makedirs("out", exist_ok=True)
    with open(os.path.join("out", "result.bin"), "wb") as f:
        f.write(bytes(range(256)) * 4)
    sys.stdout.buffer.write(b"raw bytes: \xff\xfe\x80 not UTF-8\n")
    sys.stdout.flush()
    sys.exit(0)
if mode == "fail":
    sys.exit(3)
if mode == "sleep":
    print("sleeping", flush=True)
    time.sleep(120)
EOF

# --- backends ----------------------------------------------------------------------------
backends=(process wasm)
cn doctor --json >"$work/doctor.json" 2>/dev/null || true
docker_ok="$("$PY" - "$work/doctor.json" <<'EOF'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
    ok = any(
        b.get("name") == "docker" and b.get("usable") and any(t.get("available") for t in b.get("templates", []))
        for b in doc.get("backends", [])
    )
except (OSError, ValueError, AttributeError):
    ok = False
print("yes" if ok else "no")
EOF
)"
if [ "$docker_ok" = yes ]; then
  backends+=(docker)
elif [ "${CROWNEST_REQUIRE_DOCKER:-0}" = 1 ]; then
  echo "evidence-check: CROWNEST_REQUIRE_DOCKER=1 but the docker backend is not usable (crownest doctor):" >&2
  cat "$work/doctor.json" >&2
  exit 1
else
  echo "evidence-check: SKIPPING docker: the docker backend is not usable here (no engine or no image; set CROWNEST_REQUIRE_DOCKER=1 to fail instead)"
fi

# --- helpers -----------------------------------------------------------------------------
run_id_of() { # first runId in a --json event log
  "$PY" -c 'import json,sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        print(json.loads(line)["runId"]); break' "$1"
}
wait_for() { # FILE TEXT SECONDS: wait until FILE contains TEXT
  local i
  for i in $(seq 1 $(($3 * 10))); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

rows=()
cases=(command labels template-identity isolation sandbox drop-event swap-events artifact-bytes wrong-key stdout-chunk stdout-rechained bundle-rebound)

# check NAME BACKEND OUTCOME RUN_EXIT EXPECTED_EXIT JSONL
check() {
  local name="$1" backend="$2" outcome="$3" code="$4" want="$5" log="$6"
  local run out verified="no" cnverify="no" rejected=0 applicable=0 na=()
  if [ "$code" != "$want" ]; then bad "$name: crownest run exited $code, expected $want"; fi
  run="$(run_id_of "$log" || true)"
  if [ -z "$run" ]; then
    bad "$name: no run id in $log"
    rows+=("$name|$backend|$outcome|-|no|no|-")
    return
  fi
  out="$work/exports/$name"
  if ! cn export "$run" --out "$out" >"$work/$name.export.log" 2>&1; then
    bad "$name: crownest export failed: $(cat "$work/$name.export.log")"
    rows+=("$name|$backend|$outcome|$run|no|no|-")
    return
  fi
  if grep -rqF not-in-the-record "$out"; then bad "$name: the secret's value is in the export"; fi
  # The outcome is the one asked for.
  if ! "$PY" - "$out/evidence.json" "$outcome" >"$work/$name.outcome" 2>&1 <<'EOF'; then
import json, sys
b = json.load(open(sys.argv[1], encoding="utf-8"))
want = sys.argv[2]
st, code, kind = b.get("status"), b.get("exitCode"), (b.get("failure") or {}).get("kind", "")
ok = {
    "succeeded": st == "succeeded" and code == 0 and b["artifacts"] and "\U0001F600key" in b["source"]["labels"]
    and b.get("secretNames") == ["EVIDENCE_SECRET"] and b.get("env") == {"CI": "true"},
    "failed": st == "failed" and code == 3,
    "timed-out": st == "failed" and kind in ("timeout", "timed_out"),
    "canceled": st == "canceled",
    "host-restarted": st == "failed" and kind == "host_restarted",
}[want]
if want == "succeeded":
    import os
    evs = [json.loads(l) for l in open(os.path.join(os.path.dirname(sys.argv[1]), "events.jsonl"), encoding="utf-8")]
    if not any("dataBase64" in e for e in evs if e["type"] == "stdout"):
        print("no dataBase64 stdout chunk"); ok = False
print(f"status={st} exitCode={code} failure={kind or '-'}")
sys.exit(0 if ok else 1)
EOF
    bad "$name: not the outcome $outcome: $(cat "$work/$name.outcome")"
  fi
  if "${VERIFY[@]}" "$out" --require-signature >"$work/$name.verify" 2>&1; then
    verified="yes"
  else
    bad "$name: the independent verifier rejects an untouched export:"
    sed 's/^/    /' "$work/$name.verify" >&2
  fi
  if cn verify --evidence "$out/evidence.json" --events "$out/events.jsonl" \
    --dsse "$out/evidence.dsse.json" --public-key "$out/host-key.pem" >"$work/$name.cnverify" 2>&1; then
    cnverify="yes"
  else
    bad "$name: crownest verify rejects the export:"
    sed 's/^/    /' "$work/$name.cnverify" >&2
  fi
  local c t args expect rc
  for c in "${cases[@]}"; do
    t="$work/tampered/$name/$c"
    mkdir -p "$(dirname "$t")"
    set +e
    "${TAMPER[@]}" "$out" "$t" "$c" >"$t.args" 2>"$t.why"
    rc=$?
    set -e
    { read -r args; read -r expect; } <"$t.args" || true
    if [ "$rc" = 3 ]; then
      na+=("$c")
      continue
    elif [ "$rc" != 0 ]; then
      bad "$name/$c: tamper tool failed: $(cat "$t.why")"
      continue
    fi
    applicable=$((applicable + 1))
    # shellcheck disable=SC2086 # args is empty or "--public-key FILE"
    set +e
    "${VERIFY[@]}" "$t" $args >"$t.verify" 2>&1
    rc=$?
    set -e
    if [ "$rc" = 0 ]; then
      bad "$name/$c: the verifier ACCEPTED a tampered export"
    elif [ "$rc" != 1 ]; then
      bad "$name/$c: the verifier exited neither 0 nor 1: $(cat "$t.verify")"
    elif ! grep -qF -- "$expect" "$t.verify"; then
      bad "$name/$c: rejected, but the report does not name '$expect':"
      sed 's/^/    /' "$t.verify" >&2
    else
      rejected=$((rejected + 1))
    fi
  done
  local natext=""
  if [ "${#na[@]}" -gt 0 ]; then natext=" (n/a: ${na[*]})"; fi
  rows+=("$name|$backend|$outcome|$run|$verified|$cnverify|$rejected/$applicable$natext")
}

# --- the runs ----------------------------------------------------------------------------
mkdir -p "$work/logs"
for b in "${backends[@]}"; do
  echo "evidence-check: runs on $b"
  L="$work/logs"

  set +e
  EVIDENCE_SECRET=not-in-the-record cn run "$src" --backend "$b" --json --artifact out/result.bin \
    --env CI=true --secret EVIDENCE_SECRET --label '😀key=v' --label 'plain=1' -- python3 evidence_case.py ok >"$L/$b-ok.jsonl" 2>"$L/$b-ok.err"
  code=$?
  set -e
  check "$b-succeeded" "$b" succeeded "$code" 0 "$L/$b-ok.jsonl"

  set +e
  cn run "$src" --backend "$b" --json -- python3 evidence_case.py fail >"$L/$b-fail.jsonl" 2>"$L/$b-fail.err"
  code=$?
  set -e
  check "$b-failed" "$b" failed "$code" 1 "$L/$b-fail.jsonl"

  set +e
  cn run "$src" --backend "$b" --json --timeout 1s -- python3 evidence_case.py sleep >"$L/$b-timeout.jsonl" 2>"$L/$b-timeout.err"
  code=$?
  set -e
  check "$b-timed-out" "$b" timed-out "$code" 1 "$L/$b-timeout.jsonl"

  # canceled: `crownest cancel` from a second process while the command sleeps
  "$BIN" --home "$home" run "$src" --backend "$b" --json -- python3 evidence_case.py sleep \
    >"$L/$b-cancel.jsonl" 2>"$L/$b-cancel.err" &
  pid=$!
  bg_pids+=("$pid")
  if wait_for "$L/$b-cancel.jsonl" sleeping 60; then
    run="$(run_id_of "$L/$b-cancel.jsonl")"
    cn cancel "$run" >"$L/$b-cancel.cancel" 2>&1 || bad "$b-canceled: crownest cancel $run failed: $(cat "$L/$b-cancel.cancel")"
  else
    bad "$b-canceled: the command never started: $(cat "$L/$b-cancel.err")"
    kill -TERM "$pid" 2>/dev/null || true
  fi
  set +e
  wait "$pid"
  code=$?
  set -e
  check "$b-canceled" "$b" canceled "$code" 130 "$L/$b-cancel.jsonl"

  # host-restarted: kill -9 the driving `crownest run` while the command sleeps; the next
  # command that opens the home recovers the run
  "$BIN" --home "$home" run "$src" --backend "$b" --json -- python3 evidence_case.py sleep \
    >"$L/$b-restart.jsonl" 2>"$L/$b-restart.err" &
  pid=$!
  bg_pids+=("$pid")
  if ! wait_for "$L/$b-restart.jsonl" sleeping 60; then
    bad "$b-host-restarted: the command never started: $(cat "$L/$b-restart.err")"
  fi
  set +e
  { kill -KILL "$pid"; wait "$pid"; } 2>/dev/null
  code=$?
  set -e
  cn runs >"$L/$b-restart.runs" 2>&1 || bad "$b-host-restarted: crownest runs failed"
  check "$b-host-restarted" "$b" host-restarted "$code" 137 "$L/$b-restart.jsonl"
done

# --- the table ---------------------------------------------------------------------------
echo
printf '%-22s %-8s %-15s %-36s %-9s %-16s %s\n' run backend outcome "run id" verified "crownest verify" "tamper cases rejected"
for r in "${rows[@]}"; do
  IFS='|' read -r n be oc id v cv tr <<<"$r"
  printf '%-22s %-8s %-15s %-36s %-9s %-16s %s\n' "$n" "$be" "$oc" "$id" "$v" "$cv" "$tr"
done
echo
if [ "$failures" -gt 0 ]; then
  echo "evidence-check: FAILED: $failures unexpected result(s) (above)" >&2
  exit 1
fi
skipped=""
if [ "$docker_ok" != yes ]; then skipped=" (docker SKIPPED: not usable here)"; fi
echo "evidence-check: ok: ${#rows[@]} runs on ${backends[*]} verified, every tampered copy rejected$skipped"
