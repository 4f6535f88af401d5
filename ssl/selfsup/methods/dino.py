"""DINO (Caron et al. 2021, https://arxiv.org/abs/2104.14294): the ``method.dino`` section, its checks, its builder.

The student/teacher module and the loss are in :mod:`selfsup.methods._dino_model`, imported by :func:`build_dino`
only (reading a config never imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfsup.registry import MethodSpec

if TYPE_CHECKING:
    from torch import nn

# how the teacher's outputs are centered (selfsup.methods._centering); also method.dinov2.center
CENTERS = ("mean", "sinkhorn_knopp")


@dataclass
class DINOConfig:
    """DINO (Caron et al. 2021) head and loss; defaults from the paper's ViT-S/16 recipe."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = False
    batch_norm: bool = False  # BatchNorm in the head's hidden layers (lightly's CIFAR-10 benchmark turns it on)
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # cosine to 1.0
    freeze_last_layer_epochs: float = 1
    koleo_weight: float = 0.0  # DINOv2's KoLeo regulariser on the student's global-view embeddings (DINOv2: 0.1)
    # mean (DINO's EMA center) | sinkhorn_knopp (DINOv2's teacher: every prototype used equally in each batch)
    center: str = "mean"


def build_dino(*, make_backbone: Callable[..., nn.Module], n_global: int, **kwargs: object) -> nn.Module:
    """A :class:`~selfsup.methods._dino_model.DINO`; ``kwargs`` are the fields of ``method.dino``."""
    from selfsup.methods._dino_model import DINO

    return DINO(make_backbone(), n_global=n_global, **kwargs)  # type: ignore[arg-type]


SPEC = MethodSpec(
    name="dino",
    config=DINOConfig,
    build=build_dino,
    ranges={
        "out_dim": "[1, inf)", "hidden_dim": "[1, inf)", "bottleneck_dim": "[1, inf)", "student_temp": "(0, inf)",
        "warmup_teacher_temp": "(0, inf)", "teacher_temp": "(0, inf)", "warmup_teacher_temp_epochs": "[0, inf)",
        "center_momentum": "[0, 1]", "momentum_teacher": "[0, 1]", "freeze_last_layer_epochs": "[0, inf)",
        "koleo_weight": "[0, inf)",
    },
    choices={"center": CENTERS},
    multi_crop=True,
    paper=("DINO: Emerging Properties in Self-Supervised Vision Transformers (Caron et al. 2021)", "2104.14294"),
    tiny_test_overrides=lambda folder: ("method.dino.out_dim=64", "method.dino.hidden_dim=32",
                                        "method.dino.bottleneck_dim=16"),
)
