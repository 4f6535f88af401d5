"""Linear probe on frozen, cached features: L2-regularised logistic regression, lr and L2 weight chosen by
cross-validation on the training labels.

The linear evaluation protocol of self-supervised learning (e.g. Chen et al., "An Empirical Study of
Training Self-Supervised Vision Transformers" (MoCo v3), 2021; Caron et al., DINO, 2021): a single linear
layer trained on top of the frozen backbone. As in the logistic-regression probes of few-shot transfer (Radford et
al., CLIP, 2021: L2 strength swept on held-out data), the loss is the mean cross-entropy plus ``wd / 2 * |W|^2``
(coupled weight decay: with few labels a probe must be able to shrink hard). Hyper-parameters come from a grid
scored by stratified k-fold cross-validation on the *training* subset (never on val): every training row is held out
once, so 197 labels score the grid on 197 predictions, not on 40 (a single 20% held-out part picked the lr by noise
and left the pretrained probe 6 points below random init at 10% of ELPV's labels; docs/evaluation.md). The chosen
values are then refit on the whole subset.
Shapes: ``n = train rows, m = test rows, d = feature dim, c = classes``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.settings import DEFAULTS
from selfsup.knn import topk_accuracy
from selfsup.optim.schedules import cosine

DEFAULT_LRS = (1e-3, 1e-2, 1e-1)
DEFAULT_WDS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)  # L2 weight of |W|^2 / 2 (coupled)
DEFAULT_FOLDS = 5
# what the linear stage records in its settings, so that linear.json files of the earlier probe (decoupled AdamW decay
# chosen on one 20% held-out part, which wrote no "probe" setting) can be told apart
PROBE_SETTINGS = {"probe": "l2_logistic_regression_cv", "lrs": list(DEFAULT_LRS), "wds": list(DEFAULT_WDS),
                  "folds": DEFAULT_FOLDS}


@dataclass
class ProbeResult:
    """Test accuracy of the refit probe and the hyper-parameters that were chosen."""

    top1: float
    top5: float | None
    lr: float
    wd: float
    holdout_top1: float | None  # cross-validated accuracy of the chosen values (every training row held out once)
    selection: str

    def to_dict(self) -> dict:
        return asdict(self)


def fold_ids(labels: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """(n,) stratified fold of every row: each class's rows, in a seeded order, dealt round-robin into ``folds``."""
    rng = np.random.default_rng([seed, 7919])
    fold = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % folds
    return fold


@contextlib.contextmanager
def few_threads(work: int, *, small: int = 20_000_000) -> Iterator[None]:
    """Run tiny tensor work on one thread: below ``small`` elements, thread hand-offs cost more than they give
    (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    if work < small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LinearProbe(torch.nn.Module):
    """``standardise -> linear``: (m, d) features -> (m, c) logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("weight", weight)  # (d, c)
        self.register_buffer("bias", bias)  # (c,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight + self.bias


def train_linear_grid(feats: torch.Tensor, labels: torch.Tensor, *, num_classes: int, lrs: list[float],
                      wds: list[float], steps: int = DEFAULTS.linear_steps, batch_size: int = 256,
                      seed: int = 0) -> list[LinearProbe]:
    """Fit one ``standardise -> Linear(d, c)`` probe per ``(lrs[g], wds[g])``, all in one batched loop.

    Loss: mean cross-entropy + ``wds[g] / 2 * |W|^2`` (the bias is not penalised). Adam (Kingma & Ba, 2015) written
    out for a stack of ``g`` independent heads, so a grid costs about as much as one probe; cosine lr; every head sees
    the same seeded mini-batches and the same init.
    Shapes: ``g = grid points, b = batch, d = feature dim, c = classes``.

    Args:
        feats: (n, d) features. labels: (n,) int64.
        num_classes: c. lrs, wds: per-head learning rate and L2 weight (same length g).
        steps: optimiser steps. batch_size: rows per step (the whole set when smaller).
        seed: seeds the init and the batch order.
    """
    feats = feats.float()
    mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)
    x_all = (feats - mean) / std
    n, d = x_all.shape
    g = len(lrs)
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(d, num_classes, generator=gen) * 0.01).expand(g, d, num_classes).clone().requires_grad_(True)
    b = torch.zeros(g, 1, num_classes, requires_grad=True)
    lr = torch.tensor(lrs, dtype=torch.float32).view(g, 1, 1)
    wd = torch.tensor(wds, dtype=torch.float32).view(g, 1, 1)
    # hand-written: torch.optim.Adam has one lr per parameter group, not one per head of a stacked (g, d, c) tensor
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    bs = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        logits = torch.einsum("bd,gdc->gbc", x_all[idx], w) + b          # (g, b, c)
        y = labels[idx].expand(g, -1)
        # sum over heads: each head's gradient is its own mean cross-entropy
        loss = F.cross_entropy(logits.reshape(-1, num_classes), y.reshape(-1), reduction="sum") / len(idx)
        loss = loss + 0.5 * (wd * w * w).sum()  # each head's own L2 term
        gw, gb = torch.autograd.grad(loss, (w, b))
        step_lr = lr * cosine(step, steps, 1.0, 0.0)
        with torch.no_grad():
            for p, grad, (m, v) in ((w, gw, state[0]), (b, gb, state[1])):
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                upd = (m / (1 - beta1 ** (step + 1))) / ((v / (1 - beta2 ** (step + 1))).sqrt() + eps)
                p.sub_(step_lr * upd)
    return [LinearProbe(mean, std, w[i].detach().clone(), b[i, 0].detach().clone()) for i in range(g)]


