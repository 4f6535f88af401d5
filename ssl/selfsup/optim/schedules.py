"""Per-step schedules as pure functions of the step (DINO, DINOv2, nanoGPT's ``get_lr``).

Everything is driven by the optimizer step, never by epochs: streaming shards have no true epochs,
and a resumed run must see exactly the values the uninterrupted run would have seen.
"""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held after it)."""
    if total_steps <= 0:
        return end
    t = min(max(step, 0), total_steps) / total_steps
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, end: float, start: float = 0.0) -> float:
    """Linear warmup ``start -> peak`` over ``warmup_steps``, then cosine ``peak -> end`` (DINO's lr)."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, end)


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ``start -> end`` over ``warmup_steps``, then ``end`` (DINO's teacher temperature)."""
    if step >= warmup_steps or warmup_steps <= 0:
        return end
    return start + (end - start) * step / warmup_steps


def scaled_lr(base_lr: float, global_batch_size: int, reference_batch_size: int = 256) -> float:
    """The linear scaling rule: ``lr = base_lr * global_batch / 256`` (Goyal et al. 2017, as in DINO)."""
    return base_lr * global_batch_size / reference_batch_size
