"""Duplicate images in one set, or between two sets: identical copies by hash, near-duplicates by features AND pixels.

Used by ``selfsup-eval curate`` (within a pool) and by the report's data check (val images against train, and
against the pretraining shards). Each image is described by :class:`Prints`: its features (the export's pooled
embedding), an exact hash (SHA-256 of the file or of the decoded pixels) and a 64-bit perceptual hash
(:mod:`evaluation.loading.fingerprints`).

The rule (:func:`find_duplicates`):

1. **Identical**: the same exact hash. Reported with similarity 1.0, found before anything else.
2. **Near-duplicate**: among each image's :data:`NEIGHBOURS` nearest images by cosine similarity of the features,
   a pair with cosine >= ``threshold`` that the pixels confirm: the Hamming distance of the two perceptual hashes
   is <= ``max_hash_distance``, **or** their grey pixels correlate >= ``pixel_correlation`` once aligned
   (:func:`aligned_correlation`: one image's crops at 81-100% of its side, on a 5x5 grid of offsets, against the
   other whole image). The second test reads the images of the close pairs the hash did not confirm.

Why both: at small sizes the features alone mix copies with different photos of the same class; the perceptual
hash survives resizing and JPEG re-encoding but not crops, which the aligned correlation finds. The measurements
behind the defaults (``benchmarks/curate_cifar10.py --pixel-stats``) are in docs/select.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from evaluation.loading.fingerprints import hash_distance
from evaluation.probes.retrieval import nearest_neighbours

DUP_THRESHOLD = 0.90  # cosine a near-duplicate needs at least (with the pixels' confirmation)
MAX_HASH_DISTANCE = 10  # perceptual-hash bits (of 64) that may differ for the pixels to confirm
PIXEL_CORRELATION = 0.95  # aligned grey-pixel correlation that confirms a pair the hash does not (crops)
NEIGHBOURS = 10  # nearest images searched per image
VIEW_SIZE = 32  # side of the grey thumbnails the alignment compares
VIEW_SCALES = (1.0, 15 / 16, 7 / 8, 13 / 16)  # crop sizes tried, as a share of the image's side
VIEW_OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)  # crop positions tried, as a share of the free margin

ImageLoader = Callable[[list[int]], list[Image.Image]]  # indices -> their decoded images, in that order


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
    pixel_correlation: float = PIXEL_CORRELATION
    neighbours: int = NEIGHBOURS

    def describe(self) -> str:
        """One sentence for reports: what a near-duplicate is under these thresholds."""
        pixels = (f", or aligned grey pixels correlating >= {self.pixel_correlation:g} (crops)"
                  if self.pixel_correlation <= 1
                  else "; the aligned-pixel test is off: different images of this data set are "
                  "as close by pixels as copies")
        return (f"feature cosine >= {self.threshold:g} among the {self.neighbours} nearest images, confirmed by the "
                f"pixels: perceptual-hash distance <= {self.max_hash_distance} of 64 bits{pixels}")

    def calibrated_to(self, phash: np.ndarray, *, sample: int = 2000, seed: int = 0) -> Rule:
        """This rule, tightened for a data set whose *different* images are as close by pixels as copies.

        On images that look alike (solar cells, X-rays, a production line) the perceptual hashes of distinct
        images are a few bits apart, so the hash and aligned-pixel tests would confirm look-alikes as copies. The
        hash limit becomes one bit below the 1st percentile of each image's distance to its nearest *other* image
        (with a different hash) in ``phash`` (up to ``sample`` images), and when that is below this rule's limit the
        aligned-pixel test, looser still, is switched off. On CIFAR-10 that percentile is 12 bits: the default limit
        of 10 stays."""
        ph = np.asarray(phash, dtype=np.int64)
        if len(ph) > sample:
            ph = ph[np.random.default_rng(seed).choice(len(ph), sample, replace=False)]
        if len(ph) < 20:
            return self
        d = hash_distance(ph[:, None], ph[None, :]).astype(np.float64)
        d[d == 0] = np.inf  # itself, and identical copies (found by the SHA-256 anyway)
        nearest = d.min(axis=1)
        nearest = nearest[np.isfinite(nearest)]
        if not len(nearest):
            return self
        limit = int(np.percentile(nearest, 1)) - 1
        if limit >= self.max_hash_distance:
            return self
        return Rule(threshold=self.threshold, max_hash_distance=max(limit, 0), pixel_correlation=2.0,
                    neighbours=self.neighbours)


def pixel_views(img: Image.Image) -> np.ndarray:
    """(v, VIEW_SIZE**2) standardised grey thumbnails: the whole image (row 0) and its crops at :data:`VIEW_SCALES`
    of its side on the :data:`VIEW_OFFSETS` grid, each resized to ``VIEW_SIZE`` square. A large image is first
    shrunk to twice ``VIEW_SIZE`` square (the crops are shares of each side, so squashing first is the same
    alignment), so a photo costs what a thumbnail does."""
    grey = img.convert("L")
    if max(grey.size) > 2 * VIEW_SIZE:
        grey = grey.resize((2 * VIEW_SIZE, 2 * VIEW_SIZE), Image.BILINEAR)
    w, h = grey.size
    rows = []
    for s in VIEW_SCALES:
        offsets = (0.0,) if s == 1.0 else VIEW_OFFSETS
        for fx in offsets:
            for fy in offsets:
                x0, y0 = fx * w * (1 - s), fy * h * (1 - s)
                box = (x0, y0, x0 + w * s, y0 + h * s)
                v = np.asarray(grey.resize((VIEW_SIZE, VIEW_SIZE), Image.BILINEAR, box=box), np.float32).ravel()
                v = v - v.mean()
                rows.append(v / max(float(np.linalg.norm(v)), 1e-6))
    return np.stack(rows)


def aligned_correlation(views_a: np.ndarray, views_b: np.ndarray) -> float:
    """Highest correlation of one image's whole thumbnail with any crop of the other (both directions): near 1 for
    a crop, a resize or a re-encoding of the same picture (:func:`pixel_views` of each)."""
    return float(max((views_a @ views_b[0]).max(), (views_b @ views_a[0]).max()))


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


def _pixel_confirmed(candidates: list[tuple[int, int]], images: ImageLoader, ref_images: ImageLoader,
                     min_correlation: float) -> set[tuple[int, int]]:
    """The candidate pairs whose aligned pixels correlate >= ``min_correlation`` (images loaded once each)."""
    if not candidates:
        return set()
    qa = sorted({a for a, _ in candidates})
    rb = sorted({b for _, b in candidates})
    va = dict(zip(qa, map(pixel_views, images(qa))))
    vb = va if images is ref_images else {}
    missing = [b for b in rb if b not in vb]
    vb = {**vb, **dict(zip(missing, map(pixel_views, ref_images(missing))))}
    return {(a, b) for a, b in candidates if aligned_correlation(va[a], vb[b]) >= min_correlation}


def find_duplicates(query: Prints, ref: Prints | None = None, *, rule: Rule = Rule(),
                    images: ImageLoader | None = None, ref_images: ImageLoader | None = None) -> list[Pair]:
    """Identical and near-duplicate pairs within ``query`` (``ref`` None: ``a < b``) or between ``query`` images
    (``a``) and ``ref`` images (``b``); most similar first, identical ones first of all.

    ``images`` / ``ref_images`` load the decoded images of the query / reference set for the aligned-pixel test;
    without them only the perceptual hash confirms a near-duplicate."""
    within = ref is None
    ref = query if within else ref
    if len(query) == 0 or len(ref) == 0:
        return []
    pairs = _identical(query, None if within else ref)
    known = {(p.a, p.b) for p in pairs}
    k = min(rule.neighbours + int(within), len(ref))
    sims, idx = nearest_neighbours(ref.feats, query.feats, k=k)
    sims, idx = sims.numpy(), idx.numpy()
    if within:
        rows = np.arange(len(query))[:, None]
        # the image itself is among its own neighbours: drop it wherever it sits (ties with identical copies)
        own = idx == rows
        sims, idx = np.where(own, -np.inf, sims), np.where(own, rows, idx)
    dist = hash_distance(query.phash[:, None], ref.phash[idx])
    close = sims >= rule.threshold
    by_hash = close & (dist <= rule.max_hash_distance)

    def pair(i: int, c: int) -> tuple[int, int]:
        a, b = i, int(idx[i, c])
        return (min(a, b), max(a, b)) if within else (a, b)

    cells = {pair(int(i), int(c)): (int(i), int(c)) for i, c in zip(*np.nonzero(by_hash))}
    if images is not None and rule.pixel_correlation <= 1 and (within or ref_images is not None):
        crops = {pair(int(i), int(c)): (int(i), int(c)) for i, c in zip(*np.nonzero(close & ~by_hash))}
        crops = {k: v for k, v in crops.items() if k not in cells and k not in known}
        ok = _pixel_confirmed(sorted(crops), images, images if within else ref_images, rule.pixel_correlation)
        cells.update({k: v for k, v in crops.items() if k in ok})
    for (a, b), (i, c) in cells.items():
        if (a, b) in known or (within and query.hashes[a] == query.hashes[b]):
            continue
        known.add((a, b))
        pairs.append(Pair(a, b, float(sims[i, c]), int(dist[i, c]), "near"))
    return sorted(pairs, key=lambda p: (p.kind != "identical", -p.similarity, p.a, p.b))
