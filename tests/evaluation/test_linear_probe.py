"""Linear probe: ~100% on separable features, ~chance on shuffled labels, hyper-parameters chosen without val."""

from __future__ import annotations

import numpy as np
import torch

from evaluation.probes.linear import holdout_indices, linear_probe, train_linear, train_linear_grid


def blobs(n: int, c: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(n, d, generator=g)
    x[:, :c] += 4.0 * torch.nn.functional.one_hot(labels, c)  # separable along the first c axes
    return x * 3 + 1, labels  # not standardised: the probe must handle scale and offset


def test_separable_features_reach_100_percent():
    tr, ytr = blobs(600, 8, 24, seed=0)
    te, yte = blobs(300, 8, 24, seed=1)
    res = linear_probe(tr, ytr, te, yte, num_classes=8, steps=150)
    assert res.top1 >= 0.97 and res.top5 >= res.top1
    assert res.holdout_top1 is not None and res.holdout_top1 >= 0.9
    assert res.lr in (1e-3, 1e-2, 1e-1) and res.wd in (0.0, 0.1)
    assert res.selection.startswith("held-out")


def test_shuffled_labels_give_chance():
    tr, ytr = blobs(600, 8, 24, seed=0)
    te, yte = blobs(800, 8, 24, seed=1)
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(3))]
    res = linear_probe(tr, shuffled, te, yte, num_classes=8, steps=150)
    assert res.top1 < 0.22  # chance is 0.125


def test_choice_ignores_test_labels_and_is_deterministic():
    tr, ytr = blobs(200, 4, 16, seed=0)
    te, yte = blobs(100, 4, 16, seed=1)
    a = linear_probe(tr, ytr, te, yte, num_classes=4, steps=60, seed=2)
    b = linear_probe(tr, ytr, te, yte[torch.randperm(100)], num_classes=4, steps=60, seed=2)
    c = linear_probe(tr, ytr, te, yte, num_classes=4, steps=60, seed=2)
    assert (a.lr, a.wd, a.holdout_top1) == (b.lr, b.wd, b.holdout_top1)
    assert a == c


def test_grid_heads_train_like_single_probes():
    tr, ytr = blobs(120, 3, 8, seed=0)
    grid = train_linear_grid(tr, ytr, num_classes=3, lrs=[1e-2, 1e-1], wds=[0.0, 0.1], steps=40, batch_size=32)
    single = train_linear(tr, ytr, num_classes=3, lr=1e-1, wd=0.1, steps=40, batch_size=32)
    torch.testing.assert_close(grid[1](tr), single(tr), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(grid[0](tr), grid[1](tr))


def test_holdout_is_stratified_and_disjoint():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    fit, held = holdout_indices(labels, share=0.2, seed=0)
    assert set(fit) | set(held) == set(range(16)) and not set(fit) & set(held)
    assert sorted(labels[held].tolist()) == [0, 0, 1]  # the single class-2 row is kept for fitting


def test_one_label_per_class_uses_the_default():
    tr, ytr = blobs(3, 3, 8, seed=0)
    ytr = torch.tensor([0, 1, 2])
    res = linear_probe(tr, ytr, tr, ytr, num_classes=3, steps=30)
    assert res.holdout_top1 is None and res.selection.startswith("default")
