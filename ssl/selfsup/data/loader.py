"""The DataLoader over a :class:`~selfsup.data.stream.ShardStream`: batches are made in the workers, and after a
resume the first batch comes from the worker after the last consumed one."""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler before ours
from collections import deque
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from selfsup.data.stream import ShardStream
from selfsup.train.preempt import ignore_stop_signals


class _RoundRobinLoader(DataLoader):
    """A DataLoader whose batch order starts at worker ``first_worker`` instead of 0.

    DataLoader always takes the first batch from worker 0; after a resume the next batch must come
    from the worker after the last consumed one, or the order of batches would change. Batches of
    the other workers wait in a queue (at most ``num_workers - 1`` of them).
    """

    first_worker: int = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        it = super().__iter__()
        if self.num_workers <= 1 or self.first_worker % self.num_workers == 0:
            yield from it
            return
        queues: dict[int, deque[Any]] = {w: deque() for w in range(self.num_workers)}
        want = self.first_worker % self.num_workers
        for batch in it:
            queues[int(batch["meta"]["worker"])].append(batch)
            while queues[want]:
                yield queues[want].popleft()
                want = (want + 1) % self.num_workers


def make_loader(
    dataset: ShardStream,
    *,
    num_workers: int,
    pin_memory: bool,
    prefetch_factor: int = 2,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader over a :class:`ShardStream` (batches are made in the workers: ``batch_size=None``).

    ``num_workers=0`` reads in the main process as worker 0 of 1. The workers ignore SIGTERM and SIGUSR1: the
    training process stops on them after its step (:mod:`selfsup.train.preempt`), and needs its workers until then.
    So they must be ended by the loader, not by a signal: the training loop iterates once over an endless stream and
    closes that iterator when it stops (``persistent_workers`` is off by default, so no DataLoader keeps a second
    reference to the workers after that).
    """
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers,
                 "worker_init_fn": ignore_stop_signals}
    loader = _RoundRobinLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **extra)
    loader.first_worker = getattr(dataset, "first_worker", 0)
    return loader


def _kill_daemonic_children() -> None:
    """At interpreter exit, before multiprocessing's own exit handler (``atexit`` runs the last registered first):
    SIGKILL the daemonic children, which that handler would SIGTERM and then join without a timeout. Data workers
    ignore SIGTERM (pre-emption is the training process's call), so when an error kept a DataLoader iterator
    alive (a traceback held by the caller holds its frames) that join would wait forever."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_daemonic_children)
