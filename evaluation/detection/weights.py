"""Where a detector's backbone comes from: an exported folder, a random init of it, or timm weights.

Every source builds a plain timm model through public timm calls
(``timm.create_model("local-dir:DIR", pretrained=True)`` for an export), so what the detection
transfer measures is exactly what a user of the exported folder gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluation.detection.backbone import create_timm_body
from selfsup.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class BackboneSource:
    """A named recipe for a backbone.

    Attributes:
        label: Row name in ``detection.json`` (``pretrained``, ``random_init``, or the timm name).
        model: ``create_model`` name (``local-dir:DIR`` for folders, else a timm architecture).
        pretrained: Load weights (from the folder, or from ``weights_file``).
        kwargs: Extra ``create_model`` kwargs (the export's ``model_args`` for the random init).
        weights_file: A local weight file for a timm architecture (``pretrained_cfg_overlay``).
    """

    label: str
    model: str
    pretrained: bool
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None

    def build(self, *, seed: int) -> nn.Module:
        """Creates the timm model; the seed fixes any randomly initialised weights."""
        torch.manual_seed(seed)
        kwargs = dict(self.kwargs)
        if self.weights_file is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": self.weights_file}
        try:
            return create_timm_body(self.model, pretrained=self.pretrained, **kwargs)
        except (RuntimeError, FileNotFoundError, ValueError, KeyError) as e:
            what = self.weights_file or self.model
            raise CheckpointError(f"{what}: cannot build timm model '{self.model}' ({str(e).splitlines()[0]})") from e


def read_export_config(export_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an exported folder (``architecture``, ``model_args``, ``pretrained_cfg``).

    Raises:
        CheckpointError: The folder, its ``config.json`` or its weight file is missing or unreadable.
    """
    d = Path(export_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"--weights {d}: no config.json; expected a folder written by `selfsup export`")
    if not any((d / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointError(f"--weights {d}: no model.safetensors; expected a folder written by `selfsup export`")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise CheckpointError(f"{cfg_path}: no 'architecture' key; expected a timm save_for_hf config")
    return cfg


def export_sources(export_dir: str | Path) -> list[BackboneSource]:
    """The exported weights and a random init of the same architecture and ``model_args``."""
    cfg = read_export_config(export_dir)
    model_args = {k: v for k, v in (cfg.get("model_args") or {}).items() if k != "num_classes"}
    return [
        BackboneSource("pretrained", f"local-dir:{Path(export_dir).resolve()}", pretrained=True),
        BackboneSource("random_init", cfg["architecture"], pretrained=False, kwargs=model_args),
    ]


def baseline_source(spec: str) -> BackboneSource:
    """A ``--baseline-timm`` entry: an exported-style folder, or ``timm_name=/path/to/weights``.

    Weights must be local: nothing is downloaded from a model hub.

    Raises:
        CheckpointError: The folder or file does not exist, or the entry has neither form.
    """
    if "=" in spec:
        name, path = spec.split("=", 1)
        if not Path(path).is_file():
            raise CheckpointError(f"--baseline-timm {spec}: weight file '{path}' not found")
        return BackboneSource(name, name, pretrained=True, weights_file=str(Path(path).resolve()))
    d = Path(spec)
    if d.is_dir():
        cfg = read_export_config(d)
        return BackboneSource(f"{cfg['architecture']}:{d.name}", f"local-dir:{d.resolve()}", pretrained=True)
    raise CheckpointError(f"--baseline-timm {spec}: expected a folder with config.json + model.safetensors "
                          "or TIMM_NAME=/path/to/weights.safetensors (weights are never downloaded)")
