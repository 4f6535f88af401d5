"""Multi-crop forward: one backbone pass per crop resolution.

DINO (Caron et al. 2021) feeds 2 global and N local crops. Crops of one size are concatenated and
go through the backbone together (the authors' ``MultiCropWrapper``), so a 2x224 + 10x96 batch costs
two backbone calls, not twelve.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def group_by_resolution(views: list[Tensor]) -> list[tuple[int, int]]:
    """Consecutive runs of views with the same (h, w), as ``(start, end)`` index ranges."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[-2:] != views[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


def forward_multicrop(backbone: nn.Module, views: list[Tensor]) -> Tensor:
    """Embed every view, batching views of equal resolution.

    Args:
        backbone: maps (n, c, h, w) to (n, d).
        views: v tensors of shape (b, c, h_i, w_i).

    Returns:
        (v * b, d) embeddings, view-major: rows ``[i*b:(i+1)*b]`` belong to view i.
    """
    outs = [backbone(torch.cat(views[s:e])) for s, e in group_by_resolution(views)]
    return torch.cat(outs) if len(outs) > 1 else outs[0]
