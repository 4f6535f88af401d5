"""The evaluation stages (kNN, linear probe, fine-tune) over every model, each writing its own JSON.

Each stage takes the prepared data (:func:`prepare_data`) and the models to compare
(:func:`evaluation.loading.backbones.model_sources`), runs every (model, label fraction, seed), writes
``OUT/<stage>.json`` and returns the same dict. Features come from the cache in ``OUT/cache``, so the kNN and
linear stages share one backbone pass per split and model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from evaluation.loading.backbones import ModelSource, load_model
from evaluation.loading.features import Features, cached_features, model_transform, resolve_device
from evaluation.loading.fractions import fraction_key, label_subsets
from evaluation.probes.finetune import finetune
from evaluation.probes.linear import PROBE_SETTINGS, linear_probe
from evaluation.results import write_stage
from evaluation.settings import DEFAULTS
from selfsup.data.labelled import LabelledImages, open_labelled
from selfsup.errors import DataError
from selfsup.knn import evaluate_knn

SUBSETS_FILE = "label_subsets.json"


@dataclass
class EvalData:
    """Training / val images, the fixed label subsets and what they are."""

    train: LabelledImages
    val: LabelledImages
    fractions: list[float]
    seeds: list[int]
    subsets: dict[str, dict[str, list[int]]]
    info: dict[str, Any]
    pretrain_shards: str | None = None
    check: dict[str, Any] | None = None  # the data check (evaluation/stages/data_check.py), once per call

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def prepare_data(*, train: str, val: str, out: str | Path, label_fractions: list[float], seeds: int,
                 max_train: int | None = None, max_val: int | None = None, allow_pipe: bool = False,
                 pretrain_shards: str | None = None) -> EvalData:
    """Open train/val (val mapped to the train classes), and make or reuse ``OUT/label_subsets.json``;
    ``pretrain_shards`` are checked against val by every stage (:func:`data_check`)."""
    train_images = open_labelled(train, max_items=max_train, allow_pipe=allow_pipe)
    val_images = open_labelled(val, classes=train_images.classes, max_items=max_val, allow_pipe=allow_pipe)
    if len(train_images.classes) < 2:
        raise DataError(f"{train}: {len(train_images.classes)} class; expected at least 2 classes")
    seed_list = list(range(seeds))
    subsets = label_subsets(train_images.labels, fractions=label_fractions, seeds=seed_list,
                            data_identity=train_images.identity, path=Path(out) / SUBSETS_FILE)
    info = {"train": str(train), "val": str(val), "num_train": len(train_images), "num_val": len(val_images),
            "num_classes": len(train_images.classes), "classes": train_images.classes, "max_train": max_train,
            "max_val": max_val, "train_identity": train_images.identity, "val_identity": val_images.identity,
            "label_subsets": SUBSETS_FILE}
    return EvalData(train_images, val_images, list(label_fractions), seed_list, subsets, info, pretrain_shards)


def _features(source: ModelSource, data: EvalData, *, out: Path, img_size: int | None, batch_size: int,
              num_workers: int, device: str) -> tuple[dict[str, Any], Features, Features]:
    model = load_model(source, img_size=img_size)
    dev = resolve_device(device)
    kw = dict(cache_dir=out / "cache", batch_size=batch_size, num_workers=num_workers, device=dev)
    return model.info, cached_features(model, data.train, **kw), cached_features(model, data.val, **kw)


def data_check(data: EvalData, sources: list[ModelSource], *, out: Path, img_size: int | None, batch_size: int,
               num_workers: int, device: str) -> dict[str, Any]:
    """Val against train (and the pretraining shards) on the first export's features: ``OUT/data_check.json``
    (:mod:`evaluation.stages.data_check`), run once per call and summarised in every stage JSON."""
    if data.check is None:
        from evaluation.stages.data_check import run_data_check

        source = next((s for s in sources if s.kind == "export"), sources[0])
        _, tr, va = _features(source, data, out=out, img_size=img_size, batch_size=batch_size,
                              num_workers=num_workers, device=device)
        data.check = run_data_check(data.train, data.val, tr.feats, va.feats, out=out, model=source.name,
                                    weights=source.path, pretrain_shards=data.pretrain_shards, img_size=img_size,
                                    batch_size=batch_size, num_workers=num_workers, device=device)
    from evaluation.stages.data_check import check_summary

    return check_summary(data.check)


def _each_subset(data: EvalData, sources: list[ModelSource], infos: list[dict[str, Any]], **feature_kwargs: Any):
    """Features of each model once (cached), then ``(source, fraction, seed, indices, train, val)`` for every label
    subset; appends each model's info to ``infos``."""
    for source in sources:
        info, tr, va = _features(source, data, **feature_kwargs)
        infos.append(info)
        for f in data.fractions:
            for s in data.seeds:
                yield source, f, s, torch.as_tensor(data.subsets[fraction_key(f)][str(s)]), tr, va


