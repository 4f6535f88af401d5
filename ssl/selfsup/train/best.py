"""``checkpoints/best/``: the weights with the best monitor score, and which checkpoint ``selfsup export`` reads.

The best folder holds the full model weights (``model.safetensors``, the same file a step checkpoint has), the
run's ``config.yaml`` and a ``COMPLETE`` marker with ``step`` and ``score``; no optimizer or data state, so it is
never taken for resume (only ``step_*`` folders are) and never pruned by ``train.keep_last``.

Written atomically: a new best is written to ``.tmp-best`` and then swapped in with two renames (the old best
becomes ``.prev-best`` for the instant between them, and readers fall back to it), so a kill at any moment leaves a
complete best folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from selfsup.errors import CheckpointError
from selfsup.train.checkpoint import (
    COMPLETE,
    NEVER_SHARD,
    checkpoint_dir,
    fsync_dir,
    latest_checkpoint,
    resolve_resume,
)

BEST = "best"
WHICH = ("best", "last")


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete best folder of a run (or the previous one, when a kill fell between the two renames)."""
    root = checkpoint_dir(run_dir)
    for path in (root / BEST, root / f".prev-{BEST}"):
        if (path / COMPLETE).is_file():
            return path
    return None


def read_best(run_dir: str | Path) -> dict | None:
    """``{"step", "score", "path"}`` of the run's best folder, or ``None``."""
    path = best_checkpoint(run_dir)
    if path is None:
        return None
    return {**json.loads((path / COMPLETE).read_text()), "path": str(path)}


def save_best(accelerator, run_dir: str | Path, model, *, step: int, score: float, extra_files: dict[str, str]) -> Path:
    """Write the prepared ``model``'s full weights as the run's best (every process must call this: under FSDP the
    weights are gathered)."""
    root = checkpoint_dir(run_dir)
    final, tmp, prev = root / BEST, root / f".tmp-{BEST}", root / f".prev-{BEST}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_model(model, str(tmp), max_shard_size=NEVER_SHARD, safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, text in extra_files.items():
                (tmp / name).write_text(text)
            (tmp / COMPLETE).write_text(json.dumps({"step": step, "score": score, "metric": "knn_top1"}))
            fsync_dir(tmp)
            if (final / COMPLETE).is_file():
                shutil.rmtree(prev, ignore_errors=True)
                os.replace(final, prev)
            else:
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            shutil.rmtree(prev, ignore_errors=True)
    except OSError as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {final} ({e.strerror or e}); the previous best "
                              f"{best_checkpoint(run_dir) or '(none)'} is intact") from None
    accelerator.wait_for_everyone()
    return final


def choose_checkpoint(run_dir: str | Path, *, which: str | None = None, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint ``selfsup export`` reads: ``checkpoint`` if given; else ``which`` = ``best`` (the monitor's
    best) or ``last`` (the newest step checkpoint); by default best when a monitor ran, else last."""
    if checkpoint:
        if which:
            raise CheckpointError(f"--checkpoint {checkpoint} and --which {which}: give one of them")
        return resolve_resume(str(checkpoint), run_dir)  # type: ignore[return-value]
    if which not in (None, *WHICH):
        raise CheckpointError(f"--which {which}: expected one of {', '.join(WHICH)}")
    best = best_checkpoint(run_dir)
    if which == "best" and best is None:
        raise CheckpointError(f"{run_dir}: no {checkpoint_dir(run_dir) / BEST} (it is written by the kNN monitor: "
                              f"set monitor.data); use --which last")
    if which == "best" or (which is None and best is not None):
        return best  # type: ignore[return-value]
    last = latest_checkpoint(run_dir)
    if last is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under {checkpoint_dir(run_dir)} (train longer or "
                              f"lower train.save_every)")
    return last
