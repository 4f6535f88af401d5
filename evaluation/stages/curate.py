"""``selfsup-eval curate``: near-duplicates, outliers and (with ``--labels``) suspicious labels of an image pool.

    selfsup-eval curate --weights EXPORT --images POOL [--labels DIR] --out DIR

Works on the export's features of the pool (:func:`evaluation.loading.pool.load_pool`, cached in ``--cache``, default
``OUT/cache``) and writes into ``--out`` only:

- ``duplicates.csv`` (``path_a,path_b,similarity``): identical files (same SHA-256; similarity 1.0) first, then
  near-duplicates by :mod:`evaluation.probes.duplicates` (cosine >= ``--dup-threshold`` confirmed by the pixels), most
  similar first; paths relative to ``--images`` (``SHARD#KEY`` for shards);
- ``outliers.csv`` (``path,score``): every pool image, lowest density first
  (:func:`evaluation.probes.cleaning.outlier_scores`);
- with ``--labels DIR`` (an image folder ``DIR/<class>/<image>``, checked on its own features; it may be the pool
  itself or another folder): ``label_issues.csv`` (``path,given_label,suggested_label,score``), the images cleanlab
  flags, most suspicious first (:func:`evaluation.probes.cleaning.find_label_issues`; paths relative to ``DIR``);
- ``curate.md`` with the counts and image grids (``duplicates.png``, ``outliers.png``, ``label_issues.png``).

``--out`` must be a new or empty folder or curate's own earlier output (its files are replaced); nothing in the
pool or the labelled folder is moved, changed or deleted.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.loading.images import iter_images
from evaluation.loading.pool import Pool, check_out_folder, labelled_classes, load_pool, pool_sources
from evaluation.probes.cleaning import find_label_issues, outlier_scores
from evaluation.probes.duplicates import DUP_THRESHOLD, MAX_HASH_DISTANCE, ImageLoader, Prints, Rule, find_duplicates
from evaluation.probes.retrieval import nearest_neighbours
from evaluation.settings import DEFAULTS
from selfsup.data.decode import decode_rgb
from selfsup.errors import ConfigError

DUPLICATES_FILE, OUTLIERS_FILE, LABEL_ISSUES_FILE, REPORT_FILE = (
    "duplicates.csv", "outliers.csv", "label_issues.csv", "curate.md")
PLOTS = {"duplicates": "duplicates.png", "outliers": "outliers.png", "label_issues": "label_issues.png"}
CACHE_DIR = "cache"
OWN_FILES = frozenset({DUPLICATES_FILE, OUTLIERS_FILE, LABEL_ISSUES_FILE, REPORT_FILE, CACHE_DIR, *PLOTS.values()})
SHOWN = {"duplicates": 8, "outliers": 16, "label_issues": 8, "neighbours": 5}


def pool_prints(pool: Pool) -> Prints:
    """The duplicate test's view of a pool."""
    return Prints(pool.feats, pool.sha256, pool.phash)


def pool_images(pool: Pool) -> ImageLoader:
    """Load a pool's images by row: a folder's files directly, shards in one pass over them per call."""
    def load(indices: list[int]) -> list[Any]:
        files, urls = pool_sources(pool.source)
        if files is not None:
            return [pool.image(i) for i in indices]
        wanted = {pool.keys[i] for i in indices}
        blobs = {k: b for k, b in iter_images(urls=urls) if k in wanted}
        return [decode_rgb(blobs[pool.keys[i]]) for i in indices]

    return load


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _duplicates(pool: Pool, rule: Rule, out: Path) -> dict[str, Any]:
    pairs = find_duplicates(pool_prints(pool), rule=rule, images=pool_images(pool))
    _write_csv(out / DUPLICATES_FILE, ["path_a", "path_b", "similarity"],
               [[pool.keys[p.a], pool.keys[p.b], f"{p.similarity:.4f}"] for p in pairs])
    identical = sum(p.kind == "identical" for p in pairs)
    plot = None
    if pairs:
        from evaluation.figures.curate import plot_pairs

        shown = pairs[:SHOWN["duplicates"]]
        plot = plot_pairs([(pool.image(p.a), pool.keys[p.a], pool.image(p.b), pool.keys[p.b], p.similarity)
                           for p in shown], out / PLOTS["duplicates"]).name
    return {"pairs": len(pairs), "identical": identical, "near": len(pairs) - identical,
            "images": len({i for p in pairs for i in (p.a, p.b)}), "plot": plot}


