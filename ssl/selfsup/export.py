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
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch

from selfsup.build import build_method
from selfsup.config import Config, config_hash, load_config
from selfsup.data.eval_transform import eval_data_config
from selfsup.errors import CheckpointError, ConfigError
from selfsup.export_meta import describe_weights, selfsup_block
from selfsup.manifest import listed_files, read_manifest, write_manifest
from selfsup.model_card import write_model_card
from selfsup.models.backbone import pooled_as
from selfsup.train.best import choose_checkpoint
from selfsup.train.checkpoint import (
    MODEL_FILE,
    check_keys_match,
    read_checkpoint_weights,
)

log = logging.getLogger("selfsup")


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


# Every file `selfsup export` (model card: README.md, metrics.jsonl; --onnx/--int8; its manifest) may write into
# OUT_DIR. Export lists what it wrote in the manifest: a folder holding only listed files is a previous export, which
# a new export may replace; any other file (of these names too: someone else's model.safetensors) is the user's and is
# never replaced without --overwrite, never removed. A new file written by export must be added here.
EXPORT_MANIFEST = "selfsup_export.json"
EXPORT_FORMAT = "selfsup-export"
EXPORT_FILES = frozenset({"model.safetensors", "config.json", "README.md", "metrics.jsonl", "model.onnx",
                          "model.int8.onnx", "onnx.json", EXPORT_MANIFEST})


def exported_files(folder: Path) -> set[str]:
    """The files of ``folder`` that a selfsup export wrote (its manifest lists them; only :data:`EXPORT_FILES`)."""
    manifest = read_manifest(folder, EXPORT_MANIFEST, EXPORT_FORMAT)
    return listed_files(manifest, EXPORT_FILES.__contains__) | ({EXPORT_MANIFEST} if manifest else set())


def record_exported(folder: Path, names: list[str]) -> None:
    """Add ``names`` (written into the export ``folder`` after it was put in place: ``--onnx``) to its manifest; a
    folder without one (not written by ``selfsup export``) gets none."""
    manifest = read_manifest(folder, EXPORT_MANIFEST, EXPORT_FORMAT)
    if manifest is not None:
        files = listed_files(manifest, EXPORT_FILES.__contains__) | set(names)
        write_manifest(folder, EXPORT_MANIFEST, EXPORT_FORMAT, files,
                       **{k: v for k, v in manifest.items() if k not in ("format", "version", "files")})


