"""The pretraining loop: step-based, on accelerate, method-agnostic.

shards -> views (data workers) -> method forward/loss -> backward -> clip -> optimizer -> EMA
-> metrics.jsonl / TensorBoard -> checkpoints. The same code runs on a laptop CPU and under
``accelerate launch`` on many GPUs; every process group comes from accelerate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from selfsup.build import build_loader, build_method
from selfsup.config import Config, config_hash, save_config, to_dict, to_yaml
from selfsup.data.shard_index import shard_counts
from selfsup.data.shard_list import expand_shards
from selfsup.errors import ConfigError, Preempted
from selfsup.models.backbone import check_crop_sizes, check_global_pool
from selfsup.train import collapse
from selfsup.train import plateau as plateau_watch
from selfsup.train.accelerator import make_accelerator
from selfsup.train.checkpoint import (
    check_shared_run_dir,
    load_training_state,
    resolve_resume,
    save_checkpoint,
)
from selfsup.train.collapse import CollapseGuard
from selfsup.train.main_only import on_main
from selfsup.train.monitor import make_monitor
from selfsup.train.plateau import PlateauWatch
from selfsup.train.preempt import PREEMPTED_EXIT, StopSignals
from selfsup.train.resume import load_resume_state
from selfsup.train.run_lock import claim_run_dir, clear_previous_run
from selfsup.train.step import TrainStep, prepare_training
from selfsup.train.trackers import log_metrics, start_trackers

log = logging.getLogger("selfsup")


def set_cpu_threads(local_processes: int) -> None:
    """On a CPU, split torch's threads among the training processes of this machine; data workers share the cores.

    A CPU step costs far more than decoding and cropping its batch, so reserving a core per data worker idles it
    (measured: docs/speed.md, "CPU threads"). An explicit OMP_NUM_THREADS (torchrun sets 1 per process) wins.
    """
    if "OMP_NUM_THREADS" not in os.environ and local_processes > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // local_processes))


def _mean_over_processes(values: dict[str, float], accelerator: Accelerator) -> dict[str, float]:
    """The watched signals averaged over the processes in one collective, so that the collapse guard and the plateau
    watch take the same decision on every process (keys sorted: every process sends them in one order)."""
    values = dict(sorted(values.items()))
    if accelerator.num_processes > 1 and values:
        mean = accelerator.reduce(torch.tensor(list(values.values()), device=accelerator.device), reduction="mean")
        values = dict(zip(values, mean.tolist()))
    return values


def _preempted(stop: StopSignals, step: int, checkpoint: Path, main_process: bool) -> Preempted:
    """The one line a pre-empted run logs (main process), and the exception that ends it with PREEMPTED_EXIT."""
    received = stop.received.name if stop.received is not None else "another process's signal"
    message = (f"pre-empted ({received}): saved {checkpoint} at step {step}; exiting with status {PREEMPTED_EXIT}, "
               f"resume with train.resume=auto")
    if main_process:
        log.warning(message)
    return Preempted(message, step=step, checkpoint=str(checkpoint))


def pretrain(cfg: Config, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining as configured; returns the summary also written to ``summary.json``."""
    accelerator = accelerator or make_accelerator(
        mixed_precision=cfg.train.mixed_precision, grad_accum=cfg.train.grad_accum, device=cfg.train.device,
        project_dir=cfg.run.dir, log_with=cfg.train.log_with)
    # before any work: a writable run.dir, no other run in it, no fresh start over another run's files
    with claim_run_dir(accelerator, cfg.run.dir, resume=cfg.train.resume, overwrite=cfg.run.overwrite):
        return _pretrain(cfg, accelerator)


