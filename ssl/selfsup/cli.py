"""``selfsup`` command line: shard, pretrain, export, config.

    selfsup shard SRC OUT_DIR [--max-per-shard N]
    selfsup pretrain CONFIG [key=value ...]        (also: accelerate launch -m selfsup pretrain ...)
    selfsup export RUN_DIR OUT_DIR
    selfsup config [CONFIG] [key=value ...]        print the resolved config

User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from selfsup.errors import SelfsupError


def _one_line(e: BaseException) -> str:
    """A SelfsupError re-raised from a DataLoader worker carries the worker's traceback; keep its last line."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    if msg.startswith("selfsup.errors."):  # "selfsup.errors.DataError: ..." from a worker's traceback
        msg = msg.split(": ", 1)[-1]
    return msg


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.train.loop import pretrain

    cfg = load_config([args.config], args.overrides)
    summary = pretrain(cfg)
    from selfsup.train.report import format_summary

    if summary.get("process_index", 0) == 0:
        print(format_summary(summary))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from selfsup.export import export

    result = export(args.run_dir, args.out_dir, checkpoint=args.checkpoint)
    print(f"exported {result['encoder']} backbone of {result['method']} (step {result['step']}) to {result['out_dir']}; "
          f"plain timm reload max |diff| = {result['reload_max_abs_diff']:.1e}")
    print(f'  load it with: timm.create_model("local-dir:{result["out_dir"]}", pretrained=True)')
    return 0


def _cmd_shard(args: argparse.Namespace) -> int:
    from selfsup.data.shard_writer import write_shards

    write_shards(  # prints its progress bar and summary
        args.src, args.out_dir, max_per_shard=args.max_per_shard, image_column=args.image_column,
        label_column=args.label_column, split=args.split,
    )
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

    p = sub.add_parser("export", help="export a run's backbone for timm: RUN_DIR OUT_DIR")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the newest complete one)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("shard", help="write webdataset shards from an image folder or a Hugging Face dataset")
    p.add_argument("src", help="image folder, datasets.save_to_disk folder, or a dataset name in the local HF cache")
    p.add_argument("out_dir")
    p.add_argument("--max-per-shard", type=int, default=1000)
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--split", default=None, help="split of a Hugging Face dataset (default: train if present)")
    p.set_defaults(func=_cmd_shard)

    p = sub.add_parser("config", help="print the resolved config: [CONFIG] [key=value ...]")
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SelfsupError as e:
        print(f"selfsup: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # errors from DataLoader workers arrive re-wrapped; unwrap ours
        if "selfsup.errors." in str(e):
            print(f"selfsup: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
