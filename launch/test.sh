#!/usr/bin/env bash
# The test suite, exactly as CI runs it: set up .venv, lint (ruff, configured in pyproject.toml), then pytest.
# Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep instead of spinning beside data workers
ruff check .
python -m pytest tests -q "$@"