def train_linear(feats: torch.Tensor, labels: torch.Tensor, *, num_classes: int, lr: float, wd: float,
                 steps: int = DEFAULTS.linear_steps, batch_size: int = 256, seed: int = 0) -> LinearProbe:
    """One probe: :func:`train_linear_grid` with a single (lr, wd)."""
    return train_linear_grid(feats, labels, num_classes=num_classes, lrs=[lr], wds=[wd], steps=steps,
                             batch_size=batch_size, seed=seed)[0]


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, num_classes: int, lrs: tuple[float, ...] = DEFAULT_LRS,
                 wds: tuple[float, ...] = DEFAULT_WDS, folds: int = DEFAULT_FOLDS, steps: int = DEFAULTS.linear_steps,
                 batch_size: int = 256, seed: int = 0) -> ProbeResult:
    """Choose (lr, wd) by ``folds``-fold cross-validation on the training rows, refit on all of them, score on the
    test rows.

    With no class having two training rows there is nothing to hold out: the middle of the grid is used
    and ``selection`` says so.
    """
    if folds < 2:
        raise ValueError(f"linear_probe: folds={folds}; expected at least 2 (cross-validation holds each fold out)")
    with few_threads(train_feats.numel()):
        return _linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes=num_classes, lrs=lrs,
                             wds=wds, folds=folds, steps=steps, batch_size=batch_size, seed=seed)


def _linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                  test_labels: torch.Tensor, *, num_classes: int, lrs: tuple[float, ...], wds: tuple[float, ...],
                  folds: int, steps: int, batch_size: int, seed: int) -> ProbeResult:
    labels_np = train_labels.numpy()
    grid = [(lr, wd) for lr in lrs for wd in wds]
    best: tuple[float, float] = grid[len(grid) // 2]
    best_acc: float | None = None
    selection = "default (too few labels to hold out)"
    if np.bincount(labels_np).max(initial=0) >= 2:
        fold = fold_ids(labels_np, folds=min(folds, len(labels_np)), seed=seed)
        used = np.unique(fold)  # fewer than ``folds`` when no class has that many rows
        correct = np.zeros(len(grid))
        for f in used:
            fit_i, held_i = torch.from_numpy(np.flatnonzero(fold != f)), torch.from_numpy(np.flatnonzero(fold == f))
            probes = train_linear_grid(train_feats[fit_i], train_labels[fit_i], num_classes=num_classes,
                                       lrs=[lr for lr, _ in grid], wds=[wd for _, wd in grid], steps=steps,
                                       batch_size=batch_size, seed=seed)
            with torch.no_grad():
                for g, probe in enumerate(probes):
                    correct[g] += (probe(train_feats[held_i]).argmax(1) == train_labels[held_i]).sum().item()
        g_best = int(np.argmax(correct))  # ties keep the earlier grid point (smaller lr, then smaller wd)
        best, best_acc = grid[g_best], float(correct[g_best] / len(labels_np))
        selection = f"{len(used)}-fold cross-validation on {len(labels_np)} training labels"
    probe = train_linear(train_feats, train_labels, num_classes=num_classes, lr=best[0], wd=best[1], steps=steps,
                         batch_size=batch_size, seed=seed)
    with torch.no_grad():
        scores = probe(test_feats)
    return ProbeResult(top1=topk_accuracy(scores, test_labels, 1),
                       top5=topk_accuracy(scores, test_labels, 5) if num_classes > 5 else None,
                       lr=best[0], wd=best[1], holdout_top1=best_acc, selection=selection)
