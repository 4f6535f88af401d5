"""Linear probe on frozen, cached features, with lr / weight decay chosen on held-out training labels.

The linear evaluation protocol of self-supervised learning (e.g. Chen et al., "An Empirical Study of
Training Self-Supervised Vision Transformers" (MoCo v3), 2021; Caron et al., DINO, 2021): a single linear
layer trained on top of the frozen backbone. Hyper-parameters come from a small grid scored on a stratified
held-out part of the *training* subset (never on val); the chosen values are then refit on the whole subset.
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


def holdout_indices(labels: np.ndarray, *, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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

    AdamW (Loshchilov & Hutter, 2019) written out for a stack of ``g`` independent heads, so a grid costs
    about as much as one probe; cosine lr; every head sees the same seeded mini-batches and the same init.
    Shapes: ``g = grid points, b = batch, d = feature dim, c = classes``.

    Args:
        feats: (n, d) features. labels: (n,) int64.
        num_classes: c. lrs, wds: per-head learning rate and decoupled weight decay (same length g).
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
    # hand-written: torch.optim.AdamW has one lr per parameter group, not one per head of a stacked (g, d, c) tensor
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
        gw, gb = torch.autograd.grad(loss, (w, b))
        step_lr = lr * cosine(step, steps, 1.0, 0.0)
        with torch.no_grad():
            for p, grad, (m, v), decay in ((w, gw, state[0], True), (b, gb, state[1], False)):
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                upd = (m / (1 - beta1 ** (step + 1))) / ((v / (1 - beta2 ** (step + 1))).sqrt() + eps)
                if decay:
                    upd = upd + wd * p
                p.sub_(step_lr * upd)
    return [LinearProbe(mean, std, w[i].detach().clone(), b[i, 0].detach().clone()) for i in range(g)]


def train_linear(feats: torch.Tensor, labels: torch.Tensor, *, num_classes: int, lr: float, wd: float,
                 steps: int = DEFAULTS.linear_steps, batch_size: int = 256, seed: int = 0) -> LinearProbe:
    """One probe: :func:`train_linear_grid` with a single (lr, wd)."""
    return train_linear_grid(feats, labels, num_classes=num_classes, lrs=[lr], wds=[wd], steps=steps,
                             batch_size=batch_size, seed=seed)[0]


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, num_classes: int, lrs: tuple[float, ...] = DEFAULT_LRS,
                 wds: tuple[float, ...] = DEFAULT_WDS, holdout_share: float = 0.2, steps: int = DEFAULTS.linear_steps,
                 batch_size: int = 256, seed: int = 0) -> ProbeResult:
    """Choose (lr, wd) on a held-out part of the training rows, refit on all of them, score on the test rows.

    With no class having two training rows there is nothing to hold out: the middle of the grid is used
    and ``selection`` says so.
    """
    with few_threads(train_feats.numel()):
        return _linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes=num_classes, lrs=lrs,
                             wds=wds, holdout_share=holdout_share, steps=steps, batch_size=batch_size, seed=seed)


def _linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                  test_labels: torch.Tensor, *, num_classes: int, lrs: tuple[float, ...], wds: tuple[float, ...],
                  holdout_share: float, steps: int, batch_size: int, seed: int) -> ProbeResult:
    labels_np = train_labels.numpy()
    fit_idx, held_idx = holdout_indices(labels_np, share=holdout_share, seed=seed)
    grid = [(lr, wd) for lr in lrs for wd in wds]
    best: tuple[float, float] = grid[len(grid) // 2]
    best_acc: float | None = None
    selection = "default (too few labels to hold out)"
    if len(held_idx) > 0 and len(fit_idx) > 0:
        fit_i, held_i = torch.from_numpy(fit_idx), torch.from_numpy(held_idx)
        probes = train_linear_grid(train_feats[fit_i], train_labels[fit_i], num_classes=num_classes,
                                   lrs=[lr for lr, _ in grid], wds=[wd for _, wd in grid], steps=steps,
                                   batch_size=batch_size, seed=seed)
        for (lr, wd), probe in zip(grid, probes):
            with torch.no_grad():
                acc = topk_accuracy(probe(train_feats[held_i]), train_labels[held_i], 1)
            if best_acc is None or acc > best_acc:  # strict: ties keep the earlier (smaller) lr
                best, best_acc = (lr, wd), acc
        selection = f"held-out {len(held_idx)} of {len(labels_np)} training labels"
    probe = train_linear(train_feats, train_labels, num_classes=num_classes, lr=best[0], wd=best[1], steps=steps,
                         batch_size=batch_size, seed=seed)
    with torch.no_grad():
        scores = probe(test_feats)
    return ProbeResult(top1=topk_accuracy(scores, test_labels, 1),
                       top5=topk_accuracy(scores, test_labels, 5) if num_classes > 5 else None,
                       lr=best[0], wd=best[1], holdout_top1=best_acc, selection=selection)
