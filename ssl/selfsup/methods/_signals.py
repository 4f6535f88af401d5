"""Collapse signal shared by every method.

A collapsed encoder maps every image to (nearly) the same point. The per-dimension standard deviation of
L2-normalised embeddings detects it: about ``1/sqrt(d)`` for embeddings spread over the sphere, 0 when
collapsed (the check used by SimSiam, Chen & He 2021, Sec. 4.1).

Shapes: b = batch, d = embedding dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def embed_std_logs(emb: Tensor) -> dict[str, Tensor]:
    """``embed_std`` of L2-normalised ``emb`` (b, d) and its healthy value ``embed_std_healthy`` = 1/sqrt(d)."""
    z = nn.functional.normalize(emb.detach().float(), dim=-1)  # (b, d)
    return {
        "embed_std": z.std(dim=0).mean(),
        "embed_std_healthy": torch.tensor(1.0 / math.sqrt(z.shape[1])),
    }


def chance_logs(loss_chance: float) -> dict[str, Tensor]:
    """``loss_chance``: the loss of a model that has learnt nothing (every candidate equally likely), which the
    plateau watch (:mod:`selfsup.train.plateau`) compares the loss with."""
    return {"loss_chance": torch.tensor(float(loss_chance))}
