"""Frozen-backbone features, extracted once per (weights, data, transform) and cached as safetensors.

Shapes: ``n = images, d = num_features``. Features are the pooled pre-logits embedding
(``forward_features`` then ``forward_head(pre_logits=True)``), as used by DINO's kNN and linear evaluation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch

from evaluation.loading.backbones import LoadedModel
from selfsup.data.labelled import LabelledImages, TransformedImages

FEATURES_VERSION = 1


@dataclass
class Features:
    """Cached features of one split: ``feats`` (n, d) float32, ``labels`` (n,) int64."""

    feats: torch.Tensor
    labels: torch.Tensor


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_transform(model: LoadedModel) -> torch.nn.Module:
    """Resize + center crop to the model's input size, normalise with its mean/std."""
    return timm.data.create_transform(**model.data_config, is_training=False)


def embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(b, 3, h, w) -> (b, d) pooled pre-logits features."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.inference_mode()
def extract_features(model: torch.nn.Module, images: LabelledImages, transform: torch.nn.Module, *,
                     batch_size: int, num_workers: int, device: torch.device) -> Features:
    """Run the frozen backbone over ``images`` in order (bf16 autocast on CUDA)."""
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(TransformedImages(images, transform), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    chunks = []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            chunks.append(embed(model, x.to(device, non_blocking=True)).float().cpu())
    return Features(torch.cat(chunks), torch.as_tensor(images.labels, dtype=torch.int64))


def cache_key(model: LoadedModel, images: LabelledImages, transform: torch.nn.Module) -> str:
    """Hash of weights identity + data identity + transform (+ a format version)."""
    blob = json.dumps([FEATURES_VERSION, model.info["weights_id"], images.identity, repr(transform)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_features(model: LoadedModel, images: LabelledImages, *, cache_dir: Path, batch_size: int,
                    num_workers: int, device: torch.device, transform: torch.nn.Module | None = None) -> Features:
    """Features of ``images`` under ``model``, read from ``cache_dir`` when present, else extracted and saved.

    ``transform`` (PIL image -> normalised tensor) replaces the model's eval transform, e.g. to add a corruption;
    its ``repr`` is part of the cache key."""
    transform = model_transform(model) if transform is None else transform
    path = Path(cache_dir) / f"{cache_key(model, images, transform)}.safetensors"
    if path.exists():
        t = safetensors.torch.load_file(str(path))
        return Features(t["feats"], t["labels"])
    feats = extract_features(model.model, images, transform, batch_size=batch_size, num_workers=num_workers,
                             device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file({"feats": feats.feats.contiguous(), "labels": feats.labels.contiguous()}, str(tmp),
                                metadata={"weights_id": model.info["weights_id"], "data": images.identity})
    tmp.replace(path)
    return feats
