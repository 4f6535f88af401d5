"""How well ``selfsup-eval curate`` finds planted near-duplicates and flipped labels on a CIFAR-10 subset.

Builds, under ``--work`` (outside the project tree):

- ``pool/<class>/<image>``: ``--per-class`` training images per class, plus planted copies of ``--copies`` of them,
  a third each: resized (32 -> 64 px, bicubic, PNG), JPEG re-encoded (quality 50) and slightly cropped (2 px off
  the left and top, 30x30 px, PNG);
- ``labelled/<class>/<image>``: the same originals with ``--flips`` labels moved to a random other class;

runs ``selfsup-eval curate --weights W --images pool --labels labelled --out curate`` and prints, as a markdown table
and JSON: duplicate recall (per kind) and precision, and the precision of the top-k label issues. ``--sweep`` also
prints recall and precision of the duplicate test at other thresholds, from the same cached features.

    python benchmarks/curate_cifar10.py --data runs/cifar10_methods/data/cifar10/train \\
        --weights runs/cifar10_methods/simclr/export --work /tmp/curate_cifar10 --sweep
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ssl"), str(ROOT)]

KINDS = ("resized", "jpeg", "cropped")


def plant(img: Image.Image, kind: str) -> tuple[bytes, str]:
    """The encoded copy of ``img`` and its file extension."""
    buf = io.BytesIO()
    if kind == "resized":
        img.resize((2 * img.width, 2 * img.height), Image.BICUBIC).save(buf, "PNG")
        return buf.getvalue(), "png"
    if kind == "jpeg":
        img.save(buf, "JPEG", quality=50)
        return buf.getvalue(), "jpg"
    img.crop((2, 2, img.width, img.height)).save(buf, "PNG")
    return buf.getvalue(), "png"


def build(data: Path, work: Path, *, per_class: int, copies: int, flips: int, seed: int) -> dict:
    """Write the pool and the labelled folder; return the planted pairs and flips."""
    rng = np.random.default_rng(seed)
    classes = sorted(d.name for d in data.iterdir() if d.is_dir())
    originals = []  # (class, file name)
    for c in classes:
        names = sorted(os.listdir(data / c))
        originals += [(c, n) for n in sorted(rng.choice(names, per_class, replace=False))]
    for sub in ("pool", "labelled"):
        shutil.rmtree(work / sub, ignore_errors=True)
    for c, n in originals:
        (work / "pool" / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / c / n, work / "pool" / c / n)
    pairs = []
    for j, i in enumerate(rng.choice(len(originals), copies, replace=False)):
        c, n = originals[i]
        kind = KINDS[j % len(KINDS)]
        blob, ext = plant(Image.open(data / c / n).convert("RGB"), kind)
        copy = f"{c}/{Path(n).stem}_copy_{kind}.{ext}"
        (work / "pool" / copy).write_bytes(blob)
        pairs.append({"original": f"{c}/{n}", "copy": copy, "kind": kind})
    flipped = {}
    for i in rng.choice(len(originals), flips, replace=False):
        c, n = originals[i]
        flipped[(c, n)] = str(rng.choice([x for x in classes if x != c]))
    for c, n in originals:
        given = flipped.get((c, n), c)
        (work / "labelled" / given).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / c / n, work / "labelled" / given / n)
    return {"pairs": pairs, "flipped": {f"{g}/{n}": c for (c, n), g in flipped.items()},
            "pool_size": len(originals) + copies, "labelled": len(originals)}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def duplicate_scores(found: set[tuple[str, str]], planted: list[dict]) -> dict:
    """Recall per kind and overall; precision: reported pairs that join an original and its copy (or two copies of
    one original)."""
    group = {}
    for p in planted:
        group[p["original"]] = group[p["copy"]] = p["original"]
    hit = {frozenset(pair) for pair in found}
    recall = {k: float(np.mean([frozenset((p["original"], p["copy"])) in hit for p in planted if p["kind"] == k]))
              for k in KINDS}
    true = sum(1 for a, b in found if a in group and group.get(a) == group.get(b))
    return {"reported": len(found), "true": true, "precision": true / len(found) if found else 1.0,
            "recall": float(np.mean([frozenset((p["original"], p["copy"])) in hit for p in planted])),
            "recall_by_kind": recall}


def sweep(pool, planted: list[dict]) -> list[dict]:
    """Recall and precision of the duplicate test at other thresholds (cosine, hash distance, aligned pixel
    correlation; 2.0 switches the aligned-pixel route off, a hash distance of 64 the hash's veto)."""
    from evaluation.probes.duplicates import Rule, find_duplicates
    from evaluation.stages.curate import pool_images, pool_prints

    rows = []
    for t, h, c in [(0.99, 64, 2.0), (0.995, 64, 2.0), (0.9, 10, 2.0), (0.95, 10, 2.0), (0.8, 10, 0.95),
                    (0.9, 10, 0.9), (0.9, 10, 0.95), (0.9, 10, 0.98), (0.9, 6, 0.95), (0.9, 14, 0.95),
                    (0.95, 10, 0.95)]:
        pairs = find_duplicates(pool_prints(pool), rule=Rule(threshold=t, max_hash_distance=h, pixel_correlation=c),
                                images=pool_images(pool))
        found = {(pool.keys[p.a], pool.keys[p.b]) for p in pairs}
        rows.append({"threshold": t, "max_hash_distance": h, "pixel_correlation": c,
                     **duplicate_scores(found, planted)})
    return rows


def label_rankings(lab, flipped: set[str], classes: list[str]) -> dict:
    """Share of the flips in the top k of three rankings by the given label's probability: the out-of-fold logistic
    regression curate uses, a leave-one-out kNN vote of the 20 nearest images (neighbour agreement alone), and
    their mean."""
    import torch

    from evaluation.probes.cleaning import out_of_fold_probs
    from evaluation.probes.retrieval import nearest_neighbours

    y = np.asarray([classes.index(k.split("/")[0]) for k in lab.keys])
    lr, _ = out_of_fold_probs(lab.feats, y, num_classes=len(classes))
    sims, idx = nearest_neighbours(lab.feats, lab.feats, k=21)
    w = torch.exp(sims[:, 1:] / 0.07).numpy()  # DINO's kNN weights, the image itself left out
    knn = np.zeros_like(lr)
    np.add.at(knn, (np.repeat(np.arange(len(y)), 20), y[idx[:, 1:].numpy()].reshape(-1)), w.reshape(-1))
    knn /= knn.sum(1, keepdims=True)
    truth = np.asarray([k in flipped for k in lab.keys])
    out = {}
    for name, p in (("logistic regression (out of fold)", lr), ("kNN vote", knn), ("mean of both", (lr + knn) / 2)):
        order = np.argsort(p[np.arange(len(y)), y], kind="stable")
        out[name] = {k: float(truth[order[:k]].mean()) for k in (20, 50, 100, 200)}
    return out


def pixel_stats(data: Path, *, per_class: int, seed: int) -> dict:
    """What the pixels say, no model: perceptual-hash distance and aligned correlation of edited copies, against the
    closest *other* image of the same originals (by hash, and by plain pixel correlation)."""
    from evaluation.loading.fingerprints import hash_distance, perceptual_hash
    from evaluation.probes.duplicates import aligned_correlation, pixel_views

    rng = np.random.default_rng(seed)
    imgs = []
    for c in sorted(d.name for d in data.iterdir() if d.is_dir()):
        names = sorted(rng.choice(sorted(os.listdir(data / c)), per_class, replace=False))
        imgs += [Image.open(data / c / n).convert("RGB") for n in names]
    views = [pixel_views(im) for im in imgs]
    ph = np.asarray([perceptual_hash(im) for im in imgs])
    d = hash_distance(ph[:, None], ph[None])
    np.fill_diagonal(d, 99)
    whole = np.stack([v[0] for v in views])
    corr = whole @ whole.T
    np.fill_diagonal(corr, -9)
    pct = (0, 1, 50)
    out = {"images": len(imgs), "closest_other_hash_distance_percentiles": dict(zip(pct, np.percentile(d.min(1), pct))),
           "closest_other_aligned_correlation_percentiles": dict(zip((50, 99, 100), np.percentile(
               [aligned_correlation(views[i], views[j]) for i, j in enumerate(corr.argmax(1))], (50, 99, 100))))}
    edits = {"resized": lambda im: im.resize((64, 64), Image.BICUBIC), "downsized": lambda im: im.resize((24, 24)),
             "jpeg": lambda im: Image.open(io.BytesIO(plant(im, "jpeg")[0])).convert("RGB"),
             "cropped 2 px": lambda im: im.crop((2, 2, im.width, im.height)),
             "cropped 4 px": lambda im: im.crop((4, 4, im.width, im.height))}
    for name, edit in edits.items():
        copies = [edit(im) for im in imgs[:300]]
        dist = [int(hash_distance(perceptual_hash(c), ph[i])) for i, c in enumerate(copies)]
        out[name] = {"hash_distance_max": max(dist), "hash_distance_median": float(np.median(dist)),
                     "aligned_correlation_min": float(min(aligned_correlation(views[i], pixel_views(c))
                                                          for i, c in enumerate(copies)))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 training images, DATA/<class>/<image>")
    ap.add_argument("--weights", help="the export whose features curate uses (not needed with --pixel-stats)")
    ap.add_argument("--work", help="scratch folder for the pool, labels and curate's output")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--copies", type=int, default=150)
    ap.add_argument("--flips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sweep", action="store_true", help="also score other duplicate thresholds")
    ap.add_argument("--pixel-stats", action="store_true", help="only print what the pixels say (no model)")
    args = ap.parse_args(argv)
    if args.pixel_stats:
        print(json.dumps(pixel_stats(Path(args.data), per_class=args.per_class, seed=args.seed), indent=1))
        return 0
    if not args.weights or not args.work:
        ap.error("--weights and --work are needed (except with --pixel-stats)")
    from evaluation.cli import main as eval_main

    work = Path(args.work)
    truth = build(Path(args.data), work, per_class=args.per_class, copies=args.copies, flips=args.flips,
                  seed=args.seed)
    out = work / "curate"
    t0 = time.perf_counter()
    rc = eval_main(["curate", "--weights", args.weights, "--images", str(work / "pool"), "--labels",
                    str(work / "labelled"), "--out", str(out), "--device", args.device])
    if rc:
        return rc
    seconds = time.perf_counter() - t0
    dups = duplicate_scores({(r["path_a"], r["path_b"]) for r in _rows(out / "duplicates.csv")}, truth["pairs"])
    issues = [r["path"] for r in _rows(out / "label_issues.csv")]
    flipped = set(truth["flipped"])
    topk = {k: sum(p in flipped for p in issues[:k]) / k for k in (20, 50, 100, 200) if len(issues) >= k}
    result = {"pool_size": truth["pool_size"], "planted_copies": len(truth["pairs"]), "flips": len(flipped),
              "labelled": truth["labelled"], "seconds": round(seconds, 1), "duplicates": dups,
              "label_issues": {"flagged": len(issues), "flipped_flagged": sum(p in flipped for p in issues),
                               "precision_at": topk}}
    print("| pool | planted copies | duplicate recall (resized / JPEG / cropped) | duplicate precision | "
          "flagged labels (flipped among them) | label-issue precision @20 / @50 / @100 / @200 |")
    print("|---|---|---|---|---|---|")
    rk = dups["recall_by_kind"]
    print(f"| {truth['pool_size']} | {len(truth['pairs'])} | {100 * dups['recall']:.0f}% ({100 * rk['resized']:.0f} / "
          f"{100 * rk['jpeg']:.0f} / {100 * rk['cropped']:.0f}) | {100 * dups['precision']:.0f}% "
          f"({dups['true']} of {dups['reported']}) | {len(issues)} ({result['label_issues']['flipped_flagged']} of "
          f"{len(flipped)}) | " + " / ".join(f"{100 * v:.0f}%" for v in topk.values()) + " |")
    if args.sweep:
        from evaluation.loading.pool import load_pool

        pool = load_pool(weights=args.weights, images=str(work / "pool"), cache_dir=out / "cache",
                         device=args.device)
        lab = load_pool(weights=args.weights, images=str(work / "labelled"), cache_dir=out / "cache",
                        device=args.device)
        result["label_rankings"] = label_rankings(lab, flipped, sorted(os.listdir(work / "labelled")))
        for name, prec in result["label_rankings"].items():
            print(f"{name}: flips among the top 20 / 50 / 100 / 200: "
                  + " / ".join(f"{100 * v:.0f}%" for v in prec.values()))
        result["sweep"] = sweep(pool, truth["pairs"])
        for r in result["sweep"]:
            print(f"cos>={r['threshold']} hash<={r['max_hash_distance']} pixels>={r['pixel_correlation']}: "
                  f"recall {100 * r['recall']:.0f}% {r['recall_by_kind']} precision {100 * r['precision']:.0f}% "
                  f"({r['true']}/{r['reported']})")
    print(json.dumps(result, indent=1))
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
