"""Pre-emption: on SIGTERM or SIGUSR1 the run finishes its step, saves a checkpoint there and exits with 75.

Schedulers stop a job with SIGTERM, then SIGKILL after a grace period (SLURM's KillWait, 30 s by default;
Kubernetes' ``terminationGracePeriodSeconds``); SLURM's ``--signal=USR1@120`` warns before the time limit.
Without a handler, every step since the last periodic checkpoint was lost.

:class:`StopSignals` only records the signal (a handler must not do work). The training step reads the flag and
all-reduces it together with its finite check (one collective, see :class:`~selfsup.train.step.TrainStep`), so
every process sees the stop after the same step, and all write the same checkpoint with the usual atomic
``save_checkpoint``. Later signals are ignored: the save in progress goes on. A SIGKILL during it leaves the
previous checkpoint loadable (the new one is renamed into place only when complete).

The exit status is 75, ``EX_TEMPFAIL`` of sysexits.h ("a temporary failure; retry later"): distinct from a
failure (1), a user error (2) and a death by signal (128 + n), so a job script can tell "pre-empted, resume me".
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from selfsup.errors import Preempted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT = Preempted.exit_code  # 75, EX_TEMPFAIL (sysexits.h)


class StopSignals:
    """While entered (main thread only), SIGTERM and SIGUSR1 set :attr:`received` instead of ending the process;
    the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def requested(self) -> bool:
        """Whether a stop signal has arrived (in this process)."""
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:  # the first one counts; a second one during the save changes nothing
            self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works in the main thread only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """``worker_init_fn`` of the data workers: a scheduler signals every process of a job, and a worker that died of
    it would fail the step in progress; the training process decides, and the workers end with it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
