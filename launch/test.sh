#!/usr/bin/env bash
# The test suite, exactly as CI runs it: set up .venv, then pytest. Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest tests -q "$@"
