"""Run under `accelerate launch` with 2 processes: pretrain through selfsup's loop and count DDP's gradient
all-reduces (one comm-hook call per gradient bucket per synchronised backward) into OUT/allreduce_<rank>.json.

Usage: count_allreduce.py OUT CONFIG [key=value ...]
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from selfsup.config import load_config
from selfsup.train.loop import pretrain

calls = 0


def counting_allreduce(process_group, bucket):
    global calls
    calls += 1
    return default_hooks.allreduce_hook(process_group, bucket)


def main(out: str, config: str, *overrides: str) -> None:
    cfg = load_config(config, list(overrides))
    original_prepare = Accelerator.prepare

    def prepare(self, *args, **kwargs):
        prepared = original_prepare(self, *args, **kwargs)
        for obj in prepared if isinstance(prepared, tuple) else (prepared,):
            if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
                obj.register_comm_hook(None, counting_allreduce)
        return prepared

    Accelerator.prepare = prepare
    summary = pretrain(cfg)
    Path(out, f"allreduce_{summary['process_index']}.json").write_text(
        json.dumps({"calls": calls, "steps": summary["steps"]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
