"""Figures that stages draw from their own arrays (attention and PCA maps, retrieval grids, embeddings,
robustness curves, curation grids): matplotlib with the Agg backend, one PNG each. Imported by stages; imports no
stage and no report module. This module holds what every figure shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["axis_off", "plt", "save_figure"]


def axis_off(ax: Any) -> None:
    """No ticks and no frame: an image panel."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 100 dpi), close it and return ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
