"""Distillation of a frozen teacher (SEED, Fang et al. 2021, arXiv 2101.04731; LightlyTrain v1): the
``method.distill`` section, its checks, its builder.

The student, adapter, queue and losses are in :mod:`selfsup.methods._distill_model`, the teacher loader in
:mod:`selfsup.models.teacher`; both are imported by :func:`build_distill` only (reading a config never imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.errors import ConfigError
from selfsup.registry import MethodSpec

if TYPE_CHECKING:
    from torch import nn

LOSSES = ("seed", "cosine", "mse")


@dataclass
class DistillConfig:
    """Distillation of a frozen teacher into ``model.name`` (SEED, Fang et al. 2021; LightlyTrain v1)."""

    teacher: str = ""  # a `selfsup export` folder, local-dir:FOLDER, or a timm name with pretrained weights
    teacher_args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs for the teacher
    teacher_size: int = 0  # the teacher's input side: views are resized to it; 0 = the views as they are
    loss: str = "seed"  # seed (similarity distributions over a queue, KL) | cosine | mse (feature losses)
    queue_size: int = 4096  # teacher embeddings kept for loss=seed
    student_temp: float = 0.07
    teacher_temp: float = 0.07


def check_distill(section: DistillConfig) -> None:
    """``loss=seed`` needs a queue."""
    if section.loss == "seed" and section.queue_size < 1:
        raise ConfigError(f"bad value for 'method.distill.queue_size': {section.queue_size} "
                          "(expected >= 1 for method.distill.loss=seed)")


def view_normalisation(cfg: Any) -> dict[str, Any]:
    """The views' mean and std (``views.mean``/``views.std``): the teacher re-normalises the views to its own."""
    return dict(view_mean=tuple(cfg.views.mean), view_std=tuple(cfg.views.std))


def build_distill(*, make_backbone: Callable[..., nn.Module], n_global: int, teacher: str, view_mean: Sequence[float],
                  view_std: Sequence[float], teacher_args: dict, teacher_size: int, **kwargs: object) -> nn.Module:
    """A :class:`~selfsup.methods._distill_model.Distill`; ``kwargs`` are the other fields of ``method.distill``,
    ``view_mean`` and ``view_std`` the views' normalisation (:func:`view_normalisation`)."""
    from selfsup.methods._distill_model import Distill
    from selfsup.models.teacher import load_teacher

    frozen = load_teacher(teacher, view_mean=view_mean, view_std=view_std, size=teacher_size, model_args=teacher_args,
                          key="method.distill.teacher")
    return Distill(make_backbone(), frozen, **kwargs)  # type: ignore[arg-type]


def tiny_teacher(folder: Path) -> Sequence[str]:
    """A 1-block, 48-d ViT teacher with random weights, written as ``selfsup export`` writes one, for the contract
    test (a pretrained teacher would need a download)."""
    import timm
    import torch

    from selfsup.models.backbone import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_backbone("vit_tiny_patch16_224",
                                model_args=dict(img_size=32, patch_size=8, depth=1, embed_dim=48, num_heads=2))
    timm.models.save_for_hf(model, str(folder), safe_serialization=True,
                            data_config={"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406),
                                         "std": (0.229, 0.224, 0.225), "crop_pct": 1.0, "interpolation": "bicubic"})
    return (f"method.distill.teacher={folder}", "method.distill.queue_size=16")


SPEC = MethodSpec(
    name="distill",
    config=DistillConfig,
    build=build_distill,
    ranges={"teacher_size": "[0, inf)", "queue_size": "[0, inf)", "student_temp": "(0, inf)",
            "teacher_temp": "(0, inf)"},
    choices={"loss": LOSSES},
    check=check_distill,
    multi_crop=True,
    min_views=1,  # every view is compared with the teacher's embedding of the same view
    build_args=view_normalisation,
    command="distil a teacher into a student: CONFIG [key=value ...] (pretrain, method.name=distill)",
    tiny_test_overrides=tiny_teacher,
)
