"""Image grids of ``curate.md``: duplicate pairs side by side, outliers, suspicious labels with their neighbours.

Images are PIL images (any size; shown as they are, scaled by matplotlib); titles carry the path and the number
that put the image there.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from evaluation.figures import axis_off, plt, save_figure


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def plot_pairs(pairs: list[tuple[Image.Image, str, Image.Image, str, float]], path: Path) -> Path:
    """One row per pair: image a, image b, titled with their paths; the row's similarity on the left."""
    fig, axes = plt.subplots(len(pairs), 2, figsize=(3.4, 1.75 * len(pairs) + 0.2), squeeze=False)
    for r, (img_a, name_a, img_b, name_b, sim) in enumerate(pairs):
        for c, (img, name) in enumerate(((img_a, name_a), (img_b, name_b))):
            axes[r][c].imshow(img)
            axes[r][c].set_title(_short(name), fontsize=6)
            axis_off(axes[r][c])
        axes[r][0].set_ylabel(f"{sim:.3f}", fontsize=7)
    return save_figure(fig, path)


def plot_gallery(images: list[tuple[Image.Image, str]], path: Path, *, cols: int = 8) -> Path:
    """A grid of titled images (outliers, lowest score first)."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, title) in zip(axes.flat, images):
        ax.axis("on")
        ax.imshow(img)
        ax.set_title(title, fontsize=6)
        axis_off(ax)
    return save_figure(fig, path)


def plot_label_issues(rows: list[tuple[Image.Image, str, list[tuple[Image.Image, str, bool]]]], path: Path) -> Path:
    """One row per suspicious image: the image titled ``given -> suggested``, then its nearest labelled images with
    their labels, framed green when a neighbour's label is the suggested one, red otherwise."""
    k = max(len(nb) for _, _, nb in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.3 * (k + 1), 1.45 * len(rows) + 0.2), squeeze=False)
    for r, (img, title, neighbours) in enumerate(rows):
        axes[r][0].imshow(img)
        axes[r][0].set_title(title, fontsize=6, color="red")
        axis_off(axes[r][0])
        for c in range(1, k + 1):
            ax = axes[r][c]
            if c > len(neighbours):
                ax.axis("off")
                continue
            nb_img, label, agrees = neighbours[c - 1]
            ax.imshow(nb_img)
            ax.set_title(_short(label, 14), fontsize=6, color="green" if agrees else "red")
            axis_off(ax)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor("green" if agrees else "red")
                spine.set_linewidth(2)
    return save_figure(fig, path)
