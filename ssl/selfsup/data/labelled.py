"""Labelled image datasets (evaluation, and the kNN monitor of a run): image folders, Hugging Face datasets on
disk, webdataset shards.

Every source is opened into a :class:`LabelledImages`: a random-access list of (RGB image, class index)
with the class names, the integer labels as one array, and an ``identity`` string that changes when the
data changes (it keys the feature cache). Images are decoded with :func:`selfsup.data.decode.decode_rgb`.

Supported layouts (``selfsup-eval --train`` / ``--val``, ``monitor.data``):

- an image folder ``ROOT/<class>/<image>`` (class = sub-folder name, sorted);
- a Hugging Face dataset written with ``Dataset.save_to_disk`` (an ``Image`` column and a ``ClassLabel`` or
  integer ``label`` column);
- webdataset shards holding an image (``jpg``/``jpeg``/``png``/``webp``) and ``cls``: a ``.tar`` file, a folder of
  ``.tar`` files, or a brace pattern such as ``shards/train-{000000..000009}.tar``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from selfsup.data.decode import IMAGE_EXTENSIONS, IMAGE_KEYS, BadSample, decode_rgb, to_rgb
from selfsup.data.shard_list import expand_shards
from selfsup.errors import DataError

logger = logging.getLogger(__name__)



class LabelledImages:
    """A random-access labelled image set.

    Attributes:
        source: the path the user gave.
        classes: class names; label ``i`` means ``classes[i]``.
        labels: (n,) int64 class indices.
        identity: a string that changes when the data (or its selection) changes.
    """

    def __init__(
        self,
        *,
        source: str,
        classes: list[str],
        labels: np.ndarray,
        load: Callable[[int], Image.Image],
        describe: Callable[[int], str],
        identity: str,
    ) -> None:
        self.source = source
        self.classes = classes
        self.labels = labels.astype(np.int64)
        self._load = load
        self._describe = describe
        self.identity = identity

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; a broken file raises :class:`DataError` naming it."""
        try:
            return self._load(index)
        except BadSample as e:
            raise DataError(f"{self._describe(index)}: cannot decode image ({e.reason}); "
                            "expected a valid image") from None

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from: its file, ``SHARD#KEY`` or ``DATASET[i]`` (for messages and reports)."""
        return self._describe(index)

    def subset(self, indices: Sequence[int], *, tag: str) -> LabelledImages:
        """The images at ``indices`` (in that order); ``tag`` names the selection in ``identity``."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledImages(
            source=self.source,
            classes=self.classes,
            labels=self.labels[idx],
            load=lambda i: self._load(int(idx[i])),
            describe=lambda i: self._describe(int(idx[i])),
            identity=f"{self.identity}|{tag}",
        )


class TransformedImages(torch.utils.data.Dataset):
    """``(transform(image), label)`` pairs over a :class:`LabelledImages`, for a DataLoader."""

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], torch.Tensor],
                 indices: Sequence[int] | None = None) -> None:
        self.images = images
        self.transform = transform
        self.indices = list(range(len(images))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        return self.transform(self.images.image(j)), int(self.images.labels[j])


def _sha(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))  # tar member names that are not UTF-8: their raw bytes
        h.update(b"\0")
    return h.hexdigest()[:16]


def _read_file(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return decode_rgb(f.read())


def _open_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    """Classes = sub-folders that hold images; an empty one is skipped with a warning (not a class)."""
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes: list[str] = []
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for name in folders:
        found = [os.path.join(dirpath, n) for dirpath, _, names in sorted(os.walk(root / name))
                 for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:  # counting it would change the chance level and the stratified splits
            empty.append(name)
            continue
        files += found
        labels += [len(classes)] * len(found)
        classes.append(name)
    if not folders:
        raise DataError(f"{root}: no images found: the folder has no class sub-folders; "
                        "expected an image folder ROOT/<class>/<image>.jpg")
    if not files:
        raise DataError(f"{root}: no images found in its {len(folders)} class folder(s); "
                        "expected an image folder ROOT/<class>/<image>.jpg")
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        logger.warning("%s: skipped %d class folder(s) without images (%s); %d classes remain",
                       root, len(empty), shown, len(classes))
    return classes, labels, files


def _read_shards(urls: list[str]) -> tuple[list[bytes], list[int], list[str]]:
    import webdataset as wds

    blobs: list[bytes] = []
    labels: list[int] = []
    keys: list[str] = []
    for url in urls:
        if os.path.isfile(url) and os.path.getsize(url) == 0:
            raise DataError(f"{url}: empty file (0 bytes); expected a .tar of image + cls samples")
        first = len(blobs)
        try:
            samples = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))
        except tarfile.TarError as e:
            raise DataError(f"{url}: not a readable tar file ({e}); expected a .tar of image + cls samples") from None
        for sample in samples:
            img_key = next((k for k in IMAGE_KEYS if k in sample), None)
            if img_key is None or "cls" not in sample:
                raise DataError(f"{url}: sample {sample.get('__key__')!r} has keys {sorted(sample)}; "
                                f"expected an image ({'/'.join(IMAGE_KEYS)}) and 'cls'")
            try:
                labels.append(int(sample["cls"].decode().strip()))
            except ValueError:
                raise DataError(f"{url}: sample {sample['__key__']!r} has cls={sample['cls'][:20]!r}; "
                                "expected an integer class index") from None
            blobs.append(sample[img_key])
            keys.append(f"{url}#{sample['__key__']}")
        if len(blobs) == first:  # evaluation is strict: an empty shard would silently change the data set
            raise DataError(f"{url}: empty tar (no samples); expected image + cls samples")
    return blobs, labels, keys


def _open_hf(path: Path) -> tuple[Any, str, str, list[str] | None]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path}: is a DatasetDict with splits {list(ds)}; expected one split, "
                        f"e.g. {path}/{list(ds)[0]}")
    image_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label_col is None:
        label_col = next((c for c in ("label", "labels", "cls") if c in ds.features), None)
    if image_col is None or label_col is None:
        raise DataError(f"{path}: columns {list(ds.features)}; expected an Image column and a ClassLabel/'label' "
                        "column")
    feature = ds.features[label_col]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return ds, image_col, label_col, names


def open_labelled(path: str, *, classes: list[str] | None = None, max_items: int | None = None,
                  subset_seed: int = 0, allow_pipe: bool = False) -> LabelledImages:
    """Open a labelled image set (see the module docstring for the layouts).

    Args:
        path: image folder, saved Hugging Face dataset, or webdataset shards.
        classes: the class names of the training set; when given, labels are mapped to these names
            (a class that is not among them raises :class:`DataError`).
        max_items: keep at most this many images, a seeded random (not per-class) selection.
        subset_seed: seed of that selection.
        allow_pipe: accept ``pipe:CMD`` lines in a shard list (they run CMD in a shell); refused by default.
    """
    p = Path(path)
    names: list[str]
    raw_labels: list[int]
    if "{" not in path and not p.exists() and not glob.glob(path):
        raise DataError(f"{path}: does not exist; expected an image folder, a saved HF dataset or .tar shards")
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        ds, image_col, label_col, label_names = _open_hf(p)
        raw_labels = [int(x) for x in ds[label_col]]
        names = label_names if label_names is not None else [str(c) for c in sorted(set(raw_labels))]
        if label_names is None:
            raw_labels = [names.index(str(x)) for x in raw_labels]

        def load(i: int) -> Image.Image:
            return to_rgb(ds[int(i)][image_col])

        def describe(i: int) -> str:
            return f"{path}[{i}]"

        identity = f"hf:{p.resolve()}:{ds._fingerprint}"
    elif p.is_dir() and not glob.glob(os.path.join(path, "*.tar")):
        names, raw_labels, files = _open_image_folder(p)

        def load(i: int) -> Image.Image:
            return _read_file(files[i])

        def describe(i: int) -> str:
            return files[i]

        identity = f"folder:{p.resolve()}:{_sha([os.path.relpath(f, p) for f in files])}"
    else:
        urls = expand_shards(path, strict=True, allow_pipe=allow_pipe)
        blobs, int_labels, keys = _read_shards(urls)
        names = [str(c) for c in sorted(set(int_labels))]
        raw_labels = [names.index(str(x)) for x in int_labels]

        def load(i: int) -> Image.Image:
            return decode_rgb(blobs[i])

        def describe(i: int) -> str:
            return keys[i]

        identity = f"wds:{_sha([os.path.abspath(u) for u in urls] + keys)}"
    labels = np.asarray(raw_labels, dtype=np.int64)
    if classes is not None and classes != names:
        lookup = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in names if c not in lookup]
        if unknown:
            raise DataError(f"{path}: class {unknown[0]!r} is not among the training classes {classes[:10]}; "
                            "expected the same class names in train and val")
        labels = np.asarray([lookup[names[y]] for y in labels], dtype=np.int64)
        names = classes
    images = LabelledImages(source=path, classes=names, labels=labels, load=load, describe=describe,
                            identity=identity)
    if max_items is not None and max_items < len(images):
        if max_items < 1:
            raise DataError(f"max items = {max_items}; expected a positive number")
        keep = np.sort(np.random.default_rng(subset_seed).permutation(len(images))[:max_items])
        images = images.subset(keep, tag=f"max{max_items}@{subset_seed}")
    return images
