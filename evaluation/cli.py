"""``selfsup-eval``: the label-efficiency report and its stages from the command line.

    selfsup-eval report   --weights EXPORT --train TRAIN --val VAL --out DIR [--finetune] [--update-card] ...
    selfsup-eval knn      --weights EXPORT --train TRAIN --val VAL --out DIR ...   (writes DIR/knn.json)
    selfsup-eval linear   ...                                                      (writes DIR/linear.json)
    selfsup-eval finetune ...                                                      (writes DIR/finetune.json)
    selfsup-eval deploy   --weights EXPORT[,EXPORT...] ...  (writes DIR/deploy.md, deploy.json, accuracy_vs_latency.png)
    selfsup-eval embed    --weights EXPORT --images DIR|--shards SPEC --out DIR    (writes DIR/embeddings.safetensors)
    selfsup-eval curate   --weights EXPORT --images POOL [--labels DIR] --out DIR   (writes DIR/duplicates.csv, ...)
    selfsup-eval detect   --weights EXPORT --data VOC_DIR|COCO_JSON --out DIR ...      (writes DIR/detection.json)
    selfsup-eval select   --weights EXPORT --images POOL --budget N --out DIR  (writes DIR/selection.{txt,json,png})

User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from evaluation.loading.fractions import parse_fractions
from evaluation.settings import DEFAULTS, DETECTION_FRACTIONS, DETECTION_SEEDS, EvalSettings
from selfsup.errors import ConfigError, run_cli


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; expected a positive integer")
    return value


def _multiple_of_64(text: str) -> int:
    value = _positive(text)
    if value % 64:
        raise argparse.ArgumentTypeError(f"{value}; expected a multiple of 64 (the coarsest pyramid stride)")
    return value


def _fractions_text(fractions: tuple[float, ...]) -> str:
    return ",".join(f"{f:g}" for f in fractions)


def _add_shared(p: argparse.ArgumentParser, *, fractions: tuple[float, ...] = DEFAULTS.label_fractions,
                seeds: int = DEFAULTS.seeds) -> None:
    """The flags every stage, detection included, reads the same way."""
    p.add_argument("--weights", required=True, help="exported folder (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="report folder (features are cached in OUT/cache)")
    p.add_argument("--label-fractions", default=_fractions_text(fractions), help="comma-separated fractions in (0, 1]")
    p.add_argument("--seeds", type=_positive, default=seeds, help="number of seeds (label subsets) per fraction")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=DEFAULTS.device)
    p.add_argument("--threads", type=_positive, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--baseline-timm", default=None, help="also evaluate this local timm folder (local-dir:PATH)")


def _add_common(p: argparse.ArgumentParser) -> None:
    _add_shared(p)
    p.add_argument("--train", required=True, help="labelled train images: image folder, saved HF dataset or shards")
    p.add_argument("--val", required=True, help="labelled val images, same kinds as --train")
    p.add_argument("--max-train", type=_positive, default=None, help="use a seeded random subset of the train set")
    p.add_argument("--max-val", type=_positive, default=None, help="use a seeded random subset of the val set")
    p.add_argument("--batch-size", type=_positive, default=DEFAULTS.batch_size)
    p.add_argument("--num-workers", type=int, default=DEFAULTS.num_workers)
    p.add_argument("--img-size", type=_positive, default=None, help="override the export's input size")
    p.add_argument("--allow-pipe", action="store_true",
                   help="accept pipe:CMD lines in shard lists (they run CMD in a shell; refused by default)")


def _add_pretrain_shards(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrain-shards", default=None,
                   help="the pretraining shards (or image folder): also report which val images are among them")


def _add_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--finetune-steps", type=_positive, default=DEFAULTS.finetune_steps)
    p.add_argument("--finetune-lr", type=float, default=DEFAULTS.finetune_lr)


def _add_detection(p: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """Detection flags: ``--data ...`` on ``detect``, ``--detection-data ...`` on ``report``; ``args.detection_*``."""
    def add(name: str, **kw) -> None:
        p.add_argument(f"--{prefix}{name}", dest="detection_" + name.replace("-", "_"), **kw)

    add("data", required=not prefix, help="VOC folder or COCO JSON file of boxes (docs/detection.md)")
    add("images", help="image folder of a COCO JSON (default: the JSON's folder)")
    add("val-data", help="COCO JSON of the evaluation split (default: a seeded 20%% hold-out)")
    add("steps", type=_positive, default=300, help="detector optimizer steps per run")
    add("img-size", type=_multiple_of_64, default=256, help="longer image side of the detector, a multiple of 64")
    add("batch-size", type=_positive, default=4)
    add("lr", type=float, default=2e-4)
    add("weight-decay", type=float, default=0.05)
    add("layer-decay", type=float, default=0.75, help="backbone layer-wise lr decay (1 = none)")
    add("fpn-channels", type=_positive, default=256)
    add("proposals", type=_positive, default=1000, help="RPN proposals per image (training; half at test)")
    add("rois-per-image", type=_positive, default=256, help="proposals sampled per image for the box loss")
    add("log-every", type=int, default=50, help="print the loss every N steps (0 = silent)")


def _detection(args: argparse.Namespace) -> dict | None:
    """``args.detection_*`` as keyword arguments of ``run_detection``; None without detection data."""
    kw = {k.removeprefix("detection_"): v for k, v in vars(args).items() if k.startswith("detection_")}
    return kw if kw.get("data") else None


def _add_sections(p: argparse.ArgumentParser) -> None:
    """Flags of the optional report sections (evaluation/report/sections.py)."""
    p.add_argument("--no-visual", dest="visual", action="store_false",
                   help="skip attention / PCA maps, retrieval and the 2D embedding (on by default)")
    p.add_argument("--projection", default="auto", help="2D embedding: auto (umap, else tsne, else pca) | umap | "
                   "tsne | pca | none")
    p.add_argument("--robustness", action="store_true",
                   help="add kNN / linear-probe accuracy under the 15 common corruptions (off by default)")
    p.add_argument("--corruptions", default="all", help="comma-separated corruption names for --robustness (all)")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities 1-5 for --robustness")
    p.add_argument("--robustness-max-val", type=_positive, default=None,
                   help="corrupt a seeded subset of this many val images (default: all of --max-val)")


def _names(text: str) -> list[str] | None:
    return None if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]


def _severities(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--severities {text!r}; expected comma-separated integers in 1-5") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup-eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="kNN + linear probe (+ fine-tune) for the export and baselines")
    _add_common(report)
    _add_pretrain_shards(report)
    report.add_argument("--finetune", action="store_true", help="also fine-tune the whole network")
    report.add_argument("--update-card", action="store_true",
                        help="also put the results table into the export's model card (WEIGHTS/README.md)")
    _add_finetune(report)
    _add_sections(report)
    _add_detection(report, prefix="detection-")
    for name in ("knn", "linear"):
        stage = sub.add_parser(name, help=f"only the {name} stage")
        _add_common(stage)
        _add_pretrain_shards(stage)
    ft = sub.add_parser("finetune", help="only the fine-tune stage")
    _add_common(ft)
    _add_pretrain_shards(ft)
    _add_finetune(ft)
    deploy = sub.add_parser("deploy", help="cost/accuracy table of exports and their ONNX fp32/int8 files")
    _add_common(deploy)  # --weights takes EXPORT[,EXPORT...] here
    deploy.add_argument("--repeats", type=_positive, default=10, help="timed runs per latency/throughput median")
    detect = sub.add_parser("detect", help="only the detection stage: Faster R-CNN transfer with limited labels")
    _add_shared(detect, fractions=DETECTION_FRACTIONS, seeds=DETECTION_SEEDS)
    _add_detection(detect)
    detect.add_argument("--no-random-init", action="store_true", help="skip the random-init baseline")
    from evaluation.stages.embed import add_embed_parser

    add_embed_parser(sub)  # `embed`: embeddings of a folder or shards (evaluation/stages/embed.py)
    from evaluation.stages.select import add_select_parser

    add_select_parser(sub)  # `select`: which images to label next (evaluation/stages/select.py)
    from evaluation.stages.curate import add_curate_parser

    add_curate_parser(sub)  # `curate`: duplicates, outliers, label issues of a pool (evaluation/stages/curate.py)
    return parser


def settings_from(args: argparse.Namespace, fractions: list[float]) -> EvalSettings:
    """The parsed flags as :class:`EvalSettings` (flags a command lacks keep their defaults)."""
    given = {"label_fractions": tuple(fractions), "seeds": args.seeds, "device": args.device}
    for name in ("max_train", "max_val", "img_size", "batch_size", "num_workers", "allow_pipe", "finetune_steps",
                 "finetune_lr"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    return EvalSettings(**given)


def run(args: argparse.Namespace, command: str) -> None:
    """Dispatch one parsed command (typed keyword arguments from here on)."""
    from evaluation.loading.backbones import model_sources
    from evaluation.pipeline import open_data, run_classification, run_deploy, run_detect, run_report

    fractions = parse_fractions(args.label_fractions)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but no CUDA device is visible; expected --device cpu or auto")
    settings = settings_from(args, fractions)
    if args.command == "detect":
        sources = model_sources(weights=args.weights, baseline_timm=args.baseline_timm)
        run_detect([s for s in sources if not (args.no_random_init and s.kind == "random_init")], out=args.out,
                   fractions=fractions, seeds=list(range(args.seeds)), device=args.device, command=command,
                   **_detection(args))
        return
    if args.command == "report":
        if args.update_card:
            from evaluation.report.card import card_path

            card_path(args.weights)  # before any work: the card must be there
        report = run_report(
            settings, weights=args.weights, train=args.train, val=args.val, out=args.out, finetune=args.finetune,
            baseline_timm=args.baseline_timm, command=command, visual=args.visual, projection=args.projection,
            robustness=args.robustness, corruptions=_names(args.corruptions), severities=_severities(args.severities),
            robustness_max_val=args.robustness_max_val, detection=_detection(args),
            pretrain_shards=args.pretrain_shards)
        print(f"wrote {args.out}/report.md, report.json, report.html")
        if args.update_card:
            from evaluation.report.card import update_card

            print(f"added the results table to {update_card(args.weights, report)}")
        return
    if args.command == "deploy":
        run_deploy(settings, weights=args.weights, train=args.train, val=args.val, out=args.out,
                   threads=args.threads, repeats=args.repeats, command=command)
        print(f"wrote {args.out}/deploy.md, deploy.json, accuracy_vs_latency.png")
        return
    data = open_data(settings, train=args.train, val=args.val, out=args.out, pretrain_shards=args.pretrain_shards)
    sources = model_sources(weights=args.weights, baseline_timm=args.baseline_timm)
    run_classification(data, sources, settings, out=args.out, stages=(args.command,))
    print(f"wrote {args.out}/{args.command}.json")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``selfsup-eval``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # Same seeds -> same numbers: refuse nondeterministic kernels where torch knows of them (warn, not fail).
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.command == "embed":
        from evaluation.stages.embed import embed_command

        return run_cli("selfsup-eval", lambda: embed_command(args))
    if args.command == "select":
        from evaluation.stages.select import select_command

        return run_cli("selfsup-eval", lambda: select_command(args))
    if args.command == "curate":
        from evaluation.stages.curate import curate_command

        return run_cli("selfsup-eval", lambda: curate_command(args, command="selfsup-eval " + shlex.join(argv)))
    return run_cli("selfsup-eval", lambda: run(args, command="selfsup-eval " + shlex.join(argv)))


if __name__ == "__main__":
    sys.exit(main())
