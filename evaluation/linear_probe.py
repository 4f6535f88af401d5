"""Linear probe on frozen, cached features, with lr / weight decay chosen on held-out training labels.

The linear evaluation protocol of self-supervised learning (e.g. Chen et al., "An Empirical Study of
Training Self-Supervised Vision Transformers" (MoCo v3), 2021; Caron et al., DINO, 2021): a single linear
layer trained on top of the frozen backbone. Hyper-parameters come from a small grid scored on a stratified
held-out part of the *training* subset (never on val); the chosen values are then refit on the whole subset.
Shapes: ``n = train rows, m = test rows, d = feature dim, c = classes``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.knn import topk_accuracy

DEFAULT_LRS = (1e-3, 1e-2, 1e-1)
DEFAULT_WDS = (0.0, 1e-1)


@dataclass
class ProbeResult:
    """Test accuracy of the refit probe and the hyper-parameters that were chosen."""

    top1: float
    top5: float | None
    lr: float
    wd: float
    holdout_top1: float | None
    selection: str

    def to_dict(self) -> dict:
        return asdict(self)


def holdout_split(labels: np.ndarray, *, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, held-out) indices: ``max(1, round(share * n_c))`` held out per class with >= 2 rows."""
    rng = np.random.default_rng([seed, 7919])
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= 2:
            held.append(rng.choice(idx, size=max(1, int(round(share * len(idx)))), replace=False))
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    fit_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return fit_idx, held_idx


def train_linear(feats: torch.Tensor, labels: torch.Tensor, *, num_classes: int, lr: float, wd: float,
                 steps: int = 300, batch_size: int = 256, seed: int = 0) -> torch.nn.Module:
    """Fit ``standardise -> Linear(d, c)`` with AdamW, cosine lr, seeded mini-batches; returns it in eval mode.

    Args:
        feats: (n, d) features. labels: (n,) int64.
        num_classes: c. lr, wd: AdamW learning rate and (decoupled) weight decay.
        steps: optimiser steps. batch_size: rows per step (the whole set when smaller).
        seed: seeds the init and the batch order.
    """
    feats = feats.float()
    mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(feats.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    x_all = (feats - mean) / std
    n = x_all.shape[0]
    bs = min(batch_size, n)
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(head(x_all[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model = torch.nn.Sequential(_Standardise(mean, std), head)
    return model.eval()


class _Standardise(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, num_classes: int, lrs: tuple[float, ...] = DEFAULT_LRS,
                 wds: tuple[float, ...] = DEFAULT_WDS, holdout_share: float = 0.2, steps: int = 300,
                 batch_size: int = 256, seed: int = 0) -> ProbeResult:
    """Choose (lr, wd) on a held-out part of the training rows, refit on all of them, score on the test rows.

    With no class having two training rows there is nothing to hold out: the middle of the grid is used
    and ``selection`` says so.
    """
    labels_np = train_labels.numpy()
    fit_idx, held_idx = holdout_split(labels_np, share=holdout_share, seed=seed)
    grid = [(lr, wd) for lr in lrs for wd in wds]
    best: tuple[float, float] = grid[len(grid) // 2]
    best_acc: float | None = None
    selection = "default (too few labels to hold out)"
    if len(held_idx) > 0 and len(fit_idx) > 0:
        fit_i, held_i = torch.from_numpy(fit_idx), torch.from_numpy(held_idx)
        for lr, wd in grid:
            probe = train_linear(train_feats[fit_i], train_labels[fit_i], num_classes=num_classes, lr=lr, wd=wd,
                                 steps=steps, batch_size=batch_size, seed=seed)
            with torch.no_grad():
                acc = topk_accuracy(probe(train_feats[held_i].float()), train_labels[held_i], 1)
            if best_acc is None or acc > best_acc:  # strict: ties keep the earlier (smaller) lr
                best, best_acc = (lr, wd), acc
        selection = f"held-out {len(held_idx)} of {len(labels_np)} training labels"
    probe = train_linear(train_feats, train_labels, num_classes=num_classes, lr=best[0], wd=best[1], steps=steps,
                         batch_size=batch_size, seed=seed)
    with torch.no_grad():
        scores = probe(test_feats.float())
    return ProbeResult(top1=topk_accuracy(scores, test_labels, 1),
                       top5=topk_accuracy(scores, test_labels, 5) if num_classes > 5 else None,
                       lr=best[0], wd=best[1], holdout_top1=best_acc, selection=selection)
