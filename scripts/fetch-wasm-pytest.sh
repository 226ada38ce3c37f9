#!/usr/bin/env bash
# Fetch pytest and its pure-Python dependencies for the wasm backend's pytest test
# (crownest-backend-wasm/tests/pytest.rs), verify them against the pins below and
# unpack them into one site-packages style directory.
#
#   scripts/fetch-wasm-pytest.sh [--force] [--check] [--help]
#
# Each wheel comes from PyPI by name and pinned version:
# `pip download --no-deps --only-binary=:all:` (never installed, no sdist built),
# checked against the pinned size and sha256 and kept in
# ${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}/wasm/wheels/<file>.
# The wheels are then unpacked (python3 zipfile; members with absolute or '..'
# paths, and wheels with a .data directory, are refused) into
#   $CACHE/wasm/python-packages/pytest-<version>-<key>/
# where <key> is derived from the pins (file names and sha256s), so other pins
# give another directory. The directory is built under a temporary name and
# renamed into place complete. Its path is printed on stdout (one line).
#
# scripts/fetch-wasm-modules.sh runs this script (with its --force/--check), so
# scripts/test.sh prepares the packages before the tests.
#
#   --force   re-download and re-unpack everything
#   --check   verify the cache only (no network); exit 1 if anything is
#             missing or wrong (wrong wheels are deleted)
#
# Environment: CROWNEST_CACHE_DIR, PYTHON (default python3); pip honours its
# usual variables (PIP_INDEX_URL, ...).
set -euo pipefail

# ------------------------------------------------------------ pins
# requirement  file  size-bytes  sha256
# pytest 9.2.0 requires (on CPython 3.12, not Windows) iniconfig>=2, packaging>=24,
# pluggy>=1.6,<2 and pygments>=2.15 (colorama is Windows-only; exceptiongroup and
# tomli are for Python < 3.11).
PINS=(
    "pytest==9.2.0     pytest-9.2.0-py3-none-any.whl     411776  07acdcf88ec174f907dc01af70bf52d49b014bbab03faeeade31c96b18c2e588"
    "pluggy==1.7.0     pluggy-1.7.0-py3-none-any.whl     27082   7dd7b0d8832ba3cb632c306926ded123429211b83641b35dc5c41ad2d34f9bec"
    "iniconfig==2.3.1  iniconfig-2.3.1-py3-none-any.whl  7552    9121e2c1fdb355232495be3194c8dfe87ccc2d5dee45947b78e68f499790d7a7"
    "packaging==26.4   packaging-26.4-py3-none-any.whl   140049  81383611a09c1bc0b08b76e0fd5829d7c6824c65b27a6aee339da133f4233ea2"
    "pygments==2.21.0  pygments-2.21.0-py3-none-any.whl  1250147 2363c69b61c4a97c838da3b130dcd6468f4848992b21a82f2a63ec34377137d9"
)
PYTEST_VERSION=9.2.0

SCRIPT_PATH="$(readlink -f -- "${BASH_SOURCE[0]}")"
CACHE_ROOT="${CROWNEST_CACHE_DIR:-${HOME:-/root}/.cache/crownest}"
WASM_DIR="$CACHE_ROOT/wasm"
WHEEL_DIR="$WASM_DIR/wheels"
PYTHON="${PYTHON:-python3}"

FORCE=0
CHECK_ONLY=0

