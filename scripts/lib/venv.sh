# Sourced by the scripts that need Python packages from PyPI (evidence-check.sh,
# api-contract.sh): one venv per pinned requirements file, under $CROWNEST_CACHE_DIR, named
# by the file's sha256, made once with the machine's python3 and reused while the file is
# unchanged (safe to delete: it is made again).
#
#   venv="$(crownest_venv tools/api/requirements.txt api-venv)"   # -> .../api-venv-<sha256>

crownest_venv() {
  local req="$1" name="$2" venv
  venv="${CROWNEST_CACHE_DIR:?CROWNEST_CACHE_DIR is not set}/$name-$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -f "$venv/.complete" ]; then
    echo "making $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
    touch "$venv/.complete"
  fi
  printf '%s\n' "$venv"
}
