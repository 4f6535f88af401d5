"""Give every AdamW parameter its (zero) state up front, so sharded optimizer checkpoints always have all keys.

AdamW creates a parameter's state lazily, at the first step where it has a gradient. Some parameters have
none for a while (DINO's last layer is frozen for the first epoch: ``grad = None``), so a checkpoint taken
then has no state for them. Loading a sharded (FSDP, torch.distributed.checkpoint) optimizer checkpoint
into a fresh optimizer first initializes the state of *every* parameter and then requires every key in the
file, so such a checkpoint could not be resumed. Creating the state eagerly, exactly as AdamW's lazy init
would (``step = 0``, zero moments), changes no update: the first real step sees the same values.
"""

from __future__ import annotations

import torch


def init_adamw_state(optimizer: torch.optim.Optimizer) -> int:
    """Create the zero state of every parameter of an ``AdamW``/``Adam`` that has none; returns how many.

    ``optimizer`` may be accelerate's wrapper (its ``.optimizer`` is used).
    """
    opt = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"init_adamw_state: expected Adam/AdamW, got {type(opt).__name__}")
    created = 0
    for group in opt.param_groups:
        on_device = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            if opt.state.get(p):
                continue
            step = (torch.zeros((), dtype=torch.float32, device=p.device) if on_device
                    else torch.tensor(0.0, dtype=torch.float32))
            state = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            opt.state[p] = state
            created += 1
    return created
