"""Unlabelled images as a stream: a folder (recursive) or webdataset shards, decoded by the project's checked
decoder, and their pooled embeddings batch by batch. What ``selfsup-eval embed``, ``select``, ``curate`` and the
report's data check read images with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from evaluation.loading.features import embed, resolve_device
from evaluation.loading.fingerprints import file_sha256, perceptual_hash
from selfsup.data.decode import IMAGE_EXTENSIONS, IMAGE_KEYS, BadSample, decode_rgb
from selfsup.errors import DataError


def image_files(root: str | Path) -> list[tuple[str, str]]:
    """``(key, path)`` of every image under ``root`` (recursive, sorted); the key is the path relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--images {root}: not a folder; expected a folder of images")
    files = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        for n in sorted(names):
            if n.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(dirpath, n)
                files.append((os.path.relpath(path, root), path))
    if not files:
        raise DataError(f"--images {root}: no images found (expected {', '.join(IMAGE_EXTENSIONS)} files)")
    return files


def iter_images(*, files: list[tuple[str, str]] | None = None, urls: list[str] | None = None,
                worker: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, bytes]]:
    """``(key, encoded bytes)`` of a folder's ``files`` (from :func:`image_files`) or of shard ``urls``; with
    ``worker=(id, count)`` only that DataLoader worker's share (every ``count``-th file or shard)."""
    wid, nw = worker
    if files is not None:
        for key, path in files[wid::nw]:
            with open(path, "rb") as f:
                yield key, f.read()
        return
    import webdataset as wds

    for url in (urls or [])[wid::nw]:
        for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            img_key = next((k for k in IMAGE_KEYS if k in sample), None)
            if img_key is None:
                raise DataError(f"{url}: sample {sample.get('__key__')!r} has keys {sorted(sample)}; "
                                f"expected an image ({'/'.join(IMAGE_KEYS)})")
            yield f"{url}#{sample['__key__']}", sample[img_key]


class ImageStream(torch.utils.data.IterableDataset):
    """``(key, transformed image)`` from a folder or shards, split over DataLoader workers; with ``fingerprints``
    ``(key, transformed image, file SHA-256, perceptual hash)`` (:mod:`evaluation.loading.fingerprints`)."""

    def __init__(self, transform: Any, *, files: list[tuple[str, str]] | None = None,
                 urls: list[str] | None = None, fingerprints: bool = False) -> None:
        super().__init__()
        self.transform, self.files, self.urls, self.fingerprints = transform, files, urls, fingerprints

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = torch.utils.data.get_worker_info()
        worker = (0, 1) if info is None else (info.id, info.num_workers)
        for key, blob in iter_images(files=self.files, urls=self.urls, worker=worker):
            try:
                img = decode_rgb(blob)
            except BadSample as e:
                raise DataError(f"{key}: cannot decode image ({e.reason}); expected a valid image") from None
            if self.fingerprints:
                yield key, self.transform(img), file_sha256(blob), perceptual_hash(img)
            else:
                yield key, self.transform(img)


def embed_stream(model: torch.nn.Module, dataset: ImageStream, *, batch_size: int, num_workers: int,
                 device: str) -> tuple[Any, ...]:
    """Run the frozen backbone over an :class:`ImageStream` (bf16 autocast on CUDA): ``(keys, (n, d) embeddings)``,
    then, for a stream with fingerprints, ``(file SHA-256s, (n,) int64 perceptual hashes)``."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    columns: list[list[Any]] = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    with torch.inference_mode():
        for batch_keys, x, *prints in loader:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                row = [list(batch_keys), embed(model, x.to(dev)).float().cpu(), *prints]
            columns = columns or [[] for _ in row]
            for col, value in zip(columns, row):
                col.append(value)
    if not columns:
        return ([], torch.empty(0), [], torch.empty(0, dtype=torch.int64))[:4 if dataset.fingerprints else 2]
    keys = [k for ks in columns[0] for k in ks]
    out: list[Any] = [keys, torch.cat(columns[1]).contiguous()]
    if dataset.fingerprints:
        out += [[h for hs in columns[2] for h in hs], torch.cat(columns[3]).contiguous()]
    return tuple(out)
