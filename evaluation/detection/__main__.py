"""``python -m evaluation.detection ARGS`` is ``selfsup-eval detect ARGS`` (:mod:`evaluation.cli`)."""

import sys

from evaluation.cli import main

sys.exit(main(["detect", *sys.argv[1:]]))
