"""``selfsup-eval detect`` / ``python -m evaluation.detection``: detection transfer with few labels.

Fine-tunes Faster R-CNN on the exported backbone and on a random init of the same architecture
(plus optional ``--baseline-timm`` weights) at each label fraction and seed, then writes
``OUT/detection.json`` and ``OUT/detection_map.png``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from selfsup.errors import ConfigError, SelfsupError


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from e


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from e


def add_detect_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the ``detect`` options to ``p``."""
    p.add_argument("--weights", required=True, help="exported folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="VOC-style folder or COCO JSON file")
    p.add_argument("--images", default=None, help="image folder for a COCO JSON (default: next to the JSON)")
    p.add_argument("--val-data", default=None, help="COCO JSON of the evaluation split (default: 20%% hold-out)")
    p.add_argument("--out", required=True, help="output folder for detection.json and detection_map.png")
    p.add_argument("--label-fractions", type=_floats, default=[0.25, 1.0], help="e.g. 0.1,0.25,1.0")
    p.add_argument("--seeds", type=_ints, default=[0], help="e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--img-size", type=int, default=256, help="longer image side")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=0.75, help="backbone layer-wise lr decay (1 = none)")
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--proposals", type=int, default=1000, help="RPN proposals per image (training; half at test)")
    p.add_argument("--rois-per-image", type=int, default=256, help="proposals sampled per image for the box loss")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--baseline-timm", action="append", default=[],
                   help="extra backbone: exported-style folder or TIMM_NAME=/path/weights.safetensors (repeatable)")
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init baseline")
    p.add_argument("--log-every", type=int, default=50, help="print the loss every N steps (0 = silent)")
    return p


def add_detect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``detect`` on a ``selfsup-eval`` subparser set; ``args.func`` is :func:`run_detect`."""
    p = subparsers.add_parser("detect", help="detection transfer with limited labels (Faster R-CNN + FPN)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_detect_arguments(p)
    p.set_defaults(func=run_detect)
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("steps", "img_size", "batch_size", "fpn_channels", "proposals", "rois_per_image"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)}; expected a positive integer")
    if not args.label_fractions or not args.seeds:
        raise ConfigError("--label-fractions / --seeds: empty; expected at least one value")
    if args.img_size % 64:
        raise ConfigError(f"--img-size: {args.img_size}; expected a multiple of 64 (the coarsest pyramid stride)")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; expected cpu or auto")
    return name


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):  # `python -m evaluation.detection`
        argv[0:1] = ["python", "-m", "evaluation.detection"]
    else:
        argv[0] = Path(argv[0]).name if argv else "selfsup-eval"
    return shlex.join(argv)


def run_detect(args: argparse.Namespace) -> int:
    """Runs the experiment described by ``args`` and writes the results. Returns the exit code."""
    from evaluation.detection.data import load_detection_dataset
    from evaluation.detection.results import aggregate, plot_map, write_detection_json
    from evaluation.detection.sampling import sample_label_fraction
    from evaluation.detection.transfer import run_transfer
    from evaluation.detection.weights import baseline_source, export_sources

    _check(args)
    device = _device(args.device)
    for f in args.label_fractions:
        sample_label_fraction([0], fraction=f, seed=0)  # validates the fraction before any training
    sources = export_sources(args.weights)
    if args.no_random_init:
        sources = sources[:1]
    sources += [baseline_source(s) for s in args.baseline_timm]
    dataset = load_detection_dataset(args.data, images=args.images, val_data=args.val_data)
    print(f"[detect] {dataset.name}: {len(dataset.train)} train / {len(dataset.val)} {dataset.val_split} images, "
          f"classes {list(dataset.classes)}; models {[s.label for s in sources]}; device {device}", flush=True)
    results = run_transfer(dataset, sources, fractions=args.label_fractions, seeds=args.seeds, steps=args.steps,
                           img_size=args.img_size, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, layer_decay=args.layer_decay,
                           fpn_channels=args.fpn_channels, proposals=args.proposals,
                           rois_per_image=args.rois_per_image, device=device,
                           log=lambda m: print(m, flush=True), log_every=args.log_every)
    rows = aggregate(results)
    out = Path(args.out)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config.update(device=device, detector="fasterrcnn_fpn", pyramid_strides=[8, 16, 32, 64],
                  weights=str(Path(args.weights).resolve()))
    path = write_detection_json(out / "detection.json", dataset=dataset.name, classes=dataset.classes,
                                val_split=dataset.val_split, rows=rows, command=_command_line(),
                                config=config)
    plot_map(rows, out / "detection_map.png", title=f"Faster R-CNN on {dataset.name}")
    for r in rows:
        print(f"{r['model']:>14} fraction={r['label_fraction']:<5g} mAP={r['mAP']['mean']:.4f}"
              f"±{r['mAP']['std']:.4f} AP50={r['AP50']['mean']:.4f} AP75={r['AP75']['mean']:.4f}")
    print(f"[detect] wrote {path} and {out / 'detection_map.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: ``python -m evaluation.detection --weights ... --data ... --out ...``."""
    parser = add_detect_arguments(argparse.ArgumentParser(prog="python -m evaluation.detection", description=__doc__))
    args = parser.parse_args(argv)
    try:
        return run_detect(args)
    except SelfsupError as e:
        print(f"selfsup-eval: error: {e}", file=sys.stderr)
        return e.exit_code
