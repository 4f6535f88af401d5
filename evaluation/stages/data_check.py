"""The report checks its own data: val images that are also in train, or in the pretraining images.

A val image that is also a training image (the same picture, or a resized, re-encoded or cropped copy) is
classified by a model that has seen its label: each one can turn a wrong answer into a right one, so the reported
val accuracies are inflated by at most the share of val images affected. The check runs the duplicate test of
:mod:`evaluation.probes.duplicates` with val as the query set and train as the reference:

- **identical**: the same SHA-256 of the decoded pixels (:func:`evaluation.loading.fingerprints.pixel_sha256`), whatever
  the files or datasets they come from;
- **near**: the export's features and the perceptual hashes (the same rule and defaults as ``selfsup-eval curate``).

With ``--pretrain-shards`` the same check runs between the val images and the pretraining images. That is
information, not an error: pretraining on unlabelled val images is legitimate, but the user should know the features
have seen them. The result is ``OUT/data_check.json`` (copied into ``report.json`` as ``data_check``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evaluation.loading.fingerprints import perceptual_hash, pixel_sha256
from evaluation.probes.duplicates import ImageLoader, Pair, Prints, Rule, find_duplicates
from selfsup.data.decode import decode_rgb
from selfsup.data.labelled import LabelledImages

CHECK_FILE = "data_check.json"
PRINTS_VERSION = 1
LISTED = 50  # pairs listed in report.md (all of them are in the JSON)
DEFAULT_RULE = Rule()  # frozen, so one instance serves as every call's default


Columns = tuple[list[str], list[str], list[int]]  # names, pixel SHA-256s, perceptual hashes


def _cached_prints(path: Path, compute: Callable[[], Columns]) -> tuple[list[str], list[str], np.ndarray]:
    """``(names, pixel hashes, perceptual hashes)`` read from ``path`` or computed and saved there."""
    if path.exists():
        doc = json.loads(path.read_text())
    else:
        names, shas, phash = compute()
        doc = {"names": names, "sha256": shas, "phash": phash}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
    return doc["names"], doc["sha256"], np.asarray(doc["phash"], dtype=np.int64)


def labelled_prints(images: LabelledImages, feats: torch.Tensor, *, cache_dir: Path) -> tuple[list[str], Prints]:
    """Names and :class:`Prints` (pixel SHA-256, perceptual hash, ``feats``) of a labelled set, the hashes cached
    under its identity (one decoding pass per data set)."""
    def compute() -> Columns:
        names, shas, phash = [], [], []
        for i in range(len(images)):
            img = images.image(i)
            names.append(images.describe(i))
            shas.append(pixel_sha256(img))
            phash.append(perceptual_hash(img))
        return names, shas, phash

    key = hashlib.sha256(json.dumps([PRINTS_VERSION, images.identity]).encode()).hexdigest()[:24]
    names, shas, phash = _cached_prints(Path(cache_dir) / f"prints-{key}.json", compute)
    return names, Prints(feats, shas, phash)


def unlabelled_prints(spec: str, *, weights: str, cache_dir: Path,
                      **pool_kw: Any) -> tuple[list[str], Prints, ImageLoader]:
    """Names, :class:`Prints` and image loader of unlabelled images (shards or a folder): features and perceptual
    hashes from :func:`evaluation.loading.pool.load_pool` (cached), the pixel SHA-256 from one decoding pass
    (cached)."""
    from evaluation.loading.images import iter_images
    from evaluation.loading.pool import load_pool, pool_identity, pool_sources
    from evaluation.stages.curate import pool_images

    pool = load_pool(weights=weights, images=spec, cache_dir=cache_dir, **pool_kw)
    files, urls = pool_sources(spec)

    def compute() -> Columns:
        sha = {key: pixel_sha256(decode_rgb(blob)) for key, blob in iter_images(files=files, urls=urls)}
        return pool.keys, [sha[k] for k in pool.keys], pool.phash.tolist()

    key = hashlib.sha256(json.dumps([PRINTS_VERSION, pool_identity(files, urls)]).encode()).hexdigest()[:24]
    names, shas, phash = _cached_prints(Path(cache_dir) / f"prints-{key}.json", compute)
    return names, Prints(pool.feats, shas, phash), pool_images(pool)


def labelled_loader(images: LabelledImages) -> ImageLoader:
    """Load a labelled set's images by index (for the aligned-pixel test)."""
    return lambda indices: [images.image(i) for i in indices]


