"""MoBY (Xie et al. 2021, arXiv 2105.04553): the ``method.moby`` section, its checks, its builder.

The online and target encoders, the key queues and the loss are in :mod:`selfsup.methods._moby_model`, imported by
:func:`build_moby` only (reading a config never imports torch).
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
class MoBYConfig:
    """MoBY (Xie et al. 2021)."""

    proj_hidden_dim: int = 4096
    out_dim: int = 256
    pred_hidden_dim: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99  # cosine to 1.0
    queue_size: int = 4096
    target_drop_path_rate: float = 0.0  # asymmetric drop path: online uses model.drop_path_rate


def build_moby(
    *, make_backbone: Callable[..., nn.Module], n_global: int, target_drop_path_rate: float, **kwargs: object
) -> nn.Module:
    """A :class:`~selfsup.methods._moby_model.MoBY`; ``kwargs`` are the fields of ``method.moby``.

    The online backbone gets ``model.drop_path_rate``, the target one ``target_drop_path_rate``.
    """
    require_two_global_views("moby", n_global)
    from selfsup.methods._moby_model import MoBY

    return MoBY(make_backbone(), make_backbone(drop_path_rate=target_drop_path_rate), **kwargs)  # type: ignore[arg-type]


SPEC = MethodSpec(
    name="moby",
    config=MoBYConfig,
    build=build_moby,
    ranges={"proj_hidden_dim": "[1, inf)", "out_dim": "[1, inf)", "pred_hidden_dim": "[1, inf)",
            "temperature": "(0, inf)", "momentum": "[0, 1]", "queue_size": "[1, inf)",
            "target_drop_path_rate": "[0, 1)"},
    paper=("MoBY: Self-Supervised Learning with Swin Transformers (Xie et al. 2021)", "2105.04553"),
    tiny_test_overrides=lambda folder: ("method.moby.proj_hidden_dim=32", "method.moby.out_dim=16",
                                        "method.moby.pred_hidden_dim=32", "method.moby.queue_size=16"),
)
