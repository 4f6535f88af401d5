"""Which backbones a report compares: the exported weights, a random-init baseline, local timm weights.

Weights are read only through plain timm (``timm.create_model("local-dir:" + path, pretrained=True)``), so
anything timm loads can be evaluated. The random-init baseline is the same ``architecture`` and
``model_args`` as the export, with ``pretrained=False`` and a fixed seed, and the export's preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from selfsup.errors import CheckpointError

# Not 0: an export made right after torch.manual_seed(0) (a smoke test) must not equal its own baseline.
RANDOM_INIT_SEED = 1234
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelSource:
    """One backbone to evaluate.

    Attributes:
        name: label in the report (``pretrained``, ``random_init``, ``timm:<dir name>``).
        kind: ``export`` (a local-dir folder), ``random_init`` (architecture of ``path``, no weights), or ``onnx``
            (the ONNX file ``path/file`` written by ``selfsup export --onnx``, run with onnxruntime).
        path: the exported / timm folder.
        seed: init seed for ``random_init`` (:data:`RANDOM_INIT_SEED` by default).
        file: for ``onnx``, the ONNX file name inside ``path`` (``model.onnx``, ``model.int8.onnx``).
    """

    name: str
    kind: str
    path: str
    seed: int = RANDOM_INIT_SEED
    file: str = ""


@dataclass
class LoadedModel:
    """A built backbone (``num_classes=0``) with its preprocessing and what it is."""

    source: ModelSource
    model: torch.nn.Module
    data_config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def read_config(path: str) -> dict[str, Any]:
    """``config.json`` of an exported folder, or a :class:`CheckpointError` saying what is missing."""
    cfg_path = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: not a folder; expected an exported folder with config.json + model.safetensors")
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: missing; expected the config.json written by `selfsup export`")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e.msg} at line {e.lineno}); "
                              "expected timm's config.json") from None
    if "architecture" not in cfg:
        raise CheckpointError(f"{cfg_path}: no 'architecture' key; expected timm's save_for_hf config.json")
    return cfg


def weights_file(path: str) -> Path:
    """The weight file timm's local-dir loader will read."""
    for name in WEIGHT_FILES:
        if (Path(path) / name).exists():
            return Path(path) / name
    raise CheckpointError(f"{path}: no weight file; expected one of {', '.join(WEIGHT_FILES)}")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_sources(*, weights: str, baseline_timm: str | None = None,
                  random_seed: int = RANDOM_INIT_SEED) -> list[ModelSource]:
    """The models a report compares: the export, its random-init twin, and optionally a local timm folder."""
    read_config(weights)
    sources = [ModelSource("pretrained", "export", weights),
               ModelSource("random_init", "random_init", weights, random_seed)]
    if baseline_timm:
        path = baseline_timm.removeprefix("local-dir:")
        read_config(path)
        sources.append(ModelSource(f"timm:{Path(path).name}", "export", path))
    return sources


def load_model(source: ModelSource, *, img_size: int | None = None,
               model_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """Build the backbone of ``source`` (``num_classes=0``) and resolve its eval preprocessing.

    Args:
        source: what to build.
        img_size: overrides the square input size of the preprocessing (``pretrained_cfg.input_size``).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``dynamic_img_size=True`` for detection).
    """
    cfg = read_config(source.path)
    wfile = weights_file(source.path)
    model_kwargs = dict(model_kwargs or {})
    if source.kind == "export":
        try:
            model = timm.create_model("local-dir:" + str(Path(source.path).resolve()), pretrained=True, num_classes=0,
                                      **model_kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            raise CheckpointError(f"{source.path}: timm cannot load it ({str(e).splitlines()[0][:200]}); "
                                  "expected a folder written by timm save_for_hf") from None
        weights_id = f"sha256:{file_sha256(wfile)}"
    elif source.kind == "random_init":
        args = {**(cfg.get("model_args") or {}), **model_kwargs, "num_classes": 0}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)
            model = timm.create_model(cfg["architecture"], pretrained=False, **args)
        weights_id = f"random_init:{cfg['architecture']}:{json.dumps(args, sort_keys=True)}:{source.seed}"
    elif source.kind == "onnx":
        from evaluation.loading.onnx_model import OnnxBackbone

        onnx_path = Path(source.path) / source.file
        model = OnnxBackbone(onnx_path, num_features=int(cfg["num_features"]))
        weights_id = f"sha256:{file_sha256(onnx_path)}"
    else:
        raise ValueError(f"unknown model kind {source.kind!r}")
    model.eval()
    pcfg = dict(cfg.get("pretrained_cfg") or {})
    overrides: dict[str, Any] = {}
    if img_size is not None:
        overrides = {"input_size": (3, img_size, img_size)}
    data_config = timm.data.resolve_data_config(overrides, pretrained_cfg=pcfg, model=model)
    info = {
        "name": source.name,
        "kind": source.kind,
        "weights": str(Path(source.path).resolve() / source.file) if source.kind in ("export", "onnx") else None,
        "init_seed": source.seed if source.kind == "random_init" else None,
        "weights_id": weights_id,
        "architecture": cfg["architecture"],
        "num_features": int(model.num_features),
        "model_args": cfg.get("model_args") or {},
        "selfsup": cfg.get("selfsup") if source.kind in ("export", "onnx") else None,
        "input_size": list(data_config["input_size"]),
    }
    return LoadedModel(source=source, model=model, data_config=data_config, info=info)
