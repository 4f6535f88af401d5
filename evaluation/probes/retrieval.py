"""Nearest-neighbour retrieval on frozen features: for each query, the top-k training images by cosine similarity.

The same similarity DINO's kNN classifier votes with (Caron et al., 2021, Sec. 4.1), shown instead of voted:
a user sees which training images a val image is closest to, and whether they share its label.
Shapes: n = train rows, m = queries, d = feature dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_neighbours(train_feats: torch.Tensor, query_feats: torch.Tensor, *, k: int,
                       chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k training rows of each query by cosine similarity.

    Args:
        train_feats: (n, d) features to search.
        query_feats: (m, d) queries.
        k: neighbours per query (clipped to n).
        chunk_size: queries per similarity block (memory O(chunk_size * n)).

    Returns:
        ``(sims, idx)``: (m, k) float32 cosine similarities, highest first, and (m, k) int64 train indices.
    """
    train = F.normalize(train_feats.float(), dim=1)
    k = min(k, train.shape[0])
    sims, idx = [], []
    for start in range(0, query_feats.shape[0], chunk_size):
        q = F.normalize(query_feats[start:start + chunk_size].float(), dim=1)
        s, i = (q @ train.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def precision_at_k(neighbour_idx: torch.Tensor, train_labels: torch.Tensor, query_labels: torch.Tensor) -> float:
    """Share of the (m, k) retrieved training images whose label equals their query's label."""
    return float((train_labels[neighbour_idx] == query_labels.view(-1, 1)).float().mean())
