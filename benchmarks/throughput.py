"""Training throughput of our DINO step, side by side with a reference step written like lightly's DINO example.

DINO (Caron et al. 2021, https://arxiv.org/abs/2104.14294) multi-crop: 2 global crops (224) and 10 local
crops (96) per image; the student sees all crops, the teacher only the global ones.

Two steps run in the same process, on the same backbone weights, crops and batch:

- **ours**: :class:`selfsup.methods._dino_model.DINO` stepped by the loop's own :class:`selfsup.train.step.TrainStep`,
  built by ``prepare_training`` from the config defaults (accelerate, per-group lr/wd, backward, ``clip_grad_norm_``,
  one finite check, freeze hook, fused AdamW, EMA): bf16 autocast on CUDA, SDPA attention (timm's fused
  attention), one backbone pass per crop size, no host sync except the finite check, and optionally
  ``torch.compile`` of the backbones.
- **reference**: the step as lightly's documented DINO example writes it: ``student_out = [model(view) for view in
  views]``, ``teacher_out = [model.forward_teacher(view) for view in views[:2]]``, ``DINOLoss``, ``update_momentum``
  every step, ``Adam``, ``loss.item()`` every step, fp32.

Timed steps alternate ours / reference, so load from other processes on a shared machine hits both alike. On the
CPU each step's CPU seconds (the process's threads, less the memory sampler's) are reported next to its wall time:
with other processes on the cores, a step's wall time swings with their load, its CPU time much less.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one full training step (teacher forward,
student forward and backward); MFU = FLOPs / step time / device peak.

On CUDA, TF32 matmuls are allowed for both (this only helps the fp32 reference). On the CPU the script sets
``OMP_WAIT_POLICY=PASSIVE`` unless it is already set (see below), for both implementations alike.

Usage::

    python benchmarks/throughput.py --device cpu --quick --out throughput_cpu.json
    python benchmarks/throughput.py --device cpu --quick --models vit_s16 --precision bf16   # CPU bf16 autocast
    python benchmarks/throughput.py --device cuda --out throughput_cuda.json [--compile] [--measure-peak]
    python benchmarks/throughput.py --device cpu --quick --models vit_s16 --steps 1 --profile 20   # top ops per step

Shapes: b = batch (images), g = global crops, l = local crops, G/L = global/local crop size.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# On a shared CPU, OpenMP threads that spin while waiting for each other are descheduled by the other processes'
# threads and every parallel region turns into a convoy (a 2-thread ViT step measured 10-20x slower here under
# load). Passive waiting must be chosen before torch loads libgomp; export OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "ssl") not in sys.path:  # run from a fresh clone without `pip install -e .`
    sys.path.insert(0, str(ROOT / "ssl"))

import timm  # noqa: E402
from lightly.loss import DINOLoss  # noqa: E402
from lightly.models.modules import DINOProjectionHead  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402

from selfsup.config import Config  # noqa: E402
from selfsup.methods._dino_model import DINO  # noqa: E402
from selfsup.methods.dino import DINOConfig  # noqa: E402
from selfsup.models.backbone import create_backbone  # noqa: E402
from selfsup.optim.schedules import cosine  # noqa: E402
from selfsup.train.accelerator import make_accelerator  # noqa: E402
from selfsup.train.state import TrainState  # noqa: E402
from selfsup.train.step import TrainStep, compile_backbones, prepare_training  # noqa: E402

# name -> (timm model, model args)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_s16": ("vit_small_patch16_224", {}),
    "vit_b16": ("vit_base_patch16_224", {}),
    "swin_t": ("swin_tiny_patch4_window7_224", {}),
}

# Dense bf16 tensor-core peak (TFLOP/s) from the vendors' spec sheets, matched on torch.cuda.get_device_name().
CUDA_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / HBM3
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
)


# ----------------------------------------------------------------------------------------------------------------
# Settings and results
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """Crops and batch of one measurement."""

    batch_size: int
    global_size: int = 224
    local_size: int = 96
    n_global: int = 2
    n_local: int = 10
    out_dim: int = 65536
    warmup: int = 2  # untimed steps each, after the FLOP-counting step (itself a warmup step)
    steps: int = 5


@dataclass
class Result:
    """One implementation on one model."""

    impl: str
    step_time_s: float  # median over timed steps
    step_time_min_s: float  # least affected by other processes on a shared machine
    step_times_s: list[float]
    cpu_time_s: float  # median CPU seconds of the process per step (all threads but the memory sampler's)
    images_per_s: float
    crops_per_s: float
    peak_mem_gb: float  # CUDA: max_memory_allocated; CPU: peak RSS; both minus the other implementation's state
    peak_mem_per_image_mb: float  # CPU: RSS above the process baseline (interpreter + libraries) per image
    flops_per_step: float
    achieved_tflops: float
    mfu: float | None  # None when the device peak is unknown


@dataclass
class ModelReport:
    model: str
    timm_name: str
    params_m: float
    setting: dict[str, Any]
    ours: Result
    reference: Result
    ratio_ours_over_ref: float  # median step time; < 1 means ours is faster
    ratio_min: float  # the same from the fastest step of each
    ratio_cpu: float  # the same from the CPU seconds per step: what the step costs, whoever else uses the cores
    extras: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# The reference step, written the way lightly's documented DINO example writes it
# ----------------------------------------------------------------------------------------------------------------
class ReferenceDINO(nn.Module):
    """lightly's example model: student = backbone + DINOProjectionHead, teacher = a deep copy of both."""

    def __init__(self, backbone: nn.Module, input_dim: int, out_dim: int) -> None:
        super().__init__()
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(input_dim, 2048, 256, out_dim, freeze_last_layer=1,
                                               norm_last_layer=False)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(input_dim, 2048, 256, out_dim, norm_last_layer=False)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: Tensor) -> Tensor:
        y = self.student_backbone(x).flatten(start_dim=1)
        return self.student_head(y)

    def forward_teacher(self, x: Tensor) -> Tensor:
        y = self.teacher_backbone(x).flatten(start_dim=1)
        return self.teacher_head(y)


