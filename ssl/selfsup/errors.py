"""User-facing errors.

Every problem caused by the user's input (a config key, a path, a weight file) is raised as a
:class:`SelfsupError` whose message is one line naming the file, key or value and what was
expected. The command-line entry points print that line and exit with code 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


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
