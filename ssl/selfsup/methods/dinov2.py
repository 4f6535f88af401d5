"""DINOv2 (Oquab et al. 2023, https://arxiv.org/abs/2304.07193): the ``method.dinov2`` section, its checks, its
builder.

The student/teacher module and the DINO + iBOT + KoLeo loss are in :mod:`selfsup.methods._dinov2_model`, imported by
:func:`build_dinov2` only (reading a config never imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from selfsup.errors import ConfigError
from selfsup.methods.dino import CENTERS
from selfsup.registry import MethodSpec

if TYPE_CHECKING:
    from torch import nn


@dataclass
class DINOv2Config:
    """DINOv2 (Oquab et al. 2023): DINO + iBOT masked-patch + KoLeo losses, Sinkhorn-Knopp centering; defaults from
    the paper's ViT recipe (dinov2/configs/ssl_default_config.yaml). Needs a ViT backbone (patch tokens to mask)."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    batch_norm: bool = False  # BatchNorm in the heads' hidden layers
    separate_ibot_head: bool = False  # false: the DINO head also scores the masked patch tokens
    ibot_out_dim: int = 65536  # prototypes of a separate iBOT head
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30
    center: str = "sinkhorn_knopp"  # sinkhorn_knopp | mean (as method.dino.center)
    center_momentum: float = 0.9  # center=mean only
    momentum_teacher: float = 0.992  # cosine to 1.0
    freeze_last_layer_epochs: float = 1
    koleo_weight: float = 0.1
    ibot_weight: float = 1.0
    mask_probability: float = 0.5  # share of global crops masked
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # share of a masked crop's patch tokens


def check_dinov2(section: DINOv2Config) -> None:
    """``mask_ratio`` is a [min, max] pair (each item's range is in the spec's ``ranges``)."""
    ratio = section.mask_ratio
    if len(ratio) != 2 or not ratio[0] <= ratio[1]:
        raise ConfigError(f"bad value for 'method.dinov2.mask_ratio': {ratio} (expected [min, max] with "
                          "0 <= min <= max <= 1)")


def build_dinov2(*, make_backbone: Callable[..., nn.Module], n_global: int, **kwargs: object) -> nn.Module:
    """A :class:`~selfsup.methods._dinov2_model.DINOv2`; ``kwargs`` are the fields of ``method.dinov2``."""
    from selfsup.methods._dinov2_model import DINOv2

    return DINOv2(make_backbone(), n_global=n_global, **kwargs)  # type: ignore[arg-type]


SPEC = MethodSpec(
    name="dinov2",
    config=DINOv2Config,
    build=build_dinov2,
    ranges={
        "out_dim": "[1, inf)", "hidden_dim": "[1, inf)", "bottleneck_dim": "[1, inf)", "ibot_out_dim": "[1, inf)",
        "student_temp": "(0, inf)", "warmup_teacher_temp": "(0, inf)", "teacher_temp": "(0, inf)",
        "warmup_teacher_temp_epochs": "[0, inf)", "center_momentum": "[0, 1]", "momentum_teacher": "[0, 1]",
        "freeze_last_layer_epochs": "[0, inf)", "koleo_weight": "[0, inf)", "ibot_weight": "[0, inf)",
        "mask_probability": "[0, 1]", "mask_ratio": "[0, 1]",
    },
    choices={"center": CENTERS},
    check=check_dinov2,
    multi_crop=True,
    paper=("DINOv2: Learning Robust Visual Features without Supervision (Oquab et al. 2023)", "2304.07193"),
    tiny_test_overrides=lambda folder: ("method.dinov2.out_dim=64", "method.dinov2.hidden_dim=32",
                                        "method.dinov2.bottleneck_dim=16"),
)
