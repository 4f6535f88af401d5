"""MoCo v3 (Chen, Xie, He 2021, arXiv 2104.02057): the ``method.mocov3`` section, its checks, its builder.

The online and momentum encoders and the loss are in :mod:`selfsup.methods._mocov3_model`, imported by
:func:`build_mocov3` only (reading a config never imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfsup.methods._two_views import require_two_global_views
from selfsup.registry import MethodSpec

if TYPE_CHECKING:
    from torch import nn


@dataclass
class MoCoV3Config:
    """MoCo v3 (Chen, Xie, He 2021)."""

    proj_hidden_dim: int = 4096
    out_dim: int = 256
    pred_hidden_dim: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99  # cosine to 1.0
    freeze_patch_embed: bool = True  # the paper's stability trick: random, frozen patch projection


def build_mocov3(*, make_backbone: Callable[..., nn.Module], n_global: int, **kwargs: object) -> nn.Module:
    """A :class:`~selfsup.methods._mocov3_model.MoCoV3`; ``kwargs`` are the fields of ``method.mocov3``."""
    require_two_global_views("mocov3", n_global)
    from selfsup.methods._mocov3_model import MoCoV3

    return MoCoV3(make_backbone(), **kwargs)  # type: ignore[arg-type]


SPEC = MethodSpec(
    name="mocov3",
    config=MoCoV3Config,
    build=build_mocov3,
    ranges={"proj_hidden_dim": "[1, inf)", "out_dim": "[1, inf)", "pred_hidden_dim": "[1, inf)",
            "temperature": "(0, inf)", "momentum": "[0, 1]"},
    paper=("MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers (Chen, Xie, He 2021)",
           "2104.02057"),
    tiny_test_overrides=lambda folder: ("method.mocov3.proj_hidden_dim=32", "method.mocov3.out_dim=16",
                                        "method.mocov3.pred_hidden_dim=32"),
)
