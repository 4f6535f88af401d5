"""lightly's ``DINOProjectionHead`` over several batches at once (views, masked patch tokens), for DINO and DINOv2.

Each batch must give what a call of the head on that batch alone gives: a BatchNorm head normalises every view with
its own statistics (lightly's DINO examples call the head once per view). Calling the head once per batch does that,
but each call also recomputes the weight-normalised last layer, a (k, bottleneck) weight (65,536 x 256 = 64 MB in
fp32) built from ``weight_v`` and ``weight_g``, then its gradient and the weight-norm backward: twelve crops meant
twelve passes over it forward and three times that backward, which made the 2-core CPU step slower than the
lightly-style reference's (docs/speed.md has the profile). The MLP before the last layer is the only part whose rows
can depend on each other (BatchNorm with batch statistics); the L2 normalisation and the last layer act row by row.
So the MLP runs once per batch only where such a BatchNorm is, else once over every row, and the last layer always
runs once over every row: the same outputs and gradients as one head call per batch, with one weight norm.

Shapes: n_i = rows of batch i, n = sum n_i, d = input dim, k = output dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.models.modules import DINOProjectionHead
from torch import Tensor, nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether a BatchNorm inside ``module`` normalises with the statistics of the batch it is given (training mode,
    or no running statistics), so that its output rows depend on which other rows share the call."""
    return any(isinstance(m, BATCH_NORMS) and (m.training or not m.track_running_stats) for m in module.modules())


def head_over_batches(head: DINOProjectionHead, batches: Sequence[Tensor]) -> Tensor:
    """``torch.cat([head(x) for x in batches])`` (n, k), with the last layer's weight normalised once.

    Args:
        head: lightly's DINO head: ``layers`` (the MLP), L2 normalisation, ``last_layer`` (weight-normalised linear).
        batches: tensors (n_i, d) that would each be one head call (one view, the masked tokens of the crops).
    """
    if len(batches) > 1 and uses_batch_statistics(head.layers):
        hidden = torch.cat([head.layers(x) for x in batches])  # each batch with its own BN statistics
    else:
        hidden = head.layers(torch.cat(list(batches)) if len(batches) > 1 else batches[0])
    return head.last_layer(nn.functional.normalize(hidden, dim=-1, p=2))  # (n, k)
