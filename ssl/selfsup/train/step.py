"""One training step: the body of the pretraining loop, and exactly what ``benchmarks/throughput.py`` times.

views -> method forward (loss, logs) -> backward (accelerate: autocast, fp16 loss scaling, no all-reduce on the
intermediate micro-batches of ``train.grad_accum``) -> ``clip_grad_norm_`` -> one finite check that every
process agrees on -> ``before_optimizer_step`` (e.g. DINO's frozen last layer) -> AdamW -> ``after_optimizer_step``
(EMA of the teacher / momentum encoder, Caron et al. 2021 Alg. 1). A step with a non-finite loss (or, without
fp16, gradient) makes no update and restores the buffers its forward changed (DINO center, MoBY queues, BatchNorm
statistics); ``train.max_bad_steps`` of them in a row stop the run.

The learning rate (linear warmup, then cosine; linear scaling rule lr x global_batch / 256, Goyal et al. 2017), the
weight decay (cosine) and the method's :class:`~selfsup.methods.base.StepContext` are pure functions of
``state.step`` (:mod:`selfsup.optim.schedules`), so a resumed run sees the values the uninterrupted one saw.

Shapes: views are v tensors (b, 3, h, w), global views first; b = images per process and micro-batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from selfsup.config import Config, OptimConfig, TrainConfig
from selfsup.errors import TrainingError
from selfsup.methods.base import StepContext
from selfsup.optim.adamw_state import init_adamw_state
from selfsup.optim.param_groups import param_groups
from selfsup.optim.schedules import cosine, scaled_lr, warmup_cosine
from selfsup.train.accelerator import sync_batchnorm, uses_fsdp
from selfsup.train.checkpoint import latest_checkpoint
from selfsup.train.state import TrainState

log = logging.getLogger("selfsup")


def compile_backbones(method: nn.Module) -> None:
    """``torch.compile`` every timm backbone in place (state-dict keys stay unchanged; ``train.compile``)."""
    for module in method.modules():
        if hasattr(module, "forward_features") and hasattr(module, "num_features"):
            module.compile()


def prepare_training(cfg: Config, accelerator: Accelerator,
                     method: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    """SyncBatchNorm (``train.sync_bn``), ``torch.compile`` (``train.compile``), AdamW over :func:`param_groups`
    and ``accelerator.prepare``; returns the prepared method and optimizer."""
    if cfg.train.sync_bn:
        sync_batchnorm(method, accelerator)
    if cfg.train.compile:
        compile_backbones(method)
    # fused AdamW: one kernel for all parameters, on CUDA and (torch >= 2.4) on the CPU
    optimizer = torch.optim.AdamW(param_groups(method), lr=0.0, betas=tuple(cfg.optim.betas),
                                  fused=cfg.optim.fused or None)
    method, optimizer = accelerator.prepare(method, optimizer)
    if uses_fsdp(accelerator):  # sharded optimizer checkpoints need the state of every parameter, even frozen ones
        init_adamw_state(optimizer)
    return method, optimizer


@dataclass
class StepSignals:
    """What one step hands back for logging; tensors stay on the device (no host sync)."""

    ctx: StepContext
    lr: float
    wd: float
    loss: Tensor  # () the last micro-batch's loss on this process
    grad_norm: Tensor | float  # total norm before clipping; non-finite on a bad step or an fp16 overflow
    logs: dict[str, Tensor]  # the method's detached scalars (collapse signals and friends)
    samples: int  # images this process consumed
    bad: bool  # no update was made
    stop: bool = False  # some process was asked to stop (pre-emption): every process stops after this step


class TrainStep:
    """Callable that runs optimizer step ``state.step`` and advances ``state`` (step, samples, bad-step counts).

    Args:
        accelerator, method, optimizer: as returned by :func:`prepare_training`.
        optim, train: the config sections (schedules, ``clip_grad``; ``grad_accum``, ``max_bad_steps``).
        state: the loop's state, updated in place.
        steps_per_epoch, total_steps, global_batch: the schedule's length and the batch the lr is scaled by.
        run_dir: named in the error when too many bad steps stop the run (its latest checkpoint).
        stop_requested: whether this process was asked to stop (a pre-emption signal); agreed across processes
            in the step's one collective and handed back as :attr:`StepSignals.stop`.
    """

    def __init__(self, accelerator: Accelerator, method: nn.Module, optimizer: torch.optim.Optimizer, *,
                 optim: OptimConfig, train: TrainConfig, state: TrainState, steps_per_epoch: int, total_steps: int,
                 global_batch: int, run_dir: Path | None = None,
                 stop_requested: Callable[[], bool] | None = None) -> None:
        self.accelerator, self.method, self.optimizer, self.state = accelerator, method, optimizer, state
        self.unwrapped = accelerator.unwrap_model(method)
        self.optim, self.train, self.run_dir = optim, train, run_dir
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.peak_lr = scaled_lr(optim.lr, global_batch)
        self.warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
        self.params = [p for p in method.parameters() if p.requires_grad]
        self.buffers = list(method.buffers())
        self.max_norm = optim.clip_grad or math.inf  # always measure the norm: it decides non-finite steps
        self.stop_requested = stop_requested or (lambda: False)

    def __call__(self, next_views: Callable[[], list[Tensor]]) -> StepSignals:
        """One optimizer step over ``train.grad_accum`` micro-batches, each from ``next_views()``."""
        acc, method, optimizer, state = self.accelerator, self.method, self.optimizer, self.state
        ctx = self.unwrapped.step_context(state.step, self.steps_per_epoch, self.total_steps)
        lr = warmup_cosine(state.step, self.total_steps, self.warmup_steps, self.peak_lr, self.optim.min_lr)
        wd = cosine(state.step, self.total_steps, self.optim.weight_decay, self.optim.weight_decay_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd * group.get("wd_mult", 1.0)
        snapshot = [b.detach().clone() for b in self.buffers]  # restored on a bad step
        samples = 0
        for _ in range(self.train.grad_accum):
            views = next_views()
            with acc.accumulate(method):
                out = method(views, ctx)
                acc.backward(out.loss)
            samples += views[0].shape[0]
        state.samples_seen += samples
        grad_norm = acc.clip_grad_norm_(self.params, self.max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        bad, stop = self._agree(out.loss, grad_norm)
        if bad:
            self._skip(snapshot)
        else:
            state.bad_steps_in_row = 0
            self.unwrapped.before_optimizer_step(ctx)
            optimizer.step()
            self.unwrapped.after_optimizer_step(ctx)
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return StepSignals(ctx=ctx, lr=lr, wd=wd, loss=out.loss.detach(), grad_norm=grad_norm, logs=out.logs,
                           samples=samples, bad=bad, stop=stop)

    def log_values(self, out: StepSignals) -> dict[str, float]:
        """``out`` as numbers for ``metrics.jsonl``: the loss averaged over processes (a collective and a host sync:
        call it on logged steps, on every process), the schedules, the gradient norm, the fp16 loss scale and the
        method's scalars."""
        ctx, scaler = out.ctx, self.accelerator.scaler
        return {
            "loss": self.accelerator.reduce(out.loss.float(), reduction="mean").item(), "lr": out.lr, "wd": out.wd,
            "momentum": ctx.momentum, **({"teacher_temp": ctx.teacher_temp} if ctx.teacher_temp is not None else {}),
            "grad_norm": float(out.grad_norm),
            **({"loss_scale": float(scaler.get_scale())} if scaler is not None else {}),
            **{k: float(v) for k, v in out.logs.items()},
        }

    def _agree(self, loss: Tensor, grad_norm: Tensor | float) -> tuple[bool, bool]:
        """``(bad, stop)``: a non-finite loss (or gradient norm without fp16) and a stop request, each true when it
        is true on any process, decided alike on every process in one all-reduce: the step's one host sync."""
        acc = self.accelerator
        bad = ~torch.isfinite(loss.detach())
        if acc.scaler is None:
            bad |= ~torch.isfinite(torch.as_tensor(grad_norm, device=acc.device))
        # else (fp16): an overflowing gradient is the scaler's business, as in the reference implementations:
        # optimizer.step() skips the update and lowers the loss scale. Only a non-finite loss is a bad step.
        flags = torch.stack([bad.float(), torch.tensor(float(self.stop_requested()), device=acc.device)])
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        bad_any, stop_any = (flags > 0).tolist()
        return bool(bad_any), bool(stop_any)

    def _skip(self, snapshot: list[Tensor]) -> None:
        """Undo the forward's buffer updates and count the step; too many in a row is a :class:`TrainingError`."""
        state = self.state
        with torch.no_grad():
            for buf, saved in zip(self.buffers, snapshot):
                buf.copy_(saved)
        state.bad_steps_total += 1
        state.bad_steps_in_row += 1
        log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)", state.step + 1,
                    state.bad_steps_in_row)
        if state.bad_steps_in_row >= self.train.max_bad_steps:
            last = latest_checkpoint(self.run_dir) if self.run_dir is not None else None
            raise TrainingError(
                f"{state.bad_steps_in_row} non-finite steps in a row at step {state.step + 1}; last good checkpoint: "
                f"{last or '(none)'}. Lower optim.lr or use train.mixed_precision=bf16, then resume with "
                f"train.resume=auto"
            )
