"""``selfsup`` command line: shard, pretrain, export, config.

    selfsup shard SRC OUT_DIR [--max-per-shard N] [--no-verify] [--overwrite]
    selfsup pretrain CONFIG [key=value ...]        (also: accelerate launch -m selfsup pretrain ...)
    selfsup NAME CONFIG [key=value ...]            = selfsup pretrain CONFIG method.name=NAME ... (a method whose
                                                   spec has a `command`, e.g. selfsup distill)
    selfsup export RUN_DIR OUT_DIR [export.license=ID] [--onnx] [--int8] [--overwrite]
    selfsup views CONFIG [key=value ...] [--out views.png] [--n 4]   draw the training crops
    selfsup config [CONFIG] [key=value ...]        print the resolved config

User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from selfsup.errors import run_cli


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.train.loop import pretrain

    cfg = load_config([args.config], args.overrides)
    summary = pretrain(cfg)
    from selfsup.train.report import format_summary

    if summary.get("process_index", 0) == 0:
        print(format_summary(summary))
    return 0


def _cmd_method(args: argparse.Namespace) -> int:
    args.overrides = [f"method.name={args.method}", *args.overrides]  # an alias: the same loop, one more method
    return _cmd_pretrain(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfsup.export import export

    result = export(args.run_dir, args.out_dir, checkpoint=args.checkpoint, overrides=args.overrides,
                    which=args.which, overwrite=args.overwrite)
    print(f"exported {result['encoder']} backbone of {result['method']} (step {result['step']}, checkpoints/"
          f"{Path(result['checkpoint']).name}) to {result['out_dir']}; "
          f"plain timm reload max |diff| = {result['reload_max_abs_diff']:.1e}")
    print(f'  load it with: timm.create_model("local-dir:{result["out_dir"]}", pretrained=True)')
    if args.onnx or args.int8:
        from selfsup.onnx_export import export_onnx, summary_lines

        print("\n".join(summary_lines(export_onnx(result["out_dir"], int8=args.int8,
                                                  dynamic_size=args.onnx_dynamic_size,
                                                  calibration=args.calibration, run_dir=args.run_dir),
                                      result["out_dir"])))
    return 0


def _cmd_shard(args: argparse.Namespace) -> int:
    from selfsup.data.shard_writer import write_shards

    write_shards(  # prints its progress bar and summary
        args.src, args.out_dir, max_per_shard=args.max_per_shard, image_column=args.image_column,
        label_column=args.label_column, split=args.split, seed=None if args.no_shuffle else args.seed,
        verify=not args.no_verify, overwrite=args.overwrite,
    )
    return 0


def _cmd_views(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.views_preview import write_views_png

    cfg = load_config([args.config], args.overrides)
    print(f"wrote {write_views_png(cfg, args.out, n=args.n)}: the training views of {args.n} samples")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from selfsup.config import load_config, to_yaml

    cfg = load_config([args.config] if args.config else [], args.overrides)
    print(to_yaml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised pretraining for vision transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a backbone: CONFIG [key=value ...]")
    p.add_argument("config", help="YAML config, e.g. configs/dino_vit_small.yaml")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. optim.lr=1e-4 train.batch_size=32")
    p.set_defaults(func=_cmd_pretrain)

    from selfsup.registry import specs

    for spec in specs().values():  # `selfsup NAME CONFIG ...` = pretrain with method.name=NAME, where a method asks
        if spec.command:
            p = sub.add_parser(spec.name, help=spec.command)
            p.add_argument("config", help="YAML config")
            p.add_argument("overrides", nargs="*", help=f"dotlist overrides, e.g. method.{spec.name}.* keys")
            p.set_defaults(func=_cmd_method, method=spec.name)

    p = sub.add_parser("export", help="export a run's backbone for timm: RUN_DIR OUT_DIR")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("overrides", nargs="*", help="export.* config keys, e.g. export.license=apache-2.0")
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: see --which)")
    p.add_argument("--overwrite", action="store_true",
                   help="OUT_DIR may hold other files: write the export's files beside them (they stay)")
    p.add_argument("--which", choices=("best", "last"), default=None,
                   help="best = checkpoints/best (the kNN monitor's best), last = the newest checkpoint "
                        "(default: best when a monitor ran, else last)")
    p.add_argument("--onnx", action="store_true", help="also write OUT_DIR/model.onnx (checked against torch)")
    p.add_argument("--int8", action="store_true", help="also write OUT_DIR/model.int8.onnx (implies --onnx)")
    p.add_argument("--onnx-dynamic-size", action="store_true", help="dynamic height/width in the ONNX graph")
    p.add_argument("--calibration", default=None, help="int8 calibration/check shards (default: the run's data.shards)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("shard", help="write webdataset shards from an image folder or a Hugging Face dataset")
    p.add_argument("src", help="image folder, datasets.save_to_disk folder, or a dataset name in the local HF cache")
    p.add_argument("out_dir")
    p.add_argument("--max-per-shard", type=int, default=1000)
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default=None, help="split of a Hugging Face dataset (default: train if present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order samples are written in (default 0)")
    p.add_argument("--no-shuffle", action="store_true",
                   help="keep the source order (sorted paths): a class-folder source then gives one class per shard")
    p.add_argument("--no-verify", action="store_true",
                   help="check image headers only (faster) instead of decoding each image to skip broken ones")
    p.add_argument("--overwrite", action="store_true",
                   help="replace .tar / classes.json files in OUT_DIR that selfsup shard did not write")
    p.set_defaults(func=_cmd_shard)

    p = sub.add_parser("views", help="draw the global and local crops training would feed: CONFIG [key=value ...]")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. data.shards=data/shards/")
    p.add_argument("--out", default="views.png", help="PNG to write (default views.png)")
    p.add_argument("--n", type=int, default=4, help="number of samples (rows)")
    p.set_defaults(func=_cmd_views)

    p = sub.add_parser("config", help="print the resolved config: [CONFIG] [key=value ...]")
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    args = build_parser().parse_args(argv)
    return run_cli("selfsup", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
