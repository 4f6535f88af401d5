"""The report's "what it learned" section: attention and patch-feature maps, retrieval, a 2D embedding.

For a few val images picked with a fixed seed, every compared model (pretrained next to random init) gets:

- ``attention_maps.png`` (ViTs with a [CLS] token): the last block's [CLS] attention per head and the top-60%
  mass mask (:mod:`evaluation.probes.attention`, DINO);
- ``pca_features.png`` (any backbone): PCA of the last stage's patch features to RGB with the background dropped
  (:mod:`evaluation.probes.pca_maps`, DINOv2);
- ``retrieval.png``: the top-k training images of a few val queries by cosine similarity, correct labels marked
  (:mod:`evaluation.probes.retrieval`), plus precision@k over the whole val set;
- ``embedding_2d.png``: the val embeddings projected to 2D, coloured by label (:mod:`evaluation.probes.projection`).

Pooled features come from the feature cache the kNN and linear stages filled, so retrieval and the projection
cost no extra backbone pass. ``OUT/visual.json`` records what was drawn.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.figures.maps import plot_attention_maps, plot_embedding_2d, plot_pca_features, plot_retrieval
from evaluation.loading.backbones import LoadedModel, ModelSource, load_model
from evaluation.loading.features import cached_features, resolve_device
from evaluation.probes.attention import cls_attention, supports_attention_maps, top_mass_mask
from evaluation.probes.pca_maps import pca_rgb, spatial_features
from evaluation.probes.projection import project_2d, resolve_method
from evaluation.probes.retrieval import nearest_neighbours, precision_at_k
from evaluation.settings import DEFAULTS
from evaluation.stages.classification import EvalData
from selfsup.data.eval_transform import normalize_uint8, uint8_eval_transform
from selfsup.data.labelled import LabelledImages

VISUAL_FILE = "visual.json"
FILES = {"attention": "attention_maps.png", "pca": "pca_features.png", "retrieval": "retrieval.png",
         "projection": "embedding_2d.png"}


def pick_images(n_total: int, n: int, seed: int = 0) -> list[int]:
    """``n`` distinct indices of ``range(n_total)``, the same for every model and run with the same seed."""
    return np.random.default_rng(seed).permutation(n_total)[:n].tolist()


def load_images(loaded: LoadedModel, images: LabelledImages, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 (b, 3, S, S), normalised float (b, 3, S, S))``: the model's resize + center crop, as evaluated."""
    geometry = uint8_eval_transform(loaded.data_config)
    u8 = torch.stack([geometry(images.image(i)) for i in indices])
    return u8, normalize_uint8(u8, loaded.data_config)


def _hwc(u8: torch.Tensor) -> list[np.ndarray]:
    return [a for a in u8.permute(0, 2, 3, 1).numpy()]


def run_visual(data: EvalData, sources: list[ModelSource], *, out: str | Path, img_size: int | None = None,
               batch_size: int = DEFAULTS.batch_size, num_workers: int = DEFAULTS.num_workers,
               device: str = DEFAULTS.device, n_images: int = 4,
               n_queries: int = 4, k: int = 5, projection: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Draw the section's figures into ``out`` and write ``OUT/visual.json``; returns it.

    Args:
        data: prepared train / val images (:func:`evaluation.stages.classification.prepare_data`).
        sources: the models, drawn side by side in this order.
        n_images: val images in the map grids. n_queries, k: retrieval queries and neighbours shown.
        projection: ``auto | umap | tsne | pca | none`` (see :mod:`evaluation.probes.projection`).
        seed: picks the images and seeds the projection.
    """
    method = None if projection == "none" else resolve_method(projection)  # fail before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    picked = pick_images(len(data.val), max(n_images, n_queries), seed)
    map_idx, query_idx = picked[:n_images], picked[:n_queries]
    attention: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    pca: dict[str, np.ndarray] = {}
    neighbours: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    coords: dict[str, np.ndarray] = {}
    retrieval_rows = []
    display: list[np.ndarray] = []
    first: LoadedModel | None = None
    for source in sources:
        loaded = load_model(source, img_size=img_size)
        first = first or loaded
        model = loaded.model.to(dev).eval()
        u8, x = load_images(loaded, data.val, map_idx)
        display = display or _hwc(u8)
        x = x.to(dev)
        if supports_attention_maps(model):
            attn = cls_attention(model, x).cpu()  # (b, H, h, w), sums to 1 over patches
            attention[source.name] = (attn.numpy(), top_mass_mask(attn).numpy())
        if hasattr(model, "forward_features") and source.kind != "onnx":  # an ONNX file gives pooled features only
            pca[source.name] = pca_rgb(spatial_features(model, x).cpu()).numpy()
        kw = dict(cache_dir=out / "cache", batch_size=batch_size, num_workers=num_workers, device=dev)
        tr, va = cached_features(loaded, data.train, **kw), cached_features(loaded, data.val, **kw)
        sims, idx = nearest_neighbours(tr.feats, va.feats, k=k)
        neighbours[source.name] = (sims, idx)
        retrieval_rows.append({"model": source.name, "k": idx.shape[1],
                               "precision_at_k": precision_at_k(idx, tr.labels, va.labels),
                               "precision_at_1": precision_at_k(idx[:, :1], tr.labels, va.labels)})
        if method is not None:
            coords[source.name], method = project_2d(va.feats, method=method, seed=seed)
    files = {}
    if attention:
        files["attention"] = plot_attention_maps(display, attention, out / FILES["attention"]).name
    if pca:
        files["pca"] = plot_pca_features(display, pca, out / FILES["pca"]).name
    assert first is not None
    classes = data.train.classes
    shown = sorted({int(j) for _, idx in neighbours.values() for j in idx[query_idx].flatten()})
    train_u8 = dict(zip(shown, _hwc(load_images(first, data.train, shown)[0]))) if shown else {}
    queries = _hwc(load_images(first, data.val, query_idx)[0])
    results = {m: [[(train_u8[int(j)], classes[int(data.train.labels[j])], float(s),
                     int(data.train.labels[j]) == int(data.val.labels[q])) for s, j in zip(sims[q], idx[q])]
                   for q in query_idx] for m, (sims, idx) in neighbours.items()}
    files["retrieval"] = plot_retrieval(queries, [classes[int(data.val.labels[q])] for q in query_idx], results,
                                        out / FILES["retrieval"]).name
    if coords:
        files["projection"] = plot_embedding_2d(coords, data.val.labels, classes, method,
                                                out / FILES["projection"]).name
    payload = {"images": map_idx, "queries": query_idx, "retrieval": retrieval_rows, "projection": method,
               "attention_models": list(attention), "files": files, "seconds": round(time.perf_counter() - t0, 2)}
    (out / VISUAL_FILE).write_text(json.dumps(payload, indent=1))
    return payload
