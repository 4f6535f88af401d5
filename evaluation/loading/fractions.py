"""Label fractions: seeded, stratified subsets of the training labels, shared by every model.

For a fraction ``f`` each class ``c`` with ``n_c`` training images keeps ``max(1, round(f * n_c))`` of them,
drawn without replacement with a generator seeded by ``seed``; so every class is present, class balance
follows the training set, and the same (fraction, seed) gives the same subset for every model.
Items without one class each (detection images, whose boxes are kept together) use :func:`nested_subset`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.errors import ConfigError, DataError


def parse_fractions(text: str) -> list[float]:
    """``"0.01,0.1,1.0"`` -> ``[0.01, 0.1, 1.0]``; each must be in (0, 1]."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--label-fractions={text!r}; expected comma-separated numbers in (0, 1]") from None
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if not values or bad:
        raise ConfigError(f"--label-fractions={text!r}; expected comma-separated numbers in (0, 1]")
    return sorted(set(values))


def fraction_key(fraction: float) -> str:
    """Stable text key of a fraction (``0.1`` -> ``"0.1"``)."""
    return repr(float(fraction))


def stratified_subset(labels: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified subset: ``max(1, round(fraction * n_c))`` per class, seeded.

    Args:
        labels: (n,) class index of every training image.
        fraction: share of each class to keep, in (0, 1].
        seed: generator seed; the same seed always gives the same indices.
    """
    _check_fraction(fraction)
    rng = np.random.default_rng([seed, int(round(fraction * 1e6))])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = min(len(idx), max(1, int(round(fraction * len(idx)))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def nested_subset(keys: Sequence[Any], *, fraction: float, seed: int) -> list[Any]:
    """Sorted ``keys`` of a seeded, nested subset: the first ``max(1, ceil(fraction * n))`` of one seeded
    permutation of the sorted keys. The input order does not matter, and for one seed a smaller fraction's subset
    lies inside a larger one's; used for detection label fractions and the detection hold-out split.
    """
    _check_fraction(fraction)
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    n = max(1, math.ceil(round(fraction * len(keys), 6)))
    return sorted(keys[i] for i in order[:n])


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label fraction {fraction} is outside (0, 1]; expected a number in (0, 1]")


def label_subsets(labels: np.ndarray, *, fractions: list[float], seeds: list[int], data_identity: str,
                  path: Path | None = None) -> dict[str, dict[str, list[int]]]:
    """``{fraction_key: {str(seed): indices}}`` for every fraction and seed, saved to / reused from ``path``.

    The saved file records ``data_identity``; a file made for other data raises :class:`DataError` rather than
    silently mixing subsets.
    """
    saved: dict = {}
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("data_identity") != data_identity:
            raise DataError(f"{path}: was made for other training data ({saved.get('data_identity')}); "
                            "expected a fresh --out folder or the same --train/--max-train")
    subsets: dict[str, dict[str, list[int]]] = saved.get("subsets", {})
    changed = False
    for f in fractions:
        per_seed = subsets.setdefault(fraction_key(f), {})
        for s in seeds:
            if str(s) not in per_seed:
                per_seed[str(s)] = stratified_subset(labels, fraction=f, seed=s).tolist()
                changed = True
    if path is not None and (changed or not path.exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data_identity": data_identity, "num_train": int(len(labels)),
                                    "subsets": subsets}))
    return {fraction_key(f): {str(s): subsets[fraction_key(f)][str(s)] for s in seeds} for f in fractions}
