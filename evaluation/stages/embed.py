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
from pathlib import Path
from typing import Any

import safetensors.torch

from evaluation.loading.backbones import ModelSource, load_model
from evaluation.loading.features import model_transform
from evaluation.loading.images import ImageStream, embed_stream, image_files
from evaluation.settings import DEFAULTS
from selfsup.data.shard_list import expand_shards
from selfsup.errors import ConfigError, DataError

EMBEDDINGS_FILE = "embeddings.safetensors"


def run_embed(*, weights: str, out: str | Path, images: str | None = None, shards: str | None = None,
              batch_size: int = DEFAULTS.batch_size, num_workers: int = DEFAULTS.num_workers,
              device: str = DEFAULTS.device,
              img_size: int | None = None) -> Path:
    """Embed every image of ``images`` (a folder) or ``shards`` with the export ``weights``; returns the file."""
    if (images is None) == (shards is None):
        raise ConfigError("embed: give exactly one of --images DIR or --shards SPEC")
    out = Path(out)
    target = out / EMBEDDINGS_FILE
    if target.exists():
        raise ConfigError(f"{target} exists; expected a new --out folder (embed does not overwrite)")
    loaded = load_model(ModelSource("pretrained", "export", weights), img_size=img_size)
    transform = model_transform(loaded)
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
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
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
