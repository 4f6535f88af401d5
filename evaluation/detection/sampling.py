"""Label-fraction sampling for detection: a seeded subset of the training images.

Fractions are sampled per *image* (all boxes of a chosen image are kept), from one permutation of
the sorted image ids per seed, so that

* every model of a comparison (pretrained, random init, other timm weights) sees the same images
  for a given ``(fraction, seed)``: the subset depends on nothing else;
* subsets are nested: the 25 % images are the first quarter of the 100 % order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from selfsup.errors import ConfigError


def sample_label_fraction(image_ids: Sequence[int], *, fraction: float, seed: int) -> list[int]:
    """Returns the sorted image ids labelled at ``fraction`` for ``seed`` (at least one image).

    Args:
        image_ids: Ids of all training images (order does not matter).
        fraction: Share of images to keep, in ``(0, 1]``.
        seed: Sampling seed; the same seed gives the same images for every model.

    Raises:
        ConfigError: ``fraction`` is outside ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--label-fractions: {fraction} is outside (0, 1]")
    ids = sorted(image_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n = max(1, math.ceil(round(fraction * len(ids), 6)))
    return sorted(ids[i] for i in order[:n])
