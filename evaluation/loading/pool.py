"""An unlabelled pool of images with its features and fingerprints, computed once and cached.

What ``selfsup-eval select`` and ``selfsup-eval curate`` work on. The pool is a folder (recursive; the key of an
image is its path relative to the folder) or webdataset shards (key ``SHARD#KEY``). One pass over it gives, per
image:

- ``feats``: (n, d) float32 pooled embeddings of the export, the same features ``embed``, kNN and the linear probe
  use (not normalised);
- ``sha256``: the hex SHA-256 of the encoded file, so byte-identical copies are found without the model;
- ``phash``: (n,) int64, the 64-bit DCT perceptual hash of the decoded image (``imagehash.phash``, 8x8 bits;
  Zauner 2010), which survives resizing and re-encoding: what the pixels say about a near-duplicate.

The pass is cached as ``CACHE/pool-<key>.safetensors``; the key covers the export's weights, the pool's files (names,
sizes, modification times) and the eval transform, so a second ``select`` with another budget reads the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from PIL import Image

from evaluation.loading.backbones import ModelSource, load_model
from evaluation.loading.features import model_transform
from evaluation.loading.images import ImageStream, embed_stream, image_files, iter_images
from evaluation.settings import DEFAULTS
from selfsup.data.decode import decode_rgb
from selfsup.data.shard_list import expand_shards
from selfsup.errors import ConfigError, DataError

POOL_VERSION = 1


@dataclass
class Pool:
    """An image pool under one export: keys, features and fingerprints (row ``i`` is image ``keys[i]``)."""

    source: str
    keys: list[str]
    feats: torch.Tensor
    sha256: list[str]
    phash: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    _files: dict[str, str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, i: int) -> Image.Image:
        """The decoded RGB image of row ``i`` (folder pools read the file; shard pools scan the key's shard)."""
        key = self.keys[i]
        if self._files is not None:
            with open(self._files[key], "rb") as f:
                return decode_rgb(f.read())
        url, _, sample_key = key.rpartition("#")
        for k, blob in iter_images(urls=[url]):
            if k == key:
                return decode_rgb(blob)
        raise DataError(f"{url}: sample {sample_key!r} is no longer in the shard; expected the pool as it was embedded")


def pool_sources(images: str) -> tuple[list[tuple[str, str]] | None, list[str] | None]:
    """``(files, None)`` for a folder of images (recursive) or ``(None, shard urls)`` for shards."""
    p = Path(images)
    if p.is_dir() and not any(n.endswith(".tar") for n in os.listdir(p)):
        return image_files(p), None
    if not p.exists() and "{" not in images and "*" not in images and "://" not in images:
        raise DataError(f"--images {images}: does not exist; expected a folder of images or webdataset shards")
    return None, expand_shards(images, strict=True)


def pool_identity(files: list[tuple[str, str]] | None, urls: list[str] | None) -> str:
    h = hashlib.sha256()
    for key, path in files or [(u, u) for u in urls or []]:
        h.update(key.encode("utf-8", "surrogateescape"))
        try:
            st = os.stat(path)
            h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:  # a remote shard: its URL is its identity
            h.update(b"\0")
    return h.hexdigest()


def load_pool(*, weights: str, images: str, cache_dir: str | Path, batch_size: int = DEFAULTS.batch_size,
              num_workers: int = DEFAULTS.num_workers,
              device: str = DEFAULTS.device, img_size: int | None = None) -> Pool:
    """Embed and fingerprint every image of ``images`` with the export ``weights`` (or read the cached pass)."""
    files, urls = pool_sources(images)
    loaded = load_model(ModelSource("pretrained", "export", weights), img_size=img_size)
    transform = model_transform(loaded)
    blob = json.dumps([POOL_VERSION, loaded.info["weights_id"], pool_identity(files, urls), repr(transform)])
    path = Path(cache_dir) / f"pool-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.safetensors"
    file_map = dict(files) if files is not None else None
    if path.exists():
        with safetensors.safe_open(str(path), "pt") as f:
            meta = f.metadata()
            feats, phash = f.get_tensor("feats"), f.get_tensor("phash").numpy()
        return Pool(images, json.loads(meta["keys"]), feats, json.loads(meta["sha256"]), phash, loaded.info,
                    file_map)
    dataset = ImageStream(transform, files=files, urls=urls, fingerprints=True)
    keys, feats, shas, phash = embed_stream(loaded.model, dataset, batch_size=batch_size, num_workers=num_workers,
                                            device=device)
    if not keys:
        raise DataError(f"--images {images}: no images found; expected a folder of images or webdataset shards")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file({"feats": feats, "phash": phash}, str(tmp),
                                metadata={"keys": json.dumps(keys), "sha256": json.dumps(shas),
                                          "weights_id": loaded.info["weights_id"]})
    tmp.replace(path)
    return Pool(images, keys, feats, shas, phash.numpy(), loaded.info, file_map)


def check_out_folder(out: Path, *, command: str, own: frozenset[str], inputs: dict[str, str | None]) -> None:
    """Refuse an ``--out`` that holds files ``command`` did not write (names outside ``own``), that is a file, or
    that lies inside one of the ``inputs`` folders (``{flag: path}``): these commands only write into ``--out``."""
    for flag, path in inputs.items():
        if path and Path(path).is_dir() and Path(out).resolve().is_relative_to(Path(path).resolve()):
            raise ConfigError(f"--out {out} is inside {flag} {path}; expected a folder outside it ({command}'s files "
                              "would become part of it)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a new or empty folder")
    foreign = sorted(n for n in os.listdir(out) if n not in own) if out.is_dir() else []
    if foreign:
        raise ConfigError(f"--out {out} holds {foreign[0]!r}, which {command} did not write; expected a new or empty "
                          f"folder, or {command}'s previous output")


def labelled_classes(root: str, *, flag: str) -> tuple[list[str], dict[str, int]]:
    """Classes of a labelled folder ``ROOT/<class>/<image>`` (sorted sub-folder names) and each image's class
    index by its path relative to ``ROOT``; at least two classes, no image outside a class folder (``flag`` names
    the option in the error)."""
    files = image_files(root)
    loose = [key for key, _ in files if len(Path(key).parts) < 2]
    if loose:
        raise DataError(f"{flag} {Path(root) / loose[0]}: an image outside any class folder; expected "
                        "DIR/<class>/<image>")
    classes = sorted({Path(key).parts[0] for key, _ in files})
    if len(classes) < 2:
        raise DataError(f"{flag} {root}: {len(classes)} class ({classes[0]}); expected at least 2 class folders "
                        "(DIR/<class>/<image>)")
    index = {c: i for i, c in enumerate(classes)}
    return classes, {key: index[Path(key).parts[0]] for key, _ in files}