def _pretrain(cfg: Config, accelerator: Accelerator) -> dict[str, Any]:
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # on this machine
    if accelerator.device.type == "cpu":
        set_cpu_threads(local_processes)
    run_dir = Path(cfg.run.dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.is_main_process:
        log.info("%s on %d process(es), %d per machine, device %s, %d torch thread(s) per process, mixed precision %s",
                 accelerator.distributed_type.value, world, local_processes, accelerator.device.type,
                 torch.get_num_threads(), accelerator.mixed_precision)

    # --- cheap checks and data before any heavy work ---
    urls = expand_shards(cfg.data.shards, allow_pipe=cfg.data.allow_pipe)
    # before any work: a tracker that cannot start (no W&B login, a refused MLflow URI) is one line, not a traceback
    start_trackers(accelerator, to_dict(cfg), run_dir, replace=cfg.run.overwrite and not cfg.train.resume)
    counts = None if cfg.data.samples_per_epoch else on_main(accelerator, lambda: shard_counts(
        urls, index=cfg.data.shard_index, allow_pipe=cfg.data.allow_pipe))  # one reader, not one per process
    samples_per_epoch = cfg.data.samples_per_epoch or counts.total
    global_batch = cfg.train.batch_size * world * cfg.train.grad_accum
    if samples_per_epoch < global_batch:
        raise ConfigError(
            f"data.samples_per_epoch={samples_per_epoch} is smaller than one global batch "
            f"(train.batch_size {cfg.train.batch_size} x {world} processes x grad_accum {cfg.train.grad_accum})"
        )
    steps_per_epoch = max(1, samples_per_epoch // global_batch)
    total_steps = max(1, round(cfg.train.epochs * steps_per_epoch))
    stop_step = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    resume_dir = resolve_resume(cfg.train.resume, run_dir)
    check_shared_run_dir(accelerator, run_dir)

    state, position, relayout = load_resume_state(
        resume_dir, rank=rank, world_size=world, num_workers=cfg.data.num_workers, global_batch=global_batch,
        elastic=cfg.train.resume_elastic)
    loader = build_loader(cfg, urls=urls, rank=rank, world_size=world, position=position,
                          pin_memory=accelerator.device.type == "cuda", shard_counts=counts.indexed if counts else None)

    # --- model, optimizer ---
    set_seed(cfg.run.seed)  # identical init on every process
    method = build_method(cfg, pretrained=not resume_dir)  # model.pretrained only for a fresh start
    check_crop_sizes(method.export_backbone(),  # type: ignore[operator]
                     cfg.views.global_crop_size,
                     cfg.views.local_crop_size if cfg.views.n_local else None)
    check_global_pool(method.export_backbone(), cfg.export.global_pool)  # type: ignore[operator]
    method, optimizer = prepare_training(cfg, accelerator, method)
    unwrapped = accelerator.unwrap_model(method)
    if resume_dir:
        load_training_state(accelerator, resume_dir, unwrapped, exact=not relayout)
        if relayout:  # the saved per-process RNG states belong to another layout
            set_seed(cfg.run.seed + rank + state.step)
        log.info("resumed from %s at step %d", resume_dir, state.step)
    else:
        set_seed(cfg.run.seed + rank)  # different drop-path noise per process
    if accelerator.is_main_process:
        if cfg.run.overwrite and not cfg.train.resume:
            clear_previous_run(run_dir)  # only now, after the checks above: a typo loses nothing (trackers: above)
        save_config(cfg, run_dir)
    cfg_yaml, cfg_hash = to_yaml(cfg), config_hash(cfg)

    stop = StopSignals()  # SIGTERM / SIGUSR1: finish the step, save it, exit PREEMPTED_EXIT
    step = TrainStep(accelerator, method, optimizer, optim=cfg.optim, train=cfg.train, state=state,
                     steps_per_epoch=steps_per_epoch, total_steps=total_steps, global_batch=global_batch,
                     run_dir=run_dir, stop_requested=stop.requested)
    monitor = make_monitor(cfg, run_dir=run_dir, stop_step=stop_step)  # kNN + checkpoints/best (monitor.data)
    guard = CollapseGuard(cfg.train.collapse_patience, cfg.train.on_collapse, step.warmup_steps,
                          last_healthy=resume_dir)
    plateau = PlateauWatch(cfg.train.plateau_steps, cfg.train.plateau_tolerance, cfg.train.on_plateau,
                           step.warmup_steps, method=cfg.method.name,
                           center=getattr(getattr(cfg.method, cfg.method.name), "center", None))
    metrics_path = run_dir / "metrics.jsonl"
    bar = tqdm(total=stop_step, initial=state.step, disable=not (accelerator.is_main_process and cfg.train.progress),
               desc="pretrain", dynamic_ncols=True)
    last: dict[str, Any] = {}
    if monitor is not None and not resume_dir:  # the score of the initial weights: the baseline to beat
        log_metrics(accelerator, metrics_path,
                    {"step": 0, **monitor.evaluate(0, accelerator, unwrapped, method, {"config.yaml": cfg_yaml})})
    t_log, samples_log, t_start, step_start = time.perf_counter(), 0, time.perf_counter(), state.step
    def write_process_state(tmp: Path) -> None:
        state.data = position.state_dict()
        state.save(tmp, rank)

    def next_views() -> list[torch.Tensor]:
        batch = next(batches)
        position.update(batch["meta"])
        return [v.to(accelerator.device, non_blocking=True) for v in batch["views"]]

    # from before the data workers start: they ignore the signals, this process decides. closing(): the workers end
    # with the loop, also on an error whose traceback keeps this frame alive (they ignore SIGTERM, so multiprocessing's
    # exit handler, which terminates and then joins them, would wait for them forever)
    with stop, closing(iter(loader)) as batches:
        method.train()
        while state.step < stop_step:
            out = step(next_views)  # out.stop: a process got SIGTERM / SIGUSR1, agreed by all in the step
            samples_log += out.samples
            bar.update(1)
            knn = (monitor.evaluate(state.step, accelerator, unwrapped, method, {"config.yaml": cfg_yaml})
                   if monitor is not None and monitor.due(state.step) and not out.stop else {})
            t_log += knn.get("monitor_s", 0.0)  # images_per_s counts training time only

            if knn or state.step % cfg.train.log_every == 0 or state.step == stop_step or out.stop:
                values = step.log_values(out)
                dt = time.perf_counter() - t_log
                last = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4), **values,
                        "images_per_s": samples_log * world / max(dt, 1e-9), "bad_steps": state.bad_steps_total,
                        "skipped_samples": sum(position.skipped.values()), **knn}
                t_log, samples_log = time.perf_counter(), 0
                log_metrics(accelerator, metrics_path, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", ips=f"{last['images_per_s']:.0f}",
                                **({"knn": f"{monitor.last_score:.3f}"} if monitor is not None else {}))
                signals = _mean_over_processes(
                    {k: float(last[k]) for k in {*collapse.SIGNALS, *plateau_watch.SIGNALS} & last.keys()},
                    accelerator)
                guard.observe(state.step, signals)  # raises on a collapse (train.on_collapse=stop)
                plateau.observe(state.step, signals)  # raises on a plateau with train.on_plateau=stop

            save_due = (cfg.train.save_every and state.step % cfg.train.save_every == 0) or state.step == stop_step
            # No periodic checkpoint in the middle of a bad streak (the last good one stays the newest); the final
            # one, and the one of a pre-emption, are always written: skipped steps leave a valid state.
            periodic = save_due and state.bad_steps_in_row == 0 and guard.allows_save
            if periodic or state.step == stop_step or out.stop:
                saved = save_checkpoint(accelerator, run_dir, state.step, {"config.yaml": cfg_yaml},
                                        cfg.train.keep_last, write_process_files=write_process_state, model=method)
                if periodic or state.step == stop_step:
                    guard.saved(saved)
            if out.stop and state.step < stop_step:
                bar.close()
                accelerator.end_training()
                raise _preempted(stop, state.step, saved, accelerator.is_main_process)
    bar.close()
    accelerator.end_training()

    elapsed = time.perf_counter() - t_start
    summary = {
        "steps": state.step, "steps_this_run": state.step - step_start, "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch, "global_batch": global_batch,
        "samples_per_epoch": samples_per_epoch, "num_shards": len(urls),
        "images_per_s": (state.step - step_start) * global_batch / max(elapsed, 1e-9),
        "final": last, "skipped_samples": dict(position.skipped), "bad_steps": state.bad_steps_total,
        "run_dir": str(run_dir), "distributed": accelerator.distributed_type.value, "config_hash": cfg_hash,
        "process_index": rank, "method": cfg.method.name, "model": cfg.model.name,
        **({"monitor": monitor.summary()} if monitor is not None else {}),
    }
    if accelerator.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
