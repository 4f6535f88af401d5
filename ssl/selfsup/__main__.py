"""``python -m selfsup ...`` and ``accelerate launch -m selfsup pretrain ...``."""

import sys

from selfsup.cli import main

sys.exit(main())
