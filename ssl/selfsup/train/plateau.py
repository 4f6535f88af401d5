"""Plateau watch: say, while it happens, that a run is not learning yet (``train.on_plateau``).

The failure DINO's users report most on their own small data (DINOv2 #407, DINO #246, #273) is not a collapse that
ends in NaN but a run that sits at its starting point: the teacher's output stays near uniform and the loss near
``ln(out_dim)``, the value of a student that predicts nothing. Contrastive methods have the same plateau at chance
level (SimCLR: ``ln(2N - 1)`` for a global batch of N, every other view as likely as the positive). Each method logs
its chance level as ``loss_chance``; DINO also logs ``teacher_entropy`` and its maximum ``ln(out_dim)``.

A run is on the plateau at a logged step (after the lr warmup) when ``loss >= (1 - tolerance) x loss_chance``
(:func:`plateau_reason` says which signal to name). When that has held for ``train.plateau_steps`` steps, the
run says so in one line naming the signal and the knobs that move it; ``train.on_plateau=stop`` then ends the run
with that line (the last checkpoint stays). Unlike :mod:`selfsup.train.collapse` (a representation that has gone),
a plateau is often left later, so the default is to warn.
"""

from __future__ import annotations

import logging
import math

from selfsup.errors import TrainingError

log = logging.getLogger("selfsup")

SIGNALS = ("loss", "objective_loss", "loss_chance", "teacher_entropy", "teacher_entropy_max")


def knobs(signal: str, method: str, center: str | None = None) -> str:
    """The config keys that move a plateau of ``signal`` for ``method.name`` (named in the line); ``center``: the
    run's ``method.NAME.center``, so that Sinkhorn-Knopp centering is not suggested to a run that already uses it."""
    if signal == "teacher_entropy":
        swap = "" if center == "sinkhorn_knopp" else f"method.{method}.center=sinkhorn_knopp, "
        return (f"{swap}a lower method.{method}.teacher_temp, a smaller method.{method}.out_dim, or another "
                "optim.lr")
    return f"the augmentations (views.*), the method's temperature or head (method.{method}.*), or another optim.lr"


def plateau_reason(values: dict[str, float], tolerance: float) -> str | None:
    """Why one log record is on the plateau, in words, or ``None``.

    A teacher whose entropy is near ``ln(out_dim)`` is named first, whatever the loss: for DINO the loss cannot be
    below that entropy, and for DINOv2 the iBOT term can sit well below its chance level while the class token, which
    the export and kNN use, learns nothing (CIFAR-10 at teacher temperature 0.07: entropy 97-98% of ``ln(out_dim)``
    from step 400 on, objective 74% of chance, kNN at random-init level after 2,808 steps; docs/benchmarks.md).
    Otherwise the loss with a chance level (``objective_loss`` where a method logs it, else ``loss``) decides.
    """
    ent, ent_max = values.get("teacher_entropy"), values.get("teacher_entropy_max")
    uniform = ent is not None and bool(ent_max) and ent >= (1 - tolerance) * ent_max
    loss, chance = values.get("objective_loss", values.get("loss")), values.get("loss_chance")
    at_chance = loss is not None and bool(chance) and loss >= (1 - tolerance) * chance
    if uniform:
        return (f"teacher_entropy {ent:.3f} is within {tolerance:.0%} of ln(out_dim) = {ent_max:.3f} "
                "(a near-uniform teacher)")
    if at_chance:
        return f"loss {loss:.3f} is within {tolerance:.0%} of its chance level {chance:.3f} (nothing learnt yet)"
    return None


class PlateauWatch:
    """Tracks how long the run has stayed on its plateau.

    Args:
        steps: ``train.plateau_steps``, the stretch that counts as a plateau (0 = off).
        tolerance: ``train.plateau_tolerance``, how close to the starting value counts as "at" it.
        action: ``train.on_plateau`` (``warn`` or ``stop``).
        start_step: checks begin after this step (the end of the learning-rate warmup).
        method: ``method.name``, for the keys the line names.
        center: the method's ``center`` setting where it has one (DINO, DINOv2), else ``None``.
    """

    def __init__(self, steps: int, tolerance: float, action: str, start_step: int, method: str,
                 center: str | None = None) -> None:
        self.steps, self.tolerance, self.action, self.start_step = steps, tolerance, action, start_step
        self.method, self.center = method, center
        self.since: int | None = None
        self.warned = False

    def observe(self, step: int, logs: dict[str, float]) -> str | None:
        """Check the log record of ``step`` (its signals already averaged over processes, so that every process
        decides alike); returns the line when the plateau is named at this step.

        Raises:
            TrainingError: the plateau has lasted ``steps`` steps and ``action == "stop"``.
        """
        if not self.steps:
            return None
        values = {k: float(logs[k]) for k in SIGNALS if k in logs}
        reason = plateau_reason(values, self.tolerance) if step > self.start_step else None
        if reason is None or not all(math.isfinite(v) for v in values.values()):
            self.since, self.warned = None, False
            return None
        if self.since is None:
            self.since = step
        if step - self.since < self.steps or self.warned:
            return None
        signal = "teacher_entropy" if reason.startswith("teacher_entropy") else "loss"
        line = (f"plateau since step {self.since}: {reason}, for {step - self.since} steps; what moves it: "
                f"{knobs(signal, self.method, self.center)} (docs/monitor.md)")
        if self.action == "stop":
            raise TrainingError(f"{line}; stopped by train.on_plateau=stop")
        self.warned = True  # once per plateau
        log.warning("%s (train.on_plateau=warn: training goes on)", line)
        return line
