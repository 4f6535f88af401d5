"""The commands that run several stages and then the report: ``report``, ``deploy`` and ``detect``.

The flow reads one way: loading (:mod:`evaluation.loading`) -> stages, each writing ``OUT/<stage>.json``
(:mod:`evaluation.stages`, which run the probes of :mod:`evaluation.probes`) -> the report, which reads those
files and renders them (:mod:`evaluation.report`). This module is the only one that calls both sides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from evaluation.detection import PLOT_FILE as DETECTION_PLOT
from evaluation.loading.backbones import ModelSource, model_sources
from evaluation.probes.corruptions import COMMON, SEVERITIES
from evaluation.report.build import build_report, detection_title, plot_detection
from evaluation.report.cost import write_deploy_report
from evaluation.settings import EvalSettings
from evaluation.stages.classification import EvalData, prepare_data, run_finetune, run_knn, run_linear
from evaluation.stages.cost import DEPLOY_FILE, deploy_sources, split_weights, write_deploy
from evaluation.stages.detection import run_detection
from evaluation.stages.maps import VISUAL_FILE, run_visual
from evaluation.stages.robustness import ROBUSTNESS_FILE, run_robustness


def open_data(settings: EvalSettings, *, train: str, val: str, out: str | Path,
              pretrain_shards: str | None = None) -> EvalData:
    """The labelled images and label subsets of one call (:func:`evaluation.stages.classification.prepare_data`)."""
    return prepare_data(train=train, val=val, out=out, label_fractions=list(settings.label_fractions),
                        seeds=settings.seeds, max_train=settings.max_train, max_val=settings.max_val,
                        allow_pipe=settings.allow_pipe, pretrain_shards=pretrain_shards)


def run_classification(data: EvalData, sources: list[ModelSource], settings: EvalSettings, *, out: str | Path,
                       stages: tuple[str, ...] = ("knn", "linear")) -> None:
    """The kNN, linear-probe and fine-tune stages named in ``stages``, with ``settings``."""
    kw = dict(out=out, img_size=settings.img_size, num_workers=settings.num_workers, device=settings.device)
    if "knn" in stages:
        run_knn(data, sources, ks=settings.knn_ks, T=settings.knn_temperature, batch_size=settings.batch_size, **kw)
    if "linear" in stages:
        run_linear(data, sources, batch_size=settings.batch_size, steps=settings.linear_steps, **kw)
    if "finetune" in stages:
        run_finetune(data, sources, batch_size=min(settings.batch_size, settings.finetune_batch_size),
                     steps=settings.finetune_steps, lr=settings.finetune_lr, **kw)


def run_sections(data: EvalData, sources: list[ModelSource], settings: EvalSettings, *, out: str | Path,
                 visual: bool = True, projection: str = "auto", robustness: bool = False,
                 corruptions: list[str] | None = None, severities: list[int] | None = None,
                 robustness_max_val: int | None = None) -> None:
    """The optional sections switched on (maps, retrieval and embedding; robustness). A section switched off in a
    later call has its JSON removed, so the report never shows results from other settings (its images stay,
    unreferenced)."""
    out = Path(out)
    kw = settings.features
    if visual:
        run_visual(data, sources, out=out, projection=projection, **kw)
    elif (out / VISUAL_FILE).exists():
        (out / VISUAL_FILE).unlink()
    if robustness:
        run_robustness(data, sources, out=out, corruptions=list(corruptions or COMMON),
                       severities=list(severities or SEVERITIES), max_val=robustness_max_val, **kw)
    elif (out / ROBUSTNESS_FILE).exists():
        (out / ROBUSTNESS_FILE).unlink()


def run_report(settings: EvalSettings, *, weights: str, train: str, val: str, out: str | Path,
               finetune: bool = False, baseline_timm: str | None = None, command: str = "", visual: bool = True,
               projection: str = "auto", robustness: bool = False, corruptions: list[str] | None = None,
               severities: list[int] | None = None, robustness_max_val: int | None = None,
               detection: dict[str, Any] | None = None, pretrain_shards: str | None = None) -> dict[str, Any]:
    """Run every stage for the export and its baselines and write the report into ``out``; returns report.json.

    ``visual`` adds maps, retrieval and the 2D embedding (``projection``); ``robustness`` the corruption section;
    ``detection`` (the detection settings, ``data=`` included: keyword arguments of
    :func:`evaluation.stages.detection.run_detection`) the detection stage, on the same models, label fractions
    and seeds. Every stage checks val against train (and ``pretrain_shards``) first
    (:mod:`evaluation.stages.data_check`). Several ``weights`` (``A,B``) compare the exports and their ONNX files
    (no random init) and add the cost table of ``selfsup-eval deploy``."""
    out = Path(out)
    data = open_data(settings, train=train, val=val, out=out, pretrain_shards=pretrain_shards)
    several = len(split_weights(weights)) > 1
    baseline = [baseline_timm.removeprefix("local-dir:")] if baseline_timm else []
    sources = (deploy_sources(split_weights(weights) + baseline) if several
               else model_sources(weights=weights, baseline_timm=baseline_timm))
    run_classification(data, sources, settings, out=out, stages=("knn", "linear", "finetune") if finetune
                       else ("knn", "linear"))
    stale = out / "finetune.json"
    if not finetune and stale.exists():
        stale.unlink()  # a fine-tune from an earlier call would not match these settings
    if detection:  # a detection.json from `selfsup-eval detect` is kept otherwise, and shown
        run_detection([s for s in sources if s.kind != "onnx"], out=out, fractions=list(settings.label_fractions),
                      seeds=data.seeds, device=settings.device, command=command, **detection)
    if several:  # the cost/accuracy table of `selfsup-eval deploy`, shown in the report
        write_deploy(out, sources, fractions=list(settings.label_fractions), img_size=settings.img_size,
                     threads=torch.get_num_threads(), repeats=5, command=command)
    elif (out / DEPLOY_FILE).exists():
        (out / DEPLOY_FILE).unlink()  # from an earlier several-weights report: not these models
    run_sections(data, sources, settings, out=out, visual=visual, projection=projection, robustness=robustness,
                 corruptions=corruptions, severities=severities, robustness_max_val=robustness_max_val)
    return build_report(out, command=command)


def run_deploy(settings: EvalSettings, *, weights: str, train: str, val: str, out: str | Path,
               threads: int | None = None, repeats: int = 10, command: str = "") -> dict[str, Any]:
    """kNN + linear probe for every export and ONNX file, then the cost/accuracy table: ``deploy.json`` (returned),
    ``deploy.md`` and ``accuracy_vs_latency.png``."""
    out = Path(out)
    sources = deploy_sources(split_weights(weights))
    data = open_data(settings, train=train, val=val, out=out)
    run_classification(data, sources, settings, out=out)
    doc = write_deploy(out, sources, fractions=list(settings.label_fractions), img_size=settings.img_size,
                       threads=threads or torch.get_num_threads(), repeats=repeats, command=command)
    write_deploy_report(out, doc)
    return doc


def run_detect(sources: list[ModelSource], *, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """The detection stage alone (``kwargs``: :func:`evaluation.stages.detection.run_detection`), its plot, and,
    when ``out`` already holds a report, that report re-rendered with the Detection section."""
    out = Path(out)
    doc = run_detection(sources, out=out, **kwargs)
    if (out / "report.json").is_file():  # the report draws the plot with the rest
        build_report(out, command=json.loads((out / "report.json").read_text()).get("command", ""))
        print(f"added the Detection section to {out}/report.md")
    elif plot_detection(out, doc["rows"], detection_title(doc)) is not None:
        print(f"[detect] wrote {out / DETECTION_PLOT}")
    return doc