def export(run_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Write the run's checked export (see :func:`_export_to` for ``kwargs``) to ``out_dir``, losing no file.

    The export is written into a new hidden sibling of ``out_dir`` and renamed into place once checked, with a
    manifest (:data:`EXPORT_MANIFEST`) listing its files. An existing ``out_dir`` is replaced only when it holds
    nothing but the files of a previous export (those its manifest lists); with ``overwrite`` the export's files are
    also written into a folder holding other files, which stay (files of the export's names are replaced).
    ``out_dir`` may never be the run folder or a folder containing it.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export_target(run_dir, out_dir, overwrite=overwrite)
    target = out_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        result = _export_to(tmp, run_dir, out_dir, **kwargs)
        _put_in_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed on success; a partial export otherwise
    return result


def check_export_target(run_dir: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an ``out_dir`` whose replacement would lose files export did not write."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or out in run.parents:
        what = "is the run folder" if out == run else "contains the run folder"
        raise CheckpointError(f"export folder {out_dir} {what} {run_dir}; export into a folder of its own, "
                              f"e.g. {run_dir / 'export'}")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"export folder {out_dir} exists and is not a folder")
    ours = exported_files(out) if out.is_dir() else set()
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in (out.iterdir() if out.is_dir() else ())
                     if not (p.name in ours and p.is_file() and not p.is_symlink()))
    if foreign and not overwrite:
        shown = ", ".join(foreign[:4]) + (f" (+{len(foreign) - 4} more)" if len(foreign) > 4 else "")
        clash = [f for f in foreign if f in EXPORT_FILES]  # named like an export's files, but no manifest lists them
        rest = "; the other files stay" if len(clash) < len(foreign) else ""
        what = (f"to replace {', '.join(clash)} (no {EXPORT_MANIFEST} of an earlier export lists them){rest}"
                if clash else "to write the export's files beside them")
        raise CheckpointError(f"export folder {out_dir} holds files export did not write ({shown}); export into a new "
                              f"or empty folder, or pass --overwrite {what}")


def _put_in_place(tmp: Path, target: Path) -> None:
    """Rename the checked export ``tmp`` to ``target``; the replaced previous export goes, nothing else does."""
    if not target.exists():
        os.replace(tmp, target)
        return
    cwd = Path.cwd().resolve()
    ours = exported_files(target)
    only_export = all(p.name in ours and p.is_file() for p in target.iterdir())
    if only_export and cwd != target and target not in cwd.parents:  # swap the whole folder
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            os.replace(old, target)
            raise
        shutil.rmtree(old)
        return
    # --overwrite into a folder with other files (or the working directory): file by file, the others stay
    written = {p.name for p in tmp.iterdir()}
    for name in sorted(written):
        os.replace(tmp / name, target / name)
    stale = sorted(n for n in EXPORT_FILES - written if (target / n).is_file())
    for name in [n for n in stale if n in ours]:  # the earlier export's: go with it
        (target / name).unlink()
    stale = [n for n in stale if n not in ours]
    if stale:
        log.warning("%s: %s not written by this export and left as it was (no export manifest listed it; remove "
                    "it if it is stale)", target, ", ".join(stale))


def _export_to(tmp: Path, run_dir: str | Path, out_dir: str | Path, *, checkpoint: str | Path | None = None,
               overrides: list[str] | None = None, which: str | None = None, atol: float = 1e-5) -> dict[str, Any]:
    """Write the run's exported encoder to ``tmp`` and check it by reloading with plain timm.

    ``overrides``: ``export.*`` keys on top of the run's config (e.g. ``export.license=apache-2.0``); the rest
    of the config is the run's, and its hash in ``config.json`` is that of the config the run trained with.

    Returns:
        A dict with the checkpoint used, the step, the encoder name and the reload check result.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
    # --checkpoint, or --which best|last (default: the monitor's best when a monitor ran, else the newest)
    ckpt = choose_checkpoint(run_dir, which=which, checkpoint=checkpoint)
    bad = [o for o in overrides or [] if not o.startswith("export.")]
    if bad:
        raise ConfigError(f"override '{bad[0]}': selfsup export takes only export.* keys (e.g. export.license=mit); "
                          "the rest of the config is the run's")
    cfg_file = ckpt / "config.yaml" if (ckpt / "config.yaml").is_file() else cfg_path
    cfg: Config = load_config(cfg_file, overrides)
    run_hash = config_hash(load_config(cfg_file) if overrides else cfg)  # before any change below
    cfg.model.drop_path_rate = 0.0  # the exported model's default; the weights do not depend on it
    step = json.loads((ckpt / "COMPLETE").read_text()).get("step")

    method = build_method(cfg, pretrained=False)  # the checkpoint's weights replace model.pretrained's
    load_checkpoint_weights(method, ckpt)
    backbone = method.export_backbone().eval()  # type: ignore[operator]
    size = cfg.views.global_crop_size
    meta = selfsup_block(method=cfg.method.name, encoder=method.export_encoder,  # type: ignore[arg-type]
                         step=step, config_hash=run_hash, run_dir=run_dir, checkpoint=ckpt,
                         module=_module_prefix(method, backbone))
    with pooled_as(backbone, cfg.export.global_pool):  # export.global_pool: the pooled output timm will rebuild
        timm.models.save_for_hf(
            backbone, str(tmp), model_config={"selfsup": meta}, safe_serialization=True,
            data_config=eval_data_config(size, cfg.views.mean, cfg.views.std),
        )
        hub_config = describe_weights(tmp / "config.json", selfsup=meta, license=cfg.export.license)
        write_model_card(tmp, config=hub_config, cfg=cfg, run_dir=run_dir, checkpoint=ckpt,
                         license=cfg.export.license)
        check = verify_export(tmp, backbone, size=size, atol=atol)  # the final config.json, as timm will read it
    write_manifest(tmp, EXPORT_MANIFEST, EXPORT_FORMAT, [p.name for p in tmp.iterdir()] + [EXPORT_MANIFEST],
                   run=run_dir.resolve().name, checkpoint=ckpt.name, step=step)  # names only, as config.json
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
