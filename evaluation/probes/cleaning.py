"""Outliers and label issues of an image set from its features, with cleanlab.

- :func:`outlier_scores`: cleanlab's ``OutOfDistribution`` fitted on the L2-normalised features: the score of an
  image is ``exp(-mean cosine distance to its k = 10 nearest other images)`` in (0, 1]; low = few close images
  (a low-density, atypical image). ``Datalab``'s ``outlier`` issue ranks by the same mean distance (it rescales the
  exponent by the median distance), so the order is the same.
- :func:`find_label_issues`: confident learning (Northcutt, Jiang & Chuang 2021). Out-of-fold predicted
  probabilities: a logistic regression on the L2-normalised features, fitted by scikit-learn's
  ``cross_val_predict`` on 4/5 of the images and predicting the 5th it never saw (5 stratified folds); cleanlab's
  ``filter.find_label_issues`` keeps the images whose given label the out-of-fold model contradicts beyond the
  per-class confidence thresholds (``prune_by_noise_rate``), ranked by ``rank.get_label_quality_scores``
  (self-confidence: the out-of-fold probability of the given label; low = suspicious).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

LOGREG_C = 10.0  # weak regularisation: the features are unit vectors, so C = 1 underfits
FOLDS = 5


def _normalised(feats: torch.Tensor | np.ndarray) -> np.ndarray:
    x = torch.as_tensor(feats, dtype=torch.float32)
    return torch.nn.functional.normalize(x, dim=1).numpy().astype(np.float64)


def outlier_scores(feats: torch.Tensor | np.ndarray, *, k: int = 10) -> np.ndarray:
    """(n,) cleanlab ``OutOfDistribution`` scores of the images (module docstring); low = outlier."""
    from cleanlab.outlier import OutOfDistribution

    x = _normalised(feats)
    k = max(1, min(k, len(x) - 1))
    return np.asarray(OutOfDistribution(params={"k": k}).fit_score(features=x, verbose=False), dtype=np.float64)


@dataclass
class LabelIssues:
    """``indices``: images whose label looks wrong, most suspicious first; ``suggested``: (n,) the out-of-fold
    model's class of every image; ``quality``: (n,) cleanlab's label quality score (low = suspicious);
    ``pred_probs``: (n, c) the out-of-fold probabilities; ``folds``: how many folds were used."""

    indices: np.ndarray
    suggested: np.ndarray
    quality: np.ndarray
    pred_probs: np.ndarray
    folds: int


def out_of_fold_probs(feats: torch.Tensor | np.ndarray, labels: np.ndarray, *, num_classes: int,
                      seed: int = 0) -> tuple[np.ndarray, int]:
    """(n, c) out-of-fold probabilities of a logistic regression on the L2-normalised features, and the folds used
    (5, fewer when the smallest class has fewer images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.asarray(labels, dtype=np.int64)
    folds = int(min(FOLDS, max(2, np.bincount(labels, minlength=num_classes)[np.unique(labels)].min())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class smaller than the folds: sklearn warns, still works
        probs = cross_val_predict(LogisticRegression(C=LOGREG_C, max_iter=2000), _normalised(feats), labels, cv=cv,
                                  method="predict_proba")
    full = np.zeros((len(labels), num_classes))
    full[:, np.unique(labels)] = probs  # sklearn's columns are the classes present, in order
    return full, folds


def find_label_issues(feats: torch.Tensor | np.ndarray, labels: np.ndarray, *, num_classes: int,
                      seed: int = 0) -> LabelIssues:
    """Confident learning on out-of-fold probabilities (module docstring)."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs, folds = out_of_fold_probs(feats, labels, num_classes=num_classes, seed=seed)
    present = np.unique(labels)
    remap = np.full(num_classes, -1)
    remap[present] = np.arange(len(present))  # cleanlab wants classes 0..c-1 all present
    sub = probs[:, present] / np.maximum(probs[:, present].sum(1, keepdims=True), 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = cl_find(remap[labels], sub, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(remap[labels], sub)
    return LabelIssues(np.asarray(issues, dtype=np.int64), present[sub.argmax(1)], quality, probs, folds)