def _outliers(pool: Pool, out: Path) -> dict[str, Any]:
    scores = outlier_scores(pool.feats)
    order = np.argsort(scores, kind="stable")
    _write_csv(out / OUTLIERS_FILE, ["path", "score"], [[pool.keys[i], f"{scores[i]:.6f}"] for i in order])
    from evaluation.figures.curate import plot_gallery

    shown = order[:SHOWN["outliers"]]
    plot = plot_gallery([(pool.image(int(i)), f"{scores[i]:.3f}") for i in shown], out / PLOTS["outliers"]).name
    return {"images": len(pool), "plot": plot, "lowest": [pool.keys[i] for i in shown]}


def _label_issues(lab: Pool, labels: np.ndarray, classes: list[str], out: Path) -> dict[str, Any]:
    found = find_label_issues(lab.feats, labels, num_classes=len(classes))
    rows = [[lab.keys[i], classes[labels[i]], classes[found.suggested[i]], f"{found.quality[i]:.6f}"]
            for i in found.indices]
    _write_csv(out / LABEL_ISSUES_FILE, ["path", "given_label", "suggested_label", "score"], rows)
    plot = None
    if len(found.indices):
        from evaluation.figures.curate import plot_label_issues

        shown = found.indices[:SHOWN["label_issues"]]
        _, nb = nearest_neighbours(lab.feats, lab.feats[shown], k=SHOWN["neighbours"] + 1)
        grid = []
        for i, neighbours in zip(shown, nb.tolist()):
            neighbours = [j for j in neighbours if j != i][:SHOWN["neighbours"]]
            grid.append((lab.image(int(i)), f"{classes[labels[i]]} → {classes[found.suggested[i]]}"[:26],
                         [(lab.image(j), classes[labels[j]], labels[j] == found.suggested[i]) for j in neighbours]))
        plot = plot_label_issues(grid, out / PLOTS["label_issues"]).name
    return {"images": len(lab), "classes": len(classes), "issues": len(rows), "folds": found.folds, "plot": plot}


def _markdown(summary: dict[str, Any]) -> str:
    d, o, li = summary["duplicates"], summary["outliers"], summary.get("label_issues")
    lines = ["# Pool curation", "", f"- pool: `{summary['images']}` ({summary['pool_size']} images)",
             f"- export: `{summary['weights']}`"]
    lines += [f"- command: `{summary['command']}`"] if summary["command"] else []
    lines += ["", "## Near-duplicates", "",
              f"{d['pairs']} pairs ({d['identical']} identical files, {d['near']} near-duplicates) over {d['images']} "
              f"images, in `{DUPLICATES_FILE}`. A near-duplicate: {summary['rule']}.", ""]
    if d["plot"]:
        lines += [f"The {min(d['pairs'], SHOWN['duplicates'])} most similar pairs (cosine on the left):", "",
                  f"![duplicates]({d['plot']})", ""]
    lines += ["## Outliers", "", f"Every image in `{OUTLIERS_FILE}`, lowest density first (cleanlab "
              "OutOfDistribution score: exp(-mean cosine distance to the 10 nearest images)). "
              f"The {min(SHOWN['outliers'], summary['pool_size'])} lowest:", "", f"![outliers]({o['plot']})", ""]
    if li is not None:
        lines += ["## Label issues", "",
                  f"{li['issues']} of {li['images']} images of `{summary['labels']}` ({li['classes']} classes) have a "
                  f"label the features contradict, in `{LABEL_ISSUES_FILE}` (confident learning on {li['folds']}-fold "
                  "out-of-fold logistic-regression probabilities; score = probability of the given label, low = "
                  "suspicious).", ""]
        if li["plot"]:
            lines += ["The most suspicious, `given → suggested`, with their nearest labelled images (green: the "
                      "suggested label):", "", f"![label issues]({li['plot']})", ""]
    return "\n".join(lines)


