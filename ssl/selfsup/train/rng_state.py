"""Check a checkpoint's random-number states before accelerate restores them.

``accelerator.load_state`` restores each process's ``random_states_<rank>.pkl`` (Python, NumPy, torch CPU and
CUDA generators) inside a ``try/except`` that only logs "Could not load random states": a missing, crafted or
mismatched file is skipped silently, after some generators may already be set, and an "exact" resume is then
not exact. Each state is applied here to a throw-away generator first, so any such file is refused in one line.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import CheckpointError


def random_state_problem(path: Path) -> str | None:
    """Why accelerate could not restore ``path`` for this process, or ``None`` when every state applies."""
    from accelerate.utils import load

    if not path.is_file():
        return "missing (this run's layout needs one per process)"
    try:
        states = load(path)  # accelerate's own reader: torch.load(weights_only=True) with NumPy arrays allowed
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        text = str(e).strip()
        return f"not a readable random state ({text.splitlines()[0] if text else type(e).__name__})"
    if not isinstance(states, dict):
        return f"expected a dict of generator states, found {type(states).__name__}"
    checks = {
        "random_state": lambda v: random.Random().setstate(v),
        "numpy_random_seed": lambda v: np.random.RandomState().set_state(v),
        "torch_manual_seed": lambda v: torch.Generator().set_state(v),
    }
    for key, apply in checks.items():
        if key not in states:
            return f"'{key}' missing"
        try:
            apply(states[key])
        except Exception as e:  # noqa: BLE001 - each generator raises its own types for a bad state
            return f"'{key}' does not fit this run's generator ({type(e).__name__})"
    if "step" in states and type(states["step"]) is not int:
        return f"'step' is {states['step']!r}, expected an integer"
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
        cuda = states["torch_cuda_manual_seed"]
        size = torch.cuda.get_rng_state(torch.cuda.current_device()).numel()  # the same size on every GPU
        if not (isinstance(cuda, (list, tuple)) and len(cuda) <= torch.cuda.device_count() and all(
                isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.numel() == size for s in cuda)):
            return (f"'torch_cuda_manual_seed' does not match this run's {torch.cuda.device_count()} GPU(s) "
                    f"(expected up to that many uint8 states of {size} bytes)")
    return None


def check_random_states(accelerator, ckpt: Path) -> None:
    """Raise the same CheckpointError on every process when any process's random state in ``ckpt`` is unusable."""
    from accelerate.utils import RNG_STATE_NAME, gather_object

    path = Path(ckpt) / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"
    problem = random_state_problem(path)
    found = [f"{path}: {problem}" if problem else None]
    if accelerator.num_processes > 1:
        found = gather_object(found)  # a collective: every process decides the same
    first = next((p for p in found if p), None)
    if first:
        raise CheckpointError(f"{first}; refused: the resume would not restore the random generators (resume "
                              f"from an earlier checkpoint with train.resume=PATH)")
