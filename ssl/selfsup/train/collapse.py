"""Collapse detection: stop (or warn) when a collapse signal stays past its threshold.

The methods log two collapse signals (:mod:`selfsup.methods._signals`, :class:`selfsup.methods._dino_model.DINO`):

- ``embed_std``: per-dimension std of the L2-normalised student embeddings, about ``1/sqrt(d)`` when they are
  spread over the sphere and 0 when every image maps to one point (SimSiam, Chen & He 2021, Sec. 4.1). Checked
  relative to that healthy value: collapsed below :data:`EMBED_STD_MIN` x ``1/sqrt(d)``.
- ``teacher_entropy`` (DINO): entropy of the centred, sharpened teacher output over ``k = out_dim`` dimensions;
  0 when one dimension dominates every image (collapse by sharpening), ``ln(k)`` when the output is uniform
  (collapse by centering; Caron et al. 2021, Sec. 5.3). Checked relative to ``ln(k)``: collapsed below
  :data:`ENTROPY_LOW` or above :data:`ENTROPY_HIGH` of it.

A freshly initialised DINO teacher is close to uniform (entropy near ``ln(k)``) and a random ViT maps images close
together, so the checks start only after the learning-rate warmup, and a signal must stay past its threshold
for ``train.collapse_patience`` logged steps in a row. The loop averages the signals over processes first (one
collective shared with the plateau watch), so every process takes the same decision.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from selfsup.errors import TrainingError

log = logging.getLogger("selfsup")

EMBED_STD_MIN = 0.1  # x 1/sqrt(d)
ENTROPY_LOW = 0.02  # x ln(out_dim)
ENTROPY_HIGH = 0.99  # x ln(out_dim); above the 0.978 the quickstart config reaches by its last step (docs/monitor.md)
SIGNALS = ("embed_std", "embed_std_healthy", "teacher_entropy", "teacher_entropy_max")


def collapse_reason(logs: dict[str, float]) -> str | None:
    """The first signal past its threshold in one log record, in words, or ``None`` when healthy."""
    std, healthy = logs.get("embed_std"), logs.get("embed_std_healthy")
    if std is not None and healthy and std < EMBED_STD_MIN * healthy:
        return f"embed_std {std:.4g} < {EMBED_STD_MIN} x healthy {healthy:.4g} (every image maps to one point)"
    ent, ent_max = logs.get("teacher_entropy"), logs.get("teacher_entropy_max")
    if ent is not None and ent_max:
        if ent < ENTROPY_LOW * ent_max:
            return f"teacher_entropy {ent:.4g} < {ENTROPY_LOW} x ln(out_dim) = {ENTROPY_LOW * ent_max:.4g} (one-hot)"
        if ent > ENTROPY_HIGH * ent_max:
            return f"teacher_entropy {ent:.4g} > {ENTROPY_HIGH} x ln(out_dim) = {ENTROPY_HIGH * ent_max:.4g} (uniform)"
    return None


class CollapseGuard:
    """Counts logged steps in a row with a collapse signal past its threshold.

    Args:
        patience: ``train.collapse_patience``. action: ``train.on_collapse`` (``stop`` or ``warn``).
        start_step: checks begin after this step (the end of the learning-rate warmup).
        last_healthy: a checkpoint known to be healthy (the one a run resumed from), else ``None``.
    """

    def __init__(self, patience: int, action: str, start_step: int, last_healthy: Path | None = None) -> None:
        self.patience, self.action, self.start_step = patience, action, start_step
        self.last_healthy = last_healthy
        self.streak = 0
        self.since: int | None = None

    @property
    def collapsing(self) -> bool:
        """A streak is running: a checkpoint written now would not be a healthy one."""
        return self.streak > 0

    @property
    def allows_save(self) -> bool:
        """No periodic checkpoint during a streak when it may stop the run: the last healthy ones stay."""
        return not (self.collapsing and self.action == "stop")

    def saved(self, ckpt: Path) -> None:
        """Record a checkpoint just written; it is healthy unless a streak is running."""
        if not self.collapsing:
            self.last_healthy = ckpt

    def observe(self, step: int, logs: dict[str, float]) -> None:
        """Check the collapse signals of the log record of ``step`` (already averaged over processes).

        Raises:
            TrainingError: ``patience`` records in a row past a threshold and ``action == "stop"``: one line with
                the signal, its value and the last healthy checkpoint.
        """
        values = {k: float(logs[k]) for k in SIGNALS if k in logs}
        reason = collapse_reason(values) if step > self.start_step else None
        if reason is None or not all(math.isfinite(v) for v in values.values()):
            self.streak, self.since = 0, None
            return
        self.streak += 1
        self.since = self.since or step
        if self.streak < self.patience:
            return
        msg = (f"collapse at step {step}: {reason}, for {self.streak} logged steps in a row since step {self.since}; "
               f"last healthy checkpoint: {self.last_healthy or '(none)'}")
        if self.action == "stop":
            raise TrainingError(f"{msg}. Lower optim.lr or raise the warmup, then resume from it with "
                                f"train.resume=PATH (or set train.on_collapse=warn)")
        if self.streak == self.patience:  # once per streak
            log.warning("%s (train.on_collapse=warn: training goes on)", msg)
