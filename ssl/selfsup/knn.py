"""Weighted k-nearest-neighbour classification on frozen features.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), 2021, Sec. 4.1 / App.:
"a weighted nearest neighbor classifier": the ``k`` nearest training features (cosine similarity ``s``) each
vote for their class with weight ``exp(s / T)``, ``T = 0.07``. Shapes: ``n = train rows, m = test rows,
d = feature dim, c = classes``; test rows are processed ``chunk_size`` at a time so memory stays
``O(chunk_size * n)`` however large the test set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DINO_TEMPERATURE = 0.07  # Caron et al. 2021, Sec. 4.1


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, *, k: int,
                 T: float = DINO_TEMPERATURE, num_classes: int, chunk_size: int = 256) -> torch.Tensor:
    """Class scores (m, c) of DINO's temperature-weighted kNN vote.

    Args:
        train_feats: (n, d) training features (L2-normalised here).
        train_labels: (n,) int64 training labels.
        test_feats: (m, d) features to classify (L2-normalised here).
        k: neighbours per query; clipped to ``n``.
        T: temperature of the ``exp(similarity / T)`` vote weights.
        num_classes: c.
        chunk_size: test rows per similarity block.

    Returns:
        (m, c) float32 summed vote weights; ``argmax`` is the prediction.
    """
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.long()
    k = min(k, train.shape[0])
    out = torch.empty(test_feats.shape[0], num_classes)
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start:start + chunk_size].float(), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)                   # (chunk, k)
        weights = (sims / T).exp()
        votes = torch.zeros(query.shape[0], num_classes)
        votes.scatter_add_(1, labels[idx], weights)                   # (chunk, c)
        out[start:start + chunk_size] = votes
    return out


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores (ties broken by class index)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def evaluate_knn(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, ks: tuple[int, ...], T: float = DINO_TEMPERATURE,
                 num_classes: int, chunk_size: int = 256) -> dict[int, dict[str, float]]:
    """:func:`knn_classify` at every ``k`` of ``ks``: ``{k: {"top1": acc, "top5": acc}}`` (top5 only when there
    are more than 5 classes)."""
    results = {}
    for k in ks:
        scores = knn_classify(train_feats, train_labels, test_feats, k=k, T=T, num_classes=num_classes,
                              chunk_size=chunk_size)
        row = {"top1": topk_accuracy(scores, test_labels, 1)}
        if num_classes > 5:
            row["top5"] = topk_accuracy(scores, test_labels, 5)
        results[k] = row
    return results
