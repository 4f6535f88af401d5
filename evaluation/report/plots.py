"""Report figures (matplotlib, Agg backend): accuracy against label fraction and against latency, pretraining curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVE_KEYS = ("loss", "lr", "embed_std", "teacher_entropy", "momentum", "teacher_temp", "wd", "images_per_s")


def plot_accuracy_vs_fraction(panels: list[tuple[str, list[dict[str, Any]]]], path: Path, *,
                              ylabel: str = "top-1 (%)") -> Path:
    """One panel per evaluation; in each, ``ylabel`` against label fraction (log x), one line per model, ± std bars.

    Args:
        panels: ``(title, rows)``; rows are report results with ``model``, ``label_fraction``, ``mean``, ``std``
            (a fraction in [0, 1]: top-1 accuracy, or detection box mAP).
        path: PNG to write.
        ylabel: the y axis (the values are drawn in %).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["label_fraction"], r["mean"], r["std"]) for r in rows if r["model"] == model)
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * (e or 0.0) for e in es], marker="o", capsize=3,
                        label=model)
        _top1_panel(ax, title=title, xlabel="label fraction", legend_size=8, ylabel=ylabel)
    return _save(fig, path)


def _top1_panel(ax: Any, *, title: str, xlabel: str, legend_size: int, ylabel: str = "top-1 (%)") -> None:
    """Log x axis, ``ylabel`` y axis, title, grid and legend of one panel."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_latency(panels: dict[str, list[tuple[str, float, float | None]]], path: Path, *,
                             xlabel: str) -> Path:
    """One panel per evaluation; in each, top-1 (%) against CPU latency (ms, log x), one labelled point per model.

    Args:
        panels: ``{title: [(model, latency_ms, accuracy in [0, 1] or None), ...]}``; ``None`` points are skipped.
        path: PNG to write.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels.items()):
        for model, x, y in pts:
            if y is not None:
                ax.plot([x], [100 * y], marker="o", ls="", label=model)
        _top1_panel(ax, title=title, xlabel=xlabel, legend_size=7)
    return _save(fig, path)


def plot_pretraining_curves(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and collapse signals against step, one panel per key present; ``None`` when there is nothing to plot.

    ``teacher_entropy`` is drawn with ``teacher_entropy_max`` (log of the output dim) as a dashed line: the
    DINO teacher collapsing to a uniform output sits at that line, collapsing to one dimension goes to 0;
    ``embed_std`` near 0 means all embeddings are the same.
    """
    keys = [k for k in CURVE_KEYS if any(isinstance(r.get(k), (int, float)) for r in records)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*pts), lw=1.2)
        if key == "teacher_entropy":
            mx = [(r["step"], r["teacher_entropy_max"]) for r in records
                  if isinstance(r.get("teacher_entropy_max"), (int, float))]
            if mx:
                ax.plot(*zip(*mx), ls="--", color="gray", label="max (uniform)")
                ax.legend(fontsize=8)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
