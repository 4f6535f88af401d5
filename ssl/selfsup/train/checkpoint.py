"""Checkpoints: ``accelerator.save_state`` into a temporary folder, then an atomic rename.

A kill during a save leaves the previous checkpoint loadable: a folder only gets its final name
``step_00001234`` (and a ``COMPLETE`` marker) once every file is written. ``keep_last`` folders are kept.

Every checkpoint has the full model weights in ``model.safetensors`` (the resume check and export read
only that file). Under DDP accelerate writes it; under FSDP accelerate writes sharded
``pytorch_model_fsdp_0/`` and ``optimizer_0/`` folders (torch.distributed.checkpoint) for resume, and
selfsup gathers the full weights once more into ``model.safetensors`` for export.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from selfsup.errors import CheckpointError, CheckpointWriteError, ConfigError
from selfsup.train.accelerator import uses_fsdp
from selfsup.train.rng_state import check_random_states
from selfsup.train.state import TrainState

log = logging.getLogger("selfsup")

COMPLETE = "COMPLETE"
MODEL_FILE = "model.safetensors"  # what accelerate's save_state writes for the prepared model
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's sharded model folder under FSDP
NEVER_SHARD = "100TB"  # max_shard_size for accelerator.save_model: always one MODEL_FILE
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
    """``None`` -> no resume; ``auto`` -> newest usable complete checkpoint of the run (or none); else a path.

    ``auto`` skips, with a warning, a checkpoint whose loop state (``train_state_*.json``) is unreadable and falls
    back to the previous complete one; if none is usable it raises rather than start over the run's files.
    """
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        for ckpt in reversed(found):
            problem = train_state_problem(ckpt)
            if problem is None:
                return ckpt
            log.warning("train.resume=auto: %s is unusable (%s); falling back to the previous complete checkpoint",
                        ckpt, problem)
        if found:
            raise CheckpointError(f"train.resume=auto: no usable checkpoint in {checkpoint_dir(run_dir)} (newest: "
                                  f"{train_state_problem(found[-1])}); resume from a checkpoint folder with "
                                  f"train.resume=PATH or start over with run.overwrite=true")
        return None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"train.resume={resume}: not a complete checkpoint folder (no {COMPLETE} marker)")
    return path


def train_state_problem(ckpt: Path) -> str | None:
    """Why the loop state files of ``ckpt`` cannot be resumed from, or ``None`` when every one of them reads."""
    if not (ckpt / "train_state_0.json").is_file():
        return "train_state_0.json missing"
    for path in sorted(ckpt.glob("train_state_*.json")):
        try:
            TrainState.load(ckpt, int(path.stem[len("train_state_"):]))
        except (CheckpointError, ValueError) as e:
            return str(e)
    return None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, extra_files: dict[str, str], keep_last: int,
                    write_process_files=None, model=None) -> Path:
    """Save the accelerate state for ``step`` atomically; every process must call this.

    Args:
        accelerator: the ``accelerate.Accelerator``.
        run_dir: the run folder; checkpoints go to ``RUN_DIR/checkpoints/step_XXXXXXXX``.
        step: optimizer step.
        extra_files: name -> text, written by the main process (e.g. the resolved config).
        keep_last: how many complete checkpoints to keep.
        write_process_files: optional callable(tmp_dir) run on every process (per-process state).
        model: the prepared model; needed under FSDP, where its full weights are gathered into
            ``model.safetensors``.
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
        if uses_fsdp(accelerator):
            if model is None:
                raise ValueError("save_checkpoint needs the model under FSDP")
            # gathers the full weights (a collective) and writes them from the main process; one file, never
            # split into shards, because the resume check and export read MODEL_FILE
            accelerator.save_model(model, str(tmp), max_shard_size=NEVER_SHARD)
        if write_process_files is not None:
            write_process_files(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, text in extra_files.items():
                (tmp / name).write_text(text)
            (tmp / COMPLETE).write_text(json.dumps({"step": step}))
            fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _prune(root, keep_last)
    except Exception as e:
        full = _is_disk_full(e, root)  # before the clean-up frees the space again
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # no partial folder is ever left behind
        if not (full or _is_write_failure(e)):
            raise
        prev = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint step {int(prev.name[len(PREFIX):])} is intact" if prev else \
            "there is no previous checkpoint"
        what = "no space left on device" if full else f"write failed ({_first_line(e)})"
        raise CheckpointWriteError(f"{what} while writing checkpoint step {step} in {root}; {kept}") from None
    accelerator.wait_for_everyone()
    return final


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "strerror", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_write_failure(e: BaseException) -> bool:
    """An error of the writers (OS, safetensors, torch.save's zip writer), not a bug of the loop."""
    from safetensors import SafetensorError

    return isinstance(e, (OSError, SafetensorError)) or any(
        s in str(e) for s in ("PytorchStreamWriter", "inline_container", "No space left on device"))


def _is_disk_full(e: BaseException, root: Path) -> bool:
    """ENOSPC, also as safetensors reports it (``... code: 28, kind: StorageFull``); torch.save's zip writer
    loses the errno ("unexpected pos ..."), so a writer error on a filesystem with < 1 MiB left counts too."""
    text = str(e)
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in text or "StorageFull" in text:
        return True
    try:
        return _is_write_failure(e) and shutil.disk_usage(root).free < 2**20
    except OSError:
        return False


def check_shared_run_dir(accelerator, run_dir: str | Path) -> None:
    """Fail early, on every process, when the run folder is not one folder for all processes.

    Every process writes its own files (data position, FSDP shards) into the checkpoint folder that the main
    process then renames, so on many nodes ``run.dir`` must be on a filesystem they all share. Otherwise
    checkpoints would look complete but lack the other nodes' files, and resume would fail hours later.
    """
    import uuid

    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes == 1:
        return
    run_dir = Path(run_dir)
    marker = run_dir / ".shared-check"
    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(token[0])
    broadcast_object_list(token)  # also a barrier: the marker is written before anyone reads it
    try:
        seen = marker.read_text() == token[0]
    except OSError:
        seen = False
    # a collective: once it returns, every process has read the marker
    missing = accelerator.reduce(torch.tensor([0.0 if seen else 1.0], device=accelerator.device), reduction="sum")
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    accelerator.wait_for_everyone()  # nobody returns before the marker is gone
    if int(missing.item()):
        raise ConfigError(
            f"run.dir={run_dir}: {int(missing.item())} of {accelerator.num_processes} processes do not see the main "
            f"process's files there; on many nodes run.dir must be on a filesystem all nodes share"
        )


def read_checkpoint_weights(ckpt: Path) -> dict:
    """The model tensors of a checkpoint folder (safetensors only: nothing is unpickled)."""
    from safetensors.torch import load_file

    path = ckpt / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (expected accelerate's safetensors model file)")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def checkpoint_shapes(ckpt: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint's model tensors, read from the safetensors header only."""
    from safetensors import safe_open

    path = ckpt / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (expected accelerate's safetensors model file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def check_keys_match(own: dict, state: dict, path: Path) -> None:
    """Raise a CheckpointError listing missing / unexpected / mis-shaped keys: never a silent partial load.

    ``own`` and ``state`` map keys to tensors or to shapes."""
    def shape(v):
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if shape(own[k]) != shape(state[k]))
    if not (missing or unexpected or wrong_shape):
        return

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [f"{name}: {show(keys)}" for name, keys in
             (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)) if keys]
    raise CheckpointError(f"{path} does not match the configured method/model; " + "; ".join(parts))


def load_training_state(accelerator, ckpt: Path, model=None, *, exact: bool = True) -> None:
    """``accelerator.load_state`` with a clear error. Weights are safetensors; optimizer, scaler and RNG files
    are read by accelerate with ``torch.load(weights_only=True)``, so a file that needs arbitrary unpickling
    (and could run code) is refused, never executed. ``exact``: the random states must be this run's
    (accelerate would skip unusable ones silently); false for an elastic resume, which re-seeds."""
    import pickle

    if model is not None:
        check_keys_match(model.state_dict(), checkpoint_shapes(ckpt), ckpt / MODEL_FILE)
    if exact:
        check_random_states(accelerator, ckpt)
    sharded = (ckpt / FSDP_MODEL_DIR).is_dir()
    if sharded != uses_fsdp(accelerator):
        written, now = ("FSDP", "without FSDP") if sharded else ("without FSDP", "under FSDP")
        raise CheckpointError(
            f"{ckpt}: written {written}, cannot be resumed {now}; resume with the accelerate config it was written "
            f"with (its full weights are in {MODEL_FILE}: `selfsup export` works either way)"
        )
    try:
        accelerator.load_state(str(ckpt))
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{ckpt}: refused to load: a file needs arbitrary unpickling, which could run code "
            f"(only weights-only pickles and safetensors are read): {first}"
        ) from None
    except (RuntimeError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{ckpt}: cannot resume from this checkpoint ({first})") from None


def fsync_dir(path: Path) -> None:
    """fsync every file directly in ``path`` (a checkpoint folder before its atomic rename)."""
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
