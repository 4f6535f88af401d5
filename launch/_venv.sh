# Sourced by launch/quickstart.sh and launch/test.sh: make .venv (if missing) and install the project into it.
# Torch comes from this machine's local wheels when they are there (pyproject caps torch at 2.14.1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install (a fresh clone always installs).
STAMP=.venv/.selfsup-installed
if [ ! -f "$STAMP" ] || ! cmp -s pyproject.toml "$STAMP"; then
  echo "== installing selfsup into .venv (pip install -e '.[dev]')"
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import selfsup, timm, lightly, accelerate, webdataset" 
  cp pyproject.toml "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
