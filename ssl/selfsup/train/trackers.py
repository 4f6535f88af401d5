"""Experiment trackers: ``train.log_with`` names accelerate's trackers; the resolved config is their hyper-parameters.

accelerate owns the trackers (TensorBoard, Weights & Biases, MLflow, Comet, Aim, ClearML, DVCLive, SwanLab,
Trackio): selfsup names them in ``Accelerator(log_with=...)`` (:func:`tracker_list`), starts them with the resolved
config (:func:`start_trackers`), logs every ``train.log_every`` steps with ``accelerator.log`` and closes them
with ``accelerator.end_training``. TensorBoard writes to ``RUN_DIR/tensorboard``; the others get the project
:data:`PROJECT` and the run folder's name as the run name, and read their usual environment variables
(``WANDB_MODE``, ``WANDB_DIR``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, TensorBoardTracker, get_available_trackers
from accelerate.utils import LoggerType

from selfsup.errors import ConfigError

PROJECT = "selfsup"
TENSORBOARD_DIR = "tensorboard"


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


def start_trackers(accelerator: Accelerator, config: dict[str, Any], run_dir: str | Path) -> None:
    """``accelerator.init_trackers`` with the flattened ``config``; the run is named after ``run_dir``'s folder."""
    name = Path(run_dir).resolve().name
    accelerator.init_trackers(PROJECT, config=flat_config(config), init_kwargs={
        "wandb": {"name": name, "dir": str(run_dir)},
        "mlflow": {"run_name": name},
    })


def log_metrics(accelerator: Accelerator, metrics_path: Path, record: dict[str, Any]) -> None:
    """On the main process, append ``record`` (with its ``step``) as a line of ``metrics.jsonl`` and send it to the
    trackers."""
    if accelerator.is_main_process:
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
