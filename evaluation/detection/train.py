"""Fine-tuning and inference of a detector: AdamW with layer-wise lr decay, warmup + cosine, by step.

Layer-wise lr decay (Clark et al., "ELECTRA", ICLR 2020; used for ViT detection by ViTDet and
for fine-tuning by BEiT / MAE) scales the lr of backbone block ``i`` of ``L`` by
``decay ** (L - i)``, so early, generic layers move least. The blocks are timm's own
(``timm.optim.param_groups_layer_decay`` through the model's ``group_matcher``); the pyramid, FPN
and detection heads are new and train at the full lr.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from timm.optim import param_groups_layer_decay
from torch import nn
from torch.utils.data import DataLoader

from evaluation.detection.images import Target
from selfsup.errors import TrainingError
from selfsup.optim.schedules import warmup_cosine

MAX_BAD_STEPS = 5


def detector_param_groups(detector: nn.Module, *, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups with an ``lr_scale`` each.

    Backbone (``detector.backbone.body``, a timm model): timm's layer-decay groups (no weight decay
    on biases, norms, position embeddings). Everything else: ``lr_scale`` 1, no decay on 1-D params.
    """
    body = detector.backbone.body
    groups = param_groups_layer_decay(body, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=getattr(body, "no_weight_decay", lambda: set())())
    body_ids = {id(p) for p in body.parameters()}
    decay, no_decay = [], []
    for p in detector.parameters():
        if id(p) in body_ids or not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return [g for g in groups if g["params"]]


def _forever(loader: DataLoader) -> Iterator[tuple[list[torch.Tensor], list[Target]]]:
    while True:
        yield from loader


def train_detector(detector: nn.Module, loader: DataLoader, *, steps: int, lr: float, weight_decay: float = 0.05,
                   layer_decay: float = 0.75, warmup_steps: int | None = None, clip_grad: float = 1.0,
                   device: torch.device | str = "cpu", log_every: int = 0) -> list[float]:
    """Fine-tunes ``detector`` (a torchvision detector) for ``steps`` optimizer steps.

    Args:
        detector: Model returning a dict of losses in train mode.
        loader: Yields ``(images, targets)`` lists (restarted when exhausted).
        steps: Optimizer steps.
        lr: Peak lr of the heads and of the last backbone block.
        weight_decay: AdamW decoupled weight decay.
        layer_decay: Per-block lr decay of the backbone (1.0 = none).
        warmup_steps: Linear warmup length (default: 10 % of ``steps``).
        clip_grad: Max global grad norm.
        device: Where to train.
        log_every: Print the loss every that many steps (0 = silent).

    Returns:
        The total loss of every step.

    Raises:
        TrainingError: The loss was not finite for ``MAX_BAD_STEPS`` steps in a row.
    """
    device = torch.device(device)
    detector.to(device).train()
    groups = detector_param_groups(detector, weight_decay=weight_decay, layer_decay=layer_decay)
    opt = torch.optim.AdamW(groups, lr=lr)
    warmup = max(1, steps // 10) if warmup_steps is None else max(1, warmup_steps)
    losses: list[float] = []
    bad = 0
    batches = _forever(loader)
    for step in range(steps):
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items() if k in ("boxes", "labels")} for t in targets]
        step_lr = warmup_cosine(step, steps, warmup, peak=lr, end=0.0, start=lr / warmup)  # as fine-tuning
        for g in opt.param_groups:
            g["lr"] = step_lr * g["lr_scale"]
        loss_dict = detector(images, targets)
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            bad += 1
            if bad >= MAX_BAD_STEPS:
                raise TrainingError(f"detection fine-tuning: loss not finite for {bad} steps in a row at step {step}; "
                                    "try a lower --lr")
            opt.zero_grad(set_to_none=True)
            continue
        bad = 0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(detector.parameters(), clip_grad)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            parts = " ".join(f"{k.removeprefix('loss_')}={v.item():.3f}" for k, v in loss_dict.items())
            print(f"  step {step:5d}/{steps} lr {step_lr:.2e} loss {loss.item():.4f} ({parts})", flush=True)
    return losses


@torch.inference_mode()
def predict(detector: nn.Module, loader: DataLoader, *, device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Detections per image in *original* image pixels, labels 0-based (background removed).

    Returns:
        ``[{"image_id": int, "boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,)}]`` as numpy arrays.
    """
    device = torch.device(device)
    detector.to(device).eval()
    out: list[dict[str, Any]] = []
    for images, targets in loader:
        dets: Sequence[dict[str, torch.Tensor]] = detector([im.to(device) for im in images])
        for d, t in zip(dets, targets):
            out.append({"image_id": int(t["image_id"]), "boxes": (d["boxes"].cpu() / t["scale"]).numpy(),
                        "scores": d["scores"].cpu().numpy(), "labels": (d["labels"] - 1).cpu().numpy()})
    return out
