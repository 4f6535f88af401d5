"""Which unlabelled images to label next: cold-start / low-budget selection strategies on frozen features.

Pure functions on arrays. ``x``: (n, d) pool features, ``labelled``: (m, d) features of images that are already
labelled (they count as chosen: new picks complement them). Features are L2-normalised first, so Euclidean
distances follow the cosine similarity the kNN evaluation uses. Every strategy returns a :class:`Selection`:
``budget`` distinct pool indices in the order chosen and a score per pick (what made it chosen).

- ``typiclust``: Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and Low
  Budgets", ICML 2022. Cluster the pool and the labelled images into ``m + budget`` clusters (k-means); repeatedly
  take the largest cluster that holds no chosen image and pick its most *typical* image: the inverse mean distance
  to its ``k = 20`` nearest neighbours inside the cluster. Dense, representative images first, one per cluster.
- ``probcover``: Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022.
  Balls of radius ``delta`` around each image; greedily pick the image whose ball covers the most images not yet
  covered; ``delta`` is the largest radius at which 95% of the balls stay within one k-means cluster (``purity``).
- ``kcenter``: Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
  ICLR 2018. Greedy k-center: repeatedly the image farthest from everything chosen or labelled.
- ``random``: a seeded uniform draw, the baseline every other strategy must beat.

The strategies come from scikit-activeml (``TypiClust``, ``ProbCover``, ``CoreSet``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfsup.errors import ConfigError

STRATEGIES = ("typiclust", "probcover", "kcenter", "random")
DEFAULT_STRATEGY = "typiclust"
PROBCOVER_MAX_POOL = 30_000  # ProbCover builds a dense (n, n) distance matrix: 30,000^2 float64 = 7.2 GB


@dataclass
class Selection:
    """``indices``: (budget,) distinct pool indices in the order chosen; ``scores``: (budget,) the strategy's score
    of each pick when it was chosen (``score_name`` says what it is); ``info``: what the strategy decided."""

    indices: np.ndarray
    scores: np.ndarray
    score_name: str
    info: dict[str, Any] = field(default_factory=dict)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _problem(x: np.ndarray, labelled: np.ndarray | None,
             labelled_y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-activeml's view: X = pool then labelled rows, y = NaN for the pool, the labelled rows' labels (or 0)."""
    n = len(x)
    lab = np.zeros((0, x.shape[1])) if labelled is None else np.asarray(labelled)
    X = _normalise(np.concatenate([x, lab])) if len(lab) else _normalise(x)
    y = np.full(len(X), np.nan)
    if len(lab):
        y[n:] = 0 if labelled_y is None else np.asarray(labelled_y, dtype=np.float64)
    return X, y, np.arange(n)


def select(x: np.ndarray, *, budget: int, strategy: str = DEFAULT_STRATEGY, labelled: np.ndarray | None = None,
           labelled_y: np.ndarray | None = None, seed: int = 0, num_classes: int | None = None) -> Selection:
    """Choose ``budget`` images of the pool ``x`` (n, d) with ``strategy``; ``labelled`` (m, d) count as chosen.

    ``num_classes`` is ProbCover's guess of the number of classes (it sets the k-means purity test that picks
    ``delta``; default: the labelled images' classes, else 10)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    n = len(x)
    if not 1 <= budget <= n:
        raise ConfigError(f"--budget {budget}; expected 1 to {n} (the images in the pool that are not labelled)")
    if strategy == "random":
        idx = np.random.default_rng(seed).permutation(n)[:budget]
        return Selection(idx, np.zeros(budget), "none", {})
    X, y, candidates = _problem(x, labelled, labelled_y)
    if strategy == "typiclust":
        from skactiveml.pool import TypiClust

        idx, util = TypiClust(k=20, cluster_algo_dict={"n_init": 3}, random_state=seed).query(
            X, y, candidates=candidates, batch_size=budget, return_utilities=True)
        return Selection(np.asarray(idx), util[np.arange(budget), idx], "typicality",
                         {"clusters": len(X) - n + budget, "k": 20})
    if strategy == "kcenter":
        from skactiveml.pool import CoreSet

        idx, util = CoreSet(random_state=seed).query(X, y, candidates=candidates, batch_size=budget,
                                                     return_utilities=True)
        return Selection(np.asarray(idx), util[np.arange(budget), idx], "distance_to_chosen", {})
    if n > PROBCOVER_MAX_POOL:
        raise ConfigError(f"--strategy probcover with a pool of {n} images; expected at most {PROBCOVER_MAX_POOL} "
                          "(it holds an n x n distance matrix): use --strategy typiclust or kcenter")
    from skactiveml.pool import ProbCover

    k = num_classes or (len(np.unique(labelled_y)) if labelled_y is not None and len(labelled_y) else 10)
    strat = ProbCover(n_classes=k, deltas=np.round(np.arange(0.05, 1.45, 0.05), 2), random_state=seed,
                      cluster_algo_dict={"n_init": 3})
    idx, util = strat.query(X, y, candidates=candidates, batch_size=budget, return_utilities=True)
    return Selection(np.asarray(idx), util[np.arange(budget), idx], "newly_covered", {"delta": float(strat.delta_max_),
                                                                                      "purity_clusters": k})
