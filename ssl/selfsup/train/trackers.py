"""Experiment trackers: ``train.log_with`` names accelerate's trackers; the resolved config is their hyper-parameters.

accelerate owns the trackers (TensorBoard, Weights & Biases, MLflow, Comet, Aim, ClearML, DVCLive, SwanLab,
Trackio): selfsup names them in ``Accelerator(log_with=...)`` (:func:`tracker_list`), starts them with the resolved
config (:func:`start_trackers`), logs every ``train.log_every`` steps with ``accelerator.log`` and closes them
with ``accelerator.end_training``. TensorBoard writes to ``RUN_DIR/tensorboard``; the others get the project
:data:`PROJECT` and the run folder's name as the run name, and read their usual environment variables
(``WANDB_MODE``, ``WANDB_DIR``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ...). They start before any
work; one that cannot (no W&B login, MLflow refusing a ``file:`` store, anything else it raises) stops the run with
one line naming it, the cause and the fix (:func:`tracker_error`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, TensorBoardTracker, get_available_trackers
from accelerate.utils import LoggerType

from selfsup.errors import ConfigError, first_line
from selfsup.train.main_only import on_main
from selfsup.train.run_lock import TRACKER_OUTPUTS, clear_previous_run

PROJECT = "selfsup"
TENSORBOARD_DIR = "tensorboard"
# what to check when a tracker fails to start for another reason (its environment variables)
TRACKER_HINTS = {
    "wandb": "check WANDB_* (WANDB_MODE=offline needs no server)",
    "mlflow": "check MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db) and MLFLOW_EXPERIMENT_NAME",
    "tensorboard": "check that the run folder is writable",
    "comet_ml": "check COMET_API_KEY (COMET_MODE=offline needs no server)",
    "clearml": "check the ClearML credentials (clearml-init)",
}


def tracker_list(names: list[str], run_dir: str | Path, key: str = "train.log_with") -> list[str | GeneralTracker]:
    """Check ``names`` against accelerate's trackers and what is installed; the ``log_with`` list for ``Accelerator``.

    TensorBoard is given as accelerate's own ``TensorBoardTracker`` writing to ``RUN_DIR/tensorboard`` (a named
    ``tensorboard`` would put its folder under the project name shared with the other trackers).

    Raises:
        ConfigError: an unknown tracker name, or one whose package is not installed.
    """
    known = [t for t in LoggerType.list() if t != "all"]
    available = {str(t) for t in get_available_trackers()}
    out: list[str | GeneralTracker] = []
    for name in dict.fromkeys(names):
        if name not in known:
            raise ConfigError(f"bad value for '{key}': '{name}' (expected a list of accelerate trackers: "
                              f"{', '.join(known)})")
        if name not in available:
            raise ConfigError(f"bad value for '{key}': '{name}' is not installed (pip install {name}, or "
                              f"pip install -e '.[track]' for wandb and mlflow)")
        out.append(TensorBoardTracker(TENSORBOARD_DIR, str(run_dir)) if name == "tensorboard" else name)
    return out


def flat_config(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``; lists and nulls as JSON text, since TensorBoard's
    hyper-parameters take only numbers, booleans and strings."""
    out: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (bool, int, float, str)):
            out[prefix] = node
        else:
            out[prefix] = json.dumps(node)

    walk("", config)
    return out


def start_trackers(accelerator: Accelerator, config: dict[str, Any], run_dir: str | Path, *,
                   replace: bool = False) -> None:
    """``accelerator.init_trackers`` with the flattened ``config``, on the main process; the run is named after
    ``run_dir``'s folder. Called before any work, so that a tracker mistake costs seconds.

    ``replace`` (``run.overwrite=true``, not resuming): the previous run's tracker folders go first, so that the new
    TensorBoard curves do not mix with the old ones.

    Raises:
        ConfigError: on every process, when a tracker fails to start: one line naming the tracker, the cause and
            the fix (:func:`tracker_error`). The trackers already started are closed and the tracker folders this
            call created are removed, so that the run folder is as it was.
    """
    run_dir = Path(run_dir)

    def start() -> None:
        if replace:
            clear_previous_run(run_dir, TRACKER_OUTPUTS)
        new = [run_dir / d for d in TRACKER_OUTPUTS if not (run_dir / d).exists()]
        try:
            accelerator.init_trackers(PROJECT, config=flat_config(config), init_kwargs={
                "wandb": {"name": run_dir.resolve().name, "dir": str(run_dir)},
                "mlflow": {"run_name": run_dir.resolve().name},
            })
        except Exception as e:  # noqa: BLE001 - any tracker's failure becomes one line
            failed = _failed_tracker(e)
            for tracker in accelerator.trackers:
                with contextlib.suppress(Exception):
                    tracker.finish()
            accelerator.trackers = []
            for folder in new:
                shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError(tracker_error(failed, e)) from None

    on_main(accelerator, start)


def _failed_tracker(e: BaseException) -> str:
    """The name of the accelerate tracker (``wandb``, ``mlflow``, ...) whose code raised ``e``, from its traceback."""
    name = ""
    tb = e.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, GeneralTracker):
            name = str(getattr(owner, "name", "")) or name
        tb = tb.tb_next
    return name or "a tracker"


def tracker_error(tracker: str, e: BaseException) -> str:
    """The one line for a tracker that failed to start: ``train.log_with`` and the tracker, the cause, the fix."""
    full, cause = str(e), f"{type(e).__name__}: {first_line(e, limit=240)}"
    where = f"train.log_with: {tracker} could not start"
    if tracker == "wandb" and ("api key" in full.lower() or "login" in full.lower()):
        return (f"{where}: not logged in to W&B ({cause}); run `wandb login` (or set WANDB_API_KEY), or log "
                "without an account with WANDB_MODE=offline (`wandb sync` uploads later), or drop wandb from "
                "train.log_with")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracker == "mlflow" and ("MLFLOW_ALLOW_FILE_STORE" in full or "filesystem tracking backend" in full):
        return (f"{where}: MLflow refuses the file store MLFLOW_TRACKING_URI={uri or './mlruns'} (its file backend "
                "is in maintenance mode); use a database, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db, or keep the "
                "files with MLFLOW_ALLOW_FILE_STORE=true")
    hint = TRACKER_HINTS.get(tracker, "check its settings")
    return f"{where} ({cause}); {hint}, or drop it from train.log_with"


def log_metrics(accelerator: Accelerator, metrics_path: Path, record: dict[str, Any]) -> None:
    """On the main process, append ``record`` (with its ``step``) as a line of ``metrics.jsonl`` and send it to the
    trackers."""
    if accelerator.is_main_process:
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
