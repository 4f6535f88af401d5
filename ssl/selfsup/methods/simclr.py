"""SimCLR (Chen et al. 2020, arXiv 2002.05709): the ``method.simclr`` section, its checks, its builder.

The encoder, projection head and NT-Xent loss are in :mod:`selfsup.methods._simclr_model`, imported by
:func:`build_simclr` only (reading a config never imports torch).
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
class SimCLRConfig:
    """SimCLR (Chen et al. 2020)."""

    proj_hidden_dim: int = 2048
    out_dim: int = 128
    temperature: float = 0.1


def build_simclr(*, make_backbone: Callable[..., nn.Module], n_global: int, **kwargs: object) -> nn.Module:
    """A :class:`~selfsup.methods._simclr_model.SimCLR`; ``kwargs`` are the fields of ``method.simclr``."""
    require_two_global_views("simclr", n_global)
    from selfsup.methods._simclr_model import SimCLR

    return SimCLR(make_backbone(), **kwargs)  # type: ignore[arg-type]


SPEC = MethodSpec(
    name="simclr",
    config=SimCLRConfig,
    build=build_simclr,
    ranges={"proj_hidden_dim": "[1, inf)", "out_dim": "[1, inf)", "temperature": "(0, inf)"},
    paper=("SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al. 2020)",
           "2002.05709"),
    tiny_test_overrides=lambda folder: ("method.simclr.proj_hidden_dim=32", "method.simclr.out_dim=16"),
)
