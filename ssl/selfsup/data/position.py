"""The data position of a process: where each of its workers is in the shard stream; lives in the checkpoint.

A batch of :class:`~selfsup.data.stream.ShardStream` carries its worker's ``(epoch, offset)``; restarting a stream
from those positions continues it bit-identically (exact resume).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from selfsup.errors import DataError


class DataPosition:
    """Where each worker of this process is in the stream, plus skip counts; lives in the checkpoint.

    Call :meth:`update` with ``batch["meta"]`` for every batch the training loop consumes; on resume,
    pass :meth:`start_positions` and :attr:`next_worker` to a new :class:`ShardStream`. The numbers of
    workers and processes are part of the position (they decide which samples each worker reads), so
    loading a state saved with different ones raises :class:`~selfsup.errors.DataError`.
    """

    def __init__(self, *, num_workers: int, world_size: int = 1, rank: int = 0) -> None:
        self.num_workers = max(1, num_workers)  # num_workers=0 reads as worker 0 of 1
        self.world_size = world_size
        self.rank = rank
        self.positions: dict[int, tuple[int, int]] = {}
        self.skipped: Counter[str] = Counter()
        self.batches = 0
        self.next_worker = 0

    def update(self, meta: dict[str, Any]) -> None:
        """Record a consumed batch's ``meta``."""
        worker = int(meta["worker"])
        self.positions[worker] = (int(meta["epoch"]), int(meta["offset"]))
        self.skipped.update(meta.get("skipped", {}))
        self.batches += 1
        self.next_worker = (worker + 1) % self.num_workers

    def start_positions(self) -> dict[int, tuple[int, int]]:
        """``{worker: (epoch, offset)}`` for ``ShardStream(start_positions=...)``."""
        return dict(self.positions)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (ints and strings only)."""
        return {
            "num_workers": self.num_workers,
            "world_size": self.world_size,
            "rank": self.rank,
            "positions": {str(w): [e, o] for w, (e, o) in sorted(self.positions.items())},
            "skipped": dict(self.skipped),
            "batches": self.batches,
            "next_worker": self.next_worker,
        }

    def layout_mismatches(self, state: dict[str, Any]) -> list[tuple[str, int, int]]:
        """``(name, saved, mine)`` for each of the worker and process counts that differ from a :meth:`state_dict`."""
        return [(name, int(state[name]), mine) for name, mine in
                (("num_workers", self.num_workers), ("world_size", self.world_size)) if int(state[name]) != mine]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the worker and process counts must match this run's."""
        mismatches = self.layout_mismatches(state)
        if mismatches:
            name, saved, mine = mismatches[0]
            raise DataError(
                f"data position: checkpoint was saved with {name}={saved} but this run has {name}={mine}; "
                f"resume with {name}={saved} to continue the exact sample stream"
            )
        self.positions = {int(w): (int(e), int(o)) for w, (e, o) in state["positions"].items()}
        self.skipped = Counter({str(k): int(v) for k, v in state.get("skipped", {}).items()})
        self.batches = int(state.get("batches", 0))
        self.next_worker = int(state.get("next_worker", 0))
