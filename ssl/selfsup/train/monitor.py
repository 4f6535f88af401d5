"""kNN monitor of a run: is it learning, and which weights are the best so far?

Every ``monitor.every`` steps (and at the start of a fresh run, and at the last step) the encoder that
``selfsup export`` would write (the method's :meth:`export_backbone`: the teacher of DINO, the online encoder of
the contrastive methods) embeds a small labelled set, and DINO's weighted kNN (Caron et al. 2021, k=20, T=0.07;
:func:`selfsup.knn.knn_classify`) scores a held-out part of it against the rest. The images go through the
export's own preprocessing (:mod:`selfsup.data.eval_transform`), so the score is the kNN top-1 ``selfsup-eval``
reports for that export on the same images. The weights with the best score are kept in ``checkpoints/best/``
(:mod:`selfsup.train.best`).

Under DDP every process scores the same images with the same weights; under FSDP the full weights are gathered
into an unsharded copy on the main process, which scores alone. Either way the main process's score is broadcast,
so every process takes the same decisions. Shapes: n = images, d = backbone dim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.config import MonitorConfig
from selfsup.data.eval_transform import eval_data_config, normalize_uint8, uint8_eval_transform
from selfsup.errors import DataError
from selfsup.knn import knn_classify, topk_accuracy
from selfsup.models.backbone import pooled_as
from selfsup.train.accelerator import uses_fsdp
from selfsup.train.best import read_best, save_best

log = logging.getLogger("selfsup")
KNN_T = 0.07  # DINO's temperature, as selfsup-eval's default


class LabelledSplit:
    """A seeded, disjoint kNN bank / held-out split of ``monitor.data``, preprocessed once to uint8 tensors.

    Attributes:
        bank_x, val_x: (n, 3, s, s) uint8 images. bank_y, val_y: (n,) int64 labels. num_classes: c.
        images: the opened set; bank_index, val_index: the positions of the bank and held-out images in it.
    """

    def __init__(self, path: str, *, max_train: int, max_val: int, data_config: dict[str, Any], seed: int) -> None:
        from selfsup.data.labelled import open_labelled

        try:
            images = open_labelled(path)
        except DataError as e:
            raise DataError(f"monitor.data: {e}") from None
        n = len(images)
        n_val = min(max_val, max(1, round(n * max_val / (max_train + max_val))))
        n_bank = min(max_train, n - n_val)
        if n_bank < 1:
            raise DataError(f"monitor.data={path}: {n} image(s); expected at least 2 labelled images")
        order = np.random.default_rng(seed).permutation(n)
        transform = uint8_eval_transform(data_config)

        def load(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.stack([transform(images.image(int(i))) for i in idx])
            return x, torch.as_tensor(images.labels[idx], dtype=torch.int64)

        self.images, self.val_index, self.bank_index = images, order[:n_val], order[n_val:n_val + n_bank]
        self.val_x, self.val_y = load(self.val_index)
        self.bank_x, self.bank_y = load(self.bank_index)
        self.num_classes = len(images.classes)


class KnnMonitor:
    """Scores the export encoder every ``every`` steps and keeps the best weights.

    Args:
        cfg: the ``monitor`` section. size, mean, std: the export's preprocessing (``views``).
        run_dir: the run folder (``checkpoints/best/`` goes there). seed: the split's seed (``run.seed``).
        stop_step: the last step of this run (always evaluated).
        build_copy: builds an unsharded method (used under FSDP only).
    """

    def __init__(self, cfg: MonitorConfig, *, size: int, mean, std, run_dir: Path, seed: int, stop_step: int,
                 build_copy: Callable[[], torch.nn.Module] | None = None, global_pool: str | None = None) -> None:
        t0 = time.perf_counter()
        self.cfg, self.run_dir, self.stop_step = cfg, Path(run_dir), stop_step
        self.global_pool = global_pool  # export.global_pool: the export's pooled output
        self.build_copy, self._copy = build_copy, None
        self.data_config = eval_data_config(size, mean, std)
        self.split = LabelledSplit(cfg.data, max_train=cfg.max_train, max_val=cfg.max_val,
                                   data_config=self.data_config, seed=seed)
        best = read_best(self.run_dir)  # a resumed run continues to compare against its best so far
        self.best_score = best["score"] if best else -1.0
        self.best_step = best["step"] if best else None
        self.last_score = float("nan")
        self.evals, self.seconds = 0, time.perf_counter() - t0

    def due(self, step: int) -> bool:
        return step % self.cfg.every == 0 or step == self.stop_step

    @torch.no_grad()
    def _embed(self, backbone: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(n, 3, s, s) uint8 -> (n, d) float32 features on the CPU (bf16 autocast on CUDA, as selfsup-eval)."""
        out = []
        for start in range(0, x.shape[0], self.cfg.batch_size):
            batch = normalize_uint8(x[start:start + self.cfg.batch_size].to(device), self.data_config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(backbone(batch).float().cpu())  # num_classes=0: forward = pooled pre-logits
        return torch.cat(out)

    def score(self, backbone: torch.nn.Module, device: torch.device) -> float:
        """kNN top-1 of ``backbone`` on the held-out split (the backbone's train/eval mode is restored)."""
        was_training = backbone.training
        backbone.eval()
        try:
            with pooled_as(backbone, self.global_pool):
                bank = self._embed(backbone, self.split.bank_x, device)
                val = self._embed(backbone, self.split.val_x, device)
        finally:
            backbone.train(was_training)
        scores = knn_classify(bank, self.split.bank_y, val, k=self.cfg.k, T=KNN_T, num_classes=self.split.num_classes)
        return topk_accuracy(scores, self.split.val_y, 1)

    def evaluate(self, step: int, accelerator, unwrapped: torch.nn.Module, prepared: torch.nn.Module,
                 extra_files: dict[str, str]) -> dict[str, float]:
        """Score the export encoder at ``step``; a new best is written to ``checkpoints/best/``.

        Returns the values to log: ``knn_top1``, ``knn_top1_best``, ``monitor_s`` (seconds this took)."""
        t0 = time.perf_counter()
        backbone = (self._gathered_backbone(accelerator, prepared) if uses_fsdp(accelerator)
                    else unwrapped.export_backbone())
        value = self.score(backbone, accelerator.device) if backbone is not None else 0.0
        if accelerator.num_processes > 1:  # one decision for all: the main process's score
            from accelerate.utils import broadcast

            value = float(broadcast(torch.tensor([value], device=accelerator.device)).item())
        self.evals, self.last_score = self.evals + 1, value
        if value > self.best_score:
            self.best_score, self.best_step = value, step
            save_best(accelerator, self.run_dir, prepared, step=step, score=value, extra_files=extra_files)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        if accelerator.is_main_process:
            log.info("step %d: kNN top-1 %.4f on %d held-out images (best %.4f at step %s)", step, value,
                     len(self.split.val_y), self.best_score, self.best_step)
        return {"knn_top1": value, "knn_top1_best": self.best_score, "monitor_s": seconds}

    def _gathered_backbone(self, accelerator, prepared: torch.nn.Module) -> torch.nn.Module | None:
        """Under FSDP, the export encoder as a plain module on the main process (``None`` elsewhere).

        A sharded backbone cannot be called outside the method's forward (its root parameters are gathered by the
        root's forward hook), so the full weights are gathered, as for a checkpoint, into an unsharded copy."""
        state = accelerator.get_state_dict(prepared)  # a collective; the full weights land on the main process
        if not accelerator.is_main_process:
            return None
        if self._copy is None:
            self._copy = self.build_copy()
        self._copy.load_state_dict(state)
        return self._copy.to(accelerator.device).export_backbone()

    def summary(self) -> dict[str, Any]:
        return {"knn_top1_best": self.best_score, "best_step": self.best_step, "evals": self.evals,
                "seconds": round(self.seconds, 2), "bank": len(self.split.bank_y), "held_out": len(self.split.val_y)}


def make_monitor(cfg, *, run_dir: Path, stop_step: int) -> KnnMonitor | None:
    """The run's monitor, or ``None`` when ``monitor.data`` is empty."""
    if not cfg.monitor.data:
        return None
    from selfsup.build import build_method

    return KnnMonitor(cfg.monitor, size=cfg.views.global_crop_size, mean=cfg.views.mean, std=cfg.views.std,
                      run_dir=run_dir, seed=cfg.run.seed, stop_step=stop_step,
                      build_copy=lambda: build_method(cfg, pretrained=False), global_pool=cfg.export.global_pool)

