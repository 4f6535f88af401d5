"""Learning parity: ``selfsup pretrain`` against a plain PyTorch loop written the way lightly's examples are.

Both train the same backbone on the same 10,000 CIFAR-10 images with the same crops, batch size, learning
rate, weight decay, schedules, clipping, precision and number of steps; both exports are scored by the same
``selfsup-eval knn`` (k=20, T=0.07, 10,000 train / 2,000 test images). The reference reads every
hyper-parameter from the resolved ``config.yaml`` of our run, so the two cannot drift apart. What differs is
what we want to test: our shard stream, view code, method wrappers, step and checkpointing vs a torch
``DataLoader(shuffle=True)`` over the image folder with lightly's ``DINOTransform`` and lightly's heads/losses.

    python benchmarks/learning_parity.py [--methods dino dinov2 simclr] [--seeds 0 1] [--epochs 3]
        [--out runs/learning_parity]

Needs ``runs/cifar10_methods/{shards,subset,data}`` (made by ``benchmarks/cifar10_methods.sh``). Writes
``OUT/results.md`` and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss, NTXentLoss
from lightly.loss.swav_loss import sinkhorn
from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM, SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad, random_block_mask, update_momentum
from lightly.transforms import DINOTransform
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from selfsup.optim.schedules import cosine, linear_warmup, scaled_lr, warmup_cosine
from selfsup.train.accelerator import cpu_has_bf16

DATA = Path("runs/cifar10_methods")
CONFIGS = {"dino": "configs/dino_vit_tiny_small_data.yaml", "dinov2": "configs/dinov2_vit_tiny_small_data.yaml",
           "simclr": "configs/simclr_vit_tiny_small_data.yaml"}


def run_ours(method: str, seed: int, epochs: float, out: Path) -> dict:
    """``selfsup pretrain`` + ``selfsup export``; returns its summary."""
    run = out / "run"
    subprocess.run(["selfsup", "pretrain", CONFIGS[method], f"data.shards={DATA / 'shards'}", f"run.dir={run}",
                    f"run.seed={seed}", f"train.epochs={epochs}", "train.save_every=0", "train.progress=false",
                    "run.overwrite=true"], check=True)
    subprocess.run(["selfsup", "export", str(run), str(out / "export"), "--overwrite"], check=True)
    return json.loads((run / "summary.json").read_text())


def _views(cfg) -> DINOTransform:
    """lightly's DINOTransform with the colour, crop, blur and solarisation settings of our config."""
    v = cfg.views
    return DINOTransform(global_crop_size=v.global_crop_size, global_crop_scale=tuple(v.global_crop_scale),
                         n_local_views=v.n_local, local_crop_size=v.local_crop_size,
                         local_crop_scale=tuple(v.local_crop_scale), cj_strength=0.5, gaussian_blur=tuple(v.blur_probs),
                         solarization_prob=v.solarize_prob, normalize={"mean": list(v.mean), "std": list(v.std)})


