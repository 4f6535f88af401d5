"""Parameter groups: no weight decay on biases and norm parameters (DINO's ``get_params_groups``)."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and not decayed groups.

    Each group carries ``wd_mult`` (1.0 or 0.0); the loop sets ``weight_decay = wd * wd_mult`` from the
    weight-decay schedule at every step. Frozen parameters (``requires_grad=False``) are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norm scales/shifts, tokens and position embeddings are 1-D or named so.
        if p.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
