"""``selfsup-eval select``: which images of an unlabelled pool to send for labelling, on an export's features.

    selfsup-eval select --weights EXPORT --images POOL --budget N --out DIR [--strategy typiclust] [--labelled DIR]

Writes into ``DIR`` (a new or empty folder, or a previous ``select`` output):

- ``selection.txt``: one image per line, relative to ``--images`` (``SHARD#KEY`` for shards), in the order chosen;
- ``selection.json``: strategy, budget, export, pool size, labelled images, and per chosen image its rank and the
  strategy's score;
- ``selection.png``: the chosen images on the 2D embedding of the pool, and their thumbnails in the order chosen.

The pool's features are computed once and cached in ``--cache`` (default ``DIR/cache``). Images of ``--labelled``
(class sub-folders) count as chosen; a pool image whose file is byte-identical to a labelled one is not picked
again. The strategies are in :mod:`evaluation.probes.selection`. Nothing in the pool or the labelled folder is touched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.loading.pool import Pool, check_out_folder, labelled_classes, load_pool, pool_sources
from evaluation.probes.selection import DEFAULT_STRATEGY, STRATEGIES, select
from evaluation.settings import DEFAULTS
from selfsup.errors import CheckpointError, ConfigError, DataError

OUTPUTS = ("selection.txt", "selection.json", "selection.png")
CACHE = "cache"


def _labelled_pool(labelled: str, *, weights: str, cache_dir: Path, **kw: Any) -> tuple[Pool, np.ndarray, list[str]]:
    """The labelled folder embedded like the pool: ``(its pool, (m,) class indices, class names)``."""
    classes, label_of = labelled_classes(labelled, flag="--labelled")
    lab = load_pool(weights=weights, images=labelled, cache_dir=cache_dir, **kw)
    return lab, np.array([label_of[k] for k in lab.keys]), classes


def run_select(*, weights: str, images: str, budget: int, out: str | Path, strategy: str = DEFAULT_STRATEGY,
               labelled: str | None = None, seed: int = 0, cache: str | None = None, projection: str = "auto",
               num_classes: int | None = None, batch_size: int = DEFAULTS.batch_size,
               num_workers: int = DEFAULTS.num_workers, device: str = DEFAULTS.device,
               img_size: int | None = None) -> dict[str, Any]:
    """Choose ``budget`` images of ``images`` with ``strategy``; write ``OUT/selection.{txt,json,png}``."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if budget < 1:
        raise ConfigError(f"--budget {budget}; expected a positive number of images")
    out = Path(out)
    check_out_folder(out, command="select", own=frozenset({*OUTPUTS, CACHE}),
                     inputs={"--images": images, "--labelled": labelled})
    files, _ = pool_sources(images)
    if files is not None and budget > len(files):
        raise ConfigError(f"--budget {budget}: the pool {images} has {len(files)} images; expected at most "
                          f"{len(files)}")
    cache_dir = Path(cache) if cache else out / CACHE
    new_dirs = [d for d in (out, cache_dir) if not d.exists()]
    try:
        return _select(weights=weights, images=images, budget=budget, out=out, strategy=strategy, labelled=labelled,
                       seed=seed, cache_dir=cache_dir, projection=projection, num_classes=num_classes,
                       batch_size=batch_size, num_workers=num_workers, device=device, img_size=img_size)
    except (ConfigError, DataError, CheckpointError):
        for d in reversed(new_dirs):  # a refused selection leaves nothing behind: only folders this call created
            shutil.rmtree(d, ignore_errors=True)
        raise


