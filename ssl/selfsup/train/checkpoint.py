"""Checkpoints: ``accelerator.save_state`` into a temporary folder, then an atomic rename.

A kill during a save leaves the previous checkpoint loadable: a folder only gets its final name
``step_00001234`` (and a ``COMPLETE`` marker) once every file is written. ``keep_last`` folders are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from selfsup.errors import CheckpointError

COMPLETE = "COMPLETE"
PREFIX = "step_"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``auto`` -> newest complete checkpoint of the run (or none); else a path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"train.resume={resume}: not a complete checkpoint folder (no {COMPLETE} marker)")
    return path


def save_checkpoint(accelerator, run_dir: str | Path, step: int, extra_files: dict[str, str], keep_last: int,
                    write_process_files=None) -> Path:
    """Save the accelerate state for ``step`` atomically; every process must call this.

    Args:
        accelerator: the ``accelerate.Accelerator``.
        run_dir: the run folder; checkpoints go to ``RUN_DIR/checkpoints/step_XXXXXXXX``.
        step: optimizer step.
        extra_files: name -> text, written by the main process (e.g. the resolved config).
        keep_last: how many complete checkpoints to keep.
        write_process_files: optional callable(tmp_dir) run on every process (per-process state).
    """
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if write_process_files is not None:
            write_process_files(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, text in extra_files.items():
                (tmp / name).write_text(text)
            (tmp / COMPLETE).write_text(json.dumps({"step": step}))
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _prune(root, keep_last)
    except OSError as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(run_dir)
        raise CheckpointError(
            f"could not write checkpoint {final} ({e.strerror or e}); the previous checkpoint "
            f"{prev or '(none)'} is intact"
        ) from None
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _prune(root: Path, keep_last: int) -> None:
    complete = list_checkpoints(root.parent)
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):  # left by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
