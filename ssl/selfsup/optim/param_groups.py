"""Parameter groups: no weight decay on biases and norm parameters (DINO's ``get_params_groups``), via timm."""

from __future__ import annotations

from typing import Any

from timm.optim import param_groups_weight_decay
from torch import nn

# Besides biases and 1-D parameters (norm scales/shifts), tokens and position embeddings are not decayed.
NO_WEIGHT_DECAY = ("*pos_embed*", "*token*")


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and not decayed groups (``timm.optim.param_groups_weight_decay``).

    Each group carries ``wd_mult`` (1.0 or 0.0); the loop sets ``weight_decay = wd * wd_mult`` from the
    weight-decay schedule at every step. Frozen parameters (``requires_grad=False``) are left out, and so are
    empty groups. The decayed group comes first, as the optimizer state of existing checkpoints expects.
    """
    groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=NO_WEIGHT_DECAY)[::-1]
    for group in groups:
        group["wd_mult"] = group["weight_decay"]
        if group["wd_mult"]:  # the decayed group keeps the optimizer's default until the loop sets it
            del group["weight_decay"]
    return groups