def run_reference(method: str, seed: int, cfg, steps: int, out: Path) -> dict:
    """The plain loop: DataLoader(shuffle=True), lightly heads + loss + update_momentum, AdamW, bf16 autocast (fp32
    on a CPU without bf16 instructions, as ``selfsup pretrain`` does there)."""
    bf16 = cfg.train.mixed_precision == "bf16" and cpu_has_bf16()
    torch.manual_seed(seed)
    model_args = {**OmegaConf.to_container(cfg.model.args), "dynamic_img_size": True}  # ViT: local crops too
    backbone = timm.create_model(cfg.model.name, num_classes=0, drop_path_rate=cfg.model.drop_path_rate, **model_args)
    dim = backbone.num_features
    if method == "dino":
        d = cfg.method.dino
        student = torch.nn.Sequential(backbone, DINOProjectionHead(dim, d.hidden_dim, d.bottleneck_dim, d.out_dim,
                                                                   batch_norm=d.batch_norm,
                                                                   freeze_last_layer=math.ceil(d.freeze_last_layer_epochs),
                                                                   norm_last_layer=d.norm_last_layer))
        teacher = torch.nn.Sequential(timm.create_model(cfg.model.name, num_classes=0, **model_args),
                                      DINOProjectionHead(dim, d.hidden_dim, d.bottleneck_dim, d.out_dim,
                                                         batch_norm=d.batch_norm, norm_last_layer=d.norm_last_layer))
        teacher.load_state_dict(student.state_dict())
        deactivate_requires_grad(teacher)
        criterion = DINOLoss(output_dim=d.out_dim, student_temp=d.student_temp, center_momentum=d.center_momentum)
        koleo = KoLeoLoss()
        export_model = teacher[0]
    elif method == "dinov2":  # lightly's DINOv2 example: masked timm ViT, one head for DINO and iBOT, KoLeo
        d = cfg.method.dinov2
        student = torch.nn.ModuleDict({
            "backbone": MaskedVisionTransformerTIMM(vit=backbone, weight_initialization="skip",
                                                    pos_embed_initialization="skip"),
            "head": DINOProjectionHead(dim, d.hidden_dim, d.bottleneck_dim, d.out_dim, batch_norm=d.batch_norm,
                                       freeze_last_layer=math.ceil(d.freeze_last_layer_epochs))})
        teacher = torch.nn.ModuleDict({
            "backbone": MaskedVisionTransformerTIMM(vit=timm.create_model(cfg.model.name, num_classes=0, **model_args),
                                                    weight_initialization="skip", pos_embed_initialization="skip"),
            "head": DINOProjectionHead(dim, d.hidden_dim, d.bottleneck_dim, d.out_dim, batch_norm=d.batch_norm)})
        teacher.load_state_dict(student.state_dict())
        deactivate_requires_grad(teacher)
        criterion = DINOLoss(output_dim=d.out_dim, student_temp=d.student_temp, center_momentum=d.center_momentum)
        ibot_criterion = IBOTPatchLoss(output_dim=d.out_dim, student_temp=d.student_temp,
                                       center_momentum=d.center_momentum)
        koleo = KoLeoLoss()
        export_model = teacher["backbone"].vit
    else:
        s = cfg.method.simclr
        student = torch.nn.Sequential(backbone, SimCLRProjectionHead(dim, s.proj_hidden_dim, s.out_dim, num_layers=2,
                                                                     batch_norm=True))
        criterion = NTXentLoss(temperature=s.temperature)
        export_model = backbone
    dataset = ImageFolder(str(DATA / "subset"), transform=_views(cfg))
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, persistent_workers=True,
                        generator=torch.Generator().manual_seed(seed))
    steps_per_epoch = len(dataset) / cfg.train.batch_size
    # The same no-decay rule as ours: 1-D parameters, biases, tokens and position embeddings.
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and "token" not in n and "pos_embed" not in n]
    no_decay = [p for n, p in student.named_parameters()
                if not (p.ndim > 1 and "token" not in n and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                            betas=tuple(cfg.optim.betas))
    peak = scaled_lr(cfg.optim.lr, cfg.train.batch_size)
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    step, t0 = 0, time.perf_counter()
    student.train()
    while step < steps:
        for views, _ in loader:
            if step >= steps:
                break
            epoch = step / steps_per_epoch
            opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = warmup_cosine(step, steps, warmup, peak,
                                                                                   cfg.optim.min_lr)
            opt.param_groups[0]["weight_decay"] = cosine(step, steps, cfg.optim.weight_decay,
                                                         cfg.optim.weight_decay_end)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if method == "dino":
                    d = cfg.method.dino
                    n_global = cfg.views.n_global
                    with torch.no_grad():
                        t_out = [teacher(v).float() for v in views[:n_global]]
                    s_emb = [student[0](v) for v in views]
                    s_out = [student[1](e).float() for e in s_emb]
                    temp = linear_warmup(step, round(d.warmup_teacher_temp_epochs * steps_per_epoch),
                                         d.warmup_teacher_temp, d.teacher_temp)
                    loss = criterion(t_out, s_out, teacher_temp=temp)
                    if d.koleo_weight:  # DINOv2's KoLeo on each global view's backbone embedding
                        loss = loss + d.koleo_weight * sum(koleo(e.float()) for e in s_emb[:n_global])
                elif method == "dinov2":
                    loss = _dinov2_loss(cfg, student, teacher, criterion, ibot_criterion, koleo, views, step,
                                        steps_per_epoch)
                else:
                    z0, z1 = student(torch.cat(views[:2])).float().chunk(2)
                    loss = criterion(z0, z1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad)
            if method == "dino":
                student[1].cancel_last_layer_gradients(current_epoch=int(epoch))
            elif method == "dinov2":
                student["head"].cancel_last_layer_gradients(current_epoch=int(epoch))
            opt.step()
            if method in ("dino", "dinov2"):
                m = cosine(step, steps, getattr(cfg.method, method).momentum_teacher, 1.0)
                update_momentum(student, teacher, m=m)
            step += 1
    seconds = time.perf_counter() - t0
    size = cfg.views.global_crop_size
    timm.models.save_for_hf(export_model.eval(), str(out / "export"), safe_serialization=True,
                            model_args=model_args,
                            data_config={"input_size": (3, size, size), "mean": tuple(cfg.views.mean),
                                         "std": tuple(cfg.views.std), "crop_pct": 1.0, "interpolation": "bicubic"})
    return {"steps": step, "images_per_s": step * cfg.train.batch_size / seconds}


def _dinov2_loss(cfg, student, teacher, criterion, ibot_criterion, koleo, views, step, steps_per_epoch):
    """The DINOv2 loss of lightly's example, written out: masked global views for the student, the whole ones for the
    teacher; DINO on class tokens (every student view against the other global views), iBOT on the masked tokens
    (each token weighted by 1 / its image's masked count), KoLeo on each global view's class token."""
    d, g = cfg.method.dinov2, cfg.views.n_global
    temp = linear_warmup(step, round(d.warmup_teacher_temp_epochs * steps_per_epoch), d.warmup_teacher_temp,
                         d.teacher_temp)
    x = torch.cat(views[:g])
    vit = student["backbone"].vit
    h, w = x.shape[-2] // vit.patch_embed.patch_size[0], x.shape[-1] // vit.patch_embed.patch_size[1]
    smallest = max(1, min(4, int(h * w * d.mask_ratio[0])))
    masks = random_block_mask((x.shape[0], h, w), batch_mask_ratio=d.mask_probability,
                              min_image_mask_ratio=d.mask_ratio[0], max_image_mask_ratio=d.mask_ratio[1],
                              min_num_masks_per_block=smallest, max_num_masks_per_block=max(smallest, h * w // 2))
    p = vit.num_prefix_tokens
    seq = torch.cat([masks.new_zeros(x.shape[0], p), masks.flatten(1)], dim=1)
    with torch.no_grad():
        t_tok = teacher["backbone"].encode(x)
        t_cls = torch.cat([teacher["head"](c) for c in t_tok[:, 0].chunk(g)]).float()
        t_patch = teacher["head"](t_tok[:, p:][masks.flatten(1)]).float()
    s_tok = student["backbone"].encode(x, mask=seq)
    s_cls = [s_tok[:, 0]] + [student["backbone"](v) for v in views[g:]]
    s_cls = torch.cat(s_cls)
    s_out = [student["head"](c).float() for c in s_cls.chunk(len(views))]
    s_patch = student["head"](s_tok[:, p:][masks.flatten(1)]).float()
    if d.center == "sinkhorn_knopp":
        t_views = sinkhorn(t_cls - t_cls.max(), iterations=3, epsilon=temp).chunk(g)
        log_s = [torch.log_softmax(s / d.student_temp, dim=-1) for s in s_out]
        terms = [-(t * log_s[j]).sum(-1).mean() for i, t in enumerate(t_views) for j in range(len(views)) if j != i]
        dino = sum(terms) / len(terms)
        t_p = sinkhorn(t_patch - t_patch.max(), iterations=3, epsilon=temp)
        ce = -(t_p * torch.log_softmax(s_patch / d.student_temp, dim=-1)).sum(-1)
        weight = (1.0 / masks.sum((1, 2), keepdim=True).clamp(min=1)).expand_as(masks)[masks]
        ibot = (ce * weight).sum() / masks.shape[0]
    else:
        dino = criterion(list(t_cls.chunk(g)), s_out, teacher_temp=temp)
        ibot = ibot_criterion(t_patch, s_patch, masks, teacher_temp=temp)
    reg = sum(koleo(c.float()) for c in s_tok[:, 0].chunk(g))
    return dino + d.ibot_weight * ibot + d.koleo_weight * reg


def knn_top1(export: Path, out: Path, max_train: int, max_val: int) -> tuple[float, float]:
    """kNN top-1 (k=20) of the export and of its random init, in %."""
    c10 = DATA / "data" / "cifar10"
    subprocess.run(["selfsup-eval", "knn", "--weights", str(export), "--train", str(c10 / "train"), "--val",
                    str(c10 / "test"), "--out", str(out), "--label-fractions", "1.0", "--seeds", "1",
                    "--max-train", str(max_train), "--max-val", str(max_val)], check=True)
    runs = json.loads((out / "knn.json").read_text())["runs"]
    top1 = {r["model"]: 100 * r["top1"] for r in runs if r["k"] == 20}
    return top1["pretrained"], top1["random_init"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["dino", "simclr"], choices=sorted(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--out", default="runs/learning_parity")
    p.add_argument("--max-train", type=int, default=10000, help="kNN train images (10,000 for the README table)")
    p.add_argument("--max-val", type=int, default=2000, help="kNN test images (2,000 for the README table)")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            base = out / method / f"seed{seed}"
            summary = run_ours(method, seed, args.epochs, base / "ours")
            cfg = OmegaConf.load(base / "ours" / "run" / "config.yaml")
            ref = run_reference(method, seed, cfg, summary["steps"], base / "reference")
            ours_top1, rand = knn_top1(base / "ours" / "export", base / "ours" / "knn", args.max_train, args.max_val)
            ref_top1, _ = knn_top1(base / "reference" / "export", base / "reference" / "knn", args.max_train,
                                   args.max_val)
            rows.append({"method": method, "seed": seed, "steps": summary["steps"], "random_init": rand,
                         "ours": ours_top1, "reference": ref_top1, "ours_images_per_s": summary["images_per_s"],
                         "reference_images_per_s": ref["images_per_s"]})
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| method | steps | seeds | kNN top-1 selfsup | kNN top-1 reference loop | random init | "
             "images/s selfsup | images/s reference |",
             "|---|---|---|---|---|---|---|---|"]

    def ms(group: list[dict], key: str) -> str:
        vals = [x[key] for x in group]
        return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else f"{vals[0]:.1f}"

    for method in args.methods:
        r = [x for x in rows if x["method"] == method]
        lines.append(f"| {method} | {r[0]['steps']} | {len(r)} | {ms(r, 'ours')} | {ms(r, 'reference')} | "
                     f"{ms(r, 'random_init')} | {ms(r, 'ours_images_per_s')} | {ms(r, 'reference_images_per_s')} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