class ReferenceStep:
    """One iteration of the example's training loop body."""

    def __init__(self, model: ReferenceDINO, out_dim: int) -> None:
        self.model = model
        self.criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp_epochs=5).to(next(model.parameters()).device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        self.epoch = 1  # past the frozen-last-layer epoch, like ours: every parameter is updated
        self.momentum_val = cosine(self.epoch, 100, 0.996, 1.0)
        self.total_loss = 0.0

    def __call__(self, views: list[Tensor]) -> None:
        model = self.model
        update_momentum(model.student_backbone, model.teacher_backbone, m=self.momentum_val)
        update_momentum(model.student_head, model.teacher_head, m=self.momentum_val)
        global_views = views[:2]
        teacher_out = [model.forward_teacher(view) for view in global_views]
        student_out = [model.forward(view) for view in views]
        loss = self.criterion(teacher_out, student_out, epoch=self.epoch)
        self.total_loss += loss.item()
        loss.backward()
        model.student_head.cancel_last_layer_gradients(current_epoch=self.epoch)
        self.optimizer.step()
        self.optimizer.zero_grad()


# ----------------------------------------------------------------------------------------------------------------
# Our step: the loop's own TrainStep, on synthetic views already on the device
# ----------------------------------------------------------------------------------------------------------------
def ours_step(method: DINO, *, device: torch.device, bf16: bool, batch_size: int) -> TrainStep:
    """:class:`TrainStep` as ``pretrain`` builds it from the config defaults, at step 10 of 10,000 (epoch 1: the
    head's last layer trains, as in the reference)."""
    cfg = Config()
    cfg.train.mixed_precision, cfg.train.batch_size = ("bf16" if bf16 else "no"), batch_size
    accelerator = make_accelerator(mixed_precision=cfg.train.mixed_precision, grad_accum=cfg.train.grad_accum,
                                   device=device.type, project_dir=".", log_with=[])
    prepared, optimizer = prepare_training(cfg, accelerator, method)
    prepared.train()
    steps_per_epoch = 10
    return TrainStep(accelerator, prepared, optimizer, optim=cfg.optim, train=cfg.train,
                     state=TrainState(step=steps_per_epoch), steps_per_epoch=steps_per_epoch, total_steps=10_000,
                     global_batch=batch_size)


# ----------------------------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakMemory:
    """Peak memory over a block: CUDA ``max_memory_allocated``; CPU RSS sampled every 2 ms (``/proc/self/statm``).

    ``sampler_cpu_s``: the CPU seconds the sampling thread itself used (CPU), to take out of the process's CPU time."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self.sampler_cpu_s = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)
        self.sampler_cpu_s = time.thread_time()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gc.collect()
            _malloc_trim()
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def _malloc_trim() -> None:
    """Give freed heap back to the OS so RSS peaks of one phase do not carry into the next (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes held between steps: parameters, buffers and optimizer state."""
    n = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    for state in optimizer.state.values():
        n += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, Tensor))
    return n


def _sdpa_cpu_flop_mapping() -> dict[Any, Callable[..., int]]:
    """FlopCounterMode knows the CUDA SDPA kernels; map the CPU flash kernel to the same formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def fwd(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def bwd(grad_out: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    mapping: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def count_flops(step: Callable[[list[Tensor]], None], views: list[Tensor]) -> float:
    """FLOPs of one full training step (teacher forward, student forward + backward; the optimizer adds none)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_flop_mapping()) as counter:
        step(views)
    return float(counter.get_total_flops())


def profile_step(step: Callable[[list[Tensor]], None], views: list[Tensor], *, device: torch.device,
                 rows: int) -> str:
    """One step under ``torch.profiler``: the ``rows`` ops with the most self time, as the profiler's table.

    Self time (not total) so that each microsecond is counted once: the ops that a faster step must remove."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(views)
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=48)


def device_peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak: ``--peak-tflops`` if given, else the spec sheet by CUDA device name."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown (CPU: pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in CUDA_BF16_PEAK_TFLOPS:
        if key in name:
            return tflops, f"spec sheet bf16 dense for {name}"
    return None, f"unknown for {name} (pass --peak-tflops)"


def measure_matmul_tflops(device: torch.device, *, dtype: torch.dtype, n: int, iters: int) -> float:
    """Achievable dense matmul TFLOP/s (a measured peak, for context next to the spec sheet)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def make_views(s: Setting, device: torch.device, seed: int = 0) -> list[Tensor]:
    """g tensors (b, 3, G, G) then l tensors (b, 3, L, L), already on the device."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(s.batch_size, 3, s.global_size, s.global_size, generator=g) for _ in range(s.n_global)]
    views += [torch.randn(s.batch_size, 3, s.local_size, s.local_size, generator=g) for _ in range(s.n_local)]
    return [v.to(device) for v in views]


# ----------------------------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------------------------
def bench_model(key: str, s: Setting, *, device: torch.device, bf16: bool, use_compile: bool,
                peak_tflops: float | None, log: Callable[[str], None], profile_rows: int = 0) -> ModelReport:
    timm_name, model_args = MODELS[key]
    gc.collect()
    _malloc_trim()
    baseline = 0 if device.type == "cuda" else _rss_bytes()  # CPU: the interpreter and libraries, before any model
    torch.manual_seed(0)
    backbone = create_backbone(timm_name, model_args=model_args)
    ref_backbone = copy.deepcopy(backbone)  # same initial weights for both
    dim = int(backbone.num_features)
    params_m = sum(p.numel() for p in backbone.parameters()) / 1e6

    heads = asdict(DINOConfig(out_dim=s.out_dim))  # method.dino defaults but out_dim
    method = DINO(backbone, n_global=s.n_global, **heads).to(device)
    train_step = ours_step(method, device=device, bf16=bf16, batch_size=s.batch_size)

    def ours(views: list[Tensor], train_step: TrainStep = train_step) -> None:
        train_step(lambda: views)

    ref_model = ReferenceDINO(ref_backbone, dim, s.out_dim).to(device)
    ref_model.student_head.load_state_dict(method.student_head.state_dict())
    ref_model.teacher_head.load_state_dict(method.teacher_head.state_dict())
    ref_model.train()
    ref = ReferenceStep(ref_model, s.out_dim)
    views = make_views(s, device)

    # FLOPs on the eager step (also the first warmup step of each)
    log(f"[{key}] counting FLOPs (one step each)")
    flops_ours = count_flops(ours, views)
    flops_ref = count_flops(ref, views)
    if use_compile:
        compile_backbones(train_step.unwrapped)

    # extra warmup (the FLOP-counting step already ran each once: optimizer state exists)
    for _ in range(s.warmup):
        ours(views)
        ref(views)
    _sync(device)
    if profile_rows:
        for name, step in (("ours", ours), ("reference", ref)):
            log(f"[{key}] profile of one {name} step (torch.profiler, ops by self time)\n"
                + profile_step(step, views, device=device, rows=profile_rows))

    # timed, alternating which goes first; peak memory per step. The other implementation's weights and optimizer
    # state stay resident, so they are subtracted.
    states = {"ours": _state_bytes(train_step.unwrapped, train_step.optimizer),
              "reference": _state_bytes(ref_model, ref.optimizer)}
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    cpu_times: dict[str, list[float]] = {"ours": [], "reference": []}
    peaks = {"ours": 0, "reference": 0}
    log(f"[{key}] timing {s.steps} steps each, alternating")
    for i in range(s.steps):
        for name, step in (("ours", ours), ("reference", ref)) if i % 2 == 0 else (("reference", ref), ("ours", ours)):
            with PeakMemory(device) as pm:
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                step(views)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
                cpu = time.process_time() - c0
            cpu_times[name].append(cpu - pm.sampler_cpu_s)
            other = "reference" if name == "ours" else "ours"
            peaks[name] = max(peaks[name], pm.peak - states[other])
        log(f"[{key}]   step {i + 1}: ours {times['ours'][-1]:.3f}s ({cpu_times['ours'][-1]:.2f} CPU s)  "
            f"reference {times['reference'][-1]:.3f}s ({cpu_times['reference'][-1]:.2f} CPU s)")

    crops = s.n_global + s.n_local

    def result(name: str, flops: float) -> Result:
        t = statistics.median(times[name])
        return Result(
            impl=name, step_time_s=t, step_time_min_s=min(times[name]),
            step_times_s=[round(x, 4) for x in times[name]], cpu_time_s=statistics.median(cpu_times[name]),
            images_per_s=s.batch_size / t, crops_per_s=s.batch_size * crops / t,
            peak_mem_gb=peaks[name] / 1e9, peak_mem_per_image_mb=(peaks[name] - baseline) / 1e6 / s.batch_size,
            flops_per_step=flops, achieved_tflops=flops / t / 1e12,
            mfu=(flops / t / 1e12 / peak_tflops) if peak_tflops else None,
        )

    r_ours, r_ref = result("ours", flops_ours), result("reference", flops_ref)
    report = ModelReport(model=key, timm_name=timm_name, params_m=round(params_m, 2), setting=asdict(s),
                         ours=r_ours, reference=r_ref, ratio_ours_over_ref=r_ours.step_time_s / r_ref.step_time_s,
                         ratio_min=r_ours.step_time_min_s / r_ref.step_time_min_s,
                         ratio_cpu=r_ours.cpu_time_s / r_ref.cpu_time_s,
                         extras={"bad_steps_ours": train_step.state.bad_steps_total})
    del ours, train_step, ref, method, ref_model, views
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
# --quick on the CPU: ViT-S/16 with the real crops at batch 2; ViT-B/16 and Swin-T on half-size crops (112 + 6x48).
# The FLOP-counting step is the only warmup there.
QUICK_CPU: dict[str, Setting] = {
    "vit_s16": Setting(batch_size=2, warmup=0, steps=3),
    "vit_b16": Setting(batch_size=2, global_size=112, local_size=48, n_local=6, warmup=0, steps=3),
    "swin_t": Setting(batch_size=2, global_size=112, local_size=48, n_local=6, warmup=0, steps=3),
}
FULL: dict[str, Setting] = {
    "vit_s16": Setting(batch_size=64, warmup=5, steps=20),
    "vit_b16": Setting(batch_size=64, warmup=5, steps=20),
    "swin_t": Setting(batch_size=64, warmup=5, steps=20),
}
QUICK_CUDA: dict[str, Setting] = {k: Setting(batch_size=v.batch_size, warmup=3, steps=10) for k, v in FULL.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small batch and few steps (CPU: fits in 5 minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--global-size", type=int, default=None)
    p.add_argument("--local-size", type=int, default=None)
    p.add_argument("--n-local", type=int, default=None)
    p.add_argument("--out-dim", type=int, default=None, help="DINO head output dim (default 65536)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per implementation (after the FLOP count)")
    p.add_argument("--compile", action="store_true", help="torch.compile our backbones (train.compile=true)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="ours: bf16 autocast (train.mixed_precision=bf16) or fp32; auto = bf16 on CUDA, fp32 on CPU.\n"
                        "The reference always runs fp32, as lightly's example does.")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CUDA: looked up by name)")
    p.add_argument("--measure-peak", action="store_true", help="also measure a dense matmul peak (bf16 CUDA, fp32 CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after the warmup, profile one step of each (torch.profiler) and print its ROWS ops\n"
                        "with the most self time; that step is not among the timed ones")
    return p.parse_args(argv)


def settings_for(args: argparse.Namespace, key: str) -> Setting:
    table = (QUICK_CPU if args.device == "cpu" else QUICK_CUDA) if args.quick else FULL
    s = copy.copy(table[key])
    for name in ("batch_size", "global_size", "local_size", "n_local", "out_dim", "steps", "warmup"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    return s


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(reports: list[ModelReport], mem_label: str) -> None:
    head = (f"{'model':8} {'impl':9} {'batch':>5} {'crops':>12} {'step s':>8} {'img/s':>7} {'crops/s':>8} "
            f"{mem_label:>11} {'MB/img':>7} {'GFLOP/step':>11} {'TFLOP/s':>8} {'MFU %':>6} {'ours/ref':>8} "
            f"{'(min)':>6} {'CPU s':>7} {'(CPU)':>6}")
    print(head)
    print("-" * len(head))
    for r in reports:
        s = r.setting
        crops = f"{s['n_global']}x{s['global_size']}+{s['n_local']}x{s['local_size']}"
        for res in (r.ours, r.reference):
            ratio = f"{r.ratio_ours_over_ref:.2f}" if res.impl == "ours" else ""
            ratio_min = f"{r.ratio_min:.2f}" if res.impl == "ours" else ""
            ratio_cpu = f"{r.ratio_cpu:.2f}" if res.impl == "ours" else ""
            mfu = None if res.mfu is None else 100 * res.mfu
            print(f"{r.model:8} {res.impl:9} {s['batch_size']:>5} {crops:>12} {res.step_time_s:>8.3f} "
                  f"{res.images_per_s:>7.2f} {res.crops_per_s:>8.1f} {res.peak_mem_gb:>11.2f} "
                  f"{res.peak_mem_per_image_mb:>7.0f} {res.flops_per_step / 1e9:>11.1f} {res.achieved_tflops:>8.3f} "
                  f"{_fmt(mfu, '.1f'):>6} {ratio:>8} {ratio_min:>6} {res.cpu_time_s:>7.2f} {ratio_cpu:>6}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, peak_src = device_peak_tflops(device, args.peak_tflops)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    machine = {
        "device": args.device, "device_name": dev_name, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "timm_fused_attn": bool(timm.layers.use_fused_attn()),
        "peak_tflops": peak, "peak_source": peak_src, "compile": args.compile, "quick": args.quick,
        "ours_precision": "bf16 autocast" if bf16 else "fp32", "ours_fused_adamw": Config().optim.fused,
    }
    if args.measure_peak:
        if device.type == "cuda":
            machine["matmul_bf16_tflops"] = measure_matmul_tflops(device, dtype=torch.bfloat16, n=8192, iters=50)
        else:
            machine["matmul_fp32_tflops"] = measure_matmul_tflops(device, dtype=torch.float32, n=1024, iters=20)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)

    t_start = time.perf_counter()
    reports = []
    for key in args.models:
        s = settings_for(args, key)
        print(f"[{key}] {MODELS[key][0]}: batch {s.batch_size}, {s.n_global}x{s.global_size} + "
              f"{s.n_local}x{s.local_size} crops, head out_dim {s.out_dim}, warmup {s.warmup}, timed {s.steps}",
              flush=True)
        reports.append(bench_model(key, s, device=device, bf16=bf16, use_compile=args.compile, peak_tflops=peak,
                                   log=lambda m: print(m, flush=True), profile_rows=args.profile))
    print()
    print_table(reports, "peak GB" if device.type == "cuda" else "peak RSS GB")
    print(f"\nstep time = median over timed steps; ours/ref < 1 means ours is faster ((min): fastest steps; "
          f"(CPU): median CPU seconds of the process per step, less sensitive to other processes on the cores). "
          f"MFU vs {peak_src}. "
          f"total {time.perf_counter() - t_start:.0f}s; process max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "results": [asdict(r) for r in reports]}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
