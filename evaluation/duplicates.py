"""Duplicate images in one set, or between two sets: identical copies by hash, near-duplicates by features AND pixels.

Used by ``selfsup-eval curate`` (within a pool) and by the report's data check (val images against train, and
against the pretraining shards). Each image is described by :class:`Prints`: its features (the export's pooled
embedding), an exact hash (SHA-256 of the file or of the decoded pixels) and a 64-bit perceptual hash
(:mod:`evaluation.fingerprints`).

The rule (:func:`find_duplicates`):

1. **Identical**: the same exact hash. Reported with similarity 1.0, found before anything else.
2. **Near-duplicate**: among each image's :data:`NEIGHBOURS` nearest images by cosine similarity of the features,
   a pair with cosine >= ``threshold`` that the pixels confirm: the Hamming distance of the two perceptual hashes
   is <= ``max_hash_distance``, **or** the two are each other's nearest image (mutual nearest neighbours) with
   cosine >= ``mutual_threshold``.

Why both: at 32 px the features alone mix copies with different photos of the same class (on the CIFAR-10 SimCLR
export, cosine >= 0.99 finds every planted copy but many reported pairs are different images). The perceptual hash
survives resizing and JPEG re-encoding (distance 0-6 of 64 bits) but not crops (12-30 bits for a 2-4 px crop of a
32 px image), while the features of a crop stay close (the pretraining augmentations are crops): so a crop is
accepted when it is its original's mutual nearest neighbour at a higher cosine. docs/select.md has the
measured recall and precision of these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from evaluation.fingerprints import hash_distance
from evaluation.retrieval import nearest_neighbours

DUP_THRESHOLD = 0.90  # cosine a near-duplicate needs at least (with the pixels' confirmation)
MAX_HASH_DISTANCE = 10  # perceptual-hash bits (of 64) that may differ for the pixels to confirm
MUTUAL_THRESHOLD = 0.97  # cosine of a mutual-nearest-neighbour pair the hash does not confirm (crops)
NEIGHBOURS = 10  # nearest images searched per image


@dataclass
class Prints:
    """What the duplicate test reads of ``n`` images: ``feats`` (n, d), ``hashes`` (n exact hashes: SHA-256 of the
    file or of the pixels), ``phash`` (n,) int64 perceptual hashes."""

    feats: torch.Tensor
    hashes: list[str]
    phash: np.ndarray

    def __len__(self) -> int:
        return len(self.hashes)


@dataclass(frozen=True)
class Pair:
    """Images ``a`` (of the query set) and ``b`` (of the reference set, or the same set) are copies.

    ``kind`` is ``identical`` (same exact hash; ``similarity`` 1.0) or ``near``; ``similarity`` is the features'
    cosine, ``hash_distance`` the perceptual hashes' Hamming distance (0-64)."""

    a: int
    b: int
    similarity: float
    hash_distance: int
    kind: str


@dataclass(frozen=True)
class Rule:
    """The thresholds of the near-duplicate test (module docstring)."""

    threshold: float = DUP_THRESHOLD
    max_hash_distance: int = MAX_HASH_DISTANCE
    mutual_threshold: float = MUTUAL_THRESHOLD
    neighbours: int = NEIGHBOURS

    def describe(self) -> str:
        """One sentence for reports: what a near-duplicate is under these thresholds."""
        return (f"cosine >= {self.threshold:g} among the {self.neighbours} nearest images and perceptual-hash distance "
                f"<= {self.max_hash_distance} of 64 bits, or mutual nearest neighbours at cosine >= "
                f"{self.mutual_threshold:g}")


def _identical(query: Prints, ref: Prints | None) -> list[Pair]:
    """Pairs with the same exact hash: within a set, every later copy with the first one; across, each query with
    the first reference image that has its hash."""
    first: dict[str, int] = {}
    for j, h in enumerate(query.hashes if ref is None else ref.hashes):
        first.setdefault(h, j)
    pairs = []
    for i, h in enumerate(query.hashes):
        j = first.get(h)
        if j is not None and (ref is not None or j != i):
            pairs.append(Pair(i, j, 1.0, 0, "identical") if ref is not None else Pair(j, i, 1.0, 0, "identical"))
    return pairs


def find_duplicates(query: Prints, ref: Prints | None = None, *, rule: Rule = Rule()) -> list[Pair]:
    """Identical and near-duplicate pairs within ``query`` (``ref`` None: ``a < b``) or between ``query`` images
    (``a``) and ``ref`` images (``b``); most similar first, identical ones first of all."""
    within = ref is None
    ref = query if within else ref
    if len(query) == 0 or len(ref) == 0:
        return []
    pairs = _identical(query, None if within else ref)
    known = {(p.a, p.b) for p in pairs}
    k = min(rule.neighbours + int(within), len(ref))
    sims, idx = nearest_neighbours(ref.feats, query.feats, k=k)
    sims, idx = sims.numpy(), idx.numpy()
    rows = np.arange(len(query))[:, None]
    if within:
        # the image itself is among its own neighbours: drop it wherever it sits (ties with identical copies)
        own = idx == rows
        sims, idx = np.where(own, -np.inf, sims), np.where(own, rows, idx)
    dist = hash_distance(query.phash[:, None], ref.phash[idx])
    # mutual nearest neighbours: j is i's nearest image and i is j's
    top_q = idx[np.arange(len(query)), sims.argmax(1)]
    if within:
        top_r = top_q
    else:
        r_sims, r_idx = nearest_neighbours(query.feats, ref.feats, k=1)
        top_r = r_idx[:, 0].numpy()
    mutual = (idx == top_q[:, None]) & (top_r[idx] == rows)
    keep = (sims >= rule.threshold) & ((dist <= rule.max_hash_distance) | (mutual & (sims >= rule.mutual_threshold)))
    for i, c in zip(*np.nonzero(keep)):
        a, b = int(i), int(idx[i, c])
        if within:
            a, b = min(a, b), max(a, b)
        if (a, b) in known or (within and query.hashes[a] == query.hashes[b]):
            continue
        known.add((a, b))
        pairs.append(Pair(a, b, float(sims[i, c]), int(dist[i, c]), "near"))
    return sorted(pairs, key=lambda p: (p.kind != "identical", -p.similarity, p.a, p.b))
