"""Work done once, on the main process, whose result (or one-line error) every process gets.

Reading a shard index, counting shards and starting the experiment trackers must not run once per process (a
data set read N times; N W&B runs). :func:`on_main` runs the work on the main process and shares what it returned
with ``accelerate.utils.broadcast_object_list``; a :class:`~selfsup.errors.SelfsupError` raised there is raised
again, with the same class and line, on every process, so that no process waits alone in a later collective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from accelerate import Accelerator

from selfsup.errors import SelfsupError

T = TypeVar("T")


def on_main(accelerator: Accelerator, work: Callable[[], T]) -> T:
    """``work()`` on the main process only; its result on every process.

    Raises:
        SelfsupError: what ``work`` raised on the main process, on every process (same class and message).
        RuntimeError: on the other processes, when ``work`` failed on the main one with another exception (the
            main process keeps that exception and its traceback).
    """
    if accelerator.num_processes == 1:
        return work()
    result, failure, error = None, None, None
    if accelerator.is_main_process:
        try:
            result = work()
        except SelfsupError as e:
            failure, error = (type(e), str(e)), e
        except Exception as e:  # noqa: BLE001 - a bug: tell the others, keep the traceback here
            failure, error = (RuntimeError, f"the main process failed: {type(e).__name__}: {e}"), e
    from accelerate.utils import broadcast_object_list

    box = [(result, failure)]
    broadcast_object_list(box)  # also a barrier: nobody goes on before the main process is done
    result, failure = box[0]
    if error is not None:
        raise error
    if failure is not None:
        cls, message = failure
        raise cls(message)
    return result  # type: ignore[return-value]