def run_knn(data: EvalData, sources: list[ModelSource], *, out: str | Path, ks: tuple[int, ...] = DEFAULTS.knn_ks,
            T: float = DEFAULTS.knn_temperature, img_size: int | None = DEFAULTS.img_size,
            batch_size: int = DEFAULTS.batch_size, num_workers: int = DEFAULTS.num_workers,
            device: str = DEFAULTS.device, chunk_size: int = 256) -> dict[str, Any]:
    """DINO weighted kNN for every model, fraction and seed -> ``OUT/knn.json``."""
    out = Path(out)
    runs, infos, t0 = [], [], time.perf_counter()
    check = data_check(data, sources, out=out, img_size=img_size, batch_size=batch_size, num_workers=num_workers,
                       device=device)
    for source, f, s, idx, tr, va in _each_subset(data, sources, infos, out=out, img_size=img_size,
                                                  batch_size=batch_size, num_workers=num_workers, device=device):
        res = evaluate_knn(tr.feats[idx], tr.labels[idx], va.feats, va.labels, ks=ks, T=T,
                           num_classes=data.num_classes, chunk_size=chunk_size)
        for k, row in res.items():
            runs.append({"model": source.name, "label_fraction": f, "seed": s, "n_labels": len(idx), "k": k, **row})
    return write_stage(out, "knn", {"stage": "knn", "settings": {"ks": list(ks), "T": T}, "data": data.info,
                                    "data_check": check, "models": infos, "runs": runs,
                                    "seconds": round(time.perf_counter() - t0, 2)})


def run_linear(data: EvalData, sources: list[ModelSource], *, out: str | Path, img_size: int | None = DEFAULTS.img_size,
               batch_size: int = DEFAULTS.batch_size, num_workers: int = DEFAULTS.num_workers,
               device: str = DEFAULTS.device, steps: int = DEFAULTS.linear_steps) -> dict[str, Any]:
    """Linear probe (lr / L2 weight chosen by cross-validation on the train labels) for every model, fraction and
    seed -> ``OUT/linear.json``."""
    out = Path(out)
    runs, infos, t0 = [], [], time.perf_counter()
    check = data_check(data, sources, out=out, img_size=img_size, batch_size=batch_size, num_workers=num_workers,
                       device=device)
    for source, f, s, idx, tr, va in _each_subset(data, sources, infos, out=out, img_size=img_size,
                                                  batch_size=batch_size, num_workers=num_workers, device=device):
        res = linear_probe(tr.feats[idx], tr.labels[idx], va.feats, va.labels, num_classes=data.num_classes,
                           steps=steps, seed=s)
        runs.append({"model": source.name, "label_fraction": f, "seed": s, "n_labels": len(idx),
                     **res.to_dict()})
    return write_stage(out, "linear", {"stage": "linear", "settings": {"steps": steps, **PROBE_SETTINGS},
                                       "data": data.info, "data_check": check, "models": infos, "runs": runs,
                                    "seconds": round(time.perf_counter() - t0, 2)})


def run_finetune(data: EvalData, sources: list[ModelSource], *, out: str | Path,
                 img_size: int | None = DEFAULTS.img_size, batch_size: int = DEFAULTS.finetune_batch_size,
                 num_workers: int = DEFAULTS.num_workers, device: str = DEFAULTS.device,
                 steps: int = DEFAULTS.finetune_steps, lr: float = DEFAULTS.finetune_lr,
                 weight_decay: float = 0.05, layer_decay: float = 0.65) -> dict[str, Any]:
    """Fine-tune the whole network for every model, fraction and seed -> ``OUT/finetune.json``."""
    out = Path(out)
    dev = resolve_device(device)
    runs, infos, t0 = [], [], time.perf_counter()
    check = data_check(data, sources, out=out, img_size=img_size, batch_size=batch_size, num_workers=num_workers,
                       device=device)
    for source in sources:
        for f in data.fractions:
            for s in data.seeds:
                set_seed(s)
                loaded = load_model(source, img_size=img_size)  # fresh weights for every run
                idx = data.subsets[fraction_key(f)][str(s)]
                res = finetune(loaded.model, data.train, idx, data.val, num_classes=data.num_classes,
                               data_config=loaded.data_config, eval_transform=model_transform(loaded), steps=steps,
                               batch_size=batch_size, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                               seed=s, num_workers=num_workers, device=dev)
                runs.append({"model": source.name, "label_fraction": f, "seed": s, "n_labels": len(idx), **res})
        infos.append(loaded.info)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                "layer_decay": layer_decay, "schedule": "linear warm-up 10% + cosine", "augmentation":
                "random resized crop (0.5-1) + horizontal flip"}
    return write_stage(out, "finetune", {"stage": "finetune", "settings": settings, "data": data.info,
                                         "data_check": check, "models": infos, "runs": runs,
                                    "seconds": round(time.perf_counter() - t0, 2)})