log() { printf '[fetch-wasm-pytest] %s\n' "$*" >&2; }
die() { printf '[fetch-wasm-pytest] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SCRIPT_PATH"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --force|-f) FORCE=1 ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done

command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found"

REQS=(); FILES=(); SIZES=(); SHAS=()
for pin in "${PINS[@]}"; do
    # shellcheck disable=SC2086
    set -- $pin
    [ $# -eq 4 ] || die "bad pin '$pin'"
    [[ "$1" == *==* ]] || die "pin '$1' must pin a version with =="
    [[ "$2" =~ ^[A-Za-z0-9._-]+\.whl$ ]] || die "bad wheel name '$2'"
    [[ "$3" =~ ^[0-9]+$ ]] || die "bad size '$3'"
    [[ "$4" =~ ^[0-9a-f]{64}$ ]] || die "bad sha256 '$4'"
    REQS+=("$1"); FILES+=("$2"); SIZES+=("$3"); SHAS+=("$4")
done

KEY="$(for i in "${!FILES[@]}"; do printf '%s %s\n' "${FILES[$i]}" "${SHAS[$i]}"; done |
       sha256sum | cut -c1-16)"
FINAL="$WASM_DIR/python-packages/pytest-$PYTEST_VERSION-$KEY"

# verify_wheel i -> 0 ok, 1 missing, 2 mismatch (file deleted)
verify_wheel() {
    local i="$1" path size sha
    path="$WHEEL_DIR/${FILES[$i]}"
    [ -f "$path" ] || return 1
    size="$(stat -c %s -- "$path")"
    if [ "$size" = "${SIZES[$i]}" ]; then
        sha="$(sha256sum -- "$path" | cut -d' ' -f1)"
        [ "$sha" = "${SHAS[$i]}" ] && return 0
    else
        sha="(not hashed)"
    fi
    log "cached $path is wrong: size $size sha256 $sha, expected size ${SIZES[$i]} sha256 ${SHAS[$i]}; deleting it"
    rm -f -- "$path"
    return 2
}

all_ok() {
    local i ok=0
    for i in "${!FILES[@]}"; do verify_wheel "$i" || ok=1; done
    [ -d "$FINAL" ] || ok=1
    return $ok
}

if [ "$FORCE" = 0 ] && all_ok; then
    log "up to date (${#FILES[@]} wheels verified): $FINAL"
    printf '%s\n' "$FINAL"
    exit 0
fi

if [ "$CHECK_ONLY" = 1 ]; then
    for i in "${!FILES[@]}"; do
        [ -f "$WHEEL_DIR/${FILES[$i]}" ] || log "missing: $WHEEL_DIR/${FILES[$i]}"
    done
    [ -d "$FINAL" ] || log "missing: $FINAL"
    die "pytest packages incomplete; run scripts/fetch-wasm-pytest.sh"
fi

# ------------------------------------------------------------ fetch
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    PIP=("$PYTHON" -m pip)
elif command -v pip3 >/dev/null 2>&1; then
    PIP=(pip3)
elif command -v pip >/dev/null 2>&1; then
    PIP=(pip)
else
    die "pip not found (need '$PYTHON -m pip', pip3 or pip)"
fi

mkdir -p "$WHEEL_DIR" "$WASM_DIR/python-packages"
# Not fetch-wasm-modules.sh's lock file: that script holds it while it runs this one.
exec 9>"$WASM_DIR/.pytest.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if [ "$FORCE" = 0 ] && all_ok; then
        log "up to date (fetched concurrently): $FINAL"
        printf '%s\n' "$FINAL"
        exit 0
    fi
fi

TMP_DIR="$(mktemp -d "$WASM_DIR/.fetch-pytest.XXXXXX")"
trap 'rm -rf -- "$TMP_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in "${!FILES[@]}"; do
    file="${FILES[$i]}"; req="${REQS[$i]}"
    if [ "$FORCE" = 0 ] && verify_wheel "$i"; then
        continue
    fi
    dl="$TMP_DIR/dl-$i"
    mkdir -p "$dl"
    log "pip download --no-deps $req"
    "${PIP[@]}" download --no-deps --only-binary=:all: --disable-pip-version-check \
        --no-input --quiet --dest "$dl" "$req" >&2 || die "pip download $req failed"
    [ -f "$dl/$file" ] || die "$req: pip did not download $file (got: $(ls -- "$dl"))"
    mv -f -- "$dl/$file" "$WHEEL_DIR/$file"
    verify_wheel "$i" || die "$req: $file does not match the pinned size/sha256 (deleted)"
    log "$req: $WHEEL_DIR/$file verified (${SIZES[$i]} bytes, sha256 ${SHAS[$i]:0:16}...)"
done

# ------------------------------------------------------------ unpack
cat > "$TMP_DIR/unpack.py" <<'PY'
import os, sys, zipfile

out = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = name.split("/")
            if name.startswith("/") or "\\" in name or ".." in parts:
                sys.exit("%s: refusing member %r" % (os.path.basename(wheel), name))
            if parts[0].endswith(".data"):
                sys.exit("%s: has a .data directory (%r); only plain wheels are unpacked"
                         % (os.path.basename(wheel), name))
            if name.endswith("/"):
                continue
            dest = os.path.join(out, *parts)
            if os.path.exists(dest):
                sys.exit("%s: %r is also in another wheel" % (os.path.basename(wheel), name))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                dst.write(src.read())
PY

stage="$TMP_DIR/unpacked"
mkdir -p "$stage"
wheels=()
for i in "${!FILES[@]}"; do wheels+=("$WHEEL_DIR/${FILES[$i]}"); done
"$PYTHON" "$TMP_DIR/unpack.py" "$stage" "${wheels[@]}" || die "unpacking the wheels failed"
chmod -R u=rwX,go=rX "$stage"
if [ -e "$FINAL" ]; then
    mv -- "$FINAL" "$TMP_DIR/old"
fi
mv -T -- "$stage" "$FINAL"
log "unpacked ${#FILES[@]} wheels into $FINAL"
printf '%s\n' "$FINAL"
