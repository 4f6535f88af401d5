"""Run under `accelerate launch` with 2 processes: check_shared_run_dir on one folder for both processes, then
on a folder per process (what nodes without a shared filesystem would see). Writes OUT/shared_<rank>.json."""

import json
import sys
from pathlib import Path

from accelerate import Accelerator

from selfsup.errors import ConfigError
from selfsup.train.checkpoint import check_shared_run_dir


def main(out: str) -> None:
    acc = Accelerator(cpu=True)
    result = {}
    check_shared_run_dir(acc, Path(out, "shared"))
    result["shared_ok"] = True
    result["marker_left"] = Path(out, "shared", ".shared-check").exists()
    try:
        check_shared_run_dir(acc, Path(out, f"node{acc.process_index}"))
        result["split_error"] = None
    except ConfigError as e:
        result["split_error"] = str(e)
    Path(out, f"shared_{acc.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
