"""The preprocessing of an exported backbone: what ``selfsup export`` writes into ``config.json`` and what the
kNN monitor of a run uses, so that the monitor scores features exactly as ``selfsup-eval`` will.

Resize the short side to the global crop size (bicubic, ``crop_pct`` 1), center-crop it, scale to [0, 1] and
normalise with the views' mean/std (timm's eval transform built from this data config).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm.data
import torch


def eval_data_config(size: int, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """timm data config (``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``) of a backbone trained on
    ``size`` px global crops normalised with ``mean``/``std``."""
    return {"input_size": (3, size, size), "mean": tuple(mean), "std": tuple(std), "crop_pct": 1.0,
            "interpolation": "bicubic"}


def uint8_eval_transform(data_config: dict[str, Any]):
    """timm's eval transform without the last step: PIL image -> (3, s, s) uint8 tensor (4x smaller to cache)."""
    return timm.data.create_transform(**data_config, is_training=False, normalize=False)


def normalize_uint8(x: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    """(b, 3, s, s) uint8 -> float32 normalised like timm's ``ToTensor`` + ``Normalize``."""
    mean = torch.tensor(data_config["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(data_config["std"], device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std
