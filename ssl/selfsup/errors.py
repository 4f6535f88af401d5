"""User-facing errors.

Every problem caused by the user's input (a config key, a path, a weight file) is raised as a
:class:`SelfsupError` whose message is one line naming the file, key or value and what was
expected. The command-line entry points print that line and exit with code 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class SelfsupError(Exception):
    """A clear, one-line error about user input. CLI exit code 2."""

    exit_code = 2


class ConfigError(SelfsupError):
    """A config key, type or value is wrong (unknown key, wrong type, incompatible choice)."""


class DataError(SelfsupError):
    """Input data cannot be used (missing path, no shards, too many bad samples)."""


class CheckpointError(SelfsupError):
    """A checkpoint or exported folder is missing, incomplete, unsafe or does not match."""


class CheckpointWriteError(CheckpointError):
    """The machine, not the input: a checkpoint could not be written (disk full, I/O error). CLI exit code 1."""

    exit_code = 1


class TrainingError(SelfsupError):
    """Training cannot go on (too many non-finite steps in a row)."""


class Preempted(Exception):
    """Not an error: a stop signal (SIGTERM, SIGUSR1) arrived and every process saved a checkpoint at the step it
    reached (``selfsup.train.preempt``). CLI exit code 75, "pre-empted, resume me"; the loop has logged its line."""

    exit_code = 75  # EX_TEMPFAIL of sysexits.h: "a temporary failure, try again"

    def __init__(self, message: str, step: int, checkpoint: str) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def one_line(e: BaseException) -> str:
    """The user-facing line of ``e``: a SelfsupError re-raised from a DataLoader worker carries the worker's
    traceback in its message (``... selfsup.errors.DataError: MSG``); keep MSG."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    if msg.startswith("selfsup.errors."):
        msg = msg.split(": ", 1)[-1]
    return msg


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message (its type's name when empty), cut to ``limit`` characters: the cause
    quoted inside a one-line error (a third-party message can run to many lines)."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _say(prog: str, e: BaseException) -> None:
    # One write with its newline: stderr writes through, so print's two writes (text, then "\n") from two DDP
    # processes on one pipe could join their lines.
    sys.stderr.write(f"{prog}: error: {one_line(e)}\n")
    sys.stderr.flush()


def run_cli(prog: str, command: Callable[[], int | None]) -> int:
    """Run a command-line entry point: user errors print ``PROG: error: LINE`` and give their exit code.

    The one wrapper of every ``selfsup`` / ``selfsup-eval`` command. A pre-empted run (:class:`Preempted`) returns
    its own exit code, silently: the training loop has logged the line. A :class:`SelfsupError` raised in a DataLoader
    worker reaches the main process re-wrapped by torch (its text names ``selfsup.errors.``) and is unwrapped
    here; any other exception is a bug and keeps its traceback.
    """
    try:
        return int(command() or 0)
    except Preempted as e:
        return e.exit_code
    except SelfsupError as e:
        _say(prog, e)
        return e.exit_code
    except Exception as e:
        if "selfsup.errors." not in str(e):
            raise
        _say(prog, e)
        return SelfsupError.exit_code
