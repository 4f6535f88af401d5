#!/usr/bin/env bash
# The test suite, exactly as CI runs it: set up .venv, then pytest. Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep instead of spinning beside data workers
python -m pytest tests -q "$@"
