"""``python -m evaluation.detection``: see :mod:`evaluation.detection.cli`."""

import sys

from evaluation.detection.cli import main

sys.exit(main())
