"""The parts of ``benchmarks/gpu_check.sh`` ("the first GPU must not be wasted"), one row per measurement.

Every part appends its rows to ``OUT/rows.jsonl``; ``report`` turns them into ``OUT/gpu_check.json`` (a list of
rows) and ``OUT/gpu_check.md``. Each row has ``name, images_per_s, step_s, mfu, peak_memory_gb, knn_top1, compile,
fsdp, device, torch, cuda`` (null where a field does not apply) and a few more that say how it was measured.

- ``steps``: the training step of ``benchmarks/throughput.py`` (the loop's own ``TrainStep``, FLOPs counted with
  ``FlopCounterMode`` over one full step, MFU against the device's bf16 peak, ``max_memory_allocated``): DINO ViT-S/16
  and DINO Swin-T through ``throughput.bench_model`` itself (beside its lightly-style reference step), SimCLR ViT-S/16
  (2x224, no local crops; throughput.py has no SimCLR) through :func:`bench_method`, built from the same pieces;
  ``--compile`` for the ``train.compile=true`` rows.
- ``fsdp``: the DINO ViT-S/16 step under FSDP2, through :func:`bench_method` (``bench_model`` copies the sharded
  heads into its unsharded reference, which FSDP's DTensors refuse); run it under ``accelerate launch
  --config_file launch/accelerate/fsdp.yaml``: ``make_accelerator`` takes FSDP from the environment that sets.
- ``data``: ``benchmarks/data_pipeline.py`` in N processes at once (one per core the loader would get), summed.
- ``learn``: the row of gpu_check.sh's CIFAR-10 run (``selfsup shard/pretrain/export``, ``selfsup-eval knn``).
- ``report``: the JSON and the markdown table.

``--rehearse``: the same parts on the CPU with tiny models (2-block ViT, 2-stage Swin at 32 px), batch 2, 2 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("name", "images_per_s", "step_s", "mfu", "peak_memory_gb", "knn_top1", "compile", "fsdp", "device",
          "torch", "cuda")
# the rows each part writes, in report order (a part that did not run leaves its rows "skipped")
PART_ROWS = {
    "steps": ["dino_vit_s16/eager", "dino_swin_t/eager", "simclr_vit_s16/eager"],
    "steps_compile": ["dino_vit_s16/compile", "dino_swin_t/compile", "simclr_vit_s16/compile"],
    "fsdp": ["dino_vit_s16/fsdp"],
    "data": ["data_pipeline"],
    "learn": ["dinov2_vit_tiny/cifar10_knn"],
}
# row name (without /mode) -> (method, throughput.MODELS key, key in --rehearse)
STEP_ROWS = {"dino_vit_s16": ("dino", "vit_s16", "tiny_vit"), "dino_swin_t": ("dino", "swin_t", "tiny_swin"),
             "simclr_vit_s16": ("simclr", "vit_s16", "tiny_vit")}
TINY_MODELS = {  # the tests' tiny backbones (tests/conftest.py), 32 px
    "tiny_vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
    "tiny_swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 4, "window_size": 4,
                                                   "embed_dim": 24, "depths": (1, 1), "num_heads": (1, 2)}),
}
MFU_TARGET, MEMORY_TARGET_GB = 0.35, 15.4 / 2  # DINO ViT-S step; half the DINO paper's 15.4 GB for 64 images


def device_fields(cpu: bool) -> dict[str, Any]:
    """The measuring device (the CPU in a rehearsal, the GPU otherwise: also for the CPU-side data and learn rows)."""
    import torch

    name = f"cpu ({platform.machine()})" if cpu else torch.cuda.get_device_name(0)
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}


def make_row(name: str, *, compile: bool = False, fsdp: bool = False, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(FIELDS)
    row.update(name=name, compile=compile, fsdp=fsdp)
    row.update(fields)
    return row


def append_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    with open(out / "rows.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# steps and fsdp: throughput.py's step, FLOP count and peak memory
# ----------------------------------------------------------------------------------------------------------------
def _setting(key: str, method: str, rehearse: bool, **changes: int):
    import throughput as tp

    s = tp.Setting(batch_size=2, global_size=32, local_size=16, n_local=2, out_dim=256, warmup=0, steps=2) \
        if rehearse else tp.FULL[key]
    return dataclasses.replace(s, **changes, **({"n_local": 0} if method == "simclr" else {}))


def bench_method(method_name: str, key: str, s, *, device, bf16: bool, use_compile: bool,
                 peak_tflops: float | None) -> dict[str, Any]:
    """A method's :class:`TrainStep` as ``throughput.ours_step`` builds it (``method.<name>`` defaults; DINO's head
    ``out_dim`` from the setting), timed as ``throughput.bench_model`` times its own step, without a reference."""
    import throughput as tp
    import torch

    from selfsup.build import build_method
    from selfsup.config import Config
    from selfsup.train.step import compile_backbones

    cfg = Config()
    cfg.method.name, cfg.model.drop_path_rate = method_name, 0.0
    cfg.model.name, cfg.model.args = tp.MODELS[key][0], dict(tp.MODELS[key][1])
    if method_name == "dino":
        cfg.method.dino.out_dim = s.out_dim
    torch.manual_seed(0)
    train_step = tp.ours_step(build_method(cfg).to(device), device=device, bf16=bf16, batch_size=s.batch_size)
    views = tp.make_views(s, device)

    def step(v: list) -> None:
        train_step(lambda: v)

    flops = tp.count_flops(step, views)  # also the first warmup step
    if use_compile:
        compile_backbones(train_step.unwrapped)
    for _ in range(s.warmup):
        step(views)
    times, peak = [], 0
    for _ in range(s.steps):
        with tp.PeakMemory(device) as pm:
            tp._sync(device)
            t0 = time.perf_counter()
            step(views)
            tp._sync(device)
            times.append(time.perf_counter() - t0)
        peak = max(peak, pm.peak)
    t = statistics.median(times)
    return {"images_per_s": s.batch_size / t, "step_s": t, "peak_memory_gb": peak / 1e9, "flops_per_step": flops,
            "mfu": flops / t / 1e12 / peak_tflops if peak_tflops else None}


def run_steps(args: argparse.Namespace, *, fsdp: bool = False) -> None:
    import throughput as tp
    import torch

    tp.MODELS.update(TINY_MODELS)
    device = torch.device("cpu" if args.rehearse else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as throughput.py
    peak, peak_src = tp.device_peak_tflops(device, args.peak_tflops)
    bf16 = device.type == "cuda"  # throughput.py's --precision auto: bf16 autocast on CUDA, fp32 on the CPU
    mode = "fsdp" if fsdp else "compile" if args.compile else "eager"
    for base in ["dino_vit_s16"] if fsdp else args.rows:
        method, key, tiny = STEP_ROWS[base]
        key = tiny if args.rehearse else key
        s = _setting(key, method, args.rehearse, **({"warmup": 3, "steps": 10} if fsdp and not args.rehearse else {}))
        print(f"== {base}/{mode}: {method} {tp.MODELS[key][0]} {s}", flush=True)
        extra: dict[str, Any] = {}
        if method == "dino" and not fsdp:  # throughput.py's own measurement
            r = tp.bench_model(key, s, device=device, bf16=bf16, use_compile=args.compile, peak_tflops=peak,
                               log=lambda m: print(m, flush=True))
            m = {"images_per_s": r.ours.images_per_s, "step_s": r.ours.step_time_s, "mfu": r.ours.mfu,
                 "peak_memory_gb": r.ours.peak_mem_gb, "flops_per_step": r.ours.flops_per_step}
            extra = {"reference_step_s": r.reference.step_time_s, "ours_over_reference": r.ratio_ours_over_ref}
        else:
            m = bench_method(method, key, s, device=device, bf16=bf16, use_compile=args.compile, peak_tflops=peak)
        from accelerate.state import PartialState

        if PartialState().is_main_process:
            append_rows(args.out, [make_row(
                f"{base}/{mode}", compile=args.compile, fsdp=fsdp, **m, **device_fields(args.rehearse), **extra,
                model=tp.MODELS[key][0], model_args=tp.MODELS[key][1], setting=dataclasses.asdict(s),
                precision="bf16 autocast" if bf16 else "fp32", peak_tflops=peak, peak_source=peak_src,
                peak_memory_of="torch.cuda.max_memory_allocated" if bf16 else "peak RSS of the process (CPU)",
                distributed=PartialState().distributed_type.value)])
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# data: benchmarks/data_pipeline.py on every core at once
# ----------------------------------------------------------------------------------------------------------------
def run_data(args: argparse.Namespace) -> None:
    sizes = ["--images", "32", "--global-size", "32", "--local-size", "16", "--n-local", "2", "--batch-size", "8"] \
        if args.rehearse else ["--images", "480"]
    tmp = args.out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "data_pipeline.py"), "--data", args.data,
                               *sizes, "--out", str(tmp / f"data_{i}.json")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(args.procs)]
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"data_pipeline.py failed:\n{out[-2000:]}")
    ours = [json.loads((tmp / f"data_{i}.json").read_text())["results"]["selfsup_MultiCropTransform"]
            for i in range(args.procs)]
    rate = sum(r["img_per_wall_s"] for r in ours)  # the processes ran side by side: their rates add up
    append_rows(args.out, [make_row(
        "data_pipeline", images_per_s=rate, processes=args.procs, cpu_count=os.cpu_count(),
        img_per_s_per_core=statistics.mean(r["img_per_cpu_s"] for r in ours), data=os.path.basename(args.data),
        views=" ".join(sizes) if args.rehearse else "2x224 + 10x96",
        what="benchmarks/data_pipeline.py (views.backend=fast), one process per core a loader gets, summed")])


# ----------------------------------------------------------------------------------------------------------------
# learn: the row of the CIFAR-10 run
# ----------------------------------------------------------------------------------------------------------------
def run_learn(args: argparse.Namespace) -> None:
    run, knn = Path(args.run), json.loads((Path(args.knn) / "knn.json").read_text())
    summary_path = run / "summary.json"
    if summary_path.exists():  # the run finished its schedule
        summary = json.loads(summary_path.read_text())
        steps, ips, batch = summary["steps"], summary["images_per_s"], summary["global_batch"]
    else:  # stopped at the time cap: the last logged interval, and the newest checkpoint was exported
        from selfsup.config import load_config

        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        steps, ips, batch = last["step"], last["images_per_s"], load_config(run / "config.yaml").train.batch_size

    def top1(model: str) -> float:
        return statistics.mean(r["top1"] for r in knn["runs"] if r["model"] == model and r["k"] == 20)

    append_rows(args.out, [make_row(
        "dinov2_vit_tiny/cifar10_knn", images_per_s=ips, step_s=batch / ips, knn_top1=top1("pretrained"),
        knn_top1_random_init=top1("random_init"), steps=steps, global_batch=batch,
        pretrain_s=args.seconds, stopped_at_time_cap=not summary_path.exists(), knn_k=20,
        config="configs/dinov2_vit_tiny_small_data.yaml")])


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------
def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else ("yes" if x else "no") if isinstance(x, bool) else format(x, spec)


def run_report(args: argparse.Namespace) -> None:
    rows_path, skips_path = args.out / "rows.jsonl", args.out / "skipped.tsv"
    rows = {r["name"]: r for r in map(json.loads, rows_path.read_text().splitlines())} if rows_path.exists() else {}
    skips = dict(line.split("\t", 1) for line in skips_path.read_text().splitlines()) if skips_path.exists() else {}
    # the CPU-side parts (data, learn) do not import torch: their rows take the device of the step rows
    first = next((r for r in rows.values() if r["device"]), None) or device_fields(args.rehearse)
    for r in rows.values():
        r.update({k: r[k] or first[k] for k in ("device", "torch", "cuda")})
    table = []
    for part, names in PART_ROWS.items():
        for name in names:
            table.append(rows.pop(name, None) or make_row(
                name, compile=part == "steps_compile", fsdp=part == "fsdp", device=first["device"],
                torch=first["torch"], cuda=first["cuda"],
                skipped=skips.get(part, "no row: the part failed or ran out of time (see logs/)")))
    table += rows.values()  # anything else a part wrote
    (args.out / "gpu_check.json").write_text(json.dumps(table, indent=1) + "\n")

    peak = next((r.get("peak_source") for r in table if r.get("peak_source")), "-")
    lines = [f"# GPU check{' (rehearsal on the CPU: tiny sizes)' if args.rehearse else ''}", "",
             f"device: {first['device']}; torch {first['torch']}; CUDA {first['cuda']}; MFU against: {peak}; "
             f"wall time {args.wall_s} s", "",
             "| name | images/s | step s | MFU | peak memory GB | kNN top-1 | compile | fsdp | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        notes = r.get("skipped") and f"skipped: {r['skipped']}" or "; ".join(
            f"{k} {_fmt(r[k]) if not isinstance(r[k], str) else r[k]}"
            for k in ("knn_top1_random_init", "ours_over_reference", "processes", "stopped_at_time_cap") if k in r)
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(f"| {r['name']} | {_fmt(r['images_per_s'], '.1f')} | {_fmt(r['step_s'], '.4f')} | "
                     f"{_fmt(mfu, '.1f')}{'%' if mfu is not None else ''} | {_fmt(r['peak_memory_gb'], '.2f')} | "
                     f"{_fmt(r['knn_top1'], '.3f')} | {_fmt(r['compile'])} | {_fmt(r['fsdp'])} | {notes} |")
    lines += ["", f"Targets (docs/speed.md): DINO ViT-S step MFU >= {100 * MFU_TARGET:.0f}%, peak memory <= "
              f"{MEMORY_TARGET_GB:.1f} GB at batch 64 (half the DINO paper's 15.4 GB)."
              + (" Rehearsal: tiny models on the CPU, so the lines below only show that the checks run." if
                 args.rehearse else "")]
    for r in table:
        if r["name"].startswith("dino_vit_s16/") and r["step_s"] is not None:
            mfu = "not measured (no device peak)" if r["mfu"] is None else \
                f"{100 * r['mfu']:.1f}% ({'met' if r['mfu'] >= MFU_TARGET else 'NOT met'})"
            lines.append(f"- {r['name']}: MFU {mfu}, peak memory "
                         f"{r['peak_memory_gb']:.2f} GB "
                         f"({'met' if r['peak_memory_gb'] <= MEMORY_TARGET_GB else 'NOT met'})")
    fed = [r["images_per_s"] for r in table if r["name"].startswith("dino_vit_s16/") and r["images_per_s"]]
    data = next(r for r in table if r["name"] == "data_pipeline")
    if fed and data["images_per_s"]:
        lines.append(f"- data pipeline {data['images_per_s']:.0f} images/s vs the fastest DINO ViT-S step "
                     f"{max(fed):.0f} images/s: the loader "
                     f"{'keeps' if data['images_per_s'] >= max(fed) else 'does NOT keep'}"
                     f" the GPU fed")
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["steps", "fsdp", "data", "learn", "report"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes")
    p.add_argument("--compile", action="store_true", help="steps: torch.compile the backbones (train.compile=true)")
    p.add_argument("--rows", nargs="+", choices=list(STEP_ROWS), default=list(STEP_ROWS), help="steps: which rows")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CUDA: looked up by name)")
    p.add_argument("--data", default=None, help="data: a .tar.gz of images for data_pipeline.py")
    p.add_argument("--procs", type=int, default=1, help="data: processes side by side")
    p.add_argument("--run", help="learn: the run folder")
    p.add_argument("--knn", help="learn: the selfsup-eval knn folder")
    p.add_argument("--seconds", type=int, default=None, help="learn: pretraining wall time")
    p.add_argument("--wall-s", type=int, default=None, help="report: the whole check's wall time")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part in ("steps", "fsdp"):
        sys.path.insert(0, str(ROOT / "benchmarks"))
    {"steps": run_steps, "fsdp": lambda a: run_steps(a, fsdp=True), "data": run_data, "learn": run_learn,
     "report": run_report}[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
