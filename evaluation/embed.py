"""``selfsup-eval embed``: the pooled embeddings of an export for a folder of images or webdataset shards.

For users who build search, deduplication or clustering on the features: one row per image, the same features the
kNN and linear evaluations use (``forward_features`` + ``forward_head(pre_logits=True)`` after the export's own
eval preprocessing), written as ``OUT/embeddings.safetensors``:

- tensor ``embeddings``: (n, d) float32 (not normalised; L2-normalise for cosine search);
- metadata ``keys``: a JSON list of n strings, row i's image (path relative to ``--images``, or ``SHARD#KEY``);
- metadata ``weights``, ``weights_id``, ``architecture``, ``num_features``, ``input_size``.

Read it back with ``safetensors.safe_open(path, "pt")``: ``f.get_tensor("embeddings")`` and
``json.loads(f.metadata()["keys"])``. Unreadable images are an error naming the file (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from evaluation.features import embed, eval_transform, resolve_device
from evaluation.fingerprints import file_sha256, perceptual_hash
from evaluation.models import ModelSource, load_model
from selfsup.data.decode import BadSample, decode_rgb
from selfsup.data.decode import IMAGE_EXTENSIONS, IMAGE_KEYS
from selfsup.data.shard_list import expand_shards
from selfsup.errors import ConfigError, DataError

EMBEDDINGS_FILE = "embeddings.safetensors"


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
    ``(key, transformed image, file SHA-256, perceptual hash)`` (:mod:`evaluation.fingerprints`)."""

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


def run_embed(*, weights: str, out: str | Path, images: str | None = None, shards: str | None = None,
              batch_size: int = 128, num_workers: int = 0, device: str = "auto",
              img_size: int | None = None) -> Path:
    """Embed every image of ``images`` (a folder) or ``shards`` with the export ``weights``; returns the file."""
    if (images is None) == (shards is None):
        raise ConfigError("embed: give exactly one of --images DIR or --shards SPEC")
    out = Path(out)
    target = out / EMBEDDINGS_FILE
    if target.exists():
        raise ConfigError(f"{target} exists; expected a new --out folder (embed does not overwrite)")
    loaded = load_model(ModelSource("pretrained", "export", weights), img_size=img_size)
    transform = eval_transform(loaded)
    dataset = (ImageStream(transform, files=image_files(images)) if images is not None
               else ImageStream(transform, urls=expand_shards(shards, strict=True)))
    keys, embeddings = embed_stream(loaded.model, dataset, batch_size=batch_size, num_workers=num_workers,
                                    device=device)[:2]
    if not keys:
        raise DataError(f"{images or shards}: no images to embed")
    info = loaded.info
    metadata = {"keys": json.dumps(keys), "weights": str(info["weights"]), "weights_id": info["weights_id"],
                "architecture": info["architecture"], "num_features": str(info["num_features"]),
                "input_size": json.dumps(info["input_size"])}
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    safetensors.torch.save_file({"embeddings": embeddings}, str(tmp), metadata=metadata)
    tmp.replace(target)
    return target


def add_embed_parser(sub: Any) -> None:
    """The ``embed`` subcommand of ``selfsup-eval``."""
    p = sub.add_parser("embed", help="write the embeddings of a folder of images or of shards (safetensors + keys)")
    p.add_argument("--weights", required=True, help="exported folder (config.json + model.safetensors)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", default=None, help="a folder of images (recursive)")
    src.add_argument("--shards", default=None, help="webdataset shards: a .tar, a folder, a brace pattern, a glob")
    p.add_argument("--out", required=True, help=f"output folder (writes OUT/{EMBEDDINGS_FILE})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--img-size", type=int, default=None, help="override the export's input size")


def embed_command(args: argparse.Namespace) -> int:
    """Run ``selfsup-eval embed`` from parsed arguments."""
    path = run_embed(weights=args.weights, out=args.out, images=args.images, shards=args.shards,
                     batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                     img_size=args.img_size)
    with safetensors.safe_open(str(path), "pt") as f:
        n, d = f.get_slice("embeddings").get_shape()
    print(f"wrote {path}: {n} embeddings of dimension {d} (keys in the file's metadata)")
    return 0
