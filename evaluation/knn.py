"""kNN evaluation at several k on frozen features.

The classifier itself (DINO's temperature-weighted kNN vote) lives in :mod:`selfsup.knn`, shared with the
training run's kNN monitor; this module runs it for every requested ``k``.
"""

from __future__ import annotations

import torch

from selfsup.knn import knn_classify, topk_accuracy

__all__ = ["evaluate_knn", "knn_classify", "topk_accuracy"]


def evaluate_knn(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, ks: tuple[int, ...] = (10, 20, 100, 200), T: float = 0.07,
                 num_classes: int, chunk_size: int = 256) -> dict[int, dict[str, float]]:
    """``{k: {"top1": acc, "top5": acc}}`` (top5 only when there are more than 5 classes)."""
    results = {}
    for k in ks:
        scores = knn_classify(train_feats, train_labels, test_feats, k=k, T=T, num_classes=num_classes,
                              chunk_size=chunk_size)
        row = {"top1": topk_accuracy(scores, test_labels, 1)}
        if num_classes > 5:
            row["top5"] = topk_accuracy(scores, test_labels, 5)
        results[k] = row
    return results
