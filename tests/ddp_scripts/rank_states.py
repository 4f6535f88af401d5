"""Run under `accelerate launch` with 2 processes: pretrain through selfsup's loop and, at every checkpoint,
also write each process's own full method state to OUT/rank<r>_step<s>.safetensors (the checkpoint itself
holds the main process's copy only).

Usage: rank_states.py OUT CONFIG [key=value ...]
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

import selfsup.train.loop as loop
from selfsup.config import load_config


def main(out: str, config: str, *overrides: str) -> None:
    original = loop.save_checkpoint

    def save_checkpoint(accelerator, run_dir, step, *args, model=None, **kwargs):
        state = accelerator.unwrap_model(model).state_dict()
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()},
                  str(Path(out, f"rank{accelerator.process_index}_step{step}.safetensors")))
        return original(accelerator, run_dir, step, *args, model=model, **kwargs)

    loop.save_checkpoint = save_checkpoint
    loop.pretrain(load_config(config, list(overrides)))


if __name__ == "__main__":
    main(*sys.argv[1:])