def overlap(val_names: list[str], val: Prints, ref_names: list[str], ref: Prints, *, rule: Rule,
            val_images: ImageLoader, ref_images: ImageLoader) -> dict[str, Any]:
    """How many val images have a copy in the reference set, and the pairs (val image, reference image)."""
    pairs: list[Pair] = find_duplicates(val, ref, rule=rule, images=val_images, ref_images=ref_images)
    affected = {p.a for p in pairs}
    identical = {p.a for p in pairs if p.kind == "identical"}
    return {"num_val": len(val), "num_reference": len(ref), "affected": len(affected),
            "share": len(affected) / max(len(val), 1), "identical": len(identical),
            "near": len(affected - identical),
            "pairs": [{"val": val_names[p.a], "reference": ref_names[p.b], "kind": p.kind,
                       "similarity": round(p.similarity, 4), "hash_distance": p.hash_distance} for p in pairs]}


def run_data_check(train: LabelledImages, val: LabelledImages, train_feats: torch.Tensor, val_feats: torch.Tensor,
                   *, out: Path, model: str, weights: str | None = None, pretrain_shards: str | None = None,
                   rule: Rule = DEFAULT_RULE, **pool_kw: Any) -> dict[str, Any]:
    """Check val against train (and against ``pretrain_shards`` with the export ``weights``); write and return
    ``OUT/data_check.json``. ``pool_kw``: batch_size, num_workers, device, img_size for the shards' features."""
    cache = Path(out) / "cache"
    val_names, val_prints = labelled_prints(val, val_feats, cache_dir=cache)
    train_names, train_prints = labelled_prints(train, train_feats, cache_dir=cache)
    rule = rule.calibrated_to(train_prints.phash)  # look-alike data sets: pixels alone do not make a copy
    val_images = labelled_loader(val)
    check: dict[str, Any] = {"rule": rule.describe(), "model": model, "val_in_pretraining": None,
                             "val_in_train": overlap(val_names, val_prints, train_names, train_prints, rule=rule,
                                                     val_images=val_images, ref_images=labelled_loader(train))}
    if pretrain_shards:
        names, prints, loader = unlabelled_prints(pretrain_shards, weights=weights, cache_dir=cache, **pool_kw)
        check["val_in_pretraining"] = {"shards": pretrain_shards, **overlap(
            val_names, val_prints, names, prints, rule=rule, val_images=val_images, ref_images=loader)}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / CHECK_FILE).write_text(json.dumps(check, indent=1))
    return check


def check_summary(check: dict[str, Any]) -> dict[str, Any]:
    """The counts of a check, without the pairs (what each stage JSON carries)."""
    def counts(part: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if part is None else {k: v for k, v in part.items() if k != "pairs"}

    return {"file": CHECK_FILE, "val_in_train": counts(check["val_in_train"]),
            "val_in_pretraining": counts(check["val_in_pretraining"])}


def identical_check(val: list[tuple[str, Image.Image | Callable[[], Image.Image]]],
                    train: list[tuple[str, Image.Image | Callable[[], Image.Image]]]) -> dict[str, Any]:
    """Val images whose decoded pixels (SHA-256) equal a training image's: the check of a data set without a
    labelled-folder layout (detection boxes), where no features are computed. Items are ``(name, image or loader)``.
    Near-duplicates are not looked for (``near`` is None)."""
    def sha(item: Image.Image | Callable[[], Image.Image]) -> str:
        return pixel_sha256(item() if callable(item) else item)

    first: dict[str, str] = {}
    for name, item in train:
        first.setdefault(sha(item), name)
    pairs = [{"val": name, "reference": first[h], "kind": "identical", "similarity": 1.0, "hash_distance": 0}
             for name, item in val if (h := sha(item)) in first]
    return {"rule": "identical decoded pixels (SHA-256); near-duplicates are not checked here",
            "val_in_train": {"num_val": len(val), "num_reference": len(train), "affected": len(pairs),
                             "share": len(pairs) / max(len(val), 1), "identical": len(pairs), "near": None,
                             "pairs": pairs}}