def run_curate(*, weights: str, images: str, out: str | Path, labels: str | None = None,
               dup_threshold: float = DUP_THRESHOLD, max_hash_distance: int = MAX_HASH_DISTANCE,
               cache: str | None = None, batch_size: int = DEFAULTS.batch_size, num_workers: int = DEFAULTS.num_workers,
               device: str = DEFAULTS.device,
               img_size: int | None = None, command: str = "") -> dict[str, Any]:
    """Find duplicates, outliers and (with ``labels``) label issues; write them into ``out`` (module docstring)."""
    out = Path(out)
    if not -1.0 <= dup_threshold <= 1.0:
        raise ConfigError(f"--dup-threshold {dup_threshold}; expected a cosine similarity in [-1, 1]")
    if not 0 <= max_hash_distance <= 64:
        raise ConfigError(f"--max-hash-distance {max_hash_distance}; expected 0 to 64 bits")
    check_out_folder(out, command="curate", own=OWN_FILES, inputs={"--images": images, "--labels": labels})
    classes, label_of = labelled_classes(labels, flag="--labels") if labels else ([], {})
    kw = dict(weights=weights, cache_dir=Path(cache) if cache else out / CACHE_DIR, batch_size=batch_size,
              num_workers=num_workers, device=device, img_size=img_size)
    pool = load_pool(images=images, **kw)  # every input error is raised before this writes its cache
    lab = load_pool(images=labels, **kw) if labels else None
    rule = Rule(threshold=dup_threshold, max_hash_distance=max_hash_distance)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"images": images, "pool_size": len(pool), "weights": weights, "labels": labels,
                               "command": command, "rule": rule.describe()}
    summary["duplicates"] = _duplicates(pool, rule, out)
    summary["outliers"] = _outliers(pool, out)
    if lab is not None:
        y = np.asarray([label_of[k] for k in lab.keys], dtype=np.int64)
        summary["label_issues"] = _label_issues(lab, y, classes, out)
    else:
        for stale in (out / LABEL_ISSUES_FILE, out / PLOTS["label_issues"]):
            stale.unlink(missing_ok=True)  # from an earlier call with --labels: not this pool's
    (out / REPORT_FILE).write_text(_markdown(summary))
    return summary


def add_curate_parser(sub: Any) -> None:
    """The ``curate`` subcommand of ``selfsup-eval``."""
    p = sub.add_parser("curate", help="near-duplicates, outliers and label issues of an image pool")
    p.add_argument("--weights", required=True, help="exported folder (config.json + model.safetensors)")
    p.add_argument("--images", required=True, help="the pool: a folder of images (recursive) or webdataset shards")
    p.add_argument("--labels", default=None, help="a labelled image folder DIR/<class>/<image> to check for label "
                   "issues (on its own features; may be the pool itself)")
    p.add_argument("--out", required=True, help="new or empty folder, or curate's previous output")
    p.add_argument("--dup-threshold", type=float, default=DUP_THRESHOLD,
                   help=f"cosine similarity of the features a near-duplicate needs at least (default {DUP_THRESHOLD}; "
                        "the pixels must confirm it too, see docs/select.md)")
    p.add_argument("--max-hash-distance", type=int, default=MAX_HASH_DISTANCE,
                   help=f"perceptual-hash bits (of 64) two copies may differ in (default {MAX_HASH_DISTANCE})")
    p.add_argument("--cache", default=None, help=f"feature cache folder (default OUT/{CACHE_DIR})")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--img-size", type=int, default=None, help="override the export's input size")


def curate_command(args: argparse.Namespace, command: str = "") -> int:
    """Run ``selfsup-eval curate`` from parsed arguments."""
    s = run_curate(weights=args.weights, images=args.images, out=args.out, labels=args.labels,
                   dup_threshold=args.dup_threshold, max_hash_distance=args.max_hash_distance, cache=args.cache,
                   batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                   img_size=args.img_size, command=command)
    li = s.get("label_issues")
    print(f"wrote {args.out}/{REPORT_FILE}: {s['duplicates']['pairs']} duplicate pairs, {s['pool_size']} images "
          f"ranked by outlier score" + (f", {li['issues']} label issues" if li else ""))
    return 0
