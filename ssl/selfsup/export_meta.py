"""What an export's ``config.json`` says about its weights, so timm, transformers and the Hub read it right.

timm's ``save_for_hf`` starts ``pretrained_cfg`` from the architecture's *default* pretrained config: the tag,
license and paper of timm's reference weights (e.g. ``augreg_in21k_ft_in1k``, ``apache-2.0``), which would tell a
reader these are someone else's weights. It also records ``num_classes`` both at the top level and inside
``model_args``; transformers' ``TimmWrapperModel`` passes both to ``timm.create_model`` and fails with "got multiple
values for keyword argument 'num_classes'". :func:`describe_weights` rewrites those two parts of the file and adds
the ``selfsup`` block; everything that describes the architecture and its input is left as timm wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# pretrained_cfg keys that describe where a checkpoint came from (timm's PretrainedCfg), not the architecture
PROVENANCE_KEYS = ("tag", "license", "description", "origin_url", "paper_name", "paper_ids", "notes",
                   "label_names", "label_descriptions", "url", "file", "hf_hub_id", "hf_hub_filename", "source")
# keys timm also writes at the top level of config.json, where transformers reads them
TOP_LEVEL_KEYS = ("num_classes",)


def weights_tag(method: str, step: int | None) -> str:
    """The ``pretrained_cfg.tag`` of an export: method and step, e.g. ``selfsup_dino_s12000``."""
    return f"selfsup_{method}" + (f"_s{step}" if step is not None else "")


def selfsup_block(*, method: str, encoder: str, step: int | None, config_hash: str, run_dir: Path, checkpoint: Path,
                  module: str) -> dict[str, Any]:
    """The ``selfsup`` block of ``config.json``: how the weights were made, with names only (no local paths)."""
    return {
        "method": method,
        "encoder": encoder,
        "step": step,
        "config_hash": config_hash,
        "run": Path(run_dir).resolve().name,
        "checkpoint": Path(checkpoint).name,
        "module": module,
    }


def describe_weights(config_path: Path, *, selfsup: dict[str, Any], license: str | None) -> dict[str, Any]:
    """Rewrite timm's ``config.json`` at ``config_path`` so that it describes these weights; returns the new config.

    - ``pretrained_cfg``: provenance keys copied from timm's default weights are dropped; ``tag`` becomes
      :func:`weights_tag`; ``license`` is set only when given (``export.license``).
    - ``model_args``: keys timm also writes at the top level (``num_classes``) are dropped there.
    - ``selfsup``: the block of :func:`selfsup_block`.
    """
    config = json.loads(config_path.read_text())
    pretrained = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k not in PROVENANCE_KEYS}
    pretrained["tag"] = weights_tag(selfsup["method"], selfsup.get("step"))
    if license:
        pretrained["license"] = license
    config["pretrained_cfg"] = pretrained
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k not in TOP_LEVEL_KEYS}
    if model_args:
        config["model_args"] = model_args
    else:
        config.pop("model_args", None)
    config["selfsup"] = selfsup
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return config
