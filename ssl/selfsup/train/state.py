"""The loop's own state, one object with ``state_dict``/``load_state_dict`` (torchtitan's ``Trainer``).

Saved as JSON next to accelerate's files, one file per process (each process has its own data
position), so resuming never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from selfsup.errors import CheckpointError


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # samples consumed by this process
    bad_steps_total: int = 0  # steps skipped for a non-finite loss or gradient
    bad_steps_in_row: int = 0
    global_batch: int = 0  # samples per optimizer step over all processes (0: written before it was recorded)
    data: dict[str, Any] = field(default_factory=dict)  # the data position (DataPosition.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)

    def save(self, directory: Path, process_index: int) -> None:
        (directory / f"train_state_{process_index}.json").write_text(json.dumps(self.state_dict()))

    @classmethod
    def load(cls, directory: Path, process_index: int) -> TrainState:
        """Read one process's state; a missing, corrupt or mistyped file is a CheckpointError naming it."""
        path = directory / f"train_state_{process_index}.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable train state ({e})") from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: not a readable train state (a JSON object expected)")
        for f in fields(cls):
            want = dict if f.name == "data" else int
            if f.name in saved and (type(saved[f.name]) is not want or want is int and saved[f.name] < 0):
                raise CheckpointError(f"{path}: '{f.name}' is {saved[f.name]!r}, expected a "
                                      f"{'JSON object' if want is dict else 'non-negative integer'}")
        state = cls()
        state.load_state_dict(saved)
        return state
