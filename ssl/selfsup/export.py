"""Export: the evaluated encoder of a run as a folder plain timm loads.

``selfsup export RUN_DIR OUT_DIR`` reads the newest complete checkpoint, rebuilds the method from the
run's resolved config, loads the weights strictly (a checkpoint from another architecture or method
fails with the mismatched keys), and writes the backbone with timm's own ``save_for_hf``:
``model.safetensors`` + ``config.json`` in the Hugging Face Hub format. The folder is then reloaded
with ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` and its features compared to ours
before it is moved into place, so a written export is a checked export. Export is separate from
resume: the checkpoint keeps optimizer and data state, the export only the backbone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import timm
import torch

from selfsup.build import build_method
from selfsup.config import Config, config_hash, load_config
from selfsup.data.eval_transform import eval_data_config
from selfsup.errors import CheckpointError
from selfsup.train.best import choose_checkpoint
from selfsup.train.checkpoint import (
    MODEL_FILE,
    check_keys_match,
    read_checkpoint_weights,
)

def load_checkpoint_weights(method: torch.nn.Module, ckpt: Path) -> None:
    """Load ``ckpt/model.safetensors`` into ``method`` strictly, with a clear error on any mismatch."""
    state = read_checkpoint_weights(ckpt)
    check_keys_match(method.state_dict(), state, ckpt / MODEL_FILE)
    method.load_state_dict(state, strict=True)


def _module_prefix(root: torch.nn.Module, target: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise RuntimeError("export backbone is not a sub-module of the method")


def export(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str | Path | None = None,
           which: str | None = None, atol: float = 1e-5) -> dict[str, Any]:
    """Write the run's exported encoder to ``out_dir`` and check it by reloading with plain timm.

    Returns:
        A dict with the checkpoint used, the step, the encoder name and the reload check result.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
    # --checkpoint, or --which best|last (default: the monitor's best when a monitor ran, else the newest)
    ckpt = choose_checkpoint(run_dir, which=which, checkpoint=checkpoint)
    cfg: Config = load_config(ckpt / "config.yaml" if (ckpt / "config.yaml").is_file() else cfg_path)
    cfg.model.drop_path_rate = 0.0  # the exported model's default; the weights do not depend on it
    step = json.loads((ckpt / "COMPLETE").read_text()).get("step")

    method = build_method(cfg, pretrained=False)  # the checkpoint's weights replace model.pretrained's
    load_checkpoint_weights(method, ckpt)
    backbone = method.export_backbone().eval()  # type: ignore[operator]
    size = cfg.views.global_crop_size
    meta = {
        "method": cfg.method.name,
        "encoder": method.export_encoder,  # type: ignore[attr-defined]
        "step": step,
        "config_hash": config_hash(cfg),
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(ckpt.resolve()),
        "module": _module_prefix(method, backbone),
    }
    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    timm.models.save_for_hf(
        backbone, str(tmp), model_config={"selfsup": meta}, safe_serialization=True,
        data_config=eval_data_config(size, cfg.views.mean, cfg.views.std),
    )
    check = verify_export(tmp, backbone, size=size, atol=atol)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return {**meta, "out_dir": str(out_dir), "reload_max_abs_diff": check}


@torch.no_grad()
def verify_export(folder: Path, reference: torch.nn.Module, *, size: int, atol: float) -> float:
    """Reload ``folder`` with plain timm (every key must match) and compare features on a fixed input."""
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    diff = (reloaded(x) - reference(x)).abs().max().item()
    if not diff < atol:
        raise CheckpointError(f"export check failed: plain timm reload of {folder} differs by {diff:.2e} (> {atol})")
    return diff
