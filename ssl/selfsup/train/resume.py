"""Where a resumed run starts: the loop state and data position of this process, exact or elastic.

Exact resume (the default) needs the layout the checkpoint was written with: the same number of processes
and of data workers, because they decide which samples each worker reads. Then every process continues its
own sample stream where it stopped, and the run equals an uninterrupted one.

Elastic resume (``train.resume_elastic=true``) is for a job restarted on a different number of GPUs or
workers. The step, model, optimizer and schedules continue; the global batch must stay the same (adjust
``train.batch_size`` or ``train.grad_accum``) so that the schedules keep their meaning. The data stream
cannot be carried over to the new layout, so the epoch that was in progress starts again from its beginning:
samples already seen in it are seen once more, none is skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from selfsup.data.position import DataPosition
from selfsup.errors import ConfigError, DataError
from selfsup.train.state import TrainState

log = logging.getLogger("selfsup")


def interrupted_epoch(ckpt: Path, world_size: int) -> int:
    """The earliest epoch any worker of any process was reading when the checkpoint was written."""
    epochs = []
    for rank in range(world_size):
        data = TrainState.load(ckpt, rank).data  # a missing or corrupt file is one CheckpointError line
        epochs += [int(e) for e, _ in (data or {}).get("positions", {}).values()]
    return min(epochs, default=0)


def load_resume_state(ckpt: Path | None, *, rank: int, world_size: int, num_workers: int, global_batch: int,
                      elastic: bool) -> tuple[TrainState, DataPosition, bool]:
    """This process's :class:`TrainState` and the data position to start its loader from.

    Returns:
        ``(state, position, relayout)``: ``relayout`` is true for an elastic resume onto another layout (the
        per-process RNG states of the checkpoint then do not fit and the caller re-seeds). A fresh start has an
        empty position (the loader starts at epoch 0).

    Raises:
        DataError: exact resume with another layout (the message names ``train.resume_elastic``).
        ConfigError: elastic resume with another global batch (the message gives a batch size that fits).
    """
    position = DataPosition(num_workers=num_workers, world_size=world_size, rank=rank)
    if ckpt is None:
        return TrainState(global_batch=global_batch), position, False
    first = TrainState.load(ckpt, 0)  # every process wrote one; step and counters are the same in all
    if not first.data or not position.layout_mismatches(first.data) or not elastic:
        state = TrainState.load(ckpt, rank) if rank else first
        if state.data:
            try:
                position.load_state_dict(state.data)
            except DataError as e:
                raise DataError(f"{e}, or set train.resume_elastic=true to restart the interrupted epoch with "
                                f"the new layout") from None
        state.global_batch = global_batch
        return state, position, False

    old_world, old_workers = int(first.data["world_size"]), int(first.data["num_workers"])
    if first.global_batch and first.global_batch != global_batch:
        per_process = first.global_batch / world_size
        hint = f"train.batch_size={int(per_process)} with grad_accum 1" if per_process == int(per_process) else \
            "train.batch_size x processes x train.grad_accum"
        raise ConfigError(
            f"train.resume_elastic: the checkpoint's global batch is {first.global_batch}, this run's is "
            f"{global_batch}; keep it (e.g. {hint}) so that the step-based schedules keep their meaning"
        )
    state = first
    state.global_batch = global_batch
    epoch = interrupted_epoch(ckpt, old_world)
    position.positions = {w: (epoch, 0) for w in range(position.num_workers)}
    state.data = position.state_dict()
    if rank == 0:
        log.warning("train.resume_elastic: checkpoint written by %d process(es) x %d worker(s), resuming on %d x %d; "
                    "epoch %d restarts from its beginning (its samples already seen are seen again)",
                    old_world, old_workers, world_size, num_workers, epoch)
    return state, position, True
