"""Which images to label: each `selfsup-eval select` strategy against random draws on CIFAR-10.

The pool is 5,000 CIFAR-10 training images that pretraining did not see (images 1,000-1,499 of each class; the
pretraining subset of ``benchmarks/cifar10_methods.sh`` is images 0-999). For each budget, each strategy picks that
many pool images on an export's features (the same ``load_pool`` + ``select`` the command runs); a weakly
regularised logistic regression (scikit-learn, C=10) is fitted on the chosen images' L2-normalised features and
their true labels, and scored on the 10,000 CIFAR-10 test images. Random: the mean and std of 10 draws of the same
size. Deterministic strategies run with 3 seeds (k-means initialisation), also reported as mean and std.

    python benchmarks/select_cifar10.py                                   # the SimCLR export of cifar10_methods.sh
    python benchmarks/select_cifar10.py --weights runs/cifar10_methods/simclr/export \\
        --weights runs/select_cifar10/simclr_step312 --random-init        # several exports: feature quality

Writes ``runs/select_cifar10/results.{md,json}``. Needs ``../shared/data/cifar10.tar.gz`` (extracted as the methods
benchmark does, into ``runs/cifar10_methods/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ssl"), str(ROOT)]

from evaluation.loading.backbones import ModelSource, load_model  # noqa: E402
from evaluation.loading.pool import load_pool  # noqa: E402
from evaluation.probes.selection import select  # noqa: E402

BUDGETS = (10, 30, 100, 500)
STRATEGIES = ("typiclust", "probcover", "kcenter")


def _data(out: Path) -> tuple[Path, Path]:
    data = ROOT / "runs/cifar10_methods/data"
    if not (data / "cifar10/train").is_dir():
        data.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ROOT.parent / "shared/data/cifar10.tar.gz") as t:
            t.extractall(data, filter="data")
    pool = out / "pool"
    if not pool.is_dir():  # images 1,000-1,499 of each class, as symlinks (nothing copied)
        tmp = out / "pool.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for c in sorted(os.listdir(data / "cifar10/train")):
            (tmp / c).mkdir(parents=True)
            for f in sorted(os.listdir(data / "cifar10/train" / c))[1000:1500]:
                os.symlink((data / "cifar10/train" / c / f).resolve(), tmp / c / f)
        tmp.rename(pool)
    return pool, data / "cifar10/test"


def _random_init_export(weights: str, out: Path) -> str:
    """The export's architecture with random weights (evaluation's seeded random init), saved as an export."""
    import safetensors.torch

    dst = out / "random_init"
    if not (dst / "model.safetensors").exists():
        dst.mkdir(parents=True, exist_ok=True)
        loaded = load_model(ModelSource("random_init", "random_init", weights))
        safetensors.torch.save_file(loaded.model.state_dict(), str(dst / "model.safetensors"))
        shutil.copy(Path(weights) / "config.json", dst / "config.json")
    return str(dst)


def _labels(keys: list[str], classes: list[str]) -> np.ndarray:
    return np.array([classes.index(k.split("/")[0]) for k in keys])


def _accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(ytr)) < 2:  # one class chosen: the classifier predicts it
        return float((yte == ytr[0]).mean())
    clf = LogisticRegression(C=10.0, max_iter=3000)
    clf.fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())


def _norm(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=1).numpy()


def evaluate(weights: str, pool_dir: Path, test_dir: Path, cache: Path, budgets: tuple[int, ...],
             strategies: tuple[str, ...], seeds: int, draws: int) -> dict:
    pool = load_pool(weights=weights, images=str(pool_dir), cache_dir=cache)
    test = load_pool(weights=weights, images=str(test_dir), cache_dir=cache)
    classes = sorted(os.listdir(pool_dir))
    y, yte = _labels(pool.keys, classes), _labels(test.keys, classes)
    x, xte = _norm(pool.feats), _norm(test.feats)
    full = _accuracy(x, y, xte, yte)
    rows = []
    for b in budgets:
        rng = np.random.default_rng(0)
        rand = [_accuracy(x[i], y[i], xte, yte) for i in (rng.permutation(len(x))[:b] for _ in range(draws))]
        row = {"budget": b, "random_mean": float(np.mean(rand)), "random_std": float(np.std(rand))}
        for s in strategies:
            accs, classes_hit, secs = [], [], []
            for seed in range(seeds):
                t0 = time.perf_counter()
                idx = select(pool.feats.numpy(), budget=b, strategy=s, seed=seed).indices
                secs.append(time.perf_counter() - t0)
                accs.append(_accuracy(x[idx], y[idx], xte, yte))
                classes_hit.append(len(np.unique(y[idx])))
            row[s] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": accs,
                      "classes_covered": float(np.mean(classes_hit)), "seconds": float(np.mean(secs))}
        rows.append(row)
        print(json.dumps({"weights": weights, **{k: (v if not isinstance(v, dict) else round(v["mean"], 4))
                                                   for k, v in row.items()}}), flush=True)
    return {"weights": weights, "weights_id": pool.info["weights_id"], "pool_size": len(pool),
            "test_size": len(test), "all_pool_labels_accuracy": full, "rows": rows}


def _table(res: dict, strategies: tuple[str, ...]) -> list[str]:
    head = "| budget | random (10 draws) | " + " | ".join(f"{s} (3 seeds)" for s in strategies) + " |"
    lines = [f"`{res['weights']}` (logistic regression on all {res['pool_size']} pool labels: "
             f"{100 * res['all_pool_labels_accuracy']:.1f})", "", head, "|---" * (2 + len(strategies)) + "|"]
    for r in res["rows"]:
        cells = [f"{100 * r['random_mean']:.1f} ± {100 * r['random_std']:.1f}"]
        for s in strategies:
            d = 100 * (r[s]["mean"] - r["random_mean"])
            cells.append(f"{100 * r[s]['mean']:.1f} ± {100 * r[s]['std']:.1f} ({d:+.1f})")
        lines.append(f"| {r['budget']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", action="append", default=None, help="export folder (repeatable)")
    ap.add_argument("--random-init", action="store_true", help="also the first export's architecture, random init")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "runs/select_cifar10"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = args.weights or [str(ROOT / "runs/cifar10_methods/simclr/export")]
    if args.random_init:
        weights.append(_random_init_export(weights[0], out))
    pool_dir, test_dir = _data(out)
    budgets = tuple(int(b) for b in args.budgets.split(","))
    strategies = tuple(s for s in args.strategies.split(",") if s)
    results = [evaluate(w, pool_dir, test_dir, out / "cache", budgets, strategies, args.seeds, args.draws)
               for w in weights]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = []
    for r in results:
        md += _table(r, strategies) + [""]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