def _select(*, weights: str, images: str, budget: int, out: Path, strategy: str, labelled: str | None, seed: int,
            cache_dir: Path, projection: str, num_classes: int | None, **kw: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    pool = load_pool(weights=weights, images=images, cache_dir=cache_dir, **kw)
    lab_feats = lab_y = None
    classes: list[str] = []
    candidates = np.arange(len(pool))
    if labelled is not None:
        lab, lab_y, classes = _labelled_pool(labelled, weights=weights, cache_dir=cache_dir, **kw)
        lab_feats = lab.feats.numpy()
        known = set(lab.sha256)
        candidates = np.array([i for i, h in enumerate(pool.sha256) if h not in known], dtype=np.int64)
    if budget > len(candidates):
        raise ConfigError(f"--budget {budget}: the pool {images} has {len(candidates)} images that are not labelled; "
                          f"expected at most {len(candidates)}")
    sel = select(pool.feats.numpy()[candidates], budget=budget, strategy=strategy, labelled=lab_feats,
                 labelled_y=lab_y, seed=seed, num_classes=num_classes)
    chosen = candidates[sel.indices]
    seconds = round(time.perf_counter() - t0, 2)
    result = {
        "strategy": strategy, "budget": budget, "seed": seed, "export": str(weights),
        "weights_id": pool.info.get("weights_id"), "architecture": pool.info.get("architecture"),
        "pool": str(images), "pool_size": len(pool), "labelled": labelled,
        "num_labelled": 0 if lab_feats is None else len(lab_feats), "labelled_classes": classes,
        "labelled_in_pool": len(pool) - len(candidates), "strategy_info": sel.info, "score": sel.score_name,
        "selected": [{"rank": r + 1, "path": pool.keys[i], "score": float(s)}
                     for r, (i, s) in enumerate(zip(chosen, sel.scores))],
        "seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    _plot(pool, chosen, lab_feats, out / "selection.png", projection=projection, seed=seed, strategy=strategy)
    (out / "selection.json").write_text(json.dumps(result, indent=1))
    (out / "selection.txt").write_text("".join(pool.keys[i] + "\n" for i in chosen))
    return result


def _plot(pool: Pool, chosen: np.ndarray, labelled: np.ndarray | None, path: Path, *, projection: str, seed: int,
          strategy: str, thumbs: int = 32) -> None:
    """The pool's 2D embedding (grey), labelled images (blue), chosen images (red, first ranks numbered), and the
    first ``thumbs`` chosen images as thumbnails in the order chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from evaluation.probes.projection import project_2d

    feats = pool.feats if labelled is None else torch.cat([pool.feats, torch.as_tensor(labelled).float()])
    method = projection if projection != "auto" or len(feats) <= 20_000 else "pca"  # UMAP of 100k takes minutes
    coords, used = project_2d(feats, method=method, seed=seed)
    n_thumbs = min(thumbs, len(chosen))
    cols = 8
    rows = -(-n_thumbs // cols)
    fig = plt.figure(figsize=(8, 8 + 1.1 * rows))
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[8] + [1.1] * rows)
    ax = fig.add_subplot(grid[0, :])
    ax.scatter(coords[:len(pool), 0], coords[:len(pool), 1], s=3, c="#bbbbbb", label=f"pool ({len(pool)})")
    if labelled is not None:
        ax.scatter(coords[len(pool):, 0], coords[len(pool):, 1], s=14, c="tab:blue",
                   label=f"labelled ({len(labelled)})")
    ax.scatter(coords[chosen, 0], coords[chosen, 1], s=22, c="tab:red", edgecolors="k", linewidths=0.4,
               label=f"chosen ({len(chosen)})")
    for r, i in enumerate(chosen[:30]):
        ax.annotate(str(r + 1), coords[i], fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_title(f"selfsup-eval select: {strategy}, {len(chosen)} of {len(pool)} ({used} of the export's features)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8)
    for r, i in enumerate(chosen[:n_thumbs]):
        t = fig.add_subplot(grid[1 + r // cols, r % cols])
        t.imshow(pool.image(int(i)))
        t.set_title(str(r + 1), fontsize=7)
        t.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def add_select_parser(sub: Any) -> None:
    """The ``select`` subcommand of ``selfsup-eval``."""
    p = sub.add_parser("select", help="choose which images of an unlabelled pool to label next")
    p.add_argument("--weights", required=True, help="exported folder (config.json + model.safetensors)")
    p.add_argument("--images", required=True, help="the unlabelled pool: a folder (recursive) or webdataset shards")
    p.add_argument("--budget", required=True, type=int, help="how many images to choose")
    p.add_argument("--out", required=True, help="output folder (new, empty, or a previous select output)")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help=f"selection strategy (default {DEFAULT_STRATEGY}; docs/select.md)")
    p.add_argument("--labelled", default=None, help="images already labelled (class sub-folders): they count as "
                   "chosen and the new picks complement them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=None,
                   help="probcover: expected number of classes (default: the labelled classes, else 10)")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--projection", default="auto", help="2D embedding of selection.png: auto | umap | tsne | pca")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--img-size", type=int, default=None, help="override the export's input size")


def select_command(args: argparse.Namespace) -> int:
    """Run ``selfsup-eval select`` from parsed arguments."""
    res = run_select(weights=args.weights, images=args.images, budget=args.budget, out=args.out,
                     strategy=args.strategy, labelled=args.labelled, seed=args.seed, cache=args.cache,
                     projection=args.projection, num_classes=args.num_classes, batch_size=args.batch_size,
                     num_workers=args.num_workers, device=args.device, img_size=args.img_size)
    print(f"chose {res['budget']} of {res['pool_size']} images ({res['strategy']}) in {res['seconds']} s: "
          f"{args.out}/selection.txt, selection.json, selection.png")
    return 0
