#!/usr/bin/env bash
# The whole test suite: prepares what the tests need (the Docker image, the WASI modules),
# then checks formatting, lints, docs, and runs every test of the workspace.
#
# Caches (content-keyed, outside the clone, safe to delete):
#   $CROWNEST_CACHE_DIR (default ~/.cache/crownest): images/, wasm/ modules and compiled
#   modules, and target/ (CARGO_TARGET_DIR) unless CARGO_TARGET_DIR is already set.
# Set CROWNEST_REQUIRE_DOCKER=1 to make Docker tests fail (not skip) without an engine/image.
# PostgreSQL: a private server is started for the run (scripts/postgres.sh, installed from
# Debian's packages when missing) and stopped at exit, unless CROWNEST_POSTGRES_URL is set.
# Set CROWNEST_REQUIRE_POSTGRES=1 to make PostgreSQL tests fail (not skip) without a server.
set -euo pipefail
cd "$(dirname "$0")/.."

export CROWNEST_CACHE_DIR="${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CROWNEST_CACHE_DIR/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CROWNEST_CACHE_DIR"

step() { printf '\n=== %s (%ss)\n' "$1" "$SECONDS"; }

step "wasm modules"
scripts/fetch-wasm-modules.sh

step "docker image"
if docker info >/dev/null 2>&1; then
  scripts/build-docker-image.sh
elif [ "${CROWNEST_REQUIRE_DOCKER:-0}" = 1 ]; then
  echo "CROWNEST_REQUIRE_DOCKER=1 but the Docker engine is not reachable" >&2
  exit 1
else
  echo "no Docker engine: Docker tests will skip (set CROWNEST_REQUIRE_DOCKER=1 to fail instead)"
fi

step "fmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cloud blob backends compile (crownest-store-postgres features s3, gcp, azure)"
cargo clippy --workspace --features crownest-store-postgres/s3,crownest-store-postgres/gcp,crownest-store-postgres/azure -- -D warnings

step "postgres"
if [ -n "${CROWNEST_POSTGRES_URL:-}" ]; then
  echo "using the server of CROWNEST_POSTGRES_URL"
else
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/crownest-pg.XXXXXX")"
  trap 'scripts/postgres.sh stop "$PG_DIR"' EXIT
  if url="$(scripts/postgres.sh start "$PG_DIR")"; then
    export CROWNEST_POSTGRES_URL="$url"
  elif [ "${CROWNEST_REQUIRE_POSTGRES:-0}" = 1 ]; then
    echo "CROWNEST_REQUIRE_POSTGRES=1 but PostgreSQL could not be started" >&2
    exit 1
  else
    echo "no PostgreSQL: PostgreSQL tests will skip (set CROWNEST_REQUIRE_POSTGRES=1 to fail instead)"
  fi
fi

step "tests"
cargo test --workspace --all-targets "$@"

step "curl walk-through (crownest serve)"
scripts/curl-walkthrough.sh

step "API contract (openapi-spec-validator, schemathesis, generated Python client)"
scripts/api-contract.sh

step "independent evidence verifier"
scripts/evidence-check.sh

step "doctests"
cargo test --workspace --doc

step "extractor fuzz (bounded)"
CROWNEST_FUZZ_CASES="${CROWNEST_FUZZ_CASES:-4000}" cargo test -p crownest-core --release --test archive_fuzz

step "done"
