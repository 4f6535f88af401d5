"""Figures of the report's "what it learned" and robustness sections (matplotlib, Agg backend).

Every figure puts the compared models side by side (pretrained next to random init) on the same images.
Image arrays are (S, S, 3) floats in [0, 1] or uint8; maps are (h, w) and drawn over the image with
nearest-neighbour upsampling (one cell = one patch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.figures import axis_off, plt, save_figure

MAX_HEADS_SHOWN = 6


def _extent(image: np.ndarray) -> tuple[float, float, float, float]:
    return (0, image.shape[1], image.shape[0], 0)


def plot_attention_maps(images: list[np.ndarray], maps: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """One row per image: the image, then for each model its heads' [CLS] attention and the top-60% mass mask.

    Args:
        images: b display images.
        maps: ``{model: (attn (b, H, h, w), mask (b, H, h, w) bool)}``.
        path: PNG to write.
    """
    models = list(maps)
    heads = min([MAX_HEADS_SHOWN] + [attn.shape[1] for attn, _ in maps.values()])
    cols = 1 + len(models) * (heads + 1)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.25 * cols, 1.35 * len(images) + 0.4), squeeze=False)
    for r, image in enumerate(images):
        axes[r][0].imshow(image)
        c = 1
        for m in models:
            attn, mask = maps[m]
            for h in range(heads):
                axes[r][c].imshow(attn[r, h], cmap="inferno", interpolation="nearest", extent=_extent(image))
                if r == 0:
                    axes[r][c].set_title(f"{m}\nhead {h}", fontsize=7)
                c += 1
            # DINO's top-60% display: the image where any head keeps the patch, one colour per head
            axes[r][c].imshow(image)
            colours = plt.get_cmap("tab10")
            overlay = np.zeros((*mask.shape[2:], 4))
            for h in range(heads):
                overlay[mask[r, h]] = (*colours(h)[:3], 0.45)
            axes[r][c].imshow(overlay, interpolation="nearest", extent=_extent(image))
            if r == 0:
                axes[r][c].set_title(f"{m}\ntop 60% mass", fontsize=7)
            c += 1
    for ax in axes.flat:
        axis_off(ax)
    axes[0][0].set_title("image", fontsize=7)
    return save_figure(fig, path)


def plot_pca_features(images: list[np.ndarray], rgb: dict[str, np.ndarray], path: Path) -> Path:
    """One row per image: the image, then each model's patch-feature PCA (b, h, w, 3) in [0, 1]."""
    models = list(rgb)
    fig, axes = plt.subplots(len(images), 1 + len(models), figsize=(1.6 * (1 + len(models)), 1.6 * len(images) + 0.3),
                             squeeze=False)
    for r, image in enumerate(images):
        axes[r][0].imshow(image)
        for c, m in enumerate(models, start=1):
            axes[r][c].imshow(rgb[m][r], interpolation="nearest")
            if r == 0:
                axes[r][c].set_title(f"{m}\nPCA (bg dropped)", fontsize=7)
    for ax in axes.flat:
        axis_off(ax)
    axes[0][0].set_title("image", fontsize=7)
    return save_figure(fig, path)


def plot_retrieval(queries: list[np.ndarray], query_labels: list[str],
                   results: dict[str, list[list[tuple[np.ndarray, str, float, bool]]]], path: Path) -> Path:
    """One row per (model, query): the query, then its top-k training images with label and cosine similarity,
    framed green when the label matches the query's, red otherwise.

    Args:
        queries: display images of the queries.
        query_labels: their class names.
        results: ``{model: [per query: [(image, class name, similarity, correct), ...k]]}``.
    """
    models = list(results)
    k = max(len(r) for per_model in results.values() for r in per_model)
    rows = len(models) * len(queries)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.35 * (k + 1), 1.45 * rows + 0.3), squeeze=False)
    for mi, m in enumerate(models):
        for qi, q in enumerate(queries):
            r = mi * len(queries) + qi
            axes[r][0].imshow(q)
            axes[r][0].set_ylabel(m, fontsize=7)
            axes[r][0].set_title(f"query: {query_labels[qi]}"[:24], fontsize=6)
            for j, (img, label, sim, correct) in enumerate(results[m][qi], start=1):
                ax = axes[r][j]
                ax.imshow(img)
                ax.set_title(f"{'✓' if correct else '✗'} {label}"[:18] + f" {sim:.2f}", fontsize=6,
                             color="green" if correct else "red")
                for spine in ax.spines.values():
                    spine.set_edgecolor("green" if correct else "red")
                    spine.set_linewidth(2.5)
                ax.set_xticks([])
                ax.set_yticks([])
    for ax in axes[:, 0]:
        ax.set_xticks([])
        ax.set_yticks([])
    for r in range(rows):
        for j in range(1 + len(results[models[r // len(queries)]][r % len(queries)]), k + 1):
            axes[r][j].axis("off")
    return save_figure(fig, path)


def plot_embedding_2d(coords: dict[str, np.ndarray], labels: np.ndarray, classes: list[str], method: str,
                      path: Path) -> Path:
    """One scatter panel per model of its (n, 2) projected val embeddings, coloured by label."""
    models = list(coords)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.0), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, m in zip(axes[0], models):
        xy = coords[m]
        for c, name in enumerate(classes):
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(c % cmap.N), label=name, alpha=0.8)
        ax.set_title(f"{m} ({method})", fontsize=9)
        axis_off(ax)
    if len(classes) <= 20:
        axes[0][-1].legend(fontsize=7, markerscale=1.5, loc="best")
    return save_figure(fig, path)


def plot_robustness(grids: dict[tuple[str, str], np.ndarray], corruptions: list[str], severities: list[int],
                    path: Path) -> Path:
    """Heat maps of top-1 (%) per corruption (rows) and severity (columns), one panel per (evaluation, model).

    Args:
        grids: ``{(evaluation, model): (len(corruptions), len(severities)) accuracies in [0, 1]}``.
    """
    keys = list(grids)
    evaluations = list(dict.fromkeys(e for e, _ in keys))
    models = list(dict.fromkeys(m for _, m in keys))
    fig, axes = plt.subplots(len(evaluations), len(models),
                             figsize=(1.2 + 0.7 * len(severities) * len(models) + 1.2 * len(models),
                                      len(evaluations) * (1.1 + 0.3 * len(corruptions))), squeeze=False)
    for i, e in enumerate(evaluations):
        for j, m in enumerate(models):
            ax = axes[i][j]
            grid = 100 * grids[(e, m)]
            im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            for (a, b), v in np.ndenumerate(grid):
                ax.text(b, a, f"{v:.0f}", ha="center", va="center", fontsize=6, color="white" if v < 60 else "black")
            ax.set_xticks(range(len(severities)), [str(s) for s in severities], fontsize=7)
            ax.set_yticks(range(len(corruptions)), corruptions if j == 0 else [""] * len(corruptions), fontsize=7)
            ax.set_title(f"{e}: {m}", fontsize=8)
            ax.set_xlabel("severity", fontsize=7)
    fig.colorbar(im, ax=axes, fraction=0.02, label="top-1 (%)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
