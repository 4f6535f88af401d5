"""Full fine-tuning with few labels: the whole backbone + a linear head, AdamW with layer-wise lr decay.

Layer-wise lr decay follows BEiT (Bao et al., 2021) / MAE (He et al., 2021): block ``i`` of ``L`` gets
``lr * decay ** (L - i)``, so early layers move less. The param groups come from timm's
``create_optimizer_v2(..., layer_decay=...)``, which uses each model's ``group_matcher`` (ViT and Swin).
The schedule is a fixed number of steps with linear warm-up then cosine decay, suited to few labels, and
the augmentation is light (random resized crop + flip). Shapes: ``b = batch, c = classes``.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from timm.optim import create_optimizer_v2

from evaluation.settings import DEFAULTS
from selfsup.data.labelled import LabelledImages, TransformedImages
from selfsup.knn import topk_accuracy
from selfsup.optim.schedules import warmup_cosine

CPU = torch.device("cpu")


def train_transform(data_config: dict) -> torch.nn.Module:
    """Light augmentation at the model's input size: random resized crop (scale 0.5-1) + horizontal flip."""
    return timm.data.create_transform(input_size=data_config["input_size"], is_training=True, scale=(0.5, 1.0),
                                      hflip=0.5, color_jitter=None, auto_augment=None,
                                      interpolation=data_config["interpolation"], mean=data_config["mean"],
                                      std=data_config["std"])


def finetune(model: torch.nn.Module, images: LabelledImages, train_indices: list[int], val_images: LabelledImages, *,
             num_classes: int, data_config: dict, eval_transform: torch.nn.Module, steps: int = 100,
             batch_size: int = DEFAULTS.finetune_batch_size, lr: float = DEFAULTS.finetune_lr,
             weight_decay: float = 0.05, layer_decay: float = 0.65,
             warmup_steps: int | None = None, seed: int = 0, num_workers: int = DEFAULTS.num_workers,
             device: torch.device = CPU) -> dict[str, float | None]:
    """Fine-tune ``model`` (a timm backbone, its head replaced) on ``train_indices`` and score it on ``val_images``.

    Args:
        model: a freshly built timm model; it is modified in place.
        images, train_indices: the labelled training images and the subset to train on.
        val_images: evaluation images. num_classes: c.
        data_config: the model's resolved preprocessing (input size, mean, std, interpolation).
        eval_transform: preprocessing for the val images.
        steps, batch_size, lr, weight_decay, layer_decay, warmup_steps: the schedule (warm-up defaults to 10%).
        seed: seeds the head init, the sampling order and the augmentation.

    Returns:
        ``{"top1": acc, "top5": acc or None}`` on ``val_images``.
    """
    set_seed(seed)  # python, numpy, torch (CPU and CUDA)
    model.reset_classifier(num_classes)
    model.to(device).train()
    opt = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    warmup = max(1, steps // 10) if warmup_steps is None else warmup_steps
    gen = torch.Generator().manual_seed(seed)
    ds = TransformedImages(images, train_transform(data_config), indices=train_indices)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=steps * min(batch_size, len(ds)),
                                             generator=gen)
    loader = torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), sampler=sampler,
                                         num_workers=num_workers, generator=gen, drop_last=True)
    use_amp = device.type == "cuda"
    for step, (x, y) in enumerate(loader):
        scale = warmup_cosine(step, steps, warmup, peak=1.0, end=0.0, start=1.0 / warmup)  # the first step is not lr 0
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * scale
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    val_loader = torch.utils.data.DataLoader(TransformedImages(val_images, eval_transform), batch_size=batch_size * 2,
                                             shuffle=False, num_workers=num_workers)
    scores = []
    with torch.inference_mode():
        for x, _ in val_loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                scores.append(model(x.to(device)).float().cpu())
    all_scores = torch.cat(scores)
    labels = torch.as_tensor(val_images.labels)
    return {"top1": topk_accuracy(all_scores, labels, 1),
            "top5": topk_accuracy(all_scores, labels, 5) if num_classes > 5 else None}
