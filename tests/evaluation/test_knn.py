"""kNN: DINO parity, ~100% on separable features, ~chance on shuffled labels, chunking does not change results."""

from __future__ import annotations

import torch

from selfsup.knn import evaluate_knn, knn_classify, topk_accuracy


def clusters(n: int, c: int, d: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """n points around c random unit centres in d dims (separable for small spread)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(c, d, generator=torch.Generator().manual_seed(123)), dim=1)
    labels = torch.randint(0, c, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, d, generator=g) / d**0.5, labels


def dino_knn_reference(train_features, train_labels, test_features, k, T, num_classes):
    """facebookresearch/dino eval_knn.py knn_classifier, copied (one chunk, returns predictions)."""
    retrieval_one_hot = torch.zeros(k, num_classes)
    features = test_features
    batch_size = features.shape[0]
    similarity = torch.mm(features, train_features.T)
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    candidates = train_labels.view(1, -1).expand(batch_size, -1)
    retrieved_neighbors = torch.gather(candidates, 1, indices)
    retrieval_one_hot.resize_(batch_size * k, num_classes).zero_()
    retrieval_one_hot.scatter_(1, retrieved_neighbors.view(-1, 1), 1)
    distances_transform = distances.clone().div_(T).exp_()
    probs = torch.sum(
        torch.mul(retrieval_one_hot.view(batch_size, -1, num_classes), distances_transform.view(batch_size, -1, 1)),
        1,
    )
    return probs


def test_matches_dino_reference_and_chunking_is_invisible():
    tr, ytr = clusters(300, 7, 16, seed=0, spread=3.0)
    te, _ = clusters(50, 7, 16, seed=1, spread=3.0)
    trn, ten = torch.nn.functional.normalize(tr, dim=1), torch.nn.functional.normalize(te, dim=1)
    ref = dino_knn_reference(trn, ytr, ten, k=20, T=0.07, num_classes=7)
    ours = knn_classify(tr, ytr, te, k=20, T=0.07, num_classes=7, chunk_size=1000)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    chunked = knn_classify(tr, ytr, te, k=20, T=0.07, num_classes=7, chunk_size=7)
    torch.testing.assert_close(chunked, ours, rtol=1e-5, atol=0)  # matmul blocking differs by ulps
    assert torch.equal(chunked.argmax(1), ours.argmax(1))


def test_separable_features_are_classified_perfectly():
    tr, ytr = clusters(400, 10, 32, seed=0)
    te, yte = clusters(200, 10, 32, seed=1)
    res = evaluate_knn(tr, ytr, te, yte, ks=(10, 20, 100, 200), num_classes=10)
    assert set(res) == {10, 20, 100, 200}
    for row in res.values():
        assert row["top1"] >= 0.98 and row["top5"] >= row["top1"]


def test_shuffled_labels_give_chance():
    tr, ytr = clusters(2000, 10, 32, seed=0)
    te, yte = clusters(1000, 10, 32, seed=1)
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(5))]
    acc = evaluate_knn(tr, shuffled, te, yte, ks=(20,), num_classes=10)[20]["top1"]
    assert 0.04 < acc < 0.17  # chance is 0.10


def test_k_larger_than_train_set_is_clipped_and_top5_only_above_five_classes():
    tr, ytr = clusters(12, 3, 8, seed=0)
    te, yte = clusters(9, 3, 8, seed=1)
    res = evaluate_knn(tr, ytr, te, yte, ks=(200,), num_classes=3)
    assert res[200]["top1"] > 0.9 and "top5" not in res[200]
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert topk_accuracy(scores, torch.tensor([1, 1]), 1) == 0.5
    assert topk_accuracy(scores, torch.tensor([1, 1]), 2) == 1.0
